//! Which pages of a range of this process's memory the kernel holds: what a
//! reset ([`state`](super::state)) and a new coroutine's stack trim
//! ([`stack`](super::stack)) ask before they give pages back.
//!
//! Giving back (`MADV_DONTNEED`) a range the kernel holds nothing of looks
//! free, and mostly is (under a microsecond), but not always: when it
//! empties a page table, Linux 6.x frees the table and must flush the TLB
//! of every CPU running another thread of the process, by
//! inter-processor interrupt, 9–22 µs in a VM. Under connection churn
//! 5.5 % of the give-backs of pages that were not resident did that, and
//! 6 % of the stack trims, which found nothing resident at all. So callers
//! ask first and give back only what is held.
//!
//! The answer comes from `/proc/self/pagemap` (one `pread`, 8 bytes a page;
//! 0.95 µs for 64 pages here, against 1.4 µs for `mincore`), which also
//! tells pages swapped out, and so holding data, from pages never written
//! or already given back. Where pagemap cannot be read (a sandbox without
//! `/proc`), `mincore` answers, and a page that is not resident may be in
//! swap: [`Page::Swapped`], so it is still given back.
use std::sync::atomic::{AtomicI32, Ordering};

/// What the kernel holds for one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
    /// Nothing: the page reads back as zeros and costs no memory.
    Absent,
    /// In memory (a page of its own, or the kernel's shared zero page).
    Resident,
    /// In swap, or, when only `mincore` can answer, possibly there.
    Swapped,
}

/// Bit 63 of a pagemap entry: the page is present in memory.
const PRESENT: u64 = 1 << 63;
/// Bit 62: the page is swapped out.
const SWAPPED: u64 = 1 << 62;

/// The descriptor of `/proc/self/pagemap`: [`UNOPENED`], [`UNAVAILABLE`] or
/// an open descriptor.
static PAGEMAP: AtomicI32 = AtomicI32::new(UNOPENED);
const UNOPENED: i32 = -1;
const UNAVAILABLE: i32 = -2;

/// In a child made by `fork`: the descriptor inherited from the parent
/// reads the *parent's* page tables ("self" is resolved at `open`), which
/// would call pages the child wrote absent, and leave them uncleared. The
/// child closes it and opens its own at the next call. `close` and an
/// atomic store are async-signal-safe, as a fork handler must be.
extern "C" fn forget_in_child() {
    let fd = PAGEMAP.swap(UNOPENED, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the descriptor this module opened; nothing else uses it
        // in the child, which has only the forking thread.
        unsafe { libc::close(fd) };
    }
}

/// `/proc/self/pagemap`'s descriptor, opened at the first call; `None`
/// where it cannot be. Out of descriptors (`EMFILE`, `ENFILE`: a flood the
/// server sheds) is not "cannot": the next call tries again, and `mincore`
/// answers meanwhile.
fn pagemap() -> Option<i32> {
    match PAGEMAP.load(Ordering::Relaxed) {
        UNAVAILABLE => return None,
        UNOPENED => {}
        fd => return Some(fd),
    }
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a handler that only closes a descriptor and
        // stores an atomic; it stays valid for the life of the process.
        unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) };
    });
    // SAFETY: a NUL-terminated path; the descriptor returned is ours.
    let fd = unsafe { libc::open(c"/proc/self/pagemap".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        if !matches!(e, Some(libc::EMFILE | libc::ENFILE)) {
            let _ = PAGEMAP.compare_exchange(UNOPENED, UNAVAILABLE, Ordering::Relaxed, Ordering::Relaxed);
        }
        return None;
    }
    match PAGEMAP.compare_exchange(UNOPENED, fd, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => Some(fd),
        Err(other) => {
            // Another thread opened it first.
            // SAFETY: `fd` is ours and unused.
            unsafe { libc::close(fd) };
            (other >= 0).then_some(other)
        }
    }
}

/// The state of each page of `[at, at + pages × page_size)`, one per page,
/// or `None` if the kernel answers neither way. `at` must be page-aligned.
///
/// Never inlined: the stack trim calls it from a frame that must stay
/// small (its `MARGIN`), and the buffers here are dead by the time that
/// frame gives pages back.
#[inline(never)]
pub(crate) fn pages(at: usize, pages: usize) -> Option<Vec<Page>> {
    let page = super::page_size();
    debug_assert_eq!(at % page, 0);
    if let Some(fd) = pagemap() {
        if let Some(v) = from_pagemap(fd, at / page, pages) {
            return Some(v);
        }
    }
    let mut resident = vec![0u8; pages];
    // SAFETY: `resident` has a byte for each page of the page-aligned
    // range; mincore only writes them, and only reads the page tables.
    if unsafe { libc::mincore(at as *mut libc::c_void, pages * page, resident.as_mut_ptr()) } != 0 {
        return None;
    }
    Some(resident.iter().map(|&r| if r & 1 == 1 { Page::Resident } else { Page::Swapped }).collect())
}

/// Entries read from pagemap at a time: 32 KiB, 16 MiB of memory.
const CHUNK: usize = 4096;

