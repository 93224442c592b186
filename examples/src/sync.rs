//! Session sync between the nodes of a fleet over TCP: every node keeps a copy of every
//! other node's sessions, so that when one fails — or the ECMP router in front moves flows
//! between nodes, which a plain hash-threshold router does to survivors' flows too when one
//! next hop leaves — the node the flows land on already holds them and carries the
//! connections on.
//!
//! ```text
//!  node A: conntrack journal ─► export_changes ─► [sync-out thread per peer] ══TCP══► [sync-in thread] ─► apply_from(A) ─► node B, C, ...
//!  node A ◄─ apply_from(B), apply_from(C) ◄─ [sync-in threads] ◄══TCP══ each peer's sync-out thread
//! ```
//!
//! The packet loop owns the connection-tracking stage and calls [`SyncLink::poll`] between
//! batches: it applies what the peers sent, then, every [`SyncConfig::every`], drains its
//! own change journal ([`Conntrack::export_changes`]) into delta chunks, one copy for each
//! peer. Threads do the blocking socket work, so the packet loop never waits on the
//! network: one per peer connects to it and writes the frames the loop hands it (a
//! heartbeat when there is nothing to say), one accepts the peers' connections and one per
//! connection reads its frames.
//!
//! A node connects to its peers from the address it listens on (so that they know it by
//! its address before it says anything). A connection opens with a *hello* naming the
//! sender's listening address; the receiver
//! numbers its peers by their place in [`SyncConfig::peers`] (from 1), and every copy it
//! makes remembers that number as its origin ([`Conntrack::apply_from`],
//! `SessionInfo::origin`), so that one peer's resync and failure touch its copies alone.
//!
//! - **Full resync.** On every new connection, and whenever the journal lost events (it was
//!   full), the sender walks its whole table ([`Conntrack::export`], copies of others'
//!   sessions left out) between a *begin* and an *end* frame, a bounded number of chunks
//!   per poll, deltas still flowing beside it; the receiver marks its copies of that peer's
//!   sessions unconfirmed at *begin* and removes those still unconfirmed at *end*
//!   ([`Conntrack::begin_resync`], [`Conntrack::end_resync_where`]).
//! - **Sweep.** Every [`SyncConfig::sweep`] the same walk without *begin* and *end*: it
//!   refreshes the remaining lifetimes of long-lived sessions on the peers (a refreshed
//!   deadline is no journal event).
//! - **Peer failure.** A peer whose connection closes, sends a frame that does not parse,
//!   or says nothing (not even a heartbeat) for [`SyncConfig::dead_after`] is taken as
//!   failed: its copies here become orphans ([`Conntrack::orphan_replicas`] of its origin),
//!   each made this node's own — journaled and replicated onward — by the first packet that
//!   reaches it here; the router decides which survivor sees each flow, so each session
//!   ends up owned by the one node that carries it, and the orphans no packet reaches
//!   expire unnoticed. A copy serves packets like an own session all along.
//! - **Ready.** [`SyncLink::ready`] says when a node that just started holds what its peers
//!   would give it: announce routes (take traffic) only then.
//! - **Bounded.** Frames are at most [`MAX_FRAME`] bytes (a longer length prefix ends the
//!   connection, counted `bad_frames`); the loop hands each sender at most
//!   [`QUEUE_FRAMES`] frames (more: dropped, counted `send_dropped`, and a full resync
//!   follows; a full walk waits while half the queue is taken, so that it never outruns
//!   the connection), applies at most [`FRAMES_PER_POLL`] frames and writes at most
//!   [`CHUNKS_PER_POLL`] chunks per poll and peer; at most [`MAX_PEERS`] peers. Accepted
//!   connections handshake on threads of their own, at most twice as many at once as there
//!   are peers (at least 4), at most one at once from an address that is no peer's and
//!   such addresses together at most half, two from a peer's (more are closed at once,
//!   counted `handshakes_refused`), each
//!   handshake frame at most 256 bytes and each wait for one at most
//!   [`SyncConfig::dead_after`]: a stranger that connects and says nothing neither holds
//!   the accepting thread nor makes the node allocate.
//!
//! On the wire each frame is a 4-byte big-endian length (of what follows), a kind byte and
//! the payload: a delta chunk ([`Conntrack::export_changes`]), an export chunk
//! ([`Conntrack::export`]), the sender's listening address as text (*hello*), or nothing
//! (*begin*, *end*, heartbeat). Chunks carry their own checksum against damage; against
//! forgery, give the fleet a key.
//!
//! # Authentication
//!
//! Whoever can write to a node's sync port can otherwise put sessions into its table (a
//! DNAT session names the backend its flow goes to) and end others. With
//! [`SyncConfig::key`] set (the same 128-bit secret on every node), each connection is
//! authenticated and every frame on it is tagged:
//!
//! 1. the accepting node sends a *challenge*: 16 fresh random bytes;
//! 2. the connecting node answers with its *hello*: 16 random bytes of its own (a nonce)
//!    and its listening address, tagged;
//! 3. both derive the connection's key, SipHash-2-4-128 under the fleet key of a label, the
//!    challenge and the nonce ([`FrameMac::new`]), and every frame from then on (the hello
//!    first, heartbeats included) ends in a 16-byte tag: SipHash-2-4-128 under the
//!    connection key of the frame's sequence number on the connection, its kind and its
//!    payload ([`FrameMac::seal`]);
//! 4. the accepting node, once the hello verifies and names one of its peers, answers with
//!    a *welcome* only a holder of the fleet key can compute for this connection
//!    ([`FrameMac::welcome`]): the connecting node sends nothing more until it has it, so it
//!    never hands its sessions to an impostor, and counts a peer with another key.
//!
//! The fleet's key changes without taking the link down through
//! [`SyncConfig::accept_also`]: every node, one after the other, first accepts the new key
//! beside the old, then connects with the new one while it still accepts the old, then
//! drops the old (a restart each; its peers resync it).
//!
//! A frame whose tag does not verify ends the connection (counted `auth_failures`), so a
//! forged, altered, replayed, reordered or dropped frame is never applied, and a recorded
//! connection cannot be replayed to a node (its challenge differs). SipHash is a
//! pseudorandom function designed for authenticating short messages; the 128-bit output
//! leaves forgery to guessing a 128-bit tag, one guess per connection (the first wrong tag
//! ends it). The link is not encrypted: session keys and backends are readable on the
//! wire. Without a key the link is open: run it on a management network only.

