//! `Limits::instruction_budget` (`--instruction-budget`): a spinning guest is
//! stopped by WAMR's instruction metering, with no time budget at all, while
//! healthy connections beside it keep being served.
mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use wamr_coro::server::{EnvPolicy, Limits, Mode};

/// No time budget: only the instruction budget can stop a spinner.
fn limits(budget: u32) -> Limits {
    Limits { call_budget: None, instruction_budget: Some(budget), ..test_limits() }
}

#[test]
fn direct_mode_spinner_is_stopped_by_the_instruction_budget_beside_healthy_connections() {
    for policy in [EnvPolicy::Connection, EnvPolicy::Message] {
        let server = start(module("faulty.wat"), Mode::Direct, policy, limits(5_000_000));
        let addr = server.local_addr();
        let healthy = echoers(addr, 4, false);
        std::thread::sleep(Duration::from_millis(50));
        assert!(closed_after(addr, b"S", Duration::from_secs(10)), "spinner was not stopped ({policy:?})");
        echo_round(&mut connect(addr), b"after the spinner");
        for n in healthy.finish() {
            assert!(n > 0);
        }
        let stats = server.stop();
        assert_eq!(stats.instruction_budget_overruns, 1, "{stats}");
        assert_eq!((stats.budget_overruns, stats.traps), (0, 0), "{stats}");
        assert_eq!(stats.envs.live, 0);
    }
}

/// Queue mode with the guest's own loop: echoes each DATA event after
/// `work` loop iterations (its first byte times 8), spins on 'S'.
fn queue_run_wat() -> String {
    run_loop_wat(
        "(local.set $i (i32.mul (local.get $c) (i32.const 8)))
          (loop $work
            (local.set $i (i32.sub (local.get $i) (i32.const 1)))
            (br_if $work (i32.gt_s (local.get $i) (i32.const 0))))",
    )
}

#[test]
fn queue_run_loop_budget_is_per_event() {
    setup();
    let m = wamr_coro::Module::from_wat(&queue_run_wat()).unwrap();
    // ~4 ops per iteration, 'h' = 104 -> 832 iterations, ~3.5k ops per
    // event: 200 events are ~700k ops in one `run` call, far past the
    // budget unless wait_msg re-arms it per event.
    // One shard: the connection beside the spinner shares its instance.
    let server = start(m, Mode::Queue, EnvPolicy::Connection, Limits { queue_shards: 1, ..limits(20_000) });
    let addr = server.local_addr();
    let mut a = connect(addr);
    for i in 0..200 {
        echo_round(&mut a, format!("hello {i}").as_bytes());
    }
    // Spinning on one event is stopped: the instance is replaced, its
    // connections closed, and new connections are served.
    let mut s = connect(addr);
    s.write_all(b"S").unwrap();
    assert!(closed_by_peer(&mut s, Duration::from_secs(10)), "spinner was not stopped");
    assert!(closed_by_peer(&mut a, Duration::from_secs(10)));
    echo_round(&mut connect(addr), b"hello from a fresh instance");
    let stats = server.stop();
    assert_eq!(stats.instruction_budget_overruns, 1, "{stats}");
    assert_eq!((stats.budget_overruns, stats.traps, stats.queue_restarts), (0, 0, 1), "{stats}");
}

/// A queue guest that does the same work for every event (about 6,000 loop
/// iterations, well within a 40,000-op budget), and some cleanup (9,000
/// iterations) when told SHUTDOWN before it returns from `run`.
const WORK_PER_EVENT_AND_CLEANUP: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (func $work (param $n i32)
    (loop $w
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $w (i32.gt_s (local.get $n) (i32.const 0)))))
  (func (export "run") (result i32) (local $n i32)
    (loop $next
      (local.set $n (call $wait (i32.const 65536) (i32.const 65536) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4))
        (then (call $work (i32.const 9000)) (return (i32.const 0))))
      (call $work (i32.const 6000))
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then (drop (call $send (i32.load (i32.const 1024)) (i32.const 65536) (local.get $n)))))
      (br $next))
    (i32.const 0)))"#;

/// The instruction budget is per event, re-armed when `wait_msg` hands one
/// out; SHUTDOWN did not re-arm it, so a guest had only what its last event
/// (at a stop, a CLOSE) had left to return from `run`, and one whose events
/// each used most of the budget failed at every stop with an "overrun"
/// although no event ever overran. SHUTDOWN now gives it a budget to return
/// in, as it does for the time budget.
#[test]
fn a_queue_guest_has_its_instruction_budget_to_return_after_shutdown() {
    setup();
    let m = wamr_coro::Module::from_wat(WORK_PER_EVENT_AND_CLEANUP).unwrap();
    let server = start(m, Mode::Queue, EnvPolicy::Connection, Limits { queue_shards: 1, ..limits(40_000) });
    let mut a = connect(server.local_addr());
    for i in 0..20 {
        echo_round(&mut a, format!("hello {i}").as_bytes());
    }
    drop(a);
    let stats = server.stop();
    assert_eq!(stats.instruction_budget_overruns, 0, "{stats}");
    assert_eq!((stats.traps, stats.queue_restarts, stats.shutdown_cuts), (0, 0, 0), "{stats}");
}
