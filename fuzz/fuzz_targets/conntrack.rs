//! Fuzzes the session table with arbitrary operation sequences (insert, batch insert, lookup,
//! batch lookup, replace-reply, track, remove, time, expiry, export/import, arbitrary import
//! bytes) against a `HashMap` of the keys that must be indexed: no panic, both directions
//! always found (including those batch insert created), batch lookup equals single lookups,
//! budgets respected. Reply keys may be in another zone (cross-zone sessions); a hit's key
//! always equals the session's key of that direction, zone included. (That batch insert equals inserts in order is a proptest in nf-core.)
//! A replica follows the table through its change journal (`export_changes` / `apply`, a
//! small journal so that it overflows, and a full resync when it did): after each sync the
//! replica holds exactly the table's sessions, keys and states; arbitrary bytes given to
//! `apply` never panic and leave a rejected replica unchanged.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::conntrack::{InsertError, NewSession, SessionState, SessionTable, TableConfig, V4Key};
use nf_core::flow::proto;
use nf_core::{Direction, Duration, FlowKey, Instant, SessionRef, ZoneId};
use std::collections::HashMap;

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { o: [u8; 4], r: Option<[u8; 4]>, zone: u8, reply_zone: Option<u8>, state: u8, value: u32 },
    Lookup([u8; 4], u8, bool),
    Batch(Vec<([u8; 4], u8)>),
    Replace(u16, [u8; 4], Option<u8>),
    Track(u16, bool, u8),
    Remove(u16),
    Quota(u8, u8),
    Advance(u16),
    Expire(u8),
    ExportImport,
    Import(Vec<u8>),
    Sync(u8),
    Apply(Vec<u8>),
    /// The primary is taken as failed: the replica's copies become orphans, and a packet
    /// (TCP flags, direction) reaches the `u16`-th live one.
    Orphan(u16, bool, u8),
    InsertBatch(Vec<([u8; 4], Option<[u8; 4]>, u8, Option<u8>, u8)>),
}

fn key(t: [u8; 4], zone: u8) -> FlowKey {
    FlowKey::v4(ZoneId(u32::from(zone % 4)), [10, 0, 0, t[0] % 8], [10, 0, 1, t[1] % 8], proto::TCP, u16::from(t[2] % 8), u16::from(t[3] % 8))
}

