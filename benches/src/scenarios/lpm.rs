//! `lpm`: longest-prefix match over 1M IPv4 prefixes, batched (64 addresses per call), ours
//! beside `prefix-trie`'s `PrefixMap::get_lpm` in the same run. One line per layout of ours:
//! DIR-24-8 (what `Ipv4Layout::Auto` builds at this size, the line that carries issue 15's
//! targets) and 16-8-8.
//!
//! The prefix set is synthetic with a length mix like a full table plus internal routes:
//! about 60% /24, 32% /16–/23 and 8% /25–/32, over 1.0.0.0–223.255.255.255, distinct,
//! from a fixed seed. Addresses are drawn uniformly inside randomly chosen prefixes (so every
//! lookup hits, usually the chosen prefix or a longer one nested in it). `bytes` is the
//! table's own allocation; build times are wall time of one build of each. `--sessions N`
//! sets the number of IPv4 prefixes. A last line measures IPv6 (50k prefixes, mostly /48;
//! issue 15 sets no IPv6 target) so the cost of the 8-bit strides, in time and `bytes`, is on
//! record. `floor_ns_per_load_64mib` is this machine's cost of one
//! independent random load from a 64 MiB array per address, batched alike: the floor for a
//! structure that needs one memory access per lookup at this size. Tables are allocated with huge-page advice (`huge_pages`,
//! and `anon_huge_bytes` says what the kernel really gave).

use crate::harness::{self, Opts, Rng};
use crate::hugealloc;
use nf_policy::{Ipv4Layout, Ipv4LpmBuilder};
use prefix_trie::PrefixMap;
use serde_json::json;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Instant;

const PREFIXES: usize = 1_000_000;
const ADDRS: usize = 1 << 20;
const BATCH: usize = 64;
/// Issue 15's targets: at most 10 ns per lookup and at least 5× prefix-trie.
const TARGET_NS: f64 = 10.0;
const TARGET_SPEEDUP: f64 = 5.0;
/// The peer, as every line names it.
const PEER: &str = "prefix-trie 0.10.1 PrefixMap<(u32, u8), u32>::get_lpm, one address at a time";

pub(crate) fn run(opts: &Opts) {
    // Tables on huge pages, as a dataplane deploys them (both ours and the peer's).
    let was = hugealloc::set_advise(true);
    measure(opts);
    measure_v6(opts);
    hugealloc::set_advise(was);
}

/// IPv6 prefixes for the IPv6 line (its memory grows with the number of distinct 8-bit
/// paths, see `bytes`).
const V6_PREFIXES: usize = 50_000;

