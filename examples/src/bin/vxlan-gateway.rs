//! `vxlan-gateway`: a VXLAN tunnel endpoint (VTEP) in user space, built from nf-tunnel's
//! stages, that bridges an Ethernet segment into a VXLAN tunnel to one remote VTEP (for
//! example a Linux kernel `vxlan` device).
//!
//! ```text
//!            overlay interface                            underlay interface
//!   hosts ──► RX ring ─► parse ─► encap (VXLAN, VNI) ─► TX ring ──► remote VTEP
//!   hosts ◄── TX ring ◄──────── decap (port, VNI) ◄───── RX ring ◄── remote VTEP
//!                                     ▲ ARP requests for --local are answered here
//! ```
//!
//! Each interface has a `PACKET_MMAP` receive ring and transmit ring ([`nf_examples::io`]),
//! and one thread serves both: frames are received into batches of up to 64 **in place** in
//! the receive ring (no copy, no allocation), go through the stages there, and are copied
//! once into the other interface's transmit ring, which one `sendto` per batch flushes.
//! Every frame received on the **overlay** interface is parsed (for the UDP source
//! port entropy) and encapsulated — Ethernet/IPv4/UDP/VXLAN pushed into the headroom the
//! ring leaves in front of it — to `--remote`/`--remote-mac`, and sent on the **underlay**
//! interface. Every frame received on the underlay interface for our MAC is decapsulated:
//! VXLAN to our UDP port and VNI only, outer IPv4 and non-zero UDP checksums verified; the
//! inner Ethernet frame is sent out of the overlay interface unchanged. ARP requests for
//! `--local` are answered on the
//! underlay (so the remote needs no static neighbour entry); anything else is dropped and
//! counted. Frames go through the stages in batches of up to 64, with `now` read from a
//! monotonic clock once per batch (nf itself never reads a clock).
//!
//! On SIGINT/SIGTERM, or after `--duration` seconds, it prints its counters, one
//! `name value` per line (the stages' packets and drops by reason, frames per interface),
//! and exits. With `--metrics ADDR` (e.g. `127.0.0.1:9464`) it also serves the stages'
//! counters in the Prometheus text format at `http://ADDR/metrics`, from a thread of its own
//! that reads a snapshot the packet loop renders once a second
//! ([`nf_examples::prometheus`]).
//!
//! ## Running it
//!
//! It needs root (or `CAP_NET_RAW`) and two interfaces **without addresses** that nothing
//! else on the host transmits on (the host's own frames would be bridged too):
//! typically veths in a network namespace with IPv6 disabled. Whoever sends to it must not
//! rely on checksum or segmentation offload (`ethtool -K DEV tx off` on veth senders and on
//! a kernel `vxlan` peer), because the rings hand over the frame bytes as they are (frames that arrive without
//! their transport checksum are counted as `*.checksum_partial`). The
//! underlay MTU must leave room for the 50 bytes of VXLAN over IPv4; frames that would not
//! fit are dropped (`tunnel_encap.drop.too_big`).
//!
//! ```text
//! # namespace a: the kernel's VTEP; g: this gateway; b: a host on the bridged segment
//! ip netns add a; ip netns add g; ip netns add b
//! ip -n a link add ua mtu 1550 address 02:00:00:00:00:01 type veth peer name ug mtu 1550 netns g
//! ip -n g link add og type veth peer name ob netns b
//! ip -n a addr add 192.0.2.1/24 dev ua
//! ip -n a link add vx0 type vxlan id 42 remote 192.0.2.2 local 192.0.2.1 dstport 4789 dev ua
//! ip -n a addr add 198.51.100.1/24 dev vx0; ip -n b addr add 198.51.100.2/24 dev ob
//! ip netns exec a ethtool -K ua tx off; ip netns exec a ethtool -K vx0 tx off
//! ip netns exec b ethtool -K ob tx off
//! # ... bring every link up, then:
//! ip netns exec g vxlan-gateway --underlay ug --overlay og --local 192.0.2.2 \
//!     --remote 192.0.2.1 --remote-mac 02:00:00:00:00:01 --vni 42
//! ip netns exec a ping 198.51.100.2
//! ```
//!
//! `examples/tests/kernel_vxlan.rs` does exactly this and runs ping and TCP both ways.
//!
//! An interface that goes down is waited for: the gateway logs it, counts it
//! (`*.link_down`, `*.tx_dropped_link_down`) and carries traffic again once it is up.
//! The figures beside the kernel's own VXLAN device are in the README.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("vxlan-gateway: runs on Linux only (AF_PACKET rings)");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod linux {

    use nf_core::{
        Batch, DropReason, Instant, ParseStage, Stage, StageControl, StageCounters, Verdict, ZoneId,
    };
    use nf_examples::io::{
        Interface, IoKind, Link, PollEvents, RingConfig, RingFrame, RxChecksum, parse_mac, wait_fds,
    };
    use nf_examples::prometheus;
    use nf_examples::say;
    use nf_examples::vtep::{UnderlayFrame, bridge_control, classify_underlay};
    use nf_tunnel::{
        DecapConfig, DecapStage, EncapConfig, EncapStage, NonTunnel, TunnelKind, Underlay,
        VniTable, ZoneMap,
    };
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::os::fd::AsFd;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// What VXLAN over IPv4 adds to a frame (outer Ethernet, IPv4, UDP, VXLAN).
    const VXLAN_OVERHEAD: usize = 14 + 20 + 8 + 8;
    /// How often the packet loop renders the counters for `--metrics`.
    const METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    /// The longest an idle gateway sleeps in `poll` before it checks for a stop signal.
    const IDLE_WAIT_MS: i32 = 100;

    const USAGE: &str = "\
usage: vxlan-gateway --underlay IF --overlay IF --local IPV4 --remote IPV4
                     --remote-mac MAC --vni N [--port P] [--udp-checksum]
                     [--io auto|packet|xdp] [--cpu N] [--duration SECS] [--metrics ADDR]

