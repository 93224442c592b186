//! Out-of-order fragments, held until their first fragment has passed (see
//! [`FragmentReorder`]).

use super::related::{FragmentConfig, FragmentCounters, FragmentTable, fragment_id};
use crate::batch::{BATCH_SIZE, Batch};
use crate::flow::FlowKey;
use crate::meta::flags;
use crate::packet::Packet;
use crate::stage::{Stage, StageControl, StageCounters};
use crate::time::Instant;
use crate::verdict::{DropReason, Verdict};
use alloc::vec::Vec;

/// Settings of a [`FragmentReorder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReorderConfig {
    /// The table of first fragments seen (capacity and how long after a first fragment its
    /// later fragments pass and its held ones are released).
    pub fragments: FragmentConfig,
    /// Most packets held at once (0 holds none: out-of-order fragments pass on, and the
    /// conntrack stage drops them as `fragment_no_session`).
    pub held: u32,
    /// Most packets held for one datagram.
    pub per_datagram: u32,
    /// Packets a caller should leave free in each batch for released and expired packets
    /// ([`StageControl::batch_room`]).
    pub room: u32,
    /// Key of the table's hash (use a random value per process).
    pub secret: [u8; 16],
}

impl ReorderConfig {
    /// Defaults: the fragment table's (4,096 first fragments, 4 s), 64 packets held, at
    /// most 16 of a datagram, room for 8.
    #[must_use]
    pub fn new(secret: [u8; 16]) -> Self {
        Self {
            fragments: FragmentConfig::default(),
            held: 64,
            per_datagram: 16,
            room: 8,
            secret,
        }
    }

    /// Sets the pool: at most `held` packets, at most `per_datagram` of one datagram.
    #[must_use]
    pub const fn holding(mut self, held: u32, per_datagram: u32) -> Self {
        self.held = held;
        self.per_datagram = per_datagram;
        self
    }
}

/// What a [`FragmentReorder`] did (monotonic, except `holding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReorderCounters {
    /// Later fragments that arrived after their first fragment and passed on.
    pub in_order: u64,
    /// Later fragments held (arrived before their first fragment).
    pub held: u64,
    /// Held fragments released behind their first fragment.
    pub released: u64,
    /// Held fragments given back as [`DropReason::FragmentHoldExpired`].
    pub expired: u64,
    /// Packets held now (a gauge).
    pub holding: u64,
}

/// A held packet: its fragment key, when it expires, whether its first fragment has passed.
#[derive(Debug)]
struct Held<B> {
    key: FlowKey,
    expires: u64,
    ready: bool,
    pkt: Packet<B>,
}

