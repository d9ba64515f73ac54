//! Admission and hostile clients: per-address limits, the minimum-progress
//! rule against trickling clients, one descriptor per connection.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use wamr_coro::server::{EnvPolicy, Limits, Mode};

/// A client connected from local address `from` (any 127.x.y.z works on
/// loopback).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn modes() -> [Mode; 2] {
    [Mode::Direct, Mode::Queue]
}

#[test]
fn one_address_cannot_take_every_slot() {
    for mode in modes() {
        let limits = Limits { max_connections: 20, max_connections_per_ip: 5, ..test_limits() };
        let server = start(module("echo.wat"), mode, EnvPolicy::Connection, limits);
        let addr = server.local_addr();
        let mut mine: Vec<TcpStream> = (0..5).map(|_| connect_from("127.0.0.1", addr)).collect();
        for s in mine.iter_mut() {
            echo_round(s, b"in");
        }
        // The sixth from the same address is refused...
        let mut sixth = connect_from("127.0.0.1", addr);
        let _ = sixth.write_all(b"x");
        assert!(closed_by_peer(&mut sixth, Duration::from_secs(5)), "{mode:?}: sixth connection served");
        // ...while another address is served.
        let mut other = connect_from("127.0.0.2", addr);
        echo_round(&mut other, b"other address");
        // A slot freed is a slot again.
        drop(mine.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = connect_from("127.0.0.1", addr);
            let _ = again.write_all(b"y");
            again.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 1];
            if matches!(again.read(&mut b), Ok(1)) {
                break;
            }
            assert!(Instant::now() < deadline, "{mode:?}: the freed slot never came back");
        }
        let stats = server.stop();
        assert!(stats.refused >= 1, "{stats}");
    }
}

#[test]
fn a_trickling_client_is_closed_and_a_healthy_one_is_served() {
    for mode in modes() {
        // At least 16 bytes per 600 ms window.
        let limits = Limits { idle_timeout: Duration::from_millis(600), min_recv_bytes: 16, ..test_limits() };
        let server = start(module("echo.wat"), mode, EnvPolicy::Connection, limits);
        let addr = server.local_addr();
        let mut slow = connect(addr);
        let mut healthy = connect(addr);
        // One byte every 100 ms: the idle timeout alone would never fire.
        let mut closed = false;
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(100));
            if slow.write_all(b"z").is_err() {
                closed = true;
                break;
            }
            slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut b = [0u8; 16];
            match slow.read(&mut b) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed = true;
                    break;
                }
                _ => {}
            }
            echo_round(&mut healthy, b"0123456789abcdefghij");
        }
        assert!(closed, "{mode:?}: the trickling client was never closed");
        echo_round(&mut healthy, b"still here, and well above the floor");
        let stats = server.stop();
        assert!(stats.slow_closes >= 1, "{mode:?}: {stats}");
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn one_file_descriptor_per_connection() {
    for mode in modes() {
        let server = start(module("echo.wat"), mode, EnvPolicy::Connection, test_limits());
        let addr = server.local_addr();
        // Warm up (pool, workers), then count.
        echo_round(&mut connect(addr), b"warm");
        std::thread::sleep(Duration::from_millis(100));
        let before = open_fds();
        let mut clients: Vec<TcpStream> = (0..50).map(|_| connect(addr)).collect();
        for c in clients.iter_mut() {
            echo_round(c, b"x");
        }
        let after = open_fds();
        // 50 client sockets in this process, plus the server's side.
        let server_side = after - before - 50;
        assert!(server_side <= 50 + 4, "{mode:?}: {server_side} descriptors for 50 connections");
        drop(clients);
        server.stop();
    }
}
