#!/usr/bin/env python3
"""Independent reference for nf-lb's golden vectors (tests/golden.rs), written from the
crate docs' "Stable encodings" section, not from the Rust code: its own SipHash-1-3, the
Maglev fill done by sorting every turn by (round, position) instead of scanning rounds, and
weighted rendezvous with exact integer comparisons.

Run: python3 nf-lb/tests/reference.py   (prints the values golden.rs pins)
"""
import struct

MASK = (1 << 64) - 1


def rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & MASK


def siphash13(key, msg):
    k0, k1 = struct.unpack("<QQ", key)
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def sipround():
        v[0] = (v[0] + v[1]) & MASK; v[1] = rotl(v[1], 13) ^ v[0]; v[0] = rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & MASK; v[3] = rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & MASK; v[3] = rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & MASK; v[1] = rotl(v[1], 17) ^ v[2]; v[2] = rotl(v[2], 32)

    full = len(msg) // 8 * 8
    words = [struct.unpack("<Q", msg[i:i + 8])[0] for i in range(0, full, 8)]
    tail = msg[full:] + bytes(7 - len(msg) % 8)
    words.append(struct.unpack("<Q", tail + bytes([len(msg) & 0xFF]))[0])
    for m in words:
        v[3] ^= m
        sipround()
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(3):
        sipround()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def ident(key, tag, id_bytes):
    return siphash13(key, bytes([tag, len(id_bytes)]) + id_bytes)


def v4(addr, port):
    return bytes([4, *addr]) + struct.pack(">H", port)


def apportion(total, weights):
    wsum = sum(weights)
    q = [total * w // wsum for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % wsum), i))
    for i in order[: total - sum(q)]:
        q[i] += 1
    return q


def maglev(key, m, backends):
    """backends: (id bytes, weight, draining). Returns entries (indices in id order)."""
    bs = sorted(backends, key=lambda b: b[0])
    entries = [None] * m
    pos, skip = {}, {}
    for i, (idb, w, _) in enumerate(bs):
        pos[i] = ident(key, 1, idb) % m
        skip[i] = ident(key, 2, idb) % (m - 1) + 1

    def turns(parts, total):
        ws = [bs[i][1] for i in parts]
        quotas = apportion(total, ws)
        wmax = max(ws)
        order = []
        for j, (i, w, q) in enumerate(zip(parts, ws, quotas)):
            for k in range(1, q + 1):
                order.append((-(-k * wmax // w) - 1, j, i))
        order.sort()
        for _, _, i in order:
            while entries[pos[i]] is not None:
                pos[i] = (pos[i] + skip[i]) % m
            entries[pos[i]] = i
            pos[i] = (pos[i] + skip[i]) % m

    turns([i for i, b in enumerate(bs) if b[1] > 0], m)
    draining = {i for i, b in enumerate(bs) if b[1] > 0 and b[2]}
    if draining:
        freed = 0
        for s, e in enumerate(entries):
            if e in draining:
                entries[s] = None
                freed += 1
        turns([i for i, b in enumerate(bs) if b[1] > 0 and not b[2]], freed)
    return entries


def fnv(entries):
    h = 0xCBF29CE484222325
    for e in entries:
        for b in struct.pack(">I", e):
            h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def flow_hash_v4(key, zone, src, dst, proto, sport, dport):
    # nf-core FlowKey::encode for IPv4: family 4, proto, zone (u32 BE), src, dst, ports (BE).
    msg = bytes([4, proto]) + struct.pack(">I", zone) + bytes(src) + bytes(dst) + struct.pack(">HH", sport, dport)
    return siphash13(key, msg)


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def neg_log2(x):
    x = max(x, 1)
    lz = 64 - x.bit_length()
    m = x << lz
    frac = 0
    for _ in range(32):
        sq = (m * m) >> 63
        frac <<= 1
        if sq >= 1 << 64:
            frac |= 1
            m = sq >> 1
        else:
            m = sq
    return ((1 + lz) << 32) - frac


def rendezvous(key, tag, members, h):
    ms = sorted(members, key=lambda b: b[0])
    best = None
    for i, (idb, w, draining) in enumerate(ms):
        if w == 0 or draining:
            continue
        x = mix64(h ^ ident(key, tag, idb)) | 1
        cand = (neg_log2(x), w, x, i)
        if best is None:
            best = cand
            continue
        l, _, _, _ = cand
        bl, bw, bx, _ = best
        if l * bw < bl * w or (l * bw == bl * w and x > bx):
            best = cand
    return best[3]


KEY = bytes(range(16))
BACKENDS = [(v4([10, 0, 0, i], 80), w, False) for i, w in zip(range(1, 7), [1, 2, 3, 1, 0, 2])]
BACKENDS.append((v4([10, 0, 0, 7], 80), 2, True))
FLOWS = [(7, [198, 51, 100, p], [192, 0, 2, 1], 6, 40000 + p, 443) for p in range(1, 9)]
HASHES = [0, 1, MASK, 0x0123456789ABCDEF, 0x8000000000000000, 0xDEADBEEFCAFEF00D]


def main():
    print("offset/skip of 10.0.0.1:80:", hex(ident(KEY, 1, v4([10, 0, 0, 1], 80))), hex(ident(KEY, 2, v4([10, 0, 0, 1], 80))))
    for m in (1009, 65537):
        e = maglev(KEY, m, BACKENDS)
        counts = [e.count(i) for i in range(len(BACKENDS))]
        print(f"M={m} first16={e[:16]} counts={counts} fnv={fnv(e):#018x}")
        choices = []
        for f in FLOWS:
            h = flow_hash_v4(KEY, *f)
            choices.append(e[(h * m) >> 64])
        print(f"M={m} flows={choices}")
    equal = [(v4([10, 0, 0, i], 80), 1, False) for i in range(1, 11)]
    e = maglev(KEY, 65537, equal)
    print(f"equal10 M=65537 first16={e[:16]} fnv={fnv(e):#018x}")
    members = [(v4([10, 0, 0, i], 80), w, False) for i, w in zip(range(1, 6), [1, 2, 3, 0, 5])]
    print("rendezvous", [rendezvous(KEY, 3, members, h) for h in HASHES])
    print("ecmp", [rendezvous(KEY, 4, members, h) for h in HASHES])
    eq = [(v4([10, 0, 0, i], 80), 4, False) for i in range(1, 6)]
    print("rendezvous equal", [rendezvous(KEY, 3, eq, h) for h in HASHES])
    pool = [(bytes([4, 10, 0, 0, i]) + struct.pack(">H", 8080), i % 2 + 1, False) for i in range(1, 6)]
    e = maglev(KEY, 1009, pool)
    ids = sorted(b[0] for b in pool)
    out = []
    for fields in ("five", "three", "two", "source"):
        row = []
        for i in range(1, 7):
            src, dst, proto, sp, dp = [198, 51, 100, i], [192, 0, 2, 10], 6, 40000 + i, 443
            if fields != "five":
                sp = dp = 0
            if fields in ("two", "source"):
                proto = 0
            if fields == "source":
                dst = [0, 0, 0, 0]
            h = flow_hash_v4(KEY, 1, src, dst, proto, sp, dp)
            row.append(ids[e[(h * 1009) >> 64]][4])
        out.append(row)
    print("listener", out)


if __name__ == "__main__":
    main()
