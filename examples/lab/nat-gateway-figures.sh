#!/usr/bin/env bash
# System figures for `nat-gateway` beside the Linux kernel doing the same job on the same
# veths (BENCH.md, "System figures"). Run as root:
#
#   examples/lab/nat-gateway-figures.sh [SECONDS] [PROFILE] [FAMILY]   (default 5 s, rfc, 4)
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
# FAMILY 6: the same over IPv6 (NAT66): the inside host fd00::2/64, the outside host
# 2001:db8::2/64, the gateway fd00::1 and 2001:db8::1 (nf: --inside-addr6/--outside-addr6;
# kernel: IPv6 forwarding and an ip6 nftables masquerade), the IPv4 addresses unused.
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
family=${3:-4}
case $family in
  4) in_net=10.0.0; out_net=203.0.113; len=24; dot=.; fam_name=IPv4 ;;
  6) in_net=fd00:; out_net=2001:db8:; len=64; dot=:; fam_name="IPv6 (NAT66)" ;;
  *) echo "FAMILY: 4 or 6" >&2; exit 2 ;;
esac
# ADDR host N: the inside or outside prefix's host N (10.0.0.N, fd00::N).
inside_host() { echo "$in_net$dot$1"; }
outside_host() { echo "$out_net$dot$1"; }
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
  if [ "$family" = 6 ]; then
    # IPv6 on the hosts (the gateway's kernel gets it only for its own run).
    for n in "$I" "$O"; do ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0; done
    ip netns exec "$I" sysctl -qw net.ipv6.conf.ih.disable_ipv6=0
    ip netns exec "$O" sysctl -qw net.ipv6.conf.oh.disable_ipv6=0
  fi
  ip -n "$I" addr add "$(inside_host 2)/$len" dev ih nodad 2>/dev/null || ip -n "$I" addr add "$(inside_host 2)/$len" dev ih
  ip -n "$O" addr add "$(outside_host 2)/$len" dev oh nodad 2>/dev/null || ip -n "$O" addr add "$(outside_host 2)/$len" dev oh
  ip netns exec "$I" ethtool -K ih tx off >/dev/null 2>&1 || true
  ip netns exec "$O" ethtool -K oh tx off >/dev/null 2>&1 || true
  ip -n "$I" link set ih up; ip -n "$O" link set oh up
  hosts "$I" ih "$O" oh
  for d in ig og; do ip -n "$G" link set "$d" up; done
  ip -n "$I" route add default via "$(inside_host 1)"
  [ "$profile" = off ] && ip -n "$O" route add "$(inside_host 0)/$len" via "$(outside_host 1)"
  return 0
}

start_nf() {
  local v6=()
  [ "$family" = 6 ] && v6=(--inside-addr6 "fd00::1/64" --outside-addr6 "2001:db8::1/64")
  ip netns exec "$G" "$gw_bin" --io "$nf_io" --cpu "$(( $(nproc) - 1 ))" --inside ig --inside-addr 10.0.0.1/24 --outside og \
    --outside-addr 203.0.113.1/24 "${v6[@]}" --profile "$profile" >"$tmp/gw.out" 2>&1 &
  gw_pid=$!
  own "$G" ig og
  sleep 0.5
}

start_kernel() {
  if [ "$family" = 6 ]; then
    for k in all default ig og; do ip netns exec "$G" sysctl -qw "net.ipv6.conf.$k.disable_ipv6=0"; done
    ip -n "$G" addr add fd00::1/64 dev ig nodad
    ip -n "$G" addr add 2001:db8::1/64 dev og nodad
    ip netns exec "$G" sysctl -qw net.ipv6.conf.all.forwarding=1
  else
    ip -n "$G" addr add 10.0.0.1/24 dev ig
    ip -n "$G" addr add 203.0.113.1/24 dev og
    ip netns exec "$G" sysctl -qw net.ipv4.ip_forward=1
  fi
  if [ "$profile" != off ]; then
    local table=ip
    [ "$family" = 6 ] && table=ip6
    ip netns exec "$G" nft -f - <<NFT
table $table nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "og" masquerade
  }
}
NFT
  fi
}

tmp=$(mktemp -d)
lab_name=nat-gateway
[ "$family" = 6 ] && lab_name=nat-gateway-ipv6
lab; start_nf; measure nf "$lab_name" "$I" "$O" "$(outside_host 2)" "$gw_pid" | tee "$tmp/nf.jsonl"
kill -INT "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; gw_pid=
echo "--- nat-gateway counters (non-zero drops)" >&2
grep -E "drop|full|kernel_drops|no_|ttl|too_big|malformed|refused|exhausted" "$tmp/gw.out" | grep -v " 0$" >&2 || true
for n in "$I" "$G" "$O"; do ip netns del "$n"; done
lab; start_kernel; measure kernel "$lab_name" "$I" "$O" "$(outside_host 2)" "" | tee "$tmp/kernel.jsonl"

if [ "$profile" = off ]; then kernel="kernel forwarding"; else kernel="kernel forwarding + nftables masquerade"; fi
table "nf nat-gateway, profile $profile, $fam_name ($io_name, one pinned thread)" "$kernel" "$tmp/nf.jsonl" "$tmp/kernel.jsonl"
rm -rf "$tmp"