/// A stage that holds a later fragment arriving before its datagram's first fragment until
/// the first has passed, then releases it behind the first.
///
/// The [`Conntrack`](super::Conntrack) stage relates a later fragment (no transport header,
/// no ports) to the session of its datagram's first fragment, which it must have seen
/// first; networks reorder (ECMP, link bonding, a sender that emits the last fragment first),
/// and RFC 4787 REQ-14 asks a NAT to accept fragments in either order. Put a
/// `FragmentReorder` before the conntrack stage (after parsing and decapsulation):
///
/// - it records every first fragment it passes — (zone, addresses, protocol, IP
///   identification), a bounded keyed table like the conntrack stage's, entries living
///   [`FragmentConfig::lifetime`];
/// - a later fragment whose first fragment it has seen passes on;
/// - one whose first has not been seen is **held**: moved out of the batch into a pool of at
///   most [`ReorderConfig::held`] packets, at most [`ReorderConfig::per_datagram`] of one
///   datagram. A full pool drops it as [`DropReason::FragmentHoldFull`];
/// - when the first fragment passes, its held fragments are **released**: appended to the
///   batch (so behind their first fragment), still at [`Verdict::Pass`], with the
///   [`Meta`](crate::Meta) they had when they arrived;
/// - a held fragment whose first does not come within the lifetime is given back, appended
///   as [`DropReason::FragmentHoldExpired`], so the caller recycles its buffer.
///
/// Held packets are the caller's buffers, moved, never copied; nothing allocates after
/// construction. Released and expired packets enter a batch only where it has room: a
/// caller that leaves [`StageControl::batch_room`] packets free in every batch
/// ([`ReorderConfig::room`]) gets them back in the next batch at the latest; a caller that
/// always fills batches to [`BATCH_SIZE`] delays them until one has room. Work per packet
/// is bounded: one table operation, plus a scan of the pool (at most `held` entries) for a
/// fragment held or released.
///
/// ```
/// use nf_core::conntrack::{Conntrack, ConntrackConfig, FragmentReorder, ReorderConfig};
/// use nf_core::wire::Frame;
/// use nf_core::{Batch, Instant, Packet, ParseStage, Stage, StageControl, StageExt};
///
/// // One UDP datagram of 1,000 bytes, fragmented at a 576-byte MTU; the last fragment first.
/// let datagram = Frame::ipv4([10, 0, 0, 1], [192, 0, 2, 10]).udp(5000, 53).payload(&[7; 992]);
/// let mut frags = datagram.fragments(576, 1)?;
/// frags.reverse();
/// let secret = *b"a per-run secret";
/// let mut pipeline = ParseStage::default()
///     .then(FragmentReorder::new(ReorderConfig::new(secret)))
///     .then(Conntrack::new(ConntrackConfig::new(secret), ())?);
/// let room = pipeline.batch_room();
/// let mut batch = Batch::new();
/// for f in &frags {
///     batch.push(Packet::with_headroom(f, 0)).ok();
/// }
/// assert!(batch.len() + room <= nf_core::BATCH_SIZE);
/// pipeline.process(Instant::ZERO, &mut batch);
/// // The first fragment, then the later one it released; both with the datagram's session.
/// assert_eq!(batch.len(), 2);
/// assert!(batch.packets().iter().all(|p| p.meta.verdict.is_pass() && p.meta.session.is_some()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FragmentReorder<B> {
    seen: FragmentTable,
    held: Vec<Held<B>>,
    /// Keys of the packets this batch holds, in batch order (capacity [`BATCH_SIZE`]).
    holding: Vec<FlowKey>,
    cfg: ReorderConfig,
    on_hold: Option<fn(&mut B)>,
    counters: StageCounters,
    stats: ReorderCounters,
}

impl<B> FragmentReorder<B> {
    /// A stage with its table and pool allocated (the only allocations it makes).
    #[must_use]
    pub fn new(cfg: ReorderConfig) -> Self {
        Self {
            seen: FragmentTable::new(cfg.fragments, cfg.secret),
            held: Vec::with_capacity(cfg.held as usize),
            holding: Vec::with_capacity(BATCH_SIZE),
            cfg,
            on_hold: None,
            counters: StageCounters::default(),
            stats: ReorderCounters::default(),
        }
    }

    /// Calls `hold` on a packet's buffer as the packet is held. A receive ring that takes
    /// its slots back in order (`PACKET_MMAP`) stalls while one of its frames is held: its
    /// hook copies the frame out of the ring and gives the slot back at once. Buffers that
    /// may come back in any order (owned buffers, AF_XDP frames) need no hook.
    #[must_use]
    pub fn on_hold(mut self, hold: fn(&mut B)) -> Self {
        self.on_hold = Some(hold);
        self
    }

    /// What the stage did.
    pub fn stats(&self) -> ReorderCounters {
        ReorderCounters {
            holding: self.held.len() as u64,
            ..self.stats
        }
    }

    /// The table of first fragments' counters (`recorded`, `hits` = later fragments in
    /// order, `misses` = held or dropped, `evictions`).
    pub fn fragment_counters(&self) -> &FragmentCounters {
        &self.seen.counters
    }

