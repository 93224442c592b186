//! Three `nat-gateway` nodes sharing one public address, behind ECMP on both sides, in
//! network namespaces this test makes:
//!
//! ```text
//!  ns c: client 10.0.0.100 ─ default route via 10.0.0.1, .2, .3 (ECMP, L4 hash) ─┐
//!                                                                                ├─ ns g1: nat-gateway 1 ─┐
//!                                          inside bridge (ns s: br0) ────────────┼─ ns g2: nat-gateway 2 ─┼─ outside bridge (br1) ─ ns r: router (BIRD) ─ ns v: server 192.0.2.2:7000
//!                                                                                └─ ns g3: nat-gateway 3 ─┘  203.0.113.N    198.18.0.1/32 via .1, .2, .3 (BGP, ECMP, L4 hash)
//!                                          management bridge (br2): 10.3.0.N, the router 10.3.0.254: sync (keyed), BGP (MD5) and BFD
//! ```
//!
//! Every node translates to 198.18.0.1 (the hyperplane profile: a port per destination),
//! taking its ports from its own share of the port space (`--fleet-peer`: the nodes split
//! it in the order of their outside addresses), keeps a copy of every other node's sessions
//! over `nf_examples::sync`, and announces the public address to the router over BGP
//! (`--bgp-peer`, with BFD; node 3 at its own `--bfd-interval` and `--bfd-multiplier`) once
//! it holds its peers' sessions. The client's flows reach the
//! nodes by its own ECMP hash and the server's answers by the router's, so most answers
//! reach another node than the one that translated the flow: a SYN+ACK that comes before
//! its session's copy (sync runs every 10 ms, the namespaces answer in microseconds) is
//! handed to the node that owns its port (`fleet.handed_over`), the rest find the copy. 36
//! TCP connections answer from the same public address and port every round, 36 UDP
//! flows get their echoes (their first answers handed over alike), 36 UDP flows to a closed
//! port hear the server's port unreachable errors (handed to the node owning the quoted
//! port) and 36 pings their replies (by identifier); 24 connections from the server to a
//! port forward are answered within half a second (the inside host's SYN+ACK, reaching
//! another node than the SYN by the client's own route, waits there for the session's copy);
//! then node 1 is
//! killed, the router drops it (BFD) and the client's route is made to, both hashes move
//! flows between the survivors too, and every connection still answers, its public port
//! unchanged: the survivors adopt node 1's sessions from their copies. Node 1 comes back
//! empty, announces only after both survivors' resyncs, takes its share of the flows again
//! by the copies, and 36 new connections get ports no other connection holds. Then the rfc
//! profile: endpoint-independent mapping holds across the fleet when the inside route
//! hashes on the source address alone, and not when it hashes on L4. NAT66 in the same
//! fleet (IPv6 beside IPv4, the router's IPv6 route static) hands answers over the same
//! way. Needs root,
//! `ip`, `bird` and python3: without them it skips, except under `CI=true`.
#![cfg(target_os = "linux")]
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed setup step should fail the test"
)]

mod common;

use common::{AskingClient, Lab, assert_kept, counters, sh, wait_for, wait_route};
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::Duration;

const GATEWAY: &str = env!("CARGO_BIN_EXE_nat-gateway");
const CONNECTIONS: usize = 36;
const ROUNDS: usize = 6;
const PUBLIC: &str = "198.18.0.1";
const SYNC_KEY: &str = "6e662d6e61742d666c6565742d6b6579\n";

/// Sends one datagram from each of N sockets (N flows) to HOST:PORT and prints `udp` and
/// how many echoes came back (3 s at most each).
const UDP_CLIENT: &str = "import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
socks = [socket.socket(fam, socket.SOCK_DGRAM) for _ in range(n)]
for i, s in enumerate(socks):
    s.settimeout(3)
    s.sendto(b'datagram %d' % i, (host, port))
got = 0
for i, s in enumerate(socks):
    try:
        got += s.recv(100) == b'datagram %d' % i
    except OSError:
        pass
print('udp', got, flush=True)";

/// Opens N connections to HOST:PORT one after another, each asking once (`?`) and waiting
/// 5 s at most for the answer; prints `times` and how long each took (`err` for a failure).
const TIMED_CONNECTIONS: &str = "import socket, sys, time
out = []
for i in range(int(sys.argv[3])):
    t = time.time()
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        c.sendall(b'?\\n')
        c.recv(100)
        out.append('%.3f' % (time.time() - t))
        c.close()
    except OSError:
        out.append('err')
print('times', *out, flush=True)";

/// Connects N UDP sockets to HOST:PORT (nothing listening), sends a datagram on each and
/// prints `refused` and how many heard the port unreachable error (3 s at most each).
const UDP_REFUSED: &str = "import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
for s in socks:
    s.settimeout(3)
    s.connect((host, port))
    s.send(b'anyone?')
refused = 0
for s in socks:
    try:
        s.recv(100)
    except ConnectionRefusedError:
        refused += 1
    except OSError:
        pass
print('refused', refused, flush=True)";

