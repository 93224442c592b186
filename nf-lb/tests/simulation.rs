//! The LB stage over many flows with a session table that fills up, through random
//! membership changes: backends added, removed, drained, taken down and re-weighted.
//!
//! Checked after every change, for every flow, against a model that knows only the
//! configuration: a flow with a session never moves while its backend is up or draining;
//! a flow whose backend went down moves to the table's current choice, and the load
//! balancer's `rehashed` counter equals the number of such moves; a flow without a session
//! (the table was full) is forwarded to the table's current choice, never dropped. Run
//! under encapsulation (a re-hashed session keeps its slot, moved) and under DNAT (a
//! re-hashed session is replaced, counted `renewed` by the conntrack stage, and the table
//! stays exactly as full).
//!
//! 100,000 flows by default (90,000 sessions and 10,000 stateless); set `NF_LB_SIM_FLOWS`
//! for more: `.ci/run` runs a million (900,000 sessions) in a release build,
//! `NF_LB_SIM_FLOWS=1000000 cargo test --release -p nf-lb --test simulation` (about 5 s).
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

extern crate alloc;

use alloc::collections::BTreeMap;
use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_core::wire::Frame;
use nf_core::{Batch, FlowKey, Instant, Packet, ParseStage, Stage, Verdict, ZoneId, flow::proto};
use nf_lb::{
    BackendId, Forwarding, HashFields, Health, Lb, LbKey, Listener, ListenerMatch, Listeners,
    OnDown, Pool, PoolMember,
};

const VIP: [u8; 4] = [192, 0, 2, 1];
const TABLE: u32 = 4099;

/// SplitMix64: the test's deterministic random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Backend `i`: identity and next hop `i`.
fn id(i: u32) -> BackendId {
    BackendId::v4([10, 1, (i >> 8) as u8, i as u8], 0)
}

/// The configuration: backend number → (weight, health).
type Model = BTreeMap<u32, (u32, Health)>;

fn listeners(m: &Model, forwarding: Forwarding) -> Listeners {
    let pool = Pool::new(
        m.iter()
            .map(|(&i, &(w, h))| PoolMember::new(id(i), w).with_health(h).with_next_hop(i)),
    );
    let on = ListenerMatch::Port {
        vip: VIP.into(),
        port: 80,
        proto: proto::UDP,
    };
    let l = Listener::new(
        &LbKey::new(*b"operator secret!"),
        on,
        HashFields::FiveTuple,
        pool,
        TABLE,
    )
    .unwrap()
    .with_forwarding(forwarding)
    .with_on_down(OnDown::Rehash);
    Listeners::new(vec![l]).unwrap()
}

fn flow(i: u32) -> FlowKey {
    let [a, b, c, d] = i.to_be_bytes();
    FlowKey::v4(
        ZoneId(0),
        [100, a, b, c],
        VIP,
        proto::UDP,
        1024 + u16::from(d),
        80,
    )
}

/// One packet of every flow through the stage, in batches of 64; the backends they went to
/// (under encapsulation the next hop, under DNAT the destination address) and whether they
/// have a session.
fn send_all(
    ct: &mut Conntrack<Lb>,
    parse: &mut ParseStage,
    frames: &[Vec<u8>],
    forwarding: Forwarding,
) -> Vec<(u32, bool)> {
    let now = Instant::from_nanos(1_000_000_000);
    let mut out = Vec::with_capacity(frames.len());
    for chunk in frames.chunks(64) {
        let mut batch = Batch::new();
        for f in chunk {
            batch.push(Packet::with_headroom(f, 0)).ok().unwrap();
        }
        parse.process(now, &mut batch);
        ct.process(now, &mut batch);
        for p in batch.packets() {
            assert_eq!(p.meta.verdict, Verdict::Pass, "never dropped");
            let backend = if forwarding == Forwarding::Encap {
                p.meta.next_hop
            } else {
                let d = p.data().get(30..34).unwrap();
                assert_eq!(d[..2], [10, 1], "DNAT to a backend");
                u32::from(d[2]) << 8 | u32::from(d[3])
            };
            out.push((backend, p.meta.session.is_some()));
        }
    }
    out
}

