//! Security groups through connection tracking: new flows decided once by allow-only rules,
//! return traffic passing, rule swaps keeping established flows while stopping new ones,
//! group and prefix-list peers, egress by the configured direction.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

extern crate alloc;

use alloc::sync::Arc;
use core::net::Ipv4Addr;
use nf_core::conntrack::{Conntrack, ConntrackConfig};
use nf_core::wire::Frame;
use nf_core::{
    Batch, Chain, DropReason, Instant, Meta, Packet, ParseStage, Stage, StageControl, StageExt,
    Verdict, ZoneId,
};
use nf_policy::classifier::{PortRange, Prefix};
use nf_policy::{
    SecurityGroups, SgConfig, SgDirection, SgError, SgPeer, SgRule, SgRuleSetBuilder, SgTables,
};

type Pipeline = Chain<ParseStage, Conntrack<SecurityGroups>>;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn p4(a: [u8; 4], len: u8) -> Prefix {
    Prefix::v4(Ipv4Addr::from(a), len).unwrap()
}

fn tables(rules: &[SgRule]) -> Arc<SgTables> {
    let mut b = SgRuleSetBuilder::default();
    b.group_members(7, [p4([10, 0, 1, 0], 24)]);
    b.prefix_list(1, [p4([198, 51, 100, 0], 24), p4([203, 0, 113, 0], 24)]);
    for r in rules {
        b.push(*r);
    }
    let mut t = SgTables::new();
    t.insert(ZoneId(0), b.build().unwrap());
    Arc::new(t)
}

