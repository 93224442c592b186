//! `conntrack-stage`: parsed packets through the `Conntrack` stage, 99% established / 1% new.
//!
//! Ours: `Conntrack<u64>` (a no-op service; built by `replay::make_stage`), `Stage::process`
//! over batches of 64, `--sessions` established IPv4 sessions (default 1M, 75% TCP) in
//! tables at 90% load. Peer: `PeerConntrack` (`hashbrown` + `ahash`, both directions, a
//! state and a deadline per session, insert on a miss), doing the same work per packet.
//!
//! Traffic (`replay::Traffic`): 2^20 real 64-byte frames, built and parsed by `ParseStage`
//! once, before anything is timed; each packet of an established session picks the session
//! uniformly and either direction (TCP: a bare ACK); 1% are UDP first packets of flows never
//! seen before. Each side replays the stream with the same loop (`replay::Replay`): restore
//! the 64 packets' `Meta` from the parsed stream (`replay::Stream`: verdict Pass, no session), process at a
//! clock advancing 2 µs per batch, then remove the sessions the batch 1024 batches earlier
//! created (by the handle each side wrote into `Meta`): new flows live 1024 batches, the table
//! stays at its size, and every new flow is new when it arrives (checked). The restore and the
//! removals are timed on both sides alike; `restore_ns_per_pkt` is the restore alone, and
//! `lookup_batch_ns_per_pkt` is the same packets' keys through `SessionTable::lookup_batch`
//! alone, so the stage's own overhead is visible. `floor_two_random_lines_ns` is this
//! machine's cost of the memory work of a hit alone (two random lines of an array as large as
//! the stage's tables per packet, as in `conntrack-hit`): how much of the target the memory
//! takes before any hashing, comparing or tracking.
//!
//! Before timing, ours and the peer must agree on hit/miss and direction for every packet of
//! 4096 batches. Lines: `"huge_pages": "madvise"` and `"none"`, as in `conntrack-hit`.

use crate::harness::{self, Opts, Rng};
use crate::hugealloc;
use crate::replay::{self, Ours, PeerConntrack, Replay, Traffic};
use nf_core::{Direction, FlowKey};
use serde_json::json;

const PACKETS: usize = 1 << 20;
const NEW_SHARE: f64 = 0.01;
const CHECK_BATCHES: usize = 4096;
const TARGET_NS: f64 = 40.0;

pub(crate) fn run(opts: &Opts) {
    let sessions = opts.sessions.unwrap_or(1_000_000);
    let flows = crate::replay::make_flows(sessions, 0xC0FFEE);
    let mut rng = Rng::new(0x57A6E);
    let traffic = Traffic::new(&flows, PACKETS, 64, NEW_SHARE, || rng.next_u64());
    hugealloc::each_mode(|| measure(opts, &flows, &traffic));
}

