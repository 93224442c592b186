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
//!    remembered for `negative_ttl`). Answers for keys without an outstanding query are
//!    ignored (and counted), so a resolver cannot be used to fill the cache.
//! 4. [`MappingCache::poll_timeout`] / [`MappingCache::handle_timeout`]: entries older than
//!    `ttl` are revalidated (queried again while still used), dropped when unconfirmed for
//!    `max_stale` more, and unanswered queries are re-sent after `query_timeout`; each call
//!    looks at no more than `budget` slots. A stage holding the cache forwards these as its
//!    [`StageControl`](nf_core::StageControl) timers.
//!
//! Capacity is fixed at construction: a set-associative table of 8-way buckets, keyed with
//! SipHash so an outsider cannot aim keys at one bucket.
//!
//! # Tenants
//!
//! Every VNI is a tenant with a [`TenantBudget`]: at most `entries` entries (pending,
//! resolved or negative), at most `pending` of them pending, and queries to the mapping
//! service (first queries, revalidations and retries alike) at most at `rate`, a token
//! bucket in integer arithmetic on the caller's clock. Invariants:
//!
//! - **A miss never evicts another VNI's entry** that is still live (resolved, negative or
//!   pending; the one exception, below, is the shared budget's pending entries). In its
//!   bucket a new key takes an empty slot, else an expired one, else the oldest of its own
//!   VNI's entries (resolved or negative before pending); if the bucket holds only other
//!   VNIs' live entries the key is not cached (`mapping_bucket_full`).
//! - **A tenant at its quota recycles its own entries**: at `pending` pending entries its
//!   oldest pending one goes (`mapping_pending_recycled`), at `entries` entries its oldest
//!   one (`mapping_quota_recycled`).
//! - **A tenant out of query tokens caches nothing new** (`mapping_rate_limited`): the miss
//!   takes the default path and nothing is evicted; a revalidation or retry waits.
//!
//! So a VNI that sprays random destinations churns through its own budget at its own query
//! rate, and every other VNI's working set stays resolved. Quotas bound what a tenant holds;
//! its room also depends on its buckets, so keep the quotas of the tenants that are busy at
//! once well under the capacity (at half of it, a bucket full of others is rare).
//!
//! Per-tenant state has bounded memory: at most `max_tenants` VNIs are tracked one by one.
//! A VNI that finds that table full shares one further budget, `shared`
//! (`mapping_shared_budget` counts such misses). The shared budget recycles only its own
//! oldest *pending* entry, never a resolved one, since its entries belong to different VNIs;
//! at its entry quota with nothing pending it refuses (`mapping_quota_refused`). A tenant
//! with no entries whose token bucket has refilled is forgotten by the timer sweep, which
//! is exactly as if it had been tracked all along.
//!
//! ```
//! use core::net::{IpAddr, Ipv4Addr};
//! use nf_tunnel::mapping::{Answer, Lookup, MappingCache, MappingConfig, QueryRate, TenantBudget};
//! use nf_core::Instant;
//! let vm: IpAddr = Ipv4Addr::new(10, 0, 0, 7).into();
//! let host: IpAddr = Ipv4Addr::new(192, 0, 2, 20).into();
//! let config = MappingConfig::new(1024, *b"mapping hash key")
//!     .with_tenant_budget(TenantBudget {
//!         entries: 256,
//!         pending: 32,
//!         rate: QueryRate { per_second: 100, burst: 16 },
//!     })
//!     .with_max_tenants(64);
//! let mut cache = MappingCache::new(config)?;
//! let t0 = Instant::ZERO;
//! assert_eq!(cache.lookup(t0, 42, vm), Lookup::Miss); // queued a query
//! let batch = cache.poll_queries().unwrap();
//! assert_eq!(batch.as_slice().len(), 1);
//! cache.handle_answers(t0, &[Answer { vni: 42, addr: vm, host: Some(host) }]);
//! assert_eq!(cache.lookup(t0, 42, vm), Lookup::Host(host));
//! assert_eq!(cache.tenant_usage(42).map(|u| u.entries), Some(1));
//! # Ok::<(), nf_tunnel::mapping::MappingConfigError>(())
//! ```

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::{Duration, FlowHasher, Instant};

/// Slots per bucket.
pub const WAYS: usize = 8;
/// Most queries handed out by one [`MappingCache::poll_queries`].
pub const QUERY_BATCH: usize = 32;
/// Largest capacity [`MappingCache::new`] accepts.
pub const MAX_CAPACITY: usize = 1 << 26;
/// Largest `max_tenants` [`MappingCache::new`] accepts.
pub const MAX_TENANTS: u32 = 1 << 16;

/// A query rate: `per_second` on average, up to `burst` at once (a token bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryRate {
    /// Tokens added per second (at least 1).
    pub per_second: u32,
    /// Tokens the bucket holds at most, and holds when a tenant is first seen (at least 1).
    pub burst: u32,
}

/// What one tenant (VNI), or all the untracked tenants together, may hold and ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantBudget {
    /// Entries (pending, resolved or negative) held at most.
    pub entries: u32,
    /// Pending entries held at most (at most `entries`).
    pub pending: u32,
    /// Queries sent to the mapping service at most.
    pub rate: QueryRate,
}

/// Settings of a [`MappingCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// The budget of each tracked VNI.
    pub tenant: TenantBudget,
    /// VNIs tracked one by one (1 ..= [`MAX_TENANTS`]).
    pub max_tenants: u32,
    /// The one budget all VNIs beyond `max_tenants` share (`entries` may be 0: then they
    /// cache nothing).
    pub shared: TenantBudget,
}

impl MappingConfig {
    /// Defaults: TTL 60 s, 30 s of staleness, negative TTL 5 s, query timeout 1 s, 1024
    /// queued queries; 1024 tracked VNIs, each may hold the whole capacity, an eighth of it
    /// pending, and ask 1000 queries per second (bursts of 64); the VNIs beyond share a
    /// quarter of the capacity, a thirty-second of it pending, and the same query rate.
    pub const fn new(capacity: usize, hash_key: [u8; 16]) -> Self {
        let cap = if capacity > MAX_CAPACITY {
            MAX_CAPACITY as u32
        } else {
            capacity as u32
        };
        let rate = QueryRate {
            per_second: 1000,
            burst: 64,
        };
        Self {
            capacity,
            ttl: Duration::from_secs(60),
            max_stale: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            query_timeout: Duration::from_secs(1),
            max_queued: 1024,
            hash_key,
            tenant: TenantBudget {
                entries: at_least_one(cap),
                pending: at_least_one(cap / 8),
                rate,
            },
            max_tenants: 1024,
            shared: TenantBudget {
                entries: at_least_one(cap / 4),
                pending: at_least_one(cap / 32),
                rate,
            },
        }
    }

