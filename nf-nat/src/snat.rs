//! The SNAT session service; see the crate docs, section SNAT.

use crate::alloc_error::AllocError;
use crate::allocator::{Mapping, PortAllocator};
use crate::config::{AllocatorConfig, ConfigError, Profile};
use crate::portable;
use crate::store::Store;
use crate::table::Table;
use alloc::vec::Vec;
use core::hint::select_unpredictable;
use core::net::{IpAddr, SocketAddr};
use nf_core::conntrack::{EndCause, NewFlow, SessionInfo, SessionService};
use nf_core::flow::proto;
use nf_core::reply::{IcmpOrigin, ReplyBucket};
use nf_core::rewrite::{End, Layout, rewrite, rewrite_packet, translate_icmp_error};
use nf_core::{
    Direction, DropReason, Family, FlowHasher, FlowKey, Instant, Packet, PortId, Verdict, ZoneId,
    flags, reply,
};

/// An inside prefix whose flows are translated, optionally only in one zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InsidePrefix {
    /// The zone it applies to (`None`: every zone).
    pub zone: Option<ZoneId>,
    /// The prefix's address.
    pub addr: IpAddr,
    /// The prefix length (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub len: u8,
}

impl InsidePrefix {
    /// `addr/len` in every zone.
    pub const fn new(addr: IpAddr, len: u8) -> Self {
        Self {
            zone: None,
            addr,
            len,
        }
    }

    /// Restricts the prefix to one zone.
    #[must_use]
    pub const fn in_zone(mut self, zone: ZoneId) -> Self {
        self.zone = Some(zone);
        self
    }

    fn contains(&self, key: &FlowKey) -> bool {
        if self.zone.is_some_and(|z| z != key.zone) {
            return false;
        }
        let (a, bits) = match self.addr {
            IpAddr::V4(a) if key.family() == Family::V4 => (u128::from(u32::from(a)) << 96, 32),
            IpAddr::V6(a) if key.family() == Family::V6 => (u128::from(a), 128),
            _ => return false,
        };
        // IPv4 sits in the first four bytes: the prefix compares from the top either way.
        let src = u128::from_be_bytes(*key.src_raw());
        let len = u32::from(self.len.min(bits));
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        (a ^ src) & mask == 0
    }
}

/// A static port forward (DNAT): flows to `public` (one of the allocator's public
/// addresses, and a port) are sent to `inside`, and the inside host's replies leave from
/// `public` again. The public port is taken out of the allocator's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortForward {
    /// The zone it applies to (`None`: every zone).
    pub zone: Option<ZoneId>,
    /// TCP or UDP.
    pub proto: u8,
    /// The public address and port flows arrive at.
    pub public: SocketAddr,
    /// The inside address and port they are forwarded to.
    pub inside: SocketAddr,
}

impl PortForward {
    /// Forwards `proto` (TCP or UDP) flows to `public` to `inside`, in every zone.
    pub const fn new(proto: u8, public: SocketAddr, inside: SocketAddr) -> Self {
        Self {
            zone: None,
            proto,
            public,
            inside,
        }
    }

    /// Restricts the forward to one zone.
    #[must_use]
    pub const fn in_zone(mut self, zone: ZoneId) -> Self {
        self.zone = Some(zone);
        self
    }

    fn matches(&self, key: &FlowKey) -> bool {
        self.zone.is_none_or(|z| z == key.zone)
            && key.proto == self.proto
            && key.dst_port == self.public.port()
            && key.dst_ip() == self.public.ip()
    }
}

/// Which inbound packets reach an inside host's mapping (RFC 4787 §5, REQ-8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Filtering {
    /// Only replies from the flow's own destination address and port (the default; the
    /// only one the hyperplane profile allows, its mappings being per destination).
    #[default]
    AddressAndPortDependent,
    /// Any outside host may send to a live endpoint-independent mapping (TCP and UDP): its
    /// first packet opens a session to the inside endpoint on the same mapping (rfc and cgn
    /// profiles).
    EndpointIndependent,
}

/// Settings of a [`Snat`] service.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnatConfig {
    /// The port allocator's settings (profile, public addresses, bounds).
    pub allocator: AllocatorConfig,
    /// Inside prefixes whose flows are translated (empty: every flow not to a public
    /// address).
    pub inside: Vec<InsidePrefix>,
    /// IPv6 sessions translated at once (the store of inside IPv6 addresses, allocated up
    /// front: 20 bytes each).
    pub v6_sessions: usize,
    /// Static port forwards (DNAT).
    pub forwards: Vec<PortForward>,
    /// Inbound filtering of mappings.
    pub filtering: Filtering,
    /// Where the RST answering a TCP segment from inside that has no session goes (the
    /// hyperplane profile's idle timeout: the inside host learns at once that its
    /// connection is gone); `None`: such segments are dropped silently (`no_session`).
    pub idle_reset: Option<PortId>,
    /// ICMP errors for flows from inside refused for lack of resources: their source,
    /// port and rate (`None`, the default: the typed drop only).
    pub refusal_icmp: Option<IcmpOrigin>,
    /// Sessions hairpinned to another inside host's mapping at once (the store of their
    /// peers, allocated up front: 26 bytes each; default an eighth of `max_mappings`).
    /// Only allocated where such hairpinning exists: rfc and cgn profiles with
    /// endpoint-independent filtering or configured inside prefixes. At most 2^31 (a
    /// larger figure holds 2^31).
    pub hairpin_sessions: usize,
}

impl SnatConfig {
    /// Translate every flow with `allocator`; IPv6 sessions up to its `max_mappings`.
    pub fn new(allocator: AllocatorConfig) -> Self {
        let v6_sessions = allocator.max_mappings;
        let idle_reset = (allocator.profile == Profile::Hyperplane).then_some(PortId(0));
        let hairpin_sessions = allocator.max_mappings / 8;
        Self {
            allocator,
            inside: Vec::new(),
            v6_sessions,
            forwards: Vec::new(),
            filtering: Filtering::AddressAndPortDependent,
            idle_reset,
            refusal_icmp: None,
            hairpin_sessions,
        }
    }

    /// Sets how many sessions may be hairpinned to another inside host's mapping at once.
    #[must_use]
    pub fn with_hairpin_sessions(mut self, n: usize) -> Self {
        self.hairpin_sessions = n;
        self
    }

    /// Answers flows refused for lack of resources (ports, probes, capacity, quota, session
    /// table) with ICMP destination unreachable, administratively prohibited (RFC 5508
    /// REQ-8), or not (`None`).
    #[must_use]
    pub fn with_refusal_icmp(mut self, icmp: Option<IcmpOrigin>) -> Self {
        self.refusal_icmp = icmp;
        self
    }

    /// Answers TCP segments from inside that have no session with a RST sent on `port`
    /// (`Some`; the default of the hyperplane profile, on port 0) or drops them silently
    /// (`None`; the default of the others).
    #[must_use]
    pub fn with_idle_reset(mut self, port: Option<PortId>) -> Self {
        self.idle_reset = port;
        self
    }

    /// Sets the inbound filtering (endpoint-independent needs the rfc or cgn profile).
    #[must_use]
    pub fn with_filtering(mut self, filtering: Filtering) -> Self {
        self.filtering = filtering;
        self
    }

    /// Adds a static port forward (its public port is excluded from allocation).
    #[must_use]
    pub fn with_forward(mut self, forward: PortForward) -> Self {
        self.forwards.push(forward);
        self
    }

    /// Adds an inside prefix (once one is given, only flows from inside prefixes are
    /// translated).
    #[must_use]
    pub fn with_inside(mut self, prefix: InsidePrefix) -> Self {
        self.inside.push(prefix);
        self
    }

    /// Sets how many IPv6 sessions may be translated at once.
    #[must_use]
    pub fn with_v6_sessions(mut self, n: usize) -> Self {
        self.v6_sessions = n;
        self
    }
}

