//! `sg-stage`: parsed packets through connection tracking + security groups
//! (`Conntrack<SecurityGroups>`), 99% established / 1% new.
//!
//! Ours: `Conntrack<nf_policy::SecurityGroups>`; 16 zones (interfaces) sharing one rule set
//! (clones share its classifiers; `rule_bytes`) of 61 ingress rules and 4 egress rules
//! (`rules`), built on the classifier;
//! `--sessions` established IPv4 sessions (default 1M, 75% TCP) created through the stage
//! itself (`replay::create_established`: every session was decided by the rules and holds its
//! decision), in a table at 90% load. Per packet: the one session lookup; the session
//! remembers the decision, so an established packet (either direction) is never classified
//! again. A new flow is classified once against its zone's ingress rules, then inserted.
//!
//! Peer: `replay::PeerConntrack` (`hashbrown` + `ahash` holding both directions, a state and a
//! deadline per session) whose new flows are decided by a linear scan of the zone's same
//! rules (`Match::matches`, the reference the classifier is property-tested against; the
//! three rules that allow the traffic sit in the middle of the list).
//!
//! Traffic: `replay::Traffic`, as in `conntrack-stage` (each packet of an established session
//! picks it uniformly and either direction; 1% are UDP first packets of never-seen flows from
//! 172.16/12 to port 53, which a rule allows). Both sides replay the stream with the same
//! loop. Before timing, both must agree on hit or miss and direction for 4096 batches, and
//! ours passes every packet. These are the `"case": "tracked"` lines (with huge pages, then
//! without).
//!
//! A last line, `"case": "untracked"` (huge pages): the same packets with the rules open both
//! ways (the three allowing rules from anywhere, all traffic out to anywhere) and
//! `SgConfig::untracked` on, so nothing is tracked and every packet is decided by the rules
//! alone; the peer looks each packet up in an empty hashbrown map of the same capacity, then
//! scans the rules (see `measure_untracked`).

use crate::harness::{self, Opts, Rng};
use crate::hugealloc;
use crate::replay::{self, Ours, PeerConntrack, Replay, Side, Traffic};
use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionService, SessionState, Sizes};
use nf_core::flow::proto;
use nf_core::{Batch, DropReason, FlowKey, Instant, Meta, ZoneId};
use nf_policy::{
    ClassKey, Match, PortRange, Prefix, SecurityGroups, SgConfig, SgDirection, SgPeer, SgRule,
    SgRuleSetBuilder, SgTables,
};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

const PACKETS: usize = 1 << 20;
const NEW_SHARE: f64 = 0.01;
const CHECK_BATCHES: usize = 4096;
const TARGET_NS: f64 = 45.0;
const ZONES: u32 = 16;
const PEER: &str = "hashbrown 0.17 HashMap<FlowKey,(u32,bool)> + ahash 0.8 (both directions, state + deadline), new flows decided by a linear scan of the zone's rules (Match::matches)";

pub(crate) fn run(opts: &Opts) {
    let sessions = opts.sessions.unwrap_or(1_000_000);
    let flows = crate::replay::make_flows(sessions, 0xC0FFEE);
    let mut rng = Rng::new(0x57A6E);
    let traffic = Traffic::new(&flows, PACKETS, 64, NEW_SHARE, || rng.next_u64());
    let rules = rules();
    hugealloc::each_mode(|| measure(opts, &flows, &traffic, &rules));
    let was = hugealloc::set_advise(true);
    measure_untracked(opts, &traffic, sessions);
    hugealloc::set_advise(was);
}

fn p4(a: [u8; 4], len: u8) -> Prefix {
    Prefix::masked(IpAddr::V4(Ipv4Addr::from(a)), len).unwrap_or(Prefix::ANY_V4)
}

