//! Converts WebAssembly text to binaries:
//! `cargo run --example wat2wasm IN.wat OUT.wasm [IN2.wat OUT2.wasm ...]`.
//! Used by `wamr/asan/run.sh` for the regression modules in `tests/cve/`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() % 2 != 0 {
        eprintln!("usage: wat2wasm IN.wat OUT.wasm [IN2.wat OUT2.wasm ...]");
        std::process::exit(2);
    }
    for pair in args.chunks(2) {
        let (input, output) = (&pair[0], &pair[1]);
        let bytes = wat::parse_file(input).unwrap_or_else(|e| {
            eprintln!("{input}: {e}");
            std::process::exit(1);
        });
        std::fs::write(output, bytes).unwrap_or_else(|e| {
            eprintln!("{output}: {e}");
            std::process::exit(1);
        });
    }
}