use core::hash::Hasher as _;
use nf_core::conntrack::{Conntrack, SessionService};
use nf_core::{Duration, Family, Instant};
use siphasher::sip128::{Hasher128 as _, SipHasher24};
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};

/// The longest frame either side sends or accepts (length prefix excluded).
pub const MAX_FRAME: usize = 4 << 20;
/// Frames the packet loop may queue for each peer's sender thread.
pub const QUEUE_FRAMES: usize = 256;
/// Frames from the peers applied per [`SyncLink::poll`] at most.
pub const FRAMES_PER_POLL: usize = 64;
/// Chunks written per [`SyncLink::poll`] and peer at most (deltas and a full walk's export
/// chunks each).
pub const CHUNKS_PER_POLL: usize = 16;
/// The most peers of one node (origins 1 to 254).
pub const MAX_PEERS: usize = 254;
/// Events per delta chunk and sessions per export chunk.
const PER_CHUNK: usize = 1024;

/// Frame kinds.
const DELTA: u8 = 1;
const BEGIN: u8 = 2;
const EXPORT: u8 = 3;
const END: u8 = 4;
const HEARTBEAT: u8 = 5;
const HELLO: u8 = 6;
const CHALLENGE: u8 = 7;
const WELCOME: u8 = 8;

/// The bytes of a frame's tag on an authenticated link.
pub const TAG_LEN: usize = 16;
/// The bytes of a challenge and of a nonce.
const NONCE_LEN: usize = 16;

/// Where the link listens and connects, and its timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// The address the peers connect to.
    pub listen: SocketAddr,
    /// The peers' listening addresses (where this node's changes go, and whom it accepts
    /// connections from): peer `i` is origin `i + 1`.
    pub peers: Vec<SocketAddr>,
    /// How often the journal is drained (default 10 ms).
    pub every: Duration,
    /// How often the whole table is swept to the peers (default 10 s).
    pub sweep: Duration,
    /// Silence after which a peer is taken as failed (default 1 s; heartbeats go every
    /// quarter of it).
    pub dead_after: Duration,
    /// The fleet's shared secret: with it, every connection is authenticated and every
    /// frame tagged (see [Authentication](self#authentication)); every node needs the same
    /// one. Default none: an open link.
    pub key: Option<[u8; 16]>,
    /// A second key this node accepts from connecting peers (it connects with
    /// [`Self::key`]), for changing the fleet's key without taking the link down: every
    /// node first accepts the new key too, then connects with it (accepting the old), then
    /// forgets the old. Needs [`Self::key`]. Default none.
    pub accept_also: Option<[u8; 16]>,
}

impl SyncConfig {
    /// A link listening on `listen` and sending to `peers`, default timing.
    pub fn new(listen: SocketAddr, peers: Vec<SocketAddr>) -> Self {
        Self {
            listen,
            peers,
            every: Duration::from_millis(10),
            sweep: Duration::from_millis(10_000),
            dead_after: Duration::from_millis(1_000),
            key: None,
            accept_also: None,
        }
    }
}

/// The tags of one direction of one authenticated connection (see
/// [Authentication](self#authentication)): both ends build one from the same challenge and
/// nonce, the sender seals each frame in order, the receiver opens each in the same order.
#[derive(Clone)]
pub struct FrameMac {
    key: [u8; 16],
    seq: u64,
}

impl core::fmt::Debug for FrameMac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The connection's key stays out of logs.
        f.debug_struct("FrameMac")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl FrameMac {
    /// The connection's tags under the fleet key, for the accepting node's `challenge` and
    /// the connecting node's `nonce`.
    pub fn new(fleet_key: &[u8; 16], challenge: &[u8; 16], nonce: &[u8; 16]) -> Self {
        let mut h = SipHasher24::new_with_key(fleet_key);
        h.write(b"nf-sync/1 connection key");
        h.write(challenge);
        h.write(nonce);
        Self {
            key: h.finish128().as_bytes(),
            seq: 0,
        }
    }

    /// What the accepting node answers a hello it took with: proof that it holds the fleet
    /// key too (the connecting node then knows its peer is no impostor).
    pub fn welcome(&self) -> [u8; TAG_LEN] {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(b"nf-sync/1 welcome");
        h.finish128().as_bytes()
    }

    /// The tag of the connection's next frame.
    fn next_tag(&mut self, kind: u8, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(&self.seq.to_le_bytes());
        h.write(&[kind]);
        h.write(payload);
        self.seq = self.seq.wrapping_add(1);
        h.finish128().as_bytes()
    }

    /// Appends the next tag to a whole frame (length, kind, payload; as [`read_frame`]
    /// reads) and sets its length. A slice shorter than a frame's head is left alone.
    pub fn seal(&mut self, frame: &mut Vec<u8>) {
        let Some((&kind, payload)) = frame.get(4..).and_then(<[u8]>::split_first) else {
            return;
        };
        let tag = self.next_tag(kind, payload);
        frame.extend_from_slice(&tag);
        fix_length(frame);
    }

    /// Checks and strips the tag of the connection's next frame, whose kind and payload
    /// [`read_frame`] returned: the payload without its tag, or `None` when the tag does
    /// not verify (forged, altered, replayed, reordered, or a frame missing before it; the
    /// connection is then to be closed).
    pub fn open(&mut self, kind: u8, mut payload: Vec<u8>) -> Option<Vec<u8>> {
        let at = payload.len().checked_sub(TAG_LEN)?;
        let (body, tag) = payload.split_at(at);
        let want = self.next_tag(kind, body);
        // Compared without an early exit, so that timing does not tell how much matched.
        let diff = want.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return None;
        }
        payload.truncate(at);
        Some(payload)
    }
}

