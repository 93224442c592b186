//! The `nat-established` scenario's sessions and traffic, shared with its callgrind driver
//! (`benches/examples/nat_instructions.rs`, which includes this file by path), so that the
//! driver counts the instructions of exactly what the scenario times.

use crate::replay::{Rng, Stream};
use nf_core::conntrack::{Conntrack, ConntrackConfig, SessionService, Sizes};
use nf_core::flow::proto;
use nf_core::wire::Frame;
use nf_core::wire::tcp::tcp_flags;
use nf_core::{Batch, FlowKey, Instant, Packet, ParseStage, Stage, StageExt, ZoneId};
use nf_nat::{AllocatorConfig, Profile, Snat, SnatConfig, nat_timeouts};

pub(crate) const BATCH: usize = 64;
pub(crate) const FRAME: usize = 64;
pub(crate) const PUBLICS: [[u8; 4]; 4] = [
    [203, 0, 113, 1],
    [203, 0, 113, 2],
    [203, 0, 113, 3],
    [203, 0, 113, 4],
];
pub(crate) const DESTINATIONS: u32 = 1021;
pub(crate) const START_NS: u64 = 1_000_000_000;
pub(crate) const BATCH_NS: u64 = 2_000;

/// Parse, then connection tracking with service `S` (the scenario's: `Snat`).
pub(crate) type Pipeline<S = Snat> = nf_core::Chain<ParseStage, Conntrack<S>>;

/// Flow `i`: a unique inside address and port, one of 1021 destinations.
pub(crate) fn flow(i: usize) -> FlowKey {
    let i = i as u32;
    let src = (0x0a00_0000 | (i >> 4)).to_be_bytes();
    let dst = (0xc612_0000 + i % DESTINATIONS).to_be_bytes();
    let (p, dport) = if i % 4 == 3 {
        (proto::UDP, 53)
    } else {
        (proto::TCP, 443)
    };
    FlowKey::v4(ZoneId(0), src, dst, p, 20000 + (i & 15) as u16, dport)
}

/// A 64-byte frame carrying `key` (TCP: `flags`).
pub(crate) fn frame(key: &FlowKey, flags: u8) -> [u8; FRAME] {
    let src: [u8; 4] = key.src_bytes().try_into().expect("v4");
    let dst: [u8; 4] = key.dst_bytes().try_into().expect("v4");
    let f = Frame::ipv4(src, dst);
    let f = if key.proto == proto::TCP {
        f.tcp(key.src_port, key.dst_port, flags)
            .payload(&[0x5a; 10])
    } else {
        f.udp(key.src_port, key.dst_port).payload(&[0x5a; 22])
    };
    let v = f.to_vec().expect("emits");
    v.try_into().expect("64 bytes")
}

/// The scenario's tables: 90% full at `sessions`, NAT timeouts.
pub(crate) fn conntrack_config(sessions: usize) -> ConntrackConfig {
    let capacity = (sessions as f64 / 0.9).ceil() as u32;
    let mut ct = ConntrackConfig::new(*b"bench secret key").sizes(Sizes {
        v4: capacity,
        v6: 1024,
    });
    ct.v4.timeouts = nat_timeouts(&Profile::Hyperplane);
    ct
}

/// The scenario's NAT pipeline (hyperplane profile, four public addresses), no session yet.
pub(crate) fn open(sessions: usize) -> Pipeline {
    open_with(Profile::Hyperplane, sessions)
}

/// [`open`] in another profile (its timeouts too).
pub(crate) fn open_with(profile: Profile, sessions: usize) -> Pipeline {
    open_journaled(profile, sessions, 0)
}

/// [`open_with`] with a change journal of `journal` entries (`TableConfig::journal`).
pub(crate) fn open_journaled(profile: Profile, sessions: usize, journal: u32) -> Pipeline {
    let mut ct = conntrack_config(sessions);
    ct.v4.journal = journal;
    ct.v4.timeouts = nat_timeouts(&profile);
    let snat = snat_with(profile, sessions);
    ParseStage::default().then(Conntrack::new(ct, snat).expect("conntrack config"))
}

/// The scenario's SNAT service in `profile` (the scenario's: hyperplane): the four
/// [`PUBLICS`], room for `sessions` mappings (shared with the `pipeline` scenario).
pub(crate) fn snat_with(profile: Profile, sessions: usize) -> Snat {
    let publics = PUBLICS.iter().map(|&a| a.into()).collect();
    let alloc = AllocatorConfig::new(profile, publics, *b"nf-bench nat est")
        .with_max_mappings(sessions + 1024);
    Snat::new(SnatConfig::new(alloc).with_v6_sessions(64)).expect("snat config")
}

