//! The router's neighbour discovery frames (`nf_examples::ndp`, RFC 4861) as tshark reads
//! them: a solicitation to the target's solicited-node group, a solicited advertisement and
//! the all-nodes answer to a duplicate address check, each well formed (no malformed frame,
//! no warning or error), ICMPv6 checksum good, hop limit 255, with the flags, target and
//! link-layer address option RFC 4861 §4.3–4.4 ask for. The Linux kernel's acceptance of
//! them is `nat_gateway.rs`'s IPv6 test.

mod common;

use nf_examples::ndp::{advertisement, solicitation};
use nf_examples::pcap::{CaptureWriter, Format, LINKTYPE_ETHERNET};
use std::net::Ipv6Addr;

const FIELDS: &[&str] = &[
    "_ws.malformed",
    "_ws.expert.severity",
    "eth.dst",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.hlim",
    "icmpv6.type",
    "icmpv6.checksum.status",
    "icmpv6.nd.ns.target_address",
    "icmpv6.nd.na.target_address",
    "icmpv6.nd.na.flag.r",
    "icmpv6.nd.na.flag.s",
    "icmpv6.nd.na.flag.o",
    "icmpv6.opt.type",
    "icmpv6.opt.linkaddr",
];

#[test]
fn neighbour_discovery_frames_are_what_tshark_reads() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let (mac, peer) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 9]);
    let (ours, theirs): (Ipv6Addr, Ipv6Addr) = (
        "2001:db8::1".parse().unwrap(),
        "2001:db8::ab:cdef".parse().unwrap(),
    );
    let dir = common::temp_dir("ndp-tshark");
    let path = dir.join("ndp.pcap");
    let mut w = CaptureWriter::new(std::fs::File::create(&path).unwrap(), Format::Pcap).unwrap();
    for f in [
        solicitation(mac, ours, theirs),
        advertisement(mac, ours, peer, theirs),
        advertisement(mac, ours, peer, Ipv6Addr::UNSPECIFIED),
    ] {
        w.write(1_700_000_000_000_000_000, LINKTYPE_ETHERNET, &f, None)
            .unwrap();
    }
    w.finish().unwrap();
    let rows = common::tshark_rows(&path, &["-n"], FIELDS);
    assert_eq!(rows.len(), 3);
    for (i, r) in rows.iter().enumerate() {
        common::assert_dissected_clean(i, r);
        let v = |f: &str| r[f].join(",");
        assert_eq!(v("ipv6.hlim"), "255", "{r:?}");
        assert_eq!(v("icmpv6.checksum.status"), "1", "{r:?}");
        assert_eq!(v("icmpv6.opt.linkaddr"), "02:00:00:00:00:01", "{r:?}");
    }
    let v = |i: usize, f: &str| rows[i][f].join(",");
    // The solicitation: to the solicited-node group of the target, its source address
    // option (type 1).
    assert_eq!(v(0, "eth.dst"), "33:33:ff:ab:cd:ef");
    assert_eq!(v(0, "ipv6.dst"), "ff02::1:ffab:cdef");
    assert_eq!(v(0, "icmpv6.type"), "135");
    assert_eq!(v(0, "icmpv6.nd.ns.target_address"), theirs.to_string());
    assert_eq!(v(0, "icmpv6.opt.type"), "1");
    // The answer: to the asker, router, solicited and override; the target address option.
    assert_eq!(v(1, "eth.dst"), "02:00:00:00:00:09");
    assert_eq!(v(1, "ipv6.dst"), theirs.to_string());
    assert_eq!(v(1, "icmpv6.type"), "136");
    assert_eq!(v(1, "icmpv6.nd.na.target_address"), ours.to_string());
    let flags = |i: usize| ["r", "s", "o"].map(|f| v(i, &format!("icmpv6.nd.na.flag.{f}")));
    assert_eq!(flags(1), ["1", "1", "1"].map(String::from), "{:?}", rows[1]);
    assert_eq!(v(1, "icmpv6.opt.type"), "2");
    // A duplicate address check's answer: to all nodes, not solicited.
    assert_eq!(v(2, "eth.dst"), "33:33:00:00:00:01");
    assert_eq!(v(2, "ipv6.dst"), "ff02::1");
    assert_eq!(flags(2), ["1", "0", "1"].map(String::from), "{:?}", rows[2]);
}
