//! Security groups through connection tracking: new flows decided once by allow-only rules,
//! return traffic passing, rule swaps keeping established flows while stopping new ones,
//! group and prefix-list peers, egress by the configured direction, and AWS's untracked
//! flows (rules open both ways leave flows untracked; a rule swap cuts those at once).
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
    stage_counter(p, "security_groups", name)
}

fn stage_counter(p: &Pipeline, stage: &str, name: &str) -> u64 {
    let mut v = None;
    p.visit_counters(&mut |s, c, x| {
        if s == stage && c == name {
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

/// AWS's example of untracked flows: inbound HTTP from anywhere and all traffic out to
/// anywhere leave HTTP untracked (no session, every packet passes by the rules, both ways);
/// SSH from one address and ICMP stay tracked.
fn aws_example() -> Vec<SgRule> {
    let any = SgPeer::Prefix(Prefix::ANY_V4);
    vec![
        SgRule::tcp(SgDirection::Ingress, any, PortRange::single(80)),
        SgRule::tcp(
            SgDirection::Ingress,
            SgPeer::Prefix(p4([203, 0, 113, 1], 32)),
            PortRange::single(22),
        ),
        SgRule::icmp(SgDirection::Ingress, any, None, None),
        SgRule::udp(SgDirection::Ingress, any, PortRange::ANY),
        SgRule::all(SgDirection::Egress, any),
    ]
}

fn egress_from_vm(m: &Meta) -> SgDirection {
    if m.flow.src_raw()[..4] == VM {
        SgDirection::Egress
    } else {
        SgDirection::Ingress
    }
}

#[test]
fn flows_open_both_ways_are_untracked_as_aws_documents() {
    let config = SgConfig::default()
        .direction(egress_from_vm)
        .untracked(true);
    let mut p = pipeline(tables(&aws_example()), config);
    let client = [192, 0, 2, 1];
    // HTTP: the handshake passes both ways without a session.
    let v = run(
        &mut p,
        1,
        vec![
            tcp(client, VM, 40000, 80, SYN),
            tcp(VM, client, 80, 40000, SYN | ACK),
            tcp(client, VM, 40000, 80, ACK),
        ],
    );
    assert_eq!(v, [Verdict::Pass; 3]);
    assert_eq!(p.second.len(), 0);
    assert_eq!(counter(&p, "packets_untracked"), 3);
    assert_eq!(stage_counter(&p, "conntrack", "refused_passed"), 3);
    // UDP open both ways (all ports in, all traffic out): untracked too.
    let v = run(
        &mut p,
        2,
        vec![udp(client, VM, 5000, 9999), udp(VM, client, 9999, 5000)],
    );
    assert_eq!(v, [Verdict::Pass; 2]);
    assert_eq!(p.second.len(), 0);
    // SSH from one address is tracked; so is ICMP, always; and an outbound TCP connection
    // (inbound allows only port 80 from anywhere, not all ports).
    let echo = nf_core::wire::icmp::IcmpRepr {
        ty: 8,
        code: 0,
        checksum: 0,
        ident: 7,
        seq: 1,
    };
    let ping = Packet::with_headroom(&Frame::ipv4(client, VM).icmp(echo).to_vec().unwrap(), 64);
    let v = run(
        &mut p,
        3,
        vec![
            tcp([203, 0, 113, 1], VM, 50000, 22, SYN),
            ping,
            tcp(VM, client, 41000, 443, SYN),
        ],
    );
    assert_eq!(v, [Verdict::Pass; 3]);
    assert_eq!(p.second.len(), 3);
    assert_eq!(counter(&p, "flows_allowed"), 3);
    assert_eq!(counter(&p, "packets_untracked"), 5);
}

/// AWS: an untracked flow is cut at once when the rule allowing it goes (nothing remembers
/// it), a tracked one is not.
#[test]
fn a_rule_swap_cuts_untracked_flows_at_once_and_keeps_tracked_ones() {
    let config = SgConfig::default()
        .direction(egress_from_vm)
        .untracked(true);
    let mut p = pipeline(tables(&aws_example()), config);
    let client = [192, 0, 2, 1];
    let admin = [203, 0, 113, 1];
    let v = run(
        &mut p,
        1,
        vec![
            tcp(client, VM, 40000, 80, SYN),
            tcp(admin, VM, 50000, 22, SYN),
        ],
    );
    assert_eq!(v, [Verdict::Pass; 2]);
    let without_http: Vec<SgRule> = aws_example()
        .into_iter()
        .filter(|r| r.ports != PortRange::single(80))
        .collect();
    p.second.service_mut().set_rules(tables(&without_http));
    let v = run(
        &mut p,
        2,
        vec![
            tcp(client, VM, 40000, 80, ACK),
            tcp(admin, VM, 50000, 22, ACK),
            tcp(VM, admin, 22, 50000, ACK),
        ],
    );
    assert_eq!(
        v,
        [
            Verdict::Drop(DropReason::NoSession),
            Verdict::Pass,
            Verdict::Pass
        ]
    );
}

#[test]
fn without_the_option_every_admitted_flow_is_tracked() {
    let config = SgConfig::default().direction(egress_from_vm);
    let mut p = pipeline(tables(&aws_example()), config);
    let client = [192, 0, 2, 1];
    let v = run(&mut p, 1, vec![tcp(client, VM, 40000, 80, SYN)]);
    assert_eq!(v, [Verdict::Pass]);
    assert_eq!(p.second.len(), 1);
    assert_eq!(counter(&p, "packets_untracked"), 0);
    // A segment that cannot open a session, of no flow: dropped as conntrack says.
    let v = run(&mut p, 2, vec![tcp(client, VM, 40001, 80, ACK)]);
    assert_eq!(v, [Verdict::Drop(DropReason::NoSession)]);
}

/// An ICMP error about `quoted` (an IP packet), from `src` to `dst`: destination
/// unreachable with `code` (4: fragmentation needed, 3: port unreachable).
fn unreachable(src: [u8; 4], dst: [u8; 4], code: u8, quoted: &[u8]) -> Packet<Vec<u8>> {
    let f = Frame::ipv4(src, dst).icmp_error(3, code, quoted);
    Packet::with_headroom(&f.to_vec().unwrap(), 64)
}

/// The IP packet of a test packet (what an ICMP error about it quotes): after Ethernet.
fn ip_of(p: &Packet<Vec<u8>>) -> Vec<u8> {
    p.data().get(14..).unwrap().to_vec()
}

/// ICMP errors about untracked flows have no session to relate them: they pass by the
/// rules of the flow they belong to (a router's fragmentation needed about the VM's HTTP
/// answer reaches the VM; the VM's port unreachable about an untracked UDP datagram reaches
/// the client); an error about a flow that is not untracked and has no session still drops.
#[test]
fn icmp_errors_about_untracked_flows_pass_by_the_rules() {
    let config = SgConfig::default()
        .direction(egress_from_vm)
        .untracked(true);
    let mut p = pipeline(tables(&aws_example()), config);
    let (client, router) = ([192, 0, 2, 1], [198, 51, 100, 254]);
    let answer = tcp(VM, client, 80, 40000, SYN | ACK);
    let datagram = udp(client, VM, 5000, 9999);
    let ssh = tcp([203, 0, 113, 1], VM, 50000, 22, SYN);
    let v = run(
        &mut p,
        1,
        vec![
            unreachable(router, VM, 4, &ip_of(&answer)),
            unreachable(VM, client, 3, &ip_of(&datagram)),
            unreachable(router, [203, 0, 113, 1], 4, &ip_of(&ssh)),
        ],
    );
    let no_session = Verdict::Drop(DropReason::RelatedNoSession);
    assert_eq!(v, [Verdict::Pass, Verdict::Pass, no_session]);
    assert_eq!(p.second.len(), 0);
    assert_eq!(counter(&p, "icmp_errors_untracked"), 2);
    assert_eq!(stage_counter(&p, "conntrack", "refused_passed"), 2);

    // Without the option the same errors drop as before.
    let config = SgConfig::default().direction(egress_from_vm);
    let mut p = pipeline(tables(&aws_example()), config);
    let v = run(&mut p, 1, vec![unreachable(router, VM, 4, &ip_of(&answer))]);
    assert_eq!(v, [no_session]);
    assert_eq!(counter(&p, "icmp_errors_untracked"), 0);
}

/// The rule-set query alone: family and protocol matter, and a prefix list holding `/0`
/// counts as anywhere.
#[test]
fn untracked_needs_both_directions_open_for_the_family_and_protocol() {
    use nf_policy::ClassKey;
    let any6 = SgPeer::Prefix(Prefix::ANY_V6);
    let mut b = SgRuleSetBuilder::default();
    b.prefix_list(9, [Prefix::ANY_V4, p4([10, 0, 0, 0], 8)]);
    b.push(SgRule::udp(
        SgDirection::Ingress,
        SgPeer::PrefixList(9),
        PortRange::single(53),
    ));
    b.push(SgRule::udp(
        SgDirection::Egress,
        SgPeer::Prefix(Prefix::ANY_V4),
        PortRange::ANY,
    ));
    b.push(SgRule::tcp(
        SgDirection::Ingress,
        any6,
        PortRange::single(80),
    ));
    let r = b.build().unwrap();
    let (c, s) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 0, 9, 5));
    assert!(r.untracked(SgDirection::Ingress, &ClassKey::v4(c, s, 17, 5000, 53)));
    assert!(r.untracked(SgDirection::Egress, &ClassKey::v4(s, c, 17, 53, 5000)));
    // TCP is not open outbound; IPv6 HTTP has no outbound rule at all.
    assert!(!r.untracked(SgDirection::Ingress, &ClassKey::v4(c, s, 6, 5000, 53)));
    let (c6, s6) = (
        core::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
        core::net::Ipv6Addr::LOCALHOST,
    );
    assert!(!r.untracked(SgDirection::Ingress, &ClassKey::v6(c6, s6, 6, 4000, 80)));
    // Outbound UDP to a port inbound rules do not open is tracked.
    assert!(!r.untracked(SgDirection::Egress, &ClassKey::v4(s, c, 17, 5000, 9999)));
}

/// AWS's definition read straight off the rules, for the property test below.
fn untracked_reference(rules: &[SgRule], d: SgDirection, k: &nf_policy::ClassKey) -> bool {
    let other = |d| match d {
        SgDirection::Ingress => SgDirection::Egress,
        SgDirection::Egress => SgDirection::Ingress,
    };
    let tcp_udp = |p: u8| p == 6 || p == 17;
    let anywhere = |r: &SgRule| matches!(r.peer, SgPeer::Prefix(p) if p.length() == 0);
    // A rule of `d` from anywhere allows `k` (TCP/UDP, destination ports).
    let from_anywhere = |d, k: &nf_policy::ClassKey| {
        rules.iter().any(|r| {
            r.direction == d
                && anywhere(r)
                && r.proto.is_none_or(|p| p == k.proto)
                && r.ports.contains(k.dst_port)
        })
    };
    // `d` has a rule from anywhere for `k`'s protocol on all ports.
    let open = |d, proto| {
        rules.iter().any(|r| {
            r.direction == d
                && anywhere(r)
                && r.proto.is_none_or(|p| p == proto)
                && r.ports == PortRange::ANY
        })
    };
    if !tcp_udp(k.proto) {
        return false;
    }
    let mut rev = *k;
    (rev.src, rev.dst, rev.src_port, rev.dst_port) = (k.dst, k.src, k.dst_port, k.src_port);
    (from_anywhere(d, k) && open(other(d), k.proto))
        || (open(d, k.proto) && from_anywhere(other(d), &rev))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// `SgRuleSet::untracked` (a scan of the few rules from anywhere, or the classifier when a
    /// direction has more than eight distinct ones, as up to 40 rules often give) agrees with
    /// the definition read off the rules.
    #[test]
    fn untracked_agrees_with_the_definition(
        rules in proptest::collection::vec(
            (proptest::bool::ANY, 0u8..4, 0u8..5, 0u16..4), 0..40),
        keys in proptest::collection::vec((proptest::bool::ANY, 0u8..3, 0u16..6, 0u16..6), 1..40),
    ) {
        let ports = [PortRange::ANY, PortRange::single(80), PortRange::single(443),
            PortRange::new(1000, 2000).unwrap(), PortRange::single(1500)];
        let rules: Vec<SgRule> = rules
            .into_iter()
            .map(|(ingress, proto, port, peer)| {
                let d = if ingress { SgDirection::Ingress } else { SgDirection::Egress };
                let peer = SgPeer::Prefix(match peer {
                    0 | 1 => Prefix::ANY_V4,
                    2 => p4([192, 0, 2, 0], 24),
                    _ => p4([0, 0, 0, 0], 1),
                });
                match proto {
                    0 => SgRule::all(d, peer),
                    1 => SgRule::tcp(d, peer, ports[usize::from(port)]),
                    2 => SgRule::udp(d, peer, ports[usize::from(port)]),
                    _ => SgRule::icmp(d, peer, None, None),
                }
            })
            .collect();
        let mut b = SgRuleSetBuilder::default();
        for r in &rules {
            b.push(*r);
        }
        let set = b.build().unwrap();
        let port_of = [80u16, 443, 1500, 999, 53, 2000];
        for (ingress, proto, sp, dp) in keys {
            let d = if ingress { SgDirection::Ingress } else { SgDirection::Egress };
            let proto = [6u8, 17, 1][usize::from(proto)];
            let k = nf_policy::ClassKey::v4(
                Ipv4Addr::new(192, 0, 2, 7),
                Ipv4Addr::new(10, 0, 9, 5),
                proto,
                port_of[usize::from(sp)],
                port_of[usize::from(dp)],
            );
            proptest::prop_assert_eq!(
                set.untracked(d, &k),
                untracked_reference(&rules, d, &k),
                "{:?} {:?}", d, k
            );
        }
    }
}

/// A direction closure that holds its own data (here the interface's subnet, as nf-pcap's
/// `inside=` does): a flow opened from inside is judged by the egress rules, one opened
/// towards it by the ingress rules, and `Prefix::contains` never matches across families.
#[test]
fn a_direction_closure_holds_its_own_prefixes() {
    let inside = [Prefix::v4(Ipv4Addr::new(10, 0, 9, 0), 24).unwrap()];
    assert!(!inside[0].contains("2001:db8::1".parse().unwrap()));
    let config = SgConfig::default().direction(move |m: &Meta| {
        if inside.iter().any(|p| p.contains(m.flow.src_ip())) {
            SgDirection::Egress
        } else {
            SgDirection::Ingress
        }
    });
    let any = SgPeer::Prefix(Prefix::ANY_V4);
    let rules = [SgRule::tcp(
        SgDirection::Egress,
        any,
        PortRange::single(443),
    )];
    let mut p = pipeline(tables(&rules), config);
    let server = [192, 0, 2, 1];
    let v = run(
        &mut p,
        1,
        vec![
            tcp(VM, server, 40000, 443, SYN),
            tcp(server, VM, 443, 40000, SYN | ACK),
            tcp(server, VM, 40001, 443, SYN),
            tcp(VM, server, 40002, 80, SYN),
        ],
    );
    assert_eq!(
        v,
        [
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Drop(DropReason::SgDenied),
            Verdict::Drop(DropReason::SgDenied)
        ]
    );
    assert_eq!(counter(&p, "flows_allowed"), 1);
    assert_eq!(counter(&p, "flows_denied"), 2);
}

/// A node taking over another's sessions keeps their decisions: replies pass there without
/// an egress rule, even where its own rules would no longer admit the flow.
#[test]
fn admitted_flows_move_to_another_node_with_their_decision() {
    let mut a = pipeline(tables(&rules()), SgConfig::default());
    let peer = [10, 0, 1, 9];
    assert_eq!(
        run(&mut a, 1, vec![udp(peer, VM, 5000, 53)]),
        [Verdict::Pass]
    );
    let mut chunk = alloc::vec::Vec::new();
    let now = Instant::from_nanos(2_000_000_000);
    a.second
        .export(nf_core::Family::V4, now, 0, 16, &mut chunk)
        .unwrap();
    let without_dns: Vec<SgRule> = rules()
        .into_iter()
        .filter(|r| r.proto != Some(17))
        .collect();
    let mut b = pipeline(tables(&without_dns), SgConfig::default());
    assert_eq!(b.second.import(now, &chunk).unwrap().imported, 1);
    let v = run(
        &mut b,
        2,
        vec![
            udp(VM, peer, 53, 5000),
            udp(peer, VM, 5000, 53),
            udp(peer, VM, 5001, 53),
        ],
    );
    assert_eq!(v, [Verdict::Pass, Verdict::Pass, DENY]);
    assert_eq!(counter(&b, "flows_allowed"), 0);
}
