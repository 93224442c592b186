//! A minimal BGP-4 speaker (RFC 4271) that announces a node's service addresses to the
//! router in front of a fleet, so that the router spreads their traffic over every node that
//! announces them (ECMP, as Katran, GLB and Maglev deployments do with a BGP daemon beside
//! the load balancer) and stops sending to a node whose session ends.
//!
//! It only announces: one eBGP or iBGP session, IPv4 unicast, each prefix with ORIGIN IGP,
//! an AS_PATH of the local AS (4-octet AS numbers when both ends say so, RFC 6793) and a
//! NEXT_HOP (the node's address on the router's link), and IPv6 unicast the same way in
//! MP_REACH_NLRI (RFC 4760, with the node's global IPv6 address on the router's link as the
//! next hop, RFC 2545) when it has IPv6 prefixes and the router offers the IPv6 unicast
//! capability (withdrawn in MP_UNREACH_NLRI). What the router sends is read,
//! checked and dropped. The session lives in its own thread, connecting out to the router
//! (which can stay passive), and the packet loop only says whether to announce
//! ([`BgpSpeaker::set_announce`]): a node that must first receive its peer's sessions
//! announces once it has them, and a process that dies takes its routes with it (the router
//! sees the connection close), or after the hold time when it dies silently.
//!
//! Messages are parsed by [`decode`]: bounded (at most [`MAX_MESSAGE`] bytes, RFC 4271
//! §4.1), every length checked, errors typed ([`BgpError`]); a peer that sends something
//! wrong gets a NOTIFICATION with the RFC's error code and the session ends.
//!
//! [`BgpSpeaker::reset`] ends an established session at once with a NOTIFICATION Cease,
//! *BFD Down* (RFC 9384): what a BFD client does when its BFD session with the router goes
//! down (RFC 5882 §4.3) rather than wait out the hold time. A new session opens a second
//! later.
//!
//! With [`BgpConfig::password`] every TCP segment of the session carries an RFC 2385 MD5
//! signature, as routers expect of their BGP neighbours (BIRD's `password`, the
//! `neighbor ... password` of others): nobody without the password can open or reset the
//! session, or inject announcements into it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest BGP message (RFC 4271 §4.1).
pub const MAX_MESSAGE: usize = 4096;
const HEADER: usize = 19;
const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;
/// `AS_TRANS` (RFC 6793): the 2-octet AS field's value for a 4-octet AS number.
const AS_TRANS: u16 = 23_456;

/// A message from the peer, as far as this speaker needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// OPEN: the peer's AS (4-octet when it has the capability), hold time and identifier.
    Open {
        /// The peer's AS number.
        asn: u32,
        /// Its proposed hold time, seconds.
        hold: u16,
        /// Its BGP identifier.
        id: Ipv4Addr,
        /// It can carry 4-octet AS numbers (capability 65).
        as4: bool,
        /// It offers IPv6 unicast (capability 1, AFI 2, SAFI 1).
        ipv6: bool,
    },
    /// UPDATE (its routes are not used: this speaker only announces).
    Update,
    /// NOTIFICATION: the peer ends the session.
    Notification {
        /// Error code.
        code: u8,
        /// Error subcode.
        subcode: u8,
    },
    /// KEEPALIVE.
    Keepalive,
}

/// Why a message does not parse, with its NOTIFICATION error code and subcode
/// (RFC 4271 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BgpError {
    /// The marker is not all ones (1, 1).
    Marker,
    /// A length below 19, above 4096 or wrong for the type (1, 2).
    Length,
    /// An unknown message type (1, 3).
    Type(u8),
    /// An OPEN of another version than 4 (2, 1).
    Version(u8),
    /// An OPEN whose optional parameters do not parse (2, 0).
    OpenParameters,
    /// An OPEN with a hold time of 1 or 2 seconds (2, 6).
    HoldTime,
    /// An UPDATE whose lengths do not add up (3, 1).
    UpdateLengths,
}

impl BgpError {
    /// The NOTIFICATION (code, subcode) that reports it.
    pub fn notification(self) -> (u8, u8) {
        match self {
            Self::Marker => (1, 1),
            Self::Length => (1, 2),
            Self::Type(_) => (1, 3),
            Self::Version(_) => (2, 1),
            Self::OpenParameters => (2, 0),
            Self::HoldTime => (2, 6),
            Self::UpdateLengths => (3, 1),
        }
    }
}

impl core::fmt::Display for BgpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Marker => write!(f, "bad marker"),
            Self::Length => write!(f, "bad message length"),
            Self::Type(t) => write!(f, "unknown message type {t}"),
            Self::Version(v) => write!(f, "BGP version {v}"),
            Self::OpenParameters => write!(f, "bad OPEN optional parameters"),
            Self::HoldTime => write!(f, "unacceptable hold time"),
            Self::UpdateLengths => write!(f, "malformed UPDATE lengths"),
        }
    }
}

