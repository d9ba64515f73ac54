//! Instances and exec envs: where guest code runs.
//!
//! An [`ExecEnv`] is one WAMR exec env plus the instance it runs, owned by
//! one caller at a time. There are two ways to get one, behind one type:
//!
//! * [`ExecEnv::new`] — an independent instance (`wasm_runtime_instantiate`
//!   and `wasm_runtime_create_exec_env`). Its own cluster: a trap or
//!   terminate touches nothing else.
//! * [`ParentEnv::spawn`] — `wasm_runtime_spawn_exec_env` from a parent. For
//!   modules without shared memory WAMR instantiates a fresh instance (own
//!   memory and globals), but the env joins the parent's cluster. Upstream
//!   WAMR spreads a trap or terminate to every env of that cluster, and a
//!   clear on one to all; our patch 0700 keeps an exception in its own
//!   instance, so a spawned env's fault poisons that env only, like an
//!   independent one's (docs/wamr-notes.md).
//!
//! Every call sets WAMR's native stack boundary for the calling coroutine or
//! thread (see `stack.rs`) when the stack changed since the last call.
use std::cell::Cell;
use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::call_stack::CallStack;
use super::func::Func;
use super::interrupt::{InterruptHandle, BUDGET};
use super::memory::GuestMemory;
use super::module::{Module, ValType};
use super::parent::ParentEnv;
use super::sys;
use super::value::Val;
use super::{error_text, ERROR_BUF_LEN};
use crate::error::{Error, Result};

/// Per-instance settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceConfig {
    /// Size of WAMR's wasm operand stack per exec env, bytes. Default 16 KiB.
    pub stack_size: u32,
    /// Size of WAMR's app heap (used by `wasm_runtime_module_malloc`), bytes.
    /// WAMR skips it for modules that export their own `malloc`/`free`.
    /// Default 0.
    pub heap_size: u32,
    /// Cap on linear memory, in 64 KiB pages: `memory.grow` past it fails
    /// (returns -1). WAMR uses the smaller of this and the module's declared
    /// maximum, and never less than its initial size. 0 = the module's own
    /// maximum. Default 0.
    pub max_memory_pages: u32,
    /// Time budget of the functions instantiation runs (the start function,
    /// and `_initialize`, `__post_instantiate` or `__wasm_call_ctors` when
    /// exported): past it they are stopped and instantiating fails. `None`
    /// = unbounded. Default `None`.
    pub start_budget: Option<std::time::Duration>,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig { stack_size: 16 * 1024, heap_size: 0, max_memory_pages: 0, start_budget: None }
    }
}

pub(super) enum Owner {
    /// Independent: we own the instance and destroy it.
    Instance { _module: Module },
    /// Spawned from this parent; WAMR destroys the instance with the env.
    Spawned { parent: Arc<ParentEnv> },
}

/// A private exec env and its instance. `Send` (it moves with its
/// coroutine), not `Sync`: one caller at a time.
pub struct ExecEnv {
    pub(super) raw: sys::wasm_exec_env_t,
    pub(super) inst: sys::wasm_module_inst_t,
    /// Unique in the process (see `Func::env`): which `Func`s are ours.
    id: u64,
    owner: Owner,
    /// Stack range for which the native boundary is set.
    bound: Cell<(usize, usize)>,
    /// User data reachable by host functions (see host::Caller::data_mut):
    /// a `Box::into_raw` freed by `Drop`. WAMR's user data pointer and every
    /// access from Rust derive from it (a `Box` field would be re-borrowed
    /// uniquely on every use here, which host functions' writes through
    /// WAMR's copy of the pointer would then alias).
    data: NonNull<HostData>,
    interrupt: Arc<InterruptHandle>,
    budget: Option<Duration>,
    poisoned: Option<String>,
    /// Where calls from a coroutine run (`call_stack.rs`).
    call_stack: CallStack,
    /// The host stopped its call (shutdown, `Registry::interrupt_all`), so
    /// its guest did not fault: see [`cut_by_host`](Self::cut_by_host).
    cut: bool,
}

