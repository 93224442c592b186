//! Batched Linux packet I/O on `PACKET_MMAP` rings, for the example programs: frames are
//! received into nf [`Batch`]es **without a copy** and sent with one copy into the transmit
//! ring, with no allocation per frame and one system call per batch at most.
//!
//! ```text
//!  kernel ─► RX ring (TPACKET_V2 slots) ─► RingFrame (bytes in the ring, headroom in front)
//!                                            │  Packet<RingFrame> in a Batch: stages work in place
//!  kernel ◄─ TX ring (TPACKET_V2 slots) ◄── TxRing::send (one copy) ◄─┘   TxRing::flush kicks
//! ```
//!
//! - [`RxRing`]: an AF_PACKET socket bound to one interface with a `TPACKET_V2` receive
//!   ring. [`RxRing::recv`] hands out the frames the kernel filled as [`RingFrame`]s: views
//!   into the ring with [`RingConfig::headroom`] bytes free in front (`PACKET_RESERVE`), so
//!   an encap stage pushes its headers in place. A slot goes back to the kernel when its
//!   frame is dropped; a caller that keeps frames stalls the ring when it comes round to
//!   them (then the kernel drops, counted in [`RxCounters::kernel_drops`]), never a use
//!   after free. The frames we send ourselves are not received (`PACKET_IGNORE_OUTGOING`).
//!   Why not `TPACKET_V3`: its blocks reach user space only when full or after a timeout of
//!   at least a millisecond, so at low rates (a TCP flow's ACKs) every frame waited up to
//!   1 ms; measured in `examples/lab`, that capped one TCP stream through the gateway.
//! - [`TxRing`]: a second AF_PACKET socket on the interface, receiving nothing, with a
//!   `TPACKET_V2` transmit ring and the qdisc bypassed. [`TxRing::send`] copies a frame into
//!   the next free slot; [`TxRing::flush`] asks the kernel to send all of them with one
//!   `sendto`.
//! - [`wait`] blocks in one `poll` on any number of receive rings ([`wait_fds`]: on any
//!   descriptors).
//! - [`xdp::XdpPort`]: one interface's receive and transmit path on an AF_XDP socket, with
//!   the XDP program that steers frames to it; its frames are [`RingFrame`]s too, so stages
//!   and loops written for the rings take them unchanged.
//!
//! **Interfaces that go down and come back** are survived: a receive ring reports the
//! kernel's `ENETDOWN` once ([`RxRing::take_error`], counted in [`RxCounters::link_down`]),
//! then receives again when the interface is up (the kernel re-attaches the socket); a
//! transmit ring whose interface is down drops the frames waiting in it and counts them
//! ([`TxCounters::dropped_link_down`]) instead of sending them late.
//!
//! Checksums: the kernel tells per frame whether a locally generated frame still lacks its
//! transport checksum (the sender relies on offload), see [`RingFrame::checksum`]; senders
//! whose traffic must be checked byte for byte need offload off (`ethtool -K DEV tx off`).

#[expect(
    unsafe_code,
    reason = "system calls and the rings shared with the kernel, behind safe functions"
)]
mod sys;
pub mod xdp;

/// TCP MD5 signatures (RFC 2385) for BGP sessions ([`crate::bgp`]), and the minimum TTL
/// of BFD's single hop ([`crate::bfd`]).
pub use sys::{TCP_MD5_MAX_KEY, connect_from, connect_tcp_md5, set_ip_min_ttl, set_tcp_md5};

