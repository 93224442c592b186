//! The LB stage: [`Lb`], a session service that runs inside `nf-core`'s
//! [`Conntrack`](nf_core::conntrack::Conntrack), so a packet pays one session lookup for
//! tracking and load balancing together.
//!
//! # What the session remembers
//!
//! A session's [`LbSession`] is 8 bytes: the index of a *member slot* and the flow's
//! original destination port. A member slot is one (listener, backend) pair of the
//! configuration, with what the packet path reads (addresses, next hop, health, mode).
//! Slots are refcounted by sessions: [`Lb::set_listeners`] matches the new configuration's
//! pairs to existing slots by identity (listener match and [`BackendId`]), updates them in
//! place, marks the pairs that left as down, and reuses only slots that are out of the
//! configuration *and* hold no session. So a session's slot index stays valid across any
//! number of swaps, and a flow stays on its backend for as long as that backend is up or
//! draining in its listener's pool.
//!
//! # Invariants
//!
//! - An established flow is never moved while its backend is up or draining.
//! - A flow whose backend is down or gone is re-hashed on its next packet (counted
//!   `rehashed`; [`OnDown::Rehash`]: under DNAT the session is replaced, so the reply key
//!   follows the new backend) or dropped with
//!   [`DropReason::LbBackendDown`] (counted `reset`; [`OnDown::Reset`]).
//! - A packet to a listener whose flow has no session and gets none (table full, zone
//!   quota, above its listener's [`NewFlowLimit`] or its zone's new-flow rate
//!   ([`DropReason::NewFlowRateExceeded`], e.g. nf-policy's `ZoneNewFlowLimit` wrapping the
//!   LB), a packet that may not open a session) is
//!   forwarded by the hash alone (counted `stateless`), never dropped for lack of state.
//! - No allocation on the packet path; [`Lb::set_listeners`] allocates.

use crate::backend::BackendId;
use crate::listener::{Forwarding, Health, ListenerMatch, Listeners, NewFlowLimit, OnDown};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::hint::select_unpredictable;
use core::net::IpAddr;
use nf_core::conntrack::{EndCause, NewFlow, SessionInfo, SessionService, quoted_key};
use nf_core::flow::proto;
use nf_core::reply::tcp_reset;
use nf_core::rewrite::{End, Layout, rewrite_packet, translate_icmp_error};
use nf_core::{Direction, DropReason, Family, FlowKey, Instant, Packet, PortId, Verdict, flags};

/// No slot: the flow matched no listener.
const NONE: u32 = u32::MAX;

/// The load balancer's part of a session: which member slot the flow went to, its
/// original destination port (the VIP's, restored on DNAT replies) and its protocol (ports
/// move for TCP and UDP only, also inside ICMP errors' quotes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbSession {
    slot: u32,
    port: u16,
    proto: u8,
}

impl Default for LbSession {
    /// A flow the load balancer does not handle.
    fn default() -> Self {
        Self {
            slot: NONE,
            port: 0,
            proto: 0,
        }
    }
}

impl LbSession {
    /// True when the flow matched a listener.
    pub const fn is_balanced(&self) -> bool {
        self.slot != NONE
    }
}

/// Per-outcome counts of the LB service (also reported by [`SessionService::visit_counters`]
/// under stage `lb` and the field names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LbCounters {
    /// New flows given a backend with a session.
    pub new_flows: u64,
    /// New flows that matched no listener (passed untouched).
    pub no_listener: u64,
    /// Packets forwarded by the hash alone (no session: table full, zone quota,
    /// rate, a packet that may not open one); in a tuple of services, another may still
    /// drop the packet.
    pub stateless: u64,
    /// Packets from a DNAT backend without a session (answers to flows served statelessly),
    /// un-NATed to the VIP by the hash alone.
    pub stateless_replies: u64,
    /// New flows above their listener's rate limit (then served statelessly).
    pub rate_limited: u64,
    /// Flows moved to another backend because theirs went down (under DNAT, by replacing
    /// the session: also counted `new_flows`, and `renewed` by the conntrack stage).
    pub rehashed: u64,
    /// Packets of flows reset because their backend is down: dropped, or answered by a
    /// RST (`resets_sent`).
    pub reset: u64,
    /// RSTs sent to clients for reset flows ([`Lb::with_tcp_resets`]).
    pub resets_sent: u64,
    /// Configurations swapped in.
    pub swaps: u64,
    /// ICMP errors quoting a DNAT flow, translated (outer header and quote).
    pub icmp_errors_translated: u64,
    /// ICMP errors quoting an encapsulated flow's reply (path MTU toward the client in
    /// direct server return), sent to the flow's backend.
    pub icmp_errors_forwarded: u64,
    /// ICMP errors quoting a flow of the load balancer, dropped: not translatable
    /// ([`DropReason::LbUntranslatable`]) or their session's member slot is gone.
    pub icmp_errors_dropped: u64,
    /// Sessions taken over from another node
    /// ([`Conntrack::import`](nf_core::conntrack::Conntrack::import)).
    pub imported: u64,
}

/// Where a backend identity points, for DNAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) family: Family,
    pub(crate) addr: [u8; 16],
    pub(crate) port: u16,
}

/// The address and port of an identity built by [`BackendId::v4`] / [`BackendId::v6`].
pub(crate) fn target(id: &BackendId) -> Option<Target> {
    let b = id.as_bytes();
    let (family, n) = match b.first() {
        Some(4) if b.len() == 7 => (Family::V4, 4),
        Some(6) if b.len() == 19 => (Family::V6, 16),
        _ => return None,
    };
    let mut addr = [0u8; 16];
    addr.get_mut(..n)?.copy_from_slice(b.get(1..=n)?);
    let port = u16::from_be_bytes(b.get(n + 1..n + 3)?.try_into().ok()?);
    Some(Target { family, addr, port })
}

