//! `nf_examples::workers`: parse on the receive loop, connection tracking on N workers, gives
//! every packet the same verdict and direction as one pipeline doing all the work — which
//! can only hold if both directions of every flow reach the worker holding its session.
#![expect(clippy::unwrap_used, reason = "test code")]

use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_core::steer::{SteerFields, SteerHash, Steering};
use nf_core::wire::Frame;
use nf_core::{
    Batch, Direction, FlowHasher, Instant, Packet, ParseStage, Stage, StageControl, StageExt,
    StdClock, Verdict,
};
use nf_examples::workers::{PoolConfig, Worker, WorkerPool};
use std::collections::BTreeMap;
use std::sync::mpsc::{Sender, channel};

/// A packet's identity (in its payload) and what connection tracking said about it.
type Outcome = (u32, Verdict, Direction);

fn ct() -> Conntrack {
    let cfg = ConntrackConfig::new(*b"workers test key").sizes(Sizes { v4: 4096, v6: 4096 });
    Conntrack::new(cfg, ()).unwrap()
}

/// The packet's id: the last 4 bytes of the frame.
fn id_of(data: &[u8]) -> u32 {
    u32::from_be_bytes(data[data.len() - 4..].try_into().unwrap())
}

struct CtWorker {
    ct: Conntrack,
    out: Sender<Outcome>,
}

impl Worker<Vec<u8>> for CtWorker {
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.ct.process(now, batch);
        for p in batch.packets() {
            self.out
                .send((id_of(p.data()), p.meta.verdict, p.meta.direction))
                .unwrap();
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ct.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.ct.handle_timeout(now, 1024);
    }

    fn visit_counters(&self, visit: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.ct.visit_counters(visit);
    }
}

/// Deterministic traffic: `flows` flows (IPv4 and IPv6, TCP and UDP), packets of random
/// flows in random directions; every frame ends with its id.
fn traffic(seed: u64, flows: u32, packets: u32) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut started = vec![false; flows as usize];
    (0..packets)
        .map(|id| {
            let f = (next() % u64::from(flows)) as u32;
            let reply = started[f as usize] && next() % 2 == 0;
            let tcp = f.is_multiple_of(2);
            let (sp, dp) = (10_000 + f as u16, 80 + (f % 7) as u16);
            let payload = id.to_be_bytes();
            let frame = if f.is_multiple_of(3) {
                let (a, b) = ([0xfd; 16], {
                    let mut b = [0xfe; 16];
                    b[15] = f as u8;
                    b
                });
                if reply {
                    Frame::ipv6(b, a)
                } else {
                    Frame::ipv6(a, b)
                }
            } else {
                let (a, b) = (
                    [10, 0, (f >> 8) as u8, f as u8],
                    [192, 0, 2, (f % 250) as u8],
                );
                if reply {
                    Frame::ipv4(b, a)
                } else {
                    Frame::ipv4(a, b)
                }
            };
            let (sp, dp) = if reply { (dp, sp) } else { (sp, dp) };
            let frame = if tcp {
                // The opener's first segment is a SYN, everything after an ACK.
                let flags = if started[f as usize] { 0x10 } else { 0x02 };
                frame.tcp(sp, dp, flags)
            } else {
                frame.udp(sp, dp)
            };
            started[f as usize] = true;
            frame.payload(&payload).to_vec().unwrap()
        })
        .collect()
}

fn batches(frames: &[Vec<u8>]) -> impl Iterator<Item = Batch<Vec<u8>>> + '_ {
    frames.chunks(64).map(|chunk| {
        let mut b = Batch::new();
        for f in chunk {
            b.push(Packet::with_headroom(f, 0)).ok();
        }
        b
    })
}

/// One pipeline doing all the work: the reference.
fn single(frames: &[Vec<u8>]) -> BTreeMap<u32, (Verdict, Direction)> {
    let mut p = ParseStage::default().then(ct());
    let mut out = BTreeMap::new();
    for mut b in batches(frames) {
        p.process(Instant::ZERO, &mut b);
        for pkt in b.packets() {
            out.insert(id_of(pkt.data()), (pkt.meta.verdict, pkt.meta.direction));
        }
    }
    out
}

