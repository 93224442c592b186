//! Two smoltcp TCP/IP hosts on either side of an nf pipeline, in process: every IP packet a
//! host sends goes through the pipeline as a batch and, if it passes, to the other host; a
//! packet the pipeline sends on a port ([`Verdict::Tx`]: port 0 is host `a`'s side, any
//! other `b`'s) goes to that side's host (an answer the pipeline made). Every
//! packet's IPv4 header and TCP checksums are verified from scratch before and after the
//! pipeline (`bad_checksums` counts failures). Include with
//! `#[path = "common/tcp_peers.rs"] mod tcp_peers;`.

use nf_core::{Batch, Instant, Packet, PortId, Stage, Verdict, flags};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::collections::VecDeque;

/// A device whose frames are queues the lab moves.
#[derive(Default)]
pub struct Queues {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        c
    }

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
}

/// One smoltcp host: interface, device queues, sockets.
pub struct Host {
    pub iface: Interface,
    pub dev: Queues,
    pub sockets: SocketSet<'static>,
}

impl Host {
    /// A host with address `addr/len` whose default route is `gateway`.
    pub fn new(addr: IpAddress, len: u8, gateway: IpAddress) -> Self {
        let mut dev = Queues::default();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut dev,
            SmolInstant::ZERO,
        );
        iface.update_ip_addrs(|a| a.push(IpCidr::new(addr, len)).unwrap());
        match gateway {
            IpAddress::Ipv4(g) => iface.routes_mut().add_default_ipv4_route(g).unwrap(),
            IpAddress::Ipv6(g) => iface.routes_mut().add_default_ipv6_route(g).unwrap(),
        };
        Self {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
        }
    }

    /// A TCP socket with `buf`-byte buffers each way.
    pub fn socket(&mut self, buf: usize) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        self.sockets.add(s)
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Connects socket `h` from local `port` to `to`.
    pub fn connect(&mut self, h: SocketHandle, to: IpEndpoint, port: u16) {
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, to, port)
            .unwrap();
    }
}

/// True if an IP packet's IPv4 header checksum and TCP/UDP checksum verify.
pub fn checksums_ok(ip: &[u8]) -> bool {
    use nf_core::checksum::{finish, pseudo_header_v4, pseudo_header_v6, sum, verify};
    match ip.first().map(|v| v >> 4) {
        Some(4) => {
            let hl = usize::from(ip[0] & 15) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if !verify(&ip[..hl]) || total > ip.len() {
                return false;
            }
            let (proto, l4) = (ip[9], &ip[hl..total]);
            if proto != 6 && proto != 17 {
                return true;
            }
            let ps = pseudo_header_v4(
                ip[12..16].try_into().unwrap(),
                ip[16..20].try_into().unwrap(),
                proto,
                l4.len() as u16,
            );
            finish(sum(ps, l4)) == 0
        }
        Some(6) => {
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let (proto, l4) = (ip[6], &ip[40..40 + plen]);
            if proto != 6 && proto != 17 {
                return true;
            }
            let ps = pseudo_header_v6(
                ip[8..24].try_into().unwrap(),
                ip[24..40].try_into().unwrap(),
                proto,
                l4.len() as u32,
            );
            finish(sum(ps, l4)) == 0
        }
        _ => false,
    }
}

/// Host `a`, the pipeline, host `b`.
pub struct Lab<P> {
    pub a: Host,
    pub b: Host,
    pub pipeline: P,
    /// Milliseconds on both hosts' and the pipeline's clock.
    pub now_ms: u64,
    /// Packets the pipeline passed, each way (a → b, b → a).
    pub passed: [u64; 2],
    /// Packets the pipeline sent on a port, to `a` and to `b`.
    pub sent: [u64; 2],
    /// Packets the pipeline dropped, with their verdicts.
    pub dropped: Vec<Verdict>,
    /// Packets whose checksums failed (before or after the pipeline).
    pub bad_checksums: u64,
    /// Drop every packet from `a` (true) or `b` whose index in this direction is listed.
    pub lose: Vec<(bool, u64)>,
}

impl<P: Stage<Vec<u8>>> Lab<P> {
    pub fn new(a: Host, b: Host, pipeline: P) -> Self {
        Self {
            a,
            b,
            pipeline,
            now_ms: 0,
            passed: [0; 2],
            sent: [0; 2],
            dropped: Vec::new(),
            bad_checksums: 0,
            lose: Vec::new(),
        }
    }

