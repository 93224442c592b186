//! `nf-pcap` on every capture in `shared/testdata/pcap` (written by Open vSwitch, Linux,
//! Google Cloud), with the decap profile that fits each: `tshark` reads every output with
//! no malformed frame and no expert info of warning level or above, and the inner 5-tuple
//! of every output frame equals what `tshark -T fields` extracts from the innermost layers
//! of the input frame it came from (each output frame's comment names it). Also: decap →
//! conntrack and decap → encap pipelines, AWS GWLB traffic (scapy-built,
//! `examples/data/gwlb.pcap`) through decap → conntrack → reflect, source NAT and load
//! balancing on `examples/data/services.pcap` (every checksum validated by tshark), pcapng
//! input written by tshark, classic pcap output, and the command line's help and errors.

mod common;

use nf_examples::pcap::{LINKTYPE_ETHERNET, LINKTYPE_RAW};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_nf-pcap");

/// Every capture and the decap stage that fits it. GRE and VXLAN-GPE are not tunnels nf
/// decapsulates: the generic decap passes them through untouched, which is checked too.
const CASES: &[(&str, &str, &[&str])] = &[
    // Open vSwitch's critical option (class 0, type 0x80) must be understood, or dropped.
    ("geneve.pcap", "decap:geneve,option=0:0x80", &[]),
    ("geneve-gcp.pcap", "decap:gcp", &[]),
    ("gso-ipv4-geneve-ipv4.pcap", "decap:geneve", &[]),
    ("vxlan.pcap", "decap:vxlan", &[]),
    (
        "vxlan_port_8472.pcap",
        "decap:vxlan,port=8472",
        &["-d", "udp.port==8472,vxlan"],
    ),
    // Taken before checksum offload: its outer UDP checksum is a partial sum.
    (
        "gso-ipv6-vxlan-ipv6.pcap",
        "decap:vxlan,udp-checksum=ignore",
        &[],
    ),
    ("various_gre.pcap", "decap", &[]),
    ("nsh-over-vxlan-gpe.pcap", "decap", &[]),
];

const FIELDS: &[&str] = &[
    "frame.number",
    "frame.comment",
    "frame.protocols",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.nxt",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tcp.flags.syn",
    "tcp.flags.ack",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
];

/// Wireshark's expert severity of a warning (PI_WARN).
const PI_WARN: u64 = 0x0060_0000;

type Row = common::TsharkRow;

/// A shared capture, or one of `examples/data`.
fn capture(file: &str) -> PathBuf {
    let ours = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(file);
    if ours.exists() {
        return ours;
    }
    common::shared_dir().join("testdata/pcap").join(file)
}

/// One row per frame.
fn tshark_rows(path: &Path, extra: &[&str]) -> Vec<Row> {
    let mut args = vec!["-n"];
    args.extend(extra);
    // TCP sequence analysis warns about segments before the capture started, in the input
    // captures as much as in ours: it judges the traffic, not the encoding.
    args.extend(["-o", "tcp.analyze_sequence_numbers:FALSE"]);
    common::tshark_rows(path, &args, FIELDS)
}

/// The innermost 5-tuple tshark sees: the last IP layer of the protocol stack and, for TCP
/// and UDP, the last ports of that protocol.
fn inner_tuple(row: &Row) -> Option<String> {
    let stack = row["frame.protocols"].first()?;
    let last_ip = stack.split(':').rfind(|p| *p == "ip" || *p == "ipv6")?;
    let (src, dst, proto) = if last_ip == "ip" {
        ("ip.src", "ip.dst", "ip.proto")
    } else {
        ("ipv6.src", "ipv6.dst", "ipv6.nxt")
    };
    let last = |f: &str| row[f].last().cloned().unwrap_or_default();
    let p = last(proto);
    let ports = match p.as_str() {
        "6" => format!("{}:{}", last("tcp.srcport"), last("tcp.dstport")),
        "17" => format!("{}:{}", last("udp.srcport"), last("udp.dstport")),
        _ => String::new(),
    };
    Some(format!("{} {} {p} {ports}", last(src), last(dst)))
}

fn stack(row: &Row) -> &str {
    field(row, "frame.protocols")
}

/// The protocol stack after the last Geneve / VXLAN header (all of it without one).
fn payload_stack(row: &Row) -> &str {
    let s = stack(row);
    [":geneve:", ":vxlan:"]
        .iter()
        .filter_map(|t| s.rfind(t).map(|i| &s[i + t.len()..]))
        .min_by_key(|rest| rest.len())
        .unwrap_or(s)
}

