//! In-place rewriting of one end (address and port) of a packet, with incremental checksum
//! updates (RFC 1624): the IPv4 header checksum, the TCP/UDP checksum through its
//! pseudo-header and port, the ICMP query identifier with the ICMP checksum (ICMPv6: also
//! its pseudo-header). An UDP checksum of 0 (none, IPv4) stays 0.
//!
//! ICMP errors ([`translate_icmp_error`]) rewrite the outer header's end and the opposite
//! end of the quoted packet, fixing the outer IPv4 checksum, the quoted IPv4 checksum, the
//! quoted transport checksum where the quote holds it, and the ICMP checksum (RFC 5508
//! REQ-4/5).
//!
//! Every offset is checked: a field outside the bytes makes the call return `None` (the
//! caller drops the packet), never panic. Addresses are `N` bytes: 4 (IPv4) or 16 (IPv6).

use nf_core::checksum::{update_bytes, update16, update32};
use nf_core::flow::proto;
use nf_core::wire::icmp::{IcmpKind, classify_v4, classify_v6};
use nf_core::wire::ipv6::walk_extensions;

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The source address and port.
    Src,
    /// The destination address and port.
    Dst,
}

impl End {
    const fn other(self) -> Self {
        match self {
            Self::Src => Self::Dst,
            Self::Dst => Self::Src,
        }
    }
}

/// Where a packet's headers are, from the parse stage's metadata (frame offsets).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub(crate) l3: usize,
    pub(crate) l4: usize,
    pub(crate) proto: u8,
    /// The transport header is present (not a later fragment, parsed).
    pub(crate) has_l4: bool,
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

/// The offset of an address in an IP header of `N`-byte addresses.
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
    let old = swap_addr(d, l3.checked_add(addr_offset::<N>(end))?, addr)?;
    if N == 4 {
        fix(d, l3 + 10, |c| addr_update(c, &old, addr))?;
    }
    Some(old)
}

/// The changes a transport rewrite made to its header's 16-bit words (port or identifier,
/// checksum), for a checksum that covers the header (an ICMP error's quote).
#[derive(Clone, Copy, Debug, Default)]
struct L4Change {
    port: Option<(usize, u16, u16)>,
    check: Option<(usize, u16, u16)>,
}

impl L4Change {
    fn apply(&self, check: u16) -> u16 {
        [self.port, self.check]
            .into_iter()
            .flatten()
            .fold(check, |c, (_, old, new)| update16(c, old, new))
    }
}

/// Rewrites the transport header at `l4` (protocol `p`) for an address change `old → new`
/// at `end` and the new port (TCP/UDP: the port at `end`; ICMP query: the identifier).
/// `need_check`: the checksum field must be present (false inside a short ICMP quote: a
/// TCP checksum beyond the quote is left alone).
#[inline]
fn rewrite_l4<const N: usize>(
    d: &mut [u8],
    l4: usize,
    p: u8,
    end: End,
    (old, new): (&[u8; N], &[u8; N]),
    port: u16,
    need_check: bool,
) -> Option<L4Change> {
    let port_at = match end {
        End::Src => l4,
        End::Dst => l4.checked_add(2)?,
    };
    let mut ch = L4Change::default();
    match p {
        proto::TCP | proto::UDP => {
            let old_port = swap16(d, port_at, port)?;
            ch.port = Some((port_at, old_port, port));
            let at = l4 + if p == proto::TCP { 16 } else { 6 };
            let Some(c) = rd16(d, at) else {
                return if need_check { None } else { Some(ch) };
            };
            if p == proto::UDP && c == 0 {
                // No checksum (IPv4): it stays absent.
                return Some(ch);
            }
            let mut n = update16(addr_update(c, old, new), old_port, port);
            if p == proto::UDP && n == 0 {
                n = 0xffff;
            }
            wr16(d, at, n)?;
            ch.check = Some((at, c, n));
        }
        proto::ICMP | proto::ICMPV6 if (p == proto::ICMPV6) == (N == 16) => {
            let ty = *d.get(l4)?;
            let at = l4 + 2;
            let c = rd16(d, at)?;
            let mut n = c;
            if N == 16 {
                // The ICMPv6 checksum covers the pseudo-header.
                n = addr_update(n, old, new);
            }
            if is_query::<N>(ty) {
                let id_at = l4 + 4;
                let old_id = swap16(d, id_at, port)?;
                ch.port = Some((id_at, old_id, port));
                n = update16(n, old_id, port);
            }
            wr16(d, at, n)?;
            ch.check = Some((at, c, n));
        }
        _ => {}
    }
    Some(ch)
}

