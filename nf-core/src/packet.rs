//! Caller-owned packet buffers with headroom and tailroom ([`Packet`]: public at the crate
//! root).

use crate::meta::Meta;
use alloc::vec::Vec;
use core::fmt;

/// Errors from adjusting a packet's data window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketError {
    /// The requested window does not fit in the buffer.
    OutOfBounds,
    /// Not enough headroom to push the requested bytes.
    NoHeadroom,
    /// Not enough tailroom to append the requested bytes.
    NoTailroom,
    /// Tried to remove more bytes than the frame holds.
    TooShort,
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfBounds => "data window outside the buffer",
            Self::NoHeadroom => "not enough headroom",
            Self::NoTailroom => "not enough tailroom",
            Self::TooShort => "frame shorter than the bytes to remove",
        })
    }
}

impl core::error::Error for PacketError {}

/// A frame in a caller-owned buffer, with its metadata.
///
/// A [`Packet`] wraps any buffer the caller owns (`&mut [u8]` into an AF_XDP UMEM frame, a
/// `Vec<u8>`, a `[u8; 2048]`, a DPDK mbuf wrapper ...) and marks the window that holds the
/// frame: bytes before it are headroom (for pushing encapsulation headers in place), bytes
/// after it are tailroom. Wrapping a buffer ([`Packet::new`]) neither allocates nor copies.
///
/// ```
/// use nf_core::Packet;
/// let mut buf = [0u8; 128];
/// buf[64..68].copy_from_slice(&[1, 2, 3, 4]);
/// let mut pkt = Packet::new(&mut buf[..], 64, 4)?;
/// pkt.push_front(2)?.copy_from_slice(&[0xaa, 0xbb]);
/// assert_eq!(pkt.data(), &[0xaa, 0xbb, 1, 2, 3, 4]);
/// pkt.pull_front(3)?;
/// assert_eq!(pkt.data(), &[2, 3, 4]);
/// # Ok::<(), nf_core::PacketError>(())
/// ```
///
/// To build one from a frame you hold as bytes, [`Packet::with_headroom`] copies it into a
/// new `Vec<u8>` and [`Packet::copy_into`] into a buffer of yours; either leaves room in
/// front for the stages that push headers. How much: a pipeline's
/// [`StageControl::headroom`](crate::StageControl::headroom).
#[derive(Clone, Debug)]
pub struct Packet<B> {
    buf: B,
    head: usize,
    tail: usize,
    /// What stages have learned and decided about this packet.
    pub meta: Meta,
}