fn measure(opts: &Opts, flows: &[FlowKey], traffic: &Traffic) {
    let sessions = flows.len();
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let (ours, peer) = replay::established_sides(flows, capacity);
    let huge_bytes = hugealloc::anon_huge_bytes();
    let mut ours = Replay::new(ours, traffic);
    let mut peer = Replay::new(peer, traffic);
    check(&mut ours, &mut peer, traffic, CHECK_BATCHES);

    let n = traffic.batch as u64;
    let r = harness::ab(opts, n, || ours.step(traffic), || peer.step(traffic));

    let keys: Vec<FlowKey> = traffic.templates().iter().map(|m| m.flow).collect();
    let table = ours.side.0.v4();
    let (mut at, mut out) = (0usize, [None; 64]);
    let lookup = harness::solo(opts, n, || {
        let q = &keys[at..at + 64];
        at = (at + 64) % keys.len();
        u64::from(table.lookup_batch(q, &mut out).count_ones())
    });
    let floor = harness::two_random_lines_floor(opts, ours.side.0.allocated_bytes());
    let mut batch = replay::working_batch(traffic.batch);
    let mut b = 0usize;
    let restore = harness::solo(opts, n, || {
        traffic.restore(&mut batch, b);
        b = (b + 1) % traffic.batches();
        u64::from(batch.packets()[0].meta.flow.src_port)
    });

    harness::report(
        opts,
        "conntrack-stage",
        "hashbrown 0.17 HashMap<FlowKey,(u32,bool)> + ahash 0.8, both directions, get() per packet, state + deadline update on a hit, insert both directions on a miss",
        r,
        json!({
            "sessions": sessions,
            "capacity": capacity,
            "family": "ipv4",
            "batch": traffic.batch,
            "new_flow_share": (traffic.new_share() * 1e5).round() / 1e5,
            "new_flow_lifetime_batches": replay::LAG,
            "sessions_at_end": table.len(),
            "huge_pages": hugealloc::mode(),
            "thp_policy": hugealloc::thp_policy(),
            "anon_huge_mib": huge_bytes.map(|b| b >> 20),
            "restore": "per packet: flow key + TCP flags from the parsed stream, the rest of Meta from its shape (replay::Stream), timed on both sides",
            "restore_ns_per_pkt": (restore * 1000.0).round() / 1000.0,
            "lookup_batch_ns_per_pkt": (lookup * 1000.0).round() / 1000.0,
            "floor_two_random_lines_ns": (floor * 1000.0).round() / 1000.0,
            "target_ns_per_pkt": TARGET_NS,
            "meets_target": r.ours_ns <= TARGET_NS && r.peer_ns / r.ours_ns >= 2.0,
        }),
    );
}

/// Correctness before speed: for every packet of the next `batches` batches, ours and the peer agree
/// on hit or miss (a miss exactly where the stream opens a new flow) and on the direction,
/// and ours creates one session per miss and passes every packet.
fn check(ours: &mut Replay<Ours>, peer: &mut Replay<PeerConntrack>, t: &Traffic, batches: usize) {
    let mut out = [None; 64];
    for _ in 0..batches {
        let b = ours.next_batch();
        assert_eq!(b, peer.next_batch());
        let keys: Vec<FlowKey> = t.metas(b).iter().map(|m| m.flow).collect();
        let hits = ours.side.0.v4().lookup_batch(&keys, &mut out);
        let new: u64 = t.new_positions(b).map(|i| 1u64 << i).sum();
        let all = u64::MAX >> (64 - keys.len());
        assert_eq!(
            hits,
            all & !new,
            "batch {b}: a miss exactly where a new flow is"
        );
        let peer_hits: u64 = (keys.iter().enumerate())
            .map(|(i, k)| u64::from(peer.side.contains(k)) << i)
            .sum();
        assert_eq!(peer_hits, hits, "batch {b}: the peer agrees on hit/miss");
        let created = ours.side.0.stats().created;
        ours.step(t);
        peer.step(t);
        assert_eq!(
            ours.side.0.stats().created - created,
            u64::from(new.count_ones())
        );
        for (i, (o, p)) in ours.packets().iter().zip(peer.packets()).enumerate() {
            assert!(o.meta.verdict.is_pass() && o.meta.session.is_some());
            assert_eq!(o.meta.direction, p.meta.direction, "batch {b} packet {i}");
            if new >> i & 1 == 1 {
                assert_eq!(o.meta.direction, Direction::Original);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_agree_across_wraparounds_and_the_table_keeps_its_size() {
        let flows = crate::replay::make_flows(3000, 7);
        let mut rng = Rng::new(9);
        // 64 batches: new flows live 32 of them, and the stream wraps round three times.
        let t = Traffic::new(&flows, 64 * 64, 64, 0.05, || rng.next_u64());
        assert!(t.new_share() > 0.03);
        let (ours, peer) = replay::established_sides(&flows, 4000);
        let (mut ours, mut peer) = (Replay::new(ours, &t), Replay::new(peer, &t));
        check(&mut ours, &mut peer, &t, 4 * t.batches());
        let live_new = ours.side.0.v4().len() - flows.len();
        assert!(live_new <= 32 * 64, "{live_new} new sessions still live");
    }
}
