//! Related packets: ICMP errors matched to the flow they quote, and later fragments matched
//! to their first fragment's session through a bounded fragment table.
//!
//! An ICMP or ICMPv6 error (destination unreachable, packet too big / fragmentation needed,
//! time exceeded, parameter problem) quotes the IP header and at least the first 8 bytes of
//! the packet that caused it. The quoted packet travelled towards the error's sender, so the
//! error travels the way the *reverse* of the quoted flow would: the stage looks up the
//! quoted key reversed, and the hit's direction is the error's (RFC 5508 §4: a NAT finds the
//! session of an error through the quoted packet). A quote too short to hold the inner IP
//! header and 8 bytes of its transport header, or whose inner IPv4 header checksum fails, is
//! dropped with its own reason. The quote is read within the bytes the packet holds, with a
//! bounded extension-header walk.
//!
//! Later fragments carry no transport header, so no ports: the stage records, for every first
//! fragment it passes, (zone, addresses, protocol (IPv4 only), IP identification) → session
//! and direction in a [`FragmentTable`]: fixed capacity, 4-way set-associative under a keyed
//! hash, entries living [`FragmentConfig::lifetime`]; a full set evicts its entry closest to
//! expiry (counted).
//! Out-of-order fragments (a later fragment before the first) find nothing and are dropped,
//! unless a [`FragmentReorder`](super::FragmentReorder) stage before this one held them until
//! their first fragment passed.

use crate::flow::{Family, FlowKey, ZoneId, proto};
use crate::hash::FlowHasher;
use crate::meta::{Direction, Meta, SessionRef};
use crate::time::{Duration, Instant};
use crate::verdict::DropReason;
use crate::wire::icmp::{IcmpKind, classify_v4, classify_v6};
use crate::wire::ipv6::walk_extensions;
use alloc::vec;
use alloc::vec::Vec;

/// The key an ICMP error's quoted packet travelled on (zone from `meta`), from the frame
/// bytes `data` of a packet the parse stage flagged [`ICMP_ERROR`](crate::flags): what
/// [`Conntrack`](super::Conntrack) looks up (reversed) to relate the error, and what a
/// service's [`on_refused`](super::SessionService::on_refused) reads to decide an error
/// that no session relates ([`DropReason::RelatedNoSession`]).
///
/// # Errors
/// [`DropReason::IcmpQuoteTruncated`], [`DropReason::IcmpQuoteBadChecksum`], or
/// [`DropReason::RelatedNoSession`] for a quote that cannot name a session (a quoted later
/// fragment, a quoted ICMP message that is not a query, another family).
pub fn quoted_key(data: &[u8], meta: &Meta) -> Result<FlowKey, DropReason> {
    // The quote ends with the IP packet: bytes after it (Ethernet padding, a trailer) are
    // not part of the message and must not complete a short quote.
    let quote = data
        .get(usize::from(meta.payload)..ip_end(data, meta))
        .unwrap_or(&[]);
    match meta.flow.family() {
        Family::V4 => quoted_v4(quote, meta.zone),
        Family::V6 => quoted_v6(quote, meta.zone),
    }
}

/// Where the outer IP packet ends in `data` (its total or payload length; the parse stage
/// checked that it lies within the frame).
fn ip_end(data: &[u8], meta: &Meta) -> usize {
    let l3 = usize::from(meta.l3);
    let ip = data.get(l3..).unwrap_or(&[]);
    let len = match (meta.flow.family(), ip) {
        (Family::V4, [_, _, a, b, ..]) => usize::from(u16::from_be_bytes([*a, *b])),
        (Family::V6, [_, _, _, _, a, b, ..]) => 40 + usize::from(u16::from_be_bytes([*a, *b])),
        _ => 0,
    };
    data.len().min(l3 + len)
}

fn quoted_v4(q: &[u8], zone: ZoneId) -> Result<FlowKey, DropReason> {
    let h: &[u8; 20] = q.first_chunk().ok_or(DropReason::IcmpQuoteTruncated)?;
    if h[0] >> 4 != 4 {
        return Err(DropReason::RelatedNoSession);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(DropReason::IcmpQuoteTruncated);
    }
    let hdr = q.get(..ihl).ok_or(DropReason::IcmpQuoteTruncated)?;
    if crate::checksum::checksum(hdr) != 0 {
        return Err(DropReason::IcmpQuoteBadChecksum);
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        // A quoted later fragment has no ports to name its flow by.
        return Err(DropReason::RelatedNoSession);
    }
    let l4 = q.get(ihl..).unwrap_or(&[]);
    let (sp, dp) = quoted_ports(h[9], l4, false)?;
    let (src, dst) = ([h[12], h[13], h[14], h[15]], [h[16], h[17], h[18], h[19]]);
    Ok(FlowKey::v4(zone, src, dst, h[9], sp, dp))
}

