//! NAT gateway stages for nf — **not built yet**; this crate holds only its charter.
//!
//! `nf-nat` will own:
//! - a port allocator that picks ports per destination (endpoint-independent mapping,
//!   address- and port-dependent filtering as configured), from port blocks owned by this node
//!   so that replies can be steered back to the owner without coordination;
//! - SNAT and DNAT stages that rewrite headers in place with RFC 1624 incremental checksum
//!   updates from `nf-core`, keeping both flows of a translation in `nf-core`'s session table;
//! - ICMP error translation (embedded headers) per RFC 5508;
//! - NAT profiles: strict RFC 4787/5382 behaviour, Hyperplane-style, and carrier-grade NAT.
//!
//! It depends only on `nf-core`; stages cooperate with others through `nf-core` metadata.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;