    /// Sets the revalidation age (`ttl`).
    pub const fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how long past `ttl` an unconfirmed entry is still used.
    pub const fn with_max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = max_stale;
        self
    }

    /// Sets how long a negative answer is remembered.
    pub const fn with_negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.negative_ttl = negative_ttl;
        self
    }

    /// Sets when an unanswered query is sent again.
    pub const fn with_query_timeout(mut self, query_timeout: Duration) -> Self {
        self.query_timeout = query_timeout;
        self
    }

    /// Sets how many queries may wait for [`MappingCache::poll_queries`].
    pub const fn with_max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = max_queued;
        self
    }

    /// Sets the budget of each tracked VNI.
    pub const fn with_tenant_budget(mut self, budget: TenantBudget) -> Self {
        self.tenant = budget;
        self
    }

    /// Sets how many VNIs are tracked one by one.
    pub const fn with_max_tenants(mut self, max_tenants: u32) -> Self {
        self.max_tenants = max_tenants;
        self
    }

    /// Sets the budget the VNIs beyond `max_tenants` share.
    pub const fn with_shared_budget(mut self, budget: TenantBudget) -> Self {
        self.shared = budget;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// The first setting out of range, as a [`MappingConfigError`].
    pub fn validate(&self) -> Result<(), MappingConfigError> {
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(MappingConfigError::Capacity);
        }
        let rate_ok = |r: QueryRate| r.per_second > 0 && r.burst > 0;
        let t = self.tenant;
        if t.entries == 0 || t.pending == 0 || t.pending > t.entries || !rate_ok(t.rate) {
            return Err(MappingConfigError::TenantBudget);
        }
        if self.max_tenants == 0 || self.max_tenants > MAX_TENANTS {
            return Err(MappingConfigError::MaxTenants);
        }
        let s = self.shared;
        if s.pending > s.entries || !rate_ok(s.rate) {
            return Err(MappingConfigError::SharedBudget);
        }
        Ok(())
    }

    /// The nearest valid settings: a zero capacity becomes one bucket, a zero quota or rate
    /// 1, `pending` above `entries` becomes `entries`, limits above the maximum the maximum.
    #[must_use]
    pub fn clamped(mut self) -> Self {
        self.capacity = self.capacity.clamp(1, MAX_CAPACITY);
        let rate = |r: QueryRate| QueryRate {
            per_second: r.per_second.max(1),
            burst: r.burst.max(1),
        };
        let t = &mut self.tenant;
        t.entries = t.entries.max(1);
        t.pending = t.pending.clamp(1, t.entries);
        t.rate = rate(t.rate);
        self.max_tenants = self.max_tenants.clamp(1, MAX_TENANTS);
        let s = &mut self.shared;
        s.pending = s.pending.min(s.entries);
        s.rate = rate(s.rate);
        self
    }
}

const fn at_least_one(n: u32) -> u32 {
    if n == 0 { 1 } else { n }
}

/// Why [`MappingCache::new`] rejected a [`MappingConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MappingConfigError {
    /// `capacity` is 0 or above [`MAX_CAPACITY`].
    Capacity,
    /// The tenant budget holds no entry or no pending entry, more pending entries than
    /// entries, or a zero query rate or burst.
    TenantBudget,
    /// `max_tenants` is 0 or above [`MAX_TENANTS`].
    MaxTenants,
    /// The shared budget allows more pending entries than entries, or has a zero query
    /// rate or burst.
    SharedBudget,
}

impl fmt::Display for MappingConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Capacity => "mapping cache capacity out of range",
            Self::TenantBudget => "invalid per-tenant mapping budget",
            Self::MaxTenants => "max_tenants out of range",
            Self::SharedBudget => "invalid shared mapping budget",
        })
    }
}

impl core::error::Error for MappingConfigError {}

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
    /// Not known yet (a query is queued, unless the tenant's budget said no).
    Unknown,
}

/// Counters of a [`MappingCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MappingStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that were not.
    pub misses: u64,
    /// Queries queued (first queries, revalidations and retries).
    pub queries: u64,
    /// Queries not queued because the queue was full (retried later).
    pub queue_full: u64,
    /// Live entries of the key's own VNI replaced in its bucket to make room.
    pub evictions: u64,
    /// Entries dropped after `max_stale` without confirmation (by the sweep or when their
    /// slot was taken).
    pub expired: u64,
    /// Queries not queued because the tenant had no token left: a miss caches nothing, a
    /// revalidation or retry waits.
    pub rate_limited: u64,
    /// Misses not cached because their bucket held only other VNIs' live entries.
    pub bucket_full: u64,
    /// A tenant's oldest pending entry dropped because it was at its pending quota.
    pub pending_recycled: u64,
    /// A tenant's oldest entry dropped because it was at its entry quota.
    pub quota_recycled: u64,
    /// New keys not cached because their budget was full with nothing it may recycle (the
    /// shared budget holding only resolved entries, or an entry quota of 0).
    pub quota_refused: u64,
    /// Misses charged to the shared budget because `max_tenants` VNIs were tracked.
    pub shared_budget: u64,
    /// Answers ignored: no query for that key was outstanding.
    pub unsolicited: u64,
}

/// What one tenant (or the shared budget) holds: see [`MappingCache::tenant_usage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantUsage {
    /// Entries, pending ones included.
    pub entries: u32,
    /// Pending entries.
    pub pending: u32,
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
    /// Charged to the shared budget rather than to its VNI's own.
    shared: bool,
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
    shared: false,
    vni: 0,
    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    confirmed: Instant::ZERO,
    queried: None,
};

