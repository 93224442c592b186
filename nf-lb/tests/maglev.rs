//! Properties of the Maglev table: the paper's algorithm (written here independently) gives
//! the same table for equal weights, balance, weights, order independence, disruption, drain,
//! errors, and batch = single lookups.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

use core::hash::Hasher as _;
use nf_core::{FlowKey, ZoneId, flow::proto};
use nf_lb::{
    Backend, BackendId, BuildError, DEFAULT_TABLE_SIZE, LbKey, MAX_TABLE_SIZE, MaglevTable,
    table_size_for,
};
use proptest::prelude::*;
use siphasher::sip::SipHasher13;

const KEY: [u8; 16] = *b"maglev prop test";

fn id(i: u32) -> BackendId {
    BackendId::v4([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80)
}

fn equal(n: u32) -> Vec<Backend> {
    (0..n).map(|i| Backend::new(id(i), 1)).collect()
}

fn build(size: u32, backends: &[Backend]) -> MaglevTable {
    MaglevTable::new(&LbKey::new(KEY), size, backends).unwrap()
}

/// Backend identity per slot (indices differ between tables with different backend lists).
fn owners(t: &MaglevTable) -> Vec<BackendId> {
    t.entries().map(|i| t.backends()[i as usize].id).collect()
}

fn moved(a: &MaglevTable, b: &MaglevTable) -> usize {
    owners(a)
        .iter()
        .zip(owners(b))
        .filter(|(x, y)| **x != *y)
        .count()
}

/// The paper's population algorithm (Maglev, NSDI'16, Algorithm 1), written from its
/// description: permutation[i][j] = (offset + j · skip) mod M, backends take turns in list
/// order, each taking its next unclaimed preference. `hash(tag, id)` gives offset and skip.
fn reference_maglev(m: u64, ids: &[BackendId], hash: &dyn Fn(u8, &BackendId) -> u64) -> Vec<usize> {
    let offset: Vec<u64> = ids.iter().map(|b| hash(1, b) % m).collect();
    let skip: Vec<u64> = ids.iter().map(|b| hash(2, b) % (m - 1) + 1).collect();
    let mut next = vec![0u64; ids.len()];
    let mut entry = vec![usize::MAX; m as usize];
    let mut n = 0;
    'fill: loop {
        for i in 0..ids.len() {
            let mut c = (offset[i] + next[i] * skip[i]) % m;
            while entry[c as usize] != usize::MAX {
                next[i] += 1;
                c = (offset[i] + next[i] * skip[i]) % m;
            }
            entry[c as usize] = i;
            next[i] += 1;
            n += 1;
            if n == m {
                break 'fill;
            }
        }
    }
    entry
}

/// The documented encoding, hashed with the `siphasher` crate (not nf-core's SipHash).
fn documented_hash(key: [u8; 16]) -> impl Fn(u8, &BackendId) -> u64 {
    move |tag, id| {
        let mut h = SipHasher13::new_with_key(&key);
        h.write(&[tag, id.as_bytes().len() as u8]);
        h.write(id.as_bytes());
        h.finish()
    }
}

fn sorted_ids(backends: &[Backend]) -> Vec<BackendId> {
    let mut ids: Vec<BackendId> = backends.iter().map(|b| b.id).collect();
    ids.sort();
    ids
}

