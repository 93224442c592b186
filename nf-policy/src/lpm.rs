//! Longest-prefix match for IPv4 and IPv6: multibit tries built off the hot path, looked up in
//! a bounded number of memory reads.
//!
//! A table is built from a list of (prefix, length, next hop) by a builder that validates every
//! route ([`LpmError`]), then frozen: an [`Ipv4Lpm`] or [`Ipv6Lpm`] never changes, and a new
//! route set is a new table that the caller swaps in whole (for example through an `Arc` in a
//! config snapshot).
//!
//! # Structure
//!
//! Both families use the same leaf-pushed multibit trie with path compression: a *root* array
//! indexed by the first `r` bits of the address, then groups of 256 entries each indexed by the
//! next 8 bits. An entry is a 32-bit word: `0` (no route), a next hop (`hop + 1`, so hops are
//! at most [`MAX_NEXT_HOP`]), the index of a child group, or the index of a *tail*: a subtree
//! that holds a single route is stored as that route's (prefix, length, next hop) plus the leaf
//! for the rest of the subtree, instead of a chain of mostly-empty groups. The build is
//! recursive over the routes sorted by key: routes that end within a group are painted in order
//! of increasing length, so every entry holds the longest route that covers it (a child group
//! or tail starts from the entry it replaces); a lookup therefore never backtracks, and stops at
//! the first leaf or after one tail comparison.
//!
//! - IPv4 with [`Ipv4Layout::Dir24`] (DIR-24-8): a 2^24-entry root (64 MiB of `u32`), then at
//!   most one group or tail for routes longer than /24: one random memory read for almost every
//!   lookup. [`Ipv4Layout::Trie16`] (16-8-8): a 256 KiB root and up to two more reads, for small
//!   tables (per-zone route tables) where 64 MiB would be waste. [`Ipv4Layout::Auto`] picks
//!   DIR-24-8 from [`DIR24_MIN_ROUTES`] routes on. At the `lpm` benchmark's million prefixes
//!   DIR-24-8 takes about 70 MB (the root plus groups for the /24s holding more than one longer
//!   route, and 16-byte IPv4 tails), 16-8-8 about 62 MB.
//! - IPv6: a 2^16-entry root then 8-bit strides: at most 1 + 14 reads plus one tail, bounded by
//!   the key width, never by the number of routes. With tails, 50 000 mostly-/48 prefixes take
//!   about 7 MB (without them each route cost up to four 1 KiB groups).
//!
//! The entries are `u32` rather than DPDK's `u16` so that next-hop ids and group counts are not
//! limited to 2^15 (a million-route table with a few percent of routes longer than /24 needs
//! more than 32768 groups).
//!
//! # Batches
//!
//! [`Ipv4Lpm::lookup_batch`] (and its IPv6 twin) works level by level over up to 64
//! addresses: it loads every root entry first (independent loads the CPU overlaps), then
//! gathers, without branches, the addresses whose entry points into a group or tail and loads
//! all of those together, and so on down. No branch on a loaded entry sits between two loads,
//! so a mispredicted "is this a group?" does not serialise the misses. A batch gives exactly
//! the results of single lookups (property-tested).
//!
//! IPv4 goes further, for tables far larger than the caches (the DIR-24-8 root is 64 MiB).
//! Before any root entry is loaded, every one is *prefetched* into the second-level cache
//! ([`nf_core::prefetch_l2`]): a prefetch waits on nothing, so the batch's misses all start
//! at once, where a load loop keeps only as many in flight as the reorder window holds, and
//! first-level prefetches only as many as the first level's few miss buffers. Each level below
//! is prefetched the same way before it is read. Nothing that waits on a missing load shares
//! the load loop (it would fill the schedulers and stall the loads behind it), and the root is
//! seen as a fixed-size array, so its indexes need no bounds checks. On the `lpm` benchmark
//! (1M prefixes, batches of 64) this took 16-8-8, whose groups below its cache-resident root
//! are the misses, from about 3.5 to 1.75 times `floor_ns_per_load_64mib` (this machine's cost
//! of one bare random load per address from a 64 MiB array). DIR-24-8 keeps the root prefetch
//! but then resolves each key on its own: almost every key ends at its root entry, and the
//! level-by-level passes cost more than they save there (about 2.1 times the floor with them,
//! 1.65 without, with the root warm in the last-level cache). IPv6 keeps the plain
//! loads: its tables are megabytes, not tens of them, and the prefetch passes measured slower
//! there (50k prefixes: about 15.5 against 17 ns).
//!
//! # Duplicates
//!
//! The same (prefix, length) inserted twice: the last next hop wins. Host bits set below the
//! prefix length are an error ([`LpmError::HostBits`]); [`Ipv4LpmBuilder::insert_masked`] and
//! [`Ipv6LpmBuilder::insert_masked`] clear them instead.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};

