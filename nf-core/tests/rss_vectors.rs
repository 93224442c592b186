//! The Toeplitz hash reproduces the published RSS verification table
//! (`shared/testdata/rss-toeplitz-vectors.txt`, beside the checkout).

use core::net::IpAddr;
use nf_core::toeplitz::{MICROSOFT_KEY, Toeplitz};
use nf_core::{FlowKey, ZoneId};
use std::path::PathBuf;

fn shared_dir() -> PathBuf {
    std::env::var_os("NF_SHARED_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")),
        PathBuf::from,
    )
}

#[test]
fn microsoft_rss_verification_table() {
    let path = shared_dir().join("testdata/rss-toeplitz-vectors.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t = Toeplitz::new(&MICROSOFT_KEY);
    let mut rows = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 7, "bad row {line:?}");
        let src: IpAddr = f[1].parse().unwrap();
        let sp: u16 = f[2].parse().unwrap();
        let dst: IpAddr = f[3].parse().unwrap();
        let dp: u16 = f[4].parse().unwrap();
        let want_l3 = u32::from_str_radix(f[5].trim_start_matches("0x"), 16).unwrap();
        let want_l4 = u32::from_str_radix(f[6].trim_start_matches("0x"), 16).unwrap();
        assert_eq!(f[0], if src.is_ipv4() { "ipv4" } else { "ipv6" });
        let key = FlowKey::from_addrs(ZoneId(0), src, dst, 6, sp, dp).unwrap();
        assert_eq!(t.hash_flow(&key, false), want_l3, "L3 hash of {line}");
        assert_eq!(t.hash_flow(&key, true), want_l4, "L4 hash of {line}");
        rows += 1;
    }
    assert_eq!(rows, 8, "the published table has 5 IPv4 and 3 IPv6 rows");
}
