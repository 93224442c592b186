//! Answers built in place: a packet that cannot be forwarded becomes, in its own buffer and
//! without allocating, the answer its sender should get.
//!
//! - [`tcp_reset`]: the RST answering a TCP segment that belongs to no connection (RFC 9293
//!   §3.10.7.1: sequence number from the segment's ACK field, or zero with an ACK of the
//!   segment's sequence number plus its length).
//! - [`icmp_too_big`]: IPv4 destination unreachable, fragmentation needed (type 3 code 4,
//!   the next-hop MTU in the low 16 bits of the rest of header: RFC 792, RFC 1191 §4) or
//!   ICMPv6 packet too big (type 2, the 32-bit MTU: RFC 4443 §3.2), quoting the packet from
//!   its IP header on, as much as fits a 576-byte IPv4 datagram (RFC 1812 §4.3.2.3) or the
//!   1280-byte IPv6 minimum MTU (RFC 4443 §2.4 (c)).
//! - [`icmp_echo_reply`]: the echo reply to a ping of one of the node's addresses.
//! - [`icmp_time_exceeded`]: ICMP time exceeded in transit (IPv4 type 11, ICMPv6 type 3),
//!   for a packet whose TTL or hop limit ran out, quoting it the same way.
//! - [`PmtuStage`]: after a stage that drops packets as [`DropReason::TooBig`] (a tunnel
//!   encapsulation over a smaller underlay MTU), turns those drops into ICMP errors back to
//!   their senders, at most a configured number per second.
//!
//! An answer goes back to the packet's source from its destination (the RST) or from a
//! configured address of the node (the ICMP error). A frame keeps its layer-2 header with
//! the MAC addresses swapped (VLAN tags as they were); the metadata is rewritten to
//! describe the answer as the parse stage would (flow key, offsets, flags, TCP flags, ICMP
//! type), with no session.
//!
//! The answer is addressed from the packet's bytes, as they are when it is answered: after a
//! NAT rewrote the source, an ICMP error goes to the public address and port, and passing it
//! back through the pipeline as a packet received from the outside lets the NAT translate it
//! to the inside sender like any ICMP error that quotes one of its flows (RFC 5508).

use crate::batch::Batch;
use crate::checksum;
use crate::flow::{Family, FlowKey, proto};
use crate::meta::{Meta, flags};
use crate::packet::Packet;
use crate::stage::{Stage, StageControl, StageCounters};
use crate::time::Instant;
use crate::verdict::{DropReason, PortId, Verdict};
use crate::wire::icmp::{ICMP_HEADER_LEN, IcmpRepr};
use crate::wire::ipv4::Ipv4Repr;
use crate::wire::ipv6::{IPV6_HEADER_LEN, Ipv6Repr};
use crate::wire::tcp::{TcpRepr, tcp_flags};
use crate::wire::{Frame, ICMPV4_ERROR_QUOTE_MAX, ICMPV6_ERROR_QUOTE_MAX, IpRepr, TransportRepr};
use core::net::IpAddr;

/// Why a packet was not turned into an answer (the packet is left as it was).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// The packet must not be answered this way: a reset (never answered), a segment that is
    /// not TCP or is a fragment (for a reset); an ICMP error, a later fragment, a source that
    /// is not a unicast address, an IPv4 destination that is multicast or broadcast, or an
    /// IPv4 packet without DF, which may be fragmented instead (for an ICMP error).
    NotAnswerable,
    /// The packet's headers were not parsed, or are shorter than they say.
    Malformed,
    /// The buffer has no room for the answer (only an answer longer than the packet needs
    /// tailroom).
    NoRoom,
    /// The answer's source address is of the other family.
    FamilyMismatch,
}

impl core::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NotAnswerable => "packet not to be answered",
            Self::Malformed => "headers malformed",
            Self::NoRoom => "no room for the answer",
            Self::FamilyMismatch => "source address of the other family",
        })
    }
}

impl core::error::Error for ReplyError {}

/// The IP packet of a parsed frame: where it starts and ends, its family and addresses.
struct Ip {
    v6: bool,
    l3: usize,
    end: usize,
    src: [u8; 16],
    dst: [u8; 16],
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..)?
        .first_chunk::<2>()
        .map(|c| u16::from_be_bytes(*c))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..)?
        .first_chunk::<4>()
        .map(|c| u32::from_be_bytes(*c))
}

/// Reads the IP header the metadata points at (addresses from the bytes: a NAT may have
/// rewritten them since the parse).
fn ip_of(data: &[u8], m: &Meta) -> Result<Ip, ReplyError> {
    if !m.has(flags::L3_VALID) {
        return Err(ReplyError::Malformed);
    }
    let l3 = usize::from(m.l3);
    let h = data.get(l3..).ok_or(ReplyError::Malformed)?;
    let v6 = m.flow.family() == Family::V6;
    let (len, a) = if v6 {
        (be16(h, 4).map(|n| 40 + usize::from(n)), 8)
    } else {
        (be16(h, 2).map(usize::from), 12)
    };
    let len = len.filter(|&n| n <= h.len()).ok_or(ReplyError::Malformed)?;
    let w = if v6 { 16 } else { 4 };
    let (mut src, mut dst) = ([0; 16], [0; 16]);
    let (s, d) = (h.get(a..a + w), h.get(a + w..a + 2 * w));
    match (s, d, src.get_mut(..w), dst.get_mut(..w)) {
        (Some(s), Some(d), Some(so), Some(dst_out)) => {
            so.copy_from_slice(s);
            dst_out.copy_from_slice(d);
        }
        _ => return Err(ReplyError::Malformed),
    }
    Ok(Ip {
        v6,
        l3,
        end: l3 + len,
        src,
        dst,
    })
}

fn v4(a: &[u8; 16]) -> [u8; 4] {
    let [a, b, c, d, ..] = *a;
    [a, b, c, d]
}

fn addr(v6: bool, a: &[u8; 16]) -> IpAddr {
    if v6 {
        IpAddr::from(*a)
    } else {
        IpAddr::from(v4(a))
    }
}

