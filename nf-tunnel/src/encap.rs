//! The encapsulation stage: push outer Ethernet + IPv4/IPv6 + UDP + Geneve (with options)
//! or VXLAN into each packet's headroom, in place.
//!
//! The outer headers are built once, at construction, into a template; per packet the stage
//! copies it and patches lengths, the destination, the VNI, the UDP source port and the
//! checksums. Invariants of every frame it emits:
//! - the UDP source port is a function of the inner flow (the flow hash when
//!   [`flags::HASH_VALID`], else a fold of the parsed flow key) mapped into the configured
//!   range, so one inner flow keeps one underlay path (RFC 7348 §5, RFC 8926 §3.3);
//! - IPv4: DF set, identification 0 (RFC 6864), a correct header checksum; UDP checksum 0
//!   or, if configured, computed. IPv6: the UDP checksum is always computed;
//! - reserved bits are zero, Geneve's C bit is set iff an option is critical;
//! - an outer IP packet longer than the underlay MTU is not sent: the packet is dropped with
//!   [`DropReason::TooBig`] (the caller may answer with ICMP), and a buffer without enough
//!   headroom with [`DropReason::NoHeadroom`].

use crate::GENEVE_HEADER_LEN;
use crate::geneve::{GeneveRepr, OptionsBuilder};
use crate::mapping::{Lookup, MappingCache};
use crate::vxlan::VxlanRepr;
use crate::zones::VniTable;
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;
use nf_core::checksum;
use nf_core::flow::proto;
use nf_core::wire::ethernet::EthernetRepr;
use nf_core::wire::ethertype;
use nf_core::wire::ipv4::Ipv4Repr;
use nf_core::wire::ipv6::Ipv6Repr;
use nf_core::wire::udp::UdpRepr;
use nf_core::{
    Batch, DropReason, FlowKey, Instant, Meta, Packet, Stage, StageControl, StageCounters,
    StageLoop, ZoneId,
};
use nf_core::{NO_NEXT_HOP, flags};

/// Which tunnel header to push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "built once per stage; the options live inline so the hot path has no indirection"
)]
pub enum EncapTunnel {
    /// Geneve with these options on every packet.
    Geneve(OptionsBuilder),
    /// VXLAN.
    Vxlan,
}

/// What the stage encapsulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Payload {
    /// The whole Ethernet frame (Geneve protocol 0x6558; VXLAN always).
    #[default]
    Ethernet,
    /// Only the IP packet: the inner Ethernet header (the `meta.l3` bytes in front of the
    /// IP header) is removed and the Geneve protocol is the inner EtherType.
    Ip,
}

/// Where the VNI comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VniSource {
    /// The same VNI on every packet.
    Fixed(u32),
    /// The packet's zone (`meta.zone`), which must fit 24 bits.
    Zone,
    /// The VNI a table gives the packet's zone ([`VniTable::vni`]: the decapsulation's
    /// VNI → zone table read backwards), for deployments whose zones are not their VNIs; a
    /// zone the table does not name drops as [`DropReason::TunnelUnknownVni`].
    Map(VniTable),
}

impl VniSource {
    /// The VNI of a packet in `zone` (`None` for [`Self::Fixed`], whose VNI is in the
    /// template), or the drop reason.
    #[inline(always)]
    fn of_zone(&self, zone: ZoneId) -> Result<Option<u32>, DropReason> {
        match self {
            Self::Fixed(_) => Ok(None),
            Self::Zone if zone.0 <= 0x00ff_ffff => Ok(Some(zone.0)),
            Self::Zone => Err(DropReason::TunnelUnknownVni),
            Self::Map(t) => t.vni(zone).map(Some).ok_or(DropReason::TunnelUnknownVni),
        }
    }
}

/// The underlay endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Underlay {
    /// Our MAC.
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the underlay router, or the peer on a direct link).
    pub dst_mac: [u8; 6],
    /// Our underlay address (its family selects IPv4 or IPv6 outer headers).
    pub src: IpAddr,
    /// The default destination (a gateway when the mapping is unknown).
    pub dst: IpAddr,
}

/// How each packet's outer destination is chosen.
#[derive(Clone, Debug)]
pub enum Destination {
    /// Always [`Underlay::dst`].
    Fixed,
    /// `hosts[meta.next_hop]` (a routing or LB stage chose it); [`Underlay::dst`] when
    /// `next_hop` is unset or out of range.
    NextHop(Vec<IpAddr>),
    /// The host the mapping cache knows for (VNI, inner destination); on a miss the packet
    /// takes [`Underlay::dst`] (the default path) and a query is queued.
    Mapping(MappingCache),
}

