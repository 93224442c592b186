//! `nat-gateway` between an inside and an outside network namespace, with Linux hosts on
//! both sides, in namespaces this test makes and removes:
//!
//! ```text
//!  ns in: ih 10.0.0.2/24 ═ veth ═ ig ─ ns gw: nat-gateway ─ og ═ veth ═ oh 203.0.113.2/24 :ns out
//!         default via 10.0.0.1      (10.0.0.1, 203.0.113.1 owned by the gateway, not the kernel)
//! ```
//!
//! - Profile `off` (route only; the outside host routes 10.0.0.0/24 back through the
//!   gateway): ping both ways and an HTTP download from the outside host arrive intact,
//!   pings of the gateway's inside address from both sides are answered, and the gateway's
//!   counters show the ARP and the forwarding.
//! - Profile `rfc` (the outside host knows no route to the inside): ping, a 1 MiB HTTP
//!   download, iperf3 TCP and UDP both ways (`-R` for the reverse), all translated to the
//!   public address; unsolicited pings to the public address and to the inside host fail;
//!   a static port forward reaches an inside web server; coturn's `turnutils_natdiscovery`
//!   (RFC 5780) against a `turnserver` on the outside reports endpoint-independent mapping,
//!   and address-and-port-dependent or endpoint-independent filtering as configured.
//! - Profile `rfc` with room for 64 mappings: 80 UDP flows from the inside; the first 64 are
//!   translated (the outside host's port unreachable reaches each socket), the other 16 are
//!   refused and the inside host's kernel delivers the gateway's ICMP administratively
//!   prohibited to exactly those sockets (RFC 5508 REQ-8).
//! - Profile `rfc`, fragments in any order (RFC 4787 REQ-14): scapy on the inside host sends
//!   UDP datagrams of 3,000 bytes as fragments, last fragment first, to a UDP echo server on
//!   the outside host; the outside kernel reassembles each translated datagram and echoes
//!   it, and the inside socket receives every echo (the gateway held the later fragments
//!   until their first passed: `fragment_reorder` counters).
//! - Profile `rfc`, the outside link's MTU 1,400: the inside host's TCP upload of 1 MiB
//!   gets through by path MTU discovery (the gateway's fragmentation needed), a datagram of
//!   1,500 bytes without DF reaches the outside host in two fragments, and pings with
//!   DF too big or TTL 1 hear fragmentation needed and time exceeded from the gateway; the
//!   inside link's MTU 1,400 instead: the outside host's DF datagram to a UDP port forward
//!   does not fit once translated, and the fragmentation needed the gateway makes reaches it
//!   through the NAT (its kernel's path MTU to the public address becomes 1,400).
//! - IPv6 beside IPv4 (NAT66, rfc profile; inside fd00::2/64, outside 2001:db8::2/64): the
//!   hosts and the gateway resolve each other by neighbour discovery; ping, a UDP flow seen
//!   from the public IPv6 address and an HTTP download pass; unsolicited pings do not; hop
//!   limit 1 and a DF ping too big for the outside MTU of 1,400 hear ICMPv6 errors.
//!
//! Needs root, `ip`, `ping`, `curl`, `python3`, `ethtool`, `iperf3`, coturn, scapy, `tcpdump`
//! and `tshark`: without
//! them it skips, except under `CI=true`, where it fails.
#![cfg(target_os = "linux")]
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed setup step should fail the test"
)]

mod common;

use common::{Lab, counters, pings, sh, wait_for};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const GATEWAY: &str = env!("CARGO_BIN_EXE_nat-gateway");
const BLOB_LEN: usize = 1 << 20;

/// Makes the lab; `None` (skipped) without root or tools outside CI.
fn lab(tag: &str) -> Option<(Lab, [String; 3])> {
    if !common::is_root() {
        assert!(!common::in_ci(), "nat_gateway needs root under CI=true");
        eprintln!("SKIP: nat_gateway needs root (set CI=true to make this a failure)");
        return None;
    }
    for (tool, probe) in [
        ("ip", "-V"),
        ("ping", "-V"),
        ("ethtool", "--version"),
        ("curl", "--version"),
        ("python3", "--version"),
    ] {
        if !common::require(tool, &[probe]) {
            return None;
        }
    }
    let t = format!("{tag}{}", std::process::id());
    let (i, g, o) = (format!("{t}i"), format!("{t}g"), format!("{t}o"));
    let lab = Lab {
        namespaces: vec![i.clone(), g.clone(), o.clone()],
        children: Vec::new(),
        dir: common::temp_dir(tag),
    };
    sh(&format!(
        "for n in {i} {g} {o}; do ip netns add $n; ip netns exec $n sysctl -qw net.ipv6.conf.all.disable_ipv6=1; done
         ip -n {i} link add ih type veth peer name ig netns {g}
         ip -n {o} link add oh type veth peer name og netns {g}
         ip -n {i} addr add 10.0.0.2/24 dev ih
         ip -n {o} addr add 203.0.113.2/24 dev oh
         ip netns exec {i} ethtool -K ih tx off >/dev/null
         ip netns exec {o} ethtool -K oh tx off >/dev/null
         ip -n {i} link set ih up; ip -n {i} link set lo up
         ip -n {o} link set oh up; ip -n {o} link set lo up
         ip -n {g} link set ig up; ip -n {g} link set og up; ip -n {g} link set lo up
         ip -n {i} route add default via 10.0.0.1"
    ));
    Some((lab, [i, g, o]))
}

