//! The change journal: which sessions a replica must hear about
//! ([`TableConfig::journal`](super::TableConfig::journal)).
//!
//! Two bounded lists, allocated when the table is built and never grown: the slots of
//! sessions created or changed (state, establishment, reply key) since the last drain, each
//! at most once while it waits (record flag [`F_DIRTY`]), and the original keys of sessions
//! that ended. A full list drops the event and counts it ([`Journal::lost`]): the replica
//! then needs a full resync. Changes the replica itself applies
//! ([`SessionTable::apply`](super::SessionTable::apply)) are not journaled, so that two
//! nodes replicating to each other do not echo every change back.

use super::{
    F_DIRTY, F_LIVE, F_ORPHAN, F_REPLICA, F_UNCONFIRMED, Record, SessionInfo, SessionTable,
};
use crate::conntrack::key::SessionKey;
use alloc::vec::Vec;

/// A session that ended, as its replica finds it: the original key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::conntrack) struct Ended<K> {
    pub(in crate::conntrack) key: K,
    pub(in crate::conntrack) zone: u32,
    pub(in crate::conntrack) proto: u8,
}

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct Journal<K> {
    /// Most entries of each list; 0: no journal.
    cap: usize,
    dirty: Vec<u32>,
    ended: Vec<Ended<K>>,
    /// Set while a replica applies changes (not journaled).
    paused: bool,
    /// Events dropped since the last drain (a list was full).
    lost: u64,
    /// Per record: the primary a replica copy came from (the `origin` of
    /// [`SessionTable::apply_from`]), valid only while the record has [`F_REPLICA`]; empty
    /// until a chunk with an origin other than 0 is applied.
    origins: Vec<u8>,
    /// The origin of the chunk being applied.
    applying: u8,
}

impl<K> Journal<K> {
    pub(super) fn new(cap: u32) -> Self {
        let cap = cap as usize;
        Self {
            cap,
            dirty: Vec::with_capacity(cap),
            ended: Vec::with_capacity(cap),
            paused: false,
            lost: 0,
            origins: Vec::new(),
            applying: 0,
        }
    }

    /// Bytes allocated.
    pub(super) fn allocated_bytes(&self) -> usize
    where
        K: Copy,
    {
        self.dirty.capacity() * core::mem::size_of::<u32>()
            + self.ended.capacity() * core::mem::size_of::<Ended<K>>()
            + self.origins.capacity()
    }

