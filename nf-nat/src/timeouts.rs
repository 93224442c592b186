//! Session timeouts for a NAT, per profile, to put in nf-core's
//! [`TableConfig::timeouts`](nf_core::conntrack::TableConfig): nf-core's defaults follow
//! Linux conntrack (UDP 30 s unreplied, ICMP 30 s), shorter than the NAT RFCs allow.

use crate::config::Profile;
use nf_core::Duration;
use nf_core::conntrack::TimeoutProfile;

/// RFC 5382 REQ-5: an established TCP connection idles at least 2 h 4 min.
pub const TCP_ESTABLISHED_MIN: Duration = Duration::from_secs(2 * 3600 + 4 * 60);
/// RFC 5382 REQ-5: a transitory TCP connection idles at least 4 min (RFC 7857 §2.1: also
/// after a RST).
pub const TCP_TRANSITORY_MIN: Duration = Duration::from_secs(4 * 60);
/// RFC 4787 REQ-5c: the recommended UDP mapping timer, 5 min (at least 2 min).
pub const UDP_DEFAULT: Duration = Duration::from_secs(300);
/// RFC 5508 REQ-2: an ICMP query session lasts at least 60 s.
pub const ICMP_QUERY_MIN: Duration = Duration::from_secs(60);
/// The hyperplane profile's idle timeout, every protocol and state.
pub const HYPERPLANE_IDLE: Duration = Duration::from_secs(350);

/// The session timeouts of `profile`:
/// - rfc and cgn: TCP established [`TCP_ESTABLISHED_MIN`], every transitory TCP state
///   (handshake, closing, time-wait, reset) [`TCP_TRANSITORY_MIN`], UDP [`UDP_DEFAULT`]
///   whether replied or not, ICMP queries [`ICMP_QUERY_MIN`], other protocols 10 min;
/// - hyperplane: [`HYPERPLANE_IDLE`] for everything but the transitory TCP states
///   ([`TCP_TRANSITORY_MIN`]).
///
/// ```
/// use nf_core::conntrack::{ConntrackConfig, SessionState};
/// use nf_nat::{Profile, nat_timeouts};
/// let mut ct = ConntrackConfig::new(*b"operator secret!");
/// ct.v4.timeouts = nat_timeouts(&Profile::Rfc);
/// ct.v6.timeouts = ct.v4.timeouts;
/// assert_eq!(ct.v4.timeouts.timeout(SessionState::UdpUnreplied).as_secs(), 300);
/// ```
pub fn nat_timeouts(profile: &Profile) -> TimeoutProfile {
    let mut t = TimeoutProfile::default();
    for d in [
        &mut t.tcp_syn_sent,
        &mut t.tcp_syn_recv,
        &mut t.tcp_fin_wait,
        &mut t.tcp_close_wait,
        &mut t.tcp_time_wait,
        &mut t.tcp_closed,
        &mut t.tcp_last_ack,
    ] {
        *d = TCP_TRANSITORY_MIN;
    }
    let (established, udp, icmp, other) = match profile {
        Profile::Hyperplane => (
            HYPERPLANE_IDLE,
            HYPERPLANE_IDLE,
            HYPERPLANE_IDLE,
            HYPERPLANE_IDLE,
        ),
        _ => (
            TCP_ESTABLISHED_MIN,
            UDP_DEFAULT,
            ICMP_QUERY_MIN,
            Duration::from_secs(600),
        ),
    };
    t.tcp_established = established;
    t.udp_unreplied = udp;
    t.udp_replied = udp;
    t.icmp = icmp;
    t.other = other;
    t
}