use nf_core::{Batch, Packet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What [`wait`] reported for one ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PollEvents {
    /// Frames are waiting.
    pub readable: bool,
    /// The socket has an error to read ([`RxRing::take_error`]), or was closed.
    pub error: bool,
}

/// Ring sizes. The defaults suit a veth or a 10G NIC at 64-byte rates on one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingConfig {
    /// Receive slots. Default 4096.
    pub rx_slots: u32,
    /// Bytes per receive slot: the kernel's 52-byte header, the headroom and the frame. A
    /// power of two; frames that do not fit are dropped and counted
    /// ([`RxCounters::truncated`]). Default 2048: frames up to 1514 bytes with the default
    /// headroom.
    pub rx_slot_size: u32,
    /// Bytes kept free in front of every received frame (for pushed headers). Default 128.
    pub headroom: u32,
    /// Transmit slots. Default 1024.
    pub tx_slots: u32,
    /// Bytes per transmit slot, its 32-byte header included (a power of two ≥ the largest
    /// frame + 32). Default 2048: frames up to 2016 bytes.
    pub tx_slot_size: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            rx_slots: 4096,
            rx_slot_size: 2048,
            headroom: 128,
            tx_slots: 1024,
            tx_slot_size: 2048,
        }
    }
}

impl RingConfig {
    /// Receive and transmit slots for frames of up to `frame` bytes (for jumbo MTUs).
    #[must_use]
    pub fn with_frames_up_to(mut self, frame: usize) -> Self {
        let tx = (frame + TX_DATA).next_power_of_two().max(2048);
        self.tx_slot_size = u32::try_from(tx).unwrap_or(1 << 16);
        let rx = (RX_DATA + 16 + self.headroom as usize + frame)
            .next_power_of_two()
            .max(2048);
        self.rx_slot_size = u32::try_from(rx).unwrap_or(1 << 16);
        self
    }
}

/// One interface, as the kernel names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name (`eth0`).
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its MTU (IP bytes; an Ethernet frame is 14 more, 18 with a VLAN tag).
    pub mtu: usize,
}

