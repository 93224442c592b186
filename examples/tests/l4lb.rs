//! `l4lb` in front of three Linux backends, in network namespaces this test makes:
//!
//! ```text
//!  ns c: client 198.51.100.2 ═ veth ═ ns g: l4lb (VIP 192.0.2.10:80 and :5201)
//!                                        ║ veth (10.1.0.1, owned by l4lb)
//!                              ns s: bridge ═ b1 10.1.0.11 (weight 1)
//!                                           ═ b2 10.1.0.12 (weight 2)
//!                                           ═ b3 10.1.0.13 (weight 3)
//! ```
//!
//! DNAT mode: 300 HTTP requests, each on a new connection, spread over the backends in
//! proportion to their weights, and every backend sees the client's own address; a long
//! iperf3 transfer through the VIP survives draining one other backend and removing the
//! third (SIGHUP with a new backends file), after which new requests avoid both; of 40
//! connections held open across that reload, those of the removed backend are reset by the
//! load balancer's RST when they send, the others answered. With `--on-down rehash`, a UDP
//! flow (a connected Linux socket, one 5-tuple) whose backend goes down moves to the
//! table's choice in a new session and keeps receiving its answers from the VIP. With the
//! backends' link at an MTU of 1,400, a client's DF datagram too big for it brings back
//! fragmentation needed through the VIP (path MTU discovery through the load balancer).
//!
//! Dual stack: an IPv6 VIP beside the IPv4 one, over the backends' IPv6 addresses, the same
//! spread and the client's own IPv6 address at every backend.
//!
//! Encap mode (direct server return): the same spread, with each backend receiving its
//! flows through a Linux VXLAN device (VNI 42) that holds the VIP and answering through the
//! client's second leg on the backends' bridge (`10.1.0.2`); the load balancer forwards
//! nothing toward the client. Needs root,
//! `ip`, `curl`, `iperf3` and python3: without them it skips, except under `CI=true`.
#![cfg(target_os = "linux")]
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed setup step should fail the test"
)]

mod common;

use common::{Lab, counters, lines_of, sh, wait_for};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const L4LB: &str = env!("CARGO_BIN_EXE_l4lb");
const REQUESTS: usize = 300;
/// The IPv4 VIP's web service.
const V4_URL: &str = "http://192.0.2.10/";

