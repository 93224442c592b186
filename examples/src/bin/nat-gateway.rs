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
//! IPv6 beside IPv4: `--inside-addr6` and `--outside-addr6` give the gateway an address and
//! an on-link prefix on each side (answered and resolved by neighbour discovery,
//! [`nf_examples::ndp`]), `--gateway6` the outside next hop, and a NAT profile then
//! translates the inside IPv6 prefix to the outside IPv6 address (or each `--public6`):
//! stateful NAT66 by the same SNAT service. Frames from outside to an address that is not
//! public and from inside with a source outside the inside prefix are dropped for either
//! family (`gateway.spoofed`). In a fleet, IPv6 answers are handed to their port's owner
//! as IPv4 ones are, and `--bgp-peer` announces the public IPv6 addresses over the same
//! session (multiprotocol BGP, next hop `--outside-addr6`) when the router offers IPv6
//! unicast.
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
//!
//! # A fleet
//!
//! Several gateways can share the public addresses behind ECMP on both sides (the inside
//! hosts' route and the outside router's route to the public addresses each spread over
//! every node): `--sync-listen` and a `--fleet-peer OUTSIDE,SYNC` for every other node. The
//! nodes split the port space in the order of their outside addresses
//! ([`nf_nat::Owner`]), so that no two nodes ever give out the same port, and each keeps a
//! copy of every other node's sessions ([`nf_examples::sync`], `--sync-key-file` as in
//! `l4lb`), its allocator holding the other nodes' ports for them
//! ([`PortAllocator::take_over`](nf_nat::PortAllocator::take_over)). The outside router's
//! hash sends a flow's answers to any node: one holding the session (its own or a copy)
//! translates them; one without it (the SYN+ACK of a new connection comes back faster than
//! sync, every 10 ms) hands the packet to the node whose share the port is in
//! ([`nf_nat::owner_of`]; for an ICMP error, the port the quoted packet left from; for an
//! echo reply, its identifier), on the outside link to that node's MAC
//! ([`Router::set_peers`](nf_examples::router::Router::set_peers)), counted
//! `fleet.handed_over` (`fleet.owner_down` when that node is down: it waits, below). The inside
//! hosts' answers to connections opened from outside (a port forward's, or on a mapping
//! under endpoint-independent filtering) reach any node by the inside route, which cannot
//! know where the outside router sent the connection: one without the session holds the
//! segment (at most 16 at once, half a second each) until the session's copy comes
//! (`fleet.waited_for_copy`; `fleet.wait_expired` if none does, then the RST an idle flow
//! gets under hyperplane), instead of dropping it for the SYN's retransmission a second
//! later (a fleet node's loop comes round every 10 ms). Outside answers to a node's own
//! port (or a failed node's) without a session there wait the same way
//! (`fleet.answers_waited_for_copy`, `fleet.answer_wait_expired`): another node may have
//! opened their flow on a mapping it holds a copy of (an rfc endpoint's next flow, when
//! the inside route hashes on L4; a failed node's adopted mapping) — if a mapping here
//! holds their port ([`PortAllocator::holds`](nf_nat::PortAllocator::holds)); the others
//! have no session coming (a port scan, a late answer) and are dropped at once
//! (`fleet.answers_unmapped`), so that they never take a waiting answer's place. When a node
//! fails, its peers' copies of its sessions become orphans, each adopted by the survivor
//! its next packet reaches, and its connections carry on from the same public ports. A
//! fleet tracks no TCP windows (a node sees part of each connection's segments). With rfc
//! and cgn, endpoint-independent mapping holds per node, so the inside route must hash on
//! the source address alone (Linux: `fib_multipath_hash_policy = 3`,
//! `fib_multipath_hash_fields = 1`) for it to hold across the fleet; cgn's port blocks are
//! cut from each node's share, a subscriber's on the node its address hashes to, and the
//! other nodes' copies of its sessions hold that block for it
//! ([`PortAllocator::take_over`](nf_nat::PortAllocator::take_over)). With `--bgp-peer`
//! (and `--bfd`, `--drain`: [`nf_examples::announce`], as in `l4lb`) each node announces
//! the public addresses to the outside router itself, with its outside address as the next
//! hop, and in a fleet only once it holds its peers' sessions (and their ports): a node that
//! comes back takes traffic only after its resyncs. `examples/tests/nat_fleet.rs` runs three
//! nodes behind BIRD, fails one under 36 connections and brings it back.

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
        Conntrack, ConntrackConfig, FragmentReorder, ReorderConfig, Sizes, TcpWindow, quoted_key,
    };
    use nf_core::flow::proto;
    use nf_core::reply::IcmpOrigin;
    use nf_core::{
        Batch, DropReason, FlowKey, Instant, Packet, ParseConfig, ParseStage, PortId, Stage,
        StageControl, Verdict, flags, parse_frame,
    };
    use nf_examples::announce::{AnnounceArgs, Announcer};
    use nf_examples::io::{IoKind, RingConfig, RingFrame};
    use nf_examples::router::{
        Function, Ipv4Net, Ipv6Net, PortConfig, Route, Route6, Router, serve,
    };
    use nf_examples::say;
    use nf_examples::sync::{SyncConfig, SyncLink};
    use nf_nat::{
        AllocatorConfig, Filtering, InsidePrefix, Owner, PortForward, PortSplit, Snat, SnatConfig,
        nat_timeouts, owner_of,
    };
    use std::collections::VecDeque;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::path::PathBuf;
    use std::process::ExitCode;

    const INSIDE: usize = 0;
    const OUTSIDE: usize = 1;
    /// Ports (interfaces) of the router: fleet peers come after them.
    const PORTS: usize = 2;

    const USAGE: &str = "\
usage: nat-gateway --inside IF --inside-addr IPV4/LEN --outside IF --outside-addr IPV4/LEN
                   [--gateway IPV4] [--public IPV4]... [--profile P] [--filtering F]
                   [--inside-addr6 IPV6/LEN --outside-addr6 IPV6/LEN [--gateway6 IPV6]
                    [--public6 IPV6]...]
                   [--forward PROTO:PORT=IPV4:PORT]... [--sessions N] [--no-window]
                   [--io auto|packet|xdp] [--cpu N] [--duration SECS] [--metrics A:P]
                   [--block-log FILE]
                   [--sync-listen ADDR:PORT --fleet-peer IPV4,ADDR:PORT...
                    [--sync-key-file FILE]]
                   [--bgp-peer IPV4[:PORT] [--bgp-as N] [--bgp-peer-as N]
                    [--bgp-password-file FILE] [--bfd [--bfd-key-file FILE]
                     [--bfd-interval MS] [--bfd-multiplier N]] [--drain SECS]]

