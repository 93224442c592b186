//! The stateless sharder: (tenant, key, membership, time) → the tenant's nodes.
//!
//! See [`Sharder`] for how a shard is chosen and what node states mean.

use crate::hash::{ShardKey, SplitMix64, mix64};
use crate::membership::{MAX_ZONES, Membership, NodeId, NodeState, ZoneId};
use crate::ring::Ring;
use alloc::vec::Vec;

/// Largest number of nodes per tenant.
pub const MAX_NODES_PER_TENANT: u32 = 128;

/// Ring tokens per unit of weight unless configured otherwise.
pub const DEFAULT_TOKENS_PER_WEIGHT: u32 = 128;

/// Largest accepted `tokens_per_weight`.
pub const MAX_TOKENS_PER_WEIGHT: u32 = 1_024;

/// Probes per tenant per zone ring (see [`Sharder`]): more probes spread the load more evenly
/// and cost more per placement. Part of the placement function: changing it moves most tenants.
pub const PROBES: usize = 8;

/// Largest total number of ring tokens (sum of weight × tokens per weight over all nodes).
pub const MAX_TOKENS: u64 = 1 << 24;

/// How the sharder places tenants. Every node that must agree uses the same configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardConfig {
    /// Nodes per tenant (`k`), `1..=MAX_NODES_PER_TENANT`.
    pub nodes_per_tenant: u32,
    /// How long a failed node stays in the shards that have it, in the caller's nanoseconds.
    pub failed_lookback_ns: u64,
    /// Ring tokens per unit of node weight, `1..=MAX_TOKENS_PER_WEIGHT`; more tokens give a
    /// more even spread and a larger, slower-to-build ring (below the default of 128 the load
    /// gets visibly less even than uniform random placement). Changing it moves most tenants.
    pub tokens_per_weight: u32,
}

impl ShardConfig {
    /// `nodes_per_tenant` nodes per tenant, no lookback, default tokens per weight.
    pub const fn new(nodes_per_tenant: u32) -> Self {
        Self {
            nodes_per_tenant,
            failed_lookback_ns: 0,
            tokens_per_weight: DEFAULT_TOKENS_PER_WEIGHT,
        }
    }

    /// The same configuration with another failed-node lookback.
    #[must_use]
    pub const fn with_failed_lookback_ns(mut self, ns: u64) -> Self {
        self.failed_lookback_ns = ns;
        self
    }
}

/// Why a sharder could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `nodes_per_tenant` is 0 or above [`MAX_NODES_PER_TENANT`].
    NodesPerTenant,
    /// `tokens_per_weight` is 0 or above [`MAX_TOKENS_PER_WEIGHT`].
    TokensPerWeight,
    /// The membership's total weight times `tokens_per_weight` exceeds [`MAX_TOKENS`].
    TooManyTokens,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NodesPerTenant => {
                write!(f, "nodes per tenant outside 1..={MAX_NODES_PER_TENANT}")
            }
            Self::TokensPerWeight => {
                write!(f, "tokens per weight outside 1..={MAX_TOKENS_PER_WEIGHT}")
            }
            Self::TooManyTokens => write!(f, "more than {MAX_TOKENS} ring tokens"),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Why a tenant could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardError {
    /// The membership has no nodes at all.
    EmptyMembership,
    /// Fewer eligible nodes than nodes per tenant.
    NotEnoughNodes {
        /// Nodes per tenant.
        needed: u32,
        /// Nodes eligible for this tenant now.
        eligible: u32,
    },
    /// No shard within the attempts keeps every pair of tenants at or under the overlap cap.
    OverlapCapUnsatisfiable {
        /// The cap: most nodes two tenants may share.
        max_shared: u32,
        /// Candidate streams tried.
        attempts: u32,
    },
}

impl core::fmt::Display for ShardError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::EmptyMembership => write!(f, "the membership has no nodes"),
            Self::NotEnoughNodes { needed, eligible } => {
                write!(f, "{needed} nodes per tenant but only {eligible} eligible")
            }
            Self::OverlapCapUnsatisfiable {
                max_shared,
                attempts,
            } => write!(
                f,
                "no shard within {attempts} attempts shares at most {max_shared} nodes \
                 with every stored shard"
            ),
        }
    }
}

impl core::error::Error for ShardError {}

/// One node of a tenant's shard, with the state it had when the shard was computed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShardMember {
    node: NodeId,
    zone: ZoneId,
    state: NodeState,
    salt: u64,
}

