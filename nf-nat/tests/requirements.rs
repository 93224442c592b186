//! The allocator's requirements, one named test each (RFC 4787 §12, RFC 6888 §3, and the
//! hyperplane and CGN behaviours of issue 13); each says which profile it applies to.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use core::net::IpAddr;
use nf_core::flow::proto;
use nf_core::{Duration, FlowKey, Instant, ZoneId};
use nf_nat::{
    AllocError, AllocatorConfig, BlockEventKind, CgnSettings, Mapping, PortAllocator, Profile,
    ReleaseError,
};
use std::collections::HashSet;

const SECRET: [u8; 16] = *b"requirement test";

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn t(secs: u64) -> Instant {
    Instant::from_nanos(1_000_000_000 + secs * 1_000_000_000)
}

fn flow(inside: u32, sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
    let [a, b, c, d] = (0x0a00_0000 | inside).to_be_bytes();
    FlowKey::v4(ZoneId(0), [a, b, c, d], dst, proto::TCP, sport, dport)
}

fn nat(profile: Profile, public: &[&str]) -> PortAllocator {
    PortAllocator::new(AllocatorConfig::new(profile, ips(public), SECRET)).unwrap()
}

/// rfc: the same inside address and port keep their public address and port for every
/// destination (RFC 4787 REQ-1, RFC 5382 REQ-1); the port is quarantined only when the last
/// session using it ends.
#[test]
fn rfc4787_req1_endpoint_independent_mapping() {
    let mut n = nat(Profile::Rfc, &["203.0.113.1", "203.0.113.2"]);
    let dsts = [[198, 51, 100, 1], [198, 51, 100, 2], [192, 0, 2, 77]];
    let maps: Vec<Mapping> = dsts
        .iter()
        .map(|&d| n.allocate(t(0), &flow(5, 40000, d, 443)).unwrap())
        .collect();
    assert!(maps.iter().all(|&m| m == maps[0]), "{maps:?}");
    assert_eq!(n.len(), 1);
    assert_eq!(n.counters().reused, 2);
    // Another inside port gets another public port.
    let other = n.allocate(t(0), &flow(5, 40001, dsts[0], 443)).unwrap();
    assert_ne!(other.port(), maps[0].port());
    for (i, &d) in dsts.iter().enumerate() {
        n.release(t(1), &flow(5, 40000, d, 443), maps[i]).unwrap();
        assert_eq!(n.quarantined(), usize::from(i == 2));
    }
}

/// rfc: an inside address uses one public address while it has mappings (RFC 4787 REQ-2,
/// paired pooling), and different inside addresses spread over the pool.
#[test]
fn rfc4787_req2_paired_address_pooling() {
    let pool = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"];
    let mut n = nat(Profile::Rfc, &pool);
    let mut used = HashSet::new();
    for inside in 0..32 {
        let publics: HashSet<u16> = (0..20)
            .map(|p| {
                let f = flow(inside, 30000 + p, [198, 51, 100, p as u8], 80);
                n.allocate(t(0), &f).unwrap().public_index()
            })
            .collect();
        assert_eq!(publics.len(), 1, "inside {inside}: {publics:?}");
        used.extend(publics);
    }
    assert!(used.len() >= 3, "{used:?}");
}

/// rfc and hyperplane: an inside port below 1024 gets a public port below 1024, any other a
/// port ≥ 1024 (RFC 4787 REQ-3a); the low class runs out on its own (port 0 is never used).
#[test]
fn rfc4787_req3a_port_range_class() {
    for profile in [Profile::Rfc, Profile::Hyperplane] {
        let mut n = nat(profile, &["203.0.113.1"]);
        for i in 0..200u16 {
            let low = flow(u32::from(i), 1 + i * 5, [198, 51, 100, 1], 53);
            assert!(n.allocate(t(0), &low).unwrap().port() < 1024);
            let high = flow(u32::from(i), 1024 + i * 300, [198, 51, 100, 1], 53);
            assert!(n.allocate(t(0), &high).unwrap().port() >= 1024);
            // ICMP query identifiers have no classes: always the larger one.
            let mut ping = flow(u32::from(i), 1 + i, [198, 51, 100, 1], 1 + i);
            ping.proto = nf_core::flow::proto::ICMP;
            assert!(n.allocate(t(0), &ping).unwrap().port() >= 1024);
        }
        // Fill the low class: 1023 ports (1..=1023), then the next low flow is refused.
        let mut got = HashSet::new();
        for i in 0..2000u32 {
            match n.allocate(t(0), &flow(1000 + i, 999, [198, 51, 100, 1], 53)) {
                Ok(m) => assert!(got.insert(m.port()) && m.port() < 1024 && m.port() > 0),
                Err(e) => {
                    assert_eq!(e, AllocError::Exhausted);
                    break;
                }
            }
        }
        assert_eq!(got.len() + 200, 1023, "{profile:?}");
    }
}

