//! Properties of the stateless sharder: determinism, at most one node changed per membership
//! event, the share of tenants moved, zone balance, weights, draining and the failed lookback.
#![expect(
    clippy::std_instead_of_alloc,
    clippy::unwrap_used,
    reason = "tests use std freely; test helpers fail the test by panicking"
)]

use nf_shuffle::{
    ConfigError, Membership, Node, NodeId, NodeState, Shard, ShardConfig, ShardError, ShardKey,
    Sharder, ZoneId,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

const KEY: [u8; 16] = *b"placement tests!";
const LOOKBACK: u64 = 1_000;

fn sharder(nodes: &[Node], zones: u32, k: u32) -> Sharder {
    let m = Membership::with_zones((0..zones).map(ZoneId), nodes.iter().copied()).unwrap();
    let config = ShardConfig::new(k).with_failed_lookback_ns(LOOKBACK);
    Sharder::new(ShardKey::new(KEY), config, m).unwrap()
}

fn tenant(i: u32) -> Vec<u8> {
    format!("tenant-{i}").into_bytes()
}

/// A state for node `id`; failed nodes inside the lookback at `NOW` each expire at their own
/// time (so that time passing is a sequence of single-node events).
fn state_from(code: u8, id: u64) -> NodeState {
    match code % 6 {
        // Failed inside the lookback at the test's `now`.
        3 => NodeState::Failed {
            since_ns: NOW - 1 - id % 900,
        },
        // Failed and past the lookback.
        4 => NodeState::Failed { since_ns: 100 },
        5 => NodeState::Draining,
        _ => NodeState::Active,
    }
}

const NOW: u64 = 10_000;

/// A fleet: (zones, nodes with ids 0..n, zone, weight 1..=3, mixed states).
fn fleet() -> impl Strategy<Value = (u32, Vec<Node>)> {
    (1u32..=4, 3usize..=36).prop_flat_map(|(zones, n)| {
        (
            Just(zones),
            prop::collection::vec((0..zones, 1u32..=3, any::<u8>()), n),
        )
            .prop_map(|(zones, spec)| {
                let nodes = spec
                    .into_iter()
                    .enumerate()
                    .map(|(i, (z, w, s))| {
                        let id = i as u64 * 7 + 3;
                        Node::new(id, z)
                            .with_weight(w)
                            .with_state(state_from(s, id))
                    })
                    .collect();
                (zones, nodes)
            })
    })
}

fn shards(s: &Sharder, tenants: u32) -> Vec<Result<Shard, ShardError>> {
    (0..tenants).map(|t| s.shard(&tenant(t), NOW)).collect()
}

/// Checks that every tenant placed both times changed at most one node.
fn at_most_one_changed(before: &[Result<Shard, ShardError>], after: &[Result<Shard, ShardError>]) {
    for (b, a) in before.iter().zip(after) {
        if let (Ok(b), Ok(a)) = (b, a) {
            assert!(a.nodes_changed(b) <= 1, "before {b:?}\nafter {a:?}");
        }
    }
}

proptest! {
    #[test]
    fn deterministic_and_independent_of_listing_order(
        (zones, nodes) in fleet(), k in 1u32..=6, rot in 0usize..36,
    ) {
        let a = sharder(&nodes, zones, k);
        let mut rotated = nodes.clone();
        rotated.rotate_left(rot % nodes.len());
        rotated.reverse();
        let b = sharder(&rotated, zones, k);
        for t in 0..20 {
            let x = a.shard(&tenant(t), NOW);
            prop_assert_eq!(&x, &a.shard(&tenant(t), NOW));
            prop_assert_eq!(&x, &b.shard(&tenant(t), NOW));
            prop_assert_eq!(&x, &a.clone().shard(&tenant(t), NOW));
        }
    }

    #[test]
    fn adding_a_node_changes_at_most_one(
        (zones, nodes) in fleet(), k in 1u32..=8, zone in 0u32..4, weight in 1u32..=3,
    ) {
        let before = shards(&sharder(&nodes, zones, k), 60);
        let mut more = nodes.clone();
        more.push(Node::new(1_000_000, zone % zones).with_weight(weight));
        let after = shards(&sharder(&more, zones, k), 60);
        at_most_one_changed(&before, &after);
    }

    #[test]
    fn removing_a_node_changes_at_most_one(
        (zones, nodes) in fleet(), k in 1u32..=8, which in any::<prop::sample::Index>(),
    ) {
        let before = shards(&sharder(&nodes, zones, k), 60);
        let mut fewer = nodes.clone();
        fewer.remove(which.index(fewer.len()));
        let after = shards(&sharder(&fewer, zones, k), 60);
        at_most_one_changed(&before, &after);
    }

    #[test]
    fn changing_a_weight_changes_at_most_one(
        (zones, nodes) in fleet(),
        k in 1u32..=8,
        which in any::<prop::sample::Index>(),
        weight in 1u32..=6,
    ) {
        let before = shards(&sharder(&nodes, zones, k), 60);
        let mut reweighted = nodes.clone();
        reweighted[which.index(nodes.len())].weight = weight;
        let after = shards(&sharder(&reweighted, zones, k), 60);
        at_most_one_changed(&before, &after);
    }

    #[test]
    fn a_state_change_changes_at_most_one(
        (zones, nodes) in fleet(),
        k in 1u32..=8,
        which in any::<prop::sample::Index>(),
        to in any::<u8>(),
    ) {
        let mut s = sharder(&nodes, zones, k);
        let before = shards(&s, 60);
        let id = nodes[which.index(nodes.len())].id;
        s.set_state(id, state_from(to, id.0));
        let now = shards(&s, 60);
        at_most_one_changed(&before, &now);
        // Time passing is a change of eligibility too: failed nodes leave their lookback one
        // at a time.
        let mut expiries: Vec<u64> = s
            .membership()
            .nodes()
            .iter()
            .filter_map(|n| match n.state {
                NodeState::Failed { since_ns } if since_ns + LOOKBACK > NOW => {
                    Some(since_ns + LOOKBACK)
                }
                _ => None,
            })
            .collect();
        expiries.sort_unstable();
        let mut last = now;
        for t in expiries {
            let next: Vec<_> = (0..60).map(|i| s.shard(&tenant(i), t)).collect();
            at_most_one_changed(&last, &next);
            last = next;
        }
    }

    #[test]
    fn shards_have_k_distinct_eligible_nodes_balanced_over_zones(
        (zones, nodes) in fleet(), k in 1u32..=8,
    ) {
        let s = sharder(&nodes, zones, k);
        let m = s.membership();
        let eligible = |n: &Node| match n.state {
            NodeState::Active => true,
            NodeState::Draining => false,
            NodeState::Failed { since_ns } => NOW < since_ns + LOOKBACK,
        };
        let per_zone: BTreeMap<u32, u32> = (0..zones)
            .map(|z| (z, m.nodes().iter().filter(|n| n.zone.0 == z && eligible(n)).count() as u32))
            .collect();
        let total: u32 = per_zone.values().sum();
        let ceil = k.div_ceil(zones);
        let all_zones_full = per_zone.values().all(|&c| c >= ceil);
        for t in 0..40 {
            match s.shard(&tenant(t), NOW) {
                Err(e) => {
                    let want = ShardError::NotEnoughNodes { needed: k, eligible: total };
                    prop_assert_eq!(e, want);
                }
                Ok(shard) => {
                    prop_assert!(total >= k);
                    prop_assert_eq!(shard.len(), k as usize);
                    let ids: Vec<NodeId> = shard.nodes().collect();
                    prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
                    let mut got: BTreeMap<u32, u32> = BTreeMap::new();
                    for member in shard.members() {
                        let n = m.node(member.node()).unwrap();
                        prop_assert!(eligible(n));
                        prop_assert_eq!(member.zone(), n.zone);
                        prop_assert_eq!(member.state(), n.state);
                        *got.entry(n.zone.0).or_default() += 1;
                    }
                    for (z, &have) in &per_zone {
                        let c = got.get(z).copied().unwrap_or(0);
                        if all_zones_full {
                            prop_assert!(c == k / zones || c == ceil, "zone {} got {}", z, c);
                        } else {
                            // A short zone gives everything it has before others take more.
                            prop_assert!(c >= (k / zones).min(have));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn draining_nodes_keep_existing_tenants_and_take_no_new_ones(
        (zones, nodes) in fleet(), k in 1u32..=6, which in any::<prop::sample::Index>(),
    ) {
        let mut s = sharder(&nodes, zones, k);
        let id = nodes[which.index(nodes.len())].id;
        if s.membership().node(id).unwrap().state != NodeState::Active {
            s.set_state(id, NodeState::Active);
        }
        let before: Vec<_> = (0..60).map(|t| s.shard(&tenant(t), NOW)).collect();
        s.set_state(id, NodeState::Draining);
        for (t, b) in before.iter().enumerate() {
            let Ok(b) = b else { continue };
            let previous: Vec<NodeId> = b.nodes().collect();
            let kept = s.shard_with_previous(&tenant(t as u32), NOW, &previous).unwrap();
            // Existing tenants are not disturbed at all by a node starting to drain.
            prop_assert_eq!(kept.nodes().collect::<Vec<_>>(), previous.clone());
            if let Some(m) = kept.members().iter().find(|m| m.node() == id) {
                prop_assert_eq!(m.state(), NodeState::Draining);
            }
            // New placements never use it.
            if let Ok(fresh) = s.shard(&tenant(t as u32), NOW) {
                prop_assert!(!fresh.contains(id));
                prop_assert!(fresh.nodes_changed(b) <= 1);
                // A tenant placed while the node drains keeps its shard (no flip-flop).
                let again: Vec<NodeId> = fresh.nodes().collect();
                let replaced = s.shard_with_previous(&tenant(t as u32), NOW, &again).unwrap();
                prop_assert_eq!(replaced, fresh);
            }
        }
    }
}

#[test]
fn tenants_moved_by_one_node_change_is_about_k_over_n() {
    // 300 nodes, 3 zones of 100, k = 6 (2 per zone): a node joining zone 0 should enter the
    // shards of about 2 / 101 of the tenants, and a leaving node should leave about 2 / 100.
    let nodes: Vec<Node> = (0..300).map(|i| Node::new(i, (i % 3) as u32)).collect();
    let tenants = 8_000u32;
    let base = shards(&sharder(&nodes, 3, 6), tenants);
    let mut moved_add = 0u32;
    let mut moved_remove = 0u32;
    let events = 12u32;
    for e in 0..events {
        let mut more = nodes.clone();
        more.push(Node::new(10_000 + u64::from(e), 0));
        let after = shards(&sharder(&more, 3, 6), tenants);
        at_most_one_changed(&base, &after);
        moved_add += base.iter().zip(&after).filter(|(b, a)| b != a).count() as u32;

        let mut fewer = nodes.clone();
        fewer.remove(3 * e as usize + 1 + (e as usize % 3));
        let after = shards(&sharder(&fewer, 3, 6), tenants);
        at_most_one_changed(&base, &after);
        moved_remove += base.iter().zip(&after).filter(|(b, a)| b != a).count() as u32;
    }
    let trials = f64::from(tenants * events);
    let add = f64::from(moved_add) / trials;
    let remove = f64::from(moved_remove) / trials;
    // Binomial noise is ~1.5% here; a node's share of placements varies by ~2% (8 probes over
    // 128 tokens), less over 12 events.
    let (want_add, want_remove) = (2.0 / 101.0, 2.0 / 100.0);
    assert!(
        (add / want_add - 1.0).abs() < 0.15,
        "add moved {add}, expected ~{want_add}"
    );
    assert!(
        (remove / want_remove - 1.0).abs() < 0.15,
        "remove moved {remove}, expected ~{want_remove}"
    );
}

#[test]
fn extra_slots_spread_evenly_over_zones() {
    // k = 7 over 3 zones: every tenant gets 2 or 3 per zone; the zone with 3 varies by tenant.
    let nodes: Vec<Node> = (0..90).map(|i| Node::new(i, (i % 3) as u32)).collect();
    let s = sharder(&nodes, 3, 7);
    let mut third = [0u32; 3];
    let tenants = 9_000;
    for t in 0..tenants {
        let shard = s.shard(&tenant(t), NOW).unwrap();
        let mut per = [0u32; 3];
        for m in shard.members() {
            per[m.zone().0 as usize] += 1;
        }
        let mut sorted = per;
        sorted.sort_unstable();
        assert_eq!(sorted, [2, 2, 3]);
        third[per.iter().position(|&c| c == 3).unwrap()] += 1;
    }
    for c in third {
        // Expected 3000 each; binomial sd ≈ 45.
        assert!((2_800..=3_200).contains(&c), "{third:?}");
    }
}

#[test]
fn weights_receive_placements_in_proportion() {
    // 40 nodes of weight 1 and 20 of weight 3 in one zone; k = 4.
    let nodes: Vec<Node> = (0..60)
        .map(|i| Node::new(i, 0).with_weight(if i % 3 == 0 { 3 } else { 1 }))
        .collect();
    let s = sharder(&nodes, 1, 4);
    let mut count = [0u64; 2];
    for t in 0..30_000 {
        for id in s.shard(&tenant(t), NOW).unwrap().nodes() {
            count[usize::from(id.0 % 3 == 0)] += 1;
        }
    }
    let per_light = count[0] as f64 / 40.0;
    let per_heavy = count[1] as f64 / 20.0;
    let ratio = per_heavy / per_light;
    // Sampling k without replacement flattens heavy weights a little (about 2.9 here).
    assert!((2.6..=3.2).contains(&ratio), "heavy/light = {ratio}");
}

#[test]
fn failed_nodes_are_replaced_only_after_the_lookback() {
    let nodes: Vec<Node> = (0..30).map(|i| Node::new(i, (i % 3) as u32)).collect();
    let mut s = sharder(&nodes, 3, 6);
    let t = tenant(7);
    let first = s.shard(&t, 0).unwrap();
    let victim = first.members()[2].node();
    s.set_state(victim, NodeState::Failed { since_ns: 5_000 });
    for now in [0, 5_000, 5_000 + LOOKBACK - 1] {
        let during = s.shard(&t, now).unwrap();
        assert_eq!(
            during.nodes().collect::<Vec<_>>(),
            first.nodes().collect::<Vec<_>>()
        );
        let m = during
            .members()
            .iter()
            .find(|m| m.node() == victim)
            .unwrap();
        assert_eq!(m.state(), NodeState::Failed { since_ns: 5_000 });
    }
    let after = s.shard(&t, 5_000 + LOOKBACK).unwrap();
    assert!(!after.contains(victim));
    assert_eq!(after.nodes_changed(&first), 1);
    // The replacement is in the same zone (the zone still has nodes to spare).
    let new = after
        .members()
        .iter()
        .find(|m| !first.contains(m.node()))
        .unwrap();
    assert_eq!(new.zone(), s.membership().node(victim).unwrap().zone);
    // A lookback at the end of time does not overflow.
    s.set_state(
        victim,
        NodeState::Failed {
            since_ns: u64::MAX - 10,
        },
    );
    assert!(s.shard(&t, u64::MAX - 5).unwrap().contains(victim));
}

#[test]
fn a_tenant_that_kills_its_nodes_reaches_only_k_new_nodes_per_lookback() {
    let nodes: Vec<Node> = (0..300).map(|i| Node::new(i, (i % 3) as u32)).collect();
    let k = 6;
    let mut s = sharder(&nodes, 3, k);
    let t = tenant(99);
    let mut seen: Vec<NodeId> = s.shard(&t, 0).unwrap().nodes().collect();
    let rounds = 10u64;
    for round in 0..rounds {
        let now = round * LOOKBACK;
        // The tenant crashes every node it can reach, as fast as it likes.
        for step in 0..50 {
            let shard = s.shard(&t, now + step).unwrap();
            for id in shard.nodes() {
                if s.membership().node(id).unwrap().state == NodeState::Active {
                    s.set_state(
                        id,
                        NodeState::Failed {
                            since_ns: now + step,
                        },
                    );
                }
                if !seen.contains(&id) {
                    seen.push(id);
                }
            }
        }
    }
    assert!(
        seen.len() as u64 <= u64::from(k) * (rounds + 1),
        "reached {}",
        seen.len()
    );
}

#[test]
fn losing_a_zone_leaves_every_tenant_with_k_nodes_elsewhere() {
    let nodes: Vec<Node> = (0..60).map(|i| Node::new(i, (i % 3) as u32)).collect();
    let mut s = sharder(&nodes, 3, 5);
    let before = shards(&s, 200);
    for n in nodes.iter().filter(|n| n.zone == ZoneId(1)) {
        s.set_state(n.id, NodeState::Failed { since_ns: NOW });
    }
    // During the lookback shards are unchanged; flows avoid the failed members.
    let nodes_of = |v: &[Result<Shard, ShardError>]| -> Vec<Vec<NodeId>> {
        v.iter()
            .map(|s| s.as_ref().unwrap().nodes().collect())
            .collect()
    };
    assert_eq!(nodes_of(&before), nodes_of(&shards(&s, 200)));
    let after: Vec<_> = (0..200)
        .map(|t| s.shard(&tenant(t), NOW + LOOKBACK).unwrap())
        .collect();
    for (b, a) in before.iter().zip(&after) {
        let b = b.as_ref().unwrap();
        assert_eq!(a.len(), 5);
        assert!(a.members().iter().all(|m| m.zone() != ZoneId(1)));
        // Members outside the lost zone stay.
        for m in b.members().iter().filter(|m| m.zone() != ZoneId(1)) {
            assert!(a.contains(m.node()));
        }
    }
}

#[test]
fn zones_smaller_than_their_quota_spill_to_others() {
    // Zone 0 has a single node, zones 1 and 2 plenty; k = 6 → 2 per zone wanted.
    let mut nodes = vec![Node::new(0, 0)];
    nodes.extend((1..=20).map(|i| Node::new(i, 1 + (i % 2) as u32)));
    let s = sharder(&nodes, 3, 6);
    for t in 0..100 {
        let shard = s.shard(&tenant(t), NOW).unwrap();
        assert_eq!(shard.len(), 6);
        assert!(shard.contains(NodeId(0)));
    }
    // An empty declared zone is fine too, and fewer zones than k.
    let s = sharder(&nodes, 5, 2);
    for t in 0..100 {
        let shard = s.shard(&tenant(t), NOW).unwrap();
        assert_eq!(shard.len(), 2);
    }
}

#[test]
fn typed_errors_instead_of_panics() {
    let empty = Sharder::new(
        ShardKey::new(KEY),
        ShardConfig::new(3),
        Membership::new(Vec::new()).unwrap(),
    )
    .unwrap();
    assert_eq!(empty.shard(b"t", 0), Err(ShardError::EmptyMembership));
    assert_eq!(
        empty.shard_with_previous(b"t", 0, &[NodeId(1)]),
        Err(ShardError::EmptyMembership)
    );

    let nodes: Vec<Node> = (0..4).map(|i| Node::new(i, 0)).collect();
    let mut s = sharder(&nodes, 2, 4);
    assert_eq!(s.shard(b"t", 0).unwrap().len(), 4);
    s.set_state(NodeId(2), NodeState::Draining);
    assert_eq!(
        s.shard(b"t", 0),
        Err(ShardError::NotEnoughNodes {
            needed: 4,
            eligible: 3
        })
    );
    assert_eq!(
        s.shard_with_previous(b"t", 0, &[NodeId(2)]).unwrap().len(),
        4
    );
    assert_eq!(s.set_state(NodeId(99), NodeState::Active), None);
    assert_eq!(
        s.set_state(NodeId(2), NodeState::Active),
        Some(NodeState::Draining)
    );

    let m = || Membership::new(nodes.clone()).unwrap();
    let key = || ShardKey::new(KEY);
    assert_eq!(
        Sharder::new(key(), ShardConfig::new(0), m()).err(),
        Some(ConfigError::NodesPerTenant)
    );
    assert_eq!(
        Sharder::new(
            key(),
            ShardConfig::new(nf_shuffle::MAX_NODES_PER_TENANT + 1),
            m()
        )
        .err(),
        Some(ConfigError::NodesPerTenant)
    );
    let mut c = ShardConfig::new(2);
    c.tokens_per_weight = 0;
    assert_eq!(
        Sharder::new(key(), c, m()).err(),
        Some(ConfigError::TokensPerWeight)
    );
    c.tokens_per_weight = nf_shuffle::MAX_TOKENS_PER_WEIGHT;
    let heavy =
        Membership::new((0..20).map(|i| Node::new(i, 0).with_weight(nf_shuffle::MAX_WEIGHT)))
            .unwrap();
    assert_eq!(
        Sharder::new(key(), c, heavy).err(),
        Some(ConfigError::TooManyTokens)
    );

    // Long and empty tenant ids are just bytes.
    let s = sharder(&nodes, 1, 2);
    assert_eq!(s.shard(&[], 0).unwrap().len(), 2);
    assert_eq!(s.shard(&vec![0xab; 1 << 16], 0).unwrap().len(), 2);
}

#[test]
fn a_previous_shard_with_junk_is_harmless() {
    let nodes: Vec<Node> = (0..12).map(|i| Node::new(i, (i % 2) as u32)).collect();
    let s = sharder(&nodes, 2, 4);
    let plain = s.shard(b"x", NOW).unwrap();
    let junk: Vec<NodeId> = (0..1_000).map(|i| NodeId(i * 13)).collect();
    assert_eq!(s.shard_with_previous(b"x", NOW, &junk).unwrap(), plain);
}

#[test]
fn debug_output_leaves_out_key_derived_values() {
    let nodes: Vec<Node> = (0..6).map(|i| Node::new(i, 0)).collect();
    let s = sharder(&nodes, 1, 2);
    let text = format!("{s:?} {:?}", s.shard(b"t", 0).unwrap());
    assert!(text.starts_with("Sharder {"));
    assert!(!text.contains("salt") && !text.contains("pos"), "{text}");
}

/// A fleet for the load properties: 1 to 3 zones, all nodes active, weights 1 to 3, `k` = 8,
/// and every zone at least 6 times its share of `k` (so that drawing a zone's slots without
/// replacement does not visibly flatten the heavy weights).
fn loaded_fleet() -> impl Strategy<Value = (u32, Vec<Node>)> {
    (1u32..=3).prop_flat_map(|zones| {
        let per_zone = 6 * LOADED_K.div_ceil(zones) as usize;
        let weights = prop::collection::vec(1u32..=3, per_zone..=per_zone + 8);
        (Just(zones), prop::collection::vec(weights, zones as usize)).prop_map(|(zones, spec)| {
            let mut nodes = Vec::new();
            for (z, weights) in spec.into_iter().enumerate() {
                for w in weights {
                    let id = nodes.len() as u64 * 11 + 5;
                    nodes.push(Node::new(id, z as u32).with_weight(w));
                }
            }
            (zones, nodes)
        })
    })
}

const LOADED_K: u32 = 8;

proptest! {
    // Statistical bounds over deterministic tenant names: a fixed seed keeps the fleets the
    // same on every run, so a pass or a failure is reproducible. Uniform random placement
    // itself crosses 1.3 on some fleets (the bound is about 3.8 standard deviations of a
    // weight-1 node's load at 160 placements); the dispersion bound is the one that separates
    // uneven loads (index 1.54 on these fleets with a single probe) from uniform placement
    // (about 1).
    #![proptest_config(ProptestConfig {
        cases: 12,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x16_10ad),
        ..ProptestConfig::default()
    })]

    /// Issue 16: with 20 tenants per unit of weight per slot, no node carries more than 1.3
    /// times the mean load of the nodes of its weight in its zone, each weight class gets its
    /// fair share (its weight's share of each zone's placements) within 15%, and the loads
    /// scatter no more than uniform random placement's would.
    #[test]
    fn load_is_even_and_proportional_to_weight((zones, nodes) in loaded_fleet()) {
        let k = LOADED_K;
        let s = sharder(&nodes, zones, k);
        let total_weight: u32 = nodes.iter().map(|n| n.weight).sum();
        let tenants = 20 * total_weight;
        let mut load: BTreeMap<NodeId, u32> = BTreeMap::new();
        for t in 0..tenants {
            for id in s.shard(&tenant(t), NOW).unwrap().nodes() {
                *load.entry(id).or_default() += 1;
            }
        }
        // Zone quotas fix each zone's placements, so a node's fair load is its weight's share of
        // its zone's placements.
        let mut zone_load = [0u32; 3];
        let mut zone_weight = [0u32; 3];
        for n in &nodes {
            zone_load[n.zone.0 as usize] += load.get(&n.id).copied().unwrap_or(0);
            zone_weight[n.zone.0 as usize] += n.weight;
        }
        let fair = |n: &Node| {
            let z = n.zone.0 as usize;
            f64::from(zone_load[z]) * f64::from(n.weight) / f64::from(zone_weight[z])
        };
        // Nodes of one weight in one zone are interchangeable: their mean load is the yardstick
        // for evenness (drawing a zone's slots without replacement shifts a little load from
        // heavy to light nodes, for uniform random placement too).
        let mut group: BTreeMap<(u32, u32), (f64, f64)> = BTreeMap::new();
        for n in &nodes {
            let g = group.entry((n.zone.0, n.weight)).or_default();
            g.0 += f64::from(load.get(&n.id).copied().unwrap_or(0));
            g.1 += 1.0;
        }
        let mut class = [(0.0f64, 0.0f64); 4];
        // Index of dispersion: squared deviations from the group mean over that mean, averaged
        // (about 1 for independent placements, less without replacement).
        let mut dispersion = 0.0;
        for n in &nodes {
            let l = f64::from(load.get(&n.id).copied().unwrap_or(0));
            let (sum, count) = group[&(n.zone.0, n.weight)];
            let mean = sum / count;
            prop_assert!(l <= 1.3 * mean, "node {:?}: load {}, mean of its peers {}", n, l, mean);
            dispersion += (l - mean).powi(2) / mean / nodes.len() as f64;
            class[n.weight as usize].0 += l;
            class[n.weight as usize].1 += fair(n);
        }
        prop_assert!(dispersion < 1.5, "index of dispersion {}", dispersion);
        for (w, &(l, fair)) in class.iter().enumerate().filter(|(_, c)| c.1 > 0.0) {
            let ratio = l / fair;
            prop_assert!((0.85..=1.15).contains(&ratio), "weight {}: {} of its share", w, ratio);
        }
    }
}

/// The documented order, brute force: every (token, probe) pair of a one-zone fleet sorted by
/// (clockwise distance, position, node id, probe), then the first `k` distinct eligible nodes.
fn brute_force_shard(
    key: [u8; 16],
    nodes: &[Node],
    eligible: &[bool],
    k: u32,
    t: &[u8],
) -> Vec<u64> {
    use core::hash::Hasher as _;
    let sip = |bytes: &[u8]| {
        let mut h = siphasher::sip::SipHasher13::new_with_key(&key);
        h.write(bytes);
        h.finish()
    };
    let mut tokens = Vec::new();
    for n in nodes {
        for j in 0..n.weight * nf_shuffle::DEFAULT_TOKENS_PER_WEIGHT {
            let mut b = vec![0x01];
            b.extend(n.id.0.to_be_bytes());
            b.extend(j.to_be_bytes());
            tokens.push((sip(&b), n.id.0));
        }
    }
    let mut b = vec![0x02];
    b.extend((t.len() as u64).to_be_bytes());
    b.extend(t);
    b.extend(0u32.to_be_bytes());
    let mut state = sip(&b);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    next(); // orders the zones
    let probes: Vec<u64> = (0..nf_shuffle::PROBES).map(|_| next()).collect();
    let mut pairs: Vec<(u64, u64, u64, usize)> = Vec::new();
    for (pi, &at) in probes.iter().enumerate() {
        for &(pos, id) in &tokens {
            pairs.push((pos.wrapping_sub(at), pos, id, pi));
        }
    }
    pairs.sort_unstable();
    let mut chosen: Vec<u64> = Vec::new();
    for (_, _, id, _) in pairs {
        let ok = nodes.iter().zip(eligible).any(|(n, &e)| n.id.0 == id && e);
        if chosen.len() < k as usize && ok && !chosen.contains(&id) {
            chosen.push(id);
        }
    }
    chosen.sort_unstable();
    chosen
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The merge of the probes' walks (with its early stops) takes exactly the nodes of the
    /// documented order, on one-zone fleets where most nodes may be ineligible.
    #[test]
    fn placement_matches_the_brute_force_order(
        spec in prop::collection::vec((1u32..=2, any::<u8>()), 2..=7),
        k in 1u32..=4,
        t in prop::collection::vec(any::<u8>(), 0..6),
    ) {
        let nodes: Vec<Node> = spec
            .iter()
            .enumerate()
            .map(|(i, &(w, s))| {
                let id = i as u64 * 5 + 1;
                Node::new(id, 0).with_weight(w).with_state(state_from(s, id))
            })
            .collect();
        let s = sharder(&nodes, 1, k);
        let eligible: Vec<bool> = nodes
            .iter()
            .map(|n| match n.state {
                NodeState::Active => true,
                NodeState::Draining => false,
                NodeState::Failed { since_ns } => NOW < since_ns + LOOKBACK,
            })
            .collect();
        let want = brute_force_shard(KEY, &nodes, &eligible, k, &t);
        match s.shard(&t, NOW) {
            Ok(shard) => prop_assert_eq!(shard.nodes().map(|n| n.0).collect::<Vec<_>>(), want),
            Err(_) => prop_assert!(want.len() < k as usize),
        }
    }
}
