//! Host functions: imports that guests call, written in Rust or in C.
//!
//! All of them — the guest ABI's own `env.send` & co., a user's Rust
//! closures, and C natives from `wamr/src/` — go through one path:
//! `register` builds a WAMR raw native (`wasm_runtime_register_natives_raw`)
//! whose function pointer is `trampoline` and whose attachment is the
//! leaked [`HostFunc`]. The trampoline decodes the arguments by the declared
//! types, calls the closure with a [`Caller`], and writes the result back; a
//! closure's error or panic becomes a trap of the calling guest, never an
//! unwind through C.
//!
//! WAMR keeps the `NativeSymbol` arrays and names forever and resolves
//! imports at module load, so registration is process-wide, permanent, and
//! must precede loading the modules that use it.
//!
//! Two ways to declare one: [`HostFunc::wrap`] infers the signature from a
//! closure's Rust types (`|caller: Caller<'_>, a: i32, b: i64| -> i32`) and
//! reports failures as [`HostError`]; [`HostFunc::new`] takes the types
//! explicitly and works on [`Val`]s. Inside a connection's callback,
//! [`Caller::connection`] tells which connection (id and peer address) the
//! guest is serving.
//!
//! # Rules for host functions (they run inside coroutines)
//!
//! A host function runs inside a WAMR call made by a `may` coroutine (in a
//! server: direct mode, the connection's; queue mode, the runner's, a
//! coroutine or a dedicated thread per `--runner`), on the coroutine's own
//! stack or, for an env set to [`CallStack::Worker`](crate::CallStack), on
//! its worker thread's call stack.
//! - **Block only through `may` primitives** (`may::sync` channels, mutexes,
//!   semaphores, `may::coroutine::sleep`, `may::net` sockets). They park the
//!   coroutine and let the worker run others; the call resumes, possibly on
//!   another OS thread (measured: `docs/wamr-notes.md`).
//! - **Or declare that it never blocks** ([`HostFunc::never_blocks`]). A
//!   server runs a direct-mode guest's calls on the worker's call stack only
//!   if every function it imports is so declared (the ABI's imports and C
//!   natives are); there, an attempt to block fails the call as a trap
//!   instead of parking the coroutine.
//! - **No OS-blocking calls**: `std::thread::sleep`, `std::sync::Mutex` held
//!   across a wait, blocking `std::net`/`std::fs` I/O, or waiting on a
//!   `std::sync::mpsc` channel block the whole worker thread and every
//!   coroutine queued on it; a server's call budget still counts the time.
//! - **No thread-locals across a yield**: after a `may` primitive parks the
//!   coroutine it may resume on another worker, so a `thread_local!` read
//!   before and after can be two different values; keep per-call state in
//!   locals or in the env's host data. The compiler may also compute a
//!   thread-local's address once for a whole function, so read one only in
//!   a function that does not yield and is `#[inline(never)]`, or after a
//!   yield the read can be another thread's (`vendor/README.md`, fifth change).
//! - Keep it short: a guest call cannot be preempted, so a long host
//!   function stalls its worker like a spinning guest.
//! - Check every guest pointer through [`Caller::memory`] ([`GuestMemory`]
//!   bounds-checks ranges); never keep a reference into guest memory after
//!   returning (the guest may grow and move it).
use std::any::Any;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};

use parking_lot::Mutex;

use super::exec_env::HostData;
use super::memory::GuestMemory;
use super::module::{FuncType, ValType};
use super::sys;
use super::value::Val;
use crate::error::{Error, Result};

/// What a host function returns: a value (or none), or a trap message.
pub type HostResult = std::result::Result<Option<Val>, String>;

type Callback = dyn Fn(&mut Caller<'_>, &[Val]) -> HostResult + Send + Sync + 'static;

/// A host function that guests import as `module.name`.
pub struct HostFunc {
    module: String,
    name: String,
    ty: FuncType,
    callback: Box<Callback>,
    /// Whether it may block the calling coroutine (see [`HostFunc::never_blocks`]).
    blocks: bool,
}

impl std::fmt::Debug for HostFunc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostFunc({}.{} {})", self.module, self.name, self.ty)
    }
}

