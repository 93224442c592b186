//! Network ACLs: rule order by number, first match, implicit deny, the stage's verdicts and
//! counters, and statelessness across a rule swap; against a linear reference.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

extern crate alloc;

use alloc::sync::Arc;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nf_core::{
    Batch, DropReason, FlowKey, Instant, Packet, Stage, StageControl, Verdict, ZoneId, flags,
};
use nf_policy::classifier::{ClassKey, Match, PortRange, Prefix};
use nf_policy::{
    Acl, AclAction, AclBuilder, AclDirection, AclError, AclRule, AclStage, AclVerdict, NetworkAcl,
};
use proptest::prelude::*;

fn acl(rules: &[AclRule]) -> Acl {
    let mut b = AclBuilder::default();
    for r in rules {
        b.push(*r).unwrap();
    }
    b.build().unwrap()
}

fn tcp_to(port: u16) -> Match {
    Match::any_v4().proto(6).dst_ports(PortRange::single(port))
}

#[test]
fn lowest_number_first_and_implicit_deny() {
    let a = acl(&[
        AclRule::new(300, AclAction::Allow, Match::any_v4().proto(6)),
        AclRule::new(100, AclAction::Deny, tcp_to(23)),
        AclRule::new(200, AclAction::Allow, Match::any_v6()),
    ]);
    let k = |p, port| {
        ClassKey::v4(
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            p,
            9,
            port,
        )
    };
    assert_eq!(
        a.evaluate(&k(6, 23)),
        AclVerdict::Rule {
            index: 0,
            number: 100,
            action: AclAction::Deny
        }
    );
    assert!(a.evaluate(&k(6, 22)).is_allowed());
    assert_eq!(a.evaluate(&k(17, 53)), AclVerdict::ImplicitDeny);
    let v6 = ClassKey::v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 17, 1, 2);
    assert_eq!(
        a.evaluate(&v6),
        AclVerdict::Rule {
            index: 1,
            number: 200,
            action: AclAction::Allow
        }
    );
    assert_eq!(a.numbers().collect::<Vec<_>>(), [100, 200, 300]);
    // An empty list denies everything.
    assert_eq!(Acl::default().evaluate(&k(6, 22)), AclVerdict::ImplicitDeny);
}

#[test]
fn rejects_duplicate_numbers_and_bad_rules() {
    let mut b = AclBuilder::default();
    b.push(AclRule::new(1, AclAction::Allow, Match::any_v4()))
        .unwrap();
    assert_eq!(
        b.push(AclRule::new(1, AclAction::Deny, Match::any_v4())),
        Err(AclError::DuplicateNumber(1))
    );
    let mut bad = Match::any_v4();
    bad.dst = Prefix::ANY_V6;
    b.push(AclRule::new(2, AclAction::Allow, bad)).unwrap();
    assert!(matches!(b.build(), Err(AclError::Classifier(_))));
}

fn packet(src: [u8; 4], proto: u8, dst_port: u16) -> Packet<Vec<u8>> {
    let mut p = Packet::new(vec![0u8; 64], 0, 64).unwrap();
    p.meta.flow = FlowKey::v4(ZoneId(1), src, [10, 0, 0, 1], proto, 40000, dst_port);
    p.meta.flags |= flags::L3_VALID | flags::L4_VALID;
    p
}

/// An ICMP packet whose header (type, code) sits at `l4` = 34 (Ethernet + IPv4).
fn icmp(ty: u8, code: u8) -> Packet<Vec<u8>> {
    let mut p = packet([192, 0, 2, 1], 1, 0);
    p.meta.l4 = 34;
    p.meta.icmp_type = ty;
    p.data_mut()[34] = ty;
    p.data_mut()[35] = code;
    p
}

fn network(inbound: &[AclRule]) -> Arc<NetworkAcl> {
    Arc::new(NetworkAcl {
        inbound: acl(inbound),
        outbound: Acl::default(),
    })
}

fn verdicts(stage: &mut AclStage, pkts: Vec<Packet<Vec<u8>>>) -> Vec<Verdict> {
    let mut batch = Batch::new();
    for p in pkts {
        batch.push(p).unwrap();
    }
    stage.process(Instant::ZERO, &mut batch);
    batch.packets().iter().map(|p| p.meta.verdict).collect()
}

fn counter(stage: &AclStage, name: &str) -> u64 {
    let mut v = None;
    stage.visit_counters(&mut |_, c, x| {
        if c == name {
            v = Some(x);
        }
    });
    v.unwrap()
}

