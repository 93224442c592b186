//! The port space of one allocator: which ports it may hand out (owner range, range class,
//! exclusions), the pure function from a port to its owner, RSS steering masks, and the
//! bounded word-by-word search every profile uses.
//!
//! Ports are kept as bits of 64-bit words: word `w` holds ports `64w..64w + 64`. Words 0–15
//! are the low class (ports below 1024), words 16–1023 the high class. A per-word *full* bit
//! (16 summary words) marks words with no port left, so a search skips runs of full words by
//! reading one summary word per 64 words.

use crate::config::{ConfigError, Owner, RssSteering};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use nf_core::Family;
use nf_core::steer::PortPartition;
use nf_core::toeplitz::Toeplitz;

/// Words of 64 ports in the whole port space.
pub(crate) const WORDS: usize = 1024;
/// Words of the low class (ports 0..1024).
pub(crate) const LOW_WORDS: usize = 16;
/// Summary words (one bit per port word).
pub(crate) const SUMMARY: usize = WORDS / 64;

/// How the port space is split between owners: in each range class, one contiguous run of
/// whole words per node, cut into `cores` equal runs of ports (zero counts behave as one);
/// see [`owner_of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSplit {
    /// Nodes sharing the public addresses.
    pub nodes: u32,
    /// Cores per node owning ranges of their own (1 when RSS steering picks the core).
    pub cores: u32,
}

impl PortSplit {
    fn counts(self) -> (u64, u64) {
        (u64::from(self.nodes.max(1)), u64::from(self.cores.max(1)))
    }

    /// How `node` steers replies to its cores, as nf-core's port partition of the public
    /// addresses ([`Steering::own`](nf_core::steer::Steering::own) with `cores` workers):
    /// worker `c` owns exactly the ports that `owner_of` gives to (`node`, `c`) and that
    /// core's allocator hands out, in the high class (ports from 1024, `first`,
    /// `per_worker`) and in the low class (ports below 1024, `low_first`,
    /// `low_per_worker`; 0 when the node's low run has fewer ports than cores, so replies
    /// to its low ports are [`Steer::Unknown`](nf_core::steer::Steer::Unknown)). `None` for
    /// a node out of range or with fewer high ports than cores.
    ///
    /// ```
    /// use nf_nat::{PortSplit, owner_of};
    /// let split = PortSplit { nodes: 3, cores: 5 };
    /// let p = split.partition(1).unwrap();
    /// let port = p.first + 2 * p.per_worker + 7;
    /// assert_eq!((owner_of(port, split).node, owner_of(port, split).core), (1, 2));
    /// let low = p.low_first + 3 * p.low_per_worker;
    /// assert!(low < 1024);
    /// assert_eq!((owner_of(low, split).node, owner_of(low, split).core), (1, 3));
    /// ```
    pub fn partition(self, node: u32) -> Option<PortPartition> {
        if node >= self.nodes.max(1) {
            return None;
        }
        let (lo, per) = node_run(LOW_WORDS, WORDS - LOW_WORDS, self, u64::from(node));
        let first = u16::try_from(lo).ok()?;
        let per = u16::try_from(per).ok().filter(|&p| p > 0)?;
        let (low_lo, low_per) = node_run(0, LOW_WORDS, self, u64::from(node));
        let low_first = u16::try_from(low_lo).ok()?;
        let low_per = u16::try_from(low_per).ok()?;
        Some(PortPartition::new(first, per).with_low(low_first, low_per))
    }
}

/// The first port of `node`'s run in the class of words `[base, base + len)`, and the ports
/// each of its cores gets.
fn node_run(base: usize, len: usize, split: PortSplit, node: u64) -> (u64, u64) {
    let (nodes, cores) = split.counts();
    let len = len as u64;
    let lo = base as u64 + node * len / nodes;
    let hi = base as u64 + (node + 1) * len / nodes;
    (lo * 64, (hi - lo) * 64 / cores)
}

/// Ports `[lo, hi)` of (`node`, `core`) in the class of words `[base, base + len)`.
fn owner_ports(base: usize, len: usize, split: PortSplit, node: u64, core: u64) -> (u64, u64) {
    let (first, per) = node_run(base, len, split, node);
    (first + core * per, first + (core + 1) * per)
}

/// The node and core that own a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PortOwner {
    /// Owning node.
    pub node: u32,
    /// Owning core of that node.
    pub core: u32,
}

