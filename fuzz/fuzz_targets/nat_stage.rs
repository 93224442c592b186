//! Fuzzes the SNAT service inside conntrack (parse → `Conntrack<Snat>`) with arbitrary
//! packet sequences in batches: outbound TCP/UDP/ICMP echo of both families from inside
//! hosts, replies to the tuples the NAT chose, unsolicited inbound packets, ICMP errors both
//! ways quoting packets the NAT forwarded, mutated copies of forwarded frames, raw bytes,
//! time steps with timer sweeps, and hand-overs (every session exported and imported into a
//! fresh stage with the same configuration, which carries on in its place; on half the
//! inputs two nodes share the ports and the fresh stage is the other node, which took over
//! the current one's share), under an arbitrary profile and a small port space, with
//! a port forward (DNAT) that inbound packets hit now and then, endpoint-independent
//! filtering on half the inputs (rfc, cgn), and inside prefixes on half the inputs, with
//! inside hosts sending to the public tuples the NAT chose (hairpinning to a mapping).
//! A replica follows the stage (the node a hand-over would go to, holding the current node's
//! share as claimable): its change journal at each sync, a full sweep on some, a resync when
//! events were lost; it runs its own timers; a fail-over makes it the stage after a last
//! sync. It never declines a session its primary sends, its public tuples stay unique, and
//! after a fail-over it holds every session the stage had.
//! Invariants: no panic; no two live sessions share a public tuple unless they are one
//! inside endpoint's (endpoint-independent profiles) — in hyperplane, unless they also go
//! to different destinations; every packet built well-formed that passes re-parses and has
//! valid checksums (IPv4 header, TCP/UDP/ICMP/ICMPv6, and an ICMP error's quote),
//! recomputed from scratch here.
#![no_main]

#[path = "shared/translate.rs"]
mod translate;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_core::flow::proto;
use nf_core::wire::Frame;
use nf_core::wire::icmp::IcmpRepr;
use nf_core::{
    Batch, Direction, Duration, FlowKey, Instant, Meta, Packet, ParseConfig, ParseStage, Stage,
    StageControl, StageExt, Verdict, parse_frame,
};
use nf_nat::{
    AllocatorConfig, CgnSettings, Filtering, InsidePrefix, Owner, PortForward, Profile, Snat,
    SnatConfig, nat_timeouts,
};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use translate::{addr4, icmp_error, pick, v6, verify_ip, verify_ip_quoting};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A new or repeated outbound packet from an inside host.
    Out { inside: u8, sport: u8, remote: u8, dport: u8, kind: u8, v6: bool, flags: u8 },
    /// A packet back to a public tuple the NAT chose.
    Reply { which: u16, flags: u8 },
    /// A packet from outside to a public address, unsolicited or guessed.
    Inbound { remote: u8, port: u16, kind: u8, v6: bool },
    /// An inside host sends to a public tuple the NAT chose (another host's mapping).
    Hairpin { inside: u8, sport: u8, which: u16, flags: u8 },
    /// A router reports a forwarded outbound packet unreachable, to the public address.
    ErrorIn { which: u16, ty: u8 },
    /// An inside host reports a reply it received unreachable.
    ErrorOut { which: u16 },
    /// A forwarded frame again with one byte changed.
    Mutate { which: u16, at: u16, xor: u8 },
    /// Arbitrary bytes as a frame.
    Raw(Vec<u8>),
    /// Time passes; due timers run.
    Advance(u16),
    /// Every session moves to a fresh stage with the same configuration.
    Handover,
    /// The stage's changes go to its replica (and, `sweep`, every session).
    Sync { sweep: bool },
    /// A last sync, then the replica takes the stage's place.
    Failover,
}

const PUBLIC4: [u8; 4] = [203, 0, 113, 1];
const PUBLIC4_B: [u8; 4] = [203, 0, 113, 2];


fn public6() -> [u8; 16] {
    v6(0x2001, 1)
}

