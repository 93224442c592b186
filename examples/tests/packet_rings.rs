//! `nf_examples::io` against the Linux kernel: a veth pair in a network namespace this test
//! makes, frames sent through a transmit ring on one end and received through a receive ring
//! on the other — contents, order, headroom, ring wrap-around, frames held across the wrap,
//! and the interfaces going down and coming back.
//!
//! The test re-runs itself inside the namespace (`ip netns exec NS <this test binary>`), so
//! its sockets see only the namespace's interfaces.
#![cfg(target_os = "linux")]
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed setup step should fail the test"
)]

mod common;

use common::{seq_frame as frame, seq_frame_len as size_of_seq, seq_of};

use nf_core::Batch;
use nf_examples::io::{
    Interface, PollEvents, RingConfig, RingFrame, RxRing, TxError, TxRing, wait,
};
use std::process::Command;
use std::time::{Duration, Instant};

/// Set in the re-run inside the namespace.
const CHILD: &str = "NF_PACKET_RINGS_CHILD";
/// Sequence numbers of the flood in part 2 (ignored by [`receive`]).
const FLOOD: u32 = 200_000;

#[test]
fn rings_carry_frames_through_a_veth_pair_and_survive_link_flaps() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    if !common::is_root() {
        assert!(!common::in_ci(), "packet_rings needs root under CI=true");
        eprintln!("SKIP: packet_rings needs root (set CI=true to make this a failure)");
        return;
    }
    if !common::require("ip", &["-V"]) {
        return;
    }
    common::rerun_in_veth_namespace(
        "nfring",
        ("ra", "rb"),
        "rings_carry_frames_through_a_veth_pair_and_survive_link_flaps",
        CHILD,
        "packet_rings: ok",
    );
}

/// Receives our frames into `got` (checking each) until `want` arrived or 3 s passed.
fn receive(
    rx: &mut RxRing,
    batch: &mut Batch<RingFrame>,
    got: &mut Vec<u32>,
    want: usize,
    headroom: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut ev = [PollEvents::default(); 1];
    while got.len() < want && Instant::now() < deadline {
        wait(&[&*rx], 50, &mut ev).unwrap();
        rx.recv(batch);
        for mut p in batch.drain() {
            assert!(
                p.headroom() >= headroom,
                "headroom {} < {headroom}",
                p.headroom()
            );
            let Some(seq) = seq_of(p.data()) else {
                continue;
            };
            if (FLOOD..FLOOD + 100_000).contains(&seq) {
                continue;
            }
            assert_eq!(
                p.data(),
                frame(seq, size_of_seq(seq)),
                "frame {seq} arrives intact"
            );
            // The headroom is ours to write: push a header in front, as encap does.
            p.push_front(8).unwrap();
            p.data_mut()[..8].copy_from_slice(b"pushed!!");
            assert_eq!(&p.data()[8..22], &frame(seq, 22)[..14]);
            got.push(seq);
        }
    }
}

