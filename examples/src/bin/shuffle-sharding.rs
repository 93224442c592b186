//! `shuffle-sharding [--svg PATH]`: how much two shuffle-sharded tenants share, computed
//! exactly and measured with nf's real sharder, and what a poisoned tenant does to its
//! neighbours.
//!
//! 1. AWS's two published examples (8 nodes with 3 per tenant; 100 nodes with 5 per tenant):
//!    the exact chance that two tenants share 0, 1, 2 ... nodes, as a fraction and a
//!    percentage, beside the share measured over every pair of many tenants placed by
//!    `nf_shuffle::Sharder`.
//! 2. A noisy neighbour: 1000 tenants on 100 nodes; one tenant's 5 nodes fail. How many of the
//!    other tenants lose 0, 1, 2 ... of their nodes, measured and expected, and what the
//!    sharder does once the failed-node lookback has passed.
//! 3. The 100/5 overlap distribution as an SVG chart (log scale), written to `PATH` or, by
//!    default, `nf-shuffle-overlap.svg` in the system's temporary directory.

use nf_shuffle::{
    Membership, Node, NodeState, ShardConfig, ShardKey, Sharder, expected_pairs_sharing_at_least,
    overlap_distribution, overlap_ratio,
};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

const KEY: [u8; 16] = *b"example secret!!";
const LOOKBACK_NS: u64 = 60_000_000_000;

fn main() -> ExitCode {
    let mut svg_path = std::env::temp_dir().join("nf-shuffle-overlap.svg");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--svg", Some(p)) => svg_path = PathBuf::from(p),
            _ => {
                eprintln!("usage: shuffle-sharding [--svg PATH]");
                return ExitCode::from(2);
            }
        }
    }
    match run(&svg_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shuffle-sharding: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(svg_path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("Shuffle sharding: how many nodes two tenants share");
    println!("(exact: hypergeometric; measured: every pair of tenants placed by nf's sharder;");
    println!(" measured values differ from exact by sampling noise: the sharder's multi-probe");
    println!(" lookups load nodes as evenly as uniform random placement)\n");
    overlap_table(8, 3, 400)?;
    let measured = overlap_table(100, 5, 3000)?;
    expected_pairs(100, 5, 1000)?;
    noisy_neighbour(100, 5, 1000)?;
    let exact = overlap_distribution(100, 5)?;
    std::fs::write(svg_path, svg_chart(100, 5, &exact, &measured))?;
    println!(
        "\nOverlap chart (100 nodes, 5 per tenant) written to {}",
        svg_path.display()
    );
    Ok(())
}

/// One zone of `nodes` nodes with `per_tenant` nodes per tenant.
fn sharder(nodes: u64, per_tenant: u32) -> Result<Sharder, Box<dyn std::error::Error>> {
    let fleet = Membership::new((0..nodes).map(|i| Node::new(i, 0)))?;
    let config = ShardConfig::new(per_tenant).with_failed_lookback_ns(LOOKBACK_NS);
    Ok(Sharder::new(ShardKey::new(KEY), config, fleet)?)
}

fn tenant(i: u32) -> Vec<u8> {
    format!("tenant-{i}").into_bytes()
}

/// Each tenant's shard as a bit set (all fleets here have at most 128 nodes).
fn placed_bitsets(
    s: &Sharder,
    tenants: u32,
    now: u64,
) -> Result<Vec<u128>, Box<dyn std::error::Error>> {
    (0..tenants)
        .map(|t| {
            let shard = s.shard(&tenant(t), now)?;
            Ok(shard.nodes().fold(0u128, |m, n| m | (1u128 << n.0)))
        })
        .collect()
}

/// Prints the exact and measured overlap distribution; returns the measured one.
fn overlap_table(
    nodes: u32,
    per_tenant: u32,
    tenants: u32,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let exact = overlap_distribution(nodes, per_tenant)?;
    let sets = placed_bitsets(&sharder(u64::from(nodes), per_tenant)?, tenants, 0)?;
    let mut counts = vec![0u64; per_tenant as usize + 1];
    for (i, a) in sets.iter().enumerate() {
        for b in &sets[i + 1..] {
            counts[(a & b).count_ones() as usize] += 1;
        }
    }
    let pairs: u64 = counts.iter().sum();
    let measured: Vec<f64> = counts.iter().map(|&c| c as f64 / pairs as f64).collect();

    println!("{nodes} nodes, {per_tenant} per tenant ({tenants} tenants placed, {pairs} pairs)");
    println!("  shared  exact fraction          exact %      measured %");
    for (o, (&p, &m)) in exact.iter().zip(&measured).enumerate() {
        let fraction = overlap_ratio(nodes, per_tenant, o as u32)
            .map_or_else(|| "-".to_string(), |(n, d)| format!("{n}/{d}"));
        println!(
            "  {o:>6}  {fraction:<20} {:>11}%  {:>11}%",
            sig(p * 100.0, 4),
            sig(m * 100.0, 4)
        );
    }
    // Half the summed absolute differences: the share of pairs that would have to change
    // overlap for measured to equal exact.
    let distance: f64 = exact
        .iter()
        .zip(&measured)
        .map(|(e, m)| (e - m).abs())
        .sum::<f64>()
        / 2.0;
    println!(
        "  distance from exact (total variation): {}%",
        sig(distance * 100.0, 2)
    );
    println!();
    Ok(measured)
}

/// Expected number of tenant pairs sharing at least `o` nodes, against the sharder.
fn expected_pairs(
    nodes: u32,
    per_tenant: u32,
    tenants: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let sets = placed_bitsets(&sharder(u64::from(nodes), per_tenant)?, tenants, 0)?;
    println!(
        "{tenants} tenants on {nodes} nodes, {per_tenant} each: pairs sharing at least o nodes"
    );
    println!("  at least  expected pairs   measured pairs");
    for o in 1..=per_tenant {
        let expected = expected_pairs_sharing_at_least(nodes, per_tenant, u64::from(tenants), o)?;
        let mut measured = 0u64;
        for (i, a) in sets.iter().enumerate() {
            measured += sets[i + 1..]
                .iter()
                .filter(|b| (a & *b).count_ones() >= o)
                .count() as u64;
        }
        println!("  {o:>8}  {:>14}   {measured:>14}", sig(expected, 4));
    }
    println!();
    Ok(())
}

/// One tenant poisons its nodes; what happens to everyone else.
fn noisy_neighbour(
    nodes: u64,
    per_tenant: u32,
    tenants: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut s = sharder(nodes, per_tenant)?;
    let before: Vec<_> = (0..tenants)
        .map(|t| s.shard(&tenant(t), 0))
        .collect::<Result<_, _>>()?;
    let noisy = &before[0];
    let failed_at = 1_000;
    for id in noisy.nodes() {
        s.set_state(
            id,
            NodeState::Failed {
                since_ns: failed_at,
            },
        );
    }
    let mut lost = vec![0u32; per_tenant as usize + 1];
    let mut fully_served = 0;
    for (t, shard) in before.iter().enumerate().skip(1) {
        let during = s.shard(&tenant(t as u32), failed_at + 1)?;
        let down = during
            .members()
            .iter()
            .filter(|m| matches!(m.state(), NodeState::Failed { .. }))
            .count();
        lost[down] += 1;
        // Sanity: during the lookback nobody's shard changes.
        debug_assert_eq!(
            during.nodes().collect::<Vec<_>>(),
            shard.nodes().collect::<Vec<_>>()
        );
        fully_served += u32::from(during.node_for_flow(t as u64).is_some());
    }
    let others = tenants - 1;
    let exact = overlap_distribution(nodes as u32, per_tenant)?;
    println!(
        "Noisy neighbour: {tenants} tenants on {nodes} nodes, {per_tenant} each; tenant-0's nodes fail"
    );
    println!("  nodes lost  tenants (of {others})   expected");
    for (o, &n) in lost.iter().enumerate() {
        println!(
            "  {o:>10}  {n:>17}   {:>8}",
            sig(exact[o] * f64::from(others), 4)
        );
    }
    println!("  tenants still served by a healthy node: {fully_served} of {others}");

    // After the lookback each affected tenant gets replacements; the rest are untouched.
    let after = failed_at + LOOKBACK_NS;
    let mut changed = 0;
    let mut max_changed = 0;
    for (t, shard) in before.iter().enumerate().skip(1) {
        let later = s.shard(&tenant(t as u32), after)?;
        let c = later.nodes_changed(shard);
        changed += u32::from(c > 0);
        max_changed = max_changed.max(c);
        debug_assert!(
            later
                .members()
                .iter()
                .all(|m| m.state() == NodeState::Active)
        );
    }
    println!(
        "  after the {}s lookback: {changed} tenants got replacement nodes (at most {max_changed} each, \
         exactly as many as they lost); the others kept their shards",
        LOOKBACK_NS / 1_000_000_000
    );
    Ok(())
}

/// `x` with `digits` significant digits.
fn sig(x: f64, digits: i32) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (digits - 1 - magnitude).max(0) as usize;
    format!("{x:.decimals$}")
}

