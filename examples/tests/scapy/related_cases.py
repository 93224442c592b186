#!/usr/bin/env python3
"""ICMP errors built by scapy that nf's conntrack stage must relate to the session of the
flow they quote, or drop with the expected reason.

Usage: related_cases.py OUT_DIR  -> writes OUT_DIR/cases.pcap and OUT_DIR/cases.tsv, one row
per frame, in order: name, expected outcome. First come the packets that open the sessions
(every outcome `session ...`), then the ICMP errors. Outcomes:
  session FLOW original|reply   a packet of FLOW's session (the first one names the session)
  related original|reply FLOW   an ICMP error related to FLOW's session, travelling that way
  drop REASON                   dropped with this nf DropReason name

An error about a client->server packet travels towards the client: direction `reply`; an
error about a server->client packet travels towards the server: `original`.
"""
import sys
from scapy.all import (Dot1Q, Ether, ICMP, IP, IPOption_NOP, IPOption_RR,
                       IPOption_Router_Alert, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                       IPv6ExtHdrHopByHop, ICMPv6DestUnreach, ICMPv6EchoReply,
                       ICMPv6EchoRequest, ICMPv6PacketTooBig, ICMPv6ParamProblem,
                       ICMPv6TimeExceeded, Raw, TCP, UDP)
from frames import write_pcap

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
ROUTER4, ROUTER6 = "203.0.113.1", "2001:db8:ff::1"
cases = []


def case(name, frame, outcome):
    cases.append((name, bytes(frame), outcome))


# --- the flows: (client IP header, server IP header, client->server L4, server->client L4) --
def v4(a, b, **kw):
    return IP(src=a, dst=b, **kw)


def v6(a, b, **kw):
    return IPv6(src=a, dst=b, **kw)


C4, S4 = "10.0.0.1", "192.0.2.10"
C6, S6 = "2001:db8:1::1", "2001:db8:2::10"
FLOWS = {
    # name: (family, client, server, request L4, answer L4)
    "tcp4": (4, C4, S4, lambda: TCP(sport=40000, dport=443, flags="S", seq=1000),
             lambda: TCP(sport=443, dport=40000, flags="SA", seq=5000, ack=1001)),
    "udp4": (4, C4, S4, lambda: UDP(sport=5353, dport=53) / Raw(b"query"),
             lambda: UDP(sport=53, dport=5353) / Raw(b"answer")),
    "icmp4": (4, C4, S4, lambda: ICMP(type=8, id=0x1234, seq=1) / Raw(b"ping"),
              lambda: ICMP(type=0, id=0x1234, seq=1) / Raw(b"ping")),
    "tcp6": (6, C6, S6, lambda: TCP(sport=40001, dport=443, flags="S", seq=1000),
             lambda: TCP(sport=443, dport=40001, flags="SA", seq=5000, ack=1001)),
    "udp6": (6, C6, S6, lambda: UDP(sport=5354, dport=53) / Raw(b"query"),
             lambda: UDP(sport=53, dport=5354) / Raw(b"answer")),
    "icmp6": (6, C6, S6, lambda: ICMPv6EchoRequest(id=0x4321, seq=1, data=b"ping"),
              lambda: ICMPv6EchoReply(id=0x4321, seq=1, data=b"ping")),
}


def packet(flow, towards_server, **ip):
    """The IP packet of `flow` in one direction (client->server if `towards_server`)."""
    fam, c, s, req, ans = FLOWS[flow]
    mk = v4 if fam == 4 else v6
    return mk(c, s, **ip) / req() if towards_server else mk(s, c, **ip) / ans()


for flow in FLOWS:
    case(f"{flow}_request", E / packet(flow, True), f"session {flow} original")
    case(f"{flow}_answer", E / packet(flow, False), f"session {flow} reply")


# --- ICMP errors ---------------------------------------------------------------------------
def error(icmp, quoted, towards_server, fam, cut=None):
    """`icmp` from a router carrying `quoted` (its bytes, cut to `cut`), sent back to the
    source of the quoted packet (the client if it went `towards_server`)."""
    q = bytes(quoted)[:cut]
    return E / outer_for(fam, towards_server) / icmp / Raw(q)


def outer_for(fam, towards_server):
    """Outer header of an error about a packet going `towards_server`: from a router, to
    the packet's source."""
    c, s = (C4, S4) if fam == 4 else (C6, S6)
    dst = c if towards_server else s
    return IP(src=ROUTER4, dst=dst) if fam == 4 else IPv6(src=ROUTER6, dst=dst)


