//! Encapsulation (direct server return): the backend answers the client directly, so the
//! load balancer sees one side of each TCP connection. Its sessions are one-sided: the
//! client's ACK after its SYN establishes them (assured, the established timeout), its FIN
//! or RST closes them with the usual timeouts. DNAT sessions track both sides as before.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionInfo, SessionState, Sizes};
use nf_core::wire::Frame;
use nf_core::{
    Batch, FlowKey, Instant, Packet, ParseStage, Stage, StageControl, StageExt, Verdict, ZoneId,
    flow::proto,
};
use nf_lb::{
    BackendId, Forwarding, HashFields, Lb, LbKey, LbSession, Listener, ListenerMatch, Listeners,
    Pool, PoolMember,
};

const VIP4: [u8; 4] = [192, 0, 2, 1];
const CLIENT4: [u8; 4] = [198, 51, 100, 7];
const BACKEND: [u8; 4] = [10, 0, 1, 1];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;
const SYN_ACK: u8 = 0x12;

type Pipeline = nf_core::Chain<ParseStage, Conntrack<Lb>>;

fn pipeline(forwarding: Forwarding) -> Pipeline {
    pipeline_with(forwarding, false)
}

/// [`pipeline`], DNAT sessions one-sided or not ([`Listener::with_one_sided`]).
fn pipeline_with(forwarding: Forwarding, one_sided: bool) -> Pipeline {
    let on = ListenerMatch::Port {
        vip: VIP4.into(),
        port: 80,
        proto: proto::TCP,
    };
    let pool = Pool::new([PoolMember::new(BackendId::v4(BACKEND, 8080), 1).with_next_hop(7)]);
    let key = LbKey::new(*b"operator secret!");
    let l = Listener::new(&key, on, HashFields::FiveTuple, pool, 251)
        .unwrap()
        .with_forwarding(forwarding)
        .with_one_sided(one_sided);
    let lb = Lb::new(Listeners::new(vec![l]).unwrap());
    let cfg = ConntrackConfig::new(*b"conntrack secret").sizes(Sizes { v4: 64, v6: 64 });
    ParseStage::default().then(Conntrack::new(cfg, lb).unwrap())
}

fn at(secs: u64) -> Instant {
    Instant::from_nanos(secs * 1_000_000_000)
}

/// A segment from the client (`sport` → VIP:80) at `secs`; its verdict.
fn client(p: &mut Pipeline, secs: u64, sport: u16, flags: u8) -> Verdict {
    let f = Frame::ipv4(CLIENT4, VIP4)
        .tcp(sport, 80, flags)
        .to_vec()
        .unwrap();
    send(p, secs, &f)
}

fn send(p: &mut Pipeline, secs: u64, f: &[u8]) -> Verdict {
    let mut batch = Batch::new();
    batch.push(Packet::with_headroom(f, 64)).ok().unwrap();
    p.process(at(secs), &mut batch);
    batch.packets()[0].meta.verdict
}

fn session(p: &Pipeline, sport: u16) -> Option<SessionInfo<LbSession>> {
    let k = FlowKey::v4(ZoneId(0), CLIENT4, VIP4, proto::TCP, sport, 80);
    let hit = p.second.lookup(&k)?;
    p.second.info(hit.session)
}

/// The session's state, whether it is established (assured), and its deadline.
fn state(p: &Pipeline, sport: u16) -> (SessionState, bool, Instant) {
    let s = session(p, sport).unwrap();
    (s.state, s.established, s.deadline)
}

fn expire(p: &mut Pipeline, secs: u64) {
    p.second.handle_timeout(at(secs), usize::MAX);
}

#[test]
fn encap_client_only_handshake_establishes_and_keeps_the_established_timeout() {
    let mut p = pipeline(Forwarding::Encap);
    let t = p.second.v4().config().timeouts;
    assert_eq!(client(&mut p, 1, 40_000, SYN), Verdict::Pass);
    let (s, est, _) = state(&p, 40_000);
    assert_eq!((s, est), (SessionState::TcpSynRecv, false));
    // The client's ACK (the backend's SYN+ACK went to it directly): established.
    assert_eq!(client(&mut p, 2, 40_000, ACK), Verdict::Pass);
    let (s, est, deadline) = state(&p, 40_000);
    assert_eq!((s, est), (SessionState::TcpEstablished, true));
    assert!(deadline >= at(2) + t.tcp_established);
    assert!(deadline <= at(2) + t.tcp_established + t.granularity);
    // Data keeps it so, refreshed; it outlives the half-open timeouts by far.
    assert_eq!(client(&mut p, 100, 40_000, PSH_ACK), Verdict::Pass);
    expire(&mut p, 100 + t.tcp_syn_sent.as_secs() * 10);
    let (s, est, _) = state(&p, 40_000);
    assert_eq!((s, est), (SessionState::TcpEstablished, true));
}

