//! Session sync between two nodes over TCP: each node keeps a replica of the other's
//! sessions, so that when one fails (or an ECMP router in front moves its flows) the other
//! already holds them and carries the connections on.
//!
//! ```text
//!  node A: conntrack journal ─► export_changes ─► [sync-out thread] ══TCP══► [sync-in thread] ─► apply ─► node B
//!  node A ◄─ apply ◄─ [sync-in thread] ◄══TCP══ [sync-out thread] ◄─ export_changes ◄─ journal: node B
//! ```
//!
//! The packet loop owns the connection-tracking stage and calls [`SyncLink::poll`] between
//! batches: it applies what the peer sent, then, every [`SyncConfig::every`], drains its
//! own change journal ([`Conntrack::export_changes`]) into delta chunks for the peer. Two
//! threads do the blocking socket work, so the packet loop never waits on the network: one
//! connects to the peer and writes the frames the loop hands it (a heartbeat when there is
//! nothing to say), one accepts the peer's connection and reads its frames.
//!
//! - **Full resync.** On every new connection, and whenever the journal lost events (it was
//!   full), the sender walks its whole table ([`Conntrack::export`], a replica's copies left
//!   out) between a *begin* and an *end* frame, a bounded number of chunks per poll, deltas
//!   still flowing beside it; the receiver marks its copies of the peer's sessions
//!   unconfirmed at *begin* and removes those still unconfirmed at *end*
//!   ([`Conntrack::begin_resync`], [`Conntrack::end_resync`]).
//! - **Sweep.** Every [`SyncConfig::sweep`] the same walk without *begin* and *end*: it
//!   refreshes the remaining lifetimes of long-lived sessions on the replica (a refreshed
//!   deadline is no journal event).
//! - **Peer failure.** A peer that closes the connection, sends a frame that does not
//!   parse, or says nothing (not even a heartbeat) for [`SyncConfig::dead_after`] is taken
//!   as failed: its sessions become this node's own
//!   ([`Conntrack::take_over_replicas`]), journaled and replicated onward when a peer
//!   connects again. Until then a copy already serves the packets that reach this node.
//! - **Bounded.** Frames are at most [`MAX_FRAME`] bytes (a longer length prefix ends the
//!   connection, counted `bad_frames`); the loop hands the sender at most
//!   [`QUEUE_FRAMES`] frames (more: dropped, counted `send_dropped`, and a full resync
//!   follows), applies at most [`FRAMES_PER_POLL`] frames and writes at most
//!   [`CHUNKS_PER_POLL`] chunks per poll.
//!
//! On the wire each frame is a 4-byte big-endian length (of what follows), a kind byte and
//! the payload: a delta chunk ([`Conntrack::export_changes`]), an export chunk
//! ([`Conntrack::export`]), or nothing (*begin*, *end*, heartbeat). Chunks carry their own
//! checksum; the link itself is not authenticated: run it on a management network.
//!
//! Two nodes each take the other's sessions over when it fails; with more than two, which
//! node carries a failed node's flows is for the ECMP layer in front to decide (each copy
//! would need its origin), which this link does not yet do.

use nf_core::conntrack::{Conntrack, SessionService};
use nf_core::{Duration, Family, Instant};
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};

/// The longest frame either side sends or accepts (length prefix excluded).
pub const MAX_FRAME: usize = 4 << 20;
/// Frames the packet loop may queue for the sender thread.
pub const QUEUE_FRAMES: usize = 256;
/// Frames from the peer applied per [`SyncLink::poll`] at most.
pub const FRAMES_PER_POLL: usize = 64;
/// Chunks written per [`SyncLink::poll`] at most (deltas and a full walk's export chunks
/// each).
pub const CHUNKS_PER_POLL: usize = 16;
/// Events per delta chunk and sessions per export chunk.
const PER_CHUNK: usize = 1024;

/// Frame kinds.
const DELTA: u8 = 1;
const BEGIN: u8 = 2;
const EXPORT: u8 = 3;
const END: u8 = 4;
const HEARTBEAT: u8 = 5;

/// Where the link listens and connects, and its timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// The address the peer connects to (this node's replica side).
    pub listen: SocketAddr,
    /// The peer's listening address (where this node's changes go).
    pub peer: SocketAddr,
    /// How often the journal is drained (default 10 ms).
    pub every: Duration,
    /// How often the whole table is swept to the peer (default 10 s).
    pub sweep: Duration,
    /// Silence after which the peer is taken as failed (default 1 s; heartbeats go every
    /// quarter of it).
    pub dead_after: Duration,
}

