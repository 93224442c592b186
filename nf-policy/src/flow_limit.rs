//! Per-zone new-flow rate limits that connection tracking consults: [`ZoneNewFlowLimit`], a
//! [`SessionService`] wrapper.
//!
//! A cloud host meters how fast each interface may open tracked connections, not only how
//! many it may hold: AWS counts the packets it drops for the latter as
//! `conntrack_allowance_exceeded` (nf's count limit is conntrack's per-zone quota,
//! [`DropReason::ZoneQuotaExceeded`]). [`ZoneNewFlowLimit<S>`] adds the rate: a [`TokenBucket`] per
//! zone, consulted when conntrack is about to create a session, before the wrapped service
//! `S` decides the flow:
//!
//! - a zone with a limit and no token left refuses the flow with
//!   [`DropReason::NewFlowRateExceeded`] without asking `S` (so a flood costs no NAT port
//!   allocation, for instance); then `S::on_refused` decides the packet as for any refusal:
//!   a load balancer may serve it statelessly, security groups pass it if it is untracked,
//!   everything else drops it, and each such drop counts as `conntrack_allowance_exceeded`
//!   (in total and per zone);
//! - otherwise `S` decides; a token is taken only when `S` admits the flow, so flows `S`
//!   refuses (security groups' denied or untracked flows) cost no allowance;
//! - packets of existing sessions never see the limit: every other hook is `S`'s own, at no
//!   cost.
//!
//! Zones without a limit are not limited (buckets are made by [`ZoneNewFlowLimit::set_zone_limit`]
//! on the control path, never on the packet path). A flow admitted by `S` whose insert then
//! fails (a full table) has used its token. Time is the `now` conntrack passes in.
//!
//! ```
//! use nf_core::conntrack::{Conntrack, ConntrackConfig};
//! use nf_core::wire::Frame;
//! use nf_core::{Batch, DropReason, Instant, Packet, ParseStage, Stage, StageExt, Verdict, ZoneId};
//! use nf_policy::{BucketConfig, ZoneNewFlowLimit};
//!
//! // Zone 0 may open 100 flows a second, in bursts of at most 2.
//! let now = Instant::from_nanos(1_000_000_000);
//! let mut limit = ZoneNewFlowLimit::new(());
//! limit.set_zone_limit(ZoneId(0), BucketConfig::new(100, 2), now);
//! let ct = Conntrack::new(ConntrackConfig::new(*b"operator secret!"), limit)?;
//! let mut pipeline = ParseStage::default().then(ct);
//! let mut batch = Batch::new();
//! for port in 1000..1003 {
//!     let frame = Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(port, 53).to_vec()?;
//!     batch.push(Packet::with_headroom(&frame, 64)).ok();
//! }
//! pipeline.process(now, &mut batch);
//! let v: Vec<Verdict> = batch.packets().iter().map(|p| p.meta.verdict).collect();
//! assert_eq!(v, [Verdict::Pass, Verdict::Pass, Verdict::Drop(DropReason::NewFlowRateExceeded)]);
//! assert_eq!(pipeline.second.service().exceeded(ZoneId(0)), Some(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::meter::{BucketConfig, TokenBucket};
use nf_core::conntrack::{EndCause, NewFlow, SessionInfo, SessionService};
use nf_core::{Direction, DropReason, Instant, Packet, Verdict, ZoneId, ZoneMap};

/// One zone's allowance.
#[derive(Clone, Copy, Debug)]
struct ZoneLimit {
    bucket: TokenBucket,
    exceeded: u64,
}

/// Session service `S` with a per-zone new-flow rate limit (see the [module docs](self)).
#[derive(Debug)]
pub struct ZoneNewFlowLimit<S> {
    inner: S,
    zones: ZoneMap<ZoneLimit>,
    exceeded: u64,
}

impl<S> ZoneNewFlowLimit<S> {
    /// `inner` with no limits yet.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            zones: ZoneMap::new(),
            exceeded: 0,
        }
    }

    /// Limits `zone` to `config` new flows per second and bursts (a full bucket at `now`);
    /// replaces the zone's earlier limit, keeping its count.
    pub fn set_zone_limit(&mut self, zone: ZoneId, config: BucketConfig, now: Instant) {
        let bucket = TokenBucket::new(config, now);
        match self.zones.get_mut(zone) {
            Some(z) => z.bucket = bucket,
            None => {
                self.zones.insert(
                    zone,
                    ZoneLimit {
                        bucket,
                        exceeded: 0,
                    },
                );
            }
        }
    }

    /// Lifts `zone`'s limit.
    pub fn remove_zone_limit(&mut self, zone: ZoneId) {
        self.zones.remove(zone);
    }

    /// Packets of `zone` dropped for its new-flow rate, `None` if it has no limit.
    pub fn exceeded(&self, zone: ZoneId) -> Option<u64> {
        self.zones.get(zone).map(|z| z.exceeded)
    }

    /// Packets dropped for their zone's new-flow rate, all zones.
    pub fn exceeded_total(&self) -> u64 {
        self.exceeded
    }

    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, writable (its configuration).
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: SessionService> SessionService for ZoneNewFlowLimit<S> {
    type Value = S::Value;

    const CHECKS: bool = S::CHECKS;
    const CROSS_ZONE: bool = S::CROSS_ZONE;
    const RENEWS: bool = S::RENEWS;

    #[inline]
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<S::Value, DropReason> {
        let Some(z) = self.zones.get_mut(pkt.meta.flow.zone) else {
            return self.inner.on_new(now, pkt, new);
        };
        z.bucket.refill(now);
        if !z.bucket.has(1) {
            return Err(DropReason::NewFlowRateExceeded);
        }
        let value = self.inner.on_new(now, pkt, new)?;
        z.bucket.take(1);
        Ok(value)
    }

    #[inline(always)]
    fn renews<B: AsRef<[u8]>>(
        &self,
        now: Instant,
        direction: Direction,
        value: &S::Value,
        pkt: &Packet<B>,
    ) -> bool {
        self.inner.renews(now, direction, value, pkt)
    }

    #[inline(always)]
    fn check<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut S::Value,
        pkt: &Packet<B>,
    ) -> Result<(), DropReason> {
        self.inner.check(now, direction, value, pkt)
    }

    #[inline(always)]
    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut S::Value,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        self.inner.on_packet(now, direction, value, pkt)
    }

    #[inline]
    fn on_related<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        direction: Direction,
        value: &mut S::Value,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        self.inner.on_related(now, direction, value, pkt)
    }

    #[inline]
    fn on_refused<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        reason: DropReason,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let verdict = self.inner.on_refused(now, reason, pkt);
        if reason == DropReason::NewFlowRateExceeded && !verdict.is_pass() {
            self.exceeded += 1;
            if let Some(z) = self.zones.get_mut(pkt.meta.flow.zone) {
                z.exceeded += 1;
            }
        }
        verdict
    }

    fn on_end(&mut self, now: Instant, session: &SessionInfo<S::Value>, cause: EndCause) {
        self.inner.on_end(now, session, cause);
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        f(
            "new_flow_limit",
            "conntrack_allowance_exceeded",
            self.exceeded,
        );
        self.inner.visit_counters(f);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.inner.handle_timeout(now, budget)
    }

    const EXPORT_LEN: Option<usize> = S::EXPORT_LEN;

    fn export_value(&self, value: &S::Value, out: &mut [u8]) {
        self.inner.export_value(value, out);
    }

    /// A session taken over from another node is not a new flow: it takes no token.
    fn import_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<S::Value> {
        self.inner.import_value(now, session, bytes)
    }
}
