//! In-place NAT rewriting: one end (address and port) of a packet replaced, with every
//! checksum it touches updated incrementally (RFC 1624), and ICMP errors translated with
//! their quoted packet (RFC 5508 REQ-4/5, RFC 5382, RFC 4787 REQ-13 for IPv6 likewise).
//!
//! - [`rewrite`]: the IP header's address at one [`End`] (fixing the IPv4 header checksum)
//!   and, when the transport header is present, the TCP/UDP port at that end (and its
//!   checksum, through the pseudo-header), or an ICMP query's identifier (and the ICMP
//!   checksum; ICMPv6: also its pseudo-header).
//! - [`rewrite_packet`]: [`rewrite`] of a parsed [`Packet`], the layout read
//!   from its metadata: the per-packet call of NAT and load balancing.
//! - [`translate_icmp_error`]: the outer header's end, and the *other* end of the quoted
//!   packet (an error travels opposite to the packet it quotes), fixing the outer IPv4
//!   checksum, the quoted IPv4 checksum, the quoted transport checksum where the quote holds
//!   it, and the ICMP checksum (ICMPv6: also over the outer pseudo-header).
//!
//! # Invariants
//!
//! - A UDP checksum of 0 (none, IPv4) stays 0; a computed UDP checksum of 0 is sent as
//!   0xFFFF.
//! - Every offset is checked: a field outside the bytes makes the call return
//!   [`RewriteError`] (the caller drops the packet), never panic. A call that fails may have
//!   changed the fields before the one it could not reach.
//! - No allocation; the work is a few 16-bit updates per field, whatever the packet's size.
//! - Addresses are 16 bytes as in [`FlowKey`](crate::FlowKey): IPv4 in the first four.
//!
//! ```
//! use nf_core::rewrite::{End, Layout, rewrite};
//! use nf_core::wire::Frame;
//! use nf_core::{Packet, ParseConfig, checksum, parse_frame};
//!
//! let frame = Frame::ipv4([198, 51, 100, 7], [192, 0, 2, 1]).udp(40_000, 53).payload(b"q").to_vec()?;
//! let mut pkt = Packet::with_headroom(&frame, 0);
//! let mut meta = pkt.meta;
//! parse_frame(pkt.data(), &mut meta, &ParseConfig::default())?;
//! // DNAT: the destination becomes 10.0.1.1, port 5353.
//! let mut backend = [0u8; 16];
//! backend[..4].copy_from_slice(&[10, 0, 1, 1]);
//! rewrite(pkt.data_mut(), Layout::of(&meta), End::Dst, &backend, Some(5353))?;
//! let ip = &pkt.data()[14..];
//! assert_eq!(ip[16..20], [10, 0, 1, 1]);
//! assert_eq!(ip[22..24], 5353u16.to_be_bytes());
//! assert!(checksum::verify(&ip[..20])); // the IPv4 header checksum still verifies
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::checksum::{update_bytes, update16, update32};
use crate::flow::{Family, proto};
use crate::meta::{Meta, flags};
use crate::packet::Packet;
use crate::wire::icmp::{IcmpKind, classify_v4, classify_v6};
use crate::wire::ipv6::walk_extensions;
use core::fmt;
use core::hint::select_unpredictable;

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// The source address and port.
    Src,
    /// The destination address and port.
    Dst,
}

impl End {
    /// The other end.
    #[must_use]
    pub const fn other(self) -> Self {
        match self {
            Self::Src => Self::Dst,
            Self::Dst => Self::Src,
        }
    }
}

/// Where a packet's headers are (frame offsets), from the parse stage's [`Meta`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Layout {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport (or ICMP) header.
    pub l4: usize,
    /// The IP version.
    pub family: Family,
    /// The transport protocol.
    pub proto: u8,
    /// The transport header is present (parsed, and not a later fragment): only then are
    /// ports, identifiers and transport checksums rewritten.
    pub has_l4: bool,
}

