//! Real TCP stacks (smoltcp) on both sides of a load balancer node, in process: parse →
//! `Conntrack<(Lb, TcpWindow)>`, a client and one backend behind a VIP (DNAT: the backend
//! sees the client's own address, the client only the VIP). Node failure: mid-connection the
//! session moves to a second node (exported from the first one's conntrack, imported into a
//! fresh one, which takes the first one's place) whose pool holds more backends, so that
//! its Maglev table sends a new flow of the same 5-tuple elsewhere; the connection carries
//! on to the same backend through the new node, with a loss each way right after the
//! switch, TCP window tracking goes on from the moved state (nothing a real stack sends is
//! dropped), and FIN closes it there. The same with a replica instead: the second node
//! follows the first through its change journal from the handshake on
//! (`Conntrack::export_changes` → `Conntrack::apply`), nothing is exported when the first
//! one dies, and window tracking picks both sides up again. And a fleet whose backend answers
//! through another node than the one its client's packets pass (the backend's return route
//! hashes them elsewhere), the two nodes applying each other's change journals: with the
//! listener's sessions one-sided the connection survives two idle minutes and a pool change
//! on its backend; tracked as usual, the client's node never sees the SYN+ACK and loses the
//! session at the SYN timeout. Every packet's checksums verify before and after the
//! pipeline.

#[path = "common/tcp_peers.rs"]
mod tcp_peers;

use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionState, TcpWindow};
use nf_core::wire::Frame;
use nf_core::{
    Batch, Chain, FlowKey, Instant, Packet, ParseStage, Stage, StageControl, StageExt, ZoneId,
    flow::proto,
};
use nf_lb::{
    BackendId, HashFields, Lb, LbKey, Listener, ListenerMatch, Listeners, Pool, PoolMember,
};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
use tcp_peers::{Host, Lab};

type Pipeline = Chain<ParseStage, Conntrack<(Lb, TcpWindow)>>;

const CLIENT: [u8; 4] = [10, 0, 0, 2];
const VIP: [u8; 4] = [100, 64, 0, 1];
const BACKEND: [u8; 4] = [192, 168, 0, 10];
const BACKEND_PORT: u16 = 8080;
const MIB: usize = 1 << 20;

fn v4(a: [u8; 4]) -> IpAddress {
    IpAddress::Ipv4(Ipv4Address::from(a))
}

/// The VIP's listener over `backends` (first to last): the whole VIP, or (`one_sided`
/// given) its TCP port 80 with DNAT sessions one-sided or not (a fleet's backends answer
/// flows they got without a session through a node without it: un-NATed statelessly, to
/// the listener's port).
fn listeners(backends: &[[u8; 4]], one_sided: Option<bool>) -> Listeners {
    let key = LbKey::new(*b"tcp through lb!!");
    let pool = Pool::new(
        backends
            .iter()
            .map(|&a| PoolMember::new(BackendId::v4(a, BACKEND_PORT), 1)),
    );
    let on = match one_sided {
        None => ListenerMatch::Vip(VIP.into()),
        Some(_) => ListenerMatch::Port {
            vip: VIP.into(),
            port: 80,
            proto: proto::TCP,
        },
    };
    let l = Listener::new(&key, on, HashFields::FiveTuple, pool, 251).unwrap();
    Listeners::new(vec![l.with_one_sided(one_sided == Some(true))]).unwrap()
}

/// A node whose VIP's pool holds `backends` (first to last).
fn node(backends: &[[u8; 4]]) -> Pipeline {
    fleet_node(backends, None)
}

/// [`node`], with [`listeners`]' `one_sided`.
fn fleet_node(backends: &[[u8; 4]], one_sided: Option<bool>) -> Pipeline {
    let lb = Lb::new(listeners(backends, one_sided));
    let mut cfg = ConntrackConfig::new(*b"conntrack secret");
    // A change journal, for a replica.
    cfg.v4.journal = 64;
    let ct = Conntrack::new(cfg, (lb, TcpWindow::new()));
    ParseStage::default().then(ct.unwrap())
}

/// More backends (another Maglev table than `[BACKEND]`'s): a new flow of the tests'
/// 5-tuples goes to another backend.
const BIGGER_POOL: [[u8; 4]; 5] = [
    [192, 168, 0, 31],
    [192, 168, 0, 32],
    BACKEND,
    [192, 168, 0, 33],
    [192, 168, 0, 34],
];

/// The backend a new flow from the client's port `sport` to VIP:80 gets at node `p`.
fn new_flow_backend(p: &mut Pipeline, sport: u16) -> [u8; 4] {
    let syn = Frame::ipv4(CLIENT, VIP)
        .tcp(sport, 80, 0x02)
        .to_vec()
        .unwrap();
    let mut batch = Batch::new();
    batch.push(Packet::with_headroom(&syn, 64)).unwrap();
    p.process(Instant::ZERO, &mut batch);
    let out = batch.drain().next().unwrap();
    assert!(out.meta.verdict.is_pass());
    out.data()[30..34].try_into().unwrap()
}

