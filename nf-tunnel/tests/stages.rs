//! Encap / decap / reflect stages and the mapping cache working together, with byte-level
//! checks of what the stages emit.
#![expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::checksum;
use nf_core::flags;
use nf_core::flow::proto;
use nf_core::wire::ipv4::Ipv4Packet;
use nf_core::wire::udp::UdpPacket;
use nf_core::{Batch, DropReason, Instant, Packet, Stage, StageControl, StageExt, Verdict, ZoneId};
use nf_tunnel::mapping::{Answer, MappingConfig};
use nf_tunnel::profile::gwlb::{self, GwlbMetadata};
use nf_tunnel::{
    DecapConfig, DecapStage, Destination, EncapConfig, EncapStage, GenevePacket, MappingCache,
    OptionsBuilder, Payload, ReflectStage, Underlay, UnknownSource, VniTable, ZoneMap,
};
use proptest::prelude::*;

const HEADROOM: usize = 384;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Ethernet + IPv4 + UDP (or TCP) inner frame with the given ports and payload length.
fn inner_frame(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![
        0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa, 0x08, 0x00, // Ethernet
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // IPv4
    ];
    let tot = (20 + 8 + payload) as u16;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload).map(|i| i as u8));
    f
}

fn packet(frame: &[u8]) -> Packet<Vec<u8>> {
    let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    Packet::new(buf, HEADROOM, frame.len()).unwrap()
}

fn underlay4() -> Underlay {
    Underlay {
        src_mac: [2, 0, 0, 0, 1, 1],
        dst_mac: [2, 0, 0, 0, 2, 2],
        src: v4(192, 0, 2, 1),
        dst: v4(192, 0, 2, 2),
    }
}

fn underlay6() -> Underlay {
    Underlay {
        src_mac: [2, 0, 0, 0, 1, 1],
        dst_mac: [2, 0, 0, 0, 2, 2],
        src: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        dst: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
    }
}

fn gwlb_meta() -> GwlbMetadata {
    GwlbMetadata {
        endpoint_id: 0x0123_4567_89ab_cdef,
        attachment_id: 0xfedc_ba98_7654_3210,
        flow_cookie: 0xdead_beef,
    }
}

fn run<S: Stage<Vec<u8>>>(stage: &mut S, pkts: Vec<Packet<Vec<u8>>>) -> Vec<Packet<Vec<u8>>> {
    let mut b = Batch::new();
    for p in pkts {
        b.push(p).unwrap();
    }
    stage.process(Instant::ZERO, &mut b);
    b.drain().collect()
}

fn one<S: Stage<Vec<u8>>>(stage: &mut S, p: Packet<Vec<u8>>) -> Packet<Vec<u8>> {
    run(stage, vec![p]).pop().unwrap()
}

fn outer_udp_checksum_ok(frame: &[u8], v6: bool) -> bool {
    if v6 {
        let src: [u8; 16] = frame[22..38].try_into().unwrap();
        let dst: [u8; 16] = frame[38..54].try_into().unwrap();
        let u = UdpPacket::new_checked(&frame[54..]).unwrap();
        let len = u.payload().len() as u32 + 8;
        u.header().checksum.get() != 0
            && u.verify_checksum(checksum::pseudo_header_v6(&src, &dst, proto::UDP, len))
    } else {
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let h = *ip.header();
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        let len = u.payload().len() as u16 + 8;
        u.verify_checksum(checksum::pseudo_header_v4(h.src, h.dst, proto::UDP, len))
    }
}

