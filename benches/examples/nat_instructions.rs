//! A driver for counting instructions per packet of `Conntrack<Snat>` under callgrind (no
//! hardware counters needed): the `nat-established` scenario's traffic (established IPv4
//! sessions, 75% TCP ACKs, 25% UDP, either direction, 64-byte frames) replayed in batches of
//! 64 with the scenario's per-batch restore (frame bytes and `Meta`), `BATCHES` times.
//!
//! Modes: `nat` (the scenario's `Conntrack<Snat>`, hyperplane profile, four public
//! addresses); `noop` (a tracker whose service only sets each flow's reply key to the one the
//! NAT chose, its sessions opened by the same handshake: the same lookups and states, no
//! translation), so `nat - noop` is the NAT's own work; `restore` (the restore alone). The
//! sessions and traffic are the scenario's own code (`benches/src/nat_setup.rs`).
//!
//! ```text
//! cargo build --release -p nf-bench --example nat_instructions
//! for n in 200 1200; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/nat_instructions nat 100000 $n 2>&1 | grep refs; done
//! ```
//! (instructions per packet = difference / (1000 × 64); the first run's count includes the
//! setup, which the difference cancels.)

#[path = "../src/replay.rs"]
#[expect(
    dead_code,
    reason = "the replay module; the driver needs its Stream and Rng"
)]
mod replay;

#[path = "../src/nat_setup.rs"]
mod nat_setup;

use nat_setup::{BATCH, BATCH_NS, START_NS, Traffic, mappings, open, working_batch};
use nf_core::conntrack::{Conntrack, NewFlow, SessionService};
use nf_core::{DropReason, FlowKey, Instant, Packet, ParseStage, Stage, StageExt};
use std::collections::HashMap;
use std::hint::black_box;

/// Distinct packets replayed (as the scenario, fewer: the driver's runs are short).
const PACKETS: usize = 1 << 16;

/// A service that only gives each new flow the reply key the NAT chose for it.
struct FixedReply(HashMap<FlowKey, FlowKey>);

impl SessionService for FixedReply {
    type Value = ();

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<(), DropReason> {
        let reply = *self.0.get(new.original()).ok_or(DropReason::NoSession)?;
        new.set_reply(reply).map_err(|_| DropReason::NoSession)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, sessions, batches) = match args.as_slice() {
        [m, s, n] => (
            m.clone(),
            s.parse::<usize>().expect("SESSIONS"),
            n.parse::<u64>().expect("BATCHES"),
        ),
        _ => {
            eprintln!("usage: nat_instructions nat|noop|restore SESSIONS BATCHES");
            std::process::exit(2);
        }
    };
    let mut nat = open(sessions);
    let replies = mappings(&mut nat, sessions);
    let mut plain = (mode == "noop").then(|| {
        let fixed = (0..sessions)
            .map(|i| (nat_setup::flow(i), replies[i]))
            .collect();
        let ct = Conntrack::new(nat_setup::conntrack_config(sessions), FixedReply(fixed));
        let mut pipe = ParseStage::default().then(ct.expect("conntrack config"));
        assert_eq!(
            mappings(&mut pipe, sessions),
            replies,
            "the same reply keys"
        );
        pipe
    });
    let traffic = Traffic::new(sessions, &replies, PACKETS);
    let mut batch = working_batch();
    let rounds = traffic.batches();
    let mut acc = 0u64;
    let start = std::time::Instant::now();
    for n in 0..batches {
        traffic.restore(&mut batch, n as usize % rounds);
        let now = Instant::from_nanos(START_NS + n * BATCH_NS);
        match (&mut plain, mode.as_str()) {
            (Some(p), _) => black_box(&mut p.second).process(now, &mut batch),
            (None, "nat") => black_box(&mut nat.second).process(now, &mut batch),
            _ => {}
        }
        acc = acc.wrapping_add(u64::from(batch.packets()[0].data()[26]));
    }
    let ns = start.elapsed().as_nanos() as f64 / (batches as f64 * BATCH as f64);
    eprintln!("{mode}: {ns:.2} ns/packet (rough)");
    if mode != "restore" {
        assert!(
            batch.packets().iter().all(|p| p.meta.verdict.is_pass()),
            "every packet passes"
        );
    }
    println!("{}", black_box(acc));
}
