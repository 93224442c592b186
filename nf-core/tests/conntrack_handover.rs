//! Sessions moving between nodes through `Conntrack::export` / `Conntrack::import`: every
//! service takes each session over (or declines it) before it is installed, what a service
//! holds stays equal to the sessions installed whatever is refused, skipped or damaged, and
//! the sessions carry on at the new node from either direction; a replica that lost journal
//! events is repaired by a full resync, its services giving back what stale copies held.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{
    Conntrack, ConntrackConfig, EndCause, ExportError, ImportError, NewFlow, SessionInfo,
    SessionService, Sizes,
};
use nf_core::{
    Batch, Direction, DropReason, Family, Instant, Packet, ParseStage, Stage, StageExt, Verdict,
};
extern crate alloc;

use alloc::collections::BTreeSet;

const SECRET: [u8; 16] = *b"nodes share this";

/// A port translator with a pool of ports, as a NAT holds its public ports: a new flow takes
/// the lowest free port of the pool for its replies; sessions carry (original destination
/// port, translated port), and moving to another node takes the same port there.
#[derive(Default)]
struct Ports {
    /// Ports held by sessions.
    held: BTreeSet<u16>,
    /// Ports this node may not give (another tenant's): imports asking for them are refused.
    reserved: BTreeSet<u16>,
    aborted: u64,
}

const POOL: core::ops::Range<u16> = 20_000..20_512;

impl SessionService for Ports {
    type Value = (u16, u16);

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<(u16, u16), DropReason> {
        let o = *new.original();
        let port = POOL
            .clone()
            .find(|p| !self.held.contains(p) && !self.reserved.contains(p))
            .ok_or(DropReason::ServiceRefused)?;
        let mut reply = o.reversed();
        reply.src_port = port;
        new.set_reply(reply).unwrap();
        self.held.insert(port);
        Ok((o.dst_port, port))
    }

    fn on_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        _now: Instant,
        direction: Direction,
        value: &mut (u16, u16),
        pkt: &mut Packet<B>,
    ) -> Verdict {
        let l4 = usize::from(pkt.meta.l4);
        let (at, port) = match direction {
            Direction::Original => (l4 + 2, value.1),
            Direction::Reply => (l4, value.0),
        };
        pkt.data_mut()[at..at + 2].copy_from_slice(&port.to_be_bytes());
        Verdict::Pass
    }

    fn on_end(&mut self, _now: Instant, s: &SessionInfo<(u16, u16)>, cause: EndCause) {
        assert!(self.held.remove(&s.value.1), "a port ends once");
        self.aborted += u64::from(cause == EndCause::Aborted);
    }

    const EXPORT_LEN: Option<usize> = Some(4);

    fn export_value(&self, value: &(u16, u16), out: &mut [u8]) {
        out[..2].copy_from_slice(&value.0.to_be_bytes());
        out[2..4].copy_from_slice(&value.1.to_be_bytes());
    }

    fn import_value(
        &mut self,
        _now: Instant,
        session: &SessionInfo<()>,
        bytes: &[u8],
    ) -> Option<(u16, u16)> {
        let orig = u16::from_be_bytes([bytes[0], bytes[1]]);
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        // The bytes must agree with the keys they travel with.
        if orig != session.original.dst_port || port != session.reply.src_port {
            return None;
        }
        if !POOL.contains(&port) || self.reserved.contains(&port) || !self.held.insert(port) {
            return None;
        }
        Some((orig, port))
    }
}

/// A one-byte tag per session (the low byte of the client's port); this node declines to take
/// over sessions whose tag is in `declined`.
#[derive(Default)]
struct Tag {
    declined: BTreeSet<u8>,
    imported: u64,
}

impl SessionService for Tag {
    type Value = u8;

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<u8, DropReason> {
        Ok(new.original().src_port as u8)
    }

    const EXPORT_LEN: Option<usize> = Some(1);

    fn export_value(&self, value: &u8, out: &mut [u8]) {
        out[0] = *value;
    }

    fn import_value(&mut self, _now: Instant, _s: &SessionInfo<()>, bytes: &[u8]) -> Option<u8> {
        let t = bytes[0];
        (!self.declined.contains(&t)).then(|| {
            self.imported += 1;
            t
        })
    }
}

