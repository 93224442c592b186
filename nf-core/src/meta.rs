//! Per-packet metadata ([`Meta`] and what it holds: public at the crate root).

use crate::flow::{Family, FlowKey, ZoneId};
use crate::verdict::Verdict;
use core::net::IpAddr;

/// Which way a packet travels relative to the session that owns it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The direction of the packet that created the session.
    #[default]
    Original,
    /// The opposite direction.
    Reply,
}

/// A handle to one session: the address family of its table, the slot index, and the
/// generation the slot had when the handle was issued, so a stale handle never reaches a
/// reused slot and a handle never reaches the other family's table.
///
/// The handle that connection tracking writes into [`Meta::session`] works with every
/// method that takes one (the stage's and either table's: a table answers `None` / `Stale`
/// for a handle of the other family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionRef {
    pub(crate) index: u32,
    pub(crate) generation: u32,
    pub(crate) family: Family,
}

impl SessionRef {
    /// A handle (crate-internal: only tables issue them).
    #[inline(always)]
    pub(crate) const fn new(family: Family, index: u32, generation: u32) -> Self {
        Self {
            index,
            generation,
            family,
        }
    }

    /// The slot index in its family's table.
    #[inline]
    pub const fn index(self) -> u32 {
        self.index
    }

    /// The slot's generation when the handle was issued.
    #[inline]
    pub const fn generation(self) -> u32 {
        self.generation
    }

    /// The address family of the session (which table holds it).
    #[inline]
    pub const fn family(self) -> Family {
        self.family
    }
}

/// Bit flags in [`Meta::flags`].
pub mod flags {
    /// The L3 header is IPv4 or IPv6 and [`Meta::flow`](super::Meta::flow) is valid.
    pub const L3_VALID: u16 = 1 << 0;
    /// The packet has a parsed transport header (TCP, UDP, ICMP with its 8 bytes).
    pub const L4_VALID: u16 = 1 << 1;
    /// An IP fragment (first or later).
    pub const FRAGMENT: u16 = 1 << 2;
    /// A later (non-first) fragment: no transport header, ports in the key are 0.
    pub const LATER_FRAGMENT: u16 = 1 << 3;
    /// IPv4 options or IPv6 extension headers were present.
    pub const IP_OPTIONS: u16 = 1 << 4;
    /// An ICMP/ICMPv6 error carrying another packet's headers (ports in the key are 0).
    pub const ICMP_ERROR: u16 = 1 << 5;
    /// [`Meta::flow_hash`](super::Meta::flow_hash) holds the keyed hash of the flow key.
    pub const HASH_VALID: u16 = 1 << 6;
    /// The frame carried at least one VLAN tag.
    pub const VLAN: u16 = 1 << 7;
    /// Connection tracking matched this ICMP error or later fragment to the session it
    /// belongs to ([`Meta::session`](super::Meta::session)); the session was not refreshed.
    pub const RELATED: u16 = 1 << 8;
    /// The data starts at the L3 header, with no Ethernet header in front (a bare IP tunnel
    /// payload, a TUN device); [`Meta::ethertype`](super::Meta::ethertype) says which L3.
    /// [`parse_l3`](crate::parse_l3) sets it and [`parse_frame`](crate::parse_frame) clears
    /// it; the parse and decapsulation stages honour it, so they can follow a stage that
    /// strips down to L3. To feed bare IP packets to a pipeline, set it and `ethertype`.
    pub const NO_L2: u16 = 1 << 9;
}

/// Which tunnel a packet arrived in ([`TunnelMeta::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// Geneve (RFC 8926).
    Geneve,
    /// VXLAN (RFC 7348).
    Vxlan,
}

/// Bytes of registered tunnel option data a decapsulation stage keeps in
/// [`TunnelMeta::option_data`].
pub const TUNNEL_OPTION_DATA_LEN: usize = 32;

