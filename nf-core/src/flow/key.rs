//! [`FlowKey`], [`Family`], [`ZoneId`]: public at the crate root only.

use super::{MAX_ENCODED_LEN, proto};
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A tenant / VPC / routing domain. Flows in different zones never match each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ZoneId(pub u32);

/// Address family of a [`FlowKey`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Family {
    /// IPv4: addresses use the first 4 of the 16 address bytes; the rest are zero.
    #[default]
    V4 = 4,
    /// IPv6.
    V6 = 6,
}

/// One direction of a flow: zone, addresses, protocol and ports.
///
/// Addresses are stored as 16 bytes in network order; an IPv4 address occupies the first 4
/// and the rest stay zero (constructors guarantee it, so derived equality is exact).
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
#[repr(C)]
pub struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    /// Zone the flow belongs to.
    pub zone: ZoneId,
    /// Source port (ICMP: query identifier; otherwise 0 for port-less protocols).
    pub src_port: u16,
    /// Destination port (ICMP: query identifier).
    pub dst_port: u16,
    /// IP protocol number (see [`proto`](crate::flow::proto)).
    pub proto: u8,
    family: Family,
}

impl FlowKey {
    /// An IPv4 flow key.
    #[inline]
    pub const fn v4(
        zone: ZoneId,
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        src_port: u16,
        dst_port: u16,
    ) -> Self {
        // Widened as integers (the same bytes on any endianness): one 16-byte store per
        // address rather than a 4-byte one and zeros.
        Self {
            src: (u32::from_le_bytes(src) as u128).to_le_bytes(),
            dst: (u32::from_le_bytes(dst) as u128).to_le_bytes(),
            zone,
            src_port,
            dst_port,
            proto,
            family: Family::V4,
        }
    }

    /// An IPv6 flow key.
    #[inline]
    pub const fn v6(
        zone: ZoneId,
        src: [u8; 16],
        dst: [u8; 16],
        proto: u8,
        src_port: u16,
        dst_port: u16,
    ) -> Self {
        Self {
            src,
            dst,
            zone,
            src_port,
            dst_port,
            proto,
            family: Family::V6,
        }
    }

    /// Overwrites `self` with the IPv6 key [`FlowKey::v6`] would build, copying the addresses
    /// straight from where they lie (the parse fast path: no temporary key).
    #[inline(always)]
    pub(crate) fn set_v6(
        &mut self,
        zone: ZoneId,
        src: &[u8; 16],
        dst: &[u8; 16],
        proto: u8,
        src_port: u16,
        dst_port: u16,
    ) {
        self.src = *src;
        self.dst = *dst;
        self.zone = zone;
        self.src_port = src_port;
        self.dst_port = dst_port;
        self.proto = proto;
        self.family = Family::V6;
    }

