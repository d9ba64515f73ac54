//! The guest ABI (`docs/guest-abi.md`, version 1.1): its constants and its imports.
//!
//! The numbers come from `wamr/include/wamr_coro.h` through bindgen (see
//! `build.rs`): C guests and this host read one definition.
//!
//! The imports (`env.send`, `env.close`, `env.wait_msg`, `env.log`,
//! `env.now_ms`) are ordinary [`HostFunc`]s. Each finds what it acts on in
//! the calling env's host data: an `AbiSlot` holding the server's
//! [`AbiHost`] for that env (direct mode: one connection; queue mode: the
//! queue). An env without one (a bare `ExecEnv` used as a library) gets
//! `UNKNOWN_CONN` from `send`/`close` and `NOT_IN_THIS_MODE` from `wait_msg`.
//! The same host data tells embedders' host functions which connection they
//! serve ([`Caller::connection`], [`ConnInfo`]).
use std::sync::OnceLock;
use std::time::Instant;

use crate::error::Result;
use crate::wamr::host::{Caller, HostFunc};
use crate::wamr::memory::GuestMemory;
use crate::wamr::module::{FuncType, Module, ValType};
use crate::wamr::Val;

#[allow(non_camel_case_types, dead_code, clippy::all)]
mod consts {
    include!(concat!(env!("OUT_DIR"), "/abi_consts.rs"));
}

/// The ABI version this host implements, `major << 8 | minor` (0x0101: 1.1).
pub const ABI_VERSION: i32 = consts::WCORO_ABI_VERSION as i32;
/// Its major part: guests declaring another major are refused.
pub const ABI_VERSION_MAJOR: i32 = consts::WCORO_ABI_VERSION_MAJOR as i32;
/// Its minor part: guests declaring a higher minor are refused.
pub const ABI_VERSION_MINOR: i32 = consts::WCORO_ABI_VERSION_MINOR as i32;
/// The magic that starts the record C and Rust guests export as
/// `wcoro_abi_version` (toolchains export a static's address).
pub const ABI_MAGIC: &[u8] = consts::WCORO_ABI_MAGIC.split_at(consts::WCORO_ABI_MAGIC_LEN as usize).0;
/// Event kind: payload bytes.
pub const EVENT_DATA: i32 = consts::WCORO_EVENT_DATA as i32;
/// Event kind: new connection.
pub const EVENT_OPEN: i32 = consts::WCORO_EVENT_OPEN as i32;
/// Event kind: connection gone.
pub const EVENT_CLOSE: i32 = consts::WCORO_EVENT_CLOSE as i32;
/// Error: connection never existed or already closed.
pub const ERR_UNKNOWN_CONN: i32 = consts::WCORO_ERR_UNKNOWN_CONN;
/// Error: range not inside linear memory.
pub const ERR_BAD_POINTER: i32 = consts::WCORO_ERR_BAD_POINTER;
/// Error: per-connection output limit.
pub const ERR_WOULD_EXCEED_LIMIT: i32 = consts::WCORO_ERR_WOULD_EXCEED_LIMIT;
/// Error / `wait_msg` stop value: the server is stopping.
pub const ERR_SHUTDOWN: i32 = consts::WCORO_ERR_SHUTDOWN;
/// Error: `wait_msg` called outside a queue guest's own `run` loop.
pub const ERR_NOT_IN_THIS_MODE: i32 = consts::WCORO_ERR_NOT_IN_THIS_MODE;
/// Size of the `{conn, kind}` record `wait_msg` writes.
pub const EVENT_SIZE: i32 = consts::WCORO_EVENT_SIZE as i32;
/// Default maximum bytes per `on_recv` / `DATA` event.
pub const DEFAULT_CHUNK_SIZE: usize = consts::WCORO_DEFAULT_CHUNK_SIZE as usize;

const _: () = assert!(std::mem::size_of::<consts::wcoro_event>() == 8);
const _: () = assert!(ABI_VERSION == ABI_VERSION_MAJOR << 8 | ABI_VERSION_MINOR);
const _: () = assert!(consts::WCORO_ABI_MAGIC.len() == ABI_MAGIC.len() + 1); // + the C string's NUL