/// The largest next-hop id a table can hold (the entry's top bit marks a child group, and
/// `0` means "no route").
pub const MAX_NEXT_HOP: u32 = TAIL - 2;

/// From this many routes on, [`Ipv4Layout::Auto`] builds DIR-24-8 (a 64 MiB root); below, the
/// 16-8-8 trie.
pub const DIR24_MIN_ROUTES: usize = 65_536;

/// Largest number of 256-entry groups a table may hold.
const MAX_GROUPS: usize = INDEX as usize;
/// Entry bit: not a leaf (a child group, or with [`TAIL`] a compressed path).
const CHILD: u32 = 1 << 31;
/// Entry bit (with [`CHILD`]): a compressed path, index into the tails.
const TAIL: u32 = 1 << 30;
/// Entry bits holding a group or tail index.
const INDEX: u32 = TAIL - 1;
const STRIDE: u32 = 8;
const GROUP: usize = 1 << STRIDE;
/// Lookups per batch chunk: the root entries of a chunk are loaded before any is resolved.
const CHUNK: usize = 64;

/// A route the builder rejected, or a table too large to build.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LpmError {
    /// The prefix length exceeds the address width (32 or 128).
    PrefixLength {
        /// The length given.
        len: u8,
        /// The family's address width.
        max: u8,
    },
    /// The address has bits set beyond the prefix length (e.g. `10.0.0.1/8`).
    HostBits,
    /// The next hop is above [`MAX_NEXT_HOP`].
    NextHop {
        /// The next hop given.
        hop: u32,
    },
    /// The routes need more than 2^31 − 1 groups.
    TooManyGroups,
}

impl fmt::Display for LpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PrefixLength { len, max } => {
                write!(f, "prefix length {len} exceeds the address width {max}")
            }
            Self::HostBits => f.write_str("address has bits set beyond the prefix length"),
            Self::NextHop { hop } => write!(f, "next hop {hop} exceeds {MAX_NEXT_HOP}"),
            Self::TooManyGroups => f.write_str("the routes need more than 2^31 - 1 trie groups"),
        }
    }
}

impl core::error::Error for LpmError {}

/// The IPv4 table layout (root stride).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ipv4Layout {
    /// DIR-24-8 from [`DIR24_MIN_ROUTES`] routes on, 16-8-8 below.
    #[default]
    Auto,
    /// DIR-24-8: 2^24 root entries (64 MiB), at most two reads per lookup.
    Dir24,
    /// 16-8-8: 2^16 root entries (256 KiB), at most three reads per lookup.
    Trie16,
}

/// Collects and validates IPv4 routes, then builds an [`Ipv4Lpm`].
#[derive(Clone, Debug, Default)]
pub struct Ipv4LpmBuilder {
    routes: Routes,
    layout: Ipv4Layout,
}

impl Ipv4LpmBuilder {
    /// An empty builder with the [`Ipv4Layout::Auto`] layout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the table layout.
    #[must_use]
    pub fn layout(mut self, layout: Ipv4Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Adds a route; a later route with the same prefix and length replaces it.
    ///
    /// # Errors
    /// [`LpmError::PrefixLength`] above /32, [`LpmError::HostBits`] if `prefix` has bits set
    /// beyond `len`, [`LpmError::NextHop`] above [`MAX_NEXT_HOP`].
    pub fn insert(&mut self, prefix: Ipv4Addr, len: u8, next_hop: u32) -> Result<(), LpmError> {
        self.routes.insert(v4_key(prefix), 32, len, next_hop, false)
    }

    /// Adds a route after clearing the host bits of `prefix`.
    ///
    /// # Errors
    /// As [`insert`](Self::insert), except never [`LpmError::HostBits`].
    pub fn insert_masked(
        &mut self,
        prefix: Ipv4Addr,
        len: u8,
        next_hop: u32,
    ) -> Result<(), LpmError> {
        self.routes.insert(v4_key(prefix), 32, len, next_hop, true)
    }

    /// Number of routes added so far (duplicates included).
    pub fn len(&self) -> usize {
        self.routes.list.len()
    }

    /// Whether no route was added.
    pub fn is_empty(&self) -> bool {
        self.routes.list.is_empty()
    }

    /// Builds the table (off the hot path: allocates and paints every route).
    ///
    /// # Errors
    /// [`LpmError::TooManyGroups`] if the routes need more groups than an entry can address.
    pub fn build(&self) -> Result<Ipv4Lpm, LpmError> {
        let dir24 = match self.layout {
            Ipv4Layout::Dir24 => true,
            Ipv4Layout::Trie16 => false,
            Ipv4Layout::Auto => self.routes.list.len() >= DIR24_MIN_ROUTES,
        };
        let root_bits = if dir24 { 24 } else { 16 };
        Ok(Ipv4Lpm {
            trie: Trie::build_compressed(root_bits, true, self.routes.sorted())?,
        })
    }
}

/// An immutable IPv4 longest-prefix-match table (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Ipv4Lpm {
    trie: Trie,
}

