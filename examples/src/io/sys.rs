//! The system calls and shared-memory accesses behind [`super`]: AF_PACKET sockets, the
//! `PACKET_MMAP` ring mapping, AF_XDP sockets with their rings and UMEM and the `bpf`
//! calls that steer frames to them, `poll` and the transmit kick. Everything `unsafe` in
//! the examples crate is here, behind safe functions.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use super::PollEvents;

/// Converts a libc return value into `io::Result`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An AF_PACKET raw socket for `protocol` (host order; 0 receives nothing).
pub(super) fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments; a non-negative result is a fresh
    // descriptor that nothing else owns.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol.to_be()),
        )
    })?;
    // SAFETY: `fd` was just returned by `socket` and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(fd, SOL_PACKET, opt, value)` for any plain-data `value`.
pub(super) fn set_packet_opt<T: Copy>(fd: &OwnedFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    set_opt(fd.as_fd(), libc::SOL_PACKET, opt, value)
}

/// `setsockopt(fd, level, opt, value)` for any plain-data `value`.
fn set_opt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    opt: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `value` points to `len` readable bytes for the duration of the call; the
    // kernel copies them and keeps no pointer.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            core::ptr::from_ref(value).cast(),
            len,
        )
    })
    .map(drop)
}

/// Binds `fd` to interface `ifindex` for `protocol` (host order).
pub(super) fn bind(fd: &OwnedFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: `sockaddr_ll` is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = protocol.to_be();
    sa.sll_ifindex =
        libc::c_int::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `sa` is a valid `sockaddr_ll` of the length passed; the kernel copies it.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            core::ptr::from_ref(&sa).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The socket's pending error (`SO_ERROR`), which reading clears: `None` if there is none.
pub(super) fn take_error(fd: &OwnedFd) -> Option<io::Error> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            core::ptr::from_mut(&mut err).cast(),
            &raw mut len,
        )
    };
    (r == 0 && err != 0).then(|| io::Error::from_raw_os_error(err))
}

/// The kernel's receive statistics since the last call (`PACKET_STATISTICS` resets them):
/// frames received and frames dropped for lack of ring space.
pub(super) fn packet_stats(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    // SAFETY: plain old data; all zeroes is valid.
    let mut st: libc::tpacket_stats_v3 = unsafe { core::mem::zeroed() };
    let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
    // SAFETY: `st` and `len` are valid for writes of the sizes given.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            core::ptr::from_mut(&mut st).cast(),
            &raw mut len,
        )
    })?;
    Ok((u64::from(st.tp_packets), u64::from(st.tp_drops)))
}

/// Asks the kernel to send every frame of the transmit ring marked for sending, without
/// waiting.
pub(super) fn kick(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a null buffer of length 0 and no address: the call only starts transmission
    // of the ring's frames.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            core::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            core::ptr::null(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Waits until one of `fds` (at most 8) is readable or in error, or `timeout_ms` passed;
/// fills `out`.
pub(super) fn poll<'a>(
    fds: impl Iterator<Item = BorrowedFd<'a>>,
    timeout_ms: i32,
    out: &mut [PollEvents],
) -> io::Result<usize> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 8];
    let mut n = 0;
    for (p, fd) in pfds.iter_mut().zip(fds) {
        *p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        n += 1;
    }
    // SAFETY: `pfds` holds `n` initialised entries, writable by the kernel.
    let ready = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if ready < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    for (o, p) in out.iter_mut().zip(&pfds[..n]) {
        *o = PollEvents {
            readable: p.revents & libc::POLLIN != 0,
            error: p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
        };
    }
    Ok(usize::try_from(ready).unwrap_or(0))
}

