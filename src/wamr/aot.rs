//! Compiled guests (AOT): `wamr-coro compile` and the `serve --aot` cache.
//!
//! **The compiler is a separate executable.** WAMR's AOT compiler
//! (`core/iwasm/compilation`, built with `WASM_ENABLE_WAMR_COMPILER=1`)
//! changes the layout of WAMR's internal structs, so it cannot be linked
//! into this binary's runtime build. build.rs builds `wamr-coro-aotc`
//! (`wamr/src/aotc.c`, a compiler-configured copy of WAMR, LLVM 14) when
//! LLVM is installed, and this binary *embeds* it: [`compile`] writes it to
//! an anonymous memory file (`memfd_create`) and executes that. One file to
//! install (`cargo install` copies only the binary), nothing to find at run
//! time but LLVM's shared library, no stale compiler next to a newer binary.
//! Where the kernel refuses to execute a memfd, the compiler is written once
//! to the cache directory instead. A build without LLVM has no compiler, and
//! [`compile`] says what to install.
//!
//! **An AOT file carries its wasm.** The host reads facts from a module's
//! wasm that WAMR does not expose (memory sizes, `memory.grow`, reset
//! safety, import and export signatures, the exported ABI-version global:
//! `scan.rs`, `module.rs`). An AOT file has no wasm, so [`compile`] appends
//! the input module to itself as the custom section [`WASM_SECTION`] and has
//! the compiler emit that section into the AOT file; [`super::Module`] reads
//! it back at load (`wasm_runtime_get_custom_section`) and scans it like a
//! wasm module, then checks that WAMR's view of the compiled module (its
//! imports and exports) matches. An AOT file without the section (made by
//! plain `wamrc`) is refused with a message saying how to make one: without
//! its wasm the host could check neither the guest ABI nor reset safety.
//!
//! **Trust.** An AOT file is native code that this process maps executable
//! and runs: load only AOT files you (or this binary's `compile`) made.
//! Hostile *wasm* is safe to compile; a hostile *AOT file* is not safe to
//! load, whatever checks precede it. So nothing here loads AOT bytes it was
//! handed as input ([`load_compiled`] and [`super::Module::new`] refuse
//! them: only [`super::Module::from_aot`] takes them), and the cache, whose
//! files are loaded as they are, is used only in a directory no one else
//! can write (see below).
//!
//! **Hostile wasm costs the compiler, not the caller.** WAMR's compiler and
//! LLVM take time and memory that grow faster than the input: 20,000 empty
//! functions (an 80 KB module) took 100 s and 1.5 GB, 100,000 more than
//! 5 minutes. The compiler runs under [`CompileLimits`] (a wall-clock
//! timeout, after which it is killed, and `RLIMIT_DATA`), and is killed
//! with the process that started it (`PR_SET_PDEATHSIG`): a `serve` killed
//! while compiling at start left it running for minutes.
//!
//! **Compile options** (fixed in `aotc.c`): software bound checks and
//! native-stack bound checks on (the runtime has no hardware bound checks,
//! and the stack check is what makes deep recursion on a coroutine stack a
//! trap: `stack.rs`), the proposals the runtime build enables, opt level 3.
//! [`Target::Native`] compiles for this machine's CPU (LLVM's host CPU name
//! and features); [`Target::Portable`] for generic x86-64 (or aarch64),
//! which runs on any CPU of the architecture.
//!
//! **The cache** ([`compile_cached`]) keys a compiled module by SHA-256 over
//! the input's wasm bytes, the compiler's identity (this crate's version,
//! WAMR's and LLVM's versions, a hash of the embedded compiler) and the
//! target (for `native`, this machine's CPU model and flags). Entries are
//! written to a temporary file and renamed, so a reader never sees half a
//! file; an entry WAMR cannot load is compiled again. A cache entry is
//! native code loaded without question, so whoever can write one runs code
//! in the server: the directory is created `0700`, and one (or an entry)
//! owned by another user (root aside) or writable by group or others is
//! not used (the module is compiled uncached, and the log says why); nor
//! is one inside such a directory, at any level up to the root (whoever
//! can write a directory can swap what is in it), except a sticky one of
//! root's such as `/tmp`. There is no default
//! cache without `$XDG_CACHE_HOME` or `$HOME`: the shared temporary
//! directory, the fallback before, let any local user plant entries under
//! the predictable names.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Name of the custom section holding the original wasm module in an AOT
/// file made by [`compile`].
pub const WASM_SECTION: &str = "wamr-coro.wasm";

