//! The native stack boundary WAMR must use for the calling context.
//!
//! * On a worker's call stack (`call_stack.rs`), the boundary is its low end
//!   plus [`GUARD`].
//! * On an OS thread, WAMR's own default (the pthread stack) is right: the
//!   boundary is reset to NULL and WAMR computes it.
//! * In a coroutine started by `coro::spawn`, the boundary is the
//!   coroutine stack's low end plus [`GUARD`].
//! * In any other coroutine the bounds are unknown: the call is refused.
//!
//! `current` also returns the address range of the stack, so that an exec
//! env can tell cheaply (one comparison per call) whether it is still called
//! from the stack its boundary was set for.
//!
//! `may` does not expose a coroutine's stack bounds, so `coro::spawn` calls
//! `record_coroutine_bounds` as the coroutine starts: the top is the first
//! page boundary above a local of the entry frame (the generator puts only a
//! small boxed closure above it, see the `stack_bounds_match_proc_maps`
//! test), and the bottom is the top minus the stack size `may` allocated.
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Bounds of a coroutine stack: `low` is the lowest usable byte, `high` one
/// past the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackBounds {
    /// Lowest usable address.
    pub low: usize,
    /// One past the highest address.
    pub high: usize,
}

may::coroutine_local!(static STACK: Cell<Option<StackBounds>> = Cell::new(None));

/// Records the current coroutine's stack bounds; called first thing in a
/// coroutine's entry frame (`coro::spawn`).
#[inline(never)]
pub(crate) fn record_coroutine_bounds() {
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    let words = may::coroutine::current().stack_size();
    let bytes = words * std::mem::size_of::<usize>();
    let page = super::page_size();
    let high = (sp + page - 1) & !(page - 1);
    let low = high.saturating_sub(bytes);
    STACK.with(|s| s.set(Some(StackBounds { low, high })));
}

/// Gives back to the kernel the pages of the current coroutine's stack
/// between its bottom page and its entry frame; called first thing in the
/// entry frame (`coro::spawn`). Does nothing outside a coroutine started by
/// `coro::spawn`, when the stack's bottom is not page-aligned (a size that
/// is not a whole number of pages), or when `may` measures the stack's use
/// (an odd size in words).
///
/// `may` hands out the stacks of finished coroutines as they are, with
/// whatever pages they made resident. An idle connection's coroutine keeps
/// to the top page (its guest calls run on the worker's call stack), but
/// rarer paths go deeper (a fault's warning line, a page; with a host
/// function that may block, the whole guest call), and without this a new
/// connection kept the deepest pages any earlier user of its stack had
/// touched: a soak with hostile clients saw RSS creep 2 MiB in 200 s.
///
/// Usually the kernel holds none of those pages, and asking it
/// ([`residency`](super::residency), about 1 µs) is all this does: giving
/// back a range it holds nothing of can still flush (below), when that
/// empties a page table. Dropping a resident page always does: the kernel must flush
/// it from the TLB of every CPU running another thread of the process (the
/// other workers), by inter-processor interrupt, about 18 µs in a VM
/// (`scripts/madvise_cost.c`). That is why the bottom page is left alone:
/// `generator` keeps its overflow sentinel there, so the page is resident
/// whenever a stack comes back from the pool. Until 2026-12-07 it was
/// given back here and the sentinel written back when the coroutine ended,
/// 4 KiB less per idle connection for two such flushes per connection,
/// which under connection churn took half the server's CPU.
///
/// Everything below the stack pointer is dead here, so this changes nothing
/// the coroutine can observe: the pages read back as zeros if it goes that
/// deep.
pub(crate) fn release_unused_pages() {
    /// Bytes under the stack pointer that stay mapped: more than this
    /// function's frame and what it calls take, `madvise` and before it
    /// `residency::pages` (an allocation and a `pread`, a few hundred
    /// bytes; `sp()` is the address of one of this frame's locals). The
    /// frames of `pages` are dead when `madvise` runs, so reaching below
    /// would not be unsound, but the page they touched would be seen held
    /// and given back, a TLB flush, at every coroutine start: `perf` under
    /// churn shows `madvise` at 0.07 % of the server's samples, so they do
    /// not (docs/BENCHMARKS.md, "Connection churn, continued").
    const MARGIN: usize = 1024;
    let Some(b) = current_bounds() else { return };
    // An odd size in words asks `generator` to fill the whole stack with
    // the sentinel and measure its use (printed when the coroutine ends):
    // leave such stacks alone.
    if may::coroutine::current().stack_size() & 1 == 1 {
        return;
    }
    let page = super::page_size();
    let here = sp();
    // Given back: [from, top), the pages above the bottom one, and wholly
    // more than MARGIN and the kept call depth below here.
    let keep = KEEP_BELOW_ENTRY.load(Ordering::Relaxed);
    let top = here.saturating_sub(MARGIN + keep) & !(page - 1);
    let from = b.low + page;
    if b.low % page != 0 || here < b.low || here >= b.high || top <= from {
        return;
    }
    // Usually the kernel holds none of it, and giving back such a range can
    // still flush every other CPU's TLB (when it empties a page table; 6 %
    // of new coroutines under connection churn): ask first, and give back
    // only from the lowest page it holds.
    let held = super::residency::pages(from, (top - from) / page);
    let from = match held.as_deref().map(|p| p.iter().position(|&p| p != super::residency::Page::Absent)) {
        Some(None) => return,
        Some(Some(i)) => from + i * page,
        None => from,
    };
    // [from, top) is part of this coroutine's own stack, mapped read-write
    // (the guard page lies below `low`, checked by the
    // `stack_bounds_match_proc_maps` test), above its bottom page and at
    // least MARGIN below the stack pointer, in whole kernel pages: no live
    // frame is there, and nothing else runs on this stack.
    // SAFETY: so dropping the range (it reads back as zeros) is sound.
    unsafe { libc::madvise(from as *mut libc::c_void, top - from, libc::MADV_DONTNEED) };
}

