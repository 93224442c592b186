use super::*;
use alloc::collections::BTreeMap;
use proptest::prelude::*;

/// The naive reference: the first rule whose every field matches.
fn linear(rules: &[Match], key: &ClassKey) -> Option<u32> {
    rules.iter().position(|m| m.matches(key)).map(|i| i as u32)
}

fn build(rules: &[Match]) -> Classifier {
    build_with(rules, ClassifierConfig::default())
}

fn build_with(rules: &[Match], config: ClassifierConfig) -> Classifier {
    let mut b = ClassifierBuilder::new(config);
    for m in rules {
        b.push(*m).unwrap();
    }
    b.build().unwrap()
}

/// A few base addresses so that random prefixes nest and overlap.
const BASES: [u128; 4] = [
    0x0a01_0203,
    0xc0a8_0000,
    0x2001_0db8_0000_0000_0000_0000_0000_0001,
    0xfe80_0000_0000_0000_0000_0000_0000_00ff,
];

fn addr(v6: bool, base: usize, raw: u128, keep: u32) -> u128 {
    let width = if v6 { 128 } else { 32 };
    let b = BASES[base % 2 + if v6 { 2 } else { 0 }];
    let m = net_mask(keep.min(width) as u8, width);
    let all = net_mask(width as u8, width);
    ((b & m) | (raw & !m)) & all
}

fn prefix(v6: bool, base: usize, raw: u128, len: u8) -> Prefix {
    let width = if v6 { 128 } else { 32 };
    let len = len % (width as u8 + 1);
    let a = addr(v6, base, raw, u32::from(len)) & net_mask(len, width);
    let family = if v6 { Family::V6 } else { Family::V4 };
    Prefix::checked(a, len, family).unwrap()
}

fn range(a: u16, b: u16, any: bool) -> PortRange {
    if any {
        PortRange::ANY
    } else {
        PortRange::new(a.min(b), a.max(b)).unwrap()
    }
}

prop_compose! {
    fn rule()(v6 in any::<bool>(), bs in 0usize..4, rs in any::<u128>(), ls in 0u8..=128,
              bd in 0usize..4, rd in any::<u128>(), ld in 0u8..=128,
              p in prop::option::of(prop_oneof![Just(6u8), Just(17u8), Just(1u8), Just(58u8), any::<u8>()]),
              sp in (any::<u16>(), any::<u16>(), any::<bool>()),
              dp in (0u16..2000, 0u16..2000, any::<bool>())) -> Match {
        Match {
            src: prefix(v6, bs, rs, ls),
            dst: prefix(v6, bd, rd, ld),
            proto: p,
            src_ports: range(sp.0, sp.1, sp.2),
            dst_ports: range(dp.0, dp.1, dp.2),
        }
    }
}

