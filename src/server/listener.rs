//! The accept loop: one coroutine that accepts TCP connections, admits them
//! (server-wide and per-address limits, see `socket.rs`) and starts a
//! coroutine for each (`connection.rs`, or queue mode's reader and writer).
//!
//! Out of file descriptors (EMFILE/ENFILE), a pending connection cannot even
//! be accepted to be refused, and the listener would spin on it. A spare
//! descriptor is kept for that moment: it is released, the connection
//! accepted and closed at once (counted as refused), and the spare taken
//! again.
//!
//! Before that point, the top [`fd_reserve`] descriptors under the limit (an
//! eighth of it, 4 to 32) are kept for everything that is not a client
//! connection: an accepted connection whose descriptor lands there is
//! refused. Linux hands out the lowest free number, so a descriptor that
//! high means nearly every lower one is taken. Without the reserve, a flood
//! that used the last descriptor left the metrics endpoint unable to accept
//! a scrape, just when an operator would look, and the runtime's own opens
//! failing (`/proc/self/pagemap`, opened at first use and tried again while
//! descriptors run out). The limit may change while the server runs; see
//! [`FdCeiling`] for when it is read.
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{connection, socket, Shared};

pub(super) fn start(shared: Arc<Shared>, listener: may::net::TcpListener) -> may::coroutine::JoinHandle<()> {
    crate::coro::spawn(move || {
        let mut spare = std::fs::File::open("/dev/null").ok();
        let mut ceiling = FdCeiling::new();
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
            if !ceiling.admits(stream.as_raw_fd()) {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = shared.log_limits.accept.allow() {
                    tracing::warn!(
                        fd = stream.as_raw_fd(),
                        ceiling = ceiling.value,
                        suppressed,
                        "nearly out of file descriptors: refusing a connection, keeping the rest for the runtime and /metrics"
                    );
                }
                drop(stream);
                continue;
            }
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

/// The lowest descriptor number a client connection may not keep: the
/// limit less [`fd_reserve`]. The limit is the process's and may change
/// while the server runs (an embedder raising it after starting the server,
/// an operator's `prlimit`), so it is read again at the first accept at
/// least [`REREAD_LIMIT`] after the last read, and at once when a
/// descriptor reaches the ceiling, before that client is refused. Clients
/// already holding descriptors inside a newly lowered reserve keep them:
/// the reserve comes back as they leave.
struct FdCeiling {
    value: u64,
    read_at: Instant,
}

/// How stale [`FdCeiling`]'s limit may be.
const REREAD_LIMIT: Duration = Duration::from_secs(1);

impl FdCeiling {
    fn new() -> FdCeiling {
        FdCeiling { value: FdCeiling::read(), read_at: Instant::now() }
    }

    fn read() -> u64 {
        super::fd_limit().map_or(u64::MAX, |l| l.saturating_sub(fd_reserve(l)))
    }

    /// Whether a client connection may keep descriptor `fd`.
    fn admits(&mut self, fd: RawFd) -> bool {
        let fd = fd as u64;
        if fd >= self.value || self.read_at.elapsed() >= REREAD_LIMIT {
            self.value = FdCeiling::read();
            self.read_at = Instant::now();
        }
        fd < self.value
    }
}

/// Descriptors kept free of client connections under a limit of `limit`:
/// an eighth of it, at least 4 and at most 32 (so 32 from a limit of 256
/// on). 32 covers the metrics endpoint (its listener was bound at start,
/// lower down; its connections leave the top half of this reserve to the
/// runtime: near it, a new scrape connection replaces a waiting one, see
/// `metrics::fd_ceiling`), the runtime's own opens and the spare above. A
/// small limit keeps most of its descriptors for connections.
pub(crate) fn fd_reserve(limit: u64) -> u64 {
    (limit / 8).clamp(4, 32)
}
