//! Listeners and their pools: which flows a listener takes (a VIP, port and protocol, or a
//! whole VIP), which of the flow's fields choose its backend, and the pool of backends with
//! health and weights from which its Maglev table (or rendezvous set) is built.

use crate::backend::{Backend, BackendId, BuildError};
use crate::key::LbKey;
use crate::maglev::MaglevTable;
use crate::rendezvous::Rendezvous;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::{Family, FlowKey, NO_NEXT_HOP};

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
    /// In [`Forwarding::Encap`] mode: the index the load balancer writes to
    /// [`Meta::next_hop`](nf_core::Meta::next_hop) for this backend's packets (the
    /// position of its underlay address in the encapsulation stage's host list);
    /// [`NO_NEXT_HOP`] by default (the encapsulation stage's default destination).
    pub next_hop: u32,
}

impl PoolMember {
    /// A member that is up, with the given weight.
    pub const fn new(id: BackendId, weight: u32) -> Self {
        Self {
            id,
            weight,
            health: Health::Up,
            next_hop: NO_NEXT_HOP,
        }
    }

    /// The same member with an underlay next hop (see [`PoolMember::next_hop`]).
    #[must_use]
    pub const fn with_next_hop(mut self, next_hop: u32) -> Self {
        self.next_hop = next_hop;
        self
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
        MaglevTable::new(key, size, &self.backends())
    }

    /// The pool as a rendezvous set.
    ///
    /// # Errors
    ///
    /// As [`Rendezvous::new`].
    pub fn rendezvous(&self, key: &LbKey) -> Result<Rendezvous, BuildError> {
        Rendezvous::new(key, &self.backends())
    }

    fn backends(&self) -> Vec<Backend> {
        self.members.iter().map(PoolMember::backend).collect()
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

/// How the load balancer hands a listener's packets to the chosen backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Forwarding {
    /// Destination address and port rewritten to the backend's (the client's address is
    /// kept); replies from the backend are rewritten back to come from the VIP. Every
    /// member's identity must be an address and port ([`BackendId::v4`] / [`BackendId::v6`])
    /// of the VIP's family; port 0 keeps the flow's destination port.
    #[default]
    Dnat,
    /// No rewrite: the member's [`PoolMember::next_hop`] goes to
    /// [`Meta::next_hop`](nf_core::Meta::next_hop) for an encapsulation stage (Geneve /
    /// VXLAN) to send the packet to the backend's underlay address; the backend answers the
    /// client directly (direct server return).
    Encap,
}

/// What happens to an established flow whose backend is down (or no longer in the pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnDown {
    /// The flow's next packet is dropped with
    /// [`DropReason::LbBackendDown`](nf_core::DropReason::LbBackendDown), and so are its
    /// later packets until the session ends (the client times out or gives up), unless the
    /// load balancer answers TCP segments with a RST ([`Lb::with_tcp_resets`](crate::Lb::with_tcp_resets)).
    #[default]
    Reset,
    /// The flow's next packet from the client picks a backend from the table again (counted
    /// `rehashed`). Under encapsulation the session keeps the new backend; under DNAT the
    /// session is replaced by a new one ([`SessionService::renews`]), whose reply key names
    /// the new backend, so its answers are un-NATed (a UDP flow carries on; a TCP
    /// connection meets a backend that does not know it and gets its RST).
    ///
    /// [`SessionService::renews`]: nf_core::conntrack::SessionService::renews
    Rehash,
}

/// A listener's limit on new flows: above it, new flows are served by the hash alone,
/// without a session (Katran's "compute-only" mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewFlowLimit {
    /// Sustained new flows per second.
    pub per_second: u32,
    /// Flows allowed in a burst above the rate (the bucket's depth, at least 1).
    pub burst: u32,
}

impl NewFlowLimit {
    /// A limit of `per_second` new flows with bursts of `burst`.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// How a listener picks a new flow's backend from its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// A Maglev table of `size` slots, a prime ([`table_size_for`](crate::table_size_for)
    /// picks one for a pool): one read per new flow; when a backend leaves, about its own
    /// share of flows move, plus a little (the paper's near-minimal disruption).
    Maglev {
        /// Table slots.
        size: u32,
    },
    /// Rendezvous (highest random weight) over the pool ([`Rendezvous`]): exactly the
    /// departed backend's flows move, at one hash per serving backend per new flow; for
    /// small pools (at most [`MAX_RENDEZVOUS_BACKENDS`](crate::MAX_RENDEZVOUS_BACKENDS)).
    Rendezvous,
}

