//! The [`Stage`] trait, zero-cost pipeline composition, per-stage counters, timers and
//! headroom.
//!
//! A stage is a struct with one hot method, [`Stage::process`], called once per batch with
//! the current time. It reads and rewrites packets in place, sets verdicts, and skips packets
//! that are no longer at [`Verdict::Pass`]. Stages compose with [`StageExt::then`] into a
//! [`Chain`], a plain struct: the compiler sees the whole pipeline and inlines across stages,
//! with no dynamic dispatch on the hot path.
//!
//! Everything about a stage that does not depend on the buffer type lives in
//! [`StageControl`]: its name, every counter (one visitor for the whole pipeline), its timers
//! (one `poll_timeout` / `handle_timeout` for the whole pipeline) and the headroom it needs.
//! A [`Chain`] forwards all of them, so an I/O loop drives a pipeline through the pipeline
//! value alone, whatever its shape.
//!
//! ```
//! use nf_core::{Batch, Instant, Packet, ParseStage, Stage, StageControl, StageExt};
//! let mut pipeline = ParseStage::default().then(ParseStage::default());
//! let mut batch = Batch::new();
//! batch.push(Packet::new(vec![0u8; 10], 0, 10)?).ok();
//! pipeline.process(Instant::ZERO, &mut batch);
//! pipeline.visit_counters(&mut |stage, counter, value| println!("{stage} {counter} {value}"));
//! // Timers of every stage, driven through the pipeline value.
//! let now = Instant::ZERO;
//! while pipeline.poll_timeout().is_some_and(|t| t <= now) {
//!     pipeline.handle_timeout(now, 1024);
//! }
//! # Ok::<(), nf_core::PacketError>(())
//! ```

use crate::batch::Batch;
use crate::time::Instant;
use crate::verdict::{DropCounters, Verdict};

/// One step of a packet pipeline, for buffers of type `B`.
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
    /// stage ran; every packet in it whose verdict changed is counted by outcome.
    #[inline]
    pub fn account<B>(&mut self, pending_before: u64, batch: &Batch<B>) {
        self.batches += 1;
        self.packets += u64::from(pending_before.count_ones());
        let mut m = pending_before & !batch.pending_mask();
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            match batch.get(i).map(|p| p.meta.verdict) {
                Some(Verdict::Drop(r)) => self.drops.add(r, 1),
                Some(Verdict::ToControl) => self.to_control += 1,
                Some(Verdict::Tx(_)) => self.tx += 1,
                Some(Verdict::Pass) | None => {}
            }
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
}

impl<T> StageExt for T {}