/// Turns a parsed TCP segment into the RST that answers it, from its destination back to its
/// source (RFC 9293 §3.10.7.1): with ACK set, `<SEQ=SEG.ACK><CTL=RST>`; otherwise
/// `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`. IPv4 without options (TTL 64, DF), IPv6
/// without extension headers (hop limit 64); window 0, no options, no data.
///
/// ```
/// use nf_core::reply::tcp_reset;
/// use nf_core::wire::{Frame, tcp::tcp_flags};
/// use nf_core::{Packet, ParseConfig, parse_frame};
/// let seg = Frame::ipv4([10, 0, 0, 2], [198, 51, 100, 9]).tcp(40000, 443, tcp_flags::ACK).to_vec()?;
/// let mut pkt = Packet::with_headroom(&seg, 0);
/// let (data, meta) = pkt.data_and_meta_mut();
/// parse_frame(data, meta, &ParseConfig::default())?;
/// tcp_reset(&mut pkt)?;
/// assert_eq!(pkt.meta.flow.to_string(), "zone 0 tcp/6 198.51.100.9:443 -> 10.0.0.2:40000");
/// assert_eq!(pkt.meta.tcp_flags, tcp_flags::RST);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`ReplyError::NotAnswerable`] for a reset, a fragment, a packet that is not TCP or an
/// address that is not unicast,
/// [`ReplyError::Malformed`] if its headers were not parsed. The packet is unchanged.
pub fn tcp_reset<B: AsRef<[u8]> + AsMut<[u8]>>(pkt: &mut Packet<B>) -> Result<(), ReplyError> {
    let m = pkt.meta;
    if m.flow.proto != proto::TCP || !m.has(flags::L4_VALID) || m.has(flags::FRAGMENT) {
        return Err(ReplyError::NotAnswerable);
    }
    let ip = ip_of(pkt.data(), &m)?;
    if !unicast(addr(ip.v6, &ip.src)) || !unicast(addr(ip.v6, &ip.dst)) {
        return Err(ReplyError::NotAnswerable);
    }
    let seg = pkt
        .data()
        .get(usize::from(m.l4)..ip.end)
        .ok_or(ReplyError::Malformed)?;
    let field = |at| be16(seg, at).ok_or(ReplyError::Malformed);
    let (sport, dport) = (field(0)?, field(2)?);
    let (seq, ack) = match (be32(seg, 4), be32(seg, 8)) {
        (Some(s), Some(a)) => (s, a),
        _ => return Err(ReplyError::Malformed),
    };
    let (off, fl) = match seg.get(12..14) {
        Some(&[o, f]) => (usize::from(o >> 4) * 4, f),
        _ => return Err(ReplyError::Malformed),
    };
    if fl & tcp_flags::RST != 0 {
        return Err(ReplyError::NotAnswerable);
    }
    let data = seg.len().checked_sub(off).ok_or(ReplyError::Malformed)?;
    let len =
        data as u32 + u32::from(fl & tcp_flags::SYN != 0) + u32::from(fl & tcp_flags::FIN != 0);
    let (seq, ack, flags) = if fl & tcp_flags::ACK != 0 {
        (ack, 0, tcp_flags::RST)
    } else {
        (0, seq.wrapping_add(len), tcp_flags::RST | tcp_flags::ACK)
    };
    let mut frame = Frame::new(ip_repr(&ip, ip.dst)).without_ethernet();
    frame.transport = TransportRepr::Tcp(TcpRepr {
        src_port: dport,
        dst_port: sport,
        seq,
        ack,
        flags,
        window: 0,
        ..TcpRepr::default()
    });
    let out = pkt
        .data_mut()
        .get_mut(ip.l3..)
        .ok_or(ReplyError::Malformed)?;
    let n = frame.emit(out).map_err(|_| ReplyError::NoRoom)?;
    let key = FlowKey::from_addrs(
        m.flow.zone,
        addr(ip.v6, &ip.dst),
        addr(ip.v6, &ip.src),
        proto::TCP,
        dport,
        sport,
    );
    finish(pkt, &ip, n, key)?;
    let hl = if ip.v6 { IPV6_HEADER_LEN } else { 20 };
    let meta = &mut pkt.meta;
    meta.l4 = meta.l3.saturating_add(hl as u16);
    meta.payload = meta.l4.saturating_add(20);
    meta.flags |= flags::L4_VALID;
    meta.tcp_flags = flags;
    Ok(())
}

/// The IP header of an answer to `ip` from `src` (protocol and length filled by the emit).
fn ip_repr(ip: &Ip, src: [u8; 16]) -> IpRepr {
    if ip.v6 {
        IpRepr::V6(Ipv6Repr {
            src,
            dst: ip.src,
            ..Ipv6Repr::default()
        })
    } else {
        IpRepr::V4(Ipv4Repr {
            src: v4(&src),
            dst: v4(&ip.src),
            ..Ipv4Repr::default()
        })
    }
}

/// Ends an answer of `n` bytes from the IP header on: cuts the frame there, swaps the MAC
/// addresses, and makes the metadata describe the answer (`key`, no session, no hash).
fn finish<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
    ip: &Ip,
    n: usize,
    key: Option<FlowKey>,
) -> Result<(), ReplyError> {
    let key = key.ok_or(ReplyError::Malformed)?;
    let cut = pkt.len().saturating_sub(ip.l3 + n);
    pkt.trim_back(cut).map_err(|_| ReplyError::Malformed)?;
    if !pkt.meta.has(flags::NO_L2)
        && ip.l3 >= 14
        && let Some(macs) = pkt.data_mut().first_chunk_mut::<12>()
    {
        let (dst, src) = macs.split_at_mut(6);
        dst.swap_with_slice(src);
    }
    let meta = &mut pkt.meta;
    // Headers pushed in front moved the offsets: the answer's IP header is where the
    // packet's was.
    meta.l3 = ip.l3 as u16;
    if ip.l3 == 0 {
        // A bare IP packet (a stage stripped the layer-2 header): say so to the parser.
        meta.flags |= flags::NO_L2;
    }
    meta.flow = key;
    meta.session = None;
    meta.flags &= flags::NO_L2 | flags::VLAN | flags::L3_VALID;
    meta.tcp_flags = 0;
    meta.icmp_type = 0;
    Ok(())
}

/// True for an address an ICMP error may be sent to: not unspecified, loopback, multicast
/// or (IPv4) limited broadcast or class E.
fn unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.octets()[0] >= 240)
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_loopback() || a.is_multicast()),
    }
}

