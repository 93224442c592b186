//! Policy for nf: prefix matching and rate limits (security groups and network ACLs are still
//! to come).
//!
//! - [`lpm`]: longest-prefix match for IPv4 ([`Ipv4Lpm`], DIR-24-8 or 16-8-8) and IPv6
//!   ([`Ipv6Lpm`], 16-bit root then 8-bit strides), built by validating builders off the hot
//!   path, immutable, looked up singly or in batches.
//! - [`route`]: per-zone [`RouteTables`] with next-hop ids (the transit-gateway pattern).
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

pub mod lpm;
pub mod route;

pub use lpm::{Ipv4Layout, Ipv4Lpm, Ipv4LpmBuilder, Ipv6Lpm, Ipv6LpmBuilder, LpmError};
pub use route::{RouteTable, RouteTables};
