//! `nat-gateway`: a NAT gateway between an inside and an outside network, built from
//! nf-core's parse and connection-tracking stages and nf-nat's SNAT session service, on
//! `PACKET_MMAP` rings with no allocation per frame ([`nf_examples::router`]).
//!
//! ```text
//!  inside hosts ─► RX ring ─► parse ─► conntrack + SNAT ─► route, TTL − 1 ─► TX ring ─► outside
//!  inside hosts ◄─ TX ring ◄─ route, TTL − 1 ◄─ conntrack + SNAT (replies) ◄─ parse ◄─ RX ring ◄─┘
//! ```
//!
//! The gateway owns its addresses itself (the interfaces have none in the kernel): it answers
//! ARP for `--inside-addr` on the inside and for `--outside-addr` and every `--public`
//! address on the outside, learns its neighbours, and routes: the inside prefix to the
//! inside, everything else to the outside (on-link, or `--gateway`). `--profile off` routes
//! without translating, which gives the figures of the I/O and routing alone.
//!
//! On SIGINT/SIGTERM, or after `--duration` seconds, it prints its counters (`name value`
//! per line) and exits; on SIGUSR1 it prints them and goes on.
//!
//! ```text
//! ip netns add in; ip netns add gw; ip netns add out
//! ip -n in link add ih type veth peer name ig netns gw
//! ip -n out link add oh type veth peer name og netns gw
//! ip -n in addr add 10.0.0.2/24 dev ih; ip -n in route add default via 10.0.0.1
//! ip -n out addr add 203.0.113.2/24 dev oh
//! ip netns exec in ethtool -K ih tx off; ip netns exec out ethtool -K oh tx off
//! # ... bring every link up, then:
//! ip netns exec gw nat-gateway --inside ig --inside-addr 10.0.0.1/24 \
//!     --outside og --outside-addr 203.0.113.1/24 --profile rfc
//! ip netns exec in ping 203.0.113.2
//! ```
//!
//! `examples/tests/nat_gateway.rs` builds exactly this lab.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("nat-gateway: runs on Linux only (AF_PACKET rings)");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod linux {
    use nf_core::conntrack::{
        Conntrack, ConntrackConfig, FragmentReorder, ReorderConfig, Sizes, TcpWindow,
    };
    use nf_core::reply::IcmpOrigin;
    use nf_core::{
        Batch, DropReason, Family, Instant, ParseStage, PortId, Stage, StageControl, Verdict,
    };
    use nf_examples::io::{IoKind, RingConfig, RingFrame};
    use nf_examples::router::{Function, Ipv4Net, PortConfig, Route, Router, serve};
    use nf_examples::say;
    use nf_nat::{
        AllocatorConfig, Filtering, InsidePrefix, PortForward, Snat, SnatConfig, nat_timeouts,
    };
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::process::ExitCode;

    const INSIDE: usize = 0;
    const OUTSIDE: usize = 1;

    const USAGE: &str = "\
usage: nat-gateway --inside IF --inside-addr IPV4/LEN --outside IF --outside-addr IPV4/LEN
                   [--gateway IPV4] [--public IPV4]... [--profile P] [--filtering F]
                   [--forward PROTO:PORT=IPV4:PORT]... [--sessions N] [--no-window]
                   [--io auto|packet|xdp] [--cpu N] [--duration SECS] [--metrics A:P]

