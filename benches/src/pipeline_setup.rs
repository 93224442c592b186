//! The `pipeline` scenario's gateway, sessions, received frames and replay loop, shared with
//! its callgrind driver (`benches/examples/pipeline_instructions.rs`, which includes this
//! file by path), so that the driver counts the instructions of what the scenario times.

use crate::nat_setup::{self, BATCH_NS, START_NS};
use crate::replay::Rng;
use crate::tunnel_frames::{HEADROOM, offloaded, underlay};
use nf_core::conntrack::Conntrack;
use nf_core::flow::proto;
use nf_core::wire::tcp::tcp_flags;
use nf_core::{
    Batch, Chain, FlowKey, Instant, Packet, ParseConfig, SessionRef, Stage, StageExt, ZoneId,
};
use nf_nat::Snat;
use nf_policy::{SecurityGroups, SgConfig, SgRule, SgRuleSetBuilder};
use nf_tunnel::{
    DecapConfig, DecapStage, EncapConfig, EncapStage, OptionsBuilder, TunnelKind, Underlay,
    VniSource,
};
use std::collections::VecDeque;
use std::sync::Arc;

/// Received frames replayed.
pub(crate) const PACKETS: usize = 1 << 18;
pub(crate) const BATCH: usize = 64;
pub(crate) const ZONES: u32 = 16;
/// Outer headers: Ethernet, IPv4, UDP, Geneve without options.
pub(crate) const OUTER: usize = 50;
/// The inner frame: Ethernet, IPv4, TCP ACK or UDP datagram.
pub(crate) const INNER: usize = 64;
pub(crate) const FRAME: usize = OUTER + INNER;

// The two services' session values share the 16 bytes an IPv4 session record holds in its
// one cache line (at 17 or more, every record takes two: 13–20 ns more per packet here).
const _: () = assert!(
    core::mem::size_of::<(nf_policy::SgDecision, nf_nat::Translation)>() <= 16,
    "an IPv4 session record of the pipeline's conntrack is one 64-byte line"
);

/// Our gateway.
pub(crate) type Gateway = Chain<Chain<DecapStage, Conntrack<(SecurityGroups, Snat)>>, EncapStage>;

/// Flow `i`: a unique inside address and port in 10/8 (zone 1 + i mod 16), to one of 1021
/// destinations on port 443, TCP (75%) or UDP, which the rules allow.
pub(crate) fn flow(i: usize) -> FlowKey {
    let key = nat_setup::flow(i);
    let zone = ZoneId(1 + i as u32 % ZONES);
    FlowKey::v4(
        zone,
        key.src_bytes().try_into().expect("v4"),
        key.dst_bytes().try_into().expect("v4"),
        key.proto,
        key.src_port,
        443,
    )
}

/// The sender's underlay (a hypervisor's vSwitch: `tunnel_frames::underlay`) seen from our
/// side: we send back to it.
pub(crate) fn egress_underlay() -> Underlay {
    let u = underlay();
    Underlay {
        src_mac: u.dst_mac,
        dst_mac: u.src_mac,
        src: u.dst,
        dst: u.src,
    }
}

/// A Geneve encapsulation (no options) over `u`, VNI = the packet's zone.
pub(crate) fn encap_config(u: Underlay) -> EncapConfig {
    let mut c = EncapConfig::geneve(OptionsBuilder::new(), 0, u);
    c.vni = VniSource::Zone;
    c
}

/// Builds received frames: each key's 64-byte inner frame (TCP with `flags`) encapsulated by
/// the sender, VNI = the key's zone.
pub(crate) struct Sender(EncapStage);

impl Sender {
    pub(crate) fn new() -> Self {
        Self(EncapStage::new(encap_config(underlay())).expect("encap config"))
    }

    pub(crate) fn frames(&mut self, keys: &[FlowKey], flags: u8) -> Vec<[u8; FRAME]> {
        let mut out = Vec::with_capacity(keys.len());
        let mut batch = Batch::new();
        for chunk in keys.chunks(BATCH) {
            for k in chunk {
                let inner = nat_setup::frame(k, flags);
                let mut p = Packet::with_headroom(&inner, HEADROOM);
                nf_core::parse_frame(&inner, &mut p.meta, &ParseConfig::default())
                    .expect("inner frame parses");
                p.meta.zone = k.zone;
                batch.push(p).expect("batch room");
            }
            self.0.process(Instant::ZERO, &mut batch);
            out.extend(
                batch
                    .drain()
                    .map(|p| <[u8; FRAME]>::try_from(p.data()).expect("114-byte frame")),
            );
        }
        out
    }
}

