//! Property tests of the port allocator against a simple model (a set of live public tuples
//! and a list of quarantined ones), and of reply ownership by port range and by RSS hash.

use core::net::IpAddr;
use nf_core::flow::proto;
use nf_core::toeplitz::{SYMMETRIC_KEY, Toeplitz};
use nf_core::{Duration, FlowKey, Instant, ZoneId};
use nf_nat::{
    AllocError, AllocatorConfig, CgnSettings, Mapping, Owner, PortAllocator, PortSplit, Profile,
    RssSteering, owner_of,
};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        inside: u8,
        sport: u8,
        dst: u8,
        proto: u8,
    },
    Release(usize),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u8..8, 0u8..3, 0u8..3).prop_map(|(inside, sport, dst, proto)| Op::Alloc { inside, sport, dst, proto }),
        2 => any::<usize>().prop_map(Op::Release),
        1 => (0u16..200).prop_map(Op::Advance),
    ]
}

fn profile(i: u8) -> Profile {
    match i % 3 {
        0 => Profile::Rfc,
        1 => Profile::Hyperplane,
        _ => Profile::Cgn(
            CgnSettings::new()
                .with_block_size(64)
                .with_max_blocks(2)
                .with_port_quota(40),
        ),
    }
}

/// The public tuple a mapping occupies: (public address, port, protocol) and, endpoint-
/// dependent, the destination.
type Tuple = (u16, u16, u8, Option<([u8; 16], u16)>);