fn quoted_v6(q: &[u8], zone: ZoneId) -> Result<FlowKey, DropReason> {
    let h: &[u8; 40] = q.first_chunk().ok_or(DropReason::IcmpQuoteTruncated)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::RelatedNoSession);
    }
    let rest = q.get(40..).unwrap_or(&[]);
    let chain = walk_extensions(h[6], rest).map_err(|_| DropReason::IcmpQuoteTruncated)?;
    if chain.fragment.is_some_and(|f| f.offset != 0) {
        return Err(DropReason::RelatedNoSession);
    }
    let l4 = rest.get(chain.upper_offset..).unwrap_or(&[]);
    let (sp, dp) = quoted_ports(chain.upper, l4, true)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(h.get(8..24).unwrap_or(&[0; 16]));
    dst.copy_from_slice(h.get(24..40).unwrap_or(&[0; 16]));
    Ok(FlowKey::v6(zone, src, dst, chain.upper, sp, dp))
}

/// The flow-key ports of a quoted transport header (its first 8 bytes must be there).
fn quoted_ports(p: u8, l4: &[u8], v6: bool) -> Result<(u16, u16), DropReason> {
    let t: &[u8; 8] = l4.first_chunk().ok_or(DropReason::IcmpQuoteTruncated)?;
    let ports = (
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
    );
    match p {
        proto::TCP | proto::UDP => Ok(ports),
        proto::ICMP | proto::ICMPV6 if (p == proto::ICMPV6) == v6 => {
            let kind = if v6 {
                classify_v6(t[0])
            } else {
                classify_v4(t[0])
            };
            if kind != IcmpKind::Query {
                return Err(DropReason::RelatedNoSession);
            }
            let id = u16::from_be_bytes([t[4], t[5]]);
            Ok((id, id))
        }
        // Other protocols are tracked without ports (the parse stage keys them so).
        _ => Ok((0, 0)),
    }
}

/// The IP identification of a fragment (IPv4: 16 bits; IPv6: the Fragment header's 32), from
/// the frame bytes; `None` if it cannot be read.
pub(crate) fn fragment_id(data: &[u8], meta: &Meta) -> Option<u32> {
    let ip = data.get(usize::from(meta.l3)..)?;
    match meta.flow.family() {
        Family::V4 => {
            let h: &[u8; 20] = ip.first_chunk()?;
            Some(u32::from(u16::from_be_bytes([h[4], h[5]])))
        }
        Family::V6 => {
            let h: &[u8; 40] = ip.first_chunk()?;
            let chain = walk_extensions(h[6], ip.get(40..)?).ok()?;
            chain.fragment.map(|f| f.ident)
        }
    }
}

/// Settings of the fragment table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FragmentConfig {
    /// Entries (rounded up to a multiple of 4; 0 turns fragment tracking off: every later
    /// fragment is dropped as unmatched).
    pub capacity: u32,
    /// How long after its first fragment a packet's later fragments are matched.
    pub lifetime: Duration,
}

impl Default for FragmentConfig {
    /// 4096 entries, 4 seconds.
    fn default() -> Self {
        Self {
            capacity: 4096,
            lifetime: Duration::from_secs(4),
        }
    }
}

/// Fragment table counters (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FragmentCounters {
    /// First fragments recorded.
    pub recorded: u64,
    /// Later fragments matched to a session.
    pub hits: u64,
    /// Later fragments with no live entry (first fragment lost, late, or evicted).
    pub misses: u64,
    /// Live entries evicted to make room (a set was full).
    pub evictions: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// Zone, addresses and protocol of the packet; the IP identification in the ports.
    key: FlowKey,
    session: Option<SessionRef>,
    direction: Direction,
    /// Nanoseconds; the entry is live while `now < expires`.
    expires: u64,
}

const WAYS: usize = 4;

/// Later fragments → their first fragment's session (see the module docs).
#[derive(Debug)]
pub(crate) struct FragmentTable {
    entries: Vec<Entry>,
    sets: u64,
    lifetime: u64,
    hasher: FlowHasher,
    pub(crate) counters: FragmentCounters,
}

impl FragmentTable {
    pub(crate) fn new(cfg: FragmentConfig, secret: [u8; 16]) -> Self {
        let sets = u64::from(cfg.capacity).div_ceil(WAYS as u64);
        // A key of its own: the fragment hash must not reveal the session table's.
        let mut s = secret;
        for b in &mut s {
            *b ^= 0x5c;
        }
        Self {
            entries: vec![Entry::default(); (sets as usize) * WAYS],
            sets,
            lifetime: cfg.lifetime.as_nanos(),
            hasher: FlowHasher::new(s),
            counters: FragmentCounters::default(),
        }
    }

