//! `maglev-build`: building a Maglev table of M = 65,537 slots for N = 1,000 equal backends,
//! in nanoseconds per table entry (`build_ms` gives the whole build).
//!
//! Ours: `nf_lb::MaglevTable::new` (keyed SipHash of each backend's identity bytes, sorted by
//! identity, permutations walked on the fly, u16 entries). Peers, one line each:
//! `maglev-hash` 0.1.0 `MaglevTable::with_capacity` (std `Hash`, unkeyed, order-dependent,
//! `usize` entries) and `maglev` 0.2.1 `Maglev::with_capacity` (materialises every backend's
//! whole permutation first: N × M `usize`s, 524 MB at N = 1,000, so it gets a few alternating
//! single builds rather than the harness's calibrated rounds).

use crate::harness::{self, AbResult, Opts};
use nf_lb::{Backend, BackendId, LbKey, MaglevTable};
use serde_json::json;
use std::hint::black_box;
use std::time::Instant;

const N: u32 = 1000;
const M: u32 = 65_537;
/// Issue 14: build in at most 1.0 ms and at least 2.5× faster than `maglev-hash`.
const TARGET_MS: f64 = 1.0;
const TARGET_SPEEDUP: f64 = 2.5;
const KEY: [u8; 16] = *b"nf-bench maglev!";

pub(crate) fn backends(n: u32) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            Backend::new(BackendId::v4([10, a, b, c], 8080), 1)
        })
        .collect()
}

/// Peer node names: the same addresses as (ip, port) tuples.
fn peer_nodes(n: u32) -> Vec<([u8; 4], u16)> {
    (0..n)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            ([10, a, b, c], 8080)
        })
        .collect()
}

pub(crate) fn run(opts: &Opts) {
    let key = LbKey::new(KEY);
    let ours_backends = backends(N);
    let nodes = peer_nodes(N);
    let build_ours = || {
        let t = MaglevTable::new(&key, M, &ours_backends)
            .unwrap_or_else(|e| panic!("maglev build: {e}"));
        u64::from(t.lookup(0x1234_5678))
    };
    let check = MaglevTable::new(&key, M, &ours_backends).unwrap_or_else(|e| panic!("{e}"));
    let counts = check.entries_per_backend();
    let (max, min) = (
        counts.iter().copied().max().unwrap_or(0),
        counts.iter().copied().min().unwrap_or(0),
    );

    // maglev-hash 0.1.0: calibrated A/B rounds.
    let r = harness::ab(opts, u64::from(M), build_ours, || {
        let t = maglev_hash::MaglevTable::with_capacity(nodes.clone(), M as usize);
        t.get(&0x1234_5678u64).map_or(0, |n| u64::from(n.1))
    });
    report(
        opts,
        "maglev-hash 0.1.0 MaglevTable::with_capacity(nodes, 65537)",
        r,
        max,
        min,
        check.entry_bytes(),
    );

    // maglev 0.2.1: a few alternating single builds (each allocates N × M usizes).
    let rounds = if opts.quick { 3 } else { 9 };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let reps = 20;
        for _ in 0..reps {
            black_box(build_ours());
        }
        a.push(t.elapsed().as_nanos() as f64 / f64::from(reps * M));
        let t = Instant::now();
        let peer = maglev::Maglev::with_capacity(nodes.clone(), M as usize);
        black_box(maglev::ConsistentHasher::get(&peer, &0x1234_5678u64).map(|n| n.1));
        drop(peer);
        b.push(t.elapsed().as_nanos() as f64 / f64::from(M));
    }
    let r = AbResult {
        ours_ns: harness::median(&mut a),
        peer_ns: harness::median(&mut b),
    };
    report(
        opts,
        "maglev 0.2.1 Maglev::with_capacity(nodes, 65537) (N x M permutations)",
        r,
        max,
        min,
        check.entry_bytes(),
    );
}

fn report(opts: &Opts, peer: &str, r: AbResult, max: u32, min: u32, entry_bytes: usize) {
    let ms = |ns_per_entry: f64| ns_per_entry * f64::from(M) / 1e6;
    let speedup = r.peer_ns / r.ours_ns;
    let meets = ms(r.ours_ns) <= TARGET_MS
        && (!peer.starts_with("maglev-hash") || speedup >= TARGET_SPEEDUP);
    harness::report(
        opts,
        "maglev-build",
        peer,
        r,
        json!({
            "backends": N,
            "table_size": M,
            "unit": "ns per table entry",
            "build_ms": round3(ms(r.ours_ns)),
            "peer_build_ms": round3(ms(r.peer_ns)),
            "entry_bytes": entry_bytes,
            "max_over_min_entries": round3(f64::from(max) / f64::from(min.max(1))),
            "target_build_ms": TARGET_MS,
            "target_speedup_vs_maglev_hash": TARGET_SPEEDUP,
            "meets_target": meets,
        }),
    );
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
