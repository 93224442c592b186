#!/usr/bin/env bash
# System figures for `nat-gateway` beside the Linux kernel doing the same job on the same
# veths (BENCH.md, "System figures"). Run as root:
#
#   examples/lab/nat-gateway-figures.sh [SECONDS] [PROFILE]   (default 5 s, profile rfc)
#   NF_IO=packet examples/lab/nat-gateway-figures.sh     (the gateway on PACKET_MMAP rings; default: AF_XDP)
#
# The lab, in network namespaces this script makes and removes:
#
#   i: inside host 10.0.0.2  ══ veth ══  g: the gateway under test  ══ veth ══  o: outside host
#      default via 10.0.0.1              nf: nat-gateway on ig/og                203.0.113.2
#                                        kernel: 10.0.0.1 on ig, 203.0.113.1 on og, forwarding,
#                                        nftables masquerade out of og (PROFILE off: no NAT;
#                                        the outside host routes 10.0.0.0/24 back)
#
# iperf3 runs from i to o: TCP with 1 and 4 streams, and UDP with 64-byte payloads at full
# speed. Checksum offload is off on the hosts (the gateway forwards frame bytes as they are).
# The hosts get a CPU each, RPS and a queue (`hosts` in figures-lib.sh), nf and kernel alike.
# Output: one JSON object per line, then a Markdown table.
set -euo pipefail
nf_io=${NF_IO:-xdp}
case $nf_io in xdp) io_name="AF_XDP" ;; packet) io_name="PACKET_MMAP rings" ;; *) echo "NF_IO: xdp or packet" >&2; exit 2 ;; esac

secs=${1:-5}
profile=${2:-rfc}
root=$(cd "$(dirname "$0")/../.." && pwd)
gw_bin=${NAT_GATEWAY:-$root/target/release/nat-gateway}
[ -x "$gw_bin" ] || { echo "build it first: cargo build --release -p nf-examples --bin nat-gateway" >&2; exit 2; }
for t in ip tc taskset iperf3 ethtool python3 nft; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done

. "$root/examples/lab/figures-lib.sh"

tag="nfn$$"
I="${tag}i"; G="${tag}g"; O="${tag}o"
cleanup() {
  [ -n "${gw_pid:-}" ] && kill "$gw_pid" 2>/dev/null || true
  for n in "$I" "$G" "$O"; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT

lab() {
  for n in "$I" "$G" "$O"; do ip netns add "$n"; ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip -n "$n" link set lo up; done
  ip -n "$I" link add ih type veth peer name ig netns "$G"
  ip -n "$O" link add oh type veth peer name og netns "$G"
  ip -n "$I" addr add 10.0.0.2/24 dev ih
  ip -n "$O" addr add 203.0.113.2/24 dev oh
  ip netns exec "$I" ethtool -K ih tx off >/dev/null 2>&1 || true
  ip netns exec "$O" ethtool -K oh tx off >/dev/null 2>&1 || true
  ip -n "$I" link set ih up; ip -n "$O" link set oh up
  hosts "$I" ih "$O" oh
  for d in ig og; do ip -n "$G" link set "$d" up; done
  ip -n "$I" route add default via 10.0.0.1
  [ "$profile" = off ] && ip -n "$O" route add 10.0.0.0/24 via 203.0.113.1
  return 0
}

start_nf() {
  ip netns exec "$G" "$gw_bin" --io "$nf_io" --cpu "$(( $(nproc) - 1 ))" --inside ig --inside-addr 10.0.0.1/24 --outside og \
    --outside-addr 203.0.113.1/24 --profile "$profile" >"$tmp/gw.out" 2>&1 &
  gw_pid=$!
  own "$G" ig og
  sleep 0.5
}

start_kernel() {
  ip -n "$G" addr add 10.0.0.1/24 dev ig
  ip -n "$G" addr add 203.0.113.1/24 dev og
  ip netns exec "$G" sysctl -qw net.ipv4.ip_forward=1
  if [ "$profile" != off ]; then
    ip netns exec "$G" nft -f - <<'NFT'
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "og" masquerade
  }
}
NFT
  fi
}

tmp=$(mktemp -d)
lab; start_nf; measure nf nat-gateway "$I" "$O" 203.0.113.2 "$gw_pid" | tee "$tmp/nf.jsonl"
kill -INT "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; gw_pid=
echo "--- nat-gateway counters (non-zero drops)" >&2
grep -E "drop|full|kernel_drops|no_|ttl|too_big|malformed|refused|exhausted" "$tmp/gw.out" | grep -v " 0$" >&2 || true
for n in "$I" "$G" "$O"; do ip netns del "$n"; done
lab; start_kernel; measure kernel nat-gateway "$I" "$O" 203.0.113.2 "" | tee "$tmp/kernel.jsonl"

if [ "$profile" = off ]; then kernel="kernel forwarding"; else kernel="kernel forwarding + nftables masquerade"; fi
table "nf nat-gateway, profile $profile ($io_name, one pinned thread)" "$kernel" "$tmp/nf.jsonl" "$tmp/kernel.jsonl"
rm -rf "$tmp"
