//! The decapsulation stage: recognise Geneve and VXLAN by UDP destination port, check the
//! outer headers, map the VNI to a zone, strip the outer headers in place and parse the
//! inner frame.
//!
//! The outer headers are read by nf-core's parse walk itself ([`parse_frame`], or
//! [`parse_l3`] for a packet marked [`flags::NO_L2`]), so the stage accepts exactly the
//! outers the parse stage accepts: Ethernet with up to two VLAN tags, IPv4 with options,
//! IPv6 with extension headers, atomic fragments. For every packet still at
//! [`Verdict::Pass`]:
//! - a frame the parse walk rejects: dropped with its reason, whatever its port;
//! - not IP/UDP to a configured port (a later fragment has no port): left alone, with its
//!   metadata filled as the parse stage would, or dropped with [`DropReason::NotTunnel`]
//!   ([`DecapConfig::non_tunnel`]);
//! - UDP to a tunnel port in a (non-atomic) IP fragment, or a later fragment of a UDP
//!   datagram to one of [`DecapConfig::local_ips`] (when set; it may be a tunnel packet's
//!   tail, and the stage does not reassemble): dropped as
//!   [`DropReason::TunnelFragmented`]; beyond a second nested tunnel:
//!   [`DropReason::TunnelTooDeep`]; to a destination IP or MAC that is not one of
//!   [`DecapConfig::local_ips`] / [`DecapConfig::local_macs`] (when set):
//!   [`DropReason::TunnelNotLocal`];
//! - a non-zero UDP checksum that does not verify (or a zero one over IPv6 unless allowed),
//!   a bad tunnel header, an unknown critical option, a missing required option, an unknown
//!   VNI, a spoofed inner source: dropped with the reason;
//! - a Geneve control message (O bit) with well-formed options (the options a profile
//!   requires of data traffic may be absent): [`Verdict::ToControl`], not stripped;
//! - otherwise the outer headers are pulled off (they stay in the headroom),
//!   `meta.zone` and `meta.tunnel` ([`TunnelMeta`]: kind, VNI, underlay addresses, the
//!   registered options and their data) are set and the inner frame is parsed, so the next
//!   stage needs no parse stage: from Ethernet (Geneve 0x6558, VXLAN) or, for a Geneve
//!   IPv4/IPv6 payload, from the IP header (`meta.l3 == 0`, [`flags::NO_L2`] set); a non-IP
//!   inner frame (ARP ...) follows the inner parse settings' `non_ip`
//!   ([`Verdict::ToControl`] by default, or dropped as [`DropReason::NonIp`]).
//!
//! A second stage strips a tunnel inside the first (GWLB's Geneve carrying VXLAN Traffic
//! Mirroring): it starts at the inner L3 when the first left a bare IP packet, and keeps the
//! first tunnel's metadata (`meta.tunnel.outer_vni`, the underlay addresses) beside its own.

use crate::encap::ConfigError;
use crate::mapping::{MappingCache, SourceCheck, ip_from_raw};
use crate::outer::{Outer, udp_checksum_ok};
use crate::zones::ZoneMap;
use crate::{GENEVE_PORT, GenevePacket, TunnelError, VXLAN_PORT, VxlanPacket};
use alloc::vec::Vec;
use core::net::IpAddr;
use nf_core::flow::proto;
use nf_core::wire::ethertype;
use nf_core::{
    Batch, DropReason, Family, FastFrame, FastL4, Instant, Meta, NonIpAction, Packet, ParseConfig,
    Parsed, Stage, StageControl, StageCounters, StageLoop, TUNNEL_OPTION_DATA_LEN, TunnelMeta,
    Verdict, ZoneId, flags, parse_fast, parse_frame, parse_l3,
};

/// Which tunnel a UDP port carries (nf-core's, as it is recorded in [`TunnelMeta::kind`]).
pub use nf_core::TunnelKind;

/// Fate of frames that are not tunnel packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonTunnel {
    /// Leave them at [`Verdict::Pass`] for later stages.
    #[default]
    Pass,
    /// Drop them with [`DropReason::NotTunnel`].
    Drop,
}

/// What happens to a packet whose inner source the mapping cache does not know yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownSource {
    /// Drop it (a query is queued; later packets pass once answered).
    #[default]
    Drop,
    /// Let it through.
    Pass,
}

/// A Geneve option the stage understands: it may be critical, it is reported in
/// `meta.tunnel.options` (bit = its index in [`DecapConfig::options`]), and it may be
/// required with an exact data length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    /// Option class.
    pub class: u16,
    /// Option type without the critical bit.
    pub ty: u8,
    /// Required data length in bytes, if any.
    pub data_len: Option<u8>,
    /// Packets without it are dropped ([`DropReason::TunnelMissingOption`]).
    pub required: bool,
}

impl OptionSpec {
    /// An optional option of any length.
    pub const fn known(class: u16, ty: u8) -> Self {
        Self {
            class,
            ty,
            data_len: None,
            required: false,
        }
    }
    /// A required option with exactly `data_len` bytes of data.
    pub const fn required(class: u16, ty: u8, data_len: u8) -> Self {
        Self {
            class,
            ty,
            data_len: Some(data_len),
            required: true,
        }
    }
}

/// Most options a stage tracks (one bit each in `meta.tunnel.options`); registering more is
/// a [`ConfigError::TooManyOptions`].
pub const MAX_OPTION_SPECS: usize = 16;

/// Decapsulation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecapConfig {
    /// UDP destination ports and the tunnel each carries.
    pub ports: Vec<(u16, TunnelKind)>,
    /// VNI → zone.
    pub zones: ZoneMap,
    /// Options understood / reported / required (at most [`MAX_OPTION_SPECS`]).
    pub options: Vec<OptionSpec>,
    /// Verify the outer IPv4 header checksum.
    pub verify_ipv4_checksum: bool,
    /// Verify non-zero outer UDP checksums.
    pub verify_udp_checksum: bool,
    /// Accept a zero UDP checksum over IPv6 (RFC 6935/6936 tunnels; RFC 8926 §3.3).
    pub accept_zero_udp6_checksum: bool,
    /// Fate of frames that are not tunnel packets.
    pub non_tunnel: NonTunnel,
    /// Anti-spoofing: fate of packets whose inner source is not mapped yet.
    pub unknown_source: UnknownSource,
    /// Inner frame parsing.
    pub parse: ParseConfig,
    /// The node's own underlay addresses: a tunnel packet to another destination IP is
    /// dropped ([`DropReason::TunnelNotLocal`]), and so is a later fragment of any UDP
    /// datagram to one of them ([`DropReason::TunnelFragmented`]: it has no port to tell a
    /// tunnel by, and may be a tunnel packet's tail). Empty: any destination, and later
    /// fragments are not tunnel packets.
    pub local_ips: Vec<IpAddr>,
    /// The node's own MAC addresses, checked the same way when the frame has an Ethernet
    /// header. Empty: any destination MAC.
    pub local_macs: Vec<[u8; 6]>,
}

impl Default for DecapConfig {
    fn default() -> Self {
        Self {
            ports: alloc::vec![
                (GENEVE_PORT, TunnelKind::Geneve),
                (VXLAN_PORT, TunnelKind::Vxlan)
            ],
            zones: ZoneMap::Identity,
            options: Vec::new(),
            verify_ipv4_checksum: true,
            verify_udp_checksum: true,
            accept_zero_udp6_checksum: false,
            non_tunnel: NonTunnel::Pass,
            unknown_source: UnknownSource::Drop,
            parse: ParseConfig::default(),
            local_ips: Vec::new(),
            local_macs: Vec::new(),
        }
    }
}

/// The decapsulation stage (see the module docs).
///
/// The outer headers take nf-core's parse walk, whose fixed-offset shortcut covers the
/// common outers (no VLAN tag or one, IPv4 without options, IPv6 without extension
/// headers). The tunnel header then first tries a fast path (a tunnel on one of the first
/// configured ports, Geneve options compared with the expected layout or walked once);
/// anything it does not accept, valid or not, takes the general walk, which also names the
/// drop reason. Both give the same result for every input (property-tested). The fast
/// path's tunnel step is compiled once per tunnel kind, and a stage without a source check,
/// local addresses or a VNI table runs a copy of the fast path compiled without those checks.
#[derive(Debug)]
pub struct DecapStage {
    config: DecapConfig,
    required_mask: u16,
    fast: FastTables,
    /// The outer parse: the inner settings with the outer IPv4 checksum setting.
    outer_parse: ParseConfig,
    /// [`DecapConfig::local_ips`] as (family, raw address).
    local_ips: Vec<(Family, [u8; 16])>,
    /// Per option spec: where its data goes in [`TunnelMeta::option_data`] (offset,
    /// length; length 0 for a spec whose data is not kept).
    data_slots: [(u8, u8); MAX_OPTION_SPECS],
    /// Some spec's data is kept.
    keeps_data: bool,
    /// Where that data is in a Geneve header of the precomputed layout.
    canon_data: WordMap,
    hosts: Option<MappingCache>,
    /// [`DecapConfig::local_ips`] or [`DecapConfig::local_macs`] is set (the fast path
    /// leaves those checks to the general walk).
    checks_local: bool,
    /// [`DecapConfig::options`] is not empty.
    has_options: bool,
    /// No source check, no local-address check and VNIs taken as zones
    /// ([`ZoneMap::Identity`]): the per-packet path runs a copy compiled without those
    /// three (`decap_as::<true>`).
    plain: bool,
    counters: StageCounters,
}

/// What the outer and tunnel headers of a packet to decapsulate say.
#[derive(Clone, Copy, Debug)]
struct Plan<'a> {
    outer: Outer,
    kind: TunnelKind,
    vni: u32,
    zone: ZoneId,
    /// Tunnel header length (Geneve options included).
    hdr_len: usize,
    /// EtherType of the payload (TEB for an Ethernet frame).
    inner_et: u16,
    /// Bits of the known options present.
    options: u16,
    /// The Geneve header, when it is the precomputed layout ([`FastTables::canon`]).
    canonical: Option<&'a [u8; CANON_LEN]>,
}

