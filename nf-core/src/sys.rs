//! The crate's only `unsafe`: two cache prefetch hints and one SSE2 compare.
//!
//! [`prefetch`] asks the CPU to start loading the cache line holding a value, so that the
//! batch lookups of [`SessionTable`](crate::conntrack::SessionTable) can overlap the memory
//! latency of many keys instead of waiting for each in turn (measured by the `conntrack-hit`
//! benchmark), and an insert can load both of its home buckets at once. [`prefetch_l2`] does
//! the same into the second-level cache only, and is public: the sibling crates forbid
//! `unsafe`, and nf-policy's prefix-match batches use it (measured by the `lpm` benchmark).
//! On targets other than x86-64 both compile to nothing.
#![cfg_attr(
    target_arch = "x86_64",
    expect(
        unsafe_code,
        reason = "nf-core's one unsafe module: x86-64 intrinsics behind safe functions"
    )
)]

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

/// Hints that the cache line holding `*r` is about to be read, and has it loaded into the
/// second-level cache (x86 `PREFETCHT1`).
///
/// For batches that start many independent misses at once over a table far larger than the
/// caches (the root of a DIR-24-8 prefix table): a first-level prefetch holds one of the first
/// level's few miss buffers until its line arrives, so a burst of them stalls once those are
/// taken, while into the second level more of the batch's misses are in flight together (on
/// the `lpm` benchmark's 64 MiB root this one change took a 64-address batch from about 1.75
/// to 1.4 times the machine's one-load-per-address floor). Never faults, never changes
/// program-visible state; a no-op where unsupported.
#[inline(always)]
pub fn prefetch_l2<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        let p: *const T = r;
        // SAFETY: `_mm_prefetch` is unsafe only because it is a `#[target_feature(enable =
        // "sse")]` function; SSE is part of the x86-64 baseline, so the feature is always
        // present. A prefetch is a hint: it does not dereference the pointer in the
        // language's sense, cannot fault, and has no observable effect besides timing. The
        // pointer also comes from a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = r;
    }
}

/// Bit `j` set where `line[j] & mask == value`: the 16 words of a cache line compared at
/// once. On x86-64 four SSE2 compares narrowed to one byte mask (about 15 instructions; the
/// compiler's own loop took about 50, and the session table runs this once per lookup);
/// elsewhere the plain loop.
#[inline(always)]
pub(crate) fn masked_eq_lanes(line: &[u32; 16], value: u32, mask: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_and_si128, _mm_cmpeq_epi32, _mm_loadu_si128, _mm_movemask_epi8,
            _mm_packs_epi16, _mm_packs_epi32, _mm_set1_epi32,
        };
        let p = line.as_ptr().cast::<__m128i>();
        // SAFETY: these intrinsics are `unsafe` only because they are `#[target_feature(enable
        // = "sse2")]` functions; SSE2 is part of the x86-64 baseline, so the feature is always
        // present. The four unaligned loads read `p`, `p + 1`, `p + 2`, `p + 3` (16 bytes
        // each): exactly the 64 bytes of `*line`, which is a live, initialised `[u32; 16]`.
        unsafe {
            let v = _mm_set1_epi32(value.cast_signed());
            let m = _mm_set1_epi32(mask.cast_signed());
            let eq = |q: *const __m128i| _mm_cmpeq_epi32(_mm_and_si128(_mm_loadu_si128(q), m), v);
            let lo = _mm_packs_epi32(eq(p), eq(p.add(1)));
            let hi = _mm_packs_epi32(eq(p.add(2)), eq(p.add(3)));
            _mm_movemask_epi8(_mm_packs_epi16(lo, hi)).cast_unsigned()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut m = 0u32;
        for (j, &w) in line.iter().enumerate() {
            m |= u32::from(w & mask == value) << j;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn masked_eq_lanes_equals_the_plain_loop(
            // Small words make matches common; arbitrary ones cover the sign bit, which the
            // signed packing must not disturb.
            line in proptest::prop_oneof![
                proptest::array::uniform16(0u32..8),
                proptest::array::uniform16(proptest::prelude::any::<u32>()),
            ],
            value in proptest::prop_oneof![0u32..8, proptest::prelude::any::<u32>()],
            mask in proptest::prop_oneof![
                proptest::strategy::Just(u32::MAX),
                0u32..8,
                proptest::prelude::any::<u32>(),
            ],
        ) {
            let mut want = 0u32;
            for (j, &w) in line.iter().enumerate() {
                want |= u32::from(w & mask == value) << j;
            }
            proptest::prop_assert_eq!(masked_eq_lanes(&line, value, mask), want);
        }
    }

    #[test]
    fn prefetch_is_harmless() {
        let v = alloc::vec![1u64, 2, 3];
        for x in &v {
            prefetch(x);
        }
        prefetch(&v);
        for x in &v {
            prefetch_l2(x);
        }
        prefetch_l2(&v);
        assert_eq!(v, [1, 2, 3]);
    }
}
