//! Fuzzes the router's IPv4 fragmentation (`nf_examples::router::fragment`) on arbitrary
//! frames: an Ethernet header (with or without a VLAN tag before the IP header), an IPv4
//! header whose options, lengths and fragment word the fuzzer writes, and a frame size.
//!
//! Checked: nothing panics; a refusal sends nothing, and a packet with DF set is refused;
//! otherwise every fragment fits the frame
//! size, keeps the layer-2 header, carries a valid header checksum and its own length, the
//! first fragment all the options and the later ones exactly the options marked copied
//! (padded with zeros to 4 bytes), offsets that follow one another from the packet's own,
//! MF on all but the last (and on the last if the packet had it), and the fragments' data
//! put end to end is the packet's payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nf_examples::router::fragment;

/// The options a later fragment carries: those with the copied flag, in order, padded.
fn copied(options: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = options;
    while let Some(&kind) = rest.first() {
        let len = match kind {
            0 => break,
            1 => 1,
            _ => usize::from(rest[1]),
        };
        if kind & 0x80 != 0 {
            out.extend_from_slice(&rest[..len]);
        }
        rest = &rest[len..];
    }
    out.resize(out.len().div_ceil(4) * 4, 0);
    out
}

fuzz_target!(|input: (bool, u16, Vec<u8>)| {
    let (vlan, frame_max, bytes) = input;
    let l3 = if vlan { 18 } else { 14 };
    let mut frame = vec![0u8; l3];
    frame.extend_from_slice(&bytes);
    let frame_max = usize::from(frame_max);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let n = fragment(&frame, l3, frame_max, &mut Vec::new(), |f| {
        sent.push(f.to_vec());
        true
    });
    let Some(n) = n else {
        assert!(sent.is_empty(), "a refusal sent fragments");
        return;
    };
    assert_eq!(frame[l3 + 6] & 0x40, 0, "DF set, fragmented");
    assert_eq!(n as usize, sent.len());
    // Refused unless this much holds.
    let h = &frame[l3..l3 + 20];
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let options = &frame[l3 + 20..l3 + ihl];
    let payload = &frame[l3 + ihl..l3 + total];
    let word = u16::from_be_bytes([h[6], h[7]]);
    let later = copied(options);
    let mut whole = Vec::new();
    for (i, f) in sent.iter().enumerate() {
        assert!(f.len() <= frame_max, "fragment {i} of {} bytes", f.len());
        assert_eq!(f[..l3], frame[..l3]);
        let g = &f[l3..];
        let ghl = usize::from(g[0] & 0x0f) * 4;
        assert_eq!(g[0] >> 4, 4);
        assert_eq!(nf_core::checksum::checksum(&g[..ghl]), 0, "fragment {i}'s checksum");
        assert_eq!(usize::from(u16::from_be_bytes([g[2], g[3]])), g.len());
        // Everything but length, fragment word and checksum as in the packet.
        assert_eq!(g[1], h[1]);
        assert_eq!(g[4..6], h[4..6]);
        assert_eq!(g[8..10], h[8..10]);
        assert_eq!(g[12..20], h[12..20]);
        let opts = &g[20..ghl];
        if i == 0 {
            assert_eq!(opts, options);
        } else {
            assert_eq!(opts, &later[..]);
        }
        let w = u16::from_be_bytes([g[6], g[7]]);
        assert_eq!(w & 0xc000, word & 0xc000, "reserved bit kept, DF clear");
        assert_eq!(usize::from(w & 0x1fff), usize::from(word & 0x1fff) + whole.len() / 8);
        let last = i + 1 == sent.len();
        assert_eq!(w & 0x2000 != 0, !last || word & 0x2000 != 0, "fragment {i}'s MF");
        if !last {
            assert_eq!((g.len() - ghl) % 8, 0, "fragment {i}'s data in 8-byte units");
        }
        whole.extend_from_slice(&g[ghl..]);
    }
    assert_eq!(whole, payload);
});