impl Plan<'_> {
    /// What [`DecapStage::strip`] needs of it.
    #[inline(always)]
    fn cut(&self) -> Cut {
        Cut {
            start: self.outer.tunnel() + self.hdr_len,
            end: self.outer.tunnel() + self.outer.udp_payload_len,
            zone: self.zone,
            inner_et: self.inner_et,
            vni: self.vni,
        }
    }
}

/// Where the inner frame is in a packet to decapsulate, and what it is.
#[derive(Clone, Copy, Debug)]
struct Cut {
    /// Offset of the inner frame (the outer headers' length).
    start: usize,
    /// End of the UDP payload (what follows is padding).
    end: usize,
    zone: ZoneId,
    /// EtherType of the payload (TEB for an Ethernet frame).
    inner_et: u16,
    vni: u32,
}

/// The outcome of the general walk over the outer and tunnel headers.
enum Step<'a> {
    /// Strip the headers and parse the inner frame.
    Strip(Plan<'a>),
    /// Leave the packet as it is with this verdict (not a tunnel packet, or a control
    /// message).
    Done(Verdict),
}

/// Ports the fast path recognises.
const FAST_PORTS: usize = 4;

/// Fixed-size copies of the configured ports and options, for the fast path.
#[derive(Clone, Copy, Debug)]
struct FastTables {
    /// The first [`FAST_PORTS`] configured ports, padded with copies of the first one (a
    /// repeated entry never changes which entry matches first).
    ports: [u16; FAST_PORTS],
    /// `None` everywhere when no port is configured.
    kinds: [Option<TunnelKind>; FAST_PORTS],
    /// Per option spec: what an option's header word (class, type, length) masked with
    /// `opt_masks` equals when it is this spec's option with an acceptable length and no
    /// earlier spec names it; [`NEVER`] when no header can be that.
    opt_words: [u32; MAX_OPTION_SPECS],
    opt_masks: [u32; MAX_OPTION_SPECS],
    /// Per option spec: `class << 8 | type` (critical bit clear), or `u32::MAX` for a spec
    /// that can never be the first match (a type with the critical bit, a repeat of an
    /// earlier spec, an unused slot).
    opt_keys: [u32; MAX_OPTION_SPECS],
    /// Required data length in 4-byte words; [`ANY_LEN`] for any, [`NO_LEN`] for a length
    /// no option can have.
    opt_lens: [u8; MAX_OPTION_SPECS],
    /// Number of option specs.
    specs: usize,
    /// The usual Geneve header, when the specs allow one: a data packet (O bit clear) of
    /// version 0 carrying every spec's option once, in spec order, each of its required
    /// length, at most [`CANON_LEN`] bytes in all. Its options length and the bits of all
    /// specs; the bytes it starts with and a mask selecting what is fixed (version, options
    /// length, O bit, and each option's class, type without the critical bit and length).
    canon: (usize, u16),
    canon_bytes: [u8; CANON_LEN],
    canon_mask: [u8; CANON_LEN],
}

/// Where each 4-byte word of [`TunnelMeta::option_data`] comes from in a Geneve header of
/// the precomputed layout: option data is a whole number of words, and in that layout
/// every option sits at a known offset.
#[derive(Clone, Copy, Debug)]
struct WordMap {
    /// The word of the Geneve header (offset / 4, below [`CANON_LEN`] / 4) that word `k` of
    /// the data is; [`ZERO_WORD`] for a word no option fills.
    from: [u8; TUNNEL_OPTION_DATA_LEN / 4],
    /// The same map as 8-byte lanes, when every lane of the data is one 8-byte load from
    /// the header (word `w` onwards, `w` ≤ 10) masked (all ones, its first 4 bytes, or
    /// nothing): the usual layouts, whose options carry 8 or 4 bytes (GWLB: 8, 8, 4).
    lanes: Option<[(u8, u64); TUNNEL_OPTION_DATA_LEN / 8]>,
}

impl WordMap {
    /// The map for the precomputed layout of `fast` (no words when there is none).
    fn canonical(fast: &FastTables, slots: &[(u8, u8); MAX_OPTION_SPECS]) -> Self {
        let mut map = Self {
            from: [ZERO_WORD; TUNNEL_OPTION_DATA_LEN / 4],
            lanes: None,
        };
        if fast.canon.1 == 0 {
            return map;
        }
        let mut at = crate::GENEVE_HEADER_LEN;
        for (i, &(off, len)) in slots.iter().enumerate().take(fast.specs) {
            let words = fast.opt_words.get(i).map_or(0, |w| (w & 0x1f) as usize);
            for j in 0..usize::from(len) / 4 {
                let k = usize::from(off) / 4 + j;
                if let Some(f) = map.from.get_mut(k) {
                    *f = ((at + 4 + 4 * j) / 4) as u8;
                }
            }
            at += 4 + 4 * words;
        }
        map.lanes = map.as_lanes();
        map
    }

    /// [`WordMap::from`] as 8-byte lanes, if it can be (see [`WordMap::lanes`]).
    fn as_lanes(&self) -> Option<[(u8, u64); TUNNEL_OPTION_DATA_LEN / 8]> {
        const LOW: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let mut lanes = [(0u8, 0u64); TUNNEL_OPTION_DATA_LEN / 8];
        let (pairs, _) = self.from.as_chunks::<2>();
        for (lane, &[a, b]) in lanes.iter_mut().zip(pairs) {
            // An 8-byte load from word `a` stays inside the header.
            let fits = usize::from(a) * 4 + 8 <= CANON_LEN;
            *lane = match (a == ZERO_WORD, b == ZERO_WORD) {
                (true, true) => (0, 0),
                (false, true) if fits => (a, LOW),
                (false, false) if fits && b == a + 1 => (a, u64::MAX),
                _ => return None,
            };
        }
        Some(lanes)
    }

    /// [`WordMap::fill`] by lanes: four masked 8-byte loads and stores.
    #[inline(always)]
    fn fill_lanes(
        lanes: &[(u8, u64); TUNNEL_OPTION_DATA_LEN / 8],
        hdr: &[u8; CANON_LEN],
        out: &mut [u8; TUNNEL_OPTION_DATA_LEN],
    ) {
        let (dst, _) = out.as_chunks_mut::<8>();
        for (d, &(w, mask)) in dst.iter_mut().zip(lanes) {
            let v = hdr
                .get(usize::from(w) * 4..)
                .and_then(|b| b.first_chunk::<8>())
                .map_or(0, |b| u64::from_ne_bytes(*b));
            *d = (v & mask).to_ne_bytes();
        }
    }

    /// Writes the option data of `hdr`, a Geneve header of the precomputed layout, into
    /// `out`: every word of `out` is copied from the word [`WordMap::from`] names, a word
    /// of zeros past the header for the words no option fills (no branch, no loop count).
    #[inline(always)]
    fn fill(&self, hdr: &[u8; CANON_LEN], out: &mut [u8; TUNNEL_OPTION_DATA_LEN]) {
        let mut src = [[0u8; 4]; SRC_WORDS];
        let (words, _) = hdr.as_chunks::<4>();
        for (s, w) in src.iter_mut().zip(words) {
            *s = *w;
        }
        let (dst, _) = out.as_chunks_mut::<4>();
        for (d, &f) in dst.iter_mut().zip(&self.from) {
            // In bounds: `SRC_WORDS` is a power of two.
            if let Some(w) = src.get(usize::from(f) & (SRC_WORDS - 1)) {
                *d = *w;
            }
        }
    }
}

/// Words [`WordMap::fill`] picks from: the [`CANON_LEN`] bytes of a header, then zeros (a
/// power of two).
const SRC_WORDS: usize = 16;
/// A word of zeros in [`WordMap::fill`]'s source.
const ZERO_WORD: u8 = (CANON_LEN / 4) as u8;
const _: () = assert!(CANON_LEN / 4 < SRC_WORDS && SRC_WORDS.is_power_of_two());

/// Bytes compared against the precomputed Geneve header (base header and options).
const CANON_LEN: usize = 48;

const ANY_LEN: u8 = 0xff;
const NO_LEN: u8 = 0xfe;
/// A masked option header never has the critical bit set: no option matches this.
const NEVER: u32 = 0x8000;
/// Class, type without the critical bit, length (the reserved bits are ignored).
const WORD_MASK: u32 = 0xffff_7f1f;

impl FastTables {
    fn new(config: &DecapConfig) -> Self {
        let first = config.ports.first().copied();
        let mut ports = [first.map_or(0, |f| f.0); FAST_PORTS];
        let mut kinds = [first.map(|f| f.1); FAST_PORTS];
        for ((p, k), &(port, kind)) in ports.iter_mut().zip(&mut kinds).zip(&config.ports) {
            *p = port;
            *k = Some(kind);
        }
        let mut t = Self {
            ports,
            kinds,
            opt_words: [NEVER; MAX_OPTION_SPECS],
            opt_masks: [WORD_MASK; MAX_OPTION_SPECS],
            opt_keys: [u32::MAX; MAX_OPTION_SPECS],
            opt_lens: [ANY_LEN; MAX_OPTION_SPECS],
            specs: config.options.len().min(MAX_OPTION_SPECS),
            canon: (0, 0),
            // No header matches until a layout is filled in: a bit the mask clears is set.
            canon_bytes: [1; CANON_LEN],
            canon_mask: [0; CANON_LEN],
        };
        for (i, spec) in config.options.iter().enumerate().take(MAX_OPTION_SPECS) {
            let reachable = spec.ty & crate::geneve::CRITICAL == 0
                && !config
                    .options
                    .iter()
                    .take(i)
                    .any(|e| e.class == spec.class && e.ty == spec.ty);
            let len = match spec.data_len {
                None => ANY_LEN,
                Some(n) if n.is_multiple_of(4) => n / 4,
                Some(_) => NO_LEN,
            };
            let key = u32::from(spec.class) << 8 | u32::from(spec.ty);
            if let (Some(w), Some(m), Some(k), Some(l)) = (
                t.opt_words.get_mut(i),
                t.opt_masks.get_mut(i),
                t.opt_keys.get_mut(i),
                t.opt_lens.get_mut(i),
            ) {
                *l = len;
                if reachable {
                    *k = key;
                    match len {
                        ANY_LEN => {
                            *w = key << 8;
                            *m = WORD_MASK & !0x1f;
                        }
                        // Above 31 words the length bits never match: neither does the word.
                        0..=63 => *w = key << 8 | u32::from(len),
                        _ => {}
                    }
                }
            }
        }
        let mut probe = t;
        if let Some(canon) = probe.canonical_layout(config.options.len()) {
            t = probe;
            t.canon = canon;
        }
        t
    }

