//! Links every nf library crate into a `#![no_std]` program with its own panic handler and
//! a global allocator over the C library's `malloc`. If any crate (or a dependency with the
//! features we select) links `std`, this fails with a duplicate `panic_impl` lang item or
//! missing-`std` errors — which is the point.
#![no_std]
#![no_main]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::hint::black_box;
use nf_core::conntrack::{Conntrack, ConntrackConfig, Sizes};
use nf_core::{Batch, FlowHasher, Instant, Packet, ParseStage, Stage};

// The charter-only crates are linked too, so their no_std-ness is checked from day one.
extern crate nf_tunnel;

#[link(name = "c")]
unsafe extern "C" {
    fn malloc(size: usize) -> *mut u8;
    fn free(ptr: *mut u8);
    fn aligned_alloc(align: usize, size: usize) -> *mut u8;
    fn abort() -> !;
}

struct LibcAlloc;

// SAFETY: malloc/aligned_alloc return suitably aligned memory or null, and free releases
// exactly what they returned; Layout guarantees a non-zero power-of-two alignment.
unsafe impl GlobalAlloc for LibcAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= 16 {
            // SAFETY: plain C allocation of layout.size() bytes.
            unsafe { malloc(layout.size()) }
        } else {
            // SAFETY: aligned_alloc requires size to be a multiple of align; round up.
            unsafe {
                aligned_alloc(
                    layout.align(),
                    layout.size().next_multiple_of(layout.align()),
                )
            }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: ptr came from alloc above.
        unsafe { free(ptr) }
    }
}

#[global_allocator]
static ALLOC: LibcAlloc = LibcAlloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: abort never returns and has no preconditions.
    unsafe { abort() }
}

/// The prebuilt `alloc` refers to the unwinding personality routine; with `panic = "abort"`
/// nothing unwinds, so it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// The C runtime's entry point calls this.
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    let frame: [u8; 42] = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17,
        0x26, 0xcf, 10, 0, 0, 1, 10, 0, 0, 2, 0x03, 0xe8, 0, 53, 0, 8, 0, 0,
    ];
    let mut batch: Batch<[u8; 42]> = Batch::new();
    if let Ok(p) = Packet::new(frame, 0, frame.len()) {
        let _ = batch.push(p);
    }
    let mut parse = ParseStage::default();
    parse.process(Instant::ZERO, &mut batch);
    // Connection tracking with the empty session service: tables, fragment table, stage.
    let cfg = ConntrackConfig::new([2; 16]).sizes(Sizes { v4: 64, v6: 64 });
    let tracked = Conntrack::new(cfg, ()).is_ok_and(|mut ct| {
        ct.process(Instant::ZERO, &mut batch);
        batch
            .packets()
            .first()
            .is_some_and(|p| p.meta.session.is_some())
    });
    let h = FlowHasher::new([1; 16]);
    let ok = batch
        .packets()
        .first()
        .is_some_and(|p| p.meta.verdict.is_pass());
    let hash = batch
        .packets()
        .first()
        .map_or(0, |p| h.symmetric(&p.meta.flow));
    black_box(hash);
    let placed = shuffle(hash);
    let natted = nat(batch.packets().first().map(|p| p.meta.flow));
    let balanced = maglev(hash);
    let routed = route();
    let limited = limit();
    if ok && placed && tracked && natted && balanced && routed && limited {
        0
    } else {
        1
    }
}

/// Places a tenant on 3 of 12 nodes in 3 zones and picks a node for the flow.
fn shuffle(flow_hash: u64) -> bool {
    use nf_shuffle::{Membership, Node, ShardConfig, ShardKey, Sharder};
    let Ok(fleet) = Membership::new((0..12).map(|i| Node::new(i, (i % 3) as u32))) else {
        return false;
    };
    let Ok(sharder) = Sharder::new(ShardKey::new([7; 16]), ShardConfig::new(3), fleet) else {
        return false;
    };
    match sharder.shard(b"tenant", 1) {
        Ok(shard) => shard.len() == 3 && shard.node_for_flow(flow_hash).is_some(),
        Err(_) => false,
    }
}

