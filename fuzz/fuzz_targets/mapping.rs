//! Fuzzes the mapping cache with arbitrary lookups, source checks, static entries, answers
//! (asked and unasked), query polls, time steps and timer sweeps, from a handful of VNIs of
//! which some are beyond `max_tenants`, against a model of what the service was asked and
//! what it answered: no panic; a hit returns the last accepted answer; an answer to a
//! question the cache never asked is ignored; no VNI (nor the shared budget) holds more than
//! its quota of entries or pending entries; a miss never evicts another VNI's unexpired
//! entry (a pending one of the shared budget excepted); the tracked VNIs stay within
//! `max_tenants`; queries within each VNI's token bucket; timer work within its budget.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::{Duration, Instant};
use nf_tunnel::mapping::{
    Answer, Lookup, MappingCache, MappingConfig, QueryRate, SourceCheck, TenantBudget,
};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Arbitrary, Debug)]
enum Op {
    Lookup { vni: u8, addr: u8 },
    Check { vni: u8, addr: u8, host: u8 },
    Insert { vni: u8, addr: u8, host: Option<u8> },
    Answer { vni: u8, addr: u8, host: Option<u8> },
    AnswerAsked { host: Option<u8>, keep: u8 },
    Advance(u16),
    Timeout(u8),
}

const MAX_TENANTS: u32 = 2;
const TENANT: TenantBudget = TenantBudget {
    entries: 10,
    pending: 3,
    rate: QueryRate { per_second: 50, burst: 4 },
};
const SHARED: TenantBudget = TenantBudget {
    entries: 5,
    pending: 2,
    rate: QueryRate { per_second: 50, burst: 4 },
};

fn vni(v: u8) -> u32 {
    u32::from(v % 5)
}

fn addr(a: u8) -> IpAddr {
    if a & 0x80 == 0 {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, a % 24))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(a % 8)))
    }
}

fn host(h: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, h % 4))
}

struct Model {
    /// Keys the cache asked about (handed out by `poll_queries`) and not yet answered.
    asked: HashSet<(u32, IpAddr)>,
    /// The last mapping the cache accepted per key, and when.
    truth: HashMap<(u32, IpAddr), (Option<IpAddr>, Instant)>,
    /// Queries handed out per VNI, to hold against the rate.
    queries: HashMap<u32, u64>,
}

