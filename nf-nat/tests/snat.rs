//! The SNAT service end to end: frames built with nf-core's `Frame` go out through
//! `Conntrack<Snat>`, the reply to the translated tuple comes back, and ICMP errors about the
//! flow travel both ways; every frame that leaves is re-parsed with etherparse and its
//! checksums recomputed from scratch.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod common;

use common::*;
use nf_core::wire::tcp::tcp_flags::{ACK, SYN};
use nf_core::{DropReason, Verdict};
use nf_nat::{AllocatorConfig, CgnSettings, Filtering, Profile, SnatConfig};

/// One protocol's frames, for both families: the outbound packet, the reply to a public
/// port, and the same with the addresses given.
trait Family {
    type A: Copy + PartialEq + core::fmt::Debug;
    const INSIDE: fn() -> Self::A;
    const PUBLIC: fn() -> Self::A;
    const REMOTE: fn() -> Self::A;
    const ROUTER: fn() -> Self::A;
    fn src(f: &[u8]) -> Self::A;
    fn dst(f: &[u8]) -> Self::A;
    fn frame(p: Proto, src: Self::A, dst: Self::A, sp: u16, dp: u16, reply: bool) -> Vec<u8>;
    fn unreachable(src: Self::A, dst: Self::A, quoted: &[u8]) -> Vec<u8>;
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Tcp,
    Udp,
    Echo,
}

struct V4;
struct V6;

impl Family for V4 {
    type A = [u8; 4];
    const INSIDE: fn() -> [u8; 4] = || INSIDE4;
    const PUBLIC: fn() -> [u8; 4] = || PUBLIC4;
    const REMOTE: fn() -> [u8; 4] = || REMOTE4;
    const ROUTER: fn() -> [u8; 4] = || ROUTER4;
    fn src(f: &[u8]) -> [u8; 4] {
        src4(f)
    }
    fn dst(f: &[u8]) -> [u8; 4] {
        dst4(f)
    }
    fn frame(p: Proto, s: [u8; 4], d: [u8; 4], sp: u16, dp: u16, reply: bool) -> Vec<u8> {
        match p {
            Proto::Tcp => tcp4(s, d, sp, dp, if reply { SYN | ACK } else { SYN }),
            Proto::Udp => udp4(s, d, sp, dp),
            Proto::Echo => ping4(s, d, sp, reply),
        }
    }
    fn unreachable(s: [u8; 4], d: [u8; 4], q: &[u8]) -> Vec<u8> {
        unreachable4(s, d, q)
    }
}

impl Family for V6 {
    type A = [u8; 16];
    const INSIDE: fn() -> [u8; 16] = inside6;
    const PUBLIC: fn() -> [u8; 16] = public6;
    const REMOTE: fn() -> [u8; 16] = remote6;
    const ROUTER: fn() -> [u8; 16] = router6;
    fn src(f: &[u8]) -> [u8; 16] {
        src6(f)
    }
    fn dst(f: &[u8]) -> [u8; 16] {
        dst6(f)
    }
    fn frame(p: Proto, s: [u8; 16], d: [u8; 16], sp: u16, dp: u16, reply: bool) -> Vec<u8> {
        match p {
            Proto::Tcp => tcp6(s, d, sp, dp, if reply { SYN | ACK } else { SYN }),
            Proto::Udp => udp6(s, d, sp, dp),
            Proto::Echo => ping6(s, d, sp, reply),
        }
    }
    fn unreachable(s: [u8; 16], d: [u8; 16], q: &[u8]) -> Vec<u8> {
        unreachable6(s, d, q)
    }
}

/// The whole exchange for one protocol and family, in the given profile.
fn round_trip<F: Family>(p: Proto, profile: Profile) {
    let mut nat = Nat::new(profile, 1024);
    let (inside, public, remote) = (F::INSIDE(), F::PUBLIC(), F::REMOTE());
    let (sport, dport) = if p == Proto::Echo {
        (0x1234, 0x1234)
    } else {
        (40000, 443)
    };

    // Outbound: the source becomes the public address and a public port.
    let out = F::frame(p, inside, remote, sport, dport, false);
    let (v, sent) = nat.send(&out);
    assert_eq!(v, Verdict::Pass, "{p:?} outbound");
    verify_frame(&sent);
    assert_eq!((F::src(&sent), F::dst(&sent)), (public, remote));
    let (mapped, d) = ports(&sent);
    if p != Proto::Echo {
        assert_eq!(d, dport);
    }
    assert!(mapped >= 1024, "range class of {sport}");
    assert_eq!(sent.len(), out.len());

    // The reply to the translated tuple arrives un-NATed at the inside host.
    let (rs, rd) = if p == Proto::Echo {
        (mapped, mapped)
    } else {
        (dport, mapped)
    };
    let reply = F::frame(p, remote, public, rs, rd, true);
    let (v, back) = nat.send(&reply);
    assert_eq!(v, Verdict::Pass, "{p:?} reply");
    verify_frame(&back);
    assert_eq!((F::src(&back), F::dst(&back)), (remote, inside));
    let expect = if p == Proto::Echo {
        (sport, sport)
    } else {
        (dport, sport)
    };
    assert_eq!(ports(&back), expect);

    // A router on the path reports the outbound packet unreachable, to the public address:
    // the outer destination and the quoted source are the inside host's again.
    let err = F::unreachable(F::ROUTER(), public, &sent);
    let (v, in_err) = nat.send(&err);
    assert_eq!(v, Verdict::Pass, "{p:?} inbound ICMP error");
    verify_frame(&in_err);
    assert_eq!((F::src(&in_err), F::dst(&in_err)), (F::ROUTER(), inside));
    let quote = &in_err[err.len() - ip(&sent).len()..];
    assert_eq!(
        quote,
        ip(&out),
        "the quote is the packet the inside host sent"
    );

    // The inside host reports the reply unreachable: outer source and quoted destination
    // become the public ones, and the quote is exactly what the remote host sent.
    let err = F::unreachable(inside, remote, &back);
    let (v, out_err) = nat.send(&err);
    assert_eq!(v, Verdict::Pass, "{p:?} outbound ICMP error");
    verify_frame(&out_err);
    assert_eq!((F::src(&out_err), F::dst(&out_err)), (public, remote));
    let quote = &out_err[err.len() - ip(&back).len()..];
    assert_eq!(
        quote,
        ip(&reply),
        "the quote is the packet the remote host sent"
    );

    assert_eq!(
        nat.counter("active_public_0") + nat.counter("active_public_1"),
        1
    );
    assert_eq!(nat.counter("packets_out"), 1);
    assert_eq!(nat.counter("packets_in"), 1);
    assert_eq!(nat.counter("icmp_errors_translated"), 2);
}

