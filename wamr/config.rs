// WAMR's build configuration: the one table both `build.rs` (which compiles
// WAMR with exactly these defines) and the crate (`wamr-coro --version`,
// `wamr_coro::wamr::build_info`) read, so what is printed cannot drift from
// what was built. Included with `include!`; plain Rust, no dependencies.

/// One preprocessor define WAMR is compiled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WamrDefine {
    /// The macro name.
    pub name: &'static str,
    /// Its value.
    pub value: &'static str,
    /// A short feature name for `--version`, or "" for plumbing defines.
    pub feature: &'static str,
}

const fn d(name: &'static str, value: &'static str, feature: &'static str) -> WamrDefine {
    WamrDefine { name, value, feature }
}

/// Every define WAMR's sources (and `wamr/src/inst_access.c`, which reads
/// WAMR's internal structs and must see the same layout) are compiled with.
/// The target's platform and arch defines (`BH_PLATFORM_LINUX`,
/// `BUILD_TARGET_X86_64`) are added by build.rs.
///
/// Equivalent to WAMR 2.4.3's CMake run with `WAMR_BUILD_INTERP=1
/// WAMR_BUILD_FAST_INTERP=1 WAMR_BUILD_AOT=1 WAMR_BUILD_JIT=0
/// WAMR_BUILD_FAST_JIT=0 WAMR_BUILD_BULK_MEMORY=1 WAMR_BUILD_REF_TYPES=1
/// WAMR_BUILD_SHARED_MEMORY=1 WAMR_BUILD_THREAD_MGR=1
/// WAMR_BUILD_INSTRUCTION_METERING=1 WAMR_BUILD_SIMD=0 WAMR_BUILD_LIB_SIMDE=0
/// WAMR_BUILD_LIBC_BUILTIN=0 WAMR_BUILD_LIBC_WASI=0
/// WAMR_DISABLE_HW_BOUND_CHECK=1 WAMR_DISABLE_WRITE_GS_BASE=1` (checked
/// against its compile_commands.json).
pub const WAMR_DEFINES: &[WamrDefine] = &[
    // Running modes.
    d("WASM_ENABLE_INTERP", "1", "interpreter"),
    d("WASM_ENABLE_FAST_INTERP", "1", "fast-interp"),
    d("WASM_ENABLE_AOT", "1", "aot-loader"),
    d("WASM_ENABLE_AOT_INTRINSICS", "1", ""),
    d("WASM_ENABLE_QUICK_AOT_ENTRY", "1", ""),
    // Proposals.
    d("WASM_ENABLE_BULK_MEMORY", "1", "bulk-memory"),
    d("WASM_ENABLE_BULK_MEMORY_OPT", "1", ""),
    d("WASM_ENABLE_CALL_INDIRECT_OVERLONG", "1", ""),
    d("WASM_ENABLE_REF_TYPES", "1", "reference-types"),
    d("WASM_ENABLE_SHARED_MEMORY", "1", "shared-memory"),
    d("WASM_ENABLE_EXTENDED_CONST_EXPR", "0", ""),
    d("WASM_ENABLE_MULTI_MODULE", "0", ""),
    d("WASM_ENABLE_MINI_LOADER", "0", ""),
    // Keeps custom sections readable (wasm_runtime_get_custom_section): an
    // AOT file made by `wamr-coro compile` carries its original wasm in one,
    // from which the host reads what it checks and scans (src/wamr/aot.rs).
    // Module-side only: instance layouts do not change.
    d("WASM_ENABLE_LOAD_CUSTOM_SECTION", "1", "custom-sections"),
    // Spawned exec envs (wasm_runtime_spawn_exec_env) need the thread manager.
    d("WASM_ENABLE_THREAD_MGR", "1", "thread-mgr"),
    // wasm_runtime_set_instruction_count_limit: the deterministic budget.
    d("WASM_ENABLE_INSTRUCTION_METERING", "1", "instruction-metering"),
    // Software bound checks only. Hardware bound checks reserve 8 GiB per
    // memory and turn out-of-bounds accesses into SIGSEGV, which WAMR's handler
    // can only recover on a stack it knows: it needs per-OS-thread signal state
    // (`wasm_runtime_init_thread_env`), which a `may` coroutine hopping between
    // worker threads does not have ("thread signal env not inited"), and its
    // native-stack guard pages are placed on the pthread stack, not on the
    // coroutine's mmap'd stack; calling init_thread_env inside a coroutine
    // walks down to the OS thread's stack and overflows the coroutine's
    // (docs/wamr-notes.md). The native stack is instead bounded by
    // wasm_runtime_set_native_stack_boundary (src/wamr/stack.rs).
    d("WASM_DISABLE_HW_BOUND_CHECK", "1", "software-bound-checks"),
    d("WASM_DISABLE_STACK_HW_BOUND_CHECK", "1", ""),
    // Off: WAMR's CMake probes the *build* machine and, if `wrgsbase` works
    // there, writes the linear memory base to GS on every call (for AOT/JIT
    // "segue"). valgrind cannot decode `wrgsbase` (SIGILL at the first guest
    // call) and a binary built on a kernel with FSGSBASE dies with SIGILL on
    // one without it (docs/wamr-notes.md).
    d("WASM_DISABLE_WRITE_GS_BASE", "1", ""),
    d("WASM_DISABLE_WAKEUP_BLOCKING_OP", "0", ""),
    d("WASM_ENABLE_SHRUNK_MEMORY", "1", ""),
    // SIMD is off: the interpreter's SIMD needs SIMDe, which WAMR's CMake
    // downloads at build time.
    d("WASM_ENABLE_SIMD", "0", ""),
    d("WASM_GLOBAL_HEAP_SIZE", "10485760", ""),
    d("WASM_HAVE_MREMAP", "1", ""),
    d("BH_MALLOC", "wasm_runtime_malloc", ""),
    d("BH_FREE", "wasm_runtime_free", ""),
    // Everything WAMR prints (os_printf, LOG_*) goes to wamr/src/log_bridge.c,
    // which hands whole lines to `tracing` (src/wamr/log.rs).
    d("BH_VPRINTF", "wamr_coro_vprintf", "log-bridge"),
    d("_GNU_SOURCE", "1", ""),
];

/// Features deliberately left out, for `--version`.
pub const WAMR_DISABLED: &[&str] = &[
    "simd",
    "hw-bound-checks",
    "write-gs-base",
    "llvm-jit",
    "fast-jit",
    "libc-wasi",
    "libc-builtin",
    "multi-module",
    "gc",
];
