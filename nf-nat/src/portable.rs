//! The portable form of a translated session's part when sessions move between nodes
//! ([`SessionService::export_value`](nf_core::conntrack::SessionService::export_value)),
//! shared by [`Snat`](crate::Snat) and [`Endpoint`](crate::Endpoint): a kind byte (each
//! service's own), then the mapping's address (16 bytes, an IPv4 one in the first four) and
//! port — identities another node can find again, never this node's indices.

/// Bytes of the portable form.
pub(crate) const EXPORTED: usize = 1 + 16 + 2;

/// The kind of a session whose mapping this node cannot name (declined by the importer).
pub(crate) const NOT_MOVED: u8 = 255;

/// Writes `kind`, `addr` and `port` to the front of `out` (nothing if it is too short).
pub(crate) fn write(out: &mut [u8], kind: u8, addr: &[u8; 16], port: u16) {
    let Some(out) = out.first_chunk_mut::<EXPORTED>() else {
        return;
    };
    if let Some((k, rest)) = out.split_first_mut()
        && let Some((a, p)) = rest.split_first_chunk_mut::<16>()
        && let Some(p) = p.first_chunk_mut::<2>()
    {
        *k = kind;
        *a = *addr;
        *p = port.to_be_bytes();
    }
}

/// Writes a kind alone (the address and port zero).
pub(crate) fn write_kind(out: &mut [u8], kind: u8) {
    write(out, kind, &[0; 16], 0);
}

/// The kind, address and port [`write`] put in `bytes`.
pub(crate) fn read(bytes: &[u8]) -> Option<(u8, [u8; 16], u16)> {
    let (&kind, rest) = bytes.first_chunk::<EXPORTED>()?.split_first()?;
    let (addr, rest) = rest.split_first_chunk::<16>()?;
    Some((kind, *addr, u16::from_be_bytes(*rest.first_chunk::<2>()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_wrote() {
        let mut out = [0xaa; EXPORTED + 3];
        write(&mut out, 7, &[9; 16], 0x1234);
        assert_eq!(read(&out), Some((7, [9; 16], 0x1234)));
        assert_eq!(out[EXPORTED..], [0xaa; 3]);
        write_kind(&mut out, NOT_MOVED);
        assert_eq!(read(&out), Some((NOT_MOVED, [0; 16], 0)));
        assert_eq!(read(&out[..EXPORTED - 1]), None);
        let mut short = [0u8; 4];
        write(&mut short, 1, &[1; 16], 1);
        assert_eq!(short, [0; 4]);
    }
}
