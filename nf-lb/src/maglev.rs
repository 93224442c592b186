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
        // Sizes are u32 (checked at build).
        match &self.entries {
            Entries::Narrow(e) => e
                .get(owner_of(hash, e.len() as u32) as usize)
                .map_or(0, |&i| u32::from(i)),
            Entries::Wide(e) => e
                .get(owner_of(hash, e.len() as u32) as usize)
                .copied()
                .unwrap_or(0),
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
        match &self.entries {
            Entries::Narrow(e) => self.lookup_flows_in(e, keys, out),
            Entries::Wide(e) => self.lookup_flows_in(e, keys, out),
        }
    }

    #[inline(always)]
    fn lookup_flows_in<E: Entry>(&self, entries: &[E], keys: &[FlowKey], out: &mut [u32]) -> usize {
        // The table size is a u32 (checked at build).
        let m = entries.len() as u32;
        let slot = |h: u64| {
            entries
                .get(owner_of(h, m) as usize)
                .map_or(0, |e| e.index())
        };
        if keys.len() < 8 {
            // Too few to gain from splitting; skips setting up the hash array.
            for (o, k) in out.iter_mut().zip(keys) {
                *o = slot(self.flow.hash(k));
            }
            return keys.len().min(out.len());
        }
        let mut hashes = [0u64; HASH_BATCH];
        let mut done = 0;
        for (keys, out) in keys.chunks(HASH_BATCH).zip(out.chunks_mut(HASH_BATCH)) {
            for (h, k) in hashes.iter_mut().zip(keys) {
                *h = self.flow.hash(k);
            }
            for (o, &h) in out.iter_mut().zip(&hashes).take(keys.len()) {
                *o = slot(h);
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
    /// `skip⁻¹ mod M`, computed when first needed (0: not yet).
    inv: u32,
}

/// Fills the table: every backend with a weight above 0 takes weighted turns (draining ones
/// too); then the draining backends' slots are emptied and filled again by turns of the
/// serving backends, each continuing its permutation where it stopped.
fn fill<E: Entry>(key: &LbKey, m: u32, backends: &[Backend]) -> Vec<E> {
    let mut slots: Slots<E> = Slots::new(m);
    let mut turns: Vec<Turns> = Vec::with_capacity(backends.len());
    turns.extend(
        backends
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
                    inv: 0,
                }
            }),
    );
    run_turns(&mut slots, &mut turns, u64::from(m));

    let draining = |i: u32| backends.get(i as usize).is_some_and(|b| b.draining);
    if turns.iter().any(|t| draining(t.index)) {
        let mut freed = 0u64;
        for slot in 0..m {
            if slots.entry(slot).is_some_and(|e| draining(e.index())) {
                slots.release(slot);
                freed += 1;
            }
        }
        turns.retain(|t| !draining(t.index));
        run_turns(&mut slots, &mut turns, freed);
    }
    slots.entries
}

/// Empty slots below which a turn finds its slot by arithmetic instead of walking (about
/// `√M`: walking costs about `M / empty` probes per turn, the arithmetic three
/// multiplications per empty slot, [`steps_mod`]).
const TAIL: u32 = 256;

/// The table being filled, with a bitmap of taken slots (probes read the bitmap: 8 KiB at the
/// default size, in L1) and, near the end, the list of empty slots.
///
/// Near the end of a fill almost every probe hits a taken slot (half of a plain fill's probes
/// fall in its last 0.5%), so once at most [`TAIL`] slots are empty, a turn instead computes
/// for each empty slot `s` how many steps along the backend's permutation it lies ahead,
/// `(s − pos) · skip⁻¹ mod M`, and takes the nearest: the same slot the walk would reach.
struct Slots<E> {
    entries: Vec<E>,
    taken: Vec<u64>,
    m: u32,
    empty: u32,
    /// The empty slots, once at most [`TAIL`] are left (then kept up to date).
    tail: Option<Vec<u32>>,
    tail_at: u32,
}

impl<E: Entry> Slots<E> {
    fn new(m: u32) -> Self {
        Self::with_tail(m, TAIL)
    }

    fn with_tail(m: u32, tail_at: u32) -> Self {
        Self {
            entries: vec![E::EMPTY; m as usize],
            taken: vec![0; (m as usize).div_ceil(64)],
            m,
            empty: m,
            tail: None,
            tail_at,
        }
    }

    fn entry(&self, slot: u32) -> Option<E> {
        self.entries.get(slot as usize).copied()
    }

