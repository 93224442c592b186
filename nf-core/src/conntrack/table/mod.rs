//! [`SessionTable`]: fixed-capacity sessions indexed by both of their keys.
//!
//! See the [module docs](super) for the layout, the memory budget and the invariants.

mod export_hooks;
mod index;
mod journal;
mod lookup;
mod timer;
mod zones;

use super::key::{SessionKey, SipKey};
use super::state::{self, SessionState, TimeoutProfile};
use crate::flow::{FlowKey, ZoneId};
use crate::meta::{Direction, SessionRef};
use crate::time::Instant;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use index::{Bucket, ENTRIES, INDEX_LOAD_DEN, INDEX_LOAD_NUM};
use zones::Zone;

/// "No record" in the intrusive lists.
pub(super) const NIL: u32 = u32::MAX;
/// Largest supported capacity (index entries keep at least 6 tag bits).
pub const MAX_CAPACITY: u32 = (1 << 26) - 1;

/// Record flag: the slot holds a live session.
pub(super) const F_LIVE: u8 = 1;
/// Record flag: established (assured); never early-dropped.
pub(super) const F_ASSURED: u8 = 2;
/// Record flag: the first FIN came from the reply direction.
pub(super) const F_FIN_REPLY: u8 = 4;
/// Record flag: the reply key lives in another zone than the original key, kept in the
/// side array `reply_zones` (read only when this flag is set, so a same-zone session, the
/// common case, costs its lookups nothing more).
pub(super) const F_XZONE: u8 = 8;
/// Record flag: the session waits in the change journal to be sent to a replica.
pub(super) const F_DIRTY: u8 = 16;
/// Record flag: a replica's copy of another node's session ([`SessionTable::apply`]): its
/// changes and its end are the primary's to journal, not this table's, until
/// [`SessionTable::take_over_replicas`].
pub(super) const F_REPLICA: u8 = 32;
/// Record flag: a replica copy not yet confirmed by the full resync under way
/// ([`SessionTable::begin_resync`]).
pub(super) const F_UNCONFIRMED: u8 = 64;
/// Record flag: a replica copy whose primary failed ([`SessionTable::orphan_replicas`]):
/// the first packet that reaches it here makes it this table's own. Keeps the steady path
/// off (the full path adopts it).
pub(super) const F_ORPHAN: u8 = 128;

/// A `(mask, want)` no TCP flags satisfy (`want` outside `mask`).
const NEVER: (u8, u8) = (0, 1);

/// Per session state (index: the state's number, 16 entries), what a steady packet's TCP
/// flags show under a mask, as `(mask, want)`: an established TCP session, exactly ACK of
/// SYN, FIN, RST and ACK; a UDP session that has seen both directions, an ICMP query or
/// another protocol, no flags at all (non-TCP packets carry none); every other state, never
/// (`want` outside `mask`). `steady_table_is_the_rule` checks it against the rule written
/// out.
const STEADY: [(u8, u8); 16] = {
    use crate::wire::tcp::tcp_flags::{ACK, FIN, RST, SYN};
    const NO_FLAGS: (u8, u8) = (0xff, 0);
    [
        NEVER,                        // TcpSynSent
        NEVER,                        // TcpSynRecv
        (SYN | FIN | RST | ACK, ACK), // TcpEstablished
        NEVER,                        // TcpFinWait
        NEVER,                        // TcpCloseWait
        NEVER,                        // TcpTimeWait
        NEVER,                        // TcpClosed
        NEVER,                        // UdpUnreplied
        NO_FLAGS,                     // UdpReplied
        NO_FLAGS,                     // IcmpQuery
        NO_FLAGS,                     // Other
        NEVER,                        // TcpLastAck
        NEVER,
        NEVER,
        NEVER,
        NEVER,
    ]
};

/// True if a packet with `tcp_flags` leaves a session in `state` with record `flags` exactly
/// as it is, its timeout aside: an established (assured) session of a state that only RST,
/// FIN or SYN can change, met by a segment with none of them (or any packet of a non-TCP
/// session that has seen both directions). [`state::advance`] gives the same answer, slower
/// (property-tested).
///
/// A table lookup and bitwise tests, no branch: TCP and UDP sessions arrive in no
/// predictable order, and a branch on the state mispredicts for a share of all packets
/// (the caller's one branch on the outcome is nearly always taken).
#[inline(always)]
fn steady(state: u8, flags: u8, tcp_flags: u8) -> bool {
    let (mask, want) = STEADY.get(usize::from(state)).copied().unwrap_or(NEVER);
    // An orphan is never steady: its next packet takes the full path, which adopts it.
    (flags & (F_ASSURED | F_ORPHAN) == F_ASSURED) & (tcp_flags & mask == want)
}