/// Encapsulation settings.
#[derive(Clone, Debug)]
pub struct EncapConfig {
    /// Geneve (with options) or VXLAN.
    pub tunnel: EncapTunnel,
    /// Ethernet frame or bare IP payload (bare IP is Geneve only).
    pub payload: Payload,
    /// VNI source.
    pub vni: VniSource,
    /// Underlay MACs and addresses.
    pub underlay: Underlay,
    /// Outer destination per packet.
    pub destination: Destination,
    /// UDP destination port (6081, 4789, 8472 ...).
    pub dst_port: u16,
    /// Inclusive range of UDP source ports.
    pub src_ports: (u16, u16),
    /// Compute the UDP checksum over IPv4 too (IPv6 always computes it).
    pub udp_checksum_v4: bool,
    /// Underlay MTU: the largest outer IP packet sent.
    pub mtu: u16,
    /// Outer TTL / hop limit.
    pub ttl: u8,
}

impl EncapConfig {
    /// Geneve to a fixed destination with defaults: Ethernet payload, port 6081, source
    /// ports 49152–65535, no IPv4 UDP checksum, MTU 1500, TTL 64.
    pub fn geneve(options: OptionsBuilder, vni: u32, underlay: Underlay) -> Self {
        Self {
            tunnel: EncapTunnel::Geneve(options),
            payload: Payload::Ethernet,
            vni: VniSource::Fixed(vni),
            underlay,
            destination: Destination::Fixed,
            dst_port: crate::GENEVE_PORT,
            src_ports: (49152, 65535),
            udp_checksum_v4: false,
            mtu: 1500,
            ttl: 64,
        }
    }

    /// VXLAN to a fixed destination with the same defaults and port 4789.
    pub fn vxlan(vni: u32, underlay: Underlay) -> Self {
        Self {
            tunnel: EncapTunnel::Vxlan,
            dst_port: crate::VXLAN_PORT,
            ..Self::geneve(OptionsBuilder::new(), vni, underlay)
        }
    }
}

/// Why an [`EncapConfig`] or a [`DecapConfig`](crate::DecapConfig) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// Underlay source and destination are of different families.
    FamilyMismatch,
    /// A fixed VNI above 24 bits.
    VniOutOfRange,
    /// The source port range is empty.
    BadPortRange,
    /// VXLAN carries Ethernet only.
    PayloadNotSupported,
    /// More Geneve option specs than a decapsulation stage tracks
    /// ([`MAX_OPTION_SPECS`](crate::decap::MAX_OPTION_SPECS)).
    TooManyOptions,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FamilyMismatch => "underlay source and destination families differ",
            Self::VniOutOfRange => "VNI above 24 bits",
            Self::BadPortRange => "empty UDP source port range",
            Self::PayloadNotSupported => "VXLAN carries only Ethernet frames",
            Self::TooManyOptions => "more Geneve option specs than a decap stage tracks (16)",
        })
    }
}

impl core::error::Error for ConfigError {}

const TEMPLATE_LEN: usize = 14 + 40 + 8 + GENEVE_HEADER_LEN + crate::geneve::MAX_OPTIONS_LEN;

/// Offsets of the per-packet fields in the template.
///
/// The template already holds everything that is the same for every packet: a fixed VNI
/// and the default destination are written at construction, so a packet that takes the
/// default path only needs its lengths, source port and checksums patched.
#[derive(Clone, Copy, Debug)]
struct Layout {
    len: usize,
    udp: usize,
    tun: usize,
    v6: bool,
    /// Partial sum of the IPv4 header with total length, checksum and destination zero.
    ip_base: u32,
    /// [`Layout::ip_base`] plus the default destination (the template's own).
    ip_base_default: u32,
}

/// The encapsulation stage (see the module docs).
#[derive(Debug)]
pub struct EncapStage {
    config: EncapConfig,
    template: [u8; TEMPLATE_LEN],
    layout: Layout,
    default_dst: [u8; 16],
    span: u32,
    /// IPv4 underlay, fixed destination, no UDP checksum: [`EncapStage::encap_v4_fixed`].
    v4_fixed: bool,
    counters: StageCounters,
    default_path: u64,
}