impl HostFunc {
    /// A host function with parameters `params` and results `results` (at
    /// most one). `f` runs on the caller's coroutine and may yield it
    /// (unless declared [`never_blocks`](Self::never_blocks)).
    pub fn new<F>(module: &str, name: &str, params: &[ValType], results: &[ValType], f: F) -> HostFunc
    where
        F: Fn(&mut Caller<'_>, &[Val]) -> HostResult + Send + Sync + 'static,
    {
        HostFunc {
            module: module.into(),
            name: name.into(),
            ty: FuncType::new(params, results),
            callback: Box::new(f),
            blocks: true,
        }
    }

    /// Declares that the function never blocks the calling coroutine: it
    /// waits on no `may` socket, channel, lock or sleep (OS-level waits do
    /// not count: they hold the thread, not the coroutine). A server runs the
    /// direct-mode calls of a guest that imports only such functions on the
    /// worker's call stack ([`CallStack::Worker`](crate::CallStack)), which
    /// stays in cache; a guest that imports one without it runs its calls on
    /// each connection's own stack. A function declared so that blocks all
    /// the same fails the guest's call (a trap) instead of blocking.
    pub fn never_blocks(mut self) -> HostFunc {
        self.blocks = false;
        self
    }

    fn signature(&self) -> Result<String> {
        let bad = |why: &str| Error::HostFunc { module: self.module.clone(), name: self.name.clone(), why: why.into() };
        if self.ty.results.len() > 1 {
            return Err(bad("at most one result"));
        }
        if self.ty.params.len() > 16 {
            return Err(bad("at most 16 parameters"));
        }
        let letters = |v: &[ValType]| -> Result<String> {
            v.iter().map(|t| t.letter().ok_or_else(|| bad("only i32, i64, f32, f64"))).collect()
        };
        Ok(format!("({}){}", letters(&self.ty.params)?, letters(&self.ty.results)?))
    }
}

/// Why a typed host function failed. The calling guest traps with this
/// message (the call in progress fails as [`Error::Trap`], which a server
/// treats as a fault of that connection or queue shard).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HostError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl HostError {
    /// A failure described by `message`.
    pub fn msg(message: impl Into<String>) -> HostError {
        HostError { message: message.into(), source: None }
    }

    /// A failure caused by `error` (its text becomes the trap message).
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> HostError {
        HostError { message: error.to_string(), source: Some(Box::new(error)) }
    }
}

impl From<Error> for HostError {
    fn from(e: Error) -> HostError {
        HostError::from_error(e)
    }
}

impl From<std::io::Error> for HostError {
    fn from(e: std::io::Error) -> HostError {
        HostError::from_error(e)
    }
}

/// A value a typed host function takes or returns: `i32`, `u32`, `i64`,
/// `u64`, `f32`, `f64`.
pub trait HostValue: Copy + Send + 'static {
    /// Its WebAssembly type.
    const TY: ValType;
    /// From WAMR's argument slot.
    fn from_slot(slot: u64) -> Self;
    /// As a [`Val`].
    fn into_val(self) -> Val;
}

macro_rules! host_value {
    ($t:ty, $vt:ident, $from:expr, $into:expr) => {
        impl HostValue for $t {
            const TY: ValType = ValType::$vt;
            fn from_slot(slot: u64) -> Self {
                $from(slot)
            }
            fn into_val(self) -> Val {
                $into(self)
            }
        }
    };
}
host_value!(i32, I32, |s: u64| s as u32 as i32, Val::I32);
host_value!(u32, I32, |s: u64| s as u32, |v: u32| Val::I32(v as i32));
host_value!(i64, I64, |s: u64| s as i64, Val::I64);
host_value!(u64, I64, |s: u64| s, |v: u64| Val::I64(v as i64));
host_value!(f32, F32, |s: u64| f32::from_bits(s as u32), Val::F32);
host_value!(f64, F64, |s: u64| f64::from_bits(s), Val::F64);

