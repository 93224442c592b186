//! Symmetric flow pinning: both directions of a connection reach the same owner (core or
//! node) without coordination.
//!
//! The owner is [`owner_of`] applied to [`FlowHasher::symmetric`], a keyed hash of the
//! flow's direction-independent form, so every core and node with the same secret computes
//! the same owner for a packet and for its reply. After NAT rewrites the reply's addresses
//! the two directions no longer share a canonical form; pin those by the session's original
//! key (the reply owner is then chosen through the NAT's port blocks, see DESIGN.md).
//!
//! ```
//! use nf_core::{FlowHasher, FlowKey, ZoneId, flow::proto};
//! use nf_core::conntrack::Pinning;
//! let pin = Pinning::new(FlowHasher::new(*b"operator secret!"), 8);
//! let k = FlowKey::v4(ZoneId(1), [10, 0, 0, 1], [192, 0, 2, 7], proto::TCP, 40000, 443);
//! assert_eq!(pin.owner(&k), pin.owner(&k.reversed()));
//! assert!(pin.owner(&k) < 8);
//! ```

use crate::flow::FlowKey;
use crate::hash::{FlowHasher, owner_of};

/// Maps flows to one of `n` owners, the same for both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinning {
    hasher: FlowHasher,
    owners: u32,
}

impl Pinning {
    /// Pinning over `owners` cores or nodes (0 behaves as 1).
    pub const fn new(hasher: FlowHasher, owners: u32) -> Self {
        Self {
            hasher,
            owners: if owners == 0 { 1 } else { owners },
        }
    }

    /// Number of owners.
    pub const fn owners(&self) -> u32 {
        self.owners
    }

    /// The owner of `key`'s connection, in `0..owners`; equal for `key.reversed()`.
    #[inline]
    pub fn owner(&self, key: &FlowKey) -> u32 {
        owner_of(self.hasher.symmetric(key), self.owners)
    }

    /// Owners of up to 64 keys at once, written to `out`.
    pub fn owners_of(&self, keys: &[FlowKey], out: &mut [u32]) {
        for (k, o) in keys.iter().zip(out.iter_mut()) {
            *o = self.owner(k);
        }
    }
}

/// Which of `cores` cores owns `key`'s connection (both directions agree).
#[inline]
pub fn core_of(hasher: &FlowHasher, key: &FlowKey, cores: u32) -> u32 {
    owner_of(hasher.symmetric(key), cores.max(1))
}

/// Which of `nodes` nodes owns `key`'s connection (both directions agree).
#[inline]
pub fn node_of(hasher: &FlowHasher, key: &FlowKey, nodes: u32) -> u32 {
    owner_of(hasher.symmetric(key), nodes.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{ZoneId, proto};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn both_directions_same_owner(s in any::<[u8; 4]>(), d in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>(), n in 1u32..1000) {
            let h = FlowHasher::new([9; 16]);
            let k = FlowKey::v4(ZoneId(2), s, d, proto::UDP, sp, dp);
            prop_assert_eq!(core_of(&h, &k, n), core_of(&h, &k.reversed(), n));
            prop_assert_eq!(node_of(&h, &k, n), node_of(&h, &k.reversed(), n));
            prop_assert!(core_of(&h, &k, n) < n);
        }
    }

    #[test]
    fn spreads_over_owners() {
        let p = Pinning::new(FlowHasher::new([1; 16]), 4);
        let mut c = [0u32; 4];
        for i in 0..4000u32 {
            let k = FlowKey::v4(ZoneId(0), i.to_be_bytes(), [1, 1, 1, 1], proto::TCP, 1, 2);
            c[p.owner(&k) as usize] += 1;
        }
        assert!(c.iter().all(|&x| x > 800), "{c:?}");
        assert_eq!(Pinning::new(FlowHasher::new([1; 16]), 0).owners(), 1);
    }
}
