//! The batch lookup pipeline ([`SessionTable::lookup_batch`]).

use super::{BATCH, Hit, NIL, SessionTable};
use crate::conntrack::key::SessionKey;
use crate::flow::FlowKey;
use crate::packet::Packet;

/// Where a batch lookup reads its keys: a slice, or the flow keys of a batch's packets
/// (read in place, so the stage copies nothing).
pub(in crate::conntrack) trait Keys {
    /// Whether the keys are in cache already (a batch's packets, just parsed): the lookup
    /// then does not prefetch them.
    const IN_CACHE: bool = false;
    /// Keys on offer (the lookup takes at most 64).
    fn count(&self) -> usize;
    /// Key `i`.
    fn key(&self, i: usize) -> Option<&FlowKey>;
}

impl Keys for [FlowKey] {
    #[inline(always)]
    fn count(&self) -> usize {
        self.len()
    }
    #[inline(always)]
    fn key(&self, i: usize) -> Option<&FlowKey> {
        self.get(i)
    }
}

impl<B> Keys for [Packet<B>] {
    const IN_CACHE: bool = true;
    #[inline(always)]
    fn count(&self) -> usize {
        self.len()
    }
    #[inline(always)]
    fn key(&self, i: usize) -> Option<&FlowKey> {
        self.get(i).map(|p| &p.meta.flow)
    }
}

/// State of one [`SessionTable::lookup_batch`], per key: hash and candidate record; per
/// batch: bit masks (bit `i` for key `i`).
struct Pipeline<'h, G> {
    /// Per key: its table hash (first its zone's mix, which the hash stage XORs the
    /// SipHash into). The caller's array: only the entries of keys of the table's family
    /// are written.
    hashes: &'h mut [u64; BATCH],
    /// The keys' SipHash messages, four keys per group (`Sealed::Group`), written for the
    /// whole batch before the first group is hashed: a vector load of words stored just
    /// before waits for those stores to reach the cache.
    msg: [G; BATCH / 4],
    cand: [u32; BATCH],
    /// Keys of the table's family (hashed).
    valid: u64,
    /// The home bucket alone cannot answer: several tag matches, or entries overflowed.
    slow: u64,
    /// Deferred to the full probe.
    late: u64,
    hits: u64,
}

/// Batch lookup pipeline distances, in keys (see [`SessionTable::lookup_batch`]): at least a
/// memory latency's worth of hashing (and of waiting for other keys' lines, the fill buffers
/// being the limit at 1M sessions). `conntrack-hit`, 64-key batches: a bucket distance of 12
/// is clearly worse than 16, 24 to 32 a few percent better; with 32 a 64-key batch hashes its
/// second half while the first half's buckets arrive (with the vector hash, 64 — every
/// bucket scanned after every key is hashed — was 1-2 ns better in a driver whose stream
/// stays in cache and 3-5 ns worse in `conntrack-stage`). Records are compared once every
/// bucket is scanned (a record distance of 32 behind the buckets was the same for batches of
/// at most 64 keys; 16 and 24 were worse).
const LEAD_KEY: usize = 16;
const LEAD_BUCKET: usize = 32;

impl<K: SessionKey, V: Copy + Default> SessionTable<K, V> {
    /// Looks up to 64 keys at once. Writes `out[i]` for each `keys[i]` and returns the hit mask
    /// (bit `i` set on a hit). Keys beyond 64 or beyond `out.len()` are ignored. Same answers as
    /// [`Self::lookup`].
    ///
    /// The keys flow through a software pipeline so that the memory latency of many keys
    /// overlaps with the hashing of others. Each step hashes four keys at once (a vector
    /// SipHash where the CPU has AVX2, their messages packed for the whole batch first) and
    /// prefetches their home buckets, and scans the buckets of the keys `LEAD_BUCKET` before
    /// them, prefetching their candidate records. Once every key is hashed, the remaining
    /// buckets are scanned (their records prefetched all at once) and then every key is
    /// compared with its record, so that the last keys of a batch wait for memory together
    /// rather than in turn. Small batches use a shorter distance. Keys whose entry is not in
    /// their home bucket (or that met a tag collision) get the records along their probe
    /// path prefetched and take the full probe after the rest of the batch.
    #[inline]
    pub fn lookup_batch(&self, keys: &[FlowKey], out: &mut [Option<Hit>]) -> u64 {
        self.lookup_batch_inner(keys, u64::MAX, out, &mut [0; BATCH])
    }

