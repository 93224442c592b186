//! Compact per-family session keys and the table's keyed hash.
//!
//! A [`FlowKey`] is 44 bytes so that one type serves both families; a session stores two keys,
//! so the table keeps them in a packed form instead: [`V4Key`] (12 bytes) and [`V6Key`]
//! (36 bytes). Zone and protocol are the same for both keys of a session and are stored once
//! in the session record.

use crate::flow::{Family, FlowKey, ZoneId};
use crate::hash::{Sip13, le_words};

/// A packed one-direction key (addresses and ports) of one address family.
///
/// Implemented by [`V4Key`] and [`V6Key`]; sealed.
pub trait SessionKey: Copy + Eq + Default + core::fmt::Debug + sealed::Sealed {
    /// The family this key type holds.
    const FAMILY: Family;
    /// Bytes of one encoded key in the export format (addresses and ports).
    const ENCODED_LEN: usize;

    /// The packed form of `key`, or `None` if `key` is of the other family.
    fn from_flow(key: &FlowKey) -> Option<Self>;
    /// The full flow key, given the zone and protocol stored with the session.
    fn to_flow(&self, zone: ZoneId, proto: u8) -> FlowKey;
    /// The same key seen from the other end.
    #[must_use]
    fn reversed(&self) -> Self;
}

