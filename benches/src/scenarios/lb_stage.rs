//! `lb-stage`: parsed packets through conntrack + load balancing (`Conntrack<Lb>`, DNAT),
//! 99% established / 1% new.
//!
//! Ours: `Conntrack<nf_lb::Lb>` with one whole-VIP listener, 1000 backends on port 8443 in
//! a Maglev table of 65,537 slots, DNAT; `--sessions` established IPv4 sessions (default
//! 1M, 75% TCP) created through the stage itself (so every session holds its backend and its
//! reply key is the backend's tuple), in a table at 90% load. Per packet: the one session
//! lookup, the LB service's slot read, and the in-place rewrite of address, port and
//! checksums (destination on the way in, source back to the VIP on replies). New flows pick
//! their backend from the table (keyed 5-tuple hash) and insert both keys.
//!
//! Peer: `hashbrown` + `ahash` holding both keys of every session (original and the backend's
//! reply tuple) → a record with the backend, the VIP port and a deadline; `maglev-hash`
//! 0.1.0 picks the backend of a new flow; the same rewrite with incremental checksums.
//!
//! Traffic: `replay::Traffic` over the established flows (sent to the VIP), either direction
//! uniformly; reply-direction templates carry the backend's tuple, as a backend's answers
//! would; the 1% new-flow templates are re-aimed at the VIP. Both sides replay the stream with
//! the same loop (restore `Meta`, process, remove the sessions of new flows 1024 batches
//! later). The working buffers are rewritten in place batch after batch: they start as a
//! real UDP frame (`replay::working_batch`) whose UDP checksum is not zero, so that ours,
//! which leaves a zero UDP checksum alone (RFC 768), does the peer's checksum work on UDP
//! packets too; otherwise the rewrite's work does not depend on the bytes it replaces. Before timing, both sides must agree on hit or
//! miss and direction for 4096 batches, and ours passes every packet.

use crate::harness::{self, Opts, Rng};
use crate::hugealloc;
use crate::lb_setup::{self, BACKENDS, TABLE, VIP, backend, src4};
use crate::replay::{self, Replay, Side, Traffic};
use nf_core::checksum::{update16, update32};
use nf_core::conntrack::Conntrack;
use nf_core::flow::proto;
use nf_core::{Batch, Direction, FlowKey, Instant, Meta, Packet, SessionRef, Stage, flags};
use nf_lb::Lb;
use serde_json::json;

const PACKETS: usize = 1 << 20;
const NEW_SHARE: f64 = 0.01;
const CHECK_BATCHES: usize = 4096;
const TARGET_NS: f64 = 45.0;

pub(crate) fn run(opts: &Opts) {
    let sessions = opts.sessions.unwrap_or(1_000_000);
    let flows = lb_setup::flows(sessions);
    hugealloc::each_mode(|| measure(opts, &flows));
}

fn measure(opts: &Opts, flows: &[FlowKey]) {
    let sessions = flows.len();
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let ours = OursLb(lb_setup::lb(flows, capacity));
    let mut rng = Rng::new(0x57A6E);
    let mut traffic = Traffic::new(flows, PACKETS, 64, NEW_SHARE, || rng.next_u64());
    lb_setup::aim(&mut traffic, &ours.0);
    let peer = PeerLb::new(&ours.0, flows);
    let huge_bytes = hugealloc::anon_huge_bytes();
    let bytes_per_session = ours.0.v4().allocated_bytes() as f64 / sessions as f64;
    let mut ours = Replay::new(ours, &traffic);
    let mut peer = Replay::new(peer, &traffic);
    check(&mut ours, &mut peer, &traffic, CHECK_BATCHES);

    let n = traffic.batch as u64;
    let r = harness::ab(opts, n, || ours.step(&traffic), || peer.step(&traffic));
    let lb = ours.side.0.service().counters();
    harness::report(
        opts,
        "lb-stage",
        "hashbrown 0.17 HashMap<FlowKey,(u32,bool)> + ahash 0.8 (both keys), maglev-hash 0.1.0 MaglevTable::get for new flows, the same DNAT rewrite with incremental checksums",
        r,
        json!({
            "sessions": sessions,
            "capacity": capacity,
            "backends": BACKENDS,
            "table_size": TABLE,
            "forwarding": "dnat",
            "family": "ipv4",
            "batch": traffic.batch,
            "new_flow_share": (traffic.new_share() * 1e5).round() / 1e5,
            "bytes_per_session": (bytes_per_session * 10.0).round() / 10.0,
            "lb_new_flows": lb.new_flows,
            "huge_pages": hugealloc::mode(),
            "thp_policy": hugealloc::thp_policy(),
            "anon_huge_mib": huge_bytes.map(|b| b >> 20),
            "target_ns_per_pkt": TARGET_NS,
            "meets_target": r.ours_ns <= TARGET_NS,
        }),
    );
}

/// Ours: `Conntrack<Lb>`.
struct OursLb(Conntrack<Lb>);

impl Side for OursLb {
    type Handle = SessionRef;
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.0.process(now, batch);
    }
    fn handle(meta: &Meta) -> Option<SessionRef> {
        meta.session
    }
    fn remove(&mut self, h: SessionRef) {
        self.0.remove(Instant::ZERO, h);
    }
}

type PeerMap = hashbrown::HashMap<FlowKey, (u32, bool), ahash::RandomState>;

