//! Captures in and out, on top of the `pcap-file` crate: classic pcap and pcapng input
//! (told apart by their first four bytes), classic pcap or pcapng output.
//!
//! Reading turns every packet into a [`Record`]: capture time in nanoseconds since the Unix
//! epoch, original length, bytes, and the link type of the interface it was captured on (a
//! pcapng file may mix link types). Two details of the crate are handled here:
//! - pcap records are read raw and checked here, because the crate refuses a record whose
//!   *original* length exceeds the snap length, which is exactly what a truncating capture
//!   holds;
//! - pcapng packet timestamps are in the units of their interface's `if_tsresol` (microseconds
//!   by default) plus its `if_tsoffset`; the crate hands over the raw count, converted here.
//!
//! [`CaptureWriter`] writes frames of any link type: a pcapng file gets one interface per
//! link type (declared on first use) with nanosecond timestamps, and each frame may carry a
//! comment; a classic pcap file holds one link type, fixed by its first frame, and refuses a
//! frame of another ([`PcapError::LinkTypeMismatch`]).

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter, RawPcapPacket};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader, PcapNgWriter};
use pcap_file::{DataLink, TsResolution};
use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

/// Link type 1: Ethernet II frames.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Link type 101: raw IPv4/IPv6 packets without a link-layer header.
pub const LINKTYPE_RAW: u32 = 101;
/// Link type 113: Linux "cooked" capture (SLL).
pub const LINKTYPE_LINUX_SLL: u32 = 113;

/// Largest record we accept; anything bigger is a corrupt file, not a packet.
const MAX_RECORD: u32 = 256 * 1024;
/// Snap length written into our output files (a frame may grow by encapsulation).
const SNAPLEN: u32 = MAX_RECORD;

/// Errors from reading or writing a capture.
#[derive(Debug)]
#[non_exhaustive]
pub enum PcapError {
    /// The underlying reader or writer failed.
    Io(io::Error),
    /// The `pcap-file` crate refused the file or a record.
    Format(pcap_file::PcapError),
    /// The file starts with neither a pcap nor a pcapng magic number.
    BadMagic(u32),
    /// A record claims a length larger than the sanity limit.
    RecordTooLarge(u32),
    /// A pcapng packet names an interface that was never described.
    UnknownInterface(u32),
    /// A classic pcap output holds one link type: this frame has another.
    LinkTypeMismatch {
        /// The file's link type.
        file: u32,
        /// The frame's link type.
        frame: u32,
    },
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "capture I/O error: {e}"),
            Self::Format(e) => write!(f, "capture format error: {e}"),
            Self::BadMagic(m) => write!(f, "not a pcap or pcapng file (magic {m:#010x})"),
            Self::RecordTooLarge(n) => write!(f, "record of {n} bytes exceeds the limit"),
            Self::UnknownInterface(i) => write!(f, "packet on undescribed interface {i}"),
            Self::LinkTypeMismatch { file, frame } => write!(
                f,
                "a classic pcap file holds one link type ({file}); this frame is link type \
                 {frame} (write pcapng instead)"
            ),
        }
    }
}