fn start_gateway(lab: &mut Lab, g: &str, args: &[&str]) -> (Receiver<String>, Vec<String>) {
    let (lines, _) = lab.spawn_watched(
        Command::new("ip")
            .args(["netns", "exec", g, GATEWAY])
            .args(["--inside", "ig", "--inside-addr", "10.0.0.1/24"])
            .args(["--outside", "og", "--outside-addr", "203.0.113.1/24"])
            .args(args)
            .args(["--duration", "120"]),
    );
    let mut seen = Vec::new();
    wait_for(&lines, "nat-gateway: ready", 10, &mut seen);
    (lines, seen)
}

/// Stops the gateway (the last child) and returns its final counters.
fn stop_gateway(
    lab: &mut Lab,
    lines: &Receiver<String>,
    mut seen: Vec<String>,
) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut child = lab.children.pop().unwrap();
    sh(&format!("kill -TERM {}", child.id()));
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    seen.extend(lines.try_iter());
    assert!(status.success(), "exit {status}:\n{}", seen.join("\n"));
    (counters(&seen), seen)
}

/// Downloads the outside host's 1 MiB file from the inside; checks it arrived whole.
fn download(lab: &mut Lab, i: &str, o: &str) {
    serve(lab, o, "203.0.113.2", "8000");
    fetch(lab, i, "http://203.0.113.2:8000/blob");
}

/// Python's `http.server` without the reverse DNS lookup of its own address that
/// `python3 -m http.server` makes at start (through the gateway, to a resolver that is not
/// there: seconds of delay).
const HTTP_SERVER: &str = "import functools, http.server as h, socket, socketserver, sys
class S(h.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = 'lab', self.server_address[1]
S((sys.argv[1], int(sys.argv[2])), functools.partial(h.SimpleHTTPRequestHandler, directory=sys.argv[3])).serve_forever()";

/// Serves the lab's directory (holding `blob`, 1 MiB) from `ns` at `addr:port`.
fn serve(lab: &mut Lab, ns: &str, addr: &str, port: &str) {
    std::fs::write(lab.dir.join("blob"), blob()).unwrap();
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            common::system_python(),
            "-c",
            HTTP_SERVER,
            addr,
            port,
        ])
        .arg(&lab.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.children.insert(0, server);
}

/// Fetches `url` from namespace `ns` (retrying while the server starts); checks the blob.
fn fetch(lab: &mut Lab, ns: &str, url: &str) {
    let data = blob();
    let got = lab.dir.join("got");
    let _ = std::fs::remove_file(&got);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "10", "-o"])
            .arg(&got)
            .arg(url)
            .status()
            .unwrap()
            .success();
        if ok || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(attempts < 20, "{url}: {attempts} attempts");
    assert_eq!(
        std::fs::read(&got).ok(),
        Some(data),
        "download of {url} through the gateway"
    );
}

fn blob() -> Vec<u8> {
    (0..BLOB_LEN).map(|n| (n * 7 + n / 251) as u8).collect()
}

