//! Captures from other implementations (Open vSwitch, Linux, Google Cloud): every Geneve and
//! VXLAN frame in `shared/testdata/pcap` is decapsulated by nf-tunnel, and its VNI, each
//! option's class / type / length and the inner 5-tuple equal what `tshark -T fields`
//! extracts from the same frame.

mod common;

use nf_core::flags;
use nf_core::{DropReason, Family, Instant, Packet, Verdict};
use nf_tunnel::profile::gcp;
use nf_tunnel::{DecapConfig, DecapStage, OptionSpec, TunnelKind, received_geneve};

const FIELDS: &[&str] = &[
    "frame.number",
    "geneve.vni",
    "vxlan.vni",
    "geneve.option.class",
    "geneve.option.type",
    "geneve.option.length",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.nxt",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "udp.checksum.status",
];

type Row = common::TsharkRow;

/// One row per frame, with the UDP checksums checked.
fn tshark_rows(path: &std::path::Path, extra: &[&str]) -> Vec<Row> {
    let mut args = extra.to_vec();
    args.extend(["-o", "udp.check_checksum:TRUE"]);
    common::tshark_rows(path, &args, FIELDS)
}

fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => s.parse().unwrap(),
    }
}

fn config() -> DecapConfig {
    let mut c = gcp::decap_config();
    c.ports = vec![
        (6081, TunnelKind::Geneve),
        (4789, TunnelKind::Vxlan),
        (8472, TunnelKind::Vxlan),
    ];
    // Open vSwitch's capture carries a critical option (class 0, type 0x80): understood here.
    c.options.push(OptionSpec::known(0x0000, 0x00));
    c
}

struct Summary {
    tunnels: usize,
    frames: usize,
}

fn check_capture(file: &str, tshark_extra: &[&str], cfg: DecapConfig) -> Summary {
    let path = common::shared_dir().join("testdata/pcap").join(file);
    let rows = tshark_rows(&path, tshark_extra);
    let recs = nf_examples::pcap::read_file(&path).unwrap();
    assert_eq!(rows.len(), recs.len(), "{file}");
    let mut stage = DecapStage::new(cfg).unwrap();
    let mut tunnels = 0;
    for (row, rec) in rows.iter().zip(&recs) {
        let n = &row["frame.number"][0];
        let ctx = format!("{file} frame {n}");
        let mut pkt = Packet::new(rec.data.clone(), 0, rec.data.len()).unwrap();
        let verdict = stage
            .decap(Instant::ZERO, &mut pkt)
            .unwrap_or_else(Verdict::Drop);
        let vni = row["geneve.vni"]
            .first()
            .or(row["vxlan.vni"].first())
            .map(|v| num(v) as u32);
        let Some(vni) = vni else {
            assert_eq!(
                pkt.meta.tunnel.outer_len, 0,
                "{ctx}: not a tunnel for tshark"
            );
            continue;
        };
        tunnels += 1;
        // Decapsulated: IP inner frames pass; non-IP ones (ARP) go to the control path, as
        // the inner parse settings say by default.
        let non_ip = !pkt.meta.has(nf_core::flags::L3_VALID);
        let want = if non_ip {
            Verdict::ToControl
        } else {
            Verdict::Pass
        };
        assert_eq!(verdict, want, "{ctx}");
        assert_eq!(pkt.meta.tunnel.vni, vni, "{ctx}: VNI");

        // Options: tshark lists the header's total option length first, then each option.
        let classes = &row["geneve.option.class"];
        let ours: Vec<(u64, u64, u64)> = received_geneve(&pkt)
            .map(|g| {
                g.options()
                    .map(|o| (u64::from(o.class), u64::from(o.ty), o.wire_len() as u64))
                    .collect()
            })
            .unwrap_or_default();
        let lens = &row["geneve.option.length"];
        let theirs: Vec<(u64, u64, u64)> = classes
            .iter()
            .zip(&row["geneve.option.type"])
            .zip(lens.iter().skip(1))
            .map(|((c, t), l)| (num(c), num(t), num(l)))
            .collect();
        assert_eq!(ours, theirs, "{ctx}: options");
        if let Some(g) = received_geneve(&pkt) {
            assert_eq!(
                g.options_bytes().len() as u64,
                lens.first().map_or(0, |l| num(l)),
                "{ctx}: option length"
            );
        }

        // Inner 5-tuple: the last occurrence of each field is the inner header's.
        let ip_count = row["ip.src"].len() + row["ipv6.src"].len();
        if !pkt.meta.has(flags::L3_VALID) {
            assert_eq!(
                ip_count, 1,
                "{ctx}: tshark saw an inner IP header we did not"
            );
            continue;
        }
        assert_eq!(ip_count, 2, "{ctx}");
        let k = pkt.meta.flow;
        let (src, dst, proto) = match k.family() {
            Family::V4 => ("ip.src", "ip.dst", "ip.proto"),
            Family::V6 => ("ipv6.src", "ipv6.dst", "ipv6.nxt"),
        };
        let last = |f: &str| row[f].last().cloned().unwrap_or_default();
        assert_eq!(k.src_ip().to_string(), last(src), "{ctx}: inner source");
        assert_eq!(
            k.dst_ip().to_string(),
            last(dst),
            "{ctx}: inner destination"
        );
        assert_eq!(
            u64::from(k.proto),
            num(&last(proto)),
            "{ctx}: inner protocol"
        );
        let ports = match k.proto {
            6 => Some(("tcp.srcport", "tcp.dstport")),
            17 => Some(("udp.srcport", "udp.dstport")),
            _ => None,
        };
        if let Some((s, d)) = ports {
            assert_eq!(
                u64::from(k.src_port),
                num(&last(s)),
                "{ctx}: inner source port"
            );
            assert_eq!(
                u64::from(k.dst_port),
                num(&last(d)),
                "{ctx}: inner dest port"
            );
        }
        assert_eq!(k.zone.0, vni, "{ctx}: zone from VNI");
    }
    Summary {
        tunnels,
        frames: recs.len(),
    }
}

