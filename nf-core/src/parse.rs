//! The parse stage ([`ParseStage`]) and the frame parsers behind it.

use crate::batch::Batch;
use crate::flow::{FlowKey, proto};
use crate::meta::{Meta, flags};
use crate::stage::{Stage, StageControl, StageCounters, StageLoop};
use crate::time::Instant;
use crate::verdict::{DropReason, Verdict};
use crate::wire::ethernet::{ETHERNET_HEADER_LEN, EthernetHeader, VlanHeader, is_vlan_tpid};
use crate::wire::icmp::{IcmpHeader, IcmpKind, classify_v4, classify_v6};
use crate::wire::ipv4::{Ipv4Error, Ipv4Packet};
use crate::wire::ipv6::{Ipv6Error, Ipv6Header, Ipv6Packet};
use crate::wire::tcp::{TcpError, TcpPacket};
use crate::wire::udp::{UdpError, UdpHeader, UdpPacket};
use crate::wire::{ethertype, icmp::IcmpError};
use zerocopy::FromBytes;

/// What the parse stage does with frames that are neither IPv4 nor IPv6 (ARP, LLDP, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonIpAction {
    /// Send to the control path ([`Verdict::ToControl`]).
    #[default]
    ToControl,
    /// Drop with [`DropReason::NonIp`].
    Drop,
}

/// Parse stage settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseConfig {
    /// Verify the IPv4 header checksum (off when the NIC already did).
    pub verify_ipv4_checksum: bool,
    /// Fate of non-IP frames.
    pub non_ip: NonIpAction,
}

impl Default for ParseConfig {
    fn default() -> Self {
        Self {
            verify_ipv4_checksum: true,
            non_ip: NonIpAction::ToControl,
        }
    }
}

/// What [`parse_frame`] found in a frame it accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// An IPv4 or IPv6 packet; the flow key and offsets are filled in.
    Ip,
    /// Not IP: only the L2 fields are filled in.
    NonIp,
}

/// The parse stage: Ethernet → VLAN tags → IPv4/IPv6 (+options / extension headers) →
/// TCP / UDP / ICMP, filling [`Meta`] and the [`FlowKey`] in place. A packet marked
/// [`flags::NO_L2`] (after a decapsulation stage stripped a tunnel down to a bare IP payload,
/// or fed from a TUN device) is parsed from its L3 header, as [`parse_l3`] does.
///
/// Every malformed frame gets a precise [`DropReason`]; no input can panic it, allocate,
/// or make it do more than bounded work (at most two VLAN tags, 40 bytes of IPv4 options,
/// [`MAX_EXT_HEADERS`](crate::wire::ipv6::MAX_EXT_HEADERS) IPv6 extension headers).
///
/// Fragments: a first fragment is parsed like a whole packet (its transport header must be
/// complete); a later fragment gets a key with ports 0 and [`flags::LATER_FRAGMENT`], and
/// IPv4 TCP fragments at offset 1 are dropped (RFC 1858 overlap attack). ICMP query messages
/// use their identifier as both ports; ICMP errors get ports 0 and [`flags::ICMP_ERROR`].
///
/// ```
/// use nf_core::{Batch, Instant, Packet, ParseStage, Stage, Verdict};
/// // Ethernet + IPv4 + UDP 10.0.0.1:1000 -> 10.0.0.2:53.
/// let frame: [u8; 42] = [
///     0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00,
///     0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0x26, 0xcf, 10, 0, 0, 1, 10, 0, 0, 2,
///     0x03, 0xe8, 0, 53, 0, 8, 0, 0,
/// ];
/// let mut batch = Batch::new();
/// batch.push(Packet::new(frame.to_vec(), 0, frame.len())?).ok();
/// let mut parse = ParseStage::default();
/// parse.process(Instant::ZERO, &mut batch);
/// let pkt = &batch.packets()[0];
/// assert_eq!(pkt.meta.verdict, Verdict::Pass);
/// assert_eq!(pkt.meta.flow.to_string(), "zone 0 udp/17 10.0.0.1:1000 -> 10.0.0.2:53");
/// # Ok::<(), nf_core::PacketError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ParseStage {
    config: ParseConfig,
    counters: StageCounters,
}

