//! A node announcing its prefixes to its router from a packet loop: the command-line flags
//! `l4lb` and `nat-gateway` share ([`AnnounceArgs`]: `--bgp-peer`, `--bgp-as`,
//! `--bgp-peer-as`, `--bgp-password-file`, `--bfd`, `--drain`), and the running BGP
//! speaker ([`crate::bgp`]) with its BFD session ([`crate::bfd`]), [`Announcer`].
//!
//! The loop says between batches whether the node may take traffic
//! ([`Announcer::set_ready`]: a fleet node once it holds its peers' sessions), which also
//! ends the BGP session when BFD finds the router gone; at the first
//! SIGINT/SIGTERM [`Announcer::drain`] withdraws the prefixes for good and says how long to
//! go on forwarding while the router moves the traffic away.

use crate::bfd::{BfdAuth, BfdConfig, BfdSpeaker};
use crate::bgp::{BgpConfig, BgpSpeaker};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The flags' lines for a program's usage text (after the program's own line saying what it
/// announces, with which next hop).
pub const USAGE: &str = "\
  --bgp-peer A[:P]       announce this node's prefixes to the router at A (port 179)
                         over BGP; with session sync, only once the peers' sessions are
                         here (or, after 2 s, those of every peer connected by then)
  --bgp-as N             this node's AS number (default 65001)
  --bgp-peer-as N        the router's AS number (default 65000)
  --bgp-password-file F  the BGP session's TCP MD5 signature key (RFC 2385; the router's
                         password for this neighbour): the bytes of F, a final newline
                         left out, 1 to 80
  --bfd                  BFD (RFC 5880/5881) with the router: it finds this node gone
                         within 300 ms (100 ms packets, three missed) instead of the
                         BGP hold time
  --bfd-interval MS      BFD packets every MS milliseconds, and as often from the router
                         at most (10 to 10000, default 100; the slower side's wins)
  --bfd-multiplier N     BFD packets missed before a side is taken as down (2 to 50,
                         default 3): a failure is found within N x the interval
  --bfd-key-file F       BFD packets signed and checked (Meticulous Keyed SHA1, key ID
                         1: the router's BFD password): the bytes of F, a final newline
                         left out, 1 to 20
  --drain SECS           at SIGINT/SIGTERM, withdraw the prefixes and keep forwarding
                         for SECS before exiting (with --bgp-peer; default 0: exit at once)
";

/// The announcing flags of a command line.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnounceArgs {
    /// `--bgp-peer` (port 179 unless given).
    pub peer: Option<SocketAddr>,
    /// `--bgp-as` (default 65001).
    pub local_as: u32,
    /// `--bgp-peer-as` (default 65000).
    pub peer_as: u32,
    /// `--bgp-password-file`.
    pub password_file: Option<PathBuf>,
    /// `--bfd`.
    pub bfd: bool,
    /// `--bfd-key-file`.
    pub bfd_key_file: Option<PathBuf>,
    /// `--bfd-interval` (both ways) and `--bfd-multiplier`; 100 ms and 3 by default.
    pub bfd_timing: BfdConfig,
    /// Whether a BFD timing flag was given (they need `--bfd`).
    pub bfd_timed: bool,
    /// `--drain`, seconds.
    pub drain: f64,
}

impl Default for AnnounceArgs {
    fn default() -> Self {
        Self {
            peer: None,
            local_as: 65_001,
            peer_as: 65_000,
            password_file: None,
            bfd: false,
            bfd_key_file: None,
            bfd_timing: BfdConfig::default(),
            bfd_timed: false,
            drain: 0.0,
        }
    }
}

/// A key file's bytes, a final newline left out.
fn key_bytes(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut k = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if k.ends_with(b"\n") {
        k.pop();
    }
    Ok(k)
}

impl AnnounceArgs {
    /// Takes a flag without a value (`--bfd`): true if `flag` is one.
    pub fn switch(&mut self, flag: &str) -> bool {
        let bfd = flag == "--bfd";
        self.bfd |= bfd;
        bfd
    }

    /// Takes `flag` with its `value` if it is one of these flags: `None` if not, `Some(Err)`
    /// for a bad value.
    pub fn option(&mut self, flag: &str, value: &str) -> Option<Result<(), String>> {
        let bad = |what: &str| format!("{flag} {value}: not {what}");
        let set = match flag {
            "--bgp-peer" => value
                .parse::<SocketAddr>()
                .or_else(|_| value.parse::<Ipv4Addr>().map(|a| (a, 179).into()))
                .map(|p| self.peer = Some(p))
                .map_err(|_| bad("IPV4[:PORT]")),
            "--bgp-as" => value
                .parse()
                .map(|n| self.local_as = n)
                .map_err(|_| bad("an AS number")),
            "--bgp-peer-as" => value
                .parse()
                .map(|n| self.peer_as = n)
                .map_err(|_| bad("an AS number")),
            "--bgp-password-file" => {
                self.password_file = Some(PathBuf::from(value));
                Ok(())
            }
            "--bfd-key-file" => {
                self.bfd_key_file = Some(PathBuf::from(value));
                Ok(())
            }
            "--bfd-interval" => match value.parse::<u32>() {
                Ok(ms @ 10..=10_000) => {
                    self.bfd_timing.min_tx_us = ms * 1000;
                    self.bfd_timing.min_rx_us = ms * 1000;
                    self.bfd_timed = true;
                    Ok(())
                }
                _ => Err(bad("10 to 10000 milliseconds")),
            },
            "--bfd-multiplier" => match value.parse::<u8>() {
                Ok(n @ 2..=50) => {
                    self.bfd_timing.detect_mult = n;
                    self.bfd_timed = true;
                    Ok(())
                }
                _ => Err(bad("2 to 50")),
            },
            "--drain" => crate::cli::seconds(flag, value).map(|s| self.drain = s),
            _ => return None,
        };
        Some(set)
    }

    /// Checks the flags together.
    ///
    /// # Errors
    /// `--bgp-password-file`, `--bfd` or `--drain` without `--bgp-peer`, `--bfd-key-file`,
    /// `--bfd-interval` or `--bfd-multiplier` without `--bfd`.
    pub fn check(&self) -> Result<(), String> {
        if self.peer.is_none() && (self.password_file.is_some() || self.bfd || self.drain > 0.0) {
            return Err("--bgp-password-file, --bfd and --drain need --bgp-peer".into());
        }
        if (self.bfd_key_file.is_some() || self.bfd_timed) && !self.bfd {
            return Err("--bfd-key-file, --bfd-interval and --bfd-multiplier need --bfd".into());
        }
        Ok(())
    }

    /// Starts announcing `prefixes` (withdrawn until [`Announcer::set_ready`]) as
    /// `router_id`, with `next_hop`, and the IPv6 prefixes of `v6` with its next hop (a
    /// global address of this node on the router's link) if the router offers IPv6
    /// unicast: `None` without `--bgp-peer`.
    ///
    /// # Errors
    /// An unreadable password file, or a BGP or BFD speaker that cannot start.
    pub fn start(
        &self,
        mut prefixes: Vec<(Ipv4Addr, u8)>,
        router_id: Ipv4Addr,
        next_hop: Ipv4Addr,
        v6: Option<(Vec<(Ipv6Addr, u8)>, Ipv6Addr)>,
    ) -> Result<Option<Announcer>, String> {
        let Some(peer) = self.peer else {
            return Ok(None);
        };
        prefixes.sort_unstable();
        prefixes.dedup();
        let (mut prefixes6, next_hop6) = v6.map_or((Vec::new(), None), |(p, h)| (p, Some(h)));
        prefixes6.sort_unstable();
        prefixes6.dedup();
        let password = match &self.password_file {
            None => None,
            Some(path) => Some(key_bytes("--bgp-password-file", path)?),
        };
        let cfg = BgpConfig {
            peer,
            local_as: self.local_as,
            peer_as: self.peer_as,
            router_id,
            next_hop,
            prefixes,
            prefixes6,
            next_hop6,
            hold: 9,
            password,
        };
        let bgp = BgpSpeaker::start(cfg).map_err(|e| format!("bgp: {e}"))?;
        let bfd = if self.bfd {
            let IpAddr::V4(router) = peer.ip() else {
                return Err("--bfd: an IPv4 --bgp-peer".into());
            };
            let cfg = self.bfd_timing;
            let auth = match &self.bfd_key_file {
                None => None,
                Some(path) => {
                    let key = key_bytes("--bfd-key-file", path)?;
                    // From the clock, in steps of half the interval: a restarted speaker
                    // starts ahead of every number it sent before (one per three quarters
                    // of the interval at most, the jitter taken off).
                    let step = u128::from((cfg.min_tx_us / 2000).max(1));
                    let first = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| (d.as_millis() / step) as u32);
                    let a = BfdAuth::new(1, &key, cfg.detect_mult, first)
                        .map_err(|e| format!("--bfd-key-file {}: {e}", path.display()))?;
                    Some(a)
                }
            };
            Some(BfdSpeaker::start(router, cfg, auth).map_err(|e| format!("--bfd: {e}"))?)
        } else {
            None
        };
        Ok(Some(Announcer {
            bgp,
            bfd,
            bfd_up: false,
            drain: Duration::from_secs_f64(self.drain),
            draining: false,
        }))
    }
}

