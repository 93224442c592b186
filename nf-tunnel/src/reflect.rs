//! The return path of a tunnel that answers on the same tunnel (AWS Gateway Load
//! Balancer's appliance contract): re-attach the outer headers a [`DecapStage`] stripped,
//! swap the outer MAC and IP addresses, keep the UDP ports, VNI and options, and fix the
//! lengths and checksums.
//!
//! Requires that nothing was pushed into the headroom since decapsulation (the stripped
//! headers are still in front of the data, `meta.tunnel.outer_len` bytes); the inner packet
//! itself may have been rewritten or resized. For the same reason the stage asks for no
//! [`StageControl::headroom`]: it only puts back bytes the frame arrived with.
//!
//! [`DecapStage`]: crate::DecapStage

use crate::outer::Outer;
use nf_core::flags;
use nf_core::wire::ethertype;
use nf_core::wire::ipv4::Ipv4Packet;
use nf_core::{
    Batch, DropReason, Family, Instant, Packet, Stage, StageControl, StageCounters, StageLoop,
    TunnelMeta,
};

/// The reflect stage (see the module docs).
#[derive(Clone, Debug)]
pub struct ReflectStage {
    mtu: u16,
    udp_checksum_v4: bool,
    counters: StageCounters,
}

impl ReflectStage {
    /// Reflects frames whose outer IP packet fits `mtu`; `udp_checksum_v4` computes the
    /// UDP checksum over IPv4 too (otherwise it is kept zero if the sender sent zero).
    pub fn new(mtu: u16, udp_checksum_v4: bool) -> Self {
        Self {
            mtu,
            udp_checksum_v4,
            counters: StageCounters::default(),
        }
    }

    /// Reflects one packet.
    ///
    /// # Errors
    /// [`DropReason::NotTunnel`] if it was not decapsulated,
    /// [`DropReason::TunnelTooDeep`] if it came through two tunnels,
    /// [`DropReason::NoHeadroom`],
    /// [`DropReason::TunnelTruncated`] if the stripped headers are unreadable,
    /// [`DropReason::TooBig`].
    pub fn reflect<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        pkt: &mut Packet<B>,
    ) -> Result<(), DropReason> {
        let t = pkt.meta.tunnel;
        let n = usize::from(t.outer_len);
        if n == 0 || t.depth == 0 {
            return Err(DropReason::NotTunnel);
        }
        if t.depth > 1 {
            return Err(DropReason::TunnelTooDeep);
        }
        let outer = Outer {
            l3: usize::from(t.outer_l3),
            udp: usize::from(t.outer_udp),
            v6: t.outer_family == Family::V6,
            ..Outer::default()
        };
        if outer.udp + 8 > n || outer.l3 > outer.udp {
            return Err(DropReason::TunnelTruncated);
        }
        pkt.push_front(n).map_err(|_| DropReason::NoHeadroom)?;
        let data = pkt.data_mut();
        // The UDP checksum as received: zero stays zero over IPv4.
        let udp_checksum = data
            .get(outer.udp + 6..)
            .and_then(|c| c.first_chunk::<2>())
            .map_or(0, |c| u16::from_be_bytes(*c));
        let total = data.len();
        let ip_len = total - outer.l3;
        if ip_len > usize::from(self.mtu) {
            return Err(DropReason::TooBig);
        }
        // No MAC addresses when the tunnel was stripped from a bare IP packet.
        if outer.l3 != 0
            && let Some((dst, rest)) = data.split_first_chunk_mut::<6>()
            && let Some(src) = rest.first_chunk_mut::<6>()
        {
            core::mem::swap(dst, src);
        }
        let ip = data.get_mut(outer.l3..).unwrap_or(&mut []);
        if outer.v6 {
            swap_ranges(ip, 8, 24, 16);
            put(ip, 4, &((ip_len - 40) as u16).to_be_bytes());
        } else {
            swap_ranges(ip, 12, 16, 4);
            put(ip, 2, &(ip_len as u16).to_be_bytes());
            if let Ok(mut p) = Ipv4Packet::new_checked(&mut *ip) {
                p.fill_checksum();
            }
        }
        let udp_len = total - outer.udp;
        // Over the swapped addresses now in the header.
        let pseudo = crate::outer::pseudo(&outer, data, udp_len);
        let seg = data.get_mut(outer.udp..).unwrap_or(&mut []);
        put(seg, 4, &(udp_len as u16).to_be_bytes());
        put(seg, 6, &[0, 0]);
        if outer.v6 || udp_checksum != 0 || self.udp_checksum_v4 {
            let c = nf_core::checksum::udp_finish(
                u32::from(nf_core::checksum::fold(nf_core::checksum::sum(0, seg)))
                    + u32::from(nf_core::checksum::fold(pseudo)),
            );
            put(seg, 6, &c.to_be_bytes());
        }
        pkt.meta.tunnel = TunnelMeta::default();
        // The frame starts where the tunnel's did: at Ethernet, or at the outer IP header
        // when the tunnel was stripped from a bare IP packet.
        if outer.l3 == 0 {
            pkt.meta.flags |= flags::NO_L2;
            pkt.meta.ethertype = if outer.v6 {
                ethertype::IPV6
            } else {
                ethertype::IPV4
            };
        } else {
            pkt.meta.flags &= !flags::NO_L2;
        }
        Ok(())
    }
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(d) = buf.get_mut(off..off + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

fn swap_ranges(buf: &mut [u8], a: usize, b: usize, n: usize) {
    if let Some(s) = buf.get_mut(a..b + n) {
        let (x, y) = s.split_at_mut(b - a);
        if let (Some(x), Some(y)) = (x.get_mut(..n), y.get_mut(..n)) {
            x.swap_with_slice(y);
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Stage<B> for ReflectStage {
    fn process(&mut self, _now: Instant, batch: &mut Batch<B>) {
        self.each_pending(
            batch,
            #[inline(always)]
            |s, _, pkt| s.reflect(pkt).into(),
        );
    }
}

impl StageLoop for ReflectStage {
    fn counters_mut(&mut self) -> &mut StageCounters {
        &mut self.counters
    }
}

impl StageControl for ReflectStage {
    fn name(&self) -> &'static str {
        "tunnel_reflect"
    }

    fn counters(&self) -> &StageCounters {
        &self.counters
    }
}
