//! One connection in direct mode: a coroutine that reads the socket, calls
//! the guest on its private env, and writes back what the guest sent.
//!
//! ```text
//! accept → on_open → loop { read ≤ chunk → on_recv → flush } → on_close
//! ```
//! * The env is held for the connection's life ([`EnvPolicy::Connection`])
//!   or leased per callback ([`EnvPolicy::Message`]).
//! * A guest fault (trap, budget overrun) closes this connection only; its
//!   env is discarded and `on_close` is not called on it (docs/guest-abi.md).
//! * Otherwise `on_close` runs exactly once after `on_open` accepted: on
//!   peer close, guest close, `on_recv` < 0, idle timeout, I/O error, stop,
//!   or (policy message) a message that finds no env.
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use super::conn_host::{ConnHost, ConnState};
use super::socket::{self, Reader, Registration, WriteEnd};
use super::{EnvPolicy, Shared};
use crate::error::Result;
use crate::guest::GuestEnv;
use crate::pool::{EnvPool, Lease};

/// Starts the coroutine of a connection admitted from `peer`.
pub(super) fn start(shared: &Arc<Shared>, pool: &Arc<EnvPool>, stream: may::net::TcpStream, peer: SocketAddr) {
    let registration = Registration::new(shared, peer.ip(), &stream);
    let id = registration.id();
    let conn = DirectConn::new(Arc::clone(shared), Arc::clone(pool), id, peer, registration, stream);
    crate::coro::spawn(move || conn.run());
}

/// The most output buffer capacity a connection keeps between answers. A
/// larger buffer is freed once written: before, every connection kept the
/// capacity of the largest answer it ever had (up to the output limit, 1 MiB
/// by default), so clients that each asked for one large answer and then
/// held their connections open idle cost that much apiece.
const KEEP_OUT_CAPACITY: usize = 64 * 1024;

/// Why a guest callback did not run to completion.
#[derive(Debug)]
enum CallError {
    /// No env could be had (the pool closed, `max_envs`, the guest-memory
    /// budget): the guest was not called.
    NoEnv,
    /// The guest faulted (its env is discarded).
    Fault,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Close normally and call on_close.
    Close,
    /// The guest faulted or refused: close without on_close.
    NoOnClose,
}

struct DirectConn {
    // Field order matters: the registration goes (and with it the table's
    // view of the fd) before the socket closes.
    registration: Registration,
    sh: Arc<Shared>,
    /// The guest's pool this connection was started on (kept across a
    /// reload, see `generation.rs`).
    pool: Arc<EnvPool>,
    id: i32,
    /// The client's address, as accepted (for the guest's host functions:
    /// asking the socket would cost a system call per env lease).
    peer: SocketAddr,
    stream: may::net::TcpStream,
    state: Arc<Mutex<ConnState>>,
    lease: Option<Lease>,
    /// A write failed or was cut off (see [`DirectConn::flush`]).
    write_failed: bool,
    /// The server, not the client, ended the connection, while the client
    /// may still be sending: it closes with a lingering close.
    server_closed: bool,
}

impl DirectConn {
    fn new(
        sh: Arc<Shared>,
        pool: Arc<EnvPool>,
        id: i32,
        peer: SocketAddr,
        registration: Registration,
        stream: may::net::TcpStream,
    ) -> DirectConn {
        DirectConn {
            registration,
            sh,
            pool,
            id,
            peer,
            stream,
            state: Arc::new(Mutex::new(ConnState::default())),
            lease: None,
            write_failed: false,
            server_closed: false,
        }
    }

