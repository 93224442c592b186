//! The IPv4 and IPv6 router around a network function (`nat-gateway`, `l4lb`): several
//! interfaces on [`PACKET_MMAP` rings or AF_XDP](crate::io::Link), ARP (RFC 826) and
//! neighbour discovery (RFC 4861, [`crate::ndp`]) for the router's own addresses and for its
//! next hops, routes by longest prefix, and the per-hop work of RFC 1812 and RFC 8200 (TTL
//! or hop limit, MAC rewrite), so that the program in between only runs its stages.
//!
//! ```text
//!  port i RX ring ─► Router::recv ─► Batch<RingFrame> ─► caller's stages (in place)
//!     ARP answered / learned ┘                               │
//!  port j TX ring ◄─ Router::forward: route, TTL − 1, MACs ◄─┘   (one copy into the ring)
//! ```
//!
//! - **Receive**: [`Router::recv`] fills a batch from one port. ARP requests for any address the
//!   port answers for ([`PortConfig::addrs`] and [`PortConfig::answer`], e.g. a NAT's public
//!   addresses) are answered at once; ARP requests and replies teach the port's neighbour table,
//!   and so do IPv4 frames from on-link sources. Neighbour solicitations for the port's IPv6
//!   addresses ([`PortConfig::addrs6`], [`PortConfig::answer6`]) get advertisements, and
//!   solicitations and advertisements (read with RFC 4861's validity checks: hop limit 255,
//!   checksum, options) and IPv6 frames from on-link or link-local sources teach the IPv6
//!   neighbour table. What is not IP for the port's MAC leaves the batch marked as a drop,
//!   counted by the router (`not_for_us`, `non_ip`, `arp`, `ndp`).
//! - **Forward**: [`Router::forward`] drains the batch: each packet still passing goes to the
//!   route of its (possibly rewritten) destination ([`Route`], [`Route6`]), its TTL decremented
//!   with an incremental header checksum update (RFC 1624) or its hop limit decremented, its
//!   MACs set for the next hop. A next hop without a neighbour entry gets an ARP request or a
//!   neighbour solicitation, rate-limited, and the frame waits in a small bounded
//!   queue (the first packet of a flow is not lost, as in Linux's `unres_qlen`); what waits
//!   longer than [`UNRESOLVED_WAIT_MS`] is dropped and counted (`no_neighbor`).
//! - **Peers**: [`Router::set_peers`] names fixed next hops beyond the ports (a fleet's other
//!   nodes): a stage hands a packet to one with [`Verdict::Tx`] of a port number past the
//!   interfaces, and it goes out unrouted, its IP header untouched (`to_peer`).
//! - **Pings** of the ports' own addresses (those no stage answers for: not a NAT's public
//!   address or a VIP) get echo replies at receive (RFC 1812 §4.3.3.6; `echo_replies`).
//! - **ICMP errors** (RFC 1812 §4.3.2, §5.3.1): a packet passing through (not to one of
//!   the ports' addresses or the addresses they answer for) whose TTL runs out here gets
//!   time exceeded, and one with DF set (any IPv6 packet: routers do not fragment IPv6,
//!   RFC 8200 §5) that does not fit its egress port's MTU gets fragmentation needed or
//!   packet too big with that MTU (RFC 1191, RFC 8201: what path MTU discovery and
//!   traceroute read), both from the receiving port's address of the packet's family
//!   (ICMPv6 for IPv6, RFC 4443) and decided at receive, before the
//!   stages, as Linux decides them before its NAT; the answer replaces the packet, passes
//!   the stages untouched ([`Verdict::Tx`] of the receiving port) and is routed back. A
//!   packet the stages sent somewhere it does not fit (a NAT's un-translated answer, a load
//!   balancer's packet to a backend) gets fragmentation needed, and one to an address the
//!   stages translate whose TTL runs out (a traceroute to a port forward or a VIP) time
//!   exceeded, both from the egress port's address, which go back through the stages as
//!   received there
//!   ([`Router::take_answers`], run by [`serve`]), so that their session translates it to
//!   the sender as any ICMP error about the flow (RFC 5508). At most [`ICMP_PER_SECOND`] on
//!   average (bursts of [`ICMP_BURST`]); counted `time_exceeded_sent`, `frag_needed_sent`,
//!   `icmp_rate_limited`. A packet without DF too big for its egress leaves as fragments
//!   (RFC 791; `fragmented`, `fragments_sent`; options marked copied in every fragment, the
//!   others in the first), which wait for an unresolved next hop in the ARP queue as whole
//!   frames do.
//! - Every drop is counted: `no_route`, `ttl_expired` (a TTL or hop limit run out without an
//!   answer: rate-limited, or an ICMP error itself), `to_router` (IP
//!   for one of the router's own addresses after the stages: the router has no local
//!   stack), `too_big` (larger than the egress MTU and neither answered nor fragmented:
//!   rate-limited, grown by an encapsulation, or malformed IP options), `pending_full` (a frame or
//!   fragment with no room in the ARP queue), `neighbors_full`. [`Router::visit_counters`]
//!   reports them per port.
//!
//! A port without an address of a family neither answers nor routes that family's ICMP
//! errors: a packet that would need one is dropped (`ttl_expired`, `too_big`). IPv6
//! extension headers are routed through untouched; the router reads only the fixed header.

use crate::io::{Interface, IoKind, Link, PollEvents, RingConfig, RingFrame, wait_fds};
use crate::ndp::{self, Ndp};
use crate::vtep::{ArpOp, arp_frame};
use nf_core::checksum::update16;
use nf_core::reply::{icmp_echo_reply, icmp_time_exceeded, icmp_too_big};
use nf_core::wire::ethertype;
use nf_core::{Batch, DropReason, Instant, ParseConfig, PortId, Verdict, parse_frame};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::str::FromStr;

/// How long a frame waits for its next hop's ARP reply (or neighbour advertisement) before
/// it is dropped.
pub const UNRESOLVED_WAIT_MS: u64 = 1_000;
/// The least time between two ARP requests (or neighbour solicitations) for one address.
const ARP_RETRY_MS: u64 = 200;
/// Frames waiting for their next hop's link-layer address, over all ports (Linux keeps 3
/// per neighbour by default).
const PENDING_MAX: usize = 64;
/// Neighbour entries per port and family.
const NEIGHBORS_MAX: usize = 4096;
/// ICMP errors the router sends per second at most, on average (Linux: 1,000 per second
/// over all destinations, `icmp_msgs_per_sec`).
pub const ICMP_PER_SECOND: u64 = 1_000;
/// ICMP errors the router sends at once at most (Linux: `icmp_msgs_burst`, 50).
pub const ICMP_BURST: u64 = 50;

/// An IPv4 prefix with an address in it: `10.0.0.1/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The address (for a port: the router's address on it).
    pub addr: Ipv4Addr,
    /// The prefix length, 0–32.
    pub len: u8,
}

impl Ipv4Net {
    /// True if `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

/// `ADDR/LEN` (or `ADDR` alone: a host prefix of `max` bits) of the `family`.
fn prefix<A: FromStr>(s: &str, max: u8, family: &str) -> Result<(A, u8), String> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr = a
        .parse()
        .map_err(|_| format!("{s}: not an {family} address"))?;
    let len = match l {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s}: not a prefix length 0-{max}"))?,
    };
    Ok((addr, len))
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = prefix(s, 32, "IPv4")?;
        Ok(Self { addr, len })
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An IPv6 prefix with an address in it: `fd00::1/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Net {
    /// The address (for a port: the router's address on it).
    pub addr: Ipv6Addr,
    /// The prefix length, 0–128.
    pub len: u8,
}

impl Ipv6Net {
    /// True if `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.len))
            .unwrap_or(0);
        u128::from(ip) & mask == u128::from(self.addr) & mask
    }
}

impl FromStr for Ipv6Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = prefix(s, 128, "IPv6")?;
        Ok(Self { addr, len })
    }
}

