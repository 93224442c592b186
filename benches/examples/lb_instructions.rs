//! A driver for counting instructions per packet of `Conntrack<Lb>` under callgrind (no
//! hardware counters needed): the `lb-stage` scenario (one whole-VIP listener, 1000 DNAT
//! backends in a Maglev table of 65,537 slots, established IPv4 sessions made through the
//! stage, 75% TCP, either direction, 1% new flows) replayed with the scenario's loop
//! (`replay::Replay`: restore `Meta`, process, retire new flows' sessions), `BATCHES` times.
//!
//! Modes: `lb` (the scenario's `Conntrack<Lb>`); `noop` (`Conntrack<()>` holding the same
//! flows, unbalanced traffic: the same lookups and replay, no load balancing), so
//! `lb - noop` is roughly the load balancer's own work; `lb-sync`, `lb` with a change
//! journal drained every 16 batches into a delta chunk for a replica (the chunk is made,
//! not sent), so `lb-sync - lb` is what keeping a replica costs the primary per packet.
//!
//! ```text
//! cargo build --release -p nf-bench --example lb_instructions
//! for n in 200 1200; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/lb_instructions lb 100000 $n 2>&1 | grep refs; done
//! ```
//! (instructions per packet = difference / (1000 × 64).)

#[path = "../src/replay.rs"]
#[expect(dead_code, reason = "the replay module; the driver needs some of it")]
mod replay;

#[path = "../src/lb_setup.rs"]
mod lb_setup;

use nf_core::conntrack::Conntrack;
use nf_core::{Batch, Instant, Meta, SessionRef, Stage};
use nf_lb::Lb;
use replay::{Replay, Side, Traffic};
use std::hint::black_box;

/// Packets in the replayed stream (the scenario has 2^20; the driver's runs are short).
const PACKETS: usize = 1 << 17;

/// The stage, and (`lb-sync`) the batches since the last drain and the chunk buffer.
struct OursLb(Conntrack<Lb>, Option<(u32, Vec<u8>)>);

impl Side for OursLb {
    type Handle = SessionRef;
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.0.process(now, batch);
        if let Some((n, chunk)) = &mut self.1 {
            *n += 1;
            if *n == 16 {
                *n = 0;
                chunk.clear();
                let p = self
                    .0
                    .export_changes(nf_core::Family::V4, now, usize::MAX, chunk);
                black_box(p.ok());
            }
        }
    }
    fn handle(meta: &Meta) -> Option<SessionRef> {
        meta.session
    }
    fn remove(&mut self, h: SessionRef) {
        self.0.remove(Instant::ZERO, h);
    }
}

fn run<S: Side>(side: S, t: &Traffic, batches: u64) -> u64 {
    let mut r = Replay::new(side, t);
    let mut acc = 0u64;
    let start = std::time::Instant::now();
    for _ in 0..batches {
        acc = acc.wrapping_add(r.step(black_box(t)));
    }
    let ns = start.elapsed().as_nanos() as f64 / (batches as f64 * t.batch as f64);
    eprintln!("{ns:.2} ns/packet (rough)");
    acc
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
            eprintln!("usage: lb_instructions lb|noop|lb-sync SESSIONS BATCHES");
            std::process::exit(2);
        }
    };
    let flows = lb_setup::flows(sessions);
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let mut x = 0x57A6Eu64;
    let rand = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut traffic = Traffic::new(&flows, PACKETS, 64, 0.01, rand);
    let acc = if mode == "noop" {
        let (ours, _) = replay::established_sides(&flows, capacity);
        run(ours, &traffic, batches)
    } else {
        let sync = mode == "lb-sync";
        // 16 batches of 64 packets make about 10 new flows and 10 ends: room for far more.
        let mut ct = if sync {
            lb_setup::lb_journaled(&flows, capacity, 4096)
        } else {
            lb_setup::lb(&flows, capacity)
        };
        lb_setup::aim(&mut traffic, &ct);
        let mut chunk = Vec::with_capacity(1 << 20);
        // The sessions the setup made: drained once (most were lost: a full sweep's job).
        let _ = ct.export_changes(nf_core::Family::V4, Instant::ZERO, usize::MAX, &mut chunk);
        run(OursLb(ct, sync.then_some((0, chunk))), &traffic, batches)
    };
    println!("{}", black_box(acc));
}