#[test]
fn geneve_gwlb_encap_then_decap_restores_the_frame_and_reports_options() {
    let inner = inner_frame(1000, 53, 30);
    let mut encap = EncapStage::new(EncapConfig::geneve(
        gwlb_meta().options(),
        0x00ab_cdef,
        underlay4(),
    ))
    .unwrap();
    assert_eq!(encap.overhead(), 14 + 20 + 8 + 8 + 32);
    let p = one(&mut encap, packet(&inner));
    assert_eq!(p.meta.verdict, Verdict::Pass);
    let f = p.data().to_vec();
    // Outer IPv4: DF, checksum, total length, UDP to 6081, zero UDP checksum.
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert!(ip.header().dont_frag());
    assert_eq!(usize::from(ip.header().total_len.get()), f.len() - 14);
    assert_eq!(&f[36..38], &6081u16.to_be_bytes());
    assert_eq!(&f[40..42], &[0, 0]);
    let g = GenevePacket::new_checked(&f[42..]).unwrap();
    assert_eq!(g.header().vni(), 0x00ab_cdef);
    assert_eq!(g.payload(), &inner[..]);
    assert_eq!(GwlbMetadata::from_options(g.options()), Some(gwlb_meta()));

    let mut decap = DecapStage::new(gwlb::decap_config()).unwrap();
    let p = one(&mut decap, p);
    assert_eq!(p.meta.verdict, Verdict::Pass);
    assert_eq!(p.data(), &inner[..]);
    assert_eq!(p.meta.tunnel.vni, 0x00ab_cdef);
    assert_eq!(p.meta.tunnel.options, 0b111);
    assert_eq!(p.meta.zone, ZoneId(0x00ab_cdef));
    assert_eq!(p.meta.flow.zone, ZoneId(0x00ab_cdef));
    assert_eq!(p.meta.flow.src_port, 1000);
    assert_eq!(GwlbMetadata::from_packet(&p), Some(gwlb_meta()));
    assert_eq!(decap.counters().packets, 1);
}

#[test]
fn vxlan_over_ipv6_has_a_valid_udp_checksum_and_decaps() {
    let inner = inner_frame(4000, 80, 100);
    let mut encap = EncapStage::new(EncapConfig::vxlan(100, underlay6())).unwrap();
    let p = one(&mut encap, packet(&inner));
    let f = p.data().to_vec();
    assert_eq!(f.len(), 14 + 40 + 8 + 8 + inner.len());
    assert_eq!(&f[12..14], &[0x86, 0xdd]);
    assert!(outer_udp_checksum_ok(&f, true));
    let p = one(&mut DecapStage::new(DecapConfig::default()).unwrap(), p);
    assert_eq!(p.meta.verdict, Verdict::Pass);
    assert_eq!(p.data(), &inner[..]);
    assert_eq!(p.meta.tunnel.vni, 100);

    // Corrupt the payload: the checksum no longer verifies and decap drops it.
    let mut p = one(&mut encap, packet(&inner));
    let n = p.len();
    p.data_mut()[n - 1] ^= 0xff;
    let p = one(&mut DecapStage::new(DecapConfig::default()).unwrap(), p);
    assert_eq!(
        p.meta.verdict,
        Verdict::Drop(DropReason::TunnelBadUdpChecksum)
    );
}

#[test]
fn ipv4_udp_checksum_when_asked_and_bare_ip_payload() {
    let inner = inner_frame(4000, 80, 7);
    let mut cfg = EncapConfig::geneve(OptionsBuilder::new(), 5, underlay4());
    cfg.udp_checksum_v4 = true;
    cfg.payload = Payload::Ip;
    let mut encap = EncapStage::new(cfg).unwrap();
    let mut p = packet(&inner);
    p.meta.l3 = 14;
    p.meta.ethertype = 0x0800;
    let p = one(&mut encap, p);
    let f = p.data().to_vec();
    assert!(outer_udp_checksum_ok(&f, false));
    assert_ne!(&f[40..42], &[0, 0]);
    assert_eq!(&f[44..46], &[0x08, 0x00], "protocol type IPv4");
    assert_eq!(&f[50..], &inner[14..]);
    let p = one(&mut DecapStage::new(DecapConfig::default()).unwrap(), p);
    assert_eq!(p.meta.verdict, Verdict::Pass);
    assert_eq!(p.data(), &inner[14..]);
    assert_eq!((p.meta.l3, p.meta.l4), (0, 20));
    assert_eq!(p.meta.flow.dst_port, 80);
}

