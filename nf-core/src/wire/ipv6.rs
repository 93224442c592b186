//! IPv6 headers (RFC 8200) and a bounded walk of extension headers.

use super::{EmitError, U16, U32, write_prefix};
use crate::verdict::DropReason;
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned,
};

/// Errors from the IPv6 view and the extension-header walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ipv6Error {
    /// Shorter than the 40-byte header.
    Truncated,
    /// Version field is not 6.
    BadVersion,
    /// Payload length beyond the buffer, or zero with a Hop-by-Hop header (jumbogram,
    /// unsupported).
    BadPayloadLength,
    /// An extension header runs past the payload.
    ExtTruncated,
    /// More extension headers than [`MAX_EXT_HEADERS`].
    TooManyExt,
    /// Hop-by-Hop Options header not directly after the IPv6 header.
    HopByHopNotFirst,
    /// First fragment without the whole header chain (RFC 7112), or a fragment header that
    /// is not 8 bytes.
    BadFragment,
}

impl From<Ipv6Error> for DropReason {
    fn from(e: Ipv6Error) -> Self {
        match e {
            Ipv6Error::Truncated => DropReason::Ipv6Truncated,
            Ipv6Error::BadVersion => DropReason::Ipv6BadVersion,
            Ipv6Error::BadPayloadLength => DropReason::Ipv6BadPayloadLength,
            Ipv6Error::ExtTruncated => DropReason::Ipv6ExtTruncated,
            Ipv6Error::TooManyExt => DropReason::Ipv6TooManyExt,
            Ipv6Error::HopByHopNotFirst => DropReason::Ipv6HopByHopNotFirst,
            Ipv6Error::BadFragment => DropReason::Ipv6BadFragment,
        }
    }
}

/// Next-header values of the extension headers the walk understands.
pub mod next_header {
    /// Hop-by-Hop Options.
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing.
    pub const ROUTING: u8 = 43;
    /// Fragment.
    pub const FRAGMENT: u8 = 44;
    /// Encapsulating Security Payload (opaque: the walk stops here).
    pub const ESP: u8 = 50;
    /// Authentication Header.
    pub const AUTH: u8 = 51;
    /// No Next Header.
    pub const NO_NEXT: u8 = 59;
    /// Destination Options.
    pub const DEST_OPTS: u8 = 60;
}

/// The walk gives up after this many extension headers (RFC 8504 lets a node limit them;
/// real traffic rarely carries more than three).
pub const MAX_EXT_HEADERS: usize = 8;

/// The fixed 40-byte IPv6 header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ipv6Header {
    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub vtcfl: U32,
    /// Length of everything after this header.
    pub payload_len: U16,
    /// Protocol or extension header that follows.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
}

/// Length of the fixed header.
pub const IPV6_HEADER_LEN: usize = 40;

impl Ipv6Header {
    /// The version field.
    #[inline]
    pub fn version(&self) -> u8 {
        (self.vtcfl.get() >> 28) as u8
    }
    /// The traffic class.
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.vtcfl.get() >> 20) as u8
    }
    /// The 20-bit flow label.
    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.vtcfl.get() & 0x000f_ffff
    }
}

/// A checked view of an IPv6 packet, payload cut to the payload length.
pub struct Ipv6Packet<B> {
    hdr: Ref<B, Ipv6Header>,
    payload: B,
}

super::view_debug!(Ipv6Packet);

impl<B: SplitByteSlice> Ipv6Packet<B> {
    /// Validates version and payload length against `bytes`.
    ///
    /// # Errors
    /// The first [`Ipv6Error`] found.
    #[inline]
    pub fn new_checked(bytes: B) -> Result<Self, Ipv6Error> {
        let (hdr, rest) =
            Ref::<B, Ipv6Header>::from_prefix(bytes).map_err(|_| Ipv6Error::Truncated)?;
        if hdr.version() != 6 {
            return Err(Ipv6Error::BadVersion);
        }
        let plen = usize::from(hdr.payload_len.get());
        if plen == 0 && hdr.next_header == next_header::HOP_BY_HOP {
            return Err(Ipv6Error::BadPayloadLength);
        }
        let (payload, _padding) = rest
            .split_at(plen)
            .map_err(|_| Ipv6Error::BadPayloadLength)?;
        Ok(Self { hdr, payload })
    }