#[test]
fn stage_drops_denied_packets_with_a_reason_and_counts() {
    let office = Prefix::v4(Ipv4Addr::new(198, 51, 100, 0), 24).unwrap();
    let acls = network(&[
        AclRule::new(10, AclAction::Allow, tcp_to(443)),
        AclRule::new(20, AclAction::Allow, tcp_to(22).src(office)),
        AclRule::new(30, AclAction::Allow, Match::any_v4().icmp(Some(8), Some(0))),
        AclRule::new(40, AclAction::Deny, tcp_to(22)),
    ]);
    let mut stage = AclStage::new(acls, AclDirection::Inbound);
    let mut unparsed = packet([1, 1, 1, 1], 6, 443);
    unparsed.meta.flags = 0;
    let v = verdicts(
        &mut stage,
        vec![
            packet([203, 0, 113, 5], 6, 443),
            packet([198, 51, 100, 7], 6, 22),
            packet([203, 0, 113, 5], 6, 22),
            packet([203, 0, 113, 5], 17, 53),
            icmp(8, 0),
            icmp(8, 1),
            unparsed,
        ],
    );
    let deny = Verdict::Drop(DropReason::AclDenied);
    assert_eq!(
        v,
        [
            Verdict::Pass,
            Verdict::Pass,
            deny,
            deny,
            Verdict::Pass,
            deny,
            Verdict::Pass
        ]
    );
    assert_eq!(
        stage.rule_hits().collect::<Vec<_>>(),
        [(10, 1), (20, 1), (30, 1), (40, 1)]
    );
    assert_eq!(counter(&stage, "allowed"), 3);
    assert_eq!(counter(&stage, "denied_by_rule"), 1);
    assert_eq!(counter(&stage, "denied_implicit"), 2);
    assert_eq!(counter(&stage, "unclassified"), 1);
    assert_eq!(stage.counters().drops.count(DropReason::AclDenied), 3);
    assert_eq!(stage.name(), "acl_inbound");
}

/// ACLs are stateless: a swap that removes the rule admitting a flow cuts it at the next
/// batch (security groups, by contrast, keep established flows). Hit counts follow numbers.
#[test]
fn a_rule_swap_cuts_established_flows() {
    let allow = AclRule::new(10, AclAction::Allow, tcp_to(443));
    let other = AclRule::new(20, AclAction::Allow, tcp_to(80));
    let mut stage = AclStage::new(network(&[allow, other]), AclDirection::Inbound);
    let flow = || packet([203, 0, 113, 5], 6, 443);
    assert_eq!(
        verdicts(&mut stage, vec![flow(), flow()]),
        [Verdict::Pass; 2]
    );
    stage.set_acls(network(&[other]));
    assert_eq!(
        verdicts(&mut stage, vec![flow()]),
        [Verdict::Drop(DropReason::AclDenied)]
    );
    assert_eq!(stage.rule_hits().collect::<Vec<_>>(), [(20, 0)]);
    stage.set_acls(network(&[allow, other]));
    assert_eq!(verdicts(&mut stage, vec![flow()]), [Verdict::Pass]);
    assert_eq!(stage.rule_hits().collect::<Vec<_>>(), [(10, 1), (20, 0)]);
}

prop_compose! {
    fn rule()(number in 0u32..64, allow in any::<bool>(), sl in 0u8..=32, src in any::<u32>(),
              p in prop::option::of(prop_oneof![Just(6u8), Just(17u8)]),
              lo in 0u16..100, w in 0u16..50) -> AclRule {
        let s = Prefix::masked(IpAddr::V4(Ipv4Addr::from_bits(src & 0xff00_00ff)), sl).unwrap();
        let mut m = Match::any_v4().src(s).dst_ports(PortRange::new(lo, lo + w).unwrap());
        if let Some(p) = p {
            m = m.proto(p);
        }
        AclRule::new(number, if allow { AclAction::Allow } else { AclAction::Deny }, m)
    }
}

proptest! {
    /// The stage's verdicts equal a linear walk of the rules in number order.
    #[test]
    fn stage_agrees_with_a_linear_walk(
        rules in prop::collection::vec(rule(), 0..24),
        pkts in prop::collection::vec((any::<u32>(), prop_oneof![Just(6u8), Just(17u8)], 0u16..160), 1..64),
    ) {
        let mut b = AclBuilder::default();
        let mut kept: Vec<AclRule> = Vec::new();
        for r in rules {
            if b.push(r).is_ok() {
                kept.push(r);
            }
        }
        kept.sort_by_key(|r| r.number);
        let mut stage = AclStage::new(
            Arc::new(NetworkAcl { inbound: Acl::default(), outbound: b.build().unwrap() }),
            AclDirection::Outbound,
        );
        let batch: Vec<_> = pkts
            .iter()
            .map(|&(s, p, port)| packet((s & 0xff00_00ff).to_be_bytes(), p, port))
            .collect();
        let keys: Vec<ClassKey> = batch.iter().map(|p| ClassKey::from_flow(&p.meta.flow, (0, 0))).collect();
        let got = verdicts(&mut stage, batch);
        for (k, v) in keys.iter().zip(got) {
            let allow = kept.iter().find(|r| r.matches.matches(k)).is_some_and(|r| r.action == AclAction::Allow);
            prop_assert_eq!(v.is_pass(), allow, "{:?}", k);
        }
    }
}