impl ParseStage {
    /// A parse stage with `config`.
    pub fn new(config: ParseConfig) -> Self {
        Self {
            config,
            counters: StageCounters::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ParseConfig {
        &self.config
    }
}

impl<B: AsRef<[u8]>> Stage<B> for ParseStage {
    #[inline]
    fn process(&mut self, _now: Instant, batch: &mut Batch<B>) {
        self.each_pending(
            batch,
            #[inline(always)]
            |s, _, pkt| {
                let (data, meta) = pkt.data_and_meta_mut();
                let parsed = if meta.has(flags::NO_L2) {
                    parse_l3(data, meta.ethertype, meta, &s.config)
                } else if fast_path(data, meta, &s.config).is_some() {
                    return Verdict::Pass;
                } else {
                    parse_slow(data, meta, &s.config)
                };
                match parsed {
                    Ok(Parsed::Ip) => Verdict::Pass,
                    Ok(Parsed::NonIp) => match s.config.non_ip {
                        NonIpAction::ToControl => Verdict::ToControl,
                        NonIpAction::Drop => Verdict::Drop(DropReason::NonIp),
                    },
                    Err(r) => Verdict::Drop(r),
                }
            },
        );
    }
}

impl StageLoop for ParseStage {
    fn counters_mut(&mut self) -> &mut StageCounters {
        &mut self.counters
    }
}

impl StageControl for ParseStage {
    fn name(&self) -> &'static str {
        "parse"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }
}

/// Parses one frame into `meta` (verdict untouched). The zone in the key is `meta.zone`.
///
/// # Errors
/// The [`DropReason`] of the first malformation found. `meta` then holds whatever the walk
/// had filled in before it stopped (an Ethernet type, an L3 offset): it describes no packet,
/// and a caller that keeps the packet must not hand that `meta` to a later stage (the parse
/// stage drops the packet instead).
#[inline]
pub fn parse_frame(
    data: &[u8],
    meta: &mut Meta,
    config: &ParseConfig,
) -> Result<Parsed, DropReason> {
    if fast_path(data, meta, config).is_some() {
        return Ok(Parsed::Ip);
    }
    parse_slow(data, meta, config)
}

/// [`parse_frame`] after the fast path declined: reset what the walk accumulates, then walk.
/// Kept out of line so the per-packet loop stays small.
#[inline(never)]
fn parse_slow(data: &[u8], meta: &mut Meta, config: &ParseConfig) -> Result<Parsed, DropReason> {
    meta.flags = 0;
    meta.vlan_count = 0;
    meta.tcp_flags = 0;
    meta.icmp_type = 0;
    parse_general(data, meta, config)
}

/// The full walk: every encapsulation shape and every error. [`parse_frame`] gives the same
/// results (property-tested), taking a fixed-offset shortcut for the common shapes first.
#[inline]
fn parse_general(data: &[u8], meta: &mut Meta, config: &ParseConfig) -> Result<Parsed, DropReason> {
    let (eth, _) = EthernetHeader::ref_from_prefix(data).map_err(|_| DropReason::EthTruncated)?;
    let mut et = eth.ethertype.get();
    let mut off = ETHERNET_HEADER_LEN;
    while is_vlan_tpid(et) {
        if meta.vlan_count >= 2 {
            return Err(DropReason::VlanTooDeep);
        }
        let tag_bytes = data.get(off..).ok_or(DropReason::EthTruncated)?;
        let (tag, _) =
            VlanHeader::ref_from_prefix(tag_bytes).map_err(|_| DropReason::EthTruncated)?;
        if let Some(v) = meta.vlan.get_mut(usize::from(meta.vlan_count)) {
            *v = tag.vid();
        }
        meta.vlan_count += 1;
        meta.flags |= flags::VLAN;
        et = tag.ethertype.get();
        off += 4;
    }
    meta.ethertype = et;
    let l3 = off;
    meta.l3 = l3 as u16;
    let ip_bytes = data.get(l3..).unwrap_or(&[]);
    match et {
        ethertype::IPV4 => parse_ipv4(ip_bytes, l3, meta, config),
        ethertype::IPV6 => parse_ipv6(ip_bytes, l3, meta),
        _ => {
            meta.l4 = meta.l3;
            meta.payload = meta.l3;
            Ok(Parsed::NonIp)
        }
    }
}

/// The transport header the parse walk's fixed-offset shortcut read ([`parse_fast`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FastL4 {
    /// TCP or UDP.
    pub proto: u8,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Transport header length (8 for UDP).
    pub len: usize,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// The UDP length field (0 for TCP).
    pub udp_len: u16,
    /// The checksum field.
    pub checksum: u16,
}

