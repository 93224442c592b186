//! The [`Conntrack`] stage: one session lookup per packet, shared by every
//! [`SessionService`]; sessions created by per-zone policy with the services' decisions;
//! related ICMP errors and fragments; TCP state.

use super::export::{Adopt, ExportError, ExportProgress, ImportError, ImportReport, chunk_family};
use super::key::{V4Key, V6Key};
use super::related::{self, FragmentConfig, FragmentCounters, FragmentTable};
use super::service::{EndCause, NewFlow, SessionService, aborted};
use super::state::{SessionState, tcp_flags_invalid};
use super::sync::{ApplyReport, ChangeProgress};
use super::table::{
    ConfigError, Hit, InsertError, ReplaceError, SessionInfo, SessionTable, TableConfig,
    TableCounters, ZoneError,
};
use crate::batch::{BATCH_SIZE, Batch};
use crate::flow::{Family, FlowKey, ZoneId, proto};
use crate::meta::{Direction, Meta, SessionRef, flags};
use crate::packet::Packet;
use crate::stage::{Stage, StageControl, StageCounters, StageLoop};
use crate::time::Instant;
use crate::verdict::{DropReason, Verdict};
use crate::wire::tcp::tcp_flags;
use crate::zone_map::ZoneMap;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// When a TCP segment without a session may create one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpCreate {
    /// Only a SYN (without ACK, FIN or RST) opens a session; other segments are dropped with
    /// [`DropReason::NoSession`].
    #[default]
    SynOnly,
    /// Any valid segment opens one (mid-stream pickup after a failover, for instance); it
    /// starts in [`SessionState::TcpEstablished`] but counts as established only once the
    /// other side answers.
    Any,
    /// TCP never creates sessions here (reply-only zones).
    Never,
}

/// Which first packets of a zone create sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ZonePolicy {
    /// TCP.
    pub tcp: TcpCreate,
    /// UDP creates on its first packet.
    pub udp: bool,
    /// ICMP / ICMPv6 queries create on their first packet.
    pub icmp: bool,
    /// Other protocols create on their first packet.
    pub other: bool,
    /// One-sided tracking: replies never pass this stage (direct server return, asymmetric
    /// routing), so a TCP session opened by a SYN starts as if the responder's SYN+ACK had
    /// been seen ([`SessionState::TcpSynRecv`]): the originator's ACK makes it established
    /// (assured, the established timeout), its FIN or RST closes it with the usual
    /// timeouts. Replies that do pass are tracked as ever. A service can ask the same for
    /// one flow ([`NewFlow::set_one_sided`]).
    pub one_sided: bool,
}

impl Default for ZonePolicy {
    /// TCP by SYN only; UDP, ICMP queries and other protocols by their first packet.
    fn default() -> Self {
        Self {
            tcp: TcpCreate::SynOnly,
            udp: true,
            icmp: true,
            other: true,
            one_sided: false,
        }
    }
}

impl ZonePolicy {
    /// A zone where nothing creates sessions (replies to sessions made elsewhere only).
    pub const fn reply_only() -> Self {
        Self {
            tcp: TcpCreate::Never,
            udp: false,
            icmp: false,
            other: false,
            one_sided: false,
        }
    }

    /// The same policy with one-sided tracking on or off ([`Self::one_sided`]).
    #[must_use]
    pub const fn with_one_sided(mut self, one_sided: bool) -> Self {
        self.one_sided = one_sided;
        self
    }
}

/// Session capacities of the two tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// IPv4 sessions.
    pub v4: u32,
    /// IPv6 sessions.
    pub v6: u32,
}

/// Conntrack stage settings: `ConntrackConfig::new(secret)` then adjust.
///
/// ```
/// use nf_core::conntrack::{ConntrackConfig, Sizes};
/// let mut cfg = ConntrackConfig::new(*b"operator secret!").sizes(Sizes { v4: 1 << 20, v6: 1 << 16 });
/// cfg.v4.default_zone_quota = 100_000;
/// assert_eq!(cfg.v6.capacity, 1 << 16);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConntrackConfig {
    /// The IPv4 table.
    pub v4: TableConfig,
    /// The IPv6 table.
    pub v6: TableConfig,
    /// Policy of zones without their own.
    pub default_policy: ZonePolicy,
    /// The fragment table (later fragments → their first fragment's session).
    pub fragments: FragmentConfig,
}

impl ConntrackConfig {
    /// Defaults: 65,536 IPv4 and 16,384 IPv6 sessions (see [`TableConfig::new`]), the
    /// default [`ZonePolicy`] and [`FragmentConfig`]; `secret` keys every hash (use a random
    /// value per process).
    pub fn new(secret: [u8; 16]) -> Self {
        Self {
            v4: TableConfig::new(1 << 16, secret),
            v6: TableConfig::new(1 << 14, secret),
            default_policy: ZonePolicy::default(),
            fragments: FragmentConfig::default(),
        }
    }

    /// Sets both tables' capacities (and their default zone quotas to match).
    #[must_use]
    pub fn sizes(mut self, sizes: Sizes) -> Self {
        self.v4.capacity = sizes.v4;
        self.v4.default_zone_quota = sizes.v4;
        self.v6.capacity = sizes.v6;
        self.v6.default_zone_quota = sizes.v6;
        self
    }
}

/// Per-outcome packet counts of the conntrack stage (also reported by
/// [`StageControl::visit_counters`], under the field names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConntrackCounters {
    /// Session-table lookups made (one per tracked or related packet).
    pub lookups: u64,
    /// Packets that matched a session.
    pub hits: u64,
    /// Of the hits, packets travelling in the reply direction.
    pub reply_hits: u64,
    /// Packets with no session.
    pub misses: u64,
    /// Sessions created.
    pub created: u64,
    /// Packets passed without tracking (no flow key).
    pub untracked: u64,
    /// ICMP errors and later fragments matched to a session.
    pub related: u64,
    /// Drops: table full.
    pub refused_full: u64,
    /// Drops: zone quota (or zone table) exhausted.
    pub refused_quota: u64,
    /// Drops: no session and the policy does not create one.
    pub no_session: u64,
    /// Drops: TCP flags invalid for the state.
    pub invalid: u64,
    /// Drops: key conflicts (LAND packets, a reply key already taken).
    pub key_conflict: u64,
    /// Drops: a service refused the new flow.
    pub service_refused: u64,
    /// Packets without a session (counted above under the reason their flow was not created,
    /// or ICMP errors that no session relates) that the service passed anyway through
    /// [`SessionService::on_refused`]: served statelessly, not dropped.
    pub refused_passed: u64,
    /// Drops: a service's [`check`](SessionService::check) rejected a packet of a session
    /// (which was left unchanged).
    pub service_rejected: u64,
    /// TCP port reuse: a SYN met its flow's closed session (`TimeWait` or `Closed`), which
    /// ended ([`EndCause::Reused`]); the SYN then went the new-flow way (counted there too).
    pub reused: u64,
    /// A service asked for a packet's session to be replaced
    /// ([`SessionService::renews`]): the session ended ([`EndCause::Renewed`]) and the
    /// packet went the new-flow way (counted there too).
    pub renewed: u64,
}

