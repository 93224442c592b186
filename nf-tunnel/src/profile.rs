//! Profiles of real deployments, built on the generic API: AWS Gateway Load Balancer and
//! Google Cloud's Geneve.

/// AWS Gateway Load Balancer (GWLB) ↔ appliance Geneve: option class 0x0108 with three
/// required options, bare IP payload, and a return path that sends the packet back in the
/// received Geneve header with the outer IP addresses swapped and the ports kept
/// ([`ReflectStage`](crate::ReflectStage)).
pub mod gwlb {
    use crate::decap::{DecapConfig, NonTunnel, OptionSpec, TunnelKind, received_geneve};
    use crate::encap::{EncapConfig, Payload, Underlay};
    use crate::geneve::{Options, OptionsBuilder};
    use nf_core::{Packet, TunnelMeta};

    /// The option class AWS uses.
    pub const CLASS: u16 = 0x0108;
    /// GWLB endpoint id (8 bytes).
    pub const ENDPOINT_ID: u8 = 1;
    /// Attachment id (8 bytes).
    pub const ATTACHMENT_ID: u8 = 2;
    /// Flow cookie (4 bytes).
    pub const FLOW_COOKIE: u8 = 3;

    /// The metadata GWLB attaches to every packet.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GwlbMetadata {
        /// The GWLB endpoint (VPC endpoint) the flow came through.
        pub endpoint_id: u64,
        /// The attachment id.
        pub attachment_id: u64,
        /// GWLB's flow cookie, to be returned unchanged.
        pub flow_cookie: u32,
    }

    impl GwlbMetadata {
        /// Reads the three options (`None` if one is missing or of the wrong length).
        pub fn from_options(opts: Options<'_>) -> Option<Self> {
            let get = |ty| opts.clone().find_option(CLASS, ty).map(|o| o.data);
            Some(Self {
                endpoint_id: u64::from_be_bytes(get(ENDPOINT_ID)?.try_into().ok()?),
                attachment_id: u64::from_be_bytes(get(ATTACHMENT_ID)?.try_into().ok()?),
                flow_cookie: u32::from_be_bytes(get(FLOW_COOKIE)?.try_into().ok()?),
            })
        }

        /// Reads them from the Geneve header a decapsulation stage stripped from `pkt`
        /// (while nothing was pushed in front of the packet since).
        pub fn from_packet<B: AsRef<[u8]>>(pkt: &Packet<B>) -> Option<Self> {
            Self::from_options(received_geneve(pkt)?.options())
        }

        /// Reads them from the option data a decapsulation stage built from
        /// [`decap_config`] kept in the packet's metadata: valid whatever later stages
        /// pushed in front of the packet. `None` unless all three were present.
        ///
        /// ```
        /// use nf_tunnel::profile::gwlb::{self, GwlbMetadata};
        /// let mut t = nf_core::TunnelMeta::default();
        /// assert_eq!(GwlbMetadata::from_meta(&t), None);
        /// t.options = 0b111;
        /// t.option_data[..8].copy_from_slice(&7u64.to_be_bytes());
        /// t.option_data[16..20].copy_from_slice(&9u32.to_be_bytes());
        /// let m = GwlbMetadata::from_meta(&t).unwrap();
        /// assert_eq!((m.endpoint_id, m.attachment_id, m.flow_cookie), (7, 0, 9));
        /// ```
        pub fn from_meta(t: &TunnelMeta) -> Option<Self> {
            // The three specs have fixed lengths 8, 8, 4: their data is packed in order.
            if t.options & 0b111 != 0b111 {
                return None;
            }
            let d = &t.option_data;
            Some(Self {
                endpoint_id: u64::from_be_bytes(*d.first_chunk::<8>()?),
                attachment_id: u64::from_be_bytes(*d.get(8..)?.first_chunk::<8>()?),
                flow_cookie: u32::from_be_bytes(*d.get(16..)?.first_chunk::<4>()?),
            })
        }

        /// The three options, in GWLB's order.
        pub fn options(&self) -> OptionsBuilder {
            let mut b = OptionsBuilder::new();
            // 36 bytes of at most 252, each data a multiple of 4: cannot fail.
            let _ = b.push(CLASS, ENDPOINT_ID, &self.endpoint_id.to_be_bytes());
            let _ = b.push(CLASS, ATTACHMENT_ID, &self.attachment_id.to_be_bytes());
            let _ = b.push(CLASS, FLOW_COOKIE, &self.flow_cookie.to_be_bytes());
            b
        }
    }

    /// An appliance's decapsulation: Geneve on 6081 only, the three options required
    /// (reported as bits 0, 1, 2 of `meta.tunnel.options`, their data kept in
    /// `meta.tunnel.option_data`: [`GwlbMetadata::from_meta`]), everything else dropped.
    pub fn decap_config() -> DecapConfig {
        DecapConfig {
            ports: alloc::vec![(crate::GENEVE_PORT, TunnelKind::Geneve)],
            options: alloc::vec![
                OptionSpec::required(CLASS, ENDPOINT_ID, 8),
                OptionSpec::required(CLASS, ATTACHMENT_ID, 8),
                OptionSpec::required(CLASS, FLOW_COOKIE, 4),
            ],
            non_tunnel: NonTunnel::Drop,
            ..DecapConfig::default()
        }
    }

    /// GWLB's side: encapsulate bare IP packets with `meta` to an appliance.
    pub fn encap_config(meta: &GwlbMetadata, vni: u32, underlay: Underlay) -> EncapConfig {
        EncapConfig {
            payload: Payload::Ip,
            ..EncapConfig::geneve(meta.options(), vni, underlay)
        }
    }
}

