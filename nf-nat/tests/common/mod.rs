//! Shared by the SNAT tests: a NAT pipeline driven one packet at a time, frame builders,
//! and a checksum verifier that recomputes every checksum from scratch (independently of
//! nf-core's checksum code) after etherparse has parsed the frame.
#![allow(
    dead_code,
    clippy::allow_attributes,
    reason = "each test binary uses a different part of the helpers"
)]

use etherparse::PacketHeaders;
use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionService, Sizes};
use nf_core::wire::Frame;
use nf_core::{Batch, Chain, Instant, Packet, ParseStage, Stage, StageControl, StageExt, Verdict};
use nf_nat::{AllocatorConfig, Profile, Snat, SnatConfig, nat_timeouts};

pub(crate) const INSIDE4: [u8; 4] = [10, 0, 0, 5];
pub(crate) const INSIDE4_B: [u8; 4] = [10, 0, 0, 6];
pub(crate) const PUBLIC4: [u8; 4] = [203, 0, 113, 1];
pub(crate) const REMOTE4: [u8; 4] = [198, 51, 100, 9];
pub(crate) const REMOTE4_B: [u8; 4] = [198, 51, 100, 10];
pub(crate) const ROUTER4: [u8; 4] = [192, 0, 2, 1];

pub(crate) fn v6(last: u8, prefix: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&prefix);
    a[15] = last;
    a
}
pub(crate) fn inside6() -> [u8; 16] {
    v6(5, [0xfd, 0, 0, 0])
}
pub(crate) fn public6() -> [u8; 16] {
    v6(1, [0x20, 0x01, 0x0d, 0xb8])
}
pub(crate) fn remote6() -> [u8; 16] {
    v6(9, [0x20, 0x01, 0x0d, 0xb9])
}
pub(crate) fn router6() -> [u8; 16] {
    v6(1, [0x20, 0x01, 0x0d, 0xba])
}

/// Parse + conntrack with a SNAT service.
pub(crate) struct Nat {
    pub(crate) pipe: Chain<ParseStage, Conntrack<Snat>>,
    pub(crate) now: Instant,
}

impl Nat {
    pub(crate) fn new(profile: Profile, max_mappings: usize) -> Self {
        let public = vec![
            core::net::Ipv4Addr::from(PUBLIC4).into(),
            core::net::Ipv6Addr::from(public6()).into(),
        ];
        let ports = AllocatorConfig::new(profile, public, *b"snat test secret")
            .with_max_mappings(max_mappings);
        Self::with_config(SnatConfig::new(ports), max_mappings)
    }

    pub(crate) fn with_config(cfg: SnatConfig, sessions: usize) -> Self {
        let timeouts = nat_timeouts(&cfg.allocator.profile);
        let snat = Snat::new(cfg).unwrap();
        let n = u32::try_from(sessions).unwrap().max(64) * 2;
        let mut ct = ConntrackConfig::new(*b"conntrack secret").sizes(Sizes { v4: n, v6: 1024 });
        ct.v4.timeouts = timeouts;
        ct.v6.timeouts = timeouts;
        // Every node keeps a change journal, for the replica tests (`sync_changes`).
        ct.v4.journal = 4096;
        ct.v6.journal = 4096;
        Self {
            pipe: ParseStage::default().then(Conntrack::new(ct, snat).unwrap()),
            now: Instant::from_nanos(1_000_000_000),
        }
    }

    pub(crate) fn snat(&self) -> &Snat {
        self.pipe.second.service()
    }

    /// Sends one frame through; returns its verdict and the frame as it leaves.
    pub(crate) fn send(&mut self, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let mut out = self.send_batch(&[frame.to_vec()]);
        out.pop().unwrap()
    }

    pub(crate) fn send_batch(&mut self, frames: &[Vec<u8>]) -> Vec<(Verdict, Vec<u8>)> {
        self.send_batch_in_zone(nf_core::ZoneId(0), frames)
    }

    /// Sends one frame tagged with `zone` (as a decapsulation stage would).
    pub(crate) fn send_in_zone(
        &mut self,
        zone: nf_core::ZoneId,
        frame: &[u8],
    ) -> (Verdict, Vec<u8>) {
        self.send_batch_in_zone(zone, &[frame.to_vec()])
            .pop()
            .unwrap()
    }

