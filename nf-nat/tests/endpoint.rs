//! The private-endpoint service ([`Endpoint`]): a consumer zone's flows to an endpoint reach a
//! provider zone's service, sourced from the provider's own address space; replies, ICMP
//! errors both ways, overlapping consumers, third zones and the end of a session; IPv4 and
//! IPv6 (ICMPv6 errors both ways too).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod common;

use common::{
    dst4, dst6, export_sessions, ports, replicate, src4, src6, tcp4, tcp6, udp4, udp6,
    unreachable4, unreachable6, verify_frame,
};
use nf_core::conntrack::{Conntrack, ConntrackConfig};
use nf_core::flow::proto;
use nf_core::{
    Batch, Chain, Direction, DropReason, Duration, Instant, Packet, ParseStage, Stage,
    StageControl, StageExt, Verdict, ZoneId,
};
use nf_nat::{AllocatorConfig, Endpoint, EndpointError, EndpointRule, EndpointSide, Profile};

const CONSUMER: [u8; 4] = [10, 0, 0, 5];
const ENDPOINT: [u8; 4] = [10, 0, 0, 200];
const SERVICE: [u8; 4] = [10, 9, 0, 1];
const POOL: [u8; 4] = [10, 9, 255, 1];
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

fn pool() -> AllocatorConfig {
    AllocatorConfig::new(
        Profile::Hyperplane,
        vec![core::net::Ipv4Addr::from(POOL).into()],
        *b"endpoint secret!",
    )
    .with_max_mappings(1024)
}

fn rule(consumer_zone: u32, proto: u8) -> EndpointRule {
    EndpointRule::new(
        proto,
        EndpointSide::new(ZoneId(consumer_zone), "10.0.0.200:443".parse().unwrap()),
        EndpointSide::new(ZoneId(200), "10.9.0.1:8443".parse().unwrap()),
        pool(),
    )
}

struct Pipe {
    pipe: Chain<ParseStage, Conntrack<Endpoint>>,
    now: Instant,
}

/// A packet as it leaves: verdict, zone, frame, direction.
struct Out {
    verdict: Verdict,
    zone: ZoneId,
    frame: Vec<u8>,
    direction: Direction,
}

impl Pipe {
    fn new(rules: Vec<EndpointRule>) -> Self {
        let mut cfg = ConntrackConfig::new(*b"conntrack secret");
        // A change journal, for the replica test.
        cfg.v4.journal = 1024;
        cfg.v6.journal = 1024;
        let ct = Conntrack::new(cfg, Endpoint::new(rules).unwrap()).unwrap();
        Self {
            pipe: ParseStage::default().then(ct),
            now: Instant::from_nanos(1_000_000_000),
        }
    }

    fn send(&mut self, zone: u32, frame: &[u8]) -> Out {
        let mut batch = Batch::new();
        let mut p = Packet::with_headroom(frame, 64);
        p.meta.zone = ZoneId(zone);
        batch.push(p).ok().unwrap();
        self.pipe.process(self.now, &mut batch);
        let p = batch.drain().next().unwrap();
        Out {
            verdict: p.meta.verdict,
            zone: p.meta.zone,
            frame: p.data().to_vec(),
            direction: p.meta.direction,
        }
    }

    /// Runs every timer due by `now` + `secs`.
    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        while self.pipe.poll_timeout().is_some_and(|t| t <= self.now) {
            self.pipe.handle_timeout(self.now, 1024);
        }
    }

    fn endpoint(&self) -> &Endpoint {
        self.pipe.second.service()
    }

    fn counter(&self, name: &str) -> u64 {
        let mut v = None;
        self.pipe.visit_counters(&mut |stage, n, x| {
            if stage == "endpoint" && n == name {
                v = Some(x);
            }
        });
        v.unwrap()
    }
}