#[test]
fn routes_between_inside_and_outside() {
    let Some((mut lab, [i, g, o])) = lab("nfgr") else {
        return;
    };
    sh(&format!("ip -n {o} route add 10.0.0.0/24 via 203.0.113.1"));
    let (lines, seen) = start_gateway(&mut lab, &g, &["--profile", "off"]);
    assert_eq!(pings(&i, "203.0.113.2", 3), 3, "inside -> outside");
    assert_eq!(pings(&o, "10.0.0.2", 3), 3, "outside -> inside");
    // The gateway answers pings of its own addresses (not of its public one, here its
    // outside address: that is the NAT's), whichever side they come from.
    assert_eq!(pings(&i, "10.0.0.1", 3), 3, "inside -> gateway");
    assert_eq!(pings(&o, "10.0.0.1", 3), 3, "outside -> gateway");
    download(&mut lab, &i, &o);
    let (c, seen) = stop_gateway(&mut lab, &lines, seen);
    let get = |k: &str| {
        *c.get(k)
            .unwrap_or_else(|| panic!("no {k}:\n{}", seen.join("\n")))
    };
    // The inside host asked for its default gateway; the outside host learned the gateway's
    // MAC from the gateway's own request (RFC 826's merge).
    assert!(
        get("ig.arp_replies") >= 1 && get("og.arp_requests") >= 1,
        "{c:?}"
    );
    // The first packet each way waited for an ARP reply instead of being lost.
    assert!(get("og.forwarded_after_arp") >= 1, "{c:?}");
    assert_eq!(
        (get("ig.echo_replies"), get("og.echo_replies")),
        (3, 3),
        "{c:?}"
    );
    assert!(
        get("og.forwarded") >= 20 && get("ig.forwarded") >= 700,
        "{c:?}"
    );
    for k in [
        "no_neighbor",
        "no_route",
        "ttl_expired",
        "too_big",
        "malformed",
        "pending_full",
    ] {
        assert_eq!(
            get(&format!("ig.{k}")) + get(&format!("og.{k}")),
            0,
            "{k}: {c:?}"
        );
    }
    println!("{}", seen.join("\n"));
}

