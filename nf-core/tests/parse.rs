//! Parse-stage tests: byte fixtures for every outcome, independent frames from etherparse,
//! and properties (no panic on any bytes, every header truncation dropped, batch = singles).
#![expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use etherparse::PacketBuilder;
use nf_core::flags;
use nf_core::flow::proto;
use nf_core::wire::ethernet::EthernetRepr;
use nf_core::wire::ethertype;
use nf_core::wire::ipv4::Ipv4Repr;
use nf_core::wire::ipv6::{FragmentInfo, Ipv6ExtRepr, Ipv6Repr, next_header};
use nf_core::wire::tcp::TcpRepr;
use nf_core::wire::udp::UdpRepr;
use nf_core::{
    Batch, DropReason, FlowKey, Instant, Meta, NonIpAction, Packet, ParseConfig, ParseStage,
    Parsed, Stage, Verdict, ZoneId, parse_frame,
};
use proptest::prelude::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn run(frame: &[u8]) -> Meta {
    run_cfg(frame, ParseConfig::default())
}

fn run_cfg(frame: &[u8], cfg: ParseConfig) -> Meta {
    let mut b = Batch::new();
    b.push(Packet::new(frame.to_vec(), 0, frame.len()).unwrap())
        .unwrap();
    ParseStage::new(cfg).process(Instant::ZERO, &mut b);
    b.packets()[0].meta
}

fn eth(et: u16) -> Vec<u8> {
    let mut v = vec![0u8; 14];
    EthernetRepr {
        src: MAC_A,
        dst: MAC_B,
        ethertype: et,
    }
    .emit(&mut v)
    .unwrap();
    v
}

fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
    let r = Ipv4Repr {
        src: [192, 0, 2, 1],
        dst: [198, 51, 100, 7],
        proto,
        ttl: 64,
        dscp_ecn: 0,
        ident: 1,
        dont_frag: true,
        more_frags: false,
        frag_offset: 0,
        payload_len: payload.len() as u16,
        options: [0; 40],
        options_len: 0,
    };
    let mut v = vec![0u8; 20];
    r.emit(&mut v).unwrap();
    v.extend_from_slice(payload);
    v
}

fn tcp(sp: u16, dp: u16, flags: u8) -> Vec<u8> {
    let mut v = vec![0u8; 20];
    TcpRepr {
        src_port: sp,
        dst_port: dp,
        seq: 1,
        ack: 0,
        flags,
        window: 1000,
        checksum: 0,
        urgent: 0,
        options: [0; 40],
        options_len: 0,
    }
    .emit(&mut v)
    .unwrap();
    v
}