#[test]
fn source_port_is_constant_per_flow_in_range_and_spread() {
    let mut cfg = EncapConfig::vxlan(1, underlay4());
    cfg.src_ports = (40000, 40999);
    let mut encap = EncapStage::new(cfg).unwrap();
    let parse = |f: &[u8]| {
        let mut p = packet(f);
        nf_core::parse_frame(f, &mut p.meta, &nf_core::ParseConfig::default()).unwrap();
        p
    };
    let mut ports = std::collections::HashSet::new();
    for s in 0..200u16 {
        let a = one(&mut encap, parse(&inner_frame(1000 + s, 80, 10)));
        let b = one(&mut encap, parse(&inner_frame(1000 + s, 80, 99)));
        let pa = u16::from_be_bytes([a.data()[34], a.data()[35]]);
        let pb = u16::from_be_bytes([b.data()[34], b.data()[35]]);
        assert_eq!(pa, pb, "same flow, same port");
        assert!((40000..=40999).contains(&pa));
        ports.insert(pa);
    }
    assert!(
        ports.len() > 150,
        "{} distinct ports of 200 flows",
        ports.len()
    );
    // A valid flow hash takes precedence.
    let mut p = parse(&inner_frame(1, 2, 3));
    p.meta.flow_hash = 0;
    p.meta.flags |= flags::HASH_VALID;
    let p = one(&mut encap, p);
    assert_eq!(&p.data()[34..36], &40000u16.to_be_bytes());
}

#[test]
fn too_big_and_no_headroom_are_dropped_and_counted() {
    let mut cfg = EncapConfig::geneve(gwlb_meta().options(), 1, underlay4());
    cfg.mtu = 1500;
    let mut encap = EncapStage::new(cfg).unwrap();
    let overhead = encap.overhead() - 14;
    let fits = inner_frame(1, 2, 1500 - overhead - 42);
    let big = inner_frame(1, 2, 1500 - overhead - 42 + 1);
    let mut tight = packet(&fits);
    tight.pull_front(0).unwrap();
    let small = {
        let mut buf = vec![0u8; 10 + fits.len()];
        buf[10..].copy_from_slice(&fits);
        Packet::new(buf, 10, fits.len()).unwrap()
    };
    let out = run(&mut encap, vec![packet(&fits), packet(&big), small]);
    assert_eq!(out[0].meta.verdict, Verdict::Pass);
    assert_eq!(out[0].len() - 14, 1500);
    assert_eq!(out[1].meta.verdict, Verdict::Drop(DropReason::TooBig));
    assert_eq!(out[2].meta.verdict, Verdict::Drop(DropReason::NoHeadroom));
    let c = encap.counters();
    assert_eq!(c.drops.count(DropReason::TooBig), 1);
    assert_eq!(c.drops.count(DropReason::NoHeadroom), 1);
}

/// Encapsulates `inner` as Geneve with `opts`, then lets `edit` corrupt the Geneve header.
fn geneve_with(opts: OptionsBuilder, edit: impl FnOnce(&mut [u8])) -> Packet<Vec<u8>> {
    let mut encap = EncapStage::new(EncapConfig::geneve(opts, 9, underlay4())).unwrap();
    let mut p = one(&mut encap, packet(&inner_frame(1, 2, 8)));
    edit(&mut p.data_mut()[42..]);
    p
}