/// A listener's choice of backend for a flow hash: its pool as a Maglev table or as a
/// rendezvous set ([`Selection`]). Choices are indices into [`Self::backends`].
#[derive(Debug, Clone)]
pub enum BackendTable {
    /// [`Selection::Maglev`].
    Maglev(MaglevTable),
    /// [`Selection::Rendezvous`].
    Rendezvous(Rendezvous),
}

impl BackendTable {
    /// Every backend of the pool, sorted by identity.
    pub fn backends(&self) -> &[Backend] {
        match self {
            Self::Maglev(t) => t.backends(),
            Self::Rendezvous(r) => r.backends(),
        }
    }

    /// The chosen backend's index (into [`Self::backends`]) for a flow hash.
    #[inline]
    pub fn lookup(&self, hash: u64) -> u32 {
        match self {
            Self::Maglev(t) => t.lookup(hash),
            Self::Rendezvous(r) => r.lookup(hash),
        }
    }

    /// The chosen backend for a flow hash.
    pub fn backend(&self, hash: u64) -> Option<&Backend> {
        self.backends().get(self.lookup(hash) as usize)
    }

    /// The flow hash the table's key gives a flow (one direction).
    #[inline]
    pub fn flow_hash(&self, key: &FlowKey) -> u64 {
        match self {
            Self::Maglev(t) => t.flow_hash(key),
            Self::Rendezvous(r) => r.flow_hash(key),
        }
    }

    /// The Maglev table, for a listener of [`Selection::Maglev`].
    pub fn maglev(&self) -> Option<&MaglevTable> {
        match self {
            Self::Maglev(t) => Some(t),
            Self::Rendezvous(_) => None,
        }
    }
}

/// A listener: the flows it takes, the fields that choose their backend, and its pool's table.
#[derive(Debug, Clone)]
pub struct Listener {
    on: ListenerMatch,
    fields: HashFields,
    pool: Pool,
    table: BackendTable,
    forwarding: Forwarding,
    on_down: OnDown,
    limit: Option<NewFlowLimit>,
    one_sided: bool,
}