fn udp(sp: u16, dp: u16, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    UdpRepr {
        src_port: sp,
        dst_port: dp,
        payload_len: data.len() as u16,
        checksum: 0,
    }
    .emit(&mut v)
    .unwrap();
    v.extend_from_slice(data);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn ipv4_tcp_fixture() {
    let f = cat(&[
        &eth(ethertype::IPV4),
        &ipv4(proto::TCP, &tcp(40000, 443, 0x02)),
    ]);
    let m = run(&f);
    assert_eq!(m.verdict, Verdict::Pass);
    assert_eq!(
        m.flow,
        FlowKey::v4(
            ZoneId(0),
            [192, 0, 2, 1],
            [198, 51, 100, 7],
            proto::TCP,
            40000,
            443
        )
    );
    assert_eq!((m.l3, m.l4, m.payload), (14, 34, 54));
    assert_eq!(m.tcp_flags, 0x02);
    assert!(m.has(flags::L3_VALID | flags::L4_VALID));
    assert!(!m.has(flags::FRAGMENT));
}

#[test]
fn zone_comes_from_metadata() {
    let f = cat(&[&eth(ethertype::IPV4), &ipv4(proto::UDP, &udp(1, 2, b"x"))]);
    let mut b = Batch::new();
    let mut p = Packet::new(f.clone(), 0, f.len()).unwrap();
    p.meta.zone = ZoneId(77);
    b.push(p).unwrap();
    ParseStage::default().process(Instant::ZERO, &mut b);
    assert_eq!(b.packets()[0].meta.flow.zone, ZoneId(77));
}

#[test]
fn vlan_qinq_and_too_deep() {
    let tag = |vid: u16, et: u16| -> Vec<u8> { cat(&[&vid.to_be_bytes(), &et.to_be_bytes()]) };
    let inner = ipv4(proto::UDP, &udp(53, 5353, b""));
    let one = cat(&[&eth(ethertype::VLAN), &tag(10, ethertype::IPV4), &inner]);
    let m = run(&one);
    assert_eq!(
        (m.verdict, m.vlan_count, m.vlan[0], m.l3),
        (Verdict::Pass, 1, 10, 18)
    );
    let two = cat(&[
        &eth(ethertype::QINQ),
        &tag(100, ethertype::VLAN),
        &tag(20, ethertype::IPV4),
        &inner,
    ]);
    let m = run(&two);
    assert_eq!(
        (m.verdict, m.vlan_count, m.vlan, m.l3),
        (Verdict::Pass, 2, [100, 20], 22)
    );
    assert_eq!(m.flow.dst_port, 5353);
    let three = cat(&[
        &eth(ethertype::QINQ),
        &tag(1, ethertype::VLAN),
        &tag(2, ethertype::VLAN),
        &tag(3, ethertype::IPV4),
        &inner,
    ]);
    assert_eq!(run(&three).verdict, Verdict::Drop(DropReason::VlanTooDeep));
    assert_eq!(
        run(&one[..16]).verdict,
        Verdict::Drop(DropReason::EthTruncated)
    );
}

#[test]
fn non_ip_goes_to_control_or_drop() {
    let arp = cat(&[&eth(ethertype::ARP), &[0u8; 28]]);
    assert_eq!(run(&arp).verdict, Verdict::ToControl);
    let cfg = ParseConfig {
        non_ip: NonIpAction::Drop,
        ..ParseConfig::default()
    };
    assert_eq!(run_cfg(&arp, cfg).verdict, Verdict::Drop(DropReason::NonIp));
    let mut m = Meta::default();
    assert_eq!(parse_frame(&arp, &mut m, &cfg), Ok(Parsed::NonIp));
}

#[test]
fn ipv4_header_errors() {
    let good = cat(&[
        &eth(ethertype::IPV4),
        &ipv4(proto::UDP, &udp(1, 2, b"abcd")),
    ]);
    let with = |i: usize, v: u8| {
        let mut f = good.clone();
        f[i] = v;
        run(&f).verdict
    };
    assert_eq!(with(14, 0x55), Verdict::Drop(DropReason::Ipv4BadVersion));
    assert_eq!(with(14, 0x44), Verdict::Drop(DropReason::Ipv4BadIhl));
    assert_eq!(with(17, 19), Verdict::Drop(DropReason::Ipv4BadTotalLength)); // below IHL
    assert_eq!(with(17, 200), Verdict::Drop(DropReason::Ipv4BadTotalLength)); // beyond frame
    assert_eq!(with(22, 63), Verdict::Drop(DropReason::Ipv4BadChecksum)); // TTL changed
    let cfg = ParseConfig {
        verify_ipv4_checksum: false,
        ..ParseConfig::default()
    };
    let mut f = good.clone();
    f[22] = 63;
    assert_eq!(run_cfg(&f, cfg).verdict, Verdict::Pass);
    assert_eq!(
        run(&good[..14 + 19]).verdict,
        Verdict::Drop(DropReason::Ipv4Truncated)
    );
    // Ethernet padding after the IP packet is fine and excluded.
    let padded = cat(&[&good, &[0u8; 10]]);
    assert_eq!(run(&padded).verdict, Verdict::Pass);
}

#[test]
fn ipv4_options_walk() {
    let mut r = Ipv4Repr {
        src: [10, 0, 0, 1],
        dst: [10, 0, 0, 2],
        proto: proto::UDP,
        ttl: 1,
        dscp_ecn: 0,
        ident: 9,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
        payload_len: 8,
        options: [0; 40],
        options_len: 8,
    };
    r.options[..8].copy_from_slice(&[0x94, 4, 0, 0, 1, 1, 1, 0]); // Router Alert, NOP x3, EOL
    let mut ip = vec![0u8; 36];
    r.emit(&mut ip).unwrap();
    ip[28..].copy_from_slice(&udp(7, 9, b""));
    let m = run(&cat(&[&eth(ethertype::IPV4), &ip]));
    assert_eq!(m.verdict, Verdict::Pass);
    assert!(m.has(flags::IP_OPTIONS));
    assert_eq!((m.l4, m.flow.src_port), (14 + 28, 7));
    // A timestamp option claiming 40 bytes in an 8-byte field.
    r.options[..8].copy_from_slice(&[0x44, 40, 5, 0, 0, 0, 0, 0]);
    r.emit(&mut ip).unwrap();
    assert_eq!(
        run(&cat(&[&eth(ethertype::IPV4), &ip])).verdict,
        Verdict::Drop(DropReason::Ipv4BadOptions)
    );
}

#[test]
fn ipv4_fragments() {
    let frag = |more: bool, off: u16, payload: &[u8], p: u8| {
        let r = Ipv4Repr {
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
            proto: p,
            ttl: 9,
            dscp_ecn: 0,
            ident: 5,
            dont_frag: false,
            more_frags: more,
            frag_offset: off,
            payload_len: payload.len() as u16,
            options: [0; 40],
            options_len: 0,
        };
        let mut ip = vec![0u8; 20];
        r.emit(&mut ip).unwrap();
        cat(&[&eth(ethertype::IPV4), &ip, payload])
    };
    let first = run(&frag(true, 0, &tcp(1000, 80, 0x18), proto::TCP));
    assert_eq!((first.verdict, first.flow.dst_port), (Verdict::Pass, 80));
    assert!(first.has(flags::FRAGMENT) && !first.has(flags::LATER_FRAGMENT));
    let later = run(&frag(false, 185, &[0u8; 16], proto::TCP));
    assert_eq!(
        (later.verdict, later.flow.src_port, later.flow.dst_port),
        (Verdict::Pass, 0, 0)
    );
    assert!(later.has(flags::LATER_FRAGMENT));
    assert_eq!(
        run(&frag(true, 1, &[0u8; 16], proto::TCP)).verdict,
        Verdict::Drop(DropReason::Ipv4BadFragment)
    );
    // First fragment too short for the TCP header.
    assert_eq!(
        run(&frag(true, 0, &[0u8; 8], proto::TCP)).verdict,
        Verdict::Drop(DropReason::Ipv4BadFragment)
    );
}

#[test]
fn ipv6_extension_chain_and_errors() {
    let body = udp(546, 547, b"dhcp");
    let mut ext = vec![0u8; 8 + 16 + 8];
    let mut o = Ipv6ExtRepr::Options {
        kind: next_header::HOP_BY_HOP,
        next_header: next_header::ROUTING,
        len8: 0,
    }
    .emit(&mut ext)
    .unwrap();
    o += Ipv6ExtRepr::Options {
        kind: next_header::ROUTING,
        next_header: next_header::DEST_OPTS,
        len8: 1,
    }
    .emit(&mut ext[o..])
    .unwrap();
    Ipv6ExtRepr::Options {
        kind: next_header::DEST_OPTS,
        next_header: proto::UDP,
        len8: 0,
    }
    .emit(&mut ext[o..])
    .unwrap();
    let v6 = |nh: u8, payload: &[u8]| {
        let r = Ipv6Repr {
            src: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2],
            next_header: nh,
            hop_limit: 1,
            traffic_class: 0,
            flow_label: 7,
            payload_len: payload.len() as u16,
        };
        let mut h = vec![0u8; 40];
        r.emit(&mut h).unwrap();
        cat(&[&eth(ethertype::IPV6), &h, payload])
    };
    let m = run(&v6(next_header::HOP_BY_HOP, &cat(&[&ext, &body])));
    assert_eq!(m.verdict, Verdict::Pass);
    assert_eq!(
        (m.flow.proto, m.flow.src_port, m.flow.dst_port, m.l4),
        (proto::UDP, 546, 547, 14 + 40 + 32)
    );
    assert!(m.has(flags::IP_OPTIONS));
    // Truncated chain, HBH not first, too many headers, bad payload length.
    assert_eq!(
        run(&v6(next_header::HOP_BY_HOP, &ext[..12])).verdict,
        Verdict::Drop(DropReason::Ipv6ExtTruncated)
    );
    let mut not_first = ext.clone();
    not_first[8] = next_header::HOP_BY_HOP; // routing header's next header -> HBH
    assert_eq!(
        run(&v6(next_header::HOP_BY_HOP, &cat(&[&not_first, &body]))).verdict,
        Verdict::Drop(DropReason::Ipv6HopByHopNotFirst)
    );
    let many: Vec<u8> = [60u8, 0, 1, 4, 0, 0, 0, 0].repeat(9);
    assert_eq!(
        run(&v6(next_header::DEST_OPTS, &many)).verdict,
        Verdict::Drop(DropReason::Ipv6TooManyExt)
    );
    let mut f = v6(proto::UDP, &body);
    f[14 + 5] += 1;
    assert_eq!(
        run(&f).verdict,
        Verdict::Drop(DropReason::Ipv6BadPayloadLength)
    );
    f[14] = 0x40;
    assert_eq!(run(&f).verdict, Verdict::Drop(DropReason::Ipv6BadVersion));
    // Fragments: first must carry the transport header; later ones have no ports.
    let mut fh = [0u8; 8];
    Ipv6ExtRepr::Fragment {
        next_header: proto::TCP,
        info: FragmentInfo {
            offset: 0,
            more: true,
            ident: 1,
        },
    }
    .emit(&mut fh)
    .unwrap();
    assert_eq!(
        run(&v6(next_header::FRAGMENT, &cat(&[&fh, &[0u8; 10]]))).verdict,
        Verdict::Drop(DropReason::Ipv6BadFragment)
    );
    let ok = run(&v6(next_header::FRAGMENT, &cat(&[&fh, &tcp(5, 6, 0x10)])));
    assert_eq!((ok.verdict, ok.flow.src_port), (Verdict::Pass, 5));
    Ipv6ExtRepr::Fragment {
        next_header: proto::TCP,
        info: FragmentInfo {
            offset: 3,
            more: false,
            ident: 1,
        },
    }
    .emit(&mut fh)
    .unwrap();
    let later = run(&v6(next_header::FRAGMENT, &cat(&[&fh, &[0u8; 10]])));
    assert_eq!(
        (later.verdict, later.flow.proto, later.flow.src_port),
        (Verdict::Pass, proto::TCP, 0)
    );
    assert!(later.has(flags::LATER_FRAGMENT));
}

