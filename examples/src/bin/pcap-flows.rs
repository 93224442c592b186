//! `pcap-flows FILE.pcap [--cores N] [--prometheus]`: runs every frame of a capture (pcap or
//! pcapng) through
//! an nf pipeline (parse, then connection tracking) in batches of 64, and prints each
//! connection under the core the symmetric hash pins it to: its original-direction flow,
//! packets and bytes each way as conntrack classified them, then every stage's counters and
//! drops by reason. With `--prometheus` that report goes to stderr and stdout carries the
//! pipeline's counters in the Prometheus text format instead
//! ([`nf_examples::prometheus`]).
//!
//! This is a complete nf I/O loop: the caller reads frames (here from a pcap file), fills a
//! `Batch` with headroom in front of each frame, runs the pipeline with the capture's own
//! timestamps as `now`, acts on the verdicts, and gives the session timers their turn.

use nf_core::conntrack::{Conntrack, ConntrackConfig};
use nf_core::{
    Batch, Direction, FlowHasher, Instant, Packet, ParseStage, Stage, StageControl, StageExt,
    Verdict, owner_of,
};
use nf_examples::pcap::{self, LINKTYPE_ETHERNET};
use nf_examples::prometheus;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

/// Headroom left in front of each frame, as a real dataplane would for encapsulation.
const HEADROOM: usize = 128;

const USAGE: &str = "usage: pcap-flows FILE.pcap [--cores N] [--prometheus]";

/// Packets and bytes of one connection, by direction.
#[derive(Default)]
struct ConnStats {
    original: String,
    packets: [u64; 2],
    bytes: [u64; 2],
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut cores = 4u32;
    let mut prometheus = false;
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
            "--prometheus" => prometheus = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            p => path = Some(p.to_string()),
        }
    }
    let Some(path) = path else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match run(&path, cores, prometheus) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pcap-flows: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &str, cores: u32, prometheus: bool) -> Result<(), Box<dyn std::error::Error>> {
    // pcap or pcapng (read by the `pcap-file` crate).
    let records = pcap::read_file(path)?;
    if let Some(r) = records.iter().find(|r| r.linktype != LINKTYPE_ETHERNET) {
        return Err(format!("link type {} is not Ethernet", r.linktype).into());
    }

    // A fixed demo key; a deployment uses an operator secret shared by its nodes.
    let hasher = FlowHasher::new(*b"nf demo key 0001");
    let conntrack = Conntrack::new(ConntrackConfig::new(*b"nf demo ct key 1"), ())?;
    let mut pipeline = ParseStage::default().then(conntrack);
    let mut batch: Batch<Vec<u8>> = Batch::new();
    // Connections by (core, session); the session's first packet names it.
    let mut conns: BTreeMap<(u32, u8, u32, u32), ConnStats> = BTreeMap::new();
    let mut now = Instant::ZERO;

    for chunk in records.chunks(nf_core::BATCH_SIZE) {
        for rec in chunk {
            let mut buf = vec![0u8; HEADROOM + rec.data.len()];
            buf[HEADROOM..].copy_from_slice(&rec.data);
            // A batch never holds more than BATCH_SIZE, which the chunking guarantees.
            let _ = batch.push(Packet::new(buf, HEADROOM, rec.data.len())?);
        }
        now = now.max(Instant::from_nanos(chunk.first().map_or(0, |r| r.ts_nanos)));
        pipeline.process(now, &mut batch);
        for pkt in batch.drain() {
            let (Verdict::Pass, Some(s)) = (pkt.meta.verdict, pkt.meta.session) else {
                continue;
            };
            let core = owner_of(hasher.symmetric(&pkt.meta.flow), cores);
            let c = conns
                .entry((core, s.family() as u8, s.index(), s.generation()))
                .or_default();
            let d = usize::from(pkt.meta.direction == Direction::Reply);
            if c.original.is_empty() && d == 0 {
                c.original = pkt.meta.flow.to_string();
            }
            c.packets[d] += 1;
            c.bytes[d] += pkt.len() as u64;
        }
        // Session timers: bounded work per call, driven by the capture's clock.
        while pipeline.poll_timeout().is_some_and(|t| t <= now) {
            pipeline.handle_timeout(now, 1024);
        }
    }

    // The report; with --prometheus it makes way on stdout for the exposition.
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    let out: &mut dyn Write = if prometheus { &mut stderr } else { &mut stdout };
    writeln!(
        out,
        "{path}: {} frames, {} connections",
        records.len(),
        conns.len()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>4}  {:>15}  {:>15}  connection (original direction)",
        "core", "pkts orig/reply", "bytes orig/reply"
    )?;
    for ((core, _, _, _), c) in &conns {
        let pk = format!("{}/{}", c.packets[0], c.packets[1]);
        let by = format!("{}/{}", c.bytes[0], c.bytes[1]);
        writeln!(out, "{core:>4}  {pk:>15}  {by:>15}  {}", c.original)?;
    }
    writeln!(out)?;
    pipeline.visit_counters(&mut |stage, counter, value| {
        // Checked below: a failed write fails the next one too.
        let _ = writeln!(out, "{stage:>10} {counter:<32} {value}");
    });
    let ct = pipeline.second.stats();
    writeln!(
        out,
        "conntrack: {} sessions created, {} hits ({} in the reply direction)",
        ct.created, ct.hits, ct.reply_hits
    )?;
    if prometheus {
        write!(stdout, "{}", prometheus::render(&[&pipeline]))?;
    }
    Ok(())
}