    /// Empties a taken slot.
    fn release(&mut self, slot: u32) {
        if let Some(w) = self.taken.get_mut((slot / 64) as usize) {
            *w &= !(1 << (slot % 64));
        }
        if let Some(e) = self.entries.get_mut(slot as usize) {
            *e = E::EMPTY;
        }
        self.empty += 1;
        self.tail = None;
    }

    fn put(&mut self, slot: u32, index: u32) {
        if let Some(w) = self.taken.get_mut((slot / 64) as usize) {
            *w |= 1 << (slot % 64);
        }
        if let Some(e) = self.entries.get_mut(slot as usize) {
            *e = E::of(index);
        }
        self.empty -= 1;
    }

    /// Puts backend `t` in the next empty slot of its permutation (there is one whenever a
    /// turn is taken): the slot a plain walk takes (tested), found faster in two ways.
    ///
    /// - A step along the permutation, `(p + skip) mod M` for `p < M`, is `p − (M − skip)`
    ///   or `p + skip`, chosen by comparing `p` itself (the compiler adds the chosen one of
    ///   `−(M − skip)` and `skip` to `p`): three cycles a step, where `p + skip` and then a
    ///   conditional `− M` took four. The walk is a chain of these steps; its loop only tests
    ///   a bit and steps (about a dozen instructions a position), and the slot is taken after.
    /// - The first two positions are tested together, one branch for both. A turn's walk ends
    ///   at a branch nothing predicts (the first empty slot), so each turn pays about one
    ///   mispredicted branch; while most slots are empty, testing two positions at once makes
    ///   the first branch almost always right.
    #[inline]
    fn take(&mut self, t: &mut Turns) {
        if self.empty <= self.tail_at {
            self.take_tail(t);
            return;
        }
        let m = self.m;
        let skip = t.skip;
        // 0 < skip < m, so back > 0; p ≥ back makes p − back exact, and p < back keeps
        // p + skip below m.
        let back = m - skip;
        let step = |p: u32| if p >= back { p - back } else { p + skip };
        // 1 when slot `p` is empty; a word that does not exist (never: p < m) reads as taken.
        let empty = |taken: &[u64], p: u32| {
            let w = taken.get((p / 64) as usize).copied().unwrap_or(u64::MAX);
            (!w >> (p % 64)) & 1
        };
        let p0 = t.pos;
        let p1 = step(p0);
        let (e0, e1) = (empty(&self.taken, p0), empty(&self.taken, p1));
        if e0 | e1 != 0 {
            let slot = if e0 != 0 { p0 } else { p1 };
            self.put(slot, t.index);
            t.pos = step(slot);
            return;
        }
        let mut cur = step(p1);
        // The permutation visits every slot within m steps, so the bound is never reached; it
        // only keeps the work visibly bounded.
        for _ in 0..m {
            let w = self
                .taken
                .get((cur / 64) as usize)
                .copied()
                .unwrap_or(u64::MAX);
            if (w >> (cur % 64)) & 1 == 0 {
                break;
            }
            cur = step(cur);
        }
        self.put(cur, t.index);
        t.pos = step(cur);
    }

    #[cold]
    fn take_tail(&mut self, t: &mut Turns) {
        let m = self.m;
        if self.tail.is_none() {
            let mut list = Vec::with_capacity(self.empty as usize);
            for (w, base) in self.taken.iter().zip((0u32..).step_by(64)) {
                let mut free = !*w;
                while free != 0 {
                    let slot = base + free.trailing_zeros();
                    if slot < m {
                        list.push(slot);
                    }
                    free &= free - 1;
                }
            }
            self.tail = Some(list);
        }
        if t.inv == 0 {
            t.inv = inverse_mod(t.skip, m);
        }
        let inv = t.inv;
        let shoup = shoup(inv, m);
        let ahead = m - t.pos;
        // (steps << 32 | position in the list): the minimum is the nearest slot.
        let best = self
            .tail
            .iter()
            .flatten()
            .zip(0u64..)
            .map(|(&s, i)| (u64::from(steps_mod(s + ahead, inv, shoup, m)) << 32) | i)
            .min();
        let Some(i) = best.and_then(|b| usize::try_from(b & 0xffff_ffff).ok()) else {
            return;
        };
        let Some(slot) = self.tail.as_mut().map(|l| l.swap_remove(i)) else {
            return;
        };
        self.put(slot, t.index);
        let next = slot + t.skip;
        t.pos = if next >= m { next - m } else { next };
    }
}

