//! Fuzzes security groups as a session service (parse → `Conntrack<ZoneNewFlowLimit<
//! SecurityGroups>>`): arbitrary TCP (any flags), UDP and ICMP echo packets between one VM
//! and three remote hosts, both ways; rule sets drawn from ten rules (ports, prefixes,
//! prefix lists holding `/0`, all-traffic rules) swapped between batches; untracked flows on
//! or off; an optional new-flow rate limit; a small table; time steps and expiry; arbitrary
//! batches.
//!
//! Checked against the rules in force (`SgRuleSet::allows` / `untracked`): no panic; a
//! packet dropped as `sg_denied` is not allowed by them in its direction and had no session
//! when its batch began (established flows survive swaps), unless it is a new connection
//! reusing the ports of a closed one (a bare SYN from the originator that met its session in
//! `TimeWait` or `Closed`, at the batch's start or after a RST or FIN of the flow earlier in
//! the batch: decided afresh, by design) or a later packet of the batch, either way, whose
//! session such a SYN replaced; a packet passed without a session
//! is untracked by them, with the option on; nothing is dropped as `sg_untracked` (no other
//! service needs a session); `new_flow_rate_exceeded` only under a limit; conntrack's
//! `refused_passed` counts exactly the packets passed without a session.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionState, Sizes};
use nf_core::wire::Frame;
use nf_core::wire::icmp::IcmpRepr;
use nf_core::wire::tcp::tcp_flags;
use nf_core::{
    Batch, Direction, DropReason, Duration, Instant, Meta, Packet, ParseStage, SessionRef, Stage,
    StageControl, Verdict, ZoneId, flow::proto,
};
use nf_policy::classifier::{ClassKey, PortRange, Prefix};
use nf_policy::sg::{SgConfig, SgDirection, SgPeer, SgRule, SgRuleSetBuilder, SgTables};
use nf_policy::{BucketConfig, SecurityGroups, ZoneNewFlowLimit};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

const VM: [u8; 4] = [10, 0, 9, 5];
const REMOTES: [[u8; 4]; 3] = [[192, 0, 2, 1], [203, 0, 113, 5], [198, 51, 100, 9]];
const VM_PORTS: [u16; 5] = [22, 80, 443, 53, 5000];
const REMOTE_PORTS: [u16; 3] = [40_000, 40_001, 53];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    /// A packet between the VM and remote `remote` (mod 3): TCP with `flags`, UDP or ICMP
    /// echo (by `proto` mod 3), ports picked by index.
    Pkt {
        from_vm: bool,
        remote: u8,
        proto: u8,
        vm_port: u8,
        remote_port: u8,
        flags: u8,
    },
    /// Swap in the rules selected by the mask (bit i: rule i of `palette`).
    Rules(u16),
    /// End the current batch.
    Cut,
    /// Advance time by `n` hundred milliseconds and run timers.
    Time(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u8,
    untracked: bool,
    limit: Option<(u8, u8)>,
    rules: u16,
    ops: Vec<Op>,
}

fn p4(a: [u8; 4], len: u8) -> Prefix {
    Prefix::v4(Ipv4Addr::from(a), len).unwrap_or(Prefix::ANY_V4)
}

fn palette() -> [SgRule; 10] {
    use SgDirection::{Egress, Ingress};
    let any = SgPeer::Prefix(Prefix::ANY_V4);
    [
        SgRule::tcp(Ingress, any, PortRange::single(80)),
        SgRule::tcp(Ingress, SgPeer::Prefix(p4([203, 0, 113, 0], 24)), PortRange::single(22)),
        SgRule::udp(Ingress, any, PortRange::ANY),
        SgRule::icmp(Ingress, any, None, None),
        SgRule::all(Egress, any),
        SgRule::tcp(Egress, any, PortRange::ANY),
        SgRule::udp(Egress, SgPeer::Prefix(p4([198, 51, 100, 0], 24)), PortRange::single(53)),
        SgRule::all(Ingress, SgPeer::PrefixList(1)),
        SgRule::tcp(Ingress, SgPeer::PrefixList(2), PortRange::single(443)),
        SgRule::udp(Egress, any, PortRange::ANY),
    ]
}

