//! `pcap-flows FILE.pcap [--cores N]`: runs every frame of a capture through nf's parse
//! stage in batches of 64 and prints each flow (both directions of a connection grouped
//! under the core the symmetric hash pins it to), its packet and byte counts, and the drop
//! counters by reason.
//!
//! This is the smallest complete nf I/O loop: the caller reads frames (here from a pcap
//! file), fills a `Batch` with headroom in front of each frame, runs a stage with the
//! capture's own timestamps as `now`, and acts on the verdicts.

use nf_core::{
    Batch, Counted, FlowHasher, FlowKey, Instant, Packet, ParseStage, Stage, Verdict, owner_of,
};
use nf_examples::pcap::{LINKTYPE_ETHERNET, PcapReader};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Headroom left in front of each frame, as a real dataplane would for encapsulation.
const HEADROOM: usize = 128;

#[derive(Default)]
struct FlowStats {
    packets: u64,
    bytes: u64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut cores = 4u32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cores" => {
                cores = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or(4)
            }
            "-h" | "--help" => {
                println!("usage: pcap-flows FILE.pcap [--cores N]");
                return ExitCode::SUCCESS;
            }
            p => path = Some(p.to_string()),
        }
    }
    let Some(path) = path else {
        eprintln!("usage: pcap-flows FILE.pcap [--cores N]");
        return ExitCode::from(2);
    };
    match run(&path, cores) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pcap-flows: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &str, cores: u32) -> Result<(), Box<dyn std::error::Error>> {
    let reader = PcapReader::new(std::io::BufReader::new(std::fs::File::open(path)?))?;
    if reader.linktype() != LINKTYPE_ETHERNET {
        return Err(format!("link type {} is not Ethernet", reader.linktype()).into());
    }
    let records = reader.records()?;

    // A fixed demo key; a deployment uses an operator secret shared by its nodes.
    let hasher = FlowHasher::new(*b"nf demo key 0001");
    let mut parse = ParseStage::default();
    let mut batch: Batch<Vec<u8>> = Batch::new();
    let mut flows: BTreeMap<(u32, String), BTreeMap<String, FlowStats>> = BTreeMap::new();
    let (mut passed, mut control) = (0u64, 0u64);

    for chunk in records.chunks(nf_core::BATCH_SIZE) {
        for rec in chunk {
            let mut buf = vec![0u8; HEADROOM + rec.data.len()];
            buf[HEADROOM..].copy_from_slice(&rec.data);
            // A batch never holds more than BATCH_SIZE, which the chunking guarantees.
            let _ = batch.push(Packet::new(buf, HEADROOM, rec.data.len())?);
        }
        let now = Instant::from_nanos(chunk.first().map_or(0, |r| r.ts_nanos));
        parse.process(now, &mut batch);
        for pkt in batch.drain() {
            match pkt.meta.verdict {
                Verdict::Pass => {
                    passed += 1;
                    let key: FlowKey = pkt.meta.flow;
                    let core = owner_of(hasher.symmetric(&key), cores);
                    let conn = key.canonical().to_string();
                    let s = flows
                        .entry((core, conn))
                        .or_default()
                        .entry(key.to_string())
                        .or_default();
                    s.packets += 1;
                    s.bytes += pkt.len() as u64;
                }
                Verdict::ToControl => control += 1,
                Verdict::Drop(_) | Verdict::Tx(_) => {}
            }
        }
    }

    println!(
        "{path}: {} frames, {passed} parsed as IP, {control} to the control path (non-IP)",
        records.len()
    );
    println!();
    println!("{:>4}  {:>7}  {:>8}  flow", "core", "packets", "bytes");
    for ((core, _), dirs) in &flows {
        for (key, s) in dirs {
            println!("{core:>4}  {:>7}  {:>8}  {key}", s.packets, s.bytes);
        }
    }
    println!();
    let c = parse.counters();
    println!("drops: {} in all", c.drops.total());
    for (reason, n) in c.drops.nonzero() {
        println!("  {:<28} {n}", reason.name());
    }
    Ok(())
}