/// What a [`Snat`] service has done (monotonic), by stable snake_case names through
/// [`SessionService::visit_counters`] under the stage name `snat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnatCounters {
    /// New flows given a mapping.
    pub flows_translated: u64,
    /// New inbound flows sent on by a port forward.
    pub flows_forwarded: u64,
    /// New flows from inside to a port forward or to another inside host's mapping,
    /// hairpinned.
    pub flows_hairpinned: u64,
    /// New inbound flows admitted to a mapping by endpoint-independent filtering.
    pub flows_inbound: u64,
    /// New flows that match no inside prefix, passed untranslated.
    pub flows_untranslated: u64,
    /// Translated sessions taken over from another node
    /// ([`Conntrack::import`](nf_core::conntrack::Conntrack::import)).
    pub flows_imported: u64,
    /// New flows refused (allocator errors, reply key conflicts, IPv6 store full).
    pub flows_refused: u64,
    /// Unsolicited flows to a public address, dropped.
    pub no_mapping: u64,
    /// Packets translated in the original direction.
    pub packets_out: u64,
    /// Packets translated in the reply direction.
    pub packets_in: u64,
    /// ICMP errors translated.
    pub icmp_errors_translated: u64,
    /// ICMP errors dropped because they could not be rewritten.
    pub icmp_errors_dropped: u64,
    /// Later fragments translated.
    pub fragments_translated: u64,
    /// Packets of hairpinned sessions translated (both directions).
    pub packets_hairpinned: u64,
    /// Packets dropped because their headers could not be rewritten.
    pub rewrite_failed: u64,
    /// TCP segments from inside without a session (their session idled out) answered with
    /// a RST ([`SnatConfig::idle_reset`]).
    pub idle_timeout_resets: u64,
    /// Refused flows answered with ICMP administratively prohibited
    /// ([`SnatConfig::refusal_icmp`]).
    pub refusal_icmp_sent: u64,
    /// Refused flows left without that ICMP error by its rate limit.
    pub refusal_icmp_rate_limited: u64,
    /// Packets hairpinned to another inside host's mapping that its address-and-port-dependent
    /// filtering did not accept yet (that host has not sent to the flow's mapped source),
    /// dropped as `nat_no_mapping`.
    pub hairpin_filtered: u64,
}

impl SnatCounters {
    fn visit(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        for (name, v) in [
            ("flows_translated", self.flows_translated),
            ("flows_forwarded", self.flows_forwarded),
            ("flows_hairpinned", self.flows_hairpinned),
            ("flows_inbound", self.flows_inbound),
            ("flows_untranslated", self.flows_untranslated),
            ("flows_imported", self.flows_imported),
            ("flows_refused", self.flows_refused),
            ("no_mapping", self.no_mapping),
            ("packets_out", self.packets_out),
            ("packets_in", self.packets_in),
            ("icmp_errors_translated", self.icmp_errors_translated),
            ("icmp_errors_dropped", self.icmp_errors_dropped),
            ("fragments_translated", self.fragments_translated),
            ("packets_hairpinned", self.packets_hairpinned),
            ("rewrite_failed", self.rewrite_failed),
            ("idle_timeout_resets", self.idle_timeout_resets),
            ("refusal_icmp_sent", self.refusal_icmp_sent),
            ("refusal_icmp_rate_limited", self.refusal_icmp_rate_limited),
            ("hairpin_filtered", self.hairpin_filtered),
        ] {
            f(STAGE, name, v);
        }
    }
}

/// The stage name of the service's counters.
const STAGE: &str = "snat";

/// Names of the live-mapping gauges of the first 16 public addresses (by index in
/// [`AllocatorConfig::public_ips`]): in all, then per protocol; further addresses are read
/// with [`PortAllocator::active_on_per_protocol`].
macro_rules! active_names {
    ($($i:literal)*) => {
        [$((
            concat!("active_public_", $i),
            [
                concat!("active_public_", $i, "_tcp"),
                concat!("active_public_", $i, "_udp"),
                concat!("active_public_", $i, "_icmp"),
            ],
        ),)*]
    };
}
const ACTIVE_PER_PUBLIC: [(&str, [&str; 3]); 16] =
    active_names!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);

/// The session value of [`Snat`]: the mapping and the inside endpoint, 15 bytes with an
/// alignment of 1, so that it composes: an IPv4 session record holds 16 bytes of value in
/// its one 64-byte line, and `Conntrack<(SecurityGroups, Snat)>`'s value (a 1-byte decision
/// and this) is exactly 16. At 16 bytes with an alignment of 2 (as it was), that pair took
/// 18 and every record two lines: in nf-bench's `pipeline` scenario, 1M sessions, the
/// whole path took 13–20 ns more per packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// IPv4: the inside address; IPv6: the index of the inside address in the store.
    inside: [u8; 4],
    /// The inside port (ICMP: identifier), native byte order.
    inside_port: [u8; 2],
    /// The mapping's public address index and port, native byte order.
    mapping: [u8; 4],
    /// Hairpin: the index (big-endian) of the port forward reached, or of the peer (the
    /// other inside host's endpoint and mapping) in the peer store. For a hairpin to a
    /// mapping (`PinV4`, `PinV6`) its top bit is [`Translation::waiting`]: peer indexes stay
    /// below 2^31 ([`PEERS_MAX`]).
    other: [u8; 4],
    kind: Kind,
}

/// Most hairpin peers the store holds: their index leaves the top bit of
/// [`Translation::other`] free.
const PEERS_MAX: usize = 1 << 31;

/// The hand-over kind of a port forward's session (either family).
const FORWARDED: u8 = 3;

/// The hand-over kind of a session an outside host opened on a mapping (endpoint-independent
/// filtering; either family).
const INBOUND: u8 = 4;

/// The hand-over kind of a hairpin: an inside host's flow to a port forward (either family).
const HAIRPIN: u8 = 5;

/// The hand-over kinds of a hairpin to another inside host's mapping (either family):
/// open, or waiting for the peer's mapping to accept the sender.
const PIN: u8 = 6;
const PIN_WAITING: u8 = 7;

/// How an imported session holds its mapping.
#[derive(Clone, Copy)]
enum Adopted {
    /// An inside endpoint's flow out.
    Outbound,
    /// An outside host's flow in, on the mapping of its reply.
    Inbound,
    /// An inside endpoint's flow to the port forward of this index.
    Hairpin(u32),
}

/// [`Translation::other`]'s waiting bit.
const WAITING: u32 = 1 << 31;

const _: () =
    assert!(core::mem::size_of::<Translation>() == 15 && core::mem::align_of::<Translation>() == 1);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Kind {
    /// Not translated (no inside prefix matched).
    #[default]
    Pass,
    /// SNAT: the original direction's source is the inside endpoint.
    V4,
    V6,
    /// A port forward: the original direction's destination is the public endpoint.
    DnatV4,
    DnatV6,
    /// Hairpin: an inside host reaching a port forward through its public endpoint, SNATed
    /// like `V4`/`V6` and DNATed to the forward's inside endpoint.
    HairpinV4,
    HairpinV6,
    /// Hairpin to another inside host's mapping: SNATed like `V4`/`V6`, and DNATed from
    /// the peer's mapping to its inside endpoint (the peer store's entry).
    PinV4,
    PinV6,
    /// Endpoint-independent filtering: an outside host's flow to a mapping, DNATed like a
    /// forward, holding the mapping like an outbound flow.
    InboundV4,
    InboundV6,
}

impl Kind {
    const fn is_v6(self) -> bool {
        matches!(
            self,
            Self::V6 | Self::DnatV6 | Self::HairpinV6 | Self::PinV6 | Self::InboundV6
        )
    }

    /// The original direction's destination is rewritten (not its source).
    const fn is_dnat(self) -> bool {
        matches!(
            self,
            Self::DnatV4 | Self::DnatV6 | Self::InboundV4 | Self::InboundV6
        )
    }

    const fn is_inbound(self) -> bool {
        matches!(self, Self::InboundV4 | Self::InboundV6)
    }

    /// Hairpinned to a port forward.
    const fn is_hairpin(self) -> bool {
        matches!(self, Self::HairpinV4 | Self::HairpinV6)
    }

    /// Hairpinned to another inside host's mapping.
    const fn is_pin(self) -> bool {
        matches!(self, Self::PinV4 | Self::PinV6)
    }
}

impl Translation {
    fn new(inside: [u8; 4], port: u16, mapping: Mapping, other: u32, kind: Kind) -> Self {
        let ([a, b], [c, d]) = (
            mapping.public_index().to_ne_bytes(),
            mapping.port().to_ne_bytes(),
        );
        Self {
            inside,
            inside_port: port.to_ne_bytes(),
            mapping: [a, b, c, d],
            other: other.to_be_bytes(),
            kind,
        }
    }

    /// The public address index and port, if the session is translated.
    pub fn mapping(&self) -> Option<Mapping> {
        (self.kind != Kind::Pass).then_some(self.map())
    }

    /// The public address index and port (whatever the kind).
    fn map(&self) -> Mapping {
        let [a, b, c, d] = self.mapping;
        Mapping::new(u16::from_ne_bytes([a, b]), u16::from_ne_bytes([c, d]))
    }

