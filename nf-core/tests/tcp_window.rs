//! TCP window tracking through `Conntrack<TcpWindow>`: scripted exchanges (packetdrill
//! style: one line per segment, its direction, flags, sequence numbers, window, options and
//! the expected verdict) over real frames built by `wire::Frame` and parsed by `ParseStage`.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::conntrack::{
    Conntrack, ConntrackConfig, SessionState, TcpCreate, TcpWindow, ZonePolicy,
};
use nf_core::wire::tcp::tcp_flags::{ACK, FIN, RST, SYN};
use nf_core::wire::{Frame, TransportRepr};
use nf_core::{
    Batch, DropReason, Instant, Packet, ParseStage, Stage, StageControl, StageExt, Verdict, ZoneId,
};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
/// Client and server initial sequence numbers (near the wrap, so arithmetic wraps).
const ISN_A: u32 = 0xffff_ff00;
const ISN_B: u32 = 5000;

type Pipeline = nf_core::Chain<ParseStage, Conntrack<TcpWindow>>;

fn pipeline(window: TcpWindow, pickup: bool) -> Pipeline {
    let mut ct = Conntrack::new(ConntrackConfig::new(*b"window tracking!"), window).unwrap();
    if pickup {
        let mut p = ZonePolicy::default();
        p.tcp = TcpCreate::Any;
        ct.set_zone_policy(ZoneId(0), p);
    }
    ParseStage::default().then(ct)
}

/// One scripted segment.
#[derive(Clone, Copy)]
struct Seg {
    /// From the client (A) to the server (B)?
    from_a: bool,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    len: usize,
    /// Window scale option (SYN only).
    wscale: Option<u8>,
    /// One SACK block (left, right).
    sack: Option<(u32, u32)>,
}

fn a(flags: u8, seq: u32, ack: u32) -> Seg {
    Seg {
        from_a: true,
        flags,
        seq,
        ack,
        window: 1000,
        len: 0,
        wscale: None,
        sack: None,
    }
}

fn b(flags: u8, seq: u32, ack: u32) -> Seg {
    Seg {
        from_a: false,
        ..a(flags, seq, ack)
    }
}

impl Seg {
    fn len(mut self, n: usize) -> Self {
        self.len = n;
        self
    }
    fn wscale(mut self, s: u8) -> Self {
        self.wscale = Some(s);
        self
    }
    fn sack(mut self, l: u32, r: u32) -> Self {
        self.sack = Some((l, r));
        self
    }

    fn frame(&self) -> Vec<u8> {
        let (src, dst, sp, dp) = if self.from_a {
            (A, B, 40000, 80)
        } else {
            (B, A, 80, 40000)
        };
        let payload = vec![0x5a; self.len];
        let mut f = Frame::ipv4(src, dst)
            .tcp(sp, dp, self.flags)
            .payload(&payload);
        if let TransportRepr::Tcp(t) = &mut f.transport {
            (t.seq, t.ack, t.window) = (self.seq, self.ack, self.window);
            let mut opts = Vec::new();
            if let Some(s) = self.wscale {
                opts.extend_from_slice(&[1, 3, 3, s]);
            }
            if let Some((l, r)) = self.sack {
                opts.extend_from_slice(&[1, 1, 5, 10]);
                opts.extend_from_slice(&l.to_be_bytes());
                opts.extend_from_slice(&r.to_be_bytes());
            }
            t.options[..opts.len()].copy_from_slice(&opts);
            t.options_len = opts.len() as u8;
        }
        f.to_vec().unwrap()
    }
}

fn send(p: &mut Pipeline, s: Seg) -> Verdict {
    let mut batch = Batch::new();
    batch
        .push(Packet::with_headroom(&s.frame(), 0))
        .ok()
        .unwrap();
    p.process(Instant::from_nanos(1_000_000), &mut batch);
    batch.packets()[0].meta.verdict
}

/// Runs `(segment, expected verdict)` lines; panics naming the first line that differs.
fn script(p: &mut Pipeline, lines: &[(Seg, Verdict)]) {
    for (i, (s, want)) in lines.iter().enumerate() {
        let got = send(p, *s);
        assert_eq!(
            got, *want,
            "line {i}: flags {:#x} seq {} ack {}",
            s.flags, s.seq, s.ack
        );
    }
}

const PASS: Verdict = Verdict::Pass;
const OUT: Verdict = Verdict::Drop(DropReason::TcpOutOfWindow);
const BAD_RST: Verdict = Verdict::Drop(DropReason::TcpRstOutOfWindow);

fn handshake() -> [(Seg, Verdict); 3] {
    [
        (a(SYN, ISN_A, 0), PASS),
        (b(SYN | ACK, ISN_B, ISN_A.wrapping_add(1)), PASS),
        (a(ACK, ISN_A.wrapping_add(1), ISN_B + 1), PASS),
    ]
}

