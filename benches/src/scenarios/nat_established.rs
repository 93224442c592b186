//! `nat-established`: SNAT of established flows: session lookup + header rewrite +
//! incremental checksum update, batches of 64, `--sessions` sessions (default 1M, IPv4, 75%
//! TCP, 25% UDP), either direction.
//!
//! Ours: `ParseStage`-parsed packets through `Conntrack<Snat>` (hyperplane profile, four
//! public addresses, NAT timeouts), tables at 90% load. The sessions are opened before
//! timing through the same pipeline (TCP: a three-way handshake, so every TCP session is
//! established; UDP: a datagram each way), so every mapping is the allocator's. Peer: the textbook reference NAT: a `hashbrown` map with `ahash` from
//! each direction's 5-tuple to its translation (address, port, which end), then the same
//! rewrite and RFC 1624 checksum updates (IPv4 header, TCP/UDP with pseudo-header), written
//! plainly here; no state, no timers.
//!
//! Traffic: 2^18 real frames (TCP ACKs, UDP datagrams), each an established session's packet
//! picked uniformly, outbound or reply with equal odds, parsed once before timing. Each side
//! replays them with the same loop: per batch, copy the 64 frames' bytes and `Meta` back
//! from the templates (the rewrite changed them), then translate the batch. The restore is
//! timed on both sides alike and reported alone as `restore_ns_per_pkt`.
//!
//! Before timing, ours and the peer must leave every byte of 256 batches identical. Lines:
//! `"huge_pages": "madvise"` (tables on transparent huge pages) and `"none"`, as in
//! `conntrack-hit`.
//! `bytes_per_session`: the conntrack tables' and the SNAT service's allocations (allocator
//! and IPv6 store) divided by the sessions.

use crate::harness::{self, Opts};
use crate::hugealloc;
use crate::nat_setup::{
    BATCH, BATCH_NS, PUBLICS, Pipeline, START_NS, Traffic, flow, mappings, open, working_batch,
};
use nf_core::checksum::{update16, update32};
use nf_core::flow::proto;
use nf_core::{Batch, FlowKey, Instant, Packet, Stage};
use serde_json::json;

const PACKETS: usize = 1 << 18;
const CHECK_BATCHES: usize = 256;
/// Issue 13's targets: ≤ 50 ns per packet and ≥ 3× the reference NAT.
const TARGET_NS: f64 = 50.0;
const TARGET_SPEEDUP: f64 = 3.0;
pub(crate) fn run(opts: &Opts) {
    hugealloc::each_mode(|| measure(opts));
}

fn measure(opts: &Opts) {
    let sessions = opts.sessions.unwrap_or(1_000_000);
    let mut ours = open(sessions);
    let replies = mappings(&mut ours, sessions);
    let mut peer = Peer::new(sessions, &replies);
    let peer_bytes = peer.bytes();
    let traffic = Traffic::new(sessions, &replies, PACKETS);
    let mut ours = Side::new(Ours(ours));
    let mut peer_side = Side::new(PeerRef(&mut peer));
    for _ in 0..CHECK_BATCHES {
        let b = ours.next;
        ours.step(&traffic);
        peer_side.step(&traffic);
        for (i, (o, p)) in ours
            .batch
            .packets()
            .iter()
            .zip(peer_side.batch.packets())
            .enumerate()
        {
            assert!(
                o.meta.verdict.is_pass(),
                "batch {b} packet {i}: {:?}",
                o.meta.verdict
            );
            assert_eq!(
                o.data(),
                p.data(),
                "batch {b} packet {i}: both translate alike"
            );
            assert_ne!(
                o.data(),
                &traffic.frames[b * BATCH + i][..],
                "batch {b} packet {i}: translated"
            );
        }
    }
    let r = harness::ab(
        opts,
        BATCH as u64,
        || ours.step(&traffic),
        || peer_side.step(&traffic),
    );
    let mut restore_batch = working_batch();
    let mut b = 0;
    let restore = harness::solo(opts, BATCH as u64, || {
        traffic.restore(&mut restore_batch, b);
        b = (b + 1) % traffic.batches();
        u64::from(restore_batch.packets()[0].data()[30])
    });
    let ct = &ours.nat.0.second;
    let bytes = ct.allocated_bytes() + ct.service().memory_bytes();
    harness::report(
        opts,
        "nat-established",
        "reference NAT: hashbrown 0.17 HashMap<FlowKey, (addr, port, end)> + ahash 0.8, both directions, get() per packet, then the same in-place rewrite and RFC 1624 checksum updates",
        r,
        json!({
            "sessions": sessions,
            "family": "ipv4",
            "batch": BATCH,
            "profile": "hyperplane",
            "public_addresses": PUBLICS.len(),
            "tcp_share": 0.75,
            "bytes_per_session": (bytes as f64 / sessions as f64).round(),
            "conntrack_bytes": ct.allocated_bytes(),
            "snat_bytes": ct.service().memory_bytes(),
            "peer_bytes_per_session": (peer_bytes as f64 / sessions as f64).round(),
            "restore": "64-byte frame copy + Meta from the parsed stream (flow key and TCP flags per packet, the rest by shape: replay::Stream), timed on both sides",
            "restore_ns_per_pkt": (restore * 1000.0).round() / 1000.0,
            "huge_pages": hugealloc::mode(),
            "target_ns_per_pkt": TARGET_NS,
            "target_speedup": TARGET_SPEEDUP,
            "meets_target": r.ours_ns <= TARGET_NS && r.peer_ns / r.ours_ns >= TARGET_SPEEDUP,
        }),
    );
}

/// What a side translates a batch with.
trait Translate {
    fn translate(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>);
}

struct Ours(Pipeline);

