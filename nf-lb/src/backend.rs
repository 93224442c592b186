//! Backend identities, weights and the errors of building a table from them.

/// Longest backend identity, in bytes.
pub const MAX_ID_LEN: usize = 32;

/// A backend's identity: up to [`MAX_ID_LEN`] explicitly encoded bytes, hashed (keyed) to
/// place the backend, and the order in which tables list backends.
///
/// Two nodes that describe a backend with the same bytes place it alike; [`BackendId::v4`] and
/// [`BackendId::v6`] give the encoding for an address and port.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId {
    len: u8,
    bytes: [u8; MAX_ID_LEN],
}

impl BackendId {
    /// An identity of arbitrary bytes; `None` when longer than [`MAX_ID_LEN`].
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let mut id = Self {
            len: u8::try_from(bytes.len()).ok()?,
            bytes: [0; MAX_ID_LEN],
        };
        id.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(id)
    }

    /// IPv4 address and port: the 7 bytes `0x04`, address, port (big-endian).
    pub fn v4(addr: [u8; 4], port: u16) -> Self {
        Self::encoded(4, &addr, port)
    }

    /// IPv6 address and port: the 19 bytes `0x06`, address, port (big-endian).
    pub fn v6(addr: [u8; 16], port: u16) -> Self {
        Self::encoded(6, &addr, port)
    }

    fn encoded(family: u8, addr: &[u8], port: u16) -> Self {
        let mut bytes = [0; MAX_ID_LEN];
        let port = port.to_be_bytes();
        let enc = core::iter::once(&family).chain(addr).chain(&port).copied();
        let mut len = 0u8;
        for (d, s) in bytes.iter_mut().zip(enc) {
            *d = s;
            len += 1;
        }
        Self { len, bytes }
    }

    /// The padded bytes as big-endian integers (their order is the bytes' order).
    fn words(&self) -> [u128; 2] {
        let (a, b) = self.bytes.split_at(16);
        let word = |half: &[u8]| {
            let mut w = [0u8; 16];
            w.copy_from_slice(half.get(..16).unwrap_or(&[0; 16]));
            u128::from_be_bytes(w)
        };
        [word(a), word(b)]
    }

    /// The identity's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl Ord for BackendId {
    /// Lexicographic order of the bytes (a prefix sorts first).
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        // The zero-padded bytes as two big-endian integers, then the length: the same order
        // as comparing the byte slices (a prefix pads with zeros, and the tie goes to the
        // shorter), without a memcmp call (sorting the backends is part of every build).
        self.words()
            .cmp(&other.words())
            .then(self.len.cmp(&other.len))
    }
}

impl PartialOrd for BackendId {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl core::fmt::Debug for BackendId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("BackendId(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// `address:port` for an identity built by [`BackendId::v4`] / [`BackendId::v6`]
/// (`10.1.0.11:8000`, `[2001:db8::1]:80`), its bytes in hex otherwise.
impl core::fmt::Display for BackendId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::net::{IpAddr, SocketAddr};
        let Some(t) = crate::service::target(self) else {
            for b in self.as_bytes() {
                write!(f, "{b:02x}")?;
            }
            return Ok(());
        };
        let ip = match t.family {
            nf_core::Family::V4 => {
                let [a, b, c, d, ..] = t.addr;
                IpAddr::from([a, b, c, d])
            }
            nf_core::Family::V6 => IpAddr::from(t.addr),
        };
        write!(f, "{}", SocketAddr::new(ip, t.port))
    }
}

/// One backend of a table: its identity, integer weight and drain state.
///
/// - `weight` sets the backend's share of entries (and of flows); 0 takes it out of the
///   table: it gets no entries, and the table is the one built without it (other entries
///   move as when a backend leaves).
/// - `draining` keeps the backend's place in the fill (with its weight) but gives it no
///   entries: only the entries it would hold move, to the other backends. Draining a backend
///   moves no flow of any other backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backend {
    /// The backend's identity.
    pub id: BackendId,
    /// Relative weight; 0 gets no entries.
    pub weight: u32,
    /// Gets no entries, and moves nothing but its own entries (see above).
    pub draining: bool,
}

impl Backend {
    /// A backend in service with the given weight.
    pub const fn new(id: BackendId, weight: u32) -> Self {
        Self {
            id,
            weight,
            draining: false,
        }
    }

    /// The same backend, draining.
    #[must_use]
    pub const fn draining(mut self) -> Self {
        self.draining = true;
        self
    }

