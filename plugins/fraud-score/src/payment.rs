//! A `pos.payments` value and how it is read: a hand-written fast path for the plain JSON that
//! tills send (no escapes, flat object, any key order, unknown keys with string, number, `true`,
//! `false` or `null` values), and `serde_json` for everything else. The fast path accepts only
//! what `serde_json` accepts and reads it to the same values; anything it is unsure about (an
//! escape, a nested value, a duplicate or missing field, a malformed number, trailing bytes)
//! goes to `serde_json`, which then decides and words the error.

use std::borrow::Cow;

use outpost_sdk::{Error, Record};
use serde::Deserialize;

/// `channel` of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    CardPresent,
    Contactless,
    CardNotPresent,
}

/// `kind` of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Sale,
    Refund,
}

/// A `pos.payments` value (fields this plugin reads; others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Payment<'a> {
    #[serde(borrow)]
    pub payment_id: Cow<'a, str>,
    pub ts_ms: Option<u64>,
    #[serde(borrow)]
    pub store_id: Cow<'a, str>,
    #[serde(borrow)]
    pub terminal_id: Cow<'a, str>,
    #[serde(borrow)]
    pub card_id: Cow<'a, str>,
    pub amount: f64,
    pub channel: Channel,
    pub kind: Kind,
}

impl<'a> Payment<'a> {
    /// Reads the record's value: the fast path when it applies, else `serde_json`.
    pub fn read(record: &Record<'a>) -> Result<Payment<'a>, Error> {
        match parse_fast(record.value) {
            Some(p) => Ok(p),
            None => record.json(),
        }
    }
}

/// A cursor over the value's bytes.
struct Scan<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Some(())
        } else {
            None
        }
    }

    /// The bytes of a string without escapes or control characters (not yet checked to be
    /// UTF-8).
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.at;
        self.at += crate::out::plain_prefix(&self.b[start..]);
        match self.peek()? {
            b'"' => {
                let raw = &self.b[start..self.at];
                self.at += 1;
                Some(raw)
            }
            // An escape or a control character.
            _ => None,
        }
    }

    /// A string without escapes or control characters, as valid UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.raw_string()?).ok()
    }

    /// A number token exactly as JSON's grammar has it; returns its text and whether it is a
    /// plain non-negative integer.
    fn number(&mut self) -> Option<(&'a str, bool)> {
        let start = self.at;
        let mut integer = true;
        if self.peek() == Some(b'-') {
            self.at += 1;
            integer = false;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            integer = false;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return None;
            }
            self.digits();
        }
        // The token is ASCII by construction.
        let text = std::str::from_utf8(&self.b[start..self.at]).ok()?;
        Some((text, integer))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.at..self.at + word.len())? == word {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }

    /// Skips a value of a key this plugin does not read (flat values only).
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }
}

