//! Longest-prefix match against a naive reference (a linear scan for the longest matching
//! prefix, the last inserted winning among duplicates): random prefix sets, nested prefixes,
//! /0 and full-length routes, random addresses and addresses inside the routes; batches equal
//! single lookups; the builder's error cases.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

extern crate alloc;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::ZoneId;
use nf_policy::lpm::MAX_NEXT_HOP;
use nf_policy::{
    Ipv4Layout, Ipv4Lpm, Ipv4LpmBuilder, Ipv6Lpm, Ipv6LpmBuilder, LpmError, RouteTable, RouteTables,
};
use proptest::prelude::*;

/// The naive reference: every route, in insertion order, scanned for the longest match.
fn reference(routes: &[(u128, u8, u32)], key: u128) -> Option<u32> {
    let mut best: Option<(u8, u32)> = None;
    for &(p, len, hop) in routes {
        let m = if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        if key & m == p & m && best.is_none_or(|(l, _)| len >= l) {
            best = Some((len, hop));
        }
    }
    best.map(|(_, h)| h)
}

fn mask128(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len)))
    }
}

/// Addresses clustered around a few bases so that prefixes nest and lookups hit them.
fn v4_addr() -> impl Strategy<Value = u32> {
    (0usize..4, any::<u32>(), 0u32..=32).prop_map(|(b, r, keep)| {
        const BASES: [u32; 4] = [0x0a00_0000, 0x0a01_0200, 0xc0a8_0101, 0xffff_ffff];
        // Keep the top `keep` bits of the base, randomise the rest.
        let m = u32::MAX.checked_shl(32 - keep).unwrap_or(0);
        (BASES[b] & m) | (r & !m)
    })
}

fn v4_len() -> impl Strategy<Value = u8> {
    prop_oneof![Just(0u8), Just(32), Just(24), Just(25), Just(16), 0u8..=32]
}

fn v4_routes() -> impl Strategy<Value = Vec<(u32, u8, u32)>> {
    prop::collection::vec((v4_addr(), v4_len(), 0u32..64), 0..80)
}

fn v6_addr() -> impl Strategy<Value = u128> {
    (0usize..4, any::<u128>(), 0u32..=128).prop_map(|(b, r, keep)| {
        const BASES: [u128; 4] = [
            0x2001_0db8_0000_0000_0000_0000_0000_0000,
            0x2001_0db8_00ab_cd00_0000_0000_0000_0001,
            0xfd00_0000_0000_0000_0000_0000_0000_0000,
            u128::MAX,
        ];
        let m = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
        (BASES[b] & m) | (r & !m)
    })
}

fn v6_len() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0u8),
        Just(128),
        Just(16),
        Just(17),
        Just(48),
        Just(64),
        0u8..=128
    ]
}

fn v6_routes() -> impl Strategy<Value = Vec<(u128, u8, u32)>> {
    prop::collection::vec((v6_addr(), v6_len(), 0u32..64), 0..60)
}

fn build_v4(routes: &[(u32, u8, u32)], layout: Ipv4Layout) -> (Ipv4Lpm, Vec<(u128, u8, u32)>) {
    let mut b = Ipv4LpmBuilder::new().layout(layout);
    let mut reference_routes = Vec::new();
    for &(a, len, hop) in routes {
        b.insert_masked(Ipv4Addr::from(a), len, hop).unwrap();
        let k = mask128(u128::from(a) << 96, len);
        reference_routes.push((k, len, hop));
    }
    (b.build().unwrap(), reference_routes)
}

