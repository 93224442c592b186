//! What the NAT-style targets (nat_stage, endpoint_stage) share: addresses, frames they
//! build, checksums recomputed from scratch, and hand-overs.

use nf_core::conntrack::{Conntrack, SessionService};
use nf_core::flow::proto;
use nf_core::wire::Frame;

/// An IPv6 address: `prefix`, zeros, `last`.
pub fn v6(prefix: u16, last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&prefix.to_be_bytes());
    a[15] = last;
    a
}

/// An IPv4 address in the first four bytes of a 16-byte one.
pub fn addr4(a: [u8; 4]) -> [u8; 16] {
    let mut b = [0; 16];
    b[..4].copy_from_slice(&a);
    b
}

/// The error `frame` of the IP packet in `quoted` (an Ethernet frame), from `src` to `dst`.
pub fn icmp_error(v6: bool, src: [u8; 16], dst: [u8; 16], ty: u8, quoted: &[u8]) -> Vec<u8> {
    let ip = quoted.get(14..).unwrap_or_default();
    let f = if v6 {
        Frame::ipv6(src, dst).icmp_error(1 + ty % 4, 0, ip)
    } else {
        let s: [u8; 4] = src[..4].try_into().unwrap_or_default();
        let d: [u8; 4] = dst[..4].try_into().unwrap_or_default();
        Frame::ipv4(s, d).icmp_error([3, 11, 12][usize::from(ty % 3)], 0, ip)
    };
    f.to_vec().unwrap_or_default()
}

/// The ones'-complement sum of `parts`, as one byte string.
pub fn ones(parts: &[&[u8]]) -> u16 {
    let mut s: u64 = 0;
    for p in parts {
        for w in p.chunks(2) {
            s += u64::from(w[0]) << 8 | u64::from(*w.get(1).unwrap_or(&0));
        }
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The big-endian u16 at the start of `b`.
pub fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

/// Every checksum of an IP packet (no options or extension headers: the packets this
/// target builds), and of an ICMP error's quote.
pub fn verify_ip(ip: &[u8]) {
    verify_ip_quoting(ip, true);
}

/// Every checksum of an IP packet; of an ICMP error's quote too if `quote` (an error quoting
/// a malformed packet carries its bad checksums, as RFC 5508 REQ-8 quotes the packet as
/// sent; the quoted IPv4 header is checked either way).
pub fn verify_ip_quoting(ip: &[u8], quote: bool) {
    let (p, l4, pseudo) = if ip[0] >> 4 == 4 {
        assert_eq!(ones(&[&ip[..20]]), 0xffff, "IPv4 header checksum");
        let l4 = &ip[20..be16(&ip[2..])];
        let mut ps = ip[12..20].to_vec();
        ps.extend_from_slice(&[0, ip[9]]);
        ps.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        (ip[9], l4, ps)
    } else {
        let l4 = &ip[40..40 + be16(&ip[4..])];
        let mut ps = ip[8..40].to_vec();
        ps.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        ps.extend_from_slice(&[0, 0, 0, ip[6]]);
        (ip[6], l4, ps)
    };
    match p {
        proto::TCP => assert_eq!(ones(&[&pseudo, l4]), 0xffff, "TCP checksum"),
        proto::UDP if !(ip[0] >> 4 == 4 && be16(&l4[6..]) == 0) => {
            assert_eq!(ones(&[&pseudo, l4]), 0xffff, "UDP checksum")
        }
        proto::ICMP | proto::ICMPV6 => {
            let sum = if p == proto::ICMP { ones(&[l4]) } else { ones(&[&pseudo, l4]) };
            assert_eq!(sum, 0xffff, "ICMP checksum");
            let error = if p == proto::ICMP { matches!(l4[0], 3 | 11 | 12) } else { l4[0] < 128 };
            if error {
                let q = &l4[8..];
                let whole = if q[0] >> 4 == 4 {
                    assert_eq!(ones(&[&q[..20]]), 0xffff, "quoted IPv4 header checksum");
                    be16(&q[2..]) <= q.len()
                } else {
                    40 + be16(&q[4..]) <= q.len()
                };
                if whole && quote {
                    verify_ip(q);
                }
            }
        }
        _ => {}
    }
}

/// Item `i` of `v` (wrapping), `None` if `v` is empty.
pub fn pick<T>(v: &[T], i: u16) -> Option<&T> {
    if v.is_empty() { None } else { v.get(usize::from(i) % v.len()) }
}

/// Moves every session of `from` into `to` (a fresh stage with the same configuration), in
/// chunks of 13: every record is imported, refused or skipped, and the service declines
/// none, whatever its kind.
pub fn move_all<S: SessionService>(from: &Conntrack<S>, to: &mut Conntrack<S>, now: nf_core::Instant) {
    for family in [nf_core::Family::V4, nf_core::Family::V6] {
        let mut at = 0;
        loop {
            let mut chunk = Vec::new();
            let p = from.export(family, now, at, 13, &mut chunk).expect("the sessions export");
            let r = to.import(now, &chunk).expect("a chunk just made");
            assert_eq!(r.imported + r.refused + r.skipped, p.records);
            assert_eq!(r.refused, 0, "a session was declined");
            match p.next {
                Some(n) => at = n,
                None => break,
            }
        }
    }
}