/// Turns a parsed IP packet into the ICMP error telling its sender that it is too big for
/// a next hop of `mtu` bytes: from `from` (an address of this node, of the packet's family)
/// to the packet's source; IPv4 fragmentation needed (type 3 code 4, the MTU in the low 16
/// bits of the rest of header, RFC 1191 §4) or ICMPv6 packet too big (type 2 code 0, the
/// 32-bit MTU, RFC 4443 §3.2), quoting the packet from its IP header on, cut to
/// [`ICMPV4_ERROR_QUOTE_MAX`] or [`ICMPV6_ERROR_QUOTE_MAX`] bytes. IPv4: TTL 64, DF, TOS
/// 0xc0 (RFC 1812 §4.3.2.5); IPv6: hop limit 64.
///
/// ```
/// use nf_core::reply::icmp_too_big;
/// use nf_core::wire::Frame;
/// use nf_core::{Packet, ParseConfig, flags, parse_frame};
/// let big = Frame::ipv4([10, 0, 0, 2], [198, 51, 100, 9]).udp(40000, 443).payload(&[0; 1472]).to_vec()?;
/// let mut pkt = Packet::with_headroom(&big, 0);
/// let (data, meta) = pkt.data_and_meta_mut();
/// parse_frame(data, meta, &ParseConfig::default())?;
/// icmp_too_big(&mut pkt, "10.0.0.1".parse()?, 1450)?;
/// assert_eq!(pkt.len(), 14 + 576); // a 576-byte IPv4 datagram
/// assert!(pkt.meta.has(flags::ICMP_ERROR));
/// assert_eq!(pkt.data()[14 + 20 + 6..][..2], 1450u16.to_be_bytes());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`ReplyError::NotAnswerable`] (see there), [`ReplyError::FamilyMismatch`],
/// [`ReplyError::Malformed`], [`ReplyError::NoRoom`]. The packet is unchanged.
pub fn icmp_too_big<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
    from: IpAddr,
    mtu: u32,
) -> Result<(), ReplyError> {
    let v4 = IcmpRepr {
        ty: 3,
        code: 4,
        seq: u16::try_from(mtu).unwrap_or(u16::MAX),
        ..IcmpRepr::default()
    };
    let v6 = IcmpRepr {
        ty: 2,
        ident: (mtu >> 16) as u16,
        seq: mtu as u16,
        ..IcmpRepr::default()
    };
    icmp_error(pkt, from, [v4, v6], true)
}

/// Turns a parsed IP packet into the ICMP error telling its sender that its flow is refused:
/// destination unreachable, communication administratively prohibited (IPv4 type 3 code
/// 13, RFC 1812 §5.2.7.1; ICMPv6 type 1 code 1, RFC 4443 §3.1), what a NAT sends when it
/// cannot create a session for lack of resources (RFC 5508 REQ-8). From `from` to the
/// packet's source, quoting it like [`icmp_too_big`]; a quote that is the whole packet needs
/// room for the new headers in the headroom or the tailroom.
///
/// # Errors
/// As [`icmp_too_big`], but DF does not matter.
pub fn icmp_prohibited<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
    from: IpAddr,
) -> Result<(), ReplyError> {
    let v4 = IcmpRepr {
        ty: 3,
        code: 13,
        ..IcmpRepr::default()
    };
    let v6 = IcmpRepr {
        ty: 1,
        code: 1,
        ..IcmpRepr::default()
    };
    icmp_error(pkt, from, [v4, v6], false)
}

/// Turns a parsed ICMP echo request (ICMPv6 echo request) to this node into its echo reply,
/// in place: addresses swapped, type 0 (ICMPv6 129), identifier, sequence number and data
/// kept, the checksum updated (RFC 792; RFC 4443 §4.2; RFC 1624); IPv4 TTL (hop limit) 64
/// and the header checksum recomputed, options kept. What a router answers for its own
/// addresses (RFC 1812 §4.3.3.6).
///
/// ```
/// use nf_core::reply::icmp_echo_reply;
/// use nf_core::wire::{Frame, icmp::IcmpRepr};
/// use nf_core::{Packet, ParseConfig, parse_frame};
/// let echo = IcmpRepr { ty: 8, ident: 0x1234, seq: 1, ..IcmpRepr::default() };
/// let ping = Frame::ipv4([10, 0, 0, 2], [10, 0, 0, 1]).icmp(echo).payload(b"hello").to_vec()?;
/// let mut pkt = Packet::with_headroom(&ping, 0);
/// let (data, meta) = pkt.data_and_meta_mut();
/// parse_frame(data, meta, &ParseConfig::default())?;
/// icmp_echo_reply(&mut pkt)?;
/// let ip = &pkt.data()[14..];
/// assert_eq!((&ip[12..16], &ip[16..20]), (&[10, 0, 0, 1][..], &[10, 0, 0, 2][..]));
/// assert_eq!(ip[20], 0); // echo reply
/// assert_eq!(&ip[28..], b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`ReplyError::NotAnswerable`] for anything but an echo request (code 0) from a unicast
/// source, or a fragment of one; [`ReplyError::Malformed`] if its headers were not parsed.
/// The packet is unchanged.
pub fn icmp_echo_reply<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
) -> Result<(), ReplyError> {
    let m = pkt.meta;
    let (request, reply, icmp) = match m.flow.family() {
        Family::V4 => (8u8, 0u8, proto::ICMP),
        Family::V6 => (128, 129, proto::ICMPV6),
    };
    if m.flow.proto != icmp || !m.has(flags::L4_VALID) || m.has(flags::FRAGMENT) {
        return Err(ReplyError::NotAnswerable);
    }
    let ip = ip_of(pkt.data(), &m)?;
    let l4 = usize::from(m.l4);
    match pkt.data().get(l4..l4 + 4) {
        Some(&[t, 0, _, _]) if t == request && l4 + 8 <= ip.end => {}
        Some(_) => return Err(ReplyError::NotAnswerable),
        None => return Err(ReplyError::Malformed),
    }
    if !unicast(addr(ip.v6, &ip.src)) {
        return Err(ReplyError::NotAnswerable);
    }
    let d = pkt.data_mut();
    let h = d.get_mut(ip.l3..ip.end).ok_or(ReplyError::Malformed)?;
    if ip.v6 {
        let (a, b) = h
            .get_mut(8..40)
            .ok_or(ReplyError::Malformed)?
            .split_at_mut(16);
        a.swap_with_slice(b);
        if let Some(hop) = h.get_mut(7) {
            *hop = 64;
        }
    } else {
        let ihl = usize::from(h.first().map_or(0, |v| v & 0x0f)) * 4;
        let (a, b) = h
            .get_mut(12..20)
            .ok_or(ReplyError::Malformed)?
            .split_at_mut(4);
        a.swap_with_slice(b);
        let hdr = h.get_mut(..ihl).ok_or(ReplyError::Malformed)?;
        if let Some(ttl) = hdr.get_mut(8) {
            *ttl = 64;
        }
        if let Some(c) = hdr.get_mut(10..12) {
            c.fill(0);
        }
        let check = checksum::checksum(hdr);
        if let Some(c) = hdr.get_mut(10..12) {
            c.copy_from_slice(&check.to_be_bytes());
        }
    }
    // The type, in the checksummed word (type, code); the swapped addresses leave an
    // ICMPv6 pseudo-header's sum as it was.
    let Some([ty, code, c0, c1]) = d.get_mut(l4..).and_then(|t| t.first_chunk_mut::<4>()) else {
        return Err(ReplyError::Malformed);
    };
    let old = u16::from_be_bytes([*ty, *code]);
    let check = checksum::update16(u16::from_be_bytes([*c0, *c1]), old, u16::from(reply) << 8);
    *ty = reply;
    [*c0, *c1] = check.to_be_bytes();
    let key = m.flow.reversed();
    finish(pkt, &ip, ip.end - ip.l3, Some(key))?;
    let meta = &mut pkt.meta;
    meta.l4 = m.l4;
    meta.payload = m.payload;
    meta.flags |= flags::L4_VALID;
    meta.icmp_type = reply;
    Ok(())
}

