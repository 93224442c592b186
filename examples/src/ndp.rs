//! IPv6 neighbour discovery (RFC 4861) over Ethernet, as the [router](crate::router) needs
//! it: neighbour solicitations and advertisements, built and read. Router solicitations,
//! redirects and duplicate address detection of its own addresses are not done (the router
//! is configured, not autoconfigured).

use nf_core::checksum::{finish, pseudo_header_v6, sum};
use nf_core::flow::proto;
use nf_core::wire::ethertype;
use std::net::Ipv6Addr;

/// ICMPv6 neighbour solicitation.
pub const SOLICITATION: u8 = 135;
/// ICMPv6 neighbour advertisement.
pub const ADVERTISEMENT: u8 = 136;
/// The length of the frames [`solicitation`] and [`advertisement`] build: Ethernet, IPv6,
/// the 24-byte message and one 8-byte link-layer address option.
pub const NDP_FRAME_LEN: usize = 14 + 40 + 24 + 8;

/// The all-nodes multicast address (RFC 4291 §2.7.1), where an advertisement answering a
/// solicitation from the unspecified address goes (RFC 4861 §7.2.4).
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The solicited-node multicast address of `ip` (RFC 4291 §2.7.1): `ff02::1:ff00:0/104`
/// and the address's last 24 bits.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet address of the IPv6 multicast address `ip` (RFC 2464 §7): `33:33` and the
/// address's last 32 bits.
pub fn multicast_mac(ip: Ipv6Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Builds an NDP frame: Ethernet, IPv6 (hop limit 255, RFC 4861 §7.1), the message with
/// its flags word, target and one link-layer address option (`option`: 1 source, 2
/// target) carrying `mac`, and the ICMPv6 checksum.
fn frame(
    (dst_mac, mac): ([u8; 6], [u8; 6]),
    (src, dst): (Ipv6Addr, Ipv6Addr),
    (ty, flags, target, option): (u8, u8, Ipv6Addr, u8),
) -> [u8; NDP_FRAME_LEN] {
    let mut f = [0u8; NDP_FRAME_LEN];
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes());
    (f[20], f[21]) = (proto::ICMPV6, 255);
    f[22..38].copy_from_slice(&src.octets());
    f[38..54].copy_from_slice(&dst.octets());
    (f[54], f[58]) = (ty, flags);
    f[62..78].copy_from_slice(&target.octets());
    (f[78], f[79]) = (option, 1);
    f[80..86].copy_from_slice(&mac);
    let pseudo = pseudo_header_v6(&src.octets(), &dst.octets(), proto::ICMPV6, 32);
    let check = finish(sum(pseudo, &f[54..]));
    f[56..58].copy_from_slice(&check.to_be_bytes());
    f
}

/// A neighbour solicitation for `target` from `mac` / `src` to the target's solicited-node
/// address, with `mac` as the source link-layer address (RFC 4861 §4.3, §7.2.2).
pub fn solicitation(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> [u8; NDP_FRAME_LEN] {
    let group = solicited_node(target);
    frame(
        (multicast_mac(group), mac),
        (src, group),
        (SOLICITATION, 0, target, 1),
    )
}

/// The advertisement of `target` at `mac` answering a solicitation from `to` (its
/// link-layer address `to_mac`): router and override flags set, solicited to `to`, or
/// to all nodes unsolicited when `to` is unspecified (a duplicate address check, RFC 4861
/// §7.2.4), with the target link-layer address option.
pub fn advertisement(
    mac: [u8; 6],
    target: Ipv6Addr,
    to_mac: [u8; 6],
    to: Ipv6Addr,
) -> [u8; NDP_FRAME_LEN] {
    // R, S, O: 0x80, 0x40, 0x20.
    let (dst, dst_mac, flags) = if to.is_unspecified() {
        (ALL_NODES, multicast_mac(ALL_NODES), 0xa0)
    } else {
        (to, to_mac, 0xe0)
    };
    frame(
        (dst_mac, mac),
        (target, dst),
        (ADVERTISEMENT, flags, target, 2),
    )
}

/// A neighbour discovery message read by [`read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ndp {
    /// A solicitation for `target` from `src` (unspecified: a duplicate address check),
    /// with the sender's link-layer address if it gave one.
    Solicitation {
        /// The sender (unspecified: a duplicate address check).
        src: Ipv6Addr,
        /// The address whose link-layer address is asked for.
        target: Ipv6Addr,
        /// The sender's link-layer address option.
        mac: Option<[u8; 6]>,
    },
    /// An advertisement that `target` is at `mac` (when the option is there).
    Advertisement {
        /// The address advertised.
        target: Ipv6Addr,
        /// Its link-layer address option.
        mac: Option<[u8; 6]>,
    },
}

/// True if the IPv6 packet whose fixed header is `h` (40 bytes or more, followed by the
/// frame's rest in `frame` from `l3`) looks like neighbour discovery: ICMPv6 right after the
/// fixed header, a solicitation or advertisement type. [`read`] validates it.
pub fn is_ndp(frame: &[u8], l3: usize) -> bool {
    frame.get(l3 + 6) == Some(&proto::ICMPV6)
        && matches!(frame.get(l3 + 40), Some(&SOLICITATION | &ADVERTISEMENT))
}

