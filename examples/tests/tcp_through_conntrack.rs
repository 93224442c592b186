//! Real TCP stacks (smoltcp) on both sides of parse → `Conntrack<TcpWindow>`, in process:
//! connections open (also simultaneously), carry a megabyte each way with losses and
//! retransmissions, and close with FIN and with RST — window tracking never drops a segment
//! a real stack sent, every packet's checksums verify on both sides of the pipeline, and the
//! session follows the TCP states.

#[path = "common/tcp_peers.rs"]
mod tcp_peers;

use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionState, TcpWindow};
use nf_core::{Chain, FlowKey, ParseStage, StageExt, ZoneId, flow::proto};
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
use tcp_peers::{Host, Lab};

type Pipeline = Chain<ParseStage, Conntrack<TcpWindow>>;

const A: [u8; 4] = [10, 0, 0, 2];
const B: [u8; 4] = [203, 0, 113, 2];
const MIB: usize = 1 << 20;

fn v4(a: [u8; 4]) -> IpAddress {
    IpAddress::Ipv4(Ipv4Address::from(a))
}

fn lab() -> Lab<Pipeline> {
    let ct = Conntrack::new(ConntrackConfig::new(*b"tcp through ct!!"), TcpWindow::new()).unwrap();
    Lab::new(
        Host::new(v4(A), 24, v4([10, 0, 0, 1])),
        Host::new(v4(B), 24, v4([203, 0, 113, 1])),
        ParseStage::default().then(ct),
    )
}

fn state(lab: &Lab<Pipeline>, sport: u16, dport: u16) -> Option<SessionState> {
    let ct = &lab.pipeline.second;
    let key = FlowKey::v4(ZoneId(0), A, B, proto::TCP, sport, dport);
    Some(ct.info(ct.lookup(&key)?.session)?.state)
}

#[test]
fn a_megabyte_each_way_with_losses_then_fin() {
    let mut lab = lab();
    // A few losses each way force retransmissions (old segments, duplicate ACKs, SACK).
    lab.lose = vec![
        (true, 30),
        (true, 31),
        (true, 200),
        (false, 50),
        (false, 400),
        (false, 401),
    ];
    let hb = lab.b.socket(64 * 1024);
    lab.b.tcp(hb).listen(80).unwrap();
    let ha = lab.a.socket(64 * 1024);
    lab.a.connect(ha, IpEndpoint::new(v4(B), 80), 40000);
    assert!(lab.run_until(1000, |l| l.a.tcp(ha).state() == State::Established));
    assert_eq!(state(&lab, 40000, 80), Some(SessionState::TcpEstablished));
    lab.exchange(ha, hb, MIB);

    lab.fin_close(ha, hb);
    assert_eq!(state(&lab, 40000, 80), Some(SessionState::TcpTimeWait));

    assert_eq!(lab.dropped, vec![], "a real stack's segments were dropped");
    assert_eq!(lab.bad_checksums, 0);
    let w = *lab.pipeline.second.service().counters();
    assert!(w.checked > 1000 && w.from_syn == 1, "{w:?}");
}

#[test]
fn reset_closes_the_session() {
    let mut lab = lab();
    let hb = lab.b.socket(8192);
    lab.b.tcp(hb).listen(80).unwrap();
    let ha = lab.a.socket(8192);
    lab.a.connect(ha, IpEndpoint::new(v4(B), 80), 40001);
    assert!(lab.run_until(1000, |l| l.b.tcp(hb).state() == State::Established));
    lab.exchange(ha, hb, 10_000);
    lab.a.tcp(ha).abort();
    assert!(lab.run_until(1000, |l| l.b.tcp(hb).state() == State::Listen
        || l.b.tcp(hb).state() == State::Closed));
    assert_eq!(state(&lab, 40001, 80), Some(SessionState::TcpClosed));
    assert_eq!(lab.dropped, vec![]);
    assert_eq!(lab.bad_checksums, 0);
}

#[test]
fn simultaneous_open() {
    let mut lab = lab();
    // Each side connects to the other at once: two SYNs cross (RFC 9293 §3.5, figure 7).
    let ha = lab.a.socket(8192);
    let hb = lab.b.socket(8192);
    lab.a.connect(ha, IpEndpoint::new(v4(B), 80), 40002);
    lab.b.connect(hb, IpEndpoint::new(v4(A), 40002), 80);
    lab.until_established(ha, hb, 5000);
    lab.exchange(ha, hb, 50_000);
    assert_eq!(state(&lab, 40002, 80), Some(SessionState::TcpEstablished));
    assert_eq!(lab.bad_checksums, 0);
}
