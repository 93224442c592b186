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
//! ```text
//! cargo run --release -p nf-bench --example handover_time -- lb 1000000
//! cargo run --release -p nf-bench --example handover_time -- nat-hyperplane 1000000
//! cargo run --release -p nf-bench --example handover_time -- nat-rfc 200000
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
use nf_core::{Family, Instant};
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
        _ => {
            eprintln!("usage: handover_time lb|nat-hyperplane|nat-rfc [SESSIONS]");
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
