//! Steering packets to workers: both directions of a flow reach the same worker, and a
//! reply to an address whose ports are split between workers (a NAT's public address)
//! reaches the worker that owns its destination port.
//!
//! A node runs one pipeline per worker (core), each with its own session table and nothing
//! mutable shared. That only works if every packet of a session reaches the worker that
//! holds it. [`Steering::worker`] decides from a parsed packet:
//!
//! 1. **Owned addresses** ([`Steering::own`]): a packet *to* such an address goes to the
//!    owner of its destination port under the address's [`PortPartition`]. A NAT that gives
//!    worker `w` only ports from [`Steering::ports_of`]`(w)` then gets every reply on the
//!    worker that created the mapping, with no lookup and no coordination (VPP splits its NAT
//!    ports per worker for the same reason). A partition may carry a second run per worker
//!    ([`PortPartition::with_low`], for a NAT's ports below 1024, which keep their own range
//!    class); a port in neither run of any worker is [`Steer::Unknown`].
//! 2. **Everything else**: a symmetric hash of the flow key, so `a → b` and `b → a` agree —
//!    keyed SipHash ([`SteerHash::Keyed`], what to use when software steers: an attacker who
//!    does not know the key cannot aim flows at one worker) or the symmetric Toeplitz hash
//!    ([`SteerHash::Toeplitz`], when the choice must agree with a NIC's RSS).
//! 3. **ICMP errors** are steered as the reverse of the flow they quote (the way connection
//!    tracking relates them), so an error reaches the worker holding that flow's session.
//! 4. **Fragments** carry ports only in the first one. With [`SteerFields::FiveTuple`] every
//!    fragment of a packet (first or later) is steered by its addresses alone, so they all
//!    meet, but a flow whose packets are sometimes fragmented may then meet its session on
//!    another worker: traffic that fragments should use [`SteerFields::Addresses`].
//!    A later fragment *to an owned address* names no port: it goes to
//!    [`Steer::Unknown`] (the caller drops or broadcasts it and counts it).
//!
//! Packets without a valid IP header (ARP, LLDP, a frame the parse dropped) are
//! [`Steer::Unknown`] too: a node sends them to its control path or worker 0.
//!
//! ```
//! use nf_core::steer::{PortPartition, Steer, SteerFields, SteerHash, Steering};
//! use nf_core::{FlowHasher, FlowKey, Meta, ZoneId, flags, flow::proto};
//!
//! let mut s = Steering::new(4, SteerHash::Keyed(FlowHasher::new([7; 16])), SteerFields::FiveTuple);
//! let public = [203, 0, 113, 1];
//! s.own(core::net::IpAddr::from(public), PortPartition::new(1024, 16128)).unwrap();
//!
//! let mut m = Meta::default();
//! m.flags = flags::L3_VALID | flags::L4_VALID;
//! // An inside host's flow, and the same flow seen from the other side: one worker.
//! m.flow = FlowKey::v4(ZoneId(0), [10, 0, 0, 5], [198, 51, 100, 7], proto::TCP, 40000, 443);
//! let w = s.worker(&[], &m);
//! m.flow = m.flow.reversed();
//! assert_eq!(s.worker(&[], &m), w);
//!
//! // The NAT on worker `w` picks its public port from `w`'s range; the reply comes back to it.
//! let Steer::Worker(w) = w else { unreachable!() };
//! let port = s.ports_of(w).unwrap().start + 17;
//! m.flow = FlowKey::v4(ZoneId(0), [198, 51, 100, 7], public, proto::TCP, 443, port);
//! assert_eq!(s.worker(&[], &m), Steer::Worker(w));
//! ```

use crate::conntrack::related::quoted_key;
use crate::flow::{Family, FlowKey};
use crate::hash::{FlowHasher, owner_of};
use crate::meta::{Meta, flags};
use crate::toeplitz::Toeplitz;
use alloc::vec::Vec;
use core::net::IpAddr;
use core::ops::Range;