    /// The fixed header.
    #[inline]
    pub fn header(&self) -> &Ipv6Header {
        &self.hdr
    }

    /// Everything after the fixed header, cut to the payload length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Walks the extension headers (see [`walk_extensions`]).
    ///
    /// # Errors
    /// As [`walk_extensions`].
    #[inline]
    pub fn extensions(&self) -> Result<ExtChain, Ipv6Error> {
        walk_extensions(self.hdr.next_header, &self.payload)
    }
}

impl<B: SplitByteSliceMut> Ipv6Packet<B> {
    /// The fixed header, writable.
    #[inline]
    pub fn header_mut(&mut self) -> &mut Ipv6Header {
        &mut self.hdr
    }
    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
}

/// Fragment fields from a Fragment extension header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentInfo {
    /// Offset in 8-byte units.
    pub offset: u16,
    /// More Fragments flag.
    pub more: bool,
    /// Identification.
    pub ident: u32,
}

/// Result of walking an extension-header chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtChain {
    /// The upper-layer protocol (TCP, UDP, ICMPv6, ESP, No Next Header, ...).
    pub upper: u8,
    /// Offset of the upper-layer header from the start of the IPv6 payload.
    pub upper_offset: usize,
    /// Extension headers walked.
    pub count: u8,
    /// Present if a Fragment header was found (and it is not an atomic fragment).
    pub fragment: Option<FragmentInfo>,
}

/// Walks the extension headers that start the IPv6 payload, at most [`MAX_EXT_HEADERS`],
/// stopping at the first upper-layer protocol. A later (non-first) fragment stops the walk
/// at the Fragment header: what follows is fragment data, not headers.
///
/// # Errors
/// [`Ipv6Error::ExtTruncated`], [`Ipv6Error::TooManyExt`], [`Ipv6Error::HopByHopNotFirst`].
pub fn walk_extensions(first: u8, payload: &[u8]) -> Result<ExtChain, Ipv6Error> {
    let mut nh = first;
    let mut off = 0usize;
    let mut count = 0u8;
    let mut fragment = None;
    loop {
        let len = match nh {
            next_header::HOP_BY_HOP | next_header::ROUTING | next_header::DEST_OPTS => {
                if nh == next_header::HOP_BY_HOP && count != 0 {
                    return Err(Ipv6Error::HopByHopNotFirst);
                }
                (usize::from(*payload.get(off + 1).ok_or(Ipv6Error::ExtTruncated)?) + 1) * 8
            }
            next_header::AUTH => {
                (usize::from(*payload.get(off + 1).ok_or(Ipv6Error::ExtTruncated)?) + 2) * 4
            }
            next_header::FRAGMENT => 8,
            _ => {
                return Ok(ExtChain {
                    upper: nh,
                    upper_offset: off,
                    count,
                    fragment,
                });
            }
        };
        if usize::from(count) >= MAX_EXT_HEADERS {
            return Err(Ipv6Error::TooManyExt);
        }
        let hdr = payload.get(off..off + len).ok_or(Ipv6Error::ExtTruncated)?;
        let next = *hdr.first().ok_or(Ipv6Error::ExtTruncated)?;
        count += 1;
        if nh == next_header::FRAGMENT
            && let [_, _, a, b, i0, i1, i2, i3] = *hdr
        {
            let fo = u16::from_be_bytes([a, b]);
            let info = FragmentInfo {
                offset: fo >> 3,
                more: fo & 1 != 0,
                ident: u32::from_be_bytes([i0, i1, i2, i3]),
            };
            if info.offset != 0 || info.more {
                fragment = Some(info);
            }
            if info.offset != 0 {
                return Ok(ExtChain {
                    upper: next,
                    upper_offset: off + len,
                    count,
                    fragment,
                });
            }
        }
        nh = next;
        off += len;
    }
}