impl ShardMember {
    /// The node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Its zone.
    pub fn zone(&self) -> ZoneId {
        self.zone
    }

    /// Its state (a failed member is still in the shard during the lookback).
    pub fn state(&self) -> NodeState {
        self.state
    }
}

impl core::fmt::Debug for ShardMember {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The salt is derived from the secret key: leave it out.
        f.debug_struct("ShardMember")
            .field("node", &self.node)
            .field("zone", &self.zone)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A tenant's nodes, sorted by node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    members: Vec<ShardMember>,
}

impl Shard {
    /// The members, sorted by node id.
    pub fn members(&self) -> &[ShardMember] {
        &self.members
    }

    /// The member node ids, ascending.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().map(|m| m.node)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the shard is empty (never true for a shard the sharder returned).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.binary_search_by_key(&node, |m| m.node).is_ok()
    }

    /// How many nodes were replaced between `earlier` and `self`:
    /// `max(|earlier \ self|, |self \ earlier|)`.
    pub fn nodes_changed(&self, earlier: &Shard) -> usize {
        let gone = earlier.nodes().filter(|&n| !self.contains(n)).count();
        let new = self.nodes().filter(|&n| !earlier.contains(n)).count();
        gone.max(new)
    }

    /// The member that serves a flow, from the flow's symmetric hash.
    ///
    /// Rendezvous over the members that are not failed: each scores `mix(flow_hash ^ salt)`
    /// with a secret per-node salt and the highest wins (ties to the larger id). When a member
    /// fails, only the flows it served move; the others stay where they were. Draining members
    /// keep serving. Members are not weighted here: a heavier node already holds more shards.
    /// `None` when every member has failed.
    pub fn node_for_flow(&self, flow_hash: u64) -> Option<NodeId> {
        self.members
            .iter()
            .filter(|m| !matches!(m.state, NodeState::Failed { .. }))
            .max_by_key(|m| (mix64(flow_hash ^ m.salt), m.node))
            .map(|m| m.node)
    }
}

/// Which nodes a placement may use.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rule<'a> {
    /// The stateless rule of the module docs; `kept` are the draining nodes (membership
    /// indices, sorted, unique) of the tenant's previous shard.
    Stateless { now_ns: u64, kept: &'a [u32] },
    /// Active nodes only (stored, capped placements).
    ActiveOnly,
}

/// A last say on each candidate node, in walk order; a `true` answer commits the node.
pub(crate) trait Admit {
    fn admit(&mut self, node: NodeId) -> bool;
}

/// Admits every eligible node (the stateless sharder).
pub(crate) struct AdmitAll;

impl Admit for AdmitAll {
    fn admit(&mut self, _node: NodeId) -> bool {
        true
    }
}

#[derive(Debug, Clone)]
struct Zone {
    id: ZoneId,
    ring: Ring,
    /// Active nodes in the zone.
    active: u32,
    /// Membership indices of the zone's draining and failed nodes.
    inactive: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    salt: u64,
    zone: u16,
}

#[derive(Debug, Clone)]
struct Plan {
    order: u64,
    zone: usize,
    stream: SplitMix64,
    eligible: u32,
    slots: u32,
}