impl SyncConfig {
    /// A link listening on `listen` and sending to `peer`, default timing.
    pub fn new(listen: SocketAddr, peer: SocketAddr) -> Self {
        Self {
            listen,
            peer,
            every: Duration::from_millis(10),
            sweep: Duration::from_millis(10_000),
            dead_after: Duration::from_millis(1_000),
        }
    }
}

/// The link's counts (reported as stage `sync`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Frames handed to the sender thread.
    pub sent_frames: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Frames dropped because the sender's queue was full (a full resync follows).
    pub send_dropped: u64,
    /// Full resyncs started toward the peer.
    pub resyncs: u64,
    /// Sweeps started toward the peer.
    pub sweeps: u64,
    /// Journal events lost (the journal was full; a full resync follows).
    pub journal_lost: u64,
    /// Frames received from the peer and applied.
    pub received_frames: u64,
    /// Sessions created by the peer's chunks.
    pub created: u64,
    /// Sessions refreshed by them.
    pub refreshed: u64,
    /// Sessions replaced by them (see `ApplyReport::replaced`).
    pub replaced: u64,
    /// Ended sessions removed.
    pub ended: u64,
    /// Records not created (table or zone full) or refused by a service.
    pub skipped: u64,
    /// Chunks that did not apply (damaged or incompatible: nothing changed).
    pub apply_errors: u64,
    /// Copies a finished resync removed (the peer no longer had them).
    pub resync_removed: u64,
    /// Times the peer was taken as failed.
    pub peer_down: u64,
    /// Sessions taken over from a failed peer.
    pub taken_over: u64,
}

/// What the socket threads count (shared with them).
#[derive(Debug, Default)]
struct IoCounters {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    link_errors: AtomicU64,
    accepts: AtomicU64,
    bad_frames: AtomicU64,
    silent: AtomicU64,
}

/// What the receiving thread hands the packet loop.
enum Inbound {
    Frame(u8, Vec<u8>),
    /// The peer's connection ended (closed, failed, silent or unparsable).
    Down,
}

/// A full walk of the table toward the peer under way.
#[derive(Clone, Copy, Debug)]
struct Walk {
    /// A resync (between *begin* and *end*) rather than a sweep.
    resync: bool,
    family: Family,
    from: u32,
}

