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
