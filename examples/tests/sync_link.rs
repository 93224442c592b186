//! `nf_examples::sync` between two in-process nodes over loopback TCP: sessions created on
//! one appear on the other with their origin, the ended ones go, a node that starts after
//! its peer is ready only once the peer's resync has arrived, and when a node goes away its
//! copies on the peer become orphans, each the peer's own at its first packet. With a fleet
//! key, nodes with the same key sync, and a node with another key, one without, and a hello
//! replayed from another connection are turned away; strangers that connect and say
//! nothing hold a peer's turns only from its own address.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed step should fail the test"
)]

use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionState};
use nf_core::{Direction, Duration, FlowKey, Instant, ZoneId, flow::proto};
use nf_examples::sync::{FrameMac, SyncConfig, SyncLink, read_frame};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};

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

/// The value of one of the link's counters.
fn counter(link: &SyncLink, name: &str) -> u64 {
    let mut value = None;
    link.visit_counters(&mut |_, n, v| {
        if n == name {
            value = Some(v);
        }
    });
    value.unwrap()
}

fn keyed(listen: SocketAddr, peer: SocketAddr, key: Option<[u8; 16]>) -> Node {
    let mut cfg = SyncConfig::new(listen, vec![peer]);
    cfg.key = key;
    cfg.dead_after = Duration::from_millis(300);
    Node {
        link: SyncLink::start(cfg).unwrap(),
        ct: tracker(),
    }
}

#[test]
fn a_keyed_fleet_syncs_and_turns_away_other_keys_no_key_and_replays() {
    const KEY: [u8; 16] = *b"the fleet's key!";
    let mut now = Instant::from_nanos(1_000_000_000);
    let add = |n: &mut Node, now: Instant| {
        for i in 0..3 {
            let f = flow(i);
            n.ct.v4_mut()
                .insert(now, &f, &f.reversed(), SessionState::UdpUnreplied, ())
                .unwrap();
        }
    };

    // The same key: sessions go across, every frame tagged and checked.
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = keyed(a_addr, b_addr, Some(KEY));
    let mut b = keyed(b_addr, a_addr, Some(KEY));
    add(&mut a, now);
    run(&mut now, &mut [&mut a, &mut b], |now, n| {
        n[1].link.ready(now) && n[1].ct.v4().len() == 3
    });
    for n in [&a, &b] {
        assert_eq!(counter(&n.link, "auth_failures"), 0);
        assert_eq!(counter(&n.link, "peers_connected"), 1);
    }

    // A hello replayed from another connection: built with the fleet key for the challenge
    // of a first connection, sent on a second (whose challenge differs).
    let challenge = || {
        let mut s = TcpStream::connect(a_addr).unwrap();
        let (kind, c) = read_frame(&mut s).unwrap();
        assert_eq!((kind, c.len()), (7, 16), "a challenge first");
        (s, <[u8; 16]>::try_from(c.as_slice()).unwrap())
    };
    let (first, c1) = challenge();
    drop(first);
    let nonce = [9u8; 16];
    let mut hello = vec![0, 0, 0, 0, 6];
    hello.extend(nonce);
    hello.extend(b_addr.to_string().bytes());
    FrameMac::new(&KEY, &c1, &nonce).seal(&mut hello);
    let before = counter(&a.link, "auth_failures");
    let (mut second, c2) = challenge();
    assert_ne!(c1, c2);
    second.write_all(&hello).unwrap();
    run(&mut now, &mut [&mut a, &mut b], |_, n| {
        counter(&n[0].link, "auth_failures") > before
    });
    // The real peer's link is untouched: B's copies stay B's copies of A's sessions.
    assert_eq!(counter(&b.link, "peer_down"), 0);
    assert_eq!(b.ct.v4().len(), 3);
    drop((a, b));

    // Another key, and no key: nothing goes across in either direction, and the keyed
    // side counts the refusals.
    for other in [Some(*b"some other key!!"), None] {
        let (c_addr, x_addr) = (free_addr(), free_addr());
        let mut c = keyed(c_addr, x_addr, Some(KEY));
        let mut x = keyed(x_addr, c_addr, other);
        add(&mut c, now);
        add(&mut x, now);
        run(&mut now, &mut [&mut c, &mut x], |_, n| {
            eprintln!(
                "{:?} {:?}",
                n[0].link.counters(),
                (
                    counter(&n[0].link, "auth_failures"),
                    counter(&n[0].link, "accepts"),
                    counter(&n[0].link, "unknown_peers"),
                    counter(&n[0].link, "link_errors"),
                    counter(&n[1].link, "auth_failures"),
                    counter(&n[1].link, "accepts")
                )
            );
            counter(&n[0].link, "auth_failures") >= 2
        });
        assert_eq!(c.ct.v4().len(), 3, "{other:?}");
        assert_eq!(x.ct.v4().len(), 3, "{other:?}");
        assert_eq!(c.link.counters().received_frames, 0);
        assert_eq!(x.link.counters().received_frames, 0);
        // The keyed node never took its connection to X as up (no welcome came).
        assert_eq!(counter(&c.link, "connects"), 0, "{other:?}");
    }
}