/// What a typed host function may return: `()` or one [`HostValue`]
/// (WAMR 2.4.3's natives have at most one result: `wasm_native.c` accepts
/// one result letter in a signature and the raw call returns in `argv[0]`),
/// or either inside `Result<_, E>` with `E: Into<HostError>`.
pub trait HostReturn: 'static {
    /// The result types.
    fn types() -> Vec<ValType>;
    /// The value, or the trap.
    fn into_result(self) -> std::result::Result<Option<Val>, HostError>;
}

/// `()` or one [`HostValue`]: the successful part of a [`HostReturn`].
pub trait HostPlainReturn: 'static {
    /// The result types.
    fn types() -> Vec<ValType>;
    /// The value.
    fn into_val(self) -> Option<Val>;
}

impl HostPlainReturn for () {
    fn types() -> Vec<ValType> {
        Vec::new()
    }
    fn into_val(self) -> Option<Val> {
        None
    }
}

impl<T: HostValue> HostPlainReturn for T {
    fn types() -> Vec<ValType> {
        vec![T::TY]
    }
    fn into_val(self) -> Option<Val> {
        Some(HostValue::into_val(self))
    }
}

impl<T: HostPlainReturn> HostReturn for T {
    fn types() -> Vec<ValType> {
        <T as HostPlainReturn>::types()
    }
    fn into_result(self) -> std::result::Result<Option<Val>, HostError> {
        Ok(self.into_val())
    }
}

impl<T: HostPlainReturn, E: Into<HostError> + 'static> HostReturn for std::result::Result<T, E> {
    fn types() -> Vec<ValType> {
        T::types()
    }
    fn into_result(self) -> std::result::Result<Option<Val>, HostError> {
        self.map(HostPlainReturn::into_val).map_err(Into::into)
    }
}

/// A Rust closure usable as a typed host function: `Fn(Caller<'_>, A1, ..,
/// An) -> R` with up to 8 [`HostValue`] parameters and a [`HostReturn`].
/// `Params` is the tuple of parameter types (inferred).
pub trait IntoHostFunc<Params, R>: Send + Sync + 'static {
    /// The parameter types.
    fn params() -> Vec<ValType>;
    /// Calls the closure with arguments decoded from `args`.
    fn call(&self, caller: Caller<'_>, args: &[Val]) -> std::result::Result<Option<Val>, HostError>;
}

