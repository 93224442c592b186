#!/usr/bin/env python3
"""Writes demo.pcap, the small capture `pcap-flows` shows in the README.

Built with scapy (an independent implementation), deterministic: fixed addresses and
timestamps. A few connections in both directions (IPv4/IPv6, TCP/UDP/ICMP, one VLAN
tagged), an ARP exchange for the control path, and a handful of malformed frames so the
drop counters have something to count. Run: /usr/bin/python3 make_demo_pcap.py [OUT]
"""
import sys
from scapy.all import ARP, DNS, DNSQR, Dot1Q, Ether, ICMP, IP, IPv6, Raw, TCP, UDP, wrpcap

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def tcp_conn(ip_a, ip_b, l3, sport, dport, data_pkts=3):
    e = Ether(src=A, dst=B)
    r = Ether(src=B, dst=A)
    out = [e / l3(src=ip_a, dst=ip_b) / TCP(sport=sport, dport=dport, flags="S", seq=1000),
           r / l3(src=ip_b, dst=ip_a) / TCP(sport=dport, dport=sport, flags="SA", seq=5000, ack=1001),
           e / l3(src=ip_a, dst=ip_b) / TCP(sport=sport, dport=dport, flags="A", seq=1001, ack=5001)]
    for i in range(data_pkts):
        out.append(e / l3(src=ip_a, dst=ip_b) / TCP(sport=sport, dport=dport, flags="PA", seq=1001 + 100 * i, ack=5001) / Raw(b"x" * 100))
        out.append(r / l3(src=ip_b, dst=ip_a) / TCP(sport=dport, dport=sport, flags="A", seq=5001, ack=1101 + 100 * i))
    out.append(e / l3(src=ip_a, dst=ip_b) / TCP(sport=sport, dport=dport, flags="FA", seq=1301, ack=5001))
    out.append(r / l3(src=ip_b, dst=ip_a) / TCP(sport=dport, dport=sport, flags="FA", seq=5001, ack=1302))
    return out


def frames():
    f = []
    f += tcp_conn("10.0.0.1", "10.0.1.80", IP, 40001, 443)
    f += tcp_conn("2001:db8::1", "2001:db8:1::80", IPv6, 40002, 80, data_pkts=2)
    for i in range(3):
        f.append(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=5300 + i, dport=53) / DNS(id=i, qd=DNSQR(qname="nf.example")))
        f.append(Ether(src=B, dst=A) / IP(src="10.0.0.53", dst="10.0.0.1") / UDP(sport=53, dport=5300 + i) / DNS(id=i, qr=1, qd=DNSQR(qname="nf.example")))
    for seq in range(2):
        f.append(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.2.2") / ICMP(type=8, id=0x4242, seq=seq) / Raw(b"ping"))
        f.append(Ether(src=B, dst=A) / IP(src="10.0.2.2", dst="10.0.0.1") / ICMP(type=0, id=0x4242, seq=seq) / Raw(b"ping"))
    f.append(Ether(src=A, dst=B) / Dot1Q(vlan=42) / IP(src="192.168.42.10", dst="192.168.42.1") / UDP(sport=123, dport=123) / Raw(b"\x23" + b"\0" * 47))
    f.append(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc="10.0.0.1", pdst="10.0.0.254", hwsrc=A))
    # Malformed frames.
    bad_csum = Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.1.80", chksum=0x1234) / UDP(sport=1, dport=2)
    bad_ihl = bytearray(bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.1.80") / UDP(sport=1, dport=2)))
    bad_ihl[14] = 0x44
    truncated = bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.1.80") / TCP(sport=1, dport=2))[:40]
    f += [bad_csum, Ether(bytes(bad_ihl)), Ether(truncated)]
    for i, p in enumerate(f):
        p.time = 1_700_000_000 + i * 0.001
    return f


if __name__ == "__main__":
    wrpcap(sys.argv[1] if len(sys.argv) > 1 else "demo.pcap", frames())
