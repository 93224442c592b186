//! Fuzzes the wire emitters and the checksum helpers: a `wire::Frame` of arbitrary `Repr`
//! field values either is refused for a field that does not fit, or emits bytes whose views
//! parse back to the same fields with valid checksums, and which the parse stage reads to the
//! same flow key; and every incremental checksum update equals a full recomputation on
//! arbitrary buffers.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::checksum;
use nf_core::wire::icmp::{IcmpKind, IcmpPacket, IcmpRepr, classify_v4, classify_v6};
use nf_core::wire::ipv4::{Ipv4Packet, Ipv4Repr};
use nf_core::wire::ipv6::{Ipv6Error, Ipv6Packet, Ipv6Repr};
use nf_core::wire::tcp::{TcpPacket, TcpRepr};
use nf_core::wire::udp::{UdpPacket, UdpRepr};
use nf_core::wire::{EmitError, Frame, IpRepr, TransportRepr, ethernet::EthernetRepr};
use nf_core::{FlowKey, Meta, ParseConfig, Parsed, ZoneId, flags, parse_frame, parse_l3};

#[derive(Arbitrary, Debug)]
enum Ip {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        ttl: u8,
        dscp_ecn: u8,
        ident: u16,
        dont_frag: bool,
        more_frags: bool,
        frag_offset: u16,
        options: [u8; 40],
        options_len: u8,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        hop_limit: u8,
        traffic_class: u8,
        flow_label: u32,
    },
}

#[derive(Arbitrary, Debug)]
enum L4 {
    Udp(u16, u16),
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        urgent: u16,
        options: [u8; 40],
        options_len: u8,
    },
    Icmp {
        ty: u8,
        code: u8,
        ident: u16,
        seq: u16,
    },
    Raw(u8),
}

#[derive(Arbitrary, Debug)]
struct Checksums {
    data: Vec<u8>,
    at: u16,
    new16: u16,
    new32: [u8; 4],
    new_bytes: [u8; 16],
    acc: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ethernet: Option<([u8; 6], [u8; 6])>,
    ip: Ip,
    l4: L4,
    payload: Vec<u8>,
    checksums: Checksums,
}

fuzz_target!(|input: Input| {
    frame_round_trip(&input);
    checksum_helpers(&input.checksums);
});

/// The options as a `Repr` holds them: bytes past the used length are zero (parse leaves
/// them so, and `Repr` equality compares the whole array).
fn used(mut options: [u8; 40], len: u8) -> [u8; 40] {
    options
        .iter_mut()
        .skip(usize::from(len))
        .for_each(|b| *b = 0);
    options
}

