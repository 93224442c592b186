//! Real TCP stacks (smoltcp) on both sides of the NAT gateway's pipeline, in process: parse →
//! `Conntrack<(Snat, TcpWindow)>` (what `nat-gateway` runs; SNAT first, so that its idle
//! RST is the verdict of a segment without a session), an inside client and an outside
//! server. Connections open (also simultaneously, the two SYNs crossing after the NAT made
//! the mapping: RFC 5382 REQ-2), carry data both ways with losses and retransmissions, and
//! close with FIN and with RST; over IPv4 (rfc and hyperplane profiles) and NAT66; a
//! connection carries on through a second NAT node its session moved to. Every
//! packet's IP and TCP checksums are verified from scratch before and after the pipeline,
//! the server only ever sees the public address, and the mapping goes back to the allocator
//! when the session ends. Hairpinning to a mapping puts both stacks inside: one connects to
//! the other's public endpoint (RFC 5382 REQ-8), with endpoint-independent filtering, or,
//! with address-and-port-dependent filtering, both connect at once (the TCP hole punch).

#[path = "common/tcp_peers.rs"]
mod tcp_peers;

use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionState, TcpWindow};
use nf_core::{Chain, FlowKey, ParseStage, StageControl, StageExt, ZoneId, flow::proto};
use nf_nat::{AllocatorConfig, Filtering, InsidePrefix, Profile, Snat, SnatConfig, nat_timeouts};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address, Ipv6Address};
use std::net::IpAddr;
use tcp_peers::{Host, Lab};

type Pipeline = Chain<ParseStage, Conntrack<(Snat, TcpWindow)>>;

const MIB: usize = 1 << 20;

/// Addresses of one family: inside client, its gateway, outside server, public address.
struct Net {
    inside: IpAddr,
    gateway: IpAddr,
    server: IpAddr,
    public: IpAddr,
    len: u8,
}

fn net(v6: bool) -> Net {
    let p = |s: &str| s.parse::<IpAddr>().unwrap();
    if v6 {
        Net {
            inside: p("fd00::2"),
            gateway: p("fd00::1"),
            server: p("2001:db8::2"),
            public: p("2001:db8::1"),
            len: 64,
        }
    } else {
        Net {
            inside: p("10.0.0.2"),
            gateway: p("10.0.0.1"),
            server: p("203.0.113.2"),
            public: p("203.0.113.1"),
            len: 24,
        }
    }
}

fn smol(a: IpAddr) -> IpAddress {
    match a {
        IpAddr::V4(a) => IpAddress::Ipv4(Ipv4Address::from(a.octets())),
        IpAddr::V6(a) => IpAddress::Ipv6(Ipv6Address::from(a.octets())),
    }
}

/// Client `a` inside, server `b` outside, the NAT between them.
fn lab(profile: Profile, n: &Net) -> Lab<Pipeline> {
    Lab::new(
        Host::new(smol(n.inside), n.len, smol(n.gateway)),
        Host::new(smol(n.server), n.len, smol(n.public)),
        pipeline(profile, n),
    )
}

/// The NAT gateway's pipeline for `n` in `profile` (every node of a cluster alike).
fn pipeline(profile: Profile, n: &Net) -> Pipeline {
    let ports = AllocatorConfig::new(profile, vec![n.public], *b"tcp through snat");
    let snat = Snat::new(
        SnatConfig::new(ports)
            .with_inside(InsidePrefix::new(n.inside, n.len))
            .with_v6_sessions(64),
    )
    .unwrap();
    let mut ct = ConntrackConfig::new(*b"conntrack secret");
    ct.v4.timeouts = nat_timeouts(&profile);
    ct.v6.timeouts = ct.v4.timeouts;
    // A change journal, for the replica (`session_fails_over_to_a_replica`).
    ct.v4.journal = 64;
    ct.v6.journal = 64;
    let ct = Conntrack::new(ct, (snat, TcpWindow::new())).unwrap();
    ParseStage::default().then(ct)
}

