//! Listeners and their pools: which flows a listener takes (a VIP, port and protocol, or a
//! whole VIP), which of the flow's fields choose its backend, and the pool of backends with
//! health and weights from which its Maglev table is built.

use crate::backend::{Backend, BackendId, BuildError};
use crate::key::LbKey;
use crate::maglev::MaglevTable;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::{Family, FlowKey};

/// Health of a pool member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Receives new flows in proportion to its weight.
    Up,
    /// Receives no new flows; only its own table entries move (its established flows are the
    /// session layer's to keep).
    Draining,
    /// Out of the table (built as if absent).
    Down,
}

/// One backend of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolMember {
    /// The backend's identity (see [`BackendId::v4`] for an address and port).
    pub id: BackendId,
    /// Relative weight; 0 receives nothing.
    pub weight: u32,
    /// Health.
    pub health: Health,
}

impl PoolMember {
    /// A member that is up, with the given weight.
    pub const fn new(id: BackendId, weight: u32) -> Self {
        Self {
            id,
            weight,
            health: Health::Up,
        }
    }

    /// The same member with another health.
    #[must_use]
    pub const fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// The member as a table backend: draining keeps its weight and place, down is weight 0.
    pub const fn backend(&self) -> Backend {
        match self.health {
            Health::Up => Backend::new(self.id, self.weight),
            Health::Draining => Backend::new(self.id, self.weight).draining(),
            Health::Down => Backend::new(self.id, 0),
        }
    }
}

/// A pool of backends with health and weights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    members: Vec<PoolMember>,
}

impl Pool {
    /// A pool of these members (in any order).
    pub fn new(members: impl IntoIterator<Item = PoolMember>) -> Self {
        Self {
            members: members.into_iter().collect(),
        }
    }

    /// The members, in the order given.
    pub fn members(&self) -> &[PoolMember] {
        &self.members
    }

    /// Sets a member's health; false if no member has that identity.
    pub fn set_health(&mut self, id: &BackendId, health: Health) -> bool {
        self.member_mut(id).map(|m| m.health = health).is_some()
    }

    /// Sets a member's weight; false if no member has that identity.
    pub fn set_weight(&mut self, id: &BackendId, weight: u32) -> bool {
        self.member_mut(id).map(|m| m.weight = weight).is_some()
    }

    /// Adds a member (a repeated identity is refused when the table is built).
    pub fn add(&mut self, member: PoolMember) {
        self.members.push(member);
    }

    /// Removes a member; false if none has that identity.
    pub fn remove(&mut self, id: &BackendId) -> bool {
        let before = self.members.len();
        self.members.retain(|m| m.id != *id);
        self.members.len() != before
    }

    fn member_mut(&mut self, id: &BackendId) -> Option<&mut PoolMember> {
        self.members.iter_mut().find(|m| m.id == *id)
    }

    /// The pool's Maglev table of `size` slots.
    ///
    /// # Errors
    ///
    /// As [`MaglevTable::new`]; [`BuildError::NoServingBackend`] when no member is up with a
    /// weight above 0.
    pub fn table(&self, key: &LbKey, size: u32) -> Result<MaglevTable, BuildError> {
        let backends: Vec<Backend> = self.members.iter().map(PoolMember::backend).collect();
        MaglevTable::new(key, size, &backends)
    }
}

/// Which fields of a flow choose its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashFields {
    /// Zone, addresses, protocol and ports.
    #[default]
    FiveTuple,
    /// Zone, source and destination address, protocol (GWLB's 3-tuple).
    ThreeTuple,
    /// Zone, source and destination address.
    TwoTuple,
    /// Zone and source address only (every flow of a client to one backend).
    SourceIp,
}

