//! The FFI layer: the only part of the crate that calls WAMR.
//!
//! Everything above this module (registry, pool, server) uses the safe RAII
//! handles defined here and never touches a raw WAMR pointer:
//!
//! | file | concept |
//! |---|---|
//! | `runtime.rs` | the process-wide WAMR runtime: init once, settings, log routing |
//! | `log.rs` | where WAMR's own printing goes (`tracing`, or nowhere) |
//! | `module.rs` | a loaded module (wasm, wat or AOT), its imports and exports, contract checks |
//! | `aot.rs` | compiled guests: the embedded AOT compiler, `compile`, the AOT cache |
//! | `exec_env.rs` | an instance and its exec env: creation, calls, traps, reset |
//! | `parent.rs` | parent instances that private envs are spawned from (one cluster each) |
//! | `func.rs` | an exported function of one instance |
//! | `value.rs` | values passed to and returned from guest functions |
//! | `interrupt.rs` | stopping a running call from another thread (budgets, shutdown) |
//! | `inst_access.rs` | an instance's globals area and memory growth limit (WAMR internals) |
//! | `build_info.rs` | the WAMR version, CVE fixes and features built in (`--version`) |
//! | `sys.rs` | the raw bindings build.rs generates from WAMR's `wasm_export.h` |
//! | `host.rs` | host functions (imports) written in Rust or C |
//! | `metering.rs` | the instruction budget (WAMR's instruction metering) |
//! | `memory.rs` | bounds-checked views of a guest's linear memory |
//! | `state.rs` | an env's initial image and reset; the guest-memory budget |
//! | `residency.rs` | which pages of a range the kernel holds (pagemap, mincore) |
//! | `scan.rs` | a static scan of a module binary (memory sizes, growth, resettability) |
//! | `stack.rs` | the native stack boundary of the calling coroutine or thread |
//! | `call_stack.rs` | worker call stacks: guest calls off the coroutine's own stack |
//! | `typed.rs` | calls typed by Rust types, checked once at lookup |

pub use call_stack::CallStack;
pub use exec_env::{ExecEnv, InstanceConfig};
pub use func::Func;
pub use inst_access::MemoryPages;
pub use interrupt::InterruptHandle;
pub use module::Module;
pub use parent::ParentEnv;
pub use value::Val;

pub mod aot;
pub mod build_info;
pub(crate) mod call_stack;
pub mod exec_env;
pub mod func;
pub mod host;
pub mod inst_access;
pub mod interrupt;
pub(crate) mod log;
pub mod memory;
pub mod metering;
pub mod module;
pub mod parent;
pub(crate) mod residency;
pub mod runtime;
pub(crate) mod scan;
pub mod stack;
pub(crate) mod start_budget;
pub mod state;
pub(crate) mod sys;
pub mod typed;
pub mod value;

/// WAMR writes error text into a caller-supplied buffer; this is its size.
pub(crate) const ERROR_BUF_LEN: usize = 256;

/// Turns a NUL-terminated error buffer into a `String`.
pub(crate) fn error_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_string()
}

/// The kernel's page size (4 KiB on x86-64; 4, 16 or 64 KiB on aarch64),
/// read once. What `madvise` and `mincore` are told must be whole pages of
/// this size: `madvise` rounds a length up to it, so a range computed in
/// 4 KiB pages would reach memory past its end.
pub(crate) fn page_size() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SIZE: AtomicUsize = AtomicUsize::new(0);
    match SIZE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let n = if n > 0 { n as usize } else { 4096 };
            SIZE.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}
