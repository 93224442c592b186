//! Out-of-order fragments through `FragmentReorder` then `Conntrack`: a later fragment that
//! arrives before its first is held, then released behind the first with the datagram's
//! session (same batch or a later one); the first fragment lost (held packets given back as
//! `fragment_hold_expired`), the pool full (`fragment_hold_full`), a batch without room;
//! IPv4 and IPv6 (`Frame::fragments`). A property test checks that every packet pushed
//! comes out exactly once and every later fragment that passes carries its first
//! fragment's session.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{Conntrack, ConntrackConfig, FragmentReorder, ReorderConfig};
use nf_core::wire::Frame;
use nf_core::{
    BATCH_SIZE, Batch, Chain, DropReason, Instant, Meta, Packet, ParseStage, Stage, StageControl,
    StageExt, Verdict, flags,
};
use proptest::prelude::*;

const SECRET: [u8; 16] = *b"reorder secret!!";

type Pipeline = Chain<Chain<ParseStage, FragmentReorder<Vec<u8>>>, Conntrack>;

fn pipeline(cfg: ReorderConfig) -> Pipeline {
    ParseStage::default()
        .then(FragmentReorder::new(cfg))
        .then(Conntrack::new(ConntrackConfig::new(SECRET), ()).unwrap())
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(1_000_000_000 + ms * 1_000_000)
}

/// The fragments of a UDP datagram of `len` payload bytes, at a 576-byte MTU.
fn fragments(v6: bool, id: u32, sp: u16, len: usize) -> Vec<Vec<u8>> {
    let payload = vec![0x5a; len];
    let f = if v6 {
        let mut c = [0u8; 16];
        c[..2].copy_from_slice(&[0x20, 0x01]);
        c[15] = 1;
        let mut s = c;
        s[15] = 2;
        Frame::ipv6(c, s)
    } else {
        Frame::ipv4([10, 0, 0, 1], [192, 0, 2, 10])
    };
    f.udp(sp, 53).payload(&payload).fragments(576, id).unwrap()
}

fn run(p: &mut Pipeline, now: Instant, frames: &[Vec<u8>]) -> Vec<Packet<Vec<u8>>> {
    let mut b = Batch::new();
    for f in frames {
        b.push(Packet::with_headroom(f, 0)).unwrap();
    }
    p.process(now, &mut b);
    b.drain().collect()
}

fn counter(p: &Pipeline, stage: &str, name: &str) -> u64 {
    let mut v = None;
    p.visit_counters(&mut |s, c, n| {
        if s == stage && c == name {
            v = Some(n);
        }
    });
    v.unwrap_or_else(|| panic!("no counter {stage}/{name}"))
}

fn passed_with_session(m: &Meta) -> bool {
    m.verdict.is_pass() && m.session.is_some()
}

#[test]
fn a_later_fragment_before_its_first_is_released_behind_it_in_the_same_batch() {
    for v6 in [false, true] {
        let mut p = pipeline(ReorderConfig::new(SECRET));
        let mut frags = fragments(v6, 7, 5000, 1200);
        assert_eq!(frags.len(), 3);
        frags.reverse();
        let out = run(&mut p, at(0), &frags);
        assert_eq!(out.len(), 3, "v6 {v6}");
        // The first fragment now leads; both later ones follow it, in arrival order.
        assert_eq!(out[0].data(), frags[2].as_slice());
        assert_eq!(out[1].data(), frags[0].as_slice());
        assert_eq!(out[2].data(), frags[1].as_slice());
        let session = out[0].meta.session;
        for o in &out {
            assert!(
                passed_with_session(&o.meta),
                "v6 {v6}: {:?}",
                o.meta.verdict
            );
            assert_eq!(o.meta.session, session);
        }
        assert!(out[1].meta.has(flags::RELATED));
        assert_eq!(counter(&p, "fragment_reorder", "later_fragments_held"), 2);
        assert_eq!(
            counter(&p, "fragment_reorder", "later_fragments_released"),
            2
        );
        assert_eq!(
            counter(&p, "fragment_reorder", "later_fragments_holding"),
            0
        );
        assert_eq!(counter(&p, "conntrack", "related"), 2);
    }
}

#[test]
fn in_order_fragments_pass_without_being_held() {
    let mut p = pipeline(ReorderConfig::new(SECRET));
    let frags = fragments(false, 8, 5001, 1200);
    let out = run(&mut p, at(0), &frags);
    assert!(out.iter().all(|o| passed_with_session(&o.meta)));
    assert_eq!(
        counter(&p, "fragment_reorder", "later_fragments_in_order"),
        2
    );
    assert_eq!(counter(&p, "fragment_reorder", "later_fragments_held"), 0);
}