impl std::error::Error for BgpError {}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Parses the first message of `buf`: `Ok(None)` while it is incomplete, else the message
/// and its length.
///
/// # Errors
/// [`BgpError`] for a message that can never parse (the session must end).
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, BgpError> {
    let Some(header) = buf.get(..HEADER) else {
        return Ok(None);
    };
    if header
        .get(..16)
        .is_none_or(|m| m.iter().any(|&b| b != 0xff))
    {
        return Err(BgpError::Marker);
    }
    let len = usize::from(be16(header, 16).unwrap_or(0));
    if !(HEADER..=MAX_MESSAGE).contains(&len) {
        return Err(BgpError::Length);
    }
    let Some(body) = buf.get(HEADER..len) else {
        return Ok(None);
    };
    let kind = header.get(18).copied().unwrap_or(0);
    let m = match kind {
        OPEN => decode_open(body)?,
        UPDATE => {
            // Withdrawn length, withdrawn routes, attributes length, attributes, NLRI.
            let w = usize::from(be16(body, 0).ok_or(BgpError::Length)?);
            let a = usize::from(be16(body, 2 + w).ok_or(BgpError::UpdateLengths)?);
            if 4 + w + a > body.len() {
                return Err(BgpError::UpdateLengths);
            }
            Message::Update
        }
        NOTIFICATION => {
            let (&code, rest) = body.split_first().ok_or(BgpError::Length)?;
            let subcode = rest.first().copied().ok_or(BgpError::Length)?;
            Message::Notification { code, subcode }
        }
        KEEPALIVE if body.is_empty() => Message::Keepalive,
        KEEPALIVE => return Err(BgpError::Length),
        t => return Err(BgpError::Type(t)),
    };
    Ok(Some((m, len)))
}

fn decode_open(body: &[u8]) -> Result<Message, BgpError> {
    let [version, a0, a1, h0, h1, i0, i1, i2, i3, plen] =
        *body.first_chunk::<10>().ok_or(BgpError::Length)?;
    if version != 4 {
        return Err(BgpError::Version(version));
    }
    let hold = u16::from_be_bytes([h0, h1]);
    if hold == 1 || hold == 2 {
        return Err(BgpError::HoldTime);
    }
    let params = body.get(10..).filter(|p| p.len() == usize::from(plen));
    let mut params = params.ok_or(BgpError::Length)?;
    let mut asn = u32::from(u16::from_be_bytes([a0, a1]));
    let (mut as4, mut ipv6) = (false, false);
    while let Some((&[ptype, len], rest)) = params.split_first_chunk::<2>() {
        let value = rest
            .get(..usize::from(len))
            .ok_or(BgpError::OpenParameters)?;
        params = rest.get(usize::from(len)..).unwrap_or(&[]);
        if ptype != 2 {
            continue;
        }
        // Capabilities (RFC 5492): code, length, value.
        let mut caps = value;
        while let Some((&[code, clen], rest)) = caps.split_first_chunk::<2>() {
            let cv = rest
                .get(..usize::from(clen))
                .ok_or(BgpError::OpenParameters)?;
            caps = rest.get(usize::from(clen)..).unwrap_or(&[]);
            match (code, <&[u8; 4]>::try_from(cv)) {
                (65, Ok(&v)) => {
                    asn = u32::from_be_bytes(v);
                    as4 = true;
                }
                (1, Ok(&[0, 2, _, 1])) => ipv6 = true,
                _ => {}
            }
        }
        if !caps.is_empty() {
            return Err(BgpError::OpenParameters);
        }
    }
    if !params.is_empty() {
        return Err(BgpError::OpenParameters);
    }
    Ok(Message::Open {
        asn,
        hold,
        id: Ipv4Addr::new(i0, i1, i2, i3),
        as4,
        ipv6,
    })
}

/// A message of `kind` with `body`.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((HEADER + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// OPEN: version 4, our AS (`AS_TRANS` when above 65535), hold time, identifier, and the
/// capabilities multiprotocol IPv4 unicast (and IPv6 unicast with `ipv6`; RFC 4760) and
/// 4-octet AS (RFC 6793).
pub fn encode_open(asn: u32, hold: u16, id: Ipv4Addr, ipv6: bool) -> Vec<u8> {
    let as2 = u16::try_from(asn).unwrap_or(AS_TRANS);
    let mut b = vec![4];
    b.extend_from_slice(&as2.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id.octets());
    let v6: &[u8] = if ipv6 { &[1, 4, 0, 2, 0, 1] } else { &[] };
    let caps: Vec<u8> = [&[1u8, 4, 0, 1, 0, 1][..], v6, &[65, 4], &asn.to_be_bytes()].concat();
    b.push(caps.len() as u8 + 2);
    b.extend_from_slice(&[2, caps.len() as u8]);
    b.extend_from_slice(&caps);
    message(OPEN, &b)
}