/// The magic bytes of a WAMR AOT file.
pub const AOT_MAGIC: &[u8; 4] = b"\0aot";

/// What machine code to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Target {
    /// This machine's CPU, with all its features (fastest; may not run on
    /// an older CPU).
    #[default]
    Native,
    /// The architecture's baseline (x86-64 without extensions, or generic
    /// aarch64): runs on any CPU of the architecture.
    Portable,
}

impl Target {
    fn compiler_args(self) -> Vec<&'static str> {
        match (self, std::env::consts::ARCH) {
            (Target::Native, _) => vec![],
            (Target::Portable, "x86_64") => vec!["--arch=x86_64", "--cpu=x86-64"],
            (Target::Portable, _) => vec!["--arch=aarch64v8", "--cpu=generic"],
        }
    }

    /// What the compiled code depends on, for the cache key.
    fn identity(self) -> String {
        match self {
            Target::Native => {
                let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                let pick = |key: &str| info.lines().find(|l| l.starts_with(key)).unwrap_or_default().to_string();
                format!("native\n{}\n{}\n{}", pick("model name"), pick("flags"), pick("Features"))
            }
            Target::Portable => format!("portable-{}", std::env::consts::ARCH),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Native => "native",
            Target::Portable => "portable",
        })
    }
}

#[cfg(wamr_aotc)]
static COMPILER: &[u8] = include_bytes!(env!("WAMR_CORO_AOTC"));

/// The LLVM version the embedded compiler was built with; `None` if this
/// build has no AOT compiler (LLVM was not installed at build time).
pub fn compiler_llvm_version() -> Option<&'static str> {
    #[cfg(wamr_aotc)]
    return Some(env!("WAMR_CORO_AOTC_LLVM"));
    #[cfg(not(wamr_aotc))]
    None
}

/// Whether this build can compile ([`compiler_llvm_version`] is `Some`).
pub fn compiler_available() -> bool {
    compiler_llvm_version().is_some()
}

fn unavailable() -> Error {
    Error::Compile(
        "this wamr-coro was built without the AOT compiler, because LLVM was not found at build \
         time. Install LLVM 14's development files (Debian/Ubuntu: `apt-get install llvm-14-dev`, \
         which provides llvm-config-14; or set WAMR_CORO_LLVM_CONFIG to another llvm-config) and \
         build again (`cargo build --release`, or `./x`)"
            .into(),
    )
}

/// What the compiler may take (see the module docs): past `timeout` it is
/// killed; past `max_memory` bytes of data (`RLIMIT_DATA`) its allocations
/// fail and it stops. Either is a compile error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Wall-clock time one compile may take; at most [`MAX_COMPILE_TIME`].
    pub timeout: Duration,
    /// Data (heap) the compiler process may use, bytes.
    pub max_memory: u64,
}

/// The longest [`CompileLimits::timeout`] allowed: below the age at which
/// another process takes a dead process's scratch directory for stale, so
/// that no live compile's directory looks stale.
pub const MAX_COMPILE_TIME: Duration = Duration::from_secs(1800);

impl Default for CompileLimits {
    /// 60 s and 2 GiB: the guests in `guests/` compile in well under a
    /// second and 100 MB.
    fn default() -> CompileLimits {
        CompileLimits { timeout: Duration::from_secs(60), max_memory: 2 << 30 }
    }
}

/// `wasm` bytes of `input` (a wasm binary or WebAssembly text); an AOT file
/// is refused.
fn to_wasm(input: &[u8]) -> Result<Vec<u8>> {
    if input.starts_with(AOT_MAGIC) {
        return Err(Error::Compile("the input is already an AOT file".into()));
    }
    if input.starts_with(b"\0asm") {
        return Ok(input.to_vec());
    }
    wat::parse_bytes(input).map(|c| c.into_owned()).map_err(|e| Error::Wat(super::module::excerpt(&e.to_string(), 400)))
}

