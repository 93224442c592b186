//! Fuzzes what a load balancer reads from the other machines of its fleet: the BGP messages
//! of the router (`nf_examples::bgp::decode`) and the frames of the session-sync link
//! (`nf_examples::sync::read_frame`), each over a stream of arbitrary bytes.
//!
//! Checked: nothing panics; a decoded BGP message is 19 to 4,096 bytes and never longer
//! than what was read, and every error maps to a NOTIFICATION code of RFC 4271 §4.5; a sync
//! frame's payload is at most `MAX_FRAME` bytes and the stream is consumed exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nf_examples::bgp::{MAX_MESSAGE, decode};
use nf_examples::sync::{MAX_FRAME, read_frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((_, n))) = decode(rest).inspect_err(|e| {
        let (code, _) = e.notification();
        assert!((1..=6).contains(&code), "{e:?}");
    }) {
        assert!((19..=MAX_MESSAGE).contains(&n) && n <= rest.len());
        rest = &rest[n..];
    }
    let mut stream = data;
    let mut read = 0usize;
    while let Ok((_, payload)) = read_frame(&mut stream) {
        assert!(payload.len() <= MAX_FRAME);
        read += 5 + payload.len();
        assert_eq!(read + stream.len(), data.len());
    }
});
