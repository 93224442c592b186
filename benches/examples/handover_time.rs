//! How long a node takes to hand its load balancer's sessions to another
//! (`Conntrack::export` / `Conntrack::import`): `lb-stage`'s stage (one whole-VIP listener,
//! 1000 DNAT backends, established IPv4 sessions made through the stage), every session
//! exported in chunks, then imported into a fresh stage with the same configuration.
//! Prints nanoseconds per session for each side and the bytes per session on the wire.
//! A rough figure (one run, wall time), not a scenario: there is no peer to run beside it.
//!
//! ```text
//! cargo run --release -p nf-bench --example handover_time -- 1000000
//! ```

#[path = "../src/replay.rs"]
#[expect(dead_code, reason = "the replay module; the driver needs some of it")]
mod replay;

#[path = "../src/lb_setup.rs"]
#[expect(
    dead_code,
    reason = "the scenario's setup; the driver needs some of it"
)]
mod lb_setup;

use nf_core::{Family, Instant};
use std::time::Instant as Clock;

/// Sessions per export chunk.
const CHUNK: usize = 65_536;

fn main() {
    let sessions: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |s| s.parse().expect("SESSIONS"));
    let flows = lb_setup::flows(sessions);
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let a = lb_setup::lb(&flows, capacity);
    let mut b = lb_setup::lb(&[], capacity);
    let now = Instant::from_nanos(1_000_000_000);

    let start = Clock::now();
    let mut chunks = Vec::new();
    let mut from = 0;
    loop {
        let mut c = Vec::with_capacity(CHUNK * 128);
        let p = a
            .export(Family::V4, now, from, CHUNK, &mut c)
            .expect("LB sessions move");
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
        "{{\"sessions\": {sessions}, \"export_ns_per_session\": {:.1}, \"import_ns_per_session\": {:.1}, \"bytes_per_session\": {:.1}, \"chunks\": {}}}",
        per(export),
        per(import),
        bytes as f64 / sessions as f64,
        chunks.len()
    );
}
