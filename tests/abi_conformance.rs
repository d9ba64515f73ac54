//! Clause-by-clause checks of the guest contract (docs/guest-abi.md, ABI
//! 1.1) against the real server, in both dispatch modes and both env
//! sources: the exact answer of every import to hostile values, the check
//! order, which connections a guest may address, connection ids, and the
//! order and count of the callbacks (and of `wait_msg`'s events).
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Once;
use std::time::{Duration, Instant};

use common::*;
use wamr_coro::server::{EnvPolicy, Limits, Mode, Server, ServerHandle};
use wamr_coro::{Caller, EnvSource, HostFunc, Module, Runtime, ValType};

/// What guests told the test through `conf.report(conn, value)`, by conn.
static REPORTS: parking_lot::Mutex<Option<HashMap<i32, Vec<i32>>>> = parking_lot::Mutex::new(None);
/// `conf.ev(kind, conn)` calls, in the order they happened.
static EVENTS: parking_lot::Mutex<Vec<(i32, i32)>> = parking_lot::Mutex::new(Vec::new());
/// Held by every test that reads REPORTS or EVENTS (tests run in parallel).
static CONF: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// The address clients connect from to be refused by `conf.refuse`.
const REFUSED_FROM: &str = "127.0.0.2";

fn register() {
    setup();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let rt = Runtime::get().unwrap();
        rt.register(HostFunc::new("conf", "report", &[ValType::I32, ValType::I32], &[], |_, args| {
            let (c, v) = (args[0].i32().unwrap(), args[1].i32().unwrap());
            REPORTS.lock().get_or_insert_with(HashMap::new).entry(c).or_default().push(v);
            Ok(None)
        }))
        .unwrap();
        rt.register(HostFunc::new("conf", "ev", &[ValType::I32, ValType::I32], &[], |_, args| {
            EVENTS.lock().push((args[0].i32().unwrap(), args[1].i32().unwrap()));
            Ok(None)
        }))
        .unwrap();
        // 1 if the connection being served comes from REFUSED_FROM.
        rt.register(HostFunc::wrap("conf", "refuse", |mut caller: Caller<'_>| -> i32 {
            let peer = caller.connection().and_then(|c| c.peer);
            peer.is_some_and(|p| p.ip().to_string() == REFUSED_FROM) as i32
        }))
        .unwrap();
    });
}

fn serve(m: Module, mode: Mode, source: EnvSource, policy: EnvPolicy, limits: Limits) -> ServerHandle {
    Server::builder(m)
        .listen("127.0.0.1:0")
        .mode(mode)
        .policy(policy)
        .env_source(source)
        .workers(2)
        .limits(limits)
        .start()
        .unwrap()
}

/// Every mode and env source (and direct mode's shared-state policy).
fn variants() -> Vec<(Mode, EnvSource, EnvPolicy)> {
    vec![
        (Mode::Direct, EnvSource::Instance, EnvPolicy::Connection),
        (Mode::Direct, EnvSource::Spawn, EnvPolicy::Connection),
        (Mode::Direct, EnvSource::Instance, EnvPolicy::Message),
        (Mode::Queue, EnvSource::Instance, EnvPolicy::Connection),
        (Mode::Queue, EnvSource::Spawn, EnvPolicy::Connection),
    ]
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn reports(conn: i32) -> Vec<i32> {
    REPORTS.lock().as_ref().and_then(|r| r.get(&conn).cloned()).unwrap_or_default()
}

/// Interprets a message as records {op, a, b, x} (i32 LE) and reports each
/// import's answer through `conf.report(conn, r)`: op 0 send(a, b, x),
/// 1 close(a), 2 log(a, b, x) (reports 0), 3 wait_msg(a, b, x). Flag 0x100:
/// `b` counts back from the end of memory (b := memory bytes - b); flag
/// 0x200: `a` is the calling connection. A message starting with '#' is
/// echoed. `on_open` sends the connection's id (4 bytes), so a client knows
/// it. Memory 0..16 holds "ABCDEFGHIJKLMNOP", its last 4 bytes "WXYZ".
fn hostile(run: bool) -> String {
    let entry = if run { HOSTILE_RUN } else { HOSTILE_HOST_LOOP };
    format!(
        r##"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "close" (func $close (param i32) (result i32)))
  (import "env" "log" (func $log (param i32 i32 i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (import "conf" "report" (func $report (param i32 i32)))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 4096))
  (global (export "__heap_base") i32 (i32.const 196608))
  (data (i32.const 0) "ABCDEFGHIJKLMNOP")
  (data (i32.const 196604) "WXYZ")
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))
  (func $hello (param $c i32)
    (i32.store (i32.const 1024) (local.get $c))
    (drop (call $send (local.get $c) (i32.const 1024) (i32.const 4))))
  (func $records (param $c i32) (param $p i32) (param $n i32) (result i32)
    (local $i i32) (local $op i32) (local $a i32) (local $b i32) (local $x i32) (local $r i32)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 35))
      (then (return (call $send (local.get $c) (local.get $p) (local.get $n)))))
    (block $done (loop $next
      (br_if $done (i32.gt_u (i32.add (local.get $i) (i32.const 16)) (local.get $n)))
      (local.set $op (i32.load (i32.add (local.get $p) (local.get $i))))
      (local.set $a (i32.load offset=4 (i32.add (local.get $p) (local.get $i))))
      (local.set $b (i32.load offset=8 (i32.add (local.get $p) (local.get $i))))
      (local.set $x (i32.load offset=12 (i32.add (local.get $p) (local.get $i))))
      (if (i32.and (local.get $op) (i32.const 0x100))
        (then (local.set $b (i32.sub (i32.mul (memory.size) (i32.const 65536)) (local.get $b)))))
      (if (i32.and (local.get $op) (i32.const 0x200)) (then (local.set $a (local.get $c))))
      (local.set $op (i32.and (local.get $op) (i32.const 0xff)))
      (local.set $r (i32.const -100))
      (if (i32.eq (local.get $op) (i32.const 0))
        (then (local.set $r (call $send (local.get $a) (local.get $b) (local.get $x)))))
      (if (i32.eq (local.get $op) (i32.const 1))
        (then (local.set $r (call $close (local.get $a)))))
      (if (i32.eq (local.get $op) (i32.const 2))
        (then (call $log (local.get $a) (local.get $b) (local.get $x)) (local.set $r (i32.const 0))))
      (if (i32.eq (local.get $op) (i32.const 3))
        (then (local.set $r (call $wait (local.get $a) (local.get $b) (local.get $x)))))
      (call $report (local.get $c) (local.get $r))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $next)))
    (i32.const 0))
  {entry})"##
    )
}