const NIL: u32 = u32::MAX;
/// Token bucket units per query: credit is kept in query-nanoseconds per second, so that
/// refilling is one multiplication of elapsed nanoseconds by the rate.
const UNIT: u64 = 1_000_000_000;

/// An account: one tracked VNI, or the shared budget.
#[derive(Clone, Copy, Debug)]
struct Tenant {
    vni: u32,
    used: bool,
    entries: u32,
    pending: u32,
    credit: u64,
    refilled: Instant,
    /// Pending entries, oldest first: `[head, tail]` slot indices (`NIL` when none).
    pend: [u32; 2],
    /// Resolved and negative entries, oldest confirmed first.
    live: [u32; 2],
}

const VACANT: Tenant = Tenant {
    vni: 0,
    used: false,
    entries: 0,
    pending: 0,
    credit: 0,
    refilled: Instant::ZERO,
    pend: [NIL; 2],
    live: [NIL; 2],
};

/// Where a new key goes in its bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Empty(usize),
    Expired(usize),
    Own(usize),
}

impl Victim {
    fn slot(self) -> usize {
        match self {
            Self::Empty(i) | Self::Expired(i) | Self::Own(i) => i,
        }
    }
}

/// The overlay mapping cache (see the module docs for the call order and the tenant rules).
#[derive(Clone, Debug)]
pub struct MappingCache {
    hasher: FlowHasher,
    slots: Vec<Slot>,
    buckets: u64,
    /// The rest, behind a pointer: it keeps the cache small enough to sit inline in a
    /// stage's configuration.
    c: Box<Control>,
}

#[derive(Clone, Debug)]
struct Control {
    config: MappingConfig,
    /// Per slot: the previous and next slot in its tenant's list (`NIL` at the ends).
    links: Vec<[u32; 2]>,
    /// Tracked tenants: open addressing with linear probing on a keyed hash of the VNI,
    /// at most half full. The shared budget is account `tenants.len()`.
    tenants: Vec<Tenant>,
    tenant_count: u32,
    shared: Tenant,
    queue: VecDeque<Query>,
    cursor: usize,
    tenant_cursor: usize,
    next_scan: Option<Instant>,
    stats: MappingStats,
}

impl MappingCache {
    /// An empty cache; all memory is allocated here. ([`MappingConfig::clamped`] turns
    /// settings this refuses into the nearest valid ones.)
    ///
    /// # Errors
    /// [`MappingConfigError`] from [`MappingConfig::validate`].
    pub fn new(config: MappingConfig) -> Result<Self, MappingConfigError> {
        config.validate()?;
        Ok(Self::build(config))
    }

