//! Path MTU through a NAT in front of a tunnel, checked by tshark: parse → conntrack + SNAT
//! → VXLAN encapsulation (underlay MTU 1500) → nf-core's `PmtuStage`. An inside host's
//! packet one byte too big for the tunnel is dropped by the encapsulation as `too_big`; the
//! PMTU stage turns it into fragmentation needed (IPv4) / packet too big (NAT66) towards the
//! translated source, which goes back through the NAT as a packet from the outside and
//! reaches the inside host translated (RFC 5508). tshark dissects what the host receives
//! with checksum validation on: the ICMP type, code and MTU, the outer destination and the
//! quoted source are the inside host's, nothing is malformed, no checksum is bad. A packet
//! of exactly the reported MTU then crosses the tunnel.

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

/// One frame through the NAT, then `after`, in a buffer with room for the tunnel headers.
fn through(
    nat: &mut Nat,
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

    let mut args = vec!["-n".to_string()];
    for p in ["ip.check_checksum:TRUE", "udp.check_checksum:TRUE"] {
        args.extend(["-o".to_string(), p.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rows = common::tshark_rows(&path, &args, F);
    assert_eq!(rows.len(), 2);
    let inside6 = INSIDE6.to_string();
    for (i, r) in rows.iter().enumerate() {
        let v = |f: &str| r[f].iter().map(String::as_str).collect::<Vec<_>>();
        assert!(v("_ws.malformed").is_empty(), "frame {i}: malformed: {r:?}");
        for s in v("_ws.expert.severity") {
            let sev = u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            assert!(sev < 0x0060_0000, "frame {i}: expert severity {s}: {r:?}");
        }
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
