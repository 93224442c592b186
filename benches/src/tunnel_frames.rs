//! The frames of the decap and encap scenarios (shared by path with
//! `benches/examples/decap_instructions.rs`): 64 inner Ethernet/IPv4/UDP flows, their
//! encapsulations over an IPv4, IPv6 or VLAN-tagged underlay, and [`Frames`], a batch reset to
//! the received frames before every decap.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::ParseConfig;
use nf_core::{Batch, Instant, Packet, Stage};
use nf_tunnel::profile::gwlb::GwlbMetadata;
use nf_tunnel::{DecapConfig, DecapStage, EncapConfig, EncapStage, OptionsBuilder, Underlay};

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

/// `cfg` with every checksum check left to the NIC (receive offload), as the etherparse peer
/// checks none: outer UDP, outer IPv4 header and inner IPv4 header. The decap scenarios
/// compare the same work.
pub(crate) fn offloaded(cfg: DecapConfig) -> DecapConfig {
    DecapConfig {
        verify_udp_checksum: false,
        verify_ipv4_checksum: false,
        parse: ParseConfig {
            verify_ipv4_checksum: false,
            ..cfg.parse
        },
        ..cfg
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
        self.reset();
        stage.process(Instant::ZERO, &mut self.batch);
        self.fold()
    }

    /// Gives every packet its outer headers back (they are still in front of the data) and
    /// a fresh verdict: a new batch without the cost of rebuilding the metadata.
    pub(crate) fn reset(&mut self) {
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
    }

    /// The inner keys folded into a checksum.
    pub(crate) fn fold(&self) -> u64 {
        let mut acc = 0u64;
        for p in self.batch.packets() {
            let k = &p.meta.flow;
            acc = acc.wrapping_add(u64::from(k.src_port) ^ u64::from(k.zone.0) << 16);
        }
        acc
    }

    /// The packets as the last call left them.
    pub(crate) fn packets(&self) -> &[Packet<Vec<u8>>] {
        self.batch.packets()
    }
}
