# Shared by the system-figure scripts (BENCH.md, "System figures"): iperf3 runs between two
# network namespaces through the implementation under test, its CPU, and a Markdown table of
# nf beside the kernel. Source it; it defines:
#
#   measure WHO LAB CLIENT_NS SERVER_NS SERVER_IP PID   JSON lines: TCP 1 and 4 streams, UDP 64 B
#   udp_search WHO LAB CLIENT_NS SERVER_NS SERVER_IP     JSON line: the highest UDP 64 B rate
#                                                        offered with under 1% lost (RFC 2544)
#   table TITLE_NF TITLE_KERNEL NF.jsonl KERNEL.jsonl    the Markdown table
#   own NS DEV...                                        nf owns the interfaces (see below)
#
# WHO is nf or kernel; PID the nf process (its CPU is read from /proc), empty for the kernel,
# whose forwarding CPU is softirq time, shown from /proc/stat for the whole machine. Needs
# $secs (seconds per measurement) and $tmp (a scratch directory); $ping_ip, when set, is the
# address pinged to check the lab first (default SERVER_IP: a VIP may not answer pings).
#
# The UDP runs give the receiving iperf3 a 4 MiB socket buffer (`-w`; Linux caps it at
# net.core.rmem_max, 4 MiB on the CI machine), nf and kernel alike. With the default 208 KiB
# (about 270 datagrams of 64 bytes), a receiver descheduled for a millisecond overflowed its
# own socket: nearly all the loss the UDP rows showed was there (`lost_at_receiver_socket`),
# after the path had delivered the datagram, and nf, which hands frames over in batches,
# paid for the receiver's scheduling more than the kernel's one-at-a-time bridge. The figure
# is meant to measure the path.
udp_window=4M
#
# The two endpoint namespaces stand for two hosts, each with a NIC and a CPU of its own
# (`hosts`, called by each lab once its links are up; nf and kernel alike):
# - each endpoint's iperf3 is pinned: the client to the first CPU, the server to the last (the
#   one the gateway is pinned to: a 2-core VM has no third);
# - each endpoint's receive work runs on its iperf3's CPU (RPS on its interface). A veth
#   delivers a frame on the CPU that sends it, so without RPS the gateway's thread ran the
#   receiving host's TCP stack inside its own `sendto` (two thirds of its CPU in a profile),
#   and the client's ACK processing ran on whichever CPU forwarded the ACK;
# - each endpoint's interface has a queue (pfifo, 1000 frames) as a host's NIC has; veth's
#   default is none. When the peer's 256-frame XDP ring is full (the gateway's program is
#   on it), a recent kernel (this machine's 6.18) then stops the queue instead of dropping:
#   without it, every TCP retransmit of the four-stream runs was such a drop at the
#   client's own interface (its tx_dropped).
# Unpinned and without these, the same code measured 3.1-6.1 Gbit/s (nf) and 6.6-7.5
# (kernel) on one TCP stream from run to run, by where the scheduler put the two iperf3s.
client_cpu=0
server_cpu=$(( $(nproc) - 1 ))

# hosts CLIENT_NS CLIENT_DEV SERVER_NS SERVER_DEV: the endpoint settings above.
hosts() {
  local ns dev cpu mask w
  for e in "$1 $2 $client_cpu" "$3 $4 $server_cpu"; do
    read -r ns dev cpu <<<"$e"
    ip netns exec "$ns" tc qdisc replace dev "$dev" root pfifo limit 1000
    # The CPU mask in the kernel's format: 32-bit hex words, comma-separated.
    mask=$(printf '%x' $(( 1 << (cpu % 32) ))); for (( w = 0; w < cpu / 32; w++ )); do mask+=",00000000"; done
    ip netns exec "$ns" sh -c "echo $mask > /sys/class/net/$dev/queues/rx-0/rps_cpus" 2>/dev/null ||
      echo "note: no RPS on $dev (a kernel without CONFIG_RPS): its receive work stays on the sending CPU" >&2
  done
}

# The nf program owns its interfaces, as a dataplane on AF_XDP or DPDK does: once its packet
# sockets have their copy, the namespace's kernel drops every received frame (an nftables
# netdev ingress hook, which runs after the packet taps) instead of also walking it up its
# own IP stack to drop it there (a route lookup per frame on the gateway's CPU).
own() {
  local ns=$1; shift
  local rules="add table netdev nf_owns;"
  for d in "$@"; do
    rules+=" add chain netdev nf_owns $d { type filter hook ingress device $d priority 0; policy drop; };"
  done
  ip netns exec "$ns" nft "$rules"
}