/// A (listener, backend) pair: what the packet path reads.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Backend address (DNAT).
    addr: [u8; 16],
    /// The listener's VIP (DNAT replies).
    vip: [u8; 16],
    /// Backend port (DNAT; 0 keeps the flow's).
    port: u16,
    /// In the current configuration.
    member: bool,
    /// Up or draining in the current configuration.
    serving: bool,
    forwarding: Forwarding,
    on_down: OnDown,
    /// DNAT sessions tracked one-sided ([`Listener::with_one_sided`](crate::Listener::with_one_sided)).
    one_sided: bool,
    /// Index of its listener in the current configuration (also after the backend left its
    /// pool, to re-hash its flows), [`NONE`] if the listener left.
    listener: u32,
    next_hop: u32,
    /// The listener's port (DNAT replies without a session), 0 for a whole-VIP listener.
    vip_port: u16,
    /// Sessions that hold this slot.
    sessions: u32,
}

/// A backend's tuple as its replies carry it: (IPv6, address, port).
type ReplyTuple = (bool, [u8; 16], u16);

/// A listener's identity, orderable.
type ListenerKey = (u8, u128, u16, u8);

fn listener_key(m: &ListenerMatch) -> ListenerKey {
    let addr = |ip: IpAddr| match ip {
        IpAddr::V4(a) => u128::from(a.to_bits()) | 1 << 127,
        IpAddr::V6(a) => a.to_bits(),
    };
    match *m {
        ListenerMatch::Port { vip, port, proto } => (0, addr(vip), port, proto),
        ListenerMatch::Vip(vip) => (1, addr(vip), 0, 0),
    }
}

/// A per-listener token bucket of new flows (nanoseconds of credit).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Nanoseconds per token; 0: unlimited.
    cost: u64,
    /// Most credit (burst × cost).
    depth: u64,
    credit: u64,
    last: Instant,
}

impl Bucket {
    fn new(limit: Option<NewFlowLimit>) -> Self {
        let (cost, depth) = match limit {
            Some(l) => {
                let cost = 1_000_000_000 / u64::from(l.per_second.max(1));
                (
                    cost.max(1),
                    cost.max(1).saturating_mul(u64::from(l.burst.max(1))),
                )
            }
            None => (0, 0),
        };
        Self {
            cost,
            depth,
            credit: depth,
            last: Instant::from_nanos(0),
        }
    }

    /// Takes one token if there is one.
    #[inline]
    fn take(&mut self, now: Instant) -> bool {
        if self.cost == 0 {
            return true;
        }
        let earned = now.saturating_since(self.last).as_nanos();
        if now > self.last {
            self.last = now;
        }
        self.credit = self.credit.saturating_add(earned).min(self.depth);
        if self.credit >= self.cost {
            self.credit -= self.cost;
            true
        } else {
            false
        }
    }
}