/// A session created earlier in the current batch: later packets of the batch whose batch
/// lookup missed find it here instead of looking the table up again.
#[derive(Clone, Copy)]
struct Created {
    hash: u64,
    key: FlowKey,
    hit: Hit,
}

/// Per-batch scratch space, allocated once.
struct Scratch {
    hits: [Option<Hit>; BATCH_SIZE],
    hits6: [Option<Hit>; BATCH_SIZE],
    hashes: [u64; BATCH_SIZE],
    /// Per miss of the batch lookup: the table hash of its reversed key (see
    /// `SessionTable::prepare_insert`); other entries are stale.
    reversed: [u64; BATCH_SIZE],
    created: Vec<Created>,
}

/// The connection-tracking stage: an IPv4 and an IPv6 [`SessionTable`], per-zone creation
/// policy, a fragment table, and the [`SessionService`] `S` (the network functions that
/// share its sessions; `()` for none).
///
/// For every packet still at [`Verdict::Pass`] with a valid flow key it does **one** session
/// lookup (batched: hash all, prefetch, then probe), sets [`Meta::session`] and
/// [`Meta::direction`], advances the session's TCP state from [`Meta::tcp_flags`] and
/// refreshes its timeout, then hands the packet to `S`. A packet without a session creates
/// one if the zone's [`ZonePolicy`] allows and `S` admits it (with the reply key `S` chose,
/// both keys inserted at once), and is dropped with a typed [`DropReason`] otherwise. ICMP
/// errors and later fragments are *related*: matched to the session they belong to
/// ([`flags::RELATED`]), given to `S`, never creating, refreshing or ending a session.
///
/// Call order: [`Stage::process`] per batch; [`StageControl::poll_timeout`] /
/// [`StageControl::handle_timeout`] between batches (or through the pipeline). A batch gives
/// exactly the results of its packets processed one by one.
pub struct Conntrack<S: SessionService = ()> {
    v4: SessionTable<V4Key, S::Value>,
    v6: SessionTable<V6Key, S::Value>,
    service: S,
    default_policy: ZonePolicy,
    policies: ZoneMap<ZonePolicy>,
    frags: FragmentTable,
    stats: ConntrackCounters,
    counters: StageCounters,
    scratch: Box<Scratch>,
}

