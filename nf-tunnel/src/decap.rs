//! The decapsulation stage: recognise Geneve and VXLAN by UDP destination port, check the
//! outer headers, map the VNI to a zone, strip the outer headers in place and parse the
//! inner frame.
//!
//! For every packet still at [`Verdict::Pass`]:
//! - not IP/UDP to a configured port (or an IP fragment): left alone, or dropped with
//!   [`DropReason::NotTunnel`] ([`DecapConfig::non_tunnel`]);
//! - an IPv4 / IPv6 / UDP header that is malformed (or, for IPv4, has a bad checksum when
//!   checked): dropped with that layer's reason, whatever its port;
//! - malformed outer headers, a non-zero UDP checksum that does not verify (or a zero one
//!   over IPv6 unless allowed), a bad tunnel header, an unknown critical option, a missing
//!   required option, an unknown VNI, a spoofed inner source: dropped with the reason;
//! - a Geneve control message (O bit): [`Verdict::ToControl`], not stripped;
//! - otherwise the outer headers are pulled off (they stay in the headroom, see
//!   [`TunnelMeta`]), `meta.zone` and `meta.tunnel` are set and the
//!   inner frame is parsed: from Ethernet (Geneve 0x6558, VXLAN) or, for a Geneve IPv4/IPv6
//!   payload, from the IP header (`meta.l3 == 0`).

use crate::mapping::{MappingCache, SourceCheck, ip_from_raw};
use crate::outer::{Outer, OuterError, parse_outer, udp_checksum_ok};
use crate::zones::ZoneMap;
use crate::{GENEVE_PORT, GenevePacket, TunnelError, VXLAN_PORT, VxlanPacket};
use alloc::vec::Vec;
use nf_core::meta::flags;
use nf_core::wire::ethertype;
use nf_core::{
    Batch, Counted, DropReason, Instant, Meta, Packet, ParseConfig, Parsed, Stage, StageCounters,
    TunnelMeta, Verdict, parse_frame, parse_l3,
};

/// Which tunnel a UDP port carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    /// Geneve (RFC 8926).
    Geneve,
    /// VXLAN (RFC 7348).
    Vxlan,
}

/// Fate of frames that are not tunnel packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonTunnel {
    /// Leave them at [`Verdict::Pass`] for later stages.
    #[default]
    Pass,
    /// Drop them with [`DropReason::NotTunnel`].
    Drop,
}

/// What happens to a packet whose inner source the mapping cache does not know yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownSource {
    /// Drop it (a query is queued; later packets pass once answered).
    #[default]
    Drop,
    /// Let it through.
    Pass,
}

/// A Geneve option the stage understands: it may be critical, it is reported in
/// `meta.tunnel.options` (bit = its index in [`DecapConfig::options`]), and it may be
/// required with an exact data length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    /// Option class.
    pub class: u16,
    /// Option type without the critical bit.
    pub ty: u8,
    /// Required data length in bytes, if any.
    pub data_len: Option<u8>,
    /// Packets without it are dropped ([`DropReason::TunnelMissingOption`]).
    pub required: bool,
}

impl OptionSpec {
    /// An optional option of any length.
    pub const fn known(class: u16, ty: u8) -> Self {
        Self {
            class,
            ty,
            data_len: None,
            required: false,
        }
    }
    /// A required option with exactly `data_len` bytes of data.
    pub const fn required(class: u16, ty: u8, data_len: u8) -> Self {
        Self {
            class,
            ty,
            data_len: Some(data_len),
            required: true,
        }
    }
}

/// Most options a stage tracks (one bit each in `meta.tunnel.options`).
pub const MAX_OPTION_SPECS: usize = 16;

/// Decapsulation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecapConfig {
    /// UDP destination ports and the tunnel each carries.
    pub ports: Vec<(u16, TunnelKind)>,
    /// VNI → zone.
    pub zones: ZoneMap,
    /// Options understood / reported / required (at most [`MAX_OPTION_SPECS`]).
    pub options: Vec<OptionSpec>,
    /// Verify the outer IPv4 header checksum.
    pub verify_ipv4_checksum: bool,
    /// Verify non-zero outer UDP checksums.
    pub verify_udp_checksum: bool,
    /// Accept a zero UDP checksum over IPv6 (RFC 6935/6936 tunnels; RFC 8926 §3.3).
    pub accept_zero_udp6_checksum: bool,
    /// Fate of frames that are not tunnel packets.
    pub non_tunnel: NonTunnel,
    /// Anti-spoofing: fate of packets whose inner source is not mapped yet.
    pub unknown_source: UnknownSource,
    /// Inner frame parsing.
    pub parse: ParseConfig,
}

impl Default for DecapConfig {
    fn default() -> Self {
        Self {
            ports: alloc::vec![
                (GENEVE_PORT, TunnelKind::Geneve),
                (VXLAN_PORT, TunnelKind::Vxlan)
            ],
            zones: ZoneMap::Identity,
            options: Vec::new(),
            verify_ipv4_checksum: true,
            verify_udp_checksum: true,
            accept_zero_udp6_checksum: false,
            non_tunnel: NonTunnel::Pass,
            unknown_source: UnknownSource::Drop,
            parse: ParseConfig::default(),
        }
    }
}