/// The link's counts, summed over the peers (reported as stage `sync`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Frames handed to the sender threads.
    pub sent_frames: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Frames dropped because a sender's queue was full (a full resync follows).
    pub send_dropped: u64,
    /// Full resyncs started toward a peer.
    pub resyncs: u64,
    /// Sweeps started toward a peer.
    pub sweeps: u64,
    /// Journal events lost (the journal was full; a full resync follows).
    pub journal_lost: u64,
    /// Frames received from the peers and applied.
    pub received_frames: u64,
    /// Sessions created by the peers' chunks.
    pub created: u64,
    /// Sessions refreshed by them.
    pub refreshed: u64,
    /// Sessions replaced by them (see `ApplyReport::replaced`).
    pub replaced: u64,
    /// Ended sessions removed.
    pub ended: u64,
    /// Records not created (table or zone full) or refused by a service.
    pub skipped: u64,
    /// Chunks that did not apply (damaged or incompatible: nothing changed), and frames of
    /// an unknown kind.
    pub apply_errors: u64,
    /// Copies a finished resync removed (their peer no longer had them).
    pub resync_removed: u64,
    /// Times a peer was taken as failed.
    pub peer_down: u64,
    /// Copies of failed peers' sessions made orphans (each this node's own at its first
    /// packet here: `conntrack.v4_orphans_adopted`).
    pub orphaned: u64,
}

/// What the socket threads count (shared with them).
#[derive(Debug, Default)]
struct IoCounters {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    link_errors: AtomicU64,
    accepts: AtomicU64,
    unknown_peers: AtomicU64,
    bad_frames: AtomicU64,
    silent: AtomicU64,
    auth_failures: AtomicU64,
    handshakes_refused: AtomicU64,
}

/// What the receiving threads hand the packet loop, with the peer's origin.
enum Inbound {
    Frame(u8, u8, Vec<u8>),
    /// The peer's connection ended (closed, failed, silent or unparsable) and no newer one
    /// replaced it.
    Down(u8),
}

/// A full walk of the table toward one peer under way.
#[derive(Clone, Copy, Debug)]
struct Walk {
    /// A resync (between *begin* and *end*) rather than a sweep.
    resync: bool,
    family: Family,
    from: u32,
}

/// What both sides of the link share about one peer.
#[derive(Debug, Default)]
struct PeerFlags {
    /// This node's connection to the peer is up.
    connected: AtomicBool,
    /// The peer needs a full resync (a new connection, or frames dropped).
    need_resync: AtomicBool,
    /// The peer's connection to this node is open.
    inbound: AtomicBool,
    /// Connections accepted from the peer: only the latest one's end is its failure.
    generation: AtomicU64,
    /// Frames handed to the sender thread and not yet written: a full walk waits while
    /// half the queue is taken, so that it never outruns the connection (a dropped frame
    /// would start the walk over).
    queued: AtomicUsize,
}

/// One peer, as the packet loop sees it.
struct Peer {
    addr: SocketAddr,
    origin: u8,
    to_peer: SyncSender<Vec<u8>>,
    flags: Arc<PeerFlags>,
    walk: Option<Walk>,
    /// A resync from the peer is under way (its *begin* arrived, its *end* not yet).
    receiving_resync: bool,
    /// A resync from the peer finished since this node started.
    resynced: bool,
}

/// One node's end of the sync links; see the [module](self).
pub struct SyncLink {
    cfg: SyncConfig,
    peers: Vec<Peer>,
    from_peers: Receiver<Inbound>,
    io: Arc<IoCounters>,
    /// The first poll.
    started: Option<Instant>,
    /// Latched by [`Self::ready`].
    ready: bool,
    next_send: Instant,
    next_sweep: Instant,
    counters: SyncCounters,
}

impl core::fmt::Debug for SyncLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SyncLink")
            .field("cfg", &self.cfg)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// One frame: length, kind, payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    f.push(kind);
    f.extend_from_slice(payload);
    f
}

/// Reads one frame of the link: `(kind, payload)`. A length of 0 or above
/// [`MAX_FRAME`] + 1 is `InvalidData` (nothing allocated for it).
///
/// # Errors
/// The reader's errors, and `InvalidData` for a bad length.
pub fn read_frame(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    read_frame_within(r, MAX_FRAME)
}

/// [`read_frame`] of a frame whose payload is at most `max` bytes: the handshake's, read
/// before the peer is known, are short.
fn read_frame_within(r: &mut impl Read, max: usize) -> io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max.min(MAX_FRAME) + 1 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame length"));
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind)?;
    let mut payload = vec![0; len - 1];
    r.read_exact(&mut payload)?;
    Ok((kind[0], payload))
}

fn std_duration(d: Duration) -> std::time::Duration {
    std::time::Duration::from_nanos(d.as_nanos())
}

