//! Batched packet I/O on AF_XDP sockets: [`XdpPort`], one interface's receive and transmit
//! path for the example programs, beside the `PACKET_MMAP` rings of [`super`].
//!
//! ```text
//!  NIC/veth ─► XDP program ─► RX ring ─► RingFrame (bytes in the UMEM, headroom in front)
//!                 │ (bpf_redirect_map: queue 0's socket)    │ Packet<RingFrame> in a Batch
//!                 └─ other queues: XDP_PASS to the kernel    ▼
//!  NIC/veth ◄──────────────── TX ring ◄── XdpPort::send (one copy into a UMEM chunk)
//! ```
//!
//! Why: on the `vxlan-gateway` lab's veths, frames that an AF_PACKET socket copies out still
//! go up the gateway namespace's own stack afterwards (routing, then a drop), and each
//! received frame is an `sk_buff` first. An XDP program redirects the frame to the socket
//! before any of that. Measured with `dpdk-testpmd` forwarding between two veths (io mode,
//! one busy-polling core), iperf3 TCP: AF_PACKET 2.0 Gbit/s, AF_XDP 3.2, the kernel bridge
//! 4.5; see the README's figures for the gateway itself.
//!
//! - [`XdpPort::open`] loads a six-instruction XDP program (`bpf_redirect_map` on the
//!   frame's receive queue, falling back to `XDP_PASS`), attaches it through a BPF link
//!   (driver mode where the interface has it, veth does; the generic mode otherwise),
//!   registers a UMEM of `2 × frames` chunks (half for receiving, half for sending), binds
//!   an AF_XDP socket to queue 0 and puts it in the program's map. Closing the port closes
//!   the link: the program goes with it. Interfaces with more than one receive queue are
//!   refused (frames on the others would bypass the port).
//! - [`XdpPort::recv`] hands out received frames as [`RingFrame`]s, exactly as
//!   [`RxRing::recv`](super::RxRing::recv) does: views into the UMEM with
//!   [`XdpConfig::headroom`] or more bytes free in front. A chunk goes back to the fill ring
//!   at the next receive after its frame is dropped; frames kept longer (a fragment a
//!   reorder stage holds) keep only their own chunks. A caller that keeps every frame
//!   starves the fill ring and the kernel drops (counted in [`RxCounters::kernel_drops`]),
//!   never a use after free.
//! - [`XdpPort::send`] copies a frame into a free transmit chunk; [`XdpPort::flush`] kicks
//!   the kernel (`sendto`, which in copy mode transmits up to 32 frames per call and says
//!   `EAGAIN` when more are left, so it kicks until the ring is taken) and collects the chunks the kernel has finished with.
//! - An interface that goes down: the kernel refuses to send, and the port drops what it
//!   is given meanwhile (counted in [`TxCounters::dropped_link_down`], the outage in
//!   [`RxCounters::link_down`]) but one frame per flush that probes the link; the program
//!   and the socket stay, and frames flow again when it is up.
//!
//! The copy mode: veth has no zero-copy AF_XDP. The kernel copies each received frame into
//! a UMEM chunk and each sent one out of it, as `PACKET_MMAP` does; the checksum state of a
//! received frame is unknown ([`RxChecksum::Unknown`]).

