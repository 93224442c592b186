//! The LB stage (`Conntrack<Lb>`) end to end: DNAT round trips with every rewritten frame
//! re-parsed by etherparse and its checksums recomputed there, encapsulation metadata,
//! swaps that keep established flows, drains, down backends, and the stateless fallback.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

use core::net::IpAddr;
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_core::wire::Frame;
use nf_core::{
    Batch, DropReason, Instant, NO_NEXT_HOP, Packet, ParseStage, Stage, StageControl, StageExt,
    Verdict, flow::proto,
};
use nf_lb::{
    BackendId, Forwarding, HashFields, Health, Lb, LbKey, Listener, ListenerError, ListenerMatch,
    Listeners, NewFlowLimit, OnDown, Pool, PoolMember, Selection,
};

const VIP4: [u8; 4] = [192, 0, 2, 1];
const VIP6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const CLIENT4: [u8; 4] = [198, 51, 100, 7];
const CLIENT6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

fn key() -> LbKey {
    LbKey::new(*b"operator secret!")
}

fn backends4(n: u8) -> Pool {
    Pool::new((1..=n).map(|i| PoolMember::new(BackendId::v4([10, 0, 1, i], 8080), 1)))
}

fn backend6(i: u8) -> [u8; 16] {
    let mut a = [0x20, 1, 0xd, 0xb8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[15] = i;
    a
}

fn listener(on: ListenerMatch, pool: Pool) -> Listener {
    Listener::new(&key(), on, HashFields::FiveTuple, pool, 251).unwrap()
}

fn web4() -> ListenerMatch {
    ListenerMatch::Port {
        vip: VIP4.into(),
        port: 80,
        proto: proto::TCP,
    }
}

fn dns4() -> ListenerMatch {
    ListenerMatch::Port {
        vip: VIP4.into(),
        port: 53,
        proto: proto::UDP,
    }
}

type Pipeline = nf_core::Chain<ParseStage, Conntrack<Lb>>;

fn pipeline(lb: Lb, sessions: u32) -> Pipeline {
    let mut cfg = ConntrackConfig::new(*b"conntrack secret").sizes(Sizes {
        v4: sessions,
        v6: sessions,
    });
    // A full table refuses rather than evicting a half-open session.
    cfg.v4.early_drop = false;
    cfg.v6.early_drop = false;
    ParseStage::default().then(Conntrack::new(cfg, lb).unwrap())
}

fn run(p: &mut Pipeline, frames: &[Vec<u8>]) -> Vec<Packet<Vec<u8>>> {
    let mut batch = Batch::new();
    for f in frames {
        batch.push(Packet::with_headroom(f, 64)).ok().unwrap();
    }
    p.process(Instant::from_nanos(1_000_000_000), &mut batch);
    batch.drain().collect()
}

/// Addresses and ports, by etherparse, after checking every checksum with it.
fn reparse(frame: &[u8]) -> (IpAddr, IpAddr, u16, u16) {
    let h = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let payload = h.payload.slice();
    let t = h.transport.unwrap();
    let (sp, dp, stored) = match &t {
        TransportHeader::Tcp(t) => (t.source_port, t.destination_port, t.checksum),
        TransportHeader::Udp(u) => (u.source_port, u.destination_port, u.checksum),
        _ => unreachable!(),
    };
    let (src, dst, computed) = match (h.net.unwrap(), t) {
        (NetHeaders::Ipv4(ip, _), t) => {
            assert_eq!(
                ip.calc_header_checksum(),
                ip.header_checksum,
                "IPv4 header checksum"
            );
            let c = match t {
                TransportHeader::Tcp(t) => t.calc_checksum_ipv4(&ip, payload),
                TransportHeader::Udp(u) => u.calc_checksum_ipv4(&ip, payload),
                _ => unreachable!(),
            };
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), c)
        }
        (NetHeaders::Ipv6(ip, _), t) => {
            let c = match t {
                TransportHeader::Tcp(t) => t.calc_checksum_ipv6(&ip, payload),
                TransportHeader::Udp(u) => u.calc_checksum_ipv6(&ip, payload),
                _ => unreachable!(),
            };
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), c)
        }
        _ => unreachable!(),
    };
    assert_eq!(
        computed.unwrap(),
        stored,
        "transport checksum of {frame:02x?}"
    );
    (src, dst, sp, dp)
}

#[test]
fn dnat_round_trip_ipv4_tcp_and_udp() {
    let udp_on = dns4();
    let lb = Lb::new(
        Listeners::new(vec![
            listener(web4(), backends4(3)),
            listener(udp_on, backends4(3)),
        ])
        .unwrap(),
    );
    let mut p = pipeline(lb, 1024);
    for (sport, payload) in [(40_000u16, &b""[..]), (40_001, b"hello"), (40_002, b"odd")] {
        let syn = Frame::ipv4(CLIENT4, VIP4)
            .tcp(sport, 80, 0x02)
            .payload(payload)
            .to_vec()
            .unwrap();
        let q = Frame::ipv4(CLIENT4, VIP4)
            .udp(sport, 53)
            .payload(payload)
            .to_vec()
            .unwrap();
        let out = run(&mut p, &[syn, q]);
        for (i, pkt) in out.iter().enumerate() {
            assert_eq!(pkt.meta.verdict, Verdict::Pass);
            let (src, dst, sp, dp) = reparse(pkt.data());
            // Client kept, destination now a backend on 8080.
            assert_eq!(src, IpAddr::from(CLIENT4));
            assert_eq!(sp, sport);
            assert_eq!(dp, 8080);
            let IpAddr::V4(d) = dst else { panic!() };
            assert_eq!(d.octets()[..3], [10, 0, 1]);
            // The backend answers the client: un-NATed back to the VIP.
            let b = d.octets();
            let reply = if i == 0 {
                Frame::ipv4(b, CLIENT4)
                    .tcp(8080, sport, 0x12)
                    .payload(payload)
            } else {
                Frame::ipv4(b, CLIENT4).udp(8080, sport).payload(payload)
            };
            let back = run(&mut p, &[reply.to_vec().unwrap()]);
            assert_eq!(back[0].meta.verdict, Verdict::Pass);
            assert_eq!(back[0].meta.direction, nf_core::Direction::Reply);
            let (src, dst, sp, dp) = reparse(back[0].data());
            assert_eq!((src, dst), (IpAddr::from(VIP4), IpAddr::from(CLIENT4)));
            assert_eq!((sp, dp), (if i == 0 { 80 } else { 53 }, sport));
        }
    }
}