/// The owner of `port` under `split`: a pure function every node computes alike.
///
/// Each range class (16 low words, ports 0–1023; 1008 high words, ports 1024–65535) is
/// cut into one run of whole 64-port words per node, node `i` of `n` taking words
/// `⌊i·len/n⌋ .. ⌊(i+1)·len/n⌋` of the class; a node's run of `P` ports is cut into `cores`
/// runs of `⌊P/cores⌋` ports, core `c` taking the `c`-th. The fewer than `cores` ports left
/// at the end of a node's run are never handed out (`owner_of` names the node's last core
/// for them). Within a node this is exactly nf-core's
/// [`PortPartition`](nf_core::steer::PortPartition) of both classes
/// ([`PortSplit::partition`]: the high class as its first run, the low class as its second),
/// so the node's software steering and its allocators agree.
/// With more nodes than a class has words, or more cores than a node's run has ports,
/// some owners have no ports of that class.
///
/// ```
/// use nf_nat::{PortSplit, owner_of};
/// let split = PortSplit { nodes: 2, cores: 4 };
/// assert_eq!(owner_of(1024, split).node, 0);
/// assert_eq!(owner_of(65535, split).node, 1);
/// assert_eq!(owner_of(65535, split).core, 3);
/// ```
pub fn owner_of(port: u16, split: PortSplit) -> PortOwner {
    let w = usize::from(port) / 64;
    let (base, len) = if w < LOW_WORDS {
        (0, LOW_WORDS)
    } else {
        (LOW_WORDS, WORDS - LOW_WORDS)
    };
    let (nodes, cores) = split.counts();
    // The largest node i with ⌊i·len/n⌋ ≤ the word's place in the class.
    let node = (((w - base) as u64 + 1) * nodes - 1) / len as u64;
    let (first, per) = node_run(base, len, split, node);
    let core = (u64::from(port) - first)
        .checked_div(per)
        .map_or(cores - 1, |c| c.min(cores - 1));
    PortOwner {
        node: node as u32,
        core: core as u32,
    }
}

/// RSS steering precomputation (see [`RssSteering`]).
#[derive(Clone, Debug)]
pub(crate) struct Steer {
    toeplitz: Toeplitz,
    indirection: Vec<u16>,
    /// Index mask of the redirection table.
    imask: u32,
    /// Per family: the hash contribution of the reply's destination port, high and low byte.
    contrib: [[[u32; 256]; 2]; 2],
    /// Per family, per redirection index `x`: ports `o` in `0..64` of a word whose reply
    /// lands on this core when the word's base index is `x`.
    masks: [Box<[u64]>; 2],
}

impl Steer {
    fn new(s: &RssSteering, core: u32) -> Result<Self, ConfigError> {
        let len = s.indirection.len();
        if len == 0 || !len.is_power_of_two() || len > 1 << 16 {
            return Err(ConfigError::Steering);
        }
        if !s.indirection.iter().any(|&q| u32::from(q) == core) {
            return Err(ConfigError::Steering);
        }
        let toeplitz = Toeplitz::new(&s.key);
        let imask = (len - 1) as u32;
        let port_hash = |fam: usize, port: u16| -> u32 {
            // Zero addresses contribute nothing (the hash is linear), so this is the port's
            // own contribution at the reply's destination-port position.
            if fam == 0 {
                toeplitz.hash_v4([0; 4], [0; 4], Some((0, port)))
            } else {
                toeplitz.hash_v6(&[0; 16], &[0; 16], Some((0, port)))
            }
        };
        let mut contrib = [[[0u32; 256]; 2]; 2];
        for (fam, c) in contrib.iter_mut().enumerate() {
            for b in 0..=255u8 {
                if let Some(x) = c[0].get_mut(usize::from(b)) {
                    *x = port_hash(fam, u16::from(b) << 8);
                }
                if let Some(x) = c[1].get_mut(usize::from(b)) {
                    *x = port_hash(fam, u16::from(b));
                }
            }
        }
        let masks = core::array::from_fn(|fam| {
            (0..len as u32)
                .map(|x| {
                    let mut m = 0u64;
                    for o in 0..64u16 {
                        let idx = (x ^ port_hash(fam, o)) & imask;
                        if s.indirection.get(idx as usize).map(|&q| u32::from(q)) == Some(core) {
                            m |= 1 << o;
                        }
                    }
                    m
                })
                .collect::<Vec<u64>>()
                .into_boxed_slice()
        });
        Ok(Self {
            toeplitz,
            indirection: s.indirection.clone(),
            imask,
            contrib,
            masks,
        })
    }