impl<S: SessionService> core::fmt::Debug for Conntrack<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Conntrack")
            .field("v4_sessions", &self.v4.len())
            .field("v6_sessions", &self.v6.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Runs `$body` with `$t` bound to the table of `$family`, borrowed apart from the stage's
/// other fields (so the service can be borrowed beside it, e.g. to see the table while it
/// decides a new flow).
macro_rules! on_table {
    ($self:ident, $family:expr, |$t:ident| $body:expr) => {
        match $family {
            Family::V4 => {
                let $t = &mut $self.v4;
                $body
            }
            Family::V6 => {
                let $t = &mut $self.v6;
                $body
            }
        }
    };
}

impl<S: SessionService> Conntrack<S> {
    /// A stage with both tables and the fragment table allocated, and `service`; the tables
    /// hold cross-zone sessions if the service asks for them ([`SessionService::CROSS_ZONE`]).
    ///
    /// # Errors
    /// [`ConfigError`] from either table.
    pub fn new(mut cfg: ConntrackConfig, service: S) -> Result<Self, ConfigError> {
        // A service that sets reply keys in other zones gets tables that hold them.
        cfg.v4.cross_zone |= S::CROSS_ZONE;
        cfg.v6.cross_zone |= S::CROSS_ZONE;
        Ok(Self {
            v4: SessionTable::new(cfg.v4)?,
            v6: SessionTable::new(cfg.v6)?,
            service,
            default_policy: cfg.default_policy,
            policies: ZoneMap::new(),
            frags: FragmentTable::new(cfg.fragments, cfg.v4.secret),
            stats: ConntrackCounters::default(),
            counters: StageCounters::default(),
            scratch: Box::new(Scratch {
                hits: [None; BATCH_SIZE],
                hits6: [None; BATCH_SIZE],
                hashes: [0; BATCH_SIZE],
                reversed: [0; BATCH_SIZE],
                created: Vec::with_capacity(2 * BATCH_SIZE),
            }),
        })
    }

    /// The IPv4 table.
    pub fn v4(&self) -> &SessionTable<V4Key, S::Value> {
        &self.v4
    }

    /// The IPv4 table, writable (e.g. to import sessions). Sessions removed through it
    /// bypass [`SessionService::on_end`]: prefer [`Self::remove`].
    pub fn v4_mut(&mut self) -> &mut SessionTable<V4Key, S::Value> {
        &mut self.v4
    }

    /// The IPv6 table.
    pub fn v6(&self) -> &SessionTable<V6Key, S::Value> {
        &self.v6
    }

    /// The IPv6 table, writable (see [`Self::v4_mut`]).
    pub fn v6_mut(&mut self) -> &mut SessionTable<V6Key, S::Value> {
        &mut self.v6
    }

    /// Appends one export chunk of the `family` table's sessions to `out`, services' parts
    /// included ([`SessionService::export_value`]), for another node's [`Self::import`]: up
    /// to `max` sessions from slot `from` on (start with 0, continue with
    /// [`ExportProgress::next`]), remaining lifetimes measured from `now`, in the format of
    /// [`SessionTable::export`] with the services' bytes as the value. A replica's copies of
    /// another node's sessions are left out (see [`SessionTable::export`]). Cold path:
    /// allocates in `out`.
    ///
    /// # Errors
    /// [`ExportError::Unsupported`] (nothing written) when a service's sessions cannot move
    /// ([`SessionService::EXPORT_LEN`] is `None`).
    ///
    /// ```
    /// use nf_core::conntrack::{Conntrack, ConntrackConfig};
    /// use nf_core::wire::Frame;
    /// use nf_core::{Batch, Family, Instant, Packet, ParseStage, Stage, StageExt};
    ///
    /// let secret = *b"shared by nodes!";
    /// let mut a = ParseStage::default().then(Conntrack::new(ConntrackConfig::new(secret), ())?);
    /// let syn = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).tcp(40_000, 80, 0x02).to_vec()?;
    /// let mut batch = Batch::new();
    /// batch.push(Packet::with_headroom(&syn, 64)).ok();
    /// let now = Instant::from_nanos(1_000_000_000);
    /// a.process(now, &mut batch);
    ///
    /// // Node A fails over to node B: B carries A's sessions on.
    /// let mut chunk = Vec::new();
    /// let done = a.second.export(Family::V4, now, 0, 1024, &mut chunk)?;
    /// assert_eq!((done.records, done.next), (1, None));
    /// let mut b = Conntrack::new(ConntrackConfig::new(secret), ())?;
    /// assert_eq!(b.import(now, &chunk)?.imported, 1);
    /// assert_eq!(b.v4().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn export(
        &self,
        family: Family,
        now: Instant,
        from: u32,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<ExportProgress, ExportError> {
        let vlen = S::EXPORT_LEN.ok_or(ExportError::Unsupported)?;
        let s = &self.service;
        let encode = |v: &S::Value, out: &mut [u8]| s.export_value(v, out);
        Ok(match family {
            Family::V4 => self.v4.export_with(now, from, max, out, vlen, encode),
            Family::V6 => self.v6.export_with(now, from, max, out, vlen, encode),
        })
    }

    /// Installs the sessions of an export chunk made by another node's [`Self::export`]
    /// (either family), lifetimes measured from `now`: each service takes each session
    /// over ([`SessionService::import_value`]) before it is installed. The chunk is checked
    /// completely before anything changes; a session already present here, or over a zone's
    /// quota, is skipped ([`ImportReport::skipped`]), one a service declines is not
    /// installed ([`ImportReport::refused`]). Cold path.
    ///
    /// # Errors
    /// [`ImportError`] for truncated, corrupt or incompatible input (the stage is unchanged),
    /// [`ImportError::Unsupported`] when a service's sessions cannot move.
    pub fn import(&mut self, now: Instant, bytes: &[u8]) -> Result<ImportReport, ImportError> {
        let vlen = S::EXPORT_LEN.ok_or(ImportError::Unsupported)?;
        let mut adopt = Adopting(&mut self.service, false);
        match chunk_family(bytes)? {
            4 => self.v4.import_with(now, bytes, vlen, &mut adopt),
            6 => self.v6.import_with(now, bytes, vlen, &mut adopt),
            _ => Err(ImportError::Corrupt),
        }
    }

    /// Drains up to `max` events of the `family` table's change journal
    /// ([`TableConfig::journal`]) into one delta chunk appended to `out`, services' parts
    /// included, for a replica's [`Self::apply`] (see [`SessionTable::export_changes`]).
    /// Call it every few milliseconds (or batches) and send the chunk; when
    /// [`ChangeProgress::lost`] is not zero the replica missed changes: give it a full
    /// resync ([`Self::begin_resync`], every [`Self::export`] chunk through [`Self::apply`],
    /// [`Self::end_resync`]). Long-lived sessions need a sweep of export chunks anyway,
    /// more often than their shortest timeout: a refresh by traffic is not a journal event,
    /// and a copy not refreshed in time ages out on the replica. Cold path: allocates in
    /// `out`.
    ///
    /// # Errors
    /// [`ExportError::Unsupported`] (nothing written or drained) when a service's sessions
    /// cannot move ([`SessionService::EXPORT_LEN`] is `None`).
    ///
    /// ```
    /// use nf_core::conntrack::{Conntrack, ConntrackConfig};
    /// use nf_core::wire::Frame;
    /// use nf_core::{Batch, Family, Instant, Packet, ParseStage, Stage, StageExt};
    ///
    /// let mut cfg = ConntrackConfig::new(*b"shared by nodes!");
    /// cfg.v4.journal = 4096;
    /// let mut primary = ParseStage::default().then(Conntrack::new(cfg.clone(), ())?);
    /// let mut replica = Conntrack::new(cfg, ())?;
    /// let now = Instant::from_nanos(1_000_000_000);
    /// let frame = |flags| Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).tcp(40_000, 80, flags).to_vec();
    /// let mut batch = Batch::new();
    /// batch.push(Packet::with_headroom(&frame(0x02)?, 64)).ok(); // SYN
    /// primary.process(now, &mut batch);
    ///
    /// // Every few milliseconds: the primary's changes go to its replica.
    /// let mut chunk = Vec::new();
    /// primary.second.export_changes(Family::V4, now, 1024, &mut chunk)?;
    /// assert_eq!(replica.apply(now, &chunk)?.created, 1);
    ///
    /// // The primary fails: the replica takes its copies over and carries the connection
    /// // on (the server's SYN+ACK matches the session).
    /// assert_eq!(replica.take_over_replicas(|_| true), 1);
    /// assert!(replica.lookup(&batch.packets()[0].meta.flow.reversed()).is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn export_changes(
        &mut self,
        family: Family,
        now: Instant,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<ChangeProgress, ExportError> {
        let vlen = S::EXPORT_LEN.ok_or(ExportError::Unsupported)?;
        let s = &self.service;
        let encode = |v: &S::Value, out: &mut [u8]| s.export_value(v, out);
        Ok(match family {
            Family::V4 => self.v4.export_changes_with(now, max, out, vlen, encode),
            Family::V6 => self.v6.export_changes_with(now, max, out, vlen, encode),
        })
    }

    /// Applies a delta chunk of another node's [`Self::export_changes`], or an export chunk
    /// of its [`Self::export`] (a sweep), as [`SessionTable::apply`] does: each service
    /// takes each new session over ([`SessionService::replicate_value`]) and hears of each
    /// session removed ([`SessionService::on_end`], [`EndCause::Removed`]). A session
    /// already here with the same keys takes the record's state and lifetime and keeps its
    /// services' value. Cold path.
    ///
    /// # Errors
    /// [`ImportError`] for truncated, corrupt or incompatible input (the stage is unchanged),
    /// [`ImportError::Unsupported`] when a service's sessions cannot move.
    pub fn apply(&mut self, now: Instant, bytes: &[u8]) -> Result<ApplyReport, ImportError> {
        self.apply_from(now, 0, bytes)
    }

    /// [`Self::apply`] for a node replicated by several primaries: the copies remember
    /// `origin`, the sending node as this node numbers its peers, so that one primary's
    /// resync and failure touch its copies alone (see [`SessionTable::apply_from`]).
    ///
    /// # Errors
    /// As [`Self::apply`].
    pub fn apply_from(
        &mut self,
        now: Instant,
        origin: u8,
        bytes: &[u8],
    ) -> Result<ApplyReport, ImportError> {
        let vlen = S::EXPORT_LEN.ok_or(ImportError::Unsupported)?;
        let mut adopt = Adopting(&mut self.service, true);
        match super::sync::chunk_family(bytes)? {
            4 => self.v4.apply_with(now, origin, bytes, vlen, &mut adopt),
            6 => self.v6.apply_with(now, origin, bytes, vlen, &mut adopt),
            _ => Err(ImportError::Corrupt),
        }
    }

    /// Makes the replica copies `which` selects, of both families, this stage's own
    /// sessions (see [`SessionTable::take_over_replicas`]): call it when their primary has
    /// failed and this node carries its flows on (for a NAT, with the failed node's share
    /// taken over; `which` may select by it). Returns how many it took over.
    pub fn take_over_replicas(
        &mut self,
        mut which: impl FnMut(&SessionInfo<S::Value>) -> bool,
    ) -> usize {
        self.v4.take_over_replicas(&mut which) + self.v6.take_over_replicas(&mut which)
    }

    /// Makes the replica copies `which` selects, of both families, orphans: each becomes this
    /// stage's own session at the first packet that reaches it here (see
    /// [`SessionTable::orphan_replicas`]). Returns how many.
    pub fn orphan_replicas(
        &mut self,
        mut which: impl FnMut(&SessionInfo<S::Value>) -> bool,
    ) -> usize {
        self.v4.orphan_replicas(&mut which) + self.v6.orphan_replicas(&mut which)
    }

    /// Starts a full resync from a primary that lost journal events: the replica copies
    /// `which` selects, of both families, are marked unconfirmed until a record the primary
    /// sends ([`Self::export`] chunks, given to [`Self::apply`]) confirms them; see
    /// [`SessionTable::begin_resync`]. Returns how many were marked.
    pub fn begin_resync(&mut self, mut which: impl FnMut(&SessionInfo<S::Value>) -> bool) -> usize {
        self.v4.begin_resync(&mut which) + self.v6.begin_resync(&mut which)
    }

    /// Ends a resync ([`Self::begin_resync`]): the copies left unconfirmed are removed, each
    /// service hearing of each ([`SessionService::on_end`], [`EndCause::Removed`]). Returns
    /// how many.
    pub fn end_resync(&mut self, now: Instant) -> usize {
        self.end_resync_where(now, |_| true)
    }

    /// [`Self::end_resync`] for the copies `which` selects only (one primary's, by
    /// [`SessionInfo::origin`], while another's resync may be under way; see
    /// [`Self::apply_from`]).
    pub fn end_resync_where(
        &mut self,
        now: Instant,
        mut which: impl FnMut(&SessionInfo<S::Value>) -> bool,
    ) -> usize {
        let service = &mut self.service;
        let mut end = |info: &SessionInfo<S::Value>| service.on_end(now, info, EndCause::Removed);
        self.v4.remove_unconfirmed(&mut which, &mut end)
            + self.v6.remove_unconfirmed(&mut which, &mut end)
    }

    /// The session service.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The session service, writable (configuration changes).
    pub fn service_mut(&mut self) -> &mut S {
        &mut self.service
    }

    /// Outcome counters.
    pub fn stats(&self) -> &ConntrackCounters {
        &self.stats
    }

    /// Fragment table counters.
    pub fn fragment_counters(&self) -> &FragmentCounters {
        &self.frags.counters
    }

    /// Live sessions of both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated by the tables and the fragment table.
    pub fn allocated_bytes(&self) -> usize {
        self.v4.allocated_bytes() + self.v6.allocated_bytes() + self.frags.allocated_bytes()
    }

    /// True while `r` (from [`Meta::session`], of either family) names a live session.
    pub fn is_live(&self, r: SessionRef) -> bool {
        match r.family() {
            Family::V4 => self.v4.is_live(r),
            Family::V6 => self.v6.is_live(r),
        }
    }

    /// The session `key` belongs to and the direction of a packet with that key.
    pub fn lookup(&self, key: &FlowKey) -> Option<Hit> {
        match key.family() {
            Family::V4 => self.v4.lookup(key),
            Family::V6 => self.v6.lookup(key),
        }
    }

    /// Everything about a live session of either family (cold path).
    pub fn info(&self, r: SessionRef) -> Option<SessionInfo<S::Value>> {
        match r.family() {
            Family::V4 => self.v4.info(r),
            Family::V6 => self.v6.info(r),
        }
    }

    /// The services' value of a live session.
    pub fn value(&self, r: SessionRef) -> Option<&S::Value> {
        match r.family() {
            Family::V4 => self.v4.value(r),
            Family::V6 => self.v6.value(r),
        }
    }

    /// The services' value of a live session, writable.
    pub fn value_mut(&mut self, r: SessionRef) -> Option<&mut S::Value> {
        match r.family() {
            Family::V4 => self.v4.value_mut(r),
            Family::V6 => self.v6.value_mut(r),
        }
    }

    /// Points the session's reply direction at `reply`, atomically.
    ///
    /// # Errors
    /// [`ReplaceError`]; nothing changed.
    pub fn replace_reply(&mut self, r: SessionRef, reply: &FlowKey) -> Result<(), ReplaceError> {
        match r.family() {
            Family::V4 => self.v4.replace_reply(r, reply),
            Family::V6 => self.v6.replace_reply(r, reply),
        }
    }

    /// Removes a live session (the service's [`SessionService::on_end`] sees
    /// [`EndCause::Removed`]); returns its value, `None` for a stale handle.
    pub fn remove(&mut self, now: Instant, r: SessionRef) -> Option<S::Value> {
        self.end(now, r, EndCause::Removed)
    }

    /// Removes a live session, telling the service why.
    fn end(&mut self, now: Instant, r: SessionRef, cause: EndCause) -> Option<S::Value> {
        let info = on_table!(self, r.family(), |t| t.remove_info(r))?;
        self.service.on_end(now, &info, cause);
        Some(info.value)
    }

    /// The state of a live session of either family.
    pub fn state(&self, r: SessionRef) -> Option<SessionState> {
        match r.family() {
            Family::V4 => self.v4.state(r),
            Family::V6 => self.v6.state(r),
        }
    }

    /// Whether a service asks for `h`'s session to be replaced by a new one that this
    /// packet opens ([`SessionService::renews`]).
    #[inline]
    fn renews<B: AsRef<[u8]>>(&self, now: Instant, pkt: &Packet<B>, h: Hit) -> bool {
        let value = match h.session.family() {
            Family::V4 => self.v4.value(h.session),
            Family::V6 => self.v6.value(h.session),
        };
        value.is_some_and(|v| self.service.renews(now, h.direction, v, pkt))
    }

    /// Whether this packet is a new connection reusing the ports of `h`'s closed session: a
    /// bare SYN in the original direction meeting `TimeWait` or `Closed`. Linux conntrack
    /// does the same (the old entry is killed and the SYN looked up again): were the session
    /// reused instead, the new connection would inherit every service's old decision — a
    /// draining backend, a NAT mapping, a security-group verdict a rule change has since
    /// withdrawn.
    #[inline(always)]
    fn reuses(&self, meta: &Meta, h: Hit) -> bool {
        meta.flow.proto == proto::TCP
            && meta.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN)
                == tcp_flags::SYN
            && h.direction == Direction::Original
            && matches!(
                self.state(h.session),
                Some(SessionState::TcpTimeWait | SessionState::TcpClosed)
            )
    }

    /// Sets the creation policy of one zone.
    pub fn set_zone_policy(&mut self, zone: ZoneId, policy: ZonePolicy) {
        self.policies.insert(zone, policy);
    }

    /// Sets a zone's quota in both tables (each family counts separately).
    ///
    /// # Errors
    /// [`ZoneError`] when a table has no room for another zone.
    pub fn set_zone_quota(&mut self, zone: ZoneId, quota: u32) -> Result<(), ZoneError> {
        self.v4.set_zone_quota(zone, quota)?;
        self.v6.set_zone_quota(zone, quota)
    }

    /// Sets a packet's verdict (the one place this stage decides; [`StageLoop::run`]
    /// counts the outcomes).
    #[inline(always)]
    fn decide<B>(&mut self, pkt: &mut Packet<B>, v: Verdict) {
        pkt.meta.verdict = v;
    }

    fn policy(&self, zone: ZoneId) -> ZonePolicy {
        self.policies
            .get(zone)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// Whether the zone's policy lets this packet open a session; `Err` for a TCP segment
    /// that is invalid whatever the state.
    fn may_create(meta: &Meta, pol: &ZonePolicy) -> Result<bool, DropReason> {
        Ok(match meta.flow.proto {
            proto::TCP => {
                let fl = meta.tcp_flags;
                if tcp_flags_invalid(fl) {
                    return Err(DropReason::InvalidTcpState);
                }
                let pure_syn = fl & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
                match pol.tcp {
                    TcpCreate::SynOnly => pure_syn,
                    TcpCreate::Any => true,
                    TcpCreate::Never => false,
                }
            }
            proto::UDP => pol.udp,
            proto::ICMP | proto::ICMPV6 => pol.icmp,
            _ => pol.other,
        })
    }

    /// A hit on a live session that the packet leaves as it is, its timeout aside (most
    /// packets: an established TCP session's ACK, a datagram of a UDP session that has seen
    /// both directions): [`Self::established`] without the state tracker, the reuse check
    /// (such a session is neither `TimeWait` nor `Closed`) or the batch's re-checks (a
    /// stale handle fails here). `None`, with nothing changed, for any other hit; otherwise
    /// whether the hit travels the reply direction, for the caller to count the hit (and
    /// the reply hit) as `established` would.
    #[inline(always)]
    fn steady_hit<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
        h: Hit,
    ) -> Option<bool> {
        let fl = if pkt.meta.flow.proto == proto::TCP {
            pkt.meta.tcp_flags
        } else {
            0
        };
        let r = h.session;
        let service = &mut self.service;
        let mut renew = false;
        let outcome = on_table!(self, r.family(), |t| {
            t.track_steady(r, now, fl, |v| {
                if S::RENEWS && service.renews(now, h.direction, v, pkt) {
                    // To be replaced: the full path ends the session, untouched here.
                    renew = true;
                    return (false, Err(DropReason::NoSession));
                }
                if S::CHECKS
                    && let Err(reason) = service.check(now, h.direction, v, pkt)
                {
                    // Rejected: the session stays exactly as it was (no refresh).
                    return (false, Err(reason));
                }
                (true, Ok(service.on_packet(now, h.direction, v, pkt)))
            })
        })?;
        if S::RENEWS && renew {
            return None;
        }
        match outcome {
            Ok(verdict) => {
                pkt.meta.session = Some(SessionRef::new(r.family(), r.index(), r.generation()));
                pkt.meta.direction = h.direction;
                self.decide(pkt, verdict);
                Some(h.direction == Direction::Reply)
            }
            Err(reason) => {
                self.stats.service_rejected += 1;
                self.decide(pkt, Verdict::Drop(reason));
                Some(false)
            }
        }
    }

    /// A packet of a known session: TCP state, refresh, then the service.
    #[inline(always)]
    fn established<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
        h: Hit,
    ) {
        let fl = if pkt.meta.flow.proto == proto::TCP {
            pkt.meta.tcp_flags
        } else {
            0
        };
        self.stats.hits += 1;
        let r = h.session;
        let service = &mut self.service;
        if S::CHECKS {
            let checked = on_table!(self, r.family(), |t| {
                t.value_mut(r)
                    .map(|v| service.check(now, h.direction, v, pkt))
            });
            if let Some(Err(reason)) = checked {
                self.stats.service_rejected += 1;
                self.decide(pkt, Verdict::Drop(reason));
                return;
            }
        }
        let service = &mut self.service;
        let verdict = on_table!(self, r.family(), |t| {
            t.track_value(r, now, h.direction, fl)
                .map(|v| service.on_packet(now, h.direction, v, pkt))
        });
        let Some(verdict) = verdict else {
            self.stats.invalid += 1;
            self.decide(pkt, Verdict::Drop(DropReason::InvalidTcpState));
            return;
        };
        self.stats.reply_hits += u64::from(h.direction == Direction::Reply);
        pkt.meta.session = Some(r);
        pkt.meta.direction = h.direction;
        self.decide(pkt, verdict);
    }

    /// A packet without a session: policy, the service's decision, the insert (both keys at
    /// once), then the service sees the packet. Returns the new session's two keys' entries
    /// for the batch's created set.
    fn create<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
        (hash, reversed): (u64, Option<u64>),
    ) -> Option<[Created; 2]> {
        self.stats.misses += 1;
        let pol = self.policy(pkt.meta.flow.zone);
        match Self::may_create(&pkt.meta, &pol) {
            Ok(true) => {}
            Ok(false) => {
                self.stats.no_session += 1;
                let verdict = self.service.on_refused(now, DropReason::NoSession, pkt);
                self.stats.refused_passed += u64::from(verdict.is_pass());
                self.decide(pkt, verdict);
                return None;
            }
            Err(reason) => {
                self.stats.invalid += 1;
                self.decide(pkt, Verdict::Drop(reason));
                return None;
            }
        }
        let key = pkt.meta.flow;
        let state = SessionState::initial(key.proto, pkt.meta.tcp_flags);
        let service = &mut self.service;
        let res = on_table!(self, key.family(), |t| {
            let mut new = NewFlow::new(key, &*t);
            let decided = service.on_new(now, pkt, &mut new);
            let reply = *new.reply();
            let state = state.opened(pol.one_sided || new.is_one_sided());
            match decided {
                Err(reason) => Err(Err(reason)),
                Ok(value) => t
                    .insert_new(now, &key, &reply, (hash, reversed), state, value, |info| {
                        service.on_end(now, info, EndCause::EarlyDrop);
                    })
                    .map(|(r, reply_hash)| (r, reply, reply_hash))
                    .map_err(|e| {
                        let info = aborted(now, key, reply, value);
                        service.on_end(now, &info, EndCause::Aborted);
                        Ok(e)
                    }),
            }
        });
        match res {
            Ok((r, reply, reply_hash)) => {
                self.stats.created += 1;
                pkt.meta.session = Some(r);
                pkt.meta.direction = Direction::Original;
                let service = &mut self.service;
                let verdict = on_table!(self, r.family(), |t| {
                    t.value_mut(r)
                        .map(|v| service.on_packet(now, Direction::Original, v, pkt))
                });
                self.decide(pkt, verdict.unwrap_or(Verdict::Pass));
                let hit = |direction| Hit {
                    session: r,
                    direction,
                };
                Some([
                    Created {
                        hash,
                        key,
                        hit: hit(Direction::Original),
                    },
                    Created {
                        hash: reply_hash,
                        key: reply,
                        hit: hit(Direction::Reply),
                    },
                ])
            }
            Err(e) => {
                let reason = match e {
                    Err(reason) => {
                        self.stats.service_refused += 1;
                        reason
                    }
                    Ok(InsertError::TableFull) => {
                        self.stats.refused_full += 1;
                        DropReason::SessionTableFull
                    }
                    Ok(InsertError::ZoneQuota | InsertError::TooManyZones) => {
                        self.stats.refused_quota += 1;
                        DropReason::ZoneQuotaExceeded
                    }
                    Ok(InsertError::CrossZone) => DropReason::SessionCrossZone,
                    Ok(_) => {
                        self.stats.key_conflict += 1;
                        DropReason::SessionKeyConflict
                    }
                };
                // The service may still forward the packet without a session.
                let verdict = self.service.on_refused(now, reason, pkt);
                self.stats.refused_passed += u64::from(verdict.is_pass());
                self.decide(pkt, verdict);
                None
            }
        }
    }

    /// An ICMP error or a later fragment: find the session it belongs to without touching
    /// the session's state or timeout.
    fn related<B: AsRef<[u8]> + AsMut<[u8]>>(&mut self, now: Instant, pkt: &mut Packet<B>) {
        let found = if pkt.meta.has(flags::ICMP_ERROR) {
            related::quoted_key(pkt.data(), &pkt.meta).and_then(|quoted| {
                self.stats.lookups += 1;
                // The error travels the way the quoted packet's reverse would.
                self.lookup(&quoted.reversed())
                    .map(|h| (h.session, h.direction))
                    .ok_or(DropReason::RelatedNoSession)
            })
        } else {
            related::fragment_id(pkt.data(), &pkt.meta)
                .and_then(|id| self.frags.find(now, &pkt.meta, id))
                .filter(|(r, _)| self.is_live(*r))
                .ok_or(DropReason::FragmentNoSession)
        };
        let (r, direction) = match found {
            Ok(x) => x,
            Err(DropReason::RelatedNoSession) => {
                // An error about a flow served without a session: the service decides.
                let verdict = self
                    .service
                    .on_refused(now, DropReason::RelatedNoSession, pkt);
                self.stats.refused_passed += u64::from(verdict.is_pass());
                self.decide(pkt, verdict);
                return;
            }
            Err(reason) => {
                self.decide(pkt, Verdict::Drop(reason));
                return;
            }
        };
        self.stats.related += 1;
        pkt.meta.session = Some(r);
        pkt.meta.direction = direction;
        pkt.meta.flags |= flags::RELATED;
        let service = &mut self.service;
        let verdict = on_table!(self, r.family(), |t| {
            t.value_mut(r)
                .map(|v| service.on_related(now, direction, v, pkt))
        });
        self.decide(pkt, verdict.unwrap_or(Verdict::Pass));
    }

    /// Runs the stage's timers and the service's.
    fn timers(&mut self, now: Instant, budget: usize) -> usize {
        let service = &mut self.service;
        let mut end = |info: &SessionInfo<S::Value>| service.on_end(now, info, EndCause::Expired);
        let a = self.v4.handle_timeout_with(now, budget, &mut end);
        let b = self
            .v6
            .handle_timeout_with(now, budget.saturating_sub(a), &mut end);
        let c = self
            .service
            .handle_timeout(now, budget.saturating_sub(a + b));
        a + b + c
    }
}

