//! How long a node takes to hand its sessions to another (`Conntrack::export` /
//! `Conntrack::import`), for the load balancer or the NAT:
//! - `lb`: `lb-stage`'s stage (one whole-VIP listener, 1000 DNAT backends, established IPv4
//!   sessions made through the stage);
//! - `nat-hyperplane` / `nat-rfc`: `nat-established`'s pipeline (four public addresses,
//!   75% TCP, every session opened through it, TCP by a handshake) in that profile (rfc:
//!   one endpoint-independent mapping per session, claimed by the importing node).
//!
//! Every session is exported in chunks, then imported into a fresh stage with the same
//! configuration. Prints nanoseconds per session for each side and the bytes per session
//! on the wire. A rough figure (one run, wall time), not a scenario: there is no peer to
//! run beside it.
//!
//! `sync-lb` / `sync-nat-hyperplane`: the same sessions kept on a replica instead
//! (`Conntrack::export_changes` → `Conntrack::apply`): the primary's change journal, which
//! its every session entered as it opened, drained in chunks and applied by a fresh stage;
//! then every session expires on the primary and the ends are sent the same way (the
//! replica removes each, its services releasing what the session held).
//!
//! `link-lb`: `lb`'s sessions through `nf_examples::sync` over loopback TCP, as a node that
//! comes back receives them: a peer connects, the full resync walks the table in export
//! chunks (at most 16 per poll, the walk waiting while half the sender's queue is taken),
//! the receiving node applies them (`Conntrack::apply_from`); the time from the connection
//! to the last session here, both nodes polled in turn on one thread, the socket threads
//! beside it. `link-lb-keyed`: the same on a keyed link (`SyncConfig::key`: every frame
//! tagged by the sender's thread and checked by the receiver's).
//!
//! ```text
//! cargo run --release -p nf-bench --example handover_time -- lb 1000000
//! cargo run --release -p nf-bench --example handover_time -- nat-hyperplane 1000000
//! cargo run --release -p nf-bench --example handover_time -- nat-rfc 200000
//! cargo run --release -p nf-bench --example handover_time -- sync-lb 1000000
//! cargo run --release -p nf-bench --example handover_time -- sync-nat-hyperplane 1000000
//! cargo run --release -p nf-bench --example handover_time -- link-lb 1000000
//! cargo run --release -p nf-bench --example handover_time -- link-lb-keyed 1000000
//! ```
//! (rfc's four addresses hold about 258,000 TCP mappings, so at most about 340,000
//! sessions.)

#[path = "../src/replay.rs"]
#[expect(dead_code, reason = "the replay module; the driver needs some of it")]
mod replay;

#[path = "../src/lb_setup.rs"]
#[expect(
    dead_code,
    reason = "the scenario's setup; the driver needs some of it"
)]
mod lb_setup;

#[path = "../src/nat_setup.rs"]
#[expect(
    dead_code,
    reason = "the scenario's setup; the driver needs some of it"
)]
mod nat_setup;

use nf_core::conntrack::{Conntrack, SessionService};
use nf_core::{Family, Instant, StageControl};
use nf_nat::Profile;
use std::time::Instant as Clock;

