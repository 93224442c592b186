//! Continuous session sync (`export_changes` → `apply`): a replica that applies every delta
//! holds exactly its primary's sessions; ends come before re-creations; the replica's own
//! applied changes are not echoed; lost events are reported and a sweep repairs lifetimes;
//! damaged chunks are rejected without a change.
#![expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{ImportError, SessionState, SessionTable, TableConfig, V4Key, V6Key};
use nf_core::flow::proto;
use nf_core::{Direction, Duration, FlowKey, Instant, SessionRef, ZoneId};
use proptest::prelude::*;
use std::collections::HashMap;

type Table = SessionTable<V4Key, u32>;

fn cfg(capacity: u32, journal: u32) -> TableConfig {
    let mut c = TableConfig::new(capacity, *b"shared by nodes!");
    c.cross_zone = true;
    c.journal = journal;
    c
}

fn flow(i: u32) -> FlowKey {
    let [_, b, c, d] = i.to_be_bytes();
    let p = [proto::TCP, proto::UDP, proto::ICMP][(i % 3) as usize];
    FlowKey::v4(
        ZoneId(i % 3),
        [10, b, c, d],
        [172, 16, 0, 1],
        p,
        1000 + (i % 5000) as u16,
        80,
    )
}

/// A NAT-style reply key for `f` (public address and port `port`).
fn nat_reply(f: &FlowKey, port: u16) -> FlowKey {
    let mut r = FlowKey::v4(f.zone, [172, 16, 0, 1], [100, 64, 0, 1], f.proto, 80, port);
    if f.proto == proto::ICMP {
        r = f.reversed();
        r.src_port = port;
        r.dst_port = port;
    }
    r
}

/// Opens a UDP session of `flow(i)` (value `i`).
fn open_udp(t: &mut Table, now: Instant, i: u32) -> SessionRef {
    t.insert(
        now,
        &flow(i),
        &flow(i).reversed(),
        SessionState::UdpUnreplied,
        i,
    )
    .unwrap()
}

/// Drains `a`'s journal into `b` in chunks of `max` events; returns events lost.
fn sync(a: &mut Table, b: &mut Table, now: Instant, max: usize) -> u64 {
    let mut lost = 0;
    loop {
        let mut buf = Vec::new();
        let p = a.export_changes(now, max, &mut buf);
        lost += p.lost;
        let r = b.apply(now, &buf).unwrap();
        assert_eq!(r.ended + r.absent, p.ended);
        assert_eq!(r.created + r.refreshed, p.changed, "{r:?}");
        if !p.pending {
            return lost;
        }
    }
}

/// A full resync of `b` from `a` (after lost events): every copy unconfirmed, `a`'s
/// sessions sent whole, the unconfirmed rest removed.
fn resync(a: &Table, b: &mut Table, now: Instant) {
    b.begin_resync(|_| true);
    let mut buf = Vec::new();
    a.export(now, 0, usize::MAX, &mut buf);
    let r = b.apply(now, &buf).unwrap();
    assert_eq!(r.skipped, 0, "the replica holds what its primary holds");
    b.end_resync();
}

