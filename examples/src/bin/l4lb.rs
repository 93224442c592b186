//! `l4lb`: an L4 load balancer in front of a pool of backends, built from nf-core's parse
//! and connection-tracking stages and nf-lb's [`Lb`](nf_lb::Lb) session service (Maglev tables, keyed,
//! weights, drain), on `PACKET_MMAP` rings ([`nf_examples::router`]).
//!
//! ```text
//!  clients ─► RX ─► parse ─► conntrack + LB: VIP:port → backend (DNAT) ─► TX ─► backends
//!  clients ◄─ TX ◄─ un-DNAT (source back to the VIP) ◄─ conntrack + LB ◄─ parse ◄─ RX ◄─┘
//! ```
//!
//! The load balancer answers ARP for its client-side address and the VIP, and for its
//! backend-side address; backends route their answers back through it (their default route).
//! The client's address is kept (the backends see who connects, like AWS NLB). A flow keeps
//! its backend for as long as that backend is up or draining; a removed or down backend's
//! flows are reset (a TCP segment answered by a RST from the VIP, anything else dropped as
//! `lb_backend_down`), or with `--on-down rehash` moved to the table's choice in a new
//! session (a UDP flow carries on with its new backend, whose answers are un-NATed; counted
//! `lb.rehashed` and `conntrack.renewed`). When the session table refuses a flow it is
//! still forwarded by the hash alone (counted `lb.stateless`).
//!
//! IPv6 VIPs (`--vip [2001:db8:10::10]:80`, DNAT mode) need `--client-addr6` and
//! `--backend-addr6` (and `--gateway6` for clients off-link): the router answers and
//! resolves IPv6 neighbours on both sides, and each VIP balances over the backends of its
//! own family from the same file (`[fd00:1::11]:0 weight=1`). With `--bgp-peer` the IPv6
//! VIPs are announced over the same session (multiprotocol BGP, next hop
//! `--client-addr6`) when the router offers IPv6 unicast.
//!
//! Several `--vip`s balance over the same backends (a backend port of 0 keeps the VIP's
//! port). A VIP hashes the whole 5-tuple unless it names fewer fields: `/3tuple` (source and
//! destination address and protocol: every connection of a client to one backend, which
//! protocols with a control and a data connection, like iperf3 or FTP, need), `/2tuple` or
//! `/src`.
//!
//! With `--mode encap` (direct server return) nothing is rewritten: each packet for a VIP is
//! sent whole, inside VXLAN, to its backend's address, and the backend — a VXLAN device with
//! the VIP on it — answers the client directly, not through the load balancer. The inner
//! frame's destination MAC becomes `--inner-mac` (the backends' VXLAN devices' MAC); the
//! port in the backends file is then part of the backend's identity only.
//! Sessions are then one-sided: the client's ACK after its SYN establishes a TCP session
//! (the backend's SYN+ACK never passes here), and an ICMP error about a direct reply (a
//! router's fragmentation needed, sent to the VIP) follows the flow to its backend.
//!
//! ICMP errors about DNAT flows are translated both ways (`lb.icmp_errors_translated`): a
//! backend's port unreachable or a router's fragmentation needed behind the load balancer
//! reaches the client from the VIP, quoting what the client sent.
//!
//! The backends come from a file, one per line (`#` starts a comment):
//!
//! ```text
//! 10.1.0.11:8000 weight=1
//! 10.1.0.12:8000 weight=2 state=draining
//! 10.1.0.13:8000 weight=3 state=down
//! [fd00:1::11]:8000 weight=1
//! ```
//!
//! Several load balancers can stand behind one ECMP route (`--lb-key` gives them the same
//! Maglev tables). With `--sync-listen` and a `--sync-peer` for every other node, each keeps
//! copies of every other's sessions ([`nf_examples::sync`]): when one fails, or the router
//! in front moves flows, the node they land on forwards them by the copies, to the backends
//! they started on, even after the pool changed. Under DNAT the backends' answers may then
//! return through any node (the backends' default route an ECMP route over every node's
//! backend-side address): a node un-NATs them through its copy of the session, or by the
//! hash alone before the copy arrives (`lb.stateless_replies`), and tracks its own sessions
//! one-sided ([`Listener::with_one_sided`](nf_lb::Listener::with_one_sided)), so that a
//! connection whose SYN+ACK went elsewhere is established all the same. With `--bgp-peer` each node announces the
//! VIPs to the router itself ([`nf_examples::bgp`]), and with sync only once it holds its
//! peers' sessions: a node that comes back takes traffic only after its resyncs. The
//! session can be TCP-MD5 signed (`--bgp-password-file`), and with `--bfd`
//! ([`nf_examples::bfd`]) the router finds a node gone within 300 ms (by default:
//! `--bfd-interval` and `--bfd-multiplier` set it; every BFD packet signed with
//! `--bfd-key-file`), and the node ends its BGP session as soon as BFD finds the
//! router gone ([`nf_examples::announce`]). `--sync-key-file`
//! authenticates the sync link; `--metrics` serves every counter to Prometheus.
//!
//! On SIGHUP the file is read again and the new pool replaces the old one in whole
//! (established flows stay where they are); a file that does not parse changes nothing.
//! Counters are printed on SIGUSR1 and at exit (SIGINT/SIGTERM or `--duration`).
//!
//! `examples/tests/l4lb.rs` builds a client, the load balancer and three backends in network
//! namespaces and checks the spread, the client addresses and a transfer that survives
//! changes to the other backends (DNAT), and the spread with the backends' answers going
//! straight to the client through Linux VXLAN devices (encap). `examples/tests/l4lb_ecmp.rs`
//! puts three synced nodes behind a BGP router (BIRD) and fails one of them under 36 open
//! connections, in encap mode and in DNAT mode with the backends answering through any node.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("l4lb: runs on Linux only (AF_PACKET rings)");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod linux {
    use nf_core::conntrack::{Conntrack, ConntrackConfig, FragmentReorder, ReorderConfig, Sizes};
    use nf_core::{Batch, Instant, NO_NEXT_HOP, ParseStage, PortId, Stage, StageControl, Verdict};
    use nf_examples::announce::{AnnounceArgs, Announcer};
    use nf_examples::io::{IoKind, RingConfig, RingFrame, parse_mac};
    use nf_examples::router::{
        Function, Ipv4Net, Ipv6Net, PortConfig, Route, Route6, Router, serve,
    };
    use nf_examples::say;
    use nf_examples::sync::{SyncConfig, SyncLink};
    use nf_lb::{
        BackendId, Forwarding, HashFields, Health, Lb, LbKey, Listener, ListenerMatch, Listeners,
        OnDown, Pool, PoolMember, table_size_for,
    };
    use nf_tunnel::{Destination, EncapConfig, EncapStage, Underlay};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::path::PathBuf;
    use std::process::ExitCode;

    const CLIENTS: usize = 0;
    const BACKENDS: usize = 1;

    const USAGE: &str = "\
usage: l4lb --client IF --client-addr IPV4/LEN --backend IF --backend-addr IPV4/LEN
            --vip IP:PORT[/FIELDS]... --backends FILE [--proto tcp|udp|tcp,udp] [--gateway IPV4]
            [--client-addr6 IPV6/LEN --backend-addr6 IPV6/LEN [--gateway6 IPV6]]
            [--mode dnat|encap] [--vni N] [--inner-mac MAC] [--on-down reset|rehash]
            [--sessions N] [--io auto|packet|xdp] [--cpu N] [--duration SECS] [--metrics A:P]
            [--lb-key HEX] [--sync-listen ADDR:PORT --sync-peer ADDR:PORT...
             [--sync-key-file FILE]]
            [--bgp-peer IPV4[:PORT] [--bgp-as N] [--bgp-peer-as N] [--bgp-password-file FILE]
             [--bfd [--bfd-key-file FILE] [--bfd-interval MS] [--bfd-multiplier N]]
             [--drain SECS]]

