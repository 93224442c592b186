//! Connection tracking: sessions found from either direction, safe under floods.
//!
//! A session holds two keys, the *original* flow (the packet that created it) and the
//! *reply* flow (by default its reverse; NAT replaces it once it has chosen a translation),
//! both indexing the same record, so a lookup with any packet's key returns the session and
//! the packet's [`Direction`](crate::Direction). The pieces:
//!
//! - [`SessionTable`]: fixed capacity, two keys per session, keyed hashing, batch lookup and
//!   batch insert, zones with quotas and early drop, protocol-aware timeouts on a timer wheel.
//! - [`Conntrack`]: the [`Stage`](crate::Stage) that tags every packet with its session,
//!   with one lookup per packet shared by every [`SessionService`] (see
//!   [Session services](#session-services)), and matches related ICMP errors and fragments.
//! - [`FragmentReorder`]: the stage before it that holds a later fragment arriving before
//!   its first fragment, so that fragments in any order reach their session.
//! - [`Pinning`], [`core_of`], [`node_of`]: both directions of a flow to the same owner.
//! - [`Conntrack::export`] / [`Conntrack::import`]: session hand-over between nodes, every
//!   service's part included (see [Moving sessions](#session-services)); the tables alone:
//!   [`SessionTable::export`] / [`SessionTable::import`].
//! - [`Conntrack::export_changes`] / [`Conntrack::apply`]: continuous sync to a replica, so
//!   that a node's sessions survive it: a bounded change journal per table
//!   ([`TableConfig::journal`]) drained into delta chunks (sessions created or changed,
//!   sessions ended), plus a periodic sweep of [`Conntrack::export`] chunks that `apply`
//!   also takes (lifetimes refreshed by traffic, lost events); see [`SessionTable::apply`].
//!
//! ```
//! use nf_core::conntrack::{SessionState, SessionTable, TableConfig, V4Key};
//! use nf_core::{Direction, FlowKey, Instant, ZoneId, flow::proto};
//!
//! let mut table: SessionTable<V4Key, u64> =
//!     SessionTable::new(TableConfig::new(1 << 16, *b"a per-run secret"))?;
//! let now = Instant::from_nanos(1_000_000_000);
//! let out = FlowKey::v4(ZoneId(7), [10, 0, 0, 5], [198, 51, 100, 9], proto::TCP, 40000, 443);
//! let s = table.insert(now, &out, &out.reversed(), SessionState::TcpSynSent, 42)?;
//! // NAT picked a public address: replies now come back to it.
//! let back = FlowKey::v4(ZoneId(7), [198, 51, 100, 9], [203, 0, 113, 1], proto::TCP, 443, 61000);
//! table.replace_reply(s, &back).ok();
//! let hit = table.lookup(&back).unwrap();
//! assert_eq!((hit.session, hit.direction), (s, Direction::Reply));
//! assert!(table.lookup(&out.reversed()).is_none());
//! // Expiry is driven by the caller's clock, with bounded work per call.
//! while let Some(t) = table.poll_timeout() {
//!     if t > now { break; }
//!     table.handle_timeout(now, 1024);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Session services
//!
//! A network function (security groups, NAT, load balancing, the caller's own) does not look
//! sessions up itself: it implements [`SessionService`] and runs inside the one
//! [`Conntrack<S>`](Conntrack) stage, so a packet pays for **one** session lookup however many
//! functions care about its flow. The contract:
//!
//! - **New flow.** When a packet has no session and its zone's [`ZonePolicy`] lets it open
//!   one, [`SessionService::on_new`] decides, before anything is inserted: refuse (the packet
//!   drops with the service's [`DropReason`](crate::DropReason), nothing is left behind), or
//!   admit with a value and, through [`NewFlow::set_reply`], the reply key (NAT: the
//!   translated tuple; DNAT: the backend's), probing candidates with [`NewFlow::is_free`].
//!   Both keys are then inserted at once: no packet can ever see the session without its
//!   translation (unlike a port chosen before the entry is confirmed, Linux's race behind
//!   the Kubernetes DNS delays).
//! - **No session.** When a packet without a session does not create one (its zone's policy
//!   does not let it, a service refused the flow, the table is full or over the zone quota,
//!   the keys conflict), [`SessionService::on_refused`]
//!   gives the packet's verdict: by default the drop with the reason; a service that can
//!   serve the packet without state (a load balancer forwarding by the hash alone) may
//!   pass it. In a tuple, the packet passes only if every service that is there passes it
//!   (an absent `Option` or `()` is not [`SessionService::is_present`] and has no say).
//! - **Every packet** of the session, the first included: [`SessionService::on_packet`] with
//!   the direction and the service's part of the value, writable; it may rewrite the packet
//!   in place and returns the verdict.
//! - **Checks before the state moves** (optional, [`SessionService::CHECKS`]):
//!   [`SessionService::check`] sees each packet of an existing session before its TCP state
//!   and timeout change, and may drop it leaving the session untouched — how
//!   [`TcpWindow`] stops RST and data injection outside the TCP window.
//! - **Related packets** (ICMP errors quoting the flow, later fragments): tagged
//!   [`RELATED`](crate::flags::RELATED) with the session and the direction they travel,
//!   given to [`SessionService::on_related`]; they never create, refresh or end a session.
//! - **End**: [`SessionService::on_end`] exactly once for each session the service admitted,
//!   with the [`EndCause`] (expiry, early drop, removal, port reuse, renewal, or aborted
//!   before the insert).
//! - **TCP port reuse**: a bare SYN from the originator that meets its flow's session in
//!   `TimeWait` or `Closed` ends that session ([`EndCause::Reused`], counted `reused`) and
//!   opens a new one, decided afresh by the zone's policy and every service, as Linux
//!   conntrack does: a new connection never inherits a draining backend, an old NAT
//!   mapping or a security-group verdict a rule change has since withdrawn.
//! - **Renewal** (optional, [`SessionService::RENEWS`]): a service may ask for a packet's
//!   session to be replaced ([`SessionService::renews`]) when its decision no longer holds
//!   and the new one changes the reply key (a DNAT load balancer re-hashing a flow whose
//!   backend went down): the session ends ([`EndCause::Renewed`], counted `renewed`) and the
//!   packet opens a new one, decided afresh, its reply key chosen with the insert.
//! - **Composition**: `(A, B)` is a service with value `(A::Value, B::Value)`; `A` decides and
//!   sees packets first. All static dispatch, no allocation. `()` is the empty service, and a
//!   function crate stays usable alone as `Conntrack<ItsService>`.
//! - **Moving sessions** (optional, [`SessionService::EXPORT_LEN`]): for a node to take over
//!   another's flows, each service writes its part of a session as portable bytes
//!   ([`SessionService::export_value`]: identities, never local indices) and the importing
//!   node's service takes the session over ([`SessionService::import_value`]: it reserves
//!   what the session holds there, or declines), before [`Conntrack::import`] installs it.
//!   nf-lb, nf-policy and [`TcpWindow`] sessions move, and every kind of nf-nat session in
//!   every profile (each service says which of its sessions it declines); a service
//!   that does not say how makes [`Conntrack::export`] answer [`ExportError::Unsupported`].
//!   A replica takes sessions over through [`SessionService::replicate_value`] (the same as
//!   `import_value` unless the service's part moves with every packet, as a TCP window does).
//! - **Handles**: the [`SessionRef`] written into [`Meta::session`](crate::Meta::session)
//!   carries its address family, so it works with every method of the stage and of its
//!   family's table.
//!
//! A service that sends every new UDP flow to port 5353 of the same host (a port-forwarding
//! DNAT), with the reply key chosen atomically with the insert:
//!
//! ```
//! use nf_core::conntrack::{Conntrack, ConntrackConfig, NewFlow, SessionService};
//! use nf_core::wire::Frame;
//! use nf_core::{Batch, Direction, DropReason, Instant, Packet, ParseStage, Stage, StageExt, Verdict};
//!
//! struct Forward { to: u16 }
//!
//! impl SessionService for Forward {
//!     type Value = u16; // the original destination port
//!
//!     fn on_new<B: AsRef<[u8]>>(&mut self, _now: Instant, _pkt: &Packet<B>, new: &mut NewFlow<'_>)
//!         -> Result<u16, DropReason>
//!     {
//!         let mut reply = new.original().reversed();
//!         reply.src_port = self.to; // replies come from the new port
//!         if !new.is_free(&reply) {
//!             return Err(DropReason::ServiceRefused);
//!         }
//!         new.set_reply(reply).map_err(|_| DropReason::ServiceRefused)?;
//!         Ok(new.original().dst_port)
//!     }
//!
//!     fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
//!         &mut self, _now: Instant, dir: Direction, orig_port: &mut u16, pkt: &mut Packet<B>,
//!     ) -> Verdict {
//!         // Rewrite the port in place (a real NAT also updates the checksum).
//!         let l4 = usize::from(pkt.meta.l4);
//!         let (at, port) = match dir {
//!             Direction::Original => (l4 + 2, self.to),
//!             Direction::Reply => (l4, *orig_port),
//!         };
//!         if let Some(b) = pkt.data_mut().get_mut(at..at + 2) {
//!             b.copy_from_slice(&port.to_be_bytes());
//!         }
//!         Verdict::Pass
//!     }
//! }
//!
//! fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Packet<Vec<u8>> {
//!     let frame = Frame::ipv4(src, dst).udp(sport, dport).to_vec().unwrap();
//!     Packet::with_headroom(&frame, 64)
//! }
//!
//! let ct = Conntrack::new(ConntrackConfig::new(*b"operator secret!"), Forward { to: 5353 })?;
//! let mut pipeline = ParseStage::default().then(ct);
//! let mut batch = Batch::new();
//! batch.push(udp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 53)).ok(); // query to :53
//! batch.push(udp([10, 0, 0, 2], [10, 0, 0, 1], 5353, 40000)).ok(); // answer from :5353
//! pipeline.process(Instant::from_nanos(1_000_000_000), &mut batch);
//! let p = batch.packets();
//! let port = |i: usize, at: usize| p[i].data()[usize::from(p[i].meta.l4) + at..][..2].to_vec();
//! assert_eq!(port(0, 2), 5353u16.to_be_bytes()); // forwarded to :5353
//! assert_eq!(port(1, 0), 53u16.to_be_bytes()); // answered from :53
//! assert_eq!(p[1].meta.direction, Direction::Reply);
//! assert_eq!(p[1].meta.session, p[0].meta.session);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Related packets
//!
//! - **ICMP and ICMPv6 errors** (destination unreachable, packet too big / fragmentation
//!   needed, time exceeded, parameter problem) quote the IP header and at least 8 bytes of
//!   the packet that caused them. The quoted packet travelled towards the error's sender, so
//!   the stage looks up the quoted key *reversed*; the hit's direction is the error's
//!   (RFC 5508 §4). The quote is read only within the outer IP packet, through inner IPv4
//!   options and a bounded walk of inner IPv6 extension headers; a quote too short for the
//!   inner IP header and 8 bytes of transport header drops as
//!   [`DropReason::IcmpQuoteTruncated`](crate::DropReason::IcmpQuoteTruncated), a bad inner
//!   IPv4 header checksum as `icmp_quote_bad_checksum`, and a quote that names no session as
//!   `related_no_session`, unless the service passes it
//!   ([`SessionService::on_refused`]: an error about a flow it serves without a session,
//!   counted `refused_passed`; [`quoted_key`] reads the quote).
//! - **Later fragments** carry no ports. Every first fragment the stage passes is recorded
//!   in a fragment table — (zone, addresses, protocol, identification) → session and
//!   direction; IPv6 leaves the protocol out, as RFC 8200 §4.5 keys reassembly — with a fixed
//!   capacity ([`FragmentConfig::capacity`], 4-way set-associative under a keyed hash) and a
//!   lifetime ([`FragmentConfig::lifetime`]); a full set evicts the entry closest to expiry.
//!   A later fragment with no live entry (first fragment lost, out of order, expired or
//!   evicted) drops as `fragment_no_session`. Counters: `fragments_recorded`,
//!   `fragment_hits`, `fragment_misses`, `fragment_evictions`.
//! - Both are tagged [`RELATED`](crate::flags::RELATED) with the session and direction and
//!   given to [`SessionService::on_related`]; they never create, refresh or end a session.
//!
//! # Layout and memory
//!
//! Keys are stored packed per family ([`V4Key`] 12 bytes, [`V6Key`] 36); zone and protocol
//! are stored once per session. A table is two arrays allocated at construction:
//!
//! - **Records**, one per session slot: both keys, zone, generation, deadline (timer ticks),
//!   the timer-list links, protocol, state, flags, and the caller's value. For IPv4 with a
//!   16-byte value a record is exactly one 64-byte-aligned cache line (keys 24, zone 4,
//!   generation 4, deadline 4, links 8, protocol/state/flags 4, value 16), so a hit touches
//!   one record line. Plus 8 bytes per slot of links for the zone's
//!   not-yet-established list (cold: only touched on create, establish, evict, remove), and
//!   in tables built for cross-zone sessions only, 4 bytes per slot for the reply zone of a
//!   cross-zone session (read only for those; see [Cross-zone sessions](#cross-zone-sessions)).
//! - **Index**: 64-byte buckets of one overflow counter and 15 entries of 4 bytes, each
//!   `tag | (slot + 1)`: the low bits name the record, the remaining high bits (at least 6;
//!   12 at 1M sessions) are a hash tag. Two entries per session; the index is sized so that
//!   at most 75% of its entries are used when the table is full (at 90% table load, about 1%
//!   of entries sit outside their home bucket). Tags are never 0, so an empty entry never
//!   matches. Lookup: one bucket line, tag compare (one SSE2 compare of the whole line),
//!   then the record line. Insertion probes forward from the home
//!   bucket (linear probing over buckets) and bumps the overflow counter of every full bucket
//!   it passes; a lookup stops at the first bucket with a zero counter; removal decrements
//!   the counters along the entry's path, so there are no tombstones.
//!
//! IPv4, 16-byte value, at 90% load: (64 + 8 + 4 + 2 × 4 / 0.75 × 64/60) / 0.9 ≈ 97 bytes per
//! session, measured by [`SessionTable::allocated_bytes`] (the `conntrack-insert` bench prints
//! it). IPv6: a 112-byte record padded to two whole lines (128 bytes; unaligned, half of them
//! spanned three), ≈ 165 bytes.
//!
//! A batch lookup ([`SessionTable::lookup_batch`]) is a software pipeline: while one key is
//! hashed, the bucket of a key 32 places earlier is scanned and its record prefetched, so the
//! memory latency of many keys overlaps with hashing and with each other. At a million sessions
//! nearly every bucket and record access misses the caches, and with 4 KiB pages the TLB as
//! well (a page walk per access, two-dimensional under virtualisation): put large tables on
//! huge pages (the `conntrack-hit` bench reports both).
//!
//! Hashing is SipHash-1-3 keyed with the table's secret over the packed key, zone and
//! protocol; the bucket is the hash's high bits (multiply-shift), the tag its low bits.
//!
//! # Invariants
//!
//! - Every live session has exactly two index entries (original and reply key, each hashed
//!   with its own zone), both naming its slot; (zone, key) pairs are unique across live
//!   sessions; the original and reply keys differ (in tuple or in zone).
//! - Insert and [`SessionTable::replace_reply`] check everything that can fail before they
//!   change anything: both keys are installed or neither.
//! - A slot's generation changes whenever its session is removed; a [`SessionRef`] is
//!   honoured only while its generation matches a live slot.
//! - The index never fills: it has more entries than twice the capacity.
//! - Every live session sits in exactly one timer list (a wheel slot or the sweep list), and
//!   that list is swept at a tick no later than the session's deadline tick.
//! - A zone's not-yet-established sessions are in its early-drop list, oldest first; only
//!   that list is ever evicted from, and only to admit a session of the same zone.
//!
//! # Timers
//!
//! A single-level hashed wheel (`wheel_slots` slots of one `granularity` tick each) with
//! intrusive doubly linked lists through the records and sentinel heads. Deadlines are
//! rounded up to a tick. A refresh that extends the deadline only stores it (`O(1)`, no list
//! traffic); the sweep re-files a session whose deadline has moved on. A refresh that
//! shortens it (e.g. RST) moves the session to the earlier slot, also `O(1)`.
//! [`SessionTable::handle_timeout`] moves one slot at a time onto a sweep list and walks it
//! within its budget, resuming there on the next call; a session expires at the first call
//! at or after its deadline tick with budget to reach it, i.e. within one granularity.
//!
//! # Zones and floods
//!
//! Each session belongs to its original key's zone; each zone has a quota (default: the table's
//! `default_zone_quota`). A new session is refused with [`InsertError::ZoneQuota`] or
//! [`InsertError::TableFull`] unless, with early drop on, its own zone has a
//! not-yet-established session to evict (the oldest goes). Established sessions are never
//! evicted and no zone ever evicts another's. If quotas sum to at most the capacity, every
//! zone can always reach its quota whatever the others do.
//!
//! # Cross-zone sessions
//!
//! A session's reply key may live in another zone than its original key (a service sets it
//! with [`NewFlow::set_reply`], or [`SessionTable::insert`] / [`SessionTable::replace_reply`]
//! take it): a private endpoint, where a consumer's flow in its zone is answered by a
//! provider in the provider's zone and address space. Each key matches only lookups in its
//! own zone, so isolation holds (a key of zone X never finds a session through its key of
//! zone Y); the session counts against the original zone's quota, only that zone may
//! early-drop it, and [`SessionInfo::reply`] carries the reply zone. The record keeps one
//! zone; a record flag marks a cross-zone session and its reply zone sits in a side array
//! (4 bytes per slot), read only when the flag is set, so same-zone lookups cost nothing
//! more and an IPv4 record stays one cache line. The side array exists only in tables built
//! with [`TableConfig::cross_zone`]; [`Conntrack::new`] sets it when the service declares
//! [`SessionService::CROSS_ZONE`] (nf-nat's `Endpoint` does), so tables that never hold a
//! cross-zone session do not pay the 4 bytes, and a cross-zone key offered to them is
//! refused ([`InsertError::CrossZone`], [`DropReason::SessionCrossZone`](crate::DropReason)). ICMP errors quoting a reply-direction
//! packet are looked up in the zone they arrive in, the reply zone. The stage does not
//! change [`Meta::zone`](crate::Meta::zone): the service moves each packet to the zone it
//! leaves into (an encapsulation stage then takes the VNI from it).

