//! `maglev-lookup`: flow → backend for batches of 64 IPv4 5-tuples, N = 1,000 backends,
//! M = 65,537 slots, in nanoseconds per packet.
//!
//! Ours: `MaglevTable::lookup_flows` (keyed SipHash-1-3 of each flow key's canonical encoding
//! for the whole batch first, then one multiply-shift and one `u16` load each). Peers:
//! `maglev-hash` 0.1.0 `MaglevTable::get(&flow_key)` and `maglev` 0.2.1 `Maglev::get`, both
//! hashing the key with std's SipHash (unkeyed, through `Hash`) and a modulo, one flow at a
//! time (neither has a batch API).

use super::maglev_build::backends;
use crate::harness::{self, Opts, Rng};
use nf_core::{FlowKey, ZoneId, flow::proto};
use nf_lb::{LbKey, MaglevTable};
use serde_json::json;

const N: u32 = 1000;
const M: u32 = 65_537;
const BATCH: usize = 64;
const FLOWS: usize = 1 << 14;
/// Issue 14: keyed 5-tuple hash + table lookup, batched, at most 15 ns per packet.
const TARGET_NS: f64 = 15.0;

/// A peer's one-flow lookup (its backend's port, to fold into the result).
type PeerLookup = Box<dyn Fn(&FlowKey) -> u64>;

pub(crate) fn run(opts: &Opts) {
    let table = MaglevTable::new(&LbKey::new(*b"nf-bench maglev!"), M, &backends(N))
        .unwrap_or_else(|e| panic!("maglev build: {e}"));
    let mut rng = Rng::new(0x5eed_0014);
    let flows: Vec<FlowKey> = (0..FLOWS)
        .map(|_| {
            let x = rng.next_u64();
            let [a, b, c, d, e, f, g, h] = x.to_be_bytes();
            FlowKey::v4(
                ZoneId(0),
                [100, a, b, c],
                [192, 0, 2, d & 7],
                if e & 1 == 0 { proto::TCP } else { proto::UDP },
                u16::from_be_bytes([f, g]) | 1024,
                u16::from(h % 4) + 443,
            )
        })
        .collect();
    let nodes: Vec<([u8; 4], u16)> = (0..N)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            ([10, a, b, c], 8080)
        })
        .collect();
    let peers: [(&str, PeerLookup); 2] = [
        (
            "maglev-hash 0.1.0 MaglevTable::get(&FlowKey), one at a time",
            {
                let t = maglev_hash::MaglevTable::with_capacity(nodes.clone(), M as usize);
                Box::new(move |k: &FlowKey| t.get(k).map_or(0, |n| u64::from(n.1)))
            },
        ),
        ("maglev 0.2.1 Maglev::get(&FlowKey), one at a time", {
            let t = maglev::Maglev::with_capacity(nodes.clone(), M as usize);
            Box::new(move |k: &FlowKey| {
                maglev::ConsistentHasher::get(&t, k).map_or(0, |n| u64::from(n.1))
            })
        }),
    ];
    for (peer_name, peer) in &peers {
        let mut next_ours = 0usize;
        let mut next_peer = 0usize;
        let mut out = [0u32; BATCH];
        let r = harness::ab(
            opts,
            BATCH as u64,
            || {
                let at = next_ours % (FLOWS / BATCH) * BATCH;
                next_ours += 1;
                let keys = flows.get(at..at + BATCH).unwrap_or(&[]);
                table.lookup_flows(keys, &mut out);
                out.iter().map(|&i| u64::from(i)).sum()
            },
            || {
                let at = next_peer % (FLOWS / BATCH) * BATCH;
                next_peer += 1;
                let keys = flows.get(at..at + BATCH).unwrap_or(&[]);
                keys.iter().map(peer).sum()
            },
        );
        harness::report(
            opts,
            "maglev-lookup",
            peer_name,
            r,
            json!({
                "backends": N,
                "table_size": M,
                "batch": BATCH,
                "entry_bytes": table.entry_bytes(),
                "target_ns_per_pkt": TARGET_NS,
                "meets_target": r.ours_ns <= TARGET_NS,
            }),
        );
    }
}
