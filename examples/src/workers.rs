//! Per-core workers: N threads, each owning its pipeline and its session tables (nothing
//! mutable shared), fed by one receive loop that steers every packet with
//! [`nf_core::steer::Steering`] so both directions of a flow — and a NAT's replies — reach
//! the worker that holds the flow's session.
//!
//! ```text
//!  receive loop (the caller's thread)          worker w (one thread each, pinned to a core)
//!  RxRing::recv → front stages (decap, parse)   ┌──────────────────────────────────────────┐
//!     → Steering::worker → per-worker batch ──► │ Worker::process(now, batch): its pipeline│
//!  ◄── the same batch, emptied, for reuse ───── │   (conntrack, NAT, ...) and its TxRings  │
//!                                               │ Worker::handle_timeout when due          │
//!                                               └──────────────────────────────────────────┘
//! ```
//!
//! - Batches travel over bounded channels and come back empty for reuse: once
//!   [`WorkerPool::IN_FLIGHT`] batches per worker exist, none is allocated again, and a
//!   worker that falls behind slows the receive loop (backpressure) instead of growing a
//!   queue.
//! - Packets whose worker cannot be named ([`nf_core::steer::Steer::Unknown`]: not IP, a
//!   later fragment to an owned address) go to worker 0 and are counted (`unsteered`).
//! - Each worker runs its timers ([`Worker::poll_timeout`] / [`Worker::handle_timeout`])
//!   between batches and publishes its counters about once a second under a
//!   `parking_lot` mutex (never on the per-packet path); [`WorkerPool::counters`] sums
//!   them by (stage, counter).
//! - [`WorkerPool::shutdown`] closes the channels, joins the workers and returns their
//!   final counters.
//!
//! With one worker, [`PoolConfig::inline`] runs it on the receive loop's own thread instead
//! (run to completion: no hand-over between threads, no channel); the caller then drives its
//! timers ([`WorkerPool::poll_timeout`] / [`WorkerPool::handle_timeout`]).
//!
//! Both directions of a flow must go through the same receive loop's [`Steering`] (one
//! loop per node, or one per NIC queue with the NIC's RSS using the symmetric Toeplitz key
//! and [`nf_core::steer::SteerHash::Toeplitz`]).

use nf_core::steer::{Steer, Steering};
use nf_core::{BATCH_SIZE, Batch, Instant, StdClock};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// What one worker does with the batches steered to it.
pub trait Worker<B>: Send + 'static {
    /// Runs the worker's pipeline over `batch` and sends or consumes its packets; the pool
    /// empties the batch afterwards.
    fn process(&mut self, now: Instant, batch: &mut Batch<B>);

    /// When [`Worker::handle_timeout`] is next due (`None`: no timers).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Runs the timers due at `now`.
    fn handle_timeout(&mut self, _now: Instant) {}

    /// Reports every counter as (stage, counter, value).
    fn visit_counters(&self, _visit: &mut dyn FnMut(&'static str, &'static str, u64)) {}

    /// Packets the worker's pipeline may add to a batch (e.g. the later fragments a
    /// `FragmentReorder` releases: its `StageControl::batch_room`); the pool sends each
    /// batch with that many places free. Read once, when the pool starts.
    fn batch_room(&self) -> usize {
        0
    }
}

/// Counters summed over workers, keyed by (stage, counter).
pub type CounterTotals = BTreeMap<(&'static str, &'static str), u64>;

/// The receive-loop side of N workers (see the [module docs](self)).
pub struct WorkerPool<B: Send + 'static> {
    steering: Steering,
    to_workers: Vec<SyncSender<Batch<B>>>,
    returned: Receiver<Batch<B>>,
    /// The batch being filled for each worker.
    filling: Vec<Batch<B>>,
    /// Packets per batch sent to a worker: [`BATCH_SIZE`] less the largest
    /// [`Worker::batch_room`].
    fill_to: usize,
    /// Empty batches ready for reuse.
    spare: Vec<Batch<B>>,
    /// Batches that exist (in flight, filling or spare).
    made: usize,
    published: Arc<Mutex<Vec<CounterTotals>>>,
    handles: Vec<JoinHandle<CounterTotals>>,
    counters: PoolCounters,
    /// The one worker, run on the caller's thread ([`PoolConfig::inline`]).
    inline: Option<Box<dyn Worker<B>>>,
    clock: StdClock,
}

/// The receive loop's own counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolCounters {
    /// Packets handed to workers.
    pub steered: u64,
    /// Packets no worker could be named for (sent to worker 0).
    pub unsteered: u64,
    /// Times the receive loop waited for a worker to hand a batch back.
    pub backpressure_waits: u64,
}