#[test]
fn decap_verdicts_follow_rfc_8926() {
    let mut decap = DecapStage::new(DecapConfig::default()).unwrap();
    let mut crit = OptionsBuilder::new();
    crit.push(0x0000, 0x80, &[0; 4]).unwrap();
    let cases: Vec<(&str, Packet<Vec<u8>>, Verdict)> = vec![
        (
            "plain",
            geneve_with(OptionsBuilder::new(), |_| {}),
            Verdict::Pass,
        ),
        (
            "unknown critical option",
            geneve_with(crit, |_| {}),
            Verdict::Drop(DropReason::TunnelCriticalOption),
        ),
        (
            "version 1",
            geneve_with(OptionsBuilder::new(), |g| g[0] |= 0x40),
            Verdict::Drop(DropReason::TunnelBadVersion),
        ),
        (
            "O bit",
            geneve_with(OptionsBuilder::new(), |g| g[1] |= 0x80),
            Verdict::ToControl,
        ),
        (
            "option length sum",
            geneve_with(gwlb_meta().options(), |g| g[11] += 1),
            Verdict::Drop(DropReason::TunnelBadOptions),
        ),
        (
            "reserved bits set",
            geneve_with(gwlb_meta().options(), |g| {
                g[1] |= 0x3f;
                g[7] = 0xff;
                g[11] |= 0xe0;
            }),
            Verdict::Pass,
        ),
        (
            "bad protocol",
            geneve_with(OptionsBuilder::new(), |g| g[2] = 0x88),
            Verdict::Drop(DropReason::TunnelBadProtocol),
        ),
    ];
    for (name, p, want) in cases {
        assert_eq!(one(&mut decap, p).meta.verdict, want, "{name}");
    }
    // The control message keeps its outer headers for the control path.
    let p = one(
        &mut decap,
        geneve_with(OptionsBuilder::new(), |g| g[1] |= 0x80),
    );
    assert_eq!(p.len(), 50 + 50);

    // GWLB requires its three options.
    let mut g = DecapStage::new(gwlb::decap_config()).unwrap();
    let mut two = OptionsBuilder::new();
    two.push(gwlb::CLASS, 1, &[0; 8]).unwrap();
    two.push(gwlb::CLASS, 2, &[0; 8]).unwrap();
    let mut short = two;
    short.push(gwlb::CLASS, 3, &[0; 8]).unwrap();
    assert_eq!(
        one(&mut g, geneve_with(two, |_| {})).meta.verdict,
        Verdict::Drop(DropReason::TunnelMissingOption)
    );
    assert_eq!(
        one(&mut g, geneve_with(short, |_| {})).meta.verdict,
        Verdict::Drop(DropReason::TunnelMissingOption)
    );
    assert_eq!(
        one(&mut g, packet(&inner_frame(1, 2, 3))).meta.verdict,
        Verdict::Drop(DropReason::NotTunnel)
    );

    // Unknown VNI with a table.
    let mut t = DecapStage::new(DecapConfig {
        zones: ZoneMap::Table(VniTable::new(&[(10, ZoneId(1))])),
        ..DecapConfig::default()
    })
    .unwrap();
    assert_eq!(
        one(&mut t, geneve_with(OptionsBuilder::new(), |_| {}))
            .meta
            .verdict,
        Verdict::Drop(DropReason::TunnelUnknownVni)
    );
    // Non-tunnel frames pass untouched by default.
    let plain = inner_frame(1, 2, 3);
    let p = one(&mut decap, packet(&plain));
    assert_eq!((p.meta.verdict, p.data()), (Verdict::Pass, &plain[..]));
}

#[test]
fn vxlan_without_i_flag_and_zero_udp6_checksum() {
    let mut encap = EncapStage::new(EncapConfig::vxlan(100, underlay4())).unwrap();
    let mut p = one(&mut encap, packet(&inner_frame(1, 2, 3)));
    p.data_mut()[42] = 0;
    assert_eq!(
        one(&mut DecapStage::new(DecapConfig::default()).unwrap(), p)
            .meta
            .verdict,
        Verdict::Drop(DropReason::TunnelBadFlags)
    );
    let mut encap6 = EncapStage::new(EncapConfig::vxlan(100, underlay6())).unwrap();
    let mut p = one(&mut encap6, packet(&inner_frame(1, 2, 3)));
    p.data_mut()[60..62].fill(0);
    assert_eq!(
        one(
            &mut DecapStage::new(DecapConfig::default()).unwrap(),
            p.clone()
        )
        .meta
        .verdict,
        Verdict::Drop(DropReason::TunnelBadUdpChecksum)
    );
    let lenient = DecapConfig {
        accept_zero_udp6_checksum: true,
        ..DecapConfig::default()
    };
    assert_eq!(
        one(&mut DecapStage::new(lenient).unwrap(), p).meta.verdict,
        Verdict::Pass
    );
}

