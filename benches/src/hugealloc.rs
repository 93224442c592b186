//! Huge pages for big tables: the runner's global allocator.
//!
//! Production dataplanes keep their session tables on huge pages: at a million sessions a
//! table spans tens of megabytes, far beyond what the TLB covers with 4 KiB pages, so almost
//! every random access would also pay a page walk (two-dimensional under virtualisation). The
//! runner therefore wraps [`System`]: every allocation of at least [`HUGE_PAGE`] bytes is
//! aligned to and rounded up to 2 MiB, and, while advice is on ([`set_advise`]), marked
//! `madvise(MADV_HUGEPAGE)` before it is first touched, so that transparent huge pages back it
//! even where THP is `madvise`-only. The same allocator serves every table in the process, ours
//! and the peers alike; smaller allocations go to [`System`] untouched.
//!
//! Whether the kernel really used huge pages is reported, not assumed: [`anon_huge_bytes`].
//!
//! This is the runner's only `unsafe` (a [`GlobalAlloc`] implementation is unsafe by nature).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Size (and alignment) of a transparent huge page on x86-64 and most aarch64 kernels.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

static ADVISE: AtomicBool = AtomicBool::new(false);

#[global_allocator]
static GLOBAL: HugePageAlloc = HugePageAlloc;

/// [`System`], with allocations of at least [`HUGE_PAGE`] bytes 2 MiB-aligned, rounded up to
/// whole huge pages and, while advice is on, advised `MADV_HUGEPAGE`.
pub(crate) struct HugePageAlloc;

/// Turns the huge-page advice on or off for allocations made from now on; returns the previous
/// setting. Off at start.
pub(crate) fn set_advise(on: bool) -> bool {
    ADVISE.swap(on, Ordering::Relaxed)
}

/// Runs `f` with the advice on (tables on huge pages, as a dataplane deploys them), then off
/// (4 KiB pages), restoring the previous setting after each.
pub(crate) fn each_mode(mut f: impl FnMut()) {
    for advise in [true, false] {
        let was = set_advise(advise);
        f();
        set_advise(was);
    }
}

/// The current mode as reported in JSON: `"madvise"` or `"none"`.
pub(crate) fn mode() -> &'static str {
    if ADVISE.load(Ordering::Relaxed) {
        "madvise"
    } else {
        "none"
    }
}

/// Anonymous memory of this process backed by transparent huge pages (`AnonHugePages` of
/// `/proc/self/smaps_rollup`), in bytes; `None` where that is not available.
pub(crate) fn anon_huge_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The system's THP policy (the selected value of
/// `/sys/kernel/mm/transparent_hugepage/enabled`), e.g. `"madvise"`.
pub(crate) fn thp_policy() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let start = s.find('[')? + 1;
    let end = start + s.get(start..)?.find(']')?;
    s.get(start..end).map(str::to_string)
}

/// The layout actually requested from [`System`] for `layout`, if it is a big one. A pure
/// function of the layout, so that `dealloc` recomputes what `alloc` used.
fn big(layout: Layout) -> Option<Layout> {
    if layout.size() < HUGE_PAGE {
        return None;
    }
    let size = layout.size().checked_next_multiple_of(HUGE_PAGE)?;
    Layout::from_size_align(size, layout.align().max(HUGE_PAGE)).ok()
}

/// Asks for huge pages over `[p, p + len)` (a whole number of aligned huge pages). Advice
/// only: failure (e.g. a kernel without THP) leaves ordinary pages, which is still correct.
fn advise(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: `p .. p + len` is a mapping this allocator just obtained from `System` and
    // owns; `madvise(MADV_HUGEPAGE)` changes no contents and no permissions, only how the
    // kernel backs the range on later faults.
    unsafe {
        libc::madvise(p.cast::<libc::c_void>(), len, libc::MADV_HUGEPAGE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

// SAFETY: every method forwards to `System` with either the caller's layout or `big(layout)`,
// a valid layout at least as large and as aligned; `dealloc` and `realloc` recompute the same
// `big(layout)` from the caller's layout, so `System` always frees with the layout it
// allocated with. Memory returned is at least `layout.size()` bytes aligned to `layout.align()`.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match big(layout) {
            // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
            None => unsafe { System.alloc(layout) },
            Some(b) => {
                // SAFETY: `b` has non-zero size (at least `HUGE_PAGE`).
                let p = unsafe { System.alloc(b) };
                if !p.is_null() && ADVISE.load(Ordering::Relaxed) {
                    advise(p, b.size());
                }
                p
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match big(layout) {
            // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
            None => unsafe { System.alloc_zeroed(layout) },
            Some(_) => {
                // Advise before the zeroing touches the pages (System would zero first).
                // SAFETY: the caller upholds `alloc`'s contract (same as `alloc_zeroed`'s).
                let p = unsafe { self.alloc(layout) };
                if !p.is_null() {
                    // SAFETY: `p` is valid for writes of `layout.size()` bytes.
                    unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
                }
                p
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with `layout`, hence from `System` with
        // `big(layout)` (or `layout` when that is `None`).
        unsafe { System.dealloc(ptr, big(layout).unwrap_or(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, does not
        // overflow `isize`, so this is a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (big(layout), big(new)) {
            // SAFETY: both small: forwarded unchanged, the caller upholds the contract.
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            // Same rounded block: nothing to move.
            (Some(a), Some(b)) if a == b => ptr,
            _ => {
                // SAFETY: `new` has non-zero size (the caller guarantees `new_size > 0`).
                let p = unsafe { self.alloc(new) };
                if !p.is_null() {
                    // SAFETY: both blocks are valid for `min(old, new)` bytes and distinct;
                    // `ptr` was allocated here with `layout`.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                p
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_allocations_are_huge_page_aligned_and_usable() {
        for advise in [true, false] {
            let was = set_advise(advise);
            let n = 3 * HUGE_PAGE / 8 + 5;
            let mut v: Vec<u64> = (0..n as u64).collect();
            assert_eq!(v.as_ptr() as usize % HUGE_PAGE, 0);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
            // Grow and shrink through realloc: contents survive.
            v.reserve(HUGE_PAGE);
            assert_eq!(v.as_ptr() as usize % HUGE_PAGE, 0);
            v.truncate(1000);
            v.shrink_to_fit();
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
            let z = vec![0u8; HUGE_PAGE + 1];
            assert_eq!(z.as_ptr() as usize % HUGE_PAGE, 0);
            assert!(z.iter().all(|&b| b == 0));
            set_advise(was);
        }
    }

    #[test]
    fn small_allocations_are_untouched() {
        let v: Vec<u8> = vec![7; 4096];
        assert!(v.iter().all(|&b| b == 7));
        let b = Box::new([1u64; 16]);
        assert_eq!(b.iter().sum::<u64>(), 16);
    }

    #[test]
    fn layouts_round_up_and_keep_alignment() {
        let l = Layout::from_size_align(HUGE_PAGE + 1, 64).unwrap();
        let b = big(l).unwrap();
        assert_eq!((b.size(), b.align()), (2 * HUGE_PAGE, HUGE_PAGE));
        assert!(big(Layout::from_size_align(HUGE_PAGE - 1, 8).unwrap()).is_none());
        assert!(["madvise", "none"].contains(&mode()));
    }
}
