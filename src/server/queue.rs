//! Queue mode: network I/O entirely native, one guest instance handling
//! every connection through `wait_msg` (WAMR's Native_WaitMsg pattern,
//! WAMR issue #3328).
//!
//! ```text
//! reader coroutine ─ OPEN/DATA/CLOSE ─▶ EventRing ─▶ runner: guest `run` ⇄ wait_msg
//!                                                      │ send/close
//! socket ◀── writer coroutine ◀── per-connection channel ◀┘
//! ```
//! * Each connection has a reader coroutine (socket → events; a full ring
//!   blocks it, so TCP pushes back on the client) and a writer coroutine
//!   (channel → socket), so the guest never blocks on a slow client: its
//!   `send` fails with `WOULD_EXCEED_LIMIT` once `output_limit` bytes are
//!   pending for that connection.
//! * The runner owns the one exec env. With a `run` export the guest loops in
//!   `wait_msg`; without it the host runs the same loop natively and calls
//!   `on_open` / `on_recv` / `on_close`. Both take events from one
//!   [`Dispatcher`], so they behave identically.
//! * The per-call budget applies to each event: `wait_msg` arms the deadline
//!   when it hands an event to the guest and disarms it when the guest comes
//!   back for the next one.
//! * A trap, a budget overrun, or `run` returning before `SHUTDOWN` discards
//!   the instance, closes the connections it had been told about (by OPEN),
//!   drops their remaining events, and starts a fresh instance for the rest.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Shared;
use crate::abi::{self, AbiHost, ERR_BAD_POINTER, ERR_UNKNOWN_CONN, ERR_WOULD_EXCEED_LIMIT};
use crate::guest::GuestEnv;
use crate::ring::EventRing;
use crate::wamr::memory::GuestMemory;
use crate::wamr::InterruptHandle;

/// Where the queue guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueRunner {
    /// A dedicated OS thread (default): a guest computing never occupies a
    /// `may` worker, so socket I/O keeps both workers.
    #[default]
    Thread,
    /// A `may` coroutine: cheaper wake-ups, but a busy guest holds a worker.
    Coroutine,
}

/// One event from a connection.
#[derive(Debug)]
pub(crate) enum Event {
    Open(i32),
    Data(i32, Vec<u8>),
    Close(i32),
}

/// What goes to a connection's writer.
enum Out {
    Data(Vec<u8>),
    Close,
}

/// A connection as queue mode sees it.
struct Conn {
    tx: may::sync::mpsc::Sender<Out>,
    /// Bytes handed to the writer, not yet written.
    pending: Arc<AtomicUsize>,
    /// The guest closed it, or its instance crashed: no more send/close.
    closed: AtomicBool,
    /// Generation of the instance that received its OPEN (0 = not yet).
    open_gen: AtomicU64,
    /// `on_open` refused it (host loop): no `on_close`.
    refused: AtomicBool,
}

impl Conn {
    fn close_writer(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Out::Close);
        }
    }
}

/// State shared by connections, the runner and the server handle.
pub(crate) struct QueueShared {
    pub ring: EventRing<Event>,
    conns: Mutex<HashMap<i32, Arc<Conn>>>,
    /// Set when every connection is closed and `wait_msg` may say SHUTDOWN.
    pub shutdown: AtomicBool,
    pub restarts: AtomicU64,
}

impl QueueShared {
    pub(crate) fn new(capacity: usize) -> Arc<QueueShared> {
        Arc::new(QueueShared {
            ring: EventRing::new(capacity),
            conns: Mutex::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
        })
    }

    /// Connections whose CLOSE the guest has not seen yet.
    pub(crate) fn open_conns(&self) -> usize {
        self.conns.lock().len()
    }
}

// ---- connections --------------------------------------------------------