/// Sessions per export chunk.
const CHUNK: usize = 65_536;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (what, sessions) = match args.as_slice() {
        [w, n] => (w.as_str(), n.parse().expect("SESSIONS")),
        [w] => (w.as_str(), 1_000_000),
        _ => ("lb", 1_000_000),
    };
    match what {
        "lb" => {
            let flows = lb_setup::flows(sessions);
            let capacity = (sessions as f64 / 0.9).ceil() as u32;
            let a = lb_setup::lb(&flows, capacity);
            let mut b = lb_setup::lb(&[], capacity);
            hand_over(what, &a, &mut b, sessions);
        }
        "nat-hyperplane" | "nat-rfc" => {
            let profile = if what == "nat-rfc" {
                Profile::Rfc
            } else {
                Profile::Hyperplane
            };
            let mut a = nat_setup::open_with(profile, sessions);
            nat_setup::mappings(&mut a, sessions);
            let mut b = nat_setup::open_with(profile, sessions);
            hand_over(what, &a.second, &mut b.second, sessions);
        }
        "sync-lb" => {
            let flows = lb_setup::flows(sessions);
            let capacity = (sessions as f64 / 0.9).ceil() as u32;
            let journal = u32::try_from(sessions).expect("sessions");
            let mut a = lb_setup::lb_journaled(&flows, capacity, journal);
            let mut b = lb_setup::lb(&[], capacity);
            replicate(what, &mut a, &mut b, sessions);
        }
        "link-lb" | "link-lb-keyed" => {
            let flows = lb_setup::flows(sessions);
            let capacity = (sessions as f64 / 0.9).ceil() as u32;
            let mut a = lb_setup::lb(&flows, capacity);
            let mut b = lb_setup::lb(&[], capacity);
            let key = (what == "link-lb-keyed").then_some(*b"handover_time ky");
            over_link(what, &mut a, &mut b, sessions, key);
        }
        "sync-nat-hyperplane" => {
            let journal = u32::try_from(sessions).expect("sessions");
            let mut a = nat_setup::open_journaled(Profile::Hyperplane, sessions, journal);
            nat_setup::mappings(&mut a, sessions);
            let mut b = nat_setup::open_with(Profile::Hyperplane, sessions);
            replicate(what, &mut a.second, &mut b.second, sessions);
        }
        _ => {
            eprintln!(
                "usage: handover_time lb|nat-hyperplane|nat-rfc|sync-lb|sync-nat-hyperplane|link-lb|link-lb-keyed [SESSIONS]"
            );
            std::process::exit(2);
        }
    }
}

/// Moves every session of `a` to `b` and prints the figures.
fn hand_over<S: SessionService>(
    what: &str,
    a: &Conntrack<S>,
    b: &mut Conntrack<S>,
    sessions: usize,
) {
    let now = Instant::from_nanos(nat_setup::START_NS);
    let start = Clock::now();
    let mut chunks = Vec::new();
    let mut from = 0;
    loop {
        let mut c = Vec::with_capacity(CHUNK * 128);
        let p = a
            .export(Family::V4, now, from, CHUNK, &mut c)
            .expect("the sessions move");
        chunks.push(c);
        match p.next {
            Some(n) => from = n,
            None => break,
        }
    }
    let export = start.elapsed();
    let bytes: usize = chunks.iter().map(Vec::len).sum();

    let start = Clock::now();
    let mut imported = 0;
    for c in &chunks {
        let r = b.import(now, c).expect("a chunk just made");
        assert_eq!((r.refused, r.skipped), (0, 0));
        imported += r.imported;
    }
    let import = start.elapsed();
    assert_eq!(imported, sessions);
    assert_eq!(b.len(), sessions);

    let per = |d: std::time::Duration| d.as_nanos() as f64 / sessions as f64;
    println!(
        "{{\"what\": \"{what}\", \"sessions\": {sessions}, \"export_ns_per_session\": {:.1}, \"import_ns_per_session\": {:.1}, \"bytes_per_session\": {:.1}, \"chunks\": {}}}",
        per(export),
        per(import),
        bytes as f64 / sessions as f64,
        chunks.len()
    );
}

/// Drains `a`'s journal into `b` in chunks; returns the time of each side and the bytes.
fn drain<S: SessionService>(
    a: &mut Conntrack<S>,
    b: &mut Conntrack<S>,
    now: Instant,
) -> (
    std::time::Duration,
    std::time::Duration,
    usize,
    nf_core::conntrack::ApplyReport,
) {
    let start = Clock::now();
    let mut chunks = Vec::new();
    loop {
        let mut c = Vec::with_capacity(CHUNK * 128);
        let p = a
            .export_changes(Family::V4, now, CHUNK, &mut c)
            .expect("the sessions move");
        assert_eq!(p.lost, 0);
        chunks.push(c);
        if !p.pending {
            break;
        }
    }
    let export = start.elapsed();
    let bytes = chunks.iter().map(Vec::len).sum();
    let start = Clock::now();
    let mut sum = nf_core::conntrack::ApplyReport::default();
    for c in &chunks {
        let r = b.apply(now, c).expect("a chunk just made");
        sum.created += r.created;
        sum.ended += r.ended;
        sum.refused += r.refused;
        sum.skipped += r.skipped;
    }
    (export, start.elapsed(), bytes, sum)
}

