//! `nf-pcap`: runs a capture through an nf pipeline chosen on the command line and writes
//! what comes out to a capture Wireshark opens. Run `nf-pcap --help` for the options.
//!
//! The pipeline is built from the stages that exist (tunnel decap with a profile, parse,
//! fragment reordering, connection tracking, connection tracking with source NAT (nf-nat),
//! load balancing (nf-lb) or security groups (nf-policy), tunnel encap towards a given
//! remote, tunnel reflect),
//! composed with [`StageExt::then`] into one value that the loop drives through
//! [`Stage`] and [`StageControl`], exactly as a dataplane would: frames are read (pcap or
//! pcapng) into batches of 64 (less the room the pipeline asks for,
//! [`StageControl::batch_room`]) with the pipeline's headroom in front, each batch is
//! processed with the capture time of its first frame as `now` (sans-IO: no clock is read),
//! the verdicts are acted on, and the timers get their turn. Every frame still at `Pass` (or
//! `Tx`) is written to the output; frames sent to the control path and dropped frames go to
//! their own files if asked for. A pipeline that may hold packets (`reorder`) gets one more
//! round after the last frame, an hour later, which gives back what it still holds.
//!
//! Output encoding: after decapsulation a frame may be a bare IP packet (Geneve protocol
//! 0x0800 / 0x86DD, what AWS GWLB and Google Cloud send), so the output is pcapng by
//! default, with one interface per link type (`ethernet`: LINKTYPE_ETHERNET, `ip`:
//! LINKTYPE_RAW) and every frame on the interface of its own encoding; each frame carries a
//! comment naming its input frame (and, in the control / drop files, its fate). A file
//! named `*.pcap` is classic pcap, which holds one link type: writing a frame of another
//! encoding fails with a message. A frame is bare IP when its parsed metadata says so (an
//! IP header at offset 0); a frame without parsed IP metadata is bare IP only if it reads as
//! a whole IP packet (version and total length agree with its size), else Ethernet.

use nf_core::conntrack::{Conntrack, ConntrackConfig, FragmentReorder, ReorderConfig, TcpWindow};
use nf_core::{
    BATCH_SIZE, Batch, DropReason, Instant, Packet, ParseStage, Stage, StageControl, StageCounters,
    StageExt, StageLoop, Verdict, flags,
};
use nf_examples::pcap::{
    CaptureReader, CaptureWriter, Format, LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapError,
};
use nf_examples::prometheus;
use nf_lb::{
    BackendId, HashFields, Lb, LbKey, Listener, ListenerMatch, Listeners, Pool, PoolMember,
    Selection, table_size_for,
};
use nf_nat::{
    AllocatorConfig, Filtering, InsidePrefix, PortForward, Snat, SnatConfig, nat_timeouts,
};
use nf_policy::classifier::{PortRange, Prefix};
use nf_policy::sg::{
    SecurityGroups, SgConfig, SgDirection, SgPeer, SgRule, SgRuleSet, SgRuleSetBuilder,
};
use nf_tunnel::profile::{gcp, gwlb};
use nf_tunnel::{
    DecapConfig, DecapStage, EncapConfig, EncapStage, NonTunnel, OptionSpec, OptionsBuilder,
    Payload, ReflectStage, TunnelKind, Underlay, VniSource,
};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufReader, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const HELP: &str = "\
nf-pcap: run a capture through an nf pipeline and write what comes out

usage: nf-pcap [OPTIONS] INPUT
       nf-pcap INPUT -p 'decap:gwlb -> conntrack -> encap:vxlan,vni=7,src=10.0.0.1,dst=10.0.0.2' -w out.pcapng

INPUT is a pcap or pcapng capture of Ethernet frames (LINKTYPE_RAW frames are given a
zero-address Ethernet header; other link types are counted and skipped). Frames run in
batches of 64, with each batch's first capture time as the pipeline's clock. Then every
stage's counters and drops by reason are printed.

options:
  -p, --pipeline SPEC   the stages, in order, separated by '->' or ','
                        (default: parse -> conntrack)
  -s, --stage STAGE     append one stage (repeatable; alternative to --pipeline)
  -w, --write FILE      write the frames that pass (and Tx) to FILE
      --control FILE    write the frames sent to the control path to FILE
      --drops FILE      write the dropped frames to FILE (pcapng comments hold the reason)
      --format FORMAT   pcapng or pcap for every written file (default: pcap for a name
                        ending in .pcap, else pcapng)
      --prometheus      print the counters in the Prometheus text format on stdout (the
                        report goes to stderr)
  -h, --help            this text

