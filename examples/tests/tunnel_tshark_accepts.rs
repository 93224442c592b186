//! What nf-tunnel emits is accepted by tshark: pcaps of our encapsulation output for every
//! variant (GWLB profile and its reflected return path, Geneve over IPv6 with GCP options,
//! a critical option with an IPv4 UDP checksum, VXLAN over IPv4 / IPv6 / port 8472) are
//! dissected with checksum validation on; there must be no malformed frame, no expert
//! warning or error, no bad checksum, and tshark's VNI and options must equal what we set.

mod common;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::checksum;
use nf_core::{Batch, Instant, Packet, ParseConfig, Stage, Verdict, parse_frame};
use nf_examples::pcap::{CaptureWriter, Format, LINKTYPE_ETHERNET};
use nf_tunnel::profile::{gcp, gwlb};
use nf_tunnel::{
    DecapStage, EncapConfig, EncapStage, OptionsBuilder, ReflectStage, Underlay, VXLAN_LINUX_PORT,
};
use std::process::Command;

/// Inner frames with correct checksums: IPv4/UDP, IPv4/TCP (ACK), IPv6/UDP.
fn inner_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, kind) in ["udp4", "tcp4", "udp6"].iter().cycle().take(9).enumerate() {
        let payload: Vec<u8> = (0..(20 + i * 37)).map(|b| b as u8).collect();
        let sport = 40000 + i as u16;
        let mut f = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa];
        match *kind {
            "udp4" | "tcp4" => {
                let tcp = *kind == "tcp4";
                let l4len = if tcp { 20 } else { 8 } + payload.len();
                f.extend_from_slice(&[0x08, 0x00]);
                let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, if tcp { 6 } else { 17 }];
                ip.extend_from_slice(&[0, 0, 10, 1, 0, 1, 10, 2, 0, 2]);
                ip[2..4].copy_from_slice(&((20 + l4len) as u16).to_be_bytes());
                let c = checksum::checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                let pseudo =
                    checksum::pseudo_header_v4([10, 1, 0, 1], [10, 2, 0, 2], ip[9], l4len as u16);
                f.extend_from_slice(&ip);
                f.extend(l4(tcp, sport, &payload, pseudo));
            }
            _ => {
                f.extend_from_slice(&[0x86, 0xdd]);
                let src: [u8; 16] = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets();
                let dst: [u8; 16] = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets();
                let l4len = 8 + payload.len();
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4len as u16).to_be_bytes());
                f.extend_from_slice(&[17, 64]);
                f.extend_from_slice(&src);
                f.extend_from_slice(&dst);
                let pseudo = checksum::pseudo_header_v6(&src, &dst, 17, l4len as u32);
                f.extend(l4(false, sport, &payload, pseudo));
            }
        }
        out.push(f);
    }
    out
}

fn l4(tcp: bool, sport: u16, payload: &[u8], pseudo: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&5001u16.to_be_bytes());
    if tcp {
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0x20, 0, 0, 0, 0, 0]);
    } else {
        h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
    }
    h.extend_from_slice(payload);
    let c = checksum::udp_finish(
        u32::from(checksum::fold(checksum::sum(0, &h))) + u32::from(checksum::fold(pseudo)),
    );
    let at = if tcp { 16 } else { 6 };
    h[at..at + 2].copy_from_slice(&c.to_be_bytes());
    h
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn underlay(v6: bool) -> Underlay {
    let (src, dst) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        )
    } else {
        (v4(192, 0, 2, 1), v4(198, 51, 100, 2))
    };
    Underlay {
        src_mac: [0x02, 0, 0, 0, 0x01, 0x01],
        dst_mac: [0x02, 0, 0, 0, 0x02, 0x02],
        src,
        dst,
    }
}