#[test]
fn a_held_fragment_waits_for_a_first_fragment_in_a_later_batch() {
    for v6 in [false, true] {
        let mut p = pipeline(ReorderConfig::new(SECRET));
        let frags = fragments(v6, 9, 5002, 700);
        assert_eq!(frags.len(), 2);
        // The later fragment alone: held, the batch comes back empty.
        assert!(run(&mut p, at(0), &frags[1..]).is_empty());
        assert_eq!(
            counter(&p, "fragment_reorder", "later_fragments_holding"),
            1
        );
        let out = run(&mut p, at(1), &frags[..1]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].data(), frags[1].as_slice());
        assert!(out.iter().all(|o| passed_with_session(&o.meta)));
        assert_eq!(out[0].meta.session, out[1].meta.session);
    }
}

#[test]
fn a_lost_first_fragment_gives_the_held_ones_back_as_expired() {
    let mut p = pipeline(ReorderConfig::new(SECRET));
    let frags = fragments(false, 10, 5003, 700);
    assert!(run(&mut p, at(0), &frags[1..]).is_empty());
    // Within the lifetime: still held.
    assert!(run(&mut p, at(3_000), &[]).is_empty());
    let out = run(&mut p, at(4_001), &[]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].meta.verdict,
        Verdict::Drop(DropReason::FragmentHoldExpired)
    );
    assert_eq!(out[0].data(), frags[1].as_slice());
    let drops = p
        .first
        .second
        .counters()
        .drops
        .count(DropReason::FragmentHoldExpired);
    assert_eq!(drops, 1);
    assert_eq!(
        counter(&p, "fragment_reorder", "later_fragments_expired"),
        1
    );
    // The first fragment, late: a new session, and no fragment to release.
    let out = run(&mut p, at(4_002), &frags[..1]);
    assert_eq!(out.len(), 1);
}

#[test]
fn a_full_pool_drops_in_place_and_a_datagram_takes_at_most_its_share() {
    let mut p = pipeline(ReorderConfig::new(SECRET).holding(3, 2));
    // One datagram's three later fragments: two held, the third over its share.
    let mut frags = fragments(false, 11, 5004, 2000);
    assert_eq!(frags.len(), 4);
    let first = frags.remove(0);
    let out = run(&mut p, at(0), &frags);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].meta.verdict,
        Verdict::Drop(DropReason::FragmentHoldFull)
    );
    // Two other datagrams: one more fits the pool, then it is full.
    let a = fragments(false, 12, 5005, 700);
    let b = fragments(true, 13, 5006, 700);
    let out = run(&mut p, at(1), &[a[1].clone(), b[1].clone()]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].meta.verdict,
        Verdict::Drop(DropReason::FragmentHoldFull)
    );
    assert_eq!(out[0].data(), b[1].as_slice());
    assert_eq!(
        counter(&p, "fragment_reorder", "later_fragments_holding"),
        3
    );
    // The first datagram's first fragment releases its two.
    let out = run(&mut p, at(2), &[first]);
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|o| passed_with_session(&o.meta)));
    let full = p
        .first
        .second
        .counters()
        .drops
        .count(DropReason::FragmentHoldFull);
    assert_eq!(full, 2);
}

#[test]
fn releases_wait_for_a_batch_with_room() {
    let mut p = pipeline(ReorderConfig::new(SECRET));
    assert_eq!(p.batch_room(), 8);
    let frags = fragments(false, 14, 5007, 700);
    assert!(run(&mut p, at(0), &frags[1..]).is_empty());
    // A full batch with the first fragment: no room for the held one.
    let mut full: Vec<Vec<u8>> = vec![frags[0].clone()];
    for i in 0..BATCH_SIZE as u16 - 1 {
        full.push(
            Frame::ipv4([10, 0, 0, 1], [192, 0, 2, 10])
                .udp(6000 + i, 53)
                .to_vec()
                .unwrap(),
        );
    }
    let out = run(&mut p, at(1), &full);
    assert_eq!(out.len(), BATCH_SIZE);
    assert_eq!(
        counter(&p, "fragment_reorder", "later_fragments_holding"),
        1
    );
    // The next batch has room: the fragment comes back with the first's session.
    let out = run(&mut p, at(2), &[]);
    assert_eq!(out.len(), 1);
    assert!(passed_with_session(&out[0].meta));
}

#[test]
fn holding_nothing_leaves_out_of_order_fragments_to_conntrack() {
    let mut p = pipeline(ReorderConfig::new(SECRET).holding(0, 0));
    assert_eq!(p.batch_room(), 0);
    let frags = fragments(false, 15, 5008, 700);
    let out = run(&mut p, at(0), &[frags[1].clone(), frags[0].clone()]);
    assert_eq!(
        out[0].meta.verdict,
        Verdict::Drop(DropReason::FragmentNoSession)
    );
    assert!(passed_with_session(&out[1].meta));
}

