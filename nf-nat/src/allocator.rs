//! [`PortAllocator`]: the state of every profile and the allocate / release / timeout calls.

use crate::alloc_error::{AllocError, ReleaseError};
use crate::config::{AllocatorConfig, CgnSettings, ConfigError, Profile};
use crate::counters::AllocatorCounters;
use crate::space::{PortOwner, PortSplit, SUMMARY, Scan, Space, SteerCtx, WORDS, Words};
use crate::table::{Table, mix};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::net::IpAddr;
use nf_core::flow::proto;
use nf_core::{Duration, Family, FlowHasher, FlowKey, Instant, ZoneId};

/// Quarantined ports [`PortAllocator::allocate`] frees on its own, if due, before it
/// searches (so a caller that runs timers rarely still reuses ports).
const RECLAIM_PER_CALL: usize = 2;

/// Marks a CGN block that no subscriber holds.
const NO_OWNER: u32 = u32::MAX;

/// A public address and port: what one flow (hyperplane) or one inside endpoint (rfc, cgn)
/// is translated to. Small and `Copy`, to keep in the session's value and hand back to
/// [`PortAllocator::release`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mapping {
    public: u16,
    port: u16,
}

impl Mapping {
    /// The mapping to port `port` of the public address with index `public`.
    pub(crate) const fn new(public: u16, port: u16) -> Self {
        Self { public, port }
    }

    /// The public port.
    pub const fn port(self) -> u16 {
        self.port
    }

    /// Index of the public address in [`AllocatorConfig::public_ips`].
    pub const fn public_index(self) -> u16 {
        self.public
    }
}

/// What a CGN block event says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockEventKind {
    /// The block was assigned to the subscriber.
    Allocated,
    /// The block went back to the pool (its last port left quarantine).
    Released,
}

/// One loggable CGN event: a port block given to or taken back from a subscriber (RFC 6888
/// §4: operators log blocks, not connections).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BlockEvent {
    /// Allocated or released.
    pub kind: BlockEventKind,
    /// When.
    pub at: Instant,
    /// The subscriber's zone.
    pub zone: ZoneId,
    /// The subscriber's inside address.
    pub subscriber: IpAddr,
    /// The public address of the block.
    pub public: IpAddr,
    /// The block's first port.
    pub first_port: u16,
    /// The block's last port (inclusive).
    pub last_port: u16,
    /// The node whose share of the ports the block is in ([`Owner`](crate::Owner)).
    pub node: u32,
    /// The block is another node's (`node`), held here for sessions taken over from it
    /// ([`PortAllocator::take_over`]): that node logged the block when it gave it out, so
    /// a log kept per fleet may skip these.
    pub taken_over: bool,
}

/// One log line: `block allocated zone 7 subscriber 10.0.0.3 public 203.0.113.2 ports
/// 59392-59903 at 121000000000ns`, with ` for node 2` at the end when the block is
/// another node's, taken over.
impl core::fmt::Display for BlockEvent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = match self.kind {
            BlockEventKind::Allocated => "allocated",
            BlockEventKind::Released => "released",
        };
        write!(
            f,
            "block {kind} zone {} subscriber {} public {} ports {}-{} at {}ns",
            self.zone.0,
            self.subscriber,
            self.public,
            self.first_port,
            self.last_port,
            self.at.as_nanos()
        )?;
        if self.taken_over {
            write!(f, " for node {}", self.node)?;
        }
        Ok(())
    }
}

/// Chooses public ports for new flows, and takes them back when flows end; see the
/// [crate docs](crate) for the profiles, the search, quarantine and memory.
///
/// Call order: [`Self::allocate`] from the session service's `on_new` (one call that either
/// commits a mapping or changes nothing), [`Self::release`] from `on_end` with the same flow
/// key and mapping, and [`Self::handle_timeout`] whenever [`Self::poll_timeout`] is due.
#[derive(Clone, Debug)]
pub struct PortAllocator {
    hasher: FlowHasher,
    space: Space,
    /// This owner's node ([`Owner::node`](crate::Owner::node)).
    node: u32,
    profile: Profile,
    public_ips: Vec<IpAddr>,
    publics: Vec<[u8; 16]>,
    /// Indices of the public addresses per family (IPv4, IPv6).
    family_ips: [Vec<u16>; 2],
    max_mappings: usize,
    max_probes: u32,
    quarantine_for: Duration,
    queue: VecDeque<Quarantined>,
    live: usize,
    /// Live mappings per public address, per protocol (TCP, UDP, ICMP).
    active_per_public: Vec<[u64; 3]>,
    counters: AllocatorCounters,
    last_probes: u32,
    state: State,
    /// Claims may take a port out of quarantine (a replica's: see
    /// [`Self::claim_quarantined`]).
    claim_quarantined: bool,
}

#[derive(Clone, Debug)]
enum State {
    Hyper(Table<WordKey, WordVal>),
    Eim(Box<Eim>),
}

/// A freed port waiting out its quarantine.
#[derive(Clone, Copy, Debug)]
struct Quarantined {
    free_at: Instant,
    /// Hyperplane: the destination's table hash, kept so that freeing costs no SipHash.
    hd: u64,
    dst: [u8; 16],
    dst_port: u16,
    port: u16,
    public: u16,
    proto: u8,
}

/// Hyperplane: one 64-port word of one destination (`tag` < 1024), or one summary word
/// (`tag` = 1024 + j).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct WordKey {
    dst: [u8; 16],
    dst_port: u16,
    tag: u16,
    public: u16,
    proto: u8,
}

#[derive(Clone, Copy, Debug, Default)]
struct WordVal {
    used: u64,
    quarantined: u64,
}

