//! The conntrack stage: a batch of N gives exactly the results of N single-packet calls;
//! TCP state follows the handshake; policy decides which first packets create sessions.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionState, Sizes, TcpCreate, ZonePolicy};
use nf_core::flags;
use nf_core::flow::proto;
use nf_core::wire::tcp::tcp_flags;
use nf_core::{
    Batch, Direction, DropReason, FlowKey, Instant, Packet, Stage, StageControl, Verdict, ZoneId,
};
use proptest::prelude::*;

fn pkt(f: FlowKey, tcp: u8, fl: u16) -> Packet<Vec<u8>> {
    let mut p = Packet::new(vec![0u8; 64], 0, 64).unwrap();
    p.meta.flow = f;
    p.meta.zone = f.zone;
    p.meta.flags = fl;
    p.meta.tcp_flags = tcp;
    p
}

fn stage(cap: u32) -> Conntrack<Counter> {
    let mut cfg = ConntrackConfig::new([4; 16]).sizes(Sizes { v4: cap, v6: cap });
    cfg.v4.default_zone_quota = cap / 2;
    cfg.v6.default_zone_quota = cap / 2;
    Conntrack::new(cfg, Counter).unwrap()
}

/// A service whose value is a `u32` the tests set by hand.
struct Counter;

impl nf_core::conntrack::SessionService for Counter {
    type Value = u32;
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        _new: &mut nf_core::conntrack::NewFlow<'_>,
    ) -> Result<u32, DropReason> {
        Ok(0)
    }
}

const V: u16 = flags::L3_VALID | flags::L4_VALID;

#[test]
fn tcp_handshake_through_the_stage() {
    let mut ct = stage(100);
    let f = FlowKey::v4(
        ZoneId(1),
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        proto::TCP,
        5000,
        80,
    );
    let mut b = Batch::new();
    use tcp_flags::{ACK, SYN};
    for (k, fl) in [
        (f, SYN),
        (f.reversed(), SYN | ACK),
        (f, ACK),
        (f.reversed(), ACK),
    ] {
        b.push(pkt(k, fl, V)).unwrap();
    }
    // Not a SYN, no session: dropped.
    let other = FlowKey::v4(
        ZoneId(1),
        [10, 0, 0, 3],
        [10, 0, 0, 2],
        proto::TCP,
        5000,
        80,
    );
    b.push(pkt(other, ACK, V)).unwrap();
    // A later fragment whose first fragment was never seen is dropped.
    b.push(pkt(other, 0, V | flags::FRAGMENT | flags::LATER_FRAGMENT))
        .unwrap();
    // SYN+FIN is invalid.
    b.push(pkt(other, SYN | tcp_flags::FIN, V)).unwrap();
    ct.process(Instant::ZERO, &mut b);
    let p = b.packets();
    let s = p[0].meta.session.unwrap();
    assert!(
        p[..4]
            .iter()
            .all(|x| x.meta.session == Some(s) && x.meta.verdict.is_pass())
    );
    assert_eq!(
        p[..4].iter().map(|x| x.meta.direction).collect::<Vec<_>>(),
        [
            Direction::Original,
            Direction::Reply,
            Direction::Original,
            Direction::Reply
        ]
    );
    let info = ct.v4().info(s).unwrap();
    assert_eq!(info.state, SessionState::TcpEstablished);
    assert!(info.established);
    assert_eq!(p[4].meta.verdict, Verdict::Drop(DropReason::NoSession));
    assert_eq!(
        p[5].meta.verdict,
        Verdict::Drop(DropReason::FragmentNoSession)
    );
    assert_eq!(
        p[6].meta.verdict,
        Verdict::Drop(DropReason::InvalidTcpState)
    );
    let st = ct.stats();
    assert_eq!(
        (
            st.hits,
            st.misses,
            st.created,
            st.untracked,
            st.no_session,
            st.invalid
        ),
        (3, 3, 1, 0, 1, 1)
    );
    assert_eq!(ct.counters().packets, 7);
    assert_eq!(ct.counters().drops.total(), 3);
}

#[test]
fn per_zone_policy_and_ipv6() {
    let mut ct = stage(100);
    let mut icmp_only = ZonePolicy::reply_only();
    icmp_only.icmp = true;
    ct.set_zone_policy(ZoneId(9), icmp_only);
    let u6 = FlowKey::v6(ZoneId(1), [1; 16], [2; 16], proto::UDP, 1, 2);
    let u9 = FlowKey::v4(ZoneId(9), [1, 1, 1, 1], [2, 2, 2, 2], proto::UDP, 1, 2);
    let land = FlowKey::v4(ZoneId(1), [1, 1, 1, 1], [1, 1, 1, 1], proto::UDP, 7, 7);
    let mut b = Batch::new();
    b.push(pkt(u6, 0, V)).unwrap();
    b.push(pkt(u6.reversed(), 0, V)).unwrap();
    b.push(pkt(u9, 0, V)).unwrap();
    b.push(pkt(land, 0, V)).unwrap();
    ct.process(Instant::ZERO, &mut b);
    let p = b.packets();
    let s = p[0].meta.session.unwrap();
    assert_eq!(s.family(), nf_core::Family::V6);
    // The handle from `Meta` works with the IPv6 table directly, and not with the IPv4 one.
    assert!(ct.v6().is_live(s));
    assert!(!ct.v4().is_live(s));
    assert_eq!(p[1].meta.session, Some(s));
    assert_eq!(p[1].meta.direction, Direction::Reply);
    *ct.value_mut(s).unwrap() = 5;
    assert_eq!(ct.value(s), Some(&5));
    assert_eq!(ct.v6().info(s).unwrap().state, SessionState::UdpReplied);
    assert_eq!(p[2].meta.verdict, Verdict::Drop(DropReason::NoSession));
    assert_eq!(
        p[3].meta.verdict,
        Verdict::Drop(DropReason::SessionKeyConflict)
    );
}

