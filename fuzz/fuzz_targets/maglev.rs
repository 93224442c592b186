//! Fuzzes nf-lb: an arbitrary key, table size (small primes, the default, and arbitrary sizes
//! for the error paths) and up to 48 backends (small ids that collide, arbitrary byte ids,
//! any weights, draining), then up to 24 membership changes (add, remove, reweight, drain,
//! undrain) each followed by a rebuild of the Maglev table, the rendezvous set and the ECMP
//! group, and lookups of arbitrary hashes and flows.
//!
//! Checked: nothing panics; a build fails exactly when the inputs are invalid, with the
//! documented error; every entry names a serving backend and each serving backend's entry
//! count is within 3 of its weighted share; the same set in reverse order builds the same
//! table; lookups are in range, and batched lookups equal single ones; draining one backend
//! moves only its Maglev entries; in rendezvous and ECMP, a change to one member moves only
//! flows to or from that member (exactly minimal disruption), and ECMP is symmetric.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nf_core::{FlowKey, ZoneId};
use nf_lb::{
    Backend, BackendId, BuildError, DEFAULT_TABLE_SIZE, EcmpGroup, LbKey, MAX_TABLE_SIZE,
    MaglevTable, Rendezvous, is_prime,
};

const MAX_BACKENDS: usize = 48;
const MAX_OPS: usize = 24;
const MAX_PROBES: usize = 64;
const PRIMES: [u32; 6] = [2, 3, 101, 211, 1_009, 2_003];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    Prime(u8),
    Default,
    /// Arbitrary size, reduced below 5,000 unless `huge` (then it stays as given, and only
    /// tables over the maximum or not prime are attempted).
    Any {
        n: u32,
        huge: bool,
    },
}

#[derive(Arbitrary, Debug, Clone)]
enum Id {
    Small(u8),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone)]
