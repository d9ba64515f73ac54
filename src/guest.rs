//! A guest that follows the ABI, and the envs it runs in.
//!
//! [`Guest`] is a validated module plus how to make envs for it
//! ([`EnvSource`]); [`GuestEnv`] is one private env with the guest's exports
//! looked up, its receive buffer allocated in guest memory, and its
//! registry entry. Dropping a `GuestEnv` destroys the env and unregisters it.
//!
//! ## Where envs come from, and why the default is what it is
//!
//! | source | per env | a trap affects | notes |
//! |---|---|---|---|
//! | [`EnvSource::Instance`] (default) | instantiate + create_exec_env | that env only | own cluster per env |
//! | [`EnvSource::Spawn`] | `wasm_runtime_spawn_exec_env` from a shard parent | that env only (WAMR patch 0700) | needs `__heap_base`/`__data_end`; required for shared memory |
//!
//! Upstream WAMR spreads a spawned env's trap, and `wasm_runtime_terminate`,
//! to its whole cluster, and clearing it on one sibling clears it on all
//! (even real traps, which then read as successes). Our patch 0700 keeps an
//! exception in its own instance, so both sources honour the contract's "a
//! trap closes one connection"; independent instances stay the default, as
//! the simpler path. What it costs, measured on the project's 2-core machine
//! (`cargo bench --bench core`, `wamr-coro stress --coroutines N --source S`):
//!
//! | | instance | spawn |
//! |---|---|---|
//! | create + destroy, one at a time | 10.1 µs | 8.7 µs |
//! | destroy with 1k / 10k / 30k envs alive | 37 / 71 / 327 µs | 16 / 23 / 25 µs |
//! | resident memory per env (5-page guest) | 43 KiB | 40 KiB |
//!
//! Every independent env is its own WAMR cluster, and WAMR removes a cluster
//! from one global list by scanning it: destroy cost grows with the number of
//! live envs. The pool (`pool.rs`) keeps envs for reuse, so a server
//! destroys envs only when the pool overflows and at shutdown; for very large
//! connection counts with heavy churn, [`EnvSource::Spawn`] destroys in
//! near-constant time. Spawned envs are spread across shard parents so the
//! per-cluster cap and the O(n) in-cluster destroy stay bounded by
//! `envs_per_parent`. A trap costs O(all live envs) in both sources: WAMR
//! looks the trapping instance up in every cluster.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use crate::abi::{self, AbiHost, AbiSlot, GuestExports, ModeReq};
use crate::error::{Error, Result};
use crate::registry::{Registry, RegistryEntry};
use crate::wamr::state::{GlobalsSnapshot, MemoryBudget, MemoryImage};
use crate::wamr::typed::TypedFunc;
use crate::wamr::{CallStack, ExecEnv, InstanceConfig, Module, ParentEnv};

/// Where a guest's envs come from. See the module docs for the trade-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum EnvSource {
    /// An independent instance per env: traps stay in one env.
    #[default]
    Instance,
    /// Spawned from shard parents (`wasm_runtime_spawn_exec_env`).
    Spawn,
}