impl std::error::Error for PcapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Format(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for PcapError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<pcap_file::PcapError> for PcapError {
    fn from(e: pcap_file::PcapError) -> Self {
        match e {
            pcap_file::PcapError::IoError(e) => Self::Io(e),
            e => Self::Format(e),
        }
    }
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Capture time in nanoseconds since the Unix epoch.
    pub ts_nanos: u64,
    /// Length of the frame on the wire (may exceed `data.len()` if the capture was cut).
    pub orig_len: u32,
    /// Link type of the frame (see the `LINKTYPE_*` constants).
    pub linktype: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// The container format of a capture file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Classic libpcap (2.4), one link type per file.
    Pcap,
    /// pcapng, one link type per interface.
    PcapNg,
}

/// Streaming reader of a pcap or pcapng capture.
pub struct CaptureReader<R: Read> {
    inner: Inner<R>,
}

/// The chained reader: the sniffed magic, then the rest of the input.
type Sniffed<R> = io::Chain<io::Cursor<[u8; 4]>, R>;

enum Inner<R: Read> {
    Pcap {
        reader: pcap_file::pcap::PcapReader<Sniffed<R>>,
        header: PcapHeader,
    },
    PcapNg(Box<PcapNgReader<Sniffed<R>>>),
}

impl<R: Read> fmt::Debug for CaptureReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureReader")
            .field("format", &self.format())
            .finish_non_exhaustive()
    }
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header of a pcap or pcapng capture.
    ///
    /// # Errors
    /// [`PcapError::BadMagic`] for anything else, [`PcapError::Io`] / [`PcapError::Format`]
    /// on a short or malformed header.
    pub fn new(mut inner: R) -> Result<Self, PcapError> {
        let mut magic = [0u8; 4];
        inner.read_exact(&mut magic)?;
        let chained = io::Cursor::new(magic).chain(inner);
        let inner = match u32::from_le_bytes(magic) {
            0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => {
                let reader = pcap_file::pcap::PcapReader::new(chained)?;
                let header = reader.header();
                Inner::Pcap { reader, header }
            }
            0x0a0d_0d0a => Inner::PcapNg(Box::new(PcapNgReader::new(chained)?)),
            m => return Err(PcapError::BadMagic(m)),
        };
        Ok(Self { inner })
    }

    /// The container format.
    pub fn format(&self) -> Format {
        match self.inner {
            Inner::Pcap { .. } => Format::Pcap,
            Inner::PcapNg(_) => Format::PcapNg,
        }
    }

    /// Reads the next packet, or `None` at a clean end of file. pcapng blocks that are not
    /// packets (interface descriptions, statistics, name resolution ...) are skipped.
    ///
    /// # Errors
    /// [`PcapError::Io`] / [`PcapError::Format`] on a truncated or malformed record,
    /// [`PcapError::RecordTooLarge`] on a corrupt length, [`PcapError::UnknownInterface`].
    pub fn next_record(&mut self) -> Result<Option<Record>, PcapError> {
        match &mut self.inner {
            Inner::Pcap { reader, header } => match reader.next_raw_packet() {
                None => Ok(None),
                Some(raw) => pcap_record(&raw?, header).map(Some),
            },
            Inner::PcapNg(reader) => loop {
                let Some(block) = reader.next_block() else {
                    return Ok(None);
                };
                let (iface, raw_ts, orig_len, data) = match block? {
                    Block::EnhancedPacket(p) => (
                        p.interface_id,
                        Some(p.timestamp.as_nanos()),
                        p.original_len,
                        p.data.into_owned(),
                    ),
                    Block::SimplePacket(p) => (0, None, p.original_len, p.data.into_owned()),
                    Block::Packet(p) => (
                        u32::from(p.interface_id),
                        Some(u128::from(p.timestamp)),
                        p.original_len,
                        p.data.into_owned(),
                    ),
                    _ => continue,
                };
                let idb = reader
                    .interfaces()
                    .get(iface as usize)
                    .ok_or(PcapError::UnknownInterface(iface))?;
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                if len > MAX_RECORD {
                    return Err(PcapError::RecordTooLarge(len));
                }
                return Ok(Some(Record {
                    ts_nanos: raw_ts.map_or(0, |t| pcapng_nanos(t, idb)),
                    orig_len,
                    linktype: u32::from(idb.linktype),
                    data,
                }));
            },
        }
    }

    /// Reads every remaining record.
    ///
    /// # Errors
    /// As [`CaptureReader::next_record`].
    pub fn records(mut self) -> Result<Vec<Record>, PcapError> {
        let mut v = Vec::new();
        while let Some(r) = self.next_record()? {
            v.push(r);
        }
        Ok(v)
    }
}

