//! A driver for the `maglev-build` scenario's build outside the runner: N = 1,000 equal
//! backends, M = 65,537 slots, the scenario's key, built `ITERS` times, for callgrind or
//! `perf record` (no hardware counters needed here).
//!
//! ```text
//! cargo build --release -p nf-bench --example maglev_build_instructions
//! for n in 1 11; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/maglev_build_instructions $n 2>&1 | grep refs; done
//! ```
//! (instructions per build = the difference / 10.)

use nf_lb::{Backend, BackendId, LbKey, MaglevTable};
use std::hint::black_box;

fn main() {
    let iters: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let key = LbKey::new(*b"nf-bench maglev!");
    let backends: Vec<Backend> = (0..1000u32)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            Backend::new(BackendId::v4([10, a, b, c], 8080), 1)
        })
        .collect();
    let mut acc = 0u64;
    let start = std::time::Instant::now();
    for _ in 0..iters {
        let t = MaglevTable::new(&key, 65_537, black_box(&backends)).expect("build");
        acc = acc.wrapping_add(u64::from(t.lookup(0x1234_5678)));
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / f64::from(iters.max(1));
    eprintln!("{ms:.3} ms per build");
    println!("{}", black_box(acc));
}
