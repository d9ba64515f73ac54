//! A connection's socket as the server tracks it, the same in both modes:
//! admission (per-address limit), registration in the table that shutdown
//! sweeps, the read buffer, and the progress rule against trickling
//! clients; and direct mode's writes, under the same rule for output
//! ([`write_all`]).
//!
//! One file descriptor per connection. The table keeps the raw fd, not a
//! `dup`: [`Registration`] removes the entry (under the table's lock) before
//! the socket can be closed, and stop() shuts sockets down under that same
//! lock, so it never touches a closed or reused descriptor. Queue mode's
//! writer writes through the same fd without waiting in `may` (a `may`
//! socket has one waiter slot, which the reader uses), see
//! [`write_nonblocking`].
use std::collections::HashMap;
use std::io;
use std::mem::ManuallyDrop;
use std::net::{IpAddr, Shutdown};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;

/// What the table keeps of an open connection: its socket's descriptor and
/// when it was last active.
pub(crate) struct ConnEntry {
    fd: RawFd,
    activity: Arc<Activity>,
}

/// When a connection last made progress (received bytes, or had its output
/// accepted), for the idle sweep.
///
/// Idle connections are found by one sweep over the table (see
/// [`sweep_idle`]) rather than by a timeout on every read: a timed read
/// registers a `may` timer per read, which dominated the scheduler's work
/// under load (issue 15's profile).
#[derive(Debug)]
#[cfg_attr(test, derive(Default))]
pub(crate) struct Activity {
    /// [`coarse_ms`] when the connection last made progress.
    last_ms: AtomicU64,
    /// [`coarse_ms`] when its lingering close ends ([`linger`]); 0 while it
    /// is not lingering, `u64::MAX` once the sweep has ended the linger.
    /// A field of its own, not a backdated `last_ms`: a read that was under
    /// way when the linger began touches `last_ms`, which then held the
    /// connection for a whole `idle_timeout`, and a backdate past the
    /// clock's zero (a host up for less than `idle_timeout`) never expired.
    linger_until_ms: AtomicU64,
    /// The sweep shut the connection down for idleness.
    idled: AtomicBool,
}

impl Activity {
    /// Records progress now.
    pub(crate) fn touch(&self) {
        self.last_ms.store(coarse_ms(), Ordering::Relaxed);
    }

    /// Whether the sweep ended the connection (its reader then sees EOF).
    pub(crate) fn idled(&self) -> bool {
        self.idled.load(Ordering::Acquire)
    }

    /// Starts a lingering close (see [`linger`]): the idle sweep shuts the
    /// read side `linger` from now (plus up to a sweep period), and no
    /// longer applies the idle rule to the connection (its end is not an
    /// idle close). No timer: the sweep runs anyway.
    pub(crate) fn linger_for(&self, linger: Duration) {
        let until = coarse_ms().saturating_add(linger.as_millis().try_into().unwrap_or(u64::MAX));
        self.linger_until_ms.store(until.clamp(1, u64::MAX - 1), Ordering::Relaxed);
    }
}

/// Milliseconds on the kernel's coarse monotonic clock: the time of the
/// last timer tick (at most 1-10 ms ago, by the kernel's HZ; 4 ms here), which the vDSO returns without reading the
/// CPU's time-stamp counter. Activity stamps are taken twice a request and
/// compared with an idle timeout of seconds; a precise `Instant::now()`
/// each time cost about 25 ns on a 2-core VM (issue 15: `clock_gettime`
/// was the largest user-space symbol after the guest).
fn coarse_ms() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec we pass, and
        // CLOCK_MONOTONIC_COARSE exists on every Linux since 2.6.32.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
}