/// The load balancer as a session service: `Conntrack<Lb>` (or a tuple with other services)
/// is the LB stage.
///
/// - A new flow that matches a listener ([`Listeners::find`]) takes the backend its
///   listener's table (Maglev, or a rendezvous set: [`Selection`](crate::Selection)) names
///   for the flow's [`HashFields`](crate::HashFields); under
///   DNAT the session's reply key is the backend's tuple (backend → client).
/// - Every packet of the flow goes to that backend while it is up or draining, whatever
///   configurations are swapped in meanwhile; DNAT rewrites the destination to the backend
///   and replies' source back to the VIP, encapsulation writes the member's
///   [`next_hop`](crate::PoolMember::next_hop) to [`Meta::next_hop`](nf_core::Meta::next_hop).
/// - Under encapsulation the backend answers the client directly (direct server return):
///   sessions are one-sided ([`NewFlow::set_one_sided`]), so a TCP session is established
///   (assured, with the established timeout) by the client's ACK after its SYN, and closed
///   by its FIN or RST, without ever seeing a reply.
/// - A DNAT listener [`with_one_sided`](crate::Listener::with_one_sided) tracks its sessions
///   the same way: for fleets whose backends' answers may pass another node.
/// - A flow whose backend is down: see [`OnDown`].
/// - Without a session (table full, zone quota, the listener's [`NewFlowLimit`], the zone's
///   new-flow rate ([`DropReason::NewFlowRateExceeded`]), or a packet
///   that may not open one: a TCP segment other than a SYN after an ECMP change in front of
///   the load balancers, or after its SYN was served statelessly) a packet to a listener is
///   forwarded by the hash alone ([`SessionService::on_refused`]). Under DNAT the backend's
///   answers then find no session either: a packet from a DNAT backend's address and port
///   (its service tuple) without a session never gets one; its source is rewritten to the
///   VIP and the listener's port (a whole-VIP listener keeps the port), counted
///   `stateless_replies`. A backend in several DNAT listeners answers statelessly for the
///   first of them whose table sends the flow (as it would have come through it) to this
///   backend: the flow's own listener, unless another's table also chooses this backend
///   for it (with N backends, about one time in N).
/// - Flows that match no listener pass untouched (their session is still created).
/// - Later fragments (related to their first fragment's session) are forwarded like the
///   session's other packets, addresses only.
/// - ICMP errors quoting a DNAT flow are translated both ways (RFC 5508 REQ-4/5, like a
///   NAT): an error from the backend's side (a backend's port unreachable, a router's
///   fragmentation needed or packet too big on the way to the backend) reaches the client
///   from the VIP quoting the packet the client sent; an error from the client's side
///   reaches the backend quoting the reply the backend sent. Under encapsulation, an error
///   quoting a flow's direct reply (sent to the VIP by a router on the backend's return
///   path) goes to the flow's backend, so path MTU discovery works through direct server
///   return. Errors about flows served without a session are translated (or sent on) the
///   same way by the hash alone. Counted `icmp_errors_translated`, `icmp_errors_forwarded`,
///   `icmp_errors_dropped` ([`DropReason::LbUntranslatable`]).
/// - Sessions move between nodes through the stage
///   ([`Conntrack::export`](nf_core::conntrack::Conntrack::export) /
///   [`Conntrack::import`](nf_core::conntrack::Conntrack::import)): a session names its
///   listener and backend by identity, and the importing node takes it over if it knows
///   both (see [`SessionService::import_value`]). Session values name this instance's
///   member slots, so sessions imported through the table alone
///   ([`SessionTable::import`](nf_core::conntrack::SessionTable::import)) or removed
///   through it (bypassing [`SessionService::on_end`]) are not supported.
///
/// ```
/// use nf_core::conntrack::{Conntrack, ConntrackConfig};
/// use nf_core::wire::Frame;
/// use nf_core::{Batch, Instant, Packet, ParseStage, Stage, StageExt, Verdict, flow::proto};
/// use nf_lb::{BackendId, HashFields, LbKey, Lb, Listener, ListenerMatch, Listeners, Pool, PoolMember};
///
/// let key = LbKey::new(*b"operator secret!");
/// let pool = Pool::new([
///     PoolMember::new(BackendId::v4([10, 0, 1, 1], 8080), 1),
///     PoolMember::new(BackendId::v4([10, 0, 1, 2], 8080), 1),
/// ]);
/// let vip = ListenerMatch::Port { vip: [192, 0, 2, 1].into(), port: 80, proto: proto::TCP };
/// let web = Listener::new(&key, vip, HashFields::FiveTuple, pool, 65_537)?;
/// let lb = Lb::new(Listeners::new(vec![web])?);
/// let ct = Conntrack::new(ConntrackConfig::new(*b"conntrack secret"), lb)?;
/// let mut stage = ParseStage::default().then(ct);
///
/// let syn = Frame::ipv4([198, 51, 100, 7], [192, 0, 2, 1]).tcp(40_000, 80, 0x02).to_vec()?;
/// let mut batch = Batch::new();
/// batch.push(Packet::with_headroom(&syn, 64)).ok();
/// stage.process(Instant::from_nanos(1), &mut batch);
/// let p = &batch.packets()[0];
/// assert_eq!(p.meta.verdict, Verdict::Pass);
/// // Destination rewritten to one of the backends, port 8080; the client's address kept.
/// let d = p.data();
/// assert_eq!(d[14 + 16..14 + 19], [10, 0, 1]);
/// assert_eq!(d[14 + 12..14 + 16], [198, 51, 100, 7]);
/// assert_eq!(d[34 + 2..34 + 4], 8080u16.to_be_bytes());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Lb {
    listeners: Listeners,
    slots: Vec<Slot>,
    /// Identity of each slot (`None`: free).
    ids: Vec<Option<(ListenerKey, BackendId)>>,
    index: BTreeMap<(ListenerKey, BackendId), u32>,
    free: Vec<u32>,
    /// Per listener: the slot of each of its table's backends (by table index).
    members: Vec<Vec<u32>>,
    /// DNAT backends' tuples (family, address, port; port 0 for any) → slot, sorted: the
    /// replies of flows served without a session are un-NATed through it.
    replies: Vec<(ReplyTuple, u32)>,
    buckets: Vec<Bucket>,
    counters: LbCounters,
    /// Some DNAT listener re-hashes the flows of down backends (then `renews` looks at the
    /// slot; otherwise one predictable branch on the packet path).
    renewing: bool,
    /// Where the RSTs of reset TCP flows go out ([`Lb::with_tcp_resets`]); none: dropped.
    rst_port: Option<PortId>,
}

impl Lb {
    /// A load balancer serving `listeners`.
    pub fn new(listeners: Listeners) -> Self {
        let mut lb = Self {
            listeners: Listeners::default(),
            slots: Vec::new(),
            ids: Vec::new(),
            index: BTreeMap::new(),
            free: Vec::new(),
            members: Vec::new(),
            replies: Vec::new(),
            buckets: Vec::new(),
            counters: LbCounters::default(),
            renewing: false,
            rst_port: None,
        };
        lb.set_listeners(listeners);
        lb.counters.swaps = 0;
        lb
    }

    /// The same load balancer answering a reset flow's TCP segments ([`OnDown::Reset`]):
    /// instead of being dropped, each becomes in place the RST from the VIP to the client
    /// (RFC 9293 §3.10.7.1, [`nf_core::reply::tcp_reset`]), sent on `port`
    /// ([`Verdict::Tx`]), so that the client fails at once rather than by timing out (as
    /// AWS NLB's connection termination does). Other packets of such flows (UDP, a segment
    /// that is itself a reset) are still dropped.
    #[must_use]
    pub fn with_tcp_resets(mut self, port: PortId) -> Self {
        self.rst_port = Some(port);
        self
    }

