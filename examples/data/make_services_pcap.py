#!/usr/bin/env python3
"""Writes services.pcap, the capture the README runs through `nf-pcap`'s `snat` and `lb`
stages, built with scapy (deterministic: fixed addresses and times, one millisecond apart).

Source NAT (inside 10.0.0.0/24, public address 203.0.113.1):
  - outbound flows as they leave the inside hosts: a TCP connection's SYN, ACK and data
    from 10.0.0.7 to 198.51.100.20:80, two DNS queries from 10.0.0.8, a ping from 10.0.0.7;
  - a static port forward (TCP 203.0.113.1:8080 -> 10.0.0.5:80): the client's SYN, the
    inside server's SYN+ACK, the client's ACK;
  - an unsolicited inbound SYN to 203.0.113.1:9999 (nothing forwards or maps it).
Load balancing (VIP 192.0.2.10:80, backends on port 8000 in 10.1.0.0/24):
  - twelve clients 198.51.100.100-111 each open a TCP connection to the VIP: SYN, then the
    backend 10.1.0.11's SYN+ACK from port 8000, then the client's ACK.

Run with Debian's python3 (python3-scapy): /usr/bin/python3 make_services_pcap.py [OUT_DIR]
"""
import os
import sys

from scapy.all import DNS, DNSQR, ICMP, IP, TCP, UDP, Ether, Raw, wrpcap

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
IN_MAC, OUT_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
PUBLIC, VIP = "203.0.113.1", "192.0.2.10"


def out_(src, dst):
    """A frame from the inside (or client) side."""
    return Ether(src=IN_MAC, dst=OUT_MAC) / IP(src=src, dst=dst)


def in_(src, dst):
    """A frame from the outside (or backend) side."""
    return Ether(src=OUT_MAC, dst=IN_MAC) / IP(src=src, dst=dst)


def frames():
    f = []
    # Outbound TCP: SYN, ACK, data.
    f.append(out_("10.0.0.7", "198.51.100.20") / TCP(sport=40000, dport=80, flags="S", seq=1000))
    f.append(out_("10.0.0.7", "198.51.100.20") / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=7001))
    f.append(out_("10.0.0.7", "198.51.100.20") / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=7001) / Raw(b"GET / HTTP/1.0\r\n\r\n"))
    # Outbound UDP: two DNS queries from one socket.
    for i in range(2):
        f.append(out_("10.0.0.8", "198.51.100.53") / UDP(sport=5353, dport=53) / DNS(id=0x100 + i, qd=DNSQR(qname="nf.example")))
    # Outbound ping.
    f.append(out_("10.0.0.7", "198.51.100.1") / ICMP(type=8, id=0x77, seq=1) / Raw(b"ping"))
    # The port forward, both ways.
    f.append(in_("198.51.100.9", PUBLIC) / TCP(sport=5555, dport=8080, flags="S", seq=3000))
    f.append(out_("10.0.0.5", "198.51.100.9") / TCP(sport=80, dport=5555, flags="SA", seq=9000, ack=3001))
    f.append(in_("198.51.100.9", PUBLIC) / TCP(sport=5555, dport=8080, flags="A", seq=3001, ack=9001))
    # Unsolicited.
    f.append(in_("198.51.100.66", PUBLIC) / TCP(sport=7777, dport=9999, flags="S", seq=1))
    # Load balancing: twelve clients, each a handshake through the VIP.
    for i in range(12):
        client, port = f"198.51.100.{100 + i}", 50000 + i
        f.append(out_(client, VIP) / TCP(sport=port, dport=80, flags="S", seq=100 * i))
        f.append(in_("10.1.0.11", client) / TCP(sport=8000, dport=port, flags="SA", seq=5000, ack=100 * i + 1))
        f.append(out_(client, VIP) / TCP(sport=port, dport=80, flags="A", seq=100 * i + 1, ack=5001))
    for i, p in enumerate(f):
        p.time = 1_700_000_000 + i * 0.001
    return f


if __name__ == "__main__":
    wrpcap(os.path.join(OUT, "services.pcap"), frames())