#[test]
fn dnat_round_trip_ipv6_and_port_keeping_vip_listener() {
    // A whole-VIP listener whose backends keep the destination port (port 0).
    let pool = Pool::new((1..=2).map(|i| PoolMember::new(BackendId::v6(backend6(i), 0), 1)));
    let lb =
        Lb::new(Listeners::new(vec![listener(ListenerMatch::Vip(VIP6.into()), pool)]).unwrap());
    let mut p = pipeline(lb, 1024);
    for (i, sport) in (50_000u16..50_006).enumerate() {
        let f = if i % 2 == 0 {
            Frame::ipv6(CLIENT6, VIP6)
                .tcp(sport, 443, 0x02)
                .payload(b"abc")
        } else {
            Frame::ipv6(CLIENT6, VIP6).udp(sport, 443).payload(b"abcd")
        };
        let out = run(&mut p, &[f.to_vec().unwrap()]);
        assert_eq!(out[0].meta.verdict, Verdict::Pass);
        let (src, dst, sp, dp) = reparse(out[0].data());
        assert_eq!((src, sp, dp), (IpAddr::from(CLIENT6), sport, 443));
        let IpAddr::V6(d) = dst else { panic!() };
        assert_eq!(d.octets()[..15], backend6(0)[..15]);
        let r = if i % 2 == 0 {
            Frame::ipv6(d.octets(), CLIENT6).tcp(443, sport, 0x12)
        } else {
            Frame::ipv6(d.octets(), CLIENT6).udp(443, sport)
        };
        let back = run(&mut p, &[r.to_vec().unwrap()]);
        let (src, dst, sp, dp) = reparse(back[0].data());
        assert_eq!(
            (src, dst, sp, dp),
            (IpAddr::from(VIP6), IpAddr::from(CLIENT6), 443, sport)
        );
    }
}

#[test]
fn encap_writes_the_next_hop_and_leaves_the_packet() {
    let pool = Pool::new((1..=4u8).map(|i| {
        PoolMember::new(BackendId::v4([10, 0, 2, i], 0), 1).with_next_hop(u32::from(i) * 10)
    }));
    let l = listener(web4(), pool).with_forwarding(Forwarding::Encap);
    let mut p = pipeline(Lb::new(Listeners::new(vec![l]).unwrap()), 1024);
    let f = Frame::ipv4(CLIENT4, VIP4)
        .tcp(40_000, 80, 0x02)
        .to_vec()
        .unwrap();
    let out = run(&mut p, core::slice::from_ref(&f));
    assert_eq!(out[0].data(), &f[..]);
    assert!([10, 20, 30, 40].contains(&out[0].meta.next_hop));
    // Unmatched flows are left alone.
    let other = Frame::ipv4(CLIENT4, [192, 0, 2, 9])
        .udp(1, 2)
        .to_vec()
        .unwrap();
    let out2 = run(&mut p, &[other]);
    assert_eq!(out2[0].meta.next_hop, NO_NEXT_HOP);
    let lb = p.second.service();
    assert_eq!((lb.counters().new_flows, lb.counters().no_listener), (1, 1));
}

#[test]
fn dnat_listeners_are_checked() {
    let pool = Pool::new([PoolMember::new(BackendId::new(b"opaque").unwrap(), 1)]);
    assert!(matches!(
        Listeners::new(vec![listener(web4(), pool.clone())]),
        Err(ListenerError::NotAnAddress(_))
    ));
    let v6 = Pool::new([PoolMember::new(BackendId::v6(backend6(1), 80), 1)]);
    assert!(Listeners::new(vec![listener(web4(), v6)]).is_err());
    // Encapsulation takes any identity.
    assert!(
        Listeners::new(vec![
            listener(web4(), pool).with_forwarding(Forwarding::Encap)
        ])
        .is_ok()
    );
}

/// The backend address a DNAT'd packet went to.
fn dst_of(pkt: &Packet<Vec<u8>>) -> [u8; 4] {
    let l3 = usize::from(pkt.meta.l3);
    pkt.data()[l3 + 16..l3 + 20].try_into().unwrap()
}

fn syn(sport: u16) -> Vec<u8> {
    Frame::ipv4(CLIENT4, VIP4)
        .tcp(sport, 80, 0x02)
        .to_vec()
        .unwrap()
}

fn ack(sport: u16) -> Vec<u8> {
    Frame::ipv4(CLIENT4, VIP4)
        .tcp(sport, 80, 0x10)
        .to_vec()
        .unwrap()
}

/// Opens a flow from each client port in `ports` (a SYN each) and returns the backend each
/// went to.
fn open(p: &mut Pipeline, ports: &[u16]) -> Vec<[u8; 4]> {
    ports
        .iter()
        .map(|&s| dst_of(&run(p, &[syn(s)])[0]))
        .collect()
}

/// Sends an ACK of every flow (`ports`, first sent to `first`) after a swap: the flows of
/// the backend `gone` are reset ([`DropReason::LbBackendDown`]), every other stays where it
/// was. Returns the resets (at least one).
fn established_stay_unless_gone(
    p: &mut Pipeline,
    ports: &[u16],
    first: &[[u8; 4]],
    gone: [u8; 4],
) -> u64 {
    let mut reset = 0;
    for (&s, &was) in ports.iter().zip(first) {
        let out = &run(p, &[ack(s)])[0];
        if was == gone {
            assert_eq!(out.meta.verdict, Verdict::Drop(DropReason::LbBackendDown));
            reset += 1;
        } else {
            assert_eq!(out.meta.verdict, Verdict::Pass);
            assert_eq!(dst_of(out), was, "established flow {s} moved");
        }
    }
    assert!(reset > 0);
    reset
}

#[test]
fn swaps_keep_flows_drain_keeps_down_resets() {
    let mut p = pipeline(
        Lb::new(Listeners::new(vec![listener(web4(), backends4(4))]).unwrap()),
        4096,
    );
    let ports: Vec<u16> = (1000..1400).collect();
    let first = open(&mut p, &ports);
    // Drain 10.0.1.1, remove 10.0.1.2, add 10.0.1.9 with weight 5.
    let mut pool = backends4(4);
    pool.set_health(&BackendId::v4([10, 0, 1, 1], 8080), Health::Draining);
    pool.remove(&BackendId::v4([10, 0, 1, 2], 8080));
    pool.add(PoolMember::new(BackendId::v4([10, 0, 1, 9], 8080), 5));
    p.second
        .service_mut()
        .set_listeners(Listeners::new(vec![listener(web4(), pool)]).unwrap());
    let reset = established_stay_unless_gone(&mut p, &ports, &first, [10, 0, 1, 2]);
    let lb = p.second.service();
    assert_eq!(lb.counters().reset, reset);
    // New flows avoid the drained and removed backends.
    for s in 2000..2400 {
        let d = dst_of(&run(&mut p, &[syn(s)])[0]);
        assert!(d != [10, 0, 1, 1] && d != [10, 0, 1, 2]);
    }
    let mut c = Vec::new();
    p.visit_counters(&mut |stage, name, v| c.push((stage, name, v)));
    assert!(c.contains(&("lb", "reset", reset)));
}