/// An HTTP server answering every GET with its name and the client's address.
const WHO_SERVER: &str = "import http.server as h, socket, socketserver, sys
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f'{sys.argv[3]} {self.client_address[0]} {self.client_address[1]}\\n'.encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Connection', 'close')
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(h.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = 'lab', self.server_address[1]
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()";

/// Opens 40 connections to the VIP's port 80, says `open`, waits for a line on stdin, then
/// sends a request on each and says `results` and, per connection, the backend's name,
/// `reset` (ECONNRESET) or `timeout`.
const HELD_CLIENT: &str = "import socket, sys
socks = [socket.create_connection(('192.0.2.10', 80), timeout=3) for _ in range(40)]
print('open', flush=True)
sys.stdin.readline()
out = []
for s in socks:
    try:
        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
        data = b''
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        out.append(data.split(b'\\r\\n\\r\\n', 1)[1].split()[0].decode())
    except ConnectionResetError:
        out.append('reset')
    except OSError:
        out.append('timeout')
print('results', *out, flush=True)";

/// `n` requests to the VIP's `url`, each on its own connection: (backend name → count,
/// client addresses the backends saw).
fn requests(c: &str, url: &str, n: usize) -> Requests {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", c, "curl", "-s", "--max-time", "3"]);
    for _ in 0..n {
        cmd.arg(url);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = bounded(child, 90);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = Requests::default();
    for l in text.lines() {
        let mut f = l.split(' ');
        let (name, client, port) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        *r.by.entry(name.to_string()).or_insert(0) += 1;
        r.ports
            .entry(name.to_string())
            .or_default()
            .insert(port.to_string());
        r.clients.push(client.to_string());
    }
    r
}

/// What the backends answered to [`requests`].
#[derive(Default)]
struct Requests {
    /// Requests per backend.
    by: BTreeMap<String, usize>,
    /// The client's source ports per backend. curl may reuse a port (the server closes
    /// first, so the client's kernel may pick it again at once), and a reused 5-tuple goes
    /// where it went before: the weights show in distinct tuples, not in requests.
    ports: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// The client address each backend saw.
    clients: Vec<String>,
}

/// The lab of either mode, with `l4lb` running and ready.
struct Setup {
    /// The namespaces and processes, gone when the test ends.
    lab: Lab,
    c: String,
    backends: [String; 3],
    file: std::path::PathBuf,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    pid: u32,
}

/// Builds the namespaces, starts the backends' servers and `l4lb` (`--mode encap` when
/// `encap`, with `extra` arguments), or `None` (after saying why) when a tool is missing
/// outside CI.
/// The lab, the balancer started with `extra`; with `backend_mtu`, the backends' link at that
/// MTU (the balancer's side, the bridge and the backends).
/// With `v6`, the lab is dual-stack: the client 2001:db8:c::2/64, the backends
/// fd00:1::11–13/64 (their servers on those addresses too, the same weights), and the VIP
/// [2001:db8:10::10]:80 beside the IPv4 ones.
fn setup(
    tag: &str,
    encap: bool,
    extra: &[&str],
    backend_mtu: Option<u16>,
    v6: bool,
) -> Option<Setup> {
    if !common::is_root() {
        assert!(!common::in_ci(), "l4lb needs root under CI=true");
        eprintln!("SKIP: l4lb needs root (set CI=true to make this a failure)");
        return None;
    }
    for (tool, probe) in [("ip", "-V"), ("curl", "--version"), ("iperf3", "--version")] {
        if !common::require(tool, &[probe]) {
            return None;
        }
    }
    let t = format!("nfl4{tag}{}", std::process::id());
    let [c, g, s, b1, b2, b3] = ["c", "g", "s", "b1", "b2", "b3"].map(|n| format!("{t}{n}"));
    let mut lab = Lab {
        namespaces: vec![
            c.clone(),
            g.clone(),
            s.clone(),
            b1.clone(),
            b2.clone(),
            b3.clone(),
        ],
        children: Vec::new(),
        dir: common::temp_dir(&format!("l4lb-{tag}")),
    };
    sh(&format!(
        "for n in {c} {g} {s} {b1} {b2} {b3}; do ip netns add $n; ip netns exec $n sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip -n $n link set lo up; done
         ip -n {c} link add ch type veth peer name cg netns {g}
         ip -n {g} link add bg type veth peer name sg netns {s}
         ip -n {s} link add br0 type bridge; ip -n {s} link set sg master br0
         ip -n {c} addr add 198.51.100.2/24 dev ch
         ip netns exec {c} ethtool -K ch tx off >/dev/null
         for i in 1 2 3; do
           b={t}b$i
           ip -n $b link add eth0 type veth peer name s$i netns {s}
           ip -n {s} link set s$i master br0; ip -n {s} link set s$i up
           ip -n $b addr add 10.1.0.1$i/24 dev eth0; ip -n $b link set eth0 up
           ip netns exec $b ethtool -K eth0 tx off >/dev/null
         done
         ip -n {s} link set br0 up; ip -n {s} link set sg up
         ip -n {c} link set ch up; ip -n {g} link set cg up; ip -n {g} link set bg up
         ip -n {c} route add default via 198.51.100.1"
    ));
    if encap {
        // Direct server return: each backend decapsulates with a Linux VXLAN device that
        // holds the VIP, and answers through the client's second leg on the backends'
        // bridge, never through the load balancer. Frames to the VIP shrink by the
        // tunnel's 50 bytes (the client's MTU) so that they fit once encapsulated.
        sh(&format!(
            "ip -n {c} link set ch mtu 1400
             ip -n {c} link add cd type veth peer name sc netns {s}
             ip -n {s} link set sc master br0; ip -n {s} link set sc up
             ip -n {c} addr add 10.1.0.2/24 dev cd; ip -n {c} link set cd up
             ip netns exec {c} ethtool -K cd tx off >/dev/null
             for k in all default cd ch; do ip netns exec {c} sysctl -qw net.ipv4.conf.$k.rp_filter=0; done
             for i in 1 2 3; do
               b={t}b$i
               ip -n $b link add vx0 type vxlan id 42 local 10.1.0.1$i dev eth0 dstport 4789 nolearning
               ip -n $b link set vx0 address 02:00:00:00:00:01; ip -n $b link set vx0 up
               ip -n $b addr add 192.0.2.10/32 dev vx0
               for k in all default vx0 eth0; do ip netns exec $b sysctl -qw net.ipv4.conf.$k.rp_filter=0; done
               ip -n $b route add 198.51.100.0/24 via 10.1.0.2
             done"
        ));
    } else {
        sh(&format!(
            "for i in 1 2 3; do ip -n {t}b$i route add default via 10.1.0.1; done"
        ));
    }
    if v6 {
        // IPv6 on the client and the backends (without duplicate address detection); the
        // load balancer's kernel stays without it.
        let on = "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0";
        sh(&format!(
            "ip netns exec {c} {on}; ip netns exec {c} sysctl -qw net.ipv6.conf.ch.disable_ipv6=0
             ip -n {c} -6 addr add 2001:db8:c::2/64 dev ch nodad
             ip -n {c} -6 route add default via 2001:db8:c::1
             for i in 1 2 3; do
               b={t}b$i
               ip netns exec $b {on}; ip netns exec $b sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0
               ip -n $b -6 addr add fd00:1::1$i/64 dev eth0 nodad
               ip -n $b -6 route add default via fd00:1::1
             done"
        ));
    }
    if let Some(mtu) = backend_mtu {
        sh(&format!(
            "ip -n {g} link set bg mtu {mtu}; ip -n {s} link set sg mtu {mtu}
             for i in 1 2 3; do ip -n {s} link set s$i mtu {mtu}; ip -n {t}b$i link set eth0 mtu {mtu}; done"
        ));
    }
    let py = common::system_python();
    // DNAT: the servers listen on the backends' own addresses; encap: on the VIP.
    for (ns, addr, name) in [
        (&b1, "10.1.0.11", "b1"),
        (&b2, "10.1.0.12", "b2"),
        (&b3, "10.1.0.13", "b3"),
    ] {
        let addr = if encap { "192.0.2.10" } else { addr };
        lab.spawn(ns, &[py, "-c", WHO_SERVER, addr, "80", name]);
        lab.spawn(ns, &["iperf3", "-s", "-p", "5201"]);
        if v6 {
            let addr6 = format!("fd00:1::1{}", &name[1..]);
            lab.spawn(ns, &[py, "-c", WHO_SERVER, &addr6, "80", name]);
        }
    }
    let file = lab.dir.join("backends");
    let mut pool =
        String::from("10.1.0.11:0 weight=1\n10.1.0.12:0 weight=2\n10.1.0.13:0 weight=3\n");
    if v6 {
        pool.push_str(
            "[fd00:1::11]:0 weight=1\n[fd00:1::12]:0 weight=2\n[fd00:1::13]:0 weight=3\n",
        );
    }
    std::fs::write(&file, pool).unwrap();
    let mut lb = Command::new("ip");
    lb.args(["netns", "exec", &g, L4LB])
        .args(["--client", "cg", "--client-addr", "198.51.100.1/24"])
        .args(["--backend", "bg", "--backend-addr", "10.1.0.1/24"])
        .args([
            "--vip",
            "192.0.2.10:80",
            // iperf3's control and data connections must meet one server.
            "--vip",
            "192.0.2.10:5201/3tuple",
            "--backends",
        ])
        .arg(&file)
        .args(["--duration", "120"])
        .args(extra);
    if v6 {
        lb.args(["--client-addr6", "2001:db8:c::1/64"])
            .args(["--backend-addr6", "fd00:1::1/64"])
            .args(["--vip", "[2001:db8:10::10]:80"]);
    }
    if !encap {
        lb.args(["--io", "packet"]);
    }
    if encap {
        // Encap mode runs on AF_XDP, DNAT mode on the rings: both I/Os under the balancer.
        lb.args(["--mode", "encap", "--vni", "42"]).args([
            "--inner-mac",
            "02:00:00:00:00:01",
            "--io",
            "xdp",
        ]);
    }
    let (lines, pid) = lab.spawn_watched(&mut lb);
    let mut seen = Vec::new();
    wait_for(&lines, "l4lb: ready", 10, &mut seen);
    std::thread::sleep(Duration::from_millis(500));
    Some(Setup {
        lab,
        c,
        backends: [b1, b2, b3],
        file,
        lines,
        seen,
        pid,
    })
}

/// The output of `child`, killed if it has not ended within `secs` (an iperf3 client whose
/// server vanished can spin forever).
fn bounded(mut child: Child, secs: u64) -> std::process::Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// Stops `l4lb` and returns its final counters.
fn stop(s: &mut Setup) -> BTreeMap<String, u64> {
    sh(&format!("kill -TERM {}", s.pid));
    std::thread::sleep(Duration::from_millis(500));
    s.seen.extend(s.lines.try_iter());
    counters(&s.seen)
}

/// Weights 1:2:3 over `REQUESTS` new connections to `url`, and the client's own address
/// (`client`) at every backend.
fn check_spread(c: &str, url: &str, client: &str) {
    let Requests { by, ports, clients } = requests(c, url, REQUESTS);
    assert_eq!(by.values().sum::<usize>(), REQUESTS, "{by:?}");
    let tuples: usize = ports.values().map(|p| p.len()).sum();
    assert!(tuples >= REQUESTS / 2, "{tuples} distinct tuples: {by:?}");
    for (name, w) in [("b1", 1.0), ("b2", 2.0), ("b3", 3.0)] {
        let want = tuples as f64 * w / 6.0;
        let got = ports.get(name).map_or(0, |p| p.len()) as f64;
        assert!(
            (got - want).abs() <= 0.35 * want,
            "{name}: {got} of {tuples} distinct tuples, want ~{want}: requests {by:?}"
        );
    }
    assert!(
        clients.iter().all(|a| a == client),
        "backends must see the client: {clients:?}"
    );
}

#[test]
fn balances_by_weight_keeps_client_addresses_and_established_flows() {
    let Some(mut st) = setup("d", false, &[], None, false) else {
        return;
    };
    let (c, pid, file) = (st.c.clone(), st.pid, st.file.clone());
    let [b1, b2, b3] = st.backends.clone();
    check_spread(&c, V4_URL, "198.51.100.2");
    // Connections held open (no request sent yet) across the reload below: those whose
    // backend it removes must be reset by the load balancer's RST, the others answered.
    let mut held = Command::new("ip")
        .args(["netns", "exec", &c, "python3", "-c", HELD_CLIENT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held_out = lines_of(&mut held);
    let mut held_seen = Vec::new();
    wait_for(&held_out, "open", 10, &mut held_seen);

    // A long transfer: find its backend, then drain one other and remove the third.
    let iperf = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c,
            "iperf3",
            "-c",
            "192.0.2.10",
            "-p",
            "5201",
            "-t",
            "6",
            "-J",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let serving: Vec<usize> = [&b1, &b2, &b3]
        .iter()
        .map(|ns| {
            sh(&format!(
                "ip netns exec {ns} ss -Htn state established '( sport = :5201 )'"
            ))
            .lines()
            .count()
        })
        .collect();
    let carrier = serving
        .iter()
        .position(|n| *n > 0)
        .expect("no backend carries the transfer");
    let others: Vec<usize> = (0..3).filter(|i| *i != carrier).collect();
    let mut spec = String::new();
    for i in 0..3 {
        let state = if i == others[0] { "draining" } else { "up" };
        if i != others[1] {
            spec += &format!("10.1.0.1{}:0 weight={} state={state}\n", i + 1, i + 1);
        }
    }
    std::fs::write(&file, &spec).unwrap();
    sh(&format!("kill -HUP {pid}"));
    wait_for(&st.lines, "l4lb: reloaded", 5, &mut st.seen);
    let out = bounded(iperf, 30);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !report.contains("\"error\""),
        "iperf3 failed: {report}"
    );

    // The held connections send their requests now: those of the removed backend get the
    // RST (the client's kernel took it: its sequence number is the one it expected), none
    // waits for an answer that cannot come.
    let removed = format!("b{}", others[1] + 1);
    std::io::Write::write_all(held.stdin.as_mut().unwrap(), b"go\n").unwrap();
    wait_for(&held_out, "results", 20, &mut held_seen);
    let results: Vec<&str> = held_seen
        .last()
        .map_or("", String::as_str)
        .split_whitespace()
        .skip(1)
        .collect();
    let resets = results.iter().filter(|r| **r == "reset").count();
    assert!(
        resets > 0,
        "no held connection was on {removed}: {results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| *r == "reset" || (r.starts_with('b') && **r != removed)),
        "{results:?} (removed: {removed})"
    );
    let _ = held.wait();

    // New requests go to the carrier only (the drained one takes no new flows).
    let after = requests(&c, V4_URL, 30).by;
    let only = format!("b{}", carrier + 1);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        vec![&only],
        "{after:?} after {spec}"
    );

    let c = stop(&mut st);
    let get = |k: &str| {
        *c.get(k)
            .unwrap_or_else(|| panic!("no {k}:\n{}", st.seen.join("\n")))
    };
    assert!(get("lb.new_flows") >= (REQUESTS + 31) as u64, "{c:?}");
    // Every reset was a held connection's request, answered by a RST.
    assert_eq!(get("lb.reset"), resets as u64, "{c:?}");
    assert_eq!(get("lb.resets_sent"), resets as u64, "{c:?}");
    assert!(get("lb.swaps") >= 2, "{c:?}");
    println!("{}", st.seen.join("\n"));
}

#[test]
fn encap_mode_backends_decapsulate_with_linux_vxlan_and_answer_directly() {
    let Some(mut st) = setup("e", true, &[], None, false) else {
        return;
    };
    check_spread(&st.c.clone(), V4_URL, "198.51.100.2");
    // A transfer through the VIP: the data goes in VXLAN to one backend, the ACKs come
    // straight back.
    let iperf = Command::new("ip")
        .args(["netns", "exec", &st.c, "iperf3", "-c", "192.0.2.10"])
        .args(["-p", "5201", "-t", "2", "-J"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = bounded(iperf, 30);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !report.contains("\"error\""),
        "iperf3 failed: {report}"
    );
    let c = stop(&mut st);
    let get = |k: &str| {
        *c.get(k)
            .unwrap_or_else(|| panic!("no {k}:\n{}", st.seen.join("\n")))
    };
    assert!(get("lb.new_flows") >= REQUESTS as u64, "{c:?}");
    assert!(get("tunnel_encap.packets") > REQUESTS as u64, "{c:?}");
    assert_eq!(get("tunnel_encap.drops"), 0, "{c:?}");
    // Nothing went back to the client through the load balancer: the answers took the
    // direct path.
    assert_eq!(
        get("cg.forwarded") + get("cg.forwarded_after_arp"),
        0,
        "{c:?}"
    );
    assert!(
        get("bg.forwarded") + get("bg.forwarded_after_arp") >= get("tunnel_encap.packets"),
        "{c:?}"
    );
    println!("{}", st.seen.join("\n"));
}

/// A UDP server answering each datagram with its name and the sender's address.
const UDP_WHO: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(f'{sys.argv[3]} {a[0]}'.encode(), a)";

/// One UDP flow to the VIP's port 80, always from 198.51.100.2:40000: sends until answered
/// (a few tries) and prints the answer (the backend's name and the client address it saw),
/// or `timeout`. The socket is connected, so only an answer from the VIP's address and
/// port is taken.
const UDP_ASK: &str = "import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('198.51.100.2', 40000))
s.connect(('192.0.2.10', 80))
s.settimeout(1)
for _ in range(5):
    s.send(b'who')
    try:
        print(s.recv(2048).decode(), flush=True)
        break
    except socket.timeout:
        pass
else:
    print('timeout', flush=True)";

/// `--on-down rehash` under DNAT: a UDP flow whose backend goes down carries on with the
/// backend the table picks, in a new session whose reply key names it, so the Linux
/// client's connected socket keeps receiving the answers from the VIP.
#[test]
fn udp_flow_of_a_down_backend_moves_with_its_answers_under_rehash() {
    let Some(mut st) = setup(
        "u",
        false,
        &["--proto", "udp", "--on-down", "rehash"],
        None,
        false,
    ) else {
        return;
    };
    let py = common::system_python();
    for (i, ns) in st.backends.clone().iter().enumerate() {
        let (addr, name) = (format!("10.1.0.1{}", i + 1), format!("b{}", i + 1));
        st.lab.spawn(ns, &[py, "-c", UDP_WHO, &addr, "80", &name]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let ask = |c: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", c, py, "-c", UDP_ASK])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let c = st.c.clone();
    let first = ask(&c);
    let (was, client) = first.split_once(' ').expect(&first);
    assert_eq!(client, "198.51.100.2", "{first}");
    // The same flow again: the same backend (its session).
    assert_eq!(ask(&c), first);
    // Its backend goes down.
    let spec: String = (1..=3)
        .map(|i| {
            let state = if format!("b{i}") == was { "down" } else { "up" };
            format!("10.1.0.1{i}:0 weight={i} state={state}\n")
        })
        .collect();
    std::fs::write(&st.file, &spec).unwrap();
    sh(&format!("kill -HUP {}", st.pid));
    wait_for(&st.lines, "l4lb: reloaded", 5, &mut st.seen);
    let moved = ask(&c);
    let (now, client) = moved.split_once(' ').expect(&moved);
    assert_ne!(now, was, "{moved}");
    assert!(now.starts_with('b'), "{moved}");
    assert_eq!(client, "198.51.100.2", "{moved}");
    // And it stays there.
    assert_eq!(ask(&c), moved);
    let c = stop(&mut st);
    let get = |k: &str| {
        *c.get(k)
            .unwrap_or_else(|| panic!("no {k}:\n{}", st.seen.join("\n")))
    };
    assert_eq!(get("lb.rehashed"), 1, "{c:?}");
    assert_eq!(get("conntrack.renewed"), 1, "{c:?}");
    assert_eq!(get("lb.reset"), 0, "{c:?}");
    println!("{}", st.seen.join("\n"));
}

/// Path MTU discovery through the VIP: the backends' link at 1,400, a client's DF datagram of
/// 1,500 bytes to a UDP VIP does not fit once DNATed; the balancer's router makes
/// fragmentation needed, the balancer's session translates it back (quoting what the client
/// sent, to the VIP), and the client's kernel lowers its path MTU to the VIP.
#[test]
fn fragmentation_needed_reaches_the_client_through_the_vip() {
    let Some(mut st) = setup("m", false, &["--proto", "udp"], Some(1400), false) else {
        return;
    };
    let out = common::python_in(&st.c, common::DF_DATAGRAMS)
        .args(["192.0.2.10", "80"])
        .output()
        .unwrap();
    let c = stop(&mut st);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("mtu 1400"), "{out:?}\n{c:?}");
    assert!(
        c.get("cg.frag_needed_sent").is_some_and(|n| *n >= 1),
        "{c:?}"
    );
    assert!(
        c.get("lb.icmp_errors_translated").is_some_and(|n| *n >= 1),
        "{c:?}"
    );
}

/// Dual stack: an IPv6 VIP beside the IPv4 one (DNAT to the IPv6 backends): the client and
/// the backends resolve the load balancer by neighbour discovery and it them, requests to
/// `[2001:db8:10::10]:80` spread 1:2:3 over the backends' IPv6 servers, each seeing the
/// client's own IPv6 address (NLB keeps the client's address), and the IPv4 VIP the same,
/// in one run.
#[test]
fn ipv6_vip_balances_by_weight_beside_ipv4() {
    let Some(mut st) = setup("6", false, &[], None, true) else {
        return;
    };
    let c = st.c.clone();
    check_spread(&c, "http://[2001:db8:10::10]/", "2001:db8:c::2");
    check_spread(&c, V4_URL, "198.51.100.2");
    let counters = stop(&mut st);
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    for k in ["cg.ndp_adverts", "bg.ndp_solicits", "bg.neighbors_learned"] {
        assert!(get(k) >= 1, "{k}: {counters:?}");
    }
    assert_eq!(get("conntrack.service_rejected"), 0, "{counters:?}");
}
