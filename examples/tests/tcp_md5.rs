//! RFC 2385 TCP MD5 signatures, as `nf_examples::bgp` signs its session with the router
//! (`BgpConfig::password`, `l4lb --bgp-password-file`), over loopback with the Linux
//! kernel checking them on both ends: the same key connects and carries data both ways;
//! another key and no key never connect (the listening kernel drops their SYNs). BIRD
//! checking our signatures is `l4lb_ecmp.rs`.
#![cfg(target_os = "linux")]

use nf_examples::bgp::{BgpConfig, BgpSpeaker};
use nf_examples::io::{TCP_MD5_MAX_KEY, connect_tcp_md5, set_tcp_md5};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

#[test]
fn only_the_same_key_connects() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if let Err(e) = set_tcp_md5(listener.as_fd(), lo, b"the router's password") {
        // A kernel built without CONFIG_TCP_MD5SIG.
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "TCP_MD5SIG is required under CI=true: {e}");
        eprintln!("SKIP: this kernel has no TCP_MD5SIG ({e}; set CI=true to make this a failure)");
        return;
    }

    let mut ours = connect_tcp_md5(addr, b"the router's password", Duration::from_secs(3)).unwrap();
    let (mut theirs, _) = listener.accept().unwrap();
    ours.write_all(b"OPEN").unwrap();
    let mut buf = [0u8; 4];
    theirs.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"OPEN");
    theirs.write_all(b"KEEP").unwrap();
    ours.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"KEEP");

    // Another key, and no signature at all: the SYN is dropped, the connect times out.
    let short = Duration::from_millis(700);
    let e = connect_tcp_md5(addr, b"a guessed password", short).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    let e = TcpStream::connect_timeout(&addr, short).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    listener.set_nonblocking(true).unwrap();
    assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);

    // Keys longer than the kernel's limit are refused before any system call.
    let long = [b'k'; TCP_MD5_MAX_KEY + 1];
    let e = connect_tcp_md5(addr, &long, short).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // And by the BGP speaker, with an empty one, before its session starts.
    for password in [Vec::new(), long.to_vec()] {
        let cfg = BgpConfig {
            peer: addr,
            local_as: 65_001,
            peer_as: 65_000,
            router_id: Ipv4Addr::LOCALHOST,
            next_hop: Ipv4Addr::LOCALHOST,
            prefixes: vec![(Ipv4Addr::new(192, 0, 2, 10), 32)],
            prefixes6: Vec::new(),
            next_hop6: None,
            hold: 9,
            password: Some(password),
        };
        let e = BgpSpeaker::start(cfg).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
}
