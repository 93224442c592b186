//! Session services: network functions that share the connection-tracking stage's one
//! session lookup per packet.
//!
//! See the [module docs](super#session-services) for the contract and an example.

use super::table::SessionInfo;
use crate::flow::FlowKey;
use crate::meta::Direction;
use crate::packet::Packet;
use crate::time::Instant;
use crate::verdict::{DropReason, Verdict};

/// A network function that keeps per-session state inside [`Conntrack`](super::Conntrack)'s
/// sessions instead of a table of its own.
///
/// For every packet the stage does one session lookup, then:
/// - **new flow** (no session, and the zone's policy lets the packet open one):
///   [`on_new`](Self::on_new) decides whether the session is created, its reply key
///   ([`NewFlow::set_reply`]) and the service's part of the value. The stage inserts both keys
///   at once only after every service admitted the flow, so no packet ever sees the session
///   without its translation; a refusal drops the packet with the service's reason and leaves
///   nothing behind. Then [`on_packet`](Self::on_packet) runs for the first packet too.
///   Whenever the flow is not created (the zone's policy does not let this packet open it, a
///   service refused it, the table is full or over the zone quota, its keys conflict),
///   [`on_refused`](Self::on_refused) decides the packet's
///   verdict: a drop with the reason unless every service forwards it without state.
/// - **packet of a session**: [`on_packet`](Self::on_packet) with the packet's direction and
///   the service's part of the value, writable; it may rewrite the packet in place and
///   returns the verdict ([`Verdict::Pass`] to continue).
/// - **related packet** (an ICMP error quoting the session's flow, or a later fragment of one
///   of its packets): [`on_related`](Self::on_related); nothing refreshes, creates or ends a
///   session for it.
/// - **end**: [`on_end`](Self::on_end) once per session the service admitted, whatever ends
///   it (expiry, early drop, removal, or the creation aborted by a later service or a full
///   table), so resources such as NAT ports are released exactly once.
///
/// Tuples `(A, B)` are services too (values `(A::Value, B::Value)`, `A` runs first), so
/// functions compose statically; `()` is the service that does nothing.
pub trait SessionService {
    /// The service's part of each session's value.
    type Value: Copy + Default;

    /// Decides a new flow: `Ok(value)` to admit it (with the reply key left in `new`), or
    /// `Err(reason)` to refuse it (the packet is dropped with `reason`, nothing is created).
    ///
    /// # Errors
    /// The [`DropReason`] the packet is dropped with.
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<Self::Value, DropReason>;

    /// Whether [`Self::check`] does anything. `false` (the default) and the stage never
    /// calls it, at no cost.
    const CHECKS: bool = false;

    /// Whether the service may set a reply key in another zone than the original's (a
    /// cross-zone session, [`NewFlow::set_reply`]). `true` and
    /// [`Conntrack::new`](super::Conntrack::new) builds its tables with
    /// [`TableConfig::cross_zone`](super::TableConfig::cross_zone) (4 bytes more per
    /// session); `false` (the default) saves them, and a cross-zone reply key is refused
    /// as [`DropReason::SessionCrossZone`].
    const CROSS_ZONE: bool = false;

