//! A loaded WebAssembly module.
//!
//! [`Module`] owns WAMR's `wasm_module_t` and the bytes it was loaded from
//! (WAMR keeps pointers into that buffer and may patch it in place, so the
//! buffer is a private copy that lives as long as the module). Loading checks
//! what WAMR does not: every imported function must be provided by a
//! registered host function, so a typo fails at load with the import's name
//! instead of at the first call.
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::sys;
use super::{error_text, ERROR_BUF_LEN};
use crate::error::{Error, Result};

/// A WebAssembly value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValType {
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// Anything else (references, v128): not callable through this API.
    Other,
}

impl ValType {
    pub(crate) fn from_kind(kind: sys::wasm_valkind_t) -> ValType {
        match kind as u32 {
            x if x == sys::WASM_I32 => ValType::I32,
            x if x == sys::WASM_I64 => ValType::I64,
            x if x == sys::WASM_F32 => ValType::F32,
            x if x == sys::WASM_F64 => ValType::F64,
            _ => ValType::Other,
        }
    }

    /// WAMR's signature letter.
    pub(crate) fn letter(self) -> Option<char> {
        match self {
            ValType::I32 => Some('i'),
            ValType::I64 => Some('I'),
            ValType::F32 => Some('f'),
            ValType::F64 => Some('F'),
            ValType::Other => None,
        }
    }

    /// Number of 32-bit cells the value takes in WAMR's argv.
    pub(crate) fn cells(self) -> usize {
        match self {
            ValType::I64 | ValType::F64 => 2,
            _ => 1,
        }
    }
}

/// A function signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncType {
    /// Parameter types.
    pub params: Vec<ValType>,
    /// Result types.
    pub results: Vec<ValType>,
}

impl FuncType {
    /// Builds a signature.
    pub fn new(params: &[ValType], results: &[ValType]) -> FuncType {
        FuncType { params: params.to_vec(), results: results.to_vec() }
    }
}

impl fmt::Display for FuncType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[ValType]| v.iter().map(|t| format!("{t:?}").to_lowercase()).collect::<Vec<_>>().join(", ");
        write!(f, "({}) -> ({})", list(&self.params), list(&self.results))
    }
}

/// What an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportKind {
    /// A function with its signature.
    Func(FuncType),
    /// A global: its type and mutability.
    Global {
        /// Value type.
        ty: ValType,
        /// Whether it is mutable.
        mutable: bool,
    },
    /// A linear memory.
    Memory {
        /// Whether it is shared between threads.
        shared: bool,
    },
    /// A table.
    Table,
}

/// One export of a module.
#[derive(Debug, Clone)]
pub struct Export {
    /// Its name.
    pub name: String,
    /// Its kind and type.
    pub kind: ExportKind,
}

/// One imported function.
#[derive(Debug, Clone)]
pub struct Import {
    /// Import module name (`env` for the guest ABI).
    pub module: String,
    /// Field name.
    pub name: String,
    /// Whether a host function is linked to it (always true after a
    /// successful load; imports of other kinds are reported linked).
    pub linked: bool,
}

/// An exported global as the binary declares it (read with `wasmparser`:
/// WAMR's module API gives a global's type but not its initial value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedGlobal {
    /// Export name.
    pub name: String,
    /// Value type.
    pub ty: ValType,
    /// Whether it is mutable.
    pub mutable: bool,
    /// The initial value when the initialiser is one `i32.const` or
    /// `i64.const` (`None` for imported globals and other expressions).
    pub init: Option<i64>,
    /// The bytes of the module's initial memory image at address `init`
    /// (at most [`ExportedGlobal::POINTEE_LEN`], as far as active data
    /// segments of memory 0 with constant offsets cover them without a gap;
    /// `None` if none does). Toolchains export a static as a global holding
    /// its address.
    pub pointee: Option<Vec<u8>>,
}

impl ExportedGlobal {
    /// How many bytes [`ExportedGlobal::pointee`] holds.
    pub const POINTEE_LEN: usize = 16;
}

pub(crate) struct ModuleInner {
    pub(crate) raw: sys::wasm_module_t,
    // WAMR refers into this buffer for the module's lifetime. Never read
    // from Rust after load; dropped after wasm_runtime_unload.
    _bytes: Box<[u8]>,
    exports: Vec<Export>,
    imports: Vec<Import>,
    facts: super::scan::ModuleFacts,
    aot: bool,
}

