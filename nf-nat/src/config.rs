//! Settings of a [`PortAllocator`](crate::PortAllocator): profile, public addresses, bounds,
//! quarantine, exclusions and ownership.

use alloc::vec::Vec;
use core::net::IpAddr;
use nf_core::Duration;
use nf_core::toeplitz::{KEY_LEN, SYMMETRIC_KEY};

/// Ports the node must never hand out unless told otherwise: VXLAN (4789) and Geneve (6081),
/// whose tunnels the node terminates on its own addresses.
pub const DEFAULT_EXCLUDED_PORTS: [u16; 2] = [4789, 6081];

/// RFC 6888 REQ-8's default: a freed port waits 120 s before reuse.
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(120);

/// Default bound on probes per allocation (see [`crate`] docs: what a probe is).
pub const DEFAULT_MAX_PROBES: u32 = 32;

/// How mappings are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Profile {
    /// RFC 4787/5382: endpoint-independent mapping (an inside address and port keep their
    /// public address and port for every destination) and paired address pooling (an inside
    /// address keeps one public address while it has mappings).
    Rfc,
    /// Endpoint-dependent: a public port is unique per (public address, destination address,
    /// destination port, protocol), so each destination can take every port of each public
    /// address (64,512 above 1023).
    Hyperplane,
    /// Carrier-grade (RFC 6888): each subscriber (inside address) gets blocks of ports on one
    /// public address, up to a quota; mappings are endpoint-independent inside the blocks,
    /// and each block allocated or released is an event for the operator's log.
    Cgn(CgnSettings),
}

/// Port blocks and quotas of the [`Profile::Cgn`] profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CgnSettings {
    /// Ports per block: a multiple of 64 from 64 to 4096.
    pub block_size: u16,
    /// Blocks one subscriber may hold at once (RFC 6888 REQ-4, REQ-5: ports and state per
    /// subscriber are bounded).
    pub max_blocks: u16,
    /// Live mappings one subscriber may hold per protocol (RFC 6888 REQ-4; its item B lets
    /// the limit differ per protocol, here it is one figure applied to each).
    pub port_quota: u32,
    /// Block events kept until the caller drains them; further events are counted as
    /// dropped.
    pub event_capacity: usize,
}

impl Default for CgnSettings {
    fn default() -> Self {
        Self::new()
    }
}

impl CgnSettings {
    /// Blocks of 512 ports, at most 4 per subscriber, no per-protocol quota below that
    /// (2,048 ports), 1024 events queued.
    pub const fn new() -> Self {
        Self {
            block_size: 512,
            max_blocks: 4,
            port_quota: u32::MAX,
            event_capacity: 1024,
        }
    }

    /// Sets the ports per block (a multiple of 64 from 64 to 4096).
    #[must_use]
    pub const fn with_block_size(mut self, ports: u16) -> Self {
        self.block_size = ports;
        self
    }

    /// Sets the blocks one subscriber may hold at once.
    #[must_use]
    pub const fn with_max_blocks(mut self, blocks: u16) -> Self {
        self.max_blocks = blocks;
        self
    }

    /// Sets the per-subscriber, per-protocol mapping quota.
    #[must_use]
    pub const fn with_port_quota(mut self, ports: u32) -> Self {
        self.port_quota = ports;
        self
    }

    /// Sets how many block events are kept until drained.
    #[must_use]
    pub const fn with_event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events;
        self
    }
}

/// Which node and core this allocator serves, out of how many: the port space is split into
/// contiguous ranges, one per (node, core), so the owner of a reply is a pure function of
/// its destination port ([`owner_of`](crate::owner_of)). Written with named fields:
/// `Owner { nodes: 4, cores: 8, node: 2, core: 5 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Nodes sharing the public addresses.
    pub nodes: u32,
    /// Cores (receive queues) per node.
    pub cores: u32,
    /// This node, in `0..nodes`.
    pub node: u32,
    /// This core, in `0..cores`.
    pub core: u32,
}

impl Owner {
    /// The only node and core: the whole port space.
    pub const SOLE: Self = Self {
        nodes: 1,
        cores: 1,
        node: 0,
        core: 0,
    };
}

/// Reply steering by the NIC's RSS hash (the idea of choosing the port so that the reply's
/// hash lands on the owner): ports are split per node only, and within its node's range the
/// allocator picks only ports whose reply hashes to this core's receive queue.
///
/// The reply (source: the destination of the original flow; destination: the public address
/// and port) is hashed with [`Toeplitz`](nf_core::toeplitz::Toeplitz) over addresses and
/// ports, and its queue is `indirection[hash & (indirection.len() - 1)]`, the way NICs read
/// their redirection table; core `c` owns queue `c`. Only the
/// [`Hyperplane`](Profile::Hyperplane) profile can steer: with endpoint-independent mapping
/// one public port serves every destination, whose hashes differ.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RssSteering {
    /// The RSS key (default: nf-core's symmetric key).
    pub key: [u8; KEY_LEN],
    /// The redirection table: queue per hash index; its length a power of two ≤ 65,536.
    pub indirection: Vec<u16>,
}