    /// Validates a packet of an existing session **before** the stage moves the session's
    /// TCP state and timeout: `Err(reason)` drops the packet and leaves the session exactly
    /// as it was (a forged RST outside the TCP window must neither close nor refresh it).
    /// Only called when [`Self::CHECKS`] is true, and not for the packet that creates the
    /// session (that one goes to [`Self::on_new`]).
    ///
    /// # Errors
    /// The [`DropReason`] the packet is dropped with.
    #[inline(always)]
    fn check<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut Self::Value,
        pkt: &Packet<B>,
    ) -> Result<(), DropReason> {
        let _ = (now, direction, value, pkt);
        Ok(())
    }

    /// Whether [`Self::renews`] does anything. `false` (the default) and the stage never
    /// calls it, at no cost.
    const RENEWS: bool = false;

    /// Whether this packet of an existing session ends it and opens a new session in its
    /// place, the packet as its first (original direction), decided afresh by every
    /// service: for a decision that no longer holds and whose replacement changes the reply
    /// key, which only an insert chooses (a DNAT load balancer re-hashing a flow whose
    /// backend went down: the new backend answers from another address). Asked before
    /// [`Self::check`], before the session's TCP state moves or its timeout is refreshed,
    /// and only when [`Self::RENEWS`] is true. The old session ends with
    /// [`EndCause::Renewed`] (counted `renewed`); if the packet may not open the new one
    /// (the zone's policy, a service's refusal, a full table), it goes to
    /// [`Self::on_refused`] like any packet without a session.
    ///
    /// A port forward whose target port the operator changes: a flow forwarded to the old
    /// port is moved to the new one on its next packet, and the answers from the new port
    /// find its session:
    ///
    /// ```
    /// use nf_core::conntrack::{Conntrack, ConntrackConfig, NewFlow, SessionService};
    /// use nf_core::wire::Frame;
    /// use nf_core::{Batch, Direction, DropReason, Instant, Packet, ParseStage, SessionRef};
    /// use nf_core::{Stage, StageExt};
    ///
    /// struct Forward { to: u16 }
    ///
    /// impl SessionService for Forward {
    ///     type Value = u16; // the port this session forwards to
    ///     const RENEWS: bool = true;
    ///
    ///     fn renews<B: AsRef<[u8]>>(&self, _: Instant, d: Direction, to: &u16, _: &Packet<B>)
    ///         -> bool
    ///     {
    ///         d == Direction::Original && *to != self.to
    ///     }
    ///
    ///     fn on_new<B: AsRef<[u8]>>(&mut self, _: Instant, _: &Packet<B>, new: &mut NewFlow<'_>)
    ///         -> Result<u16, DropReason>
    ///     {
    ///         let mut reply = *new.reply();
    ///         reply.src_port = self.to; // answers come from the target port
    ///         new.set_reply(reply).map_err(|_| DropReason::ServiceRefused)?;
    ///         Ok(self.to)
    ///     }
    ///     // (on_packet rewrites the ports, as in the module's example)
    /// }
    ///
    /// fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Packet<Vec<u8>> {
    ///     let frame = Frame::ipv4(src, dst).udp(sport, dport).to_vec().unwrap();
    ///     Packet::with_headroom(&frame, 64)
    /// }
    ///
    /// /// The frames as one batch: each one's session and direction.
    /// fn run(p: &mut impl Stage<Vec<u8>>, frames: Vec<Packet<Vec<u8>>>)
    ///     -> Vec<(Option<SessionRef>, Direction)>
    /// {
    ///     let mut batch = Batch::new();
    ///     frames.into_iter().for_each(|f| { batch.push(f).ok(); });
    ///     p.process(Instant::from_nanos(1_000_000_000), &mut batch);
    ///     batch.packets().iter().map(|p| (p.meta.session, p.meta.direction)).collect()
    /// }
    ///
    /// let ct = Conntrack::new(ConntrackConfig::new(*b"operator secret!"), Forward { to: 5353 })?;
    /// let mut pipeline = ParseStage::default().then(ct);
    /// let query = || udp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 53);
    /// let first = run(&mut pipeline, vec![query()]);
    /// pipeline.second.service_mut().to = 5354;
    /// // The same flow's next query renews its session; the new port's answer finds it.
    /// let answer = udp([10, 0, 0, 2], [10, 0, 0, 1], 5354, 40000);
    /// let next = run(&mut pipeline, vec![query(), answer]);
    /// assert_ne!(next[0].0, first[0].0);
    /// assert_eq!(next[1], (next[0].0, Direction::Reply));
    /// assert_eq!(pipeline.second.stats().renewed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline(always)]
    fn renews<B: AsRef<[u8]>>(
        &self,
        now: Instant,
        direction: Direction,
        value: &Self::Value,
        pkt: &Packet<B>,
    ) -> bool {
        let _ = (now, direction, value, pkt);
        false
    }

    /// One packet of a session (the first one included), travelling `direction`.
    #[inline(always)]
    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut Self::Value,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let _ = (now, direction, value, pkt);
        Verdict::Pass
    }

    /// A packet related to a session (ICMP error quoting it, later fragment), travelling
    /// `direction`. The session is not refreshed.
    #[inline]
    fn on_related<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut Self::Value,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let _ = (now, direction, value, pkt);
        Verdict::Pass
    }

    /// A packet whose new flow was not created (`reason`: the zone's policy does not let
    /// this packet open a session, [`DropReason::NoSession`]; the table refused the insert,
    /// full or over the zone quota; a service refused the flow; the keys conflict). The
    /// returned verdict is the packet's: the default keeps the drop with `reason`; a service
    /// that can forward without state (a load balancer hashing the flow) may rewrite the
    /// packet and return [`Verdict::Pass`]. No session exists for the packet.
    ///
    /// An ICMP error whose quoted packet names no session comes here too, with
    /// [`DropReason::RelatedNoSession`] (its quoted key: [`quoted_key`](super::quoted_key)):
    /// a service that serves flows without sessions (security groups' untracked flows) may
    /// pass it.
    #[inline]
    fn on_refused<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        reason: DropReason,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let _ = (now, pkt);
        Verdict::Drop(reason)
    }

    /// `false` for a service that is not there: an [`Option`] that is `None`, or `()`. A
    /// pair with an absent part answers [`on_refused`](Self::on_refused) as its other part
    /// alone would (an absent part has no packet to keep from passing), so `(Option<A>,
    /// Option<B>)` with only `B` present forwards what `B` alone forwards. The default,
    /// `true`, is every real service.
    #[inline]
    fn is_present(&self) -> bool {
        true
    }

    /// `false` for a service with no say over packets without a session: one that only
    /// checks sessions' packets (like [`TcpWindow`](super::TcpWindow), which has no window
    /// to check them against). In a pair the other part then answers
    /// [`on_refused`](Self::on_refused) alone, as for a part that is not there, so a load
    /// balancer's stateless forwarding is not undone by a window tracker beside it; alone,
    /// its own `on_refused` still decides. The default, `true`: the service may keep a
    /// packet of a flow it has no state for from passing (every pair part must pass it).
    #[inline]
    fn judges_without_session(&self) -> bool {
        true
    }

    /// A session this service admitted has ended (or was never created after all).
    #[inline]
    fn on_end(&mut self, now: Instant, session: &SessionInfo<Self::Value>, cause: EndCause) {
        let _ = (now, session, cause);
    }

    /// Calls `f(stage, counter, value)` for the service's own counters (stage: the
    /// service's name).
    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        let _ = f;
    }

    /// When [`Self::handle_timeout`] next has work.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Runs the service's due timers with at most `budget` units of work; returns the work.
    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        let _ = (now, budget);
        0
    }

    /// Bytes of this service's part of a session when sessions move between nodes
    /// ([`Conntrack::export`](super::Conntrack::export) /
    /// [`Conntrack::import`](super::Conntrack::import)); `None`, the default, when its
    /// sessions cannot move (then neither can those of a stage it is part of).
    const EXPORT_LEN: Option<usize> = None;

    /// Writes the portable form of `value`, exactly [`Self::EXPORT_LEN`] bytes, to the front
    /// of `out`: what another node needs to carry the session on (identities such as a
    /// backend's, never this instance's indices).
    fn export_value(&self, value: &Self::Value, out: &mut [u8]) {
        let _ = (value, out);
    }

    /// Takes over a session another node exported: reads what [`Self::export_value`] wrote
    /// there, takes here what the session holds (a backend's count of sessions, a public
    /// port) and returns the value, or `None` when this node cannot carry the session (then
    /// it is not installed, counted [`ImportReport::refused`](super::ImportReport)). A
    /// session taken over and then not installed after all (a key already present, the
    /// table full) gets [`Self::on_end`] with [`EndCause::Aborted`]; once installed, it ends
    /// as every other session does. `session.value` is `()`: the value is being made.
    fn import_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<Self::Value> {
        let _ = (now, session, bytes);
        None
    }

    /// Takes a session over as a replica ([`Conntrack::apply`](super::Conntrack::apply)):
    /// the bytes are those of the primary's last change of the session, not of its last
    /// packet, so a part that moves with every packet (a TCP window) is stale by the time
    /// the replica carries the session on. The default is [`Self::import_value`], right for
    /// parts that change only with the session's journaled changes (a backend, a
    /// translation, a verdict); a service whose part moves with traffic relearns it here
    /// ([`TcpWindow`](super::TcpWindow) picks both sides up again from their next segments).
    fn replicate_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<Self::Value> {
        self.import_value(now, session, bytes)
    }
}

