//! `elastic-credit`: the Achelous elastic credit limiter (SIGCOMM'23 §5) on a simulated clock.
//!
//! Two tenants share a host that has headroom throughout:
//!
//! - **A**, base 1000 Mbps, credit cap 1.40625 GB, spend rate C = 1/2. Quiet for 30 s (it
//!   earns credit, base − usage, up to the cap), then offers 1500 Mbps. It bursts at 1500 Mbps
//!   while credit lasts (the 500 Mbps above base cost 250 Mbps of credit: 45 s), then is held
//!   at its 1000 Mbps base: the paper's three phases.
//! - **B**, base 1000 Mbps and 20% of a core (200 ms of processing per second), offers 1 Mpps
//!   of 64-byte packets (512 Mbps, half its bandwidth base) that cost 500 ns each to process
//!   (50% of a core). The limiter charges the processing time measured per batch, and B is
//!   held by that dimension to 400 kpps (205 Mbps) although its bandwidth is under base.
//!
//! Every 10 ms tick each tenant offers its traffic in batches (A: 25 packets of 1500 bytes,
//! B: 100 packets of 64 bytes); [`ElasticLimiter::admit`] decides per batch and B's batch cost
//! is charged with [`ElasticLimiter::charge_cost`]. The program prints a timeline every 5 s,
//! a one-line summary of A's phases, and with `--svg PATH` writes a chart of both tenants'
//! rates and A's credit; `--csv` prints the per-second series instead of the timeline.

use nf_core::{Duration, Instant};
use nf_policy::{ElasticConfig, ElasticDimension, ElasticLimiter, SpendRate};
use std::fmt::Write as _;
use std::process::ExitCode;

const SECONDS: u64 = 150;
const TICK: Duration = Duration::from_millis(10);
const TICKS_PER_SEC: u64 = 100;
/// 1000 Mbps in bytes per second.
const GBPS_BYTES: u64 = 125_000_000;
const A_QUIET_UNTIL: u64 = 30;
/// A's offer: 1500 Mbps = 1.875 MB per 10 ms = 1250 packets of 1500 bytes, in 50 batches.
const A_BATCHES: u64 = 50;
const A_BATCH_PACKETS: u64 = 25;
const A_PACKET: u64 = 1500;
/// B's offer: 1 Mpps = 10 000 packets per tick, in 100 batches of 100 packets of 64 bytes.
const B_BATCHES: u64 = 100;
const B_BATCH_PACKETS: u64 = 100;
const B_PACKET: u64 = 64;
const B_NS_PER_PACKET: u64 = 500;

/// One simulated second.
#[derive(Clone, Copy, Debug, Default)]
struct Second {
    a_mbps: f64,
    a_credit_mb: f64,
    b_kpps: f64,
    b_mbps: f64,
}