    fn run(mut self) {
        // A client that sends nothing, or reads nothing, for idle_timeout is
        // gone: without the write timeout one that never reads would hold
        // this coroutine and its env forever.
        // Idle reads are ended by the server's sweep (socket.rs); a write to
        // a client that takes nothing times out on its own, and one to a
        // client that takes too little per window is cut off by
        // `min_send_bytes` (socket::write_all).
        let _ = self.stream.set_write_timeout(Some(self.sh.limits.idle_timeout));
        let end = self.serve();
        if end == End::Close {
            // With policy message the connection holds no env here: one is
            // waited for, since on_close is owed (GUEST_ABI).
            self.wait_for_env();
            // on_close's own failure changes nothing for the peer.
            let _ = self.callback(|env, id| env.on_close(id).map(|_| 0));
        }
        let _ = self.flush();
        self.lease = None;
        if self.server_closed && !self.write_failed && !self.sh.limits.linger.is_zero() {
            // Input the client sent after what the guest read would make
            // the close a reset that drops the end of the answer: the
            // output ends first and the input is drained (socket::linger),
            // the env back in the pool meanwhile.
            socket::Linger::of(&self.sh).end_stream_output(&self.stream, self.registration.activity());
            socket::linger(&self.sh, &mut self.stream);
        }
        // Then the registration and the socket go, in field order. No
        // `shutdown` before the close of a connection the client ended:
        // nothing else holds this socket (the idle sweeper's and the stop's
        // shutdowns run under the table's lock, which the registration
        // leaves first), so `close` alone sends the FIN, one system call
        // fewer per connection.
    }

    fn serve(&mut self) -> End {
        match self.callback(|env, id| env.on_open(id)) {
            Ok(r) if r >= 0 => {}
            Ok(_) => {
                self.sh.counters.refused.fetch_add(1, Ordering::Relaxed);
                return self.server_ends(End::NoOnClose);
            }
            Err(_) => return self.server_ends(End::NoOnClose),
        }
        if self.flush().is_err() || self.state.lock().closed_by_guest {
            return self.server_ends(End::Close);
        }
        let mut reader = Reader::new(&self.sh);
        loop {
            // With the env held for the connection, bytes are read straight
            // into its receive buffer: one copy and one host buffer fewer.
            let in_place = match self.lease.as_mut().filter(|_| self.sh.policy == EnvPolicy::Connection) {
                Some(lease) => {
                    let (sh, stream, activity) = (&self.sh, &mut self.stream, self.registration.activity());
                    lease.recv_into(self.id, |space| reader.next_into(sh, stream, activity, space))
                }
                None => None,
            };
            let result = match in_place {
                Some(Ok((n, at))) => self.callback_from(Some(at), |env, id| env.on_recv_in_place(id, n)),
                Some(Err(_)) => return End::Close,
                None => {
                    let Ok((data, at)) = reader.next(&self.sh, &mut self.stream, self.registration.activity()) else {
                        return End::Close;
                    };
                    self.callback_from(Some(at), |env, id| env.on_recv(id, data))
                }
            };
            let r = match result {
                Ok(r) => r,
                // Policy message: no env for this message. The guest saw the
                // connection open, so it is closed with on_close.
                Err(CallError::NoEnv) => return self.server_ends(End::Close),
                Err(CallError::Fault) => return self.server_ends(End::NoOnClose),
            };
            if self.flush().is_err() || r < 0 || self.state.lock().closed_by_guest {
                // (A failed write skips the lingering close anyway.)
                return self.server_ends(End::Close);
            }
        }
    }

    /// `end`, for an end the server chose while the client may still be
    /// sending (the guest closed, refused or faulted, or no env could be
    /// had): the connection closes with a lingering close.
    fn server_ends(&mut self, end: End) -> End {
        self.server_closed = true;
        end
    }

    /// Runs one guest callback on this connection's env (acquiring it first
    /// as the policy says). A guest fault discards the env and is counted.
    fn callback(&mut self, f: impl FnOnce(&mut GuestEnv, i32) -> Result<i32>) -> Result<i32, CallError> {
        self.callback_from(None, f)
    }