impl Ipv4Lpm {
    /// Builds a table from (prefix, length, next hop) routes with the automatic layout.
    ///
    /// # Errors
    /// The first invalid route's error, as [`Ipv4LpmBuilder::insert`] and
    /// [`Ipv4LpmBuilder::build`].
    pub fn from_routes(
        routes: impl IntoIterator<Item = (Ipv4Addr, u8, u32)>,
    ) -> Result<Self, LpmError> {
        let mut b = Ipv4LpmBuilder::new();
        for (p, l, h) in routes {
            b.insert(p, l, h)?;
        }
        b.build()
    }

    /// The next hop of the longest prefix containing `addr`, if any.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<u32> {
        let a = u32::from(addr);
        self.trie.resolve_v4(a, self.trie.root_entry_v4(a))
    }

    /// Looks up `addrs[i]` into `out[i]` for every `i` below the shorter length: the same
    /// results as [`lookup`](Self::lookup), with the root reads of up to 64 addresses overlapped.
    pub fn lookup_batch(&self, addrs: &[Ipv4Addr], out: &mut [Option<u32>]) {
        for (a, o) in addrs.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            self.trie.batch_v4(a, o);
        }
    }

    /// Bytes of the table's own allocations.
    pub fn bytes(&self) -> usize {
        self.trie.bytes()
    }

    /// Whether this is the DIR-24-8 layout.
    pub fn is_dir24(&self) -> bool {
        self.trie.root_bits == 24
    }
}

/// Collects and validates IPv6 routes, then builds an [`Ipv6Lpm`].
#[derive(Clone, Debug, Default)]
pub struct Ipv6LpmBuilder {
    routes: Routes,
}

impl Ipv6LpmBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route; a later route with the same prefix and length replaces it.
    ///
    /// # Errors
    /// [`LpmError::PrefixLength`] above /128, [`LpmError::HostBits`] if `prefix` has bits set
    /// beyond `len`, [`LpmError::NextHop`] above [`MAX_NEXT_HOP`].
    pub fn insert(&mut self, prefix: Ipv6Addr, len: u8, next_hop: u32) -> Result<(), LpmError> {
        self.routes
            .insert(u128::from(prefix), 128, len, next_hop, false)
    }

    /// Adds a route after clearing the host bits of `prefix`.
    ///
    /// # Errors
    /// As [`insert`](Self::insert), except never [`LpmError::HostBits`].
    pub fn insert_masked(
        &mut self,
        prefix: Ipv6Addr,
        len: u8,
        next_hop: u32,
    ) -> Result<(), LpmError> {
        self.routes
            .insert(u128::from(prefix), 128, len, next_hop, true)
    }

    /// Number of routes added so far (duplicates included).
    pub fn len(&self) -> usize {
        self.routes.list.len()
    }

    /// Whether no route was added.
    pub fn is_empty(&self) -> bool {
        self.routes.list.is_empty()
    }

    /// Builds the table (off the hot path).
    ///
    /// # Errors
    /// [`LpmError::TooManyGroups`] if the routes need more groups than an entry can address.
    pub fn build(&self) -> Result<Ipv6Lpm, LpmError> {
        Ok(Ipv6Lpm {
            trie: Trie::build_compressed(16, false, self.routes.sorted())?,
        })
    }
}

/// An immutable IPv6 longest-prefix-match table (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Ipv6Lpm {
    trie: Trie,
}

