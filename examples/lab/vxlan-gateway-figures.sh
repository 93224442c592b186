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
# nf runs twice: on AF_XDP (`--io xdp`) and on PACKET_MMAP rings (`--io packet`), its one
# thread pinned to the last CPU (`--cpu`). Then `nf-node` (the same gateway with connection
# tracking, configured by a snapshot) runs in the same lab on AF_XDP: one worker (on the
# receive loop's thread, pinned to the last CPU) and two workers (one per CPU).
#
# iperf3 runs from a to b: TCP with 1 and 4 streams, and UDP with 64-byte payloads at full
# speed (packets received per second and the share lost), then at the highest offered rate
# under 1% lost (`udp_search`, RFC 2544's throughput with a 1% loss bound). Checksum offload
# is off on the endpoints (the gateway forwards frame bytes as they are), which get a CPU
# each, RPS and a queue (`hosts` in figures-lib.sh), nf and kernel alike. The CPU the gateway
# process used is read from /proc; softirq time (all the kernel bridge's work) from /proc/stat
# for the whole machine. Output: one JSON object per line, then a Markdown table.
set -euo pipefail

secs=${1:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
gw_bin=${VXLAN_GATEWAY:-$root/target/release/vxlan-gateway}
node_bin=${NF_NODE:-$root/target/release/nf-node}
for b in "$gw_bin" "$node_bin"; do
  [ -x "$b" ] || { echo "build it first: cargo build --release -p nf-examples --bin vxlan-gateway --bin nf-node" >&2; exit 2; }
done
for t in ip tc taskset iperf3 ethtool python3 nft; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done

. "$root/examples/lab/figures-lib.sh"

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
  hosts "$A" ua "$B" ob
}

start_nf() { # IO: xdp or packet
  ip netns exec "$G" "$gw_bin" --io "$1" --cpu "$gw_cpu" --underlay ug --overlay og --local 192.0.2.2 \
    --remote 192.0.2.1 --remote-mac 02:00:00:00:00:01 --vni 42 >"$tmp/gw.out" 2>&1 &
  gw_pid=$!
  own "$G" ug og
  sleep 0.5
}

start_node() { # WORKERS CPUS
  mkdir -p "$tmp/node"
  printf 'underlay = ug\noverlay = og\nlocal = 192.0.2.2\nremote = 192.0.2.1\nremote_mac = 02:00:00:00:00:01\nvni = 42\n' >"$tmp/node/node.conf"
  "$node_bin" snapshot 1 "$tmp/node/node.conf" "$tmp/node/snapshot.nfs" >/dev/null
  ip netns exec "$G" "$node_bin" --config "$tmp/node" --io xdp --workers "$1" --cpus "$2" \
    --stats-every 0 >"$tmp/gw.out" 2>&1 &
  gw_pid=$!
  own "$G" ug og
  sleep 1
}

start_kernel() {
  ip -n "$G" addr add 192.0.2.2/24 dev ug
  ip -n "$G" link add vx1 type vxlan id 42 remote 192.0.2.1 local 192.0.2.2 dstport 4789 dev ug
  ip -n "$G" link add br0 type bridge
  ip -n "$G" link set vx1 master br0
  ip -n "$G" link set og master br0
  for d in vx1 br0; do ip -n "$G" link set "$d" up; done
}

tmp=$(mktemp -d)
# The gateway's one thread, pinned (the last CPU): unpinned, the scheduler moved it onto the
# receiving iperf3's CPU often enough to cost 1-5% of the UDP datagrams at the receiver's
# socket, at rates the gateway forwards without loss when pinned.
gw_cpu=$(( $(nproc) - 1 ))
for io in xdp packet; do
  who=nf; [ "$io" = xdp ] || who=nf-$io
  lab; start_nf "$io"; measure "$who" vxlan-gateway "$A" "$B" 198.51.100.2 "$gw_pid" | tee "$tmp/$who.jsonl"
  udp_search "$who" vxlan-gateway "$A" "$B" 198.51.100.2 | tee -a "$tmp/$who.jsonl"
  kill -INT "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; gw_pid=
  echo "--- vxlan-gateway --io $io counters" >&2; grep -E "AF_XDP|drop|full|kernel_drops|partial|link_down" "$tmp/gw.out" | grep -v " 0$" >&2 || true
  for n in "$A" "$G" "$B"; do ip netns del "$n"; done
done
for workers in 1 2; do
  who=nf-node-$workers
  if [ "$workers" = 1 ]; then cpus=$gw_cpu; else cpus=$(seq -s, 0 $(( $(nproc) - 1 ))); fi
  lab; start_node "$workers" "$cpus"; measure "$who" vxlan-gateway "$A" "$B" 198.51.100.2 "$gw_pid" | tee "$tmp/$who.jsonl"
  udp_search "$who" vxlan-gateway "$A" "$B" 198.51.100.2 | tee -a "$tmp/$who.jsonl"
  kill -INT "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; gw_pid=
  echo "--- nf-node --workers $workers counters" >&2; grep -E "receives on|drop|full|kernel_drops|link_down|backpressure" "$tmp/gw.out" | grep -v " 0$" >&2 || true
  for n in "$A" "$G" "$B"; do ip netns del "$n"; done
done
lab; start_kernel; measure kernel vxlan-gateway "$A" "$B" 198.51.100.2 "" | tee "$tmp/kernel.jsonl"
udp_search kernel vxlan-gateway "$A" "$B" 198.51.100.2 | tee -a "$tmp/kernel.jsonl"

table_n nf "nf gateway (AF_XDP, --io xdp)" nf-packet "nf gateway (PACKET_MMAP rings)" \
  nf-node-1 "nf-node, 1 worker (AF_XDP)" nf-node-2 "nf-node, 2 workers (AF_XDP)" kernel "kernel VXLAN + bridge" \
  -- "$tmp/nf.jsonl" "$tmp/nf-packet.jsonl" "$tmp/nf-node-1.jsonl" "$tmp/nf-node-2.jsonl" "$tmp/kernel.jsonl"
rm -rf "$tmp"
