//! The named scenarios. Each module exposes `pub(crate) fn run(opts: &Opts)`; add a line to
//! `ALL` to register one.

use crate::harness::Opts;

mod conntrack_hit;
mod conntrack_insert;
mod conntrack_stage;
mod geneve_decap;
mod geneve_encap;
mod lpm;
mod parse;
mod shuffle_place;
mod vxlan_decap;

/// One named scenario of the runner.
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) about: &'static str,
    pub(crate) run: fn(&Opts),
}

/// Every scenario, in the order `all` runs them.
pub(crate) const ALL: &[Scenario] = &[
    Scenario {
        name: "parse",
        about: "64-byte Ethernet/IPv4/TCP and IPv6/UDP frames -> validated flow key (vs etherparse, smoltcp)",
        run: parse::run,
    },
    Scenario {
        name: "shuffle-place",
        about: "tenant -> k of 100 and 1000 nodes (3 zones): placement time, tenants moved per node change, load spread vs uniform random",
        run: shuffle_place::run,
    },
    Scenario {
        name: "conntrack-hit",
        about: "batched session lookups, both directions, 1M sessions, uniform and Zipf (vs hashbrown + ahash)",
        run: conntrack_hit::run,
    },
    Scenario {
        name: "conntrack-insert",
        about: "new sessions per second until 90% full, bytes_per_session IPv4/IPv6 (vs hashbrown + ahash)",
        run: conntrack_insert::run,
    },
    Scenario {
        name: "conntrack-stage",
        about: "parsed packets through the Conntrack stage, 1M sessions, 99% established / 1% new (vs hashbrown + ahash)",
        run: conntrack_stage::run,
    },
    Scenario {
        name: "geneve-encap",
        about: "in-place Geneve encap, three GWLB options, IPv4 outer (vs hand-written Repr reference)",
        run: geneve_encap::run,
    },
    Scenario {
        name: "geneve-decap",
        about: "Geneve decap + option walk + inner key, GWLB profile (vs etherparse + manual walk)",
        run: geneve_decap::run,
    },
    Scenario {
        name: "vxlan-decap",
        about: "VXLAN decap + inner key (vs etherparse + manual check)",
        run: vxlan_decap::run,
    },
    Scenario {
        name: "lpm",
        about: "longest-prefix match, 1M IPv4 prefixes, batches of 64, DIR-24-8 and 16-8-8 (vs prefix-trie)",
        run: lpm::run,
    },
];