/// Shuts down the read side of every connection idle for `idle_timeout`:
/// its reader sees EOF, closes it as usual (on_close included), and counts
/// it as an idle close. Also ends lingering closes whose time is up (not
/// counted). Run periodically by the server's idle sweeper.
pub(crate) fn sweep_idle(sh: &Shared) {
    let now = coarse_ms();
    let idle = sh.limits.idle_timeout.as_millis() as u64;
    let conns = sh.conns.lock();
    for c in conns.values() {
        let linger_until = c.activity.linger_until_ms.load(Ordering::Relaxed);
        if linger_until != 0 {
            // Lingering: its own deadline, once.
            if linger_until != u64::MAX
                && now >= linger_until
                && c.activity
                    .linger_until_ms
                    .compare_exchange(linger_until, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                c.shutdown();
            }
            continue;
        }
        if now.saturating_sub(c.activity.last_ms.load(Ordering::Relaxed)) >= idle
            && !c.activity.idled.swap(true, Ordering::AcqRel)
        {
            c.shutdown();
        }
    }
}

/// Runs `f` on a std view of `fd` that does not close it.
///
/// # Safety
/// SAFETY contract: `fd` is an open socket for the duration of the call.
unsafe fn with_fd<R>(fd: RawFd, f: impl FnOnce(&std::net::TcpStream) -> R) -> R {
    // SAFETY: the caller keeps `fd` open; ManuallyDrop never closes it.
    let s = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    f(&s)
}

impl ConnEntry {
    /// Ends the connection's reads: its reader sees EOF and closes.
    pub(crate) fn shutdown(&self) {
        // SAFETY: entries live in the table only while their socket is open
        // (Registration removes them before the socket is dropped), and
        // this runs under the table's lock.
        unsafe { with_fd(self.fd, |s| s.shutdown(Shutdown::Read).ok()) };
    }

    /// Ends reads and writes: also unblocks a write to a client that does
    /// not read (used once the shutdown grace period is over).
    pub(crate) fn shutdown_both(&self) {
        // SAFETY: as in `shutdown`.
        unsafe { with_fd(self.fd, |s| s.shutdown(Shutdown::Both).ok()) };
    }
}

/// Writes what the socket takes now, without waiting: `WouldBlock` when its
/// send buffer is full. For queue mode's writer, which shares the reader's
/// fd and so must not wait in `may` (see the module docs).
///
/// # Safety
/// SAFETY contract: `fd` is an open socket for the call.
pub(crate) unsafe fn write_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    use std::io::Write;
    // SAFETY: the caller keeps `fd` open; may made the socket non-blocking,
    // so this write never blocks the thread.
    unsafe { with_fd(fd, |mut s| s.write(buf)) }
}

/// Shuts `fd` down both ways (errors ignored: it may be shut already).
///
/// # Safety
/// SAFETY contract: `fd` is an open socket for the call.
pub(crate) unsafe fn shutdown_fd(fd: RawFd) {
    // SAFETY: the caller keeps `fd` open.
    unsafe { with_fd(fd, |s| s.shutdown(Shutdown::Both).ok()) };
}

/// How a server-side close lingers: [`Limits::linger`](super::Limits::linger),
/// copied where `Shared` is not at hand (queue mode's connections).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(test, derive(Default))]
pub(crate) struct Linger {
    linger: Duration,
}

impl Linger {
    pub(crate) fn of(sh: &Shared) -> Linger {
        Linger { linger: sh.limits.linger }
    }

    /// Ends the connection's output (the kernel sends a FIN after what it
    /// still holds) and starts its lingering close: the connection's reader
    /// drains the input it has not read ([`linger`]) and closes the socket
    /// after. With `linger` zero, shuts the read side too, as before there
    /// was a lingering close: the reader sees EOF at once. Queue mode's end
    /// of output; errors are ignored (the socket may be shut already).
    ///
    /// # Safety
    /// SAFETY contract: `fd` is an open socket for the call.
    pub(crate) unsafe fn end_output(self, fd: RawFd, activity: &Activity) {
        let how = if self.linger.is_zero() {
            Shutdown::Both
        } else {
            activity.linger_for(self.linger);
            Shutdown::Write
        };
        // SAFETY: the caller keeps `fd` open.
        unsafe { with_fd(fd, |s| s.shutdown(how).ok()) };
    }

