//! Bidirectional Forwarding Detection (RFC 5880, asynchronous mode, one hop over IPv4 as
//! RFC 5881 runs it) toward the router a node announces its service addresses to: the
//! router then learns that a node is gone within a few hundred milliseconds (three missed
//! packets at 100 ms) instead of a BGP hold time of seconds, and takes its routes away.
//!
//! - [`Control`]: the 24-byte control packet, [`decode`] (every check of RFC 5880 §6.8.6
//!   that comes before the state machine, typed [`BfdError`]s) and [`Control::encode`].
//! - [`Session`]: the state machine of §6.8.6 (Down → Init → Up, and back on the peer's
//!   word or when its packets stop for the detection time), the transmission timing of
//!   §6.8.7 (the agreed interval, jittered down by up to a quarter; one second while not
//!   Up) and the poll sequence of §6.5 whenever its own intervals change. Sans-IO: time is
//!   passed in, packets go in and out as bytes.
//! - [`BfdSpeaker`]: a session on a thread of its own, receiving on UDP port 3784 and
//!   sending from a port of 49152–65535, every packet with TTL 255 and only packets that
//!   arrived with TTL 255 taken (the kernel drops the others: RFC 5881 §5, GTSM). When it
//!   is dropped (the node stops) it says AdminDown ([`Session::shut_down`]), so that the
//!   router does not take a planned stop for a failure.
//!
//! With a key ([`BfdAuth`]: Meticulous Keyed SHA1, RFC 5880 §6.7.4, as BIRD's
//! `authentication meticulous keyed sha1`) every packet sent carries a sequence number that
//! grows by one and a SHA-1 digest over the packet and the key, and a packet received counts
//! only if its digest verifies and its sequence number moved forward, by at most three
//! detection multipliers: nobody without the key can bring the session down or hold it up,
//! nor replay an old packet. Without a key, packets with the A bit are discarded (§6.8.6).
//! No demand mode or echo function.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The destination port of single-hop control packets (RFC 5881 §4).
pub const PORT: u16 = 3784;
/// The length of a control packet without authentication.
pub const LEN: usize = 24;
/// The length of a Keyed SHA1 authentication section (RFC 5880 §4.4).
pub const AUTH_LEN: usize = 28;
/// The length of a control packet with a Keyed SHA1 section.
pub const AUTH_PACKET_LEN: usize = LEN + AUTH_LEN;
/// Auth Type of Meticulous Keyed SHA1.
const METICULOUS_KEYED_SHA1: u8 = 5;
/// The transmit interval while a session is not Up (RFC 5880 §6.8.3: at least a second).
pub const SLOW_TX_US: u32 = 1_000_000;

/// A session's state (RFC 5880 §4.1, `Sta`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Held down by its administrator.
    AdminDown = 0,
    /// Down (or never up).
    Down = 1,
    /// The peer's packets arrive, this side's not yet acknowledged.
    Init = 2,
    /// Both sides hear each other.
    Up = 3,
}

impl State {
    fn of(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::AdminDown,
            1 => Self::Down,
            2 => Self::Init,
            _ => Self::Up,
        }
    }
}

/// Diagnostic codes used here (RFC 5880 §4.1).
pub mod diag {
    /// No diagnostic.
    pub const NONE: u8 = 0;
    /// Control detection time expired.
    pub const DETECT_EXPIRED: u8 = 1;
    /// The neighbor signaled session down.
    pub const NEIGHBOR_DOWN: u8 = 3;
    /// Administratively down.
    pub const ADMIN_DOWN: u8 = 7;
}

/// A control packet (RFC 5880 §4.1), without authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    /// Diagnostic (5 bits).
    pub diag: u8,
    /// The sender's state.
    pub state: State,
    /// Poll: the sender asks for a packet with `fin` (its parameters changed).
    pub poll: bool,
    /// Final: the answer to a poll.
    pub fin: bool,
    /// Detection time multiplier.
    pub detect_mult: u8,
    /// The sender's discriminator (non-zero).
    pub my_disc: u32,
    /// The receiver's discriminator as the sender knows it (0: not yet).
    pub your_disc: u32,
    /// Desired minimum transmit interval, microseconds.
    pub desired_min_tx_us: u32,
    /// Required minimum receive interval, microseconds.
    pub required_min_rx_us: u32,
}