/// Shoup's precomputed quotient for multiplying by `inv < m` modulo `m`: `⌊inv · 2^32 / m⌋`.
fn shoup(inv: u32, m: u32) -> u32 {
    // inv < m, so the quotient is below 2^32.
    ((u64::from(inv) << 32) / u64::from(m).max(1)) as u32
}

/// `d · inv mod m` for `d < 2m` and `m ≤ 2^23`, with `shoup = shoup(inv, m)`: the steps
/// from a backend's position to a slot `d − m` or `d` ahead of it along its permutation,
/// for `inv = skip⁻¹`. Shoup's multiplication: `q` underestimates `⌊d · inv / m⌋` by at
/// most 1 (the error is below `d / 2^32 < 1`), so `d · inv − q · m`, computed modulo 2^32
/// (the true value is below `2m`), needs one correction, made by a minimum: below `m`,
/// `r − m` wraps above `r`. Three multiplications and no division (tested against the
/// plain remainder).
#[inline(always)]
fn steps_mod(d: u32, inv: u32, shoup: u32, m: u32) -> u32 {
    let q = ((u64::from(d) * u64::from(shoup)) >> 32) as u32;
    let r = d.wrapping_mul(inv).wrapping_sub(q.wrapping_mul(m));
    r.min(r.wrapping_sub(m))
}

/// `a⁻¹ mod m` for a prime `m` and `0 < a < m` (extended Euclid).
fn inverse_mod(a: u32, m: u32) -> u32 {
    // m < 2^31: every remainder and coefficient fits in an i32 (32-bit divisions are the
    // cheaper ones).
    let (mut r0, mut r1) = (m as i32, a as i32);
    let (mut t0, mut t1) = (0i32, 1i32);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    // r0 == 1 for a prime m; t0 is in (−m, m).
    t0.rem_euclid(m as i32) as u32
}

/// Fills `total` empty slots in weighted turns.
///
/// Each backend gets its largest-remainder share of `total` by weight. Turns come in rounds:
/// in every round each backend (in list order) adds its weight to its credit and, when the
/// credit reaches the largest weight, spends that much to take one turn, until it has its
/// share. So the `k`-th turn of a backend of weight `w` falls in round `⌈k · w_max / w⌉ − 1`,
/// and with equal weights this is Maglev's plain round robin. A turn takes the next empty slot
/// of the backend's permutation.
fn run_turns<E: Entry>(slots: &mut Slots<E>, turns: &mut [Turns], total: u64) {
    let weights: Vec<u64> = turns.iter().map(|t| t.weight).collect();
    if let Some((first, rest)) = weights.split_first()
        && rest.iter().all(|w| w == first)
    {
        // Equal weights: the same order as the rounds below, without the credit bookkeeping:
        // everyone's share is ⌊total / n⌋ and the first `total mod n` get one more (the
        // largest-remainder ties), so full rounds of everyone, then a partial one.
        let n = turns.len() as u64;
        for _ in 0..total / n {
            for t in turns.iter_mut() {
                slots.take(t);
            }
        }
        for t in turns
            .iter_mut()
            .take(usize::try_from(total % n).unwrap_or(0))
        {
            slots.take(t);
        }
        return;
    }
    let mut quotas = apportion(total, &weights);
    let w_max = weights.iter().copied().max().unwrap_or(1).max(1);
    let w_sum: u64 = weights.iter().sum();
    // With weights near equal, scanning every backend each round is cheapest; with a skewed
    // weight most of the scans find no turn, so walk the turns in order through a heap instead.
    // Both give the same order (tested).
    if u128::from(w_max) * (turns.len() as u128) <= 4 * u128::from(w_sum) {
        turns_by_rounds(slots, turns, &mut quotas, w_max);
    } else {
        turns_by_heap(slots, turns, &mut quotas, w_max);
    }
}