/// Where a packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    /// This worker (below [`Steering::workers`]).
    Worker(u16),
    /// No worker can be named: not IP, or a later fragment to an owned address.
    Unknown,
}

/// The symmetric hash of flow keys.
#[derive(Clone, Debug)]
pub enum SteerHash {
    /// Keyed SipHash ([`FlowHasher::symmetric`]).
    Keyed(FlowHasher),
    /// The Toeplitz hash with a symmetric key ([`crate::toeplitz::SYMMETRIC_KEY`]), as a
    /// NIC's RSS computes it.
    Toeplitz(Toeplitz),
}

/// Which fields of the flow key the hash covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteerFields {
    /// Addresses, protocol and ports (fragments: addresses only, see the module docs).
    FiveTuple,
    /// Addresses only: every packet between two hosts meets, fragmented or not.
    Addresses,
}

/// How an owned address's ports are split: worker `w` owns `per_worker` ports from
/// `first + w · per_worker`, and, if `low_per_worker` is not 0, a second run of
/// `low_per_worker` ports from `low_first + w · low_per_worker` (for a NAT's ports below
/// 1024, which RFC 4787 REQ-3a keeps in their own range class). Ports in neither worker run
/// belong to nobody ([`Steer::Unknown`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortPartition {
    /// The first port of worker 0's range.
    pub first: u16,
    /// Ports per worker.
    pub per_worker: u16,
    /// The first port of worker 0's range in the second (low) run.
    pub low_first: u16,
    /// Ports per worker in the second run (0: no second run).
    pub low_per_worker: u16,
}

impl PortPartition {
    /// Ranges of `per_worker` ports from `first`.
    pub const fn new(first: u16, per_worker: u16) -> Self {
        Self {
            first,
            per_worker,
            low_first: 0,
            low_per_worker: 0,
        }
    }

    /// The same partition with a second run: worker `w` also owns `per_worker` ports from
    /// `first + w · per_worker` (`per_worker` 0 removes the second run).
    ///
    /// ```
    /// use nf_core::steer::PortPartition;
    /// let p = PortPartition::new(1024, 1000).with_low(0, 256);
    /// assert_eq!((p.low_first, p.low_per_worker), (0, 256));
    /// ```
    #[must_use]
    pub const fn with_low(self, first: u16, per_worker: u16) -> Self {
        Self {
            low_first: first,
            low_per_worker: per_worker,
            ..self
        }
    }

    /// An even split of `first..=65535` between `workers` workers.
    pub const fn even(first: u16, workers: u16) -> Self {
        let span = 65536 - first as u32;
        let per = if workers == 0 {
            0
        } else {
            span / workers as u32
        };
        Self::new(
            first,
            if per > u16::MAX as u32 {
                u16::MAX
            } else {
                per as u16
            },
        )
    }
}

/// Why [`Steering::own`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SteerError {
    /// The workers' ranges would run past port 65535, or a range is empty.
    BadPartition,
    /// The second (low) run would run past port 65535 or overlap the first.
    BadLowRun,
    /// More than [`MAX_OWNED`] addresses.
    TooManyAddresses,
}

impl core::fmt::Display for SteerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BadPartition => "port partition empty or past port 65535 for this many workers",
            Self::BadLowRun => "second port run past port 65535 or overlapping the first",
            Self::TooManyAddresses => "too many owned addresses",
        })
    }
}

/// Owned addresses a [`Steering`] checks (a linear scan per packet: keep it small).
pub const MAX_OWNED: usize = 64;

/// The steering decision for a node of [`Steering::workers`] workers (see the module docs).
#[derive(Clone, Debug)]
pub struct Steering {
    hash: SteerHash,
    fields: SteerFields,
    workers: u16,
    owned: Vec<(Family, [u8; 16], PortPartition)>,
}

impl Steering {
    /// Steering over `workers` workers (at least 1).
    pub fn new(workers: u16, hash: SteerHash, fields: SteerFields) -> Self {
        Self {
            hash,
            fields,
            workers: workers.max(1),
            owned: Vec::new(),
        }
    }

