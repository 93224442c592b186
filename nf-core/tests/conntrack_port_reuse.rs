//! Sessions replaced by new ones, decided afresh by the services:
//! - TCP port reuse: a SYN that meets its flow's closed session (`TimeWait` or `Closed`) ends
//!   that session and opens a new one (as Linux conntrack does), so a new connection never
//!   inherits an old decision;
//! - renewal (`SessionService::renews`): a service whose decision for a flow no longer
//!   holds, and whose new decision changes the reply key, has the session replaced: the old
//!   one ends (`EndCause::Renewed`), the packet opens a new one with its new reply key, and
//!   later packets of the same batch find the new session.
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use nf_core::conntrack::{
    Conntrack, ConntrackConfig, EndCause, NewFlow, SessionInfo, SessionService, SessionState,
};
use nf_core::wire::Frame;
use nf_core::{
    Batch, Chain, Direction, DropReason, FlowKey, Instant, Packet, ParseStage, Stage, StageControl,
    StageExt, Verdict, ZoneId, flow::proto,
};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;
const SYN_ACK: u8 = 0x12;

/// Numbers every session it admits (the value), records why sessions end, and refuses new
/// flows once `closed`.
#[derive(Default)]
struct Numbered {
    next: u32,
    ended: Vec<(u32, EndCause)>,
    closed: bool,
}

impl SessionService for Numbered {
    type Value = u32;
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        _new: &mut NewFlow<'_>,
    ) -> Result<u32, DropReason> {
        if self.closed {
            return Err(DropReason::ServiceRefused);
        }
        self.next += 1;
        Ok(self.next)
    }
    fn on_end(&mut self, _now: Instant, info: &SessionInfo<u32>, cause: EndCause) {
        self.ended.push((info.value, cause));
    }
}

type Pipe = Chain<ParseStage, Conntrack<Numbered>>;

fn pipe() -> Pipe {
    let cfg = ConntrackConfig::new(*b"conntrack secret");
    ParseStage::default().then(Conntrack::new(cfg, Numbered::default()).unwrap())
}

fn frame(from_a: bool, flags: u8) -> Vec<u8> {
    let (s, d, sp, dp) = if from_a {
        (A, B, 40000, 80)
    } else {
        (B, A, 80, 40000)
    };
    Frame::ipv4(s, d).tcp(sp, dp, flags).to_vec().unwrap()
}

/// Sends the frames as one batch; their verdicts.
fn send(p: &mut Pipe, frames: &[(bool, u8)]) -> Vec<Verdict> {
    let mut batch = Batch::new();
    for &(a, fl) in frames {
        batch
            .push(Packet::with_headroom(&frame(a, fl), 0))
            .ok()
            .unwrap();
    }
    p.process(Instant::from_nanos(1_000_000_000), &mut batch);
    batch.packets().iter().map(|p| p.meta.verdict).collect()
}

/// The session of the flow: its number and state.
fn session(p: &Pipe) -> Option<(u32, SessionState)> {
    let k = FlowKey::v4(ZoneId(0), A, B, proto::TCP, 40000, 80);
    let h = p.second.lookup(&k)?;
    Some((*p.second.value(h.session)?, p.second.state(h.session)?))
}

fn counter<S: SessionService>(p: &Chain<ParseStage, Conntrack<S>>, name: &str) -> u64 {
    let mut v = None;
    p.visit_counters(&mut |stage, c, x| {
        if stage == "conntrack" && c == name {
            v = Some(x);
        }
    });
    v.unwrap()
}

const OPEN: [(bool, u8); 3] = [(true, SYN), (false, SYN_ACK), (true, ACK)];
const CLOSE: [(bool, u8); 3] = [(true, FIN_ACK), (false, FIN_ACK), (true, ACK)];

#[test]
fn a_syn_after_time_wait_opens_a_new_session() {
    let mut p = pipe();
    send(&mut p, &OPEN);
    assert_eq!(session(&p), Some((1, SessionState::TcpEstablished)));
    send(&mut p, &CLOSE);
    assert_eq!(session(&p), Some((1, SessionState::TcpTimeWait)));
    // The same ports again: the old session ends as reused, the service decides anew.
    assert_eq!(send(&mut p, &[(true, SYN)]), [Verdict::Pass]);
    assert_eq!(session(&p), Some((2, SessionState::TcpSynSent)));
    assert_eq!(p.second.service().ended, [(1, EndCause::Reused)]);
    assert_eq!(counter(&p, "reused"), 1);
    assert_eq!(p.second.len(), 1);
}

#[test]
fn a_syn_after_a_reset_opens_a_new_session_and_later_packets_of_the_batch_find_it() {
    let mut p = pipe();
    send(&mut p, &OPEN);
    send(&mut p, &[(false, RST)]);
    assert_eq!(session(&p), Some((1, SessionState::TcpClosed)));
    // Reuse and the whole handshake in one batch: every packet after the SYN finds the new
    // session (batch = packets one by one).
    assert_eq!(send(&mut p, &OPEN), [Verdict::Pass; 3]);
    assert_eq!(session(&p), Some((2, SessionState::TcpEstablished)));
    assert_eq!(p.second.service().ended, [(1, EndCause::Reused)]);
}

#[test]
fn a_reused_flow_the_service_now_refuses_is_dropped_and_leaves_nothing() {
    let mut p = pipe();
    send(&mut p, &OPEN);
    send(&mut p, &CLOSE);
    p.second.service_mut().closed = true;
    assert_eq!(
        send(&mut p, &[(true, SYN)]),
        [Verdict::Drop(DropReason::ServiceRefused)]
    );
    assert_eq!(session(&p), None);
    assert!(p.second.is_empty());
}

