//! A driver for counting instructions per packet of the `pipeline` scenario's gateway under
//! callgrind (no hardware counters needed): received Geneve frames of established sessions
//! (75% TCP ACKs, 25% UDP, either direction, 16 zones) replayed in batches of 64 with the
//! scenario's per-batch restore (fresh `Meta`, the frame's bytes), `BATCHES` times. The
//! gateway, sessions and frames are the scenario's own code (`benches/src/pipeline_setup.rs`);
//! the rules are two (TCP and UDP 443 from 10/8): established packets never meet them.
//!
//! Modes, each the stages before it plus one, so that differences are per stage: `restore`
//! (the restore alone), `decap`, `decap-ct` (decap, then `Conntrack<(SecurityGroups,
//! Snat)>`), `gw` (the whole gateway: then the Geneve encap).
//!
//! ```text
//! cargo build --release -p nf-bench --example pipeline_instructions
//! for n in 200 1200; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/pipeline_instructions gw 100000 $n 2>&1 | grep refs; done
//! ```
//! (instructions per packet = difference / (1000 × 64); the first run's count includes the
//! setup, which the difference cancels.) Without callgrind it prints a rough time per packet.

#[path = "../src/replay.rs"]
#[expect(dead_code, reason = "the replay module; the driver needs its Rng")]
mod replay;

#[path = "../src/nat_setup.rs"]
#[expect(
    dead_code,
    reason = "the nat-established setup; the driver needs its frames, flows and SNAT"
)]
mod nat_setup;

#[path = "../src/tunnel_frames.rs"]
#[expect(
    dead_code,
    reason = "the tunnel scenarios' frames; the driver needs the underlay and headroom"
)]
mod tunnel_frames;

#[path = "../src/pipeline_setup.rs"]
mod pipeline_setup;

use core::net::{IpAddr, Ipv4Addr};
use nf_core::{Batch, Chain, Instant, Stage, StageExt};
use nf_policy::{PortRange, Prefix, SgDirection, SgPeer, SgRule};
use pipeline_setup::{PACKETS, Process, Sender, Side, gateway, open, restore, traffic};
use std::hint::black_box;

/// Any stage (or chain of them) as one side of the replay loop.
struct Part<S>(S);

impl<S: Stage<Vec<u8>>> Process for Part<S> {
    fn run_batch(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.0.process(now, batch);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, sessions, batches) = match args.as_slice() {
        [m, s, n] => (
            m.clone(),
            s.parse::<usize>().unwrap_or(100_000),
            n.parse::<usize>().unwrap_or(1000),
        ),
        _ => {
            eprintln!("usage: pipeline_instructions restore|decap|decap-ct|gw SESSIONS BATCHES");
            std::process::exit(2);
        }
    };
    let clients = SgPeer::Prefix(
        Prefix::masked(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8).unwrap_or(Prefix::ANY_V4),
    );
    let https = PortRange::single(443);
    let rules = [
        SgRule::tcp(SgDirection::Ingress, clients, https),
        SgRule::udp(SgDirection::Ingress, clients, https),
    ];
    let mut sender = Sender::new();
    let mut gw = gateway(sessions, &rules);
    let replies = open(&mut gw, &mut sender, sessions);
    let frames = traffic(&mut sender, sessions, &replies, PACKETS / 4);
    let Chain {
        first: Chain {
            first: decap,
            second: ct,
        },
        second: encap,
    } = gw;
    let start = std::time::Instant::now();
    let mut acc = 0u64;
    let mut run = |side: &mut dyn FnMut() -> u64| {
        for _ in 0..batches {
            acc = acc.wrapping_add(side());
        }
    };
    match mode.as_str() {
        "restore" => {
            let mut batch = pipeline_setup::working_batch();
            let mut b = 0;
            run(&mut || {
                restore(&mut batch, &frames, b);
                b = (b + 1) % (frames.len() / pipeline_setup::BATCH);
                u64::from(batch.packets()[0].data()[30])
            });
        }
        "decap" => {
            let mut side = Side::new(Part(decap));
            run(&mut || side.step(&frames));
        }
        "decap-ct" => {
            let mut side = Side::new(Part(decap.then(ct)));
            run(&mut || side.step(&frames));
        }
        "gw" => {
            let mut side = Side::new(Part(decap.then(ct).then(encap)));
            run(&mut || side.step(&frames));
        }
        m => {
            eprintln!("unknown mode {m}: restore, decap, decap-ct or gw");
            std::process::exit(2);
        }
    }
    let ns = start.elapsed().as_secs_f64() * 1e9 / (batches * pipeline_setup::BATCH) as f64;
    eprintln!("{ns:.2} ns/packet (rough)");
    println!("{}", black_box(acc));
}