/// The host's loop: `on_open` says hello, `on_recv` runs the records.
const HOSTILE_HOST_LOOP: &str = r#"
  (func (export "on_open") (param $c i32) (result i32) (call $hello (local.get $c)) (i32.const 0))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (call $records (local.get $c) (local.get $p) (local.get $n)))"#;

/// The guest's own loop. First `wait_msg` with bad ranges, each answer
/// reported for conn 0 (all must be BAD_POINTER, consuming nothing); then
/// the loop, whose record lies exactly at the end of memory (and whose
/// buffer ends where it begins): OPEN says hello, DATA runs the records.
/// "WXYZ" is restored after each record is read.
const HOSTILE_RUN: &str = r#"
  (func $bad (param $buf i32) (param $cap i32) (param $info i32)
    (call $report (i32.const 0) (call $wait (local.get $buf) (local.get $cap) (local.get $info))))
  (func (export "run") (result i32)
    (local $n i32) (local $c i32) (local $kind i32)
    (call $bad (i32.const 8192) (i32.const -1) (i32.const 1024))
    (call $bad (i32.const 8192) (i32.const 0x80000000) (i32.const 1024))
    (call $bad (i32.const -16) (i32.const 32) (i32.const 1024))
    (call $bad (i32.const 196604) (i32.const 5) (i32.const 1024))
    (call $bad (i32.const 8192) (i32.const 16) (i32.const 196601))
    (call $bad (i32.const 8192) (i32.const 16) (i32.const -1))
    (call $bad (i32.const 8192) (i32.const 16) (i32.const -8))
    (loop $next
      (local.set $n (call $wait (i32.const 192504) (i32.const 4096) (i32.const 196600)))
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 98))))
      (local.set $c (i32.load (i32.const 196600)))
      (local.set $kind (i32.load (i32.const 196604)))
      (i32.store (i32.const 196604) (i32.const 0x5a595857))
      (if (i32.eq (local.get $kind) (i32.const 1)) (then (call $hello (local.get $c))))
      (if (i32.eqz (local.get $kind))
        (then (drop (call $records (local.get $c) (i32.const 192504) (local.get $n)))))
      (br $next))
    (i32.const 0))"#;

const OWN: i32 = 0x200;
const END: i32 = 0x100;
const SEND: i32 = 0;
const CLOSE: i32 = 1;
const LOG: i32 = 2;
const WAIT: i32 = 3;
/// An id no connection ever has in these tests.
const NEVER: i32 = 0x7fff_0000;

fn records(recs: &[[i32; 4]]) -> Vec<u8> {
    recs.iter().flatten().flat_map(|v| v.to_le_bytes()).collect()
}

/// A connection to the HOSTILE guest and its id (sent by `on_open`).
fn open(addr: SocketAddr) -> (TcpStream, i32) {
    let mut s = connect(addr);
    let id = i32::from_le_bytes(read_n(&mut s, 4).unwrap().try_into().unwrap());
    (s, id)
}

/// Sends `recs` on `s` (whose id is `id`) and returns the answers reported.
fn run_records(s: &mut TcpStream, id: i32, recs: &[[i32; 4]]) -> Vec<i32> {
    let before = reports(id).len();
    s.write_all(&records(recs)).unwrap();
    wait_for("the guest's reports", Duration::from_secs(10), || reports(id).len() >= before + recs.len());
    reports(id)[before..].to_vec()
}