    /// The index in [`Translation::other`] (without the waiting bit).
    fn other_index(&self) -> u32 {
        u32::from_be_bytes(self.other) & !WAITING
    }

    /// A hairpin to a mapping whose address-and-port-dependent filtering has not accepted
    /// this flow's mapped source yet: original packets drop until the peer sends to it.
    fn waiting(&self) -> bool {
        self.kind.is_pin() && u32::from_be_bytes(self.other) & WAITING != 0
    }

    /// The peer has sent to the flow's mapped source: no longer [`Translation::waiting`].
    fn accept(&mut self) {
        if self.kind.is_pin()
            && let Some(b) = self.other.first_mut()
        {
            *b &= 0x7f;
        }
    }

    /// True for a session of a port forward (DNAT).
    pub fn is_forward(&self) -> bool {
        matches!(self.kind, Kind::DnatV4 | Kind::DnatV6)
    }

    /// The inside port (ICMP: identifier) of a translated session.
    pub fn inside_port(&self) -> u16 {
        u16::from_ne_bytes(self.inside_port)
    }
}

/// The SNAT session service (see the [crate docs](crate#snat): new flows, packets, ICMP
/// errors, fragments, the end of a session).
///
/// Every session moves between nodes, in every profile
/// ([`Conntrack::export`](nf_core::conntrack::Conntrack::export) /
/// [`Conntrack::import`](nf_core::conntrack::Conntrack::import)): the importing node
/// (configured the same way) takes each session's public port, for its destination
/// (hyperplane) or as its inside endpoint's mapping (rfc, cgn; with the subscriber's port
/// block), and a hairpin's two; port forwards' sessions move to a node with the same
/// forward (see [`SessionService::import_value`]).
///
/// ```
/// use nf_core::conntrack::{Conntrack, ConntrackConfig};
/// use nf_core::wire::Frame;
/// use nf_core::{Batch, Instant, Packet, ParseStage, Stage, StageExt, Verdict};
/// use nf_nat::{AllocatorConfig, InsidePrefix, Profile, Snat, SnatConfig};
///
/// let ports = AllocatorConfig::new(Profile::Hyperplane, vec!["203.0.113.1".parse()?], *b"operator secret!");
/// let snat = Snat::new(SnatConfig::new(ports).with_inside(InsidePrefix::new("10.0.0.0".parse()?, 8)))?;
/// let mut nat = ParseStage::default().then(Conntrack::new(ConntrackConfig::new(*b"conntrack secret"), snat)?);
///
/// let now = Instant::from_nanos(1_000_000_000);
/// let out = Frame::ipv4([10, 0, 0, 5], [198, 51, 100, 9]).udp(40000, 53).payload(b"q").to_vec()?;
/// let mut batch = Batch::new();
/// batch.push(Packet::with_headroom(&out, 64)).ok();
/// nat.process(now, &mut batch);
/// let pkt = &batch.packets()[0];
/// assert_eq!(pkt.meta.verdict, Verdict::Pass);
/// let ip = &pkt.data()[usize::from(pkt.meta.l3)..];
/// assert_eq!(ip[12..16], [203, 0, 113, 1]); // the source is now the public address
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Two nodes sharing the public address by port shares; node 1 fails and node 0 takes its
/// sessions over:
///
/// ```
/// use nf_core::conntrack::{Conntrack, ConntrackConfig};
/// use nf_core::wire::Frame;
/// use nf_core::{Batch, Family, Instant, Packet, ParseStage, Stage, StageExt};
/// use nf_nat::{AllocatorConfig, Owner, Profile, Snat, SnatConfig};
///
/// let node = |n| -> Result<_, Box<dyn std::error::Error>> {
///     let owner = Owner { nodes: 2, cores: 1, node: n, core: 0 };
///     let ports = AllocatorConfig::new(Profile::Rfc, vec!["203.0.113.1".parse()?], *b"operator secret!")
///         .with_owner(owner);
///     let ct = Conntrack::new(ConntrackConfig::new(*b"conntrack secret"), Snat::new(SnatConfig::new(ports))?)?;
///     Ok(ParseStage::default().then(ct))
/// };
/// let (mut node0, mut node1) = (node(0)?, node(1)?);
/// let now = Instant::from_nanos(1_000_000_000);
/// let out = Frame::ipv4([10, 0, 0, 5], [198, 51, 100, 9]).udp(40000, 53).payload(b"q").to_vec()?;
/// let mut batch = Batch::new();
/// batch.push(Packet::with_headroom(&out, 64)).ok();
/// node1.process(now, &mut batch);
///
/// // Node 1's sessions (synced to node 0 beforehand, or exported now).
/// let mut chunk = Vec::new();
/// node1.second.export(Family::V4, now, 0, 1024, &mut chunk)?;
/// // Its port is node 1's: node 0 declines it until it takes node 1's share over (and
/// // steers replies to those ports to itself: `Steering::own_also`).
/// assert_eq!(node0.second.import(now, &chunk)?.refused, 1);
/// node0.second.service_mut().ports_mut().take_over(1)?;
/// assert_eq!(node0.second.import(now, &chunk)?.imported, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Snat {
    ports: PortAllocator,
    inside: Vec<InsidePrefix>,
    /// Public addresses by mapping index (IPv4 in the first 4 bytes).
    publics: Vec<[u8; 16]>,
    public_ips: Vec<IpAddr>,
    /// Port forwards, with the index of their public address and both endpoints' raw
    /// addresses.
    forwards: Vec<Forward>,
    /// Endpoint-independent filtering: public endpoint → its inside endpoint, with the
    /// sessions holding it (keyed: inbound packets choose the port looked up).
    owners: Option<(Table<PublicEndpoint, InsideEndpoint>, FlowHasher)>,
    /// Inbound filtering of mappings.
    filtering: Filtering,
    v6: Store<[u8; 16]>,
    /// The other end of sessions hairpinned to a mapping.
    peers: Store<Peer>,
    idle_reset: Option<PortId>,
    refusal_icmp: Option<(IcmpOrigin, ReplyBucket)>,
    counters: SnatCounters,
}

/// A mapping's public side (ports are unique per public address and protocol in the
/// endpoint-independent profiles).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PublicEndpoint {
    public: u16,
    port: u16,
    proto: u8,
}

impl PublicEndpoint {
    fn hash(&self, h: &FlowHasher) -> u64 {
        let [a, b] = self.public.to_be_bytes();
        let [c, d] = self.port.to_be_bytes();
        h.hash_bytes(&[0x45, self.proto, a, b, c, d])
    }
}

/// The inside side of a mapping and how many sessions hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct InsideEndpoint {
    zone: u32,
    addr: [u8; 16],
    port: u16,
    sessions: u32,
}

/// A port forward as the service uses it.
#[derive(Clone, Copy, Debug)]
struct Forward {
    rule: PortForward,
    /// Index of its public address.
    public: u16,
    public_raw: [u8; 16],
    inside_raw: [u8; 16],
}

/// An address as 16 bytes, IPv4 in the first four (as in [`FlowKey`]).
fn raw(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            if let Some(c) = b.first_chunk_mut::<4>() {
                *c = a.octets();
            }
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The other end of a session hairpinned to another inside host's mapping: that host's
/// inside endpoint and its mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Peer {
    addr: [u8; 16],
    port: u16,
    mapping: Mapping,
}