    /// Fills the precomputed header (see [`FastTables::canon`]) when all `n` specs have a
    /// fixed length and can match: its options length and the bits of all `n` specs. (The
    /// caller keeps a header no packet matches when this fails half-way.)
    fn canonical_layout(&mut self, n: usize) -> Option<(usize, u16)> {
        self.canon_bytes = [0; CANON_LEN];
        self.canon_mask = [0; CANON_LEN];
        let mut at = crate::GENEVE_HEADER_LEN;
        for i in 0..n {
            let (&word, &mask) = self.opt_words.get(i).zip(self.opt_masks.get(i))?;
            if word == NEVER || mask != WORD_MASK {
                return None;
            }
            let end = at + 4;
            self.canon_bytes
                .get_mut(at..end)?
                .copy_from_slice(&word.to_be_bytes());
            self.canon_mask
                .get_mut(at..end)?
                .copy_from_slice(&WORD_MASK.to_be_bytes());
            at = end + (word & 0x1f) as usize * 4;
        }
        if at > CANON_LEN {
            return None;
        }
        let olen = at - crate::GENEVE_HEADER_LEN;
        // Version 0 and the options length; the O bit clear.
        *self.canon_bytes.first_mut()? = (olen / 4) as u8;
        *self.canon_mask.first_mut()? = 0xff;
        *self.canon_mask.get_mut(1)? = 0x80;
        Some((olen, ((1u32 << n) - 1) as u16))
    }

    /// The tunnel on `port` if it is among the first [`FAST_PORTS`] configured.
    #[inline(always)]
    fn kind(&self, port: u16) -> Option<TunnelKind> {
        let [p0, p1, p2, p3] = self.ports;
        let [k0, k1, k2, k3] = self.kinds;
        if port == p0 {
            k0
        } else if port == p1 {
            k1
        } else if port == p2 {
            k2
        } else if port == p3 {
            k3
        } else {
            None
        }
    }

    /// Options length and option bits of a Geneve data packet of version 0 whose header
    /// (`tun`, the UDP payload) is the precomputed one: one masked comparison of its first
    /// [`CANON_LEN`] bytes (bytes past the options are masked out). All specs are in it, so
    /// its bits hold every required one.
    #[inline(always)]
    fn canonical(&self, tun: &[u8]) -> Option<(usize, u16)> {
        let canon = self.canon;
        let window = tun.first_chunk::<CANON_LEN>()?;
        let diff = window
            .iter()
            .zip(&self.canon_mask)
            .zip(&self.canon_bytes)
            .fold(0u8, |d, ((&b, &m), &want)| d | ((b & m) ^ want));
        (diff == 0).then_some(canon)
    }

    /// One walk over a Geneve options area: framing, known options (bit per spec), data
    /// lengths, required options. `None` for anything the general walk would reject (and
    /// for nothing it accepts), so the caller falls back to it for the drop reason.
    #[inline(never)]
    fn walk(&self, mut opts: &[u8], required: u16) -> Option<u16> {
        let mut mask = 0u16;
        // Options usually come in the order of the specs: the `n`-th option's header is
        // compared with spec `n` in one step, and only a miss searches all specs. Bounded:
        // each step consumes at least 4 of at most 252 bytes.
        let mut n = 0usize;
        while let Some(&w) = opts.first_chunk::<4>() {
            let w = u32::from_be_bytes(w);
            let guess = self.opt_words.get(n).zip(self.opt_masks.get(n));
            if let Some((&want, &m)) = guess
                && w & m == want
            {
                mask |= 1 << n;
            } else if let Some(i) = self.classify(w)? {
                mask |= 1 << i;
            }
            opts = opts.get(4 + (w & 0x1f) as usize * 4..)?;
            n += 1;
        }
        (opts.is_empty() && mask & required == required).then_some(mask)
    }

    /// The data of the options in `opts` (a well-formed options area) whose spec keeps
    /// its data, each at its slot.
    #[inline(never)]
    fn option_data(
        &self,
        mut opts: &[u8],
        slots: &[(u8, u8); MAX_OPTION_SPECS],
    ) -> [u8; TUNNEL_OPTION_DATA_LEN] {
        let mut out = [0u8; TUNNEL_OPTION_DATA_LEN];
        // Bounded: each step consumes at least 4 of at most 252 bytes.
        while let Some(&w) = opts.first_chunk::<4>() {
            let w = u32::from_be_bytes(w);
            let len = (w & 0x1f) as usize * 4;
            let key = (w >> 8) & 0x00ff_ff7f;
            let keys = self.opt_keys.get(..self.specs).unwrap_or(&[]);
            if let Some(i) = keys.iter().position(|&k| k == key)
                && let Some(&(off, n)) = slots.get(i)
                && usize::from(n) == len
                && let (Some(dst), Some(src)) = (
                    out.get_mut(usize::from(off)..usize::from(off) + len),
                    opts.get(4..4 + len),
                )
            {
                dst.copy_from_slice(src);
            }
            let Some(rest) = opts.get(4 + len..) else {
                break;
            };
            opts = rest;
        }
        out
    }

    /// The spec an option header word names: `Some(Some(i))`, `Some(None)` for an unknown
    /// option that may be skipped, `None` where the general walk drops the packet (unknown
    /// critical option, known option of the wrong length).
    #[inline]
    fn classify(&self, w: u32) -> Option<Option<usize>> {
        let key = (w >> 8) & 0x00ff_ff7f;
        let keys = self.opt_keys.get(..self.specs).unwrap_or(&[]);
        match keys.iter().position(|&k| k == key) {
            Some(i) => {
                let want = self.opt_lens.get(i).copied().unwrap_or(NO_LEN);
                (want == ANY_LEN || u32::from(want) == w & 0x1f).then_some(Some(i))
            }
            None if w & 0x8000 != 0 => None,
            None => Some(None),
        }
    }
}

