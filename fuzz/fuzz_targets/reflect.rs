//! Fuzzes the reflect stage. Arbitrary frames with an arbitrary claimed `outer_len` never
//! panic it and never grow a frame beyond its buffer. And frames our encap stage builds
//! (arbitrary inner frame, Geneve options, VNI, IPv4 or IPv6 outer), decapsulated and then
//! reflected, go back with the outer MAC and IP addresses swapped, the UDP ports, VNI,
//! options and inner bytes unchanged, consistent lengths and a valid outer IPv4 checksum.
#![no_main]

#[path = "shared/tunnel.rs"]
mod tunnel;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::wire::ipv4::Ipv4Packet;
use nf_core::{Batch, Instant, Packet, Stage, Verdict};
use nf_tunnel::{
    DecapConfig, DecapStage, EncapConfig, EncapStage, GenevePacket, OptionSpec, OptionsBuilder,
    ReflectStage,
};
use tunnel::{inner_frame, underlay};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Build a well-formed inner frame around `inner` (see `tunnel::inner_frame`).
    built: Option<(bool, bool, u16)>,
    raw: Vec<u8>,
    raw_headroom: u8,
    raw_outer_len: u16,
    inner: Vec<u8>,
    options: Vec<(u16, u8, Vec<u8>)>,
    vni: u32,
    v6: bool,
    udp_checksum_v4: bool,
    mtu: u16,
}

fuzz_target!(|input: Input| {
    let inner = inner_frame(input.built, &input.inner);
    // Anything at all.
    let room = usize::from(input.raw_headroom);
    let mut buf = vec![0u8; room + input.raw.len()];
    buf[room..].copy_from_slice(&input.raw);
    let mut p = Packet::new(buf, room, input.raw.len()).unwrap();
    p.meta.tunnel.outer_len = input.raw_outer_len;
    let mut b = Batch::new();
    b.push(p).ok();
    ReflectStage::new(input.mtu, input.udp_checksum_v4).process(Instant::ZERO, &mut b);
    let p = &b.packets()[0];
    if p.meta.verdict == Verdict::Pass {
        assert_eq!(p.len(), input.raw.len() + usize::from(input.raw_outer_len));
    }

    // A real round trip: encap, decap, reflect.
    let mut opts = OptionsBuilder::new();
    let mut known = Vec::new();
    for (class, ty, data) in input.options.iter().take(8) {
        let n = data.len().min(124) / 4 * 4;
        // Non-critical types only: decap drops unknown critical options by design.
        if opts.push(*class, ty & 0x7f, &data[..n]).is_ok() {
            known.push(OptionSpec::known(*class, ty & 0x7f));
        }
    }
    let cfg = EncapConfig::geneve(opts, input.vni & 0x00ff_ffff, underlay(input.v6));
    let mut encap = EncapStage::new(cfg).unwrap();
    let mut b = Batch::new();
    b.push(Packet::with_headroom(&inner, nf_core::StageControl::headroom(&encap))).ok();
    encap.process(Instant::ZERO, &mut b);
    if b.packets()[0].meta.verdict != Verdict::Pass {
        return;
    }
    let sent = b.packets()[0].data().to_vec();
    // More option specs than a stage tracks is a config error, not a packet to reflect.
    let Ok(mut decap) = DecapStage::new(DecapConfig { options: known, ..DecapConfig::default() })
    else {
        return;
    };
    decap.process(Instant::ZERO, &mut b);
    let p = &b.packets()[0];
    if p.meta.verdict != Verdict::Pass || p.meta.tunnel.outer_len == 0 {
        return; // e.g. an inner frame decap does not pass (non-IP to the control path)
    }
    let inner = p.data().to_vec();
    let mut reflect = ReflectStage::new(input.mtu, input.udp_checksum_v4);
    reflect.process(Instant::ZERO, &mut b);
    let p = &b.packets()[0];
    if p.meta.verdict != Verdict::Pass {
        assert!(sent.len() - 14 > usize::from(input.mtu), "{:?}", p.meta.verdict);
        return;
    }
    let f = p.data();
    assert_eq!(f.len(), sent.len());
    assert_eq!((&f[..6], &f[6..12]), (&sent[6..12], &sent[..6]), "MACs swapped");
    let (udp, addr, alen) = if input.v6 { (54, 22, 16) } else { (34, 26, 4) };
    assert_eq!(&f[addr..addr + alen], &sent[addr + alen..addr + 2 * alen], "IPs swapped");
    assert_eq!(&f[addr + alen..addr + 2 * alen], &sent[addr..addr + alen]);
    if !input.v6 {
        assert!(Ipv4Packet::new_checked(&f[14..]).unwrap().verify_checksum());
        assert_eq!(&f[16..18], &sent[16..18], "same total length");
    } else {
        assert_eq!(&f[18..20], &sent[18..20], "same payload length");
    }
    assert_eq!(&f[udp..udp + 6], &sent[udp..udp + 6], "ports and UDP length kept");
    let (g, h) = (GenevePacket::new_checked(&f[udp + 8..]).unwrap(), GenevePacket::new_checked(&sent[udp + 8..]).unwrap());
    assert_eq!(g.header().vni(), h.header().vni());
    assert_eq!(g.options_bytes(), h.options_bytes());
    assert_eq!(g.payload(), &inner[..]);
});
