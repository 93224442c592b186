//! Linux kernel interop: a kernel `vxlan` device and nf's encap/decap stages (the
//! `vxlan-gateway` example on raw sockets) carry ping and TCP through one VXLAN tunnel, both
//! ways, in network namespaces that the test makes and removes.
//!
//! ```text
//!  ns a (kernel VTEP)                 ns g (vxlan-gateway)              ns b (host)
//!  vx0 198.51.100.1/24, VNI 42
//!   └ ua 192.0.2.1/24 ═══ veth ═══ ug (underlay, no address)
//!                                     og (overlay, no address) ═══ veth ═══ ob 198.51.100.2/24
//! ```
//!
//! Ping (also with full-size 1500-byte packets, DF set) and a 1 MiB HTTP download run from a
//! to b and from b to a; the downloads must arrive intact, the kernels must count no checksum
//! errors, and the gateway's counters must show the traffic went through its decap and encap
//! stages with nothing dropped. Needs root, `ip`, `ping`, `curl`, `python3`, `ethtool`,
//! `sysctl` and `kill` (procps) and VXLAN support: without them it skips, except under
//! `CI=true`, where it fails.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

const VNI: &str = "42";
const A_UNDERLAY: &str = "192.0.2.1";
const G_UNDERLAY: &str = "192.0.2.2";
const A_OVERLAY: &str = "198.51.100.1";
const B_OVERLAY: &str = "198.51.100.2";
const A_UNDERLAY_MAC: &str = "02:6e:66:00:00:01";
const G_UNDERLAY_MAC: &str = "02:6e:66:00:00:02";
/// Room for a 1500-byte inner IP packet plus 50 bytes of VXLAN over IPv4.
const UNDERLAY_MTU: &str = "1550";
const HTTP_PORT: &str = "8000";
const BLOB_LEN: usize = 1 << 20;
/// No process this test starts outlives this, even if the test itself is killed.
const CHILD_LIFETIME_SECS: &str = "60";
const NS_PREFIX: &str = "nfvx-";

/// The namespace lab ([`common::Lab`]: namespaces, children and a folder, removed on drop,
/// also when the test panics) and the gateway, whose output is shown first.
struct Lab {
    base: common::Lab,
    gateway: Option<Gateway>,
}

/// The running `vxlan-gateway` (also in [`Lab::children`]) and its stdout, line by line.
struct Gateway {
    pid: String,
    lines: Receiver<String>,
}