/// What a caller of [`parse_fast`] makes of the headers it read: one method per IP
/// version, each given the offset of the IP header (14, or 18 behind one VLAN tag), the
/// VLAN id if there is a tag, the IP header and the transport header.
pub trait FastFrame {
    /// What the caller makes of it.
    type Out;
    /// An IPv4 header without options, not a fragment (checksum verified when asked).
    fn ipv4(self, l3: usize, vlan: Option<u16>, ip: &[u8; 20], l4: FastL4) -> Self::Out;
    /// An IPv6 header without extension headers.
    fn ipv6(self, l3: usize, vlan: Option<u16>, ip: &Ipv6Header, l4: FastL4) -> Self::Out;
}

/// The parse walk's fixed-offset shortcut, for a stage that reads a frame's headers its
/// own way (a decapsulation stage reading the outer headers without filling [`Meta`]):
/// Ethernet with no VLAN tag or one, then IPv4 without options or fragmentation (its
/// checksum verified when `config` says so), or IPv6 without extension headers, then TCP
/// or UDP whose header and length fit. `Some` only for frames [`parse_frame`] accepts,
/// with the same offsets, addresses and ports; `None` for every other frame, valid or not
/// (the caller then takes [`parse_frame`], which also names a drop reason). The parse
/// stage itself runs on it.
#[inline(always)]
pub fn parse_fast<F: FastFrame>(data: &[u8], config: &ParseConfig, f: F) -> Option<F::Out> {
    // The EtherType compared as it is on the wire (no byte swap), IPv4 first: one
    // comparison for the usual frame, where a `match` on the swapped value costs a few.
    let eth: &[u8; 14] = data.first_chunk()?;
    let et = [eth[12], eth[13]];
    if et == IPV4_WIRE {
        fast_v4::<14, F>(data, None, config, f)
    } else if et == IPV6_WIRE {
        fast_v6::<14, F>(data, None, f)
    } else if is_vlan_tpid(u16::from_be_bytes(et)) {
        let tagged: &[u8; 18] = data.first_chunk()?;
        let vid = u16::from_be_bytes([tagged[14], tagged[15]]) & 0x0fff;
        let et = [tagged[16], tagged[17]];
        if et == IPV4_WIRE {
            fast_v4::<18, F>(data, Some(vid), config, f)
        } else if et == IPV6_WIRE {
            fast_v6::<18, F>(data, Some(vid), f)
        } else {
            None
        }
    } else {
        None
    }
}

/// The IPv4 and IPv6 EtherTypes in network byte order.
const IPV4_WIRE: [u8; 2] = ethertype::IPV4.to_be_bytes();
const IPV6_WIRE: [u8; 2] = ethertype::IPV6.to_be_bytes();

/// [`parse_fast`] for an IPv4 header at the constant offset `L3`.
#[inline(always)]
fn fast_v4<const L3: usize, F: FastFrame>(
    data: &[u8],
    vlan: Option<u16>,
    config: &ParseConfig,
    f: F,
) -> Option<F::Out> {
    let rest = data.get(L3..)?;
    let ip: &[u8; 20] = rest.first_chunk()?;
    if ip[0] != 0x45 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    if config.verify_ipv4_checksum && !crate::checksum::verify_ipv4_header(ip) {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let after = rest.get(20..)?;
    // A total length under 20 wraps to a huge L4 length, which overruns the frame.
    let l4 = l4_fast(ip[9], after, total.wrapping_sub(20), false)?;
    Some(f.ipv4(L3, vlan, ip, l4))
}

/// [`parse_fast`] for an IPv6 header at the constant offset `L3`.
#[inline(always)]
fn fast_v6<const L3: usize, F: FastFrame>(data: &[u8], vlan: Option<u16>, f: F) -> Option<F::Out> {
    let rest = data.get(L3..)?;
    let (ip, after) = Ipv6Header::ref_from_prefix(rest).ok()?;
    let odd = ip.vtcfl.get() >> 28 != 6;
    let plen = usize::from(ip.payload_len.get());
    let l4 = l4_fast(ip.next_header, after, plen, odd)?;
    Some(f.ipv6(L3, vlan, ip, l4))
}

/// The parse stage's [`FastFrame`]: fills `meta` as the general walk would
/// (property-tested).
struct FillMeta<'m>(&'m mut Meta);