fn check_v4(routes: &[(u32, u8, u32)], addrs: &[u32], layout: Ipv4Layout) {
    let (t, r) = build_v4(routes, layout);
    // Lookups: the random addresses plus every route's first and last address.
    let mut keys: Vec<u32> = addrs.to_vec();
    for &(a, len, _) in routes {
        let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        keys.push(a & m);
        keys.push(a | !m);
    }
    let ips: Vec<Ipv4Addr> = keys.iter().map(|&k| Ipv4Addr::from(k)).collect();
    let mut out = vec![Some(u32::MAX); ips.len()];
    t.lookup_batch(&ips, &mut out);
    for (i, &k) in keys.iter().enumerate() {
        let want = reference(&r, u128::from(k) << 96);
        assert_eq!(t.lookup(ips[i]), want, "{} ({layout:?})", ips[i]);
        assert_eq!(out[i], want, "batch {} ({layout:?})", ips[i]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn ipv4_trie16_matches_the_linear_scan(
        routes in v4_routes(),
        addrs in prop::collection::vec(v4_addr(), 0..150),
    ) {
        check_v4(&routes, &addrs, Ipv4Layout::Trie16);
    }

    #[test]
    fn ipv6_matches_the_linear_scan(
        routes in v6_routes(),
        addrs in prop::collection::vec(v6_addr(), 0..150),
    ) {
        let mut b = Ipv6LpmBuilder::new();
        let mut r = Vec::new();
        for &(a, len, hop) in &routes {
            b.insert_masked(Ipv6Addr::from(a), len, hop).unwrap();
            r.push((mask128(a, len), len, hop));
        }
        let t = b.build().unwrap();
        let mut keys = addrs.clone();
        for &(a, len, _) in &routes {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            keys.push(a & m);
            keys.push(a | !m);
        }
        let ips: Vec<Ipv6Addr> = keys.iter().map(|&k| Ipv6Addr::from(k)).collect();
        let mut out = vec![Some(u32::MAX); ips.len()];
        t.lookup_batch(&ips, &mut out);
        for (i, &k) in keys.iter().enumerate() {
            let want = reference(&r, k);
            prop_assert_eq!(t.lookup(ips[i]), want, "{}", ips[i]);
            prop_assert_eq!(out[i], want, "batch {}", ips[i]);
        }
    }

    #[test]
    fn route_tables_route_by_zone(
        a in v4_routes(),
        b in v4_routes(),
        addrs in prop::collection::vec(v4_addr(), 1..40),
    ) {
        let (ta, ra) = build_v4(&a, Ipv4Layout::Auto);
        let (tb, rb) = build_v4(&b, Ipv4Layout::Auto);
        let mut tables = RouteTables::new();
        tables.insert(ZoneId(1), RouteTable::new(ta, Ipv6Lpm::default()));
        tables.insert(ZoneId(2), RouteTable::new(tb, Ipv6Lpm::default()));
        for &k in &addrs {
            let ip = IpAddr::V4(Ipv4Addr::from(k));
            prop_assert_eq!(tables.route(ZoneId(1), ip), reference(&ra, u128::from(k) << 96));
            prop_assert_eq!(tables.route(ZoneId(2), ip), reference(&rb, u128::from(k) << 96));
            prop_assert_eq!(tables.route(ZoneId(3), ip), None);
        }
    }
}

proptest! {
    // DIR-24-8 allocates its 64 MiB root per case: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn ipv4_dir24_matches_the_linear_scan(
        routes in v4_routes(),
        addrs in prop::collection::vec(v4_addr(), 0..150),
    ) {
        check_v4(&routes, &addrs, Ipv4Layout::Dir24);
    }
}

#[test]
fn ipv4_nested_prefixes_default_and_host_routes() {
    let ip = Ipv4Addr::new;
    for layout in [Ipv4Layout::Trie16, Ipv4Layout::Dir24] {
        let mut b = Ipv4LpmBuilder::new().layout(layout);
        b.insert(ip(0, 0, 0, 0), 0, 1).unwrap();
        b.insert(ip(10, 0, 0, 0), 8, 2).unwrap();
        b.insert(ip(10, 1, 0, 0), 16, 3).unwrap();
        b.insert(ip(10, 1, 2, 0), 24, 4).unwrap();
        b.insert(ip(10, 1, 2, 128), 25, 5).unwrap();
        b.insert(ip(10, 1, 2, 200), 32, 6).unwrap();
        // Inserted after the longer ones: order of insertion must not matter.
        b.insert(ip(10, 1, 2, 192), 26, 7).unwrap();
        let t = b.build().unwrap();
        assert_eq!(t.is_dir24(), layout == Ipv4Layout::Dir24);
        assert_eq!(t.lookup(ip(192, 0, 2, 1)), Some(1));
        assert_eq!(t.lookup(ip(10, 9, 9, 9)), Some(2));
        assert_eq!(t.lookup(ip(10, 1, 9, 9)), Some(3));
        assert_eq!(t.lookup(ip(10, 1, 2, 1)), Some(4));
        assert_eq!(t.lookup(ip(10, 1, 2, 129)), Some(5));
        assert_eq!(t.lookup(ip(10, 1, 2, 193)), Some(7));
        assert_eq!(t.lookup(ip(10, 1, 2, 200)), Some(6));
        assert_eq!(t.lookup(ip(10, 1, 2, 201)), Some(7));
        assert_eq!(t.lookup(ip(10, 1, 3, 0)), Some(3));
    }
    let empty = Ipv4Lpm::from_routes([]).unwrap();
    assert_eq!(empty.lookup(ip(1, 2, 3, 4)), None);
    let host = Ipv4Lpm::from_routes([(ip(255, 255, 255, 255), 32, MAX_NEXT_HOP)]).unwrap();
    assert_eq!(host.lookup(ip(255, 255, 255, 255)), Some(MAX_NEXT_HOP));
    assert_eq!(host.lookup(ip(255, 255, 255, 254)), None);
}

#[test]
fn ipv6_default_and_full_length_routes() {
    let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let t = Ipv6Lpm::from_routes([
        (a("::"), 0, 1),
        (a("2001:db8::"), 32, 2),
        (a("2001:db8::1"), 128, 3),
        (a("2001:db8:8000::"), 33, 4),
    ])
    .unwrap();
    assert_eq!(t.lookup(a("fe80::1")), Some(1));
    assert_eq!(t.lookup(a("2001:db8::2")), Some(2));
    assert_eq!(t.lookup(a("2001:db8::1")), Some(3));
    assert_eq!(t.lookup(a("2001:db8:8000::1")), Some(4));
    assert_eq!(Ipv6Lpm::default().lookup(a("::1")), None);
}

#[test]
fn duplicates_last_wins() {
    let ip = Ipv4Addr::new(10, 0, 0, 0);
    let t = Ipv4Lpm::from_routes([(ip, 8, 1), (ip, 8, 2), (ip, 16, 3), (ip, 8, 4)]).unwrap();
    assert_eq!(t.lookup(Ipv4Addr::new(10, 1, 0, 0)), Some(4));
    assert_eq!(t.lookup(Ipv4Addr::new(10, 0, 1, 0)), Some(3));
}

#[test]
fn builder_rejects_invalid_routes() {
    let mut b = Ipv4LpmBuilder::new();
    assert_eq!(
        b.insert(Ipv4Addr::new(10, 0, 0, 0), 33, 1),
        Err(LpmError::PrefixLength { len: 33, max: 32 })
    );
    assert_eq!(
        b.insert(Ipv4Addr::new(10, 0, 0, 1), 8, 1),
        Err(LpmError::HostBits)
    );
    assert_eq!(
        b.insert(Ipv4Addr::new(0, 0, 0, 1), 0, 1),
        Err(LpmError::HostBits)
    );
    assert_eq!(
        b.insert(Ipv4Addr::new(10, 0, 0, 0), 8, MAX_NEXT_HOP + 1),
        Err(LpmError::NextHop {
            hop: MAX_NEXT_HOP + 1
        })
    );
    assert!(b.is_empty(), "rejected routes are not kept");
    b.insert_masked(Ipv4Addr::new(10, 0, 0, 1), 8, 7).unwrap();
    assert_eq!(
        b.build().unwrap().lookup(Ipv4Addr::new(10, 200, 0, 0)),
        Some(7)
    );

    let mut b6 = Ipv6LpmBuilder::new();
    assert_eq!(
        b6.insert(Ipv6Addr::UNSPECIFIED, 129, 1),
        Err(LpmError::PrefixLength { len: 129, max: 128 })
    );
    assert_eq!(
        b6.insert(Ipv6Addr::LOCALHOST, 127, 1),
        Err(LpmError::HostBits)
    );
    assert_eq!(
        b6.insert(Ipv6Addr::LOCALHOST, 128, u32::MAX),
        Err(LpmError::NextHop { hop: u32::MAX })
    );
    assert!(b6.insert(Ipv6Addr::LOCALHOST, 128, 0).is_ok());
    assert_eq!(
        Ipv4Lpm::from_routes([(Ipv4Addr::new(1, 1, 1, 1), 24, 0)]).err(),
        Some(LpmError::HostBits)
    );
}

#[test]
fn batch_lengths_may_differ() {
    let t = Ipv4Lpm::from_routes([(Ipv4Addr::new(10, 0, 0, 0), 8, 5)]).unwrap();
    let addrs: Vec<Ipv4Addr> = (0..200u32)
        .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
        .collect();
    let mut out = vec![None; 150];
    t.lookup_batch(&addrs, &mut out);
    assert!(out.iter().all(|o| *o == Some(5)));
    let mut long = vec![Some(1); 300];
    t.lookup_batch(&addrs, &mut long);
    assert!(long[..200].iter().all(|o| *o == Some(5)));
    assert!(
        long[200..].iter().all(|o| *o == Some(1)),
        "beyond the inputs is untouched"
    );
}

mod stage {
    use super::*;
    use alloc::sync::Arc;
    use nf_core::{
        Batch, FlowKey, Instant, NO_NEXT_HOP, Packet, Stage, StageControl, Verdict, flags,
    };
    use nf_policy::{MissAction, RouteStage};

    fn packet(zone: u32, dst: [u8; 4], parsed: bool) -> Packet<Vec<u8>> {
        let mut p = Packet::new(vec![0u8; 64], 0, 64).unwrap();
        p.meta.zone = ZoneId(zone);
        p.meta.flow = FlowKey::v4(ZoneId(zone), [192, 0, 2, 1], dst, 17, 1000, 53);
        if parsed {
            p.meta.flags |= flags::L3_VALID;
        }
        p
    }

    fn tables() -> Arc<RouteTables> {
        let ip = Ipv4Addr::new;
        let mut t = RouteTables::new();
        // Attachment 1 reaches 10.2/16 via attachment 2; attachment 2 reaches everything via 1.
        let one = Ipv4Lpm::from_routes([(ip(10, 2, 0, 0), 16, 2)]).unwrap();
        let two = Ipv4Lpm::from_routes([(ip(0, 0, 0, 0), 0, 1)]).unwrap();
        t.insert(ZoneId(1), RouteTable::new(one, Ipv6Lpm::default()));
        t.insert(ZoneId(2), RouteTable::new(two, Ipv6Lpm::default()));
        Arc::new(t)
    }

    #[test]
    fn route_stage_sets_next_hops_by_zone() {
        let mut stage = RouteStage::new(tables(), MissAction::ToControl);
        let mut batch = Batch::new();
        for p in [
            packet(1, [10, 2, 3, 4], true),
            packet(1, [10, 3, 0, 1], true),
            packet(2, [10, 3, 0, 1], true),
            packet(3, [10, 2, 3, 4], true),
            packet(1, [10, 2, 3, 4], false),
        ] {
            batch.push(p).unwrap();
        }
        stage.process(Instant::ZERO, &mut batch);
        let hops: Vec<u32> = batch.packets().iter().map(|p| p.meta.next_hop).collect();
        assert_eq!(hops, [2, NO_NEXT_HOP, 1, NO_NEXT_HOP, NO_NEXT_HOP]);
        let verdicts: Vec<Verdict> = batch.packets().iter().map(|p| p.meta.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Pass,
                Verdict::ToControl,
                Verdict::Pass,
                Verdict::ToControl,
                Verdict::Pass
            ]
        );
        let mut c = alloc::collections::BTreeMap::new();
        stage.visit_counters(&mut |s, k, v| {
            if s == "route" {
                c.insert(k, v);
            }
        });
        assert_eq!((c["routed"], c["no_route"], c["not_routed"]), (2, 2, 1));

        // A new snapshot replaces the tables whole.
        let old = stage.set_tables(Arc::new(RouteTables::new()));
        assert_eq!(old.len(), 2);
        let mut batch = Batch::new();
        batch.push(packet(1, [10, 2, 3, 4], true)).unwrap();
        stage.process(Instant::ZERO, &mut batch);
        assert_eq!(batch.packets()[0].meta.next_hop, NO_NEXT_HOP);
    }
}

