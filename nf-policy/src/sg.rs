//! Security groups: allow-only, unordered, stateful rules, as a connection-tracking
//! [`SessionService`].
//!
//! An interface (here: a [`ZoneId`](nf_core::ZoneId)) has one or several groups; their rules together form an
//! [`SgRuleSet`], built by an [`SgRuleSetBuilder`] on the [`classifier`](crate::classifier)
//! (so deciding a new flow costs a fixed number of table reads, whatever the rules). A rule
//! allows traffic of one [`SgDirection`]: *ingress* rules name the remote source ([`SgPeer`]:
//! a prefix, a prefix list, or another group, whose members' prefixes are expanded at build
//! time), *egress* rules the remote destination; both name a protocol and destination ports
//! (or ICMP type and code). Rules are unordered: a flow is allowed if any rule matches.
//!
//! [`SecurityGroups`] runs inside [`Conntrack`](nf_core::conntrack::Conntrack):
//! - the first packet of a flow is classified against its zone's rule set, in the direction
//!   the configured [`SgConfig::direction`] says it travels; if no rule allows it, the flow is
//!   refused with [`DropReason::SgDenied`] and no session is created (a zone without a rule
//!   set allows nothing);
//! - the session remembers the decision: later packets of the flow, and its return traffic,
//!   pass without being classified again;
//! - replacing the rule sets ([`SecurityGroups::set_rules`]) never cuts an established tracked
//!   flow, while a removed rule stops *new* flows at once (network ACLs, being stateless, cut
//!   established flows too).
//!
//! # Untracked flows (AWS's exception), optional
//!
//! AWS's security groups do not track every flow. Their documented rule ("Security group
//! connection tracking", Amazon EC2 User Guide): a TCP or UDP flow that a rule allows from (or
//! to) anywhere, `0.0.0.0/0` or `::/0`, is not tracked when a rule in the other direction
//! allows all response traffic, to or from anywhere on all ports (0–65535); its responses
//! then pass by that rule, not by tracking information. Their example: inbound TCP 80 from
//! `::/0` with outbound all traffic to `0.0.0.0/0` and `::/0` leaves IPv6 HTTP untracked,
//! while inbound SSH from one address stays tracked. ICMP is always tracked. Because nothing
//! remembers an untracked flow, removing or narrowing the rule that allows it cuts it at once
//! (a tracked flow survives such a change). AWS also tracks some flows automatically whatever
//! the rules (through NAT gateways, load balancers and other middleboxes that need symmetric
//! return paths).
//!
//! With [`SgConfig::untracked`] on, [`SecurityGroups`] does the same per packet, by the rules
//! alone: a TCP or UDP packet without a session travelling direction `d` is *untracked* when
//! - a rule of `d` whose peer is a `/0` prefix (a rule's prefix, or a prefix list entry)
//!   allows it, and the other direction has a rule to or from a `/0` prefix for its protocol
//!   (or all protocols) and all ports — a new untracked flow; or
//! - `d` has such an all-ports rule and the packet's reverse is a new untracked flow of the
//!   other direction — the response to one (AWS's example above, seen from the server's
//!   answers).
//!
//! An untracked packet creates no session: [`SessionService::on_new`] refuses the flow with
//! [`DropReason::SgUntracked`] and [`SessionService::on_refused`] passes the packet (counted
//! as `packets_untracked`, and by conntrack as `refused_passed`); so does a packet refused a
//! session before the rules were asked, decided the same way: a later packet of the flow
//! that conntrack's zone policy would not let open one (a TCP segment other than SYN,
//! [`DropReason::NoSession`]), or one refused for a full table, the zone's quota or its
//! new-flow rate (untracked flows need no session, so, as at AWS, they are not subject to
//! the connection-tracking allowance).
//!
//! Every packet of an untracked flow is decided by the rules (the price of keeping no
//! state), so a rule swap applies to the very next packet. A rule from anywhere matches
//! every address, so a scan of a direction's few TCP/UDP rules from anywhere (protocol and
//! ports; up to eight distinct ones, beyond that a classification) decides. With the option
//! on, a packet without a session that is not untracked pays that scan on top of its one
//! classification (nothing when no direction has an all-ports rule from anywhere). The
//! option is off by default: every admitted flow is then tracked.
//!
//! Limits: the automatically tracked cases are the caller's to choose (turn the option off,
//! or compose with services that need sessions: in a tuple, a service without a stateless
//! path drops the packet as `sg_untracked`).
//!
//! ICMP errors quoting an untracked flow find no session to relate them; with the option on,
//! such an error passes if the flow it belongs to is untracked in the error's direction
//! (its quoted packet, reversed, by the same rules: a port unreachable or fragmentation
//! needed about an untracked flow reaches its sender, as the flow's own packets would),
//! counted `icmp_errors_untracked`; others drop as `related_no_session`.
//!
//! ```
//! use core::net::Ipv4Addr;
//! use nf_policy::classifier::{PortRange, Prefix};
//! use nf_policy::sg::{SgDirection, SgPeer, SgRule, SgRuleSetBuilder};
//!
//! let mut b = SgRuleSetBuilder::default();
//! b.group_members(7, [Prefix::v4(Ipv4Addr::new(10, 0, 1, 0), 24)?]);
//! // HTTPS from anywhere, and SSH from the members of group 7.
//! b.push(SgRule::tcp(SgDirection::Ingress, SgPeer::Prefix(Prefix::ANY_V4), PortRange::single(443)));
//! b.push(SgRule::tcp(SgDirection::Ingress, SgPeer::Group(7), PortRange::single(22)));
//! let rules = b.build()?;
//! assert_eq!(rules.len(SgDirection::Ingress), 2);
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```

use crate::classifier::{
    ClassKey, Classifier, ClassifierBuilder, ClassifierConfig, ClassifierError, Match, PortRange,
    Prefix,
};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use nf_core::conntrack::{NewFlow, SessionInfo, SessionService, quoted_key};
use nf_core::{DropReason, Family, Instant, Meta, Packet, Verdict, ZoneMap, flags};

/// Which way a flow's first packet travels relative to the protected interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SgDirection {
    /// Towards the interface (the remote end is the source).
    #[default]
    Ingress,
    /// Away from it (the remote end is the destination).
    Egress,
}

impl SgDirection {
    /// The other direction.
    #[must_use]
    pub const fn opposite(self) -> Self {
        match self {
            Self::Ingress => Self::Egress,
            Self::Egress => Self::Ingress,
        }
    }

    const fn index(self) -> usize {
        match self {
            Self::Ingress => 0,
            Self::Egress => 1,
        }
    }
}

/// The remote end a rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SgPeer {
    /// One prefix.
    Prefix(Prefix),
    /// A prefix list by id ([`SgRuleSetBuilder::prefix_list`]).
    PrefixList(u32),
    /// The members of a group by id ([`SgRuleSetBuilder::group_members`]).
    Group(u32),
}

/// One allow rule.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SgRule {
    /// Ingress or egress.
    pub direction: SgDirection,
    /// The remote source (ingress) or destination (egress).
    pub peer: SgPeer,
    /// IP protocol, `None` for all.
    pub proto: Option<u8>,
    /// Destination ports (for ICMP: the types; see [`SgRule::icmp`]).
    pub ports: PortRange,
    /// For ICMP: the codes.
    pub codes: PortRange,
}

impl SgRule {
    /// All traffic with `peer`.
    pub const fn all(direction: SgDirection, peer: SgPeer) -> Self {
        Self {
            direction,
            peer,
            proto: None,
            ports: PortRange::ANY,
            codes: PortRange::ANY,
        }
    }

    /// TCP to `ports`.
    pub const fn tcp(direction: SgDirection, peer: SgPeer, ports: PortRange) -> Self {
        Self::ports(direction, peer, nf_core::flow::proto::TCP, ports)
    }

    /// UDP to `ports`.
    pub const fn udp(direction: SgDirection, peer: SgPeer, ports: PortRange) -> Self {
        Self::ports(direction, peer, nf_core::flow::proto::UDP, ports)
    }

    /// `proto` to `ports`.
    pub const fn ports(direction: SgDirection, peer: SgPeer, proto: u8, ports: PortRange) -> Self {
        Self {
            direction,
            peer,
            proto: Some(proto),
            ports,
            codes: PortRange::ANY,
        }
    }

    /// ICMP (ICMPv6 for IPv6 peers) of this type and code (`None`: any).
    pub const fn icmp(
        direction: SgDirection,
        peer: SgPeer,
        ty: Option<u8>,
        code: Option<u8>,
    ) -> Self {
        let m = Match::any_v4().icmp(ty, code);
        Self {
            direction,
            peer,
            // Replaced by ICMPv6 for IPv6 peers when built.
            proto: m.proto,
            ports: m.src_ports,
            codes: m.dst_ports,
        }
    }

    /// The classifier rule for one peer prefix: ingress matches the source, egress the
    /// destination; ports are destination ports, ICMP's type and code their own fields.
    fn to_match(self, peer: Prefix) -> Match {
        let any = match peer.family() {
            Family::V4 => Match::any_v4(),
            Family::V6 => Match::any_v6(),
        };
        let m = match self.direction {
            SgDirection::Ingress => any.src(peer),
            SgDirection::Egress => any.dst(peer),
        };
        let icmp = matches!(
            self.proto,
            Some(nf_core::flow::proto::ICMP | nf_core::flow::proto::ICMPV6)
        );
        match self.proto {
            None => m,
            Some(_) if icmp => {
                let mut m = m.icmp(None, None);
                m.src_ports = self.ports;
                m.dst_ports = self.codes;
                m
            }
            Some(p) => m.proto(p).dst_ports(self.ports),
        }
    }

    /// The `open` bits this rule sets when its peer is a /0 prefix of `family`: TCP and UDP
    /// (or the one it names) when it allows every port.
    fn open_bits(self, family: Family) -> u8 {
        if self.ports != PortRange::ANY {
            return 0;
        }
        let bit = |p| open_bit(family, p).unwrap_or(0);
        match self.proto {
            None => bit(nf_core::flow::proto::TCP) | bit(nf_core::flow::proto::UDP),
            Some(p) => bit(p),
        }
    }
}

/// A rule set the builder rejected.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgError {
    /// A rule names a prefix list that was not given.
    UnknownPrefixList(u32),
    /// A rule names a group whose members were not given.
    UnknownGroup(u32),
    /// The classifier rejected the rules (see [`ClassifierError`]).
    Classifier(ClassifierError),
}

impl fmt::Display for SgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPrefixList(id) => write!(f, "unknown prefix list {id}"),
            Self::UnknownGroup(id) => write!(f, "unknown group {id}"),
            Self::Classifier(e) => write!(f, "classifier: {e}"),
        }
    }
}

impl core::error::Error for SgError {}

impl From<ClassifierError> for SgError {
    fn from(e: ClassifierError) -> Self {
        Self::Classifier(e)
    }
}

/// Collects the rules of an interface's groups, prefix lists and group memberships, then
/// builds an [`SgRuleSet`].
#[derive(Clone, Debug, Default)]
pub struct SgRuleSetBuilder {
    config: ClassifierConfig,
    rules: Vec<SgRule>,
    lists: BTreeMap<u32, Vec<Prefix>>,
    groups: BTreeMap<u32, Vec<Prefix>>,
}

impl SgRuleSetBuilder {
    /// An empty set whose classifiers are built with `config`.
    pub fn new(config: ClassifierConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Adds a rule (of any of the interface's groups: order does not matter).
    pub fn push(&mut self, rule: SgRule) {
        self.rules.push(rule);
    }

    /// Defines prefix list `id`.
    pub fn prefix_list(&mut self, id: u32, prefixes: impl IntoIterator<Item = Prefix>) {
        self.lists.insert(id, prefixes.into_iter().collect());
    }

    /// Defines the members' prefixes (their interface addresses) of group `id`.
    pub fn group_members(&mut self, id: u32, prefixes: impl IntoIterator<Item = Prefix>) {
        self.groups.insert(id, prefixes.into_iter().collect());
    }

    /// Expands peers and builds one classifier per direction (off the hot path).
    ///
    /// # Errors
    /// [`SgError`] for an unknown prefix list or group, or a rule set the classifier refuses.
    pub fn build(&self) -> Result<SgRuleSet, SgError> {
        let mut builders = [
            ClassifierBuilder::new(self.config),
            ClassifierBuilder::new(self.config),
        ];
        let mut anywhere = [0u32; 2];
        let mut open = [0u8; 2];
        let mut wides: [Vec<Wide>; 2] = [Vec::new(), Vec::new()];
        // Rules from or to anywhere (a /0 peer) first: a classification's rule index then
        // tells whether such a rule allowed the packet (rules are unordered, so the order is
        // ours to choose).
        for wide in [true, false] {
            for r in &self.rules {
                let d = r.direction.index();
                for p in self.peers(r)? {
                    if (p.length() == 0) != wide {
                        continue;
                    }
                    if let Some(b) = builders.get_mut(d) {
                        b.push(r.to_match(*p))?;
                    }
                    if let (true, Some(n), Some(o)) = (wide, anywhere.get_mut(d), open.get_mut(d)) {
                        *n += 1;
                        *o |= r.open_bits(p.family());
                    }
                    let w = Wide {
                        family: p.family(),
                        proto: r.proto,
                        ports: r.ports,
                    };
                    let tcp_udp = r.proto.is_none_or(|x| open_bit(p.family(), x).is_some());
                    if let (true, true, Some(l)) = (wide, tcp_udp, wides.get_mut(d))
                        && !l.contains(&w)
                    {
                        l.push(w);
                    }
                }
            }
        }
        let [ingress, egress] = builders;
        Ok(SgRuleSet {
            ingress: Arc::new(ingress.build()?),
            egress: Arc::new(egress.build()?),
            anywhere,
            open,
            wide: wides.map(|l| (l.len() <= WIDE_SCAN).then(|| Arc::from(l))),
        })
    }

    /// The prefixes a rule's peer stands for.
    fn peers<'a>(&'a self, r: &'a SgRule) -> Result<&'a [Prefix], SgError> {
        Ok(match &r.peer {
            SgPeer::Prefix(p) => core::slice::from_ref(p),
            SgPeer::PrefixList(id) => self.lists.get(id).ok_or(SgError::UnknownPrefixList(*id))?,
            SgPeer::Group(id) => self.groups.get(id).ok_or(SgError::UnknownGroup(*id))?,
        })
    }
}

/// Up to this many distinct TCP/UDP rules from or to anywhere in a direction are scanned to
/// decide untracked packets; beyond it the classifier decides (see `SgRuleSet::wide`).
const WIDE_SCAN: usize = 8;

/// A TCP/UDP rule from or to anywhere: its peer matches every address of the family, so
/// family, protocol and destination ports decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wide {
    family: Family,
    proto: Option<u8>,
    ports: PortRange,
}

impl Wide {
    #[inline]
    fn matches(&self, k: &ClassKey) -> bool {
        self.family == k.family
            && self.proto.is_none_or(|p| p == k.proto)
            && self.ports.contains(k.dst_port)
    }
}

/// The bit of [`SgRuleSet`]'s `open` masks for a family and protocol (TCP and UDP only: AWS
/// tracks everything else).
fn open_bit(family: Family, proto: u8) -> Option<u8> {
    let p = match proto {
        nf_core::flow::proto::TCP => 0,
        nf_core::flow::proto::UDP => 1,
        _ => return None,
    };
    let f = match family {
        Family::V4 => 0,
        Family::V6 => 2,
    };
    Some(1 << (f + p))
}

/// An interface's built rules: one classifier per direction. Clones share the classifiers
/// (interfaces with the same groups can share one set's memory in [`SgTables`]).
#[derive(Clone, Debug, Default)]
pub struct SgRuleSet {
    ingress: Arc<Classifier>,
    egress: Arc<Classifier>,
    /// Per direction: classifier rules numbered below this have a /0 peer.
    anywhere: [u32; 2],
    /// Per direction: `open_bit`s of the protocols a /0 rule allows on every port.
    open: [u8; 2],
    /// Per direction: its TCP/UDP rules from or to anywhere when there are few (a scan of
    /// them decides untracked packets without a classification), else `None`.
    wide: [Option<Arc<[Wide]>>; 2],
}

/// What an [`SgRuleSet`] says of a packet without a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    Deny,
    Track,
    Untracked,
}

impl SgRuleSet {
    /// Whether a flow whose first packet has `key` and travels `direction` is allowed.
    #[inline]
    pub fn allows(&self, direction: SgDirection, key: &ClassKey) -> bool {
        self.classifier(direction).classify(key).is_some()
    }

    /// Whether a packet with `key` travelling `direction` would be left untracked (see
    /// [Untracked flows](self#untracked-flows-awss-exception-optional)): allowed both ways
    /// by rules from and to anywhere.
    ///
    /// ```
    /// use core::net::Ipv6Addr;
    /// use nf_policy::classifier::{ClassKey, PortRange, Prefix};
    /// use nf_policy::sg::{SgDirection, SgPeer, SgRule, SgRuleSetBuilder};
    ///
    /// // AWS's example: HTTP from ::/0, all traffic out to ::/0.
    /// let mut b = SgRuleSetBuilder::default();
    /// b.push(SgRule::tcp(SgDirection::Ingress, SgPeer::Prefix(Prefix::ANY_V6), PortRange::single(80)));
    /// b.push(SgRule::all(SgDirection::Egress, SgPeer::Prefix(Prefix::ANY_V6)));
    /// let rules = b.build()?;
    /// let (client, server) = (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), Ipv6Addr::LOCALHOST);
    /// let http = ClassKey::v6(client, server, 6, 40000, 80);
    /// let answer = ClassKey::v6(server, client, 6, 80, 40000);
    /// assert!(rules.untracked(SgDirection::Ingress, &http));
    /// assert!(rules.untracked(SgDirection::Egress, &answer));
    /// // Outbound connections are tracked: inbound allows only port 80.
    /// let out = ClassKey::v6(server, client, 6, 40000, 443);
    /// assert!(!rules.untracked(SgDirection::Egress, &out));
    /// # Ok::<(), Box<dyn core::error::Error>>(())
    /// ```
    pub fn untracked(&self, direction: SgDirection, key: &ClassKey) -> bool {
        self.leaves_untracked(direction, key)
    }

    /// The decision for a packet without a session (`untracked`: whether the exception
    /// applies at all). An untracked packet costs a scan of the few rules from anywhere (a
    /// classification or two when there are many); any other one classification.
    #[inline]
    fn admit(&self, direction: SgDirection, key: &ClassKey, untracked: bool) -> Admit {
        if untracked && self.leaves_untracked(direction, key) {
            Admit::Untracked
        } else if self.allows(direction, key) {
            Admit::Track
        } else {
            Admit::Deny
        }
    }

    /// See [`Self::untracked`].
    fn leaves_untracked(&self, d: SgDirection, key: &ClassKey) -> bool {
        let Some(bit) = open_bit(key.family, key.proto) else {
            return false;
        };
        let o = d.opposite();
        let open = |d: SgDirection| self.open.get(d.index()).is_some_and(|m| m & bit != 0);
        // A new untracked flow, or the response of one of the other direction.
        (open(o) && self.allowed_from_anywhere(d, key))
            || (open(d) && self.allowed_from_anywhere(o, &reversed(key)))
    }

    /// Whether a rule of `d` whose peer is anywhere allows `key`.
    #[inline]
    fn allowed_from_anywhere(&self, d: SgDirection, key: &ClassKey) -> bool {
        match self.wide.get(d.index()) {
            Some(Some(wide)) => wide.iter().any(|w| w.matches(key)),
            _ => {
                let anywhere = self.anywhere.get(d.index()).copied().unwrap_or(0);
                self.classifier(d)
                    .classify(key)
                    .is_some_and(|i| i < anywhere)
            }
        }
    }

    fn classifier(&self, direction: SgDirection) -> &Classifier {
        match direction {
            SgDirection::Ingress => &self.ingress,
            SgDirection::Egress => &self.egress,
        }
    }

    /// Classifier rules of `direction` (after expanding prefix lists and groups).
    pub fn len(&self, direction: SgDirection) -> usize {
        match direction {
            SgDirection::Ingress => self.ingress.len(),
            SgDirection::Egress => self.egress.len(),
        }
    }

    /// Bytes of both classifiers (shared with this set's clones).
    pub fn bytes(&self) -> usize {
        self.ingress.bytes() + self.egress.bytes()
    }
}

