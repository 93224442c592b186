//! [`ZoneMap`]: per-zone settings that a stage reads for every packet.

use crate::flow::key::ZoneId;
use alloc::vec::Vec;

/// A map from [`ZoneId`] to `V` made for one lookup per packet.
///
/// Stages keep per-zone state (security-group rule sets, route tables, creation policies,
/// rate limits) and look it up by the packet's zone. A `BTreeMap` spends that lookup in a
/// node scan whose branches mispredict when consecutive packets belong to different zones
/// (about half of a security-group decision in `sg-stage`'s untracked case). Zone ids are
/// usually small (interfaces, tenants numbered from 0), so a `ZoneMap` indexes ids below
/// [`ZoneMap::DIRECT_IDS`] directly and keeps larger ones (VNIs, say) sorted for a binary
/// search. It iterates in ascending zone order, like a `BTreeMap`.
///
/// Changes are for the control path: an insert or removal of a small id is O(1) amortised,
/// of a large id O(n); the direct index grows to the largest small id present (4 bytes per
/// id, at most 16 KiB).
///
/// ```
/// use nf_core::{ZoneId, ZoneMap};
///
/// let mut m: ZoneMap<&str> = [(ZoneId(1), "web"), (ZoneId(0x00ab_cdef), "vni")]
///     .into_iter()
///     .collect();
/// assert_eq!(m.get(ZoneId(1)), Some(&"web"));
/// assert_eq!(m.get(ZoneId(0x00ab_cdef)), Some(&"vni"));
/// assert_eq!(m.insert(ZoneId(1), "db"), Some("web"));
/// assert_eq!(m.remove(ZoneId(0x00ab_cdef)), Some("vni"));
/// assert_eq!(m.iter().collect::<Vec<_>>(), [(ZoneId(1), &"db")]);
/// ```
#[derive(Clone)]
pub struct ZoneMap<V> {
    /// Entries in no particular order (a removal moves the last one into the gap).
    entries: Vec<(ZoneId, V)>,
    /// For id `z` below its length: `z`'s position in `entries` plus one, 0 if absent.
    direct: Vec<u32>,
    /// Ids from [`Self::DIRECT_IDS`] up with their positions in `entries`, ascending.
    sorted: Vec<(u32, u32)>,
}

impl<V> Default for ZoneMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> ZoneMap<V> {
    /// Ids below this are indexed directly; larger ones are found by binary search.
    pub const DIRECT_IDS: u32 = 4096;

    /// An empty map.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            direct: Vec::new(),
            sorted: Vec::new(),
        }
    }

    /// Zones in the map.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Position of `zone` in `entries`.
    #[inline(always)]
    fn position(&self, zone: ZoneId) -> Option<usize> {
        let z = zone.0;
        if z < Self::DIRECT_IDS {
            let p = self.direct.get(z as usize).copied().unwrap_or(0);
            return (p as usize).checked_sub(1);
        }
        let at = self.sorted.binary_search_by_key(&z, |&(id, _)| id).ok()?;
        self.sorted.get(at).map(|&(_, p)| p as usize)
    }

    /// `zone`'s value.
    #[inline]
    pub fn get(&self, zone: ZoneId) -> Option<&V> {
        let p = self.position(zone)?;
        self.entries.get(p).map(|(_, v)| v)
    }

    /// `zone`'s value, writable.
    #[inline]
    pub fn get_mut(&mut self, zone: ZoneId) -> Option<&mut V> {
        let p = self.position(zone)?;
        self.entries.get_mut(p).map(|(_, v)| v)
    }

    /// Whether `zone` has a value.
    pub fn contains(&self, zone: ZoneId) -> bool {
        self.position(zone).is_some()
    }

    /// Points `zone` at position `p` of `entries` (`None`: removes it from the index).
    fn set_position(&mut self, zone: ZoneId, p: Option<usize>) {
        let z = zone.0;
        // More than 2^32 - 1 zones would take hundreds of GiB first.
        let stored = p.map_or(0, |p| u32::try_from(p).unwrap_or(u32::MAX - 1));
        if z < Self::DIRECT_IDS {
            let i = z as usize;
            if p.is_some() && self.direct.len() <= i {
                self.direct.resize(i + 1, 0);
            }
            if let Some(d) = self.direct.get_mut(i) {
                *d = p.map_or(0, |_| stored + 1);
            }
            // Keep the index no longer than the largest id present.
            while self.direct.last() == Some(&0) {
                self.direct.pop();
            }
            return;
        }
        match (self.sorted.binary_search_by_key(&z, |&(id, _)| id), p) {
            (Ok(at), Some(_)) => {
                if let Some(e) = self.sorted.get_mut(at) {
                    e.1 = stored;
                }
            }
            (Ok(at), None) => {
                self.sorted.remove(at);
            }
            (Err(at), Some(_)) => self.sorted.insert(at, (z, stored)),
            (Err(_), None) => {}
        }
    }

    /// Sets `zone`'s value; returns the value it replaces.
    pub fn insert(&mut self, zone: ZoneId, value: V) -> Option<V> {
        if let Some(p) = self.position(zone)
            && let Some((_, v)) = self.entries.get_mut(p)
        {
            return Some(core::mem::replace(v, value));
        }
        self.entries.push((zone, value));
        self.set_position(zone, Some(self.entries.len() - 1));
        None
    }

    /// Removes `zone`; returns its value.
    pub fn remove(&mut self, zone: ZoneId) -> Option<V> {
        let p = self.position(zone)?;
        if p >= self.entries.len() {
            return None;
        }
        self.set_position(zone, None);
        let (_, v) = self.entries.swap_remove(p);
        if let Some(&(moved, _)) = self.entries.get(p) {
            self.set_position(moved, Some(p));
        }
        Some(v)
    }

    /// Zones and their values, by ascending zone id.
    pub fn iter(&self) -> impl Iterator<Item = (ZoneId, &V)> + '_ {
        let direct = self.direct.iter().filter_map(|&p| p.checked_sub(1));
        let sorted = self.sorted.iter().map(|&(_, p)| p);
        direct
            .chain(sorted)
            .filter_map(|p| self.entries.get(p as usize).map(|(z, v)| (*z, v)))
    }

    /// Zone ids, ascending.
    pub fn keys(&self) -> impl Iterator<Item = ZoneId> + '_ {
        self.iter().map(|(z, _)| z)
    }

    /// Values, by ascending zone id.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