macro_rules! round_trips {
    ($($name:ident: $fam:ty, $proto:expr, $profile:expr;)+) => {$(
        #[test]
        fn $name() {
            round_trip::<$fam>($proto, $profile);
        }
    )+};
}

round_trips! {
    tcp_v4_hyperplane: V4, Proto::Tcp, Profile::Hyperplane;
    udp_v4_hyperplane: V4, Proto::Udp, Profile::Hyperplane;
    echo_v4_hyperplane: V4, Proto::Echo, Profile::Hyperplane;
    tcp_v6_hyperplane: V6, Proto::Tcp, Profile::Hyperplane;
    udp_v6_hyperplane: V6, Proto::Udp, Profile::Hyperplane;
    echo_v6_hyperplane: V6, Proto::Echo, Profile::Hyperplane;
    tcp_v4_rfc: V4, Proto::Tcp, Profile::Rfc;
    udp_v4_rfc: V4, Proto::Udp, Profile::Rfc;
    echo_v4_rfc: V4, Proto::Echo, Profile::Rfc;
    udp_v6_rfc: V6, Proto::Udp, Profile::Rfc;
    udp_v4_cgn: V4, Proto::Udp, Profile::Cgn(nf_nat::CgnSettings::new());
}

#[test]
fn udp_without_checksum_stays_without() {
    let mut nat = Nat::new(Profile::Hyperplane, 64);
    let mut out = udp4(INSIDE4, REMOTE4, 5000, 53);
    out[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let (v, sent) = nat.send(&out);
    assert_eq!(v, Verdict::Pass);
    assert_eq!(be16(&sent[14 + 20 + 6..]), 0);
    verify_frame(&sent);
}

#[test]
fn unsolicited_inbound_to_the_public_address_is_dropped_and_counted() {
    let mut nat = Nat::new(Profile::Hyperplane, 64);
    let (v, _) = nat.send(&udp4(REMOTE4, PUBLIC4, 53, 40000));
    assert_eq!(v, Verdict::Drop(DropReason::NatNoMapping));
    assert_eq!(nat.counter("no_mapping"), 1);
    assert_eq!(nat.pipe.second.len(), 0);
}

#[test]
fn flows_outside_the_inside_prefixes_pass_untranslated() {
    use nf_nat::{AllocatorConfig, InsidePrefix, SnatConfig};
    let ports = AllocatorConfig::new(
        Profile::Hyperplane,
        vec![core::net::Ipv4Addr::from(PUBLIC4).into()],
        *b"snat test secret",
    );
    let inside = InsidePrefix::new("10.0.0.0".parse().unwrap(), 30);
    let mut nat = Nat::with_config(SnatConfig::new(ports).with_inside(inside), 64);
    let (v, a) = nat.send(&udp4(INSIDE4, REMOTE4, 5000, 53)); // 10.0.0.5: outside /30
    assert_eq!(v, Verdict::Pass);
    assert_eq!(src4(&a), INSIDE4);
    let (v, b) = nat.send(&udp4([10, 0, 0, 2], REMOTE4, 5000, 53));
    assert_eq!(v, Verdict::Pass);
    assert_eq!(src4(&b), PUBLIC4);
    assert_eq!(nat.counter("flows_untranslated"), 1);
    assert_eq!(nat.counter("flows_translated"), 1);
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut nat = Nat::new(Profile::Hyperplane, 64);
    let (first, second) = fragments(INSIDE4, REMOTE4);
    let out = nat.send_batch(&[first, second]);
    assert_eq!(out[0].0, Verdict::Pass);
    assert_eq!(out[1].0, Verdict::Pass);
    assert_eq!(src4(&out[1].1), PUBLIC4);
    assert_eq!(
        ones_sum(&[&out[1].1[14..34]]),
        0xffff,
        "IPv4 header checksum"
    );
    assert_eq!(nat.counter("fragments_translated"), 1);
}

/// hyperplane: 64,512 TCP connections to one destination from one public address all open
/// (no exclusions: every port 1024–65535); the next is refused with the typed drop and
/// counted; every earlier connection still translates both ways.
#[test]
fn hyperplane_exhaustion_64512_then_typed_refusal() {
    use nf_nat::{AllocatorConfig, SnatConfig};
    const N: usize = 64_512;
    let alloc = AllocatorConfig::new(
        Profile::Hyperplane,
        vec![core::net::Ipv4Addr::from(PUBLIC4).into()],
        *b"snat test secret",
    )
    .with_max_mappings(N + 64)
    .with_excluded_ports([]);
    let mut nat = Nat::with_config(SnatConfig::new(alloc), N + 64);
    let inside = |i: usize| [10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let syn = |i: usize| tcp4(inside(i), REMOTE4, 40000, 443, SYN);
    let mut public = Vec::with_capacity(N);
    for chunk in (0..N).collect::<Vec<_>>().chunks(64) {
        let frames: Vec<_> = chunk.iter().map(|&i| syn(i)).collect();
        for (v, f) in nat.send_batch(&frames) {
            assert_eq!(v, Verdict::Pass);
            public.push(ports(&f).0);
        }
    }
    let mut sorted = public.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), N, "every connection has its own port");
    assert_eq!((sorted[0], sorted[N - 1]), (1024, 65535));

    let (v, _) = nat.send(&syn(N));
    assert_eq!(v, Verdict::Drop(DropReason::NatPortsExhausted));
    assert_eq!(nat.counter("alloc_error_exhausted"), 1);
    assert_eq!(nat.counter("flows_refused"), 1);

    // The earlier ones keep working: each SYN-ACK reaches its inside host.
    for (chunk_no, chunk) in public.chunks(64).enumerate() {
        let frames: Vec<_> = chunk
            .iter()
            .map(|&p| tcp4(REMOTE4, PUBLIC4, 443, p, SYN | ACK))
            .collect();
        for (k, (v, f)) in nat.send_batch(&frames).into_iter().enumerate() {
            assert_eq!(v, Verdict::Pass);
            assert_eq!(dst4(&f), inside(chunk_no * 64 + k));
        }
    }
}

