//! Worker call stacks: a guest call made from a coroutine can run on a stack
//! that belongs to the worker thread instead of the coroutine's own.
//!
//! A call goes down through WAMR's call path, the compiled guest and, for a
//! host import, the trampoline and the import: a few KiB of frames. On the
//! coroutine's stack those lines were last touched by that connection's
//! previous request, so with many connections every one of them is a cache
//! miss (cachegrind, 1,000 connections, one worker: 18 of 37 write misses per
//! request were such frames). A worker's call stack is reused by every call
//! the worker makes and stays in cache, and the coroutine stacks keep only
//! the shallow I/O path, so fewer of their pages are resident per connection.
//!
//! The rule that makes this sound: a coroutine may not yield while it runs on
//! the call stack. Suspended there, it would later resume on frames another
//! coroutine's call has overwritten, or on another worker's thread.
//! [`Claim::run`] forbids it through `may::coroutine::forbid_yield`: a host function that
//! tries to block the coroutine (a `may` socket, channel, lock, `sleep`,
//! `yield_now`) panics at the attempt, before anything is suspended, and the
//! call fails as a trap that names it. Envs therefore run on the call stack
//! only when asked ([`CallStack::Worker`]); the server asks in direct mode,
//! whose imports never block.
//!
//! A thread's call stack is as large as `may`'s coroutine stacks are when the
//! thread first needs it, with WAMR's boundary [`GUARD`](super::stack::GUARD)
//! above its low end, as on a coroutine stack: a guest gets the depth it got
//! before (a little more, as no coroutine frames sit above it). A call runs
//! where it is when the call stack is in use (a host function calling into
//! another guest) or smaller than `may`'s stacks have since become, and
//! outside coroutines.
//!
//! The switch costs about 170 instructions a call (psm's switch, the claim,
//! the yield guard's two thread-local writes; cachegrind, docs/BENCHMARKS.md).
//! A call's bookkeeping runs on the call stack with it, and typed calls
//! (`call_typed`) and env creation switch before they build anything.
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Where a coroutine's calls into an env run (see
/// [`ExecEnv::set_call_stack`](super::ExecEnv::set_call_stack)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum CallStack {
    /// On the calling coroutine's own stack; host functions may block the
    /// coroutine (wait for I/O, a channel, a lock). Where a bare `ExecEnv`
    /// calls unless told otherwise; the server's direct mode uses `Worker`.
    #[default]
    Coroutine,
    /// On a stack of the worker thread, shared by every call that worker
    /// makes and so kept in cache. Host functions must not block the
    /// coroutine: a call whose host function tries to fails with a trap.
    /// Outside a coroutine this is the same as `Coroutine`.
    Worker,
}

/// What a host function that tries to block is told (short: WAMR keeps 128
/// bytes of a trap's message, which also names the host function).
const WHY: &str = "guest call on a worker stack (CallStack::Worker)";

/// One thread's call stack: `[low, high)`, with an inaccessible guard page
/// below `low`; unmapped when the thread exits.
struct Mapping {
    low: usize,
    high: usize,
}

impl Mapping {
    /// A stack of `bytes` (whole pages) plus the guard page; `None` if the
    /// kernel will not map it (calls then run in place).
    fn new(bytes: usize) -> Option<Mapping> {
        let page = super::page_size();
        let total = bytes + page;
        // SAFETY: a fresh anonymous private mapping; the guard page at its
        // start is made inaccessible before anything runs on the rest.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return None;
            }
            if libc::mprotect(p, page, libc::PROT_NONE) != 0 {
                libc::munmap(p, total);
                return None;
            }
            let low = p as usize + page;
            Some(Mapping { low, high: low + bytes })
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // No later claim on this thread may use the range.
        BOUNDS.with(|c| c.set(REFUSED));
        let page = super::page_size();
        // SAFETY: the mapping made by `new` (guard page included, one page of
        // the same size); its thread is exiting, so nothing runs on it.
        unsafe { libc::munmap((self.low - page) as *mut libc::c_void, self.high - self.low + page) };
    }
}