    /// Whether the backend receives entries (weight above 0 and not draining).
    pub const fn is_serving(&self) -> bool {
        self.weight > 0 && !self.draining
    }
}

/// Why a table could not be built. Building does bounded work and never panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The table size is not a prime (Maglev's permutations need one).
    SizeNotPrime {
        /// The size asked for.
        size: u32,
    },
    /// The table size (asked for, or needed for this many backends) is above
    /// [`MAX_TABLE_SIZE`](crate::MAX_TABLE_SIZE).
    SizeTooLarge {
        /// The size asked for or needed (saturated at `u32::MAX`).
        size: u32,
    },
    /// No backend has a weight above 0 and is not draining.
    NoServingBackend,
    /// Two backends have the same identity.
    DuplicateBackend {
        /// The repeated identity.
        id: BackendId,
    },
    /// More backends than the table kind allows.
    TooManyBackends {
        /// Backends given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::SizeNotPrime { size } => write!(f, "table size {size} is not a prime"),
            Self::SizeTooLarge { size } => write!(
                f,
                "table size {size} is above the maximum {}",
                crate::MAX_TABLE_SIZE
            ),
            Self::NoServingBackend => f.write_str("no backend with weight above 0 in service"),
            Self::DuplicateBackend { id } => write!(f, "backend {id:?} is listed twice"),
            Self::TooManyBackends { count, max } => {
                write!(f, "{count} backends, at most {max} allowed")
            }
        }
    }
}

impl core::error::Error for BuildError {}

/// Backends sorted by identity, rejecting duplicates, too many, and none serving.
pub(crate) fn sorted_backends(
    backends: &[Backend],
    max: usize,
) -> Result<alloc::vec::Vec<Backend>, BuildError> {
    if backends.len() > max {
        return Err(BuildError::TooManyBackends {
            count: backends.len(),
            max,
        });
    }
    let mut sorted = backends.to_vec();
    sorted.sort_unstable_by_key(|b| b.id);
    if let Some(w) = sorted
        .windows(2)
        .find(|w| w.first().map(|b| b.id) == w.get(1).map(|b| b.id))
        && let Some(b) = w.first()
    {
        return Err(BuildError::DuplicateBackend { id: b.id });
    }
    if !sorted.iter().any(Backend::is_serving) {
        return Err(BuildError::NoServingBackend);
    }
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The order is the byte slices' order.
        #[test]
        fn order_is_byte_order(a in prop::collection::vec(0u8..3, 0..=MAX_ID_LEN), b in prop::collection::vec(0u8..3, 0..=MAX_ID_LEN)) {
            let (x, y) = (BackendId::new(&a).unwrap_or(BackendId::v4([0; 4], 0)), BackendId::new(&b).unwrap_or(BackendId::v4([0; 4], 0)));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(
            BackendId::v4([10, 0, 0, 1], 8080).as_bytes(),
            [4, 10, 0, 0, 1, 0x1f, 0x90]
        );
        let v6 = BackendId::v6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            443,
        );
        assert_eq!(v6.as_bytes().len(), 19);
        assert_eq!(v6.as_bytes().first(), Some(&6));
        assert_eq!(v6.as_bytes().get(17..), Some(&[1, 0xbb][..]));
        assert_eq!(BackendId::new(b"abc").map(|i| i.as_bytes().len()), Some(3));
        assert!(BackendId::new(&[0; MAX_ID_LEN]).is_some());
        assert!(BackendId::new(&[0; MAX_ID_LEN + 1]).is_none());
        assert!(BackendId::new(b"ab") < BackendId::new(b"abc"));
        assert_eq!(
            alloc::format!(
                "{:?}",
                BackendId::new(&[1, 0xab]).map(|i| i.as_bytes().len())
            ),
            "Some(2)"
        );
    }

    #[test]
    fn display_names_an_address_and_port() {
        use alloc::string::ToString;
        assert_eq!(
            BackendId::v4([10, 1, 0, 11], 8000).to_string(),
            "10.1.0.11:8000"
        );
        let v6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(BackendId::v6(v6, 443).to_string(), "[2001:db8::1]:443");
        assert_eq!(BackendId::new(b"ab").unwrap().to_string(), "6162");
        // Seven bytes that start with 4 are an IPv4 identity whatever made them.
        assert_eq!(
            BackendId::new(&[4, 1, 2, 3, 4, 0, 80]).unwrap().to_string(),
            "1.2.3.4:80"
        );
    }
}
