//! C interop: guests compiled from C by guests/build.sh, natives written in
//! C (wamr/src/natives.c), and contract violations reported clearly.
mod common;

use std::io::Write;

use common::*;
use wamr_coro::abi::ModeReq;
use wamr_coro::server::{EnvPolicy, Mode};
use wamr_coro::{EnvSource, Error, Guest, GuestConfig, Module, Registry};

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 2166136261;
    for b in bytes {
        h ^= *b as u32;
        h = h.wrapping_mul(16777619);
    }
    h & 0x7fff_ffff
}

fn read_line(s: &mut std::net::TcpStream) -> String {
    let mut line = Vec::new();
    loop {
        let b = read_n(s, 1).unwrap()[0];
        if b == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b);
    }
}

/// The error `Guest::new` gives for `m` under `config`.
fn refused(m: Module, config: GuestConfig) -> Error {
    Guest::new(m, config, Registry::new()).unwrap_err()
}

/// `wamr-coro serve path` must fail; its stderr.
fn serve_fails(path: &std::path::Path) -> String {
    let o = common::wamr_coro().args(["serve", path.to_str().unwrap(), "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!o.status.success());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn c_guest_calls_c_natives_round_trip() {
    // guest (C) → wcoro_c.checksum / counter_add (C natives, registered
    // through the same HostFunc path as Rust imports) → result → reply.
    for (mode, policy) in [(Mode::Direct, EnvPolicy::Connection), (Mode::Queue, EnvPolicy::Connection)] {
        let server = start(built_guest("natives_demo"), mode, policy, test_limits());
        let mut s = connect(server.local_addr());
        let mut total = None::<i64>;
        for msg in [&b"hello"[..], b"wamr-coro C natives", &[0xffu8; 300][..]] {
            s.write_all(msg).unwrap();
            let line = read_line(&mut s);
            let (sum, count) = line.split_once(' ').unwrap();
            assert_eq!(sum.parse::<u32>().unwrap(), fnv1a(msg), "checksum of {} bytes", msg.len());
            let count: i64 = count.parse().unwrap();
            // The counter is the host's: it carries across messages (and
            // across the two servers of this loop).
            if let Some(prev) = total {
                assert_eq!(count, prev + msg.len() as i64);
            }
            total = Some(count);
        }
        let stats = server.stop();
        assert_eq!(stats.envs.live, 0);
    }
}

#[test]
fn c_natives_check_guest_pointers() {
    // A WAT guest passes a bad range to the C checksum: -2, no crash.
    setup();
    let m = wamr_coro::Module::from_wat(
        r#"(module
             (import "wcoro_c" "checksum" (func $ck (param i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "bad") (result i32) (call $ck (i32.const 65000) (i32.const 1000)))
             (func (export "neg") (result i32) (call $ck (i32.const 0) (i32.const -1)))
             (func (export "ok") (result i32) (call $ck (i32.const 0) (i32.const 0))))"#,
    )
    .unwrap();
    let mut env = wamr_coro::ExecEnv::new(&m, Default::default()).unwrap();
    for (f, want) in [("bad", -2), ("neg", -2), ("ok", fnv1a(b"") as i32)] {
        let func = env.func(&m, f).unwrap();
        assert_eq!(env.call_i32(&func, &[]).unwrap(), Some(want), "{f}");
    }
}

#[test]
fn c_guests_that_break_the_contract_get_clear_errors() {
    // Missing on_recv.
    let e = refused(built_guest("bad_no_on_recv"), GuestConfig::default());
    assert!(matches!(&e, Error::MissingExport { name, .. } if name == "on_recv"), "{e}");
    let e = refused(built_guest("bad_no_on_recv"), GuestConfig { mode: ModeReq::Queue, ..Default::default() });
    assert!(e.to_string().contains("run") && e.to_string().contains("on_recv"), "{e}");
    // Wrong signature: both sides are named.
    let e = refused(built_guest("bad_signature"), GuestConfig::default());
    match &e {
        Error::WrongSignature { name, expected, found } => {
            assert_eq!(name, "on_recv");
            assert_eq!(expected, "(i32, i32, i32) -> (i32)");
            assert_eq!(found, "(i32, i32) -> (i32)");
        }
        other => panic!("{other}"),
    }
    // Missing __heap_base/__data_end: fine for independent instances, a
    // named error for spawned envs. (Its `alloc` serves 1 KiB: Guest::new
    // makes one env, so a chunk size it cannot serve is a start-up error.)
    let small = GuestConfig { chunk_size: 1024, ..Default::default() };
    assert!(Guest::new(built_guest("bad_no_heap_base"), small, Registry::new()).is_ok());
    let e = refused(built_guest("bad_no_heap_base"), GuestConfig::default());
    assert!(matches!(e, Error::GuestAlloc { .. }), "{e}");
    let e = refused(built_guest("bad_no_heap_base"), GuestConfig { source: EnvSource::Spawn, ..Default::default() });
    assert!(e.to_string().contains("__heap_base") && e.to_string().contains("__data_end"), "{e}");
    // And through the binary, as a user would meet it.
    let path = built_guests_dir().join("bad_signature.wasm");
    let err = serve_fails(&path);
    assert!(
        err.contains("export `on_recv` has signature (i32, i32) -> (i32), expected (i32, i32, i32) -> (i32)"),
        "{err}"
    );
}

/// The SDK's WCORO_QUEUE_LOOP given no room for events (`cap` 0): a
/// zero-length `wait_msg` only peeks, so the loop was handed the same DATA
/// event for ever and spun, with on_recv told of bytes never written to its
/// buffer, until the call budget stopped it. It now returns
/// WCORO_ERR_BAD_POINTER before taking any event: a fault the host counts
/// as a restart, not a budget overrun.
#[test]
fn a_queue_loop_given_no_room_fails_at_once_instead_of_spinning() {
    use wamr_coro::server::Limits;
    let limits = Limits { queue_shards: 1, call_budget: Some(std::time::Duration::from_millis(200)), ..test_limits() };
    let server = start(built_guest("bad_queue_loop_no_room"), Mode::Queue, EnvPolicy::Connection, limits);
    let mut s = connect(server.local_addr());
    s.write_all(b"hello").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.stats().queue_restarts + server.stats().budget_overruns < 2 {
        assert!(std::time::Instant::now() < deadline, "the broken loop neither failed nor spun: {}", server.stats());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Long enough for a spinning loop to overrun its 200 ms budget.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let stats = server.stop();
    assert_eq!(stats.budget_overruns, 0, "the loop spun: {stats}");
    assert!(stats.queue_restarts >= 2, "{stats}");
}

#[test]
fn compiled_guests_satisfy_spawn_without_hand_edits() {
    for name in ["echo", "http", "natives_demo"] {
        built_guest(name).check_spawnable().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    if rust_guest_enabled() {
        built_guest("rust_echo").check_spawnable().unwrap();
    }
    // And they run on spawned envs.
    let server = wamr_coro::server::Server::builder(built_guest("echo"))
        .listen("127.0.0.1:0")
        .env_source(EnvSource::Spawn)
        .limits(test_limits())
        .start()
        .unwrap();
    echo_round(&mut connect(server.local_addr()), b"spawned C guest");
    assert_eq!(server.stop().envs.live, 0);
}

#[test]
fn abi_version_declared_by_the_c_macro_loads_and_serves() {
    // guests/c/echo.c has `WCORO_DECLARE_ABI_VERSION();`: clang exports the
    // record's address, and the host finds the version through its magic.
    let m = built_guest("echo");
    assert_eq!(wamr_coro::abi::guest_abi_version(&m).unwrap(), Some(0x0101));
    let server = start(m, Mode::Direct, EnvPolicy::Connection, test_limits());
    let mut s = connect(server.local_addr());
    echo_round(&mut s, b"versioned");
    drop(s);
    server.stop();
}

#[test]
fn abi_version_mismatch_is_a_clear_error() {
    setup();
    let guest = |decl: &str| {
        format!(
            r#"(module
                 (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 {decl}
                 (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#
        )
    };
    // The plain form: the global's value is the version.
    let ok =
        wamr_coro::Module::from_wat(&guest(r#"(global (export "wcoro_abi_version") i32 (i32.const 0x0101))"#)).unwrap();
    assert_eq!(wamr_coro::abi::guest_abi_version(&ok).unwrap(), Some(0x0101));
    let v10 =
        wamr_coro::Module::from_wat(&guest(r#"(global (export "wcoro_abi_version") i32 (i32.const 0x0100))"#)).unwrap();
    assert_eq!(wamr_coro::abi::guest_abi_version(&v10).unwrap(), Some(0x0100));
    // A guest written for 2.0: refused at start, naming both versions.
    let wat = guest(r#"(global (export "wcoro_abi_version") i32 (i32.const 0x0200))"#);
    let e = refused(wamr_coro::Module::from_wat(&wat).unwrap(), GuestConfig::default());
    assert!(matches!(e, Error::AbiVersion { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "guest ABI version mismatch: the guest declares 2.0 (0x0200); this host supports 1.1 (0x0101) (minor versions up to 1)"
    );
    // A newer minor, a mutable global, a record with a newer version.
    let newer = guest(r#"(global (export "wcoro_abi_version") i32 (i32.const 0x0102))"#);
    let e = refused(wamr_coro::Module::from_wat(&newer).unwrap(), GuestConfig::default());
    assert!(e.to_string().contains("declares 1.2 (0x0102)"), "{e}");
    let mutable = guest(r#"(global (export "wcoro_abi_version") (mut i32) (i32.const 0x0101))"#);
    let e = refused(wamr_coro::Module::from_wat(&mutable).unwrap(), GuestConfig::default());
    assert!(e.to_string().contains("not an immutable i32 global"), "{e}");
    let rec = guest(
        r#"(global (export "wcoro_abi_version") i32 (i32.const 1024))
           (data (i32.const 1024) "wcoroabi\00\03\00\00")"#,
    );
    let e = refused(wamr_coro::Module::from_wat(&rec).unwrap(), GuestConfig::default());
    assert!(e.to_string().contains("declares 3.0 (0x0300)"), "{e}");
    // Through the binary, as a user meets it.
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abi_v2.wat");
    std::fs::write(&path, &wat).unwrap();
    let err = serve_fails(&path);
    assert!(err.contains("the guest declares 2.0 (0x0200); this host supports 1.1 (0x0101)"), "{err}");
}