/// cgn through the service: a subscriber's mapping beyond its quota (RFC 6888 REQ-4) is
/// refused with the typed drop `nat_quota_exceeded` and counted by reason; another protocol
/// and another subscriber still get mappings, and the subscriber's earlier flows still
/// translate both ways.
#[test]
fn cgn_quota_through_the_service() {
    use nf_nat::{AllocatorConfig, CgnSettings, SnatConfig};
    let cgn = CgnSettings::new().with_block_size(64).with_port_quota(20);
    let alloc = AllocatorConfig::new(
        Profile::Cgn(cgn),
        vec![core::net::Ipv4Addr::from(PUBLIC4).into()],
        *b"snat test secret",
    );
    let mut nat = Nat::with_config(SnatConfig::new(alloc), 1024);
    let mut public = Vec::new();
    for sp in 0..20 {
        let out = nat.send(&udp4(INSIDE4, REMOTE4, 5000 + sp, 53));
        assert_eq!(out.0, Verdict::Pass);
        public.push(ports(&out.1).0);
    }
    let (v, _) = nat.send(&udp4(INSIDE4, REMOTE4, 6000, 53));
    assert_eq!(v, Verdict::Drop(DropReason::NatQuotaExceeded));
    assert_eq!(nat.counter("alloc_error_quota_exceeded"), 1);
    assert_eq!(nat.counter("flows_refused"), 1);
    assert_eq!(
        nat.send(&tcp4(INSIDE4, REMOTE4, 6000, 443, SYN)).0,
        Verdict::Pass
    );
    assert_eq!(
        nat.send(&udp4(INSIDE4_B, REMOTE4, 6000, 53)).0,
        Verdict::Pass
    );
    for (sp, p) in (5000..).zip(public) {
        let back = nat.send(&udp4(REMOTE4, PUBLIC4, 53, p));
        assert_eq!(
            (back.0, dst4(&back.1), ports(&back.1).1),
            (Verdict::Pass, INSIDE4, sp)
        );
    }
    // Live mappings per public address, in all and per protocol.
    assert_eq!(nat.counter("active_public_0"), 22);
    assert_eq!(nat.counter("active_public_0_udp"), 21);
    assert_eq!(nat.counter("active_public_0_tcp"), 1);
    assert_eq!(nat.counter("active_public_0_icmp"), 0);
}

/// A NAT with one port forward of each family: public :8080 (TCP, IPv4) and :5353 (UDP,
/// IPv6) to inside hosts.
fn forwarding_nat() -> Nat {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use nf_nat::{AllocatorConfig, PortForward, SnatConfig};
    let (p4, p6): (IpAddr, IpAddr) = (
        Ipv4Addr::from(PUBLIC4).into(),
        Ipv6Addr::from(public6()).into(),
    );
    let ports = AllocatorConfig::new(Profile::Hyperplane, vec![p4, p6], *b"snat test secret");
    let web = PortForward::new(
        nf_core::flow::proto::TCP,
        SocketAddr::new(p4, 8080),
        SocketAddr::new(Ipv4Addr::from(INSIDE4).into(), 80),
    );
    let dns = PortForward::new(
        nf_core::flow::proto::UDP,
        SocketAddr::new(p6, 5353),
        SocketAddr::new(Ipv6Addr::from(inside6()).into(), 53),
    );
    let cfg = SnatConfig::new(ports).with_forward(web).with_forward(dns);
    Nat::with_config(cfg, 256)
}

#[test]
fn port_forward_ipv4_tcp_both_ways_with_icmp_errors() {
    let mut nat = forwarding_nat();
    let syn = tcp4(REMOTE4, PUBLIC4, 33000, 8080, SYN);
    let (v, inside) = nat.send(&syn);
    assert_eq!(v, Verdict::Pass);
    verify_frame(&inside);
    assert_eq!((dst4(&inside), ports(&inside)), (INSIDE4, (33000, 80)));

    let (v, out) = nat.send(&tcp4(INSIDE4, REMOTE4, 80, 33000, SYN | ACK));
    assert_eq!(v, Verdict::Pass);
    verify_frame(&out);
    assert_eq!((src4(&out), ports(&out)), (PUBLIC4, (8080, 33000)));

    // A router reports the server's answer unreachable: back to the server, un-NATed.
    let (v, err) = nat.send(&unreachable4(ROUTER4, PUBLIC4, &out));
    assert_eq!(v, Verdict::Pass);
    verify_frame(&err);
    assert_eq!(dst4(&err), INSIDE4);
    // The server reports the client's packet unreachable: out from the public address,
    // quoting exactly what the client sent.
    let (v, err) = nat.send(&unreachable4(INSIDE4, REMOTE4, &inside));
    assert_eq!(v, Verdict::Pass);
    verify_frame(&err);
    assert_eq!(src4(&err), PUBLIC4);
    assert_eq!(&err[14 + 28..], ip(&syn));
    assert_eq!(nat.counter("flows_forwarded"), 1);
    assert_eq!(
        nat.counter("allocations"),
        0,
        "a forward takes no port from the allocator"
    );

    // Another public port is still unsolicited.
    let (v, _) = nat.send(&tcp4(REMOTE4, PUBLIC4, 33000, 8081, SYN));
    assert_eq!(v, Verdict::Drop(DropReason::NatNoMapping));
}

#[test]
fn port_forward_ipv6_udp_round_trip() {
    let mut nat = forwarding_nat();
    let (v, inside) = nat.send(&udp6(remote6(), public6(), 40000, 5353));
    assert_eq!(v, Verdict::Pass);
    verify_frame(&inside);
    assert_eq!((dst6(&inside), ports(&inside)), (inside6(), (40000, 53)));
    let (v, out) = nat.send(&udp6(inside6(), remote6(), 53, 40000));
    assert_eq!(v, Verdict::Pass);
    verify_frame(&out);
    assert_eq!((src6(&out), ports(&out)), (public6(), (5353, 40000)));
}

/// An ICMP error quoting only the IP header and 8 bytes of a TCP segment (RFC 792's
/// minimum): the quoted ports are translated and both IP checksums and the ICMP checksum
/// fixed; the TCP checksum, not in the quote, is left alone.
#[test]
fn icmp_error_with_a_short_tcp_quote() {
    let mut nat = Nat::new(Profile::Hyperplane, 64);
    let out = tcp4(INSIDE4, REMOTE4, 40000, 443, SYN);
    let (_, sent) = nat.send(&out);
    let short = &ip(&sent)[..28];
    let err = nf_core::wire::Frame::ipv4(ROUTER4, PUBLIC4)
        .icmp_error(11, 0, short)
        .to_vec()
        .unwrap();
    let (v, got) = nat.send(&err);
    assert_eq!(v, Verdict::Pass);
    verify_frame(&got);
    let quote = &got[14 + 28..];
    assert_eq!(quote.len(), 28);
    assert_eq!(&quote[12..16], &INSIDE4);
    assert_eq!(be16(&quote[20..]), 40000);
    assert_eq!(
        &quote[..20],
        &ip(&out)[..20],
        "the quoted header is the original one"
    );
}

