//! The first use of the runtime, from many threads at once. Its own test
//! binary: the runtime must not be initialised before the race starts.
use std::sync::{Arc, Barrier};

use wamr_coro::Module;

/// Threads racing to load a module that imports the guest ABI while the
/// runtime initialises itself (`Module` initialises it on first use). A
/// thread that saw the runtime before its built-in imports were registered
/// would fail with an unlinked `env.send`.
#[test]
fn concurrent_first_use_sees_the_abi_imports() {
    const THREADS: usize = 8;
    let wat = r#"(module
        (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
        (import "env" "now_ms" (func $now (result i64)))
        (memory (export "memory") 1)
        (func (export "on_recv") (param i32 i32 i32) (result i32)
            (drop (call $send (local.get 0) (local.get 1) (local.get 2)))
            (i32.const 0)))"#;
    let bytes = Arc::new(wat::parse_str(wat).unwrap());
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (bytes, barrier) = (Arc::clone(&bytes), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                Module::from_binary(&bytes).map(|_| ()).map_err(|e| e.to_string())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
}
