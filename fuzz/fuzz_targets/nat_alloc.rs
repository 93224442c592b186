//! Fuzzes the NAT port allocator with arbitrary allocations, releases (real, repeated and
//! bogus), time steps and timer sweeps, under an arbitrary profile, port space, quarantine,
//! probe bound and owner, against a model of the live and quarantined public tuples: no
//! panic; no two live mappings share a public tuple; no tuple is handed out again during its
//! quarantine; endpoint-independent profiles keep one mapping per inside endpoint; ports keep
//! the inside port's range class (rfc, hyperplane), stay in the owner's range and off the
//! excluded ports; failures are typed and change nothing; probes and timer work stay within
//! their bounds; counters agree with the model; `holds` holds every live session's reply
//! and a released one's only while its tuple is live; once everything is released and the
//! quarantine over, the allocator is empty.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::flow::proto;
use nf_core::{Duration, FlowKey, Instant, ZoneId};
use nf_nat::{
    AllocError, AllocatorConfig, CgnSettings, Mapping, Owner, PortAllocator, Profile, owner_of,
};
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Arbitrary, Debug)]
struct Setup {
    profile: u8,
    /// High ports allowed: 1024 .. 1024 + 64 × (1 + words % 4).
    words: u8,
    quarantine: u8,
    max_mappings: u8,
    max_probes: u8,
    owner: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        inside: u8,
        sport: u8,
        dst: u8,
        proto: u8,
        v6: bool,
    },
    Release(u16),
    ReleaseAgain(u16),
    Bogus {
        inside: u8,
    },
    Advance(u16),
    Timeout(u8),
}

type Tuple = (u16, u16, u8, Option<([u8; 16], u16)>);