/// iperf3 from `client` to `server_addr` (a server in `server`), TCP or UDP, `-R` to reverse:
/// the bytes the receiver got.
fn iperf(lab: &mut Lab, client: &str, server: &str, server_addr: &str, extra: &[&str]) -> u64 {
    let s = Command::new("ip")
        .args(["netns", "exec", server, "iperf3", "-s", "-1", "-p", "5201"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.children.insert(0, s);
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            client,
            "iperf3",
            "-c",
            server_addr,
            "-p",
            "5201",
            "-t",
            "2",
            "-J",
        ])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "sum_received": {... "bytes": N ...} (TCP) or "sum": {... "bytes": N, ... "lost_percent"} (UDP).
    let key = if extra.contains(&"-u") {
        "\"sum\""
    } else {
        "\"sum_received\""
    };
    let at = text
        .rfind(key)
        .unwrap_or_else(|| panic!("iperf3 {extra:?}: {text}"));
    let rest = &text[at..];
    let b = rest.find("\"bytes\":").unwrap() + 8;
    rest[b..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `turnutils_natdiscovery` from the inside against a turnserver on two outside addresses.
fn nat_discovery(lab: &mut Lab, i: &str, o: &str) -> String {
    let t = Command::new("ip")
        .args([
            "netns",
            "exec",
            o,
            "turnserver",
            "-L",
            "203.0.113.2",
            "-L",
            "203.0.113.3",
        ])
        .args([
            "--no-auth",
            "--no-tls",
            "--no-dtls",
            "-n",
            "--log-file",
            "stdout",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.children.insert(0, t);
    std::thread::sleep(Duration::from_millis(800));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            i,
            "timeout",
            "30",
            "turnutils_natdiscovery",
            "-m",
            "-f",
            "203.0.113.2",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn translates(filtering: &str, io: &str) {
    let Some((mut lab, [i, g, o])) = lab(&format!("nfn{}", &filtering[..1])) else {
        return;
    };
    for (tool, probe) in [("iperf3", "--version"), ("turnserver", "--version")] {
        if !common::require(tool, &[probe]) {
            return;
        }
    }
    // A second outside address for the RFC 5780 server; an inside web server, forwarded.
    sh(&format!("ip -n {o} addr add 203.0.113.3/24 dev oh"));
    serve(&mut lab, &i, "10.0.0.2", "8000");
    let (lines, seen) = start_gateway(
        &mut lab,
        &g,
        &[
            "--profile",
            "rfc",
            "--filtering",
            filtering,
            "--forward",
            "tcp:8080=10.0.0.2:8000",
            "--io",
            io,
            "--metrics",
            "127.0.0.1:9464",
        ],
    );
    assert_eq!(
        pings(&i, "203.0.113.2", 3),
        3,
        "inside -> outside, translated"
    );
    download(&mut lab, &i, &o);
    fetch(&mut lab, &o, "http://203.0.113.1:8080/blob");
    // Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): the inside host reaches the forwarded
    // server, itself, through the public address, and is seen from the public address.
    fetch(&mut lab, &i, "http://203.0.113.1:8080/blob");
    assert!(
        iperf(&mut lab, &i, &o, "203.0.113.2", &[]) > 1 << 20,
        "TCP out"
    );
    assert!(
        iperf(&mut lab, &i, &o, "203.0.113.2", &["-R"]) > 1 << 20,
        "TCP in"
    );
    assert!(
        iperf(&mut lab, &i, &o, "203.0.113.2", &["-u", "-b", "20M"]) > 1 << 20,
        "UDP out"
    );
    assert!(
        iperf(&mut lab, &i, &o, "203.0.113.2", &["-u", "-b", "20M", "-R"]) > 1 << 20,
        "UDP in"
    );
    // Nothing gets in unasked: not to the public address, not to the inside host.
    assert_eq!(
        pings(&o, "203.0.113.1", 2),
        0,
        "unsolicited ping to the public address"
    );
    sh(&format!("ip -n {o} route add 10.0.0.0/24 via 203.0.113.1"));
    assert_eq!(
        pings(&o, "10.0.0.2", 2),
        0,
        "outside straight to an inside address"
    );
    let report = nat_discovery(&mut lab, &i, &o);
    assert!(
        report.contains("NAT with Endpoint Independent Mapping!"),
        "{report}"
    );
    let want = match filtering {
        "eif" => "NAT with Endpoint Independent Filtering!",
        _ => "NAT with Address and Port Dependent Filtering!",
    };
    assert!(report.contains(want), "{report}");
    // Prometheus: the same counters, served while the gateway runs (published every
    // second), the ports' under `port:IFNAME`.
    std::thread::sleep(Duration::from_millis(1100));
    let exposition = common::scrape(&g, 9464);
    let (c, seen) = stop_gateway(&mut lab, &lines, seen);
    for (stage, counter) in [
        ("snat", "flows_translated"),
        ("port:ig", "rx"),
        ("port:og", "tx"),
    ] {
        let (live, last) = (
            common::metric(&exposition, stage, counter),
            c.get(&format!("{}.{counter}", stage.trim_start_matches("port:")))
                .copied(),
        );
        assert!(
            live.is_some_and(|v| v > 0 && last.is_none_or(|l| v <= l)),
            "{stage}.{counter}: {live:?} {last:?}\n{exposition}"
        );
    }
    let get = |k: &str| {
        *c.get(k)
            .unwrap_or_else(|| panic!("no {k}:\n{}", seen.join("\n")))
    };
    assert!(
        get("snat.flows_translated") >= 5 && get("snat.flows_forwarded") >= 1,
        "{c:?}"
    );
    assert!(
        get("snat.no_mapping") >= 2 && get("gateway.spoofed") >= 2,
        "{c:?}"
    );
    assert!(get("snat.packets_hairpinned") > 100, "{c:?}");
    // Window tracking checked every segment and dropped none of the real stacks'.
    assert!(get("tcp_window.checked") > 10_000, "{c:?}");
    assert_eq!(get("conntrack.service_rejected"), 0, "{c:?}");
    println!("{}", seen.join("\n"));
}

#[test]
fn translates_with_address_and_port_dependent_filtering() {
    translates("apdf", "packet");
}

/// On AF_XDP (`--io xdp`): the same checks, the gateway's frames through XDP programs in
/// the veth drivers.
#[test]
fn translates_with_endpoint_independent_filtering_on_af_xdp() {
    translates("eif", "xdp");
}

/// The inside host opens 80 UDP sockets to a closed port outside, one datagram each, and
/// prints the error each socket got: ECONNREFUSED (the outside host's port unreachable,
/// translated back) or EHOSTUNREACH (the gateway's administratively prohibited; Linux
/// delivers an ICMP error to a socket only if its quote names that socket's flow).
const UDP_FLOWS: &str = r#"
import errno, socket, time
socks = []
for _ in range(80):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("203.0.113.2", 9))
    s.send(b"x")
    socks.append(s)
    time.sleep(0.005)
time.sleep(1.0)
out = []
for s in socks:
    s.setblocking(False)
    try:
        s.recv(16)
        out.append("data")
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
print(" ".join(out))
"#;

#[test]
fn refused_flows_get_icmp_prohibited() {
    let Some((mut lab, [i, g, o])) = lab("nfnq") else {
        return;
    };
    // Every port unreachable of the outside host, not one per second.
    sh(&format!(
        "ip netns exec {o} sysctl -qw net.ipv4.icmp_ratelimit=0"
    ));
    let (lines, seen) = start_gateway(&mut lab, &g, &["--profile", "rfc", "--sessions", "64"]);
    let out = Command::new("ip")
        .args(["netns", "exec", &i, "python3", "-c", UDP_FLOWS])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (c, seen) = stop_gateway(&mut lab, &lines, seen);
    let errors: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(errors.len(), 80, "{text}\n{}", seen.join("\n"));
    let refused = errors.iter().filter(|e| **e == "ECONNREFUSED").count();
    let prohibited = errors.iter().filter(|e| **e == "EHOSTUNREACH").count();
    assert_eq!((refused, prohibited), (64, 16), "{errors:?}\n{c:?}");
    // The refusals are the last 16 flows, in order.
    assert!(
        errors[64..].iter().all(|e| *e == "EHOSTUNREACH"),
        "{errors:?}"
    );
    assert_eq!(c.get("snat.refusal_icmp_sent"), Some(&16), "{c:?}");
    assert_eq!(c.get("snat.alloc_error_capacity_full"), Some(&16), "{c:?}");
}

#[test]
fn fragments_in_reverse_order_are_translated() {
    let Some((mut lab, [i, g, o])) = lab("nfr") else {
        return;
    };
    if !common::require(common::system_python(), &["-c", "import scapy.all"]) {
        return;
    }
    lab.udp_echo(&o, "203.0.113.2");
    let (lines, seen) = start_gateway(&mut lab, &g, &["--profile", "rfc"]);
    const N: u32 = 10;
    let said = common::send_reversed_fragments(&i, N, "10.0.0.2", "203.0.113.2");
    let (c, seen) = stop_gateway(&mut lab, &lines, seen);
    // Two later fragments of each datagram waited for their first.
    common::assert_reordered(&said, N, &c, &seen);
    println!("{said}");
}

/// Counts what one TCP connection to ADDR:PORT sends and answers with the count.
const SINK: &str = "import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print('sink ready', flush=True)
c, _ = s.accept()
n = 0
while True:
    d = c.recv(65536)
    if not d:
        break
    n += len(d)
c.sendall(str(n).encode())
c.close()";

/// Sends N bytes to ADDR:PORT (10 s at most) and prints `stored` and the sink's count.
const UPLOAD: &str = "import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b'x' * int(sys.argv[3]))
c.shutdown(socket.SHUT_WR)
print('stored', c.recv(100).decode(), flush=True)";

/// The gateway answers what it cannot forward as a router must (RFC 1812): its outside link
/// has an MTU of 1,400 against the hosts' 1,500, so the inside host's TCP upload of 1 MiB
/// gets through only by path MTU discovery (fragmentation needed, RFC 1191, from the
/// gateway's inside address: the kernel lowers the path's MTU and TCP its segments); a ping
/// with DF too big for the outside hears the same; a ping with TTL 1 hears time exceeded; a
/// datagram without DF leaves in two fragments. tshark reads every error and fragment the
/// gateway sent: well formed, checksums right, the fragments reassembled.
#[test]
fn transit_packets_that_cannot_pass_are_answered() {
    let Some((mut lab, [i, g, o])) = lab("nfm") else {
        return;
    };
    if !common::require("tcpdump", &["--version"]) || !common::require("tshark", &["--version"]) {
        return;
    }
    sh(&format!("ip -n {g} link set og mtu 1400"));
    // The sink first: stopping the gateway stops the last process started.
    let (sink, _) = lab.spawn_watched(common::python_in(&o, SINK).args(["203.0.113.2", "7010"]));
    wait_for(&sink, "sink ready", 10, &mut Vec::new());
    let (sizes, _) =
        lab.spawn_watched(common::python_in(&o, SIZE_SERVER).args(["203.0.113.2", "7011"]));
    wait_for(&sizes, "sizes ready", 10, &mut Vec::new());
    // What the gateway sends: its ICMP errors to the inside host, its fragments outside.
    let errors = capture(&mut lab, &i, "ih", "icmp");
    let fragments = capture(&mut lab, &o, "oh", "ip[6:2] & 0x3fff != 0");
    let (lines, seen) = start_gateway(&mut lab, &g, &["--profile", "rfc"]);
    // First through the gateway, so that the outside host is not resolved yet: a 1,500-byte
    // datagram without DF, which the gateway fragments for the outside and keeps until ARP
    // answers; the outside kernel reassembles it.
    let sized = common::python_in(&i, SIZED)
        .args(["203.0.113.2", "7011"])
        .output()
        .unwrap();
    // The same with an IP option: the copied router alert in both fragments.
    let with_option = common::python_in(&i, SIZED)
        .args(["203.0.113.2", "7011", "ra"])
        .output()
        .unwrap();
    let up = common::python_in(&i, UPLOAD)
        .args(["203.0.113.2", "7010", &(1 << 20).to_string()])
        .output()
        .unwrap();
    let ping = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &i, "ping", "-n", "-c", "1", "-W", "2"])
            .args(args)
            .arg("203.0.113.2")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expired = ping(&["-t", "1"]);
    sh(&format!("ip -n {i} route flush cache"));
    let big = ping(&["-M", "do", "-s", "1450"]);
    let (c, seen) = stop_gateway(&mut lab, &lines, seen);
    assert_eq!(
        String::from_utf8_lossy(&up.stdout).trim(),
        format!("stored {}", 1 << 20),
        "{up:?}\n{c:?}"
    );
    assert!(
        expired.contains("From 10.0.0.1") && expired.contains("Time to live exceeded"),
        "{expired}"
    );
    assert_eq!(
        String::from_utf8_lossy(&sized.stdout).trim(),
        "size 1472",
        "{sized:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&with_option.stdout).trim(),
        "size 1468",
        "{with_option:?}"
    );
    assert_eq!(
        (c.get("og.fragmented"), c.get("og.fragments_sent")),
        (Some(&2), Some(&4)),
        "{c:?}"
    );
    assert!(
        c.get("og.forwarded_after_arp").is_some_and(|&n| n >= 2),
        "the fragments waited for ARP: {c:?}"
    );
    assert!(
        big.contains("From 10.0.0.1") && big.contains("mtu = 1400"),
        "{big}"
    );
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    assert!(
        get("ig.frag_needed_sent") >= 2,
        "{c:?}\n{}",
        seen.join("\n")
    );
    assert_eq!(get("ig.time_exceeded_sent"), 1, "{c:?}");
    assert_eq!(get("ig.icmp_rate_limited"), 0, "{c:?}");
    let (frag, expired) = (get("ig.frag_needed_sent"), get("ig.time_exceeded_sent"));
    // tshark: every error well formed (checksums, the MTU), every fragment too, and each
    // datagram's two fragments reassembled.
    // (tcpdump writes each packet as it comes, `--immediate-mode -U`; a margin all the same.)
    std::thread::sleep(Duration::from_millis(1000));
    let fields = [
        "_ws.malformed",
        "_ws.expert.severity",
        "ip.src",
        "icmp.type",
        "icmp.code",
        "icmp.mtu",
        "icmp.checksum.status",
        "ip.flags.mf",
        "ip.frag_offset",
        "udp.length",
        "ip.opt.type",
    ];
    let args = ["-n", "-o", "ip.check_checksum:TRUE"];
    let rows = common::tshark_rows(&errors, &args, &fields);
    let ours: Vec<_> = rows
        .iter()
        .filter(|r| r["ip.src"].first().is_some_and(|s| s == "10.0.0.1"))
        .collect();
    assert_eq!(ours.len() as u64, frag + expired, "{rows:?}");
    for (n, r) in ours.iter().enumerate() {
        common::assert_dissected_clean(n, r);
        assert_eq!(
            r["icmp.checksum.status"][0], "1",
            "the error's own checksum: {r:?}"
        );
        // The error's own fields first (a quoted ping's follow).
        let (ty, code) = (&r["icmp.type"][0][..], &r["icmp.code"][0][..]);
        match ty {
            "3" => assert_eq!((code, &r["icmp.mtu"][..]), ("4", &["1400".to_string()][..])),
            _ => assert_eq!((ty, code), ("11", "0"), "{r:?}"),
        }
    }
    let rows = common::tshark_rows(&fragments, &args, &fields);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (n, r) in rows.iter().enumerate() {
        common::assert_dissected_clean(n, r);
        // The router alert in both fragments of the second datagram, none in the first's.
        assert_eq!(r["ip.opt.type"].is_empty(), n < 2, "{r:?}");
    }
    for pair in rows.chunks(2) {
        assert_eq!(pair[0]["ip.flags.mf"], ["1"], "{rows:?}");
        assert_eq!(pair[1]["ip.flags.mf"], ["0"], "{rows:?}");
    }
    assert_eq!(rows[1]["udp.length"], ["1480"], "reassembled: {rows:?}");
    assert_eq!(rows[3]["udp.length"], ["1476"], "reassembled: {rows:?}");

    // The inside link at 1,400 instead: a DF datagram of 1,500 bytes from the outside host to
    // a UDP port forward does not fit once translated; fragmentation needed goes back
    // through the NAT (translated as an error about the forward's session) and the outside
    // host's kernel lowers its path MTU to the public address.
    sh(&format!(
        "ip -n {g} link set og mtu 1500; ip -n {g} link set ig mtu 1400; ip -n {i} link set ih mtu 1400"
    ));
    let (lines, seen) = start_gateway(
        &mut lab,
        &g,
        &["--profile", "rfc", "--forward", "udp:9000=10.0.0.2:9000"],
    );
    let out = common::python_in(&o, common::DF_DATAGRAMS)
        .args(["203.0.113.1", "9000"])
        .output()
        .unwrap();
    // A datagram to the same forward that arrives with TTL 1: it would leave the gateway
    // with none once translated, so the gateway answers time exceeded, which goes back
    // through the NAT as an error about the forward's session: the outside host's kernel
    // hands it to the sending socket (it quotes the datagram as sent, to the public
    // address).
    let probe = common::python_in(&o, TTL_PROBE)
        .args(["203.0.113.1", "9000"])
        .output()
        .unwrap();
    let (c, seen) = stop_gateway(&mut lab, &lines, seen);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("mtu 1400"),
        "{out:?}\n{c:?}\n{}",
        seen.join("\n")
    );
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    assert!(get("og.frag_needed_sent") >= 1, "{c:?}");
    assert_eq!(get("og.too_big"), 0, "{c:?}");
    let heard = String::from_utf8_lossy(&probe.stdout);
    assert!(heard.starts_with("error 11 0 from "), "{probe:?}\n{c:?}");
    assert_eq!(
        (get("og.time_exceeded_sent"), get("og.ttl_expired")),
        (1, 0),
        "{c:?}"
    );
    eprintln!(
        "transit answers: {frag} fragmentation needed, {expired} time exceeded; through the NAT: {} fragmentation needed, time exceeded {}",
        get("og.frag_needed_sent"),
        heard.trim()
    );
}

/// Sends one UDP datagram with TTL 1 to ADDR:PORT and prints the ICMP error the kernel
/// queues on the socket for it (`IP_RECVERR`): `error TYPE CODE from OFFENDER`, or
/// `no error` after 3 s.
const TTL_PROBE: &str = "import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b'ttl')
deadline = time.time() + 3
while time.time() < deadline:
    try:
        _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
    except BlockingIOError:
        time.sleep(0.05)
        continue
    for level, kind, data in anc:
        if level == socket.IPPROTO_IP and kind == 11:
            _, _, ty, code = struct.unpack_from('=IBBB', data)
            print('error', ty, code, 'from', socket.inet_ntoa(data[20:24]), flush=True)
            sys.exit(0)
print('no error', flush=True)";

/// Starts tcpdump on `iface` of namespace `ns` for `filter`, each packet written as it comes
/// (without `--immediate-mode` libpcap hands packets over in blocks, up to a second late: a
/// CI run read an empty capture); the capture file's path once it is written to.
fn capture(lab: &mut Lab, ns: &str, iface: &str, filter: &str) -> std::path::PathBuf {
    let path = lab.dir.join(format!("{iface}.pcap"));
    let file = path.to_str().unwrap();
    lab.spawn(
        ns,
        &[
            "tcpdump",
            "--immediate-mode",
            "-i",
            iface,
            "-U",
            "-Z",
            "root",
            "-w",
            file,
            filter,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&path).map_or(true, |m| m.len() < 24) {
        assert!(Instant::now() < deadline, "tcpdump never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    path
}

/// Answers every UDP datagram to ADDR:PORT with its size.
const SIZE_SERVER: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('sizes ready', flush=True)
while True:
    d, a = s.recvfrom(65536)
    s.sendto(str(len(d)).encode(), a)";

/// Sends a 1,500-byte UDP datagram without DF to ADDR:PORT and prints `size` and the size
/// the server saw (3 s at most); with a third argument `ra`, its IP header carries the
/// router alert option (RFC 2113, 4 bytes: 1,468 bytes of data).
const SIZED: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER: IP_PMTUDISC_DONT
n = 1472
if sys.argv[3:] == ['ra']:
    s.setsockopt(socket.IPPROTO_IP, 4, bytes([0x94, 4, 0, 0]))  # IP_OPTIONS
    n = 1468
s.settimeout(3)
s.sendto(b'x' * n, (sys.argv[1], int(sys.argv[2])))
print('size', s.recv(100).decode(), flush=True)";

/// A UDP server on `sys.argv[1]` port 7000 answering each datagram with the address and
/// port it came from.
const WHO_ASKS: &str = "import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7000))
print('who ready', flush=True)
while True:
    d, a = s.recvfrom(100)
    s.sendto(('%s:%d' % (a[0], a[1])).encode(), a)";

/// Asks `sys.argv[1]` port 7000 who it sees; prints the answer.
const ASK: &str = "import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b'?', (sys.argv[1], 7000))
print('seen', s.recv(100).decode(), flush=True)";

/// Runs `args` in namespace `ns`; its stdout and stderr.
fn output(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// IPv6 beside IPv4 (`--inside-addr6`, `--outside-addr6`): the router answers the Linux
/// hosts' neighbour solicitations and solicits theirs (RFC 4861), and NAT66 under the rfc
/// profile translates ping, a UDP flow (the outside host sees the public IPv6 address) and
/// a 1 MiB HTTP download over TCP from the inside host (fd00::2) to the outside one
/// (2001:db8::2), while IPv4 goes on as before; unsolicited pings to the public address
/// fail; the gateway's inside address answers pings; a ping with hop limit 1 hears time
/// exceeded, and one too big for the outside link's MTU of 1,400 hears packet too big
/// (RFC 4443), both from the gateway's inside IPv6 address; a port forward of the public
/// IPv6 address reaches the inside host's web server from outside.
#[test]
fn translates_ipv6_beside_ipv4() {
    let Some((mut lab, [i, g, o])) = lab("nf6") else {
        return;
    };
    // IPv6 on the hosts (addresses without duplicate address detection); the gateway's
    // kernel stays without it (the gateway owns its interfaces).
    sh(&format!(
        "for n in {i} {o}; do ip netns exec $n sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0; done
         ip netns exec {i} sysctl -qw net.ipv6.conf.ih.disable_ipv6=0
         ip netns exec {o} sysctl -qw net.ipv6.conf.oh.disable_ipv6=0
         ip -n {i} -6 addr add fd00::2/64 dev ih nodad
         ip -n {o} -6 addr add 2001:db8::2/64 dev oh nodad
         ip -n {i} -6 route add default via fd00::1
         ip -n {g} link set og mtu 1400; ip -n {o} link set oh mtu 1400"
    ));
    let (who, _) = lab.spawn_watched(
        Command::new("ip")
            .args(["netns", "exec", &o, common::system_python(), "-c", WHO_ASKS])
            .arg("2001:db8::2"),
    );
    wait_for(&who, "who ready", 10, &mut Vec::new());
    serve(&mut lab, &o, "2001:db8::2", "8000");
    serve(&mut lab, &i, "fd00::2", "8000");
    let (lines, seen) = start_gateway(
        &mut lab,
        &g,
        &[
            "--profile",
            "rfc",
            "--inside-addr6",
            "fd00::1/64",
            "--outside-addr6",
            "2001:db8::1/64",
            "--forward",
            "tcp:8080=[fd00::2]:8000",
        ],
    );
    assert_eq!(pings(&i, "2001:db8::2", 3), 3, "inside -> outside, NAT66");
    assert_eq!(pings(&i, "203.0.113.2", 2), 2, "IPv4 beside it");
    assert_eq!(pings(&i, "fd00::1", 2), 2, "the gateway's inside address");
    let said = output(&i, &[common::system_python(), "-c", ASK, "2001:db8::2"]);
    assert!(said.contains("seen 2001:db8::1:"), "{said}");
    fetch(&mut lab, &i, "http://[2001:db8::2]:8000/blob");
    // A port forward of the public IPv6 address to the inside web server.
    fetch(&mut lab, &o, "http://[2001:db8::1]:8080/blob");
    assert_eq!(
        pings(&o, "2001:db8::1", 2),
        0,
        "unsolicited ping to the public address"
    );
    let hop = output(
        &i,
        &["ping", "-n", "-c", "1", "-W", "1", "-t", "1", "2001:db8::2"],
    );
    assert!(
        hop.contains("From fd00::1") && hop.contains("Time exceeded"),
        "{hop}"
    );
    let big = output(
        &i,
        &[
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "1400",
            "2001:db8::2",
        ],
    );
    assert!(
        big.contains("From fd00::1") && big.contains("Packet too big: mtu=1400"),
        "{big}"
    );
    let (c, seen) = stop_gateway(&mut lab, &lines, seen);
    let get = |k: &str| {
        *c.get(k)
            .unwrap_or_else(|| panic!("no {k}:\n{}", seen.join("\n")))
    };
    for k in [
        "ig.ndp_adverts",
        "og.ndp_solicits",
        "ig.echo_replies",
        "ig.time_exceeded_sent",
        "ig.frag_needed_sent",
    ] {
        assert!(get(k) >= 1, "{k}: {c:?}");
    }
    assert!(get("snat.flows_translated") >= 4, "{c:?}");
    assert!(get("snat.flows_forwarded") >= 1, "{c:?}");
    assert_eq!(get("conntrack.service_rejected"), 0, "{c:?}");
    println!("{}", seen.join("\n"));
}