impl FastFrame for FillMeta<'_> {
    type Out = ();

    #[inline(always)]
    fn ipv4(self, l3: usize, vlan: Option<u16>, ip: &[u8; 20], l4: FastL4) {
        let meta = self.0;
        meta.flow = FlowKey::v4(
            meta.zone,
            [ip[12], ip[13], ip[14], ip[15]],
            [ip[16], ip[17], ip[18], ip[19]],
            l4.proto,
            l4.src_port,
            l4.dst_port,
        );
        finish_fast(meta, ethertype::IPV4, l3, 20, l4, vlan);
    }

    #[inline(always)]
    fn ipv6(self, l3: usize, vlan: Option<u16>, ip: &Ipv6Header, l4: FastL4) {
        let meta = self.0;
        let zone = meta.zone;
        meta.flow
            .set_v6(zone, &ip.src, &ip.dst, l4.proto, l4.src_port, l4.dst_port);
        finish_fast(meta, ethertype::IPV6, l3, 40, l4, vlan);
    }
}

/// [`parse_fast`] filling `meta`; `None` without touching `meta` for the frames it
/// declines.
#[inline(always)]
fn fast_path(data: &[u8], meta: &mut Meta, config: &ParseConfig) -> Option<()> {
    parse_fast(data, config, FillMeta(meta))
}

#[inline(always)]
fn finish_fast(meta: &mut Meta, et: u16, l3: usize, l3_len: usize, t: FastL4, vid: Option<u16>) {
    let l4 = l3 + l3_len;
    meta.ethertype = et;
    meta.l3 = l3 as u16;
    meta.l4 = l4 as u16;
    meta.payload = (l4 + t.len) as u16;
    meta.flags = flags::L3_VALID | flags::L4_VALID;
    meta.vlan_count = 0;
    if let Some(v) = vid {
        meta.vlan[0] = v;
        meta.vlan_count = 1;
        meta.flags |= flags::VLAN;
    }
    meta.tcp_flags = t.tcp_flags;
    meta.icmp_type = 0;
}

/// TCP or UDP at the start of `after` (the frame bytes after the IP header), in an IP
/// payload the IP header says is `l4_len` bytes long: ports, header length and TCP flags (0
/// for UDP), or `None` if the payload overruns the frame, the transport header overruns the
/// payload, or `odd` (the caller's own reason to decline).
#[inline(always)]
fn l4_fast(p: u8, after: &[u8], l4_len: usize, odd: bool) -> Option<FastL4> {
    let overrun = l4_len > after.len();
    match p {
        proto::TCP => {
            let t: &[u8; 20] = after.first_chunk()?;
            let hlen = usize::from(t[12] >> 4) * 4;
            if odd | overrun | (hlen < 20) | (hlen > l4_len) {
                return None;
            }
            Some(FastL4 {
                proto: p,
                src_port: u16::from_be_bytes([t[0], t[1]]),
                dst_port: u16::from_be_bytes([t[2], t[3]]),
                len: hlen,
                tcp_flags: t[13],
                udp_len: 0,
                checksum: u16::from_be_bytes([t[16], t[17]]),
            })
        }
        proto::UDP => {
            let u: &[u8; 8] = after.first_chunk()?;
            let len = usize::from(u16::from_be_bytes([u[4], u[5]]));
            if odd | overrun | (len < 8) | (len > l4_len) {
                return None;
            }
            Some(FastL4 {
                proto: p,
                src_port: u16::from_be_bytes([u[0], u[1]]),
                dst_port: u16::from_be_bytes([u[2], u[3]]),
                len: 8,
                tcp_flags: 0,
                udp_len: len as u16,
                checksum: u16::from_be_bytes([u[6], u[7]]),
            })
        }
        _ => None,
    }
}