impl HashFields {
    /// The flow key with the fields that do not count set to zero (the unspecified address
    /// for the destination): its [`FlowHasher::hash`](nf_core::FlowHasher::hash) is the
    /// listener's flow hash.
    pub fn project(self, key: &FlowKey) -> FlowKey {
        let mut k = *key;
        if self == Self::FiveTuple {
            return k;
        }
        k.src_port = 0;
        k.dst_port = 0;
        if self == Self::ThreeTuple {
            return k;
        }
        k.proto = 0;
        if self == Self::TwoTuple {
            return k;
        }
        let unspecified = match key.family() {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        FlowKey::from_addrs(k.zone, key.src_ip(), unspecified, 0, 0, 0).unwrap_or(k)
    }
}

/// The flows a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMatch {
    /// Flows to one VIP, port and IP protocol.
    Port {
        /// Virtual IP.
        vip: IpAddr,
        /// Destination port.
        port: u16,
        /// IP protocol number.
        proto: u8,
    },
    /// Every flow to a VIP (any protocol and port).
    Vip(IpAddr),
}

impl ListenerMatch {
    /// Whether the flow is one this listener takes.
    pub fn matches(&self, key: &FlowKey) -> bool {
        match *self {
            Self::Port { vip, port, proto } => {
                key.dst_ip() == vip && key.dst_port == port && key.proto == proto
            }
            Self::Vip(vip) => key.dst_ip() == vip,
        }
    }
}

/// A listener: the flows it takes, the fields that choose their backend, and its pool's table.
#[derive(Debug, Clone)]
pub struct Listener {
    on: ListenerMatch,
    fields: HashFields,
    pool: Pool,
    table: MaglevTable,
}

impl Listener {
    /// A listener with its pool's table built (`size` slots).
    ///
    /// # Errors
    ///
    /// As [`Pool::table`].
    pub fn new(
        key: &LbKey,
        on: ListenerMatch,
        fields: HashFields,
        pool: Pool,
        size: u32,
    ) -> Result<Self, BuildError> {
        let table = pool.table(key, size)?;
        Ok(Self {
            on,
            fields,
            pool,
            table,
        })
    }

    /// The flows it takes.
    pub fn on(&self) -> ListenerMatch {
        self.on
    }

    /// The fields that choose a flow's backend.
    pub fn fields(&self) -> HashFields {
        self.fields
    }

    /// Its pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Its table.
    pub fn table(&self) -> &MaglevTable {
        &self.table
    }

    /// The flow's hash under this listener's fields.
    pub fn flow_hash(&self, key: &FlowKey) -> u64 {
        self.table.flow_hash(&self.fields.project(key))
    }

    /// The backend for a flow (by this listener's fields).
    pub fn backend_for(&self, key: &FlowKey) -> Option<&Backend> {
        self.table.backend(self.flow_hash(key))
    }
}

/// Why a set of listeners was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerError {
    /// Two listeners take the same flows.
    Duplicate(ListenerMatch),
}

impl core::fmt::Display for ListenerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Duplicate(m) => write!(f, "two listeners on {m:?}"),
        }
    }
}

impl core::error::Error for ListenerError {}

/// A set of listeners: a flow goes to the listener on its VIP, port and protocol, else to the
/// whole-VIP listener, else to none. Lookups scan the set (meant for tens of listeners).
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    listeners: Vec<Listener>,
}

impl Listeners {
    /// The set of `listeners`.
    ///
    /// # Errors
    ///
    /// [`ListenerError::Duplicate`] when two take the same flows.
    pub fn new(listeners: Vec<Listener>) -> Result<Self, ListenerError> {
        for (i, a) in listeners.iter().enumerate() {
            if listeners.iter().skip(i + 1).any(|b| b.on == a.on) {
                return Err(ListenerError::Duplicate(a.on));
            }
        }
        Ok(Self { listeners })
    }

    /// The listeners, in the order given.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// The listener that takes a flow: port listeners before whole-VIP ones.
    pub fn find(&self, key: &FlowKey) -> Option<&Listener> {
        let port = |l: &&Listener| matches!(l.on, ListenerMatch::Port { .. }) && l.on.matches(key);
        self.listeners
            .iter()
            .find(port)
            .or_else(|| self.listeners.iter().find(|l| l.on.matches(key)))
    }
}
