//! # nf-tunnel
//!
//! Geneve (RFC 8926) and VXLAN (RFC 7348) for nf pipelines: zero-copy header views with
//! `Repr`s, Geneve option TLVs, in-place decapsulation and encapsulation stages, the AWS
//! Gateway Load Balancer and Google Cloud profiles, and the overlay mapping cache
//! (VNI, virtual IP → underlay host) with anti-spoofing.
//!
//! | module | what |
//! |---|---|
//! | [`geneve`], [`vxlan`] | views, `Repr`s, option iterator and builder |
//! | [`decap`] | [`DecapStage`]: outer headers by nf-core's parse walk, ports → tunnel, checks, VNI → zone, strip, inner parse handed over in `Meta`; nested tunnels |
//! | [`encap`] | [`EncapStage`]: push outer Ethernet/IP/UDP/tunnel into headroom |
//! | [`reflect`] | [`ReflectStage`]: send a packet back in the tunnel it came in |
//! | [`profile`] | AWS GWLB (class 0x0108) and GCP (class 0x0132) |
//! | [`mapping`] | [`MappingCache`]: sans-IO, batched queries, TTL revalidation, per-VNI quotas and query rates |
//!
//! A complete loop: frames arrive Geneve-encapsulated, are decapsulated (the VNI becomes
//! the zone of the inner flow key), and leave VXLAN-encapsulated towards an underlay host.
//!
//! ```
//! use core::net::{IpAddr, Ipv4Addr};
//! use nf_core::wire::Frame;
//! use nf_core::{Batch, Instant, Packet, Stage, StageControl, StageExt, Verdict, ZoneId};
//! use nf_tunnel::{DecapConfig, DecapStage, EncapConfig, EncapStage, OptionsBuilder, Underlay};
//!
//! let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
//! // An inner Ethernet/IPv4/UDP frame 10.0.0.1:1000 -> 10.0.0.2:53, checksums filled in.
//! let inner = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(1000, 53).to_vec()?;
//! // Build what a Geneve peer would send us (VNI 7, one option), with our own encap stage.
//! let mut opts = OptionsBuilder::new();
//! opts.push(0x0108, 3, &[0xca, 0xfe, 0xf0, 0x0d])?;
//! let peer = Underlay {
//!     src_mac: [2, 0, 0, 0, 0, 2], dst_mac: [2, 0, 0, 0, 0, 1],
//!     src: v4(192, 0, 2, 2), dst: v4(192, 0, 2, 1),
//! };
//! let mut peer_encap = EncapStage::new(EncapConfig::geneve(opts, 7, peer))?;
//!
//! // Our pipeline: Geneve in, VXLAN (VNI = zone) out to 198.51.100.9.
//! let mut out = EncapConfig::vxlan(0, Underlay {
//!     src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 3],
//!     src: v4(192, 0, 2, 1), dst: v4(198, 51, 100, 9),
//! });
//! out.vni = nf_tunnel::VniSource::Zone;
//! let mut pipeline = DecapStage::new(DecapConfig::default())?.then(EncapStage::new(out)?);
//!
//! let mut batch = Batch::new();
//! // Headroom for both encapsulations: the peer's and then ours.
//! let headroom = peer_encap.headroom() + pipeline.headroom();
//! for _ in 0..4 {
//!     batch.push(Packet::with_headroom(&inner, headroom)).ok();
//! }
//! let now = Instant::ZERO;
//! peer_encap.process(now, &mut batch); // the caller's RX would deliver these
//! pipeline.process(now, &mut batch);
//! for pkt in batch.drain() {
//!     assert_eq!(pkt.meta.verdict, Verdict::Pass);
//!     assert_eq!(pkt.meta.zone, ZoneId(7));
//!     assert_eq!(pkt.meta.tunnel.vni, 7);
//!     assert_eq!(pkt.len(), 14 + 20 + 8 + 8 + inner.len()); // VXLAN-encapsulated
//!     // ... hand pkt.data() to the caller's TX
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Counters, timers, headroom
//!
//! Every stage implements [`StageControl`](nf_core::StageControl), so a pipeline of them is
//! driven through the pipeline value: [`visit_counters`](nf_core::StageControl::visit_counters)
//! reports the common counters of each stage (`tunnel_decap`, `tunnel_reflect`,
//! `tunnel_encap`), then its own: encap's `default_path`, and `mapping_hits`,
//! `mapping_misses`, `mapping_queries`, `mapping_queue_full`, `mapping_evictions`,
//! `mapping_expired`, `mapping_rate_limited`, `mapping_bucket_full`,
//! `mapping_pending_recycled`, `mapping_quota_recycled`, `mapping_quota_refused`,
//! `mapping_shared_budget`, `mapping_unsolicited` for a stage holding a [`MappingCache`]
//! (decap's anti-spoofing cache, encap's destination cache; see
//! [`MappingStats`](mapping::MappingStats)). The cache's revalidation timer is the stage's
//! [`poll_timeout`](nf_core::StageControl::poll_timeout) /
//! [`handle_timeout`](nf_core::StageControl::handle_timeout); its queries and answers stay
//! with the caller ([`DecapStage::source_cache_mut`], [`EncapStage::mapping_mut`]).
//! [`headroom`](nf_core::StageControl::headroom) is what encap pushes; decap and reflect ask
//! for none.
//!
//! ## Features
//! - `std` (default, additive): enables `nf-core/std`. Without it the crate is
//!   `#![no_std]` + `alloc`.
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod decap;
pub mod encap;
pub mod geneve;
pub mod mapping;
pub mod outer;
pub mod profile;
pub mod reflect;
pub mod vxlan;
pub mod zones;