/// The GWLB options' data stays in the metadata after the stripped headers are
/// overwritten by a new encapsulation, whatever order the options came in (the fast path's
/// precomputed layout, or its walk).
#[test]
fn gwlb_option_data_outlives_a_later_push() {
    let inner = inner_frame(1000, 53, 30);
    let m = gwlb_meta();
    let mut swapped = nf_tunnel::OptionsBuilder::new();
    swapped
        .push(gwlb::CLASS, gwlb::FLOW_COOKIE, &m.flow_cookie.to_be_bytes())
        .unwrap();
    swapped
        .push(gwlb::CLASS, gwlb::ENDPOINT_ID, &m.endpoint_id.to_be_bytes())
        .unwrap();
    swapped
        .push(
            gwlb::CLASS,
            gwlb::ATTACHMENT_ID,
            &m.attachment_id.to_be_bytes(),
        )
        .unwrap();
    let mut reordered = EncapConfig::geneve(swapped, 77, underlay4());
    reordered.payload = nf_tunnel::Payload::Ip;
    for cfg in [gwlb::encap_config(&m, 77, underlay4()), reordered] {
        let mut encap = EncapStage::new(cfg).unwrap();
        let mut p = packet(&inner);
        p.meta.l3 = 14;
        p.meta.ethertype = 0x0800;
        let sent = one(&mut encap, p);
        let decap = DecapStage::new(gwlb::decap_config()).unwrap();
        let mut d = DecapStage::new(gwlb::decap_config()).unwrap();
        let p = one(&mut d, sent);
        assert_eq!(p.meta.verdict, Verdict::Pass);
        assert_eq!(GwlbMetadata::from_meta(&p.meta.tunnel), Some(m));
        assert_eq!(
            decap.option_data(&p.meta.tunnel, 2),
            Some(&m.flow_cookie.to_be_bytes()[..])
        );
        // An Ethernet payload for a bare IP packet is refused, not sent malformed.
        let mut eth = EncapStage::new(EncapConfig::vxlan(5, underlay4())).unwrap();
        assert_eq!(
            one(&mut eth, p.clone()).meta.verdict,
            Verdict::Drop(DropReason::TunnelBadProtocol)
        );
        // A new encapsulation overwrites the stripped headers; the metadata keeps the data.
        let mut again = EncapConfig::geneve(nf_tunnel::OptionsBuilder::new(), 5, underlay4());
        again.payload = nf_tunnel::Payload::Ip;
        let p = one(&mut EncapStage::new(again).unwrap(), p);
        assert_eq!(p.meta.verdict, Verdict::Pass);
        assert!(
            !p.meta.has(flags::NO_L2),
            "the frame starts at Ethernet again"
        );
        assert_eq!(GwlbMetadata::from_meta(&p.meta.tunnel), Some(m));
    }
}

#[test]
fn gwlb_reflect_swaps_addresses_keeps_ports_and_options() {
    let inner = inner_frame(1000, 53, 30);
    let mut cfg = gwlb::encap_config(&gwlb_meta(), 77, underlay4());
    cfg.src_ports = (50000, 50000);
    let mut encap = EncapStage::new(cfg).unwrap();
    let mut p = packet(&inner);
    p.meta.l3 = 14;
    p.meta.ethertype = 0x0800;
    let sent = one(&mut encap, p);
    let sent_bytes = sent.data().to_vec();
    let mut decap = DecapStage::new(gwlb::decap_config()).unwrap();
    let mut p = one(&mut decap, sent);
    assert_eq!(p.meta.verdict, Verdict::Pass);
    // The appliance rewrites the inner packet (here: TTL) and sends it back.
    p.data_mut()[8] -= 1;
    let mut reflect = ReflectStage::new(1500, false);
    let back = one(&mut reflect, p);
    assert_eq!(back.meta.verdict, Verdict::Pass);
    let f = back.data();
    assert_eq!(f.len(), sent_bytes.len());
    assert_eq!(&f[0..6], &sent_bytes[6..12]);
    assert_eq!(&f[6..12], &sent_bytes[0..6]);
    assert_eq!(
        &f[26..30],
        &sent_bytes[30..34],
        "source is the old destination"
    );
    assert_eq!(&f[30..34], &sent_bytes[26..30]);
    assert_eq!(&f[34..38], &sent_bytes[34..38], "ports kept");
    assert_eq!(
        &f[42..82],
        &sent_bytes[42..82],
        "Geneve header and options kept"
    );
    assert!(Ipv4Packet::new_checked(&f[14..]).unwrap().verify_checksum());
    assert!(outer_udp_checksum_ok(f, false));
    // And it decapsulates again with the same metadata.
    let again = one(&mut DecapStage::new(gwlb::decap_config()).unwrap(), back);
    assert_eq!(GwlbMetadata::from_packet(&again), Some(gwlb_meta()));
    assert_eq!(
        one(&mut reflect, packet(&inner)).meta.verdict,
        Verdict::Drop(DropReason::NotTunnel)
    );
}