/// A node taking over a hyperplane NAT's sessions keeps every mapping: replies to the
/// public ports reach the inside hosts there, and its own new flows never take an imported
/// port for the same destination.
#[test]
fn hyperplane_sessions_move_to_another_node_with_their_ports() {
    let mut a = Nat::new(Profile::Hyperplane, 1024);
    let flow = |i: u16| -> Vec<u8> {
        let sp = 30_000 + i;
        match i % 3 {
            0 => tcp4(INSIDE4, REMOTE4, sp, 443, SYN),
            1 => udp4(INSIDE4_B, REMOTE4_B, sp, 53),
            _ => udp6(inside6(), remote6(), sp, 53),
        }
    };
    let first: Vec<Vec<u8>> = (0..60).map(flow).collect();
    let out = a.send_batch(&first);
    assert!(out.iter().all(|(v, _)| *v == Verdict::Pass));
    let public_ports: Vec<u16> = out.iter().map(|(_, f)| ports(f).0).collect();

    let mut b = Nat::new(Profile::Hyperplane, 1024);
    let mut imported = 0;
    for c in export_all(&a) {
        let r = b.pipe.second.import(b.now, &c).unwrap();
        assert_eq!((r.refused, r.skipped), (0, 0));
        imported += r.imported;
    }
    assert_eq!(imported, 60);
    assert_eq!(b.counter("flows_imported"), 60);
    assert_eq!(b.counter("active_tcp"), a.counter("active_tcp"));
    assert_eq!(b.counter("active_udp"), a.counter("active_udp"));

    for (i, &pp) in (0..60u16).zip(&public_ports) {
        let sp = 30_000 + i;
        let (v, f) = match i % 3 {
            0 => b.send(&tcp4(REMOTE4, PUBLIC4, 443, pp, SYN | ACK)),
            1 => b.send(&udp4(REMOTE4_B, PUBLIC4, 53, pp)),
            _ => b.send(&udp6(remote6(), public6(), 53, pp)),
        };
        assert_eq!(v, Verdict::Pass, "reply {i}");
        verify_frame(&f);
        assert_eq!(ports(&f).1, sp, "reply {i} reaches its inside port");
        match i % 3 {
            0 => assert_eq!(dst4(&f), INSIDE4),
            1 => assert_eq!(dst4(&f), INSIDE4_B),
            _ => assert_eq!(dst6(&f), inside6()),
        }
    }
    // The clients' next packets leave from the same public ports.
    let again = b.send_batch(&first);
    for ((v, f), &pp) in again.iter().zip(&public_ports) {
        assert_eq!(*v, Verdict::Pass);
        assert_eq!(ports(f).0, pp);
    }
    assert_eq!(b.counter("flows_translated"), 0);
    // New flows to the same destinations take other ports.
    let fresh: Vec<Vec<u8>> = (0..30u16)
        .map(|i| udp4(INSIDE4_B, REMOTE4_B, 50_000 + i, 53))
        .collect();
    let taken: Vec<u16> = (0..60)
        .filter(|i| i % 3 == 1)
        .map(|i| public_ports[i])
        .collect();
    for (v, f) in b.send_batch(&fresh) {
        assert_eq!(v, Verdict::Pass);
        assert!(!taken.contains(&ports(&f).0));
    }
    // The same chunks again: every port is taken for its destination already, so every
    // session is declined and nothing moves.
    let live = b.counter("active_udp");
    for c in export_all(&a) {
        let r = b.pipe.second.import(b.now, &c).unwrap();
        assert_eq!(r.imported, 0);
    }
    assert_eq!(b.counter("active_udp"), live);
    // Imported sessions end like the others: every port given back, none unknown.
    b.advance(24 * 3600);
    assert_eq!(b.counter("active_udp") + b.counter("active_tcp"), 0);
    assert_eq!(b.counter("release_unknown"), 0);
    assert_eq!(b.counter("releases"), 60 + 30);
}

/// An endpoint-independent NAT (`profile`, rfc or cgn) with endpoint-independent filtering,
/// its allocator keyed by `secret`.
fn eim_nat(profile: Profile, secret: [u8; 16]) -> Nat {
    let public = vec![
        core::net::Ipv4Addr::from(PUBLIC4).into(),
        core::net::Ipv6Addr::from(public6()).into(),
    ];
    let ports = AllocatorConfig::new(profile, public, secret).with_max_mappings(1024);
    Nat::with_config(
        SnatConfig::new(ports).with_filtering(Filtering::EndpointIndependent),
        1024,
    )
}

/// The sessions of [`eim_sessions_move_with_their_mappings`]: one inside endpoint
/// (`INSIDE4`:40000) to three destinations (one mapping for the three), 20 UDP endpoints
/// of another host, 10 TCP flows and 5 UDP flows over IPv6. With each, how its reply
/// arrives (source, destination port on the public side) and where it must land.
fn eim_flows() -> Vec<(Vec<u8>, Proto, bool)> {
    let mut f = vec![
        (udp4(INSIDE4, REMOTE4, 40_000, 53), Proto::Udp, false),
        (udp4(INSIDE4, REMOTE4_B, 40_000, 53), Proto::Udp, false),
        (udp4(INSIDE4, REMOTE4, 40_000, 5353), Proto::Udp, false),
    ];
    f.extend((0..20).map(|i| (udp4(INSIDE4_B, REMOTE4, 41_000 + i, 53), Proto::Udp, false)));
    f.extend((0..10).map(|i| {
        (
            tcp4(INSIDE4, REMOTE4, 42_000 + i, 443, SYN),
            Proto::Tcp,
            false,
        )
    }));
    f.extend((0..5).map(|i| (udp6(inside6(), remote6(), 43_000 + i, 53), Proto::Udp, true)));
    f
}

/// Block events drained from `nat`'s allocator: (kind, subscriber, public, first port).
fn block_events(nat: &mut Nat) -> Vec<String> {
    let ports = nat.pipe.second.service_mut().ports_mut();
    let mut v = Vec::new();
    while let Some(e) = ports.pop_block_event() {
        v.push(format!(
            "{:?} {} {} {}",
            e.kind, e.subscriber, e.public, e.first_port
        ));
    }
    v.sort();
    v
}