/// The slot WAMR's exec env user data points to.
pub(crate) struct HostData {
    pub(crate) value: Option<Box<dyn std::any::Any + Send>>,
    /// The env's charge against a memory budget, if it has one (settled
    /// around every call; WAMR's grow-failure callback reaches it too).
    pub(crate) account: Option<super::state::MemoryAccount>,
    /// The env's interrupt handle, for host functions' return path.
    pub(crate) interrupt: Arc<InterruptHandle>,
    /// The env's instance's default memory, looked up once.
    pub(crate) memory: super::memory::MemoryRef,
    /// The instance `memory` belongs to. A host call can come from another
    /// instance on this env: WAMR runs a spawned child's start function on
    /// its parent's exec env with the module instance swapped.
    pub(crate) inst: sys::wasm_module_inst_t,
}

// With hardware bound checks off a WAMR exec env has no thread-local state,
// and every call sets the native stack boundary for the stack it runs on.
// SAFETY: so an env may move between threads; ExecEnv is !Sync, so only one
// thread uses it at a time.
unsafe impl Send for ExecEnv {}

impl std::fmt::Debug for ExecEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecEnv").field("spawned", &self.is_spawned()).field("poisoned", &self.poisoned).finish()
    }
}

/// The per-env memory cap to give WAMR: `pages` (0 = the module's own), but
/// never above the maximum WAMR's loader left the module's memory (1 for a
/// memory it shrank to `__heap_base`). WAMR clamps to that maximum anyway,
/// with a warning per instantiation that costs a formatted log line and
/// ~3 KiB of the calling coroutine's stack, which then stays resident.
fn clamp_max_pages(module: &Module, pages: u32) -> u32 {
    let mut max = 0u32;
    // SAFETY: the module is loaded (kept alive by `module`); the accessor
    // only reads its memory descriptor and writes `max`.
    let known = unsafe { super::inst_access::wcoro_module_max_pages(module.inner.raw, &mut max) };
    if known && pages > max {
        max
    } else {
        pages
    }
}

/// Gives back the pages of a new env's wasm operand stack past its first
/// one. WAMR zeroes the whole stack when it creates the env (a `memset` of
/// `stack_size` bytes inside one `malloc` block), which makes all of it
/// resident; a call uses only its start. `MADV_DONTNEED` on the whole pages
/// inside the stack returns them, and they read back as zeros: exactly the
/// state the `memset` left. The allocator's own bookkeeping lies outside the
/// stack, at the start of the block, and is never touched.
fn release_operand_stack(raw: sys::wasm_exec_env_t) {
    let (mut bottom, mut top) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: `raw` is a live exec env; the accessor reads two of its fields.
    unsafe { super::inst_access::wcoro_exec_env_operand_stack(raw, &mut bottom, &mut top) };
    let page = super::page_size();
    // Keep the first (partial or whole) page: the first frames land there.
    let lo = (bottom as usize + page) & !(page - 1);
    let hi = top as usize & !(page - 1);
    if bottom.is_null() || hi <= lo {
        return;
    }
    // [lo, hi) is whole pages strictly inside the operand stack, which
    // belongs to this env alone and holds zeros only (no call has run on it
    // yet); heap pages from malloc are private anonymous memory. A failure
    // leaves the pages as they were (zeroed and resident).
    // SAFETY: so after MADV_DONTNEED they read as the same zeros.
    unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
}

/// Why a doomed env's calls fail.
const DOOMED: &str = "destroyed: its holder was asked to drop it";