impl std::fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One interface of the router.
#[derive(Clone, Debug, Default)]
pub struct PortConfig {
    /// The interface name.
    pub name: String,
    /// The router's addresses on it, with their on-link prefixes; the first one is the
    /// source of the router's ARP requests.
    pub addrs: Vec<Ipv4Net>,
    /// More addresses whose ARP requests the port answers (a NAT's public addresses, a
    /// load balancer's virtual addresses): traffic to them is for the stages.
    pub answer: Vec<Ipv4Addr>,
    /// The router's IPv6 addresses on it, with their on-link prefixes; the first one is the
    /// source of its neighbour solicitations and ICMPv6 errors.
    pub addrs6: Vec<Ipv6Net>,
    /// More IPv6 addresses whose neighbour solicitations the port answers.
    pub answer6: Vec<Ipv6Addr>,
}

/// A route: destinations in `to` leave by `port`, to `via` (or straight to the destination
/// when on-link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The destinations.
    pub to: Ipv4Net,
    /// The index of the egress port in the router's ports.
    pub port: usize,
    /// The next hop; `None` when the destinations are on the port's link.
    pub via: Option<Ipv4Addr>,
}

/// An IPv6 route, as [`Route`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route6 {
    /// The destinations.
    pub to: Ipv6Net,
    /// The index of the egress port in the router's ports.
    pub port: usize,
    /// The next hop; `None` when the destinations are on the port's link.
    pub via: Option<Ipv6Addr>,
}

/// What a port counted (the rings count their own frames).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortCounters {
    /// Frames for another MAC.
    pub not_for_us: u64,
    /// Frames neither IP, ARP nor neighbour discovery (and group-addressed IP).
    pub non_ip: u64,
    /// ARP frames received (answered or learned from, or ignored).
    pub arp: u64,
    /// ARP replies sent for the port's addresses.
    pub arp_replies: u64,
    /// ARP requests sent for next hops.
    pub arp_requests: u64,
    /// Neighbour solicitations and advertisements received (answered or learned from, or
    /// ignored).
    pub ndp: u64,
    /// Neighbour advertisements sent for the port's IPv6 addresses.
    pub ndp_adverts: u64,
    /// Neighbour solicitations sent for next hops.
    pub ndp_solicits: u64,
    /// Neighbour entries learned or changed.
    pub neighbors_learned: u64,
    /// Neighbours not learned because the table was full.
    pub neighbors_full: u64,
    /// Frames forwarded out of this port.
    pub forwarded: u64,
    /// Frames that left this port after waiting for an ARP reply (or a neighbour
    /// advertisement).
    pub forwarded_after_arp: u64,
    /// Frames dropped for want of this port's next hop's MAC.
    pub no_neighbor: u64,
    /// Frames not queued for an ARP reply: the queue was full.
    pub pending_full: u64,
    /// Frames received here that no route took.
    pub no_route: u64,
    /// Frames received here whose TTL (hop limit) ran out.
    pub ttl_expired: u64,
    /// Frames received here for one of the router's own addresses.
    pub to_router: u64,
    /// Frames larger than this port's MTU.
    pub too_big: u64,
    /// Frames received here that are not IP or are cut short.
    pub malformed: u64,
    /// Frames handed to a fleet peer on this port ([`Router::set_peers`]).
    pub to_peer: u64,
    /// ICMP time exceeded sent for frames received here.
    pub time_exceeded_sent: u64,
    /// ICMP fragmentation needed (ICMPv6 packet too big) sent for frames received here.
    pub frag_needed_sent: u64,
    /// ICMP errors not sent for frames received here: over the rate, or the frame could
    /// not be answered (dropped as `ttl_expired` or `too_big`).
    pub icmp_rate_limited: u64,
    /// Packets without DF too big for this port, sent out of it as fragments.
    pub fragmented: u64,
    /// The fragments of those packets.
    pub fragments_sent: u64,
    /// Pings of the router's own addresses received here, answered.
    pub echo_replies: u64,
}

/// One interface: its rings, addresses and neighbours.
struct Port {
    iface: Interface,
    link: Link,
    cfg: PortConfig,
    /// MTU plus the Ethernet header.
    frame_max: usize,
    neighbors: HashMap<Ipv4Addr, [u8; 6]>,
    neighbors6: HashMap<Ipv6Addr, [u8; 6]>,
    /// When an ARP request or neighbour solicitation for an address was last sent.
    asked: HashMap<IpAddr, Instant>,
    counters: PortCounters,
}

/// Learns (or changes) `ip`'s link-layer address in `map`, unless the map is full.
fn learn_in<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, [u8; 6]>,
    c: &mut PortCounters,
    ip: K,
    mac: [u8; 6],
) {
    if map.get(&ip) == Some(&mac) {
        return;
    }
    if map.len() >= NEIGHBORS_MAX && !map.contains_key(&ip) {
        c.neighbors_full += 1;
        return;
    }
    map.insert(ip, mac);
    c.neighbors_learned += 1;
}

impl Port {
    fn answers(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => {
                self.cfg.addrs.iter().any(|n| n.addr == a) || self.cfg.answer.contains(&a)
            }
            IpAddr::V6(a) => {
                self.cfg.addrs6.iter().any(|n| n.addr == a) || self.cfg.answer6.contains(&a)
            }
        }
    }

    /// On one of the port's prefixes (for IPv6 also link-local: every neighbour has one).
    fn on_link(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.cfg.addrs.iter().any(|n| n.contains(a)),
            IpAddr::V6(a) => {
                a.is_unicast_link_local() || self.cfg.addrs6.iter().any(|n| n.contains(a))
            }
        }
    }

    fn neighbor(&self, ip: IpAddr) -> Option<&[u8; 6]> {
        match ip {
            IpAddr::V4(a) => self.neighbors.get(&a),
            IpAddr::V6(a) => self.neighbors6.get(&a),
        }
    }

    fn learn(&mut self, ip: IpAddr, mac: [u8; 6]) {
        if mac[0] & 1 == 1 || ip.is_unspecified() || ip.is_multicast() || !self.on_link(ip) {
            return;
        }
        let c = &mut self.counters;
        match ip {
            IpAddr::V4(a) => learn_in(&mut self.neighbors, c, a, mac),
            IpAddr::V6(a) => learn_in(&mut self.neighbors6, c, a, mac),
        }
    }

    /// Handles an ARP frame: learn the sender, answer a request for our addresses.
    fn arp(&mut self, frame: &[u8]) {
        self.counters.arp += 1;
        let Some(a) = frame.get(14..42) else { return };
        if a[..6] != [0, 1, 8, 0, 6, 4] {
            return;
        }
        let mac = |b: &[u8]| <[u8; 6]>::try_from(b).unwrap_or([0xff; 6]);
        let ip = |b: &[u8]| Ipv4Addr::from(<[u8; 4]>::try_from(b).unwrap_or([0; 4]));
        let (sha, spa, tpa) = (mac(&a[8..14]), ip(&a[14..18]), ip(&a[24..28]));
        self.learn(IpAddr::V4(spa), sha);
        if a[6..8] == [0, 1] && self.answers(IpAddr::V4(tpa)) {
            let reply = arp_frame(ArpOp::Reply, self.iface.mac, tpa, sha, spa);
            if self.link.send(&reply).is_ok() {
                self.counters.arp_replies += 1;
            }
        }
    }

    /// Handles a neighbour solicitation or advertisement: learn the sender (or the
    /// advertised address), answer a solicitation for our addresses.
    fn ndp(&mut self, frame: &[u8]) {
        self.counters.ndp += 1;
        let eth_src = frame.get(6..12).and_then(|m| <[u8; 6]>::try_from(m).ok());
        match ndp::read(frame, 14) {
            Some(Ndp::Solicitation { src, target, mac }) => {
                if let Some(mac) = mac {
                    self.learn(IpAddr::V6(src), mac);
                }
                let Some(to_mac) = mac.or(eth_src) else {
                    return;
                };
                if self.answers(IpAddr::V6(target)) {
                    let na = ndp::advertisement(self.iface.mac, target, to_mac, src);
                    if self.link.send(&na).is_ok() {
                        self.counters.ndp_adverts += 1;
                    }
                }
            }
            Some(Ndp::Advertisement {
                target,
                mac: Some(mac),
            }) => self.learn(IpAddr::V6(target), mac),
            _ => {}
        }
    }

    /// Sends an ARP request or a neighbour solicitation for `ip` unless one went out lately
    /// (or the port has no address of its family to send it from).
    fn ask(&mut self, now: Instant, ip: IpAddr) {
        let due = |t: &Instant| now.saturating_since(*t).as_nanos() >= ARP_RETRY_MS * 1_000_000;
        if !self.asked.get(&ip).is_none_or(due) {
            return;
        }
        if self.asked.len() >= NEIGHBORS_MAX {
            // Bounded: only the addresses asked for within the retry time stay.
            self.asked.retain(|_, t| !due(t));
            if self.asked.len() >= NEIGHBORS_MAX {
                return;
            }
        }
        let mac = self.iface.mac;
        let sent = match ip {
            IpAddr::V4(a) => {
                let Some(src) = self.cfg.addrs.first() else {
                    return;
                };
                let req = arp_frame(ArpOp::Request, mac, src.addr, [0; 6], a);
                let ok = self.link.send(&req).is_ok();
                self.counters.arp_requests += u64::from(ok);
                ok
            }
            IpAddr::V6(a) => {
                let Some(src) = self.cfg.addrs6.first() else {
                    return;
                };
                let ok = self.link.send(&ndp::solicitation(mac, src.addr, a)).is_ok();
                self.counters.ndp_solicits += u64::from(ok);
                ok
            }
        };
        if sent {
            self.asked.insert(ip, now);
        }
    }
}