/// With RSTs asked for, a TCP segment of a flow whose backend left is answered in place by
/// the RST from the VIP to the client, sent on the given port; other flows are untouched.
#[test]
fn reset_flows_get_a_rst_from_the_vip_when_asked() {
    let lb = Lb::new(Listeners::new(vec![listener(web4(), backends4(4))]).unwrap())
        .with_tcp_resets(nf_core::PortId(3));
    let mut p = pipeline(lb, 4096);
    let ports: Vec<u16> = (1000..1200).collect();
    let first = open(&mut p, &ports);
    let mut pool = backends4(4);
    pool.remove(&BackendId::v4([10, 0, 1, 2], 8080));
    p.second
        .service_mut()
        .set_listeners(Listeners::new(vec![listener(web4(), pool)]).unwrap());
    let mut sent = 0;
    for (&s, &was) in ports.iter().zip(&first) {
        let mut seg = Frame::ipv4(CLIENT4, VIP4);
        seg.transport = nf_core::wire::TransportRepr::Tcp(nf_core::wire::tcp::TcpRepr {
            src_port: s,
            dst_port: 80,
            seq: 1000,
            ack: 77_000 + u32::from(s),
            flags: 0x10,
            window: 512,
            ..Default::default()
        });
        let seg = seg.to_vec().unwrap();
        let out = &run(&mut p, &[seg])[0];
        if was != [10, 0, 1, 2] {
            assert_eq!(out.meta.verdict, Verdict::Pass);
            assert_eq!(dst_of(out), was);
            continue;
        }
        assert_eq!(out.meta.verdict, Verdict::Tx(nf_core::PortId(3)));
        let (src, dst, sp, dp) = reparse(out.data());
        assert_eq!((src, sp), (IpAddr::from(VIP4), 80));
        assert_eq!((dst, dp), (IpAddr::from(CLIENT4), s));
        let h = PacketHeaders::from_ethernet_slice(out.data()).unwrap();
        let Some(TransportHeader::Tcp(t)) = h.transport else {
            panic!("not TCP");
        };
        assert!(t.rst && !t.syn && !t.fin);
        assert_eq!(
            t.sequence_number,
            77_000 + u32::from(s),
            "RST's seq is the ACK's ack"
        );
        sent += 1;
    }
    assert!(sent > 0);
    let c = p.second.service().counters();
    assert_eq!((c.reset, c.resets_sent), (sent, sent));
    // A UDP flow of a down backend is still dropped (nothing to reset).
    let lb = Lb::new(Listeners::new(vec![listener(dns4(), backends4(2))]).unwrap())
        .with_tcp_resets(nf_core::PortId(3));
    let mut p = pipeline(lb, 64);
    let q = |s: u16| Frame::ipv4(CLIENT4, VIP4).udp(s, 53).to_vec().unwrap();
    let to = dst_of(&run(&mut p, &[q(9)])[0]);
    let mut pool = backends4(2);
    pool.remove(&BackendId::v4(to, 8080));
    p.second
        .service_mut()
        .set_listeners(Listeners::new(vec![listener(dns4(), pool)]).unwrap());
    let out = &run(&mut p, &[q(9)])[0];
    assert_eq!(out.meta.verdict, Verdict::Drop(DropReason::LbBackendDown));
    assert_eq!(p.second.service().counters().resets_sent, 0);
}

/// A rendezvous listener: new flows go where the rendezvous set of its pool says; when a
/// backend leaves, its established flows are reset and every other flow stays, and new flows
/// move only if the departed backend was theirs (exactly minimal disruption).
#[test]
fn rendezvous_listeners_move_only_the_departed_backends_flows() {
    let rendezvous = |pool: Pool| {
        Listener::with_selection(
            &key(),
            web4(),
            HashFields::FiveTuple,
            pool,
            Selection::Rendezvous,
        )
        .unwrap()
    };
    let mut p = pipeline(
        Lb::new(Listeners::new(vec![rendezvous(backends4(4))]).unwrap()),
        4096,
    );
    let reference = backends4(4).rendezvous(&key()).unwrap();
    let flow = |s: u16| nf_core::FlowKey::v4(nf_core::ZoneId(0), CLIENT4, VIP4, proto::TCP, s, 80);
    let l = &p.second.service().listeners().listeners()[0];
    assert_eq!(l.selection(), Selection::Rendezvous);
    let ports: Vec<u16> = (1000..1400).collect();
    let first = open(&mut p, &ports);
    for (&s, d) in ports.iter().zip(&first) {
        let b = reference.backend(reference.flow_hash(&flow(s))).unwrap();
        assert_eq!(&b.id.as_bytes()[1..5], d, "flow {s}");
    }
    // 10.0.1.3 leaves.
    let mut pool = backends4(4);
    pool.remove(&BackendId::v4([10, 0, 1, 3], 8080));
    let after = pool.rendezvous(&key()).unwrap();
    p.second
        .service_mut()
        .set_listeners(Listeners::new(vec![rendezvous(pool)]).unwrap());
    established_stay_unless_gone(&mut p, &ports, &first, [10, 0, 1, 3]);
    // New flows: those the departed backend would have had move, no other.
    let mut moved = 0;
    for s in 2000..2400u16 {
        let d = dst_of(&run(&mut p, &[syn(s)])[0]);
        let was = reference.backend(reference.flow_hash(&flow(s))).unwrap();
        let now = after.backend(after.flow_hash(&flow(s))).unwrap();
        assert_eq!(&now.id.as_bytes()[1..5], &d, "new flow {s}");
        if was.id != now.id {
            assert_eq!(
                was.id,
                BackendId::v4([10, 0, 1, 3], 8080),
                "new flow {s} moved"
            );
            moved += 1;
        }
    }
    assert!(moved > 0);
    // A pool too large for rendezvous is refused.
    let big = Pool::new((0..=nf_lb::MAX_RENDEZVOUS_BACKENDS).map(|i| {
        let [_, _, a, b] = (i as u32).to_be_bytes();
        PoolMember::new(BackendId::v4([10, 1, a, b], 80), 1)
    }));
    assert!(matches!(
        Listener::with_selection(
            &key(),
            web4(),
            HashFields::FiveTuple,
            big,
            Selection::Rendezvous
        ),
        Err(nf_lb::BuildError::TooManyBackends { .. })
    ));
}

