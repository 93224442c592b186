//! The mapping cache under a flood: one VNI sprays a million random destinations that the
//! mapping service mostly does not answer, while another VNI's working set must stay
//! resolved, its packets never on the default path, and the service must see no more than
//! the flooding VNI's configured query rate. Also the VNIs beyond `max_tenants`.

use core::net::{IpAddr, Ipv4Addr};
use nf_core::{Duration, Instant};
use nf_tunnel::mapping::{
    Answer, Lookup, MappingCache, MappingConfig, QueryRate, TenantBudget, TenantUsage,
};

const LEGIT: u32 = 7;
const FLOOD: u32 = 9;
const WORKING_SET: u32 = 1000;

fn legit_addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a07_0000 + i))
}

fn legit_host(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 200) as u8 + 1))
}

/// A small deterministic generator (xorshift64*): the test needs spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The mapping service: answers the legitimate VNI's queries with its hosts, answers one in
/// four of the flooding VNI's queries with "no such address" and drops the rest; counts
/// what it was asked per VNI.
#[derive(Default)]
struct Resolver {
    asked_legit: u64,
    asked_flood: u64,
    asked_other: u64,
}

impl Resolver {
    fn serve(&mut self, now: Instant, cache: &mut MappingCache) {
        let mut answers = Vec::new();
        while let Some(batch) = cache.poll_queries() {
            for q in batch.as_slice() {
                match q.vni {
                    LEGIT => {
                        self.asked_legit += 1;
                        let IpAddr::V4(a) = q.addr else {
                            unreachable!()
                        };
                        let i = u32::from(a) - 0x0a07_0000;
                        answers.push(Answer {
                            vni: q.vni,
                            addr: q.addr,
                            host: Some(legit_host(i)),
                        });
                    }
                    FLOOD => {
                        self.asked_flood += 1;
                        if self.asked_flood.is_multiple_of(4) {
                            answers.push(Answer {
                                vni: q.vni,
                                addr: q.addr,
                                host: None,
                            });
                        }
                    }
                    _ => self.asked_other += 1,
                }
            }
        }
        cache.handle_answers(now, &answers);
    }
}

