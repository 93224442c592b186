//! The [`Stage`] trait and pipeline composition ([`Chain`], [`StageLoop`], counters).

use crate::batch::Batch;
use crate::packet::Packet;
use crate::time::Instant;
use crate::verdict::{DropCounters, Verdict};

/// One step of a packet pipeline, for buffers of type `B`.
///
/// The [`Stage`] trait, zero-cost pipeline composition, per-stage counters, timers and
/// headroom.
///
/// A stage is a struct with one hot method, [`Stage::process`], called once per batch with
/// the current time. It reads and rewrites packets in place, sets verdicts, and skips packets
/// that are no longer at [`Verdict::Pass`]. Stages compose with [`StageExt::then`] into a
/// [`Chain`], a plain struct: the compiler sees the whole pipeline and inlines across stages,
/// with no dynamic dispatch on the hot path.
///
/// Everything about a stage that does not depend on the buffer type lives in
/// [`StageControl`]: its name, every counter (one visitor for the whole pipeline), its timers
/// (one `poll_timeout` / `handle_timeout` for the whole pipeline) and the headroom it needs.
/// A [`Chain`] forwards all of them, so an I/O loop drives a pipeline through the pipeline
/// value alone, whatever its shape.
///
/// ```
/// use nf_core::{Batch, Instant, Packet, ParseStage, Stage, StageControl, StageExt};
/// let mut pipeline = ParseStage::default().then(ParseStage::default());
/// let mut batch = Batch::new();
/// batch.push(Packet::new(vec![0u8; 10], 0, 10)?).ok();
/// pipeline.process(Instant::ZERO, &mut batch);
/// pipeline.visit_counters(&mut |stage, counter, value| println!("{stage} {counter} {value}"));
/// // Timers of every stage, driven through the pipeline value.
/// let now = Instant::ZERO;
/// while pipeline.poll_timeout().is_some_and(|t| t <= now) {
///     pipeline.handle_timeout(now, 1024);
/// }
/// # Ok::<(), nf_core::PacketError>(())
/// ```
///
/// # Writing a stage
///
/// Every stage walks its batch and counts outcomes the same way, through [`StageLoop`]: it
/// gives the helper its counters ([`StageLoop::counters_mut`]) and either a per-packet
/// closure ([`StageLoop::each_pending`]: called for each packet still at
/// [`Verdict::Pass`], returns that packet's new verdict) or, for a stage that works on the
/// whole batch at once (hash every key, prefetch, look up), a batch closure
/// ([`StageLoop::run`]). Both bump [`StageCounters`] once per batch with the same
/// bookkeeping as [`StageCounters::account`], so counters mean the same in every stage.
/// The closure gets the stage back as its first argument, so it may call the stage's own
/// `&mut self` methods. Stage-specific counters go into
/// [`StageControl::visit_counters`] after the common ones.
///
/// ```
/// use nf_core::{Batch, DropReason, Instant, Packet, Stage, StageControl, StageLoop, Verdict};
/// use nf_core::StageCounters;
///
/// /// Drops frames longer than `max`.
/// struct MaxLen { max: usize, counters: StageCounters, longest: u64 }
///
/// impl StageLoop for MaxLen {
///     fn counters_mut(&mut self) -> &mut StageCounters { &mut self.counters }
/// }
/// impl<B: AsRef<[u8]>> Stage<B> for MaxLen {
///     fn process(&mut self, _now: Instant, batch: &mut Batch<B>) {
///         self.each_pending(batch, #[inline(always)] |s, _i, pkt| {
///             s.longest = s.longest.max(pkt.len() as u64);
///             if pkt.len() > s.max { Verdict::Drop(DropReason::TooBig) } else { Verdict::Pass }
///         });
///     }
/// }
/// impl StageControl for MaxLen {
///     fn name(&self) -> &'static str { "max_len" }
///     fn counters(&self) -> &StageCounters { &self.counters }
///     fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
///         self.counters().visit(self.name(), f);
///         f(self.name(), "longest", self.longest);
///     }
/// }
///
/// let mut stage = MaxLen { max: 16, counters: StageCounters::default(), longest: 0 };
/// let mut batch = Batch::new();
/// batch.push(Packet::new(vec![0u8; 10], 0, 10)?).ok();
/// batch.push(Packet::new(vec![0u8; 20], 0, 20)?).ok();
/// stage.process(Instant::ZERO, &mut batch);
/// assert_eq!(batch.pending_mask(), 0b01);
/// assert_eq!(stage.counters().drops.count(DropReason::TooBig), 1);
/// # Ok::<(), nf_core::PacketError>(())
/// ```
pub trait Stage<B>: StageControl {
    /// Processes every packet of `batch` still at [`Verdict::Pass`]. Does no I/O, reads no
    /// clock (`now` is the caller's), and does bounded work per packet.
    fn process(&mut self, now: Instant, batch: &mut Batch<B>);
}

