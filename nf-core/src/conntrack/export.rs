//! Session export and import: a compact, versioned, checksummed binary encoding so a peer
//! can take over a failed node's flows.
//!
//! One export chunk (all integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `NFCT` |
//! | 1 | format version (2; version 1, without the reply zone, is rejected as [`ImportError::Version`]) |
//! | 1 | address family (4 or 6) |
//! | 2 | value length `v` ([`SessionValue::ENCODED_LEN`]; for a stage's export, its services' [`SessionService::EXPORT_LEN`](super::SessionService::EXPORT_LEN)) |
//! | 4 | record count `n` |
//! | 4 | record length: `20 + 2 * key + v` (key: 12 bytes for IPv4, 36 for IPv6) |
//! | n × record | zone (4), reply zone (4: the zone of the reply key, the same as zone unless the session is cross-zone), protocol (1), [`SessionState`] (1), flags (1: bit 0 established, bit 1 first FIN from the reply side), reserved 0 (1), remaining lifetime in ns (8), original key, reply key (addresses, then ports), value |
//! | 8 | SipHash-1-3 (public key `nf-ct-export-v1!`) of everything before |
//!
//! Lifetimes are relative to the `now` given to export and import, so the two nodes'
//! clocks need not agree. Import checks everything before it changes anything: any
//! truncation, corruption or incompatibility is an [`ImportError`], never a panic.

use super::key::SessionKey;
use super::state::SessionState;
use super::table::{F_ASSURED, F_FIN_REPLY, InsertError, Record, SessionInfo, SessionTable};
use crate::flow::{FlowKey, ZoneId};
use crate::time::{Duration, Instant};
use alloc::vec::Vec;
use core::fmt;
use core::hash::Hasher as _;
use siphasher::sip::SipHasher13;

pub(super) const MAGIC: [u8; 4] = *b"NFCT";
/// Current export format version.
pub const EXPORT_VERSION: u8 = 2;
pub(super) const HEADER: usize = 16;
pub(super) const TRAILER: usize = 8;
/// Records whose keys an import hashes (and whose buckets it prefetches) before inserting
/// the first of them.
pub(super) const IMPORT_GROUP: usize = 16;
pub(super) const CHECK_KEY: [u8; 16] = *b"nf-ct-export-v1!";

/// A session value that can be exported: a fixed-length byte encoding.
pub trait SessionValue: Copy + Default {
    /// Encoded length in bytes.
    const ENCODED_LEN: usize;
    /// Writes exactly [`Self::ENCODED_LEN`] bytes to the front of `out`.
    fn encode(&self, out: &mut [u8]);
    /// Reads a value; `None` if `bytes` is too short or not a valid encoding.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl SessionValue for () {
    const ENCODED_LEN: usize = 0;
    fn encode(&self, _out: &mut [u8]) {}
    fn decode(_bytes: &[u8]) -> Option<Self> {
        Some(())
    }
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl SessionValue for $t {
            const ENCODED_LEN: usize = core::mem::size_of::<$t>();
            fn encode(&self, out: &mut [u8]) {
                if let Some(d) = out.get_mut(..Self::ENCODED_LEN) {
                    d.copy_from_slice(&self.to_be_bytes());
                }
            }
            fn decode(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_be_bytes(*bytes.first_chunk()?))
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64, u128);

macro_rules! array_value {
    ($($n:literal),*) => {$(
        impl SessionValue for [u8; $n] {
            const ENCODED_LEN: usize = $n;
            fn encode(&self, out: &mut [u8]) {
                if let Some(d) = out.get_mut(..$n) {
                    d.copy_from_slice(self);
                }
            }
            fn decode(bytes: &[u8]) -> Option<Self> {
                bytes.first_chunk().copied()
            }
        }
    )*};
}
array_value!(1, 2, 4, 6, 8, 12, 16, 20, 24, 32);

/// Why an import was rejected. The table is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportError {
    /// Shorter than its header says.
    Truncated,
    /// Not an export chunk.
    BadMagic,
    /// A format version this build does not read.
    Version(u8),
    /// Exported from the other address family's table.
    WrongFamily,
    /// The value length differs from this table's value type (or from the stage's
    /// services' [`SessionService::EXPORT_LEN`](super::SessionService::EXPORT_LEN)).
    ValueLength,
    /// The checksum does not match: the bytes were damaged.
    Checksum,
    /// A field holds an impossible value (record length, state, flags, equal keys in the
    /// same zone, ...).
    Corrupt,
    /// The stage's session services cannot take sessions over
    /// ([`SessionService::EXPORT_LEN`](super::SessionService::EXPORT_LEN) is `None`).
    Unsupported,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for ImportError {}

/// Why [`Conntrack::export`](super::Conntrack::export) wrote nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportError {
    /// The stage's session services cannot hand sessions over
    /// ([`SessionService::EXPORT_LEN`](super::SessionService::EXPORT_LEN) is `None`).
    Unsupported,
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for ExportError {}

/// What one [`SessionTable::export`] call wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportProgress {
    /// Records in the chunk.
    pub records: usize,
    /// Where the next chunk starts, or `None` when the table is done.
    pub next: Option<u32>,
}