prop_compose! {
    fn key()(v6 in any::<bool>(), bs in 0usize..4, rs in any::<u128>(), ks in 0u32..=128,
             bd in 0usize..4, rd in any::<u128>(), kd in 0u32..=128,
             p in prop_oneof![Just(6u8), Just(17u8), Just(1u8), Just(58u8), any::<u8>()],
             sp in any::<u16>(), dp in 0u16..2100) -> ClassKey {
        ClassKey {
            family: if v6 { Family::V6 } else { Family::V4 },
            src: addr(v6, bs, rs, ks),
            dst: addr(v6, bd, rd, kd),
            proto: p,
            src_port: sp,
            dst_port: dp,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn agrees_with_the_linear_reference(
        rules in prop::collection::vec(rule(), 0..40),
        keys in prop::collection::vec(key(), 1..150),
    ) {
        // One part, and the rules split into three parts.
        for c in [build(&rules), build_with(&rules, ClassifierConfig::default().parts(3, 3))] {
            let mut out = vec![Some(u32::MAX); keys.len() + 2];
            c.classify_batch(&keys, &mut out);
            for (k, o) in keys.iter().zip(&out) {
                let want = linear(&rules, k);
                prop_assert_eq!(c.classify(k), want, "{:?}", k);
                prop_assert_eq!(*o, want, "batch {:?}", k);
            }
            prop_assert!(out[keys.len()..].iter().all(|o| *o == Some(u32::MAX)));
        }
    }

    #[test]
    fn rule_edges_agree(rules in prop::collection::vec(rule(), 1..30)) {
        // The first and last address / port of every rule, and one past.
        let c = build(&rules);
        for m in &rules {
            let width = width_of(m.src.family);
            let hi = |p: &Prefix| p.bits | !net_mask(p.len, width) & net_mask(width as u8, width);
            for (s, d, sp, dp) in [
                (m.src.bits, m.dst.bits, m.src_ports.lo, m.dst_ports.lo),
                (hi(&m.src), hi(&m.dst), m.src_ports.hi, m.dst_ports.hi),
                (hi(&m.src).wrapping_add(1) & net_mask(width as u8, width), m.dst.bits,
                 m.src_ports.hi.wrapping_add(1), m.dst_ports.lo.wrapping_sub(1)),
            ] {
                let k = ClassKey { family: m.src.family, src: s, dst: d,
                    proto: m.proto.unwrap_or(6), src_port: sp, dst_port: dp };
                prop_assert_eq!(c.classify(&k), linear(&rules, &k), "{:?}", k);
            }
        }
    }
}

#[test]
fn every_lookup_costs_the_same_fixed_reads() {
    let c = build(&[
        Match::any_v4().proto(6),
        Match::any_v6().icmp(Some(128), None),
    ]);
    assert_eq!(c.reads_per_lookup(Family::V4), 13);
    assert_eq!(c.reads_per_lookup(Family::V6), 37);
    let mut reads = 0;
    c.classify_counting(
        &ClassKey::v4(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 6, 1, 2),
        &mut reads,
    );
    assert_eq!(reads, 13);
    let empty = Classifier::default();
    assert_eq!(empty.classify(&ClassKey::default()), None);
    assert_eq!(empty.reads_per_lookup(Family::V4), 0);
}

#[test]
fn icmp_type_and_code() {
    let echo = Match::any_v4().icmp(Some(8), Some(0));
    let c = build(&[echo, Match::any_v4().icmp(None, None)]);
    let flow = |ty| {
        let f = FlowKey::v4(nf_core::ZoneId(0), [10, 0, 0, 1], [10, 0, 0, 2], 1, 77, 77);
        ClassKey::from_flow(&f, (ty, 0))
    };
    assert_eq!(c.classify(&flow(8)), Some(0));
    assert_eq!(c.classify(&flow(0)), Some(1));
    // Ports of a TCP flow stay ports.
    let f = FlowKey::v4(nf_core::ZoneId(0), [10, 0, 0, 1], [10, 0, 0, 2], 6, 8, 0);
    assert_eq!(ClassKey::from_flow(&f, (99, 99)).src_port, 8);
}

#[test]
fn rejects_bad_rules_with_typed_errors() {
    let a = Ipv4Addr::new(10, 0, 0, 1);
    assert_eq!(
        Prefix::v4(a, 33),
        Err(ClassifierError::PrefixLength { len: 33, max: 32 })
    );
    assert_eq!(Prefix::v4(a, 8), Err(ClassifierError::HostBits));
    assert_eq!(
        Prefix::masked(IpAddr::V4(a), 8).unwrap().addr(),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0))
    );
    assert_eq!(PortRange::new(5, 4), Err(ClassifierError::EmptyRange));
    let mut b = ClassifierBuilder::default();
    assert_eq!(
        b.push(Match::any_v4().dst(Prefix::ANY_V6)),
        Err(ClassifierError::FamilyMismatch)
    );
    assert!(b.is_empty());
}