fn main() -> ExitCode {
    let mut svg = None;
    let mut csv = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--svg" => svg = args.next(),
            "--csv" => csv = true,
            _ => {
                eprintln!("usage: elastic-credit [--svg PATH] [--csv]");
                return ExitCode::from(2);
            }
        }
    }
    let series = simulate();
    if csv {
        println!("second,a_mbps,a_credit_mb,b_kpps,b_mbps");
        for (s, x) in series.iter().enumerate() {
            println!(
                "{s},{:.1},{:.1},{:.1},{:.1}",
                x.a_mbps, x.a_credit_mb, x.b_kpps, x.b_mbps
            );
        }
    } else {
        println!("   t   A Mbps  A credit MB   B kpps   B Mbps");
        for (s, x) in series.iter().enumerate().filter(|(s, _)| s % 5 == 0) {
            println!(
                "{s:>4}s {:>8.1} {:>12.1} {:>8.1} {:>8.1}",
                x.a_mbps, x.a_credit_mb, x.b_kpps, x.b_mbps
            );
        }
    }
    println!("{}", summary(&series));
    if let Some(path) = svg {
        if let Err(e) = std::fs::write(&path, chart(&series)) {
            eprintln!("elastic-credit: {path}: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("wrote {path}");
    }
    ExitCode::SUCCESS
}

fn simulate() -> Vec<Second> {
    let start = Instant::from_nanos(1);
    let half = SpendRate::new(1, 2).unwrap_or(SpendRate::ONE);
    let mut a = ElasticLimiter::new(
        ElasticConfig::new().with_bytes(
            ElasticDimension::new(GBPS_BYTES, 1_406_250_000)
                .with_spend(half)
                // 20 ms of base: two ticks, so a tick's leftover (less than a batch) plus
                // the next tick's accrual still fits and is not mistaken for unused base.
                .with_base_burst(GBPS_BYTES / 50),
        ),
        start,
    );
    let mut b = ElasticLimiter::new(
        ElasticConfig::new()
            .with_bytes(ElasticDimension::new(GBPS_BYTES, GBPS_BYTES))
            .with_cost(ElasticDimension::new(200_000_000, 0)),
        start,
    );
    let headroom = true;
    let mut out = Vec::new();
    let mut now = start;
    for s in 0..SECONDS {
        let (mut a_bytes, mut b_packets) = (0u64, 0u64);
        for _ in 0..TICKS_PER_SEC {
            now += TICK;
            if s >= A_QUIET_UNTIL {
                for _ in 0..A_BATCHES {
                    let bytes = A_BATCH_PACKETS * A_PACKET;
                    if a.admit(now, bytes, A_BATCH_PACKETS, headroom).is_admitted() {
                        a_bytes += bytes;
                    }
                }
            } else {
                // Quiet: time passes for the limiter all the same (it earns credit).
                a.admit(now, 0, 0, headroom);
            }
            for _ in 0..B_BATCHES {
                let bytes = B_BATCH_PACKETS * B_PACKET;
                if b.admit(now, bytes, B_BATCH_PACKETS, headroom).is_admitted() {
                    b_packets += B_BATCH_PACKETS;
                    // The caller measures what processing the batch cost and charges it.
                    b.charge_cost(now, B_BATCH_PACKETS * B_NS_PER_PACKET, headroom);
                }
            }
        }
        out.push(Second {
            a_mbps: a_bytes as f64 * 8.0 / 1e6,
            a_credit_mb: a.credit().0 as f64 / 1e6,
            b_kpps: b_packets as f64 / 1e3,
            b_mbps: (b_packets * B_PACKET) as f64 * 8.0 / 1e6,
        });
    }
    out
}

/// "A: quiet 0-30 s, burst 30-75 s (≈1500 Mbps), held 75-150 s (≈1000 Mbps); B: ≈400 kpps".
fn summary(series: &[Second]) -> String {
    let burst_end = series
        .iter()
        .enumerate()
        .skip(A_QUIET_UNTIL as usize)
        .find(|(_, x)| x.a_mbps < 1400.0)
        .map_or(SECONDS as usize, |(s, _)| s);
    let mean = |r: core::ops::Range<usize>, f: fn(&Second) -> f64| {
        let v: Vec<f64> = series.get(r).unwrap_or_default().iter().map(f).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let q = A_QUIET_UNTIL as usize;
    format!(
        "phases: A quiet 0-{q} s, burst {q}-{burst_end} s at {:.0} Mbps, held {burst_end}-{SECONDS} s at {:.0} Mbps; B held at {:.0} kpps ({:.0} Mbps) by processing cost",
        mean(q + 1..burst_end.saturating_sub(1), |x| x.a_mbps),
        mean(burst_end + 2..SECONDS as usize, |x| x.a_mbps),
        mean(2..SECONDS as usize, |x| x.b_kpps),
        mean(2..SECONDS as usize, |x| x.b_mbps),
    )
}

/// An SVG line chart: A's rate and B's bandwidth in Mbps (left axis, 0-2000), A's credit in MB
/// (right axis, 0-1500), with the base and the phases marked.
fn chart(series: &[Second]) -> String {
    let (w, h, left, top, pw, ph) = (900.0, 420.0, 60.0, 40.0, 760.0, 320.0);
    let x = |s: f64| left + s / SECONDS as f64 * pw;
    let y = |v: f64, max: f64| top + ph - v / max * ph;
    let line = |f: fn(&Second) -> f64, max: f64| {
        let mut p = String::new();
        for (s, v) in series.iter().enumerate() {
            let _ = write!(p, "{:.1},{:.1} ", x(s as f64 + 0.5), y(f(v), max));
        }
        p
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="white"/>
<text x="{left}" y="20" font-size="14">Elastic credit (Achelous §5): tenant A bursts on credit, then is held at base; tenant B is held by processing cost</text>
<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>
"##
    );
    for mbps in [0.0, 500.0, 1000.0, 1500.0, 2000.0] {
        let yy = y(mbps, 2000.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{mbps}</text>"##,
            left + pw,
            left - 5.0,
            yy + 4.0
        );
    }
    for mb in [0.0, 500.0, 1000.0, 1500.0] {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{:.1}" fill="#2a7">{mb}</text>"##,
            left + pw + 5.0,
            y(mb, 1500.0) + 4.0
        );
    }
    for s in (0..=SECONDS).step_by(30) {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{s} s</text>"##,
            x(s as f64),
            top + ph + 16.0
        );
    }
    let base = y(1000.0, 2000.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" x2="{}" y1="{base:.1}" y2="{base:.1}" stroke="#555" stroke-dasharray="4 4"/><text x="{}" y="{:.1}">base 1000 Mbps</text>"##,
        left + pw,
        left + 5.0,
        base - 4.0
    );
    let _ = writeln!(
        svg,
        r##"<polyline fill="none" stroke="#c33" stroke-width="2" points="{}"/>
<polyline fill="none" stroke="#2a7" stroke-width="2" points="{}"/>
<polyline fill="none" stroke="#36c" stroke-width="2" points="{}"/>
<text x="{left}" y="{}" fill="#c33">A rate (Mbps, left)</text>
<text x="{}" y="{}" fill="#2a7">A credit (MB, right)</text>
<text x="{}" y="{}" fill="#36c">B rate (Mbps, left; held at 400 kpps by CPU)</text>
</svg>"##,
        line(|v| v.a_mbps, 2000.0),
        line(|v| v.a_credit_mb, 1500.0),
        line(|v| v.b_mbps, 2000.0),
        h - 30.0,
        left + 170.0,
        h - 30.0,
        left + 340.0,
        h - 30.0,
    );
    svg
}