fn tunnelled(row: &Row) -> bool {
    row["frame.protocols"]
        .first()
        .is_some_and(|s| s.split(':').any(|p| p == "geneve" || p == "vxlan"))
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nf-pcap {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `pipeline` on `input`, writing what passes to `out`; returns the report.
fn run_to(input: &Path, pipeline: &str, out: &Path) -> String {
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    String::from_utf8(run(&[i, "-p", pipeline, "-w", o]).stdout).unwrap()
}

/// The input frame number an output frame's comment names.
fn origin(row: &Row) -> usize {
    let c = row["frame.comment"]
        .first()
        .expect("a comment on every frame");
    let n = c.strip_prefix("nf-pcap: input frame ").expect(c);
    n.split(',').next().unwrap().parse().unwrap()
}

/// Asserts that tshark found a frame neither malformed nor worth an expert warning (or
/// worse: an error, such as a bad checksum when checksum validation is on).
fn assert_clean(row: &Row, ctx: &str) {
    assert!(row["_ws.malformed"].is_empty(), "{ctx}: malformed");
    for (sev, msg) in row["_ws.expert.severity"]
        .iter()
        .zip(&row["_ws.expert.message"])
    {
        assert!(sev.parse::<u64>().unwrap() < PI_WARN, "{ctx}: {msg}");
    }
}

/// What one pipeline did to one capture, checked against tshark.
struct Checked {
    frames: usize,
    decapsulated: usize,
    protocols: Vec<String>,
    path: PathBuf,
    /// The input frame numbers of the output frames, in order.
    origins: Vec<usize>,
    /// tshark's rows of the output frames.
    rows: Vec<Row>,
    /// nf-pcap's report (verdicts, counters, drops by reason).
    report: String,
}

/// Runs `pipeline` on `file`, checks the output with tshark against `inputs` (tshark's rows
/// of the input), and returns what came out.
fn check(file: &str, pipeline: &str, inputs: &[Row], out_dir: &Path) -> Checked {
    let input = capture(file);
    let out = out_dir.join(format!("{file}.{}.pcapng", out_name(pipeline)));
    let report = run_to(&input, pipeline, &out);
    let ctx = format!("{file} | {pipeline}");
    let outputs = tshark_rows(&out, &[]);
    let mut decapsulated = 0;
    for row in &outputs {
        let n = origin(row);
        let fctx = format!("{ctx}: output of input frame {n}");
        assert_clean(row, &fctx);
        let src = &inputs[n - 1];
        if inner_tuple(src).is_some() {
            assert_eq!(inner_tuple(row), inner_tuple(src), "{fctx}: inner 5-tuple");
        } else {
            // No IP inside (STP, CDP ...): the innermost frame is carried as it was.
            let (have, want) = (stack(row), payload_stack(src));
            assert!(
                have.ends_with(want),
                "{fctx}: {have} does not end in {want}"
            );
        }
        if tunnelled(src) && !tunnelled(row) {
            decapsulated += 1;
        }
    }
    Checked {
        frames: outputs.len(),
        decapsulated,
        protocols: outputs.iter().map(|r| stack(r).to_string()).collect(),
        path: out,
        origins: outputs.iter().map(origin).collect(),
        report,
        rows: outputs,
    }
}

/// True if tshark finds an IP packet inside the frame's last Geneve / VXLAN header.
fn carries_ip(row: &Row) -> bool {
    payload_stack(row)
        .split(':')
        .any(|p| p == "ip" || p == "ipv6")
}

/// What the first transport header of a frame (the one a stage after decap reads) says:
/// whether it is TCP that can open a session (a SYN without ACK), `None` for another
/// transport.
fn first_tcp_opens(row: &Row) -> Option<bool> {
    let first = stack(row)
        .split(':')
        .find(|p| matches!(*p, "tcp" | "udp" | "icmp" | "icmpv6"))?;
    let set = |f: &str| row[f].first().is_some_and(|v| v == "1" || v == "True");
    (first == "tcp").then(|| set("tcp.flags.syn") && !set("tcp.flags.ack"))
}

/// True if a frame's first IP packet goes from an address and port to themselves (its
/// reply key is its own).
fn self_addressed(row: &Row) -> bool {
    let first = |f: &str| row[f].first().cloned();
    let (src, dst) = match first("ip.src") {
        Some(s) => (Some(s), first("ip.dst")),
        None => (first("ipv6.src"), first("ipv6.dst")),
    };
    let ports = match first("udp.srcport") {
        Some(p) => (Some(p), first("udp.dstport")),
        None => (first("tcp.srcport"), first("tcp.dstport")),
    };
    src.is_some() && src == dst && ports.0 == ports.1
}

fn out_name(pipeline: &str) -> String {
    pipeline
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[test]
fn every_capture_through_its_decap_profile_matches_tshark() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let dir = common::shared_dir().join("testdata/pcap");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".pcap"))
        .collect();
    files.sort();
    let mut named: Vec<String> = CASES.iter().map(|c| c.0.to_string()).collect();
    named.sort();
    assert_eq!(files, named, "every capture needs a case here");

    let tmp = common::temp_dir("nf-pcap-captures");
    for (file, decap, decode_as) in CASES {
        let inputs = tshark_rows(&capture(file), decode_as);
        let total = inputs.len();
        let alone = check(file, decap, &inputs, &tmp);
        let tunnels = inputs.iter().filter(|r| tunnelled(r)).count();
        eprintln!(
            "{file} | {decap}: {} of {total} frames out, {} decapsulated ({tunnels} tunnelled)",
            alone.frames, alone.decapsulated
        );
        assert!(alone.frames > 0, "{file}: nothing came out");
        if tunnels == 0 {
            // Not a tunnel nf decapsulates: every frame passes untouched.
            assert_eq!(alone.frames, total, "{file}");
        } else {
            // Every tunnelled IP packet comes out decapsulated; a tunnelled frame carrying
            // something else (ARP) goes to the control path (`non_ip`'s default), and only
            // those are held back.
            let ip = inputs
                .iter()
                .filter(|r| tunnelled(r) && carries_ip(r))
                .count();
            assert!(ip > 0, "{file}: no tunnelled IP packet to check");
            assert_eq!(
                alone.decapsulated, ip,
                "{file}: tunnelled IP packets decapsulated"
            );
            assert_eq!(alone.frames, total - (tunnels - ip), "{file}: frames out");
            assert_eq!(
                counter(&alone.report, "tunnel_decap", "to_control"),
                (tunnels - ip) as u64,
                "{file}: non-IP inner frames to the control path\n{}",
                alone.report
            );
        }
        // Connection tracking after decap: the captures start mid-connection, and a tunnel
        // VNI is a zone (geneve.pcap carries each direction in a VNI of its own), so a TCP
        // segment other than a SYN may find no session (dropped as no_session); everything
        // else passes, keeping its inner 5-tuple.
        let tracked = format!("{decap} -> conntrack");
        let ct = check(file, &tracked, &inputs, &tmp);
        eprintln!("{file} | {tracked}: {} frames out", ct.frames);
        let held: Vec<usize> = alone
            .origins
            .iter()
            .copied()
            .filter(|n| !ct.origins.contains(n))
            .collect();
        for &n in &held {
            // The frame as conntrack saw it: decap's output.
            let seen = alone
                .origins
                .iter()
                .position(|&o| o == n)
                .map(|i| &alone.rows[i])
                .unwrap();
            assert!(
                first_tcp_opens(seen) == Some(false) || self_addressed(seen),
                "{file} | {tracked}: input frame {n} held back, and it could open a session"
            );
        }
        assert_eq!(ct.frames + held.len(), alone.frames, "{file} | {tracked}");
        // Dropped as no_session, as invalid_tcp_state for flags no session could start with
        // (geneve-gcp.pcap's one segment), or as session_key_conflict for a flow from an
        // address and port to themselves, whose reply key is its own (nsh-over-vxlan-gpe.pcap,
        // 127.0.0.1:4790 to itself).
        assert_eq!(
            counter(&ct.report, "conntrack", "drop_no_session")
                + counter(&ct.report, "conntrack", "drop_invalid_tcp_state")
                + counter(&ct.report, "conntrack", "drop_session_key_conflict"),
            held.len() as u64,
            "{file} | {tracked}: drops by reason\n{}",
            ct.report
        );
        // And re-encapsulated: the inner packet survives a VXLAN push intact (bare IP inner
        // packets get an Ethernet header first).
        let encap = format!("{decap} -> encap:vxlan,vni=7,src=10.0.0.1,dst=10.0.0.2,mtu=65000");
        let en = check(file, &encap, &inputs, &tmp);
        assert_eq!(en.frames, alone.frames, "{file}: encap dropped frames");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn gcp_bare_ip_inner_packets_are_written_as_raw_ip_and_re_encapsulated() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let tmp = common::temp_dir("nf-pcap-gcp");
    let input = capture("geneve-gcp.pcap");
    // Classic pcap output: one link type, here raw IP.
    let out = tmp.join("inner.pcap");
    run_to(&input, "decap:gcp", &out);
    let recs = nf_examples::pcap::read_file(&out).unwrap();
    assert!(recs.iter().all(|r| r.linktype == LINKTYPE_RAW), "{recs:?}");
    assert_eq!(recs.len(), 1);
    let rows = tshark_rows(&out, &[]);
    assert_eq!(rows.len(), recs.len());
    assert!(rows.iter().all(|r| stack(r) == "raw:ip:tcp"), "{rows:?}");
    // Raw IP input: each packet gets an Ethernet header, so parse reads it.
    let framed = tmp.join("framed.pcapng");
    let report = run_to(&out, "parse", &framed);
    assert!(report.contains("verdicts: 1 pass"), "{report}");
    let again = tshark_rows(&framed, &[]);
    assert_eq!(stack(&again[0]), "eth:ethertype:ip:tcp");
    assert_eq!(inner_tuple(&again[0]), inner_tuple(&rows[0]));
    // Geneve with a bare IP payload, over IPv6: tshark sees Geneve carrying IP.
    let inputs = tshark_rows(&input, &[]);
    let c = check(
        "geneve-gcp.pcap",
        "decap:gcp -> encap:geneve,vni=zone,src=2001:db8::1,dst=2001:db8::2,payload=ip",
        &inputs,
        &tmp,
    );
    assert_eq!(c.protocols, ["eth:ethertype:ipv6:udp:geneve:ip:tcp"]);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Decap leaves a bare IP inner packet (Geneve protocol 0x0800, what GWLB and GCP send)
/// parsed at offset 0 and marked `NO_L2`, so a parse stage after it reads it as IP again
/// (it used to re-read it as Ethernet and send it to the control path). (Not with
/// conntrack: the capture's one TCP packet is refused as `invalid_tcp_state`.)
#[test]
fn gcp_decap_then_parse() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let tmp = common::temp_dir("nf-pcap-gcp-parse");
    let inputs = tshark_rows(&capture("geneve-gcp.pcap"), &[]);
    let c = check("geneve-gcp.pcap", "decap:gcp -> parse", &inputs, &tmp);
    assert_eq!(c.frames, 1, "the inner packet passes parse");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The GWLB capture (`examples/data/gwlb.pcap`, written by scapy with
/// `make_gwlb_pcap.py` beside it) and tshark's rows of it; `None` (skipped) when tshark is
/// missing outside CI.
fn gwlb_capture() -> Option<(PathBuf, Vec<Row>)> {
    if !common::require("tshark", &["--version"]) {
        return None;
    }
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/gwlb.pcap"));
    let rows = tshark_rows(&path, &[]);
    Some((path, rows))
}

#[test]
fn gwlb_traffic_through_decap_conntrack_and_reflect() {
    let Some((input, inputs)) = gwlb_capture() else {
        return;
    };
    let tmp = common::temp_dir("nf-pcap-gwlb");
    let ctl = tmp.join("control.pcapng");
    let (i, c) = (input.to_str().unwrap(), ctl.to_str().unwrap());
    // The appliance's view: bare IP inner packets, every one tracked from its SYN on.
    let out = tmp.join("inner.pcapng");
    let report = String::from_utf8(
        run(&[
            i,
            "-p",
            "decap:gwlb -> conntrack",
            "-w",
            out.to_str().unwrap(),
            "--control",
            c,
        ])
        .stdout,
    )
    .unwrap();
    assert!(
        report.contains("verdicts: 8 pass, 0 tx, 1 to_control, 0 dropped"),
        "{report}"
    );
    assert!(
        report.contains("conntrack created                          2"),
        "{report}"
    );
    let recs = nf_examples::pcap::read_file(&out).unwrap();
    assert!(recs.iter().all(|r| r.linktype == LINKTYPE_RAW));
    let c = check("gwlb.pcap", "decap:gwlb -> conntrack", &inputs, &tmp);
    assert_eq!((c.frames, c.decapsulated), (8, 8));
    // The control message (O bit) goes to the control path as it came.
    let control = tshark_rows(&ctl, &[]);
    assert_eq!(control.len(), 1);
    assert_eq!(origin(&control[0]), 9);
    assert_eq!(stack(&control[0]), stack(&inputs[8]));

    // Back into the tunnel it came in: same options and VNI, outer addresses swapped.
    let back = check(
        "gwlb.pcap",
        "decap:gwlb -> conntrack -> reflect",
        &inputs,
        &tmp,
    );
    assert_eq!(back.frames, 8);
    let fields = [
        "frame.comment",
        "ip.src",
        "ip.dst",
        "geneve.option.class",
        "geneve.option.type",
        "geneve.option.unknown.data",
        "geneve.vni",
        "geneve.proto_type",
    ];
    let theirs = common::tshark_rows(&input, &[], &fields);
    for row in common::tshark_rows(&back.path, &[], &fields) {
        let n: usize = row["frame.comment"][0]
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let src = &theirs[n - 1];
        assert_eq!(
            row["ip.src"][0], src["ip.dst"][0],
            "frame {n}: outer source"
        );
        assert_eq!(
            row["ip.dst"][0], src["ip.src"][0],
            "frame {n}: outer destination"
        );
        assert_eq!(row["geneve.option.unknown.data"].len(), 3, "frame {n}");
        for f in &fields[3..] {
            assert_eq!(row[f], src[f], "frame {n}: {f}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// As [`gcp_decap_then_parse`], with GWLB's bare IPv4 and IPv6 payloads.
#[test]
fn gwlb_decap_then_parse_then_conntrack() {
    let Some((_, inputs)) = gwlb_capture() else {
        return;
    };
    let tmp = common::temp_dir("nf-pcap-gwlb-parse");
    let c = check(
        "gwlb.pcap",
        "decap:gwlb -> parse -> conntrack",
        &inputs,
        &tmp,
    );
    assert_eq!(c.frames, 8);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn pcapng_input_written_by_tshark_gives_the_same_output_as_pcap() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let tmp = common::temp_dir("nf-pcap-ng");
    for (file, decap, _) in CASES {
        let pcap = capture(file);
        let ng = tmp.join(format!("{file}ng"));
        let conv = Command::new("tshark")
            .arg("-r")
            .arg(&pcap)
            .args(["-F", "pcapng", "-w"])
            .arg(&ng)
            .output()
            .unwrap();
        assert!(
            conv.status.success(),
            "{}",
            String::from_utf8_lossy(&conv.stderr)
        );
        let mut outs = Vec::new();
        for (tag, input) in [("pcap", &pcap), ("pcapng", &ng)] {
            let out = tmp.join(format!("{file}.{tag}.out.pcapng"));
            let text = run_to(input, &format!("{decap} -> conntrack"), &out);
            // Everything but the lines naming the files must agree.
            let body: Vec<String> = text
                .lines()
                .skip(1)
                .filter(|l| !l.starts_with("output: "))
                .map(String::from)
                .collect();
            outs.push((body, nf_examples::pcap::read_file(&out).unwrap()));
        }
        assert_eq!(
            nf_examples::pcap::read_file(&ng).unwrap().len(),
            nf_examples::pcap::read_file(&pcap).unwrap().len()
        );
        let (a, b) = (&outs[0], &outs[1]);
        assert_eq!(a.0, b.0, "{file}: report");
        assert_eq!(a.1, b.1, "{file}: frames, times and link types");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn control_and_drop_files_carry_the_fate_in_a_comment() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let tmp = common::temp_dir("nf-pcap-fates");
    let (out, ctl, drops) = (
        tmp.join("out.pcapng"),
        tmp.join("ctl.pcapng"),
        tmp.join("drops.pcapng"),
    );
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo.pcap");
    let report = run(&[
        demo,
        "-w",
        out.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
        "--drops",
        drops.to_str().unwrap(),
    ]);
    let text = String::from_utf8(report.stdout).unwrap();
    assert!(text.contains("pipeline: parse -> conntrack"), "{text}");
    let count = |p: &Path| tshark_rows(p, &[]).len();
    let (o, c, d) = (count(&out), count(&ctl), count(&drops));
    assert!(
        text.contains(&format!(
            "verdicts: {o} pass, 0 tx, {c} to_control, {d} dropped"
        )),
        "{text}"
    );
    assert_eq!(o + c + d, nf_examples::pcap::read_file(demo).unwrap().len());
    let rows = tshark_rows(&drops, &[]);
    for row in &rows {
        let comment = &row["frame.comment"][0];
        assert!(comment.contains(", drop "), "{comment}");
    }
    assert!(text.contains("parse drop_ipv4_bad_checksum"), "{text}");
    let recs = nf_examples::pcap::read_file(&out).unwrap();
    assert!(recs.iter().all(|r| r.linktype == LINKTYPE_ETHERNET));
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn help_and_bad_arguments() {
    // --help into a pipe closed before it is read: no panic, success.
    let mut child = Command::new(BIN)
        .arg("--help")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let help = run(&["--help"]);
    let text = String::from_utf8(help.stdout).unwrap();
    for word in [
        "--pipeline",
        "decap[:PROFILE]",
        "gwlb",
        "encap:geneve|vxlan",
        "pcapng",
    ] {
        assert!(text.contains(word), "{word}");
    }
    let bad = Command::new(BIN)
        .args(["x.pcap", "-p", "decap:nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown decap profile"));
    let missing = Command::new(BIN).arg("/nonexistent.pcap").output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn the_readme_command_runs() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
    let readme = readme.unwrap();
    let pipeline = "decap:gwlb -> conntrack -> reflect";
    let command = format!(
        "--bin nf-pcap -- examples/data/gwlb.pcap \\\n    -p '{pipeline}' -w target/gwlb-out.pcapng \
         --control target/gwlb-control.pcapng"
    );
    assert!(readme.contains(&command), "README lost: {command}");
    let tmp = common::temp_dir("nf-pcap-readme");
    let (out, ctl) = (tmp.join("out.pcapng"), tmp.join("ctl.pcapng"));
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/gwlb.pcap");
    let report = run(&[
        data,
        "-p",
        pipeline,
        "-w",
        out.to_str().unwrap(),
        "--control",
        ctl.to_str().unwrap(),
    ]);
    let text = String::from_utf8(report.stdout).unwrap();
    assert!(
        text.contains("verdicts: 8 pass, 0 tx, 1 to_control, 0 dropped"),
        "{text}"
    );
    assert!(text.contains("(8 Ethernet, 0 bare IP)"), "{text}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Two decap stages (a tunnel inside a tunnel) report their counters apart.
#[test]
fn a_repeated_stage_reports_under_its_own_name() {
    let tmp = common::temp_dir("nf-pcap-twice");
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/gwlb.pcap");
    let report = run_to(
        &input,
        "decap:gwlb -> decap -> conntrack",
        &tmp.join("out.pcapng"),
    );
    assert!(report.contains("tunnel_decap packets"), "{report}");
    assert!(report.contains("tunnel_decap_2 packets"), "{report}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A capture with one datagram's fragments last first and another's later fragment without
/// its first: through `parse -> reorder -> conntrack` the first datagram comes out whole,
/// first fragment leading, each frame's comment naming its input frame, and the orphan
/// comes out as dropped at the end (`fragment_hold_expired`); without `reorder` conntrack
/// drops the fragments that came before their first (`fragment_no_session`).
#[test]
fn out_of_order_fragments_through_reorder() {
    use nf_core::wire::Frame;
    use nf_examples::pcap::{CaptureWriter, Format};
    let tmp = common::temp_dir("nf-pcap-reorder");
    let input = tmp.join("frags.pcap");
    let payload = [7u8; 1200];
    let mut a = Frame::ipv4([10, 0, 0, 1], [192, 0, 2, 10])
        .udp(5000, 53)
        .payload(&payload)
        .fragments(576, 1)
        .unwrap();
    assert_eq!(a.len(), 3);
    a.reverse();
    let b = Frame::ipv4([10, 0, 0, 2], [192, 0, 2, 10])
        .udp(5001, 53)
        .payload(&payload[..700])
        .fragments(576, 2)
        .unwrap();
    let mut w = CaptureWriter::new(std::fs::File::create(&input).unwrap(), Format::Pcap).unwrap();
    for (i, f) in a.iter().chain(&b[1..]).enumerate() {
        w.write(1_000_000_000 + i as u64 * 1000, LINKTYPE_ETHERNET, f, None)
            .unwrap();
    }
    w.finish().unwrap();

    let (out, drops) = (tmp.join("out.pcapng"), tmp.join("drops.pcapng"));
    let (i, o, d) = (
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        drops.to_str().unwrap(),
    );
    let report = run(&[
        i,
        "-p",
        "parse -> reorder -> conntrack",
        "-w",
        o,
        "--drops",
        d,
    ]);
    let text = String::from_utf8(report.stdout).unwrap();
    assert!(
        text.contains("verdicts: 3 pass, 0 tx, 0 to_control, 1 dropped"),
        "{text}"
    );
    assert!(text.contains("later_fragments_released"), "{text}");
    let passed = nf_examples::pcap::read_file(&out).unwrap();
    let frames: Vec<&[u8]> = passed.iter().map(|r| r.data.as_slice()).collect();
    assert_eq!(
        frames,
        [&a[2][..], &a[0][..], &a[1][..]],
        "first fragment leads"
    );
    let dropped = nf_examples::pcap::read_file(&drops).unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].data, b[1]);
    if common::require("tshark", &["--version"]) {
        // The comments name the input frames: the first fragment was input frame 3.
        let rows = tshark_rows(&out, &[]);
        let origins: Vec<usize> = rows.iter().map(origin).collect();
        assert_eq!(origins, [3, 1, 2]);
        let rows = tshark_rows(&drops, &[]);
        assert!(
            rows[0]["frame.comment"][0].contains("input frame 4, drop fragment_hold_expired"),
            "{:?}",
            rows[0]["frame.comment"]
        );
    }

    let report = run(&[i, "-p", "parse -> conntrack", "-w", o]);
    let text = String::from_utf8(report.stdout).unwrap();
    assert!(
        text.contains("verdicts: 1 pass, 0 tx, 0 to_control, 3 dropped"),
        "{text}"
    );
    assert!(text.contains("drop_fragment_no_session"), "{text}");
}

/// `services.pcap` (`examples/data`, scapy-built) through `pipeline`: the report, tshark's
/// rows of the output by input frame number, and tshark's rows of the dropped frames. Every
/// output frame is read with checksum validation on (a wrong IP, TCP, UDP or ICMP checksum
/// is expert info of error level) and must be neither malformed nor warned about.
fn services(pipeline: &str, tmp: &Path) -> (String, HashMap<usize, Row>, Vec<Row>) {
    let input = capture("services.pcap");
    let out = tmp.join(format!("{}.pcapng", out_name(pipeline)));
    let drops = tmp.join(format!("{}.drops.pcapng", out_name(pipeline)));
    let report = run(&[
        input.to_str().unwrap(),
        "-p",
        pipeline,
        "-w",
        out.to_str().unwrap(),
        "--drops",
        drops.to_str().unwrap(),
    ]);
    let checks = [
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
    ];
    let mut rows = HashMap::new();
    for row in tshark_rows(&out, &checks) {
        let n = origin(&row);
        assert_clean(&row, &format!("{pipeline}: frame {n}"));
        rows.insert(n, row);
    }
    let report = String::from_utf8(report.stdout).unwrap();
    (report, rows, tshark_rows(&drops, &[]))
}

/// The value of `stage`'s counter `name` in a report (absent: 0).
fn counter(report: &str, stage: &str, name: &str) -> u64 {
    report
        .lines()
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [s, c, v] if s == stage && c == name => v.parse().ok(),
            _ => None,
        })
        .unwrap_or(0)
}

fn field<'a>(row: &'a Row, name: &str) -> &'a str {
    row[name].first().map_or("", String::as_str)
}

/// Source NAT on a capture: outbound flows leave from the public address, each flow on one
/// port (the same for every packet), the ping with a new identifier; a static port forward
/// is translated both ways; an unsolicited SYN to the public address is dropped.
#[test]
fn snat_translates_outbound_flows_and_a_port_forward() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let tmp = common::temp_dir("nf-pcap-snat");
    let pipeline =
        "parse -> snat,public=203.0.113.1,inside=10.0.0.0/24,forward=tcp:8080=10.0.0.5:80";
    let (report, rows, drops) = services(pipeline, &tmp);
    // Translated: frames 1-9. Untranslated, not inside: the load-balancing part's clients
    // (their backend's SYN+ACKs open no session). Dropped: the unsolicited SYN.
    assert!(
        report.contains("verdicts: 33 pass, 0 tx, 0 to_control, 13 dropped"),
        "{report}"
    );
    assert_eq!(counter(&report, "snat", "flows_translated"), 3, "{report}");
    assert_eq!(counter(&report, "snat", "flows_forwarded"), 1, "{report}");
    assert_eq!(counter(&report, "snat", "no_mapping"), 1, "{report}");
    let row = |n: usize| rows.get(&n).unwrap_or_else(|| panic!("frame {n} passed"));
    for n in 1..=6 {
        assert_eq!(field(row(n), "ip.src"), "203.0.113.1", "frame {n}");
    }
    let tcp_port = field(row(1), "tcp.srcport");
    assert!(tcp_port.parse::<u16>().unwrap() >= 1024, "{tcp_port}");
    for n in 1..=3 {
        assert_eq!(field(row(n), "tcp.srcport"), tcp_port, "frame {n}");
        assert_eq!(field(row(n), "ip.dst"), "198.51.100.20", "frame {n}");
        assert_eq!(field(row(n), "tcp.dstport"), "80", "frame {n}");
    }
    assert_eq!(field(row(4), "udp.srcport"), field(row(5), "udp.srcport"));
    assert_ne!(field(row(4), "udp.srcport"), "5353");
    // The port forward: in to the inside server, its answer out from the public port.
    for n in [7, 9] {
        assert_eq!(field(row(n), "ip.dst"), "10.0.0.5", "frame {n}");
        assert_eq!(field(row(n), "tcp.dstport"), "80", "frame {n}");
    }
    assert_eq!(field(row(8), "ip.src"), "203.0.113.1");
    assert_eq!(field(row(8), "tcp.srcport"), "8080");
    assert_eq!(field(row(8), "ip.dst"), "198.51.100.9");
    assert!(
        field(&drops[0], "frame.comment").ends_with("input frame 10, drop nat_no_mapping"),
        "{:?}",
        drops[0]["frame.comment"]
    );
    // The same capture, the same ports: the tool's keys are fixed.
    let (_, again, _) = services(pipeline, &tmp);
    assert_eq!(field(&again[&1], "tcp.srcport"), tcp_port);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Security groups in front of source NAT share its session table: one lookup per packet,
/// and the inside server's answer through the port forward (which only the NAT's reply key
/// matches) passes as the reply of the flow the rules admitted. Separate tables would judge
/// that answer a new flow to port 5555 and drop it.
#[test]
fn sg_and_snat_share_one_session_per_flow() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let tmp = common::temp_dir("nf-pcap-sg-snat");
    let pipeline = "parse -> sg,allow=tcp:80,allow=tcp:8080 -> \
        snat,public=203.0.113.1,inside=10.0.0.0/24,forward=tcp:8080=10.0.0.5:80";
    let (report, rows, _) = services(pipeline, &tmp);
    assert!(
        report.contains("sg,allow=tcp:80,allow=tcp:8080 + snat:rfc"),
        "{report}"
    );
    // One table: every frame looked up once, no second conntrack stage.
    assert_eq!(counter(&report, "conntrack", "lookups"), 46, "{report}");
    assert!(!report.contains("conntrack_2"), "{report}");
    // The port forward, both ways, its answer a reply hit of the admitted flow.
    let row = |n: usize| rows.get(&n).unwrap_or_else(|| panic!("frame {n} passed"));
    for n in [7, 9] {
        assert_eq!(field(row(n), "ip.dst"), "10.0.0.5", "frame {n}");
    }
    assert_eq!(field(row(8), "ip.src"), "203.0.113.1");
    assert_eq!(field(row(8), "tcp.srcport"), "8080");
    assert_eq!(counter(&report, "conntrack", "reply_hits"), 1, "{report}");
    // The outbound web flow is admitted and translated; DNS, the ping and the unsolicited
    // SYN have no rule.
    for n in 1..=3 {
        assert_eq!(field(row(n), "ip.src"), "203.0.113.1", "frame {n}");
    }
    for n in [4, 5, 6, 10] {
        assert!(!rows.contains_key(&n), "frame {n} passed");
    }
    assert_eq!(
        counter(&report, "security_groups", "flows_denied"),
        4,
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Load balancing on a capture: every client flow to the VIP goes to one backend (its SYN
/// and ACK alike), the flows spread over the backends, and the backend's answers leave from
/// the VIP, through the session of the flow or, from a backend the flow did not hash to,
/// statelessly.
#[test]
fn lb_spreads_vip_flows_and_replies_leave_from_the_vip() {
    if !common::require("tshark", &["--version"]) {
        return;
    }
    let tmp = common::temp_dir("nf-pcap-lb");
    let backends = ["10.1.0.11", "10.1.0.12", "10.1.0.13"];
    let pipeline = format!(
        "parse -> lb,vip=192.0.2.10:80,{}",
        backends.map(|b| format!("backend={b}:8000")).join(",")
    );
    let (report, rows, _) = services(&pipeline, &tmp);
    assert_eq!(counter(&report, "lb", "new_flows"), 12, "{report}");
    assert_eq!(
        counter(&report, "lb", "stateless_replies") + counter(&report, "conntrack", "reply_hits"),
        12,
        "{report}"
    );
    let row = |n: usize| rows.get(&n).unwrap_or_else(|| panic!("frame {n} passed"));
    let mut chosen = Vec::new();
    for i in 0..12 {
        let (syn, syn_ack, ack) = (11 + 3 * i, 12 + 3 * i, 13 + 3 * i);
        let client = format!("198.51.100.{}", 100 + i);
        let backend = field(row(syn), "ip.dst");
        assert!(backends.contains(&backend), "frame {syn}: {backend}");
        for n in [syn, ack] {
            assert_eq!(field(row(n), "ip.src"), client, "frame {n}");
            assert_eq!(field(row(n), "ip.dst"), backend, "frame {n}");
            assert_eq!(field(row(n), "tcp.dstport"), "8000", "frame {n}");
        }
        assert_eq!(
            field(row(syn_ack), "ip.src"),
            "192.0.2.10",
            "frame {syn_ack}"
        );
        assert_eq!(field(row(syn_ack), "tcp.srcport"), "80", "frame {syn_ack}");
        assert_eq!(field(row(syn_ack), "ip.dst"), client, "frame {syn_ack}");
        chosen.push(backend.to_string());
    }
    chosen.sort();
    chosen.dedup();
    assert!(chosen.len() >= 2, "twelve flows on one backend: {chosen:?}");
    // Traffic to no VIP passes untouched.
    assert_eq!(field(row(1), "ip.src"), "10.0.0.7");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `services.pcap` is what `make_services_pcap.py` writes (scapy, deterministic), so the
/// capture the tests and README use can be made again and changed with the script.
#[test]
fn services_capture_is_what_its_script_writes() {
    let py = common::system_python();
    if !common::require(py, &["-c", "import scapy.all"]) {
        return;
    }
    let tmp = common::temp_dir("nf-pcap-services-script");
    let script = capture("make_services_pcap.py");
    let out = Command::new(py).arg(&script).arg(&*tmp).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = std::fs::read(tmp.join("services.pcap")).unwrap();
    assert!(
        made == std::fs::read(capture("services.pcap")).unwrap(),
        "examples/data/services.pcap differs from what {} writes",
        script.display()
    );
}

/// Security groups on a capture: the demo's HTTPS connection and pings are admitted by their
/// rules and their replies pass by the session, with no rule for them; the IPv6 connection
/// to port 80, the DNS queries and the NTP packet are denied (their first packet by the
/// rules, the rest for want of a session).
#[test]
fn sg_admits_allowed_flows_and_their_replies_only() {
    let tmp = common::temp_dir("nf-pcap-sg");
    let (out, drops) = (tmp.join("out.pcapng"), tmp.join("drops.pcapng"));
    sg_on_demo(
        "parse -> sg,allow=tcp:443,allow=icmp:8",
        &out,
        &["--drops", drops.to_str().unwrap()],
        (2, 8),
        "verdicts: 15 pass, 0 tx, 1 to_control, 19 dropped",
    );
    if common::require("tshark", &["--version"]) {
        // The HTTPS connection (frames 1-11) and the pings with their replies (27-30).
        let origins: Vec<usize> = tshark_rows(&out, &[]).iter().map(origin).collect();
        let want: Vec<usize> = (1..=11).chain(27..=30).collect();
        assert_eq!(origins, want);
        let dropped: Vec<String> = tshark_rows(&drops, &[])
            .iter()
            .map(|r| field(r, "frame.comment").to_string())
            .collect();
        assert_eq!(dropped[0], "nf-pcap: input frame 12, drop sg_denied");
        assert_eq!(
            dropped
                .iter()
                .filter(|c| c.ends_with("drop sg_denied"))
                .count(),
            8
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `inside=` makes flows opened from the protected side egress, judged by `allow-out=`
/// rules: with 10.0.0.0/24 inside and only DNS allowed out, the demo's three DNS queries
/// and their answers pass, and its HTTPS connection from 10.0.0.1 (ingress-allowed above) is
/// now egress and denied, like the pings; the IPv6 flow and the NTP packet, from outside,
/// find no ingress rule for them.
#[test]
fn sg_inside_prefixes_make_flows_egress() {
    let tmp = common::temp_dir("nf-pcap-sg-inside");
    let out = tmp.join("out.pcapng");
    sg_on_demo(
        "parse -> sg,inside=10.0.0.0/24,allow-out=udp:53,allow=tcp:443",
        &out,
        &[],
        (3, 7),
        "verdicts: 6 pass, 0 tx, 1 to_control, 28 dropped",
    );
    if common::require("tshark", &["--version"]) {
        let origins: Vec<usize> = tshark_rows(&out, &[]).iter().map(origin).collect();
        assert_eq!(origins, (21..=26).collect::<Vec<_>>());
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Runs `pipeline` on the demo capture writing to `out` (and `extra` arguments), and checks
/// the security groups' (allowed, denied) flow counts and the verdicts line of the report.
fn sg_on_demo(
    pipeline: &str,
    out: &std::path::Path,
    extra: &[&str],
    (allowed, denied): (u64, u64),
    verdicts: &str,
) {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo.pcap");
    let mut args = vec![demo, "-p", pipeline, "-w", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let report = String::from_utf8(run(&args).stdout).unwrap();
    let sg = |name| counter(&report, "security_groups", name);
    assert_eq!(sg("flows_allowed"), allowed, "{report}");
    assert_eq!(sg("flows_denied"), denied, "{report}");
    assert!(report.contains(verdicts), "{report}");
}