impl Layout {
    /// The layout the parser recorded in `meta`.
    #[inline]
    pub fn of(meta: &Meta) -> Self {
        Self {
            l3: usize::from(meta.l3),
            l4: usize::from(meta.l4),
            family: meta.flow.family(),
            proto: meta.flow.proto,
            has_l4: meta.has(flags::L4_VALID) && !meta.has(flags::LATER_FRAGMENT),
        }
    }

    /// The same layout without the transport header (addresses only).
    #[inline]
    #[must_use]
    pub const fn addresses_only(mut self) -> Self {
        self.has_l4 = false;
        self
    }
}

/// Why a packet could not be rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RewriteError {
    /// A field to rewrite lies outside the bytes (or its offset overflows).
    Truncated,
    /// An ICMPv6 error's quoted packet has extension headers that do not parse.
    BadQuote,
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "field outside the packet",
            Self::BadQuote => "quoted packet unreadable",
        })
    }
}

impl core::error::Error for RewriteError {}

/// Rewrites `end` of the packet in `data` (its IP header and, if [`Layout::has_l4`], its
/// transport header) to `addr` and, if `port` is given, that port (TCP/UDP: the port at
/// `end`; ICMP query: the identifier). `None` keeps ports and identifiers.
///
/// # Errors
/// [`RewriteError::Truncated`] if a field lies outside `data`.
#[inline(always)]
pub fn rewrite(
    data: &mut [u8],
    at: Layout,
    end: End,
    addr: &[u8; 16],
    port: Option<u16>,
) -> Result<(), RewriteError> {
    // The per-packet case of NAT and load balancing, inline; anything else out of line.
    if at.family == Family::V4
        && at.has_l4
        && rewrite_v4_ports(data, at.l3, at.l4, at.proto, end, first4(addr), port).is_some()
    {
        return Ok(());
    }
    rewrite_general(data, at, end, addr, port)
}

/// [`rewrite`] of a parsed packet, its layout the parser's ([`Layout::of`]): the per-packet
/// call of NAT and load balancing. An IPv4 TCP or UDP packet is rewritten inline from the
/// metadata's offsets; anything else out of line.
///
/// # Errors
/// [`RewriteError::Truncated`] if a field lies outside the packet's bytes.
///
/// ```
/// use nf_core::rewrite::{End, rewrite_packet};
/// use nf_core::wire::Frame;
/// use nf_core::{Packet, ParseConfig, checksum, parse_frame};
///
/// let frame = Frame::ipv4([198, 51, 100, 7], [192, 0, 2, 1]).tcp(40_000, 80, 0x10).to_vec()?;
/// let mut pkt = Packet::with_headroom(&frame, 0);
/// let mut meta = pkt.meta;
/// parse_frame(pkt.data(), &mut meta, &ParseConfig::default())?;
/// pkt.meta = meta;
/// // SNAT: the source becomes 203.0.113.9, port 1024.
/// let mut public = [0u8; 16];
/// public[..4].copy_from_slice(&[203, 0, 113, 9]);
/// rewrite_packet(&mut pkt, End::Src, &public, Some(1024))?;
/// let ip = &pkt.data()[14..];
/// assert_eq!(ip[12..16], [203, 0, 113, 9]);
/// assert_eq!(ip[20..22], 1024u16.to_be_bytes());
/// assert!(checksum::verify(&ip[..20]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline(always)]
pub fn rewrite_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
    end: End,
    addr: &[u8; 16],
    port: Option<u16>,
) -> Result<(), RewriteError> {
    let m = &pkt.meta;
    if m.flow.family() == Family::V4 && m.has(flags::L4_VALID) && !m.has(flags::LATER_FRAGMENT) {
        let (l3, l4, p) = (usize::from(m.l3), usize::from(m.l4), m.flow.proto);
        if rewrite_v4_ports(pkt.data_mut(), l3, l4, p, end, first4(addr), port).is_some() {
            return Ok(());
        }
    }
    rewrite_packet_general(pkt, end, addr, port)
}

