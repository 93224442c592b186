//! Shared helpers for the nf example programs and the cross-implementation tests.
//!
//! The examples themselves are the binaries in `src/bin/`; this library holds what several of
//! them (and the tests that compare nf with `tshark`, `scapy` and the Linux kernel) share.

pub mod announce;
pub mod bfd;
pub mod bgp;
pub mod cli;
pub mod curl;
#[cfg(target_os = "linux")]
pub mod io;
pub mod ndp;
pub mod pcap;
pub mod prometheus;
#[cfg(target_os = "linux")]
pub mod router;
pub mod sync;
pub mod vtep;
pub mod workers;

/// The README's code blocks, compiled and run as doc tests so they stay true.
/// Reports counters kept as atomics by a thread of their own (a BGP, BFD or sync link's) to
/// a counter visitor, under `stage`.
pub(crate) fn visit_atomics(
    stage: &str,
    counters: &[(&str, &std::sync::atomic::AtomicU64)],
    f: &mut dyn FnMut(&str, &str, u64),
) {
    for (name, v) in counters {
        f(stage, name, v.load(std::sync::atomic::Ordering::Relaxed));
    }
}

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