fn small_prime() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![101u32, 211, 503, 1_009, 2_003, 5_003])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With equal weights our table is the paper's table for the backends in identity order,
    /// with the offsets and skips of the documented encoding.
    #[test]
    fn equal_weights_match_the_papers_algorithm(n in 1u32..60, m in small_prime()) {
        let backends = equal(n);
        let ours = build(m, &backends);
        let ids = sorted_ids(&backends);
        let reference = reference_maglev(u64::from(m), &ids, &documented_hash(KEY));
        let ours_ids = owners(&ours);
        let ref_ids: Vec<BackendId> = reference.iter().map(|&i| ids[i]).collect();
        prop_assert_eq!(ours_ids, ref_ids);
    }

    /// Maglev's balance: at M ≥ 100·N with equal weights, max/min entries ≤ 1.01.
    #[test]
    fn balance_within_one_percent(n in 1u32..300) {
        let m = table_size_for(n as usize).unwrap();
        let counts = build(m, &equal(n)).entries_per_backend();
        let max = *counts.iter().max().unwrap();
        let min = *counts.iter().min().unwrap();
        prop_assert!(f64::from(max) / f64::from(min) <= 1.01, "max {max} min {min}");
    }

    /// Entries follow weights: each backend's count is within one entry, and within 1%, of
    /// M·w/Σw when M ≥ 100·Σw/min(w) (every share is at least 100 entries).
    #[test]
    fn weights_proportional_within_one_percent(weights in prop::collection::vec(1u32..=12, 1..25)) {
        let backends: Vec<Backend> = weights.iter().zip(0..).map(|(&w, i)| Backend::new(id(i), w)).collect();
        let w_sum: u32 = weights.iter().sum();
        let w_min = *weights.iter().min().unwrap();
        let m = table_size_for((w_sum / w_min + 1) as usize).unwrap();
        let t = build(m, &backends);
        let counts = t.entries_per_backend();
        for (b, &c) in t.backends().iter().zip(&counts) {
            let exact = f64::from(m) * f64::from(b.weight) / f64::from(w_sum);
            prop_assert!((f64::from(c) - exact).abs() < 1.0, "{c} vs {exact}");
            prop_assert!((f64::from(c) / exact - 1.0).abs() <= 0.01, "{c} vs {exact}");
        }
    }

    /// The table depends on the set of backends, not their order.
    #[test]
    fn order_independent(
        weights in prop::collection::vec(0u32..6, 1..30),
        seed in any::<u64>(),
        m in small_prime(),
    ) {
        let mut backends: Vec<Backend> = weights.iter().zip(0..).map(|(&w, i)| Backend::new(id(i), w + u32::from(i == 0))).collect();
        let a = build(m, &backends);
        // Fisher–Yates with a fixed generator.
        let mut s = seed | 1;
        for i in (1..backends.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            backends.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let b = build(m, &backends);
        prop_assert!(a.entries().eq(b.entries()));
        prop_assert_eq!(a.backends(), b.backends());
    }

    /// When one of N equal backends leaves, we move no more entries than the paper's
    /// algorithm at the same N and M (same documented permutations).
    #[test]
    fn disruption_no_worse_than_the_papers(n in 2u32..60, m in small_prime(), leave in any::<prop::sample::Index>()) {
        let all = equal(n);
        let gone = leave.index(n as usize);
        let rest: Vec<Backend> = all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, b)| *b).collect();
        let ours = moved(&build(m, &all), &build(m, &rest));
        let hash = documented_hash(KEY);
        let (ids_all, ids_rest) = (sorted_ids(&all), sorted_ids(&rest));
        let before = reference_maglev(u64::from(m), &ids_all, &hash);
        let after = reference_maglev(u64::from(m), &ids_rest, &hash);
        let reference = before.iter().zip(&after).filter(|&(&x, &y)| ids_all[x] != ids_rest[y]).count();
        prop_assert!(ours <= reference, "ours {ours} reference {reference}");
    }

    /// Draining moves exactly the drained backend's entries; they go to serving backends in
    /// proportion to weight (largest remainder over the freed slots).
    #[test]
    fn drain_moves_only_the_drained_entries(
        weights in prop::collection::vec(1u32..6, 2..30),
        pick in any::<prop::sample::Index>(),
        m in small_prime(),
    ) {
        let backends: Vec<Backend> = weights.iter().zip(0..).map(|(&w, i)| Backend::new(id(i), w)).collect();
        let before = build(m, &backends);
        let drained_id = backends[pick.index(backends.len())].id;
        let drained: Vec<Backend> = backends.iter().map(|b| if b.id == drained_id { b.draining() } else { *b }).collect();
        let after = build(m, &drained);
        let mut freed = 0;
        for (x, y) in owners(&before).iter().zip(owners(&after)) {
            prop_assert_ne!(y, drained_id);
            if *x == drained_id {
                freed += 1;
            } else {
                prop_assert_eq!(*x, y);
            }
        }
        let counts_before = before.entries_per_backend();
        let counts_after = after.entries_per_backend();
        let w_rest: u32 = weights.iter().sum::<u32>() - after.backends().iter().find(|b| b.id == drained_id).unwrap().weight;
        for ((b, &c0), &c1) in after.backends().iter().zip(&counts_before).zip(&counts_after) {
            if b.id != drained_id {
                let share = f64::from(freed) * f64::from(b.weight) / f64::from(w_rest);
                prop_assert!((f64::from(c1 - c0) - share).abs() < 1.0);
            }
        }
    }

    /// Weight 0 builds the table without the backend (it keeps its index, gets no entries).
    #[test]
    fn weight_zero_is_out_of_the_table(n in 2u32..40, pick in any::<prop::sample::Index>(), m in small_prime()) {
        let all = equal(n);
        let out = pick.index(n as usize);
        let zeroed: Vec<Backend> = all.iter().enumerate().map(|(i, b)| Backend::new(b.id, u32::from(i != out))).collect();
        let without: Vec<Backend> = all.iter().enumerate().filter(|(i, _)| *i != out).map(|(_, b)| *b).collect();
        let a = build(m, &zeroed);
        prop_assert_eq!(a.backends().len(), n as usize);
        prop_assert_eq!(owners(&a), owners(&build(m, &without)));
    }

    /// Every entry names a serving backend, for any mix of weights and drains.
    #[test]
    fn entries_name_serving_backends(
        spec in prop::collection::vec((0u32..4, any::<bool>()), 1..40),
        m in small_prime(),
    ) {
        let backends: Vec<Backend> = spec.iter().zip(0..).map(|(&(w, d), i)| {
            let b = Backend::new(id(i), w);
            if d { b.draining() } else { b }
        }).collect();
        match MaglevTable::new(&LbKey::new(KEY), m, &backends) {
            Ok(t) => {
                prop_assert!(t.entries().all(|i| t.backends()[i as usize].is_serving()));
                prop_assert_eq!(t.entries().count(), m as usize);
            }
            Err(e) => {
                prop_assert_eq!(e, BuildError::NoServingBackend);
                prop_assert!(!backends.iter().any(Backend::is_serving));
            }
        }
    }

    /// The batch API equals single lookups of single hashes.
    #[test]
    fn batch_equals_single(ports in prop::collection::vec(any::<(u16, u16, u8)>(), 0..200), out_len in 0usize..220) {
        let t = build(1_009, &equal(7));
        let keys: Vec<FlowKey> = ports.iter().map(|&(s, d, a)| FlowKey::v4(ZoneId(1), [10, 0, 0, a], [10, 9, 9, 9], proto::TCP, s, d)).collect();
        let mut out = vec![u32::MAX; out_len];
        let n = t.lookup_flows(&keys, &mut out);
        prop_assert_eq!(n, keys.len().min(out_len));
        for (k, &o) in keys.iter().zip(&out[..n]) {
            prop_assert_eq!(o, t.lookup(t.flow_hash(k)));
        }
        prop_assert!(out[n..].iter().all(|&o| o == u32::MAX));
    }
}

