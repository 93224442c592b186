//! `nf_examples::sync` between two in-process nodes over loopback TCP: sessions created on
//! one appear on the other with their origin, the ended ones go, a node that starts after
//! its peer is ready only once the peer's resync has arrived, and when a node goes away its
//! copies on the peer become orphans, each the peer's own at its first packet.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed step should fail the test"
)]

use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionState};
use nf_core::{Direction, Duration, FlowKey, Instant, ZoneId, flow::proto};
use nf_examples::sync::{SyncConfig, SyncLink};
use std::net::{SocketAddr, TcpListener};

type Ct = Conntrack<()>;

fn tracker() -> Ct {
    let mut cfg = ConntrackConfig::new(*b"sync link tests!");
    cfg.v4.journal = 256;
    Conntrack::new(cfg, ()).unwrap()
}

/// A loopback address with a port nobody listens on (yet).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn flow(i: u16) -> FlowKey {
    FlowKey::v4(
        ZoneId(0),
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        proto::UDP,
        1000 + i,
        53,
    )
}

struct Node {
    link: SyncLink,
    ct: Ct,
}

/// Polls the nodes (a clock 10 ms ahead per round, real time 5 ms) until `done` holds, for
/// at most 10 s of real time.
fn run(
    now: &mut Instant,
    nodes: &mut [&mut Node],
    mut done: impl FnMut(Instant, &mut [&mut Node]) -> bool,
) {
    let start = std::time::Instant::now();
    while !done(*now, nodes) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "timed out"
        );
        *now += Duration::from_millis(10);
        for n in nodes.iter_mut() {
            n.link.poll(*now, &mut n.ct);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn sessions_follow_their_node_and_a_peer_takes_them_over_when_it_goes() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut now = Instant::from_nanos(1_000_000_000);
    let mut a = Node {
        link: SyncLink::start(SyncConfig::new(a_addr, vec![b_addr])).unwrap(),
        ct: tracker(),
    };
    for i in 0..3 {
        let f = flow(i);
        a.ct.v4_mut()
            .insert(now, &f, &f.reversed(), SessionState::UdpUnreplied, ())
            .unwrap();
    }
    // A is alone: it is ready once its grace (2 s of its clock) has passed.
    run(&mut now, &mut [&mut a], |now, n| n[0].link.ready(now));

    // B starts later: A resyncs it, and only then is B ready.
    let mut b = Node {
        link: SyncLink::start(SyncConfig::new(b_addr, vec![a_addr])).unwrap(),
        ct: tracker(),
    };
    assert!(!b.link.ready(now));
    run(&mut now, &mut [&mut a, &mut b], |now, n| {
        n[1].link.ready(now)
    });
    assert_eq!(b.ct.v4().len(), 3);
    let copy = b.ct.lookup(&flow(0)).unwrap().session;
    assert_eq!(b.ct.v4().info(copy).unwrap().origin, 1);

    // Deltas: one more session, one ended.
    let f = flow(7);
    a.ct.v4_mut()
        .insert(now, &f, &f.reversed(), SessionState::UdpUnreplied, ())
        .unwrap();
    let gone = a.ct.lookup(&flow(1)).unwrap().session;
    a.ct.v4_mut().remove(gone);
    run(&mut now, &mut [&mut a, &mut b], |_, n| {
        n[1].ct.lookup(&flow(7)).is_some() && n[1].ct.lookup(&flow(1)).is_none()
    });
    assert_eq!(b.ct.v4().len(), 3);
    // Nothing B applied goes back to A.
    assert_eq!(a.ct.v4().len(), 3);

    // A goes away (its threads end, its connection to B closes): A's three copies on B
    // become orphans; the first packet of one makes it B's own, the others stay copies.
    drop(a);
    run(&mut now, &mut [&mut b], |_, n| {
        n[0].link.counters().orphaned == 3
    });
    let c = b.link.counters();
    assert_eq!((c.peer_down, c.apply_errors, c.send_dropped), (1, 0, 0));
    let hit = b.ct.lookup(&flow(7)).unwrap().session;
    b.ct.v4_mut()
        .track(hit, now, Direction::Original, 0)
        .unwrap();
    assert_eq!(b.ct.v4().info(hit).unwrap().origin, 0);
    assert_eq!(b.ct.v4().counters().orphans_adopted, 1);
    let other = b.ct.lookup(&flow(0)).unwrap().session;
    assert_eq!(b.ct.v4().info(other).unwrap().origin, 1);
}
