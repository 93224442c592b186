//! TCP headers (RFC 9293).

use super::{EmitError, U16, U32, write_prefix};
use crate::checksum;
use crate::verdict::DropReason;
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned,
};

/// Errors from the TCP view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpError {
    /// Shorter than 20 bytes or than the data offset says.
    Truncated,
    /// Data offset below 5.
    BadDataOffset,
}

impl From<TcpError> for DropReason {
    fn from(e: TcpError) -> Self {
        match e {
            TcpError::Truncated => DropReason::TcpTruncated,
            TcpError::BadDataOffset => DropReason::TcpBadDataOffset,
        }
    }
}

/// TCP flag bits (the low byte of the flags field).
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer is significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

/// The fixed 20-byte TCP header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct TcpHeader {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Sequence number.
    pub seq: U32,
    /// Acknowledgment number.
    pub ack: U32,
    /// Data offset (4 bits, in 32-bit words), reserved bits, and the AE flag.
    pub data_offset: u8,
    /// Flags (see [`tcp_flags`]).
    pub flags: u8,
    /// Receive window.
    pub window: U16,
    /// Checksum over pseudo-header, header and data.
    pub checksum: U16,
    /// Urgent pointer.
    pub urgent: U16,
}

/// Length of the fixed header.
pub const TCP_HEADER_LEN: usize = 20;
/// Longest options field.
pub const TCP_MAX_OPTIONS: usize = 40;

impl TcpHeader {
    /// Header length in bytes (data offset × 4).
    #[inline]
    pub const fn header_len(&self) -> usize {
        ((self.data_offset >> 4) as usize) * 4
    }
}

/// A checked view of a TCP segment.
pub struct TcpPacket<B> {
    hdr: Ref<B, TcpHeader>,
    options: B,
    payload: B,
}

super::view_debug!(TcpPacket);

impl<B: SplitByteSlice> TcpPacket<B> {
    /// Validates the data offset against `bytes` (the IP payload).
    ///
    /// # Errors
    /// The first [`TcpError`] found.
    #[inline]
    pub fn new_checked(bytes: B) -> Result<Self, TcpError> {
        let (hdr, rest) =
            Ref::<B, TcpHeader>::from_prefix(bytes).map_err(|_| TcpError::Truncated)?;
        let hlen = hdr.header_len();
        if hlen < TCP_HEADER_LEN {
            return Err(TcpError::BadDataOffset);
        }
        let (options, payload) = rest
            .split_at(hlen - TCP_HEADER_LEN)
            .map_err(|_| TcpError::Truncated)?;
        Ok(Self {
            hdr,
            options,
            payload,
        })
    }

    /// The fixed header.
    #[inline]
    pub fn header(&self) -> &TcpHeader {
        &self.hdr
    }
    /// The options bytes.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.options
    }
    /// The segment data.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Partial checksum sum of header, options and data (add a pseudo-header sum to it).
    pub fn sum(&self) -> u32 {
        let s = checksum::sum(0, Ref::bytes(&self.hdr));
        let s = checksum::sum(s, &self.options);
        checksum::sum(s, &self.payload)
    }
}

impl<B: SplitByteSliceMut> TcpPacket<B> {
    /// The fixed header, writable.
    #[inline]
    pub fn header_mut(&mut self) -> &mut TcpHeader {
        &mut self.hdr
    }

    /// Computes and stores the checksum given the pseudo-header partial sum
    /// ([`checksum::pseudo_header_v4`] / [`checksum::pseudo_header_v6`]).
    pub fn fill_checksum(&mut self, pseudo: u32) {
        self.hdr.checksum = U16::ZERO;
        let s = self.sum();
        self.hdr.checksum = U16::new(checksum::finish(
            checksum::fold(s) as u32 + checksum::fold(pseudo) as u32,
        ));
    }
}

