//! # nf-core
//!
//! The foundation of nf: caller-owned packet buffers with headroom, per-packet metadata,
//! batches with verdicts and drop reasons, zero-copy header views, the parse stage, flow keys
//! with keyed (SipHash) and symmetric hashing, Toeplitz RSS hashing, Internet checksums with
//! incremental updates and in-place NAT rewriting ([`rewrite`]), caller-supplied time, the [`Stage`] trait with zero-cost pipeline
//! composition, connection tracking ([`conntrack`]), and answers built in place (TCP
//! resets, ICMP packet-too-big errors: [`reply`]).
//!
//! nf does no I/O and reads no clock. The caller owns the loop: it fills a [`Batch`] from its
//! receive path (AF_XDP, DPDK, TUN, a pcap file), runs a pipeline of stages with the current
//! time, acts on each packet's [`Verdict`], and gives timers their turn.
//!
//! ```
//! use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
//! use nf_core::wire::Frame;
//! use nf_core::{Batch, Direction, Instant, Packet, ParseStage, Stage, StageControl, StageExt, Verdict};
//!
//! // The caller's receive path: here, a UDP query, its answer, and a runt.
//! let query = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 53]).udp(40000, 53).payload(b"q");
//! let answer = Frame::ipv4([10, 0, 0, 53], [10, 0, 0, 1]).udp(53, 40000).payload(b"a");
//! let rx = vec![query.to_vec()?, answer.to_vec()?, vec![0u8; 9]];
//!
//! // A pipeline is a plain struct: parse, then connection tracking (4096 IPv4 and 1024 IPv6
//! // sessions, allocated once, here; `()`: no session service).
//! let config = ConntrackConfig::new(*b"operator secret!").sizes(Sizes { v4: 4096, v6: 1024 });
//! let conntrack = Conntrack::new(config, ())?;
//! let mut pipeline = ParseStage::default().then(conntrack);
//! let mut batch = Batch::new();
//! let mut now = Instant::from_nanos(1_000_000_000);
//! let mut seen = Vec::new();
//! for frames in rx.chunks(nf_core::BATCH_SIZE) {
//!     for frame in frames {
//!         // Copied into a buffer with the headroom the pipeline's stages may push into.
//!         batch.push(Packet::with_headroom(frame, pipeline.headroom().max(128))).ok();
//!     }
//!     pipeline.process(now, &mut batch);
//!     for pkt in batch.drain() {
//!         match pkt.meta.verdict {
//!             Verdict::Pass => seen.push((pkt.meta.direction, pkt.meta.session)),
//!             Verdict::Drop(reason) => println!("dropped: {reason}"),
//!             Verdict::Tx(_) | Verdict::ToControl => {}
//!         }
//!     }
//!     // Timers of every stage, through the pipeline: bounded work per call.
//!     now = Instant::from_nanos(now.as_nanos() + 1_000_000);
//!     while pipeline.poll_timeout().is_some_and(|t| t <= now) {
//!         pipeline.handle_timeout(now, 256);
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
//! ## Building frames
//!
//! [`wire::Frame`] emits Ethernet (optional) + IPv4/IPv6 + TCP/UDP/ICMP + payload in one
//! call with every length and checksum filled in; [`Packet::with_headroom`] wraps the bytes
//! with room in front for the pipeline's [`StageControl::headroom`].
//!
//! ```
//! use nf_core::{Meta, Packet, ParseConfig, parse_frame, wire::Frame};
//! let frame = Frame::ipv6([0x20; 16], [0xfe; 16]).udp(40000, 53).payload(b"query").to_vec()?;
//! let pkt = Packet::with_headroom(&frame, 128);
//! let mut meta = Meta::default();
//! parse_frame(pkt.data(), &mut meta, &ParseConfig::default())?;
//! assert_eq!(meta.flow.dst_port, 53);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Paths: one per item
//!
//! Every public item has exactly one public path:
//! - What a pipeline author touches on every program is at the crate root: [`Packet`],
//!   [`Meta`] and its [`flags`], [`Batch`], [`Verdict`] and [`DropReason`], [`Instant`] /
//!   [`Duration`], the [`Stage`] traits, the parse stage, [`FlowKey`] / [`Family`] /
//!   [`ZoneId`], [`FlowHasher`]. The modules that define them are private.
//! - Everything else lives in a public module named for its concern, and only there:
//!   [`wire`] (header views, `Repr`s, [`wire::Frame`]), [`checksum`], [`rewrite`],
//!   [`toeplitz`], [`flow`] (protocol numbers, the key encoding's length) and [`conntrack`].
//!
//! (The root re-exports of `Conntrack`, `ConntrackConfig`, `SessionTable` and `TableConfig`
//! still duplicate their [`conntrack`] paths; they go when that module's API settles.)
//!
//! ## zerocopy in the public API
//!
//! The [`wire`] views deliberately expose two kinds of [`zerocopy`](https://docs.rs/zerocopy)
//! types, because a view that hides them would cost a copy or a wrapper per accessor:
//! - the network-endian integers `zerocopy::network_endian::{U16, U32}` (re-exported as
//!   [`wire::U16`] / [`wire::U32`]) as the fields of the `#[repr(C)]` header structs
//!   (`EthernetHeader`, `Ipv4Header`, ...), which also derive zerocopy's `FromBytes` /
//!   `IntoBytes` so a caller can overlay them on bytes;
//! - the `zerocopy::SplitByteSlice` / `SplitByteSliceMut` bounds of the views' buffer type
//!   `B` (`&[u8]` and `&mut [u8]` satisfy them).
//!
//! `zerocopy::Ref` stays private to the views. The consequence: a zerocopy release that
//! breaks these types is a breaking release of nf-core, and nf-core follows zerocopy 0.8.
//! The `Repr`s and [`wire::Frame`] use plain integers and are the zerocopy-free way in.
//!
//! ## Features
//! - `std` (default, additive): [`StdClock`] and [`snapshot`] (configuration snapshots
//!   published through `arc-swap`, pulled at a constant rate with the last good one kept).
//!   Without it the crate is `#![no_std]` + `alloc`, which `.ci/nostd-link` proves by linking
//!   it into a `no_std` binary.
#![no_std]
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

mod batch;
pub mod checksum;
pub mod conntrack;
pub mod flow;
mod hash;
mod meta;
mod packet;
mod parse;
pub mod reply;
pub mod rewrite;
#[cfg(feature = "std")]
pub mod snapshot;
mod stage;
pub mod steer;
mod sys;
mod time;
pub mod toeplitz;
mod verdict;
pub mod wire;
mod zone_map;

pub use batch::{BATCH_SIZE, Batch};
pub use flow::key::{Family, FlowKey, ZoneId};
pub use hash::{FlowHasher, owner_of};
pub use meta::{
    Direction, Meta, NO_NEXT_HOP, SessionRef, TUNNEL_OPTION_DATA_LEN, TunnelKind, TunnelMeta, flags,
};
pub use packet::{Packet, PacketError};
pub use parse::{
    FastFrame, FastL4, NonIpAction, ParseConfig, ParseStage, Parsed, parse_fast, parse_frame,
    parse_l3,
};
pub use stage::{Chain, Named, Stage, StageControl, StageCounters, StageExt, StageLoop};
pub use sys::prefetch_l2;
#[cfg(feature = "std")]
pub use time::StdClock;
pub use time::{Duration, Instant};
pub use verdict::{DropCounters, DropReason, PortId, Verdict};
pub use zone_map::ZoneMap;

/// The workspace README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
