//! The [`Stage`] trait, zero-cost pipeline composition, and per-stage counters.
//!
//! A stage is a struct with one hot method, [`Stage::process`], called once per batch with
//! the current time. It reads and rewrites packets in place, sets verdicts, and skips packets
//! that are no longer at [`Verdict::Pass`]. Stages compose with [`StageExt::then`] into a
//! [`Chain`], a plain struct: the compiler sees the whole pipeline and inlines across stages,
//! with no dynamic dispatch on the hot path.
//!
//! ```
//! use nf_core::{Batch, Counted, Instant, Packet, ParseStage, Stage, StageExt};
//! let mut pipeline = ParseStage::default().then(ParseStage::default());
//! let mut batch = Batch::new();
//! batch.push(Packet::new(vec![0u8; 10], 0, 10)?).ok();
//! pipeline.process(Instant::ZERO, &mut batch);
//! pipeline.visit_counters(&mut |name, c| println!("{name}: {} packets, {} dropped", c.packets, c.drops.total()));
//! # Ok::<(), nf_core::PacketError>(())
//! ```

use crate::batch::Batch;
use crate::time::Instant;
use crate::verdict::{DropCounters, Verdict};

/// One step of a packet pipeline, for buffers of type `B`.
pub trait Stage<B>: Counted {
    /// Processes every packet of `batch` still at [`Verdict::Pass`]. Does no I/O, reads no
    /// clock (`now` is the caller's), and does bounded work per packet.
    fn process(&mut self, now: Instant, batch: &mut Batch<B>);
}

/// The buffer-independent side of a stage: its name and counters.
pub trait Counted {
    /// A short stable name for counters (`"parse"`, `"conntrack"`, ...).
    fn name(&self) -> &'static str;

    /// This stage's counters.
    fn counters(&self) -> &StageCounters;

    /// Calls `f` with the name and counters of this stage and, for a [`Chain`], of every
    /// stage in it, in pipeline order. Cold path.
    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &StageCounters)) {
        f(self.name(), self.counters());
    }
}

/// Counters every stage keeps, bumped once per batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

impl<A: Counted, S: Counted> Counted for Chain<A, S> {
    fn name(&self) -> &'static str {
        "chain"
    }

    /// The first stage's counters (use [`Counted::visit_counters`] for all of them).
    fn counters(&self) -> &StageCounters {
        self.first.counters()
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &StageCounters)) {
        self.first.visit_counters(f);
        self.second.visit_counters(f);
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
