//! Queue mode: network I/O entirely native, guest instances handling their
//! connections through `wait_msg` (WAMR's Native_WaitMsg pattern, WAMR
//! issue #3328).
//!
//! ```text
//! reader coroutine ─ OPEN/DATA/CLOSE ─▶ shard's EventRing ─▶ shard runner: guest `run` ⇄ wait_msg
//!                                                               │ send/close
//! socket ◀── writer coroutine ◀── per-connection channel ◀──────┘
//! ```
//! * Connections are spread over `queue_shards` shards by id; each shard has
//!   its own ring, connection table, runner and guest instance, so shards run
//!   in parallel and a fault costs one shard's connections, not all.
//! * Each connection has a reader coroutine (socket → events; a full ring
//!   blocks it, so TCP pushes back on the client) and a writer coroutine
//!   (channel → socket), so the guest never blocks on a slow client: its
//!   `send` fails with `WOULD_EXCEED_LIMIT` once `output_limit` bytes are
//!   pending for that connection. The reader stops reading while the
//!   connection's pending output plus its queued input could not take
//!   another chunk's answer, so a client that reads gets even a 10 MB echo
//!   intact; `-3` is left for clients that do not read.
//! * The runner owns the one exec env. With a `run` export the guest loops in
//!   `wait_msg`; without it the host runs the same loop natively and calls
//!   `on_open` / `on_recv` / `on_close`. Both take events from one
//!   [`Dispatcher`], so they behave identically.
//! * The per-call budget applies to each event: `wait_msg` arms the deadline
//!   when it hands an event to the guest and disarms it when the guest comes
//!   back for the next one.
//! * A trap, a budget overrun, or `run` returning before `SHUTDOWN` discards
//!   the shard's instance, closes the connections it had been told about (by
//!   OPEN), drops their remaining events, and hands the shard to a standby
//!   instance made in advance. Only a crash loop (3 faults within a second)
//!   backs off, and only that shard. During shutdown nothing restarts: the
//!   shard drains its events without a guest.
//! * Before a different connection's DATA lands in a receive buffer, the
//!   bytes the previous one left there are wiped.
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::conn_host::{self, Outbox};
use super::socket::{self, Activity, Progress, ReadBuf, Registration};
use super::Shared;
use crate::abi::{self, AbiHost, ERR_BAD_POINTER, ERR_UNKNOWN_CONN, ERR_WOULD_EXCEED_LIMIT};
use crate::guest::GuestEnv;
use crate::ring::EventRing;
use crate::wamr::memory::GuestMemory;
use crate::wamr::InterruptHandle;

/// Where the queue guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    /// DATA bytes queued in the ring, not yet handed to the guest.
    inflight: AtomicUsize,
    /// The guest closed it, or its instance crashed: no more send/close.
    closed: AtomicBool,
    /// Generation of the instance that received its OPEN (0 = not yet).
    open_gen: AtomicU64,
    /// `on_open` refused it (host loop): no `on_close`.
    refused: AtomicBool,
    /// The client's address.
    peer: Option<std::net::SocketAddr>,
}

impl Conn {
    fn close_writer(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Out::Close);
        }
    }
}

/// One shard: its ring, its connections, shared by their reader coroutines,
/// its runner and the server handle.
pub(crate) struct Shard {
    pub ring: EventRing<Event>,
    conns: Mutex<HashMap<i32, Arc<Conn>>>,
    /// Set when every connection is closed and `wait_msg` may say SHUTDOWN.
    pub shutdown: AtomicBool,
    /// Set when a reload replaced this shard's guest: SHUTDOWN once its
    /// last connection is gone.
    retired: AtomicBool,
    pub restarts: AtomicU64,
}

impl Shard {
    fn new(capacity: usize) -> Arc<Shard> {
        Arc::new(Shard {
            ring: EventRing::new(capacity),
            conns: Mutex::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
        })
    }

    /// Whether the guest may be told SHUTDOWN: the server stops, or the
    /// shard was retired and has no connection left; and nothing is queued.
    fn finished(&self) -> bool {
        self.ring.is_empty()
            && (self.shutdown.load(Ordering::Acquire)
                || (self.retired.load(Ordering::Acquire) && self.conns.lock().is_empty()))
    }
}

/// Every shard of a queue-mode server.
pub(crate) struct Queue {
    pub shards: Vec<Arc<Shard>>,
}

impl Queue {
    /// `n` shards (at least 1) of `capacity` events each.
    pub(crate) fn new(n: usize, capacity: usize) -> Arc<Queue> {
        Arc::new(Queue { shards: (0..n.max(1)).map(|_| Shard::new(capacity)).collect() })
    }