/// Turns a parsed IP packet whose TTL (hop limit) ran out at this node into the ICMP error
/// that tells its sender: time exceeded in transit (IPv4 type 11 code 0, RFC 792 and RFC
/// 1812 §4.3.2.4 — what traceroute reads; ICMPv6 type 3 code 0, RFC 4443 §3.3). From `from`
/// to the packet's source, quoting it like [`icmp_too_big`].
///
/// ```
/// use nf_core::reply::icmp_time_exceeded;
/// use nf_core::wire::Frame;
/// use nf_core::{Packet, ParseConfig, flags, parse_frame};
/// let probe = Frame::ipv4([10, 0, 0, 2], [198, 51, 100, 9]).udp(40000, 33434).to_vec()?;
/// let mut pkt = Packet::with_headroom(&probe, 64);
/// let (data, meta) = pkt.data_and_meta_mut();
/// parse_frame(data, meta, &ParseConfig::default())?;
/// icmp_time_exceeded(&mut pkt, "10.0.0.1".parse()?)?;
/// assert!(pkt.meta.has(flags::ICMP_ERROR));
/// assert_eq!(pkt.data()[14 + 20], 11); // time exceeded
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`icmp_too_big`], but DF does not matter.
pub fn icmp_time_exceeded<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
    from: IpAddr,
) -> Result<(), ReplyError> {
    let v4 = IcmpRepr {
        ty: 11,
        ..IcmpRepr::default()
    };
    let v6 = IcmpRepr {
        ty: 3,
        ..IcmpRepr::default()
    };
    icmp_error(pkt, from, [v4, v6], false)
}

/// The ICMP error `[v4, v6]` (type, code, rest of header) about a parsed packet, in place
/// (see [`icmp_too_big`]); `df`: IPv4 packets without DF are not answered.
fn icmp_error<B: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<B>,
    from: IpAddr,
    [icmp4, icmp6]: [IcmpRepr; 2],
    df: bool,
) -> Result<(), ReplyError> {
    let m = pkt.meta;
    let ip = ip_of(pkt.data(), &m)?;
    let (src, dst) = (addr(ip.v6, &ip.src), addr(ip.v6, &ip.dst));
    if from.is_ipv6() != ip.v6 {
        return Err(ReplyError::FamilyMismatch);
    }
    let h = pkt.data().get(ip.l3..ip.end).ok_or(ReplyError::Malformed)?;
    // IPv4: to a unicast destination (RFC 1812 §4.3.2.7), DF set if asked (else the packet
    // may be fragmented); IPv6 answers multicast destinations too (RFC 4443 §2.4 (e.3)).
    let v4_ok = |d: IpAddr| {
        (!df || h.get(6).is_some_and(|f| f & 0x40 != 0))
            && unicast(d)
            && d != IpAddr::from([255; 4])
    };
    if m.flags & (flags::ICMP_ERROR | flags::LATER_FRAGMENT) != 0
        || !unicast(src)
        || (!ip.v6 && !v4_ok(dst))
    {
        return Err(ReplyError::NotAnswerable);
    }
    let (hl, max) = if ip.v6 {
        (IPV6_HEADER_LEN, ICMPV6_ERROR_QUOTE_MAX)
    } else {
        (20, ICMPV4_ERROR_QUOTE_MAX)
    };
    let quote = (ip.end - ip.l3).min(max);
    let head = hl + ICMP_HEADER_LEN;
    let total = ip.l3 + head + quote;
    if total > pkt.len() {
        // The whole packet is quoted: new headers in front of it (headroom, the layer-2
        // header moved forward) or the packet moved back (tailroom).
        if pkt.headroom() >= head {
            pkt.push_front(head).map_err(|_| ReplyError::NoRoom)?;
            let d = pkt.data_mut();
            if ip.l3 + head <= d.len() {
                d.copy_within(head..head + ip.l3, 0);
            }
        } else {
            let grow = total - pkt.len();
            pkt.push_back(grow).map_err(|_| ReplyError::NoRoom)?;
            let d = pkt.data_mut();
            if total > d.len() {
                return Err(ReplyError::NoRoom);
            }
            d.copy_within(ip.l3..ip.l3 + quote, ip.l3 + head);
        }
    } else {
        // The quote moves behind the new headers (memmove: the ranges overlap).
        let d = pkt.data_mut();
        if total <= d.len() {
            d.copy_within(ip.l3..ip.l3 + quote, ip.l3 + head);
        }
    }
    let d = pkt.data_mut();
    let payload = (ICMP_HEADER_LEN + quote) as u16;
    let mut from_raw = [0; 16];
    match from {
        IpAddr::V4(a) => {
            if let Some(c) = from_raw.first_chunk_mut::<4>() {
                *c = a.octets();
            }
        }
        IpAddr::V6(a) => from_raw = a.octets(),
    }
    let (ip_hdr, icmp) = match ip_repr(&ip, from_raw) {
        IpRepr::V4(r) => (
            IpRepr::V4(Ipv4Repr {
                proto: proto::ICMP,
                dscp_ecn: 0xc0,
                payload_len: payload,
                ..r
            }),
            icmp4,
        ),
        IpRepr::V6(r) => (
            IpRepr::V6(Ipv6Repr {
                next_header: proto::ICMPV6,
                payload_len: payload,
                ..r
            }),
            icmp6,
        ),
    };
    let out = d.get_mut(ip.l3..total).ok_or(ReplyError::NoRoom)?;
    let written = match ip_hdr {
        IpRepr::V4(r) => r.emit(out),
        IpRepr::V6(r) => r.emit(out),
    };
    let l4 = written
        .ok()
        .and_then(|_| out.get_mut(hl..))
        .ok_or(ReplyError::NoRoom)?;
    IcmpRepr {
        checksum: 0,
        ..icmp
    }
    .emit(l4)
    .map_err(|_| ReplyError::NoRoom)?;
    let start = if ip.v6 {
        ip_hdr.pseudo_header(proto::ICMPV6, payload)
    } else {
        0
    };
    let sum = checksum::finish(checksum::sum(start, l4));
    if let Some(c) = l4.get_mut(2..4) {
        c.copy_from_slice(&sum.to_be_bytes());
    }
    let icmp_proto = if ip.v6 { proto::ICMPV6 } else { proto::ICMP };
    let key = FlowKey::from_addrs(m.flow.zone, from, src, icmp_proto, 0, 0);
    finish(pkt, &ip, head + quote, key)?;
    let meta = &mut pkt.meta;
    meta.l4 = meta.l3.saturating_add(hl as u16);
    meta.payload = meta.l4.saturating_add(ICMP_HEADER_LEN as u16);
    meta.flags |= flags::L4_VALID | flags::ICMP_ERROR;
    meta.icmp_type = icmp.ty;
    Ok(())
}

