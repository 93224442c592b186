//! `geneve-decap`: decapsulation of Geneve frames (three GWLB-style options, inner
//! Ethernet/IPv4/UDP, 64 distinct flows) in batches of 64: outer checks, option walk, VNI →
//! zone, strip in place, inner flow key. Three outers, each reported on its own: IPv4,
//! IPv6, and IPv4 behind an 802.1Q tag.
//!
//! Peer: etherparse 0.21 `SlicedPacket::from_ethernet` on the outer frame, a hand-written
//! Geneve header and option walk on its UDP payload, and `SlicedPacket::from_ethernet` again
//! on the inner frame with the 5-tuple extracted — the same work, done with the usual crate.

use crate::harness::{self, Opts};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use nf_core::{Batch, Instant, Packet, Stage};
use nf_tunnel::profile::gwlb::{self, GwlbMetadata};
use nf_tunnel::{DecapConfig, DecapStage, EncapConfig, EncapStage, OptionsBuilder, Underlay};
use serde_json::json;

pub(crate) const HEADROOM: usize = 128;
const BATCH: usize = 64;

/// 64 inner Ethernet/IPv4/UDP frames of `payload` bytes, one flow each.
pub(crate) fn inner_frames(payload: usize) -> Vec<Vec<u8>> {
    (0..BATCH as u16)
        .map(|i| {
            let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
            let tot = (28 + payload) as u16;
            let mut ip = vec![
                0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0,
            ];
            ip.extend_from_slice(&(i + 2).to_be_bytes());
            ip[2..4].copy_from_slice(&tot.to_be_bytes());
            let c = nf_core::checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&(10000 + i).to_be_bytes());
            f.extend_from_slice(&53u16.to_be_bytes());
            f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.resize(f.len() + payload, 0xab);
            f
        })
        .collect()
}

pub(crate) fn underlay() -> Underlay {
    Underlay {
        src_mac: [2, 0, 0, 0, 1, 1],
        dst_mac: [2, 0, 0, 0, 2, 2],
        src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
    }
}

/// The outers every decap scenario measures.
pub(crate) const OUTERS: [&str; 3] = ["ipv4", "ipv6", "vlan"];

/// `inner` encapsulated by `cfg` over the `outer` underlay (see [`OUTERS`]).
pub(crate) fn outer_frames(
    cfg: impl Fn(Underlay) -> EncapConfig,
    outer: &str,
    inner: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let u = if outer == "ipv6" {
        Underlay {
            src: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            dst: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
            ..underlay()
        }
    } else {
        underlay()
    };
    let mut frames = encapsulated(cfg(u), inner);
    if outer == "vlan" {
        // An 802.1Q tag (VLAN 100) in front of the outer EtherType.
        for f in &mut frames {
            f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        }
    }
    frames
}

pub(crate) fn gwlb_options() -> OptionsBuilder {
    GwlbMetadata {
        endpoint_id: 0x1122_3344_5566_7788,
        attachment_id: 0x99aa_bbcc_ddee_ff00,
        flow_cookie: 0x0bad_cafe,
    }
    .options()
}

/// Encapsulated copies of `inner` made with nf-tunnel's encap stage (checked by tshark in
/// the interop tests).
pub(crate) fn encapsulated(cfg: EncapConfig, inner: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut e = EncapStage::new(cfg).unwrap_or_else(|e| panic!("encap config: {e}"));
    inner
        .iter()
        .map(|f| {
            let mut buf = vec![0u8; HEADROOM + f.len()];
            buf[HEADROOM..].copy_from_slice(f);
            let mut p = Packet::new(buf, HEADROOM, f.len()).unwrap_or_else(|e| panic!("{e}"));
            let mut b = Batch::new();
            nf_core::parse_frame(f, &mut p.meta, &nf_core::ParseConfig::default()).ok();
            b.push(p).ok();
            e.process(Instant::ZERO, &mut b);
            b.drain()
                .map(|p| p.data().to_vec())
                .next()
                .unwrap_or_default()
        })
        .collect()
}

/// A batch holding `frames`, reset to the full frame before every call.
pub(crate) struct Frames {
    batch: Batch<Vec<u8>>,
    lens: Vec<usize>,
}

impl Frames {
    pub(crate) fn new(frames: &[Vec<u8>]) -> Self {
        let mut batch = Batch::new();
        for f in frames {
            let p = Packet::new(f.clone(), 0, f.len()).unwrap_or_else(|e| panic!("{e}"));
            batch.push(p).ok();
        }
        Self {
            batch,
            lens: frames.iter().map(Vec::len).collect(),
        }
    }