fn pipeline(t: Arc<SgTables>, config: SgConfig) -> Pipeline {
    let ct = Conntrack::new(
        ConntrackConfig::new(*b"sg test secret!!"),
        SecurityGroups::new(t, config),
    )
    .unwrap();
    ParseStage::default().then(ct)
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Packet<Vec<u8>> {
    Packet::with_headroom(
        &Frame::ipv4(src, dst).udp(sport, dport).to_vec().unwrap(),
        64,
    )
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Packet<Vec<u8>> {
    Packet::with_headroom(
        &Frame::ipv4(src, dst)
            .tcp(sport, dport, flags)
            .to_vec()
            .unwrap(),
        64,
    )
}

fn run(p: &mut Pipeline, t: u64, pkts: Vec<Packet<Vec<u8>>>) -> Vec<Verdict> {
    let mut batch = Batch::new();
    for x in pkts {
        batch.push(x).unwrap();
    }
    p.process(Instant::from_nanos(t * 1_000_000_000), &mut batch);
    batch.packets().iter().map(|x| x.meta.verdict).collect()
}

fn counter(p: &Pipeline, name: &str) -> u64 {
    let mut v = None;
    p.visit_counters(&mut |s, c, x| {
        if s == "security_groups" && c == name {
            v = Some(x);
        }
    });
    v.unwrap()
}

const VM: [u8; 4] = [10, 0, 9, 5];
const DENY: Verdict = Verdict::Drop(DropReason::SgDenied);

fn rules() -> Vec<SgRule> {
    vec![
        SgRule::tcp(
            SgDirection::Ingress,
            SgPeer::Prefix(Prefix::ANY_V4),
            PortRange::single(443),
        ),
        SgRule::udp(
            SgDirection::Ingress,
            SgPeer::Group(7),
            PortRange::single(53),
        ),
        SgRule::icmp(SgDirection::Ingress, SgPeer::PrefixList(1), Some(8), None),
    ]
}

#[test]
fn new_flows_are_decided_and_return_traffic_passes() {
    let mut p = pipeline(tables(&rules()), SgConfig::default());
    let v = run(
        &mut p,
        1,
        vec![
            tcp([192, 0, 2, 1], VM, 40000, 443, SYN),
            tcp([192, 0, 2, 1], VM, 40001, 22, SYN),
            udp([10, 0, 1, 9], VM, 5000, 53),
            udp([10, 0, 2, 9], VM, 5000, 53),
        ],
    );
    assert_eq!(v, [Verdict::Pass, DENY, Verdict::Pass, DENY]);
    // Replies pass although no egress rule allows them: the session remembers.
    let v = run(
        &mut p,
        2,
        vec![
            tcp(VM, [192, 0, 2, 1], 443, 40000, SYN | ACK),
            udp(VM, [10, 0, 1, 9], 53, 5000),
            // Not a reply: a new egress flow, and there are no egress rules.
            udp(VM, [10, 0, 1, 9], 53, 5001),
        ],
    );
    assert_eq!(v, [Verdict::Pass, Verdict::Pass, DENY]);
    assert_eq!(counter(&p, "flows_allowed"), 2);
    assert_eq!(counter(&p, "flows_denied"), 3);
    assert_eq!(p.second.counters().drops.count(DropReason::SgDenied), 3);
}

/// A swap that removes the rule which admitted a flow keeps the flow (it is tracked) and
/// stops new flows the rule allowed at once.
#[test]
fn a_rule_swap_keeps_established_flows_and_stops_new_ones() {
    let mut p = pipeline(tables(&rules()), SgConfig::default());
    let peer = [10, 0, 1, 9];
    assert_eq!(
        run(&mut p, 1, vec![udp(peer, VM, 5000, 53)]),
        [Verdict::Pass]
    );
    let without_dns: Vec<SgRule> = rules()
        .into_iter()
        .filter(|r| r.proto != Some(17))
        .collect();
    p.second.service_mut().set_rules(tables(&without_dns));
    let v = run(
        &mut p,
        2,
        vec![
            udp(peer, VM, 5000, 53),
            udp(VM, peer, 53, 5000),
            udp(peer, VM, 5001, 53),
        ],
    );
    assert_eq!(v, [Verdict::Pass, Verdict::Pass, DENY]);
}

#[test]
fn prefix_lists_icmp_and_egress_by_direction() {
    let mut r = rules();
    r.push(SgRule::all(SgDirection::Egress, SgPeer::PrefixList(1)));
    // Packets from the VM's subnet travel egress.
    let dir = |m: &Meta| {
        if m.flow.src_raw()[..2] == [10, 0] {
            SgDirection::Egress
        } else {
            SgDirection::Ingress
        }
    };
    let mut p = pipeline(tables(&r), SgConfig::default().direction(dir));
    let echo = |src: [u8; 4], ty: u8| {
        let icmp = nf_core::wire::icmp::IcmpRepr {
            ty,
            code: 0,
            checksum: 0,
            ident: 7,
            seq: 1,
        };
        Packet::with_headroom(&Frame::ipv4(src, VM).icmp(icmp).to_vec().unwrap(), 64)
    };
    let v = run(
        &mut p,
        1,
        vec![
            echo([203, 0, 113, 4], 8),
            echo([192, 0, 2, 4], 8),
            udp(VM, [198, 51, 100, 1], 1000, 9999),
            udp(VM, [192, 0, 2, 1], 1000, 9999),
        ],
    );
    assert_eq!(v, [Verdict::Pass, DENY, Verdict::Pass, DENY]);
}

#[test]
fn unknown_references_and_zones() {
    let mut b = SgRuleSetBuilder::default();
    b.push(SgRule::all(SgDirection::Ingress, SgPeer::Group(3)));
    assert_eq!(b.build().unwrap_err(), SgError::UnknownGroup(3));
    let mut b = SgRuleSetBuilder::default();
    b.push(SgRule::all(SgDirection::Egress, SgPeer::PrefixList(4)));
    assert_eq!(b.build().unwrap_err(), SgError::UnknownPrefixList(4));
    // A zone without rules allows nothing.
    let mut p = pipeline(Arc::new(SgTables::new()), SgConfig::default());
    assert_eq!(run(&mut p, 1, vec![udp([10, 0, 1, 9], VM, 1, 53)]), [DENY]);
}
