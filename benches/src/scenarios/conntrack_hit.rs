//! `conntrack-hit`: batched lookups of established sessions, both directions mixed.
//!
//! Ours: `SessionTable<V4Key, [u8; 16]>::lookup_batch` over batches of 64 keys (keyed
//! SipHash-1-3, one bucket line and one record line per hit; an IPv6 record spans two lines),
//! at `--sessions` sessions
//! (default 1M) in a table at 90% load. Peer: `hashbrown::HashMap<FlowKey, (u32, bool)>` with
//! `ahash` holding both directions of every session (2 entries per session), one `get` per key.
//! Traffic: uniform over all sessions, and Zipf-like (s ≈ 1) popularity; each key is the
//! original or the reply direction with equal probability.
//!
//! A last line, `"family": "ipv6"`: the same sessions with IPv6 addresses
//! (`SessionTable<V6Key, _>`), uniform traffic, huge pages only. The targets (≤ 30 ns, ≥ 2×
//! the peer) are the IPv4 lines'; the IPv6 line carries none.
//!
//! Each IPv4 case runs twice, `"huge_pages": "madvise"` (tables on transparent huge pages, as a
//! dataplane deploys them; see `hugealloc`) and `"none"` (4 KiB pages); ours and the peer
//! always share the allocator. `anon_huge_mib` is what the kernel actually backed with huge
//! pages in the process at the time. `floor_two_random_lines_ns` is the same machine reading
//! two random lines of an array as large as our table per key: the memory work of a hit
//! without the hashing, for judging how close a run is to what the hardware allows.

use crate::harness::{self, Opts, Rng};
use crate::hugealloc;
use nf_core::conntrack::{SessionKey, SessionState, SessionTable, TableConfig, V4Key, V6Key};
use nf_core::{Direction, Family, FlowKey, Instant};
use serde_json::json;

type Peer = hashbrown::HashMap<FlowKey, (u32, bool), ahash::RandomState>;

const QUERIES: usize = 1 << 20;
/// The IPv4 lines' targets: at most this many ns per lookup ...
const TARGET_NS: f64 = 30.0;
/// ... and at least this many times the peer.
const TARGET_SPEEDUP: f64 = 2.0;

pub(crate) fn run(opts: &Opts) {
    let sessions = opts.sessions.unwrap_or(1_000_000);
    let flows = crate::replay::make_flows(sessions, 0xC0FFEE);
    // Huge pages first (how a dataplane deploys a table this size), then the same with 4 KiB
    // pages; both sides of each line share the allocator.
    hugealloc::each_mode(|| measure::<V4Key>(opts, sessions, &flows, &["uniform", "zipf"]));
    // IPv6: the same sessions with their addresses in 2001:db8::/96 and 64:ff9b::/96, uniform
    // traffic, huge pages.
    let was = hugealloc::set_advise(true);
    let flows6: Vec<FlowKey> = flows.iter().map(v6).collect();
    measure::<V6Key>(opts, sessions, &flows6, &["uniform"]);
    hugealloc::set_advise(was);
}

/// An IPv4 flow's IPv6 twin: the source in 2001:db8::/96, the destination in 64:ff9b::/96.
fn v6(f: &FlowKey) -> FlowKey {
    let embed = |prefix: [u8; 4], a: &[u8]| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&prefix);
        b[12..].copy_from_slice(a);
        b
    };
    let src = embed([0x20, 0x01, 0x0d, 0xb8], f.src_bytes());
    let dst = embed([0x00, 0x64, 0xff, 0x9b], f.dst_bytes());
    FlowKey::v6(f.zone, src, dst, f.proto, f.src_port, f.dst_port)
}

