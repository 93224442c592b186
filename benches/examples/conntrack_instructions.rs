//! A driver for counting instructions per packet of the conntrack stage under callgrind (no
//! hardware counters needed): the `conntrack-stage` scenario's traffic (99% established,
//! 1% new flows, batches of 64, `replay::Replay` with its restore and removals) over
//! `SESSIONS` IPv4 sessions, replayed for `ITERS` batches.
//!
//! ```text
//! cargo build --release -p nf-bench --example conntrack_instructions
//! for n in 1000 3000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/conntrack_instructions stage 100000 $n 2>&1 | grep refs; done
//! ```
//! (instructions per packet = difference / (2000 × 64).) Modes: `stage` is the scenario's
//! step (restore, `Stage::process`, removals); `lookup` the same keys through
//! `SessionTable::lookup_batch` alone; `restore` the restore alone, so the stage's own
//! pass is `stage - lookup - restore` (less the removals of the 1% new flows). Instruction
//! counts hardly depend on the table size; 100k sessions keep callgrind quick.

#[allow(
    dead_code,
    reason = "shared with the scenario runner, which uses all of it"
)]
#[path = "../src/replay.rs"]
mod replay;

use nf_core::FlowKey;
use nf_core::{Batch, Instant, Meta, SessionRef};
use replay::{Ours, Replay, Rng, Side, Traffic, make_flows};
use std::hint::black_box;

const BATCH: usize = 64;
/// Packets in the replayed stream (it wraps round; new flows live half of it at most).
const PACKETS: usize = 1 << 16;

/// The stage, called out of line so that callgrind can attribute its cost
/// (`--toggle-collect='*Measured*process*'`).
struct Measured(Ours);

impl Side for Measured {
    type Handle = SessionRef;
    #[inline(never)]
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.0.process(now, batch);
    }
    fn handle(meta: &Meta) -> Option<SessionRef> {
        Ours::<()>::handle(meta)
    }
    fn remove(&mut self, h: SessionRef) {
        self.0.remove(h);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, sessions, iters) = match args.as_slice() {
        [m, s, n] => (
            m.as_str(),
            s.parse::<usize>().expect("SESSIONS"),
            n.parse::<u64>().expect("ITERS"),
        ),
        _ => {
            eprintln!("usage: conntrack_instructions stage|lookup|restore SESSIONS ITERS");
            std::process::exit(2);
        }
    };
    let flows = make_flows(sessions, 0xC0FFEE);
    let mut rng = Rng::new(0x57A6E);
    let traffic = Traffic::new(&flows, PACKETS, BATCH, 0.01, || rng.next_u64());
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let (ours, _peer) = replay::established_sides(&flows, capacity);
    let mut ours = Replay::new(Measured(ours), &traffic);
    let keys: Vec<FlowKey> = traffic.templates().iter().map(|m| m.flow).collect();
    let mut batch = replay::working_batch(BATCH);
    let mut out = [None; 64];
    let mut acc = 0u64;
    let start = std::time::Instant::now();
    for it in 0..iters as usize {
        let b = it % traffic.batches();
        acc = acc.wrapping_add(match mode {
            "stage" => ours.step(black_box(&traffic)),
            "lookup" => {
                let q = &keys[b * BATCH..(b + 1) * BATCH];
                u64::from(ours.side.0.0.v4().lookup_batch(q, &mut out).count_ones())
            }
            _ => {
                traffic.restore(&mut batch, b);
                u64::from(batch.packets()[0].meta.flow.src_port)
            }
        });
    }
    // Wall time too, for a rough look (the scenario runner is the reference).
    let ns = start.elapsed().as_nanos() as f64 / (iters as f64 * BATCH as f64);
    eprintln!("{mode}: {ns:.2} ns/packet");
    if mode == "stage" {
        assert!(
            ours.packets().iter().all(|p| p.meta.verdict.is_pass()),
            "every packet passes"
        );
    }
    println!("{}", black_box(acc));
}