/// The fast path: `None` whenever `serde_json` should decide.
pub fn parse_fast(bytes: &[u8]) -> Option<Payment<'_>> {
    let mut s = Scan { b: bytes, at: 0 };
    let (mut payment_id, mut ts_ms, mut store_id, mut terminal_id) = (None, None, None, None);
    let (mut card_id, mut amount, mut channel, mut kind) = (None, None, None, None);
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek() != Some(b'}') {
        loop {
            s.ws();
            // Keys are matched as bytes; only an unknown key needs its UTF-8 checked.
            let key = s.raw_string()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            match key {
                b"payment_id" => set(&mut payment_id, s.string()?)?,
                b"store_id" => set(&mut store_id, s.string()?)?,
                b"terminal_id" => set(&mut terminal_id, s.string()?)?,
                b"card_id" => set(&mut card_id, s.string()?)?,
                b"ts_ms" => {
                    let value = if s.peek() == Some(b'n') {
                        s.literal(b"null")?;
                        None
                    } else {
                        match s.number()? {
                            (text, true) => Some(text.parse::<u64>().ok()?),
                            _ => return None,
                        }
                    };
                    set(&mut ts_ms, value)?;
                }
                b"amount" => {
                    let a = s.number()?.0.parse::<f64>().ok()?;
                    // serde_json refuses numbers out of f64's range; let it say so.
                    if !a.is_finite() {
                        return None;
                    }
                    set(&mut amount, a)?;
                }
                b"channel" => {
                    let c = match s.string()? {
                        "card_present" => Channel::CardPresent,
                        "contactless" => Channel::Contactless,
                        "card_not_present" => Channel::CardNotPresent,
                        _ => return None,
                    };
                    set(&mut channel, c)?;
                }
                b"kind" => {
                    let k = match s.string()? {
                        "sale" => Kind::Sale,
                        "refund" => Kind::Refund,
                        _ => return None,
                    };
                    set(&mut kind, k)?;
                }
                other => {
                    std::str::from_utf8(other).ok()?;
                    s.skip_value()?
                }
            }
            s.ws();
            match s.peek()? {
                b',' => s.at += 1,
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.eat(b'}')?;
    s.ws();
    if s.at != bytes.len() {
        return None;
    }
    Some(Payment {
        payment_id: Cow::Borrowed(payment_id?),
        ts_ms: ts_ms.flatten(),
        store_id: Cow::Borrowed(store_id?),
        terminal_id: Cow::Borrowed(terminal_id?),
        card_id: Cow::Borrowed(card_id?),
        amount: amount?,
        channel: channel?,
        kind: kind?,
    })
}

/// Sets a field seen for the first time; a duplicate goes to `serde_json` (which refuses it).
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde(bytes: &[u8]) -> Result<Payment<'_>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    const PLAIN: &str = r#"{"payment_id":"pay-000000017","ts_ms":1700000000123,"store_id":"store-004","terminal_id":"store-004-t2","card_id":"tok_00ab","loyalty_id":"L0012345","amount":23.45,"currency":"EUR","channel":"contactless","kind":"sale"}"#;

    #[test]
    fn plain_payment_reads_the_same_as_serde_json() {
        let fast = parse_fast(PLAIN.as_bytes()).expect("the fast path applies");
        assert_eq!(fast, serde(PLAIN.as_bytes()).unwrap());
        assert!(matches!(fast.card_id, Cow::Borrowed("tok_00ab")));
        assert_eq!(
            (fast.ts_ms, fast.amount, fast.kind),
            (Some(1_700_000_000_123), 23.45, Kind::Sale)
        );
    }

    #[test]
    fn accepted_variations_read_the_same_as_serde_json() {
        let cases = [
            // Another key order, whitespace, a null ts, extra keys of every flat kind.
            " {\n \"kind\" : \"refund\", \"amount\": 5, \"channel\":\"card_not_present\",\"card_id\":\"c\",\r\n\"terminal_id\":\"t\",\"store_id\":\"s\",\"ts_ms\":null,\"payment_id\":\"p\",\"x\":true,\"y\":false,\"z\":null,\"n\":-1.5e3} ",
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":-0.0,"channel":"card_present","kind":"sale"}"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"cé🦀","amount":1E2,"channel":"card_present","kind":"sale","ts_ms":0}"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":0.1e-2,"channel":"card_present","kind":"sale"}"#,
        ];
        for case in cases {
            let fast = parse_fast(case.as_bytes()).unwrap_or_else(|| panic!("fast path: {case}"));
            assert_eq!(fast, serde(case.as_bytes()).unwrap(), "{case}");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_serde_json() {
        let cases = [
            // Escapes (serde_json unescapes them into owned strings).
            r#"{"payment_id":"p\"1","store_id":"s","terminal_id":"t","card_id":"c","amount":1,"channel":"card_present","kind":"sale"}"#,
            // A nested unknown value.
            r#"{"payment_id":"p","meta":{"a":1},"store_id":"s","terminal_id":"t","card_id":"c","amount":1,"channel":"card_present","kind":"sale"}"#,
            // A duplicate field, a missing field, an unknown channel.
            r#"{"payment_id":"p","payment_id":"q","store_id":"s","terminal_id":"t","card_id":"c","amount":1,"channel":"card_present","kind":"sale"}"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","channel":"card_present","kind":"sale"}"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":1,"channel":"telepathy","kind":"sale"}"#,
            // Numbers JSON does not allow or a u64 cannot hold; a fractional timestamp.
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":01,"channel":"card_present","kind":"sale"}"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":1.,"channel":"card_present","kind":"sale"}"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":+1,"channel":"card_present","kind":"sale"}"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":1,"ts_ms":1.5,"channel":"card_present","kind":"sale"}"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":1,"ts_ms":99999999999999999999,"channel":"card_present","kind":"sale"}"#,
            // A string where a number belongs, trailing bytes, a trailing comma, not JSON.
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":"1","channel":"card_present","kind":"sale"}"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":1,"channel":"card_present","kind":"sale"}x"#,
            r#"{"payment_id":"p","store_id":"s","terminal_id":"t","card_id":"c","amount":1,"channel":"card_present","kind":"sale",}"#,
            "{not json",
            "",
        ];
        for case in cases {
            assert!(parse_fast(case.as_bytes()).is_none(), "{case}");
        }
        // Invalid UTF-8 in a string.
        let mut bytes = PLAIN.as_bytes().to_vec();
        let at = PLAIN.find("tok_").unwrap();
        bytes[at] = 0xff;
        assert!(parse_fast(&bytes).is_none());
        assert!(serde(&bytes).is_err());
    }

    #[test]
    fn reading_a_record_falls_back_to_serde_json_with_its_error() {
        let escaped = r#"{"payment_id":"p\"1","store_id":"s","terminal_id":"t","card_id":"c","amount":1,"channel":"card_present","kind":"sale"}"#;
        let record = Record::new("pos.payments", escaped.as_bytes());
        let p = Payment::read(&record).unwrap();
        assert_eq!(p.payment_id, "p\"1");
        let record = Record::new("pos.payments", br#"{"card_id":"c"}"#);
        let err = Payment::read(&record).unwrap_err();
        assert!(err.message().contains("missing field"), "{err}");
    }
}