    /// [`Self::lookup_batch`] of the keys whose bit is set in `mask` (the others answer
    /// `None`), also writing the table hash of every key of this table's family to `hashes`
    /// (other entries are left alone), for the stage's inserts.
    #[inline]
    pub(in crate::conntrack) fn lookup_batch_hashed<Q: Keys + ?Sized>(
        &self,
        keys: &Q,
        mask: u64,
        out: &mut [Option<Hit>],
        hashes: &mut [u64; BATCH],
    ) -> u64 {
        self.lookup_batch_inner(keys, mask, out, hashes)
    }

    #[inline(always)]
    fn lookup_batch_inner<Q: Keys + ?Sized>(
        &self,
        keys: &Q,
        mask: u64,
        out: &mut [Option<Hit>],
        hashes: &mut [u64; BATCH],
    ) -> u64 {
        let n = keys.count().min(out.len()).min(BATCH);
        let lead_bucket = LEAD_BUCKET.min(n);
        let mut p = Pipeline {
            hashes,
            msg: [K::Group::default(); BATCH / 4],
            cand: [NIL; BATCH],
            valid: 0,
            slow: 0,
            late: 0,
            hits: 0,
        };
        // The keys themselves may not be in cache either (e.g. a large array of queries).
        if !Q::IN_CACHE {
            for i in 0..n.min(LEAD_KEY) {
                if let Some(k) = keys.key(i) {
                    crate::sys::prefetch(k);
                }
            }
        }
        self.pack_stage(&mut p, keys, mask, n);
        // Hash all (scanning buckets `lead_bucket` keys behind), scan the rest of the
        // buckets, then compare every record.
        for t in (0..n).step_by(4) {
            self.hash_stage(&mut p, n, t);
            for u in t..(t + 4).min(n) {
                if let Some(i) = u.checked_sub(lead_bucket) {
                    self.bucket_stage(&mut p, i);
                }
            }
        }
        for i in n.saturating_sub(lead_bucket)..n {
            self.bucket_stage(&mut p, i);
        }
        for i in 0..n {
            self.record_stage(&mut p, keys, out, i);
        }
        // Deferred keys: the full probe, their records having had the rest of the batch to
        // arrive.
        let mut hits = p.hits;
        let mut late = p.late;
        while late != 0 {
            let i = late.trailing_zeros() as usize;
            late &= late - 1;
            if let (Some(key), Some(&h), Some(o)) = (keys.key(i), p.hashes.get(i), out.get_mut(i))
                && let Some(k) = K::from_flow(key)
            {
                *o = self.find(&k, key.zone.0, key.proto, h);
                hits |= u64::from(o.is_some()) << i;
            }
        }
        hits
    }

    /// Batch stage 0: every key's SipHash message and zone mix, and which keys are of the
    /// table's family (`valid`), with keys further on prefetched.
    #[inline(always)]
    fn pack_stage<Q: Keys + ?Sized>(
        &self,
        p: &mut Pipeline<'_, K::Group>,
        keys: &Q,
        mask: u64,
        n: usize,
    ) {
        for i in 0..n {
            if !Q::IN_CACHE
                && let Some(ahead) = keys.key(i + LEAD_KEY)
            {
                crate::sys::prefetch(ahead);
            }
            if mask >> i & 1 != 0
                && let Some(key) = keys.key(i)
                && let Some(k) = K::from_flow(key)
                && let (Some(g), Some(mix)) = (p.msg.get_mut(i / 4), p.hashes.get_mut(i))
            {
                *mix = k.pack(key.zone.0, key.proto, g, i % 4);
                p.valid |= 1 << i;
            }
        }
    }

