//! Rewrites checked against etherparse (an independent implementation): every checksum
//! after an incremental update equals its full recomputation.

use super::*;
use crate::parse::{ParseConfig, parse_frame};
use alloc::string::ToString;
use alloc::vec::Vec;
use etherparse::{
    Icmpv4Type, Icmpv6Type, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader,
    icmpv4::DestUnreachableHeader,
};
use proptest::prelude::*;

const MAC: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

#[test]
fn addr_offsets() {
    assert_eq!(addr_offset::<4>(End::Src), 12);
    assert_eq!(addr_offset::<16>(End::Dst), 24);
    assert_eq!(End::Src.other(), End::Dst);
}

#[test]
fn short_buffers_are_refused_not_indexed() {
    let mut d = [0x45u8; 10];
    let at = Layout {
        l3: 0,
        l4: 20,
        family: Family::V4,
        proto: proto::TCP,
        has_l4: true,
    };
    let a = [1; 16];
    assert_eq!(
        rewrite(&mut d, at, End::Src, &a, Some(7)),
        Err(RewriteError::Truncated)
    );
    assert!(translate_icmp_error(&mut d, at, End::Dst, &a, Some(7)).is_err());
    // Offsets at the end of the address space overflow: refused, no panic.
    let far = Layout {
        l3: usize::MAX - 3,
        l4: usize::MAX - 1,
        ..at
    };
    assert!(rewrite(&mut d, far, End::Dst, &a, Some(7)).is_err());
    assert!(translate_icmp_error(&mut d, far, End::Dst, &a, None).is_err());
    let far6 = Layout {
        family: Family::V6,
        ..far
    };
    assert!(translate_icmp_error(&mut d, far6, End::Src, &a, None).is_err());
}

/// Which transport a generated packet carries.
#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp,
    Udp,
    /// UDP over IPv4 without a checksum (0).
    UdpNoChecksum,
    /// An echo request.
    Echo,
}

fn l4_strategy() -> impl Strategy<Value = L4> {
    prop_oneof![
        Just(L4::Tcp),
        Just(L4::Udp),
        Just(L4::UdpNoChecksum),
        Just(L4::Echo)
    ]
}

/// A packet built by etherparse (from the IP header on when `ethernet` is false).
fn build(
    v6: bool,
    l4: L4,
    (src, dst): ([u8; 16], [u8; 16]),
    (sp, dp): (u16, u16),
    payload: &[u8],
    ethernet: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC.0, MAC.1);
    let b = if v6 {
        b.ipv6(src, dst, 64)
    } else {
        b.ipv4(first4(&src), first4(&dst), 64)
    };
    let mut out = Vec::new();
    let r = match l4 {
        L4::Tcp => b.tcp(sp, dp, 1000, 64000).ack(7).write(&mut out, payload),
        L4::Udp | L4::UdpNoChecksum => b.udp(sp, dp).write(&mut out, payload),
        L4::Echo if v6 => b.icmpv6_echo_request(sp, dp).write(&mut out, payload),
        L4::Echo => b.icmpv4_echo_request(sp, dp).write(&mut out, payload),
    };
    assert!(r.is_ok());
    let ip_at = 14;
    if matches!(l4, L4::UdpNoChecksum) && !v6 {
        let at = ip_at + 20 + 6;
        out[at..at + 2].copy_from_slice(&[0, 0]);
    }
    if ethernet { out } else { out.split_off(ip_at) }
}

fn parsed_layout(frame: &[u8]) -> Layout {
    let mut meta = Meta::default();
    assert!(parse_frame(frame, &mut meta, &ParseConfig::default()).is_ok());
    Layout::of(&meta)
}