/// Pages `[first, first + pages)` (page numbers) as pagemap tells them;
/// `None` if a read falls short.
fn from_pagemap(fd: i32, first: usize, pages: usize) -> Option<Vec<Page>> {
    let mut out = Vec::with_capacity(pages);
    let mut raw = vec![0u64; pages.min(CHUNK)];
    while out.len() < pages {
        let n = (pages - out.len()).min(CHUNK);
        let bytes = n * 8;
        let offset = ((first + out.len()) * 8) as libc::off_t;
        // SAFETY: `raw` is writable for at least `bytes`; `fd` stays open
        // (only a fork's child closes it, in its own copy of the process).
        if unsafe { libc::pread(fd, raw.as_mut_ptr().cast(), bytes, offset) } != bytes as isize {
            return None;
        }
        out.extend(raw[..n].iter().map(|&e| {
            if e & PRESENT != 0 {
                Page::Resident
            } else if e & SWAPPED != 0 {
                Page::Swapped
            } else {
                Page::Absent
            }
        }));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{pagemap, pages, Page};

    /// A fresh private anonymous mapping of `n` kernel pages (reserved
    /// lazily); the caller unmaps it.
    fn map(n: usize) -> usize {
        // SAFETY: a new mapping, which nothing else uses.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n * crate::wamr::page_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        at as usize
    }

    /// Written pages are resident, untouched ones absent, and pages given
    /// back absent again, as both sources tell them.
    #[test]
    fn pages_tell_written_untouched_and_given_back() {
        let page = crate::wamr::page_size();
        let len = 8 * page;
        let at = map(8);
        // SAFETY: pages 1 and 5 of the mapping, writable.
        unsafe {
            *((at + page) as *mut u8) = 1;
            *((at + 5 * page) as *mut u8) = 1;
        }
        // Without pagemap, a page that is not resident may be in swap.
        let absent = if pagemap().is_some() { Page::Absent } else { Page::Swapped };
        let got = pages(at, 8).expect("pagemap or mincore");
        let want: Vec<Page> = (0..8).map(|i| if i == 1 || i == 5 { Page::Resident } else { absent }).collect();
        assert_eq!(got, want);
        // SAFETY: page 5 of the mapping, which nothing else uses.
        assert_eq!(unsafe { libc::madvise((at + 5 * page) as *mut libc::c_void, page, libc::MADV_DONTNEED) }, 0);
        assert_eq!(pages(at, 8).unwrap()[5], absent);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(at as *mut libc::c_void, len) };
    }

    /// A range read in more than one chunk is told page by page too.
    #[test]
    fn a_range_longer_than_a_chunk_is_read_whole() {
        let page = crate::wamr::page_size();
        let n = super::CHUNK * 2 + 3;
        let at = map(n);
        let written = [0, super::CHUNK - 1, super::CHUNK, 2 * super::CHUNK + 2];
        for &i in &written {
            // SAFETY: page `i` of the mapping.
            unsafe { *((at + i * page) as *mut u8) = 1 };
        }
        let got = pages(at, n).unwrap();
        assert_eq!(got.len(), n);
        let resident: Vec<usize> = (0..n).filter(|&i| got[i] == Page::Resident).collect();
        assert_eq!(resident, written);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(at as *mut libc::c_void, n * page) };
    }

    /// Out of descriptors when pagemap is first opened, `mincore` answers
    /// (a page not resident may be in swap), and pagemap is opened at a
    /// later call once descriptors are free. Before, the failed open was
    /// kept for the life of the process. Run in a forked child: it lowers
    /// its descriptor limit and starts with pagemap unopened.
    #[test]
    fn pagemap_is_opened_again_after_running_out_of_descriptors() {
        if pagemap().is_none() {
            return; // no pagemap on this machine: nothing to reopen
        }
        let at = map(4);
        // SAFETY: fork; the child only changes its own limits and state,
        // asks, and leaves with _exit (no destructors, no test harness).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // The fork handler left pagemap unopened in this child.
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: reads and sets this child's own descriptor limit.
            let ok = unsafe {
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
                    let starved = libc::rlimit { rlim_cur: 0, rlim_max: lim.rlim_max };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &starved) == 0
                }
            };
            let starved = ok && pages(at, 4).is_some_and(|p| p.iter().all(|&p| p == Page::Swapped));
            // SAFETY: the limit read above, restored.
            let restored = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0;
            let reopened = restored && pages(at, 4).is_some_and(|p| p.iter().all(|&p| p == Page::Absent));
            // SAFETY: ends the child at once.
            unsafe {
                libc::_exit(if !starved {
                    2
                } else if !reopened {
                    3
                } else {
                    0
                })
            };
        }
        let mut status = 0;
        // SAFETY: waits for the child made above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "exit 2: mincore did not answer while out of descriptors; exit 3: pagemap was not opened \
             again afterwards (status {status:#x})"
        );
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(at as *mut libc::c_void, 4 * crate::wamr::page_size()) };
    }

    /// A child made by `fork` after the descriptor was opened sees its own
    /// pages. Before, it read the parent's page tables through the
    /// inherited descriptor and called a page only it had written absent,
    /// which a reset would have left holding the data.
    #[test]
    fn a_forked_child_sees_its_own_pages() {
        let page = crate::wamr::page_size();
        let at = map(4);
        // The parent opens the descriptor and sees nothing held.
        assert!(pages(at, 4).unwrap().iter().all(|&p| p != Page::Resident));
        // SAFETY: fork; the child only writes its copy of the mapping,
        // asks, and leaves with _exit (no destructors, no test harness).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: page 2 of the child's copy of the mapping.
            unsafe { *((at + 2 * page) as *mut u8) = 1 };
            let ok = pages(at, 4).is_some_and(|p| p[2] == Page::Resident);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child made above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child did not see the page it wrote (status {status:#x})"
        );
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(at as *mut libc::c_void, 4 * page) };
    }
}