/// `bpf(cmd, attr)`: `attr` is the kernel's `union bpf_attr`, zero beyond what the command
/// reads. Returns the call's value (a new descriptor for the commands that make one).
fn bpf(cmd: libc::c_int, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is 128 writable bytes for the duration of the call, the size passed;
    // every pointer inside it (set by the callers) points to memory they keep alive across
    // the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            libc::c_long::from(cmd),
            attr.as_mut_ptr(),
            size_of::<[u64; 16]>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// [`bpf`] for a command that returns a new descriptor.
fn bpf_fd(cmd: libc::c_int, attr: &mut [u64; 16]) -> io::Result<OwnedFd> {
    let fd = libc::c_int::try_from(bpf(cmd, attr)?)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_MAP_CREATE` of a `BPF_MAP_TYPE_XSKMAP` with `entries` slots (queue → socket).
pub(super) fn xskmap_create(entries: u32) -> io::Result<OwnedFd> {
    const BPF_MAP_CREATE: libc::c_int = 0;
    const BPF_MAP_TYPE_XSKMAP: u64 = 17;
    let mut attr = [0u64; 16];
    // map_type, key_size (4), value_size (4), max_entries.
    attr[0] = BPF_MAP_TYPE_XSKMAP | 4 << 32;
    attr[1] = 4 | u64::from(entries) << 32;
    bpf_fd(BPF_MAP_CREATE, &mut attr)
}

/// `BPF_MAP_UPDATE_ELEM`: `map[key] = value` (an XSKMAP: queue → socket descriptor).
pub(super) fn map_update(map: &OwnedFd, key: u32, value: &OwnedFd) -> io::Result<()> {
    const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
    let v = u32::try_from(value.as_raw_fd())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = [0u64; 16];
    attr[0] = u64::from(u32::try_from(map.as_raw_fd()).unwrap_or(0));
    attr[1] = core::ptr::from_ref(&key) as u64;
    attr[2] = core::ptr::from_ref(&v) as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// `BPF_PROG_LOAD` of an XDP program of `insns` (eBPF instructions, 8 bytes each). The
/// verifier's log is returned in the error when it refuses the program.
pub(super) fn xdp_prog_load(insns: &[u64]) -> io::Result<OwnedFd> {
    const BPF_PROG_LOAD: libc::c_int = 5;
    const BPF_PROG_TYPE_XDP: u64 = 6;
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u64; 16];
    let n = u64::try_from(insns.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    attr[0] = BPF_PROG_TYPE_XDP | n << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // log_level 1, log_size; then log_buf.
    attr[3] = 1 | (log.len() as u64) << 32;
    attr[4] = log.as_mut_ptr() as u64;
    bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(log.get(..end).unwrap_or(&[]));
        io::Error::new(e.kind(), format!("{e}; verifier: {}", text.trim()))
    })
}

/// `BPF_LINK_CREATE`: attaches XDP program `prog` to interface `ifindex` with `flags`
/// (`XDP_FLAGS_DRV_MODE` or `XDP_FLAGS_SKB_MODE`); detached when the link closes.
pub(super) fn xdp_link(prog: &OwnedFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    const BPF_LINK_CREATE: libc::c_int = 28;
    const BPF_XDP: u64 = 37;
    let mut attr = [0u64; 16];
    attr[0] = u64::from(u32::try_from(prog.as_raw_fd()).unwrap_or(0)) | u64::from(ifindex) << 32;
    attr[1] = BPF_XDP | u64::from(flags) << 32;
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// An AF_XDP socket.
pub(super) fn xdp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments; a non-negative result is a fresh
    // descriptor that nothing else owns.
    let fd = check(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by `socket` and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(fd, SOL_XDP, opt, value)` for any plain-data `value`.
pub(super) fn set_xdp_opt<T: Copy>(fd: &OwnedFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `value` points to `len` readable bytes for the duration of the call; the
    // kernel copies them and keeps no pointer (a UMEM registration's address is memory the
    // caller keeps mapped for as long as the socket lives).
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            core::ptr::from_ref(value).cast(),
            len,
        )
    })
    .map(drop)
}

/// Registers `umem` (chunks of `chunk` bytes, `headroom` bytes kept free in front of each
/// received frame) with AF_XDP socket `fd`.
pub(super) fn xdp_umem_reg(
    fd: &OwnedFd,
    umem: &Mapping,
    chunk: u32,
    headroom: u32,
) -> io::Result<()> {
    let reg = libc::xdp_umem_reg_v1 {
        addr: umem.address(),
        len: umem.len() as u64,
        chunk_size: chunk,
        headroom,
    };
    set_xdp_opt(fd, libc::XDP_UMEM_REG, &reg)
}

