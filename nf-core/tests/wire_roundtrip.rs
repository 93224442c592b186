//! emit → new_checked → parse round trips for every header `Repr`, with arbitrary fields.

use nf_core::wire::ethernet::{EthernetFrame, EthernetRepr, VlanRepr, VlanTag};
use nf_core::wire::icmp::{IcmpPacket, IcmpRepr};
use nf_core::wire::ipv4::{Ipv4Packet, Ipv4Repr};
use nf_core::wire::ipv6::{Ipv6Packet, Ipv6Repr};
use nf_core::wire::tcp::{TcpPacket, TcpRepr};
use nf_core::wire::udp::{UdpPacket, UdpRepr};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn ethernet(src in any::<[u8; 6]>(), dst in any::<[u8; 6]>(), ethertype in any::<u16>()) {
        let r = EthernetRepr { src, dst, ethertype };
        let mut b = vec![0u8; r.buffer_len()];
        prop_assert_eq!(r.emit(&mut b).unwrap(), r.buffer_len());
        prop_assert_eq!(EthernetRepr::parse(&EthernetFrame::new_checked(&b[..]).unwrap()), r);
    }

    #[test]
    fn vlan(pcp in 0u8..8, dei in any::<bool>(), vid in 0u16..4096, ethertype in any::<u16>()) {
        let r = VlanRepr { pcp, dei, vid, ethertype };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b).unwrap();
        prop_assert_eq!(VlanRepr::parse(&VlanTag::new_checked(&b[..]).unwrap()), r);
    }

    #[test]
    fn ipv4(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), proto in any::<u8>(), ttl in any::<u8>(), dscp_ecn in any::<u8>(), ident in any::<u16>(),
            dont_frag in any::<bool>(), more_frags in any::<bool>(), frag_offset in 0u16..0x2000, payload_len in 0u16..200, opts in proptest::collection::vec(any::<u8>(), 0..=10)) {
        let mut options = [0u8; 40];
        let olen = opts.len() * 4;
        for (i, o) in opts.iter().enumerate() {
            options[i * 4..i * 4 + 4].copy_from_slice(&[1, 1, 1, *o & 1]); // NOPs and EOL/NOP
        }
        let r = Ipv4Repr { src, dst, proto, ttl, dscp_ecn, ident, dont_frag, more_frags, frag_offset, payload_len, options, options_len: olen as u8 };
        let mut b = vec![0u8; r.buffer_len() + usize::from(payload_len)];
        prop_assert_eq!(r.emit(&mut b).unwrap(), 20 + olen);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        prop_assert!(p.verify_checksum());
        prop_assert_eq!(p.check_options(), Ok(()));
        prop_assert_eq!(Ipv4Repr::parse(&p), r);
    }

    #[test]
    fn ipv6(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), next_header in any::<u8>(), hop_limit in any::<u8>(), traffic_class in any::<u8>(), flow_label in 0u32..0x10_0000, payload_len in 1u16..200) {
        let r = Ipv6Repr { src, dst, next_header, hop_limit, traffic_class, flow_label, payload_len };
        let mut b = vec![0u8; 40 + usize::from(payload_len)];
        r.emit(&mut b).unwrap();
        prop_assert_eq!(Ipv6Repr::parse(&Ipv6Packet::new_checked(&b[..]).unwrap()), r);
    }

    #[test]
    fn tcp(src_port in any::<u16>(), dst_port in any::<u16>(), seq in any::<u32>(), ack in any::<u32>(), flags in any::<u8>(), window in any::<u16>(), checksum in any::<u16>(), urgent in any::<u16>(), opts in proptest::collection::vec(any::<[u8; 4]>(), 0..=10)) {
        let mut options = [0u8; 40];
        for (i, o) in opts.iter().enumerate() {
            options[i * 4..i * 4 + 4].copy_from_slice(o);
        }
        let r = TcpRepr { src_port, dst_port, seq, ack, flags, window, checksum, urgent, options, options_len: (opts.len() * 4) as u8 };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b).unwrap();
        prop_assert_eq!(TcpRepr::parse(&TcpPacket::new_checked(&b[..]).unwrap()), r);
    }

    #[test]
    fn udp(src_port in any::<u16>(), dst_port in any::<u16>(), payload_len in 0u16..300, checksum in any::<u16>()) {
        let r = UdpRepr { src_port, dst_port, payload_len, checksum };
        let mut b = vec![0u8; 8 + usize::from(payload_len)];
        r.emit(&mut b).unwrap();
        prop_assert_eq!(UdpRepr::parse(&UdpPacket::new_checked(&b[..]).unwrap()), r);
    }

    #[test]
    fn icmp(ty in any::<u8>(), code in any::<u8>(), checksum in any::<u16>(), ident in any::<u16>(), seq in any::<u16>()) {
        let r = IcmpRepr { ty, code, checksum, ident, seq };
        let mut b = vec![0u8; 8];
        r.emit(&mut b).unwrap();
        prop_assert_eq!(IcmpRepr::parse(&IcmpPacket::new_checked(&b[..]).unwrap()), r);
    }

    #[test]
    fn views_never_panic_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = EthernetFrame::new_checked(&b[..]).map(|f| EthernetRepr::parse(&f));
        let _ = Ipv4Packet::new_checked(&b[..]).map(|p| (Ipv4Repr::parse(&p), p.verify_checksum(), p.check_options()));
        let _ = Ipv6Packet::new_checked(&b[..]).map(|p| (Ipv6Repr::parse(&p), p.extensions()));
        let _ = TcpPacket::new_checked(&b[..]).map(|p| (TcpRepr::parse(&p), p.sum()));
        let _ = UdpPacket::new_checked(&b[..]).map(|p| (UdpRepr::parse(&p), p.verify_checksum(0)));
        let _ = IcmpPacket::new_checked(&b[..]).map(|p| (IcmpRepr::parse(&p), p.verify_checksum(0)));
    }
}