#[test]
fn single_routes_below_a_group_are_compressed_and_keep_their_fallback() {
    let ip = Ipv4Addr::new;
    for layout in [Ipv4Layout::Trie16, Ipv4Layout::Dir24] {
        // One /30 under a /8: the /30's subtree holds a single route (a tail); outside it, the
        // /8 must still match.
        let mut b = Ipv4LpmBuilder::new().layout(layout);
        b.insert(ip(10, 0, 0, 0), 8, 1).unwrap();
        b.insert(ip(10, 9, 9, 8), 30, 2).unwrap();
        let t = b.build().unwrap();
        assert_eq!(t.lookup(ip(10, 9, 9, 9)), Some(2));
        assert_eq!(t.lookup(ip(10, 9, 9, 12)), Some(1));
        assert_eq!(t.lookup(ip(10, 9, 8, 9)), Some(1));
        assert_eq!(t.lookup(ip(11, 9, 9, 9)), None);
        let mut out = [None; 3];
        t.lookup_batch(
            &[ip(10, 9, 9, 11), ip(10, 9, 9, 7), ip(9, 0, 0, 0)],
            &mut out,
        );
        assert_eq!(out, [Some(2), Some(1), None]);
    }
    // IPv6: a /128 and a /64 far below a /16 default, each alone in its subtree; the 16-entry
    // root plus two tails, no group.
    let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let t = Ipv6Lpm::from_routes([
        (a("2001::"), 16, 1),
        (a("2001:db8::1"), 128, 2),
        (a("2002:0:0:1::"), 64, 3),
    ])
    .unwrap();
    assert_eq!(t.lookup(a("2001:db8::1")), Some(2));
    assert_eq!(t.lookup(a("2001:db8::2")), Some(1));
    assert_eq!(t.lookup(a("2002:0:0:1::5")), Some(3));
    assert_eq!(t.lookup(a("2002:0:0:2::5")), None);
    assert!(
        t.bytes() < Ipv6Lpm::default().bytes() + 1024,
        "no 1 KiB group was built"
    );
}

