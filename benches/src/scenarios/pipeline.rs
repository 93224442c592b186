//! `pipeline`: the whole gateway path, decap → policy → NAT → encap, on received frames,
//! `--sessions` established sessions (default 1M), 99% established / 1% new.
//!
//! Ours: `DecapStage` (Geneve on port 6081, VNI = zone, checksums left to the NIC as in the
//! decap scenarios) → `Conntrack<(SecurityGroups, Snat)>` (one session lookup per packet
//! shared by both services; 16 zones sharing `sg-stage`'s 61 ingress rules; SNAT with the
//! hyperplane profile and four public addresses, NAT timeouts; tables at 90% load) →
//! `EncapStage` (Geneve back to the sender, VNI = zone). Every established session is opened
//! through this same pipeline before timing (TCP: a three-way handshake; UDP: a datagram each
//! way), so each was admitted by the rules and holds the allocator's mapping. A new flow is
//! classified once by its zone's rules, given a mapping and inserted.
//!
//! Peer, the sum of the references the single-stage scenarios use, each as it stands alone:
//! `geneve-decap`'s etherparse outer slice and hand-written Geneve walk, then etherparse on the
//! inner frame for its 5-tuple; a policy reference (`hashbrown` + `ahash` map of both keys of
//! every session → a deadline, refreshed per packet; a new flow decided by a linear scan of
//! its zone's rules, `sg-stage`'s reference); `nat-established`'s reference NAT (its own map,
//! the in-place rewrite with RFC 1624 checksum updates; a new flow's mapping drawn at random
//! until free, in a `hashbrown` set of the mappings in use, as `nat-new`'s reference);
//! `geneve-encap`'s hand-written outer headers (`Repr::emit`, full IPv4 header checksum),
//! written over the received ones.
//!
//! Traffic: 2^18 received frames, 114 bytes each (outer Ethernet/IPv4/UDP/Geneve without
//! options, 50 bytes; inner Ethernet/IPv4 TCP ACK or UDP datagram, 64 bytes), each an
//! established session's packet picked uniformly, outbound or reply with equal odds, VNI =
//! the session's zone; 1% are first packets of new flows (UDP queries from 172.16/12, each
//! key used once in the stream). Both sides replay the frames with the same loop
//! (`pipeline_setup::Side`): per batch, the sessions of the new flows of the batch 512
//! batches before removed, every packet reset to the received frame (fresh metadata, the
//! frame's bytes copied back: the pipeline changed them), then the batch processed. The
//! restore is also timed alone and reported as `restore_ns_per_pkt`.
//!
//! Before timing, both sides must pass every packet of 256 batches and leave identical bytes
//! (but the outer UDP source port, which each side derives from the flow its own way, and a
//! new flow's public port, which each side's allocator chooses).

use super::geneve_decap::peer_tunnel;
use super::geneve_encap::peer_outer;
use super::nat_established::Peer as PeerNat;
use super::sg_stage;
use crate::harness::{self, Opts};
use crate::hugealloc;
use crate::nat_setup::{PUBLICS, START_NS};
use crate::pipeline_setup::{
    BATCH, FRAME, Gateway, LAG, NEW_SHARE, OUTER, PACKETS, Process, Sender, Side, Traffic, ZONES,
    egress_underlay, flow, gateway, open, restore, traffic, working_batch,
};
use crate::replay::Rng;
use core::net::IpAddr;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use nf_core::conntrack::{SessionState, TimeoutProfile};
use nf_core::flow::proto;
use nf_core::{Batch, DropReason, FlowKey, Instant, Packet, Verdict, ZoneId};
use nf_nat::{Profile, nat_timeouts};
use nf_policy::{ClassKey, Match, SgDirection, SgRule};
use nf_tunnel::{GeneveRepr, OptionsBuilder, Underlay};
use serde_json::json;

const CHECK_BATCHES: usize = 256;
/// Where the outer UDP source port is (left out of the byte comparison).
const OUTER_SPORT: core::ops::Range<usize> = 34..36;
const PEER: &str = "sum of references: etherparse 0.21 SlicedPacket (outer + inner) + hand-written Geneve walk; hashbrown 0.17 + ahash 0.8 policy map (both keys -> deadline; new flows by a linear scan of the zone's rules); the nat-established reference NAT (its own hashbrown + ahash map, in-place rewrite, RFC 1624; new flows mapped by random probing of a hashbrown set of mappings in use); hand-written Geneve outer (Repr::emit, full IPv4 checksum)";