impl Translate for Ours {
    fn translate(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        // The metadata is restored from the parsed templates: only the conntrack stage runs
        // (as in `conntrack-stage`).
        self.0.second.process(now, batch);
    }
}

struct PeerRef<'a>(&'a mut Peer);

impl Translate for PeerRef<'_> {
    fn translate(&mut self, _now: Instant, batch: &mut Batch<Vec<u8>>) {
        for p in batch.packets_mut() {
            self.0.translate(p);
        }
    }
}

/// One side's replay loop: restore, translate.
struct Side<T: Translate> {
    nat: T,
    batch: Batch<Vec<u8>>,
    next: usize,
    clock: u64,
}

impl<T: Translate> Side<T> {
    fn new(nat: T) -> Self {
        Self {
            nat,
            batch: working_batch(),
            next: 0,
            clock: 0,
        }
    }

    fn step(&mut self, t: &Traffic) -> u64 {
        t.restore(&mut self.batch, self.next);
        let now = Instant::from_nanos(START_NS + self.clock * BATCH_NS);
        self.nat.translate(now, &mut self.batch);
        self.next = (self.next + 1) % t.batches();
        self.clock += 1;
        u64::from(self.batch.packets()[0].data()[26])
    }
}

/// Which end a translation rewrites.
#[derive(Clone, Copy)]
enum End {
    Src,
    Dst,
}

type PeerMap = hashbrown::HashMap<FlowKey, ([u8; 4], u16, End), ahash::RandomState>;

/// The reference NAT: both directions of every session → (address, port, end). Also the
/// NAT step of the `pipeline` scenario's peer.
pub(crate) struct Peer {
    map: PeerMap,
}

impl Peer {
    fn new(sessions: usize, replies: &[FlowKey]) -> Self {
        Self::with_sessions(
            sessions,
            replies.iter().enumerate().map(|(i, r)| (flow(i), *r)),
        )
    }

    /// The reference holding `sessions` (original key, the NAT's reply key) pairs.
    pub(crate) fn with_sessions(
        sessions: usize,
        pairs: impl IntoIterator<Item = (FlowKey, FlowKey)>,
    ) -> Self {
        let map = PeerMap::with_capacity_and_hasher(2 * sessions, ahash::RandomState::new());
        let mut peer = Self { map };
        for (f, r) in pairs {
            peer.insert(&f, &r);
        }
        peer
    }

    /// Adds the session of `f` whose reply key is `r` (IPv4).
    pub(crate) fn insert(&mut self, f: &FlowKey, r: &FlowKey) {
        let public: [u8; 4] = r.dst_bytes().try_into().unwrap_or_default();
        let inside: [u8; 4] = f.src_bytes().try_into().unwrap_or_default();
        self.map.insert(*f, (public, r.dst_port, End::Src));
        self.map.insert(*r, (inside, f.src_port, End::Dst));
    }

    /// Forgets the session of `f` whose reply key is `r`.
    pub(crate) fn remove(&mut self, f: &FlowKey, r: &FlowKey) {
        self.map.remove(f);
        self.map.remove(r);
    }

    pub(crate) fn bytes(&self) -> usize {
        self.map.allocation_size()
    }

    /// Translates `p` (its IPv4 header at `meta.l3`, TCP or UDP at `meta.l4`) if
    /// `meta.flow` is a session's; leaves anything else alone.
    pub(crate) fn translate(&mut self, p: &mut Packet<Vec<u8>>) {
        let Some(&(addr, port, end)) = self.map.get(&p.meta.flow) else {
            return;
        };
        let (l3, l4, tcp) = (
            usize::from(p.meta.l3),
            usize::from(p.meta.l4),
            p.meta.flow.proto == proto::TCP,
        );
        let d = p.data_mut();
        let (a_at, p_at) = match end {
            End::Src => (l3 + 12, l4),
            End::Dst => (l3 + 16, l4 + 2),
        };
        let old: [u8; 4] = d[a_at..a_at + 4].try_into().expect("4 bytes");
        d[a_at..a_at + 4].copy_from_slice(&addr);
        let ipc = u16::from_be_bytes([d[l3 + 10], d[l3 + 11]]);
        d[l3 + 10..l3 + 12].copy_from_slice(&update32(ipc, old, addr).to_be_bytes());
        let old_port = u16::from_be_bytes([d[p_at], d[p_at + 1]]);
        d[p_at..p_at + 2].copy_from_slice(&port.to_be_bytes());
        let c_at = if tcp { l4 + 16 } else { l4 + 6 };
        let c = u16::from_be_bytes([d[c_at], d[c_at + 1]]);
        if tcp || c != 0 {
            let mut n = update16(update32(c, old, addr), old_port, port);
            if !tcp && n == 0 {
                n = 0xffff;
            }
            d[c_at..c_at + 2].copy_from_slice(&n.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_64_bytes_and_both_sides_agree() {
        let sessions = 2000;
        let mut pipe = open(sessions);
        let replies = mappings(&mut pipe, sessions);
        let mut peer = Peer::new(sessions, &replies);
        assert_eq!(replies.len(), sessions);
        let t = Traffic::new(sessions, &replies, PACKETS);
        let mut ours = Side::new(Ours(pipe));
        let mut theirs = Side::new(PeerRef(&mut peer));
        for _ in 0..8 {
            ours.step(&t);
            theirs.step(&t);
            for (o, p) in ours.batch.packets().iter().zip(theirs.batch.packets()) {
                assert!(o.meta.verdict.is_pass());
                assert_eq!(o.data(), p.data());
                assert_eq!(
                    o.meta.direction == nf_core::Direction::Reply,
                    o.meta.flow.src_bytes()[0] == 198
                );
            }
        }
    }
}
