//! [`SessionTable`]: fixed-capacity sessions indexed by both of their keys.
//!
//! See the [module docs](super) for the layout, the memory budget and the invariants.

use super::key::{SessionKey, SipKey};
use super::state::{self, SessionState, TimeoutProfile};
use crate::flow::{FlowKey, ZoneId};
use crate::meta::{Direction, SessionRef};
use crate::time::{Duration, Instant};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "No record" in the intrusive lists.
pub(super) const NIL: u32 = u32::MAX;
/// Largest supported capacity (index entries keep at least 6 tag bits).
pub const MAX_CAPACITY: u32 = (1 << 26) - 1;
/// Index entries per bucket (one 64-byte line: a 4-byte overflow count and 15 entries).
const ENTRIES: usize = 15;
/// Index sizing: at full capacity at most 15/20 (75%) of index entries are used. At 90% table
/// load that leaves about 1% of entries outside their home bucket (3% at 85%), each costing a
/// batch lookup a second bucket and a deferred probe; 1.4 bytes more per session.
const INDEX_LOAD_NUM: u64 = 15;
const INDEX_LOAD_DEN: u64 = 20;

/// Record flag: the slot holds a live session.
pub(super) const F_LIVE: u8 = 1;
/// Record flag: established (assured); never early-dropped.
pub(super) const F_ASSURED: u8 = 2;
/// Record flag: the first FIN came from the reply direction.
pub(super) const F_FIN_REPLY: u8 = 4;

/// Settings fixed at construction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TableConfig {
    /// Most sessions held at once (1 ..= [`MAX_CAPACITY`]).
    pub capacity: u32,
    /// Secret for the table's keyed hash (SipHash-1-3). Use a random value per process.
    pub secret: [u8; 16],
    /// Timeouts per state and the timer granularity.
    pub timeouts: TimeoutProfile,
    /// Timer wheel slots (a power of two, 64 ..= 2^20).
    pub wheel_slots: u32,
    /// Most distinct zones with sessions or quotas at once.
    pub max_zones: u32,
    /// Quota of zones without an explicit one ([`SessionTable::set_zone_quota`]).
    pub default_zone_quota: u32,
    /// A zone at its quota (or a full table) may evict its own oldest not-yet-established
    /// session to admit a new one.
    pub early_drop: bool,
}

impl TableConfig {
    /// Defaults for `capacity` sessions: Linux-like timeouts with 1 s granularity, 4096 wheel
    /// slots, 1024 zones, no per-zone limit beyond the capacity, early drop on.
    pub fn new(capacity: u32, secret: [u8; 16]) -> Self {
        Self {
            capacity,
            secret,
            timeouts: TimeoutProfile::default(),
            wheel_slots: 4096,
            max_zones: 1024,
            default_zone_quota: capacity,
            early_drop: true,
        }
    }
}

/// Why a [`TableConfig`] was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// Capacity is 0 or above [`MAX_CAPACITY`].
    Capacity,
    /// Wheel slots not a power of two in 64 ..= 2^20.
    WheelSlots,
    /// Granularity is zero, or a timeout spans 2^30 ticks or more.
    Timeouts,
    /// `max_zones` is 0 or above 2^20.
    MaxZones,
}

/// Why [`SessionTable::insert`] refused a session. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertError {
    /// Every slot holds a live session and the zone had nothing of its own to evict.
    TableFull,
    /// The zone is at its quota and had nothing of its own to evict.
    ZoneQuota,
    /// The zone would be new and `max_zones` zones already exist.
    TooManyZones,
    /// The original or the reply key already indexes a session.
    KeyExists,
    /// The original and reply keys are equal (e.g. a LAND packet: same address and port).
    SameKeys,
    /// A key is of the other address family, or the two keys differ in zone or protocol.
    BadKey,
}

/// One session for [`SessionTable::insert_batch`]: the arguments of
/// [`SessionTable::insert`] after `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewSession<V> {
    /// The flow that opens the session.
    pub original: FlowKey,
    /// The flow its replies arrive on (usually `original.reversed()`; NAT's translation).
    pub reply: FlowKey,
    /// The initial state.
    pub state: SessionState,
    /// The caller's value.
    pub value: V,
}

/// Why [`SessionTable::replace_reply`] failed. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplaceError {
    /// The handle is stale.
    Stale,
    /// The new key already indexes another session (or is the session's original key).
    KeyExists,
    /// The key is of the other family, or its zone or protocol differs from the session's.
    BadKey,
}

/// Why [`SessionTable::set_zone_quota`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZoneError {
    /// `max_zones` zones already exist.
    TooManyZones,
}

macro_rules! impl_display {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
        impl core::error::Error for $t {}
    )*};
}
impl_display!(ConfigError, InsertError, ReplaceError, ZoneError);

/// A lookup result: the session and which way the packet travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The session.
    pub session: SessionRef,
    /// [`Direction::Original`] if the key was the session's original key.
    pub direction: Direction,
}

/// A read-only view of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo<V> {
    /// Key of the direction that created the session.
    pub original: FlowKey,
    /// Key the reply direction is expected to carry.
    pub reply: FlowKey,
    /// Current state.
    pub state: SessionState,
    /// Established (assured): never early-dropped.
    pub established: bool,
    /// When the session expires unless refreshed (rounded up to the timer granularity).
    pub deadline: Instant,
    /// The caller's value.
    pub value: V,
}

/// Table counters (monotonic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableCounters {
    /// Sessions inserted.
    pub inserted: u64,
    /// Inserts refused because the table was full.
    pub refused_full: u64,
    /// Inserts refused because the zone was at its quota.
    pub refused_quota: u64,
    /// Inserts refused because the zone table was full.
    pub refused_zones: u64,
    /// Not-yet-established sessions evicted by their own zone.
    pub early_drops: u64,
    /// Sessions expired by [`SessionTable::handle_timeout`].
    pub expired: u64,
    /// Sessions removed by [`SessionTable::remove`].
    pub removed: u64,
}

/// A zone's session count and quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneUsage {
    /// Live sessions of the zone.
    pub sessions: u32,
    /// The zone's quota.
    pub quota: u32,
    /// Of the live sessions, those not yet established.
    pub unestablished: u32,
}

/// One session: both keys, timer links, state and the caller's value. For IPv4 keys and a
/// 16-byte value this is exactly one 64-byte cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub(super) struct Record<K: SessionKey, V> {
    _align: K::Align,
    pub(super) keys: [K; 2],
    pub(super) zone: u32,
    pub(super) generation: u32,
    /// Deadline in timer ticks (wrapping u32).
    pub(super) deadline: u32,
    tprev: u32,
    tnext: u32,
    pub(super) proto: u8,
    pub(super) state: u8,
    pub(super) flags: u8,
    _pad: u8,
    pub(super) value: V,
}

/// One line of the index: how many entries overflowed past this bucket, then 15 entries of
/// `tag | (slot + 1)` (0 = empty).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(64))]
struct Bucket {
    overflow: u32,
    e: [u32; ENTRIES],
}

