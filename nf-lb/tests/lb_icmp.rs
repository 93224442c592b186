//! ICMP errors of load-balanced flows (issue 14), built by etherparse and checked field by
//! field with it: under DNAT an error from the backend's side (a router's fragmentation
//! needed or packet too big on the way to the backend, the backend's port unreachable)
//! reaches the client from the VIP quoting exactly what the client sent; an error from the
//! client's side reaches the backend quoting exactly what the backend sent. Under
//! encapsulation an error quoting a direct reply goes to the flow's backend.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

use etherparse::{
    Icmpv4Type, Icmpv6Type, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader,
    icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode,
};
use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_core::{
    Batch, Direction, Instant, Packet, ParseStage, Stage, StageControl, StageExt, Verdict, flags,
    flow::proto,
};
use nf_lb::{
    BackendId, Forwarding, HashFields, Lb, LbKey, Listener, ListenerMatch, Listeners, Pool,
    PoolMember,
};

const VIP4: [u8; 4] = [192, 0, 2, 1];
const VIP6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const CLIENT4: [u8; 4] = [198, 51, 100, 7];
const CLIENT6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const ROUTER4: [u8; 4] = [10, 9, 9, 9];
const ROUTER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9];
const MAC: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

fn backend6(i: u8) -> [u8; 16] {
    let mut a = [0x20, 1, 0xd, 0xb8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[15] = i;
    a
}

fn port_listener(vip: core::net::IpAddr, port: u16, p: u8, pool: Pool) -> Listener {
    let on = ListenerMatch::Port {
        vip,
        port,
        proto: p,
    };
    let key = LbKey::new(*b"operator secret!");
    Listener::new(&key, on, HashFields::FiveTuple, pool, 251).unwrap()
}

/// TCP 80 and UDP 53 on the IPv4 VIP (backends 10.0.1.1-2:8080), TCP 443 and UDP 53 on the
/// IPv6 VIP (backends port 8443), all with `forwarding`.
fn lb(forwarding: Forwarding) -> Lb {
    let pool4 = || {
        Pool::new((1..=2).map(|i| {
            PoolMember::new(BackendId::v4([10, 0, 1, i], 8080), 1).with_next_hop(u32::from(i))
        }))
    };
    let pool6 = || {
        Pool::new((1..=2).map(|i| {
            PoolMember::new(BackendId::v6(backend6(i), 8443), 1).with_next_hop(u32::from(i))
        }))
    };
    let ls = [
        port_listener(VIP4.into(), 80, proto::TCP, pool4()),
        port_listener(VIP4.into(), 53, proto::UDP, pool4()),
        port_listener(VIP6.into(), 443, proto::TCP, pool6()),
        port_listener(VIP6.into(), 53, proto::UDP, pool6()),
    ];
    Lb::new(
        Listeners::new(
            ls.into_iter()
                .map(|l| l.with_forwarding(forwarding))
                .collect(),
        )
        .unwrap(),
    )
}

type Pipeline = nf_core::Chain<ParseStage, Conntrack<Lb>>;

fn pipeline(forwarding: Forwarding) -> Pipeline {
    sized(forwarding, 256)
}

/// A pipeline with room for `sessions` per family; a full table refuses (no early drop).
fn sized(forwarding: Forwarding, sessions: u32) -> Pipeline {
    let mut cfg = ConntrackConfig::new(*b"conntrack secret").sizes(Sizes {
        v4: sessions,
        v6: sessions,
    });
    cfg.v4.early_drop = false;
    cfg.v6.early_drop = false;
    ParseStage::default().then(Conntrack::new(cfg, lb(forwarding)).unwrap())
}

fn run(p: &mut Pipeline, frame: &[u8]) -> Packet<Vec<u8>> {
    let mut batch = Batch::new();
    batch.push(Packet::with_headroom(frame, 64)).ok().unwrap();
    p.process(Instant::from_nanos(1_000_000_000), &mut batch);
    batch.drain().next().unwrap()
}

fn counter(p: &Pipeline, name: &str) -> u64 {
    let mut v = None;
    p.second.visit_counters(&mut |stage, c, n| {
        if stage == "lb" && c == name {
            v = Some(n);
        }
    });
    v.unwrap()
}

/// A TCP (SYN) or UDP packet built by etherparse, with a payload.
fn packet(src: &[u8], dst: &[u8], tcp: bool, (sp, dp): (u16, u16), syn_ack: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC.0, MAC.1);
    let b = match (src.len(), dst.len()) {
        (4, 4) => b.ipv4(src.try_into().unwrap(), dst.try_into().unwrap(), 64),
        _ => b.ipv6(src.try_into().unwrap(), dst.try_into().unwrap(), 64),
    };
    let mut out = Vec::new();
    let payload = [0x5a; 40];
    if tcp {
        let t = b.tcp(sp, dp, 1000, 64_000).syn();
        let t = if syn_ack { t.ack(1) } else { t };
        t.write(&mut out, &payload).unwrap();
    } else {
        b.udp(sp, dp).write(&mut out, &payload).unwrap();
    }
    out
}

