//! Flood test: one zone opens new flows as fast as it can; every established session of the
//! other zones survives, and they can still open sessions up to their quotas.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{
    Conntrack, ConntrackConfig, InsertError, SessionState, SessionTable, Sizes, TableConfig, V4Key,
};
use nf_core::flags;
use nf_core::flow::proto;
use nf_core::{Batch, DropReason, FlowKey, Instant, Packet, SessionRef, Stage, Verdict, ZoneId};

const A: ZoneId = ZoneId(1);
const B: ZoneId = ZoneId(2);
const C: ZoneId = ZoneId(3);

fn flow(zone: ZoneId, i: u32) -> FlowKey {
    let [a, b, c, d] = i.to_be_bytes();
    FlowKey::v4(
        zone,
        [10, a, b, c],
        [192, 0, 2, d],
        proto::TCP,
        1024 + (i % 50_000) as u16,
        443,
    )
}

fn establish(
    t: &mut SessionTable<V4Key, u32>,
    zone: ZoneId,
    n: u32,
    now: Instant,
) -> Vec<SessionRef> {
    (0..n)
        .map(|i| {
            let f = flow(zone, i);
            let r = t
                .insert(now, &f, &f.reversed(), SessionState::TcpSynSent, i)
                .unwrap();
            assert!(t.set_state(r, now, SessionState::TcpEstablished, true));
            r
        })
        .collect()
}

#[test]
fn flooding_zone_evicts_only_its_own_unestablished_sessions() {
    let now = Instant::from_nanos(1_000_000_000);
    let mut t: SessionTable<V4Key, u32> =
        SessionTable::new(TableConfig::new(10_000, [7; 16])).unwrap();
    t.set_zone_quota(A, 5_000).unwrap();
    t.set_zone_quota(B, 2_500).unwrap();
    t.set_zone_quota(C, 2_500).unwrap();
    let b = establish(&mut t, B, 2_000, now);
    let c = establish(&mut t, C, 2_000, now);
    // A has some established sessions too: they must survive A's own flood.
    let a_est = establish(&mut t, A, 1_000, now);
    // The flood: 200k new flows from A, never completing a handshake.
    for i in 0..200_000u32 {
        let f = flow(A, 1_000_000 + i);
        t.insert(now, &f, &f.reversed(), SessionState::TcpSynSent, i)
            .unwrap();
        let u = t.zone_usage(A).unwrap();
        assert!(u.sessions <= 5_000);
    }
    assert_eq!(t.zone_usage(A).unwrap().sessions, 5_000);
    assert!(t.counters().early_drops >= 195_000);
    for r in b.iter().chain(&c).chain(&a_est) {
        assert!(t.is_live(*r), "an established session was evicted");
    }
    // B and C can still open sessions up to their quotas.
    for zone in [B, C] {
        for i in 0..500 {
            let f = flow(zone, 100_000 + i);
            t.insert(now, &f, &f.reversed(), SessionState::TcpSynSent, i)
                .unwrap();
        }
        assert_eq!(t.zone_usage(zone).unwrap().sessions, 2_500);
    }
    assert_eq!(t.len(), 10_000);
    for r in b.iter().chain(&c).chain(&a_est) {
        assert!(t.is_live(*r));
    }
}

#[test]
fn without_early_drop_the_flood_is_refused_with_a_typed_error() {
    let now = Instant::ZERO;
    let mut cfg = TableConfig::new(4_000, [1; 16]);
    cfg.early_drop = false;
    let mut t: SessionTable<V4Key, u32> = SessionTable::new(cfg).unwrap();
    t.set_zone_quota(A, 2_000).unwrap();
    t.set_zone_quota(B, 2_000).unwrap();
    let b = establish(&mut t, B, 1_500, now);
    let mut refused = 0;
    for i in 0..10_000u32 {
        let f = flow(A, i);
        match t.insert(now, &f, &f.reversed(), SessionState::TcpSynSent, i) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e, InsertError::ZoneQuota);
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 8_000);
    assert_eq!(t.counters().refused_quota, 8_000);
    assert!(b.iter().all(|r| t.is_live(*r)));
    for i in 0..500 {
        let f = flow(B, 50_000 + i);
        t.insert(now, &f, &f.reversed(), SessionState::TcpSynSent, i)
            .unwrap();
    }
    let f = flow(B, 99_999);
    assert_eq!(
        t.insert(now, &f, &f.reversed(), SessionState::TcpSynSent, 0),
        Err(InsertError::TableFull)
    );
}

#[test]
fn a_full_table_never_evicts_another_zone() {
    // Overcommitted quotas: A may take the whole table. B's established sessions survive
    // and B is refused (TableFull) rather than evicting A's half-open ones.
    let now = Instant::ZERO;
    let mut t: SessionTable<V4Key, u32> =
        SessionTable::new(TableConfig::new(3_000, [2; 16])).unwrap();
    let b = establish(&mut t, B, 1_000, now);
    for i in 0..20_000u32 {
        let f = flow(A, i);
        t.insert(now, &f, &f.reversed(), SessionState::TcpSynSent, i)
            .unwrap();
    }
    assert_eq!(t.zone_usage(A).unwrap().sessions, 2_000);
    assert!(b.iter().all(|r| t.is_live(*r)));
    let f = flow(B, 77_777);
    assert_eq!(
        t.insert(now, &f, &f.reversed(), SessionState::TcpSynSent, 0),
        Err(InsertError::TableFull)
    );
    assert_eq!(t.zone_usage(A).unwrap().sessions, 2_000);
}

fn syn_packet(f: FlowKey) -> Packet<Vec<u8>> {
    let mut p = Packet::new(vec![0u8; 64], 0, 64).unwrap();
    p.meta.flow = f;
    p.meta.zone = f.zone;
    p.meta.flags = flags::L3_VALID | flags::L4_VALID;
    p.meta.tcp_flags = 0x02;
    p
}

#[test]
fn stage_under_flood_counts_and_protects_other_zones() {
    let mut cfg = ConntrackConfig::new([3; 16]).sizes(Sizes { v4: 2_000, v6: 64 });
    cfg.v4.early_drop = false;
    let mut ct: Conntrack = Conntrack::new(cfg, ()).unwrap();
    ct.set_zone_quota(A, 1_000).unwrap();
    ct.set_zone_quota(B, 1_000).unwrap();
    let now = Instant::ZERO;
    let mut batch = Batch::new();
    let mut b_refs = Vec::new();
    for i in 0..64u32 {
        batch.push(syn_packet(flow(B, i))).unwrap();
    }
    ct.process(now, &mut batch);
    for p in batch.drain() {
        b_refs.push(p.meta.session.unwrap());
    }
    let mut dropped = 0;
    for round in 0..100u32 {
        for i in 0..64u32 {
            batch.push(syn_packet(flow(A, round * 64 + i))).unwrap();
        }
        ct.process(now, &mut batch);
        for p in batch.drain() {
            if p.meta.verdict == Verdict::Drop(DropReason::ZoneQuotaExceeded) {
                dropped += 1;
            }
        }
    }
    assert_eq!(dropped, 6_400 - 1_000);
    assert_eq!(ct.stats().refused_quota, 5_400);
    assert_eq!(
        nf_core::StageControl::counters(&ct)
            .drops
            .count(DropReason::ZoneQuotaExceeded),
        5_400
    );
    assert!(b_refs.iter().all(|r| ct.value(*r).is_some()));
}