/// KEEPALIVE.
pub fn encode_keepalive() -> Vec<u8> {
    message(KEEPALIVE, &[])
}

/// NOTIFICATION with `code` and `subcode`.
pub fn encode_notification(code: u8, subcode: u8) -> Vec<u8> {
    message(NOTIFICATION, &[code, subcode])
}

/// A prefix in NLRI form: its length, then as many bytes of `addr` as it covers.
fn prefix_bytes(out: &mut Vec<u8>, addr: &[u8], len: u8) {
    let len = len.min(u8::try_from(addr.len() * 8).unwrap_or(128));
    out.push(len);
    out.extend_from_slice(addr.get(..usize::from(len).div_ceil(8)).unwrap_or(&[]));
}

/// ORIGIN IGP and an AS_PATH of `asn` alone (4 octets when `as4`).
fn origin_and_path(asn: u32, as4: bool) -> Vec<u8> {
    let path: Vec<u8> = if as4 {
        asn.to_be_bytes().to_vec()
    } else {
        u16::try_from(asn)
            .unwrap_or(AS_TRANS)
            .to_be_bytes()
            .to_vec()
    };
    let mut attrs = vec![0x40, 1, 1, 0]; // ORIGIN IGP
    attrs.extend_from_slice(&[0x40, 2, 2 + path.len() as u8, 2, 1]); // AS_PATH: AS_SEQUENCE of 1
    attrs.extend_from_slice(&path);
    attrs
}

/// An UPDATE without withdrawn routes: `attrs`, then `nlri`.
fn update_with(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    message(UPDATE, &b)
}

