//! Fuzzes the `Conntrack` stage itself (parse → conntrack with a session service): arbitrary
//! sequences of IPv4 and IPv6 TCP/UDP/ICMP packets (TCP windows tracked) of a few flows in both directions, first
//! and later fragments, ICMP errors quoting those flows (whole, truncated, corrupted), raw
//! bytes, time steps and expiry, cut into arbitrary batches. Checks: no panic; the batched
//! pipeline gives exactly what one packet per batch gives (verdicts, sessions, directions,
//! bytes the service rewrote, counters); one session lookup per tracked or related packet at
//! most; the service hears `on_end` exactly once per session it admitted; related packets
//! never create or refresh a session. Packets arrive in zones 0..3, and the service puts the
//! replies of some flows in another zone (cross-zone sessions), moving each packet of those
//! to the zone it leaves into. An original-direction TCP segment with URG set renews its
//! session (`SessionService::renews`): every renewal ends exactly one session, counted.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::conntrack::{
    Conntrack, ConntrackConfig, EndCause, NewFlow, SessionInfo, SessionService, Sizes, TcpWindow,
};
use nf_core::flags;
use nf_core::{
    Batch, Chain, Direction, DropReason, Instant, Meta, Packet, ParseStage, Stage, StageControl,
    StageExt, Verdict,
};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    /// A packet of flow `flow` (0..8) in one direction.
    Pkt { v6: bool, proto: u8, flow: u8, reply: bool, tcp: u8, frag: u8, zone: u8 },
    /// An ICMP error quoting a packet of `flow`, from the far side of `reply`.
    IcmpError { v6: bool, proto: u8, flow: u8, reply: bool, ty: u8, cut: u8, corrupt: bool, zone: u8 },
    /// Raw bytes as a frame.
    Raw([u8; 24], u8),
    /// End the current batch.
    Cut,
    /// Advance time by `n` hundred milliseconds and run timers with a budget.
    Time(u8, u8),
}

/// Rewrites the destination port of new UDP/TCP flows to `port ^ 0x8000` when free, and
/// puts the replies of flows from odd source ports in the next zone (moving the packets of
/// those sessions between the zones); counts admissions and ends.
#[derive(Default)]
struct Svc {
    admitted: u64,
    ended: u64,
    aborted: u64,
    renewed: u64,
}

impl SessionService for Svc {
    type Value = (u16, u16, u32, u32);

    const CROSS_ZONE: bool = true;
    const RENEWS: bool = true;

    fn renews<B: AsRef<[u8]>>(
        &self,
        _now: Instant,
        direction: Direction,
        _value: &(u16, u16, u32, u32),
        pkt: &Packet<B>,
    ) -> bool {
        direction == Direction::Original
            && pkt.meta.flow.proto == 6
            && pkt.meta.tcp_flags & 0x20 != 0
    }

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<(u16, u16, u32, u32), DropReason> {
        let o = *new.original();
        if o.src_port % 7 == 3 {
            return Err(DropReason::ServiceRefused);
        }
        let mut reply = o.reversed();
        reply.src_port = o.dst_port ^ 0x8000;
        if o.src_port % 2 == 1 {
            reply.zone = nf_core::ZoneId((o.zone.0 + 1) % 3);
        }
        self.admitted += 1;
        if new.is_free(&reply) && new.set_reply(reply).is_ok() {
            Ok((o.dst_port, reply.src_port, o.zone.0, reply.zone.0))
        } else {
            Ok((o.dst_port, o.dst_port, o.zone.0, o.zone.0))
        }
    }

    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        value: &mut (u16, u16, u32, u32),
        pkt: &mut Packet<B>,
    ) -> Verdict {
        // The zone the packet leaves into: the other side's.
        pkt.meta.zone = nf_core::ZoneId(match direction {
            Direction::Original => value.3,
            Direction::Reply => value.2,
        });
        if !pkt.meta.has(flags::L4_VALID) || pkt.meta.flow.proto == 1 || pkt.meta.flow.proto == 58 {
            return Verdict::Pass;
        }
        let l4 = usize::from(pkt.meta.l4);
        let (at, port) = match direction {
            Direction::Original => (l4 + 2, value.1),
            Direction::Reply => (l4, value.0),
        };
        if let Some(b) = pkt.data_mut().get_mut(at..at + 2) {
            b.copy_from_slice(&port.to_be_bytes());
        }
        Verdict::Pass
    }

    fn on_end(&mut self, _now: Instant, s: &SessionInfo<(u16, u16, u32, u32)>, cause: EndCause) {
        assert_eq!((s.original.zone.0, s.reply.zone.0), (s.value.2, s.value.3));
        self.ended += 1;
        self.aborted += u64::from(cause == EndCause::Aborted);
        self.renewed += u64::from(cause == EndCause::Renewed);
    }
}