#[test]
fn down_backends_rehash_under_encap() {
    let pool = |down: bool| {
        Pool::new((1..=4u8).map(|i| {
            let m = PoolMember::new(BackendId::v4([10, 0, 2, i], 0), 1).with_next_hop(u32::from(i));
            if down && i == 3 {
                m.with_health(Health::Down)
            } else {
                m
            }
        }))
    };
    let l = |down| {
        listener(web4(), pool(down))
            .with_forwarding(Forwarding::Encap)
            .with_on_down(OnDown::Rehash)
    };
    let mut p = pipeline(Lb::new(Listeners::new(vec![l(false)]).unwrap()), 4096);
    let ports: Vec<u16> = (1000..1400).collect();
    let first: Vec<u32> = ports
        .iter()
        .map(|&s| run(&mut p, &[syn(s)])[0].meta.next_hop)
        .collect();
    let on3 = first.iter().filter(|&&h| h == 3).count() as u64;
    assert!(on3 > 0);
    p.second
        .service_mut()
        .set_listeners(Listeners::new(vec![l(true)]).unwrap());
    for _ in 0..2 {
        for (&s, &was) in ports.iter().zip(&first) {
            let out = &run(&mut p, &[ack(s)])[0];
            assert_eq!(out.meta.verdict, Verdict::Pass);
            if was == 3 {
                assert_ne!(out.meta.next_hop, 3);
            } else {
                assert_eq!(out.meta.next_hop, was);
            }
        }
    }
    // Counted once per flow, on its first packet after the change.
    assert_eq!(p.second.service().counters().rehashed, on3);
}

/// Under DNAT, re-hashing replaces the session: the flows of a backend that went down carry
/// on with their new backend, whose answers are un-NATed through the new session's reply key
/// (a slot moved in place would have kept the old backend's reply key, and dropped or
/// mistranslated those answers).
#[test]
fn down_backends_rehash_under_dnat_in_a_new_session() {
    let pool = |down: bool| {
        Pool::new((1..=4u8).map(|i| {
            let m = PoolMember::new(BackendId::v4([10, 0, 1, i], 8080), 1);
            if down && i == 3 {
                m.with_health(Health::Down)
            } else {
                m
            }
        }))
    };
    let l = |down| listener(dns4(), pool(down)).with_on_down(OnDown::Rehash);
    let mut p = pipeline(Lb::new(Listeners::new(vec![l(false)]).unwrap()), 4096);
    let query = |sport: u16| {
        Frame::ipv4(CLIENT4, VIP4)
            .udp(sport, 53)
            .payload(b"query")
            .to_vec()
            .unwrap()
    };
    let answer = |from: [u8; 4], sport: u16| {
        Frame::ipv4(from, CLIENT4)
            .udp(8080, sport)
            .payload(b"answer")
            .to_vec()
            .unwrap()
    };
    let ports: Vec<u16> = (2000..2300).collect();
    let mut sessions = Vec::new();
    let first: Vec<[u8; 4]> = ports
        .iter()
        .map(|&s| {
            let out = &run(&mut p, &[query(s)])[0];
            sessions.push(out.meta.session.unwrap());
            dst_of(out)
        })
        .collect();
    let on3 = first.iter().filter(|d| d[3] == 3).count() as u64;
    assert!(on3 > 0);
    p.second
        .service_mut()
        .set_listeners(Listeners::new(vec![l(true)]).unwrap());
    for round in 0..2 {
        for ((&s, &was), old) in ports.iter().zip(&first).zip(&sessions) {
            let out = run(&mut p, &[query(s)]).remove(0);
            assert_eq!(out.meta.verdict, Verdict::Pass);
            let (src, dst, sp, dp) = reparse(out.data());
            assert_eq!((src, sp, dp), (IpAddr::from(CLIENT4), s, 8080));
            let IpAddr::V4(now_at) = dst else { panic!() };
            let now_at = now_at.octets();
            let session = out.meta.session.unwrap();
            if was[3] == 3 {
                assert_ne!(now_at[3], 3);
                assert_ne!(session, *old, "a new session");
                // The table's choice for the flow.
                let k = nf_core::FlowKey::v4(nf_core::ZoneId(0), CLIENT4, VIP4, proto::UDP, s, 53);
                let lb = p.second.service();
                let b = lb.listeners().listeners()[0].backend_for(&k).unwrap();
                assert_eq!(b.id.as_bytes()[1..5], now_at);
            } else {
                assert_eq!(now_at, was);
                assert_eq!(session, *old);
            }
            // The new backend's answer finds the session and comes back from the VIP.
            let back = run(&mut p, &[answer(now_at, s)]).remove(0);
            assert_eq!(back.meta.verdict, Verdict::Pass, "round {round}");
            assert_eq!(back.meta.session, Some(session));
            let (src, dst, sp, dp) = reparse(back.data());
            assert_eq!(
                (src, dst, sp, dp),
                (IpAddr::from(VIP4), IpAddr::from(CLIENT4), 53, s)
            );
        }
    }
    // Counted once per flow, on its first packet after the change; the replaced sessions
    // are gone and their backend holds none.
    let ct = &p.second;
    assert_eq!(ct.stats().renewed, on3);
    assert_eq!(ct.service().counters().rehashed, on3);
    assert_eq!(ct.service().counters().new_flows, ports.len() as u64 + on3);
    assert_eq!(ct.len(), ports.len());
    let lb = ct.service();
    let id3 = BackendId::v4([10, 0, 1, 3], 8080);
    assert_eq!(lb.sessions_of(&dns4(), &id3), 0);

    // TCP: the segment after the change may not open a session (a SYN only, by default), so
    // the renewed flow is forwarded by the hash alone, to a serving backend (which answers
    // a connection it does not know with a RST, un-NATed statelessly).
    let web = |down| listener(web4(), pool(down)).with_on_down(OnDown::Rehash);
    let mut p = pipeline(Lb::new(Listeners::new(vec![web(false)]).unwrap()), 4096);
    let ports: Vec<u16> = (3000..3100).collect();
    let on = open(&mut p, &ports);
    p.second
        .service_mut()
        .set_listeners(Listeners::new(vec![web(true)]).unwrap());
    let mut moved = 0;
    for (&s, was) in ports.iter().zip(&on) {
        let out = run(&mut p, &[ack(s)]).remove(0);
        assert_eq!(out.meta.verdict, Verdict::Pass);
        assert_ne!(dst_of(&out)[3], 3);
        if was[3] == 3 {
            assert_eq!(out.meta.session, None);
            moved += 1;
        } else {
            assert_eq!(dst_of(&out), *was);
        }
    }
    assert!(moved > 0);
    let ct = &p.second;
    assert_eq!(ct.stats().renewed, moved);
    assert_eq!(ct.service().counters().stateless, moved);
}