/// Endpoint-independent state (rfc and cgn).
#[derive(Clone, Debug)]
struct Eim {
    maps: Table<InsideKey, EimEntry>,
    subs: Table<SubKey, Sub>,
    /// Per (public address, protocol): ports in use.
    dense: Vec<Dense>,
    cgn: Option<Cgn>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct InsideKey {
    addr: [u8; 16],
    zone: u32,
    port: u16,
    proto: u8,
    v6: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct EimEntry {
    public: u16,
    port: u16,
    refs: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct SubKey {
    addr: [u8; 16],
    zone: u32,
    v6: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sub {
    public: u16,
    mappings: u32,
    per_proto: [u32; 3],
    /// CGN: the subscriber's block list (index into `Cgn::lists`) and its length.
    list: u32,
    blocks: u16,
}

#[derive(Clone, Debug)]
struct Dense {
    used: Box<[u64]>,
    quarantined: Box<[u64]>,
    full: [u64; SUMMARY],
}

impl Dense {
    fn new() -> Self {
        Self {
            used: vec![0; WORDS].into_boxed_slice(),
            quarantined: vec![0; WORDS].into_boxed_slice(),
            full: [0; SUMMARY],
        }
    }
}

impl Words for Dense {
    #[inline]
    fn used(&self, w: usize) -> u64 {
        self.used.get(w).copied().unwrap_or(!0)
    }
    #[inline]
    fn full(&self, j: usize) -> u64 {
        self.full.get(j).copied().unwrap_or(!0)
    }
}

#[derive(Clone, Debug)]
struct Cgn {
    settings: CgnSettings,
    words_per_block: usize,
    /// Per node of the split: its run's blocks (this core's run of the node's ports). New
    /// flows get blocks of this node's run only; the others' hold the sessions this node
    /// claims for them (copies, take-overs).
    runs: Vec<BlockRun>,
    /// This node (its run in `runs`).
    own: usize,
    /// Blocks of every run, per address.
    blocks_per_ip: usize,
    /// Ports the run's owner may use per block (same for every address).
    cap: Vec<u32>,
    /// Per (address, block): the holder's list index, or [`NO_OWNER`].
    owner: Vec<u32>,
    /// Per (address, block): ports in use or quarantined, per protocol.
    used: Vec<[u32; 3]>,
    /// Block numbers a subscriber may hold at once, per list: `max_blocks` of each node's
    /// run.
    list_len: usize,
    /// `list_len` block numbers per list.
    lists: Vec<u16>,
    list_owner: Vec<SubKey>,
    free_lists: Vec<u32>,
    events: VecDeque<BlockEvent>,
    /// Blocks released and events dropped since the allocator last collected them.
    released: u64,
    dropped: u64,
}

/// One node's run of CGN blocks: word `base + i · words_per_block` starts its block
/// `first + i`.
#[derive(Clone, Copy, Debug)]
struct BlockRun {
    base: usize,
    first: usize,
    blocks: usize,
}

struct HyperWords<'a> {
    table: &'a Table<WordKey, WordVal>,
    key: WordKey,
    hd: u64,
}

impl Words for HyperWords<'_> {
    #[inline]
    fn used(&self, w: usize) -> u64 {
        let tag = w as u16;
        let key = WordKey { tag, ..self.key };
        self.table
            .get(word_hash(self.hd, tag), &key)
            .map_or(0, |v| v.used)
    }
    #[inline]
    fn full(&self, j: usize) -> u64 {
        let tag = (WORDS + j) as u16;
        let key = WordKey { tag, ..self.key };
        self.table
            .get(word_hash(self.hd, tag), &key)
            .map_or(0, |v| v.used)
    }
}

#[inline(always)]
fn word_hash(hd: u64, tag: u16) -> u64 {
    mix(hd ^ (u64::from(tag) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// TCP 0, UDP 1, ICMP and ICMPv6 2.
#[inline]
fn proto_index(p: u8) -> Option<usize> {
    match p {
        proto::TCP => Some(0),
        proto::UDP => Some(1),
        proto::ICMP | proto::ICMPV6 => Some(2),
        _ => None,
    }
}

#[inline]
fn fam_index(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

fn raw(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut r = [0u8; 16];
            if let Some(d) = r.get_mut(..4) {
                d.copy_from_slice(&a.octets());
            }
            r
        }
        IpAddr::V6(a) => a.octets(),
    }
}

fn ip_of(v6: bool, a: &[u8; 16]) -> IpAddr {
    if v6 {
        IpAddr::from(*a)
    } else {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    }
}

/// The range class of a flow's public port: 0 (below 1024) for an inside port below 1024
/// (RFC 4787 REQ-3a), else 1; ICMP query identifiers have no classes and always take 1.
#[inline]
fn range_class(flow: &FlowKey) -> usize {
    let icmp = matches!(flow.proto, proto::ICMP | proto::ICMPV6);
    usize::from(flow.src_port >= 1024 || icmp)
}

const fn is_icmp(p: u8) -> bool {
    matches!(p, proto::ICMP | proto::ICMPV6)
}

/// The destination port that keys a flow's destination (hyperplane): an ICMP query's
/// "port" is its identifier, which the translation replaces, so ICMP destinations are
/// keyed by address alone (their replies carry the public identifier in both fields).
const fn dest_port(flow: &FlowKey) -> u16 {
    if is_icmp(flow.proto) {
        0
    } else {
        flow.dst_port
    }
}

/// Position of `port` in its word.
#[inline]
fn bit(port: u16) -> u64 {
    1u64 << (port % 64)
}

impl PortAllocator {
    /// An allocator with every table sized once, here: nothing allocates afterwards.
    ///
    /// # Errors
    /// [`ConfigError`] for settings out of range.
    pub fn new(config: AllocatorConfig) -> Result<Self, ConfigError> {
        let c = config;
        if c.public_ips.is_empty() || c.public_ips.len() > usize::from(u16::MAX) {
            return Err(ConfigError::PublicIps);
        }
        if c.max_mappings == 0 || c.max_mappings > 1 << 28 {
            return Err(ConfigError::MaxMappings);
        }
        if c.max_probes == 0 {
            return Err(ConfigError::MaxProbes);
        }
        if c.steering.is_some() && c.profile != Profile::Hyperplane {
            return Err(ConfigError::Steering);
        }
        let space = Space::new(c.owner, &c.excluded_ports, c.steering.as_ref())?;
        let mut family_ips = [Vec::new(), Vec::new()];
        for (i, ip) in c.public_ips.iter().enumerate() {
            let f = usize::from(ip.is_ipv6());
            if let Some(l) = family_ips.get_mut(f) {
                l.push(i as u16);
            }
        }
        let n_ips = c.public_ips.len();
        let state = match c.profile {
            Profile::Hyperplane => State::Hyper(Table::with_entries(
                c.max_mappings + c.max_mappings / 4 + 1024,
            )),
            Profile::Rfc => State::Eim(Box::new(Eim {
                maps: Table::with_entries(c.max_mappings),
                subs: Table::with_entries(c.max_mappings),
                dense: (0..n_ips * 3).map(|_| Dense::new()).collect(),
                cgn: None,
            })),
            Profile::Cgn(s) => {
                let cgn = Cgn::new(s, &space, n_ips, c.max_mappings)?;
                let subs = cgn.list_owner.len();
                State::Eim(Box::new(Eim {
                    maps: Table::with_entries(c.max_mappings),
                    subs: Table::with_entries(subs),
                    dense: (0..n_ips * 3).map(|_| Dense::new()).collect(),
                    cgn: Some(cgn),
                }))
            }
        };
        Ok(Self {
            hasher: FlowHasher::new(c.secret),
            publics: c.public_ips.iter().map(|&ip| raw(ip)).collect(),
            active_per_public: vec![[0; 3]; n_ips],
            public_ips: c.public_ips,
            family_ips,
            space,
            node: c.owner.node,
            profile: c.profile,
            max_mappings: c.max_mappings,
            max_probes: c.max_probes,
            quarantine_for: c.quarantine,
            queue: VecDeque::with_capacity(c.max_mappings),
            live: 0,
            counters: AllocatorCounters::default(),
            last_probes: 0,
            state,
            claim_quarantined: false,
        })
    }

    /// While `on`, [`Self::claim`] may take a port this allocator holds in quarantine
    /// (hyperplane and rfc; not cgn, whose blocks follow their ports' quarantine): a
    /// replica's claims, for the sessions its primary decided. The replica's quarantine of
    /// a port only reflects when it heard of a copy's end (later than its primary, which
    /// may already have given the port out again) or a copy that aged out unrefreshed on
    /// its own timers; the primary's quarantine is the one that protects the port.
    pub(crate) fn claim_quarantined(&mut self, on: bool) {
        self.claim_quarantined = on;
    }

    /// Maps the flow whose first packet is `original` (inside source → destination): one
    /// call that either commits the mapping or changes nothing, so a session service calls
    /// it from `on_new` and sets the reply key from [`Self::reply_key`]. Every mapping
    /// returned must be handed back to [`Self::release`] once.
    ///
    /// # Errors
    /// [`AllocError`]; counted per reason. No live mapping is ever taken away.
    pub fn allocate(&mut self, now: Instant, original: &FlowKey) -> Result<Mapping, AllocError> {
        self.reclaim(now, RECLAIM_PER_CALL);
        self.last_probes = 0;
        let r = match self.state {
            State::Hyper(_) => self.allocate_hyper(original),
            State::Eim(_) => self.allocate_eim(now, original),
        };
        match r {
            Ok(_) => {
                self.counters.allocations += 1;
                self.counters.record_probes(self.last_probes);
            }
            Err(e) => {
                self.counters.probes_total += u64::from(self.last_probes);
                self.counters.record_error(e);
            }
        }
        r
    }

    /// Gives back the mapping [`Self::allocate`] returned for `original`, when its session
    /// ends; its port is quarantined until `now` + the quarantine (endpoint-independent
    /// mappings: when the last session using it ends).
    ///
    /// The allocator checks that `mapping` is live for `original`'s public side (rfc, cgn:
    /// its inside endpoint; hyperplane: its destination, which is all it stores), so the
    /// caller must hand back the flow it allocated for, as `on_end` does.
    ///
    /// # Errors
    /// [`ReleaseError::UnknownMapping`] if no such live mapping exists (counted, ignored).
    pub fn release(
        &mut self,
        now: Instant,
        original: &FlowKey,
        mapping: Mapping,
    ) -> Result<(), ReleaseError> {
        let r = match self.state {
            State::Hyper(_) => self.release_hyper(now, original, mapping),
            State::Eim(_) => self.release_eim(now, original, mapping),
        };
        match r {
            Ok(()) => self.counters.releases += 1,
            Err(_) => self.counters.release_unknown += 1,
        }
        r
    }

    /// Whether `reply` — a packet from outside to one of the public addresses — is for a
    /// mapping live here: rfc and cgn, its public address's port is mapped for its
    /// protocol (to any inside endpoint, a claimed copy's too); hyperplane, the port is
    /// mapped toward the reply's source (the flow's destination). Quarantined ports are
    /// not live. What a fleet node asks of an answer that found no session before it holds
    /// the answer for a session copy that may still come: no session will come for a port
    /// no mapping holds (a port scan's packets, a late answer).
    ///
    /// ```
    /// use nf_core::{FlowKey, Instant, ZoneId, flow::proto};
    /// use nf_nat::{AllocatorConfig, PortAllocator, Profile};
    /// let public = "198.18.0.1".parse()?;
    /// let mut ports = PortAllocator::new(AllocatorConfig::new(Profile::Rfc, vec![public], [7; 16]))?;
    /// let (server, inside) = ("192.0.2.9".parse()?, "10.0.0.2".parse()?);
    /// let flow = FlowKey::from_addrs(ZoneId(0), inside, server, proto::UDP, 5000, 53).ok_or("key")?;
    /// let m = ports.allocate(Instant::ZERO, &flow)?;
    /// let reply = ports.reply_key(&flow, m).ok_or("no reply key")?;
    /// assert!(ports.holds(&reply));
    /// // Another port of the public address: nobody's.
    /// let port = reply.dst_port ^ 1;
    /// let other = FlowKey::from_addrs(ZoneId(0), server, public, proto::UDP, 53, port).ok_or("key")?;
    /// assert!(!ports.holds(&other));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn holds(&self, reply: &FlowKey) -> bool {
        let Some(public) = self
            .public_ips
            .iter()
            .position(|a| *a == reply.dst_ip())
            .and_then(|i| u16::try_from(i).ok())
        else {
            return false;
        };
        // The flow the reply answers, as far as the allocator keys it (its destination).
        let original = reply.reversed();
        let Ok((p, fam)) = self.precheck(&original) else {
            return false;
        };
        let port = reply.dst_port;
        let (w, b) = (usize::from(port / 64), bit(port));
        let live = |used: u64, quarantined: u64| used & !quarantined & b != 0;
        match &self.state {
            State::Hyper(table) => {
                let key = WordKey {
                    tag: port / 64,
                    ..Self::dest_key(&original, public)
                };
                let hd = self.dest_hash(&key, fam == 1);
                table
                    .get(word_hash(hd, key.tag), &key)
                    .is_some_and(|v| live(v.used, v.quarantined))
            }
            State::Eim(e) => e.dense.get(usize::from(public) * 3 + p).is_some_and(|d| {
                let word = |bits: &[u64]| bits.get(w).copied().unwrap_or(0);
                live(word(&d.used), word(&d.quarantined))
            }),
        }
    }

    /// The key replies to `original` will carry once translated by `mapping`: from the
    /// original destination to the public address and port (`None` if `mapping` names no
    /// public address of the flow's family).
    pub fn reply_key(&self, original: &FlowKey, mapping: Mapping) -> Option<FlowKey> {
        let public = self.public_ips.get(usize::from(mapping.public)).copied()?;
        // An ICMP query's reply carries the (translated) identifier in both port fields.
        let src_port = if is_icmp(original.proto) {
            mapping.port
        } else {
            original.dst_port
        };
        FlowKey::from_addrs(
            original.zone,
            original.dst_ip(),
            public,
            original.proto,
            src_port,
            mapping.port,
        )
    }

    /// The public address of `mapping`.
    pub fn public_ip(&self, mapping: Mapping) -> Option<IpAddr> {
        self.public_ips.get(usize::from(mapping.public)).copied()
    }

    /// The owner of a reply to public port `port` by the port split alone (with RSS
    /// steering the split is per node and the core is the reply's queue, see
    /// [`Self::queue_of_reply`]).
    pub fn owner_of(&self, port: u16) -> PortOwner {
        crate::owner_of(port, self.space.split)
    }

    /// The split of the port space this allocator uses.
    pub fn split(&self) -> PortSplit {
        self.space.split
    }

    /// With RSS steering: the receive queue a reply with key `reply` is hashed to.
    pub fn queue_of_reply(&self, reply: &FlowKey) -> Option<u16> {
        let s = self.space.steer.as_ref()?;
        s.queue_of_reply(reply)
    }

    /// The profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Live mappings.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True if no mapping is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Ports waiting out their quarantine.
    pub fn quarantined(&self) -> usize {
        self.queue.len()
    }

    /// Live mappings on the public address with index `public`.
    pub fn active_on(&self, public: u16) -> u64 {
        self.active_on_per_protocol(public).iter().sum()
    }

    /// Live mappings on the public address with index `public`, per protocol: TCP, UDP,
    /// ICMP.
    pub fn active_on_per_protocol(&self, public: u16) -> [u64; 3] {
        self.active_per_public
            .get(usize::from(public))
            .copied()
            .unwrap_or([0; 3])
    }

    /// Probes the last [`Self::allocate`] made.
    pub fn last_probes(&self) -> u32 {
        self.last_probes
    }

    /// The counters.
    pub fn counters(&self) -> &AllocatorCounters {
        &self.counters
    }

    /// Calls `f(stage, counter, value)` for every counter (names: see
    /// [`AllocatorCounters::visit`]), the visitor every nf stage offers.
    pub fn visit_counters(
        &self,
        stage: &'static str,
        f: &mut dyn FnMut(&'static str, &'static str, u64),
    ) {
        self.counters.visit(&mut |name, v| f(stage, name, v));
    }

    /// Bytes of the allocator's tables, all allocated by [`Self::new`].
    pub fn memory_bytes(&self) -> usize {
        let q = self.queue.capacity() * core::mem::size_of::<Quarantined>();
        let dense = WORDS * 16 + SUMMARY * 8;
        q + match &self.state {
            State::Hyper(t) => t.bytes(),
            State::Eim(e) => {
                e.maps.bytes()
                    + e.subs.bytes()
                    + e.dense.len() * dense
                    + e.cgn.as_ref().map_or(0, |c| {
                        c.owner.len() * 4
                            + c.used.len() * 12
                            + c.cap.len() * 4
                            + c.lists.len() * 2
                            + c.list_owner.len() * core::mem::size_of::<SubKey>()
                            + c.free_lists.capacity() * 4
                            + c.events.capacity() * core::mem::size_of::<BlockEvent>()
                    })
            }
        }
    }

    /// The oldest CGN block event not yet taken.
    pub fn pop_block_event(&mut self) -> Option<BlockEvent> {
        match &mut self.state {
            State::Eim(e) => e.cgn.as_mut()?.events.pop_front(),
            State::Hyper(_) => None,
        }
    }

    /// When [`Self::handle_timeout`] next has work: the oldest quarantined port's release.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.front().map(|q| q.free_at)
    }

    /// Frees quarantined ports whose time has come, at most `budget`; returns how many.
    /// Idempotent for a given `now`.
    pub fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.reclaim(now, budget)
    }

    fn reclaim(&mut self, now: Instant, budget: usize) -> usize {
        let mut done = 0;
        while done < budget {
            match self.queue.front() {
                Some(q) if q.free_at <= now => {}
                _ => break,
            }
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            // A port a replica's claim took back out of quarantine is live: left alone.
            if self.free_port(now, &q) {
                self.counters.quarantined = self.counters.quarantined.saturating_sub(1);
            }
            done += 1;
        }
        done
    }

    /// The family's public addresses, and a check that a mapping may be made at all.
    fn precheck(&self, flow: &FlowKey) -> Result<(usize, usize), AllocError> {
        let p = proto_index(flow.proto).ok_or(AllocError::UnsupportedProtocol)?;
        let fam = fam_index(flow.family());
        if self.family_ips.get(fam).is_none_or(Vec::is_empty) {
            return Err(AllocError::NoPublicAddress);
        }
        Ok((p, fam))
    }

    fn has_room(&self) -> bool {
        self.live + self.queue.len() < self.max_mappings
    }

    fn dest_key(flow: &FlowKey, public: u16) -> WordKey {
        WordKey {
            dst: *flow.dst_raw(),
            dst_port: dest_port(flow),
            tag: 0,
            public,
            proto: flow.proto,
        }
    }

    /// The keyed hash that places a destination's words in the table: SipHash-1-3 of
    /// `0x03`, protocol, public index, destination port and address (4 bytes for IPv4, 16
    /// for IPv6: the public index already tells the families apart).
    fn dest_hash(&self, k: &WordKey, v6: bool) -> u64 {
        let mut b = [0u8; 22];
        b[0] = 0x03;
        b[1] = k.proto;
        b[2..4].copy_from_slice(&k.public.to_be_bytes());
        b[4..6].copy_from_slice(&k.dst_port.to_be_bytes());
        b[6..22].copy_from_slice(&k.dst);
        if v6 {
            self.hasher.hash_bytes(&b)
        } else {
            self.hasher.hash_bytes(&b[..10])
        }
    }

    fn steer_ctx(&self, fam: usize, dst: &[u8; 16], dst_port: u16, public: u16) -> SteerCtx {
        let s = self.space.steer.as_ref()?;
        let pubaddr = self.publics.get(usize::from(public))?;
        let f = if fam == 0 { Family::V4 } else { Family::V6 };
        Some((fam, s.base(f, dst, pubaddr, dst_port)))
    }

    fn first_public(&self, fam: usize, k: u64) -> (usize, usize) {
        let n = self.family_ips.get(fam).map_or(0, Vec::len).max(1);
        (((k >> 40) % n as u64) as usize, n)
    }

    fn public_at(&self, fam: usize, i: usize) -> Option<u16> {
        let l = self.family_ips.get(fam)?;
        l.get(i % l.len().max(1)).copied()
    }

    fn allocate_hyper(&mut self, flow: &FlowKey) -> Result<Mapping, AllocError> {
        let (p, fam) = self.precheck(flow)?;
        if !self.has_room() {
            return Err(AllocError::CapacityFull);
        }
        let class = range_class(flow);
        let k = self.hasher.hash(flow);
        let (first, n) = self.first_public(fam, k);
        let mut budget = self.max_probes;
        let mut too_many = false;
        for i in 0..n {
            let Some(public) = self.public_at(fam, first + i) else {
                continue;
            };
            let key = Self::dest_key(flow, public);
            let hd = self.dest_hash(&key, fam == 1);
            let steer = self.steer_ctx(fam, flow.dst_raw(), flow.dst_port, public);
            let State::Hyper(table) = &mut self.state else {
                return Err(AllocError::Exhausted);
            };
            let scan = self
                .space
                .scan(class, k, budget, steer, &HyperWords { table, key, hd });
            match scan {
                Scan::Found { port, probes } => {
                    self.last_probes += probes;
                    mark_hyper(table, &self.space, key, hd, port, steer)?;
                    self.commit_live(public, p);
                    return Ok(Mapping { public, port });
                }
                Scan::Exhausted { probes } => {
                    self.last_probes += probes;
                    budget = budget.saturating_sub(probes);
                    if budget == 0 {
                        too_many = i + 1 < n;
                        break;
                    }
                }
                Scan::TooManyProbes { probes } => {
                    self.last_probes += probes;
                    too_many = true;
                    break;
                }
            }
        }
        Err(if too_many {
            AllocError::TooManyProbes
        } else {
            AllocError::Exhausted
        })
    }

    /// Takes over node `node`'s share of the ports ([`Owner`](crate::Owner)) for sessions
    /// moving here from it ([`Conntrack::import`](nf_core::conntrack::Conntrack::import)):
    /// afterwards a session of that node's (this core's run of its ports, or with RSS
    /// steering its whole run, the reply's queue deciding as for this node's own ports) is
    /// taken over like one of this node's; new flows still get only this node's own ports.
    /// Replies to the taken-over ports must then reach this node and core: give its
    /// steering the failed node's partition too
    /// ([`Steering::own_also`](nf_core::steer::Steering::own_also) with
    /// [`PortSplit::partition`](crate::PortSplit::partition)). Idempotent.
    ///
    /// Cgn: every node's run is cut into blocks alike, so a session taken over holds its
    /// port's block of that node's run for its subscriber, as on the node that made it
    /// (with a [`BlockEvent`] when the block was free here). That node's quotas
    /// (`port_quota`, `max_blocks`) held when it made the session and are not counted
    /// again; a subscriber holds at most `max_blocks` blocks of each node's run here. When
    /// such a session ends its port is free at once: the quarantine that protects it is
    /// its own node's.
    ///
    /// # Errors
    /// [`ConfigError::Owner`] for a node out of range or this node itself.
    pub fn take_over(&mut self, node: u32) -> Result<(), ConfigError> {
        if node == self.node || !self.space.take_over(node) {
            return Err(ConfigError::Owner);
        }
        Ok(())
    }

    /// Takes the given mapping for `original`, as [`Self::allocate`] could have chosen it: a
    /// session another node translated, taken over here, released like any mapping. False,
    /// with nothing changed, for a public address not this allocator's, a port it may not
    /// hand out (outside its range, excluded, another node's or core's) or a full allocator,
    /// and per profile:
    /// - hyperplane: a port taken or quarantined for the flow's destination;
    /// - rfc and cgn: an inside endpoint mapped to another port, a port taken or quarantined
    ///   (by another endpoint), or a subscriber whose mappings are on another public address
    ///   (paired pooling);
    /// - cgn: a port outside the blocks, in a block another subscriber holds, or beyond the
    ///   subscriber's port quota or block count. A free block is taken as allocation
    ///   takes one, with its [`BlockEvent`].
    ///
    /// The sessions of one endpoint-independent mapping each claim it: the first makes
    /// it, the others hold it as reuse does.
    pub(crate) fn claim(&mut self, now: Instant, original: &FlowKey, m: Mapping) -> bool {
        self.reclaim(now, RECLAIM_PER_CALL);
        let Ok((p, fam)) = self.precheck(original) else {
            return false;
        };
        if !self
            .family_ips
            .get(fam)
            .is_some_and(|l| l.contains(&m.public))
        {
            return false;
        }
        let ok = match self.state {
            State::Hyper(_) => self.claim_hyper(original, m, p, fam),
            State::Eim(_) => self.claim_eim(now, original, m, p, fam),
        };
        if ok {
            self.counters.claimed += 1;
        }
        ok
    }

    fn claim_hyper(&mut self, original: &FlowKey, m: Mapping, p: usize, fam: usize) -> bool {
        if !self.has_room() {
            return false;
        }
        let key = Self::dest_key(original, m.public);
        let hd = self.dest_hash(&key, fam == 1);
        let steer = self.steer_ctx(fam, original.dst_raw(), original.dst_port, m.public);
        let w = m.port / 64;
        if self.space.claimable(usize::from(w), steer) & bit(m.port) == 0 {
            return false;
        }
        let State::Hyper(table) = &mut self.state else {
            return false;
        };
        let wkey = WordKey { tag: w, ..key };
        let word = table
            .find(word_hash(hd, w), &wkey)
            .and_then(|slot| table.value_at_mut(slot));
        let b = bit(m.port);
        if let Some(v) = word
            && v.used & b != 0
        {
            // Taken, or (a replica's claim) quarantined: out of quarantine, live again.
            if !(self.claim_quarantined && v.quarantined & b != 0) {
                return false;
            }
            v.quarantined &= !b;
            self.counters.quarantined = self.counters.quarantined.saturating_sub(1);
        } else if mark_hyper(table, &self.space, key, hd, m.port, steer).is_err() {
            return false;
        }
        self.commit_live(m.public, p);
        true
    }

    fn claim_eim(
        &mut self,
        now: Instant,
        original: &FlowKey,
        m: Mapping,
        p: usize,
        fam: usize,
    ) -> bool {
        let ((ik, hik), sk) = self.eim_keys(original, fam);
        let hsk = self.sub_hash(&sk);
        let room = self.has_room();
        let w = usize::from(m.port / 64);
        let allowed = self.space.claimable(w, None) & bit(m.port) != 0;
        let State::Eim(e) = &mut self.state else {
            return false;
        };
        if let Some(slot) = e.maps.find(hik, &ik) {
            // Another session of the same endpoint claimed (or made) it already.
            return e.maps.value_at_mut(slot).is_some_and(|entry| {
                let same = entry.public == m.public && entry.port == m.port;
                match entry.refs.checked_add(1) {
                    Some(r) if same => {
                        entry.refs = r;
                        true
                    }
                    _ => false,
                }
            });
        }
        let di = usize::from(m.public) * 3 + p;
        let word = |d: Option<&Dense>| {
            d.map_or((!0, !0), |d| {
                let used = d.used.get(w).copied().unwrap_or(!0);
                (used, d.quarantined.get(w).copied().unwrap_or(!0))
            })
        };
        let (used, quarantined) = word(e.dense.get(di));
        let b = bit(m.port);
        // A replica's claim may take a port out of quarantine (not cgn's: its blocks).
        let unquarantine = self.claim_quarantined && e.cgn.is_none() && used & quarantined & b != 0;
        let free = (used | quarantined) & b == 0 || unquarantine;
        let sub = e.subs.get(hsk, &sk);
        if !room || !allowed || !free || sub.is_some_and(|s| s.public != m.public) {
            return false;
        }
        if unquarantine {
            // Back to free (the commit below takes it): its queued release finds it live
            // and leaves it.
            if let Some(d) = e.dense.get_mut(di) {
                for bits in [d.used.get_mut(w), d.quarantined.get_mut(w)]
                    .into_iter()
                    .flatten()
                {
                    *bits &= !b;
                }
            }
            self.counters.quarantined = self.counters.quarantined.saturating_sub(1);
        }
        let plan = match &e.cgn {
            None => Plan {
                public: m.public,
                port: m.port,
                list: None,
                new_block: None,
            },
            Some(c) => {
                let Some(b) = c.block_of(&self.space, m.port) else {
                    return false;
                };
                // This node's quotas hold for its own run; another node's sessions were
                // within that node's quotas when it made them.
                let own = c.is_own(b);
                let quota = c.settings.port_quota;
                if own && sub.is_some_and(|s| s.per_proto.get(p).copied().unwrap_or(0) >= quota) {
                    return false;
                }
                let owner = c.owner.get(c.gi(m.public, b)).copied().unwrap_or(NO_OWNER);
                let list = match sub {
                    Some(_) => None,
                    None => match c.free_lists.last() {
                        Some(&l) => Some(l),
                        None => return false,
                    },
                };
                let new_block = match (owner, sub) {
                    (NO_OWNER, Some(s))
                        if usize::from(s.blocks) >= c.list_len
                            || own && c.own_blocks(&s) >= c.settings.max_blocks =>
                    {
                        return false;
                    }
                    (NO_OWNER, _) => Some(b),
                    (o, Some(s)) if o == s.list => None,
                    _ => return false,
                };
                Plan {
                    public: m.public,
                    port: m.port,
                    list,
                    new_block,
                }
            }
        };
        self.commit_eim(now, p, (ik, hik), (sk, hsk), &plan).is_ok()
    }

    fn commit_live(&mut self, public: u16, p: usize) {
        self.live += 1;
        let per = self.active_per_public.get_mut(usize::from(public));
        if let Some(a) = per.and_then(|a| a.get_mut(p)) {
            *a += 1;
        }
        if let Some(a) = self.counters.active.get_mut(p) {
            *a += 1;
        }
    }

    fn drop_live(&mut self, public: u16, p: usize) {
        self.live = self.live.saturating_sub(1);
        let per = self.active_per_public.get_mut(usize::from(public));
        if let Some(a) = per.and_then(|a| a.get_mut(p)) {
            *a = a.saturating_sub(1);
        }
        if let Some(a) = self.counters.active.get_mut(p) {
            *a = a.saturating_sub(1);
        }
    }

    /// Puts a freed port in quarantine, or frees it now if the quarantine is zero.
    fn quarantine(&mut self, now: Instant, q: Quarantined) {
        if self.quarantine_for == Duration::ZERO {
            self.free_port(now, &q);
        } else {
            self.queue.push_back(q);
            self.counters.quarantined += 1;
        }
    }

    fn release_hyper(
        &mut self,
        now: Instant,
        flow: &FlowKey,
        m: Mapping,
    ) -> Result<(), ReleaseError> {
        let (p, fam) = self
            .precheck(flow)
            .map_err(|_| ReleaseError::UnknownMapping)?;
        let key = WordKey {
            tag: m.port / 64,
            ..Self::dest_key(flow, m.public)
        };
        let hd = self.dest_hash(&key, fam == 1);
        let State::Hyper(table) = &mut self.state else {
            return Err(ReleaseError::UnknownMapping);
        };
        let slot = table
            .find(word_hash(hd, key.tag), &key)
            .ok_or(ReleaseError::UnknownMapping)?;
        let v = table
            .value_at_mut(slot)
            .ok_or(ReleaseError::UnknownMapping)?;
        let b = bit(m.port);
        if v.used & b == 0 || v.quarantined & b != 0 {
            return Err(ReleaseError::UnknownMapping);
        }
        v.quarantined |= b;
        self.drop_live(m.public, p);
        let q = Quarantined {
            free_at: now + self.quarantine_for,
            hd,
            dst: key.dst,
            dst_port: key.dst_port,
            port: m.port,
            public: m.public,
            proto: flow.proto,
        };
        self.quarantine(now, q);
        Ok(())
    }

    /// Frees a port at the end of its quarantine (or at once, without one); false, with
    /// nothing changed, for a port no longer in quarantine (a replica's claim took it back,
    /// [`Self::claim_quarantined`]).
    fn free_port(&mut self, now: Instant, q: &Quarantined) -> bool {
        let b = bit(q.port);
        let w = usize::from(q.port / 64);
        match &mut self.state {
            State::Hyper(table) => {
                let hd = q.hd;
                let key = WordKey {
                    dst: q.dst,
                    dst_port: q.dst_port,
                    tag: q.port / 64,
                    public: q.public,
                    proto: q.proto,
                };
                if let Some(slot) = table.find(word_hash(hd, key.tag), &key) {
                    let v = table.value_at_mut(slot);
                    if v.as_ref().is_some_and(|v| v.quarantined & b == 0) {
                        return false;
                    }
                    let empty = v.is_some_and(|v| {
                        v.used &= !b;
                        v.quarantined &= !b;
                        v.used == 0
                    });
                    if empty {
                        table.remove_at(slot);
                    }
                }
                let tag = (WORDS + w / 64) as u16;
                let skey = WordKey { tag, ..key };
                if let Some(slot) = table.find(word_hash(hd, tag), &skey) {
                    let empty = table.value_at_mut(slot).is_some_and(|v| {
                        v.used &= !(1u64 << (w % 64));
                        v.used == 0
                    });
                    if empty {
                        table.remove_at(slot);
                    }
                }
                true
            }
            State::Eim(e) => {
                let Some(p) = proto_index(q.proto) else {
                    return false;
                };
                let di = usize::from(q.public) * 3 + p;
                let held = e.dense.get(di).and_then(|d| d.quarantined.get(w));
                if held.is_some_and(|h| h & b == 0) {
                    return false;
                }
                if let Some(d) = e.dense.get_mut(di) {
                    if let Some(u) = d.used.get_mut(w) {
                        *u &= !b;
                    }
                    if let Some(u) = d.quarantined.get_mut(w) {
                        *u &= !b;
                    }
                    if let Some(f) = d.full.get_mut(w / 64) {
                        *f &= !(1u64 << (w % 64));
                    }
                }
                if let Some(cgn) = e.cgn.as_mut() {
                    cgn.port_freed(
                        now,
                        &mut e.subs,
                        &self.hasher,
                        &self.space,
                        q.public,
                        p,
                        q.port,
                        &self.public_ips,
                    );
                    self.counters.blocks_released += core::mem::take(&mut cgn.released);
                    self.counters.block_events_dropped += core::mem::take(&mut cgn.dropped);
                }
                true
            }
        }
    }

    fn allocate_eim(&mut self, now: Instant, flow: &FlowKey) -> Result<Mapping, AllocError> {
        let (p, fam) = self.precheck(flow)?;
        let ((ik, hik), sk) = self.eim_keys(flow, fam);
        let State::Eim(e) = &mut self.state else {
            return Err(AllocError::Exhausted);
        };
        if let Some(slot) = e.maps.find(hik, &ik) {
            let Some(m) = e.maps.value_at_mut(slot) else {
                return Err(AllocError::Exhausted);
            };
            m.refs = m.refs.checked_add(1).ok_or(AllocError::CapacityFull)?;
            self.counters.reused += 1;
            return Ok(Mapping {
                public: m.public,
                port: m.port,
            });
        }
        if !self.has_room() {
            return Err(AllocError::CapacityFull);
        }
        let hsk = self.sub_hash(&sk);
        let k = self.hasher.hash(flow);
        let plan = if matches!(self.profile, Profile::Cgn(_)) {
            self.plan_cgn(p, fam, k, &sk, hsk)?
        } else {
            self.plan_rfc(flow, p, fam, k, &sk, hsk)?
        };
        self.commit_eim(now, p, (ik, hik), (sk, hsk), &plan)
    }

    /// Commits `plan` for the inside endpoint `ik` of subscriber `sk` (with their hashes):
    /// the mapping entry (one reference), the subscriber's counts (and, CGN, its block list
    /// and a new block with its event), the port's bit. Nothing above it changed any state.
    fn commit_eim(
        &mut self,
        now: Instant,
        p: usize,
        (ik, hik): (InsideKey, u64),
        (sk, hsk): (SubKey, u64),
        plan: &Plan,
    ) -> Result<Mapping, AllocError> {
        let State::Eim(e) = &mut self.state else {
            return Err(AllocError::Exhausted);
        };
        let entry = EimEntry {
            public: plan.public,
            port: plan.port,
            refs: 1,
        };
        let counted = e
            .cgn
            .as_ref()
            .is_none_or(|c| c.counts_against_quota(&self.space, plan.port));
        let map_slot = e
            .maps
            .insert_new(hik, ik, entry)
            .map_err(|_| AllocError::CapacityFull)?;
        match e.subs.find(hsk, &sk) {
            Some(slot) => {
                if let Some(s) = e.subs.value_at_mut(slot) {
                    s.mappings += 1;
                    if let Some(c) = s.per_proto.get_mut(p)
                        && counted
                    {
                        *c += 1;
                    }
                }
            }
            None => {
                let mut per_proto = [0; 3];
                if let Some(c) = per_proto.get_mut(p)
                    && counted
                {
                    *c = 1;
                }
                let sub = Sub {
                    public: plan.public,
                    mappings: 1,
                    per_proto,
                    list: plan.list.unwrap_or(NO_OWNER),
                    blocks: 0,
                };
                if e.subs.insert_new(hsk, sk, sub).is_err() {
                    e.maps.remove_at(map_slot);
                    return Err(AllocError::CapacityFull);
                }
                if let (Some(c), Some(l)) = (e.cgn.as_mut(), plan.list) {
                    // The plan named the top of the free stack.
                    c.free_lists.pop();
                    if let Some(o) = c.list_owner.get_mut(l as usize) {
                        *o = sk;
                    }
                }
            }
        }
        if let (Some(c), Some(b)) = (e.cgn.as_mut(), plan.new_block) {
            let zone = ZoneId(sk.zone);
            let subscriber = ip_of(sk.v6, &sk.addr);
            let public = self
                .public_ips
                .get(usize::from(plan.public))
                .copied()
                .unwrap_or(subscriber);
            if let Some(slot) = e.subs.find(hsk, &sk)
                && let Some(s) = e.subs.value_at_mut(slot)
            {
                c.take_block(s, plan.public, b);
            }
            let evt = c.event(BlockEventKind::Allocated, now, zone, subscriber, public, b);
            self.counters.blocks_allocated += 1;
            if !c.push_event(evt) {
                self.counters.block_events_dropped += 1;
            }
        }
        let w = usize::from(plan.port / 64);
        let di = usize::from(plan.public) * 3 + p;
        if let Some(d) = e.dense.get_mut(di) {
            let allowed = self.space.allowed(w, None);
            if let Some(u) = d.used.get_mut(w) {
                *u |= bit(plan.port);
                if allowed & !*u == 0
                    && let Some(f) = d.full.get_mut(w / 64)
                {
                    *f |= 1u64 << (w % 64);
                }
            }
        }
        if let Some(c) = e.cgn.as_mut() {
            c.count_port(&self.space, plan.public, p, plan.port, 1);
        }
        self.commit_live(plan.public, p);
        Ok(Mapping {
            public: plan.public,
            port: plan.port,
        })
    }

    /// The endpoint-independent state's keys of `flow`'s inside endpoint (with its hash)
    /// and subscriber (family index `fam`).
    fn eim_keys(&self, flow: &FlowKey, fam: usize) -> ((InsideKey, u64), SubKey) {
        let ik = InsideKey {
            addr: *flow.src_raw(),
            zone: flow.zone.0,
            port: flow.src_port,
            proto: flow.proto,
            v6: fam == 1,
        };
        let sk = SubKey {
            addr: ik.addr,
            zone: ik.zone,
            v6: ik.v6,
        };
        ((ik, self.inside_hash(&ik)), sk)
    }

    fn inside_hash(&self, k: &InsideKey) -> u64 {
        let mut b = [0u8; 25];
        b[0] = 0x01;
        b[1] = u8::from(k.v6);
        b[2] = k.proto;
        b[3..7].copy_from_slice(&k.zone.to_be_bytes());
        b[7..9].copy_from_slice(&k.port.to_be_bytes());
        b[9..25].copy_from_slice(&k.addr);
        self.hasher.hash_bytes(&b)
    }

    fn sub_hash(&self, k: &SubKey) -> u64 {
        sub_hash_with(&self.hasher, k)
    }

    fn plan_rfc(
        &mut self,
        flow: &FlowKey,
        p: usize,
        fam: usize,
        k: u64,
        sk: &SubKey,
        hsk: u64,
    ) -> Result<Plan, AllocError> {
        let class = range_class(flow);
        let State::Eim(e) = &self.state else {
            return Err(AllocError::Exhausted);
        };
        let paired = e.subs.get(hsk, sk).map(|s| s.public);
        let (first, n) = self.first_public(fam, k);
        let mut budget = self.max_probes;
        let mut too_many = false;
        let tries = if paired.is_some() { 1 } else { n };
        for i in 0..tries {
            let public = match paired {
                Some(pb) => pb,
                None => match self.public_at(fam, first + i) {
                    Some(pb) => pb,
                    None => continue,
                },
            };
            let Some(d) = e.dense.get(usize::from(public) * 3 + p) else {
                continue;
            };
            match self.space.scan(class, k, budget, None, d) {
                Scan::Found { port, probes } => {
                    self.last_probes += probes;
                    return Ok(Plan {
                        public,
                        port,
                        list: None,
                        new_block: None,
                    });
                }
                Scan::Exhausted { probes } => {
                    self.last_probes += probes;
                    budget = budget.saturating_sub(probes);
                    if budget == 0 {
                        too_many = i + 1 < tries;
                        break;
                    }
                }
                Scan::TooManyProbes { probes } => {
                    self.last_probes += probes;
                    too_many = true;
                    break;
                }
            }
        }
        Err(if too_many {
            AllocError::TooManyProbes
        } else {
            AllocError::Exhausted
        })
    }

    fn plan_cgn(
        &mut self,
        p: usize,
        fam: usize,
        k: u64,
        sk: &SubKey,
        hsk: u64,
    ) -> Result<Plan, AllocError> {
        let State::Eim(e) = &self.state else {
            return Err(AllocError::Exhausted);
        };
        let Some(c) = e.cgn.as_ref() else {
            return Err(AllocError::Exhausted);
        };
        let sub = e.subs.get(hsk, sk);
        let quota = c.settings.port_quota;
        if sub.map_or(0, |s| s.per_proto.get(p).copied().unwrap_or(0)) >= quota {
            return Err(AllocError::QuotaExceeded);
        }
        let budget = self.max_probes;
        let mut probes = 0u32;
        // The subscriber's blocks first, from a keyed start.
        if let Some(s) = sub {
            let nb = usize::from(s.blocks);
            let start = (k % nb.max(1) as u64) as usize;
            for t in 0..nb {
                let Some(b) = c.list_block(s.list, (start + t) % nb) else {
                    continue;
                };
                if !c.is_own(b)
                    || c.block_used(s.public, b, p) >= c.cap.get(b).copied().unwrap_or(0)
                {
                    continue;
                }
                let Some(d) = e.dense.get(usize::from(s.public) * 3 + p) else {
                    continue;
                };
                match c.scan_block(&self.space, d, b, k, budget, &mut probes) {
                    Ok(Some(port)) => {
                        self.last_probes = probes;
                        return Ok(Plan {
                            public: s.public,
                            port,
                            list: None,
                            new_block: None,
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.last_probes = probes;
                        return Err(e);
                    }
                }
            }
            if c.own_blocks(&s) >= c.settings.max_blocks || usize::from(s.blocks) >= c.list_len {
                self.last_probes = probes;
                return Err(AllocError::QuotaExceeded);
            }
        }
        // A new block: on the subscriber's address, or (new subscriber) the first address
        // from a keyed start that has one free.
        let list = match sub {
            Some(_) => None,
            None => Some(*c.free_lists.last().ok_or(AllocError::CapacityFull)?),
        };
        let (first, n) = self.first_public(fam, k);
        let tries = if sub.is_some() { 1 } else { n };
        for i in 0..tries {
            let public = match sub {
                Some(s) => s.public,
                None => match self.public_at(fam, first + i) {
                    Some(pb) => pb,
                    None => continue,
                },
            };
            let Some(b) = c.free_block(public, k) else {
                continue;
            };
            let Some(d) = e.dense.get(usize::from(public) * 3 + p) else {
                continue;
            };
            let found = c.scan_block(&self.space, d, b, k, budget, &mut probes);
            self.last_probes = probes;
            match found {
                Ok(Some(port)) => {
                    return Ok(Plan {
                        public,
                        port,
                        list,
                        new_block: Some(b),
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        self.last_probes = probes;
        Err(AllocError::Exhausted)
    }

    fn release_eim(
        &mut self,
        now: Instant,
        flow: &FlowKey,
        m: Mapping,
    ) -> Result<(), ReleaseError> {
        let (p, fam) = self
            .precheck(flow)
            .map_err(|_| ReleaseError::UnknownMapping)?;
        let ((ik, hik), sk) = self.eim_keys(flow, fam);
        let hsk = self.sub_hash(&sk);
        let is_cgn = matches!(self.profile, Profile::Cgn(_));
        let State::Eim(e) = &mut self.state else {
            return Err(ReleaseError::UnknownMapping);
        };
        let slot = e.maps.find(hik, &ik).ok_or(ReleaseError::UnknownMapping)?;
        let entry = e
            .maps
            .value_at_mut(slot)
            .ok_or(ReleaseError::UnknownMapping)?;
        if entry.public != m.public || entry.port != m.port {
            return Err(ReleaseError::UnknownMapping);
        }
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs > 0 {
            return Ok(());
        }
        e.maps.remove_at(slot);
        let counted = e
            .cgn
            .as_ref()
            .is_none_or(|c| c.counts_against_quota(&self.space, m.port));
        if let Some(slot) = e.subs.find(hsk, &sk) {
            let gone = e.subs.value_at_mut(slot).is_some_and(|s| {
                s.mappings = s.mappings.saturating_sub(1);
                if let Some(c) = s.per_proto.get_mut(p)
                    && counted
                {
                    *c = c.saturating_sub(1);
                }
                s.mappings == 0 && (!is_cgn || s.blocks == 0)
            });
            if gone {
                e.subs.remove_at(slot);
            }
        }
        let w = usize::from(m.port / 64);
        if let Some(q) = e
            .dense
            .get_mut(usize::from(m.public) * 3 + p)
            .and_then(|d| d.quarantined.get_mut(w))
        {
            *q |= bit(m.port);
        }
        self.drop_live(m.public, p);
        let q = Quarantined {
            free_at: now + self.quarantine_for,
            hd: 0,
            dst: [0; 16],
            dst_port: 0,
            port: m.port,
            public: m.public,
            proto: flow.proto,
        };
        if counted {
            self.quarantine(now, q);
        } else {
            // CGN, a port of another node's run (a copy's, a session taken over): that node's
            // quarantine protects the port; held here too, the block would stay its holder's
            // after that node gave it to someone else.
            self.free_port(now, &q);
        }
        Ok(())
    }
}

/// A port chosen, not yet committed.
struct Plan {
    public: u16,
    port: u16,
    /// CGN, new subscriber: the block list it takes.
    list: Option<u32>,
    /// CGN: a block to assign first.
    new_block: Option<usize>,
}

/// Sets `port`'s bit for a hyperplane destination, and the word's full bit if it has no
/// port left.
fn mark_hyper(
    table: &mut Table<WordKey, WordVal>,
    space: &Space,
    key: WordKey,
    hd: u64,
    port: u16,
    steer: SteerCtx,
) -> Result<(), AllocError> {
    let w = port / 64;
    let wkey = WordKey { tag: w, ..key };
    let h = word_hash(hd, w);
    let used = match table.find(h, &wkey) {
        Some(slot) => match table.value_at_mut(slot) {
            Some(v) => {
                v.used |= bit(port);
                v.used
            }
            None => return Err(AllocError::CapacityFull),
        },
        None => {
            let v = WordVal {
                used: bit(port),
                quarantined: 0,
            };
            table
                .insert_new(h, wkey, v)
                .map_err(|_| AllocError::CapacityFull)?;
            v.used
        }
    };
    if space.allowed(usize::from(w), steer) & !used == 0 {
        // The summary only speeds searches up: if it cannot be recorded, a search probes
        // the full word instead.
        let tag = (WORDS + usize::from(w) / 64) as u16;
        let skey = WordKey { tag, ..key };
        let h = word_hash(hd, tag);
        let b = 1u64 << (w % 64);
        match table.find(h, &skey) {
            Some(slot) => {
                if let Some(v) = table.value_at_mut(slot) {
                    v.used |= b;
                }
            }
            None => {
                let _ = table.insert_new(
                    h,
                    skey,
                    WordVal {
                        used: b,
                        quarantined: 0,
                    },
                );
            }
        }
    }
    Ok(())
}

impl Cgn {
    /// Block state for `n_ips` addresses, and block lists for as many subscribers as can
    /// hold a block at once: one per block, and no more than `max_mappings` (a subscriber
    /// holds a block only while it has a live or quarantined port in it).
    fn new(
        s: CgnSettings,
        space: &Space,
        n_ips: usize,
        max_mappings: usize,
    ) -> Result<Self, ConfigError> {
        let bs = usize::from(s.block_size);
        if bs == 0 || bs % 64 != 0 || bs > 4096 || s.max_blocks == 0 {
            return Err(ConfigError::Blocks);
        }
        let wpb = bs / 64;
        // Every node's run of the high class (this core's run of it), one after another.
        let nodes = space.split.nodes.max(1);
        let mut runs = Vec::with_capacity(nodes as usize);
        let mut cap: Vec<u32> = Vec::new();
        for node in 0..nodes {
            let Some(ns) = space.of_node(node) else {
                return Err(ConfigError::Owner);
            };
            let (lo, hi) = ns.class_words(1);
            let blocks = hi.saturating_sub(lo) / wpb;
            runs.push(BlockRun {
                base: lo,
                first: cap.len(),
                blocks,
            });
            cap.extend((0..blocks).map(|b| {
                (0..wpb)
                    .map(|i| ns.allowed(lo + b * wpb + i, None).count_ones())
                    .sum::<u32>()
            }));
        }
        let own = usize::try_from(space.owner_node()).unwrap_or(usize::MAX);
        if runs.get(own).is_none_or(|r| r.blocks == 0) {
            return Err(ConfigError::Blocks);
        }
        let blocks_per_ip = cap.len();
        let total = blocks_per_ip * n_ips;
        let lists = total.min(max_mappings);
        let list_len = usize::from(s.max_blocks) * runs.len();
        Ok(Self {
            settings: s,
            words_per_block: wpb,
            runs,
            own,
            blocks_per_ip,
            cap,
            owner: vec![NO_OWNER; total],
            used: vec![[0; 3]; total],
            list_len,
            lists: vec![0; lists * list_len],
            list_owner: vec![
                SubKey {
                    addr: [0; 16],
                    zone: 0,
                    v6: false
                };
                lists
            ],
            free_lists: (0..lists as u32).rev().collect(),
            events: VecDeque::with_capacity(s.event_capacity),
            released: 0,
            dropped: 0,
        })
    }

    fn gi(&self, public: u16, b: usize) -> usize {
        usize::from(public) * self.blocks_per_ip + b
    }

    fn list_block(&self, list: u32, i: usize) -> Option<usize> {
        self.lists
            .get(list as usize * self.list_len + i)
            .map(|&b| usize::from(b))
    }

    /// The run block `b` is in.
    fn run_of(&self, b: usize) -> Option<&BlockRun> {
        self.runs
            .iter()
            .find(|r| r.first <= b && b < r.first + r.blocks)
    }

    /// Block `b` is in this node's run.
    fn is_own(&self, b: usize) -> bool {
        self.runs
            .get(self.own)
            .is_some_and(|r| r.first <= b && b < r.first + r.blocks)
    }

    /// The first word of block `b`.
    fn first_word(&self, b: usize) -> Option<usize> {
        let r = self.run_of(b)?;
        Some(r.base + (b - r.first) * self.words_per_block)
    }

    /// A mapping to `port` counts against its subscriber's port quota here: a port of this
    /// node's run.
    fn counts_against_quota(&self, space: &Space, port: u16) -> bool {
        self.block_of(space, port).is_some_and(|b| self.is_own(b))
    }

    /// The blocks of this node's run that subscriber `s` holds.
    fn own_blocks(&self, s: &Sub) -> u16 {
        let n = (0..usize::from(s.blocks))
            .filter_map(|i| self.list_block(s.list, i))
            .filter(|&b| self.is_own(b))
            .count();
        u16::try_from(n).unwrap_or(u16::MAX)
    }

    fn block_used(&self, public: u16, b: usize, p: usize) -> u32 {
        self.used
            .get(self.gi(public, b))
            .and_then(|u| u.get(p))
            .copied()
            .unwrap_or(u32::MAX)
    }

    /// The block of `port`: in the run of the node that owns the port (its word may hold
    /// the ports of two nodes' runs), if the port is this core's and inside a block.
    fn block_of(&self, space: &Space, port: u16) -> Option<usize> {
        let (node, core) = space.owner_of(port);
        if core != space.core() {
            return None;
        }
        let r = self.runs.get(node as usize)?;
        let i = (usize::from(port) / 64).checked_sub(r.base)? / self.words_per_block;
        (i < r.blocks).then_some(r.first + i)
    }

    /// A free block of this node's run on `public` with ports to give, from a keyed start.
    fn free_block(&self, public: u16, k: u64) -> Option<usize> {
        let r = self.runs.get(self.own)?;
        let n = r.blocks.max(1);
        let start = ((k >> 16) % n as u64) as usize;
        (0..r.blocks).map(|t| r.first + (start + t) % n).find(|&b| {
            self.owner.get(self.gi(public, b)) == Some(&NO_OWNER)
                && self.cap.get(b).is_some_and(|&c| c > 0)
        })
    }

    /// Searches block `b` word by word (each word one probe) from a keyed start.
    fn scan_block(
        &self,
        space: &Space,
        d: &Dense,
        b: usize,
        k: u64,
        budget: u32,
        probes: &mut u32,
    ) -> Result<Option<u16>, AllocError> {
        let wpb = self.words_per_block;
        let Some(first) = self.first_word(b) else {
            return Ok(None);
        };
        let start = (k as usize) % wpb;
        let bit0 = ((k >> 32) & 63) as u32;
        for t in 0..wpb {
            let w = first + (start + t) % wpb;
            let a = space.allowed(w, None);
            if a == 0 {
                continue;
            }
            if *probes >= budget {
                return Err(AllocError::TooManyProbes);
            }
            *probes += 1;
            let avail = a & !d.used(w);
            if avail != 0 {
                let bi = (avail.rotate_right(bit0).trailing_zeros() + bit0) & 63;
                return Ok(Some((w * 64) as u16 | bi as u16));
            }
        }
        Ok(None)
    }

    fn take_block(&mut self, s: &mut Sub, public: u16, b: usize) {
        let gi = self.gi(public, b);
        if let Some(o) = self.owner.get_mut(gi) {
            *o = s.list;
        }
        if usize::from(s.blocks) >= self.list_len {
            return;
        }
        if let Some(x) = self
            .lists
            .get_mut(s.list as usize * self.list_len + usize::from(s.blocks))
        {
            *x = b as u16;
            s.blocks += 1;
        }
    }

    fn count_port(&mut self, space: &Space, public: u16, p: usize, port: u16, delta: i32) {
        let Some(b) = self.block_of(space, port) else {
            return;
        };
        let gi = self.gi(public, b);
        if let Some(c) = self.used.get_mut(gi).and_then(|u| u.get_mut(p)) {
            *c = c.saturating_add_signed(delta);
        }
    }

    fn event(
        &self,
        kind: BlockEventKind,
        at: Instant,
        zone: ZoneId,
        subscriber: IpAddr,
        public: IpAddr,
        b: usize,
    ) -> BlockEvent {
        let first = (self.first_word(b).unwrap_or(0) * 64) as u16;
        let node = self
            .runs
            .iter()
            .position(|r| r.first <= b && b < r.first + r.blocks)
            .unwrap_or(self.own);
        BlockEvent {
            kind,
            at,
            zone,
            subscriber,
            public,
            first_port: first,
            last_port: first.saturating_add(self.settings.block_size - 1),
            node: u32::try_from(node).unwrap_or(u32::MAX),
            taken_over: node != self.own,
        }
    }

    /// Queues an event; false if the queue is full.
    fn push_event(&mut self, e: BlockEvent) -> bool {
        if self.events.len() >= self.settings.event_capacity {
            return false;
        }
        self.events.push_back(e);
        true
    }

    /// Counts a port of `public` out of quarantine; releases its block if that was the
    /// block's last port in use.
    #[expect(
        clippy::too_many_arguments,
        reason = "private helper over split borrows"
    )]
    fn port_freed(
        &mut self,
        now: Instant,
        subs: &mut Table<SubKey, Sub>,
        hasher: &FlowHasher,
        space: &Space,
        public: u16,
        p: usize,
        port: u16,
        ips: &[IpAddr],
    ) {
        self.count_port(space, public, p, port, -1);
        let Some(b) = self.block_of(space, port) else {
            return;
        };
        let gi = self.gi(public, b);
        if self.used.get(gi).is_none_or(|u| u.iter().any(|&c| c > 0)) {
            return;
        }
        let Some(&list) = self.owner.get(gi) else {
            return;
        };
        if list == NO_OWNER {
            return;
        }
        if let Some(o) = self.owner.get_mut(gi) {
            *o = NO_OWNER;
        }
        let Some(&sk) = self.list_owner.get(list as usize) else {
            return;
        };
        let hsk = sub_hash_with(hasher, &sk);
        if let Some(slot) = subs.find(hsk, &sk) {
            let mut gone = false;
            if let Some(s) = subs.value_at_mut(slot) {
                let base = list as usize * self.list_len;
                let n = usize::from(s.blocks);
                if let Some(l) = self.lists.get_mut(base..base + n)
                    && let Some(i) = l.iter().position(|&x| usize::from(x) == b)
                {
                    l.swap(i, n - 1);
                    s.blocks -= 1;
                }
                gone = s.blocks == 0 && s.mappings == 0;
            }
            if gone {
                subs.remove_at(slot);
                self.free_lists.push(list);
            }
        }
        let subscriber = ip_of(sk.v6, &sk.addr);
        let pubip = ips.get(usize::from(public)).copied().unwrap_or(subscriber);
        let evt = self.event(
            BlockEventKind::Released,
            now,
            ZoneId(sk.zone),
            subscriber,
            pubip,
            b,
        );
        self.released += 1;
        if !self.push_event(evt) {
            self.dropped += 1;
        }
    }
}

fn sub_hash_with(hasher: &FlowHasher, k: &SubKey) -> u64 {
    let mut b = [0u8; 22];
    b[0] = 0x02;
    b[1] = u8::from(k.v6);
    b[2..6].copy_from_slice(&k.zone.to_be_bytes());
    b[6..22].copy_from_slice(&k.addr);
    hasher.hash_bytes(&b)
}
