//! nf-policy's network ACL beside Linux nftables: one random rule set (IPv4 and IPv6
//! prefixes of every length, TCP/UDP port ranges, ICMP types and codes, allow and deny,
//! implicit deny) is built as an nf ACL and translated to an nft chain with a counter per
//! rule; the same frames go through both — nf in process, the kernel through a veth into a
//! network namespace this test makes — and every rule must count the same packets (the
//! first match decides in both). Needs root, `ip`, `nft` and scapy (to send the frames):
//! without them it skips, except under `CI=true`, where it fails.
#![cfg(target_os = "linux")]
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test code: a failed setup step should fail the test"
)]

mod common;

use common::sh;
use nf_core::flow::proto;
use nf_core::wire::icmp::IcmpRepr;
use nf_core::wire::ipv4::Ipv4Repr;
use nf_core::wire::ipv6::Ipv6Repr;
use nf_core::wire::{Frame, IpRepr};
use nf_core::{Batch, Instant, Packet, ParseStage, Stage};
use nf_policy::{
    AclAction, AclBuilder, AclRule, AclVerdict, ClassKey, ClassifierConfig, Match, PortRange,
    Prefix,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Frames the test sends carry this TTL / hop limit; the nft chain ignores all others.
const MARK_TTL: u8 = 77;
const RULES: usize = 48;
const FRAMES: usize = 2000;
const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

/// xorshift64*: a fixed sequence, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Addresses come from small pools so that rules and frames meet often.
fn addr(rng: &mut Rng, v6: bool) -> IpAddr {
    let pick = rng.below(4) as u8;
    let low = rng.below(256) as u8;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(pick),
            0,
            0,
            0,
            0,
            u16::from(low),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, pick, rng.below(2) as u8, low))
    }
}

fn prefix(rng: &mut Rng, v6: bool) -> Prefix {
    let a = addr(rng, v6);
    let max = if v6 { 128 } else { 32 };
    // Mostly the lengths that cut the pools, sometimes anything.
    let len = match rng.below(16) {
        0 => 0,
        1 => rng.below(max + 1) as u8,
        _ if v6 => [48, 64, 120, 126, 128][rng.below(5) as usize],
        _ => [8, 16, 24, 25, 30, 32][rng.below(6) as usize],
    };
    Prefix::masked(a, len).unwrap()
}

fn range(rng: &mut Rng) -> PortRange {
    match rng.below(3) {
        0 => PortRange::ANY,
        1 => PortRange::single(1000 + rng.below(8) as u16),
        _ => {
            let lo = 1000 + rng.below(8) as u16;
            PortRange::new(lo, lo + rng.below(6) as u16).unwrap()
        }
    }
}

/// A rule and its nft translation.
fn rule(rng: &mut Rng, number: u32) -> (AclRule, String) {
    let v6 = rng.below(3) == 0;
    let (src, dst) = (prefix(rng, v6), prefix(rng, v6));
    let base = if v6 { Match::any_v6() } else { Match::any_v4() }
        .src(src)
        .dst(dst);
    let fam = if v6 { "ip6" } else { "ip" };
    let mut nft = format!("meta nfproto {} ", if v6 { "ipv6" } else { "ipv4" });
    for (word, p) in [("saddr", src), ("daddr", dst)] {
        if p.length() > 0 {
            nft += &format!("{fam} {word} {}/{} ", p.addr(), p.length());
        }
    }
    let ports = |nft: &mut String, what: &str, r: PortRange| {
        if r != PortRange::ANY {
            *nft += &format!("{what} {}-{} ", r.lo(), r.hi());
        }
    };
    let m = match rng.below(6) {
        0 => base,
        1..=3 => {
            let p = if rng.below(2) == 0 {
                proto::TCP
            } else {
                proto::UDP
            };
            let (s, d) = (range(rng), range(rng));
            nft += &format!("meta l4proto {p} ");
            ports(&mut nft, "th sport", s);
            ports(&mut nft, "th dport", d);
            base.proto(p).src_ports(s).dst_ports(d)
        }
        _ => {
            let (echo, reply) = if v6 { (128u8, 129u8) } else { (8, 0) };
            let ty = [None, Some(echo), Some(reply)][rng.below(3) as usize];
            let code = [None, Some(0u8), Some(1)][rng.below(3) as usize];
            let icmp = if v6 { "icmpv6" } else { "icmp" };
            nft += &format!("meta l4proto {} ", if v6 { 58 } else { 1 });
            if let Some(t) = ty {
                nft += &format!("{icmp} type {t} ");
            }
            if let Some(c) = code {
                nft += &format!("{icmp} code {c} ");
            }
            base.icmp(ty, code)
        }
    };
    let action = if rng.below(2) == 0 {
        AclAction::Allow
    } else {
        AclAction::Deny
    };
    nft += match action {
        AclAction::Allow => "counter accept",
        AclAction::Deny => "counter drop",
    };
    (AclRule::new(number, action, m), nft)
}

