//! Build script: the project's own C side.
//!
//! * bindgen reads `wamr/include/wamr_coro.h` (the guest SDK header) and emits
//!   its `WCORO_*` constants into `$OUT_DIR/abi_consts.rs`, so the host and C
//!   guests share one definition of the ABI's numbers (`src/abi.rs`).
//! * cc compiles the C sources in `wamr/src/`: the WAMR log bridge and the
//!   C host natives.
//!
//! WAMR itself is built by `wamrx-sys` (CMake). Our C natives do not include
//! `wasm_export.h`: they register and reach guest memory through
//! `wamr/include/wamr_coro_host.h`, which the Rust side implements, so C and
//! Rust natives share one registration path and one set of bounds checks.
use std::{env, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let header = "wamr/include/wamr_coro.h";
    println!("cargo:rerun-if-changed={header}");
    println!("cargo:rerun-if-changed=wamr/src");

    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_var("WCORO_.*")
        .allowlist_type("wcoro_event")
        .use_core()
        .generate()
        .expect("bindgen failed on wamr/include/wamr_coro.h");
    bindings
        .write_to_file(out.join("abi_consts.rs"))
        .expect("writing abi_consts.rs");

    println!("cargo:rerun-if-changed=wamr/include/wamr_coro_host.h");
    cc::Build::new()
        .file("wamr/src/log_bridge.c")
        .file("wamr/src/natives.c")
        .include("wamr/include")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-std=c11")
        .compile("wamr_coro_c");
}
