//! What a plugin module may be, checked before it is compiled: compiling is the one step whose
//! time and memory grow with the module's shape rather than its size (a 6 MB function of two
//! million calls took a minute and 4.4 GiB to compile, 900,000 tiny functions 5.4 GiB), so a
//! module is refused up front, with an error naming the limit, when it has
//!
//! | limit | value |
//! |---|---|
//! | functions (imported + defined) | [`MAX_FUNCTIONS`] |
//! | bytes of one function body | [`MAX_FUNCTION_BYTES`] |
//! | bytes of all function bodies together | [`MAX_CODE_BYTES`] |
//! | nested blocks (`block`/`loop`/`if`/`try_table`) in one function | [`MAX_NESTING`] |
//! | WAT text (development only; converted to binary first) | [`MAX_WAT_BYTES`] |
//!
//! Real plugins are far inside these: the bundled fraud-score, recommend and sensor-watch
//! modules have 465–509 functions, the largest body 27 KB, about 250 KB of code in all.

use wasmparser::{Operator, Parser, Payload};

/// Functions a module may import and define together.
pub(crate) const MAX_FUNCTIONS: u32 = 10_000;
/// Bytes of one function body, at most.
pub(crate) const MAX_FUNCTION_BYTES: usize = 128 * 1024;
/// Bytes of code (all function bodies) a module may have.
pub(crate) const MAX_CODE_BYTES: usize = 4 * 1024 * 1024;
/// Blocks nested inside one another in a function, at most.
pub(crate) const MAX_NESTING: u32 = 256;
/// WAT text accepted, at most (binary modules are the normal form).
pub(crate) const MAX_WAT_BYTES: usize = 1024 * 1024;

/// Checks `wasm` (a binary module) against the limits above; the error says which one and by
/// how much. Malformed bytes are left for the compiler to report.
pub(crate) fn check(wasm: &[u8]) -> Result<(), String> {
    let mut functions: u32 = 0;
    let mut index: u32 = 0;
    let mut code: usize = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        match payload {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports().flatten() {
                    if matches!(import.ty, wasmparser::TypeRef::Func(_)) {
                        functions = functions.saturating_add(1);
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                functions = functions.saturating_add(reader.count());
            }
            Payload::CodeSectionEntry(body) => {
                index += 1;
                let size = body.range().len();
                code += size;
                if code > MAX_CODE_BYTES {
                    return Err(format!(
                        "its function bodies hold more than {MAX_CODE_BYTES} bytes of code"
                    ));
                }
                if size > MAX_FUNCTION_BYTES {
                    return Err(format!(
                        "function {index} of the code section is {size} bytes; a function may have at most {MAX_FUNCTION_BYTES}"
                    ));
                }
                let Ok(reader) = body.get_operators_reader() else {
                    return Ok(());
                };
                let mut depth: u32 = 0;
                for op in reader {
                    match op {
                        Ok(
                            Operator::Block { .. }
                            | Operator::Loop { .. }
                            | Operator::If { .. }
                            | Operator::TryTable { .. },
                        ) => {
                            depth += 1;
                            if depth > MAX_NESTING {
                                return Err(format!(
                                    "function {index} of the code section nests blocks more than {MAX_NESTING} deep"
                                ));
                            }
                        }
                        Ok(Operator::End) => depth = depth.saturating_sub(1),
                        Ok(_) => {}
                        Err(_) => return Ok(()),
                    }
                }
            }
            _ => {}
        }
        if functions > MAX_FUNCTIONS {
            return Err(format!(
                "it has {functions} functions or more; a module may have at most {MAX_FUNCTIONS}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module_with_functions(bodies: &[Vec<u8>]) -> Vec<u8> {
        fn leb(mut n: usize, out: &mut Vec<u8>) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    return;
                }
                out.push(byte | 0x80);
            }
        }
        fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
            out.push(id);
            leb(body.len(), out);
            out.extend_from_slice(body);
        }
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        section(1, &[1, 0x60, 0, 0], &mut m); // one type: () -> ()
        let mut funcs = Vec::new();
        leb(bodies.len(), &mut funcs);
        funcs.extend(std::iter::repeat_n(0u8, bodies.len()));
        section(3, &funcs, &mut m);
        let mut code = Vec::new();
        leb(bodies.len(), &mut code);
        for b in bodies {
            let mut body = vec![0u8]; // no locals
            body.extend_from_slice(b);
            body.push(0x0b); // end
            leb(body.len(), &mut code);
            code.extend(body);
        }
        section(10, &code, &mut m);
        m
    }

    #[test]
    fn modules_inside_the_limits_pass() {
        let wasm = module_with_functions(&vec![vec![0x01; 1000]; 100]);
        assert_eq!(check(&wasm), Ok(()));
        let nested: Vec<u8> = [
            [0x02u8, 0x40].repeat(MAX_NESTING as usize),
            vec![0x0b; MAX_NESTING as usize],
        ]
        .concat();
        assert_eq!(check(&module_with_functions(&[nested])), Ok(()));
    }

    #[test]
    fn too_many_functions_a_huge_function_and_deep_nesting_are_refused() {
        let many = module_with_functions(&vec![Vec::new(); MAX_FUNCTIONS as usize + 1]);
        assert!(check(&many).unwrap_err().contains("at most 10000"));
        let huge = module_with_functions(&[vec![0x01; MAX_FUNCTION_BYTES]]);
        assert!(check(&huge).unwrap_err().contains("function 1"));
        let bulky = module_with_functions(&vec![vec![0x01; 100_000]; 50]);
        assert!(check(&bulky).unwrap_err().contains("bytes of code"));
        let deep: Vec<u8> = [
            [0x02u8, 0x40].repeat(MAX_NESTING as usize + 1),
            vec![0x0b; MAX_NESTING as usize + 1],
        ]
        .concat();
        let err = check(&module_with_functions(&[deep])).unwrap_err();
        assert!(err.contains("256 deep"), "{err}");
    }
}
