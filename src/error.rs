//! The crate's error type: every failure, with the context to act on it.
//!
//! Errors from WAMR are mapped here and only here (rusqlite style): WAMR's own
//! error text is kept verbatim in the message.
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when embedding guests or serving connections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// WAMR could not be initialised.
    #[error("WAMR runtime initialisation failed: {0}")]
    RuntimeInit(String),

    /// The process-wide runtime exists already with other settings. WAMR reads
    /// them when the first cluster is created; changing them later corrupts
    /// memory, so it is refused.
    #[error("the WAMR runtime is already initialised with {existing}; cannot change to {requested}")]
    RuntimeConfigConflict {
        /// Settings in force.
        existing: String,
        /// Settings asked for.
        requested: String,
    },

    /// A module could not be read from disk.
    #[error("cannot read module {path}: {source}")]
    ReadModule {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// WebAssembly text that does not parse.
    #[error("invalid WebAssembly text: {0}")]
    Wat(String),

    /// The module was refused: by WAMR (the text is WAMR's), or before
    /// WAMR saw it (too large, empty, neither wasm nor text, an AOT file not
    /// asked for).
    #[error("cannot load the module: {0}")]
    Load(String),

    /// AOT compilation failed, or is not available in this build
    /// (`wamr-coro compile`, `serve --aot`).
    #[error("AOT compilation: {0}")]
    Compile(String),

    /// The module imports a function no host provides.
    #[error("module imports {module}.{name}, which no host function provides (register it before loading)")]
    UnlinkedImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },

    /// The module imports something other than a function (a memory, table,
    /// global or tag). The host provides only functions: a guest defines
    /// and exports its own memory (docs/guest-abi.md, section 1).
    #[error("module imports a {kind}, {module}.{name}: the host provides only functions (a guest defines and exports its own memory, tables and globals)")]
    NonFunctionImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
        /// What is imported: "memory", "table", "global" or "tag".
        kind: &'static str,
    },

    /// An active data segment does not fit the module's initial memory. The
    /// WebAssembly spec makes instantiating such a module fail; WAMR alone
    /// checks it against the memory with its app heap appended, and would
    /// have put the bytes there.
    #[error("data segment {index} ({len} bytes at offset {offset}) does not fit the module's initial memory of {memory_bytes} bytes")]
    DataSegmentOutOfBounds {
        /// The segment's index in the data section.
        index: u32,
        /// Its offset in linear memory.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// The memory's initial size in bytes.
        memory_bytes: u64,
    },

    /// The module imports a host function under its name but with another
    /// signature.
    #[error("module imports {module}.{name} with signature {found}, but the host provides it as {expected}")]
    ImportSignature {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
        /// The signature the module declares.
        found: String,
        /// The signature of the registered host function.
        expected: String,
    },

    /// The module lacks an export the caller requires.
    #[error("module has no export `{name}` ({why})")]
    MissingExport {
        /// Export name.
        name: String,
        /// What needs it.
        why: String,
    },

    /// An export exists with the wrong type.
    #[error("export `{name}` has signature {found}, expected {expected}")]
    WrongSignature {
        /// Export name.
        name: String,
        /// What the contract requires.
        expected: String,
        /// What the module has.
        found: String,
    },

    /// The guest declares (`wcoro_abi_version`) a guest ABI version this host
    /// does not support, or declares it in a form the host cannot read.
    #[error("guest ABI version mismatch: the guest declares {guest}; this host supports {host}")]
    AbiVersion {
        /// What the guest's `wcoro_abi_version` says.
        guest: String,
        /// What this host supports.
        host: String,
    },

    /// `wasm_runtime_spawn_exec_env` needs aux-stack information.
    #[error("module cannot spawn exec envs: {0}")]
    SpawnUnsupported(String),

    /// WAMR could not instantiate; the text is WAMR's.
    #[error("instantiation failed: {0}")]
    Instantiate(String),

    /// An exec env could not be created or spawned.
    #[error("cannot create exec env: {0}")]
    ExecEnv(String),

    /// A configured cap was reached.
    #[error("too many exec envs: {what} limit of {limit} reached")]
    TooManyEnvs {
        /// Which cap.
        what: &'static str,
        /// Its value.
        limit: usize,
    },

    /// The guest trapped; the text is WAMR's exception.
    #[error("guest trapped in `{func}`: {message}")]
    Trap {
        /// The export called.
        func: String,
        /// WAMR's exception text.
        message: String,
    },

    /// The call ran past its time budget and was terminated.
    #[error("guest call `{func}` exceeded its budget of {budget_ms} ms and was terminated")]
    BudgetExceeded {
        /// The export called.
        func: String,
        /// The budget.
        budget_ms: u64,
    },

    /// The call executed more instructions than its budget (WAMR's
    /// instruction metering) and was stopped.
    #[error("guest call `{func}` exceeded its budget of {budget} instructions and was stopped")]
    InstructionBudgetExceeded {
        /// The export called.
        func: String,
        /// The budget (WAMR's counted ops).
        budget: u64,
    },

    /// The env was poisoned by an earlier trap (or its shard's) and cannot be used.
    #[error("exec env is unusable after an earlier trap: {0}")]
    Poisoned(String),

    /// Arguments that do not match the function's parameters.
    #[error("bad arguments for `{func}`: {why}")]
    BadArguments {
        /// The export called.
        func: String,
        /// What is wrong.
        why: String,
    },

    /// A host function could not be registered.
    #[error("cannot register host function {module}.{name}: {why}")]
    HostFunc {
        /// Import module name.
        module: String,
        /// Field name.
        name: String,
        /// What is wrong.
        why: String,
    },

    /// A call from a `may` coroutine not started by [`crate::coro::spawn`]: its
    /// stack bounds are unknown, and WAMR would run without overflow protection.
    #[error("exec envs can only be called from threads or from coroutines started with wamr_coro::coro::spawn")]
    UnknownStack,

    /// A guest's receive buffer could not be allocated.
    #[error("cannot allocate {size} bytes in guest memory: {why}")]
    GuestAlloc {
        /// Bytes requested.
        size: u32,
        /// What failed.
        why: String,
    },

    /// The host stopped a guest call that outlived the shutdown grace
    /// period (not a fault of the guest's own).
    #[error("guest call `{func}` was terminated by the host (shutdown)")]
    Interrupted {
        /// The export that was running.
        func: String,
    },

    /// The global guest-memory budget has no room for a new env.
    #[error("guest-memory budget exhausted: {0}")]
    MemoryBudget(String),

    /// A module's initial linear memory is over the per-env cap.
    #[error("the module's initial memory is {initial} pages ({} MiB), more than the per-env cap of {cap} pages (max_memory_pages)", initial / 16)]
    MemoryTooLarge {
        /// Initial pages the module declares.
        initial: u64,
        /// The cap, pages.
        cap: u32,
    },

    /// A module's tables take more host memory per env than the per-env
    /// cap allows its linear memory (every env allocates them whole at
    /// instantiation, before any budget can refuse it).
    #[error("the module's tables take {} KiB per env, more than the per-env cap of {cap} pages ({} KiB, max_memory_pages)", bytes / 1024, *cap as u64 * 64)]
    TablesTooLarge {
        /// Bytes WAMR allocates for the tables of one instance.
        bytes: u64,
        /// The cap, pages.
        cap: u32,
    },

    /// The pool (or server) is shutting down and hands out no more envs.
    #[error("the env pool is closed")]
    PoolClosed,

    /// The listen address is taken by another socket, and the server was not
    /// asked to share it (`reuse_port`).
    #[error(
        "address {addr} is already in use (another process or server listens there): stop it, \
         choose another --listen address, or start every server with --reuse-port to share the port deliberately"
    )]
    AddrInUse {
        /// The address asked for.
        addr: std::net::SocketAddr,
    },

    /// Bad configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The server is stopping and takes no new work (e.g. a reload).
    #[error("the server is stopping")]
    Stopping,

    /// The `bench` tool's own failures: a child server or load generator
    /// misbehaved, or the run found errors.
    #[error("bench: {0}")]
    Bench(String),

    /// Socket errors.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    /// True for failures that leave the guest instance in an unknown state
    /// (trap, budget overrun, poisoned env): the env must be discarded.
    pub fn is_guest_fault(&self) -> bool {
        matches!(
            self,
            Error::Trap { .. }
                | Error::BudgetExceeded { .. }
                | Error::InstructionBudgetExceeded { .. }
                | Error::Poisoned(_)
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}
