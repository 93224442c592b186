//! The operator secret and the explicit byte encodings every node must agree on (tabled in the
//! crate docs under "Stable encodings").
//!
//! Nothing here uses `core::hash::Hash`: each input is written as explicit bytes (a one-byte
//! domain tag, a one-byte length, the identity bytes) and hashed with SipHash-1-3 keyed by the
//! operator's 128-bit secret, through `nf-core`'s [`FlowHasher`].

use crate::backend::{BackendId, MAX_ID_LEN};
use nf_core::FlowHasher;

pub(crate) const TAG_OFFSET: u8 = 0x01;
pub(crate) const TAG_SKIP: u8 = 0x02;
pub(crate) const TAG_RENDEZVOUS: u8 = 0x03;
pub(crate) const TAG_ECMP: u8 = 0x04;

/// The operator's 128-bit secret that keys every load-balancing hash: backend permutations,
/// rendezvous salts and flow hashes.
///
/// Every node that must agree on flow → backend choices uses the same key; clients that do
/// not know it cannot aim their flows at one backend.
#[derive(Clone, Copy)]
pub struct LbKey {
    hasher: FlowHasher,
}

impl LbKey {
    /// Wraps 16 secret bytes (read as SipHash's reference implementation reads its key).
    pub const fn new(secret: [u8; 16]) -> Self {
        Self {
            hasher: FlowHasher::new(secret),
        }
    }

    /// The flow hasher under this key ([`FlowHasher::hash`] is the flow hash tables use).
    pub const fn flow_hasher(&self) -> FlowHasher {
        self.hasher
    }

    /// SipHash-1-3 of `tag`, the identity's length (one byte) and its bytes.
    pub(crate) fn identity(&self, tag: u8, id: &BackendId) -> u64 {
        let bytes = id.as_bytes();
        let mut buf = [0u8; 2 + MAX_ID_LEN];
        let len = bytes.len().min(MAX_ID_LEN);
        if let Some((head, rest)) = buf.split_first_chunk_mut::<2>() {
            // `len` ≤ MAX_ID_LEN (32), so it fits in a byte.
            *head = [tag, len as u8];
            if let (Some(dst), Some(src)) = (rest.get_mut(..len), bytes.get(..len)) {
                dst.copy_from_slice(src);
            }
        }
        self.hasher.hash_bytes(buf.get(..2 + len).unwrap_or(&[]))
    }
}

impl core::fmt::Debug for LbKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the secret.
        f.write_str("LbKey(..)")
    }
}

/// A bijective 64-bit finaliser (SplitMix64's output function), fully specified.
#[inline]
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fractional bits of [`neg_log2`].
pub(crate) const LOG_FRAC_BITS: u32 = 32;

/// `−log2(x / 2^64)` in fixed point with [`LOG_FRAC_BITS`] fractional bits, for `x ≥ 1`
/// (`x = 0` is read as 1), computed with integer operations only so that every platform gets
/// the same bits: the integer part from the leading zeros, the fraction of `log2` of the
/// normalised mantissa by repeated squaring (one bit per squaring, truncated).
#[inline]
pub(crate) const fn neg_log2(x: u64) -> u64 {
    let x = if x == 0 { 1 } else { x };
    let lz = x.leading_zeros();
    // Mantissa in Q1.63: value m / 2^63 in [1, 2).
    let mut m = x << lz;
    let mut frac = 0u64;
    let mut bit = 0;
    while bit < LOG_FRAC_BITS {
        let sq = (m as u128 * m as u128) >> 63;
        frac <<= 1;
        if sq >= 1 << 64 {
            frac |= 1;
            m = (sq >> 1) as u64;
        } else {
            m = sq as u64;
        }
        bit += 1;
    }
    // log2(x) = (63 − lz) + frac / 2^F, so −log2(x / 2^64) = (1 + lz) − frac / 2^F.
    ((1 + lz as u64) << LOG_FRAC_BITS) - frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_log2_known_values() {
        let one = 1u64 << LOG_FRAC_BITS;
        // x = 2^63 is u = 1/2: exactly 1.
        assert_eq!(neg_log2(1 << 63), one);
        assert_eq!(neg_log2(1 << 62), 2 * one);
        assert_eq!(neg_log2(1), 64 * one);
        assert_eq!(neg_log2(0), 64 * one);
        // u = 3/4: −log2(0.75) = 0.4150374992788438.
        let got = neg_log2(3 << 62) as f64 / one as f64;
        assert!((got - 0.415_037_499_278_843_8).abs() < 1e-9, "{got}");
        // Monotone: a larger x never has a larger −log2.
        let mut prev = u64::MAX;
        for i in 0..4096u64 {
            let y = neg_log2(i << 52);
            assert!(y <= prev);
            prev = y;
        }
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(alloc::format!("{:?}", LbKey::new([7; 16])), "LbKey(..)");
    }
}
