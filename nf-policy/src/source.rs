//! Per-source-IP limits on a shared gateway, in a fixed-size table.
//!
//! The operator sets a limit per private IP ([`SourceLimits::set`]: a rate in bytes and
//! optionally packets per second, [`IpLimit::Block`], or [`IpLimit::Unlimited`]); every other
//! source gets the default limit. A source with a rate limit needs a token bucket, kept in a
//! slot of a table whose size is fixed at construction: memory is bounded whatever the traffic.
//!
//! Slots are found by keyed SipHash-1-3 ([`FlowHasher`]) of the address, probing at most
//! [`SourceLimitConfig::max_probe`] consecutive slots, so an attacker who chooses source
//! addresses cannot aim them at one run of slots without the key, and no lookup does more than
//! that many comparisons. A source first seen takes a free slot, or evicts a default-limited
//! source whose bucket is full again (idle: a fresh bucket would start full too, so the
//! eviction changes no decision). Operator-set slots are never evicted; an operator-set limit
//! may take a busy default-limited source's slot (that source then starts afresh, a control-path
//! event, not something traffic can cause). When no slot can be had
//! the packet is decided by [`SourceLimitConfig::when_full`] and counted as
//! `src_table_full`.
//!
//! Every refusal is counted under a stable snake_case name ([`SourceCounters::visit`]).

use crate::meter::{BucketConfig, TokenBucket};
use alloc::vec::Vec;
use core::net::IpAddr;
use nf_core::{FlowHasher, Instant};

/// A source's allowance.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpLimit {
    /// Every packet is dropped (a rate of zero).
    Block,
    /// No limit.
    Unlimited,
    /// Bytes per second with a burst, and optionally packets per second with a burst.
    Rate {
        /// The byte bucket.
        bytes: BucketConfig,
        /// The packet bucket, if packets are limited too.
        packets: Option<BucketConfig>,
    },
}

impl IpLimit {
    /// `mbps` megabits per second with a burst of 100 ms of traffic (at least one 1500-byte
    /// packet); `0` blocks.
    pub const fn mbps(mbps: u64) -> Self {
        if mbps == 0 {
            return Self::Block;
        }
        let per_second = mbps.saturating_mul(125_000);
        let burst = per_second / 10;
        Self::Rate {
            bytes: BucketConfig::new(per_second, if burst < 1500 { 1500 } else { burst }),
            packets: None,
        }
    }

    /// Also limits packets per second (`pps`, with a burst of `burst` packets); `pps == 0`
    /// blocks. No effect on [`Block`](Self::Block) and [`Unlimited`](Self::Unlimited).
    #[must_use]
    pub const fn with_pps(self, pps: u64, burst: u64) -> Self {
        match self {
            Self::Rate { bytes, .. } if pps > 0 => Self::Rate {
                bytes,
                packets: Some(BucketConfig::new(pps, burst)),
            },
            Self::Rate { .. } => Self::Block,
            other => other,
        }
    }
}

/// What to do with a packet whose source needs a slot when none can be had.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop it (fail closed).
    #[default]
    Drop,
    /// Pass it unmetered (fail open).
    Pass,
}

/// Table settings.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimitConfig {
    /// Slots (rounded up to a power of two).
    pub capacity: usize,
    /// Limit for sources the operator did not set.
    pub default: IpLimit,
    /// SipHash key for slot placement: an operator secret.
    pub key: [u8; 16],
    /// Most slots examined per lookup.
    pub max_probe: usize,
    /// Decision when a source cannot get a slot.
    pub when_full: WhenFull,
}

impl SourceLimitConfig {
    /// `capacity` slots, keyed with `key`; default unlimited, 8 probes, drop when full.
    pub const fn new(capacity: usize, key: [u8; 16]) -> Self {
        Self {
            capacity,
            default: IpLimit::Unlimited,
            key,
            max_probe: 8,
            when_full: WhenFull::Drop,
        }
    }

    /// Sets the default limit.
    #[must_use]
    pub const fn with_default(mut self, default: IpLimit) -> Self {
        self.default = default;
        self
    }

    /// Sets the probe bound.
    #[must_use]
    pub const fn with_max_probe(mut self, max_probe: usize) -> Self {
        self.max_probe = max_probe;
        self
    }

    /// Sets the decision when the table is full.
    #[must_use]
    pub const fn with_when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }
}

