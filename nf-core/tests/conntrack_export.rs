//! Export → import into a second table gives identical lookups; damaged input is rejected
//! with an error, never a panic.
#![expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{ImportError, SessionState, SessionTable, TableConfig, V4Key, V6Key};
use nf_core::flow::proto;
use nf_core::{Duration, FlowKey, Instant, ZoneId};
use proptest::prelude::*;

/// A table config that holds cross-zone sessions (some sessions here are).
fn xz(capacity: u32, secret: [u8; 16]) -> TableConfig {
    let mut c = TableConfig::new(capacity, secret);
    c.cross_zone = true;
    c
}

fn v4(i: u32) -> FlowKey {
    let [a, b, c, d] = i.to_be_bytes();
    let p = [proto::TCP, proto::UDP, proto::ICMP, 47][(i % 4) as usize];
    FlowKey::v4(
        ZoneId(i % 5),
        [10, a, b, c],
        [172, 16, d, 1],
        p,
        (i % 60_000) as u16,
        80,
    )
}

fn zoned(mut k: FlowKey, zone: u32) -> FlowKey {
    k.zone = ZoneId(zone);
    k
}

fn fill(t: &mut SessionTable<V4Key, [u8; 16]>, n: u32, now: Instant) {
    for i in 0..n {
        let f = v4(i);
        let reply = if i % 3 == 0 {
            // NAT-style reply key.
            FlowKey::v4(
                f.zone,
                [172, 16, 0, 9],
                [100, 64, 0, 1],
                f.proto,
                80,
                (i % 60_000) as u16,
            )
        } else {
            f.reversed()
        };
        // Every sixth session is cross-zone: its replies arrive in another zone.
        let reply = if i % 6 == 0 {
            zoned(reply, 10 + i % 5)
        } else {
            reply
        };
        let st = SessionState::ALL[i as usize % SessionState::ALL.len()];
        let later = now + Duration::from_millis(u64::from(i % 7_000));
        let r = t.insert(later, &f, &reply, st, [i as u8; 16]).unwrap();
        if i % 2 == 0 {
            t.set_state(r, later, st, true);
        }
    }
}

#[test]
fn export_import_gives_identical_lookups() {
    let now = Instant::from_nanos(50_000_000_000);
    let cfg = xz(20_000, [1; 16]);
    let mut a: SessionTable<V4Key, [u8; 16]> = SessionTable::new(cfg).unwrap();
    fill(&mut a, 15_000, now);
    let later = now + Duration::from_secs(3);
    let mut chunks = Vec::new();
    let mut from = Some(0);
    while let Some(f) = from {
        let mut buf = Vec::new();
        let p = a.export(later, f, 4_000, &mut buf);
        chunks.push(buf);
        from = p.next;
    }
    assert_eq!(chunks.len(), 4);
    // The peer has its own secret and its own clock.
    let peer_now = Instant::from_nanos(7_000_000_000_000);
    let mut b: SessionTable<V4Key, [u8; 16]> = SessionTable::new(xz(20_000, [2; 16])).unwrap();
    let mut imported = 0;
    for c in &chunks {
        imported += b.import(peer_now, c).unwrap().imported;
    }
    assert_eq!(imported, 15_000);
    assert_eq!(b.len(), a.len());
    for i in 0..15_000 {
        let f = v4(i);
        let ha = a.lookup(&f).unwrap();
        let hb = b.lookup(&f).unwrap();
        assert_eq!(ha.direction, hb.direction);
        let ia = a.info(ha.session).unwrap();
        let ib = b.info(hb.session).unwrap();
        assert_eq!(
            (ia.original, ia.reply, ia.state, ia.established, ia.value),
            (ib.original, ib.reply, ib.state, ib.established, ib.value)
        );
        let hr = b.lookup(&ia.reply).unwrap();
        assert_eq!(
            (hr.session, hr.direction),
            (hb.session, nf_core::Direction::Reply)
        );
        // Remaining lifetime survives the move (to within one granularity).
        let ra = ia.deadline.as_nanos() as i128 - later.as_nanos() as i128;
        let rb = ib.deadline.as_nanos() as i128 - peer_now.as_nanos() as i128;
        assert!((ra - rb).abs() <= 1_000_000_000, "{ra} vs {rb}");
    }
    // Importing twice installs nothing new.
    let again = b.import(peer_now, &chunks[0]).unwrap();
    assert_eq!((again.imported, again.skipped), (0, 4_000));
}

#[test]
fn incompatible_input_is_rejected() {
    let now = Instant::ZERO;
    let mut a: SessionTable<V4Key, [u8; 16]> = SessionTable::new(xz(100, [1; 16])).unwrap();
    fill(&mut a, 50, now);
    let mut buf = Vec::new();
    a.export(now, 0, 100, &mut buf);
    let mut v6: SessionTable<V6Key, [u8; 16]> = SessionTable::new(xz(100, [1; 16])).unwrap();
    assert_eq!(v6.import(now, &buf), Err(ImportError::WrongFamily));
    let mut small: SessionTable<V4Key, u64> = SessionTable::new(xz(100, [1; 16])).unwrap();
    assert_eq!(small.import(now, &buf), Err(ImportError::ValueLength));
    let mut b: SessionTable<V4Key, [u8; 16]> = SessionTable::new(xz(100, [1; 16])).unwrap();
    let mut bad = buf.clone();
    // Version 1 (before cross-zone sessions: no reply zone) is not read.
    bad[4] = 1;
    assert_eq!(b.import(now, &bad), Err(ImportError::Version(1)));
    bad[4] = 3;
    assert_eq!(b.import(now, &bad), Err(ImportError::Version(3)));
    bad = buf.clone();
    bad[0] = b'X';
    assert_eq!(b.import(now, &bad), Err(ImportError::BadMagic));
    bad = buf.clone();
    let n = bad.len();
    bad[n - 20] ^= 1;
    assert_eq!(b.import(now, &bad), Err(ImportError::Checksum));
    assert_eq!(
        b.import(now, &buf[..buf.len() - 1]),
        Err(ImportError::Truncated)
    );
    assert!(b.is_empty());
    assert_eq!(b.import(now, &buf).unwrap().imported, 50);
}

proptest! {
    #[test]
    fn import_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4)) {
        let mut t: SessionTable<V4Key, [u8; 16]> =
            SessionTable::new(xz(64, [1; 16])).unwrap();
        let _ = t.import(Instant::ZERO, &bytes);
        // Also damaged versions of a valid export.
        let mut a: SessionTable<V4Key, [u8; 16]> =
            SessionTable::new(xz(64, [1; 16])).unwrap();
        fill(&mut a, 10, Instant::ZERO);
        let mut buf = Vec::new();
        a.export(Instant::ZERO, 0, 64, &mut buf);
        for (i, x) in flips {
            let n = buf.len();
            buf[i % n] ^= x;
        }
        let before = t.len();
        match t.import(Instant::ZERO, &buf) {
            Ok(r) => prop_assert_eq!(t.len(), before + r.imported),
            Err(_) => prop_assert_eq!(t.len(), before),
        }
    }
}
