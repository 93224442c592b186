//! TCP port reuse: a SYN that meets its flow's closed session (`TimeWait` or `Closed`) ends
//! that session and opens a new one, decided afresh by the services (as Linux conntrack does),
//! so a new connection never inherits an old decision.
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use nf_core::conntrack::{
    Conntrack, ConntrackConfig, EndCause, NewFlow, SessionInfo, SessionService, SessionState,
};
use nf_core::wire::Frame;
use nf_core::{
    Batch, Chain, DropReason, FlowKey, Instant, Packet, ParseStage, Stage, StageControl, StageExt,
    Verdict, ZoneId, flow::proto,
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

fn counter(p: &Pipe, name: &str) -> u64 {
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