impl SyncLink {
    /// Binds the listening socket and starts the socket threads.
    ///
    /// # Errors
    /// The listening address cannot be bound, more than [`MAX_PEERS`] peers, or a thread
    /// cannot start.
    pub fn start(cfg: SyncConfig) -> io::Result<Self> {
        if cfg.peers.len() > MAX_PEERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many peers",
            ));
        }
        if cfg.key.is_none() && cfg.accept_also.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a second accepted key without a key",
            ));
        }
        let listener = TcpListener::bind(cfg.listen)?;
        if cfg.key.is_none() {
            crate::say!(
                "sync: no key: anyone who reaches {} can write sessions here (a management network only)",
                cfg.listen
            );
        }
        let (incoming, from_peers) = mpsc::sync_channel(FRAMES_PER_POLL);
        let io = Arc::new(IoCounters::default());
        let dead = std_duration(cfg.dead_after).max(std::time::Duration::from_millis(10));
        let name = cfg.listen.to_string();
        let (key, keys) = (cfg.key, [cfg.key, cfg.accept_also]);
        let mut peers = Vec::with_capacity(cfg.peers.len());
        for (&addr, origin) in cfg.peers.iter().zip(1u8..) {
            let (to_peer, outgoing) = mpsc::sync_channel(QUEUE_FRAMES);
            let flags = Arc::new(PeerFlags::default());
            let (f, io, name) = (flags.clone(), io.clone(), name.clone());
            std::thread::Builder::new()
                .name(format!("sync-out-{origin}"))
                .spawn(move || send_loop(addr, &name, key, &outgoing, &f, &io, dead))?;
            peers.push(Peer {
                addr,
                origin,
                to_peer,
                flags,
                walk: None,
                receiving_resync: false,
                resynced: false,
            });
        }
        let known: Arc<[(SocketAddr, Arc<PeerFlags>)]> =
            peers.iter().map(|p| (p.addr, p.flags.clone())).collect();
        {
            let io = io.clone();
            std::thread::Builder::new()
                .name("sync-accept".into())
                .spawn(move || accept_loop(&listener, &known, keys, &incoming, &io, dead))?;
        }
        Ok(Self {
            cfg,
            peers,
            from_peers,
            io,
            started: None,
            ready: false,
            next_send: Instant::ZERO,
            next_sweep: Instant::ZERO,
            counters: SyncCounters::default(),
        })
    }

    /// The link's counts so far.
    pub fn counters(&self) -> &SyncCounters {
        &self.counters
    }

    /// How many peers this node's connections are up to.
    pub fn connected(&self) -> usize {
        self.peers
            .iter()
            .filter(|p| p.flags.connected.load(Ordering::Acquire))
            .count()
    }

    /// Whether peer `i` (its place in [`SyncConfig::peers`], from 0) is alive as far as
    /// this node can tell: its connection to this node is open and has not been silent
    /// for [`SyncConfig::dead_after`].
    pub fn peer_alive(&self, i: usize) -> bool {
        self.peers
            .get(i)
            .is_some_and(|p| p.flags.inbound.load(Ordering::Acquire))
    }

    /// Whether this node holds what its peers would give it, so that it may take traffic
    /// (announce its routes): every peer's resync finished, or, twice
    /// [`SyncConfig::dead_after`] after the first [`Self::poll`], that of every peer
    /// connected to it by then (peers that are down, or a first node up, are not waited
    /// for). Once true, it stays true.
    pub fn ready(&mut self, now: Instant) -> bool {
        if !self.ready {
            let grace = Duration::from_nanos(self.cfg.dead_after.as_nanos().saturating_mul(2));
            let waited = self.started.is_some_and(|s| now >= s + grace);
            self.ready = self
                .peers
                .iter()
                .all(|p| p.resynced || (waited && !p.flags.inbound.load(Ordering::Acquire)));
        }
        self.ready
    }

    /// Applies what the peers sent, then (every [`SyncConfig::every`]) sends this node's
    /// changes: call it from the packet loop between batches. Bounded work per call.
    pub fn poll<S: SessionService>(&mut self, now: Instant, ct: &mut Conntrack<S>) {
        self.started.get_or_insert(now);
        for _ in 0..FRAMES_PER_POLL {
            match self.from_peers.try_recv() {
                Ok(Inbound::Frame(origin, kind, bytes)) => {
                    self.receive(now, ct, origin, kind, &bytes);
                }
                Ok(Inbound::Down(origin)) => self.peer_failed(ct, origin),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if now < self.next_send {
            return;
        }
        self.next_send = now + self.cfg.every;
        // Deltas go to the peers connected now; one that connects later gets a full resync,
        // so with nobody to send to the journal is drained and dropped (it never fills).
        let lost = self.send_deltas(now, ct);
        let sweep = now >= self.next_sweep;
        if sweep {
            self.next_sweep = now + self.cfg.sweep;
        }
        for i in 0..self.peers.len() {
            let Some(p) = self.peers.get_mut(i) else {
                break;
            };
            if !p.flags.connected.load(Ordering::Acquire) {
                p.walk = None;
                continue;
            }
            let resync = p.flags.need_resync.swap(false, Ordering::AcqRel) || lost;
            if resync {
                self.start_walk(i, true);
            } else if sweep && p.walk.is_none() {
                self.start_walk(i, false);
            }
            self.continue_walk(now, ct, i);
        }
    }

    fn start_walk(&mut self, i: usize, resync: bool) {
        if resync {
            self.counters.resyncs += 1;
            self.send(i, frame(BEGIN, &[]));
        } else {
            self.counters.sweeps += 1;
        }
        if let Some(p) = self.peers.get_mut(i) {
            p.walk = Some(Walk {
                resync,
                family: Family::V4,
                from: 0,
            });
        }
    }

    /// Drains the journals into delta frames for every connected peer; true when events
    /// were lost (resyncs are due).
    fn send_deltas<S: SessionService>(&mut self, now: Instant, ct: &mut Conntrack<S>) -> bool {
        let mut lost = false;
        for family in [Family::V4, Family::V6] {
            for _ in 0..CHUNKS_PER_POLL {
                let mut buf = frame(DELTA, &[]);
                let Ok(p) = ct.export_changes(family, now, PER_CHUNK, &mut buf) else {
                    return false;
                };
                self.counters.journal_lost += p.lost;
                lost |= p.lost > 0;
                if p.ended + p.changed > 0 {
                    fix_length(&mut buf);
                    for i in 0..self.peers.len() {
                        if self
                            .peers
                            .get(i)
                            .is_some_and(|p| p.flags.connected.load(Ordering::Acquire))
                        {
                            self.send(i, buf.clone());
                        }
                    }
                }
                if !p.pending {
                    break;
                }
            }
        }
        lost
    }

    /// Sends up to [`CHUNKS_PER_POLL`] export chunks of the walk under way toward peer `i`,
    /// while its sender's queue is less than half full.
    fn continue_walk<S: SessionService>(&mut self, now: Instant, ct: &mut Conntrack<S>, i: usize) {
        for _ in 0..CHUNKS_PER_POLL {
            let Some(w) = self
                .peers
                .get(i)
                .filter(|p| p.flags.queued.load(Ordering::Acquire) < QUEUE_FRAMES / 2)
                .and_then(|p| p.walk)
            else {
                return;
            };
            let mut buf = frame(EXPORT, &[]);
            let next = match ct.export(w.family, now, w.from, PER_CHUNK, &mut buf) {
                Err(_) => None,
                Ok(p) => {
                    if p.records > 0 {
                        fix_length(&mut buf);
                        self.send(i, buf);
                    }
                    match (p.next, w.family) {
                        (Some(from), _) => Some(Walk { from, ..w }),
                        (None, Family::V4) => Some(Walk {
                            family: Family::V6,
                            from: 0,
                            ..w
                        }),
                        (None, Family::V6) => {
                            if w.resync {
                                self.send(i, frame(END, &[]));
                            }
                            None
                        }
                    }
                }
            };
            // A failed send ended the walk (a resync follows): keep it ended.
            if let Some(p) = self.peers.get_mut(i)
                && p.walk.is_some()
            {
                p.walk = next;
            }
        }
    }

    /// Hands a frame to peer `i`'s sender thread.
    fn send(&mut self, i: usize, f: Vec<u8>) {
        let Some(p) = self.peers.get_mut(i) else {
            return;
        };
        let n = f.len() as u64;
        // Counted before the hand-over: the thread takes one off once the frame is written.
        p.flags.queued.fetch_add(1, Ordering::AcqRel);
        match p.to_peer.try_send(f) {
            Ok(()) => {
                self.counters.sent_frames += 1;
                self.counters.sent_bytes += n;
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                p.flags.queued.fetch_sub(1, Ordering::AcqRel);
                // The peer's copy is now incomplete: it gets everything again.
                self.counters.send_dropped += 1;
                p.flags.need_resync.store(true, Ordering::Release);
                p.walk = None;
            }
        }
    }

    fn receive<S: SessionService>(
        &mut self,
        now: Instant,
        ct: &mut Conntrack<S>,
        origin: u8,
        kind: u8,
        bytes: &[u8],
    ) {
        self.counters.received_frames += 1;
        let of = |s: &nf_core::conntrack::SessionInfo<S::Value>| s.origin == origin;
        let Some(p) = self.peers.iter_mut().find(|p| p.origin == origin) else {
            return;
        };
        match kind {
            BEGIN => {
                ct.begin_resync(of);
                p.receiving_resync = true;
            }
            END => {
                // An end without its begin (the link broke in between) ends nothing.
                if core::mem::take(&mut p.receiving_resync) {
                    p.resynced = true;
                    let removed = ct.end_resync_where(now, of);
                    self.counters.resync_removed += removed as u64;
                    crate::say!(
                        "sync: resync from {} done: {} sessions here, {removed} stale copies removed",
                        p.addr,
                        ct.v4().len() + ct.v6().len()
                    );
                }
            }
            DELTA | EXPORT => match ct.apply_from(now, origin, bytes) {
                Ok(r) => {
                    let c = &mut self.counters;
                    c.created += r.created as u64;
                    c.refreshed += r.refreshed as u64;
                    c.replaced += r.replaced as u64;
                    c.ended += r.ended as u64;
                    c.skipped += (r.skipped + r.refused) as u64;
                }
                Err(_) => self.counters.apply_errors += 1,
            },
            _ => self.counters.apply_errors += 1,
        }
    }

    /// Peer `origin` is gone: its sessions are this node's as their packets come here.
    fn peer_failed<S: SessionService>(&mut self, ct: &mut Conntrack<S>, origin: u8) {
        let Some(p) = self.peers.iter_mut().find(|p| p.origin == origin) else {
            return;
        };
        self.counters.peer_down += 1;
        p.receiving_resync = false;
        let n = ct.orphan_replicas(|s| s.origin == origin);
        self.counters.orphaned += n as u64;
        crate::say!(
            "sync: peer {} down: orphaned {n} of its sessions (each ours at its first packet here)",
            p.addr
        );
    }

    /// Calls `f` with every counter of the link (stage `sync`).
    pub fn visit_counters(&self, f: &mut dyn FnMut(&str, &str, u64)) {
        let c = &self.counters;
        for (name, v) in [
            ("sent_frames", c.sent_frames),
            ("sent_bytes", c.sent_bytes),
            ("send_dropped", c.send_dropped),
            ("resyncs", c.resyncs),
            ("sweeps", c.sweeps),
            ("journal_lost", c.journal_lost),
            ("received_frames", c.received_frames),
            ("created", c.created),
            ("refreshed", c.refreshed),
            ("replaced", c.replaced),
            ("ended", c.ended),
            ("skipped", c.skipped),
            ("apply_errors", c.apply_errors),
            ("resync_removed", c.resync_removed),
            ("peer_down", c.peer_down),
            ("orphaned", c.orphaned),
            ("peers_connected", self.connected() as u64),
        ] {
            f("sync", name, v);
        }
        let io = &self.io;
        crate::visit_atomics(
            "sync",
            &[
                ("connects", &io.connects),
                ("connect_failures", &io.connect_failures),
                ("link_errors", &io.link_errors),
                ("accepts", &io.accepts),
                ("unknown_peers", &io.unknown_peers),
                ("bad_frames", &io.bad_frames),
                ("silent", &io.silent),
                ("auth_failures", &io.auth_failures),
                ("handshakes_refused", &io.handshakes_refused),
            ],
            f,
        );
    }
}

/// Sets the length prefix of a frame built with [`frame`] and a payload appended after.
fn fix_length(f: &mut [u8]) {
    let len = (f.len() - 4) as u32;
    if let Some(l) = f.get_mut(..4) {
        l.copy_from_slice(&len.to_be_bytes());
    }
}

/// Why a connecting end's handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handshake {
    /// A write failed, or the peer closed before its challenge: busy (every handshake slot
    /// taken) or going away (`link_errors`).
    Link,
    /// The peer said nothing in time (`silent`): hung, or without a key and waiting for a
    /// plain hello.
    Silent,
    /// The peer answered with something else, or closed after this node's hello: another
    /// key, or this node not in its peer list (`auth_failures`).
    Refused,
}

