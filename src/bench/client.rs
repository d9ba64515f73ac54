//! The load generator: `wamr-coro bench-client`, a child process of the
//! bench, never the server's own process.
//!
//! **Closed loop** (`hold: false`): one `may` coroutine per connection. All
//! connections open first; then, until the duration is over, each writes
//! `pipeline` requests at once and reads their responses, checks every
//! response byte for byte, and records each response's latency (from the
//! write to its last byte) in an HDR histogram. A wrong byte, a reset or a
//! 10 s silence is an error: the connection is dropped and opened again.
//!
//! **Hold** (`hold: true`): `open_threads` threads open `conns` connections
//! (blocking sockets, optionally from given 127.x source addresses in turn,
//! so that one address's ephemeral ports are not the limit), send one request
//! on each, check its response, and keep every connection open until stdin
//! closes.
//!
//! Both print `progress DONE ERRORS` lines every 100 ms and one
//! `result {JSON}` line ([`ClientResult`]) on stdout.
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::protocol::{echo_message, Protocol, HTTP_REQUEST};
use crate::error::{Error, Result};

/// What one client process does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSpec {
    /// The server.
    pub addr: SocketAddr,
    /// Connections.
    pub conns: usize,
    /// The protocol.
    pub protocol: Protocol,
    /// HTTP: the response every request must get, byte for byte.
    pub expected: Vec<u8>,
    /// Requests written at once per connection (closed loop).
    pub pipeline: usize,
    /// Closed loop: how long, seconds.
    pub duration_s: f64,
    /// `may` workers (closed loop).
    pub workers: usize,
    /// Hold connections instead of a closed loop.
    pub hold: bool,
    /// Hold: source addresses to connect from, in turn (empty: the kernel
    /// picks).
    #[serde(default)]
    pub source_ips: Vec<IpAddr>,
    /// Hold: threads opening connections at once.
    pub open_threads: usize,
}

/// What one client process measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientResult {
    /// Responses received and correct.
    pub requests: u64,
    /// Errors of every kind (wrong bytes included).
    pub errors: u64,
    /// Responses whose bytes were wrong.
    pub wrong_bytes: u64,
    /// Closed loop: seconds from the start signal until every connection
    /// finished its last request.
    pub elapsed_s: f64,
    /// Closed loop: latency histogram (µs), HdrHistogram V2, hex.
    pub histogram_hex: String,
    /// Hold: connections open and answered.
    pub held: u64,
    /// Hold: seconds to open and answer them all.
    pub open_s: f64,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// A latency histogram: 1 µs to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Decodes [`ClientResult::histogram_hex`].
pub fn decode_histogram(hex: &str) -> Result<Histogram<u64>> {
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    let bytes = bytes.ok_or_else(|| Error::Bench("bench client: bad histogram encoding".into()))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| Error::Bench(format!("bench client: bad histogram: {e:?}")))
}

fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    let _ = V2Serializer::new().serialize(h, &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the client described by `spec`, printing as the module doc says
/// (a hold client returns only once stdin closes).
pub fn run(spec: &ClientSpec) -> Result<()> {
    if spec.hold {
        hold(spec);
    } else {
        let result = closed_loop(spec)?;
        println!("result {}", serde_json::to_string(&result).expect("serialisable"));
    }
    Ok(())
}

#[derive(Default)]
struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
    wrong: AtomicU64,
}

impl Progress {
    fn print(&self) {
        println!("progress {} {}", self.done.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed));
    }
}