#[test]
fn drain_gives_back_every_held_packet() {
    let mut p = pipeline(ReorderConfig::new(SECRET));
    let frags = fragments(true, 16, 5009, 1200);
    assert!(run(&mut p, at(0), &frags[1..]).is_empty());
    let back: Vec<_> = p.first.second.drain().collect();
    assert_eq!(back.len(), 2);
    assert_eq!(
        counter(&p, "fragment_reorder", "later_fragments_holding"),
        0
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Fragments of several datagrams (IPv4 and IPv6), shuffled, some lost, in random
    /// batches at a random pace: every packet pushed comes back exactly once (from a batch
    /// or `drain`), and every later fragment that passes carries its datagram's session.
    #[test]
    fn every_packet_comes_back_once_and_later_fragments_find_their_session(
        datagrams in proptest::collection::vec((any::<bool>(), 200usize..2000), 1..8),
        order in proptest::collection::vec(any::<u32>(), 64),
        lost in proptest::collection::vec(any::<bool>(), 64),
        cuts in proptest::collection::vec((1usize..12, 0u64..1500), 1..40),
        held in 0u32..8,
    ) {
        let mut p = pipeline(ReorderConfig::new(SECRET).holding(held, 3));
        let mut all: Vec<(usize, Vec<u8>)> = Vec::new();
        for (d, (v6, len)) in datagrams.iter().enumerate() {
            for f in fragments(*v6, 100 + d as u32, 7000 + d as u16, *len) {
                all.push((d, f));
            }
        }
        let mut keyed: Vec<(u32, (usize, Vec<u8>))> =
            order.iter().copied().cycle().zip(all).collect();
        keyed.sort_by_key(|(k, _)| *k);
        let sent: Vec<(usize, Vec<u8>)> = keyed
            .into_iter()
            .zip(lost.iter().cycle())
            .filter(|(_, l)| !**l)
            .map(|(x, _)| x.1)
            .collect();
        let mut out: Vec<Packet<Vec<u8>>> = Vec::new();
        let (mut at_ms, mut i) = (0u64, 0usize);
        for (n, dt) in cuts.iter().cycle().take(cuts.len() + 20) {
            let frames: Vec<Vec<u8>> =
                sent.iter().skip(i).take(*n).map(|(_, f)| f.clone()).collect();
            i += frames.len();
            at_ms += dt;
            out.extend(run(&mut p, at(at_ms), &frames));
        }
        // Whatever is still held comes back through drain.
        let tail: Vec<_> = p.first.second.drain().collect();
        let mut back: Vec<Vec<u8>> = out.iter().chain(tail.iter()).map(|o| o.data().to_vec()).collect();
        let mut pushed: Vec<Vec<u8>> = sent.iter().take(i).map(|(_, f)| f.clone()).collect();
        back.sort();
        pushed.sort();
        prop_assert_eq!(back, pushed);
        // A passed later fragment has the session its datagram's first fragment got.
        let datagram_of: std::collections::HashMap<&[u8], usize> =
            sent.iter().map(|(d, f)| (f.as_slice(), *d)).collect();
        let mut first_session = std::collections::HashMap::new();
        for o in &out {
            if o.meta.has(flags::FRAGMENT) && !o.meta.has(flags::LATER_FRAGMENT) && o.meta.verdict.is_pass() {
                first_session.insert(datagram_of[o.data()], o.meta.session);
            }
        }
        for o in out.iter().filter(|o| o.meta.has(flags::LATER_FRAGMENT)) {
            if o.meta.verdict.is_pass() {
                prop_assert!(o.meta.session.is_some());
                prop_assert_eq!(first_session.get(&datagram_of[o.data()]), Some(&o.meta.session));
            } else {
                let reason = o.meta.verdict.drop_reason();
                prop_assert!(matches!(reason, Some(DropReason::FragmentHoldFull | DropReason::FragmentHoldExpired | DropReason::FragmentNoSession)), "{:?}", reason);
            }
        }
        prop_assert_eq!(counter(&p, "fragment_reorder", "later_fragments_holding"), 0);
    }
}

/// A buffer that records whether the hold hook moved it (as a receive ring's frame would
/// be copied out of its slot).
#[derive(Debug)]
struct Ring {
    bytes: Vec<u8>,
    detached: bool,
}

impl AsRef<[u8]> for Ring {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsMut<[u8]> for Ring {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

#[test]
fn the_hold_hook_sees_every_held_buffer_and_only_those() {
    let mut p = ParseStage::default()
        .then(
            FragmentReorder::new(ReorderConfig::new(SECRET))
                .on_hold(|b: &mut Ring| b.detached = true),
        )
        .then(Conntrack::new(ConntrackConfig::new(SECRET), ()).unwrap());
    let frags = fragments(false, 17, 5010, 1200);
    let mut b = Batch::new();
    for f in frags.iter().rev() {
        let n = f.len();
        b.push(
            Packet::new(
                Ring {
                    bytes: f.clone(),
                    detached: false,
                },
                0,
                n,
            )
            .unwrap(),
        )
        .unwrap();
    }
    p.process(at(0), &mut b);
    let detached: Vec<bool> = b.packets().iter().map(|p| p.buffer().detached).collect();
    assert_eq!(detached, [false, true, true]);
    assert!(b.packets().iter().all(|p| passed_with_session(&p.meta)));
}
