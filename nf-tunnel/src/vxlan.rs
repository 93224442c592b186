//! VXLAN (RFC 7348): the 8-byte header, a checked view and a `Repr`.
//!
//! ```text
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! A [`VxlanPacket`] has the I flag set (RFC 7348 §5: the VNI is valid); every other flag
//! and reserved bit is ignored on receipt and written as zero by [`VxlanRepr::emit`]. The
//! payload is always an Ethernet frame.

use crate::TunnelError;
use nf_core::wire::{EmitError, U32};
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned,
};

/// IANA UDP destination port for VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// The port Linux used before IANA assigned one (still the kernel default).
pub const VXLAN_LINUX_PORT: u16 = 8472;
/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid.
pub const FLAG_I: u8 = 0x08;

/// The 8-byte VXLAN header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct VxlanHeader {
    /// Flags (8 bits, I = 0x08) and 24 reserved bits.
    pub flags_reserved: U32,
    /// VNI (24 bits) and 8 reserved bits.
    pub vni_reserved: U32,
}

impl VxlanHeader {
    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        (self.flags_reserved.get() >> 24) as u8
    }
    /// The 24-bit VNI.
    #[inline]
    pub fn vni(&self) -> u32 {
        self.vni_reserved.get() >> 8
    }
}

/// A checked view of a VXLAN header and its Ethernet payload.
pub struct VxlanPacket<B> {
    hdr: Ref<B, VxlanHeader>,
    payload: B,
}

impl<B: SplitByteSlice> core::fmt::Debug for VxlanPacket<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VxlanPacket")
            .field("header", self.header())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl<B: SplitByteSlice> VxlanPacket<B> {
    /// Validates length and the I flag (the UDP payload is `bytes`).
    ///
    /// # Errors
    /// [`TunnelError::Truncated`], [`TunnelError::BadFlags`].
    #[inline]
    pub fn new_checked(bytes: B) -> Result<Self, TunnelError> {
        let (hdr, payload) =
            Ref::<B, VxlanHeader>::from_prefix(bytes).map_err(|_| TunnelError::Truncated)?;
        if hdr.flags() & FLAG_I == 0 {
            return Err(TunnelError::BadFlags);
        }
        Ok(Self { hdr, payload })
    }

    /// The header.
    #[inline]
    pub fn header(&self) -> &VxlanHeader {
        &self.hdr
    }

    /// The encapsulated Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl<B: SplitByteSliceMut> VxlanPacket<B> {
    /// The header, writable.
    #[inline]
    pub fn header_mut(&mut self) -> &mut VxlanHeader {
        &mut self.hdr
    }
}

/// Parsed VXLAN header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanRepr {
    /// 24-bit VNI.
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads a checked packet.
    pub fn parse<B: SplitByteSlice>(p: &VxlanPacket<B>) -> Self {
        Self {
            vni: p.header().vni(),
        }
    }

    /// Bytes [`VxlanRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        VXLAN_HEADER_LEN
    }

    /// Writes the header: I flag set, everything reserved zero.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`]; [`EmitError::FieldOutOfRange`] if the VNI exceeds 24
    /// bits.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        if self.vni > 0x00ff_ffff {
            return Err(EmitError::FieldOutOfRange);
        }
        VxlanHeader {
            flags_reserved: U32::new(u32::from(FLAG_I) << 24),
            vni_reserved: U32::new(self.vni << 8),
        }
        .write_to_prefix(buf)
        .map_err(|_| EmitError::BufferTooSmall)?;
        Ok(VXLAN_HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_emit_and_reject_without_i_flag() {
        // vxlan.pcap: flags 0x08, VNI 100.
        let hdr = [0x08, 0, 0, 0, 0, 0, 100, 0, 0xaa];
        let p = VxlanPacket::new_checked(&hdr[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), VxlanRepr { vni: 100 });
        assert_eq!(p.payload(), &[0xaa]);
        let mut out = [0xffu8; 8];
        assert_eq!(VxlanRepr { vni: 100 }.emit(&mut out), Ok(8));
        assert_eq!(out, hdr[..8]);
        let reserved = [0xff, 0xff, 0xff, 0xff, 0, 0, 100, 0xff];
        assert_eq!(
            VxlanPacket::new_checked(&reserved[..])
                .unwrap()
                .header()
                .vni(),
            100
        );
        let no_i = [0xf7, 0, 0, 0, 0, 0, 100, 0];
        assert_eq!(
            VxlanPacket::new_checked(&no_i[..]).unwrap_err(),
            TunnelError::BadFlags
        );
        assert_eq!(
            VxlanPacket::new_checked(&hdr[..7]).unwrap_err(),
            TunnelError::Truncated
        );
        assert_eq!(
            VxlanRepr { vni: 1 << 24 }.emit(&mut out),
            Err(EmitError::FieldOutOfRange)
        );
        assert_eq!(
            VxlanRepr { vni: 1 }.emit(&mut out[..7]),
            Err(EmitError::BufferTooSmall)
        );
    }
}
