//! Properties of rendezvous hashing and the ECMP helper: exactly minimal disruption on
//! leave, join and weight change; weights (both); order independence; symmetric ECMP choice.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::{FlowKey, ZoneId, flow::proto};
use nf_lb::{
    Backend, BackendId, BuildError, EcmpGroup, LbKey, MAX_RENDEZVOUS_BACKENDS, Rendezvous,
};
use proptest::prelude::*;

const KEY: [u8; 16] = *b"rendezvous tests";

fn id(i: u32) -> BackendId {
    BackendId::new(&i.to_be_bytes()).unwrap()
}

fn members(weights: &[u32]) -> Vec<Backend> {
    weights
        .iter()
        .zip(0..)
        .map(|(&w, i)| Backend::new(id(i), w))
        .collect()
}

/// Spread-out flow hashes.
fn hashes(n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(|i| (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 7))
}

fn chosen(r: &Rendezvous, h: u64) -> BackendId {
    r.backend(h).unwrap().id
}

fn rv(backends: &[Backend]) -> Rendezvous {
    Rendezvous::new(&LbKey::new(KEY), backends).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A member leaving moves exactly its own flows.
    #[test]
    fn leave_moves_exactly_the_departed_flows(
        weights in prop::collection::vec(1u32..8, 2..24),
        pick in any::<prop::sample::Index>(),
    ) {
        let all = members(&weights);
        let gone = all[pick.index(all.len())].id;
        let rest: Vec<Backend> = all.iter().filter(|b| b.id != gone).copied().collect();
        let (before, after) = (rv(&all), rv(&rest));
        for h in hashes(2_000) {
            let (b, a) = (chosen(&before, h), chosen(&after, h));
            prop_assert!(a != gone);
            prop_assert!(b == a || b == gone, "a flow of a staying member moved");
        }
    }

    /// Joining, draining, weight 0 and weight changes move flows only to or from the changed
    /// member.
    #[test]
    fn changes_move_only_the_changed_members_flows(
        weights in prop::collection::vec(1u32..8, 2..24),
        pick in any::<prop::sample::Index>(),
        new_weight in 0u32..20,
        drain in any::<bool>(),
    ) {
        let all = members(&weights);
        let i = pick.index(all.len());
        let changed = all[i].id;
        let mut after = all.clone();
        after[i].weight = new_weight;
        if drain {
            after[i] = after[i].draining();
        }
        if !after.iter().any(Backend::is_serving) {
            return Ok(());
        }
        let (b, a) = (rv(&all), rv(&after));
        for h in hashes(2_000) {
            let (x, y) = (chosen(&b, h), chosen(&a, h));
            prop_assert!(x == y || x == changed || y == changed);
        }
    }

    /// The same choices whatever order members are listed in; ECMP too.
    #[test]
    fn order_independent(weights in prop::collection::vec(1u32..8, 1..24)) {
        let fwd = members(&weights);
        let mut rev = fwd.clone();
        rev.reverse();
        let (a, b) = (rv(&fwd), rv(&rev));
        let key = LbKey::new(KEY);
        let (e, f) = (EcmpGroup::new(&key, &fwd).unwrap(), EcmpGroup::new(&key, &rev).unwrap());
        for h in hashes(500) {
            prop_assert_eq!(a.lookup(h), b.lookup(h));
            prop_assert_eq!(e.choose(h), f.choose(h));
        }
    }

    /// ECMP: a next hop leaving moves only its flows, and both directions of a flow pick the
    /// same next hop.
    #[test]
    fn ecmp_minimal_and_symmetric(
        weights in prop::collection::vec(1u32..8, 2..16),
        pick in any::<prop::sample::Index>(),
        flows in prop::collection::vec(any::<([u8; 4], [u8; 4], u16, u16)>(), 1..64),
    ) {
        let key = LbKey::new(KEY);
        let all = members(&weights);
        let gone = all[pick.index(all.len())].id;
        let rest: Vec<Backend> = all.iter().filter(|b| b.id != gone).copied().collect();
        let (g0, g1) = (EcmpGroup::new(&key, &all).unwrap(), EcmpGroup::new(&key, &rest).unwrap());
        for (s, d, sp, dp) in flows {
            let f = FlowKey::v4(ZoneId(3), s, d, proto::UDP, sp, dp);
            let c0 = g0.next_hop_for(&f);
            prop_assert_eq!(c0, g0.next_hop_for(&f.reversed()));
            let (h0, h1) = (g0.next_hops()[c0 as usize].id, g1.next_hops()[g1.next_hop_for(&f) as usize].id);
            prop_assert!(h0 == h1 || h0 == gone);
        }
    }
}

/// Flows split in proportion to weight (200,000 flows; each share within 3% of its weight's),
/// over a rendezvous set and over an ECMP group of the same members.
#[test]
fn weights_proportional() {
    let key = LbKey::new(KEY);
    for weights in [
        &[1u32, 2, 3, 4][..],
        &[1, 1, 1, 1, 1, 1, 1, 10],
        &[5, 5, 5],
        &[1, 100],
    ] {
        let r = rv(&members(weights));
        let e = EcmpGroup::new(&key, &members(weights)).unwrap();
        for (what, choose, backends) in [
            (
                "rendezvous",
                &(|h| r.lookup(h)) as &dyn Fn(u64) -> u32,
                r.backends(),
            ),
            ("ecmp", &|h| e.choose(h), e.next_hops()),
        ] {
            let mut counts = vec![0u64; weights.len()];
            let n = 200_000;
            for h in hashes(n) {
                counts[choose(h) as usize] += 1;
            }
            let w_sum: u32 = weights.iter().sum();
            for (b, &c) in backends.iter().zip(&counts) {
                let exact = n as f64 * f64::from(b.weight) / f64::from(w_sum);
                assert!(
                    (c as f64 / exact - 1.0).abs() < 0.03,
                    "{what}, weights {weights:?}: {c} vs {exact}"
                );
            }
        }
    }
}

/// ECMP salts are not the rendezvous salts: the two choices are independent.
#[test]
fn ecmp_and_rendezvous_differ() {
    let key = LbKey::new(KEY);
    let m = members(&[1; 8]);
    let (r, e) = (rv(&m), EcmpGroup::new(&key, &m).unwrap());
    let same = hashes(8_000)
        .filter(|&h| r.lookup(h) == e.choose(h))
        .count();
    assert!(same < 1_400, "{same} of 8000 agree (expected about 1000)");
}

#[test]
fn errors() {
    let key = LbKey::new(KEY);
    assert_eq!(
        Rendezvous::new(&key, &[]).unwrap_err(),
        BuildError::NoServingBackend
    );
    assert_eq!(
        Rendezvous::new(&key, &members(&[0, 0])).unwrap_err(),
        BuildError::NoServingBackend
    );
    let too_many = members(&vec![1; MAX_RENDEZVOUS_BACKENDS + 1]);
    assert!(matches!(
        EcmpGroup::new(&key, &too_many),
        Err(BuildError::TooManyBackends { .. })
    ));
    let dup = [Backend::new(id(1), 1), Backend::new(id(1), 2)];
    assert_eq!(
        Rendezvous::new(&key, &dup).unwrap_err(),
        BuildError::DuplicateBackend { id: id(1) }
    );
}
