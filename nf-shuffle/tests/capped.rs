//! The stateful sharder never lets two tenants share more than the cap, and says so clearly
//! when it cannot place a tenant.
#![expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_shuffle::{
    Membership, MemoryShardStore, Node, NodeId, NodeState, OverlapCap, ShardConfig, ShardError,
    ShardKey, ShardStore, Sharder,
};
use proptest::prelude::*;

const KEY: [u8; 16] = *b"capped sharding!";

fn sharder(n: u64, zones: u32, k: u32) -> Sharder {
    let m = Membership::new((0..n).map(|i| Node::new(i, (i % u64::from(zones)) as u32))).unwrap();
    Sharder::new(ShardKey::new(KEY), ShardConfig::new(k), m).unwrap()
}

fn shared(a: &[NodeId], b: &[NodeId]) -> usize {
    a.iter().filter(|n| b.contains(n)).count()
}

fn assert_cap_holds(store: &MemoryShardStore, cap: u32) {
    let all: Vec<&[NodeId]> = store.shards().collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(
                shared(a, b) <= cap as usize,
                "{a:?} and {b:?} share more than {cap}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_cap_is_never_violated(
        n in 4u64..=24, zones in 1u32..=3, k in 1u32..=4, cap in 0u32..=3, attempts in 1u32..=8,
    ) {
        prop_assume!(u64::from(k) <= n);
        let s = sharder(n, zones, k);
        let cap = OverlapCap { max_shared: cap.min(k), attempts };
        let mut store = MemoryShardStore::new();
        let mut placed = 0;
        for t in 0..80u32 {
            let tenant = format!("t{t}");
            match s.assign_capped(tenant.as_bytes(), cap, &mut store) {
                Ok(shard) => {
                    placed += 1;
                    prop_assert_eq!(shard.len(), k as usize);
                    prop_assert_eq!(
                        store.shard_of(tenant.as_bytes()).unwrap(),
                        &shard.nodes().collect::<Vec<_>>()[..]
                    );
                }
                Err(e) => {
                    prop_assert_eq!(
                        e,
                        ShardError::OverlapCapUnsatisfiable { max_shared: cap.max_shared, attempts }
                    );
                    prop_assert!(store.shard_of(tenant.as_bytes()).is_none());
                }
            }
        }
        prop_assert_eq!(store.len(), placed);
        assert_cap_holds(&store, cap.max_shared);
    }
}

#[test]
fn an_unbinding_cap_gives_the_stateless_shard() {
    let s = sharder(50, 2, 4);
    let store = MemoryShardStore::new();
    for t in 0..50u32 {
        let tenant = format!("tenant-{t}");
        let capped = s
            .shard_capped(tenant.as_bytes(), OverlapCap::new(4), &store)
            .unwrap();
        assert_eq!(capped, s.shard(tenant.as_bytes(), 0).unwrap());
    }
}

#[test]
fn disjoint_shards_run_out_with_a_clear_error() {
    // 8 nodes, 3 per tenant, no node shared: at most two tenants fit.
    let s = sharder(8, 1, 3);
    let mut store = MemoryShardStore::new();
    let cap = OverlapCap {
        max_shared: 0,
        attempts: 200,
    };
    let mut placed = 0;
    let mut last_err = None;
    for t in 0..10u32 {
        match s.assign_capped(format!("t{t}").as_bytes(), cap, &mut store) {
            Ok(_) => placed += 1,
            Err(e) => last_err = Some(e),
        }
    }
    assert!((1..=2).contains(&placed), "placed {placed}");
    assert_eq!(
        last_err,
        Some(ShardError::OverlapCapUnsatisfiable {
            max_shared: 0,
            attempts: 200
        })
    );
    assert_cap_holds(&store, 0);
}

#[test]
fn route_53_style_cap_on_a_large_fleet() {
    // 100 nodes, 5 per tenant, no two tenants sharing more than 2 nodes.
    let s = sharder(100, 1, 5);
    let mut store = MemoryShardStore::new();
    for t in 0..400u32 {
        s.assign_capped(
            format!("customer-{t}").as_bytes(),
            OverlapCap::new(2),
            &mut store,
        )
        .unwrap();
    }
    assert_cap_holds(&store, 2);
}

#[test]
fn capped_placement_uses_active_nodes_only() {
    let mut s = sharder(6, 1, 3);
    s.set_state(NodeId(0), NodeState::Draining);
    s.set_state(NodeId(1), NodeState::Failed { since_ns: 0 });
    let store = MemoryShardStore::new();
    let shard = s.shard_capped(b"t", OverlapCap::new(3), &store).unwrap();
    assert!(!shard.contains(NodeId(0)) && !shard.contains(NodeId(1)));
    s.set_state(NodeId(2), NodeState::Draining);
    s.set_state(NodeId(3), NodeState::Draining);
    assert_eq!(
        s.shard_capped(b"t", OverlapCap::new(3), &store),
        Err(ShardError::NotEnoughNodes {
            needed: 3,
            eligible: 3 - 1
        })
    );
}

#[test]
fn memory_store_replaces_and_removes() {
    let mut store = MemoryShardStore::new();
    assert!(store.is_empty());
    store.insert(b"a", &[NodeId(3), NodeId(1), NodeId(3)]);
    assert_eq!(store.shard_of(b"a"), Some(&[NodeId(1), NodeId(3)][..]));
    store.insert(b"a", &[NodeId(2)]);
    assert_eq!(store.len(), 1);
    let mut seen = Vec::new();
    store.shards_containing(NodeId(1), &mut |id| seen.push(id));
    assert!(seen.is_empty());
    store.shards_containing(NodeId(2), &mut |id| seen.push(id));
    assert_eq!(seen.len(), 1);
    assert!(store.remove(b"a"));
    assert!(!store.remove(b"a"));
    assert!(store.is_empty());
}