proc_cpu() { # utime+stime ticks of a process
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
softirq_ticks() { awk '/^cpu /{print $8}' /proc/stat; }
# Datagrams the receiving host's UDP sockets dropped for a full buffer (the application, not
# the path, fell behind).
rcvbuf_errors() { ip netns exec "$1" nstat -az UdpRcvbufErrors | awk '/UdpRcvbufErrors/{print $2}'; }

measure() {
  local who=$1 lab=$2 client=$3 server=$4 ip=$5 pid=$6
  ip netns exec "$client" ping -c 3 -i 0.2 -W 1 "${ping_ip:-$ip}" >/dev/null || { echo "$who: no ping through the lab" >&2; cat "$tmp/gw.out" >&2 || true; exit 1; }
  local hz; hz=$(getconf CLK_TCK)
  for run in tcp1 tcp4 udp64; do
    ip netns exec "$server" taskset -c "$server_cpu" iperf3 -s -D -1 -p 5201 >/dev/null 2>&1 || true
    sleep 0.3
    local c0 s0 c1 s1 r0 r1
    c0=$( [ -n "$pid" ] && proc_cpu "$pid" || echo 0 ); s0=$(softirq_ticks); r0=$(rcvbuf_errors "$server")
    case $run in
      tcp1) args=(-t "$secs") ;;
      tcp4) args=(-t "$secs" -P 4) ;;
      udp64) args=(-t "$secs" -u -l 64 -b 0 -w "$udp_window") ;;
    esac
    ip netns exec "$client" taskset -c "$client_cpu" iperf3 -c "$ip" -p 5201 -J "${args[@]}" >"$tmp/$who-$run.json" 2>/dev/null || true
    c1=$( [ -n "$pid" ] && proc_cpu "$pid" || echo 0 ); s1=$(softirq_ticks); r1=$(rcvbuf_errors "$server")
    python3 - "$tmp/$who-$run.json" "$lab" "$who" "$run" "$secs" "$(( c1 - c0 ))" "$(( s1 - s0 ))" "$hz" "$(( r1 - r0 ))" <<'PY'
import json, sys
path, lab, who, run, secs, cpu, soft, hz, rcvbuf = sys.argv[1:]
secs, cpu, soft, hz = float(secs), int(cpu), int(soft), int(hz)
out = {"lab": lab, "impl": who, "test": run}
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
if who.startswith("nf"):
    out["gateway_cpu_percent"] = round(100 * cpu / hz / secs, 1)
out["machine_softirq_percent"] = round(100 * soft / hz / secs, 1)
print(json.dumps(out))
PY
  done
}

# "LOST_PERCENT RECEIVED_PPS SENT_PPS" of an iperf3 UDP run's JSON ("100 0 0" if it has none).
udp_result() {
  python3 - "$1" "$secs" <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1]))["end"]["sum"]
    t = s.get("seconds") or float(sys.argv[2])
    print(round(s["lost_percent"], 2), round((s["packets"] - s["lost_packets"]) / t), round(s["packets"] / t))
except Exception:
    print(100, 0, 0)
PY
}

