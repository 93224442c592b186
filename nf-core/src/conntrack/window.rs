//! TCP window tracking: [`TcpWindow`].

use super::service::{NewFlow, SessionService};
use super::table::SessionInfo;
use crate::flow::{ZoneId, proto};
use crate::meta::Direction;
use crate::packet::Packet;
use crate::time::Instant;
use crate::verdict::DropReason;
use crate::wire::tcp::tcp_flags;
use alloc::vec::Vec;

/// The window scale assumed for sides picked up mid-stream (RFC 7323's largest).
const PICKUP_SCALE: u8 = 14;
/// The least acknowledgment window (Linux's `MAXACKWINCONST`).
const MIN_ACK_WINDOW: u32 = 66_000;

const SEEN: u8 = 1;
/// Its SYN carried a window scale option.
const SCALE_OPTION: u8 = 2;
/// Learned mid-stream.
const PICKED_UP: u8 = 4;
/// Bytes of one side in a session hand-over.
const SIDE_LEN: usize = 14;

/// What one direction of a connection has sent and may send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSide {
    /// Highest sequence number sent, plus one.
    pub end: u32,
    /// Right edge of the window the other side offered.
    pub maxend: u32,
    /// Largest (scaled) window this side advertised; at least 1 once seen.
    pub maxwin: u32,
    /// Window scale shift of this side's advertisements.
    pub scale: u8,
    flags: u8,
}

impl TcpSide {
    /// True once a segment of this side was seen.
    pub fn seen(&self) -> bool {
        self.flags & SEEN != 0
    }

    /// True if this side was learned mid-stream (its window scale is assumed).
    pub fn picked_up(&self) -> bool {
        self.flags & PICKED_UP != 0
    }
}

/// The window state of one session: [`TcpWindow`]'s part of the session value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpWindowState {
    /// The originator's side, then the responder's.
    pub sides: [TcpSide; 2],
    /// False when the session is not tracked (not TCP, or its zone is off).
    pub tracked: bool,
}

/// What [`TcpWindow`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpWindowCounters {
    /// Segments checked.
    pub checked: u64,
    /// Sessions tracked from their SYN.
    pub from_syn: u64,
    /// Sessions picked up mid-stream.
    pub picked_up: u64,
    /// Dropped: the segment starts beyond the window (rule 1).
    pub seq_beyond_window: u64,
    /// Dropped: the segment ends more than a window before what was sent (rule 2).
    pub seq_too_old: u64,
    /// Dropped: it acknowledges data never sent (rule 3).
    pub ack_unsent: u64,
    /// Dropped: its acknowledgment is too old (rule 4).
    pub ack_too_old: u64,
    /// Of the drops, resets.
    pub rst_dropped: u64,
}