impl Bucket {
    /// Bit `j` set where entry `j` carries `tag`. `tag` is never 0 (see
    /// [`SessionTable::tag`]), so empty entries never match. The whole line is compared at
    /// once (the overflow count in lane 0, its bit dropped).
    #[inline(always)]
    fn matches(&self, tag: u32, tag_mask: u32) -> u32 {
        let line: &[u32; 16] = zerocopy::transmute_ref!(self);
        crate::sys::masked_eq_lanes(line, tag, tag_mask) >> 1
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Zone {
    id: u32,
    used: bool,
    configured: bool,
    quota: u32,
    count: u32,
    unestablished: u32,
    emb_head: u32,
    emb_tail: u32,
}

/// A fixed-capacity session table; `K` is [`V4Key`](super::V4Key) or
/// [`V6Key`](super::V6Key), `V` the caller's per-session value.
///
/// Call order, per batch: [`lookup_batch`](Self::lookup_batch) (or
/// [`lookup`](Self::lookup)), then for hits [`track`](Self::track) or
/// [`refresh`](Self::refresh), for misses [`insert`](Self::insert) (or, for many new
/// sessions at once, [`insert_batch`](Self::insert_batch)); and whenever
/// [`poll_timeout`](Self::poll_timeout) is at or before `now`,
/// [`handle_timeout`](Self::handle_timeout) with a work budget. Nothing allocates after
/// [`new`](Self::new).
pub struct SessionTable<K: SessionKey, V> {
    sip: SipKey,
    cfg: TableConfig,
    recs: Vec<Record<K, V>>,
    /// Per record: previous / next in its zone's not-yet-established list.
    emb: Vec<[u32; 2]>,
    buckets: Vec<Bucket>,
    nbuckets: u64,
    idx_mask: u32,
    tag_mask: u32,
    /// Sentinels of the timer lists: `wheel_slots` slots, then the sweep list.
    wheel: Vec<[u32; 2]>,
    occupied: Vec<u64>,
    /// Next tick to sweep.
    cursor: u64,
    gran: u64,
    /// Deadline ticks per state for the `now` of the last refresh (bit `s` of `dl_known`
    /// set when `dl_ticks[s]` is filled in): a batch shares one `now`, so this saves a
    /// 64-bit division per packet.
    dl_now: u64,
    dl_known: u16,
    dl_ticks: [u32; SessionState::ALL.len()],
    free: u32,
    len: u32,
    zones: Vec<Zone>,
    zone_count: u32,
    zone_shift: u32,
    counters: TableCounters,
}

impl<K: SessionKey, V: fmt::Debug> fmt::Debug for SessionTable<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTable")
            .field("family", &K::FAMILY)
            .field("len", &self.len)
            .field("capacity", &self.cfg.capacity)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// State of one [`SessionTable::lookup_batch`], per key: hash and candidate record; per
/// batch: bit masks (bit `i` for key `i`).
struct Pipeline {
    hashes: [u64; BATCH],
    cand: [u32; BATCH],
    /// Keys of the table's family (hashed).
    valid: u64,
    /// The home bucket alone cannot answer: several tag matches, or entries overflowed.
    slow: u64,
    /// Deferred to the full probe.
    late: u64,
    hits: u64,
}

/// Most sessions a batch lookup takes.
const BATCH: usize = 64;
/// Batch lookup pipeline distances, in keys (see [`SessionTable::lookup_batch`]): at least a
/// memory latency's worth of hashing (and of waiting for other keys' lines, the fill buffers
/// being the limit at 1M sessions). `conntrack-hit`, 64-key batches: 12 is clearly worse than
/// 16, 24 to 32 a few percent better; with 32 a 64-key batch hashes its second half while the
/// first half's buckets arrive.
const LEAD_KEY: usize = 16;
const LEAD_BUCKET: usize = 32;
const LEAD_RECORD: usize = 32;
/// Buckets along a probe path whose matching records a deferred batch lookup prefetches.
const PREFETCH_PROBE_BUCKETS: usize = 3;

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// A table with everything allocated up front.
    ///
    /// # Errors
    /// [`ConfigError`] if a setting is out of range.
    pub fn new(cfg: TableConfig) -> Result<Self, ConfigError> {
        if cfg.capacity == 0 || cfg.capacity > MAX_CAPACITY {
            return Err(ConfigError::Capacity);
        }
        if !cfg.wheel_slots.is_power_of_two() || !(64..=1 << 20).contains(&cfg.wheel_slots) {
            return Err(ConfigError::WheelSlots);
        }
        let g = cfg.timeouts.granularity.as_nanos();
        if g == 0
            || SessionState::ALL
                .iter()
                .any(|s| cfg.timeouts.timeout(*s).as_nanos() / g >= 1 << 30)
        {
            return Err(ConfigError::Timeouts);
        }
        if cfg.max_zones == 0 || cfg.max_zones > 1 << 20 {
            return Err(ConfigError::MaxZones);
        }
        let cap = cfg.capacity as usize;
        let idx_bits = 32 - cfg.capacity.leading_zeros();
        let idx_mask = (1u32 << idx_bits) - 1;
        let nbuckets = (u64::from(cfg.capacity) * 2 * INDEX_LOAD_DEN)
            .div_ceil(ENTRIES as u64 * INDEX_LOAD_NUM)
            + 1;
        let mut recs = Vec::with_capacity(cap);
        recs.resize(cap, Record::default());
        for (i, r) in (0u32..).zip(recs.iter_mut()) {
            r.tnext = if i + 1 < cfg.capacity { i + 1 } else { NIL };
        }
        let w = cfg.wheel_slots as usize;
        let zslots = (cfg.max_zones as usize * 2).next_power_of_two().max(4);
        let mut t = Self {
            sip: SipKey::new(cfg.secret),
            cfg,
            recs,
            emb: vec![[NIL, NIL]; cap],
            buckets: vec![Bucket::default(); usize::try_from(nbuckets).unwrap_or(0)],
            nbuckets,
            idx_mask,
            tag_mask: !idx_mask,
            wheel: Vec::with_capacity(w + 1),
            occupied: vec![0; w.div_ceil(64)],
            cursor: 0,
            gran: g,
            dl_now: 0,
            dl_known: 0,
            dl_ticks: [0; SessionState::ALL.len()],
            free: 0,
            len: 0,
            zones: vec![Zone::default(); zslots],
            zone_count: 0,
            zone_shift: 64 - zslots.trailing_zeros(),
            counters: TableCounters::default(),
        };
        let base = cfg.capacity;
        for i in 0..=cfg.wheel_slots {
            t.wheel.push([base + i, base + i]);
        }
        Ok(t)
    }

    /// Empties the table (keeping the allocation and zone quotas); `O(capacity)`.
    pub fn clear(&mut self) {
        let cap = self.cfg.capacity;
        for (i, r) in (0u32..).zip(self.recs.iter_mut()) {
            let g = r.generation.wrapping_add(u32::from(r.flags & F_LIVE));
            *r = Record::default();
            r.generation = g;
            r.tnext = if i + 1 < cap { i + 1 } else { NIL };
        }
        self.emb.fill([NIL, NIL]);
        self.buckets.fill(Bucket::default());
        for (i, s) in (cap..).zip(self.wheel.iter_mut()) {
            *s = [i, i];
        }
        self.occupied.fill(0);
        self.free = 0;
        self.len = 0;
        for z in &mut self.zones {
            z.count = 0;
            z.unestablished = 0;
            z.emb_head = NIL;
            z.emb_tail = NIL;
        }
        self.rebuild_zones();
    }

    /// Live sessions.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when no session is live.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most sessions the table holds.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cfg.capacity as usize
    }