/// [`rewrite_packet`] of any packet.
#[inline(never)]
fn rewrite_packet_general<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
    end: End,
    addr: &[u8; 16],
    port: Option<u16>,
) -> Result<(), RewriteError> {
    let at = Layout::of(&pkt.meta);
    rewrite_general(pkt.data_mut(), at, end, addr, port)
}

/// [`rewrite`] of any packet, one field at a time.
#[inline(never)]
fn rewrite_general(
    data: &mut [u8],
    at: Layout,
    end: End,
    addr: &[u8; 16],
    port: Option<u16>,
) -> Result<(), RewriteError> {
    match at.family {
        Family::V4 => rewrite_n(data, at, end, &first4(addr), port),
        Family::V6 => rewrite_n(data, at, end, addr, port),
    }
    .ok_or(RewriteError::Truncated)
}

/// [`rewrite`] of an IPv4 TCP or UDP packet whose IP header (20 bytes) and transport header
/// (up to its checksum) lie in `d`, in that order, without overlapping: the address and
/// port swapped and both checksums updated from one combined difference (RFC 1624 eq. 3).
/// `None` for any other packet, with nothing changed (the general path decides); the
/// result is the general path's, bit for bit (a property test checks it).
///
/// Branch-free in the end and the protocol: a stream mixes directions and TCP with UDP
/// unpredictably, and a mispredicted branch costs more than the work. The end's offsets
/// (address 12 or 16, port 0 or 2) and the checksum's (UDP 6, TCP 16) are computed, not
/// branched on. The sums use native-endian words: the ones' complement sum of byte-swapped
/// words is the byte-swapped sum (RFC 1071 §2(B)), so no word is swapped.
#[inline(always)]
fn rewrite_v4_ports(
    d: &mut [u8],
    l3: usize,
    l4: usize,
    protocol: u8,
    end: End,
    addr: [u8; 4],
    port: Option<u16>,
) -> Option<()> {
    if !proto::has_ports(protocol) || l4 < l3.saturating_add(20) {
        return None;
    }
    let udp = protocol == proto::UDP;
    let src = usize::from(end == End::Src);
    let (a_at, p_at, ck_at) = (16 - 4 * src, 2 - 2 * src, select_unpredictable(udp, 6, 16));
    let (head, tail) = d.split_at_mut_checked(l4)?;
    let ip: &mut [u8; 20] = head.get_mut(l3..)?.first_chunk_mut()?;
    if tail.len() < ck_at + 2 {
        return None;
    }
    // Every read (and bounds check) before the first write.
    let old = u32::from_ne_bytes(*ip.get(a_at..)?.first_chunk()?);
    let ip_check = u16::from_ne_bytes(*ip.get(10..)?.first_chunk()?);
    let old_port = u16::from_ne_bytes(*tail.get(p_at..)?.first_chunk()?);
    let check = u16::from_ne_bytes(*tail.get(ck_at..)?.first_chunk()?);
    // !old + new: the address's difference, for the header and the pseudo-header.
    let diff = add_carry(!old, u32::from_ne_bytes(addr));
    put(ip, a_at, addr);
    put(
        ip,
        10,
        (!fold_ne(add_carry(diff, u32::from(!ip_check)))).to_ne_bytes(),
    );
    let mut l4_diff = diff;
    if let Some(port) = port {
        let new = port.to_be_bytes();
        put(tail, p_at, new);
        l4_diff = add_carry(
            l4_diff,
            u32::from(!old_port) + u32::from(u16::from_ne_bytes(new)),
        );
    }
    let n = !fold_ne(add_carry(l4_diff, u32::from(!check)));
    // A UDP checksum computed as 0 is sent as 0xFFFF; a UDP checksum of 0 (none, IPv4)
    // stays 0. Selected, not branched on (a branch on `udp` mispredicts).
    let n = n | u16::from(udp & (n == 0)).wrapping_neg();
    put(
        tail,
        ck_at,
        select_unpredictable(udp & (check == 0), 0, n).to_ne_bytes(),
    );
    Some(())
}