/// Our gateway, no session yet.
pub(crate) fn gateway(sessions: usize, rules: &[SgRule]) -> Gateway {
    let decap = DecapConfig {
        ports: vec![(6081, TunnelKind::Geneve)],
        ..DecapConfig::default()
    };
    let decap = DecapStage::new(offloaded(decap)).expect("decap config");
    let mut b = SgRuleSetBuilder::default();
    for r in rules {
        b.push(*r);
    }
    let set = b.build().expect("rule set");
    let tables = Arc::new((1..=ZONES).map(|z| (ZoneId(z), set.clone())).collect());
    let sg = SecurityGroups::new(tables, SgConfig::default());
    // Room for the new flows alive at once (twice the expected number) beside `sessions`.
    let room = sessions + (2.0 * NEW_SHARE * (LAG * BATCH) as f64) as usize;
    let ct = Conntrack::new(
        nat_setup::conntrack_config(room),
        (sg, nat_setup::snat_with(nf_nat::Profile::Hyperplane, room)),
    )
    .expect("conntrack config");
    let encap = EncapStage::new(encap_config(egress_underlay())).expect("encap config");
    decap.then(ct).then(encap)
}

/// Opens every flow through the gateway and returns each flow's reply key (the allocator's
/// public address and port): TCP by a three-way handshake, UDP by a datagram each way.
pub(crate) fn open(gw: &mut Gateway, sender: &mut Sender, sessions: usize) -> Vec<FlowKey> {
    let now = Instant::from_nanos(START_NS);
    let mut replies = Vec::with_capacity(sessions);
    let mut batch = Batch::new();
    let mut run = |gw: &mut Gateway, frames: Vec<[u8; FRAME]>, what: &str| {
        for f in &frames {
            batch
                .push(Packet::with_headroom(f, HEADROOM))
                .expect("batch room");
        }
        gw.process(now, &mut batch);
        batch
            .drain()
            .map(|p| {
                assert!(p.meta.verdict.is_pass(), "{what}: {:?}", p.meta.verdict);
                p.meta.session.expect("a session")
            })
            .collect::<Vec<_>>()
    };
    let all: Vec<FlowKey> = (0..sessions).map(flow).collect();
    for chunk in all.chunks(BATCH) {
        let at = replies.len();
        for s in run(gw, sender.frames(chunk, tcp_flags::SYN), "opening") {
            replies.push(gw.first.second.info(s).expect("live").reply);
        }
        let back = replies.get(at..).expect("this chunk's replies").to_vec();
        run(
            gw,
            sender.frames(&back, tcp_flags::SYN | tcp_flags::ACK),
            "reply",
        );
        for s in run(gw, sender.frames(chunk, tcp_flags::ACK), "ack") {
            let info = gw.first.second.info(s).expect("live");
            assert!(
                info.original.proto != proto::TCP || info.established,
                "{:?} after the handshake",
                info.state
            );
        }
    }
    replies
}

/// Share of the packets that open a new flow.
pub(crate) const NEW_SHARE: f64 = 0.01;
/// Batches a new flow's session lives before both sides remove it (the stream repeats
/// after far more batches, so every new flow is new when it comes round again).
pub(crate) const LAG: usize = 512;

/// The received frames, and which of them open a new flow.
pub(crate) struct Traffic {
    pub(crate) frames: Vec<[u8; FRAME]>,
    pub(crate) new: Vec<bool>,
}

impl Traffic {
    pub(crate) fn batches(&self) -> usize {
        self.frames.len() / BATCH
    }
}

/// New flow `n`: a UDP query from a host of 172.16/12 (its own address and port, used once
/// in the stream) to a resolver on port 53, which the rules allow, in a zone of the stream.
fn new_flow(n: usize, zone: u32) -> FlowKey {
    let n = n as u32;
    let src = (0xac10_0000 | (n >> 4)).to_be_bytes();
    let dst = (0xc612_0000 + n % nat_setup::DESTINATIONS).to_be_bytes();
    FlowKey::v4(
        ZoneId(1 + zone % ZONES),
        src,
        dst,
        proto::UDP,
        30000 + (n & 15) as u16,
        53,
    )
}