/// `wasm` with itself appended as the custom section [`WASM_SECTION`].
/// Refuses a module that already has such a section: the facts the host
/// trusts must be the module's own.
fn with_wasm_section(wasm: &[u8]) -> Result<Vec<u8>> {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(wasmparser::Payload::CustomSection(c)) if c.name() == WASM_SECTION => {
                return Err(Error::Compile(format!("the module already has a custom section named {WASM_SECTION:?}")))
            }
            Ok(_) => {}
            Err(e) => return Err(Error::Compile(format!("not a valid wasm binary: {e}"))),
        }
    }
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut payload = Vec::with_capacity(wasm.len() + 32);
    leb(WASM_SECTION.len(), &mut payload);
    payload.extend_from_slice(WASM_SECTION.as_bytes());
    payload.extend_from_slice(wasm);
    let mut out = Vec::with_capacity(wasm.len() + payload.len() + 8);
    out.extend_from_slice(wasm);
    out.push(0); // custom section id
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

/// Scratch directories are named `SCRATCH_PREFIX{pid}-{16 hex digits}`.
const SCRATCH_PREFIX: &str = "wamr-coro-aot-";

/// How old a dead process's scratch directory must be before
/// [`Scratch::sweep`] removes it: twice [`MAX_COMPILE_TIME`].
const STALE_AFTER: Duration = Duration::from_secs(2 * MAX_COMPILE_TIME.as_secs());

impl Scratch {
    /// A new directory, `0700`, under the temporary directory. Its name is
    /// not predictable and a taken one is skipped: with a name made of the
    /// pid and a counter alone, any local user could create it first and
    /// make every compile fail ("File exists"). The pid stays in the name
    /// so that [`Scratch::sweep`] can tell whose it is.
    fn new() -> Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU64 = AtomicU64::new(0);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(Scratch::sweep);
        let mut attempt = 0;
        loop {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let mut h = Sha256::new();
            let pid = std::process::id();
            h.update(format!("{pid}/{}/{nanos:?}", N.fetch_add(1, Ordering::Relaxed)));
            let dir = std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{pid}-{}", &hex(&h.finalize())[..16]));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Scratch(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                Err(source) => return Err(Error::Io { context: format!("creating {}", dir.display()), source }),
            }
        }
    }

    /// Removes the scratch directories that processes killed mid-compile
    /// left behind (`SIGKILL` runs no destructor): each holds the module
    /// and, where the compiler could not run from a memfd, a copy of the
    /// compiler, tens of MiB. Once per process, before its first compile.
    ///
    /// Only directories (not links) of this user whose process no longer
    /// exists and that nothing has touched for [`STALE_AFTER`]: the age
    /// spares a live compile of a process in another pid namespace that
    /// shares the temporary directory (a compile is stopped at
    /// [`MAX_COMPILE_TIME`]). Errors are ignored; what is not removed now
    /// may be next time. Directories of builds before 2026-12-07, whose
    /// names carry no pid, are not recognised and stay.
    fn sweep() {
        for dir in left_by_dead_processes(&std::env::temp_dir(), SCRATCH_PREFIX, |_| true, true) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(dir = %dir.display(), "removed a dead compile's scratch directory"),
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot remove a dead compile's scratch directory")
                }
            }
        }
    }
}

/// What processes now gone left in `dir`: entries named
/// `{prefix}{pid}-{rest}`, with `rest_ok(rest)`, for another process's
/// `pid`, that are directories (`dirs`) or regular files (never links), of
/// this user, untouched for [`STALE_AFTER`], and whose process no longer
/// exists. Unreadable entries are skipped.
fn left_by_dead_processes(dir: &Path, prefix: &str, rest_ok: impl Fn(&str) -> bool, dirs: bool) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split_once('-'))
            .filter(|(_, rest)| rest_ok(rest))
            .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
            .filter(|&pid| pid > 0 && pid as u32 != std::process::id())
        else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
        let old = meta.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= STALE_AFTER);
        let kind = if dirs { meta.is_dir() } else { meta.is_file() };
        if kind && meta.uid() == uid && old && process_gone(pid) {
            found.push(entry.path());
        }
    }
    found
}

