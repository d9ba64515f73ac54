//! Bounded fuzzing on stable Rust (issue 14, item 3): random and
//! wasm-smith-generated modules through the loader, random pointers,
//! lengths and connection ids through every host import over real sockets
//! in both modes, and the event ring under concurrent producers.
//!
//! Seeds are fixed (reproducible) unless `WAMR_CORO_FUZZ_SEED` is set;
//! `WAMR_CORO_FUZZ_ROUNDS` scales the rounds (default keeps the whole file
//! around a minute in CI). A failure prints the seed and the input.
mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Unstructured;
use common::*;
use rand::{Rng, RngCore, SeedableRng};
use wamr_coro::server::{EnvPolicy, Limits, Mode};
use wamr_coro::{Module, Registry};

fn seed() -> u64 {
    std::env::var("WAMR_CORO_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0001)
}

/// `default` rounds times `WAMR_CORO_FUZZ_ROUNDS` (1 if unset): one factor
/// scales every test alike (`.ci/run` runs the file once more, longer).
fn rounds(default: usize) -> usize {
    default * std::env::var("WAMR_CORO_FUZZ_ROUNDS").ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(1)
}

/// Loads, and if that works instantiates, `bytes`: every outcome is fine
/// but a crash or a hang (start functions are not generated).
fn load_and_instantiate(bytes: &[u8]) {
    match Module::new(bytes) {
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && msg.len() < 4096, "unclear error: {msg:?}");
        }
        Ok(m) => {
            // May fail (no memory, a trap in a data segment's bounds...),
            // with an error, never a crash.
            let _ = wamr_coro::ExecEnv::new(&m, wamr_coro::InstanceConfig::default());
        }
    }
}

#[test]
fn the_loader_survives_random_and_mutated_bytes() {
    setup();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let valid = wat::parse_str(guest_text("faulty.wat")).unwrap();
    for i in 0..rounds(3000) {
        let bytes: Vec<u8> = match i % 3 {
            // Pure noise, with and without the magic.
            0 => {
                let mut b = vec![0u8; rng.gen_range(0..512)];
                rng.fill_bytes(&mut b);
                if rng.gen() {
                    b.splice(0..0, *b"\0asm\x01\0\0\0");
                }
                b
            }
            // A real guest with a few bytes flipped: the loader's interior.
            _ => {
                let mut b = valid.clone();
                for _ in 0..rng.gen_range(1..8) {
                    let at = rng.gen_range(8..b.len());
                    b[at] = rng.gen();
                }
                b
            }
        };
        if let Ok(dir) = std::env::var("WAMR_CORO_FUZZ_DUMP") {
            std::fs::write(format!("{dir}/last.wasm"), &bytes).unwrap();
        }
        load_and_instantiate(&bytes);
    }
}

#[test]
fn the_loader_accepts_or_clearly_refuses_wasm_smith_modules() {
    setup();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed() ^ 0x51);
    let mut loaded = 0;
    let n = rounds(600);
    for _ in 0..n {
        let mut raw = vec![0u8; rng.gen_range(64..4096)];
        rng.fill_bytes(&mut raw);
        let mut u = Unstructured::new(&raw);
        // What WAMR 2.4 as built here runs: MVP + bulk memory, reference
        // types, multi-value, sign extension, saturating conversions.
        let cfg = wasm_smith::Config {
            allow_start_export: false,
            max_imports: 0,
            simd_enabled: false,
            relaxed_simd_enabled: false,
            exceptions_enabled: false,
            gc_enabled: false,
            memory64_enabled: false,
            tail_call_enabled: false,
            threads_enabled: false,
            wide_arithmetic_enabled: false,
            extended_const_enabled: false,
            max_memory32_bytes: 16 << 20,
            ..wasm_smith::Config::default()
        };
        let Ok(m) = wasm_smith::Module::new(cfg, &mut u) else { continue };
        let bytes = m.to_bytes();
        if let Ok(dir) = std::env::var("WAMR_CORO_FUZZ_DUMP") {
            std::fs::write(format!("{dir}/last.wasm"), &bytes).unwrap();
        }
        if Module::new(&bytes).is_ok() {
            loaded += 1;
        }
        load_and_instantiate(&bytes);
    }
    // Most generated modules are valid WebAssembly WAMR supports.
    assert!(loaded > n / 4, "only {loaded} of {n} generated modules loaded");
}