impl Packet<Vec<u8>> {
    /// Copies `frame` into a new buffer, after `headroom` free bytes (pass a pipeline's
    /// [`StageControl::headroom`](crate::StageControl::headroom) so its encapsulation
    /// stages can push headers in place). Allocates: for tests, examples and slow paths;
    /// a receive loop recycles its buffers ([`Packet::reset`], [`Packet::copy_into`]).
    ///
    /// ```
    /// use nf_core::{Packet, ParseStage, StageControl};
    /// let pipeline = ParseStage::default();
    /// let pkt = Packet::with_headroom(&[1, 2, 3], pipeline.headroom().max(64));
    /// assert_eq!((pkt.headroom(), pkt.data()), (64, &[1, 2, 3][..]));
    /// ```
    ///
    /// # Panics
    /// Only if `headroom + frame.len()` bytes cannot be allocated, as any `Vec` would.
    pub fn with_headroom(frame: &[u8], headroom: usize) -> Self {
        let mut buf = Vec::with_capacity(headroom.saturating_add(frame.len()));
        buf.resize(headroom, 0);
        buf.extend_from_slice(frame);
        let tail = buf.len();
        Self {
            buf,
            head: headroom,
            tail,
            meta: Meta::default(),
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Packet<B> {
    /// Copies `frame` into `buf` after `headroom` bytes and wraps it: the buffer-recycling
    /// form of [`Packet::with_headroom`] (no allocation).
    ///
    /// ```
    /// use nf_core::Packet;
    /// let mut umem = [0u8; 2048];
    /// let pkt = Packet::copy_into(&mut umem[..], 256, &[0xaa; 60])?;
    /// assert_eq!((pkt.headroom(), pkt.len(), pkt.tailroom()), (256, 60, 2048 - 316));
    /// # Ok::<(), nf_core::PacketError>(())
    /// ```
    ///
    /// # Errors
    /// [`PacketError::OutOfBounds`] if `headroom + frame.len()` exceeds the buffer.
    pub fn copy_into(mut buf: B, headroom: usize, frame: &[u8]) -> Result<Self, PacketError> {
        let end = headroom
            .checked_add(frame.len())
            .ok_or(PacketError::OutOfBounds)?;
        buf.as_mut()
            .get_mut(headroom..end)
            .ok_or(PacketError::OutOfBounds)?
            .copy_from_slice(frame);
        Self::new(buf, headroom, frame.len())
    }
}

impl<B: AsRef<[u8]>> Packet<B> {
    /// Wraps `buf`, whose frame of `len` bytes starts after `headroom` bytes.
    ///
    /// # Errors
    /// [`PacketError::OutOfBounds`] if `headroom + len` exceeds the buffer.
    pub fn new(buf: B, headroom: usize, len: usize) -> Result<Self, PacketError> {
        let end = headroom.checked_add(len).ok_or(PacketError::OutOfBounds)?;
        if end > buf.as_ref().len() {
            return Err(PacketError::OutOfBounds);
        }
        Ok(Self {
            buf,
            head: headroom,
            tail: end,
            meta: Meta::default(),
        })
    }

    /// The frame bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        self.buf
            .as_ref()
            .get(self.head..self.tail)
            .unwrap_or_else(shrunk)
    }

    /// Frame length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.tail - self.head
    }

    /// True for a zero-length frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.tail == self.head
    }

