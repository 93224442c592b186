//! The index: 64-byte buckets of tagged entries, linear probing over buckets with
//! per-bucket overflow counters (no tombstones).

use super::{F_LIVE, F_XZONE, Hit, SessionTable};
use crate::conntrack::key::SessionKey;
use crate::meta::{Direction, SessionRef};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Index entries per bucket (one 64-byte line: a 4-byte overflow count and 15 entries).
pub(super) const ENTRIES: usize = 15;
/// Index sizing: at full capacity at most 15/20 (75%) of index entries are used. At 90% table
/// load that leaves about 1% of entries outside their home bucket (3% at 85%), each costing a
/// batch lookup a second bucket and a deferred probe; 1.4 bytes more per session.
pub(super) const INDEX_LOAD_NUM: u64 = 15;
pub(super) const INDEX_LOAD_DEN: u64 = 20;
/// Buckets along a probe path whose matching records a deferred batch lookup prefetches.
const PREFETCH_PROBE_BUCKETS: usize = 3;

/// One line of the index: how many entries overflowed past this bucket, then 15 entries of
/// `tag | (slot + 1)` (0 = empty).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(64))]
pub(super) struct Bucket {
    pub(super) overflow: u32,
    pub(super) e: [u32; ENTRIES],
}

impl Bucket {
    /// Bit `j` set where entry `j` carries `tag`. `tag` is never 0 (see
    /// [`SessionTable::tag`]), so empty entries never match. The whole line is compared at
    /// once (the overflow count in lane 0, its bit dropped).
    #[inline(always)]
    pub(super) fn matches(&self, tag: u32, tag_mask: u32) -> u32 {
        let line: &[u32; 16] = zerocopy::transmute_ref!(self);
        crate::sys::masked_eq_lanes(line, tag, tag_mask) >> 1
    }
}

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    #[inline(always)]
    pub(super) fn hash(&self, k: &K, zone: u32, proto: u8) -> u64 {
        k.hash(&self.sip, zone, proto)
    }

    #[inline(always)]
    pub(super) fn home(&self, h: u64) -> usize {
        ((u128::from(h) * u128::from(self.nbuckets)) >> 64) as usize
    }

    /// The hash's tag bits, never 0 (a zero tag becomes the lowest tag bit), so that an
    /// empty entry (0) never matches and [`Bucket::matches`] need not test for it.
    #[inline(always)]
    pub(super) fn tag(&self, h: u64) -> u32 {
        let t = h as u32 & self.tag_mask;
        t | (u32::from(t == 0) * (self.tag_mask & self.tag_mask.wrapping_neg()))
    }

    /// Compares record `idx` against a key; the direction it matched. Each key matches only
    /// in its own zone: the record's, or for the reply key of a cross-zone session
    /// ([`F_XZONE`]) the side array's.
    #[inline(always)]
    pub(super) fn check(&self, idx: u32, k: &K, zone: u32, proto: u8) -> Option<Hit> {
        let hit = self.check_same_zone(idx, k, zone, proto);
        if hit.is_none() && self.is_cross_zone(idx) {
            return self.check_cross_zone(idx, k, zone, proto);
        }
        hit
    }

    /// [`Self::check`] for a session whose keys share one zone; `None` for every cross-zone
    /// session (ask [`Self::is_cross_zone`] on a miss). The batch pipeline's compare: the
    /// cross-zone test costs it nothing, being part of the liveness test it already makes.
    #[inline(always)]
    pub(super) fn check_same_zone(&self, idx: u32, k: &K, zone: u32, proto: u8) -> Option<Hit> {
        let r = self.recs.get(idx as usize)?;
        // Both keys are compared and the outcomes combined without early exits: the direction
        // of a packet is unpredictable, and a mispredicted branch per packet costs more than
        // the second compare.
        let original = r.keys[0].same(k);
        let reply = r.keys[1].same(k);
        let live_same_zone = r.flags & (F_LIVE | F_XZONE) == F_LIVE;
        if !((r.zone == zone) & (r.proto == proto) & live_same_zone & (original | reply)) {
            return None;
        }
        let direction = if original {
            Direction::Original
        } else {
            Direction::Reply
        };
        Some(Hit {
            session: SessionRef::new(K::FAMILY, idx, r.generation),
            direction,
        })
    }

    /// True if record `idx` is a live cross-zone session.
    #[inline(always)]
    pub(super) fn is_cross_zone(&self, idx: u32) -> bool {
        self.recs
            .get(idx as usize)
            .is_some_and(|r| r.flags & (F_LIVE | F_XZONE) == F_LIVE | F_XZONE)
    }

    /// [`Self::check`] for a cross-zone session: the original key matches in the record's
    /// zone, the reply key in the side array's.
    #[cold]
    #[inline(never)]
    fn check_cross_zone(&self, idx: u32, k: &K, zone: u32, proto: u8) -> Option<Hit> {
        let r = self.recs.get(idx as usize)?;
        let reply_zone = self.reply_zones.get(idx as usize).copied()?;
        let original = r.zone == zone && r.keys[0].same(k);
        let reply = reply_zone == zone && r.keys[1].same(k);
        if !(r.proto == proto && r.flags & F_LIVE != 0 && (original || reply)) {
            return None;
        }
        let direction = if original {
            Direction::Original
        } else {
            Direction::Reply
        };
        Some(Hit {
            session: SessionRef::new(K::FAMILY, idx, r.generation),
            direction,
        })
    }

    /// Full probe for a packed key with known hash.
    #[inline]
    pub(super) fn find(&self, k: &K, zone: u32, proto: u8, h: u64) -> Option<Hit> {
        let tag = self.tag(h);
        let mut b = self.home(h);
        for _ in 0..self.buckets.len() {
            let bk = self.buckets.get(b)?;
            let mut m = bk.matches(tag, self.tag_mask);
            while m != 0 {
                let j = m.trailing_zeros() as usize;
                m &= m - 1;
                let e = bk.e.get(j).copied().unwrap_or(0);
                if let Some(hit) = self.check((e & self.idx_mask).wrapping_sub(1), k, zone, proto) {
                    return Some(hit);
                }
            }
            if bk.overflow == 0 {
                return None;
            }
            b += 1;
            if b == self.buckets.len() {
                b = 0;
            }
        }
        None
    }

    /// The bucket after `b` in probe order.
    #[inline(always)]
    pub(super) fn next_bucket(&self, b: usize) -> usize {
        if b + 1 >= self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    /// Prefetches the records of the tag matches along the probe path of `h` (at most
    /// [`PREFETCH_PROBE_BUCKETS`] buckets): a hint ahead of [`Self::find`].
    #[inline]
    pub(super) fn prefetch_probe(&self, h: u64) {
        let tag = self.tag(h);
        let mut b = self.home(h);
        for _ in 0..PREFETCH_PROBE_BUCKETS {
            let Some(bk) = self.buckets.get(b) else {
                return;
            };
            let mut m = bk.matches(tag, self.tag_mask);
            while m != 0 {
                let j = m.trailing_zeros() as usize;
                m &= m - 1;
                let e = bk.e.get(j).copied().unwrap_or(0);
                if let Some(r) = self.recs.get((e & self.idx_mask).wrapping_sub(1) as usize) {
                    crate::sys::prefetch_all(r);
                }
            }
            if bk.overflow == 0 {
                return;
            }
            b = self.next_bucket(b);
        }
    }

    #[inline(always)]
    pub(super) fn prefetch_home(&self, h: u64) {
        if let Some(b) = self.buckets.get(self.home(h)) {
            crate::sys::prefetch(b);
        }
    }

    pub(super) fn index_insert(&mut self, h: u64, idx: u32) {
        let e = self.tag(h) | (idx + 1);
        let mut b = self.home(h);
        let n = self.buckets.len();
        for _ in 0..n {
            let Some(bk) = self.buckets.get_mut(b) else {
                return;
            };
            if let Some(slot) = bk.e.iter_mut().find(|x| **x == 0) {
                *slot = e;
                return;
            }
            bk.overflow += 1;
            b += 1;
            if b == n {
                b = 0;
            }
        }
    }

    pub(super) fn index_remove(&mut self, h: u64, idx: u32) {
        let e = self.tag(h) | (idx + 1);
        let home = self.home(h);
        let n = self.buckets.len();
        let mut b = home;
        let mut steps = 0;
        while steps < n {
            let Some(bk) = self.buckets.get_mut(b) else {
                return;
            };
            if let Some(slot) = bk.e.iter_mut().find(|x| **x == e) {
                *slot = 0;
                break;
            }
            b += 1;
            if b == n {
                b = 0;
            }
            steps += 1;
        }
        // Undo the overflow counts of the buckets the entry passed.
        let mut b = home;
        for _ in 0..steps {
            if let Some(bk) = self.buckets.get_mut(b) {
                bk.overflow = bk.overflow.saturating_sub(1);
            }
            b += 1;
            if b == n {
                b = 0;
            }
        }
    }
}