/// Writes `v` at `at` in a header whose bounds the caller has checked.
#[inline(always)]
fn put<const N: usize>(h: &mut [u8], at: usize, v: [u8; N]) {
    if let Some(w) = h.get_mut(at..).and_then(|t| t.first_chunk_mut::<N>()) {
        *w = v;
    }
}

/// The ones' complement sum of two 32-bit words (end-around carry; an add and an add with
/// carry): congruent to `a + b` modulo 0xFFFF_FFFF, hence modulo 0xFFFF, and 0 only if both
/// are.
#[inline(always)]
const fn add_carry(a: u32, b: u32) -> u32 {
    let (s, c) = a.overflowing_add(b);
    s + c as u32
}

/// The end-around-carry fold of a 32-bit sum to 16 bits: the high half of `s` plus `s`
/// rotated by 16 is the two halves' sum plus the carry out of the low half's.
#[inline(always)]
const fn fold_ne(s: u32) -> u16 {
    (s.wrapping_add(s.rotate_left(16)) >> 16) as u16
}

/// Translates the ICMP error in `data` in place: the outer header's `end` becomes `addr`,
/// the quoted packet's other end becomes `addr` and, if given, `port` (RFC 5508 REQ-4/5).
/// The quote starts 8 bytes into the ICMP message at [`Layout::l4`] and ends where the
/// outer IP packet does (its length field; padding and trailers are left alone).
///
/// # Errors
/// [`RewriteError::Truncated`] if a field lies outside the outer IP packet;
/// [`RewriteError::BadQuote`] if the quoted IPv6 header's extension headers do not parse.
pub fn translate_icmp_error(
    data: &mut [u8],
    at: Layout,
    end: End,
    addr: &[u8; 16],
    port: Option<u16>,
) -> Result<(), RewriteError> {
    let ip_end = ip_end(data, at);
    // Nothing after the IP packet (padding, a trailer) belongs to the quote.
    let d = data.get_mut(..ip_end).ok_or(RewriteError::Truncated)?;
    match at.family {
        Family::V4 => translate_n(d, at, end, &first4(addr), port),
        Family::V6 => translate_n(d, at, end, addr, port),
    }
}

/// The first four bytes of an address (IPv4 in a 16-byte address).
#[inline(always)]
const fn first4(addr: &[u8; 16]) -> [u8; 4] {
    let [a, b, c, d, ..] = *addr;
    [a, b, c, d]
}

/// Where the IP packet at `at.l3` ends in `data` (its total or payload length, within the
/// bytes).
fn ip_end(data: &[u8], at: Layout) -> usize {
    let ip = data.get(at.l3..).unwrap_or(&[]);
    let len = match (at.family, ip) {
        (Family::V4, [_, _, a, b, ..]) => usize::from(u16::from_be_bytes([*a, *b])),
        (Family::V6, [_, _, _, _, a, b, ..]) => 40 + usize::from(u16::from_be_bytes([*a, *b])),
        _ => 0,
    };
    data.len().min(at.l3.saturating_add(len))
}

#[inline(always)]
fn off(at: usize, by: usize) -> Option<usize> {
    at.checked_add(by)
}

#[inline]
fn rd16(d: &[u8], at: usize) -> Option<u16> {
    let b: &[u8; 2] = d.get(at..)?.first_chunk()?;
    Some(u16::from_be_bytes(*b))
}

#[inline]
fn wr16(d: &mut [u8], at: usize, v: u16) -> Option<()> {
    let b: &mut [u8; 2] = d.get_mut(at..)?.first_chunk_mut()?;
    *b = v.to_be_bytes();
    Some(())
}

/// Replaces the 16-bit word at `at`; returns the old one.
#[inline]
fn swap16(d: &mut [u8], at: usize, v: u16) -> Option<u16> {
    let old = rd16(d, at)?;
    wr16(d, at, v)?;
    Some(old)
}