fn child() {
    let a = Interface::by_name("ra").unwrap();
    let b = Interface::by_name("rb").unwrap();
    let mut cfg = RingConfig::default();
    cfg.rx_slots = 512;
    cfg.tx_slots = 256;
    let mut tx = TxRing::open(&a, &cfg).unwrap();
    let mut rx = RxRing::open(&b, &cfg).unwrap();
    let mut batch = Batch::new();

    // 1. Many times the receive ring's size, in bursts the transmit ring holds: every frame
    //    arrives, in order, intact; slots go back to the kernel as batches are dropped.
    let total = 6000u32;
    let mut got = Vec::new();
    let mut seq = 0;
    while seq < total {
        let burst_end = (seq + 128).min(total);
        while seq < burst_end {
            match tx.send(&frame(seq, size_of_seq(seq))) {
                Ok(()) => seq += 1,
                Err(TxError::Full) => break,
                Err(e) => panic!("send {seq}: {e:?}"),
            }
        }
        tx.flush().unwrap();
        receive(
            &mut rx,
            &mut batch,
            &mut got,
            seq as usize,
            cfg.headroom as usize,
        );
    }
    rx.update_kernel_stats().unwrap();
    let c = rx.counters();
    let missing: Vec<u32> = (0..total).filter(|s| !got.contains(s)).take(20).collect();
    assert!(
        got.len() == total as usize && got.is_sorted() && missing.is_empty(),
        "all frames, in order: {} of {total}, first missing {missing:?}, {c:?}",
        got.len()
    );
    assert_eq!(c.stalls, 0, "no frame was held: {c:?}");
    assert_eq!(tx.counters().queued, u64::from(total));

    // 2. Frames held across a flood: the ring stalls (the kernel drops and counts) but the
    //    held bytes never change; dropping them lets traffic through again.
    rx.update_kernel_stats().unwrap();
    for s in 0..8 {
        tx.send(&frame(100_000 + s, 200)).unwrap();
    }
    tx.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    rx.recv(&mut batch);
    let held: Vec<_> = batch.drain().collect();
    assert!(!held.is_empty());
    let before: Vec<Vec<u8>> = held.iter().map(|p| p.data().to_vec()).collect();
    for s in 0..4000 {
        if tx.send(&frame(FLOOD + s, 1000)).is_err() {
            tx.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        // Keep receiving while holding: the slots of `held` cannot go back.
        if s % 64 == 0 {
            rx.recv(&mut batch);
            batch.clear();
        }
    }
    tx.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    rx.recv(&mut batch);
    batch.clear();
    for (p, b) in held.iter().zip(&before) {
        assert_eq!(p.data(), &b[..], "a held frame's bytes never change");
    }
    rx.update_kernel_stats().unwrap();
    assert!(
        rx.counters().kernel_drops > 0,
        "a stalled ring drops in the kernel: {:?}",
        rx.counters()
    );
    drop(held);
    for _ in 0..20 {
        rx.recv(&mut batch);
        batch.clear();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut again = Vec::new();
    tx.send(&frame(7, size_of_seq(7))).unwrap();
    tx.flush().unwrap();
    receive(&mut rx, &mut batch, &mut again, 1, 0);
    assert_eq!(
        again,
        [7],
        "traffic flows again once the held frames are dropped"
    );

    // 2b. Frames detached (copied out, their slots given back at once, as a stage holding
    //     an out-of-order fragment does) are kept across several rings' worth of traffic:
    //     nothing stalls, every frame arrives, the kept bytes never change.
    for s in 0..8 {
        tx.send(&frame(200_000 + s, 300)).unwrap();
    }
    tx.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    rx.recv(&mut batch);
    let kept: Vec<(Vec<u8>, nf_core::Packet<RingFrame>)> = batch
        .drain()
        .map(|p| {
            let want = p.data().to_vec();
            let (mut f, head, len) = p.into_parts();
            f.detach();
            assert!(f.is_detached());
            (want, nf_core::Packet::new(f, head, len).unwrap())
        })
        .collect();
    assert!(!kept.is_empty());
    let stalls = rx.counters().stalls;
    let (mut got, mut seq) = (Vec::new(), 400_000u32);
    while seq < 402_048 {
        let burst_end = seq + 128;
        while seq < burst_end {
            match tx.send(&frame(seq, size_of_seq(seq))) {
                Ok(()) => seq += 1,
                Err(TxError::Full) => break,
                Err(e) => panic!("send {seq}: {e:?}"),
            }
        }
        tx.flush().unwrap();
        let want = (seq - 400_000) as usize;
        receive(&mut rx, &mut batch, &mut got, want, 0);
    }
    assert_eq!(got.len(), 2048, "{:?}", rx.counters());
    assert_eq!(rx.counters().stalls, stalls, "detached frames hold no slot");
    for (want, p) in &kept {
        assert_eq!(p.data(), &want[..], "a detached frame's bytes never change");
    }
    drop(kept);

    // 3. Link flaps: the transmit side drops (and counts) what it cannot send, the receive
    //    side reports ENETDOWN once, and both carry traffic again once the links are up.
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success());
    for round in 0..2u32 {
        ip(&["link", "set", "ra", "down"]);
        ip(&["link", "set", "rb", "down"]);
        for s in 0..10 {
            tx.send(&frame(s, 100)).unwrap();
        }
        tx.flush().unwrap();
        let mut ev = [PollEvents::default(); 1];
        wait(&[&rx], 500, &mut ev).unwrap();
        assert!(
            ev[0].error,
            "round {round}: the receive ring reports the link going down"
        );
        let e = rx.take_error().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENETDOWN), "{e}");
        assert!(rx.take_error().is_none(), "the error is reported once");
        ip(&["link", "set", "ra", "up"]);
        ip(&["link", "set", "rb", "up"]);
        // veth needs both ends up for carrier; give it a moment.
        std::thread::sleep(Duration::from_millis(100));
        let mut after = Vec::new();
        let base = 300_000 + round * 100;
        for s in base..base + 50 {
            tx.send(&frame(s, size_of_seq(s))).unwrap();
        }
        tx.flush().unwrap();
        receive(&mut rx, &mut batch, &mut after, 50, 0);
        rx.update_kernel_stats().unwrap();
        assert!(
            after == (base..base + 50).collect::<Vec<_>>(),
            "round {round}: traffic recovers: {after:?} {:?} {:?}",
            rx.counters(),
            tx.counters()
        );
    }
    assert_eq!(rx.counters().link_down, 2);
    assert_eq!(tx.counters().dropped_link_down, 20, "{:?}", tx.counters());
    println!(
        "packet_rings: ok ({:?}, {:?})",
        rx.counters(),
        tx.counters()
    );
}