/// One IPv6 line: `V6_PREFIXES` prefixes (about 50% /48, 20% /32–/44, 15% /56, 10% /64,
/// 5% /128) under 2000::/4, addresses inside them, batches of 64, beside prefix-trie.
fn measure_v6(opts: &Opts) {
    let mut rng = Rng::new(0x5eed_0000_0006_0001);
    let mut seen = HashSet::new();
    let mut routes: Vec<(u128, u8, u32)> = Vec::with_capacity(V6_PREFIXES);
    while routes.len() < V6_PREFIXES {
        let r = rng.below(100);
        let len: u8 = match r {
            0..50 => 48,
            50..70 => 32 + 4 * rng.below(4) as u8,
            70..85 => 56,
            85..95 => 64,
            _ => 128,
        };
        let a =
            (0x2u128 << 124) | (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) >> 4;
        let p = a & (u128::MAX << (128 - u32::from(len)));
        if seen.insert((p, len)) {
            routes.push((p, len, rng.below(4096) as u32));
        }
    }
    let addrs: Vec<std::net::Ipv6Addr> = (0..ADDRS)
        .map(|_| {
            let (p, l, _) = routes[rng.below(routes.len() as u64) as usize];
            let host = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()))
                .checked_shr(u32::from(l))
                .unwrap_or(0);
            std::net::Ipv6Addr::from(p | host)
        })
        .collect();
    let t = Instant::now();
    let mut peer: PrefixMap<(u128, u8), u32> = PrefixMap::new();
    for &(p, l, h) in &routes {
        peer.insert((p, l), h);
    }
    let peer_build_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut b = nf_policy::Ipv6LpmBuilder::new();
    for &(p, l, h) in &routes {
        b.insert(std::net::Ipv6Addr::from(p), l, h)
            .unwrap_or_else(|e| panic!("route rejected: {e}"));
    }
    let ours = b.build().unwrap_or_else(|e| panic!("build: {e}"));
    let build_s = t.elapsed().as_secs_f64();
    let mut out = vec![None; BATCH];
    for chunk in addrs.chunks(BATCH).take(2048) {
        ours.lookup_batch(chunk, &mut out);
        for (a, o) in chunk.iter().zip(&out) {
            let want = peer.get_lpm(&(u128::from(*a), 128)).map(|(_, v)| *v);
            assert_eq!(*o, want, "ours and prefix-trie disagree on {a}");
        }
    }
    let chunks = addrs.len() / BATCH;
    let (mut next_ours, mut next_peer) = (0usize, 0usize);
    let result = harness::ab(
        opts,
        BATCH as u64,
        || {
            let at = (next_ours % chunks) * BATCH;
            next_ours += 1;
            ours.lookup_batch(&addrs[at..at + BATCH], &mut out);
            out.iter().map(|o| u64::from(o.unwrap_or(0))).sum()
        },
        || {
            let at = (next_peer % chunks) * BATCH;
            next_peer += 1;
            addrs[at..at + BATCH]
                .iter()
                .map(|a| {
                    peer.get_lpm(&(u128::from(*a), 128))
                        .map_or(0, |(_, v)| u64::from(*v))
                })
                .sum()
        },
    );
    harness::report(
        opts,
        "lpm",
        "prefix-trie 0.10.1 PrefixMap<(u128, u8), u32>::get_lpm, one address at a time",
        result,
        json!({
            "family": "ipv6",
            "layout": "16-8-...-8",
            "prefixes": routes.len(),
            "batch": BATCH,
            "bytes": ours.bytes(),
            "build_s": (build_s * 1000.0).round() / 1000.0,
            "peer_build_s": (peer_build_s * 1000.0).round() / 1000.0,
            "huge_pages": hugealloc::mode(),
            "note": "no target for IPv6 in issue 15; 1 KiB groups where several routes share a path, a 32-byte tail where one route is alone",
        }),
    );
}

