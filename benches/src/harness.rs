//! Shared measurement harness: options, A/B alternation, medians, JSON lines.

use serde_json::{Map, Value, json};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The traffic generator lives with the replay loop, which the callgrind drivers share.
pub(crate) use crate::replay::Rng;

pub(crate) const USAGE: &str =
    "usage: nf-bench list | all | SCENARIO [--quick] [--json] [--sessions N] | summary [FILE]";

/// Command-line options shared by every scenario.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    pub(crate) scenario: String,
    /// Finish each scenario in well under 20 s (CI and spot checks).
    pub(crate) quick: bool,
    /// Print only JSON lines (no readable summary on stderr).
    pub(crate) json: bool,
    /// Scenario-specific table size override (`--sessions N`).
    pub(crate) sessions: Option<usize>,
}

impl Opts {
    pub(crate) fn parse(args: &[String]) -> Result<Self, String> {
        let mut scenario = None;
        let mut quick = false;
        let mut json = false;
        let mut sessions = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--json" => json = true,
                "--sessions" => {
                    let v = it.next().ok_or("--sessions needs a number")?;
                    sessions = Some(v.parse().map_err(|_| format!("bad --sessions {v:?}"))?);
                }
                s if s.starts_with("--") => return Err(format!("unknown option {s}")),
                s if scenario.is_none() => scenario = Some(s.to_string()),
                s => return Err(format!("unexpected argument {s:?}")),
            }
        }
        Ok(Self {
            scenario: scenario.ok_or("missing SCENARIO")?,
            quick,
            json,
            sessions,
        })
    }

    /// Number of measured A/B rounds.
    pub(crate) fn rounds(&self) -> usize {
        if self.quick { 15 } else { 61 }
    }

    /// Target wall time of one round of one side.
    pub(crate) fn round_time(&self) -> Duration {
        if self.quick {
            Duration::from_millis(40)
        } else {
            Duration::from_millis(150)
        }
    }
}

/// Medians of an A/B measurement, in nanoseconds per element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AbResult {
    pub(crate) ours_ns: f64,
    pub(crate) peer_ns: f64,
}

/// Measures `ours` and `peer` alternately (A B A B ...) and returns per-element medians.
/// Every timed round follows an untimed one of the same side (steady-state caches).
///
/// Each closure processes `elems` elements per call and returns a value folded into
/// `black_box` so the work cannot be optimised away. The number of calls per timed round is
/// calibrated once from both sides together, so both get equal iteration counts (the same
/// inputs); the untimed round before it runs at least as many calls and at least one
/// [`Opts::round_time`], so the faster side is warmed as long as the slower one.
pub(crate) fn ab(
    opts: &Opts,
    elems: u64,
    mut ours: impl FnMut() -> u64,
    mut peer: impl FnMut() -> u64,
) -> AbResult {
    // Warm up and calibrate, timing each side on its own.
    let (mut t_ours, mut t_peer) = (Duration::ZERO, Duration::ZERO);
    let mut calls = 0u64;
    while t_ours + t_peer < opts.round_time() / 2 || calls < 2 {
        let t = Instant::now();
        black_box(ours());
        t_ours += t.elapsed();
        let t = Instant::now();
        black_box(peer());
        t_peer += t.elapsed();
        calls += 1;
    }
    let round = opts.round_time().as_secs_f64();
    let per_call = |d: Duration| (d.as_secs_f64() / calls as f64).max(1e-9);
    let iters = ((round / ((per_call(t_ours) + per_call(t_peer)) / 2.0)) as u64).max(1);
    let warm_ours = iters.max((round / per_call(t_ours)) as u64);
    let warm_peer = iters.max((round / per_call(t_peer)) as u64);

    let mut a = Vec::with_capacity(opts.rounds());
    let mut b = Vec::with_capacity(opts.rounds());
    // Each round first runs its side untimed for at least as long again, so that neither side
    // is timed on the caches the other side's round left behind: a table near the size of the
    // last-level cache would otherwise start every round cold, which no deployment does
    // (`conntrack-hit` at 1M sessions: about 2.5 ns per lookup for ours, 6 for the peer; `lpm`
    // at 1M prefixes, whose peer takes 8 times as long per call, measured about 13 ns with a
    // warm-up as short as its own timed round and 9.5 with one round time).
    for _ in 0..opts.rounds() {
        run_calls(warm_ours, &mut ours);
        a.push(time_calls(iters, elems, &mut ours));
        run_calls(warm_peer, &mut peer);
        b.push(time_calls(iters, elems, &mut peer));
    }
    AbResult {
        ours_ns: median(&mut a),
        peer_ns: median(&mut b),
    }
}