#[test]
fn transport_errors() {
    let t = |p: u8, l4: &[u8]| run(&cat(&[&eth(ethertype::IPV4), &ipv4(p, l4)])).verdict;
    assert_eq!(
        t(proto::TCP, &tcp(1, 2, 0)[..19]),
        Verdict::Drop(DropReason::TcpTruncated)
    );
    let mut bad = tcp(1, 2, 0);
    bad[12] = 0x40;
    assert_eq!(
        t(proto::TCP, &bad),
        Verdict::Drop(DropReason::TcpBadDataOffset)
    );
    bad[12] = 0x60;
    assert_eq!(t(proto::TCP, &bad), Verdict::Drop(DropReason::TcpTruncated));
    assert_eq!(
        t(proto::UDP, &[0u8; 7]),
        Verdict::Drop(DropReason::UdpTruncated)
    );
    let mut u = udp(1, 2, b"xy");
    u[5] = 11;
    assert_eq!(t(proto::UDP, &u), Verdict::Drop(DropReason::UdpBadLength));
    u[5] = 7;
    assert_eq!(t(proto::UDP, &u), Verdict::Drop(DropReason::UdpBadLength));
    assert_eq!(
        t(proto::ICMP, &[8, 0, 0, 0]),
        Verdict::Drop(DropReason::IcmpTruncated)
    );
    // Unknown protocols pass with ports 0.
    assert_eq!(t(proto::GRE, &[0u8; 4]), Verdict::Pass);
}

