//! Instance state: the image a fresh env starts from, the reset that brings a
//! used env back to it, and the accounting that bounds guest memory.
//!
//! WAMR's embedding API can neither reset an instance nor change a memory's
//! maximum after instantiation. Both need WAMR internals, reached through
//! `wamr/src/inst_access.c` (compiled against WAMR's own headers, see
//! `inst_access.rs`): the instance's globals block, and the default
//! memory's `max_page_count`. Everything else here uses the public API.
//!
//! ## Reset
//! A [`MemoryImage`] is a copy of a freshly initialised env's linear memory,
//! every byte the guest can reach (to the end of the kernel page WAMR
//! rounds a shrunk memory up to), kept as runs: 4 KiB pages with data are
//! copied back; in all-zero runs, the pages a connection wrote are zeroed by
//! writing or given back with `madvise(MADV_DONTNEED)`, whichever costs less,
//! and pages the kernel does not hold are left alone (see `zero_pages`).
//! Globals come back from a per-env copy taken at creation. An env whose
//! memory grew, or whose memory is shared, cannot be reset (the caller
//! destroys it instead).
//!
//! ## Memory budget
//! A [`MemoryBudget`] counts 64 KiB pages across every env that shares it. A
//! `MemoryAccount` charges one env's pages: its current size and the host
//! memory of its tables (WAMR allocates a pointer per element in every
//! instance; a tiny module can declare millions) always, plus,
//! while a call runs, the headroom it may grow into (at most its per-env cap,
//! at most what the budget has left). That headroom becomes the memory's
//! `max_page_count` for the call, so WAMR itself makes `memory.grow` past it
//! return -1; afterwards what was not used goes back. Reservations are taken
//! only around calls, so idle envs hold exactly their size.
use std::sync::atomic::{AtomicU64, Ordering};

use super::inst_access::MemoryPages;
use super::sys;
use crate::error::{Error, Result};

/// Bytes of one WebAssembly page.
pub const WASM_PAGE: u64 = 65536;
const OS_PAGE: usize = 4096;

/// `inst`'s default memory (size, limit, page size, sharing) and its base
/// address, if it has one.
///
/// # Safety
/// SAFETY contract: `inst` is a live module instance with no call in flight
/// on another thread.
unsafe fn mem_info(inst: sys::wasm_module_inst_t) -> Option<(MemoryPages, *mut u8)> {
    // SAFETY: per the contract.
    unsafe { super::inst_access::default_memory(inst) }
}

/// `inst`'s globals block (`global_data`, `global_data_size`).
///
/// # Safety
/// SAFETY contract: `inst` is a live module instance; the block stays valid while it lives.
unsafe fn globals_block(inst: sys::wasm_module_inst_t) -> (*mut u8, usize) {
    let mut size = 0u32;
    // SAFETY: per the contract; the C accessor only reads two fields.
    let ptr = unsafe { super::inst_access::wcoro_inst_global_data(inst, &mut size) };
    (ptr, if ptr.is_null() { 0 } else { size as usize })
}

/// A copy of every global's value of one instance.
#[derive(Debug, Clone)]
pub struct GlobalsSnapshot(Box<[u8]>);

/// Takes a copy of `inst`'s globals.
pub(crate) fn snapshot_globals(inst: sys::wasm_module_inst_t) -> GlobalsSnapshot {
    // SAFETY: `inst` is live and not running (caller); the block holds
    // `len` bytes.
    unsafe {
        let (ptr, len) = globals_block(inst);
        if len == 0 {
            return GlobalsSnapshot(Box::new([]));
        }
        GlobalsSnapshot(std::slice::from_raw_parts(ptr, len).into())
    }
}

/// Writes `snap` back into `inst`'s globals; false if the sizes differ.
pub(crate) fn restore_globals(inst: sys::wasm_module_inst_t, snap: &GlobalsSnapshot) -> bool {
    // SAFETY: as in snapshot_globals; the copy is exactly the block's size.
    unsafe {
        let (ptr, len) = globals_block(inst);
        if len != snap.0.len() {
            return false;
        }
        if len > 0 {
            std::ptr::copy_nonoverlapping(snap.0.as_ptr(), ptr, len);
        }
    }
    true
}