/// What the ABI's imports act on, supplied per env by the server.
pub trait AbiHost: Send {
    /// `send(conn, ptr, len)`: the range is already read from guest memory
    /// (`Err(())` when it was out of bounds, after the conn check order is
    /// applied by the implementation).
    fn send(&mut self, conn: i32, bytes: Result<&[u8], ()>) -> i32;
    /// `close(conn)`.
    fn close(&mut self, conn: i32) -> i32;
    /// `wait_msg(buf, cap, info)`. The default answers `NOT_IN_THIS_MODE`.
    fn wait_msg(&mut self, _mem: &mut GuestMemory<'_>, _buf: i32, _cap: i32, _info: i32) -> i32 {
        ERR_NOT_IN_THIS_MODE
    }
    /// When `now_ms` counts from.
    fn epoch(&self) -> Instant;
    /// Called when `log` got a bad pointer.
    fn bad_log_pointer(&mut self) {}
    /// Whether a `log` line may be written now (a hostile client must not
    /// flood the log through its guest): `Some(n)` with the lines suppressed
    /// since the last one written, `None` to drop this one. Default: always.
    fn log_allowed(&mut self) -> Option<u64> {
        Some(0)
    }
    /// The connection the env is serving now: direct mode, its connection;
    /// queue mode, the connection of the event being handled. Host
    /// functions read it through [`Caller::connection`]. Default: none.
    fn connection(&self) -> Option<ConnInfo> {
        None
    }
}

/// The connection a guest call is serving (see [`Caller::connection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The id the guest sees (`conn` in the ABI).
    pub id: i32,
    /// The client's address, if the socket could tell.
    pub peer: Option<std::net::SocketAddr>,
}

impl Caller<'_> {
    /// The connection the calling guest is serving: in direct mode the
    /// env's connection (id and peer address); in queue mode the connection
    /// of the event being handled. `None` for envs used as a library.
    pub fn connection(&mut self) -> Option<ConnInfo> {
        host(self.data_any()).and_then(|h| h.connection())
    }
}

/// The host data type the ABI imports look for (see
/// [`ExecEnv::set_host_data`](crate::wamr::ExecEnv::set_host_data)).
pub(crate) struct AbiSlot(pub(crate) Box<dyn AbiHost>);

fn process_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn host(data: Option<&mut (dyn std::any::Any + Send)>) -> Option<&mut dyn AbiHost> {
    Some(data?.downcast_mut::<AbiSlot>()?.0.as_mut())
}

fn i32_arg(args: &[Val], i: usize) -> i32 {
    args[i].i32().unwrap_or(0)
}

/// The guest ABI's imports, handed to the FFI layer through its
/// [`BUILTIN_IMPORTS`](crate::wamr::host::BUILTIN_IMPORTS) slice: `Runtime::init`
/// registers them with WAMR before anything can load a module, and the FFI
/// layer never names this module.
#[linkme::distributed_slice(crate::wamr::host::BUILTIN_IMPORTS)]
static ABI_IMPORTS: fn() -> Vec<HostFunc> = imports;