mod export;
mod key;
mod pin;
pub(crate) mod related;
mod reorder;
mod service;
mod stage;
mod state;
mod sync;
mod table;
mod window;

pub use export::{
    EXPORT_VERSION, ExportError, ExportProgress, ImportError, ImportReport, SessionValue,
};
pub use key::{SessionKey, V4Key, V6Key};
pub use pin::{Pinning, core_of, node_of};
pub use related::{FragmentConfig, FragmentCounters, quoted_key};
pub use reorder::{FragmentReorder, ReorderConfig, ReorderCounters};
pub use service::{EndCause, NewFlow, ReplyKeyError, SessionService};
pub use stage::{Conntrack, ConntrackConfig, ConntrackCounters, Sizes, TcpCreate, ZonePolicy};
pub use state::{SessionState, TimeoutProfile};
pub use sync::{ApplyReport, ChangeProgress, DELTA_VERSION};
pub use table::{
    ConfigError, Hit, InsertError, MAX_CAPACITY, NewSession, ReplaceError, SessionInfo,
    SessionTable, TableConfig, TableCounters, ZoneError, ZoneUsage,
};
pub use window::{TcpSide, TcpWindow, TcpWindowCounters, TcpWindowState};

#[cfg(doc)]
use crate::meta::SessionRef;