    /// Swaps in a whole new configuration (off the packet path: it allocates). Established
    /// flows keep their backends where these are still up or draining in their listener's
    /// new pool; the others follow their listener's [`OnDown`] on their next packet.
    /// Rate-limit buckets start full.
    pub fn set_listeners(&mut self, listeners: Listeners) {
        // Free the slots that left an earlier configuration and whose sessions all ended.
        for (i, (slot, id)) in self.slots.iter_mut().zip(self.ids.iter_mut()).enumerate() {
            if !slot.member
                && slot.sessions == 0
                && let Some(k) = id.take()
            {
                self.index.remove(&k);
                self.free.push(i as u32);
            }
        }
        for s in &mut self.slots {
            s.member = false;
            s.serving = false;
        }
        self.members.clear();
        self.replies.clear();
        self.buckets.clear();
        for (li, l) in listeners.listeners().iter().enumerate() {
            let lkey = listener_key(&l.on());
            let vip = match l.vip() {
                IpAddr::V4(a) => {
                    let mut r = [0; 16];
                    if let Some(d) = r.get_mut(..4) {
                        d.copy_from_slice(&a.octets());
                    }
                    r
                }
                IpAddr::V6(a) => a.octets(),
            };
            let mut of_table = Vec::with_capacity(l.table().backends().len());
            for b in l.table().backends() {
                let member = l.pool().members().iter().find(|m| m.id == b.id);
                let t = target(&b.id);
                let slot = Slot {
                    addr: t.map_or([0; 16], |t| t.addr),
                    vip,
                    port: t.map_or(0, |t| t.port),
                    member: true,
                    serving: member.is_some_and(|m| m.health != Health::Down),
                    forwarding: l.forwarding(),
                    on_down: l.on_down(),
                    one_sided: l.one_sided(),
                    listener: li as u32,
                    vip_port: match l.on() {
                        ListenerMatch::Port { port, .. } => port,
                        ListenerMatch::Vip(_) => 0,
                    },
                    next_hop: member.map_or(nf_core::NO_NEXT_HOP, |m| m.next_hop),
                    sessions: 0,
                };
                let k = (lkey, b.id);
                let i = match self.index.get(&k) {
                    Some(&i) => {
                        if let Some(s) = self.slots.get_mut(i as usize) {
                            *s = Slot {
                                sessions: s.sessions,
                                ..slot
                            };
                        }
                        i
                    }
                    None => {
                        let i = match self.free.pop() {
                            Some(i) => {
                                if let (Some(s), Some(id)) =
                                    (self.slots.get_mut(i as usize), self.ids.get_mut(i as usize))
                                {
                                    *s = slot;
                                    *id = Some(k);
                                }
                                i
                            }
                            None => {
                                self.slots.push(slot);
                                self.ids.push(Some(k));
                                (self.slots.len() - 1) as u32
                            }
                        };
                        self.index.insert(k, i);
                        i
                    }
                };
                of_table.push(i);
            }
            if l.forwarding() == Forwarding::Dnat {
                for (b, &i) in l.table().backends().iter().zip(&of_table) {
                    if let Some(t) = target(&b.id) {
                        self.replies
                            .push(((t.family == Family::V6, t.addr, t.port), i));
                    }
                }
            }
            self.members.push(of_table);
            self.buckets.push(Bucket::new(l.new_flow_limit()));
        }
        // Slots that left keep their sessions' listener, to re-hash them there.
        let position: BTreeMap<ListenerKey, u32> = listeners
            .listeners()
            .iter()
            .enumerate()
            .map(|(i, l)| (listener_key(&l.on()), i as u32))
            .collect();
        for (s, id) in self.slots.iter_mut().zip(&self.ids) {
            if !s.member {
                let l = id.and_then(|(k, _)| position.get(&k).copied());
                s.listener = l.unwrap_or(NONE);
                if let Some(l) = l.and_then(|l| listeners.listeners().get(l as usize)) {
                    s.on_down = l.on_down();
                }
            }
        }
        // A backend in several DNAT listeners: every (tuple, slot), the slots of a tuple in
        // order (`reply_slot` picks among them).
        self.replies.sort_unstable();
        self.renewing = listeners
            .listeners()
            .iter()
            .any(|l| l.forwarding() == Forwarding::Dnat && l.on_down() == OnDown::Rehash);
        self.listeners = listeners;
        self.counters.swaps += 1;
    }

    /// The configuration in service.
    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// Outcome counters.
    pub fn counters(&self) -> &LbCounters {
        &self.counters
    }

    /// The backend a session's value names (`None` for a flow the load balancer does not
    /// handle).
    pub fn backend_of(&self, session: &LbSession) -> Option<BackendId> {
        self.ids
            .get(session.slot as usize)
            .copied()
            .flatten()
            .map(|(_, id)| id)
    }

    /// Sessions that hold a backend of a listener (by identity), for draining decisions.
    pub fn sessions_of(&self, on: &ListenerMatch, id: &BackendId) -> u32 {
        self.index
            .get(&(listener_key(on), *id))
            .and_then(|&i| self.slots.get(i as usize))
            .map_or(0, |s| s.sessions)
    }

    /// Member slots allocated (in the configuration or held by sessions).
    pub fn slots_in_use(&self) -> usize {
        self.index.len()
    }