/// Pings HOST from N ICMP datagram sockets (each its own identifier) and prints `pongs` and
/// how many replies came back (3 s at most each).
const PINGS: &str = "import socket, sys
host, n = sys.argv[1], int(sys.argv[2])
v6 = ':' in host
fam, proto, ty = (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP, 8)
socks = [socket.socket(fam, socket.SOCK_DGRAM, proto) for _ in range(n)]
for i, s in enumerate(socks):
    s.settimeout(3)
    s.sendto(bytes([ty, 0, 0, 0, 0, 0, 0, 1]) + b'ping %d' % i, (host, 0))
got = 0
for i, s in enumerate(socks):
    try:
        got += s.recv(100)[8:] == b'ping %d' % i
    except OSError:
        pass
print('pongs', got, flush=True)";

struct Node {
    lines: Receiver<String>,
    seen: Vec<String>,
    pid: u32,
}

/// The nodes' outside addresses: the public address's next hops.
const ALL_HOPS: [&str; 3] = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];

/// The public IPv6 address of a dual-stack fleet ([`fleet_lab`]'s `v6`), and the server's.
const PUBLIC6: &str = "2001:db8:ff::1";
const SERVER6: &str = "2001:db8:2::2";

/// Starts node `n` (1 to 3) in namespace `ns`, translating with `profile` (also NAT66 with
/// `v6`).
fn start_node(lab: &mut Lab, ns: &str, n: u8, profile: &str, v6: bool) -> Node {
    let key = lab.dir.join("sync.key");
    std::fs::write(&key, SYNC_KEY).unwrap();
    let (password, bfd_key) = common::fleet_keys(&lab.dir);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, GATEWAY])
        .args(["--inside", "ig", "--inside-addr", &format!("10.0.0.{n}/24")])
        .args(["--outside", "og"])
        .args(["--outside-addr", &format!("203.0.113.{n}/24")])
        .args(["--gateway", "203.0.113.254", "--public", PUBLIC])
        .args(["--profile", profile, "--io", "packet"])
        .args(["--sync-listen", &format!("10.3.0.{n}:7600")])
        .arg("--sync-key-file")
        .arg(&key)
        .args(["--bgp-peer", "10.3.0.254", "--bfd", "--bgp-password-file"])
        .arg(&password)
        .arg("--bfd-key-file")
        .arg(&bfd_key)
        .args(["--metrics", "127.0.0.1:9464", "--duration", "60"])
        .args(["--forward", "tcp:8080=10.0.0.100:8000"]);
    if profile == "cgn" {
        cmd.arg("--block-log").arg(block_log(lab, n));
    }
    if v6 {
        cmd.args(["--inside-addr6", &format!("fd00::{n}/64")])
            .args(["--outside-addr6", &format!("2001:db8:3::{n}/64")])
            .args(["--gateway6", "2001:db8:3::fe", "--public6", PUBLIC6]);
    }
    if n == 3 {
        // Slower BFD than the others (BIRD's 200 ms wins over 150; four missed).
        cmd.args(["--bfd-interval", "150", "--bfd-multiplier", "4"]);
    }
    for peer in (1..=3u8).filter(|p| *p != n) {
        cmd.args([
            "--fleet-peer",
            &format!("203.0.113.{peer},10.3.0.{peer}:7600"),
        ]);
    }
    let (lines, pid) = lab.spawn_watched(&mut cmd);
    let mut seen = Vec::new();
    wait_for(&lines, "nat-gateway: ready", 10, &mut seen);
    Node { lines, seen, pid }
}

/// Node `n`'s `--block-log` (cgn).
fn block_log(lab: &Lab, n: u8) -> std::path::PathBuf {
    lab.dir.join(format!("blocks-{n}.log"))
}

/// The metric `stage`.`counter` of the node in namespace `ns` (0 if absent).
fn metric(ns: &str, stage: &str, counter: &str) -> u64 {
    common::metric(&common::scrape(ns, 9464), stage, counter).unwrap_or(0)
}

/// Runs python `script` with `args` in namespace `ns` and checks that it prints `want`.
fn says(ns: &str, script: &str, args: &[&str], want: &str) {
    let out = common::python_in(ns, script).args(args).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{out:?}");
}

/// Held while a test's lab runs: the two tests of this file take turns (a lab runs three
/// gateways, BIRD and the Python peers; side by side on the two-core CI machine, one UDP
/// answer of the rfc test's L4-hashed lab timed out once, 3 s).
fn one_lab_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LAB.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the server's answering TCP server on `server`:7000 and its UDP echo on port 7007
/// (namespace `v`), and opens [`CONNECTIONS`] asking connections to the first from the
/// client (namespace `c`), `rounds` questions each per round.
fn serve_and_ask(lab: &mut Lab, c: &str, v: &str, server: &str, rounds: usize) -> AskingClient {
    let py = common::system_python();
    lab.spawn(v, &[py, "-c", common::ANSWER_SERVER, server, "7000", "-"]);
    lab.udp_echo(v, server);
    AskingClient::open(c, &format!("{server}:7000"), CONNECTIONS, rounds, 6.0)
}

