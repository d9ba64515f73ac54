//! What WAMR's public API does not reach: an instance's globals area, the
//! growth limit of its memory, a module's memory maximum as WAMR's loader
//! left it, an exec env's operand stack, and a copy of an instance's
//! exception text taken under WAMR's exception lock.
//!
//! Both are read or written by `wamr/src/inst_access.c`, compiled against
//! WAMR's internal headers with the same defines as WAMR itself (build.rs),
//! so it sees the struct layout of the runtime it is linked with. Interpreted
//! and AOT instances share that layout.
//!
//! They are methods of [`ExecEnv`] taking `&mut self`: a call into the guest
//! also needs `&mut self`, so none can be in flight while they run, and the
//! slice of globals cannot outlive the borrow.
use super::exec_env::ExecEnv;
use super::sys;
use crate::error::{Error, Result};

extern "C" {
    pub(super) fn wcoro_inst_global_data(inst: sys::wasm_module_inst_t, size: *mut u32) -> *mut u8;
    pub(super) fn wcoro_inst_aux_stack_global(inst: sys::wasm_module_inst_t, offset: *mut u32) -> bool;
    pub(super) fn wcoro_memory_set_max_pages(inst: sys::wasm_module_inst_t, max_pages: u32) -> bool;
    pub(super) fn wcoro_module_max_pages(module: sys::wasm_module_t, max_pages: *mut u32) -> bool;
    pub(super) fn wcoro_memory_data_size(inst: sys::wasm_module_inst_t, size: *mut u64) -> bool;
    pub(super) fn wcoro_inst_copy_exception(
        inst: sys::wasm_module_inst_t,
        buf: *mut std::ffi::c_char,
        buf_len: u32,
    ) -> bool;
    pub(super) fn wcoro_exec_env_operand_stack(
        env: sys::wasm_exec_env_t,
        bottom: *mut *mut u8,
        top_boundary: *mut *mut u8,
    );
}

/// Pages of an instance's default memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPages {
    /// Current size.
    pub current: u32,
    /// How far `memory.grow` may go now.
    pub max: u32,
    /// Bytes per page: 65536, except for a module without `memory.grow`,
    /// whose memory WAMR stores as one page of its whole size (max 1).
    pub page_bytes: u64,
    /// Whether the memory is shared (threads proposal).
    pub shared: bool,
}

/// `inst`'s default memory as WAMR's public getters describe it, with its
/// base address; `None` without one.
///
/// # Safety
/// SAFETY contract: `inst` is a live module instance with no call in flight on another thread.
pub(super) unsafe fn default_memory(inst: sys::wasm_module_inst_t) -> Option<(MemoryPages, *mut u8)> {
    // SAFETY: per the contract; WAMR returns NULL when there is no memory
    // and the getters only read the memory instance.
    unsafe {
        let mem = sys::wasm_runtime_get_default_memory(inst);
        if mem.is_null() {
            return None;
        }
        Some((
            MemoryPages {
                current: sys::wasm_memory_get_cur_page_count(mem) as u32,
                max: sys::wasm_memory_get_max_page_count(mem) as u32,
                page_bytes: sys::wasm_memory_get_bytes_per_page(mem),
                shared: sys::wasm_memory_get_shared(mem),
            },
            sys::wasm_memory_get_base_address(mem) as *mut u8,
        ))
    }
}

/// The bytes of `inst`'s default memory the guest can reach: its pages
/// times their size, rounded up to the kernel's page (WAMR maps and
/// bounds-checks a memory it shrank to `__heap_base` to the end of that
/// page); `None` without a memory.
///
/// # Safety
/// SAFETY contract: `inst` is a live module instance with no call in flight
/// on another thread.
pub(super) unsafe fn memory_data_size(inst: sys::wasm_module_inst_t) -> Option<usize> {
    let mut size = 0u64;
    // SAFETY: per the contract; the C accessor only reads one field.
    unsafe { wcoro_memory_data_size(inst, &mut size) }.then_some(size as usize)
}

impl ExecEnv {
    /// The instance's globals area: the current values of the module's
    /// defined globals, laid out by WAMR (imported globals are not in it).
    /// Empty for a module without defined globals. Copy it after
    /// instantiation and write it back to return the globals to that state.
    pub fn global_data(&mut self) -> &mut [u8] {
        let mut size = 0u32;
        // SAFETY: `inst` is a live instance owned by this env (see
        // ExecEnv::inst); the C function only reads two fields of it.
        let ptr = unsafe { wcoro_inst_global_data(self.inst, &mut size) };
        if ptr.is_null() || size == 0 {
            return &mut [];
        }
        // SAFETY: WAMR allocated `global_data_size` bytes at `global_data`
        // for the instance's life; `&mut self` excludes any call into the
        // guest (the only other writer) while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(ptr, size as usize) }
    }

    /// Current and maximum size of the default memory, or `None` if the
    /// instance has none.
    pub fn memory_pages(&self) -> Option<MemoryPages> {
        // SAFETY: `inst` is alive and owned by this env.
        unsafe { default_memory(self.inst) }.map(|(pages, _)| pages)
    }

    /// Sets how many pages the default memory may grow to (`memory.grow`
    /// beyond fails with -1, as for the module's own maximum). Pages are
    /// [`MemoryPages::page_bytes`] long: 64 KiB unless the module cannot grow
    /// its memory at all (then WAMR keeps it as one page and this can only
    /// confirm 1).
    /// It may be lowered and raised again, between the current size and the
    /// module's declared maximum (WAMR's default maximum, 65536, if it
    /// declares none); outside that range, for a shared memory (mapped at its
    /// maximum once, for every sharer), or without memory, it is an error and
    /// nothing changes.
    pub fn set_memory_max_pages(&mut self, max_pages: u32) -> Result<()> {
        // SAFETY: `inst` is alive and no call is in flight (`&mut self`), so
        // nothing reads max_page_count concurrently.
        if unsafe { wcoro_memory_set_max_pages(self.inst, max_pages) } {
            return Ok(());
        }
        let why = match self.memory_pages() {
            None => "the instance has no memory".to_string(),
            Some(p) if p.shared => "the memory is shared".to_string(),
            Some(p) if max_pages < p.current => {
                format!("{max_pages} is below the current size of {} pages", p.current)
            }
            Some(_) => format!("{max_pages} is above the module's declared maximum"),
        };
        Err(Error::ExecEnv(format!("cannot set the memory limit to {max_pages} pages: {why}")))
    }
}
