//! `Limits::instruction_budget` (`--instruction-budget`): a spinning guest is
//! stopped by WAMR's instruction metering, with no time budget at all, while
//! healthy connections beside it keep being served.
mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use wamr_coro::server::{EnvPolicy, Limits, Mode};

/// No time budget: only the instruction budget can stop a spinner.
fn limits(budget: u32) -> Limits {
    Limits { call_budget: None, instruction_budget: Some(budget), ..test_limits() }
}

/// Echo clients that run until `stop`, each returning its round count.
fn healthy_clients(addr: std::net::SocketAddr, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    (0..4)
        .map(|i| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut n = 0u64;
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    echo_round(&mut s, format!("healthy {i} message {n}").as_bytes());
                    n += 1;
                }
                n
            })
        })
        .collect()
}

#[test]
fn direct_mode_spinner_is_stopped_by_the_instruction_budget_beside_healthy_connections() {
    for policy in [EnvPolicy::Connection, EnvPolicy::Message] {
        let server = start(module("faulty.wat"), Mode::Direct, policy, limits(5_000_000));
        let addr = server.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let healthy = healthy_clients(addr, &stop);
        std::thread::sleep(Duration::from_millis(50));
        let mut sp = connect(addr);
        sp.write_all(b"S").unwrap();
        assert!(closed_by_peer(&mut sp, Duration::from_secs(10)), "spinner was not stopped ({policy:?})");
        echo_round(&mut connect(addr), b"after the spinner");
        stop.store(true, Ordering::Relaxed);
        for h in healthy {
            assert!(h.join().expect("a healthy connection broke") > 0);
        }
        let stats = server.stop();
        assert_eq!(stats.instruction_budget_overruns, 1, "{stats}");
        assert_eq!((stats.budget_overruns, stats.traps), (0, 0), "{stats}");
        assert_eq!(stats.envs.live, 0);
    }
}

/// Queue mode with the guest's own loop: echoes each DATA event after
/// `work` loop iterations (its first byte times 8), spins on 'S'.
const QUEUE_RUN_WAT: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global (export "__heap_base") i32 (i32.const 196608))
  (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "run") (result i32)
    (local $n i32) (local $c i32) (local $i i32)
    (loop $next
      (local.set $n (call $wait (i32.const 65536) (i32.const 65536) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then
          (local.set $c (i32.load8_u (i32.const 65536)))
          (if (i32.eq (local.get $c) (i32.const 83)) (then (loop $spin (br $spin))))
          (local.set $i (i32.mul (local.get $c) (i32.const 8)))
          (loop $work
            (local.set $i (i32.sub (local.get $i) (i32.const 1)))
            (br_if $work (i32.gt_s (local.get $i) (i32.const 0))))
          (drop (call $send (i32.load (i32.const 1024)) (i32.const 65536) (local.get $n)))))
      (br $next))
    (i32.const 0)))"#;

#[test]
fn queue_run_loop_budget_is_per_event() {
    setup();
    let m = wamr_coro::Module::from_wat(QUEUE_RUN_WAT).unwrap();
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
