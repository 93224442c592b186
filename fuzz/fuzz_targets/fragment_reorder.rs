//! Fuzzes `FragmentReorder` in front of the `Conntrack` stage: arbitrary sequences of IPv4 and
//! IPv6 fragments of a few datagrams (any order, repeats, losses), raw bytes, time steps,
//! cut into arbitrary batches, with a small hold pool. Checks: no panic; every packet pushed
//! comes back exactly once (from a batch, or from `drain` at the end); a batch never holds
//! more than `BATCH_SIZE`; the pool never holds more than its capacity; a later fragment
//! that passes carries a session.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::conntrack::{Conntrack, ConntrackConfig, FragmentReorder, ReorderConfig, Sizes};
use nf_core::wire::Frame;
use nf_core::{
    BATCH_SIZE, Batch, Chain, Duration, Instant, Packet, ParseStage, Stage, StageExt, flags,
};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    /// Fragment `index` of datagram `datagram` (0..8; its family, size and id follow from it).
    Frag {
        datagram: u8,
        index: u8,
        v6: bool,
        size: u8,
    },
    /// Raw bytes as a frame.
    Raw([u8; 40], u8),
    /// End the current batch.
    Cut,
    /// Advance time by `n` hundred milliseconds.
    Time(u8),
}

const HELD: u32 = 6;

type P = Chain<Chain<ParseStage, FragmentReorder<Vec<u8>>>, Conntrack>;

fn frame(op: Op) -> Option<Vec<u8>> {
    match op {
        Op::Frag {
            datagram,
            index,
            v6,
            size,
        } => {
            let d = datagram % 8;
            let payload = vec![d; 100 + usize::from(size) * 8];
            let f = if v6 {
                Frame::ipv6([0x20; 16], [0x30; 16])
            } else {
                Frame::ipv4([10, 0, 0, d], [10, 0, 1, 1])
            };
            let frags = f
                .udp(4000 + u16::from(d), 53)
                .payload(&payload)
                .fragments(256, u32::from(d) + 1)
                .ok()?;
            frags.get(usize::from(index) % frags.len()).cloned()
        }
        Op::Raw(b, n) => Some(b[..usize::from(n) % b.len()].to_vec()),
        Op::Cut | Op::Time(_) => None,
    }
}

fn run(p: &mut P, now: Instant, frames: &mut Vec<Vec<u8>>, out: &mut Vec<Vec<u8>>) {
    let mut batch = Batch::new();
    for f in frames.drain(..) {
        batch.push(Packet::with_headroom(&f, 0)).ok().unwrap();
    }
    p.process(now, &mut batch);
    assert!(batch.len() <= BATCH_SIZE);
    assert!(p.first.second.stats().holding <= u64::from(HELD));
    for pkt in batch.drain() {
        if pkt.meta.has(flags::LATER_FRAGMENT) && pkt.meta.verdict.is_pass() {
            assert!(
                pkt.meta.session.is_some(),
                "a passed later fragment has a session"
            );
        }
        out.push(pkt.data().to_vec());
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut cfg = ReorderConfig::new(*b"fuzz reorder key").holding(HELD, 3);
    cfg.fragments.capacity = 8;
    cfg.fragments.lifetime = Duration::from_millis(500);
    let mut p: P = ParseStage::default().then(FragmentReorder::new(cfg)).then(
        Conntrack::new(
            ConntrackConfig::new(*b"fuzz conntrack k").sizes(Sizes { v4: 12, v6: 12 }),
            (),
        )
        .unwrap(),
    );
    let mut now = Instant::from_nanos(1_000_000_000);
    let (mut pushed, mut out, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    for op in ops.into_iter().take(512) {
        match op {
            Op::Cut => run(&mut p, now, &mut pending, &mut out),
            Op::Time(n) => now += Duration::from_millis(100 * u64::from(n)),
            _ => {
                if let Some(f) = frame(op) {
                    pushed.push(f.clone());
                    pending.push(f);
                    if pending.len() == BATCH_SIZE - 8 {
                        run(&mut p, now, &mut pending, &mut out);
                    }
                }
            }
        }
    }
    run(&mut p, now, &mut pending, &mut out);
    out.extend(p.first.second.drain().map(|pkt| pkt.data().to_vec()));
    pushed.sort();
    out.sort();
    assert_eq!(pushed, out, "every packet comes back exactly once");
});