/// The decapsulation stage (see the module docs).
#[derive(Debug)]
pub struct DecapStage {
    config: DecapConfig,
    required_mask: u16,
    hosts: Option<MappingCache>,
    counters: StageCounters,
}

impl DecapStage {
    /// A stage with `config` (options beyond [`MAX_OPTION_SPECS`] are ignored).
    pub fn new(mut config: DecapConfig) -> Self {
        config.options.truncate(MAX_OPTION_SPECS);
        let required_mask = config
            .options
            .iter()
            .enumerate()
            .filter(|(_, o)| o.required)
            .fold(0u16, |m, (i, _)| m | (1 << i));
        Self {
            config,
            required_mask,
            hosts: None,
            counters: StageCounters::default(),
        }
    }

    /// Also checks every inner source against `cache` (anti-spoofing): the outer source
    /// must be the host mapped for (VNI, inner source).
    pub fn with_source_check(mut self, cache: MappingCache) -> Self {
        self.hosts = Some(cache);
        self
    }

    /// The settings.
    pub fn config(&self) -> &DecapConfig {
        &self.config
    }

    /// The anti-spoofing cache, for driving its queries and timers.
    pub fn source_cache_mut(&mut self) -> Option<&mut MappingCache> {
        self.hosts.as_mut()
    }

    /// Decapsulates one packet (what [`Stage::process`] does for each pending packet).
    ///
    /// # Errors
    /// The packet's drop reason.
    #[inline]
    pub fn decap<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
    ) -> Result<Verdict, DropReason> {
        let data = pkt.data();
        let outer = match parse_outer(data, self.config.verify_ipv4_checksum) {
            Ok(o) => o,
            Err(OuterError::NotUdp) => return self.not_tunnel(),
            // A broken IPv4/IPv6/UDP header is dropped whatever port it was for.
            Err(OuterError::Bad(r)) => return Err(r),
        };
        let Some(kind) = self.kind(outer.dst_port) else {
            return self.not_tunnel();
        };
        if outer.udp_checksum == 0 {
            if outer.v6 && !self.config.accept_zero_udp6_checksum {
                return Err(DropReason::TunnelBadUdpChecksum);
            }
        } else if self.config.verify_udp_checksum && !udp_checksum_ok(data, &outer) {
            return Err(DropReason::TunnelBadUdpChecksum);
        }
        let tun = data.get(outer.tunnel()..).unwrap_or(&[]);
        let tun = tun.get(..outer.udp_payload_len).unwrap_or(tun);
        let (vni, hdr_len, inner_et, opt_mask) = match kind {
            TunnelKind::Vxlan => {
                let v = VxlanPacket::new_checked(tun)?;
                (v.header().vni(), crate::VXLAN_HEADER_LEN, ethertype::TEB, 0)
            }
            TunnelKind::Geneve => {
                let g = GenevePacket::new_checked(tun)?;
                let mask = self.check_options(&g)?;
                if g.header().oam() {
                    return Ok(Verdict::ToControl);
                }
                let p = g.header().protocol.get();
                if !matches!(p, ethertype::TEB | ethertype::IPV4 | ethertype::IPV6) {
                    return Err(DropReason::TunnelBadProtocol);
                }
                (g.header().vni(), g.header_len(), p, mask)
            }
        };
        let zone = self
            .config
            .zones
            .zone(vni)
            .ok_or(DropReason::TunnelUnknownVni)?;
        let strip = outer.tunnel() + hdr_len;
        let excess = data
            .len()
            .saturating_sub(outer.tunnel() + outer.udp_payload_len);
        pkt.trim_back(excess)
            .map_err(|_| DropReason::TunnelTruncated)?;
        pkt.pull_front(strip)
            .map_err(|_| DropReason::TunnelTruncated)?;
        let (inner, meta) = pkt.data_and_meta_mut();
        meta.zone = zone;
        meta.tunnel = TunnelMeta {
            vni,
            outer_len: strip as u16,
            options: opt_mask,
        };
        let parsed = if inner_et == ethertype::TEB {
            parse_frame(inner, meta, &self.config.parse)?
        } else {
            parse_l3(inner, inner_et, meta, &self.config.parse)?
        };
        if let Some(cache) = self.hosts.as_mut() {
            check_source(
                cache,
                now,
                &outer,
                vni,
                meta,
                parsed,
                self.config.unknown_source,
            )?;
        }
        Ok(Verdict::Pass)
    }

    #[inline]
    fn kind(&self, port: u16) -> Option<TunnelKind> {
        self.config
            .ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, k)| *k)
    }

    #[inline]
    fn not_tunnel(&self) -> Result<Verdict, DropReason> {
        match self.config.non_tunnel {
            NonTunnel::Pass => Ok(Verdict::Pass),
            NonTunnel::Drop => Err(DropReason::NotTunnel),
        }
    }

    /// Walks the options once: unknown critical → drop; registered → bit; required
    /// missing or of the wrong length → drop.
    #[inline]
    fn check_options(&self, g: &GenevePacket<&[u8]>) -> Result<u16, TunnelError> {
        let mut mask = 0u16;
        for o in g.options() {
            let ty = o.ty & !crate::geneve::CRITICAL;
            match self
                .config
                .options
                .iter()
                .position(|s| s.class == o.class && s.ty == ty)
            {
                Some(i) => {
                    let spec = self.config.options.get(i);
                    if let Some(want) = spec.and_then(|s| s.data_len)
                        && usize::from(want) != o.data.len()
                    {
                        return Err(TunnelError::MissingOption);
                    }
                    mask |= 1 << i;
                }
                None if o.is_critical() => return Err(TunnelError::CriticalOption),
                None => {}
            }
        }
        if mask & self.required_mask != self.required_mask {
            return Err(TunnelError::MissingOption);
        }
        Ok(mask)
    }
}

