//! Policy stages for nf — **not built yet**; this crate holds only its charter.
//!
//! `nf-policy` will own:
//! - stateful security groups (allow rules; replies of allowed flows pass through the
//!   `nf-core` session table);
//! - stateless, ordered network ACLs;
//! - longest-prefix matching for IPv4 and IPv6;
//! - token-bucket rate limiters per zone and per flow.
//!
//! It depends only on `nf-core`; stages cooperate with others through `nf-core` metadata.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;
