//! RFC 2697 and RFC 2698 conformance on scripted arrivals, and token-bucket properties.
//!
//! The expected colours are worked out by hand from the RFCs' text (quoted next to each
//! scenario), not from the implementation: buckets start full; tokens arrive one at a time,
//! CIR (PIR) times per second; srTCM's token goes to Tc if Tc < CBS, else to Te if Te < EBS,
//! else nowhere; trTCM's two buckets fill independently.

use nf_core::{Duration, Instant};
use nf_policy::meter::{BucketConfig, Color, MeterConfigError, SrTcm, SrTcmConfig, TokenBucket};
use nf_policy::{TrTcm, TrTcmConfig};
use proptest::prelude::*;

use Color::{Green as G, Red as R, Yellow as Y};

fn ms(t: u64) -> Instant {
    Instant::from_nanos(t * 1_000_000)
}

/// One scripted arrival: time in ms, size, pre-colour (for colour-aware runs), expected colour.
type Step = (u64, u64, Color, Color);

#[test]
fn srtcm_colour_blind_rfc2697() {
    // CIR 1000 bytes/s, CBS 1500, EBS 1500. "Tc(0) = CBS, Te(0) = EBS."
    let mut m = SrTcm::new(SrTcmConfig::new(1000, 1500, 1500), ms(0)).unwrap();
    let script: [(u64, u64, Color); 12] = [
        // "If Tc(t)-B >= 0, the packet is green and Tc is decremented by B": 1500 → 500.
        (0, 1000, G),
        // Tc 500 < 1000; "else if Te(t)-B >= 0, the packet is yellow": Te 1500 → 500.
        (0, 1000, Y),
        // Tc 500, Te 500: "else the packet is red and neither Tc nor Te is decremented".
        (0, 1000, R),
        // 500 ms: 500 tokens, all to Tc (below CBS): Tc 1000.
        (500, 1000, G),
        // 1000 ms: 500 more: Tc 500, Te 500; 600 fits neither.
        (1000, 600, R),
        // A red packet took nothing: 500 still fits Tc.
        (1000, 500, G),
        // 3000 ms: 2000 tokens: 1500 fill Tc, the next 500 overflow to Te (500 → 1000).
        (3000, 1500, G),
        (3000, 1000, Y),
        (3000, 1, R),
        // 4000 ms: 1000 tokens to Tc (0 → 1000); Te stays 0.
        (4000, 1001, R),
        (4000, 1000, G),
        (4000, 1, R),
    ];
    for (i, (t, size, want)) in script.into_iter().enumerate() {
        assert_eq!(
            m.meter(ms(t), size),
            want,
            "step {i}: {size} bytes at {t} ms"
        );
    }
}

#[test]
fn srtcm_colour_aware_rfc2697() {
    // CIR 1000/s, CBS 1000, EBS 1000. Colour-aware: "If the packet has been precolored as
    // green and Tc(t)-B >= 0, the packet is green ... else if the packet has been precolored as
    // green or yellow and if Te(t)-B >= 0, the packet is yellow ... else the packet is red".
    let mut m = SrTcm::new(SrTcmConfig::new(1000, 1000, 1000), ms(0)).unwrap();
    let script: [Step; 8] = [
        // Red stays red even with both buckets full, and takes nothing.
        (0, 100, R, R),
        // Yellow never takes from Tc: Te 1000 → 900.
        (0, 100, Y, Y),
        // Green takes from Tc: 1000 → 100.
        (0, 900, G, G),
        // Green that does not fit Tc falls to Te: 900 → 0.
        (0, 900, G, Y),
        // Yellow with Te empty is red, even though Tc holds 100.
        (0, 50, Y, R),
        (0, 100, G, G),
        // 1000 ms: 1000 tokens to Tc; Te stays 0, so yellow is red.
        (1000, 1, Y, R),
        (1000, 1000, G, G),
    ];
    for (i, (t, size, pre, want)) in script.into_iter().enumerate() {
        assert_eq!(m.meter_aware(ms(t), size, pre), want, "step {i}");
    }
}