/// Whether no process `pid` exists (in this pid namespace).
fn process_gone(pid: libc::pid_t) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only asks whether the
    // process exists.
    let refused = unsafe { libc::kill(pid, 0) } != 0;
    refused && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Removes the temporary files [`store`] leaves in cache directory `dir`
/// when its process is killed between writing one and renaming it into
/// place (a compiled guest each, up to tens of MiB): `.tmp-{pid}-{n}`
/// files of this user whose process no longer exists and that nothing has
/// touched for [`STALE_AFTER`] (the age spares a writer in another pid
/// namespace sharing the directory; a write and rename take milliseconds).
/// Errors are ignored.
fn sweep_tmp(dir: &Path) {
    for file in left_by_dead_processes(dir, ".tmp-", |n| n.parse::<u64>().is_ok(), false) {
        if std::fs::remove_file(&file).is_ok() {
            tracing::info!(file = %file.display(), "removed a dead process's unfinished AOT cache entry");
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles a module (wasm binary or WebAssembly text) into an AOT file's
/// bytes for `target`, carrying the module's wasm ([`WASM_SECTION`]), under
/// the default [`CompileLimits`].
pub fn compile(input: &[u8], target: Target) -> Result<Vec<u8>> {
    compile_with(input, target, &CompileLimits::default())
}

/// [`compile`] under `limits`.
pub fn compile_with(input: &[u8], target: Target, limits: &CompileLimits) -> Result<Vec<u8>> {
    if !compiler_available() {
        return Err(unavailable());
    }
    if limits.timeout > MAX_COMPILE_TIME {
        return Err(Error::Config(format!(
            "the compile time limit must be at most {} s, not {} s",
            MAX_COMPILE_TIME.as_secs(),
            limits.timeout.as_secs_f64()
        )));
    }
    let wasm = with_wasm_section(&to_wasm(input)?)?;
    let scratch = Scratch::new()?;
    let (inp, out) = (scratch.0.join("in.wasm"), scratch.0.join("out.aot"));
    std::fs::write(&inp, &wasm)
        .map_err(|source| Error::Io { context: format!("writing {}", inp.display()), source })?;
    let mut args: Vec<std::ffi::OsString> = vec![inp.into(), out.clone().into()];
    args.push(format!("--emit-section={WASM_SECTION}").into());
    args.extend(target.compiler_args().into_iter().map(Into::into));
    let output = run_compiler(&args, &scratch.0, limits)?;
    let Some(status) = output.status else {
        return Err(Error::Compile(format!(
            "the compiler ran past its time limit ({} s) and was stopped: the module is too large or \
             too complex to compile in that time",
            limits.timeout.as_secs_f64()
        )));
    };
    if !status.success() {
        let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        // Out of memory shows as LLVM's bad_alloc abort or WAMR's
        // "allocate memory failed", depending on who asked first.
        let memory = text.contains("bad_alloc") || text.contains("allocate memory failed");
        return Err(Error::Compile(format!(
            "the compiler failed ({status}){}: {}",
            if memory { format!(", out of its memory limit ({} MiB)", limits.max_memory >> 20) } else { String::new() },
            super::module::excerpt(if text.is_empty() { &stdout } else { &text }, 2000)
        )));
    }
    let aot =
        std::fs::read(&out).map_err(|source| Error::Io { context: format!("reading {}", out.display()), source })?;
    if !aot.starts_with(AOT_MAGIC) {
        return Err(Error::Compile("the compiler wrote no AOT file".into()));
    }
    Ok(aot)
}

/// What the compiler did: its exit status (`None`: killed at the time
/// limit) and the start of its output.
struct CompilerOutput {
    status: Option<std::process::ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs the embedded compiler with `args`, from a memfd (or, where that
/// cannot be executed, from a copy in `scratch`), under `limits`.
#[cfg(wamr_aotc)]
fn run_compiler(args: &[std::ffi::OsString], scratch: &Path, limits: &CompileLimits) -> Result<CompilerOutput> {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    let io = |context: &str, source: std::io::Error| Error::Io { context: context.into(), source };
    // SAFETY: memfd_create takes a NUL-terminated name and flags and returns
    // a new descriptor (or -1), which we own from here on.
    let fd = unsafe { libc::memfd_create(c"wamr-coro-aotc".as_ptr(), libc::MFD_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut file = std::fs::File::from(owned);
        file.write_all(COMPILER).map_err(|e| io("writing the compiler to a memfd", e))?;
        match run_limited(std::process::Command::new(format!("/proc/self/fd/{fd}")).args(args), scratch, limits) {
            Ok(out) => return Ok(out),
            Err(e) => tracing::debug!(error = %e, "cannot execute the compiler from a memfd; using a file"),
        }
        drop(file);
    }
    let exe = scratch.join("wamr-coro-aotc");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&exe)
            .map_err(|e| io("writing the compiler", e))?;
        f.write_all(COMPILER).map_err(|e| io("writing the compiler", e))?;
    }
    run_limited(std::process::Command::new(&exe).args(args), scratch, limits)
        .map_err(|e| io("running the AOT compiler", e))
}

/// Runs `cmd` under `limits`: its data limited, killed if this process
/// dies, killed at the time limit; its output goes to files in `scratch`
/// (a pipe nobody reads while we wait could fill and stall it), of which
/// the first 64 KiB are kept.
#[cfg(wamr_aotc)]
fn run_limited(
    cmd: &mut std::process::Command,
    scratch: &Path,
    limits: &CompileLimits,
) -> std::io::Result<CompilerOutput> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let (out_path, err_path) = (scratch.join("stdout"), scratch.join("stderr"));
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let parent = std::process::id() as libc::pid_t;
    let data =
        libc::rlimit { rlim_cur: limits.max_memory as libc::rlim_t, rlim_max: limits.max_memory as libc::rlim_t };
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (prctl, getppid, setrlimit, raise) on
    // values copied in before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0
                || libc::setrlimit(libc::RLIMIT_DATA, &data) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the death signal was armed.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + limits.timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let head = |p: &Path| -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        std::fs::File::open(p)?.take(64 << 10).read_to_end(&mut v)?;
        Ok(v)
    };
    Ok(CompilerOutput { status, stdout: head(&out_path)?, stderr: head(&err_path)? })
}

#[cfg(not(wamr_aotc))]
fn run_compiler(_args: &[std::ffi::OsString], _scratch: &Path, _limits: &CompileLimits) -> Result<CompilerOutput> {
    Err(unavailable())
}

/// The compiler's identity for cache keys: crate, WAMR and LLVM versions
/// and a hash of the embedded compiler.
fn compiler_identity() -> String {
    #[cfg(wamr_aotc)]
    let hash = {
        static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        HASH.get_or_init(|| hex(&Sha256::digest(COMPILER))).clone()
    };
    #[cfg(not(wamr_aotc))]
    let hash = String::new();
    format!(
        "{} wamr {} llvm {} aotc {hash}",
        env!("CARGO_PKG_VERSION"),
        super::build_info::WAMR_VERSION,
        compiler_llvm_version().unwrap_or("none")
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default cache directory: `$XDG_CACHE_HOME/wamr-coro/aot`, else
/// `$HOME/.cache/wamr-coro/aot`, else none (no cache: a directory every
/// user can write, such as the temporary one, would let any of them plant
/// native code under the cache's predictable names).
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wamr-coro").join("aot"))
}

/// Why `meta` (of the cache directory or an entry) may not be trusted:
/// another owner than this process's user or root (who can replace this
/// binary anyway: a cache root provisioned read-only is fine), or writable
/// by group or others. `None` if it is trusted.
fn untrusted(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!("it belongs to uid {}, neither this process's uid {me} nor root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!("its mode {:o} lets group or others write it", meta.mode() & 0o7777));
    }
    None
}

/// Why the directory `meta` describes, an ancestor of the cache directory,
/// may not be trusted: whoever can write it can rename the cache away and
/// put one of their own in its place. As [`untrusted`], except that a
/// sticky directory of root's that everyone may write (`/tmp`) is fine:
/// there only an entry's owner may rename or remove it.
fn untrusted_ancestor(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if meta.uid() == 0 && meta.mode() & 0o1000 != 0 {
        return None;
    }
    untrusted(meta)
}

/// `dir`, created `0700` if missing, if it can hold cache entries safely
/// (see the module docs), as the path to use for them: `dir` with every
/// symbolic link resolved, the path whose directories were checked. Why
/// not otherwise.
fn open_cache_dir(dir: &Path) -> std::result::Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    // The cache directory itself is not followed if it is a link (its
    // ancestors may be): say so, rather than "File exists" (a link to
    // nothing) or "not a directory" (a link to one).
    let link = || {
        std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()).then(|| {
            format!(
                "{} is a symbolic link, which the cache does not follow: name the directory it points to",
                dir.display()
            )
        })
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| link().unwrap_or_else(|| format!("cannot create {}: {e}", dir.display())))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(link().unwrap_or_else(|| format!("{} is not a directory", dir.display())));
    }
    if let Some(why) = untrusted(&meta) {
        return Err(format!("{}: {why}", dir.display()));
    }
    // Every directory above it too, up to the root, on the path with its
    // links resolved: the cache's own mode means nothing if someone else
    // can swap it, or a directory on the way to it, for one of theirs.
    let real = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for up in real.ancestors().skip(1) {
        let meta = std::fs::symlink_metadata(up).map_err(|e| format!("{}: {e}", up.display()))?;
        if let Some(why) = untrusted_ancestor(&meta) {
            return Err(format!("{} is inside {}, and {why}", dir.display(), up.display()));
        }
    }
    Ok(real)
}