fn frame_round_trip(input: &Input) {
    let ip = match input.ip {
        Ip::V4 {
            src,
            dst,
            ttl,
            dscp_ecn,
            ident,
            dont_frag,
            more_frags,
            frag_offset,
            options,
            options_len,
        } => IpRepr::V4(Ipv4Repr {
            src,
            dst,
            ttl,
            dscp_ecn,
            ident,
            dont_frag,
            more_frags,
            frag_offset,
            options: used(options, options_len),
            options_len,
            ..Ipv4Repr::default()
        }),
        Ip::V6 {
            src,
            dst,
            hop_limit,
            traffic_class,
            flow_label,
        } => IpRepr::V6(Ipv6Repr {
            src,
            dst,
            hop_limit,
            traffic_class,
            flow_label,
            ..Ipv6Repr::default()
        }),
    };
    let transport = match input.l4 {
        L4::Udp(src_port, dst_port) => TransportRepr::Udp(UdpRepr {
            src_port,
            dst_port,
            ..UdpRepr::default()
        }),
        L4::Tcp {
            src_port,
            dst_port,
            seq,
            ack,
            flags,
            window,
            urgent,
            options,
            options_len,
        } => TransportRepr::Tcp(TcpRepr {
            src_port,
            dst_port,
            seq,
            ack,
            flags,
            window,
            urgent,
            options: used(options, options_len),
            options_len,
            ..TcpRepr::default()
        }),
        L4::Icmp {
            ty,
            code,
            ident,
            seq,
        } => TransportRepr::Icmp(IcmpRepr {
            ty,
            code,
            ident,
            seq,
            ..IcmpRepr::default()
        }),
        L4::Raw(proto) => TransportRepr::Raw { proto },
    };
    let ethernet = input.ethernet.map(|(src, dst)| EthernetRepr {
        src,
        dst,
        ..EthernetRepr::default()
    });
    let frame = Frame {
        ethernet,
        ip,
        transport,
        payload: &input.payload,
    };

    // Out-of-range fields are refused, and only they are.
    let opts_bad = |len: u8| !len.is_multiple_of(4) || len > 40;
    let out_of_range = match input.ip {
        Ip::V4 {
            frag_offset,
            options_len,
            ..
        } => frag_offset > 0x1fff || opts_bad(options_len),
        Ip::V6 { flow_label, .. } => flow_label > 0x000f_ffff,
    } || matches!(input.l4, L4::Tcp { options_len, .. } if opts_bad(options_len));
    let bytes = match frame.to_vec() {
        Ok(b) => b,
        Err(e) => {
            assert_eq!(e, EmitError::FieldOutOfRange);
            assert!(out_of_range, "refused in-range fields");
            return;
        }
    };
    assert!(!out_of_range, "emitted an out-of-range field");
    assert_eq!(bytes.len(), frame.buffer_len());

    // The views read back every field; the computed ones are right and checksums verify.
    let l3 = if ethernet.is_some() { 14 } else { 0 };
    let proto = transport.proto(&ip);
    let l4_len = (transport.buffer_len() + input.payload.len()) as u16;
    let pseudo = ip.pseudo_header(proto, l4_len);
    let l4 = match ip {
        IpRepr::V4(want) => {
            let p = Ipv4Packet::new_checked(&bytes[l3..]).expect("emitted IPv4 parses");
            assert!(p.verify_checksum());
            assert_eq!(
                Ipv4Repr::parse(&p),
                Ipv4Repr {
                    proto,
                    payload_len: l4_len,
                    ..want
                }
            );
            &bytes[l3 + ip.buffer_len()..]
        }
        IpRepr::V6(want) => {
            let p = Ipv6Packet::new_checked(&bytes[l3..]);
            if proto == 0 && l4_len == 0 {
                // A Hop-by-Hop header announced with nothing after it reads as a jumbogram.
                assert_eq!(p.unwrap_err(), Ipv6Error::BadPayloadLength);
                return;
            }
            let p = p.expect("emitted IPv6 parses");
            assert_eq!(
                Ipv6Repr::parse(&p),
                Ipv6Repr {
                    next_header: proto,
                    payload_len: l4_len,
                    ..want
                }
            );
            &bytes[l3 + 40..]
        }
    };
    let v6 = matches!(ip, IpRepr::V6(_));
    match transport {
        TransportRepr::Udp(u) => {
            let p = UdpPacket::new_checked(l4).expect("emitted UDP parses");
            assert!(p.verify_checksum(pseudo) && p.header().checksum.get() != 0);
            let back = UdpRepr::parse(&p);
            assert_eq!(
                back,
                UdpRepr {
                    payload_len: input.payload.len() as u16,
                    checksum: back.checksum,
                    ..u
                }
            );
        }
        TransportRepr::Tcp(t) => {
            let p = TcpPacket::new_checked(l4).expect("emitted TCP parses");
            assert_eq!(checksum::fold(p.sum() + pseudo), 0xffff);
            let back = TcpRepr::parse(&p);
            assert_eq!(
                back,
                TcpRepr {
                    checksum: back.checksum,
                    ..t
                }
            );
        }
        TransportRepr::Icmp(i) => {
            let p = IcmpPacket::new_checked(l4).expect("emitted ICMP parses");
            assert!(p.verify_checksum(if v6 { pseudo } else { 0 }));
            let back = IcmpRepr::parse(&p);
            assert_eq!(
                back,
                IcmpRepr {
                    checksum: back.checksum,
                    ..i
                }
            );
        }
        _ => assert_eq!(l4, &input.payload[..]),
    }

    // The parse stage reads the same flow, for the frames whose shape it takes as given:
    // whole packets, well-formed IPv4 options (no-ops here), and a transport nf built.
    let whole = match input.ip {
        Ip::V4 {
            more_frags,
            frag_offset,
            options,
            options_len,
            ..
        } => {
            !more_frags
                && frag_offset == 0
                && options[..usize::from(options_len)].iter().all(|&b| b == 1)
        }
        Ip::V6 { .. } => true,
    };
    if !whole || matches!(transport, TransportRepr::Raw { .. }) {
        return;
    }
    let cfg = ParseConfig::default();
    let mut meta = Meta::default();
    let parsed = match ethernet {
        Some(_) => parse_frame(&bytes, &mut meta, &cfg),
        None => parse_l3(&bytes, ip.ethertype(), &mut meta, &cfg),
    };
    assert_eq!(parsed, Ok(Parsed::Ip));
    let (sp, dp) = match transport {
        TransportRepr::Udp(u) => (u.src_port, u.dst_port),
        TransportRepr::Tcp(t) => (t.src_port, t.dst_port),
        TransportRepr::Icmp(i) => {
            let kind = if v6 {
                classify_v6(i.ty)
            } else {
                classify_v4(i.ty)
            };
            assert_eq!(meta.has(flags::ICMP_ERROR), kind == IcmpKind::Error);
            if kind == IcmpKind::Query {
                (i.ident, i.ident)
            } else {
                (0, 0)
            }
        }
        _ => (0, 0),
    };
    let key = match ip {
        IpRepr::V4(r) => FlowKey::v4(ZoneId(0), r.src, r.dst, proto, sp, dp),
        IpRepr::V6(r) => FlowKey::v6(ZoneId(0), r.src, r.dst, proto, sp, dp),
    };
    assert_eq!(meta.flow, key);
    assert_eq!(usize::from(meta.payload), bytes.len() - input.payload.len());
}