    /// Gives back every held packet (e.g. at shutdown, to recycle the buffers).
    pub fn drain(&mut self) -> impl Iterator<Item = Packet<B>> + '_ {
        self.held.drain(..).map(|h| h.pkt)
    }

    /// Decides one later fragment: `true` to hold it (it is then in `self.holding`); a
    /// fragment over the pool's limits is dropped in place.
    fn later(&mut self, now: Instant, pkt: &mut Packet<B>, key: FlowKey) -> bool
    where
        B: AsRef<[u8]>,
    {
        if self.seen.live(now, &key) {
            self.seen.counters.hits += 1;
            self.stats.in_order += 1;
            return false;
        }
        self.seen.counters.misses += 1;
        if self.cfg.held == 0 {
            return false;
        }
        let same = (self.held.iter().map(|h| &h.key))
            .chain(self.holding.iter())
            .filter(|k| **k == key)
            .count();
        let total = self.held.len() + self.holding.len();
        if total >= self.cfg.held as usize || same >= self.cfg.per_datagram as usize {
            let v = Verdict::Drop(DropReason::FragmentHoldFull);
            pkt.meta.verdict = v;
            self.counters.outcome(v);
            return false;
        }
        self.holding.push(key);
        true
    }

    /// Appends released (ready) and expired held packets while the batch has room, oldest
    /// first.
    fn give_back(&mut self, now: Instant, batch: &mut Batch<B>) {
        let n = now.as_nanos();
        let room = BATCH_SIZE.saturating_sub(batch.len());
        let mut taken = 0usize;
        let Self {
            held,
            counters,
            stats,
            ..
        } = self;
        let out = held.extract_if(.., |h| {
            let go = (h.ready || h.expires <= n) && taken < room;
            taken += usize::from(go);
            go
        });
        for h in out {
            let mut pkt = h.pkt;
            if h.ready {
                pkt.meta.verdict = Verdict::Pass;
                stats.released += 1;
            } else {
                let v = Verdict::Drop(DropReason::FragmentHoldExpired);
                pkt.meta.verdict = v;
                counters.outcome(v);
                stats.expired += 1;
            }
            // Room was counted above, so the batch takes every packet.
            let _ = batch.push(pkt);
        }
    }
}

impl<B: AsRef<[u8]>> Stage<B> for FragmentReorder<B> {
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        let before = batch.pending_mask();
        self.counters.batches += 1;
        self.counters.packets += u64::from(before.count_ones());
        self.holding.clear();
        let (mut hold, mut recorded) = (0u64, false);
        for (i, pkt) in batch.packets_mut().iter_mut().enumerate().take(BATCH_SIZE) {
            if before >> i & 1 == 0 || !pkt.meta.has(flags::FRAGMENT) {
                continue;
            }
            let Some(id) = fragment_id(pkt.data(), &pkt.meta) else {
                continue;
            };
            let key = FragmentTable::key(&pkt.meta, id);
            if !pkt.meta.has(flags::LATER_FRAGMENT) {
                self.seen.record(now, &pkt.meta, id);
                recorded = true;
            } else if self.later(now, pkt, key) {
                hold |= 1 << i;
            }
        }
        if hold != 0 {
            let expires = now
                .as_nanos()
                .saturating_add(self.cfg.fragments.lifetime.as_nanos());
            let mut keys = self.holding.iter();
            let (held, on_hold) = (&mut self.held, self.on_hold);
            batch.take_masked(hold, |mut pkt| {
                if let Some(f) = on_hold {
                    f(pkt.buffer_mut());
                }
                if let Some(&key) = keys.next() {
                    held.push(Held {
                        key,
                        expires,
                        ready: false,
                        pkt,
                    });
                }
            });
            self.stats.held += u64::from(hold.count_ones());
        }
        if recorded {
            for h in self.held.iter_mut().filter(|h| !h.ready) {
                h.ready = self.seen.live(now, &h.key);
            }
        }
        if !self.held.is_empty() {
            self.give_back(now, batch);
        }
    }
}

impl<B> StageControl for FragmentReorder<B> {
    fn name(&self) -> &'static str {
        "fragment_reorder"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        let name = self.name();
        self.counters.visit(name, f);
        let s = self.stats();
        let t = &self.seen.counters;
        for (n, v) in [
            ("first_fragments_recorded", t.recorded),
            ("first_fragment_evictions", t.evictions),
            ("later_fragments_in_order", s.in_order),
            ("later_fragments_held", s.held),
            ("later_fragments_released", s.released),
            ("later_fragments_expired", s.expired),
            ("later_fragments_holding", s.holding),
        ] {
            f(name, n, v);
        }
    }

    fn batch_room(&self) -> usize {
        if self.cfg.held == 0 {
            0
        } else {
            self.cfg.room as usize
        }
    }
}