impl ExecEnv {
    /// Instantiates `module` independently and creates its exec env.
    pub fn new(module: &Module, cfg: InstanceConfig) -> Result<ExecEnv> {
        let mut err = [0u8; ERROR_BUF_LEN];
        let args = sys::InstantiationArgs {
            default_stack_size: cfg.stack_size,
            host_managed_heap_size: cfg.heap_size,
            max_memory_pages: clamp_max_pages(module, cfg.max_memory_pages),
        };
        // The start function runs in here, on a temporary exec env: on a
        // coroutine, WAMR must check it against the coroutine's stack, and
        // it is held to the start budget (start_budget.rs).
        let (inst, stopped) = super::start_budget::run(cfg.start_budget, || {
            super::stack::with_coroutine_boundary(|| {
                // SAFETY: the module is alive (`Owner::Instance`); `args` and `err`
                // outlive the call, `err` is writable for its size; the start
                // function runs in here, bounded by the stack we are on.
                unsafe {
                    sys::wasm_runtime_instantiate_ex(
                        module.inner.raw,
                        &args,
                        err.as_mut_ptr() as *mut libc::c_char,
                        ERROR_BUF_LEN as u32,
                    )
                }
            })
        });
        if stopped {
            // Stopped just as its last function returned, the instance may
            // have been handed back all the same, with the terminate flag
            // set: it is no good either way.
            if !inst.is_null() {
                // SAFETY: `inst` was just created, is ours and has no env.
                unsafe { sys::wasm_runtime_deinstantiate(inst) };
            }
            let why = error_text(&err);
            return Err(Error::Instantiate(format!(
                "the module's start function (or another function run at instantiation) ran past \
                 the call budget of {} ms and was stopped{}",
                cfg.start_budget.unwrap_or_default().as_millis(),
                if why.is_empty() { String::new() } else { format!(" ({why})") }
            )));
        }
        if inst.is_null() {
            return Err(Error::Instantiate(error_text(&err)));
        }
        // SAFETY: `inst` was just created and is owned by us.
        let raw = unsafe { sys::wasm_runtime_create_exec_env(inst, cfg.stack_size) };
        if raw.is_null() {
            // SAFETY: `inst` is ours and has no env.
            unsafe { sys::wasm_runtime_deinstantiate(inst) };
            return Err(Error::ExecEnv(format!(
                "wasm_runtime_create_exec_env failed (the module's aux stack divided into \
                 envs_per_parent+1 = {} slots may be below WAMR's 256-byte minimum)",
                super::runtime::Runtime::get()?.config().envs_per_parent + 1
            )));
        }
        Ok(ExecEnv::wrap(raw, inst, Owner::Instance { _module: module.clone() }))
    }

    pub(super) fn wrap(raw: sys::wasm_exec_env_t, inst: sys::wasm_module_inst_t, owner: Owner) -> ExecEnv {
        release_operand_stack(raw);
        let interrupt = Arc::new(InterruptHandle::new(inst));
        // SAFETY: `inst` is the live instance `raw` runs.
        let memory = unsafe { super::memory::MemoryRef::of_instance(inst) };
        let data = Box::new(HostData { value: None, account: None, interrupt: Arc::clone(&interrupt), memory, inst });
        let data = NonNull::from(Box::leak(data));
        // SAFETY: `raw` is a live env owned by the ExecEnv being built; the
        // user data is the HostData allocation, which lives exactly as long
        // as the ExecEnv (freed by its Drop after the env is destroyed).
        unsafe { sys::wasm_runtime_set_user_data(raw, data.as_ptr() as *mut libc::c_void) };
        // Ids are never reused (2^64 envs would take centuries to make).
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        ExecEnv {
            raw,
            inst,
            id,
            owner,
            bound: Cell::new((0, 0)),
            data,
            interrupt,
            budget: None,
            poisoned: None,
            call_stack: CallStack::Coroutine,
            cut: false,
        }
    }

    fn data(&self) -> &HostData {
        // SAFETY: `data` is live until Drop (see the field); WAMR touches it
        // only from host functions during a call, which takes `&mut self`,
        // so no such access overlaps this shared borrow.
        unsafe { self.data.as_ref() }
    }

    fn data_mut(&mut self) -> &mut HostData {
        // SAFETY: as in `data`; `&mut self` rules out any other borrow from
        // Rust, and no host function runs outside a call.
        unsafe { self.data.as_mut() }
    }

    /// Whether this env was spawned from a parent.
    pub fn is_spawned(&self) -> bool {
        matches!(self.owner, Owner::Spawned { .. })
    }

    /// The parent this env was spawned from, if any.
    pub fn parent(&self) -> Option<&Arc<ParentEnv>> {
        match &self.owner {
            Owner::Spawned { parent } => Some(parent),
            Owner::Instance { .. } => None,
        }
    }