/// Interprets each message as records of 16 bytes {op, a, b, c} (i32 LE)
/// and calls an import with them: 0 send(a, b, c) (a = 0: this
/// connection), 1 close(a), 2 log(a, b, c), 3 wait_msg(a, b, c). Then sends
/// every result (4 bytes each), then echoes the message itself: the client
/// finds the echo at the end, the results before it, and before those
/// exactly the bytes of the sends that succeeded.
const HOSTILE: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "close" (func $close (param i32) (result i32)))
  (import "env" "log" (func $log (param i32 i32 i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  ;; conn id 0 in a record means "this connection".
  (func $own (param $conn i32) (param $a i32) (result i32)
    (select (local.get $conn) (local.get $a) (i32.eqz (local.get $a))))
  (func (export "on_recv") (param $conn i32) (param $p i32) (param $n i32) (result i32)
    (local $i i32) (local $op i32) (local $r i32) (local $out i32)
    (local.set $out (i32.const 1024))
    (block $done (loop $next
      (br_if $done (i32.gt_u (i32.add (local.get $i) (i32.const 16)) (local.get $n)))
      (local.set $op (i32.load (i32.add (local.get $p) (local.get $i))))
      (local.set $r (i32.const -100))
      (if (i32.eq (local.get $op) (i32.const 0)) (then
        (local.set $r (call $send (call $own (local.get $conn) (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 4)))))
                                  (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 8))))
                                  (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 12))))))))
      (if (i32.eq (local.get $op) (i32.const 1)) (then
        (local.set $r (call $close (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 4))))))))
      (if (i32.eq (local.get $op) (i32.const 2)) (then
        (call $log (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 4))))
                   (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 8))))
                   (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 12)))))
        (local.set $r (i32.const 0))))
      (if (i32.eq (local.get $op) (i32.const 3)) (then
        (local.set $r (call $wait (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 4))))
                                  (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 8))))
                                  (i32.load (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 12))))))))
      (i32.store (local.get $out) (local.get $r))
      (local.set $out (i32.add (local.get $out) (i32.const 4)))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $next)))
    (drop (call $send (local.get $conn) (i32.const 1024) (i32.sub (local.get $out) (i32.const 1024))))
    (drop (call $send (local.get $conn) (local.get $p) (local.get $n)))
    (i32.const 0)))"#;

/// Results an import may give (ABI 1.1): a length (send), 0, or an error.
fn plausible(op: i32, r: i32, len: i32) -> bool {
    match op {
        0 => r == len || (-3..=-1).contains(&r),
        // close of an id that never existed.
        1 => r == 0 || r == -1,
        2 => r == 0,
        // wait_msg in direct mode: NOT_IN_THIS_MODE; in queue mode the host
        // loop's env answers the same (only `run` guests may wait).
        3 => r == -5,
        _ => r == -100,
    }
}

