//! The overlay mapping cache: (VNI, inner IP) → the underlay host that holds that address.
//!
//! Before a host sends to a virtual IP it must know which physical host holds it, and a
//! receiver checks that a packet's outer source really hosts its inner source. The cache
//! holds what a mapping service answered, learns on demand, and never talks to the service
//! itself (sans-IO):
//!
//! 1. [`MappingCache::lookup`] (encap) or [`MappingCache::check_source`] (decap) on the hot
//!    path. A miss inserts a *pending* entry and queues one query; the packet follows the
//!    caller's default path (e.g. a gateway) meanwhile.
//! 2. [`MappingCache::poll_queries`] hands out queued queries, up to [`QUERY_BATCH`] per
//!    request (several per round trip, like Achelous's route sync); the caller sends them.
//! 3. [`MappingCache::handle_answers`] stores the answers (`None` host: no such address,
//!    remembered for `negative_ttl`). Answers for keys the cache never asked about are
//!    ignored, so a resolver cannot be used to fill it.
//! 4. [`MappingCache::poll_timeout`] / [`MappingCache::handle_timeout`]: entries older than
//!    `ttl` are revalidated (queried again while still used), dropped when unconfirmed for
//!    `max_stale` more, and unanswered queries are re-sent after `query_timeout`; each call
//!    looks at no more than `budget` slots. A stage holding the cache forwards these as its
//!    [`StageControl`](nf_core::StageControl) timers.
//!
//! Capacity is fixed at construction: a set-associative table of 8-way buckets, keyed with
//! SipHash so an outsider cannot aim keys at one bucket. A new key replaces, in its bucket,
//! an empty slot, else an expired one, else the least recently confirmed; a pending slot is
//! replaced only if nothing else is.
//!
//! ```
//! use core::net::{IpAddr, Ipv4Addr};
//! use nf_tunnel::mapping::{Answer, Lookup, MappingCache, MappingConfig};
//! use nf_core::{Duration, Instant};
//! let vm: IpAddr = Ipv4Addr::new(10, 0, 0, 7).into();
//! let host: IpAddr = Ipv4Addr::new(192, 0, 2, 20).into();
//! let mut cache = MappingCache::new(MappingConfig::new(1024, *b"mapping hash key"));
//! let t0 = Instant::ZERO;
//! assert_eq!(cache.lookup(t0, 42, vm), Lookup::Miss); // queued a query
//! let batch = cache.poll_queries().unwrap();
//! assert_eq!(batch.as_slice().len(), 1);
//! cache.handle_answers(t0, &[Answer { vni: 42, addr: vm, host: Some(host) }]);
//! assert_eq!(cache.lookup(t0, 42, vm), Lookup::Host(host));
//! ```

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::{Duration, FlowHasher, Instant};

/// Slots per bucket.
pub const WAYS: usize = 8;
/// Most queries handed out by one [`MappingCache::poll_queries`].
pub const QUERY_BATCH: usize = 32;

/// Settings of a [`MappingCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingConfig {
    /// Entries held (rounded up to a multiple of [`WAYS`], at least one bucket).
    pub capacity: usize,
    /// Age after which an entry is revalidated.
    pub ttl: Duration,
    /// How long past `ttl` an unconfirmed entry is still used before it is dropped.
    pub max_stale: Duration,
    /// How long a "no such address" answer is remembered.
    pub negative_ttl: Duration,
    /// When an unanswered query is sent again.
    pub query_timeout: Duration,
    /// Queries that may wait for [`MappingCache::poll_queries`].
    pub max_queued: usize,
    /// SipHash key for bucket selection.
    pub hash_key: [u8; 16],
}

impl MappingConfig {
    /// Defaults: TTL 60 s, 30 s of staleness, negative TTL 5 s, query timeout 1 s, 1024
    /// queued queries.
    pub const fn new(capacity: usize, hash_key: [u8; 16]) -> Self {
        Self {
            capacity,
            ttl: Duration::from_secs(60),
            max_stale: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            query_timeout: Duration::from_secs(1),
            max_queued: 1024,
            hash_key,
        }
    }
}

/// A question for the mapping service: which host holds `addr` in `vni`?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    /// Virtual network.
    pub vni: u32,
    /// Inner (virtual) address.
    pub addr: IpAddr,
}