fn measure<K: SessionKey>(opts: &Opts, sessions: usize, flows: &[FlowKey], dists: &[&str]) {
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let mut table: SessionTable<K, [u8; 16]> =
        SessionTable::new(TableConfig::new(capacity, *b"bench secret key")).expect("config");
    let mut peer =
        Peer::with_capacity_and_hasher(2 * sessions, ahash::RandomState::with_seeds(1, 2, 3, 4));
    let now = Instant::from_nanos(1_000_000_000);
    for (i, f) in flows.iter().enumerate() {
        table
            .insert(
                now,
                f,
                &f.reversed(),
                SessionState::TcpEstablished,
                [i as u8; 16],
            )
            .expect("fits");
        peer.insert(*f, (i as u32, false));
        peer.insert(f.reversed(), (i as u32, true));
    }

    let huge_bytes = hugealloc::anon_huge_bytes();
    // The same for both distributions: it depends only on the table's size.
    let floor = harness::two_random_lines_floor(opts, table.allocated_bytes());
    for &dist in dists {
        let mut rng = Rng::new(0x5EED);
        let queries: Vec<FlowKey> = (0..QUERIES)
            .map(|_| {
                let i = match dist {
                    "uniform" => rng.below(sessions as u64) as usize,
                    _ => zipf(&mut rng, sessions),
                };
                let f = flows[i];
                if rng.next_u64() & 1 == 0 {
                    f
                } else {
                    f.reversed()
                }
            })
            .collect();
        // Correctness before speed: same answers as the peer and as single lookups.
        let mut out = [None; 64];
        for chunk in queries.chunks(64).take(2048) {
            table.lookup_batch(chunk, &mut out);
            for (k, h) in chunk.iter().zip(out.iter()) {
                let h = h.expect("hit");
                let (id, reply) = peer[k];
                assert_eq!(table.value(h.session), Some(&[id as u8; 16]));
                assert_eq!(h.direction == Direction::Reply, reply);
                assert_eq!(table.lookup(k), Some(h));
            }
        }
        let mut at_ours = 0usize;
        let mut at_peer = 0usize;
        let mut out = [None; 64];
        let r = harness::ab(
            opts,
            64,
            || {
                let q = &queries[at_ours..at_ours + 64];
                at_ours = (at_ours + 64) % QUERIES;
                u64::from(table.lookup_batch(q, &mut out).count_ones())
                    + out[0].map_or(0, |h| u64::from(h.session.index()))
            },
            || {
                let q = &queries[at_peer..at_peer + 64];
                at_peer = (at_peer + 64) % QUERIES;
                let mut acc = 0u64;
                for k in q {
                    if let Some(&(id, rep)) = peer.get(k) {
                        acc += u64::from(id) + u64::from(rep);
                    }
                }
                acc
            },
        );
        let mut at_single = 0usize;
        let single = harness::solo(opts, 64, || {
            let q = &queries[at_single..at_single + 64];
            at_single = (at_single + 64) % QUERIES;
            q.iter()
                .map(|k| table.lookup(k).map_or(0, |h| u64::from(h.session.index())))
                .sum()
        });
        let mut params = json!({
            "sessions": sessions,
            "capacity": capacity,
            "load": sessions as f64 / f64::from(capacity),
            "distribution": dist,
            "batch": 64,
            "family": match K::FAMILY {
                Family::V4 => "ipv4",
                Family::V6 => "ipv6",
            },
            "huge_pages": hugealloc::mode(),
            "thp_policy": hugealloc::thp_policy(),
            "anon_huge_mib": huge_bytes.map(|b| b >> 20),
            "ours_single_lookup_ns": (single * 1000.0).round() / 1000.0,
            "floor_two_random_lines_ns": (floor * 1000.0).round() / 1000.0,
        });
        // The targets are the IPv4 table's (an IPv6 record spans two lines: its line is on
        // record, without one).
        if K::FAMILY == Family::V4 {
            harness::set_targets(
                &mut params,
                &[("ns_per_pkt", TARGET_NS), ("speedup", TARGET_SPEEDUP)],
                r.ours_ns <= TARGET_NS && r.peer_ns / r.ours_ns >= TARGET_SPEEDUP,
            );
        }
        harness::report(
            opts,
            "conntrack-hit",
            "hashbrown 0.17 HashMap<FlowKey,(u32,bool)> + ahash 0.8 RandomState, both directions, get() per key",
            r,
            params,
        );
    }
}

/// A rank in `0..n` with probability roughly proportional to `1 / (rank + 1)`.
fn zipf(rng: &mut Rng, n: usize) -> usize {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let r = ((n as f64 + 1.0).ln() * u).exp() - 1.0;
    (r as usize).min(n - 1)
}