/// Writes `snap` (a parent's globals) into a spawned child's, all but the
/// child's aux stack pointer: WAMR set that to the child's own slot of the
/// shadow stack, and the rest is what the module's start function left,
/// which in the child ran on memory without its data segments. False if the
/// sizes differ.
pub(crate) fn load_spawned_globals(inst: sys::wasm_module_inst_t, snap: &GlobalsSnapshot) -> bool {
    let mut sp = 0u32;
    // SAFETY: `inst` is live (caller); the accessor reads module fields.
    let keep = unsafe { super::inst_access::wcoro_inst_aux_stack_global(inst, &mut sp) }.then_some(sp as usize);
    // SAFETY: as in restore_globals; every copy stays inside the block
    // (`len` bytes, checked equal to the snapshot's).
    unsafe {
        let (ptr, len) = globals_block(inst);
        if len != snap.0.len() {
            return false;
        }
        match keep {
            Some(at) if at + 4 <= len => {
                std::ptr::copy_nonoverlapping(snap.0.as_ptr(), ptr, at);
                std::ptr::copy_nonoverlapping(snap.0.as_ptr().add(at + 4), ptr.add(at + 4), len - at - 4);
            }
            _ => std::ptr::copy_nonoverlapping(snap.0.as_ptr(), ptr, len),
        }
    }
    true
}

/// Current size of `inst`'s default memory in 64 KiB pages, rounded up
/// (a shrunk memory has one page of another size).
fn charge_pages(inst: sys::wasm_module_inst_t) -> u64 {
    // SAFETY: `inst` is live and not running (caller).
    unsafe { mem_info(inst).map(|(m, _)| (m.current as u64 * m.page_bytes).div_ceil(WASM_PAGE)).unwrap_or(0) }
}

/// Sets the default memory's maximum to `pages`, clamped to
/// `[cur_page_count, ceiling]`. Returns the value set.
///
/// `ceiling` must not exceed the maximum WAMR gave the memory at
/// instantiation (for a non-shared memory nothing larger is ever mapped
/// ahead; WAMR grows it with `mremap`).
pub(crate) fn set_memory_max(inst: sys::wasm_module_inst_t, pages: u32, ceiling: u32) -> u32 {
    // The C accessor refuses shared memories and values outside [current,
    // declared maximum], changing nothing.
    // SAFETY: `inst` is live, and no call is growing it now: callers run on
    // the env's own thread, between calls or inside one of its host calls.
    unsafe {
        match mem_info(inst) {
            Some((m, _)) if !m.shared => {
                let v = pages.min(ceiling).max(m.current);
                if super::inst_access::wcoro_memory_set_max_pages(inst, v) {
                    v
                } else {
                    m.max
                }
            }
            Some((m, _)) => m.max,
            None => 0,
        }
    }
}

/// The default memory's maximum as WAMR set it.
pub(crate) fn memory_max(inst: sys::wasm_module_inst_t) -> u32 {
    // SAFETY: `inst` is live and not running (caller).
    unsafe { mem_info(inst).map(|(m, _)| m.max).unwrap_or(0) }
}

/// One run of a [`MemoryImage`].
#[derive(Debug, Clone)]
enum Run {
    /// Bytes to copy back at `offset`.
    Data { offset: usize, bytes: Box<[u8]> },
    /// `len` bytes at `offset` that are zero in the image.
    Zero { offset: usize, len: usize },
}

/// The linear memory of a freshly initialised env (see the module docs).
#[derive(Debug, Clone)]
pub struct MemoryImage {
    pages: u32,
    /// Bytes the guest can reach (WAMR's `memory_data_size`), all covered
    /// by `runs`.
    len: usize,
    runs: Vec<Run>,
}

