//! Replaying parsed traffic through a connection tracker: the `conntrack-stage` scenario and
//! the `conntrack-stage` criterion group share this module (the bench includes it by path).
//!
//! - [`Traffic`]: real Ethernet/IPv4 frames built once and parsed once by `ParseStage`; what
//!   is kept is each packet's parsed [`Meta`] (the template), in batches. Packets of
//!   established sessions (TCP: a bare ACK) pick a session uniformly and either direction;
//!   a share of the packets opens a new flow instead (a UDP first packet, a key used once in
//!   the whole stream).
//! - [`Replay`]: one side's loop. Per batch: restore the working batch's packets' `meta` from
//!   the templates ([`Stream::restore`]: verdict Pass, no session), process it at a clock that
//!   advances [`BATCH_NS`] per batch, then remove the sessions that the batch [`LAG`] batches
//!   earlier created, through the handle the side wrote into the packet's `Meta`. A new-flow
//!   key therefore lives `LAG` batches and is gone long before the stream wraps round to it:
//!   every new flow is new when it arrives, and the table never fills. Both sides run exactly
//!   this loop (restore and removals included in their times).
//! - [`Ours`]: the `Conntrack` stage ([`make_stage`]) with any session service;
//!   [`PeerConntrack`]: `hashbrown` + `ahash` holding both directions, a small state and a
//!   deadline per session (and, through [`PeerConntrack::process_admitting`], a policy that
//!   decides new flows).
//! - [`create_established`]: sessions made through a stage's own new-flow path (so every
//!   session holds its service's value), then marked established.

use nf_core::conntrack::{
    Conntrack, ConntrackConfig, SessionService, SessionState, Sizes, TimeoutProfile,
};
use nf_core::flow::proto;
use nf_core::wire::tcp::tcp_flags;
use nf_core::{
    Batch, Direction, FlowKey, Instant, Meta, Packet, ParseStage, SessionRef, Stage, ZoneId,
};
use nf_core::{NO_NEXT_HOP, flags};

/// The clock starts here and advances this much per batch on both sides (64 packets at about
/// 30 ns each), so that deadlines move as they do at line rate.
pub(crate) const START_NS: u64 = 1_000_000_000;
/// See [`START_NS`].
pub(crate) const BATCH_NS: u64 = 2_000;
/// Batches a new flow's session lives before its removal.
pub(crate) const LAG: usize = 1024;
/// The conntrack tables' hash secret.
const SECRET: [u8; 16] = *b"bench secret key";

/// The stage under test, with the no-op service `()`: the one place that constructs it.
pub(crate) fn make_stage(capacity: u32) -> Conntrack {
    let cfg = ConntrackConfig::new(SECRET).sizes(Sizes {
        v4: capacity,
        v6: 1024,
    });
    Conntrack::new(cfg, ()).expect("stage config")
}

/// Both sides holding `flows` as established sessions, in tables of `capacity` sessions.
pub(crate) fn established_sides(flows: &[FlowKey], capacity: u32) -> (Ours, PeerConntrack) {
    let now = Instant::from_nanos(START_NS);
    let mut stage = make_stage(capacity);
    let mut peer = PeerConntrack::with_capacity(flows.len() + 2 * LAG);
    for f in flows {
        let st = established(f);
        let t = stage.v4_mut();
        let r = t.insert(now, f, &f.reversed(), st, ()).expect("fits");
        t.set_state(r, now, st, true);
        peer.insert(now, f, st);
    }
    (Ours(stage), peer)
}

/// Creates a session for every flow through `ct`'s own new-flow path (its service decides
/// and keeps its value; the service must admit every flow), then marks each established.
pub(crate) fn create_established<S: SessionService>(ct: &mut Conntrack<S>, flows: &[FlowKey]) {
    let now = Instant::from_nanos(START_NS);
    let mut batch = working_batch(64);
    let mut template = Meta::default();
    template.flags = flags::L3_VALID | flags::L4_VALID;
    (template.l3, template.l4, template.payload) = (14, 34, 54);
    template.ethertype = 0x0800;
    for chunk in flows.chunks(64) {
        let metas: Vec<Meta> = chunk
            .iter()
            .map(|f| {
                let mut m = template;
                m.flow = *f;
                m.zone = f.zone;
                m.tcp_flags = if f.proto == proto::TCP {
                    tcp_flags::SYN
                } else {
                    0
                };
                m
            })
            .collect();
        restore(&mut batch, &metas);
        let len = metas.len();
        ct.process(now, &mut batch);
        for p in batch.packets().iter().take(len) {
            let r = p.meta.session.expect("created");
            ct.v4_mut()
                .set_state(r, now, established(&p.meta.flow), true);
        }
    }
}

