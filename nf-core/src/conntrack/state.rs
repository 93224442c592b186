//! Session states, the protocol-aware timeout profile, and the TCP state tracker.
//!
//! The TCP tracker follows flags only, in the spirit of Linux conntrack's state table, reduced
//! to the states that select a timeout (sequence numbers and windows are checked by the
//! [`TcpWindow`](super::TcpWindow) session service, before the state moves):
//!
//! ```text
//! SYN (orig) ─► SynSent ─SYN+ACK or SYN (reply)─► SynRecv ─ACK (orig)─► Established
//! Established ─FIN─► FinWait ─ACK from the other side─► CloseWait
//! FinWait | CloseWait ─FIN from the other side─► LastAck ─ACK from the first closer─► TimeWait
//! any ─RST─► Closed;   TimeWait | Closed ─SYN (orig)─► SynSent (port reuse)
//! ```
//!
//! A *one-sided* session (its replies never pass here: direct server return, asymmetric
//! routing) opens in `SynRecv`, as if the SYN+ACK had been seen, so the originator's ACK
//! establishes it; its FIN leads to `FinWait` and its RST to `Closed`, with their timeouts.

use crate::flow::proto;
use crate::meta::Direction;
use crate::time::Duration;

use crate::wire::tcp::tcp_flags;

/// What a session's lifetime is currently governed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum SessionState {
    /// TCP: SYN seen from the originator.
    TcpSynSent = 0,
    /// TCP: SYN+ACK seen from the responder.
    TcpSynRecv = 1,
    /// TCP: handshake complete (or picked up mid-stream).
    TcpEstablished = 2,
    /// TCP: the first FIN was seen.
    TcpFinWait = 3,
    /// TCP: the first FIN was acknowledged; the other side may still send.
    TcpCloseWait = 4,
    /// TCP: both sides sent FIN.
    TcpTimeWait = 5,
    /// TCP: reset.
    TcpClosed = 6,
    /// UDP: only the original direction seen.
    UdpUnreplied = 7,
    /// UDP: both directions seen.
    UdpReplied = 8,
    /// ICMP / ICMPv6 query (echo, timestamp, ...).
    IcmpQuery = 9,
    /// Any other protocol.
    Other = 10,
    /// TCP: both sides sent FIN; the last one is not acknowledged yet (after the other
    /// states so that their numbers, which session exports carry, stay as they were).
    TcpLastAck = 11,
}

impl SessionState {
    /// Every state, in discriminant order.
    pub const ALL: [SessionState; 12] = [
        Self::TcpSynSent,
        Self::TcpSynRecv,
        Self::TcpEstablished,
        Self::TcpFinWait,
        Self::TcpCloseWait,
        Self::TcpTimeWait,
        Self::TcpClosed,
        Self::UdpUnreplied,
        Self::UdpReplied,
        Self::IcmpQuery,
        Self::Other,
        Self::TcpLastAck,
    ];

    /// The state from its discriminant.
    #[inline]
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }

    /// The state a new session starts in, from the protocol of its first packet.
    /// TCP sessions start in [`SessionState::TcpSynSent`] when the packet is a SYN and in
    /// [`SessionState::TcpEstablished`] otherwise (mid-stream pickup).
    #[inline]
    pub fn initial(proto_num: u8, tcp_flags: u8) -> Self {
        match proto_num {
            proto::TCP if tcp_flags & tcp_flags::SYN != 0 => Self::TcpSynSent,
            proto::TCP => Self::TcpEstablished,
            proto::UDP => Self::UdpUnreplied,
            proto::ICMP | proto::ICMPV6 => Self::IcmpQuery,
            _ => Self::Other,
        }
    }

    /// The state a new session opened in `self` ([`Self::initial`]) starts in: a
    /// one-sided TCP session opened by a SYN starts in [`SessionState::TcpSynRecv`], as if
    /// the responder's SYN+ACK (which takes another path) had been seen.
    #[inline]
    pub(crate) const fn opened(self, one_sided: bool) -> Self {
        match self {
            Self::TcpSynSent if one_sided => Self::TcpSynRecv,
            s => s,
        }
    }

    /// True for the TCP states.
    #[inline]
    pub const fn is_tcp(self) -> bool {
        (self as u8) <= Self::TcpClosed as u8 || matches!(self, Self::TcpLastAck)
    }
}