#[test]
fn stateless_fallback_when_full_over_the_zone_quota_and_above_the_rate() {
    let mut p = pipeline(
        Lb::new(Listeners::new(vec![listener(web4(), backends4(3))]).unwrap()),
        16,
    );
    let outs: Vec<_> = (0..40u16)
        .map(|s| run(&mut p, &[syn(3000 + s)]).remove(0))
        .collect();
    for o in &outs {
        assert_eq!(o.meta.verdict, Verdict::Pass);
        let (_, dst, _, dp) = reparse(o.data());
        assert_eq!(dp, 8080);
        assert!(matches!(dst, IpAddr::V4(a) if a.octets()[..3] == [10, 0, 1]));
    }
    let ct = p.second;
    assert_eq!(ct.stats().refused_full, 24);
    assert_eq!(ct.service().counters().stateless, 24);
    // The same choice the session would have made: the table's, by the hash alone.
    let lb = ct.service();
    let l = &lb.listeners().listeners()[0];
    for (s, o) in (0..40u16).zip(&outs) {
        let k = nf_core::FlowKey::v4(nf_core::ZoneId(0), CLIENT4, VIP4, proto::TCP, 3000 + s, 80);
        let b = l.backend_for(&k).unwrap();
        assert_eq!(&b.id.as_bytes()[1..5], &dst_of(o));
    }

    // A rate limit of 10 new flows a second, burst 5: the rest are served statelessly.
    let l = listener(web4(), backends4(3)).with_new_flow_limit(NewFlowLimit::new(10, 5));
    let mut p = pipeline(Lb::new(Listeners::new(vec![l]).unwrap()), 1024);
    let outs: Vec<_> = (0..20u16)
        .map(|s| run(&mut p, &[syn(4000 + s)]).remove(0))
        .collect();
    assert!(
        outs.iter()
            .all(|o| o.meta.verdict == Verdict::Pass && dst_of(o)[..3] == [10, 0, 1])
    );
    let ct = p.second;
    assert_eq!(ct.len(), 5);
    assert_eq!(ct.service().counters().rate_limited, 15);
    assert_eq!(ct.service().counters().stateless, 15);

    // A zone over its session quota (the table has room): the same fallback, by the hash.
    let mut p = pipeline(
        Lb::new(Listeners::new(vec![listener(web4(), backends4(3))]).unwrap()),
        1024,
    );
    p.second.set_zone_quota(nf_core::ZoneId(0), 8).unwrap();
    let outs: Vec<_> = (0..20u16)
        .map(|s| run(&mut p, &[syn(6000 + s)]).remove(0))
        .collect();
    let ct = p.second;
    let l = &ct.service().listeners().listeners()[0];
    for (s, o) in (0..20u16).zip(&outs) {
        assert_eq!(o.meta.verdict, Verdict::Pass);
        assert_eq!(o.meta.session.is_some(), s < 8);
        let k = nf_core::FlowKey::v4(nf_core::ZoneId(0), CLIENT4, VIP4, proto::TCP, 6000 + s, 80);
        let b = l.backend_for(&k).unwrap();
        assert_eq!(&b.id.as_bytes()[1..5], &dst_of(o));
    }
    assert_eq!(ct.len(), 8);
    assert_eq!(ct.stats().refused_quota, 12);
    assert_eq!(ct.stats().refused_full, 0);
    assert_eq!(ct.service().counters().stateless, 12);
}

#[test]
fn mid_stream_tcp_without_a_session_is_forwarded_by_the_hash() {
    // An ECMP change in front sent an established connection here: no SYN, no session.
    let mut p = pipeline(
        Lb::new(Listeners::new(vec![listener(web4(), backends4(3))]).unwrap()),
        64,
    );
    let out = run(&mut p, &[ack(5555)]);
    assert_eq!(out[0].meta.verdict, Verdict::Pass);
    assert!(out[0].meta.session.is_none());
    let k = nf_core::FlowKey::v4(nf_core::ZoneId(0), CLIENT4, VIP4, proto::TCP, 5555, 80);
    let l = &p.second.service().listeners().listeners()[0];
    assert_eq!(
        &l.backend_for(&k).unwrap().id.as_bytes()[1..5],
        &dst_of(&out[0])
    );
    reparse(out[0].data());
    // Not to a listener: still dropped.
    let stray = Frame::ipv4(CLIENT4, [192, 0, 2, 99])
        .tcp(1, 80, 0x10)
        .to_vec()
        .unwrap();
    let out = run(&mut p, &[stray]);
    assert_eq!(out[0].meta.verdict, Verdict::Drop(DropReason::NoSession));
}

#[test]
fn a_taken_backend_tuple_is_a_key_conflict() {
    // Two VIPs on the same backend: the same client port to both would share the reply key.
    let other = ListenerMatch::Port {
        vip: [192, 0, 2, 2].into(),
        port: 80,
        proto: proto::TCP,
    };
    let one = || Pool::new([PoolMember::new(BackendId::v4([10, 0, 1, 1], 8080), 1)]);
    let lb =
        Lb::new(Listeners::new(vec![listener(web4(), one()), listener(other, one())]).unwrap());
    let mut p = pipeline(lb, 64);
    let a = run(&mut p, &[syn(7000)]);
    assert_eq!(a[0].meta.verdict, Verdict::Pass);
    let b = Frame::ipv4(CLIENT4, [192, 0, 2, 2])
        .tcp(7000, 80, 0x02)
        .to_vec()
        .unwrap();
    let b = run(&mut p, &[b]);
    assert_eq!(
        b[0].meta.verdict,
        Verdict::Drop(DropReason::SessionKeyConflict)
    );
    let ct = &p.second;
    assert_eq!((ct.len(), ct.stats().key_conflict), (1, 1));
    // The aborted creation released its slot's count.
    let id = BackendId::v4([10, 0, 1, 1], 8080);
    assert_eq!(ct.service().sessions_of(&other, &id), 0);
    assert_eq!(ct.service().sessions_of(&web4(), &id), 1);
}