impl EncapStage {
    /// Builds the stage and its header template.
    ///
    /// # Errors
    /// A [`ConfigError`] for an inconsistent configuration.
    pub fn new(config: EncapConfig) -> Result<Self, ConfigError> {
        let u = config.underlay;
        let v6 = match (u.src, u.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => false,
            (IpAddr::V6(_), IpAddr::V6(_)) => true,
            _ => return Err(ConfigError::FamilyMismatch),
        };
        if let VniSource::Fixed(v) = &config.vni
            && *v > 0x00ff_ffff
        {
            return Err(ConfigError::VniOutOfRange);
        }
        if config.src_ports.0 > config.src_ports.1 {
            return Err(ConfigError::BadPortRange);
        }
        if config.tunnel == EncapTunnel::Vxlan && config.payload == Payload::Ip {
            return Err(ConfigError::PayloadNotSupported);
        }
        let mut template = [0u8; TEMPLATE_LEN];
        let (layout, default_dst) = build_template(&config, v6, &mut template)?;
        let v4_fixed = !v6
            && matches!(config.destination, Destination::Fixed)
            && !config.udp_checksum_v4
            && layout.udp == 34;
        Ok(Self {
            span: u32::from(config.src_ports.1 - config.src_ports.0) + 1,
            v4_fixed,
            config,
            template,
            layout,
            default_dst,
            counters: StageCounters::default(),
            default_path: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &EncapConfig {
        &self.config
    }

    /// Bytes pushed in front of each packet (for sizing headroom).
    pub fn overhead(&self) -> usize {
        self.layout.len
    }

    /// Packets that took the default destination because the mapping was unknown.
    pub fn default_path_count(&self) -> u64 {
        self.default_path
    }

    /// The mapping cache, when destinations come from one (to drive its queries and timers).
    pub fn mapping_mut(&mut self) -> Option<&mut MappingCache> {
        match &mut self.config.destination {
            Destination::Mapping(c) => Some(c),
            _ => None,
        }
    }

    /// The next-hop host list, when destinations come from [`Destination::NextHop`]: a
    /// stage that chose `meta.next_hop` by position (a load balancer's pool) changes it
    /// here, between batches, without rebuilding the stage or losing its counters.
    /// Positions already handed out keep their meaning only if the caller keeps them (append,
    /// do not reorder).
    pub fn next_hops_mut(&mut self) -> Option<&mut Vec<IpAddr>> {
        match &mut self.config.destination {
            Destination::NextHop(hosts) => Some(hosts),
            _ => None,
        }
    }

    /// Encapsulates one packet (what [`Stage::process`] does for each pending packet).
    ///
    /// # Errors
    /// [`DropReason::TooBig`], [`DropReason::NoHeadroom`], [`DropReason::TunnelBadProtocol`]
    /// (bare-IP payload of a non-IP frame), [`DropReason::TunnelUnknownVni`] (zone above 24
    /// bits).
    #[inline]
    pub fn encap<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
    ) -> Result<(), DropReason> {
        if self.v4_fixed {
            self.encap_v4_fixed(pkt)
        } else {
            self.encap_general(now, pkt)
        }
    }

    /// The common case, IPv4 to the fixed destination without a UDP checksum: everything
    /// but the lengths, the source port, the header checksum and a per-packet VNI or
    /// protocol is in the template. Gives exactly what [`EncapStage::encap_general`] gives
    /// for such a stage (property-tested).
    #[inline(always)]
    fn encap_v4_fixed<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        pkt: &mut Packet<B>,
    ) -> Result<(), DropReason> {
        let l = self.layout;
        let protocol = self.take_payload(pkt)?;
        let ip_len = l.len - 14 + pkt.len();
        if ip_len > usize::from(self.config.mtu) {
            return Err(DropReason::TooBig);
        }
        let zone_vni = self.config.vni.of_zone(pkt.meta.zone)?;
        let sport = self.source_port(&pkt.meta);
        // The frame will start with the outer Ethernet header.
        pkt.meta.flags &= !flags::NO_L2;
        let hdr = pkt.push_front(l.len).map_err(|_| DropReason::NoHeadroom)?;
        let tpl = self.template.get(..l.len).unwrap_or(&[]);
        if !copy_template(hdr, tpl) {
            return Err(DropReason::NoHeadroom);
        }
        // Ethernet (14), IPv4 without options (20), UDP (8): fixed offsets.
        let (ip_len, udp_len) = (ip_len as u16, (ip_len - 20) as u16);
        let c = checksum::finish(l.ip_base_default + u32::from(ip_len));
        if let Some(h) = hdr.first_chunk_mut::<42>() {
            [h[16], h[17]] = ip_len.to_be_bytes();
            [h[24], h[25]] = c.to_be_bytes();
            [h[34], h[35]] = sport.to_be_bytes();
            [h[38], h[39]] = udp_len.to_be_bytes();
        }
        if let Some(vni) = zone_vni {
            let [_, v0, v1, v2] = vni.to_be_bytes();
            put(hdr, l.tun + 4, &[v0, v1, v2]);
        }
        if protocol != ethertype::TEB {
            put(hdr, l.tun + 2, &protocol.to_be_bytes());
        }
        Ok(())
    }

    /// Leaves in `pkt` what the tunnel carries and returns its protocol type: the whole
    /// Ethernet frame (TEB), or with [`Payload::Ip`] the IP packet after the L2 header.
    #[inline(always)]
    fn take_payload<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        pkt: &mut Packet<B>,
    ) -> Result<u16, DropReason> {
        let bare = pkt.meta.has(flags::NO_L2);
        if self.config.payload != Payload::Ip {
            // An Ethernet payload needs an Ethernet header.
            return if bare {
                Err(DropReason::TunnelBadProtocol)
            } else {
                Ok(ethertype::TEB)
            };
        }
        let protocol = pkt.meta.ethertype;
        if !matches!(protocol, ethertype::IPV4 | ethertype::IPV6) {
            return Err(DropReason::TunnelBadProtocol);
        }
        if bare {
            return Ok(protocol);
        }
        pkt.pull_front(usize::from(pkt.meta.l3))
            .map_err(|_| DropReason::TunnelTruncated)?;
        Ok(protocol)
    }

