//! One connection in direct mode: a coroutine that reads the socket, calls
//! the guest on its private env, and writes back what the guest sent.
//!
//! ```text
//! accept → on_open → loop { read ≤ chunk → on_recv → flush } → on_close
//! ```
//! * The env is held for the connection's life ([`EnvPolicy::Connection`])
//!   or leased per callback ([`EnvPolicy::Message`]).
//! * A guest fault (trap, budget overrun) closes this connection only; its
//!   env is discarded and `on_close` is not called on it (GUEST_ABI.md).
//! * Otherwise `on_close` runs exactly once after `on_open` accepted: on
//!   peer close, guest close, `on_recv` < 0, idle timeout, I/O error, stop.
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use super::conn_host::{ConnHost, ConnState};
use super::{EnvPolicy, Shared};
use crate::error::Result;
use crate::guest::GuestEnv;
use crate::pool::Lease;

/// What the server keeps of an open connection: a handle to shut its socket
/// down at stop.
pub(crate) struct ConnEntry {
    stream: may::net::TcpStream,
}

impl ConnEntry {
    pub(super) fn new(stream: may::net::TcpStream) -> ConnEntry {
        ConnEntry { stream }
    }

    /// Ends the connection's reads: the coroutine sees EOF and closes.
    pub(crate) fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Read);
    }

    /// Ends reads and writes: also unblocks a write to a client that does
    /// not read (used once the shutdown grace period is over).
    pub(crate) fn shutdown_both(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Registers the connection and starts its coroutine.
pub(super) fn start(shared: &Arc<Shared>, stream: may::net::TcpStream) {
    let id = shared.next_conn_id();
    let clone = match stream.try_clone() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot clone socket; dropping connection");
            return;
        }
    };
    shared.conns.lock().insert(id, ConnEntry::new(clone));
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    let sh = Arc::clone(shared);
    crate::coro::spawn(move || {
        // Removes the connection from the table however the coroutine ends.
        let _registered = Registered::new(Arc::clone(&sh), id);
        Conn::new(sh, id, stream).run();
    });
}

/// Removes a connection from the server's table when dropped (however its
/// coroutine ends), and counts it closed.
pub(super) struct Registered {
    shared: Arc<Shared>,
    id: i32,
}

impl Registered {
    pub(super) fn new(shared: Arc<Shared>, id: i32) -> Registered {
        Registered { shared, id }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.conns.lock().remove(&self.id);
        self.shared.counters.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Close normally and call on_close.
    Close,
    /// The guest faulted or refused: close without on_close.
    NoOnClose,
}

struct Conn {
    sh: Arc<Shared>,
    id: i32,
    stream: may::net::TcpStream,
    state: Arc<Mutex<ConnState>>,
    lease: Option<Lease>,
}

impl Conn {
    fn new(sh: Arc<Shared>, id: i32, stream: may::net::TcpStream) -> Conn {
        Conn { sh, id, stream, state: Arc::new(Mutex::new(ConnState::default())), lease: None }
    }

    fn run(mut self) {
        let _ = self.stream.set_nodelay(true);
        // A client that sends nothing, or reads nothing, for idle_timeout is
        // gone: without the write timeout one that never reads would hold
        // this coroutine and its env forever.
        let _ = self.stream.set_read_timeout(Some(self.sh.limits.idle_timeout));
        let _ = self.stream.set_write_timeout(Some(self.sh.limits.idle_timeout));
        let end = self.serve();
        if end == End::Close {
            // on_close's own failure changes nothing for the peer.
            let _ = self.callback(|env, id| env.on_close(id).map(|_| 0));
        }
        let _ = self.flush();
        let _ = self.stream.shutdown(Shutdown::Both);
        self.lease = None;
        let st = self.state.lock();
        let c = &self.sh.counters;
        c.output_limit_hits.fetch_add(st.limit_hits, Ordering::Relaxed);
        c.bad_pointers.fetch_add(st.bad_pointers, Ordering::Relaxed);
    }

    fn serve(&mut self) -> End {
        match self.callback(|env, id| env.on_open(id)) {
            Ok(r) if r >= 0 => {}
            Ok(_) => {
                self.sh.counters.refused.fetch_add(1, Ordering::Relaxed);
                return End::NoOnClose;
            }
            Err(_) => return End::NoOnClose,
        }
        if self.flush().is_err() || self.state.lock().closed_by_guest {
            return End::Close;
        }
        let mut buf = ReadBuf::new(self.sh.limits.chunk_size);
        loop {
            let n = match self.stream.read(buf.space()) {
                Ok(0) => return End::Close,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    self.sh.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
                    return End::Close;
                }
                Err(_) => return End::Close,
            };
            self.sh.counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            let data = buf.filled(n);
            let r = match self.callback(|env, id| env.on_recv(id, data)) {
                Ok(r) => r,
                Err(_) => return End::NoOnClose,
            };
            if self.flush().is_err() || r < 0 || self.state.lock().closed_by_guest {
                return End::Close;
            }
        }
    }

    /// Runs one guest callback on this connection's env (acquiring it first
    /// as the policy says). A guest fault discards the env and is counted.
    fn callback(&mut self, f: impl FnOnce(&mut GuestEnv, i32) -> Result<i32>) -> Result<i32> {
        if self.lease.is_none() {
            let mut lease = self.sh.pool.acquire().inspect_err(|e| {
                tracing::warn!(conn = self.id, error = %e, "no env for connection");
            })?;
            let info = crate::abi::ConnInfo { id: self.id, peer: self.stream.peer_addr().ok() };
            lease.set_host(Some(Box::new(crate::abi::WithConn::new(
                ConnHost {
                    conn: self.id,
                    state: Arc::clone(&self.state),
                    output_limit: self.sh.limits.output_limit,
                    epoch: self.sh.epoch,
                },
                info,
            ))));
            self.lease = Some(lease);
        }
        let lease = self.lease.as_mut().expect("acquired above");
        let result = f(lease, self.id);
        if let Err(e) = &result {
            self.sh.counters.count_fault(e);
            tracing::warn!(conn = self.id, error = %e, "guest fault: closing connection");
            // Pool::release sees the poisoned env and destroys it.
            self.lease = None;
        } else if self.sh.policy == EnvPolicy::Message {
            self.lease = None;
        }
        result
    }

    /// Writes what the guest queued.
    fn flush(&mut self) -> std::io::Result<()> {
        let out = std::mem::take(&mut self.state.lock().out);
        if out.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&out)?;
        self.sh.counters.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        // Hand the buffer back to reuse its capacity.
        let mut st = self.state.lock();
        if st.out.is_empty() {
            let mut out = out;
            out.clear();
            st.out = out;
        }
        Ok(())
    }
}

/// A connection's read buffer: starts at 4 KiB and doubles, up to the chunk
/// size, whenever a read fills it, so idle connections cost 4 KiB and bulk
/// transfers still read a whole chunk at a time.
pub(super) struct ReadBuf {
    buf: Vec<u8>,
    max: usize,
}

impl ReadBuf {
    pub(super) fn new(max: usize) -> ReadBuf {
        ReadBuf { buf: vec![0u8; max.min(4096)], max }
    }

    /// Where to read into.
    pub(super) fn space(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The `n` bytes just read; grows the buffer if they filled it.
    pub(super) fn filled(&mut self, n: usize) -> &[u8] {
        if n == self.buf.len() && n < self.max {
            let grown = (n * 2).min(self.max);
            // Keep the data: the caller reads it through the returned slice.
            self.buf.resize(grown, 0);
        }
        &self.buf[..n]
    }
}