/// Gives A one session and polls both until B holds its copy (and is ready).
fn until_b_has_as_session(now: &mut Instant, a: &mut Node, b: &mut Node) {
    let f = flow(0);
    a.ct.v4_mut()
        .insert(*now, &f, &f.reversed(), SessionState::UdpUnreplied, ())
        .unwrap();
    run(now, &mut [a, b], |now, n| {
        n[1].link.ready(now) && n[1].ct.v4().len() == 1
    });
}

#[test]
fn strangers_that_connect_and_say_nothing_keep_no_peer_out() {
    const KEY: [u8; 16] = *b"the fleet's key!";
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut now = Instant::from_nanos(1_000_000_000);
    let mut b = keyed(b_addr, a_addr, Some(KEY));
    // Six silent connections to B from the peer's own address (B cannot tell them from
    // A): two take the two turns that address gets, four are closed at once; each of the
    // two is dropped after B's 300 ms wait (A's connections meanwhile closed at once: a
    // busy peer, not a refusal).
    let strangers: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(b_addr).unwrap())
        .collect();
    run(&mut now, &mut [&mut b], |_, n| {
        counter(&n[0].link, "handshakes_refused") >= 4
    });
    // A's sessions reach B over A's connection to B, which gets a slot once they are gone.
    let mut a = keyed(a_addr, b_addr, Some(KEY));
    until_b_has_as_session(&mut now, &mut a, &mut b);
    assert!(counter(&b.link, "unknown_peers") >= 2);
    for n in [&a, &b] {
        assert_eq!(counter(&n.link, "auth_failures"), 0);
    }
    drop(strangers);
}

/// Strangers from addresses that are no peer's get one handshake turn each, and half the
/// turns at most: silent connections from six addresses hold two of B's four turns for as
/// long as B waits for them (5 s here), and A, from its own address, gets a turn at once.
#[cfg(target_os = "linux")]
#[test]
fn strangers_from_many_addresses_keep_no_peer_waiting() {
    const KEY: [u8; 16] = *b"the fleet's key!";
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut now = Instant::from_nanos(1_000_000_000);
    let mut cfg = SyncConfig::new(b_addr, vec![a_addr]);
    cfg.key = Some(KEY);
    cfg.dead_after = Duration::from_secs(5);
    let mut b = Node {
        link: SyncLink::start(cfg).unwrap(),
        ct: tracker(),
    };
    let strangers: Vec<TcpStream> = (2..8u8)
        .map(|i| {
            let from = std::net::IpAddr::from([127, 0, 0, i]);
            nf_examples::io::connect_from(from, b_addr, std::time::Duration::from_secs(1)).unwrap()
        })
        .collect();
    run(&mut now, &mut [&mut b], |_, n| {
        counter(&n[0].link, "handshakes_refused") >= 4
    });
    let mut a = keyed(a_addr, b_addr, Some(KEY));
    let waited = std::time::Instant::now();
    until_b_has_as_session(&mut now, &mut a, &mut b);
    assert!(
        waited.elapsed() < std::time::Duration::from_secs(2),
        "A waited {:?} for the strangers' turns",
        waited.elapsed()
    );
    assert_eq!(counter(&b.link, "handshakes_refused"), 4);
    drop(strangers);
}

#[test]
fn a_second_accepted_key_changes_the_fleets_key_without_a_gap() {
    const OLD: [u8; 16] = *b"the old key, 128";
    const NEW: [u8; 16] = *b"the new key, 128";
    let start = Instant::from_nanos(1_000_000_000);
    let mut now = start;
    let node = |listen, peer, key, also, port: u16| {
        let mut cfg = SyncConfig::new(listen, vec![peer]);
        (cfg.key, cfg.accept_also) = (Some(key), also);
        cfg.dead_after = Duration::from_millis(300);
        let mut n = Node {
            link: SyncLink::start(cfg).unwrap(),
            ct: tracker(),
        };
        let f = flow(port);
        n.ct.v4_mut()
            .insert(start, &f, &f.reversed(), SessionState::UdpUnreplied, ())
            .unwrap();
        n
    };
    // Mid-rotation: A connects with the new key and still accepts the old, B connects with
    // the old and already accepts the new. Both ways work.
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = node(a_addr, b_addr, NEW, Some(OLD), 1);
    let mut b = node(b_addr, a_addr, OLD, Some(NEW), 2);
    run(&mut now, &mut [&mut a, &mut b], |_, n| {
        n.iter().all(|n| n.ct.v4().len() == 2)
    });
    for n in [&a, &b] {
        assert_eq!(counter(&n.link, "auth_failures"), 0);
    }
    drop((a, b));

    // Out of order: C has not learnt the new key yet. C's sessions reach A (A accepts the
    // old key); A's are refused by C.
    let (a_addr, c_addr) = (free_addr(), free_addr());
    let mut a = node(a_addr, c_addr, NEW, Some(OLD), 1);
    let mut c = node(c_addr, a_addr, OLD, None, 3);
    run(&mut now, &mut [&mut a, &mut c], |_, n| {
        n[0].ct.v4().len() == 2 && counter(&n[1].link, "auth_failures") >= 1
    });
    assert_eq!(c.ct.v4().len(), 1);

    // A second key alone is a configuration error.
    let mut cfg = SyncConfig::new(free_addr(), vec![free_addr()]);
    cfg.accept_also = Some(OLD);
    let e = SyncLink::start(cfg).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}
