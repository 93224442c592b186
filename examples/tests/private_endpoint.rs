//! AWS PrivateLink's endpoint pattern as a composition, with the tunnel stages on both sides:
//! consumers' VXLAN frames (VNI 100, 101) → `DecapStage` → `Conntrack<Endpoint>` →
//! `EncapStage` (VNI from the zone) towards the provider (VNI 200), and the provider's replies
//! back through the same pipeline. Frames are built and checked with etherparse, an
//! independent implementation: VNIs, inner addresses and ports (the provider sees only its own
//! address space), every checksum, overlapping consumers kept apart, and a third zone's packet
//! with the provider's tuple finding nothing. tshark, another independent dissector, reads
//! what the gateway emits (skipped visibly when it is missing, outside CI), for IPv4
//! endpoints and for IPv6 ones (inner IPv6 in the same tunnels).
#![expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod common;

use core::net::{IpAddr, Ipv4Addr};
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use nf_core::conntrack::{Conntrack, ConntrackConfig};
use nf_core::flow::proto;
use nf_core::{
    Batch, Chain, DropReason, Instant, Packet, Stage, StageControl, StageExt, Verdict, ZoneId,
};
use nf_nat::{AllocatorConfig, Endpoint, EndpointRule, EndpointSide, Profile};
use nf_tunnel::{
    DecapConfig, DecapStage, EncapConfig, EncapStage, TunnelKind, Underlay, VXLAN_PORT, VniSource,
};

const HEADROOM: usize = 256;
/// The gateway's underlay address, and the hosts behind the consumers' and the provider's
/// VNIs.
const GATEWAY: [u8; 4] = [192, 0, 2, 1];
const HOST: [u8; 4] = [192, 0, 2, 50];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// The consumers (both use the same address) and the endpoint in their zones.
const CONSUMER: [u8; 4] = [10, 0, 0, 5];
const ENDPOINT: [u8; 4] = [10, 0, 0, 200];
/// The provider's service and the pool of its own addresses the consumers appear from.
const SERVICE: [u8; 4] = [10, 0, 9, 1];
const POOL: [u8; 4] = [10, 0, 255, 1];

const CONSUMER_A: u32 = 100;
const CONSUMER_B: u32 = 101;
const PROVIDER: u32 = 200;
const THIRD: u32 = 300;

type Gateway = Chain<Chain<DecapStage, Conntrack<Endpoint>>, EncapStage>;

fn gateway() -> Gateway {
    let pool = AllocatorConfig::new(
        Profile::Hyperplane,
        vec![IpAddr::V4(Ipv4Addr::from(POOL))],
        *b"endpoint secret!",
    )
    .with_max_mappings(1024);
    let rule = |consumer: u32| {
        EndpointRule::new(
            proto::TCP,
            EndpointSide::new(ZoneId(consumer), "10.0.0.200:443".parse().unwrap()),
            EndpointSide::new(ZoneId(PROVIDER), "10.0.9.1:8443".parse().unwrap()),
            pool.clone(),
        )
    };
    gateway_with(vec![rule(CONSUMER_A), rule(CONSUMER_B)])
}

/// The gateway with `rules`.
fn gateway_with(rules: Vec<EndpointRule>) -> Gateway {
    let decap = DecapStage::new(DecapConfig {
        ports: vec![(VXLAN_PORT, TunnelKind::Vxlan)],
        local_ips: vec![IpAddr::V4(Ipv4Addr::from(GATEWAY))],
        ..DecapConfig::default()
    })
    .unwrap();
    let endpoint = Endpoint::new(rules).unwrap();
    let ct = Conntrack::new(ConntrackConfig::new(*b"conntrack secret"), endpoint).unwrap();
    let mut cfg = EncapConfig::vxlan(
        0,
        Underlay {
            src_mac: GW_MAC,
            dst_mac: HOST_MAC,
            src: IpAddr::V4(Ipv4Addr::from(GATEWAY)),
            dst: IpAddr::V4(Ipv4Addr::from(HOST)),
        },
    );
    // The zone the endpoint service moved the packet into picks the VNI (VNI = zone here:
    // the decapsulation stage maps each VNI to the zone of the same number).
    cfg.vni = VniSource::Zone;
    // Checksummed outer UDP, so that the re-parse checks it too.
    cfg.udp_checksum_v4 = true;
    decap.then(ct).then(EncapStage::new(cfg).unwrap())
}