/// What one [`SessionTable::import`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// Sessions installed.
    pub imported: usize,
    /// Valid records not installed: a key already present, the zone at its quota, or the
    /// table full.
    pub skipped: usize,
    /// Valid records a session service did not take over
    /// ([`SessionService::import_value`](super::SessionService::import_value) said no: for
    /// example a load balancer that does not know the session's backend); not installed.
    pub refused: usize,
}

pub(super) fn record_len<K: SessionKey>(vlen: usize) -> usize {
    20 + 2 * K::ENCODED_LEN + vlen
}

fn checksum(bytes: &[u8]) -> u64 {
    checksum_keyed(&CHECK_KEY, bytes)
}

/// SipHash-1-3 of `bytes` under the public `key` of a chunk format.
pub(super) fn checksum_keyed(key: &[u8; 16], bytes: &[u8]) -> u64 {
    let [k0, k1] = [
        u64::from_le_bytes(*key.first_chunk::<8>().unwrap_or(&[0; 8])),
        u64::from_le_bytes(*key.last_chunk::<8>().unwrap_or(&[0; 8])),
    ];
    let mut h = SipHasher13::new_with_keys(k0, k1);
    h.write(bytes);
    h.finish()
}

/// The address family a chunk was exported from (its sixth byte: 4 or 6).
pub(in crate::conntrack) fn chunk_family(bytes: &[u8]) -> Result<u8, ImportError> {
    let header = bytes
        .first_chunk::<HEADER>()
        .ok_or(ImportError::Truncated)?;
    if header.first_chunk::<4>() != Some(&MAGIC) {
        return Err(ImportError::BadMagic);
    }
    Ok(header[5])
}

/// How imported records become values: the table's own [`SessionValue`] decoding, or a
/// session service taking the sessions over (`Conntrack::import`).
pub(in crate::conntrack) trait Adopt<V> {
    /// Checks a record's value bytes before anything is installed (`false`: the chunk is
    /// corrupt).
    fn check(&self, bytes: &[u8]) -> bool;
    /// The value of a session to install; `None`: not taken over (counted `refused`).
    fn adopt(&mut self, now: Instant, session: &SessionInfo<()>, bytes: &[u8]) -> Option<V>;
    /// A value [`Self::adopt`] gave, for a session the table did not install after all.
    fn abort(&mut self, now: Instant, session: &SessionInfo<V>);
    /// A session a replica's [`SessionTable::apply`] removed (it ended on its primary, or
    /// the primary's session replaces it).
    fn end(&mut self, _now: Instant, _session: &SessionInfo<V>) {}
    /// A session early drop evicted to admit an imported one.
    fn evicted(&mut self, _now: Instant, _session: &SessionInfo<V>) {}
}

/// The plain table import: values decoded by [`SessionValue::decode`].
pub(super) struct Decode;

impl<V: SessionValue> Adopt<V> for Decode {
    fn check(&self, bytes: &[u8]) -> bool {
        V::decode(bytes).is_some()
    }
    fn adopt(&mut self, _now: Instant, _session: &SessionInfo<()>, bytes: &[u8]) -> Option<V> {
        V::decode(bytes)
    }
    fn abort(&mut self, _now: Instant, _session: &SessionInfo<V>) {}
}

