//! The crate's only `unsafe`: a cache prefetch hint.
//!
//! [`prefetch`] asks the CPU to start loading the cache line holding a value, so that the
//! batch lookups of [`SessionTable`](crate::conntrack::SessionTable) can overlap the memory
//! latency of many keys instead of waiting for each in turn (measured by the `conntrack-hit`
//! benchmark), and an insert can load both of its home buckets at once. On targets other than
//! x86-64 it compiles to nothing.
#![allow(unsafe_code)]

/// Hints that the cache line holding `*r` is about to be read. Never faults, never changes
/// program-visible state; a no-op where unsupported.
#[inline(always)]
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p: *const T = r;
        // SAFETY: `_mm_prefetch` is unsafe only because it is a `#[target_feature(enable =
        // "sse")]` function; SSE is part of the x86-64 baseline, so the feature is always
        // present. A prefetch is a hint: it does not dereference the pointer in the
        // language's sense, cannot fault, and has no observable effect besides timing. The
        // pointer also comes from a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_is_harmless() {
        let v = alloc::vec![1u64, 2, 3];
        for x in &v {
            prefetch(x);
        }
        prefetch(&v);
        assert_eq!(v, [1, 2, 3]);
    }
}
