//! Keyed, stable flow hashing ([`FlowHasher`], [`owner_of`]: public at the crate root).

#[cfg(test)]
use crate::flow::MAX_ENCODED_LEN;
use crate::flow::{Family, FlowKey};

/// Keyed SipHash-1-3 flow hasher over [`FlowKey::encode`], and its symmetric form. Cheap
/// to copy; holds only the 128-bit key.
///
/// Every node and core that must agree on a flow's owner computes the same value: the hash
/// consumes only the explicit canonical encoding (never `core::hash::Hash`), uses a fixed
/// algorithm (SipHash-1-3, the variant Rust's std uses for `HashMap`), and is keyed with an
/// operator secret so an attacker who does not know the key cannot aim flows at one bucket,
/// core or node. Golden vectors in the tests pin the output for all time.
///
/// ```
/// use nf_core::{FlowHasher, FlowKey, ZoneId, flow::proto};
/// let h = FlowHasher::new([7; 16]);
/// let k = FlowKey::v4(ZoneId(1), [10, 0, 0, 1], [10, 0, 0, 2], proto::TCP, 40000, 443);
/// assert_eq!(h.symmetric(&k), h.symmetric(&k.reversed()));
/// assert_ne!(h.hash(&k), h.hash(&k.reversed()));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FlowHasher {
    k0: u64,
    k1: u64,
}

impl core::fmt::Debug for FlowHasher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FlowHasher { key: <secret> }")
    }
}

impl FlowHasher {
    /// A hasher keyed with a 16-byte secret (read as two little-endian `u64`s, as SipHash's
    /// reference implementation does).
    pub const fn new(key: [u8; 16]) -> Self {
        let [k0, k1] = le_words(key);
        Self { k0, k1 }
    }

    /// SipHash-1-3 of arbitrary bytes under this key (for other explicitly encoded inputs
    /// that nodes must agree on).
    #[inline]
    pub fn hash_bytes(&self, bytes: &[u8]) -> u64 {
        self.sip13(bytes)
    }

    /// SipHash-1-3 of `bytes`; inlined, so that a length known at the call site unrolls it.
    #[inline(always)]
    fn sip13(&self, bytes: &[u8]) -> u64 {
        let (words, rest) = bytes.as_chunks::<8>();
        let mut s = Sip13::new(self.k0, self.k1);
        for w in words {
            s.word(u64::from_le_bytes(*w));
        }
        let mut last = (bytes.len() as u64) << 56;
        for (i, &b) in rest.iter().enumerate() {
            last |= u64::from(b) << (8 * i);
        }
        s.finish(last)
    }

    /// Hash of one direction of a flow: [`Self::hash_bytes`] of [`FlowKey::encode`].
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        // The encoding is assembled as a fixed-size value rather than written into a buffer
        // and read back, so the hash runs on registers, unrolled for each family.
        let [f, p] = [key.family() as u8, key.proto];
        let [z0, z1, z2, z3] = key.zone.0.to_be_bytes();
        let [
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            s6,
            s7,
            s8,
            s9,
            s10,
            s11,
            s12,
            s13,
            s14,
            s15,
        ] = *key.src_raw();
        let [
            d0,
            d1,
            d2,
            d3,
            d4,
            d5,
            d6,
            d7,
            d8,
            d9,
            d10,
            d11,
            d12,
            d13,
            d14,
            d15,
        ] = *key.dst_raw();
        let [a0, a1] = key.src_port.to_be_bytes();
        let [b0, b1] = key.dst_port.to_be_bytes();
        match key.family() {
            Family::V4 => self.sip13(&[
                f, p, z0, z1, z2, z3, s0, s1, s2, s3, d0, d1, d2, d3, a0, a1, b0, b1,
            ]),
            Family::V6 => self.sip13(&[
                f, p, z0, z1, z2, z3, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13,
                s14, s15, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14, d15, a0,
                a1, b0, b1,
            ]),
        }
    }

    /// Hash equal for both directions of a flow: the hash of [`FlowKey::canonical`].
    #[inline]
    pub fn symmetric(&self, key: &FlowKey) -> u64 {
        self.hash(&key.canonical())
    }
}