Routes between an inside and an outside network (run as root; both interfaces
without addresses in the kernel). Prints counters on SIGINT/SIGTERM (and exits),
on SIGUSR1, or after --duration.

  --inside IF            interface towards the inside hosts
  --inside-addr A/LEN    the gateway's inside address and the inside prefix
  --outside IF           interface towards the outside
  --outside-addr A/LEN   the gateway's outside address and its on-link prefix
  --gateway IPV4         the outside next hop for destinations not on-link
  --public IPV4          a public address (repeatable; default: the outside address)
  --profile P            rfc (default): endpoint-independent mapping (RFC 4787/5382);
                         hyperplane: ports unique per destination, 350 s idle,
                         then a RST to the inside host;
                         cgn: port blocks per subscriber (RFC 6888);
                         off: route without translating
  --filtering F          apdf (default): replies only from the flow's destination;
                         eif: any outside host may reach a live mapping (rfc, cgn)
  --forward P:N=A:M      forward PROTO (tcp|udp) port N of the first public address to
                         inside A:M (repeatable)
  --sessions N           session table size (default 65536)
  --no-window            no TCP window tracking (on by default)
  --io auto|packet|xdp   frame I/O: AF_XDP where it opens, else PACKET_MMAP rings
                         (auto, the default), or either alone
  --cpu N                pin the packet loop to CPU N
  --duration SECS        exit after SECS seconds
  --metrics A:P          serve the counters in the Prometheus text format at
                         http://A:P/metrics (every second)
  -h, --help             this text";

    /// What the gateway does between receive and forward.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Profile {
        /// Route only.
        Off,
        /// Translate with this nf-nat profile.
        Nat(nf_nat::Profile),
    }

    /// The command line.
    #[derive(Clone, Debug, PartialEq)]
    struct Args {
        inside: String,
        inside_addr: Ipv4Net,
        outside: String,
        outside_addr: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        public: Vec<Ipv4Addr>,
        profile: Profile,
        filtering: Filtering,
        forwards: Vec<(u8, u16, SocketAddrV4)>,
        sessions: u32,
        window: bool,
        duration: Option<f64>,
        /// `--metrics`.
        metrics: Option<SocketAddr>,
        io: IoKind,
        cpu: Option<usize>,
    }

    pub(crate) fn main() -> ExitCode {
        nf_examples::cli::main_with(
            "nat-gateway",
            USAGE,
            |argv| parse_args(argv.into_iter()),
            |args| run(&args),
        )
    }

    /// Parses the arguments; `Ok(None)` for `--help`.
    fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let (mut inside, mut inside_addr, mut outside, mut outside_addr) = (None, None, None, None);
        let (mut gateway, mut public, mut duration) = (None, Vec::new(), None);
        let mut metrics = None;
        let (mut io, mut cpu) = (IoKind::Auto, None);
        let mut profile = Profile::Nat(nf_nat::Profile::Rfc);
        let (mut filtering, mut forwards, mut sessions, mut window) =
            (Filtering::AddressAndPortDependent, Vec::new(), 65_536, true);
        while let Some(flag) = it.next() {
            if matches!(flag.as_str(), "-h" | "--help") {
                return Ok(None);
            }
            if flag == "--no-window" {
                window = false;
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |what: &str| format!("{flag} {value}: not {what}");
            match flag.as_str() {
                "--inside" => inside = Some(value),
                "--outside" => outside = Some(value),
                "--inside-addr" => inside_addr = Some(value.parse::<Ipv4Net>()?),
                "--outside-addr" => outside_addr = Some(value.parse::<Ipv4Net>()?),
                "--gateway" => gateway = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
                "--public" => public.push(value.parse().map_err(|_| bad("an IPv4 address"))?),
                "--profile" => {
                    profile = match value.as_str() {
                        "off" => Profile::Off,
                        "rfc" => Profile::Nat(nf_nat::Profile::Rfc),
                        "hyperplane" => Profile::Nat(nf_nat::Profile::Hyperplane),
                        "cgn" => Profile::Nat(nf_nat::Profile::Cgn(Default::default())),
                        _ => return Err(bad("a profile (rfc, hyperplane, cgn, off)")),
                    }
                }
                "--filtering" => {
                    filtering = match value.as_str() {
                        "apdf" => Filtering::AddressAndPortDependent,
                        "eif" => Filtering::EndpointIndependent,
                        _ => return Err(bad("a filtering (apdf, eif)")),
                    }
                }
                "--forward" => {
                    forwards.push(parse_forward(&value).ok_or_else(|| bad("PROTO:PORT=IPV4:PORT"))?)
                }
                "--sessions" => {
                    sessions = value
                        .parse()
                        .ok()
                        .filter(|n| (64..=1 << 24).contains(n))
                        .ok_or_else(|| bad("a session count from 64 to 16777216"))?
                }
                "--duration" => duration = Some(nf_examples::cli::seconds(&flag, &value)?),
                "--metrics" => metrics = Some(value.parse().map_err(|_| bad("an IP:port"))?),
                "--cpu" => cpu = Some(value.parse().map_err(|_| bad("a CPU number"))?),
                "--io" => io = value.parse().map_err(|_| bad("auto, packet or xdp"))?,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        let need = |name: &str| format!("{name} is required");
        let outside_addr: Ipv4Net = outside_addr.ok_or_else(|| need("--outside-addr"))?;
        if public.is_empty() {
            public.push(outside_addr.addr);
        }
        Ok(Some(Args {
            inside: inside.ok_or_else(|| need("--inside"))?,
            inside_addr: inside_addr.ok_or_else(|| need("--inside-addr"))?,
            outside: outside.ok_or_else(|| need("--outside"))?,
            outside_addr,
            gateway,
            public,
            profile,
            filtering,
            forwards,
            sessions,
            window,
            duration,
            metrics,
            io,
            cpu,
        }))
    }

    /// `tcp:8080=10.0.0.2:80` as (protocol, public port, inside address).
    fn parse_forward(s: &str) -> Option<(u8, u16, SocketAddrV4)> {
        let (proto, rest) = s.split_once(':')?;
        let (port, inside) = rest.split_once('=')?;
        let proto = match proto {
            "tcp" => nf_core::flow::proto::TCP,
            "udp" => nf_core::flow::proto::UDP,
            _ => return None,
        };
        Some((proto, port.parse().ok()?, inside.parse().ok()?))
    }

    /// Connection tracking with SNAT and window tracking (optional). SNAT comes first: a
    /// TCP segment from inside without a session (hyperplane: idle for 350 s) gets its RST
    /// back from SNAT, which a tuple only asks its first service for.
    type Nat = Conntrack<(Snat, Option<TcpWindow>)>;

    /// The stages between receive and forward.
    struct Pipeline {
        parse: ParseStage,
        /// Later fragments that come before their first wait for it (RFC 4787 REQ-14),
        /// copied out of the receive ring while they wait.
        reorder: FragmentReorder<RingFrame>,
        nat: Option<Nat>,
        /// Frames dropped before the stages: from the outside to an address that is not
        /// public, or from the inside with a source outside the inside prefix.
        spoofed: u64,
        inside: Ipv4Net,
        public: Vec<Ipv4Addr>,
    }

    impl Pipeline {
        fn new(args: &Args) -> Result<Self, String> {
            let Profile::Nat(profile) = &args.profile else {
                return Ok(Self {
                    parse: ParseStage::default(),
                    reorder: reorder(),
                    nat: None,
                    spoofed: 0,
                    inside: args.inside_addr,
                    public: args.public.clone(),
                });
            };
            let public: Vec<IpAddr> = args.public.iter().map(|a| IpAddr::V4(*a)).collect();
            // A per-run secret: port choice must not be predictable from outside.
            let secret = nf_examples::cli::random_secret();
            let ports = AllocatorConfig::new(*profile, public, secret)
                .with_max_mappings(args.sessions as usize);
            let inside = args.inside_addr;
            let mut cfg = SnatConfig::new(ports)
                .with_inside(InsidePrefix::new(IpAddr::V4(inside.addr), inside.len))
                .with_filtering(args.filtering)
                .with_v6_sessions(64)
                // The inside port: the router sends the RST on to the inside host.
                .with_idle_reset(
                    (*profile == nf_nat::Profile::Hyperplane).then_some(PortId(INSIDE as u16)),
                )
                // Flows refused for lack of ports or sessions: ICMP administratively
                // prohibited from the gateway's inside address (RFC 5508 REQ-8).
                .with_refusal_icmp(Some(IcmpOrigin::new(
                    Some(IpAddr::V4(inside.addr)),
                    None,
                    PortId(INSIDE as u16),
                )));
            let first = args.public.first().copied().ok_or("no public address")?;
            for (proto, port, to) in &args.forwards {
                let public = SocketAddr::V4(SocketAddrV4::new(first, *port));
                cfg = cfg.with_forward(PortForward::new(*proto, public, SocketAddr::V4(*to)));
            }
            let timeouts = nat_timeouts(profile);
            let snat = Snat::new(cfg).map_err(|e| format!("NAT config: {e}"))?;
            let mut ct = ConntrackConfig::new(nf_examples::cli::random_secret()).sizes(Sizes {
                v4: args.sessions.saturating_mul(2),
                v6: 64,
            });
            ct.v4.timeouts = timeouts;
            ct.v6.timeouts = timeouts;
            let window = args.window.then(TcpWindow::new);
            let nat = Conntrack::new(ct, (snat, window)).map_err(|e| format!("conntrack: {e}"))?;
            Ok(Self {
                parse: ParseStage::default(),
                reorder: reorder(),
                nat: Some(nat),
                spoofed: 0,
                inside: args.inside_addr,
                public: args.public.clone(),
            })
        }
    }

    fn reorder() -> FragmentReorder<RingFrame> {
        FragmentReorder::new(ReorderConfig::new(nf_examples::cli::random_secret()))
            .on_hold(RingFrame::detach)
    }

    impl Function for Pipeline {
        /// Drops what may not enter from `port` (`spoofed`), then the stages.
        fn process(&mut self, now: Instant, port: usize, batch: &mut Batch<RingFrame>) {
            self.parse.process(now, batch);
            let Some(nat) = &mut self.nat else {
                return;
            };
            for p in batch.packets_mut() {
                if p.meta.verdict != Verdict::Pass || p.meta.flow.family() != Family::V4 {
                    continue;
                }
                let (src, dst) = (p.meta.flow.src_ip(), p.meta.flow.dst_ip());
                let ok = match (port, src, dst) {
                    (INSIDE, IpAddr::V4(s), _) => self.inside.contains(s),
                    (_, _, IpAddr::V4(d)) => self.public.contains(&d),
                    _ => false,
                };
                if !ok {
                    self.spoofed += 1;
                    p.meta.verdict = Verdict::Drop(DropReason::NatNoMapping);
                }
            }
            self.reorder.process(now, batch);
            nat.process(now, batch);
        }

        fn batch_room(&self) -> usize {
            self.reorder.batch_room()
        }

        fn visit_counters(&self, f: &mut dyn FnMut(&str, &str, u64)) {
            f("gateway", "spoofed", self.spoofed);
            self.parse.visit_counters(&mut |s, c, v| f(s, c, v));
            if let Some(n) = &self.nat {
                self.reorder.visit_counters(&mut |s, c, v| f(s, c, v));
                n.visit_counters(&mut |s, c, v| f(s, c, v));
            }
        }

        /// Runs due timers (session expiry, port quarantine) with bounded work.
        fn timers(&mut self, now: Instant) {
            if let Some(n) = &mut self.nat
                && n.poll_timeout().is_some_and(|t| t <= now)
            {
                n.handle_timeout(now, 4096);
            }
        }
    }

    fn run(args: &Args) -> Result<(), String> {
        if let Some(cpu) = args.cpu {
            nf_examples::io::pin_to_cpu(cpu).map_err(|e| format!("--cpu {cpu}: {e}"))?;
        }
        let ports = vec![
            PortConfig {
                name: args.inside.clone(),
                addrs: vec![args.inside_addr],
                answer: Vec::new(),
            },
            PortConfig {
                name: args.outside.clone(),
                addrs: vec![args.outside_addr],
                answer: args.public.clone(),
            },
        ];
        let mut routes = Vec::new();
        if let Some(gw) = args.gateway {
            routes.push(Route {
                to: "0.0.0.0/0".parse()?,
                port: OUTSIDE,
                via: Some(gw),
            });
        } else {
            routes.push(Route {
                to: "0.0.0.0/0".parse()?,
                port: OUTSIDE,
                via: None,
            });
        }
        let mut router = Router::open(ports, &routes, &RingConfig::default(), args.io)
            .map_err(|e| e.to_string())?;
        let mut pipeline = Pipeline::new(args)?;
        say!(
            "nat-gateway: ready: inside {} {}, outside {} {}, profile {:?}, public {:?}",
            args.inside,
            args.inside_addr,
            args.outside,
            args.outside_addr,
            args.profile,
            args.public
        );
        let metrics = nf_examples::prometheus::start_for("nat-gateway", args.metrics)?;
        serve(
            "nat-gateway",
            &mut router,
            &mut pipeline,
            args.duration,
            metrics.as_ref(),
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_the_command_line() {
            let argv = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
            let a = parse_args(
                argv(
                    "--inside ig --inside-addr 10.0.0.1/24 --outside og \
                     --outside-addr 203.0.113.1/24 --gateway 203.0.113.254 --duration 2",
                )
                .into_iter(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(a.public, vec![Ipv4Addr::new(203, 0, 113, 1)]);
            assert_eq!(a.profile, Profile::Nat(nf_nat::Profile::Rfc));
            let b = parse_args(
                argv(
                    "--inside ig --inside-addr 10.0.0.1/24 --outside og --outside-addr 203.0.113.1/24 \
                     --profile hyperplane --forward tcp:8080=10.0.0.2:80 --no-window --sessions 1000 \
                     --metrics 127.0.0.1:9464",
                )
                .into_iter(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(b.forwards, vec![(6, 8080, "10.0.0.2:80".parse().unwrap())]);
            assert!(!b.window && b.sessions == 1000);
            assert_eq!(b.metrics, Some("127.0.0.1:9464".parse().unwrap()));
            assert_eq!(a.metrics, None);
            assert_eq!(a.gateway, Some(Ipv4Addr::new(203, 0, 113, 254)));
            assert_eq!(a.inside_addr.len, 24);
            assert_eq!(parse_args(argv("--help").into_iter()), Ok(None));
            for bad in [
                "--inside-addr 10.0.0.1/33",
                "--profile nope",
                "--filtering x",
                "--forward tcp:80",
                "--forward icmp:1=10.0.0.2:1",
                "--sessions 1",
                "--public x",
                "--duration -1",
                "--metrics 9464",
                "--bogus 1",
                "--cpu -1",
                "--io tap",
                "--inside ig",
            ] {
                assert!(parse_args(argv(bad).into_iter()).is_err(), "{bad}");
            }
        }
    }
}