fn ct(lab: &Lab<Pipeline>) -> &Conntrack<(Snat, TcpWindow)> {
    &lab.pipeline.second
}

/// The inside client's flow key.
fn flow(n: &Net, sport: u16, dport: u16) -> FlowKey {
    FlowKey::from_addrs(ZoneId(0), n.inside, n.server, proto::TCP, sport, dport).unwrap()
}

/// The session's state and reply key (its destination: the public endpoint).
fn session(lab: &Lab<Pipeline>, key: &FlowKey) -> Option<(SessionState, FlowKey)> {
    let info = ct(lab).info(ct(lab).lookup(key)?.session)?;
    Some((info.state, info.reply))
}

/// A counter of the pipeline by stage and name.
fn counter(lab: &Lab<Pipeline>, stage: &str, name: &str) -> u64 {
    let mut v = None;
    ct(lab).visit_counters(&mut |s, c, x| {
        if s == stage && c == name {
            v = Some(x);
        }
    });
    v.unwrap_or_else(|| panic!("no counter {stage}.{name}"))
}

/// Opens a connection from the client's `sport` to the server's listening `dport`; returns
/// the client's and the server's socket.
fn open(lab: &mut Lab<Pipeline>, n: &Net, sport: u16, dport: u16) -> (SocketHandle, SocketHandle) {
    let hb = lab.b.socket(64 * 1024);
    lab.b.tcp(hb).listen(dport).unwrap();
    let ha = lab.a.socket(64 * 1024);
    lab.a
        .connect(ha, IpEndpoint::new(smol(n.server), dport), sport);
    lab.until_established(ha, hb, 1000);
    (ha, hb)
}

/// The server sees the connection come from the public address and the mapped port.
fn assert_server_sees_public(lab: &mut Lab<Pipeline>, n: &Net, hb: SocketHandle, key: &FlowKey) {
    let (_, reply) = session(lab, key).unwrap();
    assert_eq!(reply.dst_ip(), n.public);
    let remote = lab.b.tcp(hb).remote_endpoint().unwrap();
    assert_eq!(remote.addr, smol(n.public));
    assert_eq!(remote.port, reply.dst_port);
}

/// A megabyte each way with losses both ways, then FIN from the client, then from the
/// server: the session follows to TIME_WAIT, nothing a real stack sent is dropped.
fn megabyte_then_fin(profile: Profile, v6: bool) {
    let n = net(v6);
    let mut lab = lab(profile, &n);
    lab.lose = vec![
        (true, 30),
        (true, 31),
        (true, 200),
        (false, 50),
        (false, 400),
        (false, 401),
    ];
    let (ha, hb) = open(&mut lab, &n, 40000, 80);
    let key = flow(&n, 40000, 80);
    assert_eq!(session(&lab, &key).unwrap().0, SessionState::TcpEstablished);
    assert_server_sees_public(&mut lab, &n, hb, &key);
    lab.exchange(ha, hb, MIB);

    lab.fin_close(ha, hb);
    assert_eq!(session(&lab, &key).unwrap().0, SessionState::TcpTimeWait);
    assert_eq!(lab.dropped, vec![], "a real stack's segments were dropped");
    assert_eq!(lab.bad_checksums, 0);
    let s = ct(&lab).service().0.counters();
    assert_eq!((s.flows_translated, s.rewrite_failed), (1, 0));
    assert!(s.packets_out > 700 && s.packets_in > 700, "{s:?}");
    assert_eq!(counter(&lab, "snat", "active_tcp"), 1);
}

#[test]
fn rfc_a_megabyte_each_way_with_losses_then_fin() {
    megabyte_then_fin(Profile::Rfc, false);
}

#[test]
fn hyperplane_a_megabyte_each_way_with_losses_then_fin() {
    megabyte_then_fin(Profile::Hyperplane, false);
}

