//! A plugin that takes seconds to compile: a working plugin component with a
//! large core module appended that nothing instantiates. wasmtime compiles
//! every core module of a component, so the compile time grows with the
//! padding, while the plugin behaves exactly like the one it was made from.
//! Used by the supervisor tests and the benchmark (`scripts/bench`).

/// `base` (a component) padded with `functions` generated functions of
/// `ops` arithmetic steps each. About 2,000 × 200 compiles in ~2 s on one
/// core of the reference machine.
pub fn padded_component(base: &[u8], functions: u32, ops: u32) -> Vec<u8> {
    assert_eq!(&base[..4], b"\0asm", "not WebAssembly");
    let mut types = Vec::new();
    leb(&mut types, 1);
    types.extend_from_slice(&[0x60, 1, 0x7f, 1, 0x7f]); // (func (param i32) (result i32))
    let mut declared = Vec::new();
    leb(&mut declared, functions);
    declared.extend(std::iter::repeat_n(0u8, functions as usize));
    let mut bodies = Vec::new();
    leb(&mut bodies, functions);
    for f in 0..functions {
        let mut code = vec![0x00]; // no locals besides the parameter
        for k in 0..ops {
            // x = (x * c1) ^ c2
            code.extend_from_slice(&[0x20, 0x00, 0x41]);
            sleb(&mut code, i64::from((k * 7919 + f) % 100_000));
            code.extend_from_slice(&[0x6c, 0x41]);
            sleb(&mut code, i64::from(k + f));
            code.extend_from_slice(&[0x73, 0x21, 0x00]);
            if k % 16 == 0 {
                // if x == 0 { x += 1 }: branches keep the optimizer busy
                code.extend_from_slice(&[
                    0x20, 0x00, 0x45, 0x04, 0x40, 0x20, 0x00, 0x41, 0x01, 0x6a, 0x21, 0x00, 0x0b,
                ]);
            }
        }
        code.extend_from_slice(&[0x20, 0x00, 0x0b]);
        leb(&mut bodies, code.len() as u32);
        bodies.extend_from_slice(&code);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(&mut module, 1, &types);
    section(&mut module, 3, &declared);
    section(&mut module, 10, &bodies);
    let mut component = base.to_vec();
    // Section 1 of a component is a core module.
    section(&mut component, 1, &module);
    component
}

fn section(out: &mut Vec<u8>, id: u8, payload: &[u8]) {
    out.push(id);
    leb(out, payload.len() as u32);
    out.extend_from_slice(payload);
}

fn leb(out: &mut Vec<u8>, mut n: u32) {
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

fn sleb(out: &mut Vec<u8>, mut n: i64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
