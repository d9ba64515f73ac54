//! Guest `log` lines name their connection and are rate-limited, so a
//! hostile client cannot flood the server's log through its guest.
mod common;

use std::io::Write;

use common::*;
use wamr_coro::server::{EnvPolicy, Mode};

/// Logs "guest says hi" at info level, then answers one byte.
const CHATTY: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "guest says hi!")
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (call $log (i32.const 2) (i32.const 16) (i32.const 13))
    (call $send (local.get $c) (i32.const 16) (i32.const 1))))"#;

#[test]
fn guest_log_lines_name_the_connection_and_a_flood_is_cut() {
    let out = Captured::default();
    let writer = out.clone();
    tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).with_env_filter("guest=info").init();
    setup();
    for mode in [Mode::Direct, Mode::Queue] {
        out.0.lock().clear();
        let server = start(wamr_coro::Module::from_wat(CHATTY).unwrap(), mode, EnvPolicy::Connection, test_limits());
        let mut s = connect(server.local_addr());
        // 300 messages as fast as the guest answers: well under a second.
        for _ in 0..300 {
            s.write_all(b"x").unwrap();
            assert_eq!(read_n(&mut s, 1).unwrap(), b"g");
        }
        server.stop();
        let text = String::from_utf8_lossy(&out.0.lock()).into_owned();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("guest says hi")).collect();
        assert!(!lines.is_empty(), "{mode:?}: no guest log line at all");
        // 10 a second per connection (per shard in queue mode): 300 calls in
        // at most a few seconds leave far fewer lines.
        assert!(lines.len() <= 60, "{mode:?}: {} lines written for 300 calls", lines.len());
        assert!(lines.iter().all(|l| l.contains("conn=1")), "{mode:?}: {lines:?}");
    }
}