/// A service whose sessions cannot move (the default).
struct Local;

impl SessionService for Local {
    type Value = u32;
    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        _now: Instant,
        _pkt: &Packet<B>,
        _new: &mut NewFlow<'_>,
    ) -> Result<u32, DropReason> {
        Ok(7)
    }
}

type Node = nf_core::Chain<ParseStage, Conntrack<(Ports, Tag)>>;

fn node() -> Node {
    let cfg = ConntrackConfig::new(SECRET).sizes(Sizes { v4: 512, v6: 512 });
    ParseStage::default().then(Conntrack::new(cfg, (Ports::default(), Tag::default())).unwrap())
}

fn now() -> Instant {
    Instant::from_nanos(5_000_000_000)
}

/// An Ethernet/IP/UDP frame between client `c` and the server.
fn udp(v6: bool, from_client: bool, c: u8, sport: u16, dport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6]);
    let (client, server) = if v6 {
        let mut s = [0x20u8; 16];
        s[15] = c;
        (s, [0x30u8; 16])
    } else {
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&[10, 0, 1, c]);
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[10, 0, 2, 1]);
        (s, d)
    };
    let (src, dst) = if from_client {
        (client, server)
    } else {
        (server, client)
    };
    let b = if v6 {
        b.ipv6(src, dst, 64)
    } else {
        b.ipv4(
            src[..4].try_into().unwrap(),
            dst[..4].try_into().unwrap(),
            64,
        )
    };
    let mut out = Vec::new();
    b.udp(sport, dport).write(&mut out, &[7; 4]).unwrap();
    out
}

fn send(n: &mut Node, frames: &[Vec<u8>]) -> Vec<Packet<Vec<u8>>> {
    let mut out = Vec::new();
    for chunk in frames.chunks(64) {
        let mut b = Batch::new();
        for f in chunk {
            b.push(Packet::with_headroom(f, 64)).unwrap();
        }
        n.process(now(), &mut b);
        out.extend(b.drain());
    }
    out
}

/// Flow `i`: client `i % 200`, client port `40_000 + i`, to port 53; IPv6 for odd `i`.
fn flow(i: u16) -> (bool, u8, u16) {
    (i % 2 == 1, (i % 200) as u8, 40_000 + i)
}

fn first_packets(n: u16) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let (v6, c, sport) = flow(i);
            udp(v6, true, c, sport, 53)
        })
        .collect()
}

fn sessions(n: &Node) -> usize {
    n.second.v4().len() + n.second.v6().len()
}

/// Every session of `a`, in chunks of at most `max`.
fn export_all(a: &Node, max: usize) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    for family in [Family::V4, Family::V6] {
        let mut from = 0;
        loop {
            let mut c = Vec::new();
            let p = a.second.export(family, now(), from, max, &mut c).unwrap();
            chunks.push(c);
            match p.next {
                Some(next) => from = next,
                None => break,
            }
        }
    }
    chunks
}