    /// The reply's hash with destination port 0: `remote` is the original destination,
    /// `public` the public address.
    #[inline]
    pub(crate) fn base(
        &self,
        fam: Family,
        remote: &[u8; 16],
        public: &[u8; 16],
        remote_port: u16,
    ) -> u32 {
        match fam {
            Family::V4 => self.toeplitz.hash_v4(
                [remote[0], remote[1], remote[2], remote[3]],
                [public[0], public[1], public[2], public[3]],
                Some((remote_port, 0)),
            ),
            Family::V6 => self
                .toeplitz
                .hash_v6(remote, public, Some((remote_port, 0))),
        }
    }

    /// The queue a reply with key `reply` is hashed to.
    pub(crate) fn queue_of_reply(&self, reply: &nf_core::FlowKey) -> Option<u16> {
        let h = self.toeplitz.hash_flow(reply, true);
        self.indirection.get((h & self.imask) as usize).copied()
    }

    #[inline]
    fn word_mask(&self, fam: usize, base: u32, w: usize) -> u64 {
        let p0 = (w * 64) as u16;
        let c = self.contrib.get(fam).map_or(0, |c| {
            c[0].get(usize::from(p0 >> 8)).copied().unwrap_or(0)
                ^ c[1].get(usize::from(p0 & 0xff)).copied().unwrap_or(0)
        });
        let x = (base ^ c) & self.imask;
        self.masks
            .get(fam)
            .and_then(|m| m.get(x as usize))
            .copied()
            .unwrap_or(0)
    }
}

/// Ports this allocator may hand out.
#[derive(Clone, Debug)]
pub(crate) struct Space {
    allowed: Box<[u64]>,
    /// Ports a claim (a session taken over from another node) may take: `allowed`, and
    /// the runs of the nodes this owner took over ([`Space::take_over`]).
    claimable: Box<[u64]>,
    /// This owner's core index under `split` (0 with RSS steering), and the ports never
    /// handed out (port 0 and the excluded ones).
    core: u64,
    /// This owner's node.
    node: u64,
    excluded: Box<[u16]>,
    static_full: [u64; SUMMARY],
    /// `[lo, hi)` words of this owner in the low and the high class.
    classes: [(usize, usize); 2],
    pub(crate) steer: Option<Steer>,
    pub(crate) split: PortSplit,
}

/// Sets the bits of ports `[lo, hi)` of each run in `bits`, except the `excluded` ports.
fn add_runs(bits: &mut [u64], runs: &[(u64, u64)], excluded: &[u16]) {
    for &(lo, hi) in runs {
        for p in lo..hi {
            if let Some(w) = bits.get_mut((p / 64) as usize) {
                *w |= 1 << (p % 64);
            }
        }
    }
    for &p in excluded {
        if let Some(w) = bits.get_mut(usize::from(p) / 64) {
            *w &= !(1u64 << (p % 64));
        }
    }
}

/// Where a search ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    Found { port: u16, probes: u32 },
    Exhausted { probes: u32 },
    TooManyProbes { probes: u32 },
}

/// Occupancy of one set of ports (one destination, or one public address and protocol).
pub(crate) trait Words {
    /// Ports of word `w` in use or quarantined.
    fn used(&self, w: usize) -> u64;
    /// Summary word `j`: bit `b` set if word `64j + b` has no port left.
    fn full(&self, j: usize) -> u64;
}

/// The RSS context of one destination: family index and base hash.
pub(crate) type SteerCtx = Option<(usize, u32)>;

