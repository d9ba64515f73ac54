//! The HTTP guests' per-connection state (http.wat, cpu.wat, c/http.c, the
//! SDK's http example) when one instance serves many connections (queue
//! mode): a request head split across reads must be answered however many
//! other connections open and close meanwhile.
//!
//! The guests once kept that state in a table indexed by `conn & (slots - 1)`:
//! connection ids count up, so a connection that opened `slots` ids later
//! took an open connection's slot, and its split request was never answered.
//! The first tests show it through a server; the others call the callbacks
//! directly, as the host's queue loop does, which is fast enough to fill the
//! tables and to check them against a model.
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use wamr_coro::abi::AbiHost;
use wamr_coro::server::{EnvPolicy, Limits, Mode, ServerHandle};
use wamr_coro::{Guest, GuestConfig, GuestEnv, Registry};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Opens and closes `n` connections, one after the other, and waits until
/// the server has closed them all. Each closes with a reset (linger 0), so
/// none leaves a port in TIME_WAIT: four guests' worth of them would
/// otherwise take most of loopback's ephemeral ports. At most 256 are
/// ahead of the server at a time: more could reach the per-address limit
/// (2,500) while the server lags behind (the suite runs tests in parallel
/// on two cores), and a refused connection never reaches the guest.
fn churn(server: &ServerHandle, n: usize) {
    let addr = server.local_addr();
    let closed_before = server.stats().closed;
    let caught_up = |behind: usize, done: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.stats().closed + (behind as u64) < closed_before + done as u64 {
            assert!(Instant::now() < deadline, "the server did not keep up: {}", server.stats());
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    for done in 1..=n {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.connect_timeout(&addr.into(), Duration::from_secs(5)).unwrap();
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
        if done % 256 == 0 {
            caught_up(256, done);
        }
    }
    caught_up(0, n);
    assert_eq!(server.stats().refused, 0, "connections were refused: {}", server.stats());
}

/// In queue mode with one shard: client A sends one request (its answer is
/// `answer_len` bytes) and then a second one without its final "\n"; `n`
/// other connections open and close; A's last byte must complete its
/// request. `n` is at least the guest's old slot count, so that with the old
/// table one of them had A's slot.
fn split_request_survives_churn(guest: &str, answer_len: usize, n: usize) {
    let limits = Limits { queue_shards: 1, ..test_limits() };
    let server = builder(any_guest(guest), Mode::Queue, EnvPolicy::Connection, limits).start().unwrap();
    let addr = server.local_addr();
    let mut a = connect(addr);
    a.write_all(REQUEST).unwrap();
    let answer = read_n(&mut a, answer_len).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{guest}: {:?}", String::from_utf8_lossy(&answer));
    a.write_all(&REQUEST[..REQUEST.len() - 1]).unwrap();
    let t = Instant::now();
    // Every one of them is opened and closed in the guest.
    churn(&server, n);
    eprintln!("{guest}: {n} connections opened and closed in {:?}", t.elapsed());
    a.write_all(b"\n").unwrap();
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let again = read_n(&mut a, answer_len)
        .unwrap_or_else(|e| panic!("{guest}: A's split request was not answered after {n} other connections ({e})"));
    assert_eq!(again, answer, "{guest}");
    drop(a);
    let stats = server.stop();
    assert_eq!(stats.refused, 0, "{guest}: {stats}");
    assert_eq!(stats.traps, 0, "{guest}: {stats}");
}

#[test]
fn queue_mode_split_request_survives_16384_other_connections_http_wat() {
    split_request_survives_churn("http.wat", HTTP_RESPONSE.len(), 16384);
}

#[test]
fn queue_mode_split_request_survives_16384_other_connections_cpu_wat() {
    split_request_survives_churn("cpu.wat", CPU_RESPONSE_LEN, 16384);
}

#[test]
fn queue_mode_split_request_survives_16384_other_connections_c_http() {
    split_request_survives_churn("c:http", HTTP_RESPONSE.len(), 16384);
}

#[test]
fn queue_mode_split_request_survives_4096_other_connections_rust_http() {
    if !rust_guest_enabled() {
        eprintln!("SKIP_RUST_GUEST=1: the Rust guests are not built in this run");
        return;
    }
    split_request_survives_churn("rust:rust_http", HTTP_RESPONSE.len(), 4096);
}

/// cpu.wat's answer: a 64-byte head, 8 hex digits and "\n".
const CPU_RESPONSE_LEN: usize = 73;

/// The HTTP guests, with how many connections one instance keeps state for.
fn http_guests() -> Vec<(&'static str, usize)> {
    let mut g = vec![("http.wat", 12288), ("cpu.wat", 12288), ("c:http", 12288)];
    if rust_guest_enabled() {
        g.push(("rust:rust_http", 3072));
    }
    g
}

/// What `send` was called for: the connection of each call.
#[derive(Clone, Default)]
struct Sent(Arc<Mutex<Vec<i32>>>);

/// The guest's imports without a server: `send` records its connection.
struct Recorder(Sent, Instant);

impl AbiHost for Recorder {
    fn send(&mut self, conn: i32, bytes: Result<&[u8], ()>) -> i32 {
        match bytes {
            Ok(b) => {
                self.0 .0.lock().push(conn);
                b.len() as i32
            }
            Err(()) => -2,
        }
    }
    fn close(&mut self, _conn: i32) -> i32 {
        0
    }
    fn epoch(&self) -> Instant {
        self.1
    }
}

/// One env of a guest, its callbacks called directly (as the host's queue
/// loop calls them, one instance for every connection).
struct Env {
    name: &'static str,
    env: GuestEnv,
    sent: Sent,
}

impl Env {
    fn new(name: &'static str) -> Env {
        let guest = Guest::new(any_guest(name), GuestConfig::default(), Registry::new()).unwrap();
        let mut env = guest.create_env().unwrap();
        let sent = Sent::default();
        env.set_host(Some(Box::new(Recorder(sent.clone(), Instant::now()))));
        Env { name, env, sent }
    }

    /// `on_open`: true if accepted.
    fn open(&mut self, conn: i32) -> bool {
        self.env.on_open(conn).unwrap() >= 0
    }

    /// `on_recv`: how many answers it sent (all for `conn`).
    fn recv(&mut self, conn: i32, bytes: &[u8]) -> usize {
        let r = self.env.on_recv(conn, bytes).unwrap();
        assert!(r >= 0, "{}: on_recv({conn}) asked to close", self.name);
        let sent: Vec<i32> = std::mem::take(&mut *self.sent.0.lock());
        assert!(sent.iter().all(|&c| c == conn), "{}: answers for {sent:?} on {conn}'s bytes", self.name);
        sent.len()
    }

    fn close(&mut self, conn: i32) {
        self.env.on_close(conn).unwrap();
    }
}

#[test]
fn connections_whose_ids_differ_by_a_table_size_keep_their_own_state() {
    // The old tables had 16,384 slots (4,096 in the Rust guest): conn and
    // conn + 16384 (or + 4096) shared one.
    for (name, _) in http_guests() {
        let mut g = Env::new(name);
        let ids = [7, 7 + 4096, 7 + 16384, 7 + 2 * 16384, 7 + 65536];
        for (k, &id) in ids.iter().enumerate() {
            assert!(g.open(id), "{name}: {id} refused");
            // Each has a different part of a request pending.
            assert_eq!(g.recv(id, &REQUEST[..REQUEST.len() - 1 - k % 4]), 0, "{name}");
        }
        for (k, &id) in ids.iter().enumerate().rev() {
            assert_eq!(g.recv(id, &REQUEST[REQUEST.len() - 1 - k % 4..]), 1, "{name}: {id}'s request got lost");
        }
        // Closing one leaves the others' state alone.
        for &id in &ids[..2] {
            g.close(id);
        }
        for &id in &ids[2..] {
            assert_eq!(g.recv(id, b"GET / HTTP/1.1\r\n\r"), 0, "{name}");
        }
        for &id in &ids[2..] {
            assert_eq!(g.recv(id, b"\n"), 1, "{name}: {id}");
        }
    }
}

#[test]
fn a_full_table_refuses_the_next_connection_and_keeps_every_entry() {
    for (name, cap) in http_guests() {
        let mut g = Env::new(name);
        let cap = cap as i32;
        for id in 1..=cap {
            assert!(g.open(id), "{name}: connection {id} of {cap} refused");
            assert_eq!(g.recv(id, b"GET / HTTP/1.1\r\n\r"), 0, "{name}");
        }
        assert!(!g.open(cap + 1), "{name}: connection {} accepted past the capacity", cap + 1);
        // Every pending request completes (cpu.wat's answers cost 5,000
        // rounds each: every 16th is enough there).
        let step = if name == "cpu.wat" { 16 } else { 1 };
        for id in (1..=cap).step_by(step) {
            assert_eq!(g.recv(id, b"\n"), 1, "{name}: {id}'s request got lost");
        }
        // A closed connection's entry is free again.
        g.close(cap / 2);
        assert!(g.open(cap + 2), "{name}: refused after a close");
        assert!(!g.open(cap + 3), "{name}");
        assert_eq!(g.recv(cap + 2, REQUEST), 1, "{name}");
    }
}

#[test]
fn a_shared_env_makes_room_instead_of_refusing() {
    // Direct mode's --policy message leases an env per callback: an env sees
    // the on_close of a connection another env opened, and keeps the entries
    // of connections that closed elsewhere. It must not fill up for good.
    for (name, cap) in http_guests() {
        let mut g = Env::new(name);
        g.close(1_000_000);
        for id in 1..=(3 * cap as i32) {
            assert!(g.open(id), "{name}: connection {id} refused by a shared env");
            assert_eq!(g.recv(id, b"GET / HTTP/1.1\r\n\r"), 0, "{name}");
        }
        // The last one is still there: nothing opened after it.
        let last = 3 * cap as i32;
        assert_eq!(g.recv(last, b"\n"), 1, "{name}");
        // A connection it never saw open: answered, and its partial request
        // kept.
        assert_eq!(g.recv(5_000_000, b"GET / HTTP/1.1\r\n"), 0, "{name}");
        assert_eq!(g.recv(5_000_000, b"\r\n"), 1, "{name}");
    }
}

/// Random opens, closes and request bytes against a model, with enough
/// connections open that probes collide and deletions shift entries back.
#[test]
fn the_state_table_matches_a_model_under_random_traffic() {
    use rand::{Rng, SeedableRng};
    for (name, cap) in http_guests() {
        let mut g = Env::new(name);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut model: HashMap<i32, u8> = HashMap::new();
        let mut open: Vec<i32> = Vec::new();
        let mut next = 1i32;
        // cpu.wat's answers are costly: fewer steps there.
        let steps = if name == "cpu.wat" { 20_000 } else { 100_000 };
        let target = cap * 9 / 10;
        for step in 0..steps {
            let r = rng.gen_range(0..100);
            if open.is_empty() || (r < 50 && open.len() < target) {
                // The host's ids count up; skip some, as other shards' would.
                next += rng.gen_range(1..4);
                assert!(g.open(next), "{name}: {next} refused with {} open (step {step})", open.len());
                model.insert(next, 0);
                open.push(next);
            } else if r < 75 {
                let id = open.swap_remove(rng.gen_range(0..open.len()));
                g.close(id);
                model.remove(&id);
            } else {
                let id = open[rng.gen_range(0..open.len())];
                let bytes: Vec<u8> = (0..rng.gen_range(1..8)).map(|_| b"\r\nx"[rng.gen_range(0..3)]).collect();
                let m = model.get_mut(&id).unwrap();
                let mut want = 0;
                for &b in &bytes {
                    let expect = if *m % 2 == 0 { b'\r' } else { b'\n' };
                    *m = if b == expect { *m + 1 } else { (b == b'\r') as u8 };
                    if *m == 4 {
                        want += 1;
                        *m = 0;
                    }
                }
                assert_eq!(g.recv(id, &bytes), want, "{name}: {id} sent {bytes:?} at step {step}");
            }
        }
    }
}