/// all profiles: a released port is not handed out again for 120 s by default
/// (RFC 6888 REQ-8), and the quarantine is configurable.
#[test]
fn rfc6888_req8_quarantine() {
    for (quarantine, profile) in [
        (120, Profile::Hyperplane),
        (120, Profile::Rfc),
        (10, Profile::Rfc),
    ] {
        let mut cfg = AllocatorConfig::new(profile, ips(&["203.0.113.1"]), SECRET);
        if quarantine != 120 {
            cfg = cfg.with_quarantine(Duration::from_secs(quarantine));
        }
        let mut n = PortAllocator::new(cfg).unwrap();
        // Take every low port for one destination.
        let flows: Vec<FlowKey> = (0..1023)
            .map(|i| flow(i, 100, [198, 51, 100, 1], 53))
            .collect();
        let maps: Vec<Mapping> = flows.iter().map(|f| n.allocate(t(0), f).unwrap()).collect();
        let next = flow(5000, 100, [198, 51, 100, 1], 53);
        assert_eq!(n.allocate(t(0), &next), Err(AllocError::Exhausted));
        n.release(t(10), &flows[7], maps[7]).unwrap();
        assert_eq!(n.counters().quarantined, 1);
        // Still quarantined one second before the end, whatever the timers did.
        n.handle_timeout(t(9 + quarantine), 100);
        assert_eq!(
            n.allocate(t(9 + quarantine), &next),
            Err(AllocError::Exhausted)
        );
        assert_eq!(n.poll_timeout(), Some(t(10 + quarantine)));
        n.handle_timeout(t(10 + quarantine), 100);
        let again = n.allocate(t(10 + quarantine), &next).unwrap();
        assert_eq!(again.port(), maps[7].port());
        assert_eq!(n.counters().quarantined, 0);
    }
}

/// hyperplane: 64,512 connections to one destination from one public address all get
/// distinct ports 1024–65535; the next is refused with the typed error and every earlier
/// mapping stays held (RFC 5508 REQ-8 / RFC 6888 REQ-11: never evict a live mapping).
#[test]
fn hyperplane_64512_per_destination_then_exhausted() {
    let cfg = AllocatorConfig::new(Profile::Hyperplane, ips(&["203.0.113.1"]), SECRET)
        .with_excluded_ports([])
        .with_max_mappings(70_000);
    let mut n = PortAllocator::new(cfg).unwrap();
    let dst = [198, 51, 100, 9];
    let mut ports = HashSet::new();
    let mut held = Vec::new();
    for i in 0..64_512u32 {
        let f = flow(i / 50_000, 1024 + (i % 50_000) as u16, dst, 443);
        let m = n.allocate(t(0), &f).unwrap();
        assert!(m.port() >= 1024);
        assert!(ports.insert(m.port()), "port {} twice", m.port());
        held.push((f, m));
    }
    let last = flow(7, 5555, dst, 443);
    assert_eq!(n.allocate(t(0), &last), Err(AllocError::Exhausted));
    assert_eq!(n.counters().errors[AllocError::Exhausted.index()], 1);
    assert_eq!(n.len(), 64_512);
    assert_eq!(n.active_on(0), 64_512);
    // Another destination (or another destination port) still has every port.
    assert!(n.allocate(t(0), &flow(7, 5555, dst, 80)).is_ok());
    assert!(
        n.allocate(t(0), &flow(7, 5555, [198, 51, 100, 10], 443))
            .is_ok()
    );
    // Every earlier mapping is still held: each releases exactly once.
    for (f, m) in &held {
        n.release(t(1), f, *m).unwrap();
    }
    assert_eq!(
        n.release(t(1), &held[0].0, held[0].1),
        Err(ReleaseError::UnknownMapping)
    );
    // The search stayed within its bound throughout (one destination filled completely).
    assert_eq!(n.counters().errors[AllocError::TooManyProbes.index()], 0);
}

