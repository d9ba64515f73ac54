//! Coroutines that may call guests.
//!
//! WAMR protects against native stack overflow by comparing the stack pointer
//! with a boundary. By default that boundary comes from the OS thread's
//! pthread stack, which is wrong inside a `may` coroutine (its stack is a
//! separate mmap region): `docs/wamr-notes.md` records ~80 % spurious "native stack
//! overflow" failures, and no protection at all for the rest.
//!
//! `may` does not expose a coroutine's stack bounds, so [`spawn`] has them
//! recorded as the coroutine starts (`wamr::stack`, the one place that knows
//! about stack bounds). A call from a coroutine that was not started here
//! fails with [`Error::UnknownStack`] rather than run unprotected.
//!
//! [`configure`] owns `may`'s process-global settings (worker count, default
//! stack size); call it before the first coroutine.
use crate::error::{Error, Result};

pub use crate::wamr::stack::{current_bounds, StackBounds};

/// The `may` this crate runs on: 0.3.51 with seven changes of ours
/// (`vendor/README.md`). Use it for your own coroutines, channels and
/// sockets, so that they share the server's scheduler.
pub use may;

/// Default coroutine stack: 256 KiB. WAMR plus a host import used about
/// 3 KiB; host imports that format logs or write sockets use more, and
/// WAMR's stack guard (`wamr/stack.rs`, `GUARD`) is reserved below.
pub const DEFAULT_STACK_BYTES: usize = 256 * 1024;

/// Largest coroutine stack [`configure`] accepts: 64 MiB. Each coroutine
/// maps its stack when it is spawned, and `may` panics if the mapping fails.
pub const MAX_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Most workers [`configure`] accepts. Each is an OS thread with its own
/// epoll and eventfd; past a few per core they only add scheduling work.
pub const MAX_WORKERS: usize = 1024;

/// File descriptors each `may` worker opens when the scheduler starts: its
/// epoll and its eventfd.
pub(crate) const FDS_PER_WORKER: u64 = 2;

/// Descriptors a worker count must leave for the rest of a server to start:
/// stdio, the listener and its spare, the runtime's own (about 10 at rest).
/// Connections need more, and are refused while there are none
/// (`server/listener.rs`).
const FD_HEADROOM: u64 = 16;

/// Sets `may`'s worker count and default coroutine stack size. Process-wide;
/// takes effect for coroutines spawned afterwards (`may` reads the worker
/// count when its scheduler starts, at the first spawn).
///
/// Refuses a stack size other than the one coroutines already run with
/// (`may` pools their stacks), a stack outside 56 KiB..=[`MAX_STACK_BYTES`], 0 workers, more
/// than [`MAX_WORKERS`], and more than the soft
/// `RLIMIT_NOFILE` leaves descriptors for (two per worker, and 16 more):
/// `may` opens them when its scheduler starts and panics if it cannot.
pub fn configure(workers: usize, stack_bytes: usize) -> Result<()> {
    if workers == 0 {
        return Err(Error::Config("workers must be at least 1".into()));
    }
    if workers > MAX_WORKERS {
        return Err(Error::Config(format!("workers must be at most {MAX_WORKERS}, not {workers}")));
    }
    let need = workers as u64 * FDS_PER_WORKER + FD_HEADROOM;
    if let Some(limit) = crate::server::fd_limit().filter(|&l| l < need) {
        return Err(Error::Config(format!(
            "{workers} workers need {need} file descriptors ({FDS_PER_WORKER} each and {FD_HEADROOM} more), \
             but RLIMIT_NOFILE allows {limit}"
        )));
    }
    let words = stack_bytes / std::mem::size_of::<usize>();
    let fixed = FIXED_STACK_WORDS.load(std::sync::atomic::Ordering::Relaxed);
    if fixed != 0 && fixed != words {
        return Err(Error::Config(format!(
            "the coroutine stack size is fixed at {} bytes once coroutines have run, not {stack_bytes}: \
             may keeps finished coroutines' stacks for reuse, and a coroutine handed one of another size \
             would take the wrong bounds",
            fixed * std::mem::size_of::<usize>()
        )));
    }
    let min = crate::wamr::stack::GUARD + 32 * 1024;
    if stack_bytes < min {
        return Err(Error::Config(format!("coroutine stack must be at least {min} bytes")));
    }
    if stack_bytes > MAX_STACK_BYTES {
        return Err(Error::Config(format!("coroutine stack must be at most {MAX_STACK_BYTES} bytes")));
    }
    may::config().set_workers(workers).set_stack_size(words);
    Ok(())
}

/// `may`'s stack size (in words) when [`spawn`] first ran; 0 before. From
/// then on `may` hands out pooled stacks of that size whatever its setting
/// says, while a coroutine's bounds are computed from the setting: a
/// different size would put them off the real stack (WAMR's stack limit
/// with them), so [`configure`] refuses to change it.
static FIXED_STACK_WORDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Spawns a `may` coroutine that can call guests: it records its own stack
/// bounds first. Panics inside `f` unwind the coroutine (dropping every env
/// guard it holds) and surface through the join handle.
pub fn spawn<F, T>(f: F) -> may::coroutine::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // Boxed so that the closure `may` stores at the top of the coroutine
    // stack stays a few words, whatever `f` captures.
    let f: Box<dyn FnOnce() -> T + Send> = Box::new(f);
    if FIXED_STACK_WORDS.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        let _ = FIXED_STACK_WORDS.compare_exchange(
            0,
            may::config().get_stack_size(),
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    // may::coroutine::spawn is unsafe because a coroutine may migrate between
    // workers at any yield, so thread-locals are not coroutine-local.
    // SAFETY: this crate holds no TLS reference across a yield; the stack
    // bounds live in a coroutine-local.
    unsafe { may::coroutine::spawn(move || run_entry(f)) }
}

#[inline(never)]
fn run_entry<T>(f: Box<dyn FnOnce() -> T + Send>) -> T {
    crate::wamr::stack::record_coroutine_bounds();
    // Nothing of what the stack's last user in `may`'s pool touched stays
    // resident below this frame (the bottom page, `generator`'s, aside).
    crate::wamr::stack::release_unused_pages();
    f()
}