/// Many rules crossing distinct source and destination prefixes blow up RFC's tables: the
/// builder refuses under a small limit instead of allocating.
#[test]
fn refuses_rule_sets_over_the_memory_limit() {
    let limit = ClassifierConfig::default().memory_limit(1 << 19);
    let mut b = ClassifierBuilder::new(limit.parts(1, 1));
    for i in 0..400u32 {
        let s = Prefix::v4(Ipv4Addr::from_bits(0x0a00_0000 | i << 8), 24).unwrap();
        let d = Prefix::v4(Ipv4Addr::from_bits(0xac10_0000 | (i * 7919 % 400) << 4), 28).unwrap();
        b.push(Match::any_v4().src(s).dst(d)).unwrap();
    }
    match b.build() {
        Err(ClassifierError::MemoryLimit { needed, limit }) => {
            assert_eq!(limit, 1 << 19);
            assert!(needed > limit);
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
    // The same rules under the default limit build and agree with the reference.
    let rules = b.rules().to_vec();
    let c = build(&rules);
    assert!(c.bytes() > 1 << 19);
    assert_eq!(c.parts(Family::V4), 1);
    let k = ClassKey::v4(
        Ipv4Addr::new(10, 0, 5, 1),
        Ipv4Addr::from_bits(0xac10_0000 | (5 * 7919 % 400) << 4 | 1),
        6,
        1,
        2,
    );
    assert_eq!(c.classify(&k), linear(&rules, &k));
}

/// A small random generator for the cost tests (deterministic).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Tuple-space search as Open vSwitch does it, for contrast: one hash table per distinct mask
/// tuple, probed in order of the best priority each holds, stopping when the best match found
/// beats every table left. Returns (result, tables probed).
type MaskTuple = (u8, u8, bool, PortRange, PortRange);
type MaskedRules = BTreeMap<(u128, u128, u8), Vec<u32>>;

struct TupleSpace {
    /// (mask tuple, best rule index in it, rules by masked key)
    tables: Vec<(MaskTuple, u32, MaskedRules)>,
}

impl TupleSpace {
    fn new(rules: &[Match]) -> Self {
        let mut by_mask: BTreeMap<_, (u32, BTreeMap<_, Vec<u32>>)> = BTreeMap::new();
        for (i, m) in rules.iter().enumerate() {
            let mask = (
                m.src.len,
                m.dst.len,
                m.proto.is_some(),
                m.src_ports,
                m.dst_ports,
            );
            let e = by_mask.entry(mask).or_insert((i as u32, BTreeMap::new()));
            e.1.entry((m.src.bits, m.dst.bits, m.proto.unwrap_or(0)))
                .or_default()
                .push(i as u32);
        }
        let mut tables: Vec<_> = by_mask
            .into_iter()
            .map(|(m, (best, t))| (m, best, t))
            .collect();
        tables.sort_by_key(|t| t.1);
        Self { tables }
    }

    fn lookup(&self, rules: &[Match], k: &ClassKey) -> (Option<u32>, u64) {
        let mut best: Option<u32> = None;
        let mut probes = 0;
        for ((sl, dl, p, sp, dp), first, t) in &self.tables {
            if best.is_some_and(|b| b < *first) {
                break;
            }
            probes += 1;
            let w = width_of(k.family);
            let key = (
                k.src & net_mask(*sl, w),
                k.dst & net_mask(*dl, w),
                if *p { k.proto } else { 0 },
            );
            if sp.contains(k.src_port)
                && dp.contains(k.dst_port)
                && let Some(ids) = t.get(&key)
                && let Some(&i) = ids.iter().find(|&&i| rules[i as usize].matches(k))
            {
                best = Some(best.map_or(i, |b| b.min(i)));
            }
        }
        (best, probes)
    }
}

/// The TSE test: "allow a few, drop the rest" with many distinct masks, under random headers,
/// costs at most 2× (here exactly 1×) the benign mix in table reads, while tuple-space search
/// over the same rules costs many times more.
#[test]
fn tuple_space_explosion_does_not_apply() {
    let mut rules = Vec::new();
    // Allow a few: HTTPS and SSH to one service subnet.
    let svc = Prefix::v4(Ipv4Addr::new(10, 0, 0, 0), 24).unwrap();
    rules.push(
        Match::any_v4()
            .dst(svc)
            .proto(6)
            .dst_ports(PortRange::single(443)),
    );
    rules.push(
        Match::any_v4()
            .dst(svc)
            .proto(6)
            .dst_ports(PortRange::single(22)),
    );
    // Then denies over every source and destination prefix length and several port masks:
    // 33 × 33 × 3 distinct mask tuples (the shape CVE-2019-25076 exploits).
    let ports = [
        PortRange::ANY,
        PortRange::new(1024, 2047).unwrap(),
        PortRange::single(53),
    ];
    for sl in 0..=32u8 {
        for dl in 0..=32u8 {
            for dp in ports {
                let s = Prefix::masked(IpAddr::V4(Ipv4Addr::new(192, 168, 7, 9)), sl).unwrap();
                let d = Prefix::masked(IpAddr::V4(Ipv4Addr::new(172, 16, 3, 4)), dl).unwrap();
                rules.push(Match::any_v4().src(s).dst(d).proto(17).dst_ports(dp));
            }
        }
    }
    rules.push(Match::any_v4()); // deny the rest
    let c = build(&rules);
    let tss = TupleSpace::new(&rules);
    let mut rng = Rng(0x75e_7e57);
    let (mut benign_reads, mut attack_reads, mut benign_probes, mut attack_probes) = (0, 0, 0, 0);
    let n = 2000u64;
    for _ in 0..n {
        let r = rng.next();
        // Benign: clients to the service on its allowed ports.
        let benign = ClassKey::v4(
            Ipv4Addr::from_bits(r as u32),
            Ipv4Addr::new(10, 0, 0, (r >> 32) as u8),
            6,
            (r >> 40) as u16,
            if r & 1 == 0 { 443 } else { 22 },
        );
        // Attack: random headers that fall through to the final deny.
        let a = rng.next();
        let attack = ClassKey::v4(
            Ipv4Addr::from_bits(a as u32),
            Ipv4Addr::from_bits((a >> 32) as u32),
            6,
            a as u16,
            (a >> 16) as u16,
        );
        for (k, reads, probes) in [
            (benign, &mut benign_reads, &mut benign_probes),
            (attack, &mut attack_reads, &mut attack_probes),
        ] {
            let got = c.classify_counting(&k, reads);
            let (want, p) = tss.lookup(&rules, &k);
            assert_eq!(got, want);
            assert_eq!(got, linear(&rules, &k));
            *probes += p;
        }
    }
    assert!(
        attack_reads <= 2 * benign_reads,
        "{attack_reads} vs {benign_reads}"
    );
    assert_eq!(attack_reads, benign_reads);
    assert_eq!(attack_reads, 13 * n);
    // Tuple space search would pay per mask: over a hundred times the benign cost.
    assert!(
        attack_probes > 100 * benign_probes,
        "{attack_probes} vs {benign_probes}"
    );
}

/// Rules crossing many distinct prefixes that do not fit one part under the limit are split
/// into runs of consecutive rules, each built alone: every lookup reads every part (a fixed
/// cost of 13 reads per part) and the answers stay those of the reference.
#[test]
fn splits_rule_sets_into_parts_to_fit_the_limit() {
    let mut rng = Rng(0x9a27_5eed);
    let mut rules = Vec::new();
    for _ in 0..1000 {
        let r = rng.next();
        let s = Prefix::masked(
            IpAddr::V4(Ipv4Addr::from_bits(r as u32)),
            16 + (r >> 32) as u8 % 17,
        )
        .unwrap();
        let d = Prefix::masked(
            IpAddr::V4(Ipv4Addr::from_bits((r >> 24) as u32)),
            16 + (r >> 40) as u8 % 17,
        )
        .unwrap();
        rules.push(
            Match::any_v4()
                .src(s)
                .dst(d)
                .proto(6)
                .dst_ports(PortRange::single((r >> 48) as u16 % 64)),
        );
    }
    rules.push(Match::any_v4());
    let one = build(&rules);
    assert_eq!(one.parts(Family::V4), 1);
    let limit = one.bytes() * 2 / 3;
    let mut b = ClassifierBuilder::new(ClassifierConfig::default().memory_limit(limit).parts(1, 1));
    for m in &rules {
        b.push(*m).unwrap();
    }
    assert!(matches!(
        b.build(),
        Err(ClassifierError::MemoryLimit { .. })
    ));
    let c = build_with(&rules, ClassifierConfig::default().memory_limit(limit));
    let parts = c.parts(Family::V4);
    assert!(
        parts > 1 && c.bytes() <= limit,
        "{parts} parts, {} bytes",
        c.bytes()
    );
    assert_eq!(c.reads_per_lookup(Family::V4), 13 * parts);
    let mut keys = Vec::new();
    for m in &rules {
        let r = rng.next();
        keys.push(ClassKey {
            src: m.src.bits | (r as u128 & !net_mask(m.src.len, 32) & 0xffff_ffff),
            dst: m.dst.bits,
            ..ClassKey::v4(
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                6,
                1,
                m.dst_ports.lo,
            )
        });
        keys.push(ClassKey::v4(
            Ipv4Addr::from_bits(r as u32),
            Ipv4Addr::from_bits((r >> 32) as u32),
            6,
            1,
            (r >> 20) as u16 % 64,
        ));
    }
    let mut out = vec![None; keys.len()];
    c.classify_batch(&keys, &mut out);
    for (k, o) in keys.iter().zip(&out) {
        let mut reads = 0;
        assert_eq!(c.classify_counting(k, &mut reads), linear(&rules, k));
        assert_eq!(*o, linear(&rules, k));
        assert_eq!(reads, 13 * parts as u64);
    }
}