/// Settings for a guest's envs.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Where envs come from.
    pub source: EnvSource,
    /// WAMR operand stack per env, bytes.
    pub wasm_stack: u32,
    /// Receive buffer (max bytes per `on_recv` / `DATA`), bytes. Default 64 KiB.
    pub chunk_size: u32,
    /// Maximum envs alive at once (0 = unlimited).
    pub max_envs: usize,
    /// Per-call time budget (`None` = unlimited).
    pub call_budget: Option<Duration>,
    /// Per-call instruction budget, WAMR's counted ops (`None` = unlimited);
    /// see `wamr::metering`.
    pub instruction_budget: Option<u32>,
    /// What the module must provide.
    pub mode: ModeReq,
    /// Cap on each env's linear memory, in 64 KiB pages (0 = the module's
    /// own maximum). Applies to independent instances and to shard parents;
    /// WAMR instantiates spawned envs with the module's declared maximum.
    /// Default 256 (16 MiB). A module whose *initial* memory is larger is
    /// refused by [`Guest::new`].
    pub max_memory_pages: u32,
    /// The bound on the linear memory of all envs together (see
    /// [`MemoryBudget`]); `None` = a private budget of
    /// [`MemoryBudget::default_bytes`] (half the machine's memory).
    pub memory_budget: Option<Arc<MemoryBudget>>,
    /// Where calls made from coroutines run ([`CallStack`]). Applies to
    /// direct-mode envs only: a queue guest's `run` blocks in `wait_msg`
    /// ([`Guest::config`] then reports [`CallStack::Coroutine`], as it does
    /// for a guest that imports a host function that may block).
    /// Default [`CallStack::Coroutine`]; the server uses
    /// [`CallStack::Worker`] (its imports never block).
    pub call_stack: CallStack,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            source: EnvSource::Instance,
            wasm_stack: 16 * 1024,
            chunk_size: abi::DEFAULT_CHUNK_SIZE as u32,
            max_envs: 0,
            call_budget: None,
            instruction_budget: None,
            mode: ModeReq::Direct,
            max_memory_pages: 256,
            memory_budget: None,
            call_stack: CallStack::Coroutine,
        }
    }
}

/// A validated guest module and the means to make envs for it.
pub struct Guest {
    module: Module,
    exports: GuestExports,
    config: GuestConfig,
    inst_cfg: InstanceConfig,
    registry: Arc<Registry>,
    shards: Mutex<Shards>,
    /// Envs of this guest alive now (reserved before creation, so
    /// `max_envs` holds exactly under concurrent creation).
    live: AtomicUsize,
    budget: Arc<MemoryBudget>,
    /// Memory and globals of a fresh instance before any call (spawn
    /// source: a shard parent's, copied into each spawned env, which WAMR
    /// leaves without data segments and whose start function ran on that).
    /// Memory `None` if shared.
    pristine: OnceLock<(Option<MemoryImage>, GlobalsSnapshot)>,
    /// Memory of the first env right after `GuestEnv::init`: what every
    /// env is reset to. `None` if envs cannot be reset (shared memory).
    image: OnceLock<Option<ResetImage>>,
    /// Whether the module's code can change state a reset does not restore
    /// (tables, dropped segments): then envs are never reused.
    resettable: bool,
    resets: AtomicU64,
    reset_refusals: AtomicU64,
}

/// What a reset restores memory to, and where that env's receive buffer is.
#[derive(Debug)]
struct ResetImage {
    memory: MemoryImage,
    recv_ptr: i32,
}

#[derive(Default)]
struct Shards {
    parents: Vec<Arc<ParentEnv>>,
    next: usize,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest").field("exports", &self.exports).field("config", &self.config).finish()
    }
}