fn counter(p: &Pipeline, stage: &str, name: &str) -> u64 {
    let mut v = None;
    p.visit_counters(&mut |s, c, x| {
        if s == stage && c == name {
            v = Some(x);
        }
    });
    v.unwrap_or_else(|| panic!("no counter {stage}.{name}"))
}

#[test]
fn a_connection_moves_to_another_lb_node_mid_transfer() {
    moves_mid_transfer(false);
}

#[test]
fn a_connection_fails_over_to_a_replica_lb_node_mid_transfer() {
    moves_mid_transfer(true);
}

/// The connection goes on through a second node: exported to it when the first stops, or
/// (`replica`) kept there since the handshake.
fn moves_mid_transfer(replica: bool) {
    // The new node's pool: more backends (another Maglev table), where a new flow of the
    // same 5-tuple would go to another backend.
    let mut next = node(&BIGGER_POOL);
    let mut lab = Lab::new(
        Host::new(v4(CLIENT), 24, v4([10, 0, 0, 1])),
        Host::new(v4(BACKEND), 24, v4([192, 168, 0, 1])),
        node(&[BACKEND]),
    );
    let hb = lab.b.socket(64 * 1024);
    lab.b.tcp(hb).listen(BACKEND_PORT).unwrap();
    let ha = lab.a.socket(64 * 1024);
    lab.a.connect(ha, IpEndpoint::new(v4(VIP), 80), 40_001);
    lab.until_established(ha, hb, 1000);
    // DNAT: the backend sees the client itself.
    let remote = lab.b.tcp(hb).remote_endpoint().unwrap();
    assert_eq!((remote.addr, remote.port), (v4(CLIENT), 40_001));
    let sync = |lab: &mut Lab<Pipeline>, next: &mut Pipeline| {
        let now = Instant::from_nanos(lab.now_ms * 1_000_000);
        let mut chunk = Vec::new();
        let p = lab
            .pipeline
            .second
            .export_changes(nf_core::Family::V4, now, 1024, &mut chunk)
            .unwrap();
        assert_eq!((p.lost, p.pending), (0, false));
        next.second.apply(now, &chunk).unwrap()
    };
    if replica {
        let r = sync(&mut lab, &mut next);
        assert_eq!((r.created, r.refused, r.skipped), (1, 0, 0));
    }
    lab.exchange(ha, hb, 256 * 1024);

    assert_ne!(
        new_flow_backend(&mut node(&BIGGER_POOL), 40_001),
        BACKEND,
        "the new node's choice for a new flow"
    );
    if replica {
        // The transfer made no journal event; the first node dies with nothing to send.
        let r = sync(&mut lab, &mut next);
        assert_eq!((r.created, r.refreshed, r.ended), (0, 0, 0));
        assert_eq!(next.second.take_over_replicas(|_| true), 1);
    } else {
        let now = Instant::from_nanos(lab.now_ms * 1_000_000);
        let mut chunk = Vec::new();
        let p = lab
            .pipeline
            .second
            .export(nf_core::Family::V4, now, 0, 1024, &mut chunk)
            .unwrap();
        assert_eq!((p.records, p.next), (1, None));
        let r = next.second.import(now, &chunk).unwrap();
        assert_eq!((r.imported, r.refused, r.skipped), (1, 0, 0));
    }
    lab.pipeline = next;
    lab.lose = vec![(true, lab.passed[0] + 2), (false, lab.passed[1] + 3)];
    lab.exchange(ha, hb, MIB);
    lab.fin_close(ha, hb);

    let key = FlowKey::v4(ZoneId(0), CLIENT, VIP, proto::TCP, 40_001, 80);
    let ct = &lab.pipeline.second;
    let info = ct.info(ct.lookup(&key).unwrap().session).unwrap();
    assert_eq!(info.state, SessionState::TcpTimeWait);
    assert_eq!(info.reply.src_bytes(), BACKEND, "the same backend");
    assert_eq!(lab.dropped, vec![], "a real stack's segments were dropped");
    assert_eq!(lab.bad_checksums, 0);
    assert_eq!(counter(&lab.pipeline, "lb", "imported"), 1);
    assert_eq!(
        counter(&lab.pipeline, "lb", "new_flows"),
        0,
        "no new flow at the new node"
    );
}

/// Two nodes of a fleet with asymmetric returns, as one stage for the lab: the client's
/// packets pass node `a`, the backend's answers node `b` (its return route hashed them
/// there). Every 50 ms each applies the other's change journal (the SYN+ACK comes before
/// the first copy), and each runs its timers.
struct AsymmetricFleet {
    a: Pipeline,
    b: Pipeline,
    synced: Instant,
}

impl AsymmetricFleet {
    fn sync(&mut self, now: Instant) {
        let changes = |from: &mut Pipeline| {
            let mut chunk = Vec::new();
            let p = from
                .second
                .export_changes(nf_core::Family::V4, now, 1024, &mut chunk)
                .unwrap();
            assert_eq!((p.lost, p.pending), (0, false));
            chunk
        };
        let (of_a, of_b) = (changes(&mut self.a), changes(&mut self.b));
        self.b.second.apply_from(now, 1, &of_a).unwrap();
        self.a.second.apply_from(now, 2, &of_b).unwrap();
    }
}