/// The state an established session of `f`'s protocol is in.
fn established(f: &FlowKey) -> SessionState {
    if f.proto == proto::TCP {
        SessionState::TcpEstablished
    } else {
        SessionState::UdpReplied
    }
}

/// The scenarios' sessions: `n` distinct IPv4 flows whose reverses are distinct from every
/// flow too (sources in 10/8, destinations in 100.64/10), 75% TCP, 16 zones.
pub(crate) fn make_flows(n: usize, seed: u64) -> Vec<FlowKey> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let host = (i / 60_000) as u32;
            let sport = 1024 + (i % 60_000) as u16;
            let src = (0x0a00_0000 | host).to_be_bytes();
            let dst = (0x6440_0000 | (rng.next_u64() as u32 & 0x003f_ffff)).to_be_bytes();
            let proto = if i % 4 == 0 { proto::UDP } else { proto::TCP };
            FlowKey::v4(ZoneId((i % 16) as u32), src, dst, proto, sport, 443)
        })
        .collect()
}

/// Parsed metadata of a packet stream, kept the way a stage after the parse stage meets it:
/// per packet only what differs between packets (the flow key and the TCP flags, 48 bytes)
/// is read from memory; the rest of `Meta` (184 bytes) comes from the packet's *shape*, one
/// of the few distinct parsed templates (TCP ACK, UDP datagram: header offsets, flags), which
/// stay in L1. A real pipeline's parse stage leaves `Meta` in L1 after reading about 64 bytes
/// of frame; copying whole 184-byte templates from a 200 MB stream instead cost 10-15 ns per
/// packet of memory bandwidth on both sides, more than the stage's own work in some scenarios.
/// [`Stream::new`] checks that every packet restores to exactly its parsed `Meta`.
pub(crate) struct Stream {
    shapes: Vec<Meta>,
    packed: Vec<Packed>,
}

/// One packet of a [`Stream`].
#[derive(Clone, Copy)]
struct Packed {
    flow: FlowKey,
    tcp_flags: u8,
    shape: u8,
}

impl Stream {
    /// The stream of `metas`, which may have at most 256 shapes.
    pub(crate) fn new(metas: &[Meta]) -> Self {
        let mut shapes: Vec<Meta> = Vec::new();
        let packed = metas
            .iter()
            .map(|m| {
                let mut shape = *m;
                shape.flow = FlowKey::default();
                shape.tcp_flags = 0;
                let at = match shapes.iter().position(|s| *s == shape) {
                    Some(at) => at,
                    None => {
                        shapes.push(shape);
                        shapes.len() - 1
                    }
                };
                Packed {
                    flow: m.flow,
                    tcp_flags: m.tcp_flags,
                    shape: u8::try_from(at).expect("at most 256 shapes"),
                }
            })
            .collect();
        let s = Self { shapes, packed };
        for (i, m) in metas.iter().enumerate() {
            assert!(s.meta(i) == *m, "packet {i} restores as parsed");
        }
        s
    }

    /// Writes packet `i`'s metadata over `m`, field by field: a whole-`Meta` assignment
    /// (184 bytes) compiles to a `memcpy` call whose `rep movsb` start-up cost more than the
    /// copy itself.
    #[inline(always)]
    fn write(&self, i: usize, m: &mut Meta) {
        let c = &self.packed[i];
        let s = &self.shapes[usize::from(c.shape)];
        m.verdict = s.verdict;
        m.flow = c.flow;
        m.flow_hash = s.flow_hash;
        m.session = s.session;
        m.next_hop = s.next_hop;
        m.zone = s.zone;
        (m.l3, m.l4, m.payload, m.ethertype) = (s.l3, s.l4, s.payload, s.ethertype);
        (m.vlan, m.vlan_count) = (s.vlan, s.vlan_count);
        m.tcp_flags = c.tcp_flags;
        m.icmp_type = s.icmp_type;
        m.direction = s.direction;
        m.flags = s.flags;
        m.tunnel = s.tunnel;
    }