/// The public port of each connection's first answer (the address and port the server saw),
/// which must all be from `public`.
fn public_ports(first: &[String], public: &str) -> Vec<u16> {
    first
        .iter()
        .map(|a| {
            let (ip, port) = a.rsplit_once(':').unwrap();
            assert_eq!(ip, public, "{first:?}");
            port.parse().unwrap()
        })
        .collect()
}

/// Packets the nodes in namespaces `g` handed to another node, in all.
fn handed_over(g: &[String]) -> u64 {
    g.iter().map(|ns| metric(ns, "fleet", "handed_over")).sum()
}

/// The lab of the module's picture, every node started with `profile` and announcing; the
/// client's multipath route hashed as `hash` says (sysctl lines for namespace `$c`), the
/// client on 10.0.0.100 and the `extra` addresses after it. With `v6`, IPv6 beside IPv4:
/// the client fd00::100/64 with a multipath default route over the nodes' inside IPv6
/// addresses (hashed on L4), the nodes translating to [`PUBLIC6`] and announcing it over
/// the same BGP sessions (multiprotocol), the router's multipath route to it over their
/// outside IPv6 addresses hashed on L4, the server [`SERVER6`]. `None`: skipped.
struct FleetLab {
    lab: Lab,
    c: String,
    r: String,
    v: String,
    g: Vec<String>,
    nodes: Vec<Node>,
    /// With `v6`: the router's capture of every BGP session, from before the first OPEN.
    bgp_pcap: Option<std::path::PathBuf>,
}

/// The client's multipath route hashed on L4 (addresses, protocol, ports).
const L4_HASH: &str = "sysctl -qw net.ipv4.fib_multipath_hash_policy=1";

