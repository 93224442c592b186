//! The crate's only `unsafe`: two cache prefetch hints, one SSE2 compare, and a four-lane
//! AVX2 SipHash-1-3 (with AVX-512VL rotations where the CPU has them) with its run-time CPU
//! check.
//!
//! [`prefetch`] asks the CPU to start loading the cache line holding a value, so that the
//! batch lookups of [`SessionTable`](crate::conntrack::SessionTable) can overlap the memory
//! latency of many keys instead of waiting for each in turn (measured by the `conntrack-hit`
//! benchmark), and an insert can load both of its home buckets at once. [`prefetch_l2`] does
//! the same into the second-level cache only, and is public: the sibling crates forbid
//! `unsafe`, and nf-policy's prefix-match batches use it (measured by the `lpm` benchmark).
//! On targets other than x86-64 both compile to nothing. [`sip13_x4`] hashes four keys of a
//! batch lookup at once: `benches/examples/conntrack_instructions.rs`, min of five
//! alternating runs, 1M sessions: 17.2 to 14.2 ns per lookup with the table in cache
//! (10k sessions), and through the conntrack stage 49.3 to 43.9 ns per packet over a stream
//! that stays in cache, 60.7 to 57.0 over a 1M-packet stream from memory. Without AVX2, and
//! on other targets, it runs the scalar SipHash four times.
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

/// [`prefetch`] of every cache line `*r` covers: a value larger than a line, or one not
/// aligned to a line, may need two or three (an IPv6 session record: 112 bytes, its keys
/// alone spanning two lines). A line-aligned value of at most a line is one prefetch.
#[inline(always)]
pub(crate) fn prefetch_all<T>(r: &T) {
    let size = core::mem::size_of::<T>();
    if core::mem::align_of::<T>() >= 64 && size <= 64 {
        prefetch(r);
        return;
    }
    let p: *const u8 = (r as *const T).cast();
    // Offsets from `p` of each line's start: the first line's is at or before `p`. The
    // pointers stay derived from `r` (wrapping arithmetic, never dereferenced).
    let lead = p as usize & 63;
    let mut off = 0;
    while off < lead + size {
        prefetch_ptr(p.wrapping_add(off).wrapping_sub(lead));
        off += 64;
    }
}

/// [`prefetch`] of the line holding the byte at `p`, which need not be valid: a prefetch
/// never faults.
#[inline(always)]
fn prefetch_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: as in `prefetch`: `_mm_prefetch` is unsafe only for its SSE target
        // feature, which x86-64 always has, and a prefetch cannot fault or be observed
        // whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = p;
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

/// [`crate::hash::sip13_x4_scalar`], four SipHash-1-3 computations at once: with AVX2 (checked
/// at run time, once per process) in the four 64-bit lanes of vector registers, about a
/// quarter of the instructions of four scalar runs; otherwise the scalar runs. Where the CPU
/// also has AVX-512F and AVX-512VL, the rotations are one instruction (`vprolq`) instead of
/// two shifts and an OR: `conntrack_instructions lookup`, 1M sessions, alternating binaries,
/// 22.1-23.4 to 21.3-21.7 ns per lookup. The session table's batch lookup hashes its keys
/// four at a time with it (`conntrack-stage`).
#[inline(always)]
pub(crate) fn sip13_x4<const W: usize>(start: &[u64; 4], m: &[[u64; 4]; W]) -> [u64; 4] {
    #[cfg(target_arch = "x86_64")]
    match vector_level() {
        VectorLevel::Avx512Vl => {
            // SAFETY: `sip13_x4_avx512vl` is unsafe to call only because it is compiled for
            // AVX2, AVX-512F and AVX-512VL, and `vector_level` has checked that this CPU has
            // them and that the operating system saves the vector and mask registers (CPUID
            // and XGETBV).
            return unsafe { sip13_x4_avx512vl(start, m) };
        }
        VectorLevel::Avx2 => {
            // SAFETY: `sip13_x4_avx2` is unsafe to call only because it is compiled for
            // AVX2, and `vector_level` has checked that this CPU has AVX2 and that the
            // operating system saves the vector registers (CPUID and XGETBV).
            return unsafe { sip13_x4_avx2(start, m) };
        }
        VectorLevel::Scalar => {}
    }
    crate::hash::sip13_x4_scalar(start, m)
}

/// What [`sip13_x4`] can run on this CPU.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VectorLevel {
    /// Neither: the scalar runs.
    Scalar,
    /// [`sip13_x4_avx2`].
    Avx2,
    /// [`sip13_x4_avx512vl`].
    Avx512Vl,
}

