//! Fuzzes the LB stage (parse → `Conntrack<Lb>`): arbitrary packets of a few flows to a VIP
//! (TCP with any flags, UDP) and back from the backends, membership changes (add, remove,
//! drain, down, up, reweight), forwarding mode, down-action, one-sided DNAT sessions and
//! selection (Maglev or rendezvous) changes, a small session
//! table with or without early drop (so it fills), a new-flow rate limit, time steps and
//! expiry, ICMP errors quoting the flows' packets from either side (quotes cut anywhere),
//! cut into arbitrary batches; and hand-overs: every session exported and imported into a
//! fresh stage with the current configuration, which carries on in its place; and a replica
//! following the stage through its change journal (`export_changes` → `apply`), with the
//! same configuration changes, that takes the stage's place after a last sync.
//!
//! Checked: no panic; a packet to the VIP is never dropped for lack of state (no session,
//! table full, zone quota, rate); a packet of a session goes to the backend the session
//! chose while that backend is up or draining, and otherwise to the table's choice
//! (re-hash; under DNAT in a new session) or is dropped as `lb_backend_down` (reset; with RSTs asked for, a TCP segment
//! becomes the RST from the VIP); a packet without a session goes
//! to the table's choice; the sessions each backend's slot counts equal the live sessions
//! that hold it (after a hand-over too: the new stage counts what it took over); an ICMP
//! error passes (translated) or drops for a related-packet reason.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_core::wire::Frame;
use nf_core::{
    Batch, DropReason, Duration, FlowKey, Instant, Packet, ParseStage, PortId, SessionRef, Stage,
    StageControl, Verdict, ZoneId, flow::proto,
};
use nf_lb::{
    BackendId, Forwarding, HashFields, Health, Lb, LbKey, Listener, ListenerMatch, Listeners,
    NewFlowLimit, OnDown, Pool, PoolMember, Selection,
};
use std::collections::BTreeMap;

const VIP: [u8; 4] = [192, 0, 2, 1];
const CLIENT: [u8; 4] = [198, 51, 100, 7];
const BACKENDS: u8 = 8;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    /// A packet of flow `flow` (0..16) from the client, or back from backend `from`.
    Pkt {
        flow: u8,
        udp: bool,
        tcp: u8,
        reply: Option<u8>,
    },
    /// An ICMP error about flow `flow`: from the backend's side (a router to the client,
    /// quoting the client's packet as sent to backend `to`) or from the client's side (to
    /// the VIP, quoting the un-NATed reply), the quote cut to `cut` bytes when given.
    Error {
        flow: u8,
        udp: bool,
        to: Option<u8>,
        cut: Option<u8>,
    },
    /// Membership change of backend `b` (0..8), then a swap.
    Add(u8, u8),
    Remove(u8),
    Health(u8, u8),
    Weight(u8, u8),
    /// Forwarding mode, action on down, hash fields and backend selection (Maglev or
    /// rendezvous), then a swap.
    Mode {
        encap: bool,
        rehash: bool,
        /// DNAT sessions one-sided (a fleet whose backends answer through any node).
        one_sided: bool,
        fields: u8,
        rendezvous: bool,
    },
    /// End the current batch.
    Cut,
    /// Advance time by `n` hundred milliseconds and run timers.
    Time(u8),
    /// Export every session; a fresh stage with the current configuration imports them and
    /// takes over.
    Handover,
    /// Send the stage's changes to its replica, at most `n` + 1 events per chunk.
    Sync(u8),
    /// A last sync, then the replica takes the stage's place (and a fresh replica follows).
    Failover,
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u8,
    early_drop: bool,
    /// Reset flows' TCP segments answered with a RST (sent on port 5) rather than dropped.
    rst: bool,
    limit: Option<(u8, u8)>,
    ops: Vec<Op>,
}

fn id(b: u8) -> BackendId {
    BackendId::v4([10, 0, 0, b], 8080)
}

