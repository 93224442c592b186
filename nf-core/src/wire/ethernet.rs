//! Ethernet II frames and 802.1Q / 802.1ad VLAN tags.

use super::{EmitError, U16, ethertype, write_prefix};
use crate::verdict::DropReason;
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, SplitByteSliceMut, Unaligned,
};

/// Errors from Ethernet and VLAN views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EthError {
    /// Shorter than the 14-byte Ethernet header or a 4-byte VLAN tag.
    Truncated,
}

impl From<EthError> for DropReason {
    fn from(e: EthError) -> Self {
        match e {
            EthError::Truncated => DropReason::EthTruncated,
        }
    }
}

/// The 14-byte Ethernet II header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct EthernetHeader {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType of the payload (or a VLAN TPID).
    pub ethertype: U16,
}

/// Length of [`EthernetHeader`].
pub const ETHERNET_HEADER_LEN: usize = 14;

/// A checked view of an Ethernet II frame.
pub struct EthernetFrame<B> {
    hdr: Ref<B, EthernetHeader>,
    payload: B,
}

super::view_debug!(EthernetFrame);

impl<B: SplitByteSlice> EthernetFrame<B> {
    /// Validates that `bytes` holds an Ethernet header.
    ///
    /// # Errors
    /// [`EthError::Truncated`] if shorter than 14 bytes.
    #[inline]
    pub fn new_checked(bytes: B) -> Result<Self, EthError> {
        let (hdr, payload) = Ref::from_prefix(bytes).map_err(|_| EthError::Truncated)?;
        Ok(Self { hdr, payload })
    }

    /// The header.
    #[inline]
    pub fn header(&self) -> &EthernetHeader {
        &self.hdr
    }

    /// The bytes after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The bytes after the header, consuming the view.
    #[inline]
    pub fn into_payload(self) -> B {
        self.payload
    }
}

impl<B: SplitByteSliceMut> EthernetFrame<B> {
    /// The header, writable.
    #[inline]
    pub fn header_mut(&mut self) -> &mut EthernetHeader {
        &mut self.hdr
    }
}

/// Parsed Ethernet header fields.
///
/// The default has all-zero addresses and EtherType IPv4 ([`Frame`](super::Frame) sets the
/// EtherType from its IP header).
///
/// ```
/// use nf_core::wire::{ethernet::EthernetRepr, ethertype};
/// let e = EthernetRepr { src: [2, 0, 0, 0, 0, 1], ..EthernetRepr::default() };
/// assert_eq!(e.ethertype, ethertype::IPV4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Source MAC.
    pub src: [u8; 6],
    /// Destination MAC.
    pub dst: [u8; 6],
    /// EtherType.
    pub ethertype: u16,
}

impl Default for EthernetRepr {
    fn default() -> Self {
        Self {
            src: [0; 6],
            dst: [0; 6],
            ethertype: ethertype::IPV4,
        }
    }
}

impl EthernetRepr {
    /// Reads the fields of a checked frame.
    pub fn parse<B: SplitByteSlice>(f: &EthernetFrame<B>) -> Self {
        let h = f.header();
        Self {
            src: h.src,
            dst: h.dst,
            ethertype: h.ethertype.get(),
        }
    }

    /// Bytes [`EthernetRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        ETHERNET_HEADER_LEN
    }

    /// Writes the header at the start of `buf`.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] if `buf` is shorter than 14 bytes.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        write_prefix(
            &EthernetHeader {
                dst: self.dst,
                src: self.src,
                ethertype: U16::new(self.ethertype),
            },
            buf,
        )?;
        Ok(ETHERNET_HEADER_LEN)
    }
}

/// The 4 bytes of an 802.1Q / 802.1ad tag that follow its TPID (which is the previous
/// header's EtherType field).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct VlanHeader {
    /// Priority (3 bits), drop eligible (1 bit), VLAN id (12 bits).
    pub tci: U16,
    /// EtherType of what follows the tag.
    pub ethertype: U16,
}