    /// The number of workers.
    pub fn workers(&self) -> u16 {
        self.workers
    }

    /// Steers packets to `addr` by destination port under `partition`.
    ///
    /// # Errors
    /// [`SteerError::BadPartition`] if a worker's range would be empty or run past 65535;
    /// [`SteerError::BadLowRun`] if the second run would run past 65535 or overlap the
    /// first; [`SteerError::TooManyAddresses`] beyond [`MAX_OWNED`].
    pub fn own(&mut self, addr: IpAddr, partition: PortPartition) -> Result<(), SteerError> {
        let (family, raw) = self.checked(addr, partition)?;
        self.owned.retain(|(f, r, _)| !(*f == family && *r == raw));
        self.owned.push((family, raw, partition));
        Ok(())
    }

    /// Steers packets to `addr` by destination port under `partition` too, beside the
    /// partitions it has: a node that took over another node's share of a NAT's ports (its
    /// sessions moved here when it failed) steers replies to those ports to its own workers
    /// by the other node's partition (nf-nat's `PortSplit::partition` of that node). A port
    /// goes to the worker of the first of the address's partitions whose runs hold it, in
    /// the order they were given; [`Self::own`] replaces them all.
    ///
    /// ```
    /// use nf_core::steer::{PortPartition, Steer, SteerFields, SteerHash, Steering};
    /// use nf_core::{FlowHasher, FlowKey, Meta, ZoneId, flags, flow::proto};
    /// let public = core::net::IpAddr::from([203, 0, 113, 1]);
    /// let mut s = Steering::new(2, SteerHash::Keyed(FlowHasher::new([7; 16])), SteerFields::FiveTuple);
    /// s.own(public, PortPartition::new(1024, 1000))?; // this node: 1024..3024
    /// s.own_also(public, PortPartition::new(3024, 1000))?; // a failed node's: 3024..5024
    /// let reply = |port| {
    ///     let mut m = Meta::default();
    ///     m.flow = FlowKey::v4(ZoneId(0), [198, 51, 100, 9], [203, 0, 113, 1], proto::UDP, 53, port);
    ///     m.flags |= flags::L3_VALID | flags::L4_VALID;
    ///     s.worker(&[], &m)
    /// };
    /// assert_eq!(reply(2500), Steer::Worker(1));
    /// assert_eq!(reply(3100), Steer::Worker(0));
    /// assert_eq!(reply(4100), Steer::Worker(1));
    /// assert_eq!(reply(6000), Steer::Unknown);
    /// # Ok::<(), nf_core::steer::SteerError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Self::own`].
    pub fn own_also(&mut self, addr: IpAddr, partition: PortPartition) -> Result<(), SteerError> {
        let (family, raw) = self.checked(addr, partition)?;
        self.owned.push((family, raw, partition));
        Ok(())
    }

    /// `addr` as raw bytes, if `partition` is valid and there is room for it.
    fn checked(
        &self,
        addr: IpAddr,
        partition: PortPartition,
    ) -> Result<(Family, [u8; 16]), SteerError> {
        let workers = u32::from(self.workers);
        let first = u32::from(partition.first);
        let end = first + u32::from(partition.per_worker) * workers;
        if partition.per_worker == 0 || end > 65536 {
            return Err(SteerError::BadPartition);
        }
        if partition.low_per_worker != 0 {
            let low_first = u32::from(partition.low_first);
            let low_end = low_first + u32::from(partition.low_per_worker) * workers;
            if low_end > 65536 || (low_first < end && first < low_end) {
                return Err(SteerError::BadLowRun);
            }
        }
        if self.owned.len() >= MAX_OWNED {
            return Err(SteerError::TooManyAddresses);
        }
        Ok(match addr {
            IpAddr::V4(a) => {
                let mut raw = [0u8; 16];
                if let Some(d) = raw.get_mut(..4) {
                    d.copy_from_slice(&a.octets());
                }
                (Family::V4, raw)
            }
            IpAddr::V6(a) => (Family::V6, a.octets()),
        })
    }