/// Places tenants on a fleet: a keyed, pure function of its inputs.
///
/// Build one per membership snapshot ([`Sharder::new`]); node state changes that keep the same
/// nodes can be applied in place with [`Sharder::set_state`].
///
/// # How a shard is chosen
///
/// Every zone has its own token ring (see the crate docs for the hashed encodings). For each
/// zone a tenant has an independent keyed stream, which gives it [`PROBES`] probe positions on
/// the zone's ring. The tenant's order of the zone's tokens is by clockwise distance from the
/// nearest probe (ties by token position, then node id); to fill `c` slots the sharder takes
/// the first `c` distinct nodes in that order that are eligible (and, for capped placement,
/// admitted), skipping the rest. This is multi-probe consistent hashing (Appleton and
/// O'Reilly, 2015) over a token ring: with one probe it would be the plain ring walk (as in
/// Grafana's dskit), whose load follows the uneven arc lengths; the nearest of several probes
/// behaves almost like an independent random score per token, so every token, and so every
/// node in proportion to its tokens, is about equally likely to come first. With the defaults
/// (8 probes, 128 tokens per unit of weight) the spread of load over nodes is that of uniform
/// random placement (max/mean 1.24 against 1.26 at 1,000 nodes, 3 zones, k = 8 and 20,000
/// tenants, where the single-position walk gave 1.41 to 1.51). The merge of the probes' walks
/// visits a few tokens per slot and stops once every token has been seen.
///
/// **At most one node changes.** The order of a zone's tokens is fixed by the tenant's probes
/// and each token's own position: adding a node inserts its tokens into the order without
/// moving any other token relative to the rest. Selections before and after are the first
/// `c` acceptable distinct nodes of the two orders. Until the first of X's tokens the walks
/// agree; if X's first token comes after the old `c`-th pick, nothing changes; otherwise X is
/// taken there, every later token is judged the same way as before except X's (already
/// chosen), and the walk stops one pick earlier: the old last pick is the only one lost. So
/// the selections differ by at most one swap (X in, one node out). That covers adding a node
/// and raising a node's weight (adding tokens to a node that may already be chosen, which then
/// changes nothing or moves it earlier in the same set); removing a node, lowering a weight
/// and a node becoming ineligible are the reverse events. The per-zone counts (below) move at
/// most one slot from one zone to another per event, and a zone's selection for `c + 1` slots
/// extends its selection for `c`, so the bound holds across zones. Because only tenants whose
/// selection reaches one of X's tokens change, the share of tenants moved is X's share of the
/// placements, about `k/N` for equal weights.
///
/// **Zones.** With `k` nodes per tenant and `Z` declared zones, each zone gets `⌊k/Z⌋` slots and
/// `k mod Z` zones get one more; which zones get the extra slots is decided per tenant by the
/// first value of each zone's stream, so the extra load spreads evenly. No zone gets more than
/// `⌈k/Z⌉` while every zone has that many eligible nodes. A zone with fewer eligible nodes than
/// its slots gives all it has and the missing slots go, in the tenant's zone order, to zones
/// with eligible nodes to spare, so a tenant keeps `k` nodes when a whole zone is lost.
///
/// **Weights.** A node of weight `w` owns `w × tokens_per_weight` tokens and so receives
/// about `w` times the placements of a weight-1 node (sampling `c` distinct nodes flattens very
/// heavy weights a little when `c` is a large part of the zone). Only integer arithmetic is
/// involved; placements are the same on every platform.
///
/// # Node states
///
/// - [`NodeState::Active`]: eligible for every tenant.
/// - [`NodeState::Draining`]: eligible only for a tenant whose `previous` shard (passed to
///   [`Sharder::shard_with_previous`]) already contains it, so that tenant keeps it; every
///   other tenant, and every call to [`Sharder::shard`], places as if it were gone. When it
///   becomes active again, tenants whose walk reaches it get it back (one node changed).
/// - [`NodeState::Failed`] `{ since_ns }`: while `now_ns < since_ns + failed_lookback_ns` it
///   stays eligible for every tenant exactly as if it were active (it is reported with its
///   failed state so the caller sends nothing to it, and [`Shard::node_for_flow`] skips it);
///   from `since_ns + failed_lookback_ns` on it is ineligible for everyone and each tenant that
///   had it gets one replacement. Because every node computes this from the same membership and
///   clock value, they agree without exchanging state, and a tenant that crashes its nodes can
///   reach a new node at most once per lookback per slot instead of walking across the fleet.
#[derive(Clone)]
pub struct Sharder {
    key: ShardKey,
    config: ShardConfig,
    membership: Membership,
    entries: Vec<Entry>,
    zones: Vec<Zone>,
    draining: usize,
}

impl core::fmt::Debug for Sharder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Ring positions and flow salts derive from the secret key: leave them out.
        f.debug_struct("Sharder")
            .field("config", &self.config)
            .field("membership", &self.membership)
            .finish_non_exhaustive()
    }
}

