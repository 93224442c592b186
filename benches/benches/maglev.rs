//! Criterion groups for nf-lb: keyed 5-tuple hash + Maglev lookup at batch sizes 1, 32 and 64
//! (ours and `maglev-hash` 0.1.0 in the same group), and the table build at N = 1,000,
//! M = 65,537 (`cargo bench -p nf-bench --bench maglev`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nf_core::flow::proto;
use nf_core::{FlowKey, ZoneId};
use nf_lb::{Backend, BackendId, LbKey, MaglevTable};
use std::hint::black_box;

const N: u32 = 1000;
const M: u32 = 65_537;

fn backends() -> Vec<Backend> {
    (0..N)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            Backend::new(BackendId::v4([10, a, b, c], 8080), 1)
        })
        .collect()
}

fn nodes() -> Vec<([u8; 4], u16)> {
    (0..N)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            ([10, a, b, c], 8080)
        })
        .collect()
}

fn flows(n: usize) -> Vec<FlowKey> {
    (0..n)
        .map(|i| {
            FlowKey::v4(
                ZoneId(0),
                [100, 64, (i >> 8) as u8, i as u8],
                [192, 0, 2, 1],
                proto::TCP,
                40_000 + i as u16,
                443,
            )
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let table = MaglevTable::new(&LbKey::new(*b"nf-bench maglev!"), M, &backends()).expect("build");
    let peer = maglev_hash::MaglevTable::with_capacity(nodes(), M as usize);
    let mut g = c.benchmark_group("maglev-lookup");
    for n in [1usize, 32, 64] {
        let keys = flows(n);
        let mut out = vec![0u32; n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("nf-lb lookup_flows", n), &n, |b, _| {
            b.iter(|| {
                table.lookup_flows(black_box(&keys), &mut out);
                black_box(&out);
            })
        });
        g.bench_with_input(BenchmarkId::new("maglev-hash 0.1.0 get", n), &n, |b, _| {
            b.iter(|| {
                for (o, k) in out.iter_mut().zip(&keys) {
                    *o = peer.get(black_box(k)).map_or(0, |p| u32::from(p.1));
                }
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let key = LbKey::new(*b"nf-bench maglev!");
    let (ours, theirs) = (backends(), nodes());
    let mut g = c.benchmark_group("maglev-build");
    g.sample_size(30);
    g.bench_function("nf-lb MaglevTable::new", |b| {
        b.iter(|| MaglevTable::new(&key, M, black_box(&ours)).expect("build"))
    });
    g.bench_function("maglev-hash 0.1.0 with_capacity", |b| {
        b.iter(|| maglev_hash::MaglevTable::with_capacity(black_box(theirs.clone()), M as usize))
    });
    g.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
