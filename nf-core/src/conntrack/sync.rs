//! Continuous session sync: a node sends what changed in its table since the last time
//! (sessions created or changed, sessions ended) to a replica, which applies it, so that the
//! replica already holds the node's sessions when the node fails.
//!
//! The primary's table keeps a change journal ([`TableConfig::journal`](super::TableConfig));
//! [`SessionTable::export_changes`] drains it into one delta chunk;
//! [`SessionTable::apply`] on the replica removes the ended sessions, then creates the new
//! ones and refreshes the changed ones (state, flags, remaining lifetime). `apply` also takes
//! a full [`export`](SessionTable::export) chunk, every session in it as created or changed:
//! that is the periodic sweep which refreshes the lifetimes of long-lived sessions (a
//! refreshed deadline is not a journal event: it would be one per packet), and, between
//! [`SessionTable::begin_resync`] and [`SessionTable::end_resync`], the full resync that
//! repairs a replica after lost events ([`ChangeProgress::lost`]): copies no record
//! confirms are removed.
//!
//! One delta chunk (integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `NFCD` |
//! | 1 | format version (1) |
//! | 1 | address family (4 or 6) |
//! | 2 | value length `v` (as in an export chunk) |
//! | 4 | ended count `e` |
//! | 4 | changed count `c` |
//! | 4 | record length: `20 + 2 * key + v`, the export chunk's |
//! | e × (8 + key) | zone (4), protocol (1), reserved 0 (3), original key |
//! | c × record | as in an export chunk ([`super::export`]) |
//! | 8 | SipHash-1-3 (public key `nf-ct-delta-v1!!`) of everything before |
//!
//! Ended sessions come before changed ones, and a drain sends every ended session before
//! any changed one, so a key that ended and opened again since the last drain is removed,
//! then created. The replica's own removals and creations by `apply` are not journaled, nor
//! are the changes and ends of the copies `apply` made (their primary's to send) until the
//! replica takes them over ([`SessionTable::take_over_replicas`]): two nodes may replicate
//! to each other without echoing every change back.

use super::export::{
    Adopt, Adopted, HEADER, IMPORT_GROUP, ImportError, MAGIC, Parsed, SessionValue, TRAILER,
    checksum_keyed, parse_record, record_len,
};
use super::key::SessionKey;
use super::table::{SessionInfo, SessionTable};
use crate::flow::ZoneId;
use crate::meta::Direction;
use crate::time::Instant;
use alloc::vec::Vec;

const DELTA_MAGIC: [u8; 4] = *b"NFCD";
/// Current delta chunk format version.
pub const DELTA_VERSION: u8 = 1;
const DELTA_HEADER: usize = 20;
const DELTA_KEY: [u8; 16] = *b"nf-ct-delta-v1!!";

/// What one [`SessionTable::export_changes`] call wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeProgress {
    /// Ended sessions in the chunk.
    pub ended: usize,
    /// Created or changed sessions in the chunk.
    pub changed: usize,
    /// Events still wait in the journal (the chunk reached `max`): drain again.
    pub pending: bool,
    /// Events the journal dropped since the last drain (it was full): the replica missed
    /// them; give it a full resync ([`SessionTable::begin_resync`], every
    /// [`SessionTable::export`] chunk through [`SessionTable::apply`],
    /// [`SessionTable::end_resync`]).
    pub lost: u64,
}

/// What one [`SessionTable::apply`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Sessions created.
    pub created: usize,
    /// Sessions already here with the same keys, given the record's state and lifetime.
    pub refreshed: usize,
    /// Sessions here that held a record's original or reply key in another session, or
    /// were an older session of the same keys (established here, not in the record): the
    /// primary's record wins; removed before the record's session was created.
    pub replaced: usize,
    /// Ended sessions removed.
    pub ended: usize,
    /// Ended sessions that were not here (never sent, already expired, or removed).
    pub absent: usize,
    /// Records not created: the zone at its quota or the table full.
    pub skipped: usize,
    /// Records a session service did not take over (see [`super::ImportReport::refused`]).
    pub refused: usize,
}