/// The buffer-independent side of a stage: name, counters, timers, headroom.
///
/// Call order for timers: whenever [`poll_timeout`](Self::poll_timeout) is at or before the
/// caller's `now`, call [`handle_timeout`](Self::handle_timeout) with a work budget; it is
/// idempotent for the same `now` and does at most `budget` units of work.
pub trait StageControl {
    /// A short stable name for counters (`"parse"`, `"conntrack"`, ...).
    fn name(&self) -> &'static str;

    /// The counters every stage keeps.
    fn counters(&self) -> &StageCounters;

    /// Calls `f(stage, counter, value)` for every counter of this stage and, for a
    /// [`Chain`], of every stage in it, in pipeline order: first the common ones
    /// ([`StageCounters::visit`]), then the stage's own. Names are stable `snake_case`.
    /// Cold path.
    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.counters().visit(self.name(), f);
    }

    /// When [`Self::handle_timeout`] next has work (`None`: no timers pending).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Runs due timers with at most `budget` units of work; returns the work done.
    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        let _ = (now, budget);
        0
    }

    /// Bytes this stage may push in front of a frame (encapsulation); a caller gives every
    /// buffer at least this much headroom, or such packets drop as `no_headroom`.
    fn headroom(&self) -> usize {
        0
    }

    /// Packets this stage may add to a batch (packets it held and now gives back, e.g.
    /// [`FragmentReorder`](crate::conntrack::FragmentReorder)); a caller that leaves this
    /// many free in every batch gets them back without delay.
    fn batch_room(&self) -> usize {
        0
    }
}

/// The one way a stage walks its batch and counts outcomes (see the module docs).
///
/// Implement [`counters_mut`](Self::counters_mut); call [`each_pending`](Self::each_pending)
/// or [`run`](Self::run) exactly once from [`Stage::process`].
pub trait StageLoop {
    /// The stage's counters, writable (the same ones [`StageControl::counters`] returns).
    fn counters_mut(&mut self) -> &mut StageCounters;

    /// Calls `f(self, i, pkt)` for every packet `i` of `batch` still at [`Verdict::Pass`],
    /// in order; the verdict `f` returns becomes the packet's (`f` leaves
    /// `pkt.meta.verdict` alone). Then accounts the batch like [`StageCounters::account`]
    /// would, counting each outcome as it is returned instead of walking the batch again.
    ///
    /// Mark a hot stage's closure `#[inline(always)]`: LLVM may otherwise keep a large
    /// closure out of line and pay a call per packet (measured on the parse stage).
    #[inline(always)]
    fn each_pending<B>(
        &mut self,
        batch: &mut Batch<B>,
        mut f: impl FnMut(&mut Self, usize, &mut Packet<B>) -> Verdict,
    ) where
        Self: Sized,
    {
        let mut live = 0u64;
        for (i, pkt) in batch.packets_mut().iter_mut().enumerate() {
            if !pkt.meta.verdict.is_pass() {
                continue;
            }
            live += 1;
            let v = f(self, i, pkt);
            if !v.is_pass() {
                pkt.meta.verdict = v;
                self.counters_mut().outcome(v);
            }
        }
        let c = self.counters_mut();
        c.batches += 1;
        c.packets += live;
    }

