//! External oracle: every frame of every capture in `shared/testdata/pcap` (written by Open
//! vSwitch, Linux, Google Cloud ...) is parsed by nf, and its outer addresses, protocol,
//! ports and VLAN id equal what `tshark -T fields` prints for the same frame.

mod common;

use nf_core::flags;
use nf_core::{Meta, ParseConfig, Parsed, parse_frame};
use std::process::Command;

const FIELDS: &[&str] = &[
    "frame.number",
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
    "vlan.id",
    "ip.flags.mf",
    "ip.frag_offset",
    "frame.protocols",
];

#[test]
fn every_capture_frame_matches_tshark() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let dir = common::shared_dir().join("testdata/pcap");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the shared captures in {}",
        dir.display()
    );
    let (mut frames, mut ip_frames, mut with_ports) = (0, 0, 0);
    for file in &files {
        let mut cmd = Command::new("tshark");
        cmd.args(["-n", "-r"]).arg(file).args([
            "-T",
            "fields",
            "-E",
            "occurrence=f",
            "-E",
            "separator=/t",
        ]);
        // Decode-as is irrelevant for the outer headers we compare; keep tshark's defaults.
        for f in FIELDS {
            cmd.args(["-e", f]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "tshark failed on {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        let records = nf_examples::pcap::read_file(file).unwrap();
        assert_eq!(rows.len(), records.len(), "{}: frame count", file.display());
        for (rec, row) in records.iter().zip(&rows) {
            frames += 1;
            let field = |name: &str| -> &str {
                row.get(FIELDS.iter().position(|f| *f == name).unwrap())
                    .copied()
                    .unwrap_or("")
            };
            let ctx = format!(
                "{} frame {}",
                file.file_name().unwrap().to_string_lossy(),
                field("frame.number")
            );
            let mut meta = Meta::default();
            let res = parse_frame(&rec.data, &mut meta, &ParseConfig::default());
            // The outer IP header is whichever of ip / ipv6 comes first in the protocol stack.
            let stack: Vec<&str> = field("frame.protocols").split(':').collect();
            let first_ip = stack.iter().find(|p| **p == "ip" || **p == "ipv6").copied();
            let (t_src, t_dst, t_proto) = if first_ip == Some("ip") {
                (field("ip.src"), field("ip.dst"), field("ip.proto"))
            } else if first_ip == Some("ipv6") {
                (field("ipv6.src"), field("ipv6.dst"), field("ipv6.nxt"))
            } else {
                ("", "", "")
            };
            if t_src.is_empty() {
                assert_eq!(res, Ok(Parsed::NonIp), "{ctx}: tshark sees no IP header");
                continue;
            }
            assert_eq!(res, Ok(Parsed::Ip), "{ctx}: tshark decodes IP");
            ip_frames += 1;
            let k = meta.flow;
            assert_eq!(k.src_ip().to_string(), t_src, "{ctx}: source address");
            assert_eq!(k.dst_ip().to_string(), t_dst, "{ctx}: destination address");
            if meta.has(flags::IP_OPTIONS) && k.src_ip().is_ipv6() {
                // ipv6.nxt is the first next header; ours is the upper layer after the chain.
            } else {
                assert_eq!(k.proto.to_string(), t_proto, "{ctx}: protocol");
            }
            if !field("vlan.id").is_empty() {
                assert_eq!(meta.vlan[0].to_string(), field("vlan.id"), "{ctx}: VLAN id");
            }
            let later_fragment = field("ip.frag_offset").parse::<u32>().is_ok_and(|o| o != 0);
            let (tsp, tdp) = match k.proto {
                6 => (field("tcp.srcport"), field("tcp.dstport")),
                17 => (field("udp.srcport"), field("udp.dstport")),
                _ => ("", ""),
            };
            if !tsp.is_empty() && !later_fragment {
                with_ports += 1;
                assert_eq!(k.src_port.to_string(), tsp, "{ctx}: source port");
                assert_eq!(k.dst_port.to_string(), tdp, "{ctx}: destination port");
            }
        }
    }
    eprintln!(
        "{frames} frames compared with tshark: {ip_frames} IP, {with_ports} with TCP/UDP ports"
    );
    assert!(ip_frames > 60 && with_ports > 60);
}