/// The longest handshake frame's payload (a hello: nonce, an address as text, tag).
const HANDSHAKE_MAX: usize = 256;

/// Reads the handshake frame the peer owes; `closed` is what the peer closing instead
/// means.
fn handshake_frame(s: &mut TcpStream, closed: Handshake) -> Result<(u8, Vec<u8>), Handshake> {
    read_frame_within(s, HANDSHAKE_MAX).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Handshake::Silent,
        io::ErrorKind::InvalidData => Handshake::Refused,
        _ => closed,
    })
}

/// The connecting end's handshake: with a key, the peer's challenge read, a tagged hello
/// with a fresh nonce written (the connection's tags then follow from it) and the peer's
/// welcome checked; without, a plain hello.
fn say_hello(
    s: &mut TcpStream,
    name: &str,
    key: Option<[u8; 16]>,
) -> Result<Option<FrameMac>, Handshake> {
    let Some(key) = key else {
        return s
            .write_all(&frame(HELLO, name.as_bytes()))
            .map(|()| None)
            .map_err(|_| Handshake::Link);
    };
    // Closed before the challenge: the peer was busy (its handshakes all taken) or going.
    let challenge = match handshake_frame(s, Handshake::Link)? {
        (CHALLENGE, c) => {
            <[u8; NONCE_LEN]>::try_from(c.as_slice()).map_err(|_| Handshake::Refused)?
        }
        _ => return Err(Handshake::Refused),
    };
    let nonce = crate::cli::random_secret();
    let mut mac = FrameMac::new(&key, &challenge, &nonce);
    let mut hello = frame(HELLO, &nonce);
    hello.extend_from_slice(name.as_bytes());
    mac.seal(&mut hello);
    s.write_all(&hello).map_err(|_| Handshake::Link)?;
    // Another key, or not in the peer's list: the peer closes instead.
    match handshake_frame(s, Handshake::Refused)? {
        (WELCOME, w) if w == mac.welcome() => Ok(Some(mac)),
        _ => Err(Handshake::Refused),
    }
}