/// Opens every flow and returns each flow's reply key: TCP flows by a three-way handshake (a
/// SYN, the SYN-ACK from the reply key the allocator chose, an ACK), so that every TCP session
/// is established, as in a NAT gateway's steady state; UDP flows by their first datagram and
/// one reply. Generic over the service, so that the callgrind driver's no-op side opens the
/// same sessions the same way.
pub(crate) fn mappings<S: SessionService>(pipe: &mut Pipeline<S>, sessions: usize) -> Vec<FlowKey> {
    let now = Instant::from_nanos(START_NS);
    let mut replies = Vec::with_capacity(sessions);
    let mut batch = Batch::new();
    for start in (0..sessions).step_by(BATCH) {
        let flows = start..(start + BATCH).min(sessions);
        for i in flows.clone() {
            let _ = batch.push(
                Packet::new(frame(&flow(i), tcp_flags::SYN).to_vec(), 0, FRAME).expect("fits"),
            );
        }
        pipe.process(now, &mut batch);
        for p in batch.drain() {
            assert!(p.meta.verdict.is_pass(), "opening: {:?}", p.meta.verdict);
            let info = pipe
                .second
                .info(p.meta.session.expect("session"))
                .expect("live");
            replies.push(info.reply);
        }
        let handshake = [
            (true, tcp_flags::SYN | tcp_flags::ACK),
            (false, tcp_flags::ACK),
        ];
        for (reply, flags) in handshake {
            for i in flows.clone() {
                let key = if reply { replies[i] } else { flow(i) };
                let _ =
                    batch.push(Packet::new(frame(&key, flags).to_vec(), 0, FRAME).expect("fits"));
            }
            pipe.process(now, &mut batch);
            for p in batch.drain() {
                assert!(p.meta.verdict.is_pass(), "handshake: {:?}", p.meta.verdict);
            }
        }
        for i in flows {
            let key = flow(i);
            let session = pipe.second.lookup(&key).expect("live").session;
            let info = pipe.second.info(session).expect("live");
            assert!(
                key.proto != proto::TCP || info.established,
                "flow {i}: {:?} after the handshake",
                info.state
            );
        }
    }
    replies
}

/// Parsed frames: established sessions' packets, uniform, either direction.
pub(crate) struct Traffic {
    pub(crate) frames: Vec<[u8; FRAME]>,
    /// Parsed metadata (`replay::Stream`: flow key and flags per packet, the rest by shape).
    metas: Stream,
}

impl Traffic {
    pub(crate) fn new(sessions: usize, replies: &[FlowKey], packets: usize) -> Self {
        let mut rng = Rng::new(0x4E47_E57A);
        let mut frames = Vec::with_capacity(packets);
        let mut metas = Vec::with_capacity(packets);
        let mut parse = ParseStage::default();
        let mut batch = Batch::new();
        while frames.len() < packets {
            for _ in 0..BATCH {
                let i = rng.below(sessions as u64) as usize;
                let key = if rng.next_u64() & 1 == 0 {
                    flow(i)
                } else {
                    replies[i]
                };
                let f = frame(&key, tcp_flags::ACK);
                frames.push(f);
                let _ = batch.push(Packet::new(f.to_vec(), 0, FRAME).expect("fits"));
            }
            parse.process(Instant::ZERO, &mut batch);
            metas.extend(batch.drain().map(|p| p.meta));
        }
        Self {
            frames,
            metas: Stream::new(&metas),
        }
    }

    pub(crate) fn batches(&self) -> usize {
        self.frames.len() / BATCH
    }

    /// Puts batch `b`'s frames and metadata back into `batch`, and prefetches the next
    /// batch's frames (as `Stream::restore` does its metadata).
    pub(crate) fn restore(&self, batch: &mut Batch<Vec<u8>>, b: usize) {
        let at = b * BATCH;
        for (p, f) in batch
            .packets_mut()
            .iter_mut()
            .zip(&self.frames[at..at + BATCH])
        {
            p.data_mut().copy_from_slice(f);
        }
        for f in self.frames.iter().skip(at + BATCH).take(BATCH) {
            nf_core::prefetch_l2(f);
        }
        self.metas.restore(batch, at);
    }
}

pub(crate) fn working_batch() -> Batch<Vec<u8>> {
    let mut batch = Batch::new();
    for _ in 0..BATCH {
        let _ = batch.push(Packet::new(vec![0u8; FRAME], 0, FRAME).expect("fits"));
    }
    batch
}
