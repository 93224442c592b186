//! A driver for counting instructions per packet of the decap stage under callgrind (no
//! hardware counters needed): the frames of the `geneve-decap` / `vxlan-decap` scenarios
//! (64 flows, inner Ethernet/IPv4/UDP), decapsulated `ITERS` times in batches of 64, with
//! the scenario's per-round reset of the batch.
//!
//! ```text
//! cargo build --release -p nf-bench --example decap_instructions
//! for n in 100 1100; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/decap_instructions geneve ipv6 $n 2>&1 | grep refs; done
//! ```
//! (instructions per packet = difference / (1000 × 64); `reset` as the tunnel measures the
//! reset alone.)

#[path = "../src/tunnel_frames.rs"]
#[expect(
    dead_code,
    reason = "the scenarios' frames; the driver needs some of them"
)]
mod tunnel_frames;

use nf_tunnel::profile::gwlb;
use nf_tunnel::{DecapConfig, DecapStage, EncapConfig};
use std::hint::black_box;
use tunnel_frames::{Frames, gwlb_options, inner_frames, offloaded, outer_frames};

const BATCH: usize = 64;

/// The scenario's frames: `geneve-decap` (three GWLB options) or `vxlan-decap`.
fn frames(geneve: bool, outer: &str) -> Vec<Vec<u8>> {
    let cfg = |u| {
        if geneve {
            EncapConfig::geneve(gwlb_options(), 0x0012_3456, u)
        } else {
            EncapConfig::vxlan(100, u)
        }
    };
    outer_frames(cfg, outer, &inner_frames(64))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tunnel, outer, iters) = match args.as_slice() {
        [t, o, n] => (t.as_str(), o.as_str(), n.parse::<u64>().expect("ITERS")),
        _ => {
            eprintln!("usage: decap_instructions geneve|vxlan|reset ipv4|ipv6|vlan ITERS");
            std::process::exit(2);
        }
    };
    let geneve = tunnel != "vxlan";
    let frames = frames(geneve, outer);
    let cfg = offloaded(if geneve {
        gwlb::decap_config()
    } else {
        DecapConfig::default()
    });
    let mut stage = DecapStage::new(cfg).expect("decap config");
    let mut batch = Frames::new(&frames);
    let decap = tunnel != "reset";
    let mut acc = 0u64;
    let start = std::time::Instant::now();
    for _ in 0..iters {
        // The scenario's round (`Frames::decap`), or its reset and fold alone.
        acc = acc.wrapping_add(if decap {
            batch.decap(black_box(&mut stage))
        } else {
            batch.reset();
            batch.fold()
        });
    }
    // Wall time too, for a rough look (the scenario runner is the reference).
    let ns = start.elapsed().as_nanos() as f64 / (iters as f64 * BATCH as f64);
    eprintln!("{tunnel} {outer}: {ns:.2} ns/packet");
    assert!(
        !decap || batch.packets().iter().all(|p| p.meta.verdict.is_pass()),
        "every frame decapsulates"
    );
    println!("{}", black_box(acc));
}