fn fleet_lab(tag: &str, profile: &str, hash: &str, extra: u8, v6: bool) -> Option<FleetLab> {
    if !common::is_root() {
        assert!(!common::in_ci(), "nat_fleet needs root under CI=true");
        eprintln!("SKIP: nat_fleet needs root (set CI=true to make this a failure)");
        return None;
    }
    for (tool, probe) in [("ip", "-V"), ("bird", "--version")] {
        if !common::require(tool, &[probe]) {
            return None;
        }
    }
    let t = format!("nf{tag}{}", std::process::id());
    let [c, s, r, v] = ["c", "s", "r", "v"].map(|n| format!("{t}{n}"));
    let g: Vec<String> = (1..=3).map(|n| format!("{t}g{n}")).collect();
    let mut lab = Lab {
        namespaces: [&c, &s, &r, &v].into_iter().chain(&g).cloned().collect(),
        children: Vec::new(),
        dir: common::temp_dir(&format!("nat-fleet-{tag}")),
    };
    let gs = g.join(" ");
    let extra: String = (1..=extra)
        .map(|i| format!("ip -n {c} addr add 10.0.0.{}/24 dev eth0\n", 100 + i))
        .collect();
    sh(&format!(
        "for n in {c} {s} {r} {v} {gs}; do ip netns add $n; ip netns exec $n sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip -n $n link set lo up; done
         for b in br0 br1 br2; do ip -n {s} link add $b type bridge; ip -n {s} link set $b up; done
         ip -n {c} link add eth0 type veth peer name sc netns {s}
         ip -n {s} link set sc master br0; ip -n {s} link set sc up
         ip -n {c} addr add 10.0.0.100/24 dev eth0; ip -n {c} link set eth0 up
         {extra}
         ip netns exec {c} ethtool -K eth0 tx off >/dev/null
         ip netns exec {c} {hash}
         ip netns exec {c} sysctl -qw net.ipv4.ping_group_range='0 2147483647'
         ip netns exec {v} sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv4.icmp_msgs_per_sec=100000
         ip -n {c} route add default nexthop via 10.0.0.1 nexthop via 10.0.0.2 nexthop via 10.0.0.3
         n=0
         for g in {gs}; do
           n=$((n + 1))
           # inside and outside (owned by nat-gateway), sync (kernel)
           ip -n $g link add ig type veth peer name si$n netns {s}
           ip -n $g link add og type veth peer name so$n netns {s}
           ip -n $g link add sy type veth peer name sy$n netns {s}
           ip -n {s} link set si$n master br0; ip -n {s} link set so$n master br1; ip -n {s} link set sy$n master br2
           for l in si$n so$n sy$n; do ip -n {s} link set $l up; done
           for l in ig og sy; do ip -n $g link set $l up; done
           ip -n $g addr add 10.3.0.$n/24 dev sy
         done
         ip -n {r} link add ro type veth peer name sr netns {s}
         ip -n {s} link set sr master br1; ip -n {s} link set sr up
         ip -n {r} addr add 203.0.113.254/24 dev ro; ip -n {r} link set ro up
         ip netns exec {r} ethtool -K ro tx off >/dev/null
         ip -n {r} link add rm type veth peer name sm netns {s}
         ip -n {s} link set sm master br2; ip -n {s} link set sm up
         ip -n {r} addr add 10.3.0.254/24 dev rm; ip -n {r} link set rm up
         ip -n {r} link add rv type veth peer name eth0 netns {v}
         ip -n {r} addr add 192.0.2.1/24 dev rv; ip -n {r} link set rv up
         ip -n {v} addr add 192.0.2.2/24 dev eth0; ip -n {v} link set eth0 up
         ip netns exec {v} ethtool -K eth0 tx off >/dev/null
         ip -n {v} route add default via 192.0.2.1
         ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1
         ip netns exec {r} sysctl -qw net.ipv4.fib_multipath_hash_policy=1
         for k in all default ro rv rm; do ip netns exec {r} sysctl -qw net.ipv4.conf.$k.rp_filter=0; done"
    ));
    if v6 {
        let on = "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0";
        sh(&format!(
            "for n in {c} {r} {v}; do ip netns exec $n {on}; done
             ip netns exec {c} sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0 net.ipv6.fib_multipath_hash_policy=1
             ip -n {c} -6 addr add fd00::100/64 dev eth0 nodad
             ip -n {c} -6 route add default nexthop via fd00::1 nexthop via fd00::2 nexthop via fd00::3
             ip netns exec {r} sysctl -qw net.ipv6.conf.ro.disable_ipv6=0 net.ipv6.conf.rv.disable_ipv6=0
             ip netns exec {r} sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.fib_multipath_hash_policy=1
             ip -n {r} -6 addr add 2001:db8:3::fe/64 dev ro nodad
             ip -n {r} -6 addr add 2001:db8:2::1/64 dev rv nodad
             ip netns exec {v} sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0
             ip -n {v} -6 addr add {SERVER6}/64 dev eth0 nodad
             ip -n {v} -6 route add default via 2001:db8:2::1"
        ));
    }
    // The router learns the public address from every node over BGP (with BFD, on the
    // management link) and installs one multipath route.
    // The router's BGP sessions, for tshark (each packet written as it comes).
    let bgp_pcap = v6.then(|| lab.dir.join("bgp.pcap"));
    if let Some(pcap) = &bgp_pcap {
        if !common::require("tcpdump", &["--version"]) {
            return None;
        }
        let path = pcap.to_str().unwrap();
        let args = [
            "--immediate-mode",
            "-i",
            "rm",
            "-U",
            "-Z",
            "root",
            "-w",
            path,
        ];
        lab.spawn(&r, &[&["tcpdump"][..], &args, &["tcp port 179"]].concat());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(pcap).map_or(true, |m| m.len() < 24) {
            assert!(
                std::time::Instant::now() < deadline,
                "tcpdump never started"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let neighbors = ["10.3.0.1", "10.3.0.2", "10.3.0.3"];
    lab.bird_router_with(&r, &neighbors, &["ro"], "rm", v6);
    let nodes: Vec<Node> = (1..=3u8)
        .zip(&g)
        .map(|(n, ns)| start_node(&mut lab, ns, n, profile, v6))
        .collect();
    // Every node's sync links up both ways, and every node announcing, before the first
    // flow.
    for ns in &g {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(ns, "sync", "peers_connected") != 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "{ns}: sync never connected"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    wait_route(&r, PUBLIC, &ALL_HOPS);
    if v6 {
        wait_route(
            &r,
            PUBLIC6,
            &["2001:db8:3::1", "2001:db8:3::2", "2001:db8:3::3"],
        );
    }
    // BFD up with every node, node 3's timing its own.
    for ns in &g {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(ns, "bfd", "up") != 1 {
            assert!(std::time::Instant::now() < deadline, "{ns}: BFD never up");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Some(FleetLab {
        lab,
        c,
        r,
        v,
        g,
        nodes,
        bgp_pcap,
    })
}

#[test]
fn a_nat_fleet_behind_ecmp_both_ways_keeps_every_connection_through_a_node_failure() {
    let _alone = one_lab_at_a_time();
    let Some(FleetLab {
        mut lab,
        c,
        r,
        v,
        g,
        mut nodes,
        ..
    }) = fleet_lab("nf", "hyperplane", L4_HASH, 0, false)
    else {
        return;
    };
    let mut client = serve_and_ask(&mut lab, &c, &v, "192.0.2.2", ROUNDS);
    let first = client.first.clone();
    // The server sees the public address, each connection on its own port, the ports
    // from the shares of several nodes (the client's hash spread the flows).
    let mut ports = public_ports(&first, PUBLIC);
    let split = nf_nat::PortSplit { nodes: 3, cores: 1 };
    let mut shares: Vec<u32> = ports
        .iter()
        .map(|p| nf_nat::owner_of(*p, split).node)
        .collect();
    shares.sort_unstable();
    shares.dedup();
    assert!(shares.len() >= 2, "{first:?}");
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), CONNECTIONS, "{first:?}");
    assert_kept("all nodes up", &first, &client.round(), ROUNDS);
    // Answers that beat their session's copy went to the node owning their port.
    std::thread::sleep(Duration::from_millis(1100));
    let handed = handed_over(&g);
    assert!(
        handed >= 1,
        "no answer reached another node before its copy"
    );
    // UDP: the first answer of a flow that reaches a node without the session is no
    // mapping of its own (nat_no_mapping) and goes to its port's node the same way.
    let n = CONNECTIONS.to_string();
    says(
        &c,
        UDP_CLIENT,
        &["192.0.2.2", "7007", &n],
        &format!("udp {n}"),
    );
    std::thread::sleep(Duration::from_millis(1100));
    let handed_udp = handed_over(&g) - handed;
    assert!(
        handed_udp >= 1,
        "no UDP answer reached another node before its copy"
    );

    // ICMP: the server's port unreachable errors about new UDP flows (the router's hash
    // puts every error from the server on one node) and the echo replies to pings (each
    // its own identifier) beat their sessions' copies as the answers above did, and go to
    // the node owning the quoted port or the identifier the same way: every flow hears its
    // error and every ping its reply.
    let before_icmp = handed_over(&g);
    says(
        &c,
        UDP_REFUSED,
        &["192.0.2.2", "7999", &n],
        &format!("refused {n}"),
    );
    says(&c, PINGS, &["192.0.2.2", &n], &format!("pongs {n}"));
    std::thread::sleep(Duration::from_millis(1100));
    let handed_icmp = handed_over(&g) - before_icmp;
    assert!(
        handed_icmp >= 1,
        "no ICMP error or echo reply reached another node before its copy"
    );

    // A port forward: 24 connections from the server to the public address reach the
    // client's server, the inside answers through the client's own ECMP route: most
    // SYN+ACKs reach another node than the one the SYN came through, before the copy of
    // its session; they wait for it there (`fleet.waited_for_copy`) instead of being
    // dropped (a second's SYN retransmission each).
    lab.spawn(
        &c,
        &[
            common::system_python(),
            "-c",
            common::ANSWER_SERVER,
            "10.0.0.100",
            "8000",
            "inside",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let timed = common::python_in(&v, TIMED_CONNECTIONS)
        .args([PUBLIC, "8080", "24"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&timed.stdout);
    let times: Vec<f64> = said
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(f64::MAX))
        .collect();
    assert_eq!(times.len(), 24, "{timed:?}");
    assert!(times.iter().all(|t| *t < 0.5), "{said}");
    // The metrics are published every second.
    std::thread::sleep(Duration::from_millis(1100));
    let waited: u64 = g
        .iter()
        .map(|ns| metric(ns, "fleet", "waited_for_copy"))
        .sum();
    assert!(waited >= 1, "no answer waited for its copy: {said}");
    let slowest = times.iter().copied().fold(0.0, f64::max);

    // Node 1 fails: the router drops it (BFD), the client's route is made to.
    sh(&format!("kill -KILL {}", nodes[0].pid));
    sh(&format!(
        "ip -n {c} route replace default nexthop via 10.0.0.2 nexthop via 10.0.0.3"
    ));
    for n in &mut nodes[1..] {
        wait_for(&n.lines, "10.3.0.1:7600 down: orphaned", 10, &mut n.seen);
    }
    wait_route(&r, PUBLIC, &ALL_HOPS[1..]);
    assert_kept("after node 1 failed", &first, &client.round(), ROUNDS);

    // Node 1 comes back empty: it announces only once both survivors' resyncs gave it
    // every session (its allocator holding their ports, those of its own share the
    // survivors adopted included), the router and the client spread the flows over all
    // three again, and node 1 serves its share by the copies.
    nodes[0] = start_node(&mut lab, &g[0], 1, "hyperplane", false);
    let back = &mut nodes[0];
    wait_for(&back.lines, "bgp: announcing", 15, &mut back.seen);
    let at = |what: &str| back.seen.iter().position(|l| l.contains(what)).unwrap();
    for peer in ["10.3.0.2:7600", "10.3.0.3:7600"] {
        assert!(
            at(&format!("sync: resync from {peer} done")) < at("bgp: announcing"),
            "{:?}",
            back.seen
        );
    }
    wait_route(&r, PUBLIC, &ALL_HOPS);
    sh(&format!(
        "ip -n {c} route replace default nexthop via 10.0.0.1 nexthop via 10.0.0.2 nexthop via 10.0.0.3"
    ));
    assert_kept("after node 1 came back", &first, &client.round(), ROUNDS);
    // New connections beside the old ones: node 1 gives out ports of its own share again,
    // never one a survivor's adopted session holds.
    let mut more = AskingClient::open(&c, "192.0.2.2:7000", CONNECTIONS, ROUNDS, 6.0);
    ports.extend(more.first.iter().map(|a| {
        let (ip, port) = a.rsplit_once(':').unwrap();
        assert_eq!(ip, PUBLIC);
        port.parse::<u16>().unwrap()
    }));
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        2 * CONNECTIONS,
        "a public port given out twice"
    );
    let newer = more.first.clone();
    assert_kept("new connections", &newer, &more.round(), ROUNDS);
    assert_kept("old connections", &first, &client.round(), ROUNDS);
    more.close();
    client.close();

    let mut adopted = 0;
    for (i, n) in nodes.iter_mut().enumerate().skip(1) {
        sh(&format!("kill -TERM {}", n.pid));
        wait_for(&n.lines, "fleet.owner_down", 10, &mut n.seen);
        std::thread::sleep(Duration::from_millis(200));
        n.seen.extend(n.lines.try_iter());
        let m = counters(&n.seen);
        let get = |k: &str| m.get(k).copied().unwrap_or(0);
        for k in [
            "sync.apply_errors",
            "sync.send_dropped",
            "sync.auth_failures",
            "nat.ports_exhausted",
            "bfd.detect_expired",
        ] {
            assert_eq!(get(k), 0, "node {}: {k}: {m:?}", i + 1);
        }
        assert!(get("sync.created") >= 1, "node {}: {m:?}", i + 1);
        adopted += get("conntrack.v4_orphans_adopted");
    }
    assert!(adopted >= 1, "no survivor adopted node 1's sessions");
    eprintln!(
        "NAT fleet: {handed} TCP, {handed_udp} UDP and {handed_icmp} ICMP answers handed to their port's node before the copy came; {waited} inside answers through the port forward waited for their copy (24 connections, the slowest {slowest:.3} s); {adopted} of node 1's sessions adopted by the survivors"
    );
}

/// Answers every UDP datagram with the address and port it came from (`WHO_AM_I ADDR PORT`).
const WHO_AM_I: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('who ready', flush=True)
while True:
    d, a = s.recvfrom(100)
    s.sendto(('%s:%d' % a).encode(), a)";

/// From each address of ADDRS, one UDP socket (port 5000) asks four servers (HOST, ports
/// FIRST to FIRST + 3) who it is; prints `seen` and, per address, the answers joined by `/`.
const ASK_AROUND: &str = "import socket, sys
import time
host, first, sport, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ports = range(first, first + 4)
out = []
for addr in sys.argv[5:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, sport))
    s.settimeout(3)
    seen = []
    for p in ports:
        if seen:
            time.sleep(pause)
        s.sendto(b'?', (host, p))
        try:
            seen.append(s.recv(100).decode())
        except OSError:
            seen.append('timeout')
    out.append('/'.join(seen))
print('seen', *out, flush=True)";

/// Sends one UDP datagram from the server to `sys.argv[1]` at each port after it.
const PORT_SCAN: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for p in sys.argv[2:]:
    s.sendto(b'scan', (sys.argv[1], int(p)))";

/// The rfc profile's endpoint-independent mapping (RFC 4787 REQ-1) holds fleet-wide only if
/// every flow of an inside endpoint reaches the same node: with the client's route hashed on
/// the source address alone (Linux: `fib_multipath_hash_policy` 3, `fib_multipath_hash_fields`
/// 1), eight inside addresses each talk to four servers from one socket and each sees one
/// public port for all four, the addresses spread over the nodes; hashed on L4, the same
/// sockets' flows reach different nodes and get different ports (the control), unless an
/// endpoint's flows come more than sync's interval apart: then each finds its first flow's
/// mapping copied to its node and keeps it, and the answers that reach the mapping's owner
/// before the copy of the other node's session wait there for it, none of their places
/// taken by a port scan of 600 unmapped ports just before (dropped at once, not held). A
/// cgn fleet
/// the same as the rfc one with source hashing, its port blocks cut from each node's share:
/// every node holds all eight subscribers' blocks (its own, and those of its copies of the
/// other nodes' sessions).
#[test]
fn an_rfc_fleet_keeps_endpoint_independent_mapping_when_the_inside_hashes_on_the_source() {
    let _alone = one_lab_at_a_time();
    let source_only =
        "sysctl -qw net.ipv4.fib_multipath_hash_policy=3 net.ipv4.fib_multipath_hash_fields=1";
    let (mut mapped, mut waited) = (Vec::new(), Vec::new());
    for (tag, profile, hash) in [
        ("ne", "rfc", source_only),
        ("nl", "rfc", L4_HASH),
        ("nc", "cgn", source_only),
    ] {
        let Some(FleetLab {
            mut lab, c, v, g, ..
        }) = fleet_lab(tag, profile, hash, 7, false)
        else {
            return;
        };
        for port in ["7101", "7102", "7103", "7104"] {
            let (lines, _) =
                lab.spawn_watched(common::python_in(&v, WHO_AM_I).args(["192.0.2.2", port]));
            wait_for(&lines, "who ready", 10, &mut Vec::new());
        }
        let addrs: Vec<String> = (100..108).map(|i| format!("10.0.0.{i}")).collect();
        // Each address asks the four servers from one socket (its source port), `pause`
        // seconds between the questions; the public address and port of every answer.
        let ask = |sport: &str, pause: &str| -> Vec<Vec<String>> {
            let out = common::python_in(&c, ASK_AROUND)
                .args(["192.0.2.2", "7101", sport, pause])
                .args(&addrs)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            let seen: Vec<Vec<String>> = said
                .split_whitespace()
                .skip(1)
                .map(|p| p.split('/').map(String::from).collect())
                .collect();
            assert_eq!(seen.len(), addrs.len(), "{out:?}");
            for s in &seen {
                assert_eq!(s.len(), 4, "{seen:?}");
                assert!(
                    s.iter().all(|m| m.starts_with(&format!("{PUBLIC}:"))),
                    "{seen:?}"
                );
            }
            seen
        };
        let seen = ask("5000", "0");
        let fleet = |c: &str| -> u64 { g.iter().map(|ns| metric(ns, "fleet", c)).sum() };
        if tag == "nl" {
            // Spaced wider than sync's 10 ms, the same endpoints' flows find their first
            // flow's mapping copied to whichever node their L4 hash picks, and keep it: one
            // mapping each. The answer to such a flow is for the mapping owner's port: when
            // the router's hash brings it to the owner (or to the third node, which hands
            // it over), it comes before the copy of the session the other node just opened
            // and waits at the owner for that copy (4 in 9 flows; 24 flows here).
            // First a port scan of the public address from the server (600 UDP ports no
            // mapping holds): no session will come for those, so the nodes drop them at
            // once instead of holding them in the places the answers below wait in.
            let mapped: Vec<&str> = seen
                .iter()
                .flatten()
                .filter_map(|m| m.rsplit_once(':').map(|(_, p)| p))
                .collect();
            let scan: Vec<String> = (20_000..20_700u16)
                .map(|p| p.to_string())
                .filter(|p| !mapped.contains(&p.as_str()))
                .take(600)
                .collect();
            let out = common::python_in(&v, PORT_SCAN)
                .arg(PUBLIC)
                .args(&scan)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while fleet("answers_unmapped") < 500 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the scan's packets: {} dropped unheld",
                    fleet("answers_unmapped")
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            let spaced = ask("5001", "0.2");
            assert!(spaced.iter().all(|s| one_mapping(s)), "spaced: {spaced:?}");
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while fleet("answers_waited_for_copy") == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no answer waited at its port's owner"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // An answer that reached its port's owner before the copy of a session another node
        // opened on the owner's mapping waited for it there (none in vain).
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(fleet("answer_wait_expired"), 0, "{tag}");
        waited.push(fleet("answers_waited_for_copy"));
        if profile == "cgn" {
            // Each node gave out the blocks of its own subscribers and took those of the
            // others' through their sessions' copies: eight on every node.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let blocks = || -> Vec<u64> {
                g.iter()
                    .map(|ns| metric(ns, "snat", "blocks_allocated"))
                    .collect()
            };
            while blocks() != [8, 8, 8] {
                assert!(
                    std::time::Instant::now() < deadline,
                    "blocks per node: {:?}",
                    blocks()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            let claimed: u64 = g.iter().map(|ns| metric(ns, "snat", "claimed")).sum();
            assert!(claimed >= 2 * 8 * 4, "{claimed} copies claimed");
            // The block logs: each subscriber's block given out once fleet-wide, and held
            // for it by the two other nodes ("for node N", the node that gave it out).
            let logs = || -> Vec<(u8, String)> {
                (1..=3u8)
                    .flat_map(|n| {
                        let log = std::fs::read_to_string(block_log(&lab, n)).unwrap();
                        log.lines().map(|l| (n, l.to_string())).collect::<Vec<_>>()
                    })
                    .collect()
            };
            // Written between batches, after the counters moved.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while logs().len() < 24 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut given = Vec::new();
            let mut held = 0;
            for (n, line) in logs() {
                let words: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(words[1..3], ["block", "allocated"], "{line}");
                assert!(words[0].parse::<f64>().is_ok_and(|t| t > 1.7e9), "{line}");
                match words[words.len() - 3..] {
                    ["for", "node", other] => {
                        assert_ne!(other.parse::<u8>().unwrap(), n - 1, "{line}");
                        held += 1;
                    }
                    _ => given.push(words[6].to_string()),
                }
            }
            given.sort();
            let mut subscribers = addrs.clone();
            subscribers.sort();
            assert_eq!(given, subscribers, "subscribers given a block");
            assert_eq!(held, 16, "blocks held for the other nodes' subscribers");
        }
        mapped.push(seen);
    }
    let (source, l4, cgn) = (&mapped[0], &mapped[1], &mapped[2]);
    assert!(cgn.iter().all(|s| one_mapping(s)), "cgn: {cgn:?}");
    assert!(
        source.iter().all(|s| one_mapping(s)),
        "source hashing: {source:?}"
    );
    // The nodes' shares of the ports tell where each address went.
    let split = nf_nat::PortSplit { nodes: 3, cores: 1 };
    let node =
        |m: &str| nf_nat::owner_of(m.rsplit_once(':').unwrap().1.parse().unwrap(), split).node;
    let spread = |m: &[Vec<String>]| {
        let mut nodes: Vec<u32> = m.iter().map(|s| node(&s[0])).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len()
    };
    let nodes = spread(source);
    assert!(nodes >= 2, "every address on one node: {source:?}");
    assert!(
        spread(cgn) >= 2,
        "every cgn subscriber on one node: {cgn:?}"
    );
    let split_up = l4.iter().filter(|s| !one_mapping(s)).count();
    assert!(
        split_up >= 1,
        "L4 hashing kept every endpoint on one node: {l4:?}"
    );
    eprintln!(
        "rfc fleet: 8 of 8 endpoints one mapping with source hashing ({nodes} nodes); {split_up} of 8 several mappings with L4 hashing; cgn: 8 of 8 one mapping ({} nodes); answers that waited at their port's owner for a copy (source, L4, cgn): {waited:?}",
        spread(cgn)
    );
}

/// Every flow of the endpoint left from one public address and port.
fn one_mapping(s: &[String]) -> bool {
    s.iter().all(|m| *m == s[0])
}

/// NAT66 in a fleet: the same three nodes translating IPv6 to one public IPv6 address
/// beside IPv4 (hyperplane), the client's IPv6 route and the route BIRD learns for the
/// public IPv6 address from every node (multiprotocol BGP) both multipath over the nodes
/// (hashed on L4; tshark reads the nodes' OPENs offering IPv6 unicast and their
/// MP_REACH_NLRI announcements from the router's capture): 36 TCP connections each
/// answer from the public address on its own port in every round, the SYN+ACKs that reach
/// another node than their SYN's before the copy are handed to their port's owner, and 36
/// UDP flows hear their echoes and 36 ICMPv6 pings (each its own identifier) their replies,
/// their first answers handed over alike.
#[test]
fn a_nat66_fleet_hands_answers_to_their_port_owner() {
    let _alone = one_lab_at_a_time();
    let Some(FleetLab {
        mut lab,
        c,
        v,
        g,
        bgp_pcap,
        ..
    }) = fleet_lab("n6", "hyperplane", L4_HASH, 0, true)
    else {
        return;
    };
    if let Some(pcap) = &bgp_pcap {
        mp_bgp_dissected(pcap);
    }
    let mut client = serve_and_ask(&mut lab, &c, &v, SERVER6, 3);
    let first = client.first.clone();
    let mut ports = public_ports(&first, PUBLIC6);
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), CONNECTIONS, "{first:?}");
    assert_kept("NAT66", &first, &client.round(), 3);
    std::thread::sleep(Duration::from_millis(1100));
    let handed = handed_over(&g);
    assert!(
        handed >= 1,
        "no IPv6 answer reached another node before its copy"
    );
    let n = CONNECTIONS.to_string();
    says(&c, UDP_CLIENT, &[SERVER6, "7007", &n], &format!("udp {n}"));
    says(&c, PINGS, &[SERVER6, &n], &format!("pongs {n}"));
    std::thread::sleep(Duration::from_millis(1100));
    let handed_later = handed_over(&g) - handed;
    assert!(
        handed_later >= 1,
        "no UDP or ICMPv6 answer reached another node before its copy"
    );
    let fleet = |c: &str| -> u64 { g.iter().map(|ns| metric(ns, "fleet", c)).sum() };
    assert_eq!(fleet("answer_wait_expired"), 0);
    eprintln!(
        "NAT66 fleet: {CONNECTIONS} connections kept over 3 rounds, {handed} TCP and {handed_later} UDP/ICMPv6 answers handed to their port's owner"
    );
}

/// tshark on the router's capture of the NAT66 fleet's BGP sessions: every frame well
/// formed; each node's OPEN offers IPv6 unicast (capability 1, AFI 2, SAFI 1) beside IPv4,
/// and each node announced the public IPv6 address in MP_REACH_NLRI (AFI 2, SAFI 1) with
/// its outside IPv6 address as the next hop.
fn mp_bgp_dissected(pcap: &std::path::Path) {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let fields = [
        "_ws.malformed",
        "_ws.expert.severity",
        "ip.src",
        "bgp.type",
        "bgp.cap.mp.afi",
        "bgp.update.path_attribute.mp_reach_nlri.afi",
        "bgp.update.path_attribute.mp_reach_nlri.safi",
        "bgp.update.path_attribute.mp_reach_nlri.next_hop.ipv6",
        "bgp.mp_reach_nlri_ipv6_prefix",
    ];
    let args = [
        "-n",
        "-o",
        "tcp.analyze_sequence_numbers:FALSE",
        "-Y",
        "bgp",
    ];
    let rows = common::tshark_rows(pcap, &args, &fields);
    let mut offered = std::collections::BTreeSet::new();
    let mut announced = std::collections::BTreeSet::new();
    for (i, r) in rows.iter().enumerate() {
        common::assert_dissected_clean(i, r);
        let from = r["ip.src"].first().cloned().unwrap_or_default();
        let Some(n) = from.strip_prefix("10.3.0.").filter(|n| *n != "254") else {
            continue;
        };
        if r["bgp.cap.mp.afi"].iter().any(|a| a == "2") {
            offered.insert(n.to_string());
        }
        if r["bgp.update.path_attribute.mp_reach_nlri.afi"]
            .iter()
            .any(|a| a == "2")
        {
            assert_eq!(
                (
                    r["bgp.update.path_attribute.mp_reach_nlri.safi"].join(","),
                    r["bgp.update.path_attribute.mp_reach_nlri.next_hop.ipv6"].join(","),
                    r["bgp.mp_reach_nlri_ipv6_prefix"].join(","),
                ),
                (
                    "1".to_string(),
                    format!("2001:db8:3::{n}"),
                    PUBLIC6.to_string()
                ),
                "frame {i}: {r:?}"
            );
            announced.insert(n.to_string());
        }
    }
    let all: std::collections::BTreeSet<String> = ["1", "2", "3"].map(String::from).into();
    assert_eq!(offered, all, "OPENs offering IPv6 unicast: {rows:?}");
    assert_eq!(announced, all, "MP_REACH_NLRI announcements: {rows:?}");
}