/// Why a received packet was discarded (RFC 5880 §6.8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BfdError {
    /// Shorter than a control packet, or than its own length field.
    Truncated,
    /// Version other than 1.
    Version(u8),
    /// Length field below 24.
    Length(u8),
    /// Detect multiplier 0.
    ZeroMultiplier,
    /// Multipoint bit set.
    Multipoint,
    /// My Discriminator 0.
    ZeroDiscriminator,
    /// Authentication present and none configured (or absent and configured).
    Authenticated,
    /// Another authentication type, key ID or section length than configured.
    AuthMismatch,
    /// The digest does not verify.
    AuthDigest,
    /// The sequence number did not move forward, or jumped too far (a replay).
    AuthSequence,
}

/// Meticulous Keyed SHA1 authentication with one key (RFC 5880 §6.7.4): signs every packet
/// sent ([`Self::seal`]) and checks every packet received ([`Self::open`]).
#[derive(Clone)]
pub struct BfdAuth {
    key_id: u8,
    /// The key, zero-padded to the digest's 20 bytes.
    key: [u8; 20],
    /// The sequence number of the next packet sent.
    xmit_seq: u32,
    /// The last sequence number received, and when (forgotten after [`Self::forget_after`]
    /// without a packet: a peer that restarted starts anywhere).
    rcv: Option<(u32, Instant)>,
    /// How far a sequence number may jump: three detection multipliers (§6.7.4).
    window: u32,
    forget_after: Duration,
}

impl core::fmt::Debug for BfdAuth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BfdAuth")
            .field("key_id", &self.key_id)
            .field("xmit_seq", &self.xmit_seq)
            .finish_non_exhaustive()
    }
}

impl BfdAuth {
    /// Authentication under `key` (1 to 20 bytes; the router's password) with key ID
    /// `key_id` (BIRD numbers a password 1 unless told otherwise), for a session whose
    /// detection multiplier is `detect_mult`; the first sequence number sent is
    /// `first_seq` (start from the clock, so that a restarted speaker starts ahead).
    ///
    /// # Errors
    /// A key that is empty or longer than 20 bytes.
    pub fn new(key_id: u8, key: &[u8], detect_mult: u8, first_seq: u32) -> io::Result<Self> {
        if key.is_empty() || key.len() > 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a BFD key is 1 to 20 bytes",
            ));
        }
        let mut k = [0u8; 20];
        k.get_mut(..key.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?
            .copy_from_slice(key);
        let mult = u32::from(detect_mult.max(1));
        Ok(Self {
            key_id,
            key: k,
            xmit_seq: first_seq,
            rcv: None,
            window: 3 * mult,
            // Twice the slowest detection time (the 1 s interval while not Up).
            forget_after: Duration::from_secs(2 * u64::from(mult)),
        })
    }

    /// The digest of `packet` with the key in the digest's place.
    fn digest(&self, packet: &[u8; AUTH_PACKET_LEN]) -> [u8; 20] {
        use sha1::Digest as _;
        let mut p = *packet;
        if let Some(d) = p.get_mut(LEN + 8..) {
            d.copy_from_slice(&self.key);
        }
        sha1::Sha1::digest(p).into()
    }

    /// `packet` (an unauthenticated control packet) with the A bit, its length and a signed
    /// authentication section under the next sequence number.
    pub fn seal(&mut self, packet: &[u8; LEN]) -> [u8; AUTH_PACKET_LEN] {
        let mut p = [0u8; AUTH_PACKET_LEN];
        let (head, auth) = p.split_at_mut(LEN);
        head.copy_from_slice(packet);
        if let [_, flags, _, len, ..] = head {
            *flags |= 0x04;
            *len = AUTH_PACKET_LEN as u8;
        }
        if let Some(a) = auth.get_mut(..8) {
            a.copy_from_slice(&[
                METICULOUS_KEYED_SHA1,
                AUTH_LEN as u8,
                self.key_id,
                0,
                0,
                0,
                0,
                0,
            ]);
        }
        if let Some(seq) = auth.get_mut(4..8) {
            seq.copy_from_slice(&self.xmit_seq.to_be_bytes());
        }
        self.xmit_seq = self.xmit_seq.wrapping_add(1);
        let d = self.digest(&p);
        if let Some(out) = p.get_mut(LEN + 8..) {
            out.copy_from_slice(&d);
        }
        p
    }

    /// Checks a received packet's authentication at `now`: its control part as an
    /// unauthenticated packet (for [`decode`]) if it verifies.
    ///
    /// # Errors
    /// [`BfdError::Truncated`], [`BfdError::Authenticated`] (no A bit),
    /// [`BfdError::AuthMismatch`], [`BfdError::AuthDigest`], [`BfdError::AuthSequence`].
    pub fn open(&mut self, b: &[u8], now: Instant) -> Result<[u8; LEN], BfdError> {
        let p: &[u8; AUTH_PACKET_LEN] = b.first_chunk().ok_or(BfdError::Truncated)?;
        let [_, flags, _, len, ..] = *p;
        if flags & 0x04 == 0 {
            return Err(BfdError::Authenticated);
        }
        let [kind, alen, key_id, _, s0, s1, s2, s3, ..] =
            *p.last_chunk::<AUTH_LEN>().ok_or(BfdError::Truncated)?;
        if usize::from(len) != AUTH_PACKET_LEN
            || kind != METICULOUS_KEYED_SHA1
            || usize::from(alen) != AUTH_LEN
            || key_id != self.key_id
        {
            return Err(BfdError::AuthMismatch);
        }
        let d = self.digest(p);
        let got = p.get(LEN + 8..).ok_or(BfdError::Truncated)?;
        // Not a secret comparison worth hiding: a forger learns nothing from how much of a
        // wrong digest matched without the key (and a packet per 100 ms is no oracle).
        if got != d {
            return Err(BfdError::AuthDigest);
        }
        let seq = u32::from_be_bytes([s0, s1, s2, s3]);
        if let Some((last, at)) = self.rcv
            && now.saturating_duration_since(at) < self.forget_after
        {
            let ahead = seq.wrapping_sub(last);
            if ahead == 0 || ahead > self.window {
                return Err(BfdError::AuthSequence);
            }
        }
        self.rcv = Some((seq, now));
        let mut control = [0u8; LEN];
        control.copy_from_slice(p.get(..LEN).ok_or(BfdError::Truncated)?);
        let [_, flags, _, len, ..] = &mut control;
        *flags &= !0x04;
        *len = LEN as u8;
        Ok(control)
    }
}