#[test]
fn srtcm_tokens_arrive_one_at_a_time_at_cir() {
    // CIR 3 tokens/s: one token every 1/3 s, so the first after 333 333 333.3 ns.
    let mut m = SrTcm::new(SrTcmConfig::new(3, 1, 1), Instant::ZERO).unwrap();
    assert_eq!(m.meter(Instant::ZERO, 1), G);
    assert_eq!(m.meter(Instant::ZERO, 1), Y);
    assert_eq!(m.meter(Instant::from_nanos(333_333_333), 1), R);
    assert_eq!(m.meter(Instant::from_nanos(333_333_334), 1), G);
    // Calls every nanosecond-ish must not lose the fractions: 1 s later exactly 3 tokens.
    let mut t = 333_333_334u64;
    let mut greens = 0;
    while t < 1_333_333_334 {
        t += 7_777_777;
        greens += u32::from(m.meter(Instant::from_nanos(t), 1) == G);
    }
    assert_eq!(greens, 3);
    let (tc, te) = m.tokens(Instant::from_nanos(t));
    assert_eq!((tc, te), (0, 0));
}

#[test]
fn trtcm_colour_blind_rfc2698() {
    // CIR 1000/s CBS 1000, PIR 2000/s PBS 2000. "If Tp(t)-B < 0, the packet is red, else if
    // Tc(t)-B < 0, the packet is yellow and Tp is decremented by B, else the packet is green
    // and both Tp and Tc are decremented by B."
    let mut m = TrTcm::new(TrTcmConfig::new(1000, 1000, 2000, 2000), ms(0)).unwrap();
    let script: [(u64, u64, Color); 9] = [
        (0, 800, G), // Tp 1200, Tc 200
        (0, 800, Y), // Tp 400
        (0, 800, R), // nothing taken
        (0, 400, Y), // Tp 0, Tc 200
        // 500 ms: Tp += 1000 → 1000, Tc += 500 → 700.
        (500, 700, G), // Tp 300, Tc 0
        (500, 301, R),
        (500, 300, Y), // Tp 0
        // 2000 ms: Tp 0 + 3000 capped at 2000; Tc 0 + 1500 capped at 1000.
        (2000, 1000, G),
        (2000, 1000, Y),
    ];
    for (i, (t, size, want)) in script.into_iter().enumerate() {
        assert_eq!(m.meter(ms(t), size), want, "step {i}: {size} at {t} ms");
    }
    assert_eq!(m.tokens(ms(2000)), (0, 0));
}

#[test]
fn trtcm_colour_aware_rfc2698() {
    // "If the packet has been precolored as red or if Tp(t)-B < 0, the packet is red, else if
    // the packet has been precolored as yellow or if Tc(t)-B < 0, the packet is yellow and Tp
    // is decremented by B, else the packet is green and both Tp and Tc are decremented by B."
    let mut m = TrTcm::new(TrTcmConfig::new(1000, 1000, 2000, 2000), ms(0)).unwrap();
    let script: [Step; 6] = [
        (0, 100, R, R),   // takes nothing
        (0, 500, Y, Y),   // Tp 1500, Tc 1000 untouched
        (0, 1000, G, G),  // Tp 500, Tc 0
        (0, 600, G, R),   // Tp too small
        (0, 500, G, Y),   // Tc empty: yellow, Tp 0
        (250, 500, Y, Y), // Tp 500 after 250 ms at 2000/s
    ];
    for (i, (t, size, pre, want)) in script.into_iter().enumerate() {
        assert_eq!(m.meter_aware(ms(t), size, pre), want, "step {i}");
    }
}

#[test]
fn invalid_meter_settings_are_refused() {
    assert_eq!(
        SrTcm::new(SrTcmConfig::new(10, 0, 0), Instant::ZERO).err(),
        Some(MeterConfigError::NoBurst)
    );
    assert!(SrTcm::new(SrTcmConfig::new(10, 0, 1), Instant::ZERO).is_ok());
    assert_eq!(
        TrTcm::new(TrTcmConfig::new(10, 0, 20, 5), Instant::ZERO).err(),
        Some(MeterConfigError::ZeroBurst)
    );
    assert_eq!(
        TrTcm::new(TrTcmConfig::new(20, 5, 10, 5), Instant::ZERO).err(),
        Some(MeterConfigError::PeakBelowCommitted)
    );
}