#[test]
fn consumer_reaches_the_service_from_the_providers_own_space_and_back() {
    let mut p = Pipe::new(vec![rule(100, proto::TCP)]);
    let syn = p.send(100, &tcp4(CONSUMER, ENDPOINT, 40000, 443, SYN));
    assert_eq!(syn.verdict, Verdict::Pass);
    assert_eq!(syn.zone, ZoneId(200));
    assert_eq!((src4(&syn.frame), dst4(&syn.frame)), (POOL, SERVICE));
    let (sport, dport) = ports(&syn.frame);
    assert_eq!(dport, 8443);
    assert!(sport >= 1024);
    verify_frame(&syn.frame);

    // The provider answers in its zone, to its own address.
    let syn_ack = p.send(200, &tcp4(SERVICE, POOL, 8443, sport, SYN_ACK));
    assert_eq!(syn_ack.verdict, Verdict::Pass);
    assert_eq!(syn_ack.direction, Direction::Reply);
    assert_eq!(syn_ack.zone, ZoneId(100));
    assert_eq!(
        (src4(&syn_ack.frame), dst4(&syn_ack.frame)),
        (ENDPOINT, CONSUMER)
    );
    assert_eq!(ports(&syn_ack.frame), (443, 40000));
    verify_frame(&syn_ack.frame);

    for _ in 0..3 {
        let ack = p.send(100, &tcp4(CONSUMER, ENDPOINT, 40000, 443, ACK));
        assert_eq!((ack.verdict, ack.zone), (Verdict::Pass, ZoneId(200)));
        assert_eq!(ports(&ack.frame), (sport, 8443));
        verify_frame(&ack.frame);
    }
    let ct = &p.pipe.second;
    assert_eq!(ct.len(), 1);
    let s = ct.lookup(&nf_core::FlowKey::v4(
        ZoneId(200),
        SERVICE,
        POOL,
        proto::TCP,
        8443,
        sport,
    ));
    let info = ct.info(s.unwrap().session).unwrap();
    assert_eq!(info.original.zone, ZoneId(100));
    assert_eq!(info.reply.zone, ZoneId(200));
    assert_eq!(p.counter("flows_translated"), 1);
    assert_eq!(p.counter("packets_to_provider"), 4);
    assert_eq!(p.counter("packets_to_consumer"), 1);
}

#[test]
fn overlapping_consumers_get_distinct_provider_tuples_and_their_own_replies() {
    let mut p = Pipe::new(vec![rule(100, proto::UDP), rule(101, proto::UDP)]);
    let mut seen = Vec::new();
    for zone in [100, 101] {
        // Identical consumer tuples, in two zones.
        let out = p.send(zone, &udp4(CONSUMER, ENDPOINT, 5000, 443));
        assert_eq!((out.verdict, out.zone), (Verdict::Pass, ZoneId(200)));
        verify_frame(&out.frame);
        seen.push((src4(&out.frame), ports(&out.frame).0));
    }
    assert_ne!(
        seen[0], seen[1],
        "the provider must tell the consumers apart"
    );
    // Each answer goes back to its own consumer's zone.
    for (zone, (addr, port)) in [100, 101].into_iter().zip(seen.clone()) {
        let back = p.send(200, &udp4(SERVICE, addr, 8443, port));
        assert_eq!((back.verdict, back.zone), (Verdict::Pass, ZoneId(zone)));
        assert_eq!((src4(&back.frame), dst4(&back.frame)), (ENDPOINT, CONSUMER));
        assert_eq!(ports(&back.frame), (443, 5000));
        verify_frame(&back.frame);
    }
    // One allocator for the shared pool: both mappings live there.
    assert_eq!(p.endpoint().ports(0).unwrap().len(), 2);
}