/// The two fragments of a UDP datagram from the client to the VIP (the first with the
/// UDP header and 16 bytes, the second with the rest).
fn fragments(sport: u16) -> [Vec<u8>; 2] {
    let whole = Frame::ipv4(CLIENT4, VIP4)
        .udp(sport, 53)
        .payload(&[0x5a; 40])
        .to_vec()
        .unwrap();
    let (l3, cut) = (14, 14 + 20 + 24);
    let part = |data: &[u8], offset_flags: u16| {
        let mut f = whole[..l3 + 20].to_vec();
        f.extend_from_slice(data);
        let len = (20 + data.len()) as u16;
        f[l3 + 2..l3 + 4].copy_from_slice(&len.to_be_bytes());
        f[l3 + 4..l3 + 6].copy_from_slice(&0x1234u16.to_be_bytes());
        f[l3 + 6..l3 + 8].copy_from_slice(&offset_flags.to_be_bytes());
        f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let c = nf_core::checksum::checksum(&f[l3..l3 + 20]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        f
    };
    [part(&whole[l3 + 20..cut], 0x2000), part(&whole[cut..], 3)]
}

#[test]
fn later_fragments_follow_their_session() {
    let on = dns4();
    let mut p = pipeline(
        Lb::new(Listeners::new(vec![listener(on, backends4(3))]).unwrap()),
        64,
    );
    let [first, later] = fragments(6000);
    let out = run(&mut p, &[first, later]);
    assert!(out.iter().all(|o| o.meta.verdict == Verdict::Pass));
    assert!(out[1].meta.has(nf_core::flags::RELATED));
    assert_eq!(dst_of(&out[0])[..3], [10, 0, 1]);
    assert_eq!(dst_of(&out[1]), dst_of(&out[0]));
    for o in &out {
        assert_eq!(
            nf_core::checksum::checksum(&o.data()[14..34]),
            0,
            "IPv4 header"
        );
    }
}

#[test]
fn answers_to_stateless_dnat_flows_are_un_nated() {
    let udp_on = dns4();
    let lb = Lb::new(
        Listeners::new(vec![
            listener(web4(), backends4(3)),
            listener(
                udp_on,
                Pool::new([PoolMember::new(BackendId::v4([10, 0, 2, 1], 5353), 1)]),
            ),
        ])
        .unwrap(),
    );
    // Room for one session: the first SYN gets it, the rest are served statelessly.
    let mut p = pipeline(lb, 1);
    for sport in 8000..8010u16 {
        let out = run(&mut p, &[syn(sport)]);
        let (_, dst, _, _) = reparse(out[0].data());
        let IpAddr::V4(b) = dst else { panic!() };
        let synack = Frame::ipv4(b.octets(), CLIENT4)
            .tcp(8080, sport, 0x12)
            .to_vec()
            .unwrap();
        let back = run(&mut p, &[synack]);
        assert_eq!(back[0].meta.verdict, Verdict::Pass, "port {sport}");
        let (src, dst, sp, dp) = reparse(back[0].data());
        assert_eq!(
            (src, dst, sp, dp),
            (IpAddr::from(VIP4), IpAddr::from(CLIENT4), 80, sport)
        );
    }
    // A UDP answer from a backend's service tuple never gets a session of its own.
    let answer = Frame::ipv4([10, 0, 2, 1], CLIENT4)
        .udp(5353, 9999)
        .to_vec()
        .unwrap();
    let back = run(&mut p, &[answer]);
    let (src, _, sp, _) = reparse(back[0].data());
    assert_eq!((src, sp), (IpAddr::from(VIP4), 53));
    assert!(back[0].meta.session.is_none());
    let lb = p.second.service();
    assert_eq!(lb.counters().stateless, 9);
    assert_eq!(lb.counters().stateless_replies, 9 + 1);
}

/// Two VIPs over the same backends (same service tuples): a backend's answer to a flow
/// served without a session is un-NATed to the VIP whose table sends that flow to this
/// backend, the first VIP when both tables do (about one flow in eight with 8 backends).
#[test]
fn stateless_answers_of_a_backend_shared_by_two_vips_find_their_vip() {
    const VIP_B: [u8; 4] = [192, 0, 2, 2];
    let on_b = ListenerMatch::Port {
        vip: VIP_B.into(),
        port: 80,
        proto: proto::TCP,
    };
    let lb = Lb::new(
        Listeners::new(vec![
            listener(web4(), backends4(8)),
            listener(on_b, backends4(8)),
        ])
        .unwrap(),
    );
    let mut p = pipeline(lb, 1);
    let mut right = [0u32; 2];
    for (i, vip) in [VIP4, VIP_B].into_iter().enumerate() {
        for sport in 20_000..20_200u16 {
            let syn = Frame::ipv4(CLIENT4, vip)
                .tcp(sport, 80, 0x02)
                .to_vec()
                .unwrap();
            let out = run(&mut p, &[syn]);
            let (_, IpAddr::V4(b), _, _) = reparse(out[0].data()) else {
                panic!()
            };
            let synack = Frame::ipv4(b.octets(), CLIENT4)
                .tcp(8080, sport, 0x12)
                .to_vec()
                .unwrap();
            let back = run(&mut p, &[synack]);
            let (src, _, sp, _) = reparse(back[0].data());
            assert_eq!(sp, 80);
            right[i] += u32::from(src == IpAddr::from(vip));
        }
    }
    // The first VIP's flows always; the second's but for the flows both tables send to
    // the same backend (the keys are fixed: so is this count).
    assert_eq!(right[0], 200);
    assert!((160..200).contains(&right[1]), "{right:?}");
    eprintln!(
        "the second VIP found for {} of 200 stateless answers",
        right[1]
    );
    assert_eq!(p.second.service().counters().stateless_replies, 400 - 1);
}

#[test]
fn icmp_echo_through_a_whole_vip_dnat_listener() {
    use nf_core::wire::icmp::IcmpRepr;
    let echo = |ty: u8| IcmpRepr {
        ty,
        code: 0,
        checksum: 0,
        ident: 77,
        seq: 1,
    };
    let lb = Lb::new(
        Listeners::new(vec![listener(
            ListenerMatch::Vip(VIP4.into()),
            backends4(2),
        )])
        .unwrap(),
    );
    let mut p = pipeline(lb, 64);
    let req = Frame::ipv4(CLIENT4, VIP4).icmp(echo(8)).to_vec().unwrap();
    let out = run(&mut p, &[req]);
    assert_eq!(out[0].meta.verdict, Verdict::Pass);
    let b = dst_of(&out[0]);
    assert_eq!(b[..3], [10, 0, 1]);
    let reply = Frame::ipv4(b, CLIENT4).icmp(echo(0)).to_vec().unwrap();
    let back = run(&mut p, &[reply]);
    assert_eq!(back[0].meta.direction, nf_core::Direction::Reply);
    let l3 = usize::from(back[0].meta.l3);
    assert_eq!(back[0].data()[l3 + 12..l3 + 16], VIP4);
    assert_eq!(nf_core::checksum::checksum(&back[0].data()[l3..l3 + 20]), 0);
}

/// A service that admits everything and keeps the default `on_refused` (drop).
struct Plain;

impl nf_core::conntrack::SessionService for Plain {
    type Value = ();
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        _new: &mut nf_core::conntrack::NewFlow<'_>,
    ) -> Result<(), DropReason> {
        Ok(())
    }
}