use super::{Interface, RingFrame, RxChecksum, RxCounters, TxCounters, TxError, sys};
use nf_core::{Batch, Packet};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Sizes of an [`XdpPort`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct XdpConfig {
    /// UMEM chunks for receiving, and as many for sending; also each ring's size. A power
    /// of two. Default 4096.
    pub frames: u32,
    /// Bytes per chunk: 2048 or 4096. Default 2048 (frames up to 2048 − 256 − headroom
    /// bytes: the kernel keeps its own 256 in front of what it copies in).
    pub chunk: u32,
    /// Bytes kept free in front of every received frame, on top of the kernel's 256 (for
    /// pushed headers). Default 0.
    pub headroom: u32,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            frames: 4096,
            chunk: 2048,
            headroom: 0,
        }
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`): before the kernel builds an `sk_buff`.
    Driver,
    /// Generic (`XDP_FLAGS_SKB_MODE`): after; for drivers without XDP.
    Generic,
}

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// One eBPF instruction: opcode, registers, offset, immediate.
const fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    op as u64
        | ((dst | src << 4) as u64) << 8
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// The XDP program with `map` (an XSKMAP descriptor):
/// `return bpf_redirect_map(map, ctx->rx_queue_index, XDP_PASS)`.
fn program(map: &OwnedFd) -> io::Result<[u64; 6]> {
    use std::os::fd::AsRawFd;
    let fd = map.as_raw_fd();
    Ok([
        // r2 = *(u32 *)(r1 + 16): xdp_md.rx_queue_index.
        insn(0x61, 2, 1, 16, 0),
        // r1 = the map (a 64-bit immediate in two slots, BPF_PSEUDO_MAP_FD).
        insn(0x18, 1, 1, 0, fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: the action when the queue has no socket.
        insn(0xb7, 3, 0, 0, 2),
        // call bpf_redirect_map (helper 51).
        insn(0x85, 0, 0, 0, 51),
        // exit (r0: the helper's verdict).
        insn(0x95, 0, 0, 0, 0),
    ])
}

/// One of the socket's four rings: a producer and a consumer index and entries of
/// `entry` bytes, shared with the kernel.
struct Ring {
    map: sys::Mapping,
    producer: usize,
    consumer: usize,
    desc: usize,
    mask: u32,
    entry: usize,
}

impl Ring {
    fn open(
        fd: &OwnedFd,
        off: &libc::xdp_ring_offset,
        entries: u32,
        entry: usize,
        pgoff: u64,
    ) -> io::Result<Self> {
        let at =
            |v: u64| usize::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidData));
        let desc = at(off.desc)?;
        let pgoff = libc::off_t::try_from(pgoff)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok(Self {
            map: sys::Mapping::map(Some(fd), desc + entries as usize * entry, pgoff, 0)?,
            producer: at(off.producer)?,
            consumer: at(off.consumer)?,
            desc,
            mask: entries - 1,
            entry,
        })
    }

    /// The other side's index (acquire: its entries are visible after).
    fn load(&self, off: usize) -> u32 {
        self.map.load_status(off).unwrap_or(0)
    }

    /// Publishes our index (release: our entries are visible before it).
    fn store(&self, off: usize, v: u32) {
        self.map.store_status(off, v);
    }

    /// Where entry `i` lives.
    fn slot(&self, i: u32) -> usize {
        self.desc + (i & self.mask) as usize * self.entry
    }
}

/// An AF_XDP socket on queue 0 of one interface, with its XDP program (see the
/// [module docs](self)).
pub struct XdpPort {
    xsk: OwnedFd,
    // Dropped after the socket: the program and its map go when the link closes.
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
    umem: Arc<sys::Mapping>,
    fill: Ring,
    completion: Ring,
    rx: Ring,
    tx: Ring,
    chunk: usize,
    rx_chunks: u32,
    /// Receive chunks handed out in frames.
    out: VecDeque<u32>,
    /// Transmit chunks free to fill.
    tx_free: Vec<u32>,
    /// Our copies of our own indices and of the indices we consume.
    fill_head: u32,
    rx_tail: u32,
    tx_head: u32,
    completion_tail: u32,
    /// Queued since the last flush.
    unflushed: u32,
    /// The kernel refused to send: the interface is down.
    down: bool,
    mode: XdpMode,
    rx_counters: RxCounters,
    tx_counters: TxCounters,
}

impl XdpPort {
    /// An AF_XDP port on `iface` (see the [module docs](self)).
    ///
    /// # Errors
    /// Not root, a kernel without AF_XDP or BPF links (5.9), an interface with several
    /// receive queues, or another XDP program already attached.
    pub fn open(iface: &Interface, cfg: &XdpConfig) -> io::Result<Self> {
        let queues = std::fs::read_dir(format!("/sys/class/net/{}/queues", iface.name))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
            .count();
        if queues > 1 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} has {queues} receive queues; an XDP port takes queue 0 only \
                     (ethtool -L {} combined 1)",
                    iface.name, iface.name
                ),
            ));
        }
        if !cfg.frames.is_power_of_two() || cfg.frames < 64 || !matches!(cfg.chunk, 2048 | 4096) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "XDP port: frames a power of two ≥ 64, chunks of 2048 or 4096 bytes",
            ));
        }
        let map = sys::xskmap_create(1)?;
        let prog = sys::xdp_prog_load(&program(&map)?)?;
        let (link, mode) = match sys::xdp_link(&prog, iface.index, XDP_FLAGS_DRV_MODE) {
            Ok(l) => (l, XdpMode::Driver),
            Err(_) => (
                sys::xdp_link(&prog, iface.index, XDP_FLAGS_SKB_MODE)?,
                XdpMode::Generic,
            ),
        };
        let xsk = sys::xdp_socket()?;
        let chunk = cfg.chunk as usize;
        let total = 2 * cfg.frames as usize;
        let umem = Arc::new(sys::Mapping::map(None, total * chunk, 0, total)?);
        sys::xdp_umem_reg(&xsk, &umem, cfg.chunk, cfg.headroom)?;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            sys::set_xdp_opt(&xsk, opt, &cfg.frames)?;
        }
        let off = sys::xdp_offsets(&xsk)?;
        let desc = size_of::<libc::xdp_desc>();
        let fill = Ring::open(&xsk, &off.fr, cfg.frames, 8, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let completion = Ring::open(
            &xsk,
            &off.cr,
            cfg.frames,
            8,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let rx = Ring::open(
            &xsk,
            &off.rx,
            cfg.frames,
            desc,
            libc::XDP_PGOFF_RX_RING as u64,
        )?;
        let tx = Ring::open(
            &xsk,
            &off.tx,
            cfg.frames,
            desc,
            libc::XDP_PGOFF_TX_RING as u64,
        )?;
        sys::xdp_bind(&xsk, iface.index, 0, 0)?;
        sys::map_update(&map, 0, &xsk)?;
        let mut port = Self {
            xsk,
            _link: link,
            _prog: prog,
            _map: map,
            umem,
            fill,
            completion,
            rx,
            tx,
            chunk,
            rx_chunks: cfg.frames,
            out: VecDeque::with_capacity(cfg.frames as usize),
            tx_free: (cfg.frames..2 * cfg.frames).rev().collect(),
            fill_head: 0,
            rx_tail: 0,
            tx_head: 0,
            completion_tail: 0,
            unflushed: 0,
            down: false,
            mode,
            rx_counters: RxCounters::default(),
            tx_counters: TxCounters::default(),
        };
        for c in 0..cfg.frames {
            port.give_to_kernel(c);
        }
        port.fill.store(port.fill.producer, port.fill_head);
        Ok(port)
    }

    /// How the program is attached.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Moves received frames into `batch` until it is full; returns how many.
    pub fn recv(&mut self, batch: &mut Batch<RingFrame>) -> usize {
        self.recv_up_to(batch, nf_core::BATCH_SIZE)
    }

    /// [`Self::recv`] until `batch` holds `limit` packets.
    pub fn recv_up_to(&mut self, batch: &mut Batch<RingFrame>, limit: usize) -> usize {
        self.refill();
        let head = self.rx.load(self.rx.producer);
        let mut n = 0;
        while self.rx_tail != head && !batch.is_full() && batch.len() < limit {
            let at = self.rx.slot(self.rx_tail);
            let addr = self.rx.map.read_u64(at).unwrap_or(u64::MAX);
            let len = self.rx.map.read_u32(at + 8).unwrap_or(u32::MAX);
            self.rx_tail = self.rx_tail.wrapping_add(1);
            match self.frame(addr, len) {
                Some(pkt) => {
                    if batch.push(pkt).is_ok() {
                        n += 1;
                    }
                }
                None => self.rx_counters.truncated += 1,
            }
        }
        self.rx.store(self.rx.consumer, self.rx_tail);
        self.rx_counters.frames += n as u64;
        n
    }

    /// The frame the kernel wrote at `addr` (`len` bytes) as a packet, its chunk now held;
    /// `None` (the chunk given back, if it is one) for an entry outside the receive chunks.
    fn frame(&mut self, addr: u64, len: u32) -> Option<Packet<RingFrame>> {
        let c = u32::try_from(addr / self.chunk as u64).ok()?;
        if c >= self.rx_chunks {
            return None;
        }
        let start = c as usize * self.chunk;
        let head = usize::try_from(addr).ok()? - start;
        if head + len as usize > self.chunk {
            self.give_to_kernel(c);
            return None;
        }
        let bytes = sys::FrameBytes::new(self.umem.range(start, self.chunk)?);
        self.umem.held.get(c as usize)?.store(1, Ordering::Relaxed);
        self.out.push_back(c);
        let frame = RingFrame {
            bytes,
            copy: None,
            map: Arc::clone(&self.umem),
            slot: c as usize,
            // No status word: dropping the frame only clears its hold flag.
            offset: usize::MAX,
            checksum: RxChecksum::Unknown,
        };
        Packet::new(frame, head, len as usize).ok()
    }

    /// Gives the chunks of dropped frames back to the kernel; chunks still held (frames
    /// the caller keeps) stay out, without holding up the others.
    fn refill(&mut self) {
        let before = self.fill_head;
        let Self {
            out,
            umem,
            fill,
            fill_head,
            chunk,
            ..
        } = self;
        out.retain(|&c| {
            let held = umem
                .held
                .get(c as usize)
                .is_none_or(|h| h.load(Ordering::Acquire) != 0);
            if !held {
                fill.map
                    .write_u64(fill.slot(*fill_head), u64::from(c) * *chunk as u64);
                *fill_head = fill_head.wrapping_add(1);
            }
            held
        });
        if self.out.len() == self.rx_chunks as usize {
            // Every receive chunk is held: nothing can arrive until frames are dropped.
            self.rx_counters.stalls += 1;
        }
        if self.fill_head != before {
            self.fill.store(self.fill.producer, self.fill_head);
        }
    }

    /// Puts receive chunk `c` on the fill ring (published by the caller's store).
    fn give_to_kernel(&mut self, c: u32) {
        let at = self.fill.slot(self.fill_head);
        self.fill.map.write_u64(at, c as u64 * self.chunk as u64);
        self.fill_head = self.fill_head.wrapping_add(1);
    }

    /// Copies `frame` into a free transmit chunk, to go out at the next [`Self::flush`].
    /// While the interface is down, frames are dropped here (counted as queued and as
    /// [`TxCounters::dropped_link_down`]) except one per flush, which probes the link.
    ///
    /// # Errors
    /// [`TxError::Full`] when no chunk is free (counted), [`TxError::TooBig`] for a frame
    /// larger than a chunk (counted).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), TxError> {
        if frame.len() > self.chunk {
            self.tx_counters.too_big += 1;
            return Err(TxError::TooBig);
        }
        if self.down && (self.unflushed > 0 || self.untaken() > 0) {
            self.tx_counters.queued += 1;
            self.tx_counters.dropped_link_down += 1;
            return Ok(());
        }
        if self.tx_free.is_empty() {
            self.collect_completions();
        }
        let Some(c) = self.tx_free.pop() else {
            self.tx_counters.full += 1;
            return Err(TxError::Full);
        };
        let addr = c as usize * self.chunk;
        if !self.umem.write(addr, frame) {
            self.tx_free.push(c);
            self.tx_counters.too_big += 1;
            return Err(TxError::TooBig);
        }
        let at = self.tx.slot(self.tx_head);
        self.tx.map.write_u64(at, addr as u64);
        self.tx.map.write_u32(at + 8, frame.len() as u32);
        self.tx.map.write_u32(at + 12, 0);
        self.tx_head = self.tx_head.wrapping_add(1);
        self.unflushed += 1;
        self.tx_counters.queued += 1;
        Ok(())
    }

    /// Frames published to the kernel and not yet taken.
    fn untaken(&self) -> u32 {
        self.tx_head
            .wrapping_sub(self.unflushed)
            .wrapping_sub(self.tx.load(self.tx.consumer))
    }

    /// Publishes the queued frames and has the kernel send them; returns how many were
    /// queued. Frames the kernel cannot take now (its device queue is full) go with the
    /// next flush. On an interface that is down the kernel refuses them (counted once per
    /// outage in [`RxCounters::link_down`]) and this port drops what comes meanwhile (see
    /// [`Self::send`]); the one frame left in the ring goes out when it is up again.
    ///
    /// # Errors
    /// A kick failed for another reason (counted).
    pub fn flush(&mut self) -> io::Result<usize> {
        let n = self.unflushed;
        if n > 0 {
            self.tx.store(self.tx.producer, self.tx_head);
            self.unflushed = 0;
        }
        // Each copy-mode kick sends a budget of frames (32 by default): kick until the
        // kernel has taken the ring (bounded: one kick per frame at most).
        let mut kicks = 0;
        loop {
            let taken = self.tx.load(self.tx.consumer);
            let waiting = self.tx_head.wrapping_sub(taken);
            if waiting == 0 || kicks > self.rx_chunks {
                break;
            }
            kicks += 1;
            match sys::kick(&self.xsk) {
                Ok(()) => {
                    let now = self.tx.load(self.tx.consumer);
                    if now != taken {
                        self.down = false;
                    }
                    if now == taken {
                        break;
                    }
                }
                // The kernel took a frame and dropped it: the device is not running.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.tx_counters.dropped_link_down += 1;
                    self.link_went_down();
                }
                // EAGAIN: the kick's budget ran out with frames left (go on while the kernel
                // takes frames), or the device queue is full (then stop: the next flush).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => {
                    if self.tx.load(self.tx.consumer) == taken {
                        break;
                    }
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENXIO)) => {
                    self.link_went_down();
                    break;
                }
                Err(e) => {
                    self.tx_counters.kick_errors += 1;
                    self.collect_completions();
                    return Err(e);
                }
            }
        }
        self.collect_completions();
        Ok(n as usize)
    }

    fn link_went_down(&mut self) {
        if !self.down {
            self.down = true;
            self.rx_counters.link_down += 1;
        }
    }

    /// Takes back the transmit chunks the kernel has finished with.
    fn collect_completions(&mut self) {
        let head = self.completion.load(self.completion.producer);
        let before = self.completion_tail;
        while self.completion_tail != head {
            let at = self.completion.slot(self.completion_tail);
            if let Some(addr) = self.completion.map.read_u64(at)
                && let Ok(c) = u32::try_from(addr / self.chunk as u64)
                && (self.rx_chunks..2 * self.rx_chunks).contains(&c)
                && self.tx_free.len() < self.rx_chunks as usize
            {
                self.tx_free.push(c);
            }
            self.completion_tail = self.completion_tail.wrapping_add(1);
        }
        if self.completion_tail != before {
            self.completion
                .store(self.completion.consumer, self.completion_tail);
        }
    }

    /// The socket's pending error, if any.
    pub fn take_error(&mut self) -> Option<io::Error> {
        let e = sys::take_error(&self.xsk)?;
        if e.raw_os_error() == Some(libc::ENETDOWN) {
            self.rx_counters.link_down += 1;
        }
        Some(e)
    }

    /// Sets [`RxCounters::kernel_drops`] to the kernel's count of frames it could not
    /// deliver to the socket (no fill chunk, a full receive ring, or dropped), and
    /// [`RxCounters::kernel_frames`] to those plus the frames received.
    ///
    /// # Errors
    /// The statistics cannot be read.
    pub fn update_kernel_stats(&mut self) -> io::Result<()> {
        let s = sys::xdp_stats(&self.xsk)?;
        let drops = s.rx_dropped + s.rx_ring_full + s.rx_fill_ring_empty_descs;
        self.rx_counters.kernel_drops = drops;
        self.rx_counters.kernel_frames = drops + self.rx_counters.frames;
        Ok(())
    }

    /// The receive counts so far.
    pub fn rx_counters(&self) -> RxCounters {
        self.rx_counters
    }

    /// The transmit counts so far.
    pub fn tx_counters(&self) -> TxCounters {
        self.tx_counters
    }
}

impl AsFd for XdpPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.xsk.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_encodes_as_the_kernel_reads_it() {
        // ldxw r2, [r1 + 16]: opcode 0x61, dst 2, src 1, offset 16.
        assert_eq!(insn(0x61, 2, 1, 16, 0), 0x0000_0000_0010_1261);
        // mov64 r3, 2.
        assert_eq!(insn(0xb7, 3, 0, 0, 2), 0x0000_0002_0000_03b7);
        // call 51; exit.
        assert_eq!(insn(0x85, 0, 0, 0, 51), 0x0000_0033_0000_0085);
        assert_eq!(insn(0x95, 0, 0, 0, 0), 0x95);
        // A negative offset keeps its two's-complement bits.
        assert_eq!(insn(0x61, 0, 0, -1, 0) >> 16 & 0xffff, 0xffff);
    }
}
