//! The Rust guest SDK (guest-sdk/): its examples, built by guests/build.sh
//! with `export_guest!`, serve real sockets in both modes.
mod common;

use common::*;
use wamr_coro::server::{EnvPolicy, Mode, Server};
use wamr_coro::EnvSource;

#[test]
fn sdk_echo_example_serves_both_modes_and_spawn() {
    if !rust_guest_enabled() {
        eprintln!("SKIP_RUST_GUEST=1: the Rust guests are not built in this run");
        return;
    }
    let m = built_guest("rust_echo");
    // export_guest! emits the version record, and what spawn needs.
    assert_eq!(wamr_coro::abi::guest_abi_version(&m).unwrap(), Some(0x0101));
    m.check_spawnable().unwrap();
    for (mode, policy) in [
        (Mode::Direct, EnvPolicy::Connection),
        (Mode::Direct, EnvPolicy::Message),
        (Mode::Queue, EnvPolicy::Connection),
    ] {
        let server = start(m.clone(), mode, policy, test_limits());
        let mut a = connect(server.local_addr());
        let mut b = connect(server.local_addr());
        for i in 0..20u8 {
            let msg: Vec<u8> = (0..(1 + i as usize * 3000)).map(|k| (k as u8).wrapping_mul(i)).collect();
            echo_round(&mut a, &msg);
            echo_round(&mut b, b"second connection");
        }
        drop((a, b));
        let stats = server.stop();
        assert_eq!(stats.traps, 0, "{mode:?} {policy:?}");
        assert_eq!(stats.envs.live, 0, "{mode:?} {policy:?}");
    }
    // Spawned envs: the SDK's `alloc` gives them their receive buffer.
    let server =
        Server::builder(m).listen("127.0.0.1:0").env_source(EnvSource::Spawn).limits(test_limits()).start().unwrap();
    echo_round(&mut connect(server.local_addr()), b"spawned Rust guest");
    assert_eq!(server.stop().envs.live, 0);
}

#[test]
fn sdk_http_example_answers_in_queue_mode_with_many_connections() {
    if !rust_guest_enabled() {
        eprintln!("SKIP_RUST_GUEST=1: the Rust guests are not built in this run");
        return;
    }
    use std::io::Write;
    // One instance keeps the parse state of every connection in its table:
    // requests split across connections' writes must not mix.
    let server = start(built_guest("rust_http"), Mode::Queue, EnvPolicy::Connection, test_limits());
    let mut conns: Vec<_> = (0..8).map(|_| connect(server.local_addr())).collect();
    for c in &mut conns {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    }
    for c in &mut conns {
        c.write_all(b"\r\n").unwrap();
        assert_eq!(read_n(c, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE);
    }
    drop(conns);
    assert_eq!(server.stop().envs.live, 0);
}

/// The SDK's `alloc` hands out 16-byte-aligned blocks, as its docs and the C
/// SDK's `WCORO_BUMP_ALLOC` promise. The arena's first block once sat 4 bytes
/// past an aligned address on wasm32 (the arena's own counter came first and
/// the blocks were aligned relative to the byte array after it).
#[test]
fn sdk_alloc_blocks_are_16_byte_aligned_like_the_c_sdks() {
    let mut guests = vec!["c:echo"];
    if rust_guest_enabled() {
        guests.push("rust:rust_echo");
    }
    for name in guests {
        let m = any_guest(name);
        let mut env = wamr_coro::ExecEnv::new(&m, wamr_coro::InstanceConfig::default()).unwrap();
        let alloc = env.typed::<i32, i32>(&m, "alloc").unwrap();
        for size in [1, 16, 100] {
            let p = env.call_typed(&alloc, size).unwrap();
            assert!(p > 0, "{name}: alloc({size}) = {p}");
            assert_eq!(p % 16, 0, "{name}: alloc({size}) = {p:#x}, not 16-byte aligned");
        }
    }
}
