//! The private-endpoint session service ([`Endpoint`]); see the crate docs, section
//! Private endpoints.

use crate::alloc_error::AllocError;
use crate::allocator::{Mapping, PortAllocator};
use crate::config::{AllocatorConfig, ConfigError};
use crate::portable;
use crate::store::Store;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, SocketAddr};
use nf_core::conntrack::{EndCause, NewFlow, SessionInfo, SessionService};
use nf_core::flow::proto;
use nf_core::rewrite::{End, Layout, rewrite, translate_icmp_error};
use nf_core::{Direction, DropReason, FlowKey, Instant, Packet, Verdict, ZoneId, flags};

const STAGE: &str = "endpoint";

/// Kinds of an exported session ([`portable`]): untranslated (it reached no endpoint), or
/// translated (the pool address and port of its mapping follow).
const UNTRANSLATED: u8 = 0;
const TRANSLATED: u8 = 1;

/// One side of a private endpoint: a zone and an address and port in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointSide {
    /// The zone (tenant, VPC).
    pub zone: ZoneId,
    /// The address and port in that zone.
    pub addr: SocketAddr,
}

impl EndpointSide {
    /// `addr` in `zone`.
    pub const fn new(zone: ZoneId, addr: SocketAddr) -> Self {
        Self { zone, addr }
    }
}

/// One private endpoint: flows of `proto` from the consumer's zone to the endpoint address
/// reach the provider's service, their sources translated into the provider's address space
/// (an address and port of `pool`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointRule {
    /// The transport protocol (TCP or UDP).
    pub proto: u8,
    /// The consumer's zone and the endpoint address its hosts connect to.
    pub consumer: EndpointSide,
    /// The provider's zone and its service's address.
    pub provider: EndpointSide,
    /// The provider-side source addresses the consumers' flows get (addresses of the
    /// provider's space), and how their ports are chosen. Rules with the same provider zone
    /// and an equal pool share one allocator (so consumers of several endpoints of one
    /// service never get the same tuple); pools of one provider zone must otherwise not
    /// share an address.
    pub pool: AllocatorConfig,
}

impl EndpointRule {
    /// An endpoint from `consumer` to `provider` with the source pool `pool`.
    pub fn new(
        proto: u8,
        consumer: EndpointSide,
        provider: EndpointSide,
        pool: AllocatorConfig,
    ) -> Self {
        Self {
            proto,
            consumer,
            provider,
            pool,
        }
    }
}

/// Why [`Endpoint::new`] refused its rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// Rule `n`: the endpoint, the service and the pool addresses are not all of one family
    /// (the rule would need a translator between IPv4 and IPv6).
    MixedFamilies(usize),
    /// Rule `n`: the protocol is neither TCP nor UDP.
    Protocol(usize),
    /// Rule `n` has the same consumer zone, endpoint and protocol as an earlier one.
    Duplicate(usize),
    /// More rules than a session can name (65,535).
    TooManyRules,
    /// Rule `n`'s pool was refused by [`PortAllocator::new`].
    Pool(usize, ConfigError),
    /// Rule `n`'s pool shares an address with another pool of the same provider zone
    /// without being equal to it.
    PoolOverlap(usize),
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MixedFamilies(n) => {
                write!(
                    f,
                    "endpoint rule {n}: addresses of both IP families (no NAT64)"
                )
            }
            Self::Protocol(n) => write!(f, "endpoint rule {n}: protocol not TCP or UDP"),
            Self::Duplicate(n) => write!(f, "endpoint rule {n}: the same endpoint twice"),
            Self::TooManyRules => f.write_str("more than 65535 endpoint rules"),
            Self::Pool(n, e) => write!(f, "endpoint rule {n}: pool: {e}"),
            Self::PoolOverlap(n) => write!(f, "endpoint rule {n}: pool overlaps another"),
        }
    }
}

impl core::error::Error for EndpointError {}