/// Sessions of the endpoint-independent profiles move with their mappings: every session
/// of an endpoint's mapping claims the same public port on the new node, which then keeps
/// mapping that endpoint to it (for new destinations too), keeps the sessions outside hosts
/// opened on it and admits others (endpoint-independent filtering) and, in the cgn profile,
/// takes the subscriber's port block with its event. A node whose own mapping of an
/// endpoint differs declines that endpoint's sessions.
fn eim_sessions_move_with_their_mappings(profile: Profile) {
    let secret = *b"snat test secret";
    let mut a = eim_nat(profile, secret);
    let flows = eim_flows();
    let frames: Vec<Vec<u8>> = flows.iter().map(|(f, _, _)| f.clone()).collect();
    let out = a.send_batch(&frames);
    assert!(out.iter().all(|(v, _)| *v == Verdict::Pass));
    let public_ports: Vec<u16> = out.iter().map(|(_, f)| ports(f).0).collect();
    assert_eq!(public_ports[0], public_ports[1], "one mapping per endpoint");
    assert_eq!(public_ports[0], public_ports[2]);
    // An outside host the endpoint never talked to, let in by endpoint-independent
    // filtering: an inbound session on the endpoint's mapping.
    let stranger = udp4([198, 51, 100, 77], PUBLIC4, 7777, public_ports[0]);
    assert_eq!(a.send(&stranger).0, Verdict::Pass);
    assert_eq!(a.counter("flows_inbound"), 1);
    let a_events = block_events(&mut a);
    if let Profile::Cgn(_) = profile {
        // One block per subscriber: INSIDE4, INSIDE4_B and the IPv6 host.
        assert_eq!(a_events.len(), 3, "{a_events:?}");
    }

    let mut b = eim_nat(profile, secret);
    let mut imported = 0;
    for c in export_all(&a) {
        let r = b.pipe.second.import(b.now, &c).unwrap();
        assert_eq!((r.refused, r.skipped), (0, 0), "{profile:?}");
        imported += r.imported;
    }
    assert_eq!(imported, 39);
    assert_eq!(b.counter("flows_imported"), 39);
    assert_eq!(b.counter("claimed"), 39);
    for name in ["active_tcp", "active_udp", "blocks_allocated"] {
        assert_eq!(b.counter(name), a.counter(name), "{profile:?} {name}");
    }
    assert_eq!(
        block_events(&mut b),
        a_events,
        "the blocks move with their events"
    );

    // Every reply reaches its inside endpoint.
    for ((f, p, v6), &pp) in flows.iter().zip(&public_ports) {
        let (sp, dp) = ports(f);
        let (v, got) = match (p, v6) {
            (Proto::Tcp, _) => b.send(&tcp4(dst4(f), PUBLIC4, dp, pp, SYN | ACK)),
            (_, false) => b.send(&udp4(dst4(f), PUBLIC4, dp, pp)),
            (_, true) => b.send(&udp6(remote6(), public6(), dp, pp)),
        };
        assert_eq!(v, Verdict::Pass, "{profile:?} reply to {pp}");
        verify_frame(&got);
        assert_eq!(ports(&got).1, sp);
    }
    // The endpoint keeps its mapping for a new destination ...
    let (v, f) = b.send(&udp4(INSIDE4, REMOTE4_B, 40_000, 9999));
    assert_eq!(v, Verdict::Pass);
    assert_eq!(ports(&f).0, public_ports[0]);
    assert_eq!(b.counter("reused"), 1);
    // ... the stranger's session moved ...
    let (v, f) = b.send(&stranger);
    assert_eq!(v, Verdict::Pass, "{profile:?} the inbound session");
    assert_eq!((dst4(&f), ports(&f).1), (INSIDE4, 40_000));
    assert_eq!(b.counter("flows_inbound"), 0);
    // ... and another outside host reaches the endpoint through the mapping.
    let (v, f) = b.send(&udp4([198, 51, 100, 78], PUBLIC4, 7777, public_ports[0]));
    assert_eq!(
        v,
        Verdict::Pass,
        "{profile:?} endpoint-independent filtering"
    );
    assert_eq!((dst4(&f), ports(&f).1), (INSIDE4, 40_000));
    assert_eq!(b.counter("flows_inbound"), 1);
    // A new endpoint takes a port of its own.
    let (v, f) = b.send(&udp4(INSIDE4_B, REMOTE4, 41_020, 53));
    assert_eq!(v, Verdict::Pass);
    assert!(!public_ports[..23].contains(&ports(&f).0));

    // The same chunks again: every session is in the table already; the claims are given
    // back and nothing else changes.
    let live = (b.counter("active_udp"), b.counter("active_tcp"));
    for c in export_all(&a) {
        let r = b.pipe.second.import(b.now, &c).unwrap();
        assert_eq!(r.imported, 0);
    }
    assert_eq!((b.counter("active_udp"), b.counter("active_tcp")), live);
    // Imported sessions end like the others: every mapping given back, none unknown.
    b.advance(24 * 3600);
    assert_eq!(b.counter("active_udp") + b.counter("active_tcp"), 0);
    assert_eq!(b.counter("release_unknown"), 0);

    // A node that mapped `INSIDE4`:40000 itself, to another port (another key), declines
    // that endpoint's four sessions (three out, one in) and takes the rest.
    let mut c = eim_nat(profile, *b"another secret!!");
    let (_, f) = c.send(&udp4(INSIDE4, REMOTE4, 40_000, 123));
    assert_ne!(ports(&f).0, public_ports[0]);
    let (mut refused, mut imported) = (0, 0);
    for chunk in export_all(&a) {
        let r = c.pipe.second.import(c.now, &chunk).unwrap();
        refused += r.refused;
        imported += r.imported;
    }
    assert_eq!((refused, imported), (4, 35), "{profile:?}");
}

#[test]
fn rfc_sessions_move_to_another_node_with_their_mappings() {
    eim_sessions_move_with_their_mappings(Profile::Rfc);
}

#[test]
fn cgn_sessions_move_to_another_node_with_their_mappings() {
    eim_sessions_move_with_their_mappings(Profile::Cgn(CgnSettings::new()));
}

/// A port forward's sessions move to a node with the same forward: the client's next
/// packets reach the inside server there and the server's answers leave from the public
/// endpoint. A node without the forward declines them.
#[test]
fn port_forward_sessions_move_to_a_node_with_the_same_forward() {
    let mut a = forwarding_nat();
    let inbound: Vec<Vec<u8>> = (0..8u16)
        .map(|i| tcp4(REMOTE4, PUBLIC4, 33_000 + i, 8080, SYN))
        .chain((0..4u16).map(|i| udp6(remote6(), public6(), 40_000 + i, 5353)))
        .collect();
    assert!(
        a.send_batch(&inbound)
            .iter()
            .all(|(v, _)| *v == Verdict::Pass)
    );
    // And one outbound flow beside them.
    assert_eq!(a.send(&udp4(INSIDE4, REMOTE4, 5000, 53)).0, Verdict::Pass);
    assert_eq!(a.counter("flows_forwarded"), 12);

    let mut b = forwarding_nat();
    let mut imported = 0;
    for c in export_all(&a) {
        let r = b.pipe.second.import(b.now, &c).unwrap();
        assert_eq!((r.refused, r.skipped), (0, 0));
        imported += r.imported;
    }
    assert_eq!(imported, 13);
    assert_eq!(b.counter("flows_imported"), 13);
    for i in 0..8u16 {
        let (v, f) = b.send(&tcp4(INSIDE4, REMOTE4, 80, 33_000 + i, SYN | ACK));
        assert_eq!(v, Verdict::Pass);
        verify_frame(&f);
        assert_eq!((src4(&f), ports(&f)), (PUBLIC4, (8080, 33_000 + i)));
    }
    for i in 0..4u16 {
        let (v, f) = b.send(&udp6(remote6(), public6(), 40_000 + i, 5353));
        assert_eq!(v, Verdict::Pass);
        verify_frame(&f);
        assert_eq!((dst6(&f), ports(&f)), (inside6(), (40_000 + i, 53)));
    }
    assert_eq!(
        b.counter("flows_forwarded"),
        0,
        "no packet opened a new session"
    );
    // Forward sessions end like the others (their IPv6 inside addresses given back).
    b.advance(24 * 3600);
    assert_eq!(b.pipe.second.len(), 0);

    // Without the forward: the 12 forward sessions are declined, the outbound one moves.
    let mut c = Nat::new(Profile::Hyperplane, 1024);
    let (mut refused, mut imported) = (0, 0);
    for chunk in export_all(&a) {
        let r = c.pipe.second.import(c.now, &chunk).unwrap();
        refused += r.refused;
        imported += r.imported;
    }
    assert_eq!((refused, imported), (12, 1));
}

