//! The elastic credit limiter's phases on a simulated clock (Achelous §5): a tenant that was
//! quiet bursts above its base while credit lasts and the host has headroom, then is held at
//! base; without headroom it never bursts; a tenant sending small packets is held by the
//! processing-cost dimension while its bandwidth is under base.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::{Duration, Instant};
use nf_policy::{Admission, ElasticConfig, ElasticDimension, ElasticLimiter, SpendRate};
use proptest::prelude::*;

const MS: u64 = 1_000_000;

/// Base 1 MB/s (a 1000 "Mbps" VM scaled down), credit cap 10 MB, C = 1/2: at 1.5× base the
/// credit drains at 0.5 MB/s × 1/2, so a full cap lasts 40 s.
fn bursty() -> ElasticConfig {
    ElasticConfig::new().with_bytes(
        ElasticDimension::new(1_000_000, 10_000_000).with_spend(SpendRate::new(1, 2).unwrap()),
    )
}

/// Bytes admitted in each simulated second of `secs`, offering one 1500-byte packet per ms.
fn run(l: &mut ElasticLimiter, start: u64, secs: u64, headroom: bool) -> Vec<u64> {
    (0..secs)
        .map(|s| {
            (0..1000)
                .map(|m| {
                    let now = Instant::from_nanos(start + (s * 1000 + m) * MS);
                    if l.admit(now, 1500, 1, headroom).is_admitted() {
                        1500
                    } else {
                        0
                    }
                })
                .sum()
        })
        .collect()
}

#[test]
fn bursts_above_base_while_credit_lasts_then_held_at_base() {
    let mut l = ElasticLimiter::new(bursty(), Instant::ZERO);
    // 60 s quiet: credit fills to the cap.
    assert_eq!(
        l.admit(Instant::from_nanos(60_000 * MS), 0, 0, true),
        Admission::Base
    );
    assert_eq!(l.credit().0, 10_000_000);
    let per_sec = run(&mut l, 60_000 * MS, 100, true);
    // Phase 2: 1.5× base for about 40 s.
    for (s, &b) in per_sec.iter().enumerate().take(38) {
        assert_eq!(
            b, 1_500_000,
            "second {s}: {b} bytes, expected the full burst"
        );
    }
    // Phase 3: held at base (1 MB/s, to a packet).
    for (s, &b) in per_sec.iter().enumerate().skip(42) {
        assert!(
            (998_500..=1_001_500).contains(&b),
            "second {s}: {b} bytes, expected base"
        );
    }
    assert!(l.counters().admitted_burst > 0);
    assert!(l.counters().bw_allowance_exceeded > 0);
    assert_eq!(l.counters().cpu_allowance_exceeded, 0);
}

#[test]
fn no_burst_without_headroom() {
    let mut l = ElasticLimiter::new(bursty(), Instant::ZERO);
    assert_eq!(
        l.admit(Instant::from_nanos(60_000 * MS), 0, 0, false),
        Admission::Base
    );
    let per_sec = run(&mut l, 60_000 * MS, 5, false);
    // The first second may use the 10 ms base bucket; after that, base.
    for (s, &b) in per_sec.iter().enumerate().skip(1) {
        assert!((998_500..=1_001_500).contains(&b), "second {s}: {b}");
    }
    assert_eq!(
        l.credit().0,
        10_000_000,
        "credit is kept for when headroom returns"
    );
    assert_eq!(l.counters().admitted_burst, 0);
}

#[test]
fn small_packets_are_held_by_the_processing_cost() {
    // Bytes: 100 MB/s base. Cost: 100 ms of processing per second (10% of a core), no credit.
    let cfg = ElasticConfig::new()
        .with_bytes(ElasticDimension::new(100_000_000, 0))
        .with_cost(ElasticDimension::new(100_000_000, 0));
    let mut l = ElasticLimiter::new(cfg, Instant::ZERO);
    // 200 packets of 64 bytes per ms (12.8 MB/s: an eighth of the byte base), each costing
    // 1 µs to process: 200 ms per second, twice the processing base.
    let mut admitted_per_sec = Vec::new();
    for s in 0..5u64 {
        let mut admitted = 0u64;
        for m in 0..1000u64 {
            let now = Instant::from_nanos((s * 1000 + m) * MS);
            let n = (0..200)
                .filter(|_| l.admit(now, 64, 1, true).is_admitted())
                .count() as u64;
            l.charge_cost(now + Duration::from_micros(500), n * 1000, true);
            admitted += n;
        }
        admitted_per_sec.push(admitted);
    }
    // Held at the processing base: 100 000 packets per second (6.4 MB/s of bytes).
    for (s, &n) in admitted_per_sec.iter().enumerate().skip(1) {
        assert!((99_000..=101_000).contains(&n), "second {s}: {n} packets");
    }
    assert!(l.counters().cpu_allowance_exceeded > 0);
    assert_eq!(l.counters().bw_allowance_exceeded, 0);
}

#[test]
fn spend_rate_bounds() {
    assert!(SpendRate::new(0, 1).is_none());
    assert!(SpendRate::new(3, 2).is_none());
    assert!(SpendRate::new(1, 1).is_some());
    assert!(SpendRate::new(1, u32::MAX).is_some());
}

proptest! {
    /// Whatever the arrivals and headroom, admitted bytes never exceed what base and credit can
    /// pay for: credit is unused base, and a unit of credit buys `1/C` units above base, so at
    /// most `base bucket + (base·t) / C`; and without headroom ever, at most `base bucket +
    /// base·t`.
    #[test]
    fn elastic_bound(
        base in 1u64..10_000,
        cap in 0u64..10_000,
        num in 1u32..4,
        extra in 0u32..4,
        never_headroom in any::<bool>(),
        steps in prop::collection::vec((0u64..20_000_000, 0u64..3_000, any::<bool>()), 1..200),
    ) {
        let (num, den) = (num, num + extra);
        let dim = ElasticDimension::new(base, cap).with_spend(SpendRate::new(num, den).unwrap());
        let mut l = ElasticLimiter::new(ElasticConfig::new().with_bytes(dim), Instant::ZERO);
        let (mut t, mut sum) = (0u64, 0u128);
        for (dt, size, headroom) in steps {
            t += dt;
            let headroom = headroom && !never_headroom;
            if l.admit(Instant::from_nanos(t), size, 1, headroom).is_admitted() {
                sum += u128::from(size);
            }
            let earned = u128::from(base) * u128::from(t) / 1_000_000_000;
            let burst = u128::from(dim.base_burst);
            let bound = if never_headroom {
                burst + earned
            } else {
                burst + earned * u128::from(den) / u128::from(num)
            };
            prop_assert!(sum <= bound, "{sum} > {bound}");
            prop_assert!(l.credit().0 <= cap);
        }
    }
}