pub(crate) fn run(opts: &Opts) {
    hugealloc::each_mode(|| measure(opts));
}

/// The peer (see the module docs).
struct Peer {
    /// Policy reference: both keys of every session → its record.
    policy: hashbrown::HashMap<FlowKey, u32, ahash::RandomState>,
    /// Per session: its deadline and idle timeout (ns), read on every packet.
    deadlines: Vec<(u64, u64)>,
    /// Per session: its keys, original and reply (only for removing it: kept apart, so that
    /// the per-packet refresh reads 16 bytes, not 112).
    keys: Vec<(FlowKey, FlowKey)>,
    free: Vec<u32>,
    /// Per zone: its ingress rules as matches (new flows; zone ids from 1).
    rules: Vec<Vec<Match>>,
    nat: PeerNat,
    /// The reference allocator's mappings in use: (public address index, destination,
    /// destination port, public port).
    used: hashbrown::HashSet<(u8, [u8; 4], u16, u16), ahash::RandomState>,
    rng: Rng,
    timeouts: TimeoutProfile,
    egress: Underlay,
    options: OptionsBuilder,
}

impl Peer {
    fn new(sessions: usize, replies: &[FlowKey], rules: &[SgRule]) -> Self {
        let timeouts = nat_timeouts(&Profile::Hyperplane);
        let room = sessions + 2 * LAG * BATCH;
        let mut peer = Self {
            policy: hashbrown::HashMap::with_capacity_and_hasher(
                2 * room,
                ahash::RandomState::with_seeds(1, 2, 3, 4),
            ),
            deadlines: Vec::with_capacity(room),
            keys: Vec::with_capacity(room),
            free: Vec::new(),
            rules: vec![sg_stage::ingress_matches(rules); ZONES as usize + 1],
            nat: PeerNat::with_sessions(room, []),
            used: hashbrown::HashSet::with_capacity_and_hasher(
                room,
                ahash::RandomState::with_seeds(5, 6, 7, 8),
            ),
            rng: Rng::new(0x5E55_1075),
            timeouts,
            egress: egress_underlay(),
            options: OptionsBuilder::new(),
        };
        for (i, r) in replies.iter().enumerate() {
            let f = flow(i);
            let state = if f.proto == proto::TCP {
                SessionState::TcpEstablished
            } else {
                SessionState::UdpReplied
            };
            peer.track(START_NS, &f, r, state);
        }
        // Each reference's state built in its own pass (as each stands alone).
        for (i, r) in replies.iter().enumerate() {
            peer.nat.insert(&flow(i), r);
        }
        for r in replies {
            peer.used.insert(mapping_of(r));
        }
        peer
    }

    fn bytes(&self) -> usize {
        self.policy.allocation_size()
            + self.deadlines.capacity() * core::mem::size_of::<(u64, u64)>()
            + self.keys.capacity() * core::mem::size_of::<(FlowKey, FlowKey)>()
            + self.used.allocation_size()
            + self.nat.bytes()
    }

    /// Adds the session of `f` whose reply key (the NAT's) is `r` to every reference; its id.
    fn insert(&mut self, now: u64, f: &FlowKey, r: &FlowKey, state: SessionState) -> u32 {
        self.nat.insert(f, r);
        self.track(now, f, r, state)
    }

    /// Adds the session of `f` whose reply key is `r` to the policy reference; its id.
    fn track(&mut self, now: u64, f: &FlowKey, r: &FlowKey, state: SessionState) -> u32 {
        let idle = self.timeouts.timeout(state).as_nanos();
        let id = match self.free.pop() {
            Some(id) => {
                if let (Some(d), Some(k)) = (
                    self.deadlines.get_mut(id as usize),
                    self.keys.get_mut(id as usize),
                ) {
                    (*d, *k) = ((now + idle, idle), (*f, *r));
                }
                id
            }
            None => {
                self.deadlines.push((now + idle, idle));
                self.keys.push((*f, *r));
                self.deadlines.len() as u32 - 1
            }
        };
        self.policy.insert(*f, id);
        self.policy.insert(*r, id);
        id
    }

