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

/// Sends `n` bytes each way over an open pair of sockets and checks they arrive intact.
fn exchange(
    lab: &mut Lab<Pipeline>,
    ha: smoltcp::iface::SocketHandle,
    hb: smoltcp::iface::SocketHandle,
    n: usize,
) {
    let pattern = |i: usize, salt: usize| ((i * 31 + i / 977 + salt) % 251) as u8;
    let (mut sent, mut got) = ([0usize; 2], [Vec::new(), Vec::new()]);
    let done = lab.run_until(60_000, |l| {
        for (i, (from, to)) in [(ha, hb), (hb, ha)].into_iter().enumerate() {
            let (src, dst) = if i == 0 {
                (&mut l.a, &mut l.b)
            } else {
                (&mut l.b, &mut l.a)
            };
            let s = src.tcp(from);
            while sent[i] < n && s.can_send() {
                let chunk: Vec<u8> = (sent[i]..n.min(sent[i] + 4096))
                    .map(|k| pattern(k, i))
                    .collect();
                sent[i] += s.send_slice(&chunk).unwrap();
            }
            let r = dst.tcp(to);
            while r.can_recv() {
                r.recv(|b| {
                    got[i].extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
        }
        got[0].len() == n && got[1].len() == n
    });
    assert!(
        done,
        "transfer incomplete: {} and {} of {n} bytes; drops {:?}",
        got[0].len(),
        got[1].len(),
        lab.dropped
    );
    for (i, g) in got.iter().enumerate() {
        assert!(
            g.iter().enumerate().all(|(k, b)| *b == pattern(k, i)),
            "direction {i}: data corrupted"
        );
    }
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
    exchange(&mut lab, ha, hb, MIB);

    lab.a.tcp(ha).close();
    assert!(lab.run_until(1000, |l| l.b.tcp(hb).state() == State::CloseWait));
    lab.b.tcp(hb).close();
    assert!(lab.run_until(2000, |l| matches!(
        l.a.tcp(ha).state(),
        State::TimeWait | State::Closed
    )));
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
    exchange(&mut lab, ha, hb, 10_000);
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
    let open = lab.run_until(5000, |l| {
        l.a.tcp(ha).state() == State::Established && l.b.tcp(hb).state() == State::Established
    });
    assert!(
        open,
        "a {:?}, b {:?}, drops {:?}",
        lab.a.tcp(ha).state(),
        lab.b.tcp(hb).state(),
        lab.dropped
    );
    exchange(&mut lab, ha, hb, 50_000);
    assert_eq!(state(&lab, 40002, 80), Some(SessionState::TcpEstablished));
    assert_eq!(lab.bad_checksums, 0);
}