/// The key of a packet travelling back.
fn reversed(k: &ClassKey) -> ClassKey {
    let mut r = *k;
    (r.src, r.dst) = (k.dst, k.src);
    (r.src_port, r.dst_port) = (k.dst_port, k.src_port);
    r
}

/// Rule sets by zone (interface), swapped whole; a [`ZoneMap`], so that a packet's rule set
/// is found by its zone id without a tree search.
pub type SgTables = ZoneMap<SgRuleSet>;

/// Which way a flow's first packet travels, decided from its metadata (for example by the
/// port or tunnel it came in on, or by whether its source is one of the interface's own
/// addresses): see [`SgConfig::direction`].
pub type SgDirectionFn = Arc<dyn Fn(&Meta) -> SgDirection + Send + Sync>;

/// [`SecurityGroups`] settings.
#[non_exhaustive]
#[derive(Clone)]
pub struct SgConfig {
    /// Which way a flow's first packet travels (asked once per new flow, never for a packet
    /// of a session); the default says every new flow is ingress.
    pub direction: SgDirectionFn,
    /// Leave flows that the rules allow both ways from and to anywhere untracked, as AWS
    /// does (see [Untracked flows](self#untracked-flows-awss-exception-optional)); off by
    /// default (every admitted flow is tracked).
    pub untracked: bool,
}

