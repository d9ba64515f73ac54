//! Shared test helpers: guests, servers on 127.0.0.1:0, clients with bounded
//! waits.
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wamr_coro::server::{EnvPolicy, Limits, Mode, Server, ServerBuilder, ServerHandle};
use wamr_coro::{HostFunc, Module, Runtime, RuntimeConfig, ValType};

pub fn guest_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guests").join(name)
}

/// Writes `wat` to a file named `name` in a fresh directory of its own
/// (`tag` and the process id keep tests apart); returns the directory, for
/// the caller to remove, and the file.
pub fn guest_file(tag: &str, name: &str, wat: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("wamr-coro-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, wat).unwrap();
    (dir, file)
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
/// Also sends the binary's logs to a file ([`log_to_file`]).
pub fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log_to_file();
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

/// Where [`log_to_file`] writes: `target/tmp/test-logs/`.
pub fn test_log_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-logs")
}

/// Makes a subscriber that writes to `target/tmp/test-logs/NAME-HASH.log`
/// (the test binary's file name; emptied when the binary starts) the process's default, so that what the
/// servers under test logged is there to read when a test fails:
/// `scripts/with_backtrace.sh`, which CI runs the suite under, prints the
/// end of the last test binary's log when the suite fails. libtest's
/// output capture cannot do this: the servers log from their worker
/// threads, which belong to no test. `WAMR_CORO_TEST_LOG` sets the filter
/// (`EnvFilter` syntax; `info,may=warn` when unset, `off` for none). A test that
/// reads logs installs its own subscriber for its thread
/// (`tracing::subscriber::with_default`), which takes precedence there.
fn log_to_file() {
    if tracing::dispatcher::has_been_set() {
        return; // a test binary that reads the logs itself (guest_log.rs)
    }
    // may logs every socket it registers at info: warnings only from it.
    let filter = std::env::var("WAMR_CORO_TEST_LOG").unwrap_or_else(|_| "info,may=warn".into());
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "test".into());
    let dir = test_log_dir();
    let file = std::fs::create_dir_all(&dir).and_then(|_| std::fs::File::create(dir.join(format!("{binary}.log"))));
    let file = match file {
        Ok(f) => f,
        Err(e) => return eprintln!("test logs: cannot create {}: {e}", dir.display()),
    };
    // `try_init` also routes the `log` crate's records here (may logs
    // through it). It fails only if another subscriber became the default
    // meanwhile: that one is kept.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_thread_names(true)
        .try_init();
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

/// The test server's builder: 127.0.0.1:0, two workers.
pub fn builder(module: Module, mode: Mode, policy: EnvPolicy, limits: Limits) -> ServerBuilder {
    Server::builder(module).listen("127.0.0.1:0").mode(mode).policy(policy).workers(2).limits(limits)
}

pub fn start(module: Module, mode: Mode, policy: EnvPolicy, limits: Limits) -> ServerHandle {
    builder(module, mode, policy, limits).start().unwrap()
}

/// `start`, plus the metrics endpoint on its own 127.0.0.1:0.
pub fn start_with_metrics(module: Module, mode: Mode, policy: EnvPolicy, limits: Limits) -> ServerHandle {
    builder(module, mode, policy, limits).metrics_listen("127.0.0.1:0").start().unwrap()
}

/// The raw answer to `GET path` on a fresh connection (5 s timeouts).
pub fn http_get_raw(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One write: `write!` would send the pieces apart and wait on Nagle.
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
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

/// Sends `req` on a new connection; true if the server closes it within `within`.
pub fn closed_after(addr: SocketAddr, req: &[u8], within: Duration) -> bool {
    let mut s = connect(addr);
    s.write_all(req).unwrap();
    closed_by_peer(&mut s, within)
}

/// faulty.wat's faults on fresh connections: 'T' traps, 'S' spins, 'B' gets -2 (that connection is returned).
pub fn trap_spin_bad_pointer(addr: SocketAddr) -> TcpStream {
    // A trap closes its connection (direct: only that one).
    assert!(closed_after(addr, b"T", Duration::from_secs(5)), "trap did not close its connection");
    // After a queue-mode restart, new connections are served.
    echo_round(&mut connect(addr), b"after the trap");
    // A spinning guest is stopped by the time budget and closed (AOT code
    // checks WAMR's suspend flags in loops: compiled with the thread manager
    // on). How fast is measured by `cargo bench --bench core -- budget`.
    assert!(closed_after(addr, b"S", Duration::from_secs(10)), "spinner was not stopped");
    // A bad pointer gets -2 and the connection stays open.
    let mut b = connect(addr);
    b.write_all(b"B").unwrap();
    assert_eq!(read_n(&mut b, 4).unwrap(), (-2i32).to_le_bytes());
    b
}

/// Writes `data` on `s` while another thread reads it back; true if byte-exact.
pub fn echo_full_duplex(mut s: TcpStream, data: Vec<u8>) -> std::io::Result<bool> {
    let mut r = s.try_clone().unwrap();
    let expect = data.clone();
    let reader = std::thread::spawn(move || read_n(&mut r, expect.len()).map(|got| got == expect));
    s.write_all(&data).unwrap();
    reader.join().unwrap()
}

/// HTTP on `s`: three keep-alive requests, five pipelined in one write, one split byte by byte.
pub fn http_keepalive_pipelined_split(s: &mut TcpStream, what: &str) {
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..3 {
        s.write_all(req).unwrap();
        assert_eq!(read_n(s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE, "{what}");
    }
    s.write_all(&req.repeat(5)).unwrap();
    assert_eq!(read_n(s, HTTP_RESPONSE.len() * 5).unwrap(), HTTP_RESPONSE.repeat(5), "{what}");
    // Including the CRLF CRLF.
    for b in req.iter() {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(read_n(s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE, "{what}");
}

/// Echo clients beside faults, each echoing numbered messages until stopped (30 s at most).
pub struct Echoers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

/// Starts `count` echo clients; with `reconnect` (queue mode) a broken one reopens, 10 times at most; a wrong byte fails.
pub fn echoers(addr: SocketAddr, count: usize, reconnect: bool) -> Echoers {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..count)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let (mut n, mut reconnects) = (0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let msg = format!("healthy {i} message {n}");
                    let sent = s.write_all(msg.as_bytes());
                    match sent.and_then(|_| read_n(&mut s, msg.len())) {
                        Ok(got) => assert_eq!(got, msg.as_bytes(), "corrupted echo"),
                        Err(e) if reconnect => {
                            assert!(reconnects < 10, "too many reconnects: {e}");
                            reconnects += 1;
                            s = connect(addr);
                            continue;
                        }
                        Err(e) => panic!("healthy connection {i} broke: {e}"),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    Echoers { stop, threads }
}

impl Echoers {
    /// Stops the clients; each one's round count (panics if one failed).
    pub fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|h| h.join().expect("a healthy connection lost data")).collect()
    }
}

/// Polls `child` until it exits; panics with `what` after `within`.
pub fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to its end, within `within` (else the test fails with
/// `what`, and the child is killed): its exit status, stdout and stderr.
/// Both pipes are read while it runs, so a chatty child cannot block.
pub fn run_to_exit(cmd: &mut Command, within: Duration, what: &str) -> (ExitStatus, String, String) {
    let mut child = ServerChild(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_exit(&mut child, within, what);
    (status, out.join().unwrap(), err.join().unwrap())
}

/// A client connected from local address `from` (any 127.x.y.z works on
/// loopback), with the tests' usual timeouts.
pub fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The tests' compile cache (`serve` compiles guests by default): under
/// cargo's target directory, never the user's `$HOME/.cache/wamr-coro/aot`.
pub fn test_cache_home() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache")
}

/// The `wamr-coro` binary, with its default compile cache in [`test_cache_home`].
pub fn wamr_coro() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wamr-coro"));
    cmd.env("XDG_CACHE_HOME", test_cache_home());
    cmd
}

/// A server's child process, killed and reaped when dropped, so that a
/// failing test leaves no server behind.
pub struct ServerChild(pub Child);

impl std::ops::Deref for ServerChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServerChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` (a server printing "listening on ADDR" first, perhaps
/// through a shell that execs it) and waits for that line. Its default
/// compile cache is [`test_cache_home`].
pub fn spawn_server(cmd: &mut Command) -> (ServerChild, SocketAddr, BufReader<ChildStdout>) {
    cmd.env("XDG_CACHE_HOME", test_cache_home());
    let mut child = ServerChild(cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).parse().unwrap();
    (child, addr, out)
}

/// Sends `sig` to our own child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Echoes each message after a few hundred microseconds of work.
pub const SLOW_ECHO_WAT: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global (export "__heap_base") i32 (i32.const 131072))
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (local $i i32)
    (loop $spin (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 20000))))
    (call $send (local.get $c) (local.get $p) (local.get $n))))"#;

/// A queue guest with its own `run` loop: DATA 'S' spins, else `per_event` (WAT on `$c`, `$n`, `$i`) runs, then the echo.
pub fn run_loop_wat(per_event: &str) -> String {
    format!(
        r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global (export "__heap_base") i32 (i32.const 196608))
  (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "run") (result i32)
    (local $n i32) (local $c i32) (local $i i32)
    (loop $next
      (local.set $n (call $wait (i32.const 65536) (i32.const 65536) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then
          (local.set $c (i32.load8_u (i32.const 65536)))
          (if (i32.eq (local.get $c) (i32.const 83)) (then (loop $spin (br $spin))))
          {per_event}
          (drop (call $send (i32.load (i32.const 1024)) (i32.const 65536) (local.get $n)))))
      (br $next))
    (i32.const 0)))"#
    )
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
            assert!(
                status.success(),
                "guests/build.sh failed: install clang, lld and the wasm32-unknown-unknown target"
            );
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

/// A start function that reads the module's data: it sets a mutable global
/// from it, and writes 42 minus a data byte (0) where the initial memory is
/// otherwise zero. Answers the global, that byte and the stack pointer
/// (4 bytes).
pub const START_READS_DATA_WAT: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global $g (mut i32) (i32.const 0))
  (global (export "__data_end") i32 (i32.const 4096))
  (global (export "__heap_base") i32 (i32.const 196608))
  (data (i32.const 256) "\2a")
  (func $init
    (global.set $g (i32.load8_u (i32.const 256)))
    (i32.store8 (i32.const 8192) (i32.sub (i32.const 42) (i32.load8_u (i32.const 256)))))
  (start $init)
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (i32.store8 (i32.const 512) (global.get $g))
    (i32.store8 (i32.const 513) (i32.load8_u (i32.const 8192)))
    (i32.store (i32.const 514) (global.get $__stack_pointer))
    (drop (call $send (local.get $c) (i32.const 512) (i32.const 6)))
    (i32.const 0)))"#;

/// 20 connections at once (more than one spawn shard of 16: a second
/// parent), then 5 more (reused, reset envs): each answers as a fresh
/// instance does, and a spawned env keeps the stack pointer WAMR gave its
/// own slot of the shadow stack (below the module's initial 65536).
pub fn starts_like_a_fresh_instance(server: &ServerHandle, source: wamr_coro::EnvSource) {
    let check = |a: Vec<u8>, what: &str| {
        assert_eq!(a[..2], [42, 0], "{source:?}, {what}");
        let sp = u32::from_le_bytes(a[2..6].try_into().unwrap());
        match source {
            wamr_coro::EnvSource::Instance => assert_eq!(sp, 65536, "{what}"),
            wamr_coro::EnvSource::Spawn => assert!(sp < 65536 && sp > 4096, "{what}: stack pointer {sp}"),
        }
    };
    let mut open = Vec::new();
    for i in 0..20 {
        let mut s = connect(server.local_addr());
        s.write_all(b"x").unwrap();
        check(read_n(&mut s, 6).unwrap(), &format!("connection {i}"));
        open.push(s);
    }
    drop(open);
    for i in 0..5 {
        let mut s = connect(server.local_addr());
        s.write_all(b"x").unwrap();
        check(read_n(&mut s, 6).unwrap(), &format!("later connection {i}"));
        drop(s);
        // Closed before the next one, so its env is back in the pool.
        wait_closed(server, 21 + i as u64);
    }
}

/// One page of memory that never grows, with `__heap_base` at 61444: WAMR
/// shrinks such a memory to `__heap_base` (61448 bytes, 8-aligned) but
/// maps and bounds-checks it to the end of the kernel page (65536). 'W'
/// writes 'X' at 62000, past the shrunk size, and answers 1; 'R' answers
/// the byte there. (The stack pointer and `__data_end` are for spawned
/// envs, which take their C stacks from that range.)
pub const SHRUNK_WAT: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $__stack_pointer (mut i32) (i32.const 57344))
  (global (export "__heap_base") i32 (i32.const 61444))
  (global (export "__data_end") i32 (i32.const 1024))
  (data (i32.const 0) "image")
  (func (export "alloc") (param i32) (result i32) (i32.const 58000))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 87))
      (then (i32.store8 (i32.const 62000) (i32.const 88)) (i32.store8 (i32.const 16) (i32.const 1)))
      (else (i32.store8 (i32.const 16) (i32.load8_u (i32.const 62000)))))
    (drop (call $send (local.get $c) (i32.const 16) (i32.const 1)))
    (i32.const 0)))"#;

/// Direct mode, both env sources, a pool of one: a byte `SHRUNK_WAT`
/// writes past its shrunk size is gone for the next connection.
pub fn shrunk_tail_is_reset(module: &Module) {
    use wamr_coro::EnvSource;
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        // A receive buffer (alloc) that fits below the shrunk size.
        let limits = Limits { chunk_size: 1024, ..test_limits() };
        let server = Server::builder(module.clone())
            .listen("127.0.0.1:0")
            .mode(Mode::Direct)
            .policy(EnvPolicy::Connection)
            .env_source(source)
            .pool_capacity(1)
            .workers(2)
            .limits(limits)
            .start()
            .unwrap();
        let ask = |msg: &[u8], closed: u64| -> Vec<u8> {
            let mut s = connect(server.local_addr());
            s.write_all(msg).unwrap();
            let answer = read_n(&mut s, 1).unwrap();
            drop(s);
            wait_closed(&server, closed);
            answer
        };
        for round in 0..3u64 {
            assert_eq!(ask(b"W", 2 * round + 1), [1], "{source:?}: the write past __heap_base trapped");
            assert_eq!(ask(b"R", 2 * round + 2), [0], "{source:?}: an earlier connection's byte at 62000 was seen");
        }
        let stats = server.stop();
        assert!(stats.pool.hits >= 4, "{source:?}: envs were not reused, so nothing was tested: {stats}");
    }
}

/// Waits (bounded) until the server has closed `n` connections.
pub fn wait_closed(server: &ServerHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().closed < n {
        assert!(Instant::now() < deadline, "connections did not close: {}", server.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A guest that answers any message with 4 MiB (word i holding
/// i * 2654435761: every word differs) and closes the connection.
pub const BIG_THEN_CLOSE_WAT: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "close" (func $close (param i32) (result i32)))
  (memory (export "memory") 80)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 1024))
  ;; The end of the answer: WAMR shrinks a memory that never grows to it.
  (global (export "__heap_base") i32 (i32.const 5242880))
  (global $filled (mut i32) (i32.const 0))
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 131072))
      (else (i32.const 0))))
  ;; 4 MiB at 1 MiB, word i holding i * 2654435761: every word differs.
  (func $fill (local $i i32)
    (loop $l
      (i32.store (i32.add (i32.const 1048576) (i32.shl (local.get $i) (i32.const 2)))
                 (i32.mul (local.get $i) (i32.const 2654435761)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1048576)))))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (if (i32.eqz (global.get $filled)) (then (call $fill) (global.set $filled (i32.const 1))))
    (drop (call $send (local.get $conn) (i32.const 1048576) (i32.const 4194304)))
    (drop (call $close (local.get $conn)))
    (i32.const 0)))
"#;