impl Guest {
    /// Checks `module` against the contract for `config.mode` (and, for
    /// [`EnvSource::Spawn`], what spawning needs) and prepares to make envs.
    pub fn new(module: Module, config: GuestConfig, registry: Arc<Registry>) -> Result<Arc<Guest>> {
        let exports = abi::check_guest(&module, config.mode)?;
        if config.source == EnvSource::Spawn {
            module.check_spawnable()?;
            if !exports.alloc {
                // wasm_cluster_spawn_exec_env instantiates with default
                // arguments: a spawned instance has no WAMR app heap.
                return Err(Error::MissingExport {
                    name: "alloc".into(),
                    why: "spawned envs have no WAMR app heap, so the receive buffer must come \
                          from the guest's own `alloc`"
                        .into(),
                });
            }
        }
        if config.chunk_size == 0 || config.chunk_size > 16 << 20 {
            return Err(Error::Config("chunk_size must be 1 B ..= 16 MiB".into()));
        }
        let facts = module.facts();
        if let Some(initial) = facts.initial_pages {
            if config.max_memory_pages > 0 && initial > config.max_memory_pages as u64 {
                return Err(Error::MemoryTooLarge { initial, cap: config.max_memory_pages });
            }
        }
        // Tables are host memory the per-env cap did not cover: a module
        // declaring a 10-million-element table took 80 MB per connection
        // (its instances allocate and fill it whole before the global budget
        // is asked, so concurrent ones overshot that too).
        let cap_bytes = config.max_memory_pages as u64 * 65536;
        if config.max_memory_pages > 0 && facts.table_bytes > cap_bytes {
            return Err(Error::TablesTooLarge { bytes: facts.table_bytes, cap: config.max_memory_pages });
        }
        let mut config = config;
        // The worker's call stack is for direct mode only (a queue guest's
        // `run` blocks in `wait_msg`); decided here once, for every env.
        if config.mode != ModeReq::Direct {
            config.call_stack = CallStack::Coroutine;
        }
        // A host function that may block the coroutine cannot run on a
        // worker's call stack: the guest's calls stay on the connection's.
        if config.call_stack == CallStack::Worker {
            let blocking = module.imports().iter().find(|i| crate::wamr::host::may_block(&i.module, &i.name));
            if let Some(i) = blocking {
                tracing::info!(
                    import = %format!("{}.{}", i.module, i.name),
                    "the guest imports a host function not declared never_blocks: its calls run on \
                     each connection's own stack (CallStack::Coroutine)"
                );
                config.call_stack = CallStack::Coroutine;
            }
        }
        if config.call_stack == CallStack::Coroutine {
            // New coroutines keep a call's depth of their reused stacks.
            crate::wamr::stack::keep_call_depth();
        }
        let resettable = !facts.mutates_tables_or_segments;
        let budget =
            config.memory_budget.clone().unwrap_or_else(|| Arc::new(MemoryBudget::new(MemoryBudget::default_bytes())));
        // Without an `alloc` export the receive buffer comes from WAMR's app
        // heap: size it for one chunk plus the allocator's overhead.
        let heap_size = if exports.alloc { 0 } else { config.chunk_size + 8 * 1024 };
        let inst_cfg = InstanceConfig {
            stack_size: config.wasm_stack,
            heap_size,
            max_memory_pages: config.max_memory_pages,
            start_budget: config.call_budget,
        };
        let guest = Arc::new(Guest {
            module,
            exports,
            config,
            inst_cfg,
            registry,
            shards: Mutex::new(Shards::default()),
            live: AtomicUsize::new(0),
            budget,
            pristine: OnceLock::new(),
            image: OnceLock::new(),
            resettable,
            resets: AtomicU64::new(0),
            reset_refusals: AtomicU64::new(0),
        });
        // One env now: a start function that traps, memory that cannot be
        // had, an `alloc` that fails are start-up errors, not a server that
        // fails every connection. It also takes the image envs reset to.
        drop(guest.create_env()?);
        Ok(guest)
    }

    /// The guest-memory budget its envs are charged against.
    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Envs reset to their initial state (for reuse) so far, and envs that
    /// could not be (grown memory, a fault, state a reset cannot restore)
    /// and were destroyed instead.
    pub fn reset_counts(&self) -> (u64, u64) {
        (self.resets.load(Ordering::Relaxed), self.reset_refusals.load(Ordering::Relaxed))
    }

    /// Whether envs of this guest can be reset to their initial state (and
    /// so be reused by another connection).
    pub fn is_resettable(&self) -> bool {
        self.resettable && matches!(self.image.get(), Some(Some(_)))
    }

    /// The module.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Which optional exports exist.
    pub fn exports(&self) -> GuestExports {
        self.exports
    }

    /// The configuration.
    pub fn config(&self) -> &GuestConfig {
        &self.config
    }

    /// The registry its envs live in.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Makes a fresh env (not from a pool).
    pub fn create_env(self: &Arc<Self>) -> Result<GuestEnv> {
        self.make_env(false).map(|env| *env)
    }