/// Each import, given hostile values, answers exactly the documented code
/// in the documented check order (mode, connection, pointer, limit); a
/// guest may address only its own connection in direct mode and every
/// connection of its instance in queue mode; after the guest's own close,
/// and for closed, never-opened and non-positive ids, it gets
/// UNKNOWN_CONN. Other connections keep working, byte-exact.
#[test]
fn hostile_import_arguments_get_the_documented_code() {
    register();
    let _conf = CONF.lock();
    let mut all: Vec<_> = variants().into_iter().map(|v| (v, false)).collect();
    all.push(((Mode::Queue, EnvSource::Instance, EnvPolicy::Connection), true));
    all.push(((Mode::Queue, EnvSource::Spawn, EnvPolicy::Connection), true));
    for ((mode, source, policy), run) in all {
        let m = Module::from_wat(&hostile(run)).unwrap();
        *REPORTS.lock() = None;
        let what = format!("{mode:?} {source:?} {policy:?} run={run}");
        // One queue shard: every connection is the same instance's.
        let limits = Limits { output_limit: 4096, chunk_size: 4096, queue_shards: 1, ..test_limits() };
        let server = serve(m.clone(), mode, source, policy, limits);
        let addr = server.local_addr();
        let (mut healthy, hid) = open(addr);
        let (gone, gid) = open(addr);
        drop(gone);
        wait_for("the first close", Duration::from_secs(10), || server.stats().closed >= 1);
        let (mut victim, vid) = open(addr);
        let (mut h, id) = open(addr);
        let ids = [hid, gid, vid, id];
        assert!(ids.iter().all(|&i| i > 0), "{what}: ids {ids:?}");
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 4, "{what}: ids {ids:?}");
        let bad0 = server.stats().bad_pointers;
        let queue = mode == Mode::Queue;
        // (record, answer in direct mode, answer in queue mode)
        let cases: Vec<([i32; 4], i32, i32)> = vec![
            // Lengths: negative is BAD_POINTER.
            ([SEND | OWN, 0, 0, -1], -2, -2),
            ([SEND | OWN, 0, 0, i32::MIN], -2, -2),
            // Ranges that wrap past 2^32, or start past the end.
            ([SEND | OWN, 0, -1, 2], -2, -2),
            ([SEND | OWN, 0, i32::MIN, 16], -2, -2),
            ([SEND | OWN, 0, i32::MAX, 1], -2, -2),
            // Exactly at the end of memory: accepted ("WXYZ").
            ([SEND | OWN | END, 0, 4, 4], 4, 4),
            ([SEND | OWN | END, 0, 4, 5], -2, -2),
            ([SEND | OWN | END, 0, 0, 0], 0, 0),
            ([SEND | OWN | END, 0, -1, 0], -2, -2),
            // Pointer before limit; limit alone.
            ([SEND | OWN | END, 0, 4, 4097], -2, -2),
            ([SEND | OWN, 0, 0, 4097], -3, -3),
            // Connection before pointer and limit.
            ([SEND, NEVER, -1, 5], -1, -1),
            ([SEND, NEVER, 0, 4097], -1, -1),
            ([SEND, 0, 0, 1], -1, -1),
            ([SEND, -1, 0, 1], -1, -1),
            ([SEND, i32::MIN, 0, 1], -1, -1),
            // A connection that closed.
            ([SEND, gid, 0, 1], -1, -1),
            ([CLOSE, gid, 0, 0], -1, -1),
            ([CLOSE, NEVER, 0, 0], -1, -1),
            ([CLOSE, 0, 0, 0], -1, -1),
            ([CLOSE, -1, 0, 0], -1, -1),
            ([CLOSE, i32::MIN, 0, 0], -1, -1),
            // wait_msg outside a guest's own loop: the mode check first.
            ([WAIT, 0, 16, 1024], -5, -5),
            ([WAIT, -1, -1, -1], -5, -5),
            // log: bad ranges ignored (and counted), one exactly at the end.
            ([LOG, 2, -1, 5], 0, 0),
            ([LOG | END, 2, 2, 3], 0, 0),
            ([LOG, 0, 0, -1], 0, 0),
            ([LOG | END, 3, 4, 4], 0, 0),
            // Another live connection: only queue mode may address it.
            ([SEND, vid, 0, 3], -1, 3),
            ([SEND, hid, -1, 3], -1, -2),
            ([CLOSE, vid, 0, 0], -1, 0),
            ([SEND, vid, 0, 1], -1, -1),
            ([CLOSE, vid, 0, 0], -1, -1),
            // Its own connection, then its own close: UNKNOWN_CONN after.
            ([SEND | OWN, 0, 0, 16], 16, 16),
            ([CLOSE | OWN, 0, 0, 0], 0, 0),
            ([SEND | OWN, 0, 0, 1], -1, -1),
            ([CLOSE | OWN, 0, 0, 0], -1, -1),
        ];
        // A guest's own loop may wait anywhere: its wait_msg is checked
        // before its loop starts (HOSTILE_RUN), and nothing was consumed:
        // every connection got its OPEN, hence its id.
        let cases: Vec<_> = cases.into_iter().filter(|c| !run || c.0[0] != WAIT).collect();
        if run {
            assert_eq!(reports(0), [-2; 7], "{what}: wait_msg with bad ranges");
            assert!(bad0 >= 7, "{what}: bad wait_msg ranges not counted");
        }
        let recs: Vec<[i32; 4]> = cases.iter().map(|c| c.0).collect();
        let got = run_records(&mut h, id, &recs);
        for (k, ((rec, direct, queued), r)) in cases.iter().zip(&got).enumerate() {
            let want = if queue { queued } else { direct };
            assert_eq!(r, want, "{what}: record {k} {rec:?}");
        }
        // Exactly the accepted bytes, then the close.
        assert_eq!(read_n(&mut h, 20).unwrap(), b"WXYZABCDEFGHIJKLMNOP", "{what}");
        assert!(closed_by_peer(&mut h, Duration::from_secs(5)), "{what}: own close");
        let bad = if queue { 12 } else { 11 };
        assert_eq!(server.stats().bad_pointers - bad0, bad, "{what}");
        // The victim: untouched in direct mode; in queue mode it got the
        // 3 bytes sent to it, then the close.
        if queue {
            assert_eq!(read_n(&mut victim, 3).unwrap(), b"ABC", "{what}");
            assert!(closed_by_peer(&mut victim, Duration::from_secs(5)), "{what}: victim close");
        } else {
            echo_round(&mut victim, b"#victim still served");
        }
        echo_round(&mut healthy, b"#healthy still served");
        // A later connection gets a new id; the closed ones stay unknown.
        wait_for("the closes", Duration::from_secs(10), || server.stats().closed >= 2 + queue as u64);
        let (mut later, lid) = open(addr);
        assert!(lid > 0 && !ids.contains(&lid), "{what}: id {lid} after {ids:?}");
        let after = run_records(&mut later, lid, &[[SEND, id, 0, 1], [CLOSE, id, 0, 0], [SEND, gid, 0, 1]]);
        assert_eq!(after, [-1, -1, -1], "{what}");
        echo_round(&mut later, b"#later");
        echo_round(&mut healthy, b"#healthy at the end");
        drop((healthy, victim, later));
        let stats = server.stop();
        assert_eq!((stats.traps, stats.budget_overruns, stats.queue_restarts), (0, 0, 0), "{what}: {stats}");
        assert_eq!(stats.envs.live, 0, "{what}");
    }
}