#[test]
fn encap_fin_and_rst_close_one_sided_sessions_with_the_usual_timeouts() {
    let mut p = pipeline(Forwarding::Encap);
    let t = p.second.v4().config().timeouts;
    for (sport, close, closed, timeout) in [
        (41_000, FIN_ACK, SessionState::TcpFinWait, t.tcp_fin_wait),
        (41_001, RST, SessionState::TcpClosed, t.tcp_closed),
    ] {
        // Each flow after the last one's end: the clock only moves forward.
        let t0 = 1_000 * u64::from(sport - 41_000) + 1;
        client(&mut p, t0, sport, SYN);
        client(&mut p, t0, sport, ACK);
        client(&mut p, t0 + 1, sport, PSH_ACK);
        assert_eq!(client(&mut p, t0 + 2, sport, close), Verdict::Pass);
        let (s, est, deadline) = state(&p, sport);
        assert_eq!((s, est), (closed, true));
        assert!(
            deadline <= at(t0 + 2) + timeout + t.granularity,
            "{closed:?}"
        );
        // Still there just before that timeout, gone after it (the LB's on_end ran).
        expire(&mut p, t0 + 1 + timeout.as_secs());
        assert!(session(&p, sport).is_some(), "{closed:?}");
        let end = t0 + 2 + timeout.as_secs() + 2 * t.granularity.as_secs();
        expire(&mut p, end);
        assert!(session(&p, sport).is_none(), "{closed:?}");
    }
    assert!(p.second.is_empty());
}

#[test]
fn dnat_sessions_still_need_the_backends_answer() {
    let mut p = pipeline(Forwarding::Dnat);
    client(&mut p, 1, 42_000, SYN);
    assert_eq!(state(&p, 42_000).0, SessionState::TcpSynSent);
    // An ACK without the backend's SYN+ACK establishes nothing.
    client(&mut p, 1, 42_000, ACK);
    let (s, est, _) = state(&p, 42_000);
    assert_eq!((s, est), (SessionState::TcpSynSent, false));
    let answer = Frame::ipv4(BACKEND, CLIENT4)
        .tcp(8080, 42_000, SYN_ACK)
        .to_vec()
        .unwrap();
    assert_eq!(send(&mut p, 1, &answer), Verdict::Pass);
    assert_eq!(state(&p, 42_000).0, SessionState::TcpSynRecv);
    client(&mut p, 1, 42_000, ACK);
    let (s, est, _) = state(&p, 42_000);
    assert_eq!((s, est), (SessionState::TcpEstablished, true));
}

#[test]
fn one_sided_dnat_listeners_establish_on_the_clients_ack_and_translate_answers_that_pass() {
    let mut p = pipeline_with(Forwarding::Dnat, true);
    let t = p.second.v4().config().timeouts;
    assert_eq!(client(&mut p, 1, 43_000, SYN), Verdict::Pass);
    assert_eq!(state(&p, 43_000).0, SessionState::TcpSynRecv);
    // The backend's SYN+ACK went through another node of the fleet.
    assert_eq!(client(&mut p, 2, 43_000, ACK), Verdict::Pass);
    let (s, est, deadline) = state(&p, 43_000);
    assert_eq!((s, est), (SessionState::TcpEstablished, true));
    assert!(deadline >= at(2) + t.tcp_established);
    // An answer that does pass here is un-NATed through the reply key, as ever.
    let answer = Frame::ipv4(BACKEND, CLIENT4)
        .tcp(8080, 43_000, PSH_ACK)
        .to_vec()
        .unwrap();
    let mut batch = Batch::new();
    batch.push(Packet::with_headroom(&answer, 64)).ok().unwrap();
    p.process(at(3), &mut batch);
    let out = &batch.packets()[0];
    assert_eq!(out.meta.verdict, Verdict::Pass);
    assert_eq!(out.data()[26..30], VIP4);
    assert_eq!(u16::from_be_bytes([out.data()[34], out.data()[35]]), 80);
    expire(&mut p, 3 + t.tcp_syn_sent.as_secs() * 10);
    assert_eq!(state(&p, 43_000).0, SessionState::TcpEstablished);
}