/// What decapsulation stages learned from the tunnel headers they stripped.
///
/// A second decapsulation stage (a tunnel inside a tunnel: AWS GWLB carrying VXLAN Traffic
/// Mirroring, say) adds to it rather than replacing it: `kind` and `vni` are the innermost
/// tunnel's, `outer_vni` and the underlay fields (`outer_*`) stay those of the first,
/// outermost tunnel (the one a reply goes back through), `depth` counts the tunnels, and
/// `options` / `option_data` belong to the last stage that registered options.
///
/// The stripped headers also stay in the headroom, `outer_len` bytes just in front of the
/// data, until something is pushed there; every field here stays valid after that.
///
/// New fields may be added: build one from [`TunnelMeta::default`].
///
/// ```
/// use nf_core::TunnelMeta;
/// let mut t = TunnelMeta::default();
/// t.vni = 5001;
/// assert_eq!(t.outer_len, 0);
/// assert!(!t.is_decapsulated());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct TunnelMeta {
    /// The innermost tunnel stripped; `None` if not decapsulated.
    pub kind: Option<TunnelKind>,
    /// Number of tunnels stripped (0: not decapsulated).
    pub depth: u8,
    /// Bit `i` set: the `i`-th option the decap stage was asked to look for was present.
    pub options: u16,
    /// Virtual network identifier (Geneve / VXLAN VNI) of the innermost tunnel.
    pub vni: u32,
    /// The outermost tunnel (equal to `kind` when `depth` is 1).
    pub outer_kind: Option<TunnelKind>,
    /// VNI of the outermost tunnel (equal to `vni` when `depth` is 1).
    pub outer_vni: u32,
    /// Bytes of outer headers stripped in front of the data (all tunnels); 0 if not
    /// decapsulated.
    pub outer_len: u16,
    /// Offset of the outermost tunnel's IP header from the start of the stripped headers.
    pub outer_l3: u16,
    /// Offset of the outermost tunnel's UDP header from the start of the stripped headers.
    pub outer_udp: u16,
    /// UDP source port of the outermost tunnel (the sender's flow entropy).
    pub outer_src_port: u16,
    /// Address family of the underlay.
    pub outer_family: Family,
    /// Underlay source address of the outermost tunnel (IPv4 in the first 4 bytes).
    pub outer_src: [u8; 16],
    /// Underlay destination address of the outermost tunnel.
    pub outer_dst: [u8; 16],
    /// The data of the registered options that have a fixed length, packed in the order they
    /// were registered (the decapsulation stage tells where each one is); zero where an
    /// option was absent.
    pub option_data: [u8; TUNNEL_OPTION_DATA_LEN],
}

impl TunnelMeta {
    /// True once a decapsulation stage stripped a tunnel.
    #[inline]
    pub const fn is_decapsulated(&self) -> bool {
        self.depth != 0
    }

    /// The outermost tunnel's underlay source address.
    pub fn outer_src_ip(&self) -> IpAddr {
        ip_of(self.outer_family, &self.outer_src)
    }

    /// The outermost tunnel's underlay destination address.
    pub fn outer_dst_ip(&self) -> IpAddr {
        ip_of(self.outer_family, &self.outer_dst)
    }
}

fn ip_of(family: Family, raw: &[u8; 16]) -> IpAddr {
    match family {
        Family::V4 => IpAddr::from(raw.first_chunk::<4>().copied().unwrap_or_default()),
        Family::V6 => IpAddr::from(*raw),
    }
}

/// Sentinel for "no next hop / backend chosen".
pub const NO_NEXT_HOP: u32 = u32::MAX;

