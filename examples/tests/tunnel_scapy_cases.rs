//! scapy builds valid and invalid Geneve and VXLAN frames (bad option length sums, unknown
//! critical options, version 1, truncated options, the O bit, VXLAN without the I flag,
//! bad and zero UDP checksums, reserved bits ...) with the outcome RFC 8926 / RFC 7348 call
//! for; nf-tunnel's decapsulation must give exactly that outcome for every one. The case
//! table lives in `nf-tunnel/tests/scapy/tunnel_cases.py`.

mod common;

use nf_core::flags;
use nf_core::{Batch, Instant, Packet, Stage, Verdict};
use nf_tunnel::profile::gwlb;
use nf_tunnel::{DecapConfig, DecapStage, OptionSpec, TunnelKind};
use std::process::Command;

fn generic() -> DecapConfig {
    DecapConfig {
        ports: vec![
            (6081, TunnelKind::Geneve),
            (4789, TunnelKind::Vxlan),
            (8472, TunnelKind::Vxlan),
        ],
        options: vec![
            OptionSpec::known(0x0108, 1),
            OptionSpec::known(0x0108, 2),
            OptionSpec::known(0x0108, 3),
        ],
        ..DecapConfig::default()
    }
}

#[test]
fn scapy_tunnel_cases_have_the_rfc_outcome() {
    let py = common::system_python();
    if !common::require(py, &["-c", "import scapy.all, scapy.contrib.geneve"]) {
        return;
    }
    let dir = common::temp_dir("scapy-tunnel");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../nf-tunnel/tests/scapy/tunnel_cases.py"
    );
    let out = Command::new(py).arg(script).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "scapy script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::fs::read_to_string(dir.join("cases.tsv")).unwrap();
    let frames = nf_examples::pcap::read_file(dir.join("cases.pcap")).unwrap();
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), frames.len());
    assert!(rows.len() >= 40, "the case table shrank");

    let mut failures = Vec::new();
    for profile in ["generic", "gwlb"] {
        let cfg = if profile == "gwlb" {
            gwlb::decap_config()
        } else {
            generic()
        };
        // All of a profile's frames in one batch: the outcome must not depend on neighbours.
        let mut stage = DecapStage::new(cfg);
        let mut b = Batch::new();
        let mine: Vec<usize> = (0..rows.len()).filter(|&i| rows[i][1] == profile).collect();
        for &i in &mine {
            let d = &frames[i].data;
            b.push(Packet::new(d.clone(), 0, d.len()).unwrap()).unwrap();
        }
        stage.process(Instant::ZERO, &mut b);
        for (&i, p) in mine.iter().zip(b.drain()) {
            let m = p.meta;
            let have = match m.verdict {
                Verdict::Pass if m.tunnel.outer_len == 0 => "notunnel".to_string(),
                Verdict::Pass if !m.has(flags::L3_VALID) => {
                    format!("pass {} nonip", m.tunnel.vni)
                }
                Verdict::Pass => format!(
                    "pass {} {} {} {} {}",
                    m.tunnel.vni, m.flow.proto, m.flow.src_port, m.flow.dst_port, m.tunnel.options
                ),
                Verdict::Drop(r) => format!("drop {}", r.name()),
                Verdict::ToControl => "control".to_string(),
                Verdict::Tx(_) => "tx".to_string(),
            };
            if have != rows[i][2] {
                failures.push(format!(
                    "{}: want {:?}, have {have:?}",
                    rows[i][0], rows[i][2]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
