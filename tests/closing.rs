//! How connections close: the lingering close a server-side close makes
//! (the guest closed, refused or faulted while its client may still be
//! sending), and its bounds. Their own binary: the flooding client and the
//! 4 MiB answers keep `may`'s workers busy, which would skew the timing of
//! the scheduling tests in `server.rs` that share a process with them.
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

use wamr_coro::server::{EnvPolicy, Limits, Mode};

/// A guest that answers and closes while the client has sent more than the
/// server read (pipelined input the guest never sees): the close must not
/// reset the connection. A `close` with unread input makes the kernel send a
/// RST at once and drop whatever answer bytes the client has not taken yet,
/// so the client saw a cut answer and `ECONNRESET`. The server now shuts its
/// sending side, discards what the client still sends for a bounded time,
/// and closes once the client has (a "lingering close"). Every mode and
/// runner; the client sends 1 MiB after its request and reads only later.
#[test]
fn a_guest_close_with_unread_input_delivers_every_byte_then_a_clean_end() {
    setup();
    use std::io::Read;
    let expected: Vec<u8> = (0u32..1 << 20).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
    let runs = [
        (Mode::Direct, EnvPolicy::Connection, wamr_coro::server::QueueRunner::Thread),
        (Mode::Direct, EnvPolicy::Message, wamr_coro::server::QueueRunner::Thread),
        (Mode::Queue, EnvPolicy::Connection, wamr_coro::server::QueueRunner::Thread),
        (Mode::Queue, EnvPolicy::Connection, wamr_coro::server::QueueRunner::Coroutine),
    ];
    for (mode, policy, runner) in runs {
        let limits = Limits { output_limit: 8 << 20, call_budget: Some(Duration::from_secs(10)), ..test_limits() };
        let m = wamr_coro::Module::from_wat(BIG_THEN_CLOSE_WAT).unwrap();
        let server = builder(m, mode, policy, limits).queue_runner(runner).start().unwrap();
        let addr = server.local_addr();
        let clients: Vec<_> = (0..4u64)
            .map(|i| {
                let expected = expected.clone();
                std::thread::spawn(move || {
                    let mut s = connect(addr);
                    // The request and, in the same write, input that stays
                    // unread in the server's socket when the guest closes.
                    let mut out = b"go".to_vec();
                    out.resize(1 << 20, b'x');
                    let writer = {
                        let mut w = s.try_clone().unwrap();
                        std::thread::spawn(move || w.write_all(&out).is_ok())
                    };
                    std::thread::sleep(Duration::from_millis(200 + 50 * i));
                    let mut got = Vec::new();
                    let end = s.read_to_end(&mut got);
                    let what = format!("{mode:?} {policy:?} {runner:?} client {i}");
                    assert!(end.is_ok(), "{what}: {end:?} after {} of {} bytes", got.len(), expected.len());
                    assert!(got.len() == expected.len(), "{what}: {} bytes", got.len());
                    assert!(got == expected, "{what}: the bytes differ");
                    drop(s);
                    let _ = writer.join();
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        wait_closed(&server, 4);
        let stats = server.stop();
        assert_eq!(stats.bytes_out, 4 << 22, "{mode:?} {policy:?} {runner:?}: {stats}");
        assert_eq!(stats.envs.live, 0);
    }
}

/// The lingering close is bounded: a client that neither closes nor
/// stops sending after the server's FIN is closed on `linger` later (plus
/// up to a period of the idle sweep, here 1 s, while `idle_timeout` is a
/// day), one that floods is closed on too, and a stop does not wait for a
/// lingering connection. The client that stays silent sees a clean end,
/// not a reset, when the guest closes, and its end is not an idle close.
/// Both modes.
///
/// The first version backdated the idle stamp instead of keeping a
/// deadline: in queue mode a byte sent after the FIN touched the stamp
/// again (the connection then lingered a whole `idle_timeout`), and on a
/// host up for less than `idle_timeout` the backdate stopped at the clock's
/// zero (the linger lasted until the uptime reached `idle_timeout`).
#[test]
fn a_lingering_close_is_bounded_by_linger_and_by_stop() {
    setup();
    use std::io::Read;
    for mode in [Mode::Direct, Mode::Queue] {
        let day = Duration::from_secs(86_400);
        let limits = Limits { linger: Duration::from_millis(300), idle_timeout: day, ..test_limits() };
        let server = start(module("faulty.wat"), mode, EnvPolicy::Connection, limits);
        let addr = server.local_addr();
        // Silent: 'C' makes the guest close; the client sends one byte
        // after the FIN, then waits.
        let mut silent = connect(addr);
        silent.write_all(b"C").unwrap();
        silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(silent.read(&mut b).unwrap(), 0, "{mode:?}: the guest's close ends the output cleanly");
        silent.write_all(b"y").unwrap();
        wait_closed(&server, 1);
        assert_eq!(server.stats().idle_closes, 0, "{mode:?}: {}", server.stats());
        // Flooding: keeps sending after the FIN, until the server closes.
        let mut flood = connect(addr);
        flood.write_all(b"C").unwrap();
        let mut w = flood.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 << 10];
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if w.write_all(&chunk).is_err() {
                    return true;
                }
            }
            false
        });
        wait_closed(&server, 2);
        assert!(writer.join().unwrap(), "{mode:?}: the flooding client was never closed on");
        drop((silent, flood));
        let stats = server.stop();
        assert_eq!(stats.envs.live, 0, "{mode:?}");
        // A stop ends a linger at once (its read side is shut).
        let limits =
            Limits { linger: Duration::from_secs(60), idle_timeout: Duration::from_secs(120), ..test_limits() };
        let server = start(module("faulty.wat"), mode, EnvPolicy::Connection, limits);
        let mut held = connect(server.local_addr());
        held.write_all(b"C").unwrap();
        held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(held.read(&mut b).unwrap(), 0, "{mode:?}");
        let t = Instant::now();
        let stats = server.stop();
        assert!(t.elapsed() < Duration::from_secs(10), "{mode:?}: stop waited {:?} for a lingering close", t.elapsed());
        assert_eq!(stats.closed, 1, "{mode:?}: {stats}");
    }
}