impl Default for SgConfig {
    fn default() -> Self {
        Self {
            direction: Arc::new(|_| SgDirection::Ingress),
            untracked: false,
        }
    }
}

impl fmt::Debug for SgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SgConfig")
            .field("direction", &"Fn(&Meta) -> SgDirection")
            .field("untracked", &self.untracked)
            .finish()
    }
}

impl SgConfig {
    /// With this direction function: a function or a closure, which may hold its own data.
    ///
    /// ```
    /// use nf_policy::{Prefix, SgConfig, SgDirection};
    /// use std::net::Ipv4Addr;
    ///
    /// // Flows opened from the interface's own subnet are egress; the rest ingress.
    /// let inside = Prefix::v4(Ipv4Addr::new(10, 0, 0, 0), 24)?;
    /// let config = SgConfig::default().direction(move |m| {
    ///     if inside.contains(m.flow.src_ip()) {
    ///         SgDirection::Egress
    ///     } else {
    ///         SgDirection::Ingress
    ///     }
    /// });
    /// # let _ = config;
    /// # Ok::<(), nf_policy::ClassifierError>(())
    /// ```
    #[must_use]
    pub fn direction(mut self, f: impl Fn(&Meta) -> SgDirection + Send + Sync + 'static) -> Self {
        self.direction = Arc::new(f);
        self
    }