/// [`VectorLevel`] of this CPU: detected on the first call, then one relaxed load.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn vector_level() -> VectorLevel {
    use core::sync::atomic::{AtomicU8, Ordering};
    /// 0: not yet known; otherwise 1 + the level.
    static LEVEL: AtomicU8 = AtomicU8::new(0);
    match LEVEL.load(Ordering::Relaxed) {
        0 => {
            let level = detect_vector_level();
            LEVEL.store(1 + level as u8, Ordering::Relaxed);
            level
        }
        1 => VectorLevel::Scalar,
        2 => VectorLevel::Avx2,
        _ => VectorLevel::Avx512Vl,
    }
}

/// AVX2 usable: the CPU has it (CPUID leaf 7, EBX bit 5) and the operating system saves the
/// SSE and AVX register state (CPUID leaf 1: OSXSAVE and AVX; XCR0 bits 1 and 2). AVX-512F
/// and AVX-512VL usable on top: EBX bits 16 and 31, and XCR0 bits 5 to 7 (the mask
/// registers and the upper halves and upper sixteen of the ZMM registers).
#[cfg(target_arch = "x86_64")]
#[cold]
fn detect_vector_level() -> VectorLevel {
    use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    let max_leaf = __cpuid(0).eax;
    let l1 = __cpuid(1);
    let (osxsave, avx) = (l1.ecx >> 27 & 1 == 1, l1.ecx >> 28 & 1 == 1);
    if max_leaf < 7 || !osxsave || !avx {
        return VectorLevel::Scalar;
    }
    // SAFETY: `_xgetbv` is unsafe only because it is compiled for XSAVE; OSXSAVE (checked
    // above) means the operating system has enabled XSAVE and XGETBV for user code.
    let xcr0 = unsafe { _xgetbv(0) };
    let ebx = __cpuid_count(7, 0).ebx;
    if xcr0 & 0b110 != 0b110 || ebx >> 5 & 1 == 0 {
        VectorLevel::Scalar
    } else if xcr0 & 0b1110_0000 == 0b1110_0000 && ebx >> 16 & 1 == 1 && ebx >> 31 == 1 {
        VectorLevel::Avx512Vl
    } else {
        VectorLevel::Avx2
    }
}

/// The body of the vector [`sip13_x4`]s: the SipHash state words of the four lanes side by
/// side, one vector per word. Rotations by 32 and 16 are a dword and a byte shuffle; the
/// others are `$rotl` (two shifts and an OR, or AVX-512VL's `vprolq`).
#[cfg(target_arch = "x86_64")]
macro_rules! sip13_x4_vector {
    ($start:ident, $m:ident, $rotl:ident) => {{
        use core::arch::x86_64::{
            __m256i, _mm256_add_epi64, _mm256_set1_epi64x, _mm256_setr_epi8, _mm256_setr_epi64x,
            _mm256_shuffle_epi8, _mm256_shuffle_epi32, _mm256_storeu_si256, _mm256_xor_si256,
        };
        // Each 64-bit lane's bytes moved up by two (within each 128-bit half, as the byte
        // shuffle works).
        let rot16 = _mm256_setr_epi8(
            6, 7, 0, 1, 2, 3, 4, 5, 14, 15, 8, 9, 10, 11, 12, 13, 6, 7, 0, 1, 2, 3, 4, 5, 14, 15,
            8, 9, 10, 11, 12, 13,
        );
        macro_rules! rotl {
            ($x:expr, 32) => {
                _mm256_shuffle_epi32::<0b1011_0001>($x)
            };
            ($x:expr, 16) => {
                _mm256_shuffle_epi8($x, rot16)
            };
            ($x:expr, $b:literal) => {
                $rotl!($x, $b)
            };
        }
        // Broadcast from where the caller keeps the starting state for good (written long
        // ago: a state written just before the call made every wide load wait for those
        // stores).
        let [s0, s1, s2, s3] = $start.map(|w| _mm256_set1_epi64x(w.cast_signed()));
        let (mut v0, mut v1, mut v2, mut v3) = (s0, s1, s2, s3);
        macro_rules! round {
            () => {
                v0 = _mm256_add_epi64(v0, v1);
                v1 = rotl!(v1, 13);
                v1 = _mm256_xor_si256(v1, v0);
                v0 = rotl!(v0, 32);
                v2 = _mm256_add_epi64(v2, v3);
                v3 = rotl!(v3, 16);
                v3 = _mm256_xor_si256(v3, v2);
                v0 = _mm256_add_epi64(v0, v3);
                v3 = rotl!(v3, 21);
                v3 = _mm256_xor_si256(v3, v0);
                v2 = _mm256_add_epi64(v2, v1);
                v1 = rotl!(v1, 17);
                v1 = _mm256_xor_si256(v1, v2);
                v2 = rotl!(v2, 32);
            };
        }
        // Lane by lane rather than one 32-byte load: the caller has just written the words
        // one by one, and a wide load of narrow stores waits for them to reach the cache.
        for &[a, b, c, d] in $m {
            let x = _mm256_setr_epi64x(
                a.cast_signed(),
                b.cast_signed(),
                c.cast_signed(),
                d.cast_signed(),
            );
            v3 = _mm256_xor_si256(v3, x);
            round!();
            v0 = _mm256_xor_si256(v0, x);
        }
        v2 = _mm256_xor_si256(v2, _mm256_set1_epi64x(0xff));
        round!();
        round!();
        round!();
        let h = _mm256_xor_si256(_mm256_xor_si256(v0, v1), _mm256_xor_si256(v2, v3));
        let mut out = [0u64; 4];
        // SAFETY: the store writes the 32 bytes of `out`, a live `[u64; 4]`; unaligned stores
        // accept any address.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast::<__m256i>(), h) };
        out
    }};
}

