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
//! one dies, and window tracking picks both sides up again. Every packet's checksums verify
//! before and after the pipeline.

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

/// A node whose VIP's pool holds `backends` (first to last).
fn node(backends: &[[u8; 4]]) -> Pipeline {
    let key = LbKey::new(*b"tcp through lb!!");
    let pool = Pool::new(
        backends
            .iter()
            .map(|&a| PoolMember::new(BackendId::v4(a, BACKEND_PORT), 1)),
    );
    let on = ListenerMatch::Vip(VIP.into());
    let l = Listener::new(&key, on, HashFields::FiveTuple, pool, 251).unwrap();
    let lb = Lb::new(Listeners::new(vec![l]).unwrap());
    let mut cfg = ConntrackConfig::new(*b"conntrack secret");
    // A change journal, for a replica.
    cfg.v4.journal = 64;
    let ct = Conntrack::new(cfg, (lb, TcpWindow::new()));
    ParseStage::default().then(ct.unwrap())
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
    let pool = [
        [192, 168, 0, 31],
        [192, 168, 0, 32],
        BACKEND,
        [192, 168, 0, 33],
        [192, 168, 0, 34],
    ];
    let mut next = node(&pool);
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

    let mut probe = node(&pool);
    let syn = Frame::ipv4(CLIENT, VIP)
        .tcp(40_001, 80, 0x02)
        .to_vec()
        .unwrap();
    let mut batch = Batch::new();
    batch.push(Packet::with_headroom(&syn, 64)).unwrap();
    probe.process(Instant::ZERO, &mut batch);
    let p = batch.drain().next().unwrap();
    assert!(p.meta.verdict.is_pass());
    assert_ne!(
        p.data()[30..34],
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