/// Runs `frames` through `encap` (parsed first, so the source port follows the flow).
fn encapsulate(encap: &mut EncapStage, frames: &[Vec<u8>]) -> Vec<Packet<Vec<u8>>> {
    let mut batch = Batch::new();
    for f in frames {
        let mut buf = vec![0u8; 256 + f.len()];
        buf[256..].copy_from_slice(f);
        let mut p = Packet::new(buf, 256, f.len()).unwrap();
        parse_frame(f, &mut p.meta, &ParseConfig::default()).unwrap();
        batch.push(p).unwrap();
    }
    encap.process(Instant::ZERO, &mut batch);
    let out: Vec<_> = batch.drain().collect();
    for p in &out {
        assert_eq!(p.meta.verdict, Verdict::Pass);
    }
    out
}

struct Variant {
    name: &'static str,
    packets: Vec<Packet<Vec<u8>>>,
    vni: u32,
    /// (class, type, wire length) of each option.
    options: Vec<(u16, u8, usize)>,
    vxlan: bool,
    decode_as: &'static [&'static str],
    udp_checksum: bool,
}

fn opts_of(b: &OptionsBuilder) -> Vec<(u16, u8, usize)> {
    b.options().map(|o| (o.class, o.ty, o.wire_len())).collect()
}

fn variants() -> Vec<Variant> {
    let frames = inner_frames();
    let mut v = Vec::new();

    let meta = gwlb::GwlbMetadata {
        endpoint_id: 0x0a0b_0c0d_0e0f_1011,
        attachment_id: 0x1213_1415_1617_1819,
        flow_cookie: 0x1a1b_1c1d,
    };
    let mut e = EncapStage::new(gwlb::encap_config(&meta, 0, underlay(false))).unwrap();
    let sent = encapsulate(&mut e, &frames);
    v.push(Variant {
        name: "gwlb",
        packets: sent.clone(),
        vni: 0,
        options: opts_of(&meta.options()),
        vxlan: false,
        decode_as: &[],
        udp_checksum: false,
    });
    // The appliance's answer: decapsulate, then reflect into the same tunnel.
    let mut batch = Batch::new();
    for p in sent {
        batch.push(p).unwrap();
    }
    DecapStage::new(gwlb::decap_config())
        .unwrap()
        .process(Instant::ZERO, &mut batch);
    ReflectStage::new(1500, false).process(Instant::ZERO, &mut batch);
    v.push(Variant {
        name: "gwlb-reflected",
        packets: batch.drain().collect(),
        vni: 0,
        options: opts_of(&meta.options()),
        vxlan: false,
        decode_as: &[],
        udp_checksum: false,
    });

    let g = gcp::GcpMetadata {
        vnid: 0x0123_4567,
        egress: true,
        endpoint: [7; 16],
        profile: 4660,
    };
    let mut e = EncapStage::new(EncapConfig::geneve(
        g.options(),
        0x00fe_dcba,
        underlay(true),
    ))
    .unwrap();
    v.push(Variant {
        name: "geneve-ipv6-gcp",
        packets: encapsulate(&mut e, &frames),
        vni: 0x00fe_dcba,
        options: opts_of(&g.options()),
        vxlan: false,
        decode_as: &[],
        udp_checksum: true,
    });

    let mut crit = OptionsBuilder::new();
    crit.push(0xffff, 0x80 | 0x11, &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap()
        .push(0x0101, 0x02, &[])
        .unwrap();
    let mut cfg = EncapConfig::geneve(crit, 42, underlay(false));
    cfg.udp_checksum_v4 = true;
    let mut e = EncapStage::new(cfg).unwrap();
    v.push(Variant {
        name: "geneve-critical-udp-checksum",
        packets: encapsulate(&mut e, &frames),
        vni: 42,
        options: opts_of(&crit),
        vxlan: false,
        decode_as: &[],
        udp_checksum: true,
    });

    for (name, v6, port) in [
        ("vxlan-ipv4", false, 4789),
        ("vxlan-ipv6", true, 4789),
        ("vxlan-8472", false, VXLAN_LINUX_PORT),
    ] {
        let mut cfg = EncapConfig::vxlan(0x0012_3456, underlay(v6));
        cfg.dst_port = port;
        let mut e = EncapStage::new(cfg).unwrap();
        v.push(Variant {
            name,
            packets: encapsulate(&mut e, &frames),
            vni: 0x0012_3456,
            options: Vec::new(),
            vxlan: true,
            decode_as: if port == 4789 {
                &[]
            } else {
                &["-d", "udp.port==8472,vxlan"]
            },
            udp_checksum: v6,
        });
    }
    v
}

const F: &[&str] = &[
    "frame.number",
    "_ws.malformed",
    "_ws.expert.severity",
    "geneve.vni",
    "vxlan.vni",
    "geneve.option.class",
    "geneve.option.type",
    "geneve.option.length",
    "geneve.flags.critical",
    "ip.checksum.status",
    "udp.checksum.status",
    "tcp.checksum.status",
    "frame.protocols",
];

fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => s.parse().unwrap(),
    }
}