/// Every checksum of a (non-error) packet equals etherparse's full recomputation.
fn checksums_valid(frame: &[u8], no_udp_check: bool) -> Result<(), TestCaseError> {
    let h = PacketHeaders::from_ethernet_slice(frame)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let payload = h.payload.slice();
    match (h.net, h.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), t) => {
            prop_assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            match t {
                Some(TransportHeader::Udp(u)) if no_udp_check => prop_assert_eq!(u.checksum, 0),
                Some(TransportHeader::Udp(u)) => {
                    prop_assert_eq!(u.checksum, u.calc_checksum_ipv4(&ip, payload).unwrap());
                }
                Some(TransportHeader::Tcp(t)) => {
                    prop_assert_eq!(t.checksum, t.calc_checksum_ipv4(&ip, payload).unwrap());
                }
                Some(TransportHeader::Icmpv4(i)) => {
                    prop_assert_eq!(i.checksum, i.icmp_type.calc_checksum(payload));
                }
                t => prop_assert!(false, "{:?}", t),
            }
        }
        (Some(NetHeaders::Ipv6(ip, _)), t) => match t {
            Some(TransportHeader::Udp(u)) => {
                prop_assert_eq!(u.checksum, u.calc_checksum_ipv6(&ip, payload).unwrap());
            }
            Some(TransportHeader::Tcp(t)) => {
                prop_assert_eq!(t.checksum, t.calc_checksum_ipv6(&ip, payload).unwrap());
            }
            Some(TransportHeader::Icmpv6(i)) => {
                let want = i
                    .icmp_type
                    .calc_checksum(ip.source, ip.destination, payload);
                prop_assert_eq!(i.checksum, want.unwrap());
            }
            t => prop_assert!(false, "{:?}", t),
        },
        (net, _) => prop_assert!(false, "{:?}", net),
    }
    Ok(())
}

fn addr_strategy() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