/// Counters of the [`Endpoint`] service (stage name `endpoint`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointCounters {
    /// New flows to an endpoint, translated (a session created).
    pub flows_translated: u64,
    /// New flows to an endpoint refused (no pool port, no free reply tuple, the IPv6
    /// consumer store full).
    pub flows_refused: u64,
    /// New flows that reach no endpoint, passed untranslated.
    pub flows_unmatched: u64,
    /// New flows in a provider's zone to a pool address that no session serves (dropped
    /// `nat_no_mapping`: the provider cannot open flows into a consumer).
    pub no_mapping: u64,
    /// Packets consumer → provider.
    pub packets_to_provider: u64,
    /// Packets provider → consumer.
    pub packets_to_consumer: u64,
    /// ICMP errors translated (either way).
    pub icmp_errors_translated: u64,
    /// Later fragments translated.
    pub fragments_translated: u64,
    /// Packets dropped because a header to rewrite was out of reach.
    pub rewrite_failed: u64,
    /// ICMP errors dropped because their quote could not be translated.
    pub icmp_errors_dropped: u64,
    /// Translated sessions taken over from another node
    /// ([`Conntrack::import`](nf_core::conntrack::Conntrack::import), a replica's
    /// [`Conntrack::apply`](nf_core::conntrack::Conntrack::apply)).
    pub flows_imported: u64,
}

impl EndpointCounters {
    fn visit(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        for (name, v) in [
            ("flows_translated", self.flows_translated),
            ("flows_refused", self.flows_refused),
            ("flows_unmatched", self.flows_unmatched),
            ("no_mapping", self.no_mapping),
            ("packets_to_provider", self.packets_to_provider),
            ("packets_to_consumer", self.packets_to_consumer),
            ("icmp_errors_translated", self.icmp_errors_translated),
            ("fragments_translated", self.fragments_translated),
            ("rewrite_failed", self.rewrite_failed),
            ("icmp_errors_dropped", self.icmp_errors_dropped),
            ("flows_imported", self.flows_imported),
        ] {
            f(STAGE, name, v);
        }
    }
}

/// The session value of [`Endpoint`]: the consumer's source, the rule and the pool mapping
/// (14 bytes: an IPv4 session record with it stays one 64-byte line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointSession {
    /// IPv4: the consumer's address; IPv6: the index of the consumer's address in the store.
    consumer: [u8; 4],
    consumer_port: u16,
    rule: u16,
    mapping: Mapping,
    active: bool,
}

impl EndpointSession {
    /// The pool address index and port of a translated session.
    pub fn mapping(&self) -> Option<Mapping> {
        self.active.then_some(self.mapping)
    }

    /// The index of the rule the session reached, if translated.
    pub fn rule(&self) -> Option<usize> {
        self.active.then_some(usize::from(self.rule))
    }
}

/// A rule as the service uses it.
struct Rule {
    spec: EndpointRule,
    /// Index of its pool.
    pool: usize,
    endpoint_raw: [u8; 16],
    service_raw: [u8; 16],
    /// An IPv6 endpoint (consumers' addresses in the store).
    v6: bool,
}

/// A provider-side pool: its allocator and raw addresses.
struct Pool {
    zone: ZoneId,
    config: AllocatorConfig,
    ports: PortAllocator,
    raw: Vec<[u8; 16]>,
}

impl Rule {
    fn matches(&self, key: &FlowKey) -> bool {
        key.zone == self.spec.consumer.zone
            && key.proto == self.spec.proto
            && key.dst_ip() == self.spec.consumer.addr.ip()
            && key.dst_port == self.spec.consumer.addr.port()
    }

    /// The flow the pool mapping is allocated (and released) for: the consumer's source, in
    /// its zone (so that overlapping consumers are distinct), to the service.
    fn pool_flow(&self, original: &FlowKey) -> Option<FlowKey> {
        let s = self.spec.provider.addr;
        FlowKey::from_addrs(
            original.zone,
            original.src_ip(),
            s.ip(),
            original.proto,
            original.src_port,
            s.port(),
        )
    }
}

