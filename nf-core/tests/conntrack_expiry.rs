//! Expiry with a virtual clock over 10M sessions: every `handle_timeout` call does at most
//! its budget of work, and every session expires within one timer granularity of its
//! deadline (never before it).
#![expect(
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{SessionState, SessionTable, TableConfig, TimeoutProfile, V4Key};
use nf_core::flow::proto;
use nf_core::{Duration, FlowKey, Instant, ZoneId};

const N: u32 = 10_000_000;
const G: u64 = 1_000_000_000;
const BUDGET: usize = 20_000;
/// Sessions created per virtual second.
const RATE: u32 = 100_000;

fn profile() -> TimeoutProfile {
    let s = Duration::from_secs;
    let mut p = TimeoutProfile::default();
    p.granularity = Duration::from_nanos(G);
    p.tcp_syn_sent = s(30);
    p.tcp_syn_recv = s(45);
    p.tcp_established = s(5_000); // beyond one wheel turn: exercises re-filing
    p.tcp_fin_wait = s(60);
    p.tcp_close_wait = s(75);
    p.tcp_time_wait = s(90);
    p.tcp_closed = s(5);
    p.udp_unreplied = s(20);
    p.udp_replied = s(120);
    p.icmp = s(10);
    p.other = s(200);
    p
}

fn key(i: u32) -> FlowKey {
    let [a, b, c, d] = i.to_be_bytes();
    FlowKey::v4(
        ZoneId(u32::from(d & 7)),
        [a, b, c, d],
        [192, 0, 2, 1],
        proto::UDP,
        7,
        9,
    )
}

fn state_of(i: u32) -> SessionState {
    SessionState::ALL[i as usize % SessionState::ALL.len()]
}

/// Creation time of session `i`: `RATE` per second, spread within the second.
fn created(i: u32) -> u64 {
    u64::from(i / RATE) * G + u64::from(i % RATE) * (G / u64::from(RATE))
}

#[test]
fn ten_million_sessions_expire_on_time_with_bounded_work() {
    let mut cfg = TableConfig::new(N, [9; 16]);
    cfg.timeouts = profile();
    cfg.wheel_slots = 1024;
    let mut t: SessionTable<V4Key, ()> = SessionTable::new(cfg).unwrap();
    let p = profile();
    let mut next = 0u32;
    let mut expired = 0u64;
    let mut max_work = 0usize;
    let mut calls = 0u64;
    let mut sec = 0u64;
    // Each virtual second: create that second's sessions (in order of time), then run the
    // timer at the second's end until it reports less than a full budget.
    loop {
        let end = Instant::from_nanos((sec + 1) * G);
        while next < N && created(next) < end.as_nanos() {
            let now = Instant::from_nanos(created(next));
            let k = key(next);
            t.insert(now, &k, &k.reversed(), state_of(next), ())
                .unwrap();
            next += 1;
        }
        // The last tick's sweep happens at its end; also check at mid-second instants.
        let mut check = |now: Instant, t: &mut SessionTable<V4Key, ()>| loop {
            let work = t.handle_timeout_with(now, BUDGET, |s| {
                let i = u32::from_be_bytes(s.original.src_bytes().try_into().unwrap());
                let deadline = created(i) + p.timeout(state_of(i)).as_nanos();
                let at = now.as_nanos();
                assert!(
                    at >= deadline,
                    "session {i} expired early: {at} < {deadline}"
                );
                assert!(
                    at - deadline < G,
                    "session {i} expired late: {at} - {deadline}"
                );
                expired += 1;
            });
            assert!(work <= BUDGET);
            max_work = max_work.max(work);
            calls += 1;
            if work < BUDGET {
                break;
            }
        };
        check(end, &mut t);
        sec += 1;
        if next == N && t.is_empty() {
            break;
        }
        assert!(sec < 20_000, "did not drain");
    }
    assert_eq!(expired, u64::from(N));
    assert_eq!(t.counters().expired, u64::from(N));
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(max_work, BUDGET, "the budget was exercised");
    assert!(calls > sec);
}