    /// [`create_env`](Self::create_env), boxed where it is made. A
    /// `GuestEnv` is large: returned by value from the worker's call stack,
    /// its temporaries took a 1 KiB frame on the connection's coroutine
    /// stack, a fourth KiB page resident per held connection
    /// (`scripts/hold_breakdown.py`: 23.0 → 27.0 KiB per connection).
    pub(crate) fn create_env_boxed(self: &Arc<Self>) -> Result<Box<GuestEnv>> {
        self.make_env(false)
    }

    /// Makes a fresh env that shares its WAMR cluster with no other env, so
    /// that no other env's fault can reach it: with [`EnvSource::Spawn`] it
    /// is spawned from a parent of its own rather than from a shard shared
    /// with other envs. For envs that must fail alone: queue mode's shard
    /// instances and their standbys (a trap in one shard's instance used
    /// to poison every other shard's, and the standbys, through their
    /// common parent).
    pub fn create_env_alone(self: &Arc<Self>) -> Result<GuestEnv> {
        self.make_env(true).map(|env| *env)
    }

    fn make_env(self: &Arc<Self>, alone: bool) -> Result<Box<GuestEnv>> {
        let before = self.live.fetch_add(1, Ordering::AcqRel);
        if self.config.max_envs > 0 && before >= self.config.max_envs {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::TooManyEnvs { what: "max_envs", limit: self.config.max_envs });
        }
        let make = || match self.config.source {
            EnvSource::Instance => ExecEnv::new(&self.module, self.inst_cfg).and_then(|env| GuestEnv::init(self, env)),
            EnvSource::Spawn if alone => self.spawn_alone().and_then(|env| GuestEnv::init(self, env)),
            // One more try if a new env fails before it serves. Upstream WAMR
            // let a sibling's trap reach it between its spawn and its first
            // call (`alloc`, in `init`); patch 0700 keeps exceptions in their
            // instance, and the retry stays for whatever else fails once.
            EnvSource::Spawn => match self.spawn_from_shard().and_then(|env| GuestEnv::init(self, env)) {
                Err(e) => {
                    tracing::debug!(error = %e, "a new spawned env failed before serving; trying once more");
                    self.spawn_from_shard().and_then(|env| GuestEnv::init(self, env))
                }
                made => made,
            },
        };
        // Instantiating goes deep (WAMR's loader and the start function):
        // on the worker's call stack with the env's calls, those frames stay
        // off the connection's own stack, which then holds fewer pages.
        let made = if self.config.call_stack == CallStack::Worker {
            crate::wamr::call_stack::run(|| make().map(Box::new))
        } else {
            make().map(Box::new)
        };
        if made.is_err() {
            self.live.fetch_sub(1, Ordering::AcqRel);
            self.registry.note_failure();
        }
        made
    }

    /// Envs of this guest alive now.
    pub fn live_envs(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn spawn_from_shard(&self) -> Result<ExecEnv> {
        let mut s = self.shards.lock();
        let n = s.parents.len();
        for i in 0..n {
            let idx = (s.next + i) % n;
            let p = &s.parents[idx];
            if p.children() < p.capacity() {
                match p.spawn() {
                    Ok(env) => {
                        s.next = idx;
                        return Ok(env);
                    }
                    // Full, or failing: WAMR refuses to spawn into a cluster
                    // while an exception is pending in it (a child's trap, a
                    // failed spawn's start function) until a call clears
                    // it. Another parent, a new one if need be, serves this
                    // connection.
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot spawn from this shard parent; trying another");
                        continue;
                    }
                }
            }
        }
        let parent = ParentEnv::new(&self.module, self.inst_cfg)?;
        // The parent is never called: its memory is the module's initial
        // image (data segments), which spawned envs do not get from WAMR.
        self.pristine.get_or_init(|| (parent.capture_memory(), parent.snapshot_globals()));
        let env = parent.spawn()?;
        s.parents.push(parent);
        s.next = s.parents.len() - 1;
        Ok(env)
    }

    /// An env spawned from a parent of its own, kept by nobody else: the
    /// parent goes with the env.
    fn spawn_alone(&self) -> Result<ExecEnv> {
        let parent = ParentEnv::new(&self.module, self.inst_cfg)?;
        // Never called: its memory and globals are the module's initial ones.
        self.pristine.get_or_init(|| (parent.capture_memory(), parent.snapshot_globals()));
        parent.spawn()
    }

    /// Shard parents alive (spawn source).
    pub fn shard_count(&self) -> usize {
        self.shards.lock().parents.len()
    }
}

