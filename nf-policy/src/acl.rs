//! Network ACLs: numbered rules, first match wins, allow or deny, implicit deny; stateless.
//!
//! An [`Acl`] is one list (inbound or outbound) built by an [`AclBuilder`]: rules are ordered
//! by their number (the lowest is evaluated first, whatever the order they were added in), and
//! a packet that matches no rule is denied. A [`NetworkAcl`] is the pair of lists a subnet
//! has. Both are immutable and built off the hot path on the [`classifier`](crate::classifier),
//! so a lookup costs the same fixed number of table reads whatever the rules and the traffic
//! (no tuple-space explosion).
//!
//! [`AclStage`] applies one direction's list to every parsed packet of a batch, reading the
//! flow key from the packet's metadata (and the ICMP code from the packet), and drops denied
//! packets as [`DropReason::AclDenied`]. It keeps a hit counter per rule and counts allowed,
//! denied-by-rule and implicitly denied packets. ACLs are stateless: replacing the lists
//! ([`AclStage::set_acls`]) applies to the next batch, to established flows as much as to new
//! ones (security groups, which remember their decision per session, behave otherwise).
//!
//! Later fragments carry no transport header: they are classified with ports (or ICMP type and
//! code) 0, so only rules whose port ranges include 0 (such as "all ports") match them.
//!
//! ```
//! use core::net::Ipv4Addr;
//! use nf_policy::acl::{AclAction, AclBuilder, AclRule, AclVerdict};
//! use nf_policy::classifier::{ClassKey, Match, PortRange, Prefix};
//!
//! let mut b = AclBuilder::default();
//! b.push(AclRule::new(200, AclAction::Deny, Match::any_v4()))?;
//! b.push(AclRule::new(100, AclAction::Allow, Match::any_v4().proto(6).dst_ports(PortRange::single(443))))?;
//! let acl = b.build()?;
//!
//! let key = |port| ClassKey::v4(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 0, 0, 1), 6, 40000, port);
//! assert!(acl.evaluate(&key(443)).is_allowed());
//! assert_eq!(acl.evaluate(&key(80)), AclVerdict::Rule { index: 1, number: 200, action: AclAction::Deny });
//! # Ok::<(), nf_policy::acl::AclError>(())
//! ```

use crate::classifier::{
    ClassKey, Classifier, ClassifierBuilder, ClassifierConfig, ClassifierError, Match,
};
use alloc::collections::BTreeSet;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use nf_core::{
    BATCH_SIZE, Batch, DropReason, Instant, Stage, StageControl, StageCounters, StageLoop, Verdict,
    flags,
};

/// What a rule does with the packets it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AclAction {
    /// Let the packet through.
    Allow,
    /// Drop it.
    Deny,
}

/// One numbered rule.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AclRule {
    /// Rule number: lower numbers are evaluated first; unique within a list.
    pub number: u32,
    /// Allow or deny.
    pub action: AclAction,
    /// What the rule matches.
    pub matches: Match,
}

impl AclRule {
    /// A rule.
    pub const fn new(number: u32, action: AclAction, matches: Match) -> Self {
        Self {
            number,
            action,
            matches,
        }
    }
}

/// A rule list the builder rejected.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclError {
    /// Two rules with the same number.
    DuplicateNumber(u32),
    /// The classifier rejected a rule or the rule set (see [`ClassifierError`]).
    Classifier(ClassifierError),
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateNumber(n) => write!(f, "rule number {n} used twice"),
            Self::Classifier(e) => write!(f, "classifier: {e}"),
        }
    }
}

impl core::error::Error for AclError {}

impl From<ClassifierError> for AclError {
    fn from(e: ClassifierError) -> Self {
        Self::Classifier(e)
    }
}

/// Collects numbered rules, then builds an [`Acl`].
#[derive(Clone, Debug, Default)]
pub struct AclBuilder {
    config: ClassifierConfig,
    rules: Vec<AclRule>,
    numbers: BTreeSet<u32>,
}