/// Parses a bare L3 packet (no Ethernet header: a tunnel payload whose protocol type is
/// IPv4 or IPv6) into `meta`, like [`parse_frame`] with `ethertype` standing in for the
/// Ethernet header: `meta.l3` is 0 and [`flags::NO_L2`] is set (which the parse stage
/// honours). Other EtherTypes give [`Parsed::NonIp`].
///
/// # Errors
/// The [`DropReason`] of the first malformation found.
#[inline]
pub fn parse_l3(
    data: &[u8],
    ethertype: u16,
    meta: &mut Meta,
    config: &ParseConfig,
) -> Result<Parsed, DropReason> {
    // The fixed-offset shortcut with the IP header at offset 0.
    let fast = match ethertype {
        ethertype::IPV4 => fast_v4::<0, _>(data, None, config, FillMeta(meta)),
        ethertype::IPV6 => fast_v6::<0, _>(data, None, FillMeta(meta)),
        _ => None,
    };
    if fast.is_some() {
        meta.flags |= flags::NO_L2;
        return Ok(Parsed::Ip);
    }
    parse_l3_general(data, ethertype, meta, config)
}

/// [`parse_l3`] without the shortcut: the reference it is tested against.
#[inline(never)]
fn parse_l3_general(
    data: &[u8],
    ethertype: u16,
    meta: &mut Meta,
    config: &ParseConfig,
) -> Result<Parsed, DropReason> {
    meta.flags = flags::NO_L2;
    meta.vlan_count = 0;
    meta.tcp_flags = 0;
    meta.icmp_type = 0;
    meta.ethertype = ethertype;
    meta.l3 = 0;
    match ethertype {
        ethertype::IPV4 => parse_ipv4(data, 0, meta, config),
        ethertype::IPV6 => parse_ipv6(data, 0, meta),
        _ => {
            meta.l4 = 0;
            meta.payload = 0;
            Ok(Parsed::NonIp)
        }
    }
}

#[inline]
fn parse_ipv4(
    bytes: &[u8],
    l3: usize,
    meta: &mut Meta,
    config: &ParseConfig,
) -> Result<Parsed, DropReason> {
    let ip = Ipv4Packet::new_checked(bytes).map_err(DropReason::from)?;
    if config.verify_ipv4_checksum && !ip.verify_checksum() {
        return Err(Ipv4Error::BadChecksum.into());
    }
    let h = ip.header();
    if !ip.options().is_empty() {
        ip.check_options()?;
        meta.flags |= flags::IP_OPTIONS;
    }
    let l4 = l3 + h.header_len();
    let mut later = false;
    if h.is_fragment() {
        meta.flags |= flags::FRAGMENT;
        let fo = h.frag_offset();
        if fo == 1 && h.proto == proto::TCP {
            return Err(DropReason::Ipv4BadFragment);
        }
        later = fo != 0;
    }
    let (sp, dp) = if later {
        meta.flags |= flags::LATER_FRAGMENT;
        meta.l4 = l4 as u16;
        meta.payload = l4 as u16;
        (0, 0)
    } else {
        let first_frag = h.more_frags();
        transport(ip.payload(), l4, h.proto, false, meta).map_err(|e| {
            if first_frag {
                DropReason::Ipv4BadFragment
            } else {
                e
            }
        })?
    };
    meta.flow = FlowKey::v4(meta.zone, h.src, h.dst, h.proto, sp, dp);
    meta.flags |= flags::L3_VALID;
    Ok(Parsed::Ip)
}

