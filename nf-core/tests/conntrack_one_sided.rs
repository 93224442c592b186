//! One-sided tracking (`ZonePolicy::one_sided`, `NewFlow::set_one_sided`): replies never
//! pass the stage, so the originator's ACK after its SYN establishes a TCP session.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use nf_core::conntrack::{Conntrack, ConntrackConfig, NewFlow, SessionService, SessionState};
use nf_core::wire::Frame;
use nf_core::{
    Batch, DropReason, FlowKey, Instant, Packet, ParseStage, Stage, StageExt, Verdict, ZoneId,
    flow::proto,
};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

/// Marks the flows to port 443 one-sided.
struct Https;

impl SessionService for Https {
    type Value = ();
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<(), DropReason> {
        if new.original().dst_port == 443 {
            new.set_one_sided();
        }
        Ok(())
    }
}

fn send<S: SessionService>(
    p: &mut nf_core::Chain<ParseStage, Conntrack<S>>,
    src: [u8; 4],
    dst: [u8; 4],
    (sp, dp): (u16, u16),
    flags: u8,
) -> Verdict {
    let f = Frame::ipv4(src, dst).tcp(sp, dp, flags).to_vec().unwrap();
    let mut batch = Batch::new();
    batch.push(Packet::with_headroom(&f, 0)).ok().unwrap();
    p.process(Instant::from_nanos(1_000_000_000), &mut batch);
    batch.packets()[0].meta.verdict
}

fn state<S: SessionService>(ct: &Conntrack<S>, sp: u16, dp: u16) -> (SessionState, bool) {
    let k = FlowKey::v4(ZoneId(0), A, B, proto::TCP, sp, dp);
    let s = ct.info(ct.lookup(&k).unwrap().session).unwrap();
    (s.state, s.established)
}

#[test]
fn a_one_sided_zone_is_established_by_the_originators_ack() {
    let mut cfg = ConntrackConfig::new(*b"conntrack secret");
    cfg.default_policy = cfg.default_policy.with_one_sided(true);
    let mut p = ParseStage::default().then(Conntrack::new(cfg, ()).unwrap());
    assert_eq!(send(&mut p, A, B, (1000, 80), 0x02), Verdict::Pass);
    assert_eq!(
        state(&p.second, 1000, 80),
        (SessionState::TcpSynRecv, false)
    );
    send(&mut p, A, B, (1000, 80), 0x10);
    assert_eq!(
        state(&p.second, 1000, 80),
        (SessionState::TcpEstablished, true)
    );
    // A reply that does pass is tracked as ever.
    send(&mut p, B, A, (80, 1000), 0x11);
    assert_eq!(state(&p.second, 1000, 80), (SessionState::TcpFinWait, true));
}

#[test]
fn a_service_marks_one_flow_one_sided() {
    let cfg = ConntrackConfig::new(*b"conntrack secret");
    let mut p = ParseStage::default().then(Conntrack::new(cfg, Https).unwrap());
    for dp in [443, 80] {
        send(&mut p, A, B, (2000, dp), 0x02);
        send(&mut p, A, B, (2000, dp), 0x10);
    }
    assert_eq!(
        state(&p.second, 2000, 443),
        (SessionState::TcpEstablished, true)
    );
    // Two-sided: the ACK without the SYN+ACK leaves it half open.
    assert_eq!(
        state(&p.second, 2000, 80),
        (SessionState::TcpSynSent, false)
    );
}