/// Packets the stage tracks with a session lookup of their own key.
#[inline(always)]
fn trackable(m: &Meta) -> bool {
    m.has(flags::L3_VALID) && m.flags & (flags::LATER_FRAGMENT | flags::ICMP_ERROR) == 0
}

/// Per-batch state of the sequential pass (see [`Conntrack::packet`]).
struct Pass {
    /// The batch created or evicted a session: batch answers need re-checking.
    changed: bool,
    /// Early drops of both tables when last looked.
    evictions: u64,
}

impl<S: SessionService> Conntrack<S> {
    /// One packet of the sequential pass, in arrival order, given its batch lookup answer
    /// (`hit`, and the key's table hash), unless [`Self::steady_hit`] took it. Once this
    /// batch changed the table (a session was created or evicted), a hit is re-checked for
    /// liveness and a miss consults the sessions this batch created, so the batch answers
    /// exactly like packets processed one by one, with one lookup per packet. Out of line:
    /// the sequential pass stays small for the steady hits.
    #[inline(never)]
    fn packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
        mut hit: Option<Hit>,
        (hash, reversed): (u64, Option<u64>),
        pass: &mut Pass,
    ) {
        if pass.changed {
            if let Some(h) = hit
                && !self.is_live(h.session)
            {
                hit = None;
            }
            if hit.is_none() {
                let k = &pkt.meta.flow;
                // Newest first: an older entry for the same key names a session that this
                // batch created and then evicted.
                hit = self
                    .scratch
                    .created
                    .iter()
                    .rev()
                    .filter(|c| c.hash == hash && c.key == *k)
                    .map(|c| c.hit)
                    .find(|h| self.is_live(h.session));
            }
        }
        let mut reversed = reversed;
        if let Some(h) = hit
            && self.reuses(&pkt.meta, h)
        {
            self.stats.reused += 1;
            let _ = self.end(now, h.session, EndCause::Reused);
            // Later packets of the batch that found the old session look again.
            pass.changed = true;
            hit = None;
            reversed = None;
        }
        if S::RENEWS
            && let Some(h) = hit
            && self.renews(now, pkt, h)
        {
            self.stats.renewed += 1;
            let _ = self.end(now, h.session, EndCause::Renewed);
            pass.changed = true;
            hit = None;
            // The packet's own key was the session's: hash its reverse afresh at the insert.
            reversed = None;
        }
        match hit {
            Some(h) => self.established(now, pkt, h),
            None => {
                if let Some(c) = self.create(now, pkt, (hash, reversed)) {
                    self.scratch.created.extend(c);
                    pass.changed = true;
                }
                let e = self.v4.counters().early_drops + self.v6.counters().early_drops;
                pass.changed |= e != pass.evictions;
                pass.evictions = e;
            }
        }
        self.fragment(now, pkt);
    }

    /// A first fragment that found or made a session: later fragments will find it.
    #[inline(always)]
    fn fragment<B: AsRef<[u8]> + AsMut<[u8]>>(&mut self, now: Instant, pkt: &Packet<B>) {
        if pkt.meta.has(flags::FRAGMENT)
            && pkt.meta.session.is_some()
            && let Some(id) = related::fragment_id(pkt.data(), &pkt.meta)
        {
            self.frags.record(now, &pkt.meta, id);
        }
    }

    /// A pending packet that is not looked up by its own key: related, or untracked.
    #[inline]
    fn other<B: AsRef<[u8]> + AsMut<[u8]>>(&mut self, now: Instant, pkt: &mut Packet<B>) {
        if pkt.meta.has(flags::L3_VALID) {
            self.related(now, pkt);
        } else {
            self.stats.untracked += 1;
        }
    }
}