impl DecapStage {
    /// A stage with `config`.
    ///
    /// # Errors
    /// [`ConfigError::TooManyOptions`] beyond [`MAX_OPTION_SPECS`] option specs.
    pub fn new(config: DecapConfig) -> Result<Self, ConfigError> {
        if config.options.len() > MAX_OPTION_SPECS {
            return Err(ConfigError::TooManyOptions);
        }
        let required_mask = config
            .options
            .iter()
            .enumerate()
            .filter(|(_, o)| o.required)
            .fold(0u16, |m, (i, _)| m | (1 << i));
        // Fixed-length specs keep their data, packed in order, while it fits.
        let mut data_slots = [(0u8, 0u8); MAX_OPTION_SPECS];
        let mut at = 0usize;
        for (slot, spec) in data_slots.iter_mut().zip(&config.options) {
            if let Some(n) = spec.data_len
                && usize::from(n) <= TUNNEL_OPTION_DATA_LEN - at
                && n != 0
            {
                *slot = (at as u8, n);
                at += usize::from(n);
            }
        }
        let local_ips = config
            .local_ips
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(a) => {
                    let mut raw = [0u8; 16];
                    raw[..4].copy_from_slice(&a.octets());
                    (Family::V4, raw)
                }
                IpAddr::V6(a) => (Family::V6, a.octets()),
            })
            .collect();
        let fast = FastTables::new(&config);
        let canon_data = WordMap::canonical(&fast, &data_slots);
        let checks_local = !(config.local_ips.is_empty() && config.local_macs.is_empty());
        let has_options = !config.options.is_empty();
        Ok(Self {
            fast,
            canon_data,
            outer_parse: ParseConfig {
                verify_ipv4_checksum: config.verify_ipv4_checksum,
                ..config.parse
            },
            local_ips,
            data_slots,
            keeps_data: at != 0,
            config,
            required_mask,
            hosts: None,
            checks_local,
            has_options,
            plain: false,
            counters: StageCounters::default(),
        }
        .replanned())
    }

    /// `self` with [`DecapStage::plain`] recomputed (after any change to the source cache,
    /// the local addresses or the zone map).
    fn replanned(mut self) -> Self {
        self.plain = self.is_plain();
        self
    }

    /// See [`DecapStage::plain`].
    fn is_plain(&self) -> bool {
        self.hosts.is_none() && !self.checks_local && self.config.zones == ZoneMap::Identity
    }

    /// Also checks every inner source against `cache` (anti-spoofing): the outer source
    /// must be the host mapped for (VNI, inner source).
    pub fn with_source_check(mut self, cache: MappingCache) -> Self {
        self.hosts = Some(cache);
        self.replanned()
    }

    /// The settings.
    pub fn config(&self) -> &DecapConfig {
        &self.config
    }

    /// Replaces the VNI → zone map, keeping every other setting and the counters: a new
    /// configuration snapshot applied between batches (every packet of a batch sees one
    /// map).
    pub fn set_zones(&mut self, zones: ZoneMap) {
        self.config.zones = zones;
        self.plain = self.is_plain();
    }

    /// The anti-spoofing cache, for driving its queries and timers.
    pub fn source_cache_mut(&mut self) -> Option<&mut MappingCache> {
        self.hosts.as_mut()
    }

    /// The data of option spec `spec` (its index in [`DecapConfig::options`]) that this
    /// stage kept in `meta.option_data`: `None` if the option was absent or its data is not
    /// kept. Specs with a fixed `data_len` keep their data, packed in the order they were
    /// registered, while it fits in [`TUNNEL_OPTION_DATA_LEN`] bytes; the data stays
    /// readable whatever later stages push in front of the packet.
    pub fn option_data<'m>(&self, meta: &'m TunnelMeta, spec: usize) -> Option<&'m [u8]> {
        let (off, len) = *self.data_slots.get(spec)?;
        if len == 0 || meta.options & (1 << spec) == 0 {
            return None;
        }
        meta.option_data
            .get(usize::from(off)..usize::from(off) + usize::from(len))
    }

    /// Decapsulates one packet (what [`Stage::process`] does for each pending packet).
    ///
    /// # Errors
    /// The packet's drop reason.
    #[inline]
    pub fn decap<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
    ) -> Result<Verdict, DropReason> {
        let v = if self.plain {
            self.decap_as::<true, B>(now, pkt)
        } else {
            self.decap_as::<false, B>(now, pkt)
        };
        match v {
            Verdict::Drop(r) => Err(r),
            v => Ok(v),
        }
    }

    /// [`DecapStage::decap`] with `PLAIN` equal to [`DecapStage::plain`]: where it is
    /// true, the fast path is compiled without the source check, the local-address check
    /// and the zone map's lookup (measured by `benches/examples/decap_instructions.rs`:
    /// 16 of 382 instructions per packet).
    #[inline(always)]
    fn decap_as<const PLAIN: bool, B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
    ) -> Verdict {
        // One borrow of the frame for the fast plan and the tunnel metadata. The tunnel
        // header's part is compiled once per tunnel kind: each copy carries only its own
        // checks (and, for VXLAN, no options) and keeps fewer values live.
        let (data, meta) = pkt.data_and_meta_mut();
        let cut = match self.outer_fast::<PLAIN>(data, meta) {
            Some((TunnelKind::Geneve, outer)) => self.tunnel_fast::<PLAIN, true>(data, meta, outer),
            Some((TunnelKind::Vxlan, outer)) => self.tunnel_fast::<PLAIN, false>(data, meta, outer),
            None => None,
        };
        match cut {
            Some((cut, outer_src)) => self.strip::<PLAIN, B>(now, pkt, cut, outer_src),
            None => self.decap_general(now, pkt).into(),
        }
    }

    /// The fast path's tunnel step for a tunnel of kind `GENEVE` (or VXLAN): its plan,
    /// recorded in `meta`; what [`DecapStage::strip`] needs then. `None` where the fast path
    /// does not take the packet (nothing written).
    #[inline(always)]
    fn tunnel_fast<const PLAIN: bool, const GENEVE: bool>(
        &self,
        data: &[u8],
        meta: &mut Meta,
        outer: Outer,
    ) -> Option<(Cut, Option<IpAddr>)> {
        let kind = if GENEVE {
            TunnelKind::Geneve
        } else {
            TunnelKind::Vxlan
        };
        let plan = self.plan_tunnel_fast::<PLAIN>(data, kind, outer)?;
        let outer_src = self.record::<PLAIN>(data, meta, &plan);
        Some((plan.cut(), outer_src))
    }

    /// [`DecapStage::decap`] without the fast path: the reference it is tested against.
    /// Kept out of line so that the fast path, inlined into the batch loop, stays small.
    #[inline(never)]
    fn decap_general<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
    ) -> Result<Verdict, DropReason> {
        let (data, meta) = pkt.data_and_meta_mut();
        let Some((kind, outer)) = self.outer(data, meta)? else {
            return self.not_tunnel();
        };
        match self.plan(data, kind, outer)? {
            Step::Strip(plan) => {
                let outer_src = self.record::<false>(data, meta, &plan);
                let cut = plan.cut();
                match self.strip::<false, B>(now, pkt, cut, outer_src) {
                    Verdict::Drop(r) => Err(r),
                    v => Ok(v),
                }
            }
            Step::Done(v) => Ok(v),
        }
    }

    /// The outer headers, read by the parse walk into `meta`: the tunnel and where its
    /// underlay headers are, once every outer check passed; `None` for a packet that is not
    /// for a tunnel port.
    #[inline(always)]
    fn outer(
        &self,
        data: &[u8],
        meta: &mut Meta,
    ) -> Result<Option<(TunnelKind, Outer)>, DropReason> {
        let parsed = if meta.has(flags::NO_L2) {
            parse_l3(data, meta.ethertype, meta, &self.outer_parse)?
        } else {
            parse_frame(data, meta, &self.outer_parse)?
        };
        // A later fragment has no transport header (and no port to tell a tunnel by). One of
        // a UDP datagram to our underlay address may be a tunnel packet's tail, which cannot
        // be decapsulated without reassembly (its first fragment, to the tunnel port, is
        // dropped below): it goes the same way rather than on as plain traffic.
        if parsed == Parsed::Ip
            && meta.flow.proto == proto::UDP
            && meta.has(flags::LATER_FRAGMENT)
            && !self.local_ips.is_empty()
            && self.is_local_ip(meta)
        {
            return Err(DropReason::TunnelFragmented);
        }
        if parsed != Parsed::Ip || meta.flow.proto != proto::UDP || !meta.has(flags::L4_VALID) {
            return Ok(None);
        }
        let Some(kind) = self
            .fast
            .kind(meta.flow.dst_port)
            .or_else(|| self.kind(meta.flow.dst_port))
        else {
            return Ok(None);
        };
        if meta.has(flags::FRAGMENT) {
            return Err(DropReason::TunnelFragmented);
        }
        if meta.tunnel.depth >= 2 {
            return Err(DropReason::TunnelTooDeep);
        }
        let outer = Outer::from_parsed(data, meta).ok_or(DropReason::UdpTruncated)?;
        if !self.local_ips.is_empty() && !self.is_local_ip(meta) {
            return Err(DropReason::TunnelNotLocal);
        }
        if !self.config.local_macs.is_empty()
            && !meta.has(flags::NO_L2)
            && !data
                .first_chunk::<6>()
                .is_some_and(|mac| self.config.local_macs.contains(mac))
        {
            return Err(DropReason::TunnelNotLocal);
        }
        if outer.udp_checksum == 0 {
            if outer.v6 && !self.config.accept_zero_udp6_checksum {
                return Err(DropReason::TunnelBadUdpChecksum);
            }
        } else if self.config.verify_udp_checksum && !udp_ok(data, outer) {
            return Err(DropReason::TunnelBadUdpChecksum);
        }
        Ok(Some((kind, outer)))
    }

    /// Whether the outer destination address is one of [`DecapConfig::local_ips`].
    fn is_local_ip(&self, meta: &Meta) -> bool {
        self.local_ips
            .iter()
            .any(|&(f, a)| f == meta.flow.family() && a == *meta.flow.dst_raw())
    }

    /// The fast path's outer step: the outer in a shape the parse walk's shortcut takes
    /// ([`parse_fast`]: no VLAN tag or one, IPv4 without options or IPv6 without extension
    /// headers), UDP to one of the first [`FAST_PORTS`] configured ports, every outer check
    /// passed. Its tunnel step ([`DecapStage::plan_tunnel_fast`]) then takes a VXLAN or
    /// Geneve data packet whose options the stage accepts, with a known VNI. Both `Some`
    /// only where the general walk gives the same plan; `None` for everything else, valid
    /// or not.
    #[inline(always)]
    fn outer_fast<const PLAIN: bool>(
        &self,
        data: &[u8],
        meta: &Meta,
    ) -> Option<(TunnelKind, Outer)> {
        if meta.flags & flags::NO_L2 != 0 || meta.tunnel.depth >= 2 {
            return None;
        }
        let outer = parse_fast(data, &self.outer_parse, FastOuter)??;
        let kind = self.fast.kind(outer.dst_port)?;
        let v6 = outer.v6;
        if !PLAIN && self.checks_local {
            return None;
        }
        if outer.udp_checksum == 0 {
            if v6 && !self.config.accept_zero_udp6_checksum {
                return None;
            }
        } else if self.config.verify_udp_checksum && !udp_ok(data, outer) {
            return None;
        }
        Some((kind, outer))
    }

    /// The fast path over the tunnel header (see [`DecapStage::outer_fast`]).
    #[inline(always)]
    fn plan_tunnel_fast<'a, const PLAIN: bool>(
        &self,
        data: &'a [u8],
        kind: TunnelKind,
        outer: Outer,
    ) -> Option<Plan<'a>> {
        let at = outer.tunnel();
        let tun = data.get(at..at + outer.udp_payload_len)?;
        let &[b0, b1, p0, p1, v0, v1, v2, v3] = tun.first_chunk::<8>()?;
        let vni = u32::from_be_bytes([v0, v1, v2, v3]) >> 8;
        let mut canonical = None;
        let (hdr_len, inner_et, options) = match kind {
            TunnelKind::Vxlan => {
                if b0 & crate::vxlan::FLAG_I == 0 {
                    return None;
                }
                (crate::VXLAN_HEADER_LEN, ethertype::TEB, 0)
            }
            TunnelKind::Geneve => {
                // A payload we carry (compared as read, without swapping the bytes).
                let raw = u16::from_ne_bytes([p0, p1]);
                let is = |et: u16| raw == u16::from_ne_bytes(et.to_be_bytes());
                if !(is(ethertype::TEB) || is(ethertype::IPV4) || is(ethertype::IPV6)) {
                    return None;
                }
                let protocol = u16::from_be_bytes([p0, p1]);
                let (olen, mask) = match self.fast.canonical(tun) {
                    Some(c) => {
                        canonical = tun.first_chunk::<CANON_LEN>();
                        c
                    }
                    None => {
                        // Version 0, not a control message.
                        if b0 >> 6 != 0 || b1 & 0x80 != 0 {
                            return None;
                        }
                        let olen = usize::from(b0 & 0x3f) * 4;
                        let opts =
                            tun.get(crate::GENEVE_HEADER_LEN..crate::GENEVE_HEADER_LEN + olen)?;
                        (olen, self.fast.walk(opts, self.required_mask)?)
                    }
                };
                (crate::GENEVE_HEADER_LEN + olen, protocol, mask)
            }
        };
        let zone = if PLAIN {
            ZoneId(vni)
        } else {
            self.config.zones.zone(vni)?
        };
        Some(Plan {
            outer,
            kind,
            vni,
            zone,
            hdr_len,
            inner_et,
            options,
            canonical,
        })
    }

    /// The general walk over the tunnel header: every shape, every drop reason.
    #[inline]
    fn plan<'a>(
        &self,
        data: &'a [u8],
        kind: TunnelKind,
        outer: Outer,
    ) -> Result<Step<'a>, DropReason> {
        let tun = data.get(outer.tunnel()..).unwrap_or(&[]);
        let tun = tun.get(..outer.udp_payload_len).unwrap_or(tun);
        let (vni, hdr_len, inner_et, options) = match kind {
            TunnelKind::Vxlan => {
                let v = VxlanPacket::new_checked(tun)?;
                (v.header().vni(), crate::VXLAN_HEADER_LEN, ethertype::TEB, 0)
            }
            TunnelKind::Geneve => {
                let g = GenevePacket::new_checked(tun)?;
                let checked = self.check_options(&g);
                if g.header().oam() {
                    // OAM goes to the control path once its options are well formed: the
                    // options a profile requires are for data traffic (an AWS GWLB health
                    // check carries none of them).
                    return match checked {
                        Ok(_) | Err(TunnelError::MissingOption) => {
                            Ok(Step::Done(Verdict::ToControl))
                        }
                        Err(e) => Err(e.into()),
                    };
                }
                let mask = checked?;
                let p = g.header().protocol.get();
                if !matches!(p, ethertype::TEB | ethertype::IPV4 | ethertype::IPV6) {
                    return Err(DropReason::TunnelBadProtocol);
                }
                (g.header().vni(), g.header_len(), p, mask)
            }
        };
        let zone = self
            .config
            .zones
            .zone(vni)
            .ok_or(DropReason::TunnelUnknownVni)?;
        Ok(Step::Strip(Plan {
            outer,
            kind,
            vni,
            zone,
            hdr_len,
            inner_et,
            options,
            canonical: None,
        }))
    }

    /// Fills `meta.tunnel` from the headers `plan` describes in `data` (the frame, still
    /// whole); returns the underlay source when the inner source is to be checked.
    #[inline(always)]
    fn record<const PLAIN: bool>(
        &self,
        data: &[u8],
        meta: &mut Meta,
        plan: &Plan<'_>,
    ) -> Option<IpAddr> {
        let outer = &plan.outer;
        let strip = outer.tunnel() + plan.hdr_len;
        let outer_src =
            (!PLAIN && self.hosts.is_some()).then(|| ip_from_raw(&outer.src(data), outer.v6));
        let t = &mut meta.tunnel;
        if t.depth == 0 {
            t.outer_kind = Some(plan.kind);
            t.outer_vni = plan.vni;
            t.outer_len = strip as u16;
            t.outer_l3 = outer.l3 as u16;
            t.outer_udp = outer.udp as u16;
            t.outer_src_port = outer.src_port;
            t.outer_family = if outer.v6 { Family::V6 } else { Family::V4 };
            outer.addrs_into(data, &mut t.outer_src, &mut t.outer_dst);
            if !self.has_options {
                t.options = 0;
                t.option_data = [0; TUNNEL_OPTION_DATA_LEN];
            }
        } else {
            t.outer_len = t.outer_len.saturating_add(strip as u16);
        }
        t.depth += 1;
        t.kind = Some(plan.kind);
        t.vni = plan.vni;
        if self.has_options {
            t.options = plan.options;
            if !self.keeps_data || plan.options == 0 {
                t.option_data = [0; TUNNEL_OPTION_DATA_LEN];
            } else if let Some(h) = plan.canonical {
                // The usual layout: each word from where it always is.
                match &self.canon_data.lanes {
                    Some(lanes) => WordMap::fill_lanes(lanes, h, &mut t.option_data),
                    None => self.canon_data.fill(h, &mut t.option_data),
                }
            } else {
                let tun = data.get(outer.tunnel()..).unwrap_or(&[]);
                let opts = tun
                    .get(crate::GENEVE_HEADER_LEN..plan.hdr_len)
                    .unwrap_or(&[]);
                t.option_data = self.fast.option_data(opts, &self.data_slots);
            }
        }
        outer_src
    }

    /// Pulls the outer headers off (`meta.tunnel` already filled by
    /// [`DecapStage::record`]), sets `meta.zone`, parses the inner frame and checks its
    /// source.
    #[inline(always)]
    fn strip<const PLAIN: bool, B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        pkt: &mut Packet<B>,
        cut: Cut,
        outer_src: Option<IpAddr>,
    ) -> Verdict {
        // The inner frame ends with the UDP payload (what follows is padding). Its offsets
        // in `meta` are rewritten by the inner parse below.
        let end = pkt.len().min(cut.end);
        let Ok((inner, meta)) = pkt.narrow(cut.start, end) else {
            return Verdict::Drop(DropReason::TunnelTruncated);
        };
        meta.zone = cut.zone;
        // The outer's VLAN tags are not the inner frame's (the inner parse sets only the
        // tags it finds).
        meta.vlan = [0; 2];
        let parsed = if cut.inner_et == ethertype::TEB {
            parse_frame(inner, meta, &self.config.parse)
        } else {
            parse_l3(inner, cut.inner_et, meta, &self.config.parse)
        };
        let parsed = match parsed {
            Ok(p) => p,
            Err(r) => return Verdict::Drop(r),
        };
        // A non-IP inner frame (ARP, LLDP ...) meets the inner parse settings' `non_ip`, as
        // it would at a parse stage.
        if parsed == Parsed::NonIp {
            return match self.config.parse.non_ip {
                NonIpAction::ToControl => Verdict::ToControl,
                NonIpAction::Drop => Verdict::Drop(DropReason::NonIp),
            };
        }
        if !PLAIN && let (Some(cache), Some(outer_src)) = (self.hosts.as_mut(), outer_src) {
            return check_source(
                cache,
                now,
                outer_src,
                cut.vni,
                meta,
                parsed,
                self.config.unknown_source,
            )
            .into();
        }
        Verdict::Pass
    }

    /// The fast path's plan for `frame`, if it takes one.
    #[cfg(test)]
    fn fast_plan_of<'a>(&self, frame: &'a [u8]) -> Option<Plan<'a>> {
        let (kind, outer) = self.outer_fast::<false>(frame, &Meta::default())?;
        self.plan_tunnel_fast::<false>(frame, kind, outer)
    }

    #[inline]
    fn kind(&self, port: u16) -> Option<TunnelKind> {
        self.config
            .ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, k)| *k)
    }

    #[inline]
    fn not_tunnel(&self) -> Result<Verdict, DropReason> {
        match self.config.non_tunnel {
            NonTunnel::Pass => Ok(Verdict::Pass),
            NonTunnel::Drop => Err(DropReason::NotTunnel),
        }
    }

    /// Walks the options once: unknown critical → drop; registered → bit; required
    /// missing or of the wrong length → drop.
    #[inline]
    fn check_options(&self, g: &GenevePacket<&[u8]>) -> Result<u16, TunnelError> {
        let mut mask = 0u16;
        for o in g.options() {
            let ty = o.ty & !crate::geneve::CRITICAL;
            match self
                .config
                .options
                .iter()
                .position(|s| s.class == o.class && s.ty == ty)
            {
                Some(i) => {
                    let spec = self.config.options.get(i);
                    if let Some(want) = spec.and_then(|s| s.data_len)
                        && usize::from(want) != o.data.len()
                    {
                        return Err(TunnelError::MissingOption);
                    }
                    mask |= 1 << i;
                }
                None if o.is_critical() => return Err(TunnelError::CriticalOption),
                None => {}
            }
        }
        if mask & self.required_mask != self.required_mask {
            return Err(TunnelError::MissingOption);
        }
        Ok(mask)
    }
}