/// Why a session ended, for [`SessionService::on_end`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndCause {
    /// Its timeout passed.
    Expired,
    /// Evicted by its own zone's early drop to admit a new session.
    EarlyDrop,
    /// Removed by the caller.
    Removed,
    /// A new TCP connection reused its ports: its SYN met this session closed (`TimeWait` or
    /// `Closed`), so the session ended and the SYN opened a new one, decided afresh.
    Reused,
    /// Never created: a later service refused the flow or the table refused the insert.
    Aborted,
    /// A service asked for the session to be replaced ([`SessionService::renews`]): its
    /// packet opens a new session, decided afresh.
    Renewed,
}

/// A new flow being decided by [`SessionService::on_new`]: its keys, and whether a candidate
/// reply key is free.
pub struct NewFlow<'a> {
    original: FlowKey,
    reply: FlowKey,
    probe: &'a dyn KeyProbe,
    one_sided: bool,
}

/// Why [`NewFlow::set_reply`] refused a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyKeyError {
    /// The key's family or protocol differs from the original key's.
    Mismatch,
    /// The key equals the original key (zone included).
    SameAsOriginal,
}

impl core::fmt::Display for ReplyKeyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Mismatch => "reply key of another family or protocol",
            Self::SameAsOriginal => "reply key equals the original key",
        })
    }
}