#[test]
fn in_a_tuple_the_fallback_needs_every_service() {
    let lb = Lb::new(Listeners::new(vec![listener(web4(), backends4(3))]).unwrap());
    let mut cfg = ConntrackConfig::new(*b"conntrack secret").sizes(Sizes { v4: 1, v6: 1 });
    cfg.v4.early_drop = false;
    let mut p = ParseStage::default().then(Conntrack::new(cfg, (lb, Plain)).unwrap());
    let mut batch = Batch::new();
    for s in [1u16, 2] {
        batch.push(Packet::with_headroom(&syn(s), 64)).ok().unwrap();
    }
    p.process(Instant::from_nanos(1), &mut batch);
    let v: Vec<Verdict> = batch.packets().iter().map(|p| p.meta.verdict).collect();
    // The second finds the table full: the LB would forward it, the other service drops.
    assert_eq!(
        v,
        [Verdict::Pass, Verdict::Drop(DropReason::SessionTableFull)]
    );
    assert_eq!(p.second.service().0.counters().stateless, 1);
}

#[test]
fn a_window_tracker_beside_the_lb_leaves_the_fallback_to_it() {
    use nf_core::conntrack::TcpWindow;
    let full = || {
        let mut cfg = ConntrackConfig::new(*b"conntrack secret").sizes(Sizes { v4: 1, v6: 1 });
        cfg.v4.early_drop = false;
        cfg
    };
    let lb = || Lb::new(Listeners::new(vec![listener(web4(), backends4(3))]).unwrap());
    // The table full after the first flow: the second is forwarded by the hash, in either
    // order, and so is a mid-stream segment without a session.
    let verdicts = |p: &mut dyn FnMut(Vec<u8>) -> Verdict| [syn(1), syn(2), ack(3)].map(p);
    let want = [Verdict::Pass; 3];
    let mut a =
        ParseStage::default().then(Conntrack::new(full(), (lb(), TcpWindow::new())).unwrap());
    assert_eq!(verdicts(&mut |f| run_one(&mut a, f).meta.verdict), want);
    assert_eq!(a.second.service().0.counters().stateless, 2);
    let mut b =
        ParseStage::default().then(Conntrack::new(full(), (TcpWindow::new(), lb())).unwrap());
    assert_eq!(verdicts(&mut |f| run_one(&mut b, f).meta.verdict), want);
    assert_eq!(b.second.service().1.counters().stateless, 2);
    // Alone, the tracker keeps the stage's drops (nothing forwards without state).
    let mut w = ParseStage::default().then(Conntrack::new(full(), TcpWindow::new()).unwrap());
    assert_eq!(
        verdicts(&mut |f| run_one(&mut w, f).meta.verdict),
        [
            Verdict::Pass,
            Verdict::Drop(DropReason::SessionTableFull),
            Verdict::Drop(DropReason::NoSession)
        ]
    );
}

/// A zone's new-flow rate limit in front of the LB, as nf-policy's `ZoneNewFlowLimit` would
/// be (here: every new flow after the first refused), passing refusals on to the LB.
struct OneNewFlow(bool);

