//! A driver for counting instructions per packet of `Conntrack<Snat>` under callgrind (no
//! hardware counters needed): the `nat-established` scenario's traffic (established IPv4
//! sessions, 75% TCP ACKs, 25% UDP, either direction, 64-byte frames) replayed in batches of
//! 64 with the scenario's per-batch restore (frame bytes and `Meta`), `BATCHES` times.
//!
//! Modes: `nat` (the scenario's `Conntrack<Snat>`, hyperplane profile, four public
//! addresses); `noop` (a `Conntrack<()>` holding the same sessions, with the same original
//! and reply keys and initial states: the same lookups, no translation), so `nat - noop` is
//! the NAT's own work; `restore` (the restore alone).
//!
//! ```text
//! cargo build --release -p nf-bench --example nat_instructions
//! for n in 200 1200; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/nat_instructions nat 100000 $n 2>&1 | grep refs; done
//! ```
//! (instructions per packet = difference / (1000 × 64); the first run's count includes the
//! setup, which the difference cancels.)

#[path = "../src/replay.rs"]
#[expect(dead_code, reason = "the replay module; the driver needs its Stream")]
mod replay;

use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionState, Sizes};
use nf_core::flow::proto;
use nf_core::wire::Frame;
use nf_core::wire::tcp::tcp_flags;
use nf_core::{Batch, FlowKey, Instant, Packet, ParseStage, Stage, ZoneId};
use nf_nat::{AllocatorConfig, Profile, Snat, SnatConfig, nat_timeouts};
use replay::Stream;
use std::hint::black_box;

const BATCH: usize = 64;
const FRAME: usize = 64;
/// Distinct packets replayed (as the scenario, fewer: the driver's runs are short).
const PACKETS: usize = 1 << 16;
const PUBLICS: [[u8; 4]; 4] = [
    [203, 0, 113, 1],
    [203, 0, 113, 2],
    [203, 0, 113, 3],
    [203, 0, 113, 4],
];
const DESTINATIONS: u32 = 1021;
const START_NS: u64 = 1_000_000_000;
const BATCH_NS: u64 = 2_000;

/// Flow `i` (as the scenario): a unique inside address and port, one of 1021 destinations.
fn flow(i: usize) -> FlowKey {
    let i = i as u32;
    let src = (0x0a00_0000 | (i >> 4)).to_be_bytes();
    let dst = (0xc612_0000 + i % DESTINATIONS).to_be_bytes();
    let (p, dport) = if i % 4 == 3 {
        (proto::UDP, 53)
    } else {
        (proto::TCP, 443)
    };
    FlowKey::v4(ZoneId(0), src, dst, p, 20000 + (i & 15) as u16, dport)
}

/// A 64-byte frame carrying `key` (TCP: `flags`).
fn frame(key: &FlowKey, flags: u8) -> [u8; FRAME] {
    let src: [u8; 4] = key.src_bytes().try_into().expect("v4");
    let dst: [u8; 4] = key.dst_bytes().try_into().expect("v4");
    let f = Frame::ipv4(src, dst);
    let f = if key.proto == proto::TCP {
        f.tcp(key.src_port, key.dst_port, flags)
            .payload(&[0x5a; 10])
    } else {
        f.udp(key.src_port, key.dst_port).payload(&[0x5a; 22])
    };
    f.to_vec().expect("emits").try_into().expect("64 bytes")
}

fn config(sessions: usize) -> ConntrackConfig {
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let mut ct = ConntrackConfig::new(*b"bench secret key").sizes(Sizes {
        v4: capacity,
        v6: 1024,
    });
    ct.v4.timeouts = nat_timeouts(&Profile::Hyperplane);
    ct
}

/// The scenario's NAT with every flow's session opened by its first packet; the reply keys.
fn open(sessions: usize) -> (Conntrack<Snat>, Vec<FlowKey>) {
    let publics = PUBLICS.iter().map(|&a| a.into()).collect();
    let alloc = AllocatorConfig::new(Profile::Hyperplane, publics, *b"nf-bench nat est")
        .with_max_mappings(sessions + 1024);
    let snat = Snat::new(SnatConfig::new(alloc).with_v6_sessions(64)).expect("snat config");
    let mut ct = Conntrack::new(config(sessions), snat).expect("conntrack config");
    let mut parse = ParseStage::default();
    let now = Instant::from_nanos(START_NS);
    let mut replies = Vec::with_capacity(sessions);
    let mut batch = Batch::new();
    for start in (0..sessions).step_by(BATCH) {
        for i in start..(start + BATCH).min(sessions) {
            let f = frame(&flow(i), tcp_flags::SYN).to_vec();
            let _ = batch.push(Packet::new(f, 0, FRAME).expect("fits"));
        }
        parse.process(now, &mut batch);
        ct.process(now, &mut batch);
        for p in batch.drain() {
            let info = ct.info(p.meta.session.expect("session")).expect("live");
            replies.push(info.reply);
        }
    }
    (ct, replies)
}

/// A no-op tracker holding the same sessions (keys and initial states) as [`open`]'s.
fn noop(sessions: usize, replies: &[FlowKey]) -> Conntrack {
    let mut ct = Conntrack::new(config(sessions), ()).expect("conntrack config");
    let now = Instant::from_nanos(START_NS);
    for (i, r) in replies.iter().enumerate() {
        let f = flow(i);
        let st = SessionState::initial(f.proto, tcp_flags::SYN);
        ct.v4_mut().insert(now, &f, r, st, ()).expect("fits");
    }
    ct
}

/// The scenario's traffic: frames and their parsed metadata.
fn traffic(sessions: usize, replies: &[FlowKey]) -> (Vec<[u8; FRAME]>, Stream) {
    let mut x = 0x4E47_E57Au64;
    let mut rand = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut frames = Vec::with_capacity(PACKETS);
    let mut metas = Vec::with_capacity(PACKETS);
    let mut parse = ParseStage::default();
    let mut batch = Batch::new();
    while frames.len() < PACKETS {
        for _ in 0..BATCH {
            let i = ((u128::from(rand()) * sessions as u128) >> 64) as usize;
            let key = if rand() & 1 == 0 { flow(i) } else { replies[i] };
            let f = frame(&key, tcp_flags::ACK);
            frames.push(f);
            let _ = batch.push(Packet::new(f.to_vec(), 0, FRAME).expect("fits"));
        }
        parse.process(Instant::ZERO, &mut batch);
        metas.extend(batch.drain().map(|p| p.meta));
    }
    (frames, Stream::new(&metas))
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
    let (mut nat, replies) = open(sessions);
    let mut plain = (mode == "noop").then(|| noop(sessions, &replies));
    let (frames, stream) = traffic(sessions, &replies);
    let mut batch = Batch::new();
    for _ in 0..BATCH {
        let _ = batch.push(Packet::new(vec![0u8; FRAME], 0, FRAME).expect("fits"));
    }
    let rounds = frames.len() / BATCH;
    let mut acc = 0u64;
    let start = std::time::Instant::now();
    for n in 0..batches {
        let b = n as usize % rounds;
        for (p, f) in batch.packets_mut().iter_mut().zip(&frames[b * BATCH..]) {
            p.data_mut().copy_from_slice(f);
        }
        stream.restore(&mut batch, b * BATCH);
        let now = Instant::from_nanos(START_NS + n * BATCH_NS);
        match (&mut plain, mode.as_str()) {
            (Some(ct), _) => black_box(&mut *ct).process(now, &mut batch),
            (None, "nat") => black_box(&mut nat).process(now, &mut batch),
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
