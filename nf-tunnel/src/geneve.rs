//! Geneve (RFC 8926): the base header, option TLVs, a checked view, a `Repr`, an option
//! iterator and an option builder.
//!
//! ```text
//!  0                   1                   2                   3
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! |                    Variable-Length Options                    |
//! option: | Option Class (16) | Type (8, high bit = critical) | R R R | Length (5) | data |
//! ```
//!
//! Invariants of a [`GenevePacket`] (checked once by [`GenevePacket::new_checked`]): the
//! version is 0, the options area announced by `Opt Len` is present, and the option TLVs in
//! it add up to exactly that length. Reserved bits are ignored on receipt; every `emit`
//! writes them as zero. Whether an unknown *critical* option must drop the packet depends on
//! what the receiver understands, so it is checked by the caller
//! ([`GenevePacket::first_unknown_critical`]), not by the view.

use crate::TunnelError;
use nf_core::wire::{EmitError, U16, U32};
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned,
};

/// IANA UDP destination port for Geneve.
pub const GENEVE_PORT: u16 = 6081;
/// Length of the fixed Geneve header.
pub const GENEVE_HEADER_LEN: usize = 8;
/// Length of an option TLV's header (class, type, length).
pub const OPTION_HEADER_LEN: usize = 4;
/// Longest options area (`Opt Len` is 6 bits of 4-byte words).
pub const MAX_OPTIONS_LEN: usize = 63 * 4;
/// Longest data of one option (`Length` is 5 bits of 4-byte words).
pub const MAX_OPTION_DATA_LEN: usize = 31 * 4;
/// The critical bit of an option's type.
pub const CRITICAL: u8 = 0x80;

mod field {
    pub(super) const VER_SHIFT: u8 = 6;
    pub(super) const OPT_LEN_MASK: u8 = 0x3f;
    pub(super) const O_BIT: u8 = 0x80;
    pub(super) const C_BIT: u8 = 0x40;
    pub(super) const OPTION_LEN_MASK: u8 = 0x1f;
}

/// The fixed 8-byte Geneve header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct GeneveHeader {
    /// Version (2 bits) and option length in 4-byte words (6 bits).
    pub ver_opt_len: u8,
    /// O (control), C (critical options present) and 6 reserved bits.
    pub flags: u8,
    /// EtherType of the payload (0x6558 for Ethernet).
    pub protocol: U16,
    /// VNI (24 bits) and 8 reserved bits.
    pub vni_reserved: U32,
}

impl GeneveHeader {
    /// The version field.
    #[inline]
    pub const fn version(&self) -> u8 {
        self.ver_opt_len >> field::VER_SHIFT
    }
    /// Length of the options area in bytes.
    #[inline]
    pub const fn options_len(&self) -> usize {
        (self.ver_opt_len & field::OPT_LEN_MASK) as usize * 4
    }
    /// The O bit: a control message, for the control path only.
    #[inline]
    pub const fn oam(&self) -> bool {
        self.flags & field::O_BIT != 0
    }
    /// The C bit: the sender says a critical option is present.
    #[inline]
    pub const fn critical(&self) -> bool {
        self.flags & field::C_BIT != 0
    }
    /// The 24-bit virtual network identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        self.vni_reserved.get() >> 8
    }
}

/// A checked view of a Geneve header, its options and its payload.
pub struct GenevePacket<B> {
    hdr: Ref<B, GeneveHeader>,
    options: B,
    payload: B,
}

