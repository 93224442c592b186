//! What happens to a packet: [`Verdict`], the [`DropReason`] for every drop, and
//! [`DropCounters`] indexed by reason (all public at the crate root).

use core::fmt;

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])+ $variant:ident => $name:literal,)+) => {
        /// Why a packet was dropped. Counters are indexed by `reason as usize`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum DropReason {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl DropReason {
            /// Every reason, in counter-index order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)+];
            /// Number of reasons (the length of a counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable `snake_case` name, for metrics and logs.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)+
                }
            }

            /// The counter name of this reason in a stage's counters: `drop_` and
            /// [`Self::name`].
            pub const fn counter_name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => concat!("drop_", $name),)+
                }
            }
        }
    };
}

drop_reasons! {
    /// Frame shorter than an Ethernet header (or a VLAN tag it announces).
    EthTruncated => "eth_truncated",
    /// More VLAN tags than the parser accepts (two: 802.1ad QinQ).
    VlanTooDeep => "vlan_too_deep",
    /// EtherType is neither IPv4 nor IPv6 and the stage is configured to drop such frames.
    NonIp => "non_ip",
    /// Shorter than an IPv4 header or than its IHL says.
    Ipv4Truncated => "ipv4_truncated",
    /// IPv4 header whose version field is not 4.
    Ipv4BadVersion => "ipv4_bad_version",
    /// IPv4 IHL below 5 (20 bytes).
    Ipv4BadIhl => "ipv4_bad_ihl",
    /// IPv4 total length smaller than the header or larger than the frame.
    Ipv4BadTotalLength => "ipv4_bad_total_length",
    /// IPv4 header checksum does not verify.
    Ipv4BadChecksum => "ipv4_bad_checksum",
    /// IPv4 options that do not fit their declared lengths.
    Ipv4BadOptions => "ipv4_bad_options",
    /// IPv4 fragment that could overlap the transport header (RFC 1858) or a first fragment
    /// too short to hold it.
    Ipv4BadFragment => "ipv4_bad_fragment",
    /// Shorter than the fixed IPv6 header.
    Ipv6Truncated => "ipv6_truncated",
    /// IPv6 header whose version field is not 6.
    Ipv6BadVersion => "ipv6_bad_version",
    /// IPv6 payload length larger than the frame (or zero: jumbograms are not supported).
    Ipv6BadPayloadLength => "ipv6_bad_payload_length",
    /// An IPv6 extension header runs past the end of the packet.
    Ipv6ExtTruncated => "ipv6_ext_truncated",
    /// More IPv6 extension headers than the bounded walk accepts.
    Ipv6TooManyExt => "ipv6_too_many_ext",
    /// Hop-by-Hop Options header anywhere but first (RFC 8200 §4.1).
    Ipv6HopByHopNotFirst => "ipv6_hop_by_hop_not_first",
    /// First IPv6 fragment that does not hold the whole header chain (RFC 7112).
    Ipv6BadFragment => "ipv6_bad_fragment",
    /// Shorter than a TCP header or than its data offset says.
    TcpTruncated => "tcp_truncated",
    /// TCP data offset below 5 (20 bytes).
    TcpBadDataOffset => "tcp_bad_data_offset",
    /// Shorter than a UDP header.
    UdpTruncated => "udp_truncated",
    /// UDP length field below 8 or beyond the IP payload.
    UdpBadLength => "udp_bad_length",
    /// Shorter than the 8-byte ICMP / ICMPv6 header.
    IcmpTruncated => "icmp_truncated",
    /// Not a tunnel packet where a decapsulation stage requires one (not UDP to a tunnel port).
    NotTunnel => "not_tunnel",
    /// Shorter than the Geneve / VXLAN header or the options its length field announces.
    TunnelTruncated => "tunnel_truncated",
    /// Geneve version other than 0 (RFC 8926 §3.4).
    TunnelBadVersion => "tunnel_bad_version",
    /// Geneve option lengths that do not add up to the header's option length.
    TunnelBadOptions => "tunnel_bad_options",
    /// An unknown Geneve option with the critical bit set (RFC 8926 §3.5).
    TunnelCriticalOption => "tunnel_critical_option",
    /// A VXLAN header without the I (valid VNI) flag (RFC 7348 §5).
    TunnelBadFlags => "tunnel_bad_flags",
    /// A tunnel payload protocol the stage does not carry.
    TunnelBadProtocol => "tunnel_bad_protocol",
    /// A VNI with no configured zone.
    TunnelUnknownVni => "tunnel_unknown_vni",
    /// A tunnel profile's required option is missing or has the wrong length.
    TunnelMissingOption => "tunnel_missing_option",
    /// The outer source is not the underlay host mapped for the inner source (anti-spoofing).
    TunnelSpoofed => "tunnel_spoofed",
    /// A non-zero outer UDP checksum that does not verify.
    TunnelBadUdpChecksum => "tunnel_bad_udp_checksum",
    /// An outer IP fragment addressed to a tunnel port: tunnel packets are decapsulated
    /// whole or not at all (an atomic fragment is whole).
    TunnelFragmented => "tunnel_fragmented",
    /// A tunnel packet whose outer destination (IP or MAC) is not one of the node's own.
    TunnelNotLocal => "tunnel_not_local",
    /// More nested tunnels than the stage handles (a third decapsulation, or reflecting a
    /// packet that came through two tunnels).
    TunnelTooDeep => "tunnel_too_deep",
    /// The encapsulated frame would exceed the underlay MTU.
    TooBig => "too_big",
    /// Not enough headroom in the buffer to push the encapsulation headers.
    NoHeadroom => "no_headroom",
    /// Connection tracking: no free session slot and the zone had none of its own to evict.
    SessionTableFull => "session_table_full",
    /// Connection tracking: the zone is at its session quota (or no zone slot is left).
    ZoneQuotaExceeded => "zone_quota_exceeded",
    /// Connection tracking: the zone's new-flow rate allowance is used up (a rate limit on
    /// session creation, such as nf-policy's `ZoneNewFlowLimit`); established flows are not
    /// affected.
    NewFlowRateExceeded => "new_flow_rate_exceeded",
    /// Connection tracking: no session, and the zone's policy does not create one for this
    /// packet (e.g. a TCP segment other than SYN).
    NoSession => "no_session",
    /// Connection tracking: TCP flags invalid for the session's state (e.g. SYN+FIN, no
    /// SYN/ACK/RST at all, SYN+ACK from the originator of a half-open session).
    InvalidTcpState => "invalid_tcp_state",
    /// Connection tracking: the packet's reverse key is its own key (LAND) or already
    /// belongs to another session.
    SessionKeyConflict => "session_key_conflict",
    /// Connection tracking: a service chose a reply key in another zone, and the tables
    /// were built without cross-zone sessions (`SessionService::CROSS_ZONE`,
    /// `TableConfig::cross_zone`).
    SessionCrossZone => "session_cross_zone",
    /// Connection tracking: an ICMP error whose quote is shorter than the inner IP header and
    /// the 8 bytes of transport header it must hold.
    IcmpQuoteTruncated => "icmp_quote_truncated",
    /// Connection tracking: an ICMP error quoting an IPv4 header whose checksum fails.
    IcmpQuoteBadChecksum => "icmp_quote_bad_checksum",
    /// Connection tracking: an ICMP error quoting a flow that has no session (or that names no
    /// flow: a quoted later fragment, a quoted non-query ICMP message).
    RelatedNoSession => "related_no_session",
    /// Connection tracking: a later fragment whose first fragment was not seen (lost, out of
    /// order, expired or evicted from the fragment table).
    FragmentNoSession => "fragment_no_session",
    /// Fragment reordering: a later fragment arrived before its first and the hold pool (or
    /// its datagram's share of it) is full.
    FragmentHoldFull => "fragment_hold_full",
    /// Fragment reordering: a held later fragment's first fragment did not come within the
    /// fragment lifetime.
    FragmentHoldExpired => "fragment_hold_expired",
    /// A session service refused a new flow without a reason of its own.
    ServiceRefused => "service_refused",
    /// TCP window tracking: a segment outside the window the peer offered (or acknowledging
    /// data never sent, or far too old).
    TcpOutOfWindow => "tcp_out_of_window",
    /// TCP window tracking: a reset whose sequence number is outside the window (RST
    /// injection).
    TcpRstOutOfWindow => "tcp_rst_out_of_window",
    /// A network ACL denied the packet: a deny rule matched first, or no rule matched (the
    /// implicit deny).
    AclDenied => "acl_denied",
    /// Security groups: no rule of the interface's groups allows the new flow (groups are
    /// allow-only; packets of admitted sessions, replies included, are not checked again).
    SgDenied => "sg_denied",
    /// Security groups: the flow is left untracked (its rules allow it both ways from and to
    /// anywhere, AWS's exception) and the service passes its packets without a session; a
    /// drop only when another service composed with it cannot serve a packet without one.
    SgUntracked => "sg_untracked",
    /// Load balancing: the session's backend is down and its listener resets such flows
    /// rather than re-hashing them.
    LbBackendDown => "lb_backend_down",
    /// Load balancing: the listener's new-flow rate is above its limit (the flow is served
    /// statelessly unless another service drops it for this reason).
    LbNewFlowRate => "lb_new_flow_rate",
    /// Load balancing: a packet of a DNAT flow, or an ICMP error quoting one, whose headers
    /// cannot be rewritten (a field outside the packet, a quoted packet that does not parse).
    LbUntranslatable => "lb_untranslatable",
    /// NAT: every public port the allocator may use for the flow is taken or quarantined
    /// (no live mapping is ever taken away to make room).
    NatPortsExhausted => "nat_ports_exhausted",
    /// NAT: the allocator's probe bound was reached before a free port was found.
    NatTooManyProbes => "nat_too_many_probes",
    /// NAT: the allocator (or the NAT's IPv6 session store) holds its maximum of mappings.
    NatCapacityFull => "nat_capacity_full",
    /// NAT: the subscriber holds its quota of ports or port blocks (RFC 6888 REQ-4).
    NatQuotaExceeded => "nat_quota_exceeded",
    /// NAT: the flow cannot be translated (a protocol without ports, no public address of
    /// its family, a translated tuple another session holds, or an ICMP error whose quote
    /// cannot be rewritten).
    NatUntranslatable => "nat_untranslatable",
    /// NAT: a packet to a public address that no mapping serves (unsolicited inbound).
    NatNoMapping => "nat_no_mapping",
    /// A router's hop: the IPv4 TTL would run out here, so the packet is not forwarded (its
    /// time exceeded, if any, is a packet of its own; RFC 1812 §5.3.1).
    TtlExpired => "ttl_expired",
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A drop reason is also the error of [`parse_frame`](crate::parse_frame) and
/// [`parse_l3`](crate::parse_l3), so `?` can carry it into `Box<dyn Error>`.
impl core::error::Error for DropReason {}

/// An output port chosen by a stage (the caller maps it to a NIC queue, TUN device, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u16);

/// The fate of a packet, set by stages as the batch flows through a pipeline.
///
/// Only packets still at [`Verdict::Pass`] are processed by later stages; the others have
/// been decided. Every crate's stages report drops through the one [`DropReason`] enum so
/// that a pipeline's counters ([`DropCounters`]) can be read, summed and exported uniformly.
/// Reasons are grouped by the layer that detects them; their [`DropReason::name`] is a
/// stable `snake_case` string for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Undecided: continue to the next stage (and to the caller's default path at the end).
    #[default]
    Pass,
    /// Discard, for this reason.
    Drop(DropReason),
    /// Transmit on this port now.
    Tx(PortId),
    /// Hand to the control path / slow path (ARP, tunnel control messages, ...).
    ToControl,
}