/// Google Cloud's Geneve (as in packet mirroring / third-party appliances): option class
/// 0x0132 and a bare IP payload.
pub mod gcp {
    use crate::decap::{DecapConfig, OptionSpec, TunnelKind};
    use crate::geneve::{Options, OptionsBuilder};

    /// Google's option class.
    pub const CLASS: u16 = 0x0132;
    /// Virtual network id and direction (4 bytes).
    pub const VNID: u8 = 1;
    /// Endpoint id (16 bytes).
    pub const ENDPOINT: u8 = 2;
    /// Profile id (8 bytes).
    pub const PROFILE: u8 = 3;

    /// The Google options of a packet.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GcpMetadata {
        /// Virtual network id (the top 28 bits of the option).
        pub vnid: u32,
        /// Direction bit: true for egress.
        pub egress: bool,
        /// Endpoint id.
        pub endpoint: [u8; 16],
        /// Profile id.
        pub profile: u64,
    }

    impl GcpMetadata {
        /// Reads the three options (`None` if one is missing or of the wrong length).
        pub fn from_options(opts: Options<'_>) -> Option<Self> {
            let get = |ty| opts.clone().find_option(CLASS, ty).map(|o| o.data);
            let w = u32::from_be_bytes(get(VNID)?.try_into().ok()?);
            Some(Self {
                vnid: w >> 4,
                egress: w & 1 != 0,
                endpoint: get(ENDPOINT)?.try_into().ok()?,
                profile: u64::from_be_bytes(get(PROFILE)?.try_into().ok()?),
            })
        }

        /// The three options.
        pub fn options(&self) -> OptionsBuilder {
            let mut b = OptionsBuilder::new();
            let w = (self.vnid << 4) | u32::from(self.egress);
            // 52 bytes of at most 252, each data a multiple of 4: cannot fail.
            let _ = b.push(CLASS, VNID, &w.to_be_bytes());
            let _ = b.push(CLASS, ENDPOINT, &self.endpoint);
            let _ = b.push(CLASS, PROFILE, &self.profile.to_be_bytes());
            b
        }
    }

    /// Decapsulation of Google's Geneve: the three options understood and reported (bits
    /// 0, 1, 2 of `meta.tunnel.options`), not required.
    pub fn decap_config() -> DecapConfig {
        DecapConfig {
            ports: alloc::vec![(crate::GENEVE_PORT, TunnelKind::Geneve)],
            options: alloc::vec![
                OptionSpec::known(CLASS, VNID),
                OptionSpec::known(CLASS, ENDPOINT),
                OptionSpec::known(CLASS, PROFILE),
            ],
            ..DecapConfig::default()
        }
    }
}