#[test]
fn token_bucket_in_packets_and_bytes() {
    // Packets: 10 per second, burst 2.
    let mut p = TokenBucket::new(BucketConfig::new(10, 2), Instant::ZERO);
    assert!(p.conform(Instant::ZERO, 1));
    assert!(p.conform(Instant::ZERO, 1));
    assert!(!p.conform(Instant::ZERO, 1));
    assert!(!p.conform(ms(99), 1));
    assert!(p.conform(ms(100), 1));
    // Bytes: 1 MB/s, burst 1500; time running backwards adds nothing.
    let mut b = TokenBucket::new(BucketConfig::new(1_000_000, 1500), ms(10));
    assert!(b.conform(ms(10), 1500));
    assert!(!b.conform(ms(5), 1));
    assert!(b.conform(ms(11), 1000));
    assert!(!b.conform(ms(11), 1));
    // Extreme rates and spans neither overflow nor panic.
    let mut x = TokenBucket::new(BucketConfig::new(u64::MAX, u64::MAX), Instant::ZERO);
    assert!(x.conform(Instant::MAX, u64::MAX));
    assert!(x.conform(Instant::MAX, 0));
}

proptest! {
    /// Never more conforming than rate·t + burst, and exactly that many for a greedy sender
    /// (arrivals at arbitrary times, each asking for as much as it likes).
    #[test]
    fn token_bucket_bound(
        rate in 0u64..5_000,
        burst in 0u64..3_000,
        steps in prop::collection::vec((0u64..50_000_000, 1u64..2_000), 1..200),
    ) {
        let mut b = TokenBucket::new(BucketConfig::new(rate, burst), Instant::ZERO);
        let mut t = 0u64;
        let mut conformed = 0u128;
        for (dt, size) in steps {
            t += dt;
            if b.conform(Instant::from_nanos(t), size) {
                conformed += u128::from(size);
            }
            let bound = u128::from(rate) * u128::from(t) / 1_000_000_000 + u128::from(burst);
            prop_assert!(conformed <= bound, "{conformed} > {bound} at {t} ns");
        }
    }

    /// srTCM: green ≤ CIR·t + CBS and green + yellow ≤ CIR·t + CBS + EBS.
    #[test]
    fn srtcm_bound(
        cir in 0u64..5_000,
        cbs in 0u64..3_000,
        ebs in 1u64..3_000,
        steps in prop::collection::vec((0u64..50_000_000, 1u64..2_000, 0u8..3), 1..200),
    ) {
        let mut m = SrTcm::new(SrTcmConfig::new(cir, cbs, ebs), Instant::ZERO).unwrap();
        let (mut t, mut green, mut yellow) = (0u64, 0u128, 0u128);
        for (dt, size, pre) in steps {
            t += dt;
            let pre = [G, Y, R][usize::from(pre)];
            match m.meter_aware(Instant::from_nanos(t), size, pre) {
                G => { prop_assert_eq!(pre, G); green += u128::from(size) }
                Y => { prop_assert_ne!(pre, R); yellow += u128::from(size) }
                R => {}
            }
            let earned = u128::from(cir) * u128::from(t) / 1_000_000_000;
            prop_assert!(green <= earned + u128::from(cbs));
            prop_assert!(green + yellow <= earned + u128::from(cbs) + u128::from(ebs));
        }
    }

    /// trTCM: green ≤ CIR·t + CBS and green + yellow ≤ PIR·t + PBS.
    #[test]
    fn trtcm_bound(
        cir in 0u64..3_000,
        extra in 0u64..3_000,
        cbs in 1u64..3_000,
        pbs in 1u64..3_000,
        steps in prop::collection::vec((0u64..50_000_000, 1u64..2_000), 1..200),
    ) {
        let pir = cir + extra;
        let mut m = TrTcm::new(TrTcmConfig::new(cir, cbs, pir, pbs), Instant::ZERO).unwrap();
        let (mut t, mut green, mut yellow) = (0u64, 0u128, 0u128);
        for (dt, size) in steps {
            t += dt;
            match m.meter(Instant::from_nanos(t) + Duration::ZERO, size) {
                G => green += u128::from(size),
                Y => yellow += u128::from(size),
                R => {}
            }
            let ns = u128::from(t);
            prop_assert!(green <= u128::from(cir) * ns / 1_000_000_000 + u128::from(cbs));
            prop_assert!(green + yellow <= u128::from(pir) * ns / 1_000_000_000 + u128::from(pbs));
        }
    }
}