/// A hairpin (an inside host reaching a port forward through the public address) moves
/// with its mapping in every profile: on the new node the server's answers reach the
/// client from the public endpoint and the client's next packets reach the server from the
/// mapping, without a new session.
#[test]
fn hairpin_sessions_move_with_their_mappings() {
    for profile in [
        Profile::Hyperplane,
        Profile::Rfc,
        Profile::Cgn(CgnSettings::new()),
    ] {
        let node = || hairpin_nat(profile, nf_core::flow::proto::TCP);
        let mut a = node();
        let syn = tcp4(INSIDE4_B, PUBLIC4, 45_000, 8080, SYN);
        let (v, to_server) = a.send(&syn);
        assert_eq!(v, Verdict::Pass);
        let (mapped, _) = ports(&to_server);
        assert_eq!(a.counter("flows_hairpinned"), 1);

        let mut b = node();
        let mut imported = 0;
        for c in export_all(&a) {
            let r = b.pipe.second.import(b.now, &c).unwrap();
            assert_eq!((r.refused, r.skipped), (0, 0), "{profile:?}");
            imported += r.imported;
        }
        assert_eq!(imported, 1, "{profile:?}");
        let (v, to_client) = b.send(&tcp4(INSIDE4, PUBLIC4, 80, mapped, SYN | ACK));
        assert_eq!(v, Verdict::Pass, "{profile:?}");
        verify_frame(&to_client);
        assert_eq!((src4(&to_client), dst4(&to_client)), (PUBLIC4, INSIDE4_B));
        assert_eq!(ports(&to_client), (8080, 45_000));
        let (v, again) = b.send(&syn);
        assert_eq!(v, Verdict::Pass);
        assert_eq!((src4(&again), dst4(&again)), (PUBLIC4, INSIDE4));
        assert_eq!(ports(&again), (mapped, 80));
        assert_eq!(b.counter("flows_hairpinned"), 0, "no new session");
        b.advance(24 * 3600);
        assert_eq!(
            b.snat().ports().len(),
            0,
            "{profile:?}: the mapping released"
        );
        assert_eq!(b.counter("release_unknown"), 0);
    }
}

/// Core 0 of node `n` of a cluster split as `split`, in `profile`, translating to
/// `publics`.
fn share_node(
    profile: Profile,
    publics: &[core::net::IpAddr],
    split: nf_nat::PortSplit,
    n: u32,
) -> Nat {
    let owner = nf_nat::Owner {
        nodes: split.nodes,
        cores: split.cores,
        node: n,
        core: 0,
    };
    let ports = AllocatorConfig::new(profile, publics.to_vec(), *b"snat test secret")
        .with_owner(owner)
        .with_max_mappings(1024);
    Nat::with_config(SnatConfig::new(ports), 1024)
}

/// Node failure with port shares: two nodes share the public addresses by
/// `Owner { nodes: 2, cores: 2 }` (core 0 of each here). Node 1's sessions do not move to
/// node 0 while their ports are another node's share; once node 0 takes over node 1's
/// share (`PortAllocator::take_over`) they all do, the replies to them reach the inside
/// hosts, node 0's steering sends those replies to its core 0 (its own partition and node
/// 1's, `Steering::own_also`), and node 0's new flows still take only its own ports. When
/// node 1 comes back it takes its share's sessions back the same way. All three profiles
/// (cgn: the subscriber's block of node 1's run moves with its sessions).
#[test]
fn a_node_takes_over_a_failed_nodes_port_share() {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use nf_core::steer::{Steer, SteerFields, SteerHash, Steering};
    use nf_nat::{ConfigError, PortSplit, owner_of};
    let publics: Vec<IpAddr> = vec![
        Ipv4Addr::from(PUBLIC4).into(),
        Ipv6Addr::from(public6()).into(),
    ];
    let split = PortSplit { nodes: 2, cores: 2 };
    for profile in [
        Profile::Hyperplane,
        Profile::Rfc,
        Profile::Cgn(CgnSettings::new()),
    ] {
        let node = |n: u32| share_node(profile, &publics, split, n);
        let mut failed = node(1);
        let flows: Vec<Vec<u8>> = (0..40u16)
            .map(|i| match i % 4 {
                3 => udp6(inside6(), remote6(), 30_000 + i, 53),
                2 => tcp4(INSIDE4, REMOTE4, 30_000 + i, 443, SYN),
                _ => udp4(INSIDE4, REMOTE4, 30_000 + i, 53),
            })
            .collect();
        let out = failed.send_batch(&flows);
        let mapped: Vec<u16> = out.iter().map(|(_, f)| ports(f).0).collect();
        assert!(out.iter().all(|(v, _)| *v == Verdict::Pass));
        for &p in &mapped {
            let o = owner_of(p, split);
            assert_eq!((o.node, o.core), (1, 0), "{profile:?} port {p}");
        }

        let mut survivor = node(0);
        let import = |to: &mut Nat| {
            let (mut imported, mut refused) = (0, 0);
            for c in export_all(&failed) {
                let r = to.pipe.second.import(to.now, &c).unwrap();
                imported += r.imported;
                refused += r.refused;
            }
            (imported, refused)
        };
        assert_eq!(
            import(&mut survivor),
            (0, 40),
            "{profile:?}: another node's share"
        );
        let alloc = survivor.pipe.second.service_mut().ports_mut();
        assert_eq!(alloc.take_over(0), Err(ConfigError::Owner), "itself");
        assert_eq!(alloc.take_over(2), Err(ConfigError::Owner), "out of range");
        alloc.take_over(1).unwrap();
        assert_eq!(import(&mut survivor), (40, 0), "{profile:?}");

        let mut steering = Steering::new(
            2,
            SteerHash::Keyed(nf_core::FlowHasher::new([9; 16])),
            SteerFields::FiveTuple,
        );
        for ip in &publics {
            steering.own(*ip, split.partition(0).unwrap()).unwrap();
            steering.own_also(*ip, split.partition(1).unwrap()).unwrap();
        }
        for (i, &p) in (0..40u16).zip(&mapped) {
            let reply = match i % 4 {
                3 => udp6(remote6(), public6(), 53, p),
                2 => tcp4(REMOTE4, PUBLIC4, 443, p, SYN | ACK),
                _ => udp4(REMOTE4, PUBLIC4, 53, p),
            };
            let mut pkt = nf_core::Packet::with_headroom(&reply, 0);
            nf_core::parse_frame(&reply, &mut pkt.meta, &nf_core::ParseConfig::default()).unwrap();
            assert_eq!(
                steering.worker(&reply, &pkt.meta),
                Steer::Worker(0),
                "port {p}"
            );
            let (v, f) = survivor.send(&reply);
            assert_eq!(v, Verdict::Pass, "{profile:?} reply to {p}");
            verify_frame(&f);
            assert_eq!(ports(&f).1, 30_000 + i);
        }
        // New flows at the survivor: its own share only.
        let fresh: Vec<Vec<u8>> = (0..20u16)
            .map(|i| udp4(INSIDE4_B, REMOTE4, 50_000 + i, 53))
            .collect();
        for (v, f) in survivor.send_batch(&fresh) {
            assert_eq!(v, Verdict::Pass);
            assert_eq!(owner_of(ports(&f).0, split).node, 0);
        }

        // Node 1 comes back empty and takes its share's sessions back from the survivor
        // (which then stops steering node 1's ports to itself and lets its copies age
        // out): it takes exactly the 40, declines the survivor's own 20, and its new flows
        // never take a port a handed-back session holds.
        let mut back = node(1);
        let (mut imported, mut refused) = (0, 0);
        for c in export_all(&survivor) {
            let r = back.pipe.second.import(back.now, &c).unwrap();
            imported += r.imported;
            refused += r.refused;
        }
        assert_eq!((imported, refused), (40, 20), "{profile:?}");
        let again: Vec<Vec<u8>> = (0..40u16)
            .map(|i| udp4(INSIDE4_B, REMOTE4, 60_000 + i, 53))
            .collect();
        for (v, f) in back.send_batch(&again) {
            assert_eq!(v, Verdict::Pass);
            let p = ports(&f).0;
            assert_eq!(owner_of(p, split).node, 1);
            // Against the UDP ones to the same destination (hyperplane's ports are per
            // destination).
            let held = (0..40).any(|i| i % 4 < 2 && mapped[i] == p);
            assert!(!held, "{profile:?}: {p} is a handed-back session's");
        }
    }
}

