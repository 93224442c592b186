//! Route tables per zone: the transit-gateway pattern.
//!
//! Each attachment (a zone: a tenant's VNI, a VPN, a peering) is associated with one
//! [`RouteTable`]; a route's next hop is an id the caller maps to another attachment (for
//! example a VNI and an underlay host for the encap stage, recorded in the packet's metadata).
//! [`RouteTables`] holds the tables by [`ZoneId`]; like the tables themselves it is built off the
//! hot path and swapped in whole. [`RouteStage`] is the pipeline stage: it writes each parsed
//! packet's next hop into its metadata from its zone's table.

use crate::lpm::{Ipv4Lpm, Ipv6Lpm};
use alloc::sync::Arc;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use nf_core::{
    Batch, Instant, NO_NEXT_HOP, Stage, StageControl, StageCounters, StageLoop, Verdict, ZoneId,
    ZoneMap, flags,
};

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
    zones: ZoneMap<RouteTable>,
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
        self.zones.remove(zone)
    }

    /// `zone`'s table.
    pub fn table(&self, zone: ZoneId) -> Option<&RouteTable> {
        self.zones.get(zone)
    }

    /// The next hop for `dst` in `zone`'s table; `None` if the zone has no table or no route.
    #[inline]
    pub fn route(&self, zone: ZoneId, dst: IpAddr) -> Option<u32> {
        self.zones.get(zone).and_then(|t| t.route(dst))
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

/// What [`RouteStage`] does with a packet its zone's table has no route for.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissAction {
    /// Leave it at `Pass` with [`NO_NEXT_HOP`]: a later stage (or the caller) decides.
    #[default]
    Pass,
    /// Send it to the control path.
    ToControl,
}

/// The routing stage: for every pending packet with a parsed L3 header, looks up its
/// destination in the table of its zone (`meta.zone`, the attachment it arrived on) and writes
/// the next hop to `meta.next_hop`; a miss leaves [`NO_NEXT_HOP`] and is counted as `no_route`
/// (and handled per [`MissAction`]). Packets without a parsed L3 header are left alone and
/// counted as `not_routed`. The tables are shared (`Arc`) and swapped whole with
/// [`set_tables`](Self::set_tables) between batches.
#[derive(Debug)]
pub struct RouteStage {
    tables: Arc<RouteTables>,
    on_miss: MissAction,
    counters: StageCounters,
    routed: u64,
    no_route: u64,
    not_routed: u64,
}

impl RouteStage {
    /// A stage routing by `tables`.
    pub fn new(tables: Arc<RouteTables>, on_miss: MissAction) -> Self {
        Self {
            tables,
            on_miss,
            counters: StageCounters::default(),
            routed: 0,
            no_route: 0,
            not_routed: 0,
        }
    }

    /// Replaces the tables (a new snapshot) and returns the old ones.
    pub fn set_tables(&mut self, tables: Arc<RouteTables>) -> Arc<RouteTables> {
        core::mem::replace(&mut self.tables, tables)
    }

    /// The tables in use.
    pub fn tables(&self) -> &Arc<RouteTables> {
        &self.tables
    }
}

impl<B> Stage<B> for RouteStage {
    fn process(&mut self, _now: Instant, batch: &mut Batch<B>) {
        self.each_pending(
            batch,
            #[inline(always)]
            |s, _, pkt| {
                let meta = &mut pkt.meta;
                if !meta.has(flags::L3_VALID) {
                    s.not_routed += 1;
                    return Verdict::Pass;
                }
                match s.tables.route(meta.zone, meta.flow.dst_ip()) {
                    Some(hop) => {
                        meta.next_hop = hop;
                        s.routed += 1;
                        Verdict::Pass
                    }
                    None => {
                        meta.next_hop = NO_NEXT_HOP;
                        s.no_route += 1;
                        match s.on_miss {
                            MissAction::Pass => Verdict::Pass,
                            MissAction::ToControl => Verdict::ToControl,
                        }
                    }
                }
            },
        );
    }
}

impl StageLoop for RouteStage {
    fn counters_mut(&mut self) -> &mut StageCounters {
        &mut self.counters
    }
}

impl StageControl for RouteStage {
    fn name(&self) -> &'static str {
        "route"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.counters.visit(self.name(), f);
        f(self.name(), "routed", self.routed);
        f(self.name(), "no_route", self.no_route);
        f(self.name(), "not_routed", self.not_routed);
    }
}
