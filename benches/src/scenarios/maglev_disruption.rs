//! `maglev-disruption`: the share of flows that move when 1 of N equal backends leaves,
//! N = 10, 100 and 1,000 (one line each), M = 65,537, averaged over several departures. Flows
//! are uniform over slots, so the share of flows moved is the share of slots whose backend
//! changed, counted exactly over the whole table. `departed_share` (1/N) is the minimum any
//! scheme must move.
//!
//! Ours: `MaglevTable`. Peer: the paper's population algorithm (Maglev, NSDI'16) written here,
//! with its own permutations (SipHash-1-3 under another key), at the same N and M; its
//! timings are the rebuild after the departure, per table entry, beside ours.
//! `meets_target`: ours moves at most 5% more than the reference (plus 0.001 absolute).

use super::maglev_build::backends;
use crate::harness::{self, Opts, Rng};
use core::hash::Hasher as _;
use nf_lb::{Backend, BackendId, LbKey, MaglevTable};
use serde_json::json;
use siphasher::sip::SipHasher13;

const M: u32 = 65_537;
const SIZES: [u32; 3] = [10, 100, 1000];

pub(crate) fn run(opts: &Opts) {
    for n in SIZES {
        run_n(opts, n);
    }
}

fn run_n(opts: &Opts, n: u32) {
    let key = LbKey::new(*b"nf-bench maglev!");
    let all = backends(n);
    let departures = (if opts.quick { 5 } else { 20 }).min(n);
    let mut rng = Rng::new(0xd15c_0000 + u64::from(n));
    let gone: Vec<usize> = (0..departures)
        .map(|_| rng.below(u64::from(n)) as usize)
        .collect();
    let build = |b: &[Backend]| MaglevTable::new(&key, M, b).unwrap_or_else(|e| panic!("{e}"));
    let ours_full = build(&all);
    let ref_ids: Vec<BackendId> = all.iter().map(|b| b.id).collect();
    let ref_full = reference_maglev(M, &ref_ids);
    let (mut ours_moved, mut ref_moved) = (0u64, 0u64);
    for &g in &gone {
        let rest: Vec<Backend> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != g)
            .map(|(_, b)| *b)
            .collect();
        let ours = build(&rest);
        ours_moved += ours_full
            .entries()
            .zip(ours.entries())
            .filter(|&(x, y)| ours_full.backends()[x as usize].id != ours.backends()[y as usize].id)
            .count() as u64;
        let ids: Vec<BackendId> = rest.iter().map(|b| b.id).collect();
        let after = reference_maglev(M, &ids);
        ref_moved += ref_full
            .iter()
            .zip(&after)
            .filter(|&(&x, &y)| ref_ids[x as usize] != ids[y as usize])
            .count() as u64;
    }
    let total = f64::from(M) * f64::from(departures);
    let ours_frac = ours_moved as f64 / total;
    let ref_frac = ref_moved as f64 / total;

    // Rebuild time after a departure, ours beside the reference.
    let rest: Vec<Backend> = all.iter().skip(1).copied().collect();
    let rest_ids: Vec<BackendId> = rest.iter().map(|b| b.id).collect();
    let r = harness::ab(
        opts,
        u64::from(M),
        || u64::from(build(&rest).lookup(1)),
        || u64::from(reference_maglev(M, &rest_ids).first().copied().unwrap_or(0)),
    );
    harness::report(
        opts,
        "maglev-disruption",
        "reference Maglev (the paper's population algorithm, in nf-bench, own SipHash key)",
        r,
        json!({
            "backends": n,
            "table_size": M,
            "departures": departures,
            "unit": "ns per table entry (rebuild)",
            "departed_share": round6(1.0 / f64::from(n)),
            "moved_fraction": round6(ours_frac),
            "peer_moved_fraction": round6(ref_frac),
            "moved_over_departed": round6(ours_frac * f64::from(n)),
            "peer_moved_over_departed": round6(ref_frac * f64::from(n)),
            "meets_target": ours_frac <= ref_frac * 1.05 + 0.001,
        }),
    );
}

/// The paper's algorithm: offset = h1 mod M, skip = h2 mod (M − 1) + 1, backends take turns
/// in the order given, each taking its next unclaimed preference.
fn reference_maglev(m: u32, ids: &[BackendId]) -> Vec<u32> {
    let m64 = u64::from(m);
    let hash = |tag: u8, id: &BackendId| {
        let mut h = SipHasher13::new_with_key(b"reference maglev");
        h.write(&[tag]);
        h.write(id.as_bytes());
        h.finish()
    };
    let offset: Vec<u64> = ids.iter().map(|b| hash(1, b) % m64).collect();
    let skip: Vec<u64> = ids.iter().map(|b| hash(2, b) % (m64 - 1) + 1).collect();
    let mut next: Vec<u64> = offset.clone();
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0;
    loop {
        for i in 0..ids.len() {
            let mut c = next[i];
            while entry[c as usize] != u32::MAX {
                c = (c + skip[i]) % m64;
            }
            entry[c as usize] = i as u32;
            next[i] = (c + skip[i]) % m64;
            filled += 1;
            if filled == m {
                return entry;
            }
        }
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
