//! The named scenarios. Each module exposes `pub(crate) fn run(opts: &Opts)`; add a line to
//! `ALL` to register one.

use crate::harness::Opts;

mod parse;
mod shuffle_place;

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
        about: "tenant -> k of 1000 nodes (3 zones): placement time and tenants moved per node change",
        run: shuffle_place::run,
    },
];