thread_local! {
    /// Built rule sets by mask: building a classifier costs far more than a run.
    static BUILT: RefCell<HashMap<u16, Arc<SgTables>>> = RefCell::new(HashMap::new());
}

fn tables(mask: u16) -> Arc<SgTables> {
    let mask = mask & 0x3ff;
    BUILT.with(|b| b.borrow_mut().entry(mask).or_insert_with(|| build(mask)).clone())
}

fn build(mask: u16) -> Arc<SgTables> {
    let mut b = SgRuleSetBuilder::default();
    b.prefix_list(1, [p4([198, 51, 100, 0], 24)]);
    b.prefix_list(2, [Prefix::ANY_V4, p4([203, 0, 113, 0], 24)]);
    for (i, r) in palette().into_iter().enumerate() {
        if mask >> i & 1 == 1 {
            b.push(r);
        }
    }
    let mut t = SgTables::new();
    t.insert(ZoneId(0), b.build().expect("the palette builds"));
    Arc::new(t)
}

fn direction(m: &Meta) -> SgDirection {
    if m.flow.src_raw()[..4] == VM {
        SgDirection::Egress
    } else {
        SgDirection::Ingress
    }
}

fn frame(op: Op) -> Option<Vec<u8>> {
    let Op::Pkt {
        from_vm,
        remote,
        proto,
        vm_port,
        remote_port,
        flags,
    } = op
    else {
        return None;
    };
    let r = REMOTES[usize::from(remote) % REMOTES.len()];
    let vp = VM_PORTS[usize::from(vm_port) % VM_PORTS.len()];
    let rp = REMOTE_PORTS[usize::from(remote_port) % REMOTE_PORTS.len()];
    let (src, dst, sp, dp) = if from_vm {
        (VM, r, vp, rp)
    } else {
        (r, VM, rp, vp)
    };
    let f = Frame::ipv4(src, dst);
    match proto % 3 {
        0 => f.tcp(sp, dp, flags).to_vec().ok(),
        1 => f.udp(sp, dp).to_vec().ok(),
        _ => f
            .icmp(IcmpRepr {
                ty: if flags & 1 == 0 { 8 } else { 0 },
                code: 0,
                checksum: 0,
                ident: sp,
                seq: 1,
            })
            .to_vec()
            .ok(),
    }
}

struct Run {
    parse: ParseStage,
    ct: Conntrack<ZoneNewFlowLimit<SecurityGroups>>,
    untracked: bool,
    limited: bool,
    now: Instant,
    batch: Vec<Vec<u8>>,
    passed_without_session: u64,
}