/// A replica kept in sync (`export_changes` → `apply`) while its primary lives: node 0 holds
/// node 1's share as claimable (`take_over`) from the start, so that it can hold node 1's
/// sessions with their ports; sessions node 1 ends are removed there (their ports given
/// back); when node 1 fails, the replies to its public ports already reach the inside hosts
/// through node 0, and the clients' next packets leave from the same ports. All three
/// profiles.
#[test]
fn a_replica_kept_in_sync_holds_the_primarys_mappings_when_it_fails() {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use nf_nat::{PortSplit, owner_of};
    let publics: Vec<IpAddr> = vec![
        Ipv4Addr::from(PUBLIC4).into(),
        Ipv6Addr::from(public6()).into(),
    ];
    let split = PortSplit { nodes: 2, cores: 1 };
    for profile in [
        Profile::Hyperplane,
        Profile::Rfc,
        Profile::Cgn(CgnSettings::new()),
    ] {
        let node = |n: u32| share_node(profile, &publics, split, n);
        let mut primary = node(1);
        let mut replica = node(0);
        replica
            .pipe
            .second
            .service_mut()
            .ports_mut()
            .take_over(1)
            .unwrap();
        let flows = |base: u16| -> Vec<Vec<u8>> {
            (0..30u16)
                .map(|i| match i % 3 {
                    2 => udp6(inside6(), remote6(), base + i, 53),
                    1 => tcp4(INSIDE4, REMOTE4, base + i, 443, SYN),
                    _ => udp4(INSIDE4, REMOTE4, base + i, 53),
                })
                .collect()
        };
        // Sessions that open and end on the primary open and end on the replica.
        assert!(
            primary
                .send_batch(&flows(20_000))
                .iter()
                .all(|(v, _)| *v == Verdict::Pass)
        );
        let r = sync_changes(&mut primary, &mut replica);
        assert_eq!((r.created, r.refused, r.skipped), (30, 0, 0), "{profile:?}");
        assert_eq!(replica.counter("active_udp"), primary.counter("active_udp"));
        primary.advance(24 * 3600);
        let r = sync_changes(&mut primary, &mut replica);
        assert_eq!((r.ended, r.absent), (30, 0), "{profile:?}");
        assert_eq!(
            replica.counter("active_udp") + replica.counter("active_tcp"),
            0
        );
        assert_eq!(replica.counter("release_unknown"), 0);

        // Then the flows that will outlive the primary.
        let live = flows(30_000);
        let out = primary.send_batch(&live);
        let mapped: Vec<u16> = out.iter().map(|(_, f)| ports(f).0).collect();
        for &p in &mapped {
            assert_eq!(owner_of(p, split).node, 1);
        }
        let r = sync_changes(&mut primary, &mut replica);
        assert_eq!((r.created, r.refused), (30, 0), "{profile:?}");
        // The replica's own new flows never take a port a replicated session holds.
        let own: Vec<Vec<u8>> = (0..30u16)
            .map(|i| udp4(INSIDE4_B, REMOTE4, 40_000 + i, 53))
            .collect();
        for (v, f) in replica.send_batch(&own) {
            assert_eq!(v, Verdict::Pass);
            assert_eq!(owner_of(ports(&f).0, split).node, 0);
        }
        // The primary fails: the replica takes its copies over (they are its own now).
        drop(primary);
        assert_eq!(replica.pipe.second.take_over_replicas(|_| true), 30);
        for (i, &p) in (0..30u16).zip(&mapped) {
            let reply = match i % 3 {
                2 => udp6(remote6(), public6(), 53, p),
                1 => tcp4(REMOTE4, PUBLIC4, 443, p, SYN | ACK),
                _ => udp4(REMOTE4, PUBLIC4, 53, p),
            };
            let (v, f) = replica.send(&reply);
            assert_eq!(v, Verdict::Pass, "{profile:?} reply to {p}");
            verify_frame(&f);
            assert_eq!(ports(&f).1, 30_000 + i);
        }
        for ((v, f), &p) in replica.send_batch(&live).iter().zip(&mapped) {
            assert_eq!(*v, Verdict::Pass);
            assert_eq!(ports(f).0, p, "{profile:?}");
        }
        assert_eq!(
            replica.counter("flows_translated"),
            30,
            "only its own new flows"
        );
    }
}