impl<K: SessionKey, V: SessionValue> SessionTable<K, V> {
    /// Appends one self-contained export chunk to `out` with up to `max` live sessions from
    /// slot `from` on (start with 0, continue with [`ExportProgress::next`]). Remaining
    /// lifetimes are measured from `now`. A replica's copies of another node's sessions
    /// ([`Self::apply`]) are not exported: they are their primary's to send, so that two
    /// nodes replicating to each other never sweep a node's own sessions back to it (take
    /// them over first, [`Self::take_over_replicas`]). Cold path: allocates in `out`.
    pub fn export(&self, now: Instant, from: u32, max: usize, out: &mut Vec<u8>) -> ExportProgress {
        self.export_with(now, from, max, out, V::ENCODED_LEN, |v, b| v.encode(b))
    }

    /// Installs the sessions of one export chunk, lifetimes measured from `now`. The chunk is
    /// checked completely before anything is installed.
    ///
    /// # Errors
    /// [`ImportError`] for truncated, corrupt or incompatible input; the table is unchanged.
    pub fn import(&mut self, now: Instant, bytes: &[u8]) -> Result<ImportReport, ImportError> {
        self.import_with(now, bytes, V::ENCODED_LEN, &mut Decode)
    }
}

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// [`Self::export`] with each value written by `encode` (exactly `vlen` bytes).
    pub(in crate::conntrack) fn export_with(
        &self,
        now: Instant,
        from: u32,
        max: usize,
        out: &mut Vec<u8>,
        vlen: usize,
        mut encode: impl FnMut(&V, &mut [u8]),
    ) -> ExportProgress {
        let start = out.len();
        let rl = record_len::<K>(vlen);
        out.extend_from_slice(&MAGIC);
        out.push(EXPORT_VERSION);
        out.push(K::FAMILY as u8);
        out.extend_from_slice(&u16::try_from(vlen).unwrap_or(u16::MAX).to_be_bytes());
        let count_at = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&u32::try_from(rl).unwrap_or(u32::MAX).to_be_bytes());
        let mut records = 0usize;
        let mut next = None;
        for (idx, x) in self.records_from(from) {
            if records == max {
                next = Some(idx);
                break;
            }
            self.write_record(now, idx, x, out, vlen, &mut encode);
            records += 1;
        }
        let n = u32::try_from(records).unwrap_or(u32::MAX).to_be_bytes();
        if let Some(c) = out.get_mut(count_at..count_at + 4) {
            c.copy_from_slice(&n);
        }
        let sum = checksum(out.get(start..).unwrap_or(&[]));
        out.extend_from_slice(&sum.to_be_bytes());
        ExportProgress { records, next }
    }

    /// Appends the record of session `x` (slot `idx`) to `out`: the chunk formats' record,
    /// its value written by `encode` (exactly `vlen` bytes).
    pub(in crate::conntrack) fn write_record(
        &self,
        now: Instant,
        idx: u32,
        x: &Record<K, V>,
        out: &mut Vec<u8>,
        vlen: usize,
        encode: &mut impl FnMut(&V, &mut [u8]),
    ) {
        let mut fl = 0u8;
        if x.flags & F_ASSURED != 0 {
            fl |= 1;
        }
        if x.flags & F_FIN_REPLY != 0 {
            fl |= 2;
        }
        let remaining = self.deadline_of(x) - now;
        out.extend_from_slice(&x.zone.to_be_bytes());
        out.extend_from_slice(&self.reply_zone_of(idx, x).to_be_bytes());
        out.extend_from_slice(&[x.proto, x.state, fl, 0]);
        out.extend_from_slice(&remaining.as_nanos().to_be_bytes());
        let mut buf = [0u8; 128];
        for k in &x.keys {
            k.encode(&mut buf);
            out.extend_from_slice(buf.get(..K::ENCODED_LEN).unwrap_or(&[]));
        }
        let vstart = out.len();
        out.resize(vstart + vlen, 0);
        if let Some(v) = out.get_mut(vstart..) {
            encode(&x.value, v);
        }
    }

    /// [`Self::import`] with values of `vlen` bytes made by `adopt`.
    pub(in crate::conntrack) fn import_with<A: Adopt<V>>(
        &mut self,
        now: Instant,
        bytes: &[u8],
        vlen: usize,
        adopt: &mut A,
    ) -> Result<ImportReport, ImportError> {
        let (header, rest) = bytes
            .split_first_chunk::<HEADER>()
            .ok_or(ImportError::Truncated)?;
        let [
            m0,
            m1,
            m2,
            m3,
            ver,
            fam,
            v0,
            v1,
            c0,
            c1,
            c2,
            c3,
            l0,
            l1,
            l2,
            l3,
        ] = *header;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(ImportError::BadMagic);
        }
        if ver != EXPORT_VERSION {
            return Err(ImportError::Version(ver));
        }
        if fam != K::FAMILY as u8 {
            return Err(ImportError::WrongFamily);
        }
        if usize::from(u16::from_be_bytes([v0, v1])) != vlen {
            return Err(ImportError::ValueLength);
        }
        let count = u32::from_be_bytes([c0, c1, c2, c3]) as usize;
        let rl = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if rl != record_len::<K>(vlen) {
            return Err(ImportError::Corrupt);
        }
        let body_len = count.checked_mul(rl).ok_or(ImportError::Corrupt)?;
        if rest.len() < body_len + TRAILER {
            return Err(ImportError::Truncated);
        }
        if rest.len() > body_len + TRAILER {
            return Err(ImportError::Corrupt);
        }
        let (body, trailer) = rest.split_at(body_len);
        let signed = bytes
            .get(..HEADER + body_len)
            .ok_or(ImportError::Truncated)?;
        let want = u64::from_be_bytes(*trailer.first_chunk().ok_or(ImportError::Truncated)?);
        if checksum(signed) != want {
            return Err(ImportError::Checksum);
        }
        // Pass 1: validate every record; pass 2: install.
        for rec in body.chunks_exact(rl) {
            parse_record::<K>(rec, vlen)
                .filter(|r| adopt.check(r.value))
                .ok_or(ImportError::Corrupt)?;
        }
        let mut report = ImportReport::default();
        // In groups: every record's keys hashed and their buckets prefetched, then each
        // record adopted and inserted, so that the inserts' cache misses overlap.
        for group in body.chunks(rl * IMPORT_GROUP) {
            let mut hashes = [None; IMPORT_GROUP];
            for (rec, h) in group.chunks_exact(rl).zip(hashes.iter_mut()) {
                if let Some(r) = parse_record::<K>(rec, vlen) {
                    let (original, reply) = r.flows();
                    *h = self.prepare_imported(&original, &reply);
                }
            }
            for (rec, h) in group.chunks_exact(rl).zip(hashes) {
                let Some(r) = parse_record::<K>(rec, vlen) else {
                    continue;
                };
                match self.adopt_record(now, &r, h, adopt, true) {
                    Adopted::Installed => report.imported += 1,
                    Adopted::Refused => report.refused += 1,
                    Adopted::Skipped => report.skipped += 1,
                }
            }
        }
        Ok(report)
    }
}