/// A well-formed frame between two addresses of one family.
fn frame(v6: bool, src: [u8; 16], dst: [u8; 16], kind: u8, sp: u16, dp: u16, flags: u8, reply: bool) -> Vec<u8> {
    let f = if v6 {
        Frame::ipv6(src, dst)
    } else {
        let s: [u8; 4] = src[..4].try_into().unwrap_or_default();
        let d: [u8; 4] = dst[..4].try_into().unwrap_or_default();
        Frame::ipv4(s, d)
    };
    let f = match kind % 3 {
        0 => f.tcp(sp, dp, flags),
        1 => f.udp(sp, dp),
        _ => {
            let ty = match (v6, reply) {
                (false, false) => 8,
                (false, true) => 0,
                (true, false) => 128,
                (true, true) => 129,
            };
            f.icmp(IcmpRepr { ty, ident: sp, seq: 1, ..IcmpRepr::default() })
        }
    };
    f.payload(b"fuzz").to_vec().unwrap_or_default()
}







struct World {
    pipe: nf_core::Chain<ParseStage, Conntrack<Snat>>,
    /// The stage's replica: the node a hand-over would go to.
    replica: Option<Conntrack<Snat>>,
    snat_cfg: SnatConfig,
    ct_cfg: ConntrackConfig,
    /// Two nodes share the ports (`Owner { nodes: 2 }`): hand-overs alternate between them,
    /// the receiving node taking over the other's share first. `node` is the current one.
    shared: bool,
    node: u32,
    now: Instant,
    endpoint_independent: bool,
    /// Original keys of sessions seen, to check the live ones.
    originals: HashSet<FlowKey>,
    /// Reply keys the NAT chose (tuples outside hosts answer to).
    replies: Vec<FlowKey>,
    /// Outbound frames as forwarded (to quote in errors from outside).
    sent: Vec<(bool, Vec<u8>)>,
    /// Reply frames as delivered inside (to quote in errors from inside).
    delivered: Vec<(bool, Vec<u8>)>,
    /// Every frame that left (and whether it was built well-formed), for mutation.
    forwarded: Vec<(bool, Vec<u8>)>,
}

impl World {
    fn flush(&mut self, frames: &mut Vec<(bool, Vec<u8>)>) {
        let mut batch = Batch::new();
        let mut built = Vec::new();
        for (ok, f) in frames.drain(..) {
            if batch.push(Packet::with_headroom(&f, 64)).is_ok() {
                built.push(ok);
            }
        }
        self.pipe.process(self.now, &mut batch);
        for (pkt, ok) in batch.drain().zip(built) {
            if let Verdict::Tx(_) = pkt.meta.verdict {
                // An answer the NAT made (idle RST, ICMP for a refused flow): well formed; its
                // quote is as good as the packet it answers.
                let data = pkt.data();
                let mut m = Meta::default();
                parse_frame(data, &mut m, &ParseConfig::default()).expect("an answer parses");
                verify_ip_quoting(&data[usize::from(m.l3)..], ok);
                continue;
            }
            if pkt.meta.verdict != Verdict::Pass {
                continue;
            }
            let data = pkt.data().to_vec();
            let v6 = pkt.meta.flow.family() == nf_core::Family::V6;
            if ok {
                let mut m = Meta::default();
                parse_frame(&data, &mut m, &ParseConfig::default()).expect("a translated frame re-parses");
                verify_ip(&data[usize::from(m.l3)..]);
            }
            if let Some(r) = pkt.meta.session
                && ok
                && !pkt.meta.has(nf_core::flags::RELATED)
                && let Some(info) = self.pipe.second.info(r)
            {
                self.originals.insert(info.original);
                match pkt.meta.direction {
                    Direction::Original => {
                        if self.replies.len() < 4096 {
                            self.replies.push(info.reply);
                            self.sent.push((v6, data.clone()));
                        }
                    }
                    Direction::Reply => {
                        if self.delivered.len() < 4096 {
                            self.delivered.push((v6, data.clone()));
                        }
                    }
                }
            }
            if self.forwarded.len() < 4096 {
                self.forwarded.push((ok, data));
            }
        }
        self.check_unique();
    }