fn turns_by_rounds<E: Entry>(
    slots: &mut Slots<E>,
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
                slots.take(t);
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
    slots: &mut Slots<E>,
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
        slots.take(t);
        *q -= 1;
        *k += 1;
        if *q > 0 {
            heap.push(Reverse((round(*k + 1, t.weight), i)));
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
                inv: 0,
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
            let mut a = Slots::<u16>::new(m);
            let mut b = Slots::<u16>::new(m);
            let mut q = apportion(u64::from(m), &weights_u64);
            turns_by_rounds(&mut a, &mut turns_of(&weights, m), &mut q, w_max);
            let mut q = apportion(u64::from(m), &weights_u64);
            turns_by_heap(&mut b, &mut turns_of(&weights, m), &mut q, w_max);
            prop_assert_eq!(a.entries, b.entries);
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

    proptest! {
        /// The arithmetic tail takes exactly the slots the plain walk takes.
        #[test]
        fn tail_equals_walk(weights in prop::collection::vec(1u32..5, 1..40), tail in 0u32..2000) {
            let m = 2_003;
            let weights_u64: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
            let w_max = weights_u64.iter().copied().max().unwrap_or(1);
            let mut walk = Slots::<u32>::with_tail(m, 0);
            let mut arith = Slots::<u32>::with_tail(m, tail);
            let mut q = apportion(u64::from(m), &weights_u64);
            turns_by_rounds(&mut walk, &mut turns_of(&weights, m), &mut q, w_max);
            let mut q = apportion(u64::from(m), &weights_u64);
            turns_by_rounds(&mut arith, &mut turns_of(&weights, m), &mut q, w_max);
            prop_assert_eq!(walk.entries, arith.entries);
        }
    }

    /// The plain walk, one position at a time over a `bool` per slot: the reference for
    /// [`Slots::take`]. Equal weights: full rounds of everyone, then the first `m mod n`.
    fn reference_fill(weights_n: usize, m: u32) -> Vec<u16> {
        let mut turns = turns_of(&vec![1; weights_n], m);
        let mut taken = vec![false; m as usize];
        let mut entries = vec![u16::MAX; m as usize];
        let n = turns.len();
        for k in 0..m as usize {
            let t = &mut turns[k % n];
            loop {
                let p = t.pos as usize;
                t.pos = (t.pos + t.skip) % m;
                if !taken[p] {
                    taken[p] = true;
                    entries[p] = t.index as u16;
                    break;
                }
            }
        }
        entries
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The walk (two positions tested at once, then stepping by `p − (M − skip)` or
        /// `p + skip`), and with it the arithmetic tail, takes the plain walk's slots.
        #[test]
        fn take_equals_the_plain_walk(n in 1usize..60, m in prop::sample::select(vec![2u32, 3, 101, 1_009, 2_003])) {
            let want = reference_fill(n, m);
            for tail in [0, TAIL, m] {
                let mut slots = Slots::<u16>::with_tail(m, tail);
                run_turns(&mut slots, &mut turns_of(&vec![1; n], m), u64::from(m));
                prop_assert_eq!(&slots.entries, &want, "tail at {}", tail);
            }
        }
    }

    proptest! {
        /// The equal-weight shortcut fills exactly as the credit rounds do.
        #[test]
        fn equal_weights_shortcut(n in 1usize..60, w in 1u32..5, m in prop::sample::select(vec![101u32, 1_009, 2_003])) {
            let weights = vec![w; n];
            let mut a = Slots::<u16>::new(m);
            let mut b = Slots::<u16>::new(m);
            run_turns(&mut a, &mut turns_of(&weights, m), u64::from(m));
            let mut q = apportion(u64::from(m), &vec![u64::from(w); n]);
            turns_by_rounds(&mut b, &mut turns_of(&weights, m), &mut q, u64::from(w));
            prop_assert_eq!(a.entries, b.entries);
        }
    }

    proptest! {
        #[test]
        fn steps_mod_is_the_remainder(
            m in prop::sample::select(vec![2u32, 3, 101, 65_537, 1_000_003, 8_388_593]),
            a in any::<u32>(), s in any::<u32>(), pos in any::<u32>(),
        ) {
            let skip = a % (m - 1).max(1) + 1;
            let (s, pos) = (s % m, pos % m);
            let inv = inverse_mod(skip, m);
            let d = s + m - pos;
            let want = (u64::from(d) * u64::from(inv) % u64::from(m)) as u32;
            prop_assert_eq!(steps_mod(d, inv, shoup(inv, m), m), want);
            // The steps reach the slot.
            prop_assert_eq!((u64::from(pos) + u64::from(want) * u64::from(skip)) % u64::from(m), u64::from(s));
        }
    }

    #[test]
    fn inverses() {
        for m in [2u32, 3, 101, 65_537, 8_388_593] {
            for a in [1, 2, m / 2, m - 1].into_iter().filter(|&a| a > 0 && a < m) {
                assert_eq!(
                    u64::from(a) * u64::from(inverse_mod(a, m)) % u64::from(m),
                    1
                );
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
