//! The process-wide WAMR runtime.
//!
//! WAMR keeps global state: its allocator, the table of registered natives,
//! the list of clusters, and `max_thread_num`, which it reads whenever a
//! cluster is created (every exec env belongs to one). Raising it after a
//! cluster exists made WAMR read out of bounds (`docs/wamr-notes.md`), so this module
//! owns all of it: [`Runtime::init`] runs `wasm_runtime_full_init` exactly
//! once, with settings that can never change afterwards. A second `init` with
//! the same settings returns the same runtime; with other settings it is an
//! error.
//!
//! What WAMR does to the process at init, and where it is handled:
//! * its printing goes through `wamr/src/log_bridge.c` to `tracing`
//!   (target `wamr`), or nowhere with [`WamrLog::Silent`];
//! * with the thread manager built in, WAMR installs a `SIGUSR1` handler for
//!   waking blocked threads (`os_blocking_op_init`); this crate never sends
//!   that signal, and applications should not use `SIGUSR1` themselves;
//! * hardware bound checks are off (they cannot work on coroutine stacks), so
//!   WAMR installs no `SIGSEGV` handler; bounds are checked in software.
//!
//! The runtime is never torn down: `wasm_runtime_destroy` while any module or
//! env is alive would be undefined behaviour, and a process-lifetime runtime
//! costs nothing.
use std::ffi::CString;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::sys;
use crate::error::{Error, Result};

/// What to do with the text WAMR prints itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WamrLog {
    /// Emit each line through `tracing` (target `wamr`). The default.
    Tracing,
    /// Drop it.
    Silent,
}

/// Settings fixed for the life of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// WAMR's `max_thread_num`: how many envs may be spawned from one parent
    /// (one cluster). Every instance's auxiliary (shadow) stack is divided into
    /// `envs_per_parent + 1` slots, independent instances included, so a large
    /// value starves clang/rustc guests of shadow stack. Default 16; 1 to
    /// [`MAX_ENVS_PER_PARENT`].
    pub envs_per_parent: u32,
    /// Where WAMR's own messages go. Default [`WamrLog::Tracing`].
    pub log: WamrLog,
    /// WAMR's verbosity (0 fatal … 4 verbose). Default 2 (warnings).
    pub log_level: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { envs_per_parent: 16, log: WamrLog::Tracing, log_level: 2 }
    }
}

impl fmt::Display for RuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "envs_per_parent={} log={:?} log_level={}", self.envs_per_parent, self.log, self.log_level)
    }
}

/// The largest [`RuntimeConfig::envs_per_parent`]: each env of a cluster
/// needs at least 256 bytes of the guest's shadow stack, which this many
/// slots leave only to a 16 MiB one.
pub const MAX_ENVS_PER_PARENT: u32 = 65535;

/// The initialised WAMR runtime. Obtain it with [`Runtime::init`] or
/// [`Runtime::get`]; it lives until the process exits.
#[derive(Debug)]
pub struct Runtime {
    config: RuntimeConfig,
}

/// The runtime, once [`Runtime::init`] has finished (its lock is held for
/// the whole of init, so nobody sees a runtime whose built-in imports are
/// not registered yet).
static RUNTIME: Mutex<Option<&'static Runtime>> = Mutex::new(None);

/// Set once `wasm_runtime_full_init` succeeded (WAMR may allocate).
static WAMR_INITIALISED: AtomicBool = AtomicBool::new(false);

/// Whether WAMR itself is initialised (possibly still inside `init`).
pub(crate) fn wamr_initialised() -> bool {
    WAMR_INITIALISED.load(Ordering::Acquire)
}

impl Runtime {
    /// Initialises WAMR with `config`, or returns the runtime if it was
    /// already initialised with the same settings.
    pub fn init(config: RuntimeConfig) -> Result<&'static Runtime> {
        let mut slot = RUNTIME.lock();
        if let Some(rt) = *slot {
            if rt.config == config {
                return Ok(rt);
            }
            return Err(Error::RuntimeConfigConflict {
                existing: rt.config.to_string(),
                requested: config.to_string(),
            });
        }
        if config.envs_per_parent == 0 {
            return Err(Error::Config("envs_per_parent must be at least 1".into()));
        }
        // WAMR divides every instance's aux stack by `max_thread_num + 1`
        // in 32 bits: u32::MAX wrapped that to 0 and killed the process
        // (SIGFPE) at the first env. Long before that no guest gets a slot
        // of WAMR's 256-byte minimum (a 64 KiB shadow stack has room for
        // 255 envs), and WAMR allocates 9 bytes a slot in every instance.
        if config.envs_per_parent > MAX_ENVS_PER_PARENT {
            return Err(Error::Config(format!(
                "envs_per_parent must be at most {MAX_ENVS_PER_PARENT}, not {}",
                config.envs_per_parent
            )));
        }
        if config.log_level > 4 {
            return Err(Error::Config("log_level must be 0..=4".into()));
        }
        if !super::log::bridge_linked() {
            return Err(Error::RuntimeInit("WAMR log bridge missing".into()));
        }
        super::log::set_tracing(config.log == WamrLog::Tracing);

        let mut args = sys::RuntimeInitArgs {
            mem_alloc_type: sys::Alloc_With_System_Allocator,
            max_thread_num: config.envs_per_parent,
            running_mode: sys::Mode_Interp,
            ..Default::default()
        };
        // SAFETY: `args` is a fully initialised RuntimeInitArgs (Default zeroes
        // it, as WAMR's samples memset it); no natives are passed here. We hold
        // RUNTIME's lock, so this runs once per process.
        let ok = unsafe { sys::wasm_runtime_full_init(&mut args) };
        if !ok {
            return Err(Error::RuntimeInit("wasm_runtime_full_init returned false".into()));
        }
        WAMR_INITIALISED.store(true, Ordering::Release);
        // SAFETY: plain setters of WAMR globals, called after init and before
        // any cluster exists (we still hold the lock; no env was created yet).
        unsafe {
            sys::wasm_runtime_set_max_thread_num(config.envs_per_parent);
            sys::wasm_runtime_set_log_level(config.log_level as sys::log_level_t);
            // Process-wide, owned here: counts memory.grow refused by an
            // env's cap or the guest-memory budget (state.rs).
            sys::wasm_runtime_set_enlarge_mem_error_callback(
                Some(super::exec_env::on_grow_refused),
                std::ptr::null_mut(),
            );
        }
        // Still under the lock: a concurrent `get` waits until the built-in
        // imports exist, so no module can load without them.
        super::host::register_builtin_natives()?;
        super::start_budget::install();
        let rt: &'static Runtime = Box::leak(Box::new(Runtime { config }));
        *slot = Some(rt);
        Ok(rt)
    }

    /// The runtime, initialised with default settings if nobody did it yet.
    pub fn get() -> Result<&'static Runtime> {
        if let Some(rt) = *RUNTIME.lock() {
            return Ok(rt);
        }
        match Runtime::init(RuntimeConfig::default()) {
            // Someone else raced us with other settings: theirs stand.
            Err(Error::RuntimeConfigConflict { .. }) => Ok(RUNTIME.lock().expect("set")),
            other => other,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Registers a host function that guests can import. See
    /// [`HostFunc`](super::host::HostFunc). Must happen before loading modules
    /// that import it: WAMR links imports at load time.
    pub fn register(&self, func: super::host::HostFunc) -> Result<()> {
        super::host::register(func)
    }
}

/// `CString` from a Rust string, reporting interior NULs as a config error.
pub(crate) fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Config(format!("name contains NUL: {s:?}")))
}
