//! One zone's token ring: every node of the zone owns `weight × tokens_per_weight` keyed
//! positions on a 64-bit circle, sorted, with a bucket index so that finding the first token at
//! or after a position costs O(1) expected.
//!
//! Tokens depend only on (key, node id, token number), never on the other nodes or on node
//! state, so adding or removing a node inserts or deletes exactly its own tokens. Ties between
//! equal positions are broken by node id, which keeps the order insertion-consistent.

use crate::hash::ShardKey;
use alloc::vec::Vec;

#[derive(Debug, Clone, Copy)]
struct Token {
    pos: u64,
    owner: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Ring {
    tokens: Vec<Token>,
    /// `buckets[b]` = index of the first token whose top bits are ≥ `b`.
    buckets: Vec<u32>,
    shift: u32,
}

impl Ring {
    /// Builds the ring for `members`: (index into the membership, node id, weight).
    ///
    /// Member indices must follow node-id order (the membership keeps nodes sorted), so sorting
    /// by (position, index) is sorting by (position, node id).
    pub(crate) fn build(
        key: &ShardKey,
        members: impl Iterator<Item = (u32, u64, u32)>,
        tokens_per_weight: u32,
    ) -> Self {
        let mut tokens = Vec::new();
        for (owner, id, weight) in members {
            let n = weight.saturating_mul(tokens_per_weight);
            tokens.extend((0..n).map(|j| Token {
                pos: key.token(id, j),
                owner,
            }));
        }
        tokens.sort_unstable_by_key(|t| (t.pos, t.owner));
        // At least two buckets so the shift below stays under 64.
        let nb = tokens.len().next_power_of_two().clamp(2, 1 << 24);
        let bits = nb.trailing_zeros();
        let shift = 64 - bits;
        let mut buckets = Vec::with_capacity(nb + 1);
        let mut i = 0usize;
        for b in 0..=nb as u64 {
            while tokens.get(i).is_some_and(|t| (t.pos >> shift) < b) {
                i += 1;
            }
            // The ring holds at most MAX_TOKENS (< 2^32) tokens; checked by the sharder.
            buckets.push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        Self {
            tokens,
            buckets,
            shift,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Index of the first token at or after `pos`, wrapping to 0 past the end.
    pub(crate) fn first_at_or_after(&self, pos: u64) -> usize {
        let b = (pos >> self.shift) as usize;
        let mut i = self.buckets.get(b).map_or(0, |&i| i as usize);
        while self.tokens.get(i).is_some_and(|t| t.pos < pos) {
            i += 1;
        }
        if i >= self.tokens.len() { 0 } else { i }
    }

    /// Owner of the token at `i` (a membership index).
    pub(crate) fn owner(&self, i: usize) -> Option<u32> {
        self.tokens.get(i).map(|t| t.owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_token_at_or_after() {
        let key = ShardKey::new([7; 16]);
        let ring = Ring::build(
            &key,
            (0..5u32).map(|i| (i, u64::from(i) * 10, 1 + i % 2)),
            8,
        );
        assert_eq!(ring.len(), 8 * (1 + 2 + 1 + 2 + 1));
        let positions: Vec<u64> = ring.tokens.iter().map(|t| t.pos).collect();
        assert!(positions.windows(2).all(|w| w[0] <= w[1]));
        for probe in [0u64, 1, u64::MAX, positions[3], positions[3] + 1, 1 << 63] {
            let want = positions.iter().position(|&p| p >= probe).unwrap_or(0);
            assert_eq!(ring.first_at_or_after(probe), want, "probe {probe:#x}");
        }
    }

    #[test]
    fn empty_ring_is_harmless() {
        let ring = Ring::build(&ShardKey::new([0; 16]), core::iter::empty(), 8);
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.first_at_or_after(12345), 0);
        assert_eq!(ring.owner(0), None);
    }
}