    /// Batch stage 1 for keys `t..t + 4` (those below `n`): hash them four at once from
    /// their packed messages (a vector SipHash where the CPU has AVX2) and prefetch their
    /// home buckets.
    #[inline(always)]
    fn hash_stage(&self, p: &mut Pipeline<'_, K::Group>, n: usize, t: usize) {
        let Some(m) = p.msg.get(t / 4) else {
            return;
        };
        let hashes = K::hash_group(&self.sip, m);
        for (j, h) in hashes.into_iter().enumerate() {
            let i = t + j;
            if i < n
                && p.valid >> i & 1 != 0
                && let Some(slot) = p.hashes.get_mut(i)
            {
                *slot ^= h;
                if let Some(b) = self.buckets.get(self.home(*slot)) {
                    crate::sys::prefetch(b);
                }
            }
        }
    }

    /// Batch stage 2 for key `i`: scan the home bucket (in cache by now, or on its way), keep
    /// the first tag match and prefetch its record. The full probe may be needed if there are
    /// several matches or entries overflowed past this bucket; if nothing matched here, the
    /// entry can only be further on, so prefetch the next bucket.
    #[inline(always)]
    fn bucket_stage(&self, p: &mut Pipeline<'_, K::Group>, i: usize) {
        if i < BATCH
            && p.valid >> i & 1 != 0
            && let (Some(&h), Some(c)) = (p.hashes.get(i), p.cand.get_mut(i))
            && let Some(bk) = self.buckets.get(self.home(h))
        {
            let mm = bk.matches(self.tag(h), self.tag_mask);
            if mm != 0 {
                let e = bk.e.get(mm.trailing_zeros() as usize).copied().unwrap_or(0);
                let idx = (e & self.idx_mask).wrapping_sub(1);
                if let Some(r) = self.recs.get(idx as usize) {
                    crate::sys::prefetch_all(r);
                }
                *c = idx;
            }
            if mm & mm.wrapping_sub(1) != 0 || bk.overflow != 0 {
                p.slow |= 1 << i;
                if mm == 0
                    && let Some(next) = self.buckets.get(self.next_bucket(self.home(h)))
                {
                    crate::sys::prefetch(next);
                }
            }
        }
    }