#[test]
fn icmp_query_and_error_keys() {
    let echo = cat(&[
        &eth(ethertype::IPV4),
        &ipv4(proto::ICMP, &[8, 0, 0, 0, 0x12, 0x34, 0, 1]),
    ]);
    let m = run(&echo);
    assert_eq!(
        (m.flow.src_port, m.flow.dst_port, m.icmp_type),
        (0x1234, 0x1234, 8)
    );
    let unreach = cat(&[
        &eth(ethertype::IPV4),
        &ipv4(
            proto::ICMP,
            &cat(&[
                &[3, 3, 0, 0, 0, 0, 0, 0],
                &ipv4(proto::UDP, &udp(1, 2, b"")),
            ]),
        ),
    ]);
    let m = run(&unreach);
    assert_eq!((m.verdict, m.flow.src_port), (Verdict::Pass, 0));
    assert!(m.has(flags::ICMP_ERROR));
}

#[test]
fn counters_count_every_drop_once() {
    let good = cat(&[&eth(ethertype::IPV4), &ipv4(proto::UDP, &udp(1, 2, b""))]);
    let mut b = Batch::new();
    for f in [&good[..], &good[..5], &good[..20], &good[..]] {
        b.push(Packet::new(f.to_vec(), 0, f.len()).unwrap())
            .unwrap();
    }
    b.set_verdict(3, Verdict::ToControl); // already decided: skipped
    let mut s = ParseStage::default();
    s.process(Instant::ZERO, &mut b);
    let c = nf_core::StageControl::counters(&s);
    assert_eq!((c.batches, c.packets, c.drops.total()), (1, 3, 2));
    assert_eq!(c.drops.count(DropReason::EthTruncated), 1);
    assert_eq!(c.drops.count(DropReason::Ipv4Truncated), 1);
    assert_eq!(b.packets()[3].meta.verdict, Verdict::ToControl);
}