    /// Every configuration: the reference the fast path is tested against.
    #[inline]
    fn encap_general<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
    ) -> Result<(), DropReason> {
        let l = self.layout;
        let protocol = self.take_payload(pkt)?;
        let inner_len = pkt.len();
        let ip_len = l.len - 14 + inner_len;
        if ip_len > usize::from(self.config.mtu) {
            return Err(DropReason::TooBig);
        }
        let zone_vni = self.config.vni.of_zone(pkt.meta.zone)?;
        let vni = match (&self.config.vni, zone_vni) {
            (VniSource::Fixed(v), _) => *v,
            (_, v) => v.unwrap_or(0),
        };
        // `None`: the default destination, already in the template.
        let dst = self.destination(now, &pkt.meta, vni);
        let sport = self.source_port(&pkt.meta);
        let udp_len = (ip_len - (l.udp - 14)) as u16;
        // The frame will start with the outer Ethernet header.
        pkt.meta.flags &= !flags::NO_L2;
        let hdr = pkt.push_front(l.len).map_err(|_| DropReason::NoHeadroom)?;
        let tpl = self.template.get(..l.len).unwrap_or(&[]);
        if !copy_template(hdr, tpl) {
            return Err(DropReason::NoHeadroom);
        }
        if l.v6 {
            put(hdr, 14 + 4, &((ip_len - 40) as u16).to_be_bytes());
            if let Some(d) = &dst {
                put(hdr, 14 + 24, d);
            }
        } else {
            let s = match &dst {
                None => l.ip_base_default,
                Some(d) => {
                    let d4 = d.first_chunk::<4>().copied().unwrap_or_default();
                    put(hdr, 14 + 16, &d4);
                    l.ip_base + checksum::sum(0, &d4)
                }
            };
            let c = checksum::finish(s + u32::from(ip_len as u16));
            // Total length (offset 2) and checksum (offset 10) of the IPv4 header at 14.
            if let Some(ip) = hdr.get_mut(14..34).and_then(|h| h.first_chunk_mut::<20>()) {
                [ip[2], ip[3]] = (ip_len as u16).to_be_bytes();
                [ip[10], ip[11]] = c.to_be_bytes();
            }
        }
        if let Some(u) = hdr.get_mut(l.udp..).and_then(|h| h.first_chunk_mut::<8>()) {
            [u[0], u[1]] = sport.to_be_bytes();
            [u[4], u[5]] = udp_len.to_be_bytes();
        }
        if zone_vni.is_some() {
            let [_, v0, v1, v2] = vni.to_be_bytes();
            put(hdr, l.tun + 4, &[v0, v1, v2]);
        }
        if protocol != ethertype::TEB {
            put(hdr, l.tun + 2, &protocol.to_be_bytes());
        }
        if l.v6 || self.config.udp_checksum_v4 {
            let dst = dst.unwrap_or(self.default_dst);
            let data = pkt.data_mut();
            let src = self.config.underlay.src;
            let pseudo = match src {
                IpAddr::V4(s) => checksum::pseudo_header_v4(
                    s.octets(),
                    dst.first_chunk::<4>().copied().unwrap_or_default(),
                    proto::UDP,
                    udp_len,
                ),
                IpAddr::V6(s) => {
                    checksum::pseudo_header_v6(&s.octets(), &dst, proto::UDP, u32::from(udp_len))
                }
            };
            let seg = data.get_mut(l.udp..).unwrap_or(&mut []);
            let c = checksum::udp_finish(
                u32::from(checksum::fold(checksum::sum(0, seg)))
                    + u32::from(checksum::fold(pseudo)),
            );
            put(seg, 6, &c.to_be_bytes());
        }
        Ok(())
    }

    /// The outer destination of a packet, or `None` for the default one.
    #[inline]
    fn destination(&mut self, now: Instant, meta: &Meta, vni: u32) -> Option<[u8; 16]> {
        match &mut self.config.destination {
            Destination::Fixed => None,
            Destination::NextHop(hosts) => {
                if meta.next_hop == NO_NEXT_HOP {
                    return None;
                }
                raw(*hosts.get(meta.next_hop as usize)?, self.layout.v6)
            }
            Destination::Mapping(cache) => {
                if meta.has(flags::L3_VALID)
                    && let Lookup::Host(h) = cache.lookup(now, vni, meta.flow.dst_ip())
                    && let Some(r) = raw(h, self.layout.v6)
                {
                    return Some(r);
                }
                self.default_path += 1;
                None
            }
        }
    }

    #[inline]
    fn source_port(&self, meta: &Meta) -> u16 {
        let h = if meta.has(flags::HASH_VALID) {
            meta.flow_hash
        } else if meta.has(flags::L3_VALID) {
            fold_key(&meta.flow)
        } else {
            0
        };
        let off = ((u64::from(h as u32 ^ (h >> 32) as u32) * u64::from(self.span)) >> 32) as u16;
        self.config.src_ports.0.wrapping_add(off)
    }
}