impl Ipv6Lpm {
    /// Builds a table from (prefix, length, next hop) routes.
    ///
    /// # Errors
    /// The first invalid route's error, as [`Ipv6LpmBuilder::insert`] and
    /// [`Ipv6LpmBuilder::build`].
    pub fn from_routes(
        routes: impl IntoIterator<Item = (Ipv6Addr, u8, u32)>,
    ) -> Result<Self, LpmError> {
        let mut b = Ipv6LpmBuilder::new();
        for (p, l, h) in routes {
            b.insert(p, l, h)?;
        }
        b.build()
    }

    /// The next hop of the longest prefix containing `addr`, if any.
    #[inline]
    pub fn lookup(&self, addr: Ipv6Addr) -> Option<u32> {
        let a = u128::from(addr);
        self.trie.resolve(a, self.trie.root_entry(a))
    }

    /// Looks up `addrs[i]` into `out[i]` for every `i` below the shorter length: the same
    /// results as [`lookup`](Self::lookup), with the root reads of up to 64 addresses overlapped.
    pub fn lookup_batch(&self, addrs: &[Ipv6Addr], out: &mut [Option<u32>]) {
        for (a, o) in addrs.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            self.trie.batch(a, o);
        }
    }

    /// Bytes of the table's own allocations.
    pub fn bytes(&self) -> usize {
        self.trie.bytes()
    }
}

impl Default for Ipv6Lpm {
    fn default() -> Self {
        Self {
            trie: Trie::empty(16),
        }
    }
}

impl Default for Ipv4Lpm {
    fn default() -> Self {
        Self {
            trie: Trie::empty(16),
        }
    }
}

/// The answer a leaf entry gives (`None` for a child entry too).
#[inline(always)]
fn leaf(e: u32) -> Option<u32> {
    // Leaves are 0 (no route) or hop + 1 below CHILD.
    let hop = e.wrapping_sub(1);
    if hop < CHILD - 1 { Some(hop) } else { None }
}

/// An IPv4 address as a left-aligned 128-bit key.
fn v4_key(a: Ipv4Addr) -> u128 {
    u128::from(u32::from(a)) << 96
}

/// Routes as left-aligned 128-bit keys, in insertion order.
#[derive(Clone, Debug, Default)]
struct Routes {
    list: Vec<(u128, u8, u32)>,
}

impl Routes {
    fn insert(
        &mut self,
        key: u128,
        width: u8,
        len: u8,
        hop: u32,
        mask: bool,
    ) -> Result<(), LpmError> {
        if len > width {
            return Err(LpmError::PrefixLength { len, max: width });
        }
        if hop > MAX_NEXT_HOP {
            return Err(LpmError::NextHop { hop });
        }
        // Keys are left-aligned: an IPv4 /len covers the top `len` bits as an IPv6 /len does.
        let m = prefix_mask(u32::from(len));
        if key & !m != 0 && !mask {
            return Err(LpmError::HostBits);
        }
        self.list.push((key & m, len, hop));
        Ok(())
    }

    /// Routes by increasing length, one per (prefix, length), the last inserted winning.
    fn sorted(&self) -> Vec<(u128, u8, u32)> {
        let mut v: Vec<(u128, u8, u32)> = self.list.iter().rev().copied().collect();
        // Stable: among equal (prefix, length) the last inserted comes first and is kept.
        v.sort_by_key(|&(k, l, _)| (l, k));
        v.dedup_by_key(|&mut (k, l, _)| (l, k));
        v
    }
}

/// The top `len` bits of a 128-bit word.
fn prefix_mask(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len.min(128)).unwrap_or(0)
}

/// `n` bits of a left-aligned key starting `from` bits from the top (`n` in 1..=24).
#[inline(always)]
fn bits(key: u128, from: u32, n: u32) -> usize {
    (key.checked_shl(from).unwrap_or(0) >> (128 - n)) as usize
}

/// An address as the trie reads it: its root index and its 8-bit strides.
trait Key: Copy {
    /// Address width in bits.
    const WIDTH: u32;
    /// The top `n` bits.
    fn top(self, n: u32) -> usize;
    /// The 8 bits after the first `from`.
    fn stride(self, from: u32) -> usize;
    /// The key left-aligned in 128 bits.
    fn wide(self) -> u128;
}