    pub(crate) fn send_batch_in_zone(
        &mut self,
        zone: nf_core::ZoneId,
        frames: &[Vec<u8>],
    ) -> Vec<(Verdict, Vec<u8>)> {
        let mut batch = Batch::new();
        for f in frames {
            let mut p = Packet::with_headroom(f, 64);
            p.meta.zone = zone;
            batch.push(p).ok().unwrap();
        }
        self.pipe.process(self.now, &mut batch);
        batch
            .drain()
            .map(|p| (p.meta.verdict, p.data().to_vec()))
            .collect()
    }

    /// Moves the clock on by `secs` and runs every due timer.
    pub(crate) fn advance(&mut self, secs: u64) {
        self.now += nf_core::Duration::from_secs(secs);
        while self.pipe.poll_timeout().is_some_and(|t| t <= self.now) {
            self.pipe.handle_timeout(self.now, 1024);
        }
    }

    pub(crate) fn counter(&self, name: &str) -> u64 {
        let mut v = None;
        self.pipe.visit_counters(&mut |stage, n, x| {
            if stage == "snat" && n == name {
                v = Some(x);
            }
        });
        v.unwrap_or_else(|| panic!("no counter {name}"))
    }
}

/// A NAT with the port forward PUBLIC4:8080 → `INSIDE4`:80 (protocol `proto`) and the
/// inside prefix 10.0.0.0/8, so that inside hosts reaching the forward are hairpinned.
pub(crate) fn hairpin_nat(profile: Profile, proto: u8) -> Nat {
    use core::net::{Ipv4Addr, SocketAddr};
    use nf_nat::{InsidePrefix, PortForward};
    let public = Ipv4Addr::from(PUBLIC4);
    let fw = PortForward::new(
        proto,
        SocketAddr::new(public.into(), 8080),
        SocketAddr::new(Ipv4Addr::from(INSIDE4).into(), 80),
    );
    let alloc = AllocatorConfig::new(profile, vec![public.into()], *b"snat test secret");
    let cfg = SnatConfig::new(alloc)
        .with_inside(InsidePrefix::new(Ipv4Addr::new(10, 0, 0, 0).into(), 8))
        .with_forward(fw);
    Nat::with_config(cfg, 256)
}

/// Every session of `nat`, both families, in chunks of 16.
pub(crate) fn export_all(nat: &Nat) -> Vec<Vec<u8>> {
    export_sessions(&nat.pipe.second, nat.now)
}

/// Every session of `ct`, both families, in chunks of 16.
pub(crate) fn export_sessions<S: SessionService>(ct: &Conntrack<S>, now: Instant) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    for family in [nf_core::Family::V4, nf_core::Family::V6] {
        let mut from = 0;
        loop {
            let mut c = Vec::new();
            let p = ct
                .export(family, now, from, 16, &mut c)
                .expect("the sessions move");
            chunks.push(c);
            match p.next {
                Some(n) => from = n,
                None => break,
            }
        }
    }
    chunks
}

/// Sends what changed at `from` since the last call to its replica `to` (both families);
/// the replica's report, summed.
pub(crate) fn sync_changes(from: &mut Nat, to: &mut Nat) -> nf_core::conntrack::ApplyReport {
    let (from_now, to_now) = (from.now, to.now);
    replicate(&mut from.pipe.second, from_now, &mut to.pipe.second, to_now)
}

/// [`sync_changes`] for any two connection trackers, at their times.
pub(crate) fn replicate<S: SessionService>(
    from: &mut Conntrack<S>,
    from_now: Instant,
    to: &mut Conntrack<S>,
    to_now: Instant,
) -> nf_core::conntrack::ApplyReport {
    let mut sum = nf_core::conntrack::ApplyReport::default();
    for family in [nf_core::Family::V4, nf_core::Family::V6] {
        let mut c = Vec::new();
        let p = from
            .export_changes(family, from_now, usize::MAX, &mut c)
            .expect("the sessions move");
        assert_eq!((p.lost, p.pending), (0, false));
        let r = to.apply(to_now, &c).expect("a valid delta");
        sum.created += r.created;
        sum.refreshed += r.refreshed;
        sum.replaced += r.replaced;
        sum.ended += r.ended;
        sum.absent += r.absent;
        sum.skipped += r.skipped;
        sum.refused += r.refused;
    }
    sum
}