/// Invalid settings, or no room for an operator-set limit.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceLimitError {
    /// Capacity zero or above 2^24 slots, or a probe bound of zero.
    Config,
    /// Every slot the address may use holds another operator-set source.
    Full,
}

impl core::fmt::Display for SourceLimitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Config => "capacity must be 1..=2^24 and max_probe positive",
            Self::Full => "no free slot for this source",
        })
    }
}

impl core::error::Error for SourceLimitError {}

/// Refusals by cause, by stable snake_case name through [`visit`](Self::visit).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCounters {
    /// Packets passed.
    pub passed: u64,
    /// Dropped: the source's byte rate was exceeded.
    pub bw_in_allowance_exceeded: u64,
    /// Dropped: the source's packet rate was exceeded.
    pub pps_in_allowance_exceeded: u64,
    /// Dropped: the source is blocked.
    pub src_blocked: u64,
    /// No slot for the source (dropped or passed per [`WhenFull`]).
    pub src_table_full: u64,
}

impl SourceCounters {
    /// Calls `f(name, value)` for every counter.
    pub fn visit(&self, mut f: impl FnMut(&'static str, u64)) {
        f("passed", self.passed);
        f("bw_in_allowance_exceeded", self.bw_in_allowance_exceeded);
        f("pps_in_allowance_exceeded", self.pps_in_allowance_exceeded);
        f("src_blocked", self.src_blocked);
        f("src_table_full", self.src_table_full);
    }
}

/// The fixed-size per-source table (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct SourceLimits {
    hasher: FlowHasher,
    slots: Vec<Option<Entry>>,
    mask: usize,
    probe: usize,
    default: IpLimit,
    when_full: WhenFull,
    counters: SourceCounters,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: IpAddr,
    limit: IpLimit,
    /// Set by the operator: never evicted.
    pinned: bool,
    bytes: Option<TokenBucket>,
    packets: Option<TokenBucket>,
}

impl Entry {
    fn new(addr: IpAddr, limit: IpLimit, pinned: bool, now: Instant) -> Self {
        let (bytes, packets) = match limit {
            IpLimit::Rate { bytes, packets } => (
                Some(TokenBucket::new(bytes, now)),
                packets.map(|p| TokenBucket::new(p, now)),
            ),
            _ => (None, None),
        };
        Self {
            addr,
            limit,
            pinned,
            bytes,
            packets,
        }
    }

    /// Whether the entry's buckets are full at `now` (it decides as a fresh entry would).
    fn idle(&mut self, now: Instant) -> bool {
        let full = |b: &mut Option<TokenBucket>, cfg: Option<BucketConfig>| match (b, cfg) {
            (Some(b), Some(c)) => b.tokens(now) >= c.burst,
            _ => true,
        };
        match self.limit {
            IpLimit::Rate { bytes, packets } => {
                full(&mut self.bytes, Some(bytes)) && full(&mut self.packets, packets)
            }
            _ => true,
        }
    }
}

/// Largest capacity (slots).
const MAX_CAPACITY: usize = 1 << 24;

impl SourceLimits {
    /// An empty table.
    ///
    /// # Errors
    /// [`SourceLimitError::Config`] for a capacity of zero or above 2^24, or `max_probe` zero.
    pub fn new(config: SourceLimitConfig) -> Result<Self, SourceLimitError> {
        if config.capacity == 0 || config.capacity > MAX_CAPACITY || config.max_probe == 0 {
            return Err(SourceLimitError::Config);
        }
        let n = config.capacity.next_power_of_two();
        let mut slots = Vec::new();
        slots.resize(n, None);
        Ok(Self {
            hasher: FlowHasher::new(config.key),
            slots,
            mask: n - 1,
            probe: config.max_probe.min(n),
            default: config.default,
            when_full: config.when_full,
            counters: SourceCounters::default(),
        })
    }

    /// Sets `addr`'s limit (replacing any, with fresh full buckets).
    ///
    /// # Errors
    /// [`SourceLimitError::Full`] if every slot `addr` may use holds another operator-set
    /// source.
    pub fn set(
        &mut self,
        now: Instant,
        addr: IpAddr,
        limit: IpLimit,
    ) -> Result<(), SourceLimitError> {
        let at = self
            .find(addr)
            .or_else(|| self.vacancy(addr, now, true))
            .ok_or(SourceLimitError::Full)?;
        if let Some(s) = self.slots.get_mut(at) {
            *s = Some(Entry::new(addr, limit, true, now));
        }
        Ok(())
    }

