//! Golden vectors: the keyed port choice for a fixed secret, hard-coded. Every node of a
//! fleet and every version must choose alike (documented in the crate docs: start word from
//! the low 32 bits of SipHash-1-3 of the flow key's encoding, start bit from bits 32–37,
//! first public address from bits 40–); a failure here means the choice changed.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::flow::proto;
use nf_core::{FlowKey, Instant, ZoneId};
use nf_nat::{AllocatorConfig, CgnSettings, PortAllocator, Profile};

const SECRET: [u8; 16] = *b"golden nat secrt";

fn flows() -> Vec<FlowKey> {
    vec![
        FlowKey::v4(
            ZoneId(0),
            [10, 0, 0, 1],
            [198, 51, 100, 1],
            proto::TCP,
            40000,
            443,
        ),
        FlowKey::v4(
            ZoneId(0),
            [10, 0, 0, 1],
            [198, 51, 100, 1],
            proto::TCP,
            40001,
            443,
        ),
        FlowKey::v4(
            ZoneId(7),
            [10, 0, 0, 2],
            [192, 0, 2, 9],
            proto::UDP,
            5353,
            53,
        ),
        FlowKey::v4(
            ZoneId(0),
            [10, 0, 0, 3],
            [192, 0, 2, 9],
            proto::UDP,
            123,
            123,
        ),
        FlowKey::v4(
            ZoneId(0),
            [10, 9, 8, 7],
            [192, 0, 2, 9],
            proto::ICMP,
            777,
            777,
        ),
        FlowKey::v6(ZoneId(1), [0xfd; 16], [0x20; 16], proto::TCP, 50000, 80),
    ]
}

fn ports(profile: Profile) -> Vec<(u16, u16)> {
    let publics = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "2001:db8::1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let mut n = PortAllocator::new(AllocatorConfig::new(profile, publics, SECRET)).unwrap();
    flows()
        .iter()
        .map(|f| {
            let m = n.allocate(Instant::ZERO, f).unwrap();
            (m.public_index(), m.port())
        })
        .collect()
}

#[test]
fn golden_hyperplane() {
    assert_eq!(ports(Profile::Hyperplane), HYPERPLANE);
}

#[test]
fn golden_rfc() {
    assert_eq!(ports(Profile::Rfc), RFC);
}

#[test]
fn golden_cgn() {
    assert_eq!(
        ports(Profile::Cgn(
            CgnSettings::new().with_block_size(512).with_max_blocks(4)
        )),
        CGN
    );
}

// (public address index, port), pinned on first implementation; never change. (Changed once
// before the first release: ICMP identifiers moved to the high class, flow 4 552 → 35560.)
const HYPERPLANE: [(u16, u16); 6] = [
    (1, 61512),
    (2, 40544),
    (0, 20344),
    (2, 603),
    (1, 35560),
    (3, 13584),
];
/// Flow 2 shares flow 1's inside address, so paired pooling keeps it on address 1.
const RFC: [(u16, u16); 6] = [
    (1, 61512),
    (1, 40544),
    (0, 20344),
    (2, 603),
    (1, 35560),
    (3, 13584),
];
/// Blocks of 512 ports: each subscriber's first block from a keyed start, always ≥ 1024.
const CGN: [(u16, u16); 6] = [
    (1, 59272),
    (1, 58976),
    (0, 5624),
    (2, 45979),
    (1, 49384),
    (3, 14288),
];