/// The pool's outcome per packet and the sessions created; `inline`: one worker on this
/// thread ([`PoolConfig::inline`]).
fn pooled(
    frames: &[Vec<u8>],
    workers: u16,
    inline: bool,
) -> (BTreeMap<u32, (Verdict, Direction)>, u64) {
    let steering = Steering::new(
        workers,
        SteerHash::Keyed(FlowHasher::new([5; 16])),
        SteerFields::FiveTuple,
    );
    let (tx, rx) = channel();
    let mut cfg = PoolConfig::default();
    cfg.inline = inline;
    let mut pool = WorkerPool::start(steering, StdClock::new(), &cfg, |_| CtWorker {
        ct: ct(),
        out: tx.clone(),
    })
    .unwrap();
    drop(tx);
    let mut parse = ParseStage::default();
    let mut dropped_in_front = BTreeMap::new();
    for mut b in batches(frames) {
        parse.process(Instant::ZERO, &mut b);
        for p in b.packets().iter().filter(|p| !p.meta.verdict.is_pass()) {
            dropped_in_front.insert(id_of(p.data()), (p.meta.verdict, p.meta.direction));
        }
        pool.dispatch(&mut b);
        pool.handle_timeout(Instant::ZERO);
    }
    let totals = pool.shutdown();
    let mut out: BTreeMap<u32, (Verdict, Direction)> =
        rx.iter().map(|(id, v, d)| (id, (v, d))).collect();
    out.extend(dropped_in_front);
    let created = totals.get(&("conntrack", "created")).copied().unwrap_or(0);
    (out, created)
}

#[test]
fn workers_give_every_packet_the_verdict_one_pipeline_gives() {
    for seed in [1, 2, 3] {
        let frames = traffic(seed, 300, 5_000);
        let want = single(&frames);
        assert_eq!(want.len(), frames.len());
        let flows = want
            .values()
            .filter(|(_, d)| *d == Direction::Reply)
            .count();
        assert!(flows > 500, "the traffic has replies: {flows}");
        for (workers, inline) in [(1, false), (1, true), (2, false), (3, false), (4, false)] {
            let (got, created) = pooled(&frames, workers, inline);
            assert_eq!(got.len(), frames.len(), "seed {seed}, {workers} workers");
            let diff: Vec<_> = want
                .iter()
                .filter(|(id, v)| got.get(id) != Some(v))
                .take(5)
                .collect();
            assert!(diff.is_empty(), "seed {seed}, {workers} workers: {diff:?}");
            assert_eq!(created, 300, "one session per flow, summed over workers");
        }
    }
}

/// A worker that asks for room in its batches and reports each batch's length.
struct RoomWorker {
    lens: Sender<usize>,
}

impl Worker<Vec<u8>> for RoomWorker {
    fn process(&mut self, _now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.lens.send(batch.len()).unwrap();
    }

    fn batch_room(&self) -> usize {
        8
    }
}

/// The pool leaves every batch the room its workers ask for (a `FragmentReorder` releases
/// held fragments into it), and still delivers every packet, on a thread or inline.
#[test]
fn the_pool_leaves_the_room_workers_ask_for() {
    room_left(false);
    room_left(true);
}

fn room_left(inline: bool) {
    let frames = traffic(9, 40, 2_000);
    // One worker: every 64-packet batch the loop dispatches goes to it whole.
    let steering = Steering::new(
        1,
        SteerHash::Keyed(FlowHasher::new([5; 16])),
        SteerFields::FiveTuple,
    );
    let (tx, rx) = channel();
    let mut cfg = PoolConfig::default();
    cfg.inline = inline;
    let mut pool = WorkerPool::start(steering, StdClock::new(), &cfg, |_| RoomWorker {
        lens: tx.clone(),
    })
    .unwrap();
    drop(tx);
    let mut parse = ParseStage::default();
    for mut b in batches(&frames) {
        parse.process(Instant::ZERO, &mut b);
        assert!(b.packets().iter().all(|p| p.meta.verdict.is_pass()));
        pool.dispatch(&mut b);
    }
    pool.shutdown();
    let lens: Vec<usize> = rx.iter().collect();
    assert_eq!(
        lens.iter().sum::<usize>(),
        frames.len(),
        "every packet delivered"
    );
    assert_eq!(
        lens.iter().max(),
        Some(&(nf_core::BATCH_SIZE - 8)),
        "{lens:?}"
    );
}
