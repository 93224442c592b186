//! Per-zone new-flow rate limits inside connection tracking (`ZoneNewFlowLimit`), on a
//! simulated clock: each zone's bucket alone, established flows never limited, flows the
//! wrapped service refuses cost no allowance, and a random schedule against one reference
//! bucket per zone.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

extern crate alloc;

use alloc::sync::Arc;
use core::net::Ipv4Addr;
use nf_core::conntrack::{Conntrack, ConntrackConfig};
use nf_core::wire::Frame;
use nf_core::{
    Batch, Chain, DropReason, Instant, Packet, ParseStage, Stage, StageControl, StageExt, Verdict,
    ZoneId,
};
use nf_policy::classifier::{PortRange, Prefix};
use nf_policy::{
    BucketConfig, SecurityGroups, SgConfig, SgDirection, SgPeer, SgRule, SgRuleSetBuilder,
    SgTables, TokenBucket, ZoneNewFlowLimit,
};
use proptest::prelude::*;

const EXCEEDED: Verdict = Verdict::Drop(DropReason::NewFlowRateExceeded);
const SEC: u64 = 1_000_000_000;

fn udp(zone: u32, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Packet<Vec<u8>> {
    let frame = Frame::ipv4(src, dst).udp(sport, dport).to_vec().unwrap();
    let mut p = Packet::with_headroom(&frame, 64);
    p.meta.zone = ZoneId(zone);
    p
}

fn run<S: nf_core::conntrack::SessionService>(
    p: &mut Chain<ParseStage, Conntrack<S>>,
    t: u64,
    pkts: Vec<Packet<Vec<u8>>>,
) -> Vec<Verdict> {
    let mut batch = Batch::new();
    for x in pkts {
        batch.push(x).unwrap();
    }
    p.process(Instant::from_nanos(t), &mut batch);
    batch.packets().iter().map(|x| x.meta.verdict).collect()
}

fn pipeline<S: nf_core::conntrack::SessionService>(s: S) -> Chain<ParseStage, Conntrack<S>> {
    let ct = Conntrack::new(ConntrackConfig::new(*b"limit test key!!"), s).unwrap();
    ParseStage::default().then(ct)
}

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

#[test]
fn each_zone_has_its_own_bucket_and_established_flows_are_not_limited() {
    let mut limit = ZoneNewFlowLimit::new(());
    // Zone 1: 10 new flows a second, bursts of 3; zone 2 unlimited.
    limit.set_zone_limit(
        ZoneId(1),
        BucketConfig::new(10, 3),
        Instant::from_nanos(SEC),
    );
    let mut p = pipeline(limit);
    let new = |zone, port| udp(zone, A, B, port, 53);
    let v = run(
        &mut p,
        SEC,
        (0..5)
            .map(|i| new(1, 1000 + i))
            .chain((0..5).map(|i| new(2, 1000 + i)))
            .collect(),
    );
    let pass = Verdict::Pass;
    assert_eq!(
        v,
        [
            pass, pass, pass, EXCEEDED, EXCEEDED, pass, pass, pass, pass, pass
        ]
    );
    // Over the limit, the admitted flows (both ways) still pass; a new one does not.
    let v = run(
        &mut p,
        SEC + 1,
        vec![new(1, 1000), udp(1, B, A, 53, 1001), new(1, 1003)],
    );
    assert_eq!(v, [pass, pass, EXCEEDED]);
    // 100 ms later one token has come back; a second later the burst is full again.
    let v = run(&mut p, SEC + SEC / 10, vec![new(1, 1003), new(1, 1004)]);
    assert_eq!(v, [pass, EXCEEDED]);
    let v = run(&mut p, 3 * SEC, (2000..2004).map(|i| new(1, i)).collect());
    assert_eq!(v, [pass, pass, pass, EXCEEDED]);
    let limit = p.second.service();
    assert_eq!(limit.exceeded(ZoneId(1)), Some(5));
    assert_eq!(limit.exceeded(ZoneId(2)), None);
    assert_eq!(limit.exceeded_total(), 5);
    let mut seen = None;
    p.visit_counters(&mut |s, c, v| {
        if s == "new_flow_limit" && c == "conntrack_allowance_exceeded" {
            seen = Some(v);
        }
    });
    assert_eq!(seen, Some(5));
    let drops = &p.second.counters().drops;
    assert_eq!(drops.count(DropReason::NewFlowRateExceeded), 5);
    // Lifting the limit.
    p.second.service_mut().remove_zone_limit(ZoneId(1));
    let v = run(&mut p, 3 * SEC, (3000..3010).map(|i| new(1, i)).collect());
    assert!(v.iter().all(|v| *v == pass));
}

/// Flows the wrapped service refuses (denied, or left untracked) take no token.
#[test]
fn refused_and_untracked_flows_cost_no_allowance() {
    let mut b = SgRuleSetBuilder::default();
    let any = SgPeer::Prefix(Prefix::ANY_V4);
    b.push(SgRule::udp(
        SgDirection::Ingress,
        any,
        PortRange::single(53),
    ));
    b.push(SgRule::udp(
        SgDirection::Ingress,
        SgPeer::Prefix(Prefix::v4(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap()),
        PortRange::single(5000),
    ));
    b.push(SgRule::udp(SgDirection::Egress, any, PortRange::ANY));
    let mut t = SgTables::new();
    t.insert(ZoneId(1), b.build().unwrap());
    let sg = SecurityGroups::new(Arc::new(t), SgConfig::default().untracked(true));
    let mut limit = ZoneNewFlowLimit::new(sg);
    limit.set_zone_limit(ZoneId(1), BucketConfig::new(1, 2), Instant::from_nanos(SEC));
    let mut p = pipeline(limit);
    let pass = Verdict::Pass;
    let v = run(
        &mut p,
        SEC,
        vec![
            // Denied (no rule), then untracked (open both ways): no tokens taken.
            udp(1, A, B, 1000, 9999),
            udp(1, A, B, 1001, 53),
            udp(1, A, B, 1002, 53),
            // Tracked: two tokens, then none left.
            udp(1, A, B, 1003, 5000),
            udp(1, A, B, 1004, 5000),
            udp(1, A, B, 1005, 5000),
            // Untracked flows need no allowance, even with none left.
            udp(1, A, B, 1006, 53),
        ],
    );
    let denied = Verdict::Drop(DropReason::SgDenied);
    assert_eq!(v, [denied, pass, pass, pass, pass, EXCEEDED, pass]);
    assert_eq!(p.second.len(), 2);
    assert_eq!(p.second.service().exceeded(ZoneId(1)), Some(1));
    assert_eq!(p.second.service().inner().rules().len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random new flows in three zones (two limited) at random times: each is admitted
    /// exactly when its zone's reference bucket conforms.
    #[test]
    fn admissions_follow_a_reference_bucket_per_zone(
        steps in prop::collection::vec((0u64..300_000_000, 0u32..3), 1..120),
    ) {
        let start = Instant::from_nanos(SEC);
        let configs = [BucketConfig::new(5, 2), BucketConfig::new(20, 1)];
        let mut limit = ZoneNewFlowLimit::new(());
        let mut model: Vec<TokenBucket> = Vec::new();
        for (z, c) in configs.iter().enumerate() {
            limit.set_zone_limit(ZoneId(z as u32), *c, start);
            model.push(TokenBucket::new(*c, start));
        }
        let mut p = pipeline(limit);
        let mut t = SEC;
        for (i, (dt, zone)) in steps.into_iter().enumerate() {
            t += dt;
            let now = Instant::from_nanos(t);
            let want = model.get_mut(zone as usize).is_none_or(|b| b.conform(now, 1));
            let v = run(&mut p, t, vec![udp(zone, A, B, 1000 + i as u16, 53)]);
            prop_assert_eq!(v[0] == Verdict::Pass, want, "step {} zone {}", i, zone);
        }
    }
}

/// Sessions taken over from another node are not new flows: importing many of them takes no
/// token, and the zone's limit still holds for the flows that are new here.
#[test]
fn imported_sessions_take_no_allowance() {
    let mut a = pipeline(ZoneNewFlowLimit::new(()));
    let v = run(
        &mut a,
        SEC,
        (0..20).map(|i| udp(1, A, B, 1000 + i, 53)).collect(),
    );
    assert!(v.iter().all(|v| *v == Verdict::Pass));
    let mut chunk = alloc::vec::Vec::new();
    let now = Instant::from_nanos(SEC);
    a.second
        .export(nf_core::Family::V4, now, 0, 64, &mut chunk)
        .unwrap();

    let mut limit = ZoneNewFlowLimit::new(());
    limit.set_zone_limit(ZoneId(1), BucketConfig::new(10, 3), now);
    let mut b = pipeline(limit);
    assert_eq!(b.second.import(now, &chunk).unwrap().imported, 20);
    let v = run(
        &mut b,
        SEC,
        (0..20)
            .map(|i| udp(1, A, B, 1000 + i, 53))
            .chain((0..4).map(|i| udp(1, A, B, 2000 + i, 53)))
            .collect(),
    );
    let pass = Verdict::Pass;
    assert!(v[..20].iter().all(|v| *v == pass));
    assert_eq!(v[20..], [pass, pass, pass, EXCEEDED]);
}