    /// Moves every session to a fresh stage: whatever the new stage takes over or declines,
    /// every record is accounted for, and the public tuples stay unique (`check_unique`).
    /// No session is declined, in any profile (the fresh stage has the same forward and
    /// stores; a hairpin to a mapping claims both): an outbound one's port (hyperplane: for
    /// its destination; rfc, cgn: its endpoint's mapping, shared by that endpoint's other
    /// sessions, in a block the endpoint's subscriber holds) is free in the fresh allocator.
    /// A fresh stage of the node that takes the current one's sessions (the other node of
    /// a shared split, having taken the current node's share over), and its node number.
    fn next_stage(&self) -> Option<(Conntrack<Snat>, u32)> {
        let mut cfg = self.snat_cfg.clone();
        let next_node = if self.shared { self.node ^ 1 } else { self.node };
        cfg.allocator.owner.node = next_node;
        let mut snat = Snat::new(cfg).ok()?;
        if self.shared {
            snat.ports_mut().take_over(self.node).expect("the other node of the split");
        }
        Some((Conntrack::new(self.ct_cfg.clone(), snat).ok()?, next_node))
    }

    /// Sends the stage's journal to the replica (and, `sweep`, every session; a resync if
    /// events were lost). The replica declines nothing.
    fn sync(&mut self, sweep: bool) {
        let Some(replica) = self.replica.as_mut() else { return };
        let ct = &mut self.pipe.second;
        let mut lost = 0;
        for family in [nf_core::Family::V4, nf_core::Family::V6] {
            let mut chunk = Vec::new();
            let p = ct.export_changes(family, self.now, usize::MAX, &mut chunk).expect("SNAT sessions move");
            lost += p.lost;
            let r = replica.apply(self.now, &chunk).expect("a chunk just made");
            assert_eq!(r.refused, 0, "the replica declined a session");
        }
        if lost > 0 {
            replica.begin_resync(|_| true);
        }
        if sweep || lost > 0 {
            for family in [nf_core::Family::V4, nf_core::Family::V6] {
                let mut chunk = Vec::new();
                ct.export(family, self.now, 0, usize::MAX, &mut chunk).expect("SNAT sessions move");
                let r = replica.apply(self.now, &chunk).expect("a chunk just made");
                assert_eq!(r.refused, 0, "the replica declined a session");
            }
        }
        if lost > 0 {
            replica.end_resync(self.now);
        }
        check_unique(replica, &self.originals, self.endpoint_independent);
    }

    /// The replica takes the stage's place after a last sync (with a sweep: lifetimes),
    /// holding every session; a fresh replica follows it.
    fn failover(&mut self) {
        self.sync(true);
        let Some(mut next) = self.replica.take() else { return };
        next.take_over_replicas(|_| true);
        for o in &self.originals {
            if self.pipe.second.lookup(o).is_some() {
                assert!(next.lookup(o).is_some(), "session {o:?} not on the replica");
            }
        }
        assert_eq!(next.len(), self.pipe.second.len());
        self.node = if self.shared { self.node ^ 1 } else { self.node };
        self.pipe.second = next;
        self.new_replica();
        self.check_unique();
    }

    /// A fresh replica, given every session of the stage.
    fn new_replica(&mut self) {
        self.replica = self.next_stage().map(|(r, _)| r);
        self.sync(true);
    }

