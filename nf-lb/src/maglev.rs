//! The Maglev lookup table: keyed per-backend permutations of a prime number of slots,
//! filled in weighted turns, independent of the order backends are listed in.
//!
//! Invariants, for every table built:
//! - every entry names a backend with a weight above 0 that is not draining;
//! - the serving backends' entry counts are the exact largest-remainder apportionment of the
//!   table size over their weights (so equal weights differ by at most one entry);
//! - the table depends only on the key, the size and the *set* of backends: listing them in
//!   another order builds the identical table;
//! - a draining backend's entries are the only ones that differ from the table in which it
//!   serves with the same weight.

use crate::backend::{Backend, BuildError, sorted_backends};
use crate::key::{LbKey, TAG_OFFSET, TAG_SKIP};
use crate::prime::{MAX_TABLE_SIZE, is_prime};
use alloc::boxed::Box;
use alloc::collections::BinaryHeap;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;
use nf_core::{FlowHasher, FlowKey, owner_of};

/// Most backends one [`MaglevTable`] lists (serving or not).
pub const MAX_MAGLEV_BACKENDS: usize = 1 << 20;

/// Flow keys hashed at once by [`MaglevTable::lookup_flows`] before their lookups.
const HASH_BATCH: usize = 64;

/// A Maglev lookup table: flow hash → backend, the same on every node that builds it from the
/// same key, size and set of backends.
///
/// Build it off the packet path (about a millisecond for 1,000 backends and 65,537 slots) and
/// swap it in whole; lookups are one multiply and one load.
///
/// ```
/// use nf_lb::{Backend, BackendId, LbKey, MaglevTable, DEFAULT_TABLE_SIZE};
/// let key = LbKey::new(*b"operator secret!");
/// let backends = [
///     Backend::new(BackendId::v4([10, 0, 0, 1], 80), 1),
///     Backend::new(BackendId::v4([10, 0, 0, 2], 80), 3),
/// ];
/// let table = MaglevTable::new(&key, DEFAULT_TABLE_SIZE, &backends)?;
/// let counts = table.entries_per_backend();
/// assert_eq!(counts.iter().sum::<u32>(), DEFAULT_TABLE_SIZE);
/// assert_eq!(counts, [16_384, 49_153]); // 1 : 3
/// # Ok::<(), nf_lb::BuildError>(())
/// ```
#[derive(Clone)]
pub struct MaglevTable {
    backends: Vec<Backend>,
    entries: Entries,
    flow: FlowHasher,
}

