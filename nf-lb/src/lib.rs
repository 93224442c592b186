//! Load balancing for nf: flow → backend choices that every node computes alike.
//!
//! - [`MaglevTable`]: Google's Maglev consistent hashing (NSDI'16): each backend walks a keyed
//!   permutation of a prime number of slots and the table is filled in weighted turns. Every
//!   node builds the identical table from the same [`LbKey`], size and set of [`Backend`]s, in
//!   any order; entry counts follow the weights exactly (largest-remainder apportionment);
//!   weight 0 takes a backend out, and a *draining* backend gives up its entries while no
//!   other entry moves. Lookups hash flows with `nf-core`'s keyed [`FlowHasher`]; a batched
//!   form hashes a batch first, then looks it up.
//! - [`Rendezvous`]: weighted highest-random-weight hashing for small sets, with exactly
//!   minimal disruption: when a backend leaves, only its flows move.
//! - [`EcmpGroup`]: distributed ECMP (Achelous): senders spread flows over weighted next hops
//!   with one keyed choice, symmetric in the flow's direction.
//! - [`Listeners`]: a [`Listener`] takes the flows to a VIP, port and protocol (or a whole
//!   VIP) and chooses among its [`Pool`] (members up, draining or down, with weights) by the
//!   5-tuple, 3-tuple, 2-tuple or source address ([`HashFields`]), through a Maglev table or
//!   a rendezvous set ([`Selection`]).
//! - [`Lb`]: the LB stage, a session service for `nf-core`'s
//!   [`Conntrack`](nf_core::conntrack::Conntrack): a new flow takes its listener's table
//!   choice and keeps it in its session through any configuration swap while the backend is
//!   up or draining; DNAT ([`Forwarding::Dnat`], replies un-NATed through the session's reply
//!   key) or encapsulation ([`Forwarding::Encap`], the backend's next hop in the packet's
//!   metadata); flows of a down backend re-hashed or reset ([`OnDown`]); without a session
//!   (table full, zone quota, [`NewFlowLimit`]) packets are forwarded by the hash alone.
//!
//! Build tables off the packet path and swap them in whole (the no_std API is a plain value;
//! the std side may publish it through `arc-swap`). Established flows stay on their backend
//! through connection tracking; the table decides new flows and whatever tracking cannot
//! cover.
//!
//! # Example
//!
//! ```
//! use nf_core::{FlowKey, ZoneId, flow::proto};
//! use nf_lb::{Backend, BackendId, LbKey, MaglevTable, table_size_for};
//!
//! # fn main() -> Result<(), nf_lb::BuildError> {
//! let key = LbKey::new(*b"operator secret!");
//! let mut backends: Vec<Backend> = (1..=10)
//!     .map(|i| Backend::new(BackendId::v4([10, 0, 1, i], 8080), 1))
//!     .collect();
//! backends[0].weight = 2; // twice the share of the others
//! let size = table_size_for(backends.len())?; // smallest prime ≥ 100 · N
//! let table = MaglevTable::new(&key, size, &backends)?;
//!
//! // Every node that builds from the same inputs, in any order, gets the same table.
//! backends.reverse();
//! let again = MaglevTable::new(&key, size, &backends)?;
//! assert!(table.entries().eq(again.entries()));
//!
//! // A batch of flows: hashed first, then looked up.
//! let flows: Vec<FlowKey> = (0..64)
//!     .map(|p| FlowKey::v4(ZoneId(0), [198, 51, 100, 7], [192, 0, 2, 1], proto::TCP, 40_000 + p, 443))
//!     .collect();
//! let mut chosen = [0u32; 64];
//! assert_eq!(table.lookup_flows(&flows, &mut chosen), 64);
//! for (flow, &i) in flows.iter().zip(&chosen) {
//!     assert_eq!(table.lookup(table.flow_hash(flow)), i);
//!     assert!(table.backends()[i as usize].is_serving());
//! }
//!
//! // Draining 10.0.1.3: its entries go to the others, and no other entry moves.
//! let drained: Vec<Backend> = backends
//!     .iter()
//!     .map(|b| if b.id == BackendId::v4([10, 0, 1, 3], 8080) { b.draining() } else { *b })
//!     .collect();
//! let after = MaglevTable::new(&key, size, &drained)?;
//! let gone = table.backends().iter().position(|b| b.id == BackendId::v4([10, 0, 1, 3], 8080));
//! for (old, new) in table.entries().zip(after.entries()) {
//!     assert!(old == new || Some(old as usize) == gone);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Stable encodings
//!
//! Every hash is SipHash-1-3 keyed with the [`LbKey`] (its 16 bytes read as SipHash's
//! reference reads a key) over explicit bytes: a one-byte domain tag, the identity's length
//! (one byte), then the [`BackendId`] bytes. Identities built with [`BackendId::v4`] are
//! `0x04`, the 4 address bytes, the port (big-endian); [`BackendId::v6`] are `0x06`, the 16
//! address bytes, the port (big-endian).
//!
//! | use | bytes hashed | result |
//! |---|---|---|
//! | Maglev offset of a backend | `0x01`, len, id | `h mod M` |
//! | Maglev skip of a backend | `0x02`, len, id | `h mod (M − 1) + 1` |
//! | rendezvous salt of a backend | `0x03`, len, id | `s` |
//! | ECMP salt of a next hop | `0x04`, len, id | `s` |
//! | flow hash | `nf-core`'s `FlowKey::encode` ([`FlowHasher::hash`]; ECMP: [`FlowHasher::symmetric`]; a listener hashes the key with the fields it does not use zeroed, [`HashFields::project`]) | `h` |
//!
//! The rest of the rules, also pinned by the golden vectors:
//! - backends are listed in byte order of their identities; table entries and choices are
//!   indices into that list (weight-0 and draining backends keep their index);
//! - backend `i`'s permutation is `offset_i + k · skip_i (mod M)`, `k = 0, 1, …`;
//! - the fill: every backend of weight above 0 gets the largest-remainder (Hamilton)
//!   apportionment of `M` over the weights (leftover units to the largest remainders, ties to
//!   the earlier backend); the `k`-th turn (`k ≥ 1`) of a backend of weight `w` is in round
//!   `⌈k · w_max / w⌉ − 1`, backends in list order within a round (with equal weights: plain
//!   round robin, the paper's fill); a turn takes the first empty slot along the backend's
//!   permutation, which then continues after that slot;
//! - draining backends take part in that fill; then their slots are emptied and refilled by
//!   the same rule among the serving backends (apportioning the freed slots), each continuing
//!   its permutation where it stopped;
//! - a flow hash `h` selects slot `⌊h · M / 2^64⌋`;
//! - rendezvous: the draw of member `i` is `mix64(h ^ s_i) | 1` (SplitMix64's finaliser), its
//!   score `−log2(draw / 2^64)` in 32-bit fixed point (integer algorithm in `key.rs`) divided
//!   by its weight; the lowest score wins, ties to the larger draw, then the earlier member.
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod backend;
mod key;
mod listener;
mod maglev;
mod prime;
mod rendezvous;
mod service;

pub use backend::{Backend, BackendId, BuildError, MAX_ID_LEN};
pub use key::LbKey;
pub use listener::{
    BackendTable, Forwarding, HashFields, Health, Listener, ListenerError, ListenerMatch,
    Listeners, NewFlowLimit, OnDown, Pool, PoolMember, Selection,
};
pub use maglev::{MAX_MAGLEV_BACKENDS, MaglevTable};
pub use nf_core::FlowHasher;
pub use prime::{DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE, is_prime, table_size_for};
pub use rendezvous::{EcmpGroup, MAX_RENDEZVOUS_BACKENDS, Rendezvous};
pub use service::{Lb, LbCounters, LbSession};