    /// The ports worker `w` owns on an address steered by `partition` (the first owned
    /// address's partition if there are several with different ones: use
    /// [`PortPartition`] arithmetic directly then). `None` without owned addresses or for a
    /// worker out of range.
    pub fn ports_of(&self, w: u16) -> Option<Range<u16>> {
        let (_, _, p) = self.owned.first()?;
        if w >= self.workers {
            return None;
        }
        let start = u32::from(p.first) + u32::from(p.per_worker) * u32::from(w);
        let end = start + u32::from(p.per_worker);
        // `own` checked that the last range ends by 65536; a range ending there is the
        // open range up to 65535.
        Some(u16::try_from(start).ok()?..u16::try_from(end.min(65535)).ok()?)
    }

    /// The worker for a parsed packet (`data` its frame, `meta` what the parse wrote).
    #[inline]
    pub fn worker(&self, data: &[u8], meta: &Meta) -> Steer {
        if !meta.has(flags::L3_VALID) {
            return Steer::Unknown;
        }
        let key = if meta.has(flags::ICMP_ERROR) {
            match quoted_key(data, meta) {
                Ok(q) => q.reversed(),
                Err(_) => meta.flow,
            }
        } else {
            meta.flow
        };
        let fragment = meta.has(flags::FRAGMENT) && !meta.has(flags::ICMP_ERROR);
        if !self.owned.is_empty() {
            let (family, dst) = (key.family(), key.dst_raw());
            let mut owned = false;
            for (_, _, p) in self
                .owned
                .iter()
                .filter(|(f, r, _)| *f == family && r == dst)
            {
                if fragment && meta.has(flags::LATER_FRAGMENT) {
                    return Steer::Unknown;
                }
                owned = true;
                if let w @ Steer::Worker(_) = self.port_owner(*p, key.dst_port) {
                    return w;
                }
            }
            if owned {
                return Steer::Unknown;
            }
        }
        let ports = self.fields == SteerFields::FiveTuple && !fragment;
        Steer::Worker(self.hash_owner(&key, ports))
    }

    #[inline]
    fn port_owner(&self, p: PortPartition, port: u16) -> Steer {
        // A zero `low_per_worker` (no second run) fails `checked_div`.
        if let Some(w) = port
            .checked_sub(p.low_first)
            .and_then(|off| off.checked_div(p.low_per_worker))
            .filter(|&w| w < self.workers)
        {
            return Steer::Worker(w);
        }
        let Some(off) = port.checked_sub(p.first) else {
            return Steer::Unknown;
        };
        let w = off / p.per_worker.max(1);
        if w < self.workers {
            Steer::Worker(w)
        } else {
            Steer::Unknown
        }
    }