    fn handover(&mut self) {
        let Some((mut next, next_node)) = self.next_stage() else { return };
        translate::move_all(&self.pipe.second, &mut next, self.now);
        {
            // Every outbound translated session, every port forward's session, every
            // inbound session on a mapping and every hairpin to the forward moved, in every
            // profile (and none was declined, above).
            for o in &self.originals {
                let Some(hit) = self.pipe.second.lookup(o) else { continue };
                let Some(info) = self.pipe.second.info(hit.session) else { continue };
                let outbound = info.original == *o
                    && info.reply != o.reversed()
                    && ![PUBLIC4, PUBLIC4_B].map(IpAddr::from).contains(&o.dst_ip())
                    && o.dst_ip() != IpAddr::from(public6())
                    && info.value.mapping().is_some()
                    && !info.value.is_forward();
                let hairpin = [PUBLIC4, PUBLIC4_B].map(IpAddr::from).contains(&info.reply.src_ip())
                    || info.reply.src_ip() == IpAddr::from(public6());
                if outbound && !hairpin {
                    assert!(next.lookup(o).is_some(), "outbound session {o:?} did not move");
                }
                if info.original == *o && info.value.is_forward() {
                    assert!(next.lookup(o).is_some(), "port forward's session {o:?} did not move");
                }
                // An outside host's session on a mapping (endpoint-independent filtering):
                // its reply is the mapping's outbound flow back to that host.
                let public_dst = [PUBLIC4, PUBLIC4_B].map(IpAddr::from).contains(&o.dst_ip())
                    || o.dst_ip() == IpAddr::from(public6());
                let inbound = info.original == *o
                    && public_dst
                    && !info.value.is_forward()
                    && info.value.mapping().is_some()
                    && info.reply.dst_ip() == o.src_ip()
                    && info.reply.dst_port == o.src_port;
                if inbound {
                    assert!(next.lookup(o).is_some(), "inbound session {o:?} did not move");
                }
                // A hairpin to the port forward: the forward's inside endpoint answers the
                // client's mapping.
                let reply_to_public = [PUBLIC4, PUBLIC4_B].map(IpAddr::from).contains(&info.reply.dst_ip())
                    || info.reply.dst_ip() == IpAddr::from(public6());
                let to_forward = o.proto == proto::TCP && o.dst_ip() == IpAddr::from(PUBLIC4) && o.dst_port == 8080;
                if info.original == *o && to_forward && reply_to_public {
                    assert!(next.lookup(o).is_some(), "hairpin {o:?} did not move");
                }
            }
        }
        self.pipe.second = next;
        self.node = next_node;
        self.new_replica();
        self.check_unique();
    }

    /// No two live sessions share a public tuple unless that is their mapping's design.
    fn check_unique(&self) {
        check_unique(&self.pipe.second, &self.originals, self.endpoint_independent);
    }
}

/// No two live sessions of `ct` share a public tuple unless that is their mapping's design.
fn check_unique(ct: &Conntrack<Snat>, originals: &HashSet<FlowKey>, endpoint_independent: bool) {
    {
        let mut owner: HashMap<(u8, IpAddr, u16, Option<(IpAddr, u16)>), (nf_core::ZoneId, IpAddr, u16)> =
            HashMap::new();
        for o in originals {
            let Some(hit) = ct.lookup(o) else { continue };
            let Some(info) = ct.info(hit.session) else { continue };
            let inbound = [PUBLIC4, PUBLIC4_B].map(IpAddr::from).contains(&o.dst_ip())
                || o.dst_ip() == IpAddr::from(public6());
            if info.original != *o || info.reply == o.reversed() || inbound {
                continue; // untranslated, or inbound (a forward's, or on an existing mapping)
            }
            let r = info.reply;
            let dest = (!endpoint_independent).then_some((r.src_ip(), r.src_port));
            let key = (r.proto, r.dst_ip(), r.dst_port, dest);
            let inside = (o.zone, o.src_ip(), o.src_port);
            let prev = owner.insert(key, inside);
            if endpoint_independent {
                assert!(prev.is_none_or(|p| p == inside), "public tuple {key:?} shared by {prev:?} and {inside:?}");
            } else {
                assert!(prev.is_none(), "public tuple {key:?} shared by {prev:?} and {inside:?}");
            }
        }
    }
}


