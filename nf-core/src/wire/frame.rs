//! Whole frames: Ethernet (optional) + IPv4/IPv6 + TCP/UDP/ICMP + payload, emitted in one
//! call with every length, protocol number and checksum filled in.

use super::EmitError;
use super::ethernet::{ETHERNET_HEADER_LEN, EthernetRepr};
use super::ethertype;
use super::icmp::{ICMP_HEADER_LEN, IcmpRepr};
use super::ipv4::Ipv4Repr;
use super::ipv6::{IPV6_HEADER_LEN, Ipv6Repr};
use super::tcp::TcpRepr;
use super::udp::{UDP_HEADER_LEN, UdpRepr};
use crate::checksum;
use crate::flow::proto;
use alloc::vec::Vec;

/// The most an ICMPv4 error quotes of the offending packet: what fits a 576-byte datagram
/// after the IPv4 and ICMP headers (RFC 1812 §4.3.2.3).
pub const ICMPV4_ERROR_QUOTE_MAX: usize = 576 - 20 - ICMP_HEADER_LEN;

/// The most an ICMPv6 error quotes of the offending packet: what fits the IPv6 minimum MTU
/// after the IPv6 and ICMPv6 headers (RFC 4443 §2.4 (c)).
pub const ICMPV6_ERROR_QUOTE_MAX: usize = 1280 - IPV6_HEADER_LEN - ICMP_HEADER_LEN;

/// The IP header of a [`Frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpRepr {
    /// IPv4 (options allowed).
    V4(Ipv4Repr),
    /// IPv6 (no extension headers).
    V6(Ipv6Repr),
}

impl IpRepr {
    /// Bytes the header takes.
    ///
    /// ```
    /// use nf_core::wire::{IpRepr, ipv4::Ipv4Repr};
    /// assert_eq!(IpRepr::V4(Ipv4Repr::default()).buffer_len(), 20);
    /// ```
    pub const fn buffer_len(&self) -> usize {
        match self {
            Self::V4(r) => r.buffer_len(),
            Self::V6(r) => r.buffer_len(),
        }
    }

    /// The EtherType that announces this header.
    ///
    /// ```
    /// use nf_core::wire::{IpRepr, ethertype, ipv6::Ipv6Repr};
    /// assert_eq!(IpRepr::V6(Ipv6Repr::default()).ethertype(), ethertype::IPV6);
    /// ```
    pub const fn ethertype(&self) -> u16 {
        match self {
            Self::V4(_) => ethertype::IPV4,
            Self::V6(_) => ethertype::IPV6,
        }
    }

    /// Partial checksum sum of the pseudo-header for an upper-layer message of protocol
    /// `proto` and `len` bytes (RFC 768 / RFC 9293 for IPv4, RFC 8200 §8.1 for IPv6).
    ///
    /// ```
    /// use nf_core::{checksum, wire::{IpRepr, ipv4::Ipv4Repr}};
    /// let ip = Ipv4Repr { src: [10, 0, 0, 1], dst: [10, 0, 0, 2], ..Ipv4Repr::default() };
    /// assert_eq!(
    ///     IpRepr::V4(ip).pseudo_header(17, 8),
    ///     checksum::pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 17, 8),
    /// );
    /// ```
    pub fn pseudo_header(&self, proto: u8, len: u16) -> u32 {
        match self {
            Self::V4(r) => checksum::pseudo_header_v4(r.src, r.dst, proto, len),
            Self::V6(r) => checksum::pseudo_header_v6(&r.src, &r.dst, proto, u32::from(len)),
        }
    }
}

/// The transport header of a [`Frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportRepr {
    /// UDP (protocol 17).
    Udp(UdpRepr),
    /// TCP (protocol 6).
    Tcp(TcpRepr),
    /// ICMP over IPv4 (protocol 1), ICMPv6 over IPv6 (protocol 58).
    Icmp(IcmpRepr),
    /// No transport header nf builds: the payload follows the IP header as is, and the IP
    /// header carries `proto` (e.g. GRE, or a transport header the caller wrote itself).
    Raw {
        /// IP protocol / next-header number.
        proto: u8,
    },
}

impl TransportRepr {
    /// Bytes the header takes (0 for [`TransportRepr::Raw`]).
    ///
    /// ```
    /// use nf_core::wire::{TransportRepr, udp::UdpRepr};
    /// assert_eq!(TransportRepr::Udp(UdpRepr::default()).buffer_len(), 8);
    /// ```
    pub const fn buffer_len(&self) -> usize {
        match self {
            Self::Udp(_) => UDP_HEADER_LEN,
            Self::Tcp(t) => t.buffer_len(),
            Self::Icmp(_) => ICMP_HEADER_LEN,
            Self::Raw { .. } => 0,
        }
    }

