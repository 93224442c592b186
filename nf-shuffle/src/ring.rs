//! One zone's token ring: every node of the zone owns `weight × tokens_per_weight` keyed
//! positions on a 64-bit circle, sorted, with a bucket index so that finding the first token at
//! or after a position costs O(1) expected (one cache miss, typically).
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
        Self::from_sorted(tokens)
    }

    /// The ring of `tokens`, sorted by (position, owner).
    fn from_sorted(tokens: Vec<Token>) -> Self {
        // About four tokens per bucket: the index stays small enough to sit in cache, and the
        // scan from a bucket's first token stays within a cache line or two. At least two
        // buckets so the shift below stays under 64.
        let nb = (tokens.len() / 4).next_power_of_two().clamp(2, 1 << 22);
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

    /// For each position, the index of the first token at or after it, wrapping to 0 past the
    /// end. Every bucket is read before any token, so that the cache misses of the positions
    /// overlap instead of queueing.
    pub(crate) fn first_at_or_after_each<const N: usize>(&self, pos: [u64; N]) -> [usize; N] {
        let start: [usize; N] = core::array::from_fn(|j| {
            let b = pos.get(j).map_or(0, |&p| (p >> self.shift) as usize);
            self.buckets.get(b).map_or(0, |&i| i as usize)
        });
        core::array::from_fn(|j| {
            let (Some(&p), Some(&s)) = (pos.get(j), start.get(j)) else {
                return 0;
            };
            // A bucket holds four tokens on average and a position lands anywhere in it, so a
            // loop over the tokens before it would exit at a random count and mispredict: the
            // first four are counted without branches, the rest (one search in seven) looped.
            let mut i = s;
            if let Some(&[a, b, c, d]) = self.tokens.get(s..s.saturating_add(4)) {
                let before = [a, b, c, d]
                    .iter()
                    .fold(0, |n, t| n + usize::from(t.pos < p));
                i += before;
                if before < 4 {
                    return i;
                }
            }
            while self.tokens.get(i).is_some_and(|t| t.pos < p) {
                i += 1;
            }
            if i >= self.tokens.len() { 0 } else { i }
        })
    }

    /// Position and owner (a membership index) of the token at `i`.
    pub(crate) fn token(&self, i: usize) -> Option<(u64, u32)> {
        self.tokens.get(i).map(|t| (t.pos, t.owner))
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
        let probes = [0u64, 1, u64::MAX, positions[3], positions[3] + 1, 1 << 63];
        let got = ring.first_at_or_after_each(probes);
        for (probe, got) in probes.into_iter().zip(got) {
            let want = positions.iter().position(|&p| p >= probe).unwrap_or(0);
            assert_eq!(got, want, "probe {probe:#x}");
        }
    }

    #[test]
    fn finds_first_token_in_crowded_buckets() {
        // 50 tokens in one bucket of a 2-bucket ring, equal positions, and tokens at both ends:
        // searches scan far from their bucket start and wrap past the last token.
        let mut tokens: Vec<Token> = (0..50u64)
            .map(|i| Token {
                pos: 1000 + i,
                owner: 0,
            })
            .collect();
        tokens.extend(
            [(1020, 1), (1020, 2), (1 << 63, 3), (u64::MAX, 4)]
                .map(|(pos, owner)| Token { pos, owner }),
        );
        tokens.sort_unstable_by_key(|t| (t.pos, t.owner));
        let want = |probe: u64| tokens.iter().position(|t| t.pos >= probe).unwrap_or(0);
        let probes: [u64; 10] = [
            0,
            999,
            1000,
            1007,
            1020,
            1021,
            1049,
            1050,
            1 << 63,
            u64::MAX,
        ];
        let expected = probes.map(want);
        let ring = Ring::from_sorted(tokens.clone());
        assert_eq!(ring.first_at_or_after_each(probes), expected);
        let tail = Ring::from_sorted(alloc::vec![
            Token { pos: 5, owner: 0 },
            Token { pos: 6, owner: 0 }
        ]);
        assert_eq!(
            tail.first_at_or_after_each([4, 6, 7, u64::MAX]),
            [0, 1, 0, 0]
        );
    }

    #[test]
    fn empty_ring_is_harmless() {
        let ring = Ring::build(&ShardKey::new([0; 16]), core::iter::empty(), 8);
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.first_at_or_after_each([12345, 0]), [0, 0]);
        assert_eq!(ring.token(0), None);
    }
}
