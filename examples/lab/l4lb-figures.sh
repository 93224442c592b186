#!/usr/bin/env bash
# System figures for `l4lb` beside the Linux kernel doing the same job on the same veths
# (BENCH.md, "System figures"). Run as root:
#
#   examples/lab/l4lb-figures.sh [SECONDS]   (default 5 s)
#   NF_IO=packet examples/lab/l4lb-figures.sh   (the balancer on PACKET_MMAP rings; default: AF_XDP)
#
# The lab, in network namespaces this script makes and removes:
#
#   c: client 198.51.100.2  ══ veth ══  g: the load balancer  ══ veth ══  b: backend 10.1.0.11
#      default via 198.51.100.1         VIP 192.0.2.10:5201 (TCP and UDP)   default via 10.1.0.1
#                                       nf: l4lb on cg/bg, one backend
#                                       kernel: 198.51.100.1 on cg, 10.1.0.1 on bg, forwarding,
#                                       nftables DNAT of the VIP to the backend (conntrack
#                                       un-DNATs the replies)
#
# One backend, so every stream meets the same iperf3 server: the figures measure the path
# through the load balancer, not the spread (examples/tests/l4lb.rs checks that). iperf3 runs
# from c to the VIP: TCP with 1 and 4 streams, and UDP with 64-byte payloads at full speed.
# Checksum offload is off on the hosts, which get a CPU each, RPS and a queue (`hosts` in
# figures-lib.sh), nf and kernel alike. Output: one JSON object per line, then a Markdown table.
set -euo pipefail
nf_io=${NF_IO:-xdp}
case $nf_io in xdp) io_name="AF_XDP" ;; packet) io_name="PACKET_MMAP rings" ;; *) echo "NF_IO: xdp or packet" >&2; exit 2 ;; esac

secs=${1:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
lb_bin=${L4LB:-$root/target/release/l4lb}
[ -x "$lb_bin" ] || { echo "build it first: cargo build --release -p nf-examples --bin l4lb" >&2; exit 2; }
for t in ip tc taskset iperf3 ethtool python3 nft; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done

. "$root/examples/lab/figures-lib.sh"

tag="nfl$$"
C="${tag}c"; G="${tag}g"; B="${tag}b"
cleanup() {
  [ -n "${lb_pid:-}" ] && kill "$lb_pid" 2>/dev/null || true
  for n in "$C" "$G" "$B"; do ip netns del "$n" 2>/dev/null || true; done
  [ -n "${tmp:-}" ] && rm -rf "$tmp"
}
trap cleanup EXIT

lab() {
  for n in "$C" "$G" "$B"; do ip netns add "$n"; ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip -n "$n" link set lo up; done
  ip -n "$C" link add ch type veth peer name cg netns "$G"
  ip -n "$B" link add bh type veth peer name bg netns "$G"
  ip -n "$C" addr add 198.51.100.2/24 dev ch
  ip -n "$B" addr add 10.1.0.11/24 dev bh
  ip netns exec "$C" ethtool -K ch tx off >/dev/null 2>&1 || true
  ip netns exec "$B" ethtool -K bh tx off >/dev/null 2>&1 || true
  ip -n "$C" link set ch up; ip -n "$B" link set bh up
  hosts "$C" ch "$B" bh
  for d in cg bg; do ip -n "$G" link set "$d" up; done
  ip -n "$C" route add default via 198.51.100.1
  ip -n "$B" route add default via 10.1.0.1
}

start_nf() {
  echo "10.1.0.11:5201" >"$tmp/backends"
  ip netns exec "$G" "$lb_bin" --io "$nf_io" --cpu "$(( $(nproc) - 1 ))" --client cg --client-addr 198.51.100.1/24 --backend bg \
    --backend-addr 10.1.0.1/24 --vip 192.0.2.10:5201 --proto tcp,udp \
    --backends "$tmp/backends" >"$tmp/gw.out" 2>&1 &
  lb_pid=$!
  own "$G" cg bg
  sleep 0.5
}

start_kernel() {
  ip -n "$G" addr add 198.51.100.1/24 dev cg
  ip -n "$G" addr add 10.1.0.1/24 dev bg
  ip netns exec "$G" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$G" nft -f - <<'NFT'
table ip lb {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 192.0.2.10 tcp dport 5201 dnat to 10.1.0.11:5201
    ip daddr 192.0.2.10 udp dport 5201 dnat to 10.1.0.11:5201
  }
}
NFT
}

tmp=$(mktemp -d)
ping_ip=10.1.0.11
lab; start_nf; measure nf l4lb "$C" "$B" 192.0.2.10 "$lb_pid" | tee "$tmp/nf.jsonl"
kill -INT "$lb_pid"; wait "$lb_pid" 2>/dev/null || true; lb_pid=
echo "--- l4lb counters (non-zero drops)" >&2
grep -E "drop|full|kernel_drops|no_|ttl|too_big|malformed|refused|stateless|lb_" "$tmp/gw.out" | grep -v " 0$" >&2 || true
for n in "$C" "$G" "$B"; do ip netns del "$n"; done
lab; start_kernel; measure kernel l4lb "$C" "$B" 192.0.2.10 "" | tee "$tmp/kernel.jsonl"

table "nf l4lb, DNAT ($io_name, one pinned thread)" "kernel forwarding + nftables DNAT" "$tmp/nf.jsonl" "$tmp/kernel.jsonl"
