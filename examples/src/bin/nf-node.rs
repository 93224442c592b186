//! `nf-node`: a node that runs — a VXLAN gateway with connection tracking on N workers,
//! configured by snapshots it pulls at a constant rate.
//!
//! ```text
//!                  receive loop (main thread)                  workers 0..N
//!  underlay RX ─► ARP for --local answered ─► decap ─┐      ┌─► reorder ─► conntrack ─► overlay TX ring
//!                                                    ├─ steer ┤
//!  overlay RX ──► zone = VNI ─► parse ───────────────┘      └─► reorder ─► conntrack ─► encap ─► underlay TX ring
//!        ▲ snapshot puller: the whole config from a directory or a URL, every --pull-every
//! ```
//!
//! - **Configuration** is a snapshot ([`nf_core::snapshot`]): a versioned, checksummed file
//!   holding `key = value` lines (see [`USAGE`](linux) or `nf-node --help`), read from a
//!   directory (`DIR/snapshot.nfs`, the embedded default) or an `http://` URL. It is pulled
//!   every `--pull-every` seconds whether or not it changed; a source that is down, a torn,
//!   corrupt or older file, or a config that does not validate changes nothing (counted,
//!   and logged once per change of reason). The VNI applies live, between batches; the
//!   interfaces and addresses are read at start (a snapshot changing them is logged as
//!   needing a restart and otherwise applied).
//! - **Workers** ([`nf_examples::workers`]): each owns a fragment reorder
//!   ([`nf_core::conntrack::FragmentReorder`]: a later IP fragment that arrives before its
//!   first waits for it, copied out of the receive ring), a connection-tracking table, an
//!   encap stage and transmit rings on both interfaces; [`nf_core::steer::Steering`] sends
//!   both directions of every inner flow to the same worker, and every fragment of a packet
//!   with them (by addresses); the pool leaves each batch the room the reorder releases
//!   fragments into. One worker (`--workers 1`, the default) runs on the receive loop's own
//!   thread (`PoolConfig::inline`), so a batch goes from receive to transmit without a
//!   hand-over between threads.
//! - **I/O** ([`nf_examples::io`]): the receive loop takes frames from an AF_XDP socket per
//!   interface where one opens (`--io auto`, the default; `--io xdp` or `--io packet` for
//!   either alone) or from `PACKET_MMAP` receive rings; the frames travel to the workers in
//!   place (a worker dropping one gives its buffer back to the receive side). One worker
//!   sends through the receive side's own sockets (AF_XDP's transmit ring included: it runs
//!   on the same thread); several workers each send on `PACKET_MMAP` transmit rings of their
//!   own (AF_XDP's one transmit ring per socket would need a lock on the packet path, or a
//!   socket per worker sharing one UMEM). Interfaces that go down are waited for.
//! - **Counters**: every `--stats-every` seconds one line; on SIGINT/SIGTERM (or after
//!   `--duration`) every counter as `stage.counter value`, summed over workers.
//!
//! `nf-node snapshot VERSION CONFIG OUT` writes a snapshot file from a config text file
//! (atomically: a reader sees the old file or the new one).
//!
//! `examples/tests/nf_node.rs` runs it between a Linux VXLAN device and a host in network
//! namespaces, changes the VNI live, feeds it a corrupt file and takes the source away, and
//! sends it UDP datagrams as fragments in reverse order.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("nf-node: runs on Linux only (PACKET_MMAP rings)");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod linux {
    use nf_core::conntrack::{Conntrack, ConntrackConfig, FragmentReorder, ReorderConfig, Sizes};
    use nf_core::snapshot::{
        self, Codec, FileSource, HttpSource, PullResult, Puller, PullerCounters, Source,
    };
    use nf_core::steer::{SteerFields, SteerHash, Steering};
    use nf_core::{
        Batch, Duration, FlowHasher, Instant, ParseStage, PortId, Stage, StageControl, StdClock,
        Verdict, ZoneId,
    };
    use nf_examples::curl::CurlSource;
    use nf_examples::io::{
        Interface, IoKind, Link, PollEvents, RingConfig, RingFrame, TxCounters, TxRing, parse_mac,
        wait_fds,
    };
    use nf_examples::say;
    use nf_examples::vtep::{UnderlayFrame, bridge_control, classify_underlay};
    use nf_examples::workers::{CounterTotals, PoolConfig, Worker, WorkerPool};
    use nf_tunnel::{
        DecapConfig, DecapStage, EncapConfig, EncapStage, NonTunnel, TunnelKind, Underlay,
        VniSource, VniTable, ZoneMap,
    };
    use parking_lot::Mutex;
    use std::net::{IpAddr, Ipv4Addr};
    use std::os::fd::AsFd;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const USAGE: &str = "\
usage: nf-node --config DIR|URL [--workers N] [--cpus LIST] [--pull-every SECS]
               [--stats-every SECS] [--duration SECS] [--ca-file PEM]
               [--io auto|packet|xdp]
       nf-node snapshot VERSION CONFIG OUT

