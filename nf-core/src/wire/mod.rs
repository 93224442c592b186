//! Zero-copy header views and their plain `Repr`s.
//!
//! Each wire format is a `#[repr(C)]` header struct of `zerocopy` network-endian fields,
//! a view `XxxPacket<B>` over a byte slice `B` (`&[u8]` or `&mut [u8]`) built only by
//! `new_checked`, which validates every length once so accessors never fail or panic, and a
//! `XxxRepr` with `parse` / `emit` / `buffer_len` for building and round-tripping headers.
//! Errors are small `Copy` enums per layer, convertible into [`DropReason`](crate::DropReason).
//!
//! To build a whole frame, use [`Frame`]: one call emits Ethernet (optional), IPv4 or IPv6,
//! TCP, UDP or ICMP and a payload, with every length and checksum filled in.
//!
//! ```
//! use nf_core::wire::Frame;
//! let frame = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(40000, 53).payload(b"hi").to_vec()?;
//! assert_eq!(frame.len(), 14 + 20 + 8 + 2);
//! # Ok::<(), nf_core::wire::EmitError>(())
//! ```

pub mod ethernet;
mod frame;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

use core::fmt;

pub use frame::{Frame, ICMPV4_ERROR_QUOTE_MAX, ICMPV6_ERROR_QUOTE_MAX, IpRepr, TransportRepr};

/// Implements `Debug` for a view: its header and payload length.
macro_rules! view_debug {
    ($t:ident) => {
        impl<B: zerocopy::SplitByteSlice> core::fmt::Debug for $t<B> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("header", self.header())
                    .field("payload_len", &self.payload().len())
                    .finish()
            }
        }
    };
}
pub(crate) use view_debug;

pub use zerocopy::network_endian::{U16, U32};

/// Errors from emitting a `Repr` into a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmitError {
    /// The buffer is smaller than `buffer_len()`.
    BufferTooSmall,
    /// A field does not fit its wire encoding (e.g. a length above 65535).
    FieldOutOfRange,
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BufferTooSmall => "buffer too small for the header",
            Self::FieldOutOfRange => "field value does not fit its wire encoding",
        })
    }
}

impl core::error::Error for EmitError {}

/// EtherType values nf gives meaning to.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// Transparent Ethernet bridging (Geneve / GRE inner Ethernet).
    pub const TEB: u16 = 0x6558;
}

/// Writes `hdr` at the start of `buf`, or fails if it does not fit.
#[inline]
pub(crate) fn write_prefix<T: zerocopy::IntoBytes + zerocopy::Immutable>(
    hdr: &T,
    buf: &mut [u8],
) -> Result<(), EmitError> {
    hdr.write_to_prefix(buf)
        .map_err(|_| EmitError::BufferTooSmall)
}