    /// [`end_output`](Self::end_output) for a socket the caller holds
    /// (direct mode's).
    pub(crate) fn end_stream_output(self, stream: &may::net::TcpStream, activity: &Activity) {
        use std::os::fd::AsRawFd;
        // SAFETY: `stream` is borrowed, so its descriptor is open for the call.
        unsafe { self.end_output(stream.as_raw_fd(), activity) };
    }
}

/// The most a lingering close discards before it gives up and closes (a
/// client that keeps sending after the server's FIN is not reading).
const LINGER_BYTES: usize = 8 << 20;

/// The lingering close, for a connection the server closes while its
/// client may still be sending: reads and discards the client's input
/// until it closes its side, the read side is shut (by the idle sweep
/// after [`Limits::linger`](super::Limits::linger), which
/// [`Linger::end_output`] arranged, or by stop), [`LINGER_BYTES`] have
/// been discarded, or the socket fails.
///
/// Without it, closing a socket that still holds unread input makes the
/// kernel answer with a RST at once and drop what it had not yet sent: the
/// client loses the end of its answer and sees `ECONNRESET` (RFC 7230
/// §6.6 asks servers for exactly this half-close). The caller has ended
/// the output already ([`Linger::end_output`]); a connection whose `linger`
/// is zero is not drained.
pub(crate) fn linger(sh: &Shared, stream: &mut may::net::TcpStream) {
    use std::io::Read;
    if sh.limits.linger.is_zero() {
        return;
    }
    // Only a lingering connection pays for the buffer.
    let mut sink = vec![0u8; 8192];
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(n) => discarded += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
        // A client that always has more ready must not hold the worker.
        may::coroutine::yield_now();
    }
}

/// Connections open per client address.
#[derive(Debug, Default)]
pub(crate) struct PerAddress {
    open: HashMap<IpAddr, u32>,
}

/// Admits a new connection from `ip` (or says why not): the server-wide
/// limit, then the per-address one.
pub(crate) fn admit(sh: &Shared, ip: IpAddr) -> Result<(), &'static str> {
    let conns = sh.conns.lock();
    if conns.len() >= sh.limits.max_connections {
        return Err("max_connections reached");
    }
    let mut per = sh.per_address.lock();
    let n = per.open.entry(ip).or_insert(0);
    if sh.limits.max_connections_per_ip > 0 && *n as usize >= sh.limits.max_connections_per_ip {
        if *n == 0 {
            per.open.remove(&ip);
        }
        return Err("max_connections_per_ip reached");
    }
    *n += 1;
    Ok(())
}

/// An admitted connection's place in the server's table. Dropping it (the
/// connection's coroutine ending in any way) removes the entry and the
/// per-address count, and counts the connection closed. Declare it before
/// the socket it registers, so it is dropped first.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    id: i32,
    ip: IpAddr,
    activity: Arc<Activity>,
}

impl Registration {
    /// Registers `stream` (admitted from `ip` by [`admit`]) under a
    /// connection id no open connection has ([`Shared::register_conn`];
    /// [`Registration::id`] says which), and sets it up the same in both
    /// modes (no Nagle delay: answers go out as the guest sends them).
    pub(crate) fn new(shared: &Arc<Shared>, ip: IpAddr, stream: &may::net::TcpStream) -> Registration {
        use std::os::fd::AsRawFd;
        if !super::bind::NODELAY_INHERITED {
            let _ = stream.set_nodelay(true);
        }
        let activity = Arc::new(Activity {
            last_ms: AtomicU64::new(0),
            linger_until_ms: AtomicU64::new(0),
            idled: AtomicBool::new(false),
        });
        activity.touch();
        let id = shared.register_conn(ConnEntry { fd: stream.as_raw_fd(), activity: Arc::clone(&activity) });
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        Registration { shared: Arc::clone(shared), id, ip, activity }
    }

    /// The connection's id, unique among open connections.
    pub(crate) fn id(&self) -> i32 {
        self.id
    }