    /// One round: both hosts poll, their packets cross the pipeline; the clock moves 1 ms.
    /// Returns the packets that crossed.
    pub fn step(&mut self) -> usize {
        let t = SmolInstant::from_millis(self.now_ms as i64);
        self.a.iface.poll(t, &mut self.a.dev, &mut self.a.sockets);
        self.b.iface.poll(t, &mut self.b.dev, &mut self.b.sockets);
        let mut moved = 0;
        for from_a in [true, false] {
            let frames: Vec<Vec<u8>> = if from_a {
                self.a.dev.tx.drain(..).collect()
            } else {
                self.b.dev.tx.drain(..).collect()
            };
            moved += frames.len();
            let mut batch = Batch::new();
            for f in frames {
                self.bad_checksums += u64::from(!checksums_ok(&f));
                let mut p = Packet::new(f.clone(), 0, f.len()).unwrap();
                p.meta.flags |= flags::NO_L2;
                p.meta.ethertype = if f[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
                if batch.push(p).is_err() {
                    panic!("more than a batch of packets in one step");
                }
            }
            self.pipeline
                .process(Instant::from_nanos(self.now_ms * 1_000_000), &mut batch);
            for p in batch.drain() {
                match p.meta.verdict {
                    Verdict::Pass => {
                        let dir = usize::from(!from_a);
                        let n = self.passed[dir];
                        self.passed[dir] += 1;
                        if self.lose.contains(&(from_a, n)) {
                            continue;
                        }
                        let bytes = p.data().to_vec();
                        self.bad_checksums += u64::from(!checksums_ok(&bytes));
                        if from_a { &mut self.b } else { &mut self.a }
                            .dev
                            .rx
                            .push_back(bytes);
                    }
                    Verdict::Tx(PortId(port)) => {
                        let bytes = p.data().to_vec();
                        self.bad_checksums += u64::from(!checksums_ok(&bytes));
                        self.sent[usize::from(port != 0)] += 1;
                        if port == 0 { &mut self.a } else { &mut self.b }
                            .dev
                            .rx
                            .push_back(bytes);
                    }
                    v => self.dropped.push(v),
                }
            }
        }
        self.now_ms += 1;
        moved
    }

    /// Steps until sockets `ha` (on `a`) and `hb` (on `b`) are both established, for at
    /// most `max_ms` milliseconds; panics with both states and the drops otherwise.
    pub fn until_established(&mut self, ha: SocketHandle, hb: SocketHandle, max_ms: u64) {
        let open = self.run_until(max_ms, |l| {
            l.a.tcp(ha).state() == tcp::State::Established
                && l.b.tcp(hb).state() == tcp::State::Established
        });
        assert!(
            open,
            "not established: a {:?}, b {:?}, drops {:?}",
            self.a.tcp(ha).state(),
            self.b.tcp(hb).state(),
            self.dropped
        );
    }

    /// Closes with FIN, `a` first (`b` sees CLOSE-WAIT, then closes too), until `a` is in
    /// TIME-WAIT or closed.
    pub fn fin_close(&mut self, ha: SocketHandle, hb: SocketHandle) {
        self.a.tcp(ha).close();
        assert!(self.run_until(1000, |l| l.b.tcp(hb).state() == tcp::State::CloseWait));
        self.b.tcp(hb).close();
        assert!(self.run_until(2000, |l| matches!(
            l.a.tcp(ha).state(),
            tcp::State::TimeWait | tcp::State::Closed
        )));
    }

    /// Sends `n` bytes each way over the open sockets `ha` (on `a`) and `hb` (on `b`) and
    /// checks that they arrive intact and in order.
    pub fn exchange(&mut self, ha: SocketHandle, hb: SocketHandle, n: usize) {
        let pattern = |i: usize, salt: usize| ((i * 31 + i / 977 + salt) % 251) as u8;
        let (mut sent, mut got) = ([0usize; 2], [Vec::new(), Vec::new()]);
        let done = self.run_until(60_000, |l| {
            for (i, (from, to)) in [(ha, hb), (hb, ha)].into_iter().enumerate() {
                let (src, dst) = if i == 0 {
                    (&mut l.a, &mut l.b)
                } else {
                    (&mut l.b, &mut l.a)
                };
                let s = src.tcp(from);
                while sent[i] < n && s.can_send() {
                    let chunk: Vec<u8> = (sent[i]..n.min(sent[i] + 4096))
                        .map(|k| pattern(k, i))
                        .collect();
                    sent[i] += s.send_slice(&chunk).unwrap();
                }
                let r = dst.tcp(to);
                while r.can_recv() {
                    r.recv(|b| {
                        got[i].extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
                }
            }
            got[0].len() == n && got[1].len() == n
        });
        assert!(
            done,
            "transfer incomplete: {} and {} of {n} bytes; drops {:?}",
            got[0].len(),
            got[1].len(),
            self.dropped
        );
        for (i, g) in got.iter().enumerate() {
            assert!(
                g.iter().enumerate().all(|(k, b)| *b == pattern(k, i)),
                "direction {i}: data corrupted"
            );
        }
    }

    /// Steps until `done` or `max_ms` milliseconds passed; true if `done`.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let end = self.now_ms + max_ms;
        while self.now_ms < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }
}
