//! Everything is allocated by `PortAllocator::new`: allocations, releases, block events,
//! quarantine and timers never touch the heap afterwards (every profile, RSS steering on).
#![expect(
    unsafe_code,
    reason = "a counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to System"
)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};
use nf_core::flow::proto;
use nf_core::{Duration, FlowKey, Instant, ZoneId};
use nf_nat::{AllocatorConfig, CgnSettings, Owner, PortAllocator, Profile, RssSteering};
use std::alloc::System;

struct Counting;

std::thread_local! {
    /// Counting on this thread only (the test harness's own threads allocate as they like).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCS: AtomicU64 = AtomicU64::new(0);

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards every call unchanged to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn no_heap_allocation_after_new() {
    let steered = AllocatorConfig::new(
        Profile::Hyperplane,
        vec!["203.0.113.1".parse().unwrap()],
        [1; 16],
    )
    .with_owner(Owner {
        nodes: 2,
        cores: 4,
        node: 1,
        core: 2,
    })
    .with_steering(RssSteering::new(4));
    let configs = [
        AllocatorConfig::new(Profile::Rfc, vec!["203.0.113.1".parse().unwrap()], [1; 16]),
        AllocatorConfig::new(
            Profile::Hyperplane,
            vec![
                "203.0.113.1".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ],
            [1; 16],
        ),
        AllocatorConfig::new(
            Profile::Cgn(
                CgnSettings::new()
                    .with_block_size(64)
                    .with_event_capacity(8),
            ),
            vec!["203.0.113.1".parse().unwrap()],
            [1; 16],
        ),
        steered,
    ];
    for cfg in configs {
        let mut n = PortAllocator::new(cfg.with_max_mappings(4096)).unwrap();
        let flows: Vec<FlowKey> = (0..3000u32)
            .map(|i| {
                let [_, a, b, c] = i.to_be_bytes();
                FlowKey::v4(
                    ZoneId(0),
                    [10, a, b, c % 16],
                    [198, 51, 100, c],
                    proto::TCP,
                    40000 + (i % 7) as u16,
                    443,
                )
            })
            .collect();
        let mut maps = Vec::with_capacity(flows.len());
        let mut phases = [0u64; 9];
        COUNTING.set(true);
        let mut now = Instant::from_nanos(1);
        for round in 0..3 {
            maps.clear();
            for f in &flows {
                maps.push(n.allocate(now, f).ok());
            }
            phases[round as usize * 3] = ALLOCS.load(Ordering::SeqCst);
            for (f, m) in flows.iter().zip(&maps) {
                if let Some(m) = m {
                    n.release(now, f, *m).unwrap();
                }
            }
            phases[round as usize * 3 + 1] = ALLOCS.load(Ordering::SeqCst);
            while n.pop_block_event().is_some() {}
            now += Duration::from_secs(121 + round);
            while n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now, 100);
            }
            phases[round as usize * 3 + 2] = ALLOCS.load(Ordering::SeqCst);
        }
        COUNTING.set(false);
        ALLOCS.store(0, Ordering::SeqCst);
        assert_eq!(
            phases,
            [0; 9],
            "heap allocations after each phase, {:?}",
            n.profile()
        );
        assert!(n.counters().allocations > 2000, "{:?}", n.counters());
        assert_eq!((n.len(), n.quarantined()), (0, 0));
    }
}

