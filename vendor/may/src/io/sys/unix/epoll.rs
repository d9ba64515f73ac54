use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
#[cfg(feature = "io_timeout")]
use std::time::Duration;

use super::{from_nix_error, EventData, IoData};
#[cfg(feature = "io_timeout")]
use super::{timeout_handler, TimerList};
use crate::scheduler::Scheduler;
#[cfg(feature = "io_timeout")]
use crate::timeout_list::now;

use may_queue::mpsc::Queue;
use nix::sys::epoll::*;
use nix::sys::eventfd::*;
use nix::unistd::{read, write};
use smallvec::SmallVec;

pub type SysEvent = EpollEvent;

struct SingleSelector {
    epoll: Epoll,
    evfd: EventFd,
    #[cfg(feature = "io_timeout")]
    timer_list: TimerList,
    free_ev: Queue<Arc<EventData>>,
    /// wamr-coro: when the owning worker last polled (`now()`, ns).
    polled_at: AtomicU64,
    /// wamr-coro: when another worker last looked at this epoll for events
    /// the owner has not collected (ns): at most one look per stall period (`steal`).
    looked_at: AtomicU64,
    /// wamr-coro: batches of this epoll's events other workers are handling;
    /// the owner frees unused event data only while there are none.
    stealers: AtomicUsize,
}

impl SingleSelector {
    pub fn new() -> io::Result<Self> {
        // wakeup data is 0
        let info = EpollEvent::new(EpollFlags::EPOLLIN, 0);

        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let evfd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;

        // add the eventfd to the epfd
        epoll.add(evfd.as_fd(), info)?;

        Ok(SingleSelector {
            epoll,
            evfd,
            free_ev: Queue::new(),
            #[cfg(feature = "io_timeout")]
            timer_list: TimerList::new(),
            polled_at: AtomicU64::new(0),
            looked_at: AtomicU64::new(0),
            stealers: AtomicUsize::new(0),
        })
    }
}

/// wamr-coro: how long a worker that ran out of work keeps polling its epoll
/// before it sleeps in `epoll_wait`.
///
/// Under request/response load a worker drains its ready coroutines, finds
/// nothing new, sleeps, and is woken microseconds later by the next request:
/// a full sleep and wake-up per small batch. Measured with a minimal HTTP
/// guest, 2 workers and the load generator on the same 2 cores, that was
/// ~53,000 voluntary context switches a second and a third of the
/// throughput a single worker reaches (vendor/README.md has the figures).
/// Polling first, yielding the core between polls so that a thread that has
/// work (on a shared machine, the very client whose request is coming) runs
/// meanwhile, removes nearly all of those sleeps. An idle server pays one
/// such window per poll timeout (10 µs per 10 ms).
const POLL_BEFORE_SLEEP: std::time::Duration = std::time::Duration::from_micros(10);

/// wamr-coro: how long a worker may leave its epoll unpolled before another
/// worker with nothing queued takes its ready events (see `Selector::steal`).
///
/// Upstream only the worker that owns an epoll (fd % workers) collects its
/// events. When that worker's thread is preempted (the load generator, or
/// any other process, shares its core) or runs one long coroutine, every
/// connection on its epoll waits for it, though the other worker may have
/// time: with 2 workers and wrk on the same 2 cores, direct mode's p99 was
/// 3.8 ms against a median of 0.35 ms and the Wasmtime peer's 1.4–2.4 ms.
const STALL_NS: u64 = 100_000;
/// wamr-coro: the same for a worker that has coroutines of its own queued.
/// Taking another epoll's events then only reshuffles work between two busy
/// workers; it pays when the owner has not polled for longer than any
/// ordinary run of its queue (a preemption lasts milliseconds). With 100 µs
/// here too, a guest computing for 75 µs a request lost 3–7 % of its
/// requests/s and its p99 rose (vendor/README.md).
const STALL_BUSY_NS: u64 = 500_000;

/// wamr-coro: polls `epoll` (yielding the core between polls) for up to
/// [`POLL_BEFORE_SLEEP`], then waits up to `timeout` as before. Wake-ups
/// from other threads arrive through the eventfd, so they end the polling
/// like any event.
fn poll_then_wait(epoll: &Epoll, events: &mut [SysEvent], timeout: EpollTimeout) -> io::Result<usize> {
    let start = std::time::Instant::now();
    while start.elapsed() < POLL_BEFORE_SLEEP {
        std::thread::yield_now();
        let n = epoll.wait(events, EpollTimeout::ZERO)?;
        if n > 0 {
            return Ok(n);
        }
    }
    Ok(epoll.wait(events, timeout)?)
}

pub(crate) struct Selector {
    // 128 should be fine for max io threads
    vec: SmallVec<[SingleSelector; 128]>,
}

impl Selector {
    pub fn new(io_workers: usize) -> io::Result<Self> {
        let mut s = Selector {
            vec: SmallVec::new(),
        };

        for _ in 0..io_workers {
            let ss = SingleSelector::new()?;
            s.vec.push(ss);
        }

        Ok(s)
    }