/// The mapping service's answer to a [`Query`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Answer {
    /// Virtual network.
    pub vni: u32,
    /// Inner (virtual) address.
    pub addr: IpAddr,
    /// The underlay host, or `None`: no such address.
    pub host: Option<IpAddr>,
}

/// Up to [`QUERY_BATCH`] queries for one request to the mapping service.
#[derive(Clone, Copy, Debug)]
pub struct QueryBatch {
    queries: [Query; QUERY_BATCH],
    len: usize,
}

impl QueryBatch {
    /// The queries.
    pub fn as_slice(&self) -> &[Query] {
        self.queries.get(..self.len).unwrap_or(&[])
    }
}

/// Result of [`MappingCache::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The host that holds the address.
    Host(IpAddr),
    /// Not known (yet): use the default path.
    Miss,
}

/// Result of [`MappingCache::check_source`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceCheck {
    /// The outer source is the host mapped for the inner source.
    Valid,
    /// Another host (or no host) holds the inner source: a spoofed packet.
    Spoofed,
    /// Not known yet (a query is queued).
    Unknown,
}

/// Counters of a [`MappingCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that were not.
    pub misses: u64,
    /// Queries queued (first queries, revalidations and retries).
    pub queries: u64,
    /// Queries not queued because the queue was full (retried later).
    pub queue_full: u64,
    /// Live entries replaced to make room.
    pub evictions: u64,
    /// Entries dropped after `max_stale` without confirmation.
    pub expired: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Empty,
    Pending,
    Resolved,
    Negative,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: State,
    vni: u32,
    addr: IpAddr,
    host: IpAddr,
    /// When the answer was stored (Resolved/Negative) or the entry created (Pending).
    confirmed: Instant,
    /// When a query for it was last queued, if one is outstanding.
    queried: Option<Instant>,
}

const EMPTY: Slot = Slot {
    state: State::Empty,
    vni: 0,
    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    confirmed: Instant::ZERO,
    queried: None,
};

/// The overlay mapping cache (see the module docs for the call order).
#[derive(Clone, Debug)]
pub struct MappingCache {
    config: MappingConfig,
    hasher: FlowHasher,
    slots: Vec<Slot>,
    buckets: u64,
    queue: VecDeque<Query>,
    cursor: usize,
    next_scan: Option<Instant>,
    stats: MappingStats,
}

