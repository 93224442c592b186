//! The underlay headers in front of a tunnel header: Ethernet (with at most one VLAN tag),
//! IPv4 or IPv6 (no extension headers), UDP. One bounded pass, no allocation.

use crate::TunnelError;
use nf_core::DropReason;
use nf_core::checksum;
use nf_core::flow::proto;
use nf_core::wire::ethertype;
use nf_core::wire::ipv4::Ipv4Packet;
use nf_core::wire::ipv6::Ipv6Packet;
use nf_core::wire::udp::UdpPacket;

/// Where the underlay headers of a frame are, and the addresses they carry (produced by
/// nf-tunnel's parsers; fields may be added).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outer {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the UDP header.
    pub udp: usize,
    /// True for an IPv6 underlay.
    pub v6: bool,
    /// Source address (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// UDP payload length (from the UDP length field).
    pub udp_payload_len: usize,
    /// The UDP checksum field as found.
    pub udp_checksum: u16,
}

impl Outer {
    /// Offset of the tunnel header (the UDP payload).
    #[inline]
    pub const fn tunnel(&self) -> usize {
        self.udp + 8
    }
}

/// Why a frame is not a tunnel candidate, or is a broken one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OuterError {
    /// Not IP/UDP (or an IP fragment): not ours to decapsulate.
    NotUdp,
    /// An IP/UDP frame that is malformed.
    Bad(DropReason),
}

impl From<TunnelError> for OuterError {
    fn from(e: TunnelError) -> Self {
        Self::Bad(e.into())
    }
}