/// An interface's rules: 58 TCP/UDP rules from random prefixes to common service ports, with
/// the three that allow the bench's traffic in the middle (TCP and UDP 443 from 10/8, UDP 53
/// from 172.16/12), and four egress rules.
pub(crate) fn rules() -> Vec<SgRule> {
    let mut rng = Rng::new(0x5e6_0001);
    let services = [
        22u16, 25, 80, 110, 143, 389, 636, 993, 995, 3306, 5432, 6379, 8080, 9000,
    ];
    let mut v: Vec<SgRule> = (0..58)
        .map(|_| {
            let a = (rng.next_u64() as u32).to_be_bytes();
            let len = 16 + rng.below(13) as u8;
            let peer = SgPeer::Prefix(p4(a, len));
            let port = PortRange::single(services[rng.below(services.len() as u64) as usize]);
            if rng.below(4) == 0 {
                SgRule::udp(SgDirection::Ingress, peer, port)
            } else {
                SgRule::tcp(SgDirection::Ingress, peer, port)
            }
        })
        .collect();
    let clients = SgPeer::Prefix(p4([10, 0, 0, 0], 8));
    let resolvers = SgPeer::Prefix(p4([172, 16, 0, 0], 12));
    let https = PortRange::single(443);
    v.insert(19, SgRule::tcp(SgDirection::Ingress, clients, https));
    v.insert(29, SgRule::udp(SgDirection::Ingress, clients, https));
    v.insert(
        39,
        SgRule::udp(SgDirection::Ingress, resolvers, PortRange::single(53)),
    );
    for (a, len) in [([10, 0, 0, 0], 8), ([192, 168, 0, 0], 16)] {
        let to = SgPeer::Prefix(p4(a, len));
        v.push(SgRule::tcp(SgDirection::Egress, to, PortRange::ANY));
        v.push(SgRule::udp(SgDirection::Egress, to, PortRange::ANY));
    }
    v
}

/// The rules of the `untracked` case: the same noise, the bench's traffic allowed from
/// anywhere (TCP and UDP 443, UDP 53) and all traffic out to anywhere, so that every flow is
/// open both ways.
fn untracked_rules() -> Vec<SgRule> {
    let any = SgPeer::Prefix(Prefix::ANY_V4);
    let mut v: Vec<SgRule> = rules()
        .into_iter()
        .filter(|r| r.direction == SgDirection::Ingress)
        .map(|mut r| {
            // The three that allow the traffic (10/8 and 172.16/12; the noise is /16 or longer).
            if matches!(r.peer, SgPeer::Prefix(p) if p.length() <= 12) {
                r.peer = any;
            }
            r
        })
        .collect();
    v.push(SgRule::all(SgDirection::Egress, any));
    v
}

/// Flows opened from the servers' side (100.64/10) travel egress.
fn server_egress(m: &Meta) -> SgDirection {
    if m.flow.src_raw()[0] == 100 {
        SgDirection::Egress
    } else {
        SgDirection::Ingress
    }
}

/// The same rules for every zone.
fn tables(rules: &[SgRule]) -> Arc<SgTables> {
    let mut b = SgRuleSetBuilder::default();
    for r in rules {
        b.push(*r);
    }
    let set = b.build().expect("rule set");
    Arc::new((0..ZONES).map(|z| (ZoneId(z), set.clone())).collect())
}

/// The `untracked` case: the same packets with every flow left untracked
/// (`SgConfig::untracked`, rules open both ways): no session anywhere, every packet
/// decided by the rules (a scan of the few rules from anywhere). Peer: a lookup in an empty
/// hashbrown map of the same capacity, then a linear scan of the rules doing the same
/// decision per packet.
fn measure_untracked(opts: &Opts, traffic: &Traffic, sessions: usize) {
    let rules = untracked_rules();
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let cfg = ConntrackConfig::new(*b"bench secret key").sizes(Sizes {
        v4: capacity,
        v6: 1024,
    });
    let config = SgConfig::default().direction(server_egress).untracked(true);
    let sg = SecurityGroups::new(tables(&rules), config);
    let ct = Conntrack::new(cfg, sg).expect("stage config");
    let mut ours = Replay::new(Ours(ct), traffic);
    let mut peer = Replay::new(Stateless::new(&rules, capacity as usize), traffic);
    for _ in 0..CHECK_BATCHES.min(traffic.batches()) {
        ours.step(traffic);
        peer.step(traffic);
        for (o, p) in ours.packets().iter().zip(peer.packets()) {
            assert!(o.meta.verdict.is_pass() && o.meta.session.is_none());
            assert!(p.meta.verdict.is_pass());
        }
    }
    assert!(ours.side.0.is_empty());
    let n = traffic.batch as u64;
    let r = harness::ab(opts, n, || ours.step(traffic), || peer.step(traffic));
    harness::report(
        opts,
        "sg-stage",
        "hashbrown 0.17 + ahash 0.8 lookup (a miss: nothing is tracked) then a linear scan of the same rules per packet (Match::matches), the response direction checked against the other direction's rules reversed",
        r,
        json!({
            "case": "untracked",
            "capacity": capacity,
            "sessions_at_end": ours.side.0.len(),
            "zones": ZONES,
            "ingress_rules": rules.iter().filter(|r| r.direction == SgDirection::Ingress).count(),
            "egress_rules": rules.iter().filter(|r| r.direction == SgDirection::Egress).count(),
            "family": "ipv4",
            "batch": traffic.batch,
            "huge_pages": hugealloc::mode(),
        }),
    );
}