/// `env.send`, `env.close`, `env.wait_msg`, `env.log`, `env.now_ms`.
///
/// None of them blocks a direct-mode call: `send` and `close` queue, and
/// `wait_msg` answers `NOT_IN_THIS_MODE` at once. (`wait_msg` does block in
/// queue mode, whose calls always run on their runner's own stack.) So all
/// are declared [`HostFunc::never_blocks`].
fn imports() -> Vec<HostFunc> {
    use ValType::{I32, I64};
    let funcs = vec![
        HostFunc::new("env", "send", &[I32, I32, I32], &[I32], |caller: &mut Caller<'_>, args| {
            let (conn, ptr, len) = (i32_arg(args, 0), i32_arg(args, 1), i32_arg(args, 2));
            let (mem, data) = caller.split();
            let Some(h) = host(data) else {
                return Ok(Some(Val::I32(ERR_UNKNOWN_CONN)));
            };
            Ok(Some(Val::I32(mem.with_bytes(ptr, len, |bytes| h.send(conn, bytes.ok_or(()))))))
        }),
        HostFunc::new("env", "close", &[I32], &[I32], |caller: &mut Caller<'_>, args| {
            let (_, data) = caller.split();
            let Some(h) = host(data) else {
                return Ok(Some(Val::I32(ERR_UNKNOWN_CONN)));
            };
            Ok(Some(Val::I32(h.close(i32_arg(args, 0)))))
        }),
        HostFunc::new("env", "wait_msg", &[I32, I32, I32], &[I32], |caller: &mut Caller<'_>, args| {
            let (mut mem, data) = caller.split();
            let Some(h) = host(data) else {
                return Ok(Some(Val::I32(ERR_NOT_IN_THIS_MODE)));
            };
            Ok(Some(Val::I32(h.wait_msg(&mut mem, i32_arg(args, 0), i32_arg(args, 1), i32_arg(args, 2)))))
        }),
        HostFunc::new("env", "log", &[I32, I32, I32], &[], |caller: &mut Caller<'_>, args| {
            let (level, ptr, len) = (i32_arg(args, 0), i32_arg(args, 1), i32_arg(args, 2));
            let (mem, data) = caller.split();
            let mut h = host(data);
            if mem.check(ptr, len).is_none() {
                if let Some(h) = h {
                    h.bad_log_pointer();
                }
                return Ok(None);
            }
            // Each line names its connection (0: none) and is subject to the
            // host's rate limit, asked before anything is copied.
            let (conn, allowed) = match h.as_mut() {
                Some(h) => (h.connection().map_or(0, |c| c.id), h.log_allowed()),
                None => (0, Some(0)),
            };
            let Some(suppressed) = allowed else { return Ok(None) };
            let text = log_line(&mem, ptr, len);
            match level {
                0 => tracing::error!(target: "guest", conn, suppressed, "{text}"),
                1 => tracing::warn!(target: "guest", conn, suppressed, "{text}"),
                2 => tracing::info!(target: "guest", conn, suppressed, "{text}"),
                _ => tracing::debug!(target: "guest", conn, suppressed, "{text}"),
            }
            Ok(None)
        }),
        HostFunc::new("env", "now_ms", &[], &[I64], |caller: &mut Caller<'_>, _| {
            let (_, data) = caller.split();
            let epoch = host(data).map(|h| h.epoch()).unwrap_or_else(process_epoch);
            Ok(Some(Val::I64(epoch.elapsed().as_millis() as i64)))
        }),
    ];
    funcs.into_iter().map(HostFunc::never_blocks).collect()
}

/// The most bytes of one guest `log` line that reach the server's log.
pub const MAX_LOG_LINE: usize = 4096;

/// The text of a `log` call whose range `ptr .. ptr+len` is already checked:
/// at most [`MAX_LOG_LINE`] bytes of it, control characters escaped (a
/// newline in it would otherwise forge a line of the server's log), then how
/// many were left out. The
/// rate limit bounds lines, this their length: without it a guest (often
/// one that logs what its client sent) wrote up to its whole memory per
/// line, ten lines a second per connection.
fn log_line(mem: &GuestMemory<'_>, ptr: i32, len: i32) -> String {
    let shown = len.min(MAX_LOG_LINE as i32);
    let mut text = mem.with_bytes(ptr, shown, |b| String::from_utf8_lossy(b.unwrap_or_default()).into_owned());
    if let std::borrow::Cow::Owned(escaped) = crate::wamr::log::printable(&text) {
        text = escaped;
    }
    if len > shown {
        text.push_str(&format!(" [... {} more bytes not logged]", len - shown));
    }
    text
}

/// Signatures of the guest's exports, per the contract.
pub mod sig {
    use super::*;
    /// `on_recv(conn, ptr, len) -> i32`
    pub fn on_recv() -> FuncType {
        FuncType::new(&[ValType::I32, ValType::I32, ValType::I32], &[ValType::I32])
    }
    /// `on_open(conn) -> i32`
    pub fn on_open() -> FuncType {
        FuncType::new(&[ValType::I32], &[ValType::I32])
    }
    /// `on_close(conn)`
    pub fn on_close() -> FuncType {
        FuncType::new(&[ValType::I32], &[])
    }
    /// `run() -> i32`
    pub fn run() -> FuncType {
        FuncType::new(&[], &[ValType::I32])
    }
    /// `alloc(size) -> i32`
    pub fn alloc() -> FuncType {
        FuncType::new(&[ValType::I32], &[ValType::I32])
    }
}

/// Which exports a module has, checked against the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExports {
    /// `on_recv` present.
    pub on_recv: bool,
    /// `on_open` present.
    pub on_open: bool,
    /// `on_close` present.
    pub on_close: bool,
    /// `run` present.
    pub run: bool,
    /// `alloc` present.
    pub alloc: bool,
}

