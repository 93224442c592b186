//! The [`Conntrack`] stage: tags packets with their session and direction, creates sessions
//! for new flows by per-zone policy, and tracks TCP state.

use super::key::{V4Key, V6Key};
use super::state::{SessionState, tcp_flags, tcp_flags_invalid};
use super::table::{ConfigError, Hit, InsertError, SessionTable, TableConfig, ZoneError};
use crate::batch::{BATCH_SIZE, Batch};
use crate::flow::{Family, FlowKey, ZoneId, proto};
use crate::meta::{Meta, SessionRef, flags};
use crate::stage::{Stage, StageControl, StageCounters};
use crate::time::Instant;
use crate::verdict::{DropReason, Verdict};
use alloc::collections::BTreeMap;

/// When a TCP segment without a session may create one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpCreate {
    /// Only a SYN (without ACK, FIN or RST) opens a session; other segments are dropped with
    /// [`DropReason::NoSession`].
    #[default]
    SynOnly,
    /// Any valid segment opens one (mid-stream pickup after a failover, for instance); it
    /// starts in [`SessionState::TcpEstablished`] but counts as established only once the
    /// other side answers.
    Any,
    /// TCP never creates sessions here (reply-only zones).
    Never,
}

/// Which first packets of a zone create sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZonePolicy {
    /// TCP.
    pub tcp: TcpCreate,
    /// UDP creates on its first packet.
    pub udp: bool,
    /// ICMP / ICMPv6 queries create on their first packet.
    pub icmp: bool,
    /// Other protocols create on their first packet.
    pub other: bool,
}

impl Default for ZonePolicy {
    fn default() -> Self {
        Self {
            tcp: TcpCreate::SynOnly,
            udp: true,
            icmp: true,
            other: true,
        }
    }
}

/// Conntrack stage settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ConntrackConfig {
    /// The IPv4 table.
    pub v4: TableConfig,
    /// The IPv6 table.
    pub v6: TableConfig,
    /// Policy of zones without their own.
    pub default_policy: ZonePolicy,
}

impl ConntrackConfig {
    /// Tables of `v4` and `v6` sessions with default timeouts and policy.
    pub fn new(v4: u32, v6: u32, secret: [u8; 16]) -> Self {
        Self {
            v4: TableConfig::new(v4, secret),
            v6: TableConfig::new(v6, secret),
            default_policy: ZonePolicy::default(),
        }
    }
}

/// Per-outcome packet counts of the conntrack stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConntrackCounters {
    /// Packets that matched a session.
    pub hits: u64,
    /// Of the hits, packets travelling in the reply direction.
    pub reply_hits: u64,
    /// Packets with no session.
    pub misses: u64,
    /// Sessions created.
    pub created: u64,
    /// Packets passed without tracking (no flow key, later fragments, ICMP errors).
    pub untracked: u64,
    /// Drops: table full.
    pub refused_full: u64,
    /// Drops: zone quota (or zone table) exhausted.
    pub refused_quota: u64,
    /// Drops: no session and the policy does not create one.
    pub no_session: u64,
    /// Drops: TCP flags invalid for the state.
    pub invalid: u64,
    /// Drops: key conflicts (LAND packets).
    pub key_conflict: u64,
}

/// The connection-tracking stage: an IPv4 and an IPv6 [`SessionTable`] plus per-zone
/// creation policy.
///
/// For every packet still at [`Verdict::Pass`] with a valid flow key it sets
/// [`Meta::session`] and [`Meta::direction`], advances the session's state from
/// [`Meta::tcp_flags`] and refreshes its timeout; a packet without a session creates one if the
/// zone's [`ZonePolicy`] allows (reply key [`FlowKey::reversed`], value `V::default()`), and is
/// dropped with a typed [`DropReason`] otherwise. Later fragments and ICMP errors pass
/// untracked.
///
/// Call order: [`Stage::process`] per batch; [`Conntrack::poll_timeout`] /
/// [`Conntrack::handle_timeout`] between batches. A batch gives exactly the results of its
/// packets processed one by one.
pub struct Conntrack<V> {
    v4: SessionTable<V4Key, V>,
    v6: SessionTable<V6Key, V>,
    default_policy: ZonePolicy,
    policies: BTreeMap<u32, ZonePolicy>,
    stats: ConntrackCounters,
    counters: StageCounters,
}