    /// The cache for valid settings.
    fn build(config: MappingConfig) -> Self {
        let buckets = config.capacity.div_ceil(WAYS).max(1);
        let tenant_slots = (config.max_tenants as usize * 2).next_power_of_two();
        Self {
            hasher: FlowHasher::new(config.hash_key),
            slots: vec![EMPTY; buckets * WAYS],
            buckets: buckets as u64,
            c: Box::new(Control {
                links: vec![[NIL; 2]; buckets * WAYS],
                tenants: vec![VACANT; tenant_slots],
                tenant_count: 0,
                shared: Tenant {
                    used: true,
                    credit: u64::from(config.shared.rate.burst) * UNIT,
                    ..VACANT
                },
                queue: VecDeque::with_capacity(config.max_queued),
                cursor: 0,
                tenant_cursor: 0,
                next_scan: None,
                stats: MappingStats::default(),
                config,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &MappingConfig {
        &self.c.config
    }

    /// Entries the table holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The counters.
    pub fn stats(&self) -> &MappingStats {
        &self.c.stats
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
        let s = &self.c.stats;
        f(stage, "mapping_hits", s.hits);
        f(stage, "mapping_misses", s.misses);
        f(stage, "mapping_queries", s.queries);
        f(stage, "mapping_queue_full", s.queue_full);
        f(stage, "mapping_evictions", s.evictions);
        f(stage, "mapping_expired", s.expired);
        f(stage, "mapping_rate_limited", s.rate_limited);
        f(stage, "mapping_bucket_full", s.bucket_full);
        f(stage, "mapping_pending_recycled", s.pending_recycled);
        f(stage, "mapping_quota_recycled", s.quota_recycled);
        f(stage, "mapping_quota_refused", s.quota_refused);
        f(stage, "mapping_shared_budget", s.shared_budget);
        f(stage, "mapping_unsolicited", s.unsolicited);
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

    /// What `vni` holds under its own budget (`None` if it is not tracked: never seen, or
    /// forgotten, or beyond `max_tenants`).
    pub fn tenant_usage(&self, vni: u32) -> Option<TenantUsage> {
        self.c.tenants.get(self.tenant_slot(vni)?).map(usage)
    }

    /// What the VNIs beyond `max_tenants` hold together.
    pub fn shared_usage(&self) -> TenantUsage {
        usage(&self.c.shared)
    }

    /// VNIs tracked one by one now.
    pub fn tracked_tenants(&self) -> usize {
        self.c.tenant_count as usize
    }

    /// The host for `addr` in `vni`, or a miss (which, within the tenant's budget, queues a
    /// query and inserts a pending entry for a new key). An entry older than `ttl` is still
    /// returned and is queued for revalidation.
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
    /// It obeys the same rules as a miss, except the query rate and pending quota. Returns
    /// false if it found no room (its bucket full of other VNIs' entries, or its budget
    /// full with nothing it may recycle).
    pub fn insert(&mut self, now: Instant, vni: u32, addr: IpAddr, host: Option<IpAddr>) -> bool {
        if let Some(i) = self.find(vni, addr) {
            self.store(i, now, host);
            return true;
        }
        let a = self.tenant_or_create(now, vni);
        let Some(i) = self.admit(now, vni, addr, a, false) else {
            return false;
        };
        let shared = self.is_shared(a);
        if let Some(s) = self.slots.get_mut(i) {
            *s = Slot {
                state: if host.is_some() {
                    State::Resolved
                } else {
                    State::Negative
                },
                shared,
                vni,
                addr,
                host: host.unwrap_or(EMPTY.host),
                confirmed: now,
                queried: None,
            };
        }
        self.link(i, a);
        if self.c.next_scan.is_none() {
            self.arm(now);
        }
        true
    }

    /// Queued queries, up to [`QUERY_BATCH`]; `None` when there are none.
    pub fn poll_queries(&mut self) -> Option<QueryBatch> {
        if self.c.queue.is_empty() {
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
            match self.c.queue.pop_front() {
                Some(x) => {
                    *q = x;
                    b.len += 1;
                }
                None => break,
            }
        }
        Some(b)
    }

    /// Stores the mapping service's answers; those for keys without an outstanding query
    /// are ignored and counted (`mapping_unsolicited`).
    pub fn handle_answers(&mut self, now: Instant, answers: &[Answer]) {
        for a in answers {
            match self.find(a.vni, a.addr) {
                Some(i) if self.slots.get(i).is_some_and(|s| s.queried.is_some()) => {
                    self.store(i, now, a.host);
                }
                _ => self.c.stats.unsolicited += 1,
            }
        }
        self.arm(now);
    }

    /// When [`MappingCache::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.c.next_scan
    }

    /// Revalidates, retries and expires entries, examining at most `budget` slots from
    /// where the previous call stopped (and one tenant record per [`WAYS`] slots, forgetting
    /// a tenant with no entries and a full token bucket); returns the slots examined.
    /// Idempotent for a given `now`.
    pub fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        let n = self.slots.len();
        let work = budget.min(n);
        for k in 0..work {
            let i = self.c.cursor;
            self.c.cursor = (self.c.cursor + 1) % n;
            if k % WAYS == 0 {
                self.sweep_tenant(now);
            }
            let Some(s) = self.slots.get(i).copied() else {
                continue;
            };
            let age = now.saturating_since(s.confirmed);
            let c = &self.c.config;
            match s.state {
                State::Empty => {}
                State::Negative if age > c.negative_ttl => self.clear(i),
                State::Negative => {}
                State::Resolved | State::Pending if age > sum(c.ttl, c.max_stale) => {
                    self.c.stats.expired += 1;
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
        let step = Duration::from_nanos((self.c.config.ttl.as_nanos() / 4).max(1_000_000));
        self.c.next_scan = now.checked_add(step);
    }

    /// `Some(Some(host))` resolved, `Some(None)` negative, `None` unknown.
    fn resolve(&mut self, now: Instant, vni: u32, addr: IpAddr) -> Option<Option<IpAddr>> {
        let Some(i) = self.find(vni, addr) else {
            self.c.stats.misses += 1;
            self.miss(now, vni, addr);
            return None;
        };
        let s = self.slots.get(i).copied()?;
        let age = now.saturating_since(s.confirmed);
        match s.state {
            State::Resolved => {
                self.c.stats.hits += 1;
                if age > self.c.config.ttl {
                    self.maybe_query(i, now);
                }
                Some(Some(s.host))
            }
            State::Negative if age <= self.c.config.negative_ttl => {
                self.c.stats.hits += 1;
                Some(None)
            }
            State::Negative | State::Pending | State::Empty => {
                self.c.stats.misses += 1;
                self.maybe_query(i, now);
                None
            }
        }
    }

    /// A new key: a pending entry and a query, if the tenant's budget allows.
    #[inline(never)]
    fn miss(&mut self, now: Instant, vni: u32, addr: IpAddr) {
        let a = self.tenant_or_create(now, vni);
        // Without a token nothing would be asked: evict nothing for it.
        if !self.has_token(a, now) {
            self.c.stats.rate_limited += 1;
            return;
        }
        let Some(i) = self.admit(now, vni, addr, a, true) else {
            return;
        };
        let shared = self.is_shared(a);
        if let Some(s) = self.slots.get_mut(i) {
            *s = Slot {
                state: State::Pending,
                shared,
                vni,
                addr,
                confirmed: now,
                ..EMPTY
            };
        }
        self.link(i, a);
        self.maybe_query(i, now);
        if self.c.next_scan.is_none() {
            self.arm(now);
        }
    }

    /// Makes room for a new key of `vni` charged to account `a`: returns the (now empty)
    /// slot it takes, having recycled one of the account's own entries if it was at a
    /// quota, or `None` (counted) if there is no room it may take.
    fn admit(
        &mut self,
        now: Instant,
        vni: u32,
        addr: IpAddr,
        a: usize,
        pending: bool,
    ) -> Option<usize> {
        let Some(v) = self.victim(now, vni, addr) else {
            self.c.stats.bucket_full += 1;
            return None;
        };
        let i = v.slot();
        let (own, own_pending) = match v {
            Victim::Empty(_) => (false, false),
            Victim::Expired(_) | Victim::Own(_) => {
                let s = self.slots.get(i)?;
                let own = self.account_of(s) == Some(a);
                (own, own && s.state == State::Pending)
            }
        };
        let budget = self.budget(a);
        let shared = self.is_shared(a);
        let t = *self.account(a)?;
        // The account's counts once the victim is gone.
        let entries = t.entries.saturating_sub(u32::from(own));
        let held_pending = t.pending.saturating_sub(u32::from(own_pending));
        let recycle = if pending && held_pending >= budget.pending {
            Some((t.pend[0], true))
        } else if entries >= budget.entries {
            let r = if shared {
                // Its entries are different VNIs': never recycle a resolved one.
                t.pend[0]
            } else {
                // The older of its oldest pending and its oldest live entry.
                let when = |x: u32| self.slots.get(x as usize).map(|s| s.confirmed);
                match (when(t.pend[0]), when(t.live[0])) {
                    (Some(p), Some(l)) if l < p => t.live[0],
                    (Some(_), _) => t.pend[0],
                    (None, _) => t.live[0],
                }
            };
            Some((r, false))
        } else {
            None
        };
        if let Some((r, _)) = recycle
            && (r == NIL || r as usize == i)
        {
            self.c.stats.quota_refused += 1;
            return None;
        }
        match v {
            Victim::Expired(_) => {
                if self
                    .slots
                    .get(i)
                    .is_some_and(|s| s.state != State::Negative)
                {
                    self.c.stats.expired += 1;
                }
            }
            Victim::Own(_) => self.c.stats.evictions += 1,
            Victim::Empty(_) => {}
        }
        self.clear(i);
        if let Some((r, pending_quota)) = recycle {
            if pending_quota {
                self.c.stats.pending_recycled += 1;
            } else {
                self.c.stats.quota_recycled += 1;
            }
            self.clear(r as usize);
        }
        Some(i)
    }

    /// The slot a new key of `vni` may take in its bucket: an empty one, else an expired
    /// one, else the oldest of its own VNI's (resolved or negative before pending).
    fn victim(&self, now: Instant, vni: u32, addr: IpAddr) -> Option<Victim> {
        let b = self.bucket(vni, addr);
        let slots = self.slots.get(b..b + WAYS)?;
        let mut best: Option<(u8, u64, usize)> = None;
        for (p, s) in slots.iter().enumerate() {
            let class = match s.state {
                State::Empty => 0,
                _ if self.expired(s, now) => 1,
                _ if s.vni != vni => continue,
                State::Negative | State::Resolved => 2,
                State::Pending => 3,
            };
            let k = (class, s.confirmed.as_nanos(), b + p);
            if best.is_none_or(|x| k < x) {
                best = Some(k);
            }
        }
        let (class, _, i) = best?;
        Some(match class {
            0 => Victim::Empty(i),
            1 => Victim::Expired(i),
            _ => Victim::Own(i),
        })
    }

    fn expired(&self, s: &Slot, now: Instant) -> bool {
        let age = now.saturating_since(s.confirmed);
        match s.state {
            State::Empty => false,
            State::Negative => age > self.c.config.negative_ttl,
            State::Pending | State::Resolved => {
                age > sum(self.c.config.ttl, self.c.config.max_stale)
            }
        }
    }

    /// Queues a query for slot `i` unless one is outstanding and not timed out, the queue
    /// is full, or its tenant has no token left.
    fn maybe_query(&mut self, i: usize, now: Instant) {
        let timeout = self.c.config.query_timeout;
        let Some(s) = self.slots.get(i).copied() else {
            return;
        };
        if let Some(t) = s.queried
            && now.saturating_since(t) <= timeout
        {
            return;
        }
        if self.c.queue.len() >= self.c.config.max_queued {
            self.c.stats.queue_full += 1;
            return;
        }
        let Some(a) = self.account_of(&s) else {
            return;
        };
        if !self.take_token(a, now) {
            self.c.stats.rate_limited += 1;
            return;
        }
        if let Some(s) = self.slots.get_mut(i) {
            s.queried = Some(now);
        }
        self.c.queue.push_back(Query {
            vni: s.vni,
            addr: s.addr,
        });
        self.c.stats.queries += 1;
    }

    /// An answer (or static entry) for the existing slot `i`.
    fn store(&mut self, i: usize, now: Instant, host: Option<IpAddr>) {
        let Some(s) = self.slots.get(i).copied() else {
            return;
        };
        let Some(a) = self.account_of(&s) else {
            return;
        };
        self.unlink(i, a);
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Slot {
                state: if host.is_some() {
                    State::Resolved
                } else {
                    State::Negative
                },
                host: host.unwrap_or(EMPTY.host),
                confirmed: now,
                queried: None,
                ..s
            };
        }
        self.link(i, a);
        if self.c.next_scan.is_none() {
            self.arm(now);
        }
    }

    fn clear(&mut self, i: usize) {
        let Some(s) = self.slots.get(i).copied() else {
            return;
        };
        if s.state != State::Empty
            && let Some(a) = self.account_of(&s)
        {
            self.unlink(i, a);
        }
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

    // --- tenants -------------------------------------------------------------------------

    fn is_shared(&self, a: usize) -> bool {
        a == self.c.tenants.len()
    }

    fn account(&self, a: usize) -> Option<&Tenant> {
        if self.is_shared(a) {
            Some(&self.c.shared)
        } else {
            self.c.tenants.get(a)
        }
    }

    fn account_mut(&mut self, a: usize) -> Option<&mut Tenant> {
        if self.is_shared(a) {
            Some(&mut self.c.shared)
        } else {
            self.c.tenants.get_mut(a)
        }
    }

    fn budget(&self, a: usize) -> TenantBudget {
        if self.is_shared(a) {
            self.c.config.shared
        } else {
            self.c.config.tenant
        }
    }

    /// The account a live slot is charged to.
    fn account_of(&self, s: &Slot) -> Option<usize> {
        if s.shared {
            Some(self.c.tenants.len())
        } else {
            self.tenant_slot(s.vni)
        }
    }

    fn tenant_home(&self, vni: u32) -> usize {
        // Keyed, so that VNIs cannot be picked to build one long probe chain.
        (self.hasher.hash_bytes(&vni.to_be_bytes()) as usize) & (self.c.tenants.len() - 1)
    }

    fn tenant_slot(&self, vni: u32) -> Option<usize> {
        let n = self.c.tenants.len();
        let mut i = self.tenant_home(vni);
        for _ in 0..n {
            let t = self.c.tenants.get(i)?;
            if !t.used {
                return None;
            }
            if t.vni == vni {
                return Some(i);
            }
            i = (i + 1) & (n - 1);
        }
        None
    }

    /// `vni`'s account, tracking it if there is room, else the shared one (counted).
    fn tenant_or_create(&mut self, now: Instant, vni: u32) -> usize {
        if let Some(a) = self.tenant_slot(vni) {
            return a;
        }
        if self.c.tenant_count < self.c.config.max_tenants {
            let n = self.c.tenants.len();
            let credit = u64::from(self.c.config.tenant.rate.burst) * UNIT;
            let mut i = self.tenant_home(vni);
            for _ in 0..n {
                if let Some(t) = self.c.tenants.get_mut(i)
                    && !t.used
                {
                    *t = Tenant {
                        vni,
                        used: true,
                        credit,
                        refilled: now,
                        ..VACANT
                    };
                    self.c.tenant_count += 1;
                    return i;
                }
                i = (i + 1) & (n - 1);
            }
        }
        self.c.stats.shared_budget += 1;
        self.c.tenants.len()
    }

    /// Looks at the next tenant record: one with no entries and a full token bucket is
    /// forgotten (tracking it again later starts it exactly where it is now).
    fn sweep_tenant(&mut self, now: Instant) {
        let n = self.c.tenants.len();
        let i = self.c.tenant_cursor;
        self.c.tenant_cursor = (i + 1) & (n - 1);
        let rate = self.c.config.tenant.rate;
        let Some(t) = self.c.tenants.get_mut(i) else {
            return;
        };
        if !t.used || t.entries != 0 {
            return;
        }
        refill(t, now, rate);
        if t.credit < u64::from(rate.burst) * UNIT {
            return;
        }
        // Backward-shift deletion keeps every probe chain unbroken.
        let mut hole = i;
        let mut j = i;
        for _ in 0..n {
            j = (j + 1) & (n - 1);
            let Some(tj) = self.c.tenants.get(j).copied() else {
                break;
            };
            if !tj.used {
                break;
            }
            let home = self.tenant_home(tj.vni);
            if j.wrapping_sub(home) & (n - 1) >= j.wrapping_sub(hole) & (n - 1) {
                if let Some(h) = self.c.tenants.get_mut(hole) {
                    *h = tj;
                }
                hole = j;
            }
        }
        if let Some(h) = self.c.tenants.get_mut(hole) {
            *h = VACANT;
        }
        self.c.tenant_count -= 1;
    }

    fn has_token(&mut self, a: usize, now: Instant) -> bool {
        let rate = self.budget(a).rate;
        self.account_mut(a).is_some_and(|t| {
            refill(t, now, rate);
            t.credit >= UNIT
        })
    }

    fn take_token(&mut self, a: usize, now: Instant) -> bool {
        let rate = self.budget(a).rate;
        self.account_mut(a).is_some_and(|t| {
            refill(t, now, rate);
            let ok = t.credit >= UNIT;
            if ok {
                t.credit -= UNIT;
            }
            ok
        })
    }

    /// Appends live slot `i` to account `a`'s list for its state and counts it.
    fn link(&mut self, i: usize, a: usize) {
        let Some(pending) = self.slots.get(i).map(|s| s.state == State::Pending) else {
            return;
        };
        let Some(t) = self.account_mut(a) else {
            return;
        };
        t.entries += 1;
        t.pending += u32::from(pending);
        let list = if pending { &mut t.pend } else { &mut t.live };
        let tail = list[1];
        list[1] = i as u32;
        if tail == NIL {
            list[0] = i as u32;
        }
        if let Some(l) = self.c.links.get_mut(i) {
            *l = [tail, NIL];
        }
        if let Some(l) = self.c.links.get_mut(tail as usize) {
            l[1] = i as u32;
        }
    }

    /// Takes live slot `i` out of account `a`'s list for its state and uncounts it.
    fn unlink(&mut self, i: usize, a: usize) {
        let Some(pending) = self.slots.get(i).map(|s| s.state == State::Pending) else {
            return;
        };
        let Some(&[p, n]) = self.c.links.get(i) else {
            return;
        };
        if let Some(l) = self.c.links.get_mut(i) {
            *l = [NIL; 2];
        }
        let Some(t) = self.account_mut(a) else {
            return;
        };
        t.entries = t.entries.saturating_sub(1);
        t.pending = t.pending.saturating_sub(u32::from(pending));
        let list = if pending { &mut t.pend } else { &mut t.live };
        if p == NIL {
            list[0] = n;
        }
        if n == NIL {
            list[1] = p;
        }
        if let Some(l) = self.c.links.get_mut(p as usize) {
            l[1] = n;
        }
        if let Some(l) = self.c.links.get_mut(n as usize) {
            l[0] = p;
        }
    }
}

fn usage(t: &Tenant) -> TenantUsage {
    TenantUsage {
        entries: t.entries,
        pending: t.pending,
    }
}

/// Adds the tokens earned since the last refill, up to the burst; time never runs back.
fn refill(t: &mut Tenant, now: Instant, rate: QueryRate) {
    let cap = u64::from(rate.burst) * UNIT;
    let earned = now
        .saturating_since(t.refilled)
        .as_nanos()
        .saturating_mul(u64::from(rate.per_second));
    t.credit = t.credit.saturating_add(earned).min(cap);
    t.refilled = t.refilled.max(now);
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
        let mut c = MappingCache::new(MappingConfig::new(4096, [1; 16])).unwrap();
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
        let mut c = MappingCache::new(cfg).unwrap();
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
        let mut c = MappingCache::new(MappingConfig::new(8, [3; 16])).unwrap();
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
        })
        .unwrap();
        for i in 0..5u8 {
            q.lookup(secs(0), 1, v4(4, i));
        }
        assert_eq!((q.stats().queries, q.stats().queue_full), (2, 3));
    }

    fn tenant_cfg(capacity: usize) -> MappingConfig {
        MappingConfig::new(capacity, [9; 16]).with_tenant_budget(TenantBudget {
            entries: 16,
            pending: 4,
            rate: QueryRate {
                per_second: 10,
                burst: 5,
            },
        })
    }

    #[test]
    fn a_miss_never_evicts_another_vnis_entries() {
        // One bucket: VNI 1 fills it, VNI 2's misses find no room and take nothing.
        let mut c = MappingCache::new(tenant_cfg(8)).unwrap();
        for i in 0..8u8 {
            assert!(c.insert(secs(0), 1, v4(1, i), Some(v4(9, i))));
        }
        for i in 0..100u8 {
            assert_eq!(c.lookup(secs(1), 2, v4(2, i)), Lookup::Miss);
        }
        assert_eq!(c.stats().bucket_full, 100);
        assert_eq!(c.stats().queries, 0, "nothing cached, nothing asked");
        for i in 0..8u8 {
            assert_eq!(c.lookup(secs(1), 1, v4(1, i)), Lookup::Host(v4(9, i)));
        }
        // Once VNI 1's entries expire, VNI 2 may take their slots.
        assert_eq!(c.lookup(secs(100), 2, v4(2, 0)), Lookup::Miss);
        assert_eq!(c.tenant_usage(2).map(|u| u.pending), Some(1));
        assert_eq!(c.stats().expired, 1);
        assert_eq!(c.tenant_usage(1).map(|u| u.entries), Some(7));
    }

    #[test]
    fn a_tenant_at_its_quotas_recycles_its_own_oldest() {
        let mut c = MappingCache::new(tenant_cfg(1024)).unwrap();
        // Four pending entries at most: the fifth miss recycles the first.
        for i in 0..5u8 {
            assert_eq!(c.lookup(secs(0), 3, v4(3, i)), Lookup::Miss);
        }
        assert_eq!(c.stats().pending_recycled, 1);
        assert_eq!(c.stats().queries, 5, "a burst of five");
        let u = c.tenant_usage(3).unwrap();
        assert_eq!((u.entries, u.pending), (4, 4));
        // The recycled key's answer is no longer wanted.
        let mut answers: Vec<Answer> = Vec::new();
        while let Some(b) = c.poll_queries() {
            answers.extend(b.as_slice().iter().map(|q| Answer {
                vni: q.vni,
                addr: q.addr,
                host: Some(v4(8, 8)),
            }));
        }
        c.handle_answers(secs(0), &answers);
        assert_eq!(c.stats().unsolicited, 1);
        assert_eq!(c.len(), 4);
        // Sixteen entries at most: static entries beyond recycle the oldest.
        for i in 0..20u8 {
            assert!(c.insert(secs(1), 3, v4(4, i), Some(v4(8, i))));
        }
        assert_eq!(c.stats().quota_recycled, 8);
        assert_eq!(c.tenant_usage(3).unwrap().entries, 16);
        assert_eq!(c.lookup(secs(1), 3, v4(3, 1)), Lookup::Miss, "oldest went");
    }

    #[test]
    fn the_query_rate_is_a_token_bucket() {
        let mut c = MappingCache::new(tenant_cfg(1024)).unwrap();
        let ms = |m: u64| Instant::from_nanos(m * 1_000_000);
        for i in 0..50u8 {
            c.lookup(ms(0), 4, v4(5, i));
        }
        // Burst 5; the rest cached nothing.
        assert_eq!((c.stats().queries, c.stats().rate_limited), (5, 45));
        // 10 per second: one token per 100 ms, none at 99 ms.
        c.lookup(ms(99), 4, v4(6, 0));
        assert_eq!(c.stats().queries, 5);
        c.lookup(ms(100), 4, v4(6, 1));
        assert_eq!(c.stats().queries, 6);
        // Another VNI has its own bucket.
        c.lookup(ms(100), 5, v4(6, 2));
        assert_eq!(c.stats().queries, 7);
    }

    #[test]
    fn tenants_beyond_the_limit_share_a_budget_that_recycles_no_resolved_entry() {
        let cfg = tenant_cfg(1024)
            .with_max_tenants(1)
            .with_shared_budget(TenantBudget {
                entries: 2,
                pending: 1,
                rate: QueryRate {
                    per_second: 1000,
                    burst: 100,
                },
            });
        let mut c = MappingCache::new(cfg).unwrap();
        assert!(c.insert(secs(0), 1, v4(1, 1), Some(v4(9, 1))));
        assert!(c.insert(secs(0), 2, v4(2, 1), Some(v4(9, 2))));
        assert!(c.insert(secs(0), 3, v4(3, 1), Some(v4(9, 3))));
        assert_eq!(c.stats().shared_budget, 2);
        assert_eq!(c.tracked_tenants(), 1);
        // The shared budget is full of resolved entries: refused, nothing recycled.
        assert!(!c.insert(secs(0), 4, v4(4, 1), Some(v4(9, 4))));
        assert_eq!(c.lookup(secs(0), 5, v4(5, 1)), Lookup::Miss);
        assert_eq!(c.stats().quota_refused, 2);
        assert_eq!(c.lookup(secs(0), 2, v4(2, 1)), Lookup::Host(v4(9, 2)));
        assert_eq!(c.lookup(secs(0), 3, v4(3, 1)), Lookup::Host(v4(9, 3)));
        assert_eq!(c.shared_usage().entries, 2);
        // A tenant forgotten once empty and refilled: the sweep frees its record.
        let mut d = MappingCache::new(tenant_cfg(64).with_max_tenants(1)).unwrap();
        d.lookup(secs(0), 1, v4(1, 1));
        assert_eq!(d.tracked_tenants(), 1);
        for _ in 0..4 {
            d.handle_timeout(secs(200), 64);
        }
        assert_eq!(d.tracked_tenants(), 0);
        assert_eq!(d.lookup(secs(200), 2, v4(1, 1)), Lookup::Miss);
        assert_eq!(d.tracked_tenants(), 1, "room for another VNI again");
    }

    #[test]
    fn config_errors_are_typed_and_new_clamps() {
        let ok = MappingConfig::new(64, [0; 16]);
        assert_eq!(ok.validate(), Ok(()));
        let rate = QueryRate {
            per_second: 1,
            burst: 1,
        };
        let bad_budget = TenantBudget {
            entries: 2,
            pending: 3,
            rate,
        };
        let cases = [
            (MappingConfig::new(0, [0; 16]), MappingConfigError::Capacity),
            (
                ok.with_tenant_budget(bad_budget),
                MappingConfigError::TenantBudget,
            ),
            (
                ok.with_tenant_budget(TenantBudget {
                    rate: QueryRate {
                        per_second: 0,
                        burst: 1,
                    },
                    ..ok.tenant
                }),
                MappingConfigError::TenantBudget,
            ),
            (ok.with_max_tenants(0), MappingConfigError::MaxTenants),
            (
                ok.with_shared_budget(bad_budget),
                MappingConfigError::SharedBudget,
            ),
        ];
        for (cfg, err) in cases {
            assert_eq!(MappingCache::new(cfg).err(), Some(err));
            let c = MappingCache::new(cfg.clamped()).unwrap();
            assert_eq!(c.config().validate(), Ok(()), "{err}");
        }
        // A shared budget of nothing is valid: VNIs beyond the limit cache nothing.
        let none = TenantBudget {
            entries: 0,
            pending: 0,
            rate,
        };
        let mut c = MappingCache::new(ok.with_max_tenants(1).with_shared_budget(none)).unwrap();
        c.lookup(secs(0), 1, v4(0, 1));
        c.lookup(secs(0), 2, v4(0, 1));
        assert_eq!(c.shared_usage().entries, 0);
        assert_eq!(c.stats().quota_refused, 1);
    }

    /// Checks the table against its own bookkeeping: per-account counts and lists match
    /// the slots, and no account is over its budget.
    fn check_accounts(c: &MappingCache) {
        use std::collections::HashMap;
        let mut counted: HashMap<usize, (u32, u32)> = HashMap::new();
        for s in c.slots.iter().filter(|s| s.state != State::Empty) {
            let a = c.account_of(s).expect("every live slot has an account");
            let e = counted.entry(a).or_default();
            e.0 += 1;
            e.1 += u32::from(s.state == State::Pending);
        }
        let shared = c.c.tenants.len();
        for a in (0..c.c.tenants.len()).chain([shared]) {
            let t = c.account(a).unwrap();
            if !t.used {
                continue;
            }
            let (e, p) = counted.get(&a).copied().unwrap_or_default();
            assert_eq!((t.entries, t.pending), (e, p), "account {a}");
            let b = c.budget(a);
            assert!(t.entries <= b.entries && t.pending <= b.pending);
            for (list, pending) in [(t.pend, true), (t.live, false)] {
                let mut n = 0;
                let mut x = list[0];
                let mut prev = NIL;
                while x != NIL {
                    let s = c.slots[x as usize];
                    assert_eq!(s.state == State::Pending, pending);
                    assert_eq!(c.account_of(&s), Some(a));
                    assert_eq!(c.c.links[x as usize][0], prev);
                    prev = x;
                    x = c.c.links[x as usize][1];
                    n += 1;
                }
                assert_eq!(list[1], prev);
                assert_eq!(n, if pending { p } else { e - p });
            }
        }
        assert!(c.tracked_tenants() <= c.config().max_tenants as usize);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Lookup(u32, u8),
        Insert(u32, u8, Option<u8>),
        Answer(u32, u8, Option<u8>),
        AnswerAll(u8),
        Advance(u16),
        Timeout(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u32..5, 0u8..24).prop_map(|(v, a)| Op::Lookup(v, a)),
            1 => (0u32..5, 0u8..24, proptest::option::of(0u8..4))
                .prop_map(|(v, a, h)| Op::Insert(v, a, h)),
            2 => (0u32..5, 0u8..24, proptest::option::of(0u8..4))
                .prop_map(|(v, a, h)| Op::Answer(v, a, h)),
            2 => (0u8..4).prop_map(Op::AnswerAll),
            2 => (0u16..20_000).prop_map(Op::Advance),
            1 => any::<u8>().prop_map(Op::Timeout),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        /// Arbitrary lookups, static entries, answers (asked and unasked), time and sweeps
        /// against a model of what was asked and answered.
        #[test]
        fn tenants_are_isolated_and_answers_are_what_the_service_said(
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            use std::collections::{HashMap, HashSet};
            let cfg = MappingConfig::new(32, [5; 16])
                .with_max_tenants(2)
                .with_tenant_budget(TenantBudget {
                    entries: 12,
                    pending: 4,
                    rate: QueryRate { per_second: 20, burst: 3 },
                })
                .with_shared_budget(TenantBudget {
                    entries: 6,
                    pending: 2,
                    rate: QueryRate { per_second: 20, burst: 3 },
                });
            let mut c = MappingCache::new(cfg).unwrap();
            let host = |h: Option<u8>| h.map(|h| v4(200, h));
            // The model: what the service was asked and has not answered, and the last
            // mapping the cache accepted per key.
            let mut asked: HashSet<(u32, IpAddr)> = HashSet::new();
            let mut truth: HashMap<(u32, IpAddr), Option<IpAddr>> = HashMap::new();
            let mut now = Instant::from_nanos(1);
            for op in ops {
                match op {
                    Op::Lookup(vni, a) => {
                        let addr = v4(0, a);
                        // Every other VNI's unexpired entry must survive the lookup, except a
                        // pending one in the shared budget (which recycles its oldest pending
                        // entry, whichever VNI's).
                        let others: Vec<(u32, IpAddr, State)> = c.slots.iter()
                            .filter(|s| s.state != State::Empty && s.vni != vni
                                && !c.expired(s, now)
                                && !(s.shared && s.state == State::Pending))
                            .map(|s| (s.vni, s.addr, s.state))
                            .collect();
                        if let Lookup::Host(h) = c.lookup(now, vni, addr) {
                            prop_assert_eq!(truth.get(&(vni, addr)), Some(&Some(h)));
                        }
                        for (v, a, st) in others {
                            let i = c.find(v, a);
                            prop_assert!(i.is_some(), "VNI {}'s {} evicted by VNI {}", v, a, vni);
                            prop_assert_eq!(c.slots[i.unwrap()].state, st);
                        }
                    }
                    Op::Insert(vni, a, h) => {
                        if c.insert(now, vni, v4(0, a), host(h)) {
                            truth.insert((vni, v4(0, a)), host(h));
                            asked.remove(&(vni, v4(0, a)));
                        }
                    }
                    Op::Answer(vni, a, h) => {
                        let key = (vni, v4(0, a));
                        let before = c.stats().unsolicited;
                        c.handle_answers(now, &[Answer { vni, addr: key.1, host: host(h) }]);
                        let ignored = c.stats().unsolicited > before;
                        if !asked.contains(&key) {
                            prop_assert!(ignored, "answer to a question never asked");
                        }
                        if !ignored {
                            truth.insert(key, host(h));
                        }
                        asked.remove(&key);
                    }
                    Op::AnswerAll(h) => {
                        let answers: Vec<Answer> = asked.drain()
                            .map(|(vni, addr)| Answer { vni, addr, host: host(Some(h)) })
                            .collect();
                        for a in &answers {
                            let before = c.stats().unsolicited;
                            c.handle_answers(now, core::slice::from_ref(a));
                            if c.stats().unsolicited == before {
                                truth.insert((a.vni, a.addr), a.host);
                            }
                        }
                    }
                    Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
                    Op::Timeout(b) => {
                        prop_assert!(c.handle_timeout(now, usize::from(b)) <= usize::from(b));
                    }
                }
                while let Some(b) = c.poll_queries() {
                    asked.extend(b.as_slice().iter().map(|q| (q.vni, q.addr)));
                }
                check_accounts(&c);
            }
        }
    }
}