/// Replaces the `N` bytes at `at`; returns the old ones.
#[inline]
fn swap_addr<const N: usize>(d: &mut [u8], at: usize, new: &[u8; N]) -> Option<[u8; N]> {
    let b: &mut [u8; N] = d.get_mut(at..)?.first_chunk_mut()?;
    let old = *b;
    *b = *new;
    Some(old)
}

/// A checksum after an address in the data it covers changed.
#[inline]
fn addr_update<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    match (old.first_chunk::<4>(), new.first_chunk::<4>()) {
        (Some(o), Some(n)) if N == 4 => update32(check, *o, *n),
        _ => update_bytes(check, old, new).unwrap_or(check),
    }
}

/// Applies `f` to the checksum stored at `at`.
#[inline]
fn fix(d: &mut [u8], at: usize, f: impl FnOnce(u16) -> u16) -> Option<()> {
    let c = rd16(d, at)?;
    wr16(d, at, f(c))
}

/// The offset of an address in an IP header of `N`-byte addresses (4: IPv4, 16: IPv6).
const fn addr_offset<const N: usize>(end: End) -> usize {
    match (N == 4, end) {
        (true, End::Src) => 12,
        (true, End::Dst) => 16,
        (false, End::Src) => 8,
        (false, End::Dst) => 24,
    }
}

/// True for an ICMP (IPv4, `N` = 4) or ICMPv6 query type.
fn is_query<const N: usize>(ty: u8) -> bool {
    let kind = if N == 4 {
        classify_v4(ty)
    } else {
        classify_v6(ty)
    };
    kind == IcmpKind::Query
}

/// Rewrites `end` of the IP header at `l3` to `addr` (fixing the IPv4 header checksum);
/// returns the old address.
#[inline]
fn rewrite_ip<const N: usize>(
    d: &mut [u8],
    l3: usize,
    end: End,
    addr: &[u8; N],
) -> Option<[u8; N]> {
    let old = swap_addr(d, off(l3, addr_offset::<N>(end))?, addr)?;
    if N == 4 {
        fix(d, off(l3, 10)?, |c| addr_update(c, &old, addr))?;
    }
    Some(old)
}

/// The changes a transport rewrite made to its header's 16-bit words (port or identifier,
/// checksum), for a checksum that covers the header (an ICMP error's quote).
#[derive(Clone, Copy, Debug, Default)]
struct L4Change {
    port: Option<(u16, u16)>,
    check: Option<(u16, u16)>,
}

impl L4Change {
    fn apply(&self, check: u16) -> u16 {
        [self.port, self.check]
            .into_iter()
            .flatten()
            .fold(check, |c, (old, new)| update16(c, old, new))
    }
}