/// An optional non-transitive attribute of `ty` (extended length when above 255 bytes).
fn optional_attr(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    match u8::try_from(value.len()) {
        Ok(n) => out.extend_from_slice(&[0x80, ty, n]),
        Err(_) => {
            out.extend_from_slice(&[0x90, ty]);
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(value);
}

/// UPDATE announcing the IPv6 `prefixes` from `asn` (a 4-octet AS_PATH when `as4`) in
/// MP_REACH_NLRI (AFI 2, SAFI 1) with `next_hop` (RFC 4760 §3, RFC 2545 §3), or,
/// `announce` false, withdrawing them in MP_UNREACH_NLRI (RFC 4760 §4).
pub fn encode_update6(
    announce: bool,
    prefixes: &[(Ipv6Addr, u8)],
    asn: u32,
    as4: bool,
    next_hop: Ipv6Addr,
) -> Vec<u8> {
    let mut routes = Vec::new();
    for (addr, len) in prefixes {
        prefix_bytes(&mut routes, &addr.octets(), *len);
    }
    let mut value = vec![0, 2, 1]; // AFI IPv6, SAFI unicast
    if !announce {
        value.extend_from_slice(&routes);
        let mut attrs = Vec::new();
        optional_attr(&mut attrs, 15, &value);
        return update_with(&attrs, &[]);
    }
    value.push(16);
    value.extend_from_slice(&next_hop.octets());
    value.push(0); // reserved
    value.extend_from_slice(&routes);
    let mut attrs = origin_and_path(asn, as4);
    optional_attr(&mut attrs, 14, &value);
    update_with(&attrs, &[])
}

/// UPDATE announcing `prefixes` from `asn` (a 4-octet AS_PATH when `as4`) with `next_hop`,
/// or, `announce` false, withdrawing them.
pub fn encode_update(
    announce: bool,
    prefixes: &[(Ipv4Addr, u8)],
    asn: u32,
    as4: bool,
    next_hop: Ipv4Addr,
) -> Vec<u8> {
    let mut routes = Vec::new();
    for (addr, len) in prefixes {
        prefix_bytes(&mut routes, &addr.octets(), *len);
    }
    if !announce {
        let mut b = (routes.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(&routes);
        b.extend_from_slice(&[0, 0]);
        return message(UPDATE, &b);
    }
    let mut attrs = origin_and_path(asn, as4);
    attrs.extend_from_slice(&[0x40, 3, 4]); // NEXT_HOP
    attrs.extend_from_slice(&next_hop.octets());
    update_with(&attrs, &routes)
}

/// The session's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    /// The router's address and port (179).
    pub peer: SocketAddr,
    /// This node's AS number.
    pub local_as: u32,
    /// The router's AS number (an OPEN with another one is refused).
    pub peer_as: u32,
    /// This node's BGP identifier.
    pub router_id: Ipv4Addr,
    /// The next hop announced: this node's address on the router's link.
    pub next_hop: Ipv4Addr,
    /// The prefixes announced.
    pub prefixes: Vec<(Ipv4Addr, u8)>,
    /// The IPv6 prefixes announced (when the router offers IPv6 unicast), with this node's
    /// global IPv6 address on the router's link as their next hop.
    pub prefixes6: Vec<(Ipv6Addr, u8)>,
    /// The IPv6 prefixes' next hop (required with `prefixes6`).
    pub next_hop6: Option<Ipv6Addr>,
    /// The hold time proposed, seconds (0: none; else at least 3).
    pub hold: u16,
    /// The TCP MD5 signature key shared with the router (RFC 2385, 1 to 80 bytes; what
    /// routers call the neighbor's *password*): every segment of the session is signed, and
    /// the router's kernel drops segments that are not (Linux only). `None`: unsigned.
    pub password: Option<Vec<u8>>,
}

/// What the session thread counts.
#[derive(Debug, Default)]
struct Counters {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    established: AtomicU64,
    announces: AtomicU64,
    withdraws: AtomicU64,
    received: AtomicU64,
    notifications_received: AtomicU64,
    errors: AtomicU64,
    hold_expired: AtomicU64,
    bfd_down: AtomicU64,
}

/// A BGP session to the router in its own thread; see the [module](self).
#[derive(Debug)]
pub struct BgpSpeaker {
    announce: Arc<AtomicBool>,
    up: Arc<AtomicBool>,
    reset: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl BgpSpeaker {
    /// Starts the session thread (announcing nothing until [`Self::set_announce`]).
    ///
    /// # Errors
    /// The thread cannot start.
    pub fn start(cfg: BgpConfig) -> io::Result<Self> {
        if cfg
            .password
            .as_ref()
            .is_some_and(|p| p.is_empty() || p.len() > 80)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a TCP-MD5 password is 1 to 80 bytes",
            ));
        }
        let announce = Arc::new(AtomicBool::new(false));
        let up = Arc::new(AtomicBool::new(false));
        let reset = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (a, u, r, c) = (
            announce.clone(),
            up.clone(),
            reset.clone(),
            counters.clone(),
        );
        std::thread::Builder::new()
            .name("bgp".into())
            .spawn(move || {
                loop {
                    session(&cfg, &a, &u, &r, &c);
                    u.store(false, Ordering::Release);
                    std::thread::sleep(Duration::from_secs(1));
                }
            })?;
        Ok(Self {
            announce,
            up,
            reset,
            counters,
        })
    }

    /// Ends the established session at once (within 100 ms) with a NOTIFICATION Cease,
    /// subcode 10 *BFD Down* (RFC 9384), counted `bfd_down`: call it when BFD finds the
    /// router gone (RFC 5882 §4.3). Nothing happens before the session is established.
    pub fn reset(&self) {
        self.reset.store(true, Ordering::Release);
    }

    /// Whether the prefixes should be announced (the session follows within 100 ms).
    pub fn set_announce(&self, on: bool) {
        self.announce.store(on, Ordering::Release);
    }

    /// Whether the session is established.
    pub fn established(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Calls `f` with every counter (stage `bgp`).
    pub fn visit_counters(&self, f: &mut dyn FnMut(&str, &str, u64)) {
        let c = &self.counters;
        crate::visit_atomics(
            "bgp",
            &[
                ("connects", &c.connects),
                ("connect_failures", &c.connect_failures),
                ("established", &c.established),
                ("announces", &c.announces),
                ("withdraws", &c.withdraws),
                ("received", &c.received),
                ("notifications_received", &c.notifications_received),
                ("errors", &c.errors),
                ("hold_expired", &c.hold_expired),
                ("bfd_down", &c.bfd_down),
            ],
            f,
        );
        f("bgp", "up", u64::from(self.established()));
    }
}

/// Reads what is there (100 ms at most) and parses whole messages into `msgs`.
fn pump(s: &mut TcpStream, buf: &mut Vec<u8>, msgs: &mut Vec<Message>) -> Result<(), SessionEnd> {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk) {
        Ok(0) => return Err(SessionEnd::Closed),
        Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Err(_) => return Err(SessionEnd::Closed),
    }
    loop {
        match decode(buf) {
            Ok(Some((m, n))) => {
                buf.drain(..n);
                msgs.push(m);
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(SessionEnd::Bad(e)),
        }
    }
}

enum SessionEnd {
    Closed,
    Bad(BgpError),
}

/// The session's TCP connection, signed when there is a password.
fn connect(cfg: &BgpConfig) -> io::Result<TcpStream> {
    let timeout = Duration::from_secs(3);
    match &cfg.password {
        None => TcpStream::connect_timeout(&cfg.peer, timeout),
        #[cfg(target_os = "linux")]
        Some(key) => crate::io::connect_tcp_md5(cfg.peer, key, timeout),
        #[cfg(not(target_os = "linux"))]
        Some(_) => Err(io::ErrorKind::Unsupported.into()),
    }
}

/// One session from connect to its end.
fn session(
    cfg: &BgpConfig,
    announce: &AtomicBool,
    up: &AtomicBool,
    reset: &AtomicBool,
    c: &Counters,
) {
    let Ok(mut s) = connect(cfg) else {
        c.connect_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    c.connects.fetch_add(1, Ordering::Relaxed);
    if s.set_read_timeout(Some(Duration::from_millis(100)))
        .is_err()
        || s.set_nodelay(true).is_err()
        || s.write_all(&encode_open(
            cfg.local_as,
            cfg.hold,
            cfg.router_id,
            offers6(cfg),
        ))
        .is_err()
    {
        return;
    }
    let (mut buf, mut msgs) = (Vec::new(), Vec::new());
    // OpenSent → OpenConfirm → Established (RFC 4271 §8.2.2), within 30 s.
    let start = Instant::now();
    let mut opened: Option<(u16, bool, bool)> = None;
    let hold = loop {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = s.write_all(&encode_notification(4, 0));
            return;
        }
        if let Err(e) = pump(&mut s, &mut buf, &mut msgs) {
            end(&mut s, e, c);
            return;
        }
        let mut ready = None;
        for m in msgs.drain(..) {
            match (m, opened) {
                (
                    Message::Open {
                        asn,
                        hold,
                        as4,
                        ipv6,
                        ..
                    },
                    None,
                ) => {
                    if asn != cfg.peer_as {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        let _ = s.write_all(&encode_notification(2, 2));
                        return;
                    }
                    let hold = if cfg.hold == 0 || hold == 0 {
                        0
                    } else {
                        cfg.hold.min(hold)
                    };
                    opened = Some((hold, as4, ipv6 && offers6(cfg)));
                    if s.write_all(&encode_keepalive()).is_err() {
                        return;
                    }
                }
                (Message::Keepalive, Some(o)) => ready = Some(o),
                (Message::Notification { .. }, _) => {
                    c.notifications_received.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    let _ = s.write_all(&encode_notification(5, 0));
                    return;
                }
            }
        }
        if let Some(o) = ready {
            break o;
        }
    };
    let (hold, as4, ipv6) = hold;
    // A reset asked for while the session was opening was about the router then.
    reset.store(false, Ordering::Release);
    up.store(true, Ordering::Release);
    c.established.fetch_add(1, Ordering::Relaxed);
    crate::say!("bgp: established with {}", cfg.peer);
    let hold_time = Duration::from_secs(u64::from(hold));
    let (mut heard, mut said) = (Instant::now(), Instant::now());
    let mut announced = false;
    loop {
        match pump(&mut s, &mut buf, &mut msgs) {
            Ok(()) => {}
            Err(e) => {
                end(&mut s, e, c);
                return;
            }
        }
        for m in msgs.drain(..) {
            heard = Instant::now();
            c.received.fetch_add(1, Ordering::Relaxed);
            match m {
                Message::Keepalive | Message::Update => {}
                Message::Notification { code, subcode } => {
                    c.notifications_received.fetch_add(1, Ordering::Relaxed);
                    crate::say!("bgp: the router ended the session ({code}, {subcode})");
                    return;
                }
                Message::Open { .. } => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    let _ = s.write_all(&encode_notification(5, 0));
                    return;
                }
            }
        }
        if reset.swap(false, Ordering::AcqRel) {
            c.bfd_down.fetch_add(1, Ordering::Relaxed);
            let _ = s.write_all(&encode_notification(6, 10));
            crate::say!("bgp: BFD found the router down: ending the session");
            return;
        }
        if hold > 0 && heard.elapsed() > hold_time {
            c.hold_expired.fetch_add(1, Ordering::Relaxed);
            let _ = s.write_all(&encode_notification(4, 0));
            crate::say!("bgp: hold time expired");
            return;
        }
        let want = announce.load(Ordering::Acquire);
        if want != announced {
            let mut u = Vec::new();
            if !cfg.prefixes.is_empty() {
                u = encode_update(want, &cfg.prefixes, cfg.local_as, as4, cfg.next_hop);
            }
            if let (true, Some(hop)) = (ipv6, cfg.next_hop6) {
                u.extend(encode_update6(want, &cfg.prefixes6, cfg.local_as, as4, hop));
            }
            if s.write_all(&u).is_err() {
                return;
            }
            announced = want;
            said = Instant::now();
            let v6: &[(Ipv6Addr, u8)] = if ipv6 { &cfg.prefixes6 } else { &[] };
            if want {
                c.announces.fetch_add(1, Ordering::Relaxed);
                crate::say!(
                    "bgp: announcing {:?} via {}{}",
                    cfg.prefixes,
                    cfg.next_hop,
                    cfg.next_hop6
                        .filter(|_| ipv6)
                        .map_or(String::new(), |h| format!(", {v6:?} via {h}"))
                );
            } else {
                c.withdraws.fetch_add(1, Ordering::Relaxed);
                crate::say!("bgp: withdrawing {:?} {v6:?}", cfg.prefixes);
            }
        }
        if hold > 0 && said.elapsed() >= hold_time / 3 {
            if s.write_all(&encode_keepalive()).is_err() {
                return;
            }
            said = Instant::now();
        }
    }
}