    /// Why the env cannot be used any more, if it cannot.
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.clone()
    }

    /// Whether the env is unusable only because the host stopped its call
    /// ([`Error::Interrupted`]: shutdown), not for a fault of its guest; such
    /// an env is discarded but not counted as faulted.
    pub fn cut_by_host(&self) -> bool {
        self.cut
    }

    /// Per-call time budget: a call still running after it is terminated by
    /// the watchdog that scans [`interrupt_handle`](Self::interrupt_handle)s
    /// (see `crate::watchdog`). `None` = unlimited.
    pub fn set_budget(&mut self, budget: Option<Duration>) {
        self.budget = budget;
    }

    /// Where calls made from a coroutine run: on its own stack (the
    /// default), or on the worker thread's call stack, which stays in cache
    /// across every call the worker makes. With [`CallStack::Worker`] the
    /// host functions the guest calls must not block the coroutine (no
    /// `may` I/O, channel, lock or sleep): one that tries fails the call
    /// with [`Error::Trap`] instead of suspending it.
    pub fn set_call_stack(&mut self, where_: CallStack) {
        self.call_stack = where_;
    }

    /// Where calls made from a coroutine run.
    pub fn call_stack(&self) -> CallStack {
        self.call_stack
    }

    /// Runs `f` on the worker's call stack if this env's calls go there
    /// (and it is free), in place otherwise; a call `f` makes then runs
    /// where `f` does.
    pub(crate) fn on_call_stack<T>(&mut self, f: impl FnOnce(&mut ExecEnv) -> T) -> T {
        match self.call_stack {
            CallStack::Worker => super::call_stack::run(|| f(self)),
            CallStack::Coroutine => f(self),
        }
    }

    /// The handle a watchdog uses to stop this env's calls.
    pub fn interrupt_handle(&self) -> &Arc<InterruptHandle> {
        &self.interrupt
    }

    /// Sets the value host functions see through `Caller::data_mut`.
    pub fn set_host_data(&mut self, value: Option<Box<dyn std::any::Any + Send>>) {
        self.data_mut().value = value;
    }

    /// The host data, if set and of type `T`.
    pub fn host_data_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.data_mut().value.as_mut()?.downcast_mut::<T>()
    }

    /// Looks up exported function `name` in this env's instance.
    pub fn func(&self, module: &Module, name: &str) -> Result<Func> {
        let ty = module
            .func_type(name)
            .ok_or_else(|| Error::MissingExport { name: name.into(), why: "lookup".into() })?
            .clone();
        let cname = super::runtime::cstring(name)?;
        // SAFETY: `inst` is alive (owned by self); WAMR only reads the name.
        let raw = unsafe { sys::wasm_runtime_lookup_function(self.inst, cname.as_ptr()) };
        if raw.is_null() {
            return Err(Error::MissingExport { name: name.into(), why: "lookup".into() });
        }
        Ok(Func { raw, env: self.id, name: name.into(), ty })
    }

    /// Calls `func` with `args`, checking their types.
    pub fn call(&mut self, func: &Func, args: &[Val]) -> Result<Vec<Val>> {
        if args.len() != func.ty.params.len() || args.iter().zip(&func.ty.params).any(|(a, t)| a.ty() != *t) {
            return Err(Error::BadArguments {
                func: func.name.to_string(),
                why: format!("expected {}, got {:?}", func.ty, args.iter().map(|a| a.ty()).collect::<Vec<_>>()),
            });
        }
        if func.ty.results.iter().chain(&func.ty.params).any(|t| *t == ValType::Other) {
            return Err(Error::BadArguments {
                func: func.name.to_string(),
                why: "reference and vector types are not supported".into(),
            });
        }
        let ncells = func
            .ty
            .params
            .iter()
            .map(|t| t.cells())
            .sum::<usize>()
            .max(func.ty.results.iter().map(|t| t.cells()).sum());
        let mut cells = vec![0u32; ncells.max(1)];
        let mut i = 0;
        for a in args {
            let slot = a.to_slot();
            cells[i] = slot as u32;
            if a.ty().cells() == 2 {
                cells[i + 1] = (slot >> 32) as u32;
            }
            i += a.ty().cells();
        }
        let argc = func.ty.params.iter().map(|t| t.cells()).sum::<usize>() as u32;
        self.call_cells(func, argc, &mut cells)?;
        let mut out = Vec::with_capacity(func.ty.results.len());
        let mut i = 0;
        for t in &func.ty.results {
            let slot = if t.cells() == 2 { cells[i] as u64 | ((cells[i + 1] as u64) << 32) } else { cells[i] as u64 };
            out.push(Val::from_slot(*t, slot));
            i += t.cells();
        }
        Ok(out)
    }

    /// Fast path for functions whose parameters are all i32 and whose result
    /// is at most one i32 (the whole guest ABI). No allocation.
    pub fn call_i32(&mut self, func: &Func, args: &[i32]) -> Result<Option<i32>> {
        const MAX: usize = 8;
        let ok_sig = func.ty.params.len() == args.len()
            && args.len() <= MAX
            && func.ty.params.iter().all(|t| *t == ValType::I32)
            && func.ty.results.len() <= 1
            && func.ty.results.iter().all(|t| *t == ValType::I32);
        if !ok_sig {
            return Err(Error::BadArguments {
                func: func.name.to_string(),
                why: format!("call_i32 needs (i32 x {}) -> i32?, function is {}", args.len(), func.ty),
            });
        }
        let mut cells = [0u32; MAX];
        for (c, a) in cells.iter_mut().zip(args) {
            *c = *a as u32;
        }
        self.call_cells(func, args.len() as u32, &mut cells)?;
        Ok(if func.ty.results.is_empty() { None } else { Some(cells[0] as i32) })
    }

    /// The one call path (`call`, `call_i32`, `typed.rs`): `cells` must hold
    /// the arguments and room for the results, as the function's type
    /// requires.
    pub(crate) fn call_cells(&mut self, func: &Func, argc: u32, cells: &mut [u32]) -> Result<()> {
        // By id, not by instance address: a Func of a destroyed env must
        // never reach WAMR, even when a new instance took its address.
        if func.env != self.id {
            return Err(Error::BadArguments {
                func: func.name.to_string(),
                why: "function belongs to another exec env".into(),
            });
        }
        // A typed call is on the call stack already (`call_typed`); then
        // this runs where it is.
        self.on_call_stack(|env| {
            env.enter()?;
            // `raw` and `func` belong to this live env (checked above); the
            // callers size `cells` from the function's type; `enter` bound
            // WAMR's boundary to this stack. Host functions may yield inside
            // a call on the coroutine's stack; the env is not shared.
            // SAFETY: as just said, WAMR gets valid handles and buffers.
            let ok = unsafe { sys::wasm_runtime_call_wasm(env.raw, func.raw, argc, cells.as_mut_ptr()) };
            env.leave(ok, &func.name)
        })
    }

    /// Everything a call of guest code needs first: refuses a poisoned or
    /// doomed env, binds the stack, marks the call in flight (with its
    /// budget: the watchdog and shutdown can stop it from here on), opens
    /// the memory account and arms the instruction budget.
    fn enter(&mut self) -> Result<()> {
        if let Some(why) = self.poisoned() {
            return Err(Error::Poisoned(why));
        }
        self.bind_stack()?;
        // `doom` sets `doomed`, then stops a call in flight: checking it
        // under the lock that marks the call in flight leaves no moment in
        // which a doomed env's call could start unstopped.
        if !self.interrupt.begin_call(self.budget) {
            self.poisoned = Some(DOOMED.into());
            return Err(Error::Poisoned(DOOMED.into()));
        }
        let inst = self.inst;
        if let Some(a) = self.data_mut().account.as_mut() {
            a.before_call(inst);
        }
        super::metering::arm(self.raw, &self.interrupt.metering);
        Ok(())
    }

    /// Undoes [`enter`](Self::enter) after guest code named `what` returned
    /// (`ok`: WAMR reported success) and turns a failure into the error it
    /// was: stopped for its budget or by the host, out of instructions, or
    /// a trap. A failed env is poisoned.
    fn leave(&mut self, ok: bool, what: &str) -> Result<()> {
        super::metering::disarm(self.raw);
        self.interrupt.end_call();
        let inst = self.inst;
        if let Some(a) = self.data_mut().account.as_mut() {
            a.after_call(inst);
        }
        let hit = self.interrupt.hit.load(Ordering::Acquire);
        if ok && !hit {
            return Ok(());
        }
        let message = self.exception().unwrap_or_else(|| "unknown failure".into());
        let err = if hit && self.interrupt.reason.load(Ordering::Acquire) == BUDGET {
            Error::BudgetExceeded { func: what.to_string(), budget_ms: self.budget_ms() }
        } else if hit {
            Error::Interrupted { func: what.to_string() }
        } else if let Some(e) = super::metering::exceeded(&self.interrupt.metering, what, &message) {
            e
        } else {
            Error::Trap { func: what.to_string(), message: message.clone() }
        };
        self.cut = matches!(err, Error::Interrupted { .. });
        self.poison(err.to_string());
        Err(err)
    }

    /// The budget of the call that was stopped: every deadline (per call, or
    /// armed by `set_deadline`) records its budget in the state.
    fn budget_ms(&self) -> u64 {
        self.interrupt.state.lock().budget.as_millis() as u64
    }

    /// Marks this env unusable. A spawned env's fault stays its own: WAMR
    /// keeps an exception in its instance (patch 0700), so its siblings
    /// and their parent go on.
    fn poison(&mut self, why: String) {
        self.poisoned = Some(why);
    }

    /// Makes WAMR's native stack boundary match the current stack (a
    /// worker's call stack, a coroutine's or a thread's).
    fn bind_stack(&self) -> Result<()> {
        let sp = super::stack::sp();
        let (lo, hi) = self.bound.get();
        let same = match super::call_stack::containing(sp) {
            // On a worker's call stack: exactly the range bound. A stale
            // range (a coroutine stack since unmapped, its addresses reused
            // by the call stack) could contain the stack pointer with a
            // boundary that is not this stack's.
            Some(range) => range == (lo, hi),
            None => sp >= lo && sp < hi,
        };
        if same {
            return Ok(());
        }
        let cur = super::stack::current()?;
        // SAFETY: `raw` is live; the boundary is either NULL (WAMR uses the
        // pthread stack, correct on an OS thread) or GUARD bytes above the
        // low end of the stack we are running on.
        unsafe { sys::wasm_runtime_set_native_stack_boundary(self.raw, cur.boundary as *mut u8) };
        self.bound.set((cur.low, cur.high));
        Ok(())
    }

    /// WAMR's current exception text for this instance.
    ///
    /// Copied under WAMR's exception lock (`wcoro_inst_copy_exception`):
    /// another thread may be writing it right now (the watchdog's
    /// terminate), and WAMR writes it under that lock.
    /// `wasm_runtime_get_exception` would hand out a pointer into the
    /// instance, read with no lock, racing with such a write.
    pub fn exception(&self) -> Option<String> {
        let mut buf = [0 as std::ffi::c_char; ERROR_BUF_LEN];
        let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
        // SAFETY: `inst` is alive (owned, or kept by its parent); the copy
        // takes its exception lock and writes at most `len` bytes, NUL included.
        let any = unsafe { super::inst_access::wcoro_inst_copy_exception(self.inst, ptr, len) };
        if !any {
            return None;
        }
        // SAFETY: the copy NUL-terminated `buf` within its length.
        Some(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// The instance's default linear memory (a view valid until the next call
    /// into the guest, which may grow and move it).
    pub fn memory(&mut self) -> GuestMemory<'_> {
        // SAFETY: `data.memory` was looked up from `inst`, which is alive and
        // exclusively borrowed for the view's life.
        unsafe { self.data().memory.view() }
    }

    /// A copy of every global's current value.
    pub(crate) fn snapshot_globals(&self) -> super::state::GlobalsSnapshot {
        super::state::snapshot_globals(self.inst)
    }

    /// A copy of the linear memory as it is now (`None` if shared or absent).
    pub(crate) fn capture_memory(&self) -> Option<super::state::MemoryImage> {
        super::state::MemoryImage::capture(self.inst)
    }

    /// Gives a just-spawned env the state of its parent, which is the
    /// module's initial state: `image`, the memory with its data segments
    /// (WAMR gives a spawned instance none), and `globals`, all but the
    /// env's own aux stack pointer. WAMR ran the module's start function in
    /// the child on that data-less memory, so whatever it wrote, to memory
    /// or to globals, is overwritten, zero pages included.
    pub(crate) fn load_image(
        &mut self,
        image: &super::state::MemoryImage,
        globals: &super::state::GlobalsSnapshot,
    ) -> Result<()> {
        image
            .apply(self.inst)
            .map_err(|why| Error::ExecEnv(format!("cannot give the spawned env its initial memory: {why}")))?;
        if !super::state::load_spawned_globals(self.inst, globals) {
            return Err(Error::ExecEnv("cannot give the spawned env its initial globals: sizes differ".into()));
        }
        Ok(())
    }

    /// Brings the env back to `image` and `globals` (taken when it was
    /// fresh). Fails, changing nothing, if the memory grew or is shared,
    /// or the env faulted: such an env must be destroyed instead.
    pub(crate) fn restore(
        &mut self,
        image: &super::state::MemoryImage,
        globals: &super::state::GlobalsSnapshot,
    ) -> std::result::Result<(), &'static str> {
        if self.poisoned().is_some() || self.interrupt.is_doomed() {
            return Err("faulted");
        }
        image.apply(self.inst)?;
        if !super::state::restore_globals(self.inst, globals) {
            return Err("globals differ in size");
        }
        Ok(())
    }

    /// Charges this env against `budget` (its current memory now, and room
    /// to grow up to `cap` pages during each call, plus `table_bytes` for
    /// its tables as long as it lives); without a budget the cap still
    /// applies. Refused if the budget has no room.
    pub(crate) fn attach_budget(
        &mut self,
        budget: Arc<super::state::MemoryBudget>,
        cap: u32,
        grows: bool,
        table_bytes: u64,
    ) -> Result<()> {
        let ceiling = super::state::memory_max(self.inst);
        let cap = if cap == 0 { ceiling } else { cap.min(ceiling) };
        let account = super::state::MemoryAccount::open(self.inst, budget, cap, grows, table_bytes)?;
        self.data_mut().account = Some(account);
        Ok(())
    }

    /// Allocates `size` bytes in WAMR's app heap (or through the module's
    /// own `malloc` export, which WAMR prefers when present).
    /// The guest's `malloc` is guest code: it runs as a call does, under
    /// the budget, stoppable by the watchdog and at shutdown, and a trap or
    /// an overrun poisons the env.
    pub fn heap_alloc(&mut self, size: u32) -> Result<u32> {
        self.enter()?;
        let mut native: *mut libc::c_void = std::ptr::null_mut();
        // SAFETY: `inst` is alive; WAMR returns 0 on failure. It may call the
        // guest's malloc export on its own env (`enter` bound the stack).
        let off = unsafe { sys::wasm_runtime_module_malloc(self.inst, size as u64, &mut native) };
        // WAMR's app heap running out sets no exception and is not a fault:
        // only an exception (a trap, an overrun, a corrupted heap) fails the
        // env. WAMR runs the export on this env (the one in the instance's
        // cluster), so the budget armed by `enter` applies to it.
        let ok = self.exception().is_none();
        self.leave(ok, "malloc")?;
        if off == 0 {
            let why = self.exception().unwrap_or_else(|| "app heap exhausted or absent".into());
            return Err(Error::GuestAlloc { size, why });
        }
        u32::try_from(off).map_err(|_| Error::GuestAlloc { size, why: "offset above 4 GiB".into() })
    }
}

