//! The stateful sharder: shards that share at most `m` nodes with every stored shard.
//!
//! See [`Sharder::shard_capped`].

use crate::membership::NodeId;
use crate::sharder::{Admit, Rule, Shard, ShardError, Sharder};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Where the caller keeps the shards already handed out.
pub trait ShardStore {
    /// Calls `visit` once with the id of each stored shard that contains `node`.
    ///
    /// Ids are the store's own; they only need to be distinct between shards.
    fn shards_containing(&self, node: NodeId, visit: &mut dyn FnMut(u64));

    /// Records `tenant`'s shard (replacing any shard stored for it before).
    fn insert(&mut self, tenant: &[u8], nodes: &[NodeId]);
}

/// The overlap cap and how hard to look for a shard that meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlapCap {
    /// Most nodes any two tenants may share (`m`).
    pub max_shared: u32,
    /// Candidate streams to try before giving up (0 counts as 1).
    pub attempts: u32,
}

impl OverlapCap {
    /// At most `max_shared` shared nodes, 64 attempts.
    pub const fn new(max_shared: u32) -> Self {
        Self {
            max_shared,
            attempts: 64,
        }
    }
}

/// Admits a node only while the partial shard stays within the cap against every stored shard.
struct CapCheck<'s, S: ?Sized> {
    store: &'s S,
    max_shared: u32,
    /// Stored shard id → nodes it shares with the partial shard.
    shared: BTreeMap<u64, u32>,
    scratch: Vec<u64>,
}

impl<S: ShardStore + ?Sized> Admit for CapCheck<'_, S> {
    fn admit(&mut self, node: NodeId) -> bool {
        let scratch = &mut self.scratch;
        scratch.clear();
        self.store
            .shards_containing(node, &mut |id| scratch.push(id));
        let over = scratch
            .iter()
            .any(|id| self.shared.get(id).copied().unwrap_or(0) >= self.max_shared);
        if over {
            return false;
        }
        for &id in scratch.iter() {
            *self.shared.entry(id).or_insert(0) += 1;
        }
        true
    }
}

impl Sharder {
    /// Chooses a shard for `tenant` that shares at most `cap.max_shared` nodes with every shard
    /// in `store`, without recording it.
    ///
    /// `store` must not hold a shard for `tenant` itself (it would count against the new one).
    ///
    /// Route 53 caps how many nodes any two customers may share. That cannot be a pure function
    /// of the tenant alone: it depends on every shard already handed out, so the caller keeps
    /// them in a [`ShardStore`] and the sharder consults it. Each attempt runs the stateless walk
    /// with one more rule: a node is taken only if adding it keeps the partial shard's overlap
    /// with every stored shard at or under the cap. Attempt 0 uses the tenant's stateless
    /// streams (so when the cap does not bind, the capped shard is the stateless one on an
    /// all-active fleet); attempt `a` uses streams keyed with `a`. When every attempt runs into a
    /// zone with no admissible node the result is [`ShardError::OverlapCapUnsatisfiable`].
    ///
    /// Capped placement uses active nodes only: a stored shard should not start out on a draining
    /// or failed node.
    ///
    /// # Errors
    /// [`ShardError::EmptyMembership`], [`ShardError::NotEnoughNodes`] (counting active nodes
    /// only), or [`ShardError::OverlapCapUnsatisfiable`] when no attempt met the cap.
    pub fn shard_capped<S: ShardStore + ?Sized>(
        &self,
        tenant: &[u8],
        cap: OverlapCap,
        store: &S,
    ) -> Result<Shard, ShardError> {
        let attempts = cap.attempts.max(1);
        for attempt in 0..attempts {
            let mut check = CapCheck {
                store,
                max_shared: cap.max_shared,
                shared: BTreeMap::new(),
                scratch: Vec::new(),
            };
            if let Some(shard) = self.place(tenant, Rule::ActiveOnly, attempt, &mut check)? {
                return Ok(shard);
            }
        }
        Err(ShardError::OverlapCapUnsatisfiable {
            max_shared: cap.max_shared,
            attempts,
        })
    }

    /// [`Sharder::shard_capped`], then records the shard in `store`.
    ///
    /// # Errors
    /// As [`Sharder::shard_capped`]; nothing is recorded on error.
    pub fn assign_capped<S: ShardStore + ?Sized>(
        &self,
        tenant: &[u8],
        cap: OverlapCap,
        store: &mut S,
    ) -> Result<Shard, ShardError> {
        let shard = self.shard_capped(tenant, cap, &*store)?;
        let nodes: Vec<NodeId> = shard.nodes().collect();
        store.insert(tenant, &nodes);
        Ok(shard)
    }
}

/// An in-memory [`ShardStore`]: shards by tenant, indexed by node.
#[derive(Debug, Clone, Default)]
pub struct MemoryShardStore {
    by_tenant: BTreeMap<Vec<u8>, u64>,
    shards: BTreeMap<u64, Vec<NodeId>>,
    by_node: BTreeMap<NodeId, Vec<u64>>,
    next_id: u64,
}

impl MemoryShardStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether no shard is stored.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The shard stored for `tenant`.
    pub fn shard_of(&self, tenant: &[u8]) -> Option<&[NodeId]> {
        let id = self.by_tenant.get(tenant)?;
        self.shards.get(id).map(Vec::as_slice)
    }

    /// Every stored shard, in insertion order.
    pub fn shards(&self) -> impl Iterator<Item = &[NodeId]> + '_ {
        self.shards.values().map(Vec::as_slice)
    }

    /// Forgets `tenant`'s shard; returns whether there was one.
    pub fn remove(&mut self, tenant: &[u8]) -> bool {
        let Some(id) = self.by_tenant.remove(tenant) else {
            return false;
        };
        if let Some(nodes) = self.shards.remove(&id) {
            for n in nodes {
                if let Some(ids) = self.by_node.get_mut(&n) {
                    ids.retain(|&x| x != id);
                    if ids.is_empty() {
                        self.by_node.remove(&n);
                    }
                }
            }
        }
        true
    }
}

impl ShardStore for MemoryShardStore {
    fn shards_containing(&self, node: NodeId, visit: &mut dyn FnMut(u64)) {
        for &id in self.by_node.get(&node).map_or(&[][..], Vec::as_slice) {
            visit(id);
        }
    }

    fn insert(&mut self, tenant: &[u8], nodes: &[NodeId]) {
        self.remove(tenant);
        let id = self.next_id;
        self.next_id += 1;
        let mut nodes = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        for &n in &nodes {
            self.by_node.entry(n).or_default().push(id);
        }
        self.shards.insert(id, nodes);
        self.by_tenant.insert(tenant.to_vec(), id);
    }
}
