"""Helpers shared by the scapy case scripts."""
import struct


def write_pcap(path, frames):
    """Classic pcap, Ethernet link type; raw bytes so runts are written as they are."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, b in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000, i, len(b), len(b)))
            f.write(b)