/// Reports each callback through `conf.ev(kind, conn)`: 1 on_open, 0
/// on_recv, 2 on_close. Refuses connections from REFUSED_FROM; echoes;
/// then by the message's first byte: 'g' closes the connection itself, 'n'
/// returns -1, 't' traps.
const ORDER: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "close" (func $close (param i32) (result i32)))
  (import "conf" "ev" (func $ev (param i32 i32)))
  (import "conf" "refuse" (func $refuse (result i32)))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 4096))
  (global (export "__heap_base") i32 (i32.const 196608))
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))
  (func (export "on_open") (param $c i32) (result i32)
    (call $ev (i32.const 1) (local.get $c))
    (if (call $refuse) (then (return (i32.const -1))))
    (i32.const 0))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (local $k i32)
    (call $ev (i32.const 0) (local.get $c))
    (local.set $k (i32.load8_u (local.get $p)))
    (if (i32.eq (local.get $k) (i32.const 116)) (then unreachable))
    (drop (call $send (local.get $c) (local.get $p) (local.get $n)))
    (if (i32.eq (local.get $k) (i32.const 103)) (then (drop (call $close (local.get $c)))))
    (if (i32.eq (local.get $k) (i32.const 110)) (then (return (i32.const -1))))
    (i32.const 0))
  (func (export "on_close") (param $c i32) (call $ev (i32.const 2) (local.get $c))))"#;

/// ORDER as a guest with its own `run` loop: it reports each event as
/// `conf.ev(kind + 10, conn)` (OPEN 11, DATA 10, CLOSE 12) and SHUTDOWN as
/// `conf.ev(99, 0)` before it returns; any other answer of `wait_msg`, and
/// an OPEN or CLOSE not answered 0, ends `run` early (a fault). A connection it would refuse, and
/// 'g' and 'n', it closes itself; 't' traps.
const ORDER_RUN: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "close" (func $close (param i32) (result i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (import "conf" "ev" (func $ev (param i32 i32)))
  (import "conf" "refuse" (func $refuse (result i32)))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 4096))
  (global (export "__heap_base") i32 (i32.const 196608))
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))
  (func (export "run") (result i32)
    (local $n i32) (local $c i32) (local $kind i32) (local $k i32)
    (loop $next
      (local.set $n (call $wait (i32.const 65536) (i32.const 65536) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4))
        (then (call $ev (i32.const 99) (i32.const 0)) (return (i32.const 0))))
      (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 98))))
      (local.set $c (i32.load (i32.const 1024)))
      (local.set $kind (i32.load (i32.const 1028)))
      (call $ev (i32.add (local.get $kind) (i32.const 10)) (local.get $c))
      ;; OPEN and CLOSE answer 0: anything else ends `run` early, a fault.
      (if (i32.and (i32.ne (local.get $kind) (i32.const 0)) (i32.ne (local.get $n) (i32.const 0)))
        (then (return (i32.const 97))))
      (if (i32.and (i32.eq (local.get $kind) (i32.const 1)) (call $refuse))
        (then (drop (call $close (local.get $c)))))
      (if (i32.eqz (local.get $kind))
        (then
          (local.set $k (i32.load8_u (i32.const 65536)))
          (if (i32.eq (local.get $k) (i32.const 116)) (then unreachable))
          (drop (call $send (local.get $c) (i32.const 65536) (local.get $n)))
          (if (i32.eq (local.get $k) (i32.const 103)) (then (drop (call $close (local.get $c)))))
          (if (i32.eq (local.get $k) (i32.const 110)) (then (drop (call $close (local.get $c)))))))
      (br $next))
    (i32.const 0)))"#;

/// The events of each connection, in order, sorted (the server's order of
/// connections is its own); events of conn 0 (SHUTDOWN) left out.
fn per_connection(events: &[(i32, i32)]) -> Vec<Vec<i32>> {
    let mut by: HashMap<i32, Vec<i32>> = HashMap::new();
    for &(kind, conn) in events.iter().filter(|e| e.1 != 0) {
        by.entry(conn).or_default().push(kind);
    }
    let mut v: Vec<_> = by.into_values().collect();
    v.sort();
    v
}

/// The closes every test of ORDER causes: a peer close after two messages,
/// the guest's own close, `on_recv` < 0, a refused connection, and one left
/// open until the server stops. Returns after the first four have closed.
fn order_traffic(server: &ServerHandle, what: &str) -> TcpStream {
    let addr = server.local_addr();
    let mut p = connect(addr);
    echo_round(&mut p, b"p1");
    echo_round(&mut p, b"p2");
    drop(p);
    for m in [&b"g"[..], b"n"] {
        let mut s = connect(addr);
        echo_round(&mut s, m);
        assert!(closed_by_peer(&mut s, Duration::from_secs(5)), "{what}: {m:?} not closed");
    }
    let mut r = connect_from(REFUSED_FROM, addr);
    assert!(closed_by_peer(&mut r, Duration::from_secs(5)), "{what}: refused connection not closed");
    let mut s = connect(addr);
    echo_round(&mut s, b"s");
    wait_for("the closes", Duration::from_secs(10), || server.stats().closed >= 4);
    s
}

/// on_open, then on_recv in order, then on_close exactly once, whatever
/// ends the connection (peer, guest close, on_recv < 0, shutdown); no
/// on_close for a connection on_open refused: in both modes (the host's
/// loop in queue mode) and both env sources.
#[test]
fn callbacks_come_in_order_and_on_close_exactly_once() {
    register();
    let _conf = CONF.lock();
    let m = Module::from_wat(ORDER).unwrap();
    for (mode, source, policy) in variants() {
        let what = format!("{mode:?} {source:?} {policy:?}");
        EVENTS.lock().clear();
        let server = serve(m.clone(), mode, source, policy, test_limits());
        let s = order_traffic(&server, &what);
        let stats = server.stop();
        drop(s);
        assert_eq!(stats.refused, 1, "{what}: {stats}");
        let seqs = per_connection(&EVENTS.lock());
        assert_eq!(seqs, vec![vec![1], vec![1, 0, 0, 2], vec![1, 0, 2], vec![1, 0, 2], vec![1, 0, 2]], "{what}");
    }
}