/// Settings of a [`WorkerPool`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Pin worker `w` to CPU `cpus[w % cpus.len()]` (empty: no pinning).
    pub cpus: Vec<usize>,
    /// How often workers publish their counters.
    pub publish_every: Duration,
    /// With one worker: run it on the caller's thread, each batch as soon as it is filled
    /// (no thread, no channel; `cpus` is not applied), its timers driven by the caller through
    /// [`WorkerPool::handle_timeout`]. Ignored with more workers. Off by default.
    pub inline: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            cpus: Vec::new(),
            publish_every: Duration::from_secs(1),
            inline: false,
        }
    }
}

impl<B: Send + 'static> WorkerPool<B> {
    /// Batches per worker that may exist at once (in flight, being filled or spare).
    pub const IN_FLIGHT: usize = 4;

    /// Starts one thread per worker of `steering`, worker `w` running `make(w)`, with times
    /// from `clock`.
    ///
    /// # Errors
    /// A thread could not be started.
    pub fn start<W: Worker<B>>(
        steering: Steering,
        clock: StdClock,
        config: &PoolConfig,
        mut make: impl FnMut(u16) -> W,
    ) -> std::io::Result<Self> {
        let n = usize::from(steering.workers());
        let (ret_tx, returned) = sync_channel(n * Self::IN_FLIGHT);
        let published = Arc::new(Mutex::new(vec![CounterTotals::new(); n]));
        let mut to_workers = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let mut room = 0;
        // One worker on the caller's thread, or one thread per worker.
        let inline = (config.inline && n == 1).then(|| {
            let worker = make(0);
            room = worker.batch_room();
            Box::new(worker) as Box<dyn Worker<B>>
        });
        for w in (0..n).filter(|_| inline.is_none()) {
            let (tx, rx) = sync_channel::<Batch<B>>(Self::IN_FLIGHT);
            let worker = make(w as u16);
            room = room.max(worker.batch_room());
            let ret = ret_tx.clone();
            let publ = Arc::clone(&published);
            let cpu = (!config.cpus.is_empty()).then(|| config.cpus[w % config.cpus.len()]);
            let every = config.publish_every;
            let h = std::thread::Builder::new()
                .name(format!("nf-worker-{w}"))
                .spawn(move || {
                    #[cfg(target_os = "linux")]
                    if let Some(cpu) = cpu {
                        // Best effort: a container may forbid it.
                        let _ = crate::io::pin_to_cpu(cpu);
                    }
                    #[cfg(not(target_os = "linux"))]
                    let _ = cpu;
                    run_worker(worker, w, &clock, &rx, &ret, &publ, every)
                })?;
            to_workers.push(tx);
            handles.push(h);
        }
        Ok(Self {
            steering,
            to_workers,
            returned,
            filling: (0..n).map(|_| Batch::new()).collect(),
            fill_to: BATCH_SIZE.saturating_sub(room).max(1),
            spare: Vec::new(),
            made: n,
            published,
            handles,
            counters: PoolCounters::default(),
            inline,
            clock,
        })
    }

    /// Steers every pending packet of `batch` (parsed by the caller's front stages) to its
    /// worker and hands the workers their batches; `batch` is left empty. Packets with a
    /// verdict already (dropped by the front stages) are dropped here.
    pub fn dispatch(&mut self, batch: &mut Batch<B>)
    where
        B: AsRef<[u8]>,
    {
        for pkt in batch.drain() {
            if !pkt.meta.verdict.is_pass() {
                continue;
            }
            let w = match self.steering.worker(pkt.data(), &pkt.meta) {
                Steer::Worker(w) => usize::from(w),
                Steer::Unknown => {
                    self.counters.unsteered += 1;
                    0
                }
            };
            self.counters.steered += 1;
            let Some(b) = self.filling.get_mut(w) else {
                continue;
            };
            if let Err(pkt) = b.push(pkt) {
                self.send(w);
                if let Some(b) = self.filling.get_mut(w) {
                    let _ = b.push(pkt);
                }
            }
            if self.filling.get(w).is_some_and(|b| b.len() >= self.fill_to) {
                self.send(w);
            }
        }
        for w in 0..self.filling.len() {
            if self.filling.get(w).is_some_and(|b| !b.is_empty()) {
                self.send(w);
            }
        }
    }

    /// Sends worker `w`'s filling batch and takes an empty one in its place (an inline worker
    /// runs on it here, and it is emptied for reuse).
    fn send(&mut self, w: usize) {
        if let (Some(worker), Some(batch)) = (&mut self.inline, self.filling.get_mut(w)) {
            worker.process(self.clock.now(), batch);
            batch.clear();
            return;
        }
        let fresh = self.empty_batch();
        let Some(slot) = self.filling.get_mut(w) else {
            return;
        };
        let full = std::mem::replace(slot, fresh);
        let Some(tx) = self.to_workers.get(w) else {
            return;
        };
        match tx.try_send(full) {
            Ok(()) => {}
            Err(TrySendError::Full(full)) => {
                self.counters.backpressure_waits += 1;
                // The worker is behind: wait for it rather than queue without bound.
                let _ = tx.send(full);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// A batch handed back by a worker, a spare one, or a new one while fewer than
    /// [`Self::IN_FLIGHT`] per worker exist; otherwise waits for a worker to hand one back.
    fn empty_batch(&mut self) -> Batch<B> {
        while let Ok(b) = self.returned.try_recv() {
            self.spare.push(b);
        }
        if let Some(b) = self.spare.pop() {
            return b;
        }
        if self.made < self.to_workers.len() * Self::IN_FLIGHT {
            self.made += 1;
            return Batch::new();
        }
        self.counters.backpressure_waits += 1;
        self.returned
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_default()
    }

    /// The receive loop's counts.
    pub fn pool_counters(&self) -> PoolCounters {
        self.counters
    }

    /// The workers' counters as last published (about once per [`PoolConfig::publish_every`]),
    /// summed over workers; an inline worker's as they are now.
    pub fn counters(&self) -> CounterTotals {
        if let Some(w) = &self.inline {
            return snapshot(w.as_ref());
        }
        sum(&self.published.lock())
    }

    /// When an inline worker's timers are next due (`None`: no timers, or the workers run on
    /// threads of their own, which drive their timers themselves).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.inline.as_ref().and_then(|w| w.poll_timeout())
    }

    /// Runs an inline worker's timers if they are due at `now` (nothing for threaded
    /// workers); call it between batches.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(w) = &mut self.inline
            && w.poll_timeout().is_some_and(|t| t <= now)
        {
            w.handle_timeout(now);
        }
    }

    /// Closes the channels, waits for every worker to finish its queue, and returns the
    /// final counters summed over workers.
    pub fn shutdown(self) -> CounterTotals {
        let Self {
            to_workers,
            handles,
            inline,
            ..
        } = self;
        if let Some(w) = inline {
            return snapshot(w.as_ref());
        }
        drop(to_workers);
        let finals: Vec<CounterTotals> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        sum(&finals)
    }
}