/// Cgn nodes sharing the public addresses hold each other's blocks: the replica's copies of
/// a subscriber's sessions hold the subscriber's block of the primary's run (its event says
/// so: `taken_over`, node 1) beside the subscriber's block of its own run, though
/// `max_blocks` is 1, and do not count against the subscriber's port quota on the replica,
/// which still holds for the replica's own flows. When the primary's sessions end, the
/// replica frees their ports at once (the primary's quarantine protects them), and the block
/// goes back with its event.
#[test]
fn cgn_nodes_hold_each_others_blocks_within_their_own_quotas() {
    use core::net::{IpAddr, Ipv4Addr};
    use nf_nat::{BlockEventKind, Owner, PortSplit, owner_of};
    let publics: Vec<IpAddr> = vec![Ipv4Addr::from(PUBLIC4).into()];
    let split = PortSplit { nodes: 2, cores: 1 };
    let cgn = CgnSettings::new()
        .with_block_size(64)
        .with_max_blocks(1)
        .with_port_quota(10);
    let node = |n: u32| {
        let ports = AllocatorConfig::new(Profile::Cgn(cgn), publics.clone(), *b"snat test secret")
            .with_owner(Owner {
                nodes: 2,
                cores: 1,
                node: n,
                core: 0,
            })
            .with_max_mappings(1024);
        Nat::with_config(SnatConfig::new(ports), 1024)
    };
    let (mut primary, mut replica) = (node(1), node(0));
    let events = |nat: &mut Nat| {
        let ports = nat.pipe.second.service_mut().ports_mut();
        core::iter::from_fn(|| ports.pop_block_event()).collect::<Vec<_>>()
    };
    replica
        .pipe
        .second
        .service_mut()
        .ports_mut()
        .take_over(1)
        .unwrap();
    let flows = |base: u16| -> Vec<Vec<u8>> {
        (0..10u16)
            .map(|i| udp4(INSIDE4, REMOTE4, base + i, 53))
            .collect()
    };
    let out = primary.send_batch(&flows(20_000));
    assert!(out.iter().all(|(v, _)| *v == Verdict::Pass));
    let block = ports(&out[0].1).0 / 64 * 64;
    for (_, f) in &out {
        assert_eq!(ports(f).0 / 64 * 64, block, "one block");
        assert_eq!(owner_of(ports(f).0, split).node, 1);
    }
    let r = sync_changes(&mut primary, &mut replica);
    assert_eq!((r.created, r.refused), (10, 0));
    let held = events(&mut replica);
    assert_eq!(held.len(), 1);
    let e = held[0];
    assert_eq!(
        (e.kind, e.first_port, e.node, e.taken_over),
        (BlockEventKind::Allocated, block, 1, true)
    );
    assert!(e.to_string().ends_with(" for node 1"), "{e}");
    assert_eq!(events(&mut primary).len(), 1);

    // The replica's own flows: the subscriber's quota (10) and one block of its own run.
    let own = replica.send_batch(&flows(30_000));
    for (v, f) in &own {
        assert_eq!(*v, Verdict::Pass);
        assert_eq!(owner_of(ports(f).0, split).node, 0);
    }
    let (v, _) = replica.send(&udp4(INSIDE4, REMOTE4, 30_010, 53));
    assert_eq!(v, Verdict::Drop(DropReason::NatQuotaExceeded));
    let mine = events(&mut replica);
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].node, mine[0].taken_over), (0, false));
    assert!(!mine[0].to_string().contains("for node"));

    // The primary's sessions end: their ports are free on the replica at once.
    primary.advance(24 * 3600);
    let r = sync_changes(&mut primary, &mut replica);
    assert_eq!((r.ended, r.absent), (10, 0));
    assert_eq!(replica.counter("quarantined"), 0);
    let gone = events(&mut replica);
    assert_eq!(gone.len(), 1);
    assert_eq!(
        (gone[0].kind, gone[0].first_port, gone[0].taken_over),
        (BlockEventKind::Released, block, true)
    );
    assert_eq!(replica.counter("active_udp"), 10, "its own");
}

/// A replica's copy that aged out on the replica's own timers (no sweep came in time) put
/// its port in the replica's quarantine while the primary's session lives on; the next
/// sweep gives the replica the session again, and its claim takes the port back out of
/// quarantine (the primary's quarantine is the one that protects a port). The port then
/// stays the session's when that quarantine would have ended.
#[test]
fn a_replica_takes_a_port_back_out_of_its_own_quarantine() {
    use core::net::{IpAddr, Ipv4Addr};
    use nf_nat::PortSplit;
    let publics: Vec<IpAddr> = vec![Ipv4Addr::from(PUBLIC4).into()];
    let split = PortSplit { nodes: 2, cores: 1 };
    for profile in [Profile::Hyperplane, Profile::Rfc] {
        let mut primary = share_node(profile, &publics, split, 1);
        let mut replica = share_node(profile, &publics, split, 0);
        let alloc = replica.pipe.second.service_mut().ports_mut();
        alloc.take_over(1).unwrap();
        let flow = udp4(INSIDE4, REMOTE4, 30_000, 53);
        let (v, out) = primary.send(&flow);
        assert_eq!(v, Verdict::Pass);
        let port = ports(&out).0;
        assert_eq!(sync_changes(&mut primary, &mut replica).created, 1);
        // 400 s pass at the replica without a sweep: its copy expires (UDP: 350 s idle in
        // hyperplane, 300 s in rfc), the port goes into its 120 s quarantine.
        replica.advance(400);
        assert_eq!(replica.counter("active_udp"), 0, "{profile:?}");
        assert_eq!(replica.counter("quarantined"), 1, "{profile:?}");
        // The sweep: the primary's session, still live there.
        for c in export_all(&primary) {
            let r = replica.pipe.second.apply(replica.now, &c).unwrap();
            assert_eq!(
                r.refused, 0,
                "{profile:?}: the port is the primary's decision"
            );
        }
        assert_eq!(replica.counter("active_udp"), 1, "{profile:?}");
        assert_eq!(replica.counter("quarantined"), 0, "{profile:?}");
        // The quarantine's end (120 s after the copy expired) finds the port live and
        // leaves it (the new copy has the primary's remaining lifetime, over 300 s).
        replica.advance(150);
        assert_eq!(replica.counter("active_udp"), 1, "{profile:?}");
        // The primary fails; the replica carries the flow on, on the same port.
        assert_eq!(replica.pipe.second.take_over_replicas(|_| true), 1);
        let (v, f) = replica.send(&udp4(REMOTE4, PUBLIC4, 53, port));
        assert_eq!(v, Verdict::Pass, "{profile:?}");
        assert_eq!((dst4(&f), ports(&f).1), (INSIDE4, 30_000));
    }
}
