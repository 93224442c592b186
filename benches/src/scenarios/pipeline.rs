//! `pipeline`: the whole gateway path, decap → policy → NAT → encap, on received frames,
//! `--sessions` established sessions (default 1M).
//!
//! Ours: `DecapStage` (Geneve on port 6081, VNI = zone, checksums left to the NIC as in the
//! decap scenarios) → `Conntrack<(SecurityGroups, Snat)>` (one session lookup per packet
//! shared by both services; 16 zones sharing `sg-stage`'s 61 ingress rules; SNAT with the
//! hyperplane profile and four public addresses, NAT timeouts; tables at 90% load) →
//! `EncapStage` (Geneve back to the sender, VNI = zone). Every session is opened through this
//! same pipeline before timing (TCP: a three-way handshake; UDP: a datagram each way), so each
//! was admitted by the rules and holds the allocator's mapping.
//!
//! Peer, the sum of the references the single-stage scenarios use, each as it stands alone:
//! `geneve-decap`'s etherparse outer slice and hand-written Geneve walk, then etherparse on the
//! inner frame for its 5-tuple; a policy reference (`hashbrown` + `ahash` map of both keys of
//! every session → a deadline, refreshed per packet); `nat-established`'s reference NAT (its
//! own map, the in-place rewrite with RFC 1624 checksum updates); `geneve-encap`'s hand-written
//! outer headers (`Repr::emit`, full IPv4 header checksum), written over the received ones.
//!
//! Traffic: 2^18 received frames, 114 bytes each (outer Ethernet/IPv4/UDP/Geneve without
//! options, 50 bytes; inner Ethernet/IPv4 TCP ACK or UDP datagram, 64 bytes), each an
//! established session's packet picked uniformly, outbound or reply with equal odds, VNI =
//! the session's zone. No new flows: their paths are `nat-new`'s, `sg-stage`'s and
//! `conntrack-stage`'s. Both sides replay the frames with the same loop: per batch, every
//! packet reset to the received frame (fresh metadata, the frame's bytes copied back: the
//! pipeline changed them), then the batch processed. The restore is timed on both sides and
//! reported alone as `restore_ns_per_pkt`.
//!
//! Before timing, both sides must pass every packet of 256 batches and leave identical bytes
//! (but the outer UDP source port, which each side derives from the flow its own way).

use super::geneve_decap::peer_tunnel;
use super::geneve_encap::peer_outer;
use super::nat_established::Peer as PeerNat;
use super::sg_stage;
use crate::harness::{self, Opts};
use crate::hugealloc;
use crate::nat_setup::{PUBLICS, START_NS};
use crate::pipeline_setup::{
    BATCH, FRAME, Gateway, OUTER, PACKETS, Process, Sender, Side, ZONES, egress_underlay, flow,
    gateway, open, restore, traffic, working_batch,
};
use core::net::IpAddr;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use nf_core::conntrack::SessionState;
use nf_core::flow::proto;
use nf_core::{Batch, DropReason, FlowKey, Instant, Packet, Verdict, ZoneId};
use nf_nat::{Profile, nat_timeouts};
use nf_policy::SgDirection;
use nf_tunnel::{GeneveRepr, OptionsBuilder, Underlay};
use serde_json::json;

const CHECK_BATCHES: usize = 256;
/// Where the outer UDP source port is (left out of the byte comparison).
const OUTER_SPORT: core::ops::Range<usize> = 34..36;
const PEER: &str = "sum of references: etherparse 0.21 SlicedPacket (outer + inner) + hand-written Geneve walk; hashbrown 0.17 + ahash 0.8 policy map (both keys -> deadline); the nat-established reference NAT (its own hashbrown + ahash map, in-place rewrite, RFC 1624); hand-written Geneve outer (Repr::emit, full IPv4 checksum)";

pub(crate) fn run(opts: &Opts) {
    hugealloc::each_mode(|| measure(opts));
}

