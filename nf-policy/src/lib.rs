//! Policy for nf: packet classification, network ACLs, security groups, prefix matching and
//! rate limits.
//!
//! - [`classifier`]: a multi-field packet [`Classifier`] (IPv4/IPv6 prefixes, protocol, port
//!   ranges, ICMP type/code; first match wins) by Recursive Flow Classification: a fixed number
//!   of table reads per lookup whatever the rules, their masks or the traffic (no tuple-space
//!   explosion), built off the hot path under a memory limit, classified in batches.
//! - [`acl`]: network ACLs ([`Acl`], [`NetworkAcl`]): numbered allow/deny rules, first match
//!   wins, implicit deny, inbound and outbound lists; the [`AclStage`] with per-rule hits.
//! - [`sg`]: security groups ([`SecurityGroups`]), allow-only and stateful, as a connection
//!   tracking session service: new flows classified once, return traffic passes, rule swaps
//!   keep established flows; optionally AWS's untracked flows (rules open both ways: no
//!   session, every packet classified).
//! - [`lpm`]: longest-prefix match for IPv4 ([`Ipv4Lpm`], DIR-24-8 or 16-8-8) and IPv6
//!   ([`Ipv6Lpm`], 16-bit root then 8-bit strides), built by validating builders off the hot
//!   path, immutable, looked up singly or in batches.
//! - [`route`]: per-zone [`RouteTables`] with next-hop ids (the transit-gateway pattern), and
//!   the [`RouteStage`] that writes each packet's next hop from its zone's table.
//! - [`meter`]: [`TokenBucket`], the RFC 2697 single-rate ([`SrTcm`]) and RFC 2698 two-rate
//!   ([`TrTcm`]) three-colour markers, colour-blind and colour-aware, exact integer token
//!   arithmetic on the caller's clock.
//! - [`elastic`]: the Achelous elastic credit limiter ([`ElasticLimiter`]) over bytes, packets
//!   and the caller's measured processing cost.
//! - [`source`]: per-source-IP limits in a fixed-size, keyed table ([`SourceLimits`]).
//! - [`flow_limit`]: per-zone new-flow rate limits that connection tracking consults
//!   ([`ZoneNewFlowLimit`], a session-service wrapper; `conntrack_allowance_exceeded`).
//!
//! It depends only on `nf-core`; stages cooperate with others through `nf-core` metadata.
//!
//! ```
//! use core::net::Ipv4Addr;
//! use nf_policy::Ipv4Lpm;
//!
//! let table = Ipv4Lpm::from_routes([
//!     (Ipv4Addr::new(10, 0, 0, 0), 8, 1),
//!     (Ipv4Addr::new(10, 1, 0, 0), 16, 2),
//!     (Ipv4Addr::new(0, 0, 0, 0), 0, 9),
//! ])?;
//! assert_eq!(table.lookup(Ipv4Addr::new(10, 1, 2, 3)), Some(2));
//! assert_eq!(table.lookup(Ipv4Addr::new(10, 2, 0, 1)), Some(1));
//! assert_eq!(table.lookup(Ipv4Addr::new(192, 0, 2, 1)), Some(9));
//!
//! let mut out = [None; 2];
//! table.lookup_batch(&[Ipv4Addr::new(10, 1, 0, 0), Ipv4Addr::new(11, 0, 0, 0)], &mut out);
//! assert_eq!(out, [Some(2), Some(9)]);
//! # Ok::<(), nf_policy::LpmError>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod acl;
pub mod classifier;
pub mod elastic;
pub mod flow_limit;
pub mod lpm;
pub mod meter;
pub mod route;
pub mod sg;
pub mod source;

pub use acl::{
    Acl, AclAction, AclBuilder, AclDirection, AclError, AclRule, AclStage, AclVerdict, NetworkAcl,
};
pub use classifier::{
    ClassKey, Classifier, ClassifierBuilder, ClassifierConfig, ClassifierError, Match, PortRange,
    Prefix,
};
pub use elastic::{
    Admission, ElasticConfig, ElasticCounters, ElasticDimension, ElasticLimiter, SpendRate,
};
pub use flow_limit::ZoneNewFlowLimit;
pub use lpm::{Ipv4Layout, Ipv4Lpm, Ipv4LpmBuilder, Ipv6Lpm, Ipv6LpmBuilder, LpmError};
pub use meter::{
    BucketConfig, Color, MeterConfigError, SrTcm, SrTcmConfig, TokenBucket, TrTcm, TrTcmConfig,
};
pub use route::{MissAction, RouteStage, RouteTable, RouteTables};
pub use sg::{
    SecurityGroups, SgConfig, SgDecision, SgDirection, SgDirectionFn, SgError, SgPeer, SgRule,
    SgRuleSet, SgRuleSetBuilder, SgTables,
};
pub use source::{
    IpLimit, SourceCounters, SourceLimitConfig, SourceLimitError, SourceLimits, WhenFull,
};