pub use decap::{
    DecapConfig, DecapStage, NonTunnel, OptionSpec, TunnelKind, UnknownSource, received_geneve,
    stripped_headers,
};
pub use encap::{
    ConfigError, Destination, EncapConfig, EncapStage, EncapTunnel, Payload, Underlay, VniSource,
};
pub use geneve::{
    GENEVE_HEADER_LEN, GENEVE_PORT, GeneveOption, GenevePacket, GeneveRepr, Options, OptionsBuilder,
};
pub use mapping::{
    Answer, Lookup, MappingCache, MappingConfig, MappingConfigError, Query, QueryRate, SourceCheck,
    TenantBudget, TenantUsage,
};
pub use reflect::ReflectStage;
pub use vxlan::{VXLAN_HEADER_LEN, VXLAN_LINUX_PORT, VXLAN_PORT, VxlanPacket, VxlanRepr};
pub use zones::{VniTable, ZoneMap};

use core::fmt;
use nf_core::DropReason;

/// Errors from the tunnel headers and their checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TunnelError {
    /// Shorter than the tunnel header or the options it announces.
    Truncated,
    /// Geneve version other than 0.
    BadVersion,
    /// Option lengths that do not add up to the options area.
    BadOptions,
    /// An unknown option with the critical bit set.
    CriticalOption,
    /// VXLAN without the I flag.
    BadFlags,
    /// A payload protocol the stage does not carry.
    BadProtocol,
    /// A required option is missing or has the wrong length.
    MissingOption,
}

impl From<TunnelError> for DropReason {
    fn from(e: TunnelError) -> Self {
        match e {
            TunnelError::Truncated => DropReason::TunnelTruncated,
            TunnelError::BadVersion => DropReason::TunnelBadVersion,
            TunnelError::BadOptions => DropReason::TunnelBadOptions,
            TunnelError::CriticalOption => DropReason::TunnelCriticalOption,
            TunnelError::BadFlags => DropReason::TunnelBadFlags,
            TunnelError::BadProtocol => DropReason::TunnelBadProtocol,
            TunnelError::MissingOption => DropReason::TunnelMissingOption,
        }
    }
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DropReason::from(*self).name())
    }
}

impl core::error::Error for TunnelError {}