#[inline]
fn parse_ipv6(bytes: &[u8], l3: usize, meta: &mut Meta) -> Result<Parsed, DropReason> {
    let ip = Ipv6Packet::new_checked(bytes).map_err(DropReason::from)?;
    let h = ip.header();
    let (upper, upper_off) = if is_upper(h.next_header) {
        (h.next_header, 0)
    } else {
        let chain = ip.extensions().map_err(DropReason::from)?;
        meta.flags |= flags::IP_OPTIONS;
        if let Some(f) = chain.fragment {
            meta.flags |= flags::FRAGMENT;
            if f.offset != 0 {
                meta.flags |= flags::LATER_FRAGMENT;
            }
        }
        (chain.upper, chain.upper_offset)
    };
    let l4 = l3 + 40 + upper_off;
    let (sp, dp) = if meta.has(flags::LATER_FRAGMENT) {
        meta.l4 = l4 as u16;
        meta.payload = l4 as u16;
        (0, 0)
    } else {
        let first_frag = meta.has(flags::FRAGMENT);
        let rest = ip.payload().get(upper_off..).unwrap_or(&[]);
        transport(rest, l4, upper, true, meta).map_err(|e| {
            if first_frag {
                Ipv6Error::BadFragment.into()
            } else {
                e
            }
        })?
    };
    meta.flow = FlowKey::v6(meta.zone, h.src, h.dst, upper, sp, dp);
    meta.flags |= flags::L3_VALID;
    Ok(Parsed::Ip)
}

/// True for next-header values the extension walk does not need to look at.
#[inline]
const fn is_upper(nh: u8) -> bool {
    matches!(nh, proto::TCP | proto::UDP | proto::ICMPV6)
}

