//! Fuzzes the limiters with arbitrary settings (rates and bursts up to `u64::MAX`), arrival
//! times (forward, backward, huge jumps) and sizes: a token bucket, srTCM and trTCM (colour
//! blind and aware), the elastic credit limiter (bytes, packets, processing cost, headroom)
//! and the per-source table (more sources than slots).
//!
//! Checked: nothing panics or overflows; conforming amounts never exceed rate·t + burst (token
//! bucket); green ≤ CIR·t + CBS and green + yellow ≤ CIR·t + CBS + EBS (srTCM) or PIR·t + PBS
//! (trTCM), a red pre-colour stays red and yellow never turns green; the elastic limiter admits
//! at most base bucket + base·t / C bytes (base bucket + base·t without headroom) and holds no
//! more credit than its cap; each source passes at most its rate·t + burst; the source table
//! stays within its capacity.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::Instant;
use nf_policy::{
    BucketConfig, Color, ElasticConfig, ElasticDimension, ElasticLimiter, IpLimit,
    SourceLimitConfig, SourceLimits, SpendRate, SrTcm, SrTcmConfig, TokenBucket, TrTcm,
    TrTcmConfig,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Arbitrary, Debug)]
struct Settings {
    rate: u64,
    burst: u64,
    ebs: u64,
    pir_extra: u64,
    pbs: u64,
    spend_num: u8,
    spend_extra: u8,
    credit_cap: u64,
    src_mbps: u16,
    /// Small settings most of the time, so that limits bite.
    small: bool,
}

#[derive(Arbitrary, Debug)]
struct Arrival {
    /// Nanoseconds to move the clock; backwards when `back`.
    dt: u64,
    back: bool,
    size: u64,
    pre: u8,
    headroom: bool,
    src: u8,
    cost: u32,
}

const NS: u128 = 1_000_000_000;

fn colour(c: u8) -> Color {
    match c % 3 {
        0 => Color::Green,
        1 => Color::Yellow,
        _ => Color::Red,
    }
}

fuzz_target!(|input: (Settings, Vec<Arrival>)| {
    let (s, arrivals) = input;
    let small = |x: u64, m: u64| if s.small { x % m } else { x };
    let rate = small(s.rate, 100_000);
    let burst = small(s.burst, 10_000);
    let ebs = small(s.ebs, 10_000);
    let pir = rate.saturating_add(small(s.pir_extra, 100_000));
    let pbs = small(s.pbs, 10_000).max(1);
    let cbs = burst.max(1);
    let num = u32::from(s.spend_num).max(1);
    let den = num + u32::from(s.spend_extra);
    let cap = small(s.credit_cap, 1_000_000);
    let start = Instant::from_nanos(1);

    let mut bucket = TokenBucket::new(BucketConfig::new(rate, burst), start);
    let mut sr = SrTcm::new(SrTcmConfig::new(rate, cbs, ebs), start).unwrap();
    let mut tr = TrTcm::new(TrTcmConfig::new(rate, cbs, pir, pbs), start).unwrap();
    let dim = ElasticDimension::new(rate, cap).with_spend(SpendRate::new(num, den).unwrap());
    let cost_dim = ElasticDimension::new(rate, cap);
    let mut elastic = ElasticLimiter::new(
        ElasticConfig::new().with_bytes(dim).with_packets(dim).with_cost(cost_dim),
        start,
    );
    let src_limit = IpLimit::mbps(u64::from(s.src_mbps % 64));
    let mut sources = SourceLimits::new(
        SourceLimitConfig::new(8, [9; 16]).with_default(src_limit).with_max_probe(3),
    )
    .unwrap();

    let mut now = start.as_nanos();
    let mut latest = now;
    let (mut conformed, mut green, mut yellow, mut tr_green, mut tr_yellow) = (0u128, 0, 0, 0, 0);
    let mut elastic_bytes = 0u128;
    let mut ever_headroom = false;
    let mut per_source: BTreeMap<u8, u128> = BTreeMap::new();
    for a in arrivals.iter().take(500) {
        let dt = if s.small { a.dt % 100_000_000 } else { a.dt };
        now = if a.back { now.saturating_sub(dt) } else { now.saturating_add(dt) };
        latest = latest.max(now);
        let t = Instant::from_nanos(now);
        let size = if s.small { a.size % 5_000 } else { a.size };
        let elapsed = u128::from(latest - start.as_nanos());
        let earned = |r: u64| u128::from(r) * elapsed / NS;

        if bucket.conform(t, size) {
            conformed += u128::from(size);
        }
        assert!(conformed <= earned(rate) + u128::from(burst), "token bucket");

        let pre = colour(a.pre);
        match sr.meter_aware(t, size, pre) {
            Color::Green => {
                assert_eq!(pre, Color::Green);
                green += u128::from(size);
            }
            Color::Yellow => {
                assert_ne!(pre, Color::Red);
                yellow += u128::from(size);
            }
            Color::Red => {}
        }
        assert!(green <= earned(rate) + u128::from(cbs), "srTCM green");
        assert!(green + yellow <= earned(rate) + u128::from(cbs) + u128::from(ebs), "srTCM");

        match tr.meter_aware(t, size, pre) {
            Color::Green => {
                assert_eq!(pre, Color::Green);
                tr_green += u128::from(size);
            }
            Color::Yellow => {
                assert_ne!(pre, Color::Red);
                tr_yellow += u128::from(size);
            }
            Color::Red => {}
        }
        assert!(tr_green <= earned(rate) + u128::from(cbs), "trTCM green");
        assert!(tr_green + tr_yellow <= earned(pir) + u128::from(pbs), "trTCM");

        ever_headroom |= a.headroom;
        if elastic.admit(t, size, 1, a.headroom).is_admitted() {
            elastic_bytes += u128::from(size);
        }
        elastic.charge_cost(t, u64::from(a.cost), a.headroom);
        let base = u128::from(dim.base_burst);
        let bound = if ever_headroom {
            base + earned(rate) * u128::from(den) / u128::from(num)
        } else {
            base + earned(rate)
        };
        assert!(elastic_bytes <= bound, "elastic: {elastic_bytes} > {bound}");
        let (cb, cp, cc) = elastic.credit();
        assert!(cb <= cap && cp <= cap && cc <= cap, "credit above cap");

        let src = IpAddr::V4(Ipv4Addr::new(10, 0, 0, a.src % 32));
        if sources.admit(t, src, size) {
            *per_source.entry(a.src % 32).or_default() += u128::from(size);
        }
        if let IpLimit::Rate { bytes, .. } = src_limit {
            let b = earned(bytes.per_second) + u128::from(bytes.burst);
            assert!(per_source.values().all(|&v| v <= b), "source above its rate");
        } else {
            assert!(per_source.is_empty(), "a blocked source passed");
        }
        assert!(sources.len() <= sources.capacity());
    }
});