struct Config {
    members: BTreeMap<u8, (u32, Health)>,
    encap: bool,
    rehash: bool,
    one_sided: bool,
    fields: HashFields,
    selection: Selection,
    limit: Option<NewFlowLimit>,
}

impl Config {
    fn listeners(&self) -> Option<Listeners> {
        let pool = Pool::new(self.members.iter().map(|(&b, &(w, h))| {
            PoolMember::new(id(b), w)
                .with_health(h)
                .with_next_hop(u32::from(b))
        }));
        let on = ListenerMatch::Vip(VIP.into());
        let key = LbKey::new([7; 16]);
        let mut l = Listener::with_selection(&key, on, self.fields, pool, self.selection).ok()?;
        if self.encap {
            l = l.with_forwarding(Forwarding::Encap);
        }
        if self.rehash {
            // Under DNAT, the session is replaced (a new slot key in `chosen`).
            l = l.with_on_down(OnDown::Rehash);
        }
        if let Some(lim) = self.limit {
            l = l.with_new_flow_limit(lim);
        }
        Listeners::new(vec![l.with_one_sided(self.one_sided)]).ok()
    }
}

struct Run {
    parse: ParseStage,
    ct: Conntrack<Lb>,
    replica: Conntrack<Lb>,
    ct_cfg: ConntrackConfig,
    rst: bool,
    cfg: Config,
    now: Instant,
    batch: Vec<(Vec<u8>, Option<FlowKey>)>,
    /// The backend each session chose.
    chosen: BTreeMap<(u32, u32), (SessionRef, u8)>,
}

impl Run {
    fn swap(&mut self) {
        // A configuration without a serving backend is refused: the old one stays.
        if let Some(l) = self.cfg.listeners() {
            self.ct.service_mut().set_listeners(l.clone());
            self.replica.service_mut().set_listeners(l);
        }
    }

    /// A stage with the current configuration (`None` if it has no serving backend).
    fn fresh(&self) -> Option<Conntrack<Lb>> {
        let mut lb = Lb::new(self.cfg.listeners()?);
        if self.rst {
            lb = lb.with_tcp_resets(PortId(5));
        }
        Conntrack::new(self.ct_cfg.clone(), lb).ok()
    }

    /// Sends the stage's journal to the replica, `max` events per chunk; the journal is
    /// long enough for every change a run makes, so nothing is lost.
    fn sync(&mut self, max: usize) {
        loop {
            let mut chunk = Vec::new();
            let p = self
                .ct
                .export_changes(nf_core::Family::V4, self.now, max, &mut chunk)
                .expect("LB sessions move");
            assert_eq!(p.lost, 0);
            let r = self.replica.apply(self.now, &chunk).expect("a chunk just made");
            assert_eq!(r.ended + r.absent, p.ended);
            assert_eq!(r.created + r.refreshed + r.refused + r.skipped, p.changed);
            if !p.pending {
                break;
            }
        }
    }

    /// The replica, in sync, takes the stage's place: it holds every session the stage has,
    /// except those whose backend its configuration no longer has (it declined them).
    fn failover(&mut self) {
        self.sync(usize::MAX);
        let Some(fresh) = self.fresh() else {
            return;
        };
        let mut next = std::mem::replace(&mut self.replica, fresh);
        assert!(next.v4().len() <= self.ct.v4().len());
        assert_eq!(next.take_over_replicas(|_| true), next.v4().len());
        self.take_over(next);
    }

    /// `next` carries on in the stage's place: the sessions it holds keep their backends.
    fn take_over(&mut self, next: Conntrack<Lb>) {
        let old = std::mem::take(&mut self.chosen);
        for (r, b) in old.into_values() {
            let Some(info) = self.ct.info(r) else { continue };
            if let Some(h) = next.lookup(&info.original) {
                let n = h.session;
                self.chosen.insert((n.index(), n.generation()), (n, b));
            }
        }
        self.ct = next;
        self.check_counts();
        // The replica follows the new stage from scratch.
        if let Some(fresh) = self.fresh() {
            self.replica = fresh;
            for (chunk, _) in self.export_all() {
                self.replica.apply(self.now, &chunk).expect("a chunk just made");
            }
        }
    }

