//! Model-based test: arbitrary sequences of insert / lookup (either direction) / batch lookup /
//! replace-reply / establish / refresh / remove / advance time / expire / export-import
//! against a plain `HashMap` model, same answers at every step. Reply keys may be in another
//! zone than the original (cross-zone sessions): each key is found only in its own zone.
#![expect(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{
    InsertError, NewSession, ReplaceError, SessionState, SessionTable, TableConfig, TimeoutProfile,
    V4Key,
};
use nf_core::flow::proto;
use nf_core::{Direction, Duration, FlowKey, Instant, SessionRef, ZoneId};
use proptest::prelude::*;
use std::collections::HashMap;

const CAP: u32 = 24;
const G: u64 = 1_000_000_000;

type Tup = (u8, u8, u8, u8);

#[derive(Clone, Debug)]
enum Op {
    Insert {
        o: (u8, u8, u8, u8),
        r: Option<(u8, u8, u8, u8)>,
        zone: u8,
        /// The reply key's zone when it differs from `zone` (a cross-zone session).
        reply_zone: Option<u8>,
        udp: bool,
        state: u8,
        value: u64,
    },
    Lookup((u8, u8, u8, u8), u8, bool, bool),
    Batch(Vec<(Tup, u8, bool)>),
    Replace(usize, (u8, u8, u8, u8), Option<u8>),
    Establish(usize),
    Refresh(usize),
    Remove(usize),
    RemoveStale(usize),
    Advance(u32),
    Expire,
    /// Export everything, import into a fresh table: the same sessions from both sides.
    Roundtrip,
}

fn tup() -> impl Strategy<Value = (u8, u8, u8, u8)> {
    (0u8..3, 0u8..3, 0u8..3, 0u8..3)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (tup(), proptest::option::of(tup()), 0u8..3, proptest::option::weighted(0.3, 0u8..3), any::<bool>(), 0u8..11, any::<u64>())
            .prop_map(|(o, r, zone, reply_zone, udp, state, value)| Op::Insert { o, r, zone, reply_zone, udp, state, value }),
        4 => (tup(), 0u8..3, any::<bool>(), any::<bool>()).prop_map(|(t, z, u, rev)| Op::Lookup(t, z, u, rev)),
        2 => proptest::collection::vec((tup(), 0u8..3, any::<bool>()), 0..70).prop_map(Op::Batch),
        2 => (any::<usize>(), tup(), proptest::option::weighted(0.3, 0u8..3)).prop_map(|(i, t, z)| Op::Replace(i, t, z)),
        2 => any::<usize>().prop_map(Op::Establish),
        1 => any::<usize>().prop_map(Op::Refresh),
        2 => any::<usize>().prop_map(Op::Remove),
        1 => any::<usize>().prop_map(Op::RemoveStale),
        2 => (0u32..15_000).prop_map(Op::Advance),
        2 => Just(Op::Expire),
        1 => Just(Op::Roundtrip),
    ]
}

fn key(t: (u8, u8, u8, u8), zone: u8, udp: bool) -> FlowKey {
    let p = if udp { proto::UDP } else { proto::TCP };
    FlowKey::v4(
        ZoneId(u32::from(zone)),
        [10, 0, 0, t.0],
        [10, 0, 0, t.1],
        p,
        1000 + u16::from(t.2),
        1000 + u16::from(t.3),
    )
}

fn profile() -> TimeoutProfile {
    let s = Duration::from_secs;
    let mut p = TimeoutProfile::default();
    p.granularity = Duration::from_nanos(G);
    p.tcp_syn_sent = s(3);
    p.tcp_syn_recv = s(4);
    p.tcp_established = s(20);
    p.tcp_fin_wait = s(5);
    p.tcp_close_wait = s(6);
    p.tcp_time_wait = s(7);
    p.tcp_closed = s(1);
    p.udp_unreplied = s(2);
    p.udp_replied = s(9);
    p.icmp = s(3);
    p.other = s(8);
    p
}

#[derive(Clone, Debug)]
struct M {
    orig: FlowKey,
    reply: FlowKey,
    value: u64,
    state: SessionState,
    assured: bool,
    deadline: u64,
    seq: u64,
    handle: SessionRef,
}

struct Model {
    sessions: Vec<M>,
    quotas: HashMap<u32, u32>,
    seq: u64,
}