/// A million flood lookups in debug builds too: run by `cargo test`, so by CI.
#[test]
fn a_flooding_vni_does_not_evict_another_vnis_working_set() {
    const FLOOD_LOOKUPS: u64 = 1_000_000;
    // 100 µs apart: the flood lasts 100 s, past the 60 s TTL, so the legitimate entries are
    // revalidated during it.
    const STEP: u64 = 100_000;
    let rate = QueryRate {
        per_second: 500,
        burst: 50,
    };
    let config = MappingConfig::new(4096, *b"nf mapping flood")
        .with_tenant_budget(TenantBudget {
            entries: 2048,
            pending: 256,
            rate,
        })
        .with_max_tenants(16);
    let mut cache = MappingCache::new(config).unwrap();
    let mut resolver = Resolver::default();

    // The working set: learned through misses and answers, as in production.
    let t0 = Instant::from_nanos(1);
    let mut now = t0;
    for i in 0..WORKING_SET {
        assert_eq!(cache.lookup(now, LEGIT, legit_addr(i)), Lookup::Miss);
        resolver.serve(now, &mut cache);
        // Its own rate applies: learning 1000 addresses at 500/s takes about 2 s.
        now += Duration::from_millis(2);
    }
    // (The key is one for which the working set fits its buckets: with another, a bucket
    // may get nine of its addresses and the VNI evicts its own oldest.)
    assert_eq!(cache.stats().evictions, 0);
    for i in 0..WORKING_SET {
        assert_eq!(
            cache.lookup(now, LEGIT, legit_addr(i)),
            Lookup::Host(legit_host(i)),
            "entry {i} resolved before the flood"
        );
    }
    let before = *cache.stats();
    let flood_start = now;

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut default_path = 0u64;
    let mut legit_lookups = 0u64;
    for n in 0..FLOOD_LOOKUPS {
        let dst = IpAddr::V4(Ipv4Addr::from(rng.next() as u32));
        let _ = cache.lookup(now, FLOOD, dst);
        if n % 100 == 0 {
            let i = (n / 100) as u32 % WORKING_SET;
            legit_lookups += 1;
            if cache.lookup(now, LEGIT, legit_addr(i)) != Lookup::Host(legit_host(i)) {
                default_path += 1;
            }
        }
        if n % 100 == 99 {
            // Every 10 ms: the caller's timer and a round trip to the mapping service.
            while cache.poll_timeout().is_some_and(|t| t <= now) {
                cache.handle_timeout(now, 4096);
            }
            resolver.serve(now, &mut cache);
        }
        now += Duration::from_nanos(STEP);
    }
    resolver.serve(now, &mut cache);

    let usage = cache.tenant_usage(LEGIT).unwrap();
    let s = *cache.stats();
    let elapsed = now.saturating_since(flood_start);
    let allowed = u64::from(rate.burst) + u64::from(rate.per_second) * elapsed.as_secs() + 1;
    std::println!(
        "flood: {FLOOD_LOOKUPS} lookups over {} s; legit lookups {legit_lookups}, on the \
         default path {default_path}; legit usage {usage:?}; flood queries seen by the \
         resolver {} (allowed {allowed}); legit queries {}; stats delta: evictions {}, \
         rate_limited {}, pending_recycled {}, quota_recycled {}, bucket_full {}, \
         quota_refused {}, expired {}",
        elapsed.as_secs(),
        resolver.asked_flood,
        resolver.asked_legit,
        s.evictions - before.evictions,
        s.rate_limited - before.rate_limited,
        s.pending_recycled - before.pending_recycled,
        s.quota_recycled - before.quota_recycled,
        s.bucket_full - before.bucket_full,
        s.quota_refused - before.quota_refused,
        s.expired - before.expired,
    );
    assert_eq!(
        default_path, 0,
        "no legitimate packet took the default path"
    );
    assert_eq!(
        usage,
        cache.tenant_usage(LEGIT).unwrap(),
        "(usage is a snapshot)"
    );
    assert_eq!((usage.entries, usage.pending), (WORKING_SET, 0));
    for i in 0..WORKING_SET {
        assert_eq!(
            cache.lookup(now, LEGIT, legit_addr(i)),
            Lookup::Host(legit_host(i)),
            "entry {i} still resolved after the flood"
        );
    }
    assert!(
        resolver.asked_flood <= allowed,
        "{} flood queries, at most {allowed} allowed",
        resolver.asked_flood
    );
    // The flood was really rate-limited and really churned through its own budget.
    assert!(s.rate_limited - before.rate_limited > 900_000);
    assert!(s.pending_recycled - before.pending_recycled > 0);
    let flood = cache.tenant_usage(FLOOD).unwrap();
    assert!(flood.entries <= 2048 && flood.pending <= 256, "{flood:?}");
    assert_eq!(resolver.asked_other, 0);
}