/// What became of one record [`SessionTable::adopt_record`] was given.
pub(super) enum Adopted {
    /// The session is installed.
    Installed,
    /// The services declined it.
    Refused,
    /// The table did not take it (a key present, the zone at its quota, the table full).
    Skipped,
}

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// Installs the session of record `r` (its keys' hashes from
    /// [`SessionTable::prepare_imported`]) with the value `adopt` makes of it: admitted like
    /// a new session when `admit` (an import: early drop's evictions told to `adopt`), or in
    /// any free slot beyond zone quotas (a replica's apply). A value made for a session not
    /// installed after all is given back to `adopt` (`abort`).
    pub(super) fn adopt_record<A: Adopt<V>>(
        &mut self,
        now: Instant,
        r: &Parsed<'_, K>,
        hashes: Option<[u64; 2]>,
        adopt: &mut A,
        admit: bool,
    ) -> Adopted {
        let (original, reply) = r.flows();
        let session = SessionInfo {
            original,
            reply,
            state: r.state,
            established: r.established,
            deadline: now + r.remaining,
            value: (),
            origin: 0,
        };
        let Some(value) = adopt.adopt(now, &session, r.value) else {
            return Adopted::Refused;
        };
        let (state, est, fin, left) = (r.state, r.established, r.fin_reply, r.remaining);
        let inserted = hashes.ok_or(InsertError::BadKey).and_then(|h| {
            let (o, rp) = (&original, &reply);
            if admit {
                let mut evicted = |info: &SessionInfo<V>| adopt.evicted(now, info);
                self.insert_imported(
                    now,
                    o,
                    rp,
                    h,
                    state,
                    est,
                    fin,
                    left,
                    value,
                    Some(&mut evicted),
                )
            } else {
                let none = None::<&mut fn(&SessionInfo<V>)>;
                self.insert_imported(now, o, rp, h, state, est, fin, left, value, none)
            }
        });
        match inserted {
            Ok(_) => Adopted::Installed,
            Err(_) => {
                adopt.abort(now, &super::service::with_value(&session, value));
                Adopted::Skipped
            }
        }
    }
}