impl<S: SessionService> StageLoop for Conntrack<S> {
    fn counters_mut(&mut self) -> &mut StageCounters {
        &mut self.counters
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, S: SessionService> Stage<B> for Conntrack<S> {
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        self.run(batch, |ct, batch, before| {
            ct.track_batch(now, batch, before)
        });
    }
}

impl<S: SessionService> Conntrack<S> {
    /// The whole batch: masks, one batched lookup, then every packet in order.
    #[inline(always)]
    fn track_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        batch: &mut Batch<B>,
        before: u64,
    ) {
        // Of the pending packets, those looked up by their own key, and their families
        // (masks of every packet, one bit shifted in per packet from the last one down,
        // branch-free, then cut to the pending ones).
        let (mut trackable_mask, mut v6_mask) = (0u64, 0u64);
        let packets = batch.packets();
        let packets = packets.get(..BATCH_SIZE).unwrap_or(packets);
        for p in packets.iter().rev() {
            trackable_mask = trackable_mask << 1 | u64::from(trackable(&p.meta));
            v6_mask = v6_mask << 1 | u64::from(p.meta.flow.family() == Family::V6);
        }
        let track = before & trackable_mask;
        let (v4, v6) = (track & !v6_mask != 0, track & v6_mask != 0);
        self.stats.lookups += u64::from(track.count_ones());
        self.scratch.created.clear();
        let mut pass = Pass {
            changed: false,
            evictions: self.v4.counters().early_drops + self.v6.counters().early_drops,
        };
        self.lookup_and_handle(now, batch, before, track, (v4, v6), &mut pass);
    }
}