/// Parses and checks a control packet.
///
/// # Errors
/// The first check of RFC 5880 §6.8.6 it fails (before the session's own: the
/// discriminators).
pub fn decode(b: &[u8]) -> Result<Control, BfdError> {
    let h: &[u8; LEN] = b.first_chunk().ok_or(BfdError::Truncated)?;
    let [v, s, mult, len, ..] = *h;
    if v >> 5 != 1 {
        return Err(BfdError::Version(v >> 5));
    }
    if len < LEN as u8 {
        return Err(BfdError::Length(len));
    }
    if usize::from(len) > b.len() {
        return Err(BfdError::Truncated);
    }
    if s & 0x04 != 0 {
        return Err(BfdError::Authenticated);
    }
    if mult == 0 {
        return Err(BfdError::ZeroMultiplier);
    }
    if s & 0x01 != 0 {
        return Err(BfdError::Multipoint);
    }
    let word = |i: usize| {
        h.get(i..i + 4)
            .and_then(|w| w.try_into().ok())
            .map_or(0, u32::from_be_bytes)
    };
    let my_disc = word(4);
    if my_disc == 0 {
        return Err(BfdError::ZeroDiscriminator);
    }
    Ok(Control {
        diag: v & 0x1f,
        state: State::of(s >> 6),
        poll: s & 0x20 != 0,
        fin: s & 0x10 != 0,
        detect_mult: mult,
        my_disc,
        your_disc: word(8),
        desired_min_tx_us: word(12),
        required_min_rx_us: word(16),
    })
}

impl Control {
    /// The packet's 24 bytes (version 1, no C, A, D or M bits, no echo).
    pub fn encode(&self) -> [u8; LEN] {
        let flags =
            ((self.state as u8) << 6) | (u8::from(self.poll) << 5) | (u8::from(self.fin) << 4);
        let words = [
            [
                (1 << 5) | (self.diag & 0x1f),
                flags,
                self.detect_mult,
                LEN as u8,
            ],
            self.my_disc.to_be_bytes(),
            self.your_disc.to_be_bytes(),
            self.desired_min_tx_us.to_be_bytes(),
            self.required_min_rx_us.to_be_bytes(),
            [0; 4],
        ];
        let mut b = [0u8; LEN];
        for (out, w) in b.chunks_exact_mut(4).zip(words) {
            out.copy_from_slice(&w);
        }
        b
    }
}

