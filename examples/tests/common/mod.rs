//! Helpers shared by the tests that use external peers (tshark, scapy, the kernel).
#![expect(
    dead_code,
    reason = "each test binary uses a different subset of these shared helpers"
)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// The shared test data folder (`shared/` beside the checkout, or `$NF_SHARED_DIR`).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("NF_SHARED_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")),
        PathBuf::from,
    )
}

/// True when running under CI, where a missing peer tool is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks that `cmd --version`-style probing works; under CI a missing tool panics, elsewhere
/// the caller skips with a message.
pub fn require(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if in_ci() {
            panic!("{tool} is required under CI=true but is not runnable; .ci/run installs it");
        }
        eprintln!("SKIP: {tool} not available (set CI=true to make this a failure)");
    }
    ok
}

/// True when the test runs as root (network namespaces, raw sockets).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// Debian's python3 (where python3-scapy lives), not a pyenv shim on PATH.
pub fn system_python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A fresh temporary directory for this test run, removed when the guard drops (also when the
/// test panics). Set `NF_KEEP_TEST_DIRS=1` to keep it for a look afterwards.
pub fn temp_dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("nf-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// See [`temp_dir`]; derefs to its path.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("NF_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {}", self.0.display());
        }
    }
}

/// A scapy case table: rows (name, expected outcome) and the frames, in order.
pub type ScapyCases = (Vec<(String, String)>, Vec<Vec<u8>>);

/// Runs a scapy case script (`script OUT_DIR` writing `cases.pcap` and `cases.tsv`) and
/// returns its rows (name, expected outcome) and frames, in order; `None` (skipped) when
/// scapy is missing outside CI.
pub fn scapy_cases(script: &str, tag: &str) -> Option<ScapyCases> {
    let py = system_python();
    if !require(py, &["-c", "import scapy.all"]) {
        return None;
    }
    let dir = temp_dir(tag);
    let out = Command::new(py).arg(script).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "scapy script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::fs::read_to_string(dir.join("cases.tsv")).unwrap();
    let frames = nf_examples::pcap::read_file(dir.join("cases.pcap"))
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect::<Vec<_>>();
    let _ = std::fs::remove_dir_all(&dir);
    let rows: Vec<(String, String)> = table
        .lines()
        .map(|l| l.split_once('\t').unwrap())
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(rows.len(), frames.len());
    Some((rows, frames))
}

/// Wireshark's expert severity of a warning (`PI_WARN`): a frame of ours with expert info at
/// this level or above fails the tests.
pub const PI_WARN: u64 = 0x0060_0000;

/// Asserts that tshark dissected frame `i` (`row`, with `_ws.malformed` and
/// `_ws.expert.severity`) as well formed and without expert info at warning level or above.
/// Severities print in hexadecimal or decimal, depending on the tshark version.
pub fn assert_dissected_clean(i: usize, row: &TsharkRow) {
    assert!(
        row["_ws.malformed"].is_empty(),
        "frame {i}: malformed: {row:?}"
    );
    for s in &row["_ws.expert.severity"] {
        let sev = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => s.parse().unwrap(),
        };
        assert!(sev < PI_WARN, "frame {i}: expert severity {s}: {row:?}");
    }
}