/// The cache entry at `path`, if there is one this process may trust.
fn read_entry(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Not through a symbolic link; checked on the descriptor it is read from.
    // Without waiting: opening a FIFO found under the name blocked until a
    // writer came, which hung the server's start (or a reload) for ever.
    // Only a regular file is read, and for one O_NONBLOCK changes nothing.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    if let Some(why) = untrusted(&meta) {
        tracing::warn!(path = %path.display(), why, "cached AOT file not trusted; compiling again");
        return None;
    }
    let mut aot = Vec::with_capacity(meta.len().min(super::module::MAX_MODULE_BYTES as u64) as usize);
    f.take(super::module::MAX_MODULE_BYTES as u64).read_to_end(&mut aot).ok()?;
    aot.starts_with(AOT_MAGIC).then_some(aot)
}

/// The cache file for `wasm` compiled for `target`.
fn cache_path(dir: &Path, wasm: &[u8], target: Target) -> PathBuf {
    let mut h = Sha256::new();
    for part in [compiler_identity().as_bytes(), target.identity().as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(wasm);
    dir.join(format!("{}.aot", hex(&h.finalize())))
}

/// What [`compile_cached`] did.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The AOT file's bytes.
    pub aot: Vec<u8>,
    /// Where they are cached (`None`: not cached, no usable cache).
    pub path: Option<PathBuf>,
    /// Whether they came from the cache (no compilation).
    pub hit: bool,
}

