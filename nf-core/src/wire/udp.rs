//! UDP headers (RFC 768).

use super::{EmitError, U16, write_prefix};
use crate::checksum;
use crate::verdict::DropReason;
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned,
};

/// Errors from the UDP view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UdpError {
    /// Shorter than 8 bytes.
    Truncated,
    /// Length field below 8 or beyond the buffer.
    BadLength,
}

impl From<UdpError> for DropReason {
    fn from(e: UdpError) -> Self {
        match e {
            UdpError::Truncated => DropReason::UdpTruncated,
            UdpError::BadLength => DropReason::UdpBadLength,
        }
    }
}

/// The 8-byte UDP header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct UdpHeader {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Length of header and data.
    pub len: U16,
    /// Checksum (0: none, IPv4 only).
    pub checksum: U16,
}

/// Length of the header.
pub const UDP_HEADER_LEN: usize = 8;

/// A checked view of a UDP datagram, payload cut to the length field.
pub struct UdpPacket<B> {
    hdr: Ref<B, UdpHeader>,
    payload: B,
}

super::view_debug!(UdpPacket);

impl<B: SplitByteSlice> UdpPacket<B> {
    /// Validates the length field against `bytes` (the IP payload).
    ///
    /// # Errors
    /// The first [`UdpError`] found.
    #[inline]
    pub fn new_checked(bytes: B) -> Result<Self, UdpError> {
        let (hdr, rest) =
            Ref::<B, UdpHeader>::from_prefix(bytes).map_err(|_| UdpError::Truncated)?;
        let plen = usize::from(hdr.len.get())
            .checked_sub(UDP_HEADER_LEN)
            .ok_or(UdpError::BadLength)?;
        let (payload, _) = rest.split_at(plen).map_err(|_| UdpError::BadLength)?;
        Ok(Self { hdr, payload })
    }

    /// The header.
    #[inline]
    pub fn header(&self) -> &UdpHeader {
        &self.hdr
    }
    /// The datagram data.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// Consumes the view, returning the data.
    #[inline]
    pub fn into_payload(self) -> B {
        self.payload
    }

    /// True if the checksum verifies against the pseudo-header sum, or is absent (0).
    pub fn verify_checksum(&self, pseudo: u32) -> bool {
        if self.hdr.checksum.get() == 0 {
            return true;
        }
        let s = checksum::sum(0, Ref::bytes(&self.hdr));
        let s = checksum::sum(s, &self.payload);
        checksum::fold(u32::from(checksum::fold(s)) + u32::from(checksum::fold(pseudo))) == 0xffff
    }
}

impl<B: SplitByteSliceMut> UdpPacket<B> {
    /// The header, writable.
    #[inline]
    pub fn header_mut(&mut self) -> &mut UdpHeader {
        &mut self.hdr
    }
    /// The data, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }

    /// Computes and stores the checksum (a computed 0 is sent as 0xFFFF).
    pub fn fill_checksum(&mut self, pseudo: u32) {
        self.hdr.checksum = U16::ZERO;
        let s = checksum::sum(0, Ref::bytes(&self.hdr));
        let s = checksum::sum(s, &self.payload);
        self.hdr.checksum = U16::new(checksum::udp_finish(
            u32::from(checksum::fold(s)) + u32::from(checksum::fold(pseudo)),
        ));
    }
}

/// Parsed UDP header fields.
///
/// The default is all zero; [`Frame`](super::Frame) computes the length and the checksum.
///
/// ```
/// use nf_core::wire::udp::UdpRepr;
/// let u = UdpRepr { src_port: 40000, dst_port: 53, ..UdpRepr::default() };
/// assert_eq!(u.buffer_len(), 8);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Length of the data (the length field minus 8).
    pub payload_len: u16,
    /// Checksum as found (emit writes it verbatim; see [`UdpPacket::fill_checksum`]).
    pub checksum: u16,
}

impl UdpRepr {
    /// Reads a checked datagram.
    pub fn parse<B: SplitByteSlice>(p: &UdpPacket<B>) -> Self {
        let h = p.header();
        Self {
            src_port: h.src_port.get(),
            dst_port: h.dst_port.get(),
            payload_len: p.payload().len() as u16,
            checksum: h.checksum.get(),
        }
    }

    /// Bytes [`UdpRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        UDP_HEADER_LEN
    }

    /// Writes the header.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`]; [`EmitError::FieldOutOfRange`] if the length
    /// exceeds 65535.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let len = self
            .payload_len
            .checked_add(UDP_HEADER_LEN as u16)
            .ok_or(EmitError::FieldOutOfRange)?;
        let hdr = UdpHeader {
            src_port: U16::new(self.src_port),
            dst_port: U16::new(self.dst_port),
            len: U16::new(len),
            checksum: U16::new(self.checksum),
        };
        write_prefix(&hdr, buf)?;
        Ok(UDP_HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_checksum_and_errors() {
        let r = UdpRepr {
            src_port: 5353,
            dst_port: 53,
            payload_len: 3,
            checksum: 0,
        };
        let mut buf = [0u8; 12];
        r.emit(&mut buf).unwrap();
        buf[8..11].copy_from_slice(b"abc");
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(UdpRepr::parse(&p), r);
        assert_eq!(p.payload(), b"abc");
        let pseudo = checksum::pseudo_header_v4([1, 2, 3, 4], [5, 6, 7, 8], 17, 11);
        assert!(p.verify_checksum(pseudo), "zero means no checksum");
        UdpPacket::new_checked(&mut buf[..])
            .unwrap()
            .fill_checksum(pseudo);
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_ne!(p.header().checksum.get(), 0);
        assert!(p.verify_checksum(pseudo));
        assert!(!p.verify_checksum(pseudo + 1));
        buf[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&buf[..]).unwrap_err(),
            UdpError::BadLength
        );
        buf[5] = 13;
        assert_eq!(
            UdpPacket::new_checked(&buf[..]).unwrap_err(),
            UdpError::BadLength
        );
        assert_eq!(
            UdpPacket::new_checked(&buf[..7]).unwrap_err(),
            UdpError::Truncated
        );
        assert_eq!(
            UdpRepr {
                payload_len: 65530,
                ..r
            }
            .emit(&mut buf),
            Err(EmitError::FieldOutOfRange)
        );
    }
}
