//! Write [wamr-coro](../../README.md) guests in Rust.
//!
//! A guest is a `wasm32-unknown-unknown` `cdylib` that serves TCP connections
//! through the host's imports (`send`, `close`, `wait_msg`, `log`, `now_ms`)
//! and exports (`on_recv`, `on_open`, `on_close`, `alloc`, `run`). The
//! contract is `docs/guest-abi.md` in the repository; this crate gives safe
//! wrappers for the imports and [`export_guest!`], which produces the exports
//! from a type implementing [`Guest`]:
//!
//! ```ignore
//! #![no_std]
//! use wamr_coro_guest::{export_guest, Conn, Guest};
//!
//! #[derive(Default)]
//! struct Echo;
//! impl Guest for Echo {
//!     fn on_recv(&mut self, conn: Conn, data: &[u8]) -> bool {
//!         conn.send(data).is_ok()
//!     }
//! }
//! export_guest! { guest: Echo = Echo, alloc: 65536 + 16, run: 65536 }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-unknown-unknown`.
//! rustc's linker exports `memory`; `--source spawn` also needs
//! `__heap_base` and `__data_end`, which newer Rust releases (1.99 here;
//! 1.95 still did) no longer export by themselves. Ask for them in the
//! guest crate's `.cargo/config.toml` (the SDK's own examples get them from
//! its build script):
//!
//! ```toml
//! [target.wasm32-unknown-unknown]
//! rustflags = ["-C", "link-arg=--export=__heap_base", "-C", "link-arg=--export=__data_end"]
//! ```
//!
//! The crate is `no_std`; on wasm32 without the `std` feature it provides the
//! panic handler (a panic traps the guest, which the host treats as a fault:
//! the connection, or the queue shard, is closed). With the `std` feature the
//! guest links `std` instead.
//!
//! The constants are the ones of `wamr/include/wamr_coro.h`: `build.rs` reads
//! the header and the build fails if they differ.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

use core::cell::UnsafeCell;
use core::fmt;

#[allow(dead_code)]
mod header {
    include!(concat!(env!("OUT_DIR"), "/header_consts.rs"));
}

/// The ABI version this crate implements, `major << 8 | minor` (0x0101: 1.1).
pub const ABI_VERSION: i32 = 0x0101;
/// Event kind: payload bytes.
pub const EVENT_DATA: i32 = 0;
/// Event kind: a new connection.
pub const EVENT_OPEN: i32 = 1;
/// Event kind: a connection is gone.
pub const EVENT_CLOSE: i32 = 2;
/// Error: the connection never existed, is closed, or is not this env's.
pub const ERR_UNKNOWN_CONN: i32 = -1;
/// Error: a range outside linear memory.
pub const ERR_BAD_POINTER: i32 = -2;
/// Error: the connection's output limit would be exceeded.
pub const ERR_WOULD_EXCEED_LIMIT: i32 = -3;
/// Error: the server is stopping (`wait_msg`'s stop value).
pub const ERR_SHUTDOWN: i32 = -4;
/// Error: `wait_msg` outside a queue guest's own `run` loop (direct mode, or a
/// handler the host's loop calls).
pub const ERR_NOT_IN_THIS_MODE: i32 = -5;
/// The host's default chunk size: most bytes per `on_recv` / `DATA` event.
pub const DEFAULT_CHUNK_SIZE: usize = 65536;
/// Size of the `{conn, kind}` record `wait_msg` writes.
pub const EVENT_SIZE: usize = 8;
/// Magic that starts the exported [`AbiVersionRecord`].
pub const ABI_MAGIC: [u8; 8] = *b"wcoroabi";