fn closed_loop(spec: &ClientSpec) -> Result<ClientResult> {
    crate::coro::configure(spec.workers.max(1), 64 * 1024)?;
    // may pins worker i to core i by default; the servers' workers are
    // pinned the same way, and a client pinned onto the very cores its
    // server is pinned to cannot move away from them (wrk is not pinned).
    may::config().set_worker_pin(false);
    let progress = Arc::new(Progress::default());
    let ready = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..spec.conns)
        .map(|i| {
            let (spec, progress, ready, go, stop) =
                (spec.clone(), Arc::clone(&progress), Arc::clone(&ready), Arc::clone(&go), Arc::clone(&stop));
            crate::coro::spawn(move || {
                let mut conn = Connection::new(&spec, (i as u64) << 40);
                conn.open(&progress);
                ready.fetch_add(1, Ordering::AcqRel);
                while !go.load(Ordering::Acquire) {
                    may::coroutine::sleep(Duration::from_millis(1));
                }
                while !stop.load(Ordering::Relaxed) {
                    conn.round(&progress);
                }
                progress.done.fetch_add(conn.unreported, Ordering::Relaxed);
                conn.hist
            })
        })
        .collect();
    let open_deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Acquire) < spec.conns && Instant::now() < open_deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    go.store(true, Ordering::Release);
    let end = t0 + Duration::from_secs_f64(spec.duration_s);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())));
        progress.print();
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = new_histogram();
    for h in handles {
        match h.join() {
            Ok(h) => all.add(h).map_err(|e| Error::Bench(format!("merging histograms: {e:?}")))?,
            Err(_) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    progress.print();
    Ok(ClientResult {
        requests: all.len(),
        errors: progress.errors.load(Ordering::Relaxed),
        wrong_bytes: progress.wrong.load(Ordering::Relaxed),
        elapsed_s,
        histogram_hex: encode_histogram(&all),
        ..ClientResult::default()
    })
}

/// One closed-loop connection.
struct Connection {
    spec: ClientSpec,
    stream: Option<may::net::TcpStream>,
    seq: u64,
    hist: Histogram<u64>,
    /// Responses not yet added to the shared progress count (added in
    /// batches: one shared counter bumped per response costs the client
    /// cache-line traffic between its workers).
    unreported: u64,
    out: Vec<u8>,
    expect: Vec<u8>,
    inbuf: Vec<u8>,
}

impl Connection {
    fn new(spec: &ClientSpec, seq: u64) -> Connection {
        Connection {
            spec: spec.clone(),
            stream: None,
            seq,
            hist: new_histogram(),
            unreported: 0,
            out: Vec::new(),
            expect: Vec::new(),
            inbuf: vec![0u8; 64 * 1024],
        }
    }

    fn open(&mut self, progress: &Progress) -> bool {
        match may::net::TcpStream::connect(self.spec.addr).and_then(|s| {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            Ok(s)
        }) {
            Ok(s) => {
                self.stream = Some(s);
                true
            }
            Err(_) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                may::coroutine::sleep(Duration::from_millis(10));
                false
            }
        }
    }

    /// One batch: `pipeline` requests out, their responses in and checked.
    fn round(&mut self, progress: &Progress) {
        if self.stream.is_none() && !self.open(progress) {
            return;
        }
        let k = self.spec.pipeline.max(1);
        self.out.clear();
        self.expect.clear();
        for _ in 0..k {
            match self.spec.protocol {
                Protocol::Http => {
                    self.out.extend_from_slice(HTTP_REQUEST);
                    self.expect.extend_from_slice(&self.spec.expected);
                }
                Protocol::Echo => {
                    echo_message(self.seq, &mut self.out);
                    self.seq += 1;
                }
            }
        }
        if self.spec.protocol == Protocol::Echo {
            self.expect.clone_from(&self.out);
        }
        let each = self.expect.len() / k;
        let s = self.stream.as_mut().expect("opened above");
        let t = Instant::now();
        if s.write_all(&self.out).is_err() {
            return self.fail(progress, false);
        }
        let (mut have, mut checked) = (0usize, 0usize);
        while checked < k {
            let want = self.expect.len() - have;
            let n = match s.read(&mut self.inbuf[..want.min(64 * 1024)]) {
                Ok(0) | Err(_) => return self.fail(progress, false),
                Ok(n) => n,
            };
            if self.inbuf[..n] != self.expect[have..have + n] {
                return self.fail(progress, true);
            }
            have += n;
            while checked < k && have >= (checked + 1) * each {
                checked += 1;
                let _ = self.hist.record(t.elapsed().as_micros().max(1) as u64);
                self.unreported += 1;
            }
        }
        if self.unreported >= 64 {
            progress.done.fetch_add(self.unreported, Ordering::Relaxed);
            self.unreported = 0;
        }
    }

    fn fail(&mut self, progress: &Progress, wrong: bool) {
        progress.errors.fetch_add(1, Ordering::Relaxed);
        if wrong {
            progress.wrong.fetch_add(1, Ordering::Relaxed);
        }
        self.stream = None;
    }
}

fn hold(spec: &ClientSpec) {
    let progress = Arc::new(Progress::default());
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..spec.open_threads.clamp(1, spec.conns.max(1)))
        .map(|_| {
            let (spec, progress, next) = (spec.clone(), Arc::clone(&progress), Arc::clone(&next));
            std::thread::spawn(move || {
                let mut held = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= spec.conns {
                        break;
                    }
                    match open_and_ask(&spec, i) {
                        Ok(s) => {
                            held.push(s);
                            progress.done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(wrong) => {
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                            if wrong {
                                progress.wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                held
            })
        })
        .collect();
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        progress.print();
    }
    let held: Vec<Vec<std::net::TcpStream>> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
    let open_s = t0.elapsed().as_secs_f64();
    progress.print();
    let result = ClientResult {
        requests: progress.done.load(Ordering::Relaxed),
        errors: progress.errors.load(Ordering::Relaxed),
        wrong_bytes: progress.wrong.load(Ordering::Relaxed),
        held: held.iter().map(|v| v.len() as u64).sum(),
        open_s,
        ..ClientResult::default()
    };
    println!("result {}", serde_json::to_string(&result).expect("serialisable"));
    // Hold them until the parent closes stdin, then close them all at once
    // (linger 0: a reset, so no TIME_WAIT keeps this address's ports).
    for _ in std::io::stdin().lock().lines() {}
    drop(held);
}

/// Opens one connection, sends one request, checks its answer. `Err(true)`
/// for wrong bytes.
fn open_and_ask(spec: &ClientSpec, i: usize) -> std::result::Result<std::net::TcpStream, bool> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(spec.addr), Type::STREAM, None).map_err(|_| false)?;
    sock.set_linger(Some(Duration::ZERO)).map_err(|_| false)?;
    if let Some(&ip) = spec.source_ips.get(i % spec.source_ips.len().max(1)) {
        // Choose the port at connect time, by the whole 4-tuple: bind(ip, 0)
        // alone searches for a port no other socket on `ip` holds, which
        // grows slow (and runs out) with tens of thousands of sockets.
        let yes: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, reading one c_int that lives
        // for the call.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&yes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        sock.bind(&SocketAddr::new(ip, 0).into()).map_err(|_| false)?;
    }
    sock.connect_timeout(&spec.addr.into(), TIMEOUT).map_err(|_| false)?;
    let mut s: std::net::TcpStream = sock.into();
    s.set_nodelay(true).map_err(|_| false)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|_| false)?;
    let mut req = Vec::new();
    let expected = match spec.protocol {
        Protocol::Http => {
            req.extend_from_slice(HTTP_REQUEST);
            spec.expected.clone()
        }
        Protocol::Echo => {
            echo_message(i as u64, &mut req);
            req.clone()
        }
    };
    s.write_all(&req).map_err(|_| false)?;
    let mut got = vec![0u8; expected.len()];
    s.read_exact(&mut got).map_err(|_| false)?;
    if got != expected {
        return Err(true);
    }
    Ok(s)
}
