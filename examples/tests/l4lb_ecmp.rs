//! Three `l4lb` nodes behind a BGP router (BIRD) that installs the VIP's route over all of
//! them (ECMP, the kernel hashing L4), every node keeping copies of every other's sessions
//! (`--sync-listen` / `--sync-peer`, authenticated with `--sync-key-file`), in network
//! namespaces this test makes:
//!
//! ```text
//!  ns c: client 198.51.100.2 ═ ns r: router (BIRD, AS 65000) ─ 192.0.2.10/32 via all ─┬─ ns g1: l4lb 1 ═╗  each node: BGP over 10.4.N.0/24,
//!                                  ║ 10.1.0.254                                       ├─ ns g2: l4lb 2 ═╣  data on 10.2.N.0/24, sync on
//!                                  ║                                                  └─ ns g3: l4lb 3 ═╣  10.3.0.N (a bridge of its own)
//!                                  ║                                                                   ║ VXLAN 42
//!                          ns s: bridge ═ b1 10.1.0.11, b2 10.1.0.12, b3 10.1.0.13 (the VIP on a Linux VXLAN device) ═╝
//! ```
//!
//! Each node announces the VIP itself (`--bgp-peer`, [`nf_examples::bgp`]) with its own
//! address as the next hop, its session signed with TCP MD5 (`--bgp-password-file`, BIRD's
//! `password`; an unsigned connection to the router is never answered). Encap mode (direct server return): the backends answer through
//! the router, never through the load balancers, so each node sees only its flows' client
//! side. 36 TCP connections spread over the nodes by the router's hash; then the backend
//! carrying the most is drained everywhere (it keeps its flows, takes no new ones) and
//! node 1 fails: killed, so that its BGP session ends and the router withdraws its next
//! hop — and, hashing over two next hops instead of three, moves some of the survivors'
//! flows between them as well. Every connection carries on with the backend it started on:
//! wherever its packets now arrive, that node holds its session, its own or a copy (a node
//! without it would send a drained backend's flows elsewhere, whose kernel answers with a
//! RST). Then node 1 comes back empty: it announces the VIP only once both survivors' full
//! resyncs gave it copies of every session, the router spreads the flows over all three
//! again, and every connection still answers from its own backend. Last, node 2 hangs
//! (stopped: its connections open and silent): its peers take it as failed after a second
//! without a heartbeat, the router as soon as BFD (every packet signed both ways,
//! `--bfd-key-file` and BIRD's `meticulous keyed sha1`) misses three packets (`--bfd`; 200 ms
//! apart here: asserted under 2 s, the BGP hold time being 3 s), and every connection still
//! answers from its own backend through nodes 1 and 3. Then node 3 is taken down for
//! maintenance (SIGTERM, `--drain 2`): it withdraws the VIP first and forwards on while the
//! router moves its flows to node 1, and every connection still answers from its own
//! backend. tshark reads the router's capture of every BGP session: every message well
//! formed, every one signed, each OPEN and UPDATE with the AS, hold time, identifier, prefix,
//! next hop, origin and AS path the node was given. The control: the same fleet without sync, the same drain and node failure:
//! connections of the drained backend are reset. And the fleet in DNAT mode, the backends'
//! default route an ECMP route over the three nodes, so that most connections' answers pass
//! another node than their client's packets: every connection keeps its backend through a
//! drain and a node failure, and the backends see the client's address. The DNAT fleet
//! dual-stack: an IPv6 VIP beside the IPv4 one, its route learned by BIRD over the same BGP
//! sessions (multiprotocol), 36 IPv6 connections keep their backends through a node
//! failure, and the backends see the client's IPv6 address. Needs root, `ip`, `bird`, python3,
//! `tcpdump` and `tshark`: without them it skips, except under `CI=true`.
#![cfg(target_os = "linux")]
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed setup step should fail the test"
)]

mod common;

use common::{AskingClient, Lab, assert_kept, counters, sh, wait_for, wait_route};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::Duration;

const L4LB: &str = env!("CARGO_BIN_EXE_l4lb");
const CONNECTIONS: usize = 36;
const VIP: &str = "192.0.2.10";
const NODES: u8 = 3;
const LB_KEY: &str = "6e662d6c622065636d70207465737421";
/// The fleet's sync key (`--sync-key-file`): every sync connection authenticated, every
/// frame tagged.
const SYNC_KEY: &str = "6e662d73796e632d6b65792d74657374\n";
/// The first step of changing the fleet's key, as node 1 comes back: the old key still
/// used, a new one accepted too (a second line).
const ROTATING: &str = "6e662d73796e632d6b65792d74657374\n6e662d6e65772d73796e632d6b657921\n";

/// How the nodes reach the backends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// VXLAN to each backend, which answers the client directly (through the router).
    Encap,
    /// Destination NAT: the backends answer through the nodes, their default route an ECMP
    /// route over all three.
    Dnat,
    /// [`Mode::Dnat`] with IPv6 beside IPv4: the IPv6 VIP [`VIP6`] too, over the backends'
    /// IPv6 addresses, announced over the same BGP sessions (multiprotocol BGP).
    DualStack,
}