/// A cheap, unkeyed fold of a flow key: entropy for the underlay's ECMP, not a secret.
#[inline]
fn fold_key(k: &FlowKey) -> u64 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = u64::from(k.proto) ^ (u64::from(k.src_port) << 16 | u64::from(k.dst_port)) << 8;
    for half in [k.src_raw(), k.dst_raw()] {
        let (a, b) = half.split_at(8);
        let a = u64::from_le_bytes(a.try_into().unwrap_or_default());
        let b = u64::from_le_bytes(b.try_into().unwrap_or_default());
        h = (h ^ a).wrapping_mul(M).rotate_left(29) ^ b;
        h = h.wrapping_mul(M);
    }
    h ^ (h >> 31)
}

/// Copies the header template into the pushed bytes; false if the lengths differ. Headers
/// are short (50 to 322 bytes), so instead of a call into `memcpy` this copies two fixed-size
/// blocks that overlap in the middle (the widest block size that fits twice).
#[inline(always)]
fn copy_template(dst: &mut [u8], src: &[u8]) -> bool {
    let n = src.len();
    if dst.len() != n {
        return false;
    }
    match n {
        64..=128 => copy_ends::<64>(dst, src),
        32..=63 => copy_ends::<32>(dst, src),
        _ => dst.copy_from_slice(src),
    }
    true
}

/// Copies the first and the last `N` bytes of `src` (of the same length as `dst`, at least
/// `N` and at most `2 * N`), which together cover all of it.
#[inline(always)]
fn copy_ends<const N: usize>(dst: &mut [u8], src: &[u8]) {
    if let (Some(d), Some(s)) = (dst.first_chunk_mut::<N>(), src.first_chunk::<N>()) {
        *d = *s;
    }
    if let (Some(d), Some(s)) = (dst.last_chunk_mut::<N>(), src.last_chunk::<N>()) {
        *d = *s;
    }
}