// WAMR instantiates from a loaded module on any thread (spawn does so from
// worker threads); unload happens once, in Drop, after every instance's Arc.
// SAFETY: a loaded wasm_module_t is immutable after wasm_runtime_load, so
// moving it between threads is sound.
unsafe impl Send for ModuleInner {}
// SAFETY: see Send: shared access only reads the loaded module.
unsafe impl Sync for ModuleInner {}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        // SAFETY: `raw` came from wasm_runtime_load and every instance made
        // from it holds an Arc to us, so none is alive now.
        unsafe { sys::wasm_runtime_unload(self.raw) };
    }
}

/// A validated, loaded module. Cheap to clone (shared).
#[derive(Clone)]
pub struct Module {
    pub(crate) inner: Arc<ModuleInner>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("exports", &self.inner.exports.len())
            .field("imports", &self.inner.imports.len())
            .finish()
    }
}

impl Module {
    /// Loads a module from `.wasm` bytes or `.wat` text. An AOT file is
    /// refused: it is native code this process would run unchecked, so it
    /// loads only when asked for by name, with [`Module::from_aot`]. At most
    /// [`MAX_MODULE_BYTES`]. (This loaded AOT files by their magic before:
    /// any caller handing it bytes from elsewhere would have run native code
    /// it never asked for.)
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Module> {
        let bytes = bytes.as_ref();
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(Error::Load(format!(
                "module is {} bytes, more than the {MAX_MODULE_BYTES}-byte limit",
                bytes.len()
            )));
        }
        if bytes.starts_with(b"\0asm") {
            Module::from_binary(bytes)
        } else if bytes.starts_with(super::aot::AOT_MAGIC) {
            Err(Error::Load(AOT_NOT_ASKED_FOR.into()))
        } else {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| Error::Load("neither a wasm binary (no \\0asm magic) nor UTF-8 text".into()))?;
            Module::from_wat(text)
        }
    }

    /// Loads a module from WebAssembly text.
    pub fn from_wat(text: &str) -> Result<Module> {
        let bin = wat::parse_str(text).map_err(|e| Error::Wat(excerpt(&e.to_string(), 400)))?;
        Module::from_binary(&bin)
    }

    /// Loads a module from a `.wasm` or `.wat` file; an AOT file is refused
    /// as by [`Module::new`] (load a trusted one with
    /// `Module::from_aot(&read_module_file(path)?)`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Module> {
        Module::new(read_module_file(path.as_ref())?)
    }

    /// Loads a module from a wasm binary.
    pub fn from_binary(bytes: &[u8]) -> Result<Module> {
        if bytes.starts_with(super::aot::AOT_MAGIC) {
            return Err(Error::Load(AOT_NOT_ASKED_FOR.into()));
        }
        Module::load(bytes, false)
    }

    /// Loads an AOT file made by `wamr-coro compile` (src/wamr/aot.rs). It
    /// must carry its original wasm in the custom section
    /// [`super::aot::WASM_SECTION`]: the host scans that wasm for what it
    /// checks (imports, exports, the ABI version, reset safety), and refuses
    /// an AOT file without it (plain `wamrc` output) or whose imports and
    /// exports differ from that wasm's.
    ///
    /// An AOT file is native code this process will execute: load only
    /// files you trust (compile untrusted wasm yourself).
    pub fn from_aot(bytes: &[u8]) -> Result<Module> {
        if !bytes.starts_with(super::aot::AOT_MAGIC) {
            return Err(Error::Load("not an AOT file (no \\0aot magic)".into()));
        }
        Module::load(bytes, true)
    }

    /// Whether the module was loaded from an AOT file (compiled code: WAMR's
    /// instruction metering does not count it).
    pub fn is_aot(&self) -> bool {
        self.inner.aot
    }

    fn load(bytes: &[u8], aot: bool) -> Result<Module> {
        super::runtime::Runtime::get()?;
        let len = u32::try_from(bytes.len()).map_err(|_| Error::Load("module larger than 4 GiB".into()))?;
        let mut copy: Box<[u8]> = bytes.into();
        let mut err = [0u8; ERROR_BUF_LEN];
        // SAFETY: `copy` is a private buffer of `len` bytes that outlives the
        // module (stored in ModuleInner, dropped after unload); `err` is a
        // writable buffer of the size we pass. The runtime is initialised.
        let raw = unsafe {
            sys::wasm_runtime_load(copy.as_mut_ptr(), len, err.as_mut_ptr() as *mut libc::c_char, ERROR_BUF_LEN as u32)
        };
        if raw.is_null() {
            return Err(Error::Load(error_text(&err)));
        }
        // From here `raw` is owned by `inner`, which unloads it on drop.
        let mut inner = ModuleInner {
            raw,
            _bytes: copy,
            exports: Vec::new(),
            imports: Vec::new(),
            facts: super::scan::ModuleFacts::default(),
            aot,
        };
        // The wasm to scan: the input itself (read before WAMR saw it, from
        // the caller's buffer: WAMR may patch its copy in place), or the
        // one an AOT file carries.
        let embedded;
        let wasm: &[u8] = if inner.aot {
            embedded = aot_wasm_section(raw)?;
            &embedded
        } else {
            bytes
        };
        inner.facts = super::scan::scan(wasm);
        inner.exports = read_exports(raw, &inner.facts);
        inner.imports = read_imports(raw);
        if inner.aot {
            check_aot_matches(&inner, wasm)?;
        }
        if let Some((module, name, kind)) = inner.facts.other_import.clone() {
            // WAMR would make the memory (or table, or global) itself and run
            // the module as if it had defined it: nothing the host provides.
            return Err(Error::NonFunctionImport { module, name, kind });
        }
        if let Some((index, offset, len)) = inner.facts.data_out_of_bounds {
            let memory_bytes = inner.facts.initial_pages.unwrap_or(0).saturating_mul(65536);
            return Err(Error::DataSegmentOutOfBounds { index, offset, len, memory_bytes });
        }
        if let Some(at) = inner.imports.iter().position(|i| !i.linked) {
            let missing = &inner.imports[at];
            // The same name may be imported more than once, each time with
            // its own type: the declaration is the one at the same place
            // among the imports of that name (WAMR keeps their order).
            let nth =
                inner.imports[..at].iter().filter(|i| i.module == missing.module && i.name == missing.name).count();
            let declared = inner
                .facts
                .func_imports
                .iter()
                .filter(|(m, n, _)| *m == missing.module && *n == missing.name)
                .nth(nth)
                .map(|(_, _, t)| t.clone());
            if let (Some(found), Some(expected)) =
                (declared, super::host::registered_type(&missing.module, &missing.name))
            {
                return Err(Error::ImportSignature {
                    module: missing.module.clone(),
                    name: missing.name.clone(),
                    found: found.to_string(),
                    expected: expected.to_string(),
                });
            }
            return Err(Error::UnlinkedImport { module: missing.module.clone(), name: missing.name.clone() });
        }
        Ok(Module { inner: Arc::new(inner) })
    }

    /// What a static scan of the binary found (memory sizes, growth,
    /// state a reset cannot restore).
    pub(crate) fn facts(&self) -> &super::scan::ModuleFacts {
        &self.inner.facts
    }

    /// All exports.
    pub fn exports(&self) -> &[Export] {
        &self.inner.exports
    }

    /// All imported functions.
    pub fn imports(&self) -> &[Import] {
        &self.inner.imports
    }

    /// The export called `name`.
    pub fn export(&self, name: &str) -> Option<&Export> {
        self.inner.exports.iter().find(|e| e.name == name)
    }

    /// Exported global `name` as the binary declares it (type, mutability,
    /// constant initial value). `Err` carries why the binary could not be
    /// read for this (WAMR accepted it, `wasmparser` did not).
    pub fn exported_global(&self, name: &str) -> std::result::Result<Option<&ExportedGlobal>, &str> {
        match &self.inner.facts.exported_globals {
            Ok(g) => Ok(g.iter().find(|g| g.name == name)),
            Err(e) => Err(e),
        }
    }

    /// The signature of exported function `name`, if it is one.
    pub fn func_type(&self, name: &str) -> Option<&FuncType> {
        match &self.export(name)?.kind {
            ExportKind::Func(t) => Some(t),
            _ => None,
        }
    }

    /// Checks that `name` is an exported function with signature `ty`.
    pub fn require_func(&self, name: &str, ty: &FuncType, why: &str) -> Result<()> {
        match self.export(name) {
            None => Err(Error::MissingExport { name: name.into(), why: why.into() }),
            Some(Export { kind: ExportKind::Func(found), .. }) if found == ty => Ok(()),
            Some(Export { kind: ExportKind::Func(found), .. }) => {
                Err(Error::WrongSignature { name: name.into(), expected: ty.to_string(), found: found.to_string() })
            }
            Some(other) => Err(Error::WrongSignature {
                name: name.into(),
                expected: format!("function {ty}"),
                found: format!("{:?}", other.kind),
            }),
        }
    }

    /// Checks that an optional export, if present, has signature `ty`.
    pub fn check_optional_func(&self, name: &str, ty: &FuncType) -> Result<bool> {
        match self.export(name) {
            None => Ok(false),
            Some(_) => self.require_func(name, ty, "optional").map(|_| true),
        }
    }

    /// Whether the exported memory is shared (threads proposal).
    pub fn has_shared_memory(&self) -> bool {
        self.inner.exports.iter().any(|e| matches!(e.kind, ExportKind::Memory { shared: true }))
    }

    /// Checks what `wasm_runtime_spawn_exec_env` needs: exported, immutable
    /// i32 globals `__heap_base` and `__data_end` (WAMR derives the aux
    /// stack from them; without them spawn fails with an unhelpful message).
    pub fn check_spawnable(&self) -> Result<()> {
        let mut missing = Vec::new();
        for name in ["__heap_base", "__data_end"] {
            match self.export(name).map(|e| &e.kind) {
                Some(ExportKind::Global { ty: ValType::I32, mutable: false }) => {}
                Some(other) => {
                    return Err(Error::SpawnUnsupported(format!(
                        "`{name}` must be an immutable i32 global, found {other:?}"
                    )))
                }
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            return Err(Error::SpawnUnsupported(format!(
                "missing exports {} (clang and rustc emit them; WAT guests must declare them)",
                missing.join(", ")
            )));
        }
        Ok(())
    }
}