/// hyperplane: a second public address takes over when the first has no port left for a
/// destination.
#[test]
fn hyperplane_next_public_address_when_one_is_full() {
    let cfg = AllocatorConfig::new(
        Profile::Hyperplane,
        ips(&["203.0.113.1", "203.0.113.2"]),
        SECRET,
    );
    let mut n = PortAllocator::new(cfg).unwrap();
    let mut per_ip = [0u32; 2];
    for i in 0..2046 {
        let m = n
            .allocate(t(0), &flow(i, 500, [198, 51, 100, 9], 53))
            .unwrap();
        per_ip[usize::from(m.public_index())] += 1;
    }
    assert_eq!(per_ip, [1023, 1023]);
    assert_eq!(
        n.allocate(t(0), &flow(9999, 500, [198, 51, 100, 9], 53)),
        Err(AllocError::Exhausted)
    );
}

/// all profiles: excluded ports (the defaults 4789 and 6081, and the caller's) are never
/// handed out.
#[test]
fn excluded_ports_never_allocated() {
    for profile in [Profile::Rfc, Profile::Hyperplane] {
        let excluded: Vec<u16> = (2000..3000).chain([4789, 6081]).collect();
        let cfg = AllocatorConfig::new(profile, ips(&["203.0.113.1"]), SECRET)
            .with_excluded_ports(excluded.iter().copied())
            .with_max_mappings(70_000);
        let mut n = PortAllocator::new(cfg).unwrap();
        let mut got = 0;
        for i in 0..70_000u32 {
            let f = flow(
                i / 60_000,
                1024 + (i % 60_000) as u16,
                [198, 51, 100, 1],
                80,
            );
            match n.allocate(t(0), &f) {
                Ok(m) => {
                    assert!(!excluded.contains(&m.port()), "{}", m.port());
                    got += 1;
                }
                Err(e) => {
                    assert_eq!(e, AllocError::Exhausted);
                    break;
                }
            }
        }
        assert_eq!(got, 64_512 - excluded.len(), "{profile:?}");
    }
}