#[test]
fn nat66_a_megabyte_each_way_with_losses_then_fin() {
    megabyte_then_fin(Profile::Rfc, true);
}

/// Node failure: mid-connection, the session moves to a second NAT node of the same
/// configuration (exported from the first pipeline's conntrack, imported into a fresh one,
/// which takes the first one's place). The transfer carries on through the new node, with
/// a loss each way right after the switch; the server still sees the same public endpoint;
/// TCP window tracking goes on from the moved state (nothing a real stack sends is dropped)
/// and FIN closes the connection there.
fn session_moves_to_another_node(profile: Profile, v6: bool) {
    let n = net(v6);
    let mut lab = lab(profile, &n);
    let (ha, hb) = open(&mut lab, &n, 40010, 80);
    let key = flow(&n, 40010, 80);
    lab.exchange(ha, hb, 256 * 1024);
    let (_, reply) = session(&lab, &key).unwrap();

    let mut next = pipeline(profile, &n);
    let now = nf_core::Instant::from_nanos(lab.now_ms * 1_000_000);
    let mut imported = 0;
    for family in [nf_core::Family::V4, nf_core::Family::V6] {
        let mut chunk = Vec::new();
        let p = ct(&lab).export(family, now, 0, 1024, &mut chunk).unwrap();
        assert_eq!(p.next, None);
        let r = next.second.import(now, &chunk).unwrap();
        assert_eq!((r.refused, r.skipped), (0, 0));
        imported += r.imported;
    }
    assert_eq!(imported, 1);
    carry_on_at(&mut lab, next, &n, (ha, hb), &key, reply);
    assert_eq!(counter(&lab, "snat", "active_tcp"), 1);
}

/// `next` takes the lab's pipeline's place mid-connection: the transfer goes on with a loss
/// each way, with the same mapping (`reply`) and nothing a real stack sends dropped, and FIN
/// closes it there; `next` took the session over (imported, not translated anew).
fn carry_on_at(
    lab: &mut Lab<Pipeline>,
    next: Pipeline,
    n: &Net,
    (ha, hb): (SocketHandle, SocketHandle),
    key: &FlowKey,
    reply: FlowKey,
) {
    lab.pipeline = next;
    lab.lose = vec![(true, lab.passed[0] + 2), (false, lab.passed[1] + 3)];
    lab.exchange(ha, hb, MIB);
    assert_eq!(session(lab, key).unwrap().1, reply, "the same mapping");
    assert_server_sees_public(lab, n, hb, key);
    lab.fin_close(ha, hb);
    assert_eq!(session(lab, key).unwrap().0, SessionState::TcpTimeWait);
    assert_eq!(lab.dropped, vec![], "a real stack's segments were dropped");
    assert_eq!(lab.bad_checksums, 0);
    let s = ct(lab).service().0.counters();
    assert_eq!((s.flows_imported, s.flows_translated), (1, 0));
    assert!(s.packets_out > 500 && s.packets_in > 500, "{s:?}");
}

#[test]
fn rfc_session_moves_to_another_node_mid_connection() {
    session_moves_to_another_node(Profile::Rfc, false);
}

#[test]
fn hyperplane_session_moves_to_another_node_mid_connection() {
    session_moves_to_another_node(Profile::Hyperplane, false);
}

#[test]
fn nat66_session_moves_to_another_node_mid_connection() {
    session_moves_to_another_node(Profile::Rfc, true);
}