/// Rewrites the transport header at `l4` (protocol `p`) for an address change `old → new`
/// at `end` and the new port, if any (TCP/UDP: the port at `end`; ICMP query: the
/// identifier). `need_check`: the checksum field must be present (false inside a short ICMP
/// quote: a TCP checksum beyond the quote is left alone).
#[inline]
fn rewrite_l4<const N: usize>(
    d: &mut [u8],
    (l4, p): (usize, u8),
    end: End,
    (old, new): (&[u8; N], &[u8; N]),
    port: Option<u16>,
    need_check: bool,
) -> Option<L4Change> {
    let mut ch = L4Change::default();
    match p {
        proto::TCP | proto::UDP => {
            let mut old_port = None;
            if let Some(port) = port {
                let port_at = match end {
                    End::Src => l4,
                    End::Dst => off(l4, 2)?,
                };
                let was = swap16(d, port_at, port)?;
                old_port = Some(was);
                ch.port = Some((was, port));
            }
            let at = off(l4, if p == proto::TCP { 16 } else { 6 })?;
            let Some(c) = rd16(d, at) else {
                return if need_check { None } else { Some(ch) };
            };
            if p == proto::UDP && c == 0 {
                // No checksum (IPv4): it stays absent.
                return Some(ch);
            }
            let mut n = addr_update(c, old, new);
            if let (Some(was), Some(port)) = (old_port, port) {
                n = update16(n, was, port);
            }
            if p == proto::UDP && n == 0 {
                n = 0xffff;
            }
            wr16(d, at, n)?;
            ch.check = Some((c, n));
        }
        proto::ICMP | proto::ICMPV6 if (p == proto::ICMPV6) == (N == 16) => {
            let ty = *d.get(l4)?;
            let at = off(l4, 2)?;
            let c = rd16(d, at)?;
            let mut n = c;
            if N == 16 {
                // The ICMPv6 checksum covers the pseudo-header.
                n = addr_update(n, old, new);
            }
            if let Some(port) = port
                && is_query::<N>(ty)
            {
                let old_id = swap16(d, off(l4, 4)?, port)?;
                ch.port = Some((old_id, port));
                n = update16(n, old_id, port);
            }
            wr16(d, at, n)?;
            ch.check = Some((c, n));
        }
        _ => {}
    }
    Some(ch)
}

/// [`rewrite`] for `N`-byte addresses.
#[inline]
fn rewrite_n<const N: usize>(
    d: &mut [u8],
    at: Layout,
    end: End,
    addr: &[u8; N],
    port: Option<u16>,
) -> Option<()> {
    let old = rewrite_ip(d, at.l3, end, addr)?;
    if at.has_l4 {
        rewrite_l4(d, (at.l4, at.proto), end, (&old, addr), port, true)?;
    }
    Some(())
}

/// [`translate_icmp_error`] for `N`-byte addresses, `d` ending with the outer IP packet.
fn translate_n<const N: usize>(
    d: &mut [u8],
    at: Layout,
    end: End,
    addr: &[u8; N],
    port: Option<u16>,
) -> Result<(), RewriteError> {
    use RewriteError::Truncated as T;
    let icmp_check = off(at.l4, 2).ok_or(T)?;
    let q = off(at.l4, 8).ok_or(T)?;
    let old_outer = rewrite_ip(d, at.l3, end, addr).ok_or(T)?;
    let mut c = rd16(d, icmp_check).ok_or(T)?;
    if N == 16 {
        c = addr_update(c, &old_outer, addr);
    }

    // The quoted IP header.
    let inner = end.other();
    let inner_at = off(q, addr_offset::<N>(inner)).ok_or(T)?;
    let old_inner = swap_addr(d, inner_at, addr).ok_or(T)?;
    c = addr_update(c, &old_inner, addr);
    let (p, il4) = if N == 4 {
        let ihl = usize::from(d.get(q).ok_or(T)? & 0x0f) * 4;
        let ck_at = off(q, 10).ok_or(T)?;
        let old_ck = rd16(d, ck_at).ok_or(T)?;
        let new_ck = addr_update(old_ck, &old_inner, addr);
        wr16(d, ck_at, new_ck).ok_or(T)?;
        c = update16(c, old_ck, new_ck);
        let p = *d.get(off(q, 9).ok_or(T)?).ok_or(T)?;
        (p, off(q, ihl).ok_or(T)?)
    } else {
        let next = *d.get(off(q, 6).ok_or(T)?).ok_or(T)?;
        let ext = d.get(off(q, 40).ok_or(T)?..).ok_or(T)?;
        let chain = walk_extensions(next, ext).map_err(|_| RewriteError::BadQuote)?;
        (chain.upper, off(q, 40 + chain.upper_offset).ok_or(T)?)
    };

    // The quoted transport header: its port (or identifier) and its checksum if quoted.
    let ch = rewrite_l4(d, (il4, p), inner, (&old_inner, addr), port, false).ok_or(T)?;
    wr16(d, icmp_check, ch.apply(c)).ok_or(T)
}

#[cfg(test)]
mod tests;