/// The IP packet of an Ethernet frame.
pub(crate) fn ip(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

pub(crate) fn src4(frame: &[u8]) -> [u8; 4] {
    ip(frame)[12..16].try_into().unwrap()
}
pub(crate) fn dst4(frame: &[u8]) -> [u8; 4] {
    ip(frame)[16..20].try_into().unwrap()
}
pub(crate) fn src6(frame: &[u8]) -> [u8; 16] {
    ip(frame)[8..24].try_into().unwrap()
}
pub(crate) fn dst6(frame: &[u8]) -> [u8; 16] {
    ip(frame)[24..40].try_into().unwrap()
}

/// The transport header of an IP packet without options / extension headers.
pub(crate) fn l4(ip: &[u8]) -> &[u8] {
    if ip[0] >> 4 == 4 {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        &ip[ihl..]
    } else {
        &ip[40..]
    }
}

pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// (source port, destination port) of a TCP/UDP frame, or (ident, ident) of ICMP echo.
pub(crate) fn ports(frame: &[u8]) -> (u16, u16) {
    let t = l4(ip(frame));
    let p = if ip(frame)[0] >> 4 == 4 {
        ip(frame)[9]
    } else {
        ip(frame)[6]
    };
    if p == 1 || p == 58 {
        (be16(&t[4..]), be16(&t[4..]))
    } else {
        (be16(t), be16(&t[2..]))
    }
}

/// RFC 1071, word by word, nothing shared with nf-core.
pub(crate) fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut s: u64 = 0;
    for p in parts {
        for w in p.chunks(2) {
            let hi = u64::from(w[0]) << 8;
            let lo = u64::from(*w.get(1).unwrap_or(&0));
            s += hi | lo;
        }
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Checks every checksum of an Ethernet frame from scratch, after etherparse parsed it;
/// ICMP errors' quotes too (the quoted IP header always; the quoted packet's transport
/// checksum when the whole packet is quoted).
pub(crate) fn verify_frame(frame: &[u8]) {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("etherparse parses the frame");
    assert!(h.net.is_some(), "no IP header");
    verify_ip(ip(frame));
}

/// Checks an IP packet (no options / extension headers beyond what the tests build).
pub(crate) fn verify_ip(ip: &[u8]) {
    PacketHeaders::from_ip_slice(ip).expect("etherparse parses the IP packet");
    let (proto, l4, pseudo): (u8, &[u8], Vec<u8>) = if ip[0] >> 4 == 4 {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        assert_eq!(ones_sum(&[&ip[..ihl]]), 0xffff, "IPv4 header checksum");
        let total = usize::from(be16(&ip[2..]));
        let l4 = &ip[ihl..total];
        let mut ps = ip[12..20].to_vec();
        ps.extend_from_slice(&[0, ip[9]]);
        ps.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        (ip[9], l4, ps)
    } else {
        let plen = usize::from(be16(&ip[4..]));
        let l4 = &ip[40..40 + plen];
        let mut ps = ip[8..40].to_vec();
        ps.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        ps.extend_from_slice(&[0, 0, 0, ip[6]]);
        (ip[6], l4, ps)
    };
    match proto {
        6 => assert_eq!(ones_sum(&[&pseudo, l4]), 0xffff, "TCP checksum"),
        // IPv4 UDP without a checksum (0) has nothing to verify.
        17 if !(ip[0] >> 4 == 4 && be16(&l4[6..]) == 0) => {
            assert_eq!(ones_sum(&[&pseudo, l4]), 0xffff, "UDP checksum");
        }
        1 => {
            assert_eq!(ones_sum(&[l4]), 0xffff, "ICMP checksum");
            if matches!(l4[0], 3 | 11 | 12) {
                verify_quote(&l4[8..]);
            }
        }
        58 => {
            assert_eq!(ones_sum(&[&pseudo, l4]), 0xffff, "ICMPv6 checksum");
            if l4[0] < 128 {
                verify_quote(&l4[8..]);
            }
        }
        _ => {}
    }
}

fn verify_quote(q: &[u8]) {
    let whole = if q[0] >> 4 == 4 {
        let ihl = usize::from(q[0] & 0xf) * 4;
        assert_eq!(
            ones_sum(&[&q[..ihl]]),
            0xffff,
            "quoted IPv4 header checksum"
        );
        usize::from(be16(&q[2..])) <= q.len()
    } else {
        40 + usize::from(be16(&q[4..])) <= q.len()
    };
    if whole {
        verify_ip(q);
    }
}

pub(crate) fn tcp4(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, flags: u8) -> Vec<u8> {
    Frame::ipv4(src, dst)
        .tcp(sp, dp, flags)
        .payload(b"tcp data")
        .to_vec()
        .unwrap()
}
pub(crate) fn udp4(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
    Frame::ipv4(src, dst)
        .udp(sp, dp)
        .payload(b"udp data!")
        .to_vec()
        .unwrap()
}
pub(crate) fn tcp6(src: [u8; 16], dst: [u8; 16], sp: u16, dp: u16, flags: u8) -> Vec<u8> {
    Frame::ipv6(src, dst)
        .tcp(sp, dp, flags)
        .payload(b"tcp data")
        .to_vec()
        .unwrap()
}
pub(crate) fn udp6(src: [u8; 16], dst: [u8; 16], sp: u16, dp: u16) -> Vec<u8> {
    Frame::ipv6(src, dst)
        .udp(sp, dp)
        .payload(b"udp data!")
        .to_vec()
        .unwrap()
}

fn echo(ty: u8, ident: u16) -> nf_core::wire::icmp::IcmpRepr {
    nf_core::wire::icmp::IcmpRepr {
        ty,
        ident,
        seq: 7,
        ..Default::default()
    }
}
/// ICMP echo request (`reply`: echo reply).
pub(crate) fn ping4(src: [u8; 4], dst: [u8; 4], ident: u16, reply: bool) -> Vec<u8> {
    let ty = if reply { 0 } else { 8 };
    Frame::ipv4(src, dst)
        .icmp(echo(ty, ident))
        .payload(b"ping")
        .to_vec()
        .unwrap()
}
pub(crate) fn ping6(src: [u8; 16], dst: [u8; 16], ident: u16, reply: bool) -> Vec<u8> {
    let ty = if reply { 129 } else { 128 };
    Frame::ipv6(src, dst)
        .icmp(echo(ty, ident))
        .payload(b"ping")
        .to_vec()
        .unwrap()
}

/// An ICMP error (destination unreachable) from `src` to `dst` quoting `quoted`'s IP packet.
pub(crate) fn unreachable4(src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    Frame::ipv4(src, dst)
        .icmp_error(3, 3, ip(quoted))
        .to_vec()
        .unwrap()
}
pub(crate) fn unreachable6(src: [u8; 16], dst: [u8; 16], quoted: &[u8]) -> Vec<u8> {
    Frame::ipv6(src, dst)
        .icmp_error(1, 4, ip(quoted))
        .to_vec()
        .unwrap()
}

/// A UDP datagram in two IPv4 fragments (the first holds the UDP header).
pub(crate) fn fragments(src: [u8; 4], dst: [u8; 4]) -> (Vec<u8>, Vec<u8>) {
    let seal = |f: &mut Vec<u8>| {
        f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let sum: u32 = f[14..34].chunks(2).map(|w| u32::from(be16(w))).sum();
        let c = !(((sum & 0xffff) + (sum >> 16)) as u16);
        f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    };
    let mut first = udp4(src, dst, 5000, 53);
    first[14 + 6] = 0x20;
    seal(&mut first);
    let mut second = first[..34].to_vec();
    second.extend_from_slice(&[0xab; 16]);
    second[14 + 2..14 + 4].copy_from_slice(&36u16.to_be_bytes());
    second[14 + 6..14 + 8].copy_from_slice(&[0, 3]);
    seal(&mut second);
    (first, second)
}