fuzz_target!(|input: (u8, Vec<Op>)| {
    let (setup, ops) = input;
    let profile = match setup % 3 {
        0 => Profile::Rfc,
        1 => Profile::Hyperplane,
        _ => Profile::Cgn(CgnSettings::new().with_block_size(64).with_max_blocks(2)),
    };
    let publics: Vec<IpAddr> = vec![PUBLIC4.into(), PUBLIC4_B.into(), IpAddr::from(public6())];
    // A small port space, so ports run out and get reused after quarantine.
    let hi = 1024 + 64 * (1 + u32::from(setup >> 2 & 3));
    // On inputs of odd parity, two nodes share the ports: node 0 holds 1024..hi, node 1 the
    // low ports 512..1023 only (so no cgn block: its new flows are refused, while it holds
    // node 0's sessions and their blocks).
    let shared = setup.count_ones() % 2 == 1;
    let owner = if shared { Owner { nodes: 2, cores: 1, node: 0, core: 0 } } else { Owner::SOLE };
    let alloc = AllocatorConfig::new(profile, publics, *b"fuzz nat secret!")
        .with_max_mappings(64 + usize::from(setup >> 4) * 16)
        .with_quarantine(Duration::from_secs(30))
        .with_excluded_ports((hi..=65535).map(|p| p as u16))
        .with_owner(owner);
    // A port forward (DNAT): PUBLIC4:8080/TCP to 10.0.0.1:80.
    let web = PortForward::new(
        proto::TCP,
        SocketAddr::new(PUBLIC4.into(), 8080),
        SocketAddr::new([10, 0, 0, 1].into(), 80),
    );
    // Endpoint-independent filtering where the profile allows it, on every other input.
    let filtering = if setup & 0x80 != 0 && !matches!(profile, Profile::Hyperplane) {
        Filtering::EndpointIndependent
    } else {
        Filtering::AddressAndPortDependent
    };
    // Answers: idle RSTs (hyperplane's default; all profiles on every other input) and ICMP
    // for flows refused for lack of resources.
    let origin = nf_core::reply::IcmpOrigin::new(Some([10, 0, 0, 254].into()), None, nf_core::PortId(0));
    let mut cfg = SnatConfig::new(alloc);
    if setup & 0x20 != 0 {
        cfg = cfg
            .with_inside(InsidePrefix::new([10, 0, 0, 0].into(), 8))
            .with_inside(InsidePrefix::new(IpAddr::from(v6(0xfd00, 0)), 16))
            .with_hairpin_sessions(16);
    }
    let cfg = cfg
        .with_v6_sessions(32)
        .with_forward(web)
        .with_filtering(filtering)
        .with_idle_reset((setup & 0x40 != 0 || matches!(profile, Profile::Hyperplane)).then_some(nf_core::PortId(0)))
        .with_refusal_icmp((setup & 0x40 != 0).then_some(origin));
    let snat_cfg = cfg.clone();
    let Ok(snat) = Snat::new(cfg) else { return };
    let mut ct = ConntrackConfig::new(*b"fuzz conntrack!!").sizes(Sizes { v4: 256, v6: 64 });
    ct.v4.timeouts = nat_timeouts(&profile);
    ct.v6.timeouts = ct.v4.timeouts;
    // Journals for the replica (short enough to lose events now and then).
    ct.v4.journal = 64;
    ct.v6.journal = 16;
    // Small wheels, zone and fragment tables: a run builds several stages.
    ct.v4.wheel_slots = 64;
    ct.v6.wheel_slots = 64;
    ct.v4.max_zones = 4;
    ct.v6.max_zones = 4;
    ct.fragments.capacity = 64;
    let Ok(ct_stage) = Conntrack::new(ct.clone(), snat) else { return };
    let mut w = World {
        pipe: ParseStage::default().then(ct_stage),
        replica: None,
        snat_cfg: snat_cfg,
        ct_cfg: ct,
        shared,
        node: 0,
        now: Instant::from_nanos(1_000_000_000),
        endpoint_independent: !matches!(profile, Profile::Hyperplane),
        originals: HashSet::new(),
        replies: Vec::new(),
        sent: Vec::new(),
        delivered: Vec::new(),
        forwarded: Vec::new(),
    };
    w.new_replica();
    let mut pending: Vec<(bool, Vec<u8>)> = Vec::new();
    for op in ops.into_iter().take(512) {
        match op {
            Op::Out { inside, sport, remote, dport, kind, v6: six, flags } => {
                let (src, dst) = if six {
                    (v6(0xfd00, inside % 8), v6(0x2002, remote % 8))
                } else {
                    (addr4([10, 0, 0, inside % 8]), addr4([198, 51, 100, remote % 8]))
                };
                let sp = if sport < 8 { u16::from(sport) * 100 } else { 40000 + u16::from(sport % 16) };
                pending.push((true, frame(six, src, dst, kind, sp, 50 + u16::from(dport % 4), flags, false)));
            }
            Op::Reply { which, flags } => {
                if let Some(r) = pick(&w.replies, which) {
                    let six = r.family() == nf_core::Family::V6;
                    let kind = match r.proto {
                        proto::TCP => 0,
                        proto::UDP => 1,
                        _ => 2,
                    };
                    let f = frame(six, *r.src_raw(), *r.dst_raw(), kind, r.src_port, r.dst_port, flags, true);
                    pending.push((true, f));
                }
            }
            Op::Inbound { remote, port, kind, v6: six } => {
                let (src, dst) = if six {
                    (v6(0x2002, remote % 8), public6())
                } else {
                    (addr4([198, 51, 100, remote % 8]), addr4(PUBLIC4))
                };
                // Every fourth one to the port forward.
                let port = if port % 4 == 0 { 8080 } else { port };
                pending.push((true, frame(six, src, dst, kind, 53, port, 0x02, true)));
            }
            Op::Hairpin { inside, sport, which, flags } => {
                if let Some(r) = pick(&w.replies, which) {
                    let six = r.family() == nf_core::Family::V6;
                    let src = if six { v6(0xfd00, 16 + inside % 8) } else { addr4([10, 0, 0, 16 + inside % 8]) };
                    let kind = match r.proto {
                        proto::TCP => 0,
                        proto::UDP => 1,
                        _ => 2,
                    };
                    let sp = 30000 + u16::from(sport % 8);
                    pending.push((true, frame(six, src, *r.dst_raw(), kind, sp, r.dst_port, flags, false)));
                }
            }
            Op::ErrorIn { which, ty } => {
                if let Some((six, f)) = pick(&w.sent, which) {
                    let router = if *six { v6(0x2001, 0xee) } else { addr4([192, 0, 2, 1]) };
                    let public = f.get(if *six { 14 + 8..14 + 24 } else { 14 + 12..14 + 16 });
                    let mut dst = [0u8; 16];
                    if let Some(p) = public {
                        dst[..p.len()].copy_from_slice(p);
                    }
                    let e = icmp_error(*six, router, dst, ty, f);
                    pending.push((true, e));
                }
            }
            Op::ErrorOut { which } => {
                if let Some((six, f)) = pick(&w.delivered, which) {
                    // From the inside host (the reply's destination) to its source.
                    let (s, d) = if *six { (14 + 24..14 + 40, 14 + 8..14 + 24) } else { (14 + 16..14 + 20, 14 + 12..14 + 16) };
                    let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
                    if let (Some(a), Some(b)) = (f.get(s), f.get(d)) {
                        src[..a.len()].copy_from_slice(a);
                        dst[..b.len()].copy_from_slice(b);
                    }
                    pending.push((true, icmp_error(*six, src, dst, 0, f)));
                }
            }
            Op::Mutate { which, at, xor } => {
                if let Some((ok, f)) = pick(&w.forwarded, which) {
                    let mut f = f.clone();
                    if !f.is_empty() {
                        let i = usize::from(at) % f.len();
                        f[i] ^= xor;
                    }
                    pending.push((*ok && xor == 0, f));
                }
            }
            Op::Raw(bytes) => {
                let b = bytes.get(..bytes.len().min(2048)).unwrap_or_default().to_vec();
                pending.push((false, b));
            }
            Op::Handover => {
                w.flush(&mut pending);
                w.handover();
            }
            Op::Sync { sweep } => {
                w.flush(&mut pending);
                w.sync(sweep);
            }
            Op::Failover => {
                w.flush(&mut pending);
                w.failover();
            }
            Op::Advance(secs) => {
                w.flush(&mut pending);
                w.now += Duration::from_secs(u64::from(secs % 600));
                let mut guard = 0;
                while w.pipe.poll_timeout().is_some_and(|t| t <= w.now) && guard < 10_000 {
                    w.pipe.handle_timeout(w.now, 256);
                    guard += 1;
                }
                // The replica's own timers: its copies age out unless a sweep refreshed them,
                // its allocator's quarantine passes.
                if let Some(r) = w.replica.as_mut() {
                    while r.poll_timeout().is_some_and(|t| t <= w.now) && guard < 20_000 {
                        r.handle_timeout(w.now, 256);
                        guard += 1;
                    }
                }
            }
        }
        if pending.len() >= 16 {
            w.flush(&mut pending);
        }
    }
    w.flush(&mut pending);
});
