//! Stopping a running call from another thread: call budgets (the
//! watchdog), shutdown, and dooming an env its holder must drop.
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::sys;

/// Lets another thread stop a running call (`wasm_runtime_terminate`) without
/// racing the env's destruction or a later call.
#[derive(Debug)]
pub struct InterruptHandle {
    pub(super) state: Mutex<InterruptState>,
    /// `state.deadline` while a call is in flight, as [`stamp`] nanoseconds;
    /// 0 when nothing is armed. Written under the lock with the state; read
    /// without it by the watchdog, which locks only an env whose deadline has
    /// passed (it used to lock every env on every tick, taking each env's
    /// cache line away from the worker that runs it).
    due: AtomicU64,
    pub(super) hit: AtomicBool,
    /// Why the last terminate happened: BUDGET or SHUTDOWN.
    pub(super) reason: AtomicU8,
    /// Set by `doom`: every later call fails, so the holder drops the env.
    pub(super) doomed: AtomicBool,
    /// The instruction budget and its re-arm request (metering.rs).
    pub(super) metering: super::metering::Metering,
}

/// Nanoseconds from the first stamp taken in the process to `t`, plus one (so
/// never 0, which means "no deadline").
fn stamp(t: Instant) -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    t.saturating_duration_since(*EPOCH).as_nanos() as u64 + 1
}

/// `reason`: the call ran past its deadline.
pub(super) const BUDGET: u8 = 1;
/// `reason`: stopped at shutdown or by `doom`.
const SHUTDOWN: u8 = 2;

#[derive(Debug)]
pub(super) struct InterruptState {
    /// The instance while the env is alive; 0 once it is destroyed.
    pub(super) inst: usize,
    /// Whether a call is in flight.
    pub(super) in_call: bool,
    /// Deadline of the call in flight, if it has a budget.
    pub(super) deadline: Option<Instant>,
    /// The budget that deadline came from, for the error message.
    pub(super) budget: Duration,
}

impl InterruptHandle {
    /// A handle for a live instance, no call in flight.
    pub(super) fn new(inst: sys::wasm_module_inst_t) -> InterruptHandle {
        InterruptHandle {
            state: Mutex::new(InterruptState {
                inst: inst as usize,
                in_call: false,
                deadline: None,
                budget: Duration::ZERO,
            }),
            due: AtomicU64::new(0),
            hit: AtomicBool::new(false),
            reason: AtomicU8::new(0),
            doomed: AtomicBool::new(false),
            metering: Default::default(),
        }
    }

    /// Terminates the call in flight if its deadline has passed. Returns
    /// whether it did. Safe to call from any thread at any time; takes the
    /// env's lock only when the deadline looks due.
    pub fn expire_if_due(&self, now: Instant) -> bool {
        // A stale read is harmless: a deadline armed since is seen on the next
        // scan, and one cleared since is checked again under the lock.
        let due = self.due.load(Ordering::Relaxed);
        if due == 0 || due > stamp(now) {
            return false;
        }
        let mut st = self.state.lock();
        match st.deadline {
            Some(d) if d <= now && st.in_call => self.terminate_locked(&mut st, BUDGET),
            _ => false,
        }
    }

    /// Terminates the call in flight, whatever its budget (used at shutdown
    /// for guests that do not return). Returns whether a call was stopped.
    pub fn terminate_in_flight(&self) -> bool {
        let mut st = self.state.lock();
        st.in_call && self.terminate_locked(&mut st, SHUTDOWN)
    }

    /// Arms (or, with `None`, disarms) a deadline for the call in flight, from
    /// inside it: queue mode's `wait_msg` gives the guest `budget` to handle
    /// each event. It replaces the deadline the call began with, if any.
    pub fn set_deadline(&self, budget: Option<Duration>) {
        let mut st = self.state.lock();
        self.arm_locked(&mut st, budget);
    }

    /// The deadline armed now, if any (for a caller that wants to arm it
    /// again later, with [`restore_deadline`](Self::restore_deadline)).
    pub fn deadline(&self) -> Option<(Instant, Duration)> {
        let st = self.state.lock();
        st.deadline.map(|d| (d, st.budget))
    }

    /// Arms a deadline taken earlier with [`deadline`](Self::deadline): the
    /// same instant, so time already spent still counts (queue mode's
    /// `wait_msg` peeking at an event it handed out before).
    pub fn restore_deadline(&self, deadline: Option<(Instant, Duration)>) {
        let mut st = self.state.lock();
        st.budget = deadline.map_or(Duration::ZERO, |(_, b)| b);
        self.set_deadline_locked(&mut st, deadline.map(|(d, _)| d));
    }

    /// A call starts, with `budget` (or none); false, and nothing marked, if
    /// the env was doomed. `doom` sets `doomed` before it takes the lock to
    /// stop a call in flight, so either this sees `doomed` or `doom` sees the
    /// call.
    pub(super) fn begin_call(&self, budget: Option<Duration>) -> bool {
        let mut st = self.state.lock();
        if self.doomed.load(Ordering::Acquire) {
            return false;
        }
        st.in_call = true;
        self.arm_locked(&mut st, budget);
        true
    }

    /// The call has returned.
    pub(super) fn end_call(&self) {
        let mut st = self.state.lock();
        st.in_call = false;
        self.set_deadline_locked(&mut st, None);
    }

    fn arm_locked(&self, st: &mut InterruptState, budget: Option<Duration>) {
        st.budget = budget.unwrap_or_default();
        self.set_deadline_locked(st, budget.map(|b| Instant::now() + b));
    }

    /// The one place `state.deadline` changes, so that `due`, its copy for
    /// the watchdog's scan, always matches it.
    fn set_deadline_locked(&self, st: &mut InterruptState, deadline: Option<Instant>) {
        st.deadline = deadline;
        self.due.store(deadline.map_or(0, stamp), Ordering::Relaxed);
    }

    fn terminate_locked(&self, st: &mut InterruptState, reason: u8) -> bool {
        if st.inst == 0 {
            return false;
        }
        self.reason.store(reason, Ordering::Release);
        self.hit.store(true, Ordering::Release);
        self.set_deadline_locked(st, None);
        st.in_call = false;
        // ExecEnv::drop zeroes `inst` under this lock before destroying it.
        // SAFETY: so a non-zero `inst` is alive; wasm_runtime_terminate only
        // sets this instance's exception and flags (patch 0700: not its
        // spawned siblings').
        unsafe { sys::wasm_runtime_terminate(st.inst as sys::wasm_module_inst_t) };
        true
    }

    /// Whether a call is in flight.
    pub fn in_call(&self) -> bool {
        self.state.lock().in_call
    }

    /// Whether [`doom`](Self::doom) was called.
    pub fn is_doomed(&self) -> bool {
        self.doomed.load(Ordering::Acquire)
    }

    /// Marks the env for destruction: a call in flight is terminated and
    /// every later call fails with [`Error::Poisoned`](crate::Error::Poisoned), so whoever holds the
    /// env drops it. (The env belongs to its holder; this asks, it does not
    /// free under it.)
    pub fn doom(&self) {
        self.doomed.store(true, Ordering::Release);
        self.terminate_in_flight();
    }
}