/// A frame waiting for its next hop's MAC.
struct Pending {
    port: usize,
    hop: IpAddr,
    since: Instant,
    len: usize,
    bytes: Box<[u8]>,
}

/// An IPv4 and IPv6 router over [`PACKET_MMAP` rings or AF_XDP](crate::io::Link); see the
/// [module docs](self).
pub struct Router {
    ports: Vec<Port>,
    /// Longest prefix first.
    routes: Vec<Route>,
    /// Longest prefix first.
    routes6: Vec<Route6>,
    /// Frames waiting for ARP replies (`len` 0: a free slot); allocated once.
    pending: Vec<Pending>,
    events: Vec<PollEvents>,
    /// Fixed next hops beyond the ports ([`Self::set_peers`]).
    peers: Vec<(usize, Ipv4Addr)>,
    /// The smallest egress frame size: larger frames are checked at receive.
    frame_min: usize,
    /// The ports' own addresses that no stage answers for: pings to them get echo replies.
    echo_addrs: Vec<IpAddr>,
    /// Per port: fragmentation needed about packets the stages sent there that did not
    /// fit, to pass back through the stages as received on that port ([`Self::take_answers`]).
    answers: Vec<Batch<RingFrame>>,
    /// Where fragments are built (the largest frame's size, allocated once).
    scratch: Vec<u8>,
    /// ICMP errors that may be sent now, and when the budget was last topped up.
    icmp: IcmpBudget,
}

/// Sends the IPv4 packet at `l3` of `frame` (DF clear, larger than `frame_max`) as
/// fragments of at most `frame_max` bytes each (RFC 791 §3.2; RFC 1812 §4.2.2.7), each with
/// `frame`'s layer-2 header and a copy of its IP header (flags, offset, length and checksum
/// its own; a packet that is itself a fragment keeps its offset and last MF), built in
/// `scratch` and given to `send`. The first fragment keeps every option; the others carry
/// only those whose copied flag is set (RFC 791 §3.1), padded to a 4-byte boundary.
/// Returns the fragments sent, or `None` without sending for a packet with DF set, a
/// malformed packet or options, no payload, no room for 8 bytes of it, or an offset past
/// the 13-bit field.
pub fn fragment(
    frame: &[u8],
    l3: usize,
    frame_max: usize,
    scratch: &mut Vec<u8>,
    mut send: impl FnMut(&[u8]) -> bool,
) -> Option<u64> {
    let h = frame.get(l3..l3 + 20)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if h[0] >> 4 != 4 || ihl < 20 || total < ihl {
        return None;
    }
    let options = frame.get(l3 + 20..l3 + ihl)?;
    let payload = frame.get(l3 + ihl..l3 + total)?;
    // The options the later fragments carry; zeros pad them (end of options list).
    let mut copied = [0u8; 40];
    let mut kept = 0;
    let mut rest = options;
    while let Some(&kind) = rest.first() {
        let len = match kind {
            0 => break,
            1 => 1,
            _ => usize::from(*rest.get(1)?),
        };
        let option = rest.get(..len).filter(|_| kind == 1 || len >= 2)?;
        if kind & 0x80 != 0 {
            copied.get_mut(kept..kept + len)?.copy_from_slice(option);
            kept += len;
        }
        rest = rest.get(len..)?;
    }
    let later_ihl = 20 + kept.div_ceil(4) * 4;
    let word = u16::from_be_bytes([h[6], h[7]]);
    let (more, first) = (word & 0x2000 != 0, word & 0x1fff);
    if word & 0x4000 != 0 {
        // Don't fragment.
        return None;
    }
    // Payload per fragment: what fits, in units of 8 bytes (the first fragment's header is
    // the larger), every fragment's offset within 13 bits and its length within 16.
    let room = |hl: usize| frame_max.min(usize::from(u16::MAX)).saturating_sub(l3 + hl) / 8 * 8;
    if payload.is_empty() || room(ihl) == 0 || usize::from(first) + (payload.len() - 1) / 8 > 0x1fff
    {
        return None;
    }
    let (mut sent, mut done) = (0, 0);
    while done < payload.len() {
        let (hl, opts) = if done == 0 {
            (ihl, options)
        } else {
            (later_ihl, copied.get(..later_ihl - 20)?)
        };
        let chunk = payload.get(done..payload.len().min(done + room(hl)))?;
        let last = done + chunk.len() >= payload.len();
        let offset = u16::try_from(usize::from(first) + done / 8).ok()?;
        scratch.clear();
        scratch.extend_from_slice(frame.get(..l3 + 20)?);
        scratch.extend_from_slice(opts);
        let ip = scratch.get_mut(l3..)?;
        ip[0] = 0x40 | (hl / 4) as u8;
        let len = u16::try_from(hl + chunk.len()).ok()?;
        ip[2..4].copy_from_slice(&len.to_be_bytes());
        // The reserved bit as it was; MF on all but the last.
        let flags = (word & 0x8000) | if more || !last { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&(flags | offset).to_be_bytes());
        ip[10..12].fill(0);
        let check = nf_core::checksum::checksum(ip.get(..hl)?);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        scratch.extend_from_slice(chunk);
        sent += u64::from(send(scratch));
        done += chunk.len();
    }
    Some(sent)
}

/// Keeps `frame` in a free slot of `pending` until its next hop (egress port, next hop,
/// since) is resolved; false when no slot is free (or the frame is larger than a slot).
fn park(
    pending: &mut [Pending],
    frame: &[u8],
    (port, hop, since): (usize, IpAddr, Instant),
) -> bool {
    let Some(slot) = pending.iter_mut().find(|p| p.len == 0) else {
        return false;
    };
    let Some(dst) = slot.bytes.get_mut(..frame.len()) else {
        return false;
    };
    dst.copy_from_slice(frame);
    (slot.port, slot.hop, slot.since, slot.len) = (port, hop, since, frame.len());
    true
}

/// What the router reads of an IP packet's header.
#[derive(Clone, Copy)]
struct Header {
    dst: IpAddr,
    /// TTL or hop limit.
    hops: u8,
    /// May not be fragmented on the way: DF set, or IPv6 (RFC 8200 §5).
    df: bool,
    /// ICMP or ICMPv6 right after the (fixed) header: maybe a ping of the router.
    icmp: bool,
}

