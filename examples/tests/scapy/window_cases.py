#!/usr/bin/env python3
"""TCP segments built by scapy, in order, that nf's TCP window tracking
(parse -> Conntrack<TcpWindow>) must pass or drop.

Usage: window_cases.py OUT_DIR  -> writes OUT_DIR/cases.pcap and OUT_DIR/cases.tsv, one row per
frame: name, expected outcome (`pass` or `drop REASON`). Each connection is a script: its
handshake, data both ways, then segments just inside and just outside the windows, far
outside (blind injection), resets with wrong and right sequence numbers, retransmissions,
window scaling and SACK. IPv4 and IPv6 connections are interleaved, so sessions must not mix.
"""
import sys
from scapy.all import Ether, IP, IPv6, TCP, Raw
from frames import write_pcap

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
cases = []
PASS = "pass"
OUT = "drop tcp_out_of_window"
BAD_RST = "drop tcp_rst_out_of_window"


class Conn:
    """One connection: client and server addresses, ports, sequence numbers so far."""

    def __init__(self, name, family, client, server, sport, dport, isn_c, isn_s):
        self.name, self.family = name, family
        self.c, self.s, self.sport, self.dport = client, server, sport, dport
        self.isn_c, self.isn_s = isn_c, isn_s

    def seg(self, label, from_client, flags, seq, ack, outcome, data=b"", window=1000,
            options=None):
        ip = IP if self.family == 4 else IPv6
        src, dst = (self.c, self.s) if from_client else (self.s, self.c)
        sp, dp = (self.sport, self.dport) if from_client else (self.dport, self.sport)
        tcp = TCP(sport=sp, dport=dp, flags=flags, seq=seq % 2**32, ack=ack % 2**32,
                  window=window, options=options or [])
        frame = E / ip(src=src, dst=dst) / tcp
        if data:
            frame = frame / Raw(data)
        cases.append((f"{self.name}: {label}", bytes(frame), outcome))


def script(k, scale):
    """A connection's life; `scale` = (client, server) window scale options or None."""
    c, s = k.isn_c + 1, k.isn_s + 1
    opt_c = [("WScale", scale[0]), ("SAckOK", b"")] if scale else [("SAckOK", b"")]
    opt_s = [("WScale", scale[1]), ("SAckOK", b"")] if scale else [("SAckOK", b"")]
    k.seg("SYN", True, "S", k.isn_c, 0, PASS, options=opt_c)
    k.seg("SYN retransmitted", True, "S", k.isn_c, 0, PASS, options=opt_c)
    k.seg("SYN+ACK", False, "SA", k.isn_s, c, PASS, options=opt_s)
    k.seg("ACK", True, "A", c, s, PASS)
    # The server's window: 1000 bytes, scaled by its shift when both offered scaling.
    win_s = 1000 << (scale[1] if scale else 0)
    # The client's (1000 << 14 is 16 MB): "far" is beyond it.
    far_c = (1000 << (scale[0] if scale else 0)) + 2_000_000
    k.seg("server window update", False, "A", s, c, PASS)
    k.seg("request 300 B", True, "PA", c, s, PASS, data=b"q" * 300)
    k.seg("response 500 B", False, "PA", s, c + 300, PASS, data=b"r" * 500)
    k.seg("ACK of the response", True, "A", c + 300, s + 500, PASS)
    k.seg("request retransmitted", True, "PA", c, s + 500, PASS, data=b"q" * 300)
    k.seg("data at the window's right edge", True, "PA", c + 300 + win_s - 1, s + 500, PASS,
          data=b"e")
    k.seg("data one byte beyond the edge", True, "PA", c + 300 + win_s + 1, s + 500, OUT,
          data=b"x" * 10)
    k.seg("blind data 2^30 ahead", True, "PA", c + 2**30, s + 500, OUT, data=b"x" * 10)
    k.seg("blind data from the server", False, "PA", s + far_c, c + 300, OUT,
          data=b"x" * 10)
    k.seg("ACK of data never sent", True, "A", c + 300, s + 501, OUT)
    k.seg("hopelessly old ACK", True, "A", c + 300, s - far_c, OUT)
    k.seg("SACK beyond what was sent", True, "A", c + 300, s + 200, OUT,
          options=[("SAck", ((s + 300) % 2**32, (s + 900) % 2**32))])
    k.seg("SACK of what was sent", True, "A", c + 300, s + 200, PASS,
          options=[("SAck", ((s + 300) % 2**32, (s + 500) % 2**32))])
    k.seg("RST far outside", False, "R", s + far_c, 0, BAD_RST)
    k.seg("RST+ACK before the window", True, "RA", c - 80_000, s + 500, BAD_RST)
    k.seg("still alive after the forged resets", True, "A", c + 300, s + 500, PASS)
    k.seg("RST in the window", False, "R", s + 500, 0, PASS)


conns = [
    (Conn("v4 scaled", 4, "10.0.0.1", "192.0.2.10", 40000, 443, 0xFFFFFF00, 5000), (7, 4)),
    (Conn("v6 unscaled", 6, "2001:db8:1::1", "2001:db8:2::10", 40001, 443, 77, 2**31), None),
    (Conn("v4 unscaled", 4, "10.0.0.2", "192.0.2.10", 40002, 80, 1_000_000, 9), None),
    (Conn("v6 scaled", 6, "2001:db8:1::2", "2001:db8:2::10", 40003, 80, 3, 2**32 - 10), (14, 2)),
]
for k, scale in conns:
    script(k, scale)

# Scripts run one after the other but write interleaved: rotate through the connections.
per = len(cases) // len(conns)
order = [cases[i * per + j] for j in range(per) for i in range(len(conns))]
out = sys.argv[1]
write_pcap(f"{out}/cases.pcap", [f for _, f, _ in order])
with open(f"{out}/cases.tsv", "w") as t:
    for name, _, outcome in order:
        t.write(f"{name}\t{outcome}\n")
