//! Criterion group for the parse stage: batch sizes 1, 32 and 64, ours and the peers in the
//! same group (`cargo bench -p nf-bench --bench parse`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nf_core::flow::proto;
use nf_core::{Batch, FlowKey, Instant, Packet, ParseStage, Stage, ZoneId};
use std::hint::black_box;

fn frames(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([10, 0, (i >> 8) as u8, i as u8], [10, 1, 0, 1], 64)
                .tcp(40000 + i as u16, 443, 1, 1000);
            let mut v = Vec::new();
            b.write(&mut v, &[0u8; 10]).expect("write");
            v
        })
        .collect()
}

fn etherparse_key(f: &[u8]) -> FlowKey {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(f) else {
        return FlowKey::default();
    };
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) = (p.net, p.transport) else {
        return FlowKey::default();
    };
    FlowKey::v4(
        ZoneId(0),
        ip.header().source(),
        ip.header().destination(),
        proto::TCP,
        t.source_port(),
        t.destination_port(),
    )
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse-ipv4-tcp");
    for n in [1usize, 32, 64] {
        let fs = frames(n);
        g.throughput(Throughput::Elements(n as u64));
        let mut batch = Batch::new();
        for f in &fs {
            let _ = batch.push(Packet::new(f.clone(), 0, f.len()).expect("fits"));
        }
        let mut stage = ParseStage::default();
        g.bench_with_input(BenchmarkId::new("nf ParseStage", n), &n, |b, _| {
            b.iter(|| {
                stage.process(Instant::ZERO, &mut batch);
                black_box(batch.packets()[0].meta.flow.src_port)
            })
        });
        let mut out = vec![FlowKey::default(); n];
        g.bench_with_input(
            BenchmarkId::new("etherparse SlicedPacket", n),
            &n,
            |b, _| {
                b.iter(|| {
                    for (o, f) in out.iter_mut().zip(&fs) {
                        *o = etherparse_key(black_box(f));
                    }
                    black_box(&out);
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