impl Space {
    pub(crate) fn new(
        owner: Owner,
        excluded: &[u16],
        steering: Option<&RssSteering>,
    ) -> Result<Self, ConfigError> {
        if owner.nodes == 0 || owner.cores == 0 || owner.node >= owner.nodes {
            return Err(ConfigError::Owner);
        }
        if owner.core >= owner.cores {
            return Err(ConfigError::Owner);
        }
        let (split, index) = match steering {
            Some(_) => (
                PortSplit {
                    nodes: owner.nodes,
                    cores: 1,
                },
                u64::from(owner.node),
            ),
            None => (
                PortSplit {
                    nodes: owner.nodes,
                    cores: owner.cores,
                },
                u64::from(owner.node) * u64::from(owner.cores) + u64::from(owner.core),
            ),
        };
        let (node, core) = (index / split.counts().1, index % split.counts().1);
        let ports = [
            owner_ports(0, LOW_WORDS, split, node, core),
            owner_ports(LOW_WORDS, WORDS - LOW_WORDS, split, node, core),
        ];
        let mut allowed = vec![0u64; WORDS].into_boxed_slice();
        // Port 0 is never a port.
        let excluded: Box<[u16]> = core::iter::once(0)
            .chain(excluded.iter().copied())
            .collect();
        add_runs(&mut allowed, &ports, &excluded);
        // The words a search walks: those holding the owner's ports (the first and last may
        // be shared with a neighbour, whose ports `allowed` leaves out).
        let classes = ports.map(|(lo, hi)| ((lo / 64) as usize, hi.div_ceil(64) as usize));
        let mut static_full = [0u64; SUMMARY];
        for (w, &a) in allowed.iter().enumerate() {
            if a == 0
                && let Some(s) = static_full.get_mut(w / 64)
            {
                *s |= 1 << (w % 64);
            }
        }
        let steer = match steering {
            Some(s) => Some(Steer::new(s, owner.core)?),
            None => None,
        };
        Ok(Self {
            claimable: allowed.clone(),
            allowed,
            core,
            node,
            excluded,
            static_full,
            classes,
            steer,
            split,
        })
    }

    /// Lets claims take node `node`'s ports too (this owner's core's run of them, or, with
    /// RSS steering, the node's whole run): a node taking over a failed one's sessions.
    /// False for a node out of range.
    pub(crate) fn take_over(&mut self, node: u32) -> bool {
        if node >= self.split.nodes.max(1) {
            return false;
        }
        let node = u64::from(node);
        let ports = [
            owner_ports(0, LOW_WORDS, self.split, node, self.core),
            owner_ports(LOW_WORDS, WORDS - LOW_WORDS, self.split, node, self.core),
        ];
        add_runs(&mut self.claimable, &ports, &self.excluded);
        true
    }

    /// Node `node`'s space for this owner's core (its ports, the same exclusions, no
    /// steering): the run of ports that core of `node` hands out. `None` for a node out of
    /// range.
    pub(crate) fn of_node(&self, node: u32) -> Option<Space> {
        if node >= self.split.nodes.max(1) {
            return None;
        }
        let owner = Owner {
            nodes: self.split.nodes.max(1),
            cores: self.split.cores.max(1),
            node,
            core: u32::try_from(self.core).ok()?,
        };
        // The first exclusion is port 0, which `new` adds again.
        Space::new(owner, self.excluded.get(1..).unwrap_or(&[]), None).ok()
    }

    /// The node and core that own `port` under this space's split.
    pub(crate) fn owner_of(&self, port: u16) -> (u32, u64) {
        let o = owner_of(port, self.split);
        (o.node, u64::from(o.core))
    }

    /// This owner's core under the split.
    pub(crate) fn core(&self) -> u64 {
        self.core
    }

    /// This owner's node.
    pub(crate) fn owner_node(&self) -> u64 {
        self.node
    }

    /// The ports of word `w` a claim may take, for a destination with RSS context `steer`
    /// (see [`Self::allowed`]).
    #[inline]
    pub(crate) fn claimable(&self, w: usize, steer: SteerCtx) -> u64 {
        self.steered(self.claimable.get(w).copied().unwrap_or(0), w, steer)
    }

    /// Words `[lo, hi)` of a class (0: low, 1: high).
    pub(crate) fn class_words(&self, class: usize) -> (usize, usize) {
        self.classes.get(class).copied().unwrap_or((0, 0))
    }

    /// The ports of word `w` this allocator may hand out for a destination.
    #[inline]
    pub(crate) fn allowed(&self, w: usize, steer: SteerCtx) -> u64 {
        self.steered(self.allowed.get(w).copied().unwrap_or(0), w, steer)
    }

    /// The ports `a` of word `w` whose replies RSS steers to this core (all of them
    /// without steering).
    #[inline(always)]
    fn steered(&self, a: u64, w: usize, steer: SteerCtx) -> u64 {
        match (steer, &self.steer) {
            (Some((fam, base)), Some(s)) if a != 0 => a & s.word_mask(fam, base, w),
            _ => a,
        }
    }