    /// A new flow: the zone's rules, linearly; then a mapping drawn at random among the
    /// public addresses and ports until one is free for the destination. Out of line, so
    /// that the per-packet path stays small (as ours keeps its new-flow path).
    #[inline(never)]
    fn admit(&mut self, now: u64, key: &FlowKey) -> Result<u32, DropReason> {
        let class = ClassKey::from_flow(key, (0, 0));
        let rules = self
            .rules
            .get(key.zone.0 as usize)
            .map_or(&[][..], Vec::as_slice);
        if !rules.iter().any(|m| m.matches(&class)) {
            return Err(DropReason::SgDenied);
        }
        let dst: [u8; 4] = key.dst_bytes().try_into().unwrap_or_default();
        for _ in 0..64 {
            let x = self.rng.next_u64();
            let public = (x % PUBLICS.len() as u64) as u8;
            let port = 1024 + ((x >> 8) % 64512) as u16;
            if self.used.insert((public, dst, key.dst_port, port)) {
                let addr = PUBLICS
                    .get(usize::from(public))
                    .copied()
                    .unwrap_or_default();
                let reply = FlowKey::v4(key.zone, dst, addr, key.proto, key.dst_port, port);
                let state = SessionState::initial(key.proto, 0);
                return Ok(self.insert(now, key, &reply, state));
            }
        }
        Err(DropReason::NatCapacityFull)
    }

    /// One packet through the four references; the reason if one drops it.
    fn packet(&mut self, now: u64, p: &mut Packet<Vec<u8>>) -> Result<(), DropReason> {
        // Decap: the outer and tunnel headers, then the inner frame's 5-tuple.
        let (vni, _, at) = peer_tunnel(p.data(), true).ok_or(DropReason::NotTunnel)?;
        let inner = p.data().get(at..).ok_or(DropReason::TunnelTruncated)?;
        // Only the shape this reference writes back in place: a 50-byte outer, an untagged
        // inner Ethernet/IPv4 frame.
        if at != OUTER || inner.get(12..14) != Some(&[0x08, 0x00]) {
            return Err(DropReason::NonIp);
        }
        let (src, dst, ihl, protocol, sport, dport) = inner_tuple(inner)?;
        let key = FlowKey::v4(ZoneId(vni), src, dst, protocol, sport, dport);
        // Policy: the session's deadline, refreshed; a new flow decided by the rules, then
        // given its mapping.
        let opened = match self.policy.get(&key) {
            Some(&id) => {
                let (deadline, idle) = self
                    .deadlines
                    .get_mut(id as usize)
                    .ok_or(DropReason::NoSession)?;
                *deadline = now + *idle;
                None
            }
            None => Some(self.admit(now, &key)?),
        };
        // NAT: in place, from the inner offsets.
        p.meta.flow = key;
        p.meta.l3 = (at + 14) as u16;
        p.meta.l4 = (at + 14 + usize::from(ihl) * 4) as u16;
        self.nat.translate(p);
        // Encap: the new outer over the received one, VNI = zone.
        let entropy = u32::from(key.src_port ^ key.dst_port) ^ u32::from(key.src_raw()[3]);
        let sport = 49152 + (entropy % 16384) as u16;
        let geneve = GeneveRepr::new(vni, 0x6558, &self.options);
        let d = p.data_mut();
        let (outer, inner) = d.split_at_mut(at);
        if peer_outer(outer, &self.egress, &geneve, inner.len(), sport) != OUTER {
            return Err(DropReason::TunnelTruncated);
        }
        // A new session's id, the replay loop's handle. Only a new one: written on every
        // packet (before the NAT step, which reads `meta`), it held that step's lookup until
        // the policy lookup's cache miss resolved, about 690 → 1,150 ns per packet.
        if let Some(id) = opened {
            p.meta.next_hop = id;
        }
        Ok(())
    }
}

