//! `vxlan-decap`: decapsulation of VXLAN frames (IPv4 outer, inner Ethernet/IPv4/UDP, 64
//! distinct flows) in batches of 64: outer checks, VNI → zone, strip in place, inner key.
//!
//! Peer: etherparse 0.21 `SlicedPacket::from_ethernet` on the outer frame, the VXLAN header
//! checked by hand, and `SlicedPacket::from_ethernet` on the inner frame with the 5-tuple.

use super::geneve_decap::{Frames, encapsulated, inner_frames, peer_decap, underlay};
use crate::harness::{self, Opts};
use nf_tunnel::{DecapConfig, DecapStage, EncapConfig};
use serde_json::json;

const BATCH: usize = 64;

pub(crate) fn run(opts: &Opts) {
    let frames = encapsulated(EncapConfig::vxlan(100, underlay()), &inner_frames(64));
    let mut stage = DecapStage::new(DecapConfig::default());
    let mut ours = Frames::new(&frames);
    assert!(ours.decap(&mut stage) != 0);
    let r = harness::ab(
        opts,
        BATCH as u64,
        || ours.decap(&mut stage),
        || {
            frames
                .iter()
                .map(|f| peer_decap(f, false))
                .fold(0, u64::wrapping_add)
        },
    );
    harness::report(
        opts,
        "vxlan-decap",
        "etherparse 0.21 SlicedPacket (outer + inner) + hand-written VXLAN check",
        r,
        json!({"outer": "ipv4", "inner": "eth/ipv4/udp", "frame_bytes": frames[0].len(), "batch": BATCH, "flows": BATCH}),
    );
}