/// Timeouts per state and the timer granularity. Defaults follow Linux conntrack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimeoutProfile {
    /// Timer wheel tick: sessions expire at most this long after their deadline.
    pub granularity: Duration,
    /// [`SessionState::TcpSynSent`].
    pub tcp_syn_sent: Duration,
    /// [`SessionState::TcpSynRecv`].
    pub tcp_syn_recv: Duration,
    /// [`SessionState::TcpEstablished`].
    pub tcp_established: Duration,
    /// [`SessionState::TcpFinWait`].
    pub tcp_fin_wait: Duration,
    /// [`SessionState::TcpCloseWait`].
    pub tcp_close_wait: Duration,
    /// [`SessionState::TcpTimeWait`].
    pub tcp_time_wait: Duration,
    /// [`SessionState::TcpLastAck`].
    pub tcp_last_ack: Duration,
    /// [`SessionState::TcpClosed`].
    pub tcp_closed: Duration,
    /// [`SessionState::UdpUnreplied`].
    pub udp_unreplied: Duration,
    /// [`SessionState::UdpReplied`].
    pub udp_replied: Duration,
    /// [`SessionState::IcmpQuery`].
    pub icmp: Duration,
    /// [`SessionState::Other`].
    pub other: Duration,
}

impl Default for TimeoutProfile {
    fn default() -> Self {
        Self {
            granularity: Duration::from_secs(1),
            tcp_syn_sent: Duration::from_secs(120),
            tcp_syn_recv: Duration::from_secs(60),
            tcp_established: Duration::from_secs(5 * 24 * 3600),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_close_wait: Duration::from_secs(60),
            tcp_time_wait: Duration::from_secs(120),
            tcp_last_ack: Duration::from_secs(30),
            tcp_closed: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_replied: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(600),
        }
    }
}

impl TimeoutProfile {
    /// The timeout of `state`.
    #[inline]
    pub const fn timeout(&self, state: SessionState) -> Duration {
        match state {
            SessionState::TcpSynSent => self.tcp_syn_sent,
            SessionState::TcpSynRecv => self.tcp_syn_recv,
            SessionState::TcpEstablished => self.tcp_established,
            SessionState::TcpFinWait => self.tcp_fin_wait,
            SessionState::TcpCloseWait => self.tcp_close_wait,
            SessionState::TcpTimeWait => self.tcp_time_wait,
            SessionState::TcpLastAck => self.tcp_last_ack,
            SessionState::TcpClosed => self.tcp_closed,
            SessionState::UdpUnreplied => self.udp_unreplied,
            SessionState::UdpReplied => self.udp_replied,
            SessionState::IcmpQuery => self.icmp,
            SessionState::Other => self.other,
        }
    }

    /// A profile with every timeout set to `t` (tests and simple setups).
    pub fn uniform(granularity: Duration, t: Duration) -> Self {
        Self {
            granularity,
            tcp_syn_sent: t,
            tcp_syn_recv: t,
            tcp_established: t,
            tcp_fin_wait: t,
            tcp_close_wait: t,
            tcp_time_wait: t,
            tcp_last_ack: t,
            tcp_closed: t,
            udp_unreplied: t,
            udp_replied: t,
            icmp: t,
            other: t,
        }
    }
}

/// Result of feeding one packet to the state tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    /// The new state.
    pub(crate) state: SessionState,
    /// The session now counts as established (assured): never early-dropped again.
    pub(crate) assured: bool,
    /// Direction that sent the first FIN (meaningful in FinWait / CloseWait).
    pub(crate) fin_reply: bool,
}

/// TCP flag combinations that no valid segment carries.
#[inline]
pub(crate) const fn tcp_flags_invalid(f: u8) -> bool {
    use tcp_flags::{ACK, FIN, RST, SYN};
    (f & SYN != 0 && f & (FIN | RST) != 0) || f & (SYN | ACK | RST) == 0
}

/// The next state after a packet travelling `dir` with `flags` (TCP flags, 0 otherwise).
/// `None` for a TCP packet the tracker rejects (invalid flags, or a SYN+ACK from the
/// originator of a half-open session).
#[inline(always)]
pub(crate) fn advance(
    state: SessionState,
    assured: bool,
    fin_reply: bool,
    dir: Direction,
    flags: u8,
) -> Option<Transition> {
    use SessionState as S;
    use tcp_flags::{ACK, FIN, RST, SYN};
    let reply = dir == Direction::Reply;
    let keep = |state| Transition {
        state,
        assured,
        fin_reply,
    };
    if !state.is_tcp() {
        return Some(match state {
            S::UdpUnreplied if reply => Transition {
                state: S::UdpReplied,
                assured: true,
                fin_reply,
            },
            s => Transition {
                state: s,
                assured: assured || reply,
                fin_reply,
            },
        });
    }
    if tcp_flags_invalid(flags) {
        return None;
    }
    if flags & RST != 0 {
        return Some(keep(S::TcpClosed));
    }
    let syn = flags & SYN != 0;
    let ack = flags & ACK != 0;
    let fin = flags & FIN != 0;
    Some(match state {
        // SYN+ACK from the responder, or its own SYN crossing ours (simultaneous open,
        // RFC 9293 §3.5): the originator's SYN+ACK and ACK follow.
        S::TcpSynSent if syn && reply => keep(S::TcpSynRecv),
        S::TcpSynSent if syn && ack => return None,
        S::TcpSynSent => keep(S::TcpSynSent),
        S::TcpSynRecv if !syn && ack && !reply => Transition {
            state: S::TcpEstablished,
            assured: true,
            fin_reply,
        },
        S::TcpSynRecv => keep(S::TcpSynRecv),
        S::TcpEstablished if fin => Transition {
            state: S::TcpFinWait,
            assured: assured || reply,
            fin_reply: reply,
        },
        // A picked-up (loose) session becomes established once the other side answers.
        S::TcpEstablished => keep_assured(S::TcpEstablished, assured || reply, fin_reply),
        S::TcpFinWait | S::TcpCloseWait if fin && reply != fin_reply => keep(S::TcpLastAck),
        S::TcpLastAck if ack && reply == fin_reply => keep(S::TcpTimeWait),
        S::TcpFinWait if ack && reply != fin_reply => keep(S::TcpCloseWait),
        S::TcpTimeWait | S::TcpClosed if syn && !ack && !reply => keep(S::TcpSynSent),
        s => keep(s),
    })
}

