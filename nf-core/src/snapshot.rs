//! Configuration snapshots with static stability (`std` feature).
//!
//! The control plane writes the *whole* configuration as one versioned, checksummed file
//! ([`encode`]); every node pulls it at a constant rate whether or not it changed (AWS
//! Hyperplane's pattern), so neither a control-plane outage nor a burst of changes can hurt
//! the dataplane:
//! - a [`Puller`] fetches from a [`Source`] (a file or a directory on disk, or a web server
//!   or object store over HTTP; HTTPS through a `Source` of your own) once per interval, on
//!   the caller's clock;
//! - what it fetched is checked in order — envelope complete ([`Reject::Torn`]), magic and
//!   checksum ([`Reject::Corrupt`]), version not older than the one in use
//!   ([`Reject::Older`]) and not the same version with other content
//!   ([`Reject::VersionConflict`]), decoded and validated by the caller's [`Codec`]
//!   ([`Reject::Invalid`]) — all off the packet path;
//! - only then is it published through [`arc_swap`]. Anything else changes nothing: the last
//!   good snapshot stays, and [`PullerCounters`] and [`Puller::last`] say why;
//! - each worker holds a [`SnapshotCell`] and calls [`SnapshotCell::refresh`] once per batch,
//!   between batches, so every packet of a batch sees one version.
//!
//! ```
//! use nf_core::snapshot::{self, Codec, MemorySource, Puller, PullResult};
//! use nf_core::{Duration, Instant};
//!
//! /// The caller's configuration: here one number that must be even.
//! struct Even;
//! impl Codec for Even {
//!     type Config = u32;
//!     fn decode(&self, payload: &[u8]) -> Result<u32, String> {
//!         let b: [u8; 4] = payload.try_into().map_err(|_| "not 4 bytes".to_string())?;
//!         Ok(u32::from_be_bytes(b))
//!     }
//!     fn validate(&self, v: &u32) -> Result<(), String> {
//!         if v % 2 == 0 { Ok(()) } else { Err(format!("{v} is odd")) }
//!     }
//! }
//!
//! let source = MemorySource::new(snapshot::encode(1, &4u32.to_be_bytes()));
//! let mut puller = Puller::new(source, Even, Duration::from_secs(10));
//! assert_eq!(puller.handle_timeout(Instant::ZERO), PullResult::Applied(1));
//! let mut cell = puller.subscribe().expect("a snapshot is in use");
//! assert_eq!(*cell.current().config(), 4);
//!
//! // An invalid config is rejected and the last good one stays.
//! puller.source_mut().set(snapshot::encode(2, &5u32.to_be_bytes()));
//! let later = Instant::ZERO + Duration::from_secs(10);
//! assert!(matches!(puller.handle_timeout(later), PullResult::Rejected(_)));
//! assert!(!cell.refresh());
//! assert_eq!((cell.version(), *cell.current().config()), (1, 4));
//! ```

use crate::time::{Duration, Instant};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use arc_swap::ArcSwapOption;
use core::fmt;
use siphasher::sip::SipHasher24;
use std::path::PathBuf;

/// The first bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"NFSNAP01";
/// Envelope bytes in front of the payload: magic, version, payload length, checksum.
pub const HEADER_LEN: usize = 8 + 8 + 8 + 8;
/// The SipHash-2-4 key of the payload checksum (a corruption check, not authentication:
/// sign the file in your `Source` if the path to it is not trusted).
const CHECKSUM_KEY: [u8; 16] = *b"nf snapshot v1 \0";

/// Over the version, the length and the payload: a flipped bit anywhere after the magic is
/// caught.
fn checksum(version: u64, payload: &[u8]) -> u64 {
    use core::hash::Hasher;
    let mut h = SipHasher24::new_with_key(&CHECKSUM_KEY);
    h.write(&version.to_be_bytes());
    h.write(&(payload.len() as u64).to_be_bytes());
    h.write(payload);
    h.finish()
}