/// [`compile_with`], cached in `dir` (see the module docs for the key and
/// for which directories are used); `None`: not cached.
pub fn compile_cached(input: &[u8], target: Target, dir: Option<&Path>, limits: &CompileLimits) -> Result<Cached> {
    if !compiler_available() {
        return Err(unavailable());
    }
    let wasm = to_wasm(input)?;
    let dir = dir.and_then(|d| match open_cache_dir(d) {
        Ok(real) => Some(real),
        Err(why) => {
            tracing::warn!(why, "AOT cache directory not used; the guest is compiled uncached");
            None
        }
    });
    let path = dir.as_deref().map(|d| cache_path(d, &wasm, target));
    if let Some(aot) = path.as_deref().and_then(read_entry) {
        return Ok(Cached { aot, path, hit: true });
    }
    let aot = compile_with(&wasm, target, limits)?;
    // An unwritable cache costs the next start a compile, not this one.
    // What could not be stored is not cached: no path (the log line
    // "guest AOT-compiled" named the entry it had failed to write).
    let path = match (&dir, path) {
        (Some(dir), Some(path)) => match store(dir, &path, &aot) {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(error = %e, "cannot cache the compiled guest; it is used uncached");
                None
            }
        },
        _ => None,
    };
    Ok(Cached { aot, path, hit: false })
}

