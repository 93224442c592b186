//! `transit-router`: the Transit Gateway pattern on nf stages — three tenants' VXLAN
//! attachments, each associated with its own route table, routed between by longest-prefix
//! match.
//!
//! ```text
//!   attachment  VNI  underlay host  tenant CIDR   its route table
//!   a (hub)     101  192.0.2.11     10.1.0.0/16   10.2.0.0/16 -> b, 10.3.0.0/16 -> c
//!   b (spoke)   102  192.0.2.12     10.2.0.0/16   10.1.0.0/16 -> a   (no route to c)
//!   c (spoke)   103  192.0.2.13     10.3.0.0/16   0.0.0.0/0 -> a, 10.2.0.0/16 -> b,
//!                                                 10.2.9.0/24 -> a   (longest match wins)
//! ```
//!
//! Each tenant host sends a UDP packet to a few destinations; its attachment encapsulates it in
//! VXLAN with the attachment's VNI towards the router (192.0.2.1). The router is one pipeline:
//! decap (VNI → zone) → [`RouteStage`] (the zone's table → next hop = attachment) → attach (the
//! next hop's VNI becomes the packet's zone) → encap (VXLAN with that VNI, to that attachment's
//! host). A destination the table has no route for goes to the control path. The program prints
//! one line per packet (from, inner addresses, to, outer destination, VNI), read back from the
//! emitted frames' bytes, and with `--write PATH` writes them as a pcap for Wireshark.

use nf_core::{
    Batch, Instant, NO_NEXT_HOP, Packet, ParseStage, Stage, StageControl, StageCounters, StageExt,
    StageLoop, Verdict, ZoneId,
};
use nf_examples::pcap::{CaptureWriter, Format, LINKTYPE_ETHERNET};
use nf_policy::{Ipv4Lpm, Ipv6Lpm, MissAction, RouteStage, RouteTable, RouteTables};
use nf_tunnel::{
    DecapConfig, DecapStage, Destination, EncapConfig, EncapStage, TunnelKind, Underlay,
    VXLAN_PORT, VniSource,
};
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::Arc;

/// An attachment: a name, its VNI and its underlay host.
struct Attachment {
    name: &'static str,
    vni: u32,
    host: Ipv4Addr,
}

const ATTACHMENTS: [Attachment; 3] = [
    Attachment {
        name: "a",
        vni: 101,
        host: Ipv4Addr::new(192, 0, 2, 11),
    },
    Attachment {
        name: "b",
        vni: 102,
        host: Ipv4Addr::new(192, 0, 2, 12),
    },
    Attachment {
        name: "c",
        vni: 103,
        host: Ipv4Addr::new(192, 0, 2, 13),
    },
];
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const UNDERLAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const HEADROOM: usize = 128;

/// The per-attachment route tables; next hops are indexes into [`ATTACHMENTS`].
fn tables() -> Result<RouteTables, String> {
    let ip = Ipv4Addr::new;
    let table = |routes: &[(Ipv4Addr, u8, u32)]| -> Result<RouteTable, String> {
        let v4 = Ipv4Lpm::from_routes(routes.iter().copied()).map_err(|e| e.to_string())?;
        Ok(RouteTable::new(v4, Ipv6Lpm::default()))
    };
    let mut t = RouteTables::new();
    t.insert(
        ZoneId(101),
        table(&[(ip(10, 2, 0, 0), 16, 1), (ip(10, 3, 0, 0), 16, 2)])?,
    );
    t.insert(ZoneId(102), table(&[(ip(10, 1, 0, 0), 16, 0)])?);
    t.insert(
        ZoneId(103),
        table(&[
            (ip(0, 0, 0, 0), 0, 0),
            (ip(10, 2, 0, 0), 16, 1),
            (ip(10, 2, 9, 0), 24, 0),
        ])?,
    );
    Ok(t)
}

/// Sets the packet's zone to its next hop's VNI, so that encap puts that VNI on the wire.
#[derive(Default)]
struct Attach {
    counters: StageCounters,
}

impl<B> Stage<B> for Attach {
    fn process(&mut self, _now: Instant, batch: &mut Batch<B>) {
        self.each_pending(batch, |_, _, pkt| {
            if pkt.meta.next_hop != NO_NEXT_HOP
                && let Some(a) = ATTACHMENTS.get(pkt.meta.next_hop as usize)
            {
                pkt.meta.zone = ZoneId(a.vni);
            }
            Verdict::Pass
        });
    }
}

impl StageLoop for Attach {
    fn counters_mut(&mut self) -> &mut StageCounters {
        &mut self.counters
    }
}

impl StageControl for Attach {
    fn name(&self) -> &'static str {
        "attach"
    }
    fn counters(&self) -> &StageCounters {
        &self.counters
    }
}

fn underlay(src: Ipv4Addr, dst: Ipv4Addr) -> Underlay {
    Underlay {
        src_mac: ROUTER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
    }
}

/// An Ethernet / IPv4 / UDP frame from `src` to `dst` with an 8-byte payload.
fn inner_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 50];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x20]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x10]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&36u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = nf_core::checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5000u16.to_be_bytes());
    f[38..40].copy_from_slice(&16u16.to_be_bytes());
    f[42..50].copy_from_slice(b"transit!");
    f
}

