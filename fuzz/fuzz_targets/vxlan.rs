//! Fuzzes VXLAN: arbitrary UDP payloads never panic the view and an accepted header
//! round-trips through its `Repr`; arbitrary frames (raw, and behind a valid outer prefix)
//! never panic the decap stage, whose batch result equals the single-packet results; and
//! whatever decap accepts, encap (VNI from the zone) can put back without panicking.
#![no_main]

use core::net::{IpAddr, Ipv4Addr};
use libfuzzer_sys::fuzz_target;
use nf_core::{Batch, Instant, Packet, Stage};
use nf_tunnel::{
    DecapConfig, DecapStage, EncapConfig, EncapStage, Underlay, VniSource, VxlanPacket, VxlanRepr,
};

fn frame(tail: &[u8]) -> Vec<u8> {
    let mut f = vec![
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0,
        0, 192, 0, 2, 1, 192, 0, 2, 2, 0xc3, 0x50, 0x12, 0xb5, 0, 0, 0, 0,
    ];
    let udp = (8 + tail.len()).min(65535 - 20) as u16;
    f[16..18].copy_from_slice(&(udp + 20).to_be_bytes());
    f[38..40].copy_from_slice(&udp.to_be_bytes());
    f.extend_from_slice(tail);
    f
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = VxlanPacket::new_checked(data) {
        let r = VxlanRepr::parse(&v);
        let mut out = [0u8; 8];
        assert_eq!(r.emit(&mut out), Ok(8));
        assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&out[..]).unwrap()), r);
    }
    let cfg = DecapConfig {
        verify_ipv4_checksum: false,
        ..DecapConfig::default()
    };
    let frames: Vec<Vec<u8>> = [data.to_vec(), frame(data)]
        .into_iter()
        .chain(data.chunks(61).map(frame))
        .take(64)
        .collect();
    let mut batch = Batch::new();
    for f in &frames {
        let mut buf = vec![0u8; 128 + f.len()];
        buf[128..].copy_from_slice(f);
        batch.push(Packet::new(buf, 128, f.len()).unwrap()).ok();
    }
    let mut stage = DecapStage::new(cfg.clone()).unwrap();
    stage.process(Instant::ZERO, &mut batch);
    for (i, f) in frames.iter().enumerate() {
        let mut single = Batch::new();
        single.push(Packet::new(f.clone(), 0, f.len()).unwrap()).ok();
        DecapStage::new(cfg.clone()).unwrap().process(Instant::ZERO, &mut single);
        assert_eq!(batch.packets()[i].meta, single.packets()[0].meta);
        assert_eq!(batch.packets()[i].data(), single.packets()[0].data());
    }
    let mut out = EncapConfig::vxlan(
        0,
        Underlay {
            src_mac: [2; 6],
            dst_mac: [4; 6],
            src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        },
    );
    out.vni = VniSource::Zone;
    EncapStage::new(out).unwrap().process(Instant::ZERO, &mut batch);
});