fuzz_target!(|ops: Vec<Op>| {
    let mut cfg = TableConfig::new(48, [7; 16]);
    cfg.cross_zone = true;
    cfg.wheel_slots = 64;
    cfg.max_zones = 3;
    cfg.journal = 16;
    let mut t: SessionTable<V4Key, u32> = SessionTable::new(cfg).unwrap();
    let mut replica: SessionTable<V4Key, u32> = SessionTable::new(cfg).unwrap();
    // The replica equals the table after a full sync while this holds.
    let mut in_sync = true;
    // A copy adopted by a packet on the replica is the replica's own (origin 0).
    let mut adopted = false;
    let mut live: HashMap<SessionRef, (FlowKey, FlowKey)> = HashMap::new();
    let mut now = Instant::from_nanos(1);
    for op in ops.into_iter().take(500) {
        match op {
            Op::Insert { o, r, zone, reply_zone, state, value } => {
                let ok = key(o, zone);
                let mut rk = r.map_or(ok.reversed(), |r| key(r, zone));
                rk.zone = key(o, reply_zone.unwrap_or(zone)).zone;
                let st = SessionState::from_u8(state % 11).unwrap();
                if let Ok(h) = t.insert(now, &ok, &rk, st, value) {
                    live.insert(h, (ok, rk));
                }
            }
            Op::InsertBatch(items) => {
                let new: Vec<NewSession<u32>> = items
                    .iter()
                    .take(100)
                    .enumerate()
                    .map(|(i, &(o, r, zone, reply_zone, state))| {
                        let original = key(o, zone);
                        let mut reply = r.map_or(original.reversed(), |r| key(r, zone));
                        reply.zone = key(o, reply_zone.unwrap_or(zone)).zone;
                        let state = SessionState::from_u8(state % 11).unwrap();
                        NewSession::new(original, reply, state, i as u32)
                    })
                    .collect();
                let mut out = vec![Err(InsertError::TableFull); new.len()];
                let created = t.insert_batch(now, &new, &mut out);
                assert_eq!(created, out.iter().filter(|r| r.is_ok()).count());
                for (n, r) in new.iter().zip(&out) {
                    if let Ok(h) = r {
                        live.insert(*h, (n.original, n.reply));
                    }
                }
            }
            Op::Lookup(k, z, rev) => {
                let k = if rev { key(k, z).reversed() } else { key(k, z) };
                if let Some(h) = t.lookup(&k)
                    && let Some(&(o, r)) = live.get(&h.session)
                {
                    match h.direction {
                        Direction::Original => assert_eq!(o, k),
                        Direction::Reply => assert_eq!(r, k),
                    }
                }
            }
            Op::Batch(ks) => {
                let keys: Vec<FlowKey> = ks.iter().map(|&(k, z)| key(k, z)).collect();
                let mut out = [None; 64];
                let mask = t.lookup_batch(&keys, &mut out);
                for (i, k) in keys.iter().enumerate().take(64) {
                    assert_eq!(out[i], t.lookup(k));
                    assert_eq!(mask >> i & 1 == 1, out[i].is_some());
                }
            }
            Op::Replace(i, k, z) => {
                if let Some((&h, &(o, _))) = live.iter().nth(usize::from(i) % live.len().max(1)) {
                    let nk = key(k, z.unwrap_or(o.zone.0 as u8));
                    if t.replace_reply(h, &nk).is_ok() {
                        live.get_mut(&h).unwrap().1 = nk;
                    }
                }
            }
            Op::Track(i, reply, flags) => {
                if let Some(&h) = live.keys().nth(usize::from(i) % live.len().max(1)) {
                    let d = if reply { Direction::Reply } else { Direction::Original };
                    let _ = t.track(h, now, d, flags);
                }
            }
            Op::Remove(i) => {
                if let Some(&h) = live.keys().nth(usize::from(i) % live.len().max(1)) {
                    assert!(t.remove(h).is_some());
                    live.remove(&h);
                    assert!(t.remove(h).is_none());
                }
            }
            Op::Quota(z, q) => {
                let _ = t.set_zone_quota(ZoneId(u32::from(z % 4)), u32::from(q % 40));
                let _ = replica.set_zone_quota(ZoneId(u32::from(z % 4)), u32::from(q % 40));
            }
            Op::Sync(max) => {
                // Drain in chunks of at most `max` events (at least one) until nothing waits.
                let max = usize::from(max % 8) + 1;
                for _ in 0..100 {
                    let mut buf = Vec::new();
                    let p = t.export_changes(now, max, &mut buf);
                    assert!(p.ended + p.changed <= max);
                    in_sync &= p.lost == 0;
                    let r = replica.apply_from(now, 1, &buf).unwrap();
                    assert_eq!(r.ended + r.absent, p.ended);
                    assert_eq!(r.created + r.refreshed + r.skipped + r.refused, p.changed);
                    in_sync &= r.skipped == 0;
                    if !p.pending {
                        break;
                    }
                }
                // Events were lost (or the replica skipped some): a full resync repairs it
                // (twice at most: stale copies may hold the room a missing session needs
                // until the first one removes them).
                for _ in 0..2 {
                    if in_sync {
                        break;
                    }
                    replica.begin_resync(|s| s.origin == 1);
                    let mut buf = Vec::new();
                    t.export(now, 0, usize::MAX, &mut buf);
                    let r = replica.apply_from(now, 1, &buf).unwrap();
                    replica.end_resync_where(|s| s.origin == 1);
                    in_sync = r.skipped == 0;
                }
                live.retain(|h, _| t.is_live(*h));
                if in_sync {
                    assert_eq!(replica.len(), t.len());
                    for (h, (o, r)) in &live {
                        let a = replica.lookup(o).unwrap();
                        let b = replica.lookup(r).unwrap();
                        assert_eq!(a.session, b.session);
                        assert_eq!((a.direction, b.direction), (Direction::Original, Direction::Reply));
                        assert_eq!(replica.state(a.session), t.state(*h));
                        assert!(adopted || replica.info(a.session).unwrap().origin == 1);
                    }
                }
            }
            Op::Orphan(i, reply, flags) => {
                let orphans = replica.orphan_replicas(|s| s.origin == 1);
                let keys: Vec<FlowKey> = live.values().map(|(o, _)| *o).collect();
                if orphans > 0 && !keys.is_empty() {
                    if let Some(h) = replica.lookup(&keys[usize::from(i) % keys.len()]) {
                        let dir = if reply { Direction::Reply } else { Direction::Original };
                        let before = replica.counters().orphans_adopted;
                        let was_copy = replica.info(h.session).unwrap().origin == 1;
                        // Adopted even when the tracker then rejects the segment.
                        let _ = replica.track(h.session, now, dir, flags);
                        if was_copy {
                            assert_eq!(replica.counters().orphans_adopted, before + 1);
                            assert_eq!(replica.info(h.session).unwrap().origin, 0);
                            adopted = true;
                        }
                    }
                }
                in_sync = false;
            }
            Op::Apply(bytes) => {
                let before = replica.len();
                match replica.apply_from(now, 1, &bytes) {
                    Ok(_) => in_sync = false,
                    Err(_) => assert_eq!(replica.len(), before),
                }
            }
            Op::Advance(ms) => now += Duration::from_millis(u64::from(ms) * 50),
            Op::Expire(budget) => {
                let b = usize::from(budget);
                assert!(t.handle_timeout(now, b) <= b);
            }
            Op::ExportImport => {
                let mut buf = Vec::new();
                t.export(now, 0, usize::MAX, &mut buf);
                let mut u: SessionTable<V4Key, u32> = SessionTable::new(cfg).unwrap();
                let r = u.import(now, &buf).unwrap();
                assert_eq!(r.imported + r.skipped, t.len());
                for (o, rk) in live.values() {
                    let (a, b) = (t.lookup(o).unwrap(), t.lookup(rk).unwrap());
                    if let (Some(c), Some(d)) = (u.lookup(o), u.lookup(rk)) {
                        assert_eq!((a.direction, b.direction), (c.direction, d.direction));
                        assert_eq!(c.session, d.session);
                    }
                }
            }
            Op::Import(bytes) => {
                let before = t.len();
                let dropped = t.counters().early_drops;
                match t.import(now, &bytes) {
                    // An imported session is admitted like an inserted one: where its zone is
                    // at quota it may evict that zone's oldest unestablished session.
                    Ok(r) => assert_eq!(
                        t.len() + (t.counters().early_drops - dropped) as usize,
                        before + r.imported
                    ),
                    Err(_) => {
                        assert_eq!(t.len(), before);
                        assert_eq!(t.counters().early_drops, dropped);
                    }
                }
                // Imported sessions are not tracked by the model; forget nothing, but
                // re-sync the model from the table's answers.
                live.retain(|h, _| t.is_live(*h));
            }
        }
        // Sessions gone through early drop or expiry leave the model here.
        live.retain(|h, _| t.is_live(*h));
        for (h, (o, r)) in &live {
            let a = t.lookup(o).unwrap();
            assert_eq!((a.session, a.direction), (*h, Direction::Original));
            let b = t.lookup(r).unwrap();
            assert_eq!((b.session, b.direction), (*h, Direction::Reply));
        }
        assert!(live.len() <= t.len() && t.len() <= 48);
    }
});
