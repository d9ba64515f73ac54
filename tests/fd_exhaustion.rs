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
    with_limit(NOFILE, args)
}

/// `wamr-coro serve ARGS` with a descriptor limit of `nofile`.
fn with_limit(nofile: u64, args: &[&str]) -> std::process::Command {
    let mut cmd = common::wamr_coro();
    cmd.arg("serve").args(["--listen", "127.0.0.1:0"]).args(args);
    // SAFETY: setrlimit is async-signal-safe and touches only the child
    // being set up between fork and exec; the struct outlives the call.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
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

/// Sets `child`'s soft descriptor limit (its hard limit stays, so this
/// needs no privilege).
fn set_soft_limit(child: &std::process::Child, soft: u64, hard: u64) {
    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: prlimit reads `lim` and, with a null old-limit pointer, writes
    // nothing; the pid is our live child's.
    let rc = unsafe { libc::prlimit(child.id() as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A limit changed while the server runs (by an embedder after starting it,
/// or an operator's `prlimit`) is honoured both ways. Lowered, the
/// descriptors kept back for `/metrics` are kept under the new limit; raised,
/// clients get the room at once. Before, the limit was read once at start:
/// lowered, the flood took every descriptor and the scrape timed out;
/// raised, every client past the old ceiling was refused for good.
///
/// The test itself holds about 150 sockets at once: it needs a descriptor
/// limit of its own above that (the usual 1,024 is plenty).
#[test]
fn a_descriptor_limit_changed_while_serving_is_honoured() {
    const HARD: u64 = 256;
    let maddr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let metrics = maddr.to_string();
    let (mut child, addr, _out) =
        spawn_server(&mut with_limit(HARD, &["--workers", "2", "--metrics-listen", &metrics]));
    // One client served: the listener has read the limit of 256.
    let Outcome::Served(first) = try_client(addr) else { panic!("the first client was refused") };
    let mut held = vec![first];
    set_soft_limit(&child, NOFILE, HARD);
    // The server reads the limit again at most a second after the last time.
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..CLIENTS {
        if let Outcome::Served(s) = try_client(addr) {
            held.push(s);
        }
    }
    // Three scrapers that send nothing hold descriptors; a scrape still
    // works, and counts the clients refused under the lowered limit.
    let silent: Vec<_> = (0..3).map(|_| common::connect(maddr)).collect();
    let m = common::http_get_raw(maddr, "/metrics");
    let refused =
        wamr_coro::internals::bench::soak::parse_metrics(&m).get("wamr_coro_connections_refused_total").copied();
    assert!(m.starts_with("HTTP/1.1 200") && refused.is_some(), "{m}");
    let expected = (CLIENTS + 1 - held.len()) as f64;
    assert!(refused >= Some(expected), "{refused:?} refusals counted, {expected} clients refused");
    drop(silent);
    // Raised back: room at once for a hundred more.
    set_soft_limit(&child, HARD, HARD);
    let before = held.len();
    for i in 0..100 {
        match try_client(addr) {
            Outcome::Served(s) => held.push(s),
            Outcome::Refused => panic!("client {i} after the raise was refused ({before} were held before it)"),
        }
    }
    drop(held);
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(20), "server did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
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
