//! Fuzzes the private-endpoint service inside conntrack (parse → `Conntrack<Endpoint>`) with
//! arbitrary packet sequences in batches: consumers of two zones (and a third zone with no
//! endpoint) sending TCP/UDP to IPv4 and IPv6 endpoints, the provider answering the tuples
//! the service chose (in its zone, or in a wrong one), ICMP errors both ways quoting packets
//! the service forwarded, unsolicited flows to the pools, mutated copies of forwarded frames,
//! raw bytes, and time steps with timer sweeps; small pools, so ports run out and come back
//! after quarantine, and hand-overs (every session exported and imported into a fresh node
//! with the same rules, which then carries on).
//! Invariants: no panic; a packet that reaches the provider's zone comes from a pool address
//! of its family and goes to the service, and one that reaches a consumer's zone comes from
//! the endpoint (ICMP errors: their quote says so the other way round); no two live sessions
//! share a provider-side tuple; every packet built well-formed that passes re-parses and
//! has valid checksums (IPv4 header, TCP/UDP, ICMP/ICMPv6, an ICMP error's quote),
//! recomputed from scratch here; a hand-over declines no session and moves every live one
//! with its reply key.
#![no_main]

#[path = "shared/translate.rs"]
mod translate;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_core::flow::proto;
use nf_core::wire::Frame;
use nf_core::{
    Batch, Direction, Duration, FlowKey, Instant, Meta, Packet, ParseConfig, ParseStage, Stage,
    StageControl, StageExt, Verdict, ZoneId, parse_frame,
};
use nf_nat::{AllocatorConfig, Endpoint, EndpointRule, EndpointSide, Profile};
use std::collections::HashSet;
use std::net::IpAddr;
use translate::{addr4, icmp_error, pick, v6, verify_ip};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A consumer's packet to the endpoint (zone 100, 101, or 300 which has none).
    Consumer { zone: u8, host: u8, sport: u8, v6: bool, udp: bool, flags: u8 },
    /// The provider answers a tuple the service chose, in its zone (or, now and then, not).
    Reply { which: u16, flags: u8, wrong_zone: bool },
    /// A router in the provider's space reports a forwarded packet unreachable.
    ErrorProvider { which: u16, ty: u8 },
    /// A consumer reports an answer it received unreachable.
    ErrorConsumer { which: u16 },
    /// The provider opens a flow to a pool address (unsolicited).
    Unsolicited { v6: bool, port: u16, udp: bool },
    /// A forwarded frame again, in its zone, with one byte changed.
    Mutate { which: u16, at: u16, xor: u8 },
    /// Arbitrary bytes as a frame, in a zone.
    Raw(u8, Vec<u8>),
    /// Time passes; due timers run.
    Advance(u16),
    /// Every session moves to a fresh node with the same rules, which carries on.
    Handover,
}

const PROVIDER: u32 = 200;
const ENDPOINT4: [u8; 4] = [10, 0, 0, 200];
const SERVICE4: [u8; 4] = [10, 9, 0, 1];
const POOL4: [[u8; 4]; 2] = [[10, 9, 255, 1], [10, 9, 255, 2]];



fn endpoint(six: bool) -> [u8; 16] {
    if six { v6(0xfd00, 0xc8) } else { addr4(ENDPOINT4) }
}

fn service(six: bool) -> [u8; 16] {
    if six { v6(0xfd09, 1) } else { addr4(SERVICE4) }
}

fn pools(six: bool) -> Vec<[u8; 16]> {
    if six { vec![v6(0xfd0a, 1), v6(0xfd0a, 2)] } else { POOL4.iter().map(|&a| addr4(a)).collect() }
}

/// A well-formed TCP or UDP frame between two addresses of one family.
fn frame(six: bool, src: [u8; 16], dst: [u8; 16], udp: bool, sp: u16, dp: u16, flags: u8) -> Vec<u8> {
    let f = if six {
        Frame::ipv6(src, dst)
    } else {
        Frame::ipv4(src[..4].try_into().unwrap_or_default(), dst[..4].try_into().unwrap_or_default())
    };
    let f = if udp { f.udp(sp, dp) } else { f.tcp(sp, dp, flags) };
    f.payload(b"fuzz").to_vec().unwrap_or_default()
}





/// (source, destination) of an IP packet, IPv4 in the first four bytes.
fn ends(ip: &[u8]) -> ([u8; 16], [u8; 16]) {
    let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
    if ip[0] >> 4 == 4 {
        s[..4].copy_from_slice(&ip[12..16]);
        d[..4].copy_from_slice(&ip[16..20]);
    } else {
        s.copy_from_slice(&ip[8..24]);
        d.copy_from_slice(&ip[24..40]);
    }
    (s, d)
}