/// cgn: a subscriber holds at most `port_quota` mappings per protocol and `max_blocks`
/// blocks (RFC 6888 REQ-4); other protocols and subscribers are unaffected.
#[test]
fn cgn_quota() {
    let settings = CgnSettings::new()
        .with_block_size(64)
        .with_max_blocks(2)
        .with_port_quota(100);
    let mut n = nat(Profile::Cgn(settings), &["203.0.113.1"]);
    for p in 0..100 {
        n.allocate(t(0), &flow(1, 20000 + p, [198, 51, 100, 1], 80))
            .unwrap();
    }
    let over = flow(1, 30000, [198, 51, 100, 1], 80);
    assert_eq!(n.allocate(t(0), &over), Err(AllocError::QuotaExceeded));
    let mut udp = over;
    udp.proto = proto::UDP;
    assert!(n.allocate(t(0), &udp).is_ok());
    assert!(
        n.allocate(t(0), &flow(2, 30000, [198, 51, 100, 1], 80))
            .is_ok()
    );
    // Block quota: 2 blocks of 64 ports, the quota above the blocks.
    let settings = CgnSettings::new()
        .with_block_size(64)
        .with_max_blocks(2)
        .with_port_quota(1000);
    let mut n = nat(Profile::Cgn(settings), &["203.0.113.1"]);
    let mut ok = 0;
    let err = loop {
        match n.allocate(t(0), &flow(1, 20000 + ok, [198, 51, 100, 1], 80)) {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
    };
    assert_eq!((ok, err), (128, AllocError::QuotaExceeded));
    assert_eq!(n.counters().errors[AllocError::QuotaExceeded.index()], 1);
}

/// cgn: each block assigned or released is one event with the subscriber, the public
/// address and the block's port range; mappings are endpoint-independent inside blocks.
#[test]
fn cgn_block_events() {
    let settings = CgnSettings::new(); // 512-port blocks, 4 per subscriber
    let mut n = nat(Profile::Cgn(settings), &["203.0.113.1", "203.0.113.2"]);
    let f = flow(3, 40000, [198, 51, 100, 1], 80);
    let m = n.allocate(t(0), &f).unwrap();
    let e = n.pop_block_event().unwrap();
    assert_eq!(e.kind, BlockEventKind::Allocated);
    assert_eq!(e.subscriber, "10.0.0.3".parse::<IpAddr>().unwrap());
    assert_eq!(Some(e.public), n.public_ip(m));
    assert!(e.first_port <= m.port() && m.port() <= e.last_port);
    assert_eq!(e.last_port - e.first_port, 511);
    assert_eq!(
        e.to_string(),
        format!(
            "block allocated zone 0 subscriber 10.0.0.3 public {} ports {}-{} at 1000000000ns",
            e.public, e.first_port, e.last_port
        )
    );
    // More connections of the subscriber: same block, no event; EIM for another
    // destination.
    let mut flows = vec![(f, m)];
    for p in 1..100 {
        let g = flow(3, 40000 + p, [198, 51, 100, 1], 80);
        let mg = n.allocate(t(0), &g).unwrap();
        assert_eq!(mg.public_index(), m.public_index());
        assert!(e.first_port <= mg.port() && mg.port() <= e.last_port);
        flows.push((g, mg));
    }
    assert_eq!(
        n.allocate(t(0), &flow(3, 40000, [192, 0, 2, 1], 25))
            .unwrap(),
        m
    );
    assert!(n.pop_block_event().is_none());
    n.release(t(1), &flow(3, 40000, [192, 0, 2, 1], 25), m)
        .unwrap();
    for (g, mg) in &flows {
        n.release(t(1), g, *mg).unwrap();
    }
    // The block goes back when its last port leaves quarantine.
    assert!(n.pop_block_event().is_none());
    n.handle_timeout(t(121), 1000);
    let r = n.pop_block_event().unwrap();
    assert_eq!(r.kind, BlockEventKind::Released);
    assert_eq!(
        (r.first_port, r.public, r.at),
        (e.first_port, e.public, t(121))
    );
    assert_eq!(n.counters().blocks_allocated, 1);
    assert_eq!(n.counters().blocks_released, 1);
}

/// all profiles: live plus quarantined mappings are bounded by `max_mappings`; at the bound
/// allocation fails with the typed error, and quarantined ports count until they are free.
#[test]
fn capacity_bound_counts_quarantine() {
    let cfg = AllocatorConfig::new(Profile::Hyperplane, ips(&["203.0.113.1"]), SECRET)
        .with_max_mappings(4);
    let mut n = PortAllocator::new(cfg).unwrap();
    let flows: Vec<FlowKey> = (0..5)
        .map(|i| flow(i, 40000, [198, 51, 100, 1], 80))
        .collect();
    let maps: Vec<Mapping> = flows[..4]
        .iter()
        .map(|f| n.allocate(t(0), f).unwrap())
        .collect();
    assert_eq!(n.allocate(t(0), &flows[4]), Err(AllocError::CapacityFull));
    n.release(t(0), &flows[0], maps[0]).unwrap();
    assert_eq!(n.allocate(t(1), &flows[4]), Err(AllocError::CapacityFull));
    assert!(n.allocate(t(120), &flows[4]).is_ok());
}

/// all profiles: flows without ports, and flows of a family without public addresses, are
/// refused with their own errors; releasing an unknown mapping is refused and counted.
#[test]
fn typed_errors_and_counters() {
    let mut n = nat(Profile::Rfc, &["203.0.113.1"]);
    let gre = FlowKey::v4(ZoneId(0), [10, 0, 0, 1], [192, 0, 2, 1], proto::GRE, 0, 0);
    assert_eq!(n.allocate(t(0), &gre), Err(AllocError::UnsupportedProtocol));
    let v6 = FlowKey::v6(ZoneId(0), [0xfd; 16], [0x20; 16], proto::UDP, 5000, 53);
    assert_eq!(n.allocate(t(0), &v6), Err(AllocError::NoPublicAddress));
    let f = flow(1, 40000, [192, 0, 2, 1], 80);
    let m = n.allocate(t(0), &f).unwrap();
    n.release(t(0), &f, m).unwrap();
    assert_eq!(n.release(t(0), &f, m), Err(ReleaseError::UnknownMapping));
    let mut seen = std::collections::HashMap::new();
    n.visit_counters("nat", &mut |stage, name, v| {
        assert_eq!(stage, "nat");
        assert!(seen.insert(name, v).is_none(), "{name} twice");
    });
    assert_eq!(seen["allocations"], 1);
    assert_eq!(seen["releases"], 1);
    assert_eq!(seen["release_unknown"], 1);
    assert_eq!(seen["alloc_error_unsupported_protocol"], 1);
    assert_eq!(seen["alloc_error_no_public_address"], 1);
    assert_eq!(seen["quarantined"], 1);
    assert_eq!(seen["probes_1"], 1);
}

/// IPv6 flows map to IPv6 public addresses (stateful NAT66 uses the same allocator).
#[test]
fn ipv6_uses_ipv6_public_addresses() {
    for profile in [
        Profile::Rfc,
        Profile::Hyperplane,
        Profile::Cgn(CgnSettings::new().with_block_size(256)),
    ] {
        let mut n = nat(profile, &["203.0.113.1", "2001:db8::1"]);
        let f = FlowKey::v6(ZoneId(0), [0xfd; 16], [0x20; 16], proto::UDP, 5000, 53);
        let m = n.allocate(t(0), &f).unwrap();
        assert_eq!(n.public_ip(m), Some("2001:db8::1".parse().unwrap()));
        let reply = n.reply_key(&f, m).unwrap();
        assert_eq!((reply.src_port, reply.dst_port), (53, m.port()));
    }
}

/// Settings out of range are refused with their own error, never clamped.
#[test]
fn config_errors() {
    use nf_nat::{ConfigError, Owner, RssSteering};
    let one = || ips(&["203.0.113.1"]);
    let new = |c: AllocatorConfig| PortAllocator::new(c).err();
    let hp = || AllocatorConfig::new(Profile::Hyperplane, one(), SECRET);
    assert_eq!(
        new(AllocatorConfig::new(Profile::Rfc, vec![], SECRET)),
        Some(ConfigError::PublicIps)
    );
    assert_eq!(
        new(hp().with_max_mappings(0)),
        Some(ConfigError::MaxMappings)
    );
    assert_eq!(new(hp().with_max_probes(0)), Some(ConfigError::MaxProbes));
    let bad_owner = Owner {
        nodes: 2,
        cores: 2,
        node: 2,
        core: 0,
    };
    assert_eq!(new(hp().with_owner(bad_owner)), Some(ConfigError::Owner));
    // Steering needs the hyperplane profile, a power-of-two table, and this core's queue.
    let rfc = AllocatorConfig::new(Profile::Rfc, one(), SECRET).with_steering(RssSteering::new(2));
    assert_eq!(new(rfc), Some(ConfigError::Steering));
    let odd = RssSteering::new(2).with_indirection(vec![0, 1, 0]);
    assert_eq!(new(hp().with_steering(odd)), Some(ConfigError::Steering));
    let owner = Owner {
        nodes: 1,
        cores: 4,
        node: 0,
        core: 3,
    };
    let few = RssSteering::new(2);
    assert_eq!(
        new(hp().with_owner(owner).with_steering(few)),
        Some(ConfigError::Steering)
    );
    let blocks = |c: CgnSettings| new(AllocatorConfig::new(Profile::Cgn(c), one(), SECRET));
    assert_eq!(
        blocks(CgnSettings::new().with_block_size(100)),
        Some(ConfigError::Blocks)
    );
    assert_eq!(
        blocks(CgnSettings::new().with_block_size(8192)),
        Some(ConfigError::Blocks)
    );
    assert_eq!(
        blocks(CgnSettings::new().with_max_blocks(0)),
        Some(ConfigError::Blocks)
    );
    assert_eq!(blocks(CgnSettings::new()), None);
}
