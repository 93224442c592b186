//! Shuffle-sharded tenant placement for nf — **not built yet**; this crate holds only its charter.
//!
//! `nf-shuffle` will own the stateless, keyed, zone-aware sharder (tenant → k nodes), the
//! stateful sharder with an overlap cap, flow → node selection within a shard, and the exact
//! overlap probabilities.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;
