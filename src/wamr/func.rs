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
    pub(super) inst: sys::wasm_module_inst_t,
    pub(super) name: Arc<str>,
    pub(super) ty: FuncType,
}

// SAFETY: a function instance is immutable data of its module instance; the
// pointer is only dereferenced by WAMR during a call on an env of that same
// instance, which ExecEnv::call checks (`inst` must match).
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