/// WAMR's `enlarge_memory_error_callback`, installed by `Runtime::init`:
/// counts a `memory.grow` refused by the cap or the budget on the env's
/// account.
pub(crate) unsafe extern "C" fn on_grow_refused(
    inc_pages: u32,
    cur_bytes: u64,
    _memidx: u32,
    reason: sys::enlarge_memory_error_reason_t,
    _inst: sys::wasm_module_inst_t,
    exec_env: sys::wasm_exec_env_t,
    _user: *mut libc::c_void,
) {
    if reason != sys::MAX_SIZE_REACHED || exec_env.is_null() {
        return;
    }
    // SAFETY: every exec env this crate creates carries a HostData as user
    // data (ExecEnv::wrap), alive as long as the env; WAMR calls this on the
    // thread running that env's call, which owns it exclusively.
    let data = unsafe { sys::wasm_runtime_get_user_data(exec_env) } as *const HostData;
    if data.is_null() {
        return;
    }
    // SAFETY: see above.
    if let Some(a) = unsafe { (*data).account.as_ref() } {
        a.note_refused(cur_bytes / super::state::WASM_PAGE + inc_pages as u64);
    }
}

impl Drop for ExecEnv {
    fn drop(&mut self) {
        // Stop the watchdog from touching the instance from now on.
        self.interrupt.state.lock().inst = 0;
        match &self.owner {
            // SAFETY: we own both; the env is destroyed before its instance.
            Owner::Instance { .. } => unsafe {
                sys::wasm_runtime_destroy_exec_env(self.raw);
                sys::wasm_runtime_deinstantiate(self.inst);
            },
            Owner::Spawned { parent } => {
                let _g = parent.lock.lock();
                // SAFETY: spawned by wasm_runtime_spawn_exec_env from
                // `parent`, which is alive (we hold an Arc). WAMR destroys the
                // spawned instance with it. Serialised with spawns.
                unsafe { sys::wasm_runtime_destroy_spawned_exec_env(self.raw) };
                parent.children.fetch_sub(1, Ordering::AcqRel);
            }
        }
        // SAFETY: `data` came from Box::leak in `wrap` and is freed only
        // here; the env that pointed to it is destroyed, so nothing can reach
        // it any more.
        drop(unsafe { Box::from_raw(self.data.as_ptr()) });
    }
}