    /// Every session of the stage, in export chunks of 7, each with its record count.
    fn export_all(&self) -> Vec<(Vec<u8>, usize)> {
        let mut chunks = Vec::new();
        let mut from = 0;
        loop {
            let mut chunk = Vec::new();
            let p = self
                .ct
                .export(nf_core::Family::V4, self.now, from, 7, &mut chunk)
                .expect("LB sessions move");
            chunks.push((chunk, p.records));
            match p.next {
                Some(n) => from = n,
                None => return chunks,
            }
        }
    }

    /// The backend a forwarded packet went to.
    fn backend_of(&self, p: &Packet<Vec<u8>>) -> u8 {
        let l = self.ct.service().listeners().listeners();
        if l.first()
            .is_some_and(|l| l.forwarding() == Forwarding::Encap)
        {
            p.meta.next_hop as u8
        } else {
            p.data()[usize::from(p.meta.l3) + 19]
        }
    }

    fn flush(&mut self) {
        let mut batch = Batch::new();
        let keys: Vec<Option<FlowKey>> = self.batch.iter().map(|(_, k)| *k).collect();
        for (f, _) in self.batch.drain(..) {
            let _ = batch.push(Packet::with_headroom(&f, 16));
        }
        // Which backend a flow should go to is decided per packet; packets of one batch see
        // one configuration (swaps happen between batches).
        self.parse.process(self.now, &mut batch);
        self.ct.process(self.now, &mut batch);
        let lb = self.ct.service();
        let listener = lb.listeners().listeners().first().cloned();
        let serving = |b: u8| {
            let l = listener.as_ref();
            l.is_some_and(|l| {
                l.pool()
                    .members()
                    .iter()
                    .any(|m| m.id == id(b) && m.health != Health::Down)
            })
        };
        for (p, key) in batch.packets().iter().zip(keys) {
            if p.meta.has(nf_core::flags::ICMP_ERROR) {
                assert!(
                    matches!(
                        p.meta.verdict,
                        Verdict::Pass
                            | Verdict::Drop(
                                DropReason::RelatedNoSession
                                    | DropReason::IcmpQuoteTruncated
                                    | DropReason::LbUntranslatable
                            )
                    ),
                    "ICMP error: {:?}",
                    p.meta.verdict
                );
            }
            let Some(key) = key else { continue };
            if matches!(
                p.meta.verdict,
                Verdict::Drop(
                    DropReason::NoSession
                        | DropReason::SessionTableFull
                        | DropReason::ZoneQuotaExceeded
                        | DropReason::LbNewFlowRate
                )
            ) {
                panic!("dropped for lack of state: {:?}", p.meta.verdict);
            }
            let Some(l) = listener.as_ref() else { continue };
            let table = l.backend_for(&key).map(|b| b.id.as_bytes()[4]);
            match (p.meta.verdict, p.meta.session) {
                (Verdict::Pass, None) => assert_eq!(Some(self.backend_of(p)), table),
                (Verdict::Pass, Some(r)) => {
                    let got = self.backend_of(p);
                    let slot = (r.index(), r.generation());
                    match self.chosen.get(&slot) {
                        Some(&(_, b)) if serving(b) => assert_eq!(got, b, "moved"),
                        Some(_) => assert_eq!(Some(got), table, "re-hashed"),
                        None => assert_eq!(Some(got), table, "new"),
                    }
                    self.chosen.insert(slot, (r, got));
                }
                (Verdict::Drop(DropReason::LbBackendDown), Some(r)) => {
                    let b = self.chosen.get(&(r.index(), r.generation())).map(|c| c.1);
                    assert!(b.is_none_or(|b| !serving(b) || l.on_down() == OnDown::Reset));
                }
                (Verdict::Tx(port), Some(r)) => {
                    // A reset flow's TCP segment, answered: the RST from the VIP.
                    assert_eq!(port, PortId(5));
                    let b = self.chosen.get(&(r.index(), r.generation())).map(|c| c.1);
                    assert!(b.is_none_or(|b| !serving(b) || l.on_down() == OnDown::Reset));
                    assert_eq!(p.meta.flow.proto, proto::TCP);
                    assert_ne!(p.meta.tcp_flags & nf_core::wire::tcp::tcp_flags::RST, 0);
                    assert_eq!(p.meta.flow.src_raw()[..4], VIP);
                }
                _ => {}
            }
        }
        self.check_counts();
    }