impl Sharder {
    /// Builds the zone rings for `membership`.
    ///
    /// # Errors
    /// [`ConfigError`] when `config` is out of range or the rings would be too large.
    pub fn new(
        key: ShardKey,
        config: ShardConfig,
        membership: Membership,
    ) -> Result<Self, ConfigError> {
        if config.nodes_per_tenant == 0 || config.nodes_per_tenant > MAX_NODES_PER_TENANT {
            return Err(ConfigError::NodesPerTenant);
        }
        if config.tokens_per_weight == 0 || config.tokens_per_weight > MAX_TOKENS_PER_WEIGHT {
            return Err(ConfigError::TokensPerWeight);
        }
        let total: u64 = membership
            .nodes()
            .iter()
            .map(|n| u64::from(n.weight) * u64::from(config.tokens_per_weight))
            .sum();
        if total > MAX_TOKENS {
            return Err(ConfigError::TooManyTokens);
        }
        let zone_ids = membership.zones();
        let entries = membership
            .nodes()
            .iter()
            .map(|n| Entry {
                salt: key.flow_salt(n.id.0),
                // Zones are at most MAX_ZONES (< u16::MAX) and every node's zone is declared.
                zone: zone_ids
                    .binary_search(&n.zone)
                    .map_or(u16::MAX, |z| z as u16),
            })
            .collect();
        let zones = zone_ids
            .iter()
            .map(|&id| Zone {
                id,
                ring: Ring::build(
                    &key,
                    membership
                        .nodes()
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| n.zone == id)
                        .map(|(i, n)| (i as u32, n.id.0, n.weight)),
                    config.tokens_per_weight,
                ),
                active: 0,
                inactive: Vec::new(),
            })
            .collect();
        let mut sharder = Self {
            key,
            config,
            membership,
            entries,
            zones,
            draining: 0,
        };
        sharder.recount();
        Ok(sharder)
    }

    /// The configuration.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// The membership snapshot.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Changes one node's state without rebuilding the rings; returns its previous state, or
    /// `None` (and changes nothing) if there is no such node.
    pub fn set_state(&mut self, node: NodeId, state: NodeState) -> Option<NodeState> {
        let n = self.membership.node_mut(node)?;
        let was = core::mem::replace(&mut n.state, state);
        self.recount();
        Some(was)
    }

    /// Places a tenant that has no shard yet (or whose previous shard is not known).
    ///
    /// Draining nodes are never chosen; see [`Sharder::shard_with_previous`] for tenants that
    /// already have a shard.
    ///
    /// # Errors
    /// [`ShardError::EmptyMembership`] or [`ShardError::NotEnoughNodes`].
    pub fn shard(&self, tenant: &[u8], now_ns: u64) -> Result<Shard, ShardError> {
        self.place(
            tenant,
            Rule::Stateless { now_ns, kept: &[] },
            0,
            &mut AdmitAll,
        )?
        .ok_or(ShardError::NotEnoughNodes {
            needed: self.config.nodes_per_tenant,
            eligible: 0,
        })
    }

    /// Places a tenant whose current shard is `previous`: draining nodes in `previous` stay
    /// eligible for it, so it keeps them. Other entries of `previous` have no effect.
    ///
    /// # Errors
    /// [`ShardError::EmptyMembership`] or [`ShardError::NotEnoughNodes`].
    pub fn shard_with_previous(
        &self,
        tenant: &[u8],
        now_ns: u64,
        previous: &[NodeId],
    ) -> Result<Shard, ShardError> {
        let mut kept: Vec<u32> = Vec::new();
        if self.draining > 0 {
            kept.extend(previous.iter().filter_map(|&id| {
                let i = self.membership.index_of(id)?;
                let n = self.membership.nodes().get(i)?;
                (n.state == NodeState::Draining).then_some(i as u32)
            }));
            kept.sort_unstable();
            kept.dedup();
        }
        self.place(
            tenant,
            Rule::Stateless {
                now_ns,
                kept: &kept,
            },
            0,
            &mut AdmitAll,
        )?
        .ok_or(ShardError::NotEnoughNodes {
            needed: self.config.nodes_per_tenant,
            eligible: 0,
        })
    }

    /// Recomputes the per-zone counts after a state change.
    fn recount(&mut self) {
        for z in &mut self.zones {
            z.active = 0;
            z.inactive.clear();
        }
        self.draining = 0;
        for (i, (n, e)) in self
            .membership
            .nodes()
            .iter()
            .zip(&self.entries)
            .enumerate()
        {
            let Some(z) = self.zones.get_mut(usize::from(e.zone)) else {
                continue;
            };
            match n.state {
                NodeState::Active => z.active += 1,
                NodeState::Draining => {
                    self.draining += 1;
                    z.inactive.push(i as u32);
                }
                NodeState::Failed { .. } => z.inactive.push(i as u32),
            }
        }
    }

    fn in_lookback(&self, state: NodeState, now_ns: u64) -> bool {
        match state {
            NodeState::Failed { since_ns } => {
                now_ns < since_ns.saturating_add(self.config.failed_lookback_ns)
            }
            _ => false,
        }
    }

    fn eligible(&self, index: u32, state: NodeState, rule: Rule<'_>) -> bool {
        match (state, rule) {
            (NodeState::Active, _) => true,
            (_, Rule::ActiveOnly) => false,
            (NodeState::Draining, Rule::Stateless { kept, .. }) => {
                kept.binary_search(&index).is_ok()
            }
            (NodeState::Failed { .. }, Rule::Stateless { now_ns, .. }) => {
                self.in_lookback(state, now_ns)
            }
        }
    }

    fn eligible_in_zone(&self, zone_index: usize, zone: &Zone, rule: Rule<'_>) -> u32 {
        match rule {
            Rule::ActiveOnly => zone.active,
            Rule::Stateless { now_ns, kept } => {
                let nodes = self.membership.nodes();
                let failed = zone
                    .inactive
                    .iter()
                    .filter(|&&i| {
                        nodes
                            .get(i as usize)
                            .is_some_and(|n| self.in_lookback(n.state, now_ns))
                    })
                    .count();
                let drained = kept
                    .iter()
                    .filter(|&&i| {
                        self.entries
                            .get(i as usize)
                            .is_some_and(|e| usize::from(e.zone) == zone_index)
                    })
                    .count();
                zone.active + failed as u32 + drained as u32
            }
        }
    }

    /// The placement itself; `Ok(None)` when `admit` refused every remaining node of a zone.
    pub(crate) fn place<A: Admit>(
        &self,
        tenant: &[u8],
        rule: Rule<'_>,
        attempt: u32,
        admit: &mut A,
    ) -> Result<Option<Shard>, ShardError> {
        if self.membership.is_empty() {
            return Err(ShardError::EmptyMembership);
        }
        let k = self.config.nodes_per_tenant;
        let streams = self.key.zone_streams(tenant, attempt);
        let mut plans: Vec<Plan> = Vec::with_capacity(self.zones.len());
        let mut total = 0u32;
        for (zi, zone) in self.zones.iter().enumerate() {
            let eligible = self.eligible_in_zone(zi, zone, rule);
            let mut stream = SplitMix64::new(streams.seed(zone.id.0));
            let order = stream.next_u64();
            plans.push(Plan {
                order,
                zone: zi,
                stream,
                eligible,
                slots: 0,
            });
            total = total.saturating_add(eligible);
        }
        if total < k {
            return Err(ShardError::NotEnoughNodes {
                needed: k,
                eligible: total,
            });
        }
        // The tenant's zone order: extra slots first, then spill-over, go in this order.
        plans.sort_unstable_by_key(|p| (p.order, p.zone));
        debug_assert!(plans.len() <= MAX_ZONES);
        let zones = plans.len() as u32;
        let (base, extra) = (k / zones, k % zones);
        let mut left = k;
        for (rank, p) in plans.iter_mut().enumerate() {
            let want = base + u32::from((rank as u32) < extra);
            p.slots = want.min(p.eligible);
            left -= p.slots;
        }
        for p in &mut plans {
            let more = left.min(p.eligible - p.slots);
            p.slots += more;
            left -= more;
        }

        let mut members: Vec<ShardMember> = Vec::with_capacity(k as usize);
        for p in &mut plans {
            let Some(zone) = self.zones.get(p.zone) else {
                continue;
            };
            if p.slots == 0 {
                continue;
            }
            let mut probes = Probe::launch(&zone.ring, &mut p.stream);
            if !self.take(&zone.ring, &mut probes, p.slots, rule, &mut members, admit) {
                return Ok(None);
            }
        }
        members.sort_unstable_by_key(|m| m.node);
        Ok(Some(Shard { members }))
    }

    /// Appends the first `slots` eligible, unchosen, admitted nodes of the zone in the tenant's
    /// order (see [`Sharder`]): the zone's tokens by clockwise distance from the nearest of the
    /// tenant's [`PROBES`] probes. `false` when the tokens ran out first.
    fn take<A: Admit>(
        &self,
        ring: &Ring,
        probes: &mut [Probe; PROBES],
        slots: u32,
        rule: Rule<'_>,
        members: &mut Vec<ShardMember>,
        admit: &mut A,
    ) -> bool {
        if slots == 0 {
            return true;
        }
        let first = members.len();
        let len = ring.len();
        let mut taken = 0u32;
        // Walks that reject this many tokens (a fleet mostly ineligible, or an overlap cap
        // that refuses most nodes) start retiring probes, so they end after about one lap.
        let mut until_limit = 4 * PROBES;
        loop {
            if until_limit == 0 {
                Probe::limit(probes);
            }
            until_limit = until_limit.wrapping_sub(1);
            // The nearest (token, probe) pair not yet visited; ties by position, then owner
            // (node-id order), then probe, so the order never depends on other nodes' tokens.
            // Retired probes rank last (their key is all ones; a live owner never is
            // u32::MAX). Distances are compared alone, without branches; they tie only when
            // two probes share a point or have retired, and then the whole key decides.
            let mut best = 0usize;
            let mut near = u64::MAX;
            for (pi, p) in probes.iter().enumerate() {
                if p.key.0 < near {
                    near = p.key.0;
                    best = pi;
                }
            }
            if probes.iter().filter(|p| p.key.0 == near).count() > 1 {
                best = (0..PROBES)
                    .min_by_key(|&pi| probes.get(pi).map_or(Probe::RETIRED, |p| p.key))
                    .unwrap_or(0);
            }
            let Some(p) = probes.get_mut(best) else {
                return false;
            };
            if p.left == 0 {
                // Every probe is retired: every token has been visited.
                return false;
            }
            let index = p.key.2;
            // After one probe's full lap every token has been seen: nothing is left to take.
            p.left -= 1;
            let lap_done = p.left == 0;
            p.next += 1;
            if p.next == len {
                p.next = 0;
            }
            p.aim(ring);
            let chosen = members.get(first..).unwrap_or(&[]);
            if let Some(n) = self.membership.nodes().get(index as usize)
                && self.eligible(index, n.state, rule)
                && !chosen.iter().any(|m| m.node == n.id)
                && admit.admit(n.id)
            {
                let salt = self.entries.get(index as usize).map_or(0, |e| e.salt);
                members.push(ShardMember {
                    node: n.id,
                    zone: n.zone,
                    state: n.state,
                    salt,
                });
                taken += 1;
                if taken == slots {
                    return true;
                }
            }
            if lap_done {
                return false;
            }
        }
    }
}