/// Reads the neighbour solicitation or advertisement at `l3` of `frame` with the checks of
/// RFC 4861 §7.1.1 and §7.1.2: hop limit 255, a valid ICMPv6 checksum, code 0, at least 24
/// bytes, no option of length zero, none past the end, a target that is not multicast, and
/// for a solicitation from the unspecified address a solicited-node destination and no
/// source link-layer address. `None` for anything else.
pub fn read(frame: &[u8], l3: usize) -> Option<Ndp> {
    let ip = frame.get(l3..l3 + 40)?;
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let msg = frame.get(l3 + 40..l3 + 40 + len)?;
    if ip[0] >> 4 != 6 || ip[6] != proto::ICMPV6 || ip[7] != 255 || len < 24 || msg[1] != 0 {
        return None;
    }
    let addr = |b: &[u8]| <[u8; 16]>::try_from(b).ok().map(Ipv6Addr::from);
    let (src, dst) = (addr(&ip[8..24])?, addr(&ip[24..40])?);
    let pseudo = pseudo_header_v6(&src.octets(), &dst.octets(), proto::ICMPV6, len as u32);
    if finish(sum(pseudo, msg)) != 0 {
        return None;
    }
    let target = addr(msg.get(8..24)?)?;
    if target.is_multicast() {
        return None;
    }
    // The link-layer address option the message type carries (1 source, 2 target).
    let want = if msg[0] == SOLICITATION { 1 } else { 2 };
    let mut mac = None;
    let mut opts = msg.get(24..)?;
    while !opts.is_empty() {
        let (&ty, &units) = (opts.first()?, opts.get(1)?);
        let opt = opts
            .get(..usize::from(units) * 8)
            .filter(|o| !o.is_empty())?;
        if ty == want && opt.len() == 8 {
            mac = <[u8; 6]>::try_from(&opt[2..8]).ok();
        }
        opts = &opts[opt.len()..];
    }
    match msg[0] {
        SOLICITATION => {
            if src.is_unspecified() && (dst != solicited_node(target) || mac.is_some()) {
                return None;
            }
            Some(Ndp::Solicitation { src, target, mac })
        }
        ADVERTISEMENT => Some(Ndp::Advertisement { target, mac }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn solicitations_and_advertisements_read_back() {
        let (ours, theirs) = (a("fd00::1"), a("fd00::1:2345:6789"));
        let ns = solicitation(MAC, ours, theirs);
        assert_eq!(ns[..6], [0x33, 0x33, 0xff, 0x45, 0x67, 0x89]);
        assert_eq!(ns[38..54], a("ff02::1:ff45:6789").octets());
        assert_eq!(
            read(&ns, 14),
            Some(Ndp::Solicitation {
                src: ours,
                target: theirs,
                mac: Some(MAC)
            })
        );
        assert!(is_ndp(&ns, 14));
        let na = advertisement(PEER, theirs, MAC, ours);
        assert_eq!((&na[..6], &na[6..12], na[58]), (&MAC[..], &PEER[..], 0xe0));
        assert_eq!(
            read(&na, 14),
            Some(Ndp::Advertisement {
                target: theirs,
                mac: Some(PEER)
            })
        );
        // etherparse agrees on the IPv6 header and the ICMPv6 checksum.
        let p = etherparse::SlicedPacket::from_ethernet(&na).unwrap();
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
            panic!("{p:?}")
        };
        let ip = etherparse::Ipv6Header::from_slice(&na[14..]).unwrap().0;
        assert_eq!(
            icmp.header()
                .icmp_type
                .calc_checksum(ip.source, ip.destination, icmp.payload())
                .unwrap(),
            u16::from_be_bytes([na[56], na[57]])
        );
        // A duplicate address check is answered to all nodes, not solicited.
        let dad = advertisement(MAC, ours, PEER, Ipv6Addr::UNSPECIFIED);
        assert_eq!((&dad[..6], dad[58]), (&[0x33, 0x33, 0, 0, 0, 1][..], 0xa0));
    }

    #[test]
    fn malformed_messages_are_not_read() {
        let ns = solicitation(MAC, a("fd00::1"), a("fd00::2"));
        let bad = |f: fn(&mut Vec<u8>)| {
            let mut x = ns.to_vec();
            f(&mut x);
            read(&x, 14)
        };
        assert_eq!(bad(|f| f[21] = 64), None, "hop limit");
        assert_eq!(bad(|f| f[60] ^= 1), None, "checksum");
        assert_eq!(bad(|f| f[79] = 0), None, "option of length 0");
        assert_eq!(bad(|f| f[79] = 2), None, "option past the end");
        assert_eq!(bad(|f| f.truncate(80)), None, "cut short");
        // From the unspecified address with a source link-layer address: refused.
        let mut dad = solicitation(MAC, Ipv6Addr::UNSPECIFIED, a("fd00::2"));
        assert_eq!(read(&dad, 14), None);
        // Without the option (and its checksum made right): a duplicate address check.
        dad[18..20].copy_from_slice(&24u16.to_be_bytes());
        let mut f = dad[..78].to_vec();
        f[56..58].fill(0);
        let pseudo = pseudo_header_v6(
            &[0; 16],
            &solicited_node(a("fd00::2")).octets(),
            proto::ICMPV6,
            24,
        );
        let check = finish(sum(pseudo, &f[54..]));
        f[56..58].copy_from_slice(&check.to_be_bytes());
        assert_eq!(
            read(&f, 14),
            Some(Ndp::Solicitation {
                src: Ipv6Addr::UNSPECIFIED,
                target: a("fd00::2"),
                mac: None
            })
        );
    }
}
