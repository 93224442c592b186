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

/// A read-only table VNI → zone, linear probing in a power-of-two array at most half full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VniTable {
    // (vni + 1, zone); 0 marks an empty slot (a VNI is 24 bits, so vni + 1 never wraps).
    slots: Vec<(u32, u32)>,
    mask: usize,
}

impl VniTable {
    /// Builds the table; later duplicates of a VNI win. VNIs above 24 bits are ignored.
    pub fn new(entries: &[(u32, ZoneId)]) -> Self {
        let cap = (entries.len() * 2).next_power_of_two().max(8);
        let mut t = Self {
            slots: vec![(0, 0); cap],
            mask: cap - 1,
        };
        for &(vni, zone) in entries {
            if vni <= 0x00ff_ffff {
                t.insert(vni, zone);
            }
        }
        t
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
        assert_eq!(ZoneMap::Identity.zone(7), Some(ZoneId(7)));
        assert_eq!(ZoneMap::Table(t).zone(1), None);
    }
}
