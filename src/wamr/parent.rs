//! Parent instances that private envs are spawned from
//! (`wasm_runtime_spawn_exec_env`): one WAMR cluster each.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::exec_env::{ExecEnv, InstanceConfig, Owner};
use super::module::Module;
use super::sys;
use crate::error::{Error, Result};

/// A parent instance that envs are spawned from (one WAMR cluster).
pub struct ParentEnv {
    env: Mutex<ExecEnv>,
    pub(super) lock: Mutex<()>,
    pub(super) children: AtomicUsize,
    capacity: usize,
}

impl std::fmt::Debug for ParentEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParentEnv").field("children", &self.children()).field("capacity", &self.capacity).finish()
    }
}

impl ParentEnv {
    /// Creates a parent for `module`. Fails with a clear message if the
    /// module lacks what spawning needs.
    pub fn new(module: &Module, cfg: InstanceConfig) -> Result<Arc<ParentEnv>> {
        module.check_spawnable()?;
        let env = ExecEnv::new(module, cfg)?;
        let capacity = super::runtime::Runtime::get()?.config().envs_per_parent as usize;
        Ok(Arc::new(ParentEnv { env: Mutex::new(env), lock: Mutex::new(()), children: 0.into(), capacity }))
    }

    /// Spawns a private env (`wasm_runtime_spawn_exec_env`).
    pub fn spawn(self: &Arc<Self>) -> Result<ExecEnv> {
        let _g = self.lock.lock();
        if self.children.load(Ordering::Acquire) >= self.capacity {
            return Err(Error::TooManyEnvs { what: "envs_per_parent", limit: self.capacity });
        }
        let parent = self.env.lock();
        // The child's start function runs on the parent env, which is never
        // called and so has no boundary of its own: WAMR takes the one
        // `with_coroutine_boundary` sets for the stack we are on.
        let raw = super::stack::with_coroutine_boundary(|| {
            // The parent env is never called, so no call is in flight on it.
            // SAFETY: it is alive (owned by self), spawns are serialised by
            // `lock`; the start function in here is bounded by our stack.
            unsafe { sys::wasm_runtime_spawn_exec_env(parent.raw) }
        });
        if raw.is_null() {
            return Err(Error::ExecEnv(
                "wasm_runtime_spawn_exec_env returned NULL (aux stack slots exhausted, or the \
                 cluster has a pending exception)"
                    .into(),
            ));
        }
        // SAFETY: `raw` is a live spawned env.
        let inst = unsafe { sys::wasm_runtime_get_module_inst(raw) };
        self.children.fetch_add(1, Ordering::AcqRel);
        Ok(ExecEnv::wrap(raw, inst, Owner::Spawned { parent: Arc::clone(self) }))
    }

    /// A copy of the parent's memory (`None` if shared or absent). The
    /// parent is never called, so this is the module's initial memory.
    pub(crate) fn capture_memory(&self) -> Option<super::state::MemoryImage> {
        self.env.lock().capture_memory()
    }

    /// A copy of the parent's globals: the module's initial ones (see
    /// `capture_memory`).
    pub(crate) fn snapshot_globals(&self) -> super::state::GlobalsSnapshot {
        self.env.lock().snapshot_globals()
    }

    /// Envs currently spawned from this parent.
    pub fn children(&self) -> usize {
        self.children.load(Ordering::Acquire)
    }

    /// How many children fit (WAMR's `max_thread_num`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