/// A VXLAN frame from a host to the gateway carrying an inner Ethernet/IPv4/TCP frame.
fn vxlan(vni: u32, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let inner = PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2]).ipv4(src, dst, 64);
    vxlan_tcp(vni, inner, sport, dport, syn)
}

/// A VXLAN frame from a host to the gateway (IPv4 underlay) carrying the inner TCP segment
/// built on `inner` (its Ethernet and IP headers): a SYN, or an ACK carrying a request.
fn vxlan_tcp(
    vni: u32,
    inner: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    sport: u16,
    dport: u16,
    syn: bool,
) -> Vec<u8> {
    let b = inner.tcp(sport, dport, 1000, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let payload: &[u8] = if syn { b"" } else { b"GET / HTTP/1.1\r\n\r\n" };
    let mut inner = Vec::new();
    b.write(&mut inner, payload).unwrap();
    let mut body = vec![0x08, 0, 0, 0];
    body.extend_from_slice(&(vni << 8).to_be_bytes());
    body.extend_from_slice(&inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(HOST_MAC, GW_MAC)
        .ipv4(HOST, GATEWAY, 64)
        .udp(50000, VXLAN_PORT)
        .write(&mut frame, &body)
        .unwrap();
    frame
}

/// What the gateway emitted, re-parsed by etherparse with every checksum verified.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    vni: u32,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
}

fn ipv4_udp(h: &PacketHeaders<'_>) -> ([u8; 4], [u8; 4], etherparse::UdpHeader) {
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("not IPv4: {h:?}");
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 checksum"
    );
    let Some(TransportHeader::Udp(udp)) = &h.transport else {
        panic!("not UDP");
    };
    let payload = h.payload.slice();
    assert_eq!(
        udp.checksum,
        udp.calc_checksum_ipv4(ip, payload).unwrap(),
        "outer UDP checksum"
    );
    (ip.source, ip.destination, udp.clone())
}

fn read(frame: &[u8]) -> Seen {
    let outer = PacketHeaders::from_ethernet_slice(frame).expect("outer frame parses");
    let (osrc, odst, udp) = ipv4_udp(&outer);
    assert_eq!((osrc, odst), (GATEWAY, HOST));
    assert_eq!(udp.destination_port, VXLAN_PORT);
    let body = outer.payload.slice();
    assert_eq!(body[0], 0x08, "VXLAN I flag");
    let vni = u32::from_be_bytes([0, body[4], body[5], body[6]]);
    let inner = PacketHeaders::from_ethernet_slice(&body[8..]).expect("inner frame parses");
    let Some(NetHeaders::Ipv4(ip, _)) = &inner.net else {
        panic!("inner not IPv4");
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "inner IPv4 checksum"
    );
    let Some(TransportHeader::Tcp(tcp)) = &inner.transport else {
        panic!("inner not TCP");
    };
    assert_eq!(
        tcp.checksum,
        tcp.calc_checksum_ipv4(ip, inner.payload.slice()).unwrap(),
        "inner TCP checksum"
    );
    Seen {
        vni,
        src: ip.source,
        dst: ip.destination,
        sport: tcp.source_port,
        dport: tcp.destination_port,
    }
}

/// Runs frames through the gateway in one batch; the verdicts and the frames as they left.
fn run(gw: &mut Gateway, now: Instant, frames: &[Vec<u8>]) -> Vec<(Verdict, Vec<u8>)> {
    let mut batch: Batch<Vec<u8>> = Batch::new();
    for f in frames {
        let mut buf = vec![0u8; HEADROOM + f.len()];
        buf[HEADROOM..].copy_from_slice(f);
        batch
            .push(Packet::new(buf, HEADROOM, f.len()).unwrap())
            .ok()
            .unwrap();
    }
    gw.process(now, &mut batch);
    batch
        .drain()
        .map(|p| (p.meta.verdict, p.data().to_vec()))
        .collect()
}