#[test]
fn host_imports_survive_random_pointers_lengths_and_ids() {
    setup();
    let m = Module::from_wat(HOSTILE).unwrap();
    for mode in [Mode::Direct, Mode::Queue] {
        let limits = Limits { output_limit: 1 << 20, ..test_limits() };
        let server = start(m.clone(), mode, EnvPolicy::Connection, limits);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed() ^ mode as u64);
        let mut healthy = connect(server.local_addr());
        for round in 0..rounds(300) {
            let mut s = connect(server.local_addr());
            let records = rng.gen_range(1..12);
            let mut msg = Vec::new();
            let mut ops = Vec::new();
            for k in 0..records {
                if round == 0 && k == 0 {
                    // Found with seed 15 at 40x: a send of the guest's
                    // memory from 0 through the end of the message in its
                    // receive buffer (at 65536) ends with the message itself,
                    // which once ended the read loop below too early. Every
                    // run now starts with it: 16 bytes of this record and
                    // 16 of the last, so the message is 32 bytes long.
                    ops.push((0, 65536 + 16 * (records as i32 + 1)));
                    for v in [0, 0, 0, 65536 + 16 * (records as i32 + 1)] {
                        msg.extend_from_slice(&v.to_le_bytes());
                    }
                    continue;
                }
                let op = [0, 0, 0, 1, 2, 3, 7][rng.gen_range(0..7)];
                // Connection ids: this one (0), or ones that never exist
                // (never another live connection's, which queue mode may
                // address by design).
                let conn = match rng.gen_range(0..5) {
                    0 | 1 if op != 1 => 0,
                    2 => -1,
                    3 => i32::MAX,
                    _ => i32::MIN + rng.gen_range(0..1000),
                };
                let ptr = match rng.gen_range(0..6) {
                    0 => 0,
                    1 => -1,
                    2 => i32::MAX,
                    3 => i32::MIN,
                    4 => rng.gen_range(0..140_000),
                    _ => rng.gen(),
                };
                let len = match rng.gen_range(0..4) {
                    0 => -1,
                    1 => i32::MIN,
                    _ => rng.gen_range(0..70_000),
                };
                let (a, b, c) = if op == 3 { (ptr, len, rng.gen()) } else { (conn, ptr, len) };
                ops.push((op, len));
                for v in [op, a, b, c] {
                    msg.extend_from_slice(&v.to_le_bytes());
                }
            }
            // A last record of random words: the echo's tail is then
            // unmistakable (no op, answered -100).
            let records = records + 1;
            ops.push((7, 0));
            for v in [7, rng.gen(), rng.gen(), rng.gen::<i32>()] {
                msg.extend_from_slice(&v.to_le_bytes());
            }
            s.write_all(&msg).unwrap();
            // Everything up to the echo of `msg`, which ends the answer. The
            // bytes a send took from guest memory may themselves end with
            // `msg` (it lies in the receive buffer): the answer is complete
            // only when what precedes the echo adds up as well.
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            let complete = |got: &[u8]| {
                if got.len() < msg.len() + 4 * records || !got.ends_with(&msg) {
                    return false;
                }
                let results = &got[got.len() - msg.len() - 4 * records..got.len() - msg.len()];
                let accepted: i64 = ops
                    .iter()
                    .enumerate()
                    .map(|(k, (op, _))| (op, i32::from_le_bytes(results[4 * k..4 * k + 4].try_into().unwrap())))
                    .filter(|(op, r)| **op == 0 && *r > 0)
                    .map(|(_, r)| r as i64)
                    .sum();
                accepted == (got.len() - msg.len() - 4 * records) as i64
            };
            while !complete(&got) {
                let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{mode:?} round {round}: {e}; input {msg:?}"));
                assert!(n > 0, "{mode:?} round {round}: closed; input {msg:?}");
                got.extend_from_slice(&buf[..n]);
                assert!(got.len() <= (2 << 20), "{mode:?} round {round}: runaway answer");
            }
            let results = &got[got.len() - msg.len() - 4 * records..got.len() - msg.len()];
            let sent = got.len() - msg.len() - 4 * records;
            let mut accepted = 0usize;
            for (k, (op, len)) in ops.iter().enumerate() {
                let r = i32::from_le_bytes(results[4 * k..4 * k + 4].try_into().unwrap());
                assert!(
                    plausible(*op, r, *len),
                    "{mode:?} round {round}: op {op} answered {r}; input {msg:?}; answer of {} bytes ends {:?}",
                    got.len(),
                    &got[got.len().saturating_sub(64)..]
                );
                if *op == 0 && r > 0 {
                    accepted += r as usize;
                }
            }
            assert_eq!(sent, accepted, "{mode:?} round {round}: bytes sent differ from what send accepted");
            echo_round_hostile(&mut healthy);
        }
        let stats = server.stop();
        assert_eq!(stats.traps, 0, "{mode:?}: {stats}");
        assert_eq!(stats.envs.live, 0);
    }
}

/// The healthy neighbour: 16 bytes of op 7 (no import) echo byte-exact.
fn echo_round_hostile(s: &mut std::net::TcpStream) {
    let mut msg = Vec::new();
    for v in [7i32, 1, 2, 3] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&msg).unwrap();
    let got = read_n(s, 4 + 16).unwrap();
    assert_eq!(&got[..4], &(-100i32).to_le_bytes());
    assert_eq!(&got[4..], &msg[..]);
}

#[test]
fn the_event_ring_keeps_every_producers_order_and_loses_nothing() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed() ^ 0x7);
    for _ in 0..rounds(20) {
        let capacity = rng.gen_range(1..64);
        let producers = rng.gen_range(1..6);
        let per = rng.gen_range(1..3000);
        let ring = Arc::new(wamr_coro::internals::EventRing::<(usize, usize)>::new(capacity));
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let ring = Arc::clone(&ring);
                std::thread::spawn(move || {
                    for i in 0..per {
                        let mut v = (p, i);
                        loop {
                            match ring.push(v, Duration::from_millis(50)) {
                                Ok(()) => break,
                                Err(back) => v = back,
                            }
                        }
                    }
                })
            })
            .collect();
        let mut next = vec![0usize; producers];
        let mut got = 0;
        while got < producers * per {
            let (p, i) = ring.pop(Duration::from_secs(10)).expect("an event was lost");
            assert_eq!(i, next[p], "producer {p} out of order (capacity {capacity})");
            next[p] += 1;
            got += 1;
        }
        for h in handles {
            h.join().unwrap();
        }
        assert!(ring.is_empty());
        let _ = Registry::new();
    }
}