struct World {
    pipe: nf_core::Chain<ParseStage, Conntrack<Endpoint>>,
    now: Instant,
    /// Original keys of sessions seen, to check the live ones.
    originals: HashSet<FlowKey>,
    /// Reply keys the service chose (tuples the provider answers to).
    replies: Vec<FlowKey>,
    /// Frames as they reached the provider (to quote in its errors).
    sent: Vec<(bool, Vec<u8>)>,
    /// Frames as they reached a consumer, with its zone (to quote in its errors).
    delivered: Vec<(u32, bool, Vec<u8>)>,
    /// Every frame that left, with its zone and whether it was built well-formed.
    forwarded: Vec<(u32, bool, Vec<u8>)>,
}

impl World {
    fn flush(&mut self, frames: &mut Vec<(u32, bool, Vec<u8>)>) {
        let mut batch = Batch::new();
        let mut built = Vec::new();
        for (zone, ok, f) in frames.drain(..) {
            let mut p = Packet::with_headroom(&f, 64);
            p.meta.zone = ZoneId(zone);
            if batch.push(p).is_ok() {
                built.push((zone, ok));
            }
        }
        self.pipe.process(self.now, &mut batch);
        for (pkt, (from, ok)) in batch.drain().zip(built) {
            if pkt.meta.verdict != Verdict::Pass {
                continue;
            }
            let data = pkt.data().to_vec();
            let six = pkt.meta.flow.family() == nf_core::Family::V6;
            let zone = pkt.meta.zone.0;
            if ok {
                let mut m = Meta::default();
                parse_frame(&data, &mut m, &ParseConfig::default()).expect("a translated frame re-parses");
                let ip = &data[usize::from(m.l3)..];
                verify_ip(ip);
                let (src, dst) = ends(ip);
                let error = pkt.meta.has(nf_core::flags::ICMP_ERROR);
                if zone == PROVIDER && from != PROVIDER {
                    // Moved to the provider: from a pool address to the service (an error
                    // from the consumer's side comes from the pool too).
                    assert!(pools(six).contains(&src), "to the provider from {src:?}");
                    assert_eq!(dst, service(six), "to the provider, not to the service");
                } else if zone != PROVIDER && from == PROVIDER {
                    assert_eq!(src, endpoint(six), "to a consumer, not from the endpoint");
                    assert!(dst != service(six) || error, "to a consumer, to the service");
                }
            }
            if let Some(r) = pkt.meta.session
                && ok
                && !pkt.meta.has(nf_core::flags::RELATED)
                && let Some(info) = self.pipe.second.info(r)
            {
                self.originals.insert(info.original);
                match pkt.meta.direction {
                    Direction::Original if zone == PROVIDER && self.replies.len() < 4096 => {
                        self.replies.push(info.reply);
                        self.sent.push((six, data.clone()));
                    }
                    Direction::Reply if self.delivered.len() < 4096 => {
                        self.delivered.push((zone, six, data.clone()));
                    }
                    _ => {}
                }
            }
            if self.forwarded.len() < 4096 {
                self.forwarded.push((zone, ok, data));
            }
        }
        self.check_unique();
    }

    /// Moves every session to `next` (a fresh node with the same rules), which takes
    /// them all over and from then on is the node.
    fn handover(&mut self, mut next: Conntrack<Endpoint>) {
        translate::move_all(&self.pipe.second, &mut next, self.now);
        // Every live session moved, with its reply key (so its pool tuple).
        for o in &self.originals {
            let Some(hit) = self.pipe.second.lookup(o) else { continue };
            let Some(info) = self.pipe.second.info(hit.session) else { continue };
            if info.original != *o {
                continue;
            }
            let moved = next.lookup(o).and_then(|h| next.info(h.session));
            assert_eq!(moved.map(|m| m.reply), Some(info.reply), "session {o:?} did not move");
        }
        self.pipe.second = next;
        self.check_unique();
    }

    /// No two live translated sessions share a provider-side tuple.
    fn check_unique(&self) {
        let ct = &self.pipe.second;
        let mut seen = HashSet::new();
        for o in &self.originals {
            let Some(hit) = ct.lookup(o) else { continue };
            let Some(info) = ct.info(hit.session) else { continue };
            if info.original != *o || info.reply.zone != ZoneId(PROVIDER) || o.zone == ZoneId(PROVIDER) {
                continue;
            }
            assert!(seen.insert(info.reply), "provider-side tuple {:?} shared", info.reply);
        }
    }
}