impl MappingCache {
    /// An empty cache; all memory is allocated here.
    pub fn new(config: MappingConfig) -> Self {
        let buckets = config.capacity.div_ceil(WAYS).max(1);
        Self {
            hasher: FlowHasher::new(config.hash_key),
            slots: vec![EMPTY; buckets * WAYS],
            buckets: buckets as u64,
            queue: VecDeque::with_capacity(config.max_queued),
            cursor: 0,
            next_scan: None,
            stats: MappingStats::default(),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &MappingConfig {
        &self.config
    }

    /// Entries the table holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The counters.
    pub fn stats(&self) -> &MappingStats {
        &self.stats
    }

    /// Calls `f(stage, counter, value)` for every [`MappingStats`] field, named `mapping_`
    /// and the field (`mapping_hits`, ...), for the stage named `stage` that holds the cache
    /// (the same visitor as [`StageControl::visit_counters`]).
    ///
    /// [`StageControl::visit_counters`]: nf_core::StageControl::visit_counters
    pub fn visit_counters(
        &self,
        stage: &'static str,
        f: &mut dyn FnMut(&'static str, &'static str, u64),
    ) {
        let s = &self.stats;
        f(stage, "mapping_hits", s.hits);
        f(stage, "mapping_misses", s.misses);
        f(stage, "mapping_queries", s.queries);
        f(stage, "mapping_queue_full", s.queue_full);
        f(stage, "mapping_evictions", s.evictions);
        f(stage, "mapping_expired", s.expired);
    }

    /// Live (resolved or negative) entries; a cold-path count.
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, State::Resolved | State::Negative))
            .count()
    }

    /// True if no entry is resolved or negative.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host for `addr` in `vni`, or a miss (which queues a query and, for a new key,
    /// inserts a pending entry). An entry older than `ttl` is still returned and is queued
    /// for revalidation.
    pub fn lookup(&mut self, now: Instant, vni: u32, addr: IpAddr) -> Lookup {
        match self.resolve(now, vni, addr) {
            Some(Some(h)) => Lookup::Host(h),
            _ => Lookup::Miss,
        }
    }

    /// Checks that `outer_src` is the host mapped for the inner source `inner_src`.
    pub fn check_source(
        &mut self,
        now: Instant,
        vni: u32,
        inner_src: IpAddr,
        outer_src: IpAddr,
    ) -> SourceCheck {
        match self.resolve(now, vni, inner_src) {
            Some(Some(h)) if h == outer_src => SourceCheck::Valid,
            Some(_) => SourceCheck::Spoofed,
            None => SourceCheck::Unknown,
        }
    }

    /// Stores a mapping learned elsewhere (static configuration), as if answered at `now`.
    /// Returns false if the bucket had no replaceable slot.
    pub fn insert(&mut self, now: Instant, vni: u32, addr: IpAddr, host: Option<IpAddr>) -> bool {
        let i = match self.find(vni, addr) {
            Some(i) => i,
            None => match self.victim(now, vni, addr) {
                Some(i) => i,
                None => return false,
            },
        };
        self.store(i, now, vni, addr, host);
        true
    }

    /// Queued queries, up to [`QUERY_BATCH`]; `None` when there are none.
    pub fn poll_queries(&mut self) -> Option<QueryBatch> {
        if self.queue.is_empty() {
            return None;
        }
        let mut b = QueryBatch {
            queries: [Query {
                vni: 0,
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            }; QUERY_BATCH],
            len: 0,
        };
        for q in b.queries.iter_mut() {
            match self.queue.pop_front() {
                Some(x) => {
                    *q = x;
                    b.len += 1;
                }
                None => break,
            }
        }
        Some(b)
    }

    /// Stores the mapping service's answers (unsolicited ones are ignored).
    pub fn handle_answers(&mut self, now: Instant, answers: &[Answer]) {
        for a in answers {
            if let Some(i) = self.find(a.vni, a.addr) {
                self.store(i, now, a.vni, a.addr, a.host);
            }
        }
        self.arm(now);
    }

    /// When [`MappingCache::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_scan
    }

    /// Revalidates, retries and expires entries, examining at most `budget` slots from
    /// where the previous call stopped; returns the slots examined. Idempotent for a given
    /// `now`.
    pub fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        let n = self.slots.len();
        let work = budget.min(n);
        for _ in 0..work {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            let Some(s) = self.slots.get(i).copied() else {
                continue;
            };
            let age = now.saturating_since(s.confirmed);
            let c = &self.config;
            match s.state {
                State::Empty => {}
                State::Negative if age > c.negative_ttl => self.clear(i),
                State::Negative => {}
                State::Resolved | State::Pending if age > sum(c.ttl, c.max_stale) => {
                    self.stats.expired += 1;
                    self.clear(i);
                }
                State::Resolved if age <= c.ttl => {}
                State::Resolved | State::Pending => self.maybe_query(i, now),
            }
        }
        self.arm(now);
        work
    }

    fn arm(&mut self, now: Instant) {
        // A full sweep of the table every ttl/4 (at least every millisecond of caller time)
        // is what keeps revalidation on schedule; the caller picks the budget.
        let step = Duration::from_nanos((self.config.ttl.as_nanos() / 4).max(1_000_000));
        self.next_scan = now.checked_add(step);
    }

    /// `Some(Some(host))` resolved, `Some(None)` negative, `None` unknown.
    fn resolve(&mut self, now: Instant, vni: u32, addr: IpAddr) -> Option<Option<IpAddr>> {
        let Some(i) = self.find(vni, addr) else {
            self.stats.misses += 1;
            if let Some(v) = self.victim(now, vni, addr) {
                if let Some(s) = self.slots.get_mut(v) {
                    *s = Slot {
                        state: State::Pending,
                        vni,
                        addr,
                        confirmed: now,
                        ..EMPTY
                    };
                }
                self.maybe_query(v, now);
                if self.next_scan.is_none() {
                    self.arm(now);
                }
            }
            return None;
        };
        let s = self.slots.get(i).copied()?;
        let age = now.saturating_since(s.confirmed);
        match s.state {
            State::Resolved => {
                self.stats.hits += 1;
                if age > self.config.ttl {
                    self.maybe_query(i, now);
                }
                Some(Some(s.host))
            }
            State::Negative if age <= self.config.negative_ttl => {
                self.stats.hits += 1;
                Some(None)
            }
            State::Negative | State::Pending | State::Empty => {
                self.stats.misses += 1;
                self.maybe_query(i, now);
                None
            }
        }
    }

    /// Queues a query for slot `i` unless one is outstanding and not timed out.
    fn maybe_query(&mut self, i: usize, now: Instant) {
        let timeout = self.config.query_timeout;
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        if let Some(t) = s.queried
            && now.saturating_since(t) <= timeout
        {
            return;
        }
        if self.queue.len() >= self.config.max_queued {
            self.stats.queue_full += 1;
            return;
        }
        s.queried = Some(now);
        self.queue.push_back(Query {
            vni: s.vni,
            addr: s.addr,
        });
        self.stats.queries += 1;
    }

    fn store(&mut self, i: usize, now: Instant, vni: u32, addr: IpAddr, host: Option<IpAddr>) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = Slot {
                state: if host.is_some() {
                    State::Resolved
                } else {
                    State::Negative
                },
                vni,
                addr,
                host: host.unwrap_or(EMPTY.host),
                confirmed: now,
                queried: None,
            };
        }
        if self.next_scan.is_none() {
            self.arm(now);
        }
    }

    fn clear(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = EMPTY;
        }
    }

    fn bucket(&self, vni: u32, addr: IpAddr) -> usize {
        let mut k = [0u8; 21];
        let (v, a) = k.split_at_mut(4);
        v.copy_from_slice(&vni.to_be_bytes());
        match addr {
            IpAddr::V4(x) => {
                if let Some(d) = a.get_mut(..4) {
                    d.copy_from_slice(&x.octets());
                }
            }
            IpAddr::V6(x) => {
                if let Some((fam, d)) = a.split_last_mut() {
                    d.copy_from_slice(&x.octets());
                    *fam = 6;
                }
            }
        }
        let h = self.hasher.hash_bytes(&k);
        ((u128::from(h) * u128::from(self.buckets)) >> 64) as usize * WAYS
    }

    fn find(&self, vni: u32, addr: IpAddr) -> Option<usize> {
        let b = self.bucket(vni, addr);
        let slots = self.slots.get(b..b + WAYS)?;
        slots
            .iter()
            .position(|s| s.state != State::Empty && s.vni == vni && s.addr == addr)
            .map(|p| b + p)
    }

    /// The slot a new key takes in its bucket.
    fn victim(&mut self, now: Instant, vni: u32, addr: IpAddr) -> Option<usize> {
        let b = self.bucket(vni, addr);
        let c = self.config;
        let slots = self.slots.get(b..b + WAYS)?;
        let rank = |s: &Slot| -> (u8, u64) {
            let age = now.saturating_since(s.confirmed);
            let expired = match s.state {
                State::Negative => age > c.negative_ttl,
                _ => age > sum(c.ttl, c.max_stale),
            };
            let class = match s.state {
                State::Empty => 0,
                _ if expired => 1,
                State::Negative | State::Resolved => 2,
                State::Pending => 3,
            };
            // Lower class first; within a class the oldest confirmation first.
            (class, s.confirmed.as_nanos())
        };
        let (p, s) = slots.iter().enumerate().min_by_key(|(_, s)| rank(s))?;
        if matches!(s.state, State::Resolved | State::Negative | State::Pending) {
            self.stats.evictions += 1;
        }
        Some(b + p)
    }
}