impl<B: SplitByteSlice> core::fmt::Debug for GenevePacket<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GenevePacket")
            .field("header", self.header())
            .field("options_len", &self.options.len())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl<B: SplitByteSlice> GenevePacket<B> {
    /// Validates the version, the options area and the option TLV lengths (the UDP
    /// payload is `bytes`).
    ///
    /// # Errors
    /// [`TunnelError::Truncated`], [`TunnelError::BadVersion`], [`TunnelError::BadOptions`].
    #[inline]
    pub fn new_checked(bytes: B) -> Result<Self, TunnelError> {
        let (hdr, rest) =
            Ref::<B, GeneveHeader>::from_prefix(bytes).map_err(|_| TunnelError::Truncated)?;
        if hdr.version() != 0 {
            return Err(TunnelError::BadVersion);
        }
        let (options, payload) = rest
            .split_at(hdr.options_len())
            .map_err(|_| TunnelError::Truncated)?;
        check_options(&options)?;
        Ok(Self {
            hdr,
            options,
            payload,
        })
    }

    /// The fixed header.
    #[inline]
    pub fn header(&self) -> &GeneveHeader {
        &self.hdr
    }

    /// The raw options area (well formed).
    #[inline]
    pub fn options_bytes(&self) -> &[u8] {
        &self.options
    }

    /// The option TLVs, in order.
    #[inline]
    pub fn options(&self) -> Options<'_> {
        Options {
            rest: &self.options,
        }
    }

    /// The encapsulated frame or packet.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Length of header plus options: the bytes in front of the payload.
    #[inline]
    pub fn header_len(&self) -> usize {
        GENEVE_HEADER_LEN + self.options.len()
    }

    /// The first option with the critical bit set that `known(class, type)` does not
    /// recognise (RFC 8926 §3.5: the packet must then be dropped).
    #[inline]
    pub fn first_unknown_critical(
        &self,
        mut known: impl FnMut(u16, u8) -> bool,
    ) -> Option<GeneveOption<'_>> {
        self.options()
            .find(|o| o.is_critical() && !known(o.class, o.ty))
    }
}

impl<B: SplitByteSliceMut> GenevePacket<B> {
    /// The fixed header, writable.
    #[inline]
    pub fn header_mut(&mut self) -> &mut GeneveHeader {
        &mut self.hdr
    }
}

/// Checks that option TLVs fill `opts` exactly.
///
/// # Errors
/// [`TunnelError::BadOptions`] if an option header or its data runs past the area.
#[inline]
pub fn check_options(mut opts: &[u8]) -> Result<(), TunnelError> {
    // Each step consumes at least 4 bytes of at most 252: bounded.
    while !opts.is_empty() {
        let [_, _, _, len] = *opts.first_chunk::<4>().ok_or(TunnelError::BadOptions)?;
        let n = OPTION_HEADER_LEN + usize::from(len & field::OPTION_LEN_MASK) * 4;
        opts = opts.get(n..).ok_or(TunnelError::BadOptions)?;
    }
    Ok(())
}

/// One option TLV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    /// Option class (namespace of the type).
    pub class: u16,
    /// Type, including the critical bit ([`CRITICAL`]).
    pub ty: u8,
    /// Option data (a multiple of 4 bytes, at most 124).
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// True if the critical bit of the type is set.
    #[inline]
    pub const fn is_critical(&self) -> bool {
        self.ty & CRITICAL != 0
    }
    /// Bytes the option occupies on the wire (header included), as tshark shows it.
    #[inline]
    pub const fn wire_len(&self) -> usize {
        OPTION_HEADER_LEN + self.data.len()
    }
}

/// Iterator over well-formed option TLVs (stops at the first inconsistency, which a checked
/// view never has).
#[derive(Clone, Debug)]
pub struct Options<'a> {
    rest: &'a [u8],
}

impl<'a> Options<'a> {
    /// Options over `bytes`, validated first.
    ///
    /// # Errors
    /// [`TunnelError::BadOptions`] (see [`check_options`]).
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, TunnelError> {
        check_options(bytes)?;
        Ok(Self { rest: bytes })
    }

    /// The first option of `class` and `ty` (critical bit ignored in the comparison).
    #[inline]
    pub fn find_option(self, class: u16, ty: u8) -> Option<GeneveOption<'a>> {
        self.into_iter()
            .find(|o| o.class == class && (o.ty & !CRITICAL) == (ty & !CRITICAL))
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = GeneveOption<'a>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let [c0, c1, ty, len] = *self.rest.first_chunk::<4>()?;
        let n = usize::from(len & field::OPTION_LEN_MASK) * 4;
        let data = self.rest.get(OPTION_HEADER_LEN..OPTION_HEADER_LEN + n)?;
        self.rest = self.rest.get(OPTION_HEADER_LEN + n..).unwrap_or(&[]);
        Some(GeneveOption {
            class: u16::from_be_bytes([c0, c1]),
            ty,
            data,
        })
    }
}

/// Builds an options area TLV by TLV in a fixed buffer (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OptionsBuilder {
    buf: [u8; MAX_OPTIONS_LEN],
    len: usize,
    critical: bool,
}

impl Default for OptionsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for OptionsBuilder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.options()).finish()
    }
}