/// `BOUNDS` before the thread has tried to map its stack.
const UNMAPPED: (usize, usize) = (0, 0);
/// `BOUNDS` after the kernel refused: calls run in place.
const REFUSED: (usize, usize) = (1, 1);

thread_local! {
    /// This thread's call stack `(low, high)`, read on every call.
    static BOUNDS: Cell<(usize, usize)> = const { Cell::new(UNMAPPED) };
    /// Whether a call is running on it.
    static BUSY: Cell<bool> = const { Cell::new(false) };
    /// Owns the mapping, to unmap it when the thread exits.
    static MAPPING: RefCell<Option<Mapping>> = const { RefCell::new(None) };
}

#[cold]
fn map_this_threads_stack() -> (usize, usize) {
    let page = super::page_size();
    let bytes = (may::config().get_stack_size() * std::mem::size_of::<usize>()).div_ceil(page) * page;
    let bounds = match Mapping::new(bytes) {
        Some(m) => {
            let b = (m.low, m.high);
            MAPPING.with(|o| *o.borrow_mut() = Some(m));
            b
        }
        None => REFUSED,
    };
    BOUNDS.with(|c| c.set(bounds));
    bounds
}

/// The bounds of this thread's call stack if `sp` lies in it.
#[inline(never)]
pub(crate) fn containing(sp: usize) -> Option<(usize, usize)> {
    let (low, high) = BOUNDS.with(|c| c.get());
    (sp >= low && sp < high).then_some((low, high))
}

/// Runs `f` on this thread's call stack if it can be claimed (see
/// [`claim`]), in place otherwise. `f` must not yield: an attempt panics.
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    match claim() {
        Some(c) => c.run(f),
        None => f(),
    }
}

/// This thread's call stack, held for one call: free again when dropped.
struct Claim {
    low: usize,
    high: usize,
}

/// Takes this thread's call stack for a call made by a coroutine, if it is
/// free and as large as `may`'s coroutine stacks. (An OS thread's own stack
/// is hot already, and usually larger.)
///
/// Never inlined, nor is the release in `Drop`: they are this module's only
/// reads and writes of its thread-locals, and a coroutine moves between
/// threads at its yields while the compiler may compute a thread-local's
/// address once per function. Inlined into a connection's loop (call, read,
/// call), a coroutine could claim the call stack of the thread it ran on
/// before. A call computes the addresses on the thread it runs on.
#[inline(never)]
fn claim() -> Option<Claim> {
    if BUSY.with(|b| b.get()) || !may::coroutine::is_coroutine() {
        return None;
    }
    let (mut low, mut high) = BOUNDS.with(|c| c.get());
    if (low, high) == UNMAPPED {
        (low, high) = map_this_threads_stack();
    }
    if (low, high) == REFUSED || high - low < may::config().get_stack_size() * std::mem::size_of::<usize>() {
        return None;
    }
    BUSY.with(|b| b.set(true));
    Some(Claim { low, high })
}

impl Claim {
    /// Runs `f` on the call stack; the coroutine may not yield until it
    /// returns.
    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let before = may::coroutine::forbid_yield(Some(WHY));
        // `[low, high)` is this thread's mapped call stack, page-aligned, and
        // nothing runs on it (we hold the claim). `f` does not unwind out of
        // the closure (caught, resumed below), and the coroutine cannot leave
        // the stack or this thread before `f` returns: yielding is forbidden.
        // SAFETY: so psm's conditions hold (aligned, sized, no unwinding).
        let result =
            unsafe { psm::on_stack(self.low as *mut u8, self.high - self.low, || catch_unwind(AssertUnwindSafe(f))) };
        may::coroutine::forbid_yield(before);
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }
}

impl Drop for Claim {
    #[inline(never)]
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}