/// The offsets of the producer, consumer, descriptors and flags in each of `fd`'s four
/// rings (`XDP_MMAP_OFFSETS`).
pub(super) fn xdp_offsets(fd: &OwnedFd) -> io::Result<libc::xdp_mmap_offsets> {
    // SAFETY: plain old data; all zeroes is a valid value.
    let mut off: libc::xdp_mmap_offsets = unsafe { core::mem::zeroed() };
    let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `off` is writable for `len` bytes; the kernel writes at most that.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            core::ptr::from_mut(&mut off).cast(),
            &raw mut len,
        )
    })?;
    if len as usize != size_of::<libc::xdp_mmap_offsets>() {
        // Kernels before 5.4 answer without the flags words.
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "AF_XDP ring offsets without flags",
        ));
    }
    Ok(off)
}

/// The kernel's counts for AF_XDP socket `fd` (`XDP_STATISTICS`, since it was opened).
pub(super) fn xdp_stats(fd: &OwnedFd) -> io::Result<libc::xdp_statistics> {
    // SAFETY: plain old data; all zeroes is a valid value.
    let mut st: libc::xdp_statistics = unsafe { core::mem::zeroed() };
    let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
    // SAFETY: `st` is writable for `len` bytes; the kernel writes at most that (older
    // kernels fewer: the rest stays zero).
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            core::ptr::from_mut(&mut st).cast(),
            &raw mut len,
        )
    })?;
    Ok(st)
}

/// Binds AF_XDP socket `fd` to queue `queue` of interface `ifindex` with `flags`.
pub(super) fn xdp_bind(fd: &OwnedFd, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
    let sa = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `sa` is a valid `sockaddr_xdp` of the length passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            core::ptr::from_ref(&sa).cast(),
            size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Pins the calling thread to CPU `cpu`.
pub(super) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: plain old data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is the calling thread.
    check(unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) })
        .map(drop)
}

/// A shared mapping of a socket's ring, with a hold flag per receive slot (see
/// [`super::RingFrame`]).
pub(super) struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Whether the frame of each receive slot is handed out and not yet dropped (atomic:
    /// a frame may be dropped on another thread than the ring's).
    pub(super) held: Box<[AtomicU8]>,
}