    /// Packet `i`'s metadata, written over one that differs from it in every field we
    /// can set (so a field [`Self::write`] missed shows up).
    fn meta(&self, i: usize) -> Meta {
        let mut m = Meta::default();
        m.verdict = nf_core::Verdict::Drop(nf_core::DropReason::NoSession);
        m.flow_hash = u64::MAX;
        m.next_hop = 12345;
        m.zone = ZoneId(999);
        (m.l3, m.l4, m.payload, m.ethertype) = (999, 999, 999, 999);
        (m.vlan, m.vlan_count) = ([999; 2], 3);
        m.icmp_type = 99;
        m.direction = Direction::Reply;
        m.flags = u16::MAX;
        m.tunnel.depth = 9;
        m.tunnel.vni = 999;
        self.write(i, &mut m);
        m
    }

    /// Packets in the stream.
    pub(crate) fn len(&self) -> usize {
        self.packed.len()
    }

    /// Resets the metadata of `batch`'s packets to packets `from..` of the stream (verdict
    /// Pass, no session), and prefetches the next batch's packets of the stream.
    ///
    /// Without the prefetch, reading the stream stalled on memory (half of the driver's own
    /// samples in `perf record`, several ns per packet on both sides): the tables' random
    /// misses leave the hardware prefetchers behind, while a real stage's next packets are
    /// already where the NIC wrote them.
    #[inline]
    pub(crate) fn restore(&self, batch: &mut Batch<Vec<u8>>, from: usize) {
        let n = batch.len().min(self.len().saturating_sub(from));
        for (i, p) in batch.packets_mut().iter_mut().take(n).enumerate() {
            self.write(from + i, &mut p.meta);
        }
        for c in self.packed.iter().skip(from + n).take(n) {
            nf_core::prefetch_l2(c);
        }
    }
}

/// Parsed packet templates, in batches, and where the new flows are.
pub(crate) struct Traffic {
    /// Packets per batch.
    pub(crate) batch: usize,
    /// Parsed metadata of every packet, `batch` per batch (what the checks read; edit it
    /// through [`Traffic::edit`] so that the replayed stream follows).
    templates: Vec<Meta>,
    /// What the replay restores from.
    stream: Stream,
    /// Stream positions of the new-flow packets, ascending.
    new_at: Vec<u32>,
    /// `new_at[new_from[b]..new_from[b + 1]]` are batch `b`'s.
    new_from: Vec<u32>,
}

impl Traffic {
    /// `packets` (rounded down to whole batches) over `flows` (established, uniform, either
    /// direction), each a new flow with probability `new_share`. `rand` drives every choice.
    pub(crate) fn new(
        flows: &[FlowKey],
        packets: usize,
        batch: usize,
        new_share: f64,
        mut rand: impl FnMut() -> u64,
    ) -> Self {
        let batches = packets / batch;
        let mut new_at = Vec::new();
        let mut new_from = vec![0];
        let mut templates = Vec::with_capacity(batches * batch);
        let mut parse = ParseStage::default();
        let mut b = Batch::new();
        for _ in 0..batches {
            let mut keys = Vec::with_capacity(batch);
            for _ in 0..batch {
                let unit = (rand() >> 11) as f64 / (1u64 << 53) as f64;
                let (key, fl) = if unit < new_share {
                    new_at.push((templates.len() + keys.len()) as u32);
                    (new_flow(new_at.len() - 1), 0)
                } else {
                    let f = flows[((u128::from(rand()) * flows.len() as u128) >> 64) as usize];
                    let f = if rand() & 1 == 0 { f } else { f.reversed() };
                    let fl = if f.proto == proto::TCP {
                        tcp_flags::ACK
                    } else {
                        0
                    };
                    (f, fl)
                };
                let frame = frame(&key);
                let mut p = Packet::new(frame, 0, FRAME_LEN).expect("frame fits");
                p.meta.zone = key.zone;
                let _ = b.push(p);
                keys.push((key, fl));
            }
            parse.process(Instant::ZERO, &mut b);
            for (p, (key, fl)) in b.drain().zip(keys) {
                assert!(p.meta.verdict.is_pass() && p.meta.has(flags::L4_VALID));
                assert_eq!(
                    (p.meta.flow, p.meta.tcp_flags),
                    (key, fl),
                    "parsed as built"
                );
                templates.push(p.meta);
            }
            new_from.push(new_at.len() as u32);
        }
        Self {
            batch,
            stream: Stream::new(&templates),
            templates,
            new_at,
            new_from,
        }
    }

    /// Changes templates (`f(batch, templates of the batch)` for every batch), then
    /// rebuilds the replayed stream.
    pub(crate) fn edit(&mut self, mut f: impl FnMut(usize, &mut [Meta])) {
        for (b, metas) in self.templates.chunks_mut(self.batch).enumerate() {
            f(b, metas);
        }
        self.stream = Stream::new(&self.templates);
    }