/// The private-endpoint session service (AWS PrivateLink's pattern, as a composition of
/// DNAT and SNAT with a cross-zone session; see the [crate docs](crate#private-endpoints)).
///
/// ```
/// use nf_core::conntrack::{Conntrack, ConntrackConfig};
/// use nf_core::flow::proto;
/// use nf_core::wire::Frame;
/// use nf_core::{Batch, Instant, Packet, ParseStage, Stage, StageExt, Verdict, ZoneId};
/// use nf_nat::{AllocatorConfig, Endpoint, EndpointRule, EndpointSide, Profile};
///
/// let pool = AllocatorConfig::new(Profile::Hyperplane, vec!["10.9.255.1".parse()?], *b"operator secret!");
/// let rule = EndpointRule::new(
///     proto::TCP,
///     EndpointSide::new(ZoneId(100), "10.0.0.200:443".parse()?), // the consumer connects here
///     EndpointSide::new(ZoneId(200), "10.9.0.1:8443".parse()?), // the provider's service
///     pool,
/// );
/// let endpoint = Endpoint::new(vec![rule])?;
/// let ct = Conntrack::new(ConntrackConfig::new(*b"conntrack secret"), endpoint)?;
/// let mut pipeline = ParseStage::default().then(ct);
///
/// let syn = Frame::ipv4([10, 0, 0, 5], [10, 0, 0, 200]).tcp(40000, 443, 0x02).to_vec()?;
/// let mut pkt = Packet::with_headroom(&syn, 64);
/// pkt.meta.zone = ZoneId(100);
/// let mut batch = Batch::new();
/// batch.push(pkt).ok();
/// pipeline.process(Instant::from_nanos(1_000_000_000), &mut batch);
/// let p = &batch.packets()[0];
/// assert_eq!(p.meta.verdict, Verdict::Pass);
/// assert_eq!(p.meta.zone, ZoneId(200)); // it leaves into the provider's zone
/// let ip = &p.data()[usize::from(p.meta.l3)..];
/// assert_eq!(ip[12..16], [10, 9, 255, 1]); // from the provider-side pool
/// assert_eq!(ip[16..20], [10, 9, 0, 1]); // to the service
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Endpoint {
    rules: Vec<Rule>,
    pools: Vec<Pool>,
    /// Consumers' IPv6 addresses of live sessions (the IPv4 ones are kept inline).
    v6: Store<[u8; 16]>,
    counters: EndpointCounters,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("rules", &self.rules.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
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

impl Endpoint {
    /// The service with `rules` (each with its own pool allocator, allocated here).
    ///
    /// # Errors
    /// [`EndpointError`] for a rule that cannot work.
    pub fn new(rules: Vec<EndpointRule>) -> Result<Self, EndpointError> {
        if rules.len() > usize::from(u16::MAX) {
            return Err(EndpointError::TooManyRules);
        }
        let mut built: Vec<Rule> = Vec::with_capacity(rules.len());
        let mut pools: Vec<Pool> = Vec::new();
        // Sessions of IPv6 endpoints at once: as many as their pools hold mappings.
        let mut v6_sessions = 0usize;
        for (n, spec) in rules.into_iter().enumerate() {
            let v6 = spec.consumer.addr.is_ipv6();
            // (An empty pool is the allocator's error, `ConfigError::PublicIps`.)
            let one_family = spec.provider.addr.is_ipv6() == v6
                && spec.pool.public_ips.iter().all(|a| a.is_ipv6() == v6);
            if !one_family {
                return Err(EndpointError::MixedFamilies(n));
            }
            if !matches!(spec.proto, proto::TCP | proto::UDP) {
                return Err(EndpointError::Protocol(n));
            }
            let dup = built.iter().any(|r| {
                r.spec.proto == spec.proto
                    && r.spec.consumer.zone == spec.consumer.zone
                    && r.spec.consumer.addr == spec.consumer.addr
            });
            if dup {
                return Err(EndpointError::Duplicate(n));
            }
            let zone = spec.provider.zone;
            let same = pools
                .iter()
                .position(|p| p.zone == zone && p.config == spec.pool);
            let overlap = pools.iter().any(|p| {
                p.zone == zone
                    && p.config != spec.pool
                    && p.config
                        .public_ips
                        .iter()
                        .any(|a| spec.pool.public_ips.contains(a))
            });
            if overlap {
                return Err(EndpointError::PoolOverlap(n));
            }
            let pool = if let Some(i) = same {
                i
            } else {
                let ports =
                    PortAllocator::new(spec.pool.clone()).map_err(|e| EndpointError::Pool(n, e))?;
                if v6 {
                    v6_sessions = v6_sessions.saturating_add(spec.pool.max_mappings);
                }
                pools.push(Pool {
                    zone,
                    raw: spec.pool.public_ips.iter().map(|&ip| raw(ip)).collect(),
                    config: spec.pool.clone(),
                    ports,
                });
                pools.len() - 1
            };
            built.push(Rule {
                endpoint_raw: raw(spec.consumer.addr.ip()),
                service_raw: raw(spec.provider.addr.ip()),
                v6,
                pool,
                spec,
            });
        }
        Ok(Self {
            rules: built,
            pools,
            v6: Store::new(v6_sessions),
            counters: EndpointCounters::default(),
        })
    }

    /// The counters.
    pub fn counters(&self) -> &EndpointCounters {
        &self.counters
    }

    /// The pool allocator of rule `i` (its counters, live mappings); shared by the rules
    /// with the same provider zone and pool.
    pub fn ports(&self, i: usize) -> Option<&PortAllocator> {
        let r = self.rules.get(i)?;
        self.pools.get(r.pool).map(|p| &p.ports)
    }

    /// Takes over node `node`'s share of every pool's ports (pools split between nodes by
    /// [`AllocatorConfig::with_owner`]): afterwards that node's sessions are taken over
    /// here ([`Conntrack::import`](nf_core::conntrack::Conntrack::import), a replica's
    /// `apply`) like this node's own; new flows still get only this node's ports
    /// ([`PortAllocator::take_over`]).
    ///
    /// # Errors
    /// [`ConfigError::Owner`] for a node out of range or this node itself,
    /// [`ConfigError::Blocks`] for a cgn pool. Pools taken over before the error stay so.
    pub fn take_over(&mut self, node: u32) -> Result<(), ConfigError> {
        self.pools
            .iter_mut()
            .try_for_each(|p| p.ports.take_over(node))
    }

    /// Bytes of the pool allocators' tables and of the IPv6 consumer store.
    pub fn memory_bytes(&self) -> usize {
        self.pools
            .iter()
            .map(|p| p.ports.memory_bytes())
            .sum::<usize>()
            + self.v6.bytes()
    }

    /// A new flow in a provider's zone to one of its pool addresses: nothing serves it.
    fn is_pool(&self, key: &FlowKey) -> bool {
        let dst = key.dst_ip();
        self.pools
            .iter()
            .any(|p| p.zone == key.zone && p.config.public_ips.contains(&dst))
    }

    /// Allocates the pool mapping and sets the reply key (in the provider's zone) of a new
    /// flow to rule `i`'s endpoint.
    fn admit(
        &mut self,
        now: Instant,
        new: &mut NewFlow<'_>,
        i: usize,
    ) -> Result<EndpointSession, DropReason> {
        let original = *new.original();
        let rule = self.rules.get(i).ok_or(DropReason::NatUntranslatable)?;
        let (Some(flow), Some(&consumer)) = (
            rule.pool_flow(&original),
            original.src_raw().first_chunk::<4>(),
        ) else {
            return Err(DropReason::NatUntranslatable);
        };
        let v6 = rule.v6;
        let zone = rule.spec.provider.zone;
        let pool_index = rule.pool;
        let pool = self
            .pools
            .get_mut(pool_index)
            .ok_or(DropReason::NatUntranslatable)?;
        let mapping = pool
            .ports
            .allocate(now, &flow)
            .map_err(AllocError::drop_reason)?;
        let reply = pool.ports.reply_key(&flow, mapping).map(|mut k| {
            // The provider answers in its own zone.
            k.zone = zone;
            k
        });
        let rule = u16::try_from(i).ok();
        let fail = match (reply, rule) {
            (Some(r), Some(rule)) if new.is_free(&r) && new.set_reply(r).is_ok() => {
                // IPv6: the consumer's address goes to the store, the value keeps its index.
                let consumer = if v6 {
                    self.v6.take(*original.src_raw()).map(u32::to_be_bytes)
                } else {
                    Some(consumer)
                };
                match consumer {
                    Some(consumer) => {
                        return Ok(EndpointSession {
                            consumer,
                            consumer_port: original.src_port,
                            rule,
                            mapping,
                            active: true,
                        });
                    }
                    None => DropReason::NatCapacityFull,
                }
            }
            _ => DropReason::NatUntranslatable,
        };
        if let Some(pool) = self.pools.get_mut(pool_index) {
            let _ = pool.ports.release(now, &flow, mapping);
        }
        Err(fail)
    }

    /// Takes over a translated session of `session.original` on the pool mapping at
    /// address `addr` (16 bytes) and port `port`, as [`Self::admit`] could have made it:
    /// the flow must reach a rule here, the address be one of its pool's, the reply key be
    /// the one the mapping gives, the pool's allocator take the mapping (a port of this
    /// node's share, free for the service) and, IPv6, the consumer store have room.
    fn import_translated(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        addr: &[u8; 16],
        port: u16,
    ) -> Option<EndpointSession> {
        let original = session.original;
        let i = self.rules.iter().position(|r| r.matches(&original))?;
        let rule_index = u16::try_from(i).ok()?;
        let rule = self.rules.get(i)?;
        let (flow, v6, zone, pool_index) = (
            rule.pool_flow(&original)?,
            rule.v6,
            rule.spec.provider.zone,
            rule.pool,
        );
        let consumer4 = *original.src_raw().first_chunk::<4>()?;
        let pool = self.pools.get_mut(pool_index)?;
        let public = pool.raw.iter().position(|a| a == addr)?;
        let mapping = Mapping::new(u16::try_from(public).ok()?, port);
        let mut reply = pool.ports.reply_key(&flow, mapping)?;
        reply.zone = zone;
        if reply != session.reply || !pool.ports.claim(now, &flow, mapping) {
            return None;
        }
        let consumer = if v6 {
            self.v6.take(*original.src_raw()).map(u32::to_be_bytes)
        } else {
            Some(consumer4)
        };
        let Some(consumer) = consumer else {
            // A mapping the claim made goes into quarantine, as an aborted allocation's.
            let _ = pool.ports.release(now, &flow, mapping);
            return None;
        };
        self.counters.flows_imported += 1;
        Some(EndpointSession {
            consumer,
            consumer_port: original.src_port,
            rule: rule_index,
            mapping,
            active: true,
        })
    }

    /// Calls `f` with the two (end, address, port) rewrites of a packet travelling `dir`,
    /// and returns the zone it leaves into.
    #[inline(always)]
    fn each_target(
        &self,
        dir: Direction,
        s: &EndpointSession,
        mut f: impl FnMut(End, &[u8; 16], u16) -> Option<()>,
    ) -> Option<ZoneId> {
        let rule = self.rules.get(usize::from(s.rule))?;
        let spec = &rule.spec;
        match dir {
            Direction::Original => {
                // To the service, from the pool address and port.
                f(End::Dst, &rule.service_raw, spec.provider.addr.port())?;
                let pool = self.pools.get(rule.pool)?;
                let pool = pool.raw.get(usize::from(s.mapping.public_index()))?;
                f(End::Src, pool, s.mapping.port())?;
                Some(spec.provider.zone)
            }
            Direction::Reply => {
                // From the endpoint, to the consumer.
                f(End::Src, &rule.endpoint_raw, spec.consumer.addr.port())?;
                let consumer = if rule.v6 {
                    *self.v6.get(u32::from_be_bytes(s.consumer))?
                } else {
                    let mut a = [0; 16];
                    *a.first_chunk_mut::<4>()? = s.consumer;
                    a
                };
                f(End::Dst, &consumer, s.consumer_port)?;
                Some(spec.consumer.zone)
            }
        }
    }
}

impl SessionService for Endpoint {
    type Value = EndpointSession;

    /// The reply key is in the provider's zone.
    const CROSS_ZONE: bool = true;

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<EndpointSession, DropReason> {
        let key = *new.original();
        if let Some(i) = self.rules.iter().position(|r| r.matches(&key)) {
            let r = self.admit(now, new, i);
            match r {
                Ok(_) => self.counters.flows_translated += 1,
                Err(_) => self.counters.flows_refused += 1,
            }
            r
        } else if self.is_pool(&key) {
            self.counters.no_mapping += 1;
            Err(DropReason::NatNoMapping)
        } else {
            self.counters.flows_unmatched += 1;
            Ok(EndpointSession::default())
        }
    }

    #[inline(always)]
    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        s: &mut EndpointSession,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        if !s.active {
            return Verdict::Pass;
        }
        let at = Layout::of(&pkt.meta);
        let d = pkt.data_mut();
        let zone = self.each_target(direction, s, |end, addr, port| {
            rewrite(d, at, end, addr, Some(port)).ok()
        });
        let Some(zone) = zone else {
            self.counters.rewrite_failed += 1;
            return Verdict::Drop(DropReason::NatUntranslatable);
        };
        pkt.meta.zone = zone;
        match direction {
            Direction::Original => self.counters.packets_to_provider += 1,
            Direction::Reply => self.counters.packets_to_consumer += 1,
        }
        Verdict::Pass
    }

    fn on_related<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        s: &mut EndpointSession,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        if !s.active {
            return Verdict::Pass;
        }
        let icmp = pkt.meta.has(flags::ICMP_ERROR);
        let at = Layout::of(&pkt.meta);
        let d = pkt.data_mut();
        let zone = self.each_target(direction, s, |end, addr, port| {
            if icmp {
                translate_icmp_error(d, at, end, addr, Some(port)).ok()
            } else {
                // A later fragment: addresses only.
                rewrite(d, at.addresses_only(), end, addr, Some(port)).ok()
            }
        });
        let c = &mut self.counters;
        match (zone, icmp) {
            (Some(z), icmp) => {
                pkt.meta.zone = z;
                if icmp {
                    c.icmp_errors_translated += 1;
                } else {
                    c.fragments_translated += 1;
                }
                Verdict::Pass
            }
            (None, true) => {
                c.icmp_errors_dropped += 1;
                Verdict::Drop(DropReason::NatUntranslatable)
            }
            (None, false) => {
                c.rewrite_failed += 1;
                Verdict::Drop(DropReason::NatUntranslatable)
            }
        }
    }

    fn on_end(&mut self, now: Instant, s: &SessionInfo<EndpointSession>, _cause: EndCause) {
        let v = s.value;
        if !v.active {
            return;
        }
        let Some(rule) = self.rules.get(usize::from(v.rule)) else {
            return;
        };
        if rule.v6 {
            self.v6.put(u32::from_be_bytes(v.consumer));
        }
        if let Some(flow) = rule.pool_flow(&s.original)
            && let Some(pool) = self.pools.get_mut(rule.pool)
        {
            // A release the allocator does not recognise is counted there.
            let _ = pool.ports.release(now, &flow, v.mapping);
        }
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.counters.visit(f);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.pools
            .iter()
            .filter_map(|p| p.ports.poll_timeout())
            .min()
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        let mut work = 0;
        for p in &mut self.pools {
            work += p.ports.handle_timeout(now, budget.saturating_sub(work));
        }
        work
    }

    /// A session moving to another node: its kind (1 byte: 0 untranslated, 1 translated,
    /// 255 translated on a pool address this node cannot name), the pool address (16 bytes,
    /// an IPv4 one in the first 4) and port (2) of its mapping. The rule is found again
    /// from the session's original key (the consumer's zone, the endpoint address, port
    /// and protocol), the consumer from its source: identities, not this node's indices.
    const EXPORT_LEN: Option<usize> = Some(portable::EXPORTED);

    fn export_value(&self, s: &EndpointSession, out: &mut [u8]) {
        if !s.active {
            portable::write_kind(out, UNTRANSLATED);
            return;
        }
        let addr = self
            .rules
            .get(usize::from(s.rule))
            .and_then(|r| self.pools.get(r.pool))
            .and_then(|p| p.raw.get(usize::from(s.mapping.public_index())));
        match addr {
            Some(a) => portable::write(out, TRANSLATED, a, s.mapping.port()),
            None => portable::write_kind(out, portable::NOT_MOVED),
        }
    }

    /// Takes over a session another node's endpoint service made, with the same pool
    /// mapping, where the flow reaches an endpoint rule here whose pool holds the mapping's
    /// address, the reply key is the one the mapping gives, and the pool's allocator can
    /// take the mapping as its own allocation could have made it (a port of this node's
    /// share — per-node shares, [`Owner`](crate::Owner), decline another node's sessions
    /// until [`PortAllocator::take_over`] — free for the service). Declined otherwise;
    /// untranslated sessions move as they are.
    fn import_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<EndpointSession> {
        let (kind, addr, port) = portable::read(bytes)?;
        match kind {
            UNTRANSLATED => Some(EndpointSession::default()),
            TRANSLATED => self.import_translated(now, session, &addr, port),
            _ => None,
        }
    }

    /// As [`Self::import_value`], except that the claim may take a port out of this
    /// node's quarantine (a replica hears of a copy's end later than its primary, whose
    /// quarantine protects the port).
    fn replicate_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<EndpointSession> {
        for p in &mut self.pools {
            p.ports.claim_quarantined(true);
        }
        let value = self.import_value(now, session, bytes);
        for p in &mut self.pools {
            p.ports.claim_quarantined(false);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_fits_an_ipv4_record_line() {
        assert!(core::mem::size_of::<EndpointSession>() <= 16);
    }
}
