//! The underlay headers in front of a tunnel header, as nf-core's parse walk found them
//! (the decapsulation stage has no outer parser of its own), and the UDP checksum over
//! them.

use nf_core::checksum;
use nf_core::flow::proto;
use nf_core::{Family, FastL4, Meta};

/// Where the underlay headers of a frame are, and what its UDP header says (fields may be
/// added). The addresses are read from the frame itself ([`Outer::src`], [`Outer::dst`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outer {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the UDP header.
    pub udp: usize,
    /// True for an IPv6 underlay.
    pub v6: bool,
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

    /// The underlay headers of a frame the parse walk accepted as UDP (`meta.l3`, `meta.l4`
    /// and the flow key filled in; the UDP length already checked against the IP payload):
    /// `None` if the UDP header is not in `data`.
    #[inline(always)]
    pub(crate) fn from_parsed(data: &[u8], meta: &Meta) -> Option<Self> {
        Self::at(
            data,
            usize::from(meta.l3),
            usize::from(meta.l4),
            meta.flow.family() == Family::V6,
        )
    }

    /// The underlay headers the parse walk's shortcut read: an IP header of `l3_len` bytes at
    /// `l3`, then UDP.
    #[inline(always)]
    pub(crate) fn from_fast(l3: usize, l3_len: usize, v6: bool, l4: &FastL4) -> Self {
        Self {
            l3,
            udp: l3 + l3_len,
            v6,
            src_port: l4.src_port,
            dst_port: l4.dst_port,
            udp_payload_len: usize::from(l4.udp_len).saturating_sub(8),
            udp_checksum: l4.checksum,
        }
    }

    /// The underlay headers with the IP header at `l3` and the UDP header at `udp`, which
    /// the caller checked.
    #[inline(always)]
    pub(crate) fn at(data: &[u8], l3: usize, udp: usize, v6: bool) -> Option<Self> {
        let &[s0, s1, d0, d1, l0, l1, c0, c1] = data.get(udp..)?.first_chunk::<8>()?;
        Some(Self {
            l3,
            udp,
            v6,
            src_port: u16::from_be_bytes([s0, s1]),
            dst_port: u16::from_be_bytes([d0, d1]),
            udp_payload_len: usize::from(u16::from_be_bytes([l0, l1])).saturating_sub(8),
            udp_checksum: u16::from_be_bytes([c0, c1]),
        })
    }

    /// The source address in `data` (IPv4 in the first 4 bytes).
    #[inline(always)]
    pub fn src(&self, data: &[u8]) -> [u8; 16] {
        self.addr(data, 0)
    }

    /// The destination address in `data` (IPv4 in the first 4 bytes).
    #[inline(always)]
    pub fn dst(&self, data: &[u8]) -> [u8; 16] {
        self.addr(data, 1)
    }

    /// Writes the source and destination addresses in `data` into `src` and `dst` (IPv4
    /// in the first 4 bytes, the rest zero).
    #[inline(always)]
    pub(crate) fn addrs_into(&self, data: &[u8], src: &mut [u8; 16], dst: &mut [u8; 16]) {
        if self.v6 {
            if let Some(a) = data.get(self.l3 + 8..).and_then(|d| d.first_chunk::<32>()) {
                let (s, d) = a.split_at(16);
                src.copy_from_slice(s);
                dst.copy_from_slice(d);
            }
        } else if let Some(&[s0, s1, s2, s3, d0, d1, d2, d3]) =
            data.get(self.l3 + 12..).and_then(|d| d.first_chunk::<8>())
        {
            // Widened as integers (the same bytes on any endianness): one 16-byte store each.
            *src = u128::from(u32::from_le_bytes([s0, s1, s2, s3])).to_le_bytes();
            *dst = u128::from(u32::from_le_bytes([d0, d1, d2, d3])).to_le_bytes();
        }
    }

    /// Address `i` (0: source, 1: destination) of the IP header at `l3`.
    #[inline(always)]
    fn addr(&self, data: &[u8], i: usize) -> [u8; 16] {
        let mut r = [0u8; 16];
        if self.v6 {
            if let Some(a) = data
                .get(self.l3 + 8 + 16 * i..)
                .and_then(|d| d.first_chunk())
            {
                r = *a;
            }
        } else if let (Some(d), Some(a)) = (
            r.first_chunk_mut::<4>(),
            data.get(self.l3 + 12 + 4 * i..)
                .and_then(|d| d.first_chunk::<4>()),
        ) {
            *d = *a;
        }
        r
    }
}

/// True if the UDP checksum of the datagram at `outer.udp` verifies (call only when it is
/// non-zero).
pub(crate) fn udp_checksum_ok(data: &[u8], outer: &Outer) -> bool {
    let len = outer.udp_payload_len + 8;
    let Some(bytes) = data.get(outer.udp..outer.udp + len) else {
        return false;
    };
    let pseudo = pseudo(outer, data, len);
    checksum::fold(
        u32::from(checksum::fold(checksum::sum(0, bytes))) + u32::from(checksum::fold(pseudo)),
    ) == 0xffff
}

/// The pseudo-header partial sum for a UDP datagram of `len` bytes between the addresses of
/// the IP header at `outer.l3` in `data`.
pub(crate) fn pseudo(outer: &Outer, data: &[u8], len: usize) -> u32 {
    let (s, d) = (outer.src(data), outer.dst(data));
    if outer.v6 {
        checksum::pseudo_header_v6(&s, &d, proto::UDP, len as u32)
    } else {
        let s = s.first_chunk::<4>().copied().unwrap_or_default();
        let d = d.first_chunk::<4>().copied().unwrap_or_default();
        checksum::pseudo_header_v4(s, d, proto::UDP, len as u16)
    }
}