impl Verdict {
    /// True while later stages should still process the packet.
    #[inline]
    pub const fn is_pass(self) -> bool {
        matches!(self, Verdict::Pass)
    }

    /// The drop reason, if dropped.
    #[inline]
    pub const fn drop_reason(self) -> Option<DropReason> {
        match self {
            Verdict::Drop(r) => Some(r),
            _ => None,
        }
    }
}

/// `Ok(())` passes, `Err(r)` drops for `r` (what a per-packet step of a stage returns).
impl From<Result<(), DropReason>> for Verdict {
    #[inline]
    fn from(r: Result<(), DropReason>) -> Self {
        match r {
            Ok(()) => Verdict::Pass,
            Err(r) => Verdict::Drop(r),
        }
    }
}

/// `Ok(v)` is `v`, `Err(r)` drops for `r`.
impl From<Result<Verdict, DropReason>> for Verdict {
    #[inline]
    fn from(r: Result<Verdict, DropReason>) -> Self {
        r.unwrap_or_else(Verdict::Drop)
    }
}

/// One counter per [`DropReason`].
#[derive(Clone, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::COUNT]);

impl Default for DropCounters {
    fn default() -> Self {
        Self([0; DropReason::COUNT])
    }
}

impl DropCounters {
    /// Adds `n` drops for `reason`.
    #[inline]
    pub fn add(&mut self, reason: DropReason, n: u64) {
        if let Some(c) = self.0.get_mut(reason as usize) {
            *c = c.wrapping_add(n);
        }
    }

    /// Drops counted for `reason`.
    pub fn count(&self, reason: DropReason) -> u64 {
        self.0.get(reason as usize).copied().unwrap_or(0)
    }

    /// Sum over every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, &b| a.wrapping_add(b))
    }

    /// Adds every counter of `other` into `self`.
    pub fn merge(&mut self, other: &DropCounters) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// The non-zero counters, in reason order.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .zip(self.0.iter())
            .filter(|(_, n)| **n != 0)
            .map(|(r, n)| (*r, *n))
    }
}

impl fmt::Debug for DropCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.nonzero().map(|(r, n)| (r.name(), n)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_counters_and_names_are_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: alloc::vec::Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        let mut c = DropCounters::default();
        c.add(DropReason::TcpTruncated, 2);
        c.add(DropReason::EthTruncated, 1);
        assert_eq!(c.count(DropReason::TcpTruncated), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(c.nonzero().count(), 2);
    }
}
