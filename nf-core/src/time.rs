//! Caller-supplied time ([`Instant`], [`Duration`], and with `std` [`StdClock`]: public at
//! the crate root).

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

/// A point in time, in nanoseconds on the caller's monotonic clock.
///
/// Nothing in nf reads a clock: the caller passes the time in. An `Instant` is a point on
/// the caller's monotonic clock in nanoseconds (any epoch, e.g. boot time or the first packet
/// of a capture); [`Duration`] is a span in nanoseconds. Both are plain `u64`s, so they cost
/// nothing to pass per batch and behave identically on every platform. Arithmetic saturates
/// rather than wraps or panics. With the `std` feature, [`StdClock`] reads `std::time`.
///
/// ```
/// use nf_core::{Duration, Instant};
/// let t = Instant::from_nanos(1_000) + Duration::from_micros(2);
/// assert_eq!(t.as_nanos(), 3_000);
/// assert_eq!(Instant::ZERO - t, Duration::ZERO); // saturates
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

/// A span of time in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

impl Instant {
    /// The clock's epoch.
    pub const ZERO: Self = Self(0);
    /// The latest representable instant (a deadline that never comes).
    pub const MAX: Self = Self(u64::MAX);

    /// An instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub const fn saturating_since(self, earlier: Self) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, or `None` on overflow.
    pub const fn checked_add(self, d: Duration) -> Option<Self> {
        match self.0.checked_add(d.0) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }
}

impl Duration {
    /// No time at all.
    pub const ZERO: Self = Self(0);
    /// The longest representable span.
    pub const MAX: Self = Self(u64::MAX);

    /// A span of `n` nanoseconds.
    pub const fn from_nanos(n: u64) -> Self {
        Self(n)
    }
    /// A span of `n` microseconds (saturating).
    pub const fn from_micros(n: u64) -> Self {
        Self(n.saturating_mul(1_000))
    }
    /// A span of `n` milliseconds (saturating).
    pub const fn from_millis(n: u64) -> Self {
        Self(n.saturating_mul(1_000_000))
    }
    /// A span of `n` seconds (saturating).
    pub const fn from_secs(n: u64) -> Self {
        Self(n.saturating_mul(1_000_000_000))
    }
    /// The span in nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    /// The span in whole milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }
    /// The span in whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000_000
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates at [`Instant::MAX`].
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.0))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturates at zero.
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_since(earlier)
    }
}

impl Add for Duration {
    type Output = Duration;
    fn add(self, o: Duration) -> Duration {
        Duration(self.0.saturating_add(o.0))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

impl From<core::time::Duration> for Duration {
    /// Saturates at [`Duration::MAX`] (584 years).
    fn from(d: core::time::Duration) -> Self {
        Self(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A monotonic clock for nf from `std::time::Instant`, which has no epoch: the clock
/// remembers when it was created, and [`StdClock::now`] is the time elapsed since, as an nf
/// [`Instant`]. Make one per process (or per worker: clocks made at different moments
/// disagree by the difference) and read it once per batch.
///
/// ```
/// use nf_core::{Instant, StdClock};
/// let clock = StdClock::new();
/// let a = clock.now();
/// let b = clock.now();
/// assert!(a <= b);
/// // The std instant an nf instant stands for, e.g. to sleep until a stage's deadline.
/// let deadline: std::time::Instant = clock.to_std(b);
/// assert!(deadline >= clock.start());
/// ```
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StdClock {
    start: std::time::Instant,
}

#[cfg(feature = "std")]
impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "std")]
impl StdClock {
    /// A clock whose epoch ([`Instant::ZERO`]) is now.
    pub fn new() -> Self {
        Self::starting_at(std::time::Instant::now())
    }

    /// A clock whose epoch is `start` (share one start between workers so their clocks
    /// agree).
    pub const fn starting_at(start: std::time::Instant) -> Self {
        Self { start }
    }

    /// The std instant of the epoch.
    pub const fn start(&self) -> std::time::Instant {
        self.start
    }

    /// Nanoseconds since the epoch, as an nf [`Instant`] (saturates after 584 years).
    pub fn now(&self) -> Instant {
        self.from_std(std::time::Instant::now())
    }

    /// The nf instant of a std instant (zero if it is before the epoch).
    pub fn from_std(&self, t: std::time::Instant) -> Instant {
        let d = t.saturating_duration_since(self.start);
        Instant(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The std instant of an nf instant (saturating at the latest instant std represents).
    pub fn to_std(&self, t: Instant) -> std::time::Instant {
        let d = core::time::Duration::from_nanos(t.0);
        self.start
            .checked_add(d)
            .unwrap_or_else(|| far_future(self.start, d))
    }
}

/// The latest std instant at or before `start + d` (halving the step until one fits).
#[cfg(feature = "std")]
fn far_future(start: std::time::Instant, mut d: core::time::Duration) -> std::time::Instant {
    let mut t = start;
    while !d.is_zero() {
        match t.checked_add(d) {
            Some(n) => t = n,
            None => d /= 2,
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
        assert_eq!(Instant::ZERO - Instant::from_nanos(5), Duration::ZERO);
        assert_eq!(
            Instant::from_nanos(10) - Instant::from_nanos(4),
            Duration::from_nanos(6)
        );
        assert_eq!(Duration::from_secs(u64::MAX), Duration::MAX);
        assert_eq!(Instant::MAX.checked_add(Duration::from_nanos(1)), None);
        assert_eq!(format!("{}", Duration::from_millis(1500)), "1.500000000s");
    }

    #[cfg(feature = "std")]
    #[test]
    fn std_clock_counts_from_its_start() {
        let start = std::time::Instant::now();
        let clock = StdClock::starting_at(start);
        assert_eq!(clock.from_std(start), Instant::ZERO);
        let later = start + core::time::Duration::from_millis(5);
        assert_eq!(clock.from_std(later), Instant::from_nanos(5_000_000));
        assert_eq!(clock.to_std(Instant::from_nanos(5_000_000)), later);
        assert!(clock.now() >= Instant::ZERO);
        assert!(clock.to_std(Instant::MAX) >= later, "saturates, no panic");
    }
}