    /// Batch stage 3 for key `i`: compare with the candidate record and write `out[i]`. A
    /// miss that may be elsewhere along the probe path is deferred.
    #[inline(always)]
    fn record_stage<Q: Keys + ?Sized>(
        &self,
        p: &mut Pipeline<'_, K::Group>,
        keys: &Q,
        out: &mut [Option<Hit>],
        i: usize,
    ) {
        if i >= BATCH {
            return;
        }
        let Some(o) = out.get_mut(i) else {
            return;
        };
        let mut r = None;
        // Packing the key again is cheaper than keeping it: it is in L1 by now.
        if p.valid >> i & 1 != 0
            && let (Some(key), Some(&c)) = (keys.key(i), p.cand.get(i))
            && let Some(k) = K::from_flow(key)
        {
            r = self.check_same_zone(c, &k, key.zone.0, key.proto);
            // A miss may be elsewhere along the probe path, or a cross-zone session (which
            // the pipeline leaves to the full probe). The hash is read only then.
            if r.is_none() && (p.slow >> i & 1 != 0 || self.is_cross_zone(c)) {
                if let Some(&h) = p.hashes.get(i) {
                    self.prefetch_probe(h);
                }
                p.late |= 1 << i;
            }
        }
        p.hits |= u64::from(r.is_some()) << i;
        *o = r;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::k;
    use super::*;
    use crate::conntrack::{SessionState, TableConfig, V4Key, V6Key};
    use crate::flow::{ZoneId, proto};
    use crate::meta::{Direction, SessionRef};
    use crate::time::Instant;
    use alloc::vec::Vec;

    /// Batch lookups give the single-lookup answers also where the fast path cannot decide:
    /// few tag bits (many tag collisions, several candidates per bucket) and few home buckets
    /// (long overflow chains, entries far from home), with removals in between, misses, keys
    /// of the other family, and `out` shorter than `keys`.
    #[test]
    fn batch_equals_single_under_collisions_and_overflow() {
        batch_equals_single::<V4Key>(k, [10, 0, 0, 1]);
        // IPv6: the same flows with the addresses moved into 2001:db8::/96.
        let k6 = |i: u32| {
            let v4 = k(i);
            let six = |a: &[u8]| {
                let mut b = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                b[12..].copy_from_slice(&a[..4]);
                b
            };
            let (s, d) = (six(v4.src_bytes()), six(v4.dst_bytes()));
            FlowKey::v6(v4.zone, s, d, v4.proto, v4.src_port, v4.dst_port)
        };
        let mut d = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        d[12..].copy_from_slice(&[10, 0, 0, 1]);
        batch_equals_single::<V6Key>(k6, d);
    }

    /// [`batch_equals_single_under_collisions_and_overflow`] for one family: `k` makes flow
    /// `i` (whose destination is `dst`).
    fn batch_equals_single<K: SessionKey>(k: impl Fn(u32) -> FlowKey, dst: impl AsRef<[u8]>) {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (tag_bits, homes) in [
            (2u32, None),
            (0, None),
            (2, Some(3u64)),
            (8, Some(1)),
            (12, None),
        ] {
            let mut t: SessionTable<K, u32> =
                SessionTable::new(TableConfig::new(600, [5; 16])).unwrap();
            // Set while the table is empty, so every entry is made with the altered layout.
            t.tag_mask = !t.idx_mask & !(u32::MAX.checked_shr(tag_bits).unwrap_or(0));
            if let Some(h) = homes {
                t.nbuckets = h;
            }
            let mut live = alloc::vec::Vec::new();
            for i in 0..450u32 {
                let r = t
                    .insert(
                        Instant::ZERO,
                        &k(i),
                        &k(i).reversed(),
                        SessionState::Other,
                        i,
                    )
                    .unwrap();
                live.push((i, r));
            }
            for (i, r) in &live {
                if i % 7 == 3 {
                    assert_eq!(t.remove(*r), Some(*i));
                }
            }
            // A key of the other family: never found.
            let other = if K::FAMILY == crate::Family::V4 {
                FlowKey::v6(ZoneId(1), [1; 16], [2; 16], proto::UDP, 1, 2)
            } else {
                FlowKey::v4(ZoneId(1), [1; 4], [2; 4], proto::UDP, 1, 2)
            };
            for round in 0..200 {
                let n = (next() % 71) as usize;
                // Each key with whether it must hit.
                let keys: Vec<(FlowKey, bool)> = (0..n)
                    .map(|_| {
                        let j = (next() % 450) as u32;
                        match next() % 8 {
                            0 => (k(500 + j % 50), false),
                            1 => (other, false),
                            2..=4 => (k(j), j % 7 != 3),
                            _ => (k(j).reversed(), j % 7 != 3),
                        }
                    })
                    .collect();
                let flows: Vec<FlowKey> = keys.iter().map(|(f, _)| *f).collect();
                let mut out = [Some(Hit {
                    session: SessionRef::new(K::FAMILY, 7, 7),
                    direction: Direction::Reply,
                }); 64];
                let m = if round % 5 == 0 { 10 } else { 64 };
                let mask = t.lookup_batch(&flows, &mut out[..m]);
                let done = n.min(m);
                for (i, (key, live)) in keys.iter().enumerate().take(done) {
                    let want = t.lookup(key);
                    assert_eq!(
                        out[i], want,
                        "tag bits {tag_bits}, homes {homes:?}, key {key}"
                    );
                    assert_eq!(want.is_some(), *live, "key {key}");
                    assert_eq!(mask >> i & 1 == 1, *live);
                }
                assert_eq!(mask.checked_shr(done as u32).unwrap_or(0), 0);
            }
            // Every live session is found from both sides, batched.
            let keys: Vec<FlowKey> = (0..450u32)
                .filter(|i| i % 7 != 3)
                .flat_map(|i| [k(i), k(i).reversed()])
                .collect();
            for chunk in keys.chunks(64) {
                let mut out = [None; 64];
                let mask = t.lookup_batch(chunk, &mut out);
                assert_eq!(mask.count_ones() as usize, chunk.len());
                for (key, h) in chunk.iter().zip(out) {
                    let h = h.unwrap();
                    let want = if key.dst_bytes() == dst.as_ref() {
                        Direction::Original
                    } else {
                        Direction::Reply
                    };
                    assert_eq!(h.direction, want);
                }
            }
        }
    }
}