/// A peer's sender thread: connect, say hello, write what the loop queues (heartbeats
/// between), and on any failure connect again (the loop then starts a full resync).
fn send_loop(
    peer: SocketAddr,
    name: &str,
    key: Option<[u8; 16]>,
    outgoing: &Receiver<Vec<u8>>,
    flags: &PeerFlags,
    io: &IoCounters,
    dead: std::time::Duration,
) {
    let heartbeat = frame(HEARTBEAT, &[]);
    loop {
        let mut s = match connect(name, peer, dead) {
            Ok(s) => s,
            Err(_) => {
                io.connect_failures.fetch_add(1, Ordering::Relaxed);
                // What was queued meanwhile is for a connection that no longer exists.
                loop {
                    match outgoing.try_recv() {
                        Ok(_) => {
                            flags.queued.fetch_sub(1, Ordering::AcqRel);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                }
                std::thread::sleep(dead / 4);
                continue;
            }
        };
        // Best effort: a stream without these options still works.
        let _ = s.set_nodelay(true);
        let _ = s.set_write_timeout(Some(dead));
        let _ = s.set_read_timeout(Some(dead));
        let mut mac = match say_hello(&mut s, name, key) {
            Ok(mac) => mac,
            Err(failed) => {
                let counter = match failed {
                    Handshake::Link => &io.link_errors,
                    Handshake::Silent => &io.silent,
                    Handshake::Refused => &io.auth_failures,
                };
                if counter.fetch_add(1, Ordering::Relaxed) == 0 && failed == Handshake::Refused {
                    crate::say!(
                        "sync: the peer at {peer} refused this node's hello: does it have the same sync key, and this node in its peer list?"
                    );
                }
                std::thread::sleep(dead / 4);
                continue;
            }
        };
        io.connects.fetch_add(1, Ordering::Relaxed);
        crate::say!("sync: connected to the peer at {peer}");
        flags.need_resync.store(true, Ordering::Release);
        flags.connected.store(true, Ordering::Release);
        loop {
            let (mut f, queued) = match outgoing.recv_timeout(dead / 4) {
                Ok(f) => (f, true),
                Err(RecvTimeoutError::Timeout) => (heartbeat.clone(), false),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if let Some(m) = &mut mac {
                m.seal(&mut f);
            }
            let written = s.write_all(&f);
            if queued {
                flags.queued.fetch_sub(1, Ordering::AcqRel);
            }
            if written.is_err() {
                io.link_errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        flags.connected.store(false, Ordering::Release);
        std::thread::sleep(dead / 4);
    }
}

/// A connection to `peer` from the address this node listens on (`listen`, the address its
/// peers know it by: [`Admission`] tells peers from strangers by it), whatever source
/// address the route would pick; from the route's choice when listening on every address
/// (or not on Linux).
fn connect(listen: &str, peer: SocketAddr, dead: std::time::Duration) -> io::Result<TcpStream> {
    #[cfg(target_os = "linux")]
    if let Ok(from) = listen.parse::<SocketAddr>().map(|l| l.ip())
        && !from.is_unspecified()
    {
        return crate::io::connect_from(from, peer, dead);
    }
    let _ = listen;
    TcpStream::connect_timeout(&peer, dead)
}

/// Accepts the peers' connections, each handled by a thread of its own (the handshake,
/// then [`receive_loop`]); at most as many handshakes at once as [`Admission`] lets in, so
/// that nobody holds the accepting thread or starts threads without bound, and strangers
/// cannot take the peers' turns (more are closed at once, counted `handshakes_refused`; a
/// peer's sender tries again).
fn accept_loop(
    listener: &TcpListener,
    known: &Arc<[(SocketAddr, Arc<PeerFlags>)]>,
    keys: [Option<[u8; 16]>; 2],
    incoming: &SyncSender<Inbound>,
    io: &Arc<IoCounters>,
    dead: std::time::Duration,
) {
    let admission = Arc::new(Mutex::new(Admission::new(
        known.iter().map(|(a, _)| a.ip()).collect(),
    )));
    for conn in listener.incoming() {
        let Ok(s) = conn else {
            continue;
        };
        io.accepts.fetch_add(1, Ordering::Relaxed);
        let Ok(from) = s.peer_addr().map(|a| a.ip()) else {
            continue;
        };
        if !lock(&admission).admit(from) {
            io.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (known, tx, counters, a) = (
            known.clone(),
            incoming.clone(),
            io.clone(),
            admission.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("sync-in".into())
            .spawn(move || {
                let peer = accept_peer(s, &known, keys, &counters, dead);
                lock(&a).done(from);
                if let Some((r, mac, origin, generation, flags)) = peer {
                    receive_loop(r, mac, origin, generation, &flags, &tx, &counters);
                }
            });
        if spawned.is_err() {
            lock(&admission).done(from);
            io.link_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The admission's lock (a thread that panicked holding it left nothing half-done: every
/// change is one step).
fn lock(a: &Mutex<Admission>) -> std::sync::MutexGuard<'_, Admission> {
    a.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which accepted connections may handshake now: at most twice as many at once as there
/// are peers (at least 4); a source address that is no peer's at most one at once, and
/// such addresses together at most half; a peer's address at most two (its old
/// connection's and a new one's). A stranger that connects and says nothing, from as many
/// addresses as it has, never keeps the peers from their half.
#[derive(Debug)]
struct Admission {
    peers: Vec<IpAddr>,
    most: usize,
    /// Handshakes under way per source address (at most `most` entries).
    pending: Vec<(IpAddr, usize)>,
    strangers: usize,
}

impl Admission {
    fn new(peers: Vec<IpAddr>) -> Self {
        let most = peers.len().saturating_mul(2).max(4);
        Self {
            peers,
            most,
            pending: Vec::new(),
            strangers: 0,
        }
    }

    /// Takes a turn for a connection from `from`, if there is one.
    fn admit(&mut self, from: IpAddr) -> bool {
        let total: usize = self.pending.iter().map(|(_, n)| n).sum();
        let peer = self.peers.contains(&from);
        let (cap, at) = if peer { (2, 0) } else { (1, self.strangers) };
        let here = self.pending.iter().position(|(a, _)| *a == from);
        let n = here
            .and_then(|i| self.pending.get(i))
            .map_or(0, |(_, n)| *n);
        if total >= self.most || n >= cap || (!peer && at >= self.most / 2) {
            return false;
        }
        match here.and_then(|i| self.pending.get_mut(i)) {
            Some((_, n)) => *n += 1,
            None => self.pending.push((from, 1)),
        }
        self.strangers += usize::from(!peer);
        true
    }

    /// Gives back the turn of a connection from `from`.
    fn done(&mut self, from: IpAddr) {
        if let Some(i) = self.pending.iter().position(|(a, _)| *a == from) {
            if let Some((_, n)) = self.pending.get_mut(i) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.pending.swap_remove(i);
                }
            }
            if !self.peers.contains(&from) {
                self.strangers = self.strangers.saturating_sub(1);
            }
        }
    }
}

/// An accepted connection's reader, tags, origin, generation and peer.
type Accepted = (
    BufReader<TcpStream>,
    Option<FrameMac>,
    u8,
    u64,
    Arc<PeerFlags>,
);

/// The accepting end's handshake: with keys (the link's, and maybe one more accepted), a
/// challenge out, a hello tagged under either in and a welcome under the same out;
/// without, a plain hello in. The hello must name one of `known`, whose connection this
/// then is (its latest).
fn accept_peer(
    mut s: TcpStream,
    known: &[(SocketAddr, Arc<PeerFlags>)],
    keys: [Option<[u8; 16]>; 2],
    io: &IoCounters,
    dead: std::time::Duration,
) -> Option<Accepted> {
    if s.set_read_timeout(Some(dead)).is_err() || s.set_write_timeout(Some(dead)).is_err() {
        return None;
    }
    let challenge = crate::cli::random_secret();
    let [key, _] = keys;
    if key.is_some() && s.write_all(&frame(CHALLENGE, &challenge)).is_err() {
        io.link_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let mut r = BufReader::with_capacity(1 << 16, s);
    // The hello names the peer (tagged, after a nonce, on a keyed link); a stranger is
    // turned away.
    let (hello, mac) = match (read_frame_within(&mut r, HANDSHAKE_MAX), key) {
        (Ok((HELLO, hello)), None) => (Some(hello), None),
        (Ok((HELLO, hello)), Some(_)) => {
            let nonce = hello.first_chunk::<NONCE_LEN>().copied();
            // The first key whose tags open the hello is the connection's.
            let opened = keys.iter().flatten().find_map(|key| {
                let mut mac = FrameMac::new(key, &challenge, nonce.as_ref()?);
                Some((mac.open(HELLO, hello.clone())?, mac))
            });
            let Some((opened, mac)) = opened else {
                io.auth_failures.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            (opened.get(NONCE_LEN..).map(<[u8]>::to_vec), Some(mac))
        }
        _ => (None, None),
    };
    let origin = hello.and_then(|name| {
        let a = std::str::from_utf8(&name)
            .ok()?
            .parse::<SocketAddr>()
            .ok()?;
        known.iter().position(|(k, _)| *k == a)
    });
    let Some((origin, flags)) = origin.and_then(|i| {
        let o = u8::try_from(i + 1).ok()?;
        Some((o, known.get(i)?.1.clone()))
    }) else {
        io.unknown_peers.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    if let Some(m) = &mac
        && r.get_mut()
            .write_all(&frame(WELCOME, &m.welcome()))
            .is_err()
    {
        io.link_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let generation = flags.generation.fetch_add(1, Ordering::AcqRel) + 1;
    flags.inbound.store(true, Ordering::Release);
    Some((r, mac, origin, generation, flags))
}

/// One peer connection's reader: its frames to the loop until it closes, fails or falls
/// silent; then, unless a newer connection from the peer replaced it, the peer's failure.
fn receive_loop(
    mut r: BufReader<TcpStream>,
    mut mac: Option<FrameMac>,
    origin: u8,
    generation: u64,
    flags: &PeerFlags,
    incoming: &SyncSender<Inbound>,
    io: &IoCounters,
) {
    loop {
        let read = read_frame(&mut r).and_then(|(kind, payload)| match &mut mac {
            None => Ok((kind, payload)),
            Some(m) => m
                .open(kind, payload)
                .map(|p| (kind, p))
                .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "frame tag")),
        });
        match read {
            Ok((HEARTBEAT, _)) => {}
            Ok((kind, payload)) => {
                if incoming
                    .send(Inbound::Frame(origin, kind, payload))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let counter = match e.kind() {
                    io::ErrorKind::InvalidData => &io.bad_frames,
                    io::ErrorKind::PermissionDenied => &io.auth_failures,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => &io.silent,
                    _ => &io.link_errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    if flags.generation.load(Ordering::Acquire) == generation {
        flags.inbound.store(false, Ordering::Release);
        let _ = incoming.send(Inbound::Down(origin));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any order of connections and of turns given back (also for addresses that hold
        /// none): never more turns than allowed in all, per address, or for strangers, and
        /// the counts match what is held.
        #[test]
        fn turns_stay_within_their_bounds(
            peers in 0usize..4,
            ops in proptest::collection::vec((proptest::bool::ANY, 1u8..8), 0..200),
        ) {
            let ip = |i: u8| IpAddr::from([127, 0, 0, i]);
            let mut a = Admission::new((1..=peers as u8).map(ip).collect());
            let mut held: Vec<u8> = Vec::new();
            for (admit, i) in ops {
                if admit {
                    if a.admit(ip(i)) {
                        held.push(i);
                    }
                } else {
                    a.done(ip(i));
                    if let Some(k) = held.iter().position(|h| *h == i) {
                        held.swap_remove(k);
                    }
                }
                let peer = |i: u8| usize::from(i) <= peers;
                let strangers = held.iter().filter(|i| !peer(**i)).count();
                proptest::prop_assert!(held.len() <= a.most);
                proptest::prop_assert!(strangers <= a.most / 2);
                proptest::prop_assert_eq!(strangers, a.strangers);
                for i in 1u8..8 {
                    let n = held.iter().filter(|h| **h == i).count();
                    let cap = if peer(i) { 2 } else { 1 };
                    proptest::prop_assert!(n <= cap);
                    let counted = a.pending.iter().find(|(x, _)| *x == ip(i)).map_or(0, |(_, n)| *n);
                    proptest::prop_assert_eq!(n, counted);
                }
            }
        }
    }

    #[test]
    fn strangers_get_one_turn_each_and_half_the_turns_at_most() {
        let ip = |i: u8| IpAddr::from([127, 0, 0, i]);
        let mut a = Admission::new(vec![ip(1), ip(2)]);
        // Four turns in all (two peers); a stranger one at once, strangers two.
        assert!(a.admit(ip(9)));
        assert!(!a.admit(ip(9)), "one per stranger");
        assert!(a.admit(ip(8)));
        assert!(!a.admit(ip(7)), "strangers hold half already");
        // The peers' half is theirs: two each at most, four in all.
        assert!(a.admit(ip(1)) && a.admit(ip(1)));
        assert!(!a.admit(ip(1)), "two per peer");
        assert!(!a.admit(ip(2)), "all four taken");
        a.done(ip(9));
        assert!(a.admit(ip(2)), "a turn given back");
        assert!(!a.admit(ip(7)), "all four taken again");
        a.done(ip(1));
        a.done(ip(8));
        assert!(a.admit(ip(7)) && a.admit(ip(1)));
        // Turns given back return everything.
        for i in [1, 1, 2, 7] {
            a.done(ip(i));
        }
        assert!(a.pending.is_empty() && a.strangers == 0, "{a:?}");
        a.done(ip(5));
        assert!(a.pending.is_empty() && a.strangers == 0);
    }

    #[test]
    fn frames_round_trip_and_bad_lengths_are_refused() {
        let mut wire = frame(DELTA, b"chunk");
        wire.extend(frame(HEARTBEAT, &[]));
        let mut r = &wire[..];
        assert_eq!(read_frame(&mut r).unwrap(), (DELTA, b"chunk".to_vec()));
        assert_eq!(read_frame(&mut r).unwrap(), (HEARTBEAT, Vec::new()));
        assert_eq!(
            read_frame(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        for len in [0u32, MAX_FRAME as u32 + 2, u32::MAX] {
            let mut bad = len.to_be_bytes().to_vec();
            bad.extend([DELTA; 8]);
            let e = read_frame(&mut &bad[..]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{len}");
        }
    }

    /// Seals `frames` in order on one end, returns what the other end's reader gets.
    fn sealed(mac: &mut FrameMac, frames: &[(u8, &[u8])]) -> Vec<(u8, Vec<u8>)> {
        frames
            .iter()
            .map(|&(kind, payload)| {
                let mut f = frame(kind, payload);
                mac.seal(&mut f);
                read_frame(&mut &f[..]).unwrap()
            })
            .collect()
    }

    #[test]
    fn tagged_frames_open_in_order_and_nothing_else_does() {
        let (key, challenge, nonce) = ([7u8; 16], [1u8; 16], [2u8; 16]);
        let frames: [(u8, &[u8]); 3] = [
            (HELLO, b"10.0.0.1:7600"),
            (HEARTBEAT, b""),
            (DELTA, b"chunk"),
        ];
        let wire = sealed(&mut FrameMac::new(&key, &challenge, &nonce), &frames);
        assert!(wire.iter().all(|(_, p)| p.len() >= TAG_LEN));

        // In order, under the same key, challenge and nonce: the payloads come back.
        let mut rx = FrameMac::new(&key, &challenge, &nonce);
        for ((kind, payload), (k, p)) in frames.iter().zip(&wire) {
            assert_eq!(rx.open(*k, p.clone()).as_deref(), Some(*payload), "{kind}");
        }
        // Replayed: the sequence has moved on.
        let (k, p) = wire[2].clone();
        assert_eq!(rx.open(k, p), None);

        let fresh = || FrameMac::new(&key, &challenge, &nonce);
        // Reordered, or one missing before: refused.
        assert_eq!(fresh().open(wire[1].0, wire[1].1.clone()), None);
        // Another key, challenge (a recorded connection replayed) or nonce: refused.
        for mut other in [
            FrameMac::new(&[8; 16], &challenge, &nonce),
            FrameMac::new(&key, &[3; 16], &nonce),
            FrameMac::new(&key, &challenge, &[4; 16]),
        ] {
            assert_eq!(other.open(wire[0].0, wire[0].1.clone()), None);
        }
        // Any flipped bit, in the payload, the tag or the kind: refused.
        let (k, p) = &wire[2];
        for bit in 0..p.len() * 8 {
            let mut bad = p.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut rx = fresh();
            rx.seq = 2;
            assert_eq!(rx.open(*k, bad), None, "bit {bit}");
        }
        let mut rx = fresh();
        rx.seq = 2;
        assert_eq!(rx.open(EXPORT, p.clone()), None);
        // Shorter than a tag (an untagged heartbeat): refused, nothing panics.
        for len in 0..TAG_LEN {
            assert_eq!(fresh().open(HEARTBEAT, vec![0; len]), None);
        }
        // The welcome proves the fleet key for this connection alone.
        assert_ne!(
            fresh().welcome(),
            FrameMac::new(&[8; 16], &challenge, &nonce).welcome()
        );
        assert_ne!(
            fresh().welcome(),
            FrameMac::new(&key, &[3; 16], &nonce).welcome()
        );
        // The connection key stays out of `Debug`.
        assert!(!format!("{:?}", fresh()).contains("key"));
    }
}