/// The layout of a chunk `apply` takes, checked.
struct Chunk<'a> {
    ended: &'a [u8],
    ended_len: usize,
    records: &'a [u8],
    record_len: usize,
}

fn ended_len<K: SessionKey>() -> usize {
    8 + K::ENCODED_LEN
}

/// An ended-session entry: (zone, protocol, original key).
fn parse_ended<K: SessionKey>(b: &[u8]) -> Option<(u32, u8, K)> {
    let (&[z0, z1, z2, z3, proto, r0, r1, r2], key) = b.split_first_chunk::<8>()?;
    if [r0, r1, r2] != [0; 3] || key.len() != K::ENCODED_LEN {
        return None;
    }
    Some((u32::from_be_bytes([z0, z1, z2, z3]), proto, K::decode(key)?))
}

/// The address family of a delta or export chunk (its sixth byte: 4 or 6).
pub(super) fn chunk_family(bytes: &[u8]) -> Result<u8, ImportError> {
    let header = bytes
        .first_chunk::<HEADER>()
        .ok_or(ImportError::Truncated)?;
    let magic = header.first_chunk::<4>();
    if magic != Some(&MAGIC) && magic != Some(&DELTA_MAGIC) {
        return Err(ImportError::BadMagic);
    }
    Ok(header[5])
}

/// Checks a delta or export chunk's framing and checksum.
fn split_chunk<K: SessionKey>(bytes: &[u8], vlen: usize) -> Result<Chunk<'_>, ImportError> {
    let magic = bytes.first_chunk::<4>().ok_or(ImportError::Truncated)?;
    let delta = *magic == DELTA_MAGIC;
    if !delta && *magic != MAGIC {
        return Err(ImportError::BadMagic);
    }
    let (hlen, version, key) = if delta {
        (DELTA_HEADER, DELTA_VERSION, DELTA_KEY)
    } else {
        (
            HEADER,
            super::export::EXPORT_VERSION,
            super::export::CHECK_KEY,
        )
    };
    let header = bytes.get(..hlen).ok_or(ImportError::Truncated)?;
    let be32 = |at: usize| {
        header
            .get(at..at + 4)
            .and_then(|b| b.first_chunk::<4>())
            .map_or(0, |b| u32::from_be_bytes(*b)) as usize
    };
    let &[_, _, _, _, ver, fam, v0, v1, ..] = header else {
        return Err(ImportError::Truncated);
    };
    if ver != version {
        return Err(ImportError::Version(ver));
    }
    if fam != K::FAMILY as u8 {
        return Err(ImportError::WrongFamily);
    }
    if usize::from(u16::from_be_bytes([v0, v1])) != vlen {
        return Err(ImportError::ValueLength);
    }
    let (ended, changed, rl) = if delta {
        (be32(8), be32(12), be32(16))
    } else {
        (0, be32(8), be32(12))
    };
    if rl != record_len::<K>(vlen) {
        return Err(ImportError::Corrupt);
    }
    let el = ended_len::<K>();
    let ended_bytes = ended.checked_mul(el).ok_or(ImportError::Corrupt)?;
    let body = changed
        .checked_mul(rl)
        .and_then(|b| b.checked_add(ended_bytes))
        .ok_or(ImportError::Corrupt)?;
    let rest = bytes.get(hlen..).ok_or(ImportError::Truncated)?;
    if rest.len() < body + TRAILER {
        return Err(ImportError::Truncated);
    }
    if rest.len() > body + TRAILER {
        return Err(ImportError::Corrupt);
    }
    let (signed, trailer) = bytes.split_at(hlen + body);
    let want = u64::from_be_bytes(*trailer.first_chunk().ok_or(ImportError::Truncated)?);
    if checksum_keyed(&key, signed) != want {
        return Err(ImportError::Checksum);
    }
    let (ended, records) = rest.split_at(ended_bytes);
    Ok(Chunk {
        ended,
        ended_len: el,
        records: records.get(..body - ended_bytes).unwrap_or(&[]),
        record_len: rl,
    })
}

