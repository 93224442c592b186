//! Property tests of the SNAT service: the incremental checksum updates agree with a full
//! recomputation for arbitrary addresses, ports, identifiers and payloads of both families
//! and every translated protocol, in both directions and for ICMP errors, hairpinned to
//! another inside host's mapping too; and a batch gives exactly the results of the same
//! packets sent one at a time (hairpins included).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod common;

use common::*;
use nf_core::Verdict;
use nf_core::wire::Frame;
use nf_core::wire::icmp::IcmpRepr;
use nf_core::wire::tcp::tcp_flags::{ACK, SYN};
use nf_nat::{AllocatorConfig, Filtering, InsidePrefix, Profile, SnatConfig};
use proptest::prelude::*;

/// A frame of `kind` (0 TCP, 1 UDP, 2 ICMP echo) between two addresses (IPv4 in the first
/// four bytes unless `v6`).
fn build(
    v6: bool,
    kind: u8,
    src: [u8; 16],
    dst: [u8; 16],
    (sp, dp): (u16, u16),
    reply: bool,
    payload: &[u8],
) -> Vec<u8> {
    let f = if v6 {
        Frame::ipv6(src, dst)
    } else {
        Frame::ipv4(src[..4].try_into().unwrap(), dst[..4].try_into().unwrap())
    };
    let f = match kind {
        0 => f.tcp(sp, dp, if reply { SYN | ACK } else { SYN }),
        1 => f.udp(sp, dp),
        _ => {
            let ty = match (v6, reply) {
                (false, false) => 8,
                (false, true) => 0,
                (true, false) => 128,
                (true, true) => 129,
            };
            f.icmp(IcmpRepr {
                ty,
                ident: sp,
                seq: dp,
                ..IcmpRepr::default()
            })
        }
    };
    f.payload(payload).to_vec().unwrap()
}

fn addr(v6: bool, a: [u8; 16], inside: bool) -> [u8; 16] {
    let mut a = a;
    // Keep clear of the public addresses (203.0.113.1, 2001:db8::1).
    if v6 {
        a[0] = if inside { 0xfd } else { 0x26 };
    } else {
        a[0] = if inside { 10 } else { 100 };
        a[4..].fill(0);
    }
    a
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Outbound, reply, and an ICMP error each way: every checksum valid after translation
    /// (recomputed from scratch), and the reply and the quotes back to their inside form.
    #[test]
    fn translated_checksums_match_a_full_recompute(
        v6 in any::<bool>(),
        kind in 0u8..3,
        inside in any::<[u8; 16]>(),
        remote in any::<[u8; 16]>(),
        sp in 1u16..,
        dp in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        zero_udp in any::<bool>(),
    ) {
        let (inside, remote) = (addr(v6, inside, true), addr(v6, remote, false));
        let public = if v6 { public6() } else { let mut p = [0; 16]; p[..4].copy_from_slice(&PUBLIC4); p };
        let mut nat = Nat::new(Profile::Hyperplane, 64);
        let mut out = build(v6, kind, inside, remote, (sp, dp), false, &payload);
        if kind == 1 && zero_udp && !v6 {
            out[14 + 20 + 6..14 + 20 + 8].fill(0);
        }
        let (v, sent) = nat.send(&out);
        prop_assert_eq!(v, Verdict::Pass);
        verify_frame(&sent);
        let (mapped, _) = ports(&sent);
        let (rs, rd) = if kind == 2 { (mapped, dp) } else { (dp, mapped) };
        let reply = build(v6, kind, remote, public, (rs, rd), true, &payload);
        let (v, back) = nat.send(&reply);
        prop_assert_eq!(v, Verdict::Pass);
        verify_frame(&back);
        let router = addr(v6, [7; 16], false);
        let err = if v6 { unreachable6(router, public6(), &sent) } else {
            unreachable4(router[..4].try_into().unwrap(), PUBLIC4, &sent)
        };
        let (v, e) = nat.send(&err);
        prop_assert_eq!(v, Verdict::Pass);
        verify_frame(&e);
        let err = if v6 { unreachable6(inside, remote, &back) } else {
            unreachable4(inside[..4].try_into().unwrap(), remote[..4].try_into().unwrap(), &back)
        };
        let (v, e) = nat.send(&err);
        prop_assert_eq!(v, Verdict::Pass);
        verify_frame(&e);
    }

    /// A batch of outbound and reply packets gives exactly what the same packets give sent
    /// one at a time through a NAT in the same state.
    #[test]
    fn a_batch_equals_single_packets(
        flows in proptest::collection::vec((0u8..16, 0u8..4, 0u8..2, any::<bool>()), 1..64),
    ) {
        let frames: Vec<Vec<u8>> = flows
            .iter()
            .map(|&(host, port, kind, v6)| {
                let inside = if v6 { v6_addr(0xfd, host) } else { v4_addr(10, host) };
                let remote = if v6 { v6_addr(0x26, port) } else { v4_addr(100, port) };
                build(v6, kind, inside, remote, (40000 + u16::from(host), 443), false, b"x")
            })
            .collect();
        let mut batched = Nat::new(Profile::Rfc, 256);
        let mut single = Nat::new(Profile::Rfc, 256);
        let a = batched.send_batch(&frames);
        let b: Vec<_> = frames.iter().map(|f| single.send(f)).collect();
        prop_assert_eq!(a, b);
    }
}

