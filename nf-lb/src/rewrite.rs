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