    /// Searches the class `class` for a free port: the keyed start word first, then the words
    /// after it (wrapping) that the summary does not mark full, at most `budget` probes.
    ///
    /// A probe is one 64-bit word read from the occupancy state: a port word or a summary
    /// word. (For the hyperplane profile each is one hash-table lookup.)
    pub(crate) fn scan(
        &self,
        class: usize,
        key: u64,
        budget: u32,
        steer: SteerCtx,
        words: &impl Words,
    ) -> Scan {
        let (lo, hi) = self.class_words(class);
        if lo >= hi {
            return Scan::Exhausted { probes: 0 };
        }
        let n = (hi - lo) as u64;
        let start = lo + ((u128::from(key as u32) * u128::from(n)) >> 32) as usize;
        let bit0 = ((key >> 32) & 63) as u32;
        let mut probes = 0u32;
        let try_word = |w: usize, probes: &mut u32| -> Option<u16> {
            let a = self.allowed(w, steer);
            if a == 0 {
                return None;
            }
            *probes += 1;
            let avail = a & !words.used(w);
            if avail == 0 {
                return None;
            }
            let b = (avail.rotate_right(bit0).trailing_zeros() + bit0) & 63;
            Some((w * 64) as u16 | b as u16)
        };
        if budget == 0 {
            return Scan::TooManyProbes { probes };
        }
        if let Some(port) = try_word(start, &mut probes) {
            return Scan::Found { port, probes };
        }
        // The words after `start`, then those before it, skipping the ones marked full.
        for (a, b) in [(start + 1, hi), (lo, start)] {
            let mut w = a;
            while w < b {
                let j = w / 64;
                if probes >= budget {
                    return Scan::TooManyProbes { probes };
                }
                probes += 1;
                let full = words.full(j) | self.static_full.get(j).copied().unwrap_or(!0);
                let end = b.min((j + 1) * 64);
                // Candidate words w..end of this summary word.
                let span = end - w;
                let range = if span >= 64 {
                    !0u64
                } else {
                    ((1u64 << span) - 1) << (w % 64)
                };
                let mut free = !full & range;
                while free != 0 {
                    let cw = j * 64 + free.trailing_zeros() as usize;
                    free &= free - 1;
                    if probes >= budget {
                        return Scan::TooManyProbes { probes };
                    }
                    if let Some(port) = try_word(cw, &mut probes) {
                        return Scan::Found { port, probes };
                    }
                }
                w = end;
            }
        }
        Scan::Exhausted { probes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Each owner may hand out exactly the ports `owner_of` gives it (but port 0 and
        /// the few left at the end of a node's run), and no other owner may.
        #[test]
        fn owner_ranges_agree_with_owner_of(nodes in 1u32..40, cores in 1u32..70, port in any::<u16>()) {
            let split = PortSplit { nodes, cores };
            let o = owner_of(port, split);
            prop_assert!(o.node < nodes && o.core < cores);
            let space = |node, core| Space::new(Owner { nodes, cores, node, core }, &[], None).unwrap();
            let w = usize::from(port) / 64;
            let bit = |s: &Space| s.allowed(w, None) >> (port % 64) & 1 == 1;
            let s = space(o.node, o.core);
            let class = usize::from(w >= LOW_WORDS);
            let (base, len) = if class == 0 { (0, LOW_WORDS) } else { (LOW_WORDS, WORDS - LOW_WORDS) };
            let (first, per) = node_run(base, len, split, u64::from(o.node));
            let leftover = u64::from(port) >= first + per * u64::from(cores);
            prop_assert_eq!(bit(&s), port != 0 && !leftover);
            if bit(&s) {
                let (lo, hi) = s.class_words(class);
                prop_assert!(lo <= w && w < hi);
            }
            // The neighbours (other core of the node, other node) never may.
            let other = space(o.node, (o.core + 1) % cores);
            prop_assert!(cores == 1 || !bit(&other));
            let other = space((o.node + 1) % nodes, o.core);
            prop_assert!(nodes == 1 || !bit(&other));
        }

        /// Within a node, `owner_of` is nf-core's port partition for every high port the
        /// node's cores hand out.
        #[test]
        fn partition_is_owner_of_within_a_node(nodes in 1u32..40, cores in 1u32..70, port in 1024u16..) {
            let split = PortSplit { nodes, cores };
            let o = owner_of(port, split);
            let Some(p) = split.partition(o.node) else {
                return Ok(());
            };
            let off = port - p.first;
            if u32::from(off / p.per_worker) < cores {
                prop_assert_eq!(u32::from(off / p.per_worker), o.core);
            } else {
                // The few ports at the end of the node's run: no core hands them out.
                let s = Space::new(Owner { nodes, cores, node: o.node, core: o.core }, &[], None).unwrap();
                prop_assert_eq!(s.allowed(usize::from(port) / 64, None) >> (port % 64) & 1, 0);
            }
        }
    }
}
