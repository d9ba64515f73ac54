//! The guest's `send` and `close`: the way back from a guest to its
//! sockets, one check order and one accounting for both modes.
//!
//! [`send`] and [`close`] run the contract's checks in its order —
//! connection (`UNKNOWN_CONN`), pointer (`BAD_POINTER`), output limit
//! (`WOULD_EXCEED_LIMIT`) — and count refusals straight into the server's
//! counters, so `/metrics` sees them at once. What differs between the modes
//! is only where a connection's output goes, an [`Outbox`]:
//!
//! * direct mode ([`ConnHost`], below): the one connection the env serves;
//!   bytes wait in its pending output and the connection coroutine writes
//!   them after the callback returns, so a guest never blocks on a slow
//!   client; `close` marks it closed, and the coroutine flushes, closes the
//!   socket and calls `on_close`;
//! * queue mode (`queue/host.rs`'s `QueueHost`): any connection of the shard's
//!   current guest instance; bytes go to that connection's writer.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

use super::Shared;
use crate::abi::{AbiHost, ConnInfo, ERR_BAD_POINTER, ERR_UNKNOWN_CONN, ERR_WOULD_EXCEED_LIMIT};

/// Where a mode puts a connection's output: the only part of `send` and
/// `close` that differs between direct and queue mode.
pub(crate) trait Outbox {
    /// The connection the guest named, if it may address it (open, not
    /// closed by the guest, served by this env).
    type Conn;
    /// Looks `conn` up.
    fn find(&self, conn: i32) -> Option<Self::Conn>;
    /// Bytes `send` queued for it that are not written yet.
    fn queued(&self, conn: &Self::Conn) -> usize;
    /// Queues `bytes` (already checked); false if the connection went away
    /// meanwhile.
    fn push(&mut self, conn: &Self::Conn, bytes: &[u8]) -> bool;
    /// The guest closes it: flush what is queued, then close.
    fn close(&mut self, conn: &Self::Conn);
}

/// `send(conn, ptr, len)`: the contract's checks in its order, then the
/// bytes to the connection's output. `bytes` is `Err` when the guest's range
/// is not inside its memory.
pub(crate) fn send<O: Outbox>(out: &mut O, sh: &Shared, conn: i32, bytes: Result<&[u8], ()>) -> i32 {
    let Some(c) = out.find(conn) else { return ERR_UNKNOWN_CONN };
    let Ok(bytes) = bytes else {
        sh.counters.bad_pointers.fetch_add(1, Ordering::Relaxed);
        return ERR_BAD_POINTER;
    };
    if out.queued(&c) + bytes.len() > sh.limits.output_limit {
        sh.counters.output_limit_hits.fetch_add(1, Ordering::Relaxed);
        return ERR_WOULD_EXCEED_LIMIT;
    }
    if !out.push(&c, bytes) {
        return ERR_UNKNOWN_CONN;
    }
    bytes.len() as i32
}

/// `close(conn)`.
pub(crate) fn close<O: Outbox>(out: &mut O, conn: i32) -> i32 {
    let Some(c) = out.find(conn) else { return ERR_UNKNOWN_CONN };
    out.close(&c);
    0
}

/// A `log` call whose range is not inside the guest's memory.
pub(crate) fn bad_log_pointer(sh: &Shared) {
    sh.counters.bad_pointers.fetch_add(1, Ordering::Relaxed);
}

/// What one connection's callbacks produced (direct mode).
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Bytes queued by `send`, not yet written.
    pub out: Vec<u8>,
    /// The guest called `close`.
    pub closed_by_guest: bool,
    /// The connection's budget of guest log lines.
    pub log_limit: super::ratelimit::LogLimit,
}

/// The [`AbiHost`] of an env while it serves one connection (direct mode).
pub(crate) struct ConnHost {
    pub conn: i32,
    /// The client's address, for host functions ([`AbiHost::connection`]).
    pub peer: Option<std::net::SocketAddr>,
    pub state: Arc<Mutex<ConnState>>,
    pub sh: Arc<Shared>,
}

/// A direct-mode connection's output while one `send` or `close` runs: its
/// state locked once for the whole call.
struct LockedConn<'a> {
    conn: i32,
    state: MutexGuard<'a, ConnState>,
}

impl Outbox for LockedConn<'_> {
    type Conn = ();

    fn find(&self, conn: i32) -> Option<()> {
        (conn == self.conn && !self.state.closed_by_guest).then_some(())
    }

    fn queued(&self, _: &()) -> usize {
        self.state.out.len()
    }

    fn push(&mut self, _: &(), bytes: &[u8]) -> bool {
        self.state.out.extend_from_slice(bytes);
        true
    }

    fn close(&mut self, _: &()) {
        self.state.closed_by_guest = true;
    }
}

impl ConnHost {
    fn locked(&self) -> LockedConn<'_> {
        LockedConn { conn: self.conn, state: self.state.lock() }
    }
}

impl AbiHost for ConnHost {
    fn send(&mut self, conn: i32, bytes: Result<&[u8], ()>) -> i32 {
        // One lock for the whole call, and no clone of the server-wide
        // `Arc<Shared>`: its count is one cache line for every worker.
        send(&mut self.locked(), &self.sh, conn, bytes)
    }

    fn close(&mut self, conn: i32) -> i32 {
        close(&mut self.locked(), conn)
    }

    fn epoch(&self) -> Instant {
        self.sh.epoch
    }

    fn log_allowed(&mut self) -> Option<u64> {
        self.state.lock().log_limit.allow()
    }

    fn bad_log_pointer(&mut self) {
        bad_log_pointer(&self.sh);
    }

    fn connection(&self) -> Option<ConnInfo> {
        Some(ConnInfo { id: self.conn, peer: self.peer })
    }
}