impl OptionsBuilder {
    /// An empty options area.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_OPTIONS_LEN],
            len: 0,
            critical: false,
        }
    }

    /// Appends an option (reserved bits written as zero).
    ///
    /// # Errors
    /// [`EmitError::FieldOutOfRange`] if `data` is not a multiple of 4 bytes or longer
    /// than [`MAX_OPTION_DATA_LEN`]; [`EmitError::BufferTooSmall`] if the area would
    /// exceed [`MAX_OPTIONS_LEN`].
    pub fn push(&mut self, class: u16, ty: u8, data: &[u8]) -> Result<&mut Self, EmitError> {
        if !data.len().is_multiple_of(4) || data.len() > MAX_OPTION_DATA_LEN {
            return Err(EmitError::FieldOutOfRange);
        }
        let end = self.len + OPTION_HEADER_LEN + data.len();
        let out = self
            .buf
            .get_mut(self.len..end)
            .ok_or(EmitError::BufferTooSmall)?;
        let [c0, c1] = class.to_be_bytes();
        let (head, body) = out.split_at_mut(OPTION_HEADER_LEN);
        head.copy_from_slice(&[c0, c1, ty, (data.len() / 4) as u8]);
        body.copy_from_slice(data);
        self.len = end;
        self.critical |= ty & CRITICAL != 0;
        Ok(self)
    }

    /// The options area bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// The options pushed so far.
    pub fn options(&self) -> Options<'_> {
        Options {
            rest: self.as_bytes(),
        }
    }

    /// True if any option has the critical bit (the header's C bit must then be set).
    #[inline]
    pub const fn has_critical(&self) -> bool {
        self.critical
    }

    /// Length of the area in bytes.
    #[inline]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True if no option was pushed.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Parsed Geneve header fields; the options are borrowed raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneveRepr<'a> {
    /// O bit: a control message.
    pub oam: bool,
    /// C bit: a critical option is present.
    pub critical: bool,
    /// EtherType of the payload.
    pub protocol: u16,
    /// 24-bit VNI.
    pub vni: u32,
    /// The options area (a sequence of well-formed TLVs).
    pub options: &'a [u8],
}

impl<'a> GeneveRepr<'a> {
    /// A data (non-control) header whose C bit is set exactly when an option is critical.
    pub fn new(vni: u32, protocol: u16, options: &'a OptionsBuilder) -> Self {
        Self {
            oam: false,
            critical: options.has_critical(),
            protocol,
            vni,
            options: options.as_bytes(),
        }
    }

    /// Reads a checked packet.
    pub fn parse<B: SplitByteSlice>(p: &'a GenevePacket<B>) -> Self {
        let h = p.header();
        Self {
            oam: h.oam(),
            critical: h.critical(),
            protocol: h.protocol.get(),
            vni: h.vni(),
            options: p.options_bytes(),
        }
    }

    /// Bytes [`GeneveRepr::emit`] writes (header and options).
    pub const fn buffer_len(&self) -> usize {
        GENEVE_HEADER_LEN + self.options.len()
    }

