//! Binding the listening socket: exclusive by default, shared on request.
//!
//! `may::net::TcpListener::bind` always sets `SO_REUSEPORT`, so a second
//! server on a busy port would start "successfully" and silently take half
//! of the traffic. Here the socket is made with `socket2`: `SO_REUSEADDR`
//! always (a restart does not wait for TIME_WAIT), `SO_REUSEPORT` only when
//! asked (several processes serving one port, the kernel spreading
//! connections between them). The bound socket is handed to `may` through
//! its raw fd.
//!
//! `TCP_NODELAY` is set here too, once: on Linux a socket `accept` returns
//! inherits it from the listener, so the connections have it without a
//! `setsockopt` each ([`NODELAY_INHERITED`]; `tests/port.rs` checks the
//! kernel does this).
//!
//! [`Bound::waker`] is a second descriptor of the same socket: shutting its
//! read side down (`shutdown(SHUT_RD)`) makes a blocked `accept` return on
//! Linux, which is how `stop()` wakes the acceptor without dialling its own
//! port (with `SO_REUSEPORT` such a dial may land on another process).
use std::net::{Shutdown, SocketAddr};
use std::os::fd::IntoRawFd;

use socket2::{Domain, Socket, Type};

use crate::error::{Error, Result};

/// Connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Whether accepted sockets inherit the listener's `TCP_NODELAY` (Linux:
/// the accepted socket is a clone of the listener's). Where they do not
/// (or it is not known), each connection sets it itself
/// ([`super::socket::Registration::new`]).
pub(crate) const NODELAY_INHERITED: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// A listening socket handed to `may`, and a way to wake its acceptor.
pub(crate) struct Bound {
    /// The listener, registered with `may`'s event loop.
    pub listener: may::net::TcpListener,
    /// The address it listens on (the real port when 0 was asked).
    pub local_addr: SocketAddr,
    /// A duplicate descriptor of the same socket; see [`wake_acceptor`].
    pub waker: Socket,
}

/// Binds `addr` and listens. `reuse_port` sets `SO_REUSEPORT`; without it a
/// port some other socket listens on is an error that says so.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> Result<Bound> {
    let io = |what: &str, e| Error::io(format!("{what} {addr}"), e);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(|e| io("socket for", e))?;
    socket.set_reuse_address(true).map_err(|e| io("SO_REUSEADDR on", e))?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(|e| io("SO_REUSEPORT on", e))?;
    }
    // Answers go out as the guest sends them: no Nagle delay. Set before
    // `listen` so that every accepted socket inherits it.
    socket.set_nodelay(true).map_err(|e| io("TCP_NODELAY on", e))?;
    socket.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::AddrInUse { addr }
        } else {
            io("binding", e)
        }
    })?;
    socket.listen(BACKLOG).map_err(|e| io("listening on", e))?;
    let local_addr = socket.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| {
        io("reading the local address of the socket bound to", std::io::Error::other("not an IP socket"))
    })?;
    let waker = socket.try_clone().map_err(|e| io("duplicating the socket of", e))?;
    let fd = socket.into_raw_fd();
    // `from_raw_fd` panics if may cannot register the socket with its event
    // loop (epoll_ctl failing: ENOMEM, or fs.epoll.max_user_watches); turn
    // that into an error. The fd is owned by the std listener inside, which
    // the unwind drops (closing it).
    let listener = std::panic::catch_unwind(|| {
        // SAFETY: `fd` is a listening TCP socket this function just created
        // and released with `into_raw_fd`; ownership passes to the listener.
        unsafe { <may::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    })
    .map_err(|_| {
        io(
            "registering with may's event loop the listener on",
            std::io::Error::other("epoll_ctl failed (ENOMEM or fs.epoll.max_user_watches)"),
        )
    })?;
    Ok(Bound { listener, local_addr, waker })
}

/// Makes the acceptor's blocked `accept` return (with an error), so that it
/// sees the stop flag. The socket stops listening: connections not yet
/// accepted are reset.
pub(crate) fn wake_acceptor(waker: &Socket) {
    if let Err(e) = waker.shutdown(Shutdown::Read) {
        tracing::warn!(error = %e, "shutting the listening socket down");
    }
}