impl MemoryImage {
    /// Captures `inst`'s default memory; `None` if it is shared (other envs
    /// write it) or absent.
    pub(crate) fn capture(inst: sys::wasm_module_inst_t) -> Option<MemoryImage> {
        // SAFETY: `inst` is live (caller), not running; the slice covers
        // exactly its current memory and is dropped before anything can
        // call it.
        let (bytes, pages) = unsafe {
            let (m, base) = mem_info(inst)?;
            // Not `current * page_bytes`: WAMR shrinks the one page of a
            // module that never grows its memory to `__heap_base`, but maps
            // and bounds-checks it to the end of the kernel's page, and a
            // guest can write there.
            let len = super::inst_access::memory_data_size(inst)?;
            if m.shared || base.is_null() {
                return None;
            }
            (std::slice::from_raw_parts(base, len), m.current)
        };
        // Consecutive pages of one kind form one run.
        let mut runs: Vec<Run> = Vec::new();
        let mut start = 0;
        let pages_zero: Vec<bool> = bytes.chunks(OS_PAGE).map(is_zero).collect();
        for i in 1..=pages_zero.len() {
            if i < pages_zero.len() && pages_zero[i] == pages_zero[start] {
                continue;
            }
            let (offset, end) = (start * OS_PAGE, (i * OS_PAGE).min(bytes.len()));
            if pages_zero[start] {
                runs.push(Run::Zero { offset, len: end - offset });
            } else {
                runs.push(Run::Data { offset, bytes: bytes[offset..end].into() });
            }
            start = i;
        }
        Some(MemoryImage { pages, len: bytes.len(), runs })
    }

    /// Pages the image covers.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Makes `inst`'s memory equal to the image, zero runs included.
    /// Fails (changing nothing) if the memory is shared or its size differs.
    pub(crate) fn apply(&self, inst: sys::wasm_module_inst_t) -> std::result::Result<(), &'static str> {
        // SAFETY: `inst` is live (caller) and not running; every write
        // below stays inside its current memory (same page count as the
        // image, checked first).
        unsafe {
            let (m, base) = mem_info(inst).ok_or("no memory")?;
            if m.shared {
                return Err("shared memory");
            }
            if m.current != self.pages || super::inst_access::memory_data_size(inst) != Some(self.len) {
                return Err("memory size differs (it grew)");
            }
            // What the kernel holds of the memory from the first zero run
            // on, asked once for every zero run (a system call each would
            // cost about 1 µs).
            let first_zero = self.runs.iter().find_map(|r| match r {
                Run::Zero { offset, .. } => Some(*offset),
                Run::Data { .. } => None,
            });
            let aligned = base as usize % OS_PAGE == 0 && super::page_size() == OS_PAGE;
            let held = first_zero.filter(|_| aligned).and_then(|from| {
                let pages = super::residency::pages(base as usize + from, (self.len - from).div_ceil(OS_PAGE))?;
                Some((from / OS_PAGE, pages))
            });
            for run in &self.runs {
                match run {
                    Run::Data { offset, bytes } => {
                        std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(*offset), bytes.len())
                    }
                    Run::Zero { offset, len } => {
                        let held = held.as_ref().and_then(|(first, h)| {
                            h.get(
                                (offset / OS_PAGE).checked_sub(*first)?
                                    ..((offset + len) / OS_PAGE).checked_sub(*first)?,
                            )
                        });
                        zero_pages(base.add(*offset), *len, held)
                    }
                }
            }
        }
        Ok(())
    }
}

/// Pages of a zero run that [`zero_pages`] clears by writing at most; a run
/// with more pages holding data goes back to the kernel whole. Pages
/// cleared by writing stay resident in the env (idle in the pool), so this
/// also bounds what an env keeps: with 16, envs that had once read a 64 KiB
/// chunk each kept 64 KiB, and a 240 s soak's RSS crept 2 MiB.
const CLEAR_BY_HAND: usize = 4;

