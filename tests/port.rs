//! The listening port: exclusive unless asked, shared with `--reuse-port`,
//! and a `stop()` that does not depend on dialling its own port.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{connect, read_n, signal, wait_exit, HTTP_RESPONSE};
use wamr_coro::server::{Mode, Server, ServerHandle};
use wamr_coro::Error;

fn http_server(listen: &str, reuse_port: bool) -> wamr_coro::Result<ServerHandle> {
    common::setup();
    Server::builder(wamr_coro::default_guest()?)
        .listen(listen)
        .mode(Mode::Direct)
        .workers(2)
        .limits(common::test_limits())
        .reuse_port(reuse_port)
        .start()
}

fn hello(addr: SocketAddr) {
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_n(&mut s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE);
}

#[test]
fn a_second_exclusive_bind_fails_with_a_clear_error() {
    let first = http_server("127.0.0.1:0", false).unwrap();
    let addr = first.local_addr();
    // Exclusive after exclusive, and shared after exclusive: both refused.
    for reuse in [false, true] {
        match http_server(&addr.to_string(), reuse) {
            Err(Error::AddrInUse { addr: a }) => assert_eq!(a, addr),
            other => panic!("second bind (reuse_port {reuse}) on {addr}: {other:?}"),
        }
    }
    // Shared first, then exclusive: refused too.
    let shared = http_server("127.0.0.1:0", true).unwrap();
    let e = http_server(&shared.local_addr().to_string(), false).unwrap_err();
    assert!(e.to_string().contains("already in use") && e.to_string().contains("--reuse-port"), "{e}");
    // The first server still answers all the traffic.
    hello(addr);
    assert_eq!(first.stop().accepted, 1);

    // The binary: exit non-zero, saying why, within a bounded time.
    let mut child = common::wamr_coro()
        .args(["serve", "--listen", &shared.local_addr().to_string(), "--workers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20), "serve on a busy port did not exit");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("already in use"), "{err}");
    shared.stop();
}

#[test]
fn reuse_port_servers_share_one_port() {
    let a = http_server("127.0.0.1:0", true).unwrap();
    let addr = a.local_addr();
    let b = http_server(&addr.to_string(), true).unwrap();
    assert_eq!(b.local_addr(), addr);
    // The kernel hashes each connection's 4-tuple to one of the two: over
    // 64 connections (fresh source ports) both get some (fails with
    // probability 2^-63 if the spreading works).
    for _ in 0..64 {
        hello(addr);
    }
    let (sa, sb) = (a.stop(), b.stop());
    assert_eq!(sa.accepted + sb.accepted, 64);
    assert!(sa.accepted > 0 && sb.accepted > 0, "{} / {}", sa.accepted, sb.accepted);

    // Two `serve --reuse-port` processes, too.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut children: Vec<_> = (0..2)
        .map(|_| {
            let mut c = common::wamr_coro()
                .args(["serve", "--listen", &listen, "--workers", "1", "--reuse-port"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(c.stdout.take().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), format!("listening on {listen}"));
            c
        })
        .collect();
    hello(listen.parse().unwrap());
    for c in &mut children {
        signal(c, libc::SIGTERM);
        let _ = c.wait();
    }
}

/// `stop()` used to wake its acceptor by dialling its own port; with another
/// socket on the port (SO_REUSEPORT) the dial could land there, and stop()
/// waited out its whole grace + hard deadline (7 s). Each round fails with
/// probability 1/2 that way; four rounds.
#[test]
fn stop_is_prompt_while_another_socket_shares_the_port() {
    for _ in 0..4 {
        let server = http_server("127.0.0.1:0", true).unwrap();
        let addr = server.local_addr();
        hello(addr);
        // Another listener on the port, that never accepts.
        let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        other.set_reuse_address(true).unwrap();
        other.set_reuse_port(true).unwrap();
        other.bind(&addr.into()).unwrap();
        other.listen(16).unwrap();
        let t = Instant::now();
        server.stop();
        let took = t.elapsed();
        // shutdown_grace is 2 s in test_limits; an idle server stops at once.
        assert!(took < Duration::from_millis(1500), "stop took {took:?}");
    }
}

/// The server's end of the connection from `client` to `server`: the socket
/// among this process's descriptors with those two addresses (both, since
/// one ephemeral port can serve connections to different servers).
#[cfg(target_os = "linux")]
fn server_end(client: SocketAddr, server: SocketAddr) -> Option<std::os::fd::RawFd> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // SAFETY: the borrow only serves the two address queries below, which
        // neither close nor change the fd; one closed meanwhile by another test
        // (or not a socket) answers with an error, and is skipped.
        let fd_ref = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd_ref);
        let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
        let local = sock.local_addr().ok().and_then(|a| a.as_socket());
        if peer == Some(client) && local == Some(server) {
            return Some(fd);
        }
    }
    None
}

/// An accepted connection has `TCP_NODELAY` (the listener's, which Linux
/// copies to the sockets it accepts: no `setsockopt` per connection), and
/// may's `accept4` hands it over non-blocking and close-on-exec.
#[test]
#[cfg(target_os = "linux")]
fn an_accepted_connection_has_nodelay_and_is_non_blocking_and_close_on_exec() {
    let server = http_server("127.0.0.1:0", false).unwrap();
    let mut s = connect(server.local_addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_n(&mut s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE);
    let fd = server_end(s.local_addr().unwrap(), server.local_addr()).expect("the server's end of the connection");
    // SAFETY: `fd` is the server's socket of a connection held open by `s`;
    // getsockopt and fcntl(F_GETFL/F_GETFD) only read its options and flags.
    let (nodelay, fl, fdfl) = unsafe {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let r =
            libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&mut v as *mut libc::c_int).cast(), &mut len);
        assert_eq!(r, 0, "getsockopt(TCP_NODELAY): {}", std::io::Error::last_os_error());
        (v, libc::fcntl(fd, libc::F_GETFL), libc::fcntl(fd, libc::F_GETFD))
    };
    assert_ne!(nodelay, 0, "the accepted socket has Nagle's delay");
    assert!(fl >= 0 && fdfl >= 0, "fcntl: {}", std::io::Error::last_os_error());
    assert_ne!(fl & libc::O_NONBLOCK, 0, "the accepted socket blocks");
    assert_ne!(fdfl & libc::FD_CLOEXEC, 0, "the accepted socket is not close-on-exec");
    server.stop();
}