/// Opens and reads a whole capture file.
///
/// # Errors
/// Opening the file, or as [`CaptureReader::next_record`].
pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<Record>, PcapError> {
    CaptureReader::new(BufReader::new(std::fs::File::open(path)?))?.records()
}

/// A classic pcap record, checked: the crate's own check also refuses an original length
/// above the snap length, which a truncating capture legitimately has.
fn pcap_record(raw: &RawPcapPacket<'_>, header: &PcapHeader) -> Result<Record, PcapError> {
    if raw.incl_len > MAX_RECORD || raw.data.len() != raw.incl_len as usize {
        return Err(PcapError::RecordTooLarge(raw.incl_len));
    }
    let frac = u64::from(raw.ts_frac);
    let frac = match header.ts_resolution {
        TsResolution::MicroSecond => frac * 1000,
        TsResolution::NanoSecond => frac,
    };
    Ok(Record {
        ts_nanos: u64::from(raw.ts_sec) * 1_000_000_000 + frac,
        orig_len: raw.orig_len,
        linktype: u32::from(header.datalink),
        data: raw.data.to_vec(),
    })
}

/// Nanoseconds since the epoch of a raw pcapng timestamp on interface `idb`.
fn pcapng_nanos(raw: u128, idb: &InterfaceDescriptionBlock<'_>) -> u64 {
    let mut resol = 6u8;
    let mut offset_secs = 0u64;
    for opt in &idb.options {
        match opt {
            InterfaceDescriptionOption::IfTsResol(r) => resol = *r,
            InterfaceDescriptionOption::IfTsOffset(o) => offset_secs = *o,
            _ => {}
        }
    }
    let exp = u32::from(resol & 0x7f);
    let nanos = if resol & 0x80 != 0 {
        // Units of 2^-exp seconds.
        raw.saturating_mul(1_000_000_000)
            .checked_shr(exp)
            .unwrap_or(0)
    } else if exp <= 9 {
        raw.saturating_mul(10u128.pow(9 - exp))
    } else {
        raw / 10u128.checked_pow(exp - 9).unwrap_or(u128::MAX)
    };
    let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
    nanos.saturating_add(offset_secs.saturating_mul(1_000_000_000))
}

/// Writer of frames of any link type into a pcapng or classic pcap file (see the module
/// docs).
pub struct CaptureWriter<W: Write> {
    out: Out<W>,
}

enum Out<W: Write> {
    /// Classic pcap: the header waits for the first frame, which fixes the link type.
    PcapPending(Option<W>),
    Pcap(PcapWriter<W>, u32),
    PcapNg {
        writer: Box<PcapNgWriter<W>>,
        /// (link type, interface id), in declaration order.
        interfaces: Vec<u32>,
    },
}

impl<W: Write> fmt::Debug for CaptureWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureWriter")
            .field("format", &self.format())
            .finish_non_exhaustive()
    }
}

impl<W: Write> CaptureWriter<W> {
    /// A writer of `format`; nothing is written until the first frame (pcapng writes its
    /// section header at once).
    ///
    /// # Errors
    /// Writing the pcapng section header failed.
    pub fn new(inner: W, format: Format) -> Result<Self, PcapError> {
        let out = match format {
            Format::Pcap => Out::PcapPending(Some(inner)),
            Format::PcapNg => Out::PcapNg {
                writer: Box::new(PcapNgWriter::new(inner)?),
                interfaces: Vec::new(),
            },
        };
        Ok(Self { out })
    }

    /// The container format.
    pub fn format(&self) -> Format {
        match self.out {
            Out::PcapPending(_) | Out::Pcap(..) => Format::Pcap,
            Out::PcapNg { .. } => Format::PcapNg,
        }
    }