impl<K: SessionKey, V: SessionValue> SessionTable<K, V> {
    /// Drains up to `max` events of the change journal ([`TableConfig::journal`](super::TableConfig::journal))
    /// into one delta chunk appended to `out`, for a replica's [`Self::apply`]: ended
    /// sessions first, then the sessions created or changed since the last drain, their
    /// remaining lifetimes measured from `now`. With no journal, or nothing in it, the
    /// chunk is empty (and still valid). Cold path: allocates in `out`.
    ///
    /// ```
    /// use nf_core::conntrack::{SessionState, SessionTable, TableConfig, V4Key};
    /// use nf_core::{FlowKey, Instant, ZoneId, flow::proto};
    ///
    /// let mut cfg = TableConfig::new(1024, *b"shared by nodes!");
    /// cfg.journal = 256;
    /// let mut primary: SessionTable<V4Key, u32> = SessionTable::new(cfg)?;
    /// let mut replica: SessionTable<V4Key, u32> = SessionTable::new(cfg)?;
    /// let now = Instant::from_nanos(1_000_000_000);
    /// let k = FlowKey::v4(ZoneId(1), [10, 0, 0, 1], [10, 0, 0, 2], proto::UDP, 5000, 53);
    /// let r = primary.insert(now, &k, &k.reversed(), SessionState::UdpUnreplied, 7)?;
    ///
    /// let mut chunk = Vec::new();
    /// primary.export_changes(now, 1024, &mut chunk);
    /// assert_eq!(replica.apply(now, &chunk)?.created, 1);
    /// assert!(replica.lookup(&k.reversed()).is_some());
    ///
    /// // The session ends on the primary: the next delta removes it on the replica.
    /// primary.remove(r);
    /// chunk.clear();
    /// let sent = primary.export_changes(now, 1024, &mut chunk);
    /// assert_eq!((sent.ended, sent.changed), (1, 0));
    /// assert_eq!(replica.apply(now, &chunk)?.ended, 1);
    /// assert!(replica.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn export_changes(
        &mut self,
        now: Instant,
        max: usize,
        out: &mut Vec<u8>,
    ) -> ChangeProgress {
        self.export_changes_with(now, max, out, V::ENCODED_LEN, |v, b| v.encode(b))
    }

    /// Applies a delta chunk made by another node's [`Self::export_changes`], or an export
    /// chunk of its [`Self::export`] (a sweep: every session in it created or refreshed),
    /// lifetimes measured from `now`: ended sessions removed, new sessions created, present
    /// ones given the record's state, flags and lifetime. A session here that holds one of
    /// a record's keys in another pairing is removed first (the primary's record wins). The
    /// chunk is checked completely before anything changes; nothing `apply` does enters
    /// this table's own journal. Cold path.
    ///
    /// # Errors
    /// [`ImportError`] for truncated, corrupt or incompatible input; the table is unchanged.
    pub fn apply(&mut self, now: Instant, bytes: &[u8]) -> Result<ApplyReport, ImportError> {
        self.apply_from(now, 0, bytes)
    }

    /// [`Self::apply`] for a node replicated by several primaries: the copies it creates or
    /// refreshes remember `origin` (the sending node, as this node numbers its peers;
    /// [`SessionInfo::origin`]), so that one primary's resync and failure can be handled
    /// for its copies alone ([`Self::begin_resync`], [`Self::end_resync_where`],
    /// [`Self::take_over_replicas`] selecting by origin).
    ///
    /// # Errors
    /// [`ImportError`] for truncated, corrupt or incompatible input; the table is unchanged.
    pub fn apply_from(
        &mut self,
        now: Instant,
        origin: u8,
        bytes: &[u8],
    ) -> Result<ApplyReport, ImportError> {
        self.apply_with(
            now,
            origin,
            bytes,
            V::ENCODED_LEN,
            &mut super::export::Decode,
        )
    }
}

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// Makes the replica copies that `which` selects (sessions [`Self::apply`] created) this
    /// table's own, for when their primary failed and this node carries them on: from now
    /// on their changes and their ends enter this table's journal (each is journaled as
    /// changed now, for this node's own replica). Until then a replica copy's changes and
    /// end are its primary's to send: a copy expiring here, unrefreshed by the traffic its
    /// primary sees, must not remove the primary's session when two nodes replicate to each
    /// other. A resync under way ([`Self::begin_resync`]) no longer removes the copies taken
    /// over (their primary may have died in the middle of it). `O(capacity)`, cold path;
    /// returns how many sessions it took over.
    pub fn take_over_replicas(&mut self, mut which: impl FnMut(&SessionInfo<V>) -> bool) -> usize {
        self.promote_replicas(&mut which)
    }

    /// The lazy [`Self::take_over_replicas`], for a fleet where every node holds copies of
    /// every other's sessions and the router in front decides which node a failed node's
    /// flows go to: the copies `which` selects become orphans, and the first packet that
    /// reaches one here ([`Self::track`], or the stage's hit) makes it this table's own
    /// session, journaled from then on ([`TableCounters::orphans_adopted`](super::TableCounters::orphans_adopted));
    /// the orphans no packet reaches stay copies and expire here unnoticed, so that each
    /// session ends up owned by the one node that carries its flow, not by every survivor.
    /// An orphan leaves the steady path (its next packet takes the full one, once). A record
    /// from a primary (the same node come back, or another that took the session over)
    /// makes an orphan a plain copy again. `O(capacity)`, cold path; returns how many.
    pub fn orphan_replicas(&mut self, mut which: impl FnMut(&SessionInfo<V>) -> bool) -> usize {
        self.mark_orphans(&mut which)
    }

    /// Starts a full resync from a primary, after it lost journal events
    /// ([`ChangeProgress::lost`]): the replica copies `which` selects (the primary's) are
    /// marked unconfirmed; the primary then sends every session it has (its
    /// [`Self::export`] chunks, given to [`Self::apply`], which confirms each session it
    /// refreshes or creates), and [`Self::end_resync`] removes the copies left unconfirmed
    /// (sessions whose end was lost). Packets meanwhile see every copy as usual.
    /// `O(capacity)`, cold path; returns how many copies were marked.
    ///
    /// ```
    /// use nf_core::conntrack::{SessionState, SessionTable, TableConfig, V4Key};
    /// use nf_core::{FlowKey, Instant, ZoneId, flow::proto};
    ///
    /// let mut cfg = TableConfig::new(1024, *b"shared by nodes!");
    /// cfg.journal = 1;
    /// let mut primary: SessionTable<V4Key, u32> = SessionTable::new(cfg)?;
    /// let mut replica: SessionTable<V4Key, u32> = SessionTable::new(cfg)?;
    /// let now = Instant::from_nanos(1_000_000_000);
    /// let k = |p| FlowKey::v4(ZoneId(1), [10, 0, 0, 1], [10, 0, 0, 2], proto::UDP, p, 53);
    /// let mut chunk = Vec::new();
    /// let mut open = |t: &mut SessionTable<V4Key, u32>, p| {
    ///     t.insert(now, &k(p), &k(p).reversed(), SessionState::UdpUnreplied, u32::from(p))
    /// };
    /// let mut sync = |from: &mut SessionTable<V4Key, u32>, to: &mut SessionTable<V4Key, u32>| {
    ///     chunk.clear();
    ///     let sent = from.export_changes(now, 16, &mut chunk);
    ///     to.apply(now, &chunk).map(|_| sent.lost)
    /// };
    /// let (a, b) = (open(&mut primary, 1)?, open(&mut primary, 2)?);
    /// assert_eq!(sync(&mut primary, &mut replica)?, 1, "a one-entry journal");
    /// replica.begin_resync(|_| true);
    /// let mut sweep = Vec::new();
    /// primary.export(now, 0, usize::MAX, &mut sweep);
    /// replica.apply(now, &sweep)?;
    /// assert_eq!((replica.end_resync(), replica.len()), (0, 2));
    ///
    /// // Both sessions end: the second end is lost, and the replica keeps that copy.
    /// primary.remove(a);
    /// primary.remove(b);
    /// assert_eq!(sync(&mut primary, &mut replica)?, 1);
    /// assert_eq!(replica.len(), 1);
    /// // The resync: everything the primary has (nothing), then the rest goes.
    /// replica.begin_resync(|_| true);
    /// sweep.clear();
    /// primary.export(now, 0, usize::MAX, &mut sweep);
    /// replica.apply(now, &sweep)?;
    /// assert_eq!(replica.end_resync(), 1);
    /// assert!(replica.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn begin_resync(&mut self, mut which: impl FnMut(&SessionInfo<V>) -> bool) -> usize {
        self.mark_unconfirmed(&mut which)
    }

    /// Ends a resync ([`Self::begin_resync`]): removes the copies no record confirmed since;
    /// returns how many. `O(capacity)`, cold path.
    pub fn end_resync(&mut self) -> usize {
        self.remove_unconfirmed(&mut |_| true, &mut |_| {})
    }

    /// [`Self::end_resync`] for the copies `which` selects only: a node replicated by
    /// several primaries ends one primary's resync while another's may be under way (select
    /// by [`SessionInfo::origin`]).
    pub fn end_resync_where(&mut self, mut which: impl FnMut(&SessionInfo<V>) -> bool) -> usize {
        self.remove_unconfirmed(&mut which, &mut |_| {})
    }
}

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// [`Self::export_changes`] with each value written by `encode` (exactly `vlen` bytes).
    pub(in crate::conntrack) fn export_changes_with(
        &mut self,
        now: Instant,
        max: usize,
        out: &mut Vec<u8>,
        vlen: usize,
        mut encode: impl FnMut(&V, &mut [u8]),
    ) -> ChangeProgress {
        let start = out.len();
        out.extend_from_slice(&DELTA_MAGIC);
        out.push(DELTA_VERSION);
        out.push(K::FAMILY as u8);
        out.extend_from_slice(&u16::try_from(vlen).unwrap_or(u16::MAX).to_be_bytes());
        let counts_at = out.len();
        out.extend_from_slice(&[0; 8]);
        let rl = record_len::<K>(vlen);
        out.extend_from_slice(&u32::try_from(rl).unwrap_or(u32::MAX).to_be_bytes());
        let mut buf = [0u8; 128];
        let mut ended = 0usize;
        for e in self.journal_take_ended(max) {
            out.extend_from_slice(&e.zone.to_be_bytes());
            out.extend_from_slice(&[e.proto, 0, 0, 0]);
            e.key.encode(&mut buf);
            out.extend_from_slice(buf.get(..K::ENCODED_LEN).unwrap_or(&[]));
            ended += 1;
        }
        // Changed sessions only once every ended one is out (see the module docs).
        let changed = if self.journal_pending().0 == 0 {
            self.journal_take_changed(max - ended, |t, idx, x| {
                t.write_record(now, idx, x, out, vlen, &mut encode);
            })
        } else {
            0
        };
        let counts = [ended, changed].map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        if let Some(c) = out.get_mut(counts_at..counts_at + 8) {
            let [a, b] = counts.map(u32::to_be_bytes);
            c.copy_from_slice(&[a, b].concat());
        }
        let sum = checksum_keyed(&DELTA_KEY, out.get(start..).unwrap_or(&[]));
        out.extend_from_slice(&sum.to_be_bytes());
        let (e, c) = self.journal_pending();
        ChangeProgress {
            ended,
            changed,
            pending: e + c != 0,
            lost: self.journal_take_lost(),
        }
    }

    /// [`Self::apply`] with values of `vlen` bytes made by `adopt` (which also hears of the
    /// sessions removed).
    pub(in crate::conntrack) fn apply_with<A: Adopt<V>>(
        &mut self,
        now: Instant,
        origin: u8,
        bytes: &[u8],
        vlen: usize,
        adopt: &mut A,
    ) -> Result<ApplyReport, ImportError> {
        let chunk = split_chunk::<K>(bytes, vlen)?;
        for e in chunk.ended.chunks_exact(chunk.ended_len) {
            parse_ended::<K>(e).ok_or(ImportError::Corrupt)?;
        }
        for rec in chunk.records.chunks_exact(chunk.record_len) {
            parse_record::<K>(rec, vlen)
                .filter(|r| adopt.check(r.value))
                .ok_or(ImportError::Corrupt)?;
        }
        let mut report = ApplyReport::default();
        self.journal_pause(true);
        self.set_applying(origin);
        // In groups, as an import does: every key of a group hashed and its bucket
        // prefetched before the first is looked up, so that the misses overlap.
        let el = chunk.ended_len;
        for group in chunk.ended.chunks(el * IMPORT_GROUP) {
            let mut flows = [None; IMPORT_GROUP];
            for (e, f) in group.chunks_exact(el).zip(flows.iter_mut()) {
                *f = parse_ended::<K>(e).and_then(|(zone, proto, key)| {
                    let flow = key.to_flow(ZoneId(zone), proto);
                    Some((flow, self.prepare_lookup(&flow)?))
                });
            }
            for (flow, h) in flows.into_iter().flatten() {
                match self.lookup_hashed(&flow, h) {
                    Some(h) if h.direction == Direction::Original => {
                        if let Some(info) = self.remove_info(h.session) {
                            adopt.end(now, &info);
                        }
                        report.ended += 1;
                    }
                    _ => report.absent += 1,
                }
            }
        }
        let rl = chunk.record_len;
        for group in chunk.records.chunks(rl * IMPORT_GROUP) {
            let mut hashes = [None; IMPORT_GROUP];
            for (rec, h) in group.chunks_exact(rl).zip(hashes.iter_mut()) {
                if let Some(r) = parse_record::<K>(rec, vlen) {
                    let (original, reply) = r.flows();
                    *h = self.prepare_imported(&original, &reply);
                }
            }
            for (rec, h) in group.chunks_exact(rl).zip(hashes) {
                if let Some(r) = parse_record::<K>(rec, vlen) {
                    self.upsert(now, &r, h, adopt, &mut report);
                }
            }
        }
        self.journal_pause(false);
        self.set_applying(0);
        Ok(report)
    }

    /// One record of [`Self::apply`]: refresh the same session, or replace whatever holds
    /// its keys and create it.
    fn upsert<A: Adopt<V>>(
        &mut self,
        now: Instant,
        r: &Parsed<'_, K>,
        hashes: Option<[u64; 2]>,
        adopt: &mut A,
        report: &mut ApplyReport,
    ) {
        let (original, reply) = r.flows();
        let [ho, hr] = hashes.map_or([None; 2], |h| h.map(Some));
        let find = |t: &Self, key, h: Option<u64>| h.and_then(|h| t.lookup_hashed(key, h));
        if let Some(h) = find(self, &original, ho) {
            // The same session: the same pairing of keys, and not established here while the
            // primary's is not (a session never leaves establishment: that would be a new
            // session of the same keys, whose predecessor's end was lost).
            let same = h.direction == Direction::Original
                && self
                    .info(h.session)
                    .is_some_and(|s| s.reply == reply && (r.established || !s.established));
            if same {
                let (state, est, fin) = (r.state, r.established, r.fin_reply);
                self.restore(h.session, now, state, est, fin, r.remaining);
                if self.is_replica(h.session.index) {
                    // The copy's primary is whoever sent it last.
                    self.set_origin(h.session.index);
                }
                report.refreshed += 1;
                return;
            }
            if let Some(info) = self.remove_info(h.session) {
                adopt.end(now, &info);
            }
            report.replaced += 1;
        }
        if let Some(h) = find(self, &reply, hr) {
            if let Some(info) = self.remove_info(h.session) {
                adopt.end(now, &info);
            }
            report.replaced += 1;
        }
        match self.adopt_record(now, r, hashes, adopt, false) {
            Adopted::Installed => report.created += 1,
            Adopted::Refused => report.refused += 1,
            Adopted::Skipped => report.skipped += 1,
        }
    }
}