proptest! {
    /// The incremental rewrite equals a full recomputation (etherparse), both ends, both
    /// families, TCP, UDP (an absent IPv4 UDP checksum stays absent) and ICMP queries
    /// (the identifier as the port), with and without a new port.
    #[test]
    fn rewrite_equals_full_recompute(
        v6 in any::<bool>(), l4 in l4_strategy(), src_end in any::<bool>(),
        (src, dst, addr) in (addr_strategy(), addr_strategy(), addr_strategy()),
        (sp, dp) in (any::<u16>(), any::<u16>()), port in proptest::option::of(any::<u16>()),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut f = build(v6, l4, (src, dst), (sp, dp), &payload, true);
        let at = parsed_layout(&f);
        prop_assert!(at.has_l4);
        let end = if src_end { End::Src } else { End::Dst };
        prop_assert_eq!(rewrite(&mut f, at, end, &addr, port), Ok(()));
        let no_udp_check = matches!(l4, L4::UdpNoChecksum) && !v6;
        checksums_valid(&f, no_udp_check)?;
        // The end's address and port (identifier) are the new ones; the rest is as built.
        let n = if v6 { 16 } else { 4 };
        let a = at.l3 + if v6 { addr_offset::<16>(end) } else { addr_offset::<4>(end) };
        prop_assert_eq!(&f[a..a + n], &addr[..n]);
        let (port_at, was) = match (l4, end) {
            (L4::Echo, _) => (at.l4 + 4, sp),
            (_, End::Src) => (at.l4, sp),
            (_, End::Dst) => (at.l4 + 2, dp),
        };
        prop_assert_eq!(u16::from_be_bytes([f[port_at], f[port_at + 1]]), port.unwrap_or(was));
        let other = at.l3 + if v6 { addr_offset::<16>(end.other()) } else { addr_offset::<4>(end.other()) };
        let kept = if src_end { dst } else { src };
        prop_assert_eq!(&f[other..other + n], &kept[..n]);
    }

    /// Addresses only (a later fragment): the IP header changes, nothing after it.
    #[test]
    fn addresses_only_leaves_the_transport_alone(
        v6 in any::<bool>(), addr in addr_strategy(), payload in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let f0 = build(v6, L4::Udp, ([1; 16], [2; 16]), (1, 2), &payload, true);
        let mut f = f0.clone();
        let at = parsed_layout(&f).addresses_only();
        prop_assert_eq!(rewrite(&mut f, at, End::Dst, &addr, Some(9)), Ok(()));
        prop_assert_eq!(&f[at.l4..], &f0[at.l4..]);
    }

    /// ICMP errors (IPv4 fragmentation needed, IPv6 packet too big) quoting TCP, UDP or an
    /// echo, the quote whole or cut: the outer end and the quote's other end are rewritten,
    /// and every checksum that can be checked equals its full recomputation.
    #[test]
    fn icmp_error_translation_equals_full_recompute(
        v6 in any::<bool>(), l4 in l4_strategy(), src_end in any::<bool>(),
        (src, dst, addr, router) in (addr_strategy(), addr_strategy(), addr_strategy(), addr_strategy()),
        (sp, dp) in (any::<u16>(), any::<u16>()), port in proptest::option::of(any::<u16>()),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        cut in proptest::option::of(0usize..64),
    ) {
        // The quoted packet travelled opposite to the error: an error to `end` of the outer
        // header quotes a packet whose other end it was.
        let end = if src_end { End::Src } else { End::Dst };
        let quoted = build(v6, l4, (src, dst), (sp, dp), &payload, false);
        let ip_len = if v6 { 40 } else { 20 };
        let keep = cut.map_or(quoted.len(), |c| (ip_len + 8 + c).min(quoted.len()));
        let quote = &quoted[..keep];
        // The error goes back to the quoted packet's source, from a router.
        let (osrc, odst) = (router, src);
        let b = PacketBuilder::ethernet2(MAC.0, MAC.1);
        let mut f = Vec::new();
        let r = if v6 {
            b.ipv6(osrc, odst, 64).icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 }).write(&mut f, quote)
        } else {
            let ty = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 });
            b.ipv4(first4(&osrc), first4(&odst), 64).icmpv4(ty).write(&mut f, quote)
        };
        prop_assert!(r.is_ok());
        let at = parsed_layout(&f);
        prop_assert_eq!(translate_icmp_error(&mut f, at, end, &addr, port), Ok(()));

        let h = PacketHeaders::from_ethernet_slice(&f).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let q = h.payload.slice();
        prop_assert_eq!(q.len(), keep);
        match (&h.net, &h.transport) {
            (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Icmpv4(i))) => {
                prop_assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                prop_assert_eq!(i.checksum, i.icmp_type.calc_checksum(q));
            }
            (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Icmpv6(i))) => {
                let want = i.icmp_type.calc_checksum(ip.source, ip.destination, q);
                prop_assert_eq!(i.checksum, want.unwrap());
            }
            other => prop_assert!(false, "{:?}", other),
        }
        let n = if v6 { 16 } else { 4 };
        let outer = at.l3 + if v6 { addr_offset::<16>(end) } else { addr_offset::<4>(end) };
        prop_assert_eq!(&f[outer..outer + n], &addr[..n]);
        // The quote's other end: its address, its port (identifier) if given.
        let inner = end.other();
        let qa = if v6 { addr_offset::<16>(inner) } else { addr_offset::<4>(inner) };
        prop_assert_eq!(&q[qa..qa + n], &addr[..n]);
        let ql4 = &q[ip_len..];
        let (port_at, was) = match (l4, inner) {
            (L4::Echo, _) => (4, sp),
            (_, End::Src) => (0, sp),
            (_, End::Dst) => (2, dp),
        };
        prop_assert_eq!(u16::from_be_bytes([ql4[port_at], ql4[port_at + 1]]), port.unwrap_or(was));
        if !v6 {
            prop_assert!(crate::checksum::verify(&q[..20]), "quoted IPv4 header checksum");
        }
        if keep == quoted.len() {
            // The whole packet is quoted: its own checksums are valid too.
            let mut whole = f[..14].to_vec();
            whole.extend_from_slice(q);
            checksums_valid(&whole, matches!(l4, L4::UdpNoChecksum) && !v6)?;
        }
    }

    /// The inline IPv4 TCP/UDP path leaves exactly the bytes and result of the general
    /// path, whatever the bytes (stored checksums right or wrong, 0 included) and layout.
    #[test]
    fn inline_path_equals_general_path(
        mut d in proptest::collection::vec(any::<u8>(), 0..80),
        (l3, l4) in (0usize..48, 0usize..72), p in prop_oneof![Just(proto::TCP), Just(proto::UDP), any::<u8>()],
        has_l4 in any::<bool>(), src_end in any::<bool>(), port in proptest::option::of(any::<u16>()),
        addr in addr_strategy(), zero in proptest::option::of((0usize..80, any::<bool>())),
    ) {
        if let Some((at, wide)) = zero {
            // Checksums of 0 and 0xFFFF (UDP: absent; both: ±0).
            let v = if wide { 0xff } else { 0 };
            for b in d.iter_mut().skip(at).take(2) {
                *b = v;
            }
        }
        let at = Layout { l3, l4, family: Family::V4, proto: p, has_l4 };
        let end = if src_end { End::Src } else { End::Dst };
        let mut general = d.clone();
        let want = rewrite_general(&mut general, at, end, &addr, port);
        prop_assert_eq!(rewrite(&mut d, at, end, &addr, port), want);
        prop_assert_eq!(d, general);
    }

    /// The same over the layouts the inline path takes (the random layouts above rarely
    /// are): a 20-byte IP header or one with options, the frame cut at every length.
    #[test]
    fn inline_path_equals_general_path_at_every_length(
        d in proptest::collection::vec(any::<u8>(), 80),
        l3 in 0usize..16, options in prop_oneof![3 => Just(0usize), 1 => 1usize..4],
        len in 0usize..80, p in prop_oneof![Just(proto::TCP), Just(proto::UDP)],
        src_end in any::<bool>(), port in proptest::option::of(any::<u16>()),
        addr in addr_strategy(), zero_check in any::<bool>(),
    ) {
        let l4 = l3 + 20 + 4 * options;
        let mut d = d;
        d.truncate(len.max(l3));
        if zero_check {
            // A stored checksum of 0 (UDP: none).
            let at = l4 + if p == proto::UDP { 6 } else { 16 };
            for b in d.iter_mut().skip(at).take(2) {
                *b = 0;
            }
        }
        let at = Layout { l3, l4, family: Family::V4, proto: p, has_l4: true };
        let end = if src_end { End::Src } else { End::Dst };
        let mut general = d.clone();
        let want = rewrite_general(&mut general, at, end, &addr, port);
        prop_assert_eq!(rewrite(&mut d, at, end, &addr, port), want);
        prop_assert_eq!(d, general);
    }

    /// `rewrite_packet` (the metadata's layout read inline) is `rewrite` with
    /// `Layout::of(meta)`: the same result and bytes, whatever the metadata says.
    #[test]
    fn packet_path_equals_layout_path(
        d in proptest::collection::vec(any::<u8>(), 0..80),
        (l3, l4) in (0u16..48, 0u16..72), p in prop_oneof![Just(proto::TCP), Just(proto::UDP), any::<u8>()],
        v6 in any::<bool>(), fl in any::<u16>(), src_end in any::<bool>(),
        port in proptest::option::of(any::<u16>()), addr in addr_strategy(),
    ) {
        let mut pkt = crate::Packet::with_headroom(&d, 0);
        pkt.meta.flow = if v6 {
            crate::FlowKey::v6(crate::ZoneId(0), [1; 16], [2; 16], p, 3, 4)
        } else {
            crate::FlowKey::v4(crate::ZoneId(0), [1; 4], [2; 4], p, 3, 4)
        };
        (pkt.meta.l3, pkt.meta.l4, pkt.meta.flags) = (l3, l4, fl);
        let end = if src_end { End::Src } else { End::Dst };
        let mut want = d.clone();
        let r = rewrite(&mut want, Layout::of(&pkt.meta), end, &addr, port);
        prop_assert_eq!(rewrite_packet(&mut pkt, end, &addr, port), r);
        prop_assert_eq!(pkt.data(), &want[..]);
    }

    /// Arbitrary bytes with arbitrary layouts: an error or a rewrite, never a panic.
    #[test]
    fn arbitrary_input_never_panics(
        mut d in proptest::collection::vec(any::<u8>(), 0..128),
        (l3, l4) in (0usize..140, 0usize..140), v6 in any::<bool>(), p in any::<u8>(),
        has_l4 in any::<bool>(), src_end in any::<bool>(), port in proptest::option::of(any::<u16>()),
    ) {
        let at = Layout {
            l3,
            l4,
            family: if v6 { Family::V6 } else { Family::V4 },
            proto: p,
            has_l4,
        };
        let end = if src_end { End::Src } else { End::Dst };
        let _ = rewrite(&mut d, at, end, &[7; 16], port);
        let _ = translate_icmp_error(&mut d, at, end, &[7; 16], port);
    }
}
