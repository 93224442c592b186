//! VNI → zone mapping: identity, or a fixed-capacity open-addressing table built once.

use alloc::vec;
use alloc::vec::Vec;
use nf_core::ZoneId;

/// How a decapsulation stage turns a VNI into the packet's zone.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ZoneMap {
    /// The zone is the VNI (every VNI accepted).
    #[default]
    Identity,
    /// Only the listed VNIs are accepted, each into its zone.
    Table(VniTable),
}

impl ZoneMap {
    /// The zone for `vni`, or `None` if the VNI is not configured.
    #[inline]
    pub fn zone(&self, vni: u32) -> Option<ZoneId> {
        match self {
            Self::Identity => Some(ZoneId(vni)),
            Self::Table(t) => t.get(vni),
        }
    }
}

/// A read-only table VNI → zone, linear probing in a power-of-two array at most half full;
/// and backwards, zone → VNI ([`Self::vni`], what encapsulation with
/// [`VniSource::Map`](crate::VniSource::Map) asks), in a second array of the same shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VniTable {
    // (vni + 1, zone); 0 marks an empty slot (a VNI is 24 bits, so vni + 1 never wraps).
    slots: Vec<(u32, u32)>,
    // (zone, vni + 1); a VNI of 0 (vni + 1 == 0 never happens) marks an empty slot.
    by_zone: Vec<(u32, u32)>,
    mask: usize,
}

impl VniTable {
    /// Builds the table; later duplicates of a VNI win. VNIs above 24 bits are ignored.
    /// Backwards, a zone named by several VNIs gets the first of them.
    pub fn new(entries: &[(u32, ZoneId)]) -> Self {
        let cap = (entries.len() * 2).next_power_of_two().max(8);
        let mut t = Self {
            slots: vec![(0, 0); cap],
            by_zone: vec![(0, 0); cap],
            mask: cap - 1,
        };
        for &(vni, zone) in entries {
            if vni <= 0x00ff_ffff {
                t.insert(vni, zone);
            }
        }
        // Backwards from the table as built, so a VNI a later entry moved to another zone
        // names only that one.
        for &(vni, _) in entries {
            if let Some(zone) = t.get(vni) {
                t.insert_zone(zone, vni);
            }
        }
        t
    }

    #[inline]
    fn zone_home(&self, zone: u32) -> usize {
        (zone.wrapping_mul(0x85eb_ca6b) >> 7) as usize & self.mask
    }

    fn insert_zone(&mut self, zone: ZoneId, vni: u32) {
        let mut i = self.zone_home(zone.0);
        for _ in 0..self.by_zone.len() {
            if let Some(s) = self.by_zone.get_mut(i) {
                if s.1 == 0 {
                    *s = (zone.0, vni + 1);
                    return;
                }
                if s.0 == zone.0 {
                    // The first VNI listed for the zone stays.
                    return;
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The VNI of `zone` (the first listed for it), for encapsulation.
    ///
    /// ```
    /// use nf_core::ZoneId;
    /// use nf_tunnel::VniTable;
    /// // Two VNIs of one tenant decapsulate into zone 7; encapsulation uses the first.
    /// let t = VniTable::new(&[(5001, ZoneId(7)), (5002, ZoneId(7)), (6000, ZoneId(8))]);
    /// assert_eq!(t.get(5002), Some(ZoneId(7)));
    /// assert_eq!(t.vni(ZoneId(7)), Some(5001));
    /// assert_eq!(t.vni(ZoneId(9)), None);
    /// ```
    #[inline]
    pub fn vni(&self, zone: ZoneId) -> Option<u32> {
        let mut i = self.zone_home(zone.0);
        for _ in 0..self.by_zone.len() {
            let &(z, v) = self.by_zone.get(i)?;
            if v == 0 {
                return None;
            }
            if z == zone.0 {
                return Some(v - 1);
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    #[inline]
    fn home(&self, vni: u32) -> usize {
        (vni.wrapping_mul(0x9e37_79b1) >> 7) as usize & self.mask
    }

    fn insert(&mut self, vni: u32, zone: ZoneId) {
        let mut i = self.home(vni);
        for _ in 0..self.slots.len() {
            if let Some(s) = self.slots.get_mut(i)
                && (s.0 == 0 || s.0 == vni + 1)
            {
                *s = (vni + 1, zone.0);
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The zone of `vni`.
    #[inline]
    pub fn get(&self, vni: u32) -> Option<ZoneId> {
        let mut i = self.home(vni);
        // At most half full, so a probe sequence ends at an empty slot quickly.
        for _ in 0..self.slots.len() {
            let &(k, z) = self.slots.get(i)?;
            if k == vni.wrapping_add(1) {
                return Some(ZoneId(z));
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn table_matches_a_naive_list() {
        let entries: Vec<(u32, ZoneId)> = (0..300u32)
            .map(|i| (i * 7919 % 0x0100_0000, ZoneId(i + 1)))
            .collect();
        let t = VniTable::new(&entries);
        let naive = |v: u32| entries.iter().rev().find(|e| e.0 == v).map(|e| e.1);
        for v in entries
            .iter()
            .map(|e| e.0)
            .chain((0..5000).map(|i| i * 3331))
        {
            assert_eq!(t.get(v), naive(v), "vni {v}");
        }
        // Backwards: every zone to the first VNI still listed for it.
        for (vni, zone) in &entries {
            let first = entries
                .iter()
                .find(|e| e.1 == *zone && t.get(e.0) == Some(*zone));
            assert_eq!(
                t.vni(*zone),
                first.map(|e| e.0),
                "zone {zone:?} (vni {vni})"
            );
        }
        assert_eq!(t.vni(ZoneId(0)), None);
        assert_eq!(t.vni(ZoneId(u32::MAX)), None);
        let shared = VniTable::new(&[(5, ZoneId(1)), (6, ZoneId(1)), (7, ZoneId(u32::MAX))]);
        assert_eq!(shared.vni(ZoneId(1)), Some(5));
        assert_eq!(shared.vni(ZoneId(u32::MAX)), Some(7));
        assert_eq!(ZoneMap::Identity.zone(7), Some(ZoneId(7)));
        assert_eq!(ZoneMap::Table(t).zone(1), None);
    }
}
