//! Session services through the conntrack stage: one lookup per packet, the reply key chosen
//! with the insert, refusals that leave no trace, two services sharing one session, a batch
//! equal to its packets one by one, and IPv6 handles that work with every method.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{
    Conntrack, ConntrackConfig, EndCause, NewFlow, SessionService, SessionState, Sizes,
};
use nf_core::flags;
use nf_core::flow::proto;
use nf_core::{
    Batch, Direction, DropReason, Family, FlowKey, Instant, Meta, Packet, ParseStage, Stage,
    StageControl, StageExt, Verdict, ZoneId,
};
use proptest::prelude::*;

/// Rewrites the destination port of new flows to `port + 1000` (the next free one), so
/// replies come back from the translated port; the reverse rewrite on replies.
#[derive(Default)]
struct PortMap {
    ended: Vec<(EndCause, u16)>,
    refused: u64,
}

impl SessionService for PortMap {
    /// (the original destination port, the translated one)
    type Value = (u16, u16);

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<(u16, u16), DropReason> {
        let o = *new.original();
        for step in 0..4u16 {
            let port = o.dst_port.wrapping_add(1000 + step);
            let mut reply = o.reversed();
            reply.src_port = port;
            if new.is_free(&reply) {
                new.set_reply(reply).unwrap();
                return Ok((o.dst_port, port));
            }
        }
        self.refused += 1;
        Err(DropReason::ServiceRefused)
    }

    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        value: &mut (u16, u16),
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let l4 = usize::from(pkt.meta.l4);
        let (at, port) = match direction {
            Direction::Original => (l4 + 2, value.1),
            Direction::Reply => (l4, value.0),
        };
        pkt.data_mut()[at..at + 2].copy_from_slice(&port.to_be_bytes());
        Verdict::Pass
    }

    fn on_end(
        &mut self,
        _now: Instant,
        s: &nf_core::conntrack::SessionInfo<(u16, u16)>,
        cause: EndCause,
    ) {
        self.ended.push((cause, s.value.1));
    }
}

/// Counts packets per session and direction; refuses flows whose source port is a multiple
/// of 5 (runs after `PortMap`, so `PortMap` sees those as aborted).
#[derive(Default)]
struct Counter {
    refused: u64,
}

impl SessionService for Counter {
    type Value = [u32; 2];

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<[u32; 2], DropReason> {
        if new.original().src_port % 5 == 0 {
            self.refused += 1;
            return Err(DropReason::ServiceRefused);
        }
        Ok([0; 2])
    }

    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        value: &mut [u32; 2],
        _pkt: &mut Packet<B>,
    ) -> Verdict {
        value[direction as usize] += 1;
        Verdict::Pass
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        f("counter", "refused", self.refused);
    }
}

type Pipeline = nf_core::Chain<ParseStage, Conntrack<(PortMap, Counter)>>;

fn pipeline() -> Pipeline {
    pipeline_of(256)
}

fn pipeline_of(cap: u32) -> Pipeline {
    let cfg = ConntrackConfig::new(*b"service test key").sizes(Sizes { v4: cap, v6: cap });
    ParseStage::default()
        .then(Conntrack::new(cfg, (PortMap::default(), Counter::default())).unwrap())
}

/// An Ethernet/IP/UDP frame.
fn udp(v6: bool, src: u8, dst: u8, sport: u16, dport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6]);
    let b = if v6 {
        let mut s = [0x20u8; 16];
        s[15] = src;
        let mut d = [0x20u8; 16];
        d[15] = dst;
        b.ipv6(s, d, 64)
    } else {
        b.ipv4([10, 0, 0, src], [10, 0, 0, dst], 64)
    };
    let b = b.udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, &[7; 6]).unwrap();
    out
}

/// One packet of the model's traffic: flow `f` of a small set, original or reply side (a
/// reply comes from the translated port `PortMap` chose, i.e. `dport + 1000`).
#[derive(Clone, Copy, Debug)]
struct Step {
    v6: bool,
    flow: u8,
    reply: bool,
}