#[test]
fn consumers_reach_the_provider_through_the_tunnels_and_stay_apart() {
    let mut gw = gateway();
    let now = Instant::from_nanos(1_000_000_000);

    // Two consumers with the same address and port open a connection to the endpoint in
    // their own VNIs, in one batch.
    let out = run(
        &mut gw,
        now,
        &[
            vxlan(CONSUMER_A, CONSUMER, ENDPOINT, 40000, 443, true),
            vxlan(CONSUMER_B, CONSUMER, ENDPOINT, 40000, 443, true),
        ],
    );
    let mut provider_side = Vec::new();
    for (v, f) in &out {
        assert_eq!(*v, Verdict::Pass);
        let s = read(f);
        // On the provider's VNI, to its service, from an address of its own space.
        assert_eq!(s.vni, PROVIDER);
        assert_eq!((s.src, s.dst, s.dport), (POOL, SERVICE, 8443));
        assert_ne!(s.src, CONSUMER);
        provider_side.push(s.sport);
    }
    assert_ne!(provider_side[0], provider_side[1], "consumers told apart");

    // The provider answers both, on its VNI; each answer reaches its own consumer's VNI,
    // from the endpoint.
    let replies: Vec<Vec<u8>> = provider_side
        .iter()
        .map(|&port| vxlan(PROVIDER, SERVICE, POOL, 8443, port, false))
        .collect();
    let back = run(&mut gw, now, &replies);
    for ((v, f), vni) in back.iter().zip([CONSUMER_A, CONSUMER_B]) {
        assert_eq!(*v, Verdict::Pass);
        assert_eq!(
            read(f),
            Seen {
                vni,
                src: ENDPOINT,
                dst: CONSUMER,
                sport: 443,
                dport: 40000,
            }
        );
    }

    // Data from consumer B keeps its provider-side tuple.
    let data = run(
        &mut gw,
        now,
        &[vxlan(CONSUMER_B, CONSUMER, ENDPOINT, 40000, 443, false)],
    );
    let s = read(&data[0].1);
    assert_eq!((s.vni, s.src, s.sport), (PROVIDER, POOL, provider_side[1]));

    // The provider's reply segment in a third VNI (and in a consumer's) finds no session:
    // a TCP segment that is not a SYN may not open one there, so it drops as `no_session`.
    for vni in [THIRD, CONSUMER_A] {
        let f = vxlan(vni, SERVICE, POOL, 8443, provider_side[0], false);
        let o = run(&mut gw, now, &[f]);
        assert_eq!(o[0].0, Verdict::Drop(DropReason::NoSession));
    }
    // The same tuple opening a connection in the third VNI gets a session of its own there,
    // untranslated, out on its own VNI: nothing of the endpoint's leaks into it.
    let f = vxlan(THIRD, SERVICE, POOL, 8443, provider_side[0], true);
    let o = run(&mut gw, now, &[f]);
    assert_eq!(o[0].0, Verdict::Pass);
    assert_eq!(
        read(&o[0].1),
        Seen {
            vni: THIRD,
            src: SERVICE,
            dst: POOL,
            sport: 8443,
            dport: provider_side[0],
        }
    );
    assert_eq!(gw.first.second.len(), 3);
    let mut flows = std::collections::HashMap::new();
    gw.visit_counters(&mut |stage, name, v| {
        if stage == "endpoint" {
            flows.insert(name, v);
        }
    });
    assert_eq!(flows["flows_translated"], 2);
    assert_eq!(flows["packets_to_provider"], 3);
    assert_eq!(flows["packets_to_consumer"], 2);
    assert_eq!(flows["flows_unmatched"], 1);
}