    /// Appends one frame of `linktype` captured at `ts_nanos`; `comment` goes into a pcapng
    /// packet comment (a classic pcap file has no place for it).
    ///
    /// # Errors
    /// [`PcapError::LinkTypeMismatch`] (classic pcap), or the writer failed.
    pub fn write(
        &mut self,
        ts_nanos: u64,
        linktype: u32,
        frame: &[u8],
        comment: Option<&str>,
    ) -> Result<(), PcapError> {
        let len = u32::try_from(frame.len()).map_err(|_| PcapError::RecordTooLarge(u32::MAX))?;
        if len > SNAPLEN {
            return Err(PcapError::RecordTooLarge(len));
        }
        let ts = Duration::from_nanos(ts_nanos);
        if let Out::PcapPending(inner) = &mut self.out {
            let inner = inner
                .take()
                .ok_or(PcapError::Io(io::ErrorKind::Other.into()))?;
            self.out = Out::Pcap(pcap_writer(inner, linktype)?, linktype);
        }
        match &mut self.out {
            Out::PcapPending(_) => {}
            Out::Pcap(w, file) => {
                if *file != linktype {
                    return Err(PcapError::LinkTypeMismatch {
                        file: *file,
                        frame: linktype,
                    });
                }
                w.write_packet(&PcapPacket::new(ts, len, frame))?;
            }
            Out::PcapNg { writer, interfaces } => {
                let id = match interfaces.iter().position(|&l| l == linktype) {
                    Some(i) => i,
                    None => {
                        let mut idb =
                            InterfaceDescriptionBlock::new(DataLink::from(linktype), SNAPLEN);
                        idb.options = vec![
                            InterfaceDescriptionOption::IfName(Cow::Borrowed(link_name(linktype))),
                            InterfaceDescriptionOption::IfTsResol(9),
                        ];
                        writer.write_pcapng_block(idb)?;
                        interfaces.push(linktype);
                        interfaces.len() - 1
                    }
                };
                let options = comment
                    .map(|c| vec![EnhancedPacketOption::Comment(Cow::Borrowed(c))])
                    .unwrap_or_default();
                // With if_tsresol = 9 the raw timestamp is the nanosecond count.
                writer.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: id as u32,
                    timestamp: ts,
                    original_len: len,
                    data: Cow::Borrowed(frame),
                    options,
                })?;
            }
        }
        Ok(())
    }

    /// Flushes and returns the underlying writer. A classic pcap file that got no frame is
    /// given an Ethernet header, so it is still a valid (empty) capture.
    ///
    /// # Errors
    /// Writing the header or flushing failed.
    pub fn finish(self) -> Result<W, PcapError> {
        let mut inner = match self.out {
            Out::PcapPending(Some(inner)) => pcap_writer(inner, LINKTYPE_ETHERNET)?.into_writer(),
            Out::PcapPending(None) => return Err(PcapError::Io(io::ErrorKind::Other.into())),
            Out::Pcap(w, _) => w.into_writer(),
            Out::PcapNg { writer, .. } => writer.into_inner(),
        };
        inner.flush()?;
        Ok(inner)
    }
}

/// A classic pcap writer: little-endian, nanosecond timestamps, our snap length.
fn pcap_writer<W: Write>(inner: W, linktype: u32) -> Result<PcapWriter<W>, PcapError> {
    let header = PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::from(linktype),
        ts_resolution: TsResolution::NanoSecond,
        endianness: pcap_file::Endianness::Little,
        ..PcapHeader::default()
    };
    Ok(PcapWriter::with_header(inner, header)?)
}