/// Equal as ones' complement numbers (0x0000 and 0xFFFF are both zero).
fn same(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

fn checksum_helpers(c: &Checksums) {
    let data = &c.data[..c.data.len().min(4096) & !1];
    // Split sums equal the whole sum at any even split.
    let split = (usize::from(c.at) * 2).min(data.len());
    let whole = checksum::sum(u32::from(c.acc), data);
    assert_eq!(
        checksum::fold(checksum::sum(
            checksum::sum(u32::from(c.acc), &data[..split]),
            &data[split..]
        )),
        checksum::fold(whole)
    );
    if data.len() >= 20 {
        let h: &[u8; 20] = data[..20].try_into().unwrap();
        assert_eq!(checksum::verify_ipv4_header(h), checksum::verify(h));
    }
    let full = checksum::checksum(data);
    if data.len() >= 2 {
        // A 16-bit word changes.
        let w = split.min(data.len() - 2);
        let old = u16::from_be_bytes([data[w], data[w + 1]]);
        let mut changed = data.to_vec();
        changed[w..w + 2].copy_from_slice(&c.new16.to_be_bytes());
        let want = checksum::checksum(&changed);
        assert!(same(checksum::update16(full, old, c.new16), want));
        let udp = checksum::udp_finish(checksum::sum(0, data));
        let udp_want = checksum::udp_finish(checksum::sum(0, &changed));
        assert_eq!(checksum::update_udp16(udp, old, c.new16), udp_want);
        assert_eq!(checksum::update_udp16(0, old, c.new16), 0);
    }
    if data.len() >= 4 {
        // A 32-bit field (an address) changes.
        let w = split.min(data.len() - 4);
        let old: [u8; 4] = data[w..w + 4].try_into().unwrap();
        let mut changed = data.to_vec();
        changed[w..w + 4].copy_from_slice(&c.new32);
        let want = checksum::checksum(&changed);
        assert!(same(checksum::update32(full, old, c.new32), want));
        assert_eq!(
            checksum::update_bytes(full, &old, &c.new32),
            Some(checksum::update32(full, old, c.new32))
        );
        let udp = checksum::udp_finish(checksum::sum(0, data));
        assert_eq!(
            checksum::update_udp_addr(udp, old, c.new32),
            checksum::udp_finish(checksum::sum(0, &changed))
        );
    }
    if data.len() >= 16 {
        // An IPv6 address changes.
        let w = split.min(data.len() - 16);
        let mut changed = data.to_vec();
        changed[w..w + 16].copy_from_slice(&c.new_bytes);
        let got = checksum::update_bytes(full, &data[w..w + 16], &c.new_bytes).unwrap();
        assert!(same(got, checksum::checksum(&changed)));
        assert_eq!(
            checksum::update_bytes(full, &data[w..w + 15], &c.new_bytes[..15]),
            None
        );
    }
}
