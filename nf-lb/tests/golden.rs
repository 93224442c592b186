//! Golden vectors: tables and choices for fixed keys and inputs, hard-coded. They must never
//! change (every node in a fleet, on any platform and any version, must build the same table
//! and make the same choices); a failure here means the placement changed, which moves flows
//! in production.
//!
//! Every value below except the symmetric ECMP choices was also computed by
//! `tests/reference.py`, an independent implementation of the documented encodings and rules
//! in Python (its own SipHash-1-3, a different formulation of the weighted fill).
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::{FlowKey, ZoneId, flow::proto};
use nf_lb::{Backend, BackendId, EcmpGroup, LbKey, MaglevTable, Rendezvous};

fn key() -> LbKey {
    LbKey::new(core::array::from_fn(|i| i as u8))
}

fn v4(last: u8) -> BackendId {
    BackendId::v4([10, 0, 0, last], 80)
}

/// 10.0.0.1..6:80 with weights 1, 2, 3, 1, 0, 2, and 10.0.0.7:80 (weight 2) draining; listed
/// out of order on purpose.
fn backends() -> Vec<Backend> {
    let mut b: Vec<Backend> = (1..=6u8)
        .zip([1, 2, 3, 1, 0, 2])
        .map(|(i, w)| Backend::new(v4(i), w))
        .collect();
    b.push(Backend::new(v4(7), 2).draining());
    b.reverse();
    b
}

/// FNV-1a over the entries as big-endian u32s.
fn fnv(entries: impl Iterator<Item = u32>) -> u64 {
    entries.fold(0xcbf2_9ce4_8422_2325, |h, e| {
        e.to_be_bytes().iter().fold(h, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    })
}

fn flows() -> Vec<FlowKey> {
    (1..=8u8)
        .map(|p| {
            FlowKey::v4(
                ZoneId(7),
                [198, 51, 100, p],
                [192, 0, 2, 1],
                proto::TCP,
                40_000 + u16::from(p),
                443,
            )
        })
        .collect()
}

fn check_table(size: u32, first16: [u32; 16], counts: [u32; 7], digest: u64, choices: [u32; 8]) {
    let t = MaglevTable::new(&key(), size, &backends()).unwrap();
    let ids: Vec<BackendId> = t.backends().iter().map(|b| b.id).collect();
    assert_eq!(ids, (1..=7).map(v4).collect::<Vec<_>>());
    assert_eq!(t.entries().take(16).collect::<Vec<_>>(), first16);
    assert_eq!(t.entries_per_backend(), counts);
    assert_eq!(fnv(t.entries()), digest);
    let mut out = [0u32; 8];
    t.lookup_flows(&flows(), &mut out);
    assert_eq!(out, choices);
}

#[test]
fn maglev_small_table() {
    check_table(
        1_009,
        [0, 1, 2, 3, 0, 2, 5, 2, 0, 2, 2, 5, 2, 2, 5, 1],
        [112, 225, 336, 112, 0, 224, 0],
        0x7ad5_b047_c503_09b2,
        [2, 5, 3, 2, 1, 1, 2, 1],
    );
}

#[test]
fn maglev_default_size() {
    check_table(
        65_537,
        [1, 5, 0, 1, 2, 5, 5, 5, 5, 2, 2, 2, 0, 0, 2, 1],
        [7282, 14564, 21845, 7282, 0, 14564, 0],
        0x4b51_b68e_6175_473f,
        [2, 3, 5, 2, 2, 2, 1, 2],
    );
}

#[test]
fn maglev_equal_weights() {
    let b: Vec<Backend> = (1..=10).map(|i| Backend::new(v4(i), 1)).collect();
    let t = MaglevTable::new(&key(), 65_537, &b).unwrap();
    assert_eq!(
        t.entries().take(16).collect::<Vec<_>>(),
        [8, 6, 0, 1, 9, 4, 6, 5, 3, 7, 7, 7, 0, 0, 4, 9]
    );
    assert_eq!(fnv(t.entries()), 0x13e3_62b8_035a_0d93);
}

const HASHES: [u64; 6] = [
    0,
    1,
    u64::MAX,
    0x0123_4567_89ab_cdef,
    0x8000_0000_0000_0000,
    0xdead_beef_cafe_f00d,
];

/// 10.0.0.1..5:80 with weights 1, 2, 3, 0, 5.
fn members() -> Vec<Backend> {
    (1..=5u8)
        .zip([1, 2, 3, 0, 5])
        .map(|(i, w)| Backend::new(v4(i), w))
        .collect()
}

#[test]
fn rendezvous_choices() {
    let r = Rendezvous::new(&key(), &members()).unwrap();
    assert_eq!(HASHES.map(|h| r.lookup(h)), [2, 4, 2, 4, 4, 2]);
    let equal: Vec<Backend> = (1..=5).map(|i| Backend::new(v4(i), 4)).collect();
    let r = Rendezvous::new(&key(), &equal).unwrap();
    assert_eq!(HASHES.map(|h| r.lookup(h)), [3, 0, 2, 3, 3, 0]);
}

#[test]
fn ecmp_choices() {
    let g = EcmpGroup::new(&key(), &members()).unwrap();
    assert_eq!(HASHES.map(|h| g.choose(h)), [2, 4, 4, 2, 4, 4]);
    let chosen: Vec<u32> = flows().iter().map(|f| g.next_hop_for(f)).collect();
    assert_eq!(chosen, [1, 1, 4, 4, 4, 1, 1, 1]);
}