// SAFETY: the mapping is plain shared memory; every access to words the kernel writes goes
// through atomics, and the bytes of a frame are reached only through its `FrameBytes`,
// which one owner holds at a time. Moving it or sharing it between threads adds nothing.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` offers only atomic accesses and bounds-checked copies into
// slots the caller owns.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd`'s ring(s), with `slots` hold flags.
    pub(super) fn new(fd: &OwnedFd, len: usize, slots: usize) -> io::Result<Self> {
        Self::map(Some(fd), len, 0, slots)
    }

    /// Maps `len` bytes of `fd` from byte `offset` (an AF_XDP ring: the offset names which),
    /// or, without `fd`, `len` bytes of fresh zeroed memory (an AF_XDP UMEM); with `slots`
    /// hold flags.
    pub(super) fn map(
        fd: Option<&OwnedFd>,
        len: usize,
        offset: libc::off_t,
        slots: usize,
    ) -> io::Result<Self> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        let mmap = |extra: libc::c_int| {
            // SAFETY: a fresh mapping (of the socket's ring, whose size the kernel checks
            // against what it set up, or anonymous memory); the result is checked before use.
            unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags | libc::MAP_POPULATE | extra,
                    raw,
                    offset,
                )
            }
        };
        let mut ptr = mmap(libc::MAP_LOCKED);
        if ptr == libc::MAP_FAILED {
            // MAP_LOCKED fails under a low RLIMIT_MEMLOCK: map without it.
            ptr = mmap(0);
        }
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            held: (0..slots).map(|_| AtomicU8::new(0)).collect(),
        })
    }

    /// The mapping's address, as an AF_XDP UMEM registration names it.
    pub(super) fn address(&self) -> u64 {
        self.ptr as u64
    }

    /// Its length in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The 64-bit ring word at `off` (8-aligned, inside the mapping).
    fn word64(&self, off: usize) -> Option<&AtomicU64> {
        if !off.is_multiple_of(8) || off.checked_add(8)? > self.len {
            return None;
        }
        // SAFETY: as in `word`, for 8 bytes at an 8-aligned offset.
        Some(unsafe { &*self.ptr.add(off).cast::<AtomicU64>() })
    }

    /// A plain 64-bit ring entry at `off` (an AF_XDP address) that the kernel wrote before
    /// the producer index we loaded.
    pub(super) fn read_u64(&self, off: usize) -> Option<u64> {
        self.word64(off).map(|w| w.load(Ordering::Relaxed))
    }

    /// Writes a 64-bit ring entry at `off` of a ring we produce (published by the release
    /// store of the producer index that follows).
    pub(super) fn write_u64(&self, off: usize, v: u64) {
        if let Some(w) = self.word64(off) {
            w.store(v, Ordering::Relaxed);
        }
    }

    /// The ring word at `off` (4-aligned, inside the mapping), shared with the kernel.
    fn word(&self, off: usize) -> Option<&AtomicU32> {
        if !off.is_multiple_of(4) || off.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: `off` is in bounds and 4-aligned (the mapping is page-aligned), the
        // memory stays mapped while `self` lives, and every access to ring words the kernel
        // writes goes through atomics.
        Some(unsafe { &*self.ptr.add(off).cast::<AtomicU32>() })
    }

    /// Reads the status word at `off` with acquire ordering (what the kernel wrote before
    /// it set the status is visible after).
    pub(super) fn load_status(&self, off: usize) -> Option<u32> {
        self.word(off).map(|w| w.load(Ordering::Acquire))
    }

    /// Writes the status word at `off` with release ordering (what we wrote before is
    /// visible to the kernel once it sees the status).
    pub(super) fn store_status(&self, off: usize, v: u32) {
        if let Some(w) = self.word(off) {
            w.store(v, Ordering::Release);
        }
    }

    /// A plain ring word at `off` that the kernel wrote before a status we loaded.
    pub(super) fn read_u32(&self, off: usize) -> Option<u32> {
        self.word(off).map(|w| w.load(Ordering::Relaxed))
    }

    /// The 16-bit field at `off` (2-aligned) of a header the kernel wrote before a status
    /// we loaded.
    pub(super) fn read_u16(&self, off: usize) -> Option<u16> {
        let b = self.read_u32(off & !3)?.to_ne_bytes();
        let i = off & 2;
        Some(u16::from_ne_bytes([*b.get(i)?, *b.get(i + 1)?]))
    }

    /// Copies `bytes` to `off` (a transmit slot we own: its status says available).
    pub(super) fn write(&self, off: usize, bytes: &[u8]) -> bool {
        if off
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len)
        {
            return false;
        }
        // SAFETY: in bounds (checked above); the slot is ours until we set its status to
        // "send request", so the kernel does not touch these bytes meanwhile.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) };
        true
    }

    /// Writes a plain 32-bit header word at `off` of a slot we own.
    pub(super) fn write_u32(&self, off: usize, v: u32) {
        if let Some(w) = self.word(off) {
            w.store(v, Ordering::Relaxed);
        }
    }

    /// The bytes `off..off + len` of a receive frame we hold (see [`super::RingFrame`]).
    pub(super) fn range(&self, off: usize, len: usize) -> Option<(*mut u8, usize)> {
        if off.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: in bounds (checked above).
        Some((unsafe { self.ptr.add(off) }, len))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `new`; no frame can outlive it (each
        // holds an `Rc` of it).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The bytes of a receive frame held by a [`super::RingFrame`].
pub(super) struct FrameBytes {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the bytes belong to this frame alone until it is dropped (see `bytes`), wherever
// it is; the mapping behind them is `Send + Sync`.
unsafe impl Send for FrameBytes {}

impl FrameBytes {
    /// `ptr..ptr + len` from [`Mapping::range`], held until the frame is dropped.
    pub(super) fn new((ptr, len): (*mut u8, usize)) -> Self {
        Self { ptr, len }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: the range lies in a live mapping (the frame holds an `Rc` of it), frames
        // never overlap, and the slot is not given back to the kernel while the frame lives
        // (the frame gives it back when dropped), so nobody else writes these bytes.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_with_no_descriptors_times_out() {
        let mut out = [PollEvents::default(); 1];
        assert_eq!(poll(core::iter::empty(), 0, &mut out).unwrap(), 0);
    }
}

/// `struct tcp_md5sig` of linux/tcp.h (the `TCP_MD5SIG` option's argument).
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; 80],
}

/// The longest TCP-MD5 key (`TCP_MD5SIG_MAXKEYLEN`).
pub const TCP_MD5_MAX_KEY: usize = 80;

/// `addr` as the kernel takes it: the storage and the length of the family's address.
fn sockaddr(addr: std::net::SocketAddr) -> (libc::sockaddr_storage, usize) {
    // SAFETY: `sockaddr_storage` is plain old data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in`, and
            // the reference is the only one to it while it lives.
            let sin =
                unsafe { &mut *core::ptr::from_mut(&mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 =
                unsafe { &mut *core::ptr::from_mut(&mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len)
}

/// Sets the RFC 2385 TCP MD5 signature key for segments to and from `peer` on a TCP socket
/// (a listening socket takes it for the connections it will accept from `peer`). The key is
/// 1 to [`TCP_MD5_MAX_KEY`] bytes; an empty key removes it.
///
/// # Errors
/// The key is too long, or the kernel refuses the option (built without it).
pub fn set_tcp_md5(fd: BorrowedFd<'_>, peer: std::net::IpAddr, key: &[u8]) -> io::Result<()> {
    let mut sig = TcpMd5Sig {
        addr: sockaddr((peer, 0).into()).0,
        flags: 0,
        prefixlen: 0,
        keylen: u16::try_from(key.len()).unwrap_or(u16::MAX),
        ifindex: 0,
        key: [0; TCP_MD5_MAX_KEY],
    };
    sig.key
        .get_mut(..key.len())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "TCP-MD5 key longer than 80 bytes",
            )
        })?
        .copy_from_slice(key);
    set_opt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

/// A TCP connection to `peer` whose every segment carries an RFC 2385 MD5 signature under
/// `key` (set before the SYN, as the option requires), within `timeout`.
///
/// # Errors
/// The key is longer than [`TCP_MD5_MAX_KEY`], the kernel lacks the option, or the
/// connection fails or times out (`TimedOut`; a peer with another key or none drops the
/// SYN silently, so this is how a wrong key shows).
pub fn connect_tcp_md5(
    peer: std::net::SocketAddr,
    key: &[u8],
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    connect(peer, None, Some(key), timeout)
}

/// A TCP connection to `peer` from the local address `from` (the port the kernel's
/// choice), within `timeout`: the peer sees it come from `from` whatever source address
/// the route to it would pick (a fleet node's sync link, known to its peers by address).
///
/// # Errors
/// `from` of another family than `peer`, an address that is not this host's, or the
/// connection fails or times out (`TimedOut`).
pub fn connect_from(
    from: std::net::IpAddr,
    peer: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    connect(peer, Some(from), None, timeout)
}

/// A TCP connection to `peer`, bound to `from` first if given and signed under `md5` if
/// given, within `timeout`.
fn connect(
    peer: std::net::SocketAddr,
    from: Option<std::net::IpAddr>,
    md5: Option<&[u8]>,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    let domain = if peer.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    if from.is_some_and(|f| f.is_ipv4() != peer.is_ipv4()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "local and peer addresses of different families",
        ));
    }
    // SAFETY: plain system call with constant arguments; a non-negative result is a fresh
    // descriptor that nothing else owns.
    let fd = check(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by `socket` and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(key) = md5 {
        set_tcp_md5(fd.as_fd(), peer.ip(), key)?;
    }
    if let Some(from) = from {
        let (storage, len) = sockaddr(std::net::SocketAddr::new(from, 0));
        // SAFETY: `storage` holds a valid socket address of `len` bytes for the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                core::ptr::from_ref(&storage).cast(),
                len as libc::socklen_t,
            )
        })?;
    }
    // `connect` on Linux gives up after the send timeout.
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros().max(1)),
    };
    set_opt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
    let (storage, len) = sockaddr(peer);
    // SAFETY: `storage` holds a valid socket address of `len` bytes for the call.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            core::ptr::from_ref(&storage).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        // The send timeout ends a connect with EINPROGRESS.
        return Err(if e.raw_os_error() == Some(libc::EINPROGRESS) {
            io::Error::from(io::ErrorKind::TimedOut)
        } else {
            e
        });
    }
    let s = std::net::TcpStream::from(fd);
    s.set_write_timeout(None)?;
    Ok(s)
}

/// Sets `IP_MINTTL` on an IPv4 socket: the kernel drops what arrives with a lower TTL (the
/// Generalized TTL Security Mechanism, RFC 5082, as BFD's single hop takes it: TTL 255
/// only, so that nothing from beyond the link gets in).
///
/// # Errors
/// The kernel refuses the option.
pub fn set_ip_min_ttl(fd: BorrowedFd<'_>, ttl: u8) -> io::Result<()> {
    set_opt(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MINTTL,
        &libc::c_int::from(ttl),
    )
}