fuzz_target!(|input: (u8, Vec<Op>)| {
    let (setup, ops) = input;
    let profile = match setup % 3 {
        0 => Profile::Rfc,
        1 => Profile::Hyperplane,
        _ => Profile::Cgn(nf_nat::CgnSettings::new().with_block_size(64).with_max_blocks(2)),
    };
    let hi = 1024 + 64 * (1 + u32::from(setup >> 2 & 3));
    let pool = |six: bool| {
        let ips = pools(six).into_iter().map(|a| if six { IpAddr::from(a) } else { IpAddr::from(<[u8; 4]>::try_from(&a[..4]).unwrap_or_default()) });
        AllocatorConfig::new(profile, ips.collect(), *b"fuzz endpoint!!!")
            .with_max_mappings(16 + usize::from(setup >> 4) * 4)
            .with_quarantine(Duration::from_secs(30))
            .with_excluded_ports((hi..=65535).map(|p| p as u16))
    };
    let mut rules = Vec::new();
    for zone in [100, 101] {
        for p in [proto::TCP, proto::UDP] {
            rules.push(EndpointRule::new(
                p,
                EndpointSide::new(ZoneId(zone), "10.0.0.200:443".parse().unwrap()),
                EndpointSide::new(ZoneId(PROVIDER), "10.9.0.1:8443".parse().unwrap()),
                pool(false),
            ));
            rules.push(EndpointRule::new(
                p,
                EndpointSide::new(ZoneId(zone), "[fd00::c8]:443".parse().unwrap()),
                EndpointSide::new(ZoneId(PROVIDER), "[fd09::1]:8443".parse().unwrap()),
                pool(true),
            ));
        }
    }
    let node = || {
        let svc = Endpoint::new(rules.clone()).ok()?;
        let mut ct = ConntrackConfig::new(*b"fuzz conntrack!!").sizes(Sizes { v4: 256, v6: 64 });
        ct.v4.timeouts = nf_nat::nat_timeouts(&profile);
        ct.v6.timeouts = ct.v4.timeouts;
        Conntrack::new(ct, svc).ok()
    };
    let Some(ct) = node() else { return };
    let mut w = World {
        pipe: ParseStage::default().then(ct),
        now: Instant::from_nanos(1_000_000_000),
        originals: HashSet::new(),
        replies: Vec::new(),
        sent: Vec::new(),
        delivered: Vec::new(),
        forwarded: Vec::new(),
    };
    let mut pending: Vec<(u32, bool, Vec<u8>)> = Vec::new();
    for op in ops.into_iter().take(512) {
        match op {
            Op::Consumer { zone, host, sport, v6: six, udp, flags } => {
                let zone = [100, 101, 300][usize::from(zone % 3)];
                let src = if six { v6(0xfd00, host % 8) } else { addr4([10, 0, 0, host % 8]) };
                let sp = 40000 + u16::from(sport % 16);
                pending.push((zone, true, frame(six, src, endpoint(six), udp, sp, 443, flags)));
            }
            Op::Reply { which, flags, wrong_zone } => {
                if let Some(r) = pick(&w.replies, which) {
                    let six = r.family() == nf_core::Family::V6;
                    let f = frame(six, *r.src_raw(), *r.dst_raw(), r.proto == proto::UDP, r.src_port, r.dst_port, flags);
                    pending.push((if wrong_zone { 100 } else { r.zone.0 }, true, f));
                }
            }
            Op::ErrorProvider { which, ty } => {
                if let Some((six, f)) = pick(&w.sent, which) {
                    let router = if *six { v6(0xfd09, 0xfe) } else { addr4([10, 9, 0, 254]) };
                    let (src, _) = ends(&f[14..]);
                    pending.push((PROVIDER, true, icmp_error(*six, router, src, ty, f)));
                }
            }
            Op::ErrorConsumer { which } => {
                if let Some((zone, six, f)) = pick(&w.delivered, which) {
                    // From the consumer (the answer's destination) to the endpoint.
                    let (src, dst) = ends(&f[14..]);
                    pending.push((*zone, true, icmp_error(*six, dst, src, 0, f)));
                }
            }
            Op::Unsolicited { v6: six, port, udp } => {
                let f = frame(six, service(six), pools(six)[0], udp, 8443, port, 0x02);
                pending.push((PROVIDER, true, f));
            }
            Op::Mutate { which, at, xor } => {
                if let Some((zone, ok, f)) = pick(&w.forwarded, which) {
                    let mut f = f.clone();
                    if !f.is_empty() {
                        let i = usize::from(at) % f.len();
                        f[i] ^= xor;
                    }
                    pending.push((*zone, *ok && xor == 0, f));
                }
            }
            Op::Raw(zone, bytes) => {
                let b = bytes.get(..bytes.len().min(2048)).unwrap_or_default().to_vec();
                pending.push(([100, 101, PROVIDER, 300][usize::from(zone % 4)], false, b));
            }
            Op::Handover => {
                w.flush(&mut pending);
                let Some(next) = node() else { return };
                w.handover(next);
            }
            Op::Advance(secs) => {
                w.flush(&mut pending);
                w.now += Duration::from_secs(u64::from(secs % 600));
                let mut guard = 0;
                while w.pipe.poll_timeout().is_some_and(|t| t <= w.now) && guard < 10_000 {
                    w.pipe.handle_timeout(w.now, 256);
                    guard += 1;
                }
            }
        }
        if pending.len() >= 16 {
            w.flush(&mut pending);
        }
    }
    w.flush(&mut pending);
});