    /// The settings.
    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// Counters.
    pub fn counters(&self) -> &TableCounters {
        &self.counters
    }

    /// Bytes the table allocated (records, index, timer wheel, zones): the real memory cost.
    pub fn allocated_bytes(&self) -> usize {
        use core::mem::size_of;
        self.recs.capacity() * size_of::<Record<K, V>>()
            + self.emb.capacity() * size_of::<[u32; 2]>()
            + self.buckets.capacity() * size_of::<Bucket>()
            + self.wheel.capacity() * size_of::<[u32; 2]>()
            + self.occupied.capacity() * size_of::<u64>()
            + self.zones.capacity() * size_of::<Zone>()
            + size_of::<Self>()
    }

    // ----- lookup -------------------------------------------------------------------------

    #[inline(always)]
    fn hash(&self, k: &K, zone: u32, proto: u8) -> u64 {
        k.hash(&self.sip, zone, proto)
    }

    #[inline(always)]
    fn home(&self, h: u64) -> usize {
        ((u128::from(h) * u128::from(self.nbuckets)) >> 64) as usize
    }

    /// The hash's tag bits, never 0 (a zero tag becomes the lowest tag bit), so that an
    /// empty entry (0) never matches and [`Bucket::matches`] need not test for it.
    #[inline(always)]
    fn tag(&self, h: u64) -> u32 {
        let t = h as u32 & self.tag_mask;
        t | (u32::from(t == 0) * (self.tag_mask & self.tag_mask.wrapping_neg()))
    }

    /// Compares record `idx` against a key; the direction it matched.
    #[inline(always)]
    fn check(&self, idx: u32, k: &K, zone: u32, proto: u8) -> Option<Hit> {
        let r = self.recs.get(idx as usize)?;
        // Both keys are compared and the outcomes combined without early exits: the direction
        // of a packet is unpredictable, and a mispredicted branch per packet costs more than
        // the second compare.
        let original = r.keys[0].same(k);
        let reply = r.keys[1].same(k);
        if !((r.zone == zone) & (r.proto == proto) & (r.flags & F_LIVE != 0) & (original | reply)) {
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
    fn find(&self, k: &K, zone: u32, proto: u8, h: u64) -> Option<Hit> {
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

    /// The session `key` belongs to and the packet's direction.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<Hit> {
        let k = K::from_flow(key)?;
        let h = self.hash(&k, key.zone.0, key.proto);
        self.find(&k, key.zone.0, key.proto, h)
    }

    /// Looks up to 64 keys at once. Writes `out[i]` for each `keys[i]` and returns the hit mask
    /// (bit `i` set on a hit). Keys beyond 64 or beyond `out.len()` are ignored. Same answers as
    /// [`Self::lookup`].
    ///
    /// The keys flow through a software pipeline so that the memory latency of many keys
    /// overlaps with the hashing of others. Step `t` hashes key `t` and prefetches its home
    /// bucket, scans the bucket of key `t - LEAD_BUCKET` and prefetches its candidate record,
    /// and compares key `t - LEAD_BUCKET - LEAD_RECORD` with its record. Once every key is
    /// hashed, the remaining records are prefetched all at once and then compared, so that
    /// the last keys of a batch wait for memory together rather than in turn. Small batches
    /// use shorter distances. Keys whose entry is not in their home bucket (or that met a tag
    /// collision) get the records along their probe path prefetched and take the full probe
    /// after the rest of the batch.
    #[inline]
    pub fn lookup_batch(&self, keys: &[FlowKey], out: &mut [Option<Hit>]) -> u64 {
        let n = keys.len().min(out.len()).min(BATCH);
        let lead_bucket = LEAD_BUCKET.min(n);
        let lead_record = LEAD_RECORD.min(n);
        let mut p = Pipeline {
            hashes: [0; BATCH],
            cand: [NIL; BATCH],
            valid: 0,
            slow: 0,
            late: 0,
            hits: 0,
        };
        // The keys themselves may not be in cache either (e.g. a large array of queries).
        for k in keys.iter().take(n.min(LEAD_KEY)) {
            crate::sys::prefetch(k);
        }
        for t in 0..n {
            self.hash_stage(&mut p, keys, t);
            if let Some(i) = t.checked_sub(lead_bucket) {
                self.bucket_stage(&mut p, i);
            }
            if let Some(i) = t.checked_sub(lead_bucket + lead_record) {
                self.record_stage(&mut p, keys, out, i);
            }
        }
        for i in n.saturating_sub(lead_bucket)..n {
            self.bucket_stage(&mut p, i);
        }
        for i in n.saturating_sub(lead_bucket + lead_record)..n {
            self.record_stage(&mut p, keys, out, i);
        }
        // Deferred keys: the full probe, their records having had the rest of the batch to
        // arrive.
        let mut hits = p.hits;
        let mut late = p.late;
        while late != 0 {
            let i = late.trailing_zeros() as usize;
            late &= late - 1;
            if let (Some(key), Some(&h), Some(o)) = (keys.get(i), p.hashes.get(i), out.get_mut(i))
                && let Some(k) = K::from_flow(key)
            {
                *o = self.find(&k, key.zone.0, key.proto, h);
                hits |= u64::from(o.is_some()) << i;
            }
        }
        hits
    }

    /// Batch stage 1 for key `t` (`t < 64`): pack, hash, prefetch the home bucket, and
    /// prefetch a key further on.
    #[inline(always)]
    fn hash_stage(&self, p: &mut Pipeline, keys: &[FlowKey], t: usize) {
        if let Some(k) = keys.get(t + LEAD_KEY) {
            crate::sys::prefetch(k);
        }
        if let (Some(key), Some(h)) = (keys.get(t), p.hashes.get_mut(t))
            && let Some(k) = K::from_flow(key)
        {
            *h = k.hash(&self.sip, key.zone.0, key.proto);
            p.valid |= 1 << t;
            if let Some(b) = self.buckets.get(self.home(*h)) {
                crate::sys::prefetch(b);
            }
        }
    }

    /// Batch stage 2 for key `i`: scan the home bucket (in cache by now, or on its way), keep
    /// the first tag match and prefetch its record. The full probe may be needed if there are
    /// several matches or entries overflowed past this bucket; if nothing matched here, the
    /// entry can only be further on, so prefetch the next bucket.
    #[inline(always)]
    fn bucket_stage(&self, p: &mut Pipeline, i: usize) {
        if i < BATCH
            && p.valid >> i & 1 != 0
            && let (Some(&h), Some(c)) = (p.hashes.get(i), p.cand.get_mut(i))
            && let Some(bk) = self.buckets.get(self.home(h))
        {
            let mm = bk.matches(self.tag(h), self.tag_mask);
            if mm != 0 {
                let e = bk.e.get(mm.trailing_zeros() as usize).copied().unwrap_or(0);
                let idx = (e & self.idx_mask).wrapping_sub(1);
                if let Some(r) = self.recs.get(idx as usize) {
                    crate::sys::prefetch(r);
                }
                *c = idx;
            }
            if mm & mm.wrapping_sub(1) != 0 || bk.overflow != 0 {
                p.slow |= 1 << i;
                if mm == 0
                    && let Some(next) = self.buckets.get(self.next_bucket(self.home(h)))
                {
                    crate::sys::prefetch(next);
                }
            }
        }
    }

    /// Batch stage 3 for key `i`: compare with the candidate record and write `out[i]`. A
    /// miss that may be elsewhere along the probe path is deferred.
    #[inline(always)]
    fn record_stage(&self, p: &mut Pipeline, keys: &[FlowKey], out: &mut [Option<Hit>], i: usize) {
        if i >= BATCH {
            return;
        }
        let Some(o) = out.get_mut(i) else {
            return;
        };
        let mut r = None;
        // Packing the key again is cheaper than keeping it: it is in L1 by now.
        if p.valid >> i & 1 != 0
            && let (Some(key), Some(&c), Some(&h)) = (keys.get(i), p.cand.get(i), p.hashes.get(i))
            && let Some(k) = K::from_flow(key)
        {
            r = self.check(c, &k, key.zone.0, key.proto);
            if r.is_none() && p.slow >> i & 1 != 0 {
                self.prefetch_probe(h);
                p.late |= 1 << i;
            }
        }
        p.hits |= u64::from(r.is_some()) << i;
        *o = r;
    }

    /// The bucket after `b` in probe order.
    #[inline(always)]
    fn next_bucket(&self, b: usize) -> usize {
        if b + 1 >= self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    /// Prefetches the records of the tag matches along the probe path of `h` (at most
    /// [`PREFETCH_PROBE_BUCKETS`] buckets): a hint ahead of [`Self::find`].
    #[inline]
    fn prefetch_probe(&self, h: u64) {
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
                    crate::sys::prefetch(r);
                }
            }
            if bk.overflow == 0 {
                return;
            }
            b = self.next_bucket(b);
        }
    }

