//! `conntrack-insert`: new sessions per second from empty until 90% full, and the real memory
//! per session.
//!
//! Ours: `SessionTable::insert_batch`, 64 sessions per call (each with both keys, duplicate
//! check, zone accounting, timer-wheel and early-drop links), into a table of `--sessions`
//! capacity (default 1M), IPv4 and IPv6, 16-byte value; `SessionTable::insert` one at a time
//! is reported beside it (`ours_single_*`). Peer: `hashbrown::HashMap<FlowKey, u32>` with `ahash`, preallocated for
//! both directions, plus a `Vec` of `(original, reply, value)` records: the plain way to hold
//! a two-key session. `bytes_per_session` = `SessionTable::allocated_bytes()` / sessions held
//! at 90%; the peer's figure is its map's `allocation_size()` plus the record vector.
//!
//! Each case runs with `"huge_pages": "madvise"` and `"none"`, as in `conntrack-hit` (both
//! sides share the allocator). `bytes_per_session` counts what the table asked for; with huge
//! pages the allocator rounds each big array up to a whole 2 MiB page (under 1% here).

use crate::harness::{self, AbResult, Opts};
use crate::hugealloc;
use crate::replay::make_flows;
use nf_core::conntrack::{
    InsertError, NewSession, SessionKey, SessionState, SessionTable, TableConfig, V4Key, V6Key,
};
use nf_core::{FlowKey, Instant};
use serde_json::json;
use std::hint::black_box;
use std::time::Instant as Clock;

type PeerMap = hashbrown::HashMap<FlowKey, u32, ahash::RandomState>;

fn to_v6(f: &FlowKey) -> FlowKey {
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s[..2].copy_from_slice(&[0xfd, 0x00]);
    d[..2].copy_from_slice(&[0x20, 0x01]);
    s[12..].copy_from_slice(f.src_bytes());
    d[12..].copy_from_slice(f.dst_bytes());
    FlowKey::v6(f.zone, s, d, f.proto, f.src_port, f.dst_port)
}

pub(crate) fn run(opts: &Opts) {
    let capacity = opts.sessions.unwrap_or(1_000_000);
    let held = capacity * 9 / 10;
    let flows4 = make_flows(held, 0xFEED);
    let flows6: Vec<FlowKey> = flows4.iter().map(to_v6).collect();
    let rounds = if opts.quick { 5 } else { 21 };
    // As in `conntrack-hit`: tables on huge pages first, then on 4 KiB pages.
    hugealloc::each_mode(|| {
        let v4 = measure::<V4Key>(opts, capacity, &flows4, rounds);
        let v6 = measure::<V6Key>(opts, capacity, &flows6, rounds);
        report(opts, capacity, held, rounds, &v4, &v6);
    });
}

fn report(opts: &Opts, capacity: usize, held: usize, rounds: usize, v4: &Measured, v6: &Measured) {
    for (fam, m) in [("ipv4", v4), ("ipv6", v6)] {
        harness::report(
            opts,
            "conntrack-insert",
            "hashbrown 0.17 HashMap<FlowKey,u32> + ahash 0.8, both directions, preallocated, + Vec of (orig, reply, value)",
            m.ab,
            json!({
                "family": fam,
                "capacity": capacity,
                "sessions": held,
                "load": 0.9,
                "value_bytes": 16,
                "huge_pages": hugealloc::mode(),
                "rounds": rounds,
                "ours_api": "SessionTable::insert_batch, 64 sessions per call",
                "ours_mpps_insert": (1000.0 / m.ab.ours_ns * 1000.0).round() / 1000.0,
                "ours_single_insert_ns": (m.single_ns * 1000.0).round() / 1000.0,
                "ours_single_mpps_insert": (1000.0 / m.single_ns * 1000.0).round() / 1000.0,
                "bytes_per_session": (m.bytes_per_session * 10.0).round() / 10.0,
                "bytes_per_session_ipv4": (v4.bytes_per_session * 10.0).round() / 10.0,
                "bytes_per_session_ipv6": (v6.bytes_per_session * 10.0).round() / 10.0,
                "peer_bytes_per_session": (m.peer_bytes_per_session * 10.0).round() / 10.0,
                "target_bytes_per_session": 96,
                "target_mpps_insert": 5.0,
            }),
        );
    }
}