impl Snat {
    /// A service over a new [`PortAllocator`] and the stores it needs (all allocated
    /// here).
    ///
    /// # Errors
    /// The allocator's [`ConfigError`], [`ConfigError::Prefix`] for an inside prefix longer
    /// than its family allows, or [`ConfigError::Forward`] for a port forward whose public
    /// address is not one of the allocator's, whose families differ, or that is not TCP or
    /// UDP.
    pub fn new(config: SnatConfig) -> Result<Self, ConfigError> {
        let bad = |p: &InsidePrefix| match p.addr {
            IpAddr::V4(_) => p.len > 32,
            IpAddr::V6(_) => p.len > 128,
        };
        if config.inside.iter().any(bad) {
            return Err(ConfigError::Prefix);
        }
        let mut config = config;
        let mut forwards = Vec::with_capacity(config.forwards.len());
        for f in &config.forwards {
            let ips = &config.allocator.public_ips;
            let index = ips.iter().position(|&ip| ip == f.public.ip());
            let ok = matches!(f.proto, proto::TCP | proto::UDP)
                && f.public.is_ipv4() == f.inside.is_ipv4();
            match index.and_then(|i| u16::try_from(i).ok()) {
                Some(i) if ok => forwards.push(Forward {
                    rule: *f,
                    public: i,
                    public_raw: raw(f.public.ip()),
                    inside_raw: raw(f.inside.ip()),
                }),
                _ => return Err(ConfigError::Forward),
            }
            config.allocator.excluded_ports.push(f.public.port());
        }
        let publics = config
            .allocator
            .public_ips
            .iter()
            .map(|&ip| raw(ip))
            .collect();
        let public_ips = config.allocator.public_ips.clone();
        // The owners of mappings (public endpoint → inside endpoint) serve endpoint-independent
        // filtering and hairpinning to a mapping (from configured inside prefixes); the
        // hyperplane profile's mappings are per destination, so it has neither.
        let owners = match (config.filtering, config.allocator.profile) {
            (Filtering::EndpointIndependent, Profile::Hyperplane) => {
                return Err(ConfigError::Filtering);
            }
            (_, Profile::Hyperplane) => None,
            (Filtering::AddressAndPortDependent, _) if config.inside.is_empty() => None,
            _ => {
                let mut key = config.allocator.secret;
                for b in &mut key {
                    *b ^= 0x36;
                }
                let n = config.allocator.max_mappings;
                Some((Table::with_entries(n), FlowHasher::new(key)))
            }
        };
        let owners_built = owners.is_some();
        Ok(Self {
            ports: PortAllocator::new(config.allocator)?,
            inside: config.inside,
            publics,
            public_ips,
            forwards,
            owners,
            filtering: config.filtering,
            v6: Store::new(config.v6_sessions),
            peers: Store::new(if owners_built {
                config.hairpin_sessions.min(PEERS_MAX)
            } else {
                0
            }),
            idle_reset: config.idle_reset,
            refusal_icmp: config.refusal_icmp.map(|r| (r, r.bucket())),
            counters: SnatCounters::default(),
        })
    }

    /// The port allocator (its counters, live mappings, block events).
    pub fn ports(&self) -> &PortAllocator {
        &self.ports
    }

    /// The port allocator, writable (to drain CGN block events).
    pub fn ports_mut(&mut self) -> &mut PortAllocator {
        &mut self.ports
    }

    /// The service's counters.
    pub fn counters(&self) -> &SnatCounters {
        &self.counters
    }

    /// Bytes allocated by the allocator and the IPv6 store.
    pub fn memory_bytes(&self) -> usize {
        self.ports.memory_bytes()
            + self.owners.as_ref().map_or(0, |(t, _)| t.bytes())
            + self.v6.bytes()
            + self.peers.bytes()
            + self.publics.capacity() * 16
    }

    fn is_inside(&self, key: &FlowKey) -> bool {
        self.inside.is_empty() || self.inside.iter().any(|p| p.contains(key))
    }

    fn is_public(&self, key: &FlowKey) -> bool {
        self.public_ips.contains(&key.dst_ip())
    }

    /// Allocates the mapping and reply key of a flow to translate.
    fn admit(&mut self, now: Instant, new: &mut NewFlow<'_>) -> Result<Translation, DropReason> {
        let original = *new.original();
        let mapping = self
            .ports
            .allocate(now, &original)
            .map_err(AllocError::drop_reason)?;
        let fail = |s: &mut Self, r: DropReason| {
            let _ = s.ports.release(now, &original, mapping);
            Err(r)
        };
        let Some(reply) = self.ports.reply_key(&original, mapping) else {
            return fail(self, DropReason::NatUntranslatable);
        };
        if !new.is_free(&reply) || new.set_reply(reply).is_err() {
            return fail(self, DropReason::NatUntranslatable);
        }
        let Some((inside, v6)) = self.store_inside(original.src_raw(), original.family()) else {
            return fail(self, DropReason::NatCapacityFull);
        };
        if !self.hold(original.proto, mapping, &original, true) {
            if v6 {
                self.v6.put(u32::from_be_bytes(inside));
            }
            return fail(self, DropReason::NatCapacityFull);
        }
        let kind = if v6 { Kind::V6 } else { Kind::V4 };
        Ok(Translation::new(
            inside,
            original.src_port,
            mapping,
            0,
            kind,
        ))
    }

    /// Endpoint-independent filtering: counts one more (`hold`) or one fewer session on
    /// `mapping`, whose inside endpoint is `outbound`'s source. False if the owners table is
    /// full (nothing changed). Without endpoint-independent filtering: nothing to do.
    fn hold(&mut self, proto: u8, mapping: Mapping, outbound: &FlowKey, hold: bool) -> bool {
        let Some((table, hasher)) = &mut self.owners else {
            return true;
        };
        let key = PublicEndpoint {
            public: mapping.public_index(),
            port: mapping.port(),
            proto,
        };
        let h = key.hash(hasher);
        match (table.find(h, &key), hold) {
            (Some(i), true) => {
                if let Some(v) = table.value_at_mut(i) {
                    v.sessions = v.sessions.saturating_add(1);
                }
                true
            }
            (Some(i), false) => {
                let last = table.value_at_mut(i).is_some_and(|v| {
                    v.sessions = v.sessions.saturating_sub(1);
                    v.sessions == 0
                });
                if last {
                    table.remove_at(i);
                }
                true
            }
            (None, true) => {
                let inside = InsideEndpoint {
                    zone: outbound.zone.0,
                    addr: *outbound.src_raw(),
                    port: outbound.src_port,
                    sessions: 1,
                };
                table.insert_new(h, key, inside).is_ok()
            }
            (None, false) => true,
        }
    }

    /// The live mapping a TCP or UDP flow's destination names (one of the public addresses
    /// and a port, in the flow's zone): the public address's index, the mapping's inside
    /// endpoint, and that endpoint's address. [`DropReason::NatNoMapping`] if there is none
    /// (or no table of mapping owners).
    fn mapping_owner(&self, key: &FlowKey) -> Result<(u16, InsideEndpoint, IpAddr), DropReason> {
        let (Some((table, hasher)), proto::TCP | proto::UDP) = (&self.owners, key.proto) else {
            return Err(DropReason::NatNoMapping);
        };
        let public = (self.public_ips.iter().position(|&ip| ip == key.dst_ip()))
            .and_then(|i| u16::try_from(i).ok())
            .ok_or(DropReason::NatNoMapping)?;
        let pk = PublicEndpoint {
            public,
            port: key.dst_port,
            proto: key.proto,
        };
        let owner = table
            .get(pk.hash(hasher), &pk)
            .filter(|o| o.zone == key.zone.0)
            .ok_or(DropReason::NatNoMapping)?;
        let ip = if key.family() == Family::V4 {
            IpAddr::from(owner.addr.first_chunk::<4>().copied().unwrap_or_default())
        } else {
            IpAddr::from(owner.addr)
        };
        Ok((public, owner, ip))
    }

    /// A new flow from outside to a public address: with endpoint-independent filtering, a
    /// TCP or UDP flow to a live mapping of its zone opens a session to the mapping's inside
    /// endpoint (sharing the mapping); anything else is unsolicited
    /// ([`DropReason::NatNoMapping`]).
    fn admit_inbound(
        &mut self,
        now: Instant,
        new: &mut NewFlow<'_>,
    ) -> Result<Translation, DropReason> {
        let key = *new.original();
        // From a configured inside prefix it is hairpinning (`admit_pin`), not inbound.
        let from_inside = !self.inside.is_empty() && self.is_inside(&key);
        let eif = self.filtering == Filtering::EndpointIndependent;
        if from_inside || !eif {
            return Err(DropReason::NatNoMapping);
        }
        let (public, owner, inside_ip) = self.mapping_owner(&key)?;
        // The outbound flow this session answers for: it takes the mapping like any other.
        let outbound = FlowKey::from_addrs(
            key.zone,
            inside_ip,
            key.src_ip(),
            key.proto,
            owner.port,
            key.src_port,
        )
        .ok_or(DropReason::NatUntranslatable)?;
        let mapping = self
            .ports
            .allocate(now, &outbound)
            .map_err(AllocError::drop_reason)?;
        let release = |s: &mut Self, r: DropReason| {
            let _ = s.ports.release(now, &outbound, mapping);
            Err(r)
        };
        if mapping != Mapping::new(public, key.dst_port)
            || !new.is_free(&outbound)
            || new.set_reply(outbound).is_err()
        {
            return release(self, DropReason::NatUntranslatable);
        }
        let Some((inside, v6)) = self.store_inside(outbound.src_raw(), outbound.family()) else {
            return release(self, DropReason::NatCapacityFull);
        };
        self.hold(key.proto, mapping, &outbound, true);
        let kind = if v6 { Kind::InboundV6 } else { Kind::InboundV4 };
        Ok(Translation::new(inside, owner.port, mapping, 0, kind))
    }