/// Starts the reader and writer coroutines of an accepted connection.
pub(super) fn start_conn(sh: &Arc<Shared>, qs: &Arc<QueueShared>, stream: may::net::TcpStream) {
    let id = sh.next_conn_id();
    let (Ok(reader_stream), Ok(writer_stream)) = (stream.try_clone(), stream.try_clone()) else {
        tracing::warn!("cannot clone socket; dropping connection");
        return;
    };
    let (tx, rx) = may::sync::mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    qs.conns.lock().insert(
        id,
        Arc::new(Conn {
            tx,
            pending: Arc::clone(&pending),
            closed: AtomicBool::new(false),
            open_gen: AtomicU64::new(0),
            refused: AtomicBool::new(false),
        }),
    );
    sh.conns.lock().insert(id, super::connection::ConnEntry::new(stream));
    sh.counters.accepted.fetch_add(1, Ordering::Relaxed);

    let (sh_w, sh_r, qs_r) = (Arc::clone(sh), Arc::clone(sh), Arc::clone(qs));
    crate::coro::spawn(move || writer(sh_w, writer_stream, rx, pending));
    crate::coro::spawn(move || {
        let _registered = super::connection::Registered::new(Arc::clone(&sh_r), id);
        reader(sh_r, qs_r, id, reader_stream);
    });
}

/// Queues `ev`, waiting while the ring is full (this is the backpressure:
/// the reader stops reading), unless the runner has shut down for good.
fn push(qs: &QueueShared, mut ev: Event) -> bool {
    loop {
        match qs.ring.push(ev, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(back) if !qs.shutdown.load(Ordering::Acquire) => ev = back,
            Err(_) => return false,
        }
    }
}

