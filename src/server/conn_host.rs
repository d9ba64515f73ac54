//! The guest's `send` and `close` for one connection (direct mode): the way
//! back from a guest to its socket.
//!
//! `send` copies the guest's bytes into the connection's pending output
//! (bounded by the per-connection output limit: `WOULD_EXCEED_LIMIT` past
//! it); the connection coroutine writes them to the socket after the
//! callback returns, so a guest never blocks on a slow client. `close` marks
//! the connection closed; the coroutine flushes, closes the socket and calls
//! `on_close`. The checks run in the contract's order: connection (`-1`),
//! pointer (`-2`), limit (`-3`).
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::abi::{AbiHost, ERR_BAD_POINTER, ERR_UNKNOWN_CONN, ERR_WOULD_EXCEED_LIMIT};

/// What one connection's callbacks produced.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Bytes queued by `send`, not yet written.
    pub out: Vec<u8>,
    /// The guest called `close`.
    pub closed_by_guest: bool,
    /// `send`s refused for the output limit.
    pub limit_hits: u64,
    /// `send`s / `log`s with bad pointers.
    pub bad_pointers: u64,
    /// The connection's budget of guest log lines.
    pub log_limit: super::ratelimit::LogLimit,
}

/// The [`AbiHost`] of an env while it serves one connection.
pub(crate) struct ConnHost {
    pub conn: i32,
    pub state: Arc<Mutex<ConnState>>,
    pub output_limit: usize,
    pub epoch: Instant,
}

impl AbiHost for ConnHost {
    fn send(&mut self, conn: i32, bytes: Result<&[u8], ()>) -> i32 {
        let mut st = self.state.lock();
        if conn != self.conn || st.closed_by_guest {
            return ERR_UNKNOWN_CONN;
        }
        let Ok(bytes) = bytes else {
            st.bad_pointers += 1;
            return ERR_BAD_POINTER;
        };
        if st.out.len() + bytes.len() > self.output_limit {
            st.limit_hits += 1;
            return ERR_WOULD_EXCEED_LIMIT;
        }
        st.out.extend_from_slice(bytes);
        bytes.len() as i32
    }

    fn close(&mut self, conn: i32) -> i32 {
        let mut st = self.state.lock();
        if conn != self.conn || st.closed_by_guest {
            return ERR_UNKNOWN_CONN;
        }
        st.closed_by_guest = true;
        0
    }

    fn epoch(&self) -> Instant {
        self.epoch
    }

    fn log_allowed(&mut self) -> Option<u64> {
        self.state.lock().log_limit.allow()
    }

    fn bad_log_pointer(&mut self) {
        self.state.lock().bad_pointers += 1;
    }
}