impl Listener {
    /// A listener with its pool's Maglev table built (`size` slots).
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
        Self::with_selection(key, on, fields, pool, Selection::Maglev { size })
    }

    /// A listener whose pool chooses backends by `selection`.
    ///
    /// # Errors
    ///
    /// As [`Pool::table`] for [`Selection::Maglev`], as [`Rendezvous::new`] for
    /// [`Selection::Rendezvous`].
    ///
    /// ```
    /// use nf_lb::{BackendId, HashFields, LbKey, Listener, ListenerMatch, Pool, PoolMember, Selection};
    ///
    /// let key = LbKey::new(*b"operator secret!");
    /// let pool = Pool::new((1..=3).map(|i| PoolMember::new(BackendId::v4([10, 0, 0, i], 80), 1)));
    /// let vip = ListenerMatch::Vip([192, 0, 2, 1].into());
    /// let l = Listener::with_selection(&key, vip, HashFields::FiveTuple, pool, Selection::Rendezvous)?;
    /// assert!(l.table().maglev().is_none());
    /// assert_eq!(l.table().backends().len(), 3);
    /// # Ok::<(), nf_lb::BuildError>(())
    /// ```
    pub fn with_selection(
        key: &LbKey,
        on: ListenerMatch,
        fields: HashFields,
        pool: Pool,
        selection: Selection,
    ) -> Result<Self, BuildError> {
        let table = match selection {
            Selection::Maglev { size } => BackendTable::Maglev(pool.table(key, size)?),
            Selection::Rendezvous => BackendTable::Rendezvous(pool.rendezvous(key)?),
        };
        Ok(Self {
            on,
            fields,
            pool,
            table,
            forwarding: Forwarding::Dnat,
            on_down: OnDown::Reset,
            limit: None,
            one_sided: false,
        })
    }

    /// The same listener with another forwarding mode (default [`Forwarding::Dnat`]).
    #[must_use]
    pub fn with_forwarding(mut self, forwarding: Forwarding) -> Self {
        self.forwarding = forwarding;
        self
    }

    /// The same listener with another action for flows of a down backend (default
    /// [`OnDown::Reset`]).
    #[must_use]
    pub fn with_on_down(mut self, on_down: OnDown) -> Self {
        self.on_down = on_down;
        self
    }

    /// The same listener with a new-flow limit (default none).
    #[must_use]
    pub fn with_new_flow_limit(mut self, limit: NewFlowLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The same listener with its DNAT sessions tracked one-sided or not (default not):
    /// for a fleet whose backends' answers may pass another node than their flow's client
    /// side (the backends' return route is an ECMP route over every node, or any routing
    /// that is not symmetric per flow).
    ///
    /// A node then sees a flow's client side only, the backend's answers going to a peer
    /// that holds a copy of the session (session sync) or un-NATs them by the hash alone
    /// (`stateless_replies`). Tracked as usual, its TCP session would wait for a SYN+ACK that
    /// never passes here: never established, it would expire after the SYN timeout (and
    /// end the peers' copies) however busy the connection. One-sided
    /// ([`NewFlow::set_one_sided`](nf_core::conntrack::NewFlow::set_one_sided)), the
    /// client's ACK after its SYN establishes it; answers that do pass are tracked as
    /// ever. Encapsulation's sessions are always one-sided (direct server return).
    ///
    /// ```
    /// use nf_lb::{BackendId, HashFields, LbKey, Listener, ListenerMatch, Pool, PoolMember};
    ///
    /// let key = LbKey::new(*b"operator secret!");
    /// let pool = Pool::new([PoolMember::new(BackendId::v4([10, 0, 0, 1], 80), 1)]);
    /// let vip = ListenerMatch::Vip([192, 0, 2, 1].into());
    /// let l = Listener::new(&key, vip, HashFields::FiveTuple, pool, 251)?.with_one_sided(true);
    /// assert!(l.one_sided());
    /// # Ok::<(), nf_lb::BuildError>(())
    /// ```
    #[must_use]
    pub fn with_one_sided(mut self, one_sided: bool) -> Self {
        self.one_sided = one_sided;
        self
    }

    /// True when its DNAT sessions are tracked one-sided ([`Self::with_one_sided`]).
    pub fn one_sided(&self) -> bool {
        self.one_sided
    }

    /// Its forwarding mode.
    pub fn forwarding(&self) -> Forwarding {
        self.forwarding
    }

    /// What happens to flows of a down backend.
    pub fn on_down(&self) -> OnDown {
        self.on_down
    }

    /// Its new-flow limit.
    pub fn new_flow_limit(&self) -> Option<NewFlowLimit> {
        self.limit
    }

    /// The VIP of its match.
    pub fn vip(&self) -> IpAddr {
        match self.on {
            ListenerMatch::Port { vip, .. } | ListenerMatch::Vip(vip) => vip,
        }
    }

    /// Checks the settings together: DNAT needs address identities of the VIP's family.
    fn check(&self) -> Result<(), ListenerError> {
        if self.forwarding != Forwarding::Dnat {
            return Ok(());
        }
        let family = match self.vip() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        match self
            .pool
            .members()
            .iter()
            .find(|m| crate::service::target(&m.id).is_none_or(|t| t.family != family))
        {
            Some(m) => Err(ListenerError::NotAnAddress(m.id)),
            None => Ok(()),
        }
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

    /// Its table (or rendezvous set).
    pub fn table(&self) -> &BackendTable {
        &self.table
    }

    /// How it picks a new flow's backend.
    pub fn selection(&self) -> Selection {
        match &self.table {
            BackendTable::Maglev(t) => Selection::Maglev { size: t.size() },
            BackendTable::Rendezvous(_) => Selection::Rendezvous,
        }
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
    /// A DNAT listener's member whose identity is not an address and port of the VIP's
    /// family.
    NotAnAddress(BackendId),
}

impl core::fmt::Display for ListenerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Duplicate(m) => write!(f, "two listeners on {m:?}"),
            Self::NotAnAddress(id) => write!(f, "DNAT member {id} is not a VIP-family address"),
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
    /// [`ListenerError::Duplicate`] when two take the same flows; the other
    /// [`ListenerError`]s for a listener whose settings do not go together.
    pub fn new(listeners: Vec<Listener>) -> Result<Self, ListenerError> {
        for (i, a) in listeners.iter().enumerate() {
            a.check()?;
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
        self.position(key).and_then(|i| self.listeners.get(i))
    }

    /// The index of the listener that takes a flow (see [`Self::find`]).
    pub fn position(&self, key: &FlowKey) -> Option<usize> {
        let port = |l: &Listener| matches!(l.on, ListenerMatch::Port { .. }) && l.on.matches(key);
        self.listeners
            .iter()
            .position(port)
            .or_else(|| self.listeners.iter().position(|l| l.on.matches(key)))
    }
}