    /// The IP protocol number of this header over `ip`'s family.
    ///
    /// ```
    /// use nf_core::wire::{IpRepr, TransportRepr, icmp::IcmpRepr, ipv6::Ipv6Repr};
    /// let icmp = TransportRepr::Icmp(IcmpRepr::default());
    /// assert_eq!(icmp.proto(&IpRepr::V6(Ipv6Repr::default())), 58);
    /// ```
    pub const fn proto(&self, ip: &IpRepr) -> u8 {
        match (self, ip) {
            (Self::Udp(_), _) => proto::UDP,
            (Self::Tcp(_), _) => proto::TCP,
            (Self::Icmp(_), IpRepr::V4(_)) => proto::ICMP,
            (Self::Icmp(_), IpRepr::V6(_)) => proto::ICMPV6,
            (Self::Raw { proto }, _) => *proto,
        }
    }
}

/// A whole frame to emit: an optional Ethernet header, an IP header, a transport header and
/// a payload.
///
/// [`Frame::emit`] computes what follows from the layers, whatever the `Repr`s hold: the
/// EtherType, the IP protocol / next header, the IP and UDP lengths, the IPv4 header
/// checksum and the UDP, TCP, ICMP and ICMPv6 checksums (pseudo-header included). Every
/// other field is written as given. Without an Ethernet header ([`Frame::without_ethernet`])
/// the frame is a bare IP packet (a tunnel's inner packet, a TUN device's frame).
///
/// ```
/// use nf_core::wire::Frame;
/// use nf_core::{Meta, ParseConfig, parse_frame};
/// // A DNS query 10.0.0.1:40000 -> 10.0.0.53:53, with correct checksums.
/// let frame = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 53]).udp(40000, 53).payload(b"query").to_vec()?;
/// let mut meta = Meta::default();
/// parse_frame(&frame, &mut meta, &ParseConfig::default())?;
/// assert_eq!(meta.flow.to_string(), "zone 0 udp/17 10.0.0.1:40000 -> 10.0.0.53:53");
///
/// // IPv6 + TCP SYN, into a caller's buffer.
/// use nf_core::wire::tcp::tcp_flags;
/// let mut buf = [0u8; 128];
/// let n = Frame::ipv6([0x20; 16], [0xfe; 16]).tcp(40000, 443, tcp_flags::SYN).emit(&mut buf)?;
/// assert_eq!(n, 14 + 40 + 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The Ethernet header, or `None` for a bare IP packet (its EtherType is computed).
    pub ethernet: Option<EthernetRepr>,
    /// The IP header (protocol and payload length are computed).
    pub ip: IpRepr,
    /// The transport header (UDP length and checksums are computed).
    pub transport: TransportRepr,
    /// The bytes after the transport header.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A frame with a default Ethernet header, `ip`, no transport header (protocol 59, "no
    /// next header") and no payload.
    ///
    /// ```
    /// use nf_core::wire::{Frame, IpRepr, ipv4::Ipv4Repr};
    /// let ip = Ipv4Repr { ttl: 1, ..Ipv4Repr::default() };
    /// assert_eq!(Frame::new(IpRepr::V4(ip)).udp(1, 2).buffer_len(), 14 + 20 + 8);
    /// ```
    pub fn new(ip: IpRepr) -> Self {
        Self {
            ethernet: Some(EthernetRepr::default()),
            ip,
            transport: TransportRepr::Raw { proto: 59 },
            payload: &[],
        }
    }

    /// An IPv4 frame from `src` to `dst` ([`Ipv4Repr::default`] otherwise).
    ///
    /// ```
    /// use nf_core::wire::Frame;
    /// assert_eq!(Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).buffer_len(), 34);
    /// ```
    pub fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Self {
        Self::new(IpRepr::V4(Ipv4Repr {
            src,
            dst,
            ..Ipv4Repr::default()
        }))
    }

    /// An IPv6 frame from `src` to `dst` ([`Ipv6Repr::default`] otherwise).
    ///
    /// ```
    /// use nf_core::wire::Frame;
    /// assert_eq!(Frame::ipv6([0x20; 16], [0xfe; 16]).buffer_len(), 54);
    /// ```
    pub fn ipv6(src: [u8; 16], dst: [u8; 16]) -> Self {
        Self::new(IpRepr::V6(Ipv6Repr {
            src,
            dst,
            ..Ipv6Repr::default()
        }))
    }

    /// Sets the Ethernet addresses.
    ///
    /// ```
    /// use nf_core::wire::Frame;
    /// let f = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    /// assert_eq!(f.to_vec()?[..12], [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    /// # Ok::<(), nf_core::wire::EmitError>(())
    /// ```
    #[must_use]
    pub fn ethernet(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.ethernet = Some(EthernetRepr {
            src,
            dst,
            ..EthernetRepr::default()
        });
        self
    }

    /// Drops the Ethernet header: the frame becomes a bare IP packet.
    ///
    /// ```
    /// use nf_core::wire::Frame;
    /// let pkt = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).without_ethernet().to_vec()?;
    /// assert_eq!(pkt[0], 0x45);
    /// # Ok::<(), nf_core::wire::EmitError>(())
    /// ```
    #[must_use]
    pub fn without_ethernet(mut self) -> Self {
        self.ethernet = None;
        self
    }

    /// Makes the transport header UDP between the given ports.
    ///
    /// ```
    /// use nf_core::wire::{Frame, TransportRepr};
    /// let f = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(5353, 53);
    /// assert!(matches!(f.transport, TransportRepr::Udp(u) if u.dst_port == 53));
    /// ```
    #[must_use]
    pub fn udp(mut self, src_port: u16, dst_port: u16) -> Self {
        self.transport = TransportRepr::Udp(UdpRepr {
            src_port,
            dst_port,
            ..UdpRepr::default()
        });
        self
    }

    /// Makes the transport header TCP between the given ports with `flags`
    /// ([`tcp_flags`](super::tcp::tcp_flags)); [`TcpRepr::default`] otherwise (set
    /// [`Frame::transport`] for sequence numbers, window and options).
    ///
    /// ```
    /// use nf_core::wire::{Frame, tcp::tcp_flags};
    /// let syn = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).tcp(40000, 80, tcp_flags::SYN).to_vec()?;
    /// assert_eq!(syn[14 + 20 + 13], tcp_flags::SYN);
    /// # Ok::<(), nf_core::wire::EmitError>(())
    /// ```
    #[must_use]
    pub fn tcp(mut self, src_port: u16, dst_port: u16, flags: u8) -> Self {
        self.transport = TransportRepr::Tcp(TcpRepr {
            src_port,
            dst_port,
            flags,
            ..TcpRepr::default()
        });
        self
    }

    /// Makes the transport header ICMP (over IPv4) or ICMPv6 (over IPv6).
    ///
    /// ```
    /// use nf_core::wire::{Frame, icmp::IcmpRepr};
    /// let echo = IcmpRepr { ty: 128, ident: 7, seq: 1, ..IcmpRepr::default() };
    /// let f = Frame::ipv6([0x20; 16], [0xfe; 16]).icmp(echo).to_vec()?;
    /// assert_eq!(f[14 + 6], 58); // next header: ICMPv6
    /// # Ok::<(), nf_core::wire::EmitError>(())
    /// ```
    #[must_use]
    pub fn icmp(mut self, icmp: IcmpRepr) -> Self {
        self.transport = TransportRepr::Icmp(icmp);
        self
    }

    /// Makes the frame an ICMP / ICMPv6 error of type `ty` and `code` quoting `offending`,
    /// the packet that caused it from its IP header on (for a parsed packet,
    /// `&pkt.data()[usize::from(pkt.meta.l3)..]`). The quote is cut to
    /// [`ICMPV4_ERROR_QUOTE_MAX`] or [`ICMPV6_ERROR_QUOTE_MAX`] bytes; the rest-of-header
    /// (MTU, pointer) is 0 (set it in [`Frame::transport`] where the type needs one).
    ///
    /// ```
    /// use nf_core::wire::Frame;
    /// use nf_core::{Meta, ParseConfig, flags, parse_frame};
    /// let query = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 53]).udp(40000, 53).to_vec()?;
    /// // Port unreachable (type 3, code 3) from the server back to the client.
    /// let error = Frame::ipv4([10, 0, 0, 53], [10, 0, 0, 1]).icmp_error(3, 3, &query[14..]).to_vec()?;
    /// let mut meta = Meta::default();
    /// parse_frame(&error, &mut meta, &ParseConfig::default())?;
    /// assert!(meta.has(flags::ICMP_ERROR));
    /// assert_eq!(&error[14 + 20 + 8..], &query[14..]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn icmp_error(mut self, ty: u8, code: u8, offending: &'a [u8]) -> Self {
        let max = match self.ip {
            IpRepr::V4(_) => ICMPV4_ERROR_QUOTE_MAX,
            IpRepr::V6(_) => ICMPV6_ERROR_QUOTE_MAX,
        };
        self.transport = TransportRepr::Icmp(IcmpRepr {
            ty,
            code,
            ..IcmpRepr::default()
        });
        self.payload = offending.get(..max).unwrap_or(offending);
        self
    }

    /// Sets the payload after the transport header.
    ///
    /// ```
    /// use nf_core::wire::Frame;
    /// let f = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(1, 2).payload(b"hi");
    /// assert_eq!(f.buffer_len(), 14 + 20 + 8 + 2);
    /// ```
    #[must_use]
    pub fn payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = payload;
        self
    }

    /// Bytes [`Frame::emit`] writes.
    ///
    /// ```
    /// use nf_core::wire::Frame;
    /// assert_eq!(Frame::ipv6([1; 16], [2; 16]).without_ethernet().udp(1, 2).buffer_len(), 48);
    /// ```
    pub fn buffer_len(&self) -> usize {
        let eth = match self.ethernet {
            Some(_) => ETHERNET_HEADER_LEN,
            None => 0,
        };
        eth + self.ip.buffer_len() + self.transport.buffer_len() + self.payload.len()
    }

    /// Writes the frame at the start of `buf` with every length and checksum filled in;
    /// returns its length ([`Frame::buffer_len`]).
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] if `buf` is shorter than [`Frame::buffer_len`];
    /// [`EmitError::FieldOutOfRange`] if the IP packet would exceed 65535 bytes (IPv4 total
    /// length, IPv6 payload length) or a `Repr` field does not fit its encoding.
    ///
    /// ```
    /// use nf_core::wire::{EmitError, Frame};
    /// let f = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(1, 2);
    /// assert_eq!(f.emit(&mut [0u8; 41]), Err(EmitError::BufferTooSmall));
    /// assert_eq!(f.emit(&mut [0u8; 64]), Ok(42));
    /// ```
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let total = self.buffer_len();
        let out = buf.get_mut(..total).ok_or(EmitError::BufferTooSmall)?;
        let mut at = 0;
        if let Some(eth) = self.ethernet {
            at += EthernetRepr {
                ethertype: self.ip.ethertype(),
                ..eth
            }
            .emit(out)?;
        }
        let l4_len = self.transport.buffer_len() + self.payload.len();
        let l4_len16 = u16::try_from(l4_len).map_err(|_| EmitError::FieldOutOfRange)?;
        let proto = self.transport.proto(&self.ip);
        let ip_out = out.get_mut(at..).ok_or(EmitError::BufferTooSmall)?;
        at += match self.ip {
            IpRepr::V4(r) => Ipv4Repr {
                proto,
                payload_len: l4_len16,
                ..r
            }
            .emit(ip_out)?,
            IpRepr::V6(r) => Ipv6Repr {
                next_header: proto,
                payload_len: l4_len16,
                ..r
            }
            .emit(ip_out)?,
        };
        let l4 = out.get_mut(at..).ok_or(EmitError::BufferTooSmall)?;
        let hlen = match self.transport {
            TransportRepr::Udp(u) => UdpRepr {
                payload_len: u16::try_from(self.payload.len())
                    .map_err(|_| EmitError::FieldOutOfRange)?,
                checksum: 0,
                ..u
            }
            .emit(l4)?,
            TransportRepr::Tcp(t) => TcpRepr { checksum: 0, ..t }.emit(l4)?,
            TransportRepr::Icmp(i) => IcmpRepr { checksum: 0, ..i }.emit(l4)?,
            TransportRepr::Raw { .. } => 0,
        };
        l4.get_mut(hlen..)
            .ok_or(EmitError::BufferTooSmall)?
            .copy_from_slice(self.payload);
        let pseudo = || self.ip.pseudo_header(proto, l4_len16);
        let (field, value) = match self.transport {
            TransportRepr::Udp(_) => (6, checksum::udp_finish(checksum::sum(pseudo(), l4))),
            TransportRepr::Tcp(_) => (16, checksum::finish(checksum::sum(pseudo(), l4))),
            TransportRepr::Icmp(_) => {
                let start = match self.ip {
                    IpRepr::V4(_) => 0,
                    IpRepr::V6(_) => pseudo(),
                };
                (2, checksum::finish(checksum::sum(start, l4)))
            }
            TransportRepr::Raw { .. } => return Ok(total),
        };
        l4.get_mut(field..field + 2)
            .ok_or(EmitError::BufferTooSmall)?
            .copy_from_slice(&value.to_be_bytes());
        Ok(total)
    }

    /// [`Frame::emit`] into a new vector of exactly [`Frame::buffer_len`] bytes.
    ///
    /// # Errors
    /// As [`Frame::emit`] ([`EmitError::FieldOutOfRange`]; the buffer always fits).
    ///
    /// ```
    /// use nf_core::wire::Frame;
    /// assert_eq!(Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(1, 2).to_vec()?.len(), 42);
    /// # Ok::<(), nf_core::wire::EmitError>(())
    /// ```
    pub fn to_vec(&self) -> Result<Vec<u8>, EmitError> {
        let mut v = alloc::vec![0u8; self.buffer_len()];
        let n = self.emit(&mut v)?;
        v.truncate(n);
        Ok(v)
    }

    /// The frame as IP fragments of at most `mtu` bytes of IP packet each, in order, with
    /// identification `id` (IPv4: its low 16 bits, don't-fragment cleared; IPv6: a Fragment
    /// header with `id`, RFC 8200 §4.5). Every fragment but the last carries a multiple of 8 bytes; the transport
    /// checksum is the whole datagram's. A frame that fits `mtu` comes back as one packet
    /// (IPv6: an atomic fragment, with a Fragment header, RFC 6946).
    ///
    /// # Errors
    /// [`EmitError::FieldOutOfRange`] if `mtu` leaves less than 8 bytes of payload per
    /// fragment; otherwise as [`Frame::to_vec`].
    ///
    /// ```
    /// use nf_core::wire::Frame;
    /// let frags = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(1, 2).payload(&[7; 1000])
    ///     .fragments(576, 7)?;
    /// assert_eq!(frags.iter().map(Vec::len).collect::<Vec<_>>(), [14 + 572, 14 + 20 + 456]);
    /// # Ok::<(), nf_core::wire::EmitError>(())
    /// ```
    pub fn fragments(&self, mtu: usize, id: u32) -> Result<Vec<Vec<u8>>, EmitError> {
        let whole = self.to_vec()?;
        let eth = whole.len() - self.ip.buffer_len() - self.transport.buffer_len();
        let eth = eth - self.payload.len();
        let (l2, ip) = whole.split_at(eth);
        let hlen = self.ip.buffer_len();
        let (header, data) = ip.split_at(hlen);
        let extra = match self.ip {
            IpRepr::V4(_) => 0,
            IpRepr::V6(_) => 8,
        };
        let chunk = mtu.saturating_sub(hlen + extra) / 8 * 8;
        if chunk == 0 {
            return Err(EmitError::FieldOutOfRange);
        }
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            let part = data.get(off..(off + chunk).min(data.len())).unwrap_or(&[]);
            let more = off + part.len() < data.len();
            let mut f = Vec::with_capacity(eth + hlen + extra + part.len());
            f.extend_from_slice(l2);
            let at = f.len();
            f.extend_from_slice(header);
            let off13 = u16::try_from(off / 8).map_err(|_| EmitError::FieldOutOfRange)?;
            let fo = off13 << 3 | u16::from(more);
            let h = f.get_mut(at..at + hlen).ok_or(EmitError::BufferTooSmall)?;
            match self.ip {
                IpRepr::V4(_) => {
                    let total = u16::try_from(hlen + part.len()).unwrap_or(u16::MAX);
                    put(h, 2, &total.to_be_bytes());
                    put(h, 4, &u16::try_from(id & 0xffff).unwrap_or(0).to_be_bytes());
                    put(h, 6, &(off13 | u16::from(more) << 13).to_be_bytes());
                    put(h, 10, &[0, 0]);
                    let c = checksum::checksum(h);
                    put(h, 10, &c.to_be_bytes());
                }
                IpRepr::V6(_) => {
                    let inner = h.get(6).copied().unwrap_or(59);
                    let len = u16::try_from(8 + part.len()).unwrap_or(u16::MAX);
                    put(h, 4, &len.to_be_bytes());
                    put(h, 6, &[super::ipv6::next_header::FRAGMENT]);
                    f.extend_from_slice(&[inner, 0]);
                    f.extend_from_slice(&fo.to_be_bytes());
                    f.extend_from_slice(&id.to_be_bytes());
                }
            }
            f.extend_from_slice(part);
            out.push(f);
            off += part.len();
            if !more {
                return Ok(out);
            }
        }
    }
}