/// The IPv6 VIP of [`Mode::DualStack`].
const VIP6: &str = "2001:db8:10::10";
/// The nodes' IPv6 addresses on their links to the router, the IPv6 VIP's next hops.
const ALL_HOPS6: [&str; 3] = ["2001:db8:2:1::2", "2001:db8:2:2::2", "2001:db8:2:3::2"];

struct Node {
    lines: Receiver<String>,
    seen: Vec<String>,
    pid: u32,
}

/// Starts node `n` (1 to [`NODES`]) in its namespace, with session sync when `keys` gives
/// its `--sync-key-file`.
fn start_node(
    lab: &mut Lab,
    ns: &str,
    n: u8,
    file: &std::path::Path,
    keys: Option<&str>,
    mode: Mode,
) -> Node {
    let key = lab.dir.join(format!("sync-{n}.key"));
    let (password, bfd_key) = common::fleet_keys(&lab.dir);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, L4LB])
        .args(["--client", "cg", "--client-addr", &format!("10.2.{n}.2/24")])
        .args(["--gateway", &format!("10.2.{n}.1")])
        .args([
            "--backend",
            "bg",
            "--backend-addr",
            &format!("10.1.0.{n}/24"),
        ])
        .args(["--vip", "192.0.2.10:7000", "--backends"])
        .arg(file)
        .args(["--io", "packet", "--lb-key", LB_KEY]);
    if mode == Mode::Encap {
        cmd.args(["--mode", "encap", "--vni", "42"])
            .args(["--inner-mac", "02:00:00:00:00:01"]);
    }
    if mode == Mode::DualStack {
        cmd.args(["--client-addr6", &format!("2001:db8:2:{n}::2/64")])
            .args(["--gateway6", &format!("2001:db8:2:{n}::1")])
            .args(["--backend-addr6", &format!("fd00:1::{n}/64")])
            .args(["--vip", &format!("[{VIP6}]:7000")]);
    }
    if let Some(keys) = keys {
        std::fs::write(&key, keys).unwrap();
        cmd.args(["--sync-listen", &format!("10.3.0.{n}:7600")])
            .arg("--sync-key-file")
            .arg(&key);
        for peer in (1..=NODES).filter(|p| *p != n) {
            cmd.args(["--sync-peer", &format!("10.3.0.{peer}:7600")]);
        }
    }
    cmd.args([
        "--bgp-peer",
        &format!("10.4.{n}.1"),
        "--bfd",
        "--drain",
        "2",
    ])
    .arg("--bgp-password-file")
    .arg(&password)
    .arg("--bfd-key-file")
    .arg(&bfd_key)
    .args(["--duration", "90", "--metrics", "127.0.0.1:9464"]);
    let (lines, pid) = lab.spawn_watched(&mut cmd);
    let mut seen = Vec::new();
    wait_for(&lines, "l4lb: ready", 10, &mut seen);
    Node { lines, seen, pid }
}

impl Node {
    /// Waits for a line containing `what`, unless one came already.
    fn wait(&mut self, what: &str, secs: u64) {
        if !self.seen.iter().any(|l| l.contains(what)) {
            wait_for(&self.lines, what, secs, &mut self.seen);
        }
    }
}

/// Rounds of asking per [`AskingClient::round`].
const ROUNDS: usize = 8;

/// The nodes' addresses on their links to the router, the VIP's next hops.
const ALL_HOPS: [&str; 3] = ["10.2.1.2", "10.2.2.2", "10.2.3.2"];

/// Starts every node (with session sync or without), waits until each announces the VIP
/// and the router's route goes over all of them.
fn start_all(
    lab: &mut Lab,
    g: &[String],
    r: &str,
    file: &std::path::Path,
    sync: bool,
    mode: Mode,
) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=NODES)
        .zip(g)
        .map(|(n, ns)| start_node(lab, ns, n, file, sync.then_some(SYNC_KEY), mode))
        .collect();
    for n in &mut nodes {
        n.wait("bgp: announcing", 15);
    }
    wait_route(r, VIP, &ALL_HOPS);
    if mode == Mode::DualStack {
        wait_route(r, VIP6, &ALL_HOPS6);
    }
    nodes
}

/// Drains the backend `first` has the most connections on, on every node; its name.
fn drain_busiest(first: &[String], nodes: &mut [Node], file: &std::path::Path) -> &'static str {
    let busiest = ["b1", "b2", "b3"]
        .into_iter()
        .max_by_key(|b| first.iter().filter(|f| f == b).count())
        .unwrap();
    std::fs::write(file, pool(busiest, false)).unwrap();
    for n in nodes {
        sh(&format!("kill -HUP {}", n.pid));
        n.wait("l4lb: reloaded", 5);
    }
    busiest
}

fn stop(node: &mut Node) -> BTreeMap<String, u64> {
    sh(&format!("kill -TERM {}", node.pid));
    wait_for(&node.lines, "sync.orphaned", 10, &mut node.seen);
    // Then until the process is gone (a zombie: its drops, BFD's AdminDown among them, ran).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{}/stat", node.pid)).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "node {} never exited",
            node.pid
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    node.seen.extend(node.lines.try_iter());
    counters(&node.seen)
}

