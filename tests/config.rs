//! Configuration a server cannot run with is refused, with an error naming
//! the setting, before the server binds or starts anything: never a panic
//! deep inside `may`, never a server that limps (every keep-alive
//! connection cut within milliseconds, a ring quietly given another size).
mod common;

use std::time::Duration;

use wamr_coro::server::{Limits, Mode, Server, MAX_QUEUE_CAPACITY, MAX_QUEUE_EVENTS, MAX_QUEUE_SHARDS};
use wamr_coro::Error;

fn refused(limits: Limits, mode: Mode) -> String {
    let server = Server::builder(common::module("echo.wat"))
        .listen("127.0.0.1:0")
        .mode(mode)
        .workers(2)
        .limits(limits.clone())
        .start();
    match server {
        Err(e @ Error::Config(_)) => e.to_string(),
        Err(e) => panic!("not a configuration error: {e}"),
        Ok(s) => {
            let _ = s.stop();
            panic!("started with {limits:?}")
        }
    }
}

#[test]
fn limits_a_server_cannot_run_with_are_refused_by_name() {
    let base = common::test_limits();
    let cases: [(Limits, Mode, &str); 9] = [
        (Limits { chunk_size: 0, ..base.clone() }, Mode::Direct, "chunk_size must be > 0"),
        (Limits { output_limit: 0, ..base.clone() }, Mode::Direct, "output_limit must be > 0"),
        (Limits { max_connections: 0, ..base.clone() }, Mode::Direct, "max_connections must be > 0"),
        (Limits { queue_capacity: 0, ..base.clone() }, Mode::Queue, "queue_capacity must be > 0"),
        (Limits { idle_timeout: Duration::ZERO, ..base.clone() }, Mode::Direct, "idle_timeout must be > 0"),
        (
            Limits { queue_capacity: MAX_QUEUE_CAPACITY + 1, ..base.clone() },
            Mode::Queue,
            "queue_capacity must be at most 1048576",
        ),
        (
            Limits { queue_shards: MAX_QUEUE_SHARDS + 1, ..base.clone() },
            Mode::Queue,
            "queue_shards must be at most 1024",
        ),
        // Each bound kept, but 40 GiB of rings together (the test server
        // has two workers: two shards by default).
        (
            Limits { queue_capacity: MAX_QUEUE_CAPACITY, queue_shards: MAX_QUEUE_SHARDS, ..base.clone() },
            Mode::Queue,
            "queue_capacity 1048576 times 1024 queue shards is 1073741824 events; their rings may hold at most 8388608 together",
        ),
        (
            Limits { queue_capacity: MAX_QUEUE_CAPACITY, queue_shards: MAX_QUEUE_EVENTS / MAX_QUEUE_CAPACITY + 1, ..base.clone() },
            Mode::Queue,
            "queue_capacity 1048576 times 9 queue shards is 9437184 events",
        ),
    ];
    for (limits, mode, want) in cases {
        let got = refused(limits, mode);
        assert!(got.contains(want), "{got:?} does not say {want:?}");
    }
}

/// `--queue-capacity 1000000000` aborted the process (exit 134) on a 40 GB
/// allocation for the ring; it is a configuration error now.
#[test]
fn a_queue_capacity_too_large_to_allocate_is_refused_not_an_abort() {
    let (status, _, err) = common::run_to_exit(
        common::wamr_coro().args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "queue",
            "--queue-capacity",
            "1000000000",
        ]),
        Duration::from_secs(20),
        "serve started with a ring of a billion events",
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("queue_capacity must be at most 1048576"), "{err}");
}

#[test]
fn a_coroutine_stack_too_large_to_map_is_refused_not_a_panic() {
    // 100 GB a coroutine: may's stack allocation failed and panicked at the
    // first spawn. 2^54 + 256 KiB: the size in bytes wrapped to 256 KiB, and
    // the server started as if it had been asked for that.
    for kib in ["99999999", "18014398509482240"] {
        let (status, _, err) = common::run_to_exit(
            common::wamr_coro().args(["serve", "--listen", "127.0.0.1:0", "--stack-kib", kib]),
            Duration::from_secs(20),
            "serve started with a stack too large to map",
        );
        assert_eq!(status.code(), Some(1), "{kib}: {err}");
        assert!(err.contains("coroutine stack must be at most 67108864 bytes"), "{kib}: {err}");
        assert!(!err.contains("panicked"), "{kib}: {err}");
    }
}

/// The pool's ring is allocated whole: `--pool 18446744073709551615`
/// panicked (capacity overflow) before the server listened, and
/// `--pool 100000000` took 1.5 GB of memory (again at each reload). Past
/// `MAX_POOL_CAPACITY` it is a configuration error now.
#[test]
fn a_pool_too_large_to_allocate_is_refused_not_a_panic() {
    for pool in [wamr_coro::server::MAX_POOL_CAPACITY + 1, usize::MAX] {
        let server =
            Server::builder(common::module("echo.wat")).listen("127.0.0.1:0").workers(2).pool_capacity(pool).start();
        match server {
            Err(e @ Error::Config(_)) => assert!(e.to_string().contains("pool_capacity must be at most"), "{e}"),
            Err(e) => panic!("not a configuration error: {e}"),
            Ok(s) => {
                let _ = s.stop();
                panic!("started with a pool of {pool}")
            }
        }
    }
    let (status, _, err) = common::run_to_exit(
        common::wamr_coro().args(["serve", "--listen", "127.0.0.1:0", "--pool", "18446744073709551615"]),
        Duration::from_secs(20),
        "serve started with a pool of 2^64 - 1 envs",
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("pool_capacity must be at most 1048576"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `--max-connections` past what the descriptor limit allows is warned
/// about at start. At 2^64 - 1 the sum of it and the server's own
/// descriptors wrapped (in release builds; debug builds panicked), so the
/// largest values of all went unwarned. The guest here traps in its start
/// function, so the server exits right after the check, with its log.
#[test]
fn a_max_connections_past_the_descriptor_limit_is_warned_even_at_the_maximum() {
    let (dir, wat) = common::guest_file(
        "maxconn",
        "traps_at_start.wat",
        r#"(module (memory (export "memory") 1) (func $s unreachable) (start $s)
             (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
    );
    for n in ["1000000000", "18446744073709551615"] {
        let (status, _, err) = common::run_to_exit(
            common::wamr_coro().args([
                "serve",
                wat.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--max-connections",
                n,
            ]),
            Duration::from_secs(20),
            "serve started a guest that traps at start",
        );
        assert_eq!(status.code(), Some(1), "{n}: {err}");
        assert!(err.contains("max_connections exceeds what the file-descriptor limit allows"), "{n}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
