//! Zones: the open-addressed zone slots, quotas, and each zone's early-drop list of
//! not-yet-established sessions.

use super::{InsertError, NIL, SessionInfo, SessionTable, ZoneError, ZoneUsage};
use crate::conntrack::key::SessionKey;
use crate::flow::ZoneId;
use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Zone {
    id: u32,
    used: bool,
    configured: bool,
    quota: u32,
    pub(super) count: u32,
    pub(super) unestablished: u32,
    pub(super) emb_head: u32,
    pub(super) emb_tail: u32,
}

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// Makes room for one session of `zone`, early-dropping its own oldest unestablished
    /// session if needed and allowed.
    pub(super) fn admit(
        &mut self,
        zone: u32,
        on_evict: &mut impl FnMut(&SessionInfo<V>),
    ) -> Result<(), InsertError> {
        let (count, quota, head) = match self.zone_slot(zone).and_then(|i| self.zones.get(i)) {
            Some(z) => (z.count, z.quota, z.emb_head),
            None => (0, self.cfg.default_zone_quota, NIL),
        };
        let over_quota = count >= quota;
        let full = self.len >= self.cfg.capacity;
        if !over_quota && !full {
            return Ok(());
        }
        // One eviction frees one slot and one unit of quota; it is enough unless the quota
        // was lowered below the current count.
        if self.cfg.early_drop && head != NIL && count <= quota {
            if let Some(x) = self.recs.get(head as usize) {
                on_evict(&self.info_of(head, x));
            }
            self.remove_idx(head);
            self.counters.early_drops += 1;
            return Ok(());
        }
        if full {
            self.counters.refused_full += 1;
            Err(InsertError::TableFull)
        } else {
            self.counters.refused_quota += 1;
            Err(InsertError::ZoneQuota)
        }
    }

    #[inline]
    fn zone_home(&self, id: u32) -> usize {
        let h = (u64::from(id) ^ self.sip_zone_salt()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> self.zone_shift) as usize
    }

    fn sip_zone_salt(&self) -> u64 {
        u64::from_le_bytes([
            self.cfg.secret[0],
            self.cfg.secret[1],
            self.cfg.secret[2],
            self.cfg.secret[3],
            self.cfg.secret[4],
            self.cfg.secret[5],
            self.cfg.secret[6],
            self.cfg.secret[7],
        ])
    }

    pub(super) fn zone_slot(&self, id: u32) -> Option<usize> {
        let n = self.zones.len();
        let mut i = self.zone_home(id);
        for _ in 0..n {
            let z = self.zones.get(i)?;
            if !z.used {
                return None;
            }
            if z.id == id {
                return Some(i);
            }
            i = (i + 1) & (n - 1);
        }
        None
    }

    pub(super) fn zone_slot_or_create(&mut self, id: u32) -> Option<usize> {
        if let Some(i) = self.zone_slot(id) {
            return Some(i);
        }
        if self.zone_count >= self.cfg.max_zones {
            return None;
        }
        let n = self.zones.len();
        let mut i = self.zone_home(id);
        for _ in 0..n {
            let z = self.zones.get_mut(i)?;
            if !z.used {
                *z = Zone {
                    id,
                    used: true,
                    configured: false,
                    quota: self.cfg.default_zone_quota,
                    count: 0,
                    unestablished: 0,
                    emb_head: NIL,
                    emb_tail: NIL,
                };
                self.zone_count += 1;
                return Some(i);
            }
            i = (i + 1) & (n - 1);
        }
        None
    }

    /// Frees an unconfigured zone's slot once it has no sessions (backward-shift deletion).
    pub(super) fn zone_maybe_release(&mut self, zi: usize) {
        let Some(z) = self.zones.get(zi) else {
            return;
        };
        if z.count != 0 || z.configured {
            return;
        }
        let n = self.zones.len();
        let mut hole = zi;
        let mut j = zi;
        loop {
            j = (j + 1) & (n - 1);
            let Some(zj) = self.zones.get(j).copied() else {
                break;
            };
            if !zj.used {
                break;
            }
            let home = self.zone_home(zj.id);
            // Move zj into the hole if its home is not in (hole, j] cyclically.
            let dist_home = j.wrapping_sub(home) & (n - 1);
            let dist_hole = j.wrapping_sub(hole) & (n - 1);
            if dist_home >= dist_hole {
                if let Some(h) = self.zones.get_mut(hole) {
                    *h = zj;
                }
                hole = j;
            }
        }
        if let Some(h) = self.zones.get_mut(hole) {
            *h = Zone::default();
        }
        self.zone_count -= 1;
    }

    pub(super) fn rebuild_zones(&mut self) {
        let old: Vec<Zone> = self
            .zones
            .iter()
            .filter(|z| z.used && z.configured)
            .copied()
            .collect();
        self.zones.fill(Zone::default());
        self.zone_count = 0;
        for z in old {
            if let Some(i) = self.zone_slot_or_create(z.id)
                && let Some(nz) = self.zones.get_mut(i)
            {
                nz.configured = true;
                nz.quota = z.quota;
            }
        }
    }

    /// Sets a zone's quota (sessions it may hold at once). Lowering it below the zone's
    /// current count evicts nothing; new sessions are refused until the count drops.
    ///
    /// # Errors
    /// [`ZoneError::TooManyZones`] when `max_zones` zones already exist.
    pub fn set_zone_quota(&mut self, zone: ZoneId, quota: u32) -> Result<(), ZoneError> {
        let i = self
            .zone_slot_or_create(zone.0)
            .ok_or(ZoneError::TooManyZones)?;
        if let Some(z) = self.zones.get_mut(i) {
            z.quota = quota;
            z.configured = true;
        }
        Ok(())
    }

    /// A zone's session count and quota (`None` for a zone never seen or configured).
    pub fn zone_usage(&self, zone: ZoneId) -> Option<ZoneUsage> {
        let z = self.zones.get(self.zone_slot(zone.0)?)?;
        Some(ZoneUsage {
            sessions: z.count,
            quota: z.quota,
            unestablished: z.unestablished,
        })
    }

    pub(super) fn emb_push(&mut self, zi: usize, idx: u32) {
        let Some(z) = self.zones.get_mut(zi) else {
            return;
        };
        let tail = z.emb_tail;
        z.emb_tail = idx;
        if tail == NIL {
            z.emb_head = idx;
        }
        z.unestablished += 1;
        if let Some(l) = self.emb.get_mut(idx as usize) {
            *l = [tail, NIL];
        }
        if let Some(l) = self.emb.get_mut(tail as usize) {
            l[1] = idx;
        }
    }

    pub(super) fn emb_unlink(&mut self, zi: usize, idx: u32) {
        let Some(&[p, n]) = self.emb.get(idx as usize) else {
            return;
        };
        if let Some(l) = self.emb.get_mut(idx as usize) {
            *l = [NIL, NIL];
        }
        let Some(z) = self.zones.get_mut(zi) else {
            return;
        };
        if p == NIL && z.emb_head != idx {
            return; // not linked
        }
        z.unestablished = z.unestablished.saturating_sub(1);
        if p == NIL {
            z.emb_head = n;
        }
        if n == NIL {
            z.emb_tail = p;
        }
        if let Some(l) = self.emb.get_mut(p as usize) {
            l[1] = n;
        }
        if let Some(l) = self.emb.get_mut(n as usize) {
            l[0] = p;
        }
    }
}
