//! Listeners and pools: hash fields, health, matching precedence, golden choices.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use core::net::{IpAddr, Ipv4Addr};
use nf_core::{FlowKey, ZoneId, flow::proto};
use nf_lb::{
    BackendId, HashFields, Health, LbKey, Listener, ListenerError, ListenerMatch, Listeners, Pool,
    PoolMember,
};
use proptest::prelude::*;

const VIP: [u8; 4] = [192, 0, 2, 10];

fn key() -> LbKey {
    LbKey::new(core::array::from_fn(|i| i as u8))
}

fn member(i: u8) -> BackendId {
    BackendId::v4([10, 0, 0, i], 8080)
}

fn pool() -> Pool {
    Pool::new((1..=5).map(|i| PoolMember::new(member(i), u32::from(i % 2) + 1)))
}

fn listener(on: ListenerMatch, fields: HashFields, pool: Pool) -> Listener {
    Listener::new(&key(), on, fields, pool, 1_009).unwrap()
}

fn port_443() -> ListenerMatch {
    ListenerMatch::Port {
        vip: IpAddr::V4(Ipv4Addr::from(VIP)),
        port: 443,
        proto: proto::TCP,
    }
}

fn flow(src: [u8; 4], sport: u16, dport: u16, p: u8) -> FlowKey {
    FlowKey::v4(ZoneId(1), src, VIP, p, sport, dport)
}

proptest! {
    /// Flows that agree on a listener's fields get the same backend.
    #[test]
    fn fields_choose_the_backend(src in any::<[u8; 4]>(), a in any::<(u16, u16, u8)>(), b in any::<(u16, u16, u8)>()) {
        let whole = ListenerMatch::Vip(IpAddr::V4(Ipv4Addr::from(VIP)));
        for fields in [HashFields::SourceIp, HashFields::TwoTuple] {
            let l = listener(whole, fields, pool());
            prop_assert_eq!(l.backend_for(&flow(src, a.0, a.1, a.2)), l.backend_for(&flow(src, b.0, b.1, b.2)));
        }
        let l = listener(whole, HashFields::ThreeTuple, pool());
        prop_assert_eq!(l.backend_for(&flow(src, a.0, a.1, 17)), l.backend_for(&flow(src, b.0, b.1, 17)));
        // Source IP only: the destination does not count either.
        let other_dst = FlowKey::v4(ZoneId(1), src, [198, 51, 100, 1], a.2, a.0, a.1);
        prop_assert_eq!(
            HashFields::SourceIp.project(&other_dst),
            HashFields::SourceIp.project(&flow(src, b.0, b.1, b.2))
        );
    }

    /// A down member gets nothing and the table is the one without it; a draining one gets
    /// nothing and only its entries move.
    #[test]
    fn health(pick in 1u8..=5) {
        let k = key();
        let before = pool().table(&k, 1_009).unwrap();
        let mut down = pool();
        prop_assert!(down.set_health(&member(pick), Health::Down));
        let mut without = pool();
        prop_assert!(without.remove(&member(pick)));
        let down_t = down.table(&k, 1_009).unwrap();
        let owners = |t: &nf_lb::MaglevTable| t.entries().map(|i| t.backends()[i as usize].id).collect::<Vec<_>>();
        prop_assert_eq!(owners(&down_t), owners(&without.table(&k, 1_009).unwrap()));
        let mut draining = pool();
        draining.set_health(&member(pick), Health::Draining);
        let after = draining.table(&k, 1_009).unwrap();
        for (x, y) in owners(&before).iter().zip(owners(&after)) {
            prop_assert!(*x == y || *x == member(pick));
            prop_assert!(y != member(pick));
        }
    }
}

#[test]
fn port_listener_before_whole_vip() {
    let vip = IpAddr::V4(Ipv4Addr::from(VIP));
    let web = listener(port_443(), HashFields::FiveTuple, pool());
    let rest = listener(
        ListenerMatch::Vip(vip),
        HashFields::SourceIp,
        Pool::new([PoolMember::new(member(9), 1)]),
    );
    let set = Listeners::new(vec![rest.clone(), web]).unwrap();
    let to_443 = flow([198, 51, 100, 7], 40_000, 443, proto::TCP);
    assert_eq!(set.find(&to_443).unwrap().on(), port_443());
    let to_80 = flow([198, 51, 100, 7], 40_000, 80, proto::TCP);
    assert_eq!(set.find(&to_80).unwrap().on(), ListenerMatch::Vip(vip));
    let udp_443 = flow([198, 51, 100, 7], 40_000, 443, proto::UDP);
    assert_eq!(
        set.find(&udp_443)
            .unwrap()
            .backend_for(&udp_443)
            .unwrap()
            .id,
        member(9)
    );
    let elsewhere = FlowKey::v4(ZoneId(1), [1, 1, 1, 1], [192, 0, 2, 11], proto::TCP, 1, 443);
    assert!(set.find(&elsewhere).is_none());
    assert_eq!(
        Listeners::new(vec![rest.clone(), rest]).unwrap_err(),
        ListenerError::Duplicate(ListenerMatch::Vip(vip))
    );
}

#[test]
fn pool_edits_and_errors() {
    let mut p = pool();
    assert!(!p.set_weight(&member(42), 3));
    assert!(p.set_weight(&member(1), 0));
    assert!(!p.remove(&member(42)));
    p.add(PoolMember::new(member(6), 1).with_health(Health::Down));
    assert_eq!(p.members().len(), 6);
    let all_down = Pool::new([PoolMember::new(member(1), 1).with_health(Health::Down)]);
    assert!(all_down.table(&key(), 101).is_err());
    p.add(PoolMember::new(member(2), 1));
    assert!(matches!(
        p.table(&key(), 101),
        Err(nf_lb::BuildError::DuplicateBackend { .. })
    ));
}

/// Golden: backends chosen for fixed flows under each hash-fields setting (also computed by
/// `tests/reference.py`).
#[test]
fn golden_choices() {
    let flows: Vec<FlowKey> = (1..=6u8)
        .map(|i| flow([198, 51, 100, i], 40_000 + u16::from(i), 443, proto::TCP))
        .collect();
    let mut got = Vec::new();
    for fields in [
        HashFields::FiveTuple,
        HashFields::ThreeTuple,
        HashFields::TwoTuple,
        HashFields::SourceIp,
    ] {
        let l = listener(port_443(), fields, pool());
        got.push(
            flows
                .iter()
                .map(|f| l.backend_for(f).unwrap().id.as_bytes()[4])
                .collect::<Vec<u8>>(),
        );
    }
    assert_eq!(
        got,
        [
            [2, 2, 5, 3, 1, 1],
            [5, 5, 1, 1, 5, 4],
            [5, 1, 1, 3, 3, 1],
            [4, 1, 5, 5, 5, 3]
        ]
    );
}
