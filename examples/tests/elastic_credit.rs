//! Runs the `elastic-credit` example and checks the three phases of Achelous §5 in its
//! per-second series: tenant A quiet, then bursting at 1.5× base for 30–60 s while credit
//! lasts, then held at base; tenant B held by processing cost below its bandwidth base. Also
//! checks that the SVG chart is written.

use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_elastic-credit"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn three_phases_and_the_cpu_held_tenant() {
    let out = run(&["--csv"]);
    let rows: Vec<Vec<f64>> = out
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("phases"))
        .map(|l| l.split(',').map(|f| f.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 150);
    let a = |s: usize| rows[s][1];
    // Phase 1: quiet, credit grows to the cap.
    assert!((0..30).all(|s| a(s) == 0.0));
    assert!(
        (rows[29][2] - 1406.25).abs() < 0.1,
        "credit at the cap: {}",
        rows[29][2]
    );
    // Phase 2: the burst at 1500 Mbps lasts between 30 and 60 s.
    let burst_end = (30..150).find(|&s| a(s) < 1400.0).unwrap();
    assert!(
        (60..=90).contains(&burst_end),
        "burst ended at {burst_end} s"
    );
    assert!((30..burst_end).all(|s| (a(s) - 1500.0).abs() < 1.0));
    // Phase 3: held at the 1000 Mbps base.
    assert!(
        (burst_end + 1..150).all(|s| (a(s) - 1000.0).abs() < 5.0),
        "held at base"
    );
    // B: held at 400 kpps (20% of a core at 500 ns per packet), far under its byte base.
    assert!((1..150).all(|s| (rows[s][3] - 400.0).abs() < 2.0 && rows[s][4] < 1000.0));
    assert!(out.contains("phases: A quiet 0-30 s, burst 30-"));
}

#[test]
fn writes_the_chart() {
    let path = std::env::temp_dir().join(format!("elastic-credit-{}.svg", std::process::id()));
    run(&["--svg", path.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 3);
}
