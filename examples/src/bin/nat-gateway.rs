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
    use nf_core::{Batch, Instant, ParseStage, Stage, StageControl};
    use nf_examples::io::RingConfig;
    use nf_examples::router::{Ipv4Net, PortConfig, Route, Router};
    use nf_examples::say;
    use std::net::Ipv4Addr;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The longest an idle gateway sleeps in `poll` before it checks for signals.
    const IDLE_WAIT_MS: i32 = 100;
    const INSIDE: usize = 0;
    const OUTSIDE: usize = 1;

    const USAGE: &str = "\
usage: nat-gateway --inside IF --inside-addr IPV4/LEN --outside IF --outside-addr IPV4/LEN
                   [--gateway IPV4] [--public IPV4]... [--profile off]
                   [--duration SECS]

Routes between an inside and an outside network (run as root; both interfaces
without addresses in the kernel). Prints counters on SIGINT/SIGTERM (and exits),
on SIGUSR1, or after --duration.

  --inside IF            interface towards the inside hosts
  --inside-addr A/LEN    the gateway's inside address and the inside prefix
  --outside IF           interface towards the outside
  --outside-addr A/LEN   the gateway's outside address and its on-link prefix
  --gateway IPV4         the outside next hop for destinations not on-link
  --public IPV4          a public address (repeatable; default: the outside address)
  --profile P            off: route without translating
  --duration SECS        exit after SECS seconds
  -h, --help             this text";

    /// What the gateway does between receive and forward.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Profile {
        /// Route only.
        Off,
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
        duration: Option<f64>,
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
        let (mut gateway, mut public, mut profile, mut duration) =
            (None, Vec::new(), Profile::Off, None);
        while let Some(flag) = it.next() {
            if matches!(flag.as_str(), "-h" | "--help") {
                return Ok(None);
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
                        _ => return Err(bad("a profile (off)")),
                    }
                }
                "--duration" => duration = Some(nf_examples::cli::seconds(&flag, &value)?),
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
            duration,
        }))
    }

    /// The stages between receive and forward.
    struct Pipeline {
        parse: ParseStage,
    }

    impl Pipeline {
        fn new(_args: &Args) -> Self {
            Self {
                parse: ParseStage::default(),
            }
        }

        fn process(&mut self, now: Instant, batch: &mut Batch<nf_examples::io::RingFrame>) {
            self.parse.process(now, batch);
        }

        fn stages(&self) -> Vec<&dyn StageControl> {
            vec![&self.parse]
        }
    }

    fn print_counters(router: &mut Router, pipeline: &Pipeline, secs: f64) {
        say!("nat-gateway: counters after {secs:.2} s");
        router.visit_counters(&mut |port, name, v| say!("{port}.{name} {v}"));
        for stage in pipeline.stages() {
            stage.visit_counters(&mut |stage, name, v| say!("{stage}.{name} {v}"));
        }
    }

    fn run(args: &Args) -> Result<(), String> {
        let stop = Arc::new(AtomicBool::new(false));
        let show = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .map_err(|e| format!("signal handler: {e}"))?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&show))
            .map_err(|e| format!("signal handler: {e}"))?;
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
        let mut router =
            Router::open(ports, &routes, &RingConfig::default()).map_err(|e| e.to_string())?;
        let mut pipeline = Pipeline::new(args);
        say!(
            "nat-gateway: ready: inside {} {}, outside {} {}, profile {:?}, public {:?}",
            args.inside,
            args.inside_addr,
            args.outside,
            args.outside_addr,
            args.profile,
            args.public
        );
        let clock = nf_core::StdClock::new();
        let start = std::time::Instant::now();
        let deadline = args.duration.map(std::time::Duration::from_secs_f64);
        let mut batch = Batch::new();
        while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| start.elapsed() < d) {
            let now = clock.now();
            let mut moved = 0;
            for port in [INSIDE, OUTSIDE] {
                moved += router.recv(port, &mut batch);
                pipeline.process(now, &mut batch);
                router.forward(port, now, &mut batch);
            }
            router.flush().map_err(|e| e.to_string())?;
            if show.swap(false, Ordering::Relaxed) {
                print_counters(&mut router, &pipeline, start.elapsed().as_secs_f64());
            }
            if moved == 0 {
                router
                    .wait(now, IDLE_WAIT_MS)
                    .map_err(|e| format!("waiting for frames: {e}"))?;
                router.flush().map_err(|e| e.to_string())?;
            }
        }
        print_counters(&mut router, &pipeline, start.elapsed().as_secs_f64());
        Ok(())
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
            assert_eq!(a.gateway, Some(Ipv4Addr::new(203, 0, 113, 254)));
            assert_eq!(a.inside_addr.len, 24);
            assert_eq!(parse_args(argv("--help").into_iter()), Ok(None));
            for bad in [
                "--inside-addr 10.0.0.1/33",
                "--profile nope",
                "--public x",
                "--duration -1",
                "--bogus 1",
                "--inside ig",
            ] {
                assert!(parse_args(argv(bad).into_iter()).is_err(), "{bad}");
            }
        }
    }
}
