//! A static scan of a module's binary: what WAMR's embedding API does not
//! tell us, read once at load with `wasmparser`.
//!
//! * The default memory's initial and maximum size, so that a module whose
//!   *initial* memory is over the per-env cap is refused at start, and the
//!   global guest-memory budget can charge an env before it is created.
//! * Whether any function can run `memory.grow` (only then must each call
//!   reserve room in the global budget).
//! * Whether any function can change instance state that a reset cannot
//!   restore: tables (`table.set/grow/fill/copy/init`) and dropped segments
//!   (`data.drop`, `elem.drop`). Resetting an env restores linear memory and
//!   globals; a module with such instructions gets a fresh instance per
//!   connection instead.
//! * The signature of every imported function, so an import whose name the
//!   host provides with another signature is reported as exactly that.
//! * Every exported global with its constant initial value and, for an i32
//!   that points into an active data segment, the bytes there (how the ABI
//!   version record of C and Rust guests is found).
//!
//! One pass over the binary answers all of it.
use wasmparser::{DataKind, ExternalKind, Operator, Parser, Payload, TypeRef, ValType as WpValType};

use super::module::{ExportedGlobal, FuncType, ValType};

/// What the scan found.
#[derive(Debug, Clone)]
pub(crate) struct ModuleFacts {
    /// Initial pages of memory 0 (defined or imported), if there is one.
    pub initial_pages: Option<u64>,
    /// Declared maximum pages of memory 0, if any.
    pub max_pages: Option<u64>,
    /// Some function contains `memory.grow`.
    pub grows_memory: bool,
    /// Some function changes tables or drops segments (see module docs).
    pub mutates_tables_or_segments: bool,
    /// Bytes WAMR allocates for the module's tables in each instance (one
    /// pointer per element: the initial size, or, with `table.grow`, the
    /// size it may grow to, which WAMR allocates up front). Host memory
    /// outside linear memory, which the guest-memory budget must count too.
    pub table_bytes: u64,
    /// `(module, name, type)` of every imported function.
    pub func_imports: Vec<(String, String, FuncType)>,
    /// `(module, name, kind)` of the first import that is not a function
    /// (memory, table, global, tag), if any: the host provides only
    /// functions, and refuses such a module (docs/guest-abi.md, section 1).
    pub other_import: Option<(String, String, &'static str)>,
    /// `(name, type)` of every exported function. (WAMR's own type getters
    /// assert on reference-typed results in debug builds, so exports are
    /// typed from here.)
    pub func_exports: Vec<(String, FuncType)>,
    /// Every exported global; `Err` (the parser's message) if the binary
    /// could not be read.
    pub exported_globals: Result<Vec<ExportedGlobal>, String>,
    /// `(index, offset, length)` of the first active data segment of memory
    /// 0 whose constant offset puts it past the memory's initial size.
    /// Instantiating such a module must fail (the WebAssembly spec; Wasmtime
    /// refuses it), but WAMR checks segments against the memory after it has
    /// appended its app heap, so it placed the bytes there and served the
    /// module.
    pub data_out_of_bounds: Option<(u32, u64, u64)>,
}

impl Default for ModuleFacts {
    fn default() -> Self {
        ModuleFacts {
            initial_pages: None,
            max_pages: None,
            grows_memory: false,
            mutates_tables_or_segments: false,
            table_bytes: 0,
            func_imports: Vec::new(),
            other_import: None,
            func_exports: Vec::new(),
            exported_globals: Ok(Vec::new()),
            data_out_of_bounds: None,
        }
    }
}

/// An `i32.const` or `i64.const` constant expression's value.
fn const_of(expr: &wasmparser::ConstExpr<'_>) -> Option<i64> {
    let mut ops = expr.get_operators_reader();
    let v = match ops.read().ok()? {
        Operator::I32Const { value } => value as i64,
        Operator::I64Const { value } => value,
        _ => return None,
    };
    matches!(ops.read().ok()?, Operator::End).then_some(v)
}

fn val(t: WpValType) -> ValType {
    match t {
        WpValType::I32 => ValType::I32,
        WpValType::I64 => ValType::I64,
        WpValType::F32 => ValType::F32,
        WpValType::F64 => ValType::F64,
        _ => ValType::Other,
    }
}

/// Scans `bytes` (already accepted by WAMR's loader). A scan error leaves
/// the conservative answers: memory may grow, state may not be restorable.
pub(crate) fn scan(bytes: &[u8]) -> ModuleFacts {
    match try_scan(bytes) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "module scan failed; assuming the worst");
            ModuleFacts {
                grows_memory: true,
                mutates_tables_or_segments: true,
                exported_globals: Err(e.to_string()),
                ..ModuleFacts::default()
            }
        }
    }
}