fn frame(s: Step) -> Vec<u8> {
    let (sport, dport) = (40_000 + u16::from(s.flow % 7), 53 + u16::from(s.flow / 7));
    if s.reply {
        udp(s.v6, 2, 1, dport + 1000, sport)
    } else {
        udp(s.v6, 1, 2, sport, dport)
    }
}

fn run(p: &mut Pipeline, steps: &[Step], cuts: &[usize]) -> Vec<(Meta, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut ci = 0;
    let now = Instant::from_nanos(1_000_000_000);
    while at < steps.len() {
        let n = cuts
            .get(ci)
            .copied()
            .unwrap_or(64)
            .clamp(1, 64)
            .min(steps.len() - at);
        ci += 1;
        let mut b = Batch::new();
        for s in &steps[at..at + n] {
            b.push(Packet::with_headroom_for_test(&frame(*s))).unwrap();
        }
        p.process(now, &mut b);
        out.extend(b.drain().map(|pkt| (pkt.meta, pkt.data().to_vec())));
        at += n;
    }
    out
}

trait TestPacket {
    fn with_headroom_for_test(f: &[u8]) -> Packet<Vec<u8>>;
}

impl TestPacket for Packet<Vec<u8>> {
    fn with_headroom_for_test(f: &[u8]) -> Packet<Vec<u8>> {
        let mut buf = vec![0u8; 64 + f.len()];
        buf[64..].copy_from_slice(f);
        Packet::new(buf, 64, f.len()).unwrap()
    }
}

