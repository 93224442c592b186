//! IPv4 headers (RFC 791) with options and fragment fields.

use super::{EmitError, U16, write_prefix};
use crate::checksum;
use crate::verdict::DropReason;
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned,
};

/// Errors from the IPv4 view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ipv4Error {
    /// Shorter than 20 bytes or than the IHL says.
    Truncated,
    /// Version field is not 4.
    BadVersion,
    /// IHL below 5.
    BadIhl,
    /// Total length below the header length or beyond the buffer.
    BadTotalLength,
    /// Header checksum does not verify.
    BadChecksum,
    /// Options do not fit their declared lengths.
    BadOptions,
}

impl From<Ipv4Error> for DropReason {
    fn from(e: Ipv4Error) -> Self {
        match e {
            Ipv4Error::Truncated => DropReason::Ipv4Truncated,
            Ipv4Error::BadVersion => DropReason::Ipv4BadVersion,
            Ipv4Error::BadIhl => DropReason::Ipv4BadIhl,
            Ipv4Error::BadTotalLength => DropReason::Ipv4BadTotalLength,
            Ipv4Error::BadChecksum => DropReason::Ipv4BadChecksum,
            Ipv4Error::BadOptions => DropReason::Ipv4BadOptions,
        }
    }
}

/// The fixed 20-byte IPv4 header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ipv4Header {
    /// Version (4 bits) and IHL (4 bits, in 32-bit words).
    pub version_ihl: u8,
    /// DSCP (6 bits) and ECN (2 bits).
    pub dscp_ecn: u8,
    /// Length of header and payload in bytes.
    pub total_len: U16,
    /// Identification.
    pub ident: U16,
    /// Flags (reserved, DF, MF) and fragment offset in 8-byte units.
    pub flags_frag: U16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub proto: u8,
    /// Header checksum.
    pub checksum: U16,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

/// Length of the fixed header.
pub const IPV4_HEADER_LEN: usize = 20;
/// Longest options field.
pub const IPV4_MAX_OPTIONS: usize = 40;

const DF: u16 = 0x4000;
const MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

impl Ipv4Header {
    /// The version field.
    #[inline]
    pub const fn version(&self) -> u8 {
        self.version_ihl >> 4
    }
    /// Header length in bytes (IHL × 4).
    #[inline]
    pub const fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }
    /// Don't Fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flags_frag.get() & DF != 0
    }
    /// More Fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.flags_frag.get() & MF != 0
    }
    /// Fragment offset in 8-byte units.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        self.flags_frag.get() & OFFSET_MASK
    }
    /// True for any fragment (MF set or a non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_frag.get() & (MF | OFFSET_MASK) != 0
    }
}

/// A checked view of an IPv4 packet: header, options, and payload cut to the total length
/// (so Ethernet padding is excluded).
pub struct Ipv4Packet<B> {
    hdr: Ref<B, Ipv4Header>,
    options: B,
    payload: B,
}

super::view_debug!(Ipv4Packet);

impl<B: SplitByteSlice> Ipv4Packet<B> {
    /// Validates version, IHL and total length against `bytes` (extra trailing bytes,
    /// such as Ethernet padding, are allowed and excluded from the payload). The header
    /// checksum is not verified here; see [`Ipv4Packet::verify_checksum`].
    ///
    /// # Errors
    /// The first [`Ipv4Error`] found.
    #[inline]
    pub fn new_checked(bytes: B) -> Result<Self, Ipv4Error> {
        let (hdr, rest) =
            Ref::<B, Ipv4Header>::from_prefix(bytes).map_err(|_| Ipv4Error::Truncated)?;
        if hdr.version() != 4 {
            return Err(Ipv4Error::BadVersion);
        }
        let hlen = hdr.header_len();
        if hlen < IPV4_HEADER_LEN {
            return Err(Ipv4Error::BadIhl);
        }
        let (options, rest) = rest
            .split_at(hlen - IPV4_HEADER_LEN)
            .map_err(|_| Ipv4Error::Truncated)?;
        let total = usize::from(hdr.total_len.get());
        let plen = total.checked_sub(hlen).ok_or(Ipv4Error::BadTotalLength)?;
        let (payload, _padding) = rest.split_at(plen).map_err(|_| Ipv4Error::BadTotalLength)?;
        Ok(Self {
            hdr,
            options,
            payload,
        })
    }

    /// The fixed header.
    #[inline]
    pub fn header(&self) -> &Ipv4Header {
        &self.hdr
    }