    /// [`DirectConn::callback`], timed from `read_at` (the stamp of the
    /// chunk it handles: one clock read fewer per request) unless an env
    /// has to be acquired first.
    fn callback_from(
        &mut self,
        mut read_at: Option<std::time::Instant>,
        f: impl FnOnce(&mut GuestEnv, i32) -> Result<i32>,
    ) -> Result<i32, CallError> {
        if self.lease.is_none() {
            read_at = None;
            let lease = self.pool.acquire().inspect_err(|e| {
                if let Some(suppressed) = self.sh.log_limits.no_env.allow() {
                    tracing::warn!(conn = self.id, error = %e, suppressed, "no env for connection");
                }
            });
            self.hold(lease.map_err(|_| CallError::NoEnv)?);
        }
        let lease = self.lease.as_mut().expect("acquired above");
        let started = read_at.unwrap_or_else(std::time::Instant::now);
        let result = f(lease, self.id);
        self.sh.metrics.call_seconds.observe(started.elapsed());
        if let Err(e) = &result {
            self.sh.counters.count_fault(e);
            if let Some(suppressed) = self.sh.log_limits.guest_fault.allow() {
                tracing::warn!(conn = self.id, error = %e, suppressed, "guest fault: closing connection");
            }
            // Pool::release sees the poisoned env and destroys it.
            self.lease = None;
        } else if self.sh.policy == EnvPolicy::Message {
            self.lease = None;
        }
        result.map_err(|_| CallError::Fault)
    }

    /// Makes `lease` this connection's env, its host pointing here.
    fn hold(&mut self, mut lease: Lease) {
        lease.set_host(Some(Box::new(ConnHost {
            conn: self.id,
            peer: Some(self.peer),
            state: Arc::clone(&self.state),
            sh: Arc::clone(&self.sh),
        })));
        self.lease = Some(lease);
    }

    /// Policy message, before `on_close`: waits for an env when none can be
    /// had now (every one busy in other connections' calls, and no room for
    /// another), since the guest is owed the `on_close`. Each call is
    /// bounded by the call budget, and at shutdown calls past the grace
    /// period are terminated, so one is normally free soon. Gives up (the
    /// `on_close` is then lost, and logged) when the pool closes or after
    /// `idle_timeout`.
    fn wait_for_env(&mut self) {
        if self.lease.is_some() {
            return;
        }
        let deadline = std::time::Instant::now() + self.sh.limits.idle_timeout;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match self.pool.acquire() {
                Ok(lease) => return self.hold(lease),
                Err(e) if matches!(e, crate::Error::PoolClosed) || std::time::Instant::now() >= deadline => {
                    tracing::warn!(conn = self.id, error = %e, "no env for on_close: the guest does not see this connection close");
                    return;
                }
                Err(_) => {
                    may::coroutine::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
            }
        }
    }

    /// Writes what the guest queued, under the minimum-progress rule for
    /// output ([`socket::write_all`]). After a failed write, nothing more is
    /// written (what `on_close` sends is dropped): the client is not taking
    /// it, and trying again would hold the connection for another timeout.
    fn flush(&mut self) -> Result<(), WriteEnd> {
        let out = std::mem::take(&mut self.state.lock().out);
        if out.is_empty() {
            return Ok(());
        }
        if self.write_failed {
            return Err(WriteEnd::Failed);
        }
        socket::write_all(&self.sh, &mut self.stream, &out, self.registration.activity())
            .inspect_err(|_| self.write_failed = true)?;
        self.sh.counters.bytes_out.add(out.len() as u64);
        self.registration.activity().touch();
        // Hand the buffer back to reuse its capacity, unless it is large:
        // an idle connection would keep the capacity of its largest answer
        // (up to the output limit) for as long as it stays open.
        let mut st = self.state.lock();
        if st.out.is_empty() && out.capacity() <= KEEP_OUT_CAPACITY {
            let mut out = out;
            out.clear();
            st.out = out;
        }
        Ok(())
    }
}
