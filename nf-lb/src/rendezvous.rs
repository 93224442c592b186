//! Rendezvous (highest-random-weight) choice for small sets: exactly minimal disruption, and
//! the distributed ECMP helper built on it.
//!
//! The rule is on [`Rendezvous`].

use crate::backend::{Backend, BuildError, sorted_backends};
use crate::key::{LOG_FRAC_BITS, LbKey, TAG_ECMP, TAG_RENDEZVOUS, mix64, neg_log2};
use alloc::vec::Vec;
use core::cmp::Ordering;
use nf_core::{FlowHasher, FlowKey};

/// Most members of a [`Rendezvous`] set or an [`EcmpGroup`] (each choice scores them all).
pub const MAX_RENDEZVOUS_BACKENDS: usize = 1024;

/// Weighted rendezvous hashing over a small set of backends: flow hash → backend, with exactly
/// minimal disruption. Each choice costs one score per backend; use
/// [`MaglevTable`](crate::MaglevTable) for large sets.
///
/// Each member `i` has a keyed salt `s_i`. A flow hash `h` gives it the draw
/// `x_i = mix64(h ^ s_i) | 1` and the score `−log2(x_i / 2^64) / w_i` (the exponential-race
/// form of weighted HRW, `−ln(u)/w`, in base 2, which ranks alike); the lowest score wins. The
/// logarithm is an integer fixed-point computation (32 fractional bits), so every platform
/// computes the same winner. Ties go to the larger draw, then to the earlier member in
/// identity order. Because a member's score depends only on the flow and that member:
/// - removing a member (or setting its weight to 0) moves exactly the flows it won;
/// - adding one moves exactly the flows it now wins;
/// - changing one member's weight moves flows only to or from that member.
///
/// Draining has no separate state here: a draining backend (or one of weight 0) wins nothing,
/// and only its flows move.
///
/// ```
/// use nf_lb::{Backend, BackendId, LbKey, Rendezvous};
/// let key = LbKey::new(*b"operator secret!");
/// let all: Vec<Backend> = (1..=4).map(|i| Backend::new(BackendId::v4([10, 0, 0, i], 80), 1)).collect();
/// let before = Rendezvous::new(&key, &all)?;
/// let after = Rendezvous::new(&key, &all[1..])?; // 10.0.0.1 leaves
/// for h in 0..1000u64 {
///     let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
///     let (b, a) = (before.backend(h).unwrap().id, after.backend(h).unwrap().id);
///     assert!(b == a || b == all[0].id); // only the departed backend's flows moved
/// }
/// # Ok::<(), nf_lb::BuildError>(())
/// ```
#[derive(Clone)]
pub struct Rendezvous {
    backends: Vec<Backend>,
    /// (salt, weight) per backend, 0 for those that win nothing.
    members: Vec<(u64, u64)>,
    /// All serving weights are equal: the largest draw wins (no logarithm needed).
    equal: bool,
    flow: FlowHasher,
}

impl Rendezvous {
    /// The rendezvous set of `backends`, in any order.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for no serving backend, a repeated identity, or more than
    /// [`MAX_RENDEZVOUS_BACKENDS`] backends.
    pub fn new(key: &LbKey, backends: &[Backend]) -> Result<Self, BuildError> {
        Self::with_tag(key, backends, TAG_RENDEZVOUS)
    }

    fn with_tag(key: &LbKey, backends: &[Backend], tag: u8) -> Result<Self, BuildError> {
        let backends = sorted_backends(backends, MAX_RENDEZVOUS_BACKENDS)?;
        let members: Vec<(u64, u64)> = backends
            .iter()
            .map(|b| {
                let w = if b.is_serving() {
                    u64::from(b.weight)
                } else {
                    0
                };
                (key.identity(tag, &b.id), w)
            })
            .collect();
        let mut serving = members.iter().filter(|m| m.1 > 0).map(|m| m.1);
        let first = serving.next();
        let equal = serving.all(|w| Some(w) == first);
        Ok(Self {
            backends,
            members,
            equal,
            flow: key.flow_hasher(),
        })
    }

    /// Every backend given, sorted by identity; choices are indices into this slice.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The winning backend's index (into [`Self::backends`]) for a flow hash.
    pub fn lookup(&self, hash: u64) -> u32 {
        let mut best: Option<(u64, u64, u64)> = None; // (−log2, weight, draw) of the winner
        let mut winner = 0u32;
        for (&(salt, w), i) in self.members.iter().zip(0u32..) {
            if w == 0 {
                continue;
            }
            let x = mix64(hash ^ salt) | 1;
            let (better, l) = match best {
                None => (true, if self.equal { 0 } else { neg_log2(x) }),
                Some((_, _, bx)) if self.equal => (x > bx, 0),
                Some((bl, bw, bx)) => {
                    // −log2 lies above the draw's leading-zero count: when even that over w
                    // cannot beat the best, the member loses and the logarithm is skipped.
                    let lo = u64::from(x.leading_zeros()) << LOG_FRAC_BITS;
                    if u128::from(lo) * u128::from(bw) >= u128::from(bl) * u128::from(w) {
                        (false, 0)
                    } else {
                        let l = neg_log2(x);
                        // l / w < bl / bw, in integers (l < 2^39, w < 2^32).
                        let better = match (u128::from(l) * u128::from(bw))
                            .cmp(&(u128::from(bl) * u128::from(w)))
                        {
                            Ordering::Less => true,
                            Ordering::Equal => x > bx,
                            Ordering::Greater => false,
                        };
                        (better, l)
                    }
                }
            };
            if better {
                best = Some((l, w, x));
                winner = i;
            }
        }
        winner
    }

