//! Minimal classic-pcap (libpcap 2.4) reader and writer.
//!
//! Reads both byte orders and both the microsecond and nanosecond magic; writes
//! microsecond-resolution little-endian files. Enough for the example programs and the
//! tests that hand our output to `tshark`; it does not read pcapng.

use std::fmt;
use std::io::{self, Read, Write};

/// Link type 1: Ethernet II frames.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Link type 101: raw IPv4/IPv6 packets without a link-layer header.
pub const LINKTYPE_RAW: u32 = 101;
/// Link type 113: Linux "cooked" capture (SLL).
pub const LINKTYPE_LINUX_SLL: u32 = 113;

/// Largest record we accept; anything bigger is a corrupt file, not a packet.
const MAX_RECORD: u32 = 256 * 1024;

/// Errors from reading a pcap file.
#[derive(Debug)]
pub enum PcapError {
    /// The underlying reader failed.
    Io(io::Error),
    /// The file does not start with a pcap magic number (pcapng is not supported).
    BadMagic(u32),
    /// A record claims a length larger than the sanity limit.
    RecordTooLarge(u32),
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "pcap I/O error: {e}"),
            Self::BadMagic(m) => write!(f, "not a classic pcap file (magic {m:#010x})"),
            Self::RecordTooLarge(n) => write!(f, "pcap record of {n} bytes exceeds the limit"),
        }
    }
}

impl std::error::Error for PcapError {}

impl From<io::Error> for PcapError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Capture time in nanoseconds since the Unix epoch.
    pub ts_nanos: u64,
    /// Length of the frame on the wire (may exceed `data.len()` if the capture was cut).
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// Streaming reader of a classic pcap file.
#[derive(Debug)]
pub struct PcapReader<R> {
    inner: R,
    big_endian: bool,
    nanos: bool,
    linktype: u32,
}

impl<R: Read> PcapReader<R> {
    /// Reads the global header.
    ///
    /// # Errors
    /// [`PcapError::BadMagic`] for anything but classic pcap, [`PcapError::Io`] on short input.
    pub fn new(mut inner: R) -> Result<Self, PcapError> {
        let mut h = [0u8; 24];
        inner.read_exact(&mut h)?;
        let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let (big_endian, nanos) = match magic {
            0xa1b2_c3d4 => (false, false),
            0xa1b2_3c4d => (false, true),
            0xd4c3_b2a1 => (true, false),
            0x4d3c_b2a1 => (true, true),
            m => return Err(PcapError::BadMagic(m)),
        };
        let mut r = Self {
            inner,
            big_endian,
            nanos,
            linktype: 0,
        };
        r.linktype = r.u32_at(&h, 20);
        Ok(r)
    }

    /// The file's link type (see the `LINKTYPE_*` constants).
    pub fn linktype(&self) -> u32 {
        self.linktype
    }

    fn u32_at(&self, b: &[u8], at: usize) -> u32 {
        let x = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.big_endian {
            u32::from_be_bytes(x)
        } else {
            u32::from_le_bytes(x)
        }
    }

    /// Reads the next record, or `None` at a clean end of file.
    ///
    /// # Errors
    /// [`PcapError::Io`] on a truncated record, [`PcapError::RecordTooLarge`] on a corrupt length.
    pub fn next_record(&mut self) -> Result<Option<Record>, PcapError> {
        let mut h = [0u8; 16];
        let mut got = 0;
        while got < h.len() {
            let n = self.inner.read(&mut h[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            got += n;
        }
        let sec = u64::from(self.u32_at(&h, 0));
        let frac = u64::from(self.u32_at(&h, 4));
        let incl = self.u32_at(&h, 8);
        let orig_len = self.u32_at(&h, 12);
        if incl > MAX_RECORD {
            return Err(PcapError::RecordTooLarge(incl));
        }
        let mut data = vec![0u8; incl as usize];
        self.inner.read_exact(&mut data)?;
        let ts_nanos = sec * 1_000_000_000 + if self.nanos { frac } else { frac * 1000 };
        Ok(Some(Record {
            ts_nanos,
            orig_len,
            data,
        }))
    }

    /// Reads every remaining record.
    ///
    /// # Errors
    /// As [`PcapReader::next_record`].
    pub fn records(mut self) -> Result<Vec<Record>, PcapError> {
        let mut v = Vec::new();
        while let Some(r) = self.next_record()? {
            v.push(r);
        }
        Ok(v)
    }
}

/// Writer of a classic little-endian, microsecond pcap file.
#[derive(Debug)]
pub struct PcapWriter<W> {
    inner: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header for `linktype` with a 65535-byte snap length.
    ///
    /// # Errors
    /// Any error from the underlying writer.
    pub fn new(mut inner: W, linktype: u32) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&linktype.to_le_bytes());
        inner.write_all(&h)?;
        Ok(Self { inner })
    }

    /// Appends one frame captured at `ts_nanos` (nanoseconds since the Unix epoch).
    ///
    /// # Errors
    /// Any error from the underlying writer, or `InvalidInput` for a frame over 4 GiB.
    pub fn write(&mut self, ts_nanos: u64, frame: &[u8]) -> io::Result<()> {
        let len =
            u32::try_from(frame.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let sec = (ts_nanos / 1_000_000_000) as u32;
        let usec = ((ts_nanos % 1_000_000_000) / 1000) as u32;
        for v in [sec, usec, len, len] {
            self.inner.write_all(&v.to_le_bytes())?;
        }
        self.inner.write_all(frame)
    }

    /// Flushes and returns the underlying writer.
    ///
    /// # Errors
    /// Any error from flushing.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.flush()?;
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips() {
        let mut w = PcapWriter::new(Vec::new(), LINKTYPE_ETHERNET).unwrap();
        w.write(1_500_000_123_000, &[1, 2, 3]).unwrap();
        w.write(2_000_000_000, &[]).unwrap();
        let bytes = w.finish().unwrap();
        let r = PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(r.linktype(), LINKTYPE_ETHERNET);
        let recs = r.records().unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].data, vec![1, 2, 3]);
        assert_eq!(recs[0].ts_nanos, 1_500_000_123_000);
        assert_eq!(recs[1].orig_len, 0);
    }

    #[test]
    fn rejects_pcapng_and_huge_records() {
        assert!(matches!(
            PcapReader::new(
                &[
                    0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0
                ][..]
            ),
            Err(PcapError::BadMagic(_))
        ));
        let mut w = PcapWriter::new(Vec::new(), LINKTYPE_ETHERNET).unwrap();
        w.write(0, &[0]).unwrap();
        let mut bytes = w.finish().unwrap();
        bytes[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = PcapReader::new(&bytes[..]).unwrap();
        assert!(matches!(r.next_record(), Err(PcapError::RecordTooLarge(_))));
    }
}