fn sum(a: Duration, b: Duration) -> Duration {
    Duration::from_nanos(a.as_nanos().saturating_add(b.as_nanos()))
}

/// An `IpAddr` from a 16-byte address buffer (IPv4 in the first 4 bytes when `v6` is false).
#[inline]
pub fn ip_from_raw(raw: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        let [a, b, c, d, ..] = *raw;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn v4(a: u8, b: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, a, b))
    }
    fn secs(s: u64) -> Instant {
        Instant::from_nanos(s * 1_000_000_000)
    }

    #[test]
    fn miss_queries_once_in_batches_and_answers_resolve() {
        let mut c = MappingCache::new(MappingConfig::new(4096, [1; 16]));
        for i in 0..40u8 {
            assert_eq!(c.lookup(secs(0), 1, v4(0, i)), Lookup::Miss);
            assert_eq!(c.lookup(secs(0), 1, v4(0, i)), Lookup::Miss);
        }
        assert_eq!(c.stats().queries, 40, "one query per key while outstanding");
        let b1 = c.poll_queries().unwrap();
        let b2 = c.poll_queries().unwrap();
        assert_eq!((b1.as_slice().len(), b2.as_slice().len()), (32, 8));
        assert!(c.poll_queries().is_none());
        let answers: Vec<Answer> = b1
            .as_slice()
            .iter()
            .chain(b2.as_slice())
            .map(|q| Answer {
                vni: q.vni,
                addr: q.addr,
                host: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            })
            .collect();
        c.handle_answers(secs(0), &answers);
        // Unsolicited answers do not fill the cache.
        c.handle_answers(
            secs(0),
            &[Answer {
                vni: 9,
                addr: v4(9, 9),
                host: Some(v4(6, 6)),
            }],
        );
        assert_eq!(c.len(), 40);
        let host = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(c.lookup(secs(1), 1, v4(0, 3)), Lookup::Host(host));
        assert_eq!(
            c.lookup(secs(1), 2, v4(0, 3)),
            Lookup::Miss,
            "VNI is in the key"
        );
        assert_eq!(
            c.check_source(secs(1), 1, v4(0, 3), host),
            SourceCheck::Valid
        );
        assert_eq!(
            c.check_source(secs(1), 1, v4(0, 3), v4(7, 7)),
            SourceCheck::Spoofed
        );
        assert_eq!(
            c.check_source(secs(1), 1, v4(5, 5), host),
            SourceCheck::Unknown
        );
    }

    #[test]
    fn negative_answers_and_revalidation_with_bounded_work() {
        let mut cfg = MappingConfig::new(64, [2; 16]);
        cfg.ttl = Duration::from_secs(10);
        cfg.max_stale = Duration::from_secs(5);
        let mut c = MappingCache::new(cfg);
        let host = v4(200, 1);
        assert!(c.insert(secs(0), 7, v4(1, 1), Some(host)));
        assert!(c.insert(secs(0), 7, v4(1, 2), None));
        assert_eq!(
            c.check_source(secs(1), 7, v4(1, 2), host),
            SourceCheck::Spoofed,
            "no such address: spoofed"
        );
        assert_eq!(
            c.lookup(secs(6), 7, v4(1, 2)),
            Lookup::Miss,
            "negative expired"
        );
        let _ = c.poll_queries();
        // Past the TTL: still used, and one revalidation query goes out.
        assert_eq!(c.lookup(secs(11), 7, v4(1, 1)), Lookup::Host(host));
        assert_eq!(c.lookup(secs(11), 7, v4(1, 1)), Lookup::Host(host));
        let q = c.poll_queries().unwrap();
        assert_eq!(
            q.as_slice(),
            &[Query {
                vni: 7,
                addr: v4(1, 1)
            }]
        );
        // Unanswered: the timer re-sends after the query timeout, within its budget.
        assert!(c.poll_timeout().is_some());
        for _ in 0..64 {
            c.handle_timeout(secs(13), 1);
        }
        // (the expired negative entry was cleared by the same sweep)
        assert_eq!(c.poll_queries().unwrap().as_slice().len(), 1);
        // Past ttl + max_stale unconfirmed: dropped.
        c.handle_timeout(secs(16), 64);
        assert_eq!(c.stats().expired, 1);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn capacity_is_fixed_and_eviction_prefers_old_entries() {
        let mut c = MappingCache::new(MappingConfig::new(8, [3; 16]));
        assert_eq!(c.capacity(), 8);
        for i in 0..8u8 {
            assert!(c.insert(secs(u64::from(i)), 1, v4(2, i), Some(v4(3, i))));
        }
        assert!(c.insert(secs(20), 1, v4(2, 99), Some(v4(3, 99))));
        assert_eq!(c.len(), 8);
        assert_eq!(
            c.lookup(secs(20), 1, v4(2, 0)),
            Lookup::Miss,
            "oldest evicted"
        );
        assert_eq!(c.capacity(), 8);
        let mut q = MappingCache::new(MappingConfig {
            max_queued: 2,
            ..MappingConfig::new(64, [4; 16])
        });
        for i in 0..5u8 {
            q.lookup(secs(0), 1, v4(4, i));
        }
        assert_eq!((q.stats().queries, q.stats().queue_full), (2, 3));
    }
}