#[derive(Clone, Debug)]
struct P {
    flow: u8,
    reply: bool,
    tcp: u8,
    zone: u8,
    v6: bool,
    untracked: bool,
}

fn arb_p() -> impl Strategy<Value = P> {
    (
        0u8..40,
        any::<bool>(),
        prop_oneof![
            Just(0x02u8),
            Just(0x12),
            Just(0x10),
            Just(0x11),
            Just(0x04),
            Just(0x03),
            Just(0)
        ],
        0u8..3,
        any::<bool>(),
        proptest::bool::weighted(0.05),
    )
        .prop_map(|(flow, reply, tcp, zone, v6, untracked)| P {
            flow,
            reply,
            tcp,
            zone,
            v6,
            untracked,
        })
}

fn make(p: &P) -> Packet<Vec<u8>> {
    let pr = if p.flow.is_multiple_of(3) {
        proto::UDP
    } else {
        proto::TCP
    };
    let z = ZoneId(u32::from(p.zone));
    let mut f = if p.v6 {
        let mut s = [0u8; 16];
        s[15] = p.flow;
        FlowKey::v6(z, s, [9; 16], pr, 1000 + u16::from(p.flow), 443)
    } else {
        FlowKey::v4(
            z,
            [10, 0, 0, p.flow],
            [9, 9, 9, 9],
            pr,
            1000 + u16::from(p.flow),
            443,
        )
    };
    if p.reply {
        f = f.reversed();
    }
    let tcp = if pr == proto::TCP { p.tcp } else { 0 };
    let fl = if p.untracked {
        V | flags::ICMP_ERROR
    } else {
        V
    };
    pkt(f, tcp, fl)
}

proptest! {
    #[test]
    fn batch_equals_single_packet_calls(pkts in proptest::collection::vec(arb_p(), 0..300), batch in 1usize..=64) {
        // Small tables and quotas so that full tables, quotas and early drop all happen.
        let mut a = stage(24);
        let mut b = stage(24);
        a.set_zone_policy(ZoneId(2), any_tcp());
        b.set_zone_policy(ZoneId(2), any_tcp());
        let mut now = Instant::from_nanos(1);
        for chunk in pkts.chunks(batch) {
            now += nf_core::Duration::from_millis(700);
            a.handle_timeout(now, usize::MAX);
            b.handle_timeout(now, usize::MAX);
            let mut ba = Batch::new();
            for p in chunk {
                ba.push(make(p)).unwrap();
            }
            a.process(now, &mut ba);
            for (p, got) in chunk.iter().zip(ba.packets()) {
                let mut one = Batch::new();
                one.push(make(p)).unwrap();
                b.process(now, &mut one);
                let want = &one.packets()[0].meta;
                prop_assert_eq!(got.meta.verdict, want.verdict);
                prop_assert_eq!(got.meta.session, want.session);
                if want.session.is_some() {
                    prop_assert_eq!(got.meta.direction, want.direction);
                }
            }
        }
        prop_assert_eq!(a.stats(), b.stats());
        prop_assert_eq!(&a.counters().drops, &b.counters().drops);
        prop_assert_eq!(a.v4().len(), b.v4().len());
        prop_assert_eq!(a.v6().len(), b.v6().len());
    }
}

fn any_tcp() -> ZonePolicy {
    let mut p = ZonePolicy::default();
    p.tcp = TcpCreate::Any;
    p
}

/// The counter names an operator's dashboards depend on: pinned.
#[test]
fn counter_names_are_pinned() {
    let ct = stage(10);
    let mut names = Vec::new();
    ct.visit_counters(&mut |stage, c, _| names.push(format!("{stage}.{c}")));
    let want = [
        "batches",
        "packets",
        "to_control",
        "tx",
        "drops",
        "lookups",
        "hits",
        "reply_hits",
        "misses",
        "created",
        "untracked",
        "related",
        "refused_full",
        "refused_quota",
        "no_session",
        "invalid",
        "key_conflict",
        "service_refused",
        "service_rejected",
        "refused_passed",
        "reused",
        "renewed",
        "v4_sessions",
        "v4_inserted",
        "v4_early_drops",
        "v4_expired",
        "v4_removed",
        "v4_refused_full",
        "v4_refused_quota",
        "v4_refused_zones",
        "v4_journal_lost",
        "v4_orphans_adopted",
        "v6_sessions",
        "v6_inserted",
        "v6_early_drops",
        "v6_expired",
        "v6_removed",
        "v6_refused_full",
        "v6_refused_quota",
        "v6_refused_zones",
        "v6_journal_lost",
        "v6_orphans_adopted",
        "fragments_recorded",
        "fragment_hits",
        "fragment_misses",
        "fragment_evictions",
    ];
    let want: Vec<String> = want.iter().map(|c| format!("conntrack.{c}")).collect();
    assert_eq!(names, want);
}