/// Writes `bytes` at `at` in `h` (within bounds the caller checked).
fn put(h: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = h.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowKey, ZoneId};
    use crate::meta::{Meta, flags};
    use crate::parse::{ParseConfig, Parsed, parse_frame, parse_l3};
    use crate::wire::icmp::{IcmpKind, IcmpPacket, classify_v4, classify_v6};
    use crate::wire::ipv4::Ipv4Packet;
    use crate::wire::ipv6::Ipv6Packet;
    use crate::wire::tcp::TcpPacket;
    use crate::wire::udp::UdpPacket;
    use proptest::prelude::*;

    fn arb_ip() -> impl Strategy<Value = IpRepr> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<[u8; 4]>(),
                any::<u8>(),
                any::<u8>(),
                any::<u16>(),
                any::<bool>(),
                0u8..=10,
            )
                .prop_map(|(src, dst, ttl, dscp_ecn, ident, dont_frag, words)| {
                    // No-op options: always well formed.
                    let mut options = [0u8; 40];
                    options[..usize::from(words) * 4].fill(1);
                    IpRepr::V4(Ipv4Repr {
                        src,
                        dst,
                        ttl,
                        dscp_ecn,
                        ident,
                        dont_frag,
                        options,
                        options_len: words * 4,
                        ..Ipv4Repr::default()
                    })
                }),
            (
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<u8>(),
                any::<u8>(),
                0u32..(1 << 20),
            )
                .prop_map(|(src, dst, hop_limit, traffic_class, flow_label)| {
                    IpRepr::V6(Ipv6Repr {
                        src,
                        dst,
                        hop_limit,
                        traffic_class,
                        flow_label,
                        ..Ipv6Repr::default()
                    })
                }),
        ]
    }

    fn arb_transport() -> impl Strategy<Value = TransportRepr> {
        prop_oneof![
            (any::<u16>(), any::<u16>()).prop_map(|(s, d)| TransportRepr::Udp(UdpRepr {
                src_port: s,
                dst_port: d,
                ..UdpRepr::default()
            })),
            (
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
                any::<u8>(),
                any::<u16>(),
                any::<u16>(),
                0u8..=10
            )
                .prop_map(|(s, d, seq, ack, flags, window, urgent, words)| {
                    let mut options = [0u8; 40];
                    options[..usize::from(words) * 4].fill(1);
                    TransportRepr::Tcp(TcpRepr {
                        src_port: s,
                        dst_port: d,
                        seq,
                        ack,
                        flags,
                        window,
                        urgent,
                        options,
                        options_len: words * 4,
                        ..TcpRepr::default()
                    })
                }),
            (any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>()).prop_map(
                |(ty, code, ident, seq)| TransportRepr::Icmp(IcmpRepr {
                    ty,
                    code,
                    ident,
                    seq,
                    ..IcmpRepr::default()
                })
            ),
            Just(TransportRepr::Raw { proto: 47 }),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = (Option<EthernetRepr>, IpRepr, TransportRepr, Vec<u8>)>
    {
        (
            proptest::option::weighted(
                0.8,
                (any::<[u8; 6]>(), any::<[u8; 6]>()).prop_map(|(src, dst)| EthernetRepr {
                    src,
                    dst,
                    ..EthernetRepr::default()
                }),
            ),
            arb_ip(),
            arb_transport(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
    }

    /// The ports the parse stage puts in the key for `t` over `ip`.
    fn ports(ip: &IpRepr, t: &TransportRepr) -> (u16, u16) {
        match t {
            TransportRepr::Udp(u) => (u.src_port, u.dst_port),
            TransportRepr::Tcp(t) => (t.src_port, t.dst_port),
            TransportRepr::Icmp(i) => {
                let kind = match ip {
                    IpRepr::V4(_) => classify_v4(i.ty),
                    IpRepr::V6(_) => classify_v6(i.ty),
                };
                match kind {
                    IcmpKind::Query => (i.ident, i.ident),
                    IcmpKind::Error | IcmpKind::Other => (0, 0),
                }
            }
            TransportRepr::Raw { .. } => (0, 0),
        }
    }

    /// Checks the emitted transport header against `t` and its checksum against `pseudo`.
    fn check_transport(
        t: &TransportRepr,
        l4: &[u8],
        pseudo: u32,
        v6: bool,
        payload: &[u8],
    ) -> Result<(), TestCaseError> {
        match *t {
            TransportRepr::Udp(u) => {
                let p = UdpPacket::new_checked(l4).unwrap();
                prop_assert!(p.verify_checksum(pseudo));
                prop_assert_ne!(p.header().checksum.get(), 0);
                let back = UdpRepr::parse(&p);
                prop_assert_eq!(
                    back,
                    UdpRepr {
                        payload_len: payload.len() as u16,
                        checksum: back.checksum,
                        ..u
                    }
                );
                prop_assert_eq!(p.payload(), payload);
            }
            TransportRepr::Tcp(want) => {
                let p = TcpPacket::new_checked(l4).unwrap();
                prop_assert_eq!(checksum::fold(p.sum() + pseudo), 0xffff);
                let back = TcpRepr::parse(&p);
                prop_assert_eq!(
                    back,
                    TcpRepr {
                        checksum: back.checksum,
                        ..want
                    }
                );
                prop_assert_eq!(p.payload(), payload);
            }
            TransportRepr::Icmp(want) => {
                let p = IcmpPacket::new_checked(l4).unwrap();
                let start = if v6 { pseudo } else { 0 };
                prop_assert!(p.verify_checksum(start));
                let back = IcmpRepr::parse(&p);
                prop_assert_eq!(
                    back,
                    IcmpRepr {
                        checksum: back.checksum,
                        ..want
                    }
                );
                prop_assert_eq!(p.payload(), payload);
            }
            TransportRepr::Raw { .. } => prop_assert_eq!(l4, payload),
        }
        Ok(())
    }

    /// Cross-checks the checksums with etherparse, an independent implementation.
    fn etherparse_agrees(bytes: &[u8], ethernet: bool, l4: usize) -> Result<(), TestCaseError> {
        use etherparse::err::{Layer, packet::SliceError};
        use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
        let h = match if ethernet {
            PacketHeaders::from_ethernet_slice(bytes)
        } else {
            PacketHeaders::from_ip_slice(bytes)
        } {
            Ok(h) => h,
            // RFC 792 fixes ICMP timestamp messages (types 13 and 14) at 20 bytes, and
            // etherparse refuses any other length; the emitter writes the type and payload it
            // is given, so there is nothing to compare.
            Err(SliceError::Len(e))
                if matches!(
                    e.layer,
                    Layer::Icmpv4Timestamp | Layer::Icmpv4TimestampReply
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(alloc::format!("etherparse: {e:?}"))),
        };
        let payload = h.payload.slice();
        match (h.net, h.transport) {
            (Some(NetHeaders::Ipv4(ip, _)), t) => {
                prop_assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                match t {
                    Some(TransportHeader::Udp(u)) => {
                        prop_assert_eq!(u.checksum, u.calc_checksum_ipv4(&ip, payload).unwrap());
                    }
                    Some(TransportHeader::Tcp(t)) => {
                        prop_assert_eq!(t.checksum, t.calc_checksum_ipv4(&ip, payload).unwrap());
                    }
                    // etherparse models some rest-of-header fields as unused: compare only
                    // where its model holds the header we wrote.
                    Some(TransportHeader::Icmpv4(i)) if lossless(&i.to_bytes(), bytes, l4) => {
                        prop_assert_eq!(i.checksum, i.icmp_type.calc_checksum(payload));
                    }
                    _ => {}
                }
            }
            (Some(NetHeaders::Ipv6(ip, _)), t) => match t {
                Some(TransportHeader::Udp(u)) => {
                    prop_assert_eq!(u.checksum, u.calc_checksum_ipv6(&ip, payload).unwrap());
                }
                Some(TransportHeader::Tcp(t)) => {
                    prop_assert_eq!(t.checksum, t.calc_checksum_ipv6(&ip, payload).unwrap());
                }
                Some(TransportHeader::Icmpv6(i)) if lossless(&i.to_bytes(), bytes, l4) => {
                    prop_assert_eq!(
                        i.checksum,
                        i.icmp_type
                            .calc_checksum(ip.source, ip.destination, payload)
                            .unwrap()
                    );
                }
                _ => {}
            },
            (other, _) => prop_assert!(false, "etherparse found {:?}", other),
        }
        Ok(())
    }

    /// True if etherparse's header re-serialises to the bytes at `l4`.
    fn lossless(header: &[u8], bytes: &[u8], l4: usize) -> bool {
        bytes.get(l4..l4 + header.len()) == Some(header)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn emitted_frames_parse_back_with_valid_checksums(
            (ethernet, ip, transport, payload) in arb_frame()
        ) {
            let frame = Frame { ethernet, ip, transport, payload: &payload };
            let bytes = frame.to_vec().unwrap();
            prop_assert_eq!(bytes.len(), frame.buffer_len());

            // The parse stage: flow key, offsets and flags.
            let cfg = ParseConfig::default();
            let mut meta = Meta::default();
            let parsed = match ethernet {
                Some(_) => parse_frame(&bytes, &mut meta, &cfg),
                None => parse_l3(&bytes, ip.ethertype(), &mut meta, &cfg),
            };
            prop_assert_eq!(parsed, Ok(Parsed::Ip));
            let proto = transport.proto(&ip);
            let (sp, dp) = ports(&ip, &transport);
            let key = match ip {
                IpRepr::V4(r) => FlowKey::v4(ZoneId(0), r.src, r.dst, proto, sp, dp),
                IpRepr::V6(r) => FlowKey::v6(ZoneId(0), r.src, r.dst, proto, sp, dp),
            };
            prop_assert_eq!(meta.flow, key);
            let l3 = if ethernet.is_some() { 14 } else { 0 };
            prop_assert_eq!(usize::from(meta.l3), l3);
            prop_assert_eq!(usize::from(meta.l4), l3 + ip.buffer_len());
            prop_assert_eq!(usize::from(meta.payload), bytes.len() - payload.len());
            prop_assert_eq!(meta.has(flags::L4_VALID), !matches!(transport, TransportRepr::Raw { .. }));
            if let TransportRepr::Tcp(t) = transport {
                prop_assert_eq!(meta.tcp_flags, t.flags);
            }

            // The views: every field as given, computed ones as they must be, checksums valid.
            let l3_bytes = &bytes[l3..];
            let l4_len = (transport.buffer_len() + payload.len()) as u16;
            let pseudo = ip.pseudo_header(proto, l4_len);
            match ip {
                IpRepr::V4(want) => {
                    let p = Ipv4Packet::new_checked(l3_bytes).unwrap();
                    prop_assert!(p.verify_checksum());
                    prop_assert_eq!(Ipv4Repr::parse(&p), Ipv4Repr { proto, payload_len: l4_len, ..want });
                    check_transport(&transport, p.payload(), pseudo, false, &payload)?;
                }
                IpRepr::V6(want) => {
                    let p = Ipv6Packet::new_checked(l3_bytes).unwrap();
                    prop_assert_eq!(Ipv6Repr::parse(&p), Ipv6Repr { next_header: proto, payload_len: l4_len, ..want });
                    check_transport(&transport, p.payload(), pseudo, true, &payload)?;
                }
            }
            if let Some(e) = ethernet {
                let f = crate::wire::ethernet::EthernetFrame::new_checked(&bytes[..]).unwrap();
                prop_assert_eq!(EthernetRepr::parse(&f), EthernetRepr { ethertype: ip.ethertype(), ..e });
            }
            etherparse_agrees(&bytes, ethernet.is_some(), usize::from(meta.l4))?;
        }
    }

    proptest! {
        /// Fragments parse as first and later fragments, fit the MTU, carry multiples of 8
        /// bytes but the last, and their payloads put together are the whole datagram.
        #[test]
        fn fragments_put_together_make_the_datagram(
            v6: bool, len in 0usize..3000, mtu in 68usize..1600, id: u32,
        ) {
            let payload = alloc::vec![0xa5u8; len];
            let f = if v6 { Frame::ipv6([1; 16], [2; 16]) } else { Frame::ipv4([1; 4], [2; 4]) };
            let f = f.udp(7, 9).payload(&payload);
            let whole = f.to_vec().unwrap();
            let hlen = f.ip.buffer_len();
            let frags = f.fragments(mtu, id).unwrap();
            let mut joined = Vec::new();
            for (i, fr) in frags.iter().enumerate() {
                let mut meta = Meta::default();
                parse_frame(fr, &mut meta, &ParseConfig::default()).unwrap();
                prop_assert_eq!(meta.has(flags::FRAGMENT), frags.len() > 1);
                prop_assert_eq!(meta.has(flags::LATER_FRAGMENT), i > 0);
                let ip = &fr[14..];
                let extra = if v6 { 8 } else { 0 };
                prop_assert!(ip.len() <= mtu.max(hlen + extra + 8));
                let data = &ip[hlen + extra..];
                if i + 1 < frags.len() {
                    prop_assert_eq!(data.len() % 8, 0);
                }
                if v6 {
                    prop_assert_eq!(ip[6], 44);
                    prop_assert_eq!(u32::from_be_bytes(ip[44..48].try_into().unwrap()), id);
                } else {
                    prop_assert_eq!(crate::checksum::checksum(&ip[..20]), 0);
                    prop_assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), id as u16);
                }
                joined.extend_from_slice(data);
            }
            prop_assert_eq!(&joined[..], &whole[14 + hlen..]);
        }
    }

    #[test]
    fn fragments_need_room_for_eight_bytes() {
        let f = Frame::ipv6([1; 16], [2; 16]).udp(1, 2).payload(&[0; 100]);
        assert_eq!(f.fragments(55, 1), Err(EmitError::FieldOutOfRange));
        assert_eq!(f.fragments(56, 1).map(|v| v.len()), Ok(14));
    }

    #[test]
    fn icmp_errors_quote_at_most_what_fits() {
        let big = [0x45u8; 2000];
        let v4 = Frame::ipv4([1; 4], [2; 4]).icmp_error(3, 4, &big);
        assert_eq!(v4.payload.len(), ICMPV4_ERROR_QUOTE_MAX);
        assert_eq!(v4.without_ethernet().buffer_len(), 576);
        let v6 = Frame::ipv6([1; 16], [2; 16]).icmp_error(1, 4, &big);
        assert_eq!(v6.without_ethernet().buffer_len(), 1280);
        let short = Frame::ipv6([1; 16], [2; 16]).icmp_error(1, 4, &big[..30]);
        assert_eq!(short.payload.len(), 30);
    }

    #[test]
    fn oversized_packets_are_refused() {
        let big = alloc::vec![0u8; 65_536];
        let f = Frame::ipv6([1; 16], [2; 16]).udp(1, 2).payload(&big);
        assert_eq!(f.to_vec(), Err(EmitError::FieldOutOfRange));
        let f = Frame::ipv4([1; 4], [2; 4]).payload(&big[..65_516]);
        assert_eq!(f.to_vec(), Err(EmitError::FieldOutOfRange));
        let f = Frame::ipv4([1; 4], [2; 4])
            .payload(&big[..65_515 - 8])
            .udp(1, 2);
        assert_eq!(f.to_vec().map(|v| v.len()), Ok(14 + 65_535));
    }
}