/// An rfc NAT over PUBLIC4 and public6, inside prefixes 10/8 and fd00::/8, with
/// endpoint-independent filtering (hairpinning to mappings).
fn pin_nat() -> Nat {
    let publics = vec![
        core::net::Ipv4Addr::from(PUBLIC4).into(),
        core::net::Ipv6Addr::from(public6()).into(),
    ];
    let alloc = AllocatorConfig::new(Profile::Rfc, publics, *b"snat test secret");
    let cfg = SnatConfig::new(alloc)
        .with_inside(InsidePrefix::new("10.0.0.0".parse().unwrap(), 8))
        .with_inside(InsidePrefix::new("fd00::".parse().unwrap(), 8))
        .with_filtering(Filtering::EndpointIndependent);
    Nat::with_config(cfg, 256)
}

fn public(v6: bool) -> [u8; 16] {
    if v6 {
        public6()
    } else {
        let mut p = [0; 16];
        p[..4].copy_from_slice(&PUBLIC4);
        p
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Hairpinned to another inside host's mapping (TCP, UDP; both families): the packet to
    /// the peer, the peer's answer and an ICMP error each way have every checksum valid
    /// (recomputed from scratch), and each lands on the right inside endpoint.
    #[test]
    fn hairpinned_checksums_match_a_full_recompute(
        v6 in any::<bool>(),
        kind in 0u8..2,
        a in any::<[u8; 16]>(),
        b in any::<[u8; 16]>(),
        remote in any::<[u8; 16]>(),
        (sa, sb, dp) in (1u16.., 1u16.., 1u16..),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        zero_udp in any::<bool>(),
    ) {
        let (a, b, remote) = (addr(v6, a, true), addr(v6, b, true), addr(v6, remote, false));
        prop_assume!(a != b);
        let public = public(v6);
        let mut nat = pin_nat();
        let (v, out) = nat.send(&build(v6, kind, b, remote, (sb, dp), false, &payload));
        prop_assert_eq!(v, Verdict::Pass);
        let b_port = ports(&out).0;
        let mut to_b = build(v6, kind, a, public, (sa, b_port), false, &payload);
        if kind == 1 && zero_udp && !v6 {
            to_b[14 + 20 + 6..14 + 20 + 8].fill(0);
        }
        let (v, got) = nat.send(&to_b);
        prop_assert_eq!(v, Verdict::Pass);
        verify_frame(&got);
        let (a_port, d) = ports(&got);
        prop_assert_eq!(d, sb);
        let (v, back) = nat.send(&build(v6, kind, b, public, (sb, a_port), true, &payload));
        prop_assert_eq!(v, Verdict::Pass);
        verify_frame(&back);
        prop_assert_eq!(ports(&back), (b_port, sa));
        let (s, t) = if v6 {
            (unreachable6(b, public, &got), unreachable6(a, public, &back))
        } else {
            let (a4, b4, p4) = (a[..4].try_into().unwrap(), b[..4].try_into().unwrap(), PUBLIC4);
            (unreachable4(b4, p4, &got), unreachable4(a4, p4, &back))
        };
        for err in [s, t] {
            let (v, e) = nat.send(&err);
            prop_assert_eq!(v, Verdict::Pass);
            verify_frame(&e);
        }
    }

    /// Hairpins in batches: the peers' mappings made one at a time, then a batch of flows
    /// to them (some to no mapping), then a batch of the peers' answers and the senders'
    /// next packets: each batch gives exactly what its packets give one at a time.
    #[test]
    fn hairpinned_batches_equal_single_packets(
        // At most 32: the second batch holds two packets per flow (a batch holds 64).
        flows in proptest::collection::vec((0u8..8, 0u8..8, 0u8..2, any::<bool>(), 0u8..8), 1..=32),
    ) {
        let mut batched = pin_nat();
        let mut single = pin_nat();
        // Peers 0..8 of each family and kind: mappings towards a server outside.
        let mut mapped = std::collections::HashMap::new();
        for v6 in [false, true] {
            for kind in 0..2u8 {
                for peer in 0..8u8 {
                    let b = if v6 { v6_addr(0xfd, 100 + peer) } else { v4_addr(10, 100 + peer) };
                    let remote = if v6 { v6_addr(0x26, 1) } else { v4_addr(100, 1) };
                    let f = build(v6, kind, b, remote, (5000, 443), false, b"m");
                    let (x, y) = (batched.send(&f), single.send(&f));
                    prop_assert_eq!(&x, &y);
                    mapped.insert((v6, kind, peer), (b, ports(&x.1).0));
                }
            }
        }
        let mut firsts = Vec::new();
        for &(host, peer, kind, v6, miss) in &flows {
            let a = if v6 { v6_addr(0xfd, host) } else { v4_addr(10, host) };
            let (_, port) = mapped[&(v6, kind, peer)];
            // Every eighth to a port no mapping holds.
            let port = if miss == 0 { port ^ 0x5555 } else { port };
            firsts.push(build(v6, kind, a, public(v6), (30000 + u16::from(host), port), false, b"h"));
        }
        let x = batched.send_batch(&firsts);
        let y: Vec<_> = firsts.iter().map(|f| single.send(f)).collect();
        prop_assert_eq!(&x, &y);
        // The peers answer what got through; the senders send again.
        let mut seconds = Vec::new();
        for ((&(_, peer, kind, v6, _), (v, got)), first) in flows.iter().zip(&x).zip(&firsts) {
            if *v != Verdict::Pass {
                continue;
            }
            let (b, _) = mapped[&(v6, kind, peer)];
            seconds.push(build(v6, kind, b, public(v6), (5000, ports(got).0), true, b"r"));
            seconds.push(first.clone());
        }
        prop_assert!(!seconds.is_empty() || flows.iter().all(|f| f.4 == 0));
        let x = batched.send_batch(&seconds);
        let y: Vec<_> = seconds.iter().map(|f| single.send(f)).collect();
        prop_assert_eq!(x, y);
    }
}

fn v4_addr(first: u8, last: u8) -> [u8; 16] {
    let mut a = [0; 16];
    a[0] = first;
    a[3] = last + 1;
    a
}

fn v6_addr(first: u8, last: u8) -> [u8; 16] {
    let mut a = [0; 16];
    a[0] = first;
    a[15] = last + 1;
    a
}