macro_rules! into_host_func {
    ($($a:ident),*) => {
        impl<F, R, $($a: HostValue),*> IntoHostFunc<($($a,)*), R> for F
        where
            F: Fn(Caller<'_>, $($a),*) -> R + Send + Sync + 'static,
            R: HostReturn,
        {
            fn params() -> Vec<ValType> {
                vec![$($a::TY),*]
            }
            #[allow(non_snake_case, unused_mut, unused_variables)]
            fn call(&self, caller: Caller<'_>, args: &[Val]) -> std::result::Result<Option<Val>, HostError> {
                let mut it = args.iter();
                $( let $a = $a::from_slot(it.next().map(|v| v.to_slot()).unwrap_or(0)); )*
                (self)(caller, $($a),*).into_result()
            }
        }
    };
}
into_host_func!();
into_host_func!(A1);
into_host_func!(A1, A2);
into_host_func!(A1, A2, A3);
into_host_func!(A1, A2, A3, A4);
into_host_func!(A1, A2, A3, A4, A5);
into_host_func!(A1, A2, A3, A4, A5, A6);
into_host_func!(A1, A2, A3, A4, A5, A6, A7);
into_host_func!(A1, A2, A3, A4, A5, A6, A7, A8);

impl HostFunc {
    /// A host function whose WebAssembly signature is inferred from the
    /// closure's Rust types (wasmtime's `Func::wrap` idea):
    ///
    /// ```no_run
    /// # use wamr_coro::{Caller, HostFunc, HostError, Runtime, RuntimeConfig};
    /// let rt = Runtime::init(RuntimeConfig::default())?;
    /// // (i32, i64) -> i32
    /// rt.register(HostFunc::wrap("svc", "mix", |_caller: Caller<'_>, a: i32, b: i64| a ^ b as i32))?;
    /// // () -> i32, failing with a trap outside a connection
    /// rt.register(HostFunc::wrap("svc", "conn_id", |mut caller: Caller<'_>| {
    ///     caller.connection().map(|c| c.id).ok_or_else(|| HostError::msg("not serving a connection"))
    /// }))?;
    /// # Ok::<(), wamr_coro::Error>(())
    /// ```
    ///
    /// Parameters: up to 8 of `i32`, `u32`, `i64`, `u64`, `f32`, `f64`.
    /// Result: `()`, one of those, or either in a `Result<_, E>` with
    /// `E: Into<HostError>`; an `Err` traps the calling guest with its
    /// message. A panic traps it too and never unwinds into WAMR.
    ///
    /// The closure runs on the calling guest's coroutine; see the module
    /// documentation for what it may do there.
    pub fn wrap<P, R, F>(module: &str, name: &str, f: F) -> HostFunc
    where
        F: IntoHostFunc<P, R>,
        R: HostReturn,
    {
        let params = F::params();
        let results = R::types();
        HostFunc::new(module, name, &params, &results, move |caller, args| {
            f.call(caller.reborrow(), args).map_err(|e| e.to_string())
        })
    }
}

/// The guest that called a host function.
pub struct Caller<'a> {
    env: sys::wasm_exec_env_t,
    inst: sys::wasm_module_inst_t,
    trap: Option<String>,
    _life: std::marker::PhantomData<&'a mut ()>,
}

impl<'a> Caller<'a> {
    /// The same caller, for a shorter borrow (handed to typed host functions
    /// by value).
    pub(crate) fn reborrow(&mut self) -> Caller<'_> {
        Caller { env: self.env, inst: self.inst, trap: None, _life: std::marker::PhantomData }
    }

    /// The caller's linear memory. Valid until the host function returns.
    pub fn memory(&mut self) -> GuestMemory<'_> {
        // SAFETY: the user data is NULL or ExecEnv::wrap's HostData box (see
        // data_mut); the memory contract is memory_with's, held in a host call.
        unsafe { self.memory_with((sys::wasm_runtime_get_user_data(self.env) as *const HostData).as_ref()) }
    }

    /// The caller's memory: the env's cached view when `data` was made for
    /// this very instance (see `HostData::inst`), else looked up now.
    ///
    /// # Safety
    /// SAFETY contract: the instance is alive and suspended in this host
    /// call for `'m`, so it cannot grow its memory meanwhile.
    unsafe fn memory_with<'m>(&self, data: Option<&HostData>) -> GuestMemory<'m> {
        match data {
            // SAFETY: the cached memory belongs to this instance, which the
            // caller's contract keeps alive and unchanged.
            Some(d) if d.inst == self.inst => unsafe { d.memory.view() },
            // SAFETY: as above, for the instance itself.
            _ => unsafe { GuestMemory::of_instance(self.inst) },
        }
    }

    /// The value set with `ExecEnv::set_host_data`, if it is a `T`.
    pub fn data_mut<T: 'static>(&mut self) -> Option<&mut T> {
        // SAFETY: ExecEnv::wrap set the user data to its HostData box, which
        // outlives every call on the env; during this host call the env is
        // exclusively borrowed by ExecEnv::call, so nobody else touches it.
        let data = unsafe { (sys::wasm_runtime_get_user_data(self.env) as *mut HostData).as_mut() }?;
        data.value.as_mut()?.downcast_mut::<T>()
    }

    /// The raw host data, for dispatch on several types.
    pub fn data_any(&mut self) -> Option<&mut (dyn Any + Send)> {
        // SAFETY: as in data_mut.
        let data = unsafe { (sys::wasm_runtime_get_user_data(self.env) as *mut HostData).as_mut() }?;
        data.value.as_deref_mut()
    }

    /// Memory and host data at once (they are distinct objects).
    pub fn split(&mut self) -> (GuestMemory<'_>, Option<&mut (dyn Any + Send)>) {
        // SAFETY: as in memory() and data_mut(); the memory view and the
        // HostData box do not overlap.
        unsafe {
            let data = (sys::wasm_runtime_get_user_data(self.env) as *mut HostData).as_mut();
            let mem = self.memory_with(data.as_deref());
            (mem, data.and_then(|d| d.value.as_deref_mut()))
        }
    }
}