    /// With untracked flows on or off.
    #[must_use]
    pub fn untracked(mut self, on: bool) -> Self {
        self.untracked = on;
        self
    }
}

/// What a session remembers: the direction its flow was admitted in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SgDecision {
    /// The direction of the flow's first packet.
    pub direction: SgDirection,
}

/// The security-group session service (see the [module docs](self)).
#[derive(Debug)]
pub struct SecurityGroups {
    tables: Arc<SgTables>,
    config: SgConfig,
    allowed: u64,
    denied: u64,
    untracked: u64,
    icmp_untracked: u64,
}

impl SecurityGroups {
    /// A service deciding new flows by `tables`.
    pub fn new(tables: Arc<SgTables>, config: SgConfig) -> Self {
        Self {
            tables,
            config,
            allowed: 0,
            denied: 0,
            untracked: 0,
            icmp_untracked: 0,
        }
    }

    /// True if an ICMP error that no session relates belongs to a flow left untracked in the
    /// error's direction `direction` (its quoted packet, reversed, is that flow's packet).
    fn related_untracked<B: AsRef<[u8]>>(&self, direction: SgDirection, pkt: &Packet<B>) -> bool {
        let Ok(quoted) = quoted_key(pkt.data(), &pkt.meta) else {
            return false;
        };
        let key = ClassKey::from_flow(&quoted.reversed(), (0, 0));
        self.tables
            .get(pkt.meta.flow.zone)
            .is_some_and(|t| t.untracked(direction, &key))
    }