/// Disruption against the paper's algorithm with *independent* permutations (its own hash):
/// over every single departure from 100 backends, ours moves no more in total (within 5%).
#[test]
fn disruption_against_independent_reference() {
    let m = table_size_for(100).unwrap();
    let all = equal(100);
    let ours_full = build(m, &all);
    let other_key = *b"independent key!";
    let hash = documented_hash(other_key);
    let ids_all = sorted_ids(&all);
    let ref_full = reference_maglev(u64::from(m), &ids_all, &hash);
    let (mut ours, mut reference) = (0usize, 0usize);
    for gone in 0..all.len() {
        let rest: Vec<Backend> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != gone)
            .map(|(_, b)| *b)
            .collect();
        ours += moved(&ours_full, &build(m, &rest));
        let ids_rest = sorted_ids(&rest);
        let after = reference_maglev(u64::from(m), &ids_rest, &hash);
        reference += ref_full
            .iter()
            .zip(&after)
            .filter(|&(&x, &y)| ids_all[x] != ids_rest[y])
            .count();
    }
    assert!(
        ours as f64 <= reference as f64 * 1.05,
        "ours {ours} reference {reference}"
    );
}

#[test]
fn big_tables() {
    // u32 entries above 65,534 backends; a 5M-slot table.
    let many: Vec<Backend> = (0..70_000).map(|i| Backend::new(id(i), 1)).collect();
    let t = build(140_009, &many);
    assert_eq!(t.entry_bytes(), 140_009 * 4);
    let counts = t.entries_per_backend();
    assert!(counts.iter().all(|&c| c == 2 || c == 3));
    let t = build(5_000_011, &equal(1000));
    assert_eq!(t.size(), 5_000_011);
    assert_eq!(t.entry_bytes(), 5_000_011 * 2);
    let default = build(DEFAULT_TABLE_SIZE, &equal(1000));
    assert_eq!(default.entry_bytes(), 65_537 * 2);
}