impl core::error::Error for ReplyKeyError {}

/// Asks the session table whether a key indexes a live session (sealed).
pub(super) trait KeyProbe {
    fn indexed(&self, key: &FlowKey) -> bool;
}

impl<'a> NewFlow<'a> {
    pub(super) fn new(original: FlowKey, probe: &'a dyn KeyProbe) -> Self {
        Self {
            original,
            reply: original.reversed(),
            probe,
            one_sided: false,
        }
    }

    /// The key of the packet opening the flow.
    #[inline]
    pub fn original(&self) -> &FlowKey {
        &self.original
    }

    /// The key replies will carry: [`FlowKey::reversed`] of the original unless a service
    /// set another.
    #[inline]
    pub fn reply(&self) -> &FlowKey {
        &self.reply
    }

    /// Sets the reply key (NAT: the translated tuple; DNAT load balancing: the backend's).
    /// Use [`Self::is_free`] to pick one no other session holds.
    ///
    /// The key may be in another zone than the original (a cross-zone session: a private
    /// endpoint whose provider answers in its own address space): replies are then found by
    /// lookups in that zone only, and the service moves each packet between the zones by
    /// setting [`Meta::zone`](crate::Meta::zone) in
    /// [`on_packet`](SessionService::on_packet).
    ///
    /// # Errors
    /// [`ReplyKeyError`]; the reply key is unchanged.
    pub fn set_reply(&mut self, reply: FlowKey) -> Result<(), ReplyKeyError> {
        let o = &self.original;
        if reply.family() != o.family() || reply.proto != o.proto {
            return Err(ReplyKeyError::Mismatch);
        }
        if reply == *o {
            return Err(ReplyKeyError::SameAsOriginal);
        }
        self.reply = reply;
        Ok(())
    }