/// A node's running announcement: its BGP speaker and BFD session.
pub struct Announcer {
    bgp: BgpSpeaker,
    bfd: Option<BfdSpeaker>,
    /// BFD was up at the last [`Self::set_ready`].
    bfd_up: bool,
    drain: Duration,
    draining: bool,
}

impl Announcer {
    /// Announces the prefixes while `ready` (and no drain began), withdraws them otherwise:
    /// call it between batches. When BFD finds the router gone (up, then down), the BGP
    /// session ends at once ([`BgpSpeaker::reset`], RFC 5882 §4.3) instead of after the
    /// hold time, and a new one is tried a second later.
    pub fn set_ready(&mut self, ready: bool) {
        self.bgp.set_announce(ready && !self.draining);
        if let Some(b) = &self.bfd {
            let up = b.up();
            if self.bfd_up && !up {
                self.bgp.reset();
            }
            self.bfd_up = up;
        }
    }

    /// Withdraws the prefixes for good (the node is going away): how long to go on
    /// forwarding (`--drain`) while the router moves the traffic to the other nodes.
    pub fn drain(&mut self) -> Duration {
        self.draining = true;
        self.bgp.set_announce(false);
        self.drain
    }

    /// Reports the BGP session's and BFD's counters (stages `bgp` and `bfd`).
    pub fn visit_counters(&self, f: &mut dyn FnMut(&str, &str, u64)) {
        self.bgp.visit_counters(f);
        if let Some(b) = &self.bfd {
            b.visit_counters(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_its_flags_and_checks_them_together() {
        let mut a = AnnounceArgs::default();
        for (flag, value) in [
            ("--bgp-peer", "10.4.1.1"),
            ("--bgp-as", "4200000001"),
            ("--bgp-peer-as", "65010"),
            ("--bgp-password-file", "/etc/nf/bgp.pw"),
            ("--drain", "2.5"),
        ] {
            assert_eq!(a.option(flag, value), Some(Ok(())), "{flag}");
        }
        assert!(a.switch("--bfd") && !a.switch("--metrics"));
        assert_eq!(
            a,
            AnnounceArgs {
                peer: Some("10.4.1.1:179".parse().unwrap()),
                local_as: 4_200_000_001,
                peer_as: 65_010,
                password_file: Some(PathBuf::from("/etc/nf/bgp.pw")),
                bfd: true,
                bfd_key_file: None,
                bfd_timing: BfdConfig::default(),
                bfd_timed: false,
                drain: 2.5,
            }
        );
        let mut t = a.clone();
        assert_eq!(t.option("--bfd-interval", "250"), Some(Ok(())));
        assert_eq!(t.option("--bfd-multiplier", "5"), Some(Ok(())));
        assert_eq!(
            t.bfd_timing,
            BfdConfig {
                min_tx_us: 250_000,
                min_rx_us: 250_000,
                detect_mult: 5
            }
        );
        assert_eq!(t.check(), Ok(()));
        t.bfd = false;
        assert!(t.check().is_err(), "timing without --bfd");
        assert_eq!(a.check(), Ok(()));
        assert_eq!(a.option("--bgp-peer", "10.4.1.1:1179"), Some(Ok(())));
        assert_eq!(a.peer, Some("10.4.1.1:1179".parse().unwrap()));
        assert_eq!(a.option("--vip", "x"), None);
        for (flag, value) in [
            ("--bgp-peer", "x"),
            ("--bgp-peer", "10.4.1.1:99999"),
            ("--bgp-as", "-1"),
            ("--bgp-as", "4294967296"),
            ("--bgp-peer-as", "as65000"),
            ("--drain", "-1"),
            ("--bfd-interval", "9"),
            ("--bfd-interval", "10001"),
            ("--bfd-interval", "0.5"),
            ("--bfd-multiplier", "1"),
            ("--bfd-multiplier", "51"),
        ] {
            assert!(
                matches!(a.option(flag, value), Some(Err(_))),
                "{flag} {value}"
            );
        }
        for lone in [
            AnnounceArgs {
                bfd: true,
                ..AnnounceArgs::default()
            },
            AnnounceArgs {
                password_file: Some(PathBuf::from("p")),
                ..AnnounceArgs::default()
            },
            AnnounceArgs {
                drain: 1.0,
                ..AnnounceArgs::default()
            },
        ] {
            assert!(lone.check().is_err(), "{lone:?}");
        }
        assert_eq!(AnnounceArgs::default().check(), Ok(()));
        assert!(matches!(
            AnnounceArgs::default().start(
                Vec::new(),
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::LOCALHOST,
                None
            ),
            Ok(None)
        ));
    }
}
