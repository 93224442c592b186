//! `geneve-encap`: in-place Geneve encapsulation with the three GWLB options, IPv4 outer
//! (DF, header checksum, UDP checksum 0, source port from the inner flow hash), batches of
//! 64 inner Ethernet/IPv4/UDP frames with a valid flow hash (as after parse + conntrack).
//!
//! Peer: no crate does in-place Geneve encapsulation, so the peer is the hand-written
//! reference the stage is tested against: per packet, emit Ethernet, IPv4 (full header
//! checksum), UDP and Geneve with nf-core's / nf-tunnel's `Repr::emit` into the headroom.

use super::geneve_decap::{HEADROOM, gwlb_options, inner_frames, underlay};
use crate::harness::{self, Opts};
use nf_core::flags;
use nf_core::wire::ethernet::EthernetRepr;
use nf_core::wire::ipv4::Ipv4Repr;
use nf_core::wire::udp::UdpRepr;
use nf_core::{Batch, Instant, Packet, Stage};
use nf_tunnel::{EncapConfig, EncapStage, GeneveRepr, Underlay};
use serde_json::json;

const BATCH: usize = 64;

pub(crate) fn run(opts: &Opts) {
    let inner = inner_frames(64);
    let options = gwlb_options();
    let mut stage = EncapStage::new(EncapConfig::geneve(options, 0x0012_3456, underlay()))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut batch = Batch::new();
    let mut hashes = Vec::new();
    for (i, f) in inner.iter().enumerate() {
        let mut buf = vec![0u8; HEADROOM + f.len()];
        buf[HEADROOM..].copy_from_slice(f);
        batch
            .push(Packet::new(buf, HEADROOM, f.len()).unwrap_or_else(|e| panic!("{e}")))
            .ok();
        hashes.push((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    let lens: Vec<usize> = inner.iter().map(Vec::len).collect();
    for (p, &h) in batch.packets_mut().iter_mut().zip(&hashes) {
        p.meta.flow_hash = h;
        p.meta.flags = flags::HASH_VALID;
    }
    let mut ours = || {
        // Take the headers pushed by the previous call off again (they become headroom): the
        // same frames and metadata as a fresh batch, without the cost of rebuilding `Meta`
        // (a full `Packet::reset` per packet cost about as much as the encapsulation itself
        // and the peer pays nothing comparable). The stage rewrites the headroom every call.
        for (p, &l) in batch.packets_mut().iter_mut().zip(&lens) {
            let pushed = p.len().saturating_sub(l);
            if p.pull_front(pushed).is_err() || !p.meta.verdict.is_pass() {
                p.reset(HEADROOM, l).ok();
            }
        }
        stage.process(Instant::ZERO, &mut batch);
        batch.packets().iter().map(|p| p.len() as u64).sum::<u64>()
    };
    // Every packet encapsulated (a dropped one would not have grown).
    let expect = ours();
    assert_eq!(
        expect,
        (lens.iter().sum::<usize>() + BATCH * (50 + options.len())) as u64
    );

    // The reference: the same headers from the Reprs, per packet.
    let mut bufs: Vec<Vec<u8>> = inner
        .iter()
        .map(|f| {
            let mut b = vec![0u8; HEADROOM + f.len()];
            b[HEADROOM..].copy_from_slice(f);
            b
        })
        .collect();
    let u = underlay();
    let geneve = GeneveRepr::new(0x0012_3456, 0x6558, &options);
    let hdr = 14 + 20 + 8 + geneve.buffer_len();
    let mut peer = || {
        let mut acc = 0u64;
        for (b, &h) in bufs.iter_mut().zip(&hashes) {
            let inner_len = b.len() - HEADROOM;
            let sport = 49152 + (h % 16384) as u16;
            let o = peer_outer(
                &mut b[HEADROOM - hdr..HEADROOM],
                &u,
                &geneve,
                inner_len,
                sport,
            );
            acc += (o + inner_len) as u64;
        }
        acc
    };
    assert_eq!(peer(), expect);
    let r = harness::ab(opts, BATCH as u64, &mut ours, &mut peer);
    harness::report(
        opts,
        "geneve-encap",
        "hand-written reference (nf-core/nf-tunnel Repr::emit per header, full IPv4 checksum)",
        r,
        json!({"outer": "ipv4", "options": 3, "option_bytes": options.len(), "inner_bytes": lens[0], "batch": BATCH}),
    );
}

/// The hand-written reference's outer headers (Ethernet, IPv4 with DF and a full header
/// checksum, UDP without checksum, Geneve `geneve`) for an inner frame of `inner_len` bytes,
/// written into `out` (exactly their length, IPv4 underlay); returns the bytes written. Also
/// the encap step of the `pipeline` scenario's peer.
pub(crate) fn peer_outer(
    out: &mut [u8],
    u: &Underlay,
    geneve: &GeneveRepr<'_>,
    inner_len: usize,
    sport: u16,
) -> usize {
    let (core::net::IpAddr::V4(src), core::net::IpAddr::V4(dst)) = (u.src, u.dst) else {
        return 0;
    };
    let hdr = 14 + 20 + 8 + geneve.buffer_len();
    let mut o = EthernetRepr {
        src: u.src_mac,
        dst: u.dst_mac,
        ethertype: 0x0800,
    }
    .emit(out)
    .unwrap_or(0);
    // TTL 64, DF set, identification 0, no options: the defaults.
    o += Ipv4Repr {
        src: src.octets(),
        dst: dst.octets(),
        proto: 17,
        payload_len: (hdr - 34 + inner_len) as u16,
        ..Ipv4Repr::default()
    }
    .emit(&mut out[o..])
    .unwrap_or(0);
    o += UdpRepr {
        src_port: sport,
        dst_port: 6081,
        payload_len: (hdr - 42 + inner_len) as u16,
        checksum: 0,
    }
    .emit(&mut out[o..])
    .unwrap_or(0);
    o + geneve.emit(&mut out[o..]).unwrap_or(0)
}