impl VlanHeader {
    /// The 12-bit VLAN id.
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci.get() & 0x0fff
    }
}

/// True for the TPIDs of a VLAN tag (802.1Q 0x8100, 802.1ad 0x88a8).
#[inline]
pub const fn is_vlan_tpid(ethertype: u16) -> bool {
    ethertype == ethertype::VLAN || ethertype == ethertype::QINQ
}

/// A checked view of a VLAN tag and the bytes after it.
pub struct VlanTag<B> {
    hdr: Ref<B, VlanHeader>,
    payload: B,
}

super::view_debug!(VlanTag);

impl<B: SplitByteSlice> VlanTag<B> {
    /// Validates that `bytes` starts with a 4-byte tag.
    ///
    /// # Errors
    /// [`EthError::Truncated`] if shorter than 4 bytes.
    #[inline]
    pub fn new_checked(bytes: B) -> Result<Self, EthError> {
        let (hdr, payload) = Ref::from_prefix(bytes).map_err(|_| EthError::Truncated)?;
        Ok(Self { hdr, payload })
    }

    /// The tag.
    #[inline]
    pub fn header(&self) -> &VlanHeader {
        &self.hdr
    }

    /// The bytes after the tag.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Parsed VLAN tag fields.
///
/// The default is VLAN 0, priority 0, carrying IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanRepr {
    /// Priority code point (0-7).
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN id (0-4095).
    pub vid: u16,
    /// EtherType after the tag.
    pub ethertype: u16,
}

impl Default for VlanRepr {
    fn default() -> Self {
        Self {
            pcp: 0,
            dei: false,
            vid: 0,
            ethertype: ethertype::IPV4,
        }
    }
}

impl VlanRepr {
    /// Reads a checked tag.
    pub fn parse<B: SplitByteSlice>(t: &VlanTag<B>) -> Self {
        let tci = t.header().tci.get();
        Self {
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
            ethertype: t.header().ethertype.get(),
        }
    }

    /// Bytes [`VlanRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        4
    }

    /// Writes the tag (TCI and inner EtherType).
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`], or [`EmitError::FieldOutOfRange`] for a PCP above 7
    /// or a VLAN id above 4095.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        if self.pcp > 7 || self.vid > 0x0fff {
            return Err(EmitError::FieldOutOfRange);
        }
        let tci = (u16::from(self.pcp) << 13) | (u16::from(self.dei) << 12) | self.vid;
        write_prefix(
            &VlanHeader {
                tci: U16::new(tci),
                ethertype: U16::new(self.ethertype),
            },
            buf,
        )?;
        Ok(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_and_vlan_round_trip() {
        let e = EthernetRepr {
            src: [2, 0, 0, 0, 0, 1],
            dst: [0xff; 6],
            ethertype: ethertype::VLAN,
        };
        let v = VlanRepr {
            pcp: 5,
            dei: true,
            vid: 100,
            ethertype: ethertype::IPV4,
        };
        let mut buf = [0u8; 18];
        let n = e.emit(&mut buf).unwrap();
        v.emit(&mut buf[n..]).unwrap();
        assert_eq!(&buf[12..18], &[0x81, 0x00, 0xb0, 0x64, 0x08, 0x00]);
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&f), e);
        let t = VlanTag::new_checked(f.payload()).unwrap();
        assert_eq!(VlanRepr::parse(&t), v);
        assert_eq!(t.header().vid(), 100);
        assert_eq!(
            EthernetFrame::new_checked(&buf[..13]).unwrap_err(),
            EthError::Truncated
        );
        assert_eq!(
            VlanRepr { vid: 4096, ..v }.emit(&mut buf),
            Err(EmitError::FieldOutOfRange)
        );
        assert_eq!(e.emit(&mut buf[..10]), Err(EmitError::BufferTooSmall));
    }
}