Runs a VXLAN gateway with connection tracking on N workers (default 1), configured
by a snapshot pulled from DIR/snapshot.nfs, an http:// URL or an https:// URL
(through curl; --ca-file trusts PEM certificates instead of the system's) every
--pull-every seconds (default 1), on a thread of its own. Prints one line of counters every --stats-every seconds
(default 10; 0 = never) and every counter on SIGINT/SIGTERM or after --duration.
--cpus 0,1 pins worker w to the w-th CPU of the list; one worker (the default) runs
its pipeline on the receive loop's thread (pinned to the first CPU of --cpus), as
soon as a batch is received. --io picks how frames are
received: AF_XDP where it opens, else PACKET_MMAP rings (auto, the default), or
either alone; one worker sends the same way, several on PACKET_MMAP rings.

`nf-node snapshot` writes OUT, the snapshot of version VERSION holding the config
file CONFIG (written to OUT.tmp, then renamed).

The config: `key = value` lines, `#` comments:
  underlay = IF        interface towards the remote VTEP (at start)
  overlay = IF         interface bridged into the tunnel (at start)
  local = IPV4         our underlay address; ARP for it is answered (at start)
  remote = IPV4        the remote VTEP (at start)
  remote_mac = MAC     the remote VTEP's or the underlay router's MAC (at start)
  vni = N              the VXLAN network identifier (live)
  port = P             VXLAN UDP port, default 4789 (at start)
  sessions = N         connection-tracking sessions per worker and family,
                       default 65536 (at start)";

    /// What VXLAN over IPv4 adds to a frame.
    const VXLAN_OVERHEAD: usize = 14 + 20 + 8 + 8;
    /// The longest the receive loop sleeps before it looks at its timers again.
    const IDLE_WAIT_MS: i32 = 20;

    /// The configuration a snapshot holds.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct NodeConfig {
        underlay: String,
        overlay: String,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        remote_mac: [u8; 6],
        vni: u32,
        port: u16,
        sessions: u32,
    }

    impl NodeConfig {
        /// The settings read only at start differ.
        fn needs_restart(&self, other: &Self) -> bool {
            Self {
                vni: other.vni,
                ..self.clone()
            } != *other
        }
    }

    /// `key = value` lines.
    struct TextCodec;

    impl Codec for TextCodec {
        type Config = NodeConfig;

        fn decode(&self, payload: &[u8]) -> Result<NodeConfig, String> {
            let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_string())?;
            let (mut underlay, mut overlay, mut local, mut remote) = (None, None, None, None);
            let (mut remote_mac, mut vni) = (None, None);
            let (mut port, mut sessions) = (nf_tunnel::VXLAN_PORT, 65536u32);
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let (k, v) = line
                    .split_once('=')
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .ok_or_else(|| format!("line {}: not `key = value`", n + 1))?;
                let bad = |what: &str| format!("line {}: {k} = {v}: not {what}", n + 1);
                match k {
                    "underlay" => underlay = Some(v.to_string()),
                    "overlay" => overlay = Some(v.to_string()),
                    "local" => local = Some(v.parse().map_err(|_| bad("an IPv4 address"))?),
                    "remote" => remote = Some(v.parse().map_err(|_| bad("an IPv4 address"))?),
                    "remote_mac" => remote_mac = Some(parse_mac(v).ok_or_else(|| bad("a MAC"))?),
                    "vni" => vni = Some(v.parse::<u32>().map_err(|_| bad("a number"))?),
                    "port" => port = v.parse().map_err(|_| bad("a UDP port"))?,
                    "sessions" => sessions = v.parse().map_err(|_| bad("a number"))?,
                    _ => return Err(format!("line {}: unknown key {k}", n + 1)),
                }
            }
            let need = |k: &str| format!("{k} is missing");
            Ok(NodeConfig {
                underlay: underlay.ok_or_else(|| need("underlay"))?,
                overlay: overlay.ok_or_else(|| need("overlay"))?,
                local: local.ok_or_else(|| need("local"))?,
                remote: remote.ok_or_else(|| need("remote"))?,
                remote_mac: remote_mac.ok_or_else(|| need("remote_mac"))?,
                vni: vni.ok_or_else(|| need("vni"))?,
                port,
                sessions,
            })
        }

        fn validate(&self, c: &NodeConfig) -> Result<(), String> {
            if c.vni > 0x00ff_ffff {
                return Err(format!("vni {} does not fit in 24 bits", c.vni));
            }
            if c.underlay == c.overlay {
                return Err("underlay and overlay are the same interface".into());
            }
            if !(16..=1 << 24).contains(&c.sessions) {
                return Err(format!("sessions {} not in 16..=16777216", c.sessions));
            }
            Ok(())
        }
    }

    #[derive(Debug, PartialEq)]
    struct Args {
        config: String,
        workers: u16,
        cpus: Vec<usize>,
        pull_every: f64,
        stats_every: f64,
        duration: Option<f64>,
        ca_file: Option<String>,
        io: IoKind,
    }

    enum Command {
        Run(Args),
        Snapshot {
            version: u64,
            config: String,
            out: String,
        },
        Help,
    }

    pub(crate) fn main() -> ExitCode {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let result = match parse_args(&argv) {
            Ok(Command::Help) => {
                say!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Ok(Command::Snapshot {
                version,
                config,
                out,
            }) => write_snapshot(version, &config, &out),
            Ok(Command::Run(args)) => run(&args),
            Err(e) => {
                eprintln!("nf-node: {e}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nf-node: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn parse_args(argv: &[String]) -> Result<Command, String> {
        if argv.first().map(String::as_str) == Some("snapshot") {
            let [_, version, config, out] = argv else {
                return Err("snapshot needs VERSION CONFIG OUT".into());
            };
            let version = version
                .parse()
                .map_err(|_| format!("{version}: not a version"))?;
            return Ok(Command::Snapshot {
                version,
                config: config.clone(),
                out: out.clone(),
            });
        }
        let mut a = Args {
            config: String::new(),
            workers: 1,
            cpus: Vec::new(),
            pull_every: 1.0,
            stats_every: 10.0,
            duration: None,
            ca_file: None,
            io: IoKind::Auto,
        };
        let mut it = argv.iter();
        let secs = nf_examples::cli::seconds;
        while let Some(flag) = it.next() {
            if matches!(flag.as_str(), "-h" | "--help") {
                return Ok(Command::Help);
            }
            let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--config" => a.config = v.clone(),
                "--workers" => {
                    a.workers = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| format!("--workers {v}: not 1..=64"))?;
                }
                "--cpus" => {
                    a.cpus = v
                        .split(',')
                        .map(|c| {
                            c.trim()
                                .parse()
                                .map_err(|_| format!("--cpus {v}: not a list of CPUs"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--pull-every" => a.pull_every = secs(flag, v)?.max(0.01),
                "--stats-every" => a.stats_every = secs(flag, v)?,
                "--duration" => a.duration = Some(secs(flag, v)?),
                "--ca-file" => a.ca_file = Some(v.clone()),
                "--io" => {
                    a.io = v
                        .parse()
                        .map_err(|_| format!("--io {v}: not auto, packet or xdp"))?;
                }
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if a.config.is_empty() {
            return Err("--config is required".into());
        }
        Ok(Command::Run(a))
    }

    fn write_snapshot(version: u64, config: &str, out: &str) -> Result<(), String> {
        let text = std::fs::read(config).map_err(|e| format!("{config}: {e}"))?;
        let c = TextCodec
            .decode(&text)
            .map_err(|e| format!("{config}: {e}"))?;
        TextCodec
            .validate(&c)
            .map_err(|e| format!("{config}: {e}"))?;
        let tmp = format!("{out}.tmp");
        std::fs::write(&tmp, snapshot::encode(version, &text))
            .map_err(|e| format!("{tmp}: {e}"))?;
        std::fs::rename(&tmp, out).map_err(|e| format!("{out}: {e}"))
    }

    /// The source named by `--config`.
    enum AnySource {
        File(FileSource),
        Http(HttpSource),
        Curl(CurlSource),
    }

    impl Source for AnySource {
        fn fetch(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
            match self {
                Self::File(s) => s.fetch(buf),
                Self::Http(s) => s.fetch(buf),
                Self::Curl(s) => s.fetch(buf),
            }
        }
    }

    /// Where a worker sends: transmit rings of its own, or (the one inline worker, which runs
    /// on the receive loop's thread) the receive loop's own `Link`, AF_XDP's transmit ring
    /// included. The lock is never contended: only that one thread takes it.
    enum Out {
        Ring(TxRing),
        Shared(Arc<Mutex<Link>>),
    }

    impl Out {
        fn send(&mut self, frame: &[u8]) {
            let _ = match self {
                Self::Ring(r) => r.send(frame),
                Self::Shared(l) => l.lock().send(frame),
            };
        }

        fn flush(&mut self) {
            let _ = match self {
                Self::Ring(r) => r.flush(),
                Self::Shared(l) => l.lock().flush(),
            };
        }

        fn counters(&self) -> TxCounters {
            match self {
                Self::Ring(r) => r.counters(),
                Self::Shared(l) => l.lock().counters().1,
            }
        }
    }

    /// One worker: its fragment reorder, its session table, its encap stage, where it sends.
    struct NodeWorker {
        /// Later fragments that arrive before their first wait for it (copied out of the
        /// receive ring while they wait), so that every fragment reaches the session.
        reorder: FragmentReorder<RingFrame>,
        ct: Conntrack,
        encap: EncapStage,
        to_overlay: Out,
        to_underlay: Out,
        overlay_frame_max: usize,
        too_big_for_overlay: u64,
    }

    impl Worker<RingFrame> for NodeWorker {
        fn process(&mut self, now: Instant, batch: &mut Batch<RingFrame>) {
            self.reorder.process(now, batch);
            self.ct.process(now, batch);
            // What came out of the tunnel goes to the overlay as it is; the rest is encapsulated.
            for p in batch.packets_mut() {
                if p.meta.verdict.is_pass() && p.meta.tunnel.is_decapsulated() {
                    if p.len() <= self.overlay_frame_max {
                        self.to_overlay.send(p.data());
                    } else {
                        self.too_big_for_overlay += 1;
                    }
                    p.meta.verdict = Verdict::Tx(PortId(1));
                }
            }
            self.encap.process(now, batch);
            for p in batch.packets().iter().filter(|p| p.meta.verdict.is_pass()) {
                self.to_underlay.send(p.data());
            }
            self.to_overlay.flush();
            self.to_underlay.flush();
        }

        fn poll_timeout(&self) -> Option<Instant> {
            self.ct.poll_timeout()
        }

        fn handle_timeout(&mut self, now: Instant) {
            self.ct.handle_timeout(now, 4096);
        }

        fn batch_room(&self) -> usize {
            self.reorder.batch_room()
        }

        fn visit_counters(&self, visit: &mut dyn FnMut(&'static str, &'static str, u64)) {
            self.reorder.visit_counters(visit);
            self.ct.visit_counters(visit);
            self.encap.visit_counters(visit);
            for (side, ring) in [
                ("overlay", &self.to_overlay),
                ("underlay", &self.to_underlay),
            ] {
                let c = ring.counters();
                let name = |n: &'static str| -> &'static str {
                    match (side, n) {
                        ("overlay", "tx") => "overlay_tx",
                        ("overlay", "full") => "overlay_tx_ring_full",
                        ("overlay", "down") => "overlay_tx_dropped_link_down",
                        ("underlay", "tx") => "underlay_tx",
                        ("underlay", "full") => "underlay_tx_ring_full",
                        _ => "underlay_tx_dropped_link_down",
                    }
                };
                visit("worker", name("tx"), c.queued);
                visit("worker", name("full"), c.full);
                visit("worker", name("down"), c.dropped_link_down);
            }
            visit("worker", "overlay_too_big", self.too_big_for_overlay);
        }
    }

    fn run(args: &Args) -> Result<(), String> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .map_err(|e| format!("signal handler: {e}"))?;
        }
        let clock = StdClock::new();
        let source = if args.config.starts_with("https://") {
            let curl = CurlSource::new(&args.config);
            AnySource::Curl(match &args.ca_file {
                Some(ca) => curl.ca_file(ca),
                None => curl,
            })
        } else if args.config.starts_with("http://") {
            AnySource::Http(HttpSource::new(&args.config)?)
        } else {
            AnySource::File(FileSource::new(&args.config))
        };
        let interval = Duration::from_nanos((args.pull_every * 1e9) as u64);
        let mut puller = Puller::new(source, TextCodec, interval);
        // The first good snapshot: nothing runs without one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut cell = loop {
            let r = puller.handle_timeout(clock.now());
            if let Some(cell) = puller.subscribe() {
                break cell;
            }
            if stop.load(Ordering::Relaxed) || std::time::Instant::now() > deadline {
                return Err(format!("no usable snapshot from {}: {r:?}", args.config));
            }
            std::thread::sleep(
                clock
                    .to_std(puller.poll_timeout())
                    .saturating_duration_since(std::time::Instant::now()),
            );
        };
        // From now on the puller runs on a thread of its own: a slow or hung source never
        // holds up the packet loop, which only picks the published snapshot up.
        let pulls = Arc::new(Mutex::new(PullerCounters::default()));
        let puller_thread = {
            let (stop, pulls) = (Arc::clone(&stop), Arc::clone(&pulls));
            std::thread::Builder::new()
                .name("nf-snapshot".into())
                .spawn(move || pull_forever(puller, clock, &stop, &pulls))
                .map_err(|e| format!("snapshot thread: {e}"))?
        };
        let start_cfg = cell.current().config().clone();
        let mut vni = start_cfg.vni;
        let under = Interface::by_name(&start_cfg.underlay)
            .map_err(|e| format!("{}: {e}", start_cfg.underlay))?;
        let over = Interface::by_name(&start_cfg.overlay)
            .map_err(|e| format!("{}: {e}", start_cfg.overlay))?;
        let frame_max = over.mtu.max(under.mtu) + 14 + VXLAN_OVERHEAD;
        let rings = RingConfig::default().with_frames_up_to(frame_max);
        // The receive side of both interfaces (and the underlay's ARP replies, sent from this
        // thread).
        let open = |iface: &Interface| {
            Link::open(iface, args.io, &RingConfig::default(), frame_max)
                .map_err(|e| format!("{}: {e}", iface.name))
        };
        let under_io = Arc::new(Mutex::new(open(&under)?));
        let over_io = Arc::new(Mutex::new(open(&over)?));
        for (link, name) in [(&under_io, &under.name), (&over_io, &over.name)] {
            say!(
                "nf-node: {name}: receives on {}",
                match link.lock().kind() {
                    IoKind::Xdp => "AF_XDP",
                    _ => "PACKET_MMAP rings",
                }
            );
        }

        let table = |vni: u32| ZoneMap::Table(VniTable::new(&[(vni, ZoneId(vni))]));
        let mut decap = DecapStage::new(DecapConfig {
            ports: vec![(start_cfg.port, TunnelKind::Vxlan)],
            zones: table(vni),
            non_tunnel: NonTunnel::Drop,
            ..DecapConfig::default()
        })
        .map_err(|e| format!("decap config: {e}"))?;
        let mut parse = ParseStage::default();
        let mut encap_cfg = EncapConfig::vxlan(
            vni,
            Underlay {
                src_mac: under.mac,
                dst_mac: start_cfg.remote_mac,
                src: IpAddr::V4(start_cfg.local),
                dst: IpAddr::V4(start_cfg.remote),
            },
        );
        // The VNI is the zone the receive loop tagged: a new VNI needs no worker change.
        encap_cfg.vni = VniSource::Zone;
        encap_cfg.dst_port = start_cfg.port;
        encap_cfg.mtu = u16::try_from(under.mtu).unwrap_or(u16::MAX);

        // The key of the steering and session hashes: per process, so nobody outside can aim
        // flows at one worker or one bucket.
        let mut secret = [0u8; 16];
        {
            use std::io::Read as _;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut secret))
                .map_err(|e| format!("/dev/urandom: {e}"))?;
        }
        let steering = Steering::new(
            args.workers,
            SteerHash::Keyed(FlowHasher::new(secret)),
            SteerFields::FiveTuple,
        );
        // One worker runs to completion on this thread (`PoolConfig::inline`), and sends
        // through the receive side's own Links; more workers send on rings of their own.
        let inline = args.workers == 1;
        let out = |link: &Arc<Mutex<Link>>, iface: &Interface, w: u16| {
            if inline {
                return Ok(Out::Shared(Arc::clone(link)));
            }
            TxRing::open(iface, &rings)
                .map(Out::Ring)
                .map_err(|e| format!("worker {w}: {}: {e}", iface.name))
        };
        let mut workers = Vec::with_capacity(usize::from(args.workers));
        for w in 0..args.workers {
            let ct = ConntrackConfig::new(secret).sizes(Sizes {
                v4: start_cfg.sessions,
                v6: start_cfg.sessions,
            });
            workers.push(NodeWorker {
                reorder: FragmentReorder::new(ReorderConfig::new(secret))
                    .on_hold(RingFrame::detach),
                ct: Conntrack::new(ct, ()).map_err(|e| format!("worker {w}: conntrack: {e:?}"))?,
                encap: EncapStage::new(encap_cfg.clone())
                    .map_err(|e| format!("worker {w}: encap: {e}"))?,
                to_overlay: out(&over_io, &over, w)?,
                to_underlay: out(&under_io, &under, w)?,
                overlay_frame_max: over.mtu + 14,
                too_big_for_overlay: 0,
            });
        }
        let mut workers = workers.into_iter();
        let mut pool_cfg = PoolConfig::default();
        pool_cfg.cpus.clone_from(&args.cpus);
        pool_cfg.inline = inline;
        if let (true, Some(&cpu)) = (pool_cfg.inline, args.cpus.first()) {
            // Best effort, as for worker threads: a container may forbid it.
            let _ = nf_examples::io::pin_to_cpu(cpu);
        }
        let mut pool = WorkerPool::start(
            steering,
            clock,
            &pool_cfg,
            // One prepared worker per call: `start` calls this exactly `args.workers` times.
            |_| workers.next().expect("one prepared worker per worker"),
        )
        .map_err(|e| format!("starting workers: {e}"))?;
        say!(
            "nf-node: ready: {} workers, snapshot version {}, overlay {} <-> VNI {vni} over {} to {}",
            args.workers,
            cell.version(),
            over.name,
            under.name,
            start_cfg.remote
        );

        let mut batch: Batch<RingFrame> = Batch::new();
        let mut events = [PollEvents::default(); 2];
        let (mut arp_replies, mut ignored) = (0u64, 0u64);
        let began = std::time::Instant::now();
        let mut next_stats = began;
        loop {
            if stop.load(Ordering::Relaxed)
                || args
                    .duration
                    .is_some_and(|d| began.elapsed().as_secs_f64() >= d)
            {
                break;
            }
            let now = clock.now();
            // An inline worker's timers (threaded workers run their own).
            pool.handle_timeout(now);
            // The snapshot the puller thread published last, applied between batches.
            if cell.refresh() {
                let c = cell.current().config();
                if start_cfg.needs_restart(c) {
                    eprintln!(
                        "nf-node: snapshot {} changes settings read at start: they apply after a restart",
                        cell.version()
                    );
                }
                vni = c.vni;
                decap.set_zones(table(vni));
                say!(
                    "nf-node: snapshot version {} applied: VNI {vni}",
                    cell.version()
                );
            }

            // Underlay: ARP for us answered here, the rest decapsulated and steered.
            let mut moved = under_io.lock().recv(&mut batch);
            for p in batch.packets_mut() {
                match classify_underlay(p.data(), under.mac, start_cfg.local) {
                    UnderlayFrame::Tunnel => continue,
                    UnderlayFrame::ArpReply(reply) => {
                        let _ = under_io.lock().send(&reply);
                        arp_replies += 1;
                    }
                    UnderlayFrame::Ignore => ignored += 1,
                }
                p.meta.verdict = Verdict::Tx(PortId(0));
            }
            if moved != 0 {
                decap.process(now, &mut batch);
                bridge_control(&mut batch);
                pool.dispatch(&mut batch);
                let _ = under_io.lock().flush();
            }

            // Overlay: tagged with the VNI's zone, parsed, steered.
            let n = over_io.lock().recv(&mut batch);
            if n != 0 {
                moved += n;
                for p in batch.packets_mut() {
                    p.meta.zone = ZoneId(vni);
                }
                parse.process(now, &mut batch);
                bridge_control(&mut batch);
                pool.dispatch(&mut batch);
            }

            if args.stats_every > 0.0 && std::time::Instant::now() >= next_stats {
                next_stats += std::time::Duration::from_secs_f64(args.stats_every);
                let t = pool.counters();
                // One lock, taken and released before printing (parking_lot's mutex is not
                // reentrant).
                let p = pulls.lock().clone();
                let g = |s, c| t.get(&(s, c)).copied().unwrap_or(0);
                say!(
                    "nf-node: {:.0}s snapshot v{} ({} pulls, {} rejected) rx {}+{} steered {} sessions {} created {} decap drops {} encap drops {}",
                    began.elapsed().as_secs_f64(),
                    cell.version(),
                    p.pulls,
                    p.rejected.iter().sum::<u64>(),
                    under_io.lock().counters().0.frames,
                    over_io.lock().counters().0.frames,
                    pool.pool_counters().steered,
                    g("conntrack", "v4_sessions") + g("conntrack", "v6_sessions"),
                    g("conntrack", "created"),
                    decap.counters().drops.total(),
                    g("tunnel_encap", "drops"),
                );
            }
            if moved == 0 {
                {
                    // Only this thread takes these locks (see `Out`).
                    let (u, o) = (under_io.lock(), over_io.lock());
                    wait_fds([u.as_fd(), o.as_fd()], IDLE_WAIT_MS, &mut events)
                        .map_err(|e| format!("poll: {e}"))?;
                }
                for (ev, (link, name)) in events
                    .iter()
                    .zip([(&under_io, &under.name), (&over_io, &over.name)])
                {
                    if ev.error
                        && let Some(e) = link.lock().take_error()
                    {
                        eprintln!("nf-node: {name}: {e}; waiting for it to come back");
                    }
                }
            }
        }

        let pool_counters = pool.pool_counters();
        let mut totals: CounterTotals = pool.shutdown();
        decap.visit_counters(&mut |s, c, v| {
            *totals.entry((s, c)).or_default() += v;
        });
        parse.visit_counters(&mut |s, c, v| {
            *totals.entry((s, c)).or_default() += v;
        });
        for (name, link) in [("underlay", &under_io), ("overlay", &over_io)] {
            let mut link = link.lock();
            let _ = link.update_kernel_stats();
            let c = link.counters().0;
            let names: [(&'static str, u64); 3] = if name == "underlay" {
                [
                    ("underlay_rx", c.frames),
                    ("underlay_rx_kernel_drops", c.kernel_drops),
                    ("underlay_link_down", c.link_down),
                ]
            } else {
                [
                    ("overlay_rx", c.frames),
                    ("overlay_rx_kernel_drops", c.kernel_drops),
                    ("overlay_link_down", c.link_down),
                ]
            };
            for (k, v) in names {
                totals.insert(("node", k), v);
            }
        }
        totals.insert(("node", "arp_replies"), arp_replies);
        totals.insert(("node", "ignored"), ignored);
        totals.insert(("node", "steered"), pool_counters.steered);
        totals.insert(("node", "unsteered"), pool_counters.unsteered);
        totals.insert(
            ("node", "backpressure_waits"),
            pool_counters.backpressure_waits,
        );
        totals.insert(("node", "snapshot_version"), cell.version());
        // `--duration` ends the loop without a signal: stop the puller thread too.
        stop.store(true, Ordering::Relaxed);
        let _ = puller_thread.join();
        pulls.lock().visit(&mut |c, v| {
            totals.insert(("snapshot", c), v);
        });
        say!(
            "nf-node: stopped after {:.2} s",
            began.elapsed().as_secs_f64()
        );
        for ((stage, counter), v) in totals {
            say!("{stage}.{counter} {v}");
        }
        Ok(())
    }

    /// The puller thread: pulls when due, logs a rejection once per change of reason, and
    /// publishes its counters, until `stop`.
    fn pull_forever(
        mut puller: Puller<AnySource, TextCodec>,
        clock: StdClock,
        stop: &AtomicBool,
        shared: &Mutex<PullerCounters>,
    ) {
        let mut last_reject = None::<String>;
        while !stop.load(Ordering::Relaxed) {
            let now = clock.now();
            if puller.poll_timeout() <= now {
                match puller.handle_timeout(now) {
                    PullResult::Rejected(r) => {
                        let why = r.to_string();
                        if last_reject.as_deref() != Some(why.as_str()) {
                            let version = puller.current().map_or(0, |s| s.version());
                            eprintln!(
                                "nf-node: snapshot rejected, keeping version {version}: {why}"
                            );
                            last_reject = Some(why);
                        }
                    }
                    PullResult::Applied(_) | PullResult::Unchanged(_) => last_reject = None,
                    PullResult::NotDue => {}
                }
                shared.lock().clone_from(puller.counters());
            }
            // Wake at least every 50 ms to notice `stop`.
            let due = clock
                .to_std(puller.poll_timeout())
                .saturating_duration_since(std::time::Instant::now());
            std::thread::sleep(due.min(std::time::Duration::from_millis(50)));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const CONFIG: &str = "# a node\nunderlay = ug\noverlay = og\nlocal = 192.0.2.2\n\
            remote = 192.0.2.1\nremote_mac = 02:00:00:00:00:01\nvni = 42  # live\n";

        #[test]
        fn decodes_and_validates_configs() {
            let c = TextCodec.decode(CONFIG.as_bytes()).unwrap();
            assert_eq!((c.vni, c.port, c.sessions), (42, 4789, 65536));
            assert!(TextCodec.validate(&c).is_ok());
            let mut live = c.clone();
            live.vni = 43;
            assert!(!c.needs_restart(&live));
            live.remote = Ipv4Addr::new(192, 0, 2, 9);
            assert!(c.needs_restart(&live));
            for bad in ["vni = x", "colour = blue", "just words", "local = ::1"] {
                assert!(
                    TextCodec
                        .decode(format!("{CONFIG}{bad}\n").as_bytes())
                        .is_err(),
                    "{bad}"
                );
            }
            assert!(TextCodec.decode(b"vni = 1\n").is_err(), "required keys");
            let big = TextCodec
                .decode(format!("{CONFIG}vni = 16777216\n").as_bytes())
                .unwrap();
            assert!(TextCodec.validate(&big).is_err());
        }

        #[test]
        fn parses_the_command_line() {
            let argv = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
            let Ok(Command::Run(a)) = parse_args(&argv(
                "--config /etc/nf --workers 2 --cpus 0,1 --duration 3",
            )) else {
                panic!("run");
            };
            assert_eq!((a.workers, a.cpus, a.duration), (2, vec![0, 1], Some(3.0)));
            assert_eq!(a.io, IoKind::Auto);
            let Ok(Command::Run(a)) = parse_args(&argv("--config /etc/nf --io packet")) else {
                panic!("run");
            };
            assert_eq!(a.io, IoKind::Packet);
            assert!(matches!(
                parse_args(&argv("snapshot 7 c.txt out.nfs")),
                Ok(Command::Snapshot { version: 7, .. })
            ));
            for bad in [
                "--workers 0",
                "--workers 2",
                "--config x --workers 65",
                "--config x --bogus 1",
                "--config x --io dpdk",
                "snapshot 7 c.txt",
            ] {
                assert!(parse_args(&argv(bad)).is_err(), "{bad}");
            }
        }
    }
}