/// Parses the transport header at `l4` (frame offset); returns the key's ports.
#[inline(always)]
fn transport(
    bytes: &[u8],
    l4: usize,
    p: u8,
    v6: bool,
    meta: &mut Meta,
) -> Result<(u16, u16), DropReason> {
    meta.l4 = l4 as u16;
    match p {
        proto::TCP => {
            let t = TcpPacket::new_checked(bytes).map_err(|e: TcpError| DropReason::from(e))?;
            let h = t.header();
            meta.tcp_flags = h.flags;
            meta.payload = (l4 + h.header_len()) as u16;
            meta.flags |= flags::L4_VALID;
            Ok((h.src_port.get(), h.dst_port.get()))
        }
        proto::UDP => {
            let whole;
            let h: &UdpHeader = if meta.has(flags::FRAGMENT) {
                // A first fragment holds the header, but its length counts the whole
                // datagram, which the later fragments complete.
                let (h, _) = UdpHeader::ref_from_prefix(bytes)
                    .map_err(|_| DropReason::from(UdpError::Truncated))?;
                if usize::from(h.len.get()) < 8 {
                    return Err(UdpError::BadLength.into());
                }
                h
            } else {
                whole = UdpPacket::new_checked(bytes).map_err(DropReason::from)?;
                whole.header()
            };
            meta.payload = (l4 + 8) as u16;
            meta.flags |= flags::L4_VALID;
            Ok((h.src_port.get(), h.dst_port.get()))
        }
        proto::ICMP | proto::ICMPV6 if (p == proto::ICMPV6) == v6 => {
            let (h, _) = IcmpHeader::ref_from_prefix(bytes)
                .map_err(|_| DropReason::from(IcmpError::Truncated))?;
            meta.icmp_type = h.ty;
            meta.payload = (l4 + 8) as u16;
            meta.flags |= flags::L4_VALID;
            let kind = if v6 {
                classify_v6(h.ty)
            } else {
                classify_v4(h.ty)
            };
            match kind {
                IcmpKind::Query => Ok((h.ident.get(), h.ident.get())),
                IcmpKind::Error => {
                    meta.flags |= flags::ICMP_ERROR;
                    Ok((0, 0))
                }
                IcmpKind::Other => Ok((0, 0)),
            }
        }
        _ => {
            meta.payload = l4 as u16;
            Ok((0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Outcome = (Result<Parsed, DropReason>, Meta);

    #[test]
    fn counter_names_are_pinned() {
        use crate::packet::Packet;
        use alloc::vec;
        use alloc::vec::Vec;
        let mut stage = ParseStage::default();
        let mut batch = Batch::new();
        batch
            .push(Packet::new(vec![0u8; 10], 0, 10).unwrap())
            .unwrap();
        // An ARP frame: to the control path.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        batch.push(Packet::new(arp, 0, 42).unwrap()).unwrap();
        stage.process(Instant::ZERO, &mut batch);
        let mut seen = Vec::new();
        stage.visit_counters(&mut |stage, counter, value| seen.push((stage, counter, value)));
        let golden = [
            ("parse", "batches", 1),
            ("parse", "packets", 2),
            ("parse", "to_control", 1),
            ("parse", "tx", 0),
            ("parse", "drops", 1),
            ("parse", DropReason::EthTruncated.counter_name(), 1),
        ];
        assert_eq!(seen, golden);
        assert_eq!(
            DropReason::EthTruncated.counter_name(),
            "drop_eth_truncated"
        );
    }

    /// Metadata left over from an earlier packet, as a reused batch has: every field the
    /// parse stage accumulates or may leave alone is stale.
    fn stale() -> Meta {
        Meta {
            flags: u16::MAX,
            vlan_count: 2,
            vlan: [7, 9],
            tcp_flags: 0xff,
            icmp_type: 0xff,
            ethertype: 0x1234,
            l3: 999,
            l4: 999,
            payload: 999,
            flow: FlowKey::v4(crate::flow::ZoneId(5), [1; 4], [2; 4], 6, 1, 2),
            ..Meta::default()
        }
    }

    /// Runs `parse_frame` (fast path first, then the reset and the general walk) and the
    /// general walk alone after the reset, on the same bytes and the same stale metadata.
    fn both(data: &[u8], cfg: &ParseConfig) -> (Outcome, Outcome) {
        let mut a = stale();
        let ra = parse_frame(data, &mut a, cfg);
        let mut b = stale();
        (b.flags, b.vlan_count, b.tcp_flags, b.icmp_type) = (0, 0, 0, 0);
        let rb = parse_general(data, &mut b, cfg);
        ((ra, a), (rb, b))
    }

    fn template() -> impl Strategy<Value = alloc::vec::Vec<u8>> {
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>(),
            0u8..4,
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::option::of((any::<bool>(), any::<u16>())),
        )
            .prop_map(|(s, d, sp, dp, kind, payload, vlan)| {
                let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6]);
                let mut out = alloc::vec::Vec::new();
                let (s4, d4) = ([s[0], s[1], s[2], s[3]], [d[0], d[1], d[2], d[3]]);
                match kind {
                    0 => b
                        .ipv4(s4, d4, 9)
                        .tcp(sp, dp, 7, 100)
                        .write(&mut out, &payload),
                    1 => b.ipv4(s4, d4, 9).udp(sp, dp).write(&mut out, &payload),
                    2 => b
                        .ipv6(s, d, 9)
                        .tcp(sp, dp, 7, 100)
                        .write(&mut out, &payload),
                    _ => b.ipv6(s, d, 9).udp(sp, dp).write(&mut out, &payload),
                }
                .unwrap();
                // One 802.1Q or 802.1ad tag in front of the EtherType.
                if let Some((qinq, tci)) = vlan {
                    let tpid = if qinq {
                        ethertype::QINQ
                    } else {
                        ethertype::VLAN
                    };
                    let mut tag = tpid.to_be_bytes().to_vec();
                    tag.extend_from_slice(&tci.to_be_bytes());
                    out.splice(12..12, tag);
                }
                out
            })
    }

    /// Template frames with a few bytes changed (mostly in the headers) and maybe cut short.
    fn mutated() -> impl Strategy<Value = alloc::vec::Vec<u8>> {
        (
            template(),
            proptest::collection::vec((0usize..80, any::<u8>()), 0..3),
            proptest::option::of(0usize..100),
        )
            .prop_map(|(mut f, edits, cut)| {
                for (at, v) in edits {
                    if let Some(b) = f.get_mut(at) {
                        *b = v;
                    }
                }
                if let Some(c) = cut {
                    f.truncate(c);
                }
                f
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn fast_path_equals_general_walk_on_mutated_frames(
            f in mutated(),
            checksum in any::<bool>(),
        ) {
            let cfg = ParseConfig { verify_ipv4_checksum: checksum, ..ParseConfig::default() };
            let (a, b) = both(&f, &cfg);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn parse_l3_shortcut_equals_its_general_walk(
            f in mutated(),
            checksum in any::<bool>(),
        ) {
            // The IP packet of a template frame, mutated.
            let et = f.get(12..14).map_or(0, |e| u16::from_be_bytes([e[0], e[1]]));
            let ip = f.get(14..).unwrap_or(&[]);
            let cfg = ParseConfig { verify_ipv4_checksum: checksum, ..ParseConfig::default() };
            let mut a = stale();
            let ra = parse_l3(ip, et, &mut a, &cfg);
            let mut b = stale();
            let rb = parse_l3_general(ip, et, &mut b, &cfg);
            prop_assert_eq!((ra, a), (rb, b));
        }

        #[test]
        fn fast_path_equals_general_walk_on_arbitrary_bytes(f in proptest::collection::vec(any::<u8>(), 0..120)) {
            let (a, b) = both(&f, &ParseConfig::default());
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn a_udp_first_fragment_is_parsed_although_its_length_counts_the_whole_datagram() {
        // IPv4 first fragment (MF, offset 0) carrying 16 of a 48-byte UDP datagram.
        let mut f = alloc::vec![2u8, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let mut ip = alloc::vec![
            0x45, 0, 0, 36, 0, 7, 0x20, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2
        ];
        let c = crate::checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 48, 0, 0]);
        f.extend_from_slice(&[0xab; 8]);
        let mut m = Meta::default();
        assert_eq!(
            parse_frame(&f, &mut m, &ParseConfig::default()),
            Ok(Parsed::Ip)
        );
        assert_eq!((m.flow.src_port, m.flow.dst_port), (5000, 53));
        assert!(m.has(flags::FRAGMENT) && !m.has(flags::LATER_FRAGMENT));
        // A UDP length below the header is still malformed.
        f[14 + 20 + 5] = 7;
        assert_eq!(
            parse_frame(&f, &mut m, &ParseConfig::default()),
            Err(DropReason::Ipv4BadFragment)
        );
    }

    /// A bare IP packet marked `NO_L2` (a TUN device, a stripped bare IP tunnel payload)
    /// goes through the parse stage from its IP header.
    #[test]
    fn the_parse_stage_honours_no_l2() {
        use crate::packet::Packet;
        let frame = crate::wire::Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .udp(1000, 53)
            .to_vec()
            .unwrap();
        let ip = &frame[14..];
        let mut pkt = Packet::new(ip.to_vec(), 0, ip.len()).unwrap();
        pkt.meta.flags = flags::NO_L2;
        pkt.meta.ethertype = ethertype::IPV4;
        let mut batch = Batch::new();
        batch.push(pkt).unwrap();
        ParseStage::default().process(Instant::ZERO, &mut batch);
        let m = batch.packets()[0].meta;
        assert_eq!(m.verdict, Verdict::Pass);
        assert_eq!(
            alloc::string::ToString::to_string(&m.flow),
            "zone 0 udp/17 10.0.0.1:1000 -> 10.0.0.2:53"
        );
        assert_eq!((m.l3, m.l4), (0, 20));
        assert!(m.has(flags::NO_L2));
        // Without the flag the same bytes are read as Ethernet and are not IP.
        let mut batch = Batch::new();
        batch
            .push(Packet::new(ip.to_vec(), 0, ip.len()).unwrap())
            .unwrap();
        ParseStage::default().process(Instant::ZERO, &mut batch);
        assert_eq!(batch.packets()[0].meta.verdict, Verdict::ToControl);
    }

    #[test]
    fn parse_l3_matches_parse_frame_on_the_same_ip_packet() {
        let frame: [u8; 42] = [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0x40, 0, 64,
            17, 0x26, 0xcf, 10, 0, 0, 1, 10, 0, 0, 2, 0x03, 0xe8, 0, 53, 0, 8, 0, 0,
        ];
        let cfg = ParseConfig::default();
        let mut a = Meta::default();
        assert_eq!(parse_frame(&frame, &mut a, &cfg), Ok(Parsed::Ip));
        let mut b = Meta::default();
        assert_eq!(
            parse_l3(&frame[14..], ethertype::IPV4, &mut b, &cfg),
            Ok(Parsed::Ip)
        );
        assert_eq!(a.flow, b.flow);
        assert_eq!((b.l3, b.l4, b.payload), (0, 20, 28));
        assert_eq!(
            parse_l3(&frame[14..], ethertype::IPV6, &mut b, &cfg),
            Err(DropReason::Ipv6Truncated)
        );
        assert_eq!(
            parse_l3(&frame[14..], ethertype::ARP, &mut b, &cfg),
            Ok(Parsed::NonIp)
        );
    }
}