/// Entries are `u16` when the backend list allows (half the cache footprint of `u32`: 128 KiB
/// at the default size), `u32` otherwise.
#[derive(Clone)]
enum Entries {
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl MaglevTable {
    /// Builds the table of `size` slots (a prime, at most
    /// [`MAX_TABLE_SIZE`](crate::MAX_TABLE_SIZE)) for `backends`, in any order.
    ///
    /// Memory during the build is O(size + backends); the work is O(size · log size) probes
    /// on average plus O(size · log backends) for skewed weights.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for a size that is not a prime or too large, no serving backend, a
    /// repeated identity, or more than [`MAX_MAGLEV_BACKENDS`] backends.
    pub fn new(key: &LbKey, size: u32, backends: &[Backend]) -> Result<Self, BuildError> {
        if size > MAX_TABLE_SIZE {
            return Err(BuildError::SizeTooLarge { size });
        }
        if !is_prime(size) {
            return Err(BuildError::SizeNotPrime { size });
        }
        let backends = sorted_backends(backends, MAX_MAGLEV_BACKENDS)?;
        let entries = if backends.len() < usize::from(u16::MAX) {
            Entries::Narrow(fill::<u16>(key, size, &backends).into_boxed_slice())
        } else {
            Entries::Wide(fill::<u32>(key, size, &backends).into_boxed_slice())
        };
        Ok(Self {
            backends,
            entries,
            flow: key.flow_hasher(),
        })
    }

    /// The table size (number of slots), a prime.
    pub fn size(&self) -> u32 {
        // The size was a u32 when the table was built.
        match &self.entries {
            Entries::Narrow(e) => e.len() as u32,
            Entries::Wide(e) => e.len() as u32,
        }
    }

    /// Every backend given, sorted by identity; lookups return indices into this slice.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend index (into [`Self::backends`]) for a flow hash: slot `⌊hash · size / 2^64⌋`.
    #[inline]
    pub fn lookup(&self, hash: u64) -> u32 {
        let slot = owner_of(hash, self.size()) as usize;
        match &self.entries {
            Entries::Narrow(e) => e.get(slot).map_or(0, |&i| u32::from(i)),
            Entries::Wide(e) => e.get(slot).copied().unwrap_or(0),
        }
    }

    /// The backend for a flow hash.
    #[inline]
    pub fn backend(&self, hash: u64) -> Option<&Backend> {
        self.backends.get(self.lookup(hash) as usize)
    }

    /// The flow hash the table's key gives a flow ([`FlowHasher::hash`]: one direction).
    #[inline]
    pub fn flow_hash(&self, key: &FlowKey) -> u64 {
        self.flow.hash(key)
    }

    /// Backend indices for a batch of flows: hashes up to 64 keys first, then looks them up.
    /// Fills `out[i]` for `i < min(keys.len(), out.len())` and returns that count; each is
    /// `lookup(flow_hash(&keys[i]))`.
    pub fn lookup_flows(&self, keys: &[FlowKey], out: &mut [u32]) -> usize {
        let mut hashes = [0u64; HASH_BATCH];
        let mut done = 0;
        for (keys, out) in keys.chunks(HASH_BATCH).zip(out.chunks_mut(HASH_BATCH)) {
            for (h, k) in hashes.iter_mut().zip(keys) {
                *h = self.flow.hash(k);
            }
            for (o, &h) in out.iter_mut().zip(&hashes).take(keys.len()) {
                *o = self.lookup(h);
            }
            done += keys.len().min(out.len());
        }
        done
    }

    /// The backend index in slot `slot`, if `slot < size`.
    pub fn entry(&self, slot: u32) -> Option<u32> {
        let slot = slot as usize;
        match &self.entries {
            Entries::Narrow(e) => e.get(slot).map(|&i| u32::from(i)),
            Entries::Wide(e) => e.get(slot).copied(),
        }
    }

    /// Every slot's backend index, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = u32> + '_ {
        let (narrow, wide) = match &self.entries {
            Entries::Narrow(e) => (&e[..], &[][..]),
            Entries::Wide(e) => (&[][..], &e[..]),
        };
        narrow
            .iter()
            .map(|&i| u32::from(i))
            .chain(wide.iter().copied())
    }

