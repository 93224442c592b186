//! Fuzzes the hashes nodes must agree on: the keyed flow hash and Toeplitz RSS are
//! deterministic (two hashers built from the same key agree), their symmetric variants give
//! both directions of a flow the same value, and owner selection stays in range.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::toeplitz::{KEY_LEN, MICROSOFT_KEY, SYMMETRIC_KEY, Toeplitz};
use nf_core::{FlowHasher, FlowKey, ZoneId, owner_of};

#[derive(Arbitrary, Debug)]
struct Input {
    sip_key: [u8; 16],
    rss_key: [u8; KEY_LEN],
    zone: u32,
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    src_port: u16,
    dst_port: u16,
    owners: u32,
    bytes: Vec<u8>,
}

fuzz_target!(|i: Input| {
    let key = if i.v6 {
        FlowKey::v6(
            ZoneId(i.zone),
            i.src,
            i.dst,
            i.proto,
            i.src_port,
            i.dst_port,
        )
    } else {
        let (s, d) = (&i.src, &i.dst);
        FlowKey::v4(
            ZoneId(i.zone),
            [s[0], s[1], s[2], s[3]],
            [d[0], d[1], d[2], d[3]],
            i.proto,
            i.src_port,
            i.dst_port,
        )
    };
    let rev = key.reversed();

    // Keyed flow hash: deterministic, symmetric form equal both ways, hash of the encoding.
    let (a, b) = (FlowHasher::new(i.sip_key), FlowHasher::new(i.sip_key));
    assert_eq!(a.hash(&key), b.hash(&key));
    assert_eq!(a.symmetric(&key), b.symmetric(&rev));
    assert_eq!(a.symmetric(&key), a.hash(&key.canonical()));
    let mut enc = [0u8; nf_core::flow::MAX_ENCODED_LEN];
    let n = key.encode(&mut enc);
    assert_eq!(a.hash(&key), a.hash_bytes(&enc[..n]));
    assert_eq!(a.hash_bytes(&i.bytes), b.hash_bytes(&i.bytes));
    if i.owners != 0 {
        assert!(owner_of(a.hash(&key), i.owners) < i.owners);
    }
    assert_eq!(owner_of(a.hash(&key), 0), 0);

    // Toeplitz: deterministic for any key; symmetric with the symmetric key.
    let (t1, t2) = (Toeplitz::new(&i.rss_key), Toeplitz::new(&i.rss_key));
    assert_eq!(t1.hash(&i.bytes), t2.hash(&i.bytes));
    for l4 in [false, true] {
        assert_eq!(t1.hash_flow(&key, l4), t2.hash_flow(&key, l4));
    }
    let sym = Toeplitz::new(&SYMMETRIC_KEY);
    for l4 in [false, true] {
        assert_eq!(sym.hash_flow(&key, l4), sym.hash_flow(&rev, l4));
    }
    let ports = Some((i.src_port, i.dst_port));
    let swapped = Some((i.dst_port, i.src_port));
    let (s4, d4) = (
        [i.src[0], i.src[1], i.src[2], i.src[3]],
        [i.dst[0], i.dst[1], i.dst[2], i.dst[3]],
    );
    assert_eq!(sym.hash_v4(s4, d4, ports), sym.hash_v4(d4, s4, swapped));
    assert_eq!(
        sym.hash_v6(&i.src, &i.dst, ports),
        sym.hash_v6(&i.dst, &i.src, swapped)
    );
    // hash_flow is the per-family hash over the key's fields.
    let ms = Toeplitz::new(&MICROSOFT_KEY);
    let want = if i.v6 {
        ms.hash_v6(&i.src, &i.dst, ports)
    } else {
        ms.hash_v4(s4, d4, ports)
    };
    assert_eq!(ms.hash_flow(&key, true), want);
});