struct RegisteredFunc {
    func: HostFunc,
    cmodule: CString,
}

/// Every registered `(module, name)` with its signature and whether it may
/// block.
static NAMES: Mutex<Option<HashMap<(String, String), (FuncType, bool)>>> = Mutex::new(None);

/// The signature of the host function registered as `module.name`, if any
/// (used to explain an import that did not link).
pub(crate) fn registered_type(module: &str, name: &str) -> Option<FuncType> {
    NAMES.lock().as_ref()?.get(&(module.to_string(), name.to_string())).map(|(ty, _)| ty.clone())
}

/// Whether the host function registered as `module.name` may block the
/// calling coroutine (not declared [`HostFunc::never_blocks`]).
pub(crate) fn may_block(module: &str, name: &str) -> bool {
    NAMES.lock().as_ref().and_then(|n| n.get(&(module.to_string(), name.to_string()))).is_some_and(|(_, b)| *b)
}

/// Registers `func` for every module loaded afterwards.
pub(crate) fn register(func: HostFunc) -> Result<()> {
    let sig = func.signature()?;
    let key = (func.module.clone(), func.name.clone());
    let mut names = NAMES.lock();
    let names = names.get_or_insert_with(HashMap::new);
    if names.contains_key(&key) {
        return Err(Error::HostFunc {
            module: key.0,
            name: key.1,
            why: "already registered (registrations are permanent)".into(),
        });
    }
    let cname = super::runtime::cstring(&func.name)?;
    let csig = super::runtime::cstring(&sig)?;
    let cmodule = super::runtime::cstring(&func.module)?;
    let ty = (func.ty.clone(), func.blocks);
    let reg: &'static RegisteredFunc = Box::leak(Box::new(RegisteredFunc { func, cmodule }));
    let symbol: &'static mut [sys::NativeSymbol] = Box::leak(Box::new([sys::NativeSymbol {
        symbol: cname.into_raw(),
        func_ptr: trampoline as *mut libc::c_void,
        signature: csig.into_raw(),
        attachment: reg as *const RegisteredFunc as *mut libc::c_void,
    }]));
    // NAMES' lock serialises registrations.
    // SAFETY: the symbol array, its strings and the module name are leaked
    // (WAMR keeps them forever); `trampoline` has the raw-native signature
    // `void (wasm_exec_env_t, uint64 *)`.
    let ok = unsafe { sys::wasm_runtime_register_natives_raw(reg.cmodule.as_ptr(), symbol.as_mut_ptr(), 1) };
    if !ok {
        return Err(Error::HostFunc { module: key.0, name: key.1, why: "WAMR refused the registration".into() });
    }
    names.insert(key, ty);
    Ok(())
}

