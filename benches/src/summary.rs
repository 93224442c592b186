//! `nf-bench summary [FILE]`: the JSON lines of a run (a file, or standard input) as one
//! Markdown table, a row per line: what tells the line apart from the scenario's other
//! lines, ours and the peer in ns, the speedup, the targets the line carries and whether it
//! met them. `.ci/run` prints it after the benchmarks, so every run ends with one view of
//! every target; the README's table is one such output.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Keys that name a case (never a measurement), in the order a row shows them.
const CASE_KEYS: [&str; 12] = [
    "family",
    "outer",
    "distribution",
    "case",
    "set",
    "traffic",
    "layout",
    "steering",
    "rules",
    "backends",
    "nodes",
    "huge_pages",
];

/// The table for `input`'s JSON lines (blank lines skipped). A line that is not a JSON object
/// is an error naming its line number.
pub(crate) fn table(input: &str) -> Result<String, String> {
    let mut lines: Vec<Map<String, Value>> = Vec::new();
    for (n, l) in input.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => lines.push(m),
            _ => return Err(format!("line {}: not a JSON object", n + 1)),
        }
    }
    let mut out = String::from(
        "| scenario | case | ours ns | peer | peer ns | speedup | target | met |\n\
         |---|---|---:|---|---:|---:|---|---|\n",
    );
    for m in &lines {
        let scenario = text(m.get("scenario"));
        let same: Vec<&Map<String, Value>> = lines
            .iter()
            .filter(|o| text(o.get("scenario")) == scenario)
            .collect();
        // The case keys whose values differ between the scenario's lines.
        let case: Vec<String> = CASE_KEYS
            .iter()
            .filter(|k| same.iter().any(|o| o.get(**k) != m.get(**k)))
            .filter_map(|k| m.get(*k).map(|v| format!("{k} {}", short(k, v))))
            .collect();
        let targets: Vec<String> = m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .filter_map(|(k, v)| k.strip_prefix("target_").map(|t| target(t, v)))
            .collect();
        let met = match m.get("meets_target") {
            Some(Value::Bool(true)) => "yes",
            Some(Value::Bool(false)) => "**no**",
            _ => "",
        };
        let peer = m.get("peer").map(|v| short("peer", v)).unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{scenario}` | {} | {} | {peer} | {} | {} | {} | {met} |",
            case.join(", "),
            number(m.get("ours_ns_per_pkt")),
            number(m.get("peer_ns_per_pkt")),
            number(m.get("speedup")),
            targets.join(", "),
        );
    }
    Ok(out)
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// A case value as a row shows it: a peer by its first two words (crate and version).
fn short(key: &str, v: &Value) -> String {
    let t = text(Some(v));
    if key == "peer" {
        let words: Vec<&str> = t.split_whitespace().take(2).collect();
        words.join(" ").trim_end_matches([':', ',']).to_string()
    } else {
        t
    }
}

/// Numbers to three significant places at most: `51.2`, `2.44`, `279`.
fn number(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => String::new(),
    }
}

/// `target_<what>` as a bound: speedups and rates are floors, everything else a ceiling.
fn target(what: &str, v: &Value) -> String {
    let floor = what.contains("speedup") || what.contains("mpps");
    format!("{what} {} {}", if floor { "≥" } else { "≤" }, text(Some(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_line_with_what_sets_it_apart() {
        let input = r#"{"scenario":"lb-stage","huge_pages":"madvise","family":"ipv4","ours_ns_per_pkt":51.205,"peer":"hashbrown 0.17 HashMap<..>","peer_ns_per_pkt":278.771,"speedup":5.444,"target_ns_per_pkt":45.0,"meets_target":false}

{"scenario":"lb-stage","huge_pages":"none","family":"ipv4","ours_ns_per_pkt":56.615,"peer":"hashbrown 0.17 HashMap<..>","peer_ns_per_pkt":340.848,"speedup":6.021,"target_ns_per_pkt":45.0,"meets_target":false}
{"scenario":"maglev-build","ours_ns_per_pkt":12.838,"peer":"maglev-hash 0.1.0 MaglevTable","peer_ns_per_pkt":31.368,"speedup":2.443,"target_speedup_vs_maglev_hash":2.5,"meets_target":true}
{"scenario":"parse","ours_ns_per_pkt":5.592,"peer":"etherparse 0.21","peer_ns_per_pkt":37.763,"speedup":6.753}
"#;
        let t = table(input).unwrap_or_default();
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 2 + 4, "{t}");
        assert_eq!(
            rows[2],
            "| `lb-stage` | huge_pages madvise | 51.2 | hashbrown 0.17 | 279 | 5.44 | ns_per_pkt ≤ 45.0 | **no** |"
        );
        assert!(rows[3].contains("| huge_pages none |"), "{t}");
        assert!(
            rows[4].contains("speedup_vs_maglev_hash ≥ 2.5 | yes |"),
            "{t}"
        );
        assert!(rows[5].ends_with("| 6.75 |  |  |"), "{t}");
    }

    #[test]
    fn a_line_that_is_not_an_object_is_named() {
        assert_eq!(table("{}\n[1]\n"), Err("line 2: not a JSON object".into()));
    }
}