/// The outer headers from the parse walk's fixed-offset shortcut: UDP only.
struct FastOuter;

impl FastFrame for FastOuter {
    type Out = Option<Outer>;

    #[inline(always)]
    fn ipv4(self, l3: usize, _: Option<u16>, _: &[u8; 20], l4: FastL4) -> Option<Outer> {
        (l4.proto == proto::UDP).then(|| Outer::from_fast(l3, 20, false, &l4))
    }

    #[inline(always)]
    fn ipv6(
        self,
        l3: usize,
        _: Option<u16>,
        _: &nf_core::wire::ipv6::Ipv6Header,
        l4: FastL4,
    ) -> Option<Outer> {
        (l4.proto == proto::UDP).then(|| Outer::from_fast(l3, 40, true, &l4))
    }
}

/// [`udp_checksum_ok`] out of line, taking `outer` by value: the fast path then keeps the
/// outer headers' fields in registers instead of building an `Outer` in memory for a call
/// most packets do not make.
#[inline(never)]
fn udp_ok(data: &[u8], outer: Outer) -> bool {
    udp_checksum_ok(data, &outer)
}

#[inline]
fn check_source(
    cache: &mut MappingCache,
    now: Instant,
    outer_src: IpAddr,
    vni: u32,
    meta: &Meta,
    parsed: Parsed,
    unknown: UnknownSource,
) -> Result<(), DropReason> {
    if parsed != Parsed::Ip || !meta.has(flags::L3_VALID) {
        // Nothing to validate an address against (ARP and the like): let the
        // control path judge it.
        return Ok(());
    }
    let inner = meta.flow.src_ip();
    match cache.check_source(now, vni, inner, outer_src) {
        SourceCheck::Valid => Ok(()),
        SourceCheck::Spoofed => Err(DropReason::TunnelSpoofed),
        SourceCheck::Unknown if unknown == UnknownSource::Pass => Ok(()),
        SourceCheck::Unknown => Err(DropReason::TunnelSpoofed),
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Stage<B> for DecapStage {
    #[inline]
    fn process(&mut self, now: Instant, batch: &mut Batch<B>) {
        // The loop compiled once per value of `plain`, chosen per batch.
        if self.plain {
            self.each_pending(
                batch,
                #[inline(always)]
                |s, _, pkt| s.decap_as::<true, B>(now, pkt),
            );
        } else {
            self.each_pending(
                batch,
                #[inline(always)]
                |s, _, pkt| s.decap_as::<false, B>(now, pkt),
            );
        }
    }
}

impl StageLoop for DecapStage {
    fn counters_mut(&mut self) -> &mut StageCounters {
        &mut self.counters
    }
}

impl StageControl for DecapStage {
    fn name(&self) -> &'static str {
        "tunnel_decap"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }

    /// The common counters, then the anti-spoofing cache's (`mapping_*`) when there is one.
    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.counters.visit(self.name(), f);
        if let Some(cache) = &self.hosts {
            cache.visit_counters(self.name(), f);
        }
    }

    /// The anti-spoofing cache's revalidation timer.
    fn poll_timeout(&self) -> Option<Instant> {
        self.hosts.as_ref().and_then(MappingCache::poll_timeout)
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.hosts
            .as_mut()
            .map_or(0, |c| c.handle_timeout(now, budget))
    }
}