/// Whether the session offers IPv6 unicast: there are IPv6 prefixes and their next hop.
fn offers6(cfg: &BgpConfig) -> bool {
    !cfg.prefixes6.is_empty() && cfg.next_hop6.is_some()
}

/// Ends a session on a read failure: a NOTIFICATION for what did not parse.
fn end(s: &mut TcpStream, e: SessionEnd, c: &Counters) {
    if let SessionEnd::Bad(e) = e {
        c.errors.fetch_add(1, Ordering::Relaxed);
        let (code, subcode) = e.notification();
        let _ = s.write_all(&encode_notification(code, subcode));
        crate::say!("bgp: ending the session: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads whole messages from the speaker's connection until one that is not a
    /// KEEPALIVE (2 s at most).
    fn next_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> Message {
        next_raw(s, buf).0
    }

    /// The next message that is not a KEEPALIVE, and its bytes.
    fn next_raw(s: &mut TcpStream, buf: &mut Vec<u8>) -> (Message, Vec<u8>) {
        let start = Instant::now();
        loop {
            while let Some((m, n)) = decode(buf).unwrap() {
                let raw: Vec<u8> = buf.drain(..n).collect();
                if m != Message::Keepalive {
                    return (m, raw);
                }
            }
            assert!(start.elapsed() < Duration::from_secs(2), "no message");
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A router's listening socket on loopback and a speaker (AS 65001, 10.0.0.1, announcing
    /// 192.0.2.10/32 and the IPv6 prefixes and next hop of `v6`) connecting to it.
    fn router_and_speaker(
        (prefixes6, next_hop6): (Vec<(Ipv6Addr, u8)>, Option<Ipv6Addr>),
    ) -> (std::net::TcpListener, BgpSpeaker) {
        let router = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let speaker = BgpSpeaker::start(BgpConfig {
            peer: router.local_addr().unwrap(),
            local_as: 65_001,
            peer_as: 65_000,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            next_hop: Ipv4Addr::new(10, 0, 0, 1),
            prefixes: vec![(Ipv4Addr::new(192, 0, 2, 10), 32)],
            prefixes6,
            next_hop6,
            hold: 9,
            password: None,
        })
        .unwrap();
        (router, speaker)
    }

    /// With IPv6 prefixes the speaker offers IPv6 unicast; a router that offers it too gets
    /// the IPv4 UPDATE and then the IPv6 one (MP_REACH_NLRI with the IPv6 next hop), and
    /// their withdrawals (MP_UNREACH_NLRI); a router that does not gets IPv4 only.
    #[test]
    fn ipv6_prefixes_go_only_to_a_router_offering_ipv6_unicast() {
        let hop6: Ipv6Addr = "2001:db8:3::1".parse().unwrap();
        for router_offers in [true, false] {
            let v6 = (vec![("2001:db8:ff::1".parse().unwrap(), 128)], Some(hop6));
            let (router, speaker) = router_and_speaker(v6);
            let (mut s, _) = router.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = Vec::new();
            assert!(matches!(
                next_raw(&mut s, &mut buf).0,
                Message::Open { ipv6: true, .. }
            ));
            let open = encode_open(65_000, 9, Ipv4Addr::new(10, 0, 0, 254), router_offers);
            s.write_all(&open).unwrap();
            s.write_all(&encode_keepalive()).unwrap();
            let start = Instant::now();
            while !speaker.established() {
                assert!(start.elapsed() < Duration::from_secs(2));
                std::thread::sleep(Duration::from_millis(10));
            }
            let has = |raw: &[u8], part: &[u8]| raw.windows(part.len()).any(|w| w == part);
            for announce in [true, false] {
                speaker.set_announce(announce);
                let (m, v4) = next_raw(&mut s, &mut buf);
                assert_eq!(m, Message::Update);
                assert_eq!(has(&v4, &[0x40, 3, 4, 10, 0, 0, 1]), announce, "{v4:?}");
                if router_offers {
                    let (m, v6) = next_raw(&mut s, &mut buf);
                    assert_eq!(m, Message::Update);
                    let attr = if announce { 14 } else { 15 };
                    assert!(has(&v6, &[0x80, attr]), "{v6:?}");
                    assert_eq!(has(&v6, &hop6.octets()), announce, "{v6:?}");
                }
            }
            // Nothing more: no IPv6 UPDATE for a router that did not offer IPv6 unicast.
            std::thread::sleep(Duration::from_millis(200));
            let mut chunk = [0u8; 4096];
            if let Ok(n) = s.read(&mut chunk) {
                buf.extend_from_slice(&chunk[..n]);
            }
            while let Some((m, n)) = decode(&buf).unwrap() {
                assert_eq!(m, Message::Keepalive, "router offers IPv6: {router_offers}");
                buf.drain(..n);
            }
        }
    }

    #[test]
    fn a_reset_ends_the_established_session_with_cease_bfd_down_and_a_new_one_opens() {
        let (router, speaker) = router_and_speaker((Vec::new(), None));
        // Before any session, a reset is forgotten.
        speaker.reset();
        for round in 0..2 {
            let (mut s, _) = router.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = Vec::new();
            assert!(matches!(
                next_message(&mut s, &mut buf),
                Message::Open { asn: 65_001, .. }
            ));
            s.write_all(&encode_open(65_000, 9, Ipv4Addr::new(10, 0, 0, 254), false))
                .unwrap();
            s.write_all(&encode_keepalive()).unwrap();
            let start = Instant::now();
            while !speaker.established() {
                assert!(start.elapsed() < Duration::from_secs(2), "round {round}");
                std::thread::sleep(Duration::from_millis(10));
            }
            speaker.reset();
            assert_eq!(
                next_message(&mut s, &mut buf),
                Message::Notification {
                    code: 6,
                    subcode: 10
                },
                "round {round}"
            );
        }
        let mut n = 0;
        speaker.visit_counters(&mut |_, name, v| {
            if name == "bfd_down" {
                n = v;
            }
        });
        assert_eq!(n, 2);
    }

    #[test]
    fn our_messages_parse_back() {
        let open = encode_open(4_200_000_001, 9, Ipv4Addr::new(10, 2, 1, 2), false);
        assert_eq!(open.len(), 19 + 10 + 2 + 12);
        let open6 = encode_open(65_001, 9, Ipv4Addr::new(10, 2, 1, 2), true);
        assert!(matches!(
            decode(&open6).unwrap(),
            Some((
                Message::Open {
                    ipv6: true,
                    as4: true,
                    ..
                },
                49
            ))
        ));
        let (m, n) = decode(&open).unwrap().unwrap();
        assert_eq!(n, open.len());
        assert_eq!(
            m,
            Message::Open {
                asn: 4_200_000_001,
                hold: 9,
                id: Ipv4Addr::new(10, 2, 1, 2),
                as4: true,
                ipv6: false,
            }
        );
        // The 2-octet field says AS_TRANS for a 4-octet AS.
        assert_eq!(&open[20..22], &AS_TRANS.to_be_bytes());
        let ka = encode_keepalive();
        assert_eq!(decode(&ka).unwrap(), Some((Message::Keepalive, 19)));
        let vip = [(Ipv4Addr::new(192, 0, 2, 10), 32)];
        for (announce, as4) in [(true, true), (true, false), (false, true)] {
            let u = encode_update(announce, &vip, 65_001, as4, Ipv4Addr::new(10, 2, 1, 2));
            assert_eq!(decode(&u).unwrap(), Some((Message::Update, u.len())));
            assert!(u.ends_with(&[32, 192, 0, 2, 10]) == announce);
        }
        let n = encode_notification(6, 2);
        assert_eq!(
            decode(&n).unwrap(),
            Some((
                Message::Notification {
                    code: 6,
                    subcode: 2
                },
                21
            ))
        );
    }

    /// An UPDATE announcing 2001:db8:10::/48 from AS 65001 (4-octet path) via
    /// 2001:db8:3::1 in MP_REACH_NLRI, and its withdrawal in MP_UNREACH_NLRI, written out
    /// byte by byte from RFC 4760 §3–4 and RFC 2545.
    #[test]
    fn an_ipv6_update_is_the_rfc_layout() {
        let prefix = [("2001:db8:10::".parse().unwrap(), 48)];
        let hop: Ipv6Addr = "2001:db8:3::1".parse().unwrap();
        let u = encode_update6(true, &prefix, 65_001, true, hop);
        let mut want = vec![0xff; 16];
        want.extend_from_slice(&[0, 67, 2]); // length 67, UPDATE
        want.extend_from_slice(&[0, 0]); // no withdrawn routes
        want.extend_from_slice(&[0, 44]); // path attributes: 44 bytes
        want.extend_from_slice(&[0x40, 1, 1, 0]); // ORIGIN IGP
        want.extend_from_slice(&[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9]); // AS_PATH 65001
        want.extend_from_slice(&[0x80, 14, 28, 0, 2, 1, 16]); // MP_REACH: IPv6 unicast
        want.extend_from_slice(&hop.octets()); // the next hop
        want.extend_from_slice(&[0, 48, 0x20, 0x01, 0x0d, 0xb8, 0, 0x10]); // reserved, NLRI
        assert_eq!(u, want);
        assert_eq!(decode(&u).unwrap(), Some((Message::Update, u.len())));
        let w = encode_update6(false, &prefix, 65_001, true, hop);
        let mut want = vec![0xff; 16];
        want.extend_from_slice(&[0, 36, 2, 0, 0, 0, 13]); // 13 bytes of attributes
        want.extend_from_slice(&[0x80, 15, 10, 0, 2, 1]); // MP_UNREACH: IPv6 unicast
        want.extend_from_slice(&[48, 0x20, 0x01, 0x0d, 0xb8, 0, 0x10]);
        assert_eq!(w, want);
        assert_eq!(decode(&w).unwrap(), Some((Message::Update, w.len())));
    }

    /// An UPDATE announcing 192.0.2.10/32 from AS 65001 (2-octet) via 10.2.1.2, written
    /// out byte by byte from RFC 4271 §4.3.
    #[test]
    fn an_update_is_the_rfc_layout() {
        let u = encode_update(
            true,
            &[(Ipv4Addr::new(192, 0, 2, 10), 32)],
            65_001,
            false,
            Ipv4Addr::new(10, 2, 1, 2),
        );
        let mut want = vec![0xff; 16];
        want.extend_from_slice(&[0, 46, 2]); // length 46, UPDATE
        want.extend_from_slice(&[0, 0]); // no withdrawn routes
        want.extend_from_slice(&[0, 18]); // path attributes: 18 bytes
        want.extend_from_slice(&[0x40, 1, 1, 0]); // ORIGIN IGP
        want.extend_from_slice(&[0x40, 2, 4, 2, 1, 0xfd, 0xe9]); // AS_PATH: AS_SEQUENCE 65001
        want.extend_from_slice(&[0x40, 3, 4, 10, 2, 1, 2]); // NEXT_HOP
        want.extend_from_slice(&[32, 192, 0, 2, 10]); // NLRI
        assert_eq!(u, want);
    }

    #[test]
    fn bad_messages_get_their_notification() {
        let ka = encode_keepalive();
        let mut bad_marker = ka.clone();
        bad_marker[3] = 0;
        assert_eq!(decode(&bad_marker), Err(BgpError::Marker));
        let mut short = ka.clone();
        short[17] = 18;
        assert_eq!(decode(&short), Err(BgpError::Length));
        let mut long = ka.clone();
        long[16..18].copy_from_slice(&4097u16.to_be_bytes());
        assert_eq!(decode(&long), Err(BgpError::Length));
        assert_eq!(decode(&message(9, &[])), Err(BgpError::Type(9)));
        assert_eq!(decode(&message(KEEPALIVE, &[0])), Err(BgpError::Length));
        let mut open = encode_open(65_000, 3, Ipv4Addr::LOCALHOST, false);
        open[19] = 3;
        assert_eq!(decode(&open), Err(BgpError::Version(3)));
        let hold2 = encode_open(65_000, 2, Ipv4Addr::LOCALHOST, false);
        assert_eq!(decode(&hold2), Err(BgpError::HoldTime));
        assert_eq!(BgpError::HoldTime.notification(), (2, 6));
        let mut caps = encode_open(65_000, 3, Ipv4Addr::LOCALHOST, false);
        caps[32] = 200; // a capability longer than its parameter
        assert_eq!(decode(&caps), Err(BgpError::OpenParameters));
        assert_eq!(
            decode(&message(UPDATE, &[0, 9, 0, 0])),
            Err(BgpError::UpdateLengths)
        );
        // Incomplete: wait for more.
        assert_eq!(decode(&ka[..10]), Ok(None));
        assert_eq!(
            decode(&encode_open(1, 3, Ipv4Addr::LOCALHOST, false)[..25]),
            Ok(None)
        );
    }

    proptest! {
        /// Any bytes: no panic, and a message is never longer than the input or 4096.
        #[test]
        fn decode_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200), marker in any::<bool>()) {
            let mut b = bytes;
            if marker && b.len() >= 19 {
                b[..16].fill(0xff);
                let len = b.len().min(MAX_MESSAGE) as u16;
                b[16..18].copy_from_slice(&len.to_be_bytes());
            }
            if let Ok(Some((_, n))) = decode(&b) {
                prop_assert!(n <= b.len() && (HEADER..=MAX_MESSAGE).contains(&n));
            }
        }
    }
}