/// Node failure with a replica: a second node follows the first through its change journal
/// (`Conntrack::export_changes` → `Conntrack::apply`, after the handshake; the transfer
/// itself makes no journal event), and when the first node dies mid-transfer — nothing is
/// exported at that moment — the replica takes its place. Its copy of the TCP windows is as
/// old as the handshake, so window tracking picks both sides up again from their next
/// segments: the transfer goes on with a loss each way, nothing a real stack sends is
/// dropped, the server sees the same public endpoint, FIN closes the connection there.
fn session_fails_over_to_a_replica(profile: Profile, v6: bool) {
    let n = net(v6);
    let mut lab = lab(profile, &n);
    let mut replica = pipeline(profile, &n);
    let (ha, hb) = open(&mut lab, &n, 40020, 80);
    let key = flow(&n, 40020, 80);
    let now = nf_core::Instant::from_nanos(lab.now_ms * 1_000_000);
    let mut created = 0;
    for family in [nf_core::Family::V4, nf_core::Family::V6] {
        let mut chunk = Vec::new();
        let p = lab
            .pipeline
            .second
            .export_changes(family, now, 1024, &mut chunk)
            .unwrap();
        assert_eq!((p.lost, p.pending), (0, false));
        let r = replica.second.apply(now, &chunk).unwrap();
        assert_eq!((r.refused, r.skipped), (0, 0));
        created += r.created;
    }
    assert_eq!(created, 1);
    lab.exchange(ha, hb, 256 * 1024);
    let (_, reply) = session(&lab, &key).unwrap();
    for family in [nf_core::Family::V4, nf_core::Family::V6] {
        let mut chunk = Vec::new();
        let p = lab
            .pipeline
            .second
            .export_changes(family, now, 1024, &mut chunk)
            .unwrap();
        assert_eq!(
            (p.ended, p.changed),
            (0, 0),
            "steady traffic is no journal event"
        );
    }

    assert_eq!(replica.second.take_over_replicas(|_| true), 1);
    carry_on_at(&mut lab, replica, &n, (ha, hb), &key, reply);
    let w = ct(&lab).service().1.counters();
    assert_eq!(
        w.seq_beyond_window + w.seq_too_old + w.ack_unsent + w.ack_too_old,
        0
    );
    assert!(w.checked > 1000, "{w:?}");
}

#[test]
fn rfc_session_fails_over_to_a_replica_mid_connection() {
    session_fails_over_to_a_replica(Profile::Rfc, false);
}

#[test]
fn hyperplane_session_fails_over_to_a_replica_mid_connection() {
    session_fails_over_to_a_replica(Profile::Hyperplane, false);
}

#[test]
fn nat66_session_fails_over_to_a_replica_mid_connection() {
    session_fails_over_to_a_replica(Profile::Rfc, true);
}

/// The client aborts: its RST crosses the NAT and the server's socket goes back to listen;
/// the session is closed, and once it expires its mapping is released.
fn reset_closes_the_session(v6: bool) {
    let n = net(v6);
    let mut lab = lab(Profile::Hyperplane, &n);
    let (ha, hb) = open(&mut lab, &n, 40001, 80);
    lab.exchange(ha, hb, 10_000);
    lab.a.tcp(ha).abort();
    assert!(lab.run_until(1000, |l| matches!(
        l.b.tcp(hb).state(),
        State::Listen | State::Closed
    )));
    let key = flow(&n, 40001, 80);
    assert_eq!(session(&lab, &key).unwrap().0, SessionState::TcpClosed);
    assert_eq!(lab.dropped, vec![]);
    assert_eq!(lab.bad_checksums, 0);
    // The closed session expires (transitory timeout) and hands its port back.
    let later = nf_core::Instant::from_nanos((lab.now_ms + 241_000) * 1_000_000);
    lab.pipeline.second.handle_timeout(later, 1 << 16);
    assert!(session(&lab, &key).is_none());
    assert_eq!(counter(&lab, "snat", "releases"), 1);
    assert_eq!(counter(&lab, "snat", "active_tcp"), 0);
}

#[test]
fn reset_closes_the_session_v4() {
    reset_closes_the_session(false);
}

#[test]
fn reset_closes_the_session_v6() {
    reset_closes_the_session(true);
}

