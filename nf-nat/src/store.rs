//! A fixed-capacity store of per-session entries that do not fit a session value (inside
//! IPv6 addresses, hairpin peers), indexed by a `u32` the value keeps.

use alloc::vec::Vec;

/// Entries of translated sessions that do not fit their value (inside IPv6 addresses,
/// hairpin peers), with a free list; allocated up front.
pub(crate) struct Store<T> {
    items: Vec<T>,
    free: Vec<u32>,
}

impl<T: Copy + Default> Store<T> {
    pub(crate) fn new(n: usize) -> Self {
        let n = n.min(u32::MAX as usize);
        Self {
            items: alloc::vec![T::default(); n],
            free: (0..n as u32).rev().collect(),
        }
    }

    pub(crate) fn take(&mut self, a: T) -> Option<u32> {
        let i = self.free.pop()?;
        if let Some(slot) = self.items.get_mut(i as usize) {
            *slot = a;
        }
        Some(i)
    }

    pub(crate) fn get(&self, i: u32) -> Option<&T> {
        self.items.get(i as usize)
    }

    pub(crate) fn put(&mut self, i: u32) {
        // The free list was allocated with room for every index.
        if (i as usize) < self.items.len() && self.free.len() < self.items.len() {
            self.free.push(i);
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.items.capacity() * core::mem::size_of::<T>() + self.free.capacity() * 4
    }
}