    /// Marks the flow one-sided: its replies never pass this stage (a load balancer in
    /// direct server return, asymmetric routing). A TCP session then starts as if the
    /// responder's SYN+ACK had been seen ([`SessionState::TcpSynRecv`]), so the
    /// originator's ACK establishes it (see [`ZonePolicy::one_sided`], the same for a whole
    /// zone).
    ///
    /// [`SessionState::TcpSynRecv`]: super::SessionState::TcpSynRecv
    /// [`ZonePolicy::one_sided`]: super::ZonePolicy::one_sided
    #[inline]
    pub fn set_one_sided(&mut self) {
        self.one_sided = true;
    }

    /// True once a service marked the flow one-sided ([`Self::set_one_sided`]).
    #[inline]
    pub fn is_one_sided(&self) -> bool {
        self.one_sided
    }

    /// True if `key` can be this flow's reply key: no live session holds it and it is not
    /// the original key. One table probe (the way a NAT looks for a free tuple).
    #[inline]
    pub fn is_free(&self, key: &FlowKey) -> bool {
        *key != self.original && !self.probe.indexed(key)
    }
}

/// `()`: the service that admits every flow and keeps nothing.
impl SessionService for () {
    type Value = ();

    #[inline(always)]
    fn is_present(&self) -> bool {
        false
    }

    #[inline(always)]
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        _new: &mut NewFlow<'_>,
    ) -> Result<(), DropReason> {
        Ok(())
    }

    const EXPORT_LEN: Option<usize> = Some(0);

    fn import_value(&mut self, _: Instant, _: &SessionInfo<()>, _: &[u8]) -> Option<()> {
        Some(())
    }
}

/// `Option<S>`: `S` when present, else the service that admits every flow and keeps nothing
/// (its value stays at `S::Value::default()`), so a pipeline chosen at run time (a command
/// line, a config file) composes `(Option<A>, Option<B>)` with static dispatch. An absent
/// one is not [`is_present`](SessionService::is_present): in a pair, the present part alone
/// decides the fate of a refused packet.
impl<S: SessionService> SessionService for Option<S> {
    type Value = S::Value;

    const CHECKS: bool = S::CHECKS;
    const CROSS_ZONE: bool = S::CROSS_ZONE;
    const RENEWS: bool = S::RENEWS;

    #[inline(always)]
    fn is_present(&self) -> bool {
        self.as_ref().is_some_and(S::is_present)
    }

    #[inline(always)]
    fn judges_without_session(&self) -> bool {
        self.as_ref().is_none_or(S::judges_without_session)
    }

    #[inline(always)]
    fn renews<B: AsRef<[u8]>>(
        &self,
        now: Instant,
        direction: Direction,
        value: &S::Value,
        pkt: &Packet<B>,
    ) -> bool {
        self.as_ref()
            .is_some_and(|s| s.renews(now, direction, value, pkt))
    }

    #[inline]
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<S::Value, DropReason> {
        self.as_mut()
            .map_or(Ok(S::Value::default()), |s| s.on_new(now, pkt, new))
    }

    #[inline(always)]
    fn check<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut S::Value,
        pkt: &Packet<B>,
    ) -> Result<(), DropReason> {
        self.as_mut()
            .map_or(Ok(()), |s| s.check(now, direction, value, pkt))
    }

    #[inline(always)]
    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut S::Value,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        self.as_mut()
            .map_or(Verdict::Pass, |s| s.on_packet(now, direction, value, pkt))
    }

    #[inline]
    fn on_related<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut S::Value,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        self.as_mut()
            .map_or(Verdict::Pass, |s| s.on_related(now, direction, value, pkt))
    }

    #[inline]
    fn on_refused<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        reason: DropReason,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        self.as_mut()
            .map_or(Verdict::Drop(reason), |s| s.on_refused(now, reason, pkt))
    }

    fn on_end(&mut self, now: Instant, session: &SessionInfo<S::Value>, cause: EndCause) {
        if let Some(s) = self {
            s.on_end(now, session, cause);
        }
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        if let Some(s) = self {
            s.visit_counters(f);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.as_ref().and_then(S::poll_timeout)
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.as_mut().map_or(0, |s| s.handle_timeout(now, budget))
    }

    const EXPORT_LEN: Option<usize> = S::EXPORT_LEN;

    /// An absent service writes zeros.
    fn export_value(&self, value: &S::Value, out: &mut [u8]) {
        match self {
            Some(s) => s.export_value(value, out),
            None => {
                let n = S::EXPORT_LEN.unwrap_or(0).min(out.len());
                out.get_mut(..n).into_iter().flatten().for_each(|b| *b = 0);
            }
        }
    }

    /// An absent service takes every session over with the default value.
    fn import_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<S::Value> {
        match self {
            Some(s) => s.import_value(now, session, bytes),
            None => Some(S::Value::default()),
        }
    }

    fn replicate_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<S::Value> {
        match self {
            Some(s) => s.replicate_value(now, session, bytes),
            None => Some(S::Value::default()),
        }
    }
}