    /// Number of slots of each backend, indexed like [`Self::backends`].
    pub fn entries_per_backend(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.backends.len()];
        for i in self.entries() {
            if let Some(c) = counts.get_mut(i as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Bytes the table's entries occupy.
    pub fn entry_bytes(&self) -> usize {
        match &self.entries {
            Entries::Narrow(e) => core::mem::size_of_val(&e[..]),
            Entries::Wide(e) => core::mem::size_of_val(&e[..]),
        }
    }
}

impl core::fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MaglevTable")
            .field("size", &self.size())
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

/// A slot value during the build: a backend index, or empty.
trait Entry: Copy + Eq {
    const EMPTY: Self;
    fn of(index: u32) -> Self;
    fn index(self) -> u32;
}

impl Entry for u16 {
    const EMPTY: Self = Self::MAX;
    #[inline]
    fn of(index: u32) -> Self {
        // Narrow entries are only used with fewer than u16::MAX backends.
        index as Self
    }
    #[inline]
    fn index(self) -> u32 {
        u32::from(self)
    }
}

impl Entry for u32 {
    const EMPTY: Self = Self::MAX;
    #[inline]
    fn of(index: u32) -> Self {
        index
    }
    #[inline]
    fn index(self) -> u32 {
        self
    }
}

/// One backend taking turns in the fill, walking its permutation `offset + k · skip (mod M)`.
#[derive(Debug, Clone, Copy)]
struct Turns {
    index: u32,
    weight: u64,
    pos: u32,
    skip: u32,
}

/// Fills the table: every backend with a weight above 0 takes weighted turns (draining ones
/// too); then the draining backends' slots are emptied and filled again by turns of the
/// serving backends, each continuing its permutation where it stopped.
fn fill<E: Entry>(key: &LbKey, m: u32, backends: &[Backend]) -> Vec<E> {
    let mut entries = vec![E::EMPTY; m as usize];
    let mut turns: Vec<Turns> = backends
        .iter()
        .zip(0u32..)
        .filter(|(b, _)| b.weight > 0)
        .map(|(b, index)| {
            let m64 = u64::from(m);
            // Both results are below m ≤ 2^23.
            let pos = (key.identity(TAG_OFFSET, &b.id) % m64) as u32;
            let skip = (key.identity(TAG_SKIP, &b.id) % (m64 - 1).max(1) + 1) as u32;
            Turns {
                index,
                weight: u64::from(b.weight),
                pos,
                skip,
            }
        })
        .collect();
    run_turns(&mut entries, m, &mut turns, u64::from(m));

    let draining = |i: u32| backends.get(i as usize).is_some_and(|b| b.draining);
    if turns.iter().any(|t| draining(t.index)) {
        let mut freed = 0u64;
        for e in &mut entries {
            if *e != E::EMPTY && draining(e.index()) {
                *e = E::EMPTY;
                freed += 1;
            }
        }
        turns.retain(|t| !draining(t.index));
        run_turns(&mut entries, m, &mut turns, freed);
    }
    entries
}

/// Fills `total` empty slots in weighted turns.
///
/// Each backend gets its largest-remainder share of `total` by weight. Turns come in rounds:
/// in every round each backend (in list order) adds its weight to its credit and, when the
/// credit reaches the largest weight, spends that much to take one turn, until it has its
/// share. So the `k`-th turn of a backend of weight `w` falls in round `⌈k · w_max / w⌉ − 1`,
/// and with equal weights this is Maglev's plain round robin. A turn takes the next empty slot
/// of the backend's permutation.
fn run_turns<E: Entry>(entries: &mut [E], m: u32, turns: &mut [Turns], total: u64) {
    let weights: Vec<u64> = turns.iter().map(|t| t.weight).collect();
    let mut quotas = apportion(total, &weights);
    let w_max = weights.iter().copied().max().unwrap_or(1).max(1);
    let w_sum: u64 = weights.iter().sum();
    // With weights near equal, scanning every backend each round is cheapest; with a skewed
    // weight most of the scans find no turn, so walk the turns in order through a heap instead.
    // Both give the same order (tested).
    if u128::from(w_max) * (turns.len() as u128) <= 4 * u128::from(w_sum) {
        turns_by_rounds(entries, m, turns, &mut quotas, w_max);
    } else {
        turns_by_heap(entries, m, turns, &mut quotas, w_max);
    }
}

fn turns_by_rounds<E: Entry>(
    entries: &mut [E],
    m: u32,
    turns: &mut [Turns],
    quotas: &mut [u64],
    w_max: u64,
) {
    let mut left: u64 = quotas.iter().sum();
    let mut credit = vec![0u64; turns.len()];
    while left > 0 {
        for ((t, q), c) in turns.iter_mut().zip(quotas.iter_mut()).zip(&mut credit) {
            if *q == 0 {
                continue;
            }
            *c += t.weight;
            if *c >= w_max {
                *c -= w_max;
                take(entries, m, t);
                *q -= 1;
                left -= 1;
                if left == 0 {
                    return;
                }
            }
        }
    }
}

fn turns_by_heap<E: Entry>(
    entries: &mut [E],
    m: u32,
    turns: &mut [Turns],
    quotas: &mut [u64],
    w_max: u64,
) {
    // Round of the k-th turn (k ≥ 1) of a backend of weight w.
    let round = |k: u64, w: u64| (u128::from(k) * u128::from(w_max)).div_ceil(u128::from(w)) - 1;
    let mut taken = vec![0u64; turns.len()];
    let mut heap: BinaryHeap<Reverse<(u128, usize)>> = turns
        .iter()
        .zip(quotas.iter())
        .enumerate()
        .filter(|(_, (_, q))| **q > 0)
        .map(|(i, (t, _))| Reverse((round(1, t.weight), i)))
        .collect();
    while let Some(Reverse((_, i))) = heap.pop() {
        let (Some(t), Some(q), Some(k)) = (turns.get_mut(i), quotas.get_mut(i), taken.get_mut(i))
        else {
            continue;
        };
        take(entries, m, t);
        *q -= 1;
        *k += 1;
        if *q > 0 {
            heap.push(Reverse((round(*k + 1, t.weight), i)));
        }
    }
}

/// Puts backend `t` in the next empty slot of its permutation.
#[inline]
fn take<E: Entry>(entries: &mut [E], m: u32, t: &mut Turns) {
    // An empty slot exists whenever a turn is taken, and the permutation visits every slot
    // within m steps, so the bound is never reached; it only keeps the work visibly bounded.
    for _ in 0..m {
        let pos = t.pos;
        let next = pos + t.skip;
        t.pos = if next >= m { next - m } else { next };
        if let Some(e) = entries.get_mut(pos as usize)
            && *e == E::EMPTY
        {
            *e = E::of(t.index);
            return;
        }
    }
}

/// Largest-remainder (Hamilton) apportionment of `total` over `weights`: each gets
/// `⌊total · w / Σw⌋`, and the leftover units go to the largest remainders, ties to the
/// earlier position.
pub(crate) fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let w_sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if w_sum == 0 {
        return vec![0; weights.len()];
    }
    let mut quotas = Vec::with_capacity(weights.len());
    let mut rems: Vec<(Reverse<u128>, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let prod = u128::from(total) * u128::from(w);
        // prod / w_sum ≤ total, a u64.
        quotas.push((prod / w_sum) as u64);
        rems.push((Reverse(prod % w_sum), i));
    }
    let given: u64 = quotas.iter().sum();
    let leftover = usize::try_from(total - given).unwrap_or(usize::MAX);
    rems.sort_unstable();
    for &(_, i) in rems.iter().take(leftover) {
        if let Some(q) = quotas.get_mut(i) {
            *q += 1;
        }
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendId;
    use proptest::prelude::*;

    fn turns_of(weights: &[u32], m: u32) -> Vec<Turns> {
        weights
            .iter()
            .zip(0u32..)
            .map(|(&w, i)| Turns {
                index: i,
                weight: u64::from(w),
                pos: (i * 7919) % m,
                skip: 1 + (i * 104_729) % (m - 1),
            })
            .collect()
    }

    proptest! {
        /// The heap walk takes turns in exactly the order of the round scan.
        #[test]
        fn heap_and_rounds_fill_alike(weights in prop::collection::vec(1u32..50, 1..20)) {
            let m = 1_009;
            let weights_u64: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
            let w_max = weights_u64.iter().copied().max().unwrap_or(1);
            let mut a = vec![u16::EMPTY; m as usize];
            let mut b = a.clone();
            let mut q = apportion(u64::from(m), &weights_u64);
            turns_by_rounds(&mut a, m, &mut turns_of(&weights, m), &mut q, w_max);
            let mut q = apportion(u64::from(m), &weights_u64);
            turns_by_heap(&mut b, m, &mut turns_of(&weights, m), &mut q, w_max);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn apportionment_sums_and_is_close(total in 0u64..1_000_000, weights in prop::collection::vec(0u64..1000, 1..50)) {
            let q = apportion(total, &weights);
            let w_sum: u64 = weights.iter().sum();
            if w_sum == 0 {
                prop_assert!(q.iter().all(|&x| x == 0));
            } else {
                prop_assert_eq!(q.iter().sum::<u64>(), total);
                for (&x, &w) in q.iter().zip(&weights) {
                    let exact = total as f64 * w as f64 / w_sum as f64;
                    prop_assert!((x as f64 - exact).abs() < 1.0 + 1e-9);
                }
            }
        }
    }

    #[test]
    fn narrow_and_wide_entries_agree() {
        let key = LbKey::new([3; 16]);
        let backends: Vec<Backend> = (0..40u16)
            .map(|i| Backend::new(BackendId::v4([10, 0, 0, 1], i), 1 + u32::from(i % 3)))
            .collect();
        let sorted = sorted_backends(&backends, MAX_MAGLEV_BACKENDS).unwrap_or_default();
        let narrow = fill::<u16>(&key, 4_001, &sorted);
        let wide = fill::<u32>(&key, 4_001, &sorted);
        assert!(
            narrow
                .iter()
                .map(|&e| u32::from(e))
                .eq(wide.iter().copied())
        );
    }
}