/// Writes the Ethernet `frames` to `NAME.pcap` in a fresh temporary directory and has tshark
/// dissect them ([`tshark_rows`] of `fields`, which must include `_ws.malformed` and
/// `_ws.expert.severity`): `-n`, IPv4, UDP and TCP checksums validated, TCP sequence
/// analysis off (a test's segments are not a real conversation, and the analysis would
/// comment on that rather than on the frames), the `disabled` protocols off (a payload that
/// the ports suggest is TLS but is not). Every frame is asserted clean
/// ([`assert_dissected_clean`]).
pub fn dissect_clean(
    name: &str,
    frames: &[&[u8]],
    disabled: &[&str],
    fields: &[&'static str],
) -> Vec<TsharkRow> {
    use nf_examples::pcap::{CaptureWriter, Format, LINKTYPE_ETHERNET};
    let dir = temp_dir(name);
    let path = dir.join(format!("{name}.pcap"));
    let mut w = CaptureWriter::new(std::fs::File::create(&path).unwrap(), Format::Pcap).unwrap();
    for f in frames {
        w.write(0, LINKTYPE_ETHERNET, f, None).unwrap();
    }
    drop(w);
    let mut args = vec!["-n"];
    for p in [
        "ip.check_checksum:TRUE",
        "udp.check_checksum:TRUE",
        "tcp.check_checksum:TRUE",
        "tcp.analyze_sequence_numbers:FALSE",
    ] {
        args.extend(["-o", p]);
    }
    for p in disabled {
        args.extend(["--disable-protocol", p]);
    }
    let rows = tshark_rows(&path, &args, fields);
    for (i, r) in rows.iter().enumerate() {
        assert_dissected_clean(i, r);
    }
    rows
}

/// One frame as `tshark -T fields` prints it: field → its occurrences, outermost first.
pub type TsharkRow = HashMap<&'static str, Vec<String>>;

/// Runs `tshark -r path ARGS -T fields` with every occurrence of each of `fields` and
/// returns one row per frame.
pub fn tshark_rows(path: &Path, args: &[&str], fields: &[&'static str]) -> Vec<TsharkRow> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(path).args(args);
    cmd.args(["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    assert!(
        out.status.success(),
        "tshark on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            fields
                .iter()
                .zip(l.split('\t'))
                .map(|(f, v)| {
                    let vals = if v.is_empty() {
                        Vec::new()
                    } else {
                        v.split('|').map(str::to_string).collect()
                    };
                    (*f, vals)
                })
                .collect()
        })
        .collect()
}

/// Runs a bash script that must succeed; its stdout.
pub fn sh(script: &str) -> String {
    let o = Command::new("bash")
        .args(["-euc", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `GET http://127.0.0.1:PORT/metrics` from inside namespace `ns` (curl): the exposition a
/// program's `--metrics 127.0.0.1:PORT` serves there.
pub fn scrape(ns: &str, port: u16) -> String {
    sh(&format!(
        "ip netns exec {ns} curl -sf --max-time 5 http://127.0.0.1:{port}/metrics"
    ))
}

/// The value of sample `nf_stage_counter` (or, for a `drop_` counter,
/// `nf_stage_drops_total`) of `stage` and `counter` in `exposition`, summed over positions.
pub fn metric(exposition: &str, stage: &str, counter: &str) -> Option<u64> {
    let want = match counter.strip_prefix("drop_") {
        Some(reason) => format!(",stage=\"{stage}\",reason=\"{reason}\"}} "),
        None => format!(",stage=\"{stage}\",counter=\"{counter}\"}} "),
    };
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&want))
        .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Pings `dst` from namespace `ns` `count` times (0.2 s apart, 1 s each at most): how many
/// answers came.
pub fn pings(ns: &str, dst: &str, count: u32) -> u32 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-c", &count.to_string()])
        .args(["-i", "0.2", "-W", "1", dst])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.split(", ")
                .nth(1)?
                .strip_suffix(" received")?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A child's stdout and stderr, line by line (taken from the child).
pub fn lines_of(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Waits up to `secs` for a line containing `what`, keeping every line in `seen`.
pub fn wait_for(lines: &Receiver<String>, what: &str, secs: u64, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                let found = l.contains(what);
                seen.push(l);
                if found {
                    return;
                }
            }
            Err(_) => panic!("never saw {what:?}; output:\n{}", seen.join("\n")),
        }
    }
}

/// The `name value` lines among `seen`, as a map.
pub fn counters(seen: &[String]) -> BTreeMap<String, u64> {
    seen.iter()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A namespace lab: its namespaces, the processes started in them and a scratch folder, all
/// removed on drop (also when the test panics).
pub struct Lab {
    pub namespaces: Vec<String>,
    pub children: Vec<Child>,
    /// Removed after the children are gone and the namespaces deleted (fields drop after
    /// `Drop::drop`).
    pub dir: TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Lab {
    /// Starts `argv` in namespace `ns`, output discarded; killed when the lab goes.
    pub fn spawn(&mut self, ns: &str, argv: &[&str]) {
        let c = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a process in a namespace");
        self.children.push(c);
    }

    /// Starts `cmd` (stdin closed) with its stdout and stderr read line by line; killed when
    /// the lab goes. Its lines and its pid.
    pub fn spawn_watched(&mut self, cmd: &mut Command) -> (Receiver<String>, u32) {
        let mut c = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a watched process");
        let lines = lines_of(&mut c);
        let pid = c.id();
        self.children.push(c);
        (lines, pid)
    }
}

/// Sends a 1,500-byte UDP datagram with DF to ADDR:PORT, then (half a second later)
/// prints the path MTU the kernel holds for it (`mtu N`).
pub const DF_DATAGRAMS: &str = "import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER: IP_PMTUDISC_DO
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b'x' * 1472)
time.sleep(0.5)
try:
    s.send(b'x' * 1472)
except OSError as e:
    print('send', e.errno)
print('mtu', s.getsockopt(socket.IPPROTO_IP, 14), flush=True)  # IP_MTU";

/// A UDP echo server (`python3 -c UDP_ECHO ADDR PORT`): every datagram back to its sender;
/// prints `echo ready` once bound.
pub const UDP_ECHO: &str = "import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('echo ready', flush=True)
while True:
    d, a = s.recvfrom(65535)
    s.sendto(d, a)
";

/// `python3 -c REVERSED_FRAGMENTS N SRC DST DPORT` (scapy): `N` UDP datagrams of 3,000 bytes
/// from `SRC`:40000 to `DST`:`DPORT`, each sent as three fragments in reverse order (the
/// last first) through a raw socket, from the port a UDP socket is bound to; prints
/// `echoed K`, the echoes that came back whole.
pub const REVERSED_FRAGMENTS: &str = "import socket, sys
from scapy.all import IP, UDP, Raw, fragment, send, conf
conf.verb = 0
n, src, dst, dport = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 40000))
s.settimeout(2)
back = 0
for k in range(n):
    body = bytes([k]) * 3000
    pkt = IP(src=src, dst=dst, id=4000 + k) / UDP(sport=40000, dport=dport) / Raw(body)
    frags = fragment(pkt, fragsize=1200)
    assert len(frags) == 3
    send(frags[::-1])
    try:
        d, _ = s.recvfrom(65535)
        back += d == body
    except socket.timeout:
        pass
print('echoed', back, flush=True)
";

/// `python3 -c SCRIPT` (Debian's python3) in namespace `ns`; arguments to be added.
/// The system python running `script` in namespace `ns` (arguments to add).
pub fn python_in(ns: &str, script: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, system_python(), "-c", script]);
    c
}