/// The interface name a pcapng output gives each link type.
fn link_name(linktype: u32) -> &'static str {
    match linktype {
        LINKTYPE_ETHERNET => "ethernet",
        LINKTYPE_RAW => "ip",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(format: Format) -> Vec<Record> {
        let mut w = CaptureWriter::new(Vec::new(), format).unwrap();
        w.write(1_500_000_123_456, LINKTYPE_ETHERNET, &[1, 2, 3], Some("x"))
            .unwrap();
        w.write(2_000_000_000, LINKTYPE_ETHERNET, &[], None)
            .unwrap();
        let bytes = w.finish().unwrap();
        let r = CaptureReader::new(&bytes[..]).unwrap();
        assert_eq!(r.format(), format);
        r.records().unwrap()
    }

    #[test]
    fn pcap_and_pcapng_round_trip_with_nanosecond_times() {
        for format in [Format::Pcap, Format::PcapNg] {
            let recs = round_trip(format);
            assert_eq!(recs.len(), 2, "{format:?}");
            assert_eq!(recs[0].data, vec![1, 2, 3]);
            assert_eq!(recs[0].ts_nanos, 1_500_000_123_456);
            assert_eq!(recs[0].linktype, LINKTYPE_ETHERNET);
            assert_eq!(recs[1].orig_len, 0);
            assert_eq!(recs[1].ts_nanos, 2_000_000_000);
        }
    }

    #[test]
    fn pcapng_mixes_link_types_and_pcap_refuses_to() {
        let mut w = CaptureWriter::new(Vec::new(), Format::PcapNg).unwrap();
        w.write(1, LINKTYPE_ETHERNET, &[0; 14], None).unwrap();
        w.write(2, LINKTYPE_RAW, &[0x45], None).unwrap();
        w.write(3, LINKTYPE_ETHERNET, &[1; 14], None).unwrap();
        let bytes = w.finish().unwrap();
        let links: Vec<u32> = CaptureReader::new(&bytes[..])
            .unwrap()
            .records()
            .unwrap()
            .iter()
            .map(|r| r.linktype)
            .collect();
        assert_eq!(links, [LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_ETHERNET]);

        let mut w = CaptureWriter::new(Vec::new(), Format::Pcap).unwrap();
        w.write(1, LINKTYPE_RAW, &[0x45], None).unwrap();
        assert!(matches!(
            w.write(2, LINKTYPE_ETHERNET, &[0; 14], None),
            Err(PcapError::LinkTypeMismatch {
                file: LINKTYPE_RAW,
                frame: LINKTYPE_ETHERNET
            })
        ));
        let empty = CaptureWriter::new(Vec::new(), Format::Pcap)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(empty.len(), 24);
    }

    #[test]
    fn pcapng_timestamps_follow_the_interface_resolution() {
        let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0);
        assert_eq!(
            pcapng_nanos(1_500, &idb),
            1_500_000,
            "microseconds by default"
        );
        idb.options = vec![InterfaceDescriptionOption::IfTsResol(9)];
        assert_eq!(pcapng_nanos(1_500, &idb), 1_500);
        idb.options = vec![
            InterfaceDescriptionOption::IfTsResol(0x80 | 10),
            InterfaceDescriptionOption::IfTsOffset(2),
        ];
        assert_eq!(pcapng_nanos(1024, &idb), 2_000_000_000 + 1_000_000_000);
    }

    #[test]
    fn rejects_other_files_and_huge_records_and_keeps_truncated_ones() {
        assert!(matches!(
            CaptureReader::new(&[0x7f, b'E', b'L', b'F', 0, 0, 0, 0][..]),
            Err(PcapError::BadMagic(_))
        ));
        let mut w = CaptureWriter::new(Vec::new(), Format::Pcap).unwrap();
        w.write(0, LINKTYPE_ETHERNET, &[0], None).unwrap();
        let mut bytes = w.finish().unwrap();
        // Original length 70000 > snap length: a cut frame, still read.
        let snap = 65535u32.to_le_bytes();
        bytes[16..20].copy_from_slice(&snap);
        bytes[24 + 12..24 + 16].copy_from_slice(&70_000u32.to_le_bytes());
        let recs = CaptureReader::new(&bytes[..]).unwrap().records().unwrap();
        assert_eq!(recs[0].orig_len, 70_000);
        bytes[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        assert!(r.next_record().is_err());
    }
}