fn session_state(p: &Pipeline) -> SessionState {
    let ct = &p.second;
    let key = nf_core::FlowKey::v4(ZoneId(0), A, B, 6, 40000, 80);
    ct.info(ct.lookup(&key).unwrap().session).unwrap().state
}

#[test]
fn data_inside_the_window_passes_and_injection_outside_it_fails() {
    let mut p = pipeline(TcpWindow::new(), false);
    script(&mut p, &handshake());
    let (sa, sb) = (ISN_A.wrapping_add(1), ISN_B + 1);
    script(
        &mut p,
        &[
            // 500 bytes each way, acknowledged.
            (a(ACK, sa, sb).len(500), PASS),
            (b(ACK, sb, sa.wrapping_add(500)).len(500), PASS),
            (a(ACK, sa.wrapping_add(500), sb + 500), PASS),
            // A retransmission of the first 500 bytes: old, but within a window.
            (a(ACK, sa, sb + 500).len(500), PASS),
            // The server offered 1000 bytes from sa+500: a segment starting at its right
            // edge passes; one starting a byte beyond does not.
            (a(ACK, sa.wrapping_add(1500), sb + 500).len(1), PASS),
            (a(ACK, sa.wrapping_add(1502), sb + 500).len(10), OUT),
            // Blind injection far away, from either side.
            (a(ACK, sa.wrapping_add(1 << 30), sb + 500).len(100), OUT),
            (b(ACK, sb + 2_000_000, sa.wrapping_add(500)).len(100), OUT),
            // Acknowledging data the server never sent, or a hopelessly old acknowledgment.
            // (The client has sent up to sa+1501; its acknowledgments start inside the window.)
            (a(ACK, sa.wrapping_add(1500), sb + 600), OUT),
            (a(ACK, sa.wrapping_add(1500), sb.wrapping_sub(100_000)), OUT),
            // Older than a whole window: dropped.
            (a(ACK, sa.wrapping_sub(3000), sb + 500).len(10), OUT),
        ],
    );
    let c = *p.second.service().counters();
    assert_eq!(
        (
            c.seq_beyond_window,
            c.ack_unsent,
            c.ack_too_old,
            c.seq_too_old
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(p.second.stats().service_rejected, 6);
    assert_eq!(session_state(&p), SessionState::TcpEstablished);
}

#[test]
fn a_reset_outside_the_window_leaves_the_session_alone() {
    let mut p = pipeline(TcpWindow::new(), false);
    script(&mut p, &handshake());
    let (sa, sb) = (ISN_A.wrapping_add(1), ISN_B + 1);
    script(
        &mut p,
        &[
            (b(RST, sb + 100_000, 0), BAD_RST),
            (a(RST | ACK, sa.wrapping_sub(70_000), sb), BAD_RST),
        ],
    );
    assert_eq!(session_state(&p), SessionState::TcpEstablished);
    assert_eq!(p.second.service().counters().rst_dropped, 2);
    // Data still flows; then the real reset, in the window, closes the session.
    script(
        &mut p,
        &[(a(ACK, sa, sb).len(10), PASS), (b(RST, sb, 0), PASS)],
    );
    assert_eq!(session_state(&p), SessionState::TcpClosed);
}

#[test]
fn window_scaling_counts_only_when_both_syns_offer_it() {
    let (sa, sb) = (ISN_A.wrapping_add(1), ISN_B + 1);
    // Both offer scaling: the server's window of 1000 means 1000 << 4 = 16000 bytes.
    let mut p = pipeline(TcpWindow::new(), false);
    script(
        &mut p,
        &[
            (a(SYN, ISN_A, 0).wscale(7), PASS),
            (b(SYN | ACK, ISN_B, sa).wscale(4), PASS),
            (a(ACK, sa, sb), PASS),
            (b(ACK, sb, sa), PASS), // a scaled window update: 1000 << 4
            (a(ACK, sa.wrapping_add(15_000), sb).len(10), PASS),
            (a(ACK, sa.wrapping_add(16_100), sb).len(10), OUT),
        ],
    );
    // The server does not answer with the option: no scaling either way.
    let mut p = pipeline(TcpWindow::new(), false);
    script(
        &mut p,
        &[
            (a(SYN, ISN_A, 0).wscale(7), PASS),
            (b(SYN | ACK, ISN_B, sa), PASS),
            (a(ACK, sa, sb), PASS),
            (b(ACK, sb, sa), PASS),
            (a(ACK, sa.wrapping_add(900), sb).len(10), PASS),
            (a(ACK, sa.wrapping_add(15_000), sb).len(10), OUT),
        ],
    );
}

#[test]
fn sack_blocks_count_as_acknowledgments() {
    let mut p = pipeline(TcpWindow::new(), false);
    script(&mut p, &handshake());
    let (sa, sb) = (ISN_A.wrapping_add(1), ISN_B + 1);
    script(
        &mut p,
        &[
            (b(ACK, sb, sa).len(800), PASS),
            // The client lost bytes 0..300 and SACKs 300..800: fine.
            (a(ACK, sa, sb).sack(sb + 300, sb + 800), PASS),
            // A SACK block beyond what the server sent: acknowledges unsent data.
            (a(ACK, sa, sb).sack(sb + 300, sb + 5000), OUT),
        ],
    );
}

#[test]
fn fin_exchange_and_last_ack() {
    let mut p = pipeline(TcpWindow::new(), false);
    script(&mut p, &handshake());
    let (sa, sb) = (ISN_A.wrapping_add(1), ISN_B + 1);
    script(
        &mut p,
        &[
            (a(FIN | ACK, sa, sb), PASS),
            (b(ACK, sb, sa.wrapping_add(1)), PASS),
            (b(FIN | ACK, sb, sa.wrapping_add(1)), PASS),
            // The last ACK, then a late forged one acknowledging a byte too far.
            (a(ACK, sa.wrapping_add(1), sb + 1), PASS),
            (a(ACK, sa.wrapping_add(1), sb + 2), OUT),
        ],
    );
    assert_eq!(session_state(&p), SessionState::TcpTimeWait);
}

#[test]
fn mid_stream_pickup_learns_both_sides() {
    let mut p = pipeline(TcpWindow::new(), true);
    let (sa, sb) = (700_000u32, 9_000_000u32);
    script(
        &mut p,
        &[
            // After a fail-over: the first segments seen are data, one from each side.
            (a(ACK, sa, sb).len(100), PASS),
            (b(ACK, sb, sa + 100).len(100), PASS),
            // Acknowledgments are checked exactly from now on.
            (a(ACK, sa + 100, sb + 100), PASS),
            (a(ACK, sa + 100, sb + 5000), OUT),
            (b(ACK, sb + 100, sa + 9000), OUT),
        ],
    );
    assert_eq!(p.second.service().counters().picked_up, 1);
}

#[test]
fn zones_can_turn_tracking_off() {
    let mut p = pipeline(TcpWindow::new().zone(ZoneId(0), false), false);
    script(&mut p, &handshake());
    let sa = ISN_A.wrapping_add(1);
    script(
        &mut p,
        &[(a(ACK, sa.wrapping_add(1 << 30), ISN_B + 1).len(100), PASS)],
    );
    assert_eq!(p.second.service().counters().checked, 0);
    // Turned back on, the zone is tracked again.
    let mut p = pipeline(
        TcpWindow::new()
            .zone(ZoneId(0), false)
            .zone(ZoneId(0), true),
        false,
    );
    script(&mut p, &handshake());
    script(
        &mut p,
        &[(a(ACK, sa.wrapping_add(1 << 30), ISN_B + 1).len(100), OUT)],
    );
}

#[test]
fn counters_are_visited() {
    let p = pipeline(TcpWindow::new(), false);
    let mut names = Vec::new();
    p.visit_counters(&mut |stage, name, _| {
        if stage == "tcp_window" {
            names.push(name);
        }
    });
    assert!(
        names.contains(&"rst_dropped") && names.contains(&"seq_beyond_window"),
        "{names:?}"
    );
}

#[test]
fn the_window_moves_with_the_session_to_another_node() {
    let mut p = pipeline(TcpWindow::new(), false);
    script(&mut p, &handshake());
    let (sa, sb) = (ISN_A.wrapping_add(1), ISN_B + 1);
    script(&mut p, &[(a(ACK, sa, sb).len(500), PASS)]);
    let mut chunk = Vec::new();
    let now = Instant::from_nanos(1_000_000);
    p.second
        .export(nf_core::Family::V4, now, 0, 16, &mut chunk)
        .unwrap();
    let mut q = pipeline(TcpWindow::new(), false);
    assert_eq!(q.second.import(now, &chunk).unwrap().imported, 1);
    assert_eq!(session_state(&q), SessionState::TcpEstablished);
    // The node that took over knows the window: injection fails there, the next data passes.
    script(
        &mut q,
        &[
            (a(ACK, sa.wrapping_add(1 << 30), sb).len(100), OUT),
            (b(ACK, sb, sa.wrapping_add(500)).len(100), PASS),
            (a(ACK, sa.wrapping_add(500), sb + 100).len(10), PASS),
        ],
    );
    assert_eq!(q.second.service().counters().seq_beyond_window, 1);
}