    /// Moves every session to a fresh stage built from the current configuration.
    fn handover(&mut self) {
        let Some(mut next) = self.fresh() else {
            return;
        };
        let mut installed = 0;
        for (chunk, records) in self.export_all() {
            let r = next.import(self.now, &chunk).expect("a chunk just made");
            assert_eq!(r.imported + r.refused + r.skipped, records);
            installed += r.imported;
        }
        assert_eq!(next.v4().len(), installed);
        // The backends chosen, by the sessions' original keys in the new stage.
        self.take_over(next);
    }

    /// Every slot's session count equals the live sessions that hold it.
    fn check_counts(&mut self) {
        self.chosen.retain(|_, (r, _)| self.ct.is_live(*r));
        let lb = self.ct.service();
        let Some(l) = lb.listeners().listeners().first() else {
            return;
        };
        let on = l.on();
        let mut held: BTreeMap<BackendId, u32> = BTreeMap::new();
        for (r, _) in self.chosen.values() {
            if let Some(id) = self.ct.value(*r).and_then(|v| lb.backend_of(v)) {
                *held.entry(id).or_default() += 1;
            }
        }
        for b in 0..BACKENDS {
            assert_eq!(
                lb.sessions_of(&on, &id(b)),
                held.get(&id(b)).copied().unwrap_or(0)
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let mut cfg = ConntrackConfig::new([9; 16]).sizes(Sizes {
        v4: u32::from(input.capacity % 32) + 1,
        v6: 4,
    });
    cfg.v4.early_drop = input.early_drop;
    // Long enough for every change of a run: the replica misses nothing.
    cfg.v4.journal = 4096;
    // Small wheels, zone and fragment tables: a run builds up to a few stages.
    cfg.v4.wheel_slots = 64;
    cfg.v6.wheel_slots = 64;
    cfg.v4.max_zones = 4;
    cfg.v6.max_zones = 4;
    cfg.fragments.capacity = 64;
    let config = Config {
        members: (0..3).map(|b| (b, (1, Health::Up))).collect(),
        encap: false,
        rehash: false,
        one_sided: false,
        selection: Selection::Maglev { size: 211 },
        fields: HashFields::FiveTuple,
        limit: input
            .limit
            .map(|(r, b)| NewFlowLimit::new(u32::from(r) + 1, u32::from(b % 8) + 1)),
    };
    let make = |config: &Config| {
        let mut lb = Lb::new(config.listeners()?);
        if input.rst {
            lb = lb.with_tcp_resets(PortId(5));
        }
        Conntrack::new(cfg.clone(), lb).ok()
    };
    let (Some(ct), Some(replica)) = (make(&config), make(&config)) else {
        return;
    };
    let mut run = Run {
        parse: ParseStage::default(),
        ct,
        replica,
        ct_cfg: cfg,
        rst: input.rst,
        cfg: config,
        now: Instant::from_nanos(1_000_000_000),
        batch: Vec::new(),
        chosen: BTreeMap::new(),
    };
    for op in input.ops.iter().take(256) {
        match *op {
            Op::Pkt {
                flow,
                udp,
                tcp,
                reply,
            } => {
                let sport = 40_000 + u16::from(flow % 16);
                let (p, dport) = if udp {
                    (proto::UDP, 53)
                } else {
                    (proto::TCP, 80)
                };
                let frame = match reply {
                    None => {
                        let f = Frame::ipv4(CLIENT, VIP);
                        if udp {
                            f.udp(sport, dport)
                        } else {
                            f.tcp(sport, dport, tcp)
                        }
                    }
                    Some(b) => {
                        let f = Frame::ipv4([10, 0, 0, b % BACKENDS], CLIENT);
                        if udp {
                            f.udp(8080, sport)
                        } else {
                            f.tcp(8080, sport, tcp)
                        }
                    }
                };
                let key = reply
                    .is_none()
                    .then(|| FlowKey::v4(ZoneId(0), CLIENT, VIP, p, sport, dport));
                if let Ok(f) = frame.to_vec() {
                    run.batch.push((f, key));
                }
                if run.batch.len() == 64 {
                    run.flush();
                }
            }
            Op::Error { flow, udp, to, cut } => {
                let sport = 40_000 + u16::from(flow % 16);
                let dport = if udp { 53 } else { 80 };
                let quoted = match to {
                    Some(b) => Frame::ipv4(CLIENT, [10, 0, 0, b % BACKENDS]),
                    None => Frame::ipv4(VIP, CLIENT),
                };
                let (sp, dp) = match to {
                    Some(_) => (sport, 8080),
                    None => (dport, sport),
                };
                let quoted = if udp {
                    quoted.udp(sp, dp)
                } else {
                    quoted.tcp(sp, dp, 0x10)
                };
                let Ok(q) = quoted.without_ethernet().to_vec() else {
                    continue;
                };
                let q = &q[..cut.map_or(q.len(), |c| usize::from(c).min(q.len()))];
                let error = match to {
                    Some(_) => Frame::ipv4([10, 9, 9, 9], CLIENT).icmp_error(3, 4, q),
                    None => Frame::ipv4(CLIENT, VIP).icmp_error(3, 3, q),
                };
                if let Ok(f) = error.to_vec() {
                    run.batch.push((f, None));
                }
                if run.batch.len() == 64 {
                    run.flush();
                }
            }
            Op::Cut => run.flush(),
            Op::Handover => {
                run.flush();
                run.handover();
            }
            Op::Sync(n) => {
                run.flush();
                run.sync(usize::from(n) + 1);
            }
            Op::Failover => {
                run.flush();
                run.failover();
            }
            Op::Time(n) => {
                run.flush();
                run.now = run
                    .now
                    .checked_add(Duration::from_millis(u64::from(n) * 100))
                    .unwrap_or(run.now);
                run.ct.handle_timeout(run.now, 64);
                run.check_counts();
            }
            change => {
                run.flush();
                let m = &mut run.cfg.members;
                match change {
                    Op::Add(b, w) => {
                        m.insert(b % BACKENDS, (u32::from(w % 4), Health::Up));
                    }
                    Op::Remove(b) => {
                        m.remove(&(b % BACKENDS));
                    }
                    Op::Health(b, h) => {
                        if let Some(e) = m.get_mut(&(b % BACKENDS)) {
                            e.1 = [Health::Up, Health::Draining, Health::Down][usize::from(h % 3)];
                        }
                    }
                    Op::Weight(b, w) => {
                        if let Some(e) = m.get_mut(&(b % BACKENDS)) {
                            e.0 = u32::from(w % 4);
                        }
                    }
                    Op::Mode {
                        encap,
                        rehash,
                        one_sided,
                        fields,
                        rendezvous,
                    } => {
                        run.cfg.encap = encap;
                        run.cfg.rehash = rehash;
                        run.cfg.one_sided = one_sided;
                        run.cfg.selection = if rendezvous {
                            Selection::Rendezvous
                        } else {
                            Selection::Maglev { size: 211 }
                        };
                        run.cfg.fields = [
                            HashFields::FiveTuple,
                            HashFields::ThreeTuple,
                            HashFields::TwoTuple,
                            HashFields::SourceIp,
                        ][usize::from(fields % 4)];
                    }
                    _ => {}
                }
                run.swap();
                run.check_counts();
            }
        }
    }
    run.flush();
});
