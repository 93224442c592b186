//! scapy builds the packets that open sessions (TCP, UDP, ICMP echo; IPv4 and IPv6) and ICMP
//! errors quoting them in both directions (every error type, inner IPv4 options, inner IPv6
//! extension headers, truncated quotes, bad inner checksums, quotes of unknown flows), with
//! the outcome each must have; parse + conntrack must relate each error to the right session
//! and direction or drop it with the expected reason, and an error must never create,
//! refresh or end a session (RFC 5508 REQ-6, RFC 4787 REQ-12). The table lives in
//! `scapy/related_cases.py`.

mod common;

use nf_core::conntrack::{Conntrack, ConntrackConfig};
use nf_core::flags;
use nf_core::{
    Batch, Direction, Duration, Instant, Meta, Packet, ParseStage, SessionRef, Stage, StageControl,
    StageExt, Verdict,
};
use std::collections::BTreeMap;

type Pipeline = nf_core::Chain<ParseStage, Conntrack>;

fn pipeline() -> Pipeline {
    ParseStage::default()
        .then(Conntrack::new(ConntrackConfig::new(*b"related secret!!"), ()).unwrap())
}

/// Runs `frames` through `p` in batches of `size`, at `now` plus `step` per batch.
fn run(
    p: &mut Pipeline,
    frames: &[Vec<u8>],
    size: usize,
    now: Instant,
    step: Duration,
) -> Vec<Meta> {
    let mut out = Vec::new();
    let mut t = now;
    for chunk in frames.chunks(size) {
        let mut b = Batch::new();
        for f in chunk {
            b.push(Packet::new(f.clone(), 0, f.len()).unwrap()).unwrap();
        }
        p.process(t, &mut b);
        out.extend(b.drain().map(|p| p.meta));
        t = t.checked_add(step).unwrap();
    }
    out
}

fn counter(p: &Pipeline, name: &str) -> u64 {
    let mut v = None;
    p.visit_counters(&mut |stage, c, n| {
        if stage == "conntrack" && c == name {
            v = Some(n);
        }
    });
    v.unwrap_or_else(|| panic!("no conntrack counter {name}"))
}

fn dir(d: Direction) -> &'static str {
    match d {
        Direction::Original => "original",
        Direction::Reply => "reply",
    }
}

/// The outcome of one packet in the table's words; `sessions` maps flow names to the
/// session their first packet got (filled by `session ...` rows).
fn outcome(want: &str, m: &Meta, sessions: &mut BTreeMap<String, SessionRef>) -> String {
    let name_of = |sessions: &BTreeMap<String, SessionRef>, r: SessionRef| {
        sessions
            .iter()
            .find(|(_, v)| **v == r)
            .map_or_else(|| format!("{r:?}"), |(k, _)| k.clone())
    };
    match (m.verdict, m.session) {
        (Verdict::Drop(r), _) => format!("drop {}", r.name()),
        (Verdict::Pass, Some(r)) if m.has(flags::RELATED) => {
            format!("related {} {}", dir(m.direction), name_of(sessions, r))
        }
        (Verdict::Pass, Some(r)) => {
            if want.starts_with("session ") {
                let name = want.split(' ').nth(1).unwrap_or("").to_string();
                sessions.entry(name).or_insert(r);
            }
            format!("session {} {}", name_of(sessions, r), dir(m.direction))
        }
        (v, s) => format!("{v:?} session {s:?}"),
    }
}

#[test]
fn icmp_errors_are_related_to_the_quoted_session_or_dropped() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scapy/related_cases.py");
    let Some((rows, frames)) = common::scapy_cases(script, "scapy-related") else {
        return;
    };
    let rows: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert!(rows.len() >= 90, "the case table shrank");
    let opening = rows
        .iter()
        .take_while(|(_, w)| w.starts_with("session "))
        .count();
    assert!(
        rows[opening..]
            .iter()
            .all(|(_, w)| !w.starts_with("session ")),
        "the packets that open sessions come first"
    );
    let flows = rows[..opening]
        .iter()
        .filter(|(_, w)| w.ends_with(" original"))
        .count();

    // Sessions first, then the errors later (a refresh would move the deadlines: UDP and
    // ICMP sessions live 30 s, timers tick every second).
    let t0 = Instant::from_nanos(1_000_000_000);
    let later = t0.checked_add(Duration::from_secs(5)).unwrap();
    let step = Duration::from_millis(10);
    let mut p = pipeline();
    let mut got = run(&mut p, &frames[..opening], nf_core::BATCH_SIZE, t0, step);
    let mut sessions = BTreeMap::new();
    let opened: Vec<String> = rows[..opening]
        .iter()
        .zip(&got)
        .map(|((_, w), m)| outcome(w, m, &mut sessions))
        .collect();
    assert_eq!(sessions.len(), flows, "every flow got its own session");
    let ct = &p.second;
    assert_eq!(ct.len(), flows);
    let deadlines: BTreeMap<String, Instant> = sessions
        .iter()
        .map(|(k, r)| (k.clone(), ct.info(*r).unwrap().deadline))
        .collect();
    let (created, related) = (counter(&p, "created"), counter(&p, "related"));

    got.extend(run(
        &mut p,
        &frames[opening..],
        nf_core::BATCH_SIZE,
        later,
        step,
    ));
    let ct = &p.second;
    assert_eq!(ct.len(), flows, "an ICMP error created or ended a session");
    assert_eq!(counter(&p, "created"), created);
    for (name, r) in &sessions {
        assert!(ct.is_live(*r), "{name}: session ended by an error");
        assert_eq!(
            ct.info(*r).unwrap().deadline,
            deadlines[name],
            "{name}: an ICMP error refreshed the session"
        );
    }
    // A packet of the flow at that time does move its deadline: the check above would see a
    // refresh.
    let mut probe = pipeline();
    run(
        &mut probe,
        &frames[..opening],
        nf_core::BATCH_SIZE,
        t0,
        step,
    );
    let m = run(&mut probe, &frames[..1], 1, later, step).pop().unwrap();
    let (first, r) = sessions
        .iter()
        .find(|(_, r)| Some(**r) == m.session)
        .unwrap();
    assert_ne!(probe.second.info(*r).unwrap().deadline, deadlines[first]);

    let mut failures = Vec::new();
    let mut want_related = 0;
    for (i, ((name, want), m)) in rows.iter().zip(&got).enumerate() {
        let have = if i < opening {
            opened[i].clone()
        } else {
            outcome(want, m, &mut sessions)
        };
        want_related += u64::from(want.starts_with("related "));
        if have != *want {
            failures.push(format!("{name}: expected {want:?}, got {have:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert!(want_related >= 60, "the related cases shrank");
    assert_eq!(counter(&p, "related") - related, want_related);

    // The same frames in one stream (errors in the same batch as the sessions they quote),
    // in batches of 1, 7 and 64: the same result, packet for packet.
    let key = |m: &Meta| (m.verdict, m.session, m.direction, m.flags & flags::RELATED);
    let want: Vec<_> = got.iter().map(key).collect();
    for size in [1, 7, nf_core::BATCH_SIZE] {
        let mut q = pipeline();
        let have: Vec<_> = run(&mut q, &frames, size, t0, Duration::from_nanos(0))
            .iter()
            .map(key)
            .collect();
        assert_eq!(have, want, "batches of {size}");
        assert_eq!(counter(&q, "related"), want_related, "batches of {size}");
    }
    eprintln!("{} scapy related cases checked", rows.len());
}
