//! A fixed-capacity open-addressed hash table (linear probing, backward-shift deletion).
//!
//! Capacity is fixed at construction, so nothing allocates after it; the caller supplies each
//! key's keyed hash, so one SipHash can serve several lookups (the hyperplane profile derives
//! the hash of every word of a destination from one hash of the destination). A key's home
//! slot is the multiply-shift of the hash's low 32 bits onto the slot count (no power-of-two
//! rounding), and an insert that would fill more than 7/8 of the slots is refused, which
//! keeps probe sequences short.

use alloc::vec::Vec;

/// One slot: the entry, whether it is live, and the low 32 bits of its key's hash (to find
/// its home slot again on deletion).
#[derive(Clone, Copy, Debug, Default)]
struct Slot<K, V> {
    key: K,
    value: V,
    hash: u32,
    live: bool,
}

/// The table; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Table<K, V> {
    slots: Vec<Slot<K, V>>,
    len: usize,
    limit: usize,
}

/// The table is full (more than 7/8 of its slots would be used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableFull;

impl<K: Copy + Eq + Default, V: Copy + Default> Table<K, V> {
    /// A table for at least `entries` entries (8/7 of it in slots, at least 8).
    pub(crate) fn with_entries(entries: usize) -> Self {
        let n = (entries.saturating_mul(8) / 7 + 1).max(8);
        Self {
            slots: alloc::vec![Slot::default(); n],
            len: 0,
            // n > 8·entries/7, so ⌊7n/8⌋ ≥ entries: room for every promised entry.
            limit: n * 7 / 8,
        }
    }

    /// Bytes the slots occupy.
    pub(crate) fn bytes(&self) -> usize {
        self.slots.len() * core::mem::size_of::<Slot<K, V>>()
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn home(&self, hash: u32) -> usize {
        ((u64::from(hash) * self.slots.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 >= self.slots.len() { 0 } else { i + 1 }
    }

    /// The slot holding `key`, if any.
    #[inline]
    pub(crate) fn find(&self, hash: u64, key: &K) -> Option<usize> {
        let mut i = self.home(hash as u32);
        loop {
            let s = self.slots.get(i)?;
            if !s.live {
                return None;
            }
            if s.key == *key {
                return Some(i);
            }
            i = self.next(i);
        }
    }

    /// The value of `key`, if present.
    #[inline]
    pub(crate) fn get(&self, hash: u64, key: &K) -> Option<V> {
        let i = self.find(hash, key)?;
        self.value_at(i)
    }

    /// The value in slot `i`.
    #[inline]
    pub(crate) fn value_at(&self, i: usize) -> Option<V> {
        self.slots.get(i).filter(|s| s.live).map(|s| s.value)
    }

    /// The value in slot `i`, writable.
    #[inline]
    pub(crate) fn value_at_mut(&mut self, i: usize) -> Option<&mut V> {
        self.slots
            .get_mut(i)
            .filter(|s| s.live)
            .map(|s| &mut s.value)
    }

    /// Inserts `key` (which must be absent) and returns its slot.
    ///
    /// # Errors
    /// [`TableFull`]: the table holds its limit of entries.
    #[inline]
    pub(crate) fn insert_new(&mut self, hash: u64, key: K, value: V) -> Result<usize, TableFull> {
        if self.len >= self.limit {
            return Err(TableFull);
        }
        let mut i = self.home(hash as u32);
        loop {
            let next = self.next(i);
            let slot = self.slots.get_mut(i).ok_or(TableFull)?;
            if !slot.live {
                *slot = Slot {
                    key,
                    value,
                    hash: hash as u32,
                    live: true,
                };
                self.len += 1;
                return Ok(i);
            }
            i = next;
        }
    }

    /// Removes the entry in slot `i`, shifting later entries of its probe run back so that
    /// lookups never need tombstones.
    pub(crate) fn remove_at(&mut self, i: usize) {
        let n = self.slots.len();
        match self.slots.get_mut(i) {
            Some(s) if s.live => s.live = false,
            _ => return,
        }
        self.len -= 1;
        let mut hole = i;
        let mut j = self.next(i);
        loop {
            let Some(&s) = self.slots.get(j) else {
                return;
            };
            if !s.live {
                return;
            }
            let home = self.home(s.hash);
            // The entry at j may move into the hole unless its home lies cyclically in
            // (hole, j].
            let dist_hole = (hole + n - home) % n;
            let dist_j = (j + n - home) % n;
            if dist_hole < dist_j {
                if let Some(h) = self.slots.get_mut(hole) {
                    *h = s;
                }
                if let Some(js) = self.slots.get_mut(j) {
                    js.live = false;
                }
                hole = j;
            }
            j = self.next(j);
        }
    }
}

/// A 64-bit finaliser (MurmurHash3's `fmix64`): spreads a keyed hash combined with a small
/// index over all bits.
#[inline(always)]
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn holds_the_entries_it_was_made_for() {
        for e in 0..600usize {
            let mut t: Table<u32, u32> = Table::with_entries(e);
            for k in 0..e as u32 {
                let h = u64::from(k).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                assert!(t.insert_new(h, k, k).is_ok(), "{k} of {e}");
            }
            assert!(t.len() * 8 <= t.slots.len() * 7);
        }
    }

    proptest! {
        /// Against a HashMap: inserts and removals with colliding hashes.
        #[test]
        fn matches_hashmap(ops in proptest::collection::vec((any::<bool>(), 0u16..64), 0..400)) {
            let mut t: Table<u16, u16> = Table::with_entries(56);
            let mut m = HashMap::new();
            // Few distinct hashes (long collision runs), spread over the 32-bit range.
            let h = |k: u16| u64::from(k % 7) * 0x2492_4924 + u64::from(k % 3);
            for (ins, k) in ops {
                if ins {
                    if t.find(h(k), &k).is_none() && t.insert_new(h(k), k, k ^ 1).is_ok() {
                        m.insert(k, k ^ 1);
                    }
                } else if let Some(i) = t.find(h(k), &k) {
                    t.remove_at(i);
                    m.remove(&k);
                }
                prop_assert_eq!(t.len(), m.len());
                for k in 0..64u16 {
                    prop_assert_eq!(t.get(h(k), &k), m.get(&k).copied());
                }
            }
        }
    }
}