/// One record of a chunk, checked.
pub(super) struct Parsed<'a, K> {
    pub(super) zone: u32,
    pub(super) reply_zone: u32,
    pub(super) proto: u8,
    pub(super) state: SessionState,
    pub(super) established: bool,
    pub(super) fin_reply: bool,
    pub(super) remaining: Duration,
    pub(super) keys: [K; 2],
    pub(super) value: &'a [u8],
}

impl<K: SessionKey> Parsed<'_, K> {
    /// The session's keys as flows (original, reply).
    pub(super) fn flows(&self) -> (FlowKey, FlowKey) {
        let [o, r] = &self.keys;
        (
            o.to_flow(ZoneId(self.zone), self.proto),
            r.to_flow(ZoneId(self.reply_zone), self.proto),
        )
    }
}

pub(super) fn parse_record<K: SessionKey>(b: &[u8], vlen: usize) -> Option<Parsed<'_, K>> {
    let (zone, b) = b.split_first_chunk::<4>()?;
    let (reply_zone, b) = b.split_first_chunk::<4>()?;
    let (&[proto, state, fl, reserved], b) = b.split_first_chunk::<4>()?;
    let (rem, b) = b.split_first_chunk::<8>()?;
    if fl & !3 != 0 || reserved != 0 {
        return None;
    }
    let state = SessionState::from_u8(state)?;
    let (ko, b) = b.split_at_checked(K::ENCODED_LEN)?;
    let (kr, b) = b.split_at_checked(K::ENCODED_LEN)?;
    let keys = [K::decode(ko)?, K::decode(kr)?];
    if keys[0] == keys[1] && zone == reply_zone {
        return None;
    }
    Some(Parsed {
        zone: u32::from_be_bytes(*zone),
        reply_zone: u32::from_be_bytes(*reply_zone),
        proto,
        state,
        established: fl & 1 != 0,
        fin_reply: fl & 2 != 0,
        remaining: Duration::from_nanos(u64::from_be_bytes(*rem)),
        keys,
        value: b.get(..vlen)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{TableConfig, V4Key};
    use crate::flow::{FlowKey, proto};
    use alloc::vec;

    fn table() -> SessionTable<V4Key, u64> {
        SessionTable::new(TableConfig::new(64, [5; 16])).unwrap()
    }

    #[test]
    fn round_trip_and_rejections() {
        let mut a = table();
        let now = Instant::from_nanos(10_000_000_000);
        for i in 0..20u16 {
            let k = FlowKey::v4(ZoneId(3), [10, 0, 0, 1], [10, 0, 0, 2], proto::TCP, i, 80);
            let r = a
                .insert(
                    now,
                    &k,
                    &k.reversed(),
                    SessionState::TcpSynSent,
                    u64::from(i),
                )
                .unwrap();
            if i % 2 == 0 {
                a.set_state(r, now, SessionState::TcpEstablished, true);
            }
        }
        let mut out = vec![];
        let p = a.export(now, 0, 7, &mut out);
        assert_eq!(p.records, 7);
        let mut b = table();
        assert_eq!(b.import(now, &out).unwrap().imported, 7);
        // Every truncation and every single-bit flip is rejected without a change.
        for n in 0..out.len() {
            assert!(b.import(now, &out[..n]).is_err());
        }
        for i in 0..out.len() {
            let mut c = out.clone();
            c[i] ^= 0x10;
            assert!(b.import(now, &c).is_err(), "flip at {i}");
        }
        assert_eq!(b.len(), 7);
        let mut rest = vec![];
        let p2 = a.export(now, p.next.unwrap(), 100, &mut rest);
        assert_eq!((p2.records, p2.next), (13, None));
        assert_eq!(b.import(now, &rest).unwrap().imported, 13);
        assert_eq!(b.import(now, &rest).unwrap().skipped, 13);
    }
}
