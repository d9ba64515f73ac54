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

/// The log this test binary writes (one subscriber per process), and the
/// lock its tests hold while they use it.
fn captured() -> (Captured, parking_lot::MutexGuard<'static, ()>) {
    static OUT: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    static USE: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    let out = OUT
        .get_or_init(|| {
            let out = Captured::default();
            let writer = out.clone();
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_env_filter("guest=info")
                .try_init()
                .expect("captured() installs the process's subscriber, so it runs before common::setup()");
            out
        })
        .clone();
    let guard = USE.lock();
    out.0.lock().clear();
    (out, guard)
}

#[test]
fn guest_log_lines_name_the_connection_and_a_flood_is_cut() {
    let (out, _log) = captured();
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

/// Logs a 60 KiB line ("BIG", then "A"s) for every message, then answers
/// one byte: what a guest that logs its client's requests does with a big
/// one.
const LOUD: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 3)
  (data (i32.const 16) "k")
  (data (i32.const 131069) "BIG")
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (memory.fill (i32.const 131072) (i32.const 65) (i32.const 61440))
    (call $log (i32.const 1) (i32.const 131069) (i32.const 61443))
    (call $send (local.get $c) (i32.const 16) (i32.const 1))))"#;

/// The rate limit bounds a guest's lines; their length must be bounded
/// too. Before, a line was as long as the guest asked, up to its whole
/// memory: a guest that logs its clients' requests put each one whole in
/// the server's log, ten lines a second per connection.
/// Now a line keeps its first 4 KiB and says how much was left out.
#[test]
fn a_guest_log_line_is_cut_at_4_kib() {
    let (out, _log) = captured();
    setup();
    let server = start(wamr_coro::Module::from_wat(LOUD).unwrap(), Mode::Direct, EnvPolicy::Connection, test_limits());
    let mut s = connect(server.local_addr());
    s.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut s, 1).unwrap(), b"k");
    drop(s);
    server.stop();
    let text = String::from_utf8_lossy(&out.0.lock()).into_owned();
    let line = text.lines().find(|l| l.contains("BIGAAAA")).unwrap_or_else(|| panic!("no log line: {text:.300}"));
    assert!(line.len() < 4096 + 300, "a log line of {} bytes", line.len());
    assert!(line.contains(&format!("BIG{}", "A".repeat(4093))), "{line:.200}");
    let more = line.split("[... ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<usize>().ok());
    assert!(more.is_some_and(|n| n == 61443 - 4096), "no note of the bytes left out: {line:.100}...");
}

/// Logs what its client sent (at warn level), then answers one byte.
const ECHO_TO_LOG: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "k")
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (call $log (i32.const 1) (local.get $p) (local.get $n))
    (call $send (local.get $c) (i32.const 16) (i32.const 1))))"#;

/// A client's bytes that a guest logs cannot forge a line of the server's
/// log: newlines, carriage returns, NULs and escapes come out escaped,
/// inside the guest's own line. Before, the text went out as it was, and a
/// client could write "\n<timestamp>  INFO wamr_coro: …" into the log.
#[test]
fn a_guest_log_line_cannot_forge_another() {
    let (out, _log) = captured();
    setup();
    for mode in [Mode::Direct, Mode::Queue] {
        out.0.lock().clear();
        let server =
            start(wamr_coro::Module::from_wat(ECHO_TO_LOG).unwrap(), mode, EnvPolicy::Connection, test_limits());
        let mut s = connect(server.local_addr());
        s.write_all(b"hello\n2026-01-01T00:00:00Z  INFO wamr_coro: FORGED\r\0\x1b[2J end").unwrap();
        assert_eq!(read_n(&mut s, 1).unwrap(), b"k");
        drop(s);
        server.stop();
        let text = String::from_utf8_lossy(&out.0.lock()).into_owned();
        assert!(!text.lines().any(|l| l.starts_with("2026-01-01")), "{mode:?}: a forged line: {text}");
        let line = text.lines().find(|l| l.contains("hello")).unwrap_or_else(|| panic!("{mode:?}: no line: {text}"));
        assert!(
            line.contains(r"hello\n2026-01-01T00:00:00Z  INFO wamr_coro: FORGED\r\u{0}\u{1b}[2J end"),
            "{mode:?}: {line}"
        );
    }
}
