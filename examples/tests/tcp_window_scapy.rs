//! scapy builds TCP connections (IPv4 and IPv6, with and without window scaling, SACK),
//! segment by segment, with the verdict each must get from nf's TCP window tracking: in the
//! window, just outside, far outside (blind injection), resets with wrong and right sequence
//! numbers, retransmissions, old and unsent acknowledgments. parse → `Conntrack<TcpWindow>`
//! must give exactly that verdict for every one. The table lives in `scapy/window_cases.py`.

mod common;

use nf_core::conntrack::{Conntrack, ConntrackConfig, TcpWindow};
use nf_core::{Batch, Instant, Packet, ParseStage, Stage, StageExt, Verdict};

#[test]
fn scapy_segments_get_the_expected_verdict() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scapy/window_cases.py");
    let Some((rows, frames)) = common::scapy_cases(script, "scapy-window") else {
        return;
    };
    assert!(rows.len() >= 80, "the case table shrank");
    let ct = Conntrack::new(ConntrackConfig::new(*b"scapy windows!!!"), TcpWindow::new()).unwrap();
    let mut p = ParseStage::default().then(ct);
    let mut failures = Vec::new();
    // One segment per batch: each verdict depends on the state the earlier ones left.
    for ((name, want), f) in rows.iter().zip(&frames) {
        let mut b = Batch::new();
        b.push(Packet::new(f.clone(), 0, f.len()).unwrap()).unwrap();
        p.process(Instant::from_nanos(1_000_000_000), &mut b);
        let have = match b.packets().first().map(|p| p.meta.verdict) {
            Some(Verdict::Pass) => "pass".to_string(),
            Some(Verdict::Drop(r)) => format!("drop {}", r.name()),
            other => format!("{other:?}"),
        };
        if have != *want {
            failures.push(format!("{name}: expected {want:?}, got {have:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    eprintln!("{} scapy segments checked", rows.len());
}
