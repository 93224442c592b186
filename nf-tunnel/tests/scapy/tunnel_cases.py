#!/usr/bin/python3
"""scapy-built Geneve and VXLAN frames, valid and invalid, each with the outcome RFC 8926 /
RFC 7348 call for. Writes OUT/cases.pcap and OUT/cases.tsv (name, profile, expected).

Expected outcomes:
  pass VNI PROTO SPORT DPORT OPTMASK   decapsulated; inner key and reported-option bits
  pass VNI nonip                        decapsulated; the inner frame is not IP (unused now:
                                        non-IP inner frames follow the parse setting `non_ip`)
  drop REASON                           dropped (nf's snake_case drop reason)
  control                               to the control path, not forwarded (Geneve O bit; a
                                        non-IP inner frame under the default `non_ip`)
  notunnel                              not a tunnel packet for the stage: left untouched
  pass2 OUTER_VNI VNI PROTO SPORT DPORT two nested tunnels stripped by two stages; both VNIs

Profiles: "generic" knows options 0x0108/1..3 (reported as bits 0..2, none required) and
ports 6081 (Geneve), 4789 and 8472 (VXLAN); "gwlb" is nf-tunnel's AWS GWLB profile;
"strict" is "generic" with non-IP inner frames dropped; "local" is "generic" accepting only
tunnels to 192.0.2.2 / 2001:db8::2 and MAC 02:00:00:00:00:02; "nested" runs three "generic"
stages one after the other (a tunnel in a tunnel is stripped twice; a third is too deep).
Run with Debian's python3 (python3-scapy): /usr/bin/python3 tunnel_cases.py OUT
"""
import os
import sys

from scapy.all import (ARP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPOption_RR, IPv6,
                       IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                       IPv6ExtHdrRouting, IPv6ExtHdrSegmentRouting, Raw, VXLAN, wrpcap)
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.ipsec import AH

OUT = sys.argv[1]
E = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
O4 = dict(src="192.0.2.1", dst="192.0.2.2")
O6 = dict(src="2001:db8::1", dst="2001:db8::2")
INNER = Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02") / IP(
    src="10.0.0.1", dst="10.0.0.2"
) / UDP(sport=1234, dport=80) / Raw(b"hello tunnel")
INNER_IP = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=4321, dport=443, flags="S")
INNER_IP6 = IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5353, dport=53) / Raw(b"q")


def opt(cls, typ, data):
    return GeneveOptions(classid=cls, type=typ, data=data)


GWLB = [
    opt(0x0108, 1, b"\x01" * 8),
    opt(0x0108, 2, b"\x02" * 8),
    opt(0x0108, 3, b"\x03" * 4),
]


def geneve(g, payload=INNER, outer=None, **udp):
    outer = outer if outer is not None else IP(**O4)
    return Ether(**E) / outer / UDP(sport=50000, dport=udp.pop("dport", 6081), **udp) / g / payload


def behind_ah(l4):
    """`l4` (UDP and what it carries) behind an IPv6 Authentication Header (RFC 4302, a
    12-byte ICV), its checksum as scapy computes it without one: the pseudo-header does not
    cover extension headers, and scapy leaves it 0 under AH."""
    udp = bytes((IPv6(**O6) / l4)[UDP])
    return Ether(**E) / IPv6(**O6) / AH(nh=17, payloadlen=4, spi=1, seq=1, icv=b"\x00" * 12) / Raw(udp)


def raw_geneve(hdr_and_opts, payload=b"", **kw):
    return Ether(**E) / IP(**O4) / UDP(sport=50000, dport=6081, **kw) / Raw(hdr_and_opts + payload)


def vxlan(v, payload=INNER, outer=None, dport=4789):
    outer = outer if outer is not None else IP(**O4)
    return Ether(**E) / outer / UDP(sport=50001, dport=dport) / v / payload