# The throughput of RFC 2544 (section 26.1), with a loss bound of 1%: UDP 64 B offered at a
# fixed rate, first the rate the path received at full speed (the last `measure` udp64 run
# of WHO). If that loses under 1%, the rate the sender offered at full speed lost more: the
# search halves the interval between the two upwards (the path may carry more than it
# received while the sender flooded it; it stopped at the first rate before, under what the
# path carried). If it loses more, 10% less each step until under 1% is lost (at most 8
# steps), then halving the interval between the last rate that lost more and the first that
# lost less. Halving stops when the interval is under 1% of the rate (at most 5 steps; 3%
# before was coarser than the gap it was there to measure: nf 339.8k against the kernel's
# 346.3k pps, 350.4k failing). A path that loses under 1% at full speed answers at once,
# with the full-speed figures. One JSON line: the rate found and every step tried.
udp_search() {
  local who=$1 lab=$2 client=$3 server=$4 ip=$5
  local lost rate sent; read -r lost rate sent < <(udp_result "$tmp/$who-udp64.json")
  local steps="[]" found=0 found_lost=
  under1() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < 1 else 1)' "$1"; }
  # Offers $1 pps for $secs; sets lost and rate, and appends the step.
  offer() {
    ip netns exec "$server" taskset -c "$server_cpu" iperf3 -s -D -1 -p 5201 >/dev/null 2>&1 || true
    sleep 0.3
    # iperf3 counts the UDP payload: 64 bytes = 512 bits a datagram.
    ip netns exec "$client" taskset -c "$client_cpu" iperf3 -c "$ip" -p 5201 -J -t "$secs" -u -l 64 -b "$(( $1 * 512 ))" -w "$udp_window" >"$tmp/$who-step.json" 2>/dev/null || true
    local _sent
    read -r lost rate _sent < <(udp_result "$tmp/$who-step.json")
    steps=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); s.append([int(sys.argv[2]), int(sys.argv[3]), round(float(sys.argv[4]), 2)]); print(json.dumps(s))' "$steps" "$1" "$rate" "$lost")
  }
  if under1 "$lost"; then
    found=$rate; found_lost=$lost; steps="[[\"full speed\", $rate, $lost]]"
  else
    local offered=$rate failed=$sent passed=0 i mid
    for i in 1 2 3 4 5 6 7 8; do
      [ "$offered" -gt 0 ] || break
      offer "$offered"
      if under1 "$lost"; then
        found=$rate; found_lost=$lost; passed=$offered; break
      fi
      failed=$offered
      offered=$(( offered * 9 / 10 ))
    done
    if [ "$found" -gt 0 ]; then
      for i in 1 2 3 4 5; do
        [ $(( (failed - passed) * 100 )) -gt "$failed" ] || break
        mid=$(( (passed + failed) / 2 ))
        offer "$mid"
        if under1 "$lost"; then
          passed=$mid
          if [ "$rate" -gt "$found" ]; then found=$rate; found_lost=$lost; fi
        else
          failed=$mid
        fi
      done
    fi
  fi
  python3 -c 'import json,sys; print(json.dumps({"lab": sys.argv[1], "impl": sys.argv[2], "test": "udp64_under_1pct", "received_pps": int(sys.argv[3]), "lost_percent": round(float(sys.argv[4] or 100), 2), "steps_offered_received_lost": json.loads(sys.argv[5])}))' \
    "$lab" "$who" "$found" "$found_lost" "$steps"
}

table() {
  table_n nf "$1" kernel "$2" -- "${@:3}"
}

# The Markdown table of IMPL TITLE pairs (one column each, in order), from the JSON lines
# of the files after `--`.
table_n() {
  python3 - "$@" <<'PY'
import json, sys
args = sys.argv[1:]
sep = args.index("--")
cols = list(zip(args[:sep:2], args[1:sep:2]))
rows = {}
for path in args[sep + 1:]:
    for line in open(path):
        r = json.loads(line); rows[(r["impl"], r["test"])] = r
def cell(r, run):
    if r is None or "error" in r: return "error: " + (r or {}).get("error", "no result")
    if run.startswith("tcp"): return f'{r["gbit_per_s"]} Gbit/s, {r["retransmits"]} retransmits'
    if run == "udp64_under_1pct":
        if not r["received_pps"]: return "none found in 8 steps"
        return f'{r["received_pps"]:,} pps received, {r["lost_percent"]}% lost'
    return (f'{r["received_pps"]:,} pps received, {r["lost_percent"]}% lost'
            f' ({r.get("lost_at_receiver_socket", 0):,} of them at the receiving socket)')
print()
print("| | " + " | ".join(t for _, t in cols) + " |")
print("|---|" + "---|" * len(cols))
runs = [("tcp1", "iperf3 TCP, 1 stream"), ("tcp4", "iperf3 TCP, 4 streams"), ("udp64", "UDP 64 B, full speed")]
if any(t == "udp64_under_1pct" for _, t in rows):
    runs.append(("udp64_under_1pct", "UDP 64 B, highest rate with < 1% lost (RFC 2544)"))
for run, name in runs:
    cells = []
    for impl, _ in cols:
        r = rows.get((impl, run))
        # The CPU each used: the gateway process's, and the machine's softirq time (where
        # the kernel path does all its work), both in % of one core.
        used = []
        if r and "gateway_cpu_percent" in r: used.append(f'gateway {r["gateway_cpu_percent"]}%')
        if r and "machine_softirq_percent" in r and run != "udp64_under_1pct":
            used.append(f'softirq {r["machine_softirq_percent"]}%')
        cells.append(cell(r, run) + (f' ({", ".join(used)})' if used else ""))
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
}