/// The `untracked` case's peer: per packet, a session-map lookup (a miss), then the rules
/// of its direction and (for the response direction, which has the all-ports rule) the
/// other direction's rules with the key reversed, linearly.
struct Stateless {
    /// Ingress, then egress: each rule as a match of the remote end, and whether that end is
    /// anywhere.
    rules: [Vec<(Match, bool)>; 2],
    /// The session map a tracker would first look the packet up in (empty here, as ours).
    map: hashbrown::HashMap<FlowKey, u32, ahash::RandomState>,
}

impl Stateless {
    fn new(rules: &[SgRule], capacity: usize) -> Self {
        let side = |d: SgDirection| {
            rules
                .iter()
                .filter(|r| r.direction == d)
                .map(|r| {
                    let SgPeer::Prefix(p) = r.peer else {
                        unreachable!("prefix peers only")
                    };
                    let m = match d {
                        SgDirection::Ingress => Match::any_v4().src(p),
                        SgDirection::Egress => Match::any_v4().dst(p),
                    };
                    let m = match r.proto {
                        Some(x) => m.proto(x).dst_ports(r.ports),
                        None => m,
                    };
                    (m, p.length() == 0)
                })
                .collect()
        };
        Self {
            rules: [side(SgDirection::Ingress), side(SgDirection::Egress)],
            map: hashbrown::HashMap::with_capacity_and_hasher(
                2 * capacity,
                ahash::RandomState::with_seeds(1, 2, 3, 4),
            ),
        }
    }

    /// Whether a rule from anywhere of `d` (0 ingress, 1 egress) allows `k`.
    fn allowed_from_anywhere(&self, d: usize, k: &ClassKey) -> bool {
        self.rules[d].iter().any(|(m, any)| *any && m.matches(k))
    }
}

impl Side for Stateless {
    type Handle = u32;
    fn process(&mut self, _now: Instant, batch: &mut Batch<Vec<u8>>) {
        for p in batch.packets_mut() {
            if self.map.contains_key(&p.meta.flow) {
                continue;
            }
            let k = ClassKey::from_flow(&p.meta.flow, (0, 0));
            // Egress is open on all ports (the all-traffic rule); ingress is not.
            let pass = if server_egress(&p.meta) == SgDirection::Ingress {
                self.allowed_from_anywhere(0, &k)
            } else {
                let mut r = k;
                (r.src, r.dst, r.src_port, r.dst_port) = (k.dst, k.src, k.dst_port, k.src_port);
                self.allowed_from_anywhere(1, &k) && self.allowed_from_anywhere(0, &r)
            };
            if !pass {
                p.meta.verdict = nf_core::Verdict::Drop(DropReason::SgDenied);
            }
        }
    }
    fn handle(_meta: &Meta) -> Option<u32> {
        None
    }
    fn remove(&mut self, _h: u32) {}
}

fn measure(opts: &Opts, flows: &[FlowKey], traffic: &Traffic, rules: &[SgRule]) {
    let sessions = flows.len();
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let cfg = ConntrackConfig::new(*b"bench secret key").sizes(Sizes {
        v4: capacity,
        v6: 1024,
    });
    let sg = SecurityGroups::new(tables(rules), SgConfig::default());
    let mut ct = Conntrack::new(cfg, sg).expect("stage config");
    replay::create_established(&mut ct, flows);
    assert_eq!(ct.len(), sessions);
    // One rule set, shared by every zone's entry.
    let rule_bytes = ct.service().rules().values().map(|s| s.bytes()).max();
    let bytes_per_session = ct.v4().allocated_bytes() as f64 / sessions as f64;
    let huge_bytes = hugealloc::anon_huge_bytes();
    let mut ours = Replay::new(Ours(ct), traffic);
    let mut peer = Replay::new(PeerSide::new(rules, flows), traffic);
    check(&mut ours, &mut peer, traffic, CHECK_BATCHES);

    let n = traffic.batch as u64;
    let r = harness::ab(opts, n, || ours.step(traffic), || peer.step(traffic));
    let mut allowed = 0;
    ours.side.0.service().visit_counters(&mut |_, c, v| {
        if c == "flows_allowed" {
            allowed = v;
        }
    });
    harness::report(
        opts,
        "sg-stage",
        PEER,
        r,
        json!({
            "sessions": sessions,
            "capacity": capacity,
            "zones": ZONES,
            "ingress_rules": rules.iter().filter(|r| r.direction == SgDirection::Ingress).count(),
            "egress_rules": rules.iter().filter(|r| r.direction == SgDirection::Egress).count(),
            "case": "tracked",
            "rule_bytes": rule_bytes,
            "family": "ipv4",
            "batch": traffic.batch,
            "new_flow_share": (traffic.new_share() * 1e5).round() / 1e5,
            "flows_allowed": allowed,
            "bytes_per_session": (bytes_per_session * 10.0).round() / 10.0,
            "huge_pages": hugealloc::mode(),
            "thp_policy": hugealloc::thp_policy(),
            "anon_huge_mib": huge_bytes.map(|b| b >> 20),
            "target_ns": TARGET_NS,
            "meets_target": r.ours_ns <= TARGET_NS,
        }),
    );
}