/// The outer headers a decapsulation stage stripped from `pkt`, still in its headroom
/// (`None` if it was not decapsulated or the headroom no longer holds them).
pub fn stripped_headers<B: AsRef<[u8]>>(pkt: &Packet<B>) -> Option<&[u8]> {
    let n = usize::from(pkt.meta.tunnel.outer_len);
    if n == 0 {
        return None;
    }
    let h = pkt.headroom();
    pkt.buffer().as_ref().get(h.checked_sub(n)?..h)
}

/// The Geneve header (with its options) a decapsulation stage stripped from `pkt`, while
/// nothing was pushed in front of the packet since (the outermost tunnel's, after nested
/// decapsulation). The registered options' data outlives that:
/// [`DecapStage::option_data`].
pub fn received_geneve<B: AsRef<[u8]>>(pkt: &Packet<B>) -> Option<GenevePacket<&[u8]>> {
    let t = &pkt.meta.tunnel;
    if t.outer_kind != Some(TunnelKind::Geneve) {
        return None;
    }
    let hdrs = stripped_headers(pkt)?;
    let at = usize::from(t.outer_udp) + 8;
    GenevePacket::new_checked(hdrs.get(at..)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encap::{EncapConfig, EncapStage, Payload, Underlay};
    use crate::geneve::OptionsBuilder;
    use crate::profile::{gcp, gwlb};
    use crate::zones::VniTable;
    use alloc::vec;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use proptest::prelude::*;

    fn underlay(v6: bool) -> Underlay {
        let (src, dst) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            )
        };
        Underlay {
            src_mac: [2, 0, 0, 0, 1, 1],
            dst_mac: [2, 0, 0, 0, 2, 2],
            src,
            dst,
        }
    }

    /// Ethernet / IPv4 / UDP 10.0.0.1:1000 -> 10.0.0.2:53 with `payload` bytes of data.
    fn inner_frame(payload: usize) -> Vec<u8> {
        let mut f = vec![
            0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64,
            17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0x03, 0xe8, 0, 53, 0, 0, 0, 0,
        ];
        f[16..18].copy_from_slice(&((28 + payload) as u16).to_be_bytes());
        let c = nf_core::checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    /// `inner` encapsulated by our own encap stage.
    fn encapsulated(cfg: EncapConfig, inner: &[u8]) -> Vec<u8> {
        let mut e = EncapStage::new(cfg).unwrap();
        let mut p = Packet::new(vec![0u8; 512 + inner.len()], 512, inner.len()).unwrap();
        p.data_mut().copy_from_slice(inner);
        nf_core::parse_frame(inner, &mut p.meta, &ParseConfig::default()).unwrap();
        e.encap(Instant::ZERO, &mut p).unwrap();
        p.data().to_vec()
    }

    /// Option TLVs drawn from a small pool, so that specs drawn from the same pool match.
    fn option() -> impl Strategy<Value = (u16, u8, u8)> {
        (
            prop_oneof![Just(gwlb::CLASS), Just(gcp::CLASS), any::<u16>()],
            prop_oneof![1u8..4, Just(0x81u8), Just(0x83u8), any::<u8>()],
            prop_oneof![Just(0u8), Just(1), Just(2), 0u8..6],
        )
    }

    fn options(list: &[(u16, u8, u8)]) -> OptionsBuilder {
        let mut b = OptionsBuilder::new();
        for &(class, ty, words) in list {
            let data = [0x5au8; 20];
            let _ = b.push(class, ty, &data[..usize::from(words) * 4]);
        }
        b
    }

    fn spec() -> impl Strategy<Value = OptionSpec> {
        (
            prop_oneof![Just(gwlb::CLASS), Just(gcp::CLASS), any::<u16>()],
            prop_oneof![1u8..4, Just(0x81u8), any::<u8>()],
            prop_oneof![
                Just(None),
                Just(Some(0u8)),
                Just(Some(4)),
                Just(Some(8)),
                Just(Some(6)),
                Just(Some(252)),
                any::<Option<u8>>()
            ],
            any::<bool>(),
        )
            .prop_map(|(class, ty, data_len, required)| OptionSpec {
                class,
                ty,
                data_len,
                required,
            })
    }

    fn decap_config() -> impl Strategy<Value = DecapConfig> {
        let ports = proptest::collection::vec(
            (
                prop_oneof![
                    Just(GENEVE_PORT),
                    Just(VXLAN_PORT),
                    Just(8472u16),
                    any::<u16>()
                ],
                prop_oneof![Just(TunnelKind::Geneve), Just(TunnelKind::Vxlan)],
            ),
            0..7,
        );
        let profile = prop_oneof![
            Just(DecapConfig::default()),
            Just(gwlb::decap_config()),
            Just(gcp::decap_config()),
        ];
        (
            profile,
            // Mostly the profiles' own ports, specs and zones, so that many frames get
            // through and the fast path is exercised as often as the general walk.
            proptest::option::weighted(0.25, ports),
            proptest::option::weighted(0.3, proptest::collection::vec(spec(), 0..6)),
            any::<[bool; 5]>(),
            proptest::option::weighted(0.2, proptest::collection::vec(0u32..8, 0..4)),
            // Now and then the node's own addresses: the underlay's destination or not.
            proptest::option::weighted(0.15, (any::<bool>(), any::<bool>())),
        )
            .prop_map(|(mut c, ports, specs, flags, vnis, local)| {
                if let Some((ours, mac)) = local {
                    let last = if ours { 2 } else { 9 };
                    c.local_ips = vec![
                        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)),
                        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last.into())),
                    ];
                    if mac {
                        c.local_macs = vec![[2, 0, 0, 0, 2, last]];
                    }
                }
                if let Some(p) = ports {
                    c.ports = p;
                }
                if let Some(s) = specs {
                    c.options = s;
                }
                c.verify_ipv4_checksum = flags[0];
                c.verify_udp_checksum = flags[1];
                c.accept_zero_udp6_checksum = flags[2];
                c.non_tunnel = if flags[3] {
                    NonTunnel::Drop
                } else {
                    NonTunnel::Pass
                };
                c.parse.verify_ipv4_checksum = flags[4];
                if let Some(v) = vnis {
                    let entries: Vec<_> = v.iter().map(|&v| (v, ZoneId(v + 100))).collect();
                    c.zones = ZoneMap::Table(VniTable::new(&entries));
                }
                c
            })
    }

    /// A frame a tunnel peer could send: Geneve (options from the pool) or VXLAN, IPv4 or
    /// IPv6 outer, with or without a UDP checksum.
    fn tunnel_frame() -> impl Strategy<Value = Vec<u8>> {
        let gwlb_opts = [
            (gwlb::CLASS, gwlb::ENDPOINT_ID, 2),
            (gwlb::CLASS, gwlb::ATTACHMENT_ID, 2),
            (gwlb::CLASS, gwlb::FLOW_COOKIE, 1),
        ];
        let gcp_opts = [
            (gcp::CLASS, gcp::VNID, 1),
            (gcp::CLASS, gcp::ENDPOINT, 4),
            (gcp::CLASS, gcp::PROFILE, 2),
        ];
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![0u32..8, any::<u32>().prop_map(|v| v & 0x00ff_ffff)],
            prop_oneof![
                Just(gwlb_opts.to_vec()),
                Just(gcp_opts.to_vec()),
                proptest::collection::vec(option(), 0..5)
            ],
            // Usually the tunnel's own port.
            proptest::option::weighted(0.1, any::<u16>()),
            0usize..40,
            // Now and then one or two VLAN tags in front of the outer IP header.
            proptest::option::weighted(0.25, (any::<bool>(), any::<u16>(), any::<bool>())),
        )
            .prop_map(
                |(vxlan, v6, csum, ip_payload, vni, opts, port, payload, tags)| {
                    let u = underlay(v6);
                    let mut cfg = if vxlan {
                        EncapConfig::vxlan(vni, u)
                    } else {
                        let mut c = EncapConfig::geneve(options(&opts), vni, u);
                        if ip_payload {
                            c.payload = Payload::Ip;
                        }
                        c
                    };
                    cfg.udp_checksum_v4 = csum;
                    if let Some(p) = port {
                        cfg.dst_port = p;
                    }
                    let mut f = encapsulated(cfg, &inner_frame(payload));
                    if let Some((qinq, tci, two)) = tags {
                        let tpid: u16 = if qinq { 0x88a8 } else { 0x8100 };
                        let mut tag = tpid.to_be_bytes().to_vec();
                        tag.extend_from_slice(&tci.to_be_bytes());
                        if two {
                            tag.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
                        }
                        f.splice(12..12, tag);
                    }
                    f
                },
            )
    }

    /// Frames from [`tunnel_frame`] with a few bytes changed (mostly in the headers), a
    /// length field or the Geneve option length nudged by a little, cut short or padded.
    fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
        // IPv4 total length, IPv6 payload length, UDP length (over IPv4 / IPv6), Geneve
        // options length and first option length (over IPv4).
        let fields = prop_oneof![
            Just(16usize),
            Just(18),
            Just(38),
            Just(58),
            Just(41),
            Just(52)
        ];
        (
            tunnel_frame(),
            proptest::collection::vec((0usize..140, any::<u8>()), 0..4),
            proptest::option::of((fields, -3i16..=3)),
            prop_oneof![
                Just(None),
                (0usize..200).prop_map(Some),
                (0usize..4).prop_map(|n| Some(usize::MAX - n))
            ],
            proptest::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(mut f, edits, nudge, cut, pad)| {
                for (at, v) in edits {
                    if let Some(b) = f.get_mut(at) {
                        *b = v;
                    }
                }
                if let Some((at, d)) = nudge
                    && let Some(w) = f.get_mut(at..at + 2)
                {
                    let v = u16::from_be_bytes([w[0], w[1]]).wrapping_add_signed(d);
                    w.copy_from_slice(&v.to_be_bytes());
                }
                match cut {
                    // Cut 0 to 3 bytes off the end.
                    Some(c) if c > usize::MAX - 4 => {
                        f.truncate(f.len().saturating_sub(usize::MAX - c))
                    }
                    Some(c) => f.truncate(c),
                    None => {}
                }
                f.extend(pad);
                f
            })
    }

    type Outcome = (Result<Verdict, DropReason>, Vec<u8>, Meta, usize);

    /// Decapsulates `frame` with the fast path first and with the general walk alone.
    fn both(config: &DecapConfig, frame: &[u8]) -> (Outcome, Outcome) {
        let run = |general: bool| {
            let mut stage = DecapStage::new(config.clone()).unwrap();
            let mut p = Packet::new(vec![0u8; 16 + frame.len()], 16, frame.len()).unwrap();
            p.data_mut().copy_from_slice(frame);
            let r = if general {
                stage.decap_general(Instant::ZERO, &mut p)
            } else {
                stage.decap(Instant::ZERO, &mut p)
            };
            // What the metadata does not promise: the flow key without `L3_VALID`, the
            // parse fields of a dropped packet (the general walk read the outer into them,
            // the fast path did not).
            let mut m = p.meta;
            if !m.has(flags::L3_VALID) {
                m.flow = nf_core::FlowKey::default();
            }
            if r.is_err() {
                let mut d = Meta::default();
                (d.zone, d.tunnel) = (m.zone, m.tunnel);
                m = d;
            }
            (r, p.data().to_vec(), m, p.headroom())
        };
        (run(false), run(true))
    }

    /// A non-IP inner frame (ARP) follows the inner parse settings' `non_ip`: to the control
    /// path by default, dropped with `non_ip` when so configured; never passed as data.
    #[test]
    fn non_ip_inner_frames_follow_the_parse_setting() {
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0u8; 20]);
        let vxlan = encapsulated(EncapConfig::vxlan(7, underlay(false)), &arp);
        let mut drop = DecapConfig::default();
        drop.parse.non_ip = NonIpAction::Drop;
        for (cfg, want) in [
            (DecapConfig::default(), Verdict::ToControl),
            (drop, Verdict::Drop(DropReason::NonIp)),
        ] {
            let mut stage = DecapStage::new(cfg.clone()).unwrap();
            let mut batch = Batch::new();
            batch
                .push(Packet::new(vxlan.clone(), 0, vxlan.len()).unwrap())
                .unwrap();
            stage.process(Instant::ZERO, &mut batch);
            assert_eq!(batch.packets()[0].meta.verdict, want);
            let (a, b) = both(&cfg, &vxlan);
            assert_eq!(a, b, "fast path and general walk agree");
        }
    }

    /// A later fragment of a UDP datagram to a local underlay address cannot be told from a
    /// tunnel packet's tail: dropped as fragmented, never passed on as plain traffic. To
    /// another address, of TCP, or without local addresses configured, it is not a tunnel
    /// packet.
    #[test]
    fn later_udp_fragments_to_a_local_address_are_dropped() {
        let later = |proto: u8, dst: [u8; 4]| {
            let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
            let mut ip = [
                0x45, 0, 0, 44, 0x12, 0x34, 0, 3, 64, proto, 0, 0, 192, 0, 2, 1, 0, 0, 0, 0,
            ];
            ip[16..].copy_from_slice(&dst);
            let c = nf_core::checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&[0; 24]);
            f
        };
        let local = DecapConfig {
            local_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))],
            ..DecapConfig::default()
        };
        let to_us = [192, 0, 2, 2];
        for (cfg, frame, want) in [
            (&local, later(17, to_us), Err(DropReason::TunnelFragmented)),
            (&local, later(17, [192, 0, 2, 9]), Ok(Verdict::Pass)),
            (&local, later(6, to_us), Ok(Verdict::Pass)),
            (&DecapConfig::default(), later(17, to_us), Ok(Verdict::Pass)),
        ] {
            let mut stage = DecapStage::new(cfg.clone()).unwrap();
            let mut pkt = Packet::new(frame.clone(), 0, frame.len()).unwrap();
            assert_eq!(stage.decap(Instant::ZERO, &mut pkt), want);
            assert!(pkt.meta.has(flags::LATER_FRAGMENT));
        }
    }

    /// The per-packet path compiled without the source check, the local-address check and
    /// the zone lookup is taken exactly while the stage has none of them, whatever changes.
    #[test]
    fn the_plain_path_follows_every_change_of_the_config() {
        let mut stage = DecapStage::new(DecapConfig::default()).unwrap();
        assert!(stage.plain);
        stage.set_zones(ZoneMap::Table(VniTable::new(&[(100, ZoneId(7))])));
        assert!(!stage.plain);
        stage.set_zones(ZoneMap::Identity);
        assert!(stage.plain);
        let cache = crate::MappingCache::new(crate::MappingConfig::new(64, [1; 16])).unwrap();
        assert!(!stage.with_source_check(cache).plain);
        let local = DecapConfig {
            local_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))],
            ..DecapConfig::default()
        };
        assert!(!DecapStage::new(local).unwrap().plain);
        let mac = DecapConfig {
            local_macs: vec![[2, 0, 0, 0, 2, 2]],
            ..DecapConfig::default()
        };
        assert!(!DecapStage::new(mac).unwrap().plain);
    }

    #[test]
    fn set_zones_applies_to_the_next_batch_and_keeps_the_counters() {
        let frame = encapsulated(EncapConfig::vxlan(42, underlay(false)), &inner_frame(8));
        let table = |vni: u32| ZoneMap::Table(crate::VniTable::new(&[(vni, ZoneId(vni))]));
        let cfg = DecapConfig {
            zones: table(42),
            ..DecapConfig::default()
        };
        let mut stage = DecapStage::new(cfg).unwrap();
        let run = |stage: &mut DecapStage| {
            let mut batch = Batch::new();
            batch
                .push(Packet::new(frame.clone(), 0, frame.len()).unwrap())
                .unwrap();
            stage.process(Instant::ZERO, &mut batch);
            batch.packets()[0].meta.verdict
        };
        assert_eq!(run(&mut stage), Verdict::Pass);
        stage.set_zones(table(43));
        assert_eq!(run(&mut stage), Verdict::Drop(DropReason::TunnelUnknownVni));
        stage.set_zones(table(42));
        assert_eq!(run(&mut stage), Verdict::Pass);
        let c = StageControl::counters(&stage);
        assert_eq!((c.packets, c.drops.total()), (3, 1));
    }

    #[test]
    fn the_fast_path_takes_the_common_shapes() {
        let gwlb_opts = gwlb::GwlbMetadata {
            endpoint_id: 1,
            attachment_id: 2,
            flow_cookie: 3,
        }
        .options();
        let inner = inner_frame(20);
        let geneve = encapsulated(EncapConfig::geneve(gwlb_opts, 7, underlay(false)), &inner);
        let vxlan = encapsulated(EncapConfig::vxlan(7, underlay(false)), &inner);
        for (cfg, frame) in [
            (gwlb::decap_config(), &geneve),
            (DecapConfig::default(), &geneve),
            (gcp::decap_config(), &geneve),
            (DecapConfig::default(), &vxlan),
        ] {
            let s = DecapStage::new(cfg.clone()).unwrap();
            assert!(s.fast_plan_of(frame).is_some(), "{cfg:?}");
            let (a, b) = both(&cfg, frame);
            assert_eq!(a, b);
            assert_eq!(a.0, Ok(Verdict::Pass));
        }
        let gwlb = DecapStage::new(gwlb::decap_config()).unwrap();
        assert_eq!(gwlb.fast.canon.1, 0b111);
        // Its option data (8, 8 and 4 bytes) is copied by lanes.
        assert!(gwlb.canon_data.lanes.is_some());
        // Options in another order: not the precomputed layout, still the fast path.
        let mut swapped = OptionsBuilder::new();
        swapped
            .push(gwlb::CLASS, gwlb::FLOW_COOKIE, &[1; 4])
            .unwrap();
        swapped
            .push(gwlb::CLASS, gwlb::ENDPOINT_ID, &[2; 8])
            .unwrap();
        swapped
            .push(gwlb::CLASS, gwlb::ATTACHMENT_ID, &[3; 8])
            .unwrap();
        let f = encapsulated(EncapConfig::geneve(swapped, 7, underlay(false)), &inner);
        assert_eq!(gwlb.fast_plan_of(&f).map(|p| p.options), Some(0b111));
        // An IPv6 outer takes the fast path too (the outer is the parse walk's).
        let v6 = encapsulated(EncapConfig::vxlan(7, underlay(true)), &inner);
        assert!(
            DecapStage::new(DecapConfig::default())
                .unwrap()
                .fast_plan_of(&v6)
                .is_some()
        );
    }

    /// The tunnel metadata names what the frames carry: both kinds over both underlay
    /// families, then a VXLAN tunnel inside a Geneve one stripped by two stages (the outer
    /// tunnel's fields stay the first one's), on the fast path and the general walk alike.
    #[test]
    fn tunnel_metadata_names_the_kind_the_vnis_and_the_underlay() {
        let inner = inner_frame(20);
        let raw = |a: IpAddr| match a {
            IpAddr::V4(a) => u128::from(u32::from_le_bytes(a.octets())).to_le_bytes(),
            IpAddr::V6(a) => a.octets(),
        };
        let decap = |stage: &mut DecapStage, p: &mut Packet<Vec<u8>>, general: bool| {
            if general {
                stage.decap_general(Instant::ZERO, p)
            } else {
                stage.decap(Instant::ZERO, p)
            }
        };
        for general in [false, true] {
            for v6 in [false, true] {
                let u = underlay(v6);
                let (family, l3_len) = if v6 {
                    (Family::V6, 40)
                } else {
                    (Family::V4, 20)
                };
                let mut opts = OptionsBuilder::new();
                opts.push(0x0108, 1, &[9; 4]).unwrap();
                for (kind, cfg, hdr) in [
                    (TunnelKind::Geneve, EncapConfig::geneve(opts, 7, u), 16),
                    (TunnelKind::Vxlan, EncapConfig::vxlan(7, u), 8),
                ] {
                    let frame = encapsulated(cfg, &inner);
                    let mut p = Packet::new(vec![0u8; 64 + frame.len()], 64, frame.len()).unwrap();
                    p.data_mut().copy_from_slice(&frame);
                    let mut stage = DecapStage::new(DecapConfig::default()).unwrap();
                    assert_eq!(decap(&mut stage, &mut p, general), Ok(Verdict::Pass));
                    let t = &p.meta.tunnel;
                    let case = (kind, v6, general);
                    assert_eq!((t.kind, t.outer_kind), (Some(kind), Some(kind)), "{case:?}");
                    assert_eq!((t.depth, t.vni, t.outer_vni), (1, 7, 7), "{case:?}");
                    assert_eq!(t.outer_family, family, "{case:?}");
                    assert_eq!(
                        (t.outer_src, t.outer_dst),
                        (raw(u.src), raw(u.dst)),
                        "{case:?}"
                    );
                    assert_eq!(usize::from(t.outer_l3), 14, "{case:?}");
                    let udp = 14 + l3_len;
                    assert_eq!(usize::from(t.outer_udp), udp, "{case:?}");
                    assert_eq!(usize::from(t.outer_len), udp + 8 + hdr, "{case:?}");
                    let sport = u16::from_be_bytes([frame[udp], frame[udp + 1]]);
                    assert_eq!(t.outer_src_port, sport, "{case:?}");
                    assert!(t.is_decapsulated());
                    assert_eq!(p.data(), &inner[..], "{case:?}");
                }
            }

            // VXLAN (VNI 62, IPv4 underlay) inside Geneve (VNI 61, IPv6 underlay).
            let vxlan = encapsulated(EncapConfig::vxlan(62, underlay(false)), &inner);
            let frame = encapsulated(
                EncapConfig::geneve(OptionsBuilder::new(), 61, underlay(true)),
                &vxlan,
            );
            let mut p = Packet::new(vec![0u8; 64 + frame.len()], 64, frame.len()).unwrap();
            p.data_mut().copy_from_slice(&frame);
            let mut first = DecapStage::new(DecapConfig::default()).unwrap();
            let mut second = DecapStage::new(DecapConfig::default()).unwrap();
            assert_eq!(decap(&mut first, &mut p, general), Ok(Verdict::Pass));
            assert_eq!(decap(&mut second, &mut p, general), Ok(Verdict::Pass));
            let t = &p.meta.tunnel;
            assert_eq!(t.depth, 2);
            assert_eq!(t.outer_kind, Some(TunnelKind::Geneve));
            assert_eq!(t.kind, Some(TunnelKind::Vxlan));
            assert_eq!((t.outer_vni, t.vni), (61, 62));
            assert_eq!(t.outer_family, Family::V6);
            let u = underlay(true);
            assert_eq!((t.outer_src, t.outer_dst), (raw(u.src), raw(u.dst)));
            assert_eq!(usize::from(t.outer_len), frame.len() - inner.len());
            assert_eq!(p.data(), &inner[..]);
        }
    }

    #[test]
    fn fast_path_equals_general_walk_near_every_boundary() {
        // Every 16-bit field of the headers nudged by ±1 and ±2 (lengths one off, checksums,
        // ports, option lengths), set to a small length, or with one bit flipped (flags); with
        // a byte of padding, without, or one byte cut.
        let gwlb_opts = gwlb::GwlbMetadata {
            endpoint_id: 1,
            attachment_id: 2,
            flow_cookie: 3,
        }
        .options();
        let inner = inner_frame(6);
        let mut ip_payload = EncapConfig::geneve(gwlb_opts, 7, underlay(false));
        ip_payload.payload = Payload::Ip;
        let mut csum = EncapConfig::vxlan(7, underlay(false));
        csum.udp_checksum_v4 = true;
        let frames = [
            encapsulated(EncapConfig::geneve(gwlb_opts, 7, underlay(false)), &inner),
            encapsulated(ip_payload, &inner),
            encapsulated(EncapConfig::vxlan(7, underlay(false)), &inner),
            encapsulated(csum, &inner),
        ];
        let mut unchecked = gwlb::decap_config();
        unchecked.verify_ipv4_checksum = false;
        unchecked.verify_udp_checksum = false;
        unchecked.ports.push((VXLAN_PORT, TunnelKind::Vxlan));
        let configs = [DecapConfig::default(), gwlb::decap_config(), unchecked];
        for frame in &frames {
            for at in 0..frame.len().min(100) - 1 {
                let old = u16::from_be_bytes([frame[at], frame[at + 1]]);
                let nudged = [-2i16, -1, 1, 2].map(|d| old.wrapping_add_signed(d));
                let small = [0u16, 1, 7, 8, 9, 20, 27, 28, 0xffff];
                let bits = (0..16).map(|b| old ^ (1 << b));
                for v in nudged.into_iter().chain(small).chain(bits) {
                    for tail in 0..3 {
                        let mut f = frame.clone();
                        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                        match tail {
                            0 => f.push(0),
                            1 => {
                                f.pop();
                            }
                            _ => {}
                        }
                        for c in &configs {
                            let (a, b) = both(c, &f);
                            assert_eq!(a, b, "{v:#06x} at {at}, tail {tail}, {c:?}");
                        }
                    }
                }
            }
        }
    }

    /// What the general walk says about an options area: `Some(mask)` if it accepts it.
    fn general_options(stage: &DecapStage, opts: &[u8]) -> Option<u16> {
        let mut hdr = vec![(opts.len() / 4) as u8, 0, 0x65, 0x58, 0, 0, 1, 0];
        hdr.extend_from_slice(opts);
        if !opts.len().is_multiple_of(4) || opts.len() > crate::geneve::MAX_OPTIONS_LEN {
            return None;
        }
        let g = GenevePacket::new_checked(&hdr[..]).ok()?;
        stage.check_options(&g).ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn fast_path_equals_general_walk_on_mutated_frames(
            config in decap_config(),
            frame in mutated_frame(),
        ) {
            let (a, b) = both(&config, &frame);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn fast_path_equals_general_walk_on_unmutated_frames(
            config in decap_config(),
            frame in tunnel_frame(),
        ) {
            let (a, b) = both(&config, &frame);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn fast_path_equals_general_walk_on_arbitrary_bytes(
            config in decap_config(),
            frame in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let (a, b) = both(&config, &frame);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn counted_as_stage_counters_account_counts(
            config in decap_config(),
            frames in proptest::collection::vec((mutated_frame(), any::<bool>()), 1..20),
        ) {
            let mut stage = DecapStage::new(config).unwrap();
            let mut batch = Batch::new();
            for (f, dropped) in &frames {
                let mut p = Packet::new(f.clone(), 0, f.len()).unwrap();
                if *dropped {
                    p.meta.verdict = Verdict::Drop(DropReason::NonIp);
                }
                batch.push(p).unwrap();
            }
            let before = batch.pending_mask();
            stage.process(Instant::ZERO, &mut batch);
            let mut want = StageCounters::default();
            want.account(before, &batch);
            prop_assert_eq!(stage.counters(), &want);
        }

        #[test]
        fn canonical_option_data_by_lanes_and_by_words_equals_the_walk(
            // Specs of fixed lengths, mostly with a layout (repeats have none): 4-byte
            // data in front of the others takes words, not lanes.
            specs in proptest::collection::vec(
                (0u16..3, 1u8..6, prop_oneof![Just(0u8), Just(4), Just(8), Just(12)], any::<bool>())
                    .prop_map(|(class, ty, len, required)| OptionSpec {
                        class,
                        ty,
                        data_len: Some(len),
                        required,
                    }),
                1..5,
            ),
            bytes in proptest::collection::vec(any::<u8>(), CANON_LEN),
        ) {
            let stage = DecapStage::new(DecapConfig { options: specs, ..DecapConfig::default() }).unwrap();
            let fast = &stage.fast;
            prop_assume!(fast.canon.1 != 0);
            // A header of the precomputed layout: its fixed bits, random bytes elsewhere.
            let mut h = [0u8; CANON_LEN];
            for (i, b) in h.iter_mut().enumerate() {
                *b = (bytes[i] & !fast.canon_mask[i]) | fast.canon_bytes[i];
            }
            // (A spec longer than 31 words gives a layout no header matches.)
            let canonical = fast.canonical(&h);
            prop_assume!(canonical.is_some());
            let (olen, _) = canonical.unwrap();
            let want = fast.option_data(&h[8..8 + olen], &stage.data_slots);
            let mut by_words = [0xee; TUNNEL_OPTION_DATA_LEN];
            stage.canon_data.fill(&h, &mut by_words);
            prop_assert_eq!(by_words, want);
            if let Some(lanes) = &stage.canon_data.lanes {
                let mut by_lanes = [0xee; TUNNEL_OPTION_DATA_LEN];
                WordMap::fill_lanes(lanes, &h, &mut by_lanes);
                prop_assert_eq!(by_lanes, want);
            }
        }

        #[test]
        fn one_option_walk_equals_the_view_and_spec_walks(
            specs in proptest::collection::vec(spec(), 0..7),
            list in proptest::collection::vec(option(), 0..6),
            edit in proptest::option::of((0usize..64, any::<u8>())),
            cut in proptest::option::of(0usize..64),
            head in proptest::option::of(any::<[u8; 2]>()),
        ) {
            let stage = DecapStage::new(DecapConfig { options: specs, ..DecapConfig::default() }).unwrap();
            let mut opts = options(&list).as_bytes().to_vec();
            if let Some((at, v)) = edit && let Some(b) = opts.get_mut(at) {
                *b = v;
            }
            if let Some(c) = cut {
                opts.truncate(c & !3);
            }
            let general = general_options(&stage, &opts);
            prop_assert_eq!(stage.fast.walk(&opts, stage.required_mask), general);
            // The precomputed header, behind a Geneve header (of a random first two bytes
            // half of the time) and before more bytes, agrees where it applies.
            let mut tun = vec![(opts.len() / 4) as u8, 0, 0x65, 0x58, 0, 0, 1, 0];
            if let Some(h) = head {
                tun[..2].copy_from_slice(&h);
            }
            tun.extend_from_slice(&opts);
            tun.resize(CANON_LEN.max(tun.len()), 0xa5);
            if let Some((olen, mask)) = stage.fast.canonical(&tun) {
                // A version 0 data packet with the options area its header announces, which
                // the general walk accepts with the same bits.
                prop_assert_eq!(tun[0] >> 6, 0);
                prop_assert_eq!(tun[1] & 0x80, 0);
                prop_assert_eq!(usize::from(tun[0] & 0x3f) * 4, olen);
                let announced = &tun[8..8 + olen];
                prop_assert_eq!(Some(mask), general_options(&stage, announced));
            }
        }
    }
}