/// Parsed IPv6 header fields.
///
/// The default has hop limit 64, traffic class and flow label 0, next header
/// [`NO_NEXT`](next_header::NO_NEXT), zero addresses and length;
/// [`Frame`](super::Frame) computes the next header and the payload length.
///
/// ```
/// use nf_core::wire::ipv6::Ipv6Repr;
/// let ip = Ipv6Repr { src: [0x20; 16], dst: [0xfe; 16], ..Ipv6Repr::default() };
/// assert_eq!(ip.hop_limit, 64);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Repr {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Next header.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
    /// Payload length.
    pub payload_len: u16,
}

impl Default for Ipv6Repr {
    fn default() -> Self {
        Self {
            src: [0; 16],
            dst: [0; 16],
            next_header: next_header::NO_NEXT,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
            payload_len: 0,
        }
    }
}

impl Ipv6Repr {
    /// Reads a checked packet.
    pub fn parse<B: SplitByteSlice>(p: &Ipv6Packet<B>) -> Self {
        let h = p.header();
        Self {
            src: h.src,
            dst: h.dst,
            next_header: h.next_header,
            hop_limit: h.hop_limit,
            traffic_class: h.traffic_class(),
            flow_label: h.flow_label(),
            payload_len: h.payload_len.get(),
        }
    }

    /// Bytes [`Ipv6Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        IPV6_HEADER_LEN
    }

    /// Writes the fixed header.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`]; [`EmitError::FieldOutOfRange`] for a flow label
    /// above 20 bits.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        if self.flow_label > 0x000f_ffff {
            return Err(EmitError::FieldOutOfRange);
        }
        let hdr = Ipv6Header {
            vtcfl: U32::new((6 << 28) | (u32::from(self.traffic_class) << 20) | self.flow_label),
            payload_len: U16::new(self.payload_len),
            next_header: self.next_header,
            hop_limit: self.hop_limit,
            src: self.src,
            dst: self.dst,
        };
        write_prefix(&hdr, buf)?;
        Ok(IPV6_HEADER_LEN)
    }
}

/// An extension header to emit: Hop-by-Hop, Routing or Destination Options filled with
/// PadN, or a Fragment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6ExtRepr {
    /// Hop-by-Hop (0), Routing (43) or Destination Options (60) of `len8 + 1` 8-byte units,
    /// its data a single PadN option (Routing: type 0 fields zero, segments left 0).
    Options {
        /// Which header (0, 43 or 60).
        kind: u8,
        /// Next header after this one.
        next_header: u8,
        /// Hdr Ext Len: length in 8-byte units, not counting the first 8 bytes.
        len8: u8,
    },
    /// A Fragment header.
    Fragment {
        /// Next header after this one.
        next_header: u8,
        /// Fragment fields.
        info: FragmentInfo,
    },
}