/// Resident pages of a zero run that [`zero_pages`] reads at most to find
/// those holding data; a run with more goes back to the kernel whole,
/// unread. Pages cleared by writing stay resident and must be read again
/// at every later reset, so without this bound an env whose connections
/// each wrote a different page (a guest keeping per-connection state in a
/// table keyed by connection id, like `guests/http.wat`) gathered them
/// all, and every reset read every one: 35 pages, 8.8 µs, 11 % of the
/// server's CPU under connection churn. Bounded, a reset reads at most 64
/// KiB per zero run, and an env pays one flush (below) when a run's set
/// passes the bound.
const READ_AT_MOST: usize = 16;

/// Zeroes `len` bytes at `at` (a zero run of a reset).
///
/// Giving a page back to the kernel (`MADV_DONTNEED`) is the cheap way to
/// zero it only while it is not resident. Dropping a resident page makes
/// the kernel flush it from the TLB of every CPU that runs another thread
/// of the process, by inter-processor interrupt: about 18 µs in a VM
/// (`scripts/madvise_cost.c`), once per connection, since every connection
/// writes its env's receive buffer and state. So a run's resident pages
/// that hold data are cleared by writing zeros (a page in 0.1 µs), resident
/// pages that are already zero are left as they are (writing to a page the
/// kernel maps to its shared zero page would fault and flush just the
/// same), pages swapped out are given back, and pages the kernel does not
/// hold are left alone: they read back as zeros already, and giving them
/// back can flush too ([`residency`](super::residency)). A run with more
/// than [`CLEAR_BY_HAND`] pages of data, or more than [`READ_AT_MOST`]
/// resident pages, goes back whole: one flush is then cheap beside the
/// writing or the reading, and the pages' memory is returned.
///
/// `held` is what the kernel holds of each page of the run
/// ([`residency::pages`](super::residency::pages)), if it said.
///
/// # Safety
/// SAFETY contract: `at..at+len` is writable anonymous private memory that nothing else uses.
unsafe fn zero_pages(at: *mut u8, len: usize, held: Option<&[super::residency::Page]>) {
    use super::residency::Page;
    let base = at as usize;
    // Runs are cut at 4 KiB; with larger kernel pages they are written.
    if base % OS_PAGE != 0 || len % OS_PAGE != 0 || super::page_size() != OS_PAGE {
        // SAFETY: the caller's range is writable.
        unsafe { std::ptr::write_bytes(at, 0, len) };
        return;
    }
    let Some(held) = held.filter(|h| h.len() == len / OS_PAGE) else {
        // SAFETY: the caller's range.
        return unsafe { give_back(at, len) };
    };
    if held.iter().filter(|&&p| p == Page::Resident).count() > READ_AT_MOST {
        // SAFETY: the caller's range.
        return unsafe { give_back(at, len) };
    }
    let page = |i: usize| {
        // SAFETY: page `i` of the caller's range, readable; nothing writes
        // it while the slice lives.
        unsafe { std::slice::from_raw_parts(at.add(i * OS_PAGE), OS_PAGE) }
    };
    let with_data: Vec<usize> =
        (0..held.len()).filter(|&i| held[i] == Page::Resident && !is_zero(page(i))).take(CLEAR_BY_HAND + 1).collect();
    if with_data.len() > CLEAR_BY_HAND {
        // SAFETY: the caller's range.
        return unsafe { give_back(at, len) };
    }
    for &i in &with_data {
        // SAFETY: page `i` of the caller's writable range.
        unsafe { std::ptr::write_bytes(at.add(i * OS_PAGE), 0, OS_PAGE) };
    }
    // The pages in swap, run by run.
    let mut first = 0;
    for run in held.chunk_by(|a, b| a == b) {
        if run[0] == Page::Swapped {
            // SAFETY: pages `first..first + run.len()` of the caller's range.
            unsafe { give_back(at.add(first * OS_PAGE), run.len() * OS_PAGE) };
        }
        first += run.len();
    }
}