/// A session's info with another value (for handing each service its own part).
#[inline]
pub(super) fn with_value<V, W>(s: &SessionInfo<V>, value: W) -> SessionInfo<W> {
    SessionInfo {
        original: s.original,
        reply: s.reply,
        state: s.state,
        established: s.established,
        deadline: s.deadline,
        value,
        origin: s.origin,
    }
}

/// Two services, `A` first: the flow is admitted only if both admit it (if `B` refuses,
/// `A` is told the creation was [`EndCause::Aborted`]); packets go to `A`, then to `B` while
/// the verdict is [`Verdict::Pass`].
///
/// The session's value is both values, `(A::Value, S::Value)`, padded as Rust lays out a
/// pair. An IPv4 session record is one 64-byte cache line with up to 16 bytes of value and
/// two lines beyond: keep the pair within 16 (nf-nat's 15-byte, byte-aligned `Translation`
/// with nf-policy's 1-byte `SgDecision` is exactly 16; measured by nf-bench's `pipeline`
/// scenario, two lines per record cost 13–20 ns per packet at 1M sessions).
impl<A: SessionService, S: SessionService> SessionService for (A, S) {
    type Value = (A::Value, S::Value);

    #[inline]
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<Self::Value, DropReason> {
        let a = self.0.on_new(now, pkt, new)?;
        match self.1.on_new(now, pkt, new) {
            Ok(b) => Ok((a, b)),
            Err(e) => {
                let info = aborted(now, new.original, new.reply, a);
                self.0.on_end(now, &info, EndCause::Aborted);
                Err(e)
            }
        }
    }

    const CHECKS: bool = A::CHECKS || S::CHECKS;
    const CROSS_ZONE: bool = A::CROSS_ZONE || S::CROSS_ZONE;
    const RENEWS: bool = A::RENEWS || S::RENEWS;

    #[inline(always)]
    fn renews<B: AsRef<[u8]>>(
        &self,
        now: Instant,
        direction: Direction,
        value: &Self::Value,
        pkt: &Packet<B>,
    ) -> bool {
        (A::RENEWS && self.0.renews(now, direction, &value.0, pkt))
            || (S::RENEWS && self.1.renews(now, direction, &value.1, pkt))
    }