#[test]
fn a_third_zone_with_the_same_tuples_finds_nothing() {
    let mut p = Pipe::new(vec![rule(100, proto::UDP)]);
    let out = p.send(100, &udp4(CONSUMER, ENDPOINT, 5000, 443));
    let (addr, port) = (src4(&out.frame), ports(&out.frame).0);
    let reply = udp4(SERVICE, addr, 8443, port);
    // The provider's reply tuple in zone 300 and in the consumer's zone: not the session.
    for zone in [300, 100] {
        let o = p.send(zone, &reply);
        assert_eq!(o.verdict, Verdict::Pass);
        assert_eq!(o.zone, ZoneId(zone));
        assert_eq!(o.frame, reply, "untranslated");
        assert_eq!(o.direction, Direction::Original, "a session of its own");
    }
    // The consumer's tuple in zone 300: no endpoint there.
    let o = p.send(300, &udp4(CONSUMER, ENDPOINT, 5000, 443));
    assert_eq!((o.zone, src4(&o.frame)), (ZoneId(300), CONSUMER));
    assert_eq!(p.counter("flows_unmatched"), 3);
    // The provider cannot open flows to the pool (into a consumer).
    let o = p.send(200, &udp4(SERVICE, POOL, 8443, port.wrapping_add(1)));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::NatNoMapping));
    assert_eq!(p.counter("no_mapping"), 1);
}

#[test]
fn icmp_errors_are_translated_both_ways_and_change_zones() {
    let mut p = Pipe::new(vec![rule(100, proto::UDP)]);
    let out = p.send(100, &udp4(CONSUMER, ENDPOINT, 5000, 443));
    let (pool_addr, pool_port) = (src4(&out.frame), ports(&out.frame).0);
    let router = [10, 9, 0, 254];
    // The provider side: a router there rejects the translated packet.
    let err = p.send(200, &unreachable4(router, pool_addr, &out.frame));
    assert_eq!(err.verdict, Verdict::Pass);
    assert_eq!((err.zone, err.direction), (ZoneId(100), Direction::Reply));
    assert_eq!((src4(&err.frame), dst4(&err.frame)), (ENDPOINT, CONSUMER));
    verify_frame(&err.frame);
    let quote = &common::ip(&err.frame)[28..];
    assert_eq!(
        (&quote[12..16], &quote[16..20]),
        (&CONSUMER[..], &ENDPOINT[..])
    );
    assert_eq!(
        (common::be16(&quote[20..]), common::be16(&quote[22..])),
        (5000, 443)
    );
    // The consumer side: the consumer rejects a reply it got from the endpoint.
    let back = p.send(200, &udp4(SERVICE, pool_addr, 8443, pool_port));
    let err = p.send(100, &unreachable4(CONSUMER, ENDPOINT, &back.frame));
    assert_eq!(err.verdict, Verdict::Pass);
    assert_eq!(
        (err.zone, err.direction),
        (ZoneId(200), Direction::Original)
    );
    assert_eq!((src4(&err.frame), dst4(&err.frame)), (pool_addr, SERVICE));
    verify_frame(&err.frame);
    let quote = &common::ip(&err.frame)[28..];
    assert_eq!(
        (&quote[12..16], &quote[16..20]),
        (&SERVICE[..], &pool_addr[..])
    );
    assert_eq!(
        (common::be16(&quote[20..]), common::be16(&quote[22..])),
        (8443, pool_port)
    );
    assert_eq!(p.counter("icmp_errors_translated"), 2);
}

#[test]
fn the_end_of_a_session_returns_its_pool_port() {
    let mut p = Pipe::new(vec![rule(100, proto::UDP)]);
    p.send(100, &udp4(CONSUMER, ENDPOINT, 5000, 443));
    assert_eq!(p.endpoint().ports(0).unwrap().len(), 1);
    p.now += Duration::from_secs(600);
    while p.pipe.poll_timeout().is_some_and(|t| t <= p.now) {
        p.pipe.handle_timeout(p.now, 1024);
    }
    assert!(p.pipe.second.is_empty());
    let ports = p.endpoint().ports(0).unwrap();
    assert_eq!((ports.len(), ports.quarantined()), (0, 1));
}

