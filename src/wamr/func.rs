//! An exported function of one instance, looked up by [`ExecEnv::func`].
//!
//! [`ExecEnv::func`]: super::ExecEnv::func
use std::sync::Arc;

use super::module::FuncType;
use super::sys;

/// An exported function of one particular instance.
#[derive(Debug, Clone)]
pub struct Func {
    pub(super) raw: sys::wasm_function_inst_t,
    /// The id of the [`ExecEnv`](super::ExecEnv) it was looked up on, never
    /// reused in the process. Not the instance's address: an instance
    /// destroyed and another made can share one, and a `Func` outlives its
    /// env (it borrows nothing), so a stale one would pass that check and
    /// hand WAMR a function instance that was freed with its instance.
    pub(super) env: u64,
    pub(super) name: Arc<str>,
    pub(super) ty: FuncType,
}

// The pointer is only dereferenced by WAMR during a call on the very env it
// was looked up on (alive: it is making the call); call_cells checks `env`.
// SAFETY: so it is immutable data of a live instance, readable anywhere.
unsafe impl Send for Func {}
// SAFETY: see Send.
unsafe impl Sync for Func {}

impl Func {
    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The signature.
    pub fn ty(&self) -> &FuncType {
        &self.ty
    }
}
