#!/usr/bin/env python3
"""Frames built by scapy that nf's parse stage must accept or reject, with the outcome.

Usage: parse_cases.py OUT_DIR  -> writes OUT_DIR/cases.pcap and OUT_DIR/cases.tsv, one row per
frame, in order: name, expected outcome. Outcomes:
  pass PROTO SPORT DPORT   accepted; flow key protocol and ports
  drop REASON              dropped with this nf DropReason name
  control                  not IP: handed to the control path
"""
import sys
from scapy.all import (ARP, Dot1AD, Dot1Q, Ether, GRE, ICMP, IP, IPOption_NOP, IPOption_EOL,
                       IPOption_RR, IPOption_Router_Alert, IPv6, IPv6ExtHdrDestOpt,
                       IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
                       ICMPv6DestUnreach, ICMPv6EchoRequest, Raw, TCP, UDP)
from frames import write_pcap

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = dict(src="192.0.2.1", dst="198.51.100.2")
V6 = dict(src="2001:db8::1", dst="2001:db8::2")
cases = []


def case(name, frame, outcome):
    cases.append((name, bytes(frame), outcome))


def patched(frame, offset, value):
    b = bytearray(bytes(frame))
    b[offset] = value
    return bytes(b)


def with_ipv4_checksum(frame, l3=14):
    """Recomputes the IPv4 header checksum after a patch, so only the patched field is wrong."""
    b = bytearray(frame)
    ihl = (b[l3] & 0x0F) * 4
    b[l3 + 10:l3 + 12] = b"\0\0"
    s = sum((b[i] << 8) | b[i + 1] for i in range(l3, l3 + ihl, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    b[l3 + 10:l3 + 12] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


# --- valid -------------------------------------------------------------------------------
case("v4_tcp", E / IP(**V4) / TCP(sport=1234, dport=80, flags="S"), "pass 6 1234 80")
case("v4_udp", E / IP(**V4) / UDP(sport=53, dport=33000) / Raw(b"q"), "pass 17 53 33000")
case("v4_icmp_echo", E / IP(**V4) / ICMP(type=8, id=0xbeef, seq=1), "pass 1 48879 48879")
case("v4_icmp_error_quotes_udp", E / IP(**V4) / ICMP(type=3, code=3) / IP(**V4) / UDP(sport=1, dport=2), "pass 1 0 0")
case("v4_gre_no_ports", E / IP(**V4) / GRE() / IP(**V4) / UDP(sport=7, dport=8), "pass 47 0 0")
case("v4_option_record_route", E / IP(options=[IPOption_RR(routers=["10.0.0.1", "10.0.0.2"])], **V4) / UDP(sport=5, dport=6), "pass 17 5 6")
case("v4_option_router_alert_nop_eol", E / IP(options=[IPOption_Router_Alert(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_EOL()], **V4) / TCP(sport=9, dport=10), "pass 6 9 10")
case("v4_first_fragment", E / IP(flags="MF", frag=0, **V4) / TCP(sport=11, dport=12) / Raw(b"a" * 16), "pass 6 11 12")
case("v4_later_fragment", E / IP(flags=0, frag=3, proto=6, **V4) / Raw(b"b" * 24), "pass 6 0 0")
case("v4_min_frame_padded", Ether(bytes(E / IP(**V4) / UDP(sport=15, dport=16)) + b"\0" * 18), "pass 17 15 16")
case("vlan_v4_udp", E / Dot1Q(vlan=100) / IP(**V4) / UDP(sport=17, dport=18), "pass 17 17 18")
case("qinq_v6_tcp", E / Dot1AD(vlan=200) / Dot1Q(vlan=300) / IPv6(**V6) / TCP(sport=19, dport=20), "pass 6 19 20")
case("v6_tcp", E / IPv6(**V6) / TCP(sport=443, dport=55000, flags="SA"), "pass 6 443 55000")
case("v6_udp", E / IPv6(**V6) / UDP(sport=546, dport=547), "pass 17 546 547")
case("v6_icmp_echo", E / IPv6(**V6) / ICMPv6EchoRequest(id=7, seq=1), "pass 58 7 7")
case("v6_icmp_error", E / IPv6(**V6) / ICMPv6DestUnreach() / IPv6(**V6) / UDP(sport=1, dport=2), "pass 58 0 0")
case("v6_hbh_udp", E / IPv6(**V6) / IPv6ExtHdrHopByHop() / UDP(sport=21, dport=22), "pass 17 21 22")
case("v6_chain_hbh_dest_routing_dest_tcp", E / IPv6(**V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=["2001:db8::9"], segleft=0) / IPv6ExtHdrDestOpt() / TCP(sport=23, dport=24), "pass 6 23 24")
case("v6_first_fragment", E / IPv6(**V6) / IPv6ExtHdrFragment(offset=0, m=1, id=1) / UDP(sport=25, dport=26) / Raw(b"c" * 16), "pass 17 25 26")
case("v6_later_fragment", E / IPv6(**V6) / IPv6ExtHdrFragment(offset=5, m=0, id=1, nh=17) / Raw(b"d" * 16), "pass 17 0 0")
case("v6_atomic_fragment", E / IPv6(**V6) / IPv6ExtHdrFragment(offset=0, m=0, id=2) / TCP(sport=27, dport=28), "pass 6 27 28")
case("v6_no_next_header", E / IPv6(nh=59, **V6), "pass 59 0 0")
case("arp_to_control", E / ARP(psrc="192.0.2.1", pdst="192.0.2.2"), "control")

# --- malformed ---------------------------------------------------------------------------
case("runt_10_bytes", bytes(E)[:10], "drop eth_truncated")
case("vlan_tag_truncated", bytes(E / Dot1Q(vlan=5))[:16], "drop eth_truncated")
case("three_vlan_tags", E / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(**V4) / UDP(), "drop vlan_too_deep")
case("v4_header_truncated", bytes(E / IP(**V4) / UDP())[:14 + 19], "drop ipv4_truncated")
case("v4_version_5", patched(E / IP(**V4) / UDP(), 14, 0x55), "drop ipv4_bad_version")
case("v4_ihl_4", E / IP(ihl=4, **V4) / UDP(), "drop ipv4_bad_ihl")
case("v4_ihl_beyond_frame", bytes(E / IP(ihl=15, **V4))[:14 + 40], "drop ipv4_truncated")
case("v4_total_length_beyond_frame", E / IP(len=200, **V4) / UDP(), "drop ipv4_bad_total_length")
case("v4_total_length_below_header", E / IP(len=16, **V4) / UDP(), "drop ipv4_bad_total_length")
case("v4_bad_checksum", E / IP(chksum=0xdead, **V4) / UDP(), "drop ipv4_bad_checksum")
RA = E / IP(options=[IPOption_Router_Alert()], **V4) / UDP(sport=1, dport=2)
case("v4_option_length_1", with_ipv4_checksum(patched(RA, 14 + 21, 1)), "drop ipv4_bad_options")
case("v4_option_overruns_field", with_ipv4_checksum(patched(RA, 14 + 21, 9)), "drop ipv4_bad_options")
case("v4_option_after_nop_overruns_field", with_ipv4_checksum(patched(patched(RA, 14 + 20, 1), 14 + 22, 0x83)), "drop ipv4_bad_options")
case("v4_tcp_frag_offset_1", E / IP(frag=1, proto=6, **V4) / Raw(b"e" * 16), "drop ipv4_bad_fragment")
case("v4_first_fragment_without_tcp_header", E / IP(flags="MF", proto=6, **V4) / Raw(b"f" * 8), "drop ipv4_bad_fragment")
case("tcp_data_offset_4", E / IP(**V4) / TCP(dataofs=4), "drop tcp_bad_data_offset")
case("tcp_data_offset_beyond_segment", E / IP(**V4) / TCP(dataofs=15), "drop tcp_truncated")
case("tcp_header_truncated", E / IP(proto=6, **V4) / Raw(b"\0" * 12), "drop tcp_truncated")
case("udp_header_truncated", E / IP(proto=17, **V4) / Raw(b"\0" * 6), "drop udp_truncated")
case("udp_length_7", E / IP(**V4) / UDP(len=7), "drop udp_bad_length")
case("udp_length_beyond_payload", E / IP(**V4) / UDP(len=100) / Raw(b"x"), "drop udp_bad_length")
case("icmp_truncated", E / IP(proto=1, **V4) / Raw(b"\x08\0\0\0"), "drop icmp_truncated")
case("v6_version_4", patched(E / IPv6(**V6) / UDP(), 14, 0x45), "drop ipv6_bad_version")
case("v6_header_truncated", bytes(E / IPv6(**V6))[:14 + 39], "drop ipv6_truncated")
case("v6_payload_length_beyond_frame", E / IPv6(plen=100, **V6) / UDP(), "drop ipv6_bad_payload_length")
case("v6_hbh_not_first", E / IPv6(**V6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP(), "drop ipv6_hop_by_hop_not_first")
case("v6_ext_truncated", E / IPv6(nh=60, **V6) / Raw(b"\x11\x05" + b"\0" * 6), "drop ipv6_ext_truncated")
case("v6_too_many_ext", E / IPv6(**V6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / UDP(), "drop ipv6_too_many_ext")
case("v6_first_fragment_without_tcp_header", E / IPv6(**V6) / IPv6ExtHdrFragment(offset=0, m=1, id=3, nh=6) / Raw(b"g" * 8), "drop ipv6_bad_fragment")
case("v6_udp_truncated", E / IPv6(nh=17, **V6) / Raw(b"\0" * 4), "drop udp_truncated")

if __name__ == "__main__":
    out = sys.argv[1]
    write_pcap(out + "/cases.pcap", [b for _, b, _ in cases])
    with open(out + "/cases.tsv", "w") as f:
        for name, _, outcome in cases:
            f.write(f"{name}\t{outcome}\n")