/// The SNAT service inside conntrack translates packets without touching the heap: new
/// outbound flows of both families (mapping, reply key, IPv6 store, the endpoint-independent
/// owners table), port forwards, hairpins to forwards and to mappings (the peer store),
/// unsolicited inbound packets, segments answered
/// with an idle RST, session ends, and nf-core's PMTU stage answering `too_big` drops.
#[test]
fn snat_packets_do_not_allocate() {
    use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
    use nf_core::wire::Frame;
    use nf_core::{Batch, Packet, ParseStage, Stage, StageControl, StageExt};
    use nf_nat::{Filtering, InsidePrefix, PortForward, Snat, SnatConfig};
    let public4: core::net::IpAddr = "203.0.113.1".parse().unwrap();
    let public6: core::net::IpAddr = "2001:db8::1".parse().unwrap();
    let alloc =
        AllocatorConfig::new(Profile::Rfc, vec![public4, public6], [2; 16]).with_max_mappings(4096);
    let web = PortForward::new(
        proto::TCP,
        core::net::SocketAddr::new(public4, 8080),
        "10.0.0.1:80".parse().unwrap(),
    );
    let cfg = SnatConfig::new(alloc)
        .with_inside(InsidePrefix::new("10.0.0.0".parse().unwrap(), 8))
        .with_inside(InsidePrefix::new("fd00::".parse().unwrap(), 8))
        .with_forward(web)
        .with_filtering(Filtering::EndpointIndependent)
        .with_idle_reset(Some(nf_core::PortId(0)));
    let ct = ConntrackConfig::new([3; 16]).sizes(Sizes { v4: 4096, v6: 1024 });
    let mut nat = ParseStage::default().then(Conntrack::new(ct, Snat::new(cfg).unwrap()).unwrap());

    let (p4, in6, p6, r6) = (
        [203, 0, 113, 1],
        {
            let mut a = [0u8; 16];
            a[0] = 0xfd;
            a[15] = 5;
            a
        },
        {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 1, 0x0d, 0xb8]);
            a[15] = 1;
            a
        },
        {
            let mut a = [0u8; 16];
            a[0] = 0x26;
            a[15] = 9;
            a
        },
    );
    // Four rounds of frames, all built before counting.
    let build = |round: u8| -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for i in 0..16u8 {
            let inside = [10, 0, round, i];
            v.push(
                Frame::ipv4(inside, [198, 51, 100, i])
                    .udp(5000, 53)
                    .to_vec()
                    .unwrap(),
            );
            v.push(
                Frame::ipv4(inside, [198, 51, 100, i])
                    .tcp(6000, 443, 0x02)
                    .to_vec()
                    .unwrap(),
            );
            v.push(
                Frame::ipv6(in6, r6)
                    .udp(7000 + u16::from(i) + 16 * u16::from(round), 53)
                    .to_vec()
                    .unwrap(),
            );
            v.push(
                Frame::ipv4([198, 51, 100, 7], p4)
                    .tcp(40000 + u16::from(i), 8080, 0x02)
                    .to_vec()
                    .unwrap(),
            );
            v.push(
                Frame::ipv4([10, 0, 9, i], p4)
                    .tcp(41000 + u16::from(round), 8080, 0x02)
                    .to_vec()
                    .unwrap(),
            );
            v.push(
                Frame::ipv4([198, 51, 100, 7], p4)
                    .udp(53, 1000 + u16::from(i))
                    .to_vec()
                    .unwrap(),
            );
            v.push(
                Frame::ipv6(r6, p6)
                    .udp(53, 2000 + u16::from(i))
                    .to_vec()
                    .unwrap(),
            );
            // No session: answered with a RST.
            v.push(
                Frame::ipv4(inside, [198, 51, 100, i])
                    .tcp(6001, 443, 0x10)
                    .to_vec()
                    .unwrap(),
            );
        }
        v
    };
    let rounds: Vec<Vec<Vec<u8>>> = (0..4).map(build).collect();
    let mut batches: Vec<Batch<Vec<u8>>> = Vec::new();
    for frames in &rounds {
        for chunk in frames.chunks(64) {
            let mut b = Batch::new();
            for f in chunk {
                b.push(Packet::with_headroom(f, 64)).ok().unwrap();
            }
            batches.push(b);
        }
    }
    let mut now = Instant::from_nanos(1_000_000_000);
    // Warm up on the first batch (nothing in the stages grows, but be fair to lazy state).
    let mut first = batches.remove(0);
    nat.process(now, &mut first);
    // Hairpins to the mappings the first batch made (UDP from 10.0.0.i:5000), from other
    // inside hosts.
    let mut pins: Batch<Vec<u8>> = Batch::new();
    let mut pin_frames = Vec::new();
    for p in first.packets() {
        let ip = &p.data()[usize::from(p.meta.l3)..];
        if ip[9] == 17 && ip[12..16] == p4 {
            let port = u16::from_be_bytes([ip[20], ip[21]]);
            let from = [10, 0, 8, pin_frames.len() as u8];
            pin_frames.push(Frame::ipv4(from, p4).udp(9000, port).to_vec().unwrap());
        }
    }
    assert!(pin_frames.len() >= 4);
    for f in &pin_frames {
        pins.push(Packet::with_headroom(f, 64)).ok().unwrap();
    }
    batches.push(pins);
    let mut too_big: Batch<Vec<u8>> = Batch::new();
    let big = Frame::ipv4([10, 0, 0, 1], [198, 51, 100, 1])
        .udp(1, 2)
        .payload(&[0; 1472])
        .to_vec()
        .unwrap();
    for _ in 0..8 {
        too_big.push(Packet::with_headroom(&big, 64)).ok().unwrap();
    }
    let mut parse = ParseStage::default();
    parse.process(now, &mut too_big);
    for i in 0..8 {
        too_big.set_verdict(i, nf_core::Verdict::Drop(nf_core::DropReason::TooBig));
    }
    let origin = nf_core::reply::IcmpOrigin::new(Some(public4), Some(public6), nf_core::PortId(0));
    let mut pmtu = nf_core::reply::PmtuStage::new(1400, origin);
    COUNTING.set(true);
    for b in &mut batches {
        nat.process(now, b);
    }
    pmtu.process(now, &mut too_big);
    // Every session ends: mappings released, IPv6 store slots and owners freed.
    now += Duration::from_secs(4000);
    while nat.poll_timeout().is_some_and(|t| t <= now) {
        nat.handle_timeout(now, 256);
    }
    COUNTING.set(false);
    let allocs = ALLOCS.swap(0, Ordering::SeqCst);
    assert_eq!(allocs, 0, "heap allocations while translating");
    let mut translated = 0;
    nat.visit_counters(&mut |stage, name, v| {
        if stage == "snat"
            && (name == "flows_translated"
                || name == "flows_forwarded"
                || name == "flows_hairpinned")
        {
            translated += v;
        }
    });
    assert!(translated > 100, "{translated}");
    assert!(nat.second.service().counters().flows_hairpinned >= 4 + 16);
    assert_eq!(nat.second.service().counters().idle_timeout_resets, 64);
    assert_eq!(pmtu.pmtu_counters().sent, 8);
    assert_eq!(nat.second.len(), 0);
}