    /// The connection's activity record.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.conns.lock().remove(&self.id);
        let mut per = self.shared.per_address.lock();
        if let Some(n) = per.open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.open.remove(&self.ip);
            }
        }
        drop(per);
        self.shared.counters.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a connection's reads ended. The reader has counted it already
/// (idle and slow closes in the server's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// The client closed its side, or the socket was shut down (by stop(),
    /// or by the idle sweep, which is counted as [`ReadEnd::Idle`]).
    Eof,
    /// Nothing arrived for `idle_timeout`.
    Idle,
    /// Too few bytes arrived per `idle_timeout` window (a trickling client).
    Slow,
    /// The socket failed.
    Failed,
}

/// A connection's coroutine yields its worker after this much time spent
/// between reads (in its guest, its writes, its queue pushes), counted
/// across chunks, even when the next chunk is already readable.
///
/// Without it a client that always has more input ready (streaming,
/// pipelining, or a fast client and a slow guest) keeps the coroutine
/// running, since its reads never block, and the other connections of its
/// worker wait: with a guest that computed for 75 µs a request, four
/// connections and two workers had a p99 of 6 ms against a median of
/// 0.2 ms. The worker then polls its sockets before it runs the yielded
/// coroutine again (`RUN_BEFORE_POLL` in vendor/may). A guest that answers
/// in a microsecond pays about one yield per 50 requests.
const YIELD_AFTER: Duration = Duration::from_micros(50);

/// A connection's read side, the same in both modes: the buffer, the
/// minimum-progress rule, the activity stamp the idle sweep reads, the
/// counters (`bytes_in`, idle and slow closes), and the fair share of its
/// worker ([`YIELD_AFTER`]). The modes differ only in what they do with
/// each chunk.
pub(crate) struct Reader {
    buf: ReadBuf,
    progress: Progress,
    /// When the last chunk was handed out.
    handed_out: Option<Instant>,
    /// Time spent between reads since the coroutine last yielded on purpose.
    busy: Duration,
}

impl Reader {
    pub(crate) fn new(sh: &Shared) -> Reader {
        Reader {
            buf: ReadBuf::new(sh.limits.chunk_size),
            progress: Progress::reads(sh),
            handed_out: None,
            busy: Duration::ZERO,
        }
    }

    /// Waits for the next chunk (at most `chunk_size` bytes) and returns it
    /// with the time it was handed out, or says why reads have ended.
    /// Yields the worker first when the caller has used its share
    /// ([`YIELD_AFTER`]).
    pub(crate) fn next(
        &mut self,
        sh: &Shared,
        stream: &mut may::net::TcpStream,
        activity: &Activity,
    ) -> Result<(&[u8], Instant), ReadEnd> {
        self.take_turn();
        let n = read_some(sh, stream, activity, self.buf.space())?;
        let now = self.arrived(sh, activity, n)?;
        Ok((self.buf.filled(n), now))
    }

    /// [`next`](Self::next), reading into `space` (the guest's receive
    /// buffer, for direct mode's connection-held env) instead of the
    /// reader's own buffer, which is then never allocated. Returns how many
    /// bytes it put at the start of `space`.
    pub(crate) fn next_into(
        &mut self,
        sh: &Shared,
        stream: &mut may::net::TcpStream,
        activity: &Activity,
        space: &mut [u8],
    ) -> Result<(usize, Instant), ReadEnd> {
        self.take_turn();
        let n = read_some(sh, stream, activity, space)?;
        Ok((n, self.arrived(sh, activity, n)?))
    }

    /// Yields the worker if the caller has used its share ([`YIELD_AFTER`]).
    fn take_turn(&mut self) {
        if let Some(t) = self.handed_out.take() {
            self.busy += t.elapsed();
            if self.busy >= YIELD_AFTER {
                self.busy = Duration::ZERO;
                may::coroutine::yield_now();
            }
        }
    }