/// The header of the IPv4 or IPv6 packet at `l3` of `frame`; `None` if it is cut short or
/// neither.
fn header(frame: &[u8], l3: usize) -> Option<Header> {
    match frame.get(l3)? >> 4 {
        4 => {
            let h = frame.get(l3..l3 + 20)?;
            Some(Header {
                dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
                hops: h[8],
                df: h[6] & 0x40 != 0,
                icmp: h[9] == nf_core::flow::proto::ICMP,
            })
        }
        6 => {
            let h = frame.get(l3..l3 + 40)?;
            Some(Header {
                dst: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).ok()?)),
                hops: h[7],
                df: true,
                icmp: h[6] == nf_core::flow::proto::ICMPV6,
            })
        }
        _ => None,
    }
}

/// A token bucket of ICMP errors: [`ICMP_PER_SECOND`], bursts of [`ICMP_BURST`].
struct IcmpBudget {
    tokens: u64,
    /// The time up to which tokens were added.
    at: Instant,
    /// The latest time the router was told ([`Router::forward`], [`Router::wait`]).
    now: Instant,
}

impl IcmpBudget {
    /// Takes a token if there is one (topping up to the burst first).
    fn take(&mut self) -> bool {
        const NANOS_PER_TOKEN: u64 = 1_000_000_000 / ICMP_PER_SECOND;
        let gained = self.now.saturating_since(self.at).as_nanos() / NANOS_PER_TOKEN;
        if gained > 0 {
            self.tokens = (self.tokens + gained).min(ICMP_BURST);
            self.at = self.now;
        }
        let ok = self.tokens > 0;
        self.tokens -= u64::from(ok);
        ok
    }
}