/// The server resets the connection: the RST comes back through the NAT to the client.
#[test]
fn server_reset_reaches_the_client() {
    let n = net(false);
    let mut lab = lab(Profile::Rfc, &n);
    let (ha, hb) = open(&mut lab, &n, 40003, 80);
    lab.exchange(ha, hb, 5_000);
    lab.b.tcp(hb).abort();
    assert!(lab.run_until(1000, |l| l.a.tcp(ha).state() == State::Closed));
    assert_eq!(
        session(&lab, &flow(&n, 40003, 80)).unwrap().0,
        SessionState::TcpClosed
    );
    assert_eq!(lab.dropped, vec![]);
    assert_eq!(lab.bad_checksums, 0);
}

/// Simultaneous open through the NAT (RFC 5382 REQ-2, the TCP hole punch): the client's
/// SYN makes the mapping and is held in flight; the server, told the public endpoint,
/// connects to it; its SYN crosses the NAT to the client, and only then the client's SYN
/// reaches the server. Both ends go through SYN-RECEIVED to ESTABLISHED.
fn simultaneous_open(profile: Profile, v6: bool) {
    let n = net(v6);
    let mut lab = lab(profile, &n);
    let ha = lab.a.socket(8192);
    let hb = lab.b.socket(8192);
    lab.a
        .connect(ha, IpEndpoint::new(smol(n.server), 80), 40002);
    // The client's SYN crosses the NAT and waits in front of the server.
    assert!(lab.run_until(10, |l| !l.b.dev.rx.is_empty()));
    let held: Vec<Vec<u8>> = lab.b.dev.rx.drain(..).collect();
    let key = flow(&n, 40002, 80);
    let (state, reply) = session(&lab, &key).unwrap();
    assert_eq!(state, SessionState::TcpSynSent);
    lab.b
        .connect(hb, IpEndpoint::new(smol(n.public), reply.dst_port), 80);
    // The server's SYN reaches the client, which answers SYN-ACK.
    assert!(lab.run_until(10, |l| l.a.tcp(ha).state() == State::SynReceived));
    lab.b.dev.rx.extend(held);
    lab.until_established(ha, hb, 5000);
    lab.exchange(ha, hb, 50_000);
    assert_eq!(session(&lab, &key).unwrap().0, SessionState::TcpEstablished);
    assert_eq!(lab.dropped, vec![]);
    assert_eq!(lab.bad_checksums, 0);
    // One session, one mapping: the server's SYN was the session's reply, not a new flow.
    assert_eq!(ct(&lab).service().0.counters().flows_translated, 1);
}

#[test]
fn simultaneous_open_rfc() {
    simultaneous_open(Profile::Rfc, false);
}

#[test]
fn simultaneous_open_hyperplane() {
    simultaneous_open(Profile::Hyperplane, false);
}

#[test]
fn simultaneous_open_nat66() {
    simultaneous_open(Profile::Hyperplane, true);
}

/// Hyperplane: after 350 s of silence the session is gone; the client's next segment is
/// answered by the NAT with a RST that the client's stack accepts (its socket closes), and
/// the server never sees the segment.
fn idle_timeout_resets_the_client(v6: bool) {
    let n = net(v6);
    let mut lab = lab(Profile::Hyperplane, &n);
    let (ha, hb) = open(&mut lab, &n, 40004, 80);
    lab.exchange(ha, hb, 5_000);
    // Every segment acknowledged: nothing left to retransmit after the silence.
    lab.run_until(500, |_| false);
    lab.now_ms += 351_000;
    let now = nf_core::Instant::from_nanos(lab.now_ms * 1_000_000);
    lab.pipeline.second.handle_timeout(now, 1 << 16);
    assert!(session(&lab, &flow(&n, 40004, 80)).is_none());
    let to_server = lab.passed[0];
    lab.a.tcp(ha).send_slice(b"anyone there?").unwrap();
    assert!(lab.run_until(1000, |l| l.a.tcp(ha).state() == State::Closed));
    assert_eq!(lab.sent, [1, 0]);
    assert_eq!(
        lab.passed[0], to_server,
        "the late segment reached the server"
    );
    assert_eq!(counter(&lab, "snat", "idle_timeout_resets"), 1);
    assert_eq!(lab.bad_checksums, 0);
    assert_eq!(lab.dropped, vec![]);
}