fuzz_target!(|ops: Vec<Op>| {
    let cfg = MappingConfig::new(32, [4; 16])
        .with_max_tenants(MAX_TENANTS)
        .with_tenant_budget(TENANT)
        .with_shared_budget(SHARED)
        .with_max_queued(16);
    let mut c = MappingCache::new(cfg).unwrap();
    let mut m = Model { asked: HashSet::new(), truth: HashMap::new(), queries: HashMap::new() };
    let start = Instant::from_nanos(1);
    let mut now = start;
    for op in ops.into_iter().take(400) {
        match op {
            Op::Lookup { vni: v, addr: a } => {
                let (v, a) = (vni(v), addr(a));
                let before = resolved_of_others(&mut c.clone(), now, v, &m);
                if let Lookup::Host(h) = c.lookup(now, v, a) {
                    assert_eq!(m.truth.get(&(v, a)).map(|t| t.0), Some(Some(h)));
                }
                still_there(&mut c.clone(), now, &before);
            }
            Op::Check { vni: v, addr: a, host: h } => {
                let (v, a) = (vni(v), addr(a));
                let before = resolved_of_others(&mut c.clone(), now, v, &m);
                match c.check_source(now, v, a, host(h)) {
                    SourceCheck::Valid => {
                        assert_eq!(m.truth.get(&(v, a)).map(|t| t.0), Some(Some(host(h))))
                    }
                    SourceCheck::Spoofed => {
                        assert!(m.truth.get(&(v, a)).is_some_and(|t| t.0 != Some(host(h))))
                    }
                    SourceCheck::Unknown => {}
                }
                still_there(&mut c.clone(), now, &before);
            }
            Op::Insert { vni: v, addr: a, host: h } => {
                let (v, a) = (vni(v), addr(a));
                if c.insert(now, v, a, h.map(host)) {
                    m.truth.insert((v, a), (h.map(host), now));
                    m.asked.remove(&(v, a));
                }
            }
            Op::Answer { vni: v, addr: a, host: h } => {
                let key = (vni(v), addr(a));
                answer(&mut c, &mut m, now, key, h.map(host));
            }
            Op::AnswerAsked { host: h, keep } => {
                let mut keys: Vec<_> = m.asked.iter().copied().collect();
                keys.sort_by_key(|k| (k.0, k.1));
                for (i, key) in keys.into_iter().enumerate() {
                    if (keep >> (i % 8)) & 1 == 0 {
                        answer(&mut c, &mut m, now, key, h.map(host));
                    }
                }
            }
            Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
            Op::Timeout(b) => assert!(c.handle_timeout(now, usize::from(b)) <= usize::from(b)),
        }
        // The service hears every query at once, so "asked" is exactly what the cache has
        // queued.
        while let Some(b) = c.poll_queries() {
            assert!(!b.as_slice().is_empty());
            for q in b.as_slice() {
                m.asked.insert((q.vni, q.addr));
                *m.queries.entry(q.vni).or_default() += 1;
            }
        }
        // Quotas and bounded tenant state.
        assert!(c.tracked_tenants() <= MAX_TENANTS as usize);
        for v in 0..5 {
            if let Some(u) = c.tenant_usage(v) {
                assert!(u.entries <= TENANT.entries && u.pending <= TENANT.pending && u.pending <= u.entries);
            }
        }
        let s = c.shared_usage();
        assert!(s.entries <= SHARED.entries && s.pending <= SHARED.pending);
        assert!(c.len() <= c.capacity());
    }
    // The service never heard more from one VNI than its own token bucket and the shared one
    // allow together. (A record is forgotten only when empty and refilled, so tracking it
    // again is the same as having tracked it all along.)
    let secs = now.saturating_since(start).as_nanos().div_ceil(1_000_000_000);
    let per_vni = u64::from(TENANT.rate.burst) + u64::from(TENANT.rate.per_second) * secs;
    let shared = u64::from(SHARED.rate.burst) + u64::from(SHARED.rate.per_second) * secs;
    for (v, n) in &m.queries {
        assert!(*n <= per_vni + shared, "VNI {v}: {n} queries in {secs} s");
    }
});

/// Every resolved entry of a VNI other than `vni` that the cache still answers and that has
/// not expired (`ttl + max_stale` since its answer), found through the model (clones of the
/// cache answer, so the original is untouched).
fn resolved_of_others(c: &mut MappingCache, now: Instant, vni: u32, m: &Model) -> Vec<(u32, IpAddr, Option<IpAddr>)> {
    let life = c.config().ttl.as_nanos() + c.config().max_stale.as_nanos();
    m.truth
        .iter()
        .filter(|((v, _), (_, at))| *v != vni && now.saturating_since(*at).as_nanos() <= life)
        .filter_map(|(&(v, a), &(h, _))| {
            let mut probe = c.clone();
            match (probe.lookup(now, v, a), h) {
                (Lookup::Host(x), Some(y)) if x == y => Some((v, a, h)),
                _ => None,
            }
        })
        .collect()
}

/// The entries `resolved_of_others` found still answer the same.
fn still_there(c: &mut MappingCache, now: Instant, before: &[(u32, IpAddr, Option<IpAddr>)]) {
    for &(v, a, h) in before {
        assert_eq!(c.clone().lookup(now, v, a), Lookup::Host(h.unwrap()), "VNI {v}'s {a} was evicted");
    }
}

fn answer(c: &mut MappingCache, m: &mut Model, now: Instant, key: (u32, IpAddr), h: Option<IpAddr>) {
    let before = c.stats().unsolicited;
    c.handle_answers(now, &[Answer { vni: key.0, addr: key.1, host: h }]);
    let ignored = c.stats().unsolicited > before;
    if !m.asked.contains(&key) {
        assert!(ignored, "an answer to a question never asked was stored");
    }
    if !ignored {
        m.truth.insert(key, (h, now));
    }
    m.asked.remove(&key);
}