#[inline]
fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(d) = buf.get_mut(off..off + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

fn raw(ip: IpAddr, v6: bool) -> Option<[u8; 16]> {
    match (ip, v6) {
        (IpAddr::V4(a), false) => {
            let mut r = [0u8; 16];
            put(&mut r, 0, &a.octets());
            Some(r)
        }
        (IpAddr::V6(a), true) => Some(a.octets()),
        _ => None,
    }
}

fn build_template(
    c: &EncapConfig,
    v6: bool,
    t: &mut [u8; TEMPLATE_LEN],
) -> Result<(Layout, [u8; 16]), ConfigError> {
    let u = c.underlay;
    let err = |_| ConfigError::FamilyMismatch;
    EthernetRepr {
        src: u.src_mac,
        dst: u.dst_mac,
        ethertype: if v6 { ethertype::IPV6 } else { ethertype::IPV4 },
    }
    .emit(t)
    .map_err(err)?;
    let default_dst = raw(u.dst, v6).ok_or(ConfigError::FamilyMismatch)?;
    let fixed_vni = match c.vni {
        VniSource::Fixed(v) => v,
        VniSource::Zone | VniSource::Map(_) => 0,
    };
    let ip = t.get_mut(14..).unwrap_or(&mut []);
    let ip_hlen = match u.src {
        IpAddr::V4(s) => Ipv4Repr {
            src: s.octets(),
            dst: default_dst.first_chunk::<4>().copied().unwrap_or_default(),
            proto: proto::UDP,
            ttl: c.ttl,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            payload_len: 0,
            options: [0; 40],
            options_len: 0,
        }
        .emit(ip)
        .map_err(err)?,
        IpAddr::V6(s) => Ipv6Repr {
            src: s.octets(),
            dst: default_dst,
            next_header: proto::UDP,
            hop_limit: c.ttl,
            traffic_class: 0,
            flow_label: 0,
            payload_len: 0,
        }
        .emit(ip)
        .map_err(err)?,
    };
    let udp = 14 + ip_hlen;
    UdpRepr {
        src_port: 0,
        dst_port: c.dst_port,
        payload_len: 0,
        checksum: 0,
    }
    .emit(t.get_mut(udp..).unwrap_or(&mut []))
    .map_err(err)?;
    let tun = udp + 8;
    let tbuf = t.get_mut(tun..).unwrap_or(&mut []);
    let tlen = match &c.tunnel {
        EncapTunnel::Geneve(opts) => GeneveRepr::new(fixed_vni, ethertype::TEB, opts)
            .emit(tbuf)
            .map_err(|_| ConfigError::VniOutOfRange)?,
        EncapTunnel::Vxlan => VxlanRepr { vni: fixed_vni }.emit(tbuf).map_err(err)?,
    };
    let mut ip_base = 0;
    let mut ip_base_default = 0;
    if !v6 {
        // Every header word except total length (1), checksum (5) and destination (8, 9).
        let hdr = t.get(14..34).unwrap_or(&[]);
        for (i, w) in hdr.chunks_exact(2).enumerate() {
            if !matches!(i, 1 | 5) {
                ip_base_default = checksum::sum(ip_base_default, w);
            }
            if !matches!(i, 1 | 5 | 8 | 9) {
                ip_base = checksum::sum(ip_base, w);
            }
        }
    }
    Ok((
        Layout {
            len: tun + tlen,
            udp,
            tun,
            v6,
            ip_base,
            ip_base_default,
        },
        default_dst,
    ))
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Stage<B> for EncapStage {
    #[inline]
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        if self.v4_fixed {
            self.each_pending(
                batch,
                #[inline(always)]
                |s, _, pkt| s.encap_v4_fixed(pkt).into(),
            );
        } else {
            self.each_pending(
                batch,
                #[inline(always)]
                |s, _, pkt| s.encap_general(now, pkt).into(),
            );
        }
    }
}

impl StageLoop for EncapStage {
    fn counters_mut(&mut self) -> &mut StageCounters {
        &mut self.counters
    }
}

impl StageControl for EncapStage {
    fn name(&self) -> &'static str {
        "tunnel_encap"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }

    /// The common counters, `default_path`, then the mapping cache's (`mapping_*`) when
    /// destinations come from one.
    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.counters.visit(self.name(), f);
        f(self.name(), "default_path", self.default_path);
        if let Destination::Mapping(cache) = &self.config.destination {
            cache.visit_counters(self.name(), f);
        }
    }

    /// The mapping cache's revalidation timer, when destinations come from one.
    fn poll_timeout(&self) -> Option<Instant> {
        match &self.config.destination {
            Destination::Mapping(cache) => cache.poll_timeout(),
            _ => None,
        }
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.mapping_mut()
            .map_or(0, |c| c.handle_timeout(now, budget))
    }

    /// The outer headers pushed in front of every packet ([`EncapStage::overhead`]).
    fn headroom(&self) -> usize {
        self.overhead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VxlanRepr;
    use alloc::vec;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use nf_core::{Verdict, ZoneId};
    use proptest::prelude::*;

    fn addr(v6: bool, last: u8) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(last)))
        } else {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
        }
    }

    /// Ethernet / IPv4 / UDP with `payload` bytes of data.
    fn inner_frame(payload: usize) -> Vec<u8> {
        let mut f = vec![
            0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64,
            17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0x03, 0xe8, 0, 53, 0, 0, 0, 0,
        ];
        f[16..18].copy_from_slice(&((28 + payload) as u16).to_be_bytes());
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    fn options() -> impl Strategy<Value = OptionsBuilder> {
        proptest::collection::vec((any::<u16>(), any::<u8>(), 0usize..5), 0..5).prop_map(|l| {
            let mut b = OptionsBuilder::new();
            for (class, ty, words) in l {
                let _ = b.push(class, ty, &[0x33; 16][..words * 4]);
            }
            b
        })
    }

    /// Any configuration; `fast_shape` restricts it to the one the fast path serves.
    fn config(fast_shape: bool) -> impl Strategy<Value = EncapConfig> {
        (
            any::<bool>(),
            proptest::option::of(options()),
            any::<bool>(),
            proptest::option::of(0u32..0x0100_0000),
            proptest::option::of(proptest::collection::vec(
                (any::<bool>(), any::<u8>()),
                0..3,
            )),
            (any::<u16>(), any::<u16>(), any::<u16>()),
            any::<bool>(),
            prop_oneof![60u16..200, Just(1500u16), Just(u16::MAX)],
            any::<u8>(),
        )
            .prop_map(
                move |(v6, geneve, ip_payload, vni, hops, (port, a, b), csum, mtu, ttl)| {
                    let v6 = v6 && !fast_shape;
                    let underlay = Underlay {
                        src_mac: [2, 0, 0, 0, 1, 1],
                        dst_mac: [2, 0, 0, 0, 2, 2],
                        src: addr(v6, 1),
                        dst: addr(v6, 2),
                    };
                    let mut c = match geneve {
                        Some(o) => EncapConfig::geneve(o, 0, underlay),
                        None => EncapConfig::vxlan(0, underlay),
                    };
                    if ip_payload && geneve.is_some() {
                        c.payload = Payload::Ip;
                    }
                    c.vni = match vni {
                        None => VniSource::Zone,
                        // Zones 1 and 2 (and the largest) have VNIs; others drop.
                        Some(v) if v % 3 == 0 => VniSource::Map(crate::zones::VniTable::new(&[
                            (v, ZoneId(1)),
                            ((v + 1) & 0x00ff_ffff, ZoneId(2)),
                            ((v + 2) & 0x00ff_ffff, ZoneId(u32::MAX)),
                        ])),
                        Some(v) => VniSource::Fixed(v),
                    };
                    if let Some(h) = hops
                        && !fast_shape
                    {
                        c.destination =
                            Destination::NextHop(h.iter().map(|&(v, l)| addr(v, l)).collect());
                    }
                    c.dst_port = port;
                    c.src_ports = (a.min(b), a.max(b));
                    c.udp_checksum_v4 = csum && !fast_shape;
                    c.mtu = mtu;
                    c.ttl = ttl;
                    c
                },
            )
    }

    /// A packet to encapsulate: a parsed inner frame or arbitrary bytes, with metadata as
    /// earlier stages might have left it, in a buffer with some headroom.
    fn packet() -> impl Strategy<Value = Packet<Vec<u8>>> {
        (
            prop_oneof![
                (0usize..60).prop_map(inner_frame),
                proptest::collection::vec(any::<u8>(), 0..80)
            ],
            prop_oneof![0usize..160, Just(512usize)],
            prop_oneof![0u32..4, 0u32..0x0100_0000, any::<u32>()],
            proptest::option::of(any::<u64>()),
            prop_oneof![Just(NO_NEXT_HOP), 0u32..4],
            proptest::option::of((
                prop_oneof![Just(ethertype::IPV4), Just(ethertype::IPV6), any::<u16>()],
                0u16..40,
            )),
        )
            .prop_map(|(frame, headroom, zone, hash, next_hop, l2)| {
                let mut p =
                    Packet::new(vec![0u8; headroom + frame.len()], headroom, frame.len()).unwrap();
                p.data_mut().copy_from_slice(&frame);
                p.meta.zone = ZoneId(zone);
                let _ = nf_core::parse_frame(&frame, &mut p.meta, &Default::default());
                if let Some((et, l3)) = l2 {
                    p.meta.ethertype = et;
                    p.meta.l3 = l3;
                }
                if let Some(h) = hash {
                    p.meta.flow_hash = h;
                    p.meta.flags |= flags::HASH_VALID;
                }
                p.meta.next_hop = next_hop;
                p
            })
    }

    type Outcome = (Verdict, Vec<u8>, Meta, usize, StageCounters);

    fn run(stage: &mut EncapStage, p: &Packet<Vec<u8>>) -> Outcome {
        let mut b = Batch::new();
        b.push(p.clone()).unwrap();
        stage.process(Instant::ZERO, &mut b);
        let p = b.drain().next().unwrap();
        (
            p.meta.verdict,
            p.data().to_vec(),
            p.meta,
            p.headroom(),
            stage.counters().clone(),
        )
    }

    /// The frame a stage with `c` should emit for `p`, from the `Repr`s of each header, or
    /// the drop reason (given enough headroom).
    fn reference(c: &EncapConfig, p: &Packet<Vec<u8>>) -> Result<Vec<u8>, DropReason> {
        let (mut inner, mut protocol) = (p.data(), ethertype::TEB);
        if c.payload == Payload::Ip {
            protocol = p.meta.ethertype;
            if !matches!(protocol, ethertype::IPV4 | ethertype::IPV6) {
                return Err(DropReason::TunnelBadProtocol);
            }
            inner = inner
                .get(usize::from(p.meta.l3)..)
                .ok_or(DropReason::TunnelTruncated)?;
        }
        let vni = match &c.vni {
            VniSource::Fixed(v) => *v,
            VniSource::Zone => p.meta.zone.0,
            // A zone without a VNI: one no header can carry, refused like a wide zone.
            VniSource::Map(t) => t.vni(p.meta.zone).unwrap_or(u32::MAX),
        };
        let mut tun = [0u8; 8 + crate::geneve::MAX_OPTIONS_LEN];
        let (tun_len, emitted) = match &c.tunnel {
            EncapTunnel::Geneve(o) => {
                let r = GeneveRepr::new(vni, protocol, o);
                (r.buffer_len(), r.emit(&mut tun))
            }
            EncapTunnel::Vxlan => (8, VxlanRepr { vni }.emit(&mut tun)),
        };
        let v6 = matches!(c.underlay.src, IpAddr::V6(_));
        let udp_len = 8 + tun_len + inner.len();
        let ip_len = udp_len + if v6 { 40 } else { 20 };
        if ip_len > usize::from(c.mtu) {
            return Err(DropReason::TooBig);
        }
        emitted.map_err(|_| DropReason::TunnelUnknownVni)?;
        let tun = &tun[..tun_len];
        let dst = match &c.destination {
            Destination::NextHop(h) if p.meta.next_hop != NO_NEXT_HOP => h
                .get(p.meta.next_hop as usize)
                .filter(|a| a.is_ipv6() == v6)
                .copied()
                .unwrap_or(c.underlay.dst),
            _ => c.underlay.dst,
        };
        let m = &p.meta;
        let h = if m.has(flags::HASH_VALID) {
            m.flow_hash
        } else if m.has(flags::L3_VALID) {
            fold_key(&m.flow)
        } else {
            0
        };
        let span = u64::from(c.src_ports.1 - c.src_ports.0) + 1;
        let sport = c.src_ports.0 + ((u64::from(h as u32 ^ (h >> 32) as u32) * span) >> 32) as u16;
        let mut out = vec![0u8; 14 + ip_len - udp_len];
        EthernetRepr {
            src: c.underlay.src_mac,
            dst: c.underlay.dst_mac,
            ethertype: if v6 { ethertype::IPV6 } else { ethertype::IPV4 },
        }
        .emit(&mut out)
        .unwrap();
        let pseudo = match (c.underlay.src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                Ipv4Repr {
                    src: s.octets(),
                    dst: d.octets(),
                    proto: proto::UDP,
                    ttl: c.ttl,
                    dscp_ecn: 0,
                    ident: 0,
                    dont_frag: true,
                    more_frags: false,
                    frag_offset: 0,
                    payload_len: udp_len as u16,
                    options: [0; 40],
                    options_len: 0,
                }
                .emit(&mut out[14..])
                .unwrap();
                checksum::pseudo_header_v4(s.octets(), d.octets(), proto::UDP, udp_len as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                Ipv6Repr {
                    src: s.octets(),
                    dst: d.octets(),
                    next_header: proto::UDP,
                    hop_limit: c.ttl,
                    traffic_class: 0,
                    flow_label: 0,
                    payload_len: udp_len as u16,
                }
                .emit(&mut out[14..])
                .unwrap();
                checksum::pseudo_header_v6(&s.octets(), &d.octets(), proto::UDP, udp_len as u32)
            }
            _ => unreachable!(),
        };
        let udp = out.len();
        out.extend_from_slice(&[0; 8]);
        UdpRepr {
            src_port: sport,
            dst_port: c.dst_port,
            payload_len: (udp_len - 8) as u16,
            checksum: 0,
        }
        .emit(&mut out[udp..])
        .unwrap();
        out.extend_from_slice(tun);
        out.extend_from_slice(inner);
        if v6 || c.udp_checksum_v4 {
            let s = checksum::udp_finish(checksum::sum(pseudo, &out[udp..]));
            out[udp + 6..udp + 8].copy_from_slice(&s.to_be_bytes());
        }
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn fast_path_equals_general_path(c in config(true), p in packet()) {
            let mut fast = EncapStage::new(c.clone()).unwrap();
            let mut general = EncapStage::new(c).unwrap();
            prop_assert!(fast.v4_fixed);
            general.v4_fixed = false;
            prop_assert_eq!(run(&mut fast, &p), run(&mut general, &p));
        }

        #[test]
        fn counted_as_stage_counters_account_counts(
            c in config(false),
            pkts in proptest::collection::vec((packet(), any::<bool>()), 1..20),
        ) {
            let mut stage = EncapStage::new(c).unwrap();
            let mut batch = Batch::new();
            for (mut p, dropped) in pkts {
                if dropped {
                    p.meta.verdict = Verdict::Drop(DropReason::NonIp);
                }
                batch.push(p).unwrap();
            }
            let before = batch.pending_mask();
            stage.process(Instant::ZERO, &mut batch);
            let mut want = StageCounters::default();
            want.account(before, &batch);
            prop_assert_eq!(stage.counters(), &want);
        }

        #[test]
        fn output_equals_a_reference_built_from_reprs(c in config(false), mut p in packet()) {
            // Enough headroom for any header.
            let frame = p.data().to_vec();
            let meta = p.meta;
            p = Packet::new(vec![0u8; 512 + frame.len()], 512, frame.len()).unwrap();
            p.data_mut().copy_from_slice(&frame);
            p.meta = meta;
            let mut stage = EncapStage::new(c.clone()).unwrap();
            let (verdict, data, ..) = run(&mut stage, &p);
            match reference(&c, &p) {
                Ok(want) => {
                    prop_assert_eq!(verdict, Verdict::Pass);
                    prop_assert_eq!(data, want);
                }
                Err(r) => prop_assert_eq!(verdict, Verdict::Drop(r)),
            }
        }
    }
}