/// Parses Ethernet / IP / UDP. `verify_ipv4` checks the IPv4 header checksum.
#[inline]
pub(crate) fn parse_outer(data: &[u8], verify_ipv4: bool) -> Result<Outer, OuterError> {
    let Some(&[.., e0, e1]) = data.first_chunk::<14>() else {
        return Err(OuterError::NotUdp);
    };
    let mut et = u16::from_be_bytes([e0, e1]);
    let mut l3 = 14;
    if et == ethertype::VLAN {
        let Some(&[_, _, t0, t1]) = data.get(14..).and_then(|d| d.first_chunk::<4>()) else {
            return Err(OuterError::NotUdp);
        };
        et = u16::from_be_bytes([t0, t1]);
        l3 = 18;
    }
    let ip = data.get(l3..).unwrap_or(&[]);
    let (v6, src, dst, udp_bytes, hlen) = match et {
        ethertype::IPV4 => {
            let p = Ipv4Packet::new_checked(ip).map_err(|e| OuterError::Bad(e.into()))?;
            let h = p.header();
            if h.proto != proto::UDP || h.is_fragment() {
                return Err(OuterError::NotUdp);
            }
            if verify_ipv4 && !ipv4_header_ok(ip.get(..h.header_len()).unwrap_or(&[])) {
                return Err(OuterError::Bad(DropReason::Ipv4BadChecksum));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            if let (Some(s4), Some(d4)) = (s.first_chunk_mut::<4>(), d.first_chunk_mut::<4>()) {
                *s4 = h.src;
                *d4 = h.dst;
            }
            let hl = h.header_len();
            (false, s, d, p.into_payload(), hl)
        }
        ethertype::IPV6 => {
            let p = Ipv6Packet::new_checked(ip).map_err(|e| OuterError::Bad(e.into()))?;
            let h = p.header();
            if h.next_header != proto::UDP {
                return Err(OuterError::NotUdp);
            }
            let (s, d) = (h.src, h.dst);
            let plen = p.payload().len();
            (true, s, d, ip.get(40..40 + plen).unwrap_or(&[]), 40)
        }
        _ => return Err(OuterError::NotUdp),
    };
    let u = UdpPacket::new_checked(udp_bytes).map_err(|e| OuterError::Bad(e.into()))?;
    let h = u.header();
    Ok(Outer {
        l3,
        udp: l3 + hlen,
        v6,
        src,
        dst,
        src_port: h.src_port.get(),
        dst_port: h.dst_port.get(),
        udp_payload_len: u.payload().len(),
        udp_checksum: h.checksum.get(),
    })
}

/// [`parse_outer`] for the common shape only: untagged Ethernet, IPv4 without options and
/// not a fragment, UDP; read at fixed offsets. `Some` exactly when `parse_outer` accepts
/// such a frame (with the same result); `None` for every other frame, valid or not.
#[inline(always)]
pub(crate) fn parse_outer_fast(data: &[u8], verify_ipv4: bool) -> Option<Outer> {
    let h: &[u8; 42] = data.first_chunk()?;
    let &[.., e0, e1] = h.first_chunk::<14>()?;
    let ip: &[u8; 20] = h.get(14..)?.first_chunk()?;
    let udp: &[u8; 8] = h.last_chunk()?;
    let [v_ihl, _, t0, t1, _, _, f0, f1, _, protocol, ..] = *ip;
    if [e0, e1] != ethertype::IPV4.to_be_bytes()
        || v_ihl != 0x45
        || protocol != proto::UDP
        || u16::from_be_bytes([f0, f1]) & 0x3fff != 0
    {
        return None;
    }
    let be16 = |at: usize| {
        udp.get(at..at + 2)
            .and_then(|b| b.first_chunk::<2>())
            .map_or(0, |b| u16::from_be_bytes(*b))
    };
    let total = usize::from(u16::from_be_bytes([t0, t1]));
    let udp_len = usize::from(be16(4));
    // The UDP datagram fits the IP payload, which fits the frame.
    if total > data.len() - 14 || udp_len < 8 || udp_len + 20 > total {
        return None;
    }
    if verify_ipv4 && !checksum::verify_ipv4_header(ip) {
        return None;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    if let (Some(s), Some(d), Some(s4), Some(d4)) = (
        src.first_chunk_mut::<4>(),
        dst.first_chunk_mut::<4>(),
        ip.get(12..16).and_then(|b| b.first_chunk::<4>()),
        ip.last_chunk::<4>(),
    ) {
        *s = *s4;
        *d = *d4;
    }
    Some(Outer {
        l3: 14,
        udp: 34,
        v6: false,
        src,
        dst,
        src_port: be16(0),
        dst_port: be16(2),
        udp_payload_len: udp_len - 8,
        udp_checksum: be16(6),
    })
}

/// True if the UDP checksum of the datagram at `outer.udp` verifies (call only when it is
/// non-zero).
pub(crate) fn udp_checksum_ok(data: &[u8], outer: &Outer) -> bool {
    let len = outer.udp_payload_len + 8;
    let Some(bytes) = data.get(outer.udp..outer.udp + len) else {
        return false;
    };
    let pseudo = pseudo(outer, len);
    checksum::fold(
        u32::from(checksum::fold(checksum::sum(0, bytes))) + u32::from(checksum::fold(pseudo)),
    ) == 0xffff
}

/// The pseudo-header partial sum for a UDP datagram of `len` bytes between the outer
/// addresses.
pub(crate) fn pseudo(outer: &Outer, len: usize) -> u32 {
    if outer.v6 {
        checksum::pseudo_header_v6(&outer.src, &outer.dst, proto::UDP, len as u32)
    } else {
        let s = outer.src.first_chunk::<4>().copied().unwrap_or_default();
        let d = outer.dst.first_chunk::<4>().copied().unwrap_or_default();
        checksum::pseudo_header_v4(s, d, proto::UDP, len as u16)
    }
}

/// True if an IPv4 header (a multiple of 4 bytes, checksum included) sums to 0xFFFF: 32-bit
/// words added into 64 bits, folded once (the header is at most 60 bytes, so no overflow).
#[inline]
fn ipv4_header_ok(h: &[u8]) -> bool {
    let mut s = 0u64;
    for w in h.chunks_exact(4) {
        if let Ok(b) = <[u8; 4]>::try_from(w) {
            s += u64::from(u32::from_be_bytes(b));
        }
    }
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s == 0xffff && !h.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_ipv4_header_check_agrees_with_the_reference() {
        let mut h = [
            0x45u8, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0, 1, 0xc0,
            0xa8, 0, 0xc7,
        ];
        assert!(ipv4_header_ok(&h));
        for i in 0..h.len() {
            for bit in 0..8 {
                h[i] ^= 1 << bit;
                assert_eq!(
                    ipv4_header_ok(&h),
                    checksum::verify(&h),
                    "byte {i} bit {bit}"
                );
                h[i] ^= 1 << bit;
            }
        }
        // All-ones words sum with carries.
        let ones = [0xffu8; 20];
        assert_eq!(ipv4_header_ok(&ones), checksum::verify(&ones));
    }
}