    /// The value's form of an inside address: IPv4 inline, IPv6 in the store (`None`: full).
    fn store_inside(&mut self, addr: &[u8; 16], family: Family) -> Option<([u8; 4], bool)> {
        match family {
            Family::V4 => Some((addr.first_chunk::<4>().copied()?, false)),
            Family::V6 => Some((self.v6.take(*addr)?.to_be_bytes(), true)),
        }
    }

    /// A new flow to a port forward's public endpoint: replies come from the inside endpoint.
    fn admit_forward(
        &mut self,
        new: &mut NewFlow<'_>,
        i: usize,
    ) -> Result<Translation, DropReason> {
        let original = *new.original();
        let f = *self.forwards.get(i).ok_or(DropReason::NatUntranslatable)?;
        let reply = Self::forward_reply(&f, &original).ok_or(DropReason::NatUntranslatable)?;
        if !new.is_free(&reply) || new.set_reply(reply).is_err() {
            return Err(DropReason::NatUntranslatable);
        }
        self.forward_value(&f, &reply)
            .ok_or(DropReason::NatCapacityFull)
    }

    /// The reply key of `original`, a flow to forward `f`: from its inside endpoint.
    fn forward_reply(f: &Forward, original: &FlowKey) -> Option<FlowKey> {
        let inside = f.rule.inside;
        FlowKey::from_addrs(
            original.zone,
            inside.ip(),
            original.src_ip(),
            original.proto,
            inside.port(),
            original.src_port,
        )
    }

    /// The session value of a flow to forward `f` whose reply key is `reply`; `None` if
    /// the IPv6 store is full.
    fn forward_value(&mut self, f: &Forward, reply: &FlowKey) -> Option<Translation> {
        let (addr, v6) = self.store_inside(reply.src_raw(), reply.family())?;
        let mapping = Mapping::new(f.public, f.rule.public.port());
        let kind = if v6 { Kind::DnatV6 } else { Kind::DnatV4 };
        Some(Translation::new(
            addr,
            f.rule.inside.port(),
            mapping,
            0,
            kind,
        ))
    }

    /// Takes over a port forward's session another node admitted: this NAT must have the
    /// same forward (public endpoint `addr`:`port`, the flow's destination) and admit the
    /// flow as a forward (not a hairpin), to the same inside endpoint (the reply key).
    fn import_forward(
        &mut self,
        session: &SessionInfo<()>,
        addr: &[u8; 16],
        port: u16,
    ) -> Option<Translation> {
        let original = session.original;
        let hairpin = !self.inside.is_empty() && self.is_inside(&original);
        let f = *self.forwards.iter().find(|f| f.rule.matches(&original))?;
        if hairpin
            || f.public_raw != *addr
            || f.rule.public.port() != port
            || Self::forward_reply(&f, &original) != Some(session.reply)
        {
            return None;
        }
        let t = self.forward_value(&f, &session.reply)?;
        self.counters.flows_imported += 1;
        Some(t)
    }

    /// The mapping of public address `addr` (16 bytes, IPv4 in the first 4) of `family`,
    /// port `port`, if the address is one of this NAT's.
    fn mapping_at(&self, addr: &[u8; 16], family: Family, port: u16) -> Option<Mapping> {
        let ip = match family {
            Family::V6 => IpAddr::from(*addr),
            Family::V4 => IpAddr::from(*addr.first_chunk::<4>()?),
        };
        (0..u16::try_from(self.public_ips.len()).ok()?)
            .map(|i| Mapping::new(i, port))
            .find(|&m| self.ports.public_ip(m) == Some(ip))
    }

    /// Takes over a session on `mapping` of the outbound flow `outbound` (an inbound
    /// session's reply), of kind `as_kind`: the allocator claims the mapping, the inside
    /// address is stored, endpoint-independent filtering holds it (not for a hairpin to a
    /// port forward). `None` where any of them cannot, each step undone (a mapping the claim
    /// made goes into quarantine, as an aborted allocation's does).
    fn adopt_mapping(
        &mut self,
        now: Instant,
        outbound: &FlowKey,
        mapping: Mapping,
        as_kind: Adopted,
    ) -> Option<Translation> {
        if !self.is_inside(outbound) {
            return None;
        }
        let (inside, v6) = self.store_inside(outbound.src_raw(), outbound.family())?;
        let release = |s: &mut Self| {
            if v6 {
                s.v6.put(u32::from_be_bytes(inside));
            }
        };
        if !self.ports.claim(now, outbound, mapping) {
            release(self);
            return None;
        }
        let hairpin = matches!(as_kind, Adopted::Hairpin(_));
        if !hairpin && !self.hold(outbound.proto, mapping, outbound, true) {
            let _ = self.ports.release(now, outbound, mapping);
            release(self);
            return None;
        }
        self.counters.flows_imported += 1;
        let (kind, other) = match (as_kind, v6) {
            (Adopted::Outbound, false) => (Kind::V4, 0),
            (Adopted::Outbound, true) => (Kind::V6, 0),
            (Adopted::Inbound, false) => (Kind::InboundV4, 0),
            (Adopted::Inbound, true) => (Kind::InboundV6, 0),
            (Adopted::Hairpin(f), false) => (Kind::HairpinV4, f),
            (Adopted::Hairpin(f), true) => (Kind::HairpinV6, f),
        };
        Some(Translation::new(
            inside,
            outbound.src_port,
            mapping,
            other,
            kind,
        ))
    }

    /// Takes over a hairpin another node admitted: an inside host's flow to a port
    /// forward's public endpoint, on `mapping`; this NAT must have the same forward and
    /// see the source as inside, and the reply key must be the forward's inside endpoint
    /// answering the mapping.
    fn import_hairpin(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        mapping: Mapping,
    ) -> Option<Translation> {
        let original = session.original;
        if self.inside.is_empty() || !self.is_inside(&original) {
            return None;
        }
        let i = self
            .forwards
            .iter()
            .position(|f| f.rule.matches(&original))?;
        let f = self.forwards.get(i)?;
        let public = self.ports.public_ip(mapping)?;
        let (ip, port) = (f.rule.inside.ip(), f.rule.inside.port());
        let reply = FlowKey::from_addrs(
            original.zone,
            ip,
            public,
            original.proto,
            port,
            mapping.port(),
        );
        if reply != Some(session.reply) {
            return None;
        }
        self.adopt_mapping(
            now,
            &original,
            mapping,
            Adopted::Hairpin(u32::try_from(i).ok()?),
        )
    }

    /// Takes over a session an outside host opened on a mapping (endpoint-independent
    /// filtering): this NAT must filter the same way, and the session's reply must be the
    /// mapping's outbound flow to that host; it claims the mapping as that flow would
    /// (whether or not the endpoint's other sessions moved before it).
    fn import_inbound(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        addr: &[u8; 16],
        port: u16,
    ) -> Option<Translation> {
        let (original, outbound) = (session.original, session.reply);
        let from_inside = !self.inside.is_empty() && self.is_inside(&original);
        if self.filtering != Filtering::EndpointIndependent
            || from_inside
            || *original.dst_raw() != *addr
            || original.dst_port != port
        {
            return None;
        }
        let mapping = self.mapping_at(addr, original.family(), port)?;
        if self.ports.reply_key(&outbound, mapping) != Some(original) {
            return None;
        }
        self.adopt_mapping(now, &outbound, mapping, Adopted::Inbound)
    }

