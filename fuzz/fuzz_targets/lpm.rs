//! Fuzzes the longest-prefix-match builders and tables: arbitrary IPv4 and IPv6 route sets
//! (lengths up to and beyond the address width, host bits, large next hops, duplicates) built
//! with every IPv4 layout, then arbitrary lookups, single and batched, against a naive linear
//! scan.
//!
//! Checked: nothing panics; an invalid route gets the exact typed error and is not kept; every
//! lookup (single and batch) equals the longest matching prefix of the accepted routes, the
//! last inserted winning among duplicates; a batch leaves outputs beyond its inputs alone.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_policy::lpm::MAX_NEXT_HOP;
use nf_policy::{Ipv4Layout, Ipv4LpmBuilder, Ipv6LpmBuilder, LpmError};
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Arbitrary, Debug)]
struct Route {
    /// Index of a base address (so that routes nest), or a raw address.
    base: u8,
    raw: u128,
    len: u8,
    /// Hops beyond `MAX_NEXT_HOP` when the top bit is set.
    hop: u32,
    masked: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    layout: u8,
    v4: Vec<Route>,
    v6: Vec<Route>,
    lookups: Vec<(u8, u128)>,
}

const BASES: [u128; 4] = [
    0x0a01_0203_0000_0000_0000_0000_0000_0000,
    0x2001_0db8_00ab_cd00_0000_0000_0000_0001,
    0,
    u128::MAX,
];

/// An address near a base (its top `keep` bits) or a raw one.
fn addr(base: u8, raw: u128) -> u128 {
    match BASES.get(usize::from(base & 3)) {
        Some(&b) if base & 4 == 0 => {
            let keep = u32::from(base >> 3) * 8;
            let m = u128::MAX.checked_shl(128 - keep.min(128)).unwrap_or(0);
            (b & m) | (raw & !m)
        }
        _ => raw,
    }
}

/// Mostly small next hops; invalid ones when the top bit is set.
fn hop(r: &Route) -> u32 {
    if r.hop & 0x8000_0000 != 0 { r.hop } else { r.hop % 64 }
}

fn mask(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0)
}

/// The longest accepted route containing `key`, the last inserted winning.
fn reference(routes: &[(u128, u8, u32)], key: u128) -> Option<u32> {
    let mut best: Option<(u8, u32)> = None;
    for &(p, len, hop) in routes {
        if key & mask(len) == p && best.is_none_or(|(l, _)| len >= l) {
            best = Some((len, hop));
        }
    }
    best.map(|(_, h)| h)
}

/// Expected outcome of inserting `r` into a table of `width` bits; the route as accepted.
fn expect(r: &Route, width: u8, key: u128) -> Result<(u128, u8, u32), LpmError> {
    let hop = hop(r);
    let len = r.len % (width + 3);
    if len > width {
        return Err(LpmError::PrefixLength { len, max: width });
    }
    if hop > MAX_NEXT_HOP {
        return Err(LpmError::NextHop { hop });
    }
    if key & !mask(len) != 0 && !r.masked {
        return Err(LpmError::HostBits);
    }
    Ok((key & mask(len), len, hop))
}

fuzz_target!(|input: Input| {
    let layout = match input.layout % 8 {
        0 => Ipv4Layout::Dir24, // 64 MiB per build: rarely.
        1..=3 => Ipv4Layout::Auto,
        _ => Ipv4Layout::Trie16,
    };
    let mut b4 = Ipv4LpmBuilder::new().layout(layout);
    let mut r4 = Vec::new();
    for r in input.v4.iter().take(64) {
        // IPv4 keys live in the top 32 bits of the 128-bit model.
        let key = addr(r.base, r.raw) >> 96 << 96;
        let want = expect(r, 32, key);
        let len = r.len % 35;
        let hop = hop(r);
        let a = Ipv4Addr::from((key >> 96) as u32);
        let got = if r.masked { b4.insert_masked(a, len, hop) } else { b4.insert(a, len, hop) };
        assert_eq!(got, want.map(|_| ()), "{a}/{len} -> {hop}");
        if let Ok(w) = want {
            r4.push(w);
        }
    }
    assert_eq!(b4.len(), r4.len());
    let t4 = b4.build().unwrap();

    let mut b6 = Ipv6LpmBuilder::new();
    let mut r6 = Vec::new();
    for r in input.v6.iter().take(64) {
        let key = addr(r.base, r.raw);
        let want = expect(r, 128, key);
        let len = r.len % 131;
        let hop = hop(r);
        let a = Ipv6Addr::from(key);
        let got = if r.masked { b6.insert_masked(a, len, hop) } else { b6.insert(a, len, hop) };
        assert_eq!(got, want.map(|_| ()), "{a}/{len} -> {hop}");
        if let Ok(w) = want {
            r6.push(w);
        }
    }
    let t6 = b6.build().unwrap();

    // Lookups: arbitrary addresses plus the first and last address of every route.
    let mut keys: Vec<u128> = input.lookups.iter().take(256).map(|&(b, r)| addr(b, r)).collect();
    for &(p, len, _) in r4.iter().chain(&r6) {
        keys.push(p);
        keys.push(p | !mask(len));
    }
    let v4: Vec<Ipv4Addr> = keys.iter().map(|&k| Ipv4Addr::from((k >> 96) as u32)).collect();
    let v6: Vec<Ipv6Addr> = keys.iter().map(|&k| Ipv6Addr::from(k)).collect();
    let mut out4 = vec![Some(u32::MAX); keys.len() + 3];
    let mut out6 = vec![Some(u32::MAX); keys.len() + 3];
    t4.lookup_batch(&v4, &mut out4);
    t6.lookup_batch(&v6, &mut out6);
    for (i, &k) in keys.iter().enumerate() {
        let w4 = reference(&r4, k >> 96 << 96);
        assert_eq!(t4.lookup(v4[i]), w4, "{}", v4[i]);
        assert_eq!(out4[i], w4, "batch {}", v4[i]);
        let w6 = reference(&r6, k);
        assert_eq!(t6.lookup(v6[i]), w6, "{}", v6[i]);
        assert_eq!(out6[i], w6, "batch {}", v6[i]);
    }
    assert!(out4[keys.len()..].iter().chain(&out6[keys.len()..]).all(|o| *o == Some(u32::MAX)));
});