/// The zone's part of a table hash: the table takes SipHash-1-3 of the addresses, ports and
/// protocol and XORs in this odd multiple of the zone. Keeping the zone out of the message
/// saves one SipHash round per lookup (13 bytes fit one word and the last block; 17 needed two
/// words). The result is as unpredictable without the key, within a zone and across zones:
/// two keys collide only where their SipHash values differ by a fixed XOR constant.
#[inline(always)]
fn zone_mix(zone: u32) -> u64 {
    u64::from(zone).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The last SipHash block of a table key (ports, protocol and the message length `len`),
/// finalisation, and the zone (see [`zone_mix`]).
#[inline(always)]
fn finish(s: Sip13, src_port: u16, dst_port: u16, proto: u8, len: u64, zone: u32) -> u64 {
    s.finish(last_block(src_port, dst_port, proto, len)) ^ zone_mix(zone)
}

/// The last SipHash block of a table key: ports, protocol and the message length `len`.
#[inline(always)]
fn last_block(src_port: u16, dst_port: u16, proto: u8, len: u64) -> u64 {
    u64::from(src_port) | u64::from(dst_port) << 16 | u64::from(proto) << 32 | len << 56
}

/// Writes one key's message words into lane `lane` of a group (see `Sealed::Group`).
#[inline(always)]
fn put_lane<const W: usize>(g: &mut [[u64; 4]; W], lane: usize, words: [u64; W]) {
    for (row, w) in g.iter_mut().zip(words) {
        if let Some(x) = row.get_mut(lane) {
            *x = w;
        }
    }
}

/// What the table needs of a key beyond [`SessionKey`]; sealed (unnameable outside the
/// crate), so only [`V4Key`] and [`V6Key`] implement it.
pub(super) mod sealed {
    use super::SipKey;

    /// The table's own operations on a packed key.
    pub trait Sealed: Sized {
        /// Zero-sized alignment marker that sets the session record's alignment.
        type Align: Copy + Default + core::fmt::Debug;
        /// Keyed hash of this key together with the session's zone and protocol.
        fn hash(&self, sip: &SipKey, zone: u32, proto: u8) -> u64;
        /// The SipHash messages of four keys side by side, as the batch lookup hashes them
        /// (`[[u64; 4]; W]`: word `i` of lane `j`'s message at `[i][j]`, the last block
        /// last).
        type Group: Copy + Default;
        /// Writes this key's SipHash message (of the addresses, ports and protocol) into
        /// lane `lane` of `g` and returns its zone's mix: the key's `hash` is lane `lane` of
        /// [`Self::hash_group`], XOR the mix.
        fn pack(&self, zone: u32, proto: u8, g: &mut Self::Group, lane: usize) -> u64;
        /// The four keys' table hashes (before their zone mixes), at once, through
        /// [`crate::sys::sip13_x4`]: AVX2 where the CPU has it.
        fn hash_group(sip: &SipKey, g: &Self::Group) -> [u64; 4];
        /// Equality without early exits (one compare of packed words), for the lookup path
        /// where the key is compared against both keys of a record.
        fn same(&self, other: &Self) -> bool;
        /// Writes `ENCODED_LEN` bytes (addresses, then ports big-endian).
        fn encode(&self, out: &mut [u8]);
        /// Reads what [`Self::encode`] wrote; `None` if `bytes` is too short.
        fn decode(bytes: &[u8]) -> Option<Self>;
    }

    /// Alignment marker: records start on a cache line, so an IPv4 record (64 bytes with a
    /// 16-byte value) is one line and an IPv6 record (112 bytes, padded to 128) exactly
    /// two. Unaligned, half the IPv6 records spanned three lines, and a batch lookup that
    /// prefetched only the first paid a miss on the keys' second line: `conntrack-hit`
    /// IPv6, 1M sessions, 74-76 ns per lookup before, 50-52 aligned and with every line
    /// prefetched (`sys::prefetch_all`), for 16 bytes more per IPv6 session.
    #[derive(Clone, Copy, Debug, Default)]
    #[repr(align(64))]
    pub struct Align64;
}

/// Packed IPv4 addresses and ports of one direction (12 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct V4Key {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// Packed IPv6 addresses and ports of one direction (36 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct V6Key {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl SessionKey for V4Key {
    const FAMILY: Family = Family::V4;
    const ENCODED_LEN: usize = 12;

    #[inline]
    fn from_flow(key: &FlowKey) -> Option<Self> {
        if key.family() != Family::V4 {
            return None;
        }
        let s = key.src_raw();
        let d = key.dst_raw();
        Some(Self {
            src: [s[0], s[1], s[2], s[3]],
            dst: [d[0], d[1], d[2], d[3]],
            src_port: key.src_port,
            dst_port: key.dst_port,
        })
    }

    #[inline]
    fn to_flow(&self, zone: ZoneId, proto: u8) -> FlowKey {
        FlowKey::v4(
            zone,
            self.src,
            self.dst,
            proto,
            self.src_port,
            self.dst_port,
        )
    }

    #[inline]
    fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

impl sealed::Sealed for V4Key {
    type Align = sealed::Align64;

    #[inline]
    fn hash(&self, sip: &SipKey, zone: u32, proto: u8) -> u64 {
        let w0 =
            u64::from(u32::from_le_bytes(self.src)) | u64::from(u32::from_le_bytes(self.dst)) << 32;
        let mut s = sip.start();
        s.word(w0);
        finish(s, self.src_port, self.dst_port, proto, 13, zone)
    }

    /// One whole word (the addresses) and the last block.
    type Group = [[u64; 4]; 2];

    #[inline(always)]
    fn pack(&self, zone: u32, proto: u8, g: &mut Self::Group, lane: usize) -> u64 {
        let w =
            u64::from(u32::from_le_bytes(self.src)) | u64::from(u32::from_le_bytes(self.dst)) << 32;
        let last = last_block(self.src_port, self.dst_port, proto, 13);
        put_lane(g, lane, [w, last]);
        zone_mix(zone)
    }

    #[inline(always)]
    fn hash_group(sip: &SipKey, g: &Self::Group) -> [u64; 4] {
        crate::sys::sip13_x4(&sip.start, g)
    }

    #[inline(always)]
    fn same(&self, o: &Self) -> bool {
        let a =
            u64::from(u32::from_ne_bytes(self.src)) | u64::from(u32::from_ne_bytes(self.dst)) << 32;
        let b = u64::from(u32::from_ne_bytes(o.src)) | u64::from(u32::from_ne_bytes(o.dst)) << 32;
        let p = u32::from(self.src_port) | u32::from(self.dst_port) << 16;
        let q = u32::from(o.src_port) | u32::from(o.dst_port) << 16;
        (a ^ b) | u64::from(p ^ q) == 0
    }

    fn encode(&self, out: &mut [u8]) {
        let mut w = Put { out, at: 0 };
        w.put(&self.src);
        w.put(&self.dst);
        w.put(&self.src_port.to_be_bytes());
        w.put(&self.dst_port.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (src, b) = b.split_first_chunk::<4>()?;
        let (dst, b) = b.split_first_chunk::<4>()?;
        let (sp, b) = b.split_first_chunk::<2>()?;
        let (dp, _) = b.split_first_chunk::<2>()?;
        Some(Self {
            src: *src,
            dst: *dst,
            src_port: u16::from_be_bytes(*sp),
            dst_port: u16::from_be_bytes(*dp),
        })
    }
}

impl SessionKey for V6Key {
    const FAMILY: Family = Family::V6;
    const ENCODED_LEN: usize = 36;

    #[inline]
    fn from_flow(key: &FlowKey) -> Option<Self> {
        if key.family() != Family::V6 {
            return None;
        }
        Some(Self {
            src: *key.src_raw(),
            dst: *key.dst_raw(),
            src_port: key.src_port,
            dst_port: key.dst_port,
        })
    }

    #[inline]
    fn to_flow(&self, zone: ZoneId, proto: u8) -> FlowKey {
        FlowKey::v6(
            zone,
            self.src,
            self.dst,
            proto,
            self.src_port,
            self.dst_port,
        )
    }

    #[inline]
    fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

impl sealed::Sealed for V6Key {
    type Align = sealed::Align64;

    #[inline]
    fn hash(&self, sip: &SipKey, zone: u32, proto: u8) -> u64 {
        let mut s = sip.start();
        let [s0, s1] = le_words(self.src);
        let [d0, d1] = le_words(self.dst);
        s.word(s0);
        s.word(s1);
        s.word(d0);
        s.word(d1);
        finish(s, self.src_port, self.dst_port, proto, 37, zone)
    }

    /// Four whole words (the addresses) and the last block.
    type Group = [[u64; 4]; 5];

    #[inline(always)]
    fn pack(&self, zone: u32, proto: u8, g: &mut Self::Group, lane: usize) -> u64 {
        let [s0, s1] = le_words(self.src);
        let [d0, d1] = le_words(self.dst);
        let last = last_block(self.src_port, self.dst_port, proto, 37);
        put_lane(g, lane, [s0, s1, d0, d1, last]);
        zone_mix(zone)
    }

    #[inline(always)]
    fn hash_group(sip: &SipKey, g: &Self::Group) -> [u64; 4] {
        crate::sys::sip13_x4(&sip.start, g)
    }

    #[inline(always)]
    fn same(&self, o: &Self) -> bool {
        let [a0, a1] = le_words(self.src);
        let [a2, a3] = le_words(self.dst);
        let [b0, b1] = le_words(o.src);
        let [b2, b3] = le_words(o.dst);
        let p = u32::from(self.src_port) | u32::from(self.dst_port) << 16;
        let q = u32::from(o.src_port) | u32::from(o.dst_port) << 16;
        (a0 ^ b0) | (a1 ^ b1) | (a2 ^ b2) | (a3 ^ b3) | u64::from(p ^ q) == 0
    }

    fn encode(&self, out: &mut [u8]) {
        let mut w = Put { out, at: 0 };
        w.put(&self.src);
        w.put(&self.dst);
        w.put(&self.src_port.to_be_bytes());
        w.put(&self.dst_port.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (src, b) = b.split_first_chunk::<16>()?;
        let (dst, b) = b.split_first_chunk::<16>()?;
        let (sp, b) = b.split_first_chunk::<2>()?;
        let (dp, _) = b.split_first_chunk::<2>()?;
        Some(Self {
            src: *src,
            dst: *dst,
            src_port: u16::from_be_bytes(*sp),
            dst_port: u16::from_be_bytes(*dp),
        })
    }
}

struct Put<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Put<'_> {
    fn put(&mut self, b: &[u8]) {
        if let Some(d) = self.out.get_mut(self.at..self.at + b.len()) {
            d.copy_from_slice(b);
        }
        self.at += b.len();
    }
}

/// The table's SipHash-1-3 key. The table hashes the packed key directly as a fixed-length
/// message (IPv4: source, destination and ports little-endian, then the protocol byte, 13
/// bytes; IPv6 the same with 16-byte addresses, 37 bytes), which is standard SipHash-1-3 of
/// those bytes, and XORs in an odd multiple of the zone (see `zone_mix`): cheaper than
/// hashing [`FlowKey::encode`] and as unpredictable to anyone who does not know the secret.
#[derive(Clone, Copy)]
pub struct SipKey {
    /// The SipHash-1-3 starting state of the secret, kept whole for the vector hash
    /// ([`crate::sys::sip13_x4`]), which loads it from here.
    start: [u64; 4],
}

impl core::fmt::Debug for SipKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SipKey(<secret>)")
    }
}

impl SipKey {
    /// A key from a 16-byte secret.
    pub(crate) fn new(secret: [u8; 16]) -> Self {
        let [k0, k1] = le_words(secret);
        Self {
            start: Sip13::new(k0, k1).words(),
        }
    }

    #[inline(always)]
    fn start(&self) -> Sip13 {
        Sip13::from_words(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::sealed::Sealed;
    use super::*;
    use crate::flow::proto;
    use proptest::prelude::*;

    /// Keys drawn from a small alphabet, so that equal and nearly equal pairs are common.
    fn v4(b: [u8; 6]) -> V4Key {
        V4Key {
            src: [b[0], 0, 0, b[1]],
            dst: [b[2], 0, 0, 1],
            src_port: u16::from(b[3]) << 8 | u16::from(b[4]),
            dst_port: u16::from(b[5]),
        }
    }

    fn v6(b: [u8; 6]) -> V6Key {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[0] = b[0];
        src[15] = b[1];
        dst[7] = b[2];
        V6Key {
            src,
            dst,
            src_port: u16::from(b[3]) << 8 | u16::from(b[4]),
            dst_port: u16::from(b[5]),
        }
    }

    proptest! {
        #[test]
        fn same_is_equality(a in any::<[u8; 6]>(), m in any::<[bool; 6]>()) {
            // `b` equals `a` except where the mask says to change a byte.
            let mut b = a;
            for (x, &flip) in b.iter_mut().zip(&m) {
                if flip {
                    *x = x.wrapping_add(1);
                }
            }
            prop_assert_eq!(v4(a).same(&v4(b)), v4(a) == v4(b));
            prop_assert_eq!(v6(a).same(&v6(b)), v6(a) == v6(b));
            prop_assert!(v4(a).same(&v4(a)) && v6(a).same(&v6(a)));
        }

        /// Four keys hashed at once from their messages (the batch lookup's vector
        /// SipHash) give the single-key hashes, whatever the keys, zones, protocols and
        /// secret, for both families.
        #[test]
        fn grouped_hashes_equal_single_hashes(
            secret in any::<[u8; 16]>(),
            raw in any::<[([u8; 36], u32, u8); 4]>(),
        ) {
            let sip = SipKey::new(secret);
            fn check<K: SessionKey>(sip: &SipKey, keys: [(K, u32, u8); 4]) -> Result<(), TestCaseError> {
                let mut g = K::Group::default();
                let mut mix = [0u64; 4];
                for (j, (k, zone, proto)) in keys.iter().enumerate() {
                    mix[j] = k.pack(*zone, *proto, &mut g, j);
                }
                let got = K::hash_group(sip, &g);
                for (j, (k, zone, proto)) in keys.iter().enumerate() {
                    prop_assert_eq!(got[j] ^ mix[j], k.hash(sip, *zone, *proto));
                }
                Ok(())
            }
            check(&sip, raw.map(|(b, z, p)| (V4Key::decode(&b[..12]).unwrap(), z, p)))?;
            check(&sip, raw.map(|(b, z, p)| (V6Key::decode(&b).unwrap(), z, p)))?;
        }
    }

    #[test]
    fn packed_keys_round_trip() {
        let k = FlowKey::v4(
            ZoneId(3),
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            proto::TCP,
            1000,
            80,
        );
        let p = V4Key::from_flow(&k).unwrap();
        assert_eq!(p.to_flow(ZoneId(3), proto::TCP), k);
        assert_eq!(p.reversed().to_flow(ZoneId(3), proto::TCP), k.reversed());
        assert!(V6Key::from_flow(&k).is_none());
        let mut b = [0u8; 12];
        p.encode(&mut b);
        assert_eq!(V4Key::decode(&b), Some(p));
        assert_eq!(V4Key::decode(&b[..11]), None);

        let k6 = FlowKey::v6(ZoneId(9), [1; 16], [2; 16], proto::UDP, 5, 6);
        let p6 = V6Key::from_flow(&k6).unwrap();
        assert_eq!(p6.to_flow(ZoneId(9), proto::UDP), k6);
        let mut b6 = [0u8; 36];
        p6.encode(&mut b6);
        assert_eq!(V6Key::decode(&b6), Some(p6));
        assert_eq!(core::mem::size_of::<V4Key>(), 12);
        assert_eq!(core::mem::size_of::<V6Key>(), 36);
    }

    #[test]
    fn hash_depends_on_every_field_and_the_secret() {
        let s = SipKey::new([1; 16]);
        let [k0, k1] = le_words([1; 16]);
        let p = V4Key {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            src_port: 9,
            dst_port: 10,
        };
        let h = p.hash(&s, 1, 6);
        assert_ne!(h, p.hash(&s, 2, 6));
        assert_ne!(h, p.hash(&s, 1, 17));
        assert_ne!(h, p.reversed().hash(&s, 1, 6));
        assert_ne!(h, p.hash(&SipKey::new([2; 16]), 1, 6));
        // Standard SipHash-1-3 of the documented 13-byte message, XOR the zone's multiple.
        let mut msg = alloc::vec::Vec::new();
        msg.extend_from_slice(&p.src);
        msg.extend_from_slice(&p.dst);
        msg.extend_from_slice(&9u16.to_le_bytes());
        msg.extend_from_slice(&10u16.to_le_bytes());
        msg.push(6);
        let mut r = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
        core::hash::Hasher::write(&mut r, &msg);
        assert_eq!(h, core::hash::Hasher::finish(&r) ^ 0x9e37_79b9_7f4a_7c15);
        // Zone 0 mixes in nothing, and still differs from zone 1.
        assert_ne!(h, p.hash(&s, 0, 6));
        let q = V6Key {
            src: [7; 16],
            dst: [8; 16],
            src_port: 1,
            dst_port: 2,
        };
        let mut msg = alloc::vec::Vec::new();
        msg.extend_from_slice(&q.src);
        msg.extend_from_slice(&q.dst);
        msg.extend_from_slice(&1u16.to_le_bytes());
        msg.extend_from_slice(&2u16.to_le_bytes());
        msg.push(17);
        let mut r = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
        core::hash::Hasher::write(&mut r, &msg);
        assert_eq!(
            q.hash(&s, 5, 17),
            core::hash::Hasher::finish(&r) ^ 5u64.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        );
    }
}