#[test]
fn bad_rules_are_refused() {
    // Mixed families: an IPv6 endpoint to an IPv4 service, an IPv6 rule with an IPv4 pool,
    // an IPv4 rule with a pool holding an IPv6 address.
    let mixed = [
        EndpointRule::new(
            proto::TCP,
            EndpointSide::new(ZoneId(1), "[fd00::1]:443".parse().unwrap()),
            EndpointSide::new(ZoneId(2), "10.9.0.1:8443".parse().unwrap()),
            pool6(),
        ),
        EndpointRule::new(
            proto::TCP,
            EndpointSide::new(ZoneId(1), "[fd00::1]:443".parse().unwrap()),
            EndpointSide::new(ZoneId(2), "[fd09::1]:8443".parse().unwrap()),
            pool(),
        ),
        {
            let mut r = rule(1, proto::TCP);
            r.pool.public_ips.push("fd09:ffff::1".parse().unwrap());
            r
        },
    ];
    for r in mixed {
        assert_eq!(
            Endpoint::new(vec![rule(7, proto::UDP), r]).err(),
            Some(EndpointError::MixedFamilies(1))
        );
    }
    // An empty pool is the allocator's refusal.
    let mut empty = rule(1, proto::TCP);
    empty.pool.public_ips.clear();
    assert_eq!(
        Endpoint::new(vec![empty]).err(),
        Some(EndpointError::Pool(0, nf_nat::ConfigError::PublicIps))
    );
    // Both families side by side are fine.
    assert!(Endpoint::new(vec![rule(1, proto::TCP), rule6(1, proto::TCP)]).is_ok());
    assert_eq!(
        Endpoint::new(vec![rule(1, proto::ICMP)]).err(),
        Some(EndpointError::Protocol(0))
    );
    assert_eq!(
        Endpoint::new(vec![rule(1, proto::TCP), rule(1, proto::TCP)]).err(),
        Some(EndpointError::Duplicate(1))
    );
    let mut other = rule(2, proto::TCP);
    other.pool = other.pool.with_max_mappings(7);
    assert_eq!(
        Endpoint::new(vec![rule(1, proto::TCP), other]).err(),
        Some(EndpointError::PoolOverlap(1))
    );
}

// ---- IPv6 ------------------------------------------------------------------------------