/// The original wasm an AOT module carries (a copy of the custom section
/// [`super::aot::WASM_SECTION`]). It is trusted as much as the AOT file's
/// code (which `compile` made from it); `check_aot_matches` catches a
/// section that does not belong to the code.
fn aot_wasm_section(raw: sys::wasm_module_t) -> Result<Vec<u8>> {
    let name = std::ffi::CString::new(super::aot::WASM_SECTION).expect("no NUL in the section name");
    let mut len = 0u32;
    // SAFETY: `raw` is a loaded module; `name` is NUL-terminated; WAMR
    // writes the section's length and returns a pointer into the module's
    // own memory (valid while it is loaded), or NULL.
    let ptr = unsafe { sys::wasm_runtime_get_custom_section(raw, name.as_ptr(), &mut len) };
    if ptr.is_null() {
        return Err(Error::Load(format!(
            "this AOT file carries no {:?} section, so its imports, exports, ABI version and reset \
             safety cannot be checked; make AOT files with `wamr-coro compile` (not plain wamrc)",
            super::aot::WASM_SECTION
        )));
    }
    // SAFETY: WAMR reported `len` readable bytes at `ptr`, owned by the
    // loaded module; we copy them before anything can unload it.
    let wasm = unsafe { std::slice::from_raw_parts(ptr, len as usize) }.to_vec();
    if !wasm.starts_with(b"\0asm") {
        return Err(Error::Load(format!(
            "the {:?} section of this AOT file holds no wasm module",
            super::aot::WASM_SECTION
        )));
    }
    Ok(wasm)
}

