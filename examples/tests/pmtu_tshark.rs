//! Path MTU through a NAT in front of a tunnel, checked by tshark: parse → conntrack + SNAT
//! → VXLAN encapsulation (underlay MTU 1500) → nf-core's `PmtuStage`. An inside host's
//! packet one byte too big for the tunnel is dropped by the encapsulation as `too_big`; the
//! PMTU stage turns it into fragmentation needed (IPv4) / packet too big (NAT66) towards the
//! translated source, which goes back through the NAT as a packet from the outside and
//! reaches the inside host translated (RFC 5508). tshark dissects what the host receives
//! with checksum validation on: the ICMP type, code and MTU, the outer destination and the
//! quoted source are the inside host's, nothing is malformed, no checksum is bad. A packet
//! of exactly the reported MTU then crosses the tunnel.
//!
//! The same through a DNAT load balancer (issue 14): a router between the load balancer
//! and the backend answers a client's too-big packet; back through the load balancer the
//! error reaches the client from the VIP, quoting what the client sent.

mod common;

use core::net::{IpAddr, Ipv6Addr};
use nf_core::conntrack::{Conntrack, ConntrackConfig};
use nf_core::reply::{IcmpOrigin, PmtuStage};
use nf_core::wire::Frame;
use nf_core::{
    Batch, Chain, DropReason, Instant, Packet, ParseStage, PortId, Stage, StageControl, StageExt,
    Verdict,
};
use nf_examples::pcap::{CaptureWriter, Format, LINKTYPE_ETHERNET};
use nf_nat::{AllocatorConfig, InsidePrefix, Profile, Snat, SnatConfig};
use nf_tunnel::{EncapConfig, EncapStage, Underlay};

type Nat = Chain<ParseStage, Conntrack<Snat>>;

const INSIDE4: [u8; 4] = [10, 0, 0, 2];
const INSIDE6: &str = "fd00::2";

fn nat() -> Nat {
    let public = vec![
        IpAddr::from([203, 0, 113, 1]),
        "2001:db8::1".parse().unwrap(),
    ];
    let ports = AllocatorConfig::new(Profile::Hyperplane, public, *b"pmtu test secret");
    let cfg = SnatConfig::new(ports)
        .with_inside(InsidePrefix::new(IpAddr::from(INSIDE4), 24))
        .with_inside(InsidePrefix::new(INSIDE6.parse().unwrap(), 64));
    let ct = Conntrack::new(
        ConntrackConfig::new(*b"conntrack secret"),
        Snat::new(cfg).unwrap(),
    );
    ParseStage::default().then(ct.unwrap())
}

fn encap() -> EncapStage {
    let underlay = Underlay {
        src_mac: [2, 0, 0, 0, 1, 1],
        dst_mac: [2, 0, 0, 0, 2, 2],
        src: IpAddr::from([192, 0, 2, 1]),
        dst: IpAddr::from([198, 51, 100, 2]),
    };
    let mut cfg = EncapConfig::vxlan(7, underlay);
    cfg.mtu = 1500;
    EncapStage::new(cfg).unwrap()
}

/// A UDP packet of `ip_len` bytes from the inside host (DF set).
fn packet(v6: bool, ip_len: usize) -> Vec<u8> {
    let (f, hl) = if v6 {
        let src: Ipv6Addr = INSIDE6.parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:9::9".parse().unwrap();
        (Frame::ipv6(src.octets(), dst.octets()), 48)
    } else {
        (Frame::ipv4(INSIDE4, [198, 51, 100, 9]), 28)
    };
    let payload = vec![0x5a; ip_len - hl];
    let f = f.ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    f.udp(40000, 4433).payload(&payload).to_vec().unwrap()
}

/// One frame through the NAT (or the load balancer), then `after`, in a buffer with room for
/// the tunnel headers.
fn through(
    nat: &mut impl Stage<Vec<u8>>,
    frame: &[u8],
    after: impl FnOnce(&mut Batch<Vec<u8>>),
) -> Packet<Vec<u8>> {
    let mut batch = Batch::new();
    batch.push(Packet::with_headroom(frame, 128)).unwrap();
    nat.process(Instant::ZERO, &mut batch);
    after(&mut batch);
    batch.drain().next().unwrap()
}

const F: &[&str] = &[
    "_ws.malformed",
    "_ws.expert.severity",
    "ip.dst",
    "ip.src",
    "ipv6.dst",
    "ipv6.src",
    "icmp.type",
    "icmp.code",
    "icmp.mtu",
    "icmpv6.type",
    "icmpv6.code",
    "icmpv6.mtu",
    "udp.srcport",
    "ip.checksum.status",
    "icmp.checksum.status",
    "icmpv6.checksum.status",
];

