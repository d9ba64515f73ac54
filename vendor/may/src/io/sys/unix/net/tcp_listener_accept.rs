use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::super::{add_socket, co_io_result, IoData};
#[cfg(feature = "io_cancel")]
use crate::coroutine_impl::co_cancel_data;
use crate::coroutine_impl::{is_coroutine, CoroutineImpl, EventSource};
use crate::io::AsIoData;
use crate::net::{TcpListener, TcpStream};
use crate::yield_now::yield_with_io;

pub struct TcpListenerAccept<'a> {
    io_data: &'a IoData,
    socket: &'a std::net::TcpListener,
    pub(crate) is_coroutine: bool,
}

impl<'a> TcpListenerAccept<'a> {
    pub fn new(socket: &'a TcpListener) -> io::Result<Self> {
        Ok(TcpListenerAccept {
            io_data: socket.as_io_data(),
            socket: socket.inner(),
            is_coroutine: is_coroutine(),
        })
    }

    pub fn done(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            co_io_result(self.is_coroutine)?;

            // clear the io_flag
            self.io_data.io_flag.store(0, Ordering::Relaxed);

            // wamr-coro: the socket comes back non-blocking from `accept4`
            // (seventh change): `accept` and then `set_nonblocking` cost one
            // `ioctl(FIONBIO)` per connection more.
            match accept_nonblocking(self.socket) {
                Ok((s, a)) => {
                    return add_socket(&s).map(|io| (TcpStream::from_stream(s, io), a));
                }
                Err(e) => {
                    // raw_os_error is faster than kind
                    let raw_err = e.raw_os_error();
                    if raw_err == Some(libc::EAGAIN) || raw_err == Some(libc::EWOULDBLOCK) {
                        // do nothing here
                    } else {
                        return Err(e);
                    }
                }
            }

            if self.io_data.io_flag.load(Ordering::Relaxed) != 0 {
                continue;
            }

            // the result is still WouldBlock, need to try again
            yield_with_io(self, self.is_coroutine);
        }
    }
}

impl EventSource for TcpListenerAccept<'_> {
    fn subscribe(&mut self, co: CoroutineImpl) {
        #[cfg(feature = "io_cancel")]
        let cancel = co_cancel_data(&co);
        let io_data = self.io_data;
        // if there is no timer we don't need to call add_io_timer
        io_data.co.store(co);

        // there is event happened
        if io_data.io_flag.load(Ordering::Acquire) != 0 {
            #[allow(clippy::needless_return)]
            return io_data.fast_schedule();
        }

        #[cfg(feature = "io_cancel")]
        {
            // register the cancel io data
            cancel.set_io((*io_data).clone());
            // re-check the cancel status
            if cancel.is_canceled() {
                unsafe { cancel.cancel() };
            }
        }
    }
}

// wamr-coro: `accept_nonblocking` is `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`
// where the system has it (seventh change); elsewhere std's `accept` and
// `set_nonblocking`, as upstream does.
cfg_if::cfg_if! {
    if #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos",
        target_os = "solaris"
    ))] {
        pub(crate) fn accept_nonblocking(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
            use std::os::fd::{AsRawFd, FromRawFd};
            // SAFETY: `try_init` hands a zeroed `sockaddr_storage` and its length,
            // which `accept4` fills in (it writes at most `len` bytes); the listener's
            // fd is open for the borrow's life.
            let (fd, addr) = unsafe {
                socket2::SockAddr::try_init(|storage, len| loop {
                    let fd = libc::accept4(
                        listener.as_raw_fd(),
                        storage.cast(),
                        len,
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    );
                    if fd >= 0 {
                        return Ok(fd);
                    }
                    // As std's `accept` does: a signal is no error.
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                })?
            };
            // SAFETY: `fd` is the connected socket `accept4` just returned; nothing
            // else owns it.
            let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
            let addr = addr
                .as_socket()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "accepted a socket with no IP address"))?;
            Ok((stream, addr))
        }
    } else {
        pub(crate) fn accept_nonblocking(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
            let (s, a) = listener.accept()?;
            s.set_nonblocking(true)?;
            Ok((s, a))
        }
    }
}