/// TCP window tracking as a [`SessionService`]: segments far outside what the peer's window
/// allows, and resets with a sequence number outside it, are dropped before they can change
/// the session (RST injection and blind data injection fail), as Linux's `nf_conntrack_tcp`
/// does after Guido van Rooij's "Real Stateful TCP Packet Filtering in IP Filter".
///
/// For each direction the session keeps what that side has sent and what the other side
/// allows it to send:
///
/// - `end`: the highest sequence number sent, plus one (`seq + len`, SYN and FIN count one);
/// - `maxend`: the right edge of the window the other side offered (`ack + window`);
/// - `maxwin`: the largest window this side advertised (scaled);
/// - the window scale from its SYN (RFC 7323), used only if both SYNs carried one.
///
/// A segment from side S to side R, with `sack` its acknowledgment (or the highest SACK right
/// edge, RFC 2018, if larger), passes when (sequence arithmetic modulo 2³²):
///
/// 1. `seq ≤ S.maxend` — it starts inside the window R offered;
/// 2. `seq + len ≥ S.end − R.maxwin` — it is not older than a window (retransmissions pass);
/// 3. `sack ≤ R.end` — it acknowledges nothing R never sent;
/// 4. `sack ≥ R.end − max(S.maxwin, 66000)` — nor is its acknowledgment hopelessly old.
///
/// A segment without ACK is checked on 1 and 2 only. A failing segment is dropped with
/// [`DropReason::TcpOutOfWindow`] or, for a reset, [`DropReason::TcpRstOutOfWindow`], through
/// [`SessionService::check`]: the session's state and timeout do not move, so an injected RST
/// does not close it. Otherwise the state advances: `S.end`, `S.maxwin`, and `R.maxend` from
/// the acknowledgment and S's window.
///
/// **Mid-stream pickup** (a session created by a non-SYN segment, e.g. after a fail-over,
/// where the zone's [`TcpCreate`](super::TcpCreate) allows it): each side is learned from its
/// first segment. The window scale is unknown then, so picked-up sides are checked as if
/// they had the largest scale (14): rules 1 and 2 only stop segments more than a gigabyte
/// away, while rules 3 and 4 hold exactly once both sides were seen.
///
/// Tracking is on in every zone unless [`TcpWindow::zone`] turns it off for one; non-TCP
/// sessions are not touched. It composes with other services: `Conntrack<(TcpWindow, Nat)>`
/// checks before the NAT rewrites.
///
/// ```
/// use nf_core::conntrack::{Conntrack, ConntrackConfig, TcpWindow};
/// use nf_core::wire::{Frame, TransportRepr, tcp::tcp_flags};
/// use nf_core::{Batch, DropReason, Instant, Packet, ParseStage, Stage, StageExt, Verdict};
///
/// let ct = Conntrack::new(ConntrackConfig::new(*b"sixteen byte key"), TcpWindow::new())?;
/// let mut pipeline = ParseStage::default().then(ct);
/// let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
/// let seg = |src, dst, sport, dport, flags, seq, ack| {
///     let mut f = Frame::ipv4(src, dst).tcp(sport, dport, flags);
///     if let TransportRepr::Tcp(t) = &mut f.transport {
///         (t.seq, t.ack, t.window) = (seq, ack, 1000);
///     }
///     f.to_vec()
/// };
/// let mut send = |frame: Vec<u8>| {
///     let mut batch = Batch::new();
///     batch.push(Packet::with_headroom(&frame, 64)).ok();
///     pipeline.process(Instant::from_nanos(1), &mut batch);
///     batch.packets()[0].meta.verdict
/// };
/// // The handshake: client ISN 100, server ISN 5000.
/// assert_eq!(send(seg(a, b, 4000, 80, tcp_flags::SYN, 100, 0)?), Verdict::Pass);
/// assert_eq!(send(seg(b, a, 80, 4000, tcp_flags::SYN | tcp_flags::ACK, 5000, 101)?), Verdict::Pass);
/// assert_eq!(send(seg(a, b, 4000, 80, tcp_flags::ACK, 101, 5001)?), Verdict::Pass);
/// // A forged reset far from the window is dropped, and the session lives on.
/// let forged = seg(b, a, 80, 4000, tcp_flags::RST, 5001 + 3_000_000, 0)?;
/// assert_eq!(send(forged), Verdict::Drop(DropReason::TcpRstOutOfWindow));
/// assert_eq!(send(seg(a, b, 4000, 80, tcp_flags::ACK, 101, 5001)?), Verdict::Pass);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct TcpWindow {
    /// Zones where tracking is off, sorted.
    off: Vec<u32>,
    counters: TcpWindowCounters,
}

/// The fields of a TCP segment the tracker reads.
struct Segment {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    /// Payload length plus one for SYN and one for FIN.
    len: u32,
    /// Window scale option (SYN only), if present.
    wscale: Option<u8>,
    /// Highest SACK block right edge, if any.
    sack_edge: Option<u32>,
}

/// `a` before `b` in sequence space.
#[inline]
fn before(a: u32, b: u32) -> bool {
    a.wrapping_sub(b).cast_signed() < 0
}