/// The IP packet of an Ethernet frame (what an ICMP error quotes).
fn ip(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// An ICMP error built by etherparse quoting `quote`.
enum Error {
    FragNeeded,
    PortUnreachable,
}

fn icmp_error(src: &[u8], dst: &[u8], e: &Error, quote: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC.1, MAC.0);
    let mut out = Vec::new();
    match (src.len(), e) {
        (4, e) => {
            let ty = Icmpv4Type::DestinationUnreachable(match e {
                Error::FragNeeded => {
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }
                }
                Error::PortUnreachable => DestUnreachableHeader::Port,
            });
            b.ipv4(src.try_into().unwrap(), dst.try_into().unwrap(), 64)
                .icmpv4(ty)
                .write(&mut out, quote)
                .unwrap();
        }
        (_, e) => {
            let ty = match e {
                Error::FragNeeded => Icmpv6Type::PacketTooBig { mtu: 1280 },
                Error::PortUnreachable => {
                    Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port)
                }
            };
            b.ipv6(src.try_into().unwrap(), dst.try_into().unwrap(), 64)
                .icmpv6(ty)
                .write(&mut out, quote)
                .unwrap();
        }
    }
    out
}

/// An ICMP error's outer addresses, type and quote, after checking with etherparse the
/// outer IPv4 header checksum and the ICMP checksum.
#[derive(Debug, PartialEq)]
struct Seen {
    src: Vec<u8>,
    dst: Vec<u8>,
    ty: String,
    quote: Vec<u8>,
}

fn seen(frame: &[u8]) -> Seen {
    let h = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let q = h.payload.slice().to_vec();
    match (h.net.unwrap(), h.transport.unwrap()) {
        (NetHeaders::Ipv4(ip, _), TransportHeader::Icmpv4(i)) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "outer IPv4 checksum"
            );
            assert_eq!(i.checksum, i.icmp_type.calc_checksum(&q), "ICMP checksum");
            Seen {
                src: ip.source.to_vec(),
                dst: ip.destination.to_vec(),
                ty: format!("{:?}", i.icmp_type),
                quote: q,
            }
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Icmpv6(i)) => {
            let want = i
                .icmp_type
                .calc_checksum(ip.source, ip.destination, &q)
                .unwrap();
            assert_eq!(i.checksum, want, "ICMPv6 checksum");
            Seen {
                src: ip.source.to_vec(),
                dst: ip.destination.to_vec(),
                ty: format!("{:?}", i.icmp_type),
                quote: q,
            }
        }
        other => panic!("not an ICMP error: {other:?}"),
    }
}