/// Rewrites `end` of a packet (its IP header and, if present, its transport header) to
/// `addr` and `port` (ICMP query: the identifier).
#[inline]
pub(crate) fn rewrite<const N: usize>(
    d: &mut [u8],
    at: Layout,
    end: End,
    addr: &[u8; N],
    port: u16,
) -> Option<()> {
    let old = rewrite_ip(d, at.l3, end, addr)?;
    if at.has_l4 {
        rewrite_l4(d, at.l4, at.proto, end, (&old, addr), port, true)?;
    }
    Some(())
}

/// Translates an ICMP error in place: the outer header's `end` becomes `addr`, the quoted
/// packet's other end becomes `addr` and `port` (RFC 5508 REQ-4/5). `ip_end` is where the
/// outer IP packet ends; the quote starts at `at.l4 + 8`.
pub(crate) fn translate_icmp_error<const N: usize>(
    d: &mut [u8],
    at: Layout,
    ip_end: usize,
    end: End,
    addr: &[u8; N],
    port: u16,
) -> Option<()> {
    // Nothing after the IP packet (padding, a trailer) belongs to the quote.
    let d = d.get_mut(..ip_end)?;
    let icmp_check = at.l4.checked_add(2)?;
    let q = at.l4.checked_add(8)?;
    let old_outer = rewrite_ip(d, at.l3, end, addr)?;
    let mut c = rd16(d, icmp_check)?;
    if N == 16 {
        c = addr_update(c, &old_outer, addr);
    }

    // The quoted IP header.
    let inner = end.other();
    let old_inner = swap_addr(d, q.checked_add(addr_offset::<N>(inner))?, addr)?;
    c = addr_update(c, &old_inner, addr);
    let (p, il4) = if N == 4 {
        let ihl = usize::from(d.get(q)? & 0x0f) * 4;
        let ck_at = q + 10;
        let old_ck = rd16(d, ck_at)?;
        let new_ck = addr_update(old_ck, &old_inner, addr);
        wr16(d, ck_at, new_ck)?;
        c = update16(c, old_ck, new_ck);
        (*d.get(q + 9)?, q + ihl)
    } else {
        let chain = walk_extensions(*d.get(q + 6)?, d.get(q + 40..)?).ok()?;
        (chain.upper, q + 40 + chain.upper_offset)
    };

    // The quoted transport header: its port (or identifier) and its checksum if quoted.
    let ch = rewrite_l4(d, il4, p, inner, (&old_inner, addr), port, false)?;
    wr16(d, icmp_check, ch.apply(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_offsets() {
        assert_eq!(addr_offset::<4>(End::Src), 12);
        assert_eq!(addr_offset::<16>(End::Dst), 24);
    }

    #[test]
    fn short_buffers_are_refused_not_indexed() {
        let mut d = [0x45u8; 10];
        let at = Layout {
            l3: 0,
            l4: 20,
            proto: proto::TCP,
            has_l4: true,
        };
        assert!(rewrite(&mut d, at, End::Src, &[1, 2, 3, 4], 7).is_none());
        assert!(translate_icmp_error(&mut d, at, 10, End::Dst, &[1, 2, 3, 4], 7).is_none());
    }
}