impl<S: SessionService> Conntrack<S> {
    /// Looks the batch up in its family's table (both tables if it holds both families),
    /// then handles the packets in order.
    #[inline(always)]
    fn lookup_and_handle<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        batch: &mut Batch<B>,
        before: u64,
        track: u64,
        (v4, v6): (bool, bool),
        pass: &mut Pass,
    ) {
        let sc = &mut *self.scratch;
        let keys = batch.packets();
        let mut found = 0u64;
        if v4 || !v6 {
            found |= self
                .v4
                .lookup_batch_hashed(keys, track, &mut sc.hits, &mut sc.hashes);
        }
        if v6 {
            let out = if v4 { &mut sc.hits6 } else { &mut sc.hits };
            found |= self
                .v6
                .lookup_batch_hashed(keys, track, out, &mut sc.hashes);
            if v4 {
                for (h, h6) in sc.hits.iter_mut().zip(sc.hits6.iter()) {
                    if h6.is_some() {
                        *h = *h6;
                    }
                }
            }
        }
        // Misses the zone's policy lets open a session will most likely create one: hash
        // their reverse keys and start loading those buckets now, so that the inserts below
        // overlap their memory latency. Misses that cannot create (an ACK flood under
        // `TcpCreate::SynOnly`, a reply-only zone) skip that hash and random bucket load.
        let mut misses = track & !found;
        let mut prepared = 0u64;
        while misses != 0 {
            let i = misses.trailing_zeros() as usize;
            misses &= misses - 1;
            if let (Some(p), Some(r)) = (keys.get(i), sc.reversed.get_mut(i)) {
                let pol =
                    (self.policies.get(p.meta.flow.zone).copied()).unwrap_or(self.default_policy);
                if Self::may_create(&p.meta, &pol) != Ok(true) {
                    continue;
                }
                prepared |= 1 << i;
                *r = match p.meta.flow.family() {
                    Family::V4 => self.v4.prepare_insert(&p.meta.flow),
                    Family::V6 => self.v6.prepare_insert(&p.meta.flow),
                };
            }
        }
        // Hits the fast path took, and of them those in the reply direction: counted once.
        let (mut hits, mut reply_hits) = (0u64, 0u64);
        let mut pending = before;
        while pending != 0 {
            let i = pending.trailing_zeros() as usize;
            pending &= pending - 1;
            let Some(pkt) = batch.get_mut(i) else {
                break;
            };
            if track >> i & 1 == 0 {
                self.other(now, pkt);
                continue;
            }
            if let Some(h) = self.scratch.hits.get(i).copied().flatten()
                && let Some(reply) = self.steady_hit(now, pkt, h)
            {
                hits += 1;
                reply_hits += u64::from(reply);
                self.fragment(now, pkt);
                continue;
            }
            // Read again rather than kept: the fast path keeps its hit in registers.
            let sc = &*self.scratch;
            let hit = sc.hits.get(i).copied().flatten();
            let hash = sc.hashes.get(i).copied().unwrap_or(0);
            let reversed = sc
                .reversed
                .get(i)
                .copied()
                .filter(|_| prepared >> i & 1 != 0);
            self.packet(now, pkt, hit, (hash, reversed), pass);
        }
        self.stats.hits += hits;
        self.stats.reply_hits += reply_hits;
    }
}