    /// The DNAT slot whose backend sends from the flow's source (exact port, else a
    /// port-keeping backend's).
    fn reply_slot(&self, key: &FlowKey) -> Option<&Slot> {
        let candidates = self.reply_candidates(key)?;
        let &(_, first) = candidates.first()?;
        // A backend in several DNAT listeners: the first whose table sends the flow this
        // answers (as it came through that listener) to this backend, as the stateless
        // forward did; else the first (the flow's own listener is not always found: two
        // tables may both choose this backend for it).
        let chosen = match candidates {
            [_] => first,
            _ => candidates
                .iter()
                .map(|&(_, s)| s)
                .find(|&s| self.answers_for(s, key))
                .unwrap_or(first),
        };
        self.slots.get(chosen as usize)
    }

    /// The (tuple, slot) entries of the DNAT backend whose service tuple is `key`'s source
    /// (a backend answering): several when it serves several listeners; `None` for any
    /// other packet.
    fn reply_candidates(&self, key: &FlowKey) -> Option<&[(ReplyTuple, u32)]> {
        let v6 = key.family() == Family::V6;
        let of = |port| {
            let t = (v6, *key.src_raw(), port);
            let lo = self.replies.partition_point(|r| r.0 < t);
            let hi = self.replies.partition_point(|r| r.0 <= t);
            self.replies.get(lo..hi).filter(|c| !c.is_empty())
        };
        of(key.src_port).or_else(|| of(0))
    }

    /// Whether slot `slot`'s listener would have sent the flow that `reply` (a backend's
    /// answer) answers to the slot's backend by its table alone.
    #[cold]
    fn answers_for(&self, slot: u32, reply: &FlowKey) -> bool {
        let Some(s) = self.slots.get(slot as usize) else {
            return false;
        };
        let li = s.listener as usize;
        let Some(l) = self.listeners.listeners().get(li) else {
            return false;
        };
        if let ListenerMatch::Port { proto, .. } = l.on()
            && proto != reply.proto
        {
            return false;
        }
        // The client's destination: the VIP and the listener's port (a whole-VIP listener
        // keeps the port, which the backend answers from).
        let port = if s.vip_port != 0 {
            s.vip_port
        } else {
            reply.src_port
        };
        let client = *reply.dst_raw();
        let forward = match reply.family() {
            Family::V4 => {
                let [a, b, c, d, ..] = client;
                let [e, f, g, h, ..] = s.vip;
                FlowKey::v4(
                    reply.zone,
                    [a, b, c, d],
                    [e, f, g, h],
                    reply.proto,
                    reply.dst_port,
                    port,
                )
            }
            Family::V6 => FlowKey::v6(reply.zone, client, s.vip, reply.proto, reply.dst_port, port),
        };
        self.hashed(li, &forward) == Some(slot)
    }

    /// The slot the flow hashes to in listener `li`'s table.
    #[inline]
    fn hashed(&self, li: usize, key: &FlowKey) -> Option<u32> {
        let l = self.listeners.listeners().get(li)?;
        let b = l.table().lookup(l.flow_hash(key));
        self.members.get(li)?.get(b as usize).copied()
    }

    /// Sends the packet (original direction) to the slot's backend.
    #[inline(always)]
    fn forward<B: AsRef<[u8]> + AsMut<[u8]>>(s: &Slot, pkt: &mut Packet<B>) -> Verdict {
        match s.forwarding {
            Forwarding::Dnat => dnat(pkt, End::Dst, &s.addr, s.port),
            Forwarding::Encap => {
                pkt.meta.next_hop = s.next_hop;
                Verdict::Pass
            }
        }
    }