    /// The shard that serves connection `id` for its whole life.
    fn shard_of(&self, id: i32) -> &Arc<Shard> {
        &self.shards[id as u32 as usize % self.shards.len()]
    }

    /// Connections whose CLOSE their guest has not seen yet.
    pub(crate) fn open_conns(&self) -> usize {
        self.shards.iter().map(|s| s.conns.lock().len()).sum()
    }

    /// Events waiting, per shard.
    pub(crate) fn depths(&self) -> Vec<u64> {
        self.shards.iter().map(|s| s.ring.len() as u64).collect()
    }

    /// Instances replaced after a fault, all shards.
    pub(crate) fn restarts(&self) -> u64 {
        self.shards.iter().map(|s| s.restarts.load(Ordering::Relaxed)).sum()
    }

    /// A reload replaced this queue's guest: each shard's guest is told
    /// SHUTDOWN once its last connection is gone.
    pub(crate) fn retire(&self) {
        for s in &self.shards {
            s.retired.store(true, Ordering::Release);
            s.ring.wake();
        }
    }

    /// Lets every `wait_msg` answer SHUTDOWN once its ring is empty.
    pub(crate) fn shut_down(&self) {
        for s in &self.shards {
            s.shutdown.store(true, Ordering::Release);
            s.ring.wake();
        }
    }
}

// ---- connections --------------------------------------------------------

/// Starts the reader and writer coroutines of an accepted connection.
pub(super) fn start_conn(sh: &Arc<Shared>, queue: &Queue, stream: may::net::TcpStream, ip: std::net::IpAddr) {
    let id = sh.next_conn_id();
    let qs = queue.shard_of(id);
    let (tx, rx) = may::sync::mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let conn = Arc::new(Conn {
        tx,
        pending: Arc::clone(&pending),
        inflight: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        open_gen: AtomicU64::new(0),
        refused: AtomicBool::new(false),
        peer: stream.peer_addr().ok(),
    });
    qs.conns.lock().insert(id, Arc::clone(&conn));
    let registration = Registration::new(sh, id, ip, &stream);
    let (activity_r, activity_w) = (Arc::clone(registration.activity()), Arc::clone(registration.activity()));
    // One fd: the reader owns the socket and outlives the writer, which
    // writes through the same descriptor (see `writer`).
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let (done_tx, done_rx) = may::sync::mpsc::channel::<()>();
    let (sh_w, sh_r, qs_r) = (Arc::clone(sh), Arc::clone(sh), Arc::clone(qs));
    crate::coro::spawn(move || {
        // SAFETY: the reader keeps the socket behind `fd` open until this
        // coroutine has ended (it waits for `done_tx` to drop).
        unsafe { writer(sh_w, fd, rx, pending, &activity_w) };
        drop(done_tx);
    });
    crate::coro::spawn(move || {
        let mut stream = stream;
        reader(&sh_r, &qs_r, id, &conn, &mut stream, &activity_r);
        // The socket stays open until the writer is done with it; a writer
        // whose CLOSE never comes (the shard shut down) is told to stop.
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(Duration::from_millis(100)) {
            if qs_r.shutdown.load(Ordering::Acquire) || sh_r.stopping.load(Ordering::Acquire) {
                conn.close_writer();
            }
        }
        // The registration goes before the socket closes (see socket.rs).
        drop(registration);
        drop(stream);
    });
}

/// Queues `ev`, waiting while the ring is full (this is the backpressure:
/// the reader stops reading), unless the runner has shut down for good.
fn push(qs: &Shard, mut ev: Event) -> bool {
    loop {
        match qs.ring.push(ev, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(back) if !qs.shutdown.load(Ordering::Acquire) => ev = back,
            Err(_) => return false,
        }
    }
}