impl Key for Ipv4Addr {
    const WIDTH: u32 = 32;
    #[inline(always)]
    fn top(self, n: u32) -> usize {
        // `n` is a root width (16 or 24), so the shift is below 32.
        (u32::from(self) >> (32 - n).min(31)) as usize
    }
    #[inline(always)]
    fn stride(self, from: u32) -> usize {
        (u32::from(self).checked_shl(from).unwrap_or(0) >> (32 - STRIDE)) as usize
    }
    #[inline(always)]
    fn wide(self) -> u128 {
        u128::from(u32::from(self)) << 96
    }
}

impl Key for Ipv6Addr {
    const WIDTH: u32 = 128;
    #[inline(always)]
    fn top(self, n: u32) -> usize {
        bits(u128::from(self), 0, n)
    }
    #[inline(always)]
    fn stride(self, from: u32) -> usize {
        bits(u128::from(self), from, STRIDE)
    }
    #[inline(always)]
    fn wide(self) -> u128 {
        u128::from(self)
    }
}

/// The leaf-pushed multibit trie shared by both families.
#[derive(Clone, Debug)]
struct Trie {
    root_bits: u32,
    root: Vec<u32>,
    /// Groups of [`GROUP`] entries, group `g` at `g * GROUP`.
    nodes: Vec<u32>,
    /// Compressed paths (IPv6 only): a subtree that holds a single route.
    tails: Vec<Tail>,
    /// IPv4 tails (16 bytes instead of 32: more of them stay in cache).
    tails4: Vec<Tail4>,
    /// Whether keys are IPv4 (tails go to `tails4`).
    v4: bool,
}

/// [`Tail`] for a 32-bit key.
#[derive(Clone, Copy, Debug)]
struct Tail4 {
    key: u32,
    len: u8,
    hit: u32,
    miss: u32,
}

impl Tail4 {
    #[inline(always)]
    fn leaf(&self, key: u32) -> u32 {
        let m = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        if key & m == self.key {
            self.hit
        } else {
            self.miss
        }
    }
}

/// A subtree holding one route: the route's key and length, the leaf for addresses inside it
/// and the leaf for the rest of the subtree (the covering route pushed down).
#[derive(Clone, Copy, Debug)]
struct Tail {
    key: u128,
    len: u8,
    hit: u32,
    miss: u32,
}

impl Tail {
    #[inline(always)]
    fn leaf(&self, key: u128) -> u32 {
        if key & prefix_mask(u32::from(self.len)) == self.key {
            self.hit
        } else {
            self.miss
        }
    }
}

impl Trie {
    fn empty(root_bits: u32) -> Self {
        Self {
            root_bits,
            root: vec![0; 1 << root_bits],
            nodes: Vec::new(),
            tails: Vec::new(),
            tails4: Vec::new(),
            v4: false,
        }
    }

    /// Builds with path compression: a subtree below the root that holds a single route
    /// becomes one [`Tail`] instead of a chain of groups (at most one 256-entry group per 8
    /// bits of the route otherwise). `routes` as from [`Routes::sorted`].
    fn build_compressed(
        root_bits: u32,
        v4: bool,
        routes: Vec<(u128, u8, u32)>,
    ) -> Result<Self, LpmError> {
        let mut t = Self::empty(root_bits);
        t.v4 = v4;
        let (short, mut long): (Vec<_>, Vec<_>) = routes
            .into_iter()
            .partition(|&(_, l, _)| u32::from(l) <= root_bits);
        // `short` is by increasing length: paint.
        for (key, len, hop) in short {
            let start = bits(key, 0, root_bits);
            let n = 1usize << (root_bits - u32::from(len));
            if let Some(r) = t.root.get_mut(start..start.saturating_add(n)) {
                r.fill(hop + 1);
            }
        }
        // By key, so that the routes below any prefix are contiguous.
        long.sort_unstable_by_key(|&(k, l, _)| (k, l));
        let mut rest = long.as_slice();
        while let Some(&(k, _, _)) = rest.first() {
            let i = bits(k, 0, root_bits);
            let n = rest
                .iter()
                .take_while(|r| bits(r.0, 0, root_bits) == i)
                .count();
            let (run, tail) = rest.split_at(n);
            rest = tail;
            let fallback = t.root.get(i).copied().unwrap_or(0);
            let e = t.subtree(run, root_bits, fallback)?;
            if let Some(r) = t.root.get_mut(i) {
                *r = e;
            }
        }
        t.nodes.shrink_to_fit();
        t.tails.shrink_to_fit();
        t.tails4.shrink_to_fit();
        Ok(t)
    }