    #[inline]
    fn hash_owner(&self, key: &FlowKey, ports: bool) -> u16 {
        let mut k = *key;
        if !ports {
            k.src_port = 0;
            k.dst_port = 0;
        }
        let h = match &self.hash {
            SteerHash::Keyed(f) => f.symmetric(&k),
            // Spread the 32-bit RSS hash over 64 bits the way `owner_of` expects.
            SteerHash::Toeplitz(t) => u64::from(t.hash_flow(&k, ports)) << 32,
        };
        owner_of(h, u32::from(self.workers)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{ZoneId, proto};
    use crate::toeplitz::SYMMETRIC_KEY;
    use proptest::prelude::*;

    fn meta(key: FlowKey, extra: u16) -> Meta {
        Meta {
            flags: flags::L3_VALID | flags::L4_VALID | extra,
            flow: key,
            ..Meta::default()
        }
    }

    fn arb_key() -> impl Strategy<Value = FlowKey> {
        (
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            prop_oneof![Just(proto::TCP), Just(proto::UDP)],
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(|(v6, s, d, p, sp, dp)| {
                if v6 {
                    FlowKey::v6(ZoneId(3), s, d, p, sp, dp)
                } else {
                    FlowKey::v4(
                        ZoneId(3),
                        [s[0], s[1], s[2], s[3]],
                        [d[0], d[1], d[2], d[3]],
                        p,
                        sp,
                        dp,
                    )
                }
            })
    }

    fn steerings(workers: u16) -> [Steering; 3] {
        [
            Steering::new(
                workers,
                SteerHash::Keyed(FlowHasher::new([9; 16])),
                SteerFields::FiveTuple,
            ),
            Steering::new(
                workers,
                SteerHash::Toeplitz(Toeplitz::new(&SYMMETRIC_KEY)),
                SteerFields::FiveTuple,
            ),
            Steering::new(
                workers,
                SteerHash::Keyed(FlowHasher::new([9; 16])),
                SteerFields::Addresses,
            ),
        ]
    }

    proptest! {
        #[test]
        fn both_directions_reach_the_same_worker(k in arb_key(), workers in 1u16..64) {
            for s in steerings(workers) {
                let a = s.worker(&[], &meta(k, 0));
                prop_assert!(matches!(a, Steer::Worker(w) if w < workers));
                prop_assert_eq!(a, s.worker(&[], &meta(k.reversed(), 0)));
            }
        }

        #[test]
        fn nat_replies_reach_the_worker_that_chose_the_port(
            k in arb_key(),
            workers in 1u16..64,
            first in 1024u16..4096,
            pick in any::<u16>(),
        ) {
            for mut s in steerings(workers) {
                // A public address of the same family as the flow.
                let public: IpAddr = match k.family() {
                    Family::V4 => IpAddr::from([203, 0, 113, 9]),
                    Family::V6 => IpAddr::from([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]),
                };
                s.own(public, PortPartition::even(first, workers)).unwrap();
                let Steer::Worker(w) = s.worker(&[], &meta(k, 0)) else {
                    return Err(TestCaseError::fail("original direction has a worker"));
                };
                let range = s.ports_of(w).unwrap();
                prop_assert!(!range.is_empty());
                let port = range.start + pick % (range.end - range.start);
                // The reply: from the remote end to the public address and chosen port.
                let mut raw = [0u8; 16];
                let pub_raw = match public { IpAddr::V4(a) => { raw[..4].copy_from_slice(&a.octets()); raw } IpAddr::V6(a) => a.octets() };
                let reply = match k.family() {
                    Family::V4 => {
                        let d = k.dst_raw();
                        FlowKey::v4(k.zone, [d[0], d[1], d[2], d[3]], [pub_raw[0], pub_raw[1], pub_raw[2], pub_raw[3]], k.proto, k.dst_port, port)
                    }
                    Family::V6 => FlowKey::v6(k.zone, *k.dst_raw(), pub_raw, k.proto, k.dst_port, port),
                };
                prop_assert_eq!(s.worker(&[], &meta(reply, 0)), Steer::Worker(w));
                // Ranges never overlap and never leave the port space.
                for v in 0..workers {
                    let r = s.ports_of(v).unwrap();
                    prop_assert!(r.start >= first);
                    if v != w { prop_assert!(!r.contains(&port)); }
                }
            }
        }

        #[test]
        fn fragments_meet_each_other(k in arb_key(), workers in 1u16..64) {
            for s in steerings(workers) {
                let first = s.worker(&[], &meta(k, flags::FRAGMENT));
                let mut later = k;
                later.src_port = 0;
                later.dst_port = 0;
                let later = meta(later, flags::FRAGMENT | flags::LATER_FRAGMENT);
                prop_assert_eq!(first, s.worker(&[], &later));
            }
        }
    }

    #[test]
    fn icmp_errors_follow_the_quoted_flow() {
        use crate::wire::Frame;
        use crate::{ParseConfig, parse_frame};
        let s = &steerings(16)[0];
        // An inside flow, and a router's "port unreachable" quoting its packet.
        let original = Frame::ipv4([10, 0, 0, 5], [198, 51, 100, 7])
            .udp(40000, 53)
            .payload(b"q")
            .to_vec()
            .unwrap();
        let err = Frame::ipv4([198, 51, 100, 7], [10, 0, 0, 5])
            .icmp_error(3, 3, &original[14..])
            .to_vec()
            .unwrap();
        let mut m = Meta::default();
        parse_frame(&original, &mut m, &ParseConfig::default()).unwrap();
        let flow_worker = s.worker(&original, &m);
        let mut e = Meta::default();
        parse_frame(&err, &mut e, &ParseConfig::default()).unwrap();
        assert!(e.has(flags::ICMP_ERROR));
        assert_eq!(s.worker(&err, &e), flow_worker);
    }

    #[test]
    fn unknown_for_non_ip_and_unowned_ports() {
        let mut s = Steering::new(
            4,
            SteerHash::Keyed(FlowHasher::new([1; 16])),
            SteerFields::FiveTuple,
        );
        assert_eq!(s.worker(&[], &Meta::default()), Steer::Unknown);
        s.own(
            IpAddr::from([203, 0, 113, 1]),
            PortPartition::new(2000, 1000),
        )
        .unwrap();
        // Below the first range, past the last, and the last port of the last range.
        for (port, want) in [
            (1999, Steer::Unknown),
            (6000, Steer::Unknown),
            (5999, Steer::Worker(3)),
        ] {
            let k = FlowKey::v4(
                ZoneId(0),
                [1, 1, 1, 1],
                [203, 0, 113, 1],
                proto::UDP,
                53,
                port,
            );
            assert_eq!(s.worker(&[], &meta(k, 0)), want, "port {port}");
        }
        assert_eq!(s.ports_of(3), Some(5000..6000));
        assert_eq!(
            s.own(
                IpAddr::from([203, 0, 113, 2]),
                PortPartition::new(60000, 2000)
            ),
            Err(SteerError::BadPartition)
        );
        assert_eq!(
            s.own(IpAddr::from([203, 0, 113, 2]), PortPartition::new(1, 0)),
            Err(SteerError::BadPartition)
        );
    }

    #[test]
    fn two_run_partition_boundaries_and_errors() {
        let mut s = Steering::new(
            4,
            SteerHash::Keyed(FlowHasher::new([1; 16])),
            SteerFields::FiveTuple,
        );
        let public = IpAddr::from([203, 0, 113, 1]);
        s.own(public, PortPartition::new(2000, 1000).with_low(100, 10))
            .unwrap();
        for (port, want) in [
            (99, Steer::Unknown),
            (100, Steer::Worker(0)),
            (109, Steer::Worker(0)),
            (110, Steer::Worker(1)),
            (139, Steer::Worker(3)),
            (140, Steer::Unknown),
            (1999, Steer::Unknown),
            (2000, Steer::Worker(0)),
            (5999, Steer::Worker(3)),
            (6000, Steer::Unknown),
        ] {
            let k = FlowKey::v4(
                ZoneId(0),
                [198, 51, 100, 1],
                [203, 0, 113, 1],
                proto::UDP,
                53,
                port,
            );
            assert_eq!(s.worker(&[], &meta(k, 0)), want, "port {port}");
        }
        // The second run past 65535, and overlapping the first at either end.
        for bad in [
            PortPartition::new(1024, 100).with_low(65000, 200),
            PortPartition::new(1024, 100).with_low(1000, 7),
            PortPartition::new(1024, 100).with_low(1423, 1),
        ] {
            assert_eq!(s.own(public, bad), Err(SteerError::BadLowRun), "{bad:?}");
        }
        // Touching runs are fine; a zero-length second run is none.
        s.own(public, PortPartition::new(1024, 100).with_low(1000, 6))
            .unwrap();
        s.own(public, PortPartition::new(1024, 100).with_low(1424, 1))
            .unwrap();
        s.own(public, PortPartition::new(1024, 100).with_low(65535, 0))
            .unwrap();
        let k = FlowKey::v4(
            ZoneId(0),
            [198, 51, 100, 1],
            [203, 0, 113, 1],
            proto::UDP,
            53,
            65535,
        );
        assert_eq!(s.worker(&[], &meta(k, 0)), Steer::Unknown);
    }
}
