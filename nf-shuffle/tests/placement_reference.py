# Independent, brute-force reference for the stateless placement (the golden vectors of
# tests/golden.rs, small fleet): builds every zone ring from the documented encodings, then
# sorts every (token, probe) pair by (clockwise distance, position, node id, probe) and takes
# the first distinct nodes, exactly as the crate docs describe, without the crate's merge,
# bucket index or early stops. Run: python3 tests/placement_reference.py
import struct, importlib.util, os
spec = importlib.util.spec_from_file_location(
    "sip", os.path.join(os.path.dirname(__file__), "siphash13_reference.py"))
sipmod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sipmod)
sip, M = sipmod.sip, sipmod.M
key = bytes(range(16))
be = lambda fmt, *a: struct.pack('>' + fmt, *a)
PROBES, TOKENS_PER_WEIGHT = 8, 128

def splitmix(seed):
    s = seed
    while True:
        s = (s + 0x9e3779b97f4a7c15) & M
        z = s
        z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
        z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
        yield z ^ (z >> 31)

def place(nodes, k, tenant, ineligible=()):
    zones = sorted({z for _, z, _ in nodes})
    rings = {z: sorted((sip(key, b'\x01' + be('Q', n) + be('I', j)), n)
                       for n, zz, w in nodes if zz == z
                       for j in range(w * TOKENS_PER_WEIGHT)) for z in zones}
    plans = []
    for zi, z in enumerate(zones):
        g = splitmix(sip(key, b'\x02' + be('Q', len(tenant)) + tenant + be('I', z)))
        order = next(g)
        plans.append((order, zi, z, [next(g) for _ in range(PROBES)]))
    plans.sort(key=lambda p: (p[0], p[1]))
    base, extra = divmod(k, len(zones))
    out = []
    for rank, (_, _, z, probes) in enumerate(plans):
        want = base + (1 if rank < extra else 0)
        pairs = sorted(((pos - at) & M, pos, n, pi)
                       for pi, at in enumerate(probes) for pos, n in rings[z])
        chosen = []
        for _, _, n, _ in pairs:
            if len(chosen) == want:
                break
            if n not in chosen and n not in ineligible:
                chosen.append(n)
        out += chosen
    return sorted(out)

small = [(100 + i, i % 3, 1 + i % 2) for i in range(12)]
for t in [b'', b'alpha', b'tenant-0042', b'\xff' * 40]:
    print(t[:12], place(small, 5, t))
# Node 104 drains and 103 fails at 10 (lookback 1000); alpha's previous shard had both.
print('alpha kept', place(small, 5, b'alpha'))
print('alpha fresh', place(small, 5, b'alpha', ineligible={104}))
print('alpha after lookback', place(small, 5, b'alpha', ineligible={103}))