Routes between an inside and an outside network (run as root; both interfaces
without addresses in the kernel). Prints counters on SIGINT/SIGTERM (and exits),
on SIGUSR1, or after --duration.

  --inside IF            interface towards the inside hosts
  --inside-addr A/LEN    the gateway's inside address and the inside prefix
  --outside IF           interface towards the outside
  --outside-addr A/LEN   the gateway's outside address and its on-link prefix
  --gateway IPV4         the outside next hop for destinations not on-link
  --public IPV4          a public address (repeatable; default: the outside address)
  --inside-addr6 A/LEN   IPv6 too (NAT66 under a NAT profile): the gateway's inside
                         IPv6 address and the inside IPv6 prefix
  --outside-addr6 A/LEN  the gateway's outside IPv6 address and its on-link prefix
  --gateway6 IPV6        the outside IPv6 next hop for destinations not on-link
  --public6 IPV6         a public IPv6 address (repeatable; default: the outside
                         IPv6 address)
  --profile P            rfc (default): endpoint-independent mapping (RFC 4787/5382);
                         hyperplane: ports unique per destination, 350 s idle,
                         then a RST to the inside host;
                         cgn: port blocks per subscriber (RFC 6888);
                         off: route without translating
  --filtering F          apdf (default): replies only from the flow's destination;
                         eif: any outside host may reach a live mapping (rfc, cgn)
  --forward P:N=A:M      forward PROTO (tcp|udp) port N of the first public address to
                         inside A:M (repeatable); an inside [IPV6]:M forwards port N
                         of the first public IPv6 address
  --block-log FILE       cgn: append every port block given to or taken back from a
                         subscriber to FILE, one line each (RFC 6888 logging), the
                         wall-clock time first
  --sessions N           session table size (default 65536)
  --no-window            no TCP window tracking (on by default; off in a fleet, where a
                         node sees part of each connection's segments)
  --io auto|packet|xdp   frame I/O: AF_XDP where it opens, else PACKET_MMAP rings
                         (auto, the default), or either alone
  --cpu N                pin the packet loop to CPU N
  --duration SECS        exit after SECS seconds
  --metrics A:P          serve the counters in the Prometheus text format at
                         http://A:P/metrics (every second)
  --sync-listen A:P      fleet: where the other nodes' session sync connects (a
                         kernel address, on neither interface above)
  --fleet-peer O,A:P     fleet: another node sharing the --public addresses: its
                         --outside-addr O and its --sync-listen A:P (repeatable). The
                         nodes split the ports by the order of their outside
                         addresses, each keeps a copy of every other's sessions and
                         carries them on when it fails, and an outside packet for
                         another node's port without a session here goes to that
                         node
  --sync-key-file FILE   fleet: the 128-bit sync key, 32 hex digits (as l4lb's)
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
        /// `--inside-addr6`, `--outside-addr6`, `--gateway6`, `--public6`.
        v6: Option<V6Args>,
        profile: Profile,
        filtering: Filtering,
        forwards: Vec<(u8, u16, SocketAddr)>,
        sessions: u32,
        window: bool,
        duration: Option<f64>,
        /// `--metrics`.
        metrics: Option<SocketAddr>,
        io: IoKind,
        cpu: Option<usize>,
        /// `--sync-listen` and the `--fleet-peer`s (outside address, sync address).
        fleet: Option<(SocketAddr, Vec<(Ipv4Addr, SocketAddr)>)>,
        sync_key_file: Option<PathBuf>,
        /// `--block-log`.
        block_log: Option<PathBuf>,
        /// `--bgp-peer` and the flags beside it.
        announce: AnnounceArgs,
    }

    impl Args {
        /// The public addresses of both families, IPv4 first.
        fn publics(&self) -> Vec<IpAddr> {
            let v6 = self
                .v6
                .iter()
                .flat_map(|v| v.public.iter().map(|a| IpAddr::V6(*a)));
            self.public
                .iter()
                .map(|a| IpAddr::V4(*a))
                .chain(v6)
                .collect()
        }
    }

    /// The IPv6 side of the command line.
    #[derive(Clone, Debug, PartialEq)]
    struct V6Args {
        inside_addr: Ipv6Net,
        outside_addr: Ipv6Net,
        gateway: Option<Ipv6Addr>,
        public: Vec<Ipv6Addr>,
    }

    pub(crate) fn main() -> ExitCode {
        let usage = format!(
            "{USAGE}\n\nThe public addresses announced to a router (/32, next hop: --outside-addr;\nIPv6 ones /128, next hop: --outside-addr6):\n{}",
            nf_examples::announce::USAGE
        );
        nf_examples::cli::main_with(
            "nat-gateway",
            &usage,
            |argv| parse_args(argv.into_iter()),
            |args| run(&args),
        )
    }

    /// Parses the arguments; `Ok(None)` for `--help`.
    fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let (mut inside, mut inside_addr, mut outside, mut outside_addr) = (None, None, None, None);
        let (mut gateway, mut public, mut duration) = (None, Vec::new(), None);
        let (mut inside6, mut outside6, mut gateway6, mut public6) = (None, None, None, Vec::new());
        let mut metrics = None;
        let (mut io, mut cpu) = (IoKind::Auto, None);
        let (mut sync_listen, mut peers, mut sync_key_file) = (None, Vec::new(), None);
        let mut block_log = None;
        let mut announce = AnnounceArgs::default();
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
                "--inside" => inside = Some(value),
                "--outside" => outside = Some(value),
                "--inside-addr" => inside_addr = Some(value.parse::<Ipv4Net>()?),
                "--outside-addr" => outside_addr = Some(value.parse::<Ipv4Net>()?),
                "--gateway" => gateway = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
                "--public" => public.push(value.parse().map_err(|_| bad("an IPv4 address"))?),
                "--inside-addr6" => inside6 = Some(value.parse::<Ipv6Net>()?),
                "--outside-addr6" => outside6 = Some(value.parse::<Ipv6Net>()?),
                "--gateway6" => gateway6 = Some(value.parse().map_err(|_| bad("an IPv6 address"))?),
                "--public6" => public6.push(value.parse().map_err(|_| bad("an IPv6 address"))?),
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
                    forwards.push(parse_forward(&value).ok_or_else(|| bad("PROTO:PORT=IP:PORT"))?)
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
                "--sync-listen" => sync_listen = Some(value.parse().map_err(|_| bad("ADDR:PORT"))?),
                "--fleet-peer" => {
                    let peer = value
                        .split_once(',')
                        .and_then(|(o, a)| Some((o.parse().ok()?, a.parse().ok()?)));
                    peers.push(peer.ok_or_else(|| bad("IPV4,ADDR:PORT"))?);
                }
                "--sync-key-file" => sync_key_file = Some(PathBuf::from(value)),
                "--block-log" => block_log = Some(PathBuf::from(value)),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        let need = |name: &str| format!("{name} is required");
        let outside_addr: Ipv4Net = outside_addr.ok_or_else(|| need("--outside-addr"))?;
        if public.is_empty() {
            public.push(outside_addr.addr);
        }
        let v6 = match (inside6, outside6) {
            (Some(inside_addr), Some(outside_addr)) => {
                if public6.is_empty() {
                    public6.push(outside_addr.addr);
                }
                Some(V6Args {
                    inside_addr,
                    outside_addr,
                    gateway: gateway6,
                    public: public6,
                })
            }
            (None, None) if gateway6.is_none() && public6.is_empty() => None,
            _ => {
                return Err(
                    "IPv6: --inside-addr6 and --outside-addr6 go together (and with --gateway6, --public6)"
                        .into(),
                );
            }
        };
        let fleet = match (sync_listen, peers.is_empty()) {
            (Some(l), false) => Some((l, peers)),
            (None, true) => None,
            _ => return Err("--sync-listen and --fleet-peer go together".into()),
        };
        if let Some((_, peers)) = &fleet {
            if !matches!(profile, Profile::Nat(_)) {
                return Err("a fleet needs a NAT profile (rfc, hyperplane or cgn)".into());
            }
            let mut outside: Vec<Ipv4Addr> = peers.iter().map(|p| p.0).collect();
            outside.push(outside_addr.addr);
            outside.sort_unstable();
            if outside.windows(2).any(|w| w[0] == w[1]) {
                return Err(
                    "--fleet-peer: every node's outside address once, this one's not among them"
                        .into(),
                );
            }
        } else if sync_key_file.is_some() {
            return Err("--sync-key-file needs --sync-listen and --fleet-peer".into());
        }
        if block_log.is_some() && !matches!(profile, Profile::Nat(nf_nat::Profile::Cgn(_))) {
            return Err("--block-log needs --profile cgn (the profile with port blocks)".into());
        }
        announce.check()?;
        Ok(Some(Args {
            inside: inside.ok_or_else(|| need("--inside"))?,
            inside_addr: inside_addr.ok_or_else(|| need("--inside-addr"))?,
            outside: outside.ok_or_else(|| need("--outside"))?,
            outside_addr,
            gateway,
            public,
            v6,
            profile,
            filtering,
            forwards,
            sessions,
            window,
            duration,
            metrics,
            io,
            cpu,
            fleet,
            sync_key_file,
            block_log,
            announce,
        }))
    }

    /// `tcp:8080=10.0.0.2:80` as (protocol, public port, inside address).
    fn parse_forward(s: &str) -> Option<(u8, u16, SocketAddr)> {
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

    /// One node of a fleet sharing the public addresses (`--fleet-peer`).
    struct Fleet {
        link: SyncLink,
        split: PortSplit,
        /// This node's place in the split (the rank of its outside address).
        node: u32,
        /// Each peer's place in the split, in `--fleet-peer` order (the router's peers and
        /// the sync link's, in the same order).
        peer_nodes: Vec<u32>,
        /// Outside packets handed to the node owning their port (no session here).
        handed_over: u64,
        /// Outside packets for another node's port without a session here, whose node is
        /// down (its taken-over sessions are copies here, found by their lookup): they wait
        /// for a copy as answers to this node's own ports do (`outside`).
        owner_down: u64,
        /// Inside TCP segments without a session here: answers to a connection an outside
        /// host opened through another node (a port forward's, or on a mapping under
        /// endpoint-independent filtering) that beat the session's copy.
        inside: Waiting,
        /// Outside answers to this node's ports (or a failed node's) without a session
        /// here: answers to a flow another node opened on a mapping it holds a copy of (an
        /// rfc or cgn endpoint's, whose next flow may reach any node when the inside route
        /// hashes on L4, or a failed node's adopted one), that beat that flow's copy.
        outside: Waiting,
        /// The packets of a batch being sorted into kept and held (allocated once).
        sorting: Vec<Packet<RingFrame>>,
        /// Outside answers to a port no mapping here holds, not held (`hold_answers`).
        answers_unmapped: u64,
        /// Hyperplane: a segment that waited in vain gets the RST SNAT gives one without a
        /// session (the idle timeout's), counted `reset_after_wait`.
        reset: bool,
        reset_after_wait: u64,
    }

    /// Packets of one side without a session here, each with when it first came, waiting for
    /// their session's copy ([`HOLD_FOR`] at most, [`HOLD_MAX`] at once), tried again with
    /// every batch of that side.
    struct Waiting {
        held: VecDeque<(Instant, Packet<RingFrame>)>,
        /// When each packet tried again in the current batch first came, by its place.
        retried: Vec<(usize, Instant)>,
        /// Packets that waited and found their session, or did not in time.
        found: u64,
        expired: u64,
    }

    impl Waiting {
        fn new() -> Self {
            Self {
                held: VecDeque::with_capacity(HOLD_MAX),
                retried: Vec::with_capacity(HOLD_MAX),
                found: 0,
                expired: 0,
            }
        }

        /// Puts the waiting packets at the end of `batch` (received on their side, before
        /// the stages) to be tried again; gives those that waited too long to `expired`.
        fn retry(
            &mut self,
            now: Instant,
            batch: &mut Batch<RingFrame>,
            mut expired: impl FnMut(Packet<RingFrame>, &mut Batch<RingFrame>),
        ) {
            self.retried.clear();
            while let Some((since, p)) = self.held.pop_front() {
                if now.saturating_since(since) > HOLD_FOR {
                    self.expired += 1;
                    expired(p, batch);
                    continue;
                }
                let at = batch.len();
                if let Err(p) = batch.push(p) {
                    self.held.push_front((since, p));
                    break;
                }
                self.retried.push((at, since));
            }
        }

        /// Holds the packets of `batch` that `waits` picks (after the stages), copied out of
        /// the receive ring, until their copy comes; counts the tried-again ones that found
        /// it.
        fn hold(
            &mut self,
            now: Instant,
            batch: &mut Batch<RingFrame>,
            sorting: &mut Vec<Packet<RingFrame>>,
            waits: impl Fn(&Packet<RingFrame>) -> bool,
        ) {
            let retried = &self.retried;
            self.found += retried
                .iter()
                .filter(|(at, _)| batch.packets().get(*at).is_some_and(|p| !waits(p)))
                .count() as u64;
            if !batch.packets().iter().any(&waits) {
                return;
            }
            sorting.extend(batch.drain());
            for (at, p) in sorting.drain(..).enumerate() {
                let since = retried.iter().find(|(i, _)| *i == at).map_or(now, |r| r.1);
                if !waits(&p) {
                    // As many places as the batch had.
                    let _ = batch.push(p);
                } else if self.held.len() < HOLD_MAX {
                    let (mut frame, head, len) = p.into_parts();
                    frame.detach();
                    if let Ok(p) = Packet::new(frame, head, len) {
                        self.held.push_back((since, p));
                    }
                } else {
                    self.expired += 1;
                }
            }
        }
    }

    /// How long a packet waits for its session's copy: sync runs every 10 ms, and the loop
    /// tries the packet again each time it comes round (every 10 ms at least in a fleet,
    /// [`Function::wakes_often`]), applying the copies it received after its stages.
    const HOLD_FOR: nf_core::Duration = nf_core::Duration::from_millis(500);
    /// Packets waiting at once, per side (places kept free in every batch for them).
    const HOLD_MAX: usize = 16;

    impl Fleet {
        /// The split and this node's place in it: the fleet's nodes in the order of their
        /// outside addresses.
        fn place(own: Ipv4Addr, peers: &[(Ipv4Addr, SocketAddr)]) -> (PortSplit, u32, Vec<u32>) {
            let mut all: Vec<Ipv4Addr> = peers.iter().map(|p| p.0).collect();
            all.push(own);
            all.sort_unstable();
            let rank = |a: Ipv4Addr| all.iter().position(|x| *x == a).unwrap_or(0) as u32;
            let split = PortSplit {
                nodes: all.len() as u32,
                cores: 1,
            };
            (split, rank(own), peers.iter().map(|p| rank(p.0)).collect())
        }

        /// Hands the outside packets of `batch` that found no session here (nor may open
        /// one) and whose public port another node owns to that node, if it is alive
        /// ([`Verdict::Tx`] of the router's peer port, after the interfaces).
        fn hand_over(&mut self, public: &[IpAddr], batch: &mut Batch<RingFrame>) {
            for p in batch.packets_mut() {
                let Some(port) = public_port(p, public) else {
                    continue;
                };
                let owner = owner_of(port, self.split).node;
                if owner == self.node {
                    continue;
                }
                match self.peer_nodes.iter().position(|n| *n == owner) {
                    Some(i) if self.link.peer_alive(i) => {
                        p.meta.verdict = Verdict::Tx(PortId((PORTS + i) as u16));
                        self.handed_over += 1;
                    }
                    _ => self.owner_down += 1,
                }
            }
        }
    }

    impl Fleet {
        /// Puts the inside segments waiting for their session's copy at the end of `batch`
        /// (received from the inside, before the stages), to be tried again; those that
        /// waited too long get the RST an idled-out flow gets under hyperplane.
        fn retry(&mut self, now: Instant, batch: &mut Batch<RingFrame>) {
            let (reset, count) = (self.reset, &mut self.reset_after_wait);
            self.inside.retry(now, batch, |mut p, batch| {
                if !reset {
                    return;
                }
                // Its RST back to the inside host, past the stages.
                let (data, meta) = p.data_and_meta_mut();
                if parse_frame(data, meta, &ParseConfig::default()).is_err()
                    || nf_core::reply::tcp_reset(&mut p).is_err()
                {
                    return;
                }
                p.meta.verdict = Verdict::Tx(PortId(INSIDE as u16));
                if batch.push(p).is_ok() {
                    *count += 1;
                }
            });
        }

        /// Holds the inside TCP segments of `batch` that found no session (nor may open
        /// one: not a SYN) until their copy comes.
        fn hold(&mut self, now: Instant, batch: &mut Batch<RingFrame>) {
            self.inside.hold(now, batch, &mut self.sorting, |p| {
                p.meta.verdict == Verdict::Drop(DropReason::NoSession)
                    && p.meta.flow.proto == nf_core::flow::proto::TCP
            });
        }

        /// As [`Self::hold`] for the outside answers to a public port that found no session
        /// and stay here (not handed over: this node's port, or its node is down), if a
        /// mapping here holds their port ([`nf_nat::PortAllocator::holds`]: the flow may be
        /// another node's on this node's mapping, its session's copy on its way); the others
        /// have no session coming (a port scan, a late answer) and are dropped at once,
        /// counted `answers_unmapped`, so that they never take the places of answers that
        /// wait for a copy.
        fn hold_answers(
            &mut self,
            now: Instant,
            public: &[IpAddr],
            ports: &nf_nat::PortAllocator,
            batch: &mut Batch<RingFrame>,
        ) {
            let waits = |p: &Packet<RingFrame>| public_answer(p, public).map(|a| ports.holds(&a));
            self.answers_unmapped += batch
                .packets()
                .iter()
                .filter(|p| waits(p) == Some(false))
                .count() as u64;
            self.outside
                .hold(now, batch, &mut self.sorting, |p| waits(p) == Some(true));
        }
    }

    /// The public port (or ICMP query identifier) of an outside packet that found no
    /// session here: a TCP, UDP or ICMP query answer's destination port, or the source port
    /// of the packet an ICMP error quotes (which left from the public address). `None` for
    /// anything else.
    fn public_port<B: AsRef<[u8]>>(p: &Packet<B>, public: &[IpAddr]) -> Option<u16> {
        public_answer(p, public).map(|a| a.dst_port)
    }

    /// The key of the answer an outside packet that found no session here carries to a
    /// public address (for an ICMP error, the answer to the packet it quotes), as in
    /// [`public_port`].
    fn public_answer<B: AsRef<[u8]>>(p: &Packet<B>, public: &[IpAddr]) -> Option<FlowKey> {
        let answer = match p.meta.verdict {
            Verdict::Drop(DropReason::NoSession | DropReason::NatNoMapping)
                if !p.meta.has(flags::ICMP_ERROR) =>
            {
                p.meta.flow
            }
            // The quoted packet travelled from the public address; the error travels
            // back the way its answers do.
            Verdict::Drop(DropReason::RelatedNoSession) if p.meta.has(flags::ICMP_ERROR) => {
                quoted_key(p.data(), &p.meta).ok()?.reversed()
            }
            _ => return None,
        };
        let answers = matches!(
            answer.proto,
            proto::TCP | proto::UDP | proto::ICMP | proto::ICMPV6
        );
        (answers && public.contains(&answer.dst_ip())).then_some(answer)
    }

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
        /// The inside IPv6 prefix and the public IPv6 addresses (`--inside-addr6`).
        inside6: Option<Ipv6Net>,
        public6: Vec<Ipv6Addr>,
        /// Every public address of either family (a fleet's hand-over reads them).
        publics: Vec<IpAddr>,
        fleet: Option<Fleet>,
        /// The public addresses' announcement to the router (`--bgp-peer`).
        announce: Option<Announcer>,
        block_log: Option<BlockLog>,
    }

    /// `--block-log`: the CGN's block events, one line each, the wall-clock time first.
    struct BlockLog {
        out: std::io::BufWriter<std::fs::File>,
        written: u64,
        failed: u64,
    }

    impl BlockLog {
        fn open(path: &std::path::Path) -> Result<Self, String> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--block-log {}: {e}", path.display()))?;
            Ok(Self {
                out: std::io::BufWriter::new(file),
                written: 0,
                failed: 0,
            })
        }

        /// Writes the events the allocator queued (blocks are rare: a few lines between
        /// batches at most), then flushes them.
        fn drain(&mut self, ports: &mut nf_nat::PortAllocator) {
            use std::io::Write;
            let mut any = false;
            while let Some(e) = ports.pop_block_event() {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                match writeln!(self.out, "{}.{:03} {e}", t.as_secs(), t.subsec_millis()) {
                    Ok(()) => self.written += 1,
                    Err(_) => self.failed += 1,
                }
                any = true;
            }
            if any && self.out.flush().is_err() {
                self.failed += 1;
            }
        }
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
                    inside6: args.v6.as_ref().map(|v| v.inside_addr),
                    public6: args
                        .v6
                        .as_ref()
                        .map(|v| v.public.clone())
                        .unwrap_or_default(),
                    publics: args.publics(),
                    fleet: None,
                    announce: None,
                    block_log: None,
                });
            };
            let v6 = args.v6.as_ref();
            let public = args.publics();
            // A per-run secret: port choice must not be predictable from outside.
            let secret = nf_examples::cli::random_secret();
            let mut ports = AllocatorConfig::new(*profile, public, secret)
                .with_max_mappings(args.sessions as usize);
            let place = args
                .fleet
                .as_ref()
                .map(|(_, peers)| Fleet::place(args.outside_addr.addr, peers));
            if let Some((split, node, _)) = &place {
                ports = ports.with_owner(Owner {
                    nodes: split.nodes,
                    cores: 1,
                    node: *node,
                    core: 0,
                });
            }
            let inside = args.inside_addr;
            // IPv6 sessions: as many as IPv4 ones when NAT66 is on.
            let sessions6 = if v6.is_some() { args.sessions } else { 64 };
            let mut cfg = SnatConfig::new(ports)
                .with_inside(InsidePrefix::new(IpAddr::V4(inside.addr), inside.len))
                .with_filtering(args.filtering)
                .with_v6_sessions(sessions6 as usize)
                // The inside port: the router sends the RST on to the inside host. In a
                // fleet the segment may belong to a session whose copy is on its way: it
                // waits for it, and gets its RST from the fleet if none comes
                // (`Fleet::retry`).
                .with_idle_reset(
                    (*profile == nf_nat::Profile::Hyperplane && args.fleet.is_none())
                        .then_some(PortId(INSIDE as u16)),
                )
                // Flows refused for lack of ports or sessions: ICMP administratively
                // prohibited from the gateway's inside address (RFC 5508 REQ-8).
                .with_refusal_icmp(Some(IcmpOrigin::new(
                    Some(IpAddr::V4(inside.addr)),
                    v6.map(|v| IpAddr::V6(v.inside_addr.addr)),
                    PortId(INSIDE as u16),
                )));
            if let Some(v) = v6 {
                let inside = v.inside_addr;
                cfg = cfg.with_inside(InsidePrefix::new(IpAddr::V6(inside.addr), inside.len));
            }
            // Each forward on the first public address of its inside address's family.
            for (proto, port, to) in &args.forwards {
                let first = match to {
                    SocketAddr::V4(_) => args.public.first().copied().map(IpAddr::V4),
                    SocketAddr::V6(_) => v6.and_then(|v| v.public.first().copied()).map(IpAddr::V6),
                };
                let first = first
                    .ok_or_else(|| format!("--forward {to}: no public address of its family"))?;
                let public = SocketAddr::new(first, *port);
                cfg = cfg.with_forward(PortForward::new(*proto, public, *to));
            }
            let timeouts = nat_timeouts(profile);
            let mut snat = Snat::new(cfg).map_err(|e| format!("NAT config: {e}"))?;
            let mut ct = ConntrackConfig::new(nf_examples::cli::random_secret()).sizes(Sizes {
                v4: args.sessions.saturating_mul(2),
                v6: sessions6.saturating_mul(2),
            });
            ct.v4.timeouts = timeouts;
            ct.v6.timeouts = timeouts;
            let mut fleet = None;
            if let (Some((listen, peers)), Some((split, node, peer_nodes))) = (&args.fleet, place) {
                // Copies of the other nodes' sessions hold their ports: this node may claim
                // every other node's share (new flows still get only its own).
                for other in (0..split.nodes).filter(|n| *n != node) {
                    snat.ports_mut()
                        .take_over(other)
                        .map_err(|e| format!("--fleet-peer: {e}"))?;
                }
                // A change journal for the peers' copies (a full one loses events, and the
                // peers then get a full resync).
                ct.v4.journal = args.sessions.clamp(1024, 1 << 16);
                ct.v6.journal = if v6.is_some() { ct.v4.journal } else { 64 };
                let mut cfg = SyncConfig::new(*listen, peers.iter().map(|p| p.1).collect());
                if let Some(path) = &args.sync_key_file {
                    let (key, also) = nf_examples::cli::key_file("--sync-key-file", path)?;
                    (cfg.key, cfg.accept_also) = (Some(key), also);
                }
                let link =
                    SyncLink::start(cfg).map_err(|e| format!("--sync-listen {listen}: {e}"))?;
                fleet = Some(Fleet {
                    link,
                    split,
                    node,
                    peer_nodes,
                    handed_over: 0,
                    owner_down: 0,
                    inside: Waiting::new(),
                    outside: Waiting::new(),
                    sorting: Vec::with_capacity(nf_core::BATCH_SIZE),
                    reset: *profile == nf_nat::Profile::Hyperplane,
                    reset_after_wait: 0,
                    answers_unmapped: 0,
                });
            }
            // A fleet node sees part of each connection's segments (its answers may reach
            // another node, or be handed to it from one), so no window can be checked
            // there: tracking would drop the client's acknowledgments of data it never saw
            // (Linux's `nf_conntrack_tcp_be_liberal` for asymmetric routing).
            let window = (args.window && args.fleet.is_none()).then(TcpWindow::new);
            let nat = Conntrack::new(ct, (snat, window)).map_err(|e| format!("conntrack: {e}"))?;
            Ok(Self {
                parse: ParseStage::default(),
                reorder: reorder(),
                nat: Some(nat),
                spoofed: 0,
                inside: args.inside_addr,
                public: args.public.clone(),
                inside6: v6.map(|v| v.inside_addr),
                public6: v6.map(|v| v.public.clone()).unwrap_or_default(),
                publics: args.publics(),
                fleet,
                announce: None,
                block_log: args.block_log.as_deref().map(BlockLog::open).transpose()?,
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
            match (port, &mut self.fleet) {
                (INSIDE, Some(f)) => f.retry(now, batch),
                (OUTSIDE, Some(f)) => f.outside.retry(now, batch, |_, _| {}),
                _ => {}
            }
            self.parse.process(now, batch);
            let Some(nat) = &mut self.nat else {
                return;
            };
            for p in batch.packets_mut() {
                if p.meta.verdict != Verdict::Pass {
                    continue;
                }
                let (src, dst) = (p.meta.flow.src_ip(), p.meta.flow.dst_ip());
                let ok = match (port, src, dst) {
                    (INSIDE, IpAddr::V4(s), _) => self.inside.contains(s),
                    (INSIDE, IpAddr::V6(s), _) => self.inside6.is_some_and(|n| n.contains(s)),
                    (_, _, IpAddr::V4(d)) => self.public.contains(&d),
                    (_, _, IpAddr::V6(d)) => self.public6.contains(&d),
                };
                if !ok {
                    self.spoofed += 1;
                    p.meta.verdict = Verdict::Drop(DropReason::NatNoMapping);
                }
            }
            self.reorder.process(now, batch);
            nat.process(now, batch);
            match (port, &mut self.fleet) {
                (OUTSIDE, Some(f)) => {
                    f.hand_over(&self.publics, batch);
                    let ports = nat.service().0.ports();
                    f.hold_answers(now, &self.publics, ports, batch);
                }
                (INSIDE, Some(f)) => f.hold(now, batch),
                _ => {}
            }
        }

        fn batch_room(&self) -> usize {
            self.reorder.batch_room() + if self.fleet.is_some() { HOLD_MAX } else { 0 }
        }

        /// A fleet node: its session changes go to its peers every 10 ms, and the packets
        /// waiting for a session's copy are tried again as often, whether frames come or not.
        fn wakes_often(&self) -> bool {
            self.fleet.is_some()
        }

        fn visit_counters(&self, f: &mut dyn FnMut(&str, &str, u64)) {
            f("gateway", "spoofed", self.spoofed);
            self.parse.visit_counters(&mut |s, c, v| f(s, c, v));
            if let Some(n) = &self.nat {
                self.reorder.visit_counters(&mut |s, c, v| f(s, c, v));
                n.visit_counters(&mut |s, c, v| f(s, c, v));
            }
            if let Some(fl) = &self.fleet {
                f("fleet", "handed_over", fl.handed_over);
                f("fleet", "owner_down", fl.owner_down);
                f("fleet", "waited_for_copy", fl.inside.found);
                f("fleet", "wait_expired", fl.inside.expired);
                f("fleet", "answers_waited_for_copy", fl.outside.found);
                f("fleet", "answer_wait_expired", fl.outside.expired);
                f("fleet", "answers_unmapped", fl.answers_unmapped);
                f("fleet", "reset_after_wait", fl.reset_after_wait);
                fl.link.visit_counters(f);
            }
            if let Some(a) = &self.announce {
                a.visit_counters(f);
            }
            if let Some(l) = &self.block_log {
                f("block_log", "written", l.written);
                f("block_log", "write_errors", l.failed);
            }
        }

        fn drain(&mut self, _now: Instant) -> Option<std::time::Duration> {
            self.announce.as_mut().map(Announcer::drain)
        }

        /// Runs due timers (session expiry, port quarantine) with bounded work.
        fn timers(&mut self, now: Instant) {
            if let Some(n) = &mut self.nat {
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now, 4096);
                }
                if let Some(f) = &mut self.fleet {
                    f.link.poll(now, n);
                }
                if let Some(l) = &mut self.block_log {
                    l.drain(n.service_mut().0.ports_mut());
                }
            }
            if let Some(a) = &mut self.announce {
                // Traffic only once a fleet node holds its peers' sessions (their ports).
                a.set_ready(self.fleet.as_mut().is_none_or(|f| f.link.ready(now)));
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
                addrs6: args.v6.iter().map(|v| v.inside_addr).collect(),
                ..PortConfig::default()
            },
            PortConfig {
                name: args.outside.clone(),
                addrs: vec![args.outside_addr],
                answer: args.public.clone(),
                addrs6: args.v6.iter().map(|v| v.outside_addr).collect(),
                answer6: args.v6.iter().flat_map(|v| v.public.clone()).collect(),
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
        if let Some(v6) = &args.v6 {
            router
                .add_routes6(&[Route6 {
                    to: "::/0".parse()?,
                    port: OUTSIDE,
                    via: v6.gateway,
                }])
                .map_err(|e| e.to_string())?;
        }
        if let Some((_, peers)) = &args.fleet {
            // Packets for another node's port go out on the outside to that node.
            router
                .set_peers(peers.iter().map(|p| (OUTSIDE, p.0)).collect())
                .map_err(|e| e.to_string())?;
        }
        let mut pipeline = Pipeline::new(args)?;
        let publics = args.public.iter().map(|a| (*a, 32)).collect();
        let here = args.outside_addr.addr;
        let v6 = args.v6.as_ref().map(|v| {
            (
                v.public.iter().map(|a| (*a, 128)).collect(),
                v.outside_addr.addr,
            )
        });
        pipeline.announce = args.announce.start(publics, here, here, v6)?;
        say!(
            "nat-gateway: ready: inside {} {}, outside {} {}, profile {:?}, public {:?}{}",
            args.inside,
            args.inside_addr,
            args.outside,
            args.outside_addr,
            args.profile,
            args.public,
            args.v6.as_ref().map_or(String::new(), |v| format!(
                "; IPv6 inside {}, outside {}, public {:?}",
                v.inside_addr, v.outside_addr, v.public
            ))
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
        use etherparse::{
            Ethernet2Header, Icmpv4Type, PacketBuilder, PacketBuilderStep,
            icmpv4::DestUnreachableHeader,
        };

        /// A frame from the server 192.0.2.2 to the public address 198.18.0.1, parsed,
        /// dropped by the NAT for `reason`.
        fn answer(
            build: impl FnOnce(PacketBuilderStep<Ethernet2Header>) -> Vec<u8>,
            reason: DropReason,
        ) -> Packet<Vec<u8>> {
            let frame = build(PacketBuilder::ethernet2([2; 6], [4; 6]));
            let len = frame.len();
            let mut batch = Batch::new();
            batch.push(Packet::new(frame, 0, len).unwrap()).unwrap();
            ParseStage::new(nf_core::ParseConfig::default())
                .process(Instant::from_nanos(0), &mut batch);
            let mut p = batch.drain().next().unwrap();
            assert_eq!(p.meta.verdict, Verdict::Pass);
            p.meta.verdict = Verdict::Drop(reason);
            p
        }

        /// Which public port decides the node an outside packet without a session goes to.
        #[test]
        fn finds_the_public_port_of_answers_and_of_icmp_errors() {
            let public = [IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))];
            let (server, us, other) = ([192, 0, 2, 2], [198, 18, 0, 1], [198, 18, 0, 9]);
            let udp = |b: PacketBuilderStep<Ethernet2Header>| {
                let mut out = Vec::new();
                b.ipv4(server, us, 64)
                    .udp(7000, 40_000)
                    .write(&mut out, b"hi")
                    .unwrap();
                out
            };
            let p = answer(udp, DropReason::NatNoMapping);
            assert_eq!(public_port(&p, &public), Some(40_000));
            // Echo replies: the identifier.
            let pong = |b: PacketBuilderStep<Ethernet2Header>| {
                let mut out = Vec::new();
                b.ipv4(server, us, 64)
                    .icmpv4_echo_reply(40_001, 1)
                    .write(&mut out, b"ping")
                    .unwrap();
                out
            };
            assert_eq!(
                public_port(&answer(pong, DropReason::NoSession), &public),
                Some(40_001)
            );
            // Errors: the quoted packet's source port, if it left from a public address.
            let error = |from: [u8; 4]| {
                move |b: PacketBuilderStep<Ethernet2Header>| {
                    let mut quote = Vec::new();
                    PacketBuilder::ipv4(from, server, 64)
                        .udp(40_002, 7999)
                        .write(&mut quote, b"anyone?")
                        .unwrap();
                    let mut out = Vec::new();
                    b.ipv4(server, us, 64)
                        .icmpv4(Icmpv4Type::DestinationUnreachable(
                            DestUnreachableHeader::Port,
                        ))
                        .write(&mut out, &quote)
                        .unwrap();
                    out
                }
            };
            let e = answer(error(us), DropReason::RelatedNoSession);
            assert_eq!(public_port(&e, &public), Some(40_002));
            assert_eq!(
                public_port(&answer(error(other), DropReason::RelatedNoSession), &public),
                None
            );
            // Only packets no session took.
            let mut passed = answer(udp, DropReason::NatNoMapping);
            passed.meta.verdict = Verdict::Pass;
            assert_eq!(public_port(&passed, &public), None);
            assert_eq!(
                public_port(&answer(error(us), DropReason::NatNoMapping), &public),
                None
            );
            assert_eq!(
                public_port(&answer(udp, DropReason::RelatedNoSession), &public),
                None
            );
            assert_eq!(public_port(&p, &["198.18.0.9".parse().unwrap()]), None);
            // IPv6 (NAT66 in a fleet): an echo reply's identifier, a UDP answer's port.
            let public6 = ["2001:db8:ff::1".parse().unwrap()];
            let (server6, us6) = (
                "2001:db8:2::2".parse::<Ipv6Addr>().unwrap().octets(),
                "2001:db8:ff::1".parse::<Ipv6Addr>().unwrap().octets(),
            );
            let pong6 = |b: PacketBuilderStep<Ethernet2Header>| {
                let mut out = Vec::new();
                b.ipv6(server6, us6, 64)
                    .icmpv6_echo_reply(40_003, 1)
                    .write(&mut out, b"ping")
                    .unwrap();
                out
            };
            assert_eq!(
                public_port(&answer(pong6, DropReason::NoSession), &public6),
                Some(40_003)
            );
            let udp6 = |b: PacketBuilderStep<Ethernet2Header>| {
                let mut out = Vec::new();
                b.ipv6(server6, us6, 64)
                    .udp(7000, 40_004)
                    .write(&mut out, b"hi")
                    .unwrap();
                out
            };
            let p6 = answer(udp6, DropReason::NatNoMapping);
            assert_eq!(public_port(&p6, &public6), Some(40_004));
            assert_eq!(public_port(&p6, &public), None);
        }

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
            assert_eq!(
                parse_forward("udp:53=[fd00::2]:5353"),
                Some((17, 53, "[fd00::2]:5353".parse().unwrap()))
            );
            assert_eq!(parse_forward("tcp:80=fd00::2:80"), None);
            // IPv6: both addresses, the public one the outside one unless given.
            let six = parse_args(
                argv(
                    "--inside ig --inside-addr 10.0.0.1/24 --outside og --outside-addr 203.0.113.1/24 \
                     --inside-addr6 fd00::1/64 --outside-addr6 2001:db8::1/64 --gateway6 2001:db8::fe",
                )
                .into_iter(),
            )
            .unwrap()
            .unwrap()
            .v6
            .unwrap();
            assert_eq!(six.public, vec!["2001:db8::1".parse::<Ipv6Addr>().unwrap()]);
            assert_eq!(six.gateway, Some("2001:db8::fe".parse().unwrap()));
            assert_eq!(six.inside_addr, "fd00::1/64".parse().unwrap());
            for half in [
                "--inside-addr6 fd00::1/64",
                "--outside-addr6 2001:db8::1/64",
                "--public6 2001:db8::9",
            ] {
                let line = format!(
                    "--inside ig --inside-addr 10.0.0.1/24 --outside og --outside-addr 203.0.113.1/24 {half}"
                );
                assert!(parse_args(argv(&line).into_iter()).is_err(), "{half}");
            }
            assert!(!b.window && b.sessions == 1000);
            assert_eq!(b.metrics, Some("127.0.0.1:9464".parse().unwrap()));
            assert_eq!(a.metrics, None);
            assert_eq!(a.gateway, Some(Ipv4Addr::new(203, 0, 113, 254)));
            assert_eq!(a.inside_addr.len, 24);
            assert_eq!(parse_args(argv("--help").into_iter()), Ok(None));
            let fleet = "--inside ig --inside-addr 10.0.0.1/24 --outside og \
                         --outside-addr 203.0.113.1/24 --profile hyperplane \
                         --sync-listen 10.3.0.1:7600";
            let f = parse_args(
                argv(&format!(
                    "{fleet} --fleet-peer 203.0.113.2,10.3.0.2:7600 \
                     --fleet-peer 203.0.113.3,10.3.0.3:7600 --sync-key-file k"
                ))
                .into_iter(),
            )
            .unwrap()
            .unwrap();
            let (listen, peers) = f.fleet.unwrap();
            assert_eq!(listen, "10.3.0.1:7600".parse().unwrap());
            assert_eq!(
                peers,
                [
                    (
                        Ipv4Addr::new(203, 0, 113, 2),
                        "10.3.0.2:7600".parse().unwrap()
                    ),
                    (
                        Ipv4Addr::new(203, 0, 113, 3),
                        "10.3.0.3:7600".parse().unwrap()
                    ),
                ]
            );
            assert_eq!(f.sync_key_file, Some(PathBuf::from("k")));
            // A cgn fleet, logging its blocks.
            let c = parse_args(
                argv(&format!(
                    "{fleet} --fleet-peer 203.0.113.2,10.3.0.2:7600 --profile cgn --block-log b"
                ))
                .into_iter(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(c.block_log, Some(PathBuf::from("b")));
            assert!(matches!(c.profile, Profile::Nat(nf_nat::Profile::Cgn(_))));
            assert_eq!(f.block_log, None);
            let announced = parse_args(
                argv(&format!(
                    "{fleet} --fleet-peer 203.0.113.2,10.3.0.2:7600 --bgp-peer 10.3.0.254 --bfd --drain 1"
                ))
                .into_iter(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                announced.announce.peer,
                Some("10.3.0.254:179".parse().unwrap())
            );
            assert!(announced.announce.bfd && !f.announce.bfd);
            assert_eq!(announced.announce.drain, 1.0);
            // The split follows the outside addresses: this node (.1) is the first.
            let (split, node, peer_nodes) = Fleet::place(f.outside_addr.addr, &peers);
            assert_eq!((split.nodes, node, peer_nodes), (3, 0, vec![1, 2]));
            let (_, node, peer_nodes) = Fleet::place(Ipv4Addr::new(203, 0, 113, 9), &peers);
            assert_eq!((node, peer_nodes), (2, vec![0, 1]));
            for bad in [
                // Each alone, the other half missing.
                fleet.to_string(),
                "--inside ig --inside-addr 10.0.0.1/24 --outside og --outside-addr 203.0.113.1/24 \
                 --fleet-peer 203.0.113.2,10.3.0.2:7600"
                    .into(),
                format!("{fleet} --fleet-peer 203.0.113.2"),
                format!("{fleet} --fleet-peer 10.3.0.2:7600"),
                format!("{fleet} --fleet-peer x,10.3.0.2:7600"),
                // This node's own outside address, or one twice.
                format!("{fleet} --fleet-peer 203.0.113.1,10.3.0.2:7600"),
                format!(
                    "{fleet} --fleet-peer 203.0.113.2,10.3.0.2:7600 --fleet-peer 203.0.113.2,10.3.0.3:7600"
                ),
                format!("{fleet} --fleet-peer 203.0.113.2,10.3.0.2:7600 --profile off"),
                // Blocks only in the cgn profile.
                format!("{fleet} --fleet-peer 203.0.113.2,10.3.0.2:7600 --block-log b"),
                "--inside ig --inside-addr 10.0.0.1/24 --outside og --outside-addr 203.0.113.1/24 \
                 --sync-key-file k"
                    .into(),
                format!("{fleet} --fleet-peer 203.0.113.2,10.3.0.2:7600 --bfd"),
                format!("{fleet} --fleet-peer 203.0.113.2,10.3.0.2:7600 --bgp-peer x"),
            ] {
                assert!(parse_args(argv(&bad).into_iter()).is_err(), "{bad}");
            }
            // Each bad value on an otherwise good command line, each required flag left out.
            let good = "--inside ig --inside-addr 10.0.0.1/24 --outside og \
                        --outside-addr 203.0.113.1/24";
            let bad = [
                "--inside-addr 10.0.0.1/33",
                "--gateway 203.0.113",
                "--profile nope",
                "--filtering x",
                "--forward tcp:80",
                "--forward icmp:1=10.0.0.2:1",
                "--forward tcp:x=10.0.0.2:80",
                "--sessions 1",
                "--sessions 16777217",
                "--public x",
                "--duration -1",
                "--metrics 9464",
                "--bogus 1",
                "--cpu -1",
                "--io tap",
                "--drain 1",
                "--bgp-peer 10.3.0.254 --bgp-peer-as x",
                "--public",
            ];
            let required = ["--inside", "--inside-addr", "--outside", "--outside-addr"];
            let parse = |w: Vec<String>| parse_args(w.into_iter());
            assert_eq!(
                nf_examples::cli::check_parsing(parse, good, &bad, &required),
                Ok(())
            );
        }
    }
}