PASS_INNER = "pass {} 17 1234 80 {}"
cases = [
    # name, profile, frame, expected
    ("geneve_ethernet", "generic", geneve(GENEVE(vni=10, proto=0x6558)), PASS_INNER.format(10, 0)),
    ("geneve_ipv4_payload", "generic", geneve(GENEVE(vni=11, proto=0x0800), INNER_IP), "pass 11 6 4321 443 0"),
    ("geneve_ipv6_payload", "generic", geneve(GENEVE(vni=12, proto=0x86DD), INNER_IP6), "pass 12 17 5353 53 0"),
    ("geneve_gwlb_options", "generic", geneve(GENEVE(vni=13, proto=0x6558, options=GWLB)), PASS_INNER.format(13, 7)),
    ("geneve_unknown_noncritical_option", "generic",
     geneve(GENEVE(vni=14, proto=0x6558, options=[opt(0x9999, 0x01, b"abcd")])), PASS_INNER.format(14, 0)),
    ("geneve_critical_known_option", "generic",
     geneve(GENEVE(vni=15, proto=0x6558, critical=1, options=[opt(0x0108, 0x81, b"\x01" * 8)])),
     PASS_INNER.format(15, 1)),
    ("geneve_critical_unknown_option", "generic",
     geneve(GENEVE(vni=16, proto=0x6558, critical=1, options=[opt(0x9999, 0x85, b"abcd")])),
     "drop tunnel_critical_option"),
    ("geneve_critical_unknown_option_without_c_bit", "generic",
     geneve(GENEVE(vni=16, proto=0x6558, critical=0, options=[opt(0x9999, 0x85, b"abcd")])),
     "drop tunnel_critical_option"),
    ("geneve_c_bit_without_critical_option", "generic",
     geneve(GENEVE(vni=17, proto=0x6558, critical=1, options=[opt(0x9999, 0x05, b"abcd")])),
     PASS_INNER.format(17, 0)),
    ("geneve_version_1", "generic", geneve(GENEVE(version=1, vni=18, proto=0x6558)), "drop tunnel_bad_version"),
    ("geneve_version_3", "generic", geneve(GENEVE(version=3, vni=18, proto=0x6558)), "drop tunnel_bad_version"),
    # Opt Len 2 words (8 bytes) holding an option that claims 8 bytes of data (12 in all).
    ("geneve_option_longer_than_opt_len", "generic",
     raw_geneve(bytes([0x02, 0, 0x65, 0x58, 0, 0, 19, 0]) + bytes([0x99, 0x99, 1, 2]) + b"abcd",
                bytes(INNER)), "drop tunnel_bad_options"),
    # Opt Len 3 words: one 8-byte option, then 4 bytes that announce 4 more.
    ("geneve_option_lengths_do_not_add_up", "generic",
     raw_geneve(bytes([0x03, 0, 0x65, 0x58, 0, 0, 19, 0]) + bytes([0x99, 0x99, 1, 1]) + b"abcd"
                + bytes([0x99, 0x99, 2, 1]), bytes(INNER)), "drop tunnel_bad_options"),
    # Opt Len 10 words (40 bytes) but the datagram ends 12 bytes into the options.
    ("geneve_truncated_options", "generic",
     raw_geneve(bytes([0x0A, 0, 0x65, 0x58, 0, 0, 20, 0]) + bytes([0x99, 0x99, 1, 2]) + b"abcdefgh"),
     "drop tunnel_truncated"),
    ("geneve_truncated_header", "generic", raw_geneve(bytes([0, 0, 0x65, 0x58, 0])), "drop tunnel_truncated"),
    ("geneve_oam", "generic", geneve(GENEVE(vni=21, proto=0x6558, oam=1)), "control"),
    ("geneve_oam_with_options", "generic", geneve(GENEVE(vni=21, proto=0x6558, oam=1, options=GWLB)), "control"),
    # OAM without the options GWLB requires of data traffic: still to the control path.
    ("gwlb_oam_without_options", "gwlb", geneve(GENEVE(vni=21, proto=0x6558, oam=1)), "control"),
    ("geneve_bad_udp_checksum", "generic", geneve(GENEVE(vni=22, proto=0x6558), chksum=0x1234),
     "drop tunnel_bad_udp_checksum"),
    ("geneve_zero_udp_checksum_ipv4", "generic", geneve(GENEVE(vni=23, proto=0x6558), chksum=0),
     PASS_INNER.format(23, 0)),
    ("geneve_ipv6_outer", "generic", geneve(GENEVE(vni=24, proto=0x6558), outer=IPv6(**O6)),
     PASS_INNER.format(24, 0)),
    ("geneve_ipv6_outer_zero_udp_checksum", "generic",
     geneve(GENEVE(vni=25, proto=0x6558), outer=IPv6(**O6), chksum=0), "drop tunnel_bad_udp_checksum"),
    ("geneve_reserved_bits_ignored", "generic",
     geneve(GENEVE(vni=26, proto=0x6558, reserved=0x3F, reserved2=0xFF,
                   options=[GeneveOptions(classid=0x0108, type=3, reserved=7, data=b"\x03" * 4)])),
     PASS_INNER.format(26, 4)),
    ("geneve_unknown_protocol", "generic", geneve(GENEVE(vni=27, proto=0x88CC)), "drop tunnel_bad_protocol"),
    ("geneve_other_port", "generic", geneve(GENEVE(vni=28, proto=0x6558), dport=6082), "notunnel"),
    # Outer fragments: a first fragment to a tunnel port is dropped (never passed on as plain
    # UDP); a later one carries no port, so without local addresses nothing says it is a
    # tunnel's (with them, see the "local" cases).
    ("geneve_outer_fragment", "generic",
     Ether(**E) / IP(flags="MF", **O4) / UDP(sport=1, dport=6081) / GENEVE(vni=29, proto=0x6558) / INNER,
     "drop tunnel_fragmented"),
    ("geneve_outer_later_fragment", "generic",
     Ether(**E) / IP(frag=8, proto=17, **O4) / Raw(b"\x00" * 24), "notunnel"),
    # Every outer the parse stage accepts is decapsulated with every check (RFC 8200 §4,
    # RFC 6946): IPv6 extension headers, an atomic fragment, VLAN tags, IPv4 options.
    ("geneve_ipv6_outer_hop_by_hop", "generic",
     geneve(GENEVE(vni=40, proto=0x6558), outer=IPv6(**O6) / IPv6ExtHdrHopByHop()),
     PASS_INNER.format(40, 0)),
    ("geneve_ipv6_outer_destination_options", "generic",
     geneve(GENEVE(vni=41, proto=0x6558), outer=IPv6(**O6) / IPv6ExtHdrDestOpt()),
     PASS_INNER.format(41, 0)),
    ("geneve_ipv6_outer_atomic_fragment", "generic",
     geneve(GENEVE(vni=42, proto=0x6558), outer=IPv6(**O6) / IPv6ExtHdrFragment(offset=0, m=0, id=7)),
     PASS_INNER.format(42, 0)),
    ("vxlan_ipv6_outer_hop_by_hop_and_destination_options", "generic",
     vxlan(VXLAN(vni=43), outer=IPv6(**O6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()),
     PASS_INNER.format(43, 0)),
    # Routing headers at their last segment (RFC 8754's SRH; RFC 5095's deprecated type 0,
    # whose Segments Left of 0 makes it ignored, RFC 8200 §4.4) and an Authentication Header.
    ("vxlan_ipv6_outer_segment_routing_last_segment", "generic",
     vxlan(VXLAN(vni=70), outer=IPv6(**O6) / IPv6ExtHdrSegmentRouting(addresses=[O6["dst"]], segleft=0)),
     PASS_INNER.format(70, 0)),
    ("vxlan_ipv6_outer_routing_type0_no_segments_left", "generic",
     vxlan(VXLAN(vni=71), outer=IPv6(**O6) / IPv6ExtHdrRouting(addresses=[], segleft=0)),
     PASS_INNER.format(71, 0)),
    ("geneve_ipv6_outer_authentication_header", "generic",
     behind_ah(UDP(sport=50000, dport=6081) / GENEVE(vni=72, proto=0x6558) / INNER),
     PASS_INNER.format(72, 0)),
    ("vxlan_ipv6_outer_first_fragment", "generic",
     vxlan(VXLAN(vni=44), outer=IPv6(**O6) / IPv6ExtHdrFragment(offset=0, m=1, id=8)),
     "drop tunnel_fragmented"),
    ("vxlan_ipv6_outer_zero_udp_checksum_behind_hop_by_hop", "generic",
     Ether(**E) / IPv6(**O6) / IPv6ExtHdrHopByHop() / UDP(sport=50001, dport=4789, chksum=0)
     / VXLAN(vni=45) / INNER, "drop tunnel_bad_udp_checksum"),
    ("vxlan_vlan_outer", "generic",
     Ether(**E) / Dot1Q(vlan=100) / IP(**O4) / UDP(sport=50001, dport=4789) / VXLAN(vni=46) / INNER,
     PASS_INNER.format(46, 0)),
    ("vxlan_qinq_outer", "generic",
     Ether(**E) / Dot1AD(vlan=100) / Dot1Q(vlan=200) / IP(**O4) / UDP(sport=50001, dport=4789)
     / VXLAN(vni=47) / INNER, PASS_INNER.format(47, 0)),
    ("geneve_qinq_ipv6_outer", "generic",
     Ether(**E) / Dot1AD(vlan=100) / Dot1Q(vlan=200) / IPv6(**O6) / UDP(sport=50000, dport=6081)
     / GENEVE(vni=48, proto=0x6558) / INNER, PASS_INNER.format(48, 0)),
    ("vxlan_qinq_outer_bad_udp_checksum", "generic",
     Ether(**E) / Dot1AD(vlan=100) / Dot1Q(vlan=200) / IP(**O4) / UDP(sport=1, dport=4789, chksum=0x1234)
     / VXLAN(vni=49) / INNER, "drop tunnel_bad_udp_checksum"),
    ("vxlan_three_vlan_tags", "generic",
     Ether(**E) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(**O4) / UDP(sport=1, dport=4789)
     / VXLAN(vni=50) / INNER, "drop vlan_too_deep"),
    ("vxlan_ipv4_options_outer", "generic",
     vxlan(VXLAN(vni=51), outer=IP(options=[IPOption_RR(routers=["192.0.2.7"])], **O4)),
     PASS_INNER.format(51, 0)),
    ("gwlb_ipv6_outer_hop_by_hop_missing_options", "gwlb",
     geneve(GENEVE(vni=52, proto=0x0800), INNER_IP, outer=IPv6(**O6) / IPv6ExtHdrHopByHop()),
     "drop tunnel_missing_option"),
    # Non-IP inner frames follow the inner parse setting.
    ("strict_vxlan_inner_arp", "strict", vxlan(VXLAN(vni=53), Ether(**E) / ARP(pdst="10.0.0.9")),
     "drop non_ip"),
    ("strict_geneve_inner_lldp", "strict",
     geneve(GENEVE(vni=54, proto=0x6558), Ether(dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"\x02" * 20)),
     "drop non_ip"),
    ("geneve_inner_lldp", "generic",
     geneve(GENEVE(vni=54, proto=0x6558), Ether(dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"\x02" * 20)),
     "control"),
    ("strict_vxlan_inner_ipv4", "strict", vxlan(VXLAN(vni=55)), PASS_INNER.format(55, 0)),
    # The outer destination must be ours.
    ("local_vxlan_to_us", "local", vxlan(VXLAN(vni=56)), PASS_INNER.format(56, 0)),
    ("local_vxlan_to_another_ip", "local",
     vxlan(VXLAN(vni=57), outer=IP(src="192.0.2.1", dst="192.0.2.9")), "drop tunnel_not_local"),
    ("local_geneve_to_another_ipv6", "local",
     geneve(GENEVE(vni=58, proto=0x6558), outer=IPv6(src="2001:db8::1", dst="2001:db8::9")),
     "drop tunnel_not_local"),
    ("local_geneve_ipv6_to_us", "local", geneve(GENEVE(vni=59, proto=0x6558), outer=IPv6(**O6)),
     PASS_INNER.format(59, 0)),
    ("local_vxlan_to_another_mac", "local",
     Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:99") / IP(**O4) / UDP(sport=1, dport=4789)
     / VXLAN(vni=60) / INNER, "drop tunnel_not_local"),
    ("local_plain_udp_to_another_ip", "local",
     Ether(**E) / IP(src="192.0.2.1", dst="192.0.2.9") / UDP(sport=1, dport=53), "notunnel"),
    # A later fragment of a UDP datagram to our underlay address may be a tunnel packet's tail
    # (its first fragment is dropped): never passed on as plain traffic. To another address,
    # or of TCP, it is not a tunnel's.
    ("local_outer_later_fragment_to_us", "local",
     Ether(**E) / IP(frag=8, proto=17, **O4) / Raw(b"\x00" * 24), "drop tunnel_fragmented"),
    ("local_ipv6_outer_later_fragment_to_us", "local",
     Ether(**E) / IPv6(**O6) / IPv6ExtHdrFragment(offset=3, m=0, id=9, nh=17) / Raw(b"\x00" * 24),
     "drop tunnel_fragmented"),
    ("local_outer_later_fragment_to_another_ip", "local",
     Ether(**E) / IP(frag=8, proto=17, src="192.0.2.1", dst="192.0.2.9") / Raw(b"\x00" * 24),
     "notunnel"),
    ("local_outer_later_tcp_fragment_to_us", "local",
     Ether(**E) / IP(frag=8, proto=6, **O4) / Raw(b"\x00" * 24), "notunnel"),
    # Tunnels in tunnels: GWLB-style Geneve with a bare IP payload carrying VXLAN (Traffic
    # Mirroring behind a GWLB), Geneve carrying Ethernet carrying Geneve, and one level too deep.
    ("nested_geneve_bare_ip_vxlan", "nested",
     geneve(GENEVE(vni=61, proto=0x0800), IP(src="192.0.2.5", dst="192.0.2.6")
            / UDP(sport=50002, dport=4789) / VXLAN(vni=62) / INNER),
     "pass2 61 62 17 1234 80"),
    ("nested_geneve_ethernet_geneve", "nested",
     geneve(GENEVE(vni=63, proto=0x6558), Ether(**E) / IPv6(**O6) / UDP(sport=50003, dport=6081)
            / GENEVE(vni=64, proto=0x0800) / INNER_IP),
     "pass2 63 64 6 4321 443"),
    ("nested_three_deep", "nested",
     geneve(GENEVE(vni=65, proto=0x0800), IP(src="192.0.2.5", dst="192.0.2.6")
            / UDP(sport=50002, dport=4789) / VXLAN(vni=66)
            / Ether(**E) / IP(**O4) / UDP(sport=50004, dport=4789) / VXLAN(vni=67) / INNER),
     "drop tunnel_too_deep"),
    ("nested_single_tunnel", "nested", vxlan(VXLAN(vni=68)), PASS_INNER.format(68, 0)),
    ("geneve_outer_ipv4_bad_checksum", "generic",
     Ether(**E) / IP(chksum=0x1111, **O4) / UDP(sport=1, dport=6081) / GENEVE(vni=30, proto=0x6558) / INNER,
     "drop ipv4_bad_checksum"),
    ("gwlb_all_options", "gwlb", geneve(GENEVE(vni=31, proto=0x0800, options=GWLB), INNER_IP),
     "pass 31 6 4321 443 7"),
    ("gwlb_missing_flow_cookie", "gwlb", geneve(GENEVE(vni=32, proto=0x0800, options=GWLB[:2]), INNER_IP),
     "drop tunnel_missing_option"),
    ("gwlb_flow_cookie_wrong_length", "gwlb",
     geneve(GENEVE(vni=33, proto=0x0800, options=GWLB[:2] + [opt(0x0108, 3, b"\x03" * 8)]), INNER_IP),
     "drop tunnel_missing_option"),
    ("gwlb_vxlan_is_not_for_it", "gwlb", vxlan(VXLAN(vni=34)), "drop not_tunnel"),
    ("vxlan_valid", "generic", vxlan(VXLAN(vni=100)), PASS_INNER.format(100, 0)),
    ("vxlan_linux_port_8472", "generic", vxlan(VXLAN(vni=101), dport=8472), PASS_INNER.format(101, 0)),
    ("vxlan_without_i_flag", "generic", vxlan(VXLAN(flags=0x00, vni=102)), "drop tunnel_bad_flags"),
    ("vxlan_other_flags_only", "generic", vxlan(VXLAN(flags=0xF7, vni=103)), "drop tunnel_bad_flags"),
    # Raw bytes: scapy reinterprets the G/P flag bits as VXLAN-GBP/GPE fields.
    ("vxlan_reserved_flags_ignored", "generic",
     vxlan(Raw(bytes([0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 104, 0xFF]))), PASS_INNER.format(104, 0)),
    ("vxlan_reserved_fields_ignored", "generic",
     vxlan(VXLAN(flags=0x08, reserved1=0xFF, reserved2=0xFF, vni=105)), PASS_INNER.format(105, 0)),
    ("vxlan_ipv6_outer", "generic", vxlan(VXLAN(vni=106), outer=IPv6(**O6)), PASS_INNER.format(106, 0)),
    ("vxlan_truncated", "generic",
     Ether(**E) / IP(**O4) / UDP(sport=1, dport=4789) / Raw(b"\x08\x00\x00\x00"), "drop tunnel_truncated"),
    ("vxlan_inner_arp", "generic", vxlan(VXLAN(vni=107), Ether(**E) / ARP(pdst="10.0.0.9")), "control"),
    ("vxlan_inner_ipv4_bad_total_length", "generic",
     vxlan(VXLAN(vni=108), Ether(**E) / IP(src="10.0.0.1", dst="10.0.0.2", len=200) / UDP()),
     "drop ipv4_bad_total_length"),
    ("vxlan_inner_truncated_ethernet", "generic", vxlan(VXLAN(vni=109), Raw(b"\x02\x00\x00")),
     "drop eth_truncated"),
    ("plain_udp", "generic", Ether(**E) / IP(**O4) / UDP(sport=1, dport=53) / Raw(b"x"), "notunnel"),
    ("plain_tcp", "generic", Ether(**E) / IP(**O4) / TCP(sport=1, dport=6081), "notunnel"),
]

frames = []
with open(os.path.join(OUT, "cases.tsv"), "w") as f:
    for name, profile, frame, expected in cases:
        f.write(f"{name}\t{profile}\t{expected}\n")
        frames.append(frame)
wrpcap(os.path.join(OUT, "cases.pcap"), frames)