/// A guest's own `run` loop gets OPEN first, DATA in order, CLOSE exactly
/// once for every OPEN (also for one it closed at once, and at shutdown),
/// and SHUTDOWN last, after every CLOSE; returning then is no fault.
#[test]
fn wait_msg_hands_out_open_data_close_in_order_and_shutdown_last() {
    register();
    let _conf = CONF.lock();
    let m = Module::from_wat(ORDER_RUN).unwrap();
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        let what = format!("run loop, {source:?}");
        EVENTS.lock().clear();
        let limits = Limits { queue_shards: 1, ..test_limits() };
        let server = serve(m.clone(), Mode::Queue, source, EnvPolicy::Connection, limits);
        let s = order_traffic(&server, &what);
        let stats = server.stop();
        drop(s);
        assert_eq!(stats.queue_restarts, 0, "{what}: {stats}");
        let events = EVENTS.lock().clone();
        assert_eq!(events.last(), Some(&(99, 0)), "{what}: {events:?}");
        assert_eq!(events.iter().filter(|e| e.0 == 99).count(), 1, "{what}");
        let seqs = per_connection(&events);
        assert_eq!(
            seqs,
            vec![vec![11, 10, 10, 12], vec![11, 10, 12], vec![11, 10, 12], vec![11, 10, 12], vec![11, 12]],
            "{what}"
        );
    }
}

/// A fault (a trap) closes in direct mode its own connection only, whatever
/// the env source (spawned siblings included: WAMR patch 0700 keeps the
/// exception in its instance), and on_close is not called for it; in queue
/// mode it closes the shard's connections, none of which gets on_close (or
/// CLOSE), and a new connection is served at once.
#[test]
fn a_faulted_connection_gets_no_on_close() {
    register();
    let _conf = CONF.lock();
    for run in [false, true] {
        let m = Module::from_wat(if run { ORDER_RUN } else { ORDER }).unwrap();
        let modes = if run { vec![Mode::Queue] } else { vec![Mode::Direct, Mode::Queue] };
        for mode in modes {
            for source in [EnvSource::Instance, EnvSource::Spawn] {
                let what = format!("{mode:?} {source:?} run={run}");
                EVENTS.lock().clear();
                let limits = Limits { queue_shards: 1, ..test_limits() };
                let server = serve(m.clone(), mode, source, EnvPolicy::Connection, limits);
                let addr = server.local_addr();
                let mut a = connect(addr);
                echo_round(&mut a, b"a");
                assert!(closed_after(addr, b"t", Duration::from_secs(5)), "{what}: trap did not close");
                if mode == Mode::Queue {
                    assert!(closed_by_peer(&mut a, Duration::from_secs(5)), "{what}: shard's connection kept");
                } else {
                    // Direct mode, spawned or not: `a` is another connection.
                    echo_round(&mut a, b"a again");
                }
                let mut b = connect(addr);
                echo_round(&mut b, b"b");
                drop((a, b));
                wait_for("the closes", Duration::from_secs(10), || server.stats().closed >= 3);
                let stats = server.stop();
                assert_eq!(stats.traps, 1, "{what}: {stats}");
                let (o, d, c) = if run { (11, 10, 12) } else { (1, 0, 2) };
                let mut want = vec![vec![o, d], vec![o, d, c]];
                want.push(match mode {
                    Mode::Queue => vec![o, d],
                    _ => vec![o, d, d, c],
                });
                want.sort();
                assert_eq!(per_connection(&EVENTS.lock()), want, "{what}");
            }
        }
    }
}

/// Echoes, reports each call's length (`conf.report(conn, n)`), and with
/// 'N' first answers `now_ms()` (8 bytes LE) instead.
const CHUNKS: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "now_ms" (func $now (result i64)))
  (import "conf" "report" (func $report (param i32 i32)))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 4096))
  (global (export "__heap_base") i32 (i32.const 196608))
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))
  (func $handle (param $c i32) (param $p i32) (param $n i32) (result i32)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 78))
      (then
        (i64.store (i32.const 1024) (call $now))
        (return (call $send (local.get $c) (i32.const 1024) (i32.const 8)))))
    (call $report (local.get $c) (local.get $n))
    (call $send (local.get $c) (local.get $p) (local.get $n)))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (call $handle (local.get $c) (local.get $p) (local.get $n)))
  (func (export "run") (result i32)
    (local $n i32)
    (loop $next
      (local.set $n (call $wait (i32.const 65536) (i32.const 65536) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then (drop (call $handle (i32.load (i32.const 1024)) (i32.const 65536) (local.get $n)))))
      (br $next))
    (i32.const 0)))"#;

/// CHUNKS with or without its own loop (a guest without `run` gets the
/// host's loop in queue mode).
fn chunks(run: bool) -> Module {
    let wat = if run {
        CHUNKS.replacen(
            "(memory",
            "(import \"env\" \"wait_msg\" (func $wait (param i32 i32 i32) (result i32)))\n  (memory",
            1,
        )
    } else {
        let at = CHUNKS.find("  (func (export \"run\")").unwrap();
        format!("{})", &CHUNKS[..at].trim_end())
    };
    Module::from_wat(&wat).unwrap()
}

fn every_variant_and_loop() -> Vec<(Mode, EnvSource, EnvPolicy, bool)> {
    let mut all: Vec<_> = variants().into_iter().map(|(m, s, p)| (m, s, p, false)).collect();
    all.push((Mode::Queue, EnvSource::Instance, EnvPolicy::Connection, true));
    all.push((Mode::Queue, EnvSource::Spawn, EnvPolicy::Connection, true));
    all
}

