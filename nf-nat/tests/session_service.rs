//! The allocator inside nf-core's connection tracking, the way the SNAT service will use it:
//! `on_new` allocates and sets the reply key in the same call (the session is inserted with
//! its translation or not at all), replies to the public address and port find the session,
//! `on_end` releases, and a refusal leaves neither a session nor a port behind. (No header
//! rewriting here: that is the SNAT stage's job.)
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{
    Conntrack, ConntrackConfig, EndCause, NewFlow, SessionInfo, SessionService, Sizes,
};
use nf_core::wire::Frame;
use nf_core::{
    Batch, Direction, DropReason, Duration, Instant, Packet, ParseStage, Stage, StageControl,
    StageExt, Verdict,
};
use nf_nat::{AllocError, AllocatorConfig, Mapping, PortAllocator, Profile};

/// The allocator as a session service.
struct Snat {
    ports: PortAllocator,
    ended: Vec<EndCause>,
    refused: Vec<AllocError>,
}

impl SessionService for Snat {
    type Value = Mapping;

    fn on_new<B: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        _pkt: &Packet<B>,
        new: &mut NewFlow<'_>,
    ) -> Result<Mapping, DropReason> {
        let original = *new.original();
        let m = self.ports.allocate(now, &original).map_err(|e| {
            self.refused.push(e);
            DropReason::ServiceRefused
        })?;
        let reply = self.ports.reply_key(&original, m);
        // The allocator's tuples are unique; the table agrees.
        match reply {
            Some(r) if new.is_free(&r) && new.set_reply(r).is_ok() => Ok(m),
            _ => {
                let _ = self.ports.release(now, &original, m);
                Err(DropReason::ServiceRefused)
            }
        }
    }

    fn on_end(&mut self, now: Instant, s: &SessionInfo<Mapping>, cause: EndCause) {
        self.ended.push(cause);
        self.ports.release(now, &s.original, s.value).unwrap();
    }

    fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        self.ports.visit_counters("snat", f);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ports.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant, budget: usize) -> usize {
        self.ports.handle_timeout(now, budget)
    }
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Packet<Vec<u8>> {
    let frame = Frame::ipv4(src, dst)
        .udp(sport, dport)
        .payload(b"x")
        .to_vec()
        .unwrap();
    Packet::with_headroom(&frame, 64)
}

#[test]
fn allocator_as_session_service() {
    let cfg = AllocatorConfig::new(
        Profile::Hyperplane,
        vec!["203.0.113.1".parse().unwrap()],
        *b"snat service key",
    )
    .with_max_mappings(20);
    let snat = Snat {
        ports: PortAllocator::new(cfg).unwrap(),
        ended: Vec::new(),
        refused: Vec::new(),
    };
    let ct = ConntrackConfig::new(*b"conntrack secret").sizes(Sizes { v4: 256, v6: 64 });
    let mut pipeline = ParseStage::default().then(Conntrack::new(ct, snat).unwrap());
    let mut now = Instant::from_nanos(1_000_000_000);

    // 25 new flows to one DNS server: 20 fit, 5 are refused by the allocator's bound.
    let mut batch = Batch::new();
    for i in 0..25u8 {
        batch
            .push(udp([10, 0, 0, i], [198, 51, 100, 9], 40000, 53))
            .ok();
    }
    pipeline.process(now, &mut batch);
    let mut opened = Vec::new();
    for pkt in batch.drain() {
        match pkt.meta.verdict {
            Verdict::Pass => opened.push((pkt.meta.flow, pkt.meta.session.unwrap())),
            Verdict::Drop(r) => assert_eq!(r, DropReason::ServiceRefused),
            v => panic!("{v:?}"),
        }
    }
    let ct = &pipeline.second;
    assert_eq!((opened.len(), ct.len()), (20, 20));
    assert_eq!(ct.service().refused, vec![AllocError::CapacityFull; 5]);
    assert_eq!(ct.service().ports.len(), 20);

    // Every reply, to the public address and port, finds its session from the other side.
    let mut batch = Batch::new();
    for (flow, _) in &opened {
        let s = ct.lookup(flow).unwrap().session;
        let m = *ct.value(s).unwrap();
        let ip = match ct.service().ports.public_ip(m).unwrap() {
            core::net::IpAddr::V4(a) => a.octets(),
            core::net::IpAddr::V6(_) => unreachable!(),
        };
        batch.push(udp([198, 51, 100, 9], ip, 53, m.port())).ok();
    }
    pipeline.process(now, &mut batch);
    for (pkt, (_, session)) in batch.drain().zip(&opened) {
        assert_eq!(pkt.meta.verdict, Verdict::Pass);
        assert_eq!(pkt.meta.direction, Direction::Reply);
        assert_eq!(pkt.meta.session, Some(*session));
    }

    // Sessions expire: each port is released once and quarantined; then the quarantine ends.
    now += Duration::from_secs(600);
    while pipeline.poll_timeout().is_some_and(|t| t <= now) {
        pipeline.handle_timeout(now, 64);
    }
    let svc = pipeline.second.service();
    assert_eq!(svc.ended.len(), 20);
    assert!(svc.ended.iter().all(|&c| c == EndCause::Expired));
    assert_eq!((svc.ports.len(), svc.ports.quarantined()), (0, 20));
    now += Duration::from_secs(120);
    while pipeline.poll_timeout().is_some_and(|t| t <= now) {
        pipeline.handle_timeout(now, 64);
    }
    assert_eq!(pipeline.second.service().ports.quarantined(), 0);
    let mut names = Vec::new();
    pipeline.visit_counters(&mut |stage, name, v| {
        if stage == "snat" {
            names.push((name, v));
        }
    });
    assert!(names.contains(&("allocations", 20)));
    assert!(names.contains(&("releases", 20)));
    assert!(names.contains(&("alloc_error_capacity_full", 5)));
}