#[test]
fn anti_spoofing_with_the_mapping_cache() {
    let host = v4(192, 0, 2, 1); // underlay4().src: the encapsulating host
    let mut cache = MappingCache::new(MappingConfig::new(256, [5; 16])).unwrap();
    cache.insert(Instant::ZERO, 9, v4(10, 0, 0, 1), Some(host));
    let mut decap = DecapStage::new(DecapConfig::default())
        .unwrap()
        .with_source_check(cache);
    let good = geneve_with(OptionsBuilder::new(), |_| {});
    assert_eq!(one(&mut decap, good).meta.verdict, Verdict::Pass);
    // Same inner source, sent from another host.
    let mut spoofed = geneve_with(OptionsBuilder::new(), |_| {});
    spoofed.data_mut()[29] = 99;
    let c = checksum::checksum(&{
        let mut h = spoofed.data()[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    spoofed.data_mut()[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(
        one(&mut decap, spoofed).meta.verdict,
        Verdict::Drop(DropReason::TunnelSpoofed)
    );
    // Unknown inner source (other VNI): dropped by default and queried.
    let mut encap =
        EncapStage::new(EncapConfig::geneve(OptionsBuilder::new(), 10, underlay4())).unwrap();
    let other = one(&mut encap, packet(&inner_frame(1, 2, 8)));
    assert_eq!(
        one(&mut decap, other).meta.verdict,
        Verdict::Drop(DropReason::TunnelSpoofed)
    );
    let q = decap.source_cache_mut().unwrap().poll_queries().unwrap();
    assert_eq!(q.as_slice().len(), 1);
    assert_eq!(q.as_slice()[0].vni, 10);
    let mut lenient = DecapStage::new(DecapConfig {
        unknown_source: UnknownSource::Pass,
        ..DecapConfig::default()
    })
    .unwrap()
    .with_source_check(MappingCache::new(MappingConfig::new(8, [0; 16])).unwrap());
    let other = one(&mut encap, packet(&inner_frame(1, 2, 8)));
    assert_eq!(one(&mut lenient, other).meta.verdict, Verdict::Pass);
}

#[test]
fn encap_resolves_destinations_through_the_mapping_cache() {
    let mut cfg = EncapConfig::vxlan(3, underlay4());
    cfg.destination =
        Destination::Mapping(MappingCache::new(MappingConfig::new(64, [6; 16])).unwrap());
    let mut encap = EncapStage::new(cfg).unwrap();
    let frame = inner_frame(1, 2, 3);
    let parsed = || {
        let mut p = packet(&frame);
        nf_core::parse_frame(&frame, &mut p.meta, &nf_core::ParseConfig::default()).unwrap();
        p
    };
    let p = one(&mut encap, parsed());
    assert_eq!(&p.data()[30..34], &[192, 0, 2, 2], "miss: default path");
    assert_eq!(encap.default_path_count(), 1);
    let cache = encap.mapping_mut().unwrap();
    let q = cache.poll_queries().unwrap();
    assert_eq!(q.as_slice()[0].addr, v4(10, 0, 0, 2));
    cache.handle_answers(
        Instant::ZERO,
        &[Answer {
            vni: 3,
            addr: v4(10, 0, 0, 2),
            host: Some(v4(198, 51, 100, 7)),
        }],
    );
    let p = one(&mut encap, parsed());
    assert_eq!(&p.data()[30..34], &[198, 51, 100, 7]);
    assert!(
        Ipv4Packet::new_checked(&p.data()[14..])
            .unwrap()
            .verify_checksum()
    );
}

#[test]
fn next_hop_destinations() {
    let mut cfg = EncapConfig::vxlan(3, underlay4());
    cfg.destination = Destination::NextHop(vec![v4(198, 51, 100, 1), v4(198, 51, 100, 2)]);
    let mut encap = EncapStage::new(cfg).unwrap();
    let mut p = packet(&inner_frame(1, 2, 3));
    p.meta.next_hop = 1;
    let p = one(&mut encap, p);
    assert_eq!(&p.data()[30..34], &[198, 51, 100, 2]);
    // The list grows in place (a pool gained a backend); earlier positions keep their hosts.
    encap.next_hops_mut().unwrap().push(v4(198, 51, 100, 3));
    for (hop, last) in [(1, 2), (2, 3)] {
        let mut p = packet(&inner_frame(1, 2, 3));
        p.meta.next_hop = hop;
        assert_eq!(&one(&mut encap, p).data()[30..34], &[198, 51, 100, last]);
    }
    let mut fixed = EncapStage::new(EncapConfig::vxlan(3, underlay4())).unwrap();
    assert!(fixed.next_hops_mut().is_none());
}

proptest! {
    #[test]
    fn decap_never_panics_and_batch_equals_singles(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..16),
        seed in any::<u8>(),
    ) {
        // Half of the frames get a plausible outer prefix so the deeper checks run too.
        let template = one(
            &mut EncapStage::new(EncapConfig::geneve(gwlb_meta().options(), 1, underlay4())).unwrap(),
            packet(&inner_frame(1, 2, 3)),
        ).data().to_vec();
        let frames: Vec<Vec<u8>> = frames.into_iter().enumerate().map(|(i, f)| {
            if (i as u8 ^ seed) & 1 == 0 {
                let cut = usize::from(seed) % template.len();
                let mut g = template[..cut].to_vec();
                g.extend_from_slice(&f);
                g
            } else { f }
        }).collect();
        let cfg = gwlb::decap_config;
        let batch = run(&mut DecapStage::new(cfg()).unwrap(), frames.iter().map(|f| packet(f)).collect());
        for (f, b) in frames.iter().zip(&batch) {
            let s = one(&mut DecapStage::new(cfg()).unwrap(), packet(f));
            prop_assert_eq!(s.meta, b.meta);
            prop_assert_eq!(s.data(), b.data());
        }
    }
}

/// Every `(stage, counter)` a pipeline reports, in order.
fn counter_names(pipeline: &impl StageControl) -> Vec<(&'static str, &'static str)> {
    let mut seen = Vec::new();
    pipeline.visit_counters(&mut |stage, counter, _| seen.push((stage, counter)));
    seen
}

const COMMON: [&str; 5] = ["batches", "packets", "to_control", "tx", "drops"];
const MAPPING: [&str; 13] = [
    "mapping_hits",
    "mapping_misses",
    "mapping_queries",
    "mapping_queue_full",
    "mapping_evictions",
    "mapping_expired",
    "mapping_rate_limited",
    "mapping_bucket_full",
    "mapping_pending_recycled",
    "mapping_quota_recycled",
    "mapping_quota_refused",
    "mapping_shared_budget",
    "mapping_unsolicited",
];

/// Decap (anti-spoofing on, unknown sources pass), reflect, encap through a mapping cache.
fn mapped_pipeline() -> impl Stage<Vec<u8>> {
    let decap = DecapStage::new(DecapConfig {
        unknown_source: UnknownSource::Pass,
        ..DecapConfig::default()
    })
    .unwrap()
    .with_source_check(MappingCache::new(MappingConfig::new(64, [1; 16])).unwrap());
    let mut cfg = EncapConfig::vxlan(3, underlay4());
    cfg.destination =
        Destination::Mapping(MappingCache::new(MappingConfig::new(64, [2; 16])).unwrap());
    decap
        .then(ReflectStage::new(1500, false))
        .then(EncapStage::new(cfg).unwrap())
}

/// A Geneve packet decap accepts and one it drops (version 1).
fn good_and_bad() -> Vec<Packet<Vec<u8>>> {
    vec![
        geneve_with(OptionsBuilder::new(), |_| {}),
        geneve_with(OptionsBuilder::new(), |h| h[0] |= 0x40),
    ]
}

#[test]
fn every_stage_reports_its_counters_under_stable_names() {
    let names = |stage: &'static str, own: &[&'static str], drops: &[DropReason]| {
        let mut v: Vec<_> = COMMON.iter().chain(own).map(|&c| (stage, c)).collect();
        let at = COMMON.len();
        for (k, r) in drops.iter().enumerate() {
            v.insert(at + k, (stage, r.counter_name()));
        }
        v
    };
    // Without caches: no mapping counters; drop counters only for reasons seen.
    let bad = DropReason::TunnelBadVersion;
    assert_eq!(bad.counter_name(), "drop_tunnel_bad_version");
    let mut plain = DecapStage::new(DecapConfig::default())
        .unwrap()
        .then(ReflectStage::new(1500, false))
        .then(EncapStage::new(EncapConfig::vxlan(3, underlay4())).unwrap());
    run(&mut plain, good_and_bad());
    let mut golden = names("tunnel_decap", &[], &[bad]);
    golden.extend(names("tunnel_reflect", &[], &[]));
    golden.extend(names("tunnel_encap", &["default_path"], &[]));
    assert_eq!(counter_names(&plain), golden);

    let mut mapped = mapped_pipeline();
    run(&mut mapped, good_and_bad());
    let mut golden = names("tunnel_decap", &MAPPING, &[bad]);
    golden.extend(names("tunnel_reflect", &[], &[]));
    let encap_own: Vec<_> = ["default_path"].into_iter().chain(MAPPING).collect();
    golden.extend(names("tunnel_encap", &encap_own, &[]));
    assert_eq!(counter_names(&mapped), golden);
}

#[test]
fn encap_headroom_is_what_it_pushes_and_a_chain_adds_it_up() {
    let cases = [
        (
            EncapConfig::geneve(gwlb_meta().options(), 1, underlay4()),
            14 + 20 + 8 + 8 + 32,
        ),
        (EncapConfig::vxlan(1, underlay6()), 14 + 40 + 8 + 8),
    ];
    for (cfg, want) in cases {
        let mut encap = EncapStage::new(cfg).unwrap();
        assert_eq!(encap.headroom(), want);
        let frame = inner_frame(1, 2, 8);
        let with = |room: usize| {
            let mut buf = vec![0u8; room + frame.len()];
            buf[room..].copy_from_slice(&frame);
            Packet::new(buf, room, frame.len()).unwrap()
        };
        assert_eq!(one(&mut encap, with(want)).meta.verdict, Verdict::Pass);
        assert_eq!(
            one(&mut encap, with(want - 1)).meta.verdict,
            Verdict::Drop(DropReason::NoHeadroom)
        );
    }
    // Decap and reflect push nothing the frame did not arrive with.
    let pipeline = mapped_pipeline();
    assert_eq!(pipeline.headroom(), 14 + 20 + 8 + 8);
}

#[test]
fn a_chain_drives_the_mapping_caches_timers() {
    let secs = |s: u64| Instant::from_nanos(s * 1_000_000_000);
    let mut pipeline = mapped_pipeline();
    assert_eq!(pipeline.poll_timeout(), None, "no entry, no timer");
    // One packet misses both caches: a pending entry and a query each.
    let mut b = Batch::new();
    b.push(geneve_with(OptionsBuilder::new(), |_| {})).unwrap();
    pipeline.process(secs(0), &mut b);
    let value = |p: &dyn StageControl, stage, counter| {
        let mut n = None;
        p.visit_counters(&mut |s, c, v| {
            if (s, c) == (stage, counter) {
                n = Some(v);
            }
        });
        n.unwrap()
    };
    for stage in ["tunnel_decap", "tunnel_encap"] {
        assert_eq!(value(&pipeline, stage, "mapping_queries"), 1);
    }
    let mut drive = |now: Instant| {
        let mut work = 0;
        while pipeline.poll_timeout().is_some_and(|t| t <= now) {
            // Enough for both 64-slot tables: the first stage takes what it needs.
            let w = pipeline.handle_timeout(now, 1024);
            assert!(w <= 1024);
            work += w;
        }
        work
    };
    assert_eq!(drive(secs(1)), 0, "not due yet");
    // Unanswered: the sweep re-sends each query, then expires the entries.
    assert!(drive(secs(20)) > 0);
    assert!(drive(secs(100)) > 0);
    for stage in ["tunnel_decap", "tunnel_encap"] {
        assert_eq!(value(&pipeline, stage, "mapping_queries"), 2, "{stage}");
        assert_eq!(value(&pipeline, stage, "mapping_expired"), 1, "{stage}");
    }
}