/// Settings fixed at construction.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
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
    /// Sessions whose reply key is in another zone than the original key are allowed (see
    /// [Cross-zone sessions](super#cross-zone-sessions)); they cost 4 bytes per slot,
    /// allocated up front. Off, such an insert or reply change is refused
    /// ([`InsertError::CrossZone`], [`ReplaceError::CrossZone`]).
    pub cross_zone: bool,
    /// Change journal for a replica: how many created or changed sessions, and how many
    /// ended ones, wait at most between two drains
    /// ([`SessionTable::export_changes`](super::SessionTable::export_changes)); 0 (the
    /// default): no journal. Allocated up front (about `journal × (8 + key)` bytes; at most
    /// [`MAX_CAPACITY`]); events past it are counted ([`TableCounters::journal_lost`]) and
    /// call for a full resync ([`SessionTable::begin_resync`](super::SessionTable::begin_resync)).
    pub journal: u32,
}

impl TableConfig {
    /// Defaults for `capacity` sessions: Linux-like timeouts with 1 s granularity, 4096 wheel
    /// slots, 1024 zones, no per-zone limit beyond the capacity, early drop on, no cross-zone
    /// sessions.
    pub fn new(capacity: u32, secret: [u8; 16]) -> Self {
        Self {
            capacity,
            secret,
            timeouts: TimeoutProfile::default(),
            wheel_slots: 4096,
            max_zones: 1024,
            default_zone_quota: capacity,
            early_drop: true,
            cross_zone: false,
            journal: 0,
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
    /// The journal is longer than [`MAX_CAPACITY`].
    Journal,
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
    /// The original and reply keys are equal, zone included (e.g. a LAND packet: same
    /// address and port).
    SameKeys,
    /// A key is of the other address family, or the two keys differ in protocol.
    BadKey,
    /// The keys are in different zones and the table was built without
    /// [`TableConfig::cross_zone`].
    CrossZone,
}

/// One session for [`SessionTable::insert_batch`]: the arguments of
/// [`SessionTable::insert`] after `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewSession<V> {
    /// The flow that opens the session.
    pub original: FlowKey,
    /// The flow its replies arrive on (usually `original.reversed()`; NAT's translation),
    /// in the original's zone or another one (a cross-zone session).
    pub reply: FlowKey,
    /// The initial state.
    pub state: SessionState,
    /// The caller's value.
    pub value: V,
}

impl<V> NewSession<V> {
    /// A new session's arguments.
    pub const fn new(original: FlowKey, reply: FlowKey, state: SessionState, value: V) -> Self {
        Self {
            original,
            reply,
            state,
            value,
        }
    }
}

/// Why [`SessionTable::replace_reply`] failed. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplaceError {
    /// The handle is stale.
    Stale,
    /// The new key already indexes another session (or is the session's original key).
    KeyExists,
    /// The key is of the other family, or its protocol differs from the session's.
    BadKey,
    /// The key is in another zone than the session's and the table was built without
    /// [`TableConfig::cross_zone`].
    CrossZone,
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
impl<K: SessionKey, V: Copy + Default> super::service::KeyProbe for SessionTable<K, V> {
    fn indexed(&self, key: &FlowKey) -> bool {
        self.lookup(key).is_some()
    }
}

impl_display!(ConfigError, InsertError, ReplaceError, ZoneError);

/// A lookup result: the session and which way the packet travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hit {
    /// The session.
    pub session: SessionRef,
    /// [`Direction::Original`] if the key was the session's original key.
    pub direction: Direction,
}

/// A read-only view of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo<V> {
    /// Key of the direction that created the session.
    pub original: FlowKey,
    /// Key the reply direction is expected to carry; its zone is the reply zone, which
    /// differs from `original.zone` for a cross-zone session (the session counts in the
    /// original's zone).
    pub reply: FlowKey,
    /// Current state.
    pub state: SessionState,
    /// Established (assured): never early-dropped.
    pub established: bool,
    /// When the session expires unless refreshed (rounded up to the timer granularity).
    pub deadline: Instant,
    /// The caller's value.
    pub value: V,
    /// The node a replica's copy came from: the `origin` given to
    /// [`SessionTable::apply_from`] (0 for [`SessionTable::apply`]); 0 for this table's own
    /// sessions.
    pub origin: u8,
}

/// Table counters (monotonic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Journal events dropped because the journal was full (or cleared with the table): a
    /// replica missed them and needs a full resync.
    pub journal_lost: u64,
    /// Copies of a failed primary's sessions made this table's own by a packet
    /// ([`SessionTable::orphan_replicas`]).
    pub orphans_adopted: u64,
}

/// A zone's session count and quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Per record: the reply key's zone, valid only while the record has [`F_XZONE`].
    pub(super) reply_zones: Vec<u32>,
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
    /// Deadline ticks per state for the `now` of the last refresh.
    dl: timer::DeadlineCache,
    free: u32,
    len: u32,
    zones: Vec<Zone>,
    zone_count: u32,
    zone_shift: u32,
    counters: TableCounters,
    journal: journal::Journal<K>,
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