#[inline]
const fn keep_assured(state: SessionState, assured: bool, fin_reply: bool) -> Transition {
    Transition {
        state,
        assured,
        fin_reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Original as O, Reply as R};
    use SessionState as S;
    use tcp_flags::{ACK, FIN, RST, SYN};

    fn run(steps: &[(Direction, u8)]) -> Option<(SessionState, bool)> {
        let mut t = Transition {
            state: S::TcpSynSent,
            assured: false,
            fin_reply: false,
        };
        for &(d, f) in steps {
            t = advance(t.state, t.assured, t.fin_reply, d, f)?;
        }
        Some((t.state, t.assured))
    }

    #[test]
    fn handshake_and_close() {
        assert_eq!(run(&[(R, SYN | ACK)]), Some((S::TcpSynRecv, false)));
        assert_eq!(
            run(&[(R, SYN | ACK), (O, ACK)]),
            Some((S::TcpEstablished, true))
        );
        let est = [(R, SYN | ACK), (O, ACK)];
        let mut v = est.to_vec();
        v.push((O, FIN | ACK));
        assert_eq!(run(&v), Some((S::TcpFinWait, true)));
        v.push((R, ACK));
        assert_eq!(run(&v), Some((S::TcpCloseWait, true)));
        v.push((R, FIN | ACK));
        assert_eq!(run(&v), Some((S::TcpLastAck, true)));
        // A retransmitted FIN waits on; the first closer's ACK ends it.
        v.push((R, FIN | ACK));
        assert_eq!(run(&v), Some((S::TcpLastAck, true)));
        v.push((O, ACK));
        assert_eq!(run(&v), Some((S::TcpTimeWait, true)));
        v.push((O, SYN));
        assert_eq!(run(&v), Some((S::TcpSynSent, true)));
        assert_eq!(run(&[(O, RST)]), Some((S::TcpClosed, false)));
    }

    #[test]
    fn one_sided_sessions_open_in_syn_recv() {
        assert_eq!(S::TcpSynSent.opened(true), S::TcpSynRecv);
        assert_eq!(S::TcpSynSent.opened(false), S::TcpSynSent);
        assert_eq!(S::TcpEstablished.opened(true), S::TcpEstablished);
        assert_eq!(S::UdpUnreplied.opened(true), S::UdpUnreplied);
        // Then the originator's ACK establishes it; its FIN or RST closes it.
        let t = advance(S::TcpSynRecv, false, false, O, ACK).unwrap();
        assert_eq!((t.state, t.assured), (S::TcpEstablished, true));
        let f = advance(t.state, true, false, O, FIN | ACK).unwrap();
        assert_eq!(f.state, S::TcpFinWait);
        let r = advance(t.state, true, false, O, RST).unwrap();
        assert_eq!(r.state, S::TcpClosed);
    }

    #[test]
    fn invalid_segments_rejected() {
        assert_eq!(run(&[(O, SYN | FIN)]), None);
        assert_eq!(run(&[(O, 0)]), None);
        assert_eq!(run(&[(O, SYN | ACK)]), None);
        assert!(tcp_flags_invalid(FIN));
        assert!(!tcp_flags_invalid(FIN | ACK));
    }

    #[test]
    fn udp_and_others() {
        let t = advance(S::UdpUnreplied, false, false, R, 0).unwrap();
        assert_eq!((t.state, t.assured), (S::UdpReplied, true));
        let t = advance(S::IcmpQuery, false, false, O, 0).unwrap();
        assert!(!t.assured);
        let t = advance(S::Other, false, false, R, 0).unwrap();
        assert!(t.assured);
        for s in S::ALL {
            assert_eq!(S::from_u8(s as u8), Some(s));
        }
        assert_eq!(S::from_u8(12), None);
    }
}