// The one source of these numbers is the C header (see build.rs).
const _: () = {
    assert!(ABI_VERSION as i64 == header::WCORO_ABI_VERSION);
    assert!(ABI_VERSION as i64 == header::WCORO_ABI_VERSION_MAJOR << 8 | header::WCORO_ABI_VERSION_MINOR);
    assert!(EVENT_DATA as i64 == header::WCORO_EVENT_DATA);
    assert!(EVENT_OPEN as i64 == header::WCORO_EVENT_OPEN);
    assert!(EVENT_CLOSE as i64 == header::WCORO_EVENT_CLOSE);
    assert!(ERR_UNKNOWN_CONN as i64 == header::WCORO_ERR_UNKNOWN_CONN);
    assert!(ERR_BAD_POINTER as i64 == header::WCORO_ERR_BAD_POINTER);
    assert!(ERR_WOULD_EXCEED_LIMIT as i64 == header::WCORO_ERR_WOULD_EXCEED_LIMIT);
    assert!(ERR_SHUTDOWN as i64 == header::WCORO_ERR_SHUTDOWN);
    assert!(ERR_NOT_IN_THIS_MODE as i64 == header::WCORO_ERR_NOT_IN_THIS_MODE);
    assert!(Level::Error as i64 == header::WCORO_LOG_ERROR);
    assert!(Level::Warn as i64 == header::WCORO_LOG_WARN);
    assert!(Level::Info as i64 == header::WCORO_LOG_INFO);
    assert!(Level::Debug as i64 == header::WCORO_LOG_DEBUG);
    assert!(DEFAULT_CHUNK_SIZE as i64 == header::WCORO_DEFAULT_CHUNK_SIZE);
    assert!(EVENT_SIZE as i64 == header::WCORO_EVENT_SIZE);
    assert!(core::mem::size_of::<RawEvent>() == EVENT_SIZE);
    assert!(ABI_MAGIC.len() as i64 == header::WCORO_ABI_MAGIC_LEN);
    let m = header::WCORO_ABI_MAGIC;
    assert!(m.len() == ABI_MAGIC.len());
    let mut i = 0;
    while i < m.len() {
        assert!(m[i] == ABI_MAGIC[i]);
        i += 1;
    }
};

/// What a host import refused, from its negative return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// `-1`: the connection never existed, is closed, or is not this env's.
    UnknownConn,
    /// `-2`: a range outside linear memory.
    BadPointer,
    /// `-3`: the connection's output limit would be exceeded; nothing queued.
    WouldExceedLimit,
    /// `-4`: the server is stopping.
    Shutdown,
    /// `-5`: `wait_msg` outside a queue guest's own `run` loop.
    NotInThisMode,
    /// A code this version of the ABI does not define.
    Other(i32),
}

impl Error {
    /// The error for a negative import return.
    pub fn from_code(code: i32) -> Error {
        match code {
            ERR_UNKNOWN_CONN => Error::UnknownConn,
            ERR_BAD_POINTER => Error::BadPointer,
            ERR_WOULD_EXCEED_LIMIT => Error::WouldExceedLimit,
            ERR_SHUTDOWN => Error::Shutdown,
            ERR_NOT_IN_THIS_MODE => Error::NotInThisMode,
            other => Error::Other(other),
        }
    }

