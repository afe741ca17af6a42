//! Turning the raw registers and bits a read returned into typed JSON values.
//!
//! Byte order is the order of the two bytes inside each 16-bit register; word order is the
//! order of the registers of a 32- or 64-bit value (`big`: the first register holds the most
//! significant word). The four common layouts of `0x11223344` are ABCD (big/big), CDAB
//! (word order little), BADC (byte order little) and DCBA (both little).
//!
//! Values are exact: integers stay integers (a `u64` is not squeezed through an `f64`), an `f32`
//! is written as the shortest decimal that reads back as the same `f32` (`21.7`, not
//! `21.700000762939453`). Scale and offset are applied in `f64` and the result rounded to 15
//! significant digits, so `2131 * 0.1` is stored as `213.1`.

use serde_json::{Number, Value};

use super::config::{Order, PointConfig, ValueType};

/// Why a value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The read returned fewer registers than the point spans.
    #[error("expected {expected} registers, got {got}")]
    Short { expected: usize, got: usize },
    /// A floating-point register pair holds NaN or infinity, which JSON cannot carry.
    #[error("the value is not a finite number ({0})")]
    NotFinite(String),
}

/// Puts the point's registers into most-significant-first byte order.
fn ordered_bytes(words: &[u16], point: &PointConfig) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 2);
    let mut push = |w: u16| {
        let [hi, lo] = w.to_be_bytes();
        match point.byte_order {
            Order::Big => out.extend_from_slice(&[hi, lo]),
            Order::Little => out.extend_from_slice(&[lo, hi]),
        }
    };
    match point.word_order {
        Order::Big => words.iter().copied().for_each(&mut push),
        Order::Little => words.iter().rev().copied().for_each(&mut push),
    }
    out
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], DecodeError> {
    bytes.try_into().map_err(|_| DecodeError::Short {
        expected: N / 2,
        got: bytes.len() / 2,
    })
}

/// Decodes one register-backed point from exactly its registers.
pub fn decode_registers(words: &[u16], point: &PointConfig) -> Result<Value, DecodeError> {
    let expected = usize::from(point.width());
    if words.len() < expected {
        return Err(DecodeError::Short {
            expected,
            got: words.len(),
        });
    }
    let words = &words[..expected];
    let raw = match point.value_type() {
        ValueType::Bool => {
            let set = match point.bit {
                Some(bit) => (words[0] >> bit) & 1 == 1,
                None => words[0] != 0,
            };
            return Ok(Value::Bool(set));
        }
        ValueType::String => {
            // Characters run in register order; only the byte order inside a register applies.
            let mut bytes = Vec::with_capacity(words.len() * 2);
            for w in words {
                let [hi, lo] = w.to_be_bytes();
                match point.byte_order {
                    Order::Big => bytes.extend_from_slice(&[hi, lo]),
                    Order::Little => bytes.extend_from_slice(&[lo, hi]),
                }
            }
            while matches!(bytes.last(), Some(0 | b' ')) {
                bytes.pop();
            }
            return Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        }
        ValueType::U16 => Raw::Unsigned(u64::from(u16::from_be_bytes(array(&ordered_bytes(
            words, point,
        ))?))),
        ValueType::I16 => Raw::Signed(i64::from(i16::from_be_bytes(array(&ordered_bytes(
            words, point,
        ))?))),
        ValueType::U32 => Raw::Unsigned(u64::from(u32::from_be_bytes(array(&ordered_bytes(
            words, point,
        ))?))),
        ValueType::I32 => Raw::Signed(i64::from(i32::from_be_bytes(array(&ordered_bytes(
            words, point,
        ))?))),
        ValueType::U64 => Raw::Unsigned(u64::from_be_bytes(array(&ordered_bytes(words, point))?)),
        ValueType::I64 => Raw::Signed(i64::from_be_bytes(array(&ordered_bytes(words, point))?)),
        ValueType::F32 => {
            let v = f32::from_be_bytes(array(&ordered_bytes(words, point))?);
            if !v.is_finite() {
                return Err(DecodeError::NotFinite(v.to_string()));
            }
            // The shortest decimal that reads back as this f32, as an f64.
            Raw::Float(v.to_string().parse::<f64>().unwrap_or(f64::from(v)))
        }
        ValueType::F64 => {
            let v = f64::from_be_bytes(array(&ordered_bytes(words, point))?);
            if !v.is_finite() {
                return Err(DecodeError::NotFinite(v.to_string()));
            }
            Raw::Float(v)
        }
    };
    Ok(scaled(raw, point))
}