#[test]
fn no_established_flow_moves_while_its_backend_is_up_encap() {
    simulate(Forwarding::Encap);
}

#[test]
fn no_established_flow_moves_while_its_backend_is_up_dnat() {
    simulate(Forwarding::Dnat);
}

fn simulate(forwarding: Forwarding) {
    let flows: u32 = std::env::var("NF_LB_SIM_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let capacity = flows / 10 * 9;
    let mut rng = Rng(7);
    let mut model: Model = (0..16)
        .map(|i| (i, (1 + rng.below(3) as u32, Health::Up)))
        .collect();
    let mut next_backend = 16;

    let mut cfg = ConntrackConfig::new(*b"conntrack secret").sizes(Sizes {
        v4: capacity,
        v6: 64,
    });
    cfg.v4.early_drop = false;
    let mut ct = Conntrack::new(cfg, Lb::new(listeners(&model, forwarding))).unwrap();
    let mut parse = ParseStage::default();
    let frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            let k = flow(i);
            let [a, b, c, d, ..] = *k.src_raw();
            Frame::ipv4([a, b, c, d], VIP)
                .udp(k.src_port, 80)
                .to_vec()
                .unwrap()
        })
        .collect();

    // The first packets: the table fills, the rest are served by the hash alone.
    let first = send_all(&mut ct, &mut parse, &frames, forwarding);
    let tracked: Vec<bool> = first.iter().map(|&(_, s)| s).collect();
    let mut at: Vec<u32> = first.iter().map(|&(h, _)| h).collect();
    assert_eq!(tracked.iter().filter(|&&t| t).count(), capacity as usize);
    assert_eq!(
        ct.service().counters().stateless,
        u64::from(flows - capacity)
    );

    let mut expected_rehashed = 0u64;
    let mut moved_total = 0u64;
    for round in 0..12 {
        // One random change, keeping at least one backend up with a weight.
        loop {
            let mut next = model.clone();
            let pick = *next
                .keys()
                .nth(rng.below(next.len() as u64) as usize)
                .unwrap();
            match rng.below(5) {
                0 => {
                    next.insert(next_backend, (1 + rng.below(3) as u32, Health::Up));
                    next_backend += 1;
                }
                1 => {
                    next.remove(&pick);
                }
                2 => next.get_mut(&pick).unwrap().1 = Health::Draining,
                3 => next.get_mut(&pick).unwrap().1 = Health::Down,
                _ => next.get_mut(&pick).unwrap().0 = rng.below(4) as u32,
            }
            if next.values().any(|&(w, h)| w > 0 && h == Health::Up) {
                model = next;
                break;
            }
        }
        let cfg = listeners(&model, forwarding);
        let l = cfg.listeners()[0].clone();
        ct.service_mut().set_listeners(cfg);

        let got = send_all(&mut ct, &mut parse, &frames, forwarding);
        for (i, &(hop, has_session)) in got.iter().enumerate() {
            let chosen = l.backend_for(&flow(i as u32)).unwrap();
            let table_hop = (0..next_backend).find(|&b| id(b) == chosen.id).unwrap();
            assert_eq!(has_session, tracked[i], "round {round} flow {i}");
            if !tracked[i] {
                assert_eq!(hop, table_hop, "stateless flow {i} follows the table");
                continue;
            }
            let up = matches!(model.get(&at[i]), Some(&(_, h)) if h != Health::Down);
            if up {
                assert_eq!(hop, at[i], "round {round}: established flow {i} moved");
            } else {
                assert_eq!(hop, table_hop, "round {round}: re-hashed flow {i}");
                expected_rehashed += 1;
                moved_total += 1;
                at[i] = hop;
            }
        }
        assert_eq!(
            ct.service().counters().rehashed,
            expected_rehashed,
            "round {round}"
        );
        let renewed = if forwarding == Forwarding::Dnat {
            expected_rehashed
        } else {
            0
        };
        assert_eq!(ct.stats().renewed, renewed, "round {round}");
        assert_eq!(ct.len(), capacity as usize, "round {round}");
    }
    assert!(moved_total > 0, "the changes took some backend down");
    assert_eq!(ct.service().counters().reset, 0);
}