/// Everything stages record about one packet: what stages learn about it and tell each
/// other.
///
/// Offsets are relative to the start of the packet's current data and are kept valid by
/// [`Packet::push_front`](crate::Packet::push_front) and
/// [`Packet::pull_front`](crate::Packet::pull_front). Stages of sibling crates never call each
/// other; they cooperate only through these fields.
///
/// New fields may be added: build one from [`Meta::default`] and set what you need.
///
/// ```
/// use nf_core::{Meta, ZoneId};
/// let mut meta = Meta::default();
/// meta.zone = ZoneId(7);
/// assert!(meta.verdict.is_pass());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Meta {
    /// The packet's fate so far.
    pub verdict: Verdict,
    /// Flow key of the packet as parsed (valid when [`flags::L3_VALID`] is set).
    pub flow: FlowKey,
    /// Keyed flow hash (valid when [`flags::HASH_VALID`] is set).
    pub flow_hash: u64,
    /// Session this packet belongs to, once connection tracking found or created it.
    pub session: Option<SessionRef>,
    /// Next hop / backend slot chosen by a routing or LB stage, or [`NO_NEXT_HOP`].
    pub next_hop: u32,
    /// Zone (tenant, VPC) of the packet; the parse stage copies it into the flow key.
    pub zone: ZoneId,
    /// Offset of the L3 header.
    pub l3: u16,
    /// Offset of the transport header (or where it would start).
    pub l4: u16,
    /// Offset of the transport payload.
    pub payload: u16,
    /// EtherType of the L3 header (after VLAN tags).
    pub ethertype: u16,
    /// VLAN ids, outermost first (`vlan_count` of them are valid).
    pub vlan: [u16; 2],
    /// Number of VLAN tags parsed (0 to 2).
    pub vlan_count: u8,
    /// TCP flags byte (FIN=0x01 ... CWR=0x80), 0 when not TCP.
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type, 0 otherwise.
    pub icmp_type: u8,
    /// Packet direction relative to its session.
    pub direction: Direction,
    /// See [`flags`].
    pub flags: u16,
    /// Tunnel the packet arrived in, filled by a decapsulation stage.
    pub tunnel: TunnelMeta,
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            verdict: Verdict::Pass,
            flow: FlowKey::default(),
            flow_hash: 0,
            session: None,
            next_hop: NO_NEXT_HOP,
            zone: ZoneId(0),
            l3: 0,
            l4: 0,
            payload: 0,
            ethertype: 0,
            vlan: [0; 2],
            vlan_count: 0,
            tcp_flags: 0,
            icmp_type: 0,
            direction: Direction::Original,
            flags: 0,
            tunnel: TunnelMeta::default(),
        }
    }
}

impl Meta {
    /// True if every bit of `flag` is set.
    #[inline]
    pub const fn has(&self, flag: u16) -> bool {
        self.flags & flag == flag
    }

    /// Shifts the header offsets by `n` bytes pushed in front (saturating at u16::MAX).
    #[inline]
    pub(crate) fn shift_up(&mut self, n: usize) {
        // A shift by u16::MAX or more saturates every offset alike.
        let n = u16::try_from(n).unwrap_or(u16::MAX);
        self.l3 = self.l3.saturating_add(n);
        self.l4 = self.l4.saturating_add(n);
        self.payload = self.payload.saturating_add(n);
    }

    /// Shifts the header offsets by `n` bytes removed from the front (offsets of removed
    /// headers clamp at 0).
    #[inline]
    pub(crate) fn shift_down(&mut self, n: usize) {
        let n = u16::try_from(n).unwrap_or(u16::MAX);
        self.l3 = self.l3.saturating_sub(n);
        self.l4 = self.l4.saturating_sub(n);
        self.payload = self.payload.saturating_sub(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shifts_saturate_like_wide_arithmetic(
            offs in any::<[u16; 3]>(),
            n in prop_oneof![any::<usize>(), 0usize..70_000],
        ) {
            let m = Meta { l3: offs[0], l4: offs[1], payload: offs[2], ..Meta::default() };
            let (mut up, mut down) = (m, m);
            up.shift_up(n);
            down.shift_down(n);
            let want = |o: u16, d: i128| (i128::from(o) + d).clamp(0, 0xffff) as u16;
            let n = n as i128;
            prop_assert_eq!((up.l3, up.l4, up.payload), (want(offs[0], n), want(offs[1], n), want(offs[2], n)));
            prop_assert_eq!((down.l3, down.l4, down.payload), (want(offs[0], -n), want(offs[1], -n), want(offs[2], -n)));
        }
    }
}