    /// Counts `n` bytes just read and applies the progress rule; the time
    /// the chunk is handed out.
    fn arrived(&mut self, sh: &Shared, activity: &Activity, n: usize) -> Result<Instant, ReadEnd> {
        sh.counters.bytes_in.add(n as u64);
        activity.touch();
        if !self.progress.made(n) {
            return Err(counted(sh, ReadEnd::Slow));
        }
        let now = Instant::now();
        self.handed_out = Some(now);
        Ok(now)
    }
}

/// One read into `space`: its length, or why reads have ended.
fn read_some(
    sh: &Shared,
    stream: &mut may::net::TcpStream,
    activity: &Activity,
    space: &mut [u8],
) -> Result<usize, ReadEnd> {
    use std::io::Read;
    match stream.read(space) {
        Ok(0) if activity.idled() => Err(counted(sh, ReadEnd::Idle)),
        Ok(0) => Err(ReadEnd::Eof),
        Ok(n) => Ok(n),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Err(counted(sh, ReadEnd::Idle))
        }
        Err(_) => Err(ReadEnd::Failed),
    }
}

/// Counts an idle or slow end in the server's counters.
fn counted(sh: &Shared, end: ReadEnd) -> ReadEnd {
    match end {
        ReadEnd::Idle => sh.counters.idle_closes.fetch_add(1, Ordering::Relaxed),
        ReadEnd::Slow => sh.counters.slow_closes.fetch_add(1, Ordering::Relaxed),
        ReadEnd::Eof | ReadEnd::Failed => 0,
    };
    end
}

/// A connection's read buffer: allocated at the first read, at
/// [`ReadBuf::INITIAL`] bytes, and doubled, up to the chunk size, whenever a
/// read fills it, so idle connections cost 1 KiB (none in direct mode with
/// an env held for the connection, which reads into guest memory) and bulk
/// transfers still read a whole chunk at a time (after six doublings, once
/// per connection).
struct ReadBuf {
    buf: Vec<u8>,
    max: usize,
}

impl ReadBuf {
    /// Bytes a new buffer starts with: a typical HTTP request head fits.
    /// (4 KiB before: one whole resident page per idle connection, an
    /// eighth of the 32 KiB per-connection target of issue 15.)
    const INITIAL: usize = 1024;

    fn new(max: usize) -> ReadBuf {
        ReadBuf { buf: Vec::new(), max }
    }

    /// Where to read into.
    fn space(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf.resize(self.max.clamp(1, Self::INITIAL), 0);
        }
        &mut self.buf
    }

    /// The `n` bytes just read; grows the buffer if they filled it.
    fn filled(&mut self, n: usize) -> &[u8] {
        if n == self.buf.len() && n < self.max {
            let grown = (n * 2).min(self.max);
            // Keep the data: the caller reads it through the returned slice.
            self.buf.resize(grown, 0);
        }
        &self.buf[..n]
    }
}

/// The minimum-progress rule: a client must deliver at least
/// `min_recv_bytes` in every `idle_timeout` window (a trickle of one byte
/// a second otherwise holds a slot forever, since each byte resets the idle
/// timer), and, while an answer is being written to it (both modes),
/// accept at least `min_send_bytes` in every window.
struct Progress {
    min: usize,
    window: Duration,
    since: Instant,
    bytes: usize,
}

impl Progress {
    /// The rule for a connection's input.
    fn reads(sh: &Shared) -> Progress {
        Progress::new(sh.limits.min_recv_bytes, sh.limits.idle_timeout)
    }

    /// The rule for one pending write, from now.
    fn writes(sh: &Shared) -> Progress {
        Progress::new(sh.limits.min_send_bytes, sh.limits.idle_timeout)
    }

    fn new(min: usize, window: Duration) -> Progress {
        Progress { min, window, since: Instant::now(), bytes: 0 }
    }

    /// Records `n` bytes moved; false if the window closed with too few.
    fn made(&mut self, n: usize) -> bool {
        if self.min == 0 {
            return true;
        }
        self.bytes += n;
        if self.since.elapsed() < self.window {
            return true;
        }
        let ok = self.bytes >= self.min;
        self.since = Instant::now();
        self.bytes = 0;
        ok
    }
}