    #[inline]
    pub fn select(
        &self,
        scheduler: &Scheduler,
        id: usize,
        events: &mut [SysEvent],
        _timeout: Option<u64>,
    ) -> io::Result<Option<u64>> {
        assert!(id < self.vec.len());
        #[cfg(feature = "io_timeout")]
        let timeout_ms = _timeout
            .map(|to| EpollTimeout::try_from(to.div_ceil(1_000_000)).unwrap())
            .unwrap_or(EpollTimeout::NONE);
        #[cfg(not(feature = "io_timeout"))]
        let timeout_ms = EpollTimeout::NONE;
        // info!("select; timeout={:?}", timeout_ms);

        let single_selector = &self.vec[id];
        let epoll = &single_selector.epoll;
        single_selector.polled_at.store(crate::timeout_list::now(), Ordering::Relaxed);

        // Wait for epoll events for at most timeout_ms milliseconds
        // (wamr-coro: after polling briefly, see `poll_then_wait`; and not
        // at all while coroutines are queued, for the worker polls between
        // them, see `RUN_BEFORE_POLL` in scheduler.rs).
        let n = match epoll.wait(events, EpollTimeout::ZERO)? {
            0 if timeout_ms != EpollTimeout::ZERO && !scheduler.has_queued_tasks(id) => {
                poll_then_wait(epoll, events, timeout_ms)?
            }
            n => n,
        };
        // println!("epoll_wait = {}", n);

        // collect coroutines
        self.dispatch(scheduler, id, &events[..n], true);
        if self.vec.len() > 1 {
            let stall = if scheduler.has_queued_tasks(id) { STALL_BUSY_NS } else { STALL_NS };
            self.steal(scheduler, id, events, stall);
        }

        // run all the local tasks
        scheduler.run_queued_tasks(id);

        // free the unused event_data
        self.free_unused_event_data(id);

        // deal with the timer list
        #[cfg(feature = "io_timeout")]
        let next_expire = single_selector
            .timer_list
            .schedule_timer(now(), &timeout_handler);
        #[cfg(not(feature = "io_timeout"))]
        let next_expire = None;
        Ok(next_expire)
    }

