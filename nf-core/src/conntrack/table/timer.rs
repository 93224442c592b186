//! The timer wheel: deadlines in ticks, intrusive timer lists, and the budgeted sweep.

use super::{NIL, SessionInfo, SessionTable};
use crate::conntrack::key::SessionKey;
use crate::conntrack::state::{SessionState, TimeoutProfile};
use crate::time::Instant;

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// Ticks are `now / granularity`; a deadline is rounded up to a tick boundary. Cached
    /// per state for the current `now`.
    #[inline(always)]
    pub(super) fn deadline_tick(&mut self, now: Instant, s: SessionState) -> u32 {
        self.dl.tick(now, s as u8, &self.cfg.timeouts, self.gran)
    }

    /// The u64 tick a wrapping u32 tick stands for, relative to the cursor.
    pub(super) fn unwrap_tick(&self, t: u32) -> u64 {
        let diff = t.wrapping_sub(self.cursor as u32).cast_signed();
        self.cursor.saturating_add_signed(i64::from(diff))
    }

    pub(super) fn tick_instant(&self, t: u64) -> Instant {
        Instant::from_nanos(t.saturating_mul(self.gran))
    }

    /// The wheel slot whose next sweep is at or before tick `d`.
    #[inline(always)]
    pub(super) fn slot_for(&self, d: u32) -> u32 {
        let c = self.cursor as u32;
        let t = if d.wrapping_sub(c).cast_signed() < 0 {
            c
        } else {
            d
        };
        t & (self.cfg.wheel_slots - 1)
    }

    #[inline(always)]
    pub(super) fn set_deadline(&mut self, idx: u32, d: u32) {
        let Some(x) = self.recs.get_mut(idx as usize) else {
            return;
        };
        let old = x.deadline;
        x.deadline = d;
        // Later deadlines stay where they are (the sweep re-files them); an earlier one
        // must move so that it is swept in time.
        if d.wrapping_sub(old).cast_signed() < 0 {
            self.timer_unlink(idx);
            self.timer_link(self.slot_for(d), idx);
        }
    }

    #[inline(always)]
    fn links(&self, i: u32) -> [u32; 2] {
        let cap = self.cfg.capacity;
        if i < cap {
            self.recs
                .get(i as usize)
                .map_or([NIL, NIL], |r| [r.tprev, r.tnext])
        } else {
            self.wheel
                .get((i - cap) as usize)
                .copied()
                .unwrap_or([NIL, NIL])
        }
    }

    #[inline(always)]
    fn set_prev(&mut self, i: u32, v: u32) {
        let cap = self.cfg.capacity;
        if i < cap {
            if let Some(r) = self.recs.get_mut(i as usize) {
                r.tprev = v;
            }
        } else if let Some(s) = self.wheel.get_mut((i - cap) as usize) {
            s[0] = v;
        }
    }

    #[inline(always)]
    fn set_next(&mut self, i: u32, v: u32) {
        let cap = self.cfg.capacity;
        if i < cap {
            if let Some(r) = self.recs.get_mut(i as usize) {
                r.tnext = v;
            }
        } else if let Some(s) = self.wheel.get_mut((i - cap) as usize) {
            s[1] = v;
        }
    }

    /// Links record `idx` at the head of wheel slot `slot`.
    #[inline(always)]
    pub(super) fn timer_link(&mut self, slot: u32, idx: u32) {
        let head = self.cfg.capacity + slot;
        let [_, n] = self.links(head);
        self.set_next(head, idx);
        self.set_prev(idx, head);
        self.set_next(idx, n);
        self.set_prev(n, idx);
        if let Some(w) = self.occupied.get_mut((slot / 64) as usize) {
            *w |= 1 << (slot % 64);
        }
    }

    /// Starts loading the records (or wheel slots) before and after `idx` in its timer
    /// list, which [`Self::timer_unlink`] writes.
    #[inline(always)]
    pub(super) fn prefetch_timer_neighbours(&self, idx: u32) {
        let cap = self.cfg.capacity;
        for i in self.links(idx) {
            if i < cap {
                // The line holding the links (an IPv6 record spans two).
                if let Some(r) = self.recs.get(i as usize) {
                    crate::sys::prefetch(&r.tnext);
                }
            } else if let Some(s) = self.wheel.get((i.wrapping_sub(cap)) as usize) {
                crate::sys::prefetch(s);
            }
        }
    }

    #[inline(always)]
    pub(super) fn timer_unlink(&mut self, idx: u32) {
        let [p, n] = self.links(idx);
        if p == NIL || n == NIL {
            return;
        }
        self.set_next(p, n);
        self.set_prev(n, p);
        if p == n {
            // The list is now empty; `p` is its sentinel.
            let slot = p.wrapping_sub(self.cfg.capacity);
            if slot < self.cfg.wheel_slots
                && let Some(w) = self.occupied.get_mut((slot / 64) as usize)
            {
                *w &= !(1 << (slot % 64));
            }
        }
    }

    fn sweep_id(&self) -> u32 {
        self.cfg.capacity + self.cfg.wheel_slots
    }

    /// When [`Self::handle_timeout`] next has work: the start of the next occupied wheel
    /// slot's tick (sessions there may have been refreshed since; that costs one re-file), or
    /// a past instant if an earlier sweep ran out of budget. `None` when empty.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sweep = self.sweep_id();
        if self.links(sweep)[1] != sweep {
            return Some(self.tick_instant(self.cursor.saturating_sub(1)));
        }
        if self.len == 0 {
            return None;
        }
        let w = u64::from(self.cfg.wheel_slots);
        let start = self.cursor % w;
        let mut s = start;
        // At most one pass over the bitmap words.
        for _ in 0..=self.occupied.len() {
            let wi = (s / 64) as usize;
            let word = self.occupied.get(wi).copied().unwrap_or(0) & (u64::MAX << (s % 64));
            if word != 0 {
                let slot = (wi as u64) * 64 + u64::from(word.trailing_zeros());
                let dist = (slot + w - start) % w;
                return Some(self.tick_instant(self.cursor + dist));
            }
            s = (wi as u64 + 1) * 64 % w;
            if s == 0 && start != 0 {
                // Wrapped: look at the words before `start` too.
                let word0 = self.occupied.first().copied().unwrap_or(0);
                if word0 != 0 {
                    let slot = u64::from(word0.trailing_zeros());
                    let dist = (slot + w - start) % w;
                    return Some(self.tick_instant(self.cursor + dist));
                }
            }
        }
        Some(self.tick_instant(self.cursor))
    }

    /// Expires due sessions, doing at most `budget` units of work (one per session examined
    /// and one per wheel slot swept), and resumes where it stopped on the next call. Calling
    /// it again with the same `now` does nothing new. Returns the work done.
    pub fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.handle_timeout_with(now, budget, |_| {})
    }

    /// [`Self::handle_timeout`], calling `on_expire` with each expired session (e.g. so NAT
    /// can release its port).
    pub fn handle_timeout_with(
        &mut self,
        now: Instant,
        budget: usize,
        mut on_expire: impl FnMut(&SessionInfo<V>),
    ) -> usize {
        let target = now.as_nanos() / self.gran;
        let target32 = target as u32;
        let sweep = self.sweep_id();
        let w = u64::from(self.cfg.wheel_slots);
        let mut work = 0usize;
        loop {
            while work < budget {
                let i = self.links(sweep)[1];
                if i == sweep || i == NIL {
                    break;
                }
                work += 1;
                let Some(x) = self.recs.get(i as usize) else {
                    break;
                };
                let d = x.deadline;
                if target32.wrapping_sub(d).cast_signed() >= 0 {
                    let info = self.info_of(i, x);
                    self.remove_idx(i);
                    self.counters.expired += 1;
                    on_expire(&info);
                } else {
                    self.timer_unlink(i);
                    self.timer_link(self.slot_for(d), i);
                }
            }
            if work >= budget || self.cursor > target {
                break;
            }
            if target - self.cursor >= w {
                // Every slot will be swept once within the last `w` ticks.
                self.cursor = target - w + 1;
            }
            let slot = (self.cursor % w) as u32;
            self.splice_to_sweep(slot);
            self.cursor += 1;
            work += 1;
        }
        work
    }

    /// Moves wheel slot `slot`'s whole list onto the (empty) sweep list.
    fn splice_to_sweep(&mut self, slot: u32) {
        let head = self.cfg.capacity + slot;
        let sweep = self.sweep_id();
        let [last, first] = self.links(head);
        if first == head {
            return;
        }
        self.set_next(sweep, first);
        self.set_prev(first, sweep);
        self.set_prev(sweep, last);
        self.set_next(last, sweep);
        self.set_next(head, head);
        self.set_prev(head, head);
        if let Some(wd) = self.occupied.get_mut((slot / 64) as usize) {
            *wd &= !(1 << (slot % 64));
        }
    }
}

