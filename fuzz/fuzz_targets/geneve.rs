//! Fuzzes Geneve: arbitrary UDP payloads never panic the view; an accepted header
//! re-emits from its `Repr` to the same bytes (reserved bits aside) and re-parses equal;
//! and whole frames (arbitrary bytes behind a valid outer prefix) never panic the decap
//! stage, which gives a batch exactly what single-packet batches give; a second stage on
//! what the first passed (a tunnel in the tunnel, from the inner Ethernet or bare IP
//! header) never panics either, keeps the first tunnel's metadata and counts depth.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nf_core::{Batch, Instant, Packet, Stage};
use nf_tunnel::profile::gwlb;
use nf_tunnel::{DecapConfig, DecapStage, GenevePacket, GeneveRepr, OptionSpec};

/// Ethernet + IPv4 (no checksum check in the stage config below) + UDP to 6081; lengths are
/// patched to cover the fuzzed tail.
fn frame(tail: &[u8]) -> Vec<u8> {
    let mut f = vec![
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0,
        0, 192, 0, 2, 1, 192, 0, 2, 2, 0xc3, 0x50, 0x17, 0xc1, 0, 0, 0, 0,
    ];
    let udp = (8 + tail.len()).min(65535 - 20) as u16;
    f[16..18].copy_from_slice(&(udp + 20).to_be_bytes());
    f[38..40].copy_from_slice(&udp.to_be_bytes());
    f.extend_from_slice(tail);
    f
}

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = GenevePacket::new_checked(data) {
        let r = GeneveRepr::parse(&g);
        let mut out = vec![0u8; r.buffer_len()];
        assert_eq!(r.emit(&mut out), Ok(r.buffer_len()));
        let g2 = GenevePacket::new_checked(&out[..]).expect("re-parse");
        assert_eq!(GeneveRepr::parse(&g2), r);
        let a: Vec<_> = g.options().collect();
        let b: Vec<_> = g2.options().map(|o| (o.class, o.ty, o.data)).collect();
        assert_eq!(a.iter().map(|o| (o.class, o.ty, o.data)).collect::<Vec<_>>(), b);
        assert_eq!(a.iter().map(|o| o.wire_len()).sum::<usize>(), r.options.len());
    }

    let cfgs = [
        gwlb::decap_config(),
        DecapConfig {
            verify_ipv4_checksum: false,
            verify_udp_checksum: false,
            options: vec![OptionSpec::known(0, 0), OptionSpec::required(0x0108, 3, 4)],
            ..DecapConfig::default()
        },
    ];
    let frames: Vec<Vec<u8>> = data.chunks(97).map(frame).chain([frame(data)]).take(64).collect();
    for cfg in cfgs {
        let mut batch = Batch::new();
        for f in &frames {
            batch.push(Packet::new(f.clone(), 0, f.len()).unwrap()).ok();
        }
        let mut stage = DecapStage::new(cfg.clone()).unwrap();
        stage.process(Instant::ZERO, &mut batch);
        for (i, f) in frames.iter().enumerate() {
            let mut single = Batch::new();
            single.push(Packet::new(f.clone(), 0, f.len()).unwrap()).ok();
            DecapStage::new(cfg.clone()).unwrap().process(Instant::ZERO, &mut single);
            let (a, b) = (&batch.packets()[i], &single.packets()[0]);
            assert_eq!(a.meta, b.meta);
            assert_eq!(a.data(), b.data());
            assert!(a.len() <= f.len());
        }
        // Nested: whatever the first stage passed meets a second one.
        let before: Vec<_> = batch.packets().iter().map(|p| p.meta).collect();
        let mut inner = DecapStage::new(DecapConfig {
            verify_udp_checksum: false,
            ..DecapConfig::default()
        })
        .unwrap();
        inner.process(Instant::ZERO, &mut batch);
        for (p, m) in batch.packets().iter().zip(&before) {
            let t = &p.meta.tunnel;
            assert!(t.depth <= 2);
            if m.tunnel.depth == 1 && t.depth == 2 {
                assert_eq!(t.outer_vni, m.tunnel.outer_vni);
                assert_eq!(t.outer_src, m.tunnel.outer_src);
                assert!(t.outer_len > m.tunnel.outer_len);
            }
        }
    }
});