#[test]
fn sessions_carry_on_at_the_node_that_imports_them() {
    let mut a = node();
    let out = send(&mut a, &first_packets(300));
    assert!(out.iter().all(|p| p.meta.verdict == Verdict::Pass));
    assert_eq!(sessions(&a), 300);
    let ports: Vec<u16> = out
        .iter()
        .map(|p| {
            let l4 = usize::from(p.meta.l4);
            u16::from_be_bytes([p.data()[l4 + 2], p.data()[l4 + 3]])
        })
        .collect();

    let mut b = node();
    let mut total = 0;
    for c in export_all(&a, 37) {
        let r = b.second.import(now(), &c).unwrap();
        assert_eq!((r.skipped, r.refused), (0, 0));
        total += r.imported;
    }
    assert_eq!(total, 300);
    assert_eq!(sessions(&b), 300);
    assert_eq!(b.second.service().0.held, a.second.service().0.held);
    assert_eq!(b.second.service().1.imported, 300);

    // Replies to the translated ports find their sessions at B and are translated back;
    // the clients' next packets go to the same translated ports.
    let replies: Vec<Vec<u8>> = (0..300u16)
        .map(|i| {
            let (v6, c, sport) = flow(i);
            udp(v6, false, c, ports[usize::from(i)], sport)
        })
        .collect();
    for (i, p) in send(&mut b, &replies).iter().enumerate() {
        assert_eq!(p.meta.verdict, Verdict::Pass, "reply {i}");
        assert_eq!(p.meta.direction, Direction::Reply);
        let l4 = usize::from(p.meta.l4);
        assert_eq!(p.data()[l4..l4 + 2], 53u16.to_be_bytes());
    }
    for (i, p) in send(&mut b, &first_packets(300)).iter().enumerate() {
        assert_eq!(p.meta.direction, Direction::Original);
        let l4 = usize::from(p.meta.l4);
        assert_eq!(p.data()[l4 + 2..l4 + 4], ports[i].to_be_bytes());
    }
    assert_eq!(sessions(&b), 300, "no packet opened a session of its own");
    // New flows at B never take a port an imported session holds.
    let more: Vec<Vec<u8>> = (300..340u16)
        .map(|i| {
            let (v6, c, sport) = flow(i);
            udp(v6, true, c, sport, 53)
        })
        .collect();
    for p in send(&mut b, &more) {
        let l4 = usize::from(p.meta.l4);
        let port = u16::from_be_bytes([p.data()[l4 + 2], p.data()[l4 + 3]]);
        assert!(!ports.contains(&port));
    }
    assert_eq!(b.second.service().0.held.len(), sessions(&b));
}

#[test]
fn what_a_service_declines_or_the_table_skips_leaves_nothing_held() {
    let mut a = node();
    send(&mut a, &first_packets(200));
    let chunks = export_all(&a, 1000);

    let mut b = node();
    // Ports declines the ports of another tenant; Tag declines some tags: then Ports, which
    // took the session first, hears it aborted.
    b.second.service_mut().0.reserved = (20_000..20_010).collect();
    b.second.service_mut().1.declined = [3u8, 4].into_iter().collect();
    let (mut imported, mut refused) = (0, 0);
    for c in &chunks {
        let r = b.second.import(now(), c).unwrap();
        imported += r.imported;
        refused += r.refused;
        assert_eq!(r.skipped, 0);
    }
    let tags_declined = (0..200u16)
        .filter(|&i| [3u8, 4].contains(&(flow(i).2 as u8)))
        .count();
    assert!(tags_declined > 0 && refused > tags_declined);
    assert_eq!(imported + refused, 200);
    assert_eq!(sessions(&b), imported);
    assert_eq!(b.second.service().0.held.len(), imported);
    assert!(
        b.second.service().0.aborted > 0,
        "Tag's refusals abort Ports' takeover"
    );

    // The same chunks again: every session is present, so every record is skipped after
    // the services took it over, and they hear it aborted: nothing more is held.
    let held = b.second.service().0.held.clone();
    for c in &chunks {
        let r = b.second.import(now(), c).unwrap();
        assert_eq!(r.imported, 0);
    }
    assert_eq!(b.second.service().0.held, held);
    assert_eq!(sessions(&b), imported);
}

#[test]
fn damaged_or_foreign_chunks_change_nothing() {
    let mut a = node();
    send(&mut a, &first_packets(20));
    let chunks = export_all(&a, 1000);
    let mut b = node();
    for c in &chunks {
        for i in 0..c.len() {
            let mut d = c.clone();
            d[i] ^= 0x01;
            assert!(b.second.import(now(), &d).is_err(), "flip at {i}");
            assert!(b.second.import(now(), &c[..i]).is_err(), "cut at {i}");
        }
    }
    assert_eq!(sessions(&b), 0);
    assert!(b.second.service().0.held.is_empty());
    assert_eq!(b.second.service().1.imported, 0);

    // A chunk of a stage with other services: its values have another length.
    let mut plain =
        ParseStage::default().then(Conntrack::new(ConntrackConfig::new(SECRET), ()).unwrap());
    let mut batch = Batch::new();
    batch
        .push(Packet::with_headroom(&first_packets(1)[0], 64))
        .unwrap();
    plain.process(now(), &mut batch);
    let mut c = Vec::new();
    plain
        .second
        .export(Family::V4, now(), 0, 10, &mut c)
        .unwrap();
    assert_eq!(b.second.import(now(), &c), Err(ImportError::ValueLength));

    // Services whose sessions cannot move: nothing is written, nothing read.
    let local = Conntrack::new(ConntrackConfig::new(SECRET), Local).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        local.export(Family::V4, now(), 0, 10, &mut out),
        Err(ExportError::Unsupported)
    );
    assert!(out.is_empty());
    let mut local = local;
    assert_eq!(local.import(now(), &c), Err(ImportError::Unsupported));
}