/// The quoted packet's own checksums, recomputed by etherparse (the quote is whole).
fn quote_checksums_valid(quote: &[u8]) {
    let h = PacketHeaders::from_ip_slice(quote).unwrap();
    let payload = h.payload.slice();
    match (h.net.unwrap(), h.transport.unwrap()) {
        (NetHeaders::Ipv4(ip, _), t) => {
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            match t {
                TransportHeader::Tcp(t) => {
                    assert_eq!(t.checksum, t.calc_checksum_ipv4(&ip, payload).unwrap())
                }
                TransportHeader::Udp(u) => {
                    assert_eq!(u.checksum, u.calc_checksum_ipv4(&ip, payload).unwrap())
                }
                t => panic!("{t:?}"),
            }
        }
        (NetHeaders::Ipv6(ip, _), t) => match t {
            TransportHeader::Tcp(t) => {
                assert_eq!(t.checksum, t.calc_checksum_ipv6(&ip, payload).unwrap())
            }
            TransportHeader::Udp(u) => {
                assert_eq!(u.checksum, u.calc_checksum_ipv6(&ip, payload).unwrap())
            }
            t => panic!("{t:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// The destination address of a frame (IPv4 or IPv6).
fn dst_of(frame: &[u8]) -> Vec<u8> {
    match frame[14] >> 4 {
        4 => frame[14 + 16..14 + 20].to_vec(),
        _ => frame[14 + 24..14 + 40].to_vec(),
    }
}

/// A flow: client, VIP, router, TCP (else UDP), VIP port, backend port.
type Flow = (Vec<u8>, Vec<u8>, Vec<u8>, bool, u16, u16);

/// One flow per family and protocol.
fn flows() -> Vec<Flow> {
    vec![
        (
            CLIENT4.to_vec(),
            VIP4.to_vec(),
            ROUTER4.to_vec(),
            true,
            80,
            8080,
        ),
        (
            CLIENT4.to_vec(),
            VIP4.to_vec(),
            ROUTER4.to_vec(),
            false,
            53,
            8080,
        ),
        (
            CLIENT6.to_vec(),
            VIP6.to_vec(),
            ROUTER6.to_vec(),
            true,
            443,
            8443,
        ),
        (
            CLIENT6.to_vec(),
            VIP6.to_vec(),
            ROUTER6.to_vec(),
            false,
            53,
            8443,
        ),
    ]
}

/// From the backend's side: fragmentation needed / packet too big from a router between
/// the load balancer and the backend, and the backend's own port unreachable. The client
/// gets them from the VIP, quoting exactly the packet it sent.
#[test]
fn dnat_errors_from_the_backend_side_reach_the_client_as_from_the_vip() {
    let mut p = pipeline(Forwarding::Dnat);
    let mut sport = 40_000;
    let mut n = 0;
    for (client, vip, router, tcp, vport, _) in flows() {
        for (e, from_backend) in [(Error::FragNeeded, false), (Error::PortUnreachable, true)] {
            sport += 1;
            let orig = packet(&client, &vip, tcp, (sport, vport), false);
            let sent = run(&mut p, &orig);
            assert_eq!(sent.meta.verdict, Verdict::Pass);
            let backend = dst_of(sent.data());
            assert_ne!(backend, vip);
            let from = if from_backend {
                backend.clone()
            } else {
                router.clone()
            };
            let err = icmp_error(&from, &client, &e, ip(sent.data()));
            let before = seen(&err);
            let got = run(&mut p, &err);
            assert_eq!(got.meta.verdict, Verdict::Pass, "{e:?}", e = before.ty);
            assert!(got.meta.has(flags::RELATED));
            assert_eq!(got.meta.direction, Direction::Reply);
            let after = seen(got.data());
            // The outer source is the VIP, the destination still the client; type, code
            // and MTU unchanged; the quote is the client's packet, byte for byte.
            assert_eq!(
                (after.src.as_slice(), after.dst.as_slice()),
                (&vip[..], &client[..])
            );
            assert_eq!(after.ty, before.ty);
            assert_eq!(after.quote, ip(&orig));
            quote_checksums_valid(&after.quote);
            n += 1;
        }
    }
    assert_eq!(counter(&p, "icmp_errors_translated"), n);
    assert_eq!(counter(&p, "icmp_errors_dropped"), 0);
}

/// From the client's side: an error about a reply (the client's port unreachable, a
/// router's fragmentation needed / packet too big on the way to the client) reaches the
/// backend, quoting exactly the packet the backend sent.
#[test]
fn dnat_errors_from_the_client_side_reach_the_backend() {
    let mut p = pipeline(Forwarding::Dnat);
    let mut sport = 41_000;
    let mut n = 0;
    for (client, vip, router, tcp, vport, bport) in flows() {
        for (e, from_client) in [(Error::FragNeeded, false), (Error::PortUnreachable, true)] {
            sport += 1;
            let sent = run(&mut p, &packet(&client, &vip, tcp, (sport, vport), false));
            let backend = dst_of(sent.data());
            let reply = packet(&backend, &client, tcp, (bport, sport), true);
            let back = run(&mut p, &reply);
            assert_eq!(back.meta.direction, Direction::Reply);
            let from = if from_client {
                client.clone()
            } else {
                router.clone()
            };
            let err = icmp_error(&from, &vip, &e, ip(back.data()));
            let before = seen(&err);
            let got = run(&mut p, &err);
            assert_eq!(got.meta.verdict, Verdict::Pass);
            assert_eq!(got.meta.direction, Direction::Original);
            let after = seen(got.data());
            // The outer destination is the backend, the source kept; the quote is the
            // backend's reply, byte for byte.
            assert_eq!(
                (after.src.as_slice(), after.dst.as_slice()),
                (&from[..], &backend[..])
            );
            assert_eq!(after.ty, before.ty);
            assert_eq!(after.quote, ip(&reply));
            quote_checksums_valid(&after.quote);
            n += 1;
        }
    }
    assert_eq!(counter(&p, "icmp_errors_translated"), n);
}

/// A quote cut after 8 bytes of the transport header (the IPv4 minimum, RFC 792): the
/// TCP checksum is not quoted and stays as it was; everything quoted is translated.
#[test]
fn a_short_quote_is_translated_as_far_as_it_goes() {
    let mut p = pipeline(Forwarding::Dnat);
    let orig = packet(&CLIENT4, &VIP4, true, (42_000, 80), false);
    let sent = run(&mut p, &orig);
    let err = icmp_error(
        &ROUTER4,
        &CLIENT4,
        &Error::FragNeeded,
        &ip(sent.data())[..28],
    );
    let got = run(&mut p, &err);
    assert_eq!(got.meta.verdict, Verdict::Pass);
    let after = seen(got.data());
    assert_eq!(after.quote, ip(&orig)[..28]);
    assert!(nf_core::checksum::verify(&after.quote[..20]));
}

/// Under encapsulation (direct server return) a router on the backend's return path sends
/// its fragmentation needed to the VIP, quoting the backend's direct reply: the load
/// balancer sends it, untouched, to the flow's backend.
#[test]
fn encap_errors_about_direct_replies_go_to_the_backend() {
    let mut p = pipeline(Forwarding::Encap);
    for (client, vip, router, tcp, vport, _) in flows() {
        let sent = run(&mut p, &packet(&client, &vip, tcp, (43_000, vport), false));
        let hop = sent.meta.next_hop;
        assert!(hop == 1 || hop == 2);
        // The backend answers from the VIP, directly to the client.
        let reply = packet(&vip, &client, tcp, (vport, 43_000), true);
        let err = icmp_error(&router, &vip, &Error::FragNeeded, ip(&reply));
        let got = run(&mut p, &err);
        assert_eq!(got.meta.verdict, Verdict::Pass);
        assert_eq!(got.meta.direction, Direction::Original);
        assert_eq!(got.meta.next_hop, hop);
        assert_eq!(got.data(), &err[..]);
    }
    assert_eq!(counter(&p, "icmp_errors_forwarded"), 4);
    assert_eq!(counter(&p, "icmp_errors_translated"), 0);
}

/// Flows served without a session (the table is full): their errors are translated by the
/// hash alone, both ways, as those of flows with a session.
#[test]
fn errors_of_flows_served_without_a_session_are_translated_too() {
    let mut p = sized(Forwarding::Dnat, 1);
    // The one session of each family goes to a flow of its own.
    run(&mut p, &packet(&CLIENT4, &VIP4, true, (1, 80), false));
    run(&mut p, &packet(&CLIENT6, &VIP6, true, (1, 443), false));
    let mut sport = 44_000;
    let mut n = 0;
    // TCP only: the UDP listeners share their backends' tuples with the TCP ones, and a
    // backend in several DNAT listeners answers statelessly for one of them only.
    for (client, vip, router, tcp, vport, bport) in flows().into_iter().filter(|f| f.3) {
        sport += 1;
        let orig = packet(&client, &vip, tcp, (sport, vport), false);
        let sent = run(&mut p, &orig);
        assert_eq!(sent.meta.verdict, Verdict::Pass);
        assert!(sent.meta.session.is_none(), "served statelessly");
        let backend = dst_of(sent.data());
        // From the backend's side.
        let err = icmp_error(&router, &client, &Error::FragNeeded, ip(sent.data()));
        let got = run(&mut p, &err);
        assert_eq!(got.meta.verdict, Verdict::Pass);
        let after = seen(got.data());
        assert_eq!(
            (after.src.as_slice(), after.dst.as_slice()),
            (&vip[..], &client[..])
        );
        assert_eq!(after.quote, ip(&orig));
        // From the client's side, about the (statelessly un-NATed) reply.
        let reply = packet(&backend, &client, tcp, (bport, sport), true);
        let back = run(&mut p, &reply);
        assert_eq!(back.meta.verdict, Verdict::Pass);
        let err = icmp_error(&client, &vip, &Error::PortUnreachable, ip(back.data()));
        let got = run(&mut p, &err);
        assert_eq!(got.meta.verdict, Verdict::Pass);
        let after = seen(got.data());
        assert_eq!(
            (after.src.as_slice(), after.dst.as_slice()),
            (&client[..], &backend[..])
        );
        assert_eq!(after.quote, ip(&reply));
        quote_checksums_valid(&after.quote);
        n += 2;
    }
    assert_eq!(counter(&p, "icmp_errors_translated"), n);
    // An error about no flow of the load balancer keeps its drop.
    let stranger = packet(&CLIENT4, &[192, 0, 2, 99], false, (1, 2), false);
    let err = icmp_error(&ROUTER4, &CLIENT4, &Error::FragNeeded, ip(&stranger));
    let got = run(&mut p, &err);
    assert_eq!(
        got.meta.verdict,
        Verdict::Drop(nf_core::DropReason::RelatedNoSession)
    );
}