#[test]
fn geneve_and_vxlan_captures_decapsulate_like_tshark_dissects_them() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let cases: &[(&str, &[&str], usize)] = &[
        ("geneve.pcap", &[], 1),
        ("geneve-gcp.pcap", &[], 1),
        ("gso-ipv4-geneve-ipv4.pcap", &[], 1),
        ("vxlan.pcap", &[], 1),
        ("vxlan_port_8472.pcap", &["-d", "udp.port==8472,vxlan"], 1),
    ];
    for (file, extra, min) in cases {
        let s = check_capture(file, extra, config());
        eprintln!("{file}: {} tunnel frames of {}", s.tunnels, s.frames);
        assert!(s.tunnels >= *min, "{file}: no tunnel frames checked");
    }
}

#[test]
fn ipv6_vxlan_capture_with_an_offloaded_checksum() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    // This GSO capture was taken before checksum offload: its outer UDP checksum is a
    // partial sum, which tshark reports as bad. nf agrees and drops it ...
    let path = common::shared_dir().join("testdata/pcap/gso-ipv6-vxlan-ipv6.pcap");
    let rows = tshark_rows(&path, &[]);
    // Wireshark checksum status: 0 bad, 1 good, 2 unverified, 3 not present.
    assert_eq!(
        rows[0]["udp.checksum.status"][0], "0",
        "tshark: bad checksum"
    );
    let rec = &nf_examples::pcap::read_file(&path).unwrap()[0];
    let mut pkt = Packet::new(rec.data.clone(), 0, rec.data.len()).unwrap();
    assert_eq!(
        DecapStage::new(config())
            .unwrap()
            .decap(Instant::ZERO, &mut pkt),
        Err(DropReason::TunnelBadUdpChecksum)
    );
    // ... and with verification off (a NIC already checked it), decapsulates it as tshark.
    let lenient = DecapConfig {
        verify_udp_checksum: false,
        ..config()
    };
    let s = check_capture("gso-ipv6-vxlan-ipv6.pcap", &[], lenient);
    assert_eq!(s.tunnels, 1);
}

#[test]
fn ovs_critical_option_is_dropped_when_not_understood() {
    let path = common::shared_dir().join("testdata/pcap/geneve.pcap");
    let recs = nf_examples::pcap::read_file(&path).unwrap();
    let mut stage = DecapStage::new(DecapConfig::default()).unwrap();
    let mut dropped = 0;
    for r in &recs {
        let mut pkt = Packet::new(r.data.clone(), 0, r.data.len()).unwrap();
        match stage.decap(Instant::ZERO, &mut pkt) {
            Err(DropReason::TunnelCriticalOption) => dropped += 1,
            Ok(Verdict::Pass) => assert_eq!(pkt.meta.tunnel.options, 0),
            other => panic!("{other:?}"),
        }
    }
    assert!(dropped > 0 && dropped < recs.len());
}