    /// Takes over a hairpin to another inside host's mapping: the sender's flow (the
    /// original key) on its own `mapping`, to the peer's mapping (the destination); the
    /// reply key is the peer's outbound flow to the sender's mapping. Both mappings are
    /// claimed (the sender's as its outbound flow would, the peer's as the reply's), so
    /// this node must map both endpoints the same way or not yet; the filtering entries
    /// and the peer entry are made as [`Self::admit_pin`] makes them, `waiting` as it was.
    fn import_pin(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        mapping: Mapping,
        waiting: bool,
    ) -> Option<Translation> {
        let (key, back) = (session.original, session.reply);
        if self.inside.is_empty()
            || !self.is_inside(&key)
            || !self.is_public(&key)
            || (waiting && self.filtering == Filtering::EndpointIndependent)
        {
            return None;
        }
        let peer_mapping = self.mapping_at(key.dst_raw(), key.family(), key.dst_port)?;
        let source = self.ports.public_ip(mapping)?;
        let expected = FlowKey::from_addrs(
            key.zone,
            back.src_ip(),
            source,
            key.proto,
            back.src_port,
            mapping.port(),
        );
        if expected != Some(back) || !self.is_inside(&back) {
            return None;
        }
        if !self.ports.claim(now, &key, mapping) {
            return None;
        }
        if !self.ports.claim(now, &back, peer_mapping) {
            let _ = self.ports.release(now, &key, mapping);
            return None;
        }
        let undo = |s: &mut Self| {
            let _ = s.ports.release(now, &back, peer_mapping);
            let _ = s.ports.release(now, &key, mapping);
            None
        };
        let Some((inside, v6)) = self.store_inside(key.src_raw(), key.family()) else {
            return undo(self);
        };
        let peer = Peer {
            addr: *back.src_raw(),
            port: back.src_port,
            mapping: peer_mapping,
        };
        // Each step undone if a later one fails: the peer entry, then the filtering
        // entries of the sender's mapping and of the peer's (new here, perhaps).
        let peer = self.peers.take(peer);
        let sender_held = peer.is_some() && self.hold(key.proto, mapping, &key, true);
        let peer_held = sender_held && self.hold(key.proto, peer_mapping, &back, true);
        let (Some(peer), true) = (peer, peer_held) else {
            if sender_held {
                self.hold(key.proto, mapping, &key, false);
            }
            if let Some(p) = peer {
                self.peers.put(p);
            }
            if v6 {
                self.v6.put(u32::from_be_bytes(inside));
            }
            return undo(self);
        };
        self.counters.flows_imported += 1;
        let kind = if v6 { Kind::PinV6 } else { Kind::PinV4 };
        let other = peer | if waiting { WAITING } else { 0 };
        Some(Translation::new(inside, key.src_port, mapping, other, kind))
    }

    /// A new flow from inside to a port forward's public endpoint (hairpinning): a mapping
    /// for the source, as for any outbound flow, and the forward's inside endpoint as the
    /// destination; replies come from that endpoint to the mapping, and the forward's inside
    /// host sees the flow from the public address and port (RFC 4787 REQ-9, RFC 5382
    /// REQ-8a: external source address and port).
    fn admit_hairpin(
        &mut self,
        now: Instant,
        new: &mut NewFlow<'_>,
        i: usize,
    ) -> Result<Translation, DropReason> {
        let original = *new.original();
        let f = *self.forwards.get(i).ok_or(DropReason::NatUntranslatable)?;
        let forward = u32::try_from(i).map_err(|_| DropReason::NatUntranslatable)?;
        let mapping = self
            .ports
            .allocate(now, &original)
            .map_err(AllocError::drop_reason)?;
        let public = self
            .public_ips
            .get(usize::from(mapping.public_index()))
            .copied();
        let reply = public.and_then(|p| {
            let (ip, port) = (f.rule.inside.ip(), f.rule.inside.port());
            FlowKey::from_addrs(original.zone, ip, p, original.proto, port, mapping.port())
        });
        let inside = self.store_inside(original.src_raw(), original.family());
        match (reply, inside) {
            (Some(r), Some((addr, v6))) if new.is_free(&r) && new.set_reply(r).is_ok() => {
                let kind = if v6 { Kind::HairpinV6 } else { Kind::HairpinV4 };
                Ok(Translation::new(
                    addr,
                    original.src_port,
                    mapping,
                    forward,
                    kind,
                ))
            }
            (_, inside) => {
                if let Some((addr, true)) = inside {
                    self.v6.put(u32::from_be_bytes(addr));
                }
                let _ = self.ports.release(now, &original, mapping);
                Err(DropReason::NatUntranslatable)
            }
        }
    }

    /// A hairpin's second rewrite, the forward's end: the original direction's destination
    /// becomes the forward's inside endpoint, the reply's source its public endpoint.
    fn forward_target(&self, dir: Direction, t: &Translation) -> Option<(End, [u8; 16], u16)> {
        let i = usize::try_from(t.other_index()).ok()?;
        let f = self.forwards.get(i)?;
        Some(match dir {
            Direction::Original => (End::Dst, f.inside_raw, f.rule.inside.port()),
            Direction::Reply => (End::Src, f.public_raw, f.rule.public.port()),
        })
    }

    /// A hairpin to a mapping's second rewrite, the peer's end: the original direction's
    /// destination becomes the peer's inside endpoint, the reply's source its mapping.
    fn peer_target(&self, dir: Direction, t: &Translation) -> Option<(End, [u8; 16], u16)> {
        let p = self.peers.get(t.other_index())?;
        Some(match dir {
            Direction::Original => (End::Dst, p.addr, p.port),
            Direction::Reply => {
                let public = self.publics.get(usize::from(p.mapping.public_index()))?;
                (End::Src, *public, p.mapping.port())
            }
        })
    }

    /// A new flow from a configured inside prefix to a public address (rfc and cgn): if the
    /// destination is another inside host's live TCP or UDP mapping in the same zone, the
    /// flow is hairpinned to it (RFC 4787 REQ-9, RFC 5382 REQ-8). The source gets its own
    /// mapping, as for any outbound flow, so the peer sees the external source address and
    /// port (REQ-9a); the destination becomes the peer's inside endpoint. The reply key is
    /// the peer's outbound flow to that mapped source, which takes the peer's mapping as an
    /// inbound session does, so both mappings live while the session does.
    ///
    /// The hairpinned packet meets the peer's mapping as if it came from outside: with
    /// endpoint-independent filtering it passes; with address-and-port-dependent filtering
    /// the session is created waiting and its original packets drop (`nat_no_mapping`,
    /// counted `hairpin_filtered`) until the peer sends to the mapped source (the session's
    /// reply direction: the flow's own mapping accepts it, as its host sent to the peer's
    /// mapping), which opens it — the hole punching of two hosts behind one NAT.
    ///
    /// ICMP queries are not hairpinned: their identifier is the querier's, so no mapping
    /// of the target serves them (RFC 5508 REQ-7 asks it of Basic NAT only); they drop
    /// `nat_no_mapping` like any unsolicited query.
    fn admit_pin(
        &mut self,
        now: Instant,
        new: &mut NewFlow<'_>,
    ) -> Result<Translation, DropReason> {
        let key = *new.original();
        let (public, owner, peer_ip) = self.mapping_owner(&key)?;
        let mapping = self
            .ports
            .allocate(now, &key)
            .map_err(AllocError::drop_reason)?;
        // The peer's outbound flow to the mapped source: the session's reply key.
        let source = self
            .public_ips
            .get(usize::from(mapping.public_index()))
            .copied();
        let Some(back) = source.and_then(|ip| {
            FlowKey::from_addrs(key.zone, peer_ip, ip, key.proto, owner.port, mapping.port())
        }) else {
            let _ = self.ports.release(now, &key, mapping);
            return Err(DropReason::NatUntranslatable);
        };
        let peer_mapping = match self.ports.allocate(now, &back) {
            Ok(m) => m,
            Err(e) => {
                let _ = self.ports.release(now, &key, mapping);
                return Err(e.drop_reason());
            }
        };
        let undo = |s: &mut Self, r: DropReason| {
            let _ = s.ports.release(now, &back, peer_mapping);
            let _ = s.ports.release(now, &key, mapping);
            Err(r)
        };
        if peer_mapping != Mapping::new(public, key.dst_port)
            || !new.is_free(&back)
            || new.set_reply(back).is_err()
        {
            return undo(self, DropReason::NatUntranslatable);
        }
        let Some((inside, v6)) = self.store_inside(key.src_raw(), key.family()) else {
            return undo(self, DropReason::NatCapacityFull);
        };
        let peer = Peer {
            addr: owner.addr,
            port: owner.port,
            mapping: peer_mapping,
        };
        let peer = self.peers.take(peer);
        let held = peer.is_some() && self.hold(key.proto, mapping, &key, true);
        let (Some(peer), true) = (peer, held) else {
            if let Some(p) = peer {
                self.peers.put(p);
            }
            if v6 {
                self.v6.put(u32::from_be_bytes(inside));
            }
            return undo(self, DropReason::NatCapacityFull);
        };
        // The peer's mapping has its entry: this only counts one more session on it.
        self.hold(key.proto, peer_mapping, &back, true);
        let kind = if v6 { Kind::PinV6 } else { Kind::PinV4 };
        // Below 2^31 (the store holds at most `PEERS_MAX`): the top bit is free.
        let waiting = self.filtering != Filtering::EndpointIndependent;
        let other = peer | if waiting { WAITING } else { 0 };
        Ok(Translation::new(inside, key.src_port, mapping, other, kind))
    }