V4_ERRORS = {
    "host_unreach": lambda: ICMP(type=3, code=1),
    "port_unreach": lambda: ICMP(type=3, code=3),
    "frag_needed": lambda: ICMP(type=3, code=4, nexthopmtu=1400),
    "time_exceeded": lambda: ICMP(type=11, code=0),
    "param_problem": lambda: ICMP(type=12, code=0, ptr=20),
}
V6_ERRORS = {
    "dest_unreach": lambda: ICMPv6DestUnreach(code=4),
    "packet_too_big": lambda: ICMPv6PacketTooBig(mtu=1280),
    "time_exceeded": lambda: ICMPv6TimeExceeded(code=0),
    "param_problem": lambda: ICMPv6ParamProblem(code=1, ptr=40),
}

for flow, (fam, _, _, _, _) in FLOWS.items():
    for kind, icmp in (V4_ERRORS if fam == 4 else V6_ERRORS).items():
        for towards_server, way, direction in ((True, "request", "reply"),
                                               (False, "answer", "original")):
            hop = dict(ttl=1) if fam == 4 else dict(hlim=1)
            quoted = packet(flow, towards_server, **(hop if kind == "time_exceeded" else {}))
            # RFC 792 routers quote the IP header and 8 bytes; RFC 1812 / 4443 ones more.
            cut = None
            if fam == 4 and kind in ("host_unreach", "time_exceeded"):
                cut = 28
            case(f"{flow}_{kind}_about_{way}", error(icmp(), quoted, towards_server, fam, cut),
                 f"related {direction} {flow}")

# Inner IPv4 options: the quote's header is longer than 20 bytes.
RR = [IPOption_RR(routers=["10.9.9.9"])]
RA = [IPOption_Router_Alert(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()]
case("tcp4_unreach_about_request_with_rr_option",
     error(ICMP(type=3, code=3), packet("tcp4", True, options=RR), True, 4),
     "related reply tcp4")
case("udp4_unreach_about_answer_with_ra_option_cut_to_ihl_plus_8",
     error(ICMP(type=3, code=3), packet("udp4", False, options=RA), False, 4, cut=36),
     "related original udp4")
case("icmp4_time_exceeded_about_request_with_rr_option",
     error(ICMP(type=11), packet("icmp4", True, ttl=1, options=RR), True, 4),
     "related reply icmp4")

# Inner IPv6 extension headers: the walk finds the transport header behind them.
def with_ext(flow, towards_server, *exts):
    p = packet(flow, towards_server)
    l4 = p.payload
    p.remove_payload()
    for x in exts:
        p = p / x
    return p / l4


DO = IPv6ExtHdrDestOpt
case("tcp6_unreach_about_request_with_dest_opts",
     error(ICMPv6DestUnreach(code=1), with_ext("tcp6", True, DO()), True, 6),
     "related reply tcp6")
case("udp6_too_big_about_answer_with_hbh_and_dest_opts",
     error(ICMPv6PacketTooBig(mtu=1280), with_ext("udp6", False, IPv6ExtHdrHopByHop(), DO()), False, 6),
     "related original udp6")
case("icmp6_time_exceeded_about_request_with_dest_opts",
     error(ICMPv6TimeExceeded(), with_ext("icmp6", True, DO()), True, 6),
     "related reply icmp6")
case("udp6_unreach_about_request_first_fragment",
     error(ICMPv6DestUnreach(code=4),
           with_ext("udp6", True, IPv6ExtHdrFragment(offset=0, m=1, id=77)), True, 6),
     "related reply udp6")

# A VLAN-tagged error: the quote is found after the tag.
case("udp4_unreach_about_request_in_vlan",
     Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=42)
     / IP(src=ROUTER4, dst=C4) / ICMP(type=3, code=3) / Raw(bytes(packet("udp4", True))),
     "related reply udp4")

# Truncated quotes: less than the inner IP header and 8 bytes of its transport header.
TRUNC = "drop icmp_quote_truncated"
case("v4_quote_empty", E / outer_for(4, True) / ICMP(type=3, code=3), TRUNC)
case("v4_quote_12_bytes", error(ICMP(type=3, code=3), packet("udp4", True), True, 4, cut=12), TRUNC)
case("v4_quote_ip_header_only", error(ICMP(type=3, code=3), packet("tcp4", True), True, 4, cut=20), TRUNC)
case("v4_quote_ip_plus_4", error(ICMP(type=11), packet("tcp4", False), False, 4, cut=24), TRUNC)
case("v4_quote_ip_plus_7", error(ICMP(type=3, code=4, nexthopmtu=1400), packet("udp4", True), True, 4, cut=27), TRUNC)
case("v4_quote_options_cut_before_l4_end",
     error(ICMP(type=3, code=3), packet("udp4", True, options=RR), True, 4, cut=28), TRUNC)
case("v4_quote_options_cut_inside_header",
     error(ICMP(type=3, code=3), packet("udp4", True, options=RR), True, 4, cut=22), TRUNC)