    /// Every packet's parsed metadata, in stream order.
    pub(crate) fn templates(&self) -> &[Meta] {
        &self.templates
    }

    /// Restores batch `b`'s metadata into `batch` (see [`Stream`]).
    #[inline]
    pub(crate) fn restore(&self, batch: &mut Batch<Vec<u8>>, b: usize) {
        self.stream.restore(batch, b * self.batch);
    }

    /// Number of batches in the stream.
    pub(crate) fn batches(&self) -> usize {
        self.new_from.len() - 1
    }

    /// Batch `b`'s templates.
    pub(crate) fn metas(&self, b: usize) -> &[Meta] {
        &self.templates[b * self.batch..(b + 1) * self.batch]
    }

    /// Ordinals (indices into the new flows) of batch `b`'s new-flow packets.
    fn new_in(&self, b: usize) -> core::ops::Range<usize> {
        self.new_from[b] as usize..self.new_from[b + 1] as usize
    }

    /// Positions within batch `b` of its new-flow packets.
    pub(crate) fn new_positions(&self, b: usize) -> impl Iterator<Item = usize> + '_ {
        self.new_in(b)
            .map(move |o| self.new_at[o] as usize - b * self.batch)
    }

    /// Share of the stream's packets that open a new flow.
    pub(crate) fn new_share(&self) -> f64 {
        self.new_at.len() as f64 / self.templates.len() as f64
    }
}

/// New flow number `n`: UDP from 172.16/12 to port 53, never an established flow or its
/// reverse (those are 10/8 <-> 100.64/10 port 443) and distinct for every `n`.
fn new_flow(n: usize) -> FlowKey {
    let host = (n / 60_000) as u32;
    let src = (0xac10_0000 | host).to_be_bytes();
    let dst = (0x6440_0000 | ((n as u32).wrapping_mul(0x9e37_79b9) >> 10)).to_be_bytes();
    let sport = 1024 + (n % 60_000) as u16;
    FlowKey::v4(ZoneId((n % 16) as u32), src, dst, proto::UDP, sport, 53)
}

const FRAME_LEN: usize = 64;

/// A 64-byte Ethernet/IPv4 frame of `k` (TCP: a bare ACK; UDP: a datagram).
fn frame(k: &FlowKey) -> Vec<u8> {
    let (s, d) = (k.src_bytes(), k.dst_bytes());
    let ip = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
        [s[0], s[1], s[2], s[3]],
        [d[0], d[1], d[2], d[3]],
        64,
    );
    let mut out = Vec::with_capacity(FRAME_LEN);
    if k.proto == proto::TCP {
        let b = ip.tcp(k.src_port, k.dst_port, 1, 1000).ack(1);
        let pad = vec![0u8; FRAME_LEN - b.size(0)];
        b.write(&mut out, &pad).expect("write");
    } else {
        let b = ip.udp(k.src_port, k.dst_port);
        let pad = vec![0u8; FRAME_LEN - b.size(0)];
        b.write(&mut out, &pad).expect("write");
    }
    out
}

/// A connection tracker as [`Replay`] drives it.
pub(crate) trait Side {
    /// What the side writes into a packet's `Meta` to name its session.
    type Handle: Copy;
    /// Tracks one batch.
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>);
    /// The session handle the side wrote into `meta`.
    fn handle(meta: &Meta) -> Option<Self::Handle>;
    /// Removes a session.
    fn remove(&mut self, h: Self::Handle);
}

/// Ours: the `Conntrack` stage. Sessions are removed from the table directly (no
/// `on_end`): a service that counts its sessions needs a side of its own.
pub(crate) struct Ours<S: SessionService = ()>(pub(crate) Conntrack<S>);

impl<S: SessionService> Side for Ours<S> {
    type Handle = SessionRef;
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.0.process(now, batch);
    }
    fn handle(meta: &Meta) -> Option<SessionRef> {
        meta.session
    }
    fn remove(&mut self, h: SessionRef) {
        self.0.v4_mut().remove(h);
    }
}

/// One side's replay loop over a [`Traffic`] (see the module docs).
pub(crate) struct Replay<S: Side> {
    pub(crate) side: S,
    batch: Batch<Vec<u8>>,
    next: usize,
    clock: u64,
    lag: usize,
    /// Per new flow (ordinal): its session while it lives.
    live: Vec<Option<S::Handle>>,
}