/// The same flood spread over many VNIs, most of them beyond `max_tenants`: they share one
/// budget, and neither they nor the tracked flooders evict the working set.
#[test]
fn vnis_beyond_max_tenants_share_one_budget() {
    let shared = TenantBudget {
        entries: 256,
        pending: 64,
        rate: QueryRate {
            per_second: 200,
            burst: 20,
        },
    };
    let config = MappingConfig::new(4096, [3; 16])
        .with_max_tenants(4)
        .with_shared_budget(shared);
    let mut cache = MappingCache::new(config).unwrap();
    let mut now = Instant::from_nanos(1);
    for i in 0..WORKING_SET {
        assert!(cache.insert(now, LEGIT, legit_addr(i), Some(legit_host(i))));
    }
    let mut rng = Rng(7);
    let mut asked = 0u64;
    for n in 0..200_000u64 {
        let vni = 100 + (rng.next() % 10_000) as u32;
        let _ = cache.lookup(now, vni, IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
        assert!(cache.tracked_tenants() <= 4);
        let u: TenantUsage = cache.shared_usage();
        assert!(u.entries <= shared.entries && u.pending <= shared.pending);
        if n % 1000 == 999 {
            while let Some(b) = cache.poll_queries() {
                asked += b.as_slice().iter().filter(|q| q.vni != LEGIT).count() as u64;
            }
            cache.handle_timeout(now, 4096);
        }
        now += Duration::from_micros(50);
    }
    let secs = now.as_nanos() / 1_000_000_000;
    // The shared budget's rate plus one burst per tracked flooding VNI's record (3 records,
    // each of which may be re-created after it emptied and refilled).
    assert!(cache.stats().shared_budget > 190_000);
    assert!(asked <= 20 + 200 * secs + 4 * (50 + 1000 * secs), "{asked}");
    for i in 0..WORKING_SET {
        assert_eq!(
            cache.lookup(now, LEGIT, legit_addr(i)),
            Lookup::Host(legit_host(i))
        );
    }
}

/// The same isolation seen from the encap stage: a flooding zone's packets go to the default
/// path, the other zone's packets always leave for their own hosts.
#[test]
fn through_the_encap_stage_the_working_set_never_takes_the_default_path() {
    use nf_core::wire::Frame;
    use nf_core::{Batch, Packet, ParseConfig, Stage, StageControl, Verdict, ZoneId};
    use nf_tunnel::{Destination, EncapConfig, EncapStage, Underlay, VniSource};

    let gateway = Ipv4Addr::new(198, 51, 100, 1);
    let mut cfg = EncapConfig::vxlan(
        0,
        Underlay {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254)),
            dst: IpAddr::V4(gateway),
        },
    );
    cfg.vni = VniSource::Zone;
    let config = MappingConfig::new(4096, *b"nf mapping flood").with_tenant_budget(TenantBudget {
        entries: 2048,
        pending: 256,
        rate: QueryRate {
            per_second: 500,
            burst: 50,
        },
    });
    cfg.destination = Destination::Mapping(MappingCache::new(config).unwrap());
    let mut encap = EncapStage::new(cfg).unwrap();
    let mut resolver = Resolver::default();
    let now = Instant::from_nanos(1);
    for i in 0..WORKING_SET {
        assert!(encap.mapping_mut().unwrap().insert(
            now,
            LEGIT,
            legit_addr(i),
            Some(legit_host(i))
        ));
    }
    let room = encap.headroom();
    let packet = |zone: u32, dst: Ipv4Addr| {
        let frame = Frame::ipv4([10, 7, 255, 1], dst.octets())
            .udp(4000, 53)
            .to_vec()
            .unwrap();
        let mut p = Packet::with_headroom(&frame, room);
        nf_core::parse_frame(&frame, &mut p.meta, &ParseConfig::default()).unwrap();
        p.meta.zone = ZoneId(zone);
        p
    };
    let mut rng = Rng(42);
    let mut now = now;
    for round in 0..1000u32 {
        let mut batch = Batch::new();
        let mut want = Vec::new();
        for k in 0..64u32 {
            if k % 2 == 0 {
                let dst = Ipv4Addr::from(rng.next() as u32);
                batch.push(packet(FLOOD, dst)).unwrap();
                want.push(None);
            } else {
                let i = (round * 32 + k / 2) % WORKING_SET;
                let IpAddr::V4(dst) = legit_addr(i) else {
                    unreachable!()
                };
                batch.push(packet(LEGIT, dst)).unwrap();
                want.push(Some(legit_host(i)));
            }
        }
        encap.process(now, &mut batch);
        for (p, want) in batch.packets().iter().zip(&want) {
            assert_eq!(p.meta.verdict, Verdict::Pass);
            let dst = IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(&p.data()[30..34]).unwrap(),
            ));
            match want {
                Some(h) => assert_eq!(dst, *h, "a working-set packet on the default path"),
                None => assert_eq!(dst, IpAddr::V4(gateway)),
            }
        }
        resolver.serve(now, encap.mapping_mut().unwrap());
        now += Duration::from_millis(10);
        while encap.poll_timeout().is_some_and(|t| t <= now) {
            encap.handle_timeout(now, 4096);
        }
    }
    assert_eq!(
        encap.default_path_count(),
        32_000,
        "exactly the flood's packets"
    );
    let usage = encap.mapping_mut().unwrap().tenant_usage(LEGIT).unwrap();
    assert_eq!(usage.entries, WORKING_SET);
    // 10 s of flood at 500 queries per second, plus the burst.
    assert!(
        resolver.asked_flood <= 50 + 500 * 10 + 1,
        "{}",
        resolver.asked_flood
    );
}