impl nf_core::conntrack::SessionService for OneNewFlow {
    type Value = ();
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        _new: &mut nf_core::conntrack::NewFlow<'_>,
    ) -> Result<(), DropReason> {
        if core::mem::replace(&mut self.0, true) {
            return Err(DropReason::NewFlowRateExceeded);
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

#[test]
fn flows_over_the_zone_new_flow_rate_are_served_statelessly() {
    let lb = Lb::new(Listeners::new(vec![listener(web4(), backends4(3))]).unwrap());
    let cfg = ConntrackConfig::new(*b"conntrack secret");
    let mut p = ParseStage::default().then(Conntrack::new(cfg, (OneNewFlow(false), lb)).unwrap());
    let outs: Vec<_> = (0..4u16).map(|s| run_one(&mut p, syn(5000 + s))).collect();
    for o in &outs {
        assert_eq!(o.meta.verdict, Verdict::Pass);
        assert_eq!(dst_of(o)[..3], [10, 0, 1]);
    }
    assert_eq!(p.second.len(), 1);
    assert_eq!(p.second.service().1.counters().stateless, 3);
}

fn run_one<S: nf_core::conntrack::SessionService>(
    p: &mut nf_core::Chain<ParseStage, Conntrack<S>>,
    frame: Vec<u8>,
) -> Packet<Vec<u8>> {
    let mut batch = Batch::new();
    batch.push(Packet::with_headroom(&frame, 64)).ok().unwrap();
    p.process(Instant::from_nanos(1_000_000_000), &mut batch);
    batch.drain().next().unwrap()
}

/// A UDP flow from `sport` to the DNS listener.
fn query(sport: u16) -> Vec<u8> {
    Frame::ipv4(CLIENT4, VIP4).udp(sport, 53).to_vec().unwrap()
}

/// Every IPv4 session of `p`'s stage, exported in chunks of 16.
fn export_v4(p: &Pipeline) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut from = 0;
    loop {
        let mut c = Vec::new();
        let at = Instant::from_nanos(1_000_000_000);
        let r = p
            .second
            .export(nf_core::Family::V4, at, from, 16, &mut c)
            .unwrap();
        chunks.push(c);
        match r.next {
            Some(n) => from = n,
            None => return chunks,
        }
    }
}

#[test]
fn sessions_move_to_another_node_and_keep_their_backends() {
    let config = |n: u8| {
        Listeners::new(vec![
            listener(web4(), backends4(n)),
            listener(dns4(), backends4(n)),
        ])
        .unwrap()
    };
    let mut a = pipeline(Lb::new(config(3)), 1024);
    let tcp: Vec<u16> = (41_000..41_060).collect();
    let first_tcp = open(&mut a, &tcp);
    let first_udp: Vec<[u8; 4]> = (42_000..42_060u16)
        .map(|s| dst_of(&run(&mut a, &[query(s)])[0]))
        .collect();
    // A flow no listener matches has a session too.
    let other = Frame::ipv4(CLIENT4, [192, 0, 2, 99])
        .udp(43_000, 53)
        .to_vec()
        .unwrap();
    run(&mut a, core::slice::from_ref(&other));
    assert_eq!(a.second.v4().len(), 121);

    // Node B has a fourth backend, so its table sends some of these flows elsewhere; the
    // sessions it takes over keep theirs.
    let mut b = pipeline(Lb::new(config(4)), 1024);
    for c in export_v4(&a) {
        let r = b
            .second
            .import(Instant::from_nanos(1_000_000_000), &c)
            .unwrap();
        assert_eq!((r.skipped, r.refused), (0, 0));
    }
    assert_eq!(b.second.v4().len(), 121);
    assert_eq!(b.second.service().counters().imported, 120);
    let mut fresh = pipeline(Lb::new(config(4)), 1024);
    let moved = tcp
        .iter()
        .zip(&first_tcp)
        .filter(|&(&s, was)| dst_of(&run(&mut fresh, &[syn(s)])[0]) != *was)
        .count();
    assert!(
        moved > 0,
        "the fourth backend takes some flows of a fresh node"
    );
    for (&s, was) in tcp.iter().zip(&first_tcp) {
        let out = &run(&mut b, &[ack(s)])[0];
        assert_eq!(out.meta.verdict, Verdict::Pass);
        assert_eq!(dst_of(out), *was, "TCP flow {s} moved");
        // The backend's answer is un-NATed through the session, not by the hash.
        let answer = Frame::ipv4(*was, CLIENT4)
            .tcp(8080, s, 0x12)
            .to_vec()
            .unwrap();
        let back = &run(&mut b, &[answer])[0];
        assert!(back.meta.session.is_some());
        let (src, dst, sp, dp) = reparse(back.data());
        assert_eq!(
            (src, dst, sp, dp),
            (IpAddr::from(VIP4), IpAddr::from(CLIENT4), 80, s)
        );
    }
    for (s, was) in (42_000..42_060u16).zip(&first_udp) {
        assert_eq!(
            dst_of(&run(&mut b, &[query(s)])[0]),
            *was,
            "UDP flow {s} moved"
        );
    }
    let out = &run(&mut b, &[other])[0];
    assert_eq!(dst_of(out), [192, 0, 2, 99], "left alone");
    let lb = b.second.service();
    assert_eq!(
        (lb.counters().stateless, lb.counters().stateless_replies),
        (0, 0)
    );
    assert_eq!(
        lb.counters().new_flows,
        0,
        "every packet found its imported session"
    );
    assert_eq!(b.second.v4().len(), 121);
    for i in 1..=3u8 {
        let id = BackendId::v4([10, 0, 1, i], 8080);
        let on_a = a.second.service().sessions_of(&web4(), &id);
        assert!(on_a > 0);
        assert_eq!(lb.sessions_of(&web4(), &id), on_a);
        assert_eq!(
            lb.sessions_of(&dns4(), &id),
            a.second.service().sessions_of(&dns4(), &id)
        );
    }

    // Node C does not know the second backend: it declines that backend's sessions, and
    // takes the others over.
    let pool = Pool::new([1, 3].map(|i| PoolMember::new(BackendId::v4([10, 0, 1, i], 8080), 1)));
    let config_c =
        Listeners::new(vec![listener(web4(), pool.clone()), listener(dns4(), pool)]).unwrap();
    let mut c = pipeline(Lb::new(config_c), 1024);
    let (mut imported, mut refused) = (0, 0);
    for chunk in export_v4(&a) {
        let r = c
            .second
            .import(Instant::from_nanos(1_000_000_000), &chunk)
            .unwrap();
        imported += r.imported;
        refused += r.refused;
    }
    let on_second = first_tcp
        .iter()
        .chain(&first_udp)
        .filter(|&&d| d == [10, 0, 1, 2])
        .count();
    assert!(on_second > 0);
    assert_eq!((imported, refused), (121 - on_second, on_second));
    assert_eq!(c.second.v4().len(), imported);
}

#[test]
fn a_replica_kept_in_sync_carries_the_flows_on_when_its_primary_fails() {
    let config = |n: u8| Listeners::new(vec![listener(web4(), backends4(n))]).unwrap();
    let journaled = |lb: Lb| {
        let mut cfg = ConntrackConfig::new(*b"conntrack secret").sizes(Sizes { v4: 1024, v6: 64 });
        cfg.v4.journal = 256;
        ParseStage::default().then(Conntrack::new(cfg, lb).unwrap())
    };
    let now = Instant::from_nanos(1_000_000_000);
    let mut a = journaled(Lb::new(config(3)));
    // The replica has a fourth backend: a fresh decision would move some flows.
    let mut b = journaled(Lb::new(config(4)));
    let sync = |a: &mut Pipeline, b: &mut Pipeline| {
        let mut chunk = Vec::new();
        let p = a
            .second
            .export_changes(nf_core::Family::V4, now, 1024, &mut chunk)
            .unwrap();
        assert_eq!((p.lost, p.pending), (0, false));
        b.second.apply(now, &chunk).unwrap()
    };
    let ports: Vec<u16> = (44_000..44_040).collect();
    let first = open(&mut a, &ports);
    let r = sync(&mut a, &mut b);
    assert_eq!((r.created, r.refused, r.skipped), (40, 0, 0));
    // The handshakes complete on the primary: the state changes travel too.
    for (&s, was) in ports.iter().zip(&first) {
        let syn_ack = Frame::ipv4(*was, CLIENT4)
            .tcp(8080, s, 0x12)
            .to_vec()
            .unwrap();
        assert_eq!(run(&mut a, &[syn_ack])[0].meta.verdict, Verdict::Pass);
        assert_eq!(run(&mut a, &[ack(s)])[0].meta.verdict, Verdict::Pass);
    }
    // Ten flows end on the primary.
    for &s in &ports[..10] {
        let h = run(&mut a, &[ack(s)])[0].meta.session.unwrap();
        a.second.remove(now, h).unwrap();
    }
    let r = sync(&mut a, &mut b);
    assert_eq!((r.ended, r.refreshed, r.created), (10, 30, 0));
    assert_eq!(b.second.v4().len(), 30);
    // What the replica applied is not in its own journal.
    let mut echo = Vec::new();
    let p = b
        .second
        .export_changes(nf_core::Family::V4, now, 1024, &mut echo)
        .unwrap();
    assert_eq!((p.ended, p.changed), (0, 0));
    for i in 1..=3u8 {
        let id = BackendId::v4([10, 0, 1, i], 8080);
        let on_a = a.second.service().sessions_of(&web4(), &id);
        assert_eq!(b.second.service().sessions_of(&web4(), &id), on_a);
    }
    // The primary fails: the replica takes its copies over, and every remaining flow
    // continues there, on its backend, established (an ACK is a steady packet, no new flow).
    assert_eq!(b.second.take_over_replicas(|_| true), 30);
    for (&s, was) in ports.iter().zip(&first).skip(10) {
        let out = &run(&mut b, &[ack(s)])[0];
        assert_eq!(out.meta.verdict, Verdict::Pass);
        assert_eq!(dst_of(out), *was, "flow {s} moved");
        let h = out.meta.session.unwrap();
        assert_eq!(
            b.second.state(h),
            Some(nf_core::conntrack::SessionState::TcpEstablished)
        );
    }
    assert_eq!(b.second.service().counters().new_flows, 0);
}
