//! The allocator's counters.

use crate::alloc_error::AllocError;

/// Upper bounds of the probe histogram's buckets (the last bucket is open-ended): an
/// allocation that reused an endpoint-independent mapping made 0 probes.
pub const PROBE_BUCKETS: [u32; 8] = [0, 1, 2, 4, 8, 16, 32, u32::MAX];

/// Stable names of the probe buckets, in [`PROBE_BUCKETS`] order.
const PROBE_NAMES: [&str; 8] = [
    "probes_0",
    "probes_1",
    "probes_2",
    "probes_3_4",
    "probes_5_8",
    "probes_9_16",
    "probes_17_32",
    "probes_33_up",
];

/// What a [`PortAllocator`](crate::PortAllocator) has done, for operators. Reachable by
/// stable snake_case names through [`Self::visit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllocatorCounters {
    /// Successful allocations (a reused endpoint-independent mapping included).
    pub allocations: u64,
    /// Allocations that reused an endpoint-independent mapping.
    pub reused: u64,
    /// Mappings of sessions taken over from another node (a session hand-over), each
    /// session of an endpoint-independent mapping counted.
    pub claimed: u64,
    /// Failed allocations per [`AllocError`] (index [`AllocError::index`]).
    pub errors: [u64; AllocError::COUNT],
    /// Successful releases.
    pub releases: u64,
    /// Releases of a mapping the allocator does not hold (ignored).
    pub release_unknown: u64,
    /// Live mappings per protocol: TCP, UDP, ICMP.
    pub active: [u64; 3],
    /// Ports in quarantine now.
    pub quarantined: u64,
    /// Allocations per probe count, bucketed by [`PROBE_BUCKETS`].
    pub probes: [u64; 8],
    /// Probes made in all.
    pub probes_total: u64,
    /// CGN port blocks allocated.
    pub blocks_allocated: u64,
    /// CGN port blocks released.
    pub blocks_released: u64,
    /// Block events lost because the caller did not drain the queue.
    pub block_events_dropped: u64,
}

impl AllocatorCounters {
    pub(crate) fn record_probes(&mut self, probes: u32) {
        self.probes_total += u64::from(probes);
        let i = PROBE_BUCKETS
            .iter()
            .position(|&b| probes <= b)
            .unwrap_or(PROBE_BUCKETS.len() - 1);
        if let Some(c) = self.probes.get_mut(i) {
            *c += 1;
        }
    }

    pub(crate) fn record_error(&mut self, e: AllocError) {
        if let Some(c) = self.errors.get_mut(e.index()) {
            *c += 1;
        }
    }

    /// Failed allocations in all.
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Calls `f(name, value)` for every counter, with stable snake_case names
    /// (`allocations`, `alloc_error_exhausted`, `active_tcp`, `probes_5_8`, ...).
    pub fn visit(&self, f: &mut dyn FnMut(&'static str, u64)) {
        f("allocations", self.allocations);
        f("reused", self.reused);
        f("claimed", self.claimed);
        for e in AllocError::ALL {
            f(
                e.counter_name(),
                self.errors.get(e.index()).copied().unwrap_or(0),
            );
        }
        f("releases", self.releases);
        f("release_unknown", self.release_unknown);
        for (name, v) in ["active_tcp", "active_udp", "active_icmp"]
            .into_iter()
            .zip(self.active)
        {
            f(name, v);
        }
        f("quarantined", self.quarantined);
        for (name, v) in PROBE_NAMES.into_iter().zip(self.probes) {
            f(name, v);
        }
        f("probes_total", self.probes_total);
        f("blocks_allocated", self.blocks_allocated);
        f("blocks_released", self.blocks_released);
        f("block_events_dropped", self.block_events_dropped);
    }
}