fn try_scan(bytes: &[u8]) -> wasmparser::Result<ModuleFacts> {
    let mut f = ModuleFacts::default();
    let mut types: Vec<FuncType> = Vec::new();
    // Type of every function in the index space: imports, then definitions.
    let mut funcs: Vec<u32> = Vec::new();
    // For the exported globals: imported globals come first in the index
    // space; then each defined global's type and constant initial value,
    // the global exports, and the active segments of memory 0.
    let mut imported_globals = 0u32;
    let mut globals = Vec::new();
    let mut global_exports = Vec::new();
    let mut segments = Vec::new();
    // (initial, maximum) of every table, imported or defined.
    let mut tables: Vec<(u64, Option<u64>)> = Vec::new();
    let mut grows_tables = false;
    let type_of = |types: &[FuncType], idx: u32| {
        types.get(idx as usize).cloned().unwrap_or_else(|| FuncType::new(&[ValType::Other], &[]))
    };
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::TypeSection(r) => {
                for ty in r.into_iter_err_on_gc_types() {
                    let ty = ty?;
                    let params: Vec<ValType> = ty.params().iter().map(|t| val(*t)).collect();
                    let results: Vec<ValType> = ty.results().iter().map(|t| val(*t)).collect();
                    types.push(FuncType::new(&params, &results));
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp?;
                    let kind = match imp.ty {
                        TypeRef::Func(_) => None,
                        TypeRef::Memory(_) => Some("memory"),
                        TypeRef::Table(_) => Some("table"),
                        TypeRef::Global(_) => Some("global"),
                        _ => Some("tag"),
                    };
                    if let (Some(kind), None) = (kind, &f.other_import) {
                        f.other_import = Some((imp.module.to_string(), imp.name.to_string(), kind));
                    }
                    match imp.ty {
                        TypeRef::Func(idx) => {
                            funcs.push(idx);
                            f.func_imports.push((imp.module.to_string(), imp.name.to_string(), type_of(&types, idx)));
                        }
                        TypeRef::Memory(m) if f.initial_pages.is_none() => {
                            f.initial_pages = Some(m.initial);
                            f.max_pages = m.maximum;
                        }
                        TypeRef::Global(_) => imported_globals += 1,
                        TypeRef::Table(t) => tables.push((t.initial, t.maximum)),
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for idx in r {
                    funcs.push(idx?);
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e?;
                    if e.kind == ExternalKind::Func {
                        let ty = funcs.get(e.index as usize).map(|t| type_of(&types, *t));
                        f.func_exports.push((e.name.to_string(), ty.unwrap_or_else(|| type_of(&types, u32::MAX))));
                    } else if e.kind == ExternalKind::Global {
                        global_exports.push((e.name.to_string(), e.index));
                    }
                }
            }
            Payload::MemorySection(r) => {
                for m in r {
                    let m = m?;
                    if f.initial_pages.is_none() {
                        f.initial_pages = Some(m.initial);
                        f.max_pages = m.maximum;
                    }
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    let t = t?;
                    tables.push((t.ty.initial, t.ty.maximum));
                }
            }
            Payload::GlobalSection(r) => {
                for g in r {
                    let g = g?;
                    globals.push((g.ty, const_of(&g.init_expr)));
                }
            }
            Payload::DataSection(r) => {
                let memory_bytes = f.initial_pages.map(|p| p.saturating_mul(65536));
                for (index, d) in r.into_iter().enumerate() {
                    let d = d?;
                    if let DataKind::Active { memory_index: 0, offset_expr } = d.kind {
                        // (WAMR takes no other offset than a constant: a
                        // `global.get` of a defined global is "unknown
                        // global", and imported globals are refused.)
                        if let Some(off) = const_of(&offset_expr) {
                            let (off, len) = (off as u32 as u64, d.data.len() as u64);
                            if memory_bytes.is_some_and(|m| off + len > m) && f.data_out_of_bounds.is_none() {
                                f.data_out_of_bounds = Some((index as u32, off, len));
                            }
                            segments.push((off, d.data));
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader()?;
                while !ops.eof() {
                    match ops.read()? {
                        Operator::MemoryGrow { .. } => f.grows_memory = true,
                        Operator::TableGrow { .. } => {
                            grows_tables = true;
                            f.mutates_tables_or_segments = true;
                        }
                        Operator::TableSet { .. }
                        | Operator::TableFill { .. }
                        | Operator::TableCopy { .. }
                        | Operator::TableInit { .. }
                        | Operator::DataDrop { .. }
                        | Operator::ElemDrop { .. } => f.mutates_tables_or_segments = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // WAMR's sizes (wasm_loader.c `adjust_table_max_size`, wasm_runtime.c
    // `tables_instantiate`): a table that can grow is allocated at its
    // maximum, which is its declared one but at most twice its initial size
    // (or 1,024 elements, if more).
    f.table_bytes = tables
        .iter()
        .map(|&(initial, maximum)| {
            let most = initial.saturating_mul(2).max(1024);
            let elems = if grows_tables { maximum.map_or(most, |m| m.min(most)).max(initial) } else { initial };
            elems.saturating_mul(std::mem::size_of::<usize>() as u64)
        })
        .fold(0u64, u64::saturating_add);
    // The bytes an i32 global points at, as the active segments leave them
    // (later segments overwrite earlier ones, as at instantiation).
    let pointee = |addr: i64| -> Option<Vec<u8>> {
        let (start, end) = (addr as u32 as u64, addr as u32 as u64 + ExportedGlobal::POINTEE_LEN as u64);
        let mut out = vec![None; ExportedGlobal::POINTEE_LEN];
        for (off, data) in &segments {
            for a in start.max(*off)..end.min(off + data.len() as u64) {
                out[(a - start) as usize] = Some(data[(a - off) as usize]);
            }
        }
        let covered: Vec<u8> = out.into_iter().map_while(|b| b).collect();
        (!covered.is_empty()).then_some(covered)
    };
    f.exported_globals = Ok(global_exports
        .into_iter()
        .map(|(name, index)| {
            let def = index.checked_sub(imported_globals).and_then(|i| globals.get(i as usize));
            let (ty, mutable, init) = match def {
                Some((t, init)) => (val(t.content_type), t.mutable, *init),
                None => (ValType::Other, false, None),
            };
            let pointee = match (ty, init) {
                (ValType::I32, Some(a)) => pointee(a),
                _ => None,
            };
            ExportedGlobal { name, ty, mutable, init, pointee }
        })
        .collect());
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_memory_grow_table_ops_and_import_types() {
        let wasm = wat::parse_str(
            r#"(module
                 (import "env" "send" (func (param i32 i32) (result i32)))
                 (memory 3 7)
                 (table 1 funcref)
                 (func (drop (memory.grow (i32.const 1))))
                 (func (table.set (i32.const 0) (ref.null func))))"#,
        )
        .unwrap();
        let f = scan(&wasm);
        assert_eq!(f.initial_pages, Some(3));
        assert_eq!(f.max_pages, Some(7));
        assert!(f.grows_memory);
        assert!(f.mutates_tables_or_segments);
        assert_eq!(f.func_imports.len(), 1);
        assert_eq!(f.func_imports[0].2, FuncType::new(&[ValType::I32, ValType::I32], &[ValType::I32]));
    }

    #[test]
    fn table_bytes_are_what_wamr_allocates() {
        let bytes = |wat: &str| scan(&wat::parse_str(wat).unwrap()).table_bytes;
        let p = std::mem::size_of::<usize>() as u64;
        assert_eq!(bytes("(module (memory 1))"), 0);
        // Without table.grow, the initial size.
        assert_eq!(bytes("(module (table 10 100 funcref) (table 5 externref))"), 15 * p);
        // With it, the declared maximum, up to twice the initial size (or
        // 1,024 elements, if more).
        let grow = "(func (drop (table.grow 0 (ref.null func) (i32.const 1))))";
        assert_eq!(bytes(&format!("(module (table 10 100 funcref) {grow})")), 100 * p);
        assert_eq!(bytes(&format!("(module (table 10 4000000000 funcref) {grow})")), 1024 * p);
        assert_eq!(bytes(&format!("(module (table 3000 4000000000 funcref) {grow})")), 6000 * p);
        assert_eq!(bytes(&format!("(module (table 10 funcref) {grow})")), 1024 * p);
        assert_eq!(bytes(&format!("(module (table 4000 funcref) {grow})")), 8000 * p);
    }

    #[test]
    fn a_plain_module_neither_grows_nor_mutates() {
        let wasm = wat::parse_str(r#"(module (memory 1) (func (drop (i32.load (i32.const 0)))))"#).unwrap();
        let f = scan(&wasm);
        assert_eq!(f.initial_pages, Some(1));
        assert!(!f.grows_memory);
        assert!(!f.mutates_tables_or_segments);
    }
}