const CONSUMER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const ENDPOINT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc8];
const SERVICE6: [u8; 16] = [0xfd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const POOL6: [u8; 16] = [0xfd, 9, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn pool6() -> AllocatorConfig {
    AllocatorConfig::new(
        Profile::Hyperplane,
        vec![core::net::Ipv6Addr::from(POOL6).into()],
        *b"endpoint secret!",
    )
    .with_max_mappings(1024)
}

/// The IPv6 endpoint [fd00::c8]:443 in `consumer_zone` to the service [fd09::1]:8443 in
/// zone 200.
fn rule6(consumer_zone: u32, proto: u8) -> EndpointRule {
    EndpointRule::new(
        proto,
        EndpointSide::new(ZoneId(consumer_zone), "[fd00::c8]:443".parse().unwrap()),
        EndpointSide::new(ZoneId(200), "[fd09::1]:8443".parse().unwrap()),
        pool6(),
    )
}

#[test]
fn ipv6_consumer_reaches_the_service_from_the_providers_own_space_and_back() {
    let mut p = Pipe::new(vec![rule6(100, proto::TCP), rule(100, proto::TCP)]);
    let syn = p.send(100, &tcp6(CONSUMER6, ENDPOINT6, 40000, 443, SYN));
    assert_eq!((syn.verdict, syn.zone), (Verdict::Pass, ZoneId(200)));
    assert_eq!((src6(&syn.frame), dst6(&syn.frame)), (POOL6, SERVICE6));
    let (sport, dport) = ports(&syn.frame);
    assert_eq!(dport, 8443);
    assert!(sport >= 1024);
    verify_frame(&syn.frame);

    let syn_ack = p.send(200, &tcp6(SERVICE6, POOL6, 8443, sport, SYN_ACK));
    assert_eq!(syn_ack.verdict, Verdict::Pass);
    assert_eq!(
        (syn_ack.direction, syn_ack.zone),
        (Direction::Reply, ZoneId(100))
    );
    assert_eq!(
        (src6(&syn_ack.frame), dst6(&syn_ack.frame)),
        (ENDPOINT6, CONSUMER6)
    );
    assert_eq!(ports(&syn_ack.frame), (443, 40000));
    verify_frame(&syn_ack.frame);

    for _ in 0..3 {
        let ack = p.send(100, &tcp6(CONSUMER6, ENDPOINT6, 40000, 443, ACK));
        assert_eq!((ack.verdict, ack.zone), (Verdict::Pass, ZoneId(200)));
        assert_eq!(ports(&ack.frame), (sport, 8443));
        verify_frame(&ack.frame);
    }
    // The IPv4 endpoint of the same consumer zone still works beside it.
    let four = p.send(100, &tcp4(CONSUMER, ENDPOINT, 40000, 443, SYN));
    assert_eq!((src4(&four.frame), dst4(&four.frame)), (POOL, SERVICE));
    let ct = &p.pipe.second;
    assert_eq!(ct.len(), 2);
    let s = ct.lookup(&nf_core::FlowKey::v6(
        ZoneId(200),
        SERVICE6,
        POOL6,
        proto::TCP,
        8443,
        sport,
    ));
    let info = ct.info(s.unwrap().session).unwrap();
    assert_eq!(
        (info.original.zone, info.reply.zone),
        (ZoneId(100), ZoneId(200))
    );
    assert_eq!(p.counter("flows_translated"), 2);
    assert_eq!(p.counter("packets_to_provider"), 5);
    assert_eq!(p.counter("packets_to_consumer"), 1);
}

#[test]
fn ipv6_overlapping_consumers_get_distinct_provider_tuples_and_their_own_replies() {
    let mut p = Pipe::new(vec![rule6(100, proto::UDP), rule6(101, proto::UDP)]);
    let mut seen = Vec::new();
    for zone in [100, 101] {
        let out = p.send(zone, &udp6(CONSUMER6, ENDPOINT6, 5000, 443));
        assert_eq!((out.verdict, out.zone), (Verdict::Pass, ZoneId(200)));
        verify_frame(&out.frame);
        seen.push((src6(&out.frame), ports(&out.frame).0));
    }
    assert_ne!(seen[0], seen[1]);
    for (zone, (addr, port)) in [100, 101].into_iter().zip(seen.clone()) {
        let back = p.send(200, &udp6(SERVICE6, addr, 8443, port));
        assert_eq!((back.verdict, back.zone), (Verdict::Pass, ZoneId(zone)));
        assert_eq!(
            (src6(&back.frame), dst6(&back.frame)),
            (ENDPOINT6, CONSUMER6)
        );
        assert_eq!(ports(&back.frame), (443, 5000));
        verify_frame(&back.frame);
    }
    assert_eq!(p.endpoint().ports(0).unwrap().len(), 2);
}

#[test]
fn ipv6_a_third_zone_with_the_same_tuples_finds_nothing() {
    let mut p = Pipe::new(vec![rule6(100, proto::UDP)]);
    let out = p.send(100, &udp6(CONSUMER6, ENDPOINT6, 5000, 443));
    let (addr, port) = (src6(&out.frame), ports(&out.frame).0);
    let reply = udp6(SERVICE6, addr, 8443, port);
    for zone in [300, 100] {
        let o = p.send(zone, &reply);
        assert_eq!((o.verdict, o.zone), (Verdict::Pass, ZoneId(zone)));
        assert_eq!(o.frame, reply, "untranslated");
        assert_eq!(o.direction, Direction::Original);
    }
    let o = p.send(300, &udp6(CONSUMER6, ENDPOINT6, 5000, 443));
    assert_eq!((o.zone, src6(&o.frame)), (ZoneId(300), CONSUMER6));
    assert_eq!(p.counter("flows_unmatched"), 3);
    let o = p.send(200, &udp6(SERVICE6, POOL6, 8443, port.wrapping_add(1)));
    assert_eq!(o.verdict, Verdict::Drop(DropReason::NatNoMapping));
    assert_eq!(p.counter("no_mapping"), 1);
}

#[test]
fn ipv6_icmp_errors_are_translated_both_ways_and_change_zones() {
    let mut p = Pipe::new(vec![rule6(100, proto::UDP)]);
    let out = p.send(100, &udp6(CONSUMER6, ENDPOINT6, 5000, 443));
    let (pool_addr, pool_port) = (src6(&out.frame), ports(&out.frame).0);
    let router = [0xfd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];
    // A router in the provider's space rejects the translated packet (ICMPv6).
    let err = p.send(200, &unreachable6(router, pool_addr, &out.frame));
    assert_eq!(err.verdict, Verdict::Pass);
    assert_eq!((err.zone, err.direction), (ZoneId(100), Direction::Reply));
    assert_eq!((src6(&err.frame), dst6(&err.frame)), (ENDPOINT6, CONSUMER6));
    verify_frame(&err.frame);
    let quote = &common::ip(&err.frame)[48..];
    assert_eq!(
        (&quote[8..24], &quote[24..40]),
        (&CONSUMER6[..], &ENDPOINT6[..])
    );
    assert_eq!(
        (common::be16(&quote[40..]), common::be16(&quote[42..])),
        (5000, 443)
    );
    // The consumer rejects a reply it got from the endpoint.
    let back = p.send(200, &udp6(SERVICE6, pool_addr, 8443, pool_port));
    let err = p.send(100, &unreachable6(CONSUMER6, ENDPOINT6, &back.frame));
    assert_eq!(err.verdict, Verdict::Pass);
    assert_eq!(
        (err.zone, err.direction),
        (ZoneId(200), Direction::Original)
    );
    assert_eq!((src6(&err.frame), dst6(&err.frame)), (pool_addr, SERVICE6));
    verify_frame(&err.frame);
    let quote = &common::ip(&err.frame)[48..];
    assert_eq!(
        (&quote[8..24], &quote[24..40]),
        (&SERVICE6[..], &pool_addr[..])
    );
    assert_eq!(
        (common::be16(&quote[40..]), common::be16(&quote[42..])),
        (8443, pool_port)
    );
    assert_eq!(p.counter("icmp_errors_translated"), 2);
}

/// The end of an IPv6 session returns its pool port and its slot in the consumer store:
/// with a pool of 8 mappings (and so 8 store slots), rounds of 8 consumers keep working.
#[test]
fn ipv6_the_end_of_a_session_returns_its_pool_port_and_store_slot() {
    let mut r = rule6(100, proto::UDP);
    r.pool = r
        .pool
        .with_max_mappings(8)
        .with_quarantine(Duration::from_secs(1));
    let mut p = Pipe::new(vec![r]);
    for round in 0..3u16 {
        for i in 0..8u16 {
            let out = p.send(
                100,
                &udp6(CONSUMER6, ENDPOINT6, 5000 + 100 * round + i, 443),
            );
            assert_eq!(out.verdict, Verdict::Pass, "round {round}, consumer {i}");
            let back = p.send(
                200,
                &udp6(SERVICE6, src6(&out.frame), 8443, ports(&out.frame).0),
            );
            assert_eq!(dst6(&back.frame), CONSUMER6);
            assert_eq!(ports(&back.frame).1, 5000 + 100 * round + i);
        }
        // A ninth consumer while eight are live: no pool port left.
        let out = p.send(100, &udp6(CONSUMER6, ENDPOINT6, 9999, 443));
        assert!(matches!(out.verdict, Verdict::Drop(_)));
        // The sessions expire, then their ports leave quarantine.
        for secs in [600, 2] {
            p.now += Duration::from_secs(secs);
            while p.pipe.poll_timeout().is_some_and(|t| t <= p.now) {
                p.pipe.handle_timeout(p.now, 1024);
            }
        }
        assert!(p.pipe.second.is_empty());
        let ports = p.endpoint().ports(0).unwrap();
        assert_eq!((ports.len(), ports.quarantined()), (0, 0));
    }
    assert_eq!(p.counter("flows_translated"), 24);
    assert_eq!(p.counter("flows_refused"), 3);
}

/// The rules of the move tests: TCP and UDP endpoints for consumer zones 100 and 101 (the
/// same addresses in both, one shared pool per protocol), an IPv6 UDP endpoint in zone 100.
fn move_rules() -> Vec<EndpointRule> {
    vec![
        rule(100, proto::TCP),
        rule(101, proto::TCP),
        rule(100, proto::UDP),
        rule(101, proto::UDP),
        rule6(100, proto::UDP),
    ]
}

/// Flow `i` of the move tests: (consumer zone, frame from the consumer).
fn move_flow(i: u16) -> (u32, Vec<u8>) {
    let (zone, sp) = (100 + u32::from(i % 2), 30_000 + i);
    match i % 3 {
        0 => (zone, tcp4(CONSUMER, ENDPOINT, sp, 443, SYN)),
        1 => (zone, udp4(CONSUMER, ENDPOINT, sp, 443)),
        _ => (100, udp6(CONSUMER6, ENDPOINT6, sp, 443)),
    }
}

/// The provider's answer to what left for flow `i` as `out`.
fn move_answer(i: u16, out: &Out) -> Vec<u8> {
    let pp = ports(&out.frame).0;
    match i % 3 {
        0 => tcp4(SERVICE, POOL, 8443, pp, SYN_ACK),
        1 => udp4(SERVICE, POOL, 8443, pp),
        _ => udp6(SERVICE6, POOL6, 8443, pp),
    }
}

/// Opens the move tests' 60 flows at `p`; what left for each.
fn open_flows(p: &mut Pipe) -> Vec<Out> {
    (0..60u16)
        .map(|i| {
            let (zone, f) = move_flow(i);
            let out = p.send(zone, &f);
            assert_eq!(
                (out.verdict, out.zone),
                (Verdict::Pass, ZoneId(200)),
                "flow {i}"
            );
            out
        })
        .collect()
}

/// At `b`, every flow of `first` (opened elsewhere) is answered back to its consumer, in its
/// zone, and the consumer's next packets leave on the same pool port.
fn carries_on(b: &mut Pipe, first: &[Out]) {
    for (i, out) in (0..60u16).zip(first) {
        let (zone, f) = move_flow(i);
        let back = b.send(200, &move_answer(i, out));
        assert_eq!(back.verdict, Verdict::Pass, "answer {i}");
        assert_eq!(
            (back.direction, back.zone),
            (Direction::Reply, ZoneId(zone))
        );
        assert_eq!(ports(&back.frame), (443, 30_000 + i));
        match i % 3 {
            2 => assert_eq!(dst6(&back.frame), CONSUMER6),
            _ => assert_eq!(dst4(&back.frame), CONSUMER),
        }
        verify_frame(&back.frame);
        let again = b.send(zone, &f);
        assert_eq!(again.verdict, Verdict::Pass);
        assert_eq!(
            ports(&again.frame),
            ports(&out.frame),
            "flow {i} keeps its port"
        );
    }
}

/// Endpoint sessions move to another node with the same rules (`Conntrack::export` /
/// `import`): the provider's answers reach the consumers there, in their zones, the
/// consumers' packets keep their pool ports, new flows never get an imported port, the
/// same sessions again are declined, and every imported session gives its port back at
/// its end. A node whose pool differs declines them all.
#[test]
fn sessions_move_to_another_node_with_their_pool_ports() {
    let mut a = Pipe::new(move_rules());
    let first = open_flows(&mut a);
    let mut b = Pipe::new(move_rules());
    let mut imported = 0;
    for c in export_sessions(&a.pipe.second, a.now) {
        let r = b.pipe.second.import(b.now, &c).unwrap();
        assert_eq!((r.refused, r.skipped), (0, 0));
        imported += r.imported;
    }
    assert_eq!(imported, 60);
    assert_eq!(b.counter("flows_imported"), 60);
    carries_on(&mut b, &first);
    assert_eq!(b.counter("flows_translated"), 0);
    // New flows from other consumer ports take other pool ports.
    let taken: Vec<u16> = first.iter().map(|o| ports(&o.frame).0).collect();
    for i in 0..30u16 {
        let out = b.send(100, &udp4(CONSUMER, ENDPOINT, 50_000 + i, 443));
        assert_eq!(out.verdict, Verdict::Pass);
        assert!(!taken.contains(&ports(&out.frame).0), "a port given twice");
    }
    // The same sessions again: each key is there already.
    for c in export_sessions(&a.pipe.second, a.now) {
        assert_eq!(b.pipe.second.import(b.now, &c).unwrap().imported, 0);
    }
    assert_eq!(b.counter("flows_imported"), 60);
    // Imported sessions end like the others, their ports back in the pools.
    b.advance(24 * 3600);
    assert!(b.pipe.second.is_empty());
    for rule in [0, 2, 4] {
        assert_eq!(b.endpoint().ports(rule).unwrap().len(), 0, "rule {rule}");
    }

    // Another pool address: no session can keep its tuple there.
    let mut other = move_rules();
    for r in &mut other {
        let ip = if r.pool.public_ips[0].is_ipv4() {
            "10.9.255.2".parse().unwrap()
        } else {
            "fd09:ffff::2".parse().unwrap()
        };
        r.pool = AllocatorConfig::new(Profile::Hyperplane, vec![ip], *b"endpoint secret!");
    }
    let mut c = Pipe::new(other);
    let mut refused = 0;
    for chunk in export_sessions(&a.pipe.second, a.now) {
        let r = c.pipe.second.import(c.now, &chunk).unwrap();
        assert_eq!(r.imported, 0);
        refused += r.refused;
    }
    assert_eq!(refused, 60);
    assert!(c.pipe.second.is_empty());
}

/// A replica kept by the primary's change journal (`export_changes` / `apply`) carries the
/// sessions on when the primary is gone, and hears of their ends.
#[test]
fn a_replica_carries_the_sessions_on() {
    let mut a = Pipe::new(move_rules());
    let mut b = Pipe::new(move_rules());
    let first = open_flows(&mut a);
    let r = replicate(&mut a.pipe.second, a.now, &mut b.pipe.second, b.now);
    assert_eq!((r.created, r.refused), (60, 0));
    assert_eq!(b.counter("flows_imported"), 60);
    carries_on(&mut b, &first);
    // The primary's sessions end: so do the copies, their ports quarantined.
    a.advance(24 * 3600);
    let r = replicate(&mut a.pipe.second, a.now, &mut b.pipe.second, b.now);
    assert_eq!(r.ended, 60);
    assert!(b.pipe.second.is_empty());
    assert_eq!(b.endpoint().ports(2).unwrap().len(), 0);
}

/// Two nodes splitting every pool's ports ([`nf_nat::Owner`]): node 1 declines node 0's
/// sessions until it takes over node 0's share, then carries them on; its own new flows
/// still get ports of its own share only.
#[test]
fn another_nodes_share_is_taken_over_before_its_sessions() {
    let node = |n: u32| {
        let rules: Vec<EndpointRule> = move_rules()
            .into_iter()
            .map(|mut r| {
                r.pool = r.pool.with_owner(nf_nat::Owner {
                    nodes: 2,
                    cores: 1,
                    node: n,
                    core: 0,
                });
                r
            })
            .collect();
        Pipe::new(rules)
    };
    let (mut a, mut b) = (node(0), node(1));
    let first = open_flows(&mut a);
    let split = nf_nat::PortSplit { nodes: 2, cores: 1 };
    for o in &first {
        assert_eq!(nf_nat::owner_of(ports(&o.frame).0, split).node, 0);
    }
    let refused: usize = export_sessions(&a.pipe.second, a.now)
        .iter()
        .map(|c| b.pipe.second.import(b.now, c).unwrap().refused)
        .sum();
    assert_eq!(refused, 60);
    assert_eq!(
        b.pipe.second.service_mut().take_over(1),
        Err(nf_nat::ConfigError::Owner)
    );
    b.pipe.second.service_mut().take_over(0).unwrap();
    let imported: usize = export_sessions(&a.pipe.second, a.now)
        .iter()
        .map(|c| b.pipe.second.import(b.now, c).unwrap().imported)
        .sum();
    assert_eq!(imported, 60);
    carries_on(&mut b, &first);
    for i in 0..20u16 {
        let out = b.send(100, &udp4(CONSUMER, ENDPOINT, 50_000 + i, 443));
        assert_eq!(nf_nat::owner_of(ports(&out.frame).0, split).node, 1);
    }
}