/// The ingress rules (prefix peers) as classifier matches, in order: the linear-scan
/// reference the peers decide new flows with (also the `pipeline` scenario's).
pub(crate) fn ingress_matches(rules: &[SgRule]) -> Vec<Match> {
    rules
        .iter()
        .filter(|r| r.direction == SgDirection::Ingress)
        .map(|r| {
            let SgPeer::Prefix(p) = r.peer else {
                unreachable!("prefix peers only")
            };
            let m = Match::any_v4().src(p);
            match r.proto {
                Some(x) => m.proto(x).dst_ports(r.ports),
                None => m,
            }
        })
        .collect()
}

/// The peer (see the module docs): the reference conntrack and, per zone, the ingress rules
/// as classifier matches.
struct PeerSide {
    ct: PeerConntrack,
    rules: Vec<Vec<Match>>,
}

impl PeerSide {
    fn new(rules: &[SgRule], flows: &[FlowKey]) -> Self {
        let ingress = ingress_matches(rules);
        let now = Instant::from_nanos(replay::START_NS);
        let mut ct = PeerConntrack::with_capacity(flows.len() + 2 * replay::LAG * 64);
        for f in flows {
            let st = if f.proto == proto::TCP {
                SessionState::TcpEstablished
            } else {
                SessionState::UdpReplied
            };
            ct.insert(now, f, st);
        }
        Self {
            ct,
            rules: vec![ingress; ZONES as usize],
        }
    }
}

impl Side for PeerSide {
    type Handle = u32;
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        let rules = &self.rules;
        let admit = |m: &Meta| {
            let key = ClassKey::from_flow(&m.flow, (0, 0));
            rules
                .get(m.flow.zone.0 as usize)
                .is_some_and(|z| z.iter().any(|r| r.matches(&key)))
        };
        self.ct
            .process_admitting(now, batch, admit, DropReason::SgDenied);
    }
    fn handle(meta: &Meta) -> Option<u32> {
        <PeerConntrack as Side>::handle(meta)
    }
    fn remove(&mut self, h: u32) {
        self.ct.remove(h);
    }
}

/// Correctness before speed (`replay::check_lockstep`), and the peer passes every packet.
fn check(
    ours: &mut Replay<Ours<SecurityGroups>>,
    peer: &mut Replay<PeerSide>,
    t: &Traffic,
    batches: usize,
) {
    let created = |o: &Ours<SecurityGroups>| o.0.stats().created;
    replay::check_lockstep(ours, peer, t, batches, created, |b, i, _, p| {
        assert!(p.meta.verdict.is_pass(), "peer batch {b} packet {i}");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_agree_and_every_flow_is_allowed() {
        let flows = crate::replay::make_flows(3000, 7);
        let mut rng = Rng::new(9);
        let t = Traffic::new(&flows, 64 * 64, 64, 0.05, || rng.next_u64());
        let rules = rules();
        let cfg = ConntrackConfig::new(*b"bench secret key").sizes(Sizes { v4: 4000, v6: 64 });
        let sg = SecurityGroups::new(tables(&rules), SgConfig::default());
        let mut ct = Conntrack::new(cfg, sg).expect("stage config");
        replay::create_established(&mut ct, &flows);
        let mut ours = Replay::new(Ours(ct), &t);
        let mut peer = Replay::new(PeerSide::new(&rules, &flows), &t);
        check(&mut ours, &mut peer, &t, 4 * t.batches());
    }
}
