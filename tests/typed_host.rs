//! Typed host functions (`HostFunc::wrap`): the signature comes from the
//! closure's Rust types, failures are `HostError`s, and inside a server
//! callback the caller knows its connection.
mod common;

use std::io::Write;
use std::sync::Once;

use common::*;
use wamr_coro::server::{EnvPolicy, Mode};
use wamr_coro::{Caller, Error, ExecEnv, HostError, HostFunc, InstanceConfig, Module, Runtime};

fn register() {
    setup();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let rt = Runtime::get().unwrap();
        // () -> i32: the calling connection's id, or a trap outside one.
        rt.register(HostFunc::wrap("typed", "conn_id", |mut caller: Caller<'_>| {
            caller.connection().map(|c| c.id).ok_or_else(|| HostError::msg("conn_id: not serving a connection"))
        }))
        .unwrap();
        // () -> i32: the peer's port, 0 if unknown.
        rt.register(HostFunc::wrap("typed", "peer_port", |mut caller: Caller<'_>| -> i32 {
            caller.connection().and_then(|c| c.peer).map_or(0, |p| p.port() as i32)
        }))
        .unwrap();
        // (i32, i64, f64) -> i64: arguments decoded by type.
        rt.register(HostFunc::wrap("typed", "mix", |_: Caller<'_>, a: i32, b: i64, c: f64| -> i64 {
            a as i64 * 1_000_000_007 + b + c as i64
        }))
        .unwrap();
        // (u32) -> (): an Err becomes the guest's trap, with its message.
        rt.register(HostFunc::wrap("typed", "check", |_: Caller<'_>, v: u32| -> Result<(), std::io::Error> {
            if v == 0 {
                Err(std::io::Error::other("check: zero is not allowed"))
            } else {
                Ok(())
            }
        }))
        .unwrap();
    });
}

/// on_recv answers 16 bytes: the ABI's conn, conn_id(), peer_port(), and
/// mix(7, 40, 2.9) truncated to i32.
const GUEST: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "typed" "conn_id" (func $conn_id (result i32)))
  (import "typed" "peer_port" (func $peer_port (result i32)))
  (import "typed" "mix" (func $mix (param i32 i64 f64) (result i64)))
  (import "typed" "check" (func $check (param i32)))
  (memory (export "memory") 2)
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $conn i32) (param $p i32) (param $n i32) (result i32)
    (i32.store (i32.const 0) (local.get $conn))
    (i32.store (i32.const 4) (call $conn_id))
    (i32.store (i32.const 8) (call $peer_port))
    (i32.store (i32.const 12) (i32.wrap_i64 (call $mix (i32.const 7) (i64.const 40) (f64.const 2.9))))
    (drop (call $send (local.get $conn) (i32.const 0) (i32.const 16)))
    (i32.const 0))
  (func (export "conn_id") (result i32) (call $conn_id))
  (func (export "check") (param i32) (call $check (local.get 0))))"#;

fn le(b: &[u8], i: usize) -> i32 {
    i32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
}

#[test]
fn typed_host_function_reads_the_connection_over_a_real_socket() {
    register();
    let module = Module::from_wat(GUEST).unwrap();
    for (mode, policy) in [
        (Mode::Direct, EnvPolicy::Connection),
        (Mode::Direct, EnvPolicy::Message),
        (Mode::Queue, EnvPolicy::Connection),
    ] {
        let server = start(module.clone(), mode, policy, test_limits());
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut s = connect(server.local_addr());
            for _ in 0..2 {
                s.write_all(b"?").unwrap();
                let r = read_n(&mut s, 16).unwrap();
                let (abi_conn, host_conn, port, mix) = (le(&r, 0), le(&r, 1), le(&r, 2), le(&r, 3));
                assert!(abi_conn > 0);
                assert_eq!(host_conn, abi_conn, "Caller::connection() names the connection being served");
                assert_eq!(port, s.local_addr().unwrap().port() as i32, "the peer is this client");
                assert_eq!(mix, (7 * 1_000_000_007i64 + 40 + 2) as i32, "(i32, i64, f64) -> i64 decoded by type");
                seen.push(host_conn);
            }
        }
        seen.dedup();
        assert_eq!(seen.len(), 3, "three connections, three ids: {seen:?} ({mode:?} {policy:?})");
        let stats = server.stop();
        assert_eq!(stats.traps, 0);
    }
}

#[test]
fn typed_host_function_errors_trap_with_their_message() {
    register();
    let module = Module::from_wat(GUEST).unwrap();
    let mut env = ExecEnv::new(&module, InstanceConfig::default()).unwrap();
    // Outside a server there is no connection: the HostError is the trap.
    let f = env.func(&module, "conn_id").unwrap();
    match env.call(&f, &[]) {
        Err(Error::Trap { message, .. }) => assert!(message.contains("conn_id: not serving a connection"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    let mut env = ExecEnv::new(&module, InstanceConfig::default()).unwrap();
    let check = env.typed::<i32, ()>(&module, "check").unwrap();
    env.call_typed(&check, 1).unwrap();
    match env.call_typed(&check, 0) {
        Err(Error::Trap { message, .. }) => assert!(message.contains("check: zero is not allowed"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn the_inferred_signature_is_what_guests_must_import() {
    register();
    // typed.mix is (i32, i64, f64) -> i64; importing it as (i32) -> i32
    // does not link.
    let wat = r#"(module (import "typed" "mix" (func (param i32) (result i32))) (memory (export "memory") 1))"#;
    let e = Module::from_wat(wat).unwrap_err();
    assert!(e.to_string().contains("typed.mix"), "{e}");
}
