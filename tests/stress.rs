//! `wamr-coro stress`, the coroutine stress tool people size deployments
//! with: thousands of coroutines on two workers, each creating an env,
//! calling it on the worker's call stack and yielding between calls, so
//! coroutines move between the workers all the time.
//!
//! `WAMR_CORO_STRESS_BIN` names another binary to run instead of the test
//! build's: `.ci/run` also runs it against the release build, the binary
//! that ships.
mod common;

use std::time::Duration;

fn stress(source: &str) {
    let mut cmd = match std::env::var_os("WAMR_CORO_STRESS_BIN") {
        Some(bin) => std::process::Command::new(bin),
        None => common::wamr_coro(),
    };
    // A coroutine that panics never reports ready, and the tool would wait
    // for it forever: bounded here.
    let (status, out, err) = common::run_to_exit(
        cmd.args(["stress", "--coroutines", "5000", "--calls", "4", "--workers", "2", "--source", source]),
        Duration::from_secs(120),
        "stress did not finish",
    );
    assert!(!err.contains("panicked"), "{source}: {err}");
    assert!(status.success(), "{source}: {status}\n{err}");
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.starts_with("5000 coroutines"), "{source}: {out}");
    assert!(summary.contains("20000 calls"), "{source}: {summary}");
    assert!(summary.contains("errors 0, live after 0"), "{source}: {summary}");
}

/// Each coroutine forbids yielding (a thread-local flag in the vendored
/// may) while its call runs on the worker's call stack. The flag's accessors
/// were inlined into the coroutine's loop, and the compiler computed the
/// flag's address once for the loop: after a yield moved the coroutine to
/// the other worker, it set and restored the first worker's flag, and that
/// worker's coroutines panicked at their next yield ("coroutine may not
/// block"). About 20 coroutines in 5,000 did, every run of the release
/// build. The test build did not inline it until the test profile moved
/// from opt-level 1 to 3 (Cargo.toml); with 3 this test fails on the old
/// code (the tool hangs on the panicked coroutines).
#[test]
fn stress_with_coroutines_moving_between_workers_has_no_errors() {
    stress("instance");
    stress("spawn");
}

/// `--coroutines 0` printed per-env costs measured over no env, and
/// `--coroutines 18446744073709551615` panicked allocating the handles
/// (capacity overflow, exit 101). Both are refused by name now.
#[test]
fn a_stress_of_none_or_of_more_than_can_be_held_is_refused_not_a_panic() {
    for n in ["0", "18446744073709551615"] {
        let (status, out, err) = common::run_to_exit(
            common::wamr_coro().args(["stress", "--coroutines", n]),
            Duration::from_secs(60),
            "stress did not end",
        );
        assert_eq!(status.code(), Some(1), "{n}: {out}{err}");
        assert!(err.contains("--coroutines must be 1 to 10000000"), "{n}: {err}");
        assert!(!err.contains("panicked") && !out.contains("coroutines, source"), "{n}: {out}{err}");
    }
}