fn sum(sets: &[CounterTotals]) -> CounterTotals {
    let mut total = CounterTotals::new();
    for set in sets {
        for (k, v) in set {
            *total.entry(*k).or_default() += v;
        }
    }
    total
}

fn snapshot<B, W: Worker<B> + ?Sized>(worker: &W) -> CounterTotals {
    let mut c = CounterTotals::new();
    worker.visit_counters(&mut |stage, name, v| {
        *c.entry((stage, name)).or_default() += v;
    });
    c
}

/// A worker thread's loop: batches in, timers between them, counters published.
fn run_worker<B: Send + 'static, W: Worker<B>>(
    mut worker: W,
    w: usize,
    clock: &StdClock,
    rx: &Receiver<Batch<B>>,
    ret: &SyncSender<Batch<B>>,
    published: &Mutex<Vec<CounterTotals>>,
    every: Duration,
) -> CounterTotals {
    let mut last_publish = std::time::Instant::now();
    loop {
        let wait = worker
            .poll_timeout()
            .map_or(every, |t| {
                clock
                    .to_std(t)
                    .saturating_duration_since(std::time::Instant::now())
            })
            .min(every);
        match rx.recv_timeout(wait) {
            Ok(mut batch) => {
                worker.process(clock.now(), &mut batch);
                batch.clear();
                // The receive loop may be gone (shutting down): then the batch just drops.
                let _ = ret.try_send(batch);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = clock.now();
        if worker.poll_timeout().is_some_and(|t| t <= now) {
            worker.handle_timeout(now);
        }
        if last_publish.elapsed() >= every {
            if let Some(slot) = published.lock().get_mut(w) {
                *slot = snapshot(&worker);
            }
            last_publish = std::time::Instant::now();
        }
    }
    let last = snapshot(&worker);
    if let Some(slot) = published.lock().get_mut(w) {
        slot.clone_from(&last);
    }
    last
}