case("v6_quote_empty", E / outer_for(6, True) / ICMPv6DestUnreach(), TRUNC)
case("v6_quote_30_bytes", error(ICMPv6DestUnreach(), packet("udp6", True), True, 6, cut=30), TRUNC)
case("v6_quote_ip_header_only", error(ICMPv6PacketTooBig(mtu=1280), packet("tcp6", True), True, 6, cut=40), TRUNC)
case("v6_quote_ip_plus_4", error(ICMPv6TimeExceeded(), packet("udp6", False), False, 6, cut=44), TRUNC)
case("v6_quote_dest_opts_cut",
     error(ICMPv6DestUnreach(), with_ext("tcp6", True, DO(options=[])), True, 6, cut=44), TRUNC)
case("v6_quote_dest_opts_then_l4_cut",
     error(ICMPv6DestUnreach(), with_ext("tcp6", True, DO()), True, 6, cut=52), TRUNC)

# A short quote followed by link-layer trailer bytes (an Ethernet FCS kept by the capture):
# the trailer is not part of the ICMP message and must not complete the quote.
case("v4_quote_ip_plus_4_then_fcs_trailer",
     bytes(error(ICMP(type=3, code=3), packet("udp4", True), True, 4, cut=24)) + b"\xde\xad\xbe\xef",
     TRUNC)
case("v6_quote_ip_plus_4_then_fcs_trailer",
     bytes(error(ICMPv6DestUnreach(), packet("udp6", True), True, 6, cut=44)) + b"\xde\xad\xbe\xef",
     TRUNC)


# A bad inner IPv4 header checksum.
def bad_checksum(ip):
    b = bytearray(bytes(ip))
    b[10] ^= 0x5A
    return bytes(b)


BAD = "drop icmp_quote_bad_checksum"
case("tcp4_unreach_quote_bad_checksum",
     E / IP(src=ROUTER4, dst=C4) / ICMP(type=3, code=3) / Raw(bad_checksum(packet("tcp4", True))), BAD)
case("udp4_time_exceeded_quote_bad_checksum_cut_28",
     E / IP(src=ROUTER4, dst=S4) / ICMP(type=11) / Raw(bad_checksum(packet("udp4", False))[:28]), BAD)
case("icmp4_frag_needed_quote_with_options_bad_checksum",
     E / IP(src=ROUTER4, dst=C4) / ICMP(type=3, code=4, nexthopmtu=1400)
     / Raw(bad_checksum(packet("icmp4", True, options=RR))), BAD)

# Quotes that name no session.
NONE = "drop related_no_session"
case("tcp4_unreach_quoting_unknown_port",
     error(ICMP(type=3, code=3), IP(src=C4, dst=S4) / TCP(sport=40999, dport=443, flags="S"), True, 4),
     NONE)
case("udp4_unreach_quoting_unknown_server",
     error(ICMP(type=3, code=3), IP(src=C4, dst="192.0.2.99") / UDP(sport=5353, dport=53), True, 4),
     NONE)
case("icmp4_unreach_quoting_unknown_echo_id",
     error(ICMP(type=3, code=1), IP(src=C4, dst=S4) / ICMP(type=8, id=0x9999), True, 4), NONE)
case("tcp6_unreach_quoting_unknown_port",
     error(ICMPv6DestUnreach(), IPv6(src=C6, dst=S6) / TCP(sport=40999, dport=443, flags="S"), True, 6),
     NONE)
case("udp6_too_big_quoting_unknown_server",
     error(ICMPv6PacketTooBig(), IPv6(src=C6, dst="2001:db8:2::99") / UDP(sport=5354, dport=53), True, 6),
     NONE)
case("icmp6_time_exceeded_quoting_unknown_echo_id",
     error(ICMPv6TimeExceeded(), IPv6(src=C6, dst=S6) / ICMPv6EchoRequest(id=0x9999), True, 6), NONE)
case("v4_error_quoting_an_icmp_error",
     error(ICMP(type=11), IP(src=C4, dst=S4) / ICMP(type=3, code=3) / Raw(bytes(packet("udp4", True))[:28]), True, 4),
     NONE)
case("v4_error_quoting_an_ipv6_packet",
     E / IP(src=ROUTER4, dst=C4) / ICMP(type=3, code=3) / Raw(bytes(packet("udp6", True))), NONE)
case("v6_error_quoting_a_later_fragment",
     error(ICMPv6DestUnreach(), IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=8, m=0, id=78, nh=17)
           / Raw(b"x" * 16), True, 6), NONE)
case("tcp4_unreach_quoting_the_flow_swapped_ports",
     error(ICMP(type=3, code=3), IP(src=C4, dst=S4) / TCP(sport=443, dport=40000), True, 4), NONE)

if __name__ == "__main__":
    out = sys.argv[1]
    write_pcap(out + "/cases.pcap", [b for _, b, _ in cases])
    with open(out + "/cases.tsv", "w") as f:
        for name, _, outcome in cases:
            f.write(f"{name}\t{outcome}\n")