#[test]
fn idle_timeout_resets_the_client_v4() {
    idle_timeout_resets_the_client(false);
}

#[test]
fn idle_timeout_resets_the_client_v6() {
    idle_timeout_resets_the_client(true);
}

/// Two stacks inside (`a` at the usual inside address, `b` beside it), the rfc profile with
/// `filtering`.
fn hairpin_lab(v6: bool, filtering: Filtering) -> (Net, IpAddr, Lab<Pipeline>) {
    let n = net(v6);
    let b_addr: IpAddr = if v6 { "fd00::3" } else { "10.0.0.3" }.parse().unwrap();
    let ports = AllocatorConfig::new(Profile::Rfc, vec![n.public], *b"tcp through snat");
    let snat = Snat::new(
        SnatConfig::new(ports)
            .with_inside(InsidePrefix::new(n.inside, n.len))
            .with_filtering(filtering)
            .with_v6_sessions(64),
    )
    .unwrap();
    let mut cfg = ConntrackConfig::new(*b"conntrack secret");
    cfg.v4.timeouts = nat_timeouts(&Profile::Rfc);
    cfg.v6.timeouts = cfg.v4.timeouts;
    let conntrack = Conntrack::new(cfg, (snat, TcpWindow::new())).unwrap();
    let lab = Lab::new(
        Host::new(smol(n.inside), n.len, smol(n.gateway)),
        Host::new(smol(b_addr), n.len, smol(n.gateway)),
        ParseStage::default().then(conntrack),
    );
    (n, b_addr, lab)
}

/// Gives `from:port` a mapping (a SYN of its own to the server outside, sent through the
/// pipeline by hand, as a STUN-like exchange would); returns the mapped port.
fn map(lab: &mut Lab<Pipeline>, n: &Net, from: IpAddr, port: u16) -> u16 {
    use nf_core::wire::Frame;
    use nf_core::wire::tcp::tcp_flags::SYN;
    use nf_core::{Batch, Instant, Packet, Stage};
    let syn = match (from, n.server) {
        (IpAddr::V4(b), IpAddr::V4(s)) => Frame::ipv4(b.octets(), s.octets()),
        (IpAddr::V6(b), IpAddr::V6(s)) => Frame::ipv6(b.octets(), s.octets()),
        _ => unreachable!(),
    };
    let syn = syn.tcp(port, 3478, SYN).to_vec().unwrap();
    let mut batch = Batch::new();
    batch.push(Packet::with_headroom(&syn, 64)).ok().unwrap();
    let now = Instant::from_nanos(lab.now_ms * 1_000_000);
    lab.pipeline.process(now, &mut batch);
    let out = batch.drain().next().unwrap();
    assert_eq!(out.meta.verdict, nf_core::Verdict::Pass);
    let l4 = usize::from(out.meta.l4);
    u16::from_be_bytes([out.data()[l4], out.data()[l4 + 1]])
}

