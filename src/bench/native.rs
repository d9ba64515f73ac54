//! The baseline: a `may` server with no WebAssembly at all
//! (`wamr-coro bench-native`, started by the bench as a child process).
//!
//! It speaks what the guests speak — HTTP like `guests/http.wat` (the same
//! response bytes, the same `\r\n\r\n` matcher, pipelining and split
//! requests alike) or echo — with one coroutine per connection, the same
//! worker count and coroutine stack size as `serve`, and the same port
//! binding. Whatever a guest run costs beyond it is the price of running
//! the protocol in WebAssembly.
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::protocol::{Protocol, HTTP_RESPONSE};
use crate::error::{Error, Result};

/// How to run the native server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NativeSpec {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// What to answer.
    pub protocol: Protocol,
    /// `may` workers.
    pub workers: usize,
    /// Share the port (`SO_REUSEPORT`).
    pub reuse_port: bool,
}

/// Read buffer per connection (a guest's receive buffer is 64 KiB of its
/// linear memory; the native server needs no more than a read's worth).
const READ_BUF: usize = 16 * 1024;

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    closed: AtomicU64,
}

/// Runs the native server until SIGINT/SIGTERM (or stdin closes): prints
/// `listening on ADDR`, answers `stats` on stdin (see `control`).
pub fn serve(spec: &NativeSpec) -> Result<()> {
    crate::coro::configure(spec.workers, crate::coro::DEFAULT_STACK_BYTES)?;
    let bound = crate::server::bind::bind(spec.listen, spec.reuse_port)?;
    let counters = Arc::new(Counters::default());
    let c = Arc::clone(&counters);
    super::control::spawn(
        move || {
            let (a, cl) = (c.accepted.load(Ordering::Relaxed), c.closed.load(Ordering::Relaxed));
            serde_json::json!({ "accepted": a, "open": a.saturating_sub(cl), "live_envs": 0 })
        },
        super::control::raise_sigterm,
    )
    .map_err(|e| Error::io("starting the control thread", e))?;
    let protocol = spec.protocol;
    let listener = bound.listener;
    let c = Arc::clone(&counters);
    // Coroutines as `serve` starts them (`coro::spawn`), for a like-for-like
    // scheduler and stack.
    let _acceptor = crate::coro::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                may::coroutine::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            c.accepted.fetch_add(1, Ordering::Relaxed);
            let c = Arc::clone(&c);
            crate::coro::spawn(move || {
                let _ = connection(stream, protocol);
                c.closed.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    println!("listening on {}", bound.local_addr);
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|e| Error::io("installing signal handlers", e))?;
    let _ = signals.forever().next();
    // The parent may have gone already: a closed stdout is no error here.
    let _ = writeln!(
        std::io::stdout(),
        "native: {} accepted, {} closed",
        counters.accepted.load(Ordering::Relaxed),
        counters.closed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One connection: read, answer, until EOF or an error.
fn connection(mut s: may::net::TcpStream, protocol: Protocol) -> std::io::Result<()> {
    // The listener has TCP_NODELAY, which Linux copies to accepted sockets
    // (server/bind.rs): no system call per connection, as in the server.
    if !crate::server::bind::NODELAY_INHERITED {
        s.set_nodelay(true)?;
    }
    let mut buf = vec![0u8; READ_BUF];
    let mut out = Vec::new();
    // HTTP: how much of "\r\n\r\n" has been seen (as guests/http.wat keeps it).
    let mut matched = 0u8;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        match protocol {
            Protocol::Echo => s.write_all(&buf[..n])?,
            Protocol::Http => {
                for &b in &buf[..n] {
                    let want = if matched & 1 == 1 { b'\n' } else { b'\r' };
                    matched = if b == want { matched + 1 } else { u8::from(b == b'\r') };
                    if matched == 4 {
                        out.extend_from_slice(HTTP_RESPONSE);
                        matched = 0;
                    }
                }
                if !out.is_empty() {
                    s.write_all(&out)?;
                    out.clear();
                }
            }
        }
    }
}