/// Times only `ours` (for scenarios whose peer is measured differently).
pub(crate) fn solo(opts: &Opts, elems: u64, mut f: impl FnMut() -> u64) -> f64 {
    let t = Instant::now();
    let mut calls = 0u64;
    while t.elapsed() < opts.round_time() / 2 || calls < 2 {
        black_box(f());
        calls += 1;
    }
    let per_call = t.elapsed().as_secs_f64() / calls as f64;
    let iters = ((opts.round_time().as_secs_f64() / per_call.max(1e-9)) as u64).max(1);
    let mut a: Vec<f64> = (0..opts.rounds())
        .map(|_| time_calls(iters, elems, &mut f))
        .collect();
    median(&mut a)
}

fn run_calls(iters: u64, f: &mut impl FnMut() -> u64) {
    let mut acc = 0u64;
    for _ in 0..iters {
        acc = acc.wrapping_add(f());
    }
    black_box(acc);
}

fn time_calls(iters: u64, elems: u64, f: &mut impl FnMut() -> u64) -> f64 {
    let t = Instant::now();
    run_calls(iters, f);
    t.elapsed().as_nanos() as f64 / (iters * elems.max(1)) as f64
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Adds an issue's targets to a result line's parameters: `target_<what>` for each of
/// `targets` (read by `nf-bench summary`: speedups and rates are floors, the rest ceilings)
/// and `meets_target`.
pub(crate) fn set_targets(params: &mut Value, targets: &[(&str, f64)], meets: bool) {
    if let Some(m) = params.as_object_mut() {
        for &(what, v) in targets {
            m.insert(format!("target_{what}"), json!(v));
        }
        m.insert("meets_target".into(), json!(meets));
    }
}

/// Prints one result line: the contract's common fields plus `extra`.
pub(crate) fn report(opts: &Opts, scenario: &str, peer: &str, r: AbResult, extra: Value) {
    let mut m = Map::new();
    m.insert("scenario".into(), json!(scenario));
    m.insert("ours_ns_per_pkt".into(), json!(round3(r.ours_ns)));
    m.insert("peer".into(), json!(peer));
    m.insert("peer_ns_per_pkt".into(), json!(round3(r.peer_ns)));
    m.insert("speedup".into(), json!(round3(r.peer_ns / r.ours_ns)));
    m.insert("mpps_per_core".into(), json!(round3(1000.0 / r.ours_ns)));
    m.insert("quick".into(), json!(opts.quick));
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    let line = Value::Object(m);
    emit(&format!("{line}"));
    if !opts.json {
        eprintln!(
            "{scenario:<18} ours {:>8.2} ns/pkt   {peer}: {:>8.2} ns/pkt   speedup {:.2}x",
            r.ours_ns,
            r.peer_ns,
            r.peer_ns / r.ours_ns
        );
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints one line to stdout; a reader that went away (`nf-bench all --json | head -3`) ends
/// the run quietly with status 0 instead of a broken-pipe panic.
pub(crate) fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("nf-bench: stdout: {e}");
        std::process::exit(1);
    }
}

/// Random lines [`two_random_lines_floor`] reads (two per key, then round again).
const FLOOR_PICKS: usize = 1 << 21;

/// The machine's floor for this table's footprint: ns per key to read two random cache
/// lines of a `bytes`-sized array, the memory work of one hit (a bucket line and a record
/// line) with no hashing or comparing, and with the loads free to overlap as far as the core
/// allows (a lookup's two loads depend on each other, so it can only approach this through
/// prefetching). No lookup of this design beats it on the machine at hand; it moves with the
/// machine's memory latency, TLB reach and shared cache.
pub(crate) fn two_random_lines_floor(opts: &Opts, bytes: usize) -> f64 {
    let lines: Vec<[u64; 8]> = vec![[1; 8]; (bytes / 64).max(1)];
    let mut rng = Rng::new(0xF100);
    let picks: Vec<u32> = (0..FLOOR_PICKS)
        .map(|_| rng.below(lines.len() as u64) as u32)
        .collect();
    let mut at = 0usize;
    solo(opts, 64, || {
        let p = &picks[at..at + 128];
        at = (at + 128) % picks.len();
        p.iter()
            .map(|&i| lines.get(i as usize).map_or(0, |l| l[0]))
            .sum()
    })
}