/// A valid frame built by etherparse (an independent implementation) and the key we expect.
fn etherparse_frame() -> impl Strategy<Value = (Vec<u8>, FlowKey)> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<u16>(),
        0u8..8,
        proptest::collection::vec(any::<u8>(), 0..64),
        0u16..4096,
    )
        .prop_map(|(s, d, sp, dp, kind, payload, vid)| {
            let s4 = [s[0], s[1], s[2], s[3]];
            let d4 = [d[0], d[1], d[2], d[3]];
            let base = PacketBuilder::ethernet2(MAC_A, MAC_B);
            let mut out = Vec::new();
            macro_rules! w {
                ($b:expr, $k:expr) => {{
                    let b = $b;
                    out.reserve(b.size(payload.len()));
                    b.write(&mut out, &payload).unwrap();
                    $k
                }};
            }
            let vid = vid.try_into().unwrap();
            let key = match kind {
                0 => w!(
                    base.ipv4(s4, d4, 64).tcp(sp, dp, 1, 100),
                    FlowKey::v4(ZoneId(0), s4, d4, proto::TCP, sp, dp)
                ),
                1 => w!(
                    base.ipv4(s4, d4, 64).udp(sp, dp),
                    FlowKey::v4(ZoneId(0), s4, d4, proto::UDP, sp, dp)
                ),
                2 => w!(
                    base.ipv6(s, d, 64).tcp(sp, dp, 1, 100),
                    FlowKey::v6(ZoneId(0), s, d, proto::TCP, sp, dp)
                ),
                3 => w!(
                    base.ipv6(s, d, 64).udp(sp, dp),
                    FlowKey::v6(ZoneId(0), s, d, proto::UDP, sp, dp)
                ),
                4 => w!(
                    base.single_vlan(vid).ipv4(s4, d4, 64).udp(sp, dp),
                    FlowKey::v4(ZoneId(0), s4, d4, proto::UDP, sp, dp)
                ),
                5 => w!(
                    base.ipv4(s4, d4, 64).icmpv4_echo_request(sp, dp),
                    FlowKey::v4(ZoneId(0), s4, d4, proto::ICMP, sp, sp)
                ),
                6 => w!(
                    base.ipv6(s, d, 64).icmpv6_echo_request(sp, dp),
                    FlowKey::v6(ZoneId(0), s, d, proto::ICMPV6, sp, sp)
                ),
                _ => w!(
                    base.single_vlan(vid).ipv6(s, d, 64).tcp(sp, dp, 1, 100),
                    FlowKey::v6(ZoneId(0), s, d, proto::TCP, sp, dp)
                ),
            };
            (out, key)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let m = run(&data);
        if m.verdict == Verdict::Pass {
            prop_assert!(usize::from(m.payload) <= data.len());
            prop_assert!(m.l3 <= m.l4 && m.l4 <= m.payload);
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic((frame, _) in etherparse_frame(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut f = frame;
        let i = at.index(f.len());
        f[i] = byte;
        let _ = run(&f);
    }

    #[test]
    fn etherparse_frames_parse_to_the_expected_key((frame, key) in etherparse_frame()) {
        let m = run(&frame);
        prop_assert_eq!(m.verdict, Verdict::Pass);
        prop_assert_eq!(m.flow, key);
        prop_assert!(m.has(flags::L4_VALID));
    }

    #[test]
    fn every_header_truncation_is_dropped((frame, _) in etherparse_frame(), cut in any::<prop::sample::Index>()) {
        // IP lengths cover the whole frame, so any strict prefix is malformed.
        let n = cut.index(frame.len());
        let m = run(&frame[..n]);
        prop_assert!(matches!(m.verdict, Verdict::Drop(_)), "prefix {} of {} gave {:?}", n, frame.len(), m.verdict);
    }

    #[test]
    fn batch_equals_singles(frames in proptest::collection::vec(prop_oneof![
        etherparse_frame().prop_map(|(f, _)| f),
        proptest::collection::vec(any::<u8>(), 0..80),
    ], 1..64)) {
        let mut b = Batch::new();
        for f in &frames {
            b.push(Packet::new(f.clone(), 0, f.len()).unwrap()).unwrap();
        }
        ParseStage::default().process(Instant::ZERO, &mut b);
        for (p, f) in b.packets().iter().zip(&frames) {
            prop_assert_eq!(p.meta, run(f));
        }
    }

    #[test]
    fn our_emit_is_read_back_by_us_and_etherparse(s in any::<[u8; 4]>(), d in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>(), ttl in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..32)) {
        let f = cat(&[&eth(ethertype::IPV4), &{
            let r = Ipv4Repr { src: s, dst: d, proto: proto::UDP, ttl, dscp_ecn: 0, ident: 0, dont_frag: true, more_frags: false, frag_offset: 0, payload_len: (8 + data.len()) as u16, options: [0; 40], options_len: 0 };
            let mut ip = vec![0u8; 20];
            r.emit(&mut ip).unwrap();
            ip
        }, &udp(sp, dp, &data)]);
        let m = run(&f);
        prop_assert_eq!(m.flow, FlowKey::v4(ZoneId(0), s, d, proto::UDP, sp, dp));
        let e = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        match e.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                prop_assert_eq!(ip.header().source(), s);
                prop_assert_eq!(ip.header().ttl(), ttl);
                prop_assert_eq!(ip.header().header_checksum(), ip.header().to_header().calc_header_checksum());
            }
            _ => prop_assert!(false, "etherparse did not see IPv4"),
        }
        match e.transport {
            Some(etherparse::TransportSlice::Udp(u)) => prop_assert_eq!((u.source_port(), u.destination_port()), (sp, dp)),
            _ => prop_assert!(false, "etherparse did not see UDP"),
        }
    }
}
