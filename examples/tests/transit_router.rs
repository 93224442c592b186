//! Runs the `transit-router` example: every packet goes to the attachment its source
//! attachment's route table names (longest match, per-attachment isolation, a miss to the
//! control path), and tshark, an independent dissector, reads the written capture as VXLAN
//! with the expected VNIs, outer destinations and untouched inner addresses.

mod common;

use std::process::Command;

/// (inner src, inner dst, outer dst, VNI) of each routed packet, in order.
const ROUTED: [(&str, &str, &str, &str); 6] = [
    ("10.1.0.5", "10.2.0.7", "192.0.2.12", "102"),
    ("10.1.0.5", "10.3.0.9", "192.0.2.13", "103"),
    ("10.2.0.7", "10.1.0.5", "192.0.2.11", "101"),
    ("10.3.0.9", "10.2.0.7", "192.0.2.12", "102"),
    // 10.2.9.0/24 -> a beats 10.2.0.0/16 -> b in c's table.
    ("10.3.0.9", "10.2.9.1", "192.0.2.11", "101"),
    // c's default route.
    ("10.3.0.9", "198.51.100.1", "192.0.2.11", "101"),
];

#[test]
fn routes_by_attachment_tables_and_tshark_agrees() {
    let path = std::env::temp_dir().join(format!("transit-router-{}.pcap", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_transit-router"))
        .arg("--write")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // b has no route to c: the packet goes to the control path and is counted.
    assert!(
        text.contains("b     10.2.0.7    -> 10.3.0.9        no route (to control)"),
        "{text}"
    );
    assert!(
        text.contains("route.no_route = 1") && text.contains("route.routed = 6"),
        "{text}"
    );
    for (src, dst, outer, vni) in ROUTED {
        let line = text
            .lines()
            .find(|l| l.contains(src) && l.contains(&format!("-> {dst} ")));
        let line = line.unwrap_or_else(|| panic!("no line for {src} -> {dst} in\n{text}"));
        assert!(line.contains(outer) && line.ends_with(vni), "{line}");
    }

    if !common::require("tshark", &["--version"]) {
        std::fs::remove_file(&path).ok();
        return;
    }
    let rows = common::tshark_rows(
        &path,
        &[],
        &["ip.src", "ip.dst", "vxlan.vni", "udp.dstport"],
    );
    std::fs::remove_file(&path).ok();
    assert_eq!(rows.len(), ROUTED.len());
    for (row, (src, dst, outer, vni)) in rows.iter().zip(ROUTED) {
        // Outer first, then inner.
        assert_eq!(row["ip.src"], ["192.0.2.1", src], "{row:?}");
        assert_eq!(row["ip.dst"], [outer, dst], "{row:?}");
        assert_eq!(row["vxlan.vni"], [vni], "{row:?}");
        assert_eq!(row["udp.dstport"][0], "4789", "{row:?}");
    }
}