/// A token bucket bounding how many answers a stage or service sends: `per_second` on
/// average, `burst` at once (in thousandths of a token, so low rates refill smoothly). The
/// general rate limiters and meters for traffic are nf-policy's; this one only bounds what
/// a node says back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyBucket {
    per_second: u32,
    burst: u32,
    /// Tokens in thousandths.
    tokens: u64,
    last: Option<Instant>,
}

impl ReplyBucket {
    /// A full bucket.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst as u64 * 1000,
            last: None,
        }
    }

    /// Refills the bucket up to `now` and takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let cap = u64::from(self.burst) * 1000;
        if let Some(last) = self.last {
            let ms = now.saturating_since(last).as_nanos() / 1_000_000;
            let add = ms.saturating_mul(u64::from(self.per_second));
            if add > 0 {
                self.tokens = self.tokens.saturating_add(add).min(cap);
                self.last = Some(now);
            }
        } else {
            self.last = Some(now);
        }
        if self.tokens >= 1000 {
            self.tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for an answer that was not sent after all.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1000).min(u64::from(self.burst) * 1000);
    }
}

/// Where a node's own ICMP errors come from and go, and how many it sends: the answers of
/// [`PmtuStage`], or of a NAT refusing flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IcmpOrigin {
    /// The source of IPv4 errors, an address of the node (`None`: IPv4 packets are not
    /// answered).
    pub from_v4: Option<IpAddr>,
    /// The source of IPv6 errors (`None`: IPv6 packets are not answered).
    pub from_v6: Option<IpAddr>,
    /// The verdict's port: where the errors go (towards the senders).
    pub port: PortId,
    /// Errors sent per second at most, on average.
    pub per_second: u32,
    /// Errors sent in a burst at most.
    pub burst: u32,
}

impl IcmpOrigin {
    /// Errors from `from_v4` / `from_v6`, sent on `port`, at most 100 per second in bursts
    /// of 50.
    pub const fn new(from_v4: Option<IpAddr>, from_v6: Option<IpAddr>, port: PortId) -> Self {
        Self {
            from_v4,
            from_v6,
            port,
            per_second: 100,
            burst: 50,
        }
    }

    /// Sets the rate limit: `per_second` on average, `burst` at once.
    #[must_use]
    pub const fn with_rate(mut self, per_second: u32, burst: u32) -> Self {
        self.per_second = per_second;
        self.burst = burst;
        self
    }

    /// The source of errors about packets of `family` (`None`: not answered).
    pub fn from(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.from_v4.filter(IpAddr::is_ipv4),
            Family::V6 => self.from_v6.filter(IpAddr::is_ipv6),
        }
    }

    /// A full bucket of this origin's rate.
    pub const fn bucket(&self) -> ReplyBucket {
        ReplyBucket::new(self.per_second, self.burst)
    }
}

/// What a [`PmtuStage`] did, by stable names through [`StageControl::visit_counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PmtuCounters {
    /// `too_big` drops turned into ICMP errors.
    pub sent: u64,
    /// `too_big` drops left dropped because the rate limit was reached.
    pub rate_limited: u64,
    /// `too_big` drops left dropped because they must not be answered (no source address of
    /// their family configured, or [`ReplyError::NotAnswerable`]).
    pub not_answerable: u64,
    /// `too_big` drops left dropped because they were malformed or had no room.
    pub failed: u64,
}

/// Turns packets dropped as [`DropReason::TooBig`] by an earlier stage into ICMP errors to
/// their senders ([`icmp_too_big`]), from and to where its [`IcmpOrigin`] says, within its
/// rate (sent with [`Verdict::Tx`] on the origin's port).
///
/// Unlike other stages it works on packets already decided: only `too_big` drops, which
/// leave the batch as errors or stay dropped; its common counters count those packets
/// (`packets`) and the errors sent (`tx`).
///
/// ```
/// use nf_core::reply::{IcmpOrigin, PmtuStage};
/// use nf_core::wire::Frame;
/// use nf_core::{Batch, DropReason, Instant, Packet, ParseStage, PortId, Stage, Verdict};
/// let mut parse = ParseStage::default();
/// let mut pmtu = PmtuStage::new(1400, IcmpOrigin::new(Some("10.0.0.1".parse()?), None, PortId(0)));
/// let big = Frame::ipv4([10, 0, 0, 2], [198, 51, 100, 9]).udp(1, 2).payload(&[0; 1472]).to_vec()?;
/// let mut batch = Batch::new();
/// batch.push(Packet::with_headroom(&big, 0)).ok();
/// parse.process(Instant::ZERO, &mut batch);
/// // What an encapsulation stage over a 1450-byte underlay would do:
/// batch.set_verdict(0, Verdict::Drop(DropReason::TooBig));
/// pmtu.process(Instant::ZERO, &mut batch);
/// assert_eq!(batch.packets()[0].meta.verdict, Verdict::Tx(PortId(0)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct PmtuStage {
    mtu: u32,
    origin: IcmpOrigin,
    bucket: ReplyBucket,
    pmtu: PmtuCounters,
    counters: StageCounters,
}

impl PmtuStage {
    /// A stage reporting a next-hop MTU of `mtu` (for a tunnel: the underlay MTU less the
    /// encapsulation's headers), with a full bucket.
    pub fn new(mtu: u32, origin: IcmpOrigin) -> Self {
        Self {
            mtu,
            origin,
            bucket: origin.bucket(),
            pmtu: PmtuCounters::default(),
            counters: StageCounters::default(),
        }
    }