impl Router {
    /// Opens every port's frame I/O (`io`: rings, or AF_XDP). Each port's on-link prefixes
    /// become routes; `routes` adds more (e.g. a default route `0.0.0.0/0` via a gateway).
    ///
    /// # Errors
    /// An interface that does not exist, I/O that cannot be opened, or a route to a port
    /// that does not exist.
    pub fn open(
        ports: Vec<PortConfig>,
        routes: &[Route],
        ring: &RingConfig,
        io: IoKind,
    ) -> io::Result<Self> {
        let mut all = Vec::new();
        let mut all6 = Vec::new();
        let mut opened = Vec::new();
        for (i, cfg) in ports.into_iter().enumerate() {
            let iface = Interface::by_name(&cfg.name)
                .map_err(|e| io::Error::new(e.kind(), format!("interface {}: {e}", cfg.name)))?;
            let frame_max = iface.mtu + 14;
            let link = Link::open(&iface, io, ring, frame_max)?;
            for n in &cfg.addrs {
                all.push(Route {
                    to: *n,
                    port: i,
                    via: None,
                });
            }
            for n in &cfg.addrs6 {
                all6.push(Route6 {
                    to: *n,
                    port: i,
                    via: None,
                });
            }
            opened.push(Port {
                iface,
                link,
                cfg,
                frame_max,
                neighbors: HashMap::new(),
                neighbors6: HashMap::new(),
                asked: HashMap::new(),
                counters: PortCounters::default(),
            });
        }
        for r in routes {
            if r.port >= opened.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("route {} to port {}: no such port", r.to, r.port),
                ));
            }
            all.push(*r);
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.to.len));
        let frame_max = opened.iter().map(|p| p.frame_max).max().unwrap_or(1514);
        let pending = (0..PENDING_MAX)
            .map(|_| Pending {
                port: 0,
                hop: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                since: Instant::ZERO,
                len: 0,
                bytes: vec![0; frame_max].into_boxed_slice(),
            })
            .collect();
        let events = vec![PollEvents::default(); opened.len()];
        let frame_min = opened.iter().map(|p| p.frame_max).min().unwrap_or(1514);
        let answers = (0..opened.len()).map(|_| Batch::new()).collect();
        let echo_addrs = opened
            .iter()
            .flat_map(|p| {
                let v4 = p.cfg.addrs.iter().map(|n| IpAddr::V4(n.addr));
                v4.chain(p.cfg.addrs6.iter().map(|n| IpAddr::V6(n.addr)))
            })
            .filter(|a| {
                !opened.iter().any(|p| match a {
                    IpAddr::V4(a) => p.cfg.answer.contains(a),
                    IpAddr::V6(a) => p.cfg.answer6.contains(a),
                })
            })
            .collect();
        all6.sort_by_key(|r| std::cmp::Reverse(r.to.len));
        Ok(Self {
            ports: opened,
            routes: all,
            routes6: all6,
            pending,
            events,
            peers: Vec::new(),
            answers,
            echo_addrs,
            scratch: Vec::with_capacity(frame_max),
            frame_min,
            icmp: IcmpBudget {
                tokens: ICMP_BURST,
                at: Instant::ZERO,
                now: Instant::ZERO,
            },
        })
    }

    /// Adds IPv6 routes (e.g. a default route `::/0` via a gateway) to the ports' on-link
    /// prefixes.
    ///
    /// # Errors
    /// A route to a port that does not exist.
    pub fn add_routes6(&mut self, routes: &[Route6]) -> io::Result<()> {
        if let Some(r) = routes.iter().find(|r| r.port >= self.ports.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("route {} to port {}: no such port", r.to, r.port),
            ));
        }
        self.routes6.extend_from_slice(routes);
        self.routes6.sort_by_key(|r| std::cmp::Reverse(r.to.len));
        Ok(())
    }

    /// Names fixed next hops a stage can hand a packet to without routing it (a fleet's
    /// other nodes, each `(port, address)` on one of this router's on-link prefixes): a
    /// packet whose verdict is [`Verdict::Tx`] of port [`Self::ports`] + `i` goes out on
    /// peer `i`'s port to its MAC, its IP header untouched (handed over within the fleet,
    /// not routed: the TTL stays), counted `to_peer`; a port number beyond the peers is
    /// `no_route`.
    ///
    /// # Errors
    /// A peer on a port that does not exist, or more than 256 peers.
    pub fn set_peers(&mut self, peers: Vec<(usize, Ipv4Addr)>) -> io::Result<()> {
        if let Some((port, _)) = peers.iter().find(|(p, _)| *p >= self.ports.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("peer on port {port}: no such port"),
            ));
        }
        if peers.len() > 256 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many peers",
            ));
        }
        self.peers = peers;
        Ok(())
    }

    /// The number of ports.
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// Port `i`'s interface.
    pub fn interface(&self, i: usize) -> Option<&Interface> {
        self.ports.get(i).map(|p| &p.iface)
    }

    /// Receives up to a batch from port `i` (see the [module docs](self)); returns the frames
    /// received. Frames that are not IP for the port are marked as drops
    /// ([`DropReason::NonIp`]) and counted by the port.
    pub fn recv(&mut self, i: usize, batch: &mut Batch<RingFrame>) -> usize {
        self.recv_up_to(i, batch, nf_core::BATCH_SIZE)
    }

    /// [`Self::recv`] until `batch` holds `limit` packets.
    pub fn recv_up_to(&mut self, i: usize, batch: &mut Batch<RingFrame>, limit: usize) -> usize {
        let (frame_min, echo) = (self.frame_min, &self.echo_addrs);
        let Some(port) = self.ports.get_mut(i) else {
            return 0;
        };
        let n = port.link.recv_up_to(batch, limit);
        // A frame whose TTL runs out or that may not fit its egress: looked at again below.
        let mut transit_checks = false;
        for p in batch.packets_mut() {
            let frame = p.data();
            let Some(eth) = frame.first_chunk::<14>() else {
                port.counters.malformed += 1;
                p.meta.verdict = Verdict::Drop(DropReason::EthTruncated);
                continue;
            };
            let group = eth[0] & 1 == 1;
            let et = u16::from_be_bytes([eth[12], eth[13]]);
            if !group && eth[..6] != port.iface.mac {
                port.counters.not_for_us += 1;
            } else if et == ethertype::ARP {
                port.arp(frame);
            } else if et == ethertype::IPV4 && !group {
                if let Some(h) = frame.get(14..34) {
                    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
                    let mac = <[u8; 6]>::try_from(&eth[6..12]).unwrap_or([0xff; 6]);
                    if !port.neighbors.contains_key(&src) {
                        port.learn(IpAddr::V4(src), mac);
                    }
                    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
                    transit_checks |=
                        h[8] <= 1 || frame.len() > frame_min || (h[9] == 1 && echo.contains(&dst));
                }
                continue;
            } else if et == ethertype::IPV6 && ndp::is_ndp(frame, 14) {
                port.ndp(frame);
            } else if et == ethertype::IPV6 && !group {
                if let Some(h) = frame.get(14..54) {
                    let addr =
                        |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or([0; 16]));
                    let src = addr(&h[8..24]);
                    let mac = <[u8; 6]>::try_from(&eth[6..12]).unwrap_or([0xff; 6]);
                    if !port.neighbors6.contains_key(&src) {
                        port.learn(IpAddr::V6(src), mac);
                    }
                    let dst = IpAddr::V6(addr(&h[24..40]));
                    transit_checks |= h[7] <= 1
                        || frame.len() > frame_min
                        || (h[6] == nf_core::flow::proto::ICMPV6 && echo.contains(&dst));
                }
                continue;
            } else {
                port.counters.non_ip += 1;
            }
            p.meta.verdict = Verdict::Drop(DropReason::NonIp);
        }
        if transit_checks {
            self.answer_transit(i, batch);
        }
        n
    }

    /// Answers the IP packets of `batch` (received on port `i`) passing through that
    /// cannot be forwarded: TTL or hop limit run out (time exceeded) or too big for their
    /// egress port with DF set or IPv6 (fragmentation needed or packet too big with its
    /// MTU), from port `i`'s address of their family, within the rate ([module
    /// docs](self)). An answer replaces its packet, its verdict [`Verdict::Tx`] of port `i`
    /// (routed back to the sender; the stages leave it alone).
    #[cold]
    fn answer_transit(&mut self, i: usize, batch: &mut Batch<RingFrame>) {
        for p in batch.packets_mut() {
            if p.meta.verdict != Verdict::Pass {
                continue;
            }
            let Some(Header {
                dst,
                hops: ttl,
                df,
                icmp,
            }) = header(p.data(), 14)
            else {
                continue;
            };
            let Some(from) = self.origin(i, dst.is_ipv6()) else {
                continue;
            };
            if icmp && self.echo_addrs.contains(&dst) {
                // A ping of the router: answered at once (anything else to its addresses
                // is dropped after the stages, `to_router`).
                let (data, meta) = p.data_and_meta_mut();
                if parse_frame(data, meta, &ParseConfig::default()).is_ok()
                    && icmp_echo_reply(p).is_ok()
                {
                    p.meta.verdict = Verdict::Tx(PortId(u16::try_from(i).unwrap_or(u16::MAX)));
                    if let Some(q) = self.ports.get_mut(i) {
                        q.counters.echo_replies += 1;
                    }
                }
                continue;
            }
            if self.ports.iter().any(|q| q.answers(dst)) {
                continue;
            }
            // The egress MTU, for a packet that does not fit it.
            let mtu = self
                .route(dst)
                .and_then(|(out, _)| self.ports.get(out))
                .map(|q| q.frame_max)
                .filter(|&max| p.len() > max)
                .map(|max| max - 14);
            if ttl > 1 && !(df && mtu.is_some()) {
                continue;
            }
            let answered = self.icmp.take() && {
                let (data, meta) = p.data_and_meta_mut();
                parse_frame(data, meta, &ParseConfig::default()).is_ok()
                    && match mtu {
                        Some(mtu) if ttl > 1 => {
                            icmp_too_big(p, from, u32::try_from(mtu).unwrap_or(u32::MAX)).is_ok()
                        }
                        _ => icmp_time_exceeded(p, from).is_ok(),
                    }
            };
            let Some(c) = self.ports.get_mut(i).map(|q| &mut q.counters) else {
                continue;
            };
            if !answered {
                c.icmp_rate_limited += 1;
                p.meta.verdict = Verdict::Drop(if ttl > 1 {
                    c.too_big += 1;
                    DropReason::TooBig
                } else {
                    c.ttl_expired += 1;
                    DropReason::TtlExpired
                });
                continue;
            }
            if ttl > 1 {
                c.frag_needed_sent += 1;
            } else {
                c.time_exceeded_sent += 1;
            }
            p.meta.verdict = Verdict::Tx(PortId(u16::try_from(i).unwrap_or(u16::MAX)));
        }
    }

    /// The route for `dst`: (egress port, next hop).
    fn route(&self, dst: IpAddr) -> Option<(usize, IpAddr)> {
        match dst {
            IpAddr::V4(d) => self
                .routes
                .iter()
                .find(|r| r.to.contains(d))
                .map(|r| (r.port, IpAddr::V4(r.via.unwrap_or(d)))),
            IpAddr::V6(d) => self
                .routes6
                .iter()
                .find(|r| r.to.contains(d))
                .map(|r| (r.port, IpAddr::V6(r.via.unwrap_or(d)))),
        }
    }

    /// Forwards every passing packet of `batch` (received on port `from`) and empties it;
    /// see the [module docs](self). Frames still waiting for ARP replies go out here too
    /// once their neighbour is known.
    pub fn forward(&mut self, from: usize, now: Instant, batch: &mut Batch<RingFrame>) {
        self.icmp.now = now;
        for mut pkt in batch.drain() {
            if !matches!(pkt.meta.verdict, Verdict::Pass | Verdict::Tx(_)) {
                continue;
            }
            let verdict = pkt.meta.verdict;
            let frame = pkt.data_mut();
            // The frame is routed on its first IP header, whatever the stages looked at
            // (after an encapsulation, `meta` describes the inner packet).
            let l3 = match frame.get(12..18) {
                Some([0x81, 0x00, _, _, 0x08, 0x00] | [0x81, 0x00, _, _, 0x86, 0xdd]) => 18,
                _ => 14,
            };
            let count = |ports: &mut Vec<Port>, f: fn(&mut PortCounters)| {
                if let Some(p) = ports.get_mut(from) {
                    f(&mut p.counters);
                }
            };
            let Some(h) = header(frame, l3) else {
                count(&mut self.ports, |c| c.malformed += 1);
                continue;
            };
            let dst = h.dst;
            // A hand-over to a fleet peer, or routed.
            let peer = match verdict {
                Verdict::Tx(PortId(n)) => usize::from(n)
                    .checked_sub(self.ports.len())
                    .map(|i| self.peers.get(i).copied()),
                _ => None,
            };
            let (out, hop, routed) = match peer {
                Some(Some((out, hop))) => (out, IpAddr::V4(hop), false),
                Some(None) => {
                    count(&mut self.ports, |c| c.no_route += 1);
                    continue;
                }
                None => {
                    if self.ports.iter().any(|p| p.answers(dst)) {
                        count(&mut self.ports, |c| c.to_router += 1);
                        continue;
                    }
                    let Some((out, hop)) = self.route(dst) else {
                        count(&mut self.ports, |c| c.no_route += 1);
                        continue;
                    };
                    if h.hops <= 1 {
                        self.expire(from, out, l3, pkt);
                        continue;
                    }
                    (out, hop, true)
                }
            };
            if routed && dst.is_ipv6() {
                // Hop limit − 1 (no header checksum in IPv6).
                if let Some(hops) = frame.get_mut(l3 + 7) {
                    *hops -= 1;
                }
            } else if routed && let Some(w) = frame.get_mut(l3 + 8..l3 + 12) {
                // TTL − 1: the word (TTL, protocol) at bytes 8–9, the checksum at 10–11.
                let old = u16::from_be_bytes([w[0], w[1]]);
                let new = old.wrapping_sub(0x100);
                let check = update16(u16::from_be_bytes([w[2], w[3]]), old, new);
                w[..2].copy_from_slice(&new.to_be_bytes());
                w[2..].copy_from_slice(&check.to_be_bytes());
            }
            let Some(port) = self.ports.get_mut(out) else {
                continue;
            };
            port.counters.to_peer += u64::from(!routed);
            let too_big = frame.len() > port.frame_max;
            if too_big && h.df {
                self.bounce(from, out, l3, pkt);
                continue;
            }
            let mac = port.iface.mac;
            if let Some(eth) = frame.get_mut(6..12) {
                eth.copy_from_slice(&mac);
            }
            match port.neighbor(hop) {
                Some(dmac) => {
                    if let Some(eth) = frame.get_mut(..6) {
                        eth.copy_from_slice(dmac);
                    }
                    if !too_big {
                        if port.link.send(frame).is_ok() {
                            port.counters.forwarded += 1;
                        }
                        continue;
                    }
                    let link = &mut port.link;
                    match fragment(frame, l3, port.frame_max, &mut self.scratch, |f| {
                        link.send(f).is_ok()
                    }) {
                        Some(n) => {
                            port.counters.fragmented += 1;
                            port.counters.fragments_sent += n;
                        }
                        None => port.counters.too_big += 1,
                    }
                }
                None => {
                    port.ask(now, hop);
                    let pending = &mut self.pending;
                    let c = &mut port.counters;
                    if !too_big {
                        if !park(pending, frame, (out, hop, now)) {
                            c.pending_full += 1;
                        }
                        continue;
                    }
                    // Fragments wait for the neighbour as whole frames would.
                    let mut full = 0;
                    let parked = fragment(frame, l3, port.frame_max, &mut self.scratch, |f| {
                        let ok = park(pending, f, (out, hop, now));
                        full += u64::from(!ok);
                        ok
                    });
                    match parked {
                        Some(n) => {
                            c.fragmented += 1;
                            c.fragments_sent += n;
                            c.pending_full += full;
                        }
                        None => c.too_big += 1,
                    }
                }
            }
        }
        self.release_pending(now);
    }

    /// A packet (received on port `from`) the stages sent to port `out` that does not fit
    /// its MTU: with DF set or IPv6, and its IP header the one the stages parsed (not grown
    /// by an encapsulation), it becomes fragmentation needed (packet too big) from `out`'s
    /// address of its family, kept to pass
    /// back through the stages as received on `out` ([`Self::take_answers`]: a NAT or a
    /// load balancer translates it back to the sender); else it is dropped (`too_big`).
    #[cold]
    fn bounce(&mut self, from: usize, out: usize, l3: usize, mut pkt: nf_core::Packet<RingFrame>) {
        let Some(port) = self.ports.get(out) else {
            return;
        };
        let mtu = u32::try_from(port.frame_max - 14).unwrap_or(u32::MAX);
        let h = header(pkt.data(), l3);
        let origin = h.and_then(|h| self.origin(out, h.dst.is_ipv6()));
        let df = h.is_some_and(|h| h.df);
        let answered = df
            && usize::from(pkt.meta.l3) == l3
            && pkt.meta.has(nf_core::flags::L3_VALID)
            && origin.is_some_and(|o| self.icmp.take() && icmp_too_big(&mut pkt, o, mtu).is_ok());
        let queued = answered && self.queue_answer(out, pkt);
        if let Some(c) = self.ports.get_mut(from).map(|p| &mut p.counters) {
            if queued {
                c.frag_needed_sent += 1;
            } else {
                c.too_big += 1;
                c.icmp_rate_limited += u64::from(df && !answered);
            }
        }
    }

    /// A packet (received on port `from`) the stages sent toward port `out` whose TTL runs
    /// out here (one to an address the stages translate: a NAT's public address, a VIP; the
    /// receive check answers the others): it becomes time exceeded from `out`'s address,
    /// kept to pass back through the stages as received on `out` ([`Self::take_answers`]),
    /// whose session translates it back to the sender as an error about its flow (RFC
    /// 5508), as Linux answers after its DNAT; else it is dropped (`ttl_expired`).
    #[cold]
    fn expire(&mut self, from: usize, out: usize, l3: usize, mut pkt: nf_core::Packet<RingFrame>) {
        let v6 = header(pkt.data(), l3).is_some_and(|h| h.dst.is_ipv6());
        let origin = self.origin(out, v6);
        let parsed = usize::from(pkt.meta.l3) == l3 && pkt.meta.has(nf_core::flags::L3_VALID);
        let answered = parsed
            && origin.is_some_and(|o| self.icmp.take() && icmp_time_exceeded(&mut pkt, o).is_ok());
        let queued = answered && self.queue_answer(out, pkt);
        if let Some(c) = self.ports.get_mut(from).map(|p| &mut p.counters) {
            if queued {
                c.time_exceeded_sent += 1;
            } else {
                c.ttl_expired += 1;
                c.icmp_rate_limited += u64::from(parsed && !answered);
            }
        }
    }

    /// Port `port`'s (first) address of a family: where its ICMP errors come from.
    fn origin(&self, port: usize, v6: bool) -> Option<IpAddr> {
        let cfg = &self.ports.get(port)?.cfg;
        if v6 {
            Some(IpAddr::V6(cfg.addrs6.first()?.addr))
        } else {
            Some(IpAddr::V4(cfg.addrs.first()?.addr))
        }
    }

    /// Keeps `answer` (about a packet on its way to port `out`) to pass through the stages
    /// as received on `out` ([`Self::take_answers`]); false when too many wait already.
    fn queue_answer(&mut self, out: usize, mut answer: nf_core::Packet<RingFrame>) -> bool {
        answer.meta.verdict = Verdict::Pass;
        self.answers
            .get_mut(out)
            .is_some_and(|b| b.push(answer).is_ok())
    }

    /// Moves the answers [`Self::forward`] made about packets too big for a port, or whose
    /// TTL ran out on their way to it, into the empty `batch` and returns that port: the
    /// caller runs its stages on them as received there, then forwards them (a NAT's or load
    /// balancer's session translates each back to the packet's sender). `None` when there
    /// are none.
    pub fn take_answers(&mut self, batch: &mut Batch<RingFrame>) -> Option<usize> {
        let out = self.answers.iter().position(|b| !b.is_empty())?;
        let answers = self.answers.get_mut(out)?;
        for p in answers.drain() {
            // The batch was empty, as many places as the answers.
            let _ = batch.push(p);
        }
        Some(out)
    }

    /// Sends the waiting frames whose neighbour is known now; drops those that waited too long.
    fn release_pending(&mut self, now: Instant) {
        for slot in self.pending.iter_mut().filter(|p| p.len != 0) {
            let Some(port) = self.ports.get_mut(slot.port) else {
                slot.len = 0;
                continue;
            };
            if let Some(dmac) = port.neighbor(slot.hop) {
                slot.bytes[..6].copy_from_slice(dmac);
                if port.link.send(&slot.bytes[..slot.len]).is_ok() {
                    port.counters.forwarded_after_arp += 1;
                }
                slot.len = 0;
            } else if now.saturating_since(slot.since).as_nanos() >= UNRESOLVED_WAIT_MS * 1_000_000
            {
                port.counters.no_neighbor += 1;
                slot.len = 0;
            } else {
                port.ask(now, slot.hop);
            }
        }
    }

    /// Sends what every port queued.
    ///
    /// # Errors
    /// A failure other than a link that is down.
    pub fn flush(&mut self) -> io::Result<()> {
        for p in &mut self.ports {
            p.link.flush().map_err(|e| {
                io::Error::new(e.kind(), format!("sending on {}: {e}", p.iface.name))
            })?;
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for frames on any port (also runs the ARP queue's timers).
    /// Reports a port that went down once on stderr.
    ///
    /// # Errors
    /// `poll` failed.
    pub fn wait(&mut self, now: Instant, timeout_ms: i32) -> io::Result<()> {
        self.icmp.now = now;
        let timeout = if self.pending.iter().any(|p| p.len != 0) {
            timeout_ms.min(ARP_RETRY_MS as i32)
        } else {
            timeout_ms
        };
        let fds = self.ports.iter().map(|p| p.link.as_fd());
        wait_fds(fds, timeout, &mut self.events)?;
        for (ev, port) in self.events.iter().zip(&mut self.ports) {
            if ev.error
                && let Some(e) = port.link.take_error()
            {
                eprintln!("{}: {e}; waiting for it to come back", port.iface.name);
            }
        }
        self.release_pending(now);
        Ok(())
    }

    /// Port `i`'s counters.
    pub fn counters(&self, i: usize) -> Option<PortCounters> {
        self.ports.get(i).map(|p| p.counters)
    }

    /// Calls `f(port name, counter, value)` for every port's router, ring and kernel
    /// counters (reads the kernel's drop statistics first).
    pub fn visit_counters(&mut self, f: &mut dyn FnMut(&str, &'static str, u64)) {
        for p in &mut self.ports {
            let _ = p.link.update_kernel_stats();
            let ((rx, tx), c) = (p.link.counters(), p.counters);
            let name = p.iface.name.as_str();
            for (k, v) in [
                ("rx", rx.frames),
                ("rx_kernel_drops", rx.kernel_drops),
                ("link_down", rx.link_down),
                ("tx", tx.queued),
                ("tx_ring_full", tx.full),
                ("tx_too_big", tx.too_big),
                ("tx_dropped_link_down", tx.dropped_link_down),
                ("not_for_us", c.not_for_us),
                ("non_ip", c.non_ip),
                ("arp", c.arp),
                ("arp_replies", c.arp_replies),
                ("arp_requests", c.arp_requests),
                ("ndp", c.ndp),
                ("ndp_adverts", c.ndp_adverts),
                ("ndp_solicits", c.ndp_solicits),
                ("neighbors_learned", c.neighbors_learned),
                ("neighbors_full", c.neighbors_full),
                ("forwarded", c.forwarded),
                ("forwarded_after_arp", c.forwarded_after_arp),
                ("no_neighbor", c.no_neighbor),
                ("pending_full", c.pending_full),
                ("no_route", c.no_route),
                ("ttl_expired", c.ttl_expired),
                ("to_router", c.to_router),
                ("too_big", c.too_big),
                ("malformed", c.malformed),
                ("to_peer", c.to_peer),
                ("time_exceeded_sent", c.time_exceeded_sent),
                ("frag_needed_sent", c.frag_needed_sent),
                ("icmp_rate_limited", c.icmp_rate_limited),
                ("fragmented", c.fragmented),
                ("fragments_sent", c.fragments_sent),
                ("echo_replies", c.echo_replies),
            ] {
                f(name, k, v);
            }
        }
    }
}

/// What a network function on a [`Router`] does: its stages between receive and forward,
/// its timers, its report, and a reload of its configuration.
pub trait Function {
    /// Runs the stages on a batch received on `port` (the router forwards what passes).
    fn process(&mut self, now: Instant, port: usize, batch: &mut Batch<RingFrame>);
    /// Runs due timers (session expiry, quarantines) with bounded work.
    fn timers(&mut self, now: Instant) {
        let _ = now;
    }
    /// Calls `f(stage, counter, value)` for the function's own counters.
    fn visit_counters(&self, f: &mut dyn FnMut(&str, &str, u64));
    /// Packets the stages may add to a batch ([`StageControl::batch_room`]): the loop
    /// receives that many fewer.
    ///
    /// [`StageControl::batch_room`]: nf_core::StageControl::batch_room
    fn batch_room(&self) -> usize {
        0
    }
    /// True while the function has work of its own that cannot wait for frames to arrive
    /// (packets it holds to try again soon, session changes its peers should hear within
    /// their sync interval): an idle [`serve`] loop then wakes every [`BUSY_WAIT_MS`]
    /// instead of every 100 ms.
    fn wakes_often(&self) -> bool {
        false
    }
    /// Re-reads the configuration (SIGHUP); an error is logged and the old one kept.
    ///
    /// # Errors
    /// Why the new configuration was not applied.
    fn reload(&mut self) -> Result<String, String> {
        Err("this program has nothing to reload".into())
    }
    /// Called at the first SIGINT/SIGTERM: how long [`serve`] goes on forwarding before it
    /// exits, for a node that first withdraws its routes so that the traffic moves away
    /// while it still forwards what is on its way (a second signal ends it at once).
    /// Default: no drain.
    fn drain(&mut self, now: Instant) -> Option<std::time::Duration> {
        let _ = now;
        None
    }
}

/// Prints every counter of `router` and `f`, one `name value` per line.
pub fn print_counters(program: &str, router: &mut Router, f: &impl Function, secs: f64) {
    crate::say!("{program}: counters after {secs:.2} s");
    router.visit_counters(&mut |port, name, v| crate::say!("{port}.{name} {v}"));
    f.visit_counters(&mut |stage, name, v| crate::say!("{stage}.{name} {v}"));
}

/// Every counter of `router` (each port as stage `port:IFNAME`) and `f`, in the Prometheus
/// text format ([`crate::prometheus::Exposition`]).
pub fn exposition(router: &mut Router, f: &impl Function) -> String {
    let mut e = crate::prometheus::Exposition::default();
    e.pipeline(|out| {
        router.visit_counters(&mut |port, name, v| out(&format!("port:{port}"), name, v));
    });
    e.pipeline(|out| f.visit_counters(out));
    e.finish()
}

/// How often [`serve`] publishes the counters to its metrics server.
const METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `f` on `router` until SIGINT/SIGTERM (and the drain [`Function::drain`] asks for)
/// or `duration` seconds: receive a batch from each port in turn, run the stages, forward,
/// flush, run timers; sleep in `poll` when idle. SIGUSR1 prints the counters, SIGHUP calls
/// [`Function::reload`]. The counters are printed at the end too, and with `metrics`
/// published to it every second ([`exposition`]).
///
/// # Errors
/// Signal handlers that cannot be installed, or a failing ring.
pub fn serve(
    program: &str,
    router: &mut Router,
    f: &mut impl Function,
    duration: Option<f64>,
    metrics: Option<&crate::prometheus::MetricsServer>,
) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = |sigs: &[i32]| -> Result<Arc<AtomicBool>, String> {
        let b = Arc::new(AtomicBool::new(false));
        for s in sigs {
            signal_hook::flag::register(*s, Arc::clone(&b))
                .map_err(|e| format!("signal handler: {e}"))?;
        }
        Ok(b)
    };
    let (stop, show, reload) = (
        flag(&[SIGINT, SIGTERM])?,
        flag(&[SIGUSR1])?,
        flag(&[SIGHUP])?,
    );
    let clock = nf_core::StdClock::new();
    let start = std::time::Instant::now();
    let deadline = duration.map(std::time::Duration::from_secs_f64);
    let mut batch = Batch::new();
    let mut draining_until: Option<std::time::Instant> = None;
    let mut published: Option<std::time::Instant> = None;
    while deadline.is_none_or(|d| start.elapsed() < d) {
        if stop.swap(false, Ordering::Relaxed) {
            match (draining_until, f.drain(clock.now())) {
                (None, Some(d)) if !d.is_zero() => {
                    crate::say!("{program}: draining for {:.1} s", d.as_secs_f64());
                    draining_until = Some(std::time::Instant::now() + d);
                }
                _ => break,
            }
        }
        if draining_until.is_some_and(|t| std::time::Instant::now() >= t) {
            break;
        }
        let now = clock.now();
        let mut moved = 0;
        let limit = nf_core::BATCH_SIZE.saturating_sub(f.batch_room()).max(1);
        for port in 0..router.ports() {
            moved += router.recv_up_to(port, &mut batch, limit);
            f.process(now, port, &mut batch);
            router.forward(port, now, &mut batch);
            // Answers about packets too big for their egress, back through the stages.
            for _ in 0..router.ports() {
                let Some(out) = router.take_answers(&mut batch) else {
                    break;
                };
                f.process(now, out, &mut batch);
                router.forward(out, now, &mut batch);
            }
        }
        router.flush().map_err(|e| e.to_string())?;
        f.timers(now);
        if show.swap(false, Ordering::Relaxed) {
            print_counters(program, router, f, start.elapsed().as_secs_f64());
        }
        if let Some(m) = metrics
            && published.is_none_or(|t| t.elapsed() >= METRICS_EVERY)
        {
            published = Some(std::time::Instant::now());
            m.publish(exposition(router, f));
        }
        if reload.swap(false, Ordering::Relaxed) {
            match f.reload() {
                Ok(what) => crate::say!("{program}: reloaded: {what}"),
                Err(e) => eprintln!("{program}: reload failed, keeping the configuration: {e}"),
            }
        }
        if moved == 0 {
            router
                .wait(
                    now,
                    if f.wakes_often() {
                        BUSY_WAIT_MS
                    } else {
                        IDLE_WAIT_MS
                    },
                )
                .map_err(|e| format!("waiting for frames: {e}"))?;
            router.flush().map_err(|e| e.to_string())?;
        }
    }
    print_counters(program, router, f, start.elapsed().as_secs_f64());
    Ok(())
}

/// The longest an idle [`serve`] loop sleeps in `poll` before it checks for signals.
const IDLE_WAIT_MS: i32 = 100;
/// The longest it sleeps while its function has work of its own ([`Function::wakes_often`]).
pub const BUSY_WAIT_MS: i32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let n: Ipv4Net = "10.1.2.3/24".parse().unwrap();
        assert!(n.contains(Ipv4Addr::new(10, 1, 2, 200)));
        assert!(!n.contains(Ipv4Addr::new(10, 1, 3, 1)));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(192, 0, 2, 1)));
        let host: Ipv4Net = "192.0.2.1".parse().unwrap();
        assert_eq!(host.len, 32);
        assert!(host.contains(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!host.contains(Ipv4Addr::new(192, 0, 2, 2)));
        for bad in ["10.0.0.1/33", "10.0.0/8", "x/1", "10.0.0.1/"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        assert_eq!(n.to_string(), "10.1.2.3/24");
        let n6: Ipv6Net = "2001:db8:1::1/48".parse().unwrap();
        assert!(n6.contains("2001:db8:1:ffff::9".parse().unwrap()));
        assert!(!n6.contains("2001:db8:2::1".parse().unwrap()));
        let all6: Ipv6Net = "::/0".parse().unwrap();
        assert!(all6.contains("fd00::1".parse().unwrap()));
        let host6: Ipv6Net = "fd00::1".parse().unwrap();
        assert_eq!(host6.len, 128);
        assert!(!host6.contains("fd00::2".parse().unwrap()));
        for bad in ["fd00::1/129", "10.0.0.1/8", "fd00::1/", "fd00:::1/64"] {
            assert!(bad.parse::<Ipv6Net>().is_err(), "{bad}");
        }
        assert_eq!(n6.to_string(), "2001:db8:1::1/48");
    }

    /// A UDP datagram of `len` bytes of payload (from `mul`) from 10.0.0.2 to 203.0.113.2.
    fn datagram(len: u32, mul: u32) -> Vec<u8> {
        let payload: Vec<u8> = (0..len).map(|i| (i * mul) as u8).collect();
        nf_core::wire::Frame::ipv4([10, 0, 0, 2], [203, 0, 113, 2])
            .udp(40000, 9000)
            .payload(&payload)
            .to_vec()
            .unwrap()
    }

    /// `frame` cut into fragments of at most 1,414 bytes: `n` of them.
    fn fragments_of(frame: &[u8], n: u64) -> Vec<Vec<u8>> {
        let mut got: Vec<Vec<u8>> = Vec::new();
        let sent = fragment(frame, 14, 1414, &mut Vec::new(), |x| {
            got.push(x.to_vec());
            true
        });
        assert_eq!(sent, Some(n));
        got
    }

    /// Fragments fit, carry the right offsets, flags and checksums, and put back together
    /// give the packet's payload; a fragment fragmented again keeps its offset and MF.
    #[test]
    fn fragments_fit_and_reassemble() {
        let frame = datagram(2972, 7);
        for (first, more) in [(0u16, false), (100, true)] {
            let mut f = frame.clone();
            f[14 + 6..14 + 8]
                .copy_from_slice(&(first | if more { 0x2000 } else { 0 }).to_be_bytes());
            let got = fragments_of(&f, 3);
            let mut whole = Vec::new();
            for (i, g) in got.iter().enumerate() {
                assert!(g.len() <= 1414);
                assert_eq!(g[..14], f[..14]);
                let h: &[u8; 20] = g[14..34].try_into().unwrap();
                assert!(nf_core::checksum::verify_ipv4_header(h));
                assert_eq!(usize::from(u16::from_be_bytes([h[2], h[3]])), g.len() - 14);
                let word = u16::from_be_bytes([h[6], h[7]]);
                assert_eq!(
                    usize::from(word & 0x1fff),
                    usize::from(first) + whole.len() / 8
                );
                assert_eq!(word & 0x2000 != 0, more || i < 2, "fragment {i}");
                whole.extend_from_slice(&g[34..]);
            }
            // The UDP header and payload, whole.
            assert_eq!(whole, f[34..]);
        }
        // DF set, malformed options, or no room for 8 bytes: not fragmented.
        let mut clear = frame.clone();
        clear[20] &= !0x40;
        assert_eq!(fragments_of(&clear, 3).len(), 3);
        let mut df = clear.clone();
        df[20] |= 0x40;
        assert_eq!(fragment(&df, 14, 1414, &mut Vec::new(), |_| true), None);
        let mut opts = clear.clone();
        opts[14] = 0x46;
        opts[34..38].copy_from_slice(&[0x94, 9, 0, 0]);
        assert_eq!(fragment(&opts, 14, 1414, &mut Vec::new(), |_| true), None);
        opts[34..38].copy_from_slice(&[0x07, 1, 0, 0]);
        assert_eq!(fragment(&opts, 14, 1414, &mut Vec::new(), |_| true), None);
        assert_eq!(fragment(&clear, 14, 40, &mut Vec::new(), |_| true), None);
        assert_eq!(
            fragment(&clear[..100], 14, 60, &mut Vec::new(), |_| true),
            None
        );
    }

    /// With options, the first fragment keeps them all and the later ones only those with
    /// the copied flag (router alert, not record route), padded; etherparse reads every
    /// fragment, and the payload comes back whole.
    #[test]
    fn fragments_copy_the_options_marked_copied() {
        let plain = datagram(3000, 13);
        // Router alert (148: copied, 4 bytes), record route (7, one slot: 7 bytes), NOP.
        let options = [0x94, 4, 0, 0, 7, 7, 4, 0, 0, 0, 0, 1];
        let mut f = plain[..34].to_vec();
        f.extend_from_slice(&options);
        f.extend_from_slice(&plain[34..]);
        f[14] = 0x48;
        f[20] &= !0x40; // DF clear
        let total = u16::from_be_bytes([f[16], f[17]]) + 12;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[24..26].fill(0);
        let check = nf_core::checksum::checksum(&f[14..46]);
        f[24..26].copy_from_slice(&check.to_be_bytes());
        let got = fragments_of(&f, 3);
        let mut whole = Vec::new();
        for (i, g) in got.iter().enumerate() {
            assert!(g.len() <= 1414);
            let (ip, _) = etherparse::Ipv4Header::from_slice(&g[14..]).unwrap();
            assert_eq!(
                ip.calc_header_checksum(),
                ip.header_checksum,
                "fragment {i}"
            );
            let want: &[u8] = if i == 0 { &options } else { &[0x94, 4, 0, 0] };
            assert_eq!(ip.options.as_slice(), want, "fragment {i}");
            assert_eq!(usize::from(ip.fragment_offset.value()) * 8, whole.len());
            assert_eq!(ip.more_fragments, i < 2);
            assert_eq!(usize::from(ip.total_len), g.len() - 14);
            whole.extend_from_slice(&g[14 + ip.header_len()..]);
        }
        assert_eq!(whole, plain[34..]);
    }

    #[test]
    fn arp_requests_and_replies() {
        let (mac, peer) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 9]);
        let (ours, theirs) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let req = arp_frame(ArpOp::Request, peer, theirs, [0xff; 6], ours);
        // A request is broadcast with an all-zero target hardware address.
        assert_eq!((&req[..6], &req[32..38]), (&[0xff; 6][..], &[0; 6][..]));
        let reply = crate::vtep::arp_reply(&req, mac, ours).unwrap();
        assert_eq!(reply, arp_frame(ArpOp::Reply, mac, ours, peer, theirs));
        assert_eq!((&reply[..6], &reply[32..38]), (&peer[..], &peer[..]));
        assert_eq!(crate::vtep::arp_reply(&reply, mac, ours), None);
    }
}
