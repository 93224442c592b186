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
//! (`--bgp-peer`, with BFD) once it holds its peers' sessions. The client's flows reach the
//! nodes by its own ECMP hash and the server's answers by the router's, so most answers
//! reach another node than the one that translated the flow: a SYN+ACK that comes before
//! its session's copy (sync runs every 10 ms, the namespaces answer in microseconds) is
//! handed to the node that owns its port (`fleet.handed_over`), the rest find the copy. 36
//! TCP connections answer from the same public address and port every round, and 36 UDP
//! flows get their echoes (their first answers handed over alike); then node 1 is
//! killed, the router drops it (BFD) and the client's route is made to, both hashes move
//! flows between the survivors too, and every connection still answers, its public port
//! unchanged: the survivors adopt node 1's sessions from their copies. Node 1 comes back
//! empty, announces only after both survivors' resyncs, takes its share of the flows again
//! by the copies, and 36 new connections get ports no other connection holds. Needs root,
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
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
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

struct Node {
    lines: Receiver<String>,
    seen: Vec<String>,
    pid: u32,
}

/// The nodes' outside addresses: the public address's next hops.
const ALL_HOPS: [&str; 3] = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];

/// Starts node `n` (1 to 3) in namespace `ns`.
fn start_node(lab: &mut Lab, ns: &str, n: u8) -> Node {
    let key = lab.dir.join("sync.key");
    std::fs::write(&key, SYNC_KEY).unwrap();
    let password = lab.dir.join("bgp.password");
    std::fs::write(&password, format!("{}\n", common::BGP_PASSWORD)).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, GATEWAY])
        .args(["--inside", "ig", "--inside-addr", &format!("10.0.0.{n}/24")])
        .args(["--outside", "og"])
        .args(["--outside-addr", &format!("203.0.113.{n}/24")])
        .args(["--gateway", "203.0.113.254", "--public", PUBLIC])
        .args(["--profile", "hyperplane", "--io", "packet"])
        .args(["--sync-listen", &format!("10.3.0.{n}:7600")])
        .arg("--sync-key-file")
        .arg(&key)
        .args(["--bgp-peer", "10.3.0.254", "--bfd", "--bgp-password-file"])
        .arg(&password)
        .args(["--metrics", "127.0.0.1:9464", "--duration", "60"]);
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

/// The metric `stage`.`counter` of the node in namespace `ns` (0 if absent).
fn metric(ns: &str, stage: &str, counter: &str) -> u64 {
    common::metric(&common::scrape(ns, 9464), stage, counter).unwrap_or(0)
}

#[test]
fn a_nat_fleet_behind_ecmp_both_ways_keeps_every_connection_through_a_node_failure() {
    if !common::is_root() {
        assert!(!common::in_ci(), "nat_fleet needs root under CI=true");
        eprintln!("SKIP: nat_fleet needs root (set CI=true to make this a failure)");
        return;
    }
    for (tool, probe) in [("ip", "-V"), ("bird", "--version")] {
        if !common::require(tool, &[probe]) {
            return;
        }
    }
    let t = format!("nfnf{}", std::process::id());
    let [c, s, r, v] = ["c", "s", "r", "v"].map(|n| format!("{t}{n}"));
    let g: Vec<String> = (1..=3).map(|n| format!("{t}g{n}")).collect();
    let mut lab = Lab {
        namespaces: [&c, &s, &r, &v].into_iter().chain(&g).cloned().collect(),
        children: Vec::new(),
        dir: common::temp_dir("nat-fleet"),
    };
    let gs = g.join(" ");
    sh(&format!(
        "for n in {c} {s} {r} {v} {gs}; do ip netns add $n; ip netns exec $n sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip -n $n link set lo up; done
         for b in br0 br1 br2; do ip -n {s} link add $b type bridge; ip -n {s} link set $b up; done
         ip -n {c} link add eth0 type veth peer name sc netns {s}
         ip -n {s} link set sc master br0; ip -n {s} link set sc up
         ip -n {c} addr add 10.0.0.100/24 dev eth0; ip -n {c} link set eth0 up
         ip netns exec {c} ethtool -K eth0 tx off >/dev/null
         ip netns exec {c} sysctl -qw net.ipv4.fib_multipath_hash_policy=1
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
    // The router learns the public address from every node over BGP (with BFD, on the
    // management link) and installs one multipath route.
    lab.bird_router(&r, &["10.3.0.1", "10.3.0.2", "10.3.0.3"], &["ro"], "rm");
    lab.spawn(
        &v,
        &[
            common::system_python(),
            "-c",
            common::ANSWER_SERVER,
            "0.0.0.0",
            "7000",
            "-",
        ],
    );
    lab.udp_echo(&v, "192.0.2.2");
    let mut nodes: Vec<Node> = (1..=3u8)
        .zip(&g)
        .map(|(n, ns)| start_node(&mut lab, ns, n))
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

    let mut client = AskingClient::open(&c, "192.0.2.2:7000", CONNECTIONS, ROUNDS, 6.0);
    let first = client.first.clone();
    // The server sees the public address, each connection on its own port, the ports
    // from the shares of several nodes (the client's hash spread the flows).
    let mut ports: Vec<u16> = first
        .iter()
        .map(|a| {
            let (ip, port) = a.rsplit_once(':').unwrap();
            assert_eq!(ip, PUBLIC, "{first:?}");
            port.parse().unwrap()
        })
        .collect();
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
    let handed: u64 = g.iter().map(|ns| metric(ns, "fleet", "handed_over")).sum();
    assert!(
        handed >= 1,
        "no answer reached another node before its copy"
    );
    // UDP: the first answer of a flow that reaches a node without the session is no
    // mapping of its own (nat_no_mapping) and goes to its port's node the same way.
    let udp = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c,
            common::system_python(),
            "-c",
            UDP_CLIENT,
        ])
        .args(["192.0.2.2", "7007", &CONNECTIONS.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&udp.stdout);
    assert_eq!(said.trim(), format!("udp {CONNECTIONS}"), "{udp:?}");
    std::thread::sleep(Duration::from_millis(1100));
    let handed_udp = g
        .iter()
        .map(|ns| metric(ns, "fleet", "handed_over"))
        .sum::<u64>()
        - handed;
    assert!(
        handed_udp >= 1,
        "no UDP answer reached another node before its copy"
    );

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
    nodes[0] = start_node(&mut lab, &g[0], 1);
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
        ] {
            assert_eq!(get(k), 0, "node {}: {k}: {m:?}", i + 1);
        }
        assert!(get("sync.created") >= 1, "node {}: {m:?}", i + 1);
        adopted += get("conntrack.v4_orphans_adopted");
    }
    assert!(adopted >= 1, "no survivor adopted node 1's sessions");
    eprintln!(
        "NAT fleet: {handed} TCP and {handed_udp} UDP answers handed to their port's node before the copy came, {adopted} of node 1's sessions adopted by the survivors"
    );
}