/// The backends file: b1 to b3 up, `drained` (if one of them) draining (with `v6`, their
/// IPv6 addresses too).
fn pool(drained: &str, v6: bool) -> String {
    (1..=3)
        .map(|i| {
            let state = if format!("b{i}") == drained {
                "draining"
            } else {
                "up"
            };
            let mut line = format!("10.1.0.1{i}:0 weight=1 state={state}\n");
            if v6 {
                line += &format!("[fd00:1::1{i}]:0 weight=1 state={state}\n");
            }
            line
        })
        .collect::<String>()
}

/// A lab of [`fleet`].
struct Fleet {
    lab: Lab,
    /// The client's namespace, the router's, the nodes', the backends'.
    c: String,
    r: String,
    g: Vec<String>,
    b: [String; 3],
    /// The backends file every node reads.
    file: std::path::PathBuf,
}

/// The tests build their labs one after the other (two at once on a small machine would
/// slow the heartbeats and BGP keepalives they time).
static LABS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The lab of the module's picture: namespaces, links, the router's BIRD and the three
/// backends' name servers, the backends file with every backend up (the nodes not started
/// yet). Under [`Mode::Dnat`] the backends have no VXLAN device and no VIP: their name
/// servers listen on every address, and their default route is an ECMP route over the
/// three nodes' backend-side addresses (10.1.0.1 to .3, the kernel hashing L4). `None`:
/// skipped (not root, or a tool missing outside CI).
fn fleet(tag: &str, mode: Mode) -> Option<Fleet> {
    if !common::is_root() {
        assert!(!common::in_ci(), "l4lb_ecmp needs root under CI=true");
        eprintln!("SKIP: l4lb_ecmp needs root (set CI=true to make this a failure)");
        return None;
    }
    for (tool, probe) in [("ip", "-V"), ("bird", "--version")] {
        if !common::require(tool, &[probe]) {
            return None;
        }
    }
    let t = format!("nf{tag}{}", std::process::id());
    let [c, r, s, b1, b2, b3] = ["c", "r", "s", "b1", "b2", "b3"].map(|n| format!("{t}{n}"));
    let g: Vec<String> = (1..=NODES).map(|n| format!("{t}g{n}")).collect();
    let mut lab = Lab {
        namespaces: [&c, &r, &s, &b1, &b2, &b3]
            .into_iter()
            .chain(&g)
            .cloned()
            .collect(),
        children: Vec::new(),
        dir: common::temp_dir(&format!("l4lb-ecmp-{tag}")),
    };
    let gs = g.join(" ");
    sh(&format!(
        "for n in {c} {r} {s} {b1} {b2} {b3} {gs}; do ip netns add $n; ip netns exec $n sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip -n $n link set lo up; done
         ip -n {c} link add ch type veth peer name rc netns {r}
         ip -n {c} addr add 198.51.100.2/24 dev ch
         ip -n {c} link set ch mtu 1400; ip -n {c} link set ch up
         ip netns exec {c} ethtool -K ch tx off >/dev/null
         ip -n {c} route add default via 198.51.100.1
         ip -n {r} addr add 198.51.100.1/24 dev rc; ip -n {r} link set rc up
         ip -n {s} link add br0 type bridge; ip -n {s} link add br1 type bridge
         ip -n {r} link add rs type veth peer name sr netns {s}
         ip -n {s} link set sr master br0; ip -n {s} link set sr up
         ip -n {r} addr add 10.1.0.254/24 dev rs; ip -n {r} link set rs up
         n=0
         for g in {gs}; do
           n=$((n + 1))
           # data (owned by l4lb), backends (owned by l4lb), sync and BGP (kernel)
           ip -n {r} link add d$n type veth peer name cg netns $g
           ip -n {r} addr add 10.2.$n.1/24 dev d$n; ip -n {r} link set d$n up; ip -n $g link set cg up
           ip -n $g link add bg type veth peer name sb$n netns {s}
           ip -n {s} link set sb$n master br0; ip -n {s} link set sb$n up; ip -n $g link set bg up
           ip -n $g link add sy type veth peer name sy$n netns {s}
           ip -n {s} link set sy$n master br1; ip -n {s} link set sy$n up
           ip -n $g addr add 10.3.0.$n/24 dev sy; ip -n $g link set sy up
           ip -n {r} link add bgp$n type veth peer name bgp netns $g
           ip -n {r} addr add 10.4.$n.1/24 dev bgp$n; ip -n $g addr add 10.4.$n.2/24 dev bgp
           ip -n {r} link set bgp$n up; ip -n $g link set bgp up
         done
         ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1
         ip netns exec {r} sysctl -qw net.ipv4.fib_multipath_hash_policy=1
         for k in all default rc rs d1 d2 d3; do
           ip netns exec {r} sysctl -qw net.ipv4.conf.$k.rp_filter=0
           ip netns exec {r} sysctl -qw net.ipv4.conf.$k.send_redirects=0
         done
         for i in 1 2 3; do
           b={t}b$i
           ip -n $b link add eth0 type veth peer name s$i netns {s}
           ip -n {s} link set s$i master br0; ip -n {s} link set s$i up
           ip -n $b addr add 10.1.0.1$i/24 dev eth0; ip -n $b link set eth0 up
           ip netns exec $b ethtool -K eth0 tx off >/dev/null
           for k in all default eth0; do ip netns exec $b sysctl -qw net.ipv4.conf.$k.rp_filter=0; done
           {backend}
         done
         ip -n {s} link set br0 up; ip -n {s} link set br1 up",
        backend = match mode {
            Mode::Encap => "ip -n $b link add vx0 type vxlan id 42 local 10.1.0.1$i dev eth0 dstport 4789 nolearning
           ip -n $b link set vx0 address 02:00:00:00:00:01; ip -n $b link set vx0 up
           ip -n $b addr add 192.0.2.10/32 dev vx0
           ip netns exec $b sysctl -qw net.ipv4.conf.vx0.rp_filter=0
           ip -n $b route add 198.51.100.0/24 via 10.1.0.254",
            Mode::Dnat | Mode::DualStack => "ip netns exec $b sysctl -qw net.ipv4.fib_multipath_hash_policy=1
           ip -n $b route add default nexthop via 10.1.0.1 nexthop via 10.1.0.2 nexthop via 10.1.0.3",
        }
    ));
    if mode == Mode::DualStack {
        // IPv6 on the client, the router and the backends (the nodes' kernels without it):
        // the router's links to the nodes 2001:db8:2:N::/64, the client's 2001:db8:c::/64,
        // the backends fd00:1::1I/64 with a multipath default route over the nodes'
        // backend-side addresses (hashed on L4).
        let on = "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0";
        sh(&format!(
            "for n in {c} {r} {b1} {b2} {b3}; do ip netns exec $n {on}; done
             ip netns exec {c} sysctl -qw net.ipv6.conf.ch.disable_ipv6=0
             ip -n {c} -6 addr add 2001:db8:c::2/64 dev ch nodad
             ip -n {c} -6 route add default via 2001:db8:c::1
             ip netns exec {r} sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.fib_multipath_hash_policy=1
             for k in rc d1 d2 d3; do ip netns exec {r} sysctl -qw net.ipv6.conf.$k.disable_ipv6=0; done
             ip -n {r} -6 addr add 2001:db8:c::1/64 dev rc nodad
             for n in 1 2 3; do ip -n {r} -6 addr add 2001:db8:2:$n::1/64 dev d$n nodad; done
             for i in 1 2 3; do
               b={t}b$i
               ip netns exec $b sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0 net.ipv6.fib_multipath_hash_policy=1
               ip -n $b -6 addr add fd00:1::1$i/64 dev eth0 nodad
               ip -n $b -6 route add default nexthop via fd00:1::1 nexthop via fd00:1::2 nexthop via fd00:1::3
             done"
        ));
    }
    // The router: BGP with each node (passive: the nodes connect), the VIP's routes merged
    // into one multipath route in the kernel, next hops resolved over the data links.
    lab.bird_router_with(
        &r,
        &["10.4.1.2", "10.4.2.2", "10.4.3.2"],
        &["d1", "d2", "d3"],
        "bgp*",
        mode == Mode::DualStack,
    );
    for (ns, name) in [(&b1, "b1"), (&b2, "b2"), (&b3, "b3")] {
        lab.spawn(
            ns,
            &[
                common::system_python(),
                "-c",
                common::ANSWER_SERVER,
                match mode {
                    Mode::Encap => "192.0.2.10",
                    Mode::Dnat => "0.0.0.0",
                    // Both families on one socket.
                    Mode::DualStack => "::",
                },
                "7000",
                name,
            ],
        );
    }
    let file = lab.dir.join("backends");
    std::fs::write(&file, pool("", mode == Mode::DualStack)).unwrap();
    Some(Fleet {
        lab,
        c,
        r,
        g,
        b: [b1, b2, b3],
        file,
    })
}