/// Keeps `a`'s sessions on the replica `b` through the change journal, then sends their
/// ends, and prints the figures.
fn replicate<S: SessionService>(
    what: &str,
    a: &mut Conntrack<S>,
    b: &mut Conntrack<S>,
    sessions: usize,
) {
    let now = Instant::from_nanos(nat_setup::START_NS);
    let (export, apply, bytes, r) = drain(a, b, now);
    assert_eq!((r.created, r.refused, r.skipped), (sessions, 0, 0));
    assert_eq!(b.len(), sessions);
    // Every session expires on the primary; the replica hears of each end.
    let later = now + nf_core::Duration::from_secs(30 * 24 * 3600);
    while a.poll_timeout().is_some_and(|t| t <= later) {
        a.handle_timeout(later, 1 << 20);
    }
    assert_eq!(a.len(), 0);
    let (end_export, end_apply, end_bytes, r) = drain(a, b, later);
    assert_eq!(r.ended, sessions);
    assert_eq!(b.len(), 0);
    let per = |d: std::time::Duration| d.as_nanos() as f64 / sessions as f64;
    println!(
        "{{\"what\": \"{what}\", \"sessions\": {sessions}, \"export_changes_ns_per_session\": {:.1}, \"apply_ns_per_session\": {:.1}, \"bytes_per_session\": {:.1}, \"end_export_ns\": {:.1}, \"end_apply_ns\": {:.1}, \"end_bytes\": {:.1}}}",
        per(export),
        per(apply),
        bytes as f64 / sessions as f64,
        per(end_export),
        per(end_apply),
        end_bytes as f64 / sessions as f64,
    );
}

/// A loopback address with a port nobody listens on.
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port")
}

/// `a`'s sessions to `b` through a sync link's full resync over loopback TCP.
fn over_link<S: SessionService>(
    what: &str,
    a: &mut Conntrack<S>,
    b: &mut Conntrack<S>,
    sessions: usize,
    key: Option<[u8; 16]>,
) {
    use nf_examples::sync::{SyncConfig, SyncLink};
    let (aa, ba) = (free_addr(), free_addr());
    let config = |listen, peer| SyncConfig {
        key,
        ..SyncConfig::new(listen, vec![peer])
    };
    let mut la = SyncLink::start(config(aa, ba)).expect("link A");
    let mut lb = SyncLink::start(config(ba, aa)).expect("link B");
    // A's connection to B first (it retries every 250 ms): the resync starts at A's next
    // poll after it.
    let wait = Clock::now();
    while la.connected() == 0 {
        assert!(wait.elapsed().as_secs() < 10, "A never connected");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut now = Instant::from_nanos(nat_setup::START_NS);
    let start = Clock::now();
    while b.len() < sessions {
        assert!(start.elapsed().as_secs() < 300, "{} of {sessions}", b.len());
        now += nf_core::Duration::from_millis(1);
        la.poll(now, a);
        lb.poll(now, b);
    }
    let took = start.elapsed();
    let (ca, cb) = (la.counters(), lb.counters());
    assert_eq!((ca.send_dropped, cb.apply_errors, cb.skipped), (0, 0, 0));
    println!(
        "{{\"what\": \"{what}\", \"sessions\": {sessions}, \"seconds\": {:.3}, \"ns_per_session\": {:.1}, \"sessions_per_second\": {:.0}, \"bytes_per_session\": {:.1}, \"frames\": {}}}",
        took.as_secs_f64(),
        took.as_nanos() as f64 / sessions as f64,
        sessions as f64 / took.as_secs_f64(),
        ca.sent_bytes as f64 / sessions as f64,
        ca.sent_frames,
    );
}