/// `a` after `b` in sequence space.
#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the segment of a parsed TCP packet; `None` if its headers are not all there.
fn segment<B: AsRef<[u8]>>(pkt: &Packet<B>) -> Option<Segment> {
    let b = pkt.data();
    let (l3, l4) = (usize::from(pkt.meta.l3), usize::from(pkt.meta.l4));
    let ip_end = match b.get(l3)? >> 4 {
        4 => l3 + usize::from(be16(b, l3 + 2)?),
        6 => l3 + 40 + usize::from(be16(b, l3 + 4)?),
        _ => return None,
    }
    .min(b.len());
    let tcp: &[u8; 20] = b.get(l4..l4 + 20)?.try_into().ok()?;
    let doff = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    let payload = ip_end.checked_sub(l4 + doff)?;
    let mut s = Segment {
        seq: be32(tcp, 4)?,
        ack: be32(tcp, 8)?,
        flags,
        window: be16(tcp, 14)?,
        len: u32::try_from(payload).ok()?
            + u32::from(flags & tcp_flags::SYN != 0)
            + u32::from(flags & tcp_flags::FIN != 0),
        wscale: None,
        sack_edge: None,
    };
    // Options: at most 40 bytes, each step consumes at least one.
    let opts = b.get(l4 + 20..l4 + doff.max(20))?;
    let mut i = 0;
    while let Some(&kind) = opts.get(i) {
        match kind {
            0 => break,
            1 => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let len = usize::from(*opts.get(i + 1)?);
        if len < 2 {
            break;
        }
        let body = opts.get(i + 2..i + len)?;
        match (kind, body.len()) {
            (3, 1) if flags & tcp_flags::SYN != 0 => s.wscale = body.first().map(|w| (*w).min(14)),
            (5, n) if n % 8 == 0 => {
                for block in body.chunks_exact(8) {
                    let right = be32(block, 4)?;
                    if s.sack_edge.is_none_or(|e| after(right, e)) {
                        s.sack_edge = Some(right);
                    }
                }
            }
            _ => {}
        }
        i += len;
    }
    Some(s)
}

/// Which rule a segment broke.
enum Broken {
    SeqBeyond,
    SeqOld,
    AckUnsent,
    AckOld,
}

impl TcpWindow {
    /// Tracking on in every zone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns tracking on or off for sessions created in `zone` from now on.
    #[must_use]
    pub fn zone(mut self, zone: ZoneId, on: bool) -> Self {
        match (self.off.binary_search(&zone.0), on) {
            (Ok(i), true) => {
                self.off.remove(i);
            }
            (Err(i), false) => self.off.insert(i, zone.0),
            _ => {}
        }
        self
    }

    /// What it counted.
    pub fn counters(&self) -> &TcpWindowCounters {
        &self.counters
    }

    /// Learns side `s` from its first segment.
    fn learn(s: &mut TcpSide, seg: &Segment) {
        let end = seg.seq.wrapping_add(seg.len);
        s.end = end;
        if seg.flags & tcp_flags::SYN != 0 {
            if let Some(w) = seg.wscale {
                s.scale = w;
                s.flags |= SCALE_OPTION;
            }
            // The window of a SYN is never scaled (RFC 7323 §2.2).
            s.maxwin = u32::from(seg.window).max(1);
            s.maxend = end;
        } else {
            s.scale = PICKUP_SCALE;
            s.flags |= PICKED_UP;
            s.maxwin = (u32::from(seg.window) << PICKUP_SCALE).max(1);
            s.maxend = end.wrapping_add(s.maxwin);
        }
        s.flags |= SEEN;
    }

    /// Checks and applies a segment from `sides[from]`; the state is unchanged on error.
    fn segment(st: &mut TcpWindowState, from: usize, seg: &Segment) -> Result<(), Broken> {
        let [a, b] = &mut st.sides;
        let (s, r) = if from == 0 { (a, b) } else { (b, a) };
        let syn = seg.flags & tcp_flags::SYN != 0;
        if !s.seen() {
            Self::learn(s, seg);
            // Scaling holds only if both SYNs offered it.
            if syn && r.seen() && (s.flags & r.flags & SCALE_OPTION == 0) {
                s.scale = 0;
                if !r.picked_up() {
                    r.scale = 0;
                }
            }
        }
        let end = seg.seq.wrapping_add(seg.len);
        let win = if syn {
            u32::from(seg.window)
        } else {
            u32::from(seg.window) << s.scale
        };
        let has_ack = seg.flags & tcp_flags::ACK != 0;
        let sack = match (has_ack, seg.sack_edge) {
            (false, _) => r.end,
            (true, Some(e)) if after(e, seg.ack) => e,
            (true, _) => seg.ack,
        };
        if r.seen() {
            if after(seg.seq, s.maxend) {
                return Err(Broken::SeqBeyond);
            }
            if before(end, s.end.wrapping_sub(r.maxwin)) {
                return Err(Broken::SeqOld);
            }
            if has_ack {
                if after(sack, r.end) {
                    return Err(Broken::AckUnsent);
                }
                if before(sack, r.end.wrapping_sub(s.maxwin.max(MIN_ACK_WINDOW))) {
                    return Err(Broken::AckOld);
                }
            }
        }
        s.maxwin = s.maxwin.max(win);
        if after(end, s.end) {
            s.end = end;
        }
        if has_ack && r.seen() {
            let edge = sack.wrapping_add(win);
            if !before(edge, r.maxend) {
                r.maxend = edge.wrapping_add(u32::from(win == 0));
            }
        }
        Ok(())
    }
}

impl SessionService for TcpWindow {
    type Value = TcpWindowState;

    const CHECKS: bool = true;

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<TcpWindowState, DropReason> {
        let key = new.original();
        let mut st = TcpWindowState::default();
        if key.proto != proto::TCP || self.off.binary_search(&key.zone.0).is_ok() {
            return Ok(st);
        }
        if let Some(seg) = segment(pkt) {
            st.tracked = true;
            let [a, _] = &mut st.sides;
            Self::learn(a, &seg);
            if a.picked_up() {
                self.counters.picked_up += 1;
            } else {
                self.counters.from_syn += 1;
            }
        }
        Ok(st)
    }

    #[inline]
    fn check<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        st: &mut TcpWindowState,
        pkt: &Packet<B>,
    ) -> Result<(), DropReason> {
        if !st.tracked {
            return Ok(());
        }
        let Some(seg) = segment(pkt) else {
            return Ok(());
        };
        self.counters.checked += 1;
        let from = usize::from(direction == Direction::Reply);
        let Err(broken) = Self::segment(st, from, &seg) else {
            return Ok(());
        };
        let c = &mut self.counters;
        *match broken {
            Broken::SeqBeyond => &mut c.seq_beyond_window,
            Broken::SeqOld => &mut c.seq_too_old,
            Broken::AckUnsent => &mut c.ack_unsent,
            Broken::AckOld => &mut c.ack_too_old,
        } += 1;
        if seg.flags & tcp_flags::RST != 0 {
            c.rst_dropped += 1;
            Err(DropReason::TcpRstOutOfWindow)
        } else {
            Err(DropReason::TcpOutOfWindow)
        }
    }

    /// Both sides (each: end, maximum end and window, 4 bytes each; scale; flags), then
    /// whether the session is tracked: the window moves with the session.
    /// No window to check a packet without a session against: in a pair, the other part
    /// decides (a load balancer forwarding it by the hash alone).
    fn judges_without_session(&self) -> bool {
        false
    }

    const EXPORT_LEN: Option<usize> = Some(2 * SIDE_LEN + 1);

    fn export_value(&self, st: &TcpWindowState, out: &mut [u8]) {
        for (side, out) in st.sides.iter().zip(out.chunks_exact_mut(SIDE_LEN)) {
            let mut b = [0u8; SIDE_LEN];
            b[..4].copy_from_slice(&side.end.to_be_bytes());
            b[4..8].copy_from_slice(&side.maxend.to_be_bytes());
            b[8..12].copy_from_slice(&side.maxwin.to_be_bytes());
            b[12] = side.scale;
            b[13] = side.flags;
            out.copy_from_slice(&b);
        }
        if let Some(t) = out.get_mut(2 * SIDE_LEN) {
            *t = u8::from(st.tracked);
        }
    }

    fn import_value(
        &mut self,
        _now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<TcpWindowState> {
        let (sides, rest) = bytes.split_first_chunk::<{ 2 * SIDE_LEN }>()?;
        let mut st = TcpWindowState::default();
        for (side, b) in st.sides.iter_mut().zip(sides.chunks_exact(SIDE_LEN)) {
            let &[e0, e1, e2, e3, m0, m1, m2, m3, w0, w1, w2, w3, scale, flags] =
                <&[u8; SIDE_LEN]>::try_from(b).ok()?;
            *side = TcpSide {
                end: u32::from_be_bytes([e0, e1, e2, e3]),
                maxend: u32::from_be_bytes([m0, m1, m2, m3]),
                maxwin: u32::from_be_bytes([w0, w1, w2, w3]),
                scale,
                flags,
            };
            if side.scale > PICKUP_SCALE || side.flags & !(SEEN | SCALE_OPTION | PICKED_UP) != 0 {
                return None;
            }
        }
        st.tracked = match rest.first()? {
            0 => false,
            1 => session.original.proto == proto::TCP,
            _ => return None,
        };
        Some(st)
    }

    /// A replica's copy of the window is as old as the session's last state change: both
    /// sides are forgotten and picked up again from their next segments, as after a
    /// fail-over without state (see *Mid-stream pickup* above).
    fn replicate_value(
        &mut self,
        now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<TcpWindowState> {
        let st = self.import_value(now, session, bytes)?;
        Some(TcpWindowState {
            sides: Default::default(),
            tracked: st.tracked,
        })
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        let c = &self.counters;
        for (name, v) in [
            ("checked", c.checked),
            ("from_syn", c.from_syn),
            ("picked_up", c.picked_up),
            ("seq_beyond_window", c.seq_beyond_window),
            ("seq_too_old", c.seq_too_old),
            ("ack_unsent", c.ack_unsent),
            ("ack_too_old", c.ack_too_old),
            ("rst_dropped", c.rst_dropped),
        ] {
            f("tcp_window", name, v);
        }
    }
}