/// The reference allocator's entry of a session whose reply key is `r`.
fn mapping_of(r: &FlowKey) -> (u8, [u8; 4], u16, u16) {
    let public: [u8; 4] = r.dst_bytes().try_into().unwrap_or_default();
    let index = PUBLICS.iter().position(|&a| a == public).unwrap_or(0) as u8;
    let dst: [u8; 4] = r.src_bytes().try_into().unwrap_or_default();
    (index, dst, r.src_port, r.dst_port)
}

/// An inner IPv4 packet's source, destination, header length (in words), protocol and ports.
type InnerTuple = ([u8; 4], [u8; 4], u8, u8, u16, u16);

/// The inner frame's [`InnerTuple`], by etherparse. (The caller builds the flow key: built
/// here and returned, it made the peer about 1.5 times slower, 746 → 1,130 ns per packet,
/// apparently by overlapping fewer of its cache misses.)
fn inner_tuple(inner: &[u8]) -> Result<InnerTuple, DropReason> {
    let sliced = SlicedPacket::from_ethernet(inner).map_err(|_| DropReason::Ipv4Truncated)?;
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
        return Err(DropReason::NonIp);
    };
    let h = ip.header();
    let (protocol, sport, dport) = match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => (proto::TCP, t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (proto::UDP, u.source_port(), u.destination_port()),
        _ => return Err(DropReason::TcpTruncated),
    };
    Ok((h.source(), h.destination(), h.ihl(), protocol, sport, dport))
}

impl Process for Peer {
    type Handle = u32;
    fn run_batch(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        let now = now.as_nanos();
        for p in batch.packets_mut() {
            if let Err(r) = self.packet(now, p) {
                p.meta.verdict = Verdict::Drop(r);
            }
        }
    }
    fn handle(p: &Packet<Vec<u8>>) -> Option<u32> {
        p.meta.verdict.is_pass().then_some(p.meta.next_hop)
    }
    fn remove(&mut self, id: u32) {
        let Some((original, reply)) = self.keys.get(id as usize).copied() else {
            return;
        };
        self.policy.remove(&original);
        self.policy.remove(&reply);
        self.nat.remove(&original, &reply);
        self.used.remove(&mapping_of(&reply));
        self.free.push(id);
    }
}

fn measure(opts: &Opts) {
    let sessions = opts.sessions.unwrap_or(1_000_000);
    let rules = sg_stage::rules();
    let mut sender = Sender::new();
    let mut gw = gateway(sessions, &rules);
    let replies = open(&mut gw, &mut sender, sessions);
    let frames = traffic(&mut sender, sessions, &replies, PACKETS);
    let ct = &gw.first.second;
    let bytes = ct.allocated_bytes() + ct.service().1.memory_bytes();
    let huge_bytes = hugealloc::anon_huge_bytes();
    let peer = Peer::new(sessions, &replies, &rules);
    let peer_bytes = peer.bytes();
    let mut ours = Side::new(gw);
    let mut peer = Side::new(peer);
    check(&mut ours, &mut peer, &frames, CHECK_BATCHES);
    let created = ours.gw.first.second.stats().created;

    let r = harness::ab(
        opts,
        BATCH as u64,
        || ours.step(&frames),
        || peer.step(&frames),
    );
    let mut batch = working_batch();
    let mut b = 0;
    let restore_ns = harness::solo(opts, BATCH as u64, || {
        restore(&mut batch, &frames.frames, b);
        b = (b + 1) % frames.batches();
        u64::from(batch.packets()[0].data()[30])
    });
    harness::report(
        opts,
        "pipeline",
        PEER,
        r,
        json!({
            "stages": "decap (Geneve) -> conntrack (security groups, SNAT) -> encap (Geneve)",
            "sessions": sessions,
            "zones": ZONES,
            "family": "ipv4",
            "batch": BATCH,
            "frame_bytes": FRAME,
            "outer": "ipv4, geneve without options",
            "inner": "eth/ipv4 tcp ack or udp, 64 bytes",
            "tcp_share": 0.75,
            "new_flow_share": NEW_SHARE,
            "new_flow_lifetime_batches": LAG,
            "new_flows_in_check": created.saturating_sub(sessions as u64),
            "ingress_rules": rules.iter().filter(|r| r.direction == SgDirection::Ingress).count(),
            "nat_profile": "hyperplane",
            "public_addresses": PUBLICS.len(),
            "checksums_verified": "none on receive (offload, as the peer); IPv4 and TCP/UDP checksums updated by NAT, the outer IPv4 header checksum computed by encap",
            "bytes_per_session": (bytes as f64 / sessions as f64).round(),
            "peer_bytes_per_session": (peer_bytes as f64 / sessions as f64).round(),
            "restore": "per packet: Packet::reset (fresh Meta) + the 114-byte received frame copied back, timed on both sides",
            "restore_ns_per_pkt": (restore_ns * 1000.0).round() / 1000.0,
            "huge_pages": hugealloc::mode(),
            "thp_policy": hugealloc::thp_policy(),
            "anon_huge_mib": huge_bytes.map(|b| b >> 20),
        }),
    );
}