/// A session's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BfdConfig {
    /// The transmit interval wanted once Up, microseconds.
    pub min_tx_us: u32,
    /// The receive interval this side can take, microseconds.
    pub min_rx_us: u32,
    /// Packets missed before the peer is taken as down.
    pub detect_mult: u8,
}

impl Default for BfdConfig {
    /// 100 ms both ways, three missed packets: a failure found within 300 ms.
    fn default() -> Self {
        Self {
            min_tx_us: 100_000,
            min_rx_us: 100_000,
            detect_mult: 3,
        }
    }
}

/// One session's state machine and timers (RFC 5880 §6.8); see the [module](self).
#[derive(Clone, Debug)]
pub struct Session {
    cfg: BfdConfig,
    state: State,
    diag: u8,
    local_disc: u32,
    remote_disc: u32,
    remote_state: State,
    remote_min_rx_us: u32,
    remote_desired_tx_us: u32,
    remote_mult: u8,
    /// A poll sequence of ours is under way (our intervals changed).
    polling: bool,
    /// A poll of the peer's waits for our final.
    answer: bool,
    last_rx: Option<Instant>,
    next_tx: Option<Instant>,
    /// Jitter state (xorshift).
    rng: u64,
    /// Times the session went Up, and went down from Up.
    pub ups: u64,
    /// Times it went down because the peer's packets stopped.
    pub detect_expired: u64,
}

impl Session {
    /// A session with local discriminator `disc` (non-zero; 0 is taken as 1) and `seed`
    /// for the transmit jitter.
    pub fn new(cfg: BfdConfig, disc: u32, seed: u64) -> Self {
        Self {
            cfg,
            state: State::Down,
            diag: diag::NONE,
            local_disc: disc.max(1),
            remote_disc: 0,
            remote_state: State::Down,
            remote_min_rx_us: 1,
            remote_desired_tx_us: 0,
            remote_mult: 0,
            polling: false,
            answer: false,
            last_rx: None,
            next_tx: None,
            rng: seed | 1,
            ups: 0,
            detect_expired: 0,
        }
    }

    /// The session's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The desired transmit interval this side advertises: the configured one once Up,
    /// at least a second before (RFC 5880 §6.8.3).
    fn desired_tx_us(&self) -> u32 {
        if self.state == State::Up {
            self.cfg.min_tx_us
        } else {
            self.cfg.min_tx_us.max(SLOW_TX_US)
        }
    }

    /// The interval between this side's packets: the larger of what it wants and what the
    /// peer can take.
    fn tx_interval(&self) -> Duration {
        Duration::from_micros(u64::from(self.desired_tx_us().max(self.remote_min_rx_us)))
    }

    /// How long the peer may stay silent (§6.8.4): its multiplier times the larger of what
    /// this side can take and what the peer wants to send at.
    fn detection_time(&self) -> Duration {
        let interval = self.cfg.min_rx_us.max(self.remote_desired_tx_us);
        Duration::from_micros(u64::from(interval) * u64::from(self.remote_mult))
    }

    fn set_state(&mut self, state: State, diag: u8) {
        if state == self.state {
            return;
        }
        let was_up = self.state == State::Up;
        self.state = state;
        self.diag = diag;
        if state == State::Up {
            self.ups += 1;
        }
        // The advertised transmit interval changes on entering or leaving Up: a poll
        // sequence tells the peer (§6.8.3).
        if was_up || state == State::Up {
            self.polling = true;
        }
        // Tell the peer now rather than at the next tick.
        self.next_tx = None;
    }

