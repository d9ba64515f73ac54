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
use wasmparser::{Operator, Parser, Payload, TypeRef, ValType as WpValType};

use super::module::{FuncType, ValType};

/// What the scan found.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModuleFacts {
    /// Initial pages of memory 0 (defined or imported), if there is one.
    pub initial_pages: Option<u64>,
    /// Declared maximum pages of memory 0, if any.
    pub max_pages: Option<u64>,
    /// Some function contains `memory.grow`.
    pub grows_memory: bool,
    /// Some function changes tables or drops segments (see module docs).
    pub mutates_tables_or_segments: bool,
    /// `(module, name, type)` of every imported function.
    pub func_imports: Vec<(String, String, FuncType)>,
    /// `(name, type)` of every exported function. (WAMR's own type getters
    /// assert on reference-typed results in debug builds, so exports are
    /// typed from here.)
    pub func_exports: Vec<(String, FuncType)>,
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
            ModuleFacts { grows_memory: true, mutates_tables_or_segments: true, ..ModuleFacts::default() }
        }
    }
}

fn try_scan(bytes: &[u8]) -> wasmparser::Result<ModuleFacts> {
    let mut f = ModuleFacts::default();
    let mut types: Vec<FuncType> = Vec::new();
    // Type of every function in the index space: imports, then definitions.
    let mut funcs: Vec<u32> = Vec::new();
    let type_of = |types: &[FuncType], idx: u32| types.get(idx as usize).cloned().unwrap_or_else(|| FuncType::new(&[ValType::Other], &[]));
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
                    match imp.ty {
                        TypeRef::Func(idx) => {
                            funcs.push(idx);
                            f.func_imports.push((imp.module.to_string(), imp.name.to_string(), type_of(&types, idx)));
                        }
                        TypeRef::Memory(m) if f.initial_pages.is_none() => {
                            f.initial_pages = Some(m.initial);
                            f.max_pages = m.maximum;
                        }
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
                    if e.kind == wasmparser::ExternalKind::Func {
                        let ty = funcs.get(e.index as usize).map(|t| type_of(&types, *t));
                        f.func_exports.push((e.name.to_string(), ty.unwrap_or_else(|| type_of(&types, u32::MAX))));
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
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader()?;
                while !ops.eof() {
                    match ops.read()? {
                        Operator::MemoryGrow { .. } => f.grows_memory = true,
                        Operator::TableSet { .. }
                        | Operator::TableGrow { .. }
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
    fn a_plain_module_neither_grows_nor_mutates() {
        let wasm = wat::parse_str(r#"(module (memory 1) (func (drop (i32.load (i32.const 0)))))"#).unwrap();
        let f = scan(&wasm);
        assert_eq!(f.initial_pages, Some(1));
        assert!(!f.grows_memory);
        assert!(!f.mutates_tables_or_segments);
    }
}