/// One private env of a [`Guest`], ready to call.
pub struct GuestEnv {
    // Field order matters: the env is destroyed before it is unregistered.
    env: ExecEnv,
    funcs: Funcs,
    recv_ptr: i32,
    recv_cap: u32,
    /// Bytes of the receive buffer written since the last wipe.
    recv_dirty: u32,
    /// The connection whose bytes are in the receive buffer.
    recv_conn: i32,
    /// Globals right after init, for reset.
    globals: GlobalsSnapshot,
    /// Whether [`reset`](Self::reset) can bring this env back.
    resettable: bool,
    guest: Arc<Guest>,
    _entry: RegistryEntry,
}

/// The guest's callbacks, typed once when the env is made (`Guest::new`
/// already checked their signatures against the contract).
struct Funcs {
    on_recv: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_open: Option<TypedFunc<i32, i32>>,
    on_close: Option<TypedFunc<i32, ()>>,
    run: Option<TypedFunc<(), i32>>,
}

impl Funcs {
    /// `on_recv`, which direct mode calls and queue guests may lack.
    fn on_recv(&self) -> Result<&TypedFunc<(i32, i32, i32), i32>> {
        self.on_recv
            .as_ref()
            .ok_or_else(|| Error::MissingExport { name: "on_recv".into(), why: "called in direct mode".into() })
    }
}

impl Drop for GuestEnv {
    fn drop(&mut self) {
        self.guest.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for GuestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestEnv").field("env", &self.env).field("recv_cap", &self.recv_cap).finish()
    }
}

impl GuestEnv {
    fn init(guest: &Arc<Guest>, mut env: ExecEnv) -> Result<GuestEnv> {
        let entry = guest.registry.register(Arc::clone(env.interrupt_handle()));
        let shared = guest.module.has_shared_memory();
        if env.is_spawned() && !shared {
            match guest.pristine.get() {
                Some((Some(memory), globals)) => env.load_image(memory, globals)?,
                _ => {
                    return Err(Error::ExecEnv(
                        "no initial memory image for a spawned env (its data segments would be missing)".into(),
                    ))
                }
            }
        }
        // Spawned envs of a shared memory use their parent's memory, which
        // is charged to nobody: shared-memory guests are outside the budget.
        if !(env.is_spawned() && shared) {
            env.attach_budget(
                Arc::clone(&guest.budget),
                guest.config.max_memory_pages,
                guest.module.facts().grows_memory,
                guest.module.facts().table_bytes,
            )?;
        }
        env.set_budget(guest.config.call_budget);
        env.set_instruction_budget(guest.config.instruction_budget);
        env.set_call_stack(guest.config.call_stack);
        let m = &guest.module;
        let e = guest.exports;
        let funcs = Funcs {
            on_recv: e.on_recv.then(|| env.typed(m, "on_recv")).transpose()?,
            on_open: e.on_open.then(|| env.typed(m, "on_open")).transpose()?,
            on_close: e.on_close.then(|| env.typed(m, "on_close")).transpose()?,
            run: e.run.then(|| env.typed(m, "run")).transpose()?,
        };
        let cap = guest.config.chunk_size;
        let ptr = if e.alloc {
            let alloc = env.typed::<i32, i32>(m, "alloc")?;
            let p = env.call_typed(&alloc, cap as i32)?;
            if p == 0 || env.memory().check(p, cap as i32).is_none() {
                return Err(Error::GuestAlloc {
                    size: cap,
                    why: format!(
                        "the guest's alloc returned {p}, not a range of {cap} bytes inside its \
                         memory ({} bytes; WAMR shrinks the memory of modules that never run \
                         memory.grow to __heap_base, so static buffers must lie below it)",
                        env.memory().len()
                    ),
                });
            }
            p
        } else {
            env.heap_alloc(cap)? as i32
        };
        let globals = env.snapshot_globals();
        let image = guest.image.get_or_init(|| env.capture_memory().map(|memory| ResetImage { memory, recv_ptr: ptr }));
        // Envs are made alike (instantiation and `alloc` are deterministic),
        // so the first env's image fits every later one; one that differs
        // (an `alloc` that is not deterministic) is simply never reused.
        let resettable = guest.resettable
            && matches!(image, Some(img) if img.recv_ptr == ptr && Some(img.memory.pages()) == env.memory_pages().map(|p| p.current));
        Ok(GuestEnv {
            env,
            funcs,
            recv_ptr: ptr,
            recv_cap: cap,
            recv_dirty: 0,
            recv_conn: 0,
            globals,
            resettable,
            guest: Arc::clone(guest),
            _entry: entry,
        })
    }

