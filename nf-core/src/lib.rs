//! # nf-core
//!
//! The foundation of nf: caller-owned packet buffers with headroom, per-packet metadata,
//! batches with verdicts and drop reasons, zero-copy header views, the parse stage, flow keys
//! with keyed (SipHash) and symmetric hashing, Toeplitz RSS hashing, Internet checksums with
//! incremental updates, caller-supplied time, and the [`Stage`] trait with zero-cost pipeline
//! composition.
//!
//! nf does no I/O and reads no clock. The caller owns the loop: it fills a [`Batch`] from its
//! receive path (AF_XDP, DPDK, TUN, a pcap file), runs a pipeline of stages with the current
//! time, and acts on each packet's [`Verdict`].
//!
//! ```
//! use nf_core::{Batch, Counted, DropReason, FlowHasher, Instant, Packet, ParseStage, Stage, Verdict};
//!
//! // The caller's receive path: here, two frames from memory.
//! let udp: Vec<u8> = vec![
//!     0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00,
//!     0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0x26, 0xcf, 10, 0, 0, 1, 10, 0, 0, 2,
//!     0x03, 0xe8, 0, 53, 0, 8, 0, 0,
//! ];
//! let runt = vec![0u8; 9];
//! let rx = [udp, runt];
//!
//! let hasher = FlowHasher::new(*b"operator secret!");
//! let mut parse = ParseStage::default();
//! let mut batch = Batch::new();
//! let mut now = Instant::ZERO;
//! for chunk in rx.chunks(nf_core::BATCH_SIZE) {
//!     for frame in chunk {
//!         // Leave headroom in front of each frame for encapsulation.
//!         let mut buf = vec![0u8; 128 + frame.len()];
//!         buf[128..].copy_from_slice(frame);
//!         batch.push(Packet::new(buf, 128, frame.len())?).ok();
//!     }
//!     now = Instant::from_nanos(now.as_nanos() + 1_000);
//!     parse.process(now, &mut batch);
//!     for pkt in batch.drain() {
//!         match pkt.meta.verdict {
//!             Verdict::Pass => println!("{} core {}", pkt.meta.flow, nf_core::owner_of(hasher.symmetric(&pkt.meta.flow), 4)),
//!             Verdict::Drop(reason) => println!("dropped: {reason}"),
//!             Verdict::Tx(_) | Verdict::ToControl => {}
//!         }
//!     }
//! }
//! assert_eq!(parse.counters().drops.count(DropReason::EthTruncated), 1);
//! # Ok::<(), nf_core::PacketError>(())
//! ```
//!
//! ## Features
//! - `std` (default, additive): `std::error::Error` impls. Without it the crate is
//!   `#![no_std]` + `alloc`.
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
pub use stage::{Chain, Counted, Stage, StageCounters, StageExt};
pub use time::{Duration, Instant};
pub use verdict::{DropCounters, DropReason, PortId, Verdict};