/// A snapshot file: `MAGIC`, the version, the payload length and a checksum of those and
/// the payload (big-endian u64s; SipHash-2-4 under a fixed key), then the payload (the
/// caller's encoding of its config).
pub fn encode(version: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&checksum(version, payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The version, checksum and payload of a snapshot file, once its envelope checks out.
///
/// # Errors
/// [`Reject::Torn`] for a file shorter or longer than its header says (a write caught half
/// way), [`Reject::Corrupt`] for a wrong magic or checksum.
pub fn open(file: &[u8]) -> Result<(u64, u64, &[u8]), Reject> {
    let word = |at: usize| {
        file.get(at..at + 8)
            .and_then(|w| w.first_chunk::<8>())
            .map(|w| u64::from_be_bytes(*w))
    };
    let magic = file.get(..8).ok_or(Reject::Torn)?;
    if magic != MAGIC {
        return Err(Reject::Corrupt);
    }
    let (Some(version), Some(len), Some(sum)) = (word(8), word(16), word(24)) else {
        return Err(Reject::Torn);
    };
    let payload = file.get(HEADER_LEN..).unwrap_or(&[]);
    if payload.len() as u64 != len {
        return Err(Reject::Torn);
    }
    if checksum(version, payload) != sum {
        return Err(Reject::Corrupt);
    }
    Ok((version, sum, payload))
}

/// The caller's side of a snapshot: how its config is decoded from the payload, and what
/// makes one acceptable beyond decoding (semantic validation: no overlapping prefixes, a
/// backend in every pool ...). Both run on the puller's thread, never on the packet path.
pub trait Codec {
    /// The configuration.
    type Config;
    /// Decodes a payload.
    ///
    /// # Errors
    /// Why it does not decode.
    fn decode(&self, payload: &[u8]) -> Result<Self::Config, String>;
    /// Checks a decoded config.
    ///
    /// # Errors
    /// Why it must not be used.
    fn validate(&self, _config: &Self::Config) -> Result<(), String> {
        Ok(())
    }
}

/// One published configuration.
#[derive(Debug)]
pub struct Snapshot<T> {
    version: u64,
    checksum: u64,
    applied_at: Instant,
    config: T,
}

impl<T> Snapshot<T> {
    /// Its version.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// When the puller published it (the caller's clock).
    pub fn applied_at(&self) -> Instant {
        self.applied_at
    }
    /// The configuration.
    pub fn config(&self) -> &T {
        &self.config
    }
}

impl<T> core::ops::Deref for Snapshot<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.config
    }
}

/// Why a pulled snapshot was not used (the last good one stays).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reject {
    /// The source could not be read (down, missing, slow): the text says how.
    SourceDown(String),
    /// Shorter or longer than its header says: caught half-written.
    Torn,
    /// Wrong magic or checksum.
    Corrupt,
    /// Older than the version in use.
    Older,
    /// The version in use, with other content (the control plane reused a version number).
    VersionConflict,
    /// The caller's codec refused it: the text says why.
    Invalid(String),
}

impl Reject {
    /// Stable `snake_case` name, for counters and logs.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::SourceDown(_) => "source_down",
            Self::Torn => "torn",
            Self::Corrupt => "corrupt",
            Self::Older => "older",
            Self::VersionConflict => "version_conflict",
            Self::Invalid(_) => "invalid",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SourceDown(why) => write!(f, "source down: {why}"),
            Self::Invalid(why) => write!(f, "invalid: {why}"),
            other => f.write_str(other.name()),
        }
    }
}

impl core::error::Error for Reject {}

/// What one pull did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullResult {
    /// Not due yet: nothing was fetched.
    NotDue,
    /// A new version was published.
    Applied(u64),
    /// The version in use, fetched again.
    Unchanged(u64),
    /// Refused; the last good snapshot stays.
    Rejected(Reject),
}

/// Where the whole snapshot file is fetched from.
pub trait Source {
    /// Replaces `buf` with the current snapshot file.
    ///
    /// # Errors
    /// Why it could not be read (the puller counts it as [`Reject::SourceDown`]).
    fn fetch(&mut self, buf: &mut Vec<u8>) -> Result<(), String>;
}

