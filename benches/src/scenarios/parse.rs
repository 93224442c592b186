//! `parse`: 64-byte Ethernet/IPv4/TCP and IPv6/UDP frames → validated flow key.
//!
//! Ours: `ParseStage::process` over batches of 64 (IPv4 header checksum verified).
//! Peers, same frames, one frame at a time into the same `FlowKey`:
//! etherparse `SlicedPacket::from_ethernet` (validates lengths; does not verify the IPv4
//! checksum) and smoltcp `wire` (`new_checked` per layer plus `Ipv4Packet::verify_checksum`).

use crate::harness::{self, Opts, Rng};
use nf_core::flow::proto;
use nf_core::{Batch, FlowKey, Instant, Packet, ParseStage, Stage, ZoneId};
use serde_json::json;
use std::hint::black_box;

const FRAMES: usize = 4096;
const FRAME_LEN: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4Tcp,
    V6Udp,
}

pub(crate) fn run(opts: &Opts) {
    for fam in [Family::V4Tcp, Family::V6Udp] {
        let frames = make_frames(fam);
        let mut batches: Vec<Batch<Vec<u8>>> = frames
            .chunks(nf_core::BATCH_SIZE)
            .map(|c| {
                let mut b = Batch::new();
                for f in c {
                    let _ = b.push(Packet::new(f.clone(), 0, f.len()).expect("frame fits"));
                }
                b
            })
            .collect();
        let mut stage = ParseStage::default();
        // Correctness before speed: all three agree on every key.
        for b in &mut batches {
            stage.process(Instant::ZERO, b);
        }
        for (i, f) in frames.iter().enumerate() {
            let ours = batches[i / 64].packets()[i % 64].meta.flow;
            assert_eq!(
                Some(ours),
                etherparse_key(f),
                "etherparse disagrees on frame {i}"
            );
            assert_eq!(Some(ours), smoltcp_key(f), "smoltcp disagrees on frame {i}");
        }
        let mut next = 0usize;
        let nb = batches.len();
        let mut ours = || {
            let b = &mut batches[next];
            next = (next + 1) % nb;
            stage.process(Instant::ZERO, b);
            b.packets()[7].meta.flow.src_port as u64
        };
        let family = if fam == Family::V4Tcp {
            "ipv4-tcp"
        } else {
            "ipv6-udp"
        };
        let smoltcp_verifies = fam == Family::V4Tcp;
        let etherparse = "etherparse 0.21 SlicedPacket::from_ethernet + key extraction";
        measure_peer(
            opts,
            family,
            &frames,
            &mut ours,
            etherparse,
            false,
            etherparse_key,
        );
        let smoltcp = "smoltcp 0.14 wire new_checked per layer + verify_checksum";
        measure_peer(
            opts,
            family,
            &frames,
            &mut ours,
            smoltcp,
            smoltcp_verifies,
            smoltcp_key,
        );
    }
}

/// Times `ours` against a peer that turns each frame into a key (statically dispatched, and
/// every key materialised, as the parse stage does into metadata), and reports the line.
fn measure_peer(
    opts: &Opts,
    family: &str,
    frames: &[Vec<u8>],
    ours: &mut impl FnMut() -> u64,
    peer: &str,
    peer_verifies: bool,
    key_of: impl Fn(&[u8]) -> Option<FlowKey>,
) {
    let mut out = [FlowKey::default(); 64];
    let mut i = 0usize;
    let r = harness::ab(opts, 64, ours, || {
        for k in out.iter_mut() {
            *k = key_of(black_box(&frames[i])).unwrap_or_default();
            i = (i + 1) % FRAMES;
        }
        black_box(&out);
        u64::from(out[7].src_port)
    });
    harness::report(
        opts,
        "parse",
        peer,
        r,
        json!({"family": family, "frame_bytes": FRAME_LEN, "batch": 64, "ours_verifies_ipv4_checksum": true, "peer_verifies_ipv4_checksum": peer_verifies}),
    );
}

/// Deterministic 64-byte frames with random addresses and ports, built by etherparse.
fn make_frames(fam: Family) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(0x5eed_0001);
    (0..FRAMES)
        .map(|_| {
            let mut b16 = || -> [u8; 16] { core::array::from_fn(|_| rng.next_u64() as u8) };
            let (s, d) = (b16(), b16());
            let sp = rng.next_u64() as u16;
            let dp = rng.next_u64() as u16;
            let builder =
                etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            let mut out = Vec::with_capacity(FRAME_LEN);
            match fam {
                Family::V4Tcp => {
                    let b = builder
                        .ipv4([s[0], s[1], s[2], s[3]], [d[0], d[1], d[2], d[3]], 64)
                        .tcp(sp, dp, 1, 1000);
                    let pad = FRAME_LEN - b.size(0);
                    b.write(&mut out, &vec![0u8; pad]).expect("write");
                }
                Family::V6Udp => {
                    // 14 + 40 + 8 = 62 bytes of headers; 2 bytes of payload make 64.
                    let b = builder.ipv6(s, d, 64).udp(sp, dp);
                    let pad = FRAME_LEN - b.size(0);
                    b.write(&mut out, &vec![0u8; pad]).expect("write");
                }
            }
            assert_eq!(out.len(), FRAME_LEN);
            out
        })
        .collect()
}

fn etherparse_key(f: &[u8]) -> Option<FlowKey> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(f).ok()?;
    let (sp, dp, pr) = match p.transport? {
        TransportSlice::Tcp(t) => (t.source_port(), t.destination_port(), proto::TCP),
        TransportSlice::Udp(u) => (u.source_port(), u.destination_port(), proto::UDP),
        _ => return None,
    };
    match p.net? {
        NetSlice::Ipv4(ip) => Some(FlowKey::v4(
            ZoneId(0),
            ip.header().source(),
            ip.header().destination(),
            pr,
            sp,
            dp,
        )),
        NetSlice::Ipv6(ip) => Some(FlowKey::v6(
            ZoneId(0),
            ip.header().source(),
            ip.header().destination(),
            pr,
            sp,
            dp,
        )),
        _ => None,
    }
}

fn smoltcp_key(f: &[u8]) -> Option<FlowKey> {
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
    };
    let eth = EthernetFrame::new_checked(f).ok()?;
    let ports = |p: IpProtocol, payload: &[u8]| -> Option<(u8, u16, u16)> {
        match p {
            IpProtocol::Tcp => TcpPacket::new_checked(payload)
                .ok()
                .map(|t| (proto::TCP, t.src_port(), t.dst_port())),
            IpProtocol::Udp => UdpPacket::new_checked(payload)
                .ok()
                .map(|u| (proto::UDP, u.src_port(), u.dst_port())),
            _ => None,
        }
    };
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if !ip.verify_checksum() {
                return None;
            }
            let (pr, sp, dp) = ports(ip.next_header(), ip.payload())?;
            Some(FlowKey::v4(
                ZoneId(0),
                ip.src_addr().octets(),
                ip.dst_addr().octets(),
                pr,
                sp,
                dp,
            ))
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            let (pr, sp, dp) = ports(ip.next_header(), ip.payload())?;
            Some(FlowKey::v6(
                ZoneId(0),
                ip.src_addr().octets(),
                ip.dst_addr().octets(),
                pr,
                sp,
                dp,
            ))
        }
        _ => None,
    }
}