    /// The entry for a subtree at `depth` bits holding `routes` (all longer than `depth`,
    /// sorted by key), whose addresses otherwise match the leaf `fallback`.
    fn subtree(
        &mut self,
        routes: &[(u128, u8, u32)],
        depth: u32,
        fallback: u32,
    ) -> Result<u32, LpmError> {
        if let [(key, len, hop)] = routes {
            let i = if self.v4 {
                self.tails4.len()
            } else {
                self.tails.len()
            };
            if i >= MAX_GROUPS {
                return Err(LpmError::TooManyGroups);
            }
            if self.v4 {
                self.tails4.push(Tail4 {
                    key: (*key >> 96) as u32,
                    len: *len,
                    hit: hop + 1,
                    miss: fallback,
                });
            } else {
                self.tails.push(Tail {
                    key: *key,
                    len: *len,
                    hit: hop + 1,
                    miss: fallback,
                });
            }
            return Ok(CHILD | TAIL | i as u32);
        }
        let g = self.nodes.len() / GROUP;
        if g >= MAX_GROUPS {
            return Err(LpmError::TooManyGroups);
        }
        let base = g * GROUP;
        self.nodes.resize(base + GROUP, fallback);
        let end = depth + STRIDE;
        // Routes ending in this group, by increasing length (stable: keys stay sorted).
        let mut ending: Vec<(u128, u8, u32)> = routes
            .iter()
            .copied()
            .filter(|&(_, l, _)| u32::from(l) <= end)
            .collect();
        ending.sort_by_key(|&(_, l, _)| l);
        for (key, len, hop) in ending {
            let at = base + bits(key, depth, STRIDE);
            let n = 1usize << (end - u32::from(len));
            if let Some(r) = self.nodes.get_mut(at..at.saturating_add(n)) {
                r.fill(hop + 1);
            }
        }
        let deeper: Vec<(u128, u8, u32)> = routes
            .iter()
            .copied()
            .filter(|&(_, l, _)| u32::from(l) > end)
            .collect();
        let mut rest = deeper.as_slice();
        while let Some(&(k, _, _)) = rest.first() {
            let b = bits(k, depth, STRIDE);
            let n = rest
                .iter()
                .take_while(|r| bits(r.0, depth, STRIDE) == b)
                .count();
            let (run, tail) = rest.split_at(n);
            rest = tail;
            let fb = self.nodes.get(base + b).copied().unwrap_or(0);
            let e = self.subtree(run, end, fb)?;
            if let Some(r) = self.nodes.get_mut(base + b) {
                *r = e;
            }
        }
        Ok(CHILD | g as u32)
    }

    fn bytes(&self) -> usize {
        (self.root.capacity() + self.nodes.capacity()) * core::mem::size_of::<u32>()
            + self.tails.capacity() * core::mem::size_of::<Tail>()
            + self.tails4.capacity() * core::mem::size_of::<Tail4>()
    }

    /// Looks up at most [`CHUNK`] keys into `out`, level by level: every root entry first
    /// (independent loads the CPU overlaps), then the entries of the groups the pending keys
    /// point into, one level at a time, so the loads of a level overlap too and no branch on a
    /// key's entry sits between two loads.
    #[inline]
    fn batch<K: Key>(&self, keys: &[K], out: &mut [Option<u32>]) {
        let mut e = [0u32; CHUNK];
        for (e, &k) in e.iter_mut().zip(keys) {
            *e = self.root.get(k.top(self.root_bits)).copied().unwrap_or(0);
        }
        // Indexes of the keys whose entry is a child group (compacted without branches).
        let mut pending = [0u8; CHUNK];
        let mut np = 0usize;
        for (i, &x) in e.iter().enumerate().take(keys.len()) {
            if let Some(p) = pending.get_mut(np) {
                *p = i as u8;
            }
            np += usize::from(x & CHILD != 0);
        }
        let mut consumed = self.root_bits;
        while np > 0 && consumed < K::WIDTH {
            for &i in pending.iter().take(np) {
                let i = usize::from(i);
                if let (Some(x), Some(k)) = (e.get_mut(i), keys.get(i)) {
                    *x = if *x & TAIL != 0 {
                        self.tail(k.wide(), *x)
                    } else {
                        let at = (*x & INDEX) as usize * GROUP + k.stride(consumed);
                        self.nodes.get(at).copied().unwrap_or(0)
                    };
                }
            }
            let mut m = 0usize;
            for j in 0..np {
                let i = pending.get(j).copied().unwrap_or(0);
                let child = e.get(usize::from(i)).is_some_and(|x| x & CHILD != 0);
                if let Some(p) = pending.get_mut(m) {
                    *p = i;
                }
                m += usize::from(child);
            }
            np = m;
            consumed += STRIDE;
        }
        for (o, &x) in out.iter_mut().zip(&e).take(keys.len()) {
            *o = if x & CHILD != 0 {
                None
            } else {
                x.checked_sub(1)
            };
        }
    }