/// Most sessions a batch lookup takes.
const BATCH: usize = 64;

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
        if cfg.journal > MAX_CAPACITY {
            return Err(ConfigError::Journal);
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
            reply_zones: if cfg.cross_zone {
                vec![0; cap]
            } else {
                Vec::new()
            },
            emb: vec![[NIL, NIL]; cap],
            buckets: vec![Bucket::default(); usize::try_from(nbuckets).unwrap_or(0)],
            nbuckets,
            idx_mask,
            tag_mask: !idx_mask,
            wheel: Vec::with_capacity(w + 1),
            occupied: vec![0; w.div_ceil(64)],
            cursor: 0,
            gran: g,
            dl: timer::DeadlineCache::default(),
            free: 0,
            len: 0,
            zones: vec![Zone::default(); zslots],
            zone_count: 0,
            zone_shift: 64 - zslots.trailing_zeros(),
            counters: TableCounters::default(),
            journal: journal::Journal::new(cfg.journal),
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
        self.journal_reset();
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
            + self.reply_zones.capacity() * size_of::<u32>()
            + self.emb.capacity() * size_of::<[u32; 2]>()
            + self.buckets.capacity() * size_of::<Bucket>()
            + self.wheel.capacity() * size_of::<[u32; 2]>()
            + self.occupied.capacity() * size_of::<u64>()
            + self.zones.capacity() * size_of::<Zone>()
            + self.journal.allocated_bytes()
            + size_of::<Self>()
    }

    /// The session `key` belongs to and the packet's direction.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<Hit> {
        let k = K::from_flow(key)?;
        let h = self.hash(&k, key.zone.0, key.proto);
        self.find(&k, key.zone.0, key.proto, h)
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

    /// The state of a live session.
    #[inline]
    pub fn state(&self, r: SessionRef) -> Option<SessionState> {
        self.rec(r).and_then(|x| SessionState::from_u8(x.state))
    }

    /// Everything about a live session (cold path).
    pub fn info(&self, r: SessionRef) -> Option<SessionInfo<V>> {
        let x = self.rec(r)?;
        Some(self.info_of(r.index, x))
    }

    /// The zone of record `idx`'s reply key (`x` is the record).
    #[inline]
    pub(super) fn reply_zone_of(&self, idx: u32, x: &Record<K, V>) -> u32 {
        if x.flags & F_XZONE == 0 {
            x.zone
        } else {
            self.reply_zones
                .get(idx as usize)
                .copied()
                .unwrap_or(x.zone)
        }
    }

    /// Everything about record `idx` (`x`).
    pub(super) fn info_of(&self, idx: u32, x: &Record<K, V>) -> SessionInfo<V> {
        SessionInfo {
            original: x.keys[0].to_flow(ZoneId(x.zone), x.proto),
            reply: x.keys[1].to_flow(ZoneId(self.reply_zone_of(idx, x)), x.proto),
            state: SessionState::from_u8(x.state).unwrap_or(SessionState::Other),
            established: x.flags & F_ASSURED != 0,
            deadline: self.tick_instant(self.unwrap_tick(x.deadline)),
            value: x.value,
            origin: self.origin_of(idx, x.flags),
        }
    }

    // ----- insert / replace / remove ------------------------------------------------------

    /// Creates a session indexed by `original` and `reply`, both or neither, in `state`,
    /// expiring `timeout(state)` after `now` unless refreshed.
    ///
    /// `reply` may be in another zone than `original` (a cross-zone session, e.g. a private
    /// endpoint whose provider answers in its own zone): the reply direction is then found by
    /// lookups in `reply.zone`, and only there. The session counts against `original.zone`'s
    /// quota and is early-dropped only by that zone.
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
        let zones = [original.zone.0, reply.zone.0];
        let proto = original.proto;
        let ho = self.hash(&ko, zones[0], proto);
        let hr = self.hash(&kr, zones[1], proto);
        // Both home buckets load in parallel rather than one probe after the other.
        self.prefetch_home(ho);
        self.prefetch_home(hr);
        self.insert_hashed(
            now,
            [ko, kr],
            [ho, hr],
            zones,
            proto,
            state,
            value,
            Some(&mut |_: &SessionInfo<V>| {}),
        )
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
    ///         NewSession::new(k, k.reversed(), SessionState::UdpUnreplied, 7)
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
                    let proto = n.original.proto;
                    let h = [
                        self.hash(&ko, n.original.zone.0, proto),
                        self.hash(&kr, n.reply.zone.0, proto),
                    ];
                    self.prefetch_home(h[0]);
                    self.prefetch_home(h[1]);
                    ([ko, kr], h)
                });
            }
            for ((n, p), o) in new.iter().zip(prepared).zip(out.iter_mut()) {
                *o = p.and_then(|(keys, h)| {
                    let zones = [n.original.zone.0, n.reply.zone.0];
                    let proto = n.original.proto;
                    self.insert_hashed(
                        now,
                        keys,
                        h,
                        zones,
                        proto,
                        n.state,
                        n.value,
                        Some(&mut |_: &SessionInfo<V>| {}),
                    )
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
        if original.proto != reply.proto {
            return Err(InsertError::BadKey);
        }
        if ko == kr && original.zone == reply.zone {
            return Err(InsertError::SameKeys);
        }
        Ok((ko, kr))
    }

    /// [`Self::insert`] once the keys are checked and hashed (`keys`, `hashes` and `zones`:
    /// original, reply).
    #[expect(
        clippy::too_many_arguments,
        reason = "one new session's keys, hashes and fields"
    )]
    #[inline(always)]
    fn insert_hashed(
        &mut self,
        now: Instant,
        keys: [K; 2],
        hashes: [u64; 2],
        [zone, reply_zone]: [u32; 2],
        proto: u8,
        state: SessionState,
        value: V,
        on_evict: Option<&mut impl FnMut(&SessionInfo<V>)>,
    ) -> Result<SessionRef, InsertError> {
        let ([ko, kr], [ho, hr]) = (keys, hashes);
        if zone != reply_zone && !self.cfg.cross_zone {
            return Err(InsertError::CrossZone);
        }
        if self.find(&ko, zone, proto, ho).is_some()
            || self.find(&kr, reply_zone, proto, hr).is_some()
        {
            return Err(InsertError::KeyExists);
        }
        // Without `on_evict` (a replica applying its primary's session, which the primary
        // admitted already) no quota applies and nothing is evicted: only a free slot.
        if let Some(on_evict) = on_evict {
            self.admit(zone, on_evict)?;
        }
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
        let cross = zone != reply_zone;
        r.flags = F_LIVE | if cross { F_XZONE } else { 0 };
        r.value = value;
        let generation = r.generation;
        if cross && let Some(z) = self.reply_zones.get_mut(idx as usize) {
            *z = reply_zone;
        }
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
        self.journal_mark(idx);
        Ok(SessionRef::new(K::FAMILY, idx, generation))
    }

    /// Points the session's reply direction at `reply` (e.g. after NAT chose a translation),
    /// atomically: the old reply key stops matching as the new one starts. `reply` may be in
    /// another zone than the session's original key (see [`Self::insert`]).
    ///
    /// # Errors
    /// [`ReplaceError`]; the table is unchanged.
    pub fn replace_reply(&mut self, r: SessionRef, reply: &FlowKey) -> Result<(), ReplaceError> {
        let Some(x) = self.rec(r) else {
            return Err(ReplaceError::Stale);
        };
        let (zone, proto, old) = (x.zone, x.proto, x.keys[1]);
        let old_zone = self.reply_zone_of(r.index, x);
        let Some(kr) = K::from_flow(reply) else {
            return Err(ReplaceError::BadKey);
        };
        let new_zone = reply.zone.0;
        if reply.proto != proto {
            return Err(ReplaceError::BadKey);
        }
        if kr == old && new_zone == old_zone {
            return Ok(());
        }
        if new_zone != zone && !self.cfg.cross_zone {
            return Err(ReplaceError::CrossZone);
        }
        let h = self.hash(&kr, new_zone, proto);
        if self.find(&kr, new_zone, proto, h).is_some() {
            return Err(ReplaceError::KeyExists);
        }
        let ho = self.hash(&old, old_zone, proto);
        self.index_remove(ho, r.index);
        self.index_insert(h, r.index);
        if let Some(x) = self.recs.get_mut(r.index as usize) {
            x.keys[1] = kr;
            x.flags = (x.flags & !F_XZONE) | if new_zone == zone { 0 } else { F_XZONE };
        }
        if let Some(z) = self.reply_zones.get_mut(r.index as usize) {
            *z = new_zone;
        }
        self.journal_mark(r.index);
        Ok(())
    }

    /// Removes a live session; returns its value, or `None` for a stale handle.
    pub fn remove(&mut self, r: SessionRef) -> Option<V> {
        let v = self.rec(r)?.value;
        self.remove_idx(r.index);
        self.counters.removed += 1;
        Some(v)
    }

    /// [`Self::remove`], returning everything about the session (for the stage's services).
    pub(in crate::conntrack) fn remove_info(&mut self, r: SessionRef) -> Option<SessionInfo<V>> {
        let info = self.info(r)?;
        self.remove_idx(r.index);
        self.counters.removed += 1;
        Some(info)
    }

    /// The hash of `original.reversed()` in this table, its home bucket prefetched: what
    /// [`Self::insert_new`] needs for the usual reply key, computed for every miss of a batch
    /// before the first insert so that the inserts' memory accesses overlap (the mechanism
    /// of [`Self::insert_batch`]).
    #[inline]
    pub(in crate::conntrack) fn prepare_insert(&self, original: &FlowKey) -> u64 {
        let Some(k) = K::from_flow(original) else {
            return 0;
        };
        let h = self.hash(&k.reversed(), original.zone.0, original.proto);
        self.prefetch_home(h);
        h
    }

    /// Creates a session for the conntrack stage: like [`Self::insert`], with the hashes of
    /// the original key (from the batch lookup) and of its reverse ([`Self::prepare_insert`])
    /// already known, and `on_evict` told about a session early drop evicts to make room.
    /// Returns the handle and the reply key's hash.
    #[expect(
        clippy::too_many_arguments,
        reason = "one new session's keys and fields"
    )]
    #[inline]
    pub(in crate::conntrack) fn insert_new(
        &mut self,
        now: Instant,
        original: &FlowKey,
        reply: &FlowKey,
        (original_hash, reversed_hash): (u64, Option<u64>),
        state: SessionState,
        value: V,
        mut on_evict: impl FnMut(&SessionInfo<V>),
    ) -> Result<(SessionRef, u64), InsertError> {
        let (ko, kr) = Self::insert_keys(original, reply)?;
        let zones = [original.zone.0, reply.zone.0];
        let proto = original.proto;
        // The reverse key's hash was computed (and its bucket prefetched) before the batch's
        // sequential pass; a service that chose another reply key costs one more hash.
        let hr = if let Some(h) = reversed_hash
            && *reply == original.reversed()
        {
            h
        } else {
            let h = self.hash(&kr, zones[1], proto);
            self.prefetch_home(h);
            h
        };
        let keys = [ko, kr];
        let hashes = [original_hash, hr];
        self.insert_hashed(
            now,
            keys,
            hashes,
            zones,
            proto,
            state,
            value,
            Some(&mut on_evict),
        )
        .map(|r| (r, hr))
    }

    /// The fast path of [`Self::track_value`], for the packets most sessions see: if `r` is
    /// live and a packet with `tcp_flags` leaves it as it is, its timeout aside (`steady`),
    /// runs `f(value)` and, when `f` returns `(true, _)`, refreshes the session from `now`,
    /// exactly as `track_value` would; returns what `f` returned. `None` (`f` not run,
    /// nothing changed) for a stale handle or a packet the full tracker must see.
    #[inline(always)]
    pub(in crate::conntrack) fn track_steady<R>(
        &mut self,
        r: SessionRef,
        now: Instant,
        tcp_flags: u8,
        f: impl FnOnce(&mut V) -> (bool, R),
    ) -> Option<R> {
        // One borrow of the record for the whole refresh: the deadline cache is a field of
        // its own.
        let x = self.recs.get_mut(r.index as usize).filter(|x| {
            x.flags & F_LIVE != 0 && x.generation == r.generation && r.family == K::FAMILY
        })?;
        if !steady(x.state, x.flags, tcp_flags) {
            return None;
        }
        let d = self.dl.tick(now, x.state, &self.cfg.timeouts, self.gran);
        let (refresh, out) = f(&mut x.value);
        if refresh {
            let old = x.deadline;
            x.deadline = d;
            if d.wrapping_sub(old).cast_signed() < 0 {
                self.timer_unlink(r.index);
                self.timer_link(self.slot_for(d), r.index);
            }
        }
        Some(out)
    }

    /// [`Self::track`], then the session's value, writable: `None` as `track` gives it.
    #[inline(always)]
    pub(in crate::conntrack) fn track_value(
        &mut self,
        r: SessionRef,
        now: Instant,
        direction: Direction,
        tcp_flags: u8,
    ) -> Option<&mut V> {
        let idx = r.index as usize;
        let x = self.rec(r)?;
        let flags = x.flags;
        if steady(x.state, flags, tcp_flags) {
            // Most packets: an established session stays as it is; only the timeout moves.
            let state = SessionState::from_u8(x.state).unwrap_or(SessionState::Other);
            let d = self.deadline_tick(now, state);
            let x = self.recs.get_mut(idx)?;
            let old = x.deadline;
            x.deadline = d;
            if d.wrapping_sub(old).cast_signed() < 0 {
                self.timer_unlink(r.index);
                self.timer_link(self.slot_for(d), r.index);
            }
            return self.recs.get_mut(idx).map(|x| &mut x.value);
        }
        // An orphan (never steady) becomes this table's own at its first packet here.
        let x = if flags & F_ORPHAN != 0 {
            self.adopt_orphan(r.index);
            self.rec(r)?
        } else {
            x
        };
        let flags = x.flags;
        let s = SessionState::from_u8(x.state).unwrap_or(SessionState::Other);
        let t = state::advance(
            s,
            flags & F_ASSURED != 0,
            flags & F_FIN_REPLY != 0,
            direction,
            tcp_flags,
        )?;
        if t.assured && flags & F_ASSURED == 0 {
            // Rare: the session becomes established (leaves the early-drop list).
            self.track(r, now, direction, tcp_flags)?;
            return self.recs.get_mut(idx).map(|x| &mut x.value);
        }
        let d = self.deadline_tick(now, t.state);
        let x = self.recs.get_mut(idx)?;
        x.flags = (flags & !F_FIN_REPLY) | if t.fin_reply { F_FIN_REPLY } else { 0 };
        let changed = x.state != t.state as u8 || x.flags != flags;
        x.state = t.state as u8;
        let old = x.deadline;
        x.deadline = d;
        if changed {
            self.journal_mark(r.index);
        }
        // A later deadline stays filed where it is (the sweep re-files it); an earlier one
        // (e.g. RST) must move so that it is swept in time.
        if d.wrapping_sub(old).cast_signed() < 0 {
            self.timer_unlink(r.index);
            self.timer_link(self.slot_for(d), r.index);
        }
        self.recs.get_mut(idx).map(|x| &mut x.value)
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
        let reply_zone = self.reply_zone_of(idx, x);
        self.journal_end(keys, zone, proto, flags);
        let [ko, kr] = keys;
        let ho = self.hash(&ko, zone, proto);
        let hr = self.hash(&kr, reply_zone, proto);
        // Both home buckets and both timer neighbours are random lines: start loading all
        // four before the first is needed, so that they arrive together rather than in turn.
        self.prefetch_home(ho);
        self.prefetch_home(hr);
        self.prefetch_timer_neighbours(idx);
        self.index_remove(ho, idx);
        self.index_remove(hr, idx);
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
        let was = x.flags & F_ASSURED != 0;
        let changed = x.state != state as u8 || (established && !was);
        x.state = state as u8;
        if changed {
            self.journal_mark(r.index);
        }
        let Some(x) = self.rec_mut(r) else {
            return false;
        };
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
        let mut x = self.rec(r)?;
        if x.flags & F_ORPHAN != 0 {
            self.adopt_orphan(r.index);
            x = self.rec(r)?;
        }
        let s = SessionState::from_u8(x.state).unwrap_or(SessionState::Other);
        let t = state::advance(
            s,
            x.flags & F_ASSURED != 0,
            x.flags & F_FIN_REPLY != 0,
            direction,
            tcp_flags,
        )?;
        let newly_assured = t.assured && x.flags & F_ASSURED == 0;
        let mut changed = false;
        if let Some(x) = self.recs.get_mut(r.index as usize) {
            let flags = (x.flags & !F_FIN_REPLY) | if t.fin_reply { F_FIN_REPLY } else { 0 };
            changed = x.flags != flags || x.state != t.state as u8;
            x.flags = flags;
            x.state = t.state as u8;
        }
        if changed {
            self.journal_mark(r.index);
        }
        if newly_assured {
            self.set_state(r, now, t.state, true);
        } else {
            let d = self.deadline_tick(now, t.state);
            self.set_deadline(r.index, d);
        }
        Some(t.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{V4Key, V6Key};
    use crate::flow::proto;

    pub(super) fn k(i: u32) -> FlowKey {
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
        /// The steady-state shortcut of `track_value` agrees with the full tracker.
        #[test]
        fn steady_packets_change_nothing_but_the_timeout(
            si in 0usize..SessionState::ALL.len(), flags in 0u8..8, tcp in proptest::prelude::any::<u8>(), reply: bool,
        ) {
            let s = SessionState::ALL[si];
            let tcp = if s.is_tcp() { tcp } else { 0 };
            if steady(s as u8, flags, tcp) {
                let dir = if reply { Direction::Reply } else { Direction::Original };
                let t = state::advance(s, flags & F_ASSURED != 0, flags & F_FIN_REPLY != 0, dir, tcp);
                let t = t.unwrap();
                proptest::prop_assert_eq!(t.state, s);
                proptest::prop_assert!(t.assured);
                proptest::prop_assert_eq!(t.fin_reply, flags & F_FIN_REPLY != 0);
            }
        }
    }

    /// The table-driven `steady` is the rule it encodes, for every state number, record
    /// flags and TCP flags.
    #[test]
    fn steady_table_is_the_rule() {
        use crate::wire::tcp::tcp_flags::{ACK, FIN, RST, SYN};
        let rule = |state: u8, flags: u8, tcp: u8| {
            let plain_ack = tcp & (SYN | FIN | RST) == 0 && tcp & ACK != 0;
            let other = [
                SessionState::UdpReplied,
                SessionState::IcmpQuery,
                SessionState::Other,
            ]
            .iter()
            .any(|&s| s as u8 == state);
            flags & F_ASSURED != 0
                && ((state == SessionState::TcpEstablished as u8 && plain_ack)
                    || (other && tcp == 0))
        };
        for state in 0..=u8::MAX {
            for flags in 0..16 {
                for tcp in 0..=u8::MAX {
                    assert_eq!(steady(state, flags, tcp), rule(state, flags, tcp));
                }
            }
        }
    }

    #[test]
    fn records_are_whole_cache_lines() {
        assert_eq!(core::mem::size_of::<Record<V4Key, [u8; 16]>>(), 64);
        assert_eq!(core::mem::align_of::<Record<V4Key, [u8; 16]>>(), 64);
        assert_eq!(core::mem::size_of::<Record<V6Key, [u8; 16]>>(), 128);
        assert_eq!(core::mem::align_of::<Record<V6Key, [u8; 16]>>(), 64);
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

    fn zoned(mut k: FlowKey, zone: u32) -> FlowKey {
        k.zone = ZoneId(zone);
        k
    }

    /// A private-endpoint-like session: the consumer's flow in zone 1, the reply key (the
    /// provider's view) in zone 2.
    fn cross() -> (FlowKey, FlowKey) {
        let o = FlowKey::v4(
            ZoneId(1),
            [10, 0, 0, 5],
            [10, 0, 0, 9],
            proto::TCP,
            40000,
            443,
        );
        let r = FlowKey::v4(
            ZoneId(2),
            [10, 9, 0, 1],
            [10, 9, 0, 200],
            proto::TCP,
            8443,
            1025,
        );
        (o, r)
    }

    fn cross_zone(capacity: u32) -> TableConfig {
        let mut cfg = TableConfig::new(capacity, [3; 16]);
        cfg.cross_zone = true;
        cfg
    }

    #[test]
    fn without_cross_zone_a_reply_key_in_another_zone_is_refused_and_nothing_is_allocated() {
        let mut t: SessionTable<V4Key, u32> =
            SessionTable::new(TableConfig::new(100, [3; 16])).unwrap();
        let with: SessionTable<V4Key, u32> = SessionTable::new(cross_zone(100)).unwrap();
        assert_eq!(with.allocated_bytes() - t.allocated_bytes(), 100 * 4);
        let now = Instant::from_nanos(1);
        let o = FlowKey::v4(ZoneId(1), [10, 0, 0, 1], [10, 0, 0, 2], proto::UDP, 1, 2);
        let mut r = o.reversed();
        r.zone = ZoneId(2);
        assert_eq!(
            t.insert(now, &o, &r, SessionState::UdpUnreplied, 0),
            Err(InsertError::CrossZone)
        );
        assert!(t.is_empty());
        let s = t
            .insert(now, &o, &o.reversed(), SessionState::UdpUnreplied, 0)
            .unwrap();
        assert_eq!(t.replace_reply(s, &r), Err(ReplaceError::CrossZone));
        assert_eq!(t.lookup(&o.reversed()).map(|h| h.session), Some(s));
    }

    #[test]
    fn cross_zone_session_is_found_from_both_sides_and_nowhere_else() {
        let mut t: SessionTable<V4Key, u64> = SessionTable::new(cross_zone(100)).unwrap();
        let (o, r) = cross();
        let s = t
            .insert(Instant::ZERO, &o, &r, SessionState::TcpSynSent, 7)
            .unwrap();
        assert_eq!(
            t.lookup(&o),
            Some(Hit {
                session: s,
                direction: Direction::Original
            })
        );
        assert_eq!(
            t.lookup(&r),
            Some(Hit {
                session: s,
                direction: Direction::Reply
            })
        );
        // Each key only in its own zone: not the reply key in the original's zone, not either
        // key in a third zone.
        for z in [0, 1, 2, 3] {
            for (k, own) in [(o, 1), (r, 2)] {
                let moved = zoned(k, z);
                assert_eq!(t.lookup(&moved).is_some(), z == own, "{moved}");
            }
        }
        let mut out = [None; 64];
        let keys = [o, r, zoned(r, 3), zoned(r, 1)];
        assert_eq!(t.lookup_batch(&keys, &mut out), 0b11);
        let info = t.info(s).unwrap();
        assert_eq!((info.original, info.reply), (o, r));
        // The session counts in the original's zone only.
        assert_eq!(t.zone_usage(ZoneId(1)).unwrap().sessions, 1);
        assert!(t.zone_usage(ZoneId(2)).is_none());
        // The same tuple as the reply key in the original's zone is another session's key.
        let same_tuple = zoned(r, 1);
        let s2 = t
            .insert(
                Instant::ZERO,
                &same_tuple,
                &same_tuple.reversed(),
                SessionState::Other,
                8,
            )
            .unwrap();
        assert_eq!(t.lookup(&same_tuple).unwrap().session, s2);
        assert_eq!(t.lookup(&r).unwrap().session, s);
        // Identical keys are fine in different zones; equal keys in one zone are not.
        let twin = zoned(o, 5);
        assert!(
            t.insert(
                Instant::ZERO,
                &o.reversed(),
                &twin.reversed(),
                SessionState::Other,
                9
            )
            .is_ok()
        );
        assert_eq!(
            t.insert(Instant::ZERO, &twin, &twin, SessionState::Other, 9),
            Err(InsertError::SameKeys)
        );
        // A key of the existing cross-zone session conflicts only in its own zone.
        let clash = FlowKey::v4(ZoneId(2), [1, 1, 1, 1], [2, 2, 2, 2], proto::TCP, 1, 2);
        assert_eq!(
            t.insert(Instant::ZERO, &clash, &r, SessionState::Other, 0),
            Err(InsertError::KeyExists)
        );
        assert_eq!(t.remove(s), Some(7));
        assert!(t.lookup(&o).is_none() && t.lookup(&r).is_none());
        assert_eq!(t.lookup(&same_tuple).unwrap().session, s2);
        // The slot is reused by a same-zone session, which must not inherit the reply zone.
        let k9 = k(9);
        let s3 = t
            .insert(Instant::ZERO, &k9, &k9.reversed(), SessionState::Other, 1)
            .unwrap();
        assert_eq!(s3.index, s.index);
        assert_eq!(t.lookup(&k9.reversed()).unwrap().session, s3);
        assert_eq!(t.info(s3).unwrap().reply.zone, ZoneId(1));
    }

    #[test]
    fn replace_reply_moves_the_reply_between_zones() {
        let mut t: SessionTable<V4Key, u64> = SessionTable::new(cross_zone(100)).unwrap();
        let (o, r) = cross();
        let s = t
            .insert(Instant::ZERO, &o, &o.reversed(), SessionState::Other, 1)
            .unwrap();
        t.replace_reply(s, &r).unwrap();
        assert!(t.lookup(&o.reversed()).is_none());
        assert_eq!(t.lookup(&r).unwrap().direction, Direction::Reply);
        assert!(t.lookup(&zoned(r, 1)).is_none());
        // Same tuple, another zone; then back to the original's zone.
        let r3 = zoned(r, 3);
        t.replace_reply(s, &r3).unwrap();
        assert!(t.lookup(&r).is_none());
        assert_eq!(t.lookup(&r3).unwrap().session, s);
        t.replace_reply(s, &o.reversed()).unwrap();
        assert!(t.lookup(&r3).is_none());
        assert_eq!(t.info(s).unwrap().reply, o.reversed());
        assert_eq!(
            t.replace_reply(s, &{
                let mut u = r;
                u.proto = proto::UDP;
                u
            }),
            Err(ReplaceError::BadKey)
        );
        assert_eq!(t.replace_reply(s, &o), Err(ReplaceError::KeyExists));
        // The original tuple in another zone is a fine reply key.
        t.replace_reply(s, &zoned(o, 2)).unwrap();
        assert_eq!(t.remove(s), Some(1));
        assert!(t.is_empty());
    }

    #[test]
    fn cross_zone_sessions_expire_and_are_early_dropped_by_their_original_zone() {
        let mut cfg = cross_zone(4);
        cfg.timeouts.granularity = crate::time::Duration::from_secs(1);
        let mut t: SessionTable<V4Key, u64> = SessionTable::new(cfg).unwrap();
        t.set_zone_quota(ZoneId(1), 2).unwrap();
        let (o, r) = cross();
        let mk = |i: u16| {
            (
                {
                    let mut a = o;
                    a.src_port = i;
                    a
                },
                {
                    let mut b = r;
                    b.dst_port = i;
                    b
                },
            )
        };
        let mut gone = Vec::new();
        let (a0, b0) = mk(1);
        let s0 = t
            .insert(Instant::ZERO, &a0, &b0, SessionState::TcpSynSent, 0)
            .unwrap();
        let (a1, b1) = mk(2);
        t.insert(Instant::ZERO, &a1, &b1, SessionState::TcpSynSent, 1)
            .unwrap();
        // Zone 1 is at its quota: its oldest unestablished session (cross-zone) goes.
        let (a2, b2) = mk(3);
        t.insert(Instant::ZERO, &a2, &b2, SessionState::TcpSynSent, 2)
            .unwrap();
        assert!(!t.is_live(s0));
        assert!(t.lookup(&b0).is_none() && t.lookup(&a0).is_none());
        assert_eq!(t.counters().early_drops, 1);
        // Zone 2 (the replies' zone) has its own quota, untouched.
        let z2 = FlowKey::v4(ZoneId(2), [9, 9, 9, 9], [8, 8, 8, 8], proto::UDP, 1, 2);
        t.insert(
            Instant::ZERO,
            &z2,
            &z2.reversed(),
            SessionState::UdpUnreplied,
            3,
        )
        .unwrap();
        assert_eq!(t.zone_usage(ZoneId(1)).unwrap().sessions, 2);
        assert_eq!(t.zone_usage(ZoneId(2)).unwrap().sessions, 1);
        let later = Instant::ZERO + crate::time::Duration::from_secs(3600);
        t.handle_timeout_with(later, usize::MAX, |s| gone.push((s.original, s.reply)));
        assert!(t.is_empty());
        assert!(gone.contains(&(a1, b1)) && gone.contains(&(a2, b2)));
        for key in [a1, b1, a2, b2, z2] {
            assert!(t.lookup(&key).is_none());
        }
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
}
