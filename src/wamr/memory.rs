//! Bounds-checked access to a guest's linear memory.
//!
//! Guest pointers and lengths are never trusted: every range is checked in
//! 64-bit arithmetic against the memory's current size before a slice is
//! made, so negative lengths, ranges past the end and ranges that wrap past
//! 2^32 are all rejected (the ABI's `BAD_POINTER`).
use std::marker::PhantomData;

use super::sys;

/// A view of one instance's default linear memory, valid while borrowed:
/// nothing can call into the guest (and so grow or move its memory) while
/// it exists.
pub struct GuestMemory<'a> {
    base: *mut u8,
    len: usize,
    _borrow: PhantomData<&'a mut ()>,
}

impl<'a> GuestMemory<'a> {
    /// # Safety
    /// `inst` must be a live module instance that stays alive, and whose
    /// memory is not grown or freed, for `'a`.
    pub(crate) unsafe fn of_instance(inst: sys::wasm_module_inst_t) -> GuestMemory<'a> {
        // SAFETY: guaranteed by the caller; WAMR returns NULL for a module
        // without memory, which gives an empty view.
        let (base, len) = unsafe {
            let mem = sys::wasm_runtime_get_default_memory(inst);
            if mem.is_null() {
                (std::ptr::null_mut(), 0)
            } else {
                let pages = sys::wasm_memory_get_cur_page_count(mem);
                let page = sys::wasm_memory_get_bytes_per_page(mem);
                (sys::wasm_memory_get_base_address(mem) as *mut u8, (pages * page) as usize)
            }
        };
        GuestMemory { base, len: if base.is_null() { 0 } else { len }, _borrow: PhantomData }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory is empty (or absent).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks a guest range given as the guest's i32 values.
    pub fn check(&self, ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
        if len < 0 {
            return None;
        }
        let start = ptr as u32 as u64;
        let end = start + len as u64;
        if end > self.len as u64 {
            return None;
        }
        Some(start as usize..end as usize)
    }

    /// The bytes at `ptr..ptr+len`, or `None` if the range is not wholly
    /// inside memory.
    pub fn slice(&self, ptr: i32, len: i32) -> Option<&[u8]> {
        let r = self.check(ptr, len)?;
        if r.is_empty() {
            return Some(&[]);
        }
        // SAFETY: `r` lies inside [base, base+len), which is the live linear
        // memory for 'a (see of_instance).
        Some(unsafe { std::slice::from_raw_parts(self.base.add(r.start), r.len()) })
    }

    /// Mutable bytes at `ptr..ptr+len`, or `None` if out of bounds.
    pub fn slice_mut(&mut self, ptr: i32, len: i32) -> Option<&mut [u8]> {
        let r = self.check(ptr, len)?;
        if r.is_empty() {
            return Some(&mut []);
        }
        // SAFETY: as in `slice`; `&mut self` makes the view exclusive.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.add(r.start), r.len()) })
    }

    /// Copies `data` to `ptr`; false if out of bounds.
    pub fn write(&mut self, ptr: i32, data: &[u8]) -> bool {
        let Ok(len) = i32::try_from(data.len()) else { return false };
        match self.slice_mut(ptr, len) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}