/// `b` holds exactly the sessions of `model` (`a`'s), with `a`'s states.
fn assert_same(
    a: &Table,
    b: &Table,
    model: &HashMap<SessionRef, (FlowKey, FlowKey)>,
    now: Instant,
) {
    assert_eq!(a.len(), model.len());
    assert_eq!(b.len(), a.len());
    for (&h, (o, r)) in model {
        let ia = a.info(h).unwrap();
        let hb = b.lookup(o).unwrap();
        assert_eq!(hb.direction, Direction::Original);
        let hr = b.lookup(r).unwrap();
        assert_eq!((hr.session, hr.direction), (hb.session, Direction::Reply));
        let ib = b.info(hb.session).unwrap();
        assert_eq!(
            (ia.original, ia.reply, ia.state, ia.established, ia.value),
            (ib.original, ib.reply, ib.state, ib.established, ib.value)
        );
        // Traffic refreshes the primary's deadline without a journal event (the sweep
        // carries it, see below): the replica's is the one of the last event, never later.
        // (A session overdue on the primary, not yet swept, arrives with no time left: the
        // replica's deadline is `now`, rounded up to the 1 s timer granularity.)
        let bound = ia.deadline.max(now) + Duration::from_secs(1);
        assert!(ib.deadline <= bound, "replica {ib:?}, primary {ia:?}");
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u32, Option<u16>),
    Establish(usize),
    Track(usize, bool, u8),
    Replace(usize, u16),
    Remove(usize),
    Advance(u16),
    Expire,
    Sync(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..400, proptest::option::of(1u16..60)).prop_map(|(i, p)| Op::Insert(i, p)),
        1 => any::<usize>().prop_map(Op::Establish),
        2 => (any::<usize>(), any::<bool>(), any::<u8>()).prop_map(|(i, r, f)| Op::Track(i, r, f)),
        1 => (any::<usize>(), 1u16..60).prop_map(|(i, p)| Op::Replace(i, p)),
        2 => any::<usize>().prop_map(Op::Remove),
        1 => (0u16..20_000).prop_map(Op::Advance),
        1 => Just(Op::Expire),
        1 => (1usize..20).prop_map(Op::Sync),
    ]
}

