//! The call budget for the functions WAMR runs while it instantiates a
//! module: the start function, and `_initialize`, `__post_instantiate` or
//! `__wasm_call_ctors` when exported.
//!
//! They run inside `wasm_runtime_instantiate_ex`, which hands back the
//! instance only when they are done, so the watchdog (`watchdog.rs`) cannot
//! reach them: a start function that never returned hung whoever was
//! instantiating (the server's start, a reload, each new env of a
//! connection) forever, whatever the budget. WAMR patch 0600 calls
//! [`hook`] with the instance just before they run and once they are done;
//! while they run, the instance is on this module's list with its deadline,
//! and one thread (started at the first use) terminates it when the
//! deadline passes. Entries are added and removed, and instances
//! terminated, under one lock, so an instance is never terminated after its
//! functions are done.
use std::cell::Cell;
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::sys;

thread_local! {
    /// The budget [`run`] gives the instantiation running on this thread.
    static BUDGET: Cell<Option<Duration>> = const { Cell::new(None) };
    /// The entry [`hook`] made for it, if any.
    static ENTRY: Cell<Option<u64>> = const { Cell::new(None) };
    /// Whether its functions were stopped for the budget.
    static STOPPED: Cell<bool> = const { Cell::new(false) };
}

/// Instances whose instantiation functions run under a budget.
struct Watched {
    next_id: u64,
    /// (entry id, instance, deadline)
    entries: Vec<(u64, usize, Instant)>,
    /// Entries terminated for their deadline and not yet collected.
    stopped: Vec<u64>,
    thread_started: bool,
}

static WATCHED: LazyLock<(Mutex<Watched>, Condvar)> = LazyLock::new(|| {
    (
        Mutex::new(Watched { next_id: 0, entries: Vec::new(), stopped: Vec::new(), thread_started: false }),
        Condvar::new(),
    )
});

/// Installs [`hook`] in WAMR (once, from `Runtime::init`).
pub(crate) fn install() {
    // SAFETY: stores a function pointer WAMR calls on instantiating threads;
    // `hook` is a plain function that lives for the whole process.
    unsafe { sys::wcoro_set_post_instantiate_hook(Some(hook)) };
}

/// Runs `f` (which instantiates a module on this thread) with the functions
/// instantiation runs held to `budget` (`None`: unbounded). Returns what
/// `f` returned, and whether they were stopped for overrunning it.
pub(crate) fn run<R>(budget: Option<Duration>, f: impl FnOnce() -> R) -> (R, bool) {
    let before = enter(budget);
    let r = f();
    (r, leave(before))
}

/// Gives this thread's instantiations `budget`; returns the one before.
/// Never inlined, nor is [`leave`]: `run` is, into coroutines that move
/// between threads at their yields, and the compiler may compute a
/// thread-local's address once per function (see `call_stack::claim`).
#[inline(never)]
fn enter(budget: Option<Duration>) -> Option<Duration> {
    STOPPED.set(false);
    BUDGET.replace(budget)
}

/// Restores the budget `enter` replaced; whether functions were stopped.
#[inline(never)]
fn leave(before: Option<Duration>) -> bool {
    BUDGET.set(before);
    STOPPED.replace(false)
}

/// Called by WAMR (patch 0600) on the instantiating thread.
unsafe extern "C" fn hook(inst: sys::wasm_module_inst_t, begin: bool) {
    let (lock, wake) = &*WATCHED;
    if begin {
        let Some(budget) = BUDGET.get() else { return };
        let mut w = lock.lock().unwrap_or_else(|e| e.into_inner());
        let id = w.next_id;
        w.next_id += 1;
        w.entries.push((id, inst as usize, Instant::now() + budget));
        ENTRY.set(Some(id));
        if !w.thread_started {
            let spawned = std::thread::Builder::new().name("wamr-coro-start-budget".into()).spawn(watch);
            w.thread_started = spawned.is_ok();
        }
        wake.notify_one();
    } else if let Some(id) = ENTRY.take() {
        let mut w = lock.lock().unwrap_or_else(|e| e.into_inner());
        w.entries.retain(|e| e.0 != id);
        if let Some(i) = w.stopped.iter().position(|&s| s == id) {
            w.stopped.swap_remove(i);
            STOPPED.set(true);
        }
    }
}

/// The thread that terminates instances past their deadline.
fn watch() {
    let (lock, wake) = &*WATCHED;
    let mut w = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        let mut i = 0;
        while i < w.entries.len() {
            let (id, inst, deadline) = w.entries[i];
            if deadline <= now {
                // SAFETY: the entry is removed (under this lock) by the hook's
                // second call, before instantiation returns, so the instance
                // is alive; wasm_runtime_terminate only sets its exception.
                unsafe { sys::wasm_runtime_terminate(inst as sys::wasm_module_inst_t) };
                w.entries.swap_remove(i);
                w.stopped.push(id);
            } else {
                i += 1;
            }
        }
        let next = w.entries.iter().map(|e| e.2).min();
        w = match next {
            Some(d) => wake.wait_timeout(w, d.saturating_duration_since(now)).unwrap_or_else(|e| e.into_inner()).0,
            None => wake.wait(w).unwrap_or_else(|e| e.into_inner()),
        };
    }
}