    /// What the stage did.
    pub fn pmtu_counters(&self) -> &PmtuCounters {
        &self.pmtu
    }

    /// Answers one `too_big` drop, or leaves it dropped.
    fn answer<B: AsRef<[u8]> + AsMut<[u8]>>(&mut self, now: Instant, pkt: &mut Packet<B>) {
        let Some(from) = self.origin.from(pkt.meta.flow.family()) else {
            self.pmtu.not_answerable += 1;
            return;
        };
        if !self.bucket.take(now) {
            self.pmtu.rate_limited += 1;
            return;
        }
        match icmp_too_big(pkt, from, self.mtu) {
            Ok(()) => {
                self.pmtu.sent += 1;
                self.counters.tx += 1;
                pkt.meta.verdict = Verdict::Tx(self.origin.port);
            }
            Err(ReplyError::NotAnswerable | ReplyError::FamilyMismatch) => {
                self.bucket.give_back();
                self.pmtu.not_answerable += 1;
            }
            Err(_) => {
                self.bucket.give_back();
                self.pmtu.failed += 1;
            }
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Stage<B> for PmtuStage {
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        self.counters.batches += 1;
        for pkt in batch.packets_mut() {
            if pkt.meta.verdict == Verdict::Drop(DropReason::TooBig) {
                self.counters.packets += 1;
                self.answer(now, pkt);
            }
        }
    }
}

impl StageControl for PmtuStage {
    fn name(&self) -> &'static str {
        "pmtu"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        let name = self.name();
        self.counters.visit(name, f);
        let c = &self.pmtu;
        for (n, v) in [
            ("icmp_too_big_sent", c.sent),
            ("rate_limited", c.rate_limited),
            ("not_answerable", c.not_answerable),
            ("failed", c.failed),
        ] {
            f(name, n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{ParseConfig, parse_frame};
    use crate::time::Duration;
    use crate::wire::icmp::IcmpRepr;
    use alloc::vec::Vec;
    use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};

    fn parsed(frame: &[u8], headroom: usize) -> Packet<Vec<u8>> {
        let mut p = Packet::with_headroom(frame, headroom);
        let (d, m) = p.data_and_meta_mut();
        parse_frame(d, m, &ParseConfig::default()).unwrap();
        p
    }

    fn big_v4(df: bool) -> Vec<u8> {
        let mut f = Frame::ipv4([10, 0, 0, 2], [198, 51, 100, 9])
            .ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .udp(40000, 443)
            .payload(&[7; 1472]);
        if let IpRepr::V4(r) = &mut f.ip {
            r.dont_frag = df;
        }
        f.to_vec().unwrap()
    }

    #[test]
    fn fragmentation_needed_is_what_etherparse_reads() {
        let frame = big_v4(true);
        let mut p = parsed(&frame, 0);
        icmp_too_big(&mut p, IpAddr::from([10, 0, 0, 1]), 1400).unwrap();
        assert_eq!(p.len(), 14 + 576);
        // Sent by ..:02 to ..:01; the answer goes from ..:01 back to ..:02.
        assert_eq!(p.data()[..12], [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        let s = SlicedPacket::from_ethernet(p.data()).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!("not IPv4")
        };
        let h = ip.header();
        assert_eq!(
            (h.source(), h.destination()),
            ([10, 0, 0, 1], [10, 0, 0, 2])
        );
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
        let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
            panic!("not ICMP")
        };
        assert_eq!(
            icmp.checksum(),
            icmp.icmp_type().calc_checksum(icmp.payload())
        );
        match icmp.icmp_type() {
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
            ) => assert_eq!(next_hop_mtu, 1400),
            t => panic!("{t:?}"),
        }
        // The quote: the packet from its IP header on, cut to 576 bytes in all.
        assert_eq!(icmp.payload(), &frame[14..14 + ICMPV4_ERROR_QUOTE_MAX]);
        // The metadata describes the error as the parse stage would.
        let mut again = Meta::default();
        parse_frame(p.data(), &mut again, &ParseConfig::default()).unwrap();
        assert_eq!(
            (again.flow, again.flags, again.l4),
            (p.meta.flow, p.meta.flags, p.meta.l4)
        );
    }

    /// Echo replies to pings of both families: what etherparse reads (checksums, types,
    /// identifier, sequence, data), MACs swapped; anything else is not answered.
    #[test]
    fn echo_replies_are_what_etherparse_reads() {
        let a6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let b6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        for (v6, ty) in [(false, 8u8), (true, 128)] {
            let echo = IcmpRepr {
                ty,
                ident: 0x1234,
                seq: 7,
                ..IcmpRepr::default()
            };
            let f = if v6 {
                Frame::ipv6(a6, b6)
            } else {
                Frame::ipv4([10, 0, 0, 2], [10, 0, 0, 1])
            };
            let frame = f
                .ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                .icmp(echo)
                .payload(b"ping data")
                .to_vec()
                .unwrap();
            let mut p = parsed(&frame, 0);
            icmp_echo_reply(&mut p).unwrap();
            assert_eq!(p.data()[..12], [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
            let s = SlicedPacket::from_ethernet(p.data()).unwrap();
            match (&s.net, &s.transport) {
                (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
                    let h = ip.header();
                    assert_eq!(
                        (h.source(), h.destination()),
                        ([10, 0, 0, 1], [10, 0, 0, 2])
                    );
                    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                    assert_eq!(
                        icmp.checksum(),
                        icmp.icmp_type().calc_checksum(icmp.payload())
                    );
                    match icmp.icmp_type() {
                        Icmpv4Type::EchoReply(e) => assert_eq!((e.id, e.seq), (0x1234, 7)),
                        t => panic!("{t:?}"),
                    }
                    assert_eq!(icmp.payload(), b"ping data");
                }
                (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
                    let h = ip.header();
                    assert_eq!((h.source(), h.destination()), (b6, a6));
                    let want = icmp
                        .icmp_type()
                        .calc_checksum(b6, a6, icmp.payload())
                        .unwrap();
                    assert_eq!(icmp.checksum(), want);
                    match icmp.icmp_type() {
                        Icmpv6Type::EchoReply(e) => assert_eq!((e.id, e.seq), (0x1234, 7)),
                        t => panic!("{t:?}"),
                    }
                }
                other => panic!("{other:?}"),
            }
            drop(s);
            assert_eq!(p.meta.flow, parsed(&frame, 0).meta.flow.reversed());
            // The reply is not answered again.
            assert_eq!(icmp_echo_reply(&mut p), Err(ReplyError::NotAnswerable));
        }
        let mut udp = parsed(&big_v4(true), 0);
        assert_eq!(icmp_echo_reply(&mut udp), Err(ReplyError::NotAnswerable));
    }

    #[test]
    fn time_exceeded_is_what_etherparse_reads() {
        let frame = big_v4(false);
        let mut p = parsed(&frame, 0);
        icmp_time_exceeded(&mut p, IpAddr::from([10, 0, 0, 1])).unwrap();
        let s = SlicedPacket::from_ethernet(p.data()).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
            panic!("not ICMP")
        };
        assert_eq!(
            icmp.checksum(),
            icmp.icmp_type().calc_checksum(icmp.payload())
        );
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit)
        );
        assert_eq!(icmp.payload(), &frame[14..14 + ICMPV4_ERROR_QUOTE_MAX]);
        let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let dst = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        let six = Frame::ipv6(src, dst).udp(40000, 443).to_vec().unwrap();
        let mut p = parsed(&six, 64);
        let from = IpAddr::from([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        icmp_time_exceeded(&mut p, from).unwrap();
        let s = SlicedPacket::from_ethernet(p.data()).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = &s.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv6Type::TimeExceeded(etherparse::icmpv6::TimeExceededCode::HopLimitExceeded)
        );
        assert_eq!(icmp.payload(), &six[14..]);
        drop(s);
        // Errors are not answered.
        assert_eq!(
            icmp_time_exceeded(&mut p, from),
            Err(ReplyError::NotAnswerable)
        );
    }

    #[test]
    fn packet_too_big_is_what_etherparse_reads() {
        let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let dst = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        let frame = Frame::ipv6(src, dst)
            .udp(40000, 443)
            .payload(&[7; 1452])
            .to_vec()
            .unwrap();
        let mut p = parsed(&frame, 0);
        let from: IpAddr = "fd00::1".parse().unwrap();
        icmp_too_big(&mut p, from, 1400).unwrap();
        assert_eq!(p.len(), 14 + 1280);
        let s = SlicedPacket::from_ethernet(p.data()).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &s.net else {
            panic!("not IPv6")
        };
        assert_eq!(ip.header().destination(), src);
        let Some(TransportSlice::Icmpv6(icmp)) = &s.transport else {
            panic!("not ICMPv6")
        };
        let h = ip.header();
        let want = icmp
            .icmp_type()
            .calc_checksum(h.source(), h.destination(), icmp.payload())
            .unwrap();
        assert_eq!(icmp.checksum(), want);
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1400 });
        assert_eq!(icmp.payload(), &frame[14..14 + ICMPV6_ERROR_QUOTE_MAX]);
    }