fn reader(sh: Arc<Shared>, qs: Arc<QueueShared>, id: i32, mut stream: may::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(sh.limits.idle_timeout));
    if !push(&qs, Event::Open(id)) {
        return;
    }
    let mut buf = super::connection::ReadBuf::new(sh.limits.chunk_size);
    loop {
        match stream.read(buf.space()) {
            Ok(0) => break,
            Ok(n) => {
                sh.counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                if !push(&qs, Event::Data(id, buf.filled(n).to_vec())) {
                    break;
                }
            }
            Err(e) => {
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                    sh.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
    push(&qs, Event::Close(id));
}

fn writer(sh: Arc<Shared>, mut stream: may::net::TcpStream, rx: may::sync::mpsc::Receiver<Out>, pending: Arc<AtomicUsize>) {
    // A client that reads nothing for idle_timeout is gone (see connection.rs).
    let _ = stream.set_write_timeout(Some(sh.limits.idle_timeout));
    let mut broken = false;
    while let Ok(out) = rx.recv() {
        match out {
            Out::Data(bytes) => {
                if !broken {
                    match stream.write_all(&bytes) {
                        Ok(()) => {
                            sh.counters.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            broken = true;
                            let _ = stream.shutdown(Shutdown::Both);
                        }
                    }
                }
                pending.fetch_sub(bytes.len(), Ordering::AcqRel);
            }
            Out::Close => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

// ---- the guest side -----------------------------------------------------

/// What the guest is handed next.
enum Next {
    Open(i32),
    Data(i32, Vec<u8>),
    Close(i32),
    Shutdown,
}

/// Picks the next event for the current instance: skips events of
/// connections that belong to a crashed instance or that the guest closed,
/// splits DATA longer than the guest's buffer, and says SHUTDOWN once the
/// server stops and every connection's CLOSE has been handed out.
pub(crate) struct Dispatcher {
    qs: Arc<QueueShared>,
    generation: u64,
    /// The rest of a DATA event that did not fit the guest's buffer.
    rest: Option<(i32, Vec<u8>, usize)>,
}

impl Dispatcher {
    fn next(&mut self, cap: usize) -> Next {
        if let Some((conn, data, off)) = self.rest.take() {
            let end = (off + cap).min(data.len());
            let piece = data[off..end].to_vec();
            if end < data.len() {
                self.rest = Some((conn, data, end));
            }
            return Next::Data(conn, piece);
        }
        loop {
            let Some(ev) = self.qs.ring.pop(Duration::from_millis(50)) else {
                if self.qs.shutdown.load(Ordering::Acquire) && self.qs.ring.is_empty() {
                    return Next::Shutdown;
                }
                // `may` resumes a coroutine whose timed wait expired on its
                // timer thread; yield so the guest never runs there (a busy
                // guest would stall every timer in the process).
                if may::coroutine::is_coroutine() {
                    may::coroutine::yield_now();
                }
                continue;
            };
            let conns = self.qs.conns.lock();
            match ev {
                Event::Open(id) => {
                    if let Some(c) = conns.get(&id) {
                        c.open_gen.store(self.generation, Ordering::Release);
                        return Next::Open(id);
                    }
                }
                Event::Data(id, data) => {
                    let Some(c) = conns.get(&id) else { continue };
                    if c.open_gen.load(Ordering::Acquire) != self.generation || c.closed.load(Ordering::Acquire) {
                        continue;
                    }
                    drop(conns);
                    if data.len() > cap {
                        let piece = data[..cap].to_vec();
                        self.rest = Some((id, data, cap));
                        return Next::Data(id, piece);
                    }
                    return Next::Data(id, data);
                }
                Event::Close(id) => {
                    drop(conns);
                    let Some(c) = self.qs.conns.lock().remove(&id) else { continue };
                    c.close_writer();
                    if c.open_gen.load(Ordering::Acquire) != self.generation || c.refused.load(Ordering::Acquire) {
                        continue;
                    }
                    return Next::Close(id);
                }
            }
        }
    }

    /// Closes every connection the (crashed) current instance had opened.
    fn abandon_generation(&mut self) -> usize {
        self.rest = None;
        let conns = self.qs.conns.lock();
        let mut n = 0;
        for c in conns.values() {
            if c.open_gen.load(Ordering::Acquire) == self.generation {
                c.close_writer();
                n += 1;
            }
        }
        n
    }
}

/// The ABI host of the queue guest's env.
struct QueueHost {
    dispatcher: Arc<Mutex<Dispatcher>>,
    sh: Arc<Shared>,
    interrupt: Arc<InterruptHandle>,
    budget: Option<Duration>,
    output_limit: usize,
}

impl QueueHost {
    fn conn(&self, id: i32) -> Option<Arc<Conn>> {
        let d = self.dispatcher.lock();
        let c = d.qs.conns.lock().get(&id).cloned()?;
        (c.open_gen.load(Ordering::Acquire) == d.generation && !c.closed.load(Ordering::Acquire)).then_some(c)
    }
}

impl AbiHost for QueueHost {
    fn send(&mut self, conn: i32, bytes: Result<&[u8], ()>) -> i32 {
        let Some(c) = self.conn(conn) else { return ERR_UNKNOWN_CONN };
        let Ok(bytes) = bytes else {
            self.sh.counters.bad_pointers.fetch_add(1, Ordering::Relaxed);
            return ERR_BAD_POINTER;
        };
        if c.pending.load(Ordering::Acquire) + bytes.len() > self.output_limit {
            self.sh.counters.output_limit_hits.fetch_add(1, Ordering::Relaxed);
            return ERR_WOULD_EXCEED_LIMIT;
        }
        c.pending.fetch_add(bytes.len(), Ordering::AcqRel);
        if c.tx.send(Out::Data(bytes.to_vec())).is_err() {
            c.pending.fetch_sub(bytes.len(), Ordering::AcqRel);
            return ERR_UNKNOWN_CONN;
        }
        bytes.len() as i32
    }

    fn close(&mut self, conn: i32) -> i32 {
        let Some(c) = self.conn(conn) else { return ERR_UNKNOWN_CONN };
        c.close_writer();
        0
    }

    fn wait_msg(&mut self, mem: &mut GuestMemory<'_>, buf: i32, cap: i32, info: i32) -> i32 {
        // The guest is back for more: its time for the last event is over.
        self.interrupt.set_deadline(None);
        if mem.check(info, abi::EVENT_SIZE).is_none() || cap < 0 || mem.check(buf, cap).is_none() {
            self.sh.counters.bad_pointers.fetch_add(1, Ordering::Relaxed);
            return ERR_BAD_POINTER;
        }
        let next = self.dispatcher.lock().next(cap.max(1) as usize);
        let (conn, kind, ret) = match next {
            Next::Shutdown => return abi::ERR_SHUTDOWN,
            Next::Open(c) => (c, abi::EVENT_OPEN, 0),
            Next::Close(c) => (c, abi::EVENT_CLOSE, 0),
            Next::Data(c, data) => {
                if cap == 0 {
                    // Nothing fits: hand back the whole chunk next time.
                    self.dispatcher.lock().rest = Some((c, data, 0));
                    (c, abi::EVENT_DATA, 0)
                } else {
                    mem.write(buf, &data);
                    (c, abi::EVENT_DATA, data.len() as i32)
                }
            }
        };
        let mut rec = [0u8; 8];
        rec[..4].copy_from_slice(&conn.to_le_bytes());
        rec[4..].copy_from_slice(&kind.to_le_bytes());
        mem.write(info, &rec);
        self.interrupt.set_deadline(self.budget);
        self.interrupt.rearm_instructions();
        ret
    }

    fn epoch(&self) -> Instant {
        self.sh.epoch
    }

    fn bad_log_pointer(&mut self) {
        self.sh.counters.bad_pointers.fetch_add(1, Ordering::Relaxed);
    }
}

// ---- the runner ---------------------------------------------------------

/// Runs queue guests until shutdown, replacing crashed instances.
pub(super) fn run(sh: Arc<Shared>, qs: Arc<QueueShared>) {
    let guest = Arc::clone(sh.pool.guest());
    let has_run = guest.exports().run;
    let mut generation = 0u64;
    let mut backoff = Duration::from_millis(10);
    loop {
        if qs.shutdown.load(Ordering::Acquire) && qs.ring.is_empty() {
            break;
        }
        generation += 1;
        let mut env = match guest.create_env() {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the queue guest; retrying");
                pause(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let started = Instant::now();
        let dispatcher = Arc::new(Mutex::new(Dispatcher {
            qs: Arc::clone(&qs),
            generation,
            rest: None,
        }));
        let interrupt = Arc::clone(env.exec_env().interrupt_handle());
        env.set_host(Some(Box::new(QueueHost {
            dispatcher: Arc::clone(&dispatcher),
            sh: Arc::clone(&sh),
            interrupt,
            // With the guest's own loop, wait_msg arms the budget per event;
            // the host loop's calls carry the env's per-call budget instead.
            budget: if has_run { sh.limits.call_budget } else { None },
            output_limit: sh.limits.output_limit,
        })));
        let outcome = if has_run {
            // Not for `run` as a whole: wait_msg arms it per event.
            env.exec_env().set_budget(None);
            match env.run().unwrap_or(Ok(0)) {
                Ok(_) if qs.shutdown.load(Ordering::Acquire) => Ok(()),
                Ok(r) => Err(format!("run returned {r} before SHUTDOWN")),
                Err(e) => {
                    sh.counters.count_fault(&e);
                    Err(e.to_string())
                }
            }
        } else {
            host_loop(&sh, &dispatcher, &mut env)
        };
        match outcome {
            Ok(()) => break,
            Err(why) => {
                let closed = dispatcher.lock().abandon_generation();
                qs.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%why, closed, "queue guest failed; closed its connections, starting a fresh instance");
                drop(env);
                // Back off against a guest that fails at once, not against
                // one that served a while before failing.
                if started.elapsed() > Duration::from_secs(1) {
                    backoff = Duration::from_millis(10);
                }
                pause(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Sleeps without blocking a `may` worker when the runner is a coroutine
/// (and then yields, to leave `may`'s timer thread; see `Dispatcher::next`).
fn pause(d: Duration) {
    if may::coroutine::is_coroutine() {
        may::coroutine::sleep(d);
        may::coroutine::yield_now();
    } else {
        std::thread::sleep(d);
    }
}

/// The loop `run` would have run, natively, for guests without `run`.
fn host_loop(sh: &Shared, dispatcher: &Mutex<Dispatcher>, env: &mut GuestEnv) -> Result<(), String> {
    let cap = env.recv_buffer().1 as usize;
    loop {
        let next = dispatcher.lock().next(cap);
        let result = match next {
            Next::Shutdown => return Ok(()),
            Next::Open(id) => env.on_open(id).map(|r| {
                if r < 0 {
                    sh.counters.refused.fetch_add(1, Ordering::Relaxed);
                    let conn = dispatcher.lock().qs.conns.lock().get(&id).cloned();
                    if let Some(c) = conn {
                        c.refused.store(true, Ordering::Release);
                        c.close_writer();
                    }
                }
            }),
            Next::Data(id, data) => env.on_recv(id, &data).map(|r| {
                if r < 0 {
                    let conn = dispatcher.lock().qs.conns.lock().get(&id).cloned();
                    if let Some(c) = conn {
                        c.close_writer();
                    }
                }
            }),
            Next::Close(id) => env.on_close(id),
        };
        if let Err(e) = result {
            sh.counters.count_fault(&e);
            return Err(e.to_string());
        }
    }
}