    // ----- handles ------------------------------------------------------------------------

    #[inline(always)]
    fn rec(&self, r: SessionRef) -> Option<&Record<K, V>> {
        self.recs.get(r.index as usize).filter(|x| {
            x.flags & F_LIVE != 0 && x.generation == r.generation && r.family == K::FAMILY
        })
    }

    #[inline(always)]
    fn rec_mut(&mut self, r: SessionRef) -> Option<&mut Record<K, V>> {
        self.recs.get_mut(r.index as usize).filter(|x| {
            x.flags & F_LIVE != 0 && x.generation == r.generation && r.family == K::FAMILY
        })
    }

    /// True while `r` names a live session.
    #[inline]
    pub fn is_live(&self, r: SessionRef) -> bool {
        self.rec(r).is_some()
    }

    /// The value of a live session.
    #[inline]
    pub fn value(&self, r: SessionRef) -> Option<&V> {
        self.rec(r).map(|x| &x.value)
    }

    /// The value of a live session, writable.
    #[inline]
    pub fn value_mut(&mut self, r: SessionRef) -> Option<&mut V> {
        self.rec_mut(r).map(|x| &mut x.value)
    }

    /// Everything about a live session (cold path).
    pub fn info(&self, r: SessionRef) -> Option<SessionInfo<V>> {
        let x = self.rec(r)?;
        Some(self.info_of(x))
    }

    pub(super) fn info_of(&self, x: &Record<K, V>) -> SessionInfo<V> {
        let zone = ZoneId(x.zone);
        SessionInfo {
            original: x.keys[0].to_flow(zone, x.proto),
            reply: x.keys[1].to_flow(zone, x.proto),
            state: SessionState::from_u8(x.state).unwrap_or(SessionState::Other),
            established: x.flags & F_ASSURED != 0,
            deadline: self.tick_instant(self.unwrap_tick(x.deadline)),
            value: x.value,
        }
    }

    // ----- insert / replace / remove ------------------------------------------------------

    /// Creates a session indexed by `original` and `reply`, both or neither, in `state`,
    /// expiring `timeout(state)` after `now` unless refreshed.
    ///
    /// If the table is full or the zone is at its quota and early drop is on, the zone's own
    /// oldest not-yet-established session is evicted first; another zone's session never is.
    ///
    /// # Errors
    /// [`InsertError`]; the table is unchanged.
    pub fn insert(
        &mut self,
        now: Instant,
        original: &FlowKey,
        reply: &FlowKey,
        state: SessionState,
        value: V,
    ) -> Result<SessionRef, InsertError> {
        let (ko, kr) = Self::insert_keys(original, reply)?;
        let (zone, proto) = (original.zone.0, original.proto);
        let ho = self.hash(&ko, zone, proto);
        let hr = self.hash(&kr, zone, proto);
        // Both home buckets load in parallel rather than one probe after the other.
        self.prefetch_home(ho);
        self.prefetch_home(hr);
        self.insert_hashed(now, [ko, kr], [ho, hr], zone, proto, state, value)
    }