struct Measured {
    /// Ours is `insert_batch` (64 at a time).
    ab: AbResult,
    /// `insert`, one at a time, ns per session.
    single_ns: f64,
    bytes_per_session: f64,
    peer_bytes_per_session: f64,
}

fn measure<K: SessionKey>(
    opts: &Opts,
    capacity: usize,
    flows: &[FlowKey],
    rounds: usize,
) -> Measured {
    let _ = opts;
    let mut cfg = TableConfig::new(capacity as u32, *b"bench secret key");
    cfg.default_zone_quota = capacity as u32;
    let mut table: SessionTable<K, [u8; 16]> = SessionTable::new(cfg).expect("config");
    let mut map = PeerMap::with_capacity_and_hasher(
        2 * flows.len(),
        ahash::RandomState::with_seeds(1, 2, 3, 4),
    );
    let mut recs: Vec<(FlowKey, FlowKey, [u8; 16])> = Vec::with_capacity(flows.len());
    let now = Instant::from_nanos(1_000_000_000);
    let mut ours = Vec::new();
    let mut single = Vec::new();
    let mut peer = Vec::new();
    let blank = NewSession::new(
        FlowKey::default(),
        FlowKey::default(),
        SessionState::TcpSynSent,
        [0u8; 16],
    );
    let mut out = [Err(InsertError::TableFull); 64];
    for round in 0..=rounds {
        // One at a time: `insert`.
        table.clear();
        let t = Clock::now();
        for (i, f) in flows.iter().enumerate() {
            let r = table.insert(
                now,
                f,
                &f.reversed(),
                SessionState::TcpSynSent,
                [i as u8; 16],
            );
            black_box(r.is_ok());
        }
        let ds = t.elapsed().as_nanos() as f64 / flows.len() as f64;
        assert_eq!(table.len(), flows.len(), "every insert succeeds");
        // 64 at a time, as a stage creates the new flows of a batch: `insert_batch`.
        table.clear();
        let t = Clock::now();
        let mut new = [blank; 64];
        for (c, chunk) in flows.chunks(64).enumerate() {
            for (j, (n, f)) in new.iter_mut().zip(chunk).enumerate() {
                *n = NewSession::new(
                    *f,
                    f.reversed(),
                    SessionState::TcpSynSent,
                    [(c * 64 + j) as u8; 16],
                );
            }
            let k = chunk.len();
            black_box(table.insert_batch(now, &new[..k], &mut out[..k]));
        }
        let dt = t.elapsed().as_nanos() as f64 / flows.len() as f64;
        assert_eq!(table.len(), flows.len(), "every insert succeeds");
        map.clear();
        recs.clear();
        let t = Clock::now();
        for (i, f) in flows.iter().enumerate() {
            let rev = f.reversed();
            if !map.contains_key(f) && !map.contains_key(&rev) {
                let id = recs.len() as u32;
                recs.push((*f, rev, [i as u8; 16]));
                map.insert(*f, id);
                map.insert(rev, id);
            }
        }
        let dp = t.elapsed().as_nanos() as f64 / flows.len() as f64;
        black_box(map.len());
        if round > 0 {
            // Round 0 warms up (page faults of the first touch).
            ours.push(dt);
            single.push(ds);
            peer.push(dp);
        }
    }
    let peer_bytes = map.allocation_size()
        + recs.capacity() * std::mem::size_of::<(FlowKey, FlowKey, [u8; 16])>();
    Measured {
        ab: AbResult {
            ours_ns: harness::median(&mut ours),
            peer_ns: harness::median(&mut peer),
        },
        single_ns: harness::median(&mut single),
        bytes_per_session: table.allocated_bytes() as f64 / flows.len() as f64,
        peer_bytes_per_session: peer_bytes as f64 / flows.len() as f64,
    }
}