#[test]
fn skewed_weights_fill_exactly() {
    // One heavy backend among light ones (the heap walk).
    let mut b: Vec<Backend> = (0..500).map(|i| Backend::new(id(i), 1)).collect();
    b[0].weight = 100_000;
    let t = build(DEFAULT_TABLE_SIZE, &b);
    let counts = t.entries_per_backend();
    let w_sum = 100_000.0 + 499.0;
    assert!((f64::from(counts[0]) - 65_537.0 * 100_000.0 / w_sum).abs() < 1.0);
}

#[test]
fn build_errors() {
    let key = LbKey::new(KEY);
    let ok = equal(3);
    assert_eq!(
        MaglevTable::new(&key, 65_535, &ok).unwrap_err(),
        BuildError::SizeNotPrime { size: 65_535 }
    );
    assert_eq!(
        MaglevTable::new(&key, 1, &ok).unwrap_err(),
        BuildError::SizeNotPrime { size: 1 }
    );
    assert_eq!(
        MaglevTable::new(&key, MAX_TABLE_SIZE + 1, &ok).unwrap_err(),
        BuildError::SizeTooLarge {
            size: MAX_TABLE_SIZE + 1
        }
    );
    assert_eq!(
        MaglevTable::new(&key, 101, &[]).unwrap_err(),
        BuildError::NoServingBackend
    );
    let drained: Vec<Backend> = ok.iter().map(|b| b.draining()).collect();
    assert_eq!(
        MaglevTable::new(&key, 101, &drained).unwrap_err(),
        BuildError::NoServingBackend
    );
    let zero = [Backend::new(id(1), 0)];
    assert_eq!(
        MaglevTable::new(&key, 101, &zero).unwrap_err(),
        BuildError::NoServingBackend
    );
    let dup = [
        Backend::new(id(1), 1),
        Backend::new(id(2), 1),
        Backend::new(id(1), 5),
    ];
    assert_eq!(
        MaglevTable::new(&key, 101, &dup).unwrap_err(),
        BuildError::DuplicateBackend { id: id(1) }
    );
    // Smallest table: M = 2 with more backends than slots.
    let t = MaglevTable::new(&key, 2, &equal(5)).unwrap();
    assert_eq!(t.entries_per_backend().iter().sum::<u32>(), 2);
    assert!(format!("{}", BuildError::SizeNotPrime { size: 4 }).contains("prime"));
}
