//! A fixed-capacity open-addressed hash table (linear probing, backward-shift deletion).
//!
//! Capacity is fixed at construction (a power of two), so nothing allocates after it; the
//! caller supplies each key's keyed hash, so one SipHash can serve several lookups (the
//! hyperplane profile derives the hash of every word of a destination from one hash of the
//! destination). An insert that would fill more than 7/8 of the slots is refused, which keeps
//! probe sequences short.

use alloc::vec::Vec;

/// One slot: the low 32 bits of the key's hash (to find its home slot on deletion) and the
/// entry, if any.
#[derive(Clone, Copy, Debug)]
struct Slot<K, V> {
    hash: u32,
    entry: Option<(K, V)>,
}

/// The table; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Table<K, V> {
    slots: Vec<Slot<K, V>>,
    mask: usize,
    len: usize,
    limit: usize,
}

/// The table is full (more than 7/8 of its slots would be used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableFull;

impl<K: Copy + Eq, V: Copy> Table<K, V> {
    /// A table for at least `entries` entries (slots: the next power of two of 8/7 of it).
    pub(crate) fn with_entries(entries: usize) -> Self {
        let want = entries.saturating_mul(8) / 7 + 1;
        let n = want.max(8).next_power_of_two();
        Self {
            slots: alloc::vec![
                Slot {
                    hash: 0,
                    entry: None
                };
                n
            ],
            mask: n - 1,
            len: 0,
            limit: n / 8 * 7,
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
    fn home(&self, hash: u64) -> usize {
        (hash as usize) & self.mask
    }

    /// The slot holding `key`, if any.
    #[inline]
    pub(crate) fn find(&self, hash: u64, key: &K) -> Option<usize> {
        let mut i = self.home(hash);
        loop {
            match self.slots.get(i)?.entry {
                Some((k, _)) if k == *key => return Some(i),
                Some(_) => i = (i + 1) & self.mask,
                None => return None,
            }
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
        self.slots.get(i)?.entry.map(|(_, v)| v)
    }

    /// The value in slot `i`, writable.
    #[inline]
    pub(crate) fn value_at_mut(&mut self, i: usize) -> Option<&mut V> {
        self.slots.get_mut(i)?.entry.as_mut().map(|(_, v)| v)
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
        let mut i = self.home(hash);
        loop {
            let slot = self.slots.get_mut(i).ok_or(TableFull)?;
            if slot.entry.is_none() {
                *slot = Slot {
                    hash: hash as u32,
                    entry: Some((key, value)),
                };
                self.len += 1;
                return Ok(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Removes the entry in slot `i`, shifting later entries of its probe run back so that
    /// lookups never need tombstones.
    pub(crate) fn remove_at(&mut self, i: usize) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if slot.entry.take().is_none() {
            return;
        }
        self.len -= 1;
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        loop {
            let Some(&s) = self.slots.get(j) else {
                return;
            };
            if s.entry.is_none() {
                return;
            }
            let home = (s.hash as usize) & self.mask;
            // The entry at j may move into the hole if its home is not cyclically in (hole, j].
            let dist_hole = hole.wrapping_sub(home) & self.mask;
            let dist_j = j.wrapping_sub(home) & self.mask;
            if dist_hole < dist_j {
                if let Some(h) = self.slots.get_mut(hole) {
                    *h = s;
                }
                if let Some(js) = self.slots.get_mut(j) {
                    js.entry = None;
                }
                hole = j;
            }
            j = (j + 1) & self.mask;
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

    proptest! {
        /// Against a HashMap: inserts and removals with colliding hashes.
        #[test]
        fn matches_hashmap(ops in proptest::collection::vec((any::<bool>(), 0u16..64), 0..400)) {
            let mut t: Table<u16, u16> = Table::with_entries(56);
            let mut m = HashMap::new();
            let h = |k: u16| u64::from(k % 7);
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
