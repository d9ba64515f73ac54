//! The accept loop: one coroutine that accepts TCP connections, admits them
//! (server-wide and per-address limits, see `socket.rs`) and starts a
//! coroutine for each (`connection.rs`, or queue mode's reader and writer).
//!
//! Out of file descriptors (EMFILE/ENFILE), a pending connection cannot even
//! be accepted to be refused, and the listener would spin on it. A spare
//! descriptor is kept for that moment: it is released, the connection
//! accepted and closed at once (counted as refused), and the spare taken
//! again.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{connection, socket, Shared};

pub(super) fn start(shared: Arc<Shared>, listener: may::net::TcpListener) -> may::coroutine::JoinHandle<()> {
    crate::coro::spawn(move || {
        let mut spare = std::fs::File::open("/dev/null").ok();
        loop {
            let accepted = listener.accept();
            if shared.stopping.load(Ordering::Acquire) {
                break;
            }
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = shared.log_limits.accept.allow() {
                        tracing::warn!(error = %e, suppressed, "out of file descriptors: refusing a connection");
                    }
                    if spare.take().is_some() {
                        drop(listener.accept());
                        spare = std::fs::File::open("/dev/null").ok();
                    } else {
                        may::coroutine::sleep(std::time::Duration::from_millis(10));
                    }
                    continue;
                }
                Err(e) => {
                    if let Some(suppressed) = shared.log_limits.accept.allow() {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    may::coroutine::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            };
            if let Err(why) = socket::admit(&shared, peer.ip()) {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, why, "connection refused");
                drop(stream);
                continue;
            }
            // The current guest serves this connection for its whole life,
            // even if a reload replaces it meanwhile.
            let gen = shared.generations.current();
            match &gen.queue {
                Some(q) => super::queue::start_conn(&shared, q, stream, peer.ip()),
                None => connection::start(&shared, &gen.pool, stream, peer),
            }
        }
    })
}
