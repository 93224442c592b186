//! The `lb-stage` scenario's load balancer, sessions and traffic aiming, shared with its
//! callgrind driver (`benches/examples/lb_instructions.rs`, which includes this file by
//! path), so that the driver counts the instructions of exactly what the scenario times.

use crate::replay::{self, Traffic};
use nf_core::FlowKey;
use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_lb::{
    BackendId, HashFields, Lb, LbKey, Listener, ListenerMatch, Listeners, Pool, PoolMember,
};

/// Backends behind the VIP.
pub(crate) const BACKENDS: u32 = 1000;
/// Maglev table size.
pub(crate) const TABLE: u32 = 65_537;
/// The virtual IP every flow is sent to.
pub(crate) const VIP: [u8; 4] = [100, 64, 0, 1];
/// The port every backend listens on.
pub(crate) const BACKEND_PORT: u16 = 8443;

/// The scenario's sessions ([`replay::make_flows`]), sent to the VIP.
pub(crate) fn flows(sessions: usize) -> Vec<FlowKey> {
    replay::make_flows(sessions, 0xC0FFEE)
        .iter()
        .map(|f| FlowKey::v4(f.zone, src4(f), VIP, f.proto, f.src_port, f.dst_port))
        .collect()
}

/// A flow's IPv4 source address.
pub(crate) fn src4(f: &FlowKey) -> [u8; 4] {
    let [a, b, c, d, ..] = *f.src_raw();
    [a, b, c, d]
}

/// Backend `i`'s address and port.
pub(crate) fn backend(i: u32) -> ([u8; 4], u16) {
    let [_, a, b, c] = i.to_be_bytes();
    ([192, 168 | a, b, c], BACKEND_PORT)
}

/// `Conntrack<Lb>` (one whole-VIP listener, [`BACKENDS`] DNAT backends in a Maglev table of
/// [`TABLE`] slots) in a table of `capacity` sessions, holding every flow as an established
/// session created through the stage itself (so every session holds its backend and its reply
/// key is the backend's tuple).
pub(crate) fn lb(flows: &[FlowKey], capacity: u32) -> Conntrack<Lb> {
    lb_journaled(flows, capacity, 0)
}

/// [`lb`] with a change journal of `journal` entries (`TableConfig::journal`).
pub(crate) fn lb_journaled(flows: &[FlowKey], capacity: u32, journal: u32) -> Conntrack<Lb> {
    let key = LbKey::new(*b"bench lb secret!");
    let pool = Pool::new((0..BACKENDS).map(|i| {
        let (a, p) = backend(i);
        PoolMember::new(BackendId::v4(a, p), 1)
    }));
    let on = ListenerMatch::Vip(VIP.into());
    let l = Listener::new(&key, on, HashFields::FiveTuple, pool, TABLE).expect("listener");
    let lb = Lb::new(Listeners::new(vec![l]).expect("listeners"));
    let mut cfg = ConntrackConfig::new(*b"bench secret key").sizes(Sizes {
        v4: capacity,
        v6: 1024,
    });
    cfg.v4.journal = journal;
    let mut ct = Conntrack::new(cfg, lb).expect("stage config");
    // Every session created through the stage, then marked established.
    replay::create_established(&mut ct, flows);
    assert_eq!(ct.len(), flows.len());
    ct
}

/// Reply-direction templates carry the backend's tuple; new flows go to the VIP.
pub(crate) fn aim(t: &mut Traffic, ct: &Conntrack<Lb>) {
    let news: Vec<Vec<usize>> = (0..t.batches())
        .map(|b| t.new_positions(b).collect())
        .collect();
    t.edit(|b, metas| {
        for (i, m) in metas.iter_mut().enumerate() {
            let f = m.flow;
            if news[b].contains(&i) {
                m.flow = FlowKey::v4(f.zone, src4(&f), VIP, f.proto, f.src_port, f.dst_port);
            } else if f.src_bytes() == VIP {
                let hit = ct.lookup(&f.reversed()).expect("established");
                m.flow = ct.info(hit.session).expect("live").reply;
            }
        }
    });
}