/// Gives `len` bytes at `at` back to the kernel (they read back as zeros),
/// or writes zeros if it refuses.
///
/// # Safety
/// SAFETY contract: a page-aligned range of writable anonymous private memory that nothing else uses.
unsafe fn give_back(at: *mut u8, len: usize) {
    // SAFETY: per the contract; MADV_DONTNEED makes it read back as zeros.
    if unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_DONTNEED) } != 0 {
        // SAFETY: per the contract, writable.
        unsafe { std::ptr::write_bytes(at, 0, len) };
    }
}

/// Whether every byte of `page` (a whole or a last, partial page) is zero.
fn is_zero(page: &[u8]) -> bool {
    // 512 bytes at a time, OR-ed together without a branch, which the
    // compiler turns into vector code: a 4 KiB page in about 90 ns when
    // cached, against 250 ns word by word with a branch on each.
    // SAFETY: every bit pattern is a valid u64.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0)
        && words.chunks(64).all(|c| c.iter().fold(0, |acc, &w| acc | w) == 0)
        && tail.iter().all(|&b| b == 0)
}

/// A bound on the linear memory of every env that shares it, in pages.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    refused_grows: AtomicU64,
    refused_envs: AtomicU64,
    over_cap_grows: AtomicU64,
}

/// A snapshot of a [`MemoryBudget`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryBudgetStats {
    /// The bound, bytes.
    pub limit_bytes: u64,
    /// Charged now (sizes of live envs plus headroom of calls in flight), bytes.
    pub used_bytes: u64,
    /// `memory.grow` calls refused because the budget was exhausted.
    pub refused_grows: u64,
    /// Env creations refused because the budget was exhausted.
    pub refused_envs: u64,
    /// `memory.grow` calls refused by the per-env cap (`max_memory_pages`).
    pub over_cap_grows: u64,
}

impl MemoryBudget {
    /// A budget of `bytes` (rounded down to whole pages).
    pub fn new(bytes: u64) -> MemoryBudget {
        MemoryBudget {
            limit: bytes / WASM_PAGE,
            used: AtomicU64::new(0),
            refused_grows: AtomicU64::new(0),
            refused_envs: AtomicU64::new(0),
            over_cap_grows: AtomicU64::new(0),
        }
    }

    /// Half of the machine's physical memory: the default bound.
    pub fn default_bytes() -> u64 {
        // SAFETY: sysconf has no preconditions.
        let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
        if pages <= 0 {
            return 4 << 30;
        }
        (pages as u64 * super::page_size() as u64) / 2
    }

    /// Counters.
    pub fn stats(&self) -> MemoryBudgetStats {
        MemoryBudgetStats {
            limit_bytes: self.limit * WASM_PAGE,
            used_bytes: self.used.load(Ordering::Relaxed) * WASM_PAGE,
            refused_grows: self.refused_grows.load(Ordering::Relaxed),
            refused_envs: self.refused_envs.load(Ordering::Relaxed),
            over_cap_grows: self.over_cap_grows.load(Ordering::Relaxed),
        }
    }

    /// Takes up to `want` pages; returns how many it got (`exact`: all or
    /// nothing).
    fn take(&self, want: u64, exact: bool) -> u64 {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let free = self.limit.saturating_sub(cur);
            let got = want.min(free);
            if got == 0 || (exact && got < want) {
                return 0;
            }
            match self.used.compare_exchange_weak(cur, cur + got, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return got,
                Err(now) => cur = now,
            }
        }
    }

    fn give(&self, pages: u64) {
        if pages > 0 {
            self.used.fetch_sub(pages, Ordering::AcqRel);
        }
    }
}

/// One env's charge against a [`MemoryBudget`] (see the module docs).
/// Dropping it gives everything back.
#[derive(Debug)]
pub(crate) struct MemoryAccount {
    budget: std::sync::Arc<MemoryBudget>,
    /// Per-env cap, pages.
    cap: u32,
    /// Pages charged now (size, plus headroom during a call).
    charged: u64,
    /// Pages charged for the env's whole life besides its linear memory:
    /// the host memory of its tables (`ModuleFacts::table_bytes`).
    fixed: u64,
    /// Whether the module can grow its memory at all.
    grows: bool,
}