impl<S: SessionService> StageControl for Conntrack<S> {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        let name = self.name();
        self.counters.visit(name, f);
        let s = &self.stats;
        for (c, v) in [
            ("lookups", s.lookups),
            ("hits", s.hits),
            ("reply_hits", s.reply_hits),
            ("misses", s.misses),
            ("created", s.created),
            ("untracked", s.untracked),
            ("related", s.related),
            ("refused_full", s.refused_full),
            ("refused_quota", s.refused_quota),
            ("no_session", s.no_session),
            ("invalid", s.invalid),
            ("key_conflict", s.key_conflict),
            ("service_refused", s.service_refused),
            ("service_rejected", s.service_rejected),
            ("refused_passed", s.refused_passed),
            ("reused", s.reused),
            ("renewed", s.renewed),
        ] {
            f(name, c, v);
        }
        table_counters(name, "v4", self.v4.len(), self.v4.counters(), f);
        table_counters(name, "v6", self.v6.len(), self.v6.counters(), f);
        let fr = &self.frags.counters;
        for (c, v) in [
            ("fragments_recorded", fr.recorded),
            ("fragment_hits", fr.hits),
            ("fragment_misses", fr.misses),
            ("fragment_evictions", fr.evictions),
        ] {
            f(name, c, v);
        }
        self.service.visit_counters(f);
    }

    /// The earliest of both tables' and the service's timers.
    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.v4.poll_timeout(),
            self.v6.poll_timeout(),
            self.service.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Expires due sessions of both tables (the service's `on_end` sees each), then the
    /// service's timers, with at most `budget` units of work in total.
    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.timers(now, budget)
    }
}