/// The one raw native behind every host function.
unsafe extern "C" fn trampoline(env: sys::wasm_exec_env_t, args: *mut u64) {
    // SAFETY: WAMR passes the attachment we registered: a leaked Registered.
    let reg = unsafe { &*(sys::wasm_runtime_get_function_attachment(env) as *const RegisteredFunc) };
    let ty = &reg.func.ty;
    // SAFETY: `env` is the calling env, alive during the call.
    let inst = unsafe { sys::wasm_runtime_get_module_inst(env) };
    // Only the declared parameters are written: on a coroutine's own stack
    // the lines are cold when there are many connections, and writing all
    // sixteen cost four cache lines per call.
    let mut slots = [const { MaybeUninit::<Val>::uninit() }; 16];
    for (i, t) in ty.params.iter().enumerate() {
        // SAFETY: WAMR's raw convention: one u64 slot per declared parameter
        // (at most 16, checked at registration).
        slots[i].write(Val::from_slot(*t, unsafe { *args.add(i) }));
    }
    // SAFETY: the loop above initialised the first `params.len()` elements
    // (at most 16), and MaybeUninit<Val> has Val's layout.
    let vals = unsafe { std::slice::from_raw_parts(slots.as_ptr().cast::<Val>(), ty.params.len()) };
    let mut caller = Caller { env, inst, trap: None, _life: std::marker::PhantomData };
    let outcome = catch_unwind(AssertUnwindSafe(|| (reg.func.callback)(&mut caller, vals)));
    let trap = match outcome {
        Ok(Ok(ret)) => {
            if let (Some(v), Some(t)) = (ret, ty.results.first()) {
                if v.ty() == *t {
                    // SAFETY: the result goes to args[0] (raw convention).
                    unsafe { *args = v.to_slot() };
                    None
                } else {
                    Some(format!(
                        "host function {}.{} returned {:?}, declared {:?}",
                        reg.func.module,
                        reg.func.name,
                        v.ty(),
                        t
                    ))
                }
            } else if ty.results.is_empty() {
                None
            } else {
                Some(format!("host function {}.{} returned no value", reg.func.module, reg.func.name))
            }
        }
        Ok(Err(msg)) => Some(msg),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Some(format!("host function {}.{} panicked: {what}", reg.func.module, reg.func.name))
        }
    };
    if let Some(msg) = trap.or(caller.trap.take()) {
        let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
        // SAFETY: `inst` is the caller's live instance; WAMR copies the text.
        unsafe { sys::wasm_runtime_set_exception(inst, c.as_ptr()) };
    }
    // SAFETY: ExecEnv::wrap set the user data to its HostData box, which
    // outlives every call on the env (as in Caller::data_mut); read only.
    if let Some(data) = unsafe { (sys::wasm_runtime_get_user_data(env) as *const HostData).as_ref() } {
        super::metering::after_native(env, &data.interrupt.metering);
    }
}

// ---- The C face of the same mechanism (wamr/include/wamr_coro_host.h) ----

/// `wcoro_caller` in C is a `Caller`.
type CNative = unsafe extern "C" fn(
    caller: *mut Caller<'_>,
    args: *const u64,
    result: *mut u64,
    attachment: *mut libc::c_void,
) -> libc::c_int;

struct SendPtr(*mut libc::c_void);
// SAFETY: the attachment is an opaque pointer owned by the C side, which
// promises (wamr_coro_host.h) that its natives are thread-safe.
unsafe impl Send for SendPtr {}
// SAFETY: see Send.
unsafe impl Sync for SendPtr {}

fn parse_signature(sig: &str) -> Option<(Vec<ValType>, Vec<ValType>)> {
    let rest = sig.strip_prefix('(')?;
    let (p, r) = rest.split_once(')')?;
    let conv = |s: &str| -> Option<Vec<ValType>> {
        s.chars()
            .map(|c| match c {
                'i' => Some(ValType::I32),
                'I' => Some(ValType::I64),
                'f' => Some(ValType::F32),
                'F' => Some(ValType::F64),
                _ => None,
            })
            .collect()
    };
    Some((conv(p)?, conv(r)?))
}

