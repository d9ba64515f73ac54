//! What an idle connection keeps after its answers. Alone in its binary:
//! it measures the process's resident memory, which other tests running in
//! parallel would move.
mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use wamr_coro::server::{EnvPolicy, Mode};
use wamr_coro::Module;

/// Answers every message with 1 MiB (the default output limit) in one send.
const BIG_ANSWER: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 18)
  (data (i32.const 0) "big answer")
  (func (export "alloc") (param i32) (result i32) (i32.const 1114112))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (call $send (local.get $c) (i32.const 0) (i32.const 1048576))))"#;

/// Direct mode kept each connection's output buffer for reuse at the
/// capacity of the largest answer it ever wrote: 50 clients that asked for
/// one 1 MiB answer each and then held their connections open idle kept
/// 52 MiB resident (4 MiB now: buffers larger than 64 KiB are freed once
/// written). Measured for both env policies.
#[test]
fn idle_connections_do_not_keep_the_buffer_of_their_largest_answer() {
    setup();
    for policy in [EnvPolicy::Connection, EnvPolicy::Message] {
        let server = start(Module::from_wat(BIG_ANSWER).unwrap(), Mode::Direct, policy, test_limits());
        // One round first, so that allocator and pool warm-up is not counted.
        let mut warm = connect(server.local_addr());
        warm.write_all(b"x").unwrap();
        read_n(&mut warm, 1 << 20).unwrap();
        drop(warm);
        std::thread::sleep(Duration::from_millis(100));
        let before = wamr_coro::internals::stress::rss_bytes();
        let mut held = Vec::new();
        for _ in 0..50 {
            let mut c = connect(server.local_addr());
            c.write_all(b"x").unwrap();
            let answer = read_n(&mut c, 1 << 20).unwrap();
            assert!(answer.starts_with(b"big answer"), "{policy:?}");
            held.push(c);
        }
        let grew = wamr_coro::internals::stress::rss_bytes().saturating_sub(before);
        assert!(grew < 25 << 20, "{policy:?}: 50 idle connections keep {} MiB", grew >> 20);
        drop(held);
        server.stop();
    }
}