impl StageControl for AsymmetricFleet {
    fn name(&self) -> &'static str {
        "fleet"
    }

    fn counters(&self) -> &nf_core::StageCounters {
        self.a.counters()
    }
}

impl Stage<Vec<u8>> for AsymmetricFleet {
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        if now.saturating_since(self.synced).as_millis() >= 50 {
            self.sync(now);
            self.synced = now;
        }
        let from_client = batch
            .packets()
            .first()
            .is_some_and(|p| p.data().get(12..16) == Some(&CLIENT[..]));
        if from_client {
            self.a.process(now, batch);
        } else {
            self.b.process(now, batch);
        }
        for node in [&mut self.a, &mut self.b] {
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now, 4096);
            }
        }
    }
}

#[test]
fn a_fleet_whose_backend_answers_through_another_node_keeps_one_sided_sessions() {
    let mut lab = asymmetric_lab(true);
    let (ha, hb) = open_asymmetric(&mut lab);
    let key = FlowKey::v4(ZoneId(0), CLIENT, VIP, proto::TCP, 40_002, 80);
    let state = |p: &Pipeline| {
        let ct = &p.second;
        ct.lookup(&key)
            .and_then(|h| ct.info(h.session))
            .map(|i| i.state)
    };
    assert_eq!(state(&lab.pipeline.a), Some(SessionState::TcpEstablished));
    assert_eq!(state(&lab.pipeline.b), Some(SessionState::TcpEstablished));
    assert!(counter(&lab.pipeline.b, "lb", "stateless_replies") >= 1);
    assert_eq!(counter(&lab.pipeline.b, "lb", "new_flows"), 0);

    // Two idle minutes (past the SYN timeouts), then a pool where a new flow of the same
    // 5-tuple goes elsewhere, on both nodes: the connection carries on with its backend.
    lab.now_ms += 130_000;
    lab.step();
    assert_eq!(state(&lab.pipeline.a), Some(SessionState::TcpEstablished));
    for node in [&mut lab.pipeline.a, &mut lab.pipeline.b] {
        node.second
            .service_mut()
            .0
            .set_listeners(listeners(&BIGGER_POOL, Some(true)));
    }
    assert_ne!(
        new_flow_backend(&mut fleet_node(&BIGGER_POOL, Some(true)), 40_002),
        BACKEND,
        "a new flow's backend"
    );
    lab.exchange(ha, hb, 256 * 1024);
    lab.fin_close(ha, hb);
    assert_eq!(lab.dropped, vec![], "a real stack's segments were dropped");
    assert_eq!(lab.bad_checksums, 0);
    assert_eq!(counter(&lab.pipeline.a, "lb", "stateless"), 0);
    assert_eq!(counter(&lab.pipeline.a, "lb", "new_flows"), 1);
}

#[test]
fn tracked_as_usual_an_asymmetric_fleets_session_ends_at_the_syn_timeout() {
    let mut lab = asymmetric_lab(false);
    open_asymmetric(&mut lab);
    let key = FlowKey::v4(ZoneId(0), CLIENT, VIP, proto::TCP, 40_002, 80);
    let ct = &lab.pipeline.a.second;
    let info = ct.info(ct.lookup(&key).unwrap().session).unwrap();
    assert_eq!(
        info.state,
        SessionState::TcpSynSent,
        "the SYN+ACK passed the other node"
    );
    lab.now_ms += 130_000;
    lab.step();
    assert!(lab.pipeline.a.second.lookup(&key).is_none());
}

fn asymmetric_lab(one_sided: bool) -> Lab<AsymmetricFleet> {
    let fleet = AsymmetricFleet {
        a: fleet_node(&[BACKEND], Some(one_sided)),
        b: fleet_node(&[BACKEND], Some(one_sided)),
        synced: Instant::ZERO,
    };
    Lab::new(
        Host::new(v4(CLIENT), 24, v4([10, 0, 0, 1])),
        Host::new(v4(BACKEND), 24, v4([192, 168, 0, 1])),
        fleet,
    )
}

/// Opens the client's connection (port 40002) to the VIP through the fleet and moves
/// 64 KiB each way; the sockets.
fn open_asymmetric(
    lab: &mut Lab<AsymmetricFleet>,
) -> (smoltcp::iface::SocketHandle, smoltcp::iface::SocketHandle) {
    let hb = lab.b.socket(64 * 1024);
    lab.b.tcp(hb).listen(BACKEND_PORT).unwrap();
    let ha = lab.a.socket(64 * 1024);
    // Past the first sync: the SYN+ACK reaches node b before its copy of the session.
    lab.now_ms = 60;
    lab.a.connect(ha, IpEndpoint::new(v4(VIP), 80), 40_002);
    lab.until_established(ha, hb, 1000);
    lab.exchange(ha, hb, 64 * 1024);
    lab.run_until(100, |_| false);
    (ha, hb)
}