impl MemoryAccount {
    /// Charges `inst`'s current size, and `fixed_bytes` of host memory it
    /// holds besides (its tables); refuses (an error) if the budget has no
    /// room for them.
    pub(crate) fn open(
        inst: sys::wasm_module_inst_t,
        budget: std::sync::Arc<MemoryBudget>,
        cap: u32,
        grows: bool,
        fixed_bytes: u64,
    ) -> Result<MemoryAccount> {
        let size = charge_pages(inst);
        let fixed = fixed_bytes.div_ceil(WASM_PAGE);
        let want = size.saturating_add(fixed);
        if want > 0 && budget.take(want, true) == 0 {
            budget.refused_envs.fetch_add(1, Ordering::Relaxed);
            let s = budget.stats();
            return Err(Error::MemoryBudget(format!(
                "a new env needs {} KiB of linear memory{}; {} of the {} KiB guest-memory budget are in use",
                size * 64,
                if fixed > 0 { format!(" and {} KiB for its tables", fixed * 64) } else { String::new() },
                s.used_bytes / 1024,
                s.limit_bytes / 1024
            )));
        }
        let acct = MemoryAccount { budget, cap, charged: size, fixed, grows };
        set_memory_max(inst, 0, cap);
        Ok(acct)
    }

    /// Before a call: reserves room to grow (up to the cap, as far as the
    /// budget allows) and makes it the memory's maximum.
    pub(crate) fn before_call(&mut self, inst: sys::wasm_module_inst_t) {
        if !self.grows {
            return;
        }
        let cur = charge_pages(inst);
        self.settle_to(cur);
        let want = (self.cap as u64).saturating_sub(cur);
        let got = if want > 0 { self.budget.take(want, false) } else { 0 };
        self.charged += got;
        set_memory_max(inst, (cur + got) as u32, self.cap);
    }

    /// After a call: charges what the memory grew to, returns the rest of
    /// the headroom, and closes the maximum at the current size.
    pub(crate) fn after_call(&mut self, inst: sys::wasm_module_inst_t) {
        if !self.grows {
            return;
        }
        let cur = charge_pages(inst);
        self.settle_to(cur);
        set_memory_max(inst, cur as u32, self.cap);
    }

    /// Sets the charge to `pages` (the budget already holds any increase
    /// up to `self.charged`; a decrease is given back).
    fn settle_to(&mut self, pages: u64) {
        if pages < self.charged {
            self.budget.give(self.charged - pages);
        } else if pages > self.charged {
            // Growth beyond the reservation cannot happen (the maximum
            // forbids it); charge it anyway so the books stay exact.
            self.budget.used.fetch_add(pages - self.charged, Ordering::AcqRel);
        }
        self.charged = pages;
    }

    /// Counts a refused `memory.grow` that asked for `wanted` pages in
    /// all: over the cap, or (within it) over the budget.
    pub(crate) fn note_refused(&self, wanted: u64) {
        let c = if wanted > self.cap as u64 { &self.budget.over_cap_grows } else { &self.budget.refused_grows };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for MemoryAccount {
    fn drop(&mut self) {
        self.budget.give(self.charged + self.fixed);
    }
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    /// One nonzero byte anywhere, in whole pages, short last pages and
    /// slices that do not start on a word, is found.
    #[test]
    fn is_zero_finds_a_single_nonzero_byte_anywhere() {
        let mut buf = vec![0u8; 4096 + 16];
        for (start, len) in [(0, 4096), (8, 4096), (3, 4096), (5, 1001), (0, 7), (1, 0)] {
            assert!(is_zero(&buf[start..start + len]), "{start}+{len}");
            for i in start..start + len {
                buf[i] = 0x80;
                assert!(!is_zero(&buf[start..start + len]), "byte {i} of {start}+{len}");
                buf[i] = 0;
            }
            // A byte just outside the slice is not its business.
            if start > 0 {
                buf[start - 1] = 1;
            }
            buf[start + len] = 1;
            assert!(is_zero(&buf[start..start + len]), "outside {start}+{len}");
            buf.fill(0);
        }
    }
}
