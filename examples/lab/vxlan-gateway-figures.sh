#!/usr/bin/env bash
# System figures for `vxlan-gateway` beside the Linux kernel doing the same job on the same
# veths (BENCH.md, "System figures"). Run as root:
#
#   examples/lab/vxlan-gateway-figures.sh [SECONDS]   (default 5 per measurement)
#
# The lab, in network namespaces this script makes and removes:
#
#   a: kernel VTEP (vx0 over ua)  ══ veth ══  g: the gateway under test  ══ veth ══  b: host
#      198.51.100.1 on vx0                        nf: vxlan-gateway on ug/og         198.51.100.2
#      192.0.2.1 on ua                            kernel: vx1 over ug + bridge br0 with og
#
# iperf3 runs from a to b: TCP with 1 and 4 streams, and UDP with 64-byte payloads at full
# speed (packets received per second and the share lost). Checksum offload is off on the
# endpoints (the gateway forwards frame bytes as they are). The CPU the gateway process used
# is read from /proc; for the kernel bridge the CPU is softirq time, shown from /proc/stat for
# the whole machine. Output: one JSON object per line, then a Markdown table.
set -euo pipefail

secs=${1:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
gw_bin=${VXLAN_GATEWAY:-$root/target/release/vxlan-gateway}
[ -x "$gw_bin" ] || { echo "build it first: cargo build --release -p nf-examples --bin vxlan-gateway" >&2; exit 2; }
for t in ip iperf3 ethtool python3; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done

tag="nfl$$"
A="${tag}a"; G="${tag}g"; B="${tag}b"
cleanup() {
  [ -n "${gw_pid:-}" ] && kill "$gw_pid" 2>/dev/null || true
  for n in "$A" "$G" "$B"; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT

lab() {
  for n in "$A" "$G" "$B"; do ip netns add "$n"; ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip -n "$n" link set lo up; done
  ip -n "$A" link add ua mtu 1550 address 02:00:00:00:00:01 type veth peer name ug mtu 1550 netns "$G"
  ip -n "$G" link add og type veth peer name ob netns "$B"
  ip -n "$A" addr add 192.0.2.1/24 dev ua
  ip -n "$A" link add vx0 type vxlan id 42 remote 192.0.2.2 local 192.0.2.1 dstport 4789 dev ua
  ip -n "$A" addr add 198.51.100.1/24 dev vx0
  ip -n "$B" addr add 198.51.100.2/24 dev ob
  for d in ua vx0; do ip netns exec "$A" ethtool -K "$d" tx off >/dev/null 2>&1 || true; done
  ip netns exec "$B" ethtool -K ob tx off >/dev/null 2>&1 || true
  for d in ua vx0; do ip -n "$A" link set "$d" up; done
  for d in ug og; do ip -n "$G" link set "$d" up; done
  ip -n "$B" link set ob up
}

start_nf() {
  ip netns exec "$G" "$gw_bin" --underlay ug --overlay og --local 192.0.2.2 \
    --remote 192.0.2.1 --remote-mac 02:00:00:00:00:01 --vni 42 >"$tmp/gw.out" 2>&1 &
  gw_pid=$!
  sleep 0.5
}

start_kernel() {
  ip -n "$G" addr add 192.0.2.2/24 dev ug
  ip -n "$G" link add vx1 type vxlan id 42 remote 192.0.2.1 local 192.0.2.2 dstport 4789 dev ug
  ip -n "$G" link add br0 type bridge
  ip -n "$G" link set vx1 master br0
  ip -n "$G" link set og master br0
  for d in vx1 br0; do ip -n "$G" link set "$d" up; done
}

proc_cpu() { # utime+stime ticks of a process
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
softirq_ticks() { awk '/^cpu /{print $8}' /proc/stat; }
# Datagrams the receiving host's UDP sockets dropped for a full buffer (the application, not
# the path, fell behind).
rcvbuf_errors() { ip netns exec "$B" nstat -az UdpRcvbufErrors | awk '/UdpRcvbufErrors/{print $2}'; }

measure() { # $1 = nf|kernel
  local who=$1
  ip netns exec "$B" iperf3 -s -D -1 -p 5201 >/dev/null 2>&1 || true
  sleep 0.3
  ip netns exec "$A" ping -c 3 -i 0.2 -W 1 198.51.100.2 >/dev/null || { echo "$who: no ping through the lab" >&2; cat "$tmp/gw.out" >&2 || true; exit 1; }
  local hz; hz=$(getconf CLK_TCK)
  for run in tcp1 tcp4 udp64; do
    ip netns exec "$B" iperf3 -s -D -1 -p 5201 >/dev/null 2>&1 || true
    sleep 0.3
    local c0 s0 c1 s1
    c0=$( [ "$who" = nf ] && proc_cpu "$gw_pid" || echo 0 ); s0=$(softirq_ticks); r0=$(rcvbuf_errors)
    case $run in
      tcp1) args=(-t "$secs") ;;
      tcp4) args=(-t "$secs" -P 4) ;;
      udp64) args=(-t "$secs" -u -l 64 -b 0) ;;
    esac
    ip netns exec "$A" iperf3 -c 198.51.100.2 -p 5201 -J "${args[@]}" >"$tmp/$who-$run.json" 2>/dev/null || true
    c1=$( [ "$who" = nf ] && proc_cpu "$gw_pid" || echo 0 ); s1=$(softirq_ticks); r1=$(rcvbuf_errors)
    python3 - "$tmp/$who-$run.json" "$who" "$run" "$secs" "$(( c1 - c0 ))" "$(( s1 - s0 ))" "$hz" "$(( r1 - r0 ))" <<'PY'
import json, sys
path, who, run, secs, cpu, soft, hz, rcvbuf = sys.argv[1:]
secs, cpu, soft, hz = float(secs), int(cpu), int(soft), int(hz)
out = {"lab": "vxlan-gateway", "impl": who, "test": run}
try:
    j = json.load(open(path))
except Exception as e:
    out["error"] = f"iperf3 gave no JSON: {e}"
    print(json.dumps(out)); sys.exit()
if "error" in j:
    out["error"] = j["error"]
end = j.get("end", {})
if run.startswith("tcp"):
    s = end.get("sum_received", {})
    out["gbit_per_s"] = round(s.get("bits_per_second", 0) / 1e9, 3)
    out["retransmits"] = end.get("sum_sent", {}).get("retransmits")
else:
    s = end.get("sum", {})
    pk, lost, t = s.get("packets", 0), s.get("lost_packets", 0), s.get("seconds", secs) or secs
    out["sent_pps"] = round(pk / t)
    out["received_pps"] = round((pk - lost) / t)
    out["lost_percent"] = round(s.get("lost_percent", 0.0), 2)
    # Of the lost: dropped by the receiver's own socket (delivered, but iperf3 fell behind).
    out["lost_at_receiver_socket"] = int(rcvbuf)
if who == "nf":
    out["gateway_cpu_percent"] = round(100 * cpu / hz / secs, 1)
out["machine_softirq_percent"] = round(100 * soft / hz / secs, 1)
print(json.dumps(out))
PY
  done
}