/// Correctness before speed: both sides pass every packet of `batches` batches and leave the
/// same bytes (but the outer UDP source port), translated and re-encapsulated; a new flow's
/// packet (whose public port each side's allocator chose its own way) leaves the same outer
/// and inner destination, and a public inner source on both sides.
fn check(ours: &mut Side<Gateway>, peer: &mut Side<Peer>, t: &Traffic, batches: usize) {
    let egress = match egress_underlay().src {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => unreachable!("an IPv4 underlay"),
    };
    // Inner IPv4 source and destination, then the inner destination port.
    let (src, dst, dport) = (
        OUTER + 26..OUTER + 30,
        OUTER + 30..OUTER + 34,
        OUTER + 36..OUTER + 38,
    );
    let mut new_flows = 0;
    // Both sides start at the stream's first batch.
    for step in 0..batches {
        ours.step(t);
        peer.step(t);
        let b = step % t.batches();
        for (i, (o, p)) in ours
            .batch
            .packets()
            .iter()
            .zip(peer.batch.packets())
            .enumerate()
        {
            assert!(
                o.meta.verdict.is_pass(),
                "batch {b} packet {i}: {:?}",
                o.meta.verdict
            );
            assert!(
                p.meta.verdict.is_pass(),
                "peer batch {b} packet {i}: {:?}",
                p.meta.verdict
            );
            let (o, p) = (o.data(), p.data());
            assert_eq!(o.len(), FRAME, "batch {b} packet {i}");
            assert_eq!(
                o[..OUTER_SPORT.start],
                p[..OUTER_SPORT.start],
                "batch {b} packet {i}"
            );
            // Sent by us, and translated (one of the inner addresses is a public one, or
            // was one before: either way the inner header changed).
            assert_eq!(o[26..30], egress, "batch {b} packet {i}: our outer source");
            assert_ne!(
                o[OUTER..],
                t.frames[b * BATCH + i][OUTER..],
                "batch {b} packet {i}: translated"
            );
            if t.new[b * BATCH + i] {
                new_flows += 1;
                assert_eq!(o[dst.clone()], p[dst.clone()], "batch {b} packet {i}");
                assert_eq!(o[dport.clone()], p[dport.clone()], "batch {b} packet {i}");
                for side in [o, p] {
                    assert!(
                        PUBLICS.iter().any(|a| side[src.clone()] == a[..]),
                        "batch {b} packet {i}: a new flow leaves from a public address"
                    );
                }
            } else {
                assert_eq!(
                    o[OUTER_SPORT.end..],
                    p[OUTER_SPORT.end..],
                    "batch {b} packet {i}"
                );
            }
        }
    }
    assert!(new_flows > 0 || batches < 100, "the stream opens new flows");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_translate_alike() {
        let sessions = 3000;
        let rules = sg_stage::rules();
        let mut sender = Sender::new();
        let mut gw = gateway(sessions, &rules);
        let replies = open(&mut gw, &mut sender, sessions);
        let frames = traffic(&mut sender, sessions, &replies, PACKETS / 4);
        let peer = Peer::new(sessions, &replies, &rules);
        let mut ours = Side::new(gw);
        let mut peer = Side::new(peer);
        // Past the new flows' lifetime: their sessions are removed on both sides, and the
        // stream comes round to them again as new flows.
        check(&mut ours, &mut peer, &frames, 2 * frames.batches());
    }
}
