//! Fuzzes the classifier builder and lookups: arbitrary IPv4 and IPv6 rules (prefixes near a
//! few bases so they nest, lengths beyond the width, host bits, mixed families, reversed port
//! ranges, ICMP type/code), sometimes under a small memory limit, then arbitrary keys looked up
//! singly and in batches against the naive linear reference.
//!
//! Checked: nothing panics; invalid prefixes, ranges and mixed families get their typed error
//! and are not kept; a build either succeeds or fails with `MemoryLimit` (only under the small
//! limit); at most the configured number of parts; every lookup (single, counted and batch)
//! equals the first matching accepted rule, at the fixed number of reads; a batch leaves
//! outputs beyond its inputs alone.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_policy::classifier::{
    ClassKey, ClassifierBuilder, ClassifierConfig, ClassifierError, Match, PortRange, Prefix,
};
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Arbitrary, Debug)]
struct Rule {
    v6: bool,
    mixed: bool,
    src: (u8, u128, u8),
    dst: (u8, u128, u8),
    proto: Option<u8>,
    icmp: Option<(Option<u8>, Option<u8>)>,
    sports: (u16, u16),
    dports: (u16, u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    small_limit: bool,
    /// Parts: from `1 + min % 4`, up to that plus `extra % 4`.
    parts: (u8, u8),
    rules: Vec<Rule>,
    keys: Vec<(bool, (u8, u128), (u8, u128), u8, u16, u16)>,
}

const BASES: [u128; 4] = [
    0x0a01_0203,
    0xc0a8_00ff,
    0x2001_0db8_00ab_cd00_0000_0000_0000_0001,
    0xfe80_0000_0000_0000_0000_0000_0000_00ff,
];

/// An address of the family near a base (its top `keep` bits) or raw.
fn addr(v6: bool, base: u8, raw: u128) -> u128 {
    let width = if v6 { 128 } else { 32 };
    let b = BASES[usize::from(base & 1) + if v6 { 2 } else { 0 }];
    let all = u128::MAX >> (128 - width);
    if base & 2 != 0 {
        return raw & all;
    }
    let keep = u32::from(base >> 2) % (width + 1);
    let m = all & !(all.checked_shr(keep).unwrap_or(0));
    ((b & m) | (raw & !m)) & all
}

fn prefix(v6: bool, (base, raw, len): (u8, u128, u8)) -> Result<Prefix, ClassifierError> {
    let a = addr(v6, base, raw);
    let len = len % if v6 { 131 } else { 35 };
    // Half the time clear the host bits, so most prefixes are valid.
    if base & 0x80 != 0 {
        let ip = if v6 { Ipv6Addr::from(a).into() } else { Ipv4Addr::from(a as u32).into() };
        return Prefix::masked(ip, len);
    }
    if v6 { Prefix::v6(Ipv6Addr::from(a), len) } else { Prefix::v4(Ipv4Addr::from(a as u32), len) }
}

fn to_match(r: &Rule) -> Result<Match, ClassifierError> {
    let src = prefix(r.v6, r.src)?;
    let dst = prefix(r.v6 ^ r.mixed, r.dst)?;
    let mut m = if r.v6 { Match::any_v6() } else { Match::any_v4() }.src(src);
    m.dst = dst;
    if let Some(p) = r.proto {
        m = m.proto(p);
    }
    m = m.src_ports(PortRange::new(r.sports.0, r.sports.1)?);
    m = m.dst_ports(PortRange::new(r.dports.0, r.dports.1)?);
    if let Some((ty, code)) = r.icmp {
        m = m.icmp(ty, code);
    }
    Ok(m)
}

fuzz_target!(|input: Input| {
    let limit = if input.small_limit { 1 << 20 } else { 64 << 20 };
    let min = 1 + usize::from(input.parts.0 % 4);
    let max = min + usize::from(input.parts.1 % 4);
    let config = ClassifierConfig::default().memory_limit(limit).parts(min, max);
    let mut b = ClassifierBuilder::new(config);
    let mut kept: Vec<Match> = Vec::new();
    for r in input.rules.iter().take(48) {
        let Ok(m) = to_match(r) else { continue };
        match b.push(m) {
            Ok(i) => {
                assert_eq!(i as usize, kept.len());
                kept.push(m);
            }
            Err(e) => assert!(r.mixed && e == ClassifierError::FamilyMismatch, "{e:?} {m:?}"),
        }
    }
    let c = match b.build() {
        Ok(c) => c,
        Err(ClassifierError::MemoryLimit { needed, limit: l }) => {
            assert!(input.small_limit && needed > l && l == limit);
            return;
        }
        Err(e) => panic!("unexpected build error {e:?}"),
    };
    assert!(c.bytes() <= limit);
    for f in [nf_core::Family::V4, nf_core::Family::V6] {
        assert!(c.parts(f) <= max);
        assert_eq!(c.reads_per_lookup(f) % if f == nf_core::Family::V4 { 13 } else { 37 }, 0);
    }
    let mut keys: Vec<ClassKey> = input
        .keys
        .iter()
        .take(256)
        .map(|&(v6, (bs, rs), (bd, rd), p, sp, dp)| {
            if v6 {
                ClassKey::v6(Ipv6Addr::from(addr(true, bs, rs)), Ipv6Addr::from(addr(true, bd, rd)), p, sp, dp)
            } else {
                ClassKey::v4(Ipv4Addr::from(addr(false, bs, rs) as u32), Ipv4Addr::from(addr(false, bd, rd) as u32), p, sp, dp)
            }
        })
        .collect();
    // The low corner of every rule.
    for m in &kept {
        let bits = |a: std::net::IpAddr| match a {
            std::net::IpAddr::V4(a) => u128::from(a.to_bits()),
            std::net::IpAddr::V6(a) => a.to_bits(),
        };
        let mut k = ClassKey::default();
        k.family = m.src.family();
        k.src = bits(m.src.addr());
        k.dst = bits(m.dst.addr());
        k.proto = m.proto.unwrap_or(6);
        k.src_port = m.src_ports.lo();
        k.dst_port = m.dst_ports.hi();
        keys.push(k);
    }
    let mut out = vec![Some(u32::MAX); keys.len() + 3];
    c.classify_batch(&keys, &mut out);
    for (k, o) in keys.iter().zip(&out) {
        let want = kept.iter().position(|m| m.matches(k)).map(|i| i as u32);
        let mut reads = 0;
        assert_eq!(c.classify(k), want, "{k:?}");
        assert_eq!(c.classify_counting(k, &mut reads), want);
        assert_eq!(reads as usize, c.reads_per_lookup(k.family));
        assert_eq!(*o, want, "batch {k:?}");
    }
    assert!(out[keys.len()..].iter().all(|o| *o == Some(u32::MAX)));
});