Bridges the Ethernet segment on the overlay interface into a VXLAN tunnel to one
remote VTEP reached over the underlay interface (run as root; both interfaces
without addresses). Prints counters on SIGINT/SIGTERM or after --duration.

  --underlay IF      interface towards the remote VTEP (carries VXLAN/UDP)
  --overlay IF       interface whose frames are bridged into the tunnel
  --local IPV4       our underlay address (ARP requests for it are answered)
  --remote IPV4      the remote VTEP's underlay address
  --remote-mac MAC   the remote VTEP's (or the underlay router's) MAC
  --vni N            the VXLAN network identifier (24 bits)
  --port P           VXLAN UDP port (default 4789; Linux's old default is 8472)
  --udp-checksum     compute outer UDP checksums (default: zero, as RFC 7348 allows)
  --io auto|packet|xdp
                     frame I/O: AF_XDP sockets with an XDP program (in the driver where
                     it has XDP) where they open, else PACKET_MMAP rings (auto, the
                     default), or either alone
  --cpu N            pin the packet loop to CPU N (the scheduler then never moves it
                     while the receiving host's socket waits for it)
  --duration SECS    exit after SECS seconds
  --metrics ADDR     serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464)
  -h, --help         this text";

    /// The command line.
    #[derive(Clone, Debug, PartialEq)]
    struct Args {
        underlay: String,
        overlay: String,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        remote_mac: [u8; 6],
        vni: u32,
        port: u16,
        udp_checksum: bool,
        duration: Option<f64>,
        metrics: Option<SocketAddr>,
        io: IoKind,
        cpu: Option<usize>,
    }

    pub(crate) fn main() -> ExitCode {
        nf_examples::cli::main_with(
            "vxlan-gateway",
            USAGE,
            |argv| parse_args(argv.into_iter()),
            |args| run(&args),
        )
    }

    /// Parses the arguments; `Ok(None)` for `--help`.
    fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let (mut underlay, mut overlay, mut local, mut remote) = (None, None, None, None);
        let (mut remote_mac, mut vni, mut duration, mut metrics) = (None, None, None, None);
        let (mut port, mut udp_checksum, mut io) = (nf_tunnel::VXLAN_PORT, false, IoKind::Auto);
        let mut cpu = None;
        while let Some(flag) = it.next() {
            if matches!(flag.as_str(), "-h" | "--help") {
                return Ok(None);
            }
            if flag == "--udp-checksum" {
                udp_checksum = true;
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |what: &str| format!("{flag} {value}: not {what}");
            match flag.as_str() {
                "--underlay" => underlay = Some(value),
                "--overlay" => overlay = Some(value),
                "--local" => local = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
                "--remote" => remote = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
                "--remote-mac" => remote_mac = Some(parse_mac(&value).ok_or_else(|| bad("a MAC"))?),
                "--vni" => {
                    vni = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|v| *v <= 0x00ff_ffff)
                            .ok_or_else(|| bad("a 24-bit VNI"))?,
                    )
                }
                "--port" => port = value.parse().map_err(|_| bad("a UDP port"))?,
                "--cpu" => cpu = Some(value.parse().map_err(|_| bad("a CPU number"))?),
                "--io" => io = value.parse().map_err(|_| bad("auto, packet or xdp"))?,
                "--metrics" => metrics = Some(value.parse().map_err(|_| bad("an IP:port"))?),
                "--duration" => duration = Some(nf_examples::cli::seconds(&flag, &value)?),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        let need = |name: &str| format!("{name} is required");
        Ok(Some(Args {
            underlay: underlay.ok_or_else(|| need("--underlay"))?,
            overlay: overlay.ok_or_else(|| need("--overlay"))?,
            local: local.ok_or_else(|| need("--local"))?,
            remote: remote.ok_or_else(|| need("--remote"))?,
            remote_mac: remote_mac.ok_or_else(|| need("--remote-mac"))?,
            vni: vni.ok_or_else(|| need("--vni"))?,
            port,
            udp_checksum,
            duration,
            metrics,
            io,
            cpu,
        }))
    }

    /// `aa:bb:cc:dd:ee:ff` (or with `-`) as bytes.
    fn fmt_mac(m: &[u8; 6]) -> String {
        let [a, b, c, d, e, f] = m;
        format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
    }

    /// One interface: its frame I/O and what it counted.
    struct Port {
        iface: Interface,
        link: Link,
        /// The largest frame the interface sends (its MTU plus the Ethernet header).
        frame_max: usize,
        /// Frames received whose transport checksum the sender left to offload.
        checksum_partial: u64,
    }

    impl Port {
        fn open(name: &str, kind: IoKind) -> Result<Self, String> {
            let iface = Interface::by_name(name).map_err(|e| format!("interface {name}: {e}"))?;
            let frame_max = iface.mtu + 14;
            let link = Link::open(
                &iface,
                kind,
                &RingConfig::default(),
                frame_max + VXLAN_OVERHEAD,
            )
            .map_err(|e| format!("{kind:?} I/O on {name}: {e}"))?;
            match &link {
                Link::Xdp(x) => say!(
                    "vxlan-gateway: {name}: AF_XDP, XDP program in {:?} mode",
                    x.mode()
                ),
                Link::Rings { .. } => say!("vxlan-gateway: {name}: PACKET_MMAP rings"),
            }
            Ok(Self {
                iface,
                link,
                frame_max,
                checksum_partial: 0,
            })
        }

        fn mtu(&self) -> usize {
            self.iface.mtu
        }

        /// Queues `frame` (counted by the link when it does not fit or it is full).
        fn send(&mut self, frame: &[u8]) {
            let _ = self.link.send(frame);
        }

        /// Receives into `batch`, counting frames that lack their transport checksum.
        fn recv(&mut self, batch: &mut Batch<RingFrame>) -> usize {
            let n = self.link.recv(batch);
            self.checksum_partial += batch
                .packets()
                .iter()
                .filter(|p| p.buffer().checksum() == RxChecksum::Partial)
                .count() as u64;
            n
        }

        /// Sends what is queued; a failure other than a down link ends the gateway.
        fn flush(&mut self) -> Result<(), String> {
            self.link
                .flush()
                .map(drop)
                .map_err(|e| format!("sending on {}: {e}", self.iface.name))
        }
    }

    /// Gateway-level counters (the stages keep their own).
    #[derive(Debug, Default)]
    struct Counters {
        arp_replies: u64,
        ignored: u64,
        /// Underlay frames kept from decap (ARP, frames for other MACs).
        not_decapsulated: u64,
        too_big_for_overlay: u64,
        to_control: u64,
    }

    struct Gateway {
        local: Ipv4Addr,
        under: Port,
        over: Port,
        decap: DecapStage,
        parse: ParseStage,
        encap: EncapStage,
        batch: Batch<RingFrame>,
        counters: Counters,
    }

    impl Gateway {
        /// Moves up to one batch from the underlay to the overlay; the frames received.
        fn underlay_to_overlay(&mut self, now: Instant) -> usize {
            let received = self.under.recv(&mut self.batch);
            if received == 0 {
                return 0;
            }
            // ARP for our address is answered here; frames for other MACs are not ours.
            for p in self.batch.packets_mut() {
                match classify_underlay(p.data(), self.under.iface.mac, self.local) {
                    UnderlayFrame::Tunnel => continue,
                    UnderlayFrame::ArpReply(reply) => {
                        self.under.send(&reply);
                        self.counters.arp_replies += 1;
                    }
                    UnderlayFrame::Ignore => self.counters.ignored += 1,
                }
                p.meta.verdict = Verdict::Drop(DropReason::NotTunnel);
                self.counters.not_decapsulated += 1;
            }
            self.decap.process(now, &mut self.batch);
            for pkt in self.batch.drain() {
                match pkt.meta.verdict {
                    Verdict::Pass | Verdict::Tx(_) if pkt.len() <= self.over.frame_max => {
                        self.over.send(pkt.data());
                    }
                    Verdict::Pass | Verdict::Tx(_) => self.counters.too_big_for_overlay += 1,
                    Verdict::Drop(_) => {}
                    Verdict::ToControl => {
                        self.counters.to_control += 1;
                        if pkt.len() <= self.over.frame_max {
                            self.over.send(pkt.data());
                        }
                    }
                }
            }
            received
        }

        fn overlay_to_underlay(&mut self, now: Instant) -> usize {
            let received = self.over.recv(&mut self.batch);
            if received == 0 {
                return 0;
            }
            self.parse.process(now, &mut self.batch);
            bridge_control(&mut self.batch);
            self.encap.process(now, &mut self.batch);
            for pkt in self.batch.drain() {
                match pkt.meta.verdict {
                    Verdict::Pass | Verdict::Tx(_) => self.under.send(pkt.data()),
                    Verdict::Drop(_) => {}
                    Verdict::ToControl => self.counters.to_control += 1,
                }
            }
            received
        }

        fn exposition(&self) -> String {
            prometheus::render(&[&self.decap, &self.parse, &self.encap])
        }

        fn print_counters(&self, secs: f64) {
            say!("vxlan-gateway: stopped after {secs:.2} s");
            for (side, p) in [("underlay", &self.under), ("overlay", &self.over)] {
                let (rx, tx) = p.link.counters();
                say!("{side}.rx {}", rx.frames);
                say!("{side}.rx_kernel_drops {}", rx.kernel_drops);
                say!("{side}.link_down {}", rx.link_down);
                say!("{side}.checksum_partial {}", p.checksum_partial);
                say!("{side}.tx {}", tx.queued);
                say!("{side}.tx_ring_full {}", tx.full);
                say!("{side}.tx_too_big {}", tx.too_big);
                say!("{side}.tx_dropped_link_down {}", tx.dropped_link_down);
            }
            let c = &self.counters;
            say!("underlay.arp_replies {}", c.arp_replies);
            say!("underlay.ignored {}", c.ignored);
            say!("underlay.not_decapsulated {}", c.not_decapsulated);
            say!("overlay.too_big {}", c.too_big_for_overlay);
            say!("control {}", c.to_control);
            let stage = |name: &str, s: &StageCounters| {
                say!("{name}.batches {}", s.batches);
                say!("{name}.packets {}", s.packets);
                say!("{name}.drops {}", s.drops.total());
                for (reason, n) in s.drops.nonzero() {
                    say!("{name}.drop.{} {n}", reason.name());
                }
                say!("{name}.to_control {}", s.to_control);
            };
            stage(self.decap.name(), self.decap.counters());
            stage(self.parse.name(), self.parse.counters());
            stage(self.encap.name(), self.encap.counters());
        }
    }

    fn run(args: &Args) -> Result<(), String> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .map_err(|e| format!("signal handler: {e}"))?;
        }
        if let Some(cpu) = args.cpu {
            nf_examples::io::pin_to_cpu(cpu).map_err(|e| format!("--cpu {cpu}: {e}"))?;
        }
        let under = Port::open(&args.underlay, args.io)?;
        let over = Port::open(&args.overlay, args.io)?;

        let decap = DecapConfig {
            ports: vec![(args.port, TunnelKind::Vxlan)],
            zones: ZoneMap::Table(VniTable::new(&[(args.vni, ZoneId(args.vni))])),
            non_tunnel: NonTunnel::Drop,
            ..DecapConfig::default()
        };
        let mut encap = EncapConfig::vxlan(
            args.vni,
            Underlay {
                src_mac: under.iface.mac,
                dst_mac: args.remote_mac,
                src: IpAddr::V4(args.local),
                dst: IpAddr::V4(args.remote),
            },
        );
        encap.dst_port = args.port;
        encap.udp_checksum_v4 = args.udp_checksum;
        encap.mtu = u16::try_from(under.mtu()).unwrap_or(u16::MAX);
        let encap = EncapStage::new(encap).map_err(|e| format!("encap config: {e}"))?;

        say!(
            "vxlan-gateway: ready: overlay {} <-> VNI {} over {} ({} {}, MTU {}) to {} ({}) port {}",
            over.iface.name,
            args.vni,
            under.iface.name,
            args.local,
            fmt_mac(&under.iface.mac),
            under.mtu(),
            args.remote,
            fmt_mac(&args.remote_mac),
            args.port,
        );
        let mut gw = Gateway {
            local: args.local,
            under,
            over,
            decap: DecapStage::new(decap).map_err(|e| format!("decap config: {e}"))?,
            parse: ParseStage::default(),
            encap,
            batch: Batch::new(),
            counters: Counters::default(),
        };

        let metrics = prometheus::start_for("vxlan-gateway", args.metrics)?;
        if let Some(server) = &metrics {
            server.publish(gw.exposition());
        }

        let start = std::time::Instant::now();
        let mut published = start;
        let deadline = args.duration.map(std::time::Duration::from_secs_f64);
        let mut events = [PollEvents::default(); 2];
        while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| start.elapsed() < d) {
            let now =
                Instant::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
            let moved = gw.underlay_to_overlay(now) + gw.overlay_to_underlay(now);
            gw.under.flush()?;
            gw.over.flush()?;
            if let Some(server) = &metrics
                && published.elapsed() >= METRICS_EVERY
            {
                server.publish(gw.exposition());
                published = std::time::Instant::now();
            }
            if moved == 0 {
                wait_fds(
                    [gw.under.link.as_fd(), gw.over.link.as_fd()],
                    IDLE_WAIT_MS,
                    &mut events,
                )
                .map_err(|e| format!("waiting for frames: {e}"))?;
                for (ev, port) in events.iter().zip([&mut gw.under, &mut gw.over]) {
                    if ev.error
                        && let Some(e) = port.link.take_error()
                    {
                        eprintln!(
                            "vxlan-gateway: {}: {e}; waiting for it to come back",
                            port.iface.name
                        );
                    }
                }
            }
        }
        for p in [&mut gw.under, &mut gw.over] {
            let _ = p.link.update_kernel_stats();
        }
        gw.print_counters(start.elapsed().as_secs_f64());
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
                    "--underlay ug --overlay og --local 192.0.2.2 --remote 192.0.2.1 \
                     --remote-mac 02:00:00:00:00:01 --vni 42 --udp-checksum --duration 1.5 \
                     --metrics 127.0.0.1:9464 --io xdp --cpu 1",
                )
                .into_iter(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(a.remote_mac, [2, 0, 0, 0, 0, 1]);
            assert_eq!((a.vni, a.port, a.udp_checksum), (42, 4789, true));
            assert_eq!(a.duration, Some(1.5));
            assert_eq!(a.metrics, Some("127.0.0.1:9464".parse().unwrap()));
            assert_eq!((a.io, a.cpu), (IoKind::Xdp, Some(1)));
            assert_eq!(parse_args(argv("--help").into_iter()), Ok(None));
            for bad in [
                "--vni 16777216",
                "--remote-mac 02:00:00:00:00",
                "--remote-mac 02:00:00:00:00:01:02",
                "--local ::1",
                "--duration -1",
                "--metrics 9464",
                "--bogus 1",
                "--io tap",
                "--cpu -1",
                "--vni",
                "--underlay ug",
            ] {
                assert!(parse_args(argv(bad).into_iter()).is_err(), "{bad}");
            }
            assert_eq!(
                parse_mac("02-AA-bb-0c-0d-0e"),
                Some([2, 0xaa, 0xbb, 12, 13, 14])
            );
            assert_eq!(parse_mac("2:a:b:c:d:e"), Some([2, 10, 11, 12, 13, 14]));
            assert_eq!(parse_mac("02:00:00:00:00:001"), None);
        }
    }
}