    /// Bytes allocated.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.entries.capacity() * core::mem::size_of::<Entry>()
    }

    /// The table's key of a fragment: its flow key with the identification for ports (IPv6:
    /// protocol "fragment").
    pub(crate) fn key(meta: &Meta, id: u32) -> FlowKey {
        let mut k = meta.flow;
        if k.family() == Family::V6 {
            // RFC 8200 §4.5 keys reassembly by addresses and identification only: headers
            // behind the Fragment header (e.g. Destination Options) are in the first
            // fragment's chain, so a later fragment's "protocol" names them, not the upper
            // protocol the first fragment's key has.
            k.proto = crate::wire::ipv6::next_header::FRAGMENT;
        }
        k.src_port = (id >> 16) as u16;
        k.dst_port = id as u16;
        k
    }

    fn set(&mut self, key: &FlowKey) -> &mut [Entry] {
        let h = self.hasher.hash(key);
        let s = ((u128::from(h) * u128::from(self.sets)) >> 64) as usize;
        self.entries
            .get_mut(s * WAYS..(s + 1) * WAYS)
            .unwrap_or(&mut [])
    }

    /// Records a first fragment's session.
    pub(crate) fn record(&mut self, now: Instant, meta: &Meta, id: u32) {
        if self.sets == 0 {
            return;
        }
        let key = Self::key(meta, id);
        let (n, expires) = (now.as_nanos(), now.as_nanos().saturating_add(self.lifetime));
        let set = self.set(&key);
        // The same packet again (a retransmitted first fragment), else a dead entry, else
        // the live entry closest to expiry.
        let same = set.iter().position(|e| e.expires > n && e.key == key);
        let dead = || set.iter().position(|e| e.expires <= n);
        let (slot, evicted) = match same.or_else(dead) {
            Some(i) => (i, false),
            None => {
                let i = (0..set.len())
                    .min_by_key(|&i| set.get(i).map_or(0, |e| e.expires))
                    .unwrap_or(0);
                (i, true)
            }
        };
        if let Some(e) = set.get_mut(slot) {
            *e = Entry {
                key,
                session: meta.session,
                direction: meta.direction,
                expires,
            };
        }
        self.counters.recorded += 1;
        self.counters.evictions += u64::from(evicted);
    }

    /// True if a first fragment with this [`Self::key`] was recorded and is live (not
    /// counted).
    pub(crate) fn live(&mut self, now: Instant, key: &FlowKey) -> bool {
        let n = now.as_nanos();
        self.set(key).iter().any(|e| e.expires > n && e.key == *key)
    }

    /// The session and direction of a later fragment's packet, if its first was recorded.
    pub(crate) fn find(
        &mut self,
        now: Instant,
        meta: &Meta,
        id: u32,
    ) -> Option<(SessionRef, Direction)> {
        let key = Self::key(meta, id);
        let n = now.as_nanos();
        let found = self
            .set(&key)
            .iter()
            .find(|e| e.expires > n && e.key == key)
            .and_then(|e| Some((e.session?, e.direction)));
        if found.is_some() {
            self.counters.hits += 1;
        } else {
            self.counters.misses += 1;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{ParseConfig, parse_frame};

    /// An Ethernet + IPv4 ICMP port unreachable quoting 20 bytes of IPv4 header and only 4
    /// bytes of UDP (ports, no length), followed by a 4-byte link-layer trailer.
    fn short_quote_with_trailer() -> alloc::vec::Vec<u8> {
        let inner: [u8; 24] = [
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 192, 0, 2, 10, 0x14, 0xe9, 0, 53,
        ];
        let mut inner = inner.to_vec();
        let c = crate::checksum::checksum(&inner[..20]);
        inner[10..12].copy_from_slice(&c.to_be_bytes());
        let total = (20 + 8 + inner.len()) as u16;
        let mut ip = alloc::vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 203, 0, 113, 1, 10, 0, 0, 1
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let c = crate::checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = alloc::vec![2u8, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&inner);
        f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        f
    }

    #[test]
    fn a_trailer_after_the_ip_packet_does_not_complete_a_short_quote() {
        let f = short_quote_with_trailer();
        let mut m = Meta::default();
        parse_frame(&f, &mut m, &ParseConfig::default()).unwrap();
        assert!(m.has(crate::meta::flags::ICMP_ERROR));
        assert_eq!(quoted_key(&f, &m), Err(DropReason::IcmpQuoteTruncated));
        // Without the trailer, the same: the quote is 4 bytes short either way.
        assert_eq!(
            quoted_key(&f[..f.len() - 4], &m),
            Err(DropReason::IcmpQuoteTruncated)
        );
    }
}