    /// The options bytes (empty when IHL is 5).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.options
    }

    /// The payload, cut to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Consumes the view, returning the payload.
    #[inline]
    pub fn into_payload(self) -> B {
        self.payload
    }

    /// True if the header checksum (over header and options) verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let s = checksum::sum(0, Ref::bytes(&self.hdr));
        checksum::fold(checksum::sum(s, &self.options)) == 0xffff
    }

    /// Checks that the options are well formed: every option but End-of-List and No-Op
    /// carries a length of at least 2 that fits the options field (RFC 791).
    ///
    /// # Errors
    /// [`Ipv4Error::BadOptions`].
    pub fn check_options(&self) -> Result<(), Ipv4Error> {
        options_well_formed(&self.options)
    }
}

impl<B: SplitByteSliceMut> Ipv4Packet<B> {
    /// The fixed header, writable.
    #[inline]
    pub fn header_mut(&mut self) -> &mut Ipv4Header {
        &mut self.hdr
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }

    /// Recomputes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.hdr.checksum = U16::ZERO;
        let s = checksum::sum(0, Ref::bytes(&self.hdr));
        self.hdr.checksum = U16::new(checksum::finish(checksum::sum(s, &self.options)));
    }
}

fn options_well_formed(mut opts: &[u8]) -> Result<(), Ipv4Error> {
    // Bounded by the 40-byte options field: each step consumes at least one byte.
    while let [kind, rest @ ..] = opts {
        match kind {
            0 => return Ok(()),
            1 => opts = rest,
            _ => {
                let len = usize::from(*rest.first().ok_or(Ipv4Error::BadOptions)?);
                if len < 2 {
                    return Err(Ipv4Error::BadOptions);
                }
                opts = opts.get(len..).ok_or(Ipv4Error::BadOptions)?;
            }
        }
    }
    Ok(())
}

/// Parsed IPv4 header fields.
///
/// The default is what a host sends: TTL 64, Don't Fragment set, no options (IHL 5),
/// identification 0, DSCP/ECN 0, protocol 0 and zero addresses and length. The version and
/// IHL are implied (emit writes 4 and the options' length); [`Frame`](super::Frame) computes
/// the protocol, the payload length and the checksum.
///
/// ```
/// use nf_core::wire::ipv4::Ipv4Repr;
/// let ip = Ipv4Repr { src: [10, 0, 0, 1], dst: [10, 0, 0, 2], ..Ipv4Repr::default() };
/// assert_eq!((ip.ttl, ip.dont_frag, ip.buffer_len()), (64, true, 20));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Payload protocol.
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// DSCP and ECN byte.
    pub dscp_ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
    /// More Fragments.
    pub more_frags: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Payload length in bytes (total length minus header).
    pub payload_len: u16,
    /// Options bytes (`options_len` of them are used; a multiple of 4).
    pub options: [u8; IPV4_MAX_OPTIONS],
    /// Length of the options.
    pub options_len: u8,
}

impl Default for Ipv4Repr {
    fn default() -> Self {
        Self {
            src: [0; 4],
            dst: [0; 4],
            proto: 0,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            payload_len: 0,
            options: [0; IPV4_MAX_OPTIONS],
            options_len: 0,
        }
    }
}

impl Ipv4Repr {
    /// Reads a checked packet.
    pub fn parse<B: SplitByteSlice>(p: &Ipv4Packet<B>) -> Self {
        let h = p.header();
        let mut options = [0u8; IPV4_MAX_OPTIONS];
        let n = p.options().len().min(IPV4_MAX_OPTIONS);
        if let (Some(dst), Some(src)) = (options.get_mut(..n), p.options().get(..n)) {
            dst.copy_from_slice(src);
        }
        Self {
            src: h.src,
            dst: h.dst,
            proto: h.proto,
            ttl: h.ttl,
            dscp_ecn: h.dscp_ecn,
            ident: h.ident.get(),
            dont_frag: h.dont_frag(),
            more_frags: h.more_frags(),
            frag_offset: h.frag_offset(),
            payload_len: p.payload().len() as u16,
            options,
            options_len: n as u8,
        }
    }

    /// Header length [`Ipv4Repr::emit`] writes (20 plus options).
    pub const fn buffer_len(&self) -> usize {
        IPV4_HEADER_LEN + self.options_len as usize
    }

