//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) headers: the common 8-byte header.

use super::{EmitError, U16, write_prefix};
use crate::checksum;
use crate::verdict::DropReason;
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned,
};

/// Errors from the ICMP views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IcmpError {
    /// Shorter than 8 bytes.
    Truncated,
}

impl From<IcmpError> for DropReason {
    fn from(e: IcmpError) -> Self {
        match e {
            IcmpError::Truncated => DropReason::IcmpTruncated,
        }
    }
}

/// The 8-byte header shared by ICMPv4 and ICMPv6.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct IcmpHeader {
    /// Message type.
    pub ty: u8,
    /// Message code.
    pub code: u8,
    /// Checksum (ICMPv6: including the pseudo-header).
    pub checksum: U16,
    /// Identifier for query messages (rest-of-header otherwise).
    pub ident: U16,
    /// Sequence number for query messages (rest-of-header otherwise).
    pub seq: U16,
}

/// Length of the header.
pub const ICMP_HEADER_LEN: usize = 8;

/// How the parse stage treats an ICMP message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    /// A query or its reply; the identifier names the flow.
    Query,
    /// An error quoting another packet's headers.
    Error,
    /// Anything else (router/neighbour discovery, ...).
    Other,
}

/// Classifies an ICMPv4 type.
#[inline]
pub const fn classify_v4(ty: u8) -> IcmpKind {
    match ty {
        0 | 8 | 13 | 14 | 15 | 16 | 17 | 18 => IcmpKind::Query,
        3 | 4 | 5 | 11 | 12 => IcmpKind::Error,
        _ => IcmpKind::Other,
    }
}

/// Classifies an ICMPv6 type.
#[inline]
pub const fn classify_v6(ty: u8) -> IcmpKind {
    match ty {
        128 | 129 => IcmpKind::Query,
        1..=4 => IcmpKind::Error,
        _ => IcmpKind::Other,
    }
}

/// A checked view of an ICMP / ICMPv6 message.
pub struct IcmpPacket<B> {
    hdr: Ref<B, IcmpHeader>,
    payload: B,
}

super::view_debug!(IcmpPacket);

impl<B: SplitByteSlice> IcmpPacket<B> {
    /// Validates that `bytes` holds the 8-byte header.
    ///
    /// # Errors
    /// [`IcmpError::Truncated`].
    #[inline]
    pub fn new_checked(bytes: B) -> Result<Self, IcmpError> {
        let (hdr, payload) = Ref::from_prefix(bytes).map_err(|_| IcmpError::Truncated)?;
        Ok(Self { hdr, payload })
    }
    /// The header.
    #[inline]
    pub fn header(&self) -> &IcmpHeader {
        &self.hdr
    }
    /// The message body after the 8-byte header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// True if the checksum verifies (pass 0 for ICMPv4, the pseudo-header sum for ICMPv6).
    pub fn verify_checksum(&self, pseudo: u32) -> bool {
        let s = checksum::sum(0, Ref::bytes(&self.hdr));
        let s = checksum::sum(s, &self.payload);
        checksum::fold(u32::from(checksum::fold(s)) + u32::from(checksum::fold(pseudo))) == 0xffff
    }
}

impl<B: SplitByteSliceMut> IcmpPacket<B> {
    /// The header, writable.
    #[inline]
    pub fn header_mut(&mut self) -> &mut IcmpHeader {
        &mut self.hdr
    }
    /// Computes and stores the checksum (0 pseudo-header sum for ICMPv4).
    pub fn fill_checksum(&mut self, pseudo: u32) {
        self.hdr.checksum = U16::ZERO;
        let s = checksum::sum(0, Ref::bytes(&self.hdr));
        let s = checksum::sum(s, &self.payload);
        self.hdr.checksum = U16::new(checksum::finish(
            u32::from(checksum::fold(s)) + u32::from(checksum::fold(pseudo)),
        ));
    }
}

/// Parsed ICMP header fields.
///
/// The default is all zero (an ICMPv4 echo reply with identifier and sequence 0); set the
/// type and code. [`Frame`](super::Frame) computes the checksum.
///
/// ```
/// use nf_core::wire::icmp::IcmpRepr;
/// let echo = IcmpRepr { ty: 8, ident: 0x1234, seq: 1, ..IcmpRepr::default() };
/// assert_eq!(echo.buffer_len(), 8);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcmpRepr {
    /// Message type.
    pub ty: u8,
    /// Message code.
    pub code: u8,
    /// Checksum as found (emit writes it verbatim).
    pub checksum: u16,
    /// Identifier / first half of rest-of-header.
    pub ident: u16,
    /// Sequence / second half of rest-of-header.
    pub seq: u16,
}

impl IcmpRepr {
    /// Reads a checked message.
    pub fn parse<B: SplitByteSlice>(p: &IcmpPacket<B>) -> Self {
        let h = p.header();
        Self {
            ty: h.ty,
            code: h.code,
            checksum: h.checksum.get(),
            ident: h.ident.get(),
            seq: h.seq.get(),
        }
    }
    /// Bytes [`IcmpRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        ICMP_HEADER_LEN
    }
    /// Writes the header.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        write_prefix(
            &IcmpHeader {
                ty: self.ty,
                code: self.code,
                checksum: U16::new(self.checksum),
                ident: U16::new(self.ident),
                seq: U16::new(self.seq),
            },
            buf,
        )?;
        Ok(ICMP_HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_round_trip_and_classes() {
        let r = IcmpRepr {
            ty: 8,
            code: 0,
            checksum: 0,
            ident: 0x1234,
            seq: 1,
        };
        let mut buf = [0u8; 12];
        r.emit(&mut buf).unwrap();
        IcmpPacket::new_checked(&mut buf[..])
            .unwrap()
            .fill_checksum(0);
        let p = IcmpPacket::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(0));
        assert_eq!(
            IcmpRepr {
                checksum: 0,
                ..IcmpRepr::parse(&p)
            },
            r
        );
        assert_eq!(
            IcmpPacket::new_checked(&buf[..7]).unwrap_err(),
            IcmpError::Truncated
        );
        assert_eq!(classify_v4(8), IcmpKind::Query);
        assert_eq!(classify_v4(3), IcmpKind::Error);
        assert_eq!(classify_v6(135), IcmpKind::Other);
        assert_eq!(classify_v6(129), IcmpKind::Query);
    }
}
