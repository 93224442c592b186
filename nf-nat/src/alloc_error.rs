//! Why an allocation or a release failed.

/// Why [`PortAllocator::allocate`](crate::PortAllocator::allocate) refused a flow. No live
/// mapping is ever taken away to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AllocError {
    /// Every port this allocator may use for the flow is taken or quarantined (for the
    /// flow's destination in the hyperplane profile, on the subscriber's or every eligible
    /// public address otherwise).
    Exhausted,
    /// The probe bound was reached before a free port was found.
    TooManyProbes,
    /// The allocator holds `max_mappings` live and quarantined mappings.
    CapacityFull,
    /// The subscriber holds its quota of ports (CGN, RFC 6888 REQ-4) or of blocks.
    QuotaExceeded,
    /// The protocol has no ports to translate (only TCP, UDP, ICMP and ICMPv6 are mapped).
    UnsupportedProtocol,
    /// No public address of the flow's family is configured.
    NoPublicAddress,
}

impl AllocError {
    /// The typed drop of a packet whose flow this refusal turned away (SNAT and private
    /// endpoints alike).
    pub(crate) fn drop_reason(self) -> nf_core::DropReason {
        use nf_core::DropReason as D;
        match self {
            Self::Exhausted => D::NatPortsExhausted,
            Self::TooManyProbes => D::NatTooManyProbes,
            Self::CapacityFull => D::NatCapacityFull,
            Self::QuotaExceeded => D::NatQuotaExceeded,
            Self::UnsupportedProtocol | Self::NoPublicAddress => D::NatUntranslatable,
        }
    }

    /// Number of variants (size of [`AllocatorCounters::errors`](crate::AllocatorCounters)).
    pub const COUNT: usize = 6;

    /// Every variant, in [`Self::index`] order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Exhausted,
        Self::TooManyProbes,
        Self::CapacityFull,
        Self::QuotaExceeded,
        Self::UnsupportedProtocol,
        Self::NoPublicAddress,
    ];

    /// The variant's index in [`AllocatorCounters::errors`](crate::AllocatorCounters).
    pub const fn index(self) -> usize {
        match self {
            Self::Exhausted => 0,
            Self::TooManyProbes => 1,
            Self::CapacityFull => 2,
            Self::QuotaExceeded => 3,
            Self::UnsupportedProtocol => 4,
            Self::NoPublicAddress => 5,
        }
    }

    /// The stable counter name (`alloc_error_exhausted`, ...).
    pub const fn counter_name(self) -> &'static str {
        match self {
            Self::Exhausted => "alloc_error_exhausted",
            Self::TooManyProbes => "alloc_error_too_many_probes",
            Self::CapacityFull => "alloc_error_capacity_full",
            Self::QuotaExceeded => "alloc_error_quota_exceeded",
            Self::UnsupportedProtocol => "alloc_error_unsupported_protocol",
            Self::NoPublicAddress => "alloc_error_no_public_address",
        }
    }
}

impl core::fmt::Display for AllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Exhausted => "no free port",
            Self::TooManyProbes => "probe bound reached",
            Self::CapacityFull => "mapping capacity full",
            Self::QuotaExceeded => "subscriber quota exceeded",
            Self::UnsupportedProtocol => "protocol without ports",
            Self::NoPublicAddress => "no public address of the family",
        })
    }
}

impl core::error::Error for AllocError {}

/// Why [`PortAllocator::release`](crate::PortAllocator::release) ignored a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The allocator holds no such live mapping (released twice, or never allocated).
    UnknownMapping,
}

impl core::fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("no such live mapping")
    }
}

impl core::error::Error for ReleaseError {}