Balances the flows to VIP:PORT over the backends listed in FILE (run as root; both
interfaces without addresses in the kernel). SIGHUP re-reads FILE; SIGUSR1 prints
the counters; SIGINT/SIGTERM or --duration prints them and exits. A TCP flow whose
backend leaves FILE or goes down is reset: its client gets a RST from the VIP (unless
--on-down rehash).

  --client IF            interface towards the clients
  --client-addr A/LEN    the load balancer's address there and the on-link prefix
  --backend IF           interface towards the backends
  --backend-addr A/LEN   the load balancer's address there and the backends' prefix
  --vip IP:PORT[/F]      a virtual service (IPV4:PORT or [IPV6]:PORT); F, the fields its
                         flows are hashed on: 5tuple (default), 3tuple, 2tuple or src
                         (repeatable; ARP or neighbour discovery for it is answered on
                         the client side); each balances over the backends of its family
  --backends FILE        one backend per line: IP:PORT [weight=N] [state=up|draining|down]
                         (port 0: the VIP's port; [IPV6]:PORT for IPv6 VIPs' backends)
  --client-addr6 A/LEN   IPv6 too (DNAT mode): the load balancer's IPv6 address on the
                         client side and the on-link prefix
  --backend-addr6 A/LEN  its IPv6 address on the backend side and the backends' prefix
  --gateway6 IPV6        the client-side IPv6 next hop for clients not on-link
  --proto P              tcp (default), udp, or tcp,udp (a listener for each)
  --gateway IPV4         the client-side next hop for clients not on-link
  --mode M               dnat (default): destination rewritten to the backend, replies
                         come back through the load balancer; encap: packets sent whole
                         in VXLAN to the backend's address, which answers directly
  --vni N                encap: the VXLAN network identifier (default 42)
  --inner-mac MAC        encap: destination MAC of the inner frames, the backends' VXLAN
                         devices' address (default 02:00:00:00:00:01)
  --on-down A            what the flows of a backend that leaves FILE or goes down get:
                         reset (default; TCP: a RST from the VIP, others dropped) or
                         rehash (the table's choice, in a new session under DNAT)
  --sessions N           session table size (default 65536)
  --lb-key HEX           the Maglev tables' key, 32 hex digits: every load balancer of
                         a fleet must have the same (default: a random one per run)
  --sync-listen A:P      session sync: where the peer load balancers connect (a kernel
                         address, on neither interface above)
  --sync-peer A:P        session sync: a peer's --sync-listen (repeatable, one per other
                         node); every node keeps a copy of every other's sessions and
                         carries them on when it fails; DNAT sessions are then tracked
                         one-sided (the backends' answers may pass any node)
  --sync-key-file FILE   session sync: the fleet's 128-bit key, 32 hex digits in FILE;
                         every connection authenticated and every frame tagged (without
                         it the link is open: anyone reaching --sync-listen can write
                         sessions); a second line: a key also accepted from peers (to
                         change the fleet's key node by node)
  --io auto|packet|xdp   frame I/O: AF_XDP where it opens, else PACKET_MMAP rings
                         (auto, the default), or either alone
  --cpu N                pin the packet loop to CPU N
  --duration SECS        exit after SECS seconds
  --metrics A:P          serve the counters in the Prometheus text format at
                         http://A:P/metrics (every second)
  -h, --help             this text";

    /// The command line.
    #[derive(Clone, Debug, PartialEq)]
    struct Args {
        client: String,
        client_addr: Ipv4Net,
        backend: String,
        backend_addr: Ipv4Net,
        vips: Vec<(SocketAddr, HashFields)>,
        backends: PathBuf,
        protos: Vec<u8>,
        gateway: Option<Ipv4Addr>,
        /// `--client-addr6`, `--backend-addr6`, `--gateway6`.
        v6: Option<(Ipv6Net, Ipv6Net, Option<Ipv6Addr>)>,
        encap: Option<EncapMode>,
        on_down: OnDown,
        sessions: u32,
        duration: Option<f64>,
        /// `--metrics`.
        metrics: Option<SocketAddr>,
        io: IoKind,
        cpu: Option<usize>,
        lb_key: Option<[u8; 16]>,
        sync: Option<(SocketAddr, Vec<SocketAddr>)>,
        /// `--sync-key-file`.
        sync_key_file: Option<PathBuf>,
        /// `--bgp-peer` and the flags beside it.
        announce: AnnounceArgs,
    }

    /// `--mode encap`'s settings.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct EncapMode {
        vni: u32,
        inner_mac: [u8; 6],
    }

    pub(crate) fn main() -> ExitCode {
        let usage = format!(
            "{USAGE}\n\nThe VIPs announced to a router (/32, next hop: --client-addr; IPv6 VIPs /128,\nnext hop: --client-addr6):\n{}",
            nf_examples::announce::USAGE
        );
        nf_examples::cli::main_with(
            "l4lb",
            &usage,
            |argv| parse_args(argv.into_iter()),
            |args| run(&args),
        )
    }

    fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let (mut client, mut client_addr, mut backend, mut backend_addr) = (None, None, None, None);
        let (mut vips, mut backends, mut gateway, mut duration) = (Vec::new(), None, None, None);
        let (mut client6, mut backend6, mut gateway6) = (None, None, None);
        let mut metrics = None;
        let (mut io, mut cpu) = (IoKind::Auto, None);
        let (mut protos, mut sessions) = (vec![nf_core::flow::proto::TCP], 65_536);
        let (mut encap, mut vni, mut inner_mac) = (false, 42, [2, 0, 0, 0, 0, 1]);
        let mut on_down = OnDown::Reset;
        let (mut lb_key, mut sync_listen, mut sync_peers) = (None, None, Vec::new());
        let (mut sync_key_file, mut announce) = (None, AnnounceArgs::default());
        while let Some(flag) = it.next() {
            if matches!(flag.as_str(), "-h" | "--help") {
                return Ok(None);
            }
            if announce.switch(&flag) {
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            if let Some(taken) = announce.option(&flag, &value) {
                taken?;
                continue;
            }
            let bad = |what: &str| format!("{flag} {value}: not {what}");
            match flag.as_str() {
                "--client" => client = Some(value),
                "--backend" => backend = Some(value),
                "--client-addr" => client_addr = Some(value.parse::<Ipv4Net>()?),
                "--backend-addr" => backend_addr = Some(value.parse::<Ipv4Net>()?),
                "--client-addr6" => client6 = Some(value.parse::<Ipv6Net>()?),
                "--backend-addr6" => backend6 = Some(value.parse::<Ipv6Net>()?),
                "--gateway6" => gateway6 = Some(value.parse().map_err(|_| bad("an IPv6 address"))?),
                "--vip" => {
                    let (addr, fields) = value.split_once('/').unwrap_or((&value, "5tuple"));
                    let fields = match fields {
                        "5tuple" => HashFields::FiveTuple,
                        "3tuple" => HashFields::ThreeTuple,
                        "2tuple" => HashFields::TwoTuple,
                        "src" => HashFields::SourceIp,
                        _ => return Err(bad("IP:PORT[/5tuple|3tuple|2tuple|src]")),
                    };
                    vips.push((
                        addr.parse::<SocketAddr>().map_err(|_| bad("IP:PORT"))?,
                        fields,
                    ));
                }
                "--backends" => backends = Some(PathBuf::from(value)),
                "--gateway" => gateway = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
                "--proto" => {
                    protos = value
                        .split(',')
                        .map(|p| match p {
                            "tcp" => Ok(nf_core::flow::proto::TCP),
                            "udp" => Ok(nf_core::flow::proto::UDP),
                            _ => Err(bad("tcp, udp or tcp,udp")),
                        })
                        .collect::<Result<_, _>>()?;
                    protos.sort_unstable();
                    protos.dedup();
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
                "--mode" => {
                    encap = match value.as_str() {
                        "dnat" => false,
                        "encap" => true,
                        _ => return Err(bad("dnat or encap")),
                    }
                }
                "--vni" => {
                    vni = value
                        .parse()
                        .ok()
                        .filter(|v| *v <= 0x00ff_ffff)
                        .ok_or_else(|| bad("a 24-bit VNI"))?
                }
                "--inner-mac" => inner_mac = parse_mac(&value).ok_or_else(|| bad("a MAC"))?,
                "--lb-key" => {
                    lb_key = Some(
                        nf_examples::cli::hex_key(&value).ok_or_else(|| bad("32 hex digits"))?,
                    )
                }
                "--sync-listen" => sync_listen = Some(value.parse().map_err(|_| bad("ADDR:PORT"))?),
                "--sync-peer" => sync_peers.push(value.parse().map_err(|_| bad("ADDR:PORT"))?),
                "--sync-key-file" => sync_key_file = Some(PathBuf::from(value)),
                "--on-down" => {
                    on_down = match value.as_str() {
                        "reset" => OnDown::Reset,
                        "rehash" => OnDown::Rehash,
                        _ => return Err(bad("reset or rehash")),
                    }
                }
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        let need = |name: &str| format!("{name} is required");
        let v6 = match (client6, backend6) {
            (Some(c), Some(b)) => Some((c, b, gateway6)),
            (None, None) if gateway6.is_none() => None,
            _ => {
                return Err(
                    "IPv6: --client-addr6 and --backend-addr6 go together (and with --gateway6)"
                        .into(),
                );
            }
        };
        if let Some((vip, _)) = vips.iter().find(|(v, _)| v.is_ipv6()) {
            if v6.is_none() {
                return Err(format!(
                    "--vip {vip}: an IPv6 VIP needs --client-addr6 and --backend-addr6"
                ));
            }
            if encap {
                return Err(format!("--vip {vip}: encap mode balances IPv4 VIPs only"));
            }
        }
        let sync = match (sync_listen, sync_peers.is_empty()) {
            (Some(l), false) => Some((l, sync_peers)),
            (None, true) => None,
            _ => return Err("--sync-listen and --sync-peer go together".into()),
        };
        if sync.is_none() && sync_key_file.is_some() {
            return Err("--sync-key-file needs --sync-listen and --sync-peer".into());
        }
        announce.check()?;
        Ok(Some(Args {
            client: client.ok_or_else(|| need("--client"))?,
            client_addr: client_addr.ok_or_else(|| need("--client-addr"))?,
            backend: backend.ok_or_else(|| need("--backend"))?,
            backend_addr: backend_addr.ok_or_else(|| need("--backend-addr"))?,
            vips: if vips.is_empty() {
                return Err(need("--vip"));
            } else {
                vips
            },
            backends: backends.ok_or_else(|| need("--backends"))?,
            protos,
            gateway,
            v6,
            encap: encap.then_some(EncapMode { vni, inner_mac }),
            on_down,
            sessions,
            duration,
            metrics,
            io,
            cpu,
            lb_key,
            sync,
            sync_key_file,
            announce,
        }))
    }

    /// The backends file: one `IP:PORT [weight=N] [state=up|draining|down]` per line (an
    /// IPv6 address in brackets); each member with its address.
    fn parse_backends(text: &str) -> Result<Vec<(IpAddr, PoolMember)>, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            let mut words = line.split_whitespace();
            let addr: SocketAddr = words
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| err("not IPV4:PORT or [IPV6]:PORT"))?;
            let (mut weight, mut health) = (1, Health::Up);
            for w in words {
                match w.split_once('=') {
                    Some(("weight", v)) => weight = v.parse().map_err(|_| err("bad weight"))?,
                    Some(("state", "up")) => health = Health::Up,
                    Some(("state", "draining")) => health = Health::Draining,
                    Some(("state", "down")) => health = Health::Down,
                    _ => return Err(err("unknown word")),
                }
            }
            let id = match addr.ip() {
                IpAddr::V4(a) => BackendId::v4(a.octets(), addr.port()),
                IpAddr::V6(a) => BackendId::v6(a.octets(), addr.port()),
            };
            out.push((addr.ip(), PoolMember::new(id, weight).with_health(health)));
        }
        if out.is_empty() {
            return Err("no backend".into());
        }
        Ok(out)
    }

    /// Encapsulation toward the backends (`--mode encap`).
    struct Encap {
        stage: EncapStage,
        inner_mac: [u8; 6],
        /// Every backend address seen, in order: a member's next hop is its position here,
        /// which must not change while sessions hold it (so this list only grows).
        hosts: Vec<IpAddr>,
    }

    /// Parse, hold later fragments that beat their first, then conntrack with the LB
    /// service (then encap, in encap mode).
    struct Balancer {
        parse: ParseStage,
        /// Later fragments that arrive before their first wait for it (they follow the first
        /// fragment's backend), copied out of the receive ring while they wait.
        reorder: FragmentReorder<RingFrame>,
        lb: Conntrack<Lb>,
        key: LbKey,
        vips: Vec<(SocketAddr, HashFields)>,
        protos: Vec<u8>,
        on_down: OnDown,
        file: PathBuf,
        encap: Option<Encap>,
        /// Session sync with a peer load balancer (`--sync-listen`, `--sync-peer`).
        sync: Option<SyncLink>,
        /// The VIPs' announcement to the router (`--bgp-peer`, `--bfd`, `--drain`).
        announce: Option<Announcer>,
    }

    impl Balancer {
        fn listeners(&mut self) -> Result<Listeners, String> {
            let text = std::fs::read_to_string(&self.file)
                .map_err(|e| format!("{}: {e}", self.file.display()))?;
            let mut members = parse_backends(&text)?;
            if let Some(e) = &mut self.encap {
                for (ip, m) in &mut members {
                    let ip = *ip;
                    if ip.is_ipv6() {
                        return Err(format!("backend {ip}: encap mode has IPv4 backends only"));
                    }
                    let at = match e.hosts.iter().position(|h| *h == ip) {
                        Some(at) => at,
                        None => {
                            e.hosts.push(ip);
                            e.hosts.len() - 1
                        }
                    };
                    *m = m.with_next_hop(u32::try_from(at).map_err(|_| "too many backends")?);
                }
                if let Some(list) = e.stage.next_hops_mut() {
                    list.clear();
                    list.extend(e.hosts.iter().copied());
                }
            }
            let forwarding = if self.encap.is_some() {
                Forwarding::Encap
            } else {
                Forwarding::Dnat
            };
            let mut listeners = Vec::new();
            for (vip, &proto) in self
                .vips
                .iter()
                .flat_map(|v| self.protos.iter().map(move |p| (v, p)))
            {
                // Each VIP balances over the backends of its family (DNAT keeps the family).
                let family: Vec<PoolMember> = members
                    .iter()
                    .filter(|(ip, _)| ip.is_ipv6() == vip.0.is_ipv6())
                    .map(|(_, m)| *m)
                    .collect();
                if family.is_empty() {
                    return Err(format!("VIP {}: no backend of its family", vip.0));
                }
                let size = table_size_for(family.len()).map_err(|e| e.to_string())?;
                let on = ListenerMatch::Port {
                    vip: vip.0.ip(),
                    port: vip.0.port(),
                    proto,
                };
                let pool = Pool::new(family);
                listeners.push(
                    Listener::new(&self.key, on, vip.1, pool, size)
                        .map_err(|e| e.to_string())?
                        .with_forwarding(forwarding)
                        .with_on_down(self.on_down)
                        // In a fleet a backend's answers may pass another node (its
                        // return route's ECMP hash): the client's ACK establishes.
                        .with_one_sided(self.sync.is_some()),
                );
            }
            Listeners::new(listeners).map_err(|e| e.to_string())
        }
    }

    impl Function for Balancer {
        fn process(&mut self, now: Instant, port: usize, batch: &mut Batch<RingFrame>) {
            self.parse.process(now, batch);
            self.reorder.process(now, batch);
            self.lb.process(now, batch);
            if port != CLIENTS {
                return;
            }
            let Some(e) = &mut self.encap else {
                return;
            };
            for p in batch.packets_mut() {
                if p.meta.verdict != Verdict::Pass {
                    continue;
                }
                if p.meta.next_hop == NO_NEXT_HOP {
                    // Not for a VIP: routed as it is, past the encapsulation.
                    p.meta.verdict = Verdict::Tx(PortId(0));
                } else if let Some(dst) = p.data_mut().get_mut(..6) {
                    dst.copy_from_slice(&e.inner_mac);
                }
            }
            e.stage.process(now, batch);
        }

        /// With session sync: the changes go to the peers every 10 ms, idle or not.
        fn wakes_often(&self) -> bool {
            self.sync.is_some()
        }

        fn batch_room(&self) -> usize {
            self.reorder.batch_room()
        }

        fn timers(&mut self, now: Instant) {
            if self.lb.poll_timeout().is_some_and(|t| t <= now) {
                self.lb.handle_timeout(now, 4096);
            }
            if let Some(s) = &mut self.sync {
                s.poll(now, &mut self.lb);
            }
            if let Some(a) = &mut self.announce {
                // Traffic only once this node holds its peers' sessions.
                a.set_ready(self.sync.as_mut().is_none_or(|s| s.ready(now)));
            }
        }

        fn visit_counters(&self, f: &mut dyn FnMut(&str, &str, u64)) {
            self.parse.visit_counters(&mut |s, c, v| f(s, c, v));
            self.reorder.visit_counters(&mut |s, c, v| f(s, c, v));
            self.lb.visit_counters(&mut |s, c, v| f(s, c, v));
            if let Some(e) = &self.encap {
                e.stage.visit_counters(&mut |s, c, v| f(s, c, v));
            }
            if let Some(s) = &self.sync {
                s.visit_counters(f);
            }
            if let Some(a) = &self.announce {
                a.visit_counters(f);
            }
        }

        fn drain(&mut self, _now: Instant) -> Option<std::time::Duration> {
            self.announce.as_mut().map(Announcer::drain)
        }

        fn reload(&mut self) -> Result<String, String> {
            let listeners = self.listeners()?;
            let n = listeners
                .listeners()
                .first()
                .map_or(0, |l| l.pool().members().len());
            self.lb.service_mut().set_listeners(listeners);
            Ok(format!("{n} backends"))
        }
    }

    fn run(args: &Args) -> Result<(), String> {
        if let Some(cpu) = args.cpu {
            nf_examples::io::pin_to_cpu(cpu).map_err(|e| format!("--cpu {cpu}: {e}"))?;
        }
        let ports = vec![
            PortConfig {
                name: args.client.clone(),
                addrs: vec![args.client_addr],
                answer: args
                    .vips
                    .iter()
                    .filter_map(|(v, _)| match v.ip() {
                        IpAddr::V4(a) => Some(a),
                        IpAddr::V6(_) => None,
                    })
                    .collect(),
                addrs6: args.v6.iter().map(|v| v.0).collect(),
                answer6: args
                    .vips
                    .iter()
                    .filter_map(|(v, _)| match v.ip() {
                        IpAddr::V6(a) => Some(a),
                        IpAddr::V4(_) => None,
                    })
                    .collect(),
            },
            PortConfig {
                name: args.backend.clone(),
                addrs: vec![args.backend_addr],
                addrs6: args.v6.iter().map(|v| v.1).collect(),
                ..PortConfig::default()
            },
        ];
        let routes = [Route {
            to: "0.0.0.0/0".parse()?,
            port: CLIENTS,
            via: args.gateway,
        }];
        let mut router = Router::open(ports, &routes, &RingConfig::default(), args.io)
            .map_err(|e| e.to_string())?;
        if let Some((_, _, gateway6)) = args.v6 {
            router
                .add_routes6(&[Route6 {
                    to: "::/0".parse()?,
                    port: CLIENTS,
                    via: gateway6,
                }])
                .map_err(|e| e.to_string())?;
        }
        let encap = match args.encap {
            None => None,
            Some(m) => {
                let mac = router
                    .interface(BACKENDS)
                    .map(|i| i.mac)
                    .ok_or("no backend interface")?;
                let here = IpAddr::V4(args.backend_addr.addr);
                let mut cfg = EncapConfig::vxlan(
                    m.vni,
                    // The router puts the next hop's MAC on each frame it sends.
                    Underlay {
                        src_mac: mac,
                        dst_mac: [0; 6],
                        src: here,
                        dst: here,
                    },
                );
                cfg.destination = Destination::NextHop(Vec::new());
                Some(Encap {
                    stage: EncapStage::new(cfg).map_err(|e| format!("encap: {e}"))?,
                    inner_mac: m.inner_mac,
                    hosts: Vec::new(),
                })
            }
        };
        // IPv6 sessions: as many as IPv4 ones with IPv6 VIPs.
        let sessions6 = if args.v6.is_some() { args.sessions } else { 32 };
        let mut ct = ConntrackConfig::new(nf_examples::cli::random_secret()).sizes(Sizes {
            v4: args.sessions.saturating_mul(2),
            v6: sessions6.saturating_mul(2),
        });
        let sync = match args.sync {
            None => None,
            Some((listen, ref peers)) => {
                // A change journal for the peer's copy: a full one loses events, and the
                // peer then gets a full resync.
                ct.v4.journal = args.sessions.clamp(1024, 1 << 16);
                ct.v6.journal = sessions6.clamp(64, 1 << 16);
                let mut cfg = SyncConfig::new(listen, peers.clone());
                if let Some(path) = &args.sync_key_file {
                    let (key, also) = nf_examples::cli::key_file("--sync-key-file", path)?;
                    (cfg.key, cfg.accept_also) = (Some(key), also);
                }
                let link =
                    SyncLink::start(cfg).map_err(|e| format!("--sync-listen {listen}: {e}"))?;
                Some(link)
            }
        };
        let mut f = Balancer {
            parse: ParseStage::default(),
            reorder: FragmentReorder::new(ReorderConfig::new(nf_examples::cli::random_secret()))
                .on_hold(RingFrame::detach),
            // Every load balancer of a fleet must build the same tables: in a deployment this
            // key is the operator's, shared; a demo makes one per run.
            key: LbKey::new(args.lb_key.unwrap_or_else(nf_examples::cli::random_secret)),
            // A flow whose backend left or went down is reset (unless `--on-down rehash`): its
            // client's next segment is answered by a RST from the VIP, so the client fails
            // at once.
            lb: Conntrack::new(
                ct,
                Lb::new(Listeners::default()).with_tcp_resets(PortId(CLIENTS as u16)),
            )
            .map_err(|e| e.to_string())?,
            vips: args.vips.clone(),
            protos: args.protos.clone(),
            on_down: args.on_down,
            file: args.backends.clone(),
            encap,
            sync,
            announce: None,
        };
        let what = f.reload()?;
        // The IPv4 VIPs, and the IPv6 ones with their own next hop (multiprotocol BGP).
        let (mut vips, mut vips6) = (Vec::new(), Vec::new());
        for (v, _) in &args.vips {
            match v.ip() {
                IpAddr::V4(a) => vips.push((a, 32)),
                IpAddr::V6(a) => vips6.push((a, 128)),
            }
        }
        let here = args.client_addr.addr;
        let v6 = args.v6.map(|(client6, _, _)| (vips6, client6.addr));
        f.announce = args.announce.start(vips, here, here, v6)?;
        say!(
            "l4lb: ready: VIP {:?} on {} ({}), {what} on {} ({})",
            args.vips,
            args.client,
            args.client_addr,
            args.backend,
            args.backend_addr
        );
        let metrics = nf_examples::prometheus::start_for("l4lb", args.metrics)?;
        serve("l4lb", &mut router, &mut f, args.duration, metrics.as_ref())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_the_command_line_and_the_backends_file() {
            let argv = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
            let a = parse_args(
                argv(
                    "--client cg --client-addr 198.51.100.1/24 --backend bg \
                     --backend-addr 10.1.0.1/24 --vip 192.0.2.10:80 --backends b.txt",
                )
                .into_iter(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                a.vips,
                vec![("192.0.2.10:80".parse().unwrap(), HashFields::FiveTuple)]
            );
            let sticky = parse_args(argv("--client cg --client-addr 198.51.100.1/24 --backend bg --backend-addr 10.1.0.1/24 --vip 192.0.2.10:5201/3tuple --backends b").into_iter());
            assert_eq!(sticky.unwrap().unwrap().vips[0].1, HashFields::ThreeTuple);
            assert_eq!(a.protos, vec![6]);
            let both = parse_args(argv("--client cg --client-addr 198.51.100.1/24 --backend bg --backend-addr 10.1.0.1/24 --vip 192.0.2.10:80 --backends b --proto tcp,udp").into_iter());
            assert_eq!(both.unwrap().unwrap().protos, vec![6, 17]);
            assert_eq!(a.encap, None);
            assert_eq!(a.on_down, OnDown::Reset);
            let rehash = parse_args(argv("--client cg --client-addr 198.51.100.1/24 --backend bg --backend-addr 10.1.0.1/24 --vip 192.0.2.10:80 --backends b --on-down rehash").into_iter());
            assert_eq!(rehash.unwrap().unwrap().on_down, OnDown::Rehash);
            let encap = parse_args(argv("--client cg --client-addr 198.51.100.1/24 --backend bg --backend-addr 10.1.0.1/24 --vip 192.0.2.10:80 --backends b --mode encap --vni 7 --inner-mac 02:00:00:00:00:09").into_iter());
            assert_eq!(
                encap.unwrap().unwrap().encap,
                Some(EncapMode {
                    vni: 7,
                    inner_mac: [2, 0, 0, 0, 0, 9]
                })
            );
            assert_eq!(parse_args(argv("--help").into_iter()), Ok(None));
            let bgp = parse_args(argv("--client cg --client-addr 198.51.100.1/24 --backend bg --backend-addr 10.1.0.1/24 --vip 192.0.2.10:80 --backends b --bgp-peer 10.4.1.1 --bgp-as 4200000001 --bgp-password-file /etc/nf/bgp.pw --bfd --metrics 127.0.0.1:9464").into_iter()).unwrap().unwrap();
            assert_eq!(bgp.metrics, Some("127.0.0.1:9464".parse().unwrap()));
            assert!(bgp.announce.bfd && !a.announce.bfd);
            assert_eq!(
                bgp.announce.password_file,
                Some(PathBuf::from("/etc/nf/bgp.pw"))
            );
            assert_eq!(
                (
                    bgp.announce.peer,
                    bgp.announce.local_as,
                    bgp.announce.peer_as
                ),
                (Some("10.4.1.1:179".parse().unwrap()), 4_200_000_001, 65_000)
            );
            assert_eq!(a.announce, AnnounceArgs::default());
            assert_eq!(a.metrics, None);
            let synced = parse_args(argv("--client cg --client-addr 198.51.100.1/24 --backend bg --backend-addr 10.1.0.1/24 --vip 192.0.2.10:80 --backends b --lb-key 000102030405060708090a0b0c0d0e0F --sync-listen 10.3.0.1:7600 --sync-peer 10.3.0.2:7600 --sync-key-file /etc/nf/sync.key").into_iter()).unwrap().unwrap();
            assert_eq!(
                synced.sync_key_file,
                Some(PathBuf::from("/etc/nf/sync.key"))
            );
            assert_eq!(a.sync_key_file, None);
            assert_eq!(synced.lb_key, Some(core::array::from_fn(|i| i as u8)));
            assert_eq!(
                synced.sync,
                Some((
                    "10.3.0.1:7600".parse().unwrap(),
                    vec!["10.3.0.2:7600".parse().unwrap()]
                ))
            );
            // Dual stack: an IPv6 VIP beside the IPv4 one, with both IPv6 addresses.
            let dual = parse_args(argv("--client cg --client-addr 198.51.100.1/24 --backend bg --backend-addr 10.1.0.1/24 --vip 192.0.2.10:80 --vip [2001:db8:10::10]:80/2tuple --client-addr6 2001:db8:c::1/64 --backend-addr6 fd00:1::1/64 --gateway6 2001:db8:c::ff --backends b").into_iter()).unwrap().unwrap();
            assert_eq!(
                dual.vips[1],
                (
                    "[2001:db8:10::10]:80".parse().unwrap(),
                    HashFields::TwoTuple
                )
            );
            assert_eq!(
                dual.v6,
                Some((
                    "2001:db8:c::1/64".parse().unwrap(),
                    "fd00:1::1/64".parse().unwrap(),
                    Some("2001:db8:c::ff".parse().unwrap())
                ))
            );
            assert_eq!(a.v6, None);
            for half in [
                "--client-addr6 2001:db8:c::1/64",
                "--backend-addr6 fd00:1::1/64",
                "--gateway6 2001:db8:c::ff",
                "--client-addr6 2001:db8:c::1/64 --backend-addr6 fd00:1::1/64 --vip [2001:db8:10::10]:80 --mode encap",
            ] {
                let line = format!(
                    "--client cg --client-addr 198.51.100.1/24 --backend bg --backend-addr 10.1.0.1/24 --vip 192.0.2.10:80 --backends b {half}"
                );
                assert!(parse_args(argv(&line).into_iter()).is_err(), "{half}");
            }
            // Each bad value on an otherwise good command line, each required flag left out.
            let good = "--client cg --client-addr 198.51.100.1/24 --backend bg \
                        --backend-addr 10.1.0.1/24 --vip 192.0.2.10:80 --backends b";
            let bad = [
                "--vip 192.0.2.10",
                "--vip 192.0.2.10:80/4tuple",
                "--vip [2001:db8::1]:80",
                "--proto icmp",
                "--proto tcp,",
                "--mode dsr",
                "--vni 16777216",
                "--inner-mac 02:00",
                "--sessions 1",
                "--on-down drop",
                "--client-addr 198.51.100.1/33",
                "--gateway 10.2.1",
                "--lb-key 0001",
                "--lb-key 000102030405060708090a0b0c0d0eZZ",
                "--sync-listen 10.3.0.1:7600",
                "--sync-peer 10.3.0.2:7600",
                "--sync-listen 10.3.0.1:7600 --sync-peer 10.3.0.2",
                "--sync-key-file k",
                "--bgp-peer 10.4.1",
                "--bgp-peer 10.4.1.1 --bgp-as x",
                "--bgp-password-file p",
                "--bfd",
                "--drain 2",
                "--bgp-peer 10.4.1.1 --drain -1",
                "--metrics 9464",
                "--duration x",
                "--cpu -1",
                "--io tap",
                "--bogus 1",
                "--vip",
            ];
            let required = [
                "--client",
                "--client-addr",
                "--backend",
                "--backend-addr",
                "--vip",
                "--backends",
            ];
            let parse = |w: Vec<String>| parse_args(w.into_iter());
            assert_eq!(
                nf_examples::cli::check_parsing(parse, good, &bad, &required),
                Ok(())
            );
            let m = parse_backends(
                "# pool\n10.1.0.11:8000\n10.1.0.12:8000 weight=2 state=draining\n\n",
            )
            .unwrap();
            assert_eq!(m.len(), 2);
            assert_eq!(m[1].1.weight, 2);
            assert_eq!(m[1].0, Ipv4Addr::new(10, 1, 0, 12));
            let m6 = parse_backends("[fd00:1::11]:0 weight=3\n10.1.0.11:0\n").unwrap();
            assert_eq!(m6[0].0, "fd00:1::11".parse::<IpAddr>().unwrap());
            assert_eq!(
                m6[0].1.id,
                BackendId::v6("fd00:1::11".parse::<Ipv6Addr>().unwrap().octets(), 0)
            );
            for bad in [
                "",
                "10.1.0.11",
                "fd00:1::11:80",
                "10.1.0.11:80 weight=x",
                "10.1.0.11:80 colour=red",
            ] {
                assert!(parse_backends(bad).is_err(), "{bad:?}");
            }
        }
    }
}
