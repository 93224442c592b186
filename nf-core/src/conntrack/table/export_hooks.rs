//! What [`export`](super::super::export) needs from the table: live records, deadlines, and
//! inserting an imported session as it was.

use super::{
    F_FIN_REPLY, F_LIVE, F_ORPHAN, F_REPLICA, F_UNCONFIRMED, Hit, InsertError, Record, SessionInfo,
    SessionTable,
};
use crate::conntrack::key::SessionKey;
use crate::conntrack::state::SessionState;
use crate::flow::FlowKey;
use crate::meta::SessionRef;
use crate::time::{Duration, Instant};

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// Live records from slot `from` on.
    pub(in crate::conntrack) fn records_from(
        &self,
        from: u32,
    ) -> impl Iterator<Item = (u32, &Record<K, V>)> {
        (0u32..)
            .zip(self.recs.iter())
            .skip(from as usize)
            .filter(|(_, r)| r.flags & (F_LIVE | F_REPLICA) == F_LIVE)
    }

    /// The deadline instant of a record.
    pub(in crate::conntrack) fn deadline_of(&self, x: &Record<K, V>) -> Instant {
        self.tick_instant(self.unwrap_tick(x.deadline))
    }

    /// The hashes of an imported session's keys (original, reply), their home buckets
    /// prefetched: computed for a group of records before the first of them is inserted,
    /// so that the inserts' memory accesses overlap. `None` for keys that cannot form a
    /// session (the insert reports why).
    pub(in crate::conntrack) fn prepare_imported(
        &self,
        original: &FlowKey,
        reply: &FlowKey,
    ) -> Option<[u64; 2]> {
        let (ko, kr) = Self::insert_keys(original, reply).ok()?;
        let h = [
            self.hash(&ko, original.zone.0, original.proto),
            self.hash(&kr, reply.zone.0, reply.proto),
        ];
        self.prefetch_home(h[0]);
        self.prefetch_home(h[1]);
        Some(h)
    }

    /// The hash of `key` in this table, its home bucket prefetched (for
    /// [`Self::lookup_hashed`] a little later); `None` for a key of the other family.
    pub(in crate::conntrack) fn prepare_lookup(&self, key: &FlowKey) -> Option<u64> {
        let k = K::from_flow(key)?;
        let h = self.hash(&k, key.zone.0, key.proto);
        self.prefetch_home(h);
        Some(h)
    }

    /// [`Self::lookup`] with the key's hash known (from [`Self::prepare_lookup`] or
    /// [`Self::prepare_imported`]).
    pub(in crate::conntrack) fn lookup_hashed(&self, key: &FlowKey, h: u64) -> Option<Hit> {
        self.find(&K::from_flow(key)?, key.zone.0, key.proto, h)
    }

    /// Inserts an imported session with an explicit remaining lifetime, its keys' hashes
    /// from [`Self::prepare_imported`] (`hashes`): admitted like a new session, `on_evict`
    /// told of a session early drop evicts for it, or, without `on_evict` (a replica
    /// applying what its primary admitted), in any free slot, beyond zone quotas, as a
    /// replica's copy ([`super::F_REPLICA`]).
    #[expect(clippy::too_many_arguments, reason = "one imported record's fields")]
    pub(in crate::conntrack) fn insert_imported(
        &mut self,
        now: Instant,
        original: &FlowKey,
        reply: &FlowKey,
        hashes: [u64; 2],
        state: SessionState,
        established: bool,
        fin_reply: bool,
        remaining: Duration,
        value: V,
        mut on_evict: Option<&mut impl FnMut(&SessionInfo<V>)>,
    ) -> Result<SessionRef, InsertError> {
        let (ko, kr) = Self::insert_keys(original, reply)?;
        let zones = [original.zone.0, reply.zone.0];
        let r = self.insert_hashed(
            now,
            [ko, kr],
            hashes,
            zones,
            original.proto,
            state,
            value,
            on_evict.as_deref_mut(),
        )?;
        if on_evict.is_none() {
            self.mark_replica(r.index);
        }
        self.restore(r, now, state, established, fin_reply, remaining);
        Ok(r)
    }

    /// Gives live session `r` an exported record's state, flags and remaining lifetime
    /// (measured from `now`, the deadline replaced exactly, earlier or later). A session
    /// already established stays so.
    pub(in crate::conntrack) fn restore(
        &mut self,
        r: SessionRef,
        now: Instant,
        state: SessionState,
        established: bool,
        fin_reply: bool,
        remaining: Duration,
    ) {
        if !self.is_live(r) {
            return;
        }
        if established {
            self.set_state(r, now, state, true);
        } else if let Some(x) = self.recs.get_mut(r.index as usize) {
            x.state = state as u8;
        }
        let d = (now + remaining).as_nanos().div_ceil(self.gran);
        let d32 = d as u32;
        if let Some(x) = self.recs.get_mut(r.index as usize) {
            // A primary's record confirms the session (a resync under way keeps it).
            x.flags = (x.flags & !(F_FIN_REPLY | F_UNCONFIRMED | F_ORPHAN))
                | if fin_reply { F_FIN_REPLY } else { 0 };
            // Replace the deadline exactly (earlier or later) by re-filing the timer.
            x.deadline = d32;
        }
        self.timer_unlink(r.index);
        self.timer_link(self.slot_for(d32), r.index);
    }
}
