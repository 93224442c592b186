//! scapy builds valid and invalid Geneve and VXLAN frames (bad option length sums, unknown
//! critical options, version 1, truncated options, the O bit, VXLAN without the I flag,
//! bad and zero UDP checksums, reserved bits, every outer shape the parse stage accepts,
//! outer fragments, non-IP inner frames, foreign destinations, tunnels in tunnels ...) with
//! the outcome RFC 8926 / RFC 7348 call for; nf-tunnel's decapsulation must give exactly that
//! outcome for every one. Every frame it passes then goes through a parse stage and
//! connection tracking, which must find the same flow without a re-parse. The case table
//! lives in `nf-tunnel/tests/scapy/tunnel_cases.py`.

mod common;

use nf_core::conntrack::{Conntrack, ConntrackConfig};
use nf_core::flags;
use nf_core::{Batch, Instant, NonIpAction, Packet, ParseStage, Stage, StageExt, Verdict};
use nf_tunnel::profile::gwlb;
use nf_tunnel::{ConfigError, DecapConfig, DecapStage, OptionSpec, TunnelKind};
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
    for profile in ["generic", "gwlb", "strict", "local", "nested"] {
        let cfg = match profile {
            "gwlb" => gwlb::decap_config(),
            "strict" => {
                let mut c = generic();
                c.parse.non_ip = NonIpAction::Drop;
                c
            }
            "local" => DecapConfig {
                local_ips: vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()],
                local_macs: vec![[2, 0, 0, 0, 0, 2]],
                ..generic()
            },
            _ => generic(),
        };
        // All of a profile's frames in one batch: the outcome must not depend on neighbours.
        let mut stage = DecapStage::new(cfg.clone()).unwrap();
        let mut b = Batch::new();
        let mine: Vec<usize> = (0..rows.len()).filter(|&i| rows[i][1] == profile).collect();
        for &i in &mine {
            let d = &frames[i].data;
            b.push(Packet::new(d.clone(), 0, d.len()).unwrap()).unwrap();
        }
        if profile == "nested" {
            let mut three = DecapStage::new(cfg.clone())
                .unwrap()
                .then(DecapStage::new(cfg.clone()).unwrap())
                .then(DecapStage::new(cfg).unwrap());
            three.process(Instant::ZERO, &mut b);
        } else {
            stage.process(Instant::ZERO, &mut b);
        }
        let decapsulated: Vec<_> = b.packets().iter().map(|p| p.meta).collect();
        // What decap handed over is what a parse stage finds again, and connection tracking
        // makes a session of it (Ethernet and bare IP payloads alike).
        let mut after = ParseStage::default()
            .then(Conntrack::new(ConntrackConfig::new(*b"tunnel cases key"), ()).unwrap());
        after.process(Instant::ZERO, &mut b);
        for ((&i, p), m) in mine.iter().zip(b.drain()).zip(decapsulated) {
            let have = match m.verdict {
                Verdict::Pass if m.tunnel.outer_len == 0 => "notunnel".to_string(),
                Verdict::Pass if !m.has(flags::L3_VALID) => {
                    format!("pass {} nonip", m.tunnel.vni)
                }
                Verdict::Pass if m.tunnel.depth == 2 => format!(
                    "pass2 {} {} {} {} {}",
                    m.tunnel.outer_vni,
                    m.tunnel.vni,
                    m.flow.proto,
                    m.flow.src_port,
                    m.flow.dst_port
                ),
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
            if have.starts_with("pass") {
                let q = p.meta;
                if q.verdict != Verdict::Pass || q.session.is_none() || q.flow != m.flow {
                    failures.push(format!(
                        "{}: after decap, parse and conntrack: {:?}, session {:?}, flow {} (decap said {})",
                        rows[i][0], q.verdict, q.session, q.flow, m.flow
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Registering more Geneve options than a stage tracks is a config error, not options
/// silently ignored.
#[test]
fn too_many_registered_options_is_a_config_error() {
    let specs = |n: u8| (0..n).map(|t| OptionSpec::known(0x0108, t)).collect();
    let cfg = |n| DecapConfig {
        options: specs(n),
        ..DecapConfig::default()
    };
    assert!(DecapStage::new(cfg(16)).is_ok());
    assert_eq!(
        DecapStage::new(cfg(17)).err(),
        Some(ConfigError::TooManyOptions)
    );
}
