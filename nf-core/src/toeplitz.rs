//! Toeplitz RSS hash, so software steering agrees with a NIC's receive-side scaling.
//!
//! The hash input is the source address, destination address and, for the L4 variant, the
//! source and destination ports, all in network byte order (the Microsoft RSS definition
//! that NICs implement). [`Toeplitz::new`] precomputes one 256-entry table per input byte
//! position, so hashing costs one table load and XOR per byte.
//!
//! With [`SYMMETRIC_KEY`] (the 16-bit pattern 0x6d5a repeated, after Woo and Park) the hash
//! is the same for both directions of a flow, which lets a NIC deliver both directions to the
//! same queue.
//!
//! ```
//! use nf_core::toeplitz::{Toeplitz, MICROSOFT_KEY};
//! let t = Toeplitz::new(&MICROSOFT_KEY);
//! // First row of the Microsoft verification table.
//! let h = t.hash_v4([66, 9, 149, 187], [161, 142, 100, 80], Some((2794, 1766)));
//! assert_eq!(h, 0x51ccc178);
//! ```

use crate::flow::{Family, FlowKey};
use alloc::boxed::Box;
use alloc::vec;

/// Length of an RSS key.
pub const KEY_LEN: usize = 40;

/// Longest input: two IPv6 addresses and two ports.
pub const MAX_INPUT: usize = 36;

/// The default RSS key from Microsoft's RSS verification suite (also many NICs' default).
pub const MICROSOFT_KEY: [u8; KEY_LEN] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// A key that makes the Toeplitz hash symmetric in (source, destination).
pub const SYMMETRIC_KEY: [u8; KEY_LEN] = [
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
];

/// A Toeplitz hasher with per-byte lookup tables for one key (36 KiB, built once).
#[derive(Clone)]
pub struct Toeplitz {
    table: Box<[[u32; 256]]>,
}

impl core::fmt::Debug for Toeplitz {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Toeplitz { .. }")
    }
}

