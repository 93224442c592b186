//! Fuzzes nf-shuffle: an arbitrary bounded fleet (≤ 64 nodes in ≤ 4 fixed zones, small
//! weights including invalid ones, active/draining/failed states) and config, then up to 32
//! operations (state changes, node add/remove/reweight, time passing, stateless and capped
//! placements, overlap math).
//!
//! Checked: nothing panics; bad input gives the exact typed error; a shard has exactly k
//! distinct nodes of the membership, each eligible (draining only when in `previous`, failed
//! only inside the lookback), spread over zones by the documented quotas; flows go to a
//! non-failed member and stay put when their node stays; a membership event (or time passing)
//! moves a watched tenant by at most one node per node whose eligibility or tokens changed,
//! and by none when no such node exists; capped shards stay within every cap against every
//! stored shard (brute force); overlap distributions are finite, in [0, 1], sum to 1 and
//! agree with the exact fractions.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_shuffle::{
    ConfigError, MAX_NODES_PER_TENANT, MAX_TOKENS_PER_WEIGHT, MAX_WEIGHT, Membership,
    MembershipError, MemoryShardStore, Node, NodeId, NodeState, OverlapCap, OverlapError, Shard,
    ShardConfig, ShardError, ShardKey, ShardStore, Sharder, ZoneId,
    expected_pairs_sharing_at_least, overlap_at_least, overlap_distribution, overlap_probability,
    overlap_ratio,
};
use std::collections::{BTreeMap, BTreeSet};

const MAX_NODES: usize = 64;
const MAX_ZONES: usize = 4;
const MAX_OPS: usize = 32;
const MAX_WATCHED: usize = 4;
const MAX_TENANT_LEN: usize = 64;
const MAX_PREVIOUS: usize = 16;
const MAX_OVERLAP_NODES: u32 = 10_000;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Id {
    Small(u8),
    Any(u64),
}