    #[test]
    fn a_short_packet_grows_into_the_tailroom_or_is_refused() {
        let frame = Frame::ipv4([10, 0, 0, 2], [198, 51, 100, 9])
            .udp(40000, 443)
            .to_vec()
            .unwrap();
        let from = IpAddr::from([10, 0, 0, 1]);
        // No tailroom: refused, unchanged.
        let mut p = parsed(&frame, 0);
        assert_eq!(icmp_too_big(&mut p, from, 1400), Err(ReplyError::NoRoom));
        assert_eq!(p.data(), &frame[..]);
        // With tailroom: the whole packet is quoted.
        let mut buf = frame.clone();
        buf.resize(256, 0);
        let mut p = Packet::new(buf, 0, frame.len()).unwrap();
        let (d, m) = p.data_and_meta_mut();
        parse_frame(d, m, &ParseConfig::default()).unwrap();
        icmp_too_big(&mut p, from, 1400).unwrap();
        assert_eq!(&p.data()[14 + 28..], &frame[14..]);
    }

    #[test]
    fn a_packet_whose_layer_2_was_stripped_is_answered_bare() {
        // What an encapsulation carrying IP (not Ethernet) leaves when it refuses a packet.
        let mut p = parsed(&big_v4(true), 0);
        p.pull_front(14).unwrap();
        icmp_too_big(&mut p, IpAddr::from([10, 0, 0, 1]), 1400).unwrap();
        assert!(p.meta.has(flags::NO_L2));
        assert_eq!((p.len(), p.data()[0], p.data()[20]), (576, 0x45, 3));
    }