/// Drops a cache entry (one WAMR could not load).
pub fn evict(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn store(dir: &Path, path: &Path, aot: &[u8]) -> Result<()> {
    let io = |what: &str, p: &Path, source| Error::Io { context: format!("{what} {}", p.display()), source };
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    // Once per process (a server uses one cache), before its first store.
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| sweep_tmp(dir));
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // A new file, ours alone (never one found under the name).
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?.write_all(aot)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("writing", &tmp, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("renaming into", path, e)
    })
}

/// `serve --aot`: compiles `input` (wasm or text; an AOT file is refused,
/// see [`super::Module::from_aot`]) through the cache in `dir` (`None`: no
/// cache) under `limits`, and loads the result. A cached entry WAMR cannot
/// load is evicted and compiled again, once.
pub fn load_compiled(
    input: &[u8],
    target: Target,
    dir: Option<&Path>,
    limits: &CompileLimits,
) -> Result<super::Module> {
    load_compiled_evicting(input, target, dir, limits, evict)
}

/// [`load_compiled`] with the eviction passed in, so that a test can have
/// it fail (as it does in a read-only cache, which root's permissions
/// never give a test).
fn load_compiled_evicting(
    input: &[u8],
    target: Target,
    dir: Option<&Path>,
    limits: &CompileLimits,
    evict: impl Fn(&Path),
) -> Result<super::Module> {
    let started = std::time::Instant::now();
    let cached = compile_cached(input, target, dir, limits)?;
    match super::Module::from_aot(&cached.aot) {
        Ok(m) => {
            tracing::info!(
                path = %cached.path.as_deref().unwrap_or(Path::new("(not cached)")).display(),
                cache_hit = cached.hit,
                ms = started.elapsed().as_millis() as u64,
                %target,
                "guest AOT-compiled"
            );
            Ok(m)
        }
        Err(e) if cached.hit => {
            // The entry's own directory: the cache's, links resolved, as checked.
            let Some((path, dir)) = cached.path.as_deref().and_then(|p| Some((p, p.parent()?))) else {
                unreachable!("a hit has a cache")
            };
            tracing::warn!(error = %e, path = %path.display(), "cached AOT file does not load; compiling again");
            evict(path);
            // Not through the cache: if the bad entry could not be removed
            // (a read-only cache), reading it again would fail again.
            let aot = compile_with(input, target, limits)?;
            if let Err(e) = store(dir, path, &aot) {
                tracing::warn!(error = %e, "cannot cache the compiled guest; it is used uncached");
            }
            super::Module::from_aot(&aot)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed process's unfinished entry (`.tmp-{pid}-{n}`) is removed
    /// once stale; a fresh one, this process's, another name or a live
    /// process's are not. They used to stay for good.
    #[test]
    fn a_dead_process_s_unfinished_cache_entry_is_removed_once_stale() {
        let dir = std::env::temp_dir().join(format!("wamr-coro-aot-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = std::time::SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        // 999999999 is past any pid_max (at most 2^22): no such process.
        let write = |name: &str, stale: bool| {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            if stale {
                f.set_modified(old).unwrap();
            }
        };
        let me = std::process::id();
        write(".tmp-999999999-0", true);
        write(".tmp-999999999-1", false);
        write(&format!(".tmp-{me}-0"), true);
        write(".tmp-1-0", true);
        write(".tmp-999999999-x", true);
        write("entry.aot", true);
        sweep_tmp(&dir);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut want = vec![
            ".tmp-999999999-1".to_string(),
            format!(".tmp-{me}-0"),
            ".tmp-1-0".into(),
            ".tmp-999999999-x".into(),
            "entry.aot".into(),
        ];
        want.sort();
        assert_eq!(left, want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A cache directory that is a link is not followed, and the reason
    /// says so: a link to a private directory was refused as "not a
    /// directory (a symbolic link?)", and a link to nothing as
    /// "cannot create …: File exists".
    #[test]
    fn a_cache_directory_that_is_a_link_is_refused_saying_so() {
        let dir = std::env::temp_dir().join(format!("wamr-coro-aot-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.join("nothing"), dir.join("dangling")).unwrap();
        for name in ["link", "dangling"] {
            let why = open_cache_dir(&dir.join(name)).unwrap_err();
            assert!(
                why.ends_with("is a symbolic link, which the cache does not follow: name the directory it points to"),
                "{name}: {why}"
            );
        }
        assert!(open_cache_dir(&dir.join("real")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_wasm_section_holds_the_module_itself() {
        let wasm = wat::parse_str("(module (memory 1) (export \"memory\" (memory 0)))").unwrap();
        let with = with_wasm_section(&wasm).unwrap();
        let mut found = None;
        for p in wasmparser::Parser::new(0).parse_all(&with) {
            if let wasmparser::Payload::CustomSection(c) = p.unwrap() {
                assert_eq!(c.name(), WASM_SECTION);
                found = Some(c.data().to_vec());
            }
        }
        assert_eq!(found.as_deref(), Some(&wasm[..]));
        // A module claiming a section of that name is refused.
        let err = with_wasm_section(&with).unwrap_err().to_string();
        assert!(err.contains("already has a custom section"), "{err}");
    }

    #[test]
    fn cache_keys_differ_by_input_and_target() {
        let d = Path::new("/c");
        let a = cache_path(d, b"\0asm\x01\0\0\0", Target::Native);
        assert_eq!(a, cache_path(d, b"\0asm\x01\0\0\0", Target::Native));
        assert_ne!(a, cache_path(d, b"\0asm\x01\0\0\0", Target::Portable));
        assert_ne!(a, cache_path(d, b"\0asm\x01\0\0\0\0", Target::Native));
    }

    /// A cached entry that does not load and cannot be removed (a
    /// read-only cache) is compiled around, not read again.
    #[test]
    fn a_bad_cache_entry_that_stays_is_not_read_again() {
        if !compiler_available() {
            eprintln!("skipped: this build has no AOT compiler");
            return;
        }
        let dir = std::env::temp_dir().join(format!("wamr-coro-aot-evict-{}", std::process::id()));
        // A reused pid must not find an earlier run's entry.
        let _ = std::fs::remove_dir_all(&dir);
        let wat = br#"(module (memory (export "memory") 1)
            (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#;
        let good = compile_cached(wat, Target::Portable, Some(&dir), &CompileLimits::default()).unwrap();
        assert!(!good.hit);
        let path = good.path.clone().unwrap();
        let spoil = || std::fs::write(&path, &good.aot[..16]).unwrap();
        spoil();
        let evictions = std::cell::Cell::new(0);
        let loaded = load_compiled_evicting(wat, Target::Portable, Some(&dir), &CompileLimits::default(), |_| {
            evictions.set(evictions.get() + 1)
        });
        assert!(loaded.is_ok(), "{:?}", loaded.err());
        assert_eq!(evictions.get(), 1, "the bad entry was found");
        // Evicted as usual, the entry goes, and a good one takes its place.
        spoil();
        let removed = std::cell::Cell::new(false);
        load_compiled_evicting(wat, Target::Portable, Some(&dir), &CompileLimits::default(), |p| {
            evict(p);
            removed.set(!p.exists());
        })
        .unwrap();
        assert!(removed.get(), "evict left the bad entry");
        let entry = std::fs::read(&path).unwrap();
        assert!(entry.len() > 16 && entry.starts_with(AOT_MAGIC));
        assert!(compile_cached(wat, Target::Portable, Some(&dir), &CompileLimits::default()).unwrap().hit);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_aot_file_is_not_compiled_again() {
        let err = to_wasm(b"\0aot\x05\0\0\0").unwrap_err().to_string();
        assert!(err.contains("already an AOT file"), "{err}");
    }
}
