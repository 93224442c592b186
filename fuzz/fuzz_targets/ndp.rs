//! Fuzzes the router's neighbour discovery (`nf_examples::ndp`): arbitrary bytes read as
//! the IPv6 packet of an Ethernet frame, and the frames the router builds from an arbitrary
//! link-layer address and IPv6 addresses read back.
//!
//! The input: 6 bytes of link-layer address, 16 of source address, 16 of target address,
//! then the IPv6 packet.
//!
//! Checked: nothing panics; what `read` accepts has hop limit 255, an ICMPv6 solicitation
//! or advertisement right after the fixed header, a unicast target, and from the
//! unspecified address no link-layer address option; a solicitation and an advertisement
//! built by the router read back as what they were built from (none for a multicast
//! target, nor a solicitation from the unspecified address, which carries the option).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nf_examples::ndp::{Ndp, advertisement, is_ndp, read, solicitation};
use std::net::Ipv6Addr;

fuzz_target!(|data: &[u8]| {
    let Some((head, packet)) = data.split_first_chunk::<38>() else {
        return;
    };
    let mac: [u8; 6] = head[..6].try_into().unwrap();
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&head[6..22]).unwrap());
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&head[22..38]).unwrap());

    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0x86, 0xdd]);
    frame.extend_from_slice(packet);
    let looks = is_ndp(&frame, 14);
    if let Some(m) = read(&frame, 14) {
        assert!(looks, "read but not is_ndp");
        assert_eq!(frame[14 + 7], 255, "hop limit");
        match m {
            Ndp::Solicitation { src, target, mac } => {
                assert_eq!(frame[14 + 40], 135);
                assert!(!target.is_multicast());
                assert!(!(src.is_unspecified() && mac.is_some()));
            }
            Ndp::Advertisement { target, .. } => {
                assert_eq!(frame[14 + 40], 136);
                assert!(!target.is_multicast());
            }
        }
    }

    let ns = read(&solicitation(mac, src, target), 14);
    let want = (!target.is_multicast() && !src.is_unspecified()).then_some(Ndp::Solicitation {
        src,
        target,
        mac: Some(mac),
    });
    assert_eq!(ns, want, "solicitation");
    let na = read(&advertisement(mac, target, [2; 6], src), 14);
    let want = (!target.is_multicast()).then_some(Ndp::Advertisement {
        target,
        mac: Some(mac),
    });
    assert_eq!(na, want, "advertisement");
});
