//! A driver for the `lpm` scenario's IPv4 tables outside the runner: the scenario's million
//! prefixes and addresses, on the runner's huge-page allocator, looked up `ITERS` times in
//! batches of 64, for callgrind or `perf record` (no hardware counters needed here).
//!
//! ```text
//! cargo build --release -p nf-bench --example lpm_instructions
//! for n in 0 1000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/lpm_instructions dir24 batch $n 2>&1 | grep refs; done
//! target/release/examples/lpm_instructions dir24 ratio 20000
//! ```
//! Instructions per lookup = the difference / (1000 × 64), the driver's fold of the results
//! included. `single` looks up one address at a time, `floor` is the scenario's
//! one-load-per-address loop, and `ratio` alternates 21 rounds of `ITERS` batches with as many
//! of the floor and prints the medians and the median batch/floor ratio: on a shared machine
//! whose wall-clock times drift, the ratio is the steadier figure.

#[path = "../src/harness.rs"]
#[expect(
    dead_code,
    reason = "the runner's harness; the scenario's generators need it"
)]
mod harness;
#[path = "../src/hugealloc.rs"]
#[expect(
    dead_code,
    reason = "the runner's allocator; the driver needs its advice switch"
)]
mod hugealloc;
#[path = "../src/scenarios/lpm.rs"]
#[expect(
    dead_code,
    reason = "the scenario's generators; the driver needs two of them"
)]
mod lpm;
#[path = "../src/replay.rs"]
#[expect(dead_code, reason = "the replay module; the driver needs its Rng")]
mod replay;

use nf_policy::{Ipv4Layout, Ipv4LpmBuilder};
use std::hint::black_box;
use std::net::Ipv4Addr;

const BATCH: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (layout, mode, iters) = match args.as_slice() {
        [l, m, n] => (l.as_str(), m.as_str(), n.parse::<u64>().expect("ITERS")),
        _ => {
            eprintln!("usage: lpm_instructions dir24|trie16 batch|single|floor ITERS");
            std::process::exit(2);
        }
    };
    hugealloc::set_advise(true);
    let routes = lpm::prefixes(1_000_000);
    let addrs = lpm::addresses(&routes);
    let mut b = Ipv4LpmBuilder::new().layout(if layout == "trie16" {
        Ipv4Layout::Trie16
    } else {
        Ipv4Layout::Dir24
    });
    for &(p, l, h) in &routes {
        b.insert(Ipv4Addr::from(p), l, h).expect("route");
    }
    let table = b.build().expect("build");
    if mode == "ratio" {
        ratio(&table, &addrs, iters);
        return;
    }
    let floor: Vec<u32> = if mode == "floor" {
        (0..1u32 << 24).collect()
    } else {
        Vec::new()
    };
    let chunks = addrs.len() / BATCH;
    let mut out = [None; BATCH];
    let mut acc = 0u64;
    let start = std::time::Instant::now();
    for i in 0..iters as usize {
        let a = &addrs[(i % chunks) * BATCH..][..BATCH];
        acc = acc.wrapping_add(match mode {
            "single" => a
                .iter()
                .map(|&x| u64::from(table.lookup(x).unwrap_or(0)))
                .sum(),
            "floor" => a
                .iter()
                .map(|&x| u64::from(floor[(u32::from(x) >> 8) as usize]))
                .sum(),
            _ => {
                black_box(&table).lookup_batch(a, &mut out);
                out.iter().map(|o| u64::from(o.unwrap_or(0))).sum()
            }
        });
    }
    let ns = start.elapsed().as_nanos() as f64 / (iters.max(1) as f64 * BATCH as f64);
    eprintln!("{layout} {mode}: {ns:.2} ns/lookup");
    println!("{}", black_box(acc));
}

/// Alternates rounds of batched lookups and of the floor loop (one load per address from a
/// 64 MiB array) and prints the medians and the median ratio: a noise-resistant comparison
/// on a shared machine.
fn ratio(table: &nf_policy::Ipv4Lpm, addrs: &[Ipv4Addr], iters: u64) {
    let floor: Vec<u32> = (0..1u32 << 24).collect();
    let chunks = addrs.len() / BATCH;
    let mut out = [None; BATCH];
    let mut acc = 0u64;
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    let mut at = 0usize;
    for _ in 0..21 {
        let mut time = |batch: bool| {
            let t = std::time::Instant::now();
            for _ in 0..iters {
                let x = &addrs[(at % chunks) * BATCH..][..BATCH];
                at += 1;
                acc = acc.wrapping_add(if batch {
                    black_box(table).lookup_batch(x, &mut out);
                    out.iter().map(|o| u64::from(o.unwrap_or(0))).sum::<u64>()
                } else {
                    x.iter()
                        .map(|&y| u64::from(floor[(u32::from(y) >> 8) as usize]))
                        .sum()
                });
            }
            t.elapsed().as_nanos() as f64 / (iters as f64 * BATCH as f64)
        };
        let x = time(true);
        let y = time(false);
        a.push(x);
        b.push(y);
        r.push(x / y);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "batch {:.2} ns, floor {:.2} ns, batch/floor {:.3}",
        med(&mut a),
        med(&mut b),
        med(&mut r)
    );
    println!("{}", black_box(acc));
}
