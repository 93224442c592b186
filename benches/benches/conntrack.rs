//! Criterion group for the conntrack stage: established-session hits at batch sizes 1, 32
//! and 64, ours (the whole stage, and the table's batch lookup alone) and the peer in the same
//! group (`cargo bench -p nf-bench --bench conntrack`).
//!
//! Group `conntrack-stage`: parsed packets through the whole stage with 99% established and
//! 1% new-flow traffic, replayed exactly as the runner's `conntrack-stage` scenario does
//! (`src/replay.rs`, shared), against the same hashbrown + ahash peer doing the same work.
//!
//! 100k IPv4 sessions (a table of about 10 MB, so that a quick run stays quick; the scenario
//! runner's `conntrack-hit` measures 1M sessions, with and without huge pages). Keys are
//! uniform over the sessions, either direction. Peer: `hashbrown::HashMap` with `ahash`
//! holding both directions of every session, one `get` per key.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nf_core::conntrack::{
    Conntrack, ConntrackConfig, SessionState, SessionTable, Sizes, TableConfig, V4Key,
};
use nf_core::flags;
use nf_core::flow::proto;
use nf_core::wire::tcp::tcp_flags;
use nf_core::{Batch, FlowKey, Instant, Packet, Stage, ZoneId};
use std::hint::black_box;

#[allow(
    dead_code,
    reason = "shared with the scenario runner, which uses all of it"
)]
#[path = "../src/replay.rs"]
mod replay;

const SESSIONS: u32 = 100_000;
/// Distinct keys (and prebuilt stage batches) the iterations rotate through.
const QUERIES: usize = 1 << 15;

type Peer = hashbrown::HashMap<FlowKey, (u32, bool), ahash::RandomState>;

fn flow(i: u32) -> FlowKey {
    let p = if i.is_multiple_of(4) {
        proto::UDP
    } else {
        proto::TCP
    };
    FlowKey::v4(
        ZoneId(i % 16),
        (0x0a00_0000 | (i >> 15)).to_be_bytes(),
        (0x6440_0000 | i.wrapping_mul(0x9e37_79b9) >> 10).to_be_bytes(),
        p,
        1024 + (i & 0x7fff) as u16,
        443,
    )
}

/// Uniform session indices, each with a direction (deterministic xorshift).
fn queries() -> Vec<FlowKey> {
    let mut x = 0x5EED_u64;
    (0..QUERIES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = flow(((x >> 8) % u64::from(SESSIONS)) as u32);
            if x & 1 == 0 { f } else { f.reversed() }
        })
        .collect()
}

fn conntrack(c: &mut Criterion) {
    let now = Instant::from_nanos(1_000_000_000);
    let capacity = SESSIONS * 10 / 9;
    let mut table: SessionTable<V4Key, [u8; 16]> =
        SessionTable::new(TableConfig::new(capacity, *b"bench secret key")).expect("config");
    let cfg = ConntrackConfig::new(*b"bench secret key").sizes(Sizes {
        v4: capacity,
        v6: 1024,
    });
    let mut stage: Conntrack = Conntrack::new(cfg, ()).expect("config");
    let mut peer = Peer::with_capacity_and_hasher(
        2 * SESSIONS as usize,
        ahash::RandomState::with_seeds(1, 2, 3, 4),
    );
    for i in 0..SESSIONS {
        let f = flow(i);
        let v = [i as u8; 16];
        let st = if f.proto == proto::UDP {
            SessionState::UdpReplied
        } else {
            SessionState::TcpEstablished
        };
        table.insert(now, &f, &f.reversed(), st, v).expect("fits");
        stage
            .v4_mut()
            .insert(now, &f, &f.reversed(), st, ())
            .expect("fits");
        peer.insert(f, (i, false));
        peer.insert(f.reversed(), (i, true));
    }
    let qs = queries();

    let mut g = c.benchmark_group("conntrack-hit");
    for n in [1usize, 32, 64] {
        g.throughput(Throughput::Elements(n as u64));

        // The stage: prebuilt batches of established-session packets (TCP: a bare ACK).
        let mut batches: Vec<Batch<Vec<u8>>> = qs
            .chunks_exact(n)
            .take(QUERIES / 64)
            .map(|ks| {
                let mut b = Batch::new();
                for k in ks {
                    let mut p = Packet::new(vec![0u8; 64], 0, 64).expect("fits");
                    p.meta.flow = *k;
                    p.meta.zone = k.zone;
                    p.meta.flags = flags::L3_VALID | flags::L4_VALID;
                    p.meta.tcp_flags = if k.proto == proto::TCP {
                        tcp_flags::ACK
                    } else {
                        0
                    };
                    b.push(p).expect("fits");
                }
                b
            })
            .collect();
        for b in &mut batches {
            stage.process(now, b);
            assert!(
                b.packets().iter().all(|p| p.meta.session.is_some()),
                "every packet hits"
            );
        }
        let mut at = 0;
        g.bench_with_input(BenchmarkId::new("nf Conntrack::process", n), &n, |b, _| {
            b.iter(|| {
                let len = batches.len();
                let batch = &mut batches[at];
                at = (at + 1) % len;
                stage.process(now, batch);
                black_box(batch.packets()[0].meta.session)
            })
        });

        let mut at = 0;
        let mut out = [None; 64];
        g.bench_with_input(
            BenchmarkId::new("nf SessionTable::lookup_batch", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let q = &qs[at..at + n];
                    at = (at + n) % (QUERIES - 64);
                    black_box(table.lookup_batch(q, &mut out))
                })
            },
        );

        let mut at = 0;
        g.bench_with_input(BenchmarkId::new("hashbrown+ahash get", n), &n, |b, _| {
            b.iter(|| {
                let q = &qs[at..at + n];
                at = (at + n) % (QUERIES - 64);
                let mut acc = 0u64;
                for k in q {
                    if let Some(&(id, rep)) = peer.get(k) {
                        acc += u64::from(id) + u64::from(rep);
                    }
                }
                black_box(acc)
            })
        });
    }
    g.finish();
}

/// The stage with 99% established / 1% new traffic (`replay`), ours and the peer.
fn conntrack_stage(c: &mut Criterion) {
    let flows: Vec<FlowKey> = (0..SESSIONS).map(flow).collect();
    let mut x = 0x57A6E_u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut g = c.benchmark_group("conntrack-stage");
    for n in [1usize, 32, 64] {
        g.throughput(Throughput::Elements(n as u64));
        let traffic = replay::Traffic::new(&flows, QUERIES, n, 0.01, &mut rand);
        let (ours, peer) = replay::established_sides(&flows, SESSIONS * 10 / 9);
        let mut ours = replay::Replay::new(ours, &traffic);
        let mut peer = replay::Replay::new(peer, &traffic);
        g.bench_with_input(BenchmarkId::new("nf Conntrack::process", n), &n, |b, _| {
            b.iter(|| ours.step(&traffic))
        });
        g.bench_with_input(BenchmarkId::new("hashbrown+ahash", n), &n, |b, _| {
            b.iter(|| peer.step(&traffic))
        });
    }
    g.finish();
}

criterion_group!(benches, conntrack, conntrack_stage);
criterion_main!(benches);
