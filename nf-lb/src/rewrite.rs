//! DNAT in place: one address and port of a parsed packet replaced, with the IPv4 header
//! checksum and the transport checksum (TCP, UDP, ICMPv6: over the pseudo-header) updated
//! incrementally (RFC 1624).

use nf_core::checksum::{update_bytes, update16, update32};
use nf_core::flow::proto;
use nf_core::{Family, Packet, flags};

/// Which end of the packet is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The source (replies un-NATed to the VIP).
    Src,
    /// The destination (client traffic to the backend).
    Dst,
}

/// Rewrites the packet's `end` to `addr` (IPv4 in the first 4 bytes) and, when `port` is
/// not 0 and the packet has a TCP or UDP header, to `port`. A packet too short for the
/// offsets its metadata names is left as it is (the parser has checked them).
#[inline]
pub(crate) fn rewrite<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
    end: End,
    addr: &[u8; 16],
    port: u16,
) {
    let m = &pkt.meta;
    let (family, l3, l4, prot) = (
        m.flow.family(),
        usize::from(m.l3),
        usize::from(m.l4),
        m.flow.proto,
    );
    // Transport header present: not a later fragment, and parsed.
    let has_l4 = m.has(flags::L4_VALID) && !m.has(flags::LATER_FRAGMENT);
    let data = pkt.data_mut();
    let check_at = match prot {
        proto::TCP if has_l4 => Some(l4 + 16),
        proto::UDP if has_l4 => Some(l4 + 6),
        proto::ICMPV6 if has_l4 && family == Family::V6 => Some(l4 + 2),
        _ => None,
    };
    let udp = prot == proto::UDP;
    let mut l4_check = check_at.and_then(|at| read16(data, at));
    // A UDP datagram over IPv4 without a checksum (0) keeps none.
    let absent = udp && l4_check == Some(0);
    match family {
        Family::V4 => {
            let at = l3 + if end == End::Src { 12 } else { 16 };
            let Some(old) = data
                .get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
            else {
                return;
            };
            let [a, b, c, d, ..] = *addr;
            let new = [a, b, c, d];
            if let Some(c) = read16(data, l3 + 10) {
                write16(data, l3 + 10, update32(c, old, new));
            }
            l4_check = l4_check.map(|c| update32(c, old, new));
            if let Some(b) = data.get_mut(at..at + 4) {
                b.copy_from_slice(&new);
            }
        }
        Family::V6 => {
            let at = l3 + if end == End::Src { 8 } else { 24 };
            let Some(old) = data
                .get(at..at + 16)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
            else {
                return;
            };
            l4_check = l4_check.and_then(|c| update_bytes(c, &old, addr));
            if let Some(b) = data.get_mut(at..at + 16) {
                b.copy_from_slice(addr);
            }
        }
    }
    if port != 0 && (prot == proto::TCP || udp) && has_l4 {
        let at = l4 + if end == End::Src { 0 } else { 2 };
        if let Some(old) = read16(data, at) {
            l4_check = l4_check.map(|c| update16(c, old, port));
            write16(data, at, port);
        }
    }
    if let (Some(at), Some(c)) = (check_at, l4_check) {
        let c = match c {
            _ if absent => 0,
            0 if udp => 0xffff,
            c => c,
        };
        write16(data, at, c);
    }
}

#[inline(always)]
fn read16(data: &[u8], at: usize) -> Option<u16> {
    data.get(at..at + 2)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(u16::from_be_bytes)
}

#[inline(always)]
fn write16(data: &mut [u8], at: usize, v: u16) {
    if let Some(b) = data.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use nf_core::checksum::{checksum, pseudo_header_v4, pseudo_header_v6, sum};
    use nf_core::wire::Frame;
    use proptest::prelude::*;

    /// The transport checksum over the pseudo-header and segment, recomputed in full.
    fn full_l4(d: &[u8], l3: usize, l4: usize, prot: u8, v6: bool) -> u16 {
        let seg = &d[l4..];
        let pseudo = if v6 {
            let a = |at: usize| <[u8; 16]>::try_from(&d[at..at + 16]).unwrap_or([0; 16]);
            pseudo_header_v6(&a(l3 + 8), &a(l3 + 24), prot, seg.len() as u32)
        } else {
            let a = |at: usize| <[u8; 4]>::try_from(&d[at..at + 4]).unwrap_or([0; 4]);
            pseudo_header_v4(a(l3 + 12), a(l3 + 16), prot, seg.len() as u16)
        };
        !nf_core::checksum::fold(sum(pseudo, seg))
    }

    proptest! {
        /// Incremental updates equal a full recompute, both ends, both families, TCP and UDP.
        #[test]
        fn incremental_equals_full(
            v6 in any::<bool>(), udp in any::<bool>(), src in any::<bool>(),
            addr in any::<[u8; 16]>(), port in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let f = if v6 {
                Frame::ipv6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7], [0xfd; 16])
            } else {
                Frame::ipv4([198, 51, 100, 7], [192, 0, 2, 1])
            };
            let f = if udp { f.udp(40_000, 53) } else { f.tcp(40_000, 80, 0x10) };
            let frame: Vec<u8> = f.payload(&payload).to_vec().unwrap_or_default();
            let mut p = Packet::with_headroom(&frame, 0);
            let mut meta = p.meta;
            prop_assert!(nf_core::parse_frame(p.data(), &mut meta, &nf_core::ParseConfig::default()).is_ok());
            p.meta = meta;
            let (l3, l4) = (usize::from(p.meta.l3), usize::from(p.meta.l4));
            let end = if src { End::Src } else { End::Dst };
            rewrite(&mut p, end, &addr, port);
            let d = p.data();
            let prot = if udp { proto::UDP } else { proto::TCP };
            if !v6 {
                prop_assert_eq!(checksum(&d[l3..l3 + 20]), 0, "IPv4 header");
            }
            let at = l4 + if udp { 6 } else { 16 };
            let stored = u16::from_be_bytes([d[at], d[at + 1]]);
            let mut zeroed = d.to_vec();
            zeroed[at] = 0;
            zeroed[at + 1] = 0;
            let want = full_l4(&zeroed, l3, l4, prot, v6);
            let want = if udp && want == 0 { 0xffff } else { want };
            prop_assert_eq!(stored, want);
            let a = l3 + match (v6, src) { (true, true) => 8, (true, false) => 24, (false, true) => 12, (false, false) => 16 };
            let n = if v6 { 16 } else { 4 };
            prop_assert_eq!(&d[a..a + n], &addr[..n]);
            let pa = l4 + if src { 0 } else { 2 };
            let got_port = u16::from_be_bytes([d[pa], d[pa + 1]]);
            prop_assert_eq!(got_port, if port == 0 { if src { 40_000 } else if udp { 53 } else { 80 } } else { port });
        }
    }
}