fn frame(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.below(3) == 0;
    let (src, dst) = (addr(rng, v6), addr(rng, v6));
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => IpRepr::V4(Ipv4Repr {
            src: s.octets(),
            dst: d.octets(),
            ttl: MARK_TTL,
            ..Ipv4Repr::default()
        }),
        (IpAddr::V6(s), IpAddr::V6(d)) => IpRepr::V6(Ipv6Repr {
            src: s.octets(),
            dst: d.octets(),
            hop_limit: MARK_TTL,
            ..Ipv6Repr::default()
        }),
        _ => unreachable!(),
    };
    let f = Frame::new(ip).ethernet(A_MAC, B_MAC);
    let port = |rng: &mut Rng| 998 + rng.below(16) as u16;
    let f = match rng.below(5) {
        0 | 1 => f.tcp(port(rng), port(rng), 0x10),
        2 | 3 => f.udp(port(rng), port(rng)),
        _ => {
            let ty = match (v6, rng.below(2)) {
                (true, 0) => 128,
                (true, _) => 129,
                (false, 0) => 8,
                (false, _) => 0,
            };
            f.icmp(IcmpRepr {
                ty,
                code: rng.below(2) as u8,
                ident: 7,
                seq: 1,
                ..IcmpRepr::default()
            })
        }
    };
    f.payload(b"nf-acl-vs-nft").to_vec().unwrap()
}

#[test]
fn acl_and_nftables_count_the_same_packets_per_rule() {
    if !common::is_root() {
        assert!(!common::in_ci(), "acl_nftables needs root under CI=true");
        eprintln!("SKIP: acl_nftables needs root (set CI=true to make this a failure)");
        return;
    }
    let py = common::system_python();
    if !(common::require("ip", &["-V"])
        && common::require("nft", &["--version"])
        && common::require(py, &["-c", "import scapy.all"]))
    {
        return;
    }
    let mut rng = Rng(0x5eed_ac10_0000_0001);
    let mut builder = AclBuilder::new(ClassifierConfig::default());
    let mut nft_rules = Vec::new();
    for i in 0..RULES {
        let (r, nft) = rule(&mut rng, 10 * (i as u32 + 1));
        builder.push(r).unwrap();
        nft_rules.push(nft);
    }
    let acl = builder.build().unwrap();
    let frames: Vec<Vec<u8>> = (0..FRAMES).map(|_| frame(&mut rng)).collect();

    // nf: parse, then the ACL; hits per rule index (RULES = implicit deny).
    let mut ours = vec![0u64; RULES + 1];
    for f in &frames {
        let mut b = Batch::new();
        b.push(Packet::new(f.clone(), 0, f.len()).unwrap()).unwrap();
        ParseStage::default().process(Instant::ZERO, &mut b);
        let key = ClassKey::from_packet(&b.packets()[0]);
        match acl.evaluate(&key) {
            AclVerdict::Rule { index, .. } => ours[index as usize] += 1,
            _ => ours[RULES] += 1,
        }
    }

    // The kernel: a veth into namespace b, whose prerouting chain holds the rules.
    let t = format!("nfacl{}", std::process::id());
    let (a, b) = (format!("{t}a"), format!("{t}b"));
    let lab = common::Lab {
        namespaces: vec![a.clone(), b.clone()],
        children: Vec::new(),
        dir: common::temp_dir("acl-nft"),
    };
    let dir = &lab.dir;
    sh(&format!(
        "ip netns add {a}; ip netns add {b}
         ip -n {a} link add va address 02:00:00:00:00:0a type veth peer name vb address 02:00:00:00:00:0b netns {b}
         ip -n {a} link set va up; ip -n {b} link set vb up"
    ));
    let mut chain = format!(
        "table inet acl {{\n chain pre {{\n  type filter hook prerouting priority -300; policy accept;\n  \
         meta nfproto ipv4 ip ttl != {MARK_TTL} accept\n  meta nfproto ipv6 ip6 hoplimit != {MARK_TTL} accept\n"
    );
    for r in &nft_rules {
        chain += &format!("  {r}\n");
    }
    chain += "  counter drop\n }\n}\n";
    std::fs::write(dir.join("acl.nft"), &chain).unwrap();
    sh(&format!(
        "ip netns exec {b} nft -f {}",
        dir.join("acl.nft").display()
    ));
    let pcap = dir.join("frames.pcap");
    {
        use nf_examples::pcap::{CaptureWriter, Format, LINKTYPE_ETHERNET};
        let mut w =
            CaptureWriter::new(std::fs::File::create(&pcap).unwrap(), Format::Pcap).unwrap();
        for f in &frames {
            w.write(0, LINKTYPE_ETHERNET, f, None).unwrap();
        }
        w.finish().unwrap();
    }
    sh(&format!(
        "ip netns exec {a} {py} -c \"from scapy.all import rdpcap, sendp; sendp(rdpcap('{}'), iface='va', verbose=0)\"",
        pcap.display()
    ));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let listing = sh(&format!("ip netns exec {b} nft list chain inet acl pre"));
    let kernel: Vec<u64> = listing
        .lines()
        .filter(|l| l.contains("counter packets"))
        .map(|l| {
            let after = l.split("counter packets ").nth(1).unwrap();
            after.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(kernel.len(), RULES + 1, "{listing}");
    assert_eq!(
        kernel.iter().sum::<u64>(),
        FRAMES as u64,
        "not every frame reached nftables"
    );
    let mut diff = Vec::new();
    for (i, (o, k)) in ours.iter().zip(&kernel).enumerate() {
        if o != k {
            diff.push(format!(
                "rule {i} ({}): nf {o}, nft {k}",
                nft_rules.get(i).map_or("implicit deny", |s| s.as_str())
            ));
        }
    }
    assert!(
        diff.is_empty(),
        "per-rule counts differ:\n{}\n\n{chain}",
        diff.join("\n")
    );
    let matched = ours[..RULES].iter().filter(|n| **n > 0).count();
    assert!(
        matched >= RULES / 3,
        "too few rules matched anything ({matched}): the test is weak"
    );
    eprintln!(
        "{FRAMES} frames, {RULES} rules ({matched} matched something): nf and nftables agree per rule"
    );
}
