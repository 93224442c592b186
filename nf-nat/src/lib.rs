//! NAT port allocation for nf: [`PortAllocator`] picks the public address and port of each
//! new outbound flow, keeps them unique, quarantines them after use, and can choose them so
//! that replies reach the node and core that own the flow. It does no I/O and reads no clock:
//! `now` is passed in.
//!
//! [`Snat`] is the SNAT service built on it (see [SNAT](#snat)): in `on_new`,
//! [`PortAllocator::allocate`] either commits a mapping or changes nothing, and the service
//! sets the reply key to [`PortAllocator::reply_key`]; in `on_end`,
//! [`PortAllocator::release`] hands the mapping back, with `now`; the service's
//! `poll_timeout` / `handle_timeout` forward to the allocator's.
//!
//! ```
//! use nf_nat::{AllocatorConfig, AllocError, PortAllocator, Profile};
//! use nf_core::{Duration, FlowKey, Instant, ZoneId, flow::proto};
//!
//! let public = vec!["203.0.113.1".parse()?];
//! let config = AllocatorConfig::new(Profile::Hyperplane, public, *b"operator secret!")
//!     .with_max_mappings(1 << 16)
//!     .with_quarantine(Duration::from_secs(120));
//! let mut nat = PortAllocator::new(config)?;
//!
//! // The caller's loop: new flows arrive, sessions end, timers run.
//! let mut now = Instant::from_nanos(1_000_000_000);
//! let flow = FlowKey::v4(ZoneId(0), [10, 0, 0, 5], [198, 51, 100, 9], proto::TCP, 40000, 443);
//! let mapping = nat.allocate(now, &flow)?;
//! let reply = nat.reply_key(&flow, mapping).ok_or("no reply key")?;
//! assert_eq!(reply.dst_ip().to_string(), "203.0.113.1");
//! assert!(mapping.port() >= 1024); // the same range class as 40000 (RFC 4787 REQ-3a)
//!
//! // The session ends: the port waits out its quarantine before anyone gets it again.
//! nat.release(now, &flow, mapping)?;
//! assert_eq!(nat.quarantined(), 1);
//! now += Duration::from_secs(121);
//! while nat.poll_timeout().is_some_and(|t| t <= now) {
//!     nat.handle_timeout(now, 256);
//! }
//! assert_eq!(nat.quarantined(), 0);
//!
//! // A flow without ports is refused with a typed error, and counted.
//! let gre = FlowKey::v4(ZoneId(0), [10, 0, 0, 5], [198, 51, 100, 9], proto::GRE, 0, 0);
//! assert_eq!(nat.allocate(now, &gre), Err(AllocError::UnsupportedProtocol));
//! nat.visit_counters("nat", &mut |stage, name, value| println!("{stage} {name} {value}"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # SNAT
//!
//! [`Snat`] is the session service that runs inside nf-core's
//! [`Conntrack`](nf_core::conntrack::Conntrack) and translates outbound flows to a public
//! address and port chosen by its [`PortAllocator`].
//!
//! - **New flow** ([`SessionService::on_new`](nf_core::conntrack::SessionService::on_new)): a flow from an inside prefix
//!   ([`SnatConfig::with_inside`]; every flow if none is configured) gets a mapping and its
//!   reply key (original destination → public address and port) in the same call, so the
//!   session is inserted with its translation or not at all. A refusal is a typed drop
//!   (`nat_ports_exhausted`, `nat_too_many_probes`, `nat_capacity_full`,
//!   `nat_quota_exceeded`, `nat_untranslatable`). A flow to a public address that no
//!   session serves is unsolicited and drops as `nat_no_mapping` (RFC 5382 REQ-4). Any
//!   other flow passes untranslated (counted as `flows_untranslated`).
//! - **Packets** ([`SessionService::on_packet`](nf_core::conntrack::SessionService::on_packet)): original direction, the source becomes
//!   the public address and port; replies, the destination becomes the inside address and
//!   port. ICMP query identifiers are translated like ports. Checksums are updated
//!   incrementally (RFC 1624): IPv4 header, TCP/UDP with their pseudo-header (an absent UDP
//!   checksum stays absent), ICMP, ICMPv6 with its pseudo-header.
//! - **Related packets** ([`SessionService::on_related`](nf_core::conntrack::SessionService::on_related)): ICMP errors get their outer
//!   header and the quoted packet translated (RFC 5508 REQ-4/5: both IPv4 checksums, the
//!   quoted transport checksum where the quote holds it, the ICMP checksum); later fragments
//!   get their addresses translated. That covers errors the node makes itself after the
//!   NAT: a packet too big for a tunnel behind it becomes fragmentation needed / packet too
//!   big towards its translated source ([`nf_core::reply::PmtuStage`]), and passed back
//!   through the NAT as received from the outside it reaches the inside sender (RFC 4787
//!   REQ-13).
//! - **End** ([`SessionService::on_end`](nf_core::conntrack::SessionService::on_end)): the mapping goes back to the allocator, which
//!   quarantines the port.
//! - **No session** ([`SessionService::on_refused`](nf_core::conntrack::SessionService::on_refused)):
//!   a TCP segment from inside that may not open a session (not a SYN: in the hyperplane
//!   profile, its connection idled out after 350 s) becomes, in place, the RST that answers
//!   it ([`nf_core::reply::tcp_reset`]), sent back towards the inside host with
//!   [`Verdict::Tx`](nf_core::Verdict::Tx) on [`SnatConfig::idle_reset`]'s port and counted
//!   `idle_timeout_resets` (the default of the hyperplane profile; the others drop it as
//!   `no_session`). A flow from inside refused for lack of resources (ports, probes,
//!   capacity, quota, session table) gets ICMP destination unreachable, administratively
//!   prohibited back if configured ([`SnatConfig::with_refusal_icmp`], RFC 5508 REQ-8;
//!   rate-limited, counted `refusal_icmp_sent` / `refusal_icmp_rate_limited`). A tuple asks
//!   its second service only if the first passes a refused packet, so put `Snat` first:
//!   `Conntrack<(Snat, TcpWindow)>`.
//!
//! [`Meta::flow`](nf_core::Meta::flow) keeps the key the packet arrived with; the
//! session's two keys hold both tuples.
//!
//! Static port forwards ([`SnatConfig::with_forward`], [`PortForward`]) are DNAT in the same
//! service: a flow to a forwarded public address and port is sent to its inside endpoint
//! (destination rewritten), the inside host's replies leave from the public endpoint, ICMP
//! errors are translated both ways alike, and the forwarded port is never allocated.
//! Hairpinning: a flow from a configured inside prefix to a port forward's public endpoint
//! gets a mapping for its source and the forward's inside endpoint as its destination, so
//! the server sees the client as a public address and port and the client sees the answer
//! come from the public endpoint (RFC 4787 REQ-9, RFC 5382 REQ-8a); ICMP errors are
//! translated at both ends.
//!
//! Hairpinning to another inside host's mapping (rfc and cgn; flows from configured inside
//! prefixes): a TCP or UDP flow from inside to the public endpoint of a live mapping of
//! another inside host (same zone) gets a mapping for its source, as any outbound flow, and
//! the mapping's inside endpoint as its destination; its reply key is that host's flow to
//! the mapped source, which holds the peer's mapping, so both mappings live while the
//! session does. The peer sees the external source address and port (RFC 4787 REQ-9a, RFC
//! 5382 REQ-8a) and its answers reach the sender from the peer's public endpoint; ICMP
//! errors are translated at both ends, the outer destination becoming the quote's
//! translated source (RFC 5508 REQ-7a). The hairpinned packet meets the peer's mapping as
//! if it came from outside, so the peer's filtering decides: endpoint-independent, it
//! passes; address-and-port-dependent, the session is created but the sender's packets
//! drop (`nat_no_mapping`, counted `hairpin_filtered`) until the peer sends to the sender's
//! mapped endpoint — which the sender's mapping accepts, the sender having sent to the
//! peer's — and from then on both ways pass (hole punching by two hosts behind one NAT).
//! ICMP queries are not hairpinned: their identifier is the querier's, so no mapping of
//! the target serves them (RFC 5508 REQ-7 asks that of Basic NAT only, not NAPT); they drop
//! `nat_no_mapping`. The hyperplane profile's mappings are per destination: it hairpins to
//! port forwards only. Peers of such sessions are kept in a store allocated up front
//! ([`SnatConfig::with_hairpin_sessions`]); when it is full, the flow is refused
//! (`nat_capacity_full`).
//!
//! Filtering ([`SnatConfig::with_filtering`]) is address-and-port-dependent by default:
//! only replies from the flow's destination find its session. With
//! [`Filtering::EndpointIndependent`] (rfc and cgn profiles), any outside host's TCP or UDP
//! flow to a live mapping opens a session to its inside endpoint on the same mapping, and
//! the mapping lives until its last session ends. Put [`nat_timeouts`] in the conntrack
//! tables so sessions last as long as the RFCs require (nf-core's defaults follow Linux and
//! are shorter).
//!
//! IPv4 sessions keep the inside address in their value (15 byte-aligned bytes, so an IPv4
//! session record stays one cache line, also with another service's 1-byte value beside it,
//! as in `Conntrack<(SecurityGroups, Snat)>`); IPv6 sessions keep an index into a store of inside
//! addresses allocated up front ([`SnatConfig::with_v6_sessions`]).
//!
//! # Private endpoints
//!
//! [`Endpoint`] is AWS PrivateLink's pattern (Hyperplane carries it) as a composition of the
//! pieces above, over tenants with overlapping addresses. Every zone (the VNI a packet was
//! decapsulated from) has its own sessions, so two consumers that both use 10.0.0.0/8 never
//! see each other's flows. An [`EndpointRule`] puts an endpoint address in a consumer's zone
//! and points it at a service in a provider's zone:
//!
//! - **New flow** from the consumer's zone to the endpoint (address, port, protocol): the
//!   destination becomes the service, the source an address and port of the rule's pool —
//!   addresses of the *provider's* space — chosen by the rule's own [`PortAllocator`]
//!   (unique, quarantined after use, keyed on the consumer's zone too, so consumers with
//!   identical addresses get distinct provider-side tuples). The session's reply key is
//!   (provider zone, service → pool address and port): a cross-zone session (nf-core's
//!   [`NewFlow::set_reply`](nf_core::conntrack::NewFlow::set_reply) in another zone), so
//!   the provider's answers are found in the provider's zone, and only there. The provider
//!   sees one of its own addresses, never the consumer's.
//! - **Packets**: consumer → provider get destination and source rewritten and leave into
//!   the provider's zone ([`Meta::zone`](nf_core::Meta::zone) set, so an encapsulation
//!   stage taking the VNI from the zone sends them on the provider's VNI); provider →
//!   consumer get the endpoint as source and the consumer as destination, and leave into
//!   the consumer's zone. Checksums are updated incrementally.
//! - **ICMP errors** (ICMPv6 errors) quoting either direction are translated at both ends
//!   (outer header and quote) and moved to the other zone like the flow's packets; later
//!   fragments get their addresses translated.
//! - **Refusals** are typed drops (`nat_ports_exhausted`, `nat_untranslatable`, ...); a new
//!   flow in a provider's zone to a pool address is unsolicited (`nat_no_mapping`); any
//!   other new flow passes untranslated (`flows_unmatched`), so the service composes with
//!   others in a tuple.
//! - **End**: the pool mapping goes back to its allocator.
//! - **Families**: a rule is IPv4 or IPv6 throughout — endpoint, service and pool
//!   addresses of one family, else [`EndpointError::MixedFamilies`] (translating between
//!   the families is NAT64's job, not this one's); rules of both families live side by
//!   side, even in one consumer zone.
//!
//! Counters (stage `endpoint`): `flows_translated`, `flows_refused`, `flows_unmatched`,
//! `no_mapping`, `packets_to_provider`, `packets_to_consumer`, `icmp_errors_translated`,
//! `fragments_translated`, `rewrite_failed`, `icmp_errors_dropped`, `flows_imported`.
//! Sessions move between nodes
//! ([`Conntrack::export`](nf_core::conntrack::Conntrack::export) / `import`, and a
//! replica's `apply`) with their pool mappings (19 bytes each: kind, pool address, port),
//! where the other node has the same rules and pools. The session value is
//! 14 bytes (an IPv4 record stays one line): it keeps an IPv4 consumer's address inline and
//! an IPv6 consumer's as an index into a store allocated by [`Endpoint::new`], with room for
//! as many sessions as the IPv6 rules' pools hold mappings (20 bytes each; when it is full a
//! flow is refused `nat_capacity_full`). Rules are matched by a linear scan on new flows
//! only.
//!
//! # Profiles
//!
//! - [`Profile::Rfc`]: endpoint-independent mapping (RFC 4787 REQ-1): an inside (zone,
//!   address, port, protocol) keeps its public address and port for every destination while
//!   any session uses it; paired pooling (REQ-2): an inside address uses one public address
//!   while it has mappings. Ports are unique per (public address, protocol).
//! - [`Profile::Hyperplane`]: endpoint-dependent: ports are unique per (public address,
//!   destination address, destination port, protocol), so one destination can hold every
//!   port of every public address (64,512 above 1023 per address, fewer any excluded); when
//!   one public address has none left for a destination, the next one is tried.
//! - [`Profile::Cgn`]: endpoint-independent mapping inside port blocks (RFC 6888): each
//!   subscriber (zone, inside address) holds up to `max_blocks` blocks of `block_size`
//!   ports on one public address and at most `port_quota` live mappings per protocol
//!   (REQ-4); assigning or releasing a block queues a [`BlockEvent`]
//!   ([`PortAllocator::pop_block_event`]) so operators log blocks, not connections. A block
//!   goes back when its last port leaves quarantine. CGN ports are always ≥ 1024.
//!
//! # Port choice and probes
//!
//! Ports are bits of 64-bit words (word `w`: ports `64w..64w+64`). The start of the search is
//! keyed (RFC 6056 style): `k` = SipHash-1-3 under the operator secret of the flow key's
//! canonical encoding ([`FlowKey::encode`](nf_core::FlowKey::encode)); its low 32 bits pick
//! the start word within this owner's words of the range class (multiply-shift), bits 32–37
//! the start bit within a word, bits 40– the first public address tried. The search reads
//! the start word; if it has no free port it walks the following words (wrapping), reading
//! one *summary* word per 64 port words to skip those marked full.
//!
//! **A probe is one 64-bit word read from the occupancy state**: a port word or a summary
//! word (in the hyperplane profile each is one lookup in the hash table). An allocation makes
//! at most `max_probes` probes ([`AllocatorConfig::max_probes`], default 32), else it fails
//! with [`AllocError::TooManyProbes`]; a full search costs at most 1 + 16 summary words + the
//! port words they point to, so with 32 probes a free port is nearly always found, and
//! [`AllocError::Exhausted`] means none is left. At 90% occupancy a word has a free port with
//! probability 1 − 0.9⁶⁴ ≈ 99.9%, so almost every allocation takes one probe. The histogram
//! is in [`AllocatorCounters::probes`].
//!
//! Range class (RFC 4787 REQ-3a): an inside port below 1024 gets a public port below 1024,
//! any other one ≥ 1024 (rfc and hyperplane); ICMP query identifiers, which have no classes,
//! always get one ≥ 1024. Port 0 and [`AllocatorConfig::excluded_ports`]
//! (default 4789 and 6081, the node's tunnel ports) are never handed out.
//!
//! # Owners
//!
//! With [`Owner`] `{ nodes, cores, node, core }` each class is cut into one run of whole
//! words per node, and a node's run into `cores` equal runs of ports; the allocator hands out
//! only its own run, so the owner of a reply is [`owner_of`] its destination port — a pure
//! function. Within a node that split *is* nf-core's
//! [`PortPartition`](nf_core::steer::PortPartition) ([`PortSplit::partition`]): a node whose
//! [`Steering`](nf_core::steer::Steering) owns the public addresses with it steers every
//! reply to the core whose allocator chose the port (property-tested through nf-core's
//! steering, ports below 1024 included: the partition's second run is the low class). With [`RssSteering`]
//! (hyperplane only) the runs are per node, and within its node's run the allocator takes only
//! ports for which the reply's Toeplitz hash (nf-core's, the NIC's) selects this core's
//! receive queue: the hash is linear in the port's bits, so one precomputed mask per
//! redirection-table index gives the ports of a word that qualify, at no extra probe.
//!
//! When a node fails, another takes over its share: [`PortAllocator::take_over`] lets the
//! survivor's allocators take the failed node's sessions over
//! ([`Conntrack::import`](nf_core::conntrack::Conntrack::import); new flows still get only
//! the survivor's own ports), and nf-core's
//! [`Steering::own_also`](nf_core::steer::Steering::own_also) with the failed node's
//! [`PortSplit::partition`] sends the replies to those ports to the survivor's cores that
//! hold them. In the cgn profile every node's share is cut into blocks alike: a session taken
//! over holds its port's block of its own node's share for its subscriber, within that
//! node's quotas, not this one's.
//!
//! # Quarantine and timers
//!
//! A released port stays taken for [`AllocatorConfig::quarantine`] (default 120 s, RFC 6888
//! REQ-8) in a FIFO ordered by release time (bounded by `max_mappings`: live plus
//! quarantined mappings never exceed it). [`PortAllocator::handle_timeout`] frees due ports
//! with bounded work; [`PortAllocator::allocate`] also frees up to two due ones itself. If
//! `now` went backwards, ports behind a later one wait longer, never shorter.
//!
//! # Counters
//!
//! [`Snat`] reports through the stage's counter visitor, under the stage name `snat`, with
//! stable names:
//! - new flows: `flows_translated`, `flows_forwarded`, `flows_hairpinned` (to a forward or
//!   a mapping), `flows_inbound`,
//!   `flows_untranslated`, `flows_refused`, `no_mapping` (unsolicited inbound),
//!   `flows_imported` (sessions taken over from another node);
//! - allocation errors by reason: `alloc_error_exhausted`, `alloc_error_too_many_probes`,
//!   `alloc_error_capacity_full`, `alloc_error_quota_exceeded`,
//!   `alloc_error_unsupported_protocol`, `alloc_error_no_public_address`;
//! - live mappings: `active_tcp`, `active_udp`, `active_icmp`, and per public address (the
//!   first 16, by index) `active_public_N` with `active_public_N_tcp`, `_udp`, `_icmp`;
//! - probes: the histogram `probes_0`, `probes_1`, `probes_2`, `probes_3_4`, `probes_5_8`,
//!   `probes_9_16`, `probes_17_32`, `probes_33_up`, and `probes_total`;
//! - ports: `allocations`, `reused`, `claimed` (mappings of imported sessions), `releases`,
//!   `release_unknown`, `quarantined`; CGN
//!   `blocks_allocated`, `blocks_released`, `block_events_dropped`;
//! - packets: `packets_out`, `packets_in`, `packets_hairpinned`, `fragments_translated`,
//!   `rewrite_failed`, `icmp_errors_translated`, `icmp_errors_dropped`,
//!   `idle_timeout_resets`, `refusal_icmp_sent`, `refusal_icmp_rate_limited`,
//!   `hairpin_filtered`.
//!
//! # Memory
//!
//! Everything is allocated by [`PortAllocator::new`] and never grows
//! ([`PortAllocator::memory_bytes`]):
//! - the quarantine FIFO: 40 bytes × `max_mappings`;
//! - hyperplane: one open-addressed table of (destination, word) → (used, quarantined) bits,
//!   sized for 1.25 × `max_mappings` + 1,024 entries at ≤ 7/8 load (48-byte slots, about 69
//!   bytes per mapping): memory is per mapping, not per destination — a destination with one
//!   flow costs one entry, a full one 1,024 entries (port words and summary words) for 64,512
//!   flows. With `max_mappings` = 64,576 the allocator holds 7.07 MB, 109 bytes per mapping;
//! - rfc and cgn: 16 KiB of port bits per public address and protocol, and two tables
//!   (inside endpoint → mapping, inside address → subscriber) of `max_mappings` entries; CGN
//!   adds block ownership per public address (the blocks of every node's share: a node holds
//!   its peers' blocks for the sessions it takes over) and block lists per possible
//!   subscriber (`max_blocks` per node).
//!
//! [`Snat`] adds ([`Snat::memory_bytes`]): the IPv6 inside-address store (20 bytes ×
//! [`SnatConfig::v6_sessions`]); in the rfc and cgn profiles with endpoint-independent
//! filtering or inside prefixes, the table of mapping owners (public endpoint → inside
//! endpoint, `max_mappings` entries) and the hairpin peer store (26 bytes ×
//! [`SnatConfig::hairpin_sessions`], default `max_mappings` / 8).
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

mod alloc_error;
mod allocator;
mod config;
mod counters;
mod endpoint;
mod portable;
mod snat;
mod space;
mod store;
mod table;
mod timeouts;

pub use alloc_error::{AllocError, ReleaseError};
pub use allocator::{BlockEvent, BlockEventKind, Mapping, PortAllocator};
pub use config::{
    AllocatorConfig, CgnSettings, ConfigError, DEFAULT_EXCLUDED_PORTS, DEFAULT_MAX_PROBES,
    DEFAULT_QUARANTINE, Owner, Profile, RssSteering,
};
pub use counters::{AllocatorCounters, PROBE_BUCKETS};
pub use endpoint::{
    Endpoint, EndpointCounters, EndpointError, EndpointRule, EndpointSession, EndpointSide,
};
pub use snat::{Filtering, InsidePrefix, PortForward, Snat, SnatConfig, SnatCounters, Translation};
pub use space::{PortOwner, PortSplit, owner_of};
pub use timeouts::{
    HYPERPLANE_IDLE, ICMP_QUERY_MIN, TCP_ESTABLISHED_MIN, TCP_TRANSITORY_MIN, UDP_DEFAULT,
    nat_timeouts,
};