/// Bytes below a new coroutine's entry frame that [`release_unused_pages`]
/// leaves resident: 0 while every guest call runs on a worker's call stack,
/// [`COROUTINE_CALL_DEPTH`] once a guest calls on its coroutines' own
/// stacks ([`keep_call_depth`]).
static KEEP_BELOW_ENTRY: AtomicUsize = AtomicUsize::new(0);

/// What a guest call on a coroutine's own stack takes below the entry frame
/// (WAMR, the guest and an import: 5–6 KiB; imports that format more take
/// more), kept resident from one user of a pooled stack to the next once
/// such calls happen: dropping it at every new connection would cost a TLB
/// flush each, and faulting it in again.
const COROUTINE_CALL_DEPTH: usize = 16 * 1024;

/// Called when a guest's calls will run on coroutine stacks
/// (`CallStack::Coroutine`): from then on [`release_unused_pages`] keeps
/// their depth. Process-wide, and never lowered: it only decides how much
/// of a reused stack stays resident, never what a coroutine sees.
pub(crate) fn keep_call_depth() {
    KEEP_BELOW_ENTRY.fetch_max(COROUTINE_CALL_DEPTH, Ordering::Relaxed);
}

/// Bounds of the current coroutine's stack, if it was started by
/// `coro::spawn`.
pub fn current_bounds() -> Option<StackBounds> {
    if !may::coroutine::is_coroutine() {
        return None;
    }
    STACK.with(|s| s.get())
}

/// Bytes kept free below the boundary for WAMR's overflow handling and for
/// host imports running near the limit.
pub const GUARD: usize = 24 * 1024;

/// A stack and the boundary to give WAMR for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CurrentStack {
    /// Address range `[low, high)` of the stack.
    pub low: usize,
    pub high: usize,
    /// The boundary for `wasm_runtime_set_native_stack_boundary` (0 = WAMR's
    /// own pthread-based default).
    pub boundary: usize,
}

/// The stack of the caller: a worker's call stack (`call_stack.rs`), a
/// coroutine's own stack or an OS thread's.
pub(crate) fn current() -> Result<CurrentStack> {
    if let Some((low, high)) = super::call_stack::containing(sp()) {
        return Ok(CurrentStack { low, high, boundary: low + GUARD });
    }
    if may::coroutine::is_coroutine() {
        let b = current_bounds().ok_or(Error::UnknownStack)?;
        return Ok(CurrentStack { low: b.low, high: b.high, boundary: b.low + GUARD });
    }
    let (low, high) = thread_stack();
    Ok(CurrentStack { low, high, boundary: 0 })
}

/// Runs `f` (an instantiation or a spawn) with WAMR's stack boundary for exec
/// envs that have none of their own set to the current coroutine stack's.
///
/// Instantiating runs the module's start function on a temporary exec env,
/// and spawning runs it on the parent's; WAMR takes the limit for those from
/// the OS thread's stack, which on a coroutine is the wrong stack: a start
/// function that recursed deeply would run off the coroutine's stack and
/// abort the process instead of trapping. WAMR is patched
/// (`wamr/patches/0500-coroutine-stack-boundary.patch`) to read a
/// thread-local boundary first; it is set here for the length of `f` and
/// cleared afterwards, also when `f` unwinds. On an OS thread, or in a
/// coroutine whose bounds are unknown (not started by `coro::spawn`, where
/// calls are refused anyway), `f` runs as it would without this.
pub(crate) fn with_coroutine_boundary<R>(f: impl FnOnce() -> R) -> R {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            // SAFETY: the setter only stores a thread-local pointer; NULL
            // restores WAMR's own (pthread-based) boundary.
            unsafe { super::sys::os_thread_set_stack_boundary_override(std::ptr::null_mut()) };
        }
    }
    // The boundary calls on this stack get (`current`): a worker's call
    // stack (an env made for `CallStack::Worker`) or a coroutine's; NULL on
    // a thread or a coroutine of unknown bounds. Instantiating and spawning do not yield unless a host function the
    // start function calls does; if one did and the coroutine resumed on
    // another worker, the rest of the start function would run with that
    // worker's own boundary (as without this), and the value left on the
    // first worker is replaced by the next instantiation there (every one
    // sets it, NULL included) and read by nothing else: every call we make
    // sets its env's own boundary first (`ExecEnv::bind_stack`).
    let boundary = current().map_or(std::ptr::null_mut(), |s| s.boundary as *mut u8);
    // SAFETY: the setter only stores a thread-local pointer, read by WAMR on
    // this thread while `f` runs; `Clear` resets it before we return.
    unsafe { super::sys::os_thread_set_stack_boundary_override(boundary) };
    let _clear = Clear;
    f()
}

/// The address of a local: where the stack pointer is.
#[inline(always)]
pub(crate) fn sp() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// This OS thread's own stack. Never inlined: a thread-local read inlined
/// into code that yields could use the address computed on another thread
/// (see `call_stack::claim`).
#[inline(never)]
fn thread_stack() -> (usize, usize) {
    thread_local! {
        static BOUNDS: (usize, usize) = query_thread_stack();
    }
    BOUNDS.with(|b| *b)
}

fn query_thread_stack() -> (usize, usize) {
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread; we read
    // it with pthread_attr_getstack and destroy it. On failure we return an
    // empty range, which only makes every call re-query (correct, slower).
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (0, 0);
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return (0, 0);
        }
        (addr as usize, addr as usize + size)
    }
}