/// An AOT module's imports and exports (WAMR's view of the compiled code)
/// must be those of the wasm it carries (what the host checked and scanned).
fn check_aot_matches(inner: &ModuleInner, wasm: &[u8]) -> Result<()> {
    let mut imports: Vec<(String, String)> = Vec::new();
    let mut exports: Vec<String> = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| Error::Load(format!("the wasm this AOT file carries: {e}")))? {
            wasmparser::Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp.map_err(|e| Error::Load(e.to_string()))?;
                    imports.push((imp.module.to_string(), imp.name.to_string()));
                }
            }
            wasmparser::Payload::ExportSection(r) => {
                for e in r {
                    exports.push(e.map_err(|e| Error::Load(e.to_string()))?.name.to_string());
                }
            }
            _ => {}
        }
    }
    let mut compiled_imports: Vec<(String, String)> =
        inner.imports.iter().map(|i| (i.module.clone(), i.name.clone())).collect();
    let mut compiled_exports: Vec<String> = inner.exports.iter().map(|e| e.name.clone()).collect();
    for v in [&mut imports, &mut compiled_imports] {
        v.sort_unstable();
    }
    for v in [&mut exports, &mut compiled_exports] {
        v.sort_unstable();
    }
    if imports != compiled_imports || exports != compiled_exports {
        return Err(Error::Load("this AOT file's imports or exports differ from those of the wasm it carries".into()));
    }
    Ok(())
}

/// Why [`Module::new`] refuses an AOT file.
const AOT_NOT_ASKED_FOR: &str = "this is an AOT file: native code that would run unchecked in this \
     process, so it is loaded only when asked for (`Module::from_aot`, `serve --engine aot`), and \
     only if you made it yourself";