fn reader(sh: &Shared, qs: &Shard, id: i32, conn: &Conn, stream: &mut may::net::TcpStream, activity: &Activity) {
    let _ = stream.set_nodelay(true);
    // Idle reads are ended by the server's sweep (socket.rs).
    if !push(qs, Event::Open(id)) {
        return;
    }
    let mut buf = ReadBuf::new(sh.limits.chunk_size);
    let mut progress = Progress::new(sh);
    loop {
        if !wait_for_output_room(sh, conn) {
            sh.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
            break;
        }
        match stream.read(buf.space()) {
            Ok(0) => {
                if activity.idled() {
                    sh.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            Ok(n) => {
                sh.counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                activity.touch(sh);
                if !progress.received(n) {
                    sh.counters.slow_closes.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                conn.inflight.fetch_add(n, Ordering::AcqRel);
                if !push(qs, Event::Data(id, buf.filled(n).to_vec())) {
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
    push(qs, Event::Close(id));
}

/// Output backpressure: waits while the connection's pending output plus
/// its queued input leave no room for the answer to one more chunk (an
/// echo never exceeds the output limit then). False if no room came within
/// the idle timeout (the client is not reading), or the connection closed.
fn wait_for_output_room(sh: &Shared, conn: &Conn) -> bool {
    let room = |c: &Conn| {
        let used = c.pending.load(Ordering::Acquire) + c.inflight.load(Ordering::Acquire);
        used == 0 || used + sh.limits.chunk_size <= sh.limits.output_limit
    };
    if room(conn) {
        return true;
    }
    let deadline = Instant::now() + sh.limits.idle_timeout;
    while !room(conn) {
        if conn.closed.load(Ordering::Acquire) || Instant::now() >= deadline {
            return false;
        }
        may::coroutine::sleep(Duration::from_millis(1));
        // Leave may's timer thread (see Dispatcher::next).
        may::coroutine::yield_now();
    }
    true
}

/// Writes what the guest sent to the connection, in order, until CLOSE.
///
/// It shares the reader's descriptor and writes without waiting in `may`
/// (a `may` socket has one waiter slot, the reader's): a full send buffer
/// is retried after a short sleep that grows to 16 ms. A client that takes
/// nothing for `idle_timeout` is cut off, like one that sends nothing.
///
/// # Safety
/// SAFETY contract: `fd` stays open until this function returns.
unsafe fn writer(
    sh: Arc<Shared>,
    fd: std::os::fd::RawFd,
    rx: may::sync::mpsc::Receiver<Out>,
    pending: Arc<AtomicUsize>,
    activity: &Activity,
) {
    let mut broken = false;
    while let Ok(out) = rx.recv() {
        match out {
            Out::Data(bytes) => {
                if !broken {
                    // SAFETY: the caller keeps `fd` open.
                    broken = !unsafe { write_all(&sh, fd, &bytes) };
                    if broken {
                        // SAFETY: as above.
                        unsafe { socket::shutdown_fd(fd) };
                    } else {
                        sh.counters.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        activity.touch(&sh);
                    }
                }
                pending.fetch_sub(bytes.len(), Ordering::AcqRel);
            }
            Out::Close => break,
        }
    }
    // SAFETY: as above.
    unsafe { socket::shutdown_fd(fd) };
}

/// Writes all of `bytes`; false if the socket failed or the client took
/// nothing for `idle_timeout`.
///
/// # Safety
/// SAFETY contract: `fd` is open for the call.
unsafe fn write_all(sh: &Shared, fd: std::os::fd::RawFd, mut bytes: &[u8]) -> bool {
    let mut nap = Duration::from_millis(1);
    let mut stalled_since: Option<Instant> = None;
    while !bytes.is_empty() {
        // SAFETY: the caller keeps `fd` open.
        match unsafe { socket::write_nonblocking(fd, bytes) } {
            Ok(0) => return false,
            Ok(n) => {
                bytes = &bytes[n..];
                nap = Duration::from_millis(1);
                stalled_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= sh.limits.idle_timeout {
                    sh.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                pause(nap);
                nap = (nap * 2).min(Duration::from_millis(16));
            }
            Err(_) => return false,
        }
    }
    true
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
    qs: Arc<Shard>,
    generation: u64,
    /// The rest of a DATA event that did not fit the guest's buffer.
    rest: Option<(i32, Vec<u8>, usize)>,
    /// The DATA event the guest is handling: its bytes count as the
    /// connection's queued input until the guest asks for the next event
    /// (by then its answer is in the pending output), so the reader's
    /// backpressure never loses sight of them.
    handling: Option<(Arc<Conn>, usize)>,
}

impl Dispatcher {
    fn new(qs: &Arc<Shard>, generation: u64) -> Dispatcher {
        Dispatcher { qs: Arc::clone(qs), generation, rest: None, handling: None }
    }

    fn done_handling(&mut self) {
        if let Some((c, n)) = self.handling.take() {
            c.inflight.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn next(&mut self, cap: usize) -> Next {
        if let Some((conn, data, off)) = self.rest.take() {
            let end = (off + cap).min(data.len());
            let piece = data[off..end].to_vec();
            if end < data.len() {
                self.rest = Some((conn, data, end));
            }
            return Next::Data(conn, piece);
        }
        self.done_handling();
        loop {
            let Some(ev) = self.qs.ring.pop(Duration::from_millis(50)) else {
                if self.qs.finished() {
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
                        c.inflight.fetch_sub(data.len(), Ordering::AcqRel);
                        continue;
                    }
                    self.handling = Some((Arc::clone(c), data.len()));
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
        self.done_handling();
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
    /// The connection whose DATA `wait_msg` wrote last, and the guest range
    /// it wrote (`buf`, bytes): wiped before another connection's lands.
    last_data: Option<(i32, i32, i32)>,
    /// When the event the guest is handling was handed out.
    handed_out: Option<Instant>,
    /// The guest runs its own loop (`run`): only then may it wait.
    guest_loop: bool,
    /// The connection of the event being handled (`Caller::connection`).
    current: Arc<Mutex<Option<crate::abi::ConnInfo>>>,
    /// The guest's budget of log lines.
    log_limit: super::ratelimit::LogLimit,
}

/// Who `conn` is, for `Caller::connection`.
fn conn_info(qs: &Shard, conn: i32) -> Option<crate::abi::ConnInfo> {
    let peer = qs.conns.lock().get(&conn).and_then(|c| c.peer);
    Some(crate::abi::ConnInfo { id: conn, peer })
}

impl QueueHost {
    fn conn(&self, id: i32) -> Option<Arc<Conn>> {
        let d = self.dispatcher.lock();
        let c = d.qs.conns.lock().get(&id).cloned()?;
        (c.open_gen.load(Ordering::Acquire) == d.generation && !c.closed.load(Ordering::Acquire)).then_some(c)
    }
}

impl Outbox for QueueHost {
    type Conn = Arc<Conn>;

    fn find(&self, conn: i32) -> Option<Arc<Conn>> {
        self.conn(conn)
    }

    fn queued(&self, c: &Arc<Conn>) -> usize {
        c.pending.load(Ordering::Acquire)
    }

    fn push(&mut self, c: &Arc<Conn>, bytes: &[u8]) -> bool {
        c.pending.fetch_add(bytes.len(), Ordering::AcqRel);
        if c.tx.send(Out::Data(bytes.to_vec())).is_err() {
            c.pending.fetch_sub(bytes.len(), Ordering::AcqRel);
            return false;
        }
        true
    }

    fn close(&mut self, c: &Arc<Conn>) {
        c.close_writer();
    }
}

impl AbiHost for QueueHost {
    fn send(&mut self, conn: i32, bytes: Result<&[u8], ()>) -> i32 {
        let sh = Arc::clone(&self.sh);
        conn_host::send(self, &sh, conn, bytes)
    }

    fn close(&mut self, conn: i32) -> i32 {
        conn_host::close(self, conn)
    }

    fn wait_msg(&mut self, mem: &mut GuestMemory<'_>, buf: i32, cap: i32, info: i32) -> i32 {
        // Only a guest's own `run` loop waits; inside a handler the host
        // loop calls, taking events would steal them from that loop.
        if !self.guest_loop {
            return abi::ERR_NOT_IN_THIS_MODE;
        }
        // The guest is back for more: its time for the last event is over.
        self.interrupt.set_deadline(None);
        if let Some(t) = self.handed_out.take() {
            self.sh.metrics.call_seconds.observe(t.elapsed().as_secs_f64());
        }
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
                    if let Some((prev, pbuf, plen)) = self.last_data {
                        if prev != c {
                            mem.fill(pbuf, plen, 0);
                        }
                    }
                    mem.write(buf, &data);
                    let len = data.len() as i32;
                    self.last_data = match self.last_data {
                        Some((prev, pbuf, plen)) if prev == c && pbuf == buf => Some((c, buf, plen.max(len))),
                        _ => Some((c, buf, len)),
                    };
                    (c, abi::EVENT_DATA, len)
                }
            }
        };
        *self.current.lock() = conn_info(&self.dispatcher.lock().qs, conn);
        let mut rec = [0u8; 8];
        rec[..4].copy_from_slice(&conn.to_le_bytes());
        rec[4..].copy_from_slice(&kind.to_le_bytes());
        mem.write(info, &rec);
        self.interrupt.set_deadline(self.budget);
        self.handed_out = Some(Instant::now());
        self.interrupt.rearm_instructions();
        ret
    }

    fn epoch(&self) -> Instant {
        self.sh.epoch
    }

    fn bad_log_pointer(&mut self) {
        conn_host::bad_log_pointer(&self.sh);
    }

    fn connection(&self) -> Option<crate::abi::ConnInfo> {
        *self.current.lock()
    }

    /// One budget for the shard's guest (its connections share an instance).
    fn log_allowed(&mut self) -> Option<u64> {
        self.log_limit.allow()
    }
}

// ---- the runner ---------------------------------------------------------

/// Runs one shard's guest until shutdown. A faulted instance is replaced by
/// a standby made in advance; only a crash loop backs off; during shutdown
/// nothing restarts and the shard drains its events without a guest.
pub(super) fn run(sh: Arc<Shared>, qs: Arc<Shard>, guest: Arc<crate::guest::Guest>) {
    let has_run = guest.exports().run;
    let mut generation = 0u64;
    let mut backoff = Duration::from_millis(10);
    let mut standby: Option<GuestEnv> = None;
    let mut faults: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    loop {
        if qs.finished() {
            break;
        }
        generation += 1;
        if sh.stopping.load(Ordering::Acquire) && generation > 1 {
            drain(&qs, generation);
            break;
        }
        let made = match standby.take() {
            Some(env) => Ok(env),
            None => guest.create_env(),
        };
        let mut env = match made {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the queue guest; retrying");
                pause(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // The replacement for a fault, made now so that the shard's next
        // connections are served at once after one.
        standby = guest.create_env().inspect_err(|e| tracing::warn!(error = %e, "no standby queue guest")).ok();
        let dispatcher = Arc::new(Mutex::new(Dispatcher::new(&qs, generation)));
        let interrupt = Arc::clone(env.exec_env().interrupt_handle());
        let current = Arc::new(Mutex::new(None));
        env.set_host(Some(Box::new(QueueHost {
            dispatcher: Arc::clone(&dispatcher),
            sh: Arc::clone(&sh),
            interrupt,
            // With the guest's own loop, wait_msg arms the budget per event;
            // the host loop's calls carry the env's per-call budget instead.
            budget: if has_run { sh.limits.call_budget } else { None },
            last_data: None,
            handed_out: None,
            guest_loop: has_run,
            current: Arc::clone(&current),
            log_limit: super::ratelimit::LogLimit::new(),
        })));
        let outcome = if has_run {
            // Not for `run` as a whole: wait_msg arms it per event.
            env.exec_env().set_budget(None);
            match env.run().unwrap_or(Ok(0)) {
                Ok(_) if qs.finished() => Ok(()),
                Ok(r) => Err(format!("run returned {r} before SHUTDOWN")),
                Err(e) => {
                    sh.counters.count_fault(&e);
                    Err(e.to_string())
                }
            }
        } else {
            host_loop(&sh, &dispatcher, &mut env, &current)
        };
        let Err(why) = outcome else { break };
        let closed = dispatcher.lock().abandon_generation();
        drop(env);
        if sh.stopping.load(Ordering::Acquire) {
            tracing::info!(%why, closed, "queue guest stopped during shutdown; not restarting");
            continue; // drains on the next turn
        }
        qs.restarts.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = sh.log_limits.queue_fault.allow() {
            tracing::warn!(%why, closed, suppressed, "queue guest failed; closed its shard's connections, standby takes over");
        }
        // Back off only in a crash loop, and only this shard.
        let now = Instant::now();
        faults.push_back(now);
        while faults.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1)) {
            faults.pop_front();
        }
        if faults.len() >= 3 {
            tracing::warn!(backoff_ms = backoff.as_millis() as u64, "queue guest crash loop: backing off");
            pause(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else {
            backoff = Duration::from_millis(10);
        }
    }
}

/// Without a guest (a fault during shutdown): closes every connection as
/// its events arrive, until the shard may say SHUTDOWN.
fn drain(qs: &Arc<Shard>, generation: u64) {
    let mut d = Dispatcher::new(qs, generation);
    loop {
        match d.next(usize::MAX) {
            Next::Shutdown => return,
            Next::Open(id) | Next::Data(id, _) => {
                if let Some(c) = qs.conns.lock().get(&id) {
                    c.close_writer();
                }
            }
            Next::Close(_) => {}
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
fn host_loop(
    sh: &Shared,
    dispatcher: &Mutex<Dispatcher>,
    env: &mut GuestEnv,
    current: &Mutex<Option<crate::abi::ConnInfo>>,
) -> Result<(), String> {
    let cap = env.recv_buffer().1 as usize;
    loop {
        let next = dispatcher.lock().next(cap);
        if let Next::Open(id) | Next::Data(id, _) | Next::Close(id) = &next {
            *current.lock() = conn_info(&dispatcher.lock().qs, *id);
        }
        let started = Instant::now();
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
        sh.metrics.call_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            sh.counters.count_fault(&e);
            return Err(e.to_string());
        }
    }
}