fn packet(frame: &[u8]) -> Result<Packet<Vec<u8>>, String> {
    let mut buf = vec![0u8; HEADROOM + frame.len()];
    buf[HEADROOM..].copy_from_slice(frame);
    Packet::new(buf, HEADROOM, frame.len()).map_err(|e| format!("{e:?}"))
}

/// What one emitted frame says: outer destination, VNI, inner source and destination.
fn read_back(f: &[u8]) -> Option<(Ipv4Addr, u32, Ipv4Addr, Ipv4Addr)> {
    let outer_dst = Ipv4Addr::new(*f.get(30)?, *f.get(31)?, *f.get(32)?, *f.get(33)?);
    let v = f.get(46..49)?;
    let vni = u32::from(v[0]) << 16 | u32::from(v[1]) << 8 | u32::from(v[2]);
    let inner = f.get(50..)?;
    let at = |o: usize| {
        Some(Ipv4Addr::new(
            *inner.get(o)?,
            *inner.get(o + 1)?,
            *inner.get(o + 2)?,
            *inner.get(o + 3)?,
        ))
    };
    Some((outer_dst, vni, at(26)?, at(30)?))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transit-router: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut write = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--write" => write = args.next(),
            _ => return Err("usage: transit-router [--write OUT.pcap]".into()),
        }
    }
    // What each tenant host sends: (attachment index, source, destination).
    let ip = Ipv4Addr::new;
    let sends = [
        (0, ip(10, 1, 0, 5), ip(10, 2, 0, 7)),
        (0, ip(10, 1, 0, 5), ip(10, 3, 0, 9)),
        (1, ip(10, 2, 0, 7), ip(10, 1, 0, 5)),
        (1, ip(10, 2, 0, 7), ip(10, 3, 0, 9)),
        (2, ip(10, 3, 0, 9), ip(10, 2, 0, 7)),
        (2, ip(10, 3, 0, 9), ip(10, 2, 9, 1)),
        (2, ip(10, 3, 0, 9), ip(198, 51, 100, 1)),
    ];

    // The router: decap -> route -> attach -> encap.
    let decap = DecapStage::new(DecapConfig {
        ports: vec![(VXLAN_PORT, TunnelKind::Vxlan)],
        local_ips: vec![IpAddr::V4(ROUTER)],
        ..DecapConfig::default()
    })
    .map_err(|e| format!("decap: {e}"))?;
    let mut encap_cfg = EncapConfig::vxlan(0, underlay(ROUTER, ROUTER));
    encap_cfg.vni = VniSource::Zone;
    encap_cfg.destination =
        Destination::NextHop(ATTACHMENTS.iter().map(|a| IpAddr::V4(a.host)).collect());
    let encap = EncapStage::new(encap_cfg).map_err(|e| format!("encap: {e}"))?;
    let route = RouteStage::new(Arc::new(tables()?), MissAction::ToControl);
    let mut router = decap.then(route).then(Attach::default()).then(encap);

    // Each attachment's side: parse, then VXLAN with its VNI towards the router.
    let mut batch: Batch<Vec<u8>> = Batch::new();
    for &(from, src, dst) in &sends {
        let a = &ATTACHMENTS[from];
        let mut cfg = EncapConfig::vxlan(a.vni, underlay(a.host, ROUTER));
        cfg.vni = VniSource::Fixed(a.vni);
        let mut side = ParseStage::default().then(EncapStage::new(cfg).map_err(|e| e.to_string())?);
        let mut one: Batch<Vec<u8>> = Batch::new();
        one.push(packet(&inner_frame(src, dst))?)
            .map_err(|_| "batch full")?;
        side.process(Instant::ZERO, &mut one);
        for p in one.packets() {
            let mut q = packet(p.data())?;
            q.meta = Default::default();
            batch.push(q).map_err(|_| "batch full")?;
        }
    }

    router.process(Instant::ZERO, &mut batch);

    let mut out = Vec::new();
    println!("from  inner src -> dst               to    outer dst     VNI");
    for (p, &(from, src, dst)) in batch.packets().iter().zip(&sends) {
        let fa = ATTACHMENTS[from].name;
        match p.meta.verdict {
            Verdict::Pass => {
                let (outer, vni, isrc, idst) = read_back(p.data()).ok_or("short frame")?;
                let to = ATTACHMENTS
                    .iter()
                    .find(|a| a.vni == vni)
                    .map_or("?", |a| a.name);
                println!("{fa:<5} {isrc:<11} -> {idst:<15} {to:<5} {outer:<13} {vni}");
                out.push(p.data().to_vec());
            }
            Verdict::ToControl => println!("{fa:<5} {src:<11} -> {dst:<15} no route (to control)"),
            v => println!("{fa:<5} {src:<11} -> {dst:<15} {v:?}"),
        }
    }
    router.visit_counters(&mut |stage, name, v| {
        if stage == "route" && v > 0 {
            println!("route.{name} = {v}");
        }
    });
    if let Some(path) = write {
        let file = std::fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?;
        let mut w = CaptureWriter::new(std::io::BufWriter::new(file), Format::Pcap)
            .map_err(|e| format!("{path}: {e:?}"))?;
        for f in &out {
            w.write(0, LINKTYPE_ETHERNET, f, None)
                .map_err(|e| format!("{path}: {e:?}"))?;
        }
        drop(w);
        eprintln!("wrote {} frames to {path}", out.len());
    }
    Ok(())
}