/// A snapshot file on disk, or the file `snapshot.nfs` in a directory (the embedded
/// default: the control plane replaces it with a rename, so a reader sees the old file or
/// the new one).
#[derive(Clone, Debug)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    /// The file at `path`, or `path/snapshot.nfs` if `path` is a directory.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl Source for FileSource {
    fn fetch(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        let path = if self.path.is_dir() {
            self.path.join("snapshot.nfs")
        } else {
            self.path.clone()
        };
        buf.clear();
        std::io::Read::read_to_end(
            &mut std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?,
            buf,
        )
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A snapshot served over plain HTTP/1.1 (an object store's HTTP endpoint, any web server):
/// one `GET` per pull with `Connection: close`, connect, read and write timeouts, and a bound
/// on the body. A status other than 200, a malformed response, a body of another length than
/// announced, a chunked body or one longer than the bound is an error (the puller counts
/// [`Reject::SourceDown`]); a file the server serves torn is caught by the envelope check
/// ([`Reject::Torn`]). HTTPS needs a TLS client: wrap one in a [`Source`] of your own.
#[derive(Clone, Debug)]
pub struct HttpSource {
    host: String,
    port: u16,
    path: String,
    timeout: core::time::Duration,
    max_len: usize,
}

impl HttpSource {
    /// A source for `url` (`http://host[:port]/path`), with 2 s timeouts and a 64 MiB bound.
    ///
    /// # Errors
    /// A URL that is not `http://` with a host.
    pub fn new(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// (https needs a TLS Source of your own)"))?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url}: bad port {p:?}"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path: path.to_string(),
            timeout: core::time::Duration::from_secs(2),
            max_len: 64 << 20,
        })
    }

    /// Connect, read and write timeout of each pull.
    pub fn with_timeout(mut self, timeout: core::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Largest body accepted.
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    fn get(&self, buf: &mut Vec<u8>) -> std::io::Result<Result<(), String>> {
        use std::io::{Read, Write};
        use std::net::ToSocketAddrs;
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: nf-snapshot\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path
        );
        stream.write_all(request.as_bytes())?;
        // Headers and body, bounded: a server cannot make the puller hold more.
        buf.clear();
        let limit = (self.max_len + 16 * 1024) as u64;
        stream.take(limit + 1).read_to_end(buf)?;
        if buf.len() as u64 > limit {
            return Ok(Err(format!("response over {} bytes", self.max_len)));
        }
        Ok(self.body(buf))
    }

    /// Leaves the body of the response in `buf`.
    fn body(&self, buf: &mut Vec<u8>) -> Result<(), String> {
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no end of headers")?;
        let head = core::str::from_utf8(buf.get(..end).unwrap_or(&[]))
            .map_err(|_| "headers not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or("");
        let code = status.split(' ').nth(1).unwrap_or("");
        if !status.starts_with("HTTP/1.") || code != "200" {
            return Err(format!("{}: {status}", self.path));
        }
        let mut length = None;
        for line in lines {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding")
                && !value.eq_ignore_ascii_case("identity")
            {
                return Err(format!("transfer-encoding {value} not supported"));
            }
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| "bad content-length".to_string())?,
                );
            }
        }
        let body_at = end + 4;
        let body_len = buf.len() - body_at;
        if length.is_some_and(|n| n > self.max_len) || body_len > self.max_len {
            return Err(format!("body over {} bytes", self.max_len));
        }
        if let Some(n) = length
            && n != body_len
        {
            return Err(format!("body of {body_len} bytes, {n} announced"));
        }
        buf.drain(..body_at);
        Ok(())
    }
}

impl Source for HttpSource {
    fn fetch(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        match self.get(buf) {
            Ok(r) => r,
            Err(e) => Err(format!(
                "http://{}:{}{}: {e}",
                self.host, self.port, self.path
            )),
        }
    }
}

/// A source held in memory (tests, or a caller that receives files its own way); `None`
/// is a source that is down.
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    file: Option<Vec<u8>>,
}

impl MemorySource {
    /// Serving `file`.
    pub fn new(file: Vec<u8>) -> Self {
        Self { file: Some(file) }
    }
    /// Serves `file` from now on.
    pub fn set(&mut self, file: Vec<u8>) {
        self.file = Some(file);
    }
    /// Goes down.
    pub fn take_down(&mut self) {
        self.file = None;
    }
}

impl Source for MemorySource {
    fn fetch(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        let file = self.file.as_ref().ok_or_else(|| "down".to_string())?;
        buf.clear();
        buf.extend_from_slice(file);
        Ok(())
    }
}

/// What the puller saw, for operators.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PullerCounters {
    /// Fetches attempted.
    pub pulls: u64,
    /// New versions published.
    pub applied: u64,
    /// Fetches of the version in use.
    pub unchanged: u64,
    /// Rejected fetches by [`Reject::name`]: source_down, torn, corrupt, older,
    /// version_conflict, invalid.
    pub rejected: [u64; 6],
}

impl PullerCounters {
    fn reject(&mut self, r: &Reject) {
        let i = match r {
            Reject::SourceDown(_) => 0,
            Reject::Torn => 1,
            Reject::Corrupt => 2,
            Reject::Older => 3,
            Reject::VersionConflict => 4,
            Reject::Invalid(_) => 5,
        };
        if let Some(c) = self.rejected.get_mut(i) {
            *c += 1;
        }
    }