/// Batches of every length up to past two chunks, over a table with groups and tails below
/// the root in both IPv4 layouts, give the single lookups' answers (the IPv4 batch path
/// prefetches and resolves level by level; many keys of a chunk point below the root here).
#[test]
fn ipv4_batches_of_any_length_match_single_lookups() {
    let mut routes = vec![
        (Ipv4Addr::new(0, 0, 0, 0), 0, 1),
        (Ipv4Addr::new(10, 0, 0, 0), 8, 2),
        (Ipv4Addr::new(10, 1, 0, 0), 16, 3),
        // Alone under its /24 (a tail) and several under one /24 (a group, then a tail).
        (Ipv4Addr::new(10, 1, 2, 128), 25, 4),
        (Ipv4Addr::new(10, 1, 3, 0), 26, 5),
        (Ipv4Addr::new(10, 1, 3, 64), 27, 6),
        (Ipv4Addr::new(10, 1, 3, 96), 32, 7),
        // Under one /16 but different /24s: a group at depth 16 in 16-8-8.
        (Ipv4Addr::new(192, 168, 1, 0), 24, 8),
        (Ipv4Addr::new(192, 168, 1, 7), 32, 9),
        (Ipv4Addr::new(192, 168, 200, 0), 30, 10),
    ];
    routes.push((Ipv4Addr::new(255, 255, 255, 255), 32, MAX_NEXT_HOP));
    let addrs: Vec<Ipv4Addr> = (0..150u32)
        .map(|i| match i % 5 {
            0 => Ipv4Addr::from(0x0a01_0200 + i),
            1 => Ipv4Addr::from(0x0a01_0300 + i),
            2 => Ipv4Addr::from(0xc0a8_0100 + i % 16),
            3 => Ipv4Addr::from(0xc0a8_c800 + i % 8),
            _ => Ipv4Addr::from(i.wrapping_mul(0x9e37_79b9)),
        })
        .chain([Ipv4Addr::new(255, 255, 255, 255), Ipv4Addr::new(0, 0, 0, 0)])
        .collect();
    for layout in [Ipv4Layout::Trie16, Ipv4Layout::Dir24] {
        let mut b = Ipv4LpmBuilder::new().layout(layout);
        for &(p, l, h) in &routes {
            b.insert(p, l, h).unwrap();
        }
        let t = b.build().unwrap();
        let want: Vec<Option<u32>> = addrs.iter().map(|&a| t.lookup(a)).collect();
        assert_eq!(want[1], Some(5), "{layout:?}");
        for len in [0, 1, 2, 63, 64, 65, 127, 128, 129, addrs.len()] {
            let mut out = vec![Some(u32::MAX - 1); len];
            t.lookup_batch(&addrs[..len], &mut out);
            assert_eq!(out, want[..len], "{layout:?}, {len} addresses");
        }
        // The single lookups agree with the routes' meaning.
        assert_eq!(t.lookup(Ipv4Addr::new(10, 1, 3, 96)), Some(7));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 1, 3, 95)), Some(6));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 1, 3, 97)), Some(3));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 1, 2, 127)), Some(3));
        assert_eq!(t.lookup(Ipv4Addr::new(192, 168, 1, 7)), Some(9));
        assert_eq!(t.lookup(Ipv4Addr::new(192, 168, 200, 4)), Some(1));
        assert_eq!(
            t.lookup(Ipv4Addr::new(255, 255, 255, 255)),
            Some(MAX_NEXT_HOP)
        );
    }
}