    /// Runs `stage` over the batch and folds the inner keys into a checksum.
    pub(crate) fn decap(&mut self, stage: &mut DecapStage) -> u64 {
        // Give every packet its outer headers back (they are still in front of the data)
        // and a fresh verdict: a new batch without the cost of rebuilding the metadata.
        for (p, &l) in self.batch.packets_mut().iter_mut().zip(&self.lens) {
            let n = usize::from(p.meta.tunnel.outer_len);
            if p.push_front(n).is_err() || p.len() != l {
                p.reset(0, l).ok();
            }
            // Not decapsulated yet, and starting at Ethernet again: what a freshly received
            // frame's metadata says.
            p.meta.verdict = nf_core::Verdict::Pass;
            p.meta.tunnel.depth = 0;
            p.meta.flags = 0;
        }
        stage.process(Instant::ZERO, &mut self.batch);
        let mut acc = 0u64;
        for p in self.batch.packets() {
            let k = &p.meta.flow;
            acc = acc.wrapping_add(u64::from(k.src_port) ^ u64::from(k.zone.0) << 16);
        }
        acc
    }
}

/// The peer: etherparse outer slice, manual tunnel walk, etherparse inner slice.
pub(crate) fn peer_decap(frame: &[u8], geneve: bool) -> u64 {
    let Ok(outer) = SlicedPacket::from_ethernet(frame) else {
        return 0;
    };
    let Some(TransportSlice::Udp(udp)) = outer.transport else {
        return 0;
    };
    let port = udp.destination_port();
    let t = udp.payload();
    let (vni, inner) = if geneve {
        if port != 6081 || t.len() < 8 || t[0] >> 6 != 0 {
            return 0;
        }
        let olen = usize::from(t[0] & 0x3f) * 4;
        let Some(opts) = t.get(8..8 + olen) else {
            return 0;
        };
        let mut rest = opts;
        let mut n = 0u64;
        while rest.len() >= 4 {
            let l = 4 + usize::from(rest[3] & 0x1f) * 4;
            if rest[2] & 0x80 != 0 && u16::from_be_bytes([rest[0], rest[1]]) != gwlb::CLASS {
                return 0;
            }
            let Some(r) = rest.get(l..) else { return 0 };
            rest = r;
            n += 1;
        }
        if !rest.is_empty() {
            return 0;
        }
        let vni = u32::from_be_bytes([0, t[4], t[5], t[6]]);
        (vni + n as u32, &t[8 + olen..])
    } else {
        if port != 4789 || t.len() < 8 || t[0] & 0x08 == 0 {
            return 0;
        }
        (u32::from_be_bytes([0, t[4], t[5], t[6]]), &t[8..])
    };
    let Ok(inner) = SlicedPacket::from_ethernet(inner) else {
        return 0;
    };
    let src_port = match inner.transport {
        Some(TransportSlice::Udp(u)) => u.source_port(),
        Some(TransportSlice::Tcp(t)) => t.source_port(),
        _ => 0,
    };
    let addr = match inner.net {
        Some(NetSlice::Ipv4(ip)) => u64::from(u32::from_be_bytes(ip.header().source())),
        Some(NetSlice::Ipv6(ip)) => u64::from(ip.header().source()[15]),
        _ => 0,
    };
    (u64::from(src_port) ^ u64::from(vni) << 16).wrapping_add(addr)
}

/// Times `stage` against the etherparse peer on `frames` and reports the result as
/// `scenario` with `params`.
pub(crate) fn measure(
    opts: &Opts,
    scenario: &str,
    peer: &str,
    frames: &[Vec<u8>],
    stage: &mut DecapStage,
    params: serde_json::Value,
) {
    let geneve = scenario == "geneve-decap";
    let mut ours = Frames::new(frames);
    let check = ours.decap(stage);
    assert!(
        check != 0
            && ours
                .batch
                .packets()
                .iter()
                .all(|p| p.meta.verdict.is_pass()),
        "{scenario} {params}: every frame decapsulates"
    );
    let r = harness::ab(
        opts,
        BATCH as u64,
        || ours.decap(stage),
        || {
            frames
                .iter()
                .map(|f| peer_decap(f, geneve))
                .fold(0, u64::wrapping_add)
        },
    );
    harness::report(opts, scenario, peer, r, params);
}

pub(crate) fn run(opts: &Opts) {
    for outer in OUTERS {
        let frames = outer_frames(
            |u| EncapConfig::geneve(gwlb_options(), 0x0012_3456, u),
            outer,
            &inner_frames(64),
        );
        // The peer does not verify UDP checksums: neither do we (a NIC with receive
        // checksum offload did; the IPv6 frames carry one, the IPv4 ones zero).
        let cfg = DecapConfig {
            verify_udp_checksum: false,
            ..gwlb::decap_config()
        };
        let mut stage = DecapStage::new(cfg).expect("the GWLB profile is a valid config");
        measure(
            opts,
            "geneve-decap",
            "etherparse 0.21 SlicedPacket (outer + inner) + hand-written Geneve option walk",
            &frames,
            &mut stage,
            json!({"outer": outer, "udp_checksum_verified": false, "options": 3, "inner": "eth/ipv4/udp", "frame_bytes": frames[0].len(), "batch": BATCH, "flows": BATCH}),
        );
    }
}
