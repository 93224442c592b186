//! The system calls and shared-memory accesses behind [`super`]: AF_PACKET sockets, the
//! `PACKET_MMAP` ring mapping, `poll` and the transmit kick. Everything `unsafe` in the
//! examples crate is here, behind safe functions.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

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
    let len = libc::socklen_t::try_from(size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `value` points to `len` readable bytes for the duration of the call; the
    // kernel copies them and keeps no pointer.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
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
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel checks `len`
        // against the ring it set up. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        let ptr = if ptr == libc::MAP_FAILED {
            // MAP_LOCKED fails under a low RLIMIT_MEMLOCK: map without it.
            // SAFETY: as above.
            let p = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            p
        } else {
            ptr
        };
        Ok(Self {
            ptr: ptr.cast(),
            len,
            held: (0..slots).map(|_| AtomicU8::new(0)).collect(),
        })
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