    /// wamr-coro: takes the ready events of every other worker's epoll that
    /// its owner has not polled for `stall` ns (its thread is preempted, or
    /// busy in one long coroutine), and queues their coroutines on worker
    /// `id`, looking at each such epoll at most once per `STALL_NS`,
    /// whichever worker looks.
    ///
    /// The events are handled exactly as the owner would (`dispatch`),
    /// except the owner's eventfd wake-up, which is level-triggered and left
    /// to the owner. An io timer armed for one of them is removed from this
    /// thread, as upstream's `fast_schedule` already does from whichever
    /// worker runs the coroutine. The event data stays alive: the owner
    /// frees unused event data only while no batch of its epoll's events is
    /// being handled elsewhere (`stealers`, see `free_unused_event_data`).
    fn steal(&self, scheduler: &Scheduler, id: usize, events: &mut [SysEvent], stall: u64) {
        let now = crate::timeout_list::now();
        for k in 1..self.vec.len() {
            let j = (id + k) % self.vec.len();
            let victim = &self.vec[j];
            if now.saturating_sub(victim.polled_at.load(Ordering::Relaxed)) < stall {
                continue;
            }
            let looked = victim.looked_at.load(Ordering::Relaxed);
            if now.saturating_sub(looked) < STALL_NS
                || victim.looked_at.compare_exchange(looked, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
            {
                continue;
            }
            victim.stealers.fetch_add(1, Ordering::SeqCst);
            if let Ok(n) = victim.epoll.wait(events, EpollTimeout::ZERO) {
                self.dispatch(scheduler, id, &events[..n], false);
            }
            victim.stealers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn dispatch(&self, scheduler: &Scheduler, id: usize, events: &[SysEvent], own: bool) {
        let single_selector = &self.vec[id];
        for event in events {
            if event.data() == 0 {
                if !own {
                    // The owner's wake-up (level-triggered): it reads it.
                    continue;
                }
                // this is just a wakeup event, ignore it
                let mut buf = [0u8; 8];
                // clear the eventfd, ignore the result
                read(single_selector.evfd.as_fd(), &mut buf).ok();
                // info!("got wakeup event in select, id={}", id);
                scheduler.collect_global(id);
                continue;
            }
            let data = unsafe { &mut *(event.data() as *mut EventData) };
            let events = event.events().bits() as usize;
            // info!("select got event, data={:p}, events={}", data, events);
            // wamr-coro: count read edges before publishing the flag, so a
            // reader that sees the flag also sees the count move.
            // The hang-up goes first, so a read that sees the count of
            // this edge also sees it.
            if events & super::HANG_UP_BITS != 0 {
                data.hung_up.store(true, Ordering::Release);
            }
            if events & super::READ_EDGE_BITS != 0 {
                data.read_edges.fetch_add(1, Ordering::Release);
            }
            data.io_flag.fetch_or(events, Ordering::Release);

            // first check the atomic co, this may be grab by the worker first
            let co = match data.co.take() {
                Some(co) => co,
                None => continue,
            };

            // it's safe to remove the timer since we are running the timer_list in the same thread
            #[cfg(feature = "io_timeout")]
            data.timer.borrow_mut().take().map(|h| {
                unsafe {
                    // tell the timer handler not to cancel the io
                    // it's not always true that you can really remove the timer entry
                    h.with_mut_data(|value| value.data.event_data = std::ptr::null_mut());
                }
                h.remove()
            });

            #[cfg(feature = "work_steal")]
            scheduler.schedule_with_id(co, id);
            #[cfg(not(feature = "work_steal"))]
            crate::coroutine_impl::run_coroutine(co);
        }
    }

    // this will post an os event so that we can wake up the event loop
    #[inline]
    pub fn wakeup(&self, id: usize) {
        let buf = 1u64.to_le_bytes();
        let ret = write(&self.vec[id].evfd, &buf);
        trace!("wakeup id={:?}, ret={:?}", id, ret);
    }

    // register io event to the selector
    #[inline]
    pub fn add_fd(&self, io_data: IoData) -> io::Result<IoData> {
        let info = EpollEvent::new(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLOUT
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLET,
            io_data.as_ref() as *const _ as _,
        );

        let fd = io_data.fd;
        let id = fd as usize % self.vec.len();
        let single_selector = &self.vec[id];
        let epoll = &single_selector.epoll;
        info!("add fd to epoll select, fd={:?}", fd);
        epoll
            .add(unsafe { BorrowedFd::borrow_raw(fd) }, info)
            .map_err(from_nix_error)
            .map(|_| io_data)
    }

    #[inline]
    pub fn mod_fd(&self, io_data: &IoData, is_read: bool) -> io::Result<()> {
        let mut info = if is_read {
            EpollEvent::new(
                EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET,
                io_data.as_ref() as *const _ as _,
            )
        } else {
            EpollEvent::new(
                EpollFlags::EPOLLOUT | EpollFlags::EPOLLHUP | EpollFlags::EPOLLET,
                io_data.as_ref() as *const _ as _,
            )
        };

        let fd = io_data.fd;
        let id = fd as usize % self.vec.len();
        let single_selector = &self.vec[id];
        let epoll = &single_selector.epoll;
        info!("mod fd to epoll select, fd={:?}, is_read={}", fd, is_read);
        epoll
            .modify(unsafe { BorrowedFd::borrow_raw(fd) }, &mut info)
            .map_err(from_nix_error)
    }

    #[inline]
    pub fn del_fd(&self, io_data: &IoData) {
        #[cfg(feature = "io_timeout")]
        if let Some(h) = io_data.timer.borrow_mut().take() {
            unsafe {
                // mark the timer as removed if any, this only happened
                // when cancel an IO. what if the timer expired at the same time?
                // because we run this func in the user space, so the timer handler
                // will not got the coroutine
                h.with_mut_data(|value| value.data.event_data = std::ptr::null_mut());
            }
        }

        let fd = io_data.fd;
        let id = fd as usize % self.vec.len();
        let single_selector = &self.vec[id];
        let epoll = &single_selector.epoll;
        info!("del fd from epoll select, fd={:?}", fd);
        epoll.delete(unsafe { BorrowedFd::borrow_raw(fd) }).ok();

        // after EpollCtlDel push the unused event data
        single_selector.free_ev.push((*io_data).clone());
    }

    // we can't free the event data directly in the worker thread
    // must free them before the next epoll_wait (wamr-coro: or later, while
    // another worker handles a batch of this epoll's events)
    #[inline]
    fn free_unused_event_data(&self, id: usize) {
        let single_selector = &self.vec[id];
        let free_ev = &single_selector.free_ev;
        let unused = free_ev.bulk_pop();
        if unused.is_empty() {
            return;
        }
        // wamr-coro: not while another worker handles a batch of this
        // epoll's events (see `steal`): it may hold an event for one of
        // these fds. The fds left the epoll before their data was queued,
        // so before the pop above: a batch that starts after the check
        // below cannot hold one. Until then they go back in the queue.
        if single_selector.stealers.load(Ordering::SeqCst) != 0 {
            for data in unused {
                free_ev.push(data);
            }
            return;
        }
        // Only what was popped before the check: data queued since may
        // belong to a batch that started after it.
        drop(unused);
    }

    // register the io request to the timeout list
    #[inline]
    #[cfg(feature = "io_timeout")]
    pub fn add_io_timer(&self, io: &IoData, timeout: Duration) {
        let id = io.fd as usize % self.vec.len();
        // info!("io timeout = {:?}", dur);
        let (h, b_new) = self.vec[id].timer_list.add_timer(timeout, io.timer_data());
        if b_new {
            // wake up the event loop thread to recall the next wait timeout
            self.wakeup(id);
        }
        io.timer.borrow_mut().replace(h);
    }
}