tmp=$(mktemp -d)
lab; start_nf; measure nf | tee "$tmp/nf.jsonl"
kill -INT "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; gw_pid=
echo "--- vxlan-gateway counters" >&2; grep -E "drop|full|kernel_drops|partial|link_down" "$tmp/gw.out" | grep -v " 0$" >&2 || true
for n in "$A" "$G" "$B"; do ip netns del "$n"; done
lab; start_kernel; measure kernel | tee "$tmp/kernel.jsonl"

python3 - "$tmp/nf.jsonl" "$tmp/kernel.jsonl" <<'PY'
import json, sys
rows = {}
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line); rows[(r["impl"], r["test"])] = r
def cell(r, run):
    if r is None or "error" in r: return "error: " + (r or {}).get("error", "no result")
    if run.startswith("tcp"): return f'{r["gbit_per_s"]} Gbit/s, {r["retransmits"]} retransmits'
    return (f'{r["received_pps"]:,} pps received, {r["lost_percent"]}% lost'
            f' ({r.get("lost_at_receiver_socket", 0):,} of them at the receiving socket)')
print()
print("| | nf gateway (PACKET_MMAP rings) | kernel VXLAN + bridge |")
print("|---|---|---|")
for run, name in [("tcp1", "iperf3 TCP, 1 stream"), ("tcp4", "iperf3 TCP, 4 streams"), ("udp64", "UDP 64 B")]:
    nf, k = rows.get(("nf", run)), rows.get(("kernel", run))
    cpu = f' ({nf["gateway_cpu_percent"]}% CPU)' if nf and "gateway_cpu_percent" in nf else ""
    print(f"| {name} | {cell(nf, run)}{cpu} | {cell(k, run)} |")
PY
rm -rf "$tmp"