/// AVX2's rotation of each 64-bit lane: two shifts and an OR.
#[cfg(target_arch = "x86_64")]
macro_rules! rotl_shifts {
    ($x:expr, $b:literal) => {
        core::arch::x86_64::_mm256_or_si256(
            core::arch::x86_64::_mm256_slli_epi64::<$b>($x),
            core::arch::x86_64::_mm256_srli_epi64::<{ 64 - $b }>($x),
        )
    };
}

/// AVX-512VL's rotation of each 64-bit lane: one `vprolq`.
#[cfg(target_arch = "x86_64")]
macro_rules! rotl_vprolq {
    ($x:expr, $b:literal) => {
        core::arch::x86_64::_mm256_rol_epi64::<$b>($x)
    };
}

/// [`sip13_x4`] on AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sip13_x4_avx2<const W: usize>(start: &[u64; 4], m: &[[u64; 4]; W]) -> [u64; 4] {
    sip13_x4_vector!(start, m, rotl_shifts)
}

/// [`sip13_x4`] on AVX2 with AVX-512VL's rotations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
fn sip13_x4_avx512vl<const W: usize>(start: &[u64; 4], m: &[[u64; 4]; W]) -> [u64; 4] {
    sip13_x4_vector!(start, m, rotl_vprolq)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The vector SipHash (on this machine, if it has AVX2) equals the scalar one, for the
        /// message lengths of IPv4 and IPv6 keys.
        #[test]
        fn sip13_x4_equals_the_scalar_runs(
            k in proptest::prelude::any::<[u64; 2]>(),
            m in proptest::prelude::any::<[[u64; 4]; 2]>(),
            m5 in proptest::prelude::any::<[[u64; 4]; 5]>(),
        ) {
            let start = crate::hash::Sip13::new(k[0], k[1]).words();
            proptest::prop_assert_eq!(sip13_x4(&start, &m), crate::hash::sip13_x4_scalar(&start, &m));
            // Five words: an IPv6 key's message.
            proptest::prop_assert_eq!(sip13_x4(&start, &m5), crate::hash::sip13_x4_scalar(&start, &m5));
            // Both vector bodies, where this CPU runs them (`sip13_x4` takes only the best).
            #[cfg(target_arch = "x86_64")]
            if vector_level() == VectorLevel::Avx512Vl {
                // SAFETY: `vector_level` checked that this CPU has AVX2 (and more).
                let avx2 = unsafe { (sip13_x4_avx2(&start, &m), sip13_x4_avx2(&start, &m5)) };
                proptest::prop_assert_eq!(avx2.0, crate::hash::sip13_x4_scalar(&start, &m));
                proptest::prop_assert_eq!(avx2.1, crate::hash::sip13_x4_scalar(&start, &m5));
            }
        }
    }

    /// `prefetch_all` of values of every size and alignment around a line, and at the ends
    /// of an allocation (its line walk may reach past the value, never into a fault).
    #[test]
    fn prefetch_all_of_any_value() {
        let bytes = [7u8; 300];
        for at in 0..bytes.len() {
            let tail = &bytes[at..];
            tail.first_chunk::<1>().map(prefetch_all);
            tail.first_chunk::<63>().map(prefetch_all);
            tail.first_chunk::<65>().map(prefetch_all);
            tail.first_chunk::<112>().map(prefetch_all);
            tail.first_chunk::<129>().map(prefetch_all);
        }
        #[repr(align(64))]
        struct Line([u8; 64]);
        let lines = [Line([1; 64]), Line([2; 64])];
        prefetch_all(&lines[0]);
        prefetch_all(&lines);
        prefetch_all(&());
        assert_eq!((bytes[299], lines[1].0[63]), (7, 2));
    }

    #[test]
    fn says_whether_the_vector_sip13_runs() {
        #[cfg(target_arch = "x86_64")]
        std::eprintln!(
            "sys: sip13_x4 runs {}",
            match vector_level() {
                VectorLevel::Avx512Vl =>
                    "AVX2 with AVX-512VL rotations here; both vector bodies tested against the scalar runs",
                VectorLevel::Avx2 => "AVX2 here, tested against the scalar runs",
                VectorLevel::Scalar => "the scalar runs here (no AVX2)",
            }
        );
    }

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
