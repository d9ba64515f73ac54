//! The native stack boundary WAMR must use for the calling context.
//!
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
    let page = 4096;
    let high = (sp + page - 1) & !(page - 1);
    let low = high.saturating_sub(bytes);
    STACK.with(|s| s.set(Some(StackBounds { low, high })));
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

/// The stack of the caller.
pub(crate) fn current() -> Result<CurrentStack> {
    if may::coroutine::is_coroutine() {
        let b = current_bounds().ok_or(Error::UnknownStack)?;
        return Ok(CurrentStack { low: b.low, high: b.high, boundary: b.low + GUARD });
    }
    let (low, high) = thread_stack();
    Ok(CurrentStack { low, high, boundary: 0 })
}

/// The address of a local: where the stack pointer is.
#[inline(always)]
pub(crate) fn sp() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

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