fn nth(model: &HashMap<SessionRef, (FlowKey, FlowKey)>, i: usize) -> Option<SessionRef> {
    let mut keys: Vec<_> = model.keys().copied().collect();
    keys.sort_by_key(|h| (h.index(), h.generation()));
    keys.get(i % keys.len().max(1)).copied()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the primary does (inserts with either reply key, state changes, reply
    /// changes, removals, expiry, early drop at a full table), after a full drain the
    /// replica holds exactly its sessions: keys, states, establishment, values. With a short
    /// journal events are lost, and a full resync after the drain repairs the replica.
    #[test]
    fn replica_equals_primary_after_every_sync(
        ops in proptest::collection::vec(op(), 1..300),
        journal in prop_oneof![Just(6u32), Just(4096)],
    ) {
        let mut a = Table::new(cfg(128, journal)).unwrap();
        let mut b = Table::new(cfg(128, 0)).unwrap();
        let mut model: HashMap<SessionRef, (FlowKey, FlowKey)> = HashMap::new();
        let mut now = Instant::from_nanos(1_000_000_000);
        for op in ops {
            match op {
                Op::Insert(i, port) => {
                    let f = flow(i);
                    let r = port.map_or(f.reversed(), |p| nat_reply(&f, p));
                    let st = SessionState::initial(f.proto, 0x02);
                    if let Ok(h) = a.insert(now, &f, &r, st, i) {
                        model.insert(h, (f, r));
                    }
                }
                Op::Establish(i) => {
                    if let Some(h) = nth(&model, i) {
                        let s = a.state(h).unwrap();
                        a.set_state(h, now, s, true);
                    }
                }
                Op::Track(i, reply, flags) => {
                    if let Some(h) = nth(&model, i) {
                        let d = if reply { Direction::Reply } else { Direction::Original };
                        a.track(h, now, d, flags & 0x17);
                    }
                }
                Op::Replace(i, port) => {
                    if let Some(h) = nth(&model, i) {
                        let r = nat_reply(&model[&h].0, port);
                        if a.replace_reply(h, &r).is_ok() {
                            model.get_mut(&h).unwrap().1 = r;
                        }
                    }
                }
                Op::Remove(i) => {
                    if let Some(h) = nth(&model, i) {
                        a.remove(h);
                        model.remove(&h);
                    }
                }
                Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
                Op::Expire => {
                    a.handle_timeout(now, usize::MAX);
                }
                Op::Sync(max) => {
                    model.retain(|h, _| a.is_live(*h));
                    let lost = sync(&mut a, &mut b, now, max);
                    prop_assert!(lost == 0 || journal < 4096);
                    if lost > 0 {
                        resync(&a, &mut b, now);
                    }
                    assert_same(&a, &b, &model, now);
                }
            }
            model.retain(|h, _| a.is_live(*h));
        }
        if sync(&mut a, &mut b, now, 1 << 20) > 0 {
            resync(&a, &mut b, now);
        }
        assert_same(&a, &b, &model, now);
    }
}

#[test]
fn a_key_that_ended_and_opened_again_is_replaced_not_lost() {
    let now = Instant::from_nanos(5_000_000_000);
    let mut a = Table::new(cfg(64, 64)).unwrap();
    let mut b = Table::new(cfg(64, 0)).unwrap();
    let f = flow(7);
    let old = a
        .insert(now, &f, &nat_reply(&f, 10), SessionState::UdpUnreplied, 1)
        .unwrap();
    assert_eq!(sync(&mut a, &mut b, now, 100), 0);
    // Between two drains: the session ends and the same flow opens again on another port.
    a.remove(old);
    let new = a
        .insert(now, &f, &nat_reply(&f, 11), SessionState::UdpUnreplied, 2)
        .unwrap();
    let mut buf = Vec::new();
    let p = a.export_changes(now, 100, &mut buf);
    assert_eq!((p.ended, p.changed, p.pending), (1, 1, false));
    let r = b.apply(now, &buf).unwrap();
    assert_eq!((r.ended, r.created, r.replaced), (1, 1, 0));
    let h = b.lookup(&f).unwrap();
    assert_eq!(b.info(h.session).unwrap().reply, a.info(new).unwrap().reply);
    assert!(b.lookup(&nat_reply(&f, 10)).is_none());
    // A drain bounded to one event sends the end first and the new session next time.
    a.remove(new);
    a.insert(now, &f, &nat_reply(&f, 12), SessionState::UdpUnreplied, 3)
        .unwrap();
    buf.clear();
    let p = a.export_changes(now, 1, &mut buf);
    assert_eq!((p.ended, p.changed, p.pending), (1, 0, true));
    b.apply(now, &buf).unwrap();
    assert!(b.is_empty());
    assert_eq!(sync(&mut a, &mut b, now, 1), 0);
    assert_eq!(b.info(b.lookup(&f).unwrap().session).unwrap().value, 3);
}

#[test]
fn two_nodes_replicating_to_each_other_do_not_echo() {
    let now = Instant::from_nanos(5_000_000_000);
    let mut a = Table::new(cfg(64, 64)).unwrap();
    let mut b = Table::new(cfg(64, 64)).unwrap();
    let ha = open_udp(&mut a, now, 1);
    open_udp(&mut b, now, 2);
    sync(&mut a, &mut b, now, 100);
    sync(&mut b, &mut a, now, 100);
    assert_eq!((a.len(), b.len()), (2, 2));
    // What each applied is not in its own journal: the next drains are empty.
    for t in [&mut a, &mut b] {
        let mut buf = Vec::new();
        let p = t.export_changes(now, 100, &mut buf);
        assert_eq!((p.ended, p.changed), (0, 0));
    }
    // An end on one side travels once.
    a.remove(ha);
    sync(&mut a, &mut b, now, 100);
    let mut buf = Vec::new();
    let p = b.export_changes(now, 100, &mut buf);
    assert_eq!((p.ended, p.changed, b.len()), (0, 0, 1));
}

#[test]
fn a_full_journal_reports_lost_events_and_a_sweep_repairs_the_replica() {
    let now = Instant::from_nanos(5_000_000_000);
    let mut a = Table::new(cfg(256, 8)).unwrap();
    let mut b = Table::new(cfg(256, 0)).unwrap();
    for i in 0..20 {
        open_udp(&mut a, now, i);
    }
    assert_eq!(a.counters().journal_lost, 12);
    let mut buf = Vec::new();
    let p = a.export_changes(now, 100, &mut buf);
    assert_eq!((p.changed, p.lost), (8, 12));
    b.apply(now, &buf).unwrap();
    assert_eq!(b.len(), 8);
    // The sweep: a full export, applied. Sessions present are refreshed, missing ones made.
    let later = now + Duration::from_secs(10);
    let mut sweep = Vec::new();
    a.export(later, 0, usize::MAX, &mut sweep);
    let r = b.apply(later, &sweep).unwrap();
    assert_eq!((r.created, r.refreshed), (12, 8));
    assert_eq!(b.len(), 20);
    // Traffic keeps a session alive on the primary; no journal event says so, the sweep does.
    let h = a.lookup(&flow(3)).unwrap().session;
    let much_later = later + Duration::from_secs(25);
    assert!(a.refresh(h, much_later));
    sweep.clear();
    a.export(much_later, 0, usize::MAX, &mut sweep);
    b.apply(much_later, &sweep).unwrap();
    let hb = b.lookup(&flow(3)).unwrap().session;
    assert_eq!(b.info(hb).unwrap().deadline, a.info(h).unwrap().deadline);
}

#[test]
fn the_replica_ignores_zone_quotas_its_primary_applied_at_admission() {
    // The primary admitted these sessions; the replica, whose quota was lowered, holds them.
    let now = Instant::from_nanos(5_000_000_000);
    let mut a = Table::new(cfg(64, 64)).unwrap();
    let mut b = Table::new(cfg(64, 0)).unwrap();
    b.set_zone_quota(ZoneId(0), 1).unwrap();
    for i in [0, 3, 6, 9] {
        open_udp(&mut a, now, i);
    }
    sync(&mut a, &mut b, now, 100);
    assert_eq!((b.len(), b.counters().early_drops), (4, 0));
}

#[test]
fn damaged_or_foreign_chunks_change_nothing() {
    let now = Instant::from_nanos(5_000_000_000);
    let mut a = Table::new(cfg(64, 64)).unwrap();
    let mut b = Table::new(cfg(64, 0)).unwrap();
    for i in 0..6 {
        open_udp(&mut a, now, i);
    }
    sync(&mut a, &mut b, now, 100);
    let h = a.lookup(&flow(0)).unwrap().session;
    a.remove(h);
    open_udp(&mut a, now, 9);
    let mut buf = Vec::new();
    let p = a.export_changes(now, 100, &mut buf);
    assert_eq!((p.ended, p.changed), (1, 1));
    for n in 0..buf.len() {
        assert!(b.apply(now, &buf[..n]).is_err(), "truncated to {n}");
    }
    for i in 0..buf.len() {
        let mut c = buf.clone();
        c[i] ^= 0x04;
        assert!(b.apply(now, &c).is_err(), "flip at {i}");
    }
    assert_eq!(b.len(), 6);
    assert!(b.lookup(&flow(0)).is_some());
    let mut v6: SessionTable<V6Key, u32> = SessionTable::new(cfg(64, 0)).unwrap();
    assert_eq!(v6.apply(now, &buf), Err(ImportError::WrongFamily));
    let mut wide: SessionTable<V4Key, u64> = SessionTable::new(cfg(64, 0)).unwrap();
    assert_eq!(wide.apply(now, &buf), Err(ImportError::ValueLength));
    let mut bad = buf.clone();
    bad[4] = 2;
    assert_eq!(b.apply(now, &bad), Err(ImportError::Version(2)));
    let r = b.apply(now, &buf).unwrap();
    assert_eq!((r.ended, r.created), (1, 1));
}

#[test]
fn a_replica_copy_that_expires_does_not_end_its_primarys_session() {
    // Two nodes replicating to each other. A's session lives on by traffic, which no journal
    // event reports; B's copy expires on B's own timers. That end is A's to decide: B's
    // journal does not carry it, and A's session stays.
    let now = Instant::from_nanos(5_000_000_000);
    let mut a = Table::new(cfg(64, 64)).unwrap();
    let mut b = Table::new(cfg(64, 64)).unwrap();
    let h = open_udp(&mut a, now, 1);
    sync(&mut a, &mut b, now, 100);
    let later = now + Duration::from_secs(600);
    assert!(a.refresh(h, later));
    b.handle_timeout(later, usize::MAX);
    assert!(b.is_empty(), "the copy expired");
    let mut buf = Vec::new();
    let p = b.export_changes(later, 100, &mut buf);
    assert_eq!((p.ended, p.changed), (0, 0));
    a.apply(later, &buf).unwrap();
    assert!(a.is_live(h));
}

#[test]
fn a_sweep_sends_a_nodes_own_sessions_not_its_copies_of_its_peers() {
    let now = Instant::from_nanos(5_000_000_000);
    let mut a = Table::new(cfg(64, 64)).unwrap();
    let mut b = Table::new(cfg(64, 64)).unwrap();
    for i in 0..3 {
        open_udp(&mut a, now, i);
    }
    for i in 10..14 {
        open_udp(&mut b, now, i);
    }
    sync(&mut a, &mut b, now, 100);
    sync(&mut b, &mut a, now, 100);
    assert_eq!((a.len(), b.len()), (7, 7));
    // Each node's sweep (or resync) holds its own sessions only: B's copies of A's three
    // never come back to A as records, which would refresh A's own sessions from a copy.
    let mut buf = Vec::new();
    let p = b.export(now, 0, usize::MAX, &mut buf);
    assert_eq!((p.records, p.next), (4, None));
    let r = a.apply(now, &buf).unwrap();
    assert_eq!((r.created, r.refreshed), (0, 4));
    // A resync of B from A keeps B's own sessions and A's three copies.
    resync(&a, &mut b, now);
    assert_eq!(b.len(), 7);
    // A dies in the middle of its next resync: B takes its copies over, and the resync
    // that never finished removes none of them.
    b.begin_resync(|_| true);
    assert_eq!(b.take_over_replicas(|_| true), 3);
    assert_eq!(b.end_resync(), 0);
    assert_eq!(b.len(), 7);
    // Taken over, the copies are exported like any own session.
    buf.clear();
    assert_eq!(b.export(now, 0, usize::MAX, &mut buf).records, 7);
}

#[test]
fn a_node_replicated_by_two_primaries_handles_each_by_its_origin() {
    let now = Instant::from_nanos(5_000_000_000);
    let (mut a, mut b) = (
        Table::new(cfg(64, 64)).unwrap(),
        Table::new(cfg(64, 64)).unwrap(),
    );
    let mut c = Table::new(cfg(64, 64)).unwrap();
    for i in 0..4 {
        open_udp(&mut a, now, i);
        open_udp(&mut b, now, 20 + i);
    }
    let drain = |from: &mut Table, origin: u8, to: &mut Table| {
        let mut buf = Vec::new();
        from.export_changes(now, 100, &mut buf);
        to.apply_from(now, origin, &buf).unwrap()
    };
    assert_eq!(drain(&mut a, 1, &mut c).created, 4);
    assert_eq!(drain(&mut b, 2, &mut c).created, 4);
    let origin = |t: &Table, i: u32| t.info(t.lookup(&flow(i)).unwrap().session).unwrap().origin;
    assert_eq!((origin(&c, 0), origin(&c, 20)), (1, 2));
    // The primaries' own sessions have no origin.
    assert_eq!(origin(&a, 0), 0);
    // A lost events (two of its sessions ended unseen) and resyncs C: only A's copies are
    // in question, and B's stay whatever A sends.
    for i in [2, 3] {
        let h = a.lookup(&flow(i)).unwrap().session;
        a.remove(h);
    }
    a.export_changes(now, 100, &mut Vec::new());
    assert_eq!(c.begin_resync(|s| s.origin == 1), 4);
    let mut sweep = Vec::new();
    a.export(now, 0, usize::MAX, &mut sweep);
    assert_eq!(c.apply_from(now, 1, &sweep).unwrap().refreshed, 2);
    assert_eq!(c.end_resync_where(|s| s.origin == 1), 2);
    assert_eq!(c.len(), 6);
    // B fails: C takes over B's four, not A's two.
    assert_eq!(c.take_over_replicas(|s| s.origin == 2), 4);
    assert_eq!((origin(&c, 0), origin(&c, 20)), (1, 0));
    // A copy refreshed by another sender takes that sender as its origin (a flow whose
    // session a surviving node took over and now sends on).
    let mut d = Table::new(cfg(64, 64)).unwrap();
    assert_eq!(
        drain(&mut a, 3, &mut d).created,
        0,
        "A's journal is drained"
    );
    let mut chunk = Vec::new();
    a.export(now, 0, usize::MAX, &mut chunk);
    assert_eq!(d.apply_from(now, 3, &chunk).unwrap().created, 2);
    assert_eq!(d.apply_from(now, 4, &chunk).unwrap().refreshed, 2);
    assert_eq!(origin(&d, 0), 4);
}

#[test]
fn orphans_become_own_sessions_one_packet_at_a_time() {
    let now = Instant::from_nanos(5_000_000_000);
    let mut a = Table::new(cfg(64, 64)).unwrap();
    let mut b = Table::new(cfg(64, 64)).unwrap();
    for i in 0..4 {
        open_udp(&mut a, now, i);
    }
    let mut buf = Vec::new();
    a.export_changes(now, 100, &mut buf);
    assert_eq!(b.apply_from(now, 1, &buf).unwrap().created, 4);
    // A is taken as failed, but it was only slow: its next records make the orphans plain
    // copies again, which a packet does not adopt.
    assert_eq!(b.orphan_replicas(|s| s.origin == 1), 4);
    buf.clear();
    a.export(now, 0, usize::MAX, &mut buf);
    assert_eq!(b.apply_from(now, 1, &buf).unwrap().refreshed, 4);
    let h0 = b.lookup(&flow(0)).unwrap().session;
    b.track(h0, now, Direction::Original, 0).unwrap();
    assert_eq!(b.info(h0).unwrap().origin, 1);
    assert_eq!(b.counters().orphans_adopted, 0);
    // A fails: its copies on B are orphans, nothing journaled yet.
    assert_eq!(b.orphan_replicas(|s| s.origin == 1), 4);
    buf.clear();
    assert_eq!(b.export_changes(now, 100, &mut buf).changed, 0);
    // A packet of flow 2 reaches B: that session, and only it, is B's own now, its state
    // moved as the packet says (the reply made the UDP session replied).
    let h2 = b.lookup(&flow(2)).unwrap().session;
    b.track(h2, now, Direction::Reply, 0).unwrap();
    assert_eq!(b.info(h2).unwrap().origin, 0);
    assert_eq!(b.state(h2), Some(SessionState::UdpReplied));
    assert_eq!(b.counters().orphans_adopted, 1);
    buf.clear();
    assert_eq!(b.export_changes(now, 100, &mut buf).changed, 1);
    // The others are still copies: a full export leaves them out.
    buf.clear();
    assert_eq!(b.export(now, 0, usize::MAX, &mut buf).records, 1);
    // Orphans no packet reaches expire as copies: only the adopted session's end is
    // journaled.
    let later = now + Duration::from_secs(3600);
    while b.poll_timeout().is_some_and(|t| t <= later) {
        b.handle_timeout(later, 1024);
    }
    assert!(b.is_empty());
    buf.clear();
    let p = b.export_changes(later, 100, &mut buf);
    assert_eq!((p.ended, p.changed), (1, 0));
}

#[test]
fn taking_replicas_over_makes_them_journaled_sessions() {
    let now = Instant::from_nanos(5_000_000_000);
    let mut a = Table::new(cfg(64, 64)).unwrap();
    let mut b = Table::new(cfg(64, 64)).unwrap();
    for i in 0..6 {
        open_udp(&mut a, now, i);
    }
    sync(&mut a, &mut b, now, 100);
    // A replica copy's changes are its primary's to send.
    let h1 = b.lookup(&flow(1)).unwrap().session;
    b.set_state(h1, now, SessionState::UdpReplied, true);
    let mut buf = Vec::new();
    assert_eq!(b.export_changes(now, 100, &mut buf).changed, 0);
    // A fails; B takes over the sessions of the even flows (its share of A's, say).
    let even = |s: &nf_core::conntrack::SessionInfo<u32>| s.value.is_multiple_of(2);
    assert_eq!(b.take_over_replicas(even), 3);
    assert_eq!(b.take_over_replicas(even), 0, "once");
    // They go to B's own replica now, and so do their ends; the odd ones stay copies.
    let mut c = Table::new(cfg(64, 0)).unwrap();
    let r = {
        buf.clear();
        b.export_changes(now, 100, &mut buf);
        c.apply(now, &buf).unwrap()
    };
    assert_eq!(r.created, 3);
    for i in 0..6 {
        let h = b.lookup(&flow(i)).unwrap().session;
        b.remove(h);
    }
    buf.clear();
    let p = b.export_changes(now, 100, &mut buf);
    assert_eq!((p.ended, p.changed), (3, 0));
    assert_eq!(c.apply(now, &buf).unwrap().ended, 3);
    assert!(c.is_empty());
}
