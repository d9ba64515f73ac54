//! Bounds-checked access to a guest's linear memory.
//!
//! Guest pointers and lengths are never trusted: every range is checked in
//! 64-bit arithmetic against the memory's current size before a slice is
//! made, so negative lengths, ranges past the end and ranges that wrap past
//! 2^32 are all rejected (the ABI's `BAD_POINTER`).
//!
//! A *shared* memory (threads proposal) can be written by other envs of the
//! same cluster at any moment, so no Rust reference into it may exist:
//! [`slice`](GuestMemory::slice) and [`slice_mut`](GuestMemory::slice_mut)
//! refuse it, and [`with_bytes`](GuestMemory::with_bytes),
//! [`write`](GuestMemory::write) and [`fill`](GuestMemory::fill) copy with
//! raw pointers instead (racy guest accesses stay the guest's semantics).
use std::marker::PhantomData;

use super::sys;

/// A view of one instance's default linear memory, valid while borrowed:
/// nothing can call into the guest (and so grow or move its memory) while
/// it exists.
pub struct GuestMemory<'a> {
    base: *mut u8,
    len: usize,
    shared: bool,
    _borrow: PhantomData<&'a mut ()>,
}

/// An instance's default memory as looked up once: WAMR keeps the same
/// memory instance for the module instance's whole life (growth changes its
/// base and size, read afresh by [`MemoryRef::view`], not the instance), so
/// an env finds it when it is made rather than on every call and host call.
/// The lookup went through the module instance and its array of memories,
/// two cache lines that a request touched for nothing else (issue 15's
/// profile: ~0.15 µs a request at 1,000 connections).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryRef {
    /// NULL for a module without memory.
    mem: sys::wasm_memory_inst_t,
    page_bytes: u64,
    shared: bool,
}

impl MemoryRef {
    /// Looks up `inst`'s default memory.
    ///
    /// # Safety
    /// SAFETY contract: `inst` is a live module instance.
    pub(crate) unsafe fn of_instance(inst: sys::wasm_module_inst_t) -> MemoryRef {
        // SAFETY: `inst` is live (the caller's contract); WAMR returns NULL
        // for a module without memory, and the getters read fields of the
        // memory instance it returned.
        unsafe {
            let mem = sys::wasm_runtime_get_default_memory(inst);
            if mem.is_null() {
                return MemoryRef { mem, page_bytes: 0, shared: false };
            }
            MemoryRef {
                mem,
                page_bytes: sys::wasm_memory_get_bytes_per_page(mem),
                shared: sys::wasm_memory_get_shared(mem),
            }
        }
    }

    /// A view of the memory as it is now.
    ///
    /// # Safety
    /// SAFETY contract: the instance this was looked up from is alive, and its
    /// memory is not grown or freed, for `'a`.
    pub(crate) unsafe fn view<'a>(&self) -> GuestMemory<'a> {
        if self.mem.is_null() {
            return GuestMemory { base: std::ptr::null_mut(), len: 0, shared: false, _borrow: PhantomData };
        }
        // SAFETY: the memory instance lives as long as its module instance
        // (the caller's contract).
        let (base, pages) = unsafe {
            (sys::wasm_memory_get_base_address(self.mem) as *mut u8, sys::wasm_memory_get_cur_page_count(self.mem))
        };
        let len = if base.is_null() { 0 } else { (pages * self.page_bytes) as usize };
        GuestMemory { base, len, shared: self.shared, _borrow: PhantomData }
    }
}

impl<'a> GuestMemory<'a> {
    /// # Safety
    /// SAFETY contract: `inst` is a live module instance that stays alive,
    /// and whose memory is not grown or freed, for `'a`.
    pub(crate) unsafe fn of_instance(inst: sys::wasm_module_inst_t) -> GuestMemory<'a> {
        // SAFETY: the caller's contract is both functions' contract.
        unsafe { MemoryRef::of_instance(inst).view() }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory is empty (or absent).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it is a shared memory (see the module docs).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Raw pointer to a checked range (for C natives).
    pub(crate) fn ptr(&self, ptr: i32, len: i32) -> Option<*mut u8> {
        let r = self.check(ptr, len)?;
        if r.is_empty() {
            return Some(std::ptr::NonNull::dangling().as_ptr());
        }
        // SAFETY: `r.start` is inside the live memory (checked above).
        Some(unsafe { self.base.add(r.start) })
    }

    /// Calls `f` with the bytes at `ptr..ptr+len` (`None` if out of bounds):
    /// a view into a private memory, a copy of a shared one.
    pub fn with_bytes<R>(&self, ptr: i32, len: i32, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        if !self.shared {
            return f(self.slice(ptr, len));
        }
        match self.check(ptr, len) {
            None => f(None),
            Some(r) => {
                let mut copy = vec![0u8; r.len()];
                // SAFETY: `r` is inside the live memory; raw copy, no
                // reference into memory other envs may write.
                unsafe { std::ptr::copy_nonoverlapping(self.base.add(r.start), copy.as_mut_ptr(), r.len()) };
                f(Some(&copy))
            }
        }
    }

    /// Sets `ptr..ptr+len` to `byte`; false if out of bounds.
    pub fn fill(&mut self, ptr: i32, len: i32, byte: u8) -> bool {
        match self.check(ptr, len) {
            Some(r) => {
                // SAFETY: `r` is inside the live memory; raw write.
                unsafe { std::ptr::write_bytes(self.base.add(r.start), byte, r.len()) };
                true
            }
            None => false,
        }
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
    /// inside memory or the memory is shared (use [`with_bytes`](Self::with_bytes)).
    pub fn slice(&self, ptr: i32, len: i32) -> Option<&[u8]> {
        if self.shared {
            return None;
        }
        let r = self.check(ptr, len)?;
        if r.is_empty() {
            return Some(&[]);
        }
        // SAFETY: `r` lies inside [base, base+len), which is the live linear
        // memory for 'a (see of_instance).
        Some(unsafe { std::slice::from_raw_parts(self.base.add(r.start), r.len()) })
    }

    /// Mutable bytes at `ptr..ptr+len`, or `None` if out of bounds or the
    /// memory is shared (use [`write`](Self::write) / [`fill`](Self::fill)).
    pub fn slice_mut(&mut self, ptr: i32, len: i32) -> Option<&mut [u8]> {
        // A view borrowed from this one (`&mut self` makes it exclusive),
        // consumed for the borrow's length.
        GuestMemory { base: self.base, len: self.len, shared: self.shared, _borrow: PhantomData }
            .into_slice_mut(ptr, len)
    }

    /// [`slice_mut`](Self::slice_mut) for the whole life of the view
    /// (consumes it).
    pub(crate) fn into_slice_mut(self, ptr: i32, len: i32) -> Option<&'a mut [u8]> {
        if self.shared {
            return None;
        }
        let r = self.check(ptr, len)?;
        if r.is_empty() {
            return Some(&mut []);
        }
        // SAFETY: as in `slice`; the view borrows the instance exclusively
        // for 'a, and it is consumed, so the slice is the only way in.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.add(r.start), r.len()) })
    }

    /// Copies `data` to `ptr`; false if out of bounds.
    pub fn write(&mut self, ptr: i32, data: &[u8]) -> bool {
        let Ok(len) = i32::try_from(data.len()) else { return false };
        match self.check(ptr, len) {
            Some(r) => {
                // SAFETY: `r` is inside the live memory and `data` is a
                // separate Rust buffer; raw copy (no reference into memory).
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(r.start), r.len()) };
                true
            }
            None => false,
        }
    }
}