    /// Free bytes in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Free bytes after the frame.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.as_ref().len().saturating_sub(self.tail)
    }

    /// The frame bytes and the metadata, borrowed together (for stages that read one
    /// while writing the other).
    #[inline]
    pub fn data_and_meta_mut(&mut self) -> (&[u8], &mut Meta) {
        (
            self.buf
                .as_ref()
                .get(self.head..self.tail)
                .unwrap_or_else(shrunk),
            &mut self.meta,
        )
    }

    /// The whole underlying buffer.
    pub fn buffer(&self) -> &B {
        &self.buf
    }

    /// The whole underlying buffer, writable (crate-internal: a caller's hook may move the
    /// bytes to other storage, never change them or their length).
    pub(crate) fn buffer_mut(&mut self) -> &mut B {
        &mut self.buf
    }

    /// Gives the buffer back, with the frame's `(headroom, len)`.
    pub fn into_parts(self) -> (B, usize, usize) {
        let len = self.len();
        (self.buf, self.head, len)
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Packet<B> {
    /// The frame bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.head, self.tail);
        self.buf.as_mut().get_mut(h..t).unwrap_or_else(shrunk_mut)
    }

    /// Grows the frame by `n` bytes at the front (into the headroom) and returns them.
    /// Metadata offsets are shifted so they keep pointing at the same headers.
    ///
    /// # Errors
    /// [`PacketError::NoHeadroom`] if fewer than `n` bytes of headroom are free.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> Result<&mut [u8], PacketError> {
        let head = self.head.checked_sub(n).ok_or(PacketError::NoHeadroom)?;
        self.head = head;
        self.meta.shift_up(n);
        self.buf
            .as_mut()
            .get_mut(head..head + n)
            .ok_or(PacketError::NoHeadroom)
    }

    /// Removes `n` bytes from the front of the frame (they become headroom).
    ///
    /// # Errors
    /// [`PacketError::TooShort`] if the frame holds fewer than `n` bytes.
    #[inline]
    pub fn pull_front(&mut self, n: usize) -> Result<(), PacketError> {
        if n > self.len() {
            return Err(PacketError::TooShort);
        }
        self.head += n;
        self.meta.shift_down(n);
        Ok(())
    }

    /// Narrows the frame to its bytes `start..end` (those in front become headroom, those
    /// after tailroom) and returns them with the metadata, whose offsets are left as they
    /// were: for a stage that parses what is left afresh, which rewrites them (a
    /// decapsulation stage parsing the inner frame). One bounds check where
    /// [`Packet::trim_back`], [`Packet::pull_front`] and [`Packet::data_and_meta_mut`]
    /// make three and shift offsets that the parse overwrites.
    ///
    /// # Errors
    /// [`PacketError::TooShort`] unless `start <= end <= len()`.
    #[inline]
    pub fn narrow(&mut self, start: usize, end: usize) -> Result<(&[u8], &mut Meta), PacketError> {
        if start > end || end > self.len() {
            return Err(PacketError::TooShort);
        }
        let (head, tail) = (self.head + start, self.head + end);
        self.head = head;
        self.tail = tail;
        Ok((
            self.buf.as_ref().get(head..tail).unwrap_or_else(shrunk),
            &mut self.meta,
        ))
    }

    /// Grows the frame by `n` bytes at the end (into the tailroom) and returns them.
    ///
    /// # Errors
    /// [`PacketError::NoTailroom`] if fewer than `n` bytes of tailroom are free.
    pub fn push_back(&mut self, n: usize) -> Result<&mut [u8], PacketError> {
        if n > self.tailroom() {
            return Err(PacketError::NoTailroom);
        }
        let t = self.tail;
        self.tail += n;
        self.buf
            .as_mut()
            .get_mut(t..t + n)
            .ok_or(PacketError::NoTailroom)
    }

    /// Shortens the frame by `n` bytes at the end (e.g. Ethernet padding).
    ///
    /// # Errors
    /// [`PacketError::TooShort`] if the frame holds fewer than `n` bytes.
    pub fn trim_back(&mut self, n: usize) -> Result<(), PacketError> {
        if n > self.len() {
            return Err(PacketError::TooShort);
        }
        self.tail -= n;
        Ok(())
    }

    /// Re-targets the packet at a new frame in the same buffer and clears the metadata,
    /// so buffers can be recycled without reallocating.
    ///
    /// # Errors
    /// [`PacketError::OutOfBounds`] if `headroom + len` exceeds the buffer.
    pub fn reset(&mut self, headroom: usize, len: usize) -> Result<(), PacketError> {
        let end = headroom.checked_add(len).ok_or(PacketError::OutOfBounds)?;
        if end > self.buf.as_ref().len() {
            return Err(PacketError::OutOfBounds);
        }
        self.head = headroom;
        self.tail = end;
        self.meta = Meta::default();
        Ok(())
    }
}

/// The frame of a packet whose buffer no longer covers it (an `as_ref` that shrank): empty.
/// Cold on purpose: the bounds check then compiles to a predicted branch rather than a
/// select, so loads from the frame need not wait for the check (measured by `nf-bench
/// parse`: about 1 ns per packet).
#[cold]
fn shrunk<'a>() -> &'a [u8] {
    &[]
}

