//! Route tables per zone: the transit-gateway pattern.
//!
//! Each attachment (a zone: a tenant's VNI, a VPN, a peering) is associated with one
//! [`RouteTable`]; a route's next hop is an id the caller maps to another attachment (for
//! example a VNI and an underlay host for the encap stage, recorded in the packet's metadata).
//! [`RouteTables`] holds the tables by [`ZoneId`]; like the tables themselves it is built off the
//! hot path and swapped in whole.

use crate::lpm::{Ipv4Lpm, Ipv6Lpm};
use alloc::collections::BTreeMap;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::ZoneId;

/// One attachment's routes: an IPv4 and an IPv6 table.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    v4: Ipv4Lpm,
    v6: Ipv6Lpm,
}

impl RouteTable {
    /// A route table from its two families' tables.
    pub fn new(v4: Ipv4Lpm, v6: Ipv6Lpm) -> Self {
        Self { v4, v6 }
    }

    /// The next hop for an IPv4 destination.
    #[inline]
    pub fn route_v4(&self, dst: Ipv4Addr) -> Option<u32> {
        self.v4.lookup(dst)
    }

    /// The next hop for an IPv6 destination.
    #[inline]
    pub fn route_v6(&self, dst: Ipv6Addr) -> Option<u32> {
        self.v6.lookup(dst)
    }

    /// The next hop for a destination of either family.
    #[inline]
    pub fn route(&self, dst: IpAddr) -> Option<u32> {
        match dst {
            IpAddr::V4(a) => self.v4.lookup(a),
            IpAddr::V6(a) => self.v6.lookup(a),
        }
    }

    /// The IPv4 table.
    pub fn v4(&self) -> &Ipv4Lpm {
        &self.v4
    }

    /// The IPv6 table.
    pub fn v6(&self) -> &Ipv6Lpm {
        &self.v6
    }

    /// Bytes of both tables' allocations.
    pub fn bytes(&self) -> usize {
        self.v4.bytes() + self.v6.bytes()
    }
}

/// Route tables keyed by zone (attachment).
#[derive(Clone, Debug, Default)]
pub struct RouteTables {
    zones: BTreeMap<ZoneId, RouteTable>,
}

impl RouteTables {
    /// No tables: every lookup misses.
    pub fn new() -> Self {
        Self::default()
    }

    /// Associates `zone` with `table`, returning the table it replaces.
    pub fn insert(&mut self, zone: ZoneId, table: RouteTable) -> Option<RouteTable> {
        self.zones.insert(zone, table)
    }

    /// Removes `zone`'s table.
    pub fn remove(&mut self, zone: ZoneId) -> Option<RouteTable> {
        self.zones.remove(&zone)
    }

    /// `zone`'s table.
    pub fn table(&self, zone: ZoneId) -> Option<&RouteTable> {
        self.zones.get(&zone)
    }

    /// The next hop for `dst` in `zone`'s table; `None` if the zone has no table or no route.
    #[inline]
    pub fn route(&self, zone: ZoneId, dst: IpAddr) -> Option<u32> {
        self.zones.get(&zone).and_then(|t| t.route(dst))
    }

    /// Number of zones with a table.
    pub fn len(&self) -> usize {
        self.zones.len()
    }

    /// Whether no zone has a table.
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}
