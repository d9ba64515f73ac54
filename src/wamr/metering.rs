//! The deterministic instruction budget (WAMR's instruction metering).
//!
//! WAMR counts the fast interpreter's internal ops (a no-op call is about 2,
//! one iteration of a tight loop about 4 — docs/wamr-notes.md) and stops a call
//! whose count reaches its limit with "instruction limit exceeded". Unlike the
//! time budget it needs no watchdog thread, and the same guest input always
//! stops at the same place.
//!
//! * [`ExecEnv::set_instruction_budget`] sets N for every call on the env;
//!   `ExecEnv::call_cells` arms it (`wasm_runtime_set_instruction_count_limit`)
//!   before each call, so each call starts with a full budget.
//! * Queue mode's guest runs one long `run` call and takes events from the
//!   `wait_msg` import: [`InterruptHandle::rearm_instructions`], called from
//!   inside a host function, gives the guest a fresh N when that host function
//!   returns (wamr/patches/0100-instruction-budget-rearm.patch makes WAMR's
//!   interpreter read the count back after every native call).
//! * A call stopped this way fails with [`Error::InstructionBudgetExceeded`]
//!   and leaves the env unusable like any trap.
//!
//! AOT-compiled code is not metered by WAMR 2.4.3 (only the interpreters
//! count); for AOT guests the time budget is what stops a runaway call.
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::exec_env::ExecEnv;
use super::interrupt::InterruptHandle;
use super::sys;
use crate::error::Error;

/// WAMR's exception text when the limit is reached.
const EXCEEDED: &str = "Exception: instruction limit exceeded";

/// The budget of one env and the pending re-arm request.
#[derive(Debug, Default)]
pub(crate) struct Metering {
    /// Instructions per call; 0 = unmetered.
    budget: AtomicU32,
    /// Set by `rearm_instructions`, consumed when the host function returns.
    rearm: AtomicBool,
}

impl Metering {
    fn limit(&self) -> i32 {
        match self.budget.load(Ordering::Relaxed) {
            0 => -1,
            n => n as i32,
        }
    }
}

impl ExecEnv {
    /// Instructions (WAMR's counted ops) each call may execute; `None` or 0 =
    /// unlimited. Values above `i32::MAX` (WAMR's counter type) are capped.
    pub fn set_instruction_budget(&mut self, budget: Option<u32>) {
        let n = budget.unwrap_or(0).min(i32::MAX as u32);
        self.interrupt_handle().metering.budget.store(n, Ordering::Relaxed);
    }

    /// The instruction budget per call, if any.
    pub fn instruction_budget(&self) -> Option<u32> {
        match self.interrupt_handle().metering.budget.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}

impl InterruptHandle {
    /// Gives the call in flight a fresh instruction budget, effective when
    /// the host function that calls this returns to the guest. Meant for a
    /// host function of this env (queue mode's `wait_msg`: the budget is per
    /// event); from anywhere else it takes effect at the next host function
    /// return of the call in flight, or not at all. No-op without a budget.
    pub fn rearm_instructions(&self) {
        if self.metering.budget.load(Ordering::Relaxed) != 0 {
            self.metering.rearm.store(true, Ordering::Release);
        }
    }
}

/// Before a call: the full budget (or unlimited), no pending re-arm.
pub(super) fn arm(env: sys::wasm_exec_env_t, m: &Metering) {
    m.rearm.store(false, Ordering::Relaxed);
    // SAFETY: `env` is a live exec env and no call is running on it (the
    // caller is about to start one); this stores one integer in it.
    unsafe { sys::wasm_runtime_set_instruction_count_limit(env, m.limit()) };
}

/// After a call: unlimited again. Patch 0100 leaves the remaining count in
/// the exec env, and WAMR runs code outside `call_cells` on the same env
/// (`wasm_runtime_module_malloc` calling the guest's `malloc`), which must
/// not inherit it.
pub(super) fn disarm(env: sys::wasm_exec_env_t) {
    // SAFETY: `env` is live and its call has returned; one integer store.
    unsafe { sys::wasm_runtime_set_instruction_count_limit(env, -1) };
}

/// On a host function's way back to the guest: applies a pending re-arm.
pub(super) fn after_native(env: sys::wasm_exec_env_t, m: &Metering) {
    if m.rearm.swap(false, Ordering::AcqRel) {
        // SAFETY: called from the host-function trampoline, inside the call
        // running on `env`: the interpreter is suspended in this native and
        // reads the count back when it returns (patch 0100).
        unsafe { sys::wasm_runtime_set_instruction_count_limit(env, m.limit()) };
    }
}

/// The error for a call that failed with `message`, if metering stopped it.
pub(super) fn exceeded(m: &Metering, func: &str, message: &str) -> Option<Error> {
    let budget = m.budget.load(Ordering::Relaxed);
    (budget != 0 && message == EXCEEDED)
        .then(|| Error::InstructionBudgetExceeded { func: func.to_string(), budget: budget as u64 })
}