    /// Replaces the rule sets (between batches) and returns the old ones. Established
    /// sessions are kept; new flows are decided by the new rules.
    pub fn set_rules(&mut self, tables: Arc<SgTables>) -> Arc<SgTables> {
        core::mem::replace(&mut self.tables, tables)
    }

    /// The rule sets in use.
    pub fn rules(&self) -> &Arc<SgTables> {
        &self.tables
    }

    /// What the zone's rules say of a packet without a session (a zone without rules allows
    /// nothing).
    #[inline]
    fn admit<B: AsRef<[u8]>>(&self, direction: SgDirection, pkt: &Packet<B>) -> Admit {
        let key = ClassKey::from_packet(pkt);
        self.tables
            .get(pkt.meta.flow.zone)
            .map_or(Admit::Deny, |t| {
                t.admit(direction, &key, self.config.untracked)
            })
    }
}

impl SessionService for SecurityGroups {
    type Value = SgDecision;

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        pkt: &Packet<B>,
        _new: &mut NewFlow<'_>,
    ) -> Result<SgDecision, DropReason> {
        let direction = (self.config.direction)(&pkt.meta);
        match self.admit(direction, pkt) {
            Admit::Track => {
                self.allowed += 1;
                Ok(SgDecision { direction })
            }
            Admit::Untracked => Err(DropReason::SgUntracked),
            Admit::Deny => {
                self.denied += 1;
                Err(DropReason::SgDenied)
            }
        }
    }

    /// Untracked packets pass without a session (see [`SgConfig::untracked`]): those
    /// [`Self::on_new`] left untracked, and those refused a session before the rules were
    /// asked (classified here: the zone policy's `no_session`, a full table or zone quota, a
    /// zone's new-flow rate), and ICMP errors about untracked flows (no session relates
    /// them: [`DropReason::RelatedNoSession`]); every other packet keeps its drop.
    fn on_refused<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        reason: DropReason,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let untracked = match reason {
            DropReason::SgUntracked => true,
            DropReason::NoSession
            | DropReason::SessionTableFull
            | DropReason::ZoneQuotaExceeded
            | DropReason::NewFlowRateExceeded
                if self.config.untracked =>
            {
                let direction = (self.config.direction)(&pkt.meta);
                self.admit(direction, pkt) == Admit::Untracked
            }
            DropReason::RelatedNoSession
                if self.config.untracked && pkt.meta.has(flags::ICMP_ERROR) =>
            {
                let direction = (self.config.direction)(&pkt.meta);
                let related = self.related_untracked(direction, pkt);
                self.icmp_untracked += u64::from(related);
                return if related {
                    Verdict::Pass
                } else {
                    Verdict::Drop(reason)
                };
            }
            _ => false,
        };
        if untracked {
            self.untracked += 1;
            Verdict::Pass
        } else {
            Verdict::Drop(reason)
        }
    }

    /// One byte: the direction the flow was admitted in (0 ingress, 1 egress).
    const EXPORT_LEN: Option<usize> = Some(1);

    fn export_value(&self, value: &SgDecision, out: &mut [u8]) {
        if let Some(b) = out.first_mut() {
            *b = u8::from(value.direction == SgDirection::Egress);
        }
    }

    /// A session another node admitted stays admitted here, as an established session
    /// outlives a rule change.
    fn import_value(
        &mut self,
        _now: Instant,
        _session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<SgDecision> {
        let direction = match bytes.first()? {
            0 => SgDirection::Ingress,
            1 => SgDirection::Egress,
            _ => return None,
        };
        Some(SgDecision { direction })
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        f("security_groups", "flows_allowed", self.allowed);
        f("security_groups", "flows_denied", self.denied);
        f("security_groups", "packets_untracked", self.untracked);
        f(
            "security_groups",
            "icmp_errors_untracked",
            self.icmp_untracked,
        );
    }
}