/// A decoded number before scaling.
#[derive(Debug, Clone, Copy)]
enum Raw {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

/// Rounds to 15 significant digits: removes the binary noise of `raw * scale + offset`.
fn round15(v: f64) -> f64 {
    format!("{v:.14e}").parse::<f64>().unwrap_or(v)
}

fn scaled(raw: Raw, point: &PointConfig) -> Value {
    if !point.is_scaled() {
        return match raw {
            Raw::Unsigned(u) => Value::Number(Number::from(u)),
            Raw::Signed(i) => Value::Number(Number::from(i)),
            Raw::Float(f) => float(f),
        };
    }
    let base = match raw {
        Raw::Unsigned(u) => u as f64,
        Raw::Signed(i) => i as f64,
        Raw::Float(f) => f,
    };
    float(round15(base * point.scale + point.offset))
}

fn float(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::super::config::RegisterKind;
    use super::*;

    fn point(value_type: ValueType, byte_order: Order, word_order: Order) -> PointConfig {
        let mut p = PointConfig::new("p", RegisterKind::Holding, 0, value_type);
        p.byte_order = byte_order;
        p.word_order = word_order;
        p
    }

    /// Splits big-endian bytes into registers laid out in the given orders.
    fn layout(be: &[u8], byte_order: Order, word_order: Order) -> Vec<u16> {
        let mut words: Vec<u16> = be
            .chunks(2)
            .map(|c| match byte_order {
                Order::Big => u16::from_be_bytes([c[0], c[1]]),
                Order::Little => u16::from_le_bytes([c[0], c[1]]),
            })
            .collect();
        if word_order == Order::Little {
            words.reverse();
        }
        words
    }

    const ORDERS: [(Order, Order); 4] = [
        (Order::Big, Order::Big),
        (Order::Big, Order::Little),
        (Order::Little, Order::Big),
        (Order::Little, Order::Little),
    ];

    #[test]
    fn the_four_layouts_of_a_u32_decode_to_the_same_number() {
        let expected = [
            vec![0x1122, 0x3344], // ABCD
            vec![0x3344, 0x1122], // CDAB
            vec![0x2211, 0x4433], // BADC
            vec![0x4433, 0x2211], // DCBA
        ];
        for ((b, w), words) in ORDERS.iter().zip(expected) {
            let value = decode_registers(&words, &point(ValueType::U32, *b, *w)).unwrap();
            assert_eq!(value, Value::from(0x1122_3344u64), "{b:?}/{w:?}");
        }
    }

    #[test]
    fn sixty_four_bit_integers_are_exact_in_every_order() {
        for (b, w) in ORDERS {
            let u = 18_446_744_073_709_551_557u64; // the largest 64-bit prime, above 2^53
            let words = layout(&u.to_be_bytes(), b, w);
            assert_eq!(
                decode_registers(&words, &point(ValueType::U64, b, w)).unwrap(),
                Value::from(u)
            );
            let i = -9_007_199_254_740_993i64; // -(2^53 + 1): not representable as f64
            let words = layout(&i.to_be_bytes(), b, w);
            let value = decode_registers(&words, &point(ValueType::I64, b, w)).unwrap();
            assert_eq!(value, Value::from(i));
            assert_eq!(value.to_string(), "-9007199254740993");
        }
    }

    #[test]
    fn floats_are_exact_in_every_order() {
        for (b, w) in ORDERS {
            let words = layout(&21.7f32.to_be_bytes(), b, w);
            let value = decode_registers(&words, &point(ValueType::F32, b, w)).unwrap();
            assert_eq!(value.to_string(), "21.7", "{b:?}/{w:?}");
            let d = -12345.678901234567f64;
            let words = layout(&d.to_be_bytes(), b, w);
            let value = decode_registers(&words, &point(ValueType::F64, b, w)).unwrap();
            assert_eq!(value.as_f64(), Some(d));
        }
    }

    #[test]
    fn small_signed_and_unsigned_registers_decode() {
        let p = point(ValueType::I16, Order::Big, Order::Big);
        assert_eq!(decode_registers(&[0xFFFE], &p).unwrap(), Value::from(-2));
        let p = point(ValueType::U16, Order::Little, Order::Big);
        assert_eq!(
            decode_registers(&[0x3412], &p).unwrap(),
            Value::from(0x1234)
        );
        let p = point(ValueType::I32, Order::Big, Order::Little);
        assert_eq!(
            decode_registers(&[0xFFFF, 0xFFFF], &p).unwrap(),
            Value::from(-1)
        );
    }

    #[test]
    fn scale_and_offset_give_clean_decimals() {
        let mut p = point(ValueType::I16, Order::Big, Order::Big);
        p.scale = 0.1;
        assert_eq!(decode_registers(&[2131], &p).unwrap().to_string(), "213.1");
        p.offset = -40.0;
        assert_eq!(decode_registers(&[3], &p).unwrap().to_string(), "-39.7");
        let mut p = point(ValueType::F32, Order::Big, Order::Big);
        p.scale = 3.0;
        let words = layout(&0.1f32.to_be_bytes(), Order::Big, Order::Big);
        assert_eq!(decode_registers(&words, &p).unwrap().to_string(), "0.3");
    }

    #[test]
    fn strings_drop_trailing_padding_and_honour_byte_order() {
        let mut p = point(ValueType::String, Order::Big, Order::Big);
        p.length = Some(4);
        let words = [0x4652, 0x2D31, 0x2000, 0x0000]; // "FR-1 \0\0\0"
        assert_eq!(decode_registers(&words, &p).unwrap(), Value::from("FR-1"));
        p.byte_order = Order::Little;
        let words = [0x5246, 0x312D, 0x0000, 0x0000];
        assert_eq!(decode_registers(&words, &p).unwrap(), Value::from("FR-1"));
    }

    #[test]
    fn a_bool_reads_one_bit_or_any_bit_of_a_register() {
        let mut p = point(ValueType::Bool, Order::Big, Order::Big);
        assert_eq!(decode_registers(&[0x0100], &p).unwrap(), Value::Bool(true));
        assert_eq!(decode_registers(&[0], &p).unwrap(), Value::Bool(false));
        p.bit = Some(8);
        assert_eq!(decode_registers(&[0x0100], &p).unwrap(), Value::Bool(true));
        p.bit = Some(0);
        assert_eq!(decode_registers(&[0x0100], &p).unwrap(), Value::Bool(false));
    }

    #[test]
    fn nan_and_short_reads_are_errors_not_values() {
        let p = point(ValueType::F32, Order::Big, Order::Big);
        let words = layout(&f32::NAN.to_be_bytes(), Order::Big, Order::Big);
        assert!(matches!(
            decode_registers(&words, &p),
            Err(DecodeError::NotFinite(_))
        ));
        assert_eq!(
            decode_registers(&[1], &p),
            Err(DecodeError::Short {
                expected: 2,
                got: 1
            })
        );
    }
}