    /// An ICMP error quoting a packet of the session (RFC 5508 REQ-4/5, as a NAT does):
    /// - DNAT, from the backend's side (`Reply`: it quotes a packet sent to the backend):
    ///   the outer source and the quote's destination become the VIP, and the quote's
    ///   destination port the listener's;
    /// - DNAT, from the client's side (`Original`: it quotes an un-NATed reply): the outer
    ///   destination and the quote's source become the backend, and its port the backend's;
    /// - encap, from the client's side (a router on the path of a direct reply sends its
    ///   error to the VIP): sent to the backend's next hop untouched, so that path MTU
    ///   discovery works through direct server return;
    /// - encap, the other way: passed untouched.
    ///
    /// Whatever the backend's health: the error belongs to the flow as it is.
    #[cold]
    fn icmp_error<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        direction: Direction,
        value: &LbSession,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let Some(s) = self.slots.get(value.slot as usize) else {
            self.counters.icmp_errors_dropped += 1;
            return Verdict::Drop(DropReason::LbUntranslatable);
        };
        let (end, addr, port) = match (s.forwarding, direction) {
            (Forwarding::Dnat, Direction::Reply) => (End::Src, s.vip, value.port),
            (Forwarding::Dnat, Direction::Original) => (End::Dst, s.addr, s.port),
            (Forwarding::Encap, Direction::Original) => {
                pkt.meta.next_hop = s.next_hop;
                self.counters.icmp_errors_forwarded += 1;
                return Verdict::Pass;
            }
            (Forwarding::Encap, Direction::Reply) => return Verdict::Pass,
        };
        self.translate_error(pkt, end, &addr, moved_port(value.proto, port))
    }

    /// Translates an ICMP error (see [`translate_icmp_error`]) and counts the outcome.
    fn translate_error<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        pkt: &mut Packet<B>,
        end: End,
        addr: &[u8; 16],
        port: Option<u16>,
    ) -> Verdict {
        let at = Layout::of(&pkt.meta);
        if translate_icmp_error(pkt.data_mut(), at, end, addr, port).is_err() {
            self.counters.icmp_errors_dropped += 1;
            return Verdict::Drop(DropReason::LbUntranslatable);
        }
        self.counters.icmp_errors_translated += 1;
        Verdict::Pass
    }

    /// An ICMP error that no session relates: about a flow served without a session, it is
    /// translated (or sent on) by the hash alone, as [`Self::icmp_error`] does with a
    /// session; anything else keeps its drop.
    #[cold]
    fn stateless_icmp_error<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        reason: DropReason,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        if !pkt.meta.has(flags::ICMP_ERROR) {
            return Verdict::Drop(reason);
        }
        // The key of the error's direction: its quoted packet travelled the other way.
        let Ok(key) = quoted_key(pkt.data(), &pkt.meta).map(|q| q.reversed()) else {
            return Verdict::Drop(reason);
        };
        let (end, addr, port) = if let Some(li) = self.listeners.position(&key) {
            // From the client's side, about a reply: to the backend the flow hashes to.
            let Some(s) = self
                .hashed(li, &key)
                .and_then(|i| self.slots.get(i as usize))
            else {
                return Verdict::Drop(reason);
            };
            if s.forwarding == Forwarding::Encap {
                pkt.meta.next_hop = s.next_hop;
                self.counters.icmp_errors_forwarded += 1;
                return Verdict::Pass;
            }
            (End::Dst, s.addr, s.port)
        } else if let Some(s) = self.reply_slot(&key) {
            // From the backend's side, about a packet sent to a DNAT backend.
            (End::Src, s.vip, s.vip_port)
        } else {
            return Verdict::Drop(reason);
        };
        self.translate_error(pkt, end, &addr, moved_port(key.proto, port))
    }

    /// A flow whose backend is down: re-hash it (moving its session's slot) or drop.
    #[cold]
    fn down<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        value: &mut LbSession,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let Some(old) = self.slots.get(value.slot as usize).copied() else {
            return self.reset(pkt);
        };
        // Under DNAT the session is replaced instead (`renews`): moving the slot here would
        // leave the reply key naming the old backend.
        let new = match (old.on_down, old.listener, old.forwarding) {
            (OnDown::Rehash, li, Forwarding::Encap) if li != NONE => {
                self.hashed(li as usize, &pkt.meta.flow)
            }
            _ => None,
        };
        let Some((n, s)) = new.and_then(|n| Some((n, self.slots.get_mut(n as usize)?))) else {
            return self.reset(pkt);
        };
        s.sessions = s.sessions.saturating_add(1);
        let s = *s;
        if let Some(o) = self.slots.get_mut(value.slot as usize) {
            o.sessions = o.sessions.saturating_sub(1);
        }
        value.slot = n;
        self.counters.rehashed += 1;
        Self::forward(&s, pkt)
    }

    /// Whether a packet travelling `direction` re-hashes its flow of slot `slot` by
    /// replacing its session (out of line: the packet path asks only with some DNAT
    /// listener re-hashing).
    #[inline(never)]
    fn slot_renews(&self, direction: Direction, slot: u32) -> bool {
        direction == Direction::Original && self.slots.get(slot as usize).is_some_and(Slot::renews)
    }

    /// A packet of a flow whose backend is down and that is not re-hashed: the RST back to
    /// the client where [`Lb::with_tcp_resets`] asks for one and the packet is a TCP segment
    /// it may answer, the drop otherwise.
    #[cold]
    fn reset<B: AsRef<[u8]> + AsMut<[u8]>>(&mut self, pkt: &mut Packet<B>) -> Verdict {
        self.counters.reset += 1;
        if let Some(port) = self.rst_port
            && tcp_reset(pkt).is_ok()
        {
            self.counters.resets_sent += 1;
            return Verdict::Tx(port);
        }
        Verdict::Drop(DropReason::LbBackendDown)
    }
}

impl Slot {
    /// A DNAT flow of this slot is re-hashed by replacing its session: the backend is down or
    /// gone and its listener (still configured) re-hashes.
    #[inline(always)]
    fn renews(&self) -> bool {
        !self.serving
            && self.forwarding == Forwarding::Dnat
            && self.on_down == OnDown::Rehash
            && self.listener != NONE
    }
}

impl SessionService for Lb {
    type Value = LbSession;

    const RENEWS: bool = true;