/// Runs [`REVERSED_FRAGMENTS`] in namespace `ns` (`n` datagrams from `src` to `dst`:7007) and
/// returns what it printed; fails the test if the script fails.
pub fn send_reversed_fragments(ns: &str, n: u32, src: &str, dst: &str) -> String {
    let out = python_in(ns, REVERSED_FRAGMENTS)
        .args([&n.to_string(), src, dst, "7007"])
        .output()
        .expect("run the fragment sender");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// What a `FragmentReorder` in front of connection tracking shows after
/// [`send_reversed_fragments`] of `n` datagrams: all `n` echoed whole, the two later
/// fragments of each held until their first came and then released (none expired), and
/// related to the datagram's session.
pub fn assert_reordered(said: &str, n: u32, c: &BTreeMap<String, u64>, seen: &[String]) {
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    assert!(
        said.contains(&format!("echoed {n}")),
        "{said}\n{}",
        seen.join("\n")
    );
    assert!(
        get("fragment_reorder.later_fragments_held") >= 2 * u64::from(n),
        "{c:?}"
    );
    assert_eq!(
        get("fragment_reorder.later_fragments_released"),
        get("fragment_reorder.later_fragments_held"),
        "{c:?}"
    );
    assert_eq!(get("fragment_reorder.later_fragments_expired"), 0, "{c:?}");
    assert!(get("conntrack.related") >= 2 * u64::from(n), "{c:?}");
}

impl Lab {
    /// Starts [`UDP_ECHO`] on `addr`:7007 in namespace `ns` (killed with the lab) and waits
    /// until it is bound.
    pub fn udp_echo(&mut self, ns: &str, addr: &str) {
        let (lines, _) = self.spawn_watched(python_in(ns, UDP_ECHO).args([addr, "7007"]));
        wait_for(&lines, "echo ready", 10, &mut Vec::new());
    }
}

/// Runs test `test` of the calling test binary again inside a fresh network namespace
/// (`ip netns exec NS <this binary>`, with `child_env` set) that holds one veth pair
/// `veths`, both ends up and without IPv6 (nothing but the test's frames on the wire); the
/// namespace is removed afterwards, also on failure. Returns the inner run's output, which
/// must contain `done` (its last line when it finished).
///
/// # Panics
/// A setup step failed, or the inner run failed or did not print `done`.
pub fn rerun_in_veth_namespace(
    prefix: &str,
    veths: (&str, &str),
    test: &str,
    child_env: &str,
    done: &str,
) -> String {
    let ns = format!("{prefix}-{}", std::process::id());
    let ip = |args: &[&str]| {
        let o = Command::new("ip").args(args).output().expect("ip");
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ip(&["netns", "add", &ns]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    ip(&[
        "-n", &ns, "link", "add", veths.0, "type", "veth", "peer", "name", veths.1,
    ]);
    for dev in [veths.0, veths.1] {
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "sysctl", "-qw"])
            .arg(format!("net.ipv6.conf.{dev}.disable_ipv6=1"))
            .status();
        ip(&["-n", &ns, "link", "set", dev, "up"]);
    }
    let exe = std::env::current_exe().expect("this test binary");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args(["--exact", test, "--nocapture"])
        .env(child_env, "1")
        .output()
        .expect("ip netns exec");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the run inside {ns} failed:\n{text}");
    assert!(
        text.contains(done),
        "the run inside {ns} did not finish:\n{text}"
    );
    text
}

/// An EtherType for local experiments (IEEE 802 "local experimental 1"): the frames of
/// [`seq_frame`].
pub const LOCAL_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A numbered test frame: broadcast, [`LOCAL_ETHERTYPE`], sequence number `seq`, then
/// bytes derived from it, `len` bytes in all (18 at least).
pub fn seq_frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 0xaa]);
    f.extend_from_slice(&LOCAL_ETHERTYPE);
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = u64::from(seq) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.push(x as u8);
    }
    f
}