#[test]
fn an_absent_optional_service_moves_its_default() {
    type Opt = Conntrack<(Option<Ports>, Tag)>;
    let mut a = ParseStage::default()
        .then(Opt::new(ConntrackConfig::new(SECRET), (None, Tag::default())).unwrap());
    let mut batch = Batch::new();
    batch
        .push(Packet::with_headroom(&first_packets(1)[0], 64))
        .unwrap();
    a.process(now(), &mut batch);
    let mut c = Vec::new();
    a.second.export(Family::V4, now(), 0, 10, &mut c).unwrap();
    // Where the service is present, the zeros it gets do not match the keys: declined.
    let mut b = node();
    assert_eq!(b.second.import(now(), &c).unwrap().refused, 1);
    let mut d = Opt::new(ConntrackConfig::new(SECRET), (None, Tag::default())).unwrap();
    assert_eq!(d.import(now(), &c).unwrap().imported, 1);
}

/// A replica following its primary through a change journal too short for it (events are
/// lost), then repaired by a full resync (`begin_resync`, the primary's export chunks
/// applied, `end_resync`): it ends with exactly the primary's sessions, and what its
/// services hold (the ports) equals what the primary's hold — the copies whose end was lost
/// gave theirs back.
#[test]
fn a_replica_repaired_by_a_resync_holds_what_its_primary_holds() {
    let mut cfg = ConntrackConfig::new(SECRET).sizes(Sizes { v4: 512, v6: 512 });
    cfg.v4.journal = 8;
    cfg.v6.journal = 8;
    let mut a = ParseStage::default()
        .then(Conntrack::new(cfg, (Ports::default(), Tag::default())).unwrap());
    let mut b = node();
    let sync = |a: &mut Node, b: &mut Node| {
        let mut lost = 0;
        for family in [Family::V4, Family::V6] {
            let mut c = Vec::new();
            let p = a
                .second
                .export_changes(family, now(), 1024, &mut c)
                .unwrap();
            lost += p.lost;
            b.second.apply(now(), &c).unwrap();
        }
        lost
    };
    let frames = first_packets(40);
    send(&mut a, &frames);
    assert!(sync(&mut a, &mut b) > 0, "a journal of 8 loses events");
    assert_eq!(b.second.service().0.held.len(), sessions(&b));
    // The replica catches up by a resync.
    assert_eq!(b.second.begin_resync(|_| true), sessions(&b));
    for c in export_all(&a, 7) {
        b.second.apply(now(), &c).unwrap();
    }
    assert_eq!(b.second.end_resync(now()), 0);
    assert_eq!(sessions(&b), 40);
    // Twenty sessions end on the primary; the journal carries only some of the ends.
    for f in &frames[..20] {
        let s = send(&mut a, core::slice::from_ref(f))[0]
            .meta
            .session
            .unwrap();
        a.second.remove(now(), s).unwrap();
    }
    assert!(sync(&mut a, &mut b) > 0);
    assert!(sessions(&b) > 20, "copies whose end was lost");
    b.second.begin_resync(|_| true);
    for c in export_all(&a, 7) {
        b.second.apply(now(), &c).unwrap();
    }
    assert!(b.second.end_resync(now()) > 0);
    assert_eq!(sessions(&b), 20);
    assert_eq!(b.second.service().0.held, a.second.service().0.held);
    // The replica carries the remaining flows on: each packet finds its session.
    for p in send(&mut b, &frames[20..]) {
        assert_eq!(p.meta.verdict, Verdict::Pass);
        assert!(p.meta.session.is_some());
    }
    assert_eq!(sessions(&b), 20, "no new session");
}