    /// [`batch`](Self::batch) for IPv4 keys, with the root seen as a fixed-size array (so
    /// that its indexes need no bounds checks) and 32-bit key arithmetic.
    #[inline]
    fn batch_v4(&self, keys: &[Ipv4Addr], out: &mut [Option<u32>]) {
        if let Ok(root) = <&[u32; 1 << 24]>::try_from(self.root.as_slice()) {
            self.batch_dir24(root, keys, out);
        } else if let Ok(root) = <&[u32; 1 << 16]>::try_from(self.root.as_slice()) {
            self.batch_v4_in(root, keys, out);
        } else {
            self.batch(keys, out);
        }
    }

    /// [`batch_v4`](Self::batch_v4) over the DIR-24-8 root: every root entry prefetched, then
    /// each key resolved on its own.
    ///
    /// Almost every key ends at its root entry, so the level-by-level walk of
    /// [`batch_v4_in`](Self::batch_v4_in) would spend its extra passes (loading the entries
    /// into an array, compacting the pending keys, writing the results) on a level that
    /// holds few keys; out-of-order execution already overlaps the few dependent group
    /// loads with the next keys' root loads. The prefetch pass stays: it starts all of the
    /// batch's misses at once when the root is not in the last-level cache. On the `lpm`
    /// benchmark (1M prefixes, batches of 64) this took DIR-24-8 from about 9.3 to 7.5 ns per
    /// lookup with the root warm in this machine's large last-level cache, and from about
    /// 13.3 to 10.6 with it half cold; without the prefetch pass, about 6.9 and 13.3.
    #[inline(always)]
    fn batch_dir24(&self, root: &[u32; 1 << 24], keys: &[Ipv4Addr], out: &mut [Option<u32>]) {
        let index = |k: Ipv4Addr| (u32::from(k) >> 8) as usize;
        for &k in keys {
            if let Some(r) = root.get(index(k)) {
                nf_core::prefetch_l2(r);
            }
        }
        for (o, &k) in out.iter_mut().zip(keys) {
            let e = root.get(index(k)).copied().unwrap_or(0);
            *o = self.resolve_v4(u32::from(k), e);
        }
    }

    /// [`batch_v4`](Self::batch_v4) over a root of `N` = 2^`root_bits` entries, level by
    /// level (the 16-8-8 layout, whose misses are in the groups below a cached root).
    ///
    /// The root entries are first only prefetched, into the second-level cache: a prefetch
    /// waits on nothing, so all of the batch's misses are started at once (a load loop keeps
    /// only as many in flight as the reorder window holds, and first-level prefetches as many
    /// as the first level's few miss buffers). The loads that follow then find their lines
    /// arriving. The compaction of the pending keys is its own loop: work that depends on a
    /// missing load, put in the load loop, fills the schedulers and stalls the loads behind it.
    #[inline(always)]
    fn batch_v4_in<const N: usize>(
        &self,
        root: &[u32; N],
        keys: &[Ipv4Addr],
        out: &mut [Option<u32>],
    ) {
        let root_bits = N.trailing_zeros();
        let n = keys.len().min(out.len()).min(CHUNK);
        let keys = keys.get(..n).unwrap_or_default();
        let out = out.get_mut(..n).unwrap_or_default();
        let index = |k: Ipv4Addr| (u32::from(k) >> (32 - root_bits)) as usize;
        for &k in keys {
            if let Some(r) = root.get(index(k)) {
                nf_core::prefetch_l2(r);
            }
        }
        let mut e = [0u32; CHUNK];
        for (x, &k) in e.iter_mut().zip(keys) {
            *x = root.get(index(k)).copied().unwrap_or(0);
        }
        // Indexes of the keys whose entry is a child (compacted without branches).
        let mut pending = [0u8; CHUNK];
        let mut np = 0usize;
        for (&x, i) in e.iter().zip(0u8..).take(n) {
            // np <= i < CHUNK.
            if let Some(p) = pending.get_mut(np % CHUNK) {
                *p = i;
            }
            np += (x >> 31) as usize;
        }
        let mut consumed = root_bits;
        while np > 0 && consumed < 32 {
            for &i in pending.iter().take(np) {
                let i = usize::from(i);
                if let (Some(&x), Some(&k)) = (e.get(i), keys.get(i)) {
                    self.prefetch_child_v4(u32::from(k), x, consumed);
                }
            }
            let mut m = 0usize;
            for j in 0..np {
                let i = pending.get(j).copied().unwrap_or(0);
                let (Some(x), Some(&k)) = (e.get_mut(usize::from(i)), keys.get(usize::from(i)))
                else {
                    continue;
                };
                let a = u32::from(k);
                *x = if *x & TAIL != 0 {
                    self.tail4(a, *x)
                } else {
                    let b = (a << consumed >> (32 - STRIDE)) as usize;
                    self.nodes
                        .get((*x & INDEX) as usize * GROUP + b)
                        .copied()
                        .unwrap_or(0)
                };
                // m <= j: the compaction never overtakes the read.
                if let Some(p) = pending.get_mut(m % CHUNK) {
                    *p = i;
                }
                m += (*x >> 31) as usize;
            }
            np = m;
            consumed += STRIDE;
        }
        for (o, &x) in out.iter_mut().zip(&e) {
            *o = leaf(x);
        }
    }