/// SipHash-1-3 state fed whole 8-byte words, without the buffering a streaming
/// [`core::hash::Hasher`] needs: the core of [`FlowHasher`] and of the session table's
/// packed-key hash. One compression round per word, three finalisation rounds; bit-identical
/// to the reference (tests compare it with the `siphasher` crate).
#[derive(Clone, Copy)]
pub(crate) struct Sip13 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl Sip13 {
    /// The initial state for the key `(k0, k1)`.
    #[inline(always)]
    pub(crate) const fn new(k0: u64, k1: u64) -> Self {
        Self {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    /// Absorbs the next 8 message bytes, read little-endian.
    #[inline(always)]
    pub(crate) fn word(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.v0 ^= m;
    }

    /// Absorbs the last block and finalises. `last` holds the message's remaining 0 to 7
    /// bytes (little-endian) and, in its top byte, the message length modulo 256.
    #[inline(always)]
    pub(crate) fn finish(mut self, last: u64) -> u64 {
        self.word(last);
        self.v2 ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

impl Sip13 {
    /// The state with words `v0..v3`.
    #[inline(always)]
    pub(crate) const fn from_words([v0, v1, v2, v3]: [u64; 4]) -> Self {
        Self { v0, v1, v2, v3 }
    }

    /// The four state words (`v0..v3`): a starting state kept where a vectorised SipHash
    /// loads it ([`crate::sys::sip13_x4`]).
    #[inline(always)]
    pub(crate) const fn words(&self) -> [u64; 4] {
        [self.v0, self.v1, self.v2, self.v3]
    }
}

/// Four SipHash-1-3 computations from one starting state (its words, [`Sip13::words`]), each
/// of a message of `W - 1` whole words and a last block (`m[0][j]` .. `m[W - 2][j]`, then
/// `m[W - 1][j]` as [`Sip13::finish`] takes it): lane `j` is
/// `{ let mut s = start; s.word(m[0][j]); ...; s.finish(m[W - 1][j]) }`. On x86-64 CPUs with
/// AVX2 the four run side by side in vector registers ([`crate::sys::sip13_x4`]); this is the
/// plain version, and the reference the vector one is tested against.
#[inline(always)]
pub(crate) fn sip13_x4_scalar<const W: usize>(start: &[u64; 4], m: &[[u64; 4]; W]) -> [u64; 4] {
    let start = Sip13::from_words(*start);
    let one = |j: usize| {
        let lane = |w: &[u64; 4]| w.get(j).copied().unwrap_or(0);
        let mut s = start;
        match m.split_last() {
            Some((last, words)) => {
                for w in words {
                    s.word(lane(w));
                }
                s.finish(lane(last))
            }
            None => s.finish(0),
        }
    };
    [one(0), one(1), one(2), one(3)]
}

/// 16 bytes as two little-endian `u64` words: how SipHash reads a 128-bit key, and how the
/// session table reads packed addresses.
#[inline(always)]
pub(crate) const fn le_words(a: [u8; 16]) -> [u64; 2] {
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
    ] = a;
    [
        u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
    ]
}

/// Owner selection: maps a hash to one of `n` owners (cores, nodes) without modulo bias
/// worth measuring and without a division (Lemire's multiply-shift). `n == 0` gives 0.
#[inline]
pub const fn owner_of(hash: u64, n: u32) -> u32 {
    ((hash as u128 * n as u128) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{ZoneId, proto};
    use proptest::prelude::*;

    const KEY: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    #[test]
    fn golden_flow_hashes() {
        let h = FlowHasher::new(KEY);
        let v4 = FlowKey::v4(
            ZoneId(7),
            [198, 51, 100, 2],
            [192, 0, 2, 1],
            proto::TCP,
            49152,
            443,
        );
        let v6 = FlowKey::v6(
            ZoneId(0xabcdef),
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            proto::UDP,
            5353,
            53,
        );
        let icmp = FlowKey::v4(
            ZoneId(0),
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            proto::ICMP,
            0x1234,
            0x1234,
        );
        let got = [
            h.hash(&v4),
            h.symmetric(&v4),
            h.hash(&v6),
            h.symmetric(&v6),
            h.hash(&icmp),
            h.symmetric(&icmp),
        ];
        assert_eq!(
            got, GOLDEN,
            "flow hashes changed: this breaks agreement between nodes"
        );
    }

    /// Pinned on first implementation and cross-checked against an independent Python
    /// SipHash-1-3 over the documented encoding; never change these.
    const GOLDEN: [u64; 6] = [
        14274842813227803481,
        10099170347691959110,
        7666609542181814470,
        7666609542181814470,
        8981284413508008397,
        8981284413508008397,
    ];

    fn arb_key() -> impl Strategy<Value = FlowKey> {
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            any::<bool>(),
        )
            .prop_map(|(z, s, d, p, sp, dp, v6)| {
                if v6 {
                    FlowKey::v6(ZoneId(z), s, d, p, sp, dp)
                } else {
                    FlowKey::v4(
                        ZoneId(z),
                        [s[0], s[1], s[2], s[3]],
                        [d[0], d[1], d[2], d[3]],
                        p,
                        sp,
                        dp,
                    )
                }
            })
    }

    fn reference(h: &FlowHasher, bytes: &[u8]) -> u64 {
        use core::hash::Hasher as _;
        let mut r = siphasher::sip::SipHasher13::new_with_keys(h.k0, h.k1);
        r.write(bytes);
        r.finish()
    }

    #[test]
    fn hash_bytes_matches_reference_at_every_length() {
        let h = FlowHasher::new(KEY);
        let msg: alloc::vec::Vec<u8> = (0u8..=255).collect();
        for n in 0..=msg.len() {
            assert_eq!(
                h.hash_bytes(&msg[..n]),
                reference(&h, &msg[..n]),
                "length {n}"
            );
        }
    }

    proptest! {
        #[test]
        fn hash_bytes_matches_siphasher(
            key in any::<[u8; 16]>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let h = FlowHasher::new(key);
            prop_assert_eq!(h.hash_bytes(&bytes), reference(&h, &bytes));
        }

        #[test]
        fn flow_hash_is_siphash_of_the_encoding(k in arb_key(), key in any::<[u8; 16]>()) {
            let h = FlowHasher::new(key);
            let mut buf = [0u8; MAX_ENCODED_LEN];
            let n = k.encode(&mut buf);
            prop_assert_eq!(h.hash(&k), reference(&h, &buf[..n]));
        }

        #[test]
        fn symmetric_hash_equal_for_both_directions(k in arb_key(), key in any::<[u8; 16]>()) {
            let h = FlowHasher::new(key);
            prop_assert_eq!(h.symmetric(&k), h.symmetric(&k.reversed()));
        }

        #[test]
        fn owner_in_range(hash in any::<u64>(), n in 1u32..10_000) {
            prop_assert!(owner_of(hash, n) < n);
        }
    }
}