impl Model {
    fn find(&self, k: &FlowKey) -> Option<(usize, Direction)> {
        self.sessions
            .iter()
            .position(|s| s.orig == *k)
            .map(|i| (i, Direction::Original))
            .or_else(|| {
                self.sessions
                    .iter()
                    .position(|s| s.reply == *k)
                    .map(|i| (i, Direction::Reply))
            })
    }
    fn zone_count(&self, z: u32) -> u32 {
        self.sessions.iter().filter(|s| s.orig.zone.0 == z).count() as u32
    }
    fn quota(&self, z: u32) -> u32 {
        self.quotas.get(&z).copied().unwrap_or(CAP)
    }
}

fn deadline(now: Instant, t: Duration) -> u64 {
    (now.as_nanos() + t.as_nanos()).div_ceil(G)
}

fn run(ops: Vec<Op>) {
    let mut cfg = TableConfig::new(CAP, [42; 16]);
    cfg.timeouts = profile();
    cfg.wheel_slots = 64;
    cfg.cross_zone = true;
    let mut t: SessionTable<V4Key, u64> = SessionTable::new(cfg).unwrap();
    let mut m = Model {
        sessions: Vec::new(),
        quotas: HashMap::new(),
        seq: 0,
    };
    t.set_zone_quota(ZoneId(0), 8).unwrap();
    m.quotas.insert(0, 8);
    t.set_zone_quota(ZoneId(1), 12).unwrap();
    m.quotas.insert(1, 12);
    let mut now = Instant::from_nanos(5 * G + 123);
    let mut stale: Vec<SessionRef> = Vec::new();
    for op in ops {
        match op {
            Op::Insert {
                o,
                r,
                zone,
                reply_zone,
                udp,
                state,
                value,
            } => {
                let ok = key(o, zone, udp);
                let mut rk = r.map_or(ok.reversed(), |r| key(r, zone, udp));
                rk.zone = ZoneId(u32::from(reply_zone.unwrap_or(zone)));
                let st = SessionState::from_u8(state).unwrap();
                let got = t.insert(now, &ok, &rk, st, value);
                // Model.
                let want = if ok == rk {
                    Err(InsertError::SameKeys)
                } else if m.find(&ok).is_some() || m.find(&rk).is_some() {
                    Err(InsertError::KeyExists)
                } else {
                    let z = u32::from(zone);
                    let count = m.zone_count(z);
                    let quota = m.quota(z);
                    let over = count >= quota;
                    let full = m.sessions.len() as u32 >= CAP;
                    let mut res = Ok(());
                    if over || full {
                        let victim = m
                            .sessions
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.orig.zone.0 == z && !s.assured)
                            .min_by_key(|(_, s)| s.seq)
                            .map(|(i, _)| i);
                        match victim {
                            Some(i) if count <= quota => {
                                let v = m.sessions.remove(i);
                                stale.push(v.handle);
                            }
                            _ => {
                                res = Err(if full {
                                    InsertError::TableFull
                                } else {
                                    InsertError::ZoneQuota
                                })
                            }
                        }
                    }
                    res
                };
                match (got, want) {
                    (Ok(h), Ok(())) => {
                        m.seq += 1;
                        m.sessions.push(M {
                            orig: ok,
                            reply: rk,
                            value,
                            state: st,
                            assured: false,
                            deadline: deadline(now, profile().timeout(st)),
                            seq: m.seq,
                            handle: h,
                        });
                    }
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    (a, b) => panic!("insert: table {a:?}, model {b:?}"),
                }
            }
            Op::Lookup(tp, z, udp, rev) => {
                let mut k = key(tp, z, udp);
                if rev {
                    k = k.reversed();
                }
                let got = t.lookup(&k).map(|h| (h.session, h.direction));
                let want = m.find(&k).map(|(i, d)| (m.sessions[i].handle, d));
                assert_eq!(got, want, "lookup {k}");
                if let Some((h, _)) = got {
                    assert_eq!(t.value(h), Some(&m.sessions[m.find(&k).unwrap().0].value));
                }
            }
            Op::Batch(ks) => {
                let keys: Vec<FlowKey> = ks.iter().map(|&(tp, z, u)| key(tp, z, u)).collect();
                let mut out = [None; 64];
                let mask = t.lookup_batch(&keys, &mut out);
                for (i, k) in keys.iter().enumerate().take(64) {
                    assert_eq!(out[i], t.lookup(k), "batch vs single {k}");
                    assert_eq!(mask >> i & 1 == 1, out[i].is_some());
                }
                if keys.len() < 64 {
                    assert_eq!(mask >> keys.len(), 0);
                }
            }
            Op::Replace(i, tp, z) => {
                if m.sessions.is_empty() {
                    continue;
                }
                let i = i % m.sessions.len();
                let s = m.sessions[i].clone();
                let z = z.unwrap_or(s.orig.zone.0 as u8);
                let nk = key(tp, z, s.orig.proto == proto::UDP);
                let got = t.replace_reply(s.handle, &nk);
                let want = if nk == s.reply {
                    Ok(())
                } else if m.find(&nk).is_some() {
                    Err(ReplaceError::KeyExists)
                } else {
                    m.sessions[i].reply = nk;
                    Ok(())
                };
                assert_eq!(got, want);
            }
            Op::Establish(i) => {
                if m.sessions.is_empty() {
                    continue;
                }
                let i = i % m.sessions.len();
                assert!(t.set_state(
                    m.sessions[i].handle,
                    now,
                    SessionState::TcpEstablished,
                    true
                ));
                let s = &mut m.sessions[i];
                s.assured = true;
                s.state = SessionState::TcpEstablished;
                s.deadline = deadline(now, profile().tcp_established);
            }
            Op::Refresh(i) => {
                if m.sessions.is_empty() {
                    continue;
                }
                let i = i % m.sessions.len();
                assert!(t.refresh(m.sessions[i].handle, now));
                let s = &mut m.sessions[i];
                s.deadline = deadline(now, profile().timeout(s.state));
            }
            Op::Remove(i) => {
                if m.sessions.is_empty() {
                    continue;
                }
                let i = i % m.sessions.len();
                let s = m.sessions.remove(i);
                assert_eq!(t.remove(s.handle), Some(s.value));
                stale.push(s.handle);
            }
            Op::RemoveStale(i) => {
                if stale.is_empty() {
                    continue;
                }
                let h = stale[i % stale.len()];
                assert_eq!(t.remove(h), None);
                assert!(!t.is_live(h));
            }
            Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
            Op::Roundtrip => {
                let mut bytes = Vec::new();
                let p = t.export(now, 0, usize::MAX, &mut bytes);
                assert_eq!((p.records, p.next), (m.sessions.len(), None));
                let mut cfg = TableConfig::new(CAP, [7; 16]);
                cfg.timeouts = profile();
                cfg.wheel_slots = 64;
                cfg.cross_zone = true;
                let mut peer: SessionTable<V4Key, u64> = SessionTable::new(cfg).unwrap();
                let r = peer.import(now, &bytes).unwrap();
                assert_eq!((r.imported, r.skipped), (m.sessions.len(), 0));
                for s in &m.sessions {
                    let a = peer.lookup(&s.orig).unwrap();
                    assert_eq!(a.direction, Direction::Original);
                    let b = peer.lookup(&s.reply).unwrap();
                    assert_eq!((b.session, b.direction), (a.session, Direction::Reply));
                    let info = peer.info(a.session).unwrap();
                    assert_eq!((info.original, info.reply), (s.orig, s.reply));
                    assert_eq!((info.value, info.established), (s.value, s.assured));
                    for z in 0..3 {
                        let mut other = s.reply;
                        other.zone = ZoneId(z);
                        if z != s.reply.zone.0 && m.find(&other).is_none() {
                            assert!(peer.lookup(&other).is_none(), "{other} in a third zone");
                        }
                    }
                }
            }
            Op::Expire => {
                let mut expired = Vec::new();
                t.handle_timeout_with(now, usize::MAX, |s| expired.push(s.original));
                let tick = now.as_nanos() / G;
                let (gone, kept): (Vec<M>, Vec<M>) =
                    m.sessions.drain(..).partition(|s| s.deadline <= tick);
                m.sessions = kept;
                let mut want: Vec<FlowKey> = gone.iter().map(|s| s.orig).collect();
                stale.extend(gone.iter().map(|s| s.handle));
                want.sort_by_key(|k| k.to_string());
                expired.sort_by_key(|k| k.to_string());
                assert_eq!(expired, want, "expired at tick {tick}");
                // Idempotent.
                assert_eq!(t.handle_timeout(now, usize::MAX), 0);
            }
        }
        // Whole-state check after every step.
        assert_eq!(t.len(), m.sessions.len());
        for s in &m.sessions {
            let a = t.lookup(&s.orig).unwrap();
            assert_eq!((a.session, a.direction), (s.handle, Direction::Original));
            let b = t.lookup(&s.reply).unwrap();
            assert_eq!((b.session, b.direction), (s.handle, Direction::Reply));
            let info = t.info(s.handle).unwrap();
            assert_eq!((info.original, info.reply), (s.orig, s.reply));
            assert_eq!(info.established, s.assured);
            assert_eq!(info.deadline.as_nanos(), s.deadline * G);
        }
        for z in 0..3u32 {
            let want = m.zone_count(z);
            let got = t.zone_usage(ZoneId(z)).map_or(0, |u| u.sessions);
            assert_eq!(got, want, "zone {z} count");
        }
        if let Some(p) = t.poll_timeout() {
            // Never later than the earliest deadline.
            let earliest = m
                .sessions
                .iter()
                .map(|s| s.deadline)
                .min()
                .unwrap_or(u64::MAX);
            assert!(
                p.as_nanos() <= earliest.saturating_mul(G),
                "poll {p:?} > earliest {earliest}"
            );
        } else {
            assert!(m.sessions.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn table_matches_model(ops in proptest::collection::vec(op(), 1..150)) {
        run(ops);
    }
}

/// One session for the batch-insert test: keys, zone, UDP or TCP, state, value, and whether
/// the reply key is (wrongly) IPv6.
type NewArgs = (Tup, Option<Tup>, u8, bool, u8, u64, bool);

fn new_args() -> impl Strategy<Value = NewArgs> {
    (
        tup(),
        proptest::option::of(tup()),
        0u8..3,
        any::<bool>(),
        0u8..11,
        any::<u64>(),
        proptest::bool::weighted(0.05),
    )
}

/// `insert_batch` answers exactly like `insert` called in order, on a small table where
/// quotas, early drop, duplicates within one batch and bad keys all occur, and across the
/// 64-session chunks it pipelines.
fn batch_equals_singles(args: Vec<NewArgs>, early_drop: bool) {
    let mk = || {
        let mut cfg = TableConfig::new(CAP, [42; 16]);
        cfg.timeouts = profile();
        cfg.wheel_slots = 64;
        cfg.cross_zone = true;
        cfg.early_drop = early_drop;
        let mut t: SessionTable<V4Key, u64> = SessionTable::new(cfg).unwrap();
        t.set_zone_quota(ZoneId(0), 8).unwrap();
        t.set_zone_quota(ZoneId(1), 12).unwrap();
        t
    };
    let (mut a, mut b) = (mk(), mk());
    let now = Instant::from_nanos(5 * G + 123);
    let new: Vec<NewSession<u64>> = args
        .iter()
        .map(|&(o, r, zone, udp, state, value, v6)| {
            let original = key(o, zone, udp);
            let mut reply = r.map_or(original.reversed(), |r| key(r, zone, udp));
            if v6 {
                reply = FlowKey::v6(reply.zone, [1; 16], [2; 16], reply.proto, 1, 2);
            }
            if value % 4 == 0 {
                // A cross-zone session.
                reply.zone = ZoneId((u32::from(zone) + 1) % 3);
            }
            NewSession::new(
                original,
                reply,
                SessionState::from_u8(state).unwrap(),
                value,
            )
        })
        .collect();
    let singles: Vec<_> = new
        .iter()
        .map(|n| a.insert(now, &n.original, &n.reply, n.state, n.value))
        .collect();
    let mut batched = vec![Err(InsertError::TableFull); new.len()];
    let created = b.insert_batch(now, &new, &mut batched);
    assert_eq!(singles, batched);
    assert_eq!(created, singles.iter().filter(|r| r.is_ok()).count());
    assert_eq!(a.len(), b.len());
    for n in &new {
        for k in [n.original, n.reply] {
            assert_eq!(a.lookup(&k), b.lookup(&k));
        }
    }
    assert_eq!(a.counters(), b.counters());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn insert_batch_equals_inserts_in_order(
        args in proptest::collection::vec(new_args(), 0..140),
        early_drop in any::<bool>(),
    ) {
        batch_equals_singles(args, early_drop);
    }
}
