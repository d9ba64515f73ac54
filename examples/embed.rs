//! A Rust service embedding the server, with a host import of its own.
//!
//! The service keeps a visit counter in Rust and lets its guest read it
//! through `svc.visits() -> i64`. The guest greets every line it receives
//! with the visit number: "visit 1: hello".
//!
//! ```sh
//! cargo run --release --example embed                # then: nc 127.0.0.1 7881
//! cargo run --release --example embed -- --self-test # starts, checks, stops
//! ```
use std::io::{Read, Write};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use wamr_coro::server::Server;
use wamr_coro::{HostFunc, Module, Runtime, RuntimeConfig, Val, ValType};

/// The guest: on each message, fetch the visit number from the host, write
/// "visit N: " in front of the message, send it back.
const GUEST: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "svc" "visits" (func $visits (result i64)))
  (memory (export "memory") 2)
  (global (export "__heap_base") i32 (i32.const 131072))
  (data (i32.const 0) "visit ")
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  ;; writes the decimal digits of $v at $at, returns how many
  (func $itoa (param $v i64) (param $at i32) (result i32)
    (local $n i32) (local $i i32) (local $t i64)
    (local.set $t (local.get $v))
    (loop $count (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (local.set $t (i64.div_u (local.get $t) (i64.const 10)))
      (br_if $count (i64.ne (local.get $t) (i64.const 0))))
    (local.set $i (local.get $n))
    (loop $digit (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $at) (local.get $i))
        (i32.wrap_i64 (i64.add (i64.const 48) (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i32.gt_s (local.get $i) (i32.const 0))))
    (local.get $n))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (local $n i32)
    (local.set $n (call $itoa (call $visits) (i32.const 6)))
    (i32.store16 (i32.add (i32.const 6) (local.get $n)) (i32.const 0x203a)) ;; ": "
    (drop (call $send (local.get $conn) (i32.const 0) (i32.add (local.get $n) (i32.const 8))))
    (call $send (local.get $conn) (local.get $ptr) (local.get $len))))
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Colour only on a terminal: piped logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter("info,may=warn").with_ansi(ansi).with_writer(std::io::stderr).init();
    let self_test = std::env::args().any(|a| a == "--self-test");

    // 1. The runtime, and our import — registered before the module loads.
    let runtime = Runtime::init(RuntimeConfig::default())?;
    let visits = Arc::new(AtomicI64::new(0));
    let counter = Arc::clone(&visits);
    runtime.register(HostFunc::new("svc", "visits", &[], &[ValType::I64], move |_caller, _args| {
        Ok(Some(Val::I64(counter.fetch_add(1, Ordering::Relaxed) + 1)))
    }))?;

    // 2. The guest and the server.
    let module = Module::from_wat(GUEST)?;
    let listen = if self_test { "127.0.0.1:0" } else { "127.0.0.1:7881" };
    let server = Arc::new(Server::builder(module).listen(listen).start()?);
    println!("embedded service on {} (Ctrl-C stops it)", server.local_addr());

    // 3. Serve until a signal — or check ourselves once and stop.
    if self_test {
        let mut s = std::net::TcpStream::connect(server.local_addr())?;
        for (i, word) in ["hello", "again"].iter().enumerate() {
            s.write_all(word.as_bytes())?;
            let want = format!("visit {}: {word}", i + 1);
            let mut got = vec![0u8; want.len()];
            s.read_exact(&mut got)?;
            assert_eq!(String::from_utf8_lossy(&got), want);
            println!("{want}");
        }
    } else {
        wamr_coro::server::signals::stop_on_signal(&server)?;
    }
    println!("{}", server.stop());
    Ok(())
}