impl Id {
    fn get(self) -> NodeId {
        match self {
            Self::Small(b) => NodeId(u64::from(b)),
            Self::Any(x) => NodeId(x),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum State {
    Active,
    Draining,
    /// Failed this long before now.
    FailedAgo(u16),
    /// "Failed" at a time still to come.
    FailedIn(u16),
    FailedAt(u64),
}

impl State {
    fn at(self, now: u64) -> NodeState {
        match self {
            Self::Active => NodeState::Active,
            Self::Draining => NodeState::Draining,
            Self::FailedAgo(d) => NodeState::Failed {
                since_ns: now.saturating_sub(u64::from(d)),
            },
            Self::FailedIn(d) => NodeState::Failed {
                since_ns: now.saturating_add(u64::from(d)),
            },
            Self::FailedAt(t) => NodeState::Failed { since_ns: t },
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct NodeSpec {
    id: Id,
    zone: u8,
    weight: u8,
    state: State,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Lookback {
    Zero,
    Small(u16),
    Max,
    Any(u64),
}

/// A node named by position in the current membership, or by any id.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pick {
    Member(u8),
    Id(Id),
}

#[derive(Arbitrary, Debug)]
struct Watch {
    tenant: Vec<u8>,
    previous: Vec<Pick>,
    /// Also keep the tenant's initial shard in `previous`.
    keep_initial: bool,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Advance {
    Small(u16),
    Large(u32),
    Any(u64),
    /// Exactly to the next end of a failed node's lookback.
    NextExpiry,
}

#[derive(Arbitrary, Debug)]
enum Op {
    SetState {
        node: Pick,
        state: State,
    },
    Add(NodeSpec),
    Remove(u8),
    Reweight {
        node: u8,
        weight: u8,
    },
    Advance(Advance),
    Shard {
        tenant: Vec<u8>,
        previous: Vec<Pick>,
        flow: u64,
    },
    Capped {
        tenant: Vec<u8>,
        max_shared: u8,
        attempts: u8,
    },
    Forget(Vec<u8>),
    Overlap {
        nodes: u16,
        per_tenant: u16,
        shared: u16,
        tenants: u64,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    key: [u8; 16],
    zones: Vec<u8>,
    nodes: Vec<NodeSpec>,
    k: u8,
    tokens_per_weight: u8,
    lookback: Lookback,
    now: u64,
    flows: [u64; 4],
    watch: Vec<Watch>,
    ops: Vec<Op>,
}

fn weight(w: u8) -> u32 {
    match w % 6 {
        0 => 0,
        5 => MAX_WEIGHT + 1,
        x => u32::from(x),
    }
}

fn node(spec: &NodeSpec, zones: &[ZoneId], now: u64) -> Node {
    Node {
        id: spec.id.get(),
        zone: zones[usize::from(spec.zone) % zones.len()],
        weight: weight(spec.weight),
        state: spec.state.at(now),
    }
}

fn valid_weight(w: u32) -> bool {
    (1..=MAX_WEIGHT).contains(&w)
}

fn eligible(n: &Node, now: u64, lookback: u64, previous: &[NodeId]) -> bool {
    match n.state {
        NodeState::Active => true,
        NodeState::Draining => previous.contains(&n.id),
        NodeState::Failed { since_ns } => now < since_ns.saturating_add(lookback),
    }
}

fn ids(shard: &Shard) -> Vec<NodeId> {
    shard.nodes().collect()
}

fn usable(shard: &Shard) -> Vec<NodeId> {
    shard
        .members()
        .iter()
        .filter(|m| !matches!(m.state(), NodeState::Failed { .. }))
        .map(|m| m.node())
        .collect()
}

/// The error `Membership::with_zones` must give for `nodes` (all in declared zones).
fn membership_error(nodes: &[Node]) -> Option<MembershipError> {
    let mut sorted = nodes.to_vec();
    sorted.sort_by_key(|n| n.id);
    if let Some(w) = sorted.windows(2).find(|w| w[0].id == w[1].id) {
        return Some(MembershipError::DuplicateNode(w[0].id));
    }
    sorted
        .iter()
        .find(|n| !valid_weight(n.weight))
        .map(|n| MembershipError::BadWeight(n.id))
}

fn build(
    key: &ShardKey,
    config: ShardConfig,
    zones: &[ZoneId],
    nodes: Vec<Node>,
) -> Result<Sharder, MembershipError> {
    let want = membership_error(&nodes);
    let m = Membership::with_zones(zones.iter().copied(), nodes);
    assert_eq!(m.as_ref().err(), want.as_ref());
    let m = m?;
    // Tokens stay far under MAX_TOKENS and the config was validated up front.
    Ok(Sharder::new(key.clone(), config, m).expect("valid config"))
}

struct Ctx {
    key: ShardKey,
    config: ShardConfig,
    zones: Vec<ZoneId>,
    flows: Vec<u64>,
}

/// Members are k distinct nodes of the membership, as they are there, each `ok`; zones
/// receive their quotas given `have` eligible nodes per zone.
fn check_members(shard: &Shard, m: &Membership, k: u32, have: &[u32], ok: impl Fn(&Node) -> bool) {
    assert_eq!(shard.len(), k as usize);
    assert!(!shard.is_empty());
    let nodes = ids(shard);
    assert!(nodes.windows(2).all(|w| w[0] < w[1]), "{shard:?}");
    for member in shard.members() {
        let n = m.node(member.node()).expect("member in membership");
        assert_eq!(member.zone(), n.zone);
        assert_eq!(member.state(), n.state);
        assert!(ok(n), "ineligible member {n:?}");
        assert!(shard.contains(n.id));
    }
    let zones = m.zones();
    let z = zones.len() as u32;
    let (floor, ceil) = (k / z, k.div_ceil(z));
    let full = have.iter().all(|&h| h >= ceil);
    for (zone, &h) in zones.iter().zip(have) {
        let c = shard.members().iter().filter(|x| x.zone() == *zone).count() as u32;
        assert!(c <= h);
        if full {
            assert!(c == floor || c == ceil, "zone {zone:?} got {c} of k={k}");
        } else {
            assert!(c >= floor.min(h), "zone {zone:?} got {c} of k={k}, has {h}");
        }
    }
}

fn check_flows(shard: &Shard, flows: &[u64]) {
    let u = usable(shard);
    for &f in flows {
        match shard.node_for_flow(f) {
            None => assert!(u.is_empty()),
            Some(n) => assert!(u.contains(&n)),
        }
    }
}

/// Rendezvous: a flow whose node is usable in both shards, and whose new node was usable
/// before, did not move.
fn check_flows_stay(before: &Shard, after: &Shard, flows: &[u64]) {
    let (ub, ua) = (usable(before), usable(after));
    for &f in flows {
        if let (Some(x), Some(y)) = (before.node_for_flow(f), after.node_for_flow(f))
            && ua.contains(&x)
            && ub.contains(&y)
        {
            assert_eq!(
                x, y,
                "flow {f:#x} moved between nodes usable in both shards"
            );
        }
    }
}

/// Checks a stateless placement result against the membership and clock.
fn check_shard(
    r: &Result<Shard, ShardError>,
    s: &Sharder,
    now: u64,
    previous: &[NodeId],
    flows: &[u64],
) {
    let m = s.membership();
    let k = s.config().nodes_per_tenant;
    let lb = s.config().failed_lookback_ns;
    let ok = |n: &Node| eligible(n, now, lb, previous);
    let have: Vec<u32> = m
        .zones()
        .iter()
        .map(|z| m.nodes().iter().filter(|n| n.zone == *z && ok(n)).count() as u32)
        .collect();
    let total: u32 = have.iter().sum();
    match r {
        Err(ShardError::EmptyMembership) => assert!(m.is_empty()),
        Err(ShardError::NotEnoughNodes { needed, eligible }) => {
            assert!(!m.is_empty());
            assert_eq!((*needed, *eligible), (k, total));
            assert!(total < k);
        }
        Err(e) => panic!("unexpected stateless error {e:?}"),
        Ok(shard) => {
            assert!(
                !m.is_empty() && total >= k,
                "placed with {total} eligible < k={k}"
            );
            check_members(shard, m, k, &have, ok);
            check_flows(shard, flows);
        }
    }
}

/// Nodes whose eligibility for the tenant, or whose tokens while eligible, differ between two
/// (membership, time) points: the number of single-node events between them.
fn events_between(
    a: &Membership,
    now_a: u64,
    b: &Membership,
    now_b: u64,
    lookback: u64,
    previous: &[NodeId],
) -> usize {
    let all: BTreeSet<NodeId> = a.nodes().iter().chain(b.nodes()).map(|n| n.id).collect();
    all.into_iter()
        .filter(|&id| {
            let x = a
                .node(id)
                .filter(|n| eligible(n, now_a, lookback, previous));
            let y = b
                .node(id)
                .filter(|n| eligible(n, now_b, lookback, previous));
            match (x, y) {
                (None, None) => false,
                (Some(x), Some(y)) => x.weight != y.weight,
                _ => true,
            }
        })
        .count()
}

struct Watched {
    tenant: Vec<u8>,
    previous: Vec<NodeId>,
    shard: Result<Shard, ShardError>,
}

/// Re-places every watched tenant after the fleet went from (`before`, `now_before`) to
/// (`after`, `now_after`) and checks how far each moved.
fn after_event(
    ctx: &Ctx,
    before: &Membership,
    now_before: u64,
    after: &Sharder,
    now_after: u64,
    watched: &mut [Watched],
) {
    let lb = ctx.config.failed_lookback_ns;
    for w in watched {
        let new = after.shard_with_previous(&w.tenant, now_after, &w.previous);
        check_shard(&new, after, now_after, &w.previous, &ctx.flows);
        if let (Ok(old), Ok(new)) = (&w.shard, &new) {
            let events = events_between(
                before,
                now_before,
                after.membership(),
                now_after,
                lb,
                &w.previous,
            );
            let moved = new.nodes_changed(old);
            assert_eq!(moved, old.nodes_changed(new));
            if events == 0 {
                assert_eq!(ids(old), ids(new), "moved with no eligibility change");
            } else {
                assert!(
                    moved <= events,
                    "{moved} nodes moved for {events} events\nbefore {old:?}\nafter {new:?}"
                );
            }
            check_flows_stay(old, new, &ctx.flows);
        }
        w.shard = new;
    }
}

fn pick(p: Pick, m: &Membership) -> Option<NodeId> {
    match p {
        Pick::Member(i) => m.nodes().get(usize::from(i) % m.len().max(1)).map(|n| n.id),
        Pick::Id(id) => Some(id.get()),
    }
}

fn tenant(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(MAX_TENANT_LEN)]
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

fn check_overlap(nodes: u16, per_tenant: u16, shared: u16, tenants: u64) {
    let n = u32::from(nodes) % (MAX_OVERLAP_NODES + 1);
    // k up to n + 1 (one past: the error case).
    let k = u32::from(per_tenant) % (n + 2);
    let o = u32::from(shared) % (k + 2);
    let dist = overlap_distribution(n, k);
    let prob = overlap_probability(n, k, o);
    let tail = overlap_at_least(n, k, o);
    let pairs = expected_pairs_sharing_at_least(n, k, tenants, o);
    let ratio = overlap_ratio(n, k, o);
    if k > n {
        let e = Err(OverlapError::PerTenantExceedsNodes);
        assert_eq!(dist, e);
        assert!(prob.is_err() && tail.is_err() && pairs.is_err());
        assert_eq!(ratio, None);
        return;
    }
    let p = dist.expect("k <= n");
    assert_eq!(p.len(), k as usize + 1);
    assert!(
        p.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)),
        "N={n} k={k}: {p:?}"
    );
    let sum: f64 = p.iter().sum();
    assert!((sum - 1.0).abs() <= 1e-9, "N={n} k={k}: sum {sum}");
    // Overlaps below 2k − N cannot happen.
    let lo = (2 * k).saturating_sub(n) as usize;
    assert!(p[..lo].iter().all(|&x| x == 0.0), "N={n} k={k}");
    if n > 0 {
        // Hypergeometric mean k²/N.
        let mean: f64 = p.iter().enumerate().map(|(i, x)| i as f64 * x).sum();
        let want = f64::from(k) * f64::from(k) / f64::from(n);
        assert!(
            close(mean, want, 1e-8),
            "N={n} k={k}: mean {mean}, want {want}"
        );
    }
    let prob = prob.expect("k <= n");
    assert_eq!(prob, p.get(o as usize).copied().unwrap_or(0.0));
    let tail = tail.expect("k <= n");
    let suffix: f64 = p.iter().skip(o as usize).rev().sum();
    assert!(tail.is_finite() && (0.0..=1.0 + 1e-9).contains(&tail));
    assert!(close(tail, suffix, 1e-12), "{tail} vs {suffix}");
    let all = overlap_at_least(n, k, 0).expect("k <= n");
    assert!((all - 1.0).abs() <= 1e-9);
    let pairs = pairs.expect("k <= n");
    let t = tenants as f64;
    let most = t * (t - 1.0).max(0.0) / 2.0;
    assert!(pairs.is_finite() && pairs >= 0.0 && pairs <= most * (1.0 + 1e-9));
    if tenants <= 1 {
        assert_eq!(pairs, 0.0);
    }
    if let Some((num, den)) = ratio {
        assert!(den >= 1 && num <= den, "{num}/{den}");
        if o > k {
            assert_eq!(num, 0);
        } else {
            let exact = num as f64 / den as f64;
            assert!(
                close(p[o as usize], exact, 1e-9),
                "N={n} k={k} o={o}: {} vs {num}/{den}",
                p[o as usize]
            );
        }
    }
}

/// Stored shards as the harness sees them: nodes, the cap they were placed under, and order.
type Mirror = BTreeMap<Vec<u8>, (Vec<NodeId>, u32, u64)>;

fn shared(a: &[NodeId], b: &[NodeId]) -> u32 {
    a.iter().filter(|x| b.contains(x)).count() as u32
}

fn check_store(store: &MemoryShardStore, mirror: &Mirror) {
    assert_eq!(store.len(), mirror.len());
    assert_eq!(store.is_empty(), mirror.is_empty());
    for (t, (nodes, _, _)) in mirror {
        assert_eq!(store.shard_of(t), Some(nodes.as_slice()));
    }
    // Every pair: the later shard was placed under its cap with the earlier one stored.
    for (i, (a, ca, sa)) in mirror.values().enumerate() {
        for (b, cb, sb) in mirror.values().skip(i + 1) {
            let cap = if sa > sb { ca } else { cb };
            assert!(
                shared(a, b) <= *cap,
                "{a:?} and {b:?} share more than {cap}"
            );
        }
    }
    // The store's node index agrees with its shards.
    let mut by_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (nodes, _, _) in mirror.values() {
        for &n in nodes {
            *by_node.entry(n).or_default() += 1;
        }
    }
    for (&n, &count) in &by_node {
        let mut seen = 0;
        store.shards_containing(n, &mut |_| seen += 1);
        assert_eq!(seen, count);
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one fuzz step with the whole model state; a struct would only rename it"
)]
fn capped(
    ctx: &Ctx,
    s: &Sharder,
    now: u64,
    store: &mut MemoryShardStore,
    mirror: &mut Mirror,
    seq: &mut u64,
    t: &[u8],
    max_shared: u8,
    attempts: u8,
) {
    let cap = OverlapCap {
        max_shared: u32::from(max_shared % 10),
        attempts: u32::from(attempts % 17),
    };
    let m = s.membership();
    let k = s.config().nodes_per_tenant;
    let is_active = |n: &Node| n.state == NodeState::Active;
    let have: Vec<u32> = m
        .zones()
        .iter()
        .map(|z| {
            m.nodes()
                .iter()
                .filter(|n| n.zone == *z && is_active(n))
                .count() as u32
        })
        .collect();
    let active: u32 = have.iter().sum();
    let before = store.shard_of(t).map(<[NodeId]>::to_vec);
    let len = store.len();
    match s.assign_capped(t, cap, store) {
        Ok(shard) => {
            assert!(!m.is_empty() && active >= k);
            check_members(&shard, m, k, &have, is_active);
            check_flows(&shard, &ctx.flows);
            let nodes = ids(&shard);
            assert_eq!(store.shard_of(t), Some(nodes.as_slice()));
            // Brute force against every other stored shard.
            for (other, (o, _, _)) in mirror.iter() {
                if other.as_slice() != t {
                    let c = shared(&nodes, o);
                    assert!(
                        c <= cap.max_shared,
                        "shares {c} > {} with {o:?}",
                        cap.max_shared
                    );
                }
            }
            // A cap of k or more never binds: attempt 0 is the stateless walk.
            if cap.max_shared >= k && m.nodes().iter().all(is_active) {
                assert_eq!(Ok(&shard), s.shard(t, now).as_ref());
            }
            *seq += 1;
            mirror.insert(t.to_vec(), (nodes, cap.max_shared, *seq));
        }
        Err(e) => {
            match e {
                ShardError::EmptyMembership => assert!(m.is_empty()),
                ShardError::NotEnoughNodes { needed, eligible } => {
                    assert!(!m.is_empty());
                    assert_eq!((needed, eligible), (k, active));
                    assert!(active < k);
                }
                ShardError::OverlapCapUnsatisfiable {
                    max_shared,
                    attempts,
                } => {
                    assert!(!m.is_empty() && active >= k);
                    assert_eq!(
                        (max_shared, attempts),
                        (cap.max_shared, cap.attempts.max(1))
                    );
                    assert!(cap.max_shared < k, "a cap of k or more cannot bind");
                }
                e => panic!("unexpected capped error {e:?}"),
            }
            assert_eq!(store.len(), len, "recorded on error");
            assert_eq!(store.shard_of(t).map(<[NodeId]>::to_vec), before);
        }
    }
    check_store(store, mirror);
}

fn run(input: Input) {
    let key = ShardKey::new(input.key);
    let mut now = input.now;

    // Zones: fixed for the whole run, so every event keeps the zone count.
    let raw_zones: Vec<ZoneId> = input
        .zones
        .iter()
        .take(MAX_ZONES)
        .map(|&z| ZoneId(u32::from(z)))
        .collect();
    let mut zones = raw_zones.clone();
    zones.sort();
    let dup = zones.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
    let r = Membership::with_zones(raw_zones.iter().copied(), Vec::<Node>::new());
    assert_eq!(r.err(), dup.map(MembershipError::DuplicateZone));
    zones.dedup();
    if zones.is_empty() {
        zones.push(ZoneId(0));
    }

    // Configuration, out-of-range values included.
    let k = match input.k % 16 {
        0 => 0,
        15 => MAX_NODES_PER_TENANT + 1,
        14 => MAX_NODES_PER_TENANT,
        x => u32::from(x),
    };
    let tpw = match input.tokens_per_weight % 10 {
        0 => 0,
        9 => MAX_TOKENS_PER_WEIGHT + 1,
        x => u32::from(x),
    };
    let lookback = match input.lookback {
        Lookback::Zero => 0,
        Lookback::Small(x) => u64::from(x),
        Lookback::Max => u64::MAX,
        Lookback::Any(x) => x,
    };
    let mut config = ShardConfig::new(k).with_failed_lookback_ns(lookback);
    config.tokens_per_weight = tpw;
    let want = if k == 0 || k > MAX_NODES_PER_TENANT {
        Some(ConfigError::NodesPerTenant)
    } else if tpw == 0 || tpw > MAX_TOKENS_PER_WEIGHT {
        Some(ConfigError::TokensPerWeight)
    } else {
        None
    };
    let empty = || Membership::with_zones(zones.iter().copied(), Vec::<Node>::new()).unwrap();
    assert_eq!(
        Sharder::new(key.clone(), config, empty()).err(),
        want,
        "{config:?}"
    );
    if want.is_some() {
        config.nodes_per_tenant = if k == 0 || k > MAX_NODES_PER_TENANT {
            3
        } else {
            k
        };
        config.tokens_per_weight = if tpw == 0 || tpw > MAX_TOKENS_PER_WEIGHT {
            4
        } else {
            tpw
        };
    }
    // Too many tokens is refused before any ring is built.
    let mut heavy_config = config;
    heavy_config.tokens_per_weight = MAX_TOKENS_PER_WEIGHT;
    let heavy = Membership::with_zones(
        zones.iter().copied(),
        (0..17 + u64::from(input.k % 8)).map(|i| Node::new(i, zones[0].0).with_weight(MAX_WEIGHT)),
    )
    .unwrap();
    assert_eq!(
        Sharder::new(key.clone(), heavy_config, heavy).err(),
        Some(ConfigError::TooManyTokens)
    );

    // The fleet; invalid nodes must give the exact error, then are cleaned up.
    let raw: Vec<Node> = input
        .nodes
        .iter()
        .take(MAX_NODES)
        .map(|s| node(s, &zones, now))
        .collect();
    let mut sharder = match build(&key, config, &zones, raw.clone()) {
        Ok(s) => s,
        Err(_) => {
            let mut seen = BTreeSet::new();
            let clean: Vec<Node> = raw
                .into_iter()
                .filter(|n| seen.insert(n.id))
                .map(|n| {
                    if valid_weight(n.weight) {
                        n
                    } else {
                        n.with_weight(1)
                    }
                })
                .collect();
            build(&key, config, &zones, clean).expect("cleaned membership")
        }
    };
    let ctx = Ctx {
        key,
        config,
        zones,
        flows: input.flows.to_vec(),
    };

    let mut watched: Vec<Watched> = Vec::new();
    for w in input.watch.iter().take(MAX_WATCHED) {
        let t = tenant(&w.tenant).to_vec();
        let mut previous: Vec<NodeId> = w
            .previous
            .iter()
            .take(MAX_PREVIOUS)
            .filter_map(|&p| pick(p, sharder.membership()))
            .collect();
        if w.keep_initial
            && let Ok(first) = sharder.shard_with_previous(&t, now, &previous)
        {
            previous.extend(first.nodes());
        }
        let shard = sharder.shard_with_previous(&t, now, &previous);
        check_shard(&shard, &sharder, now, &previous, &ctx.flows);
        watched.push(Watched {
            tenant: t,
            previous,
            shard,
        });
    }

    let mut store = MemoryShardStore::new();
    let mut mirror = Mirror::new();
    let mut seq = 0u64;

    for op in input.ops.iter().take(MAX_OPS) {
        match op {
            Op::SetState { node, state } => {
                let Some(id) = pick(*node, sharder.membership()) else {
                    continue;
                };
                let before = sharder.membership().clone();
                let to = state.at(now);
                let was = sharder.set_state(id, to);
                assert_eq!(was, before.node(id).map(|n| n.state));
                match sharder.membership().node(id) {
                    Some(n) => assert_eq!(n.state, to),
                    None => assert_eq!(sharder.membership(), &before),
                }
                after_event(&ctx, &before, now, &sharder, now, &mut watched);
            }
            Op::Add(spec) => {
                if sharder.membership().len() >= MAX_NODES {
                    continue;
                }
                let before = sharder.membership().clone();
                let mut nodes = before.nodes().to_vec();
                nodes.push(node(spec, &ctx.zones, now));
                let Ok(next) = build(&ctx.key, ctx.config, &ctx.zones, nodes) else {
                    continue;
                };
                sharder = next;
                after_event(&ctx, &before, now, &sharder, now, &mut watched);
            }
            Op::Remove(i) => {
                let before = sharder.membership().clone();
                if before.is_empty() {
                    continue;
                }
                let mut nodes = before.nodes().to_vec();
                nodes.remove(usize::from(*i) % nodes.len());
                sharder = build(&ctx.key, ctx.config, &ctx.zones, nodes).expect("removal");
                after_event(&ctx, &before, now, &sharder, now, &mut watched);
            }
            Op::Reweight { node, weight: w } => {
                let before = sharder.membership().clone();
                if before.is_empty() {
                    continue;
                }
                let mut nodes = before.nodes().to_vec();
                let i = usize::from(*node) % nodes.len();
                nodes[i].weight = weight(*w);
                let Ok(next) = build(&ctx.key, ctx.config, &ctx.zones, nodes) else {
                    continue;
                };
                sharder = next;
                after_event(&ctx, &before, now, &sharder, now, &mut watched);
            }
            Op::Advance(a) => {
                let later = match *a {
                    Advance::Small(d) => now.saturating_add(u64::from(d)),
                    Advance::Large(d) => now.saturating_add(u64::from(d)),
                    Advance::Any(d) => now.saturating_add(d),
                    Advance::NextExpiry => sharder
                        .membership()
                        .nodes()
                        .iter()
                        .filter_map(|n| match n.state {
                            NodeState::Failed { since_ns } => {
                                Some(since_ns.saturating_add(ctx.config.failed_lookback_ns))
                            }
                            _ => None,
                        })
                        .filter(|&t| t > now)
                        .min()
                        .unwrap_or(now.saturating_add(1)),
                };
                let m = sharder.membership().clone();
                let earlier = now;
                now = later;
                after_event(&ctx, &m, earlier, &sharder, now, &mut watched);
            }
            Op::Shard {
                tenant: t,
                previous,
                flow,
            } => {
                let t = tenant(t);
                let previous: Vec<NodeId> = previous
                    .iter()
                    .take(MAX_PREVIOUS)
                    .filter_map(|&p| pick(p, sharder.membership()))
                    .collect();
                let mut flows = ctx.flows.clone();
                flows.push(*flow);
                let with = sharder.shard_with_previous(t, now, &previous);
                check_shard(&with, &sharder, now, &previous, &flows);
                let fresh = sharder.shard(t, now);
                check_shard(&fresh, &sharder, now, &[], &flows);
                assert_eq!(fresh, sharder.shard_with_previous(t, now, &[]));
                // Only the draining entries of `previous` matter.
                let draining: Vec<NodeId> = previous
                    .iter()
                    .copied()
                    .filter(|&id| {
                        sharder
                            .membership()
                            .node(id)
                            .is_some_and(|n| n.state == NodeState::Draining)
                    })
                    .collect();
                assert_eq!(with, sharder.shard_with_previous(t, now, &draining));
                // Pure: a clone, and a sharder rebuilt from the same membership, agree.
                assert_eq!(with, sharder.clone().shard_with_previous(t, now, &previous));
                let rebuilt = Sharder::new(
                    ctx.key.clone(),
                    *sharder.config(),
                    sharder.membership().clone(),
                )
                .expect("same config");
                assert_eq!(with, rebuilt.shard_with_previous(t, now, &previous));
                if let (Ok(a), Ok(b)) = (&with, &fresh) {
                    check_flows_stay(a, b, &flows);
                }
            }
            Op::Capped {
                tenant: t,
                max_shared,
                attempts,
            } => capped(
                &ctx,
                &sharder,
                now,
                &mut store,
                &mut mirror,
                &mut seq,
                tenant(t),
                *max_shared,
                *attempts,
            ),
            Op::Forget(t) => {
                let t = tenant(t);
                assert_eq!(store.remove(t), mirror.remove(t).is_some());
                check_store(&store, &mirror);
            }
            Op::Overlap {
                nodes,
                per_tenant,
                shared,
                tenants,
            } => check_overlap(*nodes, *per_tenant, *shared, *tenants),
        }
    }
}

fuzz_target!(|input: Input| run(input));