impl Gateway {
    /// SIGTERM, then its output until it exits (at most 5 s); false if it did not exit.
    fn stop(&self) -> (Vec<String>, bool) {
        let _ = output(&["kill", "-TERM", &self.pid]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(RecvTimeoutError::Disconnected) => return (out, true),
                Err(RecvTimeoutError::Timeout) => return (out, false),
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failed test still shows what the gateway counted (drop reasons tell most); then
        // `base` removes the rest.
        if let Some(gw) = self.gateway.take() {
            let (out, _) = gw.stop();
            eprintln!("vxlan-gateway output:\n{}", out.join("\n"));
        }
    }
}

impl Lab {
    fn add_namespace(&mut self, name: String) {
        run(&["ip", "netns", "add", &name]);
        self.base.namespaces.push(name);
    }
}

/// Runs a command to completion (every command here is bounded by its own options).
fn output(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

/// Runs a command that must succeed; its stdout.
fn run(argv: &[&str]) -> String {
    let o = output(argv);
    assert!(
        o.status.success(),
        "{argv:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn in_ns<'a>(ns: &'a str, argv: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(argv);
    v
}

/// Root and the tools; false (skip) when missing outside CI, a panic under CI.
fn prerequisites() -> bool {
    if !common::is_root() {
        assert!(
            !common::in_ci(),
            "kernel_vxlan needs root under CI=true (network namespaces, raw sockets)"
        );
        eprintln!("SKIP: kernel_vxlan needs root (set CI=true to make this a failure)");
        return false;
    }
    common::require("ip", &["-V"])
        && common::require("ping", &["-V"])
        && common::require("curl", &["--version"])
        && common::require(common::system_python(), &["--version"])
        && common::require("ethtool", &["--version"])
        && common::require("sysctl", &["--version"])
        && common::require("kill", &["--version"])
}

/// Namespaces left by an earlier run of this test that was killed before it could clean up.
fn remove_stale_namespaces() {
    for line in run(&["ip", "netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = output(&["ip", "netns", "del", name]);
        }
    }
}

/// Deterministic incompressible bytes (xorshift64).
fn blob() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..BLOB_LEN / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// A static HTTP server on `addr` in `ns` that exits by itself after
/// [`CHILD_LIFETIME_SECS`]; returns once it accepts connections.
fn start_http_server(lab: &mut Lab, ns: &str, addr: &str, dir: &str) {
    const SERVER: &str = "\
import functools, http.server, sys, threading
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
handler = functools.partial(Quiet, directory=sys.argv[3])
server = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
threading.Event().wait(float(sys.argv[4]))
";
    let child = Command::new("ip")
        .args(["netns", "exec", ns, common::system_python(), "-c", SERVER])
        .args([addr, HTTP_PORT, dir, CHILD_LIFETIME_SECS])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the HTTP server");
    lab.base.children.push(child);
    // Ready when a request from its own namespace (not through the tunnel) succeeds.
    let url = format!("http://{addr}:{HTTP_PORT}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = output(&in_ns(
            ns,
            &["curl", "-s", "-o", "/dev/null", "--max-time", "1", &url],
        ));
        if probe.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "HTTP server in {ns} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ping` from `ns` to `dst`; its summary lines.
fn ping(ns: &str, dst: &str, extra: &[&str]) -> String {
    let mut argv = vec!["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-w", "10"];
    argv.extend_from_slice(extra);
    argv.push(dst);
    let out = run(&in_ns(ns, &argv));
    let summary: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt"))
        .collect();
    // -w lets ping send more while the first answer waits for ARP; three must come back.
    assert!(
        summary.first().is_some_and(|l| l.contains(" 3 received")),
        "ping {dst} from {ns}: {out}"
    );
    summary.join("; ")
}

/// Downloads the blob from `server` into `dir` from `ns`; curl's report.
fn download(ns: &str, server: &str, dir: &std::path::Path, want: &[u8]) -> String {
    let out = dir.join(format!("from-{server}"));
    let url = format!("http://{server}:{HTTP_PORT}/blob");
    let report = run(&in_ns(
        ns,
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "20",
            "-o",
            out.to_str().unwrap(),
            "-w",
            "HTTP %{http_code}, %{size_download} bytes in %{time_total} s (%{speed_download} B/s)",
            &url,
        ],
    ));
    let got = std::fs::read(&out).unwrap();
    assert!(
        got == want,
        "download from {server} to {ns}: {} bytes, content differs",
        got.len()
    );
    report
}

/// A counter from a namespace's `/proc/net/snmp` (e.g. `Tcp`, `InCsumErrors`).
fn snmp(ns: &str, proto: &str, field: &str) -> u64 {
    let text = run(&in_ns(ns, &["cat", "/proc/net/snmp"]));
    let prefix = format!("{proto}:");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    let i = names.split_whitespace().position(|n| n == field).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn gateway_prints_usage_and_refuses_bad_arguments() {
    let bin = env!("CARGO_BIN_EXE_vxlan-gateway");
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: vxlan-gateway"));
    let bad = Command::new(bin).args(["--vni", "42"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--underlay is required"));
}

/// One lab at a time: both tests drive iperf3 through their gateway, and a 2-CPU machine
/// shared by two would only measure the sharing.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn kernel_vxlan_and_nf_gateway_on_packet_rings_carry_ping_and_tcp_both_ways() {
    interop("packet");
}

#[test]
fn kernel_vxlan_and_nf_gateway_on_af_xdp_carry_ping_and_tcp_both_ways() {
    interop("xdp");
}

/// The whole interop run with the gateway's frame I/O `io` (`--io packet|xdp`).
fn interop(io: &str) {
    if !prerequisites() {
        return;
    }
    let _one = ONE_LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    remove_stale_namespaces();
    let pid = std::process::id();
    let (a, g, b) = (
        format!("{NS_PREFIX}{pid}-{io}-a"),
        format!("{NS_PREFIX}{pid}-{io}-g"),
        format!("{NS_PREFIX}{pid}-{io}-b"),
    );
    let mut lab = Lab {
        base: common::Lab {
            namespaces: Vec::new(),
            children: Vec::new(),
            dir: common::temp_dir(&format!("kernel-vxlan-{io}")),
        },
        gateway: None,
    };
    for ns in [&a, &g, &b] {
        lab.add_namespace(ns.clone());
        // No IPv6: nothing the kernels send by themselves (router solicitations, MLD) mixes
        // with the test's traffic, and the gateway's namespace stays silent.
        run(&in_ns(
            ns,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        ));
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    // The kernel must have VXLAN; probe before building the rest.
    let probe = output(&[
        "ip", "-n", &a, "link", "add", "vxprobe", "type", "vxlan", "id", "1", "dstport", "4789",
    ]);
    if !probe.status.success() {
        let why = String::from_utf8_lossy(&probe.stderr);
        assert!(!common::in_ci(), "no VXLAN support under CI=true: {why}");
        eprintln!("SKIP: the kernel has no VXLAN support ({why})");
        return;
    }
    run(&["ip", "-n", &a, "link", "del", "vxprobe"]);

    // Underlay a <-> g, overlay g <-> b.
    run(&[
        "ip",
        "-n",
        &a,
        "link",
        "add",
        "ua",
        "mtu",
        UNDERLAY_MTU,
        "address",
        A_UNDERLAY_MAC,
        "type",
        "veth",
        "peer",
        "name",
        "ug",
        "mtu",
        UNDERLAY_MTU,
        "address",
        G_UNDERLAY_MAC,
        "netns",
        &g,
    ]);
    run(&[
        "ip", "-n", &g, "link", "add", "og", "type", "veth", "peer", "name", "ob", "netns", &b,
    ]);
    run(&[
        "ip",
        "-n",
        &a,
        "addr",
        "add",
        &format!("{A_UNDERLAY}/24"),
        "dev",
        "ua",
    ]);
    run(&[
        "ip", "-n", &a, "link", "add", "vx0", "type", "vxlan", "id", VNI, "remote", G_UNDERLAY,
        "local", A_UNDERLAY, "dstport", "4789", "dev", "ua",
    ]);
    run(&[
        "ip",
        "-n",
        &a,
        "addr",
        "add",
        &format!("{A_OVERLAY}/24"),
        "dev",
        "vx0",
    ]);
    run(&[
        "ip",
        "-n",
        &b,
        "addr",
        "add",
        &format!("{B_OVERLAY}/24"),
        "dev",
        "ob",
    ]);
    // A raw socket sees the bytes the sender wrote: the kernels must finish checksums and
    // segment in software, not leave them to an offload that never happens.
    for (ns, dev) in [(&a, "ua"), (&a, "vx0"), (&b, "ob")] {
        run(&in_ns(ns, &["ethtool", "-K", dev, "tx", "off"]));
    }
    for (ns, dev) in [(&a, "ua"), (&a, "vx0"), (&g, "ug"), (&g, "og"), (&b, "ob")] {
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }

    // The gateway, bridging og into VNI 42 towards a's vx0.
    let mut gw = Command::new("ip")
        .args(["netns", "exec", &g, env!("CARGO_BIN_EXE_vxlan-gateway")])
        .args(["--io", io, "--underlay", "ug", "--overlay", "og"])
        .args(["--local", G_UNDERLAY, "--remote", A_UNDERLAY])
        .args([
            "--remote-mac",
            A_UNDERLAY_MAC,
            "--vni",
            VNI,
            "--udp-checksum",
        ])
        .args(["--duration", CHILD_LIFETIME_SECS])
        .args(["--metrics", "127.0.0.1:9464"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start vxlan-gateway");
    let stdout = gw.stdout.take().unwrap();
    let gw_pid = gw.id().to_string();
    lab.base.children.push(gw);
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // A line per port first says which I/O it runs on.
    let ready = std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(10)).ok())
        .inspect(|l| println!("{l}"))
        .find(|l| l.starts_with("vxlan-gateway: ready"))
        .expect("vxlan-gateway did not get ready (see its stderr)");
    assert!(ready.starts_with("vxlan-gateway: ready"), "{ready}");
    lab.gateway = Some(Gateway { pid: gw_pid, lines });

    // Ping both ways, small and full-size (1472 + 8 + 20 = 1500 bytes, DF set).
    let mut report = Vec::new();
    for (from, to) in [(&a, B_OVERLAY), (&b, A_OVERLAY)] {
        report.push(format!("ping {from} -> {to}: {}", ping(from, to, &[])));
        report.push(format!(
            "ping -s 1472 -M do {from} -> {to}: {}",
            ping(from, to, &["-s", "1472", "-M", "do"])
        ));
    }

    // TCP both ways: each side serves the blob, the other downloads it.
    let dir = lab.base.dir.to_path_buf();
    let want = blob();
    std::fs::write(dir.join("blob"), &want).unwrap();
    let d = dir.to_str().unwrap();
    start_http_server(&mut lab, &b, B_OVERLAY, d);
    start_http_server(&mut lab, &a, A_OVERLAY, d);
    for (from, server) in [(&a, B_OVERLAY), (&b, A_OVERLAY)] {
        report.push(format!(
            "curl {from} <- {server}: {}",
            download(from, server, &dir, &want)
        ));
    }

    // The kernels verified every checksum we wrote (inner TCP/ICMP, outer UDP) and found none bad.
    for ns in [&a, &b] {
        for proto in ["Tcp", "Udp"] {
            assert_eq!(snmp(ns, proto, "InCsumErrors"), 0, "{proto} in {ns}");
        }
    }

    // The underlay interface goes down and comes back twice during an iperf3 TCP run: the
    // gateway waits for it (no panic, no exit), the transfer completes and pings pass after.
    let iperf_server = Command::new("ip")
        .args(["netns", "exec", &b, "iperf3", "-s", "-1", "-p", "5299"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iperf3 -s");
    lab.base.children.push(iperf_server);
    std::thread::sleep(Duration::from_millis(300));
    let client = Command::new("ip")
        .args([
            "netns", "exec", &a, "iperf3", "-c", B_OVERLAY, "-p", "5299", "-t", "4",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iperf3 -c");
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1000));
        run(&["ip", "-n", &g, "link", "set", "ug", "down"]);
        std::thread::sleep(Duration::from_millis(300));
        run(&["ip", "-n", &g, "link", "set", "ug", "up"]);
    }
    let iperf = client.wait_with_output().expect("iperf3 -c");
    let iperf_out = String::from_utf8_lossy(&iperf.stdout);
    assert!(
        iperf.status.success(),
        "iperf3 across two underlay flaps: {iperf_out}{}",
        String::from_utf8_lossy(&iperf.stderr)
    );
    report.push(format!(
        "iperf3 a -> b across two underlay flaps: {}",
        iperf_out
            .lines()
            .find(|l| l.contains("receiver"))
            .unwrap_or("")
            .trim()
    ));
    report.push(format!(
        "ping a -> b after the flaps: {}",
        ping(&a, B_OVERLAY, &[])
    ));

    // Its Prometheus endpoint, scraped in its namespace while it runs (as `curl` would).
    let exposition = run(&in_ns(
        &g,
        &[
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:9464/metrics",
        ],
    ));
    assert!(
        exposition.contains("# TYPE nf_stage_counter untyped")
            && exposition.contains("stage=\"tunnel_decap\",counter=\"packets\"}"),
        "{exposition}"
    );
    // Stop the gateway with SIGTERM and read its counters.
    let (out, exited) = lab.gateway.take().unwrap().stop();
    assert!(exited, "vxlan-gateway did not exit on SIGTERM: {out:?}");
    let mut counters = BTreeMap::new();
    for line in &out {
        println!("  {line}");
        let mut f = line.split_whitespace();
        if let (Some(k), Some(v), None) = (f.next(), f.next(), f.next())
            && let Ok(v) = v.parse::<u64>()
        {
            counters.insert(k.to_string(), v);
        }
    }
    let c = |k: &str| *counters.get(k).unwrap_or_else(|| panic!("no counter {k}"));
    // A 1 MiB download is at least 1 MiB / 1448 = 725 full-size segments each way.
    assert!(c("tunnel_decap.packets") >= 725, "{counters:?}");
    assert!(c("tunnel_encap.packets") >= 725, "{counters:?}");
    assert_eq!(c("tunnel_decap.drops"), 0, "{counters:?}");
    assert_eq!(c("tunnel_encap.drops"), 0, "{counters:?}");
    assert_eq!(c("overlay.too_big"), 0, "{counters:?}");
    assert_eq!(c("overlay.tx"), c("tunnel_decap.packets"), "{counters:?}");
    assert_eq!(
        c("underlay.tx"),
        c("tunnel_encap.packets") + c("underlay.arp_replies"),
        "{counters:?}"
    );
    // PACKET_MMAP: the kernel reports each outage on the receive socket. AF_XDP: the port
    // counts each outage in which it had frames to send (the replies' ACKs, usually).
    if io == "packet" {
        assert_eq!(c("underlay.link_down"), 2, "{counters:?}");
    } else {
        assert!(c("underlay.link_down") <= 2, "{counters:?}");
    }
    assert!(
        c("underlay.arp_replies") >= 1,
        "the kernel resolved the gateway's underlay address: {counters:?}"
    );

    println!(
        "--- kernel VXLAN interop, gateway on --io {io} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    for line in &report {
        println!("{line}");
    }
}
