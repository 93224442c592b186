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
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;
use nf_core::checksum;
use nf_core::flow::proto;
use nf_core::meta::{NO_NEXT_HOP, flags};
use nf_core::wire::ethernet::EthernetRepr;
use nf_core::wire::ethertype;
use nf_core::wire::ipv4::Ipv4Repr;
use nf_core::wire::ipv6::Ipv6Repr;
use nf_core::wire::udp::UdpRepr;
use nf_core::{
    Batch, Counted, DropReason, FlowKey, Instant, Meta, Packet, Stage, StageCounters, Verdict,
};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VniSource {
    /// The same VNI on every packet.
    Fixed(u32),
    /// The packet's zone (`meta.zone`), which must fit 24 bits.
    Zone,
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

/// Why an [`EncapConfig`] was refused.
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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FamilyMismatch => "underlay source and destination families differ",
            Self::VniOutOfRange => "VNI above 24 bits",
            Self::BadPortRange => "empty UDP source port range",
            Self::PayloadNotSupported => "VXLAN carries only Ethernet frames",
        })
    }
}

impl core::error::Error for ConfigError {}

const TEMPLATE_LEN: usize = 14 + 40 + 8 + GENEVE_HEADER_LEN + crate::geneve::MAX_OPTIONS_LEN;

/// Offsets of the per-packet fields in the template.
#[derive(Clone, Copy, Debug)]
struct Layout {
    len: usize,
    udp: usize,
    tun: usize,
    v6: bool,
    /// Partial sum of the IPv4 header with total length, checksum and destination zero.
    ip_base: u32,
}

/// The encapsulation stage (see the module docs).
#[derive(Debug)]
pub struct EncapStage {
    config: EncapConfig,
    template: [u8; TEMPLATE_LEN],
    layout: Layout,
    default_dst: [u8; 16],
    span: u32,
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
        if let VniSource::Fixed(v) = config.vni
            && v > 0x00ff_ffff
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
        Ok(Self {
            span: u32::from(config.src_ports.1 - config.src_ports.0) + 1,
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
        let l = self.layout;
        let mut protocol = ethertype::TEB;
        if self.config.payload == Payload::Ip {
            protocol = pkt.meta.ethertype;
            if !matches!(protocol, ethertype::IPV4 | ethertype::IPV6) {
                return Err(DropReason::TunnelBadProtocol);
            }
            pkt.pull_front(usize::from(pkt.meta.l3))
                .map_err(|_| DropReason::TunnelTruncated)?;
        }
        let inner_len = pkt.len();
        let ip_len = l.len - 14 + inner_len;
        if ip_len > usize::from(self.config.mtu) {
            return Err(DropReason::TooBig);
        }
        let vni = match self.config.vni {
            VniSource::Fixed(v) => v,
            VniSource::Zone if pkt.meta.zone.0 <= 0x00ff_ffff => pkt.meta.zone.0,
            VniSource::Zone => return Err(DropReason::TunnelUnknownVni),
        };
        let dst = self.destination(now, &pkt.meta, vni);
        let sport = self.source_port(&pkt.meta);
        let udp_len = (ip_len - (l.udp - 14)) as u16;
        let hdr = pkt.push_front(l.len).map_err(|_| DropReason::NoHeadroom)?;
        let tpl = self.template.get(..l.len).unwrap_or(&[]);
        if hdr.len() != tpl.len() {
            return Err(DropReason::NoHeadroom);
        }
        hdr.copy_from_slice(tpl);
        if l.v6 {
            put(hdr, 14 + 4, &((ip_len - 40) as u16).to_be_bytes());
            put(hdr, 14 + 24, &dst);
        } else {
            let d4 = dst.first_chunk::<4>().copied().unwrap_or_default();
            put(hdr, 14 + 2, &(ip_len as u16).to_be_bytes());
            put(hdr, 14 + 16, &d4);
            let s = l.ip_base + u32::from(ip_len as u16) + checksum::sum(0, &d4);
            put(hdr, 14 + 10, &checksum::finish(s).to_be_bytes());
        }
        put(hdr, l.udp, &sport.to_be_bytes());
        put(hdr, l.udp + 4, &udp_len.to_be_bytes());
        let [_, v0, v1, v2] = vni.to_be_bytes();
        put(hdr, l.tun + 4, &[v0, v1, v2]);
        if protocol != ethertype::TEB {
            put(hdr, l.tun + 2, &protocol.to_be_bytes());
        }
        if l.v6 || self.config.udp_checksum_v4 {
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

    #[inline]
    fn destination(&mut self, now: Instant, meta: &Meta, vni: u32) -> [u8; 16] {
        match &mut self.config.destination {
            Destination::Fixed => self.default_dst,
            Destination::NextHop(hosts) => {
                if meta.next_hop == NO_NEXT_HOP {
                    return self.default_dst;
                }
                match hosts.get(meta.next_hop as usize) {
                    Some(h) => raw(*h, self.layout.v6).unwrap_or(self.default_dst),
                    None => self.default_dst,
                }
            }
            Destination::Mapping(cache) => {
                if meta.has(flags::L3_VALID)
                    && let Lookup::Host(h) = cache.lookup(now, vni, meta.flow.dst_ip())
                    && let Some(r) = raw(h, self.layout.v6)
                {
                    return r;
                }
                self.default_path += 1;
                self.default_dst
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
    let ip = t.get_mut(14..).unwrap_or(&mut []);
    let ip_hlen = match u.src {
        IpAddr::V4(s) => Ipv4Repr {
            src: s.octets(),
            dst: [0; 4],
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
            dst: [0; 16],
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
        EncapTunnel::Geneve(opts) => GeneveRepr::new(0, ethertype::TEB, opts)
            .emit(tbuf)
            .map_err(|_| ConfigError::VniOutOfRange)?,
        EncapTunnel::Vxlan => VxlanRepr { vni: 0 }.emit(tbuf).map_err(err)?,
    };
    let mut ip_base = 0;
    if !v6 {
        // Every header word except total length (1), checksum (5) and destination (8, 9).
        let hdr = t.get(14..34).unwrap_or(&[]);
        for (i, w) in hdr.chunks_exact(2).enumerate() {
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
        },
        default_dst,
    ))
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Stage<B> for EncapStage {
    #[inline]
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        let before = batch.pending_mask();
        for pkt in batch.packets_mut() {
            if !pkt.meta.verdict.is_pass() {
                continue;
            }
            if let Err(r) = self.encap(now, pkt) {
                pkt.meta.verdict = Verdict::Drop(r);
            }
        }
        self.counters.account(before, batch);
    }
}

impl Counted for EncapStage {
    fn name(&self) -> &'static str {
        "tunnel_encap"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }
}