/// Deadline ticks per state for one `now` (bit `s` of `known` set when `ticks[s]` is
/// filled in): a batch shares one `now`, so this saves a 64-bit division per packet. A
/// field of its own, so that a refresh can hold a record while it reads the cache.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DeadlineCache {
    now: u64,
    known: u16,
    ticks: [u32; DL_SLOTS],
}

/// Entries of the cache: a power of two above the number of states, so that a state byte
/// masked with `DL_SLOTS - 1` indexes it without a bounds check.
const DL_SLOTS: usize = SessionState::ALL.len().next_power_of_two();

impl DeadlineCache {
    /// The deadline tick of a session in `state` (a record's state byte; one that names no
    /// state counts as [`SessionState::Other`], as everywhere else) refreshed at `now`.
    #[inline(always)]
    pub(super) fn tick(
        &mut self,
        now: Instant,
        state: u8,
        timeouts: &TimeoutProfile,
        gran: u64,
    ) -> u32 {
        let n = now.as_nanos();
        if n != self.now {
            self.now = n;
            self.known = 0;
        }
        let i = usize::from(state) & (DL_SLOTS - 1);
        if usize::from(state) == i
            && self.known >> i & 1 != 0
            && let Some(&t) = self.ticks.get(i)
        {
            return t;
        }
        self.fill(state, timeouts, gran)
    }

