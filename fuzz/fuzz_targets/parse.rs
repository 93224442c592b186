//! Fuzzes the parse stage: arbitrary bytes never panic it, every packet ends with a
//! verdict, a batch gives exactly what single-packet batches give, and an accepted
//! IPv4/IPv6 frame re-parses identically from its own emitted headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nf_core::flow::proto;
use nf_core::wire::ethernet::{EthernetFrame, EthernetRepr, VlanRepr, VlanTag};
use nf_core::wire::ethertype;
use nf_core::wire::icmp::{IcmpPacket, IcmpRepr};
use nf_core::wire::ipv4::{Ipv4Packet, Ipv4Repr};
use nf_core::wire::ipv6::{Ipv6Packet, Ipv6Repr};
use nf_core::wire::tcp::{TcpPacket, TcpRepr};
use nf_core::wire::udp::{UdpPacket, UdpRepr};
use nf_core::{
    Batch, Instant, Meta, Packet, ParseConfig, ParseStage, Stage, Verdict, flags, parse_frame,
};

/// Rebuilds an accepted IP frame from its own headers: Ethernet, VLAN tags, the IP header
/// and the transport header are parsed into `Repr`s and emitted into a new buffer; the bytes
/// no `Repr` covers (IPv6 extension headers, the payload, Ethernet padding) are copied.
fn reemit(f: &[u8], meta: &Meta) -> Vec<u8> {
    let mut out = vec![0u8; f.len()];
    let eth = EthernetFrame::new_checked(f).expect("accepted frame has Ethernet");
    let mut at = EthernetRepr::parse(&eth).emit(&mut out).unwrap();
    for _ in 0..meta.vlan_count {
        let tag = VlanTag::new_checked(&f[at..]).expect("accepted tag");
        at += VlanRepr::parse(&tag).emit(&mut out[at..]).unwrap();
    }
    assert_eq!(at, usize::from(meta.l3));
    at += match meta.ethertype {
        ethertype::IPV4 => {
            let p = Ipv4Packet::new_checked(&f[at..]).expect("accepted IPv4");
            Ipv4Repr::parse(&p).emit(&mut out[at..]).unwrap()
        }
        ethertype::IPV6 => {
            let p = Ipv6Packet::new_checked(&f[at..]).expect("accepted IPv6");
            Ipv6Repr::parse(&p).emit(&mut out[at..]).unwrap()
        }
        other => panic!("accepted IP frame with EtherType {other:#06x}"),
    };
    let l4 = usize::from(meta.l4);
    out[at..l4].copy_from_slice(&f[at..l4]);
    at = l4;
    if meta.has(flags::L4_VALID) {
        let rest = &f[l4..];
        at += match meta.flow.proto {
            proto::TCP => {
                TcpRepr::parse(&TcpPacket::new_checked(rest).unwrap()).emit(&mut out[at..])
            }
            // A first fragment's UDP length covers the whole datagram, more than the
            // fragment holds, so the checked view refuses it: copy its header as it is.
            proto::UDP if meta.has(flags::FRAGMENT) => {
                out[at..at + 8].copy_from_slice(&rest[..8]);
                Ok(8)
            }
            proto::UDP => {
                UdpRepr::parse(&UdpPacket::new_checked(rest).unwrap()).emit(&mut out[at..])
            }
            proto::ICMP | proto::ICMPV6 => {
                IcmpRepr::parse(&IcmpPacket::new_checked(rest).unwrap()).emit(&mut out[at..])
            }
            other => panic!("L4_VALID with protocol {other}"),
        }
        .unwrap();
        assert_eq!(at, usize::from(meta.payload));
    }
    out[at..].copy_from_slice(&f[at..]);
    out
}

fuzz_target!(|data: &[u8]| {
    // One batch of several frames cut from the input (first byte: cut length seed).
    let (seed, rest) = match data.split_first() {
        Some((s, r)) => (*s as usize, r),
        None => return,
    };
    let cut = 14 + seed % 120;
    let frames: Vec<&[u8]> = rest.chunks(cut.max(1)).take(nf_core::BATCH_SIZE).collect();
    let cfg = ParseConfig {
        verify_ipv4_checksum: seed & 1 == 0,
        ..ParseConfig::default()
    };

    let mut batch = Batch::new();
    for f in &frames {
        batch
            .push(Packet::new(f.to_vec(), 0, f.len()).unwrap())
            .ok();
    }
    let mut stage = ParseStage::new(cfg);
    stage.process(Instant::ZERO, &mut batch);

    for (i, f) in frames.iter().enumerate() {
        let mut single = Batch::new();
        single
            .push(Packet::new(f.to_vec(), 0, f.len()).unwrap())
            .ok();
        ParseStage::new(cfg).process(Instant::ZERO, &mut single);
        let a = &batch.packets()[i].meta;
        let b = &single.packets()[0].meta;
        assert_eq!(a, b, "batch and single differ");
        if a.verdict == Verdict::Pass {
            assert!(usize::from(a.l3) <= f.len());
            assert!(usize::from(a.l4) <= f.len() && usize::from(a.payload) <= f.len());
        }
        if a.verdict == Verdict::Pass && a.has(flags::L3_VALID) {
            let again = reemit(f, a);
            let mut m = Meta::default();
            parse_frame(&again, &mut m, &cfg).expect("re-emitted frame parses");
            assert_eq!(&m, a, "re-emitted headers parse differently");
        }
    }
});