    /// A DNAT flow whose backend is down or gone, in a listener that re-hashes
    /// ([`OnDown::Rehash`]): its next packet from the client replaces the session, so the
    /// flow's new backend, picked by [`Self::on_new`], comes with its reply key.
    #[inline(always)]
    fn renews<B: AsRef<[u8]>>(
        &self,
        _now: Instant,
        direction: Direction,
        value: &LbSession,
        _pkt: &Packet<B>,
    ) -> bool {
        self.renewing && self.slot_renews(direction, value.slot)
    }

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<LbSession, DropReason> {
        let key = *new.original();
        let Some(li) = self.listeners.position(&key) else {
            // (Which listener it answers for does not matter here: no table lookups.)
            if self.reply_candidates(&key).is_some() {
                // A backend answering a flow served without a session: no session of its
                // own; un-NATed statelessly (`on_refused`).
                return Err(DropReason::NoSession);
            }
            self.counters.no_listener += 1;
            return Ok(LbSession::default());
        };
        if let Some(b) = self.buckets.get_mut(li)
            && !b.take(now)
        {
            self.counters.rate_limited += 1;
            return Err(DropReason::LbNewFlowRate);
        }
        let slot = self.hashed(li, &key).ok_or(DropReason::ServiceRefused)?;
        let s = self
            .slots
            .get_mut(slot as usize)
            .ok_or(DropReason::ServiceRefused)?;
        if s.forwarding == Forwarding::Dnat {
            // Replies come from the backend's address and port.
            // Ports move for TCP and UDP only (an ICMP query keeps its identifier).
            let ports =
                key.proto == nf_core::flow::proto::TCP || key.proto == nf_core::flow::proto::UDP;
            let port = if s.port == 0 || !ports {
                key.dst_port
            } else {
                s.port
            };
            let reply = match key.family() {
                Family::V4 => {
                    let [a, b, c, d, ..] = s.addr;
                    let [e, f, g, h, ..] = *key.src_raw();
                    FlowKey::v4(
                        key.zone,
                        [a, b, c, d],
                        [e, f, g, h],
                        key.proto,
                        port,
                        key.src_port,
                    )
                }
                Family::V6 => FlowKey::v6(
                    key.zone,
                    s.addr,
                    *key.src_raw(),
                    key.proto,
                    port,
                    key.src_port,
                ),
            };
            // A tuple another session holds makes the insert fail as a key conflict (checked
            // there, without a probe of our own).
            new.set_reply(reply)
                .map_err(|_| DropReason::SessionKeyConflict)?;
            if s.one_sided {
                // The backend's answers may pass another node of the fleet.
                new.set_one_sided();
            }
        } else {
            // Encapsulation: the backend answers the client directly (direct server
            // return); the client's ACK establishes a TCP session here.
            new.set_one_sided();
        }
        s.sessions = s.sessions.saturating_add(1);
        self.counters.new_flows += 1;
        Ok(LbSession {
            slot,
            port: key.dst_port,
            proto: key.proto,
        })
    }

    #[inline(always)]
    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        value: &mut LbSession,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        if value.slot == NONE {
            return Verdict::Pass;
        }
        let Some(s) = self.slots.get(value.slot as usize) else {
            return self.down(value, pkt);
        };
        let original = direction == Direction::Original;
        if s.forwarding == Forwarding::Dnat && (s.serving || !original) {
            // One rewrite for both directions, its end and fields selected without a branch:
            // directions arrive in no predictable order. Toward the backend on the way in,
            // back from the VIP on replies.
            let end = select_unpredictable(original, End::Dst, End::Src);
            let addr = select_unpredictable(original, &s.addr, &s.vip);
            let port = select_unpredictable(original, s.port, value.port);
            return dnat(pkt, end, addr, port);
        }
        // Encapsulation (replies go to the client directly), or a backend that is down.
        match direction {
            Direction::Original if s.serving => Self::forward(s, pkt),
            Direction::Original => self.down(value, pkt),
            Direction::Reply => Verdict::Pass,
        }
    }

    /// Later fragments follow their session like its other packets (addresses only: they
    /// carry no ports); ICMP errors are translated (DNAT) or sent to the backend (encap):
    /// see [`Lb`].
    fn on_related<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut LbSession,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        if value.slot == NONE {
            return Verdict::Pass;
        }
        if pkt.meta.has(flags::ICMP_ERROR) {
            return self.icmp_error(direction, value, pkt);
        }
        if !pkt.meta.has(flags::LATER_FRAGMENT) {
            return Verdict::Pass;
        }
        let serving = self
            .slots
            .get(value.slot as usize)
            .is_some_and(|s| s.serving);
        if direction == Direction::Original && !serving {
            // No ports to re-hash by: the datagram is lost either way.
            self.counters.reset += 1;
            return Verdict::Drop(DropReason::LbBackendDown);
        }
        self.on_packet(now, direction, value, pkt)
    }

    fn on_refused<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        reason: DropReason,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        if reason == DropReason::RelatedNoSession {
            return self.stateless_icmp_error(reason, pkt);
        }
        if !matches!(
            reason,
            DropReason::SessionTableFull
                | DropReason::ZoneQuotaExceeded
                | DropReason::LbNewFlowRate
                | DropReason::NewFlowRateExceeded
                | DropReason::NoSession
        ) {
            return Verdict::Drop(reason);
        }
        let key = pkt.meta.flow;
        let Some(li) = self.listeners.position(&key) else {
            // A backend's answer to a flow it was sent without a session.
            let Some(s) = self.reply_slot(&key) else {
                return Verdict::Drop(reason);
            };
            let v = dnat(pkt, End::Src, &s.vip, s.vip_port);
            self.counters.stateless_replies += 1;
            return v;
        };
        let Some(s) = self
            .hashed(li, &key)
            .and_then(|i| self.slots.get(i as usize))
        else {
            return Verdict::Drop(reason);
        };
        let v = Self::forward(s, pkt);
        self.counters.stateless += 1;
        v
    }

    /// A session moving to another node names its listener and backend by identity (not
    /// by this instance's slot): kind (1 byte: 0 a flow no listener matched, 1 balanced), the
    /// listener (its kind, VIP, port and protocol: 20 bytes), the backend's identity (its
    /// length, then [`MAX_ID_LEN`](crate::MAX_ID_LEN) bytes), the flow's original
    /// destination port (2) and protocol (1).
    const EXPORT_LEN: Option<usize> = Some(EXPORTED);

    fn export_value(&self, value: &LbSession, out: &mut [u8]) {
        let Some(out) = out.first_chunk_mut::<EXPORTED>() else {
            return;
        };
        *out = [0; EXPORTED];
        let Some(((kind, vip, port, protocol), id)) =
            self.ids.get(value.slot as usize).copied().flatten()
        else {
            return;
        };
        // The buffer is EXPORTED bytes long: every field fits.
        let _ = write_exported(out, (kind, vip, port, protocol), id.as_bytes(), value);
    }

    /// Takes over a session another node exported: its listener and backend must be known
    /// here (in the configuration, or held by sessions that outlived it), and under DNAT the
    /// session's reply key must come from the backend's address; otherwise declined. The
    /// backend then counts the session, and the flow follows its listener's [`OnDown`]
    /// here if the backend is down. Counted `imported`.
    fn import_value(
        &mut self,
        _now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<LbSession> {
        let b = bytes.first_chunk::<EXPORTED>()?;
        let (&[balanced, kind], rest) = b.split_first_chunk::<2>()?;
        if balanced == 0 {
            // A flow no listener matched: nothing is held.
            return (b.iter().all(|&x| x == 0)).then(LbSession::default);
        }
        let (&vip, rest) = rest.split_first_chunk::<16>()?;
        let (&port, rest) = rest.split_first_chunk::<2>()?;
        let (&[protocol, len], rest) = rest.split_first_chunk::<2>()?;
        let (id, rest) = rest.split_first_chunk::<{ crate::MAX_ID_LEN }>()?;
        let (&[d0, d1, flow_proto], _) = rest.split_first_chunk::<3>()?;
        let (vip, port) = (u128::from_be_bytes(vip), u16::from_be_bytes(port));
        let id = BackendId::new(id.get(..usize::from(len))?)?;
        let dst_port = u16::from_be_bytes([d0, d1]);
        if balanced != 1 || flow_proto != session.original.proto {
            return None;
        }
        let slot = *self.index.get(&((kind, vip, port, protocol), id))?;
        let s = self.slots.get_mut(slot as usize)?;
        if s.forwarding == Forwarding::Dnat {
            let n = match session.reply.family() {
                Family::V4 => 4,
                Family::V6 => 16,
            };
            if session.reply.src_raw().get(..n) != s.addr.get(..n) {
                return None;
            }
        }
        s.sessions = s.sessions.saturating_add(1);
        self.counters.imported += 1;
        Some(LbSession {
            slot,
            port: dst_port,
            proto: flow_proto,
        })
    }

    fn on_end(&mut self, _now: Instant, session: &SessionInfo<LbSession>, cause: EndCause) {
        if let Some(s) = self.slots.get_mut(session.value.slot as usize) {
            s.sessions = s.sessions.saturating_sub(1);
            // Replaced for its down backend (not for another service's reason).
            self.counters.rehashed += u64::from(cause == EndCause::Renewed && s.renews());
        }
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        let c = &self.counters;
        for (name, v) in [
            ("new_flows", c.new_flows),
            ("no_listener", c.no_listener),
            ("stateless", c.stateless),
            ("stateless_replies", c.stateless_replies),
            ("rate_limited", c.rate_limited),
            ("rehashed", c.rehashed),
            ("imported", c.imported),
            ("reset", c.reset),
            ("resets_sent", c.resets_sent),
            ("swaps", c.swaps),
            ("icmp_errors_translated", c.icmp_errors_translated),
            ("icmp_errors_forwarded", c.icmp_errors_forwarded),
            ("icmp_errors_dropped", c.icmp_errors_dropped),
        ] {
            f("lb", name, v);
        }
    }
}

