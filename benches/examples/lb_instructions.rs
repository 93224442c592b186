//! A driver for counting instructions per packet of `Conntrack<Lb>` under callgrind (no
//! hardware counters needed): the `lb-stage` scenario (one whole-VIP listener, 1000 DNAT
//! backends in a Maglev table of 65,537 slots, established IPv4 sessions made through the
//! stage, 75% TCP, either direction, 1% new flows) replayed with the scenario's loop
//! (`replay::Replay`: restore `Meta`, process, retire new flows' sessions), `BATCHES` times.
//!
//! Modes: `lb` (the scenario's `Conntrack<Lb>`); `noop` (`Conntrack<()>` holding the same
//! flows, unbalanced traffic: the same lookups and replay, no load balancing), so
//! `lb - noop` is roughly the load balancer's own work.
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

use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_core::flow::proto;
use nf_core::{Batch, FlowKey, Instant, Meta, SessionRef, Stage, ZoneId};
use nf_lb::{
    BackendId, HashFields, Lb, LbKey, Listener, ListenerMatch, Listeners, Pool, PoolMember,
};
use replay::{Replay, Side, Traffic};
use std::hint::black_box;

/// Packets in the replayed stream (the scenario has 2^20; the driver's runs are short).
const PACKETS: usize = 1 << 17;
const BACKENDS: u32 = 1000;
const TABLE: u32 = 65_537;
const VIP: [u8; 4] = [100, 64, 0, 1];
const BACKEND_PORT: u16 = 8443;

/// The scenario's flows (`conntrack_insert::make_flows`, aimed at the VIP).
fn flows(n: usize) -> Vec<FlowKey> {
    (0..n)
        .map(|i| {
            let host = (i / 60_000) as u32;
            let sport = 1024 + (i % 60_000) as u16;
            let src = (0x0a00_0000 | host).to_be_bytes();
            let p = if i % 4 == 0 { proto::UDP } else { proto::TCP };
            FlowKey::v4(ZoneId((i % 16) as u32), src, VIP, p, sport, 443)
        })
        .collect()
}

fn backend(i: u32) -> ([u8; 4], u16) {
    let [_, a, b, c] = i.to_be_bytes();
    ([192, 168 | a, b, c], BACKEND_PORT)
}

struct OursLb(Conntrack<Lb>);

impl Side for OursLb {
    type Handle = SessionRef;
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.0.process(now, batch);
    }
    fn handle(meta: &Meta) -> Option<SessionRef> {
        meta.session
    }
    fn remove(&mut self, h: SessionRef) {
        self.0.remove(Instant::ZERO, h);
    }
}

fn lb(flows: &[FlowKey], capacity: u32) -> Conntrack<Lb> {
    let key = LbKey::new(*b"bench lb secret!");
    let pool = Pool::new((0..BACKENDS).map(|i| {
        let (a, p) = backend(i);
        PoolMember::new(BackendId::v4(a, p), 1)
    }));
    let on = ListenerMatch::Vip(VIP.into());
    let l = Listener::new(&key, on, HashFields::FiveTuple, pool, TABLE).expect("listener");
    let lb = Lb::new(Listeners::new(vec![l]).expect("listeners"));
    let cfg = ConntrackConfig::new(*b"bench secret key").sizes(Sizes {
        v4: capacity,
        v6: 1024,
    });
    let mut ct = Conntrack::new(cfg, lb).expect("stage config");
    replay::create_established(&mut ct, flows);
    ct
}

/// Reply-direction templates carry the backend's tuple; new flows go to the VIP.
fn aim(t: &mut Traffic, ct: &Conntrack<Lb>) {
    let news: Vec<Vec<usize>> = (0..t.batches())
        .map(|b| t.new_positions(b).collect())
        .collect();
    t.edit(|b, metas| {
        for (i, m) in metas.iter_mut().enumerate() {
            let f = m.flow;
            let [a, b2, c, d, ..] = *f.src_raw();
            if news[b].contains(&i) {
                m.flow = FlowKey::v4(f.zone, [a, b2, c, d], VIP, f.proto, f.src_port, f.dst_port);
            } else if f.src_bytes() == VIP {
                let hit = ct.lookup(&f.reversed()).expect("established");
                m.flow = ct.info(hit.session).expect("live").reply;
            }
        }
    });
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
            eprintln!("usage: lb_instructions lb|noop SESSIONS BATCHES");
            std::process::exit(2);
        }
    };
    let flows = flows(sessions);
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
        let ct = lb(&flows, capacity);
        aim(&mut traffic, &ct);
        run(OursLb(ct), &traffic, batches)
    };
    println!("{}", black_box(acc));
}