    /// Takes a received control packet (already [`decode`]d) at `now`: the checks of the
    /// discriminators, then the state machine of RFC 5880 §6.8.6. False when discarded.
    pub fn receive(&mut self, now: Instant, c: &Control) -> bool {
        if c.your_disc != 0 && c.your_disc != self.local_disc {
            return false;
        }
        if c.your_disc == 0 && !matches!(c.state, State::Down | State::AdminDown) {
            return false;
        }
        self.remote_disc = c.my_disc;
        self.remote_state = c.state;
        self.remote_min_rx_us = c.required_min_rx_us;
        self.remote_desired_tx_us = c.desired_min_tx_us;
        self.remote_mult = c.detect_mult;
        self.last_rx = Some(now);
        if c.fin {
            self.polling = false;
        }
        if c.poll {
            self.answer = true;
            self.next_tx = None;
        }
        if self.state == State::AdminDown {
            return true;
        }
        match (self.state, c.state) {
            (State::Down | State::Init | State::Up, State::AdminDown) => {
                self.set_state(State::Down, diag::NEIGHBOR_DOWN);
            }
            (State::Down, State::Down) => self.set_state(State::Init, diag::NONE),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                self.set_state(State::Up, diag::NONE);
            }
            (State::Up, State::Down) => self.set_state(State::Down, diag::NEIGHBOR_DOWN),
            _ => {}
        }
        true
    }

    /// Takes the session down on purpose (the node stops): its packet saying AdminDown
    /// (diagnostic 7), so that the peer does not take the silence that follows as a failure
    /// (RFC 5880 §6.8.16). The session stays AdminDown.
    pub fn shut_down(&mut self) -> [u8; LEN] {
        self.set_state(State::AdminDown, diag::ADMIN_DOWN);
        self.packet(false, false)
    }

    /// This side's packet as it stands, with the poll and final bits given.
    fn packet(&self, poll: bool, fin: bool) -> [u8; LEN] {
        Control {
            diag: self.diag,
            state: self.state,
            poll,
            fin,
            detect_mult: self.cfg.detect_mult,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx_us: self.desired_tx_us(),
            required_min_rx_us: self.cfg.min_rx_us,
        }
        .encode()
    }

    /// Advances the session to `now`: the peer taken as down when its packets stopped for
    /// the detection time, and the packet to send now if one is due (periodic, a change
    /// of state, or the final to a poll).
    pub fn poll(&mut self, now: Instant) -> Option<[u8; LEN]> {
        if matches!(self.state, State::Init | State::Up)
            && self.remote_mult > 0
            && self
                .last_rx
                .is_some_and(|t| now.saturating_duration_since(t) > self.detection_time())
        {
            if self.state == State::Up {
                self.detect_expired += 1;
            }
            self.set_state(State::Down, diag::DETECT_EXPIRED);
            self.remote_disc = 0;
        }
        if self.next_tx.is_some_and(|t| now < t) {
            return None;
        }
        // Up to a quarter less than the interval, at random (§6.8.7).
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let interval = self.tx_interval();
        let cut = interval.mul_f64((self.rng % 1000) as f64 / 4000.0);
        self.next_tx = Some(now + interval.saturating_sub(cut));
        let fin = core::mem::take(&mut self.answer);
        // A packet with F carries no P (§6.5).
        Some(self.packet(self.polling && !fin, fin))
    }
}

/// What the speaker's thread counts.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    discarded: AtomicU64,
    ups: AtomicU64,
    detect_expired: AtomicU64,
    send_errors: AtomicU64,
}