/// Maps the parsed flow with the hyperplane port allocator, releases it, and lets the
/// quarantine run out.
fn nat(flow: Option<nf_core::FlowKey>) -> bool {
    use core::net::{IpAddr, Ipv4Addr};
    use nf_nat::{AllocatorConfig, PortAllocator, Profile};
    let Some(flow) = flow else {
        return false;
    };
    let public = alloc::vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))];
    let cfg = AllocatorConfig::new(Profile::Hyperplane, public, [3; 16]).with_max_mappings(64);
    let Ok(mut nat) = PortAllocator::new(cfg) else {
        return false;
    };
    let Ok(m) = nat.allocate(Instant::ZERO, &flow) else {
        return false;
    };
    let reply = nat.reply_key(&flow, m);
    let released = nat.release(Instant::ZERO, &flow, m).is_ok();
    let later = Instant::from_nanos(200_000_000_000);
    released && reply.is_some() && nat.handle_timeout(later, 8) == 1
}

/// Builds a small weighted Maglev table (one backend draining), looks the flow up, and asks a
/// rendezvous ECMP group for a next hop.
fn maglev(flow_hash: u64) -> bool {
    use nf_lb::{Backend, BackendId, EcmpGroup, LbKey, MaglevTable};
    let key = LbKey::new([9; 16]);
    let backends = [
        Backend::new(BackendId::v4([10, 0, 0, 1], 80), 1),
        Backend::new(BackendId::v4([10, 0, 0, 2], 80), 2),
        Backend::new(BackendId::v4([10, 0, 0, 3], 80), 1).draining(),
    ];
    let Ok(table) = MaglevTable::new(&key, 1_009, &backends) else {
        return false;
    };
    let Ok(group) = EcmpGroup::new(&key, &backends) else {
        return false;
    };
    let serving = table.backend(flow_hash).is_some_and(Backend::is_serving);
    serving && group.choose(flow_hash) < 2
}

/// Routes an IPv4 and an IPv6 destination through a small per-zone route table.
fn route() -> bool {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use nf_core::ZoneId;
    use nf_policy::{Ipv4Lpm, Ipv6Lpm, RouteTable, RouteTables};
    let Ok(v4) = Ipv4Lpm::from_routes([
        (Ipv4Addr::new(10, 0, 0, 0), 8, 1),
        (Ipv4Addr::new(10, 1, 0, 0), 16, 2),
    ]) else {
        return false;
    };
    let Ok(v6) = Ipv6Lpm::from_routes([(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 8, 3)]) else {
        return false;
    };
    let mut tables = RouteTables::new();
    tables.insert(ZoneId(1), RouteTable::new(v4, v6));
    let a = tables.route(ZoneId(1), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
    let b = tables.route(
        ZoneId(1),
        IpAddr::V6(Ipv6Addr::new(0xfd12, 0, 0, 0, 0, 0, 0, 1)),
    );
    black_box(a) == Some(2) && black_box(b) == Some(3)
}

/// Meters, the elastic credit limiter and the per-source table on a fixed clock.
fn limit() -> bool {
    use core::net::{IpAddr, Ipv4Addr};
    use nf_policy::{
        Color, ElasticConfig, ElasticDimension, ElasticLimiter, IpLimit, SourceLimitConfig,
        SourceLimits, SrTcm, SrTcmConfig,
    };
    let Ok(mut m) = SrTcm::new(SrTcmConfig::new(1000, 1500, 1500), Instant::ZERO) else {
        return false;
    };
    let colours = [m.meter(Instant::ZERO, 1000), m.meter(Instant::ZERO, 1000)];
    let mut e = ElasticLimiter::new(
        ElasticConfig::new().with_bytes(ElasticDimension::new(1_000_000, 1_000_000)),
        Instant::ZERO,
    );
    let admitted = e.admit(Instant::ZERO, 1500, 1, true).is_admitted();
    let Ok(mut t) = SourceLimits::new(SourceLimitConfig::new(16, [3; 16])) else {
        return false;
    };
    let src = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let blocked =
        t.set(Instant::ZERO, src, IpLimit::mbps(0)).is_ok() && !t.admit(Instant::ZERO, src, 64);
    black_box(colours) == [Color::Green, Color::Yellow] && admitted && blocked
}