impl<S: Side> Replay<S> {
    pub(crate) fn new(side: S, traffic: &Traffic) -> Self {
        Self {
            side,
            batch: working_batch(traffic.batch),
            next: 0,
            clock: 0,
            lag: LAG.min(traffic.batches() / 2),
            live: vec![None; traffic.new_at.len()],
        }
    }

    /// The batch the next [`Replay::step`] processes.
    pub(crate) fn next_batch(&self) -> usize {
        self.next
    }

    /// The working batch as the last step left it.
    pub(crate) fn packets(&self) -> &[Packet<Vec<u8>>] {
        self.batch.packets()
    }

    /// Restores, tracks and retires one batch; returns a value to fold into `black_box`.
    pub(crate) fn step(&mut self, t: &Traffic) -> u64 {
        let b = self.next;
        t.restore(&mut self.batch, b);
        let now = Instant::from_nanos(START_NS + self.clock * BATCH_NS);
        self.side.process(now, &mut self.batch);
        let packets = self.batch.packets();
        for (o, at) in t.new_in(b).zip(t.new_positions(b)) {
            self.live[o] = packets.get(at).and_then(|p| S::handle(&p.meta));
        }
        let nb = t.batches();
        for o in t.new_in((b + nb - self.lag) % nb) {
            if let Some(h) = self.live[o].take() {
                self.side.remove(h);
            }
        }
        self.next = (b + 1) % nb;
        self.clock += 1;
        u64::from(packets[0].meta.direction == Direction::Reply)
            + u64::from(packets[0].meta.next_hop)
    }
}

/// Correctness before speed: steps both sides through `batches` batches in lockstep and
/// checks that ours (`created` reads its count of sessions created) creates one session per
/// new flow and passes every packet with a session, that both agree on every packet's
/// direction, and whatever `each(batch, index, ours, peer)` checks of each packet.
pub(crate) fn check_lockstep<A: Side, B: Side>(
    ours: &mut Replay<A>,
    peer: &mut Replay<B>,
    t: &Traffic,
    batches: usize,
    created: impl Fn(&A) -> u64,
    mut each: impl FnMut(usize, usize, &Packet<Vec<u8>>, &Packet<Vec<u8>>),
) {
    for _ in 0..batches {
        let b = ours.next_batch();
        assert_eq!(b, peer.next_batch());
        let before = created(&ours.side);
        ours.step(t);
        peer.step(t);
        let new = t.new_positions(b).count() as u64;
        assert_eq!(created(&ours.side) - before, new, "batch {b}");
        for (i, (o, p)) in ours.packets().iter().zip(peer.packets()).enumerate() {
            assert!(o.meta.verdict.is_pass() && o.meta.session.is_some());
            assert_eq!(o.meta.direction, p.meta.direction, "batch {b} packet {i}");
            each(b, i, o, p);
        }
    }
}

/// A batch of `n` packets for [`restore`] to fill in. Conntrack reads only their `Meta`; a
/// stage that rewrites in place (`lb-stage`) rewrites these bytes batch after batch, so each
/// starts as a real UDP frame: its UDP checksum is not zero, and a rewrite that keeps the
/// RFC 768 rule (a zero UDP checksum means none, and is left alone) does the same checksum
/// work as one that does not.
pub(crate) fn working_batch(n: usize) -> Batch<Vec<u8>> {
    let key = FlowKey::v4(
        ZoneId(0),
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        proto::UDP,
        1000,
        2000,
    );
    let bytes = frame(&key);
    assert_ne!(bytes[40..42], [0, 0], "a UDP checksum");
    let mut batch = Batch::new();
    for _ in 0..n {
        let _ = batch.push(Packet::new(bytes.clone(), 0, FRAME_LEN).expect("fits"));
    }
    batch
}

/// Resets each packet's metadata to its parsed template (verdict Pass, no session).
pub(crate) fn restore(batch: &mut Batch<Vec<u8>>, metas: &[Meta]) {
    for (p, m) in batch.packets_mut().iter_mut().zip(metas) {
        p.meta = *m;
    }
}

type PeerMap = hashbrown::HashMap<FlowKey, (u32, bool), ahash::RandomState>;

