//! Security groups: allow-only, unordered, stateful rules, as a connection-tracking
//! [`SessionService`].
//!
//! An interface (here: a [`ZoneId`]) has one or several groups; their rules together form an
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
//! AWS's untracked-flow exception (a group allowing all traffic both ways leaves flows
//! untracked) is not modelled: every admitted flow here is tracked.
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
use nf_core::conntrack::{NewFlow, SessionService};
use nf_core::{DropReason, Family, Instant, Meta, Packet, ZoneId};

/// Which way a flow's first packet travels relative to the protected interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SgDirection {
    /// Towards the interface (the remote end is the source).
    #[default]
    Ingress,
    /// Away from it (the remote end is the destination).
    Egress,
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
        let mut ingress = ClassifierBuilder::new(self.config);
        let mut egress = ClassifierBuilder::new(self.config);
        for r in &self.rules {
            let peers: &[Prefix] = match &r.peer {
                SgPeer::Prefix(p) => core::slice::from_ref(p),
                SgPeer::PrefixList(id) => {
                    self.lists.get(id).ok_or(SgError::UnknownPrefixList(*id))?
                }
                SgPeer::Group(id) => self.groups.get(id).ok_or(SgError::UnknownGroup(*id))?,
            };
            let b = match r.direction {
                SgDirection::Ingress => &mut ingress,
                SgDirection::Egress => &mut egress,
            };
            for p in peers {
                b.push(r.to_match(*p))?;
            }
        }
        Ok(SgRuleSet {
            ingress: ingress.build()?,
            egress: egress.build()?,
        })
    }
}

/// An interface's built rules: one classifier per direction.
#[derive(Clone, Debug, Default)]
pub struct SgRuleSet {
    ingress: Classifier,
    egress: Classifier,
}

impl SgRuleSet {
    /// Whether a flow whose first packet has `key` and travels `direction` is allowed.
    #[inline]
    pub fn allows(&self, direction: SgDirection, key: &ClassKey) -> bool {
        let c = match direction {
            SgDirection::Ingress => &self.ingress,
            SgDirection::Egress => &self.egress,
        };
        c.classify(key).is_some()
    }

    /// Classifier rules of `direction` (after expanding prefix lists and groups).
    pub fn len(&self, direction: SgDirection) -> usize {
        match direction {
            SgDirection::Ingress => self.ingress.len(),
            SgDirection::Egress => self.egress.len(),
        }
    }

    /// Bytes of both classifiers.
    pub fn bytes(&self) -> usize {
        self.ingress.bytes() + self.egress.bytes()
    }
}

/// Rule sets by zone (interface), swapped whole.
pub type SgTables = BTreeMap<ZoneId, SgRuleSet>;

/// [`SecurityGroups`] settings.
#[non_exhaustive]
#[derive(Clone, Copy, Debug)]
pub struct SgConfig {
    /// Which way a flow's first packet travels (for example by the port or tunnel it came
    /// in on); the default says every new flow is ingress.
    pub direction: fn(&Meta) -> SgDirection,
}

impl Default for SgConfig {
    fn default() -> Self {
        Self {
            direction: |_| SgDirection::Ingress,
        }
    }
}

impl SgConfig {
    /// With this direction function.
    #[must_use]
    pub fn direction(mut self, f: fn(&Meta) -> SgDirection) -> Self {
        self.direction = f;
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
}

impl SecurityGroups {
    /// A service deciding new flows by `tables`.
    pub fn new(tables: Arc<SgTables>, config: SgConfig) -> Self {
        Self {
            tables,
            config,
            allowed: 0,
            denied: 0,
        }
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
        let key = ClassKey::from_packet(pkt);
        let allowed = self
            .tables
            .get(&pkt.meta.flow.zone)
            .is_some_and(|t| t.allows(direction, &key));
        if allowed {
            self.allowed += 1;
            Ok(SgDecision { direction })
        } else {
            self.denied += 1;
            Err(DropReason::SgDenied)
        }
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        f("security_groups", "flows_allowed", self.allowed);
        f("security_groups", "flows_denied", self.denied);
    }
}
