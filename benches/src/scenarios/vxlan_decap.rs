//! `vxlan-decap`: decapsulation of VXLAN frames (inner Ethernet/IPv4/UDP, 64 distinct
//! flows) in batches of 64: outer checks, VNI → zone, strip in place, inner key. Three
//! outers, each reported on its own: IPv4, IPv6, and IPv4 behind an 802.1Q tag.
//!
//! Peer: etherparse 0.21 `SlicedPacket::from_ethernet` on the outer frame, the VXLAN header
//! checked by hand, and `SlicedPacket::from_ethernet` on the inner frame with the 5-tuple.

use super::geneve_decap::{OUTERS, inner_frames, measure, offloaded, outer_frames};
use crate::harness::Opts;
use nf_tunnel::{DecapConfig, DecapStage, EncapConfig};
use serde_json::json;

const BATCH: usize = 64;
/// Over IPv4 no slower than before the outer headers moved onto the parse walk (the figure
/// of that time, on the development VM; the other targets are `geneve-decap`'s).
const IPV4_BEFORE_NS: f64 = 12.3;

pub(crate) fn run(opts: &Opts) {
    for outer in OUTERS {
        let frames = outer_frames(|u| EncapConfig::vxlan(100, u), outer, &inner_frames(64));
        // As in geneve-decap: checksums left to the NIC, like the peer.
        let cfg = offloaded(DecapConfig::default());
        let mut stage = DecapStage::new(cfg).expect("a valid config");
        measure(
            opts,
            "vxlan-decap",
            "etherparse 0.21 SlicedPacket (outer + inner) + hand-written VXLAN check",
            &frames,
            &mut stage,
            json!({"outer": outer, "checksums_verified": "none (receive offload, as the peer)", "inner": "eth/ipv4/udp", "frame_bytes": frames[0].len(), "batch": BATCH, "flows": BATCH}),
            IPV4_BEFORE_NS,
        );
    }
}
