//! `nf_examples::io::xdp` against the Linux kernel: a veth pair in a network namespace this
//! test makes, an [`XdpPort`] on each end (the XDP program in the veth driver), frames sent
//! through one and received through the other — contents, order, headroom, many times the
//! rings' size, frames held while the port refills, and the receiving end going down and
//! coming back while frames are sent.
//!
//! The test re-runs itself inside the namespace (`ip netns exec NS <this test binary>`), so
//! its sockets and programs see only the namespace's interfaces.
#![cfg(target_os = "linux")]
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed setup step should fail the test"
)]

mod common;

use common::{seq_frame as frame, seq_frame_len as size_of_seq, seq_of};

use nf_core::Batch;
use nf_examples::io::xdp::{XdpConfig, XdpMode, XdpPort};
use nf_examples::io::{Interface, PollEvents, RingFrame, TxError, wait_fds};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

/// Set in the re-run inside the namespace.
const CHILD: &str = "NF_XDP_PORT_CHILD";
/// Sequence numbers of the frames sent during the outages (ignored by [`receive`]).
const OUTAGE: u32 = 100_000;

#[test]
fn xdp_ports_carry_frames_through_a_veth_pair_and_survive_link_flaps() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    if !common::is_root() {
        assert!(!common::in_ci(), "xdp_port needs root under CI=true");
        eprintln!("SKIP: xdp_port needs root (set CI=true to make this a failure)");
        return;
    }
    if !common::require("ip", &["-V"]) {
        return;
    }
    let text = common::rerun_in_veth_namespace(
        "nfxdp",
        ("xa", "xb"),
        "xdp_ports_carry_frames_through_a_veth_pair_and_survive_link_flaps",
        CHILD,
        "xdp_port: ok",
    );
    println!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("xdp_port"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Receives our frames into `got` (checking each) until `want` arrived or 1 s passed;
/// `keep` frames of each batch are held until the next call (the port must refill around
/// them).
fn receive(
    rx: &mut XdpPort,
    batch: &mut Batch<RingFrame>,
    held: &mut Vec<nf_core::Packet<RingFrame>>,
    got: &mut Vec<u32>,
    want: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut ev = [PollEvents::default(); 1];
    held.clear();
    while got.len() < want && Instant::now() < deadline {
        wait_fds([rx.as_fd()], 50, &mut ev).unwrap();
        rx.recv(batch);
        for mut p in batch.drain() {
            // The kernel's 256 bytes are in front of every frame.
            assert!(p.headroom() >= 256, "headroom {}", p.headroom());
            let Some(seq) = seq_of(p.data()) else {
                continue;
            };
            // The frames sent while the link was down (one of them probes it and goes out
            // when it is up).
            if seq >= OUTAGE {
                continue;
            }
            assert_eq!(
                p.data(),
                frame(seq, size_of_seq(seq)),
                "frame {seq} arrives intact"
            );
            // The headroom is ours to write: push a header in front, as encap does.
            p.push_front(50).unwrap();
            p.data_mut()[..8].copy_from_slice(b"pushed!!");
            assert_eq!(&p.data()[50..64], &frame(seq, 18)[..14]);
            got.push(seq);
            if seq % 97 == 0 && held.len() < 8 {
                held.push(p);
            }
        }
    }
}

fn send_all(tx: &mut XdpPort, from: u32, to: u32) -> u32 {
    let mut seq = from;
    while seq < to {
        match tx.send(&frame(seq, size_of_seq(seq))) {
            Ok(()) => seq += 1,
            Err(TxError::Full) => break,
            Err(e) => panic!("send {seq}: {e:?}"),
        }
    }
    tx.flush().unwrap();
    seq
}

fn child() {
    let a = Interface::by_name("xa").unwrap();
    let b = Interface::by_name("xb").unwrap();
    let mut cfg = XdpConfig::default();
    cfg.frames = 256;
    let mut tx = XdpPort::open(&a, &cfg).unwrap();
    let mut rx = XdpPort::open(&b, &cfg).unwrap();
    assert_eq!(rx.mode(), XdpMode::Driver, "veth runs XDP in its driver");
    let mut batch = Batch::new();
    let mut held = Vec::new();

    // 1. Many times the rings' size, in bursts: every frame arrives, in order, intact;
    //    chunks go back to the fill ring as frames are dropped, around the frames held.
    let total = 6000u32;
    let mut got = Vec::new();
    let mut seq = 0;
    while seq < total {
        let end = (seq + 128).min(total);
        seq = send_all(&mut tx, seq, end);
        receive(&mut rx, &mut batch, &mut held, &mut got, seq as usize);
    }
    assert!(
        got == (0..total).collect::<Vec<_>>(),
        "all frames, in order: {} of {total}, first missing {:?}",
        got.len(),
        (0..total).find(|s| !got.contains(s))
    );
    drop(held);
    rx.update_kernel_stats().unwrap();
    let c = rx.rx_counters();
    assert_eq!(
        (c.frames, c.kernel_drops, c.truncated),
        (u64::from(total), 0, 0),
        "{c:?}"
    );
    println!(
        "xdp_port: {total} frames through xa -> xb, {:?} mode",
        rx.mode()
    );

    // 2. The sending end goes down: the kernel refuses, the port counts one outage and
    //    drops what it is given; up again, frames flow and the outage ends.
    for round in 0..2 {
        let ip = |args: &[&str]| {
            assert!(Command::new("ip").args(args).status().unwrap().success());
        };
        ip(&["link", "set", "xa", "down"]);
        for s in 0..200 {
            let _ = tx.send(&frame(OUTAGE + s, 100));
            if s % 32 == 31 {
                tx.flush().unwrap();
            }
        }
        tx.flush().unwrap();
        ip(&["link", "set", "xa", "up"]);
        let t = tx.tx_counters();
        assert!(t.dropped_link_down >= 150, "round {round}: {t:?}");
        assert_eq!(tx.rx_counters().link_down, round + 1, "one outage counted");
        // The link needs a moment to be up on both ends.
        std::thread::sleep(Duration::from_millis(200));
        let mut got = Vec::new();
        let base = 10_000 * (round as u32 + 1);
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while got.iter().filter(|&&s| s >= base).count() < 100 && Instant::now() < deadline {
            send_all(&mut tx, base, base + 100);
            receive(&mut rx, &mut batch, &mut held, &mut got, 100);
            got.retain(|&s| (base..base + 100).contains(&s));
        }
        assert!(
            got.len() >= 100,
            "round {round}: frames flow after the outage: {}",
            got.len()
        );
        println!("xdp_port: outage {} survived: {t:?}", round + 1);
    }
    println!("xdp_port: ok");
}
