//! scapy builds valid and malformed frames (IPv6 extension chains, IPv4 options,
//! truncations, bad lengths ...) with the outcome each must have; nf's parse stage must
//! give exactly that outcome for every one. The table lives in `scapy/parse_cases.py`.

mod common;

use nf_core::{Batch, Instant, Packet, ParseStage, Stage, Verdict};

#[test]
fn scapy_cases_have_the_expected_outcome() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scapy/parse_cases.py");
    let Some((rows, frames)) = common::scapy_cases(script, "scapy-parse") else {
        return;
    };
    assert!(rows.len() >= 50, "the case table shrank");

    // All frames in batches of up to 64 (the batch result must not depend on neighbours).
    let mut got = Vec::new();
    for chunk in frames.chunks(nf_core::BATCH_SIZE) {
        let mut b = Batch::new();
        for f in chunk {
            b.push(Packet::new(f.clone(), 0, f.len()).unwrap()).unwrap();
        }
        ParseStage::default().process(Instant::ZERO, &mut b);
        got.extend(b.drain().map(|p| p.meta));
    }
    let mut failures = Vec::new();
    for ((name, want), m) in rows.iter().zip(&got) {
        let have = match m.verdict {
            Verdict::Pass => format!(
                "pass {} {} {}",
                m.flow.proto, m.flow.src_port, m.flow.dst_port
            ),
            Verdict::Drop(r) => format!("drop {}", r.name()),
            Verdict::ToControl => "control".to_string(),
            Verdict::Tx(p) => format!("tx {}", p.0),
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
    eprintln!("{} scapy cases checked", rows.len());
}