impl<V: core::fmt::Debug> core::fmt::Debug for Conntrack<V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Conntrack")
            .field("v4", &self.v4)
            .field("v6", &self.v6)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<V: Copy + Default> Conntrack<V> {
    /// A stage with both tables allocated.
    ///
    /// # Errors
    /// [`ConfigError`] from either table.
    pub fn new(cfg: ConntrackConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            v4: SessionTable::new(cfg.v4)?,
            v6: SessionTable::new(cfg.v6)?,
            default_policy: cfg.default_policy,
            policies: BTreeMap::new(),
            stats: ConntrackCounters::default(),
            counters: StageCounters::default(),
        })
    }

    /// The IPv4 table.
    pub fn v4(&self) -> &SessionTable<V4Key, V> {
        &self.v4
    }
    /// The IPv4 table, writable (e.g. for [`SessionTable::replace_reply`]).
    pub fn v4_mut(&mut self) -> &mut SessionTable<V4Key, V> {
        &mut self.v4
    }
    /// The IPv6 table.
    pub fn v6(&self) -> &SessionTable<V6Key, V> {
        &self.v6
    }
    /// The IPv6 table, writable.
    pub fn v6_mut(&mut self) -> &mut SessionTable<V6Key, V> {
        &mut self.v6
    }

    /// Outcome counters.
    pub fn stats(&self) -> &ConntrackCounters {
        &self.stats
    }

    /// The value of the session a packet was tagged with.
    pub fn value(&self, r: SessionRef) -> Option<&V> {
        match r.family() {
            Family::V4 => self.v4.value(r),
            Family::V6 => self.v6.value(r),
        }
    }

    /// The value of the session a packet was tagged with, writable.
    pub fn value_mut(&mut self, r: SessionRef) -> Option<&mut V> {
        match r.family() {
            Family::V4 => self.v4.value_mut(r),
            Family::V6 => self.v6.value_mut(r),
        }
    }

    /// Sets the creation policy of one zone.
    pub fn set_zone_policy(&mut self, zone: ZoneId, policy: ZonePolicy) {
        self.policies.insert(zone.0, policy);
    }

    /// Sets a zone's quota in both tables (each family counts separately).
    ///
    /// # Errors
    /// [`ZoneError`] when a table has no room for another zone.
    pub fn set_zone_quota(&mut self, zone: ZoneId, quota: u32) -> Result<(), ZoneError> {
        self.v4.set_zone_quota(zone, quota)?;
        self.v6.set_zone_quota(zone, quota)
    }

    /// The earlier of the two tables' [`SessionTable::poll_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.v4.poll_timeout(), self.v6.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires due sessions of both tables with at most `budget` units of work in total;
    /// returns the work done.
    pub fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        let a = self.v4.handle_timeout(now, budget);
        a + self.v6.handle_timeout(now, budget.saturating_sub(a))
    }

    fn lookup_one(&self, k: &FlowKey) -> Option<Hit> {
        match k.family() {
            Family::V4 => self.v4.lookup(k),
            Family::V6 => self.v6.lookup(k),
        }
    }

    fn policy(&self, zone: ZoneId) -> ZonePolicy {
        self.policies
            .get(&zone.0)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// Handles one packet given its lookup result. Returns true if it created a session.
    fn one(&mut self, now: Instant, meta: &mut Meta, hit: Option<Hit>) -> bool {
        let tcp = meta.flow.proto == proto::TCP;
        let fl = if tcp { meta.tcp_flags } else { 0 };
        if let Some(h) = hit {
            let r = h.session;
            let tracked = match r.family() {
                Family::V4 => self.v4.track(r, now, h.direction, fl),
                Family::V6 => self.v6.track(r, now, h.direction, fl),
            };
            self.stats.hits += 1;
            if tracked.is_none() {
                self.stats.invalid += 1;
                meta.verdict = Verdict::Drop(DropReason::InvalidTcpState);
                return false;
            }
            self.stats.reply_hits += u64::from(h.direction == crate::Direction::Reply);
            meta.session = Some(r);
            meta.direction = h.direction;
            return false;
        }
        self.stats.misses += 1;
        let pol = self.policy(meta.flow.zone);
        let allowed = match meta.flow.proto {
            proto::TCP => {
                if tcp_flags_invalid(fl) {
                    self.stats.invalid += 1;
                    meta.verdict = Verdict::Drop(DropReason::InvalidTcpState);
                    return false;
                }
                let pure_syn = fl & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
                match pol.tcp {
                    TcpCreate::SynOnly => pure_syn,
                    TcpCreate::Any => true,
                    TcpCreate::Never => false,
                }
            }
            proto::UDP => pol.udp,
            proto::ICMP | proto::ICMPV6 => pol.icmp,
            _ => pol.other,
        };
        if !allowed {
            self.stats.no_session += 1;
            meta.verdict = Verdict::Drop(DropReason::NoSession);
            return false;
        }
        let state = SessionState::initial(meta.flow.proto, fl);
        let k = meta.flow;
        let rev = k.reversed();
        let res = match k.family() {
            Family::V4 => self.v4.insert(now, &k, &rev, state, V::default()),
            Family::V6 => self.v6.insert(now, &k, &rev, state, V::default()),
        };
        match res {
            Ok(r) => {
                self.stats.created += 1;
                meta.session = Some(r);
                meta.direction = crate::Direction::Original;
                true
            }
            Err(e) => {
                let reason = match e {
                    InsertError::TableFull => {
                        self.stats.refused_full += 1;
                        DropReason::SessionTableFull
                    }
                    InsertError::ZoneQuota | InsertError::TooManyZones => {
                        self.stats.refused_quota += 1;
                        DropReason::ZoneQuotaExceeded
                    }
                    _ => {
                        self.stats.key_conflict += 1;
                        DropReason::SessionKeyConflict
                    }
                };
                meta.verdict = Verdict::Drop(reason);
                false
            }
        }
    }

    fn live(&self, r: SessionRef) -> bool {
        match r.family() {
            Family::V4 => self.v4.is_live(r),
            Family::V6 => self.v6.is_live(r),
        }
    }
}