#[test]
fn only_a_bare_syn_from_the_originator_reuses() {
    let mut p = pipe();
    send(&mut p, &OPEN);
    send(&mut p, &CLOSE);
    // A late ACK, a SYN+ACK, and a SYN from the other side keep the closed session.
    send(&mut p, &[(true, ACK), (true, SYN_ACK), (false, SYN)]);
    assert_eq!(session(&p).map(|s| s.0), Some(1));
    assert!(p.second.service().ended.is_empty());
    assert_eq!(counter(&p, "reused"), 0);
    // An established session is never reused by a SYN (a retransmitted SYN, or an attack).
    let mut q = pipe();
    send(&mut q, &OPEN);
    send(&mut q, &[(true, SYN)]);
    assert_eq!(session(&q).map(|s| s.0), Some(1));
}

/// Admits each flow under the current `epoch` (the value) with replies expected from port
/// `1000 + epoch` (a stand-in for a DNAT backend chosen per configuration), renews a
/// session of an older epoch on its next original packet, refuses new flows once `closed`.
#[derive(Default)]
struct Epoch {
    epoch: u16,
    ended: Vec<(u16, EndCause)>,
    closed: bool,
}

impl SessionService for Epoch {
    type Value = u16;

    const RENEWS: bool = true;

    fn renews<B: AsRef<[u8]>>(
        &self,
        _now: Instant,
        direction: Direction,
        value: &u16,
        _pkt: &Packet<B>,
    ) -> bool {
        direction == Direction::Original && *value < self.epoch
    }

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<u16, DropReason> {
        if self.closed {
            return Err(DropReason::ServiceRefused);
        }
        let mut reply = *new.reply();
        reply.src_port = 1000 + self.epoch;
        new.set_reply(reply).unwrap();
        Ok(self.epoch)
    }

    fn on_end(&mut self, _now: Instant, info: &SessionInfo<u16>, cause: EndCause) {
        self.ended.push((info.value, cause));
    }
}

type EpochPipe = Chain<ParseStage, Conntrack<Epoch>>;

fn epoch_pipe() -> EpochPipe {
    let cfg = ConntrackConfig::new(*b"conntrack secret");
    let svc = Epoch {
        epoch: 1,
        ..Epoch::default()
    };
    ParseStage::default().then(Conntrack::new(cfg, svc).unwrap())
}

/// From A to B port 53, or B's answer from `port`.
fn udp_frame(answer_from: Option<u16>) -> Vec<u8> {
    match answer_from {
        None => Frame::ipv4(A, B).udp(40000, 53),
        Some(port) => Frame::ipv4(B, A).udp(port, 40000),
    }
    .to_vec()
    .unwrap()
}

/// Sends the frames as one batch: each packet's verdict, session value and direction.
fn send_udp(p: &mut EpochPipe, frames: &[Option<u16>]) -> Vec<(Verdict, Option<u16>, Direction)> {
    let mut batch = Batch::new();
    for &f in frames {
        batch
            .push(Packet::with_headroom(&udp_frame(f), 0))
            .ok()
            .unwrap();
    }
    p.process(Instant::from_nanos(1_000_000_000), &mut batch);
    batch
        .packets()
        .iter()
        .map(|x| {
            let v = x.meta.session.and_then(|s| p.second.value(s).copied());
            (x.meta.verdict, v, x.meta.direction)
        })
        .collect()
}

fn reply_key(port: u16) -> FlowKey {
    FlowKey::v4(ZoneId(0), B, A, proto::UDP, port, 40000)
}

#[test]
fn a_stale_decision_is_replaced_with_its_reply_key_and_the_batch_follows() {
    let mut p = epoch_pipe();
    let (o, r) = (Direction::Original, Direction::Reply);
    assert_eq!(
        send_udp(&mut p, &[None, Some(1001)]),
        [(Verdict::Pass, Some(1), o), (Verdict::Pass, Some(1), r)]
    );
    p.second.service_mut().epoch = 2;
    // The old port's answer still finds the session (only original packets renew here).
    assert_eq!(
        send_udp(&mut p, &[Some(1001)]),
        [(Verdict::Pass, Some(1), r)]
    );
    // One batch: the first packet renews, the second finds the new session (no second
    // renewal), the new reply key answers; the old one is gone.
    assert_eq!(
        send_udp(&mut p, &[None, None, Some(1002)]),
        [
            (Verdict::Pass, Some(2), o),
            (Verdict::Pass, Some(2), o),
            (Verdict::Pass, Some(2), r)
        ]
    );
    assert_eq!(p.second.service().ended, [(1, EndCause::Renewed)]);
    assert_eq!(counter(&p, "renewed"), 1);
    assert_eq!(p.second.len(), 1);
    assert!(p.second.lookup(&reply_key(1001)).is_none());
    assert!(p.second.lookup(&reply_key(1002)).is_some());
}

#[test]
fn a_renewal_the_services_refuse_drops_the_packet_and_leaves_nothing() {
    let mut p = epoch_pipe();
    send_udp(&mut p, &[None]);
    let svc = p.second.service_mut();
    svc.epoch = 2;
    svc.closed = true;
    assert_eq!(
        send_udp(&mut p, &[None]),
        [(
            Verdict::Drop(DropReason::ServiceRefused),
            None,
            Direction::Original
        )]
    );
    assert_eq!(p.second.service().ended, [(1, EndCause::Renewed)]);
    assert!(p.second.is_empty());
    assert_eq!(counter(&p, "renewed"), 1);
}