impl Toeplitz {
    /// Precomputes the tables for `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let mut table = vec![[0u32; 256]; MAX_INPUT].into_boxed_slice();
        for (pos, t) in table.iter_mut().enumerate() {
            // For input bit j (0 = MSB of byte 0), the contribution is the 32-bit window of
            // the key starting at bit j.
            let window = |bit: usize| -> u32 {
                let mut w = 0u32;
                for b in 0..32 {
                    let kb = bit + b;
                    let byte = key.get(kb / 8).copied().unwrap_or(0);
                    w = (w << 1) | u32::from((byte >> (7 - kb % 8)) & 1);
                }
                w
            };
            let contrib: [u32; 8] = core::array::from_fn(|i| window(pos * 8 + i));
            for (v, e) in t.iter_mut().enumerate() {
                let mut h = 0u32;
                for (i, c) in contrib.iter().enumerate() {
                    if v & (0x80 >> i) != 0 {
                        h ^= c;
                    }
                }
                *e = h;
            }
        }
        Self { table }
    }

    /// The hash of raw input bytes (at most [`MAX_INPUT`]; extra bytes are ignored).
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        let mut h = 0u32;
        for (t, &b) in self.table.iter().zip(input) {
            h ^= t.get(usize::from(b)).copied().unwrap_or(0);
        }
        h
    }

    /// IPv4 hash: addresses, plus ports for the L4 variant.
    #[inline]
    pub fn hash_v4(&self, src: [u8; 4], dst: [u8; 4], ports: Option<(u16, u16)>) -> u32 {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&src);
        b[4..8].copy_from_slice(&dst);
        match ports {
            Some((s, d)) => {
                b[8..10].copy_from_slice(&s.to_be_bytes());
                b[10..12].copy_from_slice(&d.to_be_bytes());
                self.hash(&b)
            }
            None => self.hash(&b[..8]),
        }
    }

    /// IPv6 hash: addresses, plus ports for the L4 variant.
    #[inline]
    pub fn hash_v6(&self, src: &[u8; 16], dst: &[u8; 16], ports: Option<(u16, u16)>) -> u32 {
        let mut b = [0u8; 36];
        b[..16].copy_from_slice(src);
        b[16..32].copy_from_slice(dst);
        match ports {
            Some((s, d)) => {
                b[32..34].copy_from_slice(&s.to_be_bytes());
                b[34..36].copy_from_slice(&d.to_be_bytes());
                self.hash(&b)
            }
            None => self.hash(&b[..32]),
        }
    }

    /// Hash of a flow key the way a NIC hashes the packet: with ports when `l4` is true.
    /// The zone is not part of an RSS hash.
    #[inline]
    pub fn hash_flow(&self, key: &FlowKey, l4: bool) -> u32 {
        let ports = l4.then_some((key.src_port, key.dst_port));
        let (s, d) = (key.src_raw(), key.dst_raw());
        match key.family() {
            Family::V4 => self.hash_v4([s[0], s[1], s[2], s[3]], [d[0], d[1], d[2], d[3]], ports),
            Family::V6 => self.hash_v6(s, d, ports),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{ZoneId, proto};
    use proptest::prelude::*;

    /// Bit-by-bit reference straight from the definition.
    fn naive(key: &[u8; KEY_LEN], input: &[u8]) -> u32 {
        let mut result = 0u32;
        let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
        for (i, &byte) in input.iter().enumerate() {
            for bit in 0..8 {
                if byte & (0x80 >> bit) != 0 {
                    result ^= window;
                }
                let next_bit = i * 8 + bit + 32;
                let kb = key.get(next_bit / 8).copied().unwrap_or(0);
                window = (window << 1) | u32::from((kb >> (7 - next_bit % 8)) & 1);
            }
        }
        result
    }

    #[test]
    fn microsoft_verification_table() {
        // The published table is checked line by line from the shared test data in the
        // integration test `rss_vectors`; a couple of rows inline keep this module honest.
        let t = Toeplitz::new(&MICROSOFT_KEY);
        assert_eq!(
            t.hash_v4([66, 9, 149, 187], [161, 142, 100, 80], None),
            0x323e8fc2
        );
        assert_eq!(
            t.hash_v4([199, 92, 111, 2], [65, 69, 140, 83], Some((14230, 4739))),
            0xc626b0ea
        );
    }

    #[test]
    fn symmetric_key_golden() {
        // Pinned on first implementation (the bitwise reference above agrees); never change.
        let t = Toeplitz::new(&SYMMETRIC_KEY);
        let k = FlowKey::v4(
            ZoneId(0),
            [66, 9, 149, 187],
            [161, 142, 100, 80],
            proto::TCP,
            2794,
            1766,
        );
        let got = (t.hash_flow(&k, true), t.hash_flow(&k, false));
        assert_eq!(
            got,
            (
                naive(
                    &SYMMETRIC_KEY,
                    &[66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6]
                ),
                naive(&SYMMETRIC_KEY, &[66, 9, 149, 187, 161, 142, 100, 80])
            )
        );
        assert_eq!(got, SYMMETRIC_GOLDEN);
    }

    const SYMMETRIC_GOLDEN: (u32, u32) = (0x9fcc_9fcc, 0x0a59_0a59);

    proptest! {
        #[test]
        fn table_matches_bitwise_definition(key in any::<[u8; 32]>(), tail in any::<[u8; 8]>(), input in proptest::collection::vec(any::<u8>(), 0..=MAX_INPUT)) {
            let mut k = [0u8; KEY_LEN];
            k[..32].copy_from_slice(&key);
            k[32..].copy_from_slice(&tail);
            prop_assert_eq!(Toeplitz::new(&k).hash(&input), naive(&k, &input));
        }

        #[test]
        fn symmetric_key_is_symmetric(s in any::<[u8; 16]>(), d in any::<[u8; 16]>(), sp in any::<u16>(), dp in any::<u16>(), v6 in any::<bool>()) {
            let t = Toeplitz::new(&SYMMETRIC_KEY);
            let k = if v6 { FlowKey::v6(ZoneId(0), s, d, proto::TCP, sp, dp) } else { FlowKey::v4(ZoneId(0), [s[0], s[1], s[2], s[3]], [d[0], d[1], d[2], d[3]], proto::TCP, sp, dp) };
            prop_assert_eq!(t.hash_flow(&k, true), t.hash_flow(&k.reversed(), true));
            prop_assert_eq!(t.hash_flow(&k, false), t.hash_flow(&k.reversed(), false));
        }
    }
}