    #[test]
    fn prohibited_quotes_a_whole_short_packet_using_the_headroom() {
        for v6 in [false, true] {
            let frame = segment(v6, tcp_flags::SYN, 1000, 0, b"");
            let mut p = parsed(&frame, 64);
            let from: IpAddr = if v6 {
                "fd00::1".parse().unwrap()
            } else {
                [10, 0, 0, 1].into()
            };
            icmp_prohibited(&mut p, from).unwrap();
            let s = SlicedPacket::from_ethernet(p.data()).unwrap();
            let (ty, payload) = match (&s.net, &s.transport) {
                (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(i))) => {
                    let h = ip.header();
                    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                    assert_eq!(i.checksum(), i.icmp_type().calc_checksum(i.payload()));
                    ((i.type_u8(), i.code_u8()), i.payload())
                }
                (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(i))) => {
                    let h = ip.header();
                    assert!(i.is_checksum_valid(h.source(), h.destination()));
                    ((i.type_u8(), i.code_u8()), i.payload())
                }
                _ => panic!("not an ICMP error"),
            };
            assert_eq!(ty, if v6 { (1, 1) } else { (3, 13) });
            assert_eq!(payload, &frame[14..], "the whole packet is quoted");
            assert_eq!(p.data()[..12], [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
            let mut again = Meta::default();
            parse_frame(p.data(), &mut again, &ParseConfig::default()).unwrap();
            assert_eq!(
                (again.flow, again.l3, again.l4),
                (p.meta.flow, p.meta.l3, p.meta.l4)
            );
        }
        // Neither headroom nor tailroom: refused, unchanged.
        let frame = segment(false, tcp_flags::SYN, 1000, 0, b"");
        let mut p = parsed(&frame, 0);
        assert_eq!(
            icmp_prohibited(&mut p, [10, 0, 0, 1].into()),
            Err(ReplyError::NoRoom)
        );
        assert_eq!(p.data(), &frame[..]);
    }

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut b = ReplyBucket::new(2, 3);
        let t0 = Instant::from_nanos(5_000_000_000);
        assert_eq!((0..5).filter(|_| b.take(t0)).count(), 3);
        assert!(!b.take(t0 + Duration::from_millis(400)));
        assert!(b.take(t0 + Duration::from_millis(500)));
        b.give_back();
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert_eq!(
            (0..9)
                .filter(|_| b.take(t0 + Duration::from_secs(60)))
                .count(),
            3
        );
    }

    #[test]
    fn what_is_never_answered() {
        let from = IpAddr::from([10, 0, 0, 1]);
        // IPv4 without DF: fragment it instead.
        let mut p = parsed(&big_v4(false), 0);
        assert_eq!(
            icmp_too_big(&mut p, from, 1400),
            Err(ReplyError::NotAnswerable)
        );
        // An ICMP error.
        let mut e = parsed(&big_v4(true), 0);
        icmp_too_big(&mut e, from, 1400).unwrap();
        let bytes = e.data().to_vec();
        let mut e = parsed(&bytes, 0);
        assert_eq!(
            icmp_too_big(&mut e, from, 1400),
            Err(ReplyError::NotAnswerable)
        );
        // A multicast source, a broadcast destination.
        for (s, d) in [([224, 0, 0, 1], [10, 0, 0, 9]), ([10, 0, 0, 2], [255; 4])] {
            let f = Frame::ipv4(s, d)
                .udp(1, 2)
                .payload(&[0; 1000])
                .to_vec()
                .unwrap();
            let mut p = parsed(&f, 0);
            assert_eq!(
                icmp_too_big(&mut p, from, 576),
                Err(ReplyError::NotAnswerable)
            );
        }
        // Another family's source.
        let mut p = parsed(&big_v4(true), 0);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            icmp_too_big(&mut p, v6, 1400),
            Err(ReplyError::FamilyMismatch)
        );
        // A reset is never answered with a reset; UDP has no reset.
        let rst = Frame::ipv4([10, 0, 0, 2], [1, 1, 1, 1])
            .tcp(1, 2, tcp_flags::RST)
            .to_vec()
            .unwrap();
        assert_eq!(
            tcp_reset(&mut parsed(&rst, 0)),
            Err(ReplyError::NotAnswerable)
        );
        let udp = Frame::ipv4([10, 0, 0, 2], [1, 1, 1, 1])
            .udp(1, 2)
            .to_vec()
            .unwrap();
        assert_eq!(
            tcp_reset(&mut parsed(&udp, 0)),
            Err(ReplyError::NotAnswerable)
        );
    }

    /// A segment with sequence number, acknowledgment, flags and data.
    fn segment(v6: bool, flags: u8, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
        let mut f = if v6 {
            Frame::ipv6([0xfd; 16], [0x20; 16])
        } else {
            Frame::ipv4([10, 0, 0, 2], [198, 51, 100, 9])
        }
        .ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .tcp(40000, 443, flags)
        .payload(data);
        if let TransportRepr::Tcp(t) = &mut f.transport {
            (t.seq, t.ack, t.window) = (seq, ack, 512);
        }
        f.to_vec().unwrap()
    }

    #[test]
    fn resets_follow_rfc_9293_and_etherparse_reads_them() {
        use tcp_flags::{ACK, FIN, PSH, RST, SYN};
        for v6 in [false, true] {
            for (flags, data, want) in [
                // With ACK: SEQ = SEG.ACK, RST alone.
                (ACK | PSH, &b"hello"[..], (5000, 0, RST)),
                // Without: SEQ = 0, ACK = SEG.SEQ + SEG.LEN (SYN and FIN count).
                (SYN, &b""[..], (0, 1001, RST | ACK)),
                (FIN, &b"abc"[..], (0, 1004, RST | ACK)),
            ] {
                let frame = segment(v6, flags, 1000, 5000, data);
                let mut p = parsed(&frame, 0);
                tcp_reset(&mut p).unwrap();
                let s = SlicedPacket::from_ethernet(p.data()).unwrap();
                let Some(TransportSlice::Tcp(t)) = &s.transport else {
                    panic!("not TCP")
                };
                let got = (
                    t.sequence_number(),
                    t.acknowledgment_number(),
                    p.meta.tcp_flags,
                );
                assert_eq!(got, want, "v6 {v6} flags {flags:#x}");
                assert!(t.rst() && t.payload().is_empty() && t.options().is_empty());
                assert_eq!((t.source_port(), t.destination_port()), (443, 40000));
                let sum = match &s.net {
                    Some(NetSlice::Ipv4(ip)) => {
                        let h = ip.header();
                        assert_eq!(h.destination(), [10, 0, 0, 2]);
                        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                        t.to_header()
                            .calc_checksum_ipv4_raw(h.source(), h.destination(), &[])
                    }
                    Some(NetSlice::Ipv6(ip)) => {
                        let h = ip.header();
                        assert_eq!(h.destination(), [0xfd; 16]);
                        t.to_header()
                            .calc_checksum_ipv6_raw(h.source(), h.destination(), &[])
                    }
                    _ => panic!("no IP"),
                };
                assert_eq!(t.checksum(), sum.unwrap());
                let mut again = Meta::default();
                parse_frame(p.data(), &mut again, &ParseConfig::default()).unwrap();
                assert_eq!(
                    (again.flow, again.l4, again.tcp_flags),
                    (p.meta.flow, p.meta.l4, p.meta.tcp_flags)
                );
            }
        }
    }

    #[test]
    fn the_stage_answers_too_big_drops_within_its_rate() {
        let origin =
            IcmpOrigin::new(Some(IpAddr::from([10, 0, 0, 1])), None, PortId(3)).with_rate(10, 2);
        let mut stage = PmtuStage::new(1400, origin);
        let frame = big_v4(true);
        let run = |stage: &mut PmtuStage, now: Instant, n: usize| {
            let mut batch = Batch::new();
            for _ in 0..n {
                let mut p = parsed(&frame, 0);
                p.meta.verdict = Verdict::Drop(DropReason::TooBig);
                batch.push(p).unwrap();
            }
            // Packets not dropped as too big are left alone.
            batch.push(parsed(&frame, 0)).unwrap();
            stage.process(now, &mut batch);
            let v: Vec<Verdict> = batch.packets().iter().map(|p| p.meta.verdict).collect();
            assert_eq!(v.last(), Some(&Verdict::Pass));
            v.iter().filter(|v| **v == Verdict::Tx(PortId(3))).count()
        };
        let t0 = Instant::from_nanos(1_000_000_000);
        assert_eq!(run(&mut stage, t0, 5), 2, "the burst");
        assert_eq!(
            run(&mut stage, t0 + Duration::from_millis(100), 5),
            1,
            "10 per second"
        );
        assert_eq!(
            run(&mut stage, t0 + Duration::from_secs(10), 5),
            2,
            "refilled to the burst only"
        );
        let c = *stage.pmtu_counters();
        assert_eq!((c.sent, c.rate_limited), (5, 10));
        assert_eq!(stage.counters().tx, 5);
    }
}
