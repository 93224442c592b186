//! What a user-space VTEP (`vxlan-gateway`, `nf-node`) does besides the stages: sort the
//! frames of its underlay interface and answer ARP for its own address (RFC 826), so the
//! remote VTEP needs no static neighbour entry.

use nf_core::wire::ethertype;
use std::net::Ipv4Addr;

/// What a VTEP does with a frame from its underlay interface.
#[derive(Debug, PartialEq, Eq)]
pub enum UnderlayFrame {
    /// Towards our MAC or a group address: for the decap stage.
    Tunnel,
    /// An ARP request for our address: send this reply.
    ArpReply([u8; ARP_FRAME_LEN]),
    /// Anything else ARP, or a frame for another MAC: ignored.
    Ignore,
}

/// An Ethernet + IPv4-over-Ethernet ARP frame (no padding).
pub const ARP_FRAME_LEN: usize = 14 + 28;

/// Sorts a frame received on a VTEP's underlay interface (see [`UnderlayFrame`]).
pub fn classify_underlay(frame: &[u8], mac: [u8; 6], ip: Ipv4Addr) -> UnderlayFrame {
    let Some(eth) = frame.first_chunk::<14>() else {
        return UnderlayFrame::Ignore;
    };
    let group = eth[0] & 1 == 1;
    if !group && eth[..6] != mac {
        return UnderlayFrame::Ignore;
    }
    if u16::from_be_bytes([eth[12], eth[13]]) != ethertype::ARP {
        return UnderlayFrame::Tunnel;
    }
    arp_reply(frame, mac, ip).map_or(UnderlayFrame::Ignore, UnderlayFrame::ArpReply)
}

/// The reply to an Ethernet/IPv4 ARP request for `ip` (RFC 826), if `frame` is one.
pub fn arp_reply(frame: &[u8], mac: [u8; 6], ip: Ipv4Addr) -> Option<[u8; ARP_FRAME_LEN]> {
    let req = frame.get(14..14 + 28)?;
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request).
    if req[..8] != [0, 1, 8, 0, 6, 4, 0, 1] || req[24..28] != ip.octets() {
        return None;
    }
    let sha = <[u8; 6]>::try_from(&req[8..14]).ok()?;
    let spa = <[u8; 4]>::try_from(&req[14..18]).ok()?;
    Some(arp_frame(ArpOp::Reply, mac, ip, sha, spa.into()))
}

/// An ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    /// Who has the target address? (Broadcast.)
    Request = 1,
    /// The sender has it (to the target hardware address).
    Reply = 2,
}

/// An Ethernet/IPv4 ARP frame from `sha`/`spa`: a broadcast request for `tpa` (target
/// hardware address zero), or a reply to `tha`/`tpa`.
pub fn arp_frame(
    op: ArpOp,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    let (eth_dst, arp_tha) = match op {
        ArpOp::Request => ([0xff; 6], [0; 6]),
        ArpOp::Reply => (tha, tha),
    };
    f[..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    f[32..38].copy_from_slice(&arp_tha);
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

/// Lets frames that a stage sent to the control path (ARP and other non-IP frames between
/// overlay hosts) go on as bridged traffic: a VTEP forwards them like the rest.
pub fn bridge_control<B>(batch: &mut nf_core::Batch<B>) {
    for p in batch.packets_mut() {
        if p.meta.verdict == nf_core::Verdict::ToControl {
            p.meta.verdict = nf_core::Verdict::Pass;
        }
    }
}

/// `println!` that does not panic when stdout is gone (`nf-node --help | head`): the
/// examples' way to print.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend([0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend([2, 0, 0, 0, 0, 1, 192, 0, 2, 1]);
        f.extend([0; 6]);
        f.extend(target);
        f.extend([0; 18]); // Ethernet padding
        f
    }

    #[test]
    fn answers_arp_requests_for_its_address_only() {
        let UnderlayFrame::ArpReply(r) = classify_underlay(&arp_request([192, 0, 2, 2]), MAC, IP)
        else {
            panic!("no reply");
        };
        let want: Vec<u8> = [
            &[2, 0, 0, 0, 0, 1][..],
            &MAC,
            &[8, 6, 0, 1, 8, 0, 6, 4, 0, 2],
            &MAC,
            &[192, 0, 2, 2],
            &[2, 0, 0, 0, 0, 1, 192, 0, 2, 1],
        ]
        .concat();
        assert_eq!(r.to_vec(), want);
        assert_eq!(
            classify_underlay(&arp_request([192, 0, 2, 9]), MAC, IP),
            UnderlayFrame::Ignore
        );
        let mut reply = arp_request([192, 0, 2, 2]);
        reply[21] = 2;
        assert_eq!(classify_underlay(&reply, MAC, IP), UnderlayFrame::Ignore);
        assert_eq!(
            classify_underlay(&reply[..20], MAC, IP),
            UnderlayFrame::Ignore
        );
    }

    #[test]
    fn only_frames_for_us_or_a_group_reach_decap() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        f[..6].copy_from_slice(&MAC);
        assert_eq!(classify_underlay(&f, MAC, IP), UnderlayFrame::Tunnel);
        f[..6].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
        assert_eq!(classify_underlay(&f, MAC, IP), UnderlayFrame::Tunnel);
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        assert_eq!(classify_underlay(&f, MAC, IP), UnderlayFrame::Ignore);
        assert_eq!(classify_underlay(&f[..13], MAC, IP), UnderlayFrame::Ignore);
    }
}
