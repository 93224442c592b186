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
    /// more even spread and a larger, slower-to-build ring. Changing it moves most tenants.
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
/// zone a tenant has an independent keyed stream of ring positions. To fill `c` slots in a zone,
/// the sharder takes the next position from the stream, walks clockwise from it, and takes the
/// first token whose node is eligible and not yet chosen; it repeats for each slot. This is
/// the walk Grafana's dskit uses for its shuffle-sharding ring, here with keyed tokens and
/// one stream per zone.
///
/// **At most one node changes.** Compare, slot by slot, the walks before and after a node X's
/// tokens are added. Invariant: the two selections are equal or differ by one swap (one old
/// node out, one other node in). Until they first differ, X's tokens are the only tokens the
/// walks see differently, so the first difference is X taken instead of the old choice. From
/// then on X is chosen in the new walk and its tokens are skipped, so both walks run over the
/// same tokens with skip sets that differ by one swap `a ↔ b`; the new walk then stops where
/// the old one did, or earlier at an `a` token, or (when the old walk stopped at `b`) later, at
/// an `a` token or another node, and in every case the selections still differ by at most one
/// swap. That covers adding a node and raising a node's weight (adding tokens to a node that
/// may already be chosen); removing a node, lowering a weight and a node becoming ineligible
/// are the reverse events. The per-zone counts (below) move at most one slot from one zone to
/// another per event, and a zone's selection for `c + 1` slots extends its selection for `c`,
/// so the bound holds across zones.
///
/// **Zones.** With `k` nodes per tenant and `Z` declared zones, each zone gets `⌊k/Z⌋` slots and
/// `k mod Z` zones get one more; which zones get the extra slots is decided per tenant by the
/// first value of each zone's stream, so the extra load spreads evenly. No zone gets more than
/// `⌈k/Z⌉` while every zone has that many eligible nodes. A zone with fewer eligible nodes than
/// its slots gives all it has and the missing slots go, in the tenant's zone order, to zones
/// with eligible nodes to spare, so a tenant keeps `k` nodes when a whole zone is lost.
///
/// **Weights.** A node of weight `w` owns `w × tokens_per_weight` tokens, so it covers about
/// `w` times the arc of a weight-1 node and receives placements in that proportion (up to the
/// random spread of arc lengths, relative standard deviation about `1/√(w × tokens_per_weight)`).
/// Only integer arithmetic is involved; placements are the same on every platform.
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
        let mut plans: Vec<Plan> = Vec::with_capacity(self.zones.len());
        let mut total = 0u32;
        for (zi, zone) in self.zones.iter().enumerate() {
            let eligible = self.eligible_in_zone(zi, zone, rule);
            let mut stream = SplitMix64::new(self.key.zone_stream(tenant, zone.id.0, attempt));
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
            let first = members.len();
            for _ in 0..p.slots {
                let pos = p.stream.next_u64();
                let chosen = members.get(first..).unwrap_or(&[]);
                match self.walk(&zone.ring, pos, rule, chosen, admit) {
                    Some(m) => members.push(m),
                    None => return Ok(None),
                }
            }
        }
        members.sort_unstable_by_key(|m| m.node);
        Ok(Some(Shard { members }))
    }

    /// First eligible, unchosen, admitted node clockwise from `pos`; at most one lap.
    fn walk<A: Admit>(
        &self,
        ring: &Ring,
        pos: u64,
        rule: Rule<'_>,
        chosen: &[ShardMember],
        admit: &mut A,
    ) -> Option<ShardMember> {
        let len = ring.len();
        let mut i = ring.first_at_or_after(pos);
        for _ in 0..len {
            if let Some(index) = ring.owner(i)
                && let Some(n) = self.membership.nodes().get(index as usize)
                && self.eligible(index, n.state, rule)
                && !chosen.iter().any(|m| m.node == n.id)
                && admit.admit(n.id)
            {
                let salt = self.entries.get(index as usize).map_or(0, |e| e.salt);
                return Some(ShardMember {
                    node: n.id,
                    zone: n.zone,
                    state: n.state,
                    salt,
                });
            }
            i += 1;
            if i == len {
                i = 0;
            }
        }
        None
    }
}