#[test]
fn tshark_accepts_every_encapsulation_variant() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let dir = common::temp_dir("tunnel-tshark");
    for v in variants() {
        let path = dir.join(format!("{}.pcap", v.name));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = CaptureWriter::new(file, Format::Pcap).unwrap();
        for (i, p) in v.packets.iter().enumerate() {
            assert_eq!(p.meta.verdict, Verdict::Pass, "{}", v.name);
            let ts = 1_700_000_000_000_000_000 + i as u64 * 1000;
            w.write(ts, LINKTYPE_ETHERNET, p.data(), None).unwrap();
        }
        w.finish().unwrap();
        let mut cmd = Command::new("tshark");
        cmd.arg("-r").arg(&path).args(v.decode_as);
        for pref in [
            "ip.check_checksum:TRUE",
            "udp.check_checksum:TRUE",
            "tcp.check_checksum:TRUE",
        ] {
            cmd.args(["-o", pref]);
        }
        cmd.args(["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]);
        for f in F {
            cmd.args(["-e", f]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows.len(), v.packets.len(), "{}", v.name);
        for r in &rows {
            let ctx = format!("{} frame {}: {r:?}", v.name, r[0]);
            let vals = |i: usize| -> Vec<&str> {
                if r[i].is_empty() {
                    Vec::new()
                } else {
                    r[i].split(',').collect()
                }
            };
            assert!(r[1].is_empty(), "{ctx}: malformed");
            for s in vals(2) {
                assert!(num(s) < 0x0060_0000, "{ctx}: expert severity {s}");
            }
            let vni = if v.vxlan { vals(4) } else { vals(3) };
            assert_eq!(vni.len(), 1, "{ctx}: one tunnel header");
            assert_eq!(num(vni[0]), u64::from(v.vni), "{ctx}: VNI");
            if !v.vxlan {
                let lens = vals(7);
                let theirs: Vec<(u16, u8, usize)> = vals(5)
                    .iter()
                    .zip(vals(6))
                    .zip(lens.iter().skip(1))
                    .map(|((c, t), l)| (num(c) as u16, num(t) as u8, num(l) as usize))
                    .collect();
                assert_eq!(theirs, v.options, "{ctx}: options");
                let crit = v.options.iter().any(|o| o.1 & 0x80 != 0);
                assert_eq!(vals(8), vec![if crit { "1" } else { "0" }], "{ctx}: C bit");
            }
            // Checksum status: 0 bad, 1 good, 2 unverified, 3 not present.
            for i in [9, 10, 11] {
                for s in vals(i) {
                    assert_ne!(s, "0", "{ctx}: bad checksum in field {}", F[i]);
                }
            }
            if r[12].contains(":ip:") {
                assert!(vals(9).contains(&"1"), "{ctx}: IP checksums were validated");
            }
            let udp = vals(10);
            assert_eq!(
                udp.first().copied(),
                Some(if v.udp_checksum { "1" } else { "3" }),
                "{ctx}: outer UDP checksum"
            );
            assert!(
                r[12].contains("geneve") || r[12].contains("vxlan"),
                "{ctx}: dissected as a tunnel"
            );
        }
        eprintln!("{}: {} frames accepted by tshark", v.name, rows.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