/// One of a tenant's probes on a zone ring: its position, the next token it reaches, and how
/// many tokens it may still visit (0: retired).
#[derive(Debug, Clone, Copy)]
struct Probe {
    at: u64,
    next: usize,
    left: usize,
    /// Clockwise distance to the next probe: tokens this far or farther are not new.
    reach: u64,
    /// (clockwise distance, position, owner) of the token at `next`; [`Probe::RETIRED`] once
    /// retired.
    key: (u64, u64, u32),
}

impl Probe {
    /// The next [`PROBES`] positions of `stream`, each aimed at its first token.
    fn launch(ring: &Ring, stream: &mut SplitMix64) -> [Probe; PROBES] {
        let at: [u64; PROBES] = core::array::from_fn(|_| stream.next_u64());
        let next = ring.first_at_or_after_each(at);
        core::array::from_fn(|i| {
            let mut p = Probe {
                at: at.get(i).copied().unwrap_or(0),
                next: next.get(i).copied().unwrap_or(0),
                left: ring.len(),
                reach: u64::MAX,
                key: Probe::RETIRED,
            };
            p.aim(ring);
            p
        })
    }

    /// Sets every probe's reach and retires those already past it. Past the next probe
    /// clockwise, every token a probe reaches was visited before from that probe (nearer, or as
    /// near with a lower number), so a long, fruitless walk can stop once every probe got there.
    fn limit(probes: &mut [Probe; PROBES]) {
        let at: [u64; PROBES] = core::array::from_fn(|i| probes.get(i).map_or(0, |p| p.at));
        for (i, p) in probes.iter_mut().enumerate() {
            p.reach = at
                .iter()
                .enumerate()
                .filter(|&(j, &there)| j != i && (j < i || there != p.at))
                .map(|(_, &there)| there.wrapping_sub(p.at))
                .min()
                .unwrap_or(u64::MAX);
            if p.key.0 >= p.reach {
                p.retire();
            }
        }
    }

    /// Reads the token at `next`; retires the probe when it has nothing new to show.
    fn aim(&mut self, ring: &Ring) {
        match ring.token(self.next) {
            Some((pos, owner)) if self.left > 0 => {
                self.key = (pos.wrapping_sub(self.at), pos, owner);
                if self.key.0 >= self.reach {
                    self.retire();
                }
            }
            _ => self.retire(),
        }
    }

    /// The key of a retired probe: after every live one.
    const RETIRED: (u64, u64, u32) = (u64::MAX, u64::MAX, u32::MAX);

    fn retire(&mut self) {
        self.left = 0;
        self.key = Self::RETIRED;
    }
}