/// The received frames: established sessions' packets, uniform, either direction, and a
/// [`NEW_SHARE`] of first packets of new flows.
pub(crate) fn traffic(
    sender: &mut Sender,
    sessions: usize,
    replies: &[FlowKey],
    packets: usize,
) -> Traffic {
    let mut rng = Rng::new(0x9A7E_3A7E);
    let mut new = Vec::with_capacity(packets);
    let mut opened = 0;
    let keys: Vec<FlowKey> = (0..packets)
        .map(|_| {
            let fresh = (rng.next_u64() as f64 / u64::MAX as f64) < NEW_SHARE;
            new.push(fresh);
            let i = rng.below(sessions as u64) as usize;
            if fresh {
                opened += 1;
                new_flow(opened, i as u32)
            } else if rng.next_u64() & 1 == 0 {
                flow(i)
            } else {
                replies[i]
            }
        })
        .collect();
    Traffic {
        frames: sender.frames(&keys, tcp_flags::ACK),
        new,
    }
}

/// What a side processes a batch of received frames with, and how it forgets a new flow.
pub(crate) trait Process {
    /// What names a session made by a batch (read from the packet after it).
    type Handle;
    fn run_batch(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>);
    fn handle(p: &Packet<Vec<u8>>) -> Option<Self::Handle>;
    fn remove(&mut self, h: Self::Handle);
}

impl Process for Gateway {
    type Handle = SessionRef;
    fn run_batch(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        Stage::process(self, now, batch);
    }
    fn handle(p: &Packet<Vec<u8>>) -> Option<SessionRef> {
        p.meta.session
    }
    fn remove(&mut self, h: SessionRef) {
        self.first.second.remove(Instant::ZERO, h);
    }
}

/// One side's replay loop: restore, process, and remove the sessions the batch [`LAG`]
/// batches before made for its new flows (both sides alike; all of it timed).
pub(crate) struct Side<T: Process> {
    pub(crate) gw: T,
    pub(crate) batch: Batch<Vec<u8>>,
    next: usize,
    clock: u64,
    /// Per batch of the last [`LAG`]: its new flows' handles.
    pending: VecDeque<Vec<T::Handle>>,
}

impl<T: Process> Side<T> {
    pub(crate) fn new(gw: T) -> Self {
        Self {
            gw,
            batch: working_batch(),
            next: 0,
            clock: 0,
            pending: VecDeque::with_capacity(LAG + 1),
        }
    }

    pub(crate) fn step(&mut self, t: &Traffic) -> u64 {
        let b = self.next;
        if self.pending.len() >= LAG {
            for h in self.pending.pop_front().unwrap_or_default() {
                self.gw.remove(h);
            }
        }
        restore(&mut self.batch, &t.frames, b);
        let now = Instant::from_nanos(START_NS + self.clock * BATCH_NS);
        self.gw.run_batch(now, &mut self.batch);
        let new = t.new.get(b * BATCH..).unwrap_or(&[]);
        let made = self
            .batch
            .packets()
            .iter()
            .zip(new)
            .filter(|(_, n)| **n)
            .filter_map(|(p, _)| T::handle(p))
            .collect();
        self.pending.push_back(made);
        self.next = (b + 1) % t.batches();
        self.clock += 1;
        self.batch.packets().first().map_or(0, |p| p.len() as u64)
    }
}

/// A batch of 64 packets with room for a received frame behind [`HEADROOM`].
pub(crate) fn working_batch() -> Batch<Vec<u8>> {
    let mut batch = Batch::new();
    for _ in 0..BATCH {
        let p = Packet::new(vec![0u8; HEADROOM + FRAME], HEADROOM, FRAME).expect("fits");
        batch.push(p).expect("batch room");
    }
    batch
}

/// Resets batch `b`'s packets to their received frames (fresh metadata, the frame's bytes)
/// and prefetches the next batch's frames.
pub(crate) fn restore(batch: &mut Batch<Vec<u8>>, frames: &[[u8; FRAME]], b: usize) {
    let at = b * BATCH;
    for (p, f) in batch.packets_mut().iter_mut().zip(&frames[at..at + BATCH]) {
        if p.reset(HEADROOM, FRAME).is_ok() {
            p.data_mut().copy_from_slice(f);
        }
    }
    for f in frames.iter().skip(at + BATCH).take(BATCH) {
        nf_core::prefetch_l2(f);
    }
}
