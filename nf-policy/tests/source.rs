//! Per-source-IP limits: rates per private IP, 0 blocks, unlimited passes, the default for
//! unknown sources, bounded memory under a flood of distinct sources, and the counters.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::Instant;
use nf_policy::{IpLimit, SourceLimitConfig, SourceLimitError, SourceLimits, WhenFull};
use proptest::prelude::*;
extern crate alloc;
use alloc::collections::BTreeMap;

const KEY: [u8; 16] = *b"source limit key";
const MS: u64 = 1_000_000;

fn v4(d: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + d))
}

fn counters(t: &SourceLimits) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    t.counters().visit(|k, v| {
        m.insert(k, v);
    });
    m
}

#[test]
fn per_ip_rates_block_and_unlimited() {
    let mut t = SourceLimits::new(SourceLimitConfig::new(64, KEY)).unwrap();
    let now = Instant::ZERO;
    // 8 Mbps = 1 MB/s, burst 100 ms = 100 000 bytes.
    t.set(now, v4(1), IpLimit::mbps(8)).unwrap();
    t.set(now, v4(2), IpLimit::mbps(0)).unwrap();
    t.set(now, v4(3), IpLimit::Unlimited).unwrap();
    assert_eq!(IpLimit::mbps(0), IpLimit::Block);

    let passed = (0..100).filter(|_| t.admit(now, v4(1), 1500)).count();
    assert_eq!(passed, 66, "100 000 bytes of burst: 66 packets of 1500");
    // 1.5 ms later: 1500 more bytes.
    assert!(t.admit(Instant::from_nanos(1_500_000), v4(1), 1500));
    assert!(!t.admit(Instant::from_nanos(1_500_000), v4(1), 1500));
    assert!(!t.admit(now, v4(2), 60));
    assert!((0..1000).all(|_| t.admit(now, v4(3), 9000)));
    // Unknown sources get the default: unlimited here.
    assert!(t.admit(now, v4(4), 9000));

    let c = counters(&t);
    assert_eq!(c["bw_in_allowance_exceeded"], 35);
    assert_eq!(c["src_blocked"], 1);
    assert_eq!(c["passed"], 66 + 1 + 1000 + 1);
    assert_eq!(c["pps_in_allowance_exceeded"], 0);
    assert_eq!(c["src_table_full"], 0);

    // Removing a limit gives the source the default back.
    assert!(t.remove(v4(2)));
    assert!(!t.remove(v4(2)));
    assert!(t.admit(now, v4(2), 60));
}

#[test]
fn packet_rates_and_ipv6() {
    let mut t = SourceLimits::new(SourceLimitConfig::new(16, KEY)).unwrap();
    let a = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7));
    t.set(Instant::ZERO, a, IpLimit::mbps(1000).with_pps(1000, 3))
        .unwrap();
    let passed = (0..10).filter(|_| t.admit(Instant::ZERO, a, 64)).count();
    assert_eq!(passed, 3);
    assert!(t.admit(Instant::from_nanos(MS), a, 64));
    assert_eq!(counters(&t)["pps_in_allowance_exceeded"], 7);
    assert_eq!(IpLimit::mbps(5).with_pps(0, 10), IpLimit::Block);
    assert_eq!(IpLimit::Unlimited.with_pps(10, 10), IpLimit::Unlimited);
}

#[test]
fn default_rate_flood_stays_within_the_table() {
    // Every unknown source limited to 8 Mbps; 256 slots; 10 000 distinct sources in one instant.
    let cfg = SourceLimitConfig::new(256, KEY).with_default(IpLimit::mbps(8));
    let mut t = SourceLimits::new(cfg).unwrap();
    let now = Instant::ZERO;
    // An operator-set source is never evicted by the flood.
    t.set(now, v4(0xffff), IpLimit::Block).unwrap();
    for i in 0..10_000 {
        t.admit(now, v4(i), 1500);
    }
    assert_eq!(t.capacity(), 256);
    assert!(t.len() <= 256);
    assert!(
        !t.admit(now, v4(0xffff), 1),
        "the operator's block survived the flood"
    );
    let c = counters(&t);
    assert!(c["src_table_full"] > 0);
    // Sources that got a slot are idle again later, so new sources can take their slots.
    let later = Instant::from_nanos(1_000 * MS);
    assert!(t.admit(later, v4(20_000), 1500));

    // Fail open instead.
    let cfg = cfg.with_when_full(WhenFull::Pass).with_max_probe(1);
    let mut t = SourceLimits::new(cfg).unwrap();
    assert!((0..5_000).all(|i| t.admit(now, v4(i), 1500)));
    assert!(counters(&t)["src_table_full"] > 0);
}

#[test]
fn removing_a_default_limited_source_does_not_refill_it() {
    let cfg = SourceLimitConfig::new(8, KEY).with_default(IpLimit::mbps(1));
    let mut t = SourceLimits::new(cfg).unwrap();
    // 1 Mbps: a burst of 12 500 bytes, then nothing more in the same instant.
    assert!(t.admit(Instant::ZERO, v4(9), 12_500));
    assert!(!t.admit(Instant::ZERO, v4(9), 1));
    assert!(!t.remove(v4(9)), "not an operator-set limit");
    assert!(!t.admit(Instant::ZERO, v4(9), 1), "still empty");
}

#[test]
fn operator_limits_need_room() {
    let cfg = SourceLimitConfig::new(2, KEY).with_max_probe(2);
    let mut t = SourceLimits::new(cfg).unwrap();
    t.set(Instant::ZERO, v4(1), IpLimit::mbps(1)).unwrap();
    t.set(Instant::ZERO, v4(2), IpLimit::mbps(1)).unwrap();
    assert_eq!(
        t.set(Instant::ZERO, v4(3), IpLimit::mbps(1)),
        Err(SourceLimitError::Full)
    );
    // Replacing an existing source's limit needs no new slot.
    t.set(Instant::ZERO, v4(1), IpLimit::Block).unwrap();
    assert!(!t.admit(Instant::ZERO, v4(1), 1));
    assert_eq!(
        SourceLimits::new(SourceLimitConfig::new(0, KEY)).err(),
        Some(SourceLimitError::Config)
    );
    assert_eq!(
        SourceLimits::new(SourceLimitConfig::new(4, KEY).with_max_probe(0)).err(),
        Some(SourceLimitError::Config)
    );
}

proptest! {
    /// Per source, passed bytes never exceed rate·t + burst, whatever the mix of sources
    /// (more than the table holds) and times.
    #[test]
    fn per_source_bound(
        steps in prop::collection::vec((0u64..5_000_000, 0u32..40, 1u64..3_000), 1..300),
    ) {
        let cfg = SourceLimitConfig::new(8, KEY).with_default(IpLimit::mbps(1)).with_max_probe(4);
        let mut t = SourceLimits::new(cfg).unwrap();
        let mut passed: BTreeMap<u32, u128> = BTreeMap::new();
        let mut now = 0u64;
        for (dt, src, size) in steps {
            now += dt;
            if t.admit(Instant::from_nanos(now), v4(src), size) {
                *passed.entry(src).or_default() += u128::from(size);
            }
            // 125 000 bytes/s, burst 12 500; an evicted source starts afresh only when it was
            // idle (full), so the bound holds across evictions.
            let bound = 125_000 * u128::from(now) / 1_000_000_000 + 12_500;
            for (s, &b) in &passed {
                prop_assert!(b <= bound, "source {s}: {b} > {bound}");
            }
            prop_assert!(t.len() <= 8);
        }
    }
}