    /// Writes header and options, reserved bits zero.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`]; [`EmitError::FieldOutOfRange`] if the VNI exceeds 24
    /// bits or the options are not well-formed TLVs of at most [`MAX_OPTIONS_LEN`] bytes.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        if self.vni > 0x00ff_ffff
            || self.options.len() > MAX_OPTIONS_LEN
            || check_options(self.options).is_err()
        {
            return Err(EmitError::FieldOutOfRange);
        }
        let out = buf
            .get_mut(..self.buffer_len())
            .ok_or(EmitError::BufferTooSmall)?;
        let (head, opts) = out.split_at_mut(GENEVE_HEADER_LEN);
        let hdr = GeneveHeader {
            ver_opt_len: (self.options.len() / 4) as u8,
            flags: (u8::from(self.oam) * field::O_BIT) | (u8::from(self.critical) * field::C_BIT),
            protocol: U16::new(self.protocol),
            vni_reserved: U32::new(self.vni << 8),
        };
        hdr.write_to(head).map_err(|_| EmitError::BufferTooSmall)?;
        opts.copy_from_slice(self.options);
        Ok(self.buffer_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Open vSwitch's header from geneve.pcap frame 1: VNI 0xa, C bit, one critical option
    // (class 0, type 0x80, 4 bytes of data), inner Ethernet.
    const OVS: [u8; 16] = [
        0x02, 0x40, 0x65, 0x58, 0, 0, 0x0a, 0, 0, 0, 0x80, 0x01, 0, 0, 0, 0x0c,
    ];

    #[test]
    fn parses_a_real_header_and_round_trips() {
        let p = GenevePacket::new_checked(&OVS[..]).unwrap();
        let h = p.header();
        assert_eq!((h.version(), h.options_len(), h.vni()), (0, 8, 10));
        assert!(h.critical() && !h.oam());
        let opts: alloc::vec::Vec<_> = p.options().collect();
        assert_eq!(opts.len(), 1);
        assert_eq!(
            (opts[0].class, opts[0].ty, opts[0].wire_len()),
            (0, 0x80, 8)
        );
        assert!(opts[0].is_critical());
        assert!(p.first_unknown_critical(|_, _| false).is_some());
        assert!(
            p.first_unknown_critical(|c, t| c == 0 && t == 0x80)
                .is_none()
        );
        let r = GeneveRepr::parse(&p);
        let mut out = [0u8; 16];
        assert_eq!(r.emit(&mut out), Ok(16));
        assert_eq!(out, OVS);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn rejects_what_rfc_8926_rejects() {
        let mut v1 = OVS;
        v1[0] |= 0x40;
        assert_eq!(
            GenevePacket::new_checked(&v1[..]).unwrap_err(),
            TunnelError::BadVersion
        );
        assert_eq!(
            GenevePacket::new_checked(&OVS[..7]).unwrap_err(),
            TunnelError::Truncated
        );
        assert_eq!(
            GenevePacket::new_checked(&OVS[..12]).unwrap_err(),
            TunnelError::Truncated
        );
        let mut sum = OVS;
        sum[11] = 2; // option says 8 bytes of data; the area holds 4
        assert_eq!(
            GenevePacket::new_checked(&sum[..]).unwrap_err(),
            TunnelError::BadOptions
        );
        let mut short = OVS;
        short[11] = 0; // option of 4 bytes; 4 bytes of the area left over (not a whole TLV)
        short[12..].fill(0);
        // leftover 4 zero bytes form an empty option of class 0 type 0: well formed
        assert!(GenevePacket::new_checked(&short[..]).is_ok());
        let mut reserved = OVS;
        reserved[1] |= 0x3f;
        reserved[7] = 0xff;
        reserved[11] |= 0xe0;
        let p = GenevePacket::new_checked(&reserved[..]).unwrap();
        assert_eq!(p.header().vni(), 10, "reserved bits are ignored on receipt");
        assert_eq!(p.options().next().unwrap().data.len(), 4);
    }

    #[test]
    fn builder_emits_well_formed_tlvs() {
        let mut b = OptionsBuilder::new();
        b.push(0x0108, 1, &[1; 8])
            .unwrap()
            .push(0x0108, 2, &[2; 8])
            .unwrap()
            .push(0x0108, 3, &[3; 4])
            .unwrap();
        assert_eq!(b.len(), 32);
        assert!(!b.has_critical());
        assert_eq!(b.push(1, 1, &[0; 3]), Err(EmitError::FieldOutOfRange));
        assert_eq!(b.push(1, 1, &[0; 128]), Err(EmitError::FieldOutOfRange));
        let r = GeneveRepr::new(0x123456, 0x6558, &b);
        let mut buf = [0u8; 64];
        let n = r.emit(&mut buf).unwrap();
        assert_eq!(n, 40);
        let p = GenevePacket::new_checked(&buf[..n]).unwrap();
        assert_eq!(GeneveRepr::parse(&p), r);
        let found = p.options().find_option(0x0108, 3).unwrap();
        assert_eq!(found.data, &[3; 4]);
        assert_eq!(
            GeneveRepr { vni: 1 << 24, ..r }.emit(&mut buf),
            Err(EmitError::FieldOutOfRange)
        );
        assert_eq!(r.emit(&mut buf[..39]), Err(EmitError::BufferTooSmall));
        let mut full = OptionsBuilder::new();
        full.push(1, 1, &[0; 124])
            .unwrap()
            .push(1, 2, &[0; 120])
            .unwrap();
        assert_eq!(full.len(), MAX_OPTIONS_LEN);
        assert_eq!(full.push(1, 3, &[]), Err(EmitError::BufferTooSmall));
        let mut crit = OptionsBuilder::new();
        crit.push(7, 0x81, &[]).unwrap();
        assert!(GeneveRepr::new(1, 0x0800, &crit).critical);
    }
}