impl RssSteering {
    /// The symmetric key and a 128-entry table spreading `queues` queues round robin (most
    /// NICs' default).
    pub fn new(queues: u16) -> Self {
        let q = queues.max(1);
        Self {
            key: SYMMETRIC_KEY,
            indirection: (0..128u16).map(|i| i % q).collect(),
        }
    }

    /// Uses `key` as the RSS key.
    #[must_use]
    pub fn with_key(mut self, key: [u8; KEY_LEN]) -> Self {
        self.key = key;
        self
    }

    /// Uses `table` as the redirection table.
    #[must_use]
    pub fn with_indirection(mut self, table: Vec<u16>) -> Self {
        self.indirection = table;
        self
    }

    /// The queue the NIC delivers a packet with RSS hash `hash` to.
    #[inline]
    pub fn queue_of(&self, hash: u32) -> Option<u16> {
        let mask = self.indirection.len().checked_sub(1)?;
        self.indirection.get(hash as usize & mask).copied()
    }
}

/// Everything a [`PortAllocator`](crate::PortAllocator) needs, with named settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllocatorConfig {
    /// How mappings are made.
    pub profile: Profile,
    /// Public addresses (IPv4 and IPv6 may mix; a flow uses those of its family).
    pub public_ips: Vec<IpAddr>,
    /// Operator secret keying the port choice (SipHash-1-3).
    pub secret: [u8; 16],
    /// Live plus quarantined mappings held at most (fixes the memory, see the crate docs).
    pub max_mappings: usize,
    /// Probes one allocation may make before it fails with
    /// [`AllocError::TooManyProbes`](crate::AllocError::TooManyProbes).
    pub max_probes: u32,
    /// How long a freed port waits before reuse (RFC 6888 REQ-8: ≥ 120 s).
    pub quarantine: Duration,
    /// Ports never handed out.
    pub excluded_ports: Vec<u16>,
    /// This allocator's share of the port space.
    pub owner: Owner,
    /// Choose ports whose reply hashes to this core's receive queue.
    pub steering: Option<RssSteering>,
}

impl AllocatorConfig {
    /// `profile` over `public_ips`, keyed with `secret`: 65,536 mappings, 32 probes, 120 s
    /// quarantine, ports 4789 and 6081 excluded, the whole port space ([`Owner::SOLE`]).
    pub fn new(profile: Profile, public_ips: Vec<IpAddr>, secret: [u8; 16]) -> Self {
        Self {
            profile,
            public_ips,
            secret,
            max_mappings: 1 << 16,
            max_probes: DEFAULT_MAX_PROBES,
            quarantine: DEFAULT_QUARANTINE,
            excluded_ports: DEFAULT_EXCLUDED_PORTS.to_vec(),
            owner: Owner::SOLE,
            steering: None,
        }
    }

    /// Sets the bound on live plus quarantined mappings.
    #[must_use]
    pub fn with_max_mappings(mut self, n: usize) -> Self {
        self.max_mappings = n;
        self
    }

    /// Sets the bound on probes per allocation.
    #[must_use]
    pub fn with_max_probes(mut self, n: u32) -> Self {
        self.max_probes = n;
        self
    }

    /// Sets the quarantine of freed ports.
    #[must_use]
    pub fn with_quarantine(mut self, d: Duration) -> Self {
        self.quarantine = d;
        self
    }

    /// Replaces the ports never to hand out (default: [`DEFAULT_EXCLUDED_PORTS`]).
    #[must_use]
    pub fn with_excluded_ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.excluded_ports = ports.into_iter().collect();
        self
    }

    /// Sets which node and core this allocator serves.
    #[must_use]
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = owner;
        self
    }

    /// Steers replies to this core's receive queue by their RSS hash.
    #[must_use]
    pub fn with_steering(mut self, steering: RssSteering) -> Self {
        self.steering = Some(steering);
        self
    }
}

/// Why [`PortAllocator::new`](crate::PortAllocator::new) refused a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No public address, or more than 65,535.
    PublicIps,
    /// `max_mappings` is zero or above 2^28.
    MaxMappings,
    /// `max_probes` is zero.
    MaxProbes,
    /// `nodes` or `cores` is zero, or `node`/`core` is out of range.
    Owner,
    /// Steering with a profile other than hyperplane, an empty or non-power-of-two
    /// redirection table, or more cores than queue numbers.
    Steering,
    /// A CGN block size that is not a multiple of 64 in 64..=4096, no blocks per
    /// subscriber, or no block fits in this owner's range.
    Blocks,
    /// An inside prefix longer than its family allows.
    Prefix,
    /// A port forward on an address that is not public, across families, or of a protocol
    /// other than TCP and UDP.
    Forward,
    /// Endpoint-independent filtering with the hyperplane profile (its mappings are per
    /// destination).
    Filtering,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::PublicIps => "no public address, or too many",
            Self::MaxMappings => "max_mappings out of range",
            Self::MaxProbes => "max_probes is zero",
            Self::Owner => "owner out of range",
            Self::Steering => "invalid RSS steering",
            Self::Blocks => "invalid CGN block settings",
            Self::Prefix => "inside prefix too long",
            Self::Forward => "invalid port forward",
            Self::Filtering => "endpoint-independent filtering needs endpoint-independent mapping",
        })
    }
}

impl core::error::Error for ConfigError {}
