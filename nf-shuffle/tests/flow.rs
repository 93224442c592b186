//! Flow → node within a shard: even, deterministic, and when a member fails only its flows move.
#![expect(
    clippy::std_instead_of_alloc,
    clippy::unwrap_used,
    reason = "tests use std freely; test helpers fail the test by panicking"
)]

use nf_shuffle::{Membership, Node, NodeId, NodeState, ShardConfig, ShardKey, Sharder};
use proptest::prelude::*;

fn sharder(k: u32) -> Sharder {
    let m = Membership::new((0..40).map(|i| Node::new(i, (i % 4) as u32))).unwrap();
    let config = ShardConfig::new(k).with_failed_lookback_ns(1_000);
    Sharder::new(ShardKey::new(*b"flow placement!!"), config, m).unwrap()
}

proptest! {
    #[test]
    fn only_the_failed_members_flows_move(
        k in 2u32..=8, tenant in any::<u32>(), which in any::<prop::sample::Index>(),
        flows in prop::collection::vec(any::<u64>(), 1..300),
    ) {
        let mut s = sharder(k);
        let t = tenant.to_be_bytes();
        let shard = s.shard(&t, 0).unwrap();
        let victim = shard.members()[which.index(shard.len())].node();
        let before: Vec<NodeId> = flows.iter().map(|&f| shard.node_for_flow(f).unwrap()).collect();
        s.set_state(victim, NodeState::Failed { since_ns: 0 });
        let during = s.shard(&t, 1).unwrap();
        for (&f, &b) in flows.iter().zip(&before) {
            let now = during.node_for_flow(f).unwrap();
            prop_assert_ne!(now, victim);
            if b != victim {
                prop_assert_eq!(now, b);
            }
            prop_assert!(shard.contains(now));
        }
        // Draining members keep serving.
        s.set_state(victim, NodeState::Draining);
        let previous: Vec<NodeId> = shard.nodes().collect();
        let kept = s.shard_with_previous(&t, 1, &previous).unwrap();
        for (&f, &b) in flows.iter().zip(&before) {
            prop_assert_eq!(kept.node_for_flow(f), Some(b));
        }
    }
}

#[test]
fn flows_spread_evenly_over_members() {
    let s = sharder(8);
    let shard = s.shard(b"even", 0).unwrap();
    let mut count = std::collections::BTreeMap::new();
    let flows = 80_000u64;
    for f in 0..flows {
        // Consecutive integers stand in for hashes: the salted mix must spread them anyway.
        *count.entry(shard.node_for_flow(f).unwrap()).or_insert(0u64) += 1;
    }
    assert_eq!(count.len(), 8);
    for (&n, &c) in &count {
        // Expected 10,000 each; binomial sd ≈ 94.
        assert!((9_500..=10_500).contains(&c), "{n:?}: {c}");
    }
}

#[test]
fn no_usable_member_is_none() {
    let mut s = sharder(2);
    let shard = s.shard(b"x", 0).unwrap();
    for id in shard.nodes() {
        s.set_state(id, NodeState::Failed { since_ns: 0 });
    }
    let during = s.shard(b"x", 1).unwrap();
    assert_eq!(during.len(), 2);
    assert_eq!(during.node_for_flow(42), None);
}