/// TCP window tracking first (it checks before the state moves), then the rewriting service.
type P = Chain<ParseStage, Conntrack<(TcpWindow, Svc)>>;

fn pipeline() -> P {
    let mut cfg = ConntrackConfig::new(*b"fuzz secret 0001").sizes(Sizes { v4: 12, v6: 12 });
    cfg.fragments.capacity = 8;
    cfg.v4.wheel_slots = 64;
    cfg.v6.wheel_slots = 64;
    ParseStage::default().then(Conntrack::new(cfg, (TcpWindow::new(), Svc::default())).unwrap())
}

fn ports(flow: u8) -> (u16, u16) {
    (1000 + u16::from(flow % 8), 80 + u16::from(flow / 4 % 2))
}

/// IP header + payload (L4 bytes) for the flow's packet; fragment bits from `frag`.
fn ip(v6: bool, proto: u8, src: u8, dst: u8, l4: &[u8], frag: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let (more, offset) = (frag & 1 != 0, u16::from(frag >> 1 & 3));
    if v6 {
        let fragmented = frag & 7 != 0;
        let plen = l4.len() + if fragmented { 8 } else { 0 };
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&(plen as u16).to_be_bytes());
        out.push(if fragmented { 44 } else { proto });
        out.push(64);
        let mut a = [0x20u8; 16];
        a[15] = src;
        out.extend_from_slice(&a);
        a[15] = dst;
        out.extend_from_slice(&a);
        if fragmented {
            out.extend_from_slice(&[proto, 0]);
            out.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, frag >> 3]);
        }
    } else {
        let total = 20 + l4.len();
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&(total as u16).to_be_bytes());
        out.extend_from_slice(&[0, frag >> 3]);
        out.extend_from_slice(&((offset) | if more { 0x2000 } else { 0 }).to_be_bytes());
        out.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, src, 10, 0, 0, dst]);
        let c = nf_core::checksum::checksum(&out[..20]);
        out[10..12].copy_from_slice(&c.to_be_bytes());
    }
    out.extend_from_slice(l4);
    out
}

fn l4(v6: bool, proto: u8, sport: u16, dport: u16, tcp: u8) -> (u8, Vec<u8>) {
    match proto % 3 {
        0 => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[12] = 0x50;
            t[13] = tcp;
            (6, t)
        }
        1 => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&8u16.to_be_bytes());
            (17, u)
        }
        _ => {
            // Echo request one way, reply the other, identifier from the flow.
            let ty = match (v6, sport < dport) {
                (false, true) => 8,
                (false, false) => 0,
                (true, true) => 128,
                (true, false) => 129,
            };
            let id = sport.min(dport);
            let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 1];
            m[4..6].copy_from_slice(&id.to_be_bytes());
            (if v6 { 58 } else { 1 }, m)
        }
    }
}

fn eth(v6: bool, ip: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4];
    f.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    f.extend_from_slice(ip);
    f
}

/// The frame of an operation and the zone it arrives in.
fn frame(op: Op) -> Option<(Vec<u8>, u8)> {
    let zone = match op {
        Op::Pkt { zone, .. } | Op::IcmpError { zone, .. } => zone % 3,
        _ => 0,
    };
    Some((frame_bytes(op)?, zone))
}

fn frame_bytes(op: Op) -> Option<Vec<u8>> {
    Some(match op {
        Op::Pkt { v6, proto, flow, reply, tcp, frag, .. } => {
            let (mut s, mut d) = ports(flow);
            let (mut a, mut b) = (1, 2);
            if reply {
                (s, d, a, b) = (d, s, b, a);
            }
            let (p, body) = l4(v6, proto, s, d, tcp);
            let frag = if frag & 0x80 != 0 { frag & 0x7f } else { 0 };
            let body = if frag >> 1 & 3 != 0 { &body[..8] } else { &body[..] };
            eth(v6, &ip(v6, p, a, b, body, frag))
        }
        Op::IcmpError { v6, proto, flow, reply, ty, cut, corrupt, .. } => {
            let (mut s, mut d) = ports(flow);
            let (mut a, mut b) = (1, 2);
            if reply {
                (s, d, a, b) = (d, s, b, a);
            }
            let (p, body) = l4(v6, proto, s, d, 0x02);
            let mut quoted = ip(v6, p, a, b, &body, 0);
            if corrupt && let Some(x) = quoted.get_mut(usize::from(cut) % 40) {
                *x ^= 0x10;
            }
            quoted.truncate(usize::from(cut).max(1) * 2);
            let types: &[u8] = if v6 { &[1, 2, 3, 4] } else { &[3, 11, 12] };
            let mut m = vec![types[usize::from(ty) % types.len()], 0, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&quoted);
            // From a router (address 9) back towards the quoted packet's source.
            eth(v6, &ip(v6, if v6 { 58 } else { 1 }, 9, a, &m, 0))
        }
        Op::Raw(bytes, n) => bytes[..usize::from(n) % 25].to_vec(),
        Op::Cut | Op::Time(..) => return None,
    })
}