stages (parameters follow as ,key=value):
  decap[:PROFILE]       strip Geneve / VXLAN: PROFILE any (Geneve 6081 and VXLAN 4789,
                        the default), geneve, vxlan, gwlb (AWS GWLB: its three options
                        required, non-tunnel frames dropped), gcp (Google Cloud options)
                          port=N[:geneve|vxlan]  also decapsulate on UDP port N
                          option=CLASS:TYPE      a Geneve option understood (critical ok)
                          udp-checksum=ignore    trust outer UDP checksums (GSO captures)
                          non-tunnel=pass|drop   fate of frames that are not tunnelled
  parse                 parse Ethernet / VLAN / IPv4 / IPv6 / TCP / UDP / ICMP (not
                        needed after decap, which parses the inner packet itself)
  reorder               hold a later IP fragment that comes before its first until the
                        first has passed (put it before conntrack); what is still held at
                        the end of the capture comes out as dropped (fragment_hold_expired)
                          held=N                 most fragments held at once (default 64)
  conntrack             connection tracking (sessions, reply direction, related ICMP)
                          window=on              TCP window tracking (segments outside
                                                 the peer's window, forged resets dropped)
  snat[:PROFILE]        connection tracking with source NAT (nf-nat; use it instead of
                        conntrack): flows from inside get a public address and port,
                        packets of their sessions are translated both ways; PROFILE rfc
                        (the default: endpoint-independent mappings), hyperplane
                        (per-destination ports) or cgn (port blocks)
                          public=IP              a public address (required; repeatable)
                          inside=ADDR/LEN        an inside prefix (repeatable; default: every
                                                 flow that is not to a public address)
                          forward=tcp|udp:PORT=IP:PORT  a static port forward from the first
                                                 public address to an inside host (repeatable)
                          filtering=eif          endpoint-independent filtering (rfc, cgn;
                                                 default: address and port dependent)
                          window=on              TCP window tracking as well
  lb                    connection tracking with Maglev load balancing (nf-lb, DNAT; use it
                        instead of conntrack): flows to a VIP go to a backend, its replies
                        leave from the VIP
                          vip=IP:PORT[/tcp|udp]  a virtual service (required; repeatable;
                                                 tcp by default); vip=IP takes every flow to IP
                          backend=IP:PORT[/WEIGHT]  a backend of every VIP (required;
                                                 repeatable; port 0 keeps the VIP's port)
                          hash=5tuple|3tuple|2tuple|src  the fields a flow is hashed on
                          select=maglev|rendezvous  how a new flow's backend is chosen: a
                                                 Maglev table (default) or rendezvous
                                                 hashing (exactly minimal disruption)
  sg                    connection tracking with security groups (nf-policy; use it instead
                        of conntrack): a flow whose first packet comes from an inside
                        address is egress (judged by allow-out rules, whose peer is its
                        destination), any other ingress (allow rules, whose peer is its
                        source); a flow no rule allows is dropped (sg_denied) and opens no
                        session; an admitted flow's packets and replies pass
                          allow=PROTO[:PORTS][@ADDR/LEN]  an ingress rule (repeatable): PROTO
                                                 tcp, udp, icmp or all; PORTS N or N-M
                                                 (destination ports; for icmp the type);
                                                 default: every port, from anywhere
                          allow-out=PROTO[:PORTS][@ADDR/LEN]  an egress rule (repeatable), the
                                                 same form; @ADDR/LEN is the destination
                          inside=ADDR/LEN        the protected side (repeatable; default:
                                                 none, every flow is ingress)
                          zone=N                 a zone the rules are for (repeatable;
                                                 default 0; after decap, the VNI's zone)
  encap:geneve|vxlan    push outer headers towards a remote
                          vni=N|zone             fixed VNI, or the zone (the decap VNI)
                          src=IP,dst=IP          underlay addresses (required, one family)
                          src-mac=MAC,dst-mac=MAC  underlay MACs (default 02:00:00:00:00:01/02)
                          port=N                 UDP destination port (6081 / 4789)
                          payload=eth|ip         Geneve payload: Ethernet frame (default) or
                                                 bare IP; a bare IP packet encapsulated as
                                                 Ethernet first gets an inner Ethernet header
                          inner-src-mac=MAC,inner-dst-mac=MAC  that header's MACs
                          mtu=N                  underlay MTU (default 1500; 9000 for jumbo)
                          udp-checksum=on        compute the UDP checksum over IPv4 too
  reflect               send decapsulated frames back into their tunnel (GWLB appliance)
                          mtu=N                  underlay MTU (default 9001)

Adjacent session stages (conntrack, then sg, then snat or lb, in that order) share one
session table: one lookup per packet for all of them, and the reply of a translated flow
is the reply of the session every one of them admitted. Other orders, and two translators,
keep tables of their own (the report joins the stages of one table with '+').

The keys of conntrack, snat and lb (and so the ports NAT picks and the backends flows go to)
are fixed: the same capture gives the same output every run.

output: pcapng by default, one interface per encoding (ethernet, ip), because decapsulated
frames may be bare IP (GWLB, GCP); each frame's comment names its input frame. A .pcap
output holds one link type and fails on a frame of the other.

examples:
  nf-pcap examples/data/demo.pcap -w out.pcapng
  nf-pcap examples/data/gwlb.pcap -p 'decap:gwlb -> conntrack -> reflect' -w back.pcapng
  nf-pcap geneve-gcp.pcap -p decap:gcp -w inner.pcapng --format pcap
  nf-pcap vxlan.pcap -s decap:vxlan -s encap:geneve,vni=zone,src=192.0.2.1,dst=192.0.2.2 -w out.pcapng
  nf-pcap examples/data/services.pcap -w nat.pcapng \
      -p 'parse -> snat,public=203.0.113.1,inside=10.0.0.0/24,forward=tcp:8080=10.0.0.5:80'
  nf-pcap examples/data/services.pcap -w lb.pcapng \
      -p 'parse -> lb,vip=192.0.2.10:80,backend=10.1.0.11:8000,backend=10.1.0.12:8000'
  nf-pcap examples/data/demo.pcap -p 'parse -> sg,allow=tcp:443,allow=icmp:8' --drops denied.pcapng
";

/// Extra headroom beyond what the pipeline asks for (room for a caller's own headers).
const SLACK: usize = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Options::parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            // --help: a closed pipe (`nf-pcap --help | head`) is not an error.
            let _ = io::stdout().lock().write_all(HELP.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("nf-pcap: {e}\n(try nf-pcap --help)");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nf-pcap: {}: {e}", opts.input.display());
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let io = e
        .downcast_ref::<io::Error>()
        .or_else(|| match e.downcast_ref::<PcapError>() {
            Some(PcapError::Io(io)) => Some(io),
            _ => None,
        });
    io.is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// The command line.
#[derive(Debug)]
struct Options {
    input: PathBuf,
    stages: Vec<StageSpec>,
    write: Option<PathBuf>,
    control: Option<PathBuf>,
    drops: Option<PathBuf>,
    format: Option<Format>,
    prometheus: bool,
}

impl Options {
    /// `Ok(None)`: help was asked for.
    fn parse(args: &[String]) -> Result<Option<Self>, String> {
        let mut input = None;
        let mut stages = Vec::new();
        let (mut pipeline, mut single) = (false, false);
        let (mut write, mut control, mut drops, mut format) = (None, None, None, None);
        let mut prometheus = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "-h" | "--help" => return Ok(None),
                "-p" | "--pipeline" => {
                    if pipeline {
                        return Err("--pipeline given twice".into());
                    }
                    pipeline = true;
                    stages.extend(parse_pipeline(&value(a)?)?);
                }
                "-s" | "--stage" => {
                    single = true;
                    stages.extend(parse_pipeline(&value(a)?)?);
                }
                "-w" | "--write" => write = Some(PathBuf::from(value(a)?)),
                "--control" => control = Some(PathBuf::from(value(a)?)),
                "--drops" => drops = Some(PathBuf::from(value(a)?)),
                "--format" => {
                    format = Some(match value(a)?.as_str() {
                        "pcap" => Format::Pcap,
                        "pcapng" => Format::PcapNg,
                        f => return Err(format!("unknown format {f:?} (pcap or pcapng)")),
                    })
                }
                "--prometheus" => prometheus = true,
                o if o.starts_with('-') && o.len() > 1 => {
                    return Err(format!("unknown option {o:?}"));
                }
                p if input.is_none() => input = Some(PathBuf::from(p)),
                p => return Err(format!("more than one input ({p:?})")),
            }
        }
        if pipeline && single {
            return Err("use --pipeline or --stage, not both".into());
        }
        let files: Vec<&PathBuf> = [&write, &control, &drops].into_iter().flatten().collect();
        for (i, f) in files.iter().enumerate() {
            if files.iter().skip(i + 1).any(|g| g == f) {
                return Err(format!("{} is named for two outputs", f.display()));
            }
        }
        if stages.is_empty() {
            stages = vec![StageSpec::Parse, StageSpec::Conntrack { window: false }];
        }
        let input = input.ok_or("no input capture given")?;
        Ok(Some(Self {
            input,
            stages,
            write,
            control,
            drops,
            format,
            prometheus,
        }))
    }
}

/// One stage as the command line names it.
#[derive(Debug)]
enum StageSpec {
    Decap {
        profile: String,
        config: DecapConfig,
    },
    Parse,
    Conntrack {
        /// TCP window tracking.
        window: bool,
    },
    Encap {
        label: String,
        config: Box<EncapConfig>,
        inner_macs: ([u8; 6], [u8; 6]),
    },
    Reflect {
        mtu: u16,
    },
    Reorder {
        /// Most later fragments held at once.
        held: u32,
    },
    /// Connection tracking with source NAT (a [`Services`] part).
    Snat {
        label: String,
        config: Box<SnatConfig>,
        /// TCP window tracking.
        window: bool,
    },
    /// Connection tracking with load balancing (a [`Services`] part).
    Lb {
        label: String,
        listeners: Listeners,
    },
    /// Connection tracking with security groups (a [`Services`] part).
    Sg {
        label: String,
        rules: SgRuleSet,
        zones: Vec<u32>,
        /// Prefixes whose flows are egress (their source is inside); the rest ingress.
        inside: Vec<Prefix>,
    },
}

impl StageSpec {
    /// What the report calls it.
    fn label(&self) -> String {
        match self {
            Self::Decap { profile, .. } => format!("decap:{profile}"),
            Self::Parse => "parse".into(),
            Self::Conntrack { window: false } => "conntrack".into(),
            Self::Conntrack { window: true } => "conntrack,window=on".into(),
            Self::Encap { label, .. } => label.clone(),
            Self::Reflect { .. } => "reflect".into(),
            Self::Reorder { held } => format!("reorder,held={held}"),
            Self::Snat { label, .. } | Self::Lb { label, .. } | Self::Sg { label, .. } => {
                label.clone()
            }
        }
    }
}

/// Stages separated by `->` or `,`; within a stage, `,key=value` parameters (a
/// comma-separated word with `=` is a parameter, any other starts the next stage).
fn parse_pipeline(spec: &str) -> Result<Vec<StageSpec>, String> {
    let mut groups: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for part in spec.split("->") {
        // A parameter belongs to a stage named earlier in the same `->` part.
        let mut named = false;
        for word in part.split(',').map(str::trim) {
            if word.is_empty() {
                continue;
            }
            match (word.split_once('='), groups.last_mut()) {
                (Some((k, v)), Some((_, params))) if named => {
                    params.push((k.trim().to_string(), v.trim().to_string()));
                }
                (Some(_), _) => return Err(format!("parameter {word:?} before any stage")),
                (None, _) => {
                    groups.push((word.to_string(), Vec::new()));
                    named = true;
                }
            }
        }
    }
    if groups.is_empty() {
        return Err(format!("no stage in {spec:?}"));
    }
    groups
        .into_iter()
        .map(|(name, params)| stage_spec(&name, &params))
        .collect()
}

fn stage_spec(name: &str, params: &[(String, String)]) -> Result<StageSpec, String> {
    let (kind, arg) = match name.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (name, None),
    };
    let unknown = |k: &str| Err(format!("{kind}: unknown parameter {k:?} (see --help)"));
    match kind {
        "decap" => decap_spec(arg.unwrap_or("any"), params),
        "parse" | "conntrack" if arg.is_some() => Err(format!("{kind} takes no argument")),
        "conntrack" => {
            let mut window = false;
            for (k, v) in params {
                match k.as_str() {
                    "window" => window = on_off(k, v)?,
                    k => return unknown(k),
                }
            }
            Ok(StageSpec::Conntrack { window })
        }
        "parse" => match params.first() {
            Some((k, _)) => unknown(k),
            None => Ok(StageSpec::Parse),
        },
        "encap" => encap_spec(arg, params),
        "reflect" => {
            let mut mtu = 9001;
            for (k, v) in params {
                match k.as_str() {
                    "mtu" => mtu = number(k, v)?,
                    k => return unknown(k),
                }
            }
            Ok(StageSpec::Reflect { mtu })
        }
        "reorder" => {
            let mut held = 64;
            for (k, v) in params {
                match k.as_str() {
                    "held" => held = number(k, v)?,
                    k => return unknown(k),
                }
            }
            Ok(StageSpec::Reorder { held })
        }
        "snat" => snat_spec(arg.unwrap_or("rfc"), params),
        "lb" if arg.is_some() => Err("lb takes no argument".into()),
        "lb" => lb_spec(params),
        "sg" if arg.is_some() => Err("sg takes no argument".into()),
        "sg" => sg_spec(params),
        k => Err(format!(
            "unknown stage {k:?} (decap, parse, reorder, conntrack, snat, lb, sg, encap, reflect)"
        )),
    }
}

fn decap_spec(profile: &str, params: &[(String, String)]) -> Result<StageSpec, String> {
    let (mut config, kind) = match profile {
        "any" => (DecapConfig::default(), None),
        "geneve" => (
            DecapConfig {
                ports: vec![(nf_tunnel::GENEVE_PORT, TunnelKind::Geneve)],
                ..DecapConfig::default()
            },
            Some(TunnelKind::Geneve),
        ),
        "vxlan" => (
            DecapConfig {
                ports: vec![(nf_tunnel::VXLAN_PORT, TunnelKind::Vxlan)],
                ..DecapConfig::default()
            },
            Some(TunnelKind::Vxlan),
        ),
        "gwlb" => (gwlb::decap_config(), Some(TunnelKind::Geneve)),
        "gcp" => (gcp::decap_config(), Some(TunnelKind::Geneve)),
        p => {
            return Err(format!(
                "unknown decap profile {p:?} (any, geneve, vxlan, gwlb, gcp)"
            ));
        }
    };
    for (k, v) in params {
        match k.as_str() {
            "port" => {
                let (port, tunnel) = match v.split_once(':') {
                    Some((p, "geneve")) => (p, Some(TunnelKind::Geneve)),
                    Some((p, "vxlan")) => (p, Some(TunnelKind::Vxlan)),
                    Some((_, t)) => return Err(format!("port: unknown tunnel {t:?}")),
                    None => (v.as_str(), kind),
                };
                let tunnel = tunnel.ok_or("decap:any port=N needs :geneve or :vxlan")?;
                config.ports.push((number(k, port)?, tunnel));
            }
            "option" => {
                let (class, ty) = v
                    .split_once(':')
                    .ok_or_else(|| format!("option={v}: want CLASS:TYPE"))?;
                let ty: u8 = number(k, ty)?;
                // The spec names the type without its critical bit.
                config
                    .options
                    .push(OptionSpec::known(number(k, class)?, ty & 0x7f));
            }
            "udp-checksum" => {
                config.verify_udp_checksum = match v.as_str() {
                    "verify" => true,
                    "ignore" => false,
                    v => return Err(format!("udp-checksum={v}: verify or ignore")),
                }
            }
            "non-tunnel" => {
                config.non_tunnel = match v.as_str() {
                    "pass" => NonTunnel::Pass,
                    "drop" => NonTunnel::Drop,
                    v => return Err(format!("non-tunnel={v}: pass or drop")),
                }
            }
            k => return Err(format!("decap: unknown parameter {k:?} (see --help)")),
        }
    }
    if config.options.len() > nf_tunnel::decap::MAX_OPTION_SPECS {
        return Err(format!(
            "decap: at most {} options",
            nf_tunnel::decap::MAX_OPTION_SPECS
        ));
    }
    Ok(StageSpec::Decap {
        profile: profile.to_string(),
        config,
    })
}

fn encap_spec(tunnel: Option<&str>, params: &[(String, String)]) -> Result<StageSpec, String> {
    let geneve = match tunnel {
        Some("geneve") => true,
        Some("vxlan") => false,
        _ => return Err("encap needs a tunnel: encap:geneve or encap:vxlan".into()),
    };
    let (mut vni, mut src, mut dst) = (None, None, None);
    let (mut src_mac, mut dst_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut inner_macs = ([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4]);
    let (mut port, mut mtu, mut payload, mut checksum) = (None, 1500, Payload::Ethernet, false);
    for (k, v) in params {
        match k.as_str() {
            "vni" if v == "zone" => vni = Some(VniSource::Zone),
            "vni" => vni = Some(VniSource::Fixed(number(k, v)?)),
            "src" => src = Some(address(k, v)?),
            "dst" => dst = Some(address(k, v)?),
            "src-mac" => src_mac = mac(k, v)?,
            "dst-mac" => dst_mac = mac(k, v)?,
            "inner-src-mac" => inner_macs.0 = mac(k, v)?,
            "inner-dst-mac" => inner_macs.1 = mac(k, v)?,
            "port" => port = Some(number(k, v)?),
            "mtu" => mtu = number(k, v)?,
            "payload" => {
                payload = match v.as_str() {
                    "eth" => Payload::Ethernet,
                    "ip" => Payload::Ip,
                    v => return Err(format!("payload={v}: eth or ip")),
                }
            }
            "udp-checksum" => {
                checksum = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(format!("udp-checksum={v}: on or off")),
                }
            }
            k => return Err(format!("encap: unknown parameter {k:?} (see --help)")),
        }
    }
    let vni = vni.ok_or("encap needs vni=N or vni=zone")?;
    let (src, dst) = match (src, dst) {
        (Some(s), Some(d)) => (s, d),
        _ => return Err("encap needs src=IP and dst=IP (underlay addresses)".into()),
    };
    let underlay = Underlay {
        src_mac,
        dst_mac,
        src,
        dst,
    };
    let mut config = if geneve {
        EncapConfig::geneve(OptionsBuilder::new(), 0, underlay)
    } else {
        EncapConfig::vxlan(0, underlay)
    };
    config.vni = vni;
    config.payload = payload;
    config.mtu = mtu;
    config.udp_checksum_v4 = checksum;
    if let Some(p) = port {
        config.dst_port = p;
    }
    // Refuse a bad combination here, with the stage's own words.
    EncapStage::new(config.clone()).map_err(|e| format!("encap: {e}"))?;
    let vni_text = match &config.vni {
        VniSource::Fixed(v) => v.to_string(),
        VniSource::Zone => "zone".into(),
        VniSource::Map(_) => "map".into(),
    };
    let label = format!(
        "encap:{},vni={vni_text},{src}->{dst}",
        if geneve { "geneve" } else { "vxlan" }
    );
    Ok(StageSpec::Encap {
        label,
        config: Box::new(config),
        inner_macs,
    })
}

/// The stage's name and parameters as given, for the report.
fn spec_label(name: &str, params: &[(String, String)]) -> String {
    let mut label = name.to_string();
    for (k, v) in params {
        let _ = write!(label, ",{k}={v}");
    }
    label
}

/// `tcp` or `udp` as an IP protocol number.
fn transport(key: &str, v: &str) -> Result<u8, String> {
    match v {
        "tcp" => Ok(nf_core::flow::proto::TCP),
        "udp" => Ok(nf_core::flow::proto::UDP),
        v => Err(format!("{key}: {v:?} is not tcp or udp")),
    }
}

fn snat_spec(profile: &str, params: &[(String, String)]) -> Result<StageSpec, String> {
    let profile_value = match profile {
        "rfc" => nf_nat::Profile::Rfc,
        "hyperplane" => nf_nat::Profile::Hyperplane,
        "cgn" => nf_nat::Profile::Cgn(Default::default()),
        p => return Err(format!("unknown snat profile {p:?} (rfc, hyperplane, cgn)")),
    };
    let (mut public, mut inside, mut forwards) = (Vec::new(), Vec::new(), Vec::new());
    let (mut filtering, mut window) = (Filtering::AddressAndPortDependent, false);
    for (k, v) in params {
        match k.as_str() {
            "public" => public.push(address(k, v)?),
            "inside" => {
                let (a, len) = v
                    .split_once('/')
                    .ok_or_else(|| format!("inside={v}: want ADDR/LEN"))?;
                inside.push(InsidePrefix::new(address(k, a)?, number(k, len)?));
            }
            "forward" => {
                let bad = || format!("forward={v}: want tcp|udp:PORT=IP:PORT");
                let (from, to) = v.split_once('=').ok_or_else(bad)?;
                let (proto, port) = from.split_once(':').ok_or_else(bad)?;
                let to: SocketAddr = to.parse().map_err(|_| bad())?;
                forwards.push((transport(k, proto)?, number::<u16>(k, port)?, to));
            }
            "filtering" => {
                filtering = match v.as_str() {
                    "eif" => Filtering::EndpointIndependent,
                    "apdf" => Filtering::AddressAndPortDependent,
                    v => return Err(format!("filtering={v}: eif or apdf")),
                }
            }
            "window" => window = on_off(k, v)?,
            k => return Err(format!("snat: unknown parameter {k:?} (see --help)")),
        }
    }
    let first = *public
        .first()
        .ok_or("snat needs public=IP (a public address)")?;
    // A fixed demo key: the same capture gives the same ports every run. A deployment uses
    // an operator secret.
    let ports = AllocatorConfig::new(profile_value, public, *b"nf-pcap nat key!");
    let mut config = SnatConfig::new(ports).with_filtering(filtering);
    for prefix in inside {
        config = config.with_inside(prefix);
    }
    for (proto, port, to) in forwards {
        let from = SocketAddr::new(first, port);
        config = config.with_forward(PortForward::new(proto, from, to));
    }
    // Refuse a bad combination here, with the service's own words.
    Snat::new(config.clone()).map_err(|e| format!("snat: {e}"))?;
    Ok(StageSpec::Snat {
        label: spec_label(&format!("snat:{profile}"), params),
        config: Box::new(config),
        window,
    })
}

fn lb_spec(params: &[(String, String)]) -> Result<StageSpec, String> {
    let (mut vips, mut members, mut fields) = (Vec::new(), Vec::new(), HashFields::FiveTuple);
    let mut rendezvous = false;
    for (k, v) in params {
        match k.as_str() {
            "vip" => {
                let (at, proto) = match v.rsplit_once('/') {
                    Some((at, p)) => (at, transport(k, p)?),
                    None => (v.as_str(), nf_core::flow::proto::TCP),
                };
                vips.push(match at.parse::<SocketAddr>() {
                    Ok(sa) => ListenerMatch::Port {
                        vip: sa.ip(),
                        port: sa.port(),
                        proto,
                    },
                    Err(_) => ListenerMatch::Vip(address(k, at)?),
                });
            }
            "backend" => {
                let (at, weight) = match v.rsplit_once('/') {
                    Some((at, w)) => (at, number(k, w)?),
                    None => (v.as_str(), 1),
                };
                let sa: SocketAddr = at
                    .parse()
                    .map_err(|_| format!("backend={v}: want IP:PORT[/WEIGHT]"))?;
                let id = match sa.ip() {
                    IpAddr::V4(a) => BackendId::v4(a.octets(), sa.port()),
                    IpAddr::V6(a) => BackendId::v6(a.octets(), sa.port()),
                };
                members.push(PoolMember::new(id, weight));
            }
            "hash" => {
                fields = match v.as_str() {
                    "5tuple" => HashFields::FiveTuple,
                    "3tuple" => HashFields::ThreeTuple,
                    "2tuple" => HashFields::TwoTuple,
                    "src" => HashFields::SourceIp,
                    v => return Err(format!("hash={v}: 5tuple, 3tuple, 2tuple or src")),
                }
            }
            "select" => {
                rendezvous = match v.as_str() {
                    "maglev" => false,
                    "rendezvous" => true,
                    v => return Err(format!("select={v}: maglev or rendezvous")),
                }
            }
            k => return Err(format!("lb: unknown parameter {k:?} (see --help)")),
        }
    }
    if vips.is_empty() || members.is_empty() {
        return Err("lb needs vip=IP:PORT and backend=IP:PORT".into());
    }
    // A fixed demo key: every run (and every node of a fleet) builds the same tables.
    let key = LbKey::new(*b"nf-pcap lb key!!");
    let selection = if rendezvous {
        Selection::Rendezvous
    } else {
        let size = table_size_for(members.len()).map_err(|e| format!("lb: {e}"))?;
        Selection::Maglev { size }
    };
    let listeners = vips
        .into_iter()
        .map(|on| {
            let pool = Pool::new(members.iter().copied());
            Listener::with_selection(&key, on, fields, pool, selection)
                .map_err(|e| format!("lb: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let listeners = Listeners::new(listeners).map_err(|e| format!("lb: {e}"))?;
    Ok(StageSpec::Lb {
        label: spec_label("lb", params),
        listeners,
    })
}

fn sg_spec(params: &[(String, String)]) -> Result<StageSpec, String> {
    let mut b = SgRuleSetBuilder::default();
    let (mut zones, mut inside, mut rules) = (Vec::new(), Vec::new(), 0);
    for (k, v) in params {
        match k.as_str() {
            "allow" => {
                sg_rule(&mut b, SgDirection::Ingress, k, v)?;
                rules += 1;
            }
            "allow-out" => {
                sg_rule(&mut b, SgDirection::Egress, k, v)?;
                rules += 1;
            }
            "inside" => inside.push(prefix(k, v)?),
            "zone" => zones.push(number(k, v)?),
            k => return Err(format!("sg: unknown parameter {k:?} (see --help)")),
        }
    }
    if rules == 0 {
        return Err("sg needs allow=PROTO[:PORTS][@ADDR/LEN] or allow-out=... (a rule)".into());
    }
    if zones.is_empty() {
        zones.push(0);
    }
    let rules = b.build().map_err(|e| format!("sg: {e}"))?;
    Ok(StageSpec::Sg {
        label: spec_label("sg", params),
        rules,
        zones,
        inside,
    })
}

/// `ADDR/LEN` as a prefix (host bits must be zero).
fn prefix(k: &str, v: &str) -> Result<Prefix, String> {
    let (a, len) = v
        .split_once('/')
        .ok_or_else(|| format!("{k}={v}: want ADDR/LEN"))?;
    Prefix::new(address(k, a)?, number(k, len)?).map_err(|e| format!("{k}={v}: {e}"))
}

/// Adds the rules of one `allow=` (ingress: the peer is the source) or `allow-out=`
/// (egress: the peer is the destination) parameter, `PROTO[:PORTS][@ADDR/LEN]`.
fn sg_rule(b: &mut SgRuleSetBuilder, dir: SgDirection, k: &str, v: &str) -> Result<(), String> {
    let (what, prefixes) = match v.split_once('@') {
        Some((w, p)) => {
            let (a, len) = p
                .split_once('/')
                .ok_or_else(|| format!("{k}={v}: want PROTO[:PORTS][@ADDR/LEN]"))?;
            let prefix = Prefix::new(address(k, a)?, number(k, len)?)
                .map_err(|e| format!("{k}={v}: {e}"))?;
            (w, vec![prefix])
        }
        None => (v, vec![Prefix::ANY_V4, Prefix::ANY_V6]),
    };
    let (proto, ports) = match what.split_once(':') {
        Some((p, ports)) => {
            let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
            let range = PortRange::new(number(k, lo)?, number(k, hi)?)
                .map_err(|e| format!("{k}={v}: {e}"))?;
            (p, Some(range))
        }
        None => (what, None),
    };
    for peer in prefixes.into_iter().map(SgPeer::Prefix) {
        let ports = ports.unwrap_or(PortRange::ANY);
        b.push(match proto {
            "tcp" => SgRule::tcp(dir, peer, ports),
            "udp" => SgRule::udp(dir, peer, ports),
            "icmp" if ports == PortRange::ANY => SgRule::icmp(dir, peer, None, None),
            "icmp" if ports.lo() == ports.hi() && ports.lo() < 256 => {
                SgRule::icmp(dir, peer, Some(ports.lo() as u8), None)
            }
            "icmp" => return Err(format!("{k}={v}: one ICMP type (0-255)")),
            "all" if ports == PortRange::ANY => SgRule::all(dir, peer),
            "all" => return Err(format!("{k}={v}: all takes no ports")),
            p => return Err(format!("{k}={v}: {p:?} is not tcp, udp, icmp or all")),
        });
    }
    Ok(())
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        v => Err(format!("{key}={v}: not on or off")),
    }
}

fn number<T: TryFrom<u64>>(key: &str, v: &str) -> Result<T, String> {
    let n = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    n.ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{key}={v}: not a number in range"))
}

fn address(key: &str, v: &str) -> Result<IpAddr, String> {
    v.parse()
        .map_err(|_| format!("{key}={v}: not an IP address"))
}

fn mac(key: &str, v: &str) -> Result<[u8; 6], String> {
    let mut out = [0u8; 6];
    let mut parts = v.split(':');
    for b in &mut out {
        *b = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| format!("{key}={v}: not a MAC address"))?;
    }
    if parts.next().is_some() {
        return Err(format!("{key}={v}: not a MAC address"));
    }
    Ok(out)
}

/// A stage of any type, so a pipeline chosen at run time still composes with
/// [`StageExt::then`] (one dynamic call per stage and batch, none per packet).
struct Dyn(Box<dyn Stage<Vec<u8>>>);

impl Stage<Vec<u8>> for Dyn {
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.0.process(now, batch);
    }
}

impl StageControl for Dyn {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn counters(&self) -> &StageCounters {
        self.0.counters()
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.0.visit_counters(f);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.0.handle_timeout(now, budget)
    }

    fn headroom(&self) -> usize {
        self.0.headroom()
    }

    fn batch_room(&self) -> usize {
        self.0.batch_room()
    }
}

/// Gives a bare IP packet (an IP header at offset 0, as decap leaves a Geneve IPv4 / IPv6
/// payload) an Ethernet header, so an encap stage that carries Ethernet frames carries a
/// valid one. Ethernet frames pass untouched.
struct InnerEthernet {
    src: [u8; 6],
    dst: [u8; 6],
    counters: StageCounters,
    framed: u64,
}

impl StageLoop for InnerEthernet {
    fn counters_mut(&mut self) -> &mut StageCounters {
        &mut self.counters
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Stage<B> for InnerEthernet {
    fn process(&mut self, _now: Instant, batch: &mut Batch<B>) {
        self.each_pending(batch, |s, _i, pkt| {
            if !is_bare_ip(pkt) {
                return Verdict::Pass;
            }
            let et = ip_ethertype(pkt.data()).to_be_bytes();
            let Ok(h) = pkt.push_front(14) else {
                return Verdict::Drop(DropReason::NoHeadroom);
            };
            for (d, b) in h.iter_mut().zip(s.dst.iter().chain(&s.src).chain(&et)) {
                *d = *b;
            }
            pkt.meta.flags &= !flags::NO_L2;
            s.framed += 1;
            Verdict::Pass
        });
    }
}

impl StageControl for InnerEthernet {
    fn name(&self) -> &'static str {
        "inner_ethernet"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.counters.visit(self.name(), f);
        f(self.name(), "framed", self.framed);
    }

    fn headroom(&self) -> usize {
        14
    }
}

/// True when the packet starts with its IP header: decap parsed a bare IP payload, or
/// (without parsed metadata) the bytes read as one whole IP packet.
fn is_bare_ip<B: AsRef<[u8]>>(pkt: &Packet<B>) -> bool {
    if pkt.meta.has(flags::NO_L2) {
        return true;
    }
    if pkt.meta.has(flags::L3_VALID) {
        return false;
    }
    let d = pkt.data();
    let word = |at: usize| {
        d.get(at..at + 2)
            .map_or(0, |w| usize::from(u16::from_be_bytes([w[0], w[1]])))
    };
    match d.first().map(|b| b >> 4) {
        Some(4) => d.len() >= 20 && word(2) == d.len(),
        Some(6) => d.len() >= 40 && word(4) + 40 == d.len(),
        _ => false,
    }
}

/// The EtherType of an IP packet, by its version field.
fn ip_ethertype(ip: &[u8]) -> u16 {
    match ip.first().map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    }
}

/// The pipeline the specs describe, composed with [`StageExt::then`]. Adjacent session
/// stages in [`session_rank`] order share one [`Conntrack`] ([`session_run`]).
fn build(specs: &[StageSpec]) -> Result<Dyn, Box<dyn std::error::Error>> {
    let mut pipeline: Option<Dyn> = None;
    let mut seen: Vec<&'static str> = Vec::new();
    let mut rest = specs;
    while let Some(spec) = rest.first() {
        let run = session_run(rest);
        let (stage, after) = if run > 0 {
            let (sessions, after) = rest.split_at(run);
            (session_stage(sessions)?, after)
        } else {
            (single_stage(spec)?, rest.get(1..).unwrap_or_default())
        };
        rest = after;
        // A second stage of a kind (decap of a tunnel inside a tunnel) reports as `<name>_2`.
        let kind = stage.name();
        seen.push(kind);
        let n = seen.iter().filter(|&&k| k == kind).count();
        let stage = if n > 1 {
            // Once per stage at start-up: the counter view takes `&'static str` names.
            let name: &'static str = Box::leak(format!("{kind}_{n}").into_boxed_str());
            Dyn(Box::new(stage.named(name)))
        } else {
            stage
        };
        pipeline = Some(match pipeline {
            None => stage,
            Some(p) => Dyn(Box::new(p.then(stage))),
        });
    }
    pipeline.ok_or_else(|| "empty pipeline".into())
}

/// A stage that is not a session stage.
fn single_stage(spec: &StageSpec) -> Result<Dyn, Box<dyn std::error::Error>> {
    Ok(match spec {
        StageSpec::Decap { config, .. } => Dyn(Box::new(DecapStage::new(config.clone())?)),
        StageSpec::Parse => Dyn(Box::new(ParseStage::default())),
        StageSpec::Encap {
            config, inner_macs, ..
        } => {
            let encap = EncapStage::new((**config).clone())?;
            if config.payload == Payload::Ethernet {
                let framing = InnerEthernet {
                    src: inner_macs.0,
                    dst: inner_macs.1,
                    counters: StageCounters::default(),
                    framed: 0,
                };
                Dyn(Box::new(framing.then(encap)))
            } else {
                Dyn(Box::new(encap))
            }
        }
        StageSpec::Reflect { mtu } => Dyn(Box::new(ReflectStage::new(*mtu, false))),
        StageSpec::Reorder { held } => Dyn(Box::new(FragmentReorder::new(
            ReorderConfig::new(*b"nf-pcap reorder!").holding(*held, 16),
        ))),
        StageSpec::Conntrack { .. }
        | StageSpec::Snat { .. }
        | StageSpec::Lb { .. }
        | StageSpec::Sg { .. } => session_stage(core::slice::from_ref(spec))?,
    })
}

/// The services of a session stage: security groups judge a flow before a translator (source
/// NAT or load balancing) rewrites it, and TCP window tracking sees what leaves.
type Services = (
    Option<SecurityGroups>,
    (Option<Snat>, (Option<Lb>, Option<TcpWindow>)),
);

/// Where a stage's service sits in [`Services`]; `None` for a stage that is not a session
/// stage. Two translators (each choosing the reply key) never share a table.
fn session_rank(spec: &StageSpec) -> Option<u8> {
    match spec {
        StageSpec::Conntrack { .. } => Some(0),
        StageSpec::Sg { .. } => Some(1),
        StageSpec::Snat { .. } | StageSpec::Lb { .. } => Some(2),
        _ => None,
    }
}

/// How many of the first stages of `specs` share one session table: the session stages up
/// to the first that is not, or that does not come later in [`session_rank`] order than the
/// one before it (`conntrack -> conntrack` stays two tables, as written). One table means one
/// lookup per packet for all of them, and a reply that a translator's reply key matches is
/// the reply of the flow every service of the table admitted (separate tables would see the
/// translated reply as a new flow).
fn session_run(specs: &[StageSpec]) -> usize {
    let mut last = None;
    specs
        .iter()
        .take_while(|s| {
            let r = session_rank(s);
            let fits = r.is_some() && (last.is_none() || r > last);
            last = r;
            fits
        })
        .count()
}

/// One `Conntrack` with the services of `run` (see [`session_run`]).
fn session_stage(run: &[StageSpec]) -> Result<Dyn, Box<dyn std::error::Error>> {
    // A fixed demo key; a deployment uses an operator secret.
    let mut ct = ConntrackConfig::new(*b"nf-pcap ct key 1");
    let (mut sg, mut snat, mut lb, mut window) = (None, None, None, false);
    for spec in run {
        match spec {
            StageSpec::Conntrack { window: w } => window |= *w,
            StageSpec::Sg {
                rules,
                zones,
                inside,
                ..
            } => {
                let mut tables = nf_core::ZoneMap::default();
                for &z in zones {
                    tables.insert(nf_core::ZoneId(z), rules.clone());
                }
                let inside = inside.clone();
                let config = SgConfig::default().direction(move |m| {
                    if inside.iter().any(|p| p.contains(m.flow.src_ip())) {
                        SgDirection::Egress
                    } else {
                        SgDirection::Ingress
                    }
                });
                let groups = SecurityGroups::new(std::sync::Arc::new(tables), config);
                sg = Some(groups);
            }
            StageSpec::Snat {
                config, window: w, ..
            } => {
                // Sessions last as long as the RFCs ask of a NAT.
                let timeouts = nat_timeouts(&config.allocator.profile);
                ct.v4.timeouts = timeouts;
                ct.v6.timeouts = timeouts;
                snat = Some(Snat::new((**config).clone())?);
                window |= *w;
            }
            StageSpec::Lb { listeners, .. } => lb = Some(Lb::new(listeners.clone())),
            _ => return Err(format!("{} is not a session stage", spec.label()).into()),
        }
    }
    let services: Services = (sg, (snat, (lb, bool::then(window, TcpWindow::new))));
    Ok(Dyn(Box::new(Conntrack::new(ct, services)?)))
}

/// An output file and how many frames of each encoding it got.
struct Output {
    path: PathBuf,
    writer: CaptureWriter<BufWriter<std::fs::File>>,
    ethernet: u64,
    ip: u64,
}

impl Output {
    fn create(path: &Path, format: Option<Format>) -> Result<Self, PcapError> {
        let format = format.unwrap_or_else(|| {
            if path.extension().is_some_and(|e| e == "pcap") {
                Format::Pcap
            } else {
                Format::PcapNg
            }
        });
        let file = BufWriter::new(std::fs::File::create(path)?);
        Ok(Self {
            path: path.to_path_buf(),
            writer: CaptureWriter::new(file, format)?,
            ethernet: 0,
            ip: 0,
        })
    }

    fn write(&mut self, ts: u64, pkt: &Packet<Vec<u8>>, comment: &str) -> Result<(), PcapError> {
        let link = if is_bare_ip(pkt) {
            self.ip += 1;
            LINKTYPE_RAW
        } else {
            self.ethernet += 1;
            LINKTYPE_ETHERNET
        };
        self.writer.write(ts, link, pkt.data(), Some(comment))
    }
}

/// Frame totals by fate.
#[derive(Default)]
struct Totals {
    read: u64,
    skipped: u64,
    passed: u64,
    tx: u64,
    to_control: u64,
    dropped: u64,
}

fn run(opts: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let mut pipeline = build(&opts.stages)?;
    let file = std::fs::File::open(&opts.input)?;
    let mut reader = CaptureReader::new(BufReader::new(file))?;
    let create = |p: &Option<PathBuf>| {
        p.as_deref()
            .map(|p| Output::create(p, opts.format).map_err(|e| format!("{}: {e}", p.display())))
            .transpose()
    };
    let mut out = create(&opts.write)?;
    let mut control = create(&opts.control)?;
    let mut drops = create(&opts.drops)?;

    let headroom = pipeline.headroom() + SLACK;
    let mut batch: Batch<Vec<u8>> = Batch::new();
    // Input frame number (1-based, as Wireshark counts) and capture time of each packet, by
    // the address of its buffer: a stage may hold a packet across batches (reorder), and the
    // heap bytes of a held buffer do not move.
    let mut origin: HashMap<usize, (u64, u64)> = HashMap::new();
    let key = |p: &Packet<Vec<u8>>| p.buffer().as_ptr() as usize;
    let mut totals = Totals::default();
    let mut now = Instant::ZERO;
    let mut done = false;
    // Room for the packets a stage gives back (reorder's released fragments).
    let fill = BATCH_SIZE.saturating_sub(pipeline.batch_room()).max(1);
    // After the last frame, one more round well past every timeout gives back what a stage
    // still holds (reorder: as expired).
    let mut flushed = pipeline.batch_room() == 0;
    while !done || !flushed {
        let flush_round = done;
        if flush_round {
            flushed = true;
            now += nf_core::Duration::from_secs(3600);
        }
        let mut first_ts = None;
        while !done && batch.len() < fill {
            let Some(rec) = reader.next_record()? else {
                done = true;
                break;
            };
            totals.read += 1;
            let frame = match rec.linktype {
                LINKTYPE_ETHERNET => rec.data,
                LINKTYPE_RAW => with_ethernet(&rec.data),
                _ => {
                    totals.skipped += 1;
                    continue;
                }
            };
            let pkt = Packet::with_headroom(&frame, headroom);
            origin.insert(key(&pkt), (totals.read, rec.ts_nanos));
            first_ts.get_or_insert(rec.ts_nanos);
            let _ = batch.push(pkt);
        }
        if let Some(ts) = first_ts {
            now = now.max(Instant::from_nanos(ts));
        }
        if batch.is_empty() && !flush_round {
            continue;
        }
        pipeline.process(now, &mut batch);
        for pkt in batch.drain() {
            let (n, ts) = origin.remove(&key(&pkt)).unwrap_or((0, now.as_nanos()));
            let (target, comment) = match pkt.meta.verdict {
                Verdict::Pass => {
                    totals.passed += 1;
                    (&mut out, format!("nf-pcap: input frame {n}"))
                }
                Verdict::Tx(port) => {
                    totals.tx += 1;
                    (&mut out, format!("nf-pcap: input frame {n}, tx {port:?}"))
                }
                Verdict::ToControl => {
                    totals.to_control += 1;
                    (
                        &mut control,
                        format!("nf-pcap: input frame {n}, to_control"),
                    )
                }
                Verdict::Drop(reason) => {
                    totals.dropped += 1;
                    (
                        &mut drops,
                        format!("nf-pcap: input frame {n}, drop {reason}"),
                    )
                }
            };
            if let Some(o) = target {
                o.write(ts, &pkt, &comment)
                    .map_err(|e| format!("{}: {e}", o.path.display()))?;
            }
        }
        while !flush_round && pipeline.poll_timeout().is_some_and(|t| t <= now) {
            pipeline.handle_timeout(now, 1024);
        }
    }
    let mut outputs = Vec::new();
    for (what, o) in [("output", out), ("control", control), ("drops", drops)] {
        if let Some(o) = o {
            o.writer.finish()?;
            outputs.push((what, o.path, o.ethernet, o.ip));
        }
    }
    report(opts, &pipeline, &totals, &outputs)
}

/// An Ethernet header (zero addresses, EtherType from the IP version) in front of a raw IP
/// packet, so every stage starts from Ethernet.
fn with_ethernet(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&ip_ethertype(ip).to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// The stages as given, `->` between stages and `+` between the session stages that share
/// one table.
fn pipeline_label(specs: &[StageSpec]) -> String {
    let mut out = String::new();
    let mut rest = specs;
    while !rest.is_empty() {
        let n = session_run(rest).max(1);
        let (group, after) = rest.split_at(n.min(rest.len()));
        if !out.is_empty() {
            out.push_str(" -> ");
        }
        let labels: Vec<String> = group.iter().map(StageSpec::label).collect();
        out.push_str(&labels.join(" + "));
        rest = after;
    }
    out
}

fn report(
    opts: &Options,
    pipeline: &Dyn,
    t: &Totals,
    outputs: &[(&str, PathBuf, u64, u64)],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut text = String::new();
    let stages = pipeline_label(&opts.stages);
    let _ = writeln!(text, "{}: {} frames read", opts.input.display(), t.read);
    if t.skipped > 0 {
        let _ = writeln!(
            text,
            "  {} skipped: link type neither Ethernet nor raw IP",
            t.skipped
        );
    }
    let _ = writeln!(text, "pipeline: {stages}");
    let _ = writeln!(
        text,
        "verdicts: {} pass, {} tx, {} to_control, {} dropped",
        t.passed, t.tx, t.to_control, t.dropped
    );
    for (what, path, eth, ip) in outputs {
        let _ = writeln!(
            text,
            "{what}: {} ({eth} Ethernet, {ip} bare IP)",
            path.display()
        );
    }
    let _ = writeln!(text);
    pipeline.visit_counters(&mut |stage, counter, value| {
        let _ = writeln!(text, "{stage:>16} {counter:<32} {value}");
    });
    let (mut stdout, mut stderr) = (io::stdout().lock(), io::stderr().lock());
    if opts.prometheus {
        stderr.write_all(text.as_bytes())?;
        stdout.write_all(prometheus::render(&[pipeline]).as_bytes())?;
    } else {
        stdout.write_all(text.as_bytes())?;
    }
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn labels(s: &str) -> Vec<String> {
        parse_pipeline(s)
            .unwrap()
            .iter()
            .map(StageSpec::label)
            .collect()
    }

    #[test]
    fn adjacent_session_stages_in_order_share_one_table() {
        let grouped = |s: &str| pipeline_label(&parse_pipeline(s).unwrap());
        let nat = "snat:rfc,public=203.0.113.1";
        assert_eq!(
            grouped(
                "parse -> conntrack -> sg,allow=tcp:80 -> snat,public=203.0.113.1 -> lb,vip=192.0.2.10:80,backend=10.1.0.1:80"
            ),
            format!(
                "parse -> conntrack + sg,allow=tcp:80 + {nat} -> lb,vip=192.0.2.10:80,backend=10.1.0.1:80"
            )
        );
        // Out of order, or one kind twice: tables of their own, as written.
        assert_eq!(
            grouped("snat,public=203.0.113.1 -> sg,allow=all -> conntrack"),
            format!("{nat} -> sg,allow=all -> conntrack")
        );
        assert_eq!(
            grouped("conntrack -> conntrack -> parse -> sg,allow=all"),
            "conntrack -> conntrack -> parse -> sg,allow=all"
        );
        let stages = |s: &str| {
            let mut names = Vec::new();
            build(&parse_pipeline(s).unwrap())
                .unwrap()
                .visit_counters(&mut |stage, _, _| {
                    if !names.contains(&stage) {
                        names.push(stage);
                    }
                });
            names
        };
        assert_eq!(
            stages("parse -> sg,allow=all -> snat,public=203.0.113.1 -> conntrack"),
            [
                "parse",
                "conntrack",
                "security_groups",
                "snat",
                "conntrack_2"
            ]
        );
    }

    #[test]
    fn pipelines_split_on_arrows_and_commas() {
        let want = [
            "decap:gwlb",
            "conntrack",
            "encap:vxlan,vni=7,10.0.0.1->10.0.0.2",
        ];
        assert_eq!(
            labels("decap:gwlb -> conntrack -> encap:vxlan,vni=7,src=10.0.0.1,dst=10.0.0.2"),
            want
        );
        assert_eq!(
            labels("decap:gwlb,conntrack,encap:vxlan,vni=7,src=10.0.0.1,dst=10.0.0.2"),
            want
        );
        assert_eq!(labels("decap"), ["decap:any"]);
        assert_eq!(
            labels("parse -> conntrack,window=on"),
            ["parse", "conntrack,window=on"]
        );
        assert!(parse_pipeline("conntrack,window=maybe").is_err());
    }

    #[test]
    fn stage_parameters_reach_the_configs() {
        let specs = parse_pipeline(
            "decap:vxlan,port=8472,udp-checksum=ignore,option=0:0x80,non-tunnel=drop",
        )
        .unwrap();
        let StageSpec::Decap { config, .. } = &specs[0] else {
            panic!("{specs:?}");
        };
        assert_eq!(
            config.ports,
            [(4789, TunnelKind::Vxlan), (8472, TunnelKind::Vxlan)]
        );
        assert!(!config.verify_udp_checksum);
        assert_eq!(config.options, [OptionSpec::known(0, 0)]);
        assert_eq!(config.non_tunnel, NonTunnel::Drop);
        let specs = parse_pipeline(
            "encap:geneve,vni=zone,src=2001:db8::1,dst=2001:db8::2,payload=ip,mtu=9000,port=6082",
        )
        .unwrap();
        let StageSpec::Encap { config, .. } = &specs[0] else {
            panic!("{specs:?}");
        };
        assert_eq!(config.vni, VniSource::Zone);
        assert_eq!(config.payload, Payload::Ip);
        assert_eq!((config.mtu, config.dst_port), (9000, 6082));
    }

    #[test]
    fn bad_command_lines_are_refused_with_a_reason() {
        for (line, want) in [
            ("x.pcap -p bogus", "unknown stage"),
            ("x.pcap -p decap:nope", "unknown decap profile"),
            ("x.pcap -p decap:any,port=1", "needs :geneve or :vxlan"),
            ("x.pcap -p vni=1", "before any stage"),
            ("x.pcap -p encap:vxlan,vni=1", "src=IP and dst=IP"),
            (
                "x.pcap -p encap:vxlan,vni=1,src=10.0.0.1,dst=::1",
                "families differ",
            ),
            (
                "x.pcap -p encap:vxlan,vni=1,src=10.0.0.1,dst=10.0.0.2,payload=ip",
                "only Ethernet",
            ),
            ("x.pcap -p encap:gre", "encap:geneve or encap:vxlan"),
            ("x.pcap -p parse,x=1", "unknown parameter"),
            ("x.pcap -p parse -s conntrack", "not both"),
            ("x.pcap --format xml", "unknown format"),
            ("x.pcap y.pcap", "more than one input"),
            ("-w out.pcapng", "no input"),
            ("x.pcap --bogus", "unknown option"),
            (
                "x.pcap -w a.pcapng --drops a.pcapng",
                "named for two outputs",
            ),
            ("x.pcap -p snat", "needs public=IP"),
            (
                "x.pcap -p snat:nope,public=192.0.2.1",
                "unknown snat profile",
            ),
            (
                "x.pcap -p snat,public=192.0.2.1,forward=tcp:80",
                "want tcp|udp:PORT=IP:PORT",
            ),
            (
                "x.pcap -p snat,public=192.0.2.1,inside=10.0.0.0",
                "ADDR/LEN",
            ),
            (
                "x.pcap -p snat:hyperplane,public=192.0.2.1,filtering=eif",
                "endpoint-independent mapping",
            ),
            (
                "x.pcap -p lb,vip=192.0.2.10:80",
                "needs vip=IP:PORT and backend",
            ),
            (
                "x.pcap -p lb,vip=192.0.2.10:80,backend=[2001:db8::1]:80",
                "VIP-family",
            ),
            (
                "x.pcap -p lb,vip=192.0.2.10:80/sctp,backend=10.0.0.1:80",
                "not tcp or udp",
            ),
            ("x.pcap -p lb:dnat,vip=192.0.2.10:80", "no argument"),
            ("x.pcap -p sg", "needs allow="),
            ("x.pcap -p sg,allow=sctp", "not tcp, udp, icmp or all"),
            ("x.pcap -p sg,allow=tcp:90-80", "allow=tcp:90-80"),
            ("x.pcap -p sg,allow=all:80", "all takes no ports"),
            ("x.pcap -p sg,allow=icmp:300", "one ICMP type"),
            (
                "x.pcap -p sg,allow=tcp@10.0.0.0",
                "want PROTO[:PORTS][@ADDR/LEN]",
            ),
            ("x.pcap -p sg,allow=tcp@10.0.0.1/8", "allow=tcp@10.0.0.1/8"),
            ("x.pcap -p sg,allow-out=udp:70000", "allow-out=70000"),
            (
                "x.pcap -p sg,allow-out=tcp@10.0.0.0",
                "allow-out=tcp@10.0.0.0",
            ),
            (
                "x.pcap -p sg,inside=10.0.0.0,allow=tcp",
                "inside=10.0.0.0: want ADDR/LEN",
            ),
            (
                "x.pcap -p sg,inside=10.0.0.1/8,allow=tcp",
                "inside=10.0.0.1/8",
            ),
            ("x.pcap -p sg,inside=10.0.0.0/8", "needs allow="),
        ] {
            let e = Options::parse(&args(line)).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
        assert!(Options::parse(&args("x.pcap --help")).unwrap().is_none());
        let o = Options::parse(&args("x.pcap")).unwrap().unwrap();
        assert_eq!(
            o.stages.iter().map(StageSpec::label).collect::<Vec<_>>(),
            ["parse", "conntrack"]
        );
    }

    #[test]
    fn snat_and_lb_parameters_reach_their_configs() {
        let specs = parse_pipeline(
            "snat:hyperplane,public=203.0.113.1,public=203.0.113.2,inside=10.0.0.0/8,\
             forward=udp:53=10.0.0.53:5353,window=on",
        )
        .unwrap();
        let StageSpec::Snat {
            config,
            window,
            label,
        } = &specs[0]
        else {
            panic!("{specs:?}");
        };
        assert_eq!(config.allocator.profile, nf_nat::Profile::Hyperplane);
        assert_eq!(config.allocator.public_ips.len(), 2);
        assert!(*window);
        assert!(
            label.starts_with("snat:hyperplane,public=203.0.113.1"),
            "{label}"
        );
        assert_eq!(
            labels("snat,public=192.0.2.1"),
            ["snat:rfc,public=192.0.2.1"]
        );

        let specs = parse_pipeline(
            "lb,vip=192.0.2.10:53/udp,vip=192.0.2.11,backend=10.1.0.1:53/3,backend=10.1.0.2:0,hash=src",
        )
        .unwrap();
        let StageSpec::Lb { listeners, .. } = &specs[0] else {
            panic!("{specs:?}");
        };
        let l = listeners.listeners();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[0].on(),
            ListenerMatch::Port {
                vip: "192.0.2.10".parse().unwrap(),
                port: 53,
                proto: nf_core::flow::proto::UDP
            }
        );
        assert_eq!(l[1].on(), ListenerMatch::Vip("192.0.2.11".parse().unwrap()));
        assert_eq!(l[0].fields(), HashFields::SourceIp);
        assert_eq!(l[1].pool().members().len(), 2);
        assert!(matches!(l[0].selection(), Selection::Maglev { .. }));
        assert!(build(&specs).is_ok());
        let specs =
            parse_pipeline("lb,vip=192.0.2.10:80,backend=10.1.0.1:80,select=rendezvous").unwrap();
        let StageSpec::Lb { listeners, .. } = &specs[0] else {
            panic!("{specs:?}");
        };
        assert_eq!(listeners.listeners()[0].selection(), Selection::Rendezvous);
        assert!(parse_pipeline("lb,vip=192.0.2.10:80,backend=10.1.0.1:80,select=ring").is_err());

        let specs = parse_pipeline(
            "sg,allow=tcp:80-90@10.0.0.0/8,allow=udp:53,allow=all@2001:db8::/32,zone=7",
        )
        .unwrap();
        let StageSpec::Sg { rules, zones, .. } = &specs[0] else {
            panic!("{specs:?}");
        };
        // The UDP rule from anywhere is one rule per family.
        assert_eq!(rules.len(SgDirection::Ingress), 4);
        assert_eq!(rules.len(SgDirection::Egress), 0);
        assert_eq!(zones, &[7]);
        assert!(build(&specs).is_ok());
    }

    #[test]
    fn bare_ip_is_told_from_ethernet() {
        let ip = nf_core::wire::Frame::ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .udp(1, 2)
            .to_vec()
            .unwrap();
        let eth = Packet::with_headroom(&ip, 0);
        assert!(!is_bare_ip(&eth));
        let bare = Packet::with_headroom(&ip[14..], 0);
        assert!(is_bare_ip(&bare));
        assert_eq!(with_ethernet(&ip[14..])[12..], ip[12..]);
    }
}