    /// The cache miss of [`Self::tick`] (once per state and `now`).
    #[inline(never)]
    fn fill(&mut self, state: u8, timeouts: &TimeoutProfile, gran: u64) -> u32 {
        let s = SessionState::from_u8(state).unwrap_or(SessionState::Other);
        let t = self
            .now
            .saturating_add(timeouts.timeout(s).as_nanos())
            .div_ceil(gran) as u32;
        let i = s as usize;
        if let Some(d) = self.ticks.get_mut(i) {
            *d = t;
            self.known |= 1 << i;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{TableConfig, TimeoutProfile};
    use crate::conntrack::{V4Key, V6Key};
    use crate::flow::proto;
    use crate::flow::{FlowKey, ZoneId};
    use crate::time::Duration;

    proptest::proptest! {
        /// The per-`now` deadline cache answers exactly like the formula, whatever order
        /// times and states come in (repeated, earlier, later).
        #[test]
        fn cached_deadlines_equal_the_formula(
            calls in proptest::collection::vec((0u64..4, 0..SessionState::ALL.len()), 1..200),
            gran_ms in 1u64..2000,
        ) {
            let mut cfg = TableConfig::new(16, [1; 16]);
            cfg.timeouts.granularity = Duration::from_millis(gran_ms);
            let mut t: SessionTable<V4Key, u8> = SessionTable::new(cfg).unwrap();
            let times = [0u64, 1, 999_999_999, 7_000_000_123];
            for (ti, si) in calls {
                let now = Instant::from_nanos(times[ti as usize]);
                let s = SessionState::ALL[si];
                let want = (now.as_nanos() + cfg.timeouts.timeout(s).as_nanos())
                    .div_ceil(cfg.timeouts.granularity.as_nanos()) as u32;
                proptest::prop_assert_eq!(t.deadline_tick(now, s), want);
            }
        }
    }

    #[test]
    fn expiry_and_poll() {
        let mut cfg = TableConfig::new(10, [1; 16]);
        cfg.timeouts = TimeoutProfile::uniform(Duration::from_secs(1), Duration::from_secs(5));
        let mut t: SessionTable<V6Key, ()> = SessionTable::new(cfg).unwrap();
        assert_eq!(t.poll_timeout(), None);
        let f = FlowKey::v6(ZoneId(0), [1; 16], [2; 16], proto::TCP, 1, 2);
        let r = t
            .insert(
                Instant::from_nanos(500),
                &f,
                &f.reversed(),
                SessionState::TcpSynSent,
                (),
            )
            .unwrap();
        assert_eq!(t.poll_timeout(), Some(Instant::from_nanos(6_000_000_000)));
        t.handle_timeout(Instant::from_nanos(5_999_999_999), 100);
        assert!(t.is_live(r));
        assert!(t.refresh(r, Instant::from_secs_for_test(3)));
        t.handle_timeout(Instant::from_secs_for_test(7), 100);
        assert!(t.is_live(r));
        t.handle_timeout(Instant::from_secs_for_test(8), 100);
        assert!(!t.is_live(r));
        assert_eq!(t.counters().expired, 1);
        assert_eq!(t.poll_timeout(), None);
    }

    impl Instant {
        fn from_secs_for_test(s: u64) -> Self {
            Instant::from_nanos(s * 1_000_000_000)
        }
    }
}