/// The peer: `hashbrown::HashMap` + `ahash` with both directions of every session (session
/// id, is-reply), and a `Vec` of records (original key, state, deadline) with a free list.
/// Per packet: one `get`; a hit steps the state and refreshes the deadline; a miss inserts
/// both directions. It writes the session id into `meta.next_hop` and the direction into
/// `meta.direction`.
pub(crate) struct PeerConntrack {
    map: PeerMap,
    recs: Vec<PeerRecord>,
    free: Vec<u32>,
    /// Timeout per state (nanoseconds), the same profile as ours.
    timeout_ns: [u64; SessionState::ALL.len()],
}

#[derive(Clone, Copy)]
struct PeerRecord {
    original: FlowKey,
    state: u8,
    deadline: u64,
}

impl PeerConntrack {
    pub(crate) fn with_capacity(sessions: usize) -> Self {
        let p = TimeoutProfile::default();
        Self {
            map: PeerMap::with_capacity_and_hasher(
                2 * sessions,
                ahash::RandomState::with_seeds(1, 2, 3, 4),
            ),
            recs: Vec::with_capacity(sessions),
            free: Vec::new(),
            timeout_ns: SessionState::ALL.map(|s| p.timeout(s).as_nanos()),
        }
    }

    /// Adds a session in `state`; returns its id.
    pub(crate) fn insert(&mut self, now: Instant, k: &FlowKey, state: SessionState) -> u32 {
        let rec = PeerRecord {
            original: *k,
            state: state as u8,
            deadline: now.as_nanos() + self.timeout_ns[state as usize],
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.recs[id as usize] = rec;
                id
            }
            None => {
                self.recs.push(rec);
                self.recs.len() as u32 - 1
            }
        };
        self.map.insert(*k, (id, false));
        self.map.insert(k.reversed(), (id, true));
        id
    }

    /// True if `k` names a session (either direction).
    pub(crate) fn contains(&self, k: &FlowKey) -> bool {
        self.map.contains_key(k)
    }
}

/// The peer's state step: the common transitions of TCP and UDP tracking.
fn step(state: u8, reply: bool, fl: u8) -> u8 {
    use SessionState as S;
    let s = SessionState::from_u8(state).unwrap_or(S::Other);
    let next = match s {
        _ if fl & tcp_flags::RST != 0 => S::TcpClosed,
        _ if fl & tcp_flags::FIN != 0 => S::TcpFinWait,
        S::TcpSynSent if reply && fl & tcp_flags::SYN != 0 => S::TcpSynRecv,
        S::TcpSynRecv if !reply && fl & tcp_flags::ACK != 0 => S::TcpEstablished,
        S::UdpUnreplied if reply => S::UdpReplied,
        s => s,
    };
    next as u8
}

impl PeerConntrack {
    /// [`Side::process`] where `admit` decides each new flow first: a refused one is dropped
    /// with `refused` and nothing is inserted.
    pub(crate) fn process_admitting(
        &mut self,
        now: Instant,
        batch: &mut Batch<Vec<u8>>,
        mut admit: impl FnMut(&Meta) -> bool,
        refused: nf_core::DropReason,
    ) {
        let now = now.as_nanos();
        for p in batch.packets_mut() {
            let m = &mut p.meta;
            if !m.verdict.is_pass() || !m.has(flags::L3_VALID) {
                continue;
            }
            if let Some(&(id, reply)) = self.map.get(&m.flow) {
                let r = &mut self.recs[id as usize];
                r.state = step(r.state, reply, m.tcp_flags);
                r.deadline = now + self.timeout_ns[usize::from(r.state)];
                m.next_hop = id;
                m.direction = if reply {
                    Direction::Reply
                } else {
                    Direction::Original
                };
            } else if admit(m) {
                let st = SessionState::initial(m.flow.proto, m.tcp_flags);
                m.next_hop = self.insert(Instant::from_nanos(now), &m.flow, st);
                m.direction = Direction::Original;
            } else {
                m.verdict = nf_core::Verdict::Drop(refused);
            }
        }
    }
}

impl Side for PeerConntrack {
    type Handle = u32;
    #[inline(always)]
    fn process(&mut self, now: Instant, batch: &mut Batch<Vec<u8>>) {
        self.process_admitting(now, batch, |_| true, nf_core::DropReason::ServiceRefused);
    }
    fn handle(meta: &Meta) -> Option<u32> {
        (meta.next_hop != NO_NEXT_HOP).then_some(meta.next_hop)
    }
    fn remove(&mut self, id: u32) {
        let k = self.recs[id as usize].original;
        self.map.remove(&k);
        self.map.remove(&k.reversed());
        self.free.push(id);
    }
}

/// Deterministic xorshift64* generator for synthetic traffic (no `rand` dependency needed).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}