/// Parsed TCP header fields (options kept verbatim).
///
/// The default has zero ports, sequence and acknowledgment numbers, no flags, a window of
/// 65535 and no options; [`Frame`](super::Frame) computes the checksum.
///
/// ```
/// use nf_core::wire::tcp::{TcpRepr, tcp_flags};
/// let t = TcpRepr { src_port: 40000, dst_port: 443, flags: tcp_flags::SYN, ..TcpRepr::default() };
/// assert_eq!((t.window, t.buffer_len()), (65535, 20));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags byte.
    pub flags: u8,
    /// Receive window.
    pub window: u16,
    /// Checksum as found (emit writes it verbatim; see [`TcpPacket::fill_checksum`]).
    pub checksum: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Options bytes (`options_len` used; a multiple of 4).
    pub options: [u8; TCP_MAX_OPTIONS],
    /// Length of the options.
    pub options_len: u8,
}

impl Default for TcpRepr {
    fn default() -> Self {
        Self {
            src_port: 0,
            dst_port: 0,
            seq: 0,
            ack: 0,
            flags: 0,
            window: 65535,
            checksum: 0,
            urgent: 0,
            options: [0; TCP_MAX_OPTIONS],
            options_len: 0,
        }
    }
}

impl TcpRepr {
    /// Reads a checked segment.
    pub fn parse<B: SplitByteSlice>(p: &TcpPacket<B>) -> Self {
        let h = p.header();
        let mut options = [0u8; TCP_MAX_OPTIONS];
        let n = p.options().len().min(TCP_MAX_OPTIONS);
        if let (Some(d), Some(s)) = (options.get_mut(..n), p.options().get(..n)) {
            d.copy_from_slice(s);
        }
        Self {
            src_port: h.src_port.get(),
            dst_port: h.dst_port.get(),
            seq: h.seq.get(),
            ack: h.ack.get(),
            flags: h.flags,
            window: h.window.get(),
            checksum: h.checksum.get(),
            urgent: h.urgent.get(),
            options,
            options_len: n as u8,
        }
    }

    /// Header length [`TcpRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        TCP_HEADER_LEN + self.options_len as usize
    }

    /// Writes the header (checksum verbatim).
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`]; [`EmitError::FieldOutOfRange`] for options that are
    /// not a multiple of 4 bytes or over 40.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let olen = usize::from(self.options_len);
        if olen % 4 != 0 || olen > TCP_MAX_OPTIONS {
            return Err(EmitError::FieldOutOfRange);
        }
        let hlen = TCP_HEADER_LEN + olen;
        let hdr = TcpHeader {
            src_port: U16::new(self.src_port),
            dst_port: U16::new(self.dst_port),
            seq: U32::new(self.seq),
            ack: U32::new(self.ack),
            data_offset: ((hlen / 4) as u8) << 4,
            flags: self.flags,
            window: U16::new(self.window),
            checksum: U16::new(self.checksum),
            urgent: U16::new(self.urgent),
        };
        let out = buf.get_mut(..hlen).ok_or(EmitError::BufferTooSmall)?;
        write_prefix(&hdr, out)?;
        if let (Some(d), Some(s)) = (out.get_mut(TCP_HEADER_LEN..), self.options.get(..olen)) {
            d.copy_from_slice(s);
        }
        Ok(hlen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let mut r = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            seq: 1,
            ack: 0,
            flags: tcp_flags::SYN,
            window: 65535,
            checksum: 0,
            urgent: 0,
            options: [0; 40],
            options_len: 4,
        };
        r.options[..4].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
        let mut buf = [0u8; 28];
        assert_eq!(r.emit(&mut buf).unwrap(), 24);
        let pseudo = checksum::pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 28);
        TcpPacket::new_checked(&mut buf[..])
            .unwrap()
            .fill_checksum(pseudo);
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(checksum::fold(p.sum() + pseudo), 0xffff);
        assert_eq!(p.payload().len(), 4);
        let back = TcpRepr::parse(&p);
        assert_eq!(
            TcpRepr {
                checksum: 0,
                ..back
            },
            r
        );
        buf[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&buf[..]).unwrap_err(),
            TcpError::BadDataOffset
        );
        buf[12] = 0xf0;
        assert_eq!(
            TcpPacket::new_checked(&buf[..]).unwrap_err(),
            TcpError::Truncated
        );
        assert_eq!(
            TcpPacket::new_checked(&buf[..19]).unwrap_err(),
            TcpError::Truncated
        );
    }
}