    #[inline(always)]
    fn check<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut Self::Value,
        pkt: &Packet<B>,
    ) -> Result<(), DropReason> {
        if A::CHECKS {
            self.0.check(now, direction, &mut value.0, pkt)?;
        }
        if S::CHECKS {
            self.1.check(now, direction, &mut value.1, pkt)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut Self::Value,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        match self.0.on_packet(now, direction, &mut value.0, pkt) {
            Verdict::Pass => self.1.on_packet(now, direction, &mut value.1, pkt),
            v => v,
        }
    }

    #[inline]
    fn on_related<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut Self::Value,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        match self.0.on_related(now, direction, &mut value.0, pkt) {
            Verdict::Pass => self.1.on_related(now, direction, &mut value.1, pkt),
            v => v,
        }
    }

    /// The packet passes only if both pass it (`A` first); a part that is not there
    /// ([`is_present`](SessionService::is_present)), or has no say without a session
    /// ([`judges_without_session`](SessionService::judges_without_session)) while the
    /// other has, leaves the answer to the other.
    #[inline]
    fn on_refused<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        reason: DropReason,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let judges_a = self.0.is_present() && self.0.judges_without_session();
        let judges_b = self.1.is_present() && self.1.judges_without_session();
        if judges_a != judges_b {
            return if judges_a {
                self.0.on_refused(now, reason, pkt)
            } else {
                self.1.on_refused(now, reason, pkt)
            };
        }
        if !self.0.is_present() {
            return self.1.on_refused(now, reason, pkt);
        }
        if !self.1.is_present() {
            return self.0.on_refused(now, reason, pkt);
        }
        match self.0.on_refused(now, reason, pkt) {
            Verdict::Pass => self.1.on_refused(now, reason, pkt),
            v => v,
        }
    }

    fn is_present(&self) -> bool {
        self.0.is_present() || self.1.is_present()
    }

    fn judges_without_session(&self) -> bool {
        (self.0.is_present() && self.0.judges_without_session())
            || (self.1.is_present() && self.1.judges_without_session())
    }

    fn on_end(&mut self, now: Instant, session: &SessionInfo<Self::Value>, cause: EndCause) {
        self.0
            .on_end(now, &with_value(session, session.value.0), cause);
        self.1
            .on_end(now, &with_value(session, session.value.1), cause);
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.0.visit_counters(f);
        self.1.visit_counters(f);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.0.poll_timeout(), self.1.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        let a = self.0.handle_timeout(now, budget);
        a + self.1.handle_timeout(now, budget.saturating_sub(a))
    }

    /// `A`'s bytes, then `B`'s; `None` unless both parts can move.
    const EXPORT_LEN: Option<usize> = match (A::EXPORT_LEN, S::EXPORT_LEN) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };

    fn export_value(&self, value: &Self::Value, out: &mut [u8]) {
        let a = A::EXPORT_LEN.unwrap_or(0).min(out.len());
        let (first, rest) = out.split_at_mut(a);
        self.0.export_value(&value.0, first);
        self.1.export_value(&value.1, rest);
    }

    /// Both parts take the session over, `A` first; if `B` declines, `A` is told the
    /// session was [`EndCause::Aborted`].
    fn import_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<Self::Value> {
        take_over_pair(self, now, session, bytes, false)
    }

    fn replicate_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<Self::Value> {
        take_over_pair(self, now, session, bytes, true)
    }
}

/// A pair's [`SessionService::import_value`] (or, `replica`, its
/// [`SessionService::replicate_value`]): each part takes its bytes over, `A` first; if `S`
/// declines, `A`'s part is aborted.
fn take_over_pair<A: SessionService, S: SessionService>(
    (a, s): &mut (A, S),
    now: Instant,
    session: &SessionInfo<()>,
    bytes: &[u8],
    replica: bool,
) -> Option<(A::Value, S::Value)> {
    let (first, rest) = bytes.split_at_checked(A::EXPORT_LEN?)?;
    let va = if replica {
        a.replicate_value(now, session, first)?
    } else {
        a.import_value(now, session, first)?
    };
    let vs = if replica {
        s.replicate_value(now, session, rest)
    } else {
        s.import_value(now, session, rest)
    };
    match vs {
        Some(vs) => Some((va, vs)),
        None => {
            a.on_end(now, &with_value(session, va), EndCause::Aborted);
            None
        }
    }
}

/// The info handed to [`SessionService::on_end`] for a flow that was decided but never
/// created.
pub(super) fn aborted<V>(
    now: Instant,
    original: FlowKey,
    reply: FlowKey,
    value: V,
) -> SessionInfo<V> {
    SessionInfo {
        original,
        reply,
        state: super::SessionState::initial(original.proto, 0),
        established: false,
        deadline: now,
        value,
        origin: 0,
    }
}
