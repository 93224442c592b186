//! Fuzzes the encap stage with arbitrary inner frames, Geneve options and settings (Geneve
//! or VXLAN, IPv4 or IPv6 outer, Ethernet or bare-IP payload, fixed or per-zone VNI, MTU,
//! UDP checksum): no panic; a packet is either dropped for a reason the stage documents or
//! emitted with outer headers that parse back — the Geneve and VXLAN views, the outer IPv4
//! checksum, the lengths — to the same VNI, the same options in order and the same inner
//! bytes; and where the decap stage accepts the emitted frame it hands back that payload.
#![no_main]

#[path = "shared/tunnel.rs"]
mod tunnel;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::wire::ipv4::Ipv4Packet;
use nf_core::{Batch, DropReason, Instant, Packet, ParseConfig, Stage, Verdict, ZoneId};
use nf_tunnel::{
    DecapConfig, DecapStage, EncapConfig, EncapStage, GenevePacket, GeneveRepr, OptionsBuilder, Payload,
    VniSource, VxlanPacket,
};
use tunnel::{inner_frame, underlay};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Build a well-formed inner frame around `inner` (see `tunnel::inner_frame`).
    built: Option<(bool, bool, u16)>,
    inner: Vec<u8>,
    options: Vec<(u16, u8, Vec<u8>)>,
    vni: u32,
    zone: Option<u32>,
    vxlan: bool,
    v6: bool,
    bare_ip: bool,
    parse_inner: bool,
    udp_checksum_v4: bool,
    mtu: u16,
    src_ports: (u16, u16),
}

fuzz_target!(|input: Input| {
    let inner = inner_frame(input.built, &input.inner);
    let mut opts = OptionsBuilder::new();
    let mut pushed: Vec<(u16, u8, Vec<u8>)> = Vec::new();
    for (class, ty, data) in input.options.iter().take(16) {
        let n = data.len().min(124) / 4 * 4;
        let data = &data[..n];
        if opts.push(*class, *ty, data).is_ok() {
            pushed.push((*class, *ty, data.to_vec()));
        }
    }
    let mut cfg = if input.vxlan {
        EncapConfig::vxlan(input.vni, underlay(input.v6))
    } else {
        EncapConfig::geneve(opts, input.vni, underlay(input.v6))
    };
    if input.zone.is_some() {
        cfg.vni = VniSource::Zone;
    }
    if input.bare_ip {
        cfg.payload = Payload::Ip;
    }
    cfg.udp_checksum_v4 = input.udp_checksum_v4;
    cfg.mtu = input.mtu;
    cfg.src_ports = input.src_ports;
    let dst_port = cfg.dst_port;
    let (lo, hi) = cfg.src_ports;
    let Ok(mut stage) = EncapStage::new(cfg) else {
        return;
    };

    let mut pkt = Packet::with_headroom(&inner, nf_core::StageControl::headroom(&stage));
    let parsed = input.parse_inner
        && nf_core::parse_frame(&inner, &mut pkt.meta, &ParseConfig::default()).is_ok();
    if !parsed {
        // A pipeline drops a packet whose parse failed; what the walk left in `meta` (an
        // IPv4 Ethernet type over a cut header, say) never reaches encap.
        pkt.meta = nf_core::Meta::default();
    }
    if let Some(z) = input.zone {
        pkt.meta.zone = ZoneId(z);
    }
    let l3 = usize::from(pkt.meta.l3);
    let ethertype = pkt.meta.ethertype;
    let ip_inner = parsed && matches!(ethertype, 0x0800 | 0x86dd);
    let mut batch = Batch::new();
    batch.push(pkt).ok();
    stage.process(Instant::ZERO, &mut batch);
    let pkt = &batch.packets()[0];
    let vni = input.zone.unwrap_or(input.vni);
    let outer_ip_len = if input.v6 { 40 } else { 20 };

    let expected: &[u8] = match pkt.meta.verdict {
        Verdict::Drop(DropReason::TooBig) => {
            let payload = if input.bare_ip { inner.len().saturating_sub(l3) } else { inner.len() };
            // The outer IP packet: everything pushed but the Ethernet header, and the payload.
            assert!(stage.overhead() - 14 + payload > usize::from(input.mtu));
            return;
        }
        Verdict::Drop(DropReason::TunnelUnknownVni) => {
            assert!(vni > 0x00ff_ffff);
            return;
        }
        Verdict::Drop(DropReason::TunnelBadProtocol) => {
            assert!(input.bare_ip && !ip_inner);
            return;
        }
        Verdict::Pass => {
            if input.bare_ip {
                assert!(ip_inner, "bare IP needs a parsed IP inner packet");
                &inner[l3..]
            } else {
                &inner[..]
            }
        }
        v => panic!("unexpected verdict {v:?}"),
    };
    assert!(vni <= 0x00ff_ffff);
    let f = pkt.data();
    assert_eq!(f.len(), stage.overhead() + expected.len());
    assert_eq!(&f[..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    let udp = 14 + outer_ip_len;
    if input.v6 {
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(usize::from(u16::from_be_bytes([f[18], f[19]])), f.len() - udp);
        assert_eq!(f[20], 17);
    } else {
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let ip = Ipv4Packet::new_checked(&f[14..]).expect("outer IPv4");
        assert!(ip.verify_checksum());
        assert_eq!(usize::from(u16::from_be_bytes([f[16], f[17]])), f.len() - 14);
        assert_eq!(f[23], 17);
        assert!(f.len() - 14 <= usize::from(input.mtu));
    }
    let sport = u16::from_be_bytes([f[udp], f[udp + 1]]);
    assert!((lo..=hi).contains(&sport));
    assert_eq!(u16::from_be_bytes([f[udp + 2], f[udp + 3]]), dst_port);
    assert_eq!(usize::from(u16::from_be_bytes([f[udp + 4], f[udp + 5]])), f.len() - udp);
    let tun = &f[udp + 8..];
    if input.vxlan {
        let v = VxlanPacket::new_checked(tun).expect("VXLAN parses back");
        assert_eq!(v.header().vni(), vni);
        assert_eq!(v.payload(), expected);
    } else {
        let g = GenevePacket::new_checked(tun).expect("Geneve parses back");
        assert_eq!(g.header().vni(), vni);
        let got: Vec<(u16, u8, Vec<u8>)> = g.options().map(|o| (o.class, o.ty, o.data.to_vec())).collect();
        assert_eq!(got, pushed);
        let protocol = if input.bare_ip { ethertype } else { 0x6558 };
        assert_eq!(GeneveRepr::parse(&g).protocol, protocol);
        assert_eq!(g.payload(), expected);
    }

    // The decap stage, where it accepts the frame, gives back the same payload and VNI.
    let mut back = Batch::new();
    back.push(Packet::new(f.to_vec(), 0, f.len()).unwrap()).ok();
    DecapStage::new(DecapConfig::default())
        .unwrap()
        .process(Instant::ZERO, &mut back);
    let d = &back.packets()[0];
    if d.meta.verdict == Verdict::Pass && d.meta.tunnel.outer_len != 0 {
        assert_eq!(d.data(), expected);
        assert_eq!(d.meta.tunnel.vni, vni);
    }
});