impl<V> FromIterator<(ZoneId, V)> for ZoneMap<V> {
    fn from_iter<I: IntoIterator<Item = (ZoneId, V)>>(iter: I) -> Self {
        let mut m = Self::new();
        m.extend(iter);
        m
    }
}

impl<V> Extend<(ZoneId, V)> for ZoneMap<V> {
    fn extend<I: IntoIterator<Item = (ZoneId, V)>>(&mut self, iter: I) {
        for (z, v) in iter {
            self.insert(z, v);
        }
    }
}

impl<V: core::fmt::Debug> core::fmt::Debug for ZoneMap<V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: PartialEq> PartialEq for ZoneMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(z, v)| other.get(z) == Some(v))
    }
}

impl<V: Eq> Eq for ZoneMap<V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use proptest::prelude::*;

    /// Ids from both sides of the direct range.
    fn id() -> impl Strategy<Value = u32> {
        prop_oneof![
            0u32..64,
            4090u32..4100,
            Just(u32::MAX),
            any::<u32>(),
            0x00ff_fff0u32..0x0100_0010,
        ]
    }

    proptest! {
        /// Any sequence of inserts and removals leaves the map answering as a `BTreeMap`,
        /// iterating in the same order, with an index no longer than it needs.
        #[test]
        fn same_as_btreemap(ops in proptest::collection::vec((any::<bool>(), id(), any::<u16>()), 0..200)) {
            let (mut m, mut want) = (ZoneMap::new(), BTreeMap::new());
            for (insert, z, v) in ops {
                if insert {
                    prop_assert_eq!(m.insert(ZoneId(z), v), want.insert(z, v));
                } else {
                    prop_assert_eq!(m.remove(ZoneId(z)), want.remove(&z));
                }
                prop_assert_eq!(m.len(), want.len());
                let got: Vec<(u32, u16)> = m.iter().map(|(z, v)| (z.0, *v)).collect();
                let expect: Vec<(u32, u16)> = want.iter().map(|(z, v)| (*z, *v)).collect();
                prop_assert_eq!(got, expect);
                for probe in [z, z.wrapping_add(1), 0, 4095, 4096] {
                    prop_assert_eq!(m.get(ZoneId(probe)), want.get(&probe));
                }
                let top = want.range(..ZoneMap::<u16>::DIRECT_IDS).next_back().map_or(0, |(z, _)| z + 1);
                prop_assert_eq!(m.direct.len(), top as usize);
            }
        }
    }

    #[test]
    fn get_mut_and_collect() {
        let mut m: ZoneMap<u32> = (0..10).map(|z| (ZoneId(z * 1000), z)).collect();
        *m.get_mut(ZoneId(5000)).unwrap() += 100;
        assert_eq!(m.get(ZoneId(5000)), Some(&105));
        assert!(m.contains(ZoneId(0)) && !m.contains(ZoneId(1)));
        assert_eq!(
            m.keys().map(|z| z.0).collect::<Vec<_>>(),
            (0..10).map(|z| z * 1000).collect::<Vec<_>>()
        );
        assert_eq!(m.clone(), m);
        assert_eq!(
            alloc::format!("{:?}", ZoneMap::from_iter([(ZoneId(3), 'x')])),
            "{ZoneId(3): 'x'}"
        );
    }
}