/// Packets the stage tracks: a valid key, not a later fragment or ICMP error.
#[inline]
fn trackable(m: &Meta) -> bool {
    m.has(flags::L3_VALID) && m.flags & (flags::LATER_FRAGMENT | flags::ICMP_ERROR) == 0
}

impl<B, V: Copy + Default> Stage<B> for Conntrack<V> {
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        let before = batch.pending_mask();
        let mut keys = [FlowKey::default(); BATCH_SIZE];
        let mut v6 = false;
        let mut track = 0u64;
        for (i, p) in batch.packets().iter().enumerate().take(BATCH_SIZE) {
            if before & (1 << i) != 0 && trackable(&p.meta) {
                if let Some(k) = keys.get_mut(i) {
                    *k = p.meta.flow;
                }
                v6 |= p.meta.flow.family() == Family::V6;
                track |= 1 << i;
            }
        }
        let n = batch.len().min(BATCH_SIZE);
        let mut hits = [None; BATCH_SIZE];
        let keys = keys.get(..n).unwrap_or(&[]);
        self.v4.lookup_batch(keys, &mut hits);
        if v6 {
            let mut h6 = [None; BATCH_SIZE];
            self.v6.lookup_batch(keys, &mut h6);
            for (h, h6) in hits.iter_mut().zip(h6) {
                if h6.is_some() {
                    *h = h6;
                }
            }
        }
        // Sequential pass in arrival order. Once this batch changed the index (a session was
        // created, perhaps evicting another), later results are re-checked so that the batch
        // answers exactly like packets processed one by one.
        let mut changed = false;
        for (i, p) in batch.packets_mut().iter_mut().enumerate().take(BATCH_SIZE) {
            if before & (1 << i) == 0 {
                continue;
            }
            if track & (1 << i) == 0 {
                self.stats.untracked += 1;
                continue;
            }
            let mut hit = hits.get(i).copied().flatten();
            if changed {
                hit = match hit {
                    Some(h) if self.live(h.session) => Some(h),
                    _ => self.lookup_one(&p.meta.flow),
                };
            }
            changed |= self.one(now, &mut p.meta, hit);
        }
        self.counters.account(before, batch);
    }
}

impl<V> StageControl for Conntrack<V> {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }
}
