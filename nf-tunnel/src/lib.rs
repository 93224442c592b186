//! Tunnel stages for nf — **not built yet**; this crate holds only its charter.
//!
//! `nf-tunnel` will own Geneve (RFC 8926) and VXLAN (RFC 7348) header views with option TLVs,
//! in-place encapsulation and decapsulation stages with flow-hash source-port entropy, and the
//! overlay mapping cache (virtual IP → underlay host) with anti-spoofing validation.
//!
//! It depends only on `nf-core`; stages cooperate with others through `nf-core` metadata.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;