impl Interface {
    /// Looks `name` up in `/sys/class/net`.
    ///
    /// # Errors
    /// The interface does not exist or its attributes cannot be read.
    pub fn by_name(name: &str) -> io::Result<Self> {
        let attr = |what: &str| std::fs::read_to_string(format!("/sys/class/net/{name}/{what}"));
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: bad {what}"));
        let index = attr("ifindex")?
            .trim()
            .parse()
            .map_err(|_| bad("ifindex"))?;
        let mtu = attr("mtu")?.trim().parse().map_err(|_| bad("mtu"))?;
        let mac = parse_mac(attr("address")?.trim()).ok_or_else(|| bad("address"))?;
        Ok(Self {
            name: name.to_string(),
            index,
            mac,
            mtu,
        })
    }
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`) as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// What the kernel says about a received frame's transport checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxChecksum {
    /// Nothing: verify it yourself.
    Unknown,
    /// The device or the kernel verified it.
    Valid,
    /// Not filled in yet: a local sender left it to offload (`CHECKSUM_PARTIAL`).
    Partial,
}

/// A received frame, in place in the receive ring: the buffer type of the
/// [`Packet`]s [`RxRing::recv`] hands out. Dropping it gives its slot back to the kernel.
pub struct RingFrame {
    bytes: sys::FrameBytes,
    /// The bytes, copied out of the ring by [`RingFrame::detach`] (the slot then went back).
    copy: Option<Box<[u8]>>,
    map: Arc<sys::Mapping>,
    /// Its slot's index and offset in the ring.
    slot: usize,
    offset: usize,
    checksum: RxChecksum,
}

impl RingFrame {
    /// The kernel's word on the frame's transport checksum.
    pub fn checksum(&self) -> RxChecksum {
        self.checksum
    }

    /// Copies the frame out of the ring and gives its slot back to the kernel now: for a
    /// frame kept longer than a batch (an out-of-order fragment a
    /// [`FragmentReorder`](nf_core::conntrack::FragmentReorder) holds), which would
    /// otherwise stop the ring when it comes round to the slot. Allocates one copy; a
    /// second call does nothing.
    pub fn detach(&mut self) {
        if self.copy.is_some() {
            return;
        }
        self.copy = Some(self.bytes.bytes().into());
        self.give_back();
    }

    /// True once [`Self::detach`] copied the frame out.
    pub fn is_detached(&self) -> bool {
        self.copy.is_some()
    }

    fn give_back(&self) {
        // Status first: once `held` is clear the ring may look at the slot again, and it
        // must find it the kernel's (or refilled), never our stale frame.
        self.map.store_status(self.offset, libc::TP_STATUS_KERNEL);
        if let Some(h) = self.map.held.get(self.slot) {
            h.store(0, Ordering::Release);
        }
    }
}

impl AsRef<[u8]> for RingFrame {
    fn as_ref(&self) -> &[u8] {
        match &self.copy {
            Some(c) => c,
            None => self.bytes.bytes(),
        }
    }
}

impl AsMut<[u8]> for RingFrame {
    fn as_mut(&mut self) -> &mut [u8] {
        match &mut self.copy {
            Some(c) => c,
            None => self.bytes.bytes_mut(),
        }
    }
}

impl Drop for RingFrame {
    fn drop(&mut self) {
        if self.copy.is_none() {
            self.give_back();
        }
    }
}

/// Receive-side counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RxCounters {
    /// Frames handed out.
    pub frames: u64,
    /// Frames the kernel dropped because the ring was full (`PACKET_STATISTICS`, updated
    /// by [`RxRing::update_kernel_stats`]).
    pub kernel_drops: u64,
    /// Frames the kernel received for the ring, dropped or not (`PACKET_STATISTICS`,
    /// updated by [`RxRing::update_kernel_stats`]).
    pub kernel_frames: u64,
    /// Frames dropped because they did not fit in a slot (see
    /// [`RingConfig::with_frames_up_to`]), or malformed ring entries.
    pub truncated: u64,
    /// Times the ring came round to a slot whose frame the caller still holds.
    pub stalls: u64,
    /// Times the interface went down under the ring.
    pub link_down: u64,
}

/// A `TPACKET_V2` receive ring on one interface (see the [module docs](self)).
pub struct RxRing {
    fd: OwnedFd,
    map: Arc<sys::Mapping>,
    slot_size: usize,
    slots: usize,
    /// The next slot to look at.
    next: usize,
    counters: RxCounters,
}

/// `tpacket2_hdr`: status at 0, len 4, snaplen 8, mac 12; the ring's frames may start after
/// it and its `sockaddr_ll`.
const RX_LEN: usize = 4;
const RX_SNAPLEN: usize = 8;
const RX_MAC: usize = 12;
const RX_DATA: usize = libc::TPACKET2_HDRLEN;
/// A transmit slot: `tpacket2_hdr` (status 0, len 4, snaplen 8), the frame at 32.
const TX_LEN: usize = 4;
const TX_SNAPLEN: usize = 8;
const TX_DATA: usize = libc::TPACKET2_HDRLEN - size_of::<libc::sockaddr_ll>();

const ETH_P_ALL: u16 = 0x0003;

/// The `tpacket_req` of a ring of `slots` slots of `slot` bytes (blocks of at least a page).
fn ring_request(slot: u32, slots: u32) -> libc::tpacket_req {
    let block = slot.max(4096) * 8;
    let per_block = block / slot;
    let blocks = slots.div_ceil(per_block).max(1);
    libc::tpacket_req {
        tp_block_size: block,
        tp_block_nr: blocks,
        tp_frame_size: slot,
        tp_frame_nr: blocks * per_block,
    }
}

impl RxRing {
    /// A receive ring on `iface`.
    ///
    /// # Errors
    /// The socket, ring or mapping cannot be set up (not root, no such interface, ring too
    /// big for the memory limits).
    pub fn open(iface: &Interface, cfg: &RingConfig) -> io::Result<Self> {
        let fd = sys::packet_socket(ETH_P_ALL)?;
        sys::set_packet_opt(
            &fd,
            libc::PACKET_VERSION,
            &(libc::tpacket_versions::TPACKET_V2 as libc::c_int),
        )?;
        sys::set_packet_opt(&fd, libc::PACKET_RESERVE, &cfg.headroom)?;
        // Older kernels lack it: then our own transmissions come back, which the caller
        // sees as frames from our MAC.
        let _ = sys::set_packet_opt(&fd, libc::PACKET_IGNORE_OUTGOING, &1 as &libc::c_int);
        let req = ring_request(cfg.rx_slot_size, cfg.rx_slots);
        sys::set_packet_opt(&fd, libc::PACKET_RX_RING, &req)?;
        let slots = req.tp_frame_nr as usize;
        let map = Arc::new(sys::Mapping::new(
            &fd,
            (req.tp_block_size * req.tp_block_nr) as usize,
            slots,
        )?);
        sys::bind(&fd, iface.index, ETH_P_ALL)?;
        Ok(Self {
            fd,
            map,
            slot_size: req.tp_frame_size as usize,
            slots,
            next: 0,
            counters: RxCounters::default(),
        })
    }

    /// Moves the frames the kernel has filled into `batch` until it is full; returns how
    /// many. Each is a [`Packet`] over a [`RingFrame`] with its headroom in front.
    pub fn recv(&mut self, batch: &mut Batch<RingFrame>) -> usize {
        self.recv_up_to(batch, nf_core::BATCH_SIZE)
    }

    /// [`Self::recv`] until `batch` holds `limit` packets (room left for the packets a
    /// stage gives back: [`StageControl::batch_room`](nf_core::StageControl::batch_room)).
    pub fn recv_up_to(&mut self, batch: &mut Batch<RingFrame>, limit: usize) -> usize {
        let mut n = 0;
        while !batch.is_full() && batch.len() < limit {
            let slot = self.next;
            if self
                .map
                .held
                .get(slot)
                .is_none_or(|h| h.load(Ordering::Acquire) != 0)
            {
                self.counters.stalls += 1;
                break;
            }
            let off = slot * self.slot_size;
            if self
                .map
                .load_status(off)
                .is_none_or(|st| st & libc::TP_STATUS_USER == 0)
            {
                break;
            }
            self.next = (slot + 1) % self.slots;
            match self.frame_at(slot, off) {
                Some(pkt) => {
                    if batch.push(pkt).is_ok() {
                        n += 1;
                    }
                }
                None => {
                    self.counters.truncated += 1;
                    self.map.store_status(off, libc::TP_STATUS_KERNEL);
                }
            }
        }
        self.counters.frames += n as u64;
        n
    }

    /// The kernel's pending error on this socket (`ENETDOWN` when the interface went
    /// down), cleared by reading it: call it when [`wait`] reports an error.
    pub fn take_error(&mut self) -> Option<io::Error> {
        let e = sys::take_error(&self.fd)?;
        if e.raw_os_error() == Some(libc::ENETDOWN) {
            self.counters.link_down += 1;
        }
        Some(e)
    }

    /// Adds the kernel's counts since the last call to [`RxCounters::kernel_frames`] and
    /// [`RxCounters::kernel_drops`].
    ///
    /// # Errors
    /// The statistics cannot be read.
    pub fn update_kernel_stats(&mut self) -> io::Result<()> {
        let (frames, drops) = sys::packet_stats(&self.fd)?;
        self.counters.kernel_frames += frames;
        self.counters.kernel_drops += drops;
        Ok(())
    }

    /// The counts so far.
    pub fn counters(&self) -> RxCounters {
        self.counters
    }

    /// The frame in slot `slot` (at `off`), as a packet; `None` if it was cut short.
    fn frame_at(&mut self, slot: usize, off: usize) -> Option<Packet<RingFrame>> {
        let status = self.map.read_u32(off)?;
        let len = self.map.read_u32(off + RX_LEN)? as usize;
        let snaplen = self.map.read_u32(off + RX_SNAPLEN)? as usize;
        let mac = usize::from(self.map.read_u16(off + RX_MAC)?);
        let end = mac.checked_add(snaplen)?;
        if snaplen < len || mac < RX_DATA || end > self.slot_size {
            return None;
        }
        let checksum = if status & libc::TP_STATUS_CSUMNOTREADY != 0 {
            RxChecksum::Partial
        } else if status & libc::TP_STATUS_CSUM_VALID != 0 {
            RxChecksum::Valid
        } else {
            RxChecksum::Unknown
        };
        let bytes = sys::FrameBytes::new(self.map.range(off + RX_DATA, end - RX_DATA)?);
        self.map.held.get(slot)?.store(1, Ordering::Relaxed);
        let frame = RingFrame {
            bytes,
            copy: None,
            map: Arc::clone(&self.map),
            slot,
            offset: off,
            checksum,
        };
        // The frame gives its slot back if this fails (it cannot: the buffer holds both).
        Packet::new(frame, mac - RX_DATA, snaplen).ok()
    }
}

impl AsFd for RxRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Why a frame was not queued for sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxError {
    /// Every slot is waiting for the kernel: flush, or send less.
    Full,
    /// Larger than a slot ([`RingConfig::tx_slot_size`] − 32).
    TooBig,
}

/// Transmit-side counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxCounters {
    /// Frames queued in the ring.
    pub queued: u64,
    /// Frames not queued: the ring was full.
    pub full: u64,
    /// Frames not queued: too big for a slot.
    pub too_big: u64,
    /// Frames the kernel rejected (`TP_STATUS_WRONG_FORMAT`).
    pub rejected: u64,
    /// Frames dropped from the ring because the interface was down.
    pub dropped_link_down: u64,
    /// `sendto` calls that failed for another reason.
    pub kick_errors: u64,
}

/// A `TPACKET_V2` transmit ring on one interface (see the [module docs](self)).
pub struct TxRing {
    fd: OwnedFd,
    map: sys::Mapping,
    slot_size: usize,
    slots: usize,
    next: usize,
    /// Slots marked for sending since the last flush, oldest first from `next - pending`.
    pending: usize,
    counters: TxCounters,
}

impl TxRing {
    /// A transmit ring on `iface`.
    ///
    /// # Errors
    /// The socket, ring or mapping cannot be set up.
    pub fn open(iface: &Interface, cfg: &RingConfig) -> io::Result<Self> {
        // Protocol 0: this socket receives nothing.
        let fd = sys::packet_socket(0)?;
        sys::set_packet_opt(
            &fd,
            libc::PACKET_VERSION,
            &(libc::tpacket_versions::TPACKET_V2 as libc::c_int),
        )?;
        let _ = sys::set_packet_opt(&fd, libc::PACKET_QDISC_BYPASS, &1 as &libc::c_int);
        let req = ring_request(cfg.tx_slot_size, cfg.tx_slots);
        sys::set_packet_opt(&fd, libc::PACKET_TX_RING, &req)?;
        let (slot, slots) = (req.tp_frame_size, req.tp_frame_nr);
        let map = sys::Mapping::new(&fd, (req.tp_block_size * req.tp_block_nr) as usize, 0)?;
        sys::bind(&fd, iface.index, 0)?;
        Ok(Self {
            fd,
            map,
            slot_size: slot as usize,
            slots: slots as usize,
            next: 0,
            pending: 0,
            counters: TxCounters::default(),
        })
    }

    /// Copies `frame` into the next free slot, to go out at the next [`TxRing::flush`].
    ///
    /// # Errors
    /// [`TxError::Full`] when no slot is free (counted), [`TxError::TooBig`] for a frame
    /// larger than a slot (counted).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), TxError> {
        if frame.len() > self.slot_size - TX_DATA {
            self.counters.too_big += 1;
            return Err(TxError::TooBig);
        }
        let off = self.next * self.slot_size;
        let status = self.map.load_status(off).unwrap_or(u32::MAX);
        if status & libc::TP_STATUS_WRONG_FORMAT != 0 {
            self.counters.rejected += 1;
        } else if status != libc::TP_STATUS_AVAILABLE {
            self.counters.full += 1;
            return Err(TxError::Full);
        }
        let len = frame.len() as u32;
        if !self.map.write(off + TX_DATA, frame) {
            self.counters.too_big += 1;
            return Err(TxError::TooBig);
        }
        self.map.write_u32(off + TX_LEN, len);
        self.map.write_u32(off + TX_SNAPLEN, len);
        self.map.store_status(off, libc::TP_STATUS_SEND_REQUEST);
        self.next = (self.next + 1) % self.slots;
        self.pending = (self.pending + 1).min(self.slots);
        self.counters.queued += 1;
        Ok(())
    }

    /// Has the kernel send every queued frame (one `sendto`); returns how many were
    /// queued. On an interface that is down the queued frames are dropped and counted.
    ///
    /// # Errors
    /// The kick failed for another reason than a full device queue or a down interface
    /// (counted; the frames stay queued).
    pub fn flush(&mut self) -> io::Result<usize> {
        let n = self.pending;
        if n == 0 {
            return Ok(0);
        }
        match sys::kick(&self.fd) {
            Ok(()) => {
                self.pending = 0;
                Ok(n)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENXIO)) => {
                self.drop_pending();
                Ok(0)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => {
                // The device queue is full: what was not sent goes with the next kick.
                Ok(0)
            }
            Err(e) => {
                self.counters.kick_errors += 1;
                Err(e)
            }
        }
    }

    /// The counts so far.
    pub fn counters(&self) -> TxCounters {
        self.counters
    }

    /// Takes back the slots still marked for sending (the interface is down: sending them
    /// when it is up again would deliver stale frames), and rewinds to the first of them:
    /// the kernel walks the ring in order and stops at the first slot not marked, so its
    /// position is the first slot still marked, and the next frame must go there.
    fn drop_pending(&mut self) {
        let mut first = (self.next + self.slots - self.pending) % self.slots;
        let mut marked = self.pending;
        // Slots the kernel took before it stopped (an earlier kick that hit a full queue).
        while marked > 0
            && self.map.load_status(first * self.slot_size) != Some(libc::TP_STATUS_SEND_REQUEST)
        {
            first = (first + 1) % self.slots;
            marked -= 1;
        }
        for i in 0..marked {
            let off = ((first + i) % self.slots) * self.slot_size;
            if self.map.load_status(off) == Some(libc::TP_STATUS_SEND_REQUEST) {
                self.map.store_status(off, libc::TP_STATUS_AVAILABLE);
                self.counters.dropped_link_down += 1;
            }
        }
        self.next = first;
        self.pending = 0;
    }
}

/// Pins the calling thread to CPU `cpu` (what [`crate::workers`] does for each worker).
///
/// # Errors
/// The CPU does not exist or the process may not use it.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    sys::pin_to_cpu(cpu)
}

/// Waits up to `timeout_ms` (−1: forever) until one of `rings` has frames or an error;
/// `events[i]` says which. Returns how many are ready (0 on timeout or a signal).
///
/// # Errors
/// `poll` failed.
pub fn wait(rings: &[&RxRing], timeout_ms: i32, events: &mut [PollEvents]) -> io::Result<usize> {
    sys::poll(rings.iter().map(|r| r.as_fd()), timeout_ms, events)
}

/// [`wait`] on any descriptors (receive rings, [`xdp::XdpPort`]s), at most 8, given as an
/// array or any iterator (so a loop over its ports collects nothing).
///
/// # Errors
/// `poll` failed.
pub fn wait_fds<'a>(
    fds: impl IntoIterator<Item = BorrowedFd<'a>>,
    timeout_ms: i32,
    events: &mut [PollEvents],
) -> io::Result<usize> {
    sys::poll(fds.into_iter(), timeout_ms, events)
}

/// Which frame I/O a [`Link`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoKind {
    /// AF_XDP where it opens (root, a kernel with AF_XDP and BPF links, one receive queue,
    /// no other XDP program on the interface), else the rings: see [`Link::kind`] for which.
    #[default]
    Auto,
    /// `PACKET_MMAP` rings ([`RxRing`], [`TxRing`]).
    Packet,
    /// An AF_XDP socket and its XDP program ([`xdp::XdpPort`]).
    Xdp,
}

impl std::str::FromStr for IoKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "packet" => Ok(Self::Packet),
            "xdp" => Ok(Self::Xdp),
            _ => Err(format!("{s}: not auto, packet or xdp")),
        }
    }
}

/// One interface's receive and transmit path, on either I/O: what the example programs'
/// ports hold, so that one `--io` option picks it. Frames are [`RingFrame`]s either way.
pub enum Link {
    /// `PACKET_MMAP` rings.
    Rings {
        /// The receive ring.
        rx: RxRing,
        /// The transmit ring.
        tx: TxRing,
    },
    /// An AF_XDP socket.
    Xdp(Box<xdp::XdpPort>),
}

impl Link {
    /// Opens `iface` for frames of up to `frame` bytes (Ethernet header included) with at
    /// least `rings.headroom` bytes free in front of each received one.
    ///
    /// # Errors
    /// What [`RxRing::open`], [`TxRing::open`] or [`xdp::XdpPort::open`] say.
    pub fn open(
        iface: &Interface,
        kind: IoKind,
        rings: &RingConfig,
        frame: usize,
    ) -> io::Result<Self> {
        Ok(match kind {
            IoKind::Auto => match Self::open(iface, IoKind::Xdp, rings, frame) {
                Ok(link) => link,
                Err(_) => Self::open(iface, IoKind::Packet, rings, frame)?,
            },
            IoKind::Packet => {
                let cfg = rings.with_frames_up_to(frame);
                Self::Rings {
                    rx: RxRing::open(iface, &cfg)?,
                    tx: TxRing::open(iface, &cfg)?,
                }
            }
            IoKind::Xdp => {
                let mut cfg = xdp::XdpConfig::default();
                // The kernel keeps 256 bytes in front of what it copies in.
                if 256 + rings.headroom as usize + frame > 2048 {
                    cfg.chunk = 4096;
                }
                Self::Xdp(Box::new(xdp::XdpPort::open(iface, &cfg)?))
            }
        })
    }

    /// [`RxRing::recv`] / [`xdp::XdpPort::recv`].
    pub fn recv(&mut self, batch: &mut Batch<RingFrame>) -> usize {
        self.recv_up_to(batch, nf_core::BATCH_SIZE)
    }

    /// [`RxRing::recv_up_to`] / [`xdp::XdpPort::recv_up_to`].
    pub fn recv_up_to(&mut self, batch: &mut Batch<RingFrame>, limit: usize) -> usize {
        match self {
            Self::Rings { rx, .. } => rx.recv_up_to(batch, limit),
            Self::Xdp(x) => x.recv_up_to(batch, limit),
        }
    }

    /// [`TxRing::send`] / [`xdp::XdpPort::send`].
    ///
    /// # Errors
    /// As those.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), TxError> {
        match self {
            Self::Rings { tx, .. } => tx.send(frame),
            Self::Xdp(x) => x.send(frame),
        }
    }

    /// [`TxRing::flush`] / [`xdp::XdpPort::flush`].
    ///
    /// # Errors
    /// As those.
    pub fn flush(&mut self) -> io::Result<usize> {
        match self {
            Self::Rings { tx, .. } => tx.flush(),
            Self::Xdp(x) => x.flush(),
        }
    }

    /// The receive socket's pending error (`ENETDOWN` when the interface went down).
    pub fn take_error(&mut self) -> Option<io::Error> {
        match self {
            Self::Rings { rx, .. } => rx.take_error(),
            Self::Xdp(x) => x.take_error(),
        }
    }

    /// Reads the kernel's receive statistics into the counters.
    ///
    /// # Errors
    /// They cannot be read.
    pub fn update_kernel_stats(&mut self) -> io::Result<()> {
        match self {
            Self::Rings { rx, .. } => rx.update_kernel_stats(),
            Self::Xdp(x) => x.update_kernel_stats(),
        }
    }

    /// The receive and transmit counts so far.
    pub fn counters(&self) -> (RxCounters, TxCounters) {
        match self {
            Self::Rings { rx, tx } => (rx.counters(), tx.counters()),
            Self::Xdp(x) => (x.rx_counters(), x.tx_counters()),
        }
    }

    /// Which I/O it is ([`IoKind::Packet`] or [`IoKind::Xdp`], never `Auto`).
    pub fn kind(&self) -> IoKind {
        match self {
            Self::Rings { .. } => IoKind::Packet,
            Self::Xdp(_) => IoKind::Xdp,
        }
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Rings { rx, .. } => rx.as_fd(),
            Self::Xdp(x) => x.as_fd(),
        }
    }
}