/// tshark's rows of the capture at `path` (fields [`F`] and `extra`), with IP and UDP
/// checksum validation on; every frame well formed, without warnings or errors.
fn dissect(path: &std::path::Path, extra: &[&'static str]) -> Vec<common::TsharkRow> {
    let mut args = vec!["-n".to_string()];
    for p in ["ip.check_checksum:TRUE", "udp.check_checksum:TRUE"] {
        args.extend(["-o".to_string(), p.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fields: Vec<&'static str> = F.iter().chain(extra).copied().collect();
    let rows = common::tshark_rows(path, &args, &fields);
    for (i, r) in rows.iter().enumerate() {
        common::assert_dissected_clean(i, r);
    }
    rows
}

#[test]
fn too_big_through_nat_and_tunnel_is_what_tshark_reads() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let mut nat = nat();
    let mut encap = encap();
    // VXLAN carries the inner Ethernet frame: the inner IP packet's room is the underlay
    // MTU less everything the encapsulation adds in front of the inner frame's IP header.
    let mtu = 1500 - encap.headroom();
    assert_eq!(mtu, 1450);
    let from = (IpAddr::from([10, 0, 0, 1]), "fd00::1".parse().unwrap());
    let origin = IcmpOrigin::new(Some(from.0), Some(from.1), PortId(0));
    let mut pmtu = PmtuStage::new(mtu as u32, origin);
    let dir = common::temp_dir("pmtu-tshark");
    let path = dir.join("too-big.pcap");
    let mut w = CaptureWriter::new(std::fs::File::create(&path).unwrap(), Format::Pcap).unwrap();
    for v6 in [false, true] {
        // One byte too big: dropped by the tunnel, answered by the PMTU stage.
        let error = through(&mut nat, &packet(v6, mtu + 1), |b| {
            encap.process(Instant::ZERO, b);
            assert_eq!(
                b.packets()[0].meta.verdict,
                Verdict::Drop(DropReason::TooBig)
            );
            pmtu.process(Instant::ZERO, b);
        });
        assert_eq!(error.meta.verdict, Verdict::Tx(PortId(0)));
        // Back through the NAT, from the outside: it reaches the inside host translated.
        let back = through(&mut nat, error.data(), |_| {});
        assert_eq!(back.meta.verdict, Verdict::Pass);
        w.write(
            1_700_000_000_000_000_000,
            LINKTYPE_ETHERNET,
            back.data(),
            None,
        )
        .unwrap();
        // The reported MTU is right: a packet of exactly that size crosses the tunnel.
        let fits = through(&mut nat, &packet(v6, mtu), |b| {
            encap.process(Instant::ZERO, b)
        });
        assert_eq!(fits.meta.verdict, Verdict::Pass);
    }
    w.finish().unwrap();
    assert_eq!(pmtu.pmtu_counters().sent, 2);

    let rows = dissect(&path, &[]);
    assert_eq!(rows.len(), 2);
    let inside6 = INSIDE6.to_string();
    for (i, r) in rows.iter().enumerate() {
        let v = |f: &str| r[f].iter().map(String::as_str).collect::<Vec<_>>();
        if i == 0 {
            // Outer and quoted IPv4 headers: to the inside host, quoting its own packet.
            assert_eq!(v("ip.dst")[0], "10.0.0.2", "{r:?}");
            assert_eq!(v("ip.src"), ["10.0.0.1", "10.0.0.2"], "{r:?}");
            assert_eq!((v("icmp.type"), v("icmp.code")), (vec!["3"], vec!["4"]));
            assert_eq!(v("icmp.mtu"), ["1450"]);
            assert_eq!(v("icmp.checksum.status"), ["1"], "{r:?}");
            assert!(v("ip.checksum.status").iter().all(|s| *s == "1"), "{r:?}");
        } else {
            assert_eq!(v("ipv6.dst")[0], inside6, "{r:?}");
            assert_eq!(v("ipv6.src"), ["fd00::1", inside6.as_str()], "{r:?}");
            assert_eq!((v("icmpv6.type"), v("icmpv6.code")), (vec!["2"], vec!["0"]));
            assert_eq!(v("icmpv6.mtu"), ["1450"]);
            assert_eq!(v("icmpv6.checksum.status"), ["1"], "{r:?}");
        }
        assert_eq!(
            v("udp.srcport"),
            ["40000"],
            "the quoted source port, inside again"
        );
    }
}

type Balancer = Chain<ParseStage, Conntrack<nf_lb::Lb>>;

const CLIENT4: [u8; 4] = [198, 51, 100, 7];
const VIP4: [u8; 4] = [192, 0, 2, 80];
const CLIENT6: &str = "2001:db8:7::7";
const VIP6: &str = "2001:db8:80::80";

/// A DNAT load balancer: UDP 4433 on both VIPs to one backend each, port 8443.
fn balancer() -> Balancer {
    use nf_lb::PoolMember;
    use nf_lb::{BackendId, HashFields, Lb, LbKey, Listener, ListenerMatch, Listeners, Pool};
    let key = LbKey::new(*b"pmtu lb secret!!");
    let on = |vip: IpAddr, backend: BackendId| {
        let port = ListenerMatch::Port {
            vip,
            port: 4433,
            proto: nf_core::flow::proto::UDP,
        };
        let pool = Pool::new([PoolMember::new(backend, 1)]);
        Listener::new(&key, port, HashFields::FiveTuple, pool, 251).unwrap()
    };
    let b6: Ipv6Addr = "fd00:b::1".parse().unwrap();
    let lb = Lb::new(
        Listeners::new(vec![
            on(IpAddr::from(VIP4), BackendId::v4([10, 0, 1, 1], 8443)),
            on(VIP6.parse().unwrap(), BackendId::v6(b6.octets(), 8443)),
        ])
        .unwrap(),
    );
    let ct = Conntrack::new(ConntrackConfig::new(*b"conntrack secret"), lb);
    ParseStage::default().then(ct.unwrap())
}

/// Issue 14: a router between the load balancer and a DNAT backend cannot forward a
/// client's packet (DF, too big) and answers fragmentation needed / packet too big to the
/// client; back through the load balancer the error reaches the client from the VIP,
/// quoting the packet the client sent (to the VIP and its port), every checksum valid as
/// tshark reads it.
#[test]
fn too_big_behind_a_dnat_load_balancer_is_what_tshark_reads() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let mut lb = balancer();
    let mtu = 1400;
    let from = (IpAddr::from([10, 0, 9, 1]), "fd00:9::1".parse().unwrap());
    let mut pmtu = PmtuStage::new(mtu, IcmpOrigin::new(Some(from.0), Some(from.1), PortId(0)));
    let dir = common::temp_dir("pmtu-lb-tshark");
    let path = dir.join("too-big-lb.pcap");
    let mut w = CaptureWriter::new(std::fs::File::create(&path).unwrap(), Format::Pcap).unwrap();
    for v6 in [false, true] {
        let f = if v6 {
            let (c, v): (Ipv6Addr, Ipv6Addr) = (CLIENT6.parse().unwrap(), VIP6.parse().unwrap());
            Frame::ipv6(c.octets(), v.octets())
        } else {
            Frame::ipv4(CLIENT4, VIP4)
        };
        let payload = vec![0x5a; 1452];
        let f = f.ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
        let big = f.udp(40000, 4433).payload(&payload).to_vec().unwrap();
        // The router behind the load balancer: too big for its next link.
        let error = through(&mut lb, &big, |b| {
            assert_eq!(b.packets()[0].meta.verdict, Verdict::Pass);
            b.set_verdict(0, Verdict::Drop(DropReason::TooBig));
            pmtu.process(Instant::ZERO, b);
        });
        assert_eq!(error.meta.verdict, Verdict::Tx(PortId(0)));
        let back = through(&mut lb, error.data(), |_| {});
        assert_eq!(back.meta.verdict, Verdict::Pass);
        w.write(
            1_700_000_000_000_000_000,
            LINKTYPE_ETHERNET,
            back.data(),
            None,
        )
        .unwrap();
    }
    w.finish().unwrap();
    let mut counted = 0;
    lb.second.visit_counters(&mut |s, c, v| {
        if (s, c) == ("lb", "icmp_errors_translated") {
            counted = v;
        }
    });
    assert_eq!(counted, 2);

    let rows = dissect(&path, &["udp.dstport"]);
    assert_eq!(rows.len(), 2);
    for (i, r) in rows.iter().enumerate() {
        let v = |f: &str| r[f].iter().map(String::as_str).collect::<Vec<_>>();
        if i == 0 {
            // Outer: from the VIP to the client; quoted: the client's packet to the VIP.
            assert_eq!(v("ip.src"), ["192.0.2.80", "198.51.100.7"], "{r:?}");
            assert_eq!(v("ip.dst"), ["198.51.100.7", "192.0.2.80"], "{r:?}");
            assert_eq!((v("icmp.type"), v("icmp.code")), (vec!["3"], vec!["4"]));
            assert_eq!(v("icmp.mtu"), ["1400"]);
            assert_eq!(v("icmp.checksum.status"), ["1"], "{r:?}");
            assert!(v("ip.checksum.status").iter().all(|s| *s == "1"), "{r:?}");
        } else {
            assert_eq!(v("ipv6.src"), [VIP6, CLIENT6], "{r:?}");
            assert_eq!(v("ipv6.dst"), [CLIENT6, VIP6], "{r:?}");
            assert_eq!((v("icmpv6.type"), v("icmpv6.code")), (vec!["2"], vec!["0"]));
            assert_eq!(v("icmpv6.mtu"), ["1400"]);
            assert_eq!(v("icmpv6.checksum.status"), ["1"], "{r:?}");
        }
        assert_eq!(
            (v("udp.srcport"), v("udp.dstport")),
            (vec!["40000"], vec!["4433"])
        );
    }
}
