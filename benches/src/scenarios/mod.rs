//! The named scenarios. Each module exposes `pub(crate) fn run(opts: &Opts)`; add a line to
//! `ALL` to register one.

use crate::harness::Opts;

mod acl;
mod conntrack_hit;
mod conntrack_insert;
mod conntrack_stage;
mod geneve_decap;
mod geneve_encap;
mod lb_stage;
mod lpm;
mod maglev_build;
mod maglev_disruption;
mod maglev_lookup;
mod nat_established;
mod nat_new;
mod parse;
mod pipeline;
mod sg_stage;
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
        name: "maglev-build",
        about: "Maglev table build, N=1000 backends, M=65537 (vs maglev-hash 0.1.0, maglev 0.2.1)",
        run: maglev_build::run,
    },
    Scenario {
        name: "maglev-lookup",
        about: "keyed 5-tuple hash + Maglev lookup, batches of 64, N=1000, M=65537 (vs maglev-hash 0.1.0, maglev 0.2.1)",
        run: maglev_lookup::run,
    },
    Scenario {
        name: "maglev-disruption",
        about: "share of flows moved when 1 of N=10/100/1000 backends leaves, M=65537 (vs the paper's algorithm)",
        run: maglev_disruption::run,
    },
    Scenario {
        name: "lb-stage",
        about: "parsed packets through Conntrack<Lb> (DNAT), 1M sessions, 99% established / 1% new, 1000 backends (vs hashbrown + ahash + maglev-hash)",
        run: lb_stage::run,
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
        name: "nat-established",
        about: "SNAT of established flows: lookup + rewrite + checksum update through Conntrack<Snat>, 1M sessions, batches of 64; bytes_per_session (vs hashbrown + ahash reference NAT)",
        run: nat_established::run,
    },
    Scenario {
        name: "nat-new",
        about: "new outbound connections per second at 90% port occupancy of one destination, hyperplane profile; probes_p99 (vs hashbrown + ahash random probing)",
        run: nat_new::run,
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
    Scenario {
        name: "acl",
        about: "classify batches of 64 keys against 1k and 10k ACL rules and a tuple-space-explosion set, adversarial vs benign traffic (vs a linear scan)",
        run: acl::run,
    },
    Scenario {
        name: "sg-stage",
        about: "parsed packets through Conntrack<SecurityGroups>, 1M sessions, 99% established / 1% new, 16 zones of 61 ingress rules (vs hashbrown + ahash + a linear rule scan)",
        run: sg_stage::run,
    },
    Scenario {
        name: "pipeline",
        about: "the whole gateway path on received frames: Geneve decap -> conntrack with security groups and SNAT -> Geneve encap, 1M sessions, 99% established / 1% new, 16 zones (vs the sum of the single-stage references)",
        run: pipeline::run,
    },
];