    /// Prefetches (into the second-level cache) what the child entry `x` of the IPv4 key `a`
    /// at depth `consumed` points to: a group's entry or a tail.
    #[inline(always)]
    fn prefetch_child_v4(&self, a: u32, x: u32, consumed: u32) {
        let i = (x & INDEX) as usize;
        if x & TAIL != 0 {
            if let Some(t) = self.tails4.get(i) {
                nf_core::prefetch_l2(t);
            }
        } else {
            let b = (a << consumed >> (32 - STRIDE)) as usize;
            if let Some(g) = self.nodes.get(i * GROUP + b) {
                nf_core::prefetch_l2(g);
            }
        }
    }

    #[inline(always)]
    fn root_entry(&self, key: u128) -> u32 {
        self.root
            .get(bits(key, 0, self.root_bits))
            .copied()
            .unwrap_or(0)
    }

    /// The leaf a tail entry gives `key`.
    #[inline(always)]
    fn tail(&self, key: u128, e: u32) -> u32 {
        if self.v4 {
            return self.tail4((key >> 96) as u32, e);
        }
        self.tails
            .get((e & INDEX) as usize)
            .map_or(0, |t| t.leaf(key))
    }

    /// The leaf an IPv4 tail entry gives `key`.
    #[inline(always)]
    fn tail4(&self, key: u32, e: u32) -> u32 {
        self.tails4
            .get((e & INDEX) as usize)
            .map_or(0, |t| t.leaf(key))
    }

    #[inline(always)]
    fn resolve(&self, key: u128, mut e: u32) -> Option<u32> {
        let mut consumed = self.root_bits;
        while e & CHILD != 0 && consumed < 128 {
            if e & TAIL != 0 {
                e = self.tail(key, e);
                break;
            }
            let at = (e & INDEX) as usize * GROUP + bits(key, consumed, STRIDE);
            e = self.nodes.get(at).copied().unwrap_or(0);
            consumed += STRIDE;
        }
        if e & CHILD != 0 {
            None
        } else {
            e.checked_sub(1)
        }
    }

    #[inline(always)]
    fn root_entry_v4(&self, a: u32) -> u32 {
        let i = a.checked_shr(32 - self.root_bits).unwrap_or(0) as usize;
        self.root.get(i).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn resolve_v4(&self, a: u32, mut e: u32) -> Option<u32> {
        let mut consumed = self.root_bits;
        while e & CHILD != 0 && consumed < 32 {
            if e & TAIL != 0 {
                e = self.tail4(a, e);
                break;
            }
            let b = (a << consumed >> (32 - STRIDE)) as usize;
            e = self
                .nodes
                .get((e & INDEX) as usize * GROUP + b)
                .copied()
                .unwrap_or(0);
            consumed += STRIDE;
        }
        if e & CHILD != 0 {
            None
        } else {
            e.checked_sub(1)
        }
    }
}