/// Dispatch mode, as far as the contract's requirements go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeReq {
    /// Direct mode: `on_recv` required.
    Direct,
    /// Queue mode: `run`, or `on_recv` for the host's own loop.
    Queue,
}

fn version_text(v: i64) -> String {
    if (0..=0xffff).contains(&v) {
        format!("{}.{} ({v:#06x})", v >> 8, v & 0xff)
    } else {
        format!("{v:#x}")
    }
}

/// Whether this host serves guests written for ABI `version`
/// (`major << 8 | minor`): the same major, a minor up to its own.
pub fn supports_abi_version(version: i32) -> bool {
    version >> 8 == ABI_VERSION_MAJOR && (0..=ABI_VERSION_MINOR).contains(&(version & 0xff))
}

/// The ABI version `module` declares through its `wcoro_abi_version`
/// export, or `None` without one. The export must be an immutable i32
/// global whose value is either the version or the address of a
/// `wcoro_abi_version_record` (magic `wcoroabi`, then the version) in the
/// module's initial data — the form C and Rust statics take. An
/// unsupported version, or an export in another form, is
/// [`Error::AbiVersion`](crate::Error::AbiVersion).
pub fn guest_abi_version(module: &Module) -> Result<Option<i32>> {
    use crate::wamr::module::ExportKind;
    use crate::Error;
    let Some(export) = module.export("wcoro_abi_version") else {
        return Ok(None);
    };
    let host = format!("{} (minor versions up to {})", version_text(ABI_VERSION as i64), ABI_VERSION_MINOR);
    let refuse = |guest: String| Error::AbiVersion { guest, host: host.clone() };
    if !matches!(export.kind, ExportKind::Global { ty: ValType::I32, mutable: false }) {
        return Err(refuse(format!("`wcoro_abi_version` as {:?}, not an immutable i32 global", export.kind)));
    }
    let global = module
        .exported_global("wcoro_abi_version")
        .map_err(|why| refuse(format!("a `wcoro_abi_version` that cannot be read ({why})")))?;
    let Some(value) = global.and_then(|g| g.init) else {
        return Err(refuse("a `wcoro_abi_version` whose value is not a constant".into()));
    };
    let record = global
        .and_then(|g| g.pointee.as_deref())
        .filter(|p| p.len() >= ABI_MAGIC.len() + 4 && p.starts_with(ABI_MAGIC))
        .map(|p| i32::from_le_bytes(p[ABI_MAGIC.len()..ABI_MAGIC.len() + 4].try_into().expect("4 bytes")));
    let version = record.map(i64::from).unwrap_or(value);
    match i32::try_from(version) {
        Ok(v) if supports_abi_version(v) => Ok(Some(v)),
        _ => Err(refuse(version_text(version))),
    }
}

/// Checks `module` against the contract for `mode`; errors name what is
/// missing or mistyped. A declared `wcoro_abi_version` is checked first
/// ([`guest_abi_version`]).
pub fn check_guest(module: &Module, mode: ModeReq) -> Result<GuestExports> {
    use crate::Error;
    guest_abi_version(module)?;
    match module.export("memory") {
        Some(crate::wamr::module::Export { kind: crate::wamr::module::ExportKind::Memory { .. }, .. }) => {}
        _ => {
            return Err(Error::MissingExport {
                name: "memory".into(),
                why: "the guest ABI requires an exported linear memory".into(),
            })
        }
    }
    let g = GuestExports {
        on_recv: module.check_optional_func("on_recv", &sig::on_recv())?,
        on_open: module.check_optional_func("on_open", &sig::on_open())?,
        on_close: module.check_optional_func("on_close", &sig::on_close())?,
        run: module.check_optional_func("run", &sig::run())?,
        alloc: module.check_optional_func("alloc", &sig::alloc())?,
    };
    match mode {
        ModeReq::Direct if !g.on_recv => {
            Err(Error::MissingExport { name: "on_recv".into(), why: "required in direct mode".into() })
        }
        ModeReq::Queue if !g.on_recv && !g.run => {
            Err(Error::MissingExport { name: "on_recv".into(), why: "queue mode needs `run` or `on_recv`".into() })
        }
        _ => Ok(g),
    }
}