    /// A key from `core::net` addresses; `None` if the families differ.
    pub fn from_addrs(
        zone: ZoneId,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        src_port: u16,
        dst_port: u16,
    ) -> Option<Self> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some(Self::v4(
                zone,
                s.octets(),
                d.octets(),
                proto,
                src_port,
                dst_port,
            )),
            (IpAddr::V6(s), IpAddr::V6(d)) => Some(Self::v6(
                zone,
                s.octets(),
                d.octets(),
                proto,
                src_port,
                dst_port,
            )),
            _ => None,
        }
    }

    /// The address family.
    #[inline]
    pub const fn family(&self) -> Family {
        self.family
    }

    /// Source address bytes: 4 for IPv4, 16 for IPv6.
    #[inline]
    pub fn src_bytes(&self) -> &[u8] {
        let (a, _) = self.src.split_at(self.addr_len());
        a
    }

    /// Destination address bytes: 4 for IPv4, 16 for IPv6.
    #[inline]
    pub fn dst_bytes(&self) -> &[u8] {
        let (a, _) = self.dst.split_at(self.addr_len());
        a
    }

    /// Raw 16-byte source address (IPv4 in the first four bytes).
    #[inline]
    pub const fn src_raw(&self) -> &[u8; 16] {
        &self.src
    }

    /// Raw 16-byte destination address (IPv4 in the first four bytes).
    #[inline]
    pub const fn dst_raw(&self) -> &[u8; 16] {
        &self.dst
    }

    /// Source address.
    pub fn src_ip(&self) -> IpAddr {
        ip_of(self.family, &self.src)
    }

    /// Destination address.
    pub fn dst_ip(&self) -> IpAddr {
        ip_of(self.family, &self.dst)
    }

    #[inline]
    const fn addr_len(&self) -> usize {
        match self.family {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// The same flow seen from the other end: addresses and ports swapped.
    #[inline]
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            zone: self.zone,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            family: self.family,
        }
    }

    /// The direction-independent form: the endpoint that sorts lower (address, then port)
    /// first. Both directions of a flow have the same canonical form.
    #[inline]
    #[must_use]
    pub fn canonical(&self) -> Self {
        if (self.src, self.src_port) <= (self.dst, self.dst_port) {
            *self
        } else {
            self.reversed()
        }
    }

    /// Writes the canonical byte encoding (see the module docs) and returns its length
    /// (18 for IPv4, 42 for IPv6).
    #[inline]
    pub fn encode(&self, out: &mut [u8; MAX_ENCODED_LEN]) -> usize {
        let n = self.addr_len();
        let mut w = Writer { out, at: 0 };
        w.put(&[self.family as u8, self.proto]);
        w.put(&self.zone.0.to_be_bytes());
        w.put(self.src_bytes());
        w.put(self.dst_bytes());
        w.put(&self.src_port.to_be_bytes());
        w.put(&self.dst_port.to_be_bytes());
        debug_assert_eq!(w.at, 10 + 2 * n);
        w.at
    }
}

struct Writer<'a> {
    out: &'a mut [u8; MAX_ENCODED_LEN],
    at: usize,
}

impl Writer<'_> {
    #[inline(always)]
    fn put(&mut self, b: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.at..self.at + b.len()) {
            dst.copy_from_slice(b);
            self.at += b.len();
        }
    }
}

fn ip_of(f: Family, a: &[u8; 16]) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*a)),
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            proto::TCP => "tcp",
            proto::UDP => "udp",
            proto::ICMP => "icmp",
            proto::ICMPV6 => "icmpv6",
            _ => "ip",
        };
        match self.family {
            Family::V4 => write!(
                f,
                "zone {} {p}/{} {}:{} -> {}:{}",
                self.zone.0,
                self.proto,
                self.src_ip(),
                self.src_port,
                self.dst_ip(),
                self.dst_port
            ),
            Family::V6 => write!(
                f,
                "zone {} {p}/{} [{}]:{} -> [{}]:{}",
                self.zone.0,
                self.proto,
                self.src_ip(),
                self.src_port,
                self.dst_ip(),
                self.dst_port
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn encoding_is_pinned() {
        let k = FlowKey::v4(
            ZoneId(0x0102_0304),
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            proto::TCP,
            0x1234,
            80,
        );
        let mut b = [0u8; MAX_ENCODED_LEN];
        let n = k.encode(&mut b);
        assert_eq!(
            &b[..n],
            &[
                4, 6, 1, 2, 3, 4, 10, 0, 0, 1, 10, 0, 0, 2, 0x12, 0x34, 0, 80
            ]
        );
        let k6 = FlowKey::v6(ZoneId(7), [0xfe; 16], [0x20; 16], proto::UDP, 1, 2);
        assert_eq!(k6.encode(&mut b), 42);
        assert_eq!(b[0], 6);
        assert_eq!(&b[38..42], &[0, 1, 0, 2]);
    }

    #[test]
    fn reversed_and_canonical() {
        let k = FlowKey::v4(
            ZoneId(1),
            [10, 0, 0, 9],
            [10, 0, 0, 2],
            proto::UDP,
            53,
            40000,
        );
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(k.canonical(), k.reversed().canonical());
        assert_eq!(
            format!("{k}"),
            "zone 1 udp/17 10.0.0.9:53 -> 10.0.0.2:40000"
        );
        assert_eq!(k.src_bytes(), &[10, 0, 0, 9]);
    }
}