    /// Writes the header with a correct checksum.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`]; [`EmitError::FieldOutOfRange`] when the options are
    /// not a multiple of 4 bytes (or over 40), the fragment offset exceeds 13 bits, or the
    /// total length exceeds 65535.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let olen = usize::from(self.options_len);
        if olen % 4 != 0 || olen > IPV4_MAX_OPTIONS || self.frag_offset > OFFSET_MASK {
            return Err(EmitError::FieldOutOfRange);
        }
        let hlen = IPV4_HEADER_LEN + olen;
        let total = u16::try_from(hlen + usize::from(self.payload_len))
            .map_err(|_| EmitError::FieldOutOfRange)?;
        let flags =
            (u16::from(self.dont_frag) * DF) | (u16::from(self.more_frags) * MF) | self.frag_offset;
        let hdr = Ipv4Header {
            version_ihl: 0x40 | (hlen / 4) as u8,
            dscp_ecn: self.dscp_ecn,
            total_len: U16::new(total),
            ident: U16::new(self.ident),
            flags_frag: U16::new(flags),
            ttl: self.ttl,
            proto: self.proto,
            checksum: U16::ZERO,
            src: self.src,
            dst: self.dst,
        };
        let out = buf.get_mut(..hlen).ok_or(EmitError::BufferTooSmall)?;
        write_prefix(&hdr, out)?;
        if let (Some(d), Some(s)) = (out.get_mut(IPV4_HEADER_LEN..), self.options.get(..olen)) {
            d.copy_from_slice(s);
        }
        let c = checksum::checksum(out);
        if let Some(f) = out.get_mut(10..12) {
            f.copy_from_slice(&c.to_be_bytes());
        }
        Ok(hlen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src: [192, 168, 0, 1],
            dst: [192, 168, 0, 199],
            proto: 17,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0x1c46,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            payload_len: 8,
            options: [0; 40],
            options_len: 0,
        }
    }

    #[test]
    fn emit_parse_round_trip_with_known_checksum() {
        // Header from the classic worked example (Wikipedia "IPv4 header checksum"):
        // 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
        let r = Ipv4Repr {
            ident: 0,
            payload_len: 0x73 - 20,
            ..repr()
        };
        let mut buf = [0u8; 0x73];
        assert_eq!(r.emit(&mut buf).unwrap(), 20);
        assert_eq!(
            &buf[..20],
            &[
                0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0, 1, 0xc0,
                0xa8, 0, 0xc7
            ]
        );
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&p), r);
    }

    #[test]
    fn options_and_errors() {
        let mut r = repr();
        r.options[..4].copy_from_slice(&[0x94, 0x04, 0, 0]); // Router Alert
        r.options_len = 4;
        let mut buf = [0u8; 64];
        let n = r.emit(&mut buf).unwrap();
        assert_eq!(n, 24);
        let p = Ipv4Packet::new_checked(&buf[..32]).unwrap();
        assert_eq!(p.options(), &[0x94, 4, 0, 0]);
        assert!(p.verify_checksum());
        assert_eq!(p.check_options(), Ok(()));
        assert_eq!(Ipv4Repr::parse(&p), r);

        assert_eq!(
            options_well_formed(&[1, 1, 0x94, 1]),
            Err(Ipv4Error::BadOptions)
        );
        assert_eq!(
            options_well_formed(&[0x83, 9, 0, 0]),
            Err(Ipv4Error::BadOptions)
        );
        assert_eq!(options_well_formed(&[0x94]), Err(Ipv4Error::BadOptions));
        assert_eq!(options_well_formed(&[0, 0xff, 0xff]), Ok(()));

        assert_eq!(
            Ipv4Packet::new_checked(&buf[..19]).unwrap_err(),
            Ipv4Error::Truncated
        );
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..31]).unwrap_err(),
            Ipv4Error::BadTotalLength
        );
        buf[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..]).unwrap_err(),
            Ipv4Error::BadIhl
        );
        buf[0] = 0x55;
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..]).unwrap_err(),
            Ipv4Error::BadVersion
        );
        buf[0] = 0x4f;
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..40]).unwrap_err(),
            Ipv4Error::Truncated
        );
        assert_eq!(
            Ipv4Repr {
                options_len: 3,
                ..r
            }
            .emit(&mut buf),
            Err(EmitError::FieldOutOfRange)
        );
        assert_eq!(
            Ipv4Repr {
                payload_len: 65535,
                ..r
            }
            .emit(&mut buf),
            Err(EmitError::FieldOutOfRange)
        );
    }
}
