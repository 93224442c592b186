#!/usr/bin/env python3
"""Writes gwlb.pcap, the tunnel capture `nf-pcap` shows in the README: traffic as AWS
Gateway Load Balancer delivers it to an appliance, built with scapy (deterministic).

Geneve over IPv4 to port 6081, VNI 0, the three GWLB options (class 0x0108: endpoint id,
attachment id, flow cookie) and a bare IP payload (protocol type 0x0800 / 0x86DD): a TCP
connection over IPv4 from its SYN on, with data both ways, and a UDP exchange over IPv6.
The last frame is a control message (O bit set, no options). Frame times are one millisecond
apart. Run with Debian's python3 (python3-scapy): /usr/bin/python3 make_gwlb_pcap.py [OUT_DIR]
"""
import os
import sys

from scapy.all import ICMP, IP, IPv6, TCP, UDP, Ether, Raw, wrpcap
from scapy.contrib.geneve import GENEVE, GeneveOptions

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
GWLB, APPLIANCE = "10.0.1.10", "10.0.2.20"


def gwlb_options(cookie):
    return [
        GeneveOptions(classid=0x0108, type=1, data=b"\x11" * 8),
        GeneveOptions(classid=0x0108, type=2, data=b"\x22" * 8),
        GeneveOptions(classid=0x0108, type=3, data=cookie.to_bytes(4, "big")),
    ]


def to_appliance(inner, cookie, sport):
    proto = 0x86DD if inner.haslayer(IPv6) else 0x0800
    return (Ether(src="02:00:00:00:01:0a", dst="02:00:00:00:02:14")
            / IP(src=GWLB, dst=APPLIANCE)
            / UDP(sport=sport, dport=6081)
            / GENEVE(vni=0, proto=proto, options=gwlb_options(cookie))
            / inner)


client, server = "172.16.0.5", "198.51.100.7"
c2s = dict(src=client, dst=server)
s2c = dict(src=server, dst=client)
tcp = [
    IP(**c2s) / TCP(sport=40000, dport=443, flags="S", seq=100),
    IP(**s2c) / TCP(sport=443, dport=40000, flags="SA", seq=500, ack=101),
    IP(**c2s) / TCP(sport=40000, dport=443, flags="A", seq=101, ack=501),
    IP(**c2s) / TCP(sport=40000, dport=443, flags="PA", seq=101, ack=501) / Raw(b"hello"),
    IP(**s2c) / TCP(sport=443, dport=40000, flags="PA", seq=501, ack=106) / Raw(b"world!"),
    IP(**c2s) / TCP(sport=40000, dport=443, flags="FA", seq=106, ack=507),
]
udp6 = [
    IPv6(src="2001:db8::5", dst="2001:db8::7") / UDP(sport=40001, dport=9999) / Raw(b"query"),
    IPv6(src="2001:db8::7", dst="2001:db8::5") / UDP(sport=9999, dport=40001) / Raw(b"answer"),
]
frames = [to_appliance(p, 0xC0FFEE, 50000) for p in tcp]
frames += [to_appliance(p, 0xBEEF, 50001) for p in udp6]
frames.append(Ether(src="02:00:00:00:01:0a", dst="02:00:00:00:02:14")
              / IP(src=GWLB, dst=APPLIANCE) / UDP(sport=50002, dport=6081)
              / GENEVE(vni=0, oam=1, proto=0x0800) / IP(src=GWLB, dst=APPLIANCE) / ICMP())
for i, f in enumerate(frames):
    f.time = 1_700_000_000 + i / 1000
wrpcap(f"{OUT}/gwlb.pcap", frames)