    /// Removes `addr`'s own limit (it gets the default again); whether it had one.
    pub fn remove(&mut self, addr: IpAddr) -> bool {
        // Only an operator-set entry: a default-limited source keeps its bucket (removing it
        // would hand the source a fresh, full one).
        match self.find(addr).and_then(|at| self.slots.get_mut(at)) {
            Some(s) if s.as_ref().is_some_and(|e| e.pinned) => {
                *s = None;
                true
            }
            _ => false,
        }
    }

    /// Whether a packet of `bytes` from `src` may pass at `now`; charged and counted.
    pub fn admit(&mut self, now: Instant, src: IpAddr, bytes: u64) -> bool {
        let at = match self.find(src) {
            Some(at) => at,
            None => match self.default {
                IpLimit::Unlimited => return self.pass(),
                IpLimit::Block => {
                    self.counters.src_blocked += 1;
                    return false;
                }
                IpLimit::Rate { .. } => match self.vacancy(src, now, false) {
                    Some(at) => {
                        if let Some(s) = self.slots.get_mut(at) {
                            *s = Some(Entry::new(src, self.default, false, now));
                        }
                        at
                    }
                    None => {
                        self.counters.src_table_full += 1;
                        return match self.when_full {
                            WhenFull::Pass => self.pass(),
                            WhenFull::Drop => false,
                        };
                    }
                },
            },
        };
        let Some(Some(e)) = self.slots.get_mut(at) else {
            return false;
        };
        match e.limit {
            IpLimit::Unlimited => self.pass(),
            IpLimit::Block => {
                self.counters.src_blocked += 1;
                false
            }
            IpLimit::Rate { .. } => {
                if let Some(b) = &mut e.bytes {
                    b.refill(now);
                }
                if let Some(p) = &mut e.packets {
                    p.refill(now);
                }
                if e.bytes.as_ref().is_some_and(|b| !b.has(bytes)) {
                    self.counters.bw_in_allowance_exceeded += 1;
                    return false;
                }
                if e.packets.as_ref().is_some_and(|p| !p.has(1)) {
                    self.counters.pps_in_allowance_exceeded += 1;
                    return false;
                }
                if let Some(b) = &mut e.bytes {
                    b.take(bytes);
                }
                if let Some(p) = &mut e.packets {
                    p.take(1);
                }
                self.pass()
            }
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> &SourceCounters {
        &self.counters
    }

    /// Number of slots (fixed).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether no slot is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pass(&mut self) -> bool {
        self.counters.passed += 1;
        true
    }

    fn home(&self, addr: IpAddr) -> usize {
        let mut b = [0u8; 17];
        match addr {
            IpAddr::V4(a) => {
                if let Some(d) = b.get_mut(1..5) {
                    d.copy_from_slice(&a.octets());
                }
            }
            IpAddr::V6(a) => {
                b[0] = 6;
                if let Some(d) = b.get_mut(1..17) {
                    d.copy_from_slice(&a.octets());
                }
            }
        }
        (self.hasher.hash_bytes(&b) as usize) & self.mask
    }

    fn probes(&self, addr: IpAddr) -> impl Iterator<Item = usize> + use<> {
        let (home, mask) = (self.home(addr), self.mask);
        (0..self.probe).map(move |i| (home + i) & mask)
    }

    fn find(&self, addr: IpAddr) -> Option<usize> {
        self.probes(addr).find(|&at| {
            self.slots
                .get(at)
                .is_some_and(|s| s.as_ref().is_some_and(|e| e.addr == addr))
        })
    }

    /// A slot `addr` may take: a free one, else one of a default-limited source that is idle
    /// (or, for an operator-set limit, any default-limited source).
    fn vacancy(&mut self, addr: IpAddr, now: Instant, operator: bool) -> Option<usize> {
        let free = self
            .probes(addr)
            .find(|&at| matches!(self.slots.get(at), Some(None)));
        if free.is_some() {
            return free;
        }
        for at in self.probes(addr) {
            if let Some(Some(e)) = self.slots.get_mut(at)
                && !e.pinned
                && (operator || e.idle(now))
            {
                return Some(at);
            }
        }
        None
    }
}