fn step() -> impl Strategy<Value = Step> {
    (any::<bool>(), 0u8..21, any::<bool>()).prop_map(|(v6, flow, reply)| Step { v6, flow, reply })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any split of the traffic into batches gives exactly what one packet per batch gives:
    /// verdicts, sessions, directions, rewritten bytes, the services' values and counters;
    /// one lookup per packet; refused flows leave nothing behind.
    #[test]
    fn batches_equal_singles_with_services(
        steps in proptest::collection::vec(step(), 1..200),
        cuts in proptest::collection::vec(1usize..70, 0..20),
    ) {
        let mut a = pipeline();
        let mut b = pipeline();
        let batched = run(&mut a, &steps, &cuts);
        let single = run(&mut b, &steps, &[1; 200]);
        prop_assert_eq!(&batched, &single);
        let (ca, cb) = (&a.second, &b.second);
        prop_assert_eq!(ca.stats(), cb.stats());
        prop_assert_eq!(ca.len(), cb.len());
        prop_assert_eq!(&ca.service().0.ended, &cb.service().0.ended);

        // One session lookup per packet that reached the stage (no ICMP errors here).
        let tracked = batched.iter().filter(|(m, _)| m.has(flags::L3_VALID)).count() as u64;
        prop_assert_eq!(ca.stats().lookups, tracked);

        for ((m, bytes), s) in batched.iter().zip(&steps) {
            let sport = 40_000 + u16::from(s.flow % 7);
            let refused = sport % 5 == 0;
            let l4 = usize::from(m.l4);
            let port = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            if refused && !s.reply {
                // Refused flows: no session was ever created, the original is dropped, and
                // replies find nothing (and are refused in turn when they try to open one).
                prop_assert_eq!(m.verdict, Verdict::Drop(DropReason::ServiceRefused));
                prop_assert!(m.session.is_none());
                continue;
            }
            if s.reply {
                // A reply either found its session (translated back to the original port)
                // or, arriving first, opened a session of its own.
                if m.direction == Direction::Reply {
                    let v = ca.value(m.session.unwrap()).unwrap();
                    prop_assert_eq!(port(l4), v.0.0);
                }
            } else if m.verdict == Verdict::Pass {
                // (Else PortMap found all its candidate ports taken by sessions that
                // reply-side packets opened, and refused.)
                prop_assert_eq!(m.direction, Direction::Original);
                let v = ca.value(m.session.unwrap()).unwrap();
                prop_assert_eq!(port(l4 + 2), v.0.1);
            }
        }
        // PortMap was told of every flow Counter refused after PortMap admitted it.
        let aborted = ca.service().0.ended.iter().filter(|(c, _)| *c == EndCause::Aborted).count() as u64;
        prop_assert_eq!(aborted, ca.service().1.refused);
        prop_assert_eq!(ca.stats().service_refused, ca.service().0.refused + ca.service().1.refused);
        // Nothing of a refused flow is in the tables: neither key.
        for s in &steps {
            let sport = 40_000 + u16::from(s.flow % 7);
            if sport % 5 == 0 && !s.reply {
                let z = ZoneId(0);
                let dport = 53 + u16::from(s.flow / 7);
                let (src, dst) = if s.v6 {
                    let mut x = [0x20u8; 16];
                    x[15] = 1;
                    let mut y = [0x20u8; 16];
                    y[15] = 2;
                    (FlowKey::v6(z, x, y, proto::UDP, sport, dport), FlowKey::v6(z, y, x, proto::UDP, dport + 1000, sport))
                } else {
                    (FlowKey::v4(z, [10, 0, 0, 1], [10, 0, 0, 2], proto::UDP, sport, dport), FlowKey::v4(z, [10, 0, 0, 2], [10, 0, 0, 1], proto::UDP, dport + 1000, sport))
                };
                prop_assert!(ca.lookup(&src).is_none());
                // (A reply-side packet of the same flow may have opened a session of its own.)
                let replied = steps.iter().any(|t| t.reply && t.v6 == s.v6 && t.flow == s.flow);
                prop_assert!(replied || ca.lookup(&dst).is_none());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// With tables too small for the traffic, early drop evicts within batches: still batch
    /// = singles, and the services hear of every eviction.
    #[test]
    fn evictions_inside_batches_equal_singles(
        steps in proptest::collection::vec(step(), 1..200),
        cuts in proptest::collection::vec(1usize..70, 0..20),
    ) {
        let mut a = pipeline_of(6);
        let mut b = pipeline_of(6);
        let batched = run(&mut a, &steps, &cuts);
        let single = run(&mut b, &steps, &[1; 200]);
        prop_assert_eq!(&batched, &single);
        let ca = &a.second;
        prop_assert_eq!(ca.stats(), b.second.stats());
        let early = ca.service().0.ended.iter().filter(|(c, _)| *c == EndCause::EarlyDrop).count() as u64;
        prop_assert_eq!(early, ca.v4().counters().early_drops + ca.v6().counters().early_drops);
    }
}

/// Both services see the same session: its packets counted by direction in `Counter`'s part
/// of the value, the translation in `PortMap`'s.
#[test]
fn two_services_share_one_session() {
    let mut p = pipeline();
    let out = run(
        &mut p,
        &[
            Step {
                v6: false,
                flow: 1,
                reply: false,
            },
            Step {
                v6: false,
                flow: 1,
                reply: true,
            },
            Step {
                v6: false,
                flow: 1,
                reply: false,
            },
            Step {
                v6: true,
                flow: 1,
                reply: false,
            },
            Step {
                v6: true,
                flow: 1,
                reply: true,
            },
        ],
        &[64],
    );
    let s4 = out[0].0.session.unwrap();
    let s6 = out[3].0.session.unwrap();
    assert_eq!(out[1].0.session, Some(s4));
    assert_eq!(out[4].0.session, Some(s6));
    let ct = &p.second;
    assert_eq!(ct.value(s4), Some(&((53, 1053), [2, 1])));
    assert_eq!(ct.value(s6), Some(&((53, 1053), [1, 1])));
    assert_eq!(ct.stats().lookups, 5);
    let mut names = Vec::new();
    p.visit_counters(&mut |stage, c, v| names.push((stage, c, v)));
    assert!(names.contains(&("counter", "refused", 0)));
    assert!(names.contains(&("conntrack", "created", 2)));
}

/// The handle the stage writes into `Meta` works with every public method that takes one,
/// for IPv4 and IPv6, on the stage and on its family's table; the other family's table
/// refuses it.
#[test]
fn meta_handles_work_everywhere_for_both_families() {
    for v6 in [false, true] {
        let mut p = pipeline();
        let out = run(
            &mut p,
            &[Step {
                v6,
                flow: 1,
                reply: false,
            }],
            &[1],
        );
        let r = out[0].0.session.unwrap();
        assert_eq!(r.family(), if v6 { Family::V6 } else { Family::V4 });
        let now = Instant::from_nanos(2_000_000_000);
        let ct = &mut p.second;
        assert!(ct.is_live(r));
        assert_eq!(ct.value(r), Some(&((53, 1053), [1, 0])));
        ct.value_mut(r).unwrap().1[1] = 9;
        let info = ct.info(r).unwrap();
        assert_eq!(info.value.1, [1, 9]);
        assert_eq!(ct.lookup(&info.original).unwrap().session, r);
        let mut reply = info.reply;
        reply.src_port = 7777;
        ct.replace_reply(r, &reply).unwrap();
        assert_eq!(ct.lookup(&reply).unwrap().direction, Direction::Reply);
        // The family's own table, directly.
        if v6 {
            assert!(ct.v6().is_live(r) && !ct.v4().is_live(r));
            assert_eq!(ct.v6().info(r).unwrap().reply, reply);
            assert!(ct.v6_mut().refresh(r, now));
            assert!(
                ct.v6_mut()
                    .set_state(r, now, SessionState::UdpReplied, true)
            );
            assert!(ct.v4_mut().value_mut(r).is_none());
            assert!(ct.v4_mut().remove(r).is_none());
        } else {
            assert!(ct.v4().is_live(r) && !ct.v6().is_live(r));
            assert_eq!(ct.v4().info(r).unwrap().reply, reply);
            assert!(ct.v4_mut().refresh(r, now));
            assert!(
                ct.v4_mut()
                    .set_state(r, now, SessionState::UdpReplied, true)
            );
            assert!(ct.v6_mut().value_mut(r).is_none());
            assert!(ct.v6_mut().remove(r).is_none());
        }
        assert_eq!(ct.value(r).map(|v| v.1), Some([1, 9]));
        assert_eq!(ct.remove(now, r).map(|v| v.0), Some((53, 1053)));
        assert!(!ct.is_live(r));
        assert_eq!(ct.service().0.ended, [(EndCause::Removed, 1053)]);
        assert!(ct.remove(now, r).is_none());
    }
}

/// Expiry goes through the pipeline value alone: the service hears of every expired
/// session.
#[test]
fn timers_through_the_pipeline_end_sessions_with_the_service() {
    let mut p = pipeline();
    let out = run(
        &mut p,
        &[
            Step {
                v6: false,
                flow: 2,
                reply: false,
            },
            Step {
                v6: true,
                flow: 3,
                reply: false,
            },
        ],
        &[64],
    );
    assert!(out.iter().all(|(m, _)| m.verdict == Verdict::Pass));
    let mut now = Instant::from_nanos(1_000_000_000);
    let mut work = 0;
    for _ in 0..400 {
        now = Instant::from_nanos(now.as_nanos() + 1_000_000_000);
        while p.poll_timeout().is_some_and(|t| t <= now) {
            work += p.handle_timeout(now, 8);
        }
    }
    assert!(work > 0);
    assert!(p.second.is_empty());
    let mut ended = p.second.service().0.ended.clone();
    ended.sort_by_key(|e| e.1);
    assert_eq!(
        ended,
        [(EndCause::Expired, 1053), (EndCause::Expired, 1053)]
    );
    assert_eq!(p.poll_timeout(), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A service that keeps the default reply key (the reverse, whose hash the stage
    /// computes before the batch's inserts): batch = singles, and every live session is
    /// found from both of its keys.
    #[test]
    fn default_reply_keys_index_both_directions(
        steps in proptest::collection::vec(step(), 1..200),
        cuts in proptest::collection::vec(1usize..70, 0..20),
        cap in prop_oneof![Just(6u32), Just(256)],
    ) {
        let mk = || {
            let cfg = ConntrackConfig::new(*b"service test key").sizes(Sizes { v4: cap, v6: cap });
            ParseStage::default().then(Conntrack::new(cfg, Counter::default()).unwrap())
        };
        let (mut a, mut b) = (mk(), mk());
        let mut ra = Vec::new();
        let mut rb = Vec::new();
        for (p, out, cuts) in [(&mut a, &mut ra, &cuts[..]), (&mut b, &mut rb, &[1usize; 200][..])] {
            let mut at = 0;
            let mut ci = 0;
            while at < steps.len() {
                let n = cuts.get(ci).copied().unwrap_or(64).clamp(1, 64).min(steps.len() - at);
                ci += 1;
                let mut batch = Batch::new();
                for s in &steps[at..at + n] {
                    batch.push(Packet::with_headroom(&frame(*s), 0)).unwrap();
                }
                p.process(Instant::from_nanos(1_000_000_000), &mut batch);
                out.extend(batch.drain().map(|x| x.meta));
                at += n;
            }
        }
        prop_assert_eq!(&ra, &rb);
        for m in &ra {
            if let Some(r) = m.session
                && let Some(info) = a.second.info(r)
            {
                prop_assert_eq!(a.second.lookup(&info.original).map(|h| (h.session, h.direction)), Some((r, Direction::Original)));
                prop_assert_eq!(a.second.lookup(&info.reply).map(|h| (h.session, h.direction)), Some((r, Direction::Reply)));
                prop_assert_eq!(info.reply, info.original.reversed());
            }
        }
    }
}

/// Puts every new flow's replies in the next zone (a cross-zone session); `X` is what it
/// declares as `SessionService::CROSS_ZONE`.
struct ZoneHop<const X: bool>;

impl<const X: bool> SessionService for ZoneHop<X> {
    type Value = ();

    const CROSS_ZONE: bool = X;

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<(), DropReason> {
        let mut reply = new.original().reversed();
        reply.zone = ZoneId(reply.zone.0 + 1);
        new.set_reply(reply).map_err(|_| DropReason::ServiceRefused)
    }
}

fn hop<const X: bool>() -> (nf_core::Chain<ParseStage, Conntrack<ZoneHop<X>>>, Vec<Meta>) {
    let cfg = ConntrackConfig::new(*b"service test key").sizes(Sizes { v4: 64, v6: 64 });
    let mut p = ParseStage::default().then(Conntrack::new(cfg, ZoneHop::<X>).unwrap());
    let mut out = Vec::new();
    for (zone, frame) in [
        (0, udp(false, 1, 2, 4000, 53)),
        (1, udp(false, 2, 1, 53, 4000)),
    ] {
        let mut b = Batch::new();
        let mut pkt = Packet::with_headroom(&frame, 0);
        pkt.meta.zone = ZoneId(zone);
        b.push(pkt).unwrap();
        p.process(Instant::from_nanos(1), &mut b);
        out.extend(b.drain().map(|p| p.meta));
    }
    (p, out)
}

#[test]
fn cross_zone_sessions_need_a_service_that_declares_them() {
    let (with, out) = hop::<true>();
    assert!(
        out.iter()
            .all(|m| m.verdict.is_pass() && m.session.is_some())
    );
    assert_eq!(
        out[1].direction,
        Direction::Reply,
        "the reply, in the next zone"
    );
    let (without, out) = hop::<false>();
    assert_eq!(out[0].verdict, Verdict::Drop(DropReason::SessionCrossZone));
    assert!(without.second.is_empty());
    // The side array of reply zones is allocated only for the declaring service.
    assert!(with.second.allocated_bytes() > without.second.allocated_bytes());
}

/// Refuses flows to port 9 and forwards them without a session (a stateless fallback, as a
/// load balancer's for replies it holds no session for).
struct Stateless;

impl SessionService for Stateless {
    type Value = ();

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<(), DropReason> {
        if new.original().dst_port == 9 {
            return Err(DropReason::ServiceRefused);
        }
        Ok(())
    }

    fn on_refused<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        _reason: DropReason,
        _pkt: &mut Packet<B>,
    ) -> Verdict {
        Verdict::Pass
    }
}

/// The verdict of one frame to port 9 through `Conntrack<S>`.
fn refused_verdict<S: SessionService>(service: S) -> Verdict {
    let cfg = ConntrackConfig::new(*b"service test key");
    let mut p = ParseStage::default().then(Conntrack::new(cfg, service).unwrap());
    let f = udp(false, 1, 2, 40_001, 9);
    let mut b = Batch::new();
    b.push(Packet::new(f.clone(), 0, f.len()).unwrap()).unwrap();
    p.process(Instant::ZERO, &mut b);
    b.packets()[0].meta.verdict
}

/// A service that is not there (`None`, `()`) leaves a refused packet's fate to the others,
/// so a pipeline chosen at run time as `(Option<A>, Option<B>)` with only `B` forwards what
/// `B` alone forwards; a service that is there and keeps the drop still vetoes it.
#[test]
fn absent_services_leave_refused_packets_to_the_present_ones() {
    let dropped = Verdict::Drop(DropReason::ServiceRefused);
    assert_eq!(refused_verdict(Stateless), Verdict::Pass);
    assert_eq!(
        refused_verdict((None::<Counter>, Some(Stateless))),
        Verdict::Pass
    );
    assert_eq!(
        refused_verdict((Some(Stateless), None::<Counter>)),
        Verdict::Pass
    );
    assert_eq!(
        refused_verdict(((), (None::<PortMap>, Stateless))),
        Verdict::Pass
    );
    assert_eq!(refused_verdict((Counter::default(), Stateless)), dropped);
    assert_eq!(
        refused_verdict((Some(Stateless), Some(Counter::default()))),
        dropped
    );
    // Nothing there refuses the flow: it opens a session.
    assert_eq!(
        refused_verdict((None::<Stateless>, None::<Counter>)),
        Verdict::Pass
    );
}

/// A service with no say over packets without a session (it only checks sessions' packets,
/// as `TcpWindow` does): in a pair it leaves a refused packet to the other part, nested or
/// optional alike; alone, or beside another such service, the stage's drop stands.
#[test]
fn services_without_a_say_leave_refused_packets_to_the_others() {
    let dropped = Verdict::Drop(DropReason::ServiceRefused);
    let window = || nf_core::conntrack::TcpWindow::new();
    assert_eq!(refused_verdict((Stateless, window())), Verdict::Pass);
    assert_eq!(refused_verdict((window(), Stateless)), Verdict::Pass);
    assert_eq!(
        refused_verdict((Some(window()), (None::<Counter>, Some(Stateless)))),
        Verdict::Pass
    );
    assert_eq!(
        refused_verdict(((window(), window()), Stateless)),
        Verdict::Pass
    );
    // One that judges and keeps the drop still vetoes it.
    assert_eq!(
        refused_verdict((window(), (Counter::default(), Stateless))),
        dropped
    );
    // Nobody that judges: the stage's drop.
    assert_eq!(refused_verdict((SilentRefuser, window())), dropped);
    assert_eq!(refused_verdict((window(), Some(SilentRefuser))), dropped);
    assert_eq!(refused_verdict(SilentRefuser), dropped);
}

/// Refuses flows to port 9 and has no say over packets without a session.
struct SilentRefuser;

impl SessionService for SilentRefuser {
    type Value = ();

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<(), DropReason> {
        Stateless.on_new(now, pkt, new)
    }

    fn judges_without_session(&self) -> bool {
        false
    }
}