/// The peer (see the module docs).
struct PeerLb {
    map: PeerMap,
    recs: Vec<PeerRecord>,
    free: Vec<u32>,
    maglev: maglev_hash::MaglevTable<([u8; 4], u16)>,
}

#[derive(Clone, Copy)]
struct PeerRecord {
    original: FlowKey,
    reply: FlowKey,
    backend: ([u8; 4], u16),
    vip_port: u16,
    deadline: u64,
}

const PEER_TIMEOUT_NS: u64 = 300_000_000_000;

impl PeerLb {
    /// The peer holding ours' sessions, each on the backend ours chose.
    fn new(ct: &Conntrack<Lb>, flows: &[FlowKey]) -> Self {
        let nodes: Vec<([u8; 4], u16)> = (0..BACKENDS).map(backend).collect();
        let mut p = Self {
            map: PeerMap::with_capacity_and_hasher(
                2 * (flows.len() + 2 * replay::LAG * 64),
                ahash::RandomState::with_seeds(1, 2, 3, 4),
            ),
            recs: Vec::with_capacity(flows.len()),
            free: Vec::new(),
            maglev: maglev_hash::MaglevTable::with_capacity(nodes, TABLE as usize),
        };
        for f in flows {
            let info = ct.lookup(f).and_then(|h| ct.info(h.session)).expect("live");
            let r = info.reply;
            p.insert(f, &r, (src4(&r), r.src_port), 0);
        }
        p
    }

    fn insert(&mut self, k: &FlowKey, reply: &FlowKey, backend: ([u8; 4], u16), now: u64) -> u32 {
        let rec = PeerRecord {
            original: *k,
            reply: *reply,
            backend,
            vip_port: k.dst_port,
            deadline: now + PEER_TIMEOUT_NS,
        };
        let id = self.free.pop().unwrap_or(self.recs.len() as u32);
        match self.recs.get_mut(id as usize) {
            Some(slot) => *slot = rec,
            None => self.recs.push(rec),
        }
        self.map.insert(*k, (id, false));
        self.map.insert(*reply, (id, true));
        id
    }
}

impl Side for PeerLb {
    type Handle = u32;
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        let now = now.as_nanos();
        for p in batch.packets_mut() {
            if !p.meta.verdict.is_pass() || !p.meta.has(flags::L3_VALID) {
                continue;
            }
            let (id, reply) = match self.map.get(&p.meta.flow) {
                Some(&(id, reply)) => {
                    self.recs[id as usize].deadline = now + PEER_TIMEOUT_NS;
                    (id, reply)
                }
                None => {
                    let f = p.meta.flow;
                    let b = *self.maglev.get(&f).expect("backends");
                    let r = FlowKey::v4(f.zone, b.0, src4(&f), f.proto, b.1, f.src_port);
                    (self.insert(&f, &r, b, now), false)
                }
            };
            let rec = self.recs[id as usize];
            if reply {
                peer_rewrite(p, 12, VIP, rec.vip_port);
            } else {
                peer_rewrite(p, 16, rec.backend.0, rec.backend.1);
            }
            p.meta.next_hop = id;
            p.meta.direction = if reply {
                Direction::Reply
            } else {
                Direction::Original
            };
        }
    }
    fn handle(meta: &Meta) -> Option<u32> {
        (meta.next_hop != nf_core::NO_NEXT_HOP).then_some(meta.next_hop)
    }
    fn remove(&mut self, id: u32) {
        let r = self.recs[id as usize];
        self.map.remove(&r.original);
        self.map.remove(&r.reply);
        self.free.push(id);
    }
}

/// The peer's IPv4 DNAT: the address at `l3 + at` (12 source, 16 destination) and the
/// matching port, IPv4 header and TCP/UDP checksums updated incrementally.
fn peer_rewrite(p: &mut Packet<Vec<u8>>, at: usize, addr: [u8; 4], port: u16) {
    let (l3, l4) = (usize::from(p.meta.l3), usize::from(p.meta.l4));
    let ck = l4
        + if p.meta.flow.proto == proto::TCP {
            16
        } else {
            6
        };
    let port_at = l4 + if at == 12 { 0 } else { 2 };
    let d = p.data_mut();
    let rd = |d: &[u8], i: usize| u16::from_be_bytes([d[i], d[i + 1]]);
    let old: [u8; 4] = d[l3 + at..l3 + at + 4].try_into().expect("4 bytes");
    let old_port = rd(d, port_at);
    let ip = update32(rd(d, l3 + 10), old, addr);
    let l4c = update16(update32(rd(d, ck), old, addr), old_port, port);
    d[l3 + 10..l3 + 12].copy_from_slice(&ip.to_be_bytes());
    d[l3 + at..l3 + at + 4].copy_from_slice(&addr);
    d[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
    d[ck..ck + 2].copy_from_slice(&l4c.to_be_bytes());
}

/// Correctness before speed (`replay::check_lockstep`): ours also rewrites every packet.
fn check(ours: &mut Replay<OursLb>, peer: &mut Replay<PeerLb>, t: &Traffic, batches: usize) {
    let created = |o: &OursLb| o.0.stats().created;
    replay::check_lockstep(ours, peer, t, batches, created, |_, _, o, _| {
        // Rewritten: to a backend (192.168/16) on the way in, from the VIP on the way back.
        match o.meta.direction {
            Direction::Original => assert_eq!(o.data()[30..32], [192, 168]),
            Direction::Reply => assert_eq!(o.data()[26..30], VIP),
        }
    });
}
