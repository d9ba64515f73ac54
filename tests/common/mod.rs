//! Shared test helpers: guests, servers on 127.0.0.1:0, clients with bounded
//! waits.
#![allow(dead_code)]
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use wamr_coro::server::{EnvPolicy, Limits, Mode, Server, ServerHandle};
use wamr_coro::{HostFunc, Module, Runtime, RuntimeConfig, ValType};

pub fn guest_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guests").join(name)
}

pub fn guest_text(name: &str) -> String {
    std::fs::read_to_string(guest_path(name)).expect("guest source")
}

/// Tests that count hook calls hold this, since the counters are global.
pub static HOOKS: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// `on_close` calls seen through the `test_hooks.closed` import.
pub static CLOSED: AtomicUsize = AtomicUsize::new(0);
/// `on_open` calls seen through the `test_hooks.opened` import.
pub static OPENED: AtomicUsize = AtomicUsize::new(0);

/// Initialises the runtime once per test binary and registers test hooks.
pub fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let rt = Runtime::init(RuntimeConfig::default()).unwrap();
        wamr_coro::coro::configure(2, 256 * 1024).unwrap();
        rt.register(HostFunc::new("test_hooks", "closed", &[ValType::I32], &[], |_, _| {
            CLOSED.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        }))
        .unwrap();
        rt.register(HostFunc::new("test_hooks", "opened", &[ValType::I32], &[], |_, _| {
            OPENED.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        }))
        .unwrap();
    });
}

pub fn module(name: &str) -> Module {
    setup();
    Module::from_file(guest_path(name)).unwrap()
}

/// Test limits: short budget and grace so faults resolve quickly.
pub fn test_limits() -> Limits {
    Limits {
        call_budget: Some(Duration::from_millis(200)),
        shutdown_grace: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
        ..Limits::default()
    }
}

pub fn start(module: Module, mode: Mode, policy: EnvPolicy, limits: Limits) -> ServerHandle {
    Server::builder(module)
        .listen("127.0.0.1:0")
        .mode(mode)
        .policy(policy)
        .workers(2)
        .limits(limits)
        .start()
        .unwrap()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `n` bytes (bounded by the socket's read timeout).
pub fn read_n(s: &mut TcpStream, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// True if the peer closed: read returns 0 (or reset) within the timeout.
pub fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Sends `msg` and expects it back byte-exact.
pub fn echo_round(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let got = read_n(s, msg.len()).unwrap();
    assert!(got == msg, "echo mismatch for {} bytes", msg.len());
}

pub const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nHello from wamr-coro\n";

/// Directory with the guests compiled by `guests/build.sh` (built once per
/// test binary, from source).
pub fn built_guests_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guests");
            let status = std::process::Command::new("bash")
                .arg(guest_path("build.sh"))
                .arg(&out)
                .status()
                .expect("running guests/build.sh");
            assert!(status.success(), "guests/build.sh failed: install clang, lld and the wasm32-unknown-unknown target");
            out
        })
        .clone()
}

/// A compiled guest (`c/echo.c` → `built_guest("echo")`).
pub fn built_guest(name: &str) -> Module {
    setup();
    Module::from_file(built_guests_dir().join(format!("{name}.wasm"))).unwrap()
}

/// Whether the Rust guest is part of this run (.ci/run sets SKIP_RUST_GUEST=1
/// only when the wasm32 target could not be installed, and says so).
pub fn rust_guest_enabled() -> bool {
    std::env::var("SKIP_RUST_GUEST").as_deref() != Ok("1")
}

/// Guests by name: "x.wat" from guests/, "c:x" and "rust:x" compiled.
pub fn any_guest(name: &str) -> Module {
    if let Some(n) = name.strip_prefix("c:") {
        built_guest(n)
    } else if let Some(n) = name.strip_prefix("rust:") {
        built_guest(n)
    } else {
        module(name)
    }
}

/// A `tracing` writer that keeps what it is given (for tests that read logs).
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
