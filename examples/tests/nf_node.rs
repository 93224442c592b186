//! `nf-node` between a Linux kernel VXLAN device and a host, in network namespaces these
//! tests make. The first lab, on two worker threads receiving on AF_XDP: pings pass through
//! connection tracking both ways; a new snapshot changes the VNI live (traffic stops, then
//! comes back with the next one); a corrupt file and a source that goes away change nothing;
//! the final counters say all of it. The second lab, on one worker running on the receive
//! loop's thread over `PACKET_MMAP` rings, sends UDP datagrams as fragments, the last
//! fragment first (scapy): the worker holds the later fragments until their first arrives,
//! and every datagram is echoed back whole.
#![cfg(target_os = "linux")]
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed setup step should fail the test"
)]

mod common;

use common::{counters, pings, sh, wait_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::Duration;

const NODE: &str = env!("CARGO_BIN_EXE_nf-node");

fn write_snapshot(dir: &Path, version: u64, vni: u32) {
    let cfg = dir.join(format!("config-{version}.txt"));
    std::fs::write(
        &cfg,
        format!(
            "# test node\nunderlay = ug\noverlay = og\nlocal = 192.0.2.2\nremote = 192.0.2.1\n\
             remote_mac = 02:00:00:00:00:01\nvni = {vni}\nsessions = 4096\n"
        ),
    )
    .unwrap();
    let out = Command::new(NODE)
        .args(["snapshot", &version.to_string()])
        .arg(&cfg)
        .arg(dir.join("snapshot.nfs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lab (`a`: kernel VTEP, `g`: the node's namespace, `b`: the host) with the node's
/// first snapshot (VNI 42) written, or `None` (with the skip said) without root or a tool.
fn lab(prefix: &str) -> Option<(common::Lab, [String; 3], PathBuf)> {
    if !common::is_root() {
        assert!(!common::in_ci(), "nf_node needs root under CI=true");
        eprintln!("SKIP: nf_node needs root (set CI=true to make this a failure)");
        return None;
    }
    if !(common::require("ip", &["-V"])
        && common::require("ping", &["-V"])
        && common::require("ethtool", &["--version"]))
    {
        return None;
    }
    let tag = format!("{prefix}{}", std::process::id());
    let (a, g, b) = (format!("{tag}a"), format!("{tag}g"), format!("{tag}b"));
    let lab = common::Lab {
        namespaces: vec![a.clone(), g.clone(), b.clone()],
        children: Vec::new(),
        dir: common::temp_dir(&format!("nf-node-{prefix}")),
    };
    sh(&format!(
        "for n in {a} {g} {b}; do ip netns add $n; ip netns exec $n sysctl -qw net.ipv6.conf.all.disable_ipv6=1; done
         ip -n {a} link add ua mtu 1550 address 02:00:00:00:00:01 type veth peer name ug mtu 1550 netns {g}
         ip -n {g} link add og type veth peer name ob netns {b}
         ip -n {a} addr add 192.0.2.1/24 dev ua
         ip -n {a} link add vx0 type vxlan id 42 remote 192.0.2.2 local 192.0.2.1 dstport 4789 dev ua
         ip -n {a} addr add 198.51.100.1/24 dev vx0
         ip -n {b} addr add 198.51.100.2/24 dev ob
         ip netns exec {a} ethtool -K ua tx off >/dev/null; ip netns exec {a} ethtool -K vx0 tx off >/dev/null
         ip netns exec {b} ethtool -K ob tx off >/dev/null
         for d in ua vx0; do ip -n {a} link set $d up; done
         for d in ug og; do ip -n {g} link set $d up; done
         ip -n {b} link set ob up"
    ));
    let dir = lab.dir.to_path_buf();
    write_snapshot(&dir, 1, 42);
    Some((lab, [a, g, b], dir))
}

/// Starts the node in namespace `g` on `workers` workers, receiving on `io` (`xdp` or
/// `packet`), and waits until it is ready; its output lines, its pid, and the lines seen so
/// far.
fn start_node(
    lab: &mut common::Lab,
    g: &str,
    dir: &Path,
    io: &str,
    workers: u16,
) -> (Receiver<String>, String, Vec<String>) {
    let n = workers.to_string();
    let (lines, pid) = lab.spawn_watched(
        Command::new("ip")
            .args(["netns", "exec", g, NODE, "--config"])
            .arg(dir)
            .args([
                "--workers",
                &n,
                "--pull-every",
                "0.1",
                "--stats-every",
                "1",
                "--duration",
                "60",
                "--io",
                io,
            ]),
    );
    let pid = pid.to_string();
    let mut seen = Vec::new();
    wait_for(
        &lines,
        &format!("nf-node: ready: {workers} workers, snapshot version 1"),
        10,
        &mut seen,
    );
    let on = if io == "xdp" {
        "AF_XDP"
    } else {
        "PACKET_MMAP rings"
    };
    let receives = seen
        .iter()
        .filter(|l| l.ends_with(&format!(": receives on {on}")))
        .count();
    assert_eq!(receives, 2, "both interfaces on {on}: {seen:?}");
    (lines, pid, seen)
}

/// Stops the node (SIGTERM) and returns every counter it printed, with the lines seen.
fn stop_node(
    lab: &mut common::Lab,
    lines: &Receiver<String>,
    pid: &str,
    mut seen: Vec<String>,
) -> (std::collections::BTreeMap<String, u64>, Vec<String>) {
    sh(&format!("kill -TERM {pid}"));
    let mut node = lab.children.pop().unwrap();
    let status = node.wait().unwrap();
    assert!(status.success(), "nf-node exit: {status}");
    std::thread::sleep(Duration::from_millis(200));
    seen.extend(lines.try_iter());
    (counters(&seen), seen)
}

#[test]
fn nf_node_carries_traffic_and_applies_snapshots_live() {
    let Some((mut lab, [a, g, b], dir)) = lab("nfn") else {
        return;
    };
    let (lines, pid, mut seen) = start_node(&mut lab, &g, &dir, "xdp", 2);

    // Through the node both ways.
    assert_eq!(pings(&a, "198.51.100.2", 3), 3, "a -> b with VNI 42");
    assert_eq!(pings(&b, "198.51.100.1", 3), 3, "b -> a with VNI 42");

    // VNI 43 live: the kernel still speaks 42, so nothing passes.
    write_snapshot(&dir, 2, 43);
    wait_for(&lines, "snapshot version 2 applied: VNI 43", 5, &mut seen);
    assert_eq!(
        pings(&a, "198.51.100.2", 2),
        0,
        "VNI 43: the kernel's VNI 42 is unknown now"
    );

    // A corrupt file (one bit flipped) changes nothing.
    write_snapshot(&dir, 9, 42);
    let mut file = std::fs::read(dir.join("snapshot.nfs")).unwrap();
    *file.last_mut().unwrap() ^= 1;
    std::fs::write(dir.join("snapshot.nfs"), file).unwrap();
    wait_for(&lines, "snapshot rejected, keeping version 2", 5, &mut seen);

    // Back to 42: traffic again.
    write_snapshot(&dir, 3, 42);
    wait_for(&lines, "snapshot version 3 applied: VNI 42", 5, &mut seen);
    assert_eq!(pings(&a, "198.51.100.2", 3), 3, "VNI 42 again");

    // The source goes away: the node keeps its last good snapshot and keeps forwarding.
    std::fs::remove_file(dir.join("snapshot.nfs")).unwrap();
    wait_for(&lines, "source down", 5, &mut seen);
    assert_eq!(
        pings(&b, "198.51.100.1", 3),
        3,
        "source down: still forwarding"
    );
    write_snapshot(&dir, 2, 43);
    wait_for(&lines, "older", 5, &mut seen);
    assert_eq!(
        pings(&a, "198.51.100.2", 3),
        3,
        "an older version is refused"
    );

    // Stop: every counter, summed over the workers.
    let (counters, seen) = stop_node(&mut lab, &lines, &pid, seen);
    let c = |k: &str| {
        *counters
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in:\n{}", seen.join("\n")))
    };
    assert_eq!(c("node.snapshot_version"), 3);
    assert!(
        c("snapshot.applied") == 3 && c("snapshot.rejected_corrupt") >= 1,
        "{counters:?}"
    );
    assert!(
        c("snapshot.rejected_source_down") >= 1 && c("snapshot.rejected_older") >= 1,
        "{counters:?}"
    );
    assert!(
        c("tunnel_decap.drop_tunnel_unknown_vni") >= 1,
        "{counters:?}"
    );
    // Echo sessions, created on the worker that owns each flow, found again by the replies.
    assert!(
        c("conntrack.created") >= 2 && c("conntrack.reply_hits") >= 12,
        "{counters:?}"
    );
    // 9 echo requests a -> b and 6 replies to b's requests left the tunnel; as many went in.
    assert!(
        c("worker.overlay_tx") >= 15 && c("worker.underlay_tx") >= 15,
        "{counters:?}"
    );
    assert_eq!(c("tunnel_encap.drops"), 0, "{counters:?}");
    assert!(c("node.arp_replies") >= 1, "{counters:?}");
    println!("{}", seen.join("\n"));
}

#[test]
fn nf_node_reorders_fragments_that_arrive_last_first() {
    let Some((mut lab, [a, g, b], dir)) = lab("nff") else {
        return;
    };
    if !common::require(common::system_python(), &["-c", "import scapy.all"]) {
        return;
    }
    lab.udp_echo(&b, "198.51.100.2");
    let (lines, pid, seen) = start_node(&mut lab, &g, &dir, "packet", 1);
    // The path works (and the VTEP knows the node's MAC) before the fragments go.
    assert_eq!(pings(&a, "198.51.100.2", 2), 2, "a -> b");
    const N: u32 = 10;
    let said = common::send_reversed_fragments(&a, N, "198.51.100.1", "198.51.100.2");
    // `stop_node` stops the last child started: the node (the echo server goes with the lab).
    let (c, seen) = stop_node(&mut lab, &lines, &pid, seen);
    // The two later fragments of each datagram waited for their first, on its worker.
    common::assert_reordered(&said, N, &c, &seen);
    println!("{said}");
}