/// The progress rule for output, over one backlog of it (one answer in
/// direct mode; in queue mode, what is queued until the client catches up):
/// it starts at the first write the socket does not take at once, and from
/// then on the client must accept `min_send_bytes` per window.
#[derive(Default)]
pub(crate) struct SendProgress(Option<Progress>);

impl SendProgress {
    /// Starts the rule, if it has not started: the socket took nothing.
    pub(crate) fn start(&mut self, sh: &Shared) {
        self.0.get_or_insert_with(|| Progress::writes(sh));
    }

    /// A write moved `n` bytes, and `more` are left to write. Once started,
    /// the bytes count as activity and progress; false (counted in
    /// `slow_closes`) if the client fell below the floor, and the caller
    /// then resets the connection and gives up. Not started and `more`
    /// left: starts.
    pub(crate) fn wrote(&mut self, sh: &Shared, activity: &Activity, n: usize, more: bool) -> bool {
        match self.0.as_mut() {
            Some(p) => {
                activity.touch();
                if !p.made(n) {
                    sh.counters.slow_closes.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
            None if more => self.0 = Some(Progress::writes(sh)),
            None => {}
        }
        true
    }
}

/// Why [`write_all`] gave up.
#[derive(Debug)]
pub(crate) enum WriteEnd {
    /// The client accepted less than `min_send_bytes` in an `idle_timeout`
    /// window (counted in `slow_closes`; the socket is set to be reset
    /// when it closes).
    Slow,
    /// The socket failed, or the client took nothing for the write timeout.
    Failed,
}

/// Writes all of `buf` to a direct-mode connection's client, which must
/// keep taking it: once a write is pending (the first attempt did not take
/// it all), at least `min_send_bytes` per `idle_timeout` window.
///
/// The write timeout (`idle_timeout`, set by the connection) bounds each
/// wait for the socket to become writable, and nothing more: a client that
/// reads a few hundred KiB now and then makes every wait succeed, so without
/// this rule it could keep a large answer's write, and with it the
/// connection's coroutine and env, for as long as the answer lasts. A
/// client that falls short is cut off with a reset (`SO_LINGER` 0), which
/// also frees what the kernel still holds for it; the caller then closes
/// the connection as usual. Progress counts as activity for the idle sweep.
pub(crate) fn write_all(
    sh: &Shared,
    stream: &mut may::net::TcpStream,
    mut buf: &[u8],
    activity: &Activity,
) -> Result<(), WriteEnd> {
    use std::io::Write;
    // Started at the first partial write: an answer the socket takes at
    // once reads no clock.
    let mut progress = SendProgress::default();
    while !buf.is_empty() {
        let n = match stream.write(buf) {
            Ok(0) => return Err(WriteEnd::Failed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(WriteEnd::Failed),
        };
        buf = &buf[n..];
        if buf.is_empty() {
            break;
        }
        if !progress.wrote(sh, activity, n, true) {
            reset_on_close(stream);
            return Err(WriteEnd::Slow);
        }
    }
    Ok(())
}

/// Makes closing `stream` reset the connection (`SO_LINGER` 0) instead of
/// leaving the kernel to deliver what it still holds to a client that
/// reads too slowly to deserve it.
fn reset_on_close(stream: &may::net::TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: `stream` is borrowed, so its descriptor is open for the call.
    unsafe { reset_fd_on_close(stream.as_raw_fd()) };
}

/// [`reset_on_close`] for a descriptor (queue mode's writer).
///
/// # Safety
/// SAFETY contract: `fd` is an open socket for the call.
pub(crate) unsafe fn reset_fd_on_close(fd: RawFd) {
    // SAFETY: the caller keeps `fd` open.
    unsafe { with_fd(fd, |s| socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)).ok()) };
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (each
/// connection needs one descriptor). Process-wide: the command-line server
/// calls it at start; an embedder decides for itself. Returns the soft limit
/// now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(lim.rlim_max);
    }
    Ok(lim.rlim_cur)
}

/// The soft `RLIMIT_NOFILE` now in force.
pub(crate) fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}
