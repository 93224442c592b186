//! Fuzzes the answers built in place (`nf_core::reply`): on any frame the parser accepts, with
//! any headroom, each of `tcp_reset`, `icmp_too_big`, `icmp_prohibited`,
//! `icmp_time_exceeded` and `icmp_echo_reply` either refuses and leaves the packet as it
//! was, or makes an answer that the parser accepts again with the same flow key, a valid
//! IPv4 header checksum, no longer than an ICMP error may be (an IPv4 error 576 bytes of IP,
//! an ICMPv6 error 1,280), going back to the packet's source.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nf_core::reply::{
    ReplyError, icmp_echo_reply, icmp_prohibited, icmp_time_exceeded, icmp_too_big, tcp_reset,
};
use nf_core::{Meta, Packet, ParseConfig, flags, parse_frame};
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, frame)) = data.split_first() else {
        return;
    };
    let mut meta = Meta::default();
    if parse_frame(frame, &mut meta, &ParseConfig::default()).is_err() || !meta.has(flags::L3_VALID)
    {
        return;
    }
    let headroom = usize::from(seed % 4) * 32;
    let v6 = meta.flow.family() == nf_core::Family::V6;
    let from: IpAddr = if v6 { "fd00::1".parse().unwrap() } else { "10.0.0.1".parse().unwrap() };
    let src = meta.flow.src_ip();
    for which in 0..5 {
        let mut p = Packet::with_headroom(frame, headroom);
        p.meta = meta;
        let r: Result<(), ReplyError> = match which {
            0 => tcp_reset(&mut p),
            1 => icmp_too_big(&mut p, from, 1280 + u32::from(seed)),
            2 => icmp_prohibited(&mut p, from),
            3 => icmp_time_exceeded(&mut p, from),
            _ => icmp_echo_reply(&mut p),
        };
        if r.is_err() {
            assert_eq!(p.data(), frame, "answer {which} refused but changed the packet");
            continue;
        }
        let mut again = Meta::default();
        parse_frame(p.data(), &mut again, &ParseConfig::default())
            .unwrap_or_else(|e| panic!("answer {which} does not parse: {e:?}"));
        assert_eq!(again.flow, p.meta.flow, "answer {which}: its metadata");
        assert_eq!(again.flow.dst_ip(), src, "answer {which} not to the source");
        let ip = &p.data()[usize::from(again.l3)..];
        if !v6 {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            assert!(nf_core::checksum::verify(&ip[..ihl]), "answer {which}: IPv4 header checksum");
        }
        if (1..=3).contains(&which) {
            assert!(again.has(flags::ICMP_ERROR), "answer {which} is no ICMP error");
            assert!(ip.len() <= if v6 { 1280 } else { 576 }, "answer {which}: {} bytes", ip.len());
        }
    }
});
