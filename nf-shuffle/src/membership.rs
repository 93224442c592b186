//! The fleet as the sharder sees it: nodes with an id, a zone, a weight and a state.
//!
//! A [`Membership`] is a validated snapshot: node ids are unique, weights are in
//! `1..=`[`MAX_WEIGHT`], every node's zone is declared, and nodes are kept sorted by id so the
//! order the caller lists them in never matters.

use alloc::vec::Vec;

/// Largest accepted node weight.
pub const MAX_WEIGHT: u32 = 1_000;

/// Largest number of zones (or cells) in one membership.
pub const MAX_ZONES: usize = 64;

/// A node's stable identity (for example its index in the fleet inventory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// An availability zone, or any cell whose simultaneous loss tenants must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ZoneId(pub u32);

/// What a node may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Serving, and eligible for new placements.
    Active,
    /// Still serving the tenants that already have it, but receives no new placements.
    Draining,
    /// Down since `since_ns` (caller's clock, nanoseconds); replaced in shards only after the
    /// sharder's lookback has elapsed.
    Failed {
        /// When the node was declared failed.
        since_ns: u64,
    },
}

/// One member of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node {
    /// Stable identity.
    pub id: NodeId,
    /// Zone (or cell) the node lives in.
    pub zone: ZoneId,
    /// Relative capacity, `1..=MAX_WEIGHT`: a weight-2 node receives about twice the placements.
    pub weight: u32,
    /// Whether it is active, draining or failed.
    pub state: NodeState,
}

impl Node {
    /// An active node of weight 1.
    pub const fn new(id: u64, zone: u32) -> Self {
        Self {
            id: NodeId(id),
            zone: ZoneId(zone),
            weight: 1,
            state: NodeState::Active,
        }
    }

    /// The same node with another weight.
    #[must_use]
    pub const fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The same node in another state.
    #[must_use]
    pub const fn with_state(mut self, state: NodeState) -> Self {
        self.state = state;
        self
    }
}

/// Why a membership was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipError {
    /// Two nodes share this id.
    DuplicateNode(NodeId),
    /// A zone is declared twice.
    DuplicateZone(ZoneId),
    /// This node's weight is 0 or above [`MAX_WEIGHT`].
    BadWeight(NodeId),
    /// This node names a zone that was not declared.
    UndeclaredZone(NodeId, ZoneId),
    /// More than [`MAX_ZONES`] zones.
    TooManyZones,
}

impl core::fmt::Display for MembershipError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::DuplicateNode(n) => write!(f, "node {} listed twice", n.0),
            Self::DuplicateZone(z) => write!(f, "zone {} declared twice", z.0),
            Self::BadWeight(n) => write!(f, "node {} has a weight outside 1..={MAX_WEIGHT}", n.0),
            Self::UndeclaredZone(n, z) => write!(f, "node {} is in undeclared zone {}", n.0, z.0),
            Self::TooManyZones => write!(f, "more than {MAX_ZONES} zones"),
        }
    }
}

impl core::error::Error for MembershipError {}

/// A validated fleet snapshot: nodes sorted by id, and the sorted list of zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    nodes: Vec<Node>,
    zones: Vec<ZoneId>,
}

impl Membership {
    /// Validates `nodes`; the zones are the distinct zones the nodes name.
    ///
    /// Adding the first node of a brand-new zone changes the number of zones and so every
    /// tenant's per-zone quotas; declare zones ahead of time with [`Membership::with_zones`]
    /// to keep the one-node-moved guarantee for that event too.
    ///
    /// # Errors
    /// [`MembershipError`] for duplicate ids, bad weights or too many zones.
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Result<Self, MembershipError> {
        let nodes: Vec<Node> = nodes.into_iter().collect();
        let mut zones: Vec<ZoneId> = nodes.iter().map(|n| n.zone).collect();
        zones.sort_unstable();
        zones.dedup();
        Self::build(zones, nodes)
    }

    /// Validates `nodes` against an explicit list of zones (which may include empty zones).
    ///
    /// # Errors
    /// [`MembershipError`] for duplicate ids or zones, bad weights, a node in an undeclared
    /// zone, or too many zones.
    pub fn with_zones(
        zones: impl IntoIterator<Item = ZoneId>,
        nodes: impl IntoIterator<Item = Node>,
    ) -> Result<Self, MembershipError> {
        let mut zones: Vec<ZoneId> = zones.into_iter().collect();
        zones.sort_unstable();
        if let Some(w) = zones.windows(2).find(|w| w.first() == w.get(1))
            && let Some(&z) = w.first()
        {
            return Err(MembershipError::DuplicateZone(z));
        }
        Self::build(zones, nodes.into_iter().collect())
    }

    fn build(zones: Vec<ZoneId>, mut nodes: Vec<Node>) -> Result<Self, MembershipError> {
        if zones.len() > MAX_ZONES {
            return Err(MembershipError::TooManyZones);
        }
        nodes.sort_unstable_by_key(|n| n.id);
        for pair in nodes.windows(2) {
            if let [a, b] = pair
                && a.id == b.id
            {
                return Err(MembershipError::DuplicateNode(a.id));
            }
        }
        for n in &nodes {
            if n.weight == 0 || n.weight > MAX_WEIGHT {
                return Err(MembershipError::BadWeight(n.id));
            }
            if zones.binary_search(&n.zone).is_err() {
                return Err(MembershipError::UndeclaredZone(n.id, n.zone));
            }
        }
        Ok(Self { nodes, zones })
    }

    /// All nodes, sorted by id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The declared zones, sorted.
    pub fn zones(&self) -> &[ZoneId] {
        &self.zones
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        let i = self.nodes.binary_search_by_key(&id, |n| n.id).ok()?;
        self.nodes.get(i)
    }

    /// Number of nodes (in any state).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        let i = self.nodes.binary_search_by_key(&id, |n| n.id).ok()?;
        self.nodes.get_mut(i)
    }

    pub(crate) fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.binary_search_by_key(&id, |n| n.id).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn order_does_not_matter() {
        let a = Membership::new(vec![Node::new(2, 0), Node::new(1, 1)]).unwrap();
        let b = Membership::new(vec![Node::new(1, 1), Node::new(2, 0)]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.zones(), &[ZoneId(0), ZoneId(1)]);
        assert_eq!(a.node(NodeId(2)).unwrap().zone, ZoneId(0));
        assert!(a.node(NodeId(3)).is_none());
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            Membership::new(vec![Node::new(1, 0), Node::new(1, 1)]),
            Err(MembershipError::DuplicateNode(NodeId(1)))
        );
        assert_eq!(
            Membership::new(vec![Node::new(1, 0).with_weight(0)]),
            Err(MembershipError::BadWeight(NodeId(1)))
        );
        assert_eq!(
            Membership::new(vec![Node::new(1, 0).with_weight(MAX_WEIGHT + 1)]),
            Err(MembershipError::BadWeight(NodeId(1)))
        );
        assert_eq!(
            Membership::with_zones([ZoneId(0)], vec![Node::new(1, 2)]),
            Err(MembershipError::UndeclaredZone(NodeId(1), ZoneId(2)))
        );
        assert_eq!(
            Membership::with_zones([ZoneId(0), ZoneId(0)], vec![]),
            Err(MembershipError::DuplicateZone(ZoneId(0)))
        );
        assert_eq!(
            Membership::new((0..=MAX_ZONES as u64).map(|i| Node::new(i, i as u32))),
            Err(MembershipError::TooManyZones)
        );
        assert!(Membership::new(vec![]).unwrap().is_empty());
    }
}