/// A BFD session with one peer on a thread of its own; see the [module](self).
#[derive(Debug)]
pub struct BfdSpeaker {
    state: Arc<AtomicU8>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for BfdSpeaker {
    /// Ends the session with an AdminDown packet ([`Session::shut_down`]; within 10 ms).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl BfdSpeaker {
    /// Starts a session with `peer`: listens on UDP port 3784 of every local address (only
    /// `peer`'s packets taken), sends from the first free port of 49152–65535; every packet
    /// signed and checked under `auth` if given.
    ///
    /// # Errors
    /// The sockets cannot be bound or set up, or the thread cannot start.
    pub fn start(peer: Ipv4Addr, cfg: BfdConfig, auth: Option<BfdAuth>) -> io::Result<Self> {
        let rx = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT))?;
        min_ttl(&rx)?;
        rx.set_read_timeout(Some(Duration::from_millis(10)))?;
        let seed = u64::from_le_bytes(
            crate::cli::random_secret()
                .first_chunk()
                .copied()
                .unwrap_or_default(),
        );
        let first = 49_152 + (seed % 16_384) as u16;
        let tx = (0..16_384u16)
            .map(|i| 49_152 + (first - 49_152 + i) % 16_384)
            .find_map(|port| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no source port free"))?;
        tx.set_ttl(255)?;
        tx.connect(SocketAddrV4::new(peer, PORT))?;
        let state = Arc::new(AtomicU8::new(State::Down as u8));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, c, s) = (state.clone(), counters.clone(), stop.clone());
        let disc = (seed >> 32) as u32;
        let thread = std::thread::Builder::new()
            .name("bfd".into())
            .spawn(move || {
                let session = Session::new(cfg, disc, seed);
                run(&rx, &tx, peer, session, auth, &st, &c, &s);
            })?;
        Ok(Self {
            state,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the session is Up.
    pub fn up(&self) -> bool {
        self.state.load(Ordering::Acquire) == State::Up as u8
    }

    /// Calls `f` with every counter (stage `bfd`).
    pub fn visit_counters(&self, f: &mut dyn FnMut(&str, &str, u64)) {
        let c = &self.counters;
        crate::visit_atomics(
            "bfd",
            &[
                ("sent", &c.sent),
                ("received", &c.received),
                ("discarded", &c.discarded),
                ("ups", &c.ups),
                ("detect_expired", &c.detect_expired),
                ("send_errors", &c.send_errors),
            ],
            f,
        );
        f("bfd", "up", u64::from(self.up()));
    }
}

#[cfg(target_os = "linux")]
fn min_ttl(s: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsFd as _;
    crate::io::set_ip_min_ttl(s.as_fd(), 255)
}

#[cfg(not(target_os = "linux"))]
fn min_ttl(_: &UdpSocket) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The speaker's thread: receive (10 ms at most per wait), advance, send; at the end, an
/// AdminDown packet.
#[expect(
    clippy::too_many_arguments,
    reason = "the thread's sockets, session, key and shared flags, each used once"
)]
fn run(
    rx: &UdpSocket,
    tx: &UdpSocket,
    peer: Ipv4Addr,
    mut s: Session,
    mut auth: Option<BfdAuth>,
    state: &AtomicU8,
    c: &Counters,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 64];
    // Signed when there is a key.
    let send = |auth: &mut Option<BfdAuth>, p: &[u8; LEN]| match auth {
        Some(a) => tx.send(&a.seal(p)),
        None => tx.send(p),
    };
    while !stop.load(Ordering::Acquire) {
        if let Ok((n, from)) = rx.recv_from(&mut buf) {
            let now = Instant::now();
            let ok = from.ip() == std::net::IpAddr::V4(peer)
                && buf.get(..n).is_some_and(|b| {
                    let control = match &mut auth {
                        Some(a) => a.open(b, now).and_then(|p| decode(&p)),
                        None => decode(b),
                    };
                    control.is_ok_and(|p| s.receive(now, &p))
                });
            let counter = if ok { &c.received } else { &c.discarded };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(p) = s.poll(Instant::now()) {
            let counter = if send(&mut auth, &p).is_ok() {
                &c.sent
            } else {
                &c.send_errors
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        state.store(s.state() as u8, Ordering::Release);
        c.ups.store(s.ups, Ordering::Relaxed);
        c.detect_expired.store(s.detect_expired, Ordering::Relaxed);
    }
    // The node stops: the peer hears it (unless the packet is lost; then it finds out by
    // the detection time, as on a failure).
    let _ = send(&mut auth, &s.shut_down());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meticulous_keyed_sha1_signs_as_the_rfc_says_and_refuses_forgeries_and_replays() {
        let t0 = Instant::now();
        let mut a = BfdAuth::new(1, b"nf bfd key", 3, 1000).unwrap();
        let mut b = BfdAuth::new(1, b"nf bfd key", 3, 7).unwrap();
        let c = Control {
            my_disc: 0x1122_3344,
            your_disc: 0x5566_7788,
            ..packet(State::Up, 1, 1)
        };
        let sealed = a.seal(&c.encode());
        // A known answer: SHA-1 over the packet with the key, zero-padded to 20 bytes, in the
        // digest's place (computed apart with Python's hashlib).
        assert_eq!(sealed[..4], [0x20, 0xc4, 3, 52]);
        assert_eq!(sealed[24..32], [5, 28, 1, 0, 0, 0, 0x03, 0xe8]);
        let want = "527211c385eccb46b40f1314032c566211a9f6ec";
        let got: String = sealed[32..].iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(got, want);
        // It opens to the packet it sealed, which decodes as sent.
        assert_eq!(decode(&b.open(&sealed, t0).unwrap()), Ok(c));
        // Replayed: refused; the next ones pass, a jump of more than 3 x 3 does not.
        assert_eq!(b.open(&sealed, t0), Err(BfdError::AuthSequence));
        for _ in 0..3 {
            assert!(b.open(&a.seal(&c.encode()), t0).is_ok());
        }
        for _ in 0..9 {
            a.seal(&c.encode());
        }
        assert_eq!(
            b.open(&a.seal(&c.encode()), t0),
            Err(BfdError::AuthSequence)
        );
        // After twice the slow detection time without a packet, any number is taken (the
        // peer restarted).
        assert!(
            b.open(&a.seal(&c.encode()), t0 + Duration::from_secs(7))
                .is_ok()
        );
        // Every flipped bit is refused.
        let good = a.seal(&c.encode());
        for bit in 0..good.len() * 8 {
            let mut x = good;
            x[bit / 8] ^= 1 << (bit % 8);
            assert!(
                b.clone().open(&x, t0 + Duration::from_secs(7)).is_err(),
                "bit {bit}"
            );
        }
        // Another key, another key ID, no authentication at all.
        let mut other = BfdAuth::new(1, b"another key", 3, 5000).unwrap();
        assert_eq!(
            b.clone().open(&other.seal(&c.encode()), t0),
            Err(BfdError::AuthDigest)
        );
        let mut id2 = BfdAuth::new(2, b"nf bfd key", 3, 5000).unwrap();
        assert_eq!(
            b.clone().open(&id2.seal(&c.encode()), t0),
            Err(BfdError::AuthMismatch)
        );
        assert_eq!(b.open(&c.encode(), t0), Err(BfdError::Truncated));
        let mut plain = [0u8; AUTH_PACKET_LEN];
        plain[..LEN].copy_from_slice(&c.encode());
        assert_eq!(b.open(&plain, t0), Err(BfdError::Authenticated));
        // And without a key, a signed packet is discarded.
        assert_eq!(decode(&good), Err(BfdError::Authenticated));
        assert!(BfdAuth::new(1, b"", 3, 0).is_err());
        assert!(BfdAuth::new(1, &[1; 21], 3, 0).is_err());
    }

    fn packet(state: State, my: u32, your: u32) -> Control {
        Control {
            diag: 0,
            state,
            poll: false,
            fin: false,
            detect_mult: 3,
            my_disc: my,
            your_disc: your,
            desired_min_tx_us: 100_000,
            required_min_rx_us: 100_000,
        }
    }

    #[test]
    fn packets_round_trip_and_bad_ones_are_refused() {
        let mut c = packet(State::Init, 7, 9);
        c.poll = true;
        c.diag = diag::DETECT_EXPIRED;
        let b = c.encode();
        // RFC 5880 §4.1: version 1 in the top three bits, Sta in the top two of byte 1.
        assert_eq!((b[0], b[1], b[2], b[3]), (0x21, 0xa0, 3, 24));
        assert_eq!(decode(&b), Ok(c));
        let bad = |f: fn(&mut [u8; LEN])| {
            let mut x = b;
            f(&mut x);
            decode(&x)
        };
        assert_eq!(bad(|x| x[0] = 0x40), Err(BfdError::Version(2)));
        assert_eq!(bad(|x| x[3] = 23), Err(BfdError::Length(23)));
        assert_eq!(bad(|x| x[3] = 25), Err(BfdError::Truncated));
        assert_eq!(bad(|x| x[2] = 0), Err(BfdError::ZeroMultiplier));
        assert_eq!(bad(|x| x[1] |= 1), Err(BfdError::Multipoint));
        assert_eq!(bad(|x| x[1] |= 4), Err(BfdError::Authenticated));
        assert_eq!(bad(|x| x[4..8].fill(0)), Err(BfdError::ZeroDiscriminator));
        assert_eq!(decode(&b[..23]), Err(BfdError::Truncated));
    }

    /// `rounds` rounds 10 ms apart of each session sending what it has to the other.
    fn exchange(a: &mut Session, b: &mut Session, now: &mut Instant, rounds: usize) {
        for _ in 0..rounds {
            if let Some(p) = a.poll(*now) {
                b.receive(*now, &decode(&p).unwrap());
            }
            if let Some(p) = b.poll(*now) {
                a.receive(*now, &decode(&p).unwrap());
            }
            *now += Duration::from_millis(10);
        }
    }

    /// Two sessions exchanging every packet: Down → Init → Up on both, with the poll
    /// sequences of the interval changes answered; then one side stops and the other
    /// finds it out after the detection time.
    #[test]
    fn two_sessions_come_up_and_find_a_silent_peer_down() {
        let cfg = BfdConfig::default();
        let (mut a, mut b) = (Session::new(cfg, 11, 1), Session::new(cfg, 22, 2));
        let mut now = Instant::now();
        exchange(&mut a, &mut b, &mut now, 100);
        assert_eq!((a.state(), b.state()), (State::Up, State::Up));
        assert!(!a.polling && !b.polling, "the polls were answered");
        assert_eq!(a.tx_interval(), Duration::from_millis(100));
        // B falls silent: A takes it down within the detection time (3 × 100 ms).
        let quiet = now;
        while a.state() == State::Up {
            a.poll(now);
            now += Duration::from_millis(10);
            assert!(now - quiet < Duration::from_millis(400), "not found out");
        }
        assert_eq!(
            (a.state(), a.diag, a.detect_expired),
            (State::Down, diag::DETECT_EXPIRED, 1)
        );
        // Its next packet says so, and asks for the slow interval again.
        let p = decode(&a.poll(now + Duration::from_secs(1)).unwrap()).unwrap();
        assert_eq!(
            (p.state, p.your_disc, p.desired_min_tx_us),
            (State::Down, 0, SLOW_TX_US)
        );
        // A packet for another session, or an Up without our discriminator: discarded.
        assert!(!a.receive(now, &packet(State::Up, 22, 99)));
        assert!(!a.receive(now, &packet(State::Up, 22, 0)));
        // The peer saying it is down takes an Up session down.
        let (mut c, mut d) = (Session::new(cfg, 1, 3), Session::new(cfg, 2, 4));
        exchange(&mut c, &mut d, &mut now, 50);
        assert_eq!(c.state(), State::Up);
        c.receive(now, &packet(State::Down, 2, 1));
        assert_eq!((c.state(), c.diag), (State::Down, diag::NEIGHBOR_DOWN));
    }

    /// Sides with their own timing (`--bfd-interval`, `--bfd-multiplier`): each sends at
    /// the slower of its own wish and what the other can take, and each finds the other
    /// gone after the other's multiplier of those intervals (RFC 5880 §6.8.4), not before.
    #[test]
    fn sides_with_their_own_timing_agree_on_the_slower_interval() {
        let fast = BfdConfig {
            min_tx_us: 150_000,
            min_rx_us: 150_000,
            detect_mult: 4,
        };
        let slow = BfdConfig {
            min_tx_us: 200_000,
            min_rx_us: 200_000,
            detect_mult: 3,
        };
        let mut now = Instant::now();
        for (quiet_side, want) in [(false, 600), (true, 800)] {
            let (mut a, mut b) = (Session::new(fast, 11, 5), Session::new(slow, 22, 6));
            exchange(&mut a, &mut b, &mut now, 300);
            assert_eq!((a.state(), b.state()), (State::Up, State::Up));
            assert_eq!(a.tx_interval(), Duration::from_millis(200));
            assert_eq!(b.tx_interval(), Duration::from_millis(200));
            // One side falls silent (right after sending); the other finds out.
            let (watch, _) = if quiet_side {
                (&mut b, &mut a)
            } else {
                (&mut a, &mut b)
            };
            let quiet = now;
            while watch.state() == State::Up {
                watch.poll(now);
                now += Duration::from_millis(5);
                assert!(
                    now - quiet < Duration::from_millis(want + 50),
                    "not found out"
                );
            }
            let took = now - quiet;
            assert!(
                took >= Duration::from_millis(want - 200),
                "found out after {took:?}, before {want} ms less one interval"
            );
        }
    }

    #[test]
    fn a_session_shut_down_says_admin_down_and_stays_so() {
        let cfg = BfdConfig::default();
        let (mut a, mut b) = (Session::new(cfg, 11, 1), Session::new(cfg, 22, 2));
        let mut now = Instant::now();
        exchange(&mut a, &mut b, &mut now, 100);
        let p = decode(&a.shut_down()).unwrap();
        assert_eq!(
            (p.state, p.diag, p.your_disc),
            (State::AdminDown, diag::ADMIN_DOWN, 22)
        );
        // The peer goes Down, saying why.
        b.receive(now, &p);
        assert_eq!((b.state(), b.diag), (State::Down, diag::NEIGHBOR_DOWN));
        // Nothing the peer says brings an AdminDown session up again.
        exchange(&mut a, &mut b, &mut now, 100);
        assert_eq!((a.state(), b.state()), (State::AdminDown, State::Down));
    }

    #[test]
    fn a_poll_is_answered_with_a_final_at_once() {
        let mut s = Session::new(BfdConfig::default(), 5, 9);
        let now = Instant::now();
        s.poll(now);
        let mut p = packet(State::Down, 8, 0);
        p.poll = true;
        assert!(s.receive(now, &p));
        let answer = decode(&s.poll(now).unwrap()).unwrap();
        assert!(answer.fin && !answer.poll);
    }
}