/// Hairpinning to a mapping (RFC 5382 REQ-8; rfc profile, endpoint-independent filtering):
/// both stacks inside. `b`'s port 80 has a mapping, and `a` connects to that mapping's
/// public endpoint: the connection opens between the two real stacks, `b` sees `a`'s own
/// mapping as its peer (REQ-8a), a megabyte crosses each way with losses, and FIN closes
/// it; no segment a stack sent is dropped, every checksum verifies.
fn hairpin_to_a_mapping(v6: bool) {
    let (n, b_addr, mut lab) = hairpin_lab(v6, Filtering::EndpointIndependent);
    lab.lose = vec![(true, 40), (true, 41), (false, 90), (false, 300)];
    let mapped = map(&mut lab, &n, b_addr, 80);
    let hb = lab.b.socket(64 * 1024);
    lab.b.tcp(hb).listen(80).unwrap();
    let ha = lab.a.socket(64 * 1024);
    lab.a
        .connect(ha, IpEndpoint::new(smol(n.public), mapped), 40000);
    lab.until_established(ha, hb, 1000);
    // b's peer is a's own mapping: the session's reply key's destination.
    let key = FlowKey::from_addrs(ZoneId(0), n.inside, n.public, proto::TCP, 40000, mapped);
    let (state, reply) = session(&lab, &key.unwrap()).unwrap();
    assert_eq!(state, SessionState::TcpEstablished);
    let peer = lab.b.tcp(hb).remote_endpoint().unwrap();
    assert_eq!((peer.addr, peer.port), (smol(n.public), reply.dst_port));
    assert_eq!(reply.src_ip(), b_addr);
    lab.exchange(ha, hb, MIB);
    lab.fin_close(ha, hb);
    assert_eq!(lab.dropped, vec![], "a real stack's segments were dropped");
    assert_eq!(lab.bad_checksums, 0);
    let s = ct(&lab).service().0.counters();
    assert_eq!((s.flows_hairpinned, s.rewrite_failed), (1, 0));
    assert!(s.packets_hairpinned > 1400, "{s:?}");
}

#[test]
fn hairpin_to_a_mapping_v4() {
    hairpin_to_a_mapping(false);
}

#[test]
fn hairpin_to_a_mapping_nat66() {
    hairpin_to_a_mapping(true);
}

/// The TCP hole punch of two hosts behind one NAT with address-and-port-dependent
/// filtering (the default): each knows the other's mapping (as from a rendezvous server)
/// and both connect at once, each from its mapped port. `a`'s SYN meets `b`'s mapping,
/// which does not accept it yet, and is dropped (`hairpin_filtered`) — but `b`'s SYN to
/// `a`'s mapping is accepted (`a` sent to `b`'s), reaches `a`, and opens the way: both
/// stacks go through a simultaneous open to ESTABLISHED and exchange data. Only `a`'s
/// first SYN (and its retransmissions before `b`'s arrived) is dropped.
fn hole_punch(v6: bool) {
    let (n, b_addr, mut lab) = hairpin_lab(v6, Filtering::AddressAndPortDependent);
    let a_mapped = map(&mut lab, &n, n.inside, 40000);
    let b_mapped = map(&mut lab, &n, b_addr, 50000);
    let ha = lab.a.socket(8192);
    let hb = lab.b.socket(8192);
    lab.a
        .connect(ha, IpEndpoint::new(smol(n.public), b_mapped), 40000);
    // a's SYN goes first, and is filtered by b's mapping.
    assert!(lab.run_until(10, |l| !l.dropped.is_empty()));
    assert_eq!(
        lab.dropped,
        vec![nf_core::Verdict::Drop(nf_core::DropReason::NatNoMapping)]
    );
    lab.b
        .connect(hb, IpEndpoint::new(smol(n.public), a_mapped), 50000);
    lab.until_established(ha, hb, 5000);
    let pa = lab.b.tcp(hb).remote_endpoint().unwrap();
    let pb = lab.a.tcp(ha).remote_endpoint().unwrap();
    assert_eq!((pa.addr, pa.port), (smol(n.public), a_mapped));
    assert_eq!((pb.addr, pb.port), (smol(n.public), b_mapped));
    lab.exchange(ha, hb, 50_000);
    assert_eq!(lab.dropped.len(), 1, "{:?}", lab.dropped);
    assert_eq!(lab.bad_checksums, 0);
    let s = ct(&lab).service().0.counters();
    assert_eq!((s.flows_hairpinned, s.hairpin_filtered), (1, 1));
}

#[test]
fn hole_punch_v4() {
    hole_punch(false);
}

#[test]
fn hole_punch_nat66() {
    hole_punch(true);
}
