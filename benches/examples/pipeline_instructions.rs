//! A driver for counting instructions per packet of the `pipeline` scenario's gateway under
//! callgrind (no hardware counters needed): received Geneve frames of established sessions
//! (75% TCP ACKs, 25% UDP, either direction, 16 zones) and 1% new flows, replayed in batches
//! of 64 with the scenario's loop (per-batch restore: fresh `Meta`, the frame's bytes; new
//! flows' sessions removed 512 batches later), `BATCHES` times. The gateway, sessions and
//! frames are the scenario's own code (`benches/src/pipeline_setup.rs`); the rules are the
//! three that allow the traffic (TCP and UDP 443 from 10/8, UDP 53 from 172.16/12), without
//! the scenario's 58 others, which only a new flow's classification meets.
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
use nf_core::conntrack::Conntrack;
use nf_core::{Batch, Chain, Instant, Packet, SessionRef, Stage, StageExt};
use nf_nat::Snat;
use nf_policy::{PortRange, Prefix, SecurityGroups, SgDirection, SgPeer, SgRule};
use pipeline_setup::{PACKETS, Process, Sender, Side, gateway, open, restore, traffic};
use std::hint::black_box;

/// The gateway's conntrack stage.
type Ct = Conntrack<(SecurityGroups, Snat)>;

/// The first stages of the gateway as one side of the replay loop, with the way to its
/// conntrack stage (if it has one) to remove new flows' sessions.
struct Part<S> {
    stages: S,
    ct: fn(&mut S) -> Option<&mut Ct>,
}

impl<S: Stage<Vec<u8>>> Process for Part<S> {
    type Handle = SessionRef;
    fn run_batch(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.stages.process(now, batch);
    }
    fn handle(p: &Packet<Vec<u8>>) -> Option<SessionRef> {
        p.meta.session
    }
    fn remove(&mut self, h: SessionRef) {
        if let Some(ct) = (self.ct)(&mut self.stages) {
            ct.remove(Instant::ZERO, h);
        }
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
    let resolvers = SgPeer::Prefix(
        Prefix::masked(IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)), 12).unwrap_or(Prefix::ANY_V4),
    );
    let https = PortRange::single(443);
    let rules = [
        SgRule::tcp(SgDirection::Ingress, clients, https),
        SgRule::udp(SgDirection::Ingress, clients, https),
        SgRule::udp(SgDirection::Ingress, resolvers, PortRange::single(53)),
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
                restore(&mut batch, &frames.frames, b);
                b = (b + 1) % frames.batches();
                u64::from(batch.packets()[0].data()[30])
            });
        }
        "decap" => {
            let mut side = Side::new(Part {
                stages: decap,
                ct: |_| None,
            });
            run(&mut || side.step(&frames));
        }
        "decap-ct" => {
            let mut side = Side::new(Part {
                stages: decap.then(ct),
                ct: |c| Some(&mut c.second),
            });
            run(&mut || side.step(&frames));
        }
        "gw" => {
            let mut side = Side::new(Part {
                stages: decap.then(ct).then(encap),
                ct: |c| Some(&mut c.first.second),
            });
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
