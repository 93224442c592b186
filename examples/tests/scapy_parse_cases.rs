//! scapy builds valid and malformed frames (IPv6 extension chains, IPv4 options,
//! truncations, bad lengths ...) with the outcome each must have; nf's parse stage must
//! give exactly that outcome for every one. The table lives in `scapy/parse_cases.py`.

mod common;

use nf_core::{Batch, Instant, Packet, ParseStage, Stage, Verdict};
use nf_examples::pcap::PcapReader;
use std::process::Command;

#[test]
fn scapy_cases_have_the_expected_outcome() {
    let py = common::system_python();
    if !common::require(py, &["-c", "import scapy.all"]) {
        return;
    }
    let dir = common::temp_dir("scapy-parse");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scapy/parse_cases.py");
    let out = Command::new(py).arg(script).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "scapy script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::fs::read_to_string(dir.join("cases.tsv")).unwrap();
    let frames = PcapReader::new(std::fs::File::open(dir.join("cases.pcap")).unwrap())
        .unwrap()
        .records()
        .unwrap();
    let rows: Vec<(&str, &str)> = table.lines().map(|l| l.split_once('\t').unwrap()).collect();
    assert_eq!(rows.len(), frames.len());
    assert!(rows.len() >= 50, "the case table shrank");

    // All frames in batches of up to 64 (the batch result must not depend on neighbours).
    let mut got = Vec::new();
    for chunk in frames.chunks(nf_core::BATCH_SIZE) {
        let mut b = Batch::new();
        for r in chunk {
            b.push(Packet::new(r.data.clone(), 0, r.data.len()).unwrap())
                .unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    eprintln!("{} scapy cases checked", rows.len());
}