impl Ipv6ExtRepr {
    /// Bytes [`Ipv6ExtRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        match self {
            Self::Options { len8, .. } => (*len8 as usize + 1) * 8,
            Self::Fragment { .. } => 8,
        }
    }

    /// Writes the header.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`]; [`EmitError::FieldOutOfRange`] for an unknown kind
    /// or a fragment offset above 13 bits.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let n = self.buffer_len();
        let out = buf.get_mut(..n).ok_or(EmitError::BufferTooSmall)?;
        out.fill(0);
        match *self {
            Self::Options {
                kind,
                next_header,
                len8,
            } => {
                if !matches!(
                    kind,
                    next_header::HOP_BY_HOP | next_header::ROUTING | next_header::DEST_OPTS
                ) {
                    return Err(EmitError::FieldOutOfRange);
                }
                if let [nh, l, a, b, ..] = out {
                    *nh = next_header;
                    *l = len8;
                    if kind != next_header::ROUTING {
                        // One PadN option covering the remaining n - 2 bytes.
                        *a = 1;
                        *b = (n - 4) as u8;
                    }
                }
            }
            Self::Fragment { next_header, info } => {
                if info.offset > 0x1fff {
                    return Err(EmitError::FieldOutOfRange);
                }
                let fo = (info.offset << 3) | u16::from(info.more);
                let mut h = [0u8; 8];
                h[0] = next_header;
                h[2..4].copy_from_slice(&fo.to_be_bytes());
                h[4..8].copy_from_slice(&info.ident.to_be_bytes());
                out.copy_from_slice(&h);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_header_round_trip() {
        let r = Ipv6Repr {
            src: [0x20; 16],
            dst: [0xfe; 16],
            next_header: 17,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
            payload_len: 8,
        };
        let mut buf = [0u8; 48];
        assert_eq!(r.emit(&mut buf).unwrap(), 40);
        assert_eq!(&buf[..4], &[0x6b, 0x81, 0x23, 0x45]);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Ipv6Repr::parse(&p), r);
        assert_eq!(p.payload().len(), 8);
        assert_eq!(
            Ipv6Packet::new_checked(&buf[..47]).unwrap_err(),
            Ipv6Error::BadPayloadLength
        );
        assert_eq!(
            Ipv6Packet::new_checked(&buf[..39]).unwrap_err(),
            Ipv6Error::Truncated
        );
        assert_eq!(
            Ipv6Repr {
                flow_label: 1 << 20,
                ..r
            }
            .emit(&mut buf),
            Err(EmitError::FieldOutOfRange)
        );
    }

    #[test]
    fn extension_walk() {
        // HBH(8) -> DestOpts(16) -> Fragment(first, M=1) -> UDP
        let mut p = [0u8; 64];
        let mut o = Ipv6ExtRepr::Options {
            kind: next_header::HOP_BY_HOP,
            next_header: next_header::DEST_OPTS,
            len8: 0,
        }
        .emit(&mut p)
        .unwrap();
        o += Ipv6ExtRepr::Options {
            kind: next_header::DEST_OPTS,
            next_header: next_header::FRAGMENT,
            len8: 1,
        }
        .emit(&mut p[o..])
        .unwrap();
        let frag = FragmentInfo {
            offset: 0,
            more: true,
            ident: 7,
        };
        o += Ipv6ExtRepr::Fragment {
            next_header: 17,
            info: frag,
        }
        .emit(&mut p[o..])
        .unwrap();
        let c = walk_extensions(next_header::HOP_BY_HOP, &p).unwrap();
        assert_eq!(
            c,
            ExtChain {
                upper: 17,
                upper_offset: o,
                count: 3,
                fragment: Some(frag)
            }
        );

        // Later fragment stops at the fragment header.
        let mut q = [0u8; 16];
        Ipv6ExtRepr::Fragment {
            next_header: 6,
            info: FragmentInfo {
                offset: 100,
                more: false,
                ident: 1,
            },
        }
        .emit(&mut q)
        .unwrap();
        let c = walk_extensions(next_header::FRAGMENT, &q).unwrap();
        assert_eq!(
            (c.upper, c.upper_offset, c.fragment.unwrap().offset),
            (6, 8, 100)
        );

        // Atomic fragment: no fragment info.
        Ipv6ExtRepr::Fragment {
            next_header: 6,
            info: FragmentInfo {
                offset: 0,
                more: false,
                ident: 1,
            },
        }
        .emit(&mut q)
        .unwrap();
        assert_eq!(
            walk_extensions(next_header::FRAGMENT, &q).unwrap().fragment,
            None
        );

        // HBH not first, truncation, too many.
        assert_eq!(
            walk_extensions(
                next_header::DEST_OPTS,
                &[0, 0, 1, 4, 0, 0, 0, 0, 6, 0, 1, 4, 0, 0, 0, 0]
            ),
            Err(Ipv6Error::HopByHopNotFirst)
        );
        assert_eq!(
            walk_extensions(next_header::DEST_OPTS, &[6, 1, 0, 0, 0, 0, 0, 0]),
            Err(Ipv6Error::ExtTruncated)
        );
        assert_eq!(
            walk_extensions(next_header::ROUTING, &[]),
            Err(Ipv6Error::ExtTruncated)
        );
        let many = [60u8, 0, 1, 4, 0, 0, 0, 0].repeat(MAX_EXT_HEADERS + 1);
        assert_eq!(
            walk_extensions(next_header::DEST_OPTS, &many),
            Err(Ipv6Error::TooManyExt)
        );
        // AH length is in 4-byte units plus 2.
        assert_eq!(
            walk_extensions(next_header::AUTH, &[17, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .unwrap()
                .upper_offset,
            12
        );
    }
}