/// Bytes of a session's part in a hand-over ([`SessionService::EXPORT_LEN`]).
const EXPORTED: usize = 2 + 16 + 2 + 1 + 1 + crate::MAX_ID_LEN + 2 + 1;

/// Writes a session's hand-over bytes field by field, as `import_value` reads them (no
/// iterator chains: this runs once per session of a hand-over).
fn write_exported(
    out: &mut [u8; EXPORTED],
    (kind, vip, port, protocol): ListenerKey,
    id: &[u8],
    value: &LbSession,
) -> Option<()> {
    let (head, rest) = out.split_first_chunk_mut::<2>()?;
    *head = [1, kind];
    let (v, rest) = rest.split_first_chunk_mut::<16>()?;
    *v = vip.to_be_bytes();
    let (p, rest) = rest.split_first_chunk_mut::<2>()?;
    *p = port.to_be_bytes();
    let (pl, rest) = rest.split_first_chunk_mut::<2>()?;
    *pl = [protocol, id.len() as u8];
    let (idb, rest) = rest.split_first_chunk_mut::<{ crate::MAX_ID_LEN }>()?;
    idb.get_mut(..id.len())?.copy_from_slice(id);
    let (tail, _) = rest.split_first_chunk_mut::<3>()?;
    let [d0, d1] = value.port.to_be_bytes();
    *tail = [d0, d1, value.proto];
    Some(())
}

/// Rewrites `end` of a DNAT flow's packet to `addr` and, for TCP and UDP, `port` (0 keeps
/// the packet's; an ICMP query keeps its identifier).
#[inline(always)]
fn dnat<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
    end: End,
    addr: &[u8; 16],
    port: u16,
) -> Verdict {
    let port = moved_port(pkt.meta.flow.proto, port);
    match rewrite_packet(pkt, end, addr, port) {
        Ok(()) => Verdict::Pass,
        Err(_) => Verdict::Drop(DropReason::LbUntranslatable),
    }
}

/// The port a DNAT rewrite of a `proto` packet writes: TCP and UDP only, and not 0 (which
/// keeps the packet's).
#[inline(always)]
fn moved_port(protocol: u8, port: u16) -> Option<u16> {
    ((port != 0) & proto::has_ports(protocol)).then_some(port)
}
