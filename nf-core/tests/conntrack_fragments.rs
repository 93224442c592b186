//! Later fragments reach their first fragment's session through the conntrack stage's
//! bounded fragment table: in order, first fragment lost, table full (evictions), expiry;
//! IPv4 and IPv6. Frames are real fragments of one UDP datagram (the UDP length counts the
//! whole datagram, not the first fragment).
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{Conntrack, ConntrackConfig};
use nf_core::flags;
use nf_core::{
    Batch, Chain, Direction, DropReason, Duration, Instant, Meta, Packet, ParseStage, Stage,
    StageControl, StageExt, Verdict,
};

const C4: [u8; 4] = [10, 0, 0, 1];
const S4: [u8; 4] = [192, 0, 2, 10];
const C6: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const S6: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const UDP: u8 = 17;
/// Bytes of the datagram (UDP header included) in the first fragment; the rest follows.
const FIRST: usize = 24;
const DATAGRAM: usize = 48;

fn sum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ether(ethertype: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A UDP datagram of `DATAGRAM` bytes from `sp` to `dp` (checksum left 0).
fn datagram(sp: u16, dp: u16) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&sp.to_be_bytes());
    d.extend_from_slice(&dp.to_be_bytes());
    d.extend_from_slice(&(DATAGRAM as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.resize(DATAGRAM, 0xab);
    d
}

/// The IPv4 fragment of `dgram` at byte `off` (first: `..FIRST`, later: `FIRST..`).
fn v4_frag(src: [u8; 4], dst: [u8; 4], id: u16, dgram: &[u8], first: bool) -> Vec<u8> {
    let (part, off, more) = if first {
        (&dgram[..FIRST], 0u16, 0x2000u16)
    } else {
        (&dgram[FIRST..], (FIRST / 8) as u16, 0)
    };
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + part.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&(more | off).to_be_bytes());
    ip.extend_from_slice(&[64, UDP, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = ether(0x0800);
    f.extend_from_slice(&ip);
    f.extend_from_slice(part);
    f
}

/// The IPv6 fragment of `dgram`, with `dest_opts` behind the Fragment header in the first
/// fragment (RFC 8200 §4.5: the unfragmentable part precedes it, the rest of the chain is
/// fragmentable) — the later fragment's Fragment header then names Destination Options.
fn v6_frag(
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    dgram: &[u8],
    first: bool,
    dest_opts: bool,
) -> Vec<u8> {
    let opts: &[u8] = if dest_opts {
        &[UDP, 0, 1, 4, 0, 0, 0, 0]
    } else {
        &[]
    };
    let mut body = opts.to_vec();
    body.extend_from_slice(dgram);
    let (part, off, more) = if first {
        (&body[..opts.len() + FIRST], 0u16, 1u16)
    } else {
        (&body[opts.len() + FIRST..], (opts.len() + FIRST) as u16, 0)
    };
    let inner = if dest_opts { 60 } else { UDP };
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&((8 + part.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[44, 64]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&[inner, 0]);
    ip.extend_from_slice(&(off | more).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    let mut f = ether(0x86dd);
    f.extend_from_slice(&ip);
    f.extend_from_slice(part);
    f
}

/// An unfragmented UDP packet (the answer).
fn v4_udp(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
    let mut d = datagram(sp, dp);
    d.truncate(FIRST);
    d[4..6].copy_from_slice(&(FIRST as u16).to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + FIRST) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, UDP, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = ether(0x0800);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&d);
    f
}

fn v6_udp(src: [u8; 16], dst: [u8; 16], sp: u16, dp: u16) -> Vec<u8> {
    let mut d = datagram(sp, dp);
    d.truncate(FIRST);
    d[4..6].copy_from_slice(&(FIRST as u16).to_be_bytes());
    let mut f = ether(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(FIRST as u16).to_be_bytes());
    f.extend_from_slice(&[UDP, 64]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&d);
    f
}

type Pipeline = Chain<ParseStage, Conntrack>;

fn pipeline(capacity: u32) -> Pipeline {
    let mut cfg = ConntrackConfig::new(*b"fragment secret!");
    cfg.fragments.capacity = capacity;
    ParseStage::default().then(Conntrack::new(cfg, ()).unwrap())
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(1_000_000_000 + ms * 1_000_000)
}

fn one(p: &mut Pipeline, now: Instant, frame: Vec<u8>) -> Meta {
    run(p, now, vec![frame]).pop().unwrap()
}

fn run(p: &mut Pipeline, now: Instant, frames: Vec<Vec<u8>>) -> Vec<Meta> {
    let mut b = Batch::new();
    for f in frames {
        let n = f.len();
        b.push(Packet::new(f, 0, n).unwrap()).unwrap();
    }
    p.process(now, &mut b);
    b.drain().map(|p| p.meta).collect()
}

fn counter(p: &Pipeline, name: &str) -> u64 {
    let mut v = None;
    p.visit_counters(&mut |stage, c, n| {
        if stage == "conntrack" && c == name {
            v = Some(n);
        }
    });
    v.unwrap()
}

fn dropped(m: &Meta) -> Option<DropReason> {
    match m.verdict {
        Verdict::Drop(r) => Some(r),
        _ => None,
    }
}

/// The frames of one family: first fragment, later fragment (client → server, IP id `id`,
/// client port `sp`), and the unfragmented answer.
fn frames(v6: bool, id: u16, sp: u16) -> [Vec<u8>; 3] {
    let d = datagram(sp, 53);
    if v6 {
        [
            v6_frag(C6, S6, u32::from(id) << 8, &d, true, false),
            v6_frag(C6, S6, u32::from(id) << 8, &d, false, false),
            v6_udp(S6, C6, 53, sp),
        ]
    } else {
        [
            v4_frag(C4, S4, id, &d, true),
            v4_frag(C4, S4, id, &d, false),
            v4_udp(S4, C4, 53, sp),
        ]
    }
}

#[test]
fn in_order_fragments_reach_the_first_fragments_session() {
    for v6 in [false, true] {
        let mut p = pipeline(64);
        let [first, later, answer] = frames(v6, 0x1234, 5353);
        let m1 = one(&mut p, at(0), first);
        assert_eq!(m1.verdict, Verdict::Pass, "v6 {v6}: first fragment");
        assert!(m1.has(flags::FRAGMENT) && !m1.has(flags::RELATED));
        let s = m1.session.expect("the first fragment opens the session");
        let deadline = p.second.info(s).unwrap().deadline;
        let m2 = one(&mut p, at(2000), later);
        assert_eq!(m2.verdict, Verdict::Pass, "v6 {v6}: later fragment");
        assert!(m2.has(flags::LATER_FRAGMENT) && m2.has(flags::RELATED));
        assert_eq!((m2.session, m2.direction), (Some(s), Direction::Original));
        assert_eq!(
            p.second.info(s).unwrap().deadline,
            deadline,
            "a fragment refreshed"
        );
        let m3 = one(&mut p, at(2000), answer);
        assert_eq!((m3.session, m3.direction), (Some(s), Direction::Reply));
        assert!(!m3.has(flags::RELATED));
        assert_eq!(p.second.len(), 1);
        assert_eq!(counter(&p, "fragments_recorded"), 1);
        assert_eq!(counter(&p, "fragment_hits"), 1);
        assert_eq!(counter(&p, "related"), 1);
    }
}

#[test]
fn fragments_of_an_answer_are_related_in_the_reply_direction_and_batches_agree() {
    for v6 in [false, true] {
        let d = datagram(53, 5353);
        let [query, ..] = frames(v6, 1, 5353);
        let (first, later) = if v6 {
            (
                v6_frag(S6, C6, 9, &d, true, false),
                v6_frag(S6, C6, 9, &d, false, false),
            )
        } else {
            (v4_frag(S4, C4, 9, &d, true), v4_frag(S4, C4, 9, &d, false))
        };
        // The UDP query opens the session; the answer comes fragmented, all in one batch.
        let all = vec![query.clone(), first.clone(), later.clone()];
        let mut p = pipeline(64);
        let batched = run(&mut p, at(0), all.clone());
        let mut q = pipeline(64);
        let single: Vec<Meta> = all.into_iter().map(|f| one(&mut q, at(0), f)).collect();
        assert_eq!(batched, single, "v6 {v6}");
        let s = batched[0].session.unwrap();
        assert_eq!(
            (batched[1].session, batched[1].direction),
            (Some(s), Direction::Reply)
        );
        assert_eq!(
            (batched[2].session, batched[2].direction),
            (Some(s), Direction::Reply)
        );
        assert!(batched[2].has(flags::RELATED));
    }
}

#[test]
fn a_later_fragment_whose_first_was_lost_is_dropped() {
    for v6 in [false, true] {
        let mut p = pipeline(64);
        let [_, later, _] = frames(v6, 7, 6000);
        let m = one(&mut p, at(0), later);
        assert_eq!(dropped(&m), Some(DropReason::FragmentNoSession), "v6 {v6}");
        assert!(m.session.is_none() && !m.has(flags::RELATED));
        assert_eq!(counter(&p, "fragment_misses"), 1);
        assert!(p.second.is_empty(), "a later fragment created a session");
        // Another datagram of the same flow (other IP id) does not lend its entry.
        let [first, _, _] = frames(v6, 8, 6000);
        one(&mut p, at(1), first);
        let [_, later, _] = frames(v6, 7, 6000);
        assert_eq!(
            dropped(&one(&mut p, at(2), later)),
            Some(DropReason::FragmentNoSession)
        );
        assert_eq!(counter(&p, "fragment_misses"), 2);
    }
}

#[test]
fn a_full_fragment_table_evicts_the_oldest_entry() {
    for v6 in [false, true] {
        // Capacity 4: one set of 4 ways, so every first fragment competes for it.
        let mut p = pipeline(4);
        let flows: Vec<[Vec<u8>; 3]> = (0..6).map(|i| frames(v6, 100 + i, 7000 + i)).collect();
        for (i, [first, ..]) in flows.iter().enumerate() {
            let m = one(&mut p, at(i as u64 * 10), first.clone());
            assert_eq!(m.verdict, Verdict::Pass);
        }
        assert_eq!(counter(&p, "fragments_recorded"), 6);
        assert_eq!(counter(&p, "fragment_evictions"), 2, "v6 {v6}");
        // The two oldest were evicted; the four most recent still match.
        for (i, [_, later, _]) in flows.iter().enumerate() {
            let m = one(&mut p, at(100), later.clone());
            if i < 2 {
                assert_eq!(
                    dropped(&m),
                    Some(DropReason::FragmentNoSession),
                    "v6 {v6} flow {i}"
                );
            } else {
                assert!(m.has(flags::RELATED), "v6 {v6} flow {i}");
                assert_eq!(
                    m.session,
                    p.second.lookup(&flow_key(&flows[i][0])).map(|h| h.session)
                );
            }
        }
        assert_eq!(counter(&p, "fragment_misses"), 2);
        assert_eq!(counter(&p, "fragment_hits"), 4);
    }
}

/// The flow key the parse stage gives a frame.
fn flow_key(frame: &[u8]) -> nf_core::FlowKey {
    let mut m = Meta::default();
    nf_core::parse_frame(frame, &mut m, &nf_core::ParseConfig::default()).unwrap();
    m.flow
}

#[test]
fn a_later_fragment_after_the_lifetime_is_dropped() {
    for v6 in [false, true] {
        let mut p = pipeline(64);
        let life = Duration::from_secs(4); // the default lifetime
        let [first, later, _] = frames(v6, 0x4242, 8000);
        assert_eq!(one(&mut p, at(0), first).verdict, Verdict::Pass);
        let just_before = at(life.as_millis() - 1);
        assert!(
            one(&mut p, just_before, later.clone()).has(flags::RELATED),
            "v6 {v6}"
        );
        let m = one(&mut p, at(life.as_millis()), later);
        assert_eq!(dropped(&m), Some(DropReason::FragmentNoSession), "v6 {v6}");
        // The session itself lives on (UDP: 30 s).
        assert_eq!(p.second.len(), 1);
    }
}

#[test]
fn ipv6_later_fragments_match_when_extension_headers_follow_the_fragment_header() {
    // The first fragment's chain is Fragment → Destination Options → UDP; a later
    // fragment's Fragment header names Destination Options as its next header.
    let d = datagram(5000, 53);
    let mut p = pipeline(64);
    let m1 = one(&mut p, at(0), v6_frag(C6, S6, 99, &d, true, true));
    assert_eq!(m1.verdict, Verdict::Pass);
    let s = m1.session.unwrap();
    let m2 = one(&mut p, at(1), v6_frag(C6, S6, 99, &d, false, true));
    assert_eq!(m2.verdict, Verdict::Pass);
    assert!(m2.has(flags::RELATED));
    assert_eq!((m2.session, m2.direction), (Some(s), Direction::Original));
}