fn run(p: &mut P, ops: &[Op], batched: bool) -> Vec<(Meta, Vec<u8>)> {
    let mut out = Vec::new();
    let mut b = Batch::new();
    let mut now = Instant::from_nanos(1_000_000_000);
    let flush = |p: &mut P, b: &mut Batch<Vec<u8>>, now: Instant, out: &mut Vec<(Meta, Vec<u8>)>| {
        if b.is_empty() {
            return;
        }
        let created = p.second.stats().created;
        let live = p.second.len();
        p.process(now, b);
        // Only created sessions add to the count (related packets never create one).
        assert!(p.second.len() as u64 <= live as u64 + (p.second.stats().created - created));
        out.extend(b.drain().map(|x| (x.meta, x.data().to_vec())));
    };
    for &op in ops {
        match op {
            Op::Cut => {
                if batched {
                    flush(p, &mut b, now, &mut out);
                }
            }
            Op::Time(n, budget) => {
                flush(p, &mut b, now, &mut out);
                now = Instant::from_nanos(now.as_nanos() + u64::from(n) * 100_000_000);
                let mut rounds = 0;
                while p.poll_timeout().is_some_and(|t| t <= now) && rounds < 1000 {
                    let w = p.handle_timeout(now, usize::from(budget).max(1));
                    assert!(w <= usize::from(budget).max(1));
                    rounds += 1;
                }
            }
            op => {
                if let Some((f, zone)) = frame(op) {
                    let mut buf = vec![0u8; 32 + f.len()];
                    buf[32..].copy_from_slice(&f);
                    let mut pkt = Packet::new(buf, 32, f.len()).unwrap();
                    pkt.meta.zone = nf_core::ZoneId(u32::from(zone));
                    if b.push(pkt).is_err() {
                        unreachable!("flushed at 64");
                    }
                    if !batched || b.is_full() {
                        flush(p, &mut b, now, &mut out);
                    }
                }
            }
        }
    }
    flush(p, &mut b, now, &mut out);
    out
}

fuzz_target!(|ops: Vec<Op>| {
    let ops = &ops[..ops.len().min(400)];
    let mut a = pipeline();
    let mut s = pipeline();
    let batched = run(&mut a, ops, true);
    let single = run(&mut s, ops, false);
    assert_eq!(batched.len(), single.len());
    for (x, y) in batched.iter().zip(&single) {
        assert_eq!(x, y, "batch and single differ");
    }
    let (ca, cs) = (&a.second, &s.second);
    assert_eq!(ca.stats(), cs.stats());
    // Every counter but the batch counts (which differ by construction) agrees.
    let mut va = Vec::new();
    a.visit_counters(&mut |st, c, v| va.push((st, c, if c == "batches" { 0 } else { v })));
    let mut vs = Vec::new();
    s.visit_counters(&mut |st, c, v| vs.push((st, c, if c == "batches" { 0 } else { v })));
    assert_eq!(va, vs);
    // At most one lookup per packet that reached the stage.
    let reached = batched.iter().filter(|(m, _)| m.has(flags::L3_VALID)).count() as u64;
    assert!(ca.stats().lookups <= reached);
    // Every admitted session ended exactly once or is still live.
    let svc = &ca.service().1;
    assert_eq!(svc.admitted, svc.ended + ca.len() as u64, "on_end balance");
    assert_eq!(svc.renewed, ca.stats().renewed, "one end per renewal");
    // Related packets are tagged with a live-at-the-time session and never dropped as such.
    for (m, _) in &batched {
        if m.has(flags::RELATED) {
            assert!(m.session.is_some());
        }
    }
});