#[inline]
fn check_source(
    cache: &mut MappingCache,
    now: Instant,
    outer: &Outer,
    vni: u32,
    meta: &Meta,
    parsed: Parsed,
    unknown: UnknownSource,
) -> Result<(), DropReason> {
    if parsed != Parsed::Ip || !meta.has(flags::L3_VALID) {
        // Nothing to validate an address against (ARP and the like): let the
        // control path judge it.
        return Ok(());
    }
    let inner = meta.flow.src_ip();
    let outer_src = ip_from_raw(&outer.src, outer.v6);
    match cache.check_source(now, vni, inner, outer_src) {
        SourceCheck::Valid => Ok(()),
        SourceCheck::Spoofed => Err(DropReason::TunnelSpoofed),
        SourceCheck::Unknown if unknown == UnknownSource::Pass => Ok(()),
        SourceCheck::Unknown => Err(DropReason::TunnelSpoofed),
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Stage<B> for DecapStage {
    #[inline]
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        let before = batch.pending_mask();
        for pkt in batch.packets_mut() {
            if !pkt.meta.verdict.is_pass() {
                continue;
            }
            pkt.meta.verdict = match self.decap(now, pkt) {
                Ok(v) => v,
                Err(r) => Verdict::Drop(r),
            };
        }
        self.counters.account(before, batch);
    }
}

impl Counted for DecapStage {
    fn name(&self) -> &'static str {
        "tunnel_decap"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }
}

/// The outer headers a decapsulation stage stripped from `pkt`, still in its headroom
/// (`None` if it was not decapsulated or the headroom no longer holds them).
pub fn stripped_headers<B: AsRef<[u8]>>(pkt: &Packet<B>) -> Option<&[u8]> {
    let n = usize::from(pkt.meta.tunnel.outer_len);
    if n == 0 {
        return None;
    }
    let h = pkt.headroom();
    pkt.buffer().as_ref().get(h.checked_sub(n)?..h)
}

/// The Geneve header (with its options) a decapsulation stage stripped from `pkt`.
pub fn received_geneve<B: AsRef<[u8]>>(pkt: &Packet<B>) -> Option<GenevePacket<&[u8]>> {
    let hdrs = stripped_headers(pkt)?;
    let outer = parse_outer_prefix(hdrs)?;
    GenevePacket::new_checked(hdrs.get(outer.tunnel()..)?).ok()
}

/// Parses stripped outer headers whose IP/UDP lengths count the (absent) payload.
pub(crate) fn parse_outer_prefix(hdrs: &[u8]) -> Option<Outer> {
    // The stripped bytes end where the payload began, so the IP and UDP length fields
    // point past them; locate the headers by their fixed layout instead.
    let &[.., e0, e1] = hdrs.first_chunk::<14>()?;
    let mut et = u16::from_be_bytes([e0, e1]);
    let mut l3 = 14;
    if et == ethertype::VLAN {
        let &[_, _, t0, t1] = hdrs.get(14..)?.first_chunk::<4>()?;
        et = u16::from_be_bytes([t0, t1]);
        l3 = 18;
    }
    let ip = hdrs.get(l3..)?;
    let (v6, hlen, src, dst) = match et {
        ethertype::IPV4 => {
            let b = ip.first_chunk::<20>()?;
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.get_mut(..4)?.copy_from_slice(b.get(12..16)?);
            d.get_mut(..4)?.copy_from_slice(b.get(16..20)?);
            (false, usize::from(b.first()? & 0x0f) * 4, s, d)
        }
        ethertype::IPV6 => {
            let b = ip.first_chunk::<40>()?;
            let s: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = b.get(24..40)?.try_into().ok()?;
            (true, 40, s, d)
        }
        _ => return None,
    };
    let udp = l3 + hlen;
    let &[s0, s1, d0, d1, _, _, c0, c1] = hdrs.get(udp..)?.first_chunk::<8>()?;
    Some(Outer {
        l3,
        udp,
        v6,
        src,
        dst,
        src_port: u16::from_be_bytes([s0, s1]),
        dst_port: u16::from_be_bytes([d0, d1]),
        udp_payload_len: hdrs.len().saturating_sub(udp + 8),
        udp_checksum: u16::from_be_bytes([c0, c1]),
    })
}
