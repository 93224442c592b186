//! Load-balancing stages for nf — **not built yet**; this crate holds only its charter.
//!
//! `nf-lb` will own:
//! - the Maglev lookup table (weighted, keyed SipHash permutations, golden vectors so every
//!   node builds the identical table);
//! - backend pools with health state and connection draining;
//! - an LB stage that picks a backend from the flow hash and keeps established connections on
//!   their backend through `nf-core`'s session table (connection-tracking stickiness).
//!
//! It depends only on `nf-core`; stages cooperate with others through `nf-core` metadata.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;