impl AclBuilder {
    /// An empty list whose classifier is built with `config`.
    pub fn new(config: ClassifierConfig) -> Self {
        Self {
            config,
            rules: Vec::new(),
            numbers: BTreeSet::new(),
        }
    }

    /// Adds a rule (in any order: rules are evaluated by number).
    ///
    /// # Errors
    /// [`AclError::DuplicateNumber`] if a rule already has this number.
    pub fn push(&mut self, rule: AclRule) -> Result<(), AclError> {
        if !self.numbers.insert(rule.number) {
            return Err(AclError::DuplicateNumber(rule.number));
        }
        self.rules.push(rule);
        Ok(())
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (the list denies everything).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Builds the list (off the hot path).
    ///
    /// # Errors
    /// [`AclError::Classifier`] for a malformed rule or a rule set over the memory limit.
    pub fn build(&self) -> Result<Acl, AclError> {
        let mut rules = self.rules.clone();
        rules.sort_unstable_by_key(|r| r.number);
        let mut b = ClassifierBuilder::new(self.config);
        for r in &rules {
            b.push(r.matches)?;
        }
        Ok(Acl {
            classifier: b.build()?,
            rules: rules.iter().map(|r| (r.number, r.action)).collect(),
        })
    }
}

/// The outcome of evaluating a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclVerdict {
    /// The first matching rule: its position in the list, its number and its action.
    Rule {
        /// Position in number order (what [`AclStage::rule_hits`] counts by).
        index: u32,
        /// The rule number.
        number: u32,
        /// Its action.
        action: AclAction,
    },
    /// No rule matched: denied.
    ImplicitDeny,
}

impl AclVerdict {
    /// Whether the packet may pass.
    pub const fn is_allowed(self) -> bool {
        matches!(
            self,
            Self::Rule {
                action: AclAction::Allow,
                ..
            }
        )
    }
}

/// An immutable, built rule list (see the [module docs](self)).
#[derive(Clone, Debug, Default)]
pub struct Acl {
    classifier: Classifier,
    /// (number, action) in number order: the classifier's rule index.
    rules: Vec<(u32, AclAction)>,
}

impl Acl {
    /// The verdict for `key`.
    #[inline]
    pub fn evaluate(&self, key: &ClassKey) -> AclVerdict {
        self.verdict(self.classifier.classify(key))
    }

    /// The verdict for a classifier result (a rule index or none).
    #[inline]
    pub fn verdict(&self, index: Option<u32>) -> AclVerdict {
        match index.and_then(|i| self.rules.get(i as usize).map(|r| (i, r))) {
            Some((index, &(number, action))) => AclVerdict::Rule {
                index,
                number,
                action,
            },
            None => AclVerdict::ImplicitDeny,
        }
    }

    /// The classifier the list is built on (for batch lookups).
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// The rule numbers in evaluation order.
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.rules.iter().map(|r| r.0)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The inbound and outbound lists of one subnet.
#[derive(Clone, Debug, Default)]
pub struct NetworkAcl {
    /// Applied to traffic entering the subnet.
    pub inbound: Acl,
    /// Applied to traffic leaving it.
    pub outbound: Acl,
}

impl NetworkAcl {
    /// The list for `direction`.
    pub fn list(&self, direction: AclDirection) -> &Acl {
        match direction {
            AclDirection::Inbound => &self.inbound,
            AclDirection::Outbound => &self.outbound,
        }
    }
}

/// Which list an [`AclStage`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AclDirection {
    /// [`NetworkAcl::inbound`].
    Inbound,
    /// [`NetworkAcl::outbound`].
    Outbound,
}

/// The network-ACL stage: applies one direction's list to every pending packet with a parsed
/// L3 header (see the [module docs](self)); packets without one are left alone and counted as
/// `unclassified`. The lists are shared (`Arc`) and swapped whole between batches.
#[derive(Debug)]
pub struct AclStage {
    acls: Arc<NetworkAcl>,
    direction: AclDirection,
    counters: StageCounters,
    /// Hits per rule, by position in the list.
    hits: Vec<u64>,
    allowed: u64,
    denied_by_rule: u64,
    denied_implicit: u64,
    unclassified: u64,
}

