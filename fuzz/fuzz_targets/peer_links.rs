//! Fuzzes what a load balancer reads from the other machines of its fleet: the BGP messages
//! and BFD control packets of the router (`nf_examples::bgp::decode`,
//! `nf_examples::bfd::decode` into a `Session`) and the frames of the session-sync link
//! (`nf_examples::sync::read_frame`, and on a keyed link `FrameMac::open`), each over a
//! stream of arbitrary bytes.
//!
//! Checked: nothing panics; a decoded BGP message is 19 to 4,096 bytes and never longer
//! than what was read, and every error maps to a NOTIFICATION code of RFC 4271 §4.5; a sync
//! frame's payload is at most `MAX_FRAME` bytes and the stream is consumed exactly; no
//! frame the fuzzer writes opens under a key it does not know (a forged tag), while the
//! same frames sealed with the key open back to themselves; a BFD packet that decodes
//! encodes back to one that decodes the same, and a session fed every 24-byte window of the
//! input (a millisecond apart) only ever sends packets that decode; no 52-byte window opens
//! under a BFD key (a forged digest), while each packet sealed under it opens back to itself
//! once (not twice: a replay).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nf_examples::bfd::{self, BfdAuth, BfdConfig, Session};
use nf_examples::bgp::{MAX_MESSAGE, decode};
use nf_examples::sync::{FrameMac, MAX_FRAME, TAG_LEN, read_frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((_, n))) = decode(rest).inspect_err(|e| {
        let (code, _) = e.notification();
        assert!((1..=6).contains(&code), "{e:?}");
    }) {
        assert!((19..=MAX_MESSAGE).contains(&n) && n <= rest.len());
        rest = &rest[n..];
    }
    let mut session = Session::new(BfdConfig::default(), 7, 1);
    let mut now = std::time::Instant::now();
    for window in data.windows(bfd::LEN).step_by(3) {
        now += std::time::Duration::from_millis(1);
        if let Ok(c) = bfd::decode(window) {
            assert_eq!(bfd::decode(&c.encode()), Ok(c));
            session.receive(now, &c);
        }
        if let Some(p) = session.poll(now) {
            assert!(bfd::decode(&p).is_ok());
        }
    }
    let mut auth = BfdAuth::new(1, b"peer_links bfd", 3, 1).unwrap();
    let mut sealer = auth.clone();
    for window in data.windows(bfd::AUTH_PACKET_LEN).step_by(7) {
        assert!(auth.open(window, now).is_err(), "a forged BFD digest opened");
        let mut packet = [0u8; bfd::LEN];
        packet.copy_from_slice(&window[..bfd::LEN]);
        let sealed = sealer.seal(&packet);
        let mut opened = auth.open(&sealed, now).unwrap();
        // What opens is the packet without its A bit and with its length 24.
        opened[1] |= packet[1] & 0x04;
        opened[3] = packet[3];
        assert_eq!(opened, packet);
        assert!(auth.open(&sealed, now).is_err(), "a replayed BFD packet opened");
    }
    let mut stream = data;
    let mut read = 0usize;
    let key = *b"peer_links fuzz!";
    let mut forged = FrameMac::new(&key, &[1; 16], &[2; 16]);
    let (mut tx, mut rx) = (forged.clone(), forged.clone());
    while let Ok((kind, payload)) = read_frame(&mut stream) {
        assert!(payload.len() <= MAX_FRAME);
        read += 5 + payload.len();
        assert_eq!(read + stream.len(), data.len());
        assert_eq!(forged.open(kind, payload.clone()), None, "a forged tag opened");
        let mut sealed = (payload.len() as u32 + 1).to_be_bytes().to_vec();
        sealed.push(kind);
        sealed.extend_from_slice(&payload);
        tx.seal(&mut sealed);
        assert_eq!(sealed.len(), 5 + payload.len() + TAG_LEN);
        // (The link's chunks are far below `MAX_FRAME`; a payload within a tag of it would
        // not fit once sealed.)
        if let Ok((k, p)) = read_frame(&mut &sealed[..]) {
            assert_eq!(rx.open(k, p), Some(payload));
        }
    }
});