    /// Calls `rewrite` with each (end, address, port) a packet of the session gets: one for
    /// SNAT and port forwards, two for a hairpin (to a forward or a mapping).
    #[inline(always)]
    fn each_target(
        &self,
        dir: Direction,
        t: &Translation,
        mut rewrite: impl FnMut(End, &[u8; 16], u16) -> Option<()>,
    ) -> Option<()> {
        let (end, addr, port) = self.target(dir, t)?;
        rewrite(end, &addr, port)?;
        if t.kind.is_hairpin() {
            let (end, addr, port) = self.forward_target(dir, t)?;
            rewrite(end, &addr, port)?;
        } else if t.kind.is_pin() {
            let (end, addr, port) = self.peer_target(dir, t)?;
            rewrite(end, &addr, port)?;
        }
        Some(())
    }

    /// Counts a packet whose headers could not be rewritten (`icmp`: an ICMP error) and
    /// drops it.
    #[cold]
    #[inline(never)]
    fn failed(&mut self, icmp: bool) -> Verdict {
        if icmp {
            self.counters.icmp_errors_dropped += 1;
        } else {
            self.counters.rewrite_failed += 1;
        }
        Verdict::Drop(DropReason::NatUntranslatable)
    }

    /// The address and port a packet's rewritten end gets, and which end.
    #[inline(always)]
    fn target(&self, dir: Direction, t: &Translation) -> Option<(End, [u8; 16], u16)> {
        // SNAT rewrites the inside end of the original direction (its source), a forward the
        // public end (its destination); replies get the other end back.
        let dnat = t.kind.is_dnat();
        let original = matches!(dir, Direction::Original);
        let end = if original == dnat { End::Dst } else { End::Src };
        if original != dnat {
            let p = self.publics.get(usize::from(t.map().public_index()))?;
            return Some((end, *p, t.map().port()));
        }
        let a = if t.kind.is_v6() {
            *self.v6.get(u32::from_be_bytes(t.inside))?
        } else {
            let mut b = [0; 16];
            *b.first_chunk_mut::<4>()? = t.inside;
            b
        };
        Some((end, a, t.inside_port()))
    }
}

impl Snat {
    /// [`SessionService::on_packet`] of an IPv4 SNAT session (kind `V4`, never waiting):
    /// the original direction's source becomes the public endpoint, a reply's destination
    /// the inside endpoint.
    #[inline(always)]
    fn snat_v4<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        direction: Direction,
        t: &Translation,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        // One rewrite for both directions, its end and fields selected without a branch:
        // directions arrive in no predictable order. The source becomes the public endpoint
        // on the way out, the destination the inside endpoint on the way in.
        let original = direction == Direction::Original;
        // Both addresses as words (the value is byte-aligned: as byte arrays, the select
        // compiled to byte moves).
        let inside = u32::from_ne_bytes(t.inside);
        let public = match self.publics.get(usize::from(t.map().public_index())) {
            Some(&[a, b, c, d, ..]) => u32::from_ne_bytes([a, b, c, d]),
            None if original => return self.failed(false),
            None => inside,
        };
        // The IPv4 address selected as a value (one word), not as a pointer to one.
        let mut addr = [0; 16];
        if let Some(a) = addr.first_chunk_mut::<4>() {
            *a = select_unpredictable(original, public, inside).to_ne_bytes();
        }
        let end = select_unpredictable(original, End::Src, End::Dst);
        let port = select_unpredictable(original, t.map().port(), t.inside_port());
        if rewrite_packet(pkt, end, &addr, Some(port)).is_err() {
            return self.failed(false);
        }
        self.counters.packets_out += u64::from(original);
        self.counters.packets_in += u64::from(!original);
        Verdict::Pass
    }

    /// [`SessionService::on_packet`] of any other translated session (IPv6, port
    /// forwards, hairpins, inbound flows), out of line.
    #[inline(never)]
    fn translate_other<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        direction: Direction,
        t: &mut Translation,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        if t.waiting() && matches!(direction, Direction::Original) {
            self.counters.hairpin_filtered += 1;
            return Verdict::Drop(DropReason::NatNoMapping);
        }
        let at = Layout::of(&pkt.meta);
        let d = pkt.data_mut();
        let done = self.each_target(direction, t, |end, addr, port| {
            rewrite(d, at, end, addr, Some(port)).ok()
        });
        if done.is_none() {
            return self.failed(false);
        }
        // The peer sent to the flow's mapped source: its mapping accepts the flow now.
        t.accept();
        match direction {
            Direction::Original => self.counters.packets_out += 1,
            Direction::Reply => self.counters.packets_in += 1,
        }
        self.counters.packets_hairpinned += u64::from(t.kind.is_hairpin() || t.kind.is_pin());
        Verdict::Pass
    }

    /// RFC 5508 REQ-8: the ICMP error for a flow refused for lack of resources, within the
    /// rate limit; otherwise the drop.
    fn refuse_with_icmp<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        reason: DropReason,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let Some((cfg, bucket)) = &mut self.refusal_icmp else {
            return Verdict::Drop(reason);
        };
        let Some(from) = cfg.from(pkt.meta.flow.family()) else {
            return Verdict::Drop(reason);
        };
        if !bucket.take(now) {
            self.counters.refusal_icmp_rate_limited += 1;
            return Verdict::Drop(reason);
        }
        if reply::icmp_prohibited(pkt, from).is_err() {
            bucket.give_back();
            return Verdict::Drop(reason);
        }
        self.counters.refusal_icmp_sent += 1;
        Verdict::Tx(cfg.port)
    }
}

impl SessionService for Snat {
    type Value = Translation;

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<Translation, DropReason> {
        let key = *new.original();
        let forward = self.forwards.iter().position(|f| f.rule.matches(&key));
        if let Some(i) = forward {
            // From an inside prefix (configured ones only): hairpinning.
            let hairpin = !self.inside.is_empty() && self.is_inside(&key);
            let r = if hairpin {
                self.admit_hairpin(now, new, i)
            } else {
                self.admit_forward(new, i)
            };
            match (&r, hairpin) {
                (Ok(_), true) => self.counters.flows_hairpinned += 1,
                (Ok(_), false) => self.counters.flows_forwarded += 1,
                (Err(_), _) => self.counters.flows_refused += 1,
            }
            r
        } else if self.is_inside(&key) && !self.is_public(&key) {
            let r = self.admit(now, new);
            match r {
                Ok(_) => self.counters.flows_translated += 1,
                Err(_) => self.counters.flows_refused += 1,
            }
            r
        } else if self.is_public(&key) && !self.inside.is_empty() && self.is_inside(&key) {
            let r = self.admit_pin(now, new);
            match r {
                Ok(_) => self.counters.flows_hairpinned += 1,
                Err(DropReason::NatNoMapping) => self.counters.no_mapping += 1,
                Err(_) => self.counters.flows_refused += 1,
            }
            r
        } else if self.is_public(&key) {
            let r = self.admit_inbound(now, new);
            match r {
                Ok(_) => self.counters.flows_inbound += 1,
                Err(DropReason::NatNoMapping) => self.counters.no_mapping += 1,
                Err(_) => self.counters.flows_refused += 1,
            }
            r
        } else {
            self.counters.flows_untranslated += 1;
            Ok(Translation::default())
        }
    }