impl AclStage {
    /// A stage applying `acls`' list for `direction`.
    pub fn new(acls: Arc<NetworkAcl>, direction: AclDirection) -> Self {
        let hits = vec![0; acls.list(direction).len()];
        Self {
            acls,
            direction,
            counters: StageCounters::default(),
            hits,
            allowed: 0,
            denied_by_rule: 0,
            denied_implicit: 0,
            unclassified: 0,
        }
    }

    /// Replaces the lists (a new snapshot; control path: allocates the hit counters) and
    /// returns the old ones. A rule whose number is in both lists keeps its hit count.
    pub fn set_acls(&mut self, acls: Arc<NetworkAcl>) -> Arc<NetworkAcl> {
        let old: Vec<(u32, u64)> = self.rule_hits().collect();
        self.hits = acls
            .list(self.direction)
            .numbers()
            .map(|n| {
                old.binary_search_by_key(&n, |h| h.0)
                    .ok()
                    .and_then(|i| old.get(i))
                    .map_or(0, |h| h.1)
            })
            .collect();
        core::mem::replace(&mut self.acls, acls)
    }

    /// The lists in use.
    pub fn acls(&self) -> &Arc<NetworkAcl> {
        &self.acls
    }

    /// (rule number, packets it decided) for every rule of the list in use, in number order.
    pub fn rule_hits(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.acls
            .list(self.direction)
            .numbers()
            .zip(self.hits.iter().copied())
    }
}

impl<B: AsRef<[u8]>> Stage<B> for AclStage {
    fn process(&mut self, _now: Instant, batch: &mut Batch<B>) {
        self.run(batch, |s, batch, pending| {
            let mut keys = [ClassKey::default(); BATCH_SIZE];
            let mut which = [0usize; BATCH_SIZE];
            let mut n = 0;
            for (i, pkt) in batch.packets().iter().enumerate().take(BATCH_SIZE) {
                if pending & (1 << i) == 0 {
                    continue;
                }
                if !pkt.meta.has(flags::L3_VALID) {
                    s.unclassified += 1;
                    continue;
                }
                if let (Some(k), Some(w)) = (keys.get_mut(n), which.get_mut(n)) {
                    *k = ClassKey::from_packet(pkt);
                    *w = i;
                    n += 1;
                }
            }
            let mut out = [None; BATCH_SIZE];
            let acl = s.acls.list(s.direction);
            acl.classifier()
                .classify_batch(keys.get(..n).unwrap_or(&[]), &mut out);
            for (&i, &o) in which.iter().zip(&out).take(n) {
                let v = match acl.verdict(o) {
                    AclVerdict::Rule { index, action, .. } => {
                        if let Some(h) = s.hits.get_mut(index as usize) {
                            *h += 1;
                        }
                        if action == AclAction::Allow {
                            s.allowed += 1;
                            continue;
                        }
                        s.denied_by_rule += 1;
                        Verdict::Drop(DropReason::AclDenied)
                    }
                    AclVerdict::ImplicitDeny => {
                        s.denied_implicit += 1;
                        Verdict::Drop(DropReason::AclDenied)
                    }
                };
                batch.set_verdict(i, v);
            }
        });
    }
}

impl StageLoop for AclStage {
    fn counters_mut(&mut self) -> &mut StageCounters {
        &mut self.counters
    }
}

impl StageControl for AclStage {
    fn name(&self) -> &'static str {
        match self.direction {
            AclDirection::Inbound => "acl_inbound",
            AclDirection::Outbound => "acl_outbound",
        }
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.counters.visit(self.name(), f);
        f(self.name(), "allowed", self.allowed);
        f(self.name(), "denied_by_rule", self.denied_by_rule);
        f(self.name(), "denied_implicit", self.denied_implicit);
        f(self.name(), "unclassified", self.unclassified);
    }
}