/// A table's gauges and counters, as `v4_sessions`, `v4_inserted`, ...
fn table_counters(
    stage: &'static str,
    family: &'static str,
    len: usize,
    c: &TableCounters,
    f: &mut dyn FnMut(&'static str, &'static str, u64),
) {
    let v4 = family == "v4";
    let pick = |a: &'static str, b: &'static str| if v4 { a } else { b };
    f(stage, pick("v4_sessions", "v6_sessions"), len as u64);
    for (a, b, v) in [
        ("v4_inserted", "v6_inserted", c.inserted),
        ("v4_early_drops", "v6_early_drops", c.early_drops),
        ("v4_expired", "v6_expired", c.expired),
        ("v4_removed", "v6_removed", c.removed),
        ("v4_refused_full", "v6_refused_full", c.refused_full),
        ("v4_refused_quota", "v6_refused_quota", c.refused_quota),
        ("v4_refused_zones", "v6_refused_zones", c.refused_zones),
        ("v4_journal_lost", "v6_journal_lost", c.journal_lost),
        (
            "v4_orphans_adopted",
            "v6_orphans_adopted",
            c.orphans_adopted,
        ),
    ] {
        f(stage, pick(a, b), v);
    }
}

/// Session services taking over imported sessions ([`Conntrack::import`]), or, as a
/// replica, applied ones ([`Conntrack::apply`], the flag).
struct Adopting<'a, S>(&'a mut S, bool);

impl<S: SessionService> Adopt<S::Value> for Adopting<'_, S> {
    /// Services check their bytes as they take a session over (a refusal, not corruption).
    fn check(&self, _bytes: &[u8]) -> bool {
        true
    }
    fn adopt(&mut self, now: Instant, session: &SessionInfo<()>, bytes: &[u8]) -> Option<S::Value> {
        if self.1 {
            self.0.replicate_value(now, session, bytes)
        } else {
            self.0.import_value(now, session, bytes)
        }
    }
    fn abort(&mut self, now: Instant, session: &SessionInfo<S::Value>) {
        self.0.on_end(now, session, EndCause::Aborted);
    }
    fn end(&mut self, now: Instant, session: &SessionInfo<S::Value>) {
        self.0.on_end(now, session, EndCause::Removed);
    }
    fn evicted(&mut self, now: Instant, session: &SessionInfo<S::Value>) {
        self.0.on_end(now, session, EndCause::EarlyDrop);
    }
}