    /// The ABI's code for it.
    pub fn code(self) -> i32 {
        match self {
            Error::UnknownConn => ERR_UNKNOWN_CONN,
            Error::BadPointer => ERR_BAD_POINTER,
            Error::WouldExceedLimit => ERR_WOULD_EXCEED_LIMIT,
            Error::Shutdown => ERR_SHUTDOWN,
            Error::NotInThisMode => ERR_NOT_IN_THIS_MODE,
            Error::Other(c) => c,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownConn => f.write_str("unknown connection"),
            Error::BadPointer => f.write_str("bad pointer"),
            Error::WouldExceedLimit => f.write_str("output limit would be exceeded"),
            Error::Shutdown => f.write_str("server shutting down"),
            Error::NotInThisMode => f.write_str("not available in this mode"),
            Error::Other(c) => write!(f, "host error {c}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Log levels of [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    /// 0
    Error = 0,
    /// 1
    Warn = 1,
    /// 2
    Info = 2,
    /// 3
    Debug = 3,
}

/// The `{conn, kind}` record `wait_msg` writes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEvent {
    /// Connection id.
    pub conn: i32,
    /// `EVENT_DATA`, `EVENT_OPEN` or `EVENT_CLOSE`.
    pub kind: i32,
}

/// What [`export_guest!`] exports as `wcoro_abi_version` (see
/// `docs/guest-abi.md`: toolchains export a static's address, so the host
/// reads the version through this record's magic).
#[repr(C)]
#[derive(Debug)]
pub struct AbiVersionRecord {
    /// [`ABI_MAGIC`].
    pub magic: [u8; 8],
    /// [`ABI_VERSION`].
    pub version: i32,
}

impl AbiVersionRecord {
    /// The record for this crate's [`ABI_VERSION`].
    pub const CURRENT: AbiVersionRecord = AbiVersionRecord { magic: ABI_MAGIC, version: ABI_VERSION };
}

/// The raw imports. Prefer the safe wrappers.
#[cfg(any(target_arch = "wasm32", doc))]
pub mod sys {
    use super::RawEvent;
    #[link(wasm_import_module = "env")]
    extern "C" {
        /// `env.send(conn, ptr, len) -> i32`
        pub fn send(conn: i32, ptr: *const u8, len: i32) -> i32;
        /// `env.close(conn) -> i32`
        pub fn close(conn: i32) -> i32;
        /// `env.wait_msg(buf, cap, info) -> i32`
        pub fn wait_msg(buf: *mut u8, cap: i32, info: *mut RawEvent) -> i32;
        /// `env.log(level, ptr, len)`
        pub fn log(level: i32, ptr: *const u8, len: i32);
        /// `env.now_ms() -> i64`
        pub fn now_ms() -> i64;
    }
}

/// A connection, by the id the host gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conn(pub i32);

impl Conn {
    /// The connection id (positive; not reused while the server runs, until
    /// `i32` wraps, and even then never while a connection holds it).
    pub fn id(self) -> i32 {
        self.0
    }
}

#[cfg(any(target_arch = "wasm32", doc))]
impl Conn {
    /// Queues `data` for the connection (copied before it returns; never
    /// blocks). Returns the byte count, or why the host refused.
    pub fn send(self, data: &[u8]) -> Result<usize, Error> {
        let len = i32::try_from(data.len()).map_err(|_| Error::BadPointer)?;
        // SAFETY: `data` is a live slice of our memory for the call's duration;
        // the host copies it before returning.
        let r = unsafe { sys::send(self.0, data.as_ptr(), len) };
        if r < 0 {
            Err(Error::from_code(r))
        } else {
            Ok(r as usize)
        }
    }

    /// Closes the connection once what was sent is flushed.
    pub fn close(self) -> Result<(), Error> {
        // SAFETY: a plain call; the host checks the id.
        let r = unsafe { sys::close(self.0) };
        if r < 0 {
            Err(Error::from_code(r))
        } else {
            Ok(())
        }
    }
}

/// Logs `text` at `level` through the host's log.
#[cfg(any(target_arch = "wasm32", doc))]
pub fn log(level: Level, text: &str) {
    // SAFETY: `text` is a live slice of our memory; the host copies it.
    unsafe { sys::log(level as i32, text.as_ptr(), text.len().min(i32::MAX as usize) as i32) }
}

/// Milliseconds on a monotonic clock since the server started.
#[cfg(any(target_arch = "wasm32", doc))]
pub fn now_ms() -> i64 {
    // SAFETY: no arguments.
    unsafe { sys::now_ms() }
}

/// One event handed to a queue-mode guest by [`wait_msg`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A new connection.
    Open(Conn),
    /// Bytes for a connection (at most the buffer's length).
    Data(Conn, &'a [u8]),
    /// The connection is gone.
    Close(Conn),
}

impl<'a> Event<'a> {
    /// Decodes what `wait_msg` returned (`ret`, with `buf` its buffer) and
    /// wrote (`raw`). `Err` for negative returns (`Shutdown` when the
    /// server stops) and for unknown event kinds.
    pub fn decode(ret: i32, raw: RawEvent, buf: &'a [u8]) -> Result<Event<'a>, Error> {
        if ret < 0 {
            return Err(Error::from_code(ret));
        }
        let conn = Conn(raw.conn);
        match raw.kind {
            EVENT_OPEN => Ok(Event::Open(conn)),
            EVENT_CLOSE => Ok(Event::Close(conn)),
            EVENT_DATA => buf.get(..ret as usize).map(|d| Event::Data(conn, d)).ok_or(Error::BadPointer),
            other => Err(Error::Other(other)),
        }
    }
}

/// Queue mode: blocks until the next event; `DATA` bytes land in `buf`.
/// `Err(Error::Shutdown)` means the server stops: return from `run`.
#[cfg(any(target_arch = "wasm32", doc))]
pub fn wait_msg(buf: &mut [u8]) -> Result<Event<'_>, Error> {
    let mut raw = RawEvent::default();
    let cap = buf.len().min(i32::MAX as usize) as i32;
    // SAFETY: `buf` and `raw` are live, writable and ours for the call; the
    // host writes at most `cap` bytes to `buf` and 8 bytes to `raw`.
    let ret = unsafe { sys::wait_msg(buf.as_mut_ptr(), cap, &mut raw) };
    Event::decode(ret, raw, buf)
}

/// A guest's handlers. One value of the type serves every connection its
/// instance sees: one connection in direct mode (`--policy connection`), many
/// in queue mode (key per-connection state by [`Conn`]).
pub trait Guest {
    /// A new connection. Return `false` to refuse it (closed; `on_close`
    /// is then not called for it).
    fn on_open(&mut self, conn: Conn) -> bool {
        let _ = conn;
        true
    }
    /// Bytes received on `conn` (valid only during the call). Return
    /// `false` to close the connection.
    fn on_recv(&mut self, conn: Conn, data: &[u8]) -> bool;
    /// `conn` is gone (peer closed, guest closed, timeout, shutdown).
    fn on_close(&mut self, conn: Conn) {
        let _ = conn;
    }
}

/// Holds a guest's state in a `static`. Support for [`export_guest!`].
///
/// A wasm32 instance runs one call at a time and the host never calls an
/// export while another runs on the same instance (host imports do not
/// re-enter the guest), so one `&mut` exists at a time. A re-entrant call
/// would trap rather than alias. Not for guests whose memory is `shared`
/// between threads.
pub struct GuestCell<T> {
    value: UnsafeCell<Option<T>>,
    busy: UnsafeCell<bool>,
}

// SAFETY: see the type's documentation: a non-shared wasm32 memory is used
// by one thread, and `busy` refuses re-entry.
unsafe impl<T> Sync for GuestCell<T> {}

impl<T> GuestCell<T> {
    /// An empty cell; [`GuestCell::with`] fills it on first use.
    pub const fn new() -> Self {
        GuestCell { value: UnsafeCell::new(None), busy: UnsafeCell::new(false) }
    }

    /// Runs `f` on the value, creating it with `init` first if needed.
    pub fn with<R>(&self, init: impl FnOnce() -> T, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: single-threaded (see the type's docs); `busy` guarantees no
        // other borrow of `value` is live.
        unsafe {
            assert!(!*self.busy.get(), "wamr-coro-guest: re-entrant guest call");
            *self.busy.get() = true;
            let v = (*self.value.get()).get_or_insert_with(init);
            let r = f(v);
            *self.busy.get() = false;
            r
        }
    }
}

impl<T> Default for GuestCell<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A fixed arena handing out 16-byte-aligned blocks: the `alloc` export of
/// [`export_guest!`]. It is a static, so it lies below `__heap_base`.
#[repr(C, align(16))]
pub struct BumpArena<const N: usize> {
    // First, so it shares a page with the first block (which the host's
    // receive buffer dirties anyway) instead of dirtying one of its own.
    used: UnsafeCell<usize>,
    // Aligned itself (as the C SDK's arena is), so that offsets rounded up
    // to 16 are addresses rounded up to 16: after `used` alone the blocks
    // sat 4 (wasm32) or 8 bytes past an aligned address.
    bytes: UnsafeCell<Aligned16<N>>,
}

#[repr(C, align(16))]
struct Aligned16<const N: usize>([u8; N]);

// SAFETY: as for GuestCell: one thread per (non-shared) memory.
unsafe impl<const N: usize> Sync for BumpArena<N> {}

impl<const N: usize> BumpArena<N> {
    /// An empty arena.
    pub const fn new() -> Self {
        BumpArena { used: UnsafeCell::new(0), bytes: UnsafeCell::new(Aligned16([0; N])) }
    }

    /// The next block of `size` bytes, or `None` when `size` is negative or
    /// the arena is exhausted.
    pub fn alloc(&self, size: i32) -> Option<*mut u8> {
        let size = usize::try_from(size).ok()?;
        // SAFETY: single-threaded; `used` is only touched here.
        let used = unsafe { &mut *self.used.get() };
        let start = used.checked_add(15)? & !15;
        if start > N || size > N - start {
            return None;
        }
        *used = start + size;
        // SAFETY: start + size <= N, inside the array (at offset 0 of the
        // repr(C) `Aligned16`).
        Some(unsafe { (self.bytes.get() as *mut u8).add(start) })
    }
}

impl<const N: usize> Default for BumpArena<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs the queue-mode loop of a `run` export: waits for events and calls
/// the guest's handlers until the server stops (returns 0), as the host's
/// own loop would. A refused `on_open` closes the connection and its later
/// `CLOSE` is not passed to `on_close` (the loop remembers up to 64 refused
/// connections; beyond that `on_close` may see one).
#[cfg(any(target_arch = "wasm32", doc))]
pub fn run_loop<G: Guest>(guest: &mut G, buf: &mut [u8]) -> i32 {
    let mut refused = [0i32; 64];
    let mut next = 0usize;
    loop {
        match wait_msg(buf) {
            Err(Error::Shutdown) => return 0,
            Err(e) => return e.code(),
            Ok(Event::Open(c)) => {
                if !guest.on_open(c) {
                    let _ = c.close();
                    refused[next % refused.len()] = c.0;
                    next += 1;
                }
            }
            Ok(Event::Data(c, d)) => {
                if !guest.on_recv(c, d) {
                    let _ = c.close();
                }
            }
            Ok(Event::Close(c)) => {
                if let Some(slot) = refused.iter_mut().find(|r| **r == c.0) {
                    *slot = 0;
                } else {
                    guest.on_close(c);
                }
            }
        }
    }
}

/// Produces a guest's exports from a [`Guest`] type.
///
/// ```ignore
/// export_guest! {
///     guest: MyGuest = MyGuest::new(),   // the state, created on first use
///     alloc: 65536 + 16,                 // optional: `alloc` over a static arena of this size
///     run: 65536,                        // optional: `run` with a receive buffer of this size
/// }
/// ```
///
/// Always exports `on_recv`, `on_open`, `on_close` and `wcoro_abi_version`.
/// `alloc` is required for `--source spawn` (spawned envs have no WAMR app
/// heap); size it for the host's chunk size plus 16. Without `run`, queue
/// mode runs the loop in the host (slightly cheaper; identical semantics).
#[cfg(any(target_arch = "wasm32", doc))]
#[macro_export]
macro_rules! export_guest {
    (guest: $ty:ty = $init:expr $(, alloc: $arena:expr)? $(, run: $buf:expr)? $(,)?) => {
        static __WCORO_GUEST: $crate::GuestCell<$ty> = $crate::GuestCell::new();

        #[no_mangle]
        #[used]
        static wcoro_abi_version: $crate::AbiVersionRecord = $crate::AbiVersionRecord::CURRENT;

        #[no_mangle]
        pub extern "C" fn on_recv(conn: i32, ptr: *const u8, len: i32) -> i32 {
            let data: &[u8] = if len <= 0 || ptr.is_null() {
                &[]
            } else {
                // SAFETY: the host passes a checked range of our memory, valid
                // for this call (docs/guest-abi.md, buffer lifetimes).
                unsafe { ::core::slice::from_raw_parts(ptr, len as usize) }
            };
            let keep = __WCORO_GUEST.with(|| $init, |g| $crate::Guest::on_recv(g, $crate::Conn(conn), data));
            if keep { 0 } else { -1 }
        }

        #[no_mangle]
        pub extern "C" fn on_open(conn: i32) -> i32 {
            let ok = __WCORO_GUEST.with(|| $init, |g| $crate::Guest::on_open(g, $crate::Conn(conn)));
            if ok { 0 } else { -1 }
        }

        #[no_mangle]
        pub extern "C" fn on_close(conn: i32) {
            __WCORO_GUEST.with(|| $init, |g| $crate::Guest::on_close(g, $crate::Conn(conn)))
        }

        $(
            static __WCORO_ARENA: $crate::BumpArena<{ $arena }> = $crate::BumpArena::new();
            #[no_mangle]
            pub extern "C" fn alloc(size: i32) -> i32 {
                __WCORO_ARENA.alloc(size).map_or(0, |p| p as i32)
            }
        )?

        $(
            static __WCORO_RUN_BUF: $crate::BumpArena<{ $buf }> = $crate::BumpArena::new();
            #[no_mangle]
            pub extern "C" fn run() -> i32 {
                let Some(p) = __WCORO_RUN_BUF.alloc(($buf) as i32) else { return -1 };
                // SAFETY: the arena hands this block out once (a second `run`
                // gets None above); it is ours for the instance's life.
                let buf = unsafe { ::core::slice::from_raw_parts_mut(p, $buf) };
                __WCORO_GUEST.with(|| $init, |g| $crate::run_loop(g, buf))
            }
        )?
    };
}

#[cfg(all(target_arch = "wasm32", not(feature = "std"), not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip() {
        for c in -6..0 {
            assert_eq!(Error::from_code(c).code(), c);
        }
    }

    #[test]
    fn events_decode() {
        let buf = *b"hello";
        assert_eq!(Event::decode(3, RawEvent { conn: 7, kind: EVENT_DATA }, &buf), Ok(Event::Data(Conn(7), b"hel")));
        assert_eq!(Event::decode(0, RawEvent { conn: 7, kind: EVENT_OPEN }, &buf), Ok(Event::Open(Conn(7))));
        assert_eq!(Event::decode(ERR_SHUTDOWN, RawEvent::default(), &buf), Err(Error::Shutdown));
        assert_eq!(Event::decode(9, RawEvent { conn: 7, kind: EVENT_DATA }, &buf), Err(Error::BadPointer));
    }

    #[test]
    fn bump_arena_aligns_and_runs_out() {
        let a = BumpArena::<64>::new();
        let p = a.alloc(1).unwrap();
        let q = a.alloc(16).unwrap();
        assert_eq!(q as usize - p as usize, 16);
        assert_eq!(p as usize % 16, 0);
        assert!(a.alloc(33).is_none());
        assert!(a.alloc(-1).is_none());
        assert!(a.alloc(32).is_some());
    }
}