    /// Runs `f(self, batch, pending)` over the whole batch (for stages with a batch-wide
    /// pass, e.g. hash all keys, then look up), then accounts it with
    /// [`StageCounters::account`]. `pending` is [`Batch::pending_mask`] before `f` runs; `f`
    /// sets verdicts itself and must only decide packets that were still pending.
    #[inline(always)]
    fn run<B>(&mut self, batch: &mut Batch<B>, f: impl FnOnce(&mut Self, &mut Batch<B>, u64))
    where
        Self: Sized,
    {
        let before = batch.pending_mask();
        f(self, batch, before);
        self.counters_mut().account(before, batch);
    }
}

/// Counters every stage keeps, bumped once per batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageCounters {
    /// Batches processed.
    pub batches: u64,
    /// Packets that entered the stage still at [`Verdict::Pass`].
    pub packets: u64,
    /// Of those, packets the stage dropped, by reason.
    pub drops: DropCounters,
    /// Of those, packets the stage sent to the control path.
    pub to_control: u64,
    /// Of those, packets the stage decided to transmit.
    pub tx: u64,
}

impl StageCounters {
    /// Accounts one batch: `pending_before` is [`Batch::pending_mask`] taken before the
    /// stage ran; every packet in it whose verdict changed is counted by outcome. Stages
    /// call this through [`StageLoop`].
    #[inline]
    pub fn account<B>(&mut self, pending_before: u64, batch: &Batch<B>) {
        self.batches += 1;
        self.packets += u64::from(pending_before.count_ones());
        let mut m = pending_before & !batch.pending_mask();
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            if let Some(p) = batch.get(i) {
                self.outcome(p.meta.verdict);
            }
        }
    }

    /// Counts one packet that left [`Verdict::Pass`] with verdict `v`: the one place outcomes
    /// are counted.
    #[inline(always)]
    pub(crate) fn outcome(&mut self, v: Verdict) {
        match v {
            Verdict::Drop(r) => self.drops.add(r, 1),
            Verdict::ToControl => self.to_control += 1,
            Verdict::Tx(_) => self.tx += 1,
            Verdict::Pass => {}
        }
    }

    /// Calls `f(stage, name, value)` for `batches`, `packets`, `to_control`, `tx`, `drops`
    /// (the total), and `drop_<reason>` for every reason with a non-zero count.
    pub fn visit(&self, stage: &'static str, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        f(stage, "batches", self.batches);
        f(stage, "packets", self.packets);
        f(stage, "to_control", self.to_control);
        f(stage, "tx", self.tx);
        f(stage, "drops", self.drops.total());
        for (r, n) in self.drops.nonzero() {
            f(stage, r.counter_name(), n);
        }
    }
}

/// Two stages run one after the other. Built with [`StageExt::then`].
#[derive(Debug, Clone, Default)]
pub struct Chain<A, S> {
    /// The first stage.
    pub first: A,
    /// The stage run after it.
    pub second: S,
}

impl<B, A: Stage<B>, S: Stage<B>> Stage<B> for Chain<A, S> {
    #[inline]
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        self.first.process(now, batch);
        self.second.process(now, batch);
    }
}

impl<A: StageControl, S: StageControl> StageControl for Chain<A, S> {
    fn name(&self) -> &'static str {
        "chain"
    }

    /// The first stage's counters (use [`StageControl::visit_counters`] for all of them).
    fn counters(&self) -> &StageCounters {
        self.first.counters()
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.first.visit_counters(f);
        self.second.visit_counters(f);
    }

    /// The earliest deadline of either stage.
    fn poll_timeout(&self) -> Option<Instant> {
        match (self.first.poll_timeout(), self.second.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The first stage's timers, then the second's with what is left of the budget.
    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        let a = self.first.handle_timeout(now, budget);
        a + self.second.handle_timeout(now, budget.saturating_sub(a))
    }

    /// The sum of both stages' headroom (each may push its own headers).
    fn headroom(&self) -> usize {
        self.first.headroom() + self.second.headroom()
    }

    /// The sum of both stages' room.
    fn batch_room(&self) -> usize {
        self.first.batch_room() + self.second.batch_room()
    }
}