/// Largest module accepted (binary, text or AOT file): 256 MiB.
pub const MAX_MODULE_BYTES: usize = 256 << 20;

/// The bytes of the module file at `path`, refused without reading them
/// all if there are more than [`MAX_MODULE_BYTES`]: a regular file by its
/// size, anything else (a pipe, a device) once it has given one byte more.
/// Reading first and checking after, as `std::fs::read` does, took a huge
/// file whole into memory, and `/dev/zero` until the process died.
pub fn read_module_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let fail = |source| Error::ReadModule { path: path.to_owned(), source };
    let too_big = |what: String| {
        Error::Load(format!("{} {what}, more than the {MAX_MODULE_BYTES}-byte module limit", path.display()))
    };
    // Opened without blocking: opening a FIFO blocks until a writer comes,
    // which hung a SIGHUP reload (and with it the handling of SIGTERM)
    // forever. A FIFO without a writer reads as empty.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(fail)?
    };
    let meta = file.metadata().map_err(fail)?;
    if !meta.is_file() {
        // Reads of a pipe or device block again, as they should.
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is the open descriptor `file` owns for this call;
        // F_GETFL/F_SETFL only read and set its status flags.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(fail(std::io::Error::last_os_error()));
        }
    }
    if meta.is_file() && meta.len() > MAX_MODULE_BYTES as u64 {
        return Err(too_big(format!("is {} bytes", meta.len())));
    }
    let mut bytes = Vec::with_capacity(if meta.is_file() { meta.len() as usize } else { 0 });
    file.take(MAX_MODULE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(fail)?;
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(too_big("gave more bytes".into()));
    }
    if bytes.is_empty() {
        // Text would parse as an empty module, reported as its missing
        // exports; a FIFO nobody writes to reads as empty too.
        return Err(Error::Load(format!("{} is empty (or a pipe nobody wrote to)", path.display())));
    }
    Ok(bytes)
}

/// At most `max` characters of `text` (error messages quote input: a huge
/// one-line file must not become a huge message).
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}

fn cstr(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: WAMR returns NUL-terminated names owned by the module.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The exports WAMR reports; function signatures come from `facts` (the
/// scan of the binary): WAMR's `wasm_func_type_get_*_valkind` assert (abort,
/// in debug builds) on an `externref` parameter or result, which the loader
/// accepts — found by `tests/fuzz.rs`. A function the scan does not know
/// gets a signature no call can match.
fn read_exports(raw: sys::wasm_module_t, facts: &super::scan::ModuleFacts) -> Vec<Export> {
    let func_type = |name: &str| {
        facts
            .func_exports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| FuncType::new(&[ValType::Other], &[]))
    };
    // SAFETY: `raw` is a loaded module; WAMR fills `e` for indices below the
    // export count.
    unsafe {
        let n = sys::wasm_runtime_get_export_count(raw).max(0);
        (0..n)
            .map(|i| {
                let mut e = sys::wasm_export_t::default();
                sys::wasm_runtime_get_export_type(raw, i, &mut e);
                let name = cstr(e.name);
                let kind = match e.kind {
                    sys::WASM_IMPORT_EXPORT_KIND_FUNC => ExportKind::Func(func_type(&name)),
                    sys::WASM_IMPORT_EXPORT_KIND_GLOBAL => ExportKind::Global {
                        ty: ValType::from_kind(sys::wasm_global_type_get_valkind(e.u.global_type)),
                        mutable: sys::wasm_global_type_get_mutable(e.u.global_type),
                    },
                    sys::WASM_IMPORT_EXPORT_KIND_MEMORY => {
                        ExportKind::Memory { shared: sys::wasm_memory_type_get_shared(e.u.memory_type) }
                    }
                    _ => ExportKind::Table,
                };
                Export { name, kind }
            })
            .collect()
    }
}

fn read_imports(raw: sys::wasm_module_t) -> Vec<Import> {
    // SAFETY: as in read_exports, for imports.
    unsafe {
        let n = sys::wasm_runtime_get_import_count(raw).max(0);
        (0..n)
            .map(|i| {
                let mut imp = sys::wasm_import_t::default();
                sys::wasm_runtime_get_import_type(raw, i, &mut imp);
                let is_func = imp.kind == sys::WASM_IMPORT_EXPORT_KIND_FUNC;
                Import { module: cstr(imp.module_name), name: cstr(imp.name), linked: !is_func || imp.linked }
            })
            .collect()
    }
}