/// C: register a native. See wamr_coro_host.h.
///
/// # Safety
/// Strings are NUL-terminated; `f` is a valid function for the process's life.
#[no_mangle]
pub unsafe extern "C" fn wcoro_register_native(
    module: *const libc::c_char,
    name: *const libc::c_char,
    signature: *const libc::c_char,
    f: Option<CNative>,
    attachment: *mut libc::c_void,
) -> libc::c_int {
    let s = |p: *const libc::c_char| {
        // SAFETY: the caller passes NUL-terminated strings (header contract).
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    let (Some(module), Some(name), Some(sig), Some(f)) = (s(module), s(name), s(signature), f) else {
        tracing::error!("wcoro_register_native: NULL argument");
        return -1;
    };
    let Some((params, results)) = parse_signature(&sig) else {
        tracing::error!("wcoro_register_native {module}.{name}: bad signature {sig:?}");
        return -1;
    };
    let att = SendPtr(attachment);
    let rtypes = results.clone();
    let hf = HostFunc::new(&module, &name, &params, &results, move |caller, args| {
        let slots: Vec<u64> = args.iter().map(|a| a.to_slot()).collect();
        let mut out = 0u64;
        let att = &att;
        // SAFETY: `f` follows wcoro_native_fn; `slots` holds one slot per
        // declared parameter; `caller` lives for the call.
        let rc = unsafe { f(caller as *mut Caller<'_>, slots.as_ptr(), &mut out, att.0) };
        if rc != 0 {
            return Err(caller.trap.take().unwrap_or_else(|| "C native failed".into()));
        }
        Ok(rtypes.first().map(|t| Val::from_slot(*t, out)))
    })
    // C cannot suspend a coroutine: it knows nothing of `may`.
    .never_blocks();
    // WAMR keeps natives in memory it allocates: it must be initialised
    // (the built-in C natives register from inside `Runtime::init`).
    if !super::runtime::wamr_initialised() {
        tracing::error!("wcoro_register_native {module}.{name}: call Runtime::init first");
        return -1;
    }
    if let Err(e) = register(hf) {
        tracing::error!("wcoro_register_native: {e}");
        return -1;
    }
    0
}

/// C: checked view of guest memory. See wamr_coro_host.h.
///
/// # Safety
/// `caller` is the pointer passed to the running native.
#[no_mangle]
pub unsafe extern "C" fn wcoro_caller_mem(caller: *mut Caller<'_>, ptr: u32, len: u32) -> *mut u8 {
    // SAFETY: the C native passes back the caller it was given, live for the call.
    let Some(caller) = (unsafe { caller.as_mut() }) else { return std::ptr::null_mut() };
    let Ok(len) = i32::try_from(len) else { return std::ptr::null_mut() };
    let mem = caller.memory();
    mem.ptr(ptr as i32, len).unwrap_or(std::ptr::null_mut())
}

/// C: set the trap message. See wamr_coro_host.h.
///
/// # Safety
/// `caller` as above; `message` NUL-terminated or NULL.
#[no_mangle]
pub unsafe extern "C" fn wcoro_caller_trap(caller: *mut Caller<'_>, message: *const libc::c_char) {
    // SAFETY: see wcoro_caller_mem.
    let Some(caller) = (unsafe { caller.as_mut() }) else { return };
    caller.trap = Some(if message.is_null() {
        "C native failed".into()
    } else {
        // SAFETY: NUL-terminated per the header.
        unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
    });
}

extern "C" {
    fn wcoro_register_c_natives() -> libc::c_int;
}

/// Host functions the layers above the FFI layer build into every runtime
/// (the guest ABI's `env.*` imports, `crate::abi`). Each entry returns its
/// functions; [`register_builtin_natives`] registers them during
/// `Runtime::init`, before any module can load. A distributed slice
/// (`linkme`) lets those layers add entries without this layer naming them.
#[linkme::distributed_slice]
pub static BUILTIN_IMPORTS: [fn() -> Vec<HostFunc>];

/// Registers the runtime's built-in natives: the C natives of
/// `wamr/src/natives.c` (module `wcoro_c`), then every [`BUILTIN_IMPORTS`]
/// entry. Runs inside `Runtime::init`, before the runtime is published.
pub(crate) fn register_builtin_natives() -> Result<()> {
    // SAFETY: plain C function; it calls back into wcoro_register_native.
    let rc = unsafe { wcoro_register_c_natives() };
    if rc != 0 {
        return Err(Error::RuntimeInit("registering the C natives failed".into()));
    }
    for entry in BUILTIN_IMPORTS {
        for func in entry() {
            register(func)?;
        }
    }
    Ok(())
}
