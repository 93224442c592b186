//! [`Batch`]: up to [`BATCH_SIZE`] packets processed together.

use crate::packet::Packet;
use crate::verdict::Verdict;
use alloc::vec::Vec;

/// Most packets one batch holds (one bit each in a `u64` mask).
pub const BATCH_SIZE: usize = 64;

/// A batch of up to [`BATCH_SIZE`] packets.
///
/// [`Batch`]: up to [`BATCH_SIZE`] packets processed together by every stage.
///
/// The caller fills a batch from its receive path, runs a pipeline over it, then drains it
/// and acts on each packet's [`Verdict`]. The batch allocates its storage once, at
/// construction; pushing, clearing and draining never allocate.
///
/// ```
/// use nf_core::{Batch, Packet, Verdict, DropReason};
/// let mut batch = Batch::new();
/// batch.push(Packet::new(vec![0u8; 64], 0, 64)?).ok();
/// batch.push(Packet::new(vec![0u8; 64], 0, 64)?).ok();
/// batch.set_verdict(1, Verdict::Drop(DropReason::EthTruncated));
/// assert_eq!(batch.pending_mask(), 0b01);
/// for pkt in batch.drain() {
///     match pkt.meta.verdict {
///         Verdict::Pass | Verdict::Tx(_) => { /* transmit */ }
///         Verdict::Drop(_) => { /* recycle the buffer */ }
///         Verdict::ToControl => { /* slow path */ }
///     }
/// }
/// # Ok::<(), nf_core::PacketError>(())
/// ```
#[derive(Debug)]
pub struct Batch<B> {
    pkts: Vec<Packet<B>>,
}

impl<B> Default for Batch<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> Batch<B> {
    /// An empty batch with room for [`BATCH_SIZE`] packets (the only allocation it makes).
    pub fn new() -> Self {
        Self {
            pkts: Vec::with_capacity(BATCH_SIZE),
        }
    }

    /// Adds a packet; gives it back if the batch is full.
    ///
    /// # Errors
    /// Returns the packet unchanged when the batch already holds [`BATCH_SIZE`] packets.
    #[inline]
    #[expect(
        clippy::result_large_err,
        reason = "the packet goes back to the caller by value: boxing it would allocate"
    )]
    pub fn push(&mut self, pkt: Packet<B>) -> Result<(), Packet<B>> {
        if self.pkts.len() >= BATCH_SIZE {
            return Err(pkt);
        }
        self.pkts.push(pkt);
        Ok(())
    }

    /// Moves the packets whose bit is set in `mask` out of the batch to `f`, in order; the
    /// others keep their order.
    pub(crate) fn take_masked(&mut self, mask: u64, mut f: impl FnMut(Packet<B>)) {
        let mut i = 0usize;
        let taken = self.pkts.extract_if(.., |_| {
            let t = i < BATCH_SIZE && mask >> i & 1 != 0;
            i += 1;
            t
        });
        for p in taken {
            f(p);
        }
    }

    /// Number of packets.
    #[inline]
    pub fn len(&self) -> usize {
        self.pkts.len()
    }

    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }

    /// True when no more packets fit.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.pkts.len() >= BATCH_SIZE
    }

    /// The packets, in arrival order.
    #[inline]
    pub fn packets(&self) -> &[Packet<B>] {
        &self.pkts
    }

    /// The packets, writable.
    #[inline]
    pub fn packets_mut(&mut self) -> &mut [Packet<B>] {
        &mut self.pkts
    }

    /// The packet at `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&Packet<B>> {
        self.pkts.get(i)
    }

    /// The packet at `i`, writable.
    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Packet<B>> {
        self.pkts.get_mut(i)
    }

    /// Sets the verdict of packet `i` (no-op if out of range).
    #[inline]
    pub fn set_verdict(&mut self, i: usize, v: Verdict) {
        if let Some(p) = self.pkts.get_mut(i) {
            p.meta.verdict = v;
        }
    }

    /// Bit `i` set for every packet still at [`Verdict::Pass`].
    #[inline]
    pub fn pending_mask(&self) -> u64 {
        // Last packet first, shifting in one bit each: a short serial loop that LLVM leaves
        // scalar (the `|= bit << i` form was vectorised into more instructions than packets).
        let mut m = 0u64;
        for p in self.pkts.iter().rev() {
            m = m << 1 | u64::from(p.meta.verdict.is_pass());
        }
        m
    }

    /// The packets still at [`Verdict::Pass`], writable, with their index.
    #[inline]
    pub fn pending_mut(&mut self) -> impl Iterator<Item = (usize, &mut Packet<B>)> {
        self.pkts
            .iter_mut()
            .enumerate()
            .filter(|(_, p)| p.meta.verdict.is_pass())
    }

    /// Removes every packet, in order, keeping the allocation.
    #[inline]
    pub fn drain(&mut self) -> alloc::vec::Drain<'_, Packet<B>> {
        self.pkts.drain(..)
    }

    /// Removes every packet without returning them.
    #[inline]
    pub fn clear(&mut self) {
        self.pkts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::DropReason;
    use alloc::vec;

    #[test]
    fn full_batch_gives_packets_back_and_masks_track_verdicts() {
        let mut b = Batch::new();
        for _ in 0..BATCH_SIZE {
            b.push(Packet::new(vec![0u8; 4], 0, 4).unwrap()).unwrap();
        }
        assert!(b.is_full());
        assert!(b.push(Packet::new(vec![0u8; 4], 0, 4).unwrap()).is_err());
        assert_eq!(b.pending_mask(), u64::MAX);
        b.set_verdict(63, Verdict::Drop(DropReason::NonIp));
        b.set_verdict(64, Verdict::ToControl);
        assert_eq!(b.pending_mask(), u64::MAX >> 1);
        assert_eq!(b.pending_mut().count(), 63);
        let cap = b.pkts.capacity();
        assert_eq!(b.drain().count(), 64);
        assert_eq!(b.pkts.capacity(), cap);
    }
}
