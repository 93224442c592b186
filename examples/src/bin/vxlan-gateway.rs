//! `vxlan-gateway`: a VXLAN tunnel endpoint (VTEP) in user space, built from nf-tunnel's
//! stages, that bridges an Ethernet segment into a VXLAN tunnel to one remote VTEP (for
//! example a Linux kernel `vxlan` device).
//!
//! ```text
//!            overlay interface                            underlay interface
//!   hosts ──► raw socket ─► parse ─► encap (VXLAN, VNI) ─► raw socket ──► remote VTEP
//!   hosts ◄── raw socket ◄──────── decap (port, VNI) ◄──── raw socket ◄── remote VTEP
//!                                     ▲ ARP requests for --local are answered here
//! ```
//!
//! Two AF_PACKET raw sockets (smoltcp's `phy::RawSocket`), one per interface, served by one
//! thread: every frame received on the **overlay** interface is parsed (for the UDP source
//! port entropy) and encapsulated — Ethernet/IPv4/UDP/VXLAN pushed into the headroom of its
//! buffer — to `--remote`/`--remote-mac`, and sent on the **underlay** interface. Every frame
//! received on the underlay interface for our MAC is decapsulated: VXLAN to our UDP port and
//! VNI only, outer IPv4 and non-zero UDP checksums verified; the inner Ethernet frame is sent
//! out of the overlay interface unchanged. ARP requests for `--local` are answered on the
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
//! else on the host transmits on (the raw sockets also see the host's own outgoing frames):
//! typically veths in a network namespace with IPv6 disabled. Whoever sends to it must not
//! rely on checksum or segmentation offload (`ethtool -K DEV tx off` on veth senders and on
//! a kernel `vxlan` peer), because a raw socket hands over the frame bytes as they are. The
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
//! This is an interoperability example, not a fast path: smoltcp's raw socket copies every
//! frame in and out of a fresh buffer, an idle gateway sleeps at most a millisecond at a
//! time on one socket while the other waits, it cannot tell a frame whose checksum the
//! sender left to offload (it fails verification: `tunnel_decap.drop.tunnel_bad_udp_checksum`),
//! and an interface going down ends it with smoltcp's panic. A production dataplane would
//! use AF_XDP or `PACKET_MMAP` rings (with the kernel's checksum status) in the same loop.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("vxlan-gateway: runs on Linux only (AF_PACKET raw sockets)");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod linux {
    use nf_core::wire::ethertype;
    use nf_core::{
        Batch, Instant, Packet, ParseStage, Stage, StageControl, StageCounters, Verdict, ZoneId,
    };
    use nf_examples::prometheus::{self, MetricsServer};
    use nf_tunnel::{
        DecapConfig, DecapStage, EncapConfig, EncapStage, NonTunnel, TunnelKind, Underlay,
        VniTable, ZoneMap,
    };
    use smoltcp::phy::{Device, Medium, RawSocket, RxToken, TxToken};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::os::unix::io::AsRawFd;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Bytes kept free in front of every received frame, for the outer headers.
    const HEADROOM: usize = 128;
    /// How often the packet loop renders the counters for `--metrics`.
    const METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    /// The longest an idle gateway sleeps on one socket before looking at the other.
    const IDLE_WAIT_MS: u64 = 1;

    const USAGE: &str = "\
usage: vxlan-gateway --underlay IF --overlay IF --local IPV4 --remote IPV4
                     --remote-mac MAC --vni N [--port P] [--udp-checksum]
                     [--duration SECS] [--metrics ADDR]

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
    }

    pub(crate) fn main() -> ExitCode {
        let args = match parse_args(std::env::args().skip(1)) {
            Ok(Some(a)) => a,
            Ok(None) => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("vxlan-gateway: {e}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        match run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vxlan-gateway: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// Parses the arguments; `Ok(None)` for `--help`.
    fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let (mut underlay, mut overlay, mut local, mut remote) = (None, None, None, None);
        let (mut remote_mac, mut vni, mut duration, mut metrics) = (None, None, None, None);
        let (mut port, mut udp_checksum) = (nf_tunnel::VXLAN_PORT, false);
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
                "--metrics" => metrics = Some(value.parse().map_err(|_| bad("an IP:port"))?),
                "--duration" => {
                    duration = Some(
                        value
                            .parse::<f64>()
                            .ok()
                            .filter(|d| d.is_finite() && *d >= 0.0)
                            .ok_or_else(|| bad("a number of seconds"))?,
                    )
                }
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
        }))
    }

    /// `aa:bb:cc:dd:ee:ff` (or with `-`) as bytes.
    fn parse_mac(s: &str) -> Option<[u8; 6]> {
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut mac {
            let p = parts.next()?;
            if p.is_empty() || p.len() > 2 {
                return None;
            }
            *b = u8::from_str_radix(p, 16).ok()?;
        }
        parts.next().is_none().then_some(mac)
    }

    fn fmt_mac(m: &[u8; 6]) -> String {
        let [a, b, c, d, e, f] = m;
        format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
    }

    /// One interface: its raw socket, MAC, largest frame, and frame counters.
    struct Port {
        name: String,
        dev: RawSocket,
        mac: [u8; 6],
        /// The largest Ethernet frame (header included) the interface sends.
        frame_max: usize,
        rx: u64,
        tx: u64,
    }

    impl Port {
        fn open(name: &str) -> Result<Self, String> {
            let dev = RawSocket::new(name, Medium::Ethernet)
                .map_err(|e| format!("raw socket on {name}: {e}"))?;
            let path = format!("/sys/class/net/{name}/address");
            let mac = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| parse_mac(s.trim()))
                .ok_or_else(|| format!("cannot read the MAC of {name} from {path}"))?;
            Ok(Self {
                name: name.to_string(),
                frame_max: dev.capabilities().max_transmission_unit,
                dev,
                mac,
                rx: 0,
                tx: 0,
            })
        }

        /// The interface MTU (largest IP packet).
        fn mtu(&self) -> usize {
            self.frame_max.saturating_sub(14)
        }

        /// Receives one frame into `buf` after [`HEADROOM`] bytes; its length, or `None` when
        /// nothing is waiting.
        fn recv(&mut self, buf: &mut Vec<u8>) -> Option<usize> {
            let (rx, _tx) = self.dev.receive(smoltcp::time::Instant::ZERO)?;
            let n = rx.consume(|frame| {
                buf.resize(HEADROOM + frame.len().max(self.frame_max), 0);
                if let Some(dst) = buf.get_mut(HEADROOM..HEADROOM + frame.len()) {
                    dst.copy_from_slice(frame);
                }
                frame.len()
            });
            self.rx += 1;
            Some(n)
        }

        fn send(&mut self, frame: &[u8]) {
            if let Some(tx) = self.dev.transmit(smoltcp::time::Instant::ZERO) {
                tx.consume(frame.len(), |b| b.copy_from_slice(frame));
                self.tx += 1;
            }
        }
    }

    /// What the gateway does with a frame from the underlay before the decap stage.
    #[derive(Debug, PartialEq, Eq)]
    enum UnderlayFrame {
        /// Towards our MAC or a group address: for the decap stage.
        Tunnel,
        /// An ARP request for our address: send this reply.
        ArpReply([u8; ARP_FRAME_LEN]),
        /// Anything else ARP, or a frame for another MAC: ignored.
        Ignore,
    }

    /// An Ethernet + IPv4-over-Ethernet ARP frame (no padding).
    const ARP_FRAME_LEN: usize = 14 + 28;

    /// Sorts an underlay frame (see [`UnderlayFrame`]).
    fn classify(frame: &[u8], mac: [u8; 6], ip: Ipv4Addr) -> UnderlayFrame {
        let Some(eth) = frame.first_chunk::<14>() else {
            return UnderlayFrame::Ignore;
        };
        let group = eth[0] & 1 == 1;
        if !group && eth[..6] != mac {
            return UnderlayFrame::Ignore;
        }
        if u16::from_be_bytes([eth[12], eth[13]]) != ethertype::ARP {
            return UnderlayFrame::Tunnel;
        }
        arp_reply(frame, mac, ip).map_or(UnderlayFrame::Ignore, UnderlayFrame::ArpReply)
    }

    /// The reply to an Ethernet/IPv4 ARP request for `ip` (RFC 826), if `frame` is one.
    fn arp_reply(frame: &[u8], mac: [u8; 6], ip: Ipv4Addr) -> Option<[u8; ARP_FRAME_LEN]> {
        let req = frame.get(14..14 + 28)?;
        // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request).
        if req[..8] != [0, 1, 8, 0, 6, 4, 0, 1] || req[24..28] != ip.octets() {
            return None;
        }
        let (sha, spa) = (&req[8..14], &req[14..18]);
        let mut r = [0u8; ARP_FRAME_LEN];
        r[..6].copy_from_slice(sha);
        r[6..12].copy_from_slice(&mac);
        r[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        r[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        r[22..28].copy_from_slice(&mac);
        r[28..32].copy_from_slice(&ip.octets());
        r[32..38].copy_from_slice(sha);
        r[38..42].copy_from_slice(spa);
        Some(r)
    }

    /// Gateway-level counters (the stages keep their own).
    #[derive(Debug, Default)]
    struct Counters {
        arp_replies: u64,
        ignored: u64,
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
        batch: Batch<Vec<u8>>,
        pool: Vec<Vec<u8>>,
        counters: Counters,
    }

    impl Gateway {
        /// Moves up to one batch from the underlay to the overlay; the frames received.
        fn underlay_to_overlay(&mut self, now: Instant) -> usize {
            let mut received = 0;
            while !self.batch.is_full() {
                let mut buf = self.pool.pop().unwrap_or_default();
                let Some(len) = self.under.recv(&mut buf) else {
                    self.pool.push(buf);
                    break;
                };
                received += 1;
                let frame = buf.get(HEADROOM..HEADROOM + len).unwrap_or(&[]);
                match classify(frame, self.under.mac, self.local) {
                    UnderlayFrame::Tunnel => {
                        if let Ok(p) = Packet::new(buf, HEADROOM, len) {
                            // Cannot fail: the loop stops when the batch is full.
                            let _ = self.batch.push(p);
                        }
                        continue;
                    }
                    UnderlayFrame::ArpReply(reply) => {
                        self.under.send(&reply);
                        self.counters.arp_replies += 1;
                    }
                    UnderlayFrame::Ignore => self.counters.ignored += 1,
                }
                self.pool.push(buf);
            }
            if !self.batch.is_empty() {
                self.decap.process(now, &mut self.batch);
                for pkt in self.batch.drain() {
                    match pkt.meta.verdict {
                        Verdict::Pass | Verdict::Tx(_) if pkt.len() <= self.over.frame_max => {
                            self.over.send(pkt.data());
                        }
                        Verdict::Pass | Verdict::Tx(_) => self.counters.too_big_for_overlay += 1,
                        // StageControl by the stage, by reason.
                        Verdict::Drop(_) => {}
                        // Decapsulated non-IP frames (ARP) go to the control path, and this
                        // gateway's control path bridges them, as on the way in.
                        Verdict::ToControl => {
                            self.counters.to_control += 1;
                            if pkt.len() <= self.over.frame_max {
                                self.over.send(pkt.data());
                            }
                        }
                    }
                    self.pool.push(pkt.into_parts().0);
                }
            }
            received
        }

        /// Moves up to one batch from the overlay into the tunnel; the frames received.
        fn overlay_to_underlay(&mut self, now: Instant) -> usize {
            let mut received = 0;
            while !self.batch.is_full() {
                let mut buf = self.pool.pop().unwrap_or_default();
                let Some(len) = self.over.recv(&mut buf) else {
                    self.pool.push(buf);
                    break;
                };
                received += 1;
                match Packet::new(buf, HEADROOM, len) {
                    Ok(p) => {
                        // Cannot fail: the loop stops when the batch is full.
                        let _ = self.batch.push(p);
                    }
                    Err(_) => self.counters.ignored += 1,
                }
            }
            if !self.batch.is_empty() {
                // The flow key feeds the outer UDP source port (ECMP entropy). Non-IP frames
                // (ARP) come back as ToControl: this gateway bridges them too.
                self.parse.process(now, &mut self.batch);
                for p in self.batch.packets_mut() {
                    if p.meta.verdict == Verdict::ToControl {
                        p.meta.verdict = Verdict::Pass;
                    }
                }
                self.encap.process(now, &mut self.batch);
                for pkt in self.batch.drain() {
                    match pkt.meta.verdict {
                        Verdict::Pass | Verdict::Tx(_) => self.under.send(pkt.data()),
                        Verdict::Drop(_) => {}
                        Verdict::ToControl => self.counters.to_control += 1,
                    }
                    self.pool.push(pkt.into_parts().0);
                }
            }
            received
        }

        /// Every stage's counters in the Prometheus text format.
        fn exposition(&self) -> String {
            prometheus::render(&[&self.decap, &self.parse, &self.encap])
        }

        fn print_counters(&self, secs: f64) {
            println!("vxlan-gateway: stopped after {secs:.2} s");
            for (side, p) in [("underlay", &self.under), ("overlay", &self.over)] {
                println!("{side}.rx {}", p.rx);
                println!("{side}.tx {}", p.tx);
            }
            let c = &self.counters;
            println!("underlay.arp_replies {}", c.arp_replies);
            println!("underlay.ignored {}", c.ignored);
            println!("overlay.too_big {}", c.too_big_for_overlay);
            println!("control {}", c.to_control);
            let stage = |name: &str, s: &StageCounters| {
                println!("{name}.batches {}", s.batches);
                println!("{name}.packets {}", s.packets);
                println!("{name}.drops {}", s.drops.total());
                for (reason, n) in s.drops.nonzero() {
                    println!("{name}.drop.{} {n}", reason.name());
                }
                println!("{name}.to_control {}", s.to_control);
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
        let under = Port::open(&args.underlay)?;
        let over = Port::open(&args.overlay)?;

        let decap = DecapConfig {
            ports: vec![(args.port, TunnelKind::Vxlan)],
            zones: ZoneMap::Table(VniTable::new(&[(args.vni, ZoneId(args.vni))])),
            non_tunnel: NonTunnel::Drop,
            ..DecapConfig::default()
        };
        let mut encap = EncapConfig::vxlan(
            args.vni,
            Underlay {
                src_mac: under.mac,
                dst_mac: args.remote_mac,
                src: IpAddr::V4(args.local),
                dst: IpAddr::V4(args.remote),
            },
        );
        encap.dst_port = args.port;
        encap.udp_checksum_v4 = args.udp_checksum;
        encap.mtu = u16::try_from(under.mtu()).unwrap_or(u16::MAX);
        let encap = EncapStage::new(encap).map_err(|e| format!("encap config: {e}"))?;

        println!(
            "vxlan-gateway: ready: overlay {} <-> VNI {} over {} ({} {}, MTU {}) to {} ({}) port {}",
            over.name,
            args.vni,
            under.name,
            args.local,
            fmt_mac(&under.mac),
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
            pool: Vec::new(),
            counters: Counters::default(),
        };

        let metrics = match args.metrics {
            Some(addr) => {
                let server =
                    MetricsServer::start(addr).map_err(|e| format!("--metrics {addr}: {e}"))?;
                println!(
                    "vxlan-gateway: metrics at http://{}/metrics",
                    server.local_addr()
                );
                server.publish(gw.exposition());
                Some(server)
            }
            None => None,
        };

        let start = std::time::Instant::now();
        let mut published = start;
        let deadline = args.duration.map(std::time::Duration::from_secs_f64);
        let idle = smoltcp::time::Duration::from_millis(IDLE_WAIT_MS);
        let mut wait_on_underlay = true;
        while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| start.elapsed() < d) {
            let now =
                Instant::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
            let moved = gw.underlay_to_overlay(now) + gw.overlay_to_underlay(now);
            if let Some(server) = &metrics
                && published.elapsed() >= METRICS_EVERY
            {
                server.publish(gw.exposition());
                published = std::time::Instant::now();
            }
            if moved == 0 {
                // smoltcp waits on one descriptor at a time: alternate, briefly.
                let fd = if wait_on_underlay {
                    gw.under.dev.as_raw_fd()
                } else {
                    gw.over.dev.as_raw_fd()
                };
                wait_on_underlay = !wait_on_underlay;
                match smoltcp::phy::wait(fd, Some(idle)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("waiting for frames: {e}")),
                }
            }
        }
        gw.print_counters(start.elapsed().as_secs_f64());
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
        const IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

        fn arp_request(target: [u8; 4]) -> Vec<u8> {
            let mut f = vec![0xff; 6];
            f.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
            f.extend([0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend([2, 0, 0, 0, 0, 1, 192, 0, 2, 1]);
            f.extend([0; 6]);
            f.extend(target);
            f.extend([0; 18]); // Ethernet padding
            f
        }

        #[test]
        fn answers_arp_requests_for_its_address_only() {
            let UnderlayFrame::ArpReply(r) = classify(&arp_request([192, 0, 2, 2]), MAC, IP) else {
                panic!("no reply");
            };
            let want: Vec<u8> = [
                &[2, 0, 0, 0, 0, 1][..],
                &MAC,
                &[8, 6, 0, 1, 8, 0, 6, 4, 0, 2],
                &MAC,
                &[192, 0, 2, 2],
                &[2, 0, 0, 0, 0, 1, 192, 0, 2, 1],
            ]
            .concat();
            assert_eq!(r.to_vec(), want);
            assert_eq!(
                classify(&arp_request([192, 0, 2, 9]), MAC, IP),
                UnderlayFrame::Ignore
            );
            let mut reply = arp_request([192, 0, 2, 2]);
            reply[21] = 2;
            assert_eq!(classify(&reply, MAC, IP), UnderlayFrame::Ignore);
            assert_eq!(classify(&reply[..20], MAC, IP), UnderlayFrame::Ignore);
        }

        #[test]
        fn only_frames_for_us_or_a_group_reach_decap() {
            let mut f = vec![0u8; 60];
            f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
            f[..6].copy_from_slice(&MAC);
            assert_eq!(classify(&f, MAC, IP), UnderlayFrame::Tunnel);
            f[..6].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
            assert_eq!(classify(&f, MAC, IP), UnderlayFrame::Tunnel);
            f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
            assert_eq!(classify(&f, MAC, IP), UnderlayFrame::Ignore);
            assert_eq!(classify(&f[..13], MAC, IP), UnderlayFrame::Ignore);
        }

        #[test]
        fn parses_the_command_line() {
            let argv = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
            let a = parse_args(
                argv(
                    "--underlay ug --overlay og --local 192.0.2.2 --remote 192.0.2.1 \
                     --remote-mac 02:00:00:00:00:01 --vni 42 --udp-checksum --duration 1.5 \
                     --metrics 127.0.0.1:9464",
                )
                .into_iter(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(a.remote_mac, [2, 0, 0, 0, 0, 1]);
            assert_eq!((a.vni, a.port, a.udp_checksum), (42, 4789, true));
            assert_eq!(a.duration, Some(1.5));
            assert_eq!(a.metrics, Some("127.0.0.1:9464".parse().unwrap()));
            assert_eq!(parse_args(argv("--help").into_iter()), Ok(None));
            for bad in [
                "--vni 16777216",
                "--remote-mac 02:00:00:00:00",
                "--remote-mac 02:00:00:00:00:01:02",
                "--local ::1",
                "--duration -1",
                "--metrics 9464",
                "--bogus 1",
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