    #[inline(always)]
    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        t: &mut Translation,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        match t.kind {
            Kind::Pass => Verdict::Pass,
            // The per-packet case, inline: one end of an IPv4 SNAT session.
            // (Never waiting: only a hairpin to a mapping waits.)
            Kind::V4 => self.snat_v4(direction, t, pkt),
            _ => self.translate_other(direction, t, pkt),
        }
    }

    fn on_related<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        t: &mut Translation,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        if t.kind == Kind::Pass {
            return Verdict::Pass;
        }
        if t.waiting() && matches!(direction, Direction::Original) {
            self.counters.hairpin_filtered += 1;
            return Verdict::Drop(DropReason::NatNoMapping);
        }
        let icmp = pkt.meta.has(flags::ICMP_ERROR);
        let at = Layout::of(&pkt.meta);
        let d = pkt.data_mut();
        let done = self.each_target(direction, t, |end, addr, port| {
            if icmp {
                translate_icmp_error(d, at, end, addr, Some(port)).ok()
            } else {
                // A later fragment: addresses only.
                rewrite(d, at.addresses_only(), end, addr, Some(port)).ok()
            }
        });
        let c = &mut self.counters;
        match (done, icmp) {
            (Some(()), true) => c.icmp_errors_translated += 1,
            (Some(()), false) => c.fragments_translated += 1,
            (None, icmp) => return self.failed(icmp),
        }
        Verdict::Pass
    }

    /// A TCP segment from inside that may not open a session (not a SYN: its session
    /// expired) becomes the RST that tells the inside host, sent on the configured port
    /// ([`SnatConfig::idle_reset`]); everything else keeps its drop.
    ///
    /// A flow from inside refused for lack of resources gets ICMP administratively
    /// prohibited back if configured ([`SnatConfig::refusal_icmp`], RFC 5508 REQ-8).
    fn on_refused<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        reason: DropReason,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let key = pkt.meta.flow;
        if !self.is_inside(&key) || self.is_public(&key) {
            return Verdict::Drop(reason);
        }
        match reason {
            DropReason::NoSession => match self.idle_reset {
                Some(port) if key.proto == proto::TCP && reply::tcp_reset(pkt).is_ok() => {
                    self.counters.idle_timeout_resets += 1;
                    Verdict::Tx(port)
                }
                _ => Verdict::Drop(reason),
            },
            DropReason::NatPortsExhausted
            | DropReason::NatTooManyProbes
            | DropReason::NatCapacityFull
            | DropReason::NatQuotaExceeded
            | DropReason::SessionTableFull
            | DropReason::ZoneQuotaExceeded => self.refuse_with_icmp(now, reason, pkt),
            _ => Verdict::Drop(reason),
        }
    }

    fn on_end(&mut self, now: Instant, s: &SessionInfo<Translation>, _cause: EndCause) {
        let t = s.value;
        if t.kind == Kind::Pass {
            return;
        }
        if !t.is_forward() {
            // The outbound key the mapping was allocated for: an inbound session's reply.
            let outbound = if t.kind.is_inbound() {
                &s.reply
            } else {
                &s.original
            };
            // A release the allocator does not recognise is counted there.
            let _ = self.ports.release(now, outbound, t.map());
            if !t.kind.is_hairpin() {
                self.hold(s.original.proto, t.map(), outbound, false);
            }
        }
        if t.kind.is_pin() {
            // The peer's mapping, taken for the peer's flow to the mapped source (the reply).
            let i = t.other_index();
            if let Some(p) = self.peers.get(i).copied() {
                let _ = self.ports.release(now, &s.reply, p.mapping);
                self.hold(s.original.proto, p.mapping, &s.reply, false);
            }
            self.peers.put(i);
        }
        if t.kind.is_v6() {
            self.v6.put(u32::from_be_bytes(t.inside));
        }
    }

    /// A session moving to another node: its kind (1 byte: 0 untranslated, 1 SNAT over
    /// IPv4, 2 over IPv6, 3 a port forward's, 4 an outside host's on a mapping, 5 a
    /// hairpin to a port forward, 6 and 7 a hairpin to another inside host's mapping, open
    /// and waiting, 255 a session whose mapping has no public address here), the public
    /// address (16 bytes, an IPv4 one in the first 4) and port (2) of its mapping (a
    /// hairpin's: the sender's; the peer's is its destination). The inside endpoint is the
    /// original key's source (a forward's and an outside host's: the reply key's).
    const EXPORT_LEN: Option<usize> = Some(portable::EXPORTED);

    fn export_value(&self, t: &Translation, out: &mut [u8]) {
        let kind = match t.kind {
            Kind::Pass => 0,
            Kind::V4 => 1,
            Kind::V6 => 2,
            Kind::DnatV4 | Kind::DnatV6 => FORWARDED,
            Kind::InboundV4 | Kind::InboundV6 => INBOUND,
            Kind::HairpinV4 | Kind::HairpinV6 => HAIRPIN,
            Kind::PinV4 | Kind::PinV6 if t.waiting() => PIN_WAITING,
            Kind::PinV4 | Kind::PinV6 => PIN,
        };
        match self.ports.public_ip(t.map()) {
            _ if kind == 0 => portable::write_kind(out, 0),
            Some(ip) => portable::write(out, kind, &raw(ip), t.map().port()),
            None => portable::write_kind(out, portable::NOT_MOVED),
        }
    }

    /// Takes over an outbound SNAT session another node translated, with the same mapping:
    /// the public address must be one of this NAT's, the reply key the one the mapping
    /// gives, and the allocator must be able to take the mapping as its own allocation
    /// could have made it: a port of this node's and core's share (with per-node port
    /// shares, [`Owner`](crate::Owner), another node's sessions are declined until this node
    /// takes over that node's share, [`PortAllocator::take_over`]). Hyperplane: the port must
    /// be free for the flow's destination. Rfc and cgn: the inside endpoint must have no
    /// other mapping here (the sessions of one endpoint each take the same one, the first
    /// makes it), the port must be free, the subscriber's mappings on the same public
    /// address (paired pooling), and, cgn, the port's block the subscriber's or free (then
    /// taken, with its block event) within its quotas. With endpoint-independent filtering
    /// the mapping admits outside hosts again as it did on the old node, and the sessions
    /// outside hosts opened on a mapping move too (they claim the mapping as its outbound
    /// flow to that host would, in whatever order the sessions arrive). A port forward's
    /// session moves where this NAT has the same forward, to the same inside endpoint, and
    /// so does a hairpin to it (with its mapping, claimed as for an outbound session).
    /// A hairpin to another inside host's mapping moves with both mappings (each claimed;
    /// still waiting for the peer's mapping to accept the sender, or not, as it was).
    /// Declined otherwise; untranslated sessions move as they are.
    fn import_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<Translation> {
        let (kind, addr, port) = portable::read(bytes)?;
        let addr = &addr;
        let original = session.original;
        match kind {
            0 => Some(Translation::default()),
            1 | 2 => {
                if (kind == 2) != (original.family() == Family::V6) {
                    return None;
                }
                let mapping = self.mapping_at(addr, original.family(), port)?;
                if self.ports.reply_key(&original, mapping) != Some(session.reply) {
                    return None;
                }
                self.adopt_mapping(now, &original, mapping, Adopted::Outbound)
            }
            FORWARDED => self.import_forward(session, addr, port),
            HAIRPIN => {
                let mapping = self.mapping_at(addr, original.family(), port)?;
                self.import_hairpin(now, session, mapping)
            }
            PIN | PIN_WAITING => {
                let mapping = self.mapping_at(addr, original.family(), port)?;
                self.import_pin(now, session, mapping, kind == PIN_WAITING)
            }
            INBOUND => self.import_inbound(now, session, addr, port),
            _ => None,
        }
    }

    /// As [`Self::import_value`], except that the claims may take a port out of this
    /// node's quarantine: a replica hears of a copy's end later than its primary did, and
    /// the primary may have given the port out again already (or the copy aged out here
    /// unrefreshed); the primary's quarantine protects the port (cgn needs none of this: a
    /// port of another node's share is free here as soon as its copy ends).
    fn replicate_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<Translation> {
        self.ports.claim_quarantined(true);
        let value = self.import_value(now, session, bytes);
        self.ports.claim_quarantined(false);
        value
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.counters.visit(f);
        self.ports.visit_counters(STAGE, f);
        for (i, (all, per)) in (0u16..).zip(ACTIVE_PER_PUBLIC).take(self.publics.len()) {
            let n = self.ports.active_on_per_protocol(i);
            f(STAGE, all, n.iter().sum());
            for (name, v) in per.into_iter().zip(n) {
                f(STAGE, name, v);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ports.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.ports.handle_timeout(now, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_fits_an_ipv4_record_line() {
        // nf-core's IPv4 record is one 64-byte line with a value of at most 16 bytes; 15
        // byte-aligned ones leave a byte for a service composed with SNAT.
        assert_eq!(core::mem::size_of::<Translation>(), 15);
        assert_eq!(core::mem::size_of::<(u8, Translation)>(), 16);
        // The peer store's entries (the crate docs' memory figures: 22 + 4 of free list).
        assert_eq!(core::mem::size_of::<Peer>(), 22);
    }

    #[test]
    fn inside_prefixes_match_by_zone_and_bits() {
        let p = InsidePrefix::new("10.1.0.0".parse().unwrap_or(IpAddr::from([0u8; 4])), 16)
            .in_zone(ZoneId(3));
        let k = |zone, a: [u8; 4]| FlowKey::v4(ZoneId(zone), a, [1, 1, 1, 1], proto::UDP, 1, 2);
        assert!(p.contains(&k(3, [10, 1, 200, 7])));
        assert!(!p.contains(&k(3, [10, 2, 0, 1])));
        assert!(!p.contains(&k(4, [10, 1, 0, 1])));
        let all = InsidePrefix::new(IpAddr::from([0u8; 4]), 0);
        assert!(all.contains(&k(9, [192, 0, 2, 1])));
    }
}