/// One `on_recv` (or one DATA event, even into a larger buffer) carries at
/// most the configured chunk size; the bytes arrive whole and in order.
#[test]
fn no_call_or_event_carries_more_than_the_chunk_size() {
    register();
    let _conf = CONF.lock();
    let data: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (mode, source, policy, run) in every_variant_and_loop() {
        let what = format!("{mode:?} {source:?} {policy:?} run={run}");
        *REPORTS.lock() = None;
        let limits = Limits { chunk_size: 1000, ..test_limits() };
        let server = serve(chunks(run), mode, source, policy, limits);
        let mut s = connect(server.local_addr());
        s.write_all(&data).unwrap();
        assert!(read_n(&mut s, data.len()).unwrap() == data, "{what}: echo differs");
        let sizes: Vec<i32> = REPORTS.lock().take().unwrap().into_values().flatten().collect();
        assert!(sizes.iter().all(|&n| (1..=1000).contains(&n)), "{what}: {sizes:?}");
        assert_eq!(sizes.iter().sum::<i32>(), data.len() as i32, "{what}");
        drop(s);
        server.stop();
    }
}

/// `now_ms` counts milliseconds from the server's start, monotonically.
#[test]
fn now_ms_counts_from_the_server_start() {
    register();
    for (mode, source, policy, run) in every_variant_and_loop() {
        let what = format!("{mode:?} {source:?} {policy:?} run={run}");
        let t0 = Instant::now();
        let server = serve(chunks(run), mode, source, policy, test_limits());
        let mut s = connect(server.local_addr());
        let mut now = || {
            s.write_all(b"N").unwrap();
            i64::from_le_bytes(read_n(&mut s, 8).unwrap().try_into().unwrap())
        };
        let first = now();
        assert!((0..=t0.elapsed().as_millis() as i64).contains(&first), "{what}: {first}");
        std::thread::sleep(Duration::from_millis(30));
        let second = now();
        assert!(second >= first + 30 && second <= t0.elapsed().as_millis() as i64, "{what}: {first} then {second}");
        drop(s);
        server.stop();
    }
}

/// Both budgets, each alone, stop a spinning guest in every mode and env
/// source (the host's loop and the guest's own in queue mode); the fault is
/// counted as that budget's, and new connections are served after it.
#[test]
fn either_budget_stops_a_spinner_in_every_mode_and_source() {
    setup();
    let by_instructions = Limits { call_budget: None, instruction_budget: Some(5_000_000), ..test_limits() };
    let by_time = test_limits();
    for (mode, source, policy, run) in every_variant_and_loop() {
        for limits in [by_time.clone(), by_instructions.clone()] {
            let metered = limits.instruction_budget.is_some();
            let what = format!("{mode:?} {source:?} {policy:?} run={run} instructions={metered}");
            let m = if run { Module::from_wat(&spawnable_run_loop()).unwrap() } else { module("faulty.wat") };
            let server = serve(m, mode, source, policy, limits);
            let addr = server.local_addr();
            let mut before = connect(addr);
            echo_round(&mut before, b"before");
            assert!(closed_after(addr, b"S", Duration::from_secs(10)), "{what}: spinner not stopped");
            // Direct mode, independent envs: the neighbour is untouched.
            if mode == Mode::Direct && source == EnvSource::Instance {
                echo_round(&mut before, b"neighbour");
            }
            echo_round(&mut connect(addr), b"after the spinner");
            drop(before);
            let stats = server.stop();
            let (time, instr) = (stats.budget_overruns, stats.instruction_budget_overruns);
            assert_eq!((time, instr), if metered { (0, 1) } else { (1, 0) }, "{what}: {stats}");
            assert_eq!(stats.envs.live, 0, "{what}");
        }
    }
}

/// `run_loop_wat` ('S' spins, else echo) with what spawned envs need.
fn spawnable_run_loop() -> String {
    let heap_base = r#"(global (export "__heap_base") i32 (i32.const 196608))"#;
    run_loop_wat("").replacen(
        heap_base,
        &format!(
            r#"{heap_base}
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 4096))
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))"#
        ),
        1,
    )
}

/// Every limit has the default docs/guest-abi.md (section 8) gives it.
#[test]
fn limits_have_their_documented_defaults() {
    let l = Limits::default();
    assert_eq!(l.chunk_size, 65_536);
    assert_eq!(l.chunk_size, wamr_coro::abi::DEFAULT_CHUNK_SIZE);
    assert_eq!(l.output_limit, 1 << 20);
    assert_eq!(l.call_budget, Some(Duration::from_millis(1000)));
    assert_eq!(l.instruction_budget, None);
    assert_eq!(l.max_memory_pages, 256);
    let phys = {
        // SAFETY: sysconf has no preconditions.
        let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        pages as u64 * size as u64
    };
    assert_eq!(l.max_guest_memory, phys / 2);
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.idle_timeout, Duration::from_secs(60));
    assert_eq!(l.queue_capacity, 1024);
    assert_eq!(l.queue_shards, 0, "0: the number of may workers");
    assert_eq!(l.shutdown_grace, Duration::from_millis(2000));
    assert_eq!(l.max_connections_per_ip, 2500);
    assert_eq!((l.min_recv_bytes, l.min_send_bytes), (0, 0));
}