/// Found by the wasm-smith test: WAMR's export type getters abort (debug
/// builds) on an `externref` parameter or result, which its loader accepts.
#[test]
fn an_export_with_externref_in_its_signature_loads() {
    setup();
    let m = Module::from_wat(
        r#"(module (memory (export "memory") 1)
             (func (export "f") (param externref) (result externref) (local.get 0)))"#,
    )
    .unwrap();
    let f = m.exports().iter().find(|e| e.name == "f").unwrap();
    assert!(matches!(&f.kind, wamr_coro::ExportKind::Func(t) if t.params == [wamr_coro::ValType::Other]));
}

/// The ring as queue mode uses it: producers are `may` coroutines (the
/// connections' readers), parked by the ring's semaphore when it is full;
/// the consumer runs on a thread or in a coroutine (`--runner`) and takes
/// events with `pop` and `try_pop` in turn. Nothing is lost, nothing
/// reordered per producer, and the ring ends empty.
#[test]
fn the_event_ring_keeps_order_with_coroutine_producers() {
    setup();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed() ^ 0x77);
    for round in 0..rounds(20) {
        let capacity = rng.gen_range(1..64);
        let producers = rng.gen_range(1..16);
        let per = rng.gen_range(1..2000);
        let try_share = rng.gen_range(0..4u32);
        let ring = Arc::new(wamr_coro::internals::EventRing::<(usize, usize)>::new(capacity));
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let ring = Arc::clone(&ring);
                wamr_coro::coro::spawn(move || {
                    for i in 0..per {
                        let mut v = (p, i);
                        while let Err(back) = ring.push(v, Duration::from_millis(50)) {
                            v = back;
                        }
                    }
                })
            })
            .collect();
        let consumer_ring = Arc::clone(&ring);
        let consume = move || -> Result<(), String> {
            let mut next = vec![0usize; producers];
            for n in 0..producers * per {
                let got = match (n as u32) % 4 < try_share {
                    true => consumer_ring.try_pop(),
                    false => None,
                };
                let (p, i) = match got {
                    Some(e) => e,
                    None => consumer_ring.pop(Duration::from_secs(10)).ok_or("an event was lost")?,
                };
                if i != next[p] {
                    return Err(format!("producer {p}: event {i} where {} was due", next[p]));
                }
                next[p] += 1;
            }
            Ok(())
        };
        let in_coroutine = rng.gen_bool(0.5);
        let result = if in_coroutine { wamr_coro::coro::spawn(consume).join().unwrap() } else { consume() };
        if let Err(e) = result {
            panic!("round {round} (seed {}, capacity {capacity}, {producers} producers, coroutine consumer {in_coroutine}): {e}", seed());
        }
        for h in handles {
            h.join().unwrap();
        }
        assert!(ring.is_empty() && ring.try_pop().is_none());
    }
}

/// Found by `the_loader_survives_random_and_mutated_bytes` (seed 14, 20×
/// rounds): an atomic-prefix instruction whose sub-opcode is no atomic
/// access aborted WAMR's loader in debug builds (an assertion) and read
/// before a table in release builds. `wamr/patches/0200-unknown-atomic-opcode`
/// refuses it with a clear error.
#[test]
fn an_unknown_atomic_opcode_is_refused_not_an_abort() {
    setup();
    for sub in [0x04u8, 0x0f, 0x4f, 0x7f] {
        let bytes = [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
            0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
            0x03, 0x02, 0x01, 0x00, // one function of type 0
            0x05, 0x03, 0x01, 0x00, 0x01, // memory 1
            // code: i32.const 0; 0xFE sub align=2 offset=0; end
            0x0a, 0x0a, 0x01, 0x08, 0x00, 0x41, 0x00, 0xfe, sub, 0x02, 0x00, 0x0b,
        ];
        let e = Module::new(&bytes[..]).err().unwrap_or_else(|| panic!("0xfe {sub:02x} loaded")).to_string();
        assert!(e.contains(&format!("unsupported opcode fe {sub:02x}")), "0xfe {sub:02x}: {e}");
    }
}