/// A grouped bar chart of exact vs measured P(o), log scale from 1e-9 to 1.
fn svg_chart(nodes: u32, per_tenant: u32, exact: &[f64], measured: &[f64]) -> String {
    let (w, h, left, top, bottom) = (720.0, 420.0, 70.0, 40.0, 60.0);
    let plot_h = h - top - bottom;
    let decades = 9.0;
    let y = |p: f64| {
        let l = if p > 0.0 {
            p.log10().max(-decades)
        } else {
            -decades
        };
        top + plot_h * (-l / decades)
    };
    let groups = exact.len() as f64;
    let group_w = (w - left - 20.0) / groups;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Nodes shared by two tenants: {nodes} nodes, {per_tenant} per tenant</text>"#,
        w / 2.0
    );
    for d in 0..=9 {
        let p = 10f64.powi(-d);
        let yy = y(p);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}%</text>"##,
            w - 20.0,
            left - 6.0,
            yy + 4.0,
            if d <= 4 {
                sig(p * 100.0, 1)
            } else {
                format!("1e-{}", d - 2)
            }
        );
    }
    for (o, (&e, &m)) in exact.iter().zip(measured).enumerate() {
        let x0 = left + group_w * o as f64 + group_w * 0.15;
        let bw = group_w * 0.35;
        for (i, (p, colour)) in [(e, "#3b6ea8"), (m, "#e08a2c")].into_iter().enumerate() {
            let x = x0 + bw * i as f64;
            let yy = y(p);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{yy:.1}" width="{bw:.1}" height="{:.1}" fill="{colour}"><title>{}%</title></rect>"#,
                (top + plot_h - yy).max(0.0),
                sig(p * 100.0, 4)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{o}</text>"#,
            x0 + bw,
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">nodes shared</text>"#,
        left + (w - left - 20.0) / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="34" width="12" height="12" fill="#3b6ea8"/><text x="{}" y="45">exact</text><rect x="{}" y="34" width="12" height="12" fill="#e08a2c"/><text x="{}" y="45">measured (nf sharder)</text>"##,
        w - 260.0,
        w - 244.0,
        w - 190.0,
        w - 174.0
    );
    s.push_str("</svg>\n");
    s
}