/// [`shrunk`], writable.
#[cold]
fn shrunk_mut<'a>() -> &'a mut [u8] {
    &mut []
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::cell::Cell;

    /// A buffer whose visible length a test can shrink after the packet was built: the
    /// accessors must give an empty frame, not panic.
    struct Shrinking {
        bytes: [u8; 16],
        visible: Cell<usize>,
    }

    impl AsRef<[u8]> for Shrinking {
        fn as_ref(&self) -> &[u8] {
            self.bytes.get(..self.visible.get()).unwrap_or(&[])
        }
    }

    impl AsMut<[u8]> for Shrinking {
        fn as_mut(&mut self) -> &mut [u8] {
            let n = self.visible.get();
            self.bytes.get_mut(..n).unwrap_or(&mut [])
        }
    }

    #[test]
    fn a_buffer_that_shrinks_gives_an_empty_frame() {
        let buf = Shrinking {
            bytes: [7; 16],
            visible: Cell::new(16),
        };
        let mut p = Packet::new(buf, 2, 10).unwrap();
        assert_eq!(p.data(), &[7; 10]);
        p.buffer().visible.set(4);
        assert!(p.data().is_empty());
        assert!(p.data_mut().is_empty());
        assert!(p.data_and_meta_mut().0.is_empty());
        let mut parse = crate::ParseStage::default();
        let mut batch = crate::Batch::new();
        batch.push(p).ok();
        crate::Stage::process(&mut parse, crate::Instant::ZERO, &mut batch);
        assert_eq!(
            batch.packets()[0].meta.verdict,
            crate::Verdict::Drop(crate::DropReason::EthTruncated)
        );
    }

    #[test]
    fn constructors_copy_the_frame_after_the_headroom() {
        let p = Packet::with_headroom(&[1, 2, 3], 5);
        assert_eq!(
            (p.headroom(), p.data(), p.tailroom()),
            (5, &[1, 2, 3][..], 0)
        );
        let p = Packet::with_headroom(&[], 0);
        assert!(p.is_empty());
        let mut buf = [0u8; 8];
        let p = Packet::copy_into(&mut buf[..], 5, &[1, 2, 3]).unwrap();
        assert_eq!(
            (p.headroom(), p.data(), p.tailroom()),
            (5, &[1, 2, 3][..], 0)
        );
        assert_eq!(
            Packet::copy_into(&mut buf[..], 6, &[1, 2, 3]).unwrap_err(),
            PacketError::OutOfBounds
        );
        assert_eq!(
            Packet::copy_into(&mut buf[..], usize::MAX, &[1]).unwrap_err(),
            PacketError::OutOfBounds
        );
    }

    #[test]
    fn narrow_keeps_a_window_and_leaves_the_offsets() {
        let mut p = Packet::with_headroom(&[1, 2, 3, 4, 5, 6], 2);
        p.meta.l3 = 9;
        assert_eq!(p.narrow(4, 3), Err(PacketError::TooShort));
        assert_eq!(p.narrow(1, 7), Err(PacketError::TooShort));
        assert_eq!(p.narrow(usize::MAX, usize::MAX), Err(PacketError::TooShort));
        assert_eq!(p.data(), &[1, 2, 3, 4, 5, 6]);
        let (d, m) = p.narrow(2, 5).unwrap();
        assert_eq!((d, m.l3), (&[3, 4, 5][..], 9));
        assert_eq!((p.headroom(), p.len(), p.tailroom()), (4, 3, 1));
        // Like trim_back then pull_front, but without the offset shift.
        let mut q = Packet::with_headroom(&[1, 2, 3, 4, 5, 6], 2);
        q.trim_back(1).unwrap();
        q.pull_front(2).unwrap();
        assert_eq!((q.data(), q.headroom()), (p.data(), p.headroom()));
        assert_eq!(p.narrow(3, 3).map(|(d, _)| d.len()), Ok(0));
    }

    #[test]
    fn window_operations_are_checked() {
        let mut p = Packet::new(vec![0u8; 16], 4, 8).unwrap();
        assert_eq!((p.headroom(), p.len(), p.tailroom()), (4, 8, 4));
        assert_eq!(p.push_front(5).unwrap_err(), PacketError::NoHeadroom);
        assert_eq!(p.push_back(5).unwrap_err(), PacketError::NoTailroom);
        p.meta.l3 = 2;
        p.push_front(4).unwrap().fill(9);
        assert_eq!(p.meta.l3, 6);
        assert_eq!(p.headroom(), 0);
        p.pull_front(10).unwrap();
        assert_eq!(p.meta.l3, 0, "offsets of removed headers clamp at 0");
        assert_eq!(p.pull_front(3).unwrap_err(), PacketError::TooShort);
        p.push_back(4).unwrap();
        p.trim_back(6).unwrap();
        assert!(p.is_empty());
        assert_eq!(
            Packet::new(vec![0u8; 4], 3, 2).unwrap_err(),
            PacketError::OutOfBounds
        );
        assert_eq!(
            Packet::new(vec![0u8; 4], usize::MAX, 2).unwrap_err(),
            PacketError::OutOfBounds
        );
        p.reset(1, 3).unwrap();
        assert_eq!(p.data(), &[9, 9, 9]);
    }
}