    /// Brings the env back to the state it had when it was made: linear
    /// memory (data segments, heap, receive buffer) and globals, so the
    /// next connection cannot see anything an earlier one left. Fails —
    /// and the caller must destroy the env — if its memory grew, it
    /// faulted, its memory is shared, or the module can change state a
    /// reset does not restore (tables, dropped segments).
    pub fn reset(&mut self) -> std::result::Result<(), &'static str> {
        let outcome = if !self.resettable {
            Err("this guest's state cannot be restored (see Guest::is_resettable)")
        } else {
            match self.guest.image.get() {
                Some(Some(img)) => self.env.restore(&img.memory, &self.globals),
                _ => Err("no image"),
            }
        };
        match outcome {
            Ok(()) => {
                self.recv_dirty = 0;
                self.guest.resets.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.guest.reset_refusals.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }

    /// The guest this env runs.
    pub fn guest(&self) -> &Arc<Guest> {
        &self.guest
    }

    /// The underlying exec env.
    pub fn exec_env(&mut self) -> &mut ExecEnv {
        &mut self.env
    }

    /// Why the env must be discarded, if it must.
    pub fn poisoned(&self) -> Option<String> {
        self.env.poisoned()
    }

    /// Whether `Registry::destroy_all` marked it.
    pub fn is_doomed(&self) -> bool {
        self.env.interrupt_handle().is_doomed()
    }

    /// Installs what the ABI imports act on for this env.
    pub fn set_host(&mut self, host: Option<Box<dyn AbiHost>>) {
        self.env.set_host_data(host.map(|h| Box::new(AbiSlot(h)) as Box<dyn std::any::Any + Send>));
    }

    /// Receive buffer: guest pointer and capacity (the chunk size).
    pub fn recv_buffer(&self) -> (i32, u32) {
        (self.recv_ptr, self.recv_cap)
    }

    /// `on_open(conn)`; `Ok(0)` if the guest does not export it.
    pub fn on_open(&mut self, conn: i32) -> Result<i32> {
        match &self.funcs.on_open {
            Some(f) => self.env.call_typed(f, conn),
            None => Ok(0),
        }
    }

    /// Copies `bytes` (at most the chunk size) into the receive buffer and
    /// calls `on_recv(conn, ptr, len)`.
    pub fn on_recv(&mut self, conn: i32, bytes: &[u8]) -> Result<i32> {
        self.switch_conn(conn);
        let f = self.funcs.on_recv()?;
        let n = bytes.len().min(self.recv_cap as usize);
        if !self.env.memory().write(self.recv_ptr, &bytes[..n]) {
            // The guest shrank nothing (memory cannot shrink), so this means
            // the buffer check at init was bypassed: treat as a fault.
            return Err(Error::Poisoned("receive buffer outside guest memory".into()));
        }
        self.recv_dirty = self.recv_dirty.max(n as u32);
        self.env.call_typed(f, (conn, self.recv_ptr, n as i32))
    }

    /// Reads `conn`'s next bytes straight into the receive buffer in guest
    /// memory: `read` gets the buffer (`chunk_size` bytes) and returns how
    /// many it filled (with anything else it likes), which the next [`on_recv_in_place`](Self::on_recv_in_place)
    /// hands to the guest. Saves a copy, and a host buffer per connection,
    /// for a caller that holds the env for the connection (direct mode's
    /// default policy). `None` (and `read` not called) when the memory is
    /// shared: other threads may write it, so the host does not hand it out
    /// as a Rust slice; use [`on_recv`](Self::on_recv).
    pub(crate) fn recv_into<T, E>(
        &mut self,
        conn: i32,
        read: impl FnOnce(&mut [u8]) -> std::result::Result<(usize, T), E>,
    ) -> Option<std::result::Result<(usize, T), E>> {
        self.switch_conn(conn);
        let (ptr, cap) = (self.recv_ptr, self.recv_cap as i32);
        let space = self.env.memory().into_slice_mut(ptr, cap)?;
        let got = read(space);
        if let Ok((n, _)) = &got {
            let n = *n;
            // Dirty as soon as they are there, whether or not a call follows.
            self.recv_dirty = self.recv_dirty.max(n.min(cap as usize) as u32);
        }
        Some(got)
    }

    /// `on_recv(conn, buf, n)` on the `n` bytes [`recv_into`](Self::recv_into)
    /// just put in the receive buffer.
    pub(crate) fn on_recv_in_place(&mut self, conn: i32, n: usize) -> Result<i32> {
        let f = self.funcs.on_recv()?;
        debug_assert_eq!(conn, self.recv_conn, "recv_into was called for another connection");
        let n = n.min(self.recv_cap as usize);
        self.env.call_typed(f, (conn, self.recv_ptr, n as i32))
    }

    /// Another connection's bytes never stay where this one's land: wipes
    /// them when the env starts serving `conn`.
    fn switch_conn(&mut self, conn: i32) {
        if conn != self.recv_conn {
            if self.recv_dirty > 0 {
                self.env.memory().fill(self.recv_ptr, self.recv_dirty as i32, 0);
                self.recv_dirty = 0;
            }
            self.recv_conn = conn;
        }
    }

    /// `on_close(conn)`, if exported.
    pub fn on_close(&mut self, conn: i32) -> Result<()> {
        match &self.funcs.on_close {
            Some(f) => self.env.call_typed(f, conn),
            None => Ok(()),
        }
    }

    /// `run()`; `None` if the guest does not export it.
    pub fn run(&mut self) -> Option<Result<i32>> {
        let f = self.funcs.run.as_ref()?;
        Some(self.env.call_typed(f, ()))
    }

    /// Zeroes the part of the receive buffer that held a connection's bytes,
    /// so that the next connection served by this env cannot see them.
    pub fn wipe_recv_buffer(&mut self) {
        if self.recv_dirty > 0 {
            self.env.memory().fill(self.recv_ptr, self.recv_dirty as i32, 0);
            self.recv_dirty = 0;
        }
    }

    /// Records that the env is being discarded for a guest fault, unless
    /// the host cut its call (shutdown), which is no fault of the guest
    /// (counted as a shutdown cut instead). Returns whether it counted.
    pub(crate) fn note_fault(&self) -> bool {
        if self.env.cut_by_host() {
            return false;
        }
        self.guest.registry.note_fault();
        true
    }
}