/// tshark dissects the frames the gateway sends each way (VXLAN on 4789, inner Ethernet, IPv4
/// and TCP) with IP, UDP and TCP checksum validation on: the VNIs, the outer and inner
/// addresses and the inner ports are what the endpoint should produce, every checksum is
/// good, nothing is malformed.
#[test]
fn tshark_reads_both_sides_of_the_endpoint() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let mut gw = gateway();
    let now = Instant::from_nanos(1_000_000_000);
    let out = run(
        &mut gw,
        now,
        &[
            vxlan(CONSUMER_A, CONSUMER, ENDPOINT, 40000, 443, true),
            vxlan(CONSUMER_B, CONSUMER, ENDPOINT, 40000, 443, true),
        ],
    );
    let ports: Vec<u16> = out.iter().map(|(_, f)| read(f).sport).collect();
    let replies: Vec<Vec<u8>> = ports
        .iter()
        .map(|&port| vxlan(PROVIDER, SERVICE, POOL, 8443, port, false))
        .collect();
    let back = run(&mut gw, now, &replies);
    let frames: Vec<&[u8]> = out.iter().chain(&back).map(|(_, f)| &f[..]).collect();
    let fields = [
        "vxlan.vni",
        "ip.src",
        "ip.dst",
        "tcp.srcport",
        "tcp.dstport",
        "ip.checksum.status",
        "udp.checksum.status",
        "tcp.checksum.status",
        "_ws.malformed",
        "_ws.expert.severity",
    ];
    // The payload is what the test sends, not what the ports suggest (TLS on 443).
    let rows = common::dissect_clean("private-endpoint", &frames, &["tls", "http"], &fields);
    assert_eq!(rows.len(), 4);
    let ip = |a: [u8; 4]| Ipv4Addr::from(a).to_string();
    let (gw_ip, host) = (ip(GATEWAY), ip(HOST));
    for (i, r) in rows.iter().enumerate() {
        let v = |f: &str| r[f].clone();
        let (vni, inner_src, inner_dst, sport, dport) = if i < 2 {
            // To the provider: its VNI, its service, from its own pool.
            (
                PROVIDER,
                ip(POOL),
                ip(SERVICE),
                ports[i].to_string(),
                "8443".to_string(),
            )
        } else {
            // Back to each consumer: its VNI, from the endpoint.
            let vni = [CONSUMER_A, CONSUMER_B][i - 2];
            (
                vni,
                ip(ENDPOINT),
                ip(CONSUMER),
                "443".to_string(),
                "40000".to_string(),
            )
        };
        assert_eq!(v("vxlan.vni"), [vni.to_string()], "frame {i}");
        assert_eq!(v("ip.src"), [gw_ip.clone(), inner_src], "frame {i}");
        assert_eq!(v("ip.dst"), [host.clone(), inner_dst], "frame {i}");
        assert_eq!(
            (v("tcp.srcport"), v("tcp.dstport")),
            (vec![sport], vec![dport])
        );
        assert!(v("ip.checksum.status").iter().all(|s| s == "1"), "{r:?}");
        assert_eq!(v("ip.checksum.status").len(), 2, "{r:?}");
        assert_eq!(v("udp.checksum.status"), ["1"], "{r:?}");
        assert_eq!(v("tcp.checksum.status"), ["1"], "{r:?}");
    }
}

/// The IPv6 consumers (one address in both VNIs), endpoint, service and pool.
const CONSUMER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const ENDPOINT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc8];
const SERVICE6: [u8; 16] = [0xfd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const POOL6: [u8; 16] = [0xfd, 9, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn gateway6() -> Gateway {
    let pool = AllocatorConfig::new(
        Profile::Hyperplane,
        vec![IpAddr::from(POOL6)],
        *b"endpoint secret!",
    )
    .with_max_mappings(1024);
    let rule = |consumer: u32| {
        EndpointRule::new(
            proto::TCP,
            EndpointSide::new(ZoneId(consumer), "[fd00::c8]:443".parse().unwrap()),
            EndpointSide::new(ZoneId(PROVIDER), "[fd09::1]:8443".parse().unwrap()),
            pool.clone(),
        )
    };
    gateway_with(vec![rule(CONSUMER_A), rule(CONSUMER_B)])
}

/// A VXLAN frame (IPv4 underlay) carrying an inner Ethernet/IPv6/TCP frame.
fn vxlan6(vni: u32, src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let inner = PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2]).ipv6(src, dst, 64);
    vxlan_tcp(vni, inner, sport, dport, syn)
}

/// An emitted frame with an inner IPv6/TCP packet, re-parsed by etherparse with every
/// checksum verified: (VNI, inner source, destination, source port, destination port).
fn read6(frame: &[u8]) -> (u32, [u8; 16], [u8; 16], u16, u16) {
    let outer = PacketHeaders::from_ethernet_slice(frame).expect("outer frame parses");
    let (osrc, odst, _) = ipv4_udp(&outer);
    assert_eq!((osrc, odst), (GATEWAY, HOST));
    let body = outer.payload.slice();
    let vni = u32::from_be_bytes([0, body[4], body[5], body[6]]);
    let inner = PacketHeaders::from_ethernet_slice(&body[8..]).expect("inner frame parses");
    let Some(NetHeaders::Ipv6(ip, _)) = &inner.net else {
        panic!("inner not IPv6");
    };
    let Some(TransportHeader::Tcp(tcp)) = &inner.transport else {
        panic!("inner not TCP");
    };
    assert_eq!(
        tcp.checksum,
        tcp.calc_checksum_ipv6(ip, inner.payload.slice()).unwrap(),
        "inner TCP checksum"
    );
    (
        vni,
        ip.source,
        ip.destination,
        tcp.source_port,
        tcp.destination_port,
    )
}