/// The sequence number of a [`seq_frame`]; `None` for other frames.
pub fn seq_of(f: &[u8]) -> Option<u32> {
    let seq = f.get(14..18)?;
    (f.get(12..14) == Some(&LOCAL_ETHERTYPE[..]))
        .then(|| u32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]]))
}

/// The length the ring tests give frame `seq`: 60 to 1459 bytes, varying.
pub fn seq_frame_len(seq: u32) -> usize {
    60 + (seq as usize * 37) % 1400
}

/// Answers every line it reads on a TCP connection with NAME, or with `-` for a name the
/// address and port the connection came from (`ANSWER_SERVER ADDR PORT NAME`).
pub const ANSWER_SERVER: &str = "import socket, socketserver, sys
class H(socketserver.StreamRequestHandler):
    def handle(self):
        name = sys.argv[3] if sys.argv[3] != '-' else '%s:%d' % self.client_address[:2]
        for _ in self.rfile:
            self.wfile.write(name.encode() + b'\\n')
            self.wfile.flush()
class S(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
    allow_reuse_address = True
    daemon_threads = True
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()";

/// Opens N connections to HOST:PORT and prints `open` and each one's first answer; then,
/// for every line on stdin, asks on every connection ROUNDS times (50 ms apart, waiting
/// WAIT seconds at most for each answer) and prints `results` and, per connection, its
/// answers joined by commas (`reset`, `closed` or `timeout` ending one).
const ASKING_CLIENT: &str = "import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
n, rounds, wait = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
socks = [socket.create_connection((host, port), timeout=wait) for _ in range(n)]
def ask(s):
    s.sendall(b'?\\n')
    d = b''
    while not d.endswith(b'\\n'):
        x = s.recv(100)
        if not x:
            return 'closed'
        d += x
    return d.decode().strip()
print('open', *[ask(s) for s in socks], flush=True)
for _ in sys.stdin:
    res = [[] for _ in socks]
    for r in range(rounds):
        for i, s in enumerate(socks):
            if res[i] and res[i][-1] in ('reset', 'closed', 'timeout'):
                continue
            try:
                res[i].append(ask(s))
            except ConnectionResetError:
                res[i].append('reset')
            except OSError:
                res[i].append('timeout')
        time.sleep(0.05)
    print('results', *[','.join(x) for x in res], flush=True)";

/// A client's TCP connections to one server (each asked in rounds, [`ANSWER_SERVER`]'s
/// answers collected), run from a namespace.
pub struct AskingClient {
    child: Child,
    stdin: std::process::ChildStdin,
    out: Receiver<String>,
    seen: Vec<String>,
    /// Each connection's first answer.
    pub first: Vec<String>,
}

impl AskingClient {
    /// Opens `n` connections from namespace `ns` to `to` (`ADDR:PORT`), each asked
    /// `rounds` times per [`Self::round`] and waiting `wait` seconds at most for an answer.
    pub fn open(ns: &str, to: &str, n: usize, rounds: usize, wait: f64) -> Self {
        let (host, port) = to.rsplit_once(':').expect("ADDR:PORT");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, system_python(), "-c", ASKING_CLIENT])
            .args([host, port])
            .args([n.to_string(), rounds.to_string(), wait.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the asking client");
        let stdin = child.stdin.take().expect("the client's stdin");
        let out = lines_of(&mut child);
        let mut seen = Vec::new();
        wait_for(&out, "open", 30, &mut seen);
        let first: Vec<String> = seen
            .last()
            .map(|l| l.split_whitespace())
            .expect("the open line")
            .skip(1)
            .map(String::from)
            .collect();
        assert_eq!(first.len(), n, "{seen:?}");
        Self {
            child,
            stdin,
            out,
            seen,
            first,
        }
    }

    /// One round of asking on every connection: each connection's answers.
    pub fn round(&mut self) -> Vec<Vec<String>> {
        use std::io::Write as _;
        self.stdin.write_all(b"go\n").expect("ask the client");
        wait_for(&self.out, "results", 60, &mut self.seen);
        self.seen
            .last()
            .map(|l| l.split_whitespace())
            .expect("the results line")
            .skip(1)
            .map(|c| c.split(',').map(String::from).collect())
            .collect()
    }

    /// Closes the connections (the client ends).
    pub fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

/// Every connection answered every one of `rounds` rounds with its first answer (the same
/// backend, the same address).
pub fn assert_kept(what: &str, first: &[String], results: &[Vec<String>], rounds: usize) {
    assert_eq!(results.len(), first.len(), "{what}: {results:?}");
    for (i, (b, answers)) in first.iter().zip(results).enumerate() {
        assert!(
            answers.len() == rounds && answers.iter().all(|a| a == b),
            "{what}: connection {i} began with {b}, then answered {answers:?}"
        );
    }
}

/// The BGP sessions' TCP MD5 key in [`Lab::bird_router`]'s BIRD.
pub const BGP_PASSWORD: &str = "nf fleet test";
/// The BFD sessions' key (Meticulous Keyed SHA1, ID 1) in [`Lab::bird_router`]'s BIRD.
pub const BFD_KEY: &str = "nf fleet bfd key";

/// Writes the fleet's BGP password and BFD key files into `dir`: their paths.
pub fn fleet_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let (bgp, bfd) = (dir.join("bgp.password"), dir.join("bfd.key"));
    std::fs::write(&bgp, format!("{BGP_PASSWORD}\n")).expect("write the BGP password");
    std::fs::write(&bfd, format!("{BFD_KEY}\n")).expect("write the BFD key");
    (bgp, bfd)
}

impl Lab {
    /// Starts BIRD in namespace `ns` as the router in front of a fleet: passive BGP sessions
    /// (AS 65000; hold time 3 s, keepalives every second, TCP MD5 [`BGP_PASSWORD`], BFD on
    /// the interfaces matching `bfd`: 200 ms apart, three missed, Meticulous Keyed SHA1
    /// under [`BFD_KEY`]) with every node of
    /// `neighbors` (AS 65001), their routes' next hops resolved over the links `direct`
    /// and merged into multipath kernel routes.
    pub fn bird_router(&mut self, ns: &str, neighbors: &[&str], direct: &[&str], bfd: &str) {
        self.bird_router_with(ns, neighbors, direct, bfd, false);
    }

    /// [`Self::bird_router`], and with `v6` IPv6 unicast too over the same sessions
    /// (multiprotocol BGP, RFC 4760): the nodes' IPv6 routes, their next hops on the links
    /// `direct`, merged into multipath kernel routes as well (IPv6 must be on in `ns`).
    pub fn bird_router_with(
        &mut self,
        ns: &str,
        neighbors: &[&str],
        direct: &[&str],
        bfd: &str,
        v6: bool,
    ) {
        let direct: Vec<String> = direct.iter().map(|d| format!("\"{d}\"")).collect();
        let (direct6, kernel6, channel6) = if v6 {
            (
                " ipv6;",
                "protocol kernel k6 {\n  ipv6 { export where source = RTS_BGP; };\n  merge paths on;\n}\n",
                "  ipv6 { import all; export none; gateway recursive; igp table master6; };\n",
            )
        } else {
            ("", "", "")
        };
        let mut conf = format!(
            "router id 10.255.0.1;
protocol device {{ scan time 1; }}
protocol direct {{ ipv4;{direct6} interface {}; }}
protocol kernel {{
  ipv4 {{ export where source = RTS_BGP; }};
  merge paths on;
}}
{kernel6}template bgp node {{
  local as 65000;
  passive on;
  hold time 3;
  keepalive time 1;
  password \"{BGP_PASSWORD}\";
  bfd on;
  ipv4 {{ import all; export none; gateway recursive; igp table master4; }};
{channel6}}}
protocol bfd {{
  interface \"{bfd}\" {{
    min rx interval 200 ms; min tx interval 100 ms; multiplier 3;
    authentication meticulous keyed sha1; password \"{BFD_KEY}\";
  }};
}}
",
            direct.join(", ")
        );
        for (i, n) in neighbors.iter().enumerate() {
            conf += &format!(
                "protocol bgp n{} from node {{ neighbor {n} as 65001; }}\n",
                i + 1
            );
        }
        let path = self.dir.join("bird.conf");
        std::fs::write(&path, conf).expect("write bird.conf");
        let ctl = self.dir.join("bird.ctl");
        let (path, ctl) = (path.display().to_string(), ctl.display().to_string());
        self.spawn(ns, &["bird", "-f", "-c", &path, "-s", &ctl]);
    }
}

/// Waits (15 s at most) until namespace `r`'s kernel route to `to` goes via exactly `hops`.
pub fn wait_route(r: &str, to: &str, hops: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let family = if to.contains(':') { "-6" } else { "-4" };
        let route = sh(&format!("ip -n {r} {family} route show {to}"));
        let via: Vec<&str> = route
            .split_whitespace()
            .zip(route.split_whitespace().skip(1))
            .filter(|(w, _)| *w == "via")
            .map(|(_, a)| a)
            .collect();
        if via == hops {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the route to {to} never went via {hops:?}: {route:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