fn tuple(p: Profile, f: &FlowKey, m: Mapping) -> Tuple {
    let dst = (p == Profile::Hyperplane).then(|| (*f.dst_raw(), f.dst_port));
    (m.public_index(), m.port(), f.proto, dst)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No two live mappings share a public tuple; a released tuple is not handed out again
    /// before its quarantine ends; endpoint-independent profiles give one inside endpoint one
    /// mapping; failures are typed and change nothing; counters agree with the model;
    /// `holds` says of a reply exactly what the model's live tuples say (every live
    /// session's reply is held; of every TCP and UDP port of the range, from each
    /// destination, only the live ones).
    #[test]
    fn matches_model(which in 0u8..3, ops in proptest::collection::vec(op(), 1..300)) {
        let profile = profile(which);
        // A small port space so that ports run out: two high words (1024..1152).
        let cfg = AllocatorConfig::new(profile, vec!["203.0.113.1".parse().unwrap(), "203.0.113.2".parse().unwrap()], [9; 16])
            .with_excluded_ports((1152..=65535).chain(1..1024))
            .with_max_mappings(200)
            .with_quarantine(Duration::from_secs(100));
        let mut n = PortAllocator::new(cfg).unwrap();
        let mut now = Instant::from_nanos(1);
        // Sessions: (flow, mapping). Live tuples with their session count.
        let mut sessions: Vec<(FlowKey, Mapping)> = Vec::new();
        let mut live: HashMap<Tuple, u32> = HashMap::new();
        let mut eim: HashMap<(u32, [u8; 16], u16, u8), Mapping> = HashMap::new();
        let mut quarantine: Vec<(Tuple, Instant)> = Vec::new();
        for (i, op) in ops.iter().cloned().enumerate() {
            match op {
                Op::Alloc { inside, sport, dst, proto: p } => {
                    let proto = [proto::TCP, proto::UDP, proto::ICMP][usize::from(p)];
                    let f = FlowKey::v4(ZoneId(0), [10, 0, 0, inside], [198, 51, 100, dst], proto, 2000 + u16::from(sport), 443);
                    let before = n.len();
                    match n.allocate(now, &f) {
                        Ok(m) => {
                            let t = tuple(profile, &f, m);
                            let ik = (0, *f.src_raw(), f.src_port, f.proto);
                            if profile == Profile::Hyperplane {
                                prop_assert!(!live.contains_key(&t), "tuple {t:?} shared");
                            } else if let Some(&old) = eim.get(&ik) {
                                prop_assert_eq!(old, m, "endpoint-independent mapping changed");
                            } else {
                                prop_assert!(!live.contains_key(&t), "tuple {t:?} shared");
                            }
                            prop_assert!(
                                !quarantine.iter().any(|(q, until)| *q == t && *until > now),
                                "tuple {t:?} reused in quarantine"
                            );
                            prop_assert!((1024..1152).contains(&m.port()));
                            if profile != Profile::Hyperplane {
                                eim.insert(ik, m);
                            }
                            *live.entry(t).or_default() += 1;
                            sessions.push((f, m));
                        }
                        Err(e) => {
                            prop_assert!(matches!(e, AllocError::Exhausted | AllocError::QuotaExceeded | AllocError::CapacityFull), "{e:?}");
                            prop_assert_eq!(n.len(), before);
                        }
                    }
                }
                Op::Release(i) => {
                    if sessions.is_empty() {
                        continue;
                    }
                    let (f, m) = sessions.swap_remove(i % sessions.len());
                    n.release(now, &f, m).unwrap();
                    let t = tuple(profile, &f, m);
                    let c = live.get_mut(&t).unwrap();
                    *c -= 1;
                    if *c == 0 {
                        live.remove(&t);
                        eim.remove(&(0, *f.src_raw(), f.src_port, f.proto));
                        quarantine.push((t, now + Duration::from_secs(100)));
                    }
                }
                Op::Advance(s) => {
                    now += Duration::from_secs(u64::from(s));
                    while n.poll_timeout().is_some_and(|t| t <= now) {
                        prop_assert!(n.handle_timeout(now, 3) <= 3);
                    }
                    quarantine.retain(|(_, until)| *until > now);
                }
            }
            // Mappings: one per live tuple (EIM: per inside endpoint).
            prop_assert_eq!(n.len(), live.len());
            let c = n.counters();
            prop_assert_eq!(c.active.iter().sum::<u64>(), live.len() as u64);
            prop_assert_eq!(n.active_on(0) + n.active_on(1), live.len() as u64);
            prop_assert!(n.quarantined() >= quarantine.len());
            for (f, m) in &sessions {
                let reply = n.reply_key(f, *m).unwrap();
                prop_assert!(n.holds(&reply), "{f:?} -> {m:?}");
            }
            if i % 25 == 0 || i + 1 == ops.len() {
                for (public, ip) in [(0u16, [203, 0, 113, 1]), (1, [203, 0, 113, 2])] {
                    for proto in [proto::TCP, proto::UDP] {
                        for dst in 0u8..3 {
                            let from = [198, 51, 100, dst];
                            for port in 1024..1152u16 {
                                let reply = FlowKey::v4(ZoneId(0), from, ip, proto, 443, port);
                                let want = if profile == Profile::Hyperplane {
                                    let d = FlowKey::v4(ZoneId(0), ip, from, proto, port, 443);
                                    live.contains_key(&(public, port, proto, Some((*d.dst_raw(), 443))))
                                } else {
                                    live.keys().any(|t| (t.0, t.1, t.2) == (public, port, proto))
                                };
                                prop_assert_eq!(n.holds(&reply), want, "{:?}", reply);
                            }
                        }
                    }
                }
            }
        }
        // Everything released and every quarantine over: the allocator is empty again.
        for (f, m) in sessions.drain(..) {
            n.release(now, &f, m).unwrap();
        }
        now += Duration::from_secs(101);
        n.handle_timeout(now, usize::MAX);
        prop_assert_eq!((n.len(), n.quarantined()), (0, 0));
        if let Profile::Cgn(_) = profile {
            prop_assert_eq!(n.counters().blocks_allocated, n.counters().blocks_released);
        }
    }

    /// Range split: every port an allocator of (node, core) hands out is owned by that node
    /// and core, for random node and core counts; owners never share a port.
    #[test]
    fn owner_ranges_own_their_replies(nodes in 1u32..9, cores in 1u32..17, seed in any::<u64>()) {
        let split = PortSplit { nodes, cores };
        let mut seen = HashSet::new();
        for node in 0..nodes {
            for core in [0, cores - 1, (seed % u64::from(cores)) as u32] {
                let cfg = AllocatorConfig::new(Profile::Hyperplane, vec!["203.0.113.1".parse().unwrap()], seed.to_le_bytes().repeat(2).try_into().unwrap())
                    .with_owner(Owner { nodes, cores, node, core });
                let mut n = PortAllocator::new(cfg).unwrap();
                for i in 0..40u16 {
                    let sport = if i % 4 == 0 { 100 + i } else { 30000 + i };
                    let f = FlowKey::v4(ZoneId(0), [10, 0, 0, 1], [198, 51, 100, 7], proto::UDP, sport, 53);
                    match n.allocate(Instant::ZERO, &f) {
                        Ok(m) => {
                            let o = owner_of(m.port(), split);
                            prop_assert_eq!((o.node, o.core), (node, core));
                            prop_assert_eq!(n.owner_of(m.port()), o);
                            seen.insert((node, core, m.port()));
                        }
                        // Small owners may have no low port at all.
                        Err(e) => prop_assert!(sport < 1024 && e == AllocError::Exhausted, "{e:?}"),
                    }
                }
            }
        }
        let ports: HashSet<u16> = seen.iter().map(|&(_, _, p)| p).collect();
        let owners_of: HashSet<(u32, u32, u16)> = ports.iter().map(|&p| { let o = owner_of(p, split); (o.node, o.core, p) }).collect();
        prop_assert!(owners_of.is_superset(&seen));
    }

    /// Replies reach their owner through nf-core's own steering: for random node and core
    /// counts and profiles, every reply to a port the allocator of (node, core) handed out
    /// (IPv4 and IPv6) is steered to worker `core` by the node's `Steering`, which owns the
    /// public addresses with `split.partition(node)`, and by a node that took its share over
    /// (`Steering::own_also`); `owner_of` names (node, core), and no other node's partition
    /// claims the port.
    #[test]
    fn replies_are_steered_to_their_owner_by_nf_core(nodes in 1u32..9, cores in 1u16..33, seed in any::<u64>(), profile in 0u8..3) {
        use nf_core::steer::{Steer, SteerFields, SteerHash, Steering};
        use nf_core::{FlowHasher, Meta, flags};
        let split = PortSplit { nodes, cores: u32::from(cores) };
        let node = (seed % u64::from(nodes)) as u32;
        let core = (seed >> 8) % u64::from(cores);
        let profile = [Profile::Rfc, Profile::Hyperplane, Profile::Cgn(CgnSettings::new().with_block_size(64))][usize::from(profile)];
        let publics: Vec<IpAddr> = vec!["203.0.113.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let steering = |node: u32| {
            let mut s = Steering::new(cores, SteerHash::Keyed(FlowHasher::new([5; 16])), SteerFields::FiveTuple);
            for &ip in &publics {
                s.own(ip, split.partition(node).unwrap()).unwrap();
            }
            s
        };
        let mine = steering(node);
        let others: Vec<Steering> = (0..nodes).filter(|&n| n != node).map(steering).collect();
        // Another node that took over this one's share when it failed: its own partition,
        // and this node's beside it.
        let survivor = (nodes > 1).then(|| {
            let mut s = steering((node + 1) % nodes);
            for &ip in &publics {
                s.own_also(ip, split.partition(node).unwrap()).unwrap();
            }
            s
        });
        let cfg = AllocatorConfig::new(profile, publics.clone(), seed.to_le_bytes().repeat(2).try_into().unwrap())
            .with_owner(Owner { nodes, cores: u32::from(cores), node, core: core as u32 });
        let mut n = PortAllocator::new(cfg).unwrap();
        for i in 0..60u16 {
            let f = if i % 20 == 0 {
                // A low-class source port: the mapping's public port is below 1024 too.
                FlowKey::v4(ZoneId(0), [10, 0, 0, (i % 3) as u8], [198, 51, 100, i as u8], proto::UDP, 100 + i, 53)
            } else if i % 2 == 0 {
                FlowKey::v4(ZoneId(0), [10, 0, 0, (i % 3) as u8], [198, 51, 100, i as u8], proto::TCP, 1024 + i * 97, 443)
            } else {
                FlowKey::v6(ZoneId(0), [0xfd; 16], [0x26; 16], proto::UDP, 2000 + i, 53)
            };
            let m = n.allocate(Instant::ZERO, &f).unwrap();
            let reply = n.reply_key(&f, m).unwrap();
            let mut meta = Meta::default();
            (meta.flags, meta.flow) = (flags::L3_VALID | flags::L4_VALID, reply);
            prop_assert_eq!(mine.worker(&[], &meta), Steer::Worker(core as u16), "reply {}", reply);
            if let Some(s) = &survivor {
                prop_assert_eq!(s.worker(&[], &meta), Steer::Worker(core as u16), "taken over: {}", reply);
            }
            for o in &others {
                prop_assert_eq!(o.worker(&[], &meta), Steer::Unknown);
            }
            let o = owner_of(m.port(), split);
            prop_assert_eq!((o.node, u64::from(o.core)), (node, core));
            if !matches!(profile, Profile::Cgn(_)) {
                // CGN port blocks are high-class only; the others keep the range class.
                prop_assert_eq!(m.port() < 1024, f.src_port < 1024, "range class kept: {}", reply);
            }
        }
        // Every port, both classes: each node's steering names `owner_of`'s core exactly
        // when that core owns the port (its run of the class, computed here naively), and
        // `Unknown` otherwise (another node's port, or one no core of the node owns).
        let all: Vec<Steering> = (0..nodes).map(steering).collect();
        let owns = |port: u16, node: u32, core: u32| {
            let (base, len) = if port < 1024 { (0u64, 16u64) } else { (16, 1008) };
            let (lo, hi) = (base + u64::from(node) * len / u64::from(nodes), base + u64::from(node + 1) * len / u64::from(nodes));
            let per = (hi - lo) * 64 / u64::from(cores);
            let first = lo * 64 + u64::from(core) * per;
            (first..first + per).contains(&u64::from(port))
        };
        for port in 0..=u16::MAX {
            let o = owner_of(port, split);
            let key = FlowKey::v4(ZoneId(0), [198, 51, 100, 1], [203, 0, 113, 1], proto::UDP, 53, port);
            let mut meta = Meta::default();
            (meta.flags, meta.flow) = (flags::L3_VALID | flags::L4_VALID, key);
            for (n, s) in (0u32..).zip(&all) {
                let want = if n == o.node && owns(port, o.node, o.core) { Steer::Worker(o.core as u16) } else { Steer::Unknown };
                prop_assert_eq!(s.worker(&[], &meta), want, "port {} node {}", port, n);
            }
        }
    }

    /// RSS steering: every reply's symmetric Toeplitz hash (computed here independently)
    /// selects the receive queue of the core that allocated its port, and its port lies in
    /// the node's range, for random node and core counts, IPv4 and IPv6.
    #[test]
    fn steering_every_reply_lands_on_its_owner(nodes in 1u32..6, cores in 1u16..17, seed in any::<u64>(), v6 in any::<bool>()) {
        let toeplitz = Toeplitz::new(&SYMMETRIC_KEY);
        let node = (seed % u64::from(nodes)) as u32;
        let core = ((seed >> 8) % u64::from(cores)) as u32;
        let publics: Vec<IpAddr> = vec!["203.0.113.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let cfg = AllocatorConfig::new(Profile::Hyperplane, publics.clone(), [7; 16])
            .with_owner(Owner { nodes, cores: u32::from(cores), node, core })
            .with_steering(RssSteering::new(cores));
        let mut n = PortAllocator::new(cfg).unwrap();
        let mut rng = seed | 1;
        for i in 0..200u32 {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            let b = rng.to_be_bytes();
            let sport = 1024 + (rng >> 48) as u16 % 60000;
            let f = if v6 {
                let mut d = [0x26; 16];
                d[8..].copy_from_slice(&b);
                FlowKey::v6(ZoneId(0), [0xfd; 16], d, proto::TCP, sport, (rng >> 20) as u16)
            } else {
                FlowKey::v4(ZoneId(0), [10, 0, (i >> 8) as u8, i as u8], [b[0], b[1], b[2], b[3]], proto::TCP, sport, (rng >> 20) as u16)
            };
            let m = n.allocate(Instant::ZERO, &f).unwrap();
            let reply = n.reply_key(&f, m).unwrap();
            let h = toeplitz.hash_flow(&reply, true);
            prop_assert_eq!(u32::from((h & 127) as u16 % cores), core, "reply {:?}", reply);
            prop_assert_eq!(n.queue_of_reply(&reply), Some(core as u16));
            prop_assert_eq!(owner_of(m.port(), PortSplit { nodes, cores: 1 }).node, node);
            prop_assert!(m.port() >= 1024);
        }
        prop_assert!(n.counters().probes[7] == 0, "{:?}", n.counters().probes);
    }
}