    /// The winning backend for a flow hash.
    pub fn backend(&self, hash: u64) -> Option<&Backend> {
        self.backends.get(self.lookup(hash) as usize)
    }

    /// The flow hash the key gives a flow ([`FlowHasher::hash`]: one direction).
    pub fn flow_hash(&self, key: &FlowKey) -> u64 {
        self.flow.hash(key)
    }
}

impl core::fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rendezvous")
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

/// Distributed ECMP (as in Alibaba's Achelous): every sender (vSwitch) spreads flows over the
/// same weighted set of next hops (middlebox instances) with the same keyed choice, no
/// coordination needed, and a change of one next hop moves only flows to or from it.
///
/// It is weighted rendezvous hashing ([`Rendezvous`]'s rule, with its own salts: see the
/// crate's stable encodings), chosen over a small Maglev table because groups are small, the
/// choice is made once per new flow, and rendezvous gives *exactly* minimal disruption where
/// Maglev moves a few flows of unchanged next hops too. Next hops are described as
/// [`Backend`]s: identity bytes (e.g. [`BackendId::v4`](crate::BackendId::v4) of the
/// instance's address, port 0) and weight.
///
/// [`Self::next_hop_for`] hashes the flow symmetrically, so both directions of a connection
/// reach the same instance, as a stateful middlebox needs.
///
/// ```
/// use nf_core::{FlowKey, ZoneId, flow::proto};
/// use nf_lb::{Backend, BackendId, EcmpGroup, LbKey};
/// let hops: Vec<Backend> =
///     (1..=3).map(|i| Backend::new(BackendId::v4([192, 0, 2, i], 0), 1)).collect();
/// let group = EcmpGroup::new(&LbKey::new(*b"fleet-wide key!!"), &hops)?;
/// let flow = FlowKey::v4(ZoneId(1), [10, 1, 0, 5], [10, 2, 0, 9], proto::TCP, 40000, 443);
/// assert_eq!(group.next_hop_for(&flow), group.next_hop_for(&flow.reversed()));
/// # Ok::<(), nf_lb::BuildError>(())
/// ```
#[derive(Clone, Debug)]
pub struct EcmpGroup {
    inner: Rendezvous,
}

impl EcmpGroup {
    /// The group of `next_hops`, in any order.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for no serving next hop, a repeated identity, or more than
    /// [`MAX_RENDEZVOUS_BACKENDS`] next hops.
    pub fn new(key: &LbKey, next_hops: &[Backend]) -> Result<Self, BuildError> {
        Ok(Self {
            inner: Rendezvous::with_tag(key, next_hops, TAG_ECMP)?,
        })
    }

    /// Every next hop given, sorted by identity; choices are indices into this slice.
    pub fn next_hops(&self) -> &[Backend] {
        self.inner.backends()
    }

    /// The chosen next hop's index for a flow hash the caller computed (the same on every
    /// sender for the same hash).
    pub fn choose(&self, hash: u64) -> u32 {
        self.inner.lookup(hash)
    }

    /// The chosen next hop's index for a flow, from the key's symmetric flow hash
    /// ([`FlowHasher::symmetric`]): both directions choose alike.
    pub fn next_hop_for(&self, flow: &FlowKey) -> u32 {
        self.inner.lookup(self.inner.flow.symmetric(flow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendId;
    use proptest::prelude::*;

    /// Every score computed, exact fractions compared: the rule without shortcuts.
    fn naive(r: &Rendezvous, hash: u64) -> u32 {
        let mut best: Option<(u64, u64, u64, u32)> = None;
        for (&(salt, w), i) in r.members.iter().zip(0u32..) {
            if w == 0 {
                continue;
            }
            let x = mix64(hash ^ salt) | 1;
            let l = neg_log2(x);
            let wins = best.is_none_or(|(bl, bw, bx, _)| {
                let (a, b) = (
                    u128::from(l) * u128::from(bw),
                    u128::from(bl) * u128::from(w),
                );
                a < b || (a == b && x > bx)
            });
            if wins {
                best = Some((l, w, x, i));
            }
        }
        best.map_or(0, |b| b.3)
    }

    proptest! {
        #[test]
        fn shortcuts_pick_the_naive_winner(
            weights in prop::collection::vec(0u32..50, 1..40),
            hashes in prop::collection::vec(any::<u64>(), 1..50),
        ) {
            let backends: Vec<Backend> = weights
                .iter()
                .zip(0u32..)
                .map(|(&w, i)| Backend::new(BackendId::v4([10, 0, (i >> 8) as u8, i as u8], 1), w))
                .collect();
            if let Ok(r) = Rendezvous::new(&LbKey::new([5; 16]), &backends) {
                for h in hashes {
                    prop_assert_eq!(r.lookup(h), naive(&r, h));
                }
            }
        }
    }
}
