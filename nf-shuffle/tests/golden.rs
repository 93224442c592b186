//! Golden vectors: placements for fixed keys and inputs, hard-coded. They must never change
//! (every node in a fleet, on any platform and any version, must compute the same shards); a
//! failure here means the placement function changed, which moves tenants in production.
//!
//! The small fleet's placements (including the draining and failed cases) are also computed by
//! `tests/placement_reference.py`, an independent brute-force implementation of the documented
//! order in Python.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_shuffle::{
    Membership, MemoryShardStore, Node, NodeId, NodeState, OverlapCap, Shard, ShardConfig,
    ShardKey, Sharder,
};

fn key() -> ShardKey {
    ShardKey::new(core::array::from_fn(|i| i as u8))
}

/// 12 nodes, ids 100..112, zones 0..3 round robin, weights 1 and 2 alternating, k = 5.
fn small() -> Sharder {
    let nodes =
        (0..12u64).map(|i| Node::new(100 + i, (i % 3) as u32).with_weight(1 + (i % 2) as u32));
    let config = ShardConfig::new(5).with_failed_lookback_ns(1_000);
    Sharder::new(key(), config, Membership::new(nodes).unwrap()).unwrap()
}

fn ids(s: &Shard) -> Vec<u64> {
    s.nodes().map(|n| n.0).collect()
}

/// FNV-1a over big-endian bytes: a platform-independent digest of many placements.
fn fnv(acc: u64, x: u64) -> u64 {
    x.to_be_bytes().iter().fold(acc, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn small_fleet_placements() {
    let s = small();
    let cases: [(&[u8], [u64; 5]); 4] = [
        (b"", [102, 103, 106, 107, 111]),
        (b"alpha", [103, 104, 105, 107, 111]),
        (b"tenant-0042", [103, 104, 107, 109, 111]),
        (&[0xff; 40], [100, 102, 107, 109, 110]),
    ];
    for (tenant, want) in cases {
        assert_eq!(ids(&s.shard(tenant, 0).unwrap()), want, "tenant {tenant:?}");
    }
}

#[test]
fn flow_to_node() {
    let alpha = small().shard(b"alpha", 0).unwrap();
    let cases = [
        (0u64, 111),
        (1, 103),
        (u64::MAX, 111),
        (0x0123_4567_89ab_cdef, 107),
    ];
    for (flow, want) in cases {
        assert_eq!(
            alpha.node_for_flow(flow),
            Some(NodeId(want)),
            "flow {flow:#x}"
        );
    }
}

#[test]
fn draining_and_failed_members() {
    let mut s = small();
    let alpha = s.shard(b"alpha", 0).unwrap();
    let previous: Vec<NodeId> = alpha.nodes().collect();
    s.set_state(NodeId(104), NodeState::Draining);
    s.set_state(NodeId(103), NodeState::Failed { since_ns: 10 });
    let existing = s.shard_with_previous(b"alpha", 20, &previous).unwrap();
    assert_eq!(ids(&existing), [103, 104, 105, 107, 111]);
    assert_eq!(
        ids(&s.shard(b"alpha", 20).unwrap()),
        [101, 103, 105, 107, 111]
    );
    let later = s.shard_with_previous(b"alpha", 2_000, &previous).unwrap();
    assert_eq!(ids(&later), [100, 104, 105, 107, 111]);
}

#[test]
fn thousand_node_fleet_digest() {
    let m = Membership::new((0..1000u64).map(|i| Node::new(i, (i % 3) as u32))).unwrap();
    let s = Sharder::new(key(), ShardConfig::new(8), m).unwrap();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for t in 0..1000u32 {
        for n in s.shard(&t.to_be_bytes(), 0).unwrap().nodes() {
            h = fnv(h, n.0);
        }
    }
    assert_eq!(h, 0x9179_7c09_db9f_6d28);
}

#[test]
fn capped_assignments() {
    let m = Membership::new((0..9u64).map(|i| Node::new(i, 0))).unwrap();
    let s = Sharder::new(key(), ShardConfig::new(3), m).unwrap();
    let mut store = MemoryShardStore::new();
    let cap = OverlapCap {
        max_shared: 1,
        attempts: 50,
    };
    let want: [[u64; 3]; 6] = [
        [1, 4, 8],
        [0, 2, 4],
        [1, 6, 7],
        [0, 1, 3],
        [0, 6, 8],
        [5, 7, 8],
    ];
    for (t, want) in (0..6u32).zip(want) {
        let shard = s.assign_capped(&t.to_be_bytes(), cap, &mut store).unwrap();
        assert_eq!(ids(&shard), want, "tenant {t}");
    }
}

#[test]
fn disjoint_assignments_fill_the_fleet_then_fail() {
    let m = Membership::new((0..9u64).map(|i| Node::new(i, 0))).unwrap();
    let s = Sharder::new(key(), ShardConfig::new(3), m).unwrap();
    let mut store = MemoryShardStore::new();
    let cap = OverlapCap {
        max_shared: 0,
        attempts: 50,
    };
    let placed: Vec<Option<Vec<u64>>> = (0..4u32)
        .map(|t| {
            s.assign_capped(&t.to_be_bytes(), cap, &mut store)
                .ok()
                .map(|x| ids(&x))
        })
        .collect();
    assert_eq!(
        placed,
        [
            Some(vec![1, 4, 8]),
            Some(vec![0, 2, 6]),
            Some(vec![3, 5, 7]),
            None
        ]
    );
}