/// IPv6 endpoints through the same tunnels: two consumers with one IPv6 address reach the
/// provider's IPv6 service from distinct addresses and ports of its own pool, and each
/// answer goes back to its consumer's VNI from the endpoint; etherparse re-parses every
/// frame (checksums verified) and tshark dissects them all (IP, UDP and TCP checksum
/// validation on, nothing malformed) with the same VNIs, addresses and ports.
#[test]
fn ipv6_consumers_reach_the_provider_through_the_tunnels() {
    let mut gw = gateway6();
    let now = Instant::from_nanos(1_000_000_000);
    let out = run(
        &mut gw,
        now,
        &[
            vxlan6(CONSUMER_A, CONSUMER6, ENDPOINT6, 40000, 443, true),
            vxlan6(CONSUMER_B, CONSUMER6, ENDPOINT6, 40000, 443, true),
        ],
    );
    let mut ports = Vec::new();
    for (v, f) in &out {
        assert_eq!(*v, Verdict::Pass);
        let (vni, src, dst, sport, dport) = read6(f);
        assert_eq!((vni, src, dst, dport), (PROVIDER, POOL6, SERVICE6, 8443));
        ports.push(sport);
    }
    assert_ne!(ports[0], ports[1], "consumers told apart");
    let replies: Vec<Vec<u8>> = ports
        .iter()
        .map(|&port| vxlan6(PROVIDER, SERVICE6, POOL6, 8443, port, false))
        .collect();
    let back = run(&mut gw, now, &replies);
    for ((v, f), vni) in back.iter().zip([CONSUMER_A, CONSUMER_B]) {
        assert_eq!(*v, Verdict::Pass);
        assert_eq!(read6(f), (vni, ENDPOINT6, CONSUMER6, 443, 40000));
    }
    // The provider's reply tuple in a third VNI finds nothing.
    let o = run(
        &mut gw,
        now,
        &[vxlan6(THIRD, SERVICE6, POOL6, 8443, ports[0], false)],
    );
    assert_eq!(o[0].0, Verdict::Drop(DropReason::NoSession));

    if !common::require("tshark", &["--version"]) {
        return;
    }
    let frames: Vec<&[u8]> = out.iter().chain(&back).map(|(_, f)| &f[..]).collect();
    let fields = [
        "vxlan.vni",
        "ipv6.src",
        "ipv6.dst",
        "tcp.srcport",
        "tcp.dstport",
        "udp.checksum.status",
        "tcp.checksum.status",
        "_ws.malformed",
        "_ws.expert.severity",
    ];
    let rows = common::dissect_clean("private-endpoint6", &frames, &["tls", "http"], &fields);
    assert_eq!(rows.len(), 4);
    let ip6 = |a: [u8; 16]| std::net::Ipv6Addr::from(a).to_string();
    for (i, r) in rows.iter().enumerate() {
        let v = |f: &str| r[f].clone();
        let (vni, src, dst, sport, dport) = if i < 2 {
            (PROVIDER, ip6(POOL6), ip6(SERVICE6), ports[i], 8443)
        } else {
            let vni = [CONSUMER_A, CONSUMER_B][i - 2];
            (vni, ip6(ENDPOINT6), ip6(CONSUMER6), 443, 40000)
        };
        assert_eq!(v("vxlan.vni"), [vni.to_string()], "frame {i}");
        assert_eq!((v("ipv6.src"), v("ipv6.dst")), (vec![src], vec![dst]));
        assert_eq!(
            (v("tcp.srcport"), v("tcp.dstport")),
            (vec![sport.to_string()], vec![dport.to_string()])
        );
        assert_eq!(v("udp.checksum.status"), ["1"], "{r:?}");
        assert_eq!(v("tcp.checksum.status"), ["1"], "{r:?}");
    }
}