fuzz_target!(|input: (Setup, Vec<Op>)| {
    let (setup, ops) = input;
    let profile = match setup.profile % 3 {
        0 => Profile::Rfc,
        1 => Profile::Hyperplane,
        _ => Profile::Cgn(
            CgnSettings::new()
                .with_block_size(64)
                .with_max_blocks(1 + u16::from(setup.profile >> 6))
                .with_port_quota(u32::from(setup.profile >> 2 & 15)),
        ),
    };
    let hi = 1024 + 64 * (1 + u32::from(setup.words % 4));
    let excluded: Vec<u16> = (hi..=65535).map(|p| p as u16).chain([1030, 1100]).collect();
    let quarantine = Duration::from_secs(u64::from(setup.quarantine % 8) * 30);
    let (nodes, cores) = (
        1 + u32::from(setup.owner & 1),
        1 + u32::from(setup.owner >> 1 & 1),
    );
    let owner = Owner {
        nodes,
        cores,
        node: u32::from(setup.owner >> 2 & 1) % nodes,
        core: u32::from(setup.owner >> 3 & 1) % cores,
    };
    let max_probes = 1 + u32::from(setup.max_probes % 40);
    let publics: Vec<IpAddr> = ["203.0.113.1", "203.0.113.2", "2001:db8::1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let cfg = AllocatorConfig::new(profile, publics, [5; 16])
        .with_excluded_ports(excluded.iter().copied())
        .with_max_mappings(1 + usize::from(setup.max_mappings))
        .with_max_probes(max_probes)
        .with_quarantine(quarantine)
        .with_owner(owner);
    let Ok(mut n) = PortAllocator::new(cfg) else {
        // Only CGN can refuse: no whole block in this owner's range.
        assert!(matches!(profile, Profile::Cgn(_)));
        return;
    };
    let split = n.split();
    let tuple = |f: &FlowKey, m: Mapping| -> Tuple {
        let dst = (profile == Profile::Hyperplane).then(|| (*f.dst_raw(), f.dst_port));
        (m.public_index(), m.port(), f.proto, dst)
    };
    let inside = |f: &FlowKey| (f.zone.0, *f.src_raw(), f.src_port, f.proto);
    let mut now = Instant::from_nanos(1);
    let mut sessions: Vec<(FlowKey, Mapping)> = Vec::new();
    let mut released: Vec<(FlowKey, Mapping)> = Vec::new();
    let mut live: HashMap<Tuple, u32> = HashMap::new();
    let mut eim: HashMap<(u32, [u8; 16], u16, u8), Mapping> = HashMap::new();
    let mut quarantined: Vec<(Tuple, Instant)> = Vec::new();
    for op in ops.into_iter().take(500) {
        match op {
            Op::Alloc {
                inside: i,
                sport,
                dst,
                proto: p,
                v6,
            } => {
                let proto = [proto::TCP, proto::UDP, proto::ICMP, proto::GRE][usize::from(p % 4)];
                let sport = if sport & 1 == 0 {
                    u16::from(sport)
                } else {
                    1024 + u16::from(sport)
                };
                let f = if v6 {
                    let mut s = [0xfd; 16];
                    s[15] = i % 8;
                    let mut d = [0x20; 16];
                    d[15] = dst % 3;
                    FlowKey::v6(ZoneId(u32::from(i >> 6)), s, d, proto, sport, 443)
                } else {
                    FlowKey::v4(
                        ZoneId(u32::from(i >> 6)),
                        [10, 0, 0, i % 8],
                        [198, 51, 100, dst % 3],
                        proto,
                        sport,
                        443,
                    )
                };
                let before = (n.len(), n.quarantined());
                match n.allocate(now, &f) {
                    Ok(m) => {
                        let t = tuple(&f, m);
                        match eim.get(&inside(&f)) {
                            Some(&old) if profile != Profile::Hyperplane => assert_eq!(old, m),
                            _ => assert!(!live.contains_key(&t), "tuple {t:?} shared"),
                        }
                        assert!(
                            !quarantined.iter().any(|(q, until)| *q == t && *until > now),
                            "{t:?} reused in quarantine"
                        );
                        assert!(!excluded.contains(&m.port()) && m.port() != 0);
                        assert!(u32::from(m.port()) < hi);
                        let is_cgn = matches!(profile, Profile::Cgn(_));
                        let icmp = proto == proto::ICMP;
                        assert_eq!(
                            m.port() < 1024,
                            f.src_port < 1024 && !is_cgn && !icmp,
                            "range class"
                        );
                        let o = owner_of(m.port(), split);
                        assert_eq!((o.node, o.core), (owner.node, owner.core));
                        assert_eq!(n.public_ip(m).map(|a| a.is_ipv6()), Some(v6));
                        if profile != Profile::Hyperplane {
                            eim.insert(inside(&f), m);
                        }
                        *live.entry(t).or_default() += 1;
                        sessions.push((f, m));
                    }
                    Err(e) => {
                        assert_eq!(n.len(), before.0, "{e:?} changed the live mappings");
                        assert!(n.quarantined() <= before.1);
                        if proto == proto::GRE {
                            assert_eq!(e, AllocError::UnsupportedProtocol);
                        }
                    }
                }
                assert!(n.last_probes() <= max_probes, "{} probes", n.last_probes());
            }
            Op::Release(i) => {
                if sessions.is_empty() {
                    continue;
                }
                let (f, m) = sessions.swap_remove(usize::from(i) % sessions.len());
                assert!(n.release(now, &f, m).is_ok());
                let t = tuple(&f, m);
                let c = live.get_mut(&t).unwrap();
                *c -= 1;
                if *c == 0 {
                    live.remove(&t);
                    eim.remove(&inside(&f));
                    quarantined.push((t, now + quarantine));
                }
                released.push((f, m));
            }
            Op::ReleaseAgain(i) => {
                if released.is_empty() {
                    continue;
                }
                let (f, m) = released[usize::from(i) % released.len()];
                // Still live through another session of the same endpoint (or tuple)? Then
                // it is a real release; skip it, the model holds the session.
                if live.contains_key(&tuple(&f, m)) || eim.get(&inside(&f)) == Some(&m) {
                    continue;
                }
                assert!(n.release(now, &f, m).is_err(), "second release accepted");
            }
            Op::Bogus { inside: i } => {
                // A flow to a destination no allocation ever used: nothing to release.
                // (Hyperplane stores only the public tuple, so the caller must hand back the
                // flow it allocated for; conntrack's on_end does.)
                let f = FlowKey::v4(
                    ZoneId(0),
                    [10, 0, 2, i],
                    [198, 51, 100, 200],
                    proto::UDP,
                    5000,
                    443,
                );
                let m = sessions.first().map_or(Mapping::default(), |x| x.1);
                assert!(
                    n.release(now, &f, m).is_err(),
                    "release of a flow never mapped"
                );
            }
            Op::Advance(s) => {
                now += Duration::from_secs(u64::from(s % 300));
                quarantined.retain(|(_, until)| *until > now);
            }
            Op::Timeout(b) => {
                assert!(n.handle_timeout(now, usize::from(b)) <= usize::from(b));
            }
        }
        assert_eq!(n.len(), live.len());
        let c = n.counters();
        assert_eq!(c.active.iter().sum::<u64>(), live.len() as u64);
        assert_eq!(
            (0..3).map(|i| n.active_on(i)).sum::<u64>(),
            live.len() as u64
        );
        assert!(n.len() + n.quarantined() <= 1 + usize::from(setup.max_mappings));
        // Every live session's reply is for a mapping the allocator holds; a released
        // session's reply only while its tuple is still live through another session.
        for (f, m) in &sessions {
            let reply = n.reply_key(f, *m).unwrap();
            assert!(n.holds(&reply), "{f:?} -> {m:?}");
        }
        if let Some((f, m)) = released.last() {
            let reply = n.reply_key(f, *m).unwrap();
            let still = live.contains_key(&tuple(f, *m));
            assert_eq!(n.holds(&reply), still, "released {f:?} -> {m:?}");
        }
    }
    for (f, m) in sessions.drain(..) {
        assert!(n.release(now, &f, m).is_ok());
    }
    now += quarantine + Duration::from_secs(1);
    while n.poll_timeout().is_some_and(|t| t <= now) {
        n.handle_timeout(now, 7);
    }
    assert_eq!((n.len(), n.quarantined()), (0, 0));
    if let Profile::Cgn(_) = profile {
        assert_eq!(n.counters().blocks_allocated, n.counters().blocks_released);
    }
});