impl Run {
    fn flush(&mut self) {
        let mut batch = Batch::new();
        for f in self.batch.drain(..) {
            let _ = batch.push(Packet::with_headroom(&f, 16));
        }
        self.parse.process(self.now, &mut batch);
        // Which packets had a session before the batch (early drop is off and no timer runs
        // within the batch: a session ends there only when a new connection reuses its
        // ports), and which of those may be such a new connection: a bare SYN from the
        // originator whose session was closed (`TimeWait`, `Closed`) when the batch began or
        // met a RST or FIN earlier in the batch.
        let mut ending: Vec<SessionRef> = Vec::new();
        let mut gone: Vec<SessionRef> = Vec::new();
        let mut had = Vec::new();
        for p in batch.packets() {
            let hit = p
                .meta
                .verdict
                .is_pass()
                .then(|| self.ct.lookup(&p.meta.flow))
                .flatten();
            let Some(hit) = hit else {
                had.push(false);
                continue;
            };
            let tcp = p.meta.flow.proto == proto::TCP;
            let f = p.meta.tcp_flags;
            let bare_syn = tcp
                && f & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN)
                    == tcp_flags::SYN;
            let closed = matches!(
                self.ct.state(hit.session),
                Some(SessionState::TcpTimeWait | SessionState::TcpClosed)
            ) || ending.contains(&hit.session);
            let reuse = bare_syn && hit.direction == Direction::Original && closed;
            // A session such a SYN replaced earlier in the batch is gone for the packets
            // after it, whichever way they travel.
            had.push(!reuse && !gone.contains(&hit.session));
            if reuse {
                gone.push(hit.session);
            }
            if tcp && f & (tcp_flags::RST | tcp_flags::FIN) != 0 {
                ending.push(hit.session);
            }
        }
        self.ct.process(self.now, &mut batch);
        let rules = self.ct.service().inner().rules().clone();
        let set = rules.get(ZoneId(0)).expect("zone 0 has rules");
        for (p, had) in batch.packets().iter().zip(had) {
            let key = ClassKey::from_packet(p);
            let d = direction(&p.meta);
            match (p.meta.verdict, p.meta.session) {
                (Verdict::Drop(DropReason::SgDenied), _) => {
                    assert!(!set.allows(d, &key), "denied but allowed: {key:?}");
                    assert!(!had, "an established flow was denied: {key:?}");
                }
                (Verdict::Pass, None) => {
                    assert!(self.untracked, "passed without a session: {key:?}");
                    assert!(set.untracked(d, &key), "not untracked: {key:?}");
                    self.passed_without_session += 1;
                }
                (Verdict::Drop(DropReason::SgUntracked), _) => panic!("dropped as untracked"),
                (Verdict::Drop(DropReason::NewFlowRateExceeded), _) => {
                    assert!(self.limited, "rate-limited without a limit");
                    assert!(!had);
                }
                _ => {}
            }
        }
        assert_eq!(self.ct.stats().refused_passed, self.passed_without_session);
        if !self.untracked {
            let mut n = None;
            self.ct.visit_counters(&mut |s, c, v| {
                if s == "security_groups" && c == "packets_untracked" {
                    n = Some(v);
                }
            });
            assert_eq!(n, Some(0));
        }
    }
}

fuzz_target!(|input: Input| {
    let mut cfg = ConntrackConfig::new([5; 16]).sizes(Sizes {
        v4: u32::from(input.capacity % 32) + 1,
        v6: 4,
    });
    cfg.v4.early_drop = false;
    let config = SgConfig::default()
        .direction(direction)
        .untracked(input.untracked);
    let now = Instant::from_nanos(1_000_000_000);
    let mut service = ZoneNewFlowLimit::new(SecurityGroups::new(tables(input.rules), config));
    if let Some((rate, burst)) = input.limit {
        let c = BucketConfig::new(u64::from(rate), u64::from(burst % 8));
        service.set_zone_limit(ZoneId(0), c, now);
    }
    let Ok(ct) = Conntrack::new(cfg, service) else {
        return;
    };
    let mut run = Run {
        parse: ParseStage::default(),
        ct,
        untracked: input.untracked,
        limited: input.limit.is_some(),
        now,
        batch: Vec::new(),
        passed_without_session: 0,
    };
    for op in input.ops.iter().take(256) {
        match *op {
            Op::Pkt { .. } => {
                if let Some(f) = frame(*op) {
                    run.batch.push(f);
                }
                if run.batch.len() == 64 {
                    run.flush();
                }
            }
            Op::Rules(mask) => {
                run.flush();
                run.ct.service_mut().inner_mut().set_rules(tables(mask));
            }
            Op::Cut => run.flush(),
            Op::Time(n) => {
                run.flush();
                run.now = run.now + Duration::from_millis(u64::from(n) * 100);
                run.ct.handle_timeout(run.now, 1 << 16);
            }
        }
    }
    run.flush();
});