/// The exports the host uses are checked when the server starts: no
/// `memory`, no `on_recv` in direct mode (nor `run` or `on_recv` in queue
/// mode), or a wrong signature of any of them is a start-up error naming
/// the export; `run` alone serves queue mode.
#[test]
fn exports_are_checked_when_the_server_starts() {
    setup();
    let guest = |body: &str| {
        Module::from_wat(&format!(
            r#"(module
                 (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
                 (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
                 {body})"#
        ))
        .unwrap()
    };
    let start_err = |m: Module, mode: Mode| match Server::builder(m).listen("127.0.0.1:0").mode(mode).workers(1).start()
    {
        Ok(s) => {
            s.stop();
            None
        }
        Err(e) => Some(e.to_string()),
    };
    let mem = r#"(memory (export "memory") 1)"#;
    let recv = r#"(func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0))"#;
    let run = r#"(func (export "run") (result i32)
                   (loop $l (br_if $l (i32.ne (call $wait (i32.const 0) (i32.const 0) (i32.const 64)) (i32.const -4))))
                   (i32.const 0))"#;
    for mode in [Mode::Direct, Mode::Queue] {
        let e = start_err(guest(&format!("(memory 1) {recv}")), mode).expect("no memory export");
        assert!(e.contains("memory"), "{mode:?}: {e}");
        for (name, bad) in [
            ("on_recv", r#"(func (export "on_recv") (param i32 i32) (result i32) (i32.const 0))"#),
            ("on_open", r#"(func (export "on_open") (param i32))"#),
            ("on_close", r#"(func (export "on_close") (param i32) (result i32) (i32.const 0))"#),
            ("run", r#"(func (export "run"))"#),
            ("alloc", r#"(func (export "alloc") (param i64) (result i32) (i32.const 0))"#),
        ] {
            let body = if name == "on_recv" { format!("{mem} {bad}") } else { format!("{mem} {recv} {bad}") };
            let e = start_err(guest(&body), mode).unwrap_or_else(|| panic!("{mode:?}: bad {name} accepted"));
            assert!(e.contains(&format!("`{name}`")) && e.contains("expected"), "{mode:?} {name}: {e}");
        }
    }
    let e = start_err(guest(&format!("{mem} {run}")), Mode::Direct).expect("direct mode without on_recv");
    assert!(e.contains("on_recv"), "{e}");
    let e = start_err(guest(mem), Mode::Queue).expect("queue mode without run or on_recv");
    assert!(e.contains("run") && e.contains("on_recv"), "{e}");
    assert_eq!(start_err(guest(&format!("{mem} {run}")), Mode::Queue), None, "run alone serves queue mode");
}

/// Imports are checked when the module loads. Anything but a function is
/// refused, naming it (WAMR would otherwise make the memory or table
/// itself and run the module as if it had defined it). A name imported
/// twice, the second time with a wrong type, is refused quoting that second
/// type: before, the message quoted the first, correct one, and said the
/// module imported `env.send` as `(i32, i32, i32) -> (i32)` but the host
/// provides it as `(i32, i32, i32) -> (i32)`.
#[test]
fn imports_are_checked_when_the_module_loads() {
    setup();
    let load_err = |imports: &str| {
        // An imported memory is the module's memory 0, exported as such.
        let memory = if imports.contains("(memory") {
            r#"(export "memory" (memory 0))"#
        } else {
            r#"(memory (export "memory") 1)"#
        };
        let wat = format!(
            r#"(module {imports}
                 {memory}
                 (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#
        );
        match Module::from_wat(&wat) {
            Ok(_) => panic!("loaded: {imports}"),
            Err(e) => e.to_string(),
        }
    };
    for (import, kind, name) in [
        (r#"(import "env" "memory" (memory 1))"#, "memory", "env.memory"),
        (r#"(import "env" "table" (table 1 funcref))"#, "table", "env.table"),
        (r#"(import "env" "__stack_pointer" (global (mut i32)))"#, "global", "env.__stack_pointer"),
        (r#"(import "js" "mem" (memory 1))"#, "memory", "js.mem"),
    ] {
        let e = load_err(import);
        assert!(e.contains(&format!("a {kind}, {name}")) && e.contains("only functions"), "{import}: {e}");
    }
    let e = load_err(
        r#"(import "env" "send" (func (param i32 i32 i32) (result i32)))
           (import "env" "send" (func (param i64) (result i32)))"#,
    );
    assert!(e.contains("env.send with signature (i64) -> (i32)"), "{e}");
    assert!(e.contains("provides it as (i32, i32, i32) -> (i32)"), "{e}");
    let e = load_err(r#"(import "env" "no_such_function" (func))"#);
    assert!(e.contains("env.no_such_function"), "{e}");
}

/// An active data segment past the initial memory is refused when the
/// module loads, interpreted or compiled, with the segment and the sizes in
/// the error. The spec makes instantiation fail (Wasmtime refuses it); WAMR
/// checks segments against the memory after appending its app heap, so a
/// guest with `(memory 1 1)` and bytes at 70,000 was served, its "hello"
/// readable at an address its own declaration says does not exist.
#[test]
fn a_data_segment_past_the_initial_memory_is_refused_when_the_module_loads() {
    setup();
    let wat = |data: &str| {
        format!(
            r#"(module (memory (export "memory") 1 1)
                 {data}
                 (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#
        )
    };
    for (data, want) in [
        (r#"(data (i32.const 70000) "hello")"#, "data segment 0 (5 bytes at offset 70000)"),
        (r#"(data (i32.const 65535) "hi")"#, "data segment 0 (2 bytes at offset 65535)"),
        (r#"(data (i32.const 0) "ok") (data (i32.const 70000) "hello")"#, "data segment 1 (5 bytes at offset 70000)"),
        (r#"(data (i32.const -1) "x")"#, "data segment 0 (1 bytes at offset 4294967295)"),
    ] {
        let wat = wat(data);
        let e = Module::from_wat(&wat).err().unwrap_or_else(|| panic!("loaded: {data}")).to_string();
        assert!(e.contains(want) && e.contains("initial memory of 65536 bytes"), "{data}: {e}");
        if wamr_coro::aot::compiler_available() {
            let wasm = wat::parse_str(&wat).unwrap();
            let limits = wamr_coro::aot::CompileLimits::default();
            let e = wamr_coro::aot::load_compiled(&wasm, wamr_coro::aot::Target::Native, None, &limits)
                .err()
                .unwrap_or_else(|| panic!("compiled and loaded: {data}"))
                .to_string();
            assert!(e.contains(want), "compiled, {data}: {e}");
        }
    }
    // Up to the last byte is fine.
    Module::from_wat(&wat(r#"(data (i32.const 65534) "hi")"#)).unwrap();
}

/// `alloc`'s answer must be non-zero with the whole chunk inside memory:
/// otherwise creating the env fails with an error quoting the address (at
/// start: the server makes one env first), in both modes and sources.
#[test]
fn a_bad_alloc_answer_is_refused_with_its_address() {
    setup();
    let guest = |at: i32| {
        Module::from_wat(&format!(
            r#"(module
                 (memory (export "memory") 3)
                 (global $__stack_pointer (mut i32) (i32.const 65536))
                 (global (export "__data_end") i32 (i32.const 4096))
                 (global (export "__heap_base") i32 (i32.const 196608))
                 (func (export "alloc") (param i32) (result i32) (i32.const {at}))
                 (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#
        ))
        .unwrap()
    };
    for (mode, source) in [
        (Mode::Direct, EnvSource::Instance),
        (Mode::Direct, EnvSource::Spawn),
        (Mode::Queue, EnvSource::Instance),
        (Mode::Queue, EnvSource::Spawn),
    ] {
        let limits = Limits { chunk_size: 4096, ..test_limits() };
        let start = |at: i32| {
            Server::builder(guest(at))
                .listen("127.0.0.1:0")
                .mode(mode)
                .env_source(source)
                .limits(limits.clone())
                .start()
        };
        for at in [0, -1, i32::MIN, 196608 - 4095, 196608] {
            let e = start(at).err().unwrap_or_else(|| panic!("{mode:?} {source:?}: alloc {at} accepted"));
            assert!(e.to_string().contains(&format!("returned {at},")), "{mode:?} {source:?} {at}: {e}");
        }
        // Exactly at the end of memory: fine.
        start(196608 - 4096).unwrap().stop();
    }
}

/// Answers 3 bytes: what the function in table slot 0 returns ('A' at
/// first), whether slot 1 is null ('1'), the table's size ('2'). A message
/// starting with 'M' then changes all three: slot 0 := $b ('B'), slot 1
/// from a passive segment it then drops, one more slot.
const TABLES: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (type $f (func (result i32)))
  (table $t 2 10 funcref)
  (elem (i32.const 0) $a)
  (elem $passive func $b)
  (func $a (result i32) (i32.const 65))
  (func $b (result i32) (i32.const 66))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 4096))
  (global (export "__heap_base") i32 (i32.const 196608))
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (i32.store8 (i32.const 512) (call_indirect (type $f) (i32.const 0)))
    (i32.store8 (i32.const 513) (i32.add (i32.const 48) (ref.is_null (table.get $t (i32.const 1)))))
    (i32.store8 (i32.const 514) (i32.add (i32.const 48) (table.size $t)))
    (drop (call $send (local.get $c) (i32.const 512) (i32.const 3)))
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 77))
      (then
        (table.init $t $passive (i32.const 1) (i32.const 0) (i32.const 1))
        (table.copy $t $t (i32.const 0) (i32.const 1) (i32.const 1))
        (elem.drop $passive)
        (drop (table.grow $t (ref.null func) (i32.const 1)))))
    (i32.const 0)))"#;

/// Direct mode, `--policy connection`: a later connection's env starts
/// with the module's initial tables, whatever an earlier one changed
/// (table.set/init/copy/grow, elem.drop), with either env source.
#[test]
fn changed_tables_do_not_survive_into_the_next_connection() {
    setup();
    let m = Module::from_wat(TABLES).unwrap();
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        let server = serve(m.clone(), Mode::Direct, source, EnvPolicy::Connection, test_limits());
        for i in 0..5u64 {
            let mut s = connect(server.local_addr());
            s.write_all(b"M").unwrap();
            assert_eq!(read_n(&mut s, 3).unwrap(), b"A12", "{source:?} round {i}: fresh env");
            s.write_all(b"x").unwrap();
            assert_eq!(read_n(&mut s, 3).unwrap(), b"B03", "{source:?} round {i}: changed in its own env");
            drop(s);
            // Closed (its env released) before the next connection.
            wait_for("the close", Duration::from_secs(10), || server.stats().closed > i);
        }
        let stats = server.stop();
        assert_eq!(stats.traps, 0, "{source:?}: {stats}");
    }
}

/// Queue mode with several shards: a guest addresses the connections its
/// shard serves, and a connection of another shard is UNKNOWN_CONN to it
/// (and gets nothing), with the host's loop or the guest's own.
#[test]
fn a_queue_guest_addresses_only_its_own_shards_connections() {
    register();
    let _conf = CONF.lock();
    for (source, run) in [(EnvSource::Instance, false), (EnvSource::Spawn, false), (EnvSource::Instance, true)] {
        let what = format!("{source:?} run={run}");
        *REPORTS.lock() = None;
        let limits = Limits { queue_shards: 2, ..test_limits() };
        let server =
            serve(Module::from_wat(&hostile(run)).unwrap(), Mode::Queue, source, EnvPolicy::Connection, limits);
        let addr = server.local_addr();
        let mut others: Vec<_> = (0..4).map(|_| open(addr)).collect();
        let (mut h, id) = open(addr);
        let recs: Vec<[i32; 4]> = others.iter().map(|(_, o)| [SEND, *o, 0, 3]).collect();
        let got = run_records(&mut h, id, &recs);
        let (mut same, mut other) = (0, 0);
        for ((s, o), r) in others.iter_mut().zip(got) {
            // The host deals connections to shards by id modulo their
            // number (queue/mod.rs `shard_of`).
            if (*o - id) % 2 == 0 {
                assert_eq!(r, 3, "{what}: {o} shares {id}'s shard");
                assert_eq!(read_n(s, 3).unwrap(), b"ABC", "{what}");
                same += 1;
            } else {
                assert_eq!(r, -1, "{what}: {o} is another shard's");
                other += 1;
            }
            echo_round(s, b"#nothing else");
        }
        assert!(same > 0 && other > 0, "{what}: ids {id} and others");
        drop((h, others));
        let stats = server.stop();
        assert_eq!((stats.traps, stats.queue_restarts), (0, 0), "{what}: {stats}");
    }
}