struct Spec {
    id: Id,
    weight: Weight,
    draining: bool,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Weight {
    Zero,
    Small(u8),
    Any(u32),
}

impl Weight {
    fn get(self) -> u32 {
        match self {
            Self::Zero => 0,
            Self::Small(w) => u32::from(w % 8),
            Self::Any(w) => w,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Add(Spec),
    Remove(u8),
    Reweight(u8, Weight),
    Drain(u8),
    Undrain(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    key: [u8; 16],
    size: Size,
    backends: Vec<Spec>,
    ops: Vec<Op>,
    hashes: Vec<u64>,
    flows: Vec<([u8; 4], [u8; 4], u8, u16, u16)>,
}

fn backend(spec: &Spec) -> Option<Backend> {
    let id = match &spec.id {
        Id::Small(b) => BackendId::v4([10, 0, 0, *b], 80),
        Id::Bytes(v) => BackendId::new(v)?,
    };
    let b = Backend::new(id, spec.weight.get());
    Some(if spec.draining { b.draining() } else { b })
}

fn size(s: Size) -> u32 {
    match s {
        Size::Prime(i) => PRIMES[usize::from(i) % PRIMES.len()],
        Size::Default => DEFAULT_TABLE_SIZE,
        Size::Any { n, huge: false } => n % 5_000,
        Size::Any { n, huge: true } => {
            if n <= MAX_TABLE_SIZE && is_prime(n) {
                // A valid huge table is too slow to build per input: take the error path.
                n.wrapping_add(1).max(MAX_TABLE_SIZE + 1)
            } else {
                n
            }
        }
    }
}

/// The error the documented checks give, in their order, or None for valid input.
fn expected_error(m: u32, backends: &[Backend]) -> Option<BuildError> {
    if m > MAX_TABLE_SIZE {
        return Some(BuildError::SizeTooLarge { size: m });
    }
    if !is_prime(m) {
        return Some(BuildError::SizeNotPrime { size: m });
    }
    let mut ids: Vec<BackendId> = backends.iter().map(|b| b.id).collect();
    ids.sort();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Some(BuildError::DuplicateBackend { id: w[0] });
    }
    if !backends.iter().any(Backend::is_serving) {
        return Some(BuildError::NoServingBackend);
    }
    None
}

/// What was built from one membership.
struct Built {
    table: Option<MaglevTable>,
    rendezvous: Option<Rendezvous>,
    ecmp: Option<EcmpGroup>,
}

fn build(key: &LbKey, m: u32, backends: &[Backend], probes: &[u64], flows: &[FlowKey]) -> Built {
    let want = expected_error(m, backends);
    let table = match MaglevTable::new(key, m, backends) {
        Ok(t) => {
            assert_eq!(want, None, "built a table from invalid input");
            check_table(key, m, &t, backends, probes, flows);
            Some(t)
        }
        Err(e) => {
            assert_eq!(Some(e), want, "wrong error");
            None
        }
    };
    // Rendezvous and ECMP take the same members (no size).
    let members_ok = expected_error(DEFAULT_TABLE_SIZE, backends);
    let rendezvous = match Rendezvous::new(key, backends) {
        Ok(r) => {
            assert_eq!(members_ok, None);
            for &h in probes {
                assert!(r.backends()[r.lookup(h) as usize].is_serving());
            }
            Some(r)
        }
        Err(e) => {
            assert_eq!(Some(e), members_ok);
            None
        }
    };
    let ecmp = match EcmpGroup::new(key, backends) {
        Ok(g) => {
            for f in flows {
                let c = g.next_hop_for(f);
                assert!(g.next_hops()[c as usize].is_serving());
                assert_eq!(c, g.next_hop_for(&f.reversed()), "ECMP not symmetric");
            }
            Some(g)
        }
        Err(e) => {
            assert_eq!(Some(e), members_ok);
            None
        }
    };
    Built {
        table,
        rendezvous,
        ecmp,
    }
}

fn check_table(
    key: &LbKey,
    m: u32,
    t: &MaglevTable,
    backends: &[Backend],
    probes: &[u64],
    flows: &[FlowKey],
) {
    assert_eq!(t.size(), m);
    assert_eq!(t.backends().len(), backends.len());
    let counts = t.entries_per_backend();
    assert_eq!(
        counts.iter().map(|&c| u64::from(c)).sum::<u64>(),
        u64::from(m)
    );
    let w_serving: f64 = t
        .backends()
        .iter()
        .filter(|b| b.is_serving())
        .map(|b| f64::from(b.weight))
        .sum();
    for (b, &c) in t.backends().iter().zip(&counts) {
        if b.is_serving() {
            let share = f64::from(m) * f64::from(b.weight) / w_serving;
            assert!(
                (f64::from(c) - share).abs() < 3.0,
                "{c} entries, share {share}"
            );
        } else {
            assert_eq!(c, 0, "a backend that does not serve has entries");
        }
    }
    for &h in probes {
        let i = t.lookup(h) as usize;
        assert!(t.backends()[i].is_serving());
    }
    let mut out = vec![0u32; flows.len()];
    assert_eq!(t.lookup_flows(flows, &mut out), flows.len());
    for (f, &o) in flows.iter().zip(&out) {
        assert_eq!(o, t.lookup(t.flow_hash(f)));
    }
    let mut reversed = backends.to_vec();
    reversed.reverse();
    let again = MaglevTable::new(key, m, &reversed).expect("same set, other order");
    assert!(t.entries().eq(again.entries()), "order changed the table");
}

/// Flows whose member changed from `a` to `b` must have had `changed` before or after.
fn only_changed_moved(
    a: &[Backend],
    ca: impl Fn(u64) -> u32,
    b: &[Backend],
    cb: impl Fn(u64) -> u32,
    changed: BackendId,
    probes: &[u64],
) {
    for &h in probes {
        let (x, y) = (a[ca(h) as usize].id, b[cb(h) as usize].id);
        assert!(
            x == y || x == changed || y == changed,
            "a flow of an unchanged member moved"
        );
    }
}

fn run(input: Input) {
    let key = LbKey::new(input.key);
    let m = size(input.size);
    let mut members: Vec<Backend> = input
        .backends
        .iter()
        .take(MAX_BACKENDS)
        .filter_map(backend)
        .collect();
    let probes: Vec<u64> = input.hashes.iter().copied().take(MAX_PROBES).collect();
    let flows: Vec<FlowKey> = input
        .flows
        .iter()
        .take(MAX_PROBES)
        .map(|&(s, d, p, sp, dp)| FlowKey::v4(ZoneId(0), s, d, p, sp, dp))
        .collect();
    let mut prev = build(&key, m, &members, &probes, &flows);
    for op in input.ops.iter().take(MAX_OPS) {
        let before = members.clone();
        let pick = |i: u8| (!members.is_empty()).then(|| usize::from(i) % members.len());
        let mut drained_only = false;
        let changed = match op {
            Op::Add(spec) => {
                if members.len() >= MAX_BACKENDS {
                    continue;
                }
                let Some(b) = backend(spec) else { continue };
                members.push(b);
                b.id
            }
            Op::Remove(i) => {
                let Some(i) = pick(*i) else { continue };
                members.remove(i).id
            }
            Op::Reweight(i, w) => {
                let Some(i) = pick(*i) else { continue };
                members[i].weight = w.get();
                members[i].id
            }
            Op::Drain(i) => {
                let Some(i) = pick(*i) else { continue };
                drained_only = !members[i].draining;
                members[i] = members[i].draining();
                members[i].id
            }
            Op::Undrain(i) => {
                let Some(i) = pick(*i) else { continue };
                members[i].draining = false;
                members[i].id
            }
        };
        let next = build(&key, m, &members, &probes, &flows);
        // Duplicates make "the changed member" ambiguous: check only unique memberships.
        let unique = expected_error(DEFAULT_TABLE_SIZE, &before).is_none()
            && expected_error(DEFAULT_TABLE_SIZE, &members).is_none();
        if let (Some(a), Some(b)) = (&prev.table, &next.table)
            && drained_only
        {
            for (x, y) in a.entries().zip(b.entries()) {
                let (x, y) = (a.backends()[x as usize].id, b.backends()[y as usize].id);
                assert!(
                    x == y || x == changed,
                    "draining moved another backend's entry"
                );
            }
        }
        if unique {
            if let (Some(a), Some(b)) = (&prev.rendezvous, &next.rendezvous) {
                only_changed_moved(
                    a.backends(),
                    |h| a.lookup(h),
                    b.backends(),
                    |h| b.lookup(h),
                    changed,
                    &probes,
                );
            }
            if let (Some(a), Some(b)) = (&prev.ecmp, &next.ecmp) {
                only_changed_moved(
                    a.next_hops(),
                    |h| a.choose(h),
                    b.next_hops(),
                    |h| b.choose(h),
                    changed,
                    &probes,
                );
            }
        }
        prev = next;
    }
}

fuzz_target!(|input: Input| run(input));
