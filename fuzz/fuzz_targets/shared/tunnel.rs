//! What the encap and reflect targets share: the underlay and the inner frames they build.

use nf_tunnel::Underlay;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A fixed underlay of either family.
pub fn underlay(v6: bool) -> Underlay {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into())
    } else {
        (Ipv4Addr::new(192, 0, 2, 1).into(), Ipv4Addr::new(192, 0, 2, 2).into())
    };
    Underlay { src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 2], src, dst }
}

/// `bytes` as they are, or, given `(v6, tcp, port)`, a well-formed Ethernet/IPv4 or
/// IPv6/UDP or TCP frame carrying them (the fuzzer rarely finds one by itself).
pub fn inner_frame(built: Option<(bool, bool, u16)>, bytes: &[u8]) -> Vec<u8> {
    let Some((v6, tcp, port)) = built else {
        return bytes.to_vec();
    };
    let f = if v6 {
        nf_core::wire::Frame::ipv6([0xfd; 16], [0xfe; 16])
    } else {
        nf_core::wire::Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2])
    };
    let f = if tcp { f.tcp(port, 80, 0x10) } else { f.udp(port, 53) };
    f.payload(bytes).to_vec().unwrap_or_default()
}
