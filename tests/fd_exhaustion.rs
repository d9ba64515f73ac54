//! Out of file descriptors: the server refuses what it cannot hold, keeps
//! serving the connections it has, and serves new ones once descriptors are
//! free again — in both dispatch modes. The binary runs with a descriptor
//! limit of [`NOFILE`] (soft and hard, so its start-up raise cannot lift it).
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{read_n, signal, spawn_server, wait_exit, HTTP_RESPONSE};

/// The server's descriptor limit: room for its own (runtime, epoll, the
/// listener, the spare, stdio) and a few dozen connections.
const NOFILE: u64 = 64;

/// Clients opened one after another: well past what [`NOFILE`] holds.
const CLIENTS: usize = 120;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// `wamr-coro serve ARGS` with a descriptor limit of [`NOFILE`].
fn with_nofile(args: &[&str]) -> std::process::Command {
    let mut cmd = common::wamr_coro();
    cmd.arg("serve").args(["--listen", "127.0.0.1:0"]).args(args);
    // SAFETY: setrlimit is async-signal-safe and touches only the child
    // being set up between fork and exec; the struct outlives the call.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: NOFILE, rlim_max: NOFILE };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd
}

fn serve_with_nofile(mode: &str) -> (common::ServerChild, SocketAddr, std::io::BufReader<std::process::ChildStdout>) {
    spawn_server(&mut with_nofile(&["--workers", "2", "--mode", mode]))
}

/// What became of one client that sent a request.
enum Outcome {
    /// Answered byte-exact; the connection is open.
    Served(TcpStream),
    /// Closed (end of stream or reset) without an answer.
    Refused,
}

fn try_client(addr: SocketAddr) -> Outcome {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    // A client the server can neither hold nor refuse would wait here
    // until this timeout, and fail the test.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(REQUEST).is_err() {
        return Outcome::Refused;
    }
    let mut got = vec![0u8; HTTP_RESPONSE.len()];
    match s.read_exact(&mut got) {
        Ok(()) => {
            assert_eq!(got, HTTP_RESPONSE, "answer bytes");
            Outcome::Served(s)
        }
        Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => Outcome::Refused,
        Err(e) => panic!("a client was neither served nor refused: {e}"),
    }
}

fn out_of_descriptors(mode: &str) {
    let (mut child, addr, out) = serve_with_nofile(mode);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..CLIENTS {
        match try_client(addr) {
            Outcome::Served(s) => held.push(s),
            Outcome::Refused => refused += 1,
        }
    }
    assert!(held.len() >= 10, "{mode}: only {} of {CLIENTS} served", held.len());
    assert!(refused >= CLIENTS - NOFILE as usize, "{mode}: {refused} refused, {} served", held.len());
    // Every connection it holds is still served, byte-exact.
    for (i, s) in held.iter_mut().enumerate() {
        s.write_all(REQUEST).unwrap();
        assert_eq!(read_n(s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE, "{mode}: held connection {i}");
    }
    // Descriptors freed: new connections are served again (the server
    // notices the closes asynchronously, so a few tries may still be
    // refused).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = Vec::new();
    while again.len() < 5 {
        assert!(Instant::now() < deadline, "{mode}: new connections not served after descriptors were freed");
        match try_client(addr) {
            Outcome::Served(s) => again.push(s),
            Outcome::Refused => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    drop(again);
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(20), "server did not exit after SIGTERM");
    let rest: Vec<String> = std::io::BufRead::lines(out).map_while(Result::ok).collect();
    let stats = rest.join("\n");
    assert_eq!(status.code(), Some(0), "{mode}: {stats}");
    assert!(stats.contains("envs: 0 live"), "{mode}: {stats}");
}

#[test]
fn direct_mode_out_of_descriptors_refuses_new_clients_and_serves_the_rest() {
    out_of_descriptors("direct");
}

#[test]
fn queue_mode_out_of_descriptors_refuses_new_clients_and_serves_the_rest() {
    out_of_descriptors("queue");
}

/// Runs `serve ARGS` under [`NOFILE`], which must refuse to start: its exit
/// code and what it wrote to stderr.
fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let (status, _, err) = common::run_to_exit(
        &mut with_nofile(args),
        Duration::from_secs(20),
        "serve started with a worker count it cannot hold",
    );
    (status.code(), err)
}

#[test]
fn a_worker_count_past_the_descriptor_limit_is_a_clear_error_not_a_panic() {
    // Each may worker opens an epoll and an eventfd when the scheduler
    // starts, and may panics if it cannot: 40 workers need 80 of the 64.
    let (code, err) = refused_start(&["--workers", "40"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("40 workers need 96 file descriptors") && err.contains("RLIMIT_NOFILE allows 64"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, err) = refused_start(&["--workers", "100000"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("workers must be at most 1024"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
