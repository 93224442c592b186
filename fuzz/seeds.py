#!/usr/bin/env python3
"""Writes seed corpora for the geneve and vxlan fuzz targets: the UDP payloads (tunnel
header + inner frame) of the first frames of the shared captures; for nat_alloc, operation
sequences for each profile (a setup of six bytes, then arbitrary-encoded operations) from a
fixed-seed generator, so the corpus is reproducible; and, for the other structure-aware
targets that decode their input with `arbitrary` (lpm, limiter, classifier, lb_stage,
nat_stage, sg_stage), pseudo-random byte strings
of growing length from a fixed seed (any bytes decode; longer ones give more routes,
arrivals and lookups).

Run from fuzz/: python3 seeds.py ../../shared/testdata/pcap (or wherever the captures are).
"""
import os
import random
import struct
import sys

CAPTURES = {
    "geneve": (["geneve.pcap", "geneve-gcp.pcap", "gso-ipv4-geneve-ipv4.pcap"], 6081),
    "vxlan": (["vxlan.pcap", "vxlan_port_8472.pcap", "gso-ipv6-vxlan-ipv6.pcap"], (4789, 8472)),
}
PER_CAPTURE = 3
# Structure-aware targets: (number of seeds, fixed RNG seed).
RANDOM_SEEDS = {
    "lpm": (8, 0x1B9),
    "limiter": (8, 0x11B),
    "classifier": (8, 0xC1A),
    "lb_stage": (8, 0x1B5),
    "nat_stage": (8, 0x5A7),
    "sg_stage": (8, 0x56A),
}


def frames(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        yield linktype, data[off : off + incl]
        off += incl


def udp_payload(linktype, frame):
    if linktype == 1:  # Ethernet
        et, at = struct.unpack(">H", frame[12:14])[0], 14
        while et in (0x8100, 0x88A8):
            et, at = struct.unpack(">H", frame[at + 2 : at + 4])[0], at + 4
    elif linktype == 113:  # Linux cooked capture
        et, at = struct.unpack(">H", frame[14:16])[0], 16
    else:
        return None
    if et == 0x0800:
        proto, at = frame[at + 9], at + (frame[at] & 0x0F) * 4
    elif et == 0x86DD:
        proto, at = frame[at + 6], at + 40
    else:
        return None
    if proto != 17:
        return None
    return struct.unpack(">H", frame[at + 2 : at + 4])[0], frame[at + 8 :]


def nat_alloc_seeds():
    """Deterministic byte strings for nat_alloc: one per (profile, port words, quarantine)
    mix, long enough for a few hundred operations that fill, free and age the ports."""
    os.makedirs("corpus/nat_alloc", exist_ok=True)
    state = 0x6E61_7430
    n = 0
    for profile in (0, 1, 2, 2 | 0x40 | 0x28):
        for words, quarantine in ((0, 1), (3, 0), (1, 4)):
            setup = bytes([profile, words, quarantine, 200, 32, 0])
            body = bytearray()
            for _ in range(1500):
                state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
                body.append(state >> 56)
            with open(f"corpus/nat_alloc/seed-{n:02}", "wb") as out:
                out.write(setup + bytes(body))
            n += 1
    print("nat_alloc", n, "seeds")


def main():
    nat_alloc_seeds()
    src = sys.argv[1] if len(sys.argv) > 1 else "../../shared/testdata/pcap"
    for target, (files, ports) in CAPTURES.items():
        ports = ports if isinstance(ports, tuple) else (ports,)
        os.makedirs(f"corpus/{target}", exist_ok=True)
        n = 0
        for name in files:
            taken = 0
            for linktype, frame in frames(os.path.join(src, name)):
                got = udp_payload(linktype, frame)
                if got is None or got[0] not in ports or taken == PER_CAPTURE:
                    continue
                with open(f"corpus/{target}/seed-{n:02}", "wb") as out:
                    out.write(got[1])
                n += 1
                taken += 1
        print(target, n, "seeds")
    for target, (count, seed) in RANDOM_SEEDS.items():
        rng = random.Random(seed)
        os.makedirs(f"corpus/{target}", exist_ok=True)
        for n in range(count):
            with open(f"corpus/{target}/seed-{n:02}", "wb") as out:
                out.write(bytes(rng.getrandbits(8) for _ in range(16 << n)))
        print(target, count, "seeds")


if __name__ == "__main__":
    main()
