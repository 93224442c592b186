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

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::{Batch, Instant, Packet, Stage};
use nf_tunnel::profile::gwlb::{self, GwlbMetadata};
use nf_tunnel::{DecapConfig, DecapStage, EncapConfig, EncapStage, Underlay};
use std::hint::black_box;

const BATCH: usize = 64;
const HEADROOM: usize = 128;

fn inner_frames() -> Vec<Vec<u8>> {
    (0..BATCH as u16)
        .map(|i| {
            let payload = 64usize;
            let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
            let tot = (28 + payload) as u16;
            let mut ip = vec![
                0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0,
            ];
            ip.extend_from_slice(&(i + 2).to_be_bytes());
            ip[2..4].copy_from_slice(&tot.to_be_bytes());
            let c = nf_core::checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&(10000 + i).to_be_bytes());
            f.extend_from_slice(&53u16.to_be_bytes());
            f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.resize(f.len() + payload, 0xab);
            f
        })
        .collect()
}

fn frames(geneve: bool, outer: &str) -> Vec<Vec<u8>> {
    let mut u = Underlay {
        src_mac: [2, 0, 0, 0, 1, 1],
        dst_mac: [2, 0, 0, 0, 2, 2],
        src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
    };
    if outer == "ipv6" {
        u.src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        u.dst = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
    }
    let cfg = if geneve {
        let opts = GwlbMetadata {
            endpoint_id: 0x1122_3344_5566_7788,
            attachment_id: 0x99aa_bbcc_ddee_ff00,
            flow_cookie: 0x0bad_cafe,
        }
        .options();
        EncapConfig::geneve(opts, 0x0012_3456, u)
    } else {
        EncapConfig::vxlan(100, u)
    };
    let mut e = EncapStage::new(cfg).expect("encap config");
    inner_frames()
        .iter()
        .map(|f| {
            let mut p = Packet::with_headroom(f, HEADROOM);
            nf_core::parse_frame(f, &mut p.meta, &nf_core::ParseConfig::default()).ok();
            let mut b = Batch::new();
            b.push(p).ok();
            e.process(Instant::ZERO, &mut b);
            let mut out = b.drain().map(|p| p.data().to_vec()).next().expect("one");
            if outer == "vlan" {
                out.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
            }
            out
        })
        .collect()
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
    let cfg = if geneve {
        DecapConfig {
            verify_udp_checksum: false,
            ..gwlb::decap_config()
        }
    } else {
        DecapConfig {
            verify_udp_checksum: false,
            ..DecapConfig::default()
        }
    };
    let mut stage = DecapStage::new(cfg).expect("decap config");
    let mut batch = Batch::new();
    for f in &frames {
        batch
            .push(Packet::new(f.clone(), 0, f.len()).expect("packet"))
            .ok();
    }
    let lens: Vec<usize> = frames.iter().map(Vec::len).collect();
    let decap = tunnel != "reset";
    let mut acc = 0u64;
    let start = std::time::Instant::now();
    for _ in 0..iters {
        // The scenario's reset (`Frames::decap` in benches/src/scenarios/geneve_decap.rs).
        for (p, &l) in batch.packets_mut().iter_mut().zip(&lens) {
            let n = usize::from(p.meta.tunnel.outer_len);
            if p.push_front(n).is_err() || p.len() != l {
                p.reset(0, l).ok();
            }
            p.meta.verdict = nf_core::Verdict::Pass;
            p.meta.tunnel.depth = 0;
            p.meta.flags = 0;
        }
        if decap {
            stage.process(Instant::ZERO, black_box(&mut batch));
        }
        for p in batch.packets() {
            let k = &p.meta.flow;
            acc = acc.wrapping_add(u64::from(k.src_port) ^ u64::from(k.zone.0) << 16);
        }
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