/// One node's end of the sync link; see the [module](self).
pub struct SyncLink {
    cfg: SyncConfig,
    to_peer: SyncSender<Vec<u8>>,
    from_peer: Receiver<Inbound>,
    connected: Arc<AtomicBool>,
    need_resync: Arc<AtomicBool>,
    /// The peer's connection to this node is open.
    inbound: Arc<AtomicBool>,
    io: Arc<IoCounters>,
    /// The first poll.
    started: Option<Instant>,
    /// Latched by [`Self::ready`].
    ready: bool,
    next_send: Instant,
    next_sweep: Instant,
    walk: Option<Walk>,
    /// A resync from the peer is under way (its *begin* arrived, its *end* not yet).
    receiving_resync: bool,
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
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME + 1 {
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
    /// Binds the listening socket and starts the two socket threads.
    ///
    /// # Errors
    /// The listening address cannot be bound, or a thread cannot start.
    pub fn start(cfg: SyncConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(cfg.listen)?;
        let (to_peer, outgoing) = mpsc::sync_channel(QUEUE_FRAMES);
        let (incoming, from_peer) = mpsc::sync_channel(FRAMES_PER_POLL);
        let connected = Arc::new(AtomicBool::new(false));
        let need_resync = Arc::new(AtomicBool::new(false));
        let inbound = Arc::new(AtomicBool::new(false));
        let io = Arc::new(IoCounters::default());
        let dead = std_duration(cfg.dead_after).max(std::time::Duration::from_millis(10));
        {
            let (connected, need_resync, io) = (connected.clone(), need_resync.clone(), io.clone());
            let peer = cfg.peer;
            std::thread::Builder::new()
                .name("sync-out".into())
                .spawn(move || send_loop(peer, &outgoing, &connected, &need_resync, &io, dead))?;
        }
        {
            let (io, inbound) = (io.clone(), inbound.clone());
            std::thread::Builder::new()
                .name("sync-in".into())
                .spawn(move || receive_loop(&listener, &incoming, &inbound, &io, dead))?;
        }
        Ok(Self {
            cfg,
            to_peer,
            from_peer,
            connected,
            need_resync,
            inbound,
            io,
            started: None,
            ready: false,
            next_send: Instant::ZERO,
            next_sweep: Instant::ZERO,
            walk: None,
            receiving_resync: false,
            counters: SyncCounters::default(),
        })
    }

    /// The link's counts so far.
    pub fn counters(&self) -> &SyncCounters {
        &self.counters
    }

    /// Whether the connection toward the peer is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether this node holds what its peer would give it, so that it may take traffic
    /// (announce its routes): a resync from the peer finished, or no peer connected within
    /// twice [`SyncConfig::dead_after`] of the first [`Self::poll`] (the first node up, or a
    /// peer that is down). Once true, it stays true.
    pub fn ready(&mut self, now: Instant) -> bool {
        if !self.ready {
            let grace = Duration::from_nanos(self.cfg.dead_after.as_nanos().saturating_mul(2));
            let alone = !self.inbound.load(Ordering::Acquire)
                && self.started.is_some_and(|s| now >= s + grace);
            self.ready = alone;
        }
        self.ready
    }

    /// Applies what the peer sent, then (every [`SyncConfig::every`]) sends this node's
    /// changes: call it from the packet loop between batches. Bounded work per call.
    pub fn poll<S: SessionService>(&mut self, now: Instant, ct: &mut Conntrack<S>) {
        self.started.get_or_insert(now);
        for _ in 0..FRAMES_PER_POLL {
            match self.from_peer.try_recv() {
                Ok(Inbound::Frame(kind, bytes)) => self.receive(now, ct, kind, &bytes),
                Ok(Inbound::Down) => self.peer_failed(ct),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if now < self.next_send {
            return;
        }
        self.next_send = now + self.cfg.every;
        if !self.connected() {
            // Nobody to send to: the journal is drained and dropped (a full resync follows
            // the next connection), so that it never fills.
            self.walk = None;
            let mut scratch = Vec::new();
            for family in [Family::V4, Family::V6] {
                for _ in 0..CHUNKS_PER_POLL {
                    scratch.clear();
                    match ct.export_changes(family, now, PER_CHUNK, &mut scratch) {
                        Ok(p) if p.pending => continue,
                        _ => break,
                    }
                }
            }
            return;
        }
        if self.need_resync.swap(false, Ordering::AcqRel) {
            self.start_walk(true);
        }
        if self.send_deltas(now, ct) {
            self.start_walk(true);
        }
        if self.walk.is_none() && now >= self.next_sweep {
            self.next_sweep = now + self.cfg.sweep;
            self.start_walk(false);
        }
        self.continue_walk(now, ct);
    }

    fn start_walk(&mut self, resync: bool) {
        if resync {
            self.counters.resyncs += 1;
            self.send(frame(BEGIN, &[]));
        } else {
            self.counters.sweeps += 1;
        }
        self.walk = Some(Walk {
            resync,
            family: Family::V4,
            from: 0,
        });
    }

    /// Drains the journals into delta frames; true when events were lost (a resync is due).
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
                    self.send_framed(buf);
                }
                if !p.pending {
                    break;
                }
            }
        }
        lost
    }

    /// Sends up to [`CHUNKS_PER_POLL`] export chunks of the walk under way.
    fn continue_walk<S: SessionService>(&mut self, now: Instant, ct: &mut Conntrack<S>) {
        for _ in 0..CHUNKS_PER_POLL {
            let Some(w) = self.walk else {
                return;
            };
            let mut buf = frame(EXPORT, &[]);
            let Ok(p) = ct.export(w.family, now, w.from, PER_CHUNK, &mut buf) else {
                self.walk = None;
                return;
            };
            if p.records > 0 {
                self.send_framed(buf);
            }
            self.walk = match (p.next, w.family) {
                (Some(from), _) => Some(Walk { from, ..w }),
                (None, Family::V4) => Some(Walk {
                    family: Family::V6,
                    from: 0,
                    ..w
                }),
                (None, Family::V6) => {
                    if w.resync {
                        self.send(frame(END, &[]));
                    }
                    None
                }
            };
        }
    }

    /// Hands a frame whose length prefix is still to be fixed to the sender thread.
    fn send_framed(&mut self, mut f: Vec<u8>) {
        let len = (f.len() - 4) as u32;
        if let Some(l) = f.get_mut(..4) {
            l.copy_from_slice(&len.to_be_bytes());
        }
        self.send(f);
    }

    fn send(&mut self, f: Vec<u8>) {
        let n = f.len() as u64;
        match self.to_peer.try_send(f) {
            Ok(()) => {
                self.counters.sent_frames += 1;
                self.counters.sent_bytes += n;
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                // The peer's copy is now incomplete: it gets everything again.
                self.counters.send_dropped += 1;
                self.need_resync.store(true, Ordering::Release);
                self.walk = None;
            }
        }
    }

    fn receive<S: SessionService>(
        &mut self,
        now: Instant,
        ct: &mut Conntrack<S>,
        kind: u8,
        bytes: &[u8],
    ) {
        self.counters.received_frames += 1;
        match kind {
            BEGIN => {
                ct.begin_resync(|_| true);
                self.receiving_resync = true;
            }
            END => {
                // An end without its begin (the link broke in between) ends nothing.
                if core::mem::take(&mut self.receiving_resync) {
                    self.ready = true;
                    let removed = ct.end_resync(now);
                    self.counters.resync_removed += removed as u64;
                    crate::say!(
                        "sync: resync from the peer done: {} sessions here, {removed} stale copies removed",
                        ct.v4().len() + ct.v6().len()
                    );
                }
            }
            DELTA | EXPORT => match ct.apply(now, bytes) {
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

    /// The peer is gone: its sessions are this node's now.
    fn peer_failed<S: SessionService>(&mut self, ct: &mut Conntrack<S>) {
        self.counters.peer_down += 1;
        self.receiving_resync = false;
        let n = ct.take_over_replicas(|_| true);
        self.counters.taken_over += n as u64;
        crate::say!("sync: peer down: took over {n} of its sessions");
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
            ("taken_over", c.taken_over),
        ] {
            f("sync", name, v);
        }
        let io = &self.io;
        for (name, v) in [
            ("connects", &io.connects),
            ("connect_failures", &io.connect_failures),
            ("link_errors", &io.link_errors),
            ("accepts", &io.accepts),
            ("bad_frames", &io.bad_frames),
            ("silent", &io.silent),
        ] {
            f("sync", name, v.load(Ordering::Relaxed));
        }
    }
}

/// The sender thread: connect, write what the loop queues (heartbeats between), and on any
/// failure connect again (the loop then starts a full resync).
fn send_loop(
    peer: SocketAddr,
    outgoing: &Receiver<Vec<u8>>,
    connected: &AtomicBool,
    need_resync: &AtomicBool,
    io: &IoCounters,
    dead: std::time::Duration,
) {
    let heartbeat = frame(HEARTBEAT, &[]);
    loop {
        let mut s = match TcpStream::connect_timeout(&peer, dead) {
            Ok(s) => s,
            Err(_) => {
                io.connect_failures.fetch_add(1, Ordering::Relaxed);
                // What was queued meanwhile is for a connection that no longer exists.
                loop {
                    match outgoing.try_recv() {
                        Ok(_) => {}
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
        io.connects.fetch_add(1, Ordering::Relaxed);
        crate::say!("sync: connected to the peer at {peer}");
        need_resync.store(true, Ordering::Release);
        connected.store(true, Ordering::Release);
        loop {
            let f = match outgoing.recv_timeout(dead / 4) {
                Ok(f) => f,
                Err(RecvTimeoutError::Timeout) => heartbeat.clone(),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if s.write_all(&f).is_err() {
                io.link_errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        connected.store(false, Ordering::Release);
        std::thread::sleep(dead / 4);
    }
}

/// The receiving thread: accept the peer, read its frames until it closes, fails or falls
/// silent, tell the loop it is down, accept again.
fn receive_loop(
    listener: &TcpListener,
    incoming: &SyncSender<Inbound>,
    inbound: &AtomicBool,
    io: &IoCounters,
    dead: std::time::Duration,
) {
    for conn in listener.incoming() {
        let Ok(s) = conn else {
            continue;
        };
        if s.set_read_timeout(Some(dead)).is_err() {
            continue;
        }
        io.accepts.fetch_add(1, Ordering::Relaxed);
        inbound.store(true, Ordering::Release);
        let mut r = BufReader::with_capacity(1 << 16, s);
        loop {
            match read_frame(&mut r) {
                Ok((HEARTBEAT, _)) => {}
                Ok((kind, payload)) => {
                    if incoming.send(Inbound::Frame(kind, payload)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let counter = match e.kind() {
                        io::ErrorKind::InvalidData => &io.bad_frames,
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => &io.silent,
                        _ => &io.link_errors,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        inbound.store(false, Ordering::Release);
        if incoming.send(Inbound::Down).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