fn measure(opts: &Opts) {
    let n = opts.sessions.unwrap_or(PREFIXES);
    let routes = prefixes(n);
    let addrs = addresses(&routes);

    let t = Instant::now();
    let mut peer: PrefixMap<(u32, u8), u32> = PrefixMap::new();
    for &(p, l, h) in &routes {
        peer.insert((p, l), h);
    }
    let peer_build_s = t.elapsed().as_secs_f64();

    for (name, layout) in [
        ("dir-24-8", Ipv4Layout::Dir24),
        ("16-8-8", Ipv4Layout::Trie16),
    ] {
        let t = Instant::now();
        let mut b = Ipv4LpmBuilder::new().layout(layout);
        for &(p, l, h) in &routes {
            b.insert(Ipv4Addr::from(p), l, h)
                .unwrap_or_else(|e| panic!("route rejected: {e}"));
        }
        let ours = b.build().unwrap_or_else(|e| panic!("build: {e}"));
        let build_s = t.elapsed().as_secs_f64();

        // The two agree on every address (a disagreement fails the run).
        let mut out = vec![None; BATCH];
        for chunk in addrs.chunks(BATCH).take(2048) {
            ours.lookup_batch(chunk, &mut out);
            for (a, o) in chunk.iter().zip(&out) {
                let want = peer.get_lpm(&(u32::from(*a), 32)).map(|(_, v)| *v);
                assert_eq!(*o, want, "ours and prefix-trie disagree on {a}");
            }
        }

        let mut next_ours = 0usize;
        let mut next_peer = 0usize;
        let chunks = addrs.len() / BATCH;
        let result = harness::ab(
            opts,
            BATCH as u64,
            || {
                let at = (next_ours % chunks) * BATCH;
                next_ours += 1;
                ours.lookup_batch(&addrs[at..at + BATCH], &mut out);
                out.iter().map(|o| u64::from(o.unwrap_or(0))).sum()
            },
            || {
                let at = (next_peer % chunks) * BATCH;
                next_peer += 1;
                addrs[at..at + BATCH]
                    .iter()
                    .map(|a| {
                        peer.get_lpm(&(u32::from(*a), 32))
                            .map_or(0, |(_, v)| u64::from(*v))
                    })
                    .sum()
            },
        );
        // Single lookups, for comparison with the batch.
        let mut next = 0usize;
        let single_ns = harness::solo(opts, BATCH as u64, || {
            let at = (next % chunks) * BATCH;
            next += 1;
            addrs[at..at + BATCH]
                .iter()
                .map(|a| u64::from(ours.lookup(*a).unwrap_or(0)))
                .sum()
        });
        let speedup = result.peer_ns / result.ours_ns;
        let floor_ns = memory_floor(opts, &addrs);
        let mut params = json!({
            "family": "ipv4",
            "layout": name,
            "prefixes": routes.len(),
            "batch": BATCH,
            "ours_single_ns_per_pkt": (single_ns * 1000.0).round() / 1000.0,
            "floor_ns_per_load_64mib": (floor_ns * 1000.0).round() / 1000.0,
            "bytes": ours.bytes(),
            "huge_pages": hugealloc::mode(),
            "anon_huge_bytes": hugealloc::anon_huge_bytes(),
            "build_s": (build_s * 1000.0).round() / 1000.0,
            "peer_build_s": (peer_build_s * 1000.0).round() / 1000.0,
        });
        // The targets are the layout `Ipv4Layout::Auto` builds at this size's (DIR-24-8); the
        // other layout's line is on record, without them.
        if layout == Ipv4Layout::Dir24 {
            harness::set_targets(
                &mut params,
                &[("ns_per_pkt", TARGET_NS), ("speedup", TARGET_SPEEDUP)],
                result.ours_ns <= TARGET_NS && speedup >= TARGET_SPEEDUP,
            );
        }
        harness::report(opts, "lpm", PEER, result, params);
    }
}

/// The machine's floor for DIR-24-8: one independent load per address from a 64 MiB array
/// indexed by the address's top 24 bits (what a lookup that needs no group costs at best),
/// batched the same way, on the same allocator.
fn memory_floor(opts: &Opts, addrs: &[Ipv4Addr]) -> f64 {
    let table: Vec<u32> = (0..1u32 << 24).collect();
    let chunks = addrs.len() / BATCH;
    let mut next = 0usize;
    harness::solo(opts, BATCH as u64, || {
        let at = (next % chunks) * BATCH;
        next += 1;
        addrs[at..at + BATCH]
            .iter()
            .map(|a| u64::from(table[(u32::from(*a) >> 8) as usize]))
            .sum()
    })
}

/// `n` distinct (prefix, length, next hop) routes with the length mix in the module docs.
pub(crate) fn prefixes(n: usize) -> Vec<(u32, u8, u32)> {
    let mut rng = Rng::new(0x5eed_0000_01b9_0000);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = rng.below(100);
        let len = if r < 60 {
            24
        } else if r < 92 {
            16 + rng.below(8) as u8
        } else {
            25 + rng.below(8) as u8
        };
        // 1.0.0.0 to 223.255.255.255.
        let a = (1 + rng.below(223) as u32) << 24 | (rng.next_u64() as u32 & 0x00ff_ffff);
        let p = a & (u32::MAX << (32 - u32::from(len)));
        if seen.insert((p, len)) {
            out.push((p, len, rng.below(4096) as u32));
        }
    }
    out
}

/// Addresses inside randomly chosen routes.
pub(crate) fn addresses(routes: &[(u32, u8, u32)]) -> Vec<Ipv4Addr> {
    let mut rng = Rng::new(0xadd7_e55e_5000_0001);
    (0..ADDRS)
        .map(|_| {
            let (p, l, _) = routes[rng.below(routes.len() as u64) as usize];
            let host = (rng.next_u64() as u32)
                .checked_shr(u32::from(l))
                .unwrap_or(0);
            Ipv4Addr::from(p | host)
        })
        .collect()
}