/// The peer (see the module docs).
struct Peer {
    /// Policy reference: both keys of every session → its index in `deadlines`.
    policy: hashbrown::HashMap<FlowKey, u32, ahash::RandomState>,
    /// Per session: (deadline in ns, idle timeout in ns).
    deadlines: Vec<(u64, u64)>,
    nat: PeerNat,
    egress: Underlay,
    options: OptionsBuilder,
}

impl Peer {
    fn new(sessions: usize, replies: &[FlowKey]) -> Self {
        let timeouts = nat_timeouts(&Profile::Hyperplane);
        let mut policy = hashbrown::HashMap::with_capacity_and_hasher(
            2 * sessions,
            ahash::RandomState::with_seeds(1, 2, 3, 4),
        );
        let mut deadlines = Vec::with_capacity(sessions);
        for (i, r) in replies.iter().enumerate() {
            let f = flow(i);
            let state = if f.proto == proto::TCP {
                SessionState::TcpEstablished
            } else {
                SessionState::UdpReplied
            };
            let idle = timeouts.timeout(state).as_nanos();
            policy.insert(f, i as u32);
            policy.insert(*r, i as u32);
            deadlines.push((START_NS + idle, idle));
        }
        let nat = PeerNat::with_sessions(
            sessions,
            replies.iter().enumerate().map(|(i, r)| (flow(i), *r)),
        );
        Self {
            policy,
            deadlines,
            nat,
            egress: egress_underlay(),
            options: OptionsBuilder::new(),
        }
    }

    fn bytes(&self) -> usize {
        self.policy.allocation_size()
            + self.deadlines.capacity() * core::mem::size_of::<(u64, u64)>()
            + self.nat.bytes()
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
        // Policy: the session's deadline, refreshed.
        let id = *self.policy.get(&key).ok_or(DropReason::NoSession)?;
        let (deadline, idle) = self
            .deadlines
            .get_mut(id as usize)
            .ok_or(DropReason::NoSession)?;
        *deadline = now + *idle;
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
        Ok(())
    }
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
    fn run_batch(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        let now = now.as_nanos();
        for p in batch.packets_mut() {
            if let Err(r) = self.packet(now, p) {
                p.meta.verdict = Verdict::Drop(r);
            }
        }
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
    let peer = Peer::new(sessions, &replies);
    let peer_bytes = peer.bytes();
    let mut ours = Side::new(gw);
    let mut peer = Side::new(peer);
    check(&mut ours, &mut peer, &frames, CHECK_BATCHES);

    let r = harness::ab(
        opts,
        BATCH as u64,
        || ours.step(&frames),
        || peer.step(&frames),
    );
    let mut batch = working_batch();
    let mut b = 0;
    let restore_ns = harness::solo(opts, BATCH as u64, || {
        restore(&mut batch, &frames, b);
        b = (b + 1) % (frames.len() / BATCH);
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
            "new_flow_share": 0.0,
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
/// same bytes (but the outer UDP source port), translated and re-encapsulated.
fn check(ours: &mut Side<Gateway>, peer: &mut Side<Peer>, frames: &[[u8; FRAME]], batches: usize) {
    let egress = match egress_underlay().src {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => unreachable!("an IPv4 underlay"),
    };
    for b in 0..batches.min(frames.len() / BATCH) {
        ours.step(frames);
        peer.step(frames);
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
            assert_eq!(
                o[OUTER_SPORT.end..],
                p[OUTER_SPORT.end..],
                "batch {b} packet {i}"
            );
            // Sent by us, and translated (one of the inner addresses is a public one, or
            // was one before: either way the inner header changed).
            assert_eq!(o[26..30], egress, "batch {b} packet {i}: our outer source");
            assert_ne!(
                o[OUTER..],
                frames[b * BATCH + i][OUTER..],
                "batch {b} packet {i}: translated"
            );
        }
    }
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
        let frames = traffic(&mut sender, sessions, &replies, PACKETS);
        let peer = Peer::new(sessions, &replies);
        let mut ours = Side::new(gw);
        let mut peer = Side::new(peer);
        check(&mut ours, &mut peer, &frames, 64);
    }
}