/// A stage under another name in the counter view, so that two stages of one kind in a
/// pipeline (a tunnel inside a tunnel: two decapsulation stages) report apart. Built with
/// [`StageExt::named`].
///
/// ```
/// use nf_core::{ParseStage, StageControl, StageExt};
/// let p = ParseStage::default().then(ParseStage::default().named("parse_inner"));
/// let mut names = Vec::new();
/// p.visit_counters(&mut |stage, counter, _| {
///     if counter == "packets" {
///         names.push(stage);
///     }
/// });
/// assert_eq!(names, ["parse", "parse_inner"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Named<S> {
    /// The stage.
    pub stage: S,
    name: &'static str,
}

impl<B, S: Stage<B>> Stage<B> for Named<S> {
    #[inline]
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        self.stage.process(now, batch);
    }
}

impl<S: StageControl> StageControl for Named<S> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn counters(&self) -> &StageCounters {
        self.stage.counters()
    }

    /// The stage's counters, each reported under this name.
    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        let name = self.name;
        self.stage
            .visit_counters(&mut |_, counter, v| f(name, counter, v));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.stage.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.stage.handle_timeout(now, budget)
    }

    fn headroom(&self) -> usize {
        self.stage.headroom()
    }

    fn batch_room(&self) -> usize {
        self.stage.batch_room()
    }
}

/// Composition of stages.
pub trait StageExt: Sized {
    /// A pipeline that runs `self`, then `next`.
    fn then<S>(self, next: S) -> Chain<Self, S> {
        Chain {
            first: self,
            second: next,
        }
    }

    /// `self` reporting its counters as stage `name` ([`Named`]).
    fn named(self, name: &'static str) -> Named<Self> {
        Named { stage: self, name }
    }
}

impl<T> StageExt for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{DropReason, PortId};
    use alloc::vec;
    use alloc::vec::Vec;

    /// Gives packet `i` the verdict `plan[i]`, per packet or batch-wide.
    struct Planned {
        plan: Vec<Verdict>,
        batch_wide: bool,
        counters: StageCounters,
    }

    impl StageLoop for Planned {
        fn counters_mut(&mut self) -> &mut StageCounters {
            &mut self.counters
        }
    }

    impl Stage<Vec<u8>> for Planned {
        fn process(&mut self, _now: Instant, batch: &mut Batch<Vec<u8>>) {
            if self.batch_wide {
                self.run(batch, |s, batch, _| {
                    for (i, pkt) in batch.pending_mut() {
                        pkt.meta.verdict = s.plan.get(i).copied().unwrap_or_default();
                    }
                });
            } else {
                self.each_pending(batch, |s, i, _| s.plan.get(i).copied().unwrap_or_default());
            }
        }
    }

    impl StageControl for Planned {
        fn name(&self) -> &'static str {
            "planned"
        }

        fn counters(&self) -> &StageCounters {
            &self.counters
        }
    }

    #[test]
    fn each_pending_and_run_count_like_account() {
        let plan = vec![
            Verdict::Pass,
            Verdict::Drop(DropReason::NonIp),
            Verdict::ToControl,
            Verdict::Tx(PortId(1)),
            Verdict::Drop(DropReason::NonIp),
            Verdict::Drop(DropReason::TooBig),
        ];
        for batch_wide in [false, true] {
            let mut stage = Planned {
                plan: plan.clone(),
                batch_wide,
                counters: StageCounters::default(),
            };
            let mut batch = Batch::new();
            for _ in &plan {
                batch
                    .push(Packet::new(vec![0u8; 4], 0, 4).unwrap())
                    .unwrap();
            }
            // Decided earlier: neither seen nor counted.
            batch.set_verdict(4, Verdict::Drop(DropReason::EthTruncated));
            let before = batch.pending_mask();
            stage.process(Instant::ZERO, &mut batch);
            let mut want = StageCounters::default();
            want.account(before, &batch);
            assert_eq!(stage.counters, want);
            assert_eq!((want.batches, want.packets, want.tx), (1, 5, 1));
            assert_eq!(want.to_control, 1);
            assert_eq!(want.drops.count(DropReason::NonIp), 1);
            assert_eq!(want.drops.count(DropReason::TooBig), 1);
            let v: Vec<_> = batch.packets().iter().map(|p| p.meta.verdict).collect();
            let mut expect = plan.clone();
            expect[4] = Verdict::Drop(DropReason::EthTruncated);
            assert_eq!(v, expect);
        }
    }
}