#[test]
fn flows_survive_a_node_failure_behind_ecmp_through_session_sync() {
    let _one_lab_at_a_time = LABS.lock();
    let Some(Fleet {
        mut lab,
        c,
        r,
        g,
        file,
        ..
    }) = fleet("ec", Mode::Encap)
    else {
        return;
    };
    let py = common::system_python();
    // The router's side of every BGP session, for tshark at the end, each packet written as
    // it comes (without `--immediate-mode` libpcap hands them over in blocks, up to a second
    // late: the last node's AdminDown was missing from the file when it was read at once).
    let bgp_pcap = lab.dir.join("bgp.pcap");
    if !common::require("tcpdump", &["--version"]) || !common::require("tshark", &["--version"]) {
        return;
    }
    lab.spawn(
        &r,
        &[
            "tcpdump",
            "--immediate-mode",
            "-i",
            "any",
            "-U",
            "-Z",
            "root",
            "-w",
            bgp_pcap.to_str().unwrap(),
            "tcp port 179 or udp port 3784",
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&bgp_pcap).map_or(true, |m| m.len() < 24) {
        assert!(
            std::time::Instant::now() < deadline,
            "tcpdump never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut nodes = start_all(&mut lab, &g, &r, &file, true, Mode::Encap);
    let all_hops = ALL_HOPS;
    // The router takes only signed segments from its neighbours: an unsigned connection
    // from node 1's address to its BGP port is never answered (its SYN dropped).
    let unsigned = sh(&format!(
        "ip netns exec {} {py} -c 'import socket
try:
    socket.create_connection((\"10.4.1.1\", 179), 1, (\"10.4.1.2\", 0)); print(\"connected\")
except OSError as e: print(type(e).__name__)'",
        g[0]
    ));
    assert_eq!(unsigned.trim(), "TimeoutError", "{unsigned}");

    let mut client = AskingClient::open(&c, "192.0.2.10:7000", CONNECTIONS, ROUNDS, 4.0);
    let first = client.first.clone();
    assert_kept("all nodes up", &first, &client.round(), ROUNDS);
    // Each node's Prometheus endpoint (in its namespace): its links to both peers and its
    // BGP session up, its share of the connections balanced, other nodes' copied.
    std::thread::sleep(Duration::from_millis(1100));
    for ns in &g {
        // BFD with the router: up within a few seconds of the node's start (a packet a
        // second until then).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while common::metric(&common::scrape(ns, 9464), "bfd", "up") != Some(1) {
            assert!(
                std::time::Instant::now() < deadline,
                "{ns}: BFD never came up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let e = common::scrape(ns, 9464);
        let m = |stage: &str, counter: &str| common::metric(&e, stage, counter).unwrap_or(0);
        assert_eq!(m("sync", "peers_connected"), 2, "{ns}: {e}");
        assert_eq!(m("bgp", "up"), 1, "{ns}: {e}");
        assert_eq!(m("sync", "auth_failures"), 0, "{ns}: {e}");
        assert!(
            m("port:cg", "rx") > 0 && m("sync", "created") > 0,
            "{ns}: {e}"
        );
    }

    // The backend with the most connections drains on every node: a node without a
    // session would send its flows to the other two.
    drain_busiest(&first, &mut nodes, &file);

    // Node 1 fails: the process dies, its BGP session with it, and the router withdraws
    // its next hop (and, hashing over two next hops instead of three, moves flows between
    // the survivors too); both survivors find their sync connection from it closed and
    // make their copies of its sessions orphans, each adopted by the survivor its next
    // packet reaches.
    sh(&format!("kill -KILL {}", nodes[0].pid));
    for n in &mut nodes[1..] {
        n.wait("10.3.0.1:7600 down: orphaned", 10);
    }
    wait_route(&r, VIP, &all_hops[1..]);
    assert_kept("after node 1 failed", &first, &client.round(), ROUNDS);

    // Node 1 comes back with an empty table: it announces the VIP only once both
    // survivors' full resyncs have given it every session; the router spreads the flows
    // over all three again, and node 1 carries its share by its copies.
    nodes[0] = start_node(&mut lab, &g[0], 1, &file, Some(ROTATING), Mode::Encap);
    let a = &mut nodes[0];
    a.wait("bgp: announcing", 15);
    let at = |a: &Node, what: &str| a.seen.iter().position(|l| l.contains(what)).unwrap();
    let announced = at(a, "bgp: announcing");
    for peer in ["10.3.0.2:7600", "10.3.0.3:7600"] {
        assert!(
            at(a, &format!("sync: resync from {peer} done")) < announced,
            "{:?}",
            a.seen
        );
    }
    wait_route(&r, VIP, &all_hops);
    assert_kept("after node 1 came back", &first, &client.round(), ROUNDS);

    // Node 2 hangs (stopped, its sockets open and silent): its peers take it as failed
    // after a second without a heartbeat, the router when BFD misses three of its packets
    // (BIRD takes one per 200 ms at most here, a margin for a loaded machine: 0.6 s, well
    // before the BGP hold time, 3 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::metric(&common::scrape(&g[1], 9464), "bfd", "up") != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "node 2's BFD is not up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let hung = std::time::Instant::now();
    sh(&format!("kill -STOP {}", nodes[1].pid));
    wait_route(&r, VIP, &[all_hops[0], all_hops[2]]);
    let withdrawn = hung.elapsed();
    assert!(
        withdrawn < Duration::from_secs(2),
        "the router took {withdrawn:?} to drop the hung node (BFD: 0.6 s, BGP hold: 3 s)"
    );
    eprintln!("the router dropped the hung node 2 after {withdrawn:?}");
    for i in [0, 2] {
        nodes[i].wait("10.3.0.2:7600 down: orphaned", 10);
    }
    assert_kept("after node 2 hung", &first, &client.round(), ROUNDS);
    sh(&format!("kill -KILL {}", nodes[1].pid));

    // Node 3 is taken down for maintenance (SIGTERM): it withdraws the VIP at once and
    // goes on forwarding for its drain (2 s) while the router moves its flows to node 1,
    // which holds their sessions; only then does it exit.
    sh(&format!("kill -TERM {}", nodes[2].pid));
    nodes[2].wait("bgp: withdrawing", 5);
    wait_route(&r, VIP, &all_hops[..1]);
    assert_kept("while node 3 drained", &first, &client.round(), ROUNDS);
    client.close();

    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let c: Vec<BTreeMap<String, u64>> = [0, 2].map(|i| stop(&mut nodes[i])).into();
    // Every node's sessions reached every other one: the new node 1 received all of them.
    assert!(
        get(&c[0], "sync.created") >= CONNECTIONS as u64,
        "{:?}",
        c[0]
    );
    assert!(get(&c[0], "tunnel_encap.packets") > 0, "{:?}", c[0]);
    // Both survivors orphaned the failed node's sessions when it failed: the same ones
    // (every node held every session), and each adopted those whose packets reached it.
    let took = |n: &Node| -> u64 {
        let l = n
            .seen
            .iter()
            .find(|l| l.contains("10.3.0.1:7600 down: orphaned"));
        l.and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap()
    };
    let taken = took(&nodes[1]);
    assert!(taken > 0, "{:?}", nodes[1].seen);
    assert_eq!(took(&nodes[2]), taken, "{:?}", nodes[2].seen);
    // The hung node was found out by its silence (not a closed connection).
    for m in &c {
        assert!(get(m, "sync.silent") >= 1, "{m:?}");
    }
    // Node 2's flows went to nodes 1 and 3, which adopted their orphaned copies (how many
    // each depends on the router's hash).
    let adopted: u64 = c
        .iter()
        .map(|m| get(m, "conntrack.v4_orphans_adopted"))
        .sum();
    assert!(adopted >= 1, "{c:?}");
    for (i, m) in [1, 3].into_iter().zip(&c) {
        for k in [
            "sync.apply_errors",
            "sync.bad_frames",
            "sync.send_dropped",
            "sync.unknown_peers",
            "sync.auth_failures",
            "bgp.errors",
        ] {
            assert_eq!(get(m, k), 0, "node {i}: {k}: {m:?}");
        }
        assert!(get(m, "bgp.announces") >= 1, "node {i}: {m:?}");
        assert_eq!(get(m, "bgp.withdraws"), 1, "node {i}: {m:?}");
    }
    bgp_dissected(&bgp_pcap);
}

/// DNAT behind ECMP both ways: the router spreads the client's flows over the nodes, and
/// the backends' default route spreads their answers over the nodes by a hash of its own,
/// so most connections' two directions pass different nodes. A node un-NATs the answers it
/// gets through its copy of the session, or by the hash alone when the copy has not come
/// yet (a SYN+ACK is faster than sync), and tracks its sessions one-sided (the client's
/// ACK establishes them). The backends see the client's own address. Then the busiest
/// backend drains and node 1 fails: the router drops it (BFD), the backends' return route
/// drops it too (replaced, as their own router would on the withdrawal), both hashes move
/// survivors' flows, and every connection still answers from its own backend.
#[test]
fn dnat_flows_answer_through_any_node_behind_ecmp_both_ways() {
    let _one_lab_at_a_time = LABS.lock();
    let Some(mut f) = fleet("dn", Mode::Dnat) else {
        return;
    };
    let mut nodes = start_all(&mut f.lab, &f.g, &f.r, &f.file, true, Mode::Dnat);
    let mut client = AskingClient::open(&f.c, "192.0.2.10:7000", CONNECTIONS, ROUNDS, 8.0);
    let first = client.first.clone();
    assert_kept("all nodes up", &first, &client.round(), ROUNDS);
    // DNAT keeps the client's address: every backend's connections come from it.
    assert_backends_see(&f.b, "-4", "198.51.100.2");
    // Answers reached nodes without their session (the backends' hash is not the
    // router's): the SYN+ACKs that beat sync, un-NATed by the hash.
    std::thread::sleep(Duration::from_millis(1100));
    let stateless: u64 = f
        .g
        .iter()
        .map(|ns| common::metric(&common::scrape(ns, 9464), "lb", "stateless_replies").unwrap_or(0))
        .sum();
    assert!(stateless >= 1, "no answer took another node than its flow");

    drain_busiest(&first, &mut nodes, &f.file);
    sh(&format!("kill -KILL {}", nodes[0].pid));
    for b in &f.b {
        sh(&format!(
            "ip -n {b} route replace default nexthop via 10.1.0.2 nexthop via 10.1.0.3"
        ));
    }
    for n in &mut nodes[1..] {
        n.wait("10.3.0.1:7600 down: orphaned", 10);
    }
    wait_route(&f.r, VIP, &ALL_HOPS[1..]);
    assert_kept("after node 1 failed", &first, &client.round(), ROUNDS);
    client.close();
    stop_survivors(&mut nodes);
    eprintln!(
        "DNAT fleet: {stateless} answers un-NATed by the hash before their session's copy came"
    );
}

/// [`Mode::DualStack`]: the IPv6 VIP's route learned from every node over multiprotocol
/// BGP; 36 connections to it spread by the router's hash, every backend seeing the client's
/// own IPv6 address; then node 1 fails (killed, the backends' IPv6 route made to skip it):
/// every connection carries on with its backend through the two others, by their copies of
/// its session.
#[test]
fn dual_stack_dnat_fleet_keeps_ipv6_connections_through_a_node_failure() {
    let _one_lab_at_a_time = LABS.lock();
    let Some(mut f) = fleet("d6", Mode::DualStack) else {
        return;
    };
    let mut nodes = start_all(&mut f.lab, &f.g, &f.r, &f.file, true, Mode::DualStack);
    let to = format!("{VIP6}:7000");
    let mut client = AskingClient::open(&f.c, &to, CONNECTIONS, ROUNDS, 8.0);
    let first = client.first.clone();
    assert_kept("IPv6, all nodes up", &first, &client.round(), ROUNDS);
    assert_backends_see(&f.b, "-6", "[2001:db8:c::2]");
    sh(&format!("kill -KILL {}", nodes[0].pid));
    for b in &f.b {
        sh(&format!(
            "ip -n {b} -6 route replace default nexthop via fd00:1::2 nexthop via fd00:1::3"
        ));
    }
    for n in &mut nodes[1..] {
        n.wait("10.3.0.1:7600 down: orphaned", 10);
    }
    wait_route(&f.r, VIP6, &ALL_HOPS6[1..]);
    assert_kept("IPv6, after node 1 failed", &first, &client.round(), ROUNDS);
    client.close();
    stop_survivors(&mut nodes);
}

/// Every one of the [`CONNECTIONS`] established at the backends (`ss` family `family`)
/// comes from `client` (as `ss` prints it).
fn assert_backends_see(backends: &[String; 3], family: &str, client: &str) {
    let mut peers = Vec::new();
    for b in backends {
        let ss = sh(&format!(
            "ip netns exec {b} ss -Htn {family} state established '( sport = :7000 )'"
        ));
        peers.extend(
            ss.lines()
                .filter_map(|l| l.split_whitespace().last())
                .filter_map(|p| p.rsplit_once(':'))
                .map(|(a, _)| a.to_string()),
        );
    }
    assert_eq!(peers.len(), CONNECTIONS, "{peers:?}");
    assert!(peers.iter().all(|p| p == client), "{peers:?}");
}

/// Stops nodes 2 and 3 (node 1 failed): neither had a sync error, sent anything by the hash
/// alone or reset a flow, and both answered replies from sessions.
fn stop_survivors(nodes: &mut [Node]) {
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    for i in [1, 2] {
        let m = stop(&mut nodes[i]);
        for k in [
            "sync.apply_errors",
            "sync.send_dropped",
            "lb.stateless",
            "lb.reset",
        ] {
            assert_eq!(get(&m, k), 0, "node {}: {k}: {m:?}", i + 1);
        }
        assert!(get(&m, "conntrack.reply_hits") > 0, "node {}: {m:?}", i + 1);
    }
}

/// tshark's reading of every BGP session the router had: every message well formed, every
/// segment that carries one signed (TCP MD5), the OPENs and UPDATEs saying what the nodes
/// were told to say; the only unsigned segments are the test's own probe's SYNs, never
/// answered.
fn bgp_dissected(pcap: &std::path::Path) {
    let fields = [
        "_ws.malformed",
        "_ws.expert.severity",
        "ip.src",
        "tcp.flags.syn",
        "tcp.flags.ack",
        "tcp.options.md5.digest",
        "ip.ttl",
        "udp.srcport",
        "bfd.version",
        "bfd.sta",
        "bfd.diag",
        "bfd.detect_time_multiplier",
        "bfd.my_discriminator",
        "bfd.desired_min_tx_interval",
        "bfd.auth.type",
        "bfd.auth.key",
        "bfd.auth.seq_num",
        "bgp.type",
        "bgp.open.myas",
        "bgp.open.holdtime",
        "bgp.open.identifier",
        "bgp.nlri_prefix",
        "bgp.withdrawn_prefix",
        "bgp.update.path_attribute.next_hop",
        "bgp.update.path_attribute.origin",
        "bgp.update.path_attribute.as_path_segment.as4",
        "bgp.update.path_attribute.as_path_segment.as2",
    ];
    let args = ["-n", "-o", "tcp.analyze_sequence_numbers:FALSE"];
    let rows = common::tshark_rows(pcap, &args, &fields);
    let one = |r: &common::TsharkRow, f: &str| r[f].first().cloned().unwrap_or_default();
    let (mut opens, mut announces, mut withdraws) = (0, 0, 0);
    let (mut bfd_up, mut bfd_admin_down) = (std::collections::BTreeSet::new(), 0);
    for (i, r) in rows.iter().enumerate() {
        let from = one(r, "ip.src");
        let node = from
            .strip_prefix("10.4.")
            .and_then(|x| x.strip_suffix(".2"))
            .map(|n| n.to_string());
        if !r["bfd.version"].is_empty() {
            // BFD control packets, ours and BIRD's: version 1, TTL 255 (RFC 5881 §5), every
            // one signed (Meticulous Keyed SHA1, type 5, key ID 1).
            common::assert_dissected_clean(i, r);
            assert_eq!(
                (one(r, "bfd.version"), one(r, "ip.ttl")),
                ("1".into(), "255".into()),
                "frame {i}: {r:?}"
            );
            assert_eq!(
                (one(r, "bfd.auth.type"), one(r, "bfd.auth.key")),
                ("5".into(), "1".into()),
                "frame {i}: {r:?}"
            );
            assert!(!one(r, "bfd.auth.seq_num").is_empty(), "frame {i}: {r:?}");
            if let Some(n) = &node {
                let port: u16 = one(r, "udp.srcport").parse().unwrap();
                assert!(port >= 49_152, "frame {i}: {r:?}");
                assert_eq!(
                    one(r, "bfd.detect_time_multiplier"),
                    "3",
                    "frame {i}: {r:?}"
                );
                assert_ne!(
                    one(r, "bfd.my_discriminator"),
                    "0x00000000",
                    "frame {i}: {r:?}"
                );
                match (one(r, "bfd.sta").as_str(), one(r, "bfd.diag").as_str()) {
                    ("0x03", _) => {
                        bfd_up.insert(n.clone());
                    }
                    ("0x00", diag) => {
                        assert_eq!(diag, "0x07", "frame {i}: {r:?}");
                        bfd_admin_down += 1;
                    }
                    _ => {}
                }
            }
            continue;
        }
        if r["tcp.options.md5.digest"].is_empty() {
            // The probe: SYNs from node 1's address, none answered.
            assert!(
                from == "10.4.1.2"
                    && one(r, "tcp.flags.syn") == "1"
                    && one(r, "tcp.flags.ack") == "0",
                "frame {i}: unsigned: {r:?}"
            );
            continue;
        }
        if r["bgp.type"].is_empty() {
            continue;
        }
        common::assert_dissected_clean(i, r);
        let Some(n) = node else {
            continue;
        };
        let types = &r["bgp.type"];
        if types.iter().any(|t| t == "1") {
            opens += 1;
            let open = (
                one(r, "bgp.open.myas"),
                one(r, "bgp.open.holdtime"),
                one(r, "bgp.open.identifier"),
            );
            let want = ("65001".into(), "9".into(), format!("10.2.{n}.2"));
            assert_eq!(open, want, "frame {i}: {r:?}");
        }
        if !r["bgp.nlri_prefix"].is_empty() {
            announces += 1;
            assert_eq!(r["bgp.nlri_prefix"], ["192.0.2.10"], "frame {i}: {r:?}");
            let attrs = (
                one(r, "bgp.update.path_attribute.next_hop"),
                one(r, "bgp.update.path_attribute.origin"),
            );
            assert_eq!(
                attrs,
                (format!("10.2.{n}.2"), "0".into()),
                "frame {i}: {r:?}"
            );
            let mut path = r["bgp.update.path_attribute.as_path_segment.as4"].clone();
            path.extend(
                r["bgp.update.path_attribute.as_path_segment.as2"]
                    .iter()
                    .cloned(),
            );
            assert_eq!(path, ["65001"], "frame {i}: {r:?}");
        }
        if !r["bgp.withdrawn_prefix"].is_empty() {
            withdraws += 1;
            assert_eq!(
                r["bgp.withdrawn_prefix"],
                ["192.0.2.10"],
                "frame {i}: {r:?}"
            );
        }
    }
    eprintln!(
        "bgp capture: {} frames, {opens} OPENs, {announces} announcements, {withdraws} withdrawals, BFD up from nodes {bfd_up:?}, {bfd_admin_down} AdminDown",
        rows.len()
    );
    assert_eq!(bfd_up.len(), 3, "every node's BFD said Up: {bfd_up:?}");
    // Nodes 3 and 1 stopped on SIGTERM: each said AdminDown (diagnostic 7) as it went.
    assert!(bfd_admin_down >= 2, "{bfd_admin_down} AdminDown packets");
    // Four sessions (three nodes and node 1 again) opened and announced; node 3 withdrew
    // (node 1 was killed and node 2 hung: their routes went with their sessions).
    assert!(
        opens >= 4 && announces >= 4 && withdraws >= 1,
        "{opens} {announces} {withdraws}: {rows:?}"
    );
}

/// The control: the same fleet without session sync, the same drain and the same failure.
/// The flows that now reach a node without their session are balanced anew, those of the
/// drained backend onto another one, whose kernel resets them: sync is what kept them in
/// the test above. (Each of the at least 12 connections on the busiest backend reaches a
/// node without its session with probability about 1/2: node 1's third of the flows, and
/// the sixth a hash-threshold router moves between the survivors.)
#[test]
fn without_sync_a_failed_nodes_flows_lose_their_backend() {
    let _one_lab_at_a_time = LABS.lock();
    let Some(mut f) = fleet("en", Mode::Encap) else {
        return;
    };
    let mut nodes = start_all(&mut f.lab, &f.g, &f.r, &f.file, false, Mode::Encap);
    let (r, file) = (f.r.clone(), f.file.clone());
    let mut client = AskingClient::open(&f.c, "192.0.2.10:7000", CONNECTIONS, ROUNDS, 4.0);
    let first = client.first.clone();
    assert_kept("all nodes up", &first, &client.round(), ROUNDS);
    let drained = drain_busiest(&first, &mut nodes, &file);
    sh(&format!("kill -KILL {}", nodes[0].pid));
    wait_route(&r, VIP, &ALL_HOPS[1..]);
    let results = client.round();
    client.close();
    let lost: Vec<(usize, &String, &Vec<String>)> = first
        .iter()
        .zip(&results)
        .enumerate()
        .filter(|(_, (b, answers))| answers.iter().any(|a| a != *b))
        .map(|(i, (b, answers))| (i, b, answers))
        .collect();
    assert!(
        lost.iter().any(|(_, b, _)| b.as_str() == drained),
        "no connection of the drained {drained} lost its backend without sync: {results:?}"
    );
    eprintln!(
        "without sync: {} of {CONNECTIONS} connections lost their backend when node 1 failed ({drained} drained): {lost:?}",
        lost.len()
    );
}
