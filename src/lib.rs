//! # wamr-coro
//!
//! WebAssembly guests, executed by WAMR through FFI, serving TCP connections
//! whose network I/O runs natively on stackful `may` coroutines. Guests never
//! touch sockets: they receive bytes and answer through host imports (the
//! guest ABI, `docs/guest-abi.md`, constants in `wamr/include/wamr_coro.h`).
//!
//! ## The public surface
//!
//! * Running guests: [`Runtime`] (WAMR, once per process), [`Module`],
//!   [`Guest`] (a module's private envs, reset between users), [`ExecEnv`]
//!   and its calls ([`Func`], [`TypedFunc`], [`Val`]), [`HostFunc`] (imports
//!   written in Rust or C), [`GuestMemory`], [`Error`].
//! * Serving connections: [`server`] ([`server::Server::builder`],
//!   [`server::ServerHandle`], [`server::ServerStats`], limits, signals).
//! * The guest contract's constants and checks: [`abi`].
//! * Coroutines for embedders that drive envs themselves: [`coro`].
//!
//! Everything else is private. [`internals`] is not API: it exists for this
//! crate's own command line, tests and benches.
//!
//! ## Embedding
//!
//! The README's example (kept equal to it; `cargo test --doc` compiles it):
//!
//! ```no_run
//! use wamr_coro::{server::{Server, Mode}, Caller, Module, Runtime, RuntimeConfig, HostFunc, ValType, Val};
//!
//! let rt = Runtime::init(RuntimeConfig::default())?;           // once per process, settings fixed
//! rt.register(HostFunc::new("svc", "visits", &[], &[ValType::I64],
//!     |_caller, _args| Ok(Some(Val::I64(42)))))?;               // before loading modules that import it
//! rt.register(HostFunc::wrap("svc", "conn_id",                  // typed: () -> i32, inferred
//!     |mut caller: Caller<'_>| caller.connection().map_or(0, |c| c.id)))?;
//! let server = Server::builder(Module::from_file("guests/echo.wat")?)
//!     .listen("127.0.0.1:0").mode(Mode::Queue).start()?;
//! let stats = server.stop();                                    // graceful: on_close for every connection
//! # let _ = stats;
//! # Ok::<(), wamr_coro::Error>(())
//! ```
//!
//! ## The data path, file by file
//!
//! `server/listener.rs` (accept) → `server/connection.rs` (one coroutine per
//! connection, started by `coro.rs`) → `pool.rs` / `registry.rs` (its private
//! exec env) → `guest.rs` (the guest's exports and receive buffer) →
//! `wamr/exec_env.rs` (the call into WAMR) → `abi.rs` (the guest's
//! `send`/`close` imports) → `server/conn_host.rs` (back to the connection,
//! which writes the socket). Both modes read through `server/socket.rs`.
//! Queue mode replaces the per-connection call with `server/queue/`: the
//! connection's reader (`conn.rs`) → its shard's event ring (`ring.rs`) →
//! the shard's runner (`runner.rs`, events from `dispatch.rs`) → the guest's
//! imports (`host.rs`) → the connection's writer (`conn.rs`).
//!
//! Layers: `wamr/` is the only code that calls WAMR (raw FFI wrapped in RAII
//! handles); everything else is safe Rust on top of it.
#![warn(missing_docs, unnameable_types)]

pub mod abi;
pub mod coro;
mod default_guest;
mod error;
mod guest;
mod pool;
mod registry;
mod ring;
pub mod server;
mod wamr;
mod watchdog;

pub use abi::ConnInfo;
pub use default_guest::default_guest;
pub use error::{Error, Result};
pub use guest::{EnvSource, Guest, GuestConfig, GuestEnv};
pub use pool::{EnvPool, Lease, PoolStats};
pub use registry::{Registry, RegistryStats};
pub use wamr::aot;
pub use wamr::host::{Caller, HostError, HostFunc, HostPlainReturn, HostResult, HostReturn, HostValue, IntoHostFunc};
pub use wamr::memory::GuestMemory;
pub use wamr::module::{
    read_module_file, Export, ExportKind, ExportedGlobal, FuncType, Import, Module, ValType, MAX_MODULE_BYTES,
};
pub use wamr::runtime::{Runtime, RuntimeConfig, WamrLog, MAX_ENVS_PER_PARENT};
pub use wamr::state::{MemoryBudget, MemoryBudgetStats};
pub use wamr::typed::{TypedFunc, WasmParams, WasmResults, WasmTy};
pub use wamr::{CallStack, ExecEnv, Func, InstanceConfig, InterruptHandle, ParentEnv, Val};
pub use watchdog::Watchdog;

#[doc(hidden)]
pub mod internals;