    /// Creates many sessions: the same as calling [`Self::insert`] for each of `new` in
    /// order and writing its result to `out` (both slices are cut to the shorter), but
    /// pipelined: the keys of up to 64 sessions are hashed and their home buckets
    /// prefetched before the first of them is inserted, so the memory latency of many
    /// inserts overlaps instead of adding up (the `conntrack-insert` bench measures both).
    /// Returns how many sessions were created.
    ///
    /// ```
    /// use nf_core::conntrack::{NewSession, SessionState, SessionTable, TableConfig, V4Key};
    /// use nf_core::{FlowKey, Instant, ZoneId, flow::proto};
    ///
    /// let mut table: SessionTable<V4Key, u32> =
    ///     SessionTable::new(TableConfig::new(1024, *b"a per-run secret"))?;
    /// let new: Vec<NewSession<u32>> = (0..100u16)
    ///     .map(|i| {
    ///         let k = FlowKey::v4(ZoneId(1), [10, 0, 0, 1], [10, 0, 0, 2], proto::UDP, i, 53);
    ///         NewSession { original: k, reply: k.reversed(), state: SessionState::UdpUnreplied, value: 7 }
    ///     })
    ///     .collect();
    /// let mut out = vec![Err(nf_core::conntrack::InsertError::TableFull); new.len()];
    /// assert_eq!(table.insert_batch(Instant::ZERO, &new, &mut out), 100);
    /// assert_eq!(table.len(), 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert_batch(
        &mut self,
        now: Instant,
        new: &[NewSession<V>],
        out: &mut [Result<SessionRef, InsertError>],
    ) -> usize {
        let mut created = 0;
        for (new, out) in new.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            // Checked, packed and hashed once; a bad pair keeps its error for the second pass.
            let mut prepared = [Err(InsertError::BadKey); BATCH];
            for (n, p) in new.iter().zip(prepared.iter_mut()) {
                *p = Self::insert_keys(&n.original, &n.reply).map(|(ko, kr)| {
                    let (zone, proto) = (n.original.zone.0, n.original.proto);
                    let h = [self.hash(&ko, zone, proto), self.hash(&kr, zone, proto)];
                    self.prefetch_home(h[0]);
                    self.prefetch_home(h[1]);
                    ([ko, kr], h)
                });
            }
            for ((n, p), o) in new.iter().zip(prepared).zip(out.iter_mut()) {
                *o = p.and_then(|(keys, h)| {
                    let (zone, proto) = (n.original.zone.0, n.original.proto);
                    self.insert_hashed(now, keys, h, zone, proto, n.state, n.value)
                });
                created += usize::from(o.is_ok());
            }
        }
        created
    }

    /// The packed keys of a new session, or why they cannot form one.
    #[inline(always)]
    fn insert_keys(original: &FlowKey, reply: &FlowKey) -> Result<(K, K), InsertError> {
        let (Some(ko), Some(kr)) = (K::from_flow(original), K::from_flow(reply)) else {
            return Err(InsertError::BadKey);
        };
        if original.zone != reply.zone || original.proto != reply.proto {
            return Err(InsertError::BadKey);
        }
        if ko == kr {
            return Err(InsertError::SameKeys);
        }
        Ok((ko, kr))
    }

    #[inline(always)]
    fn prefetch_home(&self, h: u64) {
        if let Some(b) = self.buckets.get(self.home(h)) {
            crate::sys::prefetch(b);
        }
    }

    /// [`Self::insert`] once the keys are checked and hashed (`keys` and `hashes`: original,
    /// reply).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn insert_hashed(
        &mut self,
        now: Instant,
        keys: [K; 2],
        hashes: [u64; 2],
        zone: u32,
        proto: u8,
        state: SessionState,
        value: V,
    ) -> Result<SessionRef, InsertError> {
        let ([ko, kr], [ho, hr]) = (keys, hashes);
        if self.find(&ko, zone, proto, ho).is_some() || self.find(&kr, zone, proto, hr).is_some() {
            return Err(InsertError::KeyExists);
        }
        self.admit(zone)?;
        let Some(zi) = self.zone_slot_or_create(zone) else {
            self.counters.refused_zones += 1;
            return Err(InsertError::TooManyZones);
        };
        let idx = self.free;
        let Some(r) = self.recs.get_mut(idx as usize) else {
            self.counters.refused_full += 1;
            return Err(InsertError::TableFull);
        };
        self.free = r.tnext;
        r.keys = [ko, kr];
        r.zone = zone;
        r.proto = proto;
        r.state = state as u8;
        r.flags = F_LIVE;
        r.value = value;
        let generation = r.generation;
        // The next free record is the next insert's: start loading it.
        if let Some(next) = self.recs.get(self.free as usize) {
            crate::sys::prefetch(next);
        }
        self.index_insert(ho, idx);
        self.index_insert(hr, idx);
        let d = self.deadline_tick(now, state);
        if let Some(r) = self.recs.get_mut(idx as usize) {
            r.deadline = d;
        }
        self.timer_link(self.slot_for(d), idx);
        self.emb_push(zi, idx);
        if let Some(z) = self.zones.get_mut(zi) {
            z.count += 1;
        }
        self.len += 1;
        self.counters.inserted += 1;
        Ok(SessionRef::new(K::FAMILY, idx, generation))
    }

    /// Makes room for one session of `zone`, early-dropping its own oldest unestablished
    /// session if needed and allowed.
    fn admit(&mut self, zone: u32) -> Result<(), InsertError> {
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

    /// Points the session's reply direction at `reply` (e.g. after NAT chose a translation),
    /// atomically: the old reply key stops matching as the new one starts.
    ///
    /// # Errors
    /// [`ReplaceError`]; the table is unchanged.
    pub fn replace_reply(&mut self, r: SessionRef, reply: &FlowKey) -> Result<(), ReplaceError> {
        let Some(x) = self.rec(r) else {
            return Err(ReplaceError::Stale);
        };
        let (zone, proto, old) = (x.zone, x.proto, x.keys[1]);
        let Some(kr) = K::from_flow(reply) else {
            return Err(ReplaceError::BadKey);
        };
        if reply.zone.0 != zone || reply.proto != proto {
            return Err(ReplaceError::BadKey);
        }
        if kr == old {
            return Ok(());
        }
        let h = self.hash(&kr, zone, proto);
        if self.find(&kr, zone, proto, h).is_some() {
            return Err(ReplaceError::KeyExists);
        }
        let ho = self.hash(&old, zone, proto);
        self.index_remove(ho, r.index);
        self.index_insert(h, r.index);
        if let Some(x) = self.recs.get_mut(r.index as usize) {
            x.keys[1] = kr;
        }
        Ok(())
    }

    /// Removes a live session; returns its value, or `None` for a stale handle.
    pub fn remove(&mut self, r: SessionRef) -> Option<V> {
        let v = self.rec(r)?.value;
        self.remove_idx(r.index);
        self.counters.removed += 1;
        Some(v)
    }

    /// Unindexes, unlinks and frees record `idx` (which must be live).
    fn remove_idx(&mut self, idx: u32) {
        let Some(x) = self.recs.get(idx as usize) else {
            return;
        };
        let (keys, zone, proto, flags) = (x.keys, x.zone, x.proto, x.flags);
        if flags & F_LIVE == 0 {
            return;
        }
        for k in &keys {
            let h = self.hash(k, zone, proto);
            self.index_remove(h, idx);
        }
        self.timer_unlink(idx);
        let zi = self.zone_slot(zone);
        if let Some(zi) = zi {
            if flags & F_ASSURED == 0 {
                self.emb_unlink(zi, idx);
            }
            if let Some(z) = self.zones.get_mut(zi) {
                z.count = z.count.saturating_sub(1);
            }
        }
        let free = self.free;
        if let Some(x) = self.recs.get_mut(idx as usize) {
            x.flags = 0;
            x.generation = x.generation.wrapping_add(1);
            x.tnext = free;
            x.tprev = NIL;
        }
        self.free = idx;
        self.len -= 1;
        if let Some(zi) = zi {
            self.zone_maybe_release(zi);
        }
    }

    // ----- state and refresh --------------------------------------------------------------

    /// Restarts the session's timeout for its current state from `now`. `O(1)`.
    #[inline]
    pub fn refresh(&mut self, r: SessionRef, now: Instant) -> bool {
        let Some(x) = self.rec(r) else {
            return false;
        };
        let s = SessionState::from_u8(x.state).unwrap_or(SessionState::Other);
        let d = self.deadline_tick(now, s);
        self.set_deadline(r.index, d);
        true
    }

    /// Sets the state (and, if `established`, marks the session established: it is never
    /// early-dropped again), then refreshes from `now`.
    pub fn set_state(
        &mut self,
        r: SessionRef,
        now: Instant,
        state: SessionState,
        established: bool,
    ) -> bool {
        let Some(x) = self.rec_mut(r) else {
            return false;
        };
        x.state = state as u8;
        let was = x.flags & F_ASSURED != 0;
        if established && !was {
            x.flags |= F_ASSURED;
            let zone = x.zone;
            if let Some(zi) = self.zone_slot(zone) {
                self.emb_unlink(zi, r.index);
            }
        }
        let d = self.deadline_tick(now, state);
        self.set_deadline(r.index, d);
        true
    }

    /// Feeds one packet of the session to the state tracker (`tcp_flags` is 0 for non-TCP),
    /// updates state and establishment, and refreshes. Returns the new state, or `None` for
    /// a stale handle or a TCP segment the tracker rejects (state unchanged).
    #[inline]
    pub fn track(
        &mut self,
        r: SessionRef,
        now: Instant,
        direction: Direction,
        tcp_flags: u8,
    ) -> Option<SessionState> {
        let x = self.rec(r)?;
        let s = SessionState::from_u8(x.state).unwrap_or(SessionState::Other);
        let t = state::advance(
            s,
            x.flags & F_ASSURED != 0,
            x.flags & F_FIN_REPLY != 0,
            direction,
            tcp_flags,
        )?;
        let newly_assured = t.assured && x.flags & F_ASSURED == 0;
        if let Some(x) = self.recs.get_mut(r.index as usize) {
            x.flags = (x.flags & !F_FIN_REPLY) | if t.fin_reply { F_FIN_REPLY } else { 0 };
            x.state = t.state as u8;
        }
        if newly_assured {
            self.set_state(r, now, t.state, true);
        } else {
            let d = self.deadline_tick(now, t.state);
            self.set_deadline(r.index, d);
        }
        Some(t.state)
    }

    // ----- timers -------------------------------------------------------------------------

    /// Ticks are `now / granularity`; a deadline is rounded up to a tick boundary. Cached
    /// per state for the current `now`.
    #[inline(always)]
    fn deadline_tick(&mut self, now: Instant, s: SessionState) -> u32 {
        let n = now.as_nanos();
        if n != self.dl_now {
            self.dl_now = n;
            self.dl_known = 0;
        }
        let i = s as usize;
        if self.dl_known >> i & 1 != 0
            && let Some(&t) = self.dl_ticks.get(i)
        {
            return t;
        }
        let t = n
            .saturating_add(self.cfg.timeouts.timeout(s).as_nanos())
            .div_ceil(self.gran) as u32;
        if let Some(d) = self.dl_ticks.get_mut(i) {
            *d = t;
            self.dl_known |= 1 << i;
        }
        t
    }

    /// The u64 tick a wrapping u32 tick stands for, relative to the cursor.
    fn unwrap_tick(&self, t: u32) -> u64 {
        let diff = t.wrapping_sub(self.cursor as u32).cast_signed();
        self.cursor.saturating_add_signed(i64::from(diff))
    }

    fn tick_instant(&self, t: u64) -> Instant {
        Instant::from_nanos(t.saturating_mul(self.gran))
    }

    /// The wheel slot whose next sweep is at or before tick `d`.
    #[inline(always)]
    fn slot_for(&self, d: u32) -> u32 {
        let c = self.cursor as u32;
        let t = if d.wrapping_sub(c).cast_signed() < 0 {
            c
        } else {
            d
        };
        t & (self.cfg.wheel_slots - 1)
    }

    #[inline(always)]
    fn set_deadline(&mut self, idx: u32, d: u32) {
        let Some(x) = self.recs.get_mut(idx as usize) else {
            return;
        };
        let old = x.deadline;
        x.deadline = d;
        // Later deadlines stay where they are (the sweep re-files them); an earlier one
        // must move so that it is swept in time.
        if d.wrapping_sub(old).cast_signed() < 0 {
            self.timer_unlink(idx);
            self.timer_link(self.slot_for(d), idx);
        }
    }

    #[inline(always)]
    fn links(&self, i: u32) -> [u32; 2] {
        let cap = self.cfg.capacity;
        if i < cap {
            self.recs
                .get(i as usize)
                .map_or([NIL, NIL], |r| [r.tprev, r.tnext])
        } else {
            self.wheel
                .get((i - cap) as usize)
                .copied()
                .unwrap_or([NIL, NIL])
        }
    }

    #[inline(always)]
    fn set_prev(&mut self, i: u32, v: u32) {
        let cap = self.cfg.capacity;
        if i < cap {
            if let Some(r) = self.recs.get_mut(i as usize) {
                r.tprev = v;
            }
        } else if let Some(s) = self.wheel.get_mut((i - cap) as usize) {
            s[0] = v;
        }
    }

    #[inline(always)]
    fn set_next(&mut self, i: u32, v: u32) {
        let cap = self.cfg.capacity;
        if i < cap {
            if let Some(r) = self.recs.get_mut(i as usize) {
                r.tnext = v;
            }
        } else if let Some(s) = self.wheel.get_mut((i - cap) as usize) {
            s[1] = v;
        }
    }

    /// Links record `idx` at the head of wheel slot `slot`.
    #[inline(always)]
    fn timer_link(&mut self, slot: u32, idx: u32) {
        let head = self.cfg.capacity + slot;
        let [_, n] = self.links(head);
        self.set_next(head, idx);
        self.set_prev(idx, head);
        self.set_next(idx, n);
        self.set_prev(n, idx);
        if let Some(w) = self.occupied.get_mut((slot / 64) as usize) {
            *w |= 1 << (slot % 64);
        }
    }

    #[inline(always)]
    fn timer_unlink(&mut self, idx: u32) {
        let [p, n] = self.links(idx);
        if p == NIL || n == NIL {
            return;
        }
        self.set_next(p, n);
        self.set_prev(n, p);
        if p == n {
            // The list is now empty; `p` is its sentinel.
            let slot = p.wrapping_sub(self.cfg.capacity);
            if slot < self.cfg.wheel_slots
                && let Some(w) = self.occupied.get_mut((slot / 64) as usize)
            {
                *w &= !(1 << (slot % 64));
            }
        }
    }

    fn sweep_id(&self) -> u32 {
        self.cfg.capacity + self.cfg.wheel_slots
    }

    /// When [`Self::handle_timeout`] next has work: the start of the next occupied wheel
    /// slot's tick (sessions there may have been refreshed since; that costs one re-file), or
    /// a past instant if an earlier sweep ran out of budget. `None` when empty.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sweep = self.sweep_id();
        if self.links(sweep)[1] != sweep {
            return Some(self.tick_instant(self.cursor.saturating_sub(1)));
        }
        if self.len == 0 {
            return None;
        }
        let w = u64::from(self.cfg.wheel_slots);
        let start = self.cursor % w;
        let mut s = start;
        // At most one pass over the bitmap words.
        for _ in 0..=self.occupied.len() {
            let wi = (s / 64) as usize;
            let word = self.occupied.get(wi).copied().unwrap_or(0) & (u64::MAX << (s % 64));
            if word != 0 {
                let slot = (wi as u64) * 64 + u64::from(word.trailing_zeros());
                let dist = (slot + w - start) % w;
                return Some(self.tick_instant(self.cursor + dist));
            }
            s = (wi as u64 + 1) * 64 % w;
            if s == 0 && start != 0 {
                // Wrapped: look at the words before `start` too.
                let word0 = self.occupied.first().copied().unwrap_or(0);
                if word0 != 0 {
                    let slot = u64::from(word0.trailing_zeros());
                    let dist = (slot + w - start) % w;
                    return Some(self.tick_instant(self.cursor + dist));
                }
            }
        }
        Some(self.tick_instant(self.cursor))
    }

    /// Expires due sessions, doing at most `budget` units of work (one per session examined
    /// and one per wheel slot swept), and resumes where it stopped on the next call. Calling
    /// it again with the same `now` does nothing new. Returns the work done.
    pub fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.handle_timeout_with(now, budget, |_| {})
    }

    /// [`Self::handle_timeout`], calling `on_expire` with each expired session (e.g. so NAT
    /// can release its port).
    pub fn handle_timeout_with(
        &mut self,
        now: Instant,
        budget: usize,
        mut on_expire: impl FnMut(&SessionInfo<V>),
    ) -> usize {
        let target = now.as_nanos() / self.gran;
        let target32 = target as u32;
        let sweep = self.sweep_id();
        let w = u64::from(self.cfg.wheel_slots);
        let mut work = 0usize;
        loop {
            while work < budget {
                let i = self.links(sweep)[1];
                if i == sweep || i == NIL {
                    break;
                }
                work += 1;
                let Some(x) = self.recs.get(i as usize) else {
                    break;
                };
                let d = x.deadline;
                if target32.wrapping_sub(d).cast_signed() >= 0 {
                    let info = self.info_of(x);
                    self.remove_idx(i);
                    self.counters.expired += 1;
                    on_expire(&info);
                } else {
                    self.timer_unlink(i);
                    self.timer_link(self.slot_for(d), i);
                }
            }
            if work >= budget || self.cursor > target {
                break;
            }
            if target - self.cursor >= w {
                // Every slot will be swept once within the last `w` ticks.
                self.cursor = target - w + 1;
            }
            let slot = (self.cursor % w) as u32;
            self.splice_to_sweep(slot);
            self.cursor += 1;
            work += 1;
        }
        work
    }

    /// Moves wheel slot `slot`'s whole list onto the (empty) sweep list.
    fn splice_to_sweep(&mut self, slot: u32) {
        let head = self.cfg.capacity + slot;
        let sweep = self.sweep_id();
        let [last, first] = self.links(head);
        if first == head {
            return;
        }
        self.set_next(sweep, first);
        self.set_prev(first, sweep);
        self.set_prev(sweep, last);
        self.set_next(last, sweep);
        self.set_next(head, head);
        self.set_prev(head, head);
        if let Some(wd) = self.occupied.get_mut((slot / 64) as usize) {
            *wd &= !(1 << (slot % 64));
        }
    }

    // ----- index --------------------------------------------------------------------------

    fn index_insert(&mut self, h: u64, idx: u32) {
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

    fn index_remove(&mut self, h: u64, idx: u32) {
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

    // ----- zones --------------------------------------------------------------------------

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

    fn zone_slot(&self, id: u32) -> Option<usize> {
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

    fn zone_slot_or_create(&mut self, id: u32) -> Option<usize> {
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
    fn zone_maybe_release(&mut self, zi: usize) {
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

    fn rebuild_zones(&mut self) {
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

    fn emb_push(&mut self, zi: usize, idx: u32) {
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

    fn emb_unlink(&mut self, zi: usize, idx: u32) {
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

    // ----- export support -----------------------------------------------------------------

    /// Live records from slot `from` on.
    pub(super) fn records_from(&self, from: u32) -> impl Iterator<Item = (u32, &Record<K, V>)> {
        (0u32..)
            .zip(self.recs.iter())
            .skip(from as usize)
            .filter(|(_, r)| r.flags & F_LIVE != 0)
    }

    /// The deadline instant of a record.
    pub(super) fn deadline_of(&self, x: &Record<K, V>) -> Instant {
        self.tick_instant(self.unwrap_tick(x.deadline))
    }

    /// Inserts an imported session with an explicit remaining lifetime.
    #[expect(clippy::too_many_arguments, reason = "one imported record's fields")]
    pub(super) fn insert_imported(
        &mut self,
        now: Instant,
        original: &FlowKey,
        reply: &FlowKey,
        state: SessionState,
        established: bool,
        fin_reply: bool,
        remaining: Duration,
        value: V,
    ) -> Result<SessionRef, InsertError> {
        let r = self.insert(now, original, reply, state, value)?;
        if established {
            self.set_state(r, now, state, true);
        }
        let d = (now + remaining).as_nanos().div_ceil(self.gran);
        let d32 = d as u32;
        if fin_reply && let Some(x) = self.recs.get_mut(r.index as usize) {
            x.flags |= F_FIN_REPLY;
        }
        // Replace the deadline exactly (earlier or later) by re-filing the timer.
        if let Some(x) = self.recs.get_mut(r.index as usize) {
            x.deadline = d32;
        }
        self.timer_unlink(r.index);
        self.timer_link(self.slot_for(d32), r.index);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{V4Key, V6Key};
    use crate::flow::proto;

    fn k(i: u32) -> FlowKey {
        FlowKey::v4(
            ZoneId(1),
            i.to_be_bytes(),
            [10, 0, 0, 1],
            proto::UDP,
            1000,
            53,
        )
    }

    proptest::proptest! {
        /// The per-`now` deadline cache answers exactly like the formula, whatever order
        /// times and states come in (repeated, earlier, later).
        #[test]
        fn cached_deadlines_equal_the_formula(
            calls in proptest::collection::vec((0u64..4, 0usize..11), 1..200),
            gran_ms in 1u64..2000,
        ) {
            let mut cfg = TableConfig::new(16, [1; 16]);
            cfg.timeouts.granularity = Duration::from_millis(gran_ms);
            let mut t: SessionTable<V4Key, u8> = SessionTable::new(cfg).unwrap();
            let times = [0u64, 1, 999_999_999, 7_000_000_123];
            for (ti, si) in calls {
                let now = Instant::from_nanos(times[ti as usize]);
                let s = SessionState::ALL[si];
                let want = (now.as_nanos() + cfg.timeouts.timeout(s).as_nanos())
                    .div_ceil(cfg.timeouts.granularity.as_nanos()) as u32;
                proptest::prop_assert_eq!(t.deadline_tick(now, s), want);
            }
        }
    }

    #[test]
    fn record_is_one_cache_line() {
        assert_eq!(core::mem::size_of::<Record<V4Key, [u8; 16]>>(), 64);
        assert_eq!(core::mem::align_of::<Record<V4Key, [u8; 16]>>(), 64);
        assert_eq!(core::mem::size_of::<Record<V6Key, [u8; 16]>>(), 112);
        assert_eq!(core::mem::size_of::<Bucket>(), 64);
    }

    #[test]
    fn insert_lookup_both_directions_remove() {
        let mut t: SessionTable<V4Key, u64> =
            SessionTable::new(TableConfig::new(100, [3; 16])).unwrap();
        let r = t
            .insert(
                Instant::ZERO,
                &k(1),
                &k(1).reversed(),
                SessionState::UdpUnreplied,
                7,
            )
            .unwrap();
        assert_eq!(t.lookup(&k(1)).unwrap().direction, Direction::Original);
        assert_eq!(
            t.lookup(&k(1).reversed()).unwrap().direction,
            Direction::Reply
        );
        assert_eq!(t.lookup(&k(1)).unwrap().session, r);
        assert_eq!(
            t.insert(
                Instant::ZERO,
                &k(2),
                &k(1).reversed(),
                SessionState::Other,
                0
            ),
            Err(InsertError::KeyExists)
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.value(r), Some(&7));
        assert_eq!(t.remove(r), Some(7));
        assert_eq!(t.remove(r), None);
        assert!(t.lookup(&k(1)).is_none());
        let r2 = t
            .insert(
                Instant::ZERO,
                &k(3),
                &k(3).reversed(),
                SessionState::Other,
                1,
            )
            .unwrap();
        assert_eq!(r2.index, r.index);
        assert_ne!(r2.generation, r.generation);
        assert_eq!(t.value(r), None);
    }

    #[test]
    fn fills_to_capacity_and_refuses() {
        let mut cfg = TableConfig::new(1000, [1; 16]);
        cfg.early_drop = false;
        let mut t: SessionTable<V4Key, u32> = SessionTable::new(cfg).unwrap();
        for i in 0..1000 {
            t.insert(
                Instant::ZERO,
                &k(i),
                &k(i).reversed(),
                SessionState::Other,
                i,
            )
            .unwrap();
        }
        assert_eq!(
            t.insert(
                Instant::ZERO,
                &k(5000),
                &k(5000).reversed(),
                SessionState::Other,
                0
            ),
            Err(InsertError::TableFull)
        );
        for i in 0..1000 {
            let h = t.lookup(&k(i).reversed()).unwrap();
            assert_eq!(t.value(h.session), Some(&i));
        }
        let mut out = [None; 64];
        let keys: Vec<FlowKey> = (0..64).map(|i| k(i * 15)).collect();
        assert_eq!(t.lookup_batch(&keys, &mut out), u64::MAX);
    }

    /// Batch lookups give the single-lookup answers also where the fast path cannot decide:
    /// few tag bits (many tag collisions, several candidates per bucket) and few home buckets
    /// (long overflow chains, entries far from home), with removals in between, misses, keys
    /// of the other family, and `out` shorter than `keys`.
    #[test]
    fn batch_equals_single_under_collisions_and_overflow() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (tag_bits, homes) in [
            (2u32, None),
            (0, None),
            (2, Some(3u64)),
            (8, Some(1)),
            (12, None),
        ] {
            let mut t: SessionTable<V4Key, u32> =
                SessionTable::new(TableConfig::new(600, [5; 16])).unwrap();
            // Set while the table is empty, so every entry is made with the altered layout.
            t.tag_mask = !t.idx_mask & !(u32::MAX.checked_shr(tag_bits).unwrap_or(0));
            if let Some(h) = homes {
                t.nbuckets = h;
            }
            let mut live = alloc::vec::Vec::new();
            for i in 0..450u32 {
                let r = t
                    .insert(
                        Instant::ZERO,
                        &k(i),
                        &k(i).reversed(),
                        SessionState::Other,
                        i,
                    )
                    .unwrap();
                live.push((i, r));
            }
            for (i, r) in &live {
                if i % 7 == 3 {
                    assert_eq!(t.remove(*r), Some(*i));
                }
            }
            let v6 = FlowKey::v6(ZoneId(1), [1; 16], [2; 16], proto::UDP, 1, 2);
            for round in 0..200 {
                let n = (next() % 71) as usize;
                // Each key with whether it must hit.
                let keys: Vec<(FlowKey, bool)> = (0..n)
                    .map(|_| {
                        let j = (next() % 450) as u32;
                        match next() % 8 {
                            0 => (k(500 + j % 50), false),
                            1 => (v6, false),
                            2..=4 => (k(j), j % 7 != 3),
                            _ => (k(j).reversed(), j % 7 != 3),
                        }
                    })
                    .collect();
                let flows: Vec<FlowKey> = keys.iter().map(|(f, _)| *f).collect();
                let mut out = [Some(Hit {
                    session: SessionRef::new(crate::Family::V4, 7, 7),
                    direction: Direction::Reply,
                }); 64];
                let m = if round % 5 == 0 { 10 } else { 64 };
                let mask = t.lookup_batch(&flows, &mut out[..m]);
                let done = n.min(m);
                for (i, (key, live)) in keys.iter().enumerate().take(done) {
                    let want = t.lookup(key);
                    assert_eq!(
                        out[i], want,
                        "tag bits {tag_bits}, homes {homes:?}, key {key}"
                    );
                    assert_eq!(want.is_some(), *live, "key {key}");
                    assert_eq!(mask >> i & 1 == 1, *live);
                }
                assert_eq!(mask.checked_shr(done as u32).unwrap_or(0), 0);
            }
            // Every live session is found from both sides, batched.
            let keys: Vec<FlowKey> = (0..450u32)
                .filter(|i| i % 7 != 3)
                .flat_map(|i| [k(i), k(i).reversed()])
                .collect();
            for chunk in keys.chunks(64) {
                let mut out = [None; 64];
                let mask = t.lookup_batch(chunk, &mut out);
                assert_eq!(mask.count_ones() as usize, chunk.len());
                for (key, h) in chunk.iter().zip(out) {
                    let h = h.unwrap();
                    let want = if key.dst_bytes() == [10, 0, 0, 1] {
                        Direction::Original
                    } else {
                        Direction::Reply
                    };
                    assert_eq!(h.direction, want);
                }
            }
        }
    }

    #[test]
    fn expiry_and_poll() {
        let mut cfg = TableConfig::new(10, [1; 16]);
        cfg.timeouts = TimeoutProfile::uniform(Duration::from_secs(1), Duration::from_secs(5));
        let mut t: SessionTable<V6Key, ()> = SessionTable::new(cfg).unwrap();
        assert_eq!(t.poll_timeout(), None);
        let f = FlowKey::v6(ZoneId(0), [1; 16], [2; 16], proto::TCP, 1, 2);
        let r = t
            .insert(
                Instant::from_nanos(500),
                &f,
                &f.reversed(),
                SessionState::TcpSynSent,
                (),
            )
            .unwrap();
        assert_eq!(t.poll_timeout(), Some(Instant::from_nanos(6_000_000_000)));
        t.handle_timeout(Instant::from_nanos(5_999_999_999), 100);
        assert!(t.is_live(r));
        assert!(t.refresh(r, Instant::from_secs_for_test(3)));
        t.handle_timeout(Instant::from_secs_for_test(7), 100);
        assert!(t.is_live(r));
        t.handle_timeout(Instant::from_secs_for_test(8), 100);
        assert!(!t.is_live(r));
        assert_eq!(t.counters().expired, 1);
        assert_eq!(t.poll_timeout(), None);
    }

    impl Instant {
        fn from_secs_for_test(s: u64) -> Self {
            Instant::from_nanos(s * 1_000_000_000)
        }
    }
}
