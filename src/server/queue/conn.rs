//! A queue-mode connection: its reader coroutine (socket → events, with
//! backpressure) and its writer coroutine (channel → socket), started the
//! first time the socket refuses part of an answer.
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::socket::{self, Activity, Reader, Registration};
use super::super::Shared;
use super::runner::pause;
use super::{Event, Out, Queue, QueueConn, Shard, WriterEnd};

/// Starts the reader coroutine of an accepted connection (its writer starts
/// when first needed: `start_writer`).
pub(in crate::server) fn start_conn(
    sh: &Arc<Shared>,
    queue: &Queue,
    stream: may::net::TcpStream,
    ip: std::net::IpAddr,
) {
    let registration = Registration::new(sh, ip, &stream);
    let id = registration.id();
    let pending = Arc::new(AtomicUsize::new(0));
    // One fd: the reader owns the socket and outlives the writer, which
    // writes through the same descriptor (see `writer`), as does the runner
    // while the writer has nothing queued (`QueueHost::push`).
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let (done_tx, done_rx) = may::sync::mpsc::channel::<()>();
    let writer_end = Arc::new(parking_lot::Mutex::new(WriterEnd { gone: false, tx: None, done: Some(done_tx) }));
    let conn = Arc::new(QueueConn {
        id,
        fd,
        activity: Arc::clone(registration.activity()),
        writer_end,
        pending,
        inflight: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        open_gen: AtomicU64::new(0),
        refused: AtomicBool::new(false),
        peer: stream.peer_addr().ok(),
        linger: socket::Linger::of(sh),
    });
    let mut qs = Arc::clone(queue.shard_of(id));
    // A reload makes the new generation current before it retires the old,
    // so a shard that refuses (retired) means the listener's generation was
    // replaced since it chose it: the current one serves the connection.
    while !qs.admit(&conn) {
        // Always there: every generation of a queue-mode server has a
        // queue. Were it not, the connection would just be closed here.
        let Some(q) = sh.generations.current().queue.clone() else { return };
        qs = Arc::clone(q.shard_of(id));
    }
    let (sh_r, qs_r) = (Arc::clone(sh), qs);
    crate::coro::spawn(move || {
        let mut stream = stream;
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader(&sh_r, &qs_r, id, &conn, &mut stream)));
        if read.is_err() {
            // No path is known to panic here. Were one found, unwinding
            // past this point would close the socket while the runner or
            // the writer may still write to its descriptor number (reused
            // by then for another client), and leave the connection in its
            // shard's table forever, its guest never told. Instead it ends
            // as a connection whose client left. (The reader's own CLOSE is
            // its last step; should the panic come from that very push, a
            // second CLOSE finds nothing to close. Nothing cancels these
            // coroutines, so no cancellation unwind is caught here.)
            tracing::error!(conn = id, "queue mode: the connection's reader panicked; closing it");
            push(&qs_r, Event::Close(id));
        }
        // The socket stays open until output has ended (the writer, if the
        // connection needed one, is done with it); output whose CLOSE never
        // comes (the shard shut down) is ended here.
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

/// Starts the writer of connection `c`, the first time the socket refused
/// part of an answer: `rx` is its channel's receiving end, and `done` the
/// sender whose drop tells the reader that output has ended.
pub(super) fn start_writer(
    sh: &Arc<Shared>,
    c: &QueueConn,
    rx: may::sync::mpsc::Receiver<Out>,
    done: may::sync::mpsc::Sender<()>,
) {
    /// Ends output, however the writer ends (a panic included): `gone` is
    /// set before `done` drops, for the reader closes the socket at once
    /// after, and the runner writes directly only while `gone` is false.
    struct Ended {
        end: Arc<parking_lot::Mutex<WriterEnd>>,
        _done: may::sync::mpsc::Sender<()>,
    }
    impl Drop for Ended {
        fn drop(&mut self) {
            self.end.lock().gone = true;
        }
    }
    let ended = Ended { end: Arc::clone(&c.writer_end), _done: done };
    let (sh, fd, pending, activity) = (Arc::clone(sh), c.fd, Arc::clone(&c.pending), Arc::clone(&c.activity));
    // Should the spawn fail (may panics when it cannot map a stack), the
    // closure and `ended` in it drop: output ends, and the socket closes.
    crate::coro::spawn(move || {
        // SAFETY: the reader keeps the socket behind `fd` open until `done`
        // drops, which `ended` does after this call, however it ends.
        unsafe { writer(sh, fd, rx, pending, &activity) };
        drop(ended);
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

pub(super) fn reader(sh: &Shared, qs: &Shard, id: i32, conn: &QueueConn, stream: &mut may::net::TcpStream) {
    // Idle reads are ended by the server's sweep (socket.rs).
    if !push(qs, Event::Open(id)) {
        return;
    }
    let mut reader = Reader::new(sh);
    // The server closed it (the guest, a fault, a refusal, stop) while the
    // client may still be sending: what it sends is drained, not queued,
    // after the CLOSE (so the shard is done with the connection at once),
    // and the socket closes after that (the lingering close, socket::linger).
    let mut drain = false;
    loop {
        if let Room::TimedOut = wait_for_output_room(sh, conn) {
            sh.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
            break;
        }
        // Closed while it waited for room (`Room::Closed`), or before.
        if conn.closed.load(Ordering::Acquire) {
            drain = true;
            break;
        }
        let Ok((data, _)) = reader.next(sh, stream, &conn.activity) else { break };
        if conn.closed.load(Ordering::Acquire) {
            drain = true;
            break;
        }
        conn.inflight.fetch_add(data.len(), Ordering::AcqRel);
        if !push(qs, Event::Data(id, data.to_vec())) {
            break;
        }
    }
    push(qs, Event::Close(id));
    if drain {
        socket::linger(sh, stream);
    }
}

/// How [`wait_for_output_room`] ended.
enum Room {
    /// There is room for the answer to one more chunk.
    Made,
    /// The connection was closed meanwhile (by the guest, a fault, stop).
    Closed,
    /// No room came within the idle timeout: the client is not reading (an
    /// idle close).
    TimedOut,
}

/// Output backpressure: waits while the connection's pending output plus
/// its queued input leave no room for the answer to one more chunk (an
/// echo never exceeds the output limit then).
fn wait_for_output_room(sh: &Shared, conn: &QueueConn) -> Room {
    let room = |c: &QueueConn| {
        let used = c.pending.load(Ordering::Acquire) + c.inflight.load(Ordering::Acquire);
        used == 0 || used + sh.limits.chunk_size <= sh.limits.output_limit
    };
    if room(conn) {
        return Room::Made;
    }
    let deadline = Instant::now() + sh.limits.idle_timeout;
    while !room(conn) {
        if conn.closed.load(Ordering::Acquire) {
            return Room::Closed;
        }
        if Instant::now() >= deadline {
            return Room::TimedOut;
        }
        may::coroutine::sleep(Duration::from_millis(1));
        // Leave may's timer thread (see Dispatcher::next).
        may::coroutine::yield_now();
    }
    Room::Made
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
    // The minimum-progress rule for output (`min_send_bytes`), from the
    // first write the socket did not take at once until nothing is queued.
    let mut progress = socket::SendProgress::default();
    while let Ok(out) = rx.recv() {
        match out {
            Out::Data(bytes) => {
                if !broken {
                    // SAFETY: the caller keeps `fd` open.
                    broken = !unsafe { write_all(&sh, fd, &bytes, &mut progress, activity) };
                    if broken {
                        // SAFETY: as above.
                        unsafe { socket::shutdown_fd(fd) };
                    } else {
                        sh.counters.bytes_out.add(bytes.len() as u64);
                        activity.touch();
                    }
                }
                if pending.fetch_sub(bytes.len(), Ordering::AcqRel) == bytes.len() {
                    // The client has caught up.
                    progress = socket::SendProgress::default();
                }
            }
            Out::Close => break,
        }
    }
    if broken {
        return;
    }
    // SAFETY: as above.
    unsafe { socket::Linger::of(&sh).end_output(fd, activity) };
}

/// Writes all of `bytes`; false if the socket failed, the client took
/// nothing for `idle_timeout`, or, once `progress` has started (a write the
/// socket did not take at once), it took less than `min_send_bytes` in a
/// window (then counted in `slow_closes`, and the connection is reset when
/// it closes).
///
/// # Safety
/// SAFETY contract: `fd` is open for the call.
unsafe fn write_all(
    sh: &Shared,
    fd: std::os::fd::RawFd,
    mut bytes: &[u8],
    progress: &mut socket::SendProgress,
    activity: &Activity,
) -> bool {
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
                if !progress.wrote(sh, activity, n, !bytes.is_empty()) {
                    // SAFETY: the caller keeps `fd` open.
                    unsafe { socket::reset_fd_on_close(fd) };
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                progress.start(sh);
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
