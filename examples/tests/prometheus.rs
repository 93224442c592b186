//! `pcap-flows --prometheus` prints an exposition that Prometheus can read: every line is a
//! `# HELP`, a `# TYPE` or a sample of the family typed last (text format 0.0.4). Also fed to
//! `prometheus_client`'s parser when python3 has it (`python3-prometheus-client`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

fn exposition() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pcap-flows"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo.pcap"))
        .arg("--prometheus")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report = String::from_utf8(out.stderr).unwrap();
    assert!(
        report.contains("connections"),
        "the report goes to stderr: {report}"
    );
    String::from_utf8(out.stdout).unwrap()
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// `{name="value",...}` at the start of `s`: the label names and the rest of `s`.
fn labels(s: &str) -> Option<(Vec<String>, &str)> {
    let mut rest = s.strip_prefix('{')?;
    let mut names = Vec::new();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Some((names, r));
        }
        let (name, r) = rest.split_once("=\"")?;
        if !is_name(name) || name.starts_with("__") {
            return None;
        }
        names.push(name.to_string());
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()? {
                    (_, '\\' | '"' | 'n') => {}
                    _ => return None,
                },
                (i, '"') => break i,
                (_, '\n') => return None,
                _ => {}
            }
        };
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Checks one exposition; returns the samples per family.
fn check(text: &str) -> Vec<(String, usize)> {
    let mut families: Vec<(String, usize)> = Vec::new();
    let mut helped = HashSet::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, doc) = help.split_once(' ').expect(line);
            assert!(is_name(name) && !doc.is_empty(), "{line}");
            assert!(helped.insert(name.to_string()), "HELP twice: {line}");
        } else if let Some(ty) = line.strip_prefix("# TYPE ") {
            let (name, kind) = ty.split_once(' ').expect(line);
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                families.iter().all(|(f, _)| f != name),
                "TYPE twice: {line}"
            );
            families.push((name.to_string(), 0));
        } else {
            let end = line.find(['{', ' ']).expect(line);
            let (name, rest) = line.split_at(end);
            let (names, rest) = labels(rest).unwrap_or((Vec::new(), rest));
            let unique: HashSet<_> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "a label twice: {line}");
            let value = rest.strip_prefix(' ').expect(line);
            let value = value.split(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "value: {line}");
            let (family, n) = families.last_mut().expect("a sample before any TYPE");
            assert_eq!(name, family.as_str(), "a sample outside its family: {line}");
            *n += 1;
        }
    }
    families
}

#[test]
fn pcap_flows_prints_a_valid_exposition() {
    let text = exposition();
    assert!(text.ends_with('\n'));
    let families = check(&text);
    let samples = |f: &str| families.iter().find(|(n, _)| n == f).map(|(_, n)| *n);
    // parse (five common counters) and conntrack (five common, then its own, pinned in
    // nf-core's conntrack tests); the demo capture has drops.
    assert_eq!(samples("nf_stage_counter"), Some(51));
    assert!(text.contains("nf_stage_counter{position=\"1\",stage=\"conntrack\",counter=\"hits\"}"));
    assert!(samples("nf_stage_drops_total").is_some_and(|n| n > 0));
    assert!(
        text.contains("nf_stage_counter{position=\"1\",stage=\"conntrack\",counter=\"packets\"}")
    );

    // The reference parser, when there is one.
    let py = common::system_python();
    let have = Command::new(py)
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            !common::in_ci(),
            "CI=true: install python3-prometheus-client (Debian) for this check"
        );
        eprintln!("SKIP: python3 has no prometheus_client (apt install python3-prometheus-client)");
        return;
    }
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        fams = list(parse(sys.stdin.read()))\n\
        print(sum(len(f.samples) for f in fams))\n";
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected it: {out:?}"
    );
    let parsed: usize = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(parsed, families.iter().map(|(_, n)| n).sum::<usize>());
}

#[test]
fn the_checker_rejects_what_prometheus_would() {
    for bad in [
        "x 1\n",                                     // a sample before its TYPE
        "# TYPE x counter\nx{a=\"1} 2\n",            // unterminated label value
        "# TYPE x counter\nx{a=\"\\q\"} 2\n",        // unknown escape
        "# TYPE x counter\nx{a=\"1\",a=\"2\"} 3\n",  // a label twice
        "# TYPE x counter\nx one\n",                 // not a number
        "# TYPE x counter\n# TYPE y counter\nx 1\n", // outside its family
        "# TYPE x kinda\n",                          // unknown type
    ] {
        assert!(
            std::panic::catch_unwind(|| check(bad)).is_err(),
            "accepted: {bad:?}"
        );
    }
    assert_eq!(
        check("# HELP x a\n# TYPE x counter\nx{a=\"\\\"\"} 1\n"),
        [("x".to_string(), 1)]
    );
}