    #[inline(always)]
    fn on(&self) -> bool {
        self.cap != 0 && !self.paused
    }
}

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// Notes that the session in slot `idx` was created or changed. No allocation: a full
    /// list counts the event lost.
    #[inline]
    pub(super) fn journal_mark(&mut self, idx: u32) {
        if !self.journal.on() {
            return;
        }
        self.journal_mark_cold(idx);
    }

    #[cold]
    #[inline(never)]
    fn journal_mark_cold(&mut self, idx: u32) {
        let Some(x) = self.recs.get_mut(idx as usize) else {
            return;
        };
        if x.flags & (F_DIRTY | F_REPLICA) != 0 {
            return;
        }
        if self.journal.dirty.len() < self.journal.cap {
            self.journal.dirty.push(idx);
            x.flags |= F_DIRTY;
        } else {
            self.journal.lost += 1;
            self.counters.journal_lost += 1;
        }
    }

    /// Notes that the session with `keys` and record `flags` (about to be freed) ended,
    /// unless it was a replica's copy.
    #[inline]
    pub(super) fn journal_end(&mut self, keys: [K; 2], zone: u32, proto: u8, flags: u8) {
        if !self.journal.on() || flags & F_REPLICA != 0 {
            return;
        }
        if self.journal.ended.len() < self.journal.cap {
            let [key, _] = keys;
            self.journal.ended.push(Ended { key, zone, proto });
        } else {
            self.journal.lost += 1;
            self.counters.journal_lost += 1;
        }
    }

    /// Every session's events are lost at once (the table was cleared).
    pub(super) fn journal_reset(&mut self) {
        if self.journal.cap == 0 {
            return;
        }
        let n = self.journal.dirty.len() + self.journal.ended.len() + 1;
        self.journal.dirty.clear();
        self.journal.ended.clear();
        self.journal.lost += n as u64;
        self.counters.journal_lost += n as u64;
    }

    /// Pauses (`true`) or resumes the journal around a replica's apply.
    pub(in crate::conntrack) fn journal_pause(&mut self, paused: bool) {
        self.journal.paused = paused;
    }

    /// Events waiting to be drained: (ended sessions, created or changed slots).
    pub(in crate::conntrack) fn journal_pending(&self) -> (usize, usize) {
        (self.journal.ended.len(), self.journal.dirty.len())
    }

    /// Takes up to `max` ended sessions off the front of the list, oldest first.
    pub(in crate::conntrack) fn journal_take_ended(
        &mut self,
        max: usize,
    ) -> impl Iterator<Item = Ended<K>> + '_ {
        let n = max.min(self.journal.ended.len());
        self.journal.ended.drain(..n)
    }

    /// Takes slots off the front of the changed list, oldest first, up to and including the
    /// `max`-th that still holds a session waiting to be sent (its [`F_DIRTY`] cleared);
    /// calls `f` on each such session. Slots whose session has since ended are dropped.
    pub(in crate::conntrack) fn journal_take_changed(
        &mut self,
        max: usize,
        mut f: impl FnMut(&Self, u32, &Record<K, V>),
    ) -> usize {
        let mut sent = 0usize;
        let mut taken = 0usize;
        for &idx in &self.journal.dirty {
            if sent == max {
                break;
            }
            taken += 1;
            if let Some(x) = self.recs.get(idx as usize)
                && x.flags & (F_LIVE | F_DIRTY) == F_LIVE | F_DIRTY
            {
                f(self, idx, x);
                sent += 1;
            }
        }
        // Clear the flags of the slots taken. A stale entry's slot may hold a newer session:
        // it was sent here, at its first entry, and its later entries find the flag clear.
        let taken_slots = self.journal.dirty.drain(..taken);
        for idx in taken_slots {
            if let Some(x) = self.recs.get_mut(idx as usize) {
                x.flags &= !F_DIRTY;
            }
        }
        sent
    }

    /// Calls `act` on the slot of every live replica copy `which` selects; returns how many.
    fn each_replica(
        &mut self,
        which: &mut dyn FnMut(&SessionInfo<V>) -> bool,
        mut act: impl FnMut(&mut Self, u32),
    ) -> usize {
        let mut n = 0;
        for idx in 0..self.recs.len() as u32 {
            let Some(x) = self.recs.get(idx as usize) else {
                break;
            };
            if x.flags & (F_LIVE | F_REPLICA) != F_LIVE | F_REPLICA || !which(&self.info_of(idx, x))
            {
                continue;
            }
            act(self, idx);
            n += 1;
        }
        n
    }

    /// Makes the replica copies `which` selects this table's own sessions (see
    /// [`SessionTable::take_over_replicas`]).
    pub(in crate::conntrack) fn promote_replicas(
        &mut self,
        which: &mut dyn FnMut(&SessionInfo<V>) -> bool,
    ) -> usize {
        self.each_replica(which, |t, idx| {
            if let Some(x) = t.recs.get_mut(idx as usize) {
                // Its own now: a resync its primary did not finish no longer removes it.
                x.flags &= !(F_REPLICA | F_UNCONFIRMED | F_ORPHAN);
            }
            t.journal_mark(idx);
        })
    }

    /// Marks the replica copies `which` selects as orphans (see
    /// [`SessionTable::orphan_replicas`]); returns how many.
    pub(in crate::conntrack) fn mark_orphans(
        &mut self,
        which: &mut dyn FnMut(&SessionInfo<V>) -> bool,
    ) -> usize {
        self.each_replica(which, |t, idx| {
            if let Some(x) = t.recs.get_mut(idx as usize) {
                x.flags |= F_ORPHAN;
            }
        })
    }

    /// A packet reached the orphan in slot `idx`: this table's own session from now on,
    /// journaled for its own replicas.
    #[cold]
    #[inline(never)]
    pub(super) fn adopt_orphan(&mut self, idx: u32) {
        if let Some(x) = self.recs.get_mut(idx as usize) {
            x.flags &= !(F_REPLICA | F_UNCONFIRMED | F_ORPHAN);
        }
        self.counters.orphans_adopted += 1;
        self.journal_mark(idx);
    }

    /// Marks the replica copies `which` selects as unconfirmed (see
    /// [`SessionTable::begin_resync`]); returns how many.
    pub(in crate::conntrack) fn mark_unconfirmed(
        &mut self,
        which: &mut dyn FnMut(&SessionInfo<V>) -> bool,
    ) -> usize {
        self.each_replica(which, |t, idx| {
            if let Some(x) = t.recs.get_mut(idx as usize) {
                x.flags |= F_UNCONFIRMED;
            }
        })
    }

    /// Removes the replica copies `which` selects that are still unconfirmed (see
    /// [`SessionTable::end_resync`]), telling `end` of each; returns how many.
    pub(in crate::conntrack) fn remove_unconfirmed(
        &mut self,
        which: &mut dyn FnMut(&SessionInfo<V>) -> bool,
        end: &mut dyn FnMut(&SessionInfo<V>),
    ) -> usize {
        let mut n = 0;
        for idx in 0..self.recs.len() as u32 {
            let Some(x) = self.recs.get(idx as usize) else {
                break;
            };
            if x.flags & (F_LIVE | F_UNCONFIRMED) != F_LIVE | F_UNCONFIRMED {
                continue;
            }
            let info = self.info_of(idx, x);
            if !which(&info) {
                continue;
            }
            self.remove_idx(idx);
            self.counters.removed += 1;
            end(&info);
            n += 1;
        }
        n
    }

    /// Marks the live session in slot `idx` as a replica's copy, of the primary whose chunk
    /// is being applied.
    pub(super) fn mark_replica(&mut self, idx: u32) {
        if let Some(x) = self.recs.get_mut(idx as usize) {
            x.flags |= F_REPLICA;
        }
        self.set_origin(idx);
    }

    /// Records the origin of the chunk being applied for the copy in slot `idx`. Cold:
    /// allocates the per-record origins at the first origin other than 0.
    pub(in crate::conntrack) fn set_origin(&mut self, idx: u32) {
        let o = self.journal.applying;
        if o == 0 && self.journal.origins.is_empty() {
            return;
        }
        if self.journal.origins.is_empty() {
            self.journal.origins = alloc::vec![0; self.recs.len()];
        }
        if let Some(slot) = self.journal.origins.get_mut(idx as usize) {
            *slot = o;
        }
    }

    /// The primary the record in slot `idx` (flags `flags`) is a copy of: 0 for this table's
    /// own sessions.
    #[inline]
    pub(super) fn origin_of(&self, idx: u32, flags: u8) -> u8 {
        if flags & F_REPLICA == 0 {
            return 0;
        }
        self.journal.origins.get(idx as usize).copied().unwrap_or(0)
    }

    /// Whether the live record in slot `idx` is a replica's copy.
    pub(in crate::conntrack) fn is_replica(&self, idx: u32) -> bool {
        self.recs
            .get(idx as usize)
            .is_some_and(|x| x.flags & F_REPLICA != 0)
    }

    /// Sets the origin of what is applied next (see [`SessionTable::apply_from`]).
    pub(in crate::conntrack) fn set_applying(&mut self, origin: u8) {
        self.journal.applying = origin;
    }

    /// Events lost since the last call (and the count reset).
    pub(in crate::conntrack) fn journal_take_lost(&mut self) -> u64 {
        core::mem::take(&mut self.journal.lost)
    }
}
