//! Flow keys: the zone-scoped 5-tuple, with one canonical byte encoding.
//!
//! A [`FlowKey`] names one direction of a flow. ICMP and ICMPv6 query messages (echo,
//! timestamp, ...) use their identifier as both ports so that a request and its reply are each
//! other's [`FlowKey::reversed`]; other protocols without ports use port 0.
//!
//! The canonical encoding ([`FlowKey::encode`]) is what every keyed hash in nf consumes, so
//! its layout is part of the stable, cross-node contract:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | IP version (4 or 6) |
//! | 1 | IP protocol number |
//! | 4 | zone id, big-endian |
//! | 4 or 16 | source address (network order) |
//! | 4 or 16 | destination address |
//! | 2 | source port, big-endian |
//! | 2 | destination port, big-endian |
//!
//! 18 bytes for IPv4, 42 for IPv6.
//!
//! The key types themselves are public at the crate root only ([`FlowKey`], [`Family`],
//! [`ZoneId`]); this module holds the protocol numbers and the encoding's length.

pub(crate) mod key;
pub(crate) use key::{Family, FlowKey, ZoneId};

/// IP protocol numbers nf gives meaning to.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// Generic Routing Encapsulation.
    pub const GRE: u8 = 47;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;

    /// True for TCP and UDP, the protocols with ports that NAT and load balancing move;
    /// computed without a branch (a stream mixes them unpredictably).
    ///
    /// ```
    /// use nf_core::flow::proto;
    /// assert!(proto::has_ports(proto::TCP) && proto::has_ports(proto::UDP));
    /// assert!(!proto::has_ports(proto::ICMP) && !proto::has_ports(proto::TCP + 64));
    /// ```
    #[inline(always)]
    #[must_use]
    pub const fn has_ports(p: u8) -> bool {
        const PORTS: u64 = 1 << TCP | 1 << UDP;
        // The bit for p, masked off when p is out of the word's range.
        let in_range = (p < 64) as u64;
        (1u64 << (p & 63)) & PORTS & in_range.wrapping_neg() != 0
    }
}

/// Largest canonical encoding ([`FlowKey::encode`]), for IPv6.
pub const MAX_ENCODED_LEN: usize = 42;