    /// Every counter as (name, value): `pulls`, `applied`, `unchanged`, then
    /// `rejected_<reason>`.
    pub fn visit(&self, f: &mut dyn FnMut(&'static str, u64)) {
        f("pulls", self.pulls);
        f("applied", self.applied);
        f("unchanged", self.unchanged);
        for (name, v) in [
            "rejected_source_down",
            "rejected_torn",
            "rejected_corrupt",
            "rejected_older",
            "rejected_version_conflict",
            "rejected_invalid",
        ]
        .iter()
        .zip(self.rejected)
        {
            f(name, v);
        }
    }
}

/// Pulls the whole snapshot from a [`Source`] once per interval, on the caller's clock,
/// and publishes what passes every check (see the module docs). Timers follow the
/// pipeline's pattern: call [`Puller::handle_timeout`] when [`Puller::poll_timeout`] is
/// due.
pub struct Puller<S: Source, C: Codec> {
    source: S,
    codec: C,
    interval: Duration,
    next: Instant,
    current: Arc<ArcSwapOption<Snapshot<C::Config>>>,
    buf: Vec<u8>,
    counters: PullerCounters,
    last: Option<PullResult>,
}

impl<S: Source, C: Codec> Puller<S, C> {
    /// A puller that fetches from `source` every `interval`, starting at the first call.
    pub fn new(source: S, codec: C, interval: Duration) -> Self {
        Self {
            source,
            codec,
            interval,
            next: Instant::ZERO,
            current: Arc::new(ArcSwapOption::empty()),
            buf: Vec::new(),
            counters: PullerCounters::default(),
            last: None,
        }
    }

    /// The source, for changing it (tests, a caller that reconfigures where it pulls from).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// When the next pull is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// Pulls once if due: at most one fetch per interval, however often it is called and
    /// however many versions the control plane wrote in between (the newest wins).
    pub fn handle_timeout(&mut self, now: Instant) -> PullResult {
        if now < self.next {
            return PullResult::NotDue;
        }
        self.next = now + self.interval;
        self.counters.pulls += 1;
        let result = match self.pull(now) {
            Ok(r) => r,
            Err(reject) => {
                self.counters.reject(&reject);
                PullResult::Rejected(reject)
            }
        };
        match &result {
            PullResult::Applied(_) => self.counters.applied += 1,
            PullResult::Unchanged(_) => self.counters.unchanged += 1,
            _ => {}
        }
        self.last = Some(result.clone());
        result
    }

    fn pull(&mut self, now: Instant) -> Result<PullResult, Reject> {
        self.source
            .fetch(&mut self.buf)
            .map_err(Reject::SourceDown)?;
        let (version, sum, payload) = open(&self.buf)?;
        if let Some(cur) = self.current.load().as_deref() {
            if version < cur.version {
                return Err(Reject::Older);
            }
            if version == cur.version {
                return if sum == cur.checksum {
                    Ok(PullResult::Unchanged(version))
                } else {
                    Err(Reject::VersionConflict)
                };
            }
        }
        let config = self.codec.decode(payload).map_err(Reject::Invalid)?;
        self.codec.validate(&config).map_err(Reject::Invalid)?;
        self.current.store(Some(Arc::new(Snapshot {
            version,
            checksum: sum,
            applied_at: now,
            config,
        })));
        Ok(PullResult::Applied(version))
    }

    /// The snapshot in use, if any was ever accepted.
    pub fn current(&self) -> Option<Arc<Snapshot<C::Config>>> {
        self.current.load_full()
    }

    /// A handle for a worker (`None` until a first snapshot was accepted: a node starts
    /// forwarding once it has a configuration).
    pub fn subscribe(&self) -> Option<SnapshotCell<C::Config>> {
        let cached = self.current.load_full()?;
        Some(SnapshotCell {
            shared: Arc::clone(&self.current),
            cached,
        })
    }

    /// Counters since creation.
    pub fn counters(&self) -> &PullerCounters {
        &self.counters
    }

    /// What the last pull did (`None` before the first).
    pub fn last(&self) -> Option<&PullResult> {
        self.last.as_ref()
    }

    /// Age of the snapshot in use at `now` (`None` if there is none).
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.current
            .load()
            .as_deref()
            .map(|s| now.saturating_since(s.applied_at))
    }
}

/// A worker's view of the published snapshot: [`SnapshotCell::current`] does not change
/// until the worker calls [`SnapshotCell::refresh`] (once per batch, between batches).
pub struct SnapshotCell<T> {
    shared: Arc<ArcSwapOption<Snapshot<T>>>,
    cached: Arc<Snapshot<T>>,
}

impl<T> Clone for SnapshotCell<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            cached: Arc::clone(&self.cached),
        }
    }
}

impl<T> SnapshotCell<T> {
    /// Takes the newest published snapshot: true if it is another one than before. One
    /// atomic load; no lock, no allocation.
    pub fn refresh(&mut self) -> bool {
        let guard = self.shared.load();
        match guard.as_ref() {
            Some(new) if !Arc::ptr_eq(new, &self.cached) => {
                self.cached = Arc::clone(new);
                true
            }
            _ => false,
        }
    }

    /// The snapshot this worker uses.
    pub fn current(&self) -> &Arc<Snapshot<T>> {
        &self.cached
    }

    /// Its version.
    pub fn version(&self) -> u64 {
        self.cached.version
    }
}
