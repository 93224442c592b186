//! # nf-core
//!
//! The foundation of nf: caller-owned packet buffers with headroom, per-packet metadata,
//! batches with verdicts and drop reasons, zero-copy header views, the parse stage, flow keys
//! with keyed (SipHash) and symmetric hashing, Toeplitz RSS hashing, Internet checksums with
//! incremental updates, caller-supplied time, the [`Stage`] trait with zero-cost pipeline
//! composition, and connection tracking ([`conntrack`]).
//!
//! nf does no I/O and reads no clock. The caller owns the loop: it fills a [`Batch`] from its
//! receive path (AF_XDP, DPDK, TUN, a pcap file), runs a pipeline of stages with the current
//! time, acts on each packet's [`Verdict`], and gives timers their turn.
//!
//! ```
//! use nf_core::conntrack::{Conntrack, ConntrackConfig};
//! use nf_core::{Batch, StageControl, Direction, Instant, Packet, ParseStage, Stage, StageExt, Verdict};
//!
//! // The caller's receive path: here, a UDP query, its answer, and a runt.
//! fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
//!     let mut f = vec![0u8; 42];
//!     f[12..14].copy_from_slice(&[0x08, 0x00]);
//!     f[14..24].copy_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17]);
//!     f[26..30].copy_from_slice(&src);
//!     f[30..34].copy_from_slice(&dst);
//!     let c = nf_core::checksum::checksum(&f[14..34]);
//!     f[24..26].copy_from_slice(&c.to_be_bytes());
//!     f[34..36].copy_from_slice(&sport.to_be_bytes());
//!     f[36..38].copy_from_slice(&dport.to_be_bytes());
//!     f[38..40].copy_from_slice(&8u16.to_be_bytes());
//!     f
//! }
//! let rx = vec![
//!     udp([10, 0, 0, 1], [10, 0, 0, 53], 40000, 53),
//!     udp([10, 0, 0, 53], [10, 0, 0, 1], 53, 40000),
//!     vec![0u8; 9],
//! ];
//!
//! // A pipeline is a plain struct: parse, then connection tracking (4096 IPv4 and 1024 IPv6
//! // sessions, allocated once, here).
//! let conntrack = Conntrack::<u64>::new(ConntrackConfig::new(4096, 1024, *b"operator secret!"))?;
//! let mut pipeline = ParseStage::default().then(conntrack);
//! let mut batch = Batch::new();
//! let mut now = Instant::from_nanos(1_000_000_000);
//! let mut seen = Vec::new();
//! for frames in rx.chunks(nf_core::BATCH_SIZE) {
//!     for frame in frames {
//!         // Leave headroom in front of each frame for encapsulation.
//!         let mut buf = vec![0u8; 128 + frame.len()];
//!         buf[128..].copy_from_slice(frame);
//!         batch.push(Packet::new(buf, 128, frame.len())?).ok();
//!     }
//!     pipeline.process(now, &mut batch);
//!     for pkt in batch.drain() {
//!         match pkt.meta.verdict {
//!             Verdict::Pass => seen.push((pkt.meta.direction, pkt.meta.session)),
//!             Verdict::Drop(reason) => println!("dropped: {reason}"),
//!             Verdict::Tx(_) | Verdict::ToControl => {}
//!         }
//!     }
//!     // Timers: bounded work per call, driven by the caller's clock.
//!     now = Instant::from_nanos(now.as_nanos() + 1_000_000);
//!     while pipeline.second.poll_timeout().is_some_and(|t| t <= now) {
//!         pipeline.second.handle_timeout(now, 256);
//!     }
//! }
//! pipeline.visit_counters(&mut |stage, counter, value| println!("{stage} {counter} {value}"));
//! // The answer found the query's session, travelling the other way; the runt was dropped.
//! assert_eq!(seen[0].0, Direction::Original);
//! assert_eq!(seen[1], (Direction::Reply, seen[0].1));
//! assert!(seen[0].1.is_some());
//! assert_eq!(pipeline.first.counters().drops.total(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Features
//! - `std` (default, additive): reserved for std-only conveniences; nothing in the crate needs
//!   it today (errors implement `core::error::Error`). Without it the crate is `#![no_std]` +
//!   `alloc`, which `.ci/nostd-link` proves by linking it into a `no_std` binary.
#![no_std]
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod batch;
pub mod checksum;
pub mod conntrack;
pub mod flow;
pub mod hash;
pub mod meta;
pub mod packet;
pub mod parse;
pub mod stage;
mod sys;
pub mod time;
pub mod toeplitz;
pub mod verdict;
pub mod wire;

pub use batch::{BATCH_SIZE, Batch};
pub use conntrack::{Conntrack, ConntrackConfig, SessionTable, TableConfig};
pub use flow::{Family, FlowKey, ZoneId};
pub use hash::{FlowHasher, owner_of};
pub use meta::{Direction, Meta, SessionRef, TunnelMeta};
pub use packet::{Packet, PacketError};
pub use parse::{NonIpAction, ParseConfig, ParseStage, Parsed, parse_frame, parse_l3};
pub use stage::{Chain, Stage, StageControl, StageCounters, StageExt, StageLoop};

/// The traits and types most programs use: `use nf_core::prelude::*;`.
pub mod prelude {
    pub use crate::batch::{BATCH_SIZE, Batch};
    pub use crate::flow::{Family, FlowKey, ZoneId};
    pub use crate::meta::{Direction, Meta, SessionRef};
    pub use crate::packet::Packet;
    pub use crate::parse::ParseStage;
    pub use crate::stage::{Stage, StageControl, StageExt, StageLoop};
    pub use crate::time::{Duration, Instant};
    pub use crate::verdict::{DropReason, Verdict};
}
pub use time::{Duration, Instant};
pub use verdict::{DropCounters, DropReason, PortId, Verdict};
