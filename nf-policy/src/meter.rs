//! Token buckets and the RFC 2697 / RFC 2698 three-colour markers, on the caller's clock.
//!
//! Every bucket here follows the RFCs' token update rule exactly, in integers: a rate of `r`
//! tokens per second adds one whole token every `1/r` seconds, counted from the meter's
//! creation (an accrual keeps the progress towards the next token as a remainder in
//! token-nanoseconds, so no token is lost or invented by rounding, whatever the spacing of the
//! calls). A token that arrives while its bucket is full overflows as the RFC says (to the
//! excess bucket for srTCM, nowhere otherwise). Time that runs backwards adds nothing.
//!
//! A meter measures in whatever unit the caller feeds it: bytes (size = the packet's length,
//! rates in bytes per second) or packets (size = 1, rates in packets per second). The RFCs
//! meter IP packet bytes; both modes are common in practice. No floats anywhere; all
//! arithmetic is widened or saturating, so no input overflows.

use nf_core::Instant;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Whole tokens earned at a fixed rate since creation, in integers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Accrual {
    per_second: u64,
    /// Progress towards the next token, in token-nanoseconds (below 10^9).
    remainder: u64,
    last: Instant,
}

impl Accrual {
    pub(crate) fn new(per_second: u64, now: Instant) -> Self {
        Self {
            per_second,
            remainder: 0,
            last: now,
        }
    }

    /// Whole tokens earned between the last call and `now` (none if time ran backwards).
    #[inline]
    pub(crate) fn tick(&mut self, now: Instant) -> u64 {
        if now <= self.last {
            return 0;
        }
        let dt = now.saturating_since(self.last).as_nanos();
        self.last = now;
        // At most (2^64 − 1)^2 + 10^9 < 2^128: no overflow.
        let acc = u128::from(self.per_second) * u128::from(dt) + u128::from(self.remainder);
        self.remainder = (acc % NANOS_PER_SEC) as u64;
        u64::try_from(acc / NANOS_PER_SEC).unwrap_or(u64::MAX)
    }
}

/// A rate and a bucket size.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens added per second.
    pub per_second: u64,
    /// Bucket size: the most tokens it holds (and the largest burst).
    pub burst: u64,
}

impl BucketConfig {
    /// `per_second` tokens per second into a bucket of `burst` tokens.
    pub const fn new(per_second: u64, burst: u64) -> Self {
        Self { per_second, burst }
    }
}

/// A token bucket: starts full; an amount conforms if the bucket holds at least that many
/// tokens, which are then taken.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    accrual: Accrual,
    burst: u64,
    tokens: u64,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(config: BucketConfig, now: Instant) -> Self {
        Self {
            accrual: Accrual::new(config.per_second, now),
            burst: config.burst,
            tokens: config.burst,
        }
    }

    /// Takes `amount` tokens if the bucket holds that many at `now`; whether it did.
    #[inline]
    pub fn conform(&mut self, now: Instant, amount: u64) -> bool {
        self.refill(now);
        self.take(amount)
    }

    /// Tokens in the bucket at `now`.
    pub fn tokens(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens
    }

    #[inline]
    pub(crate) fn refill(&mut self, now: Instant) {
        let add = self.accrual.tick(now);
        self.tokens = self.tokens.saturating_add(add).min(self.burst);
    }

    #[inline]
    pub(crate) fn has(&self, amount: u64) -> bool {
        self.tokens >= amount
    }

    #[inline]
    pub(crate) fn take(&mut self, amount: u64) -> bool {
        match self.tokens.checked_sub(amount) {
            Some(t) => {
                self.tokens = t;
                true
            }
            None => false,
        }
    }
}

/// A packet's colour, as marked by a meter or by an upstream one (colour-aware mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Color {
    /// Within the committed rate.
    Green,
    /// Above the committed rate, within the excess burst (srTCM) or peak rate (trTCM).
    Yellow,
    /// Beyond both.
    Red,
}

/// Settings that no meter can honour.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeterConfigError {
    /// srTCM with CBS and EBS both zero (RFC 2697: at least one must be positive).
    NoBurst,
    /// trTCM with CBS or PBS zero (RFC 2698: both must be positive).
    ZeroBurst,
    /// trTCM with PIR below CIR (RFC 2698: PIR ≥ CIR).
    PeakBelowCommitted,
}

impl core::fmt::Display for MeterConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NoBurst => "CBS and EBS are both zero",
            Self::ZeroBurst => "CBS and PBS must both be positive",
            Self::PeakBelowCommitted => "PIR is below CIR",
        })
    }
}

impl core::error::Error for MeterConfigError {}

/// RFC 2697 settings.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrTcmConfig {
    /// Committed information rate, per second.
    pub cir: u64,
    /// Committed burst size.
    pub cbs: u64,
    /// Excess burst size.
    pub ebs: u64,
}

impl SrTcmConfig {
    /// CIR per second, CBS and EBS.
    pub const fn new(cir: u64, cbs: u64, ebs: u64) -> Self {
        Self { cir, cbs, ebs }
    }
}

/// The single-rate three-colour marker of RFC 2697.
///
/// Two buckets fed by one token stream at CIR: the committed bucket `Tc` (size CBS) first, and
/// the excess bucket `Te` (size EBS) with what overflows; both start full.
#[derive(Clone, Copy, Debug)]
pub struct SrTcm {
    accrual: Accrual,
    cbs: u64,
    ebs: u64,
    tc: u64,
    te: u64,
}

impl SrTcm {
    /// A meter with both buckets full at `now`.
    ///
    /// # Errors
    /// [`MeterConfigError::NoBurst`] if CBS and EBS are both zero.
    pub fn new(config: SrTcmConfig, now: Instant) -> Result<Self, MeterConfigError> {
        if config.cbs == 0 && config.ebs == 0 {
            return Err(MeterConfigError::NoBurst);
        }
        Ok(Self {
            accrual: Accrual::new(config.cir, now),
            cbs: config.cbs,
            ebs: config.ebs,
            tc: config.cbs,
            te: config.ebs,
        })
    }

    /// Colour-blind marking of a packet of `size` at `now`.
    #[inline]
    pub fn meter(&mut self, now: Instant, size: u64) -> Color {
        self.meter_aware(now, size, Color::Green)
    }

    /// Colour-aware marking of a packet that arrives pre-coloured `pre`.
    #[inline]
    pub fn meter_aware(&mut self, now: Instant, size: u64, pre: Color) -> Color {
        self.refill(now);
        if pre == Color::Green && self.tc >= size {
            self.tc -= size;
            Color::Green
        } else if pre != Color::Red && self.te >= size {
            self.te -= size;
            Color::Yellow
        } else {
            Color::Red
        }
    }

    /// Tokens in (`Tc`, `Te`) at `now`.
    pub fn tokens(&mut self, now: Instant) -> (u64, u64) {
        self.refill(now);
        (self.tc, self.te)
    }

    fn refill(&mut self, now: Instant) {
        let add = self.accrual.tick(now);
        // Tokens go to Tc while it is below CBS, then to Te while it is below EBS.
        let to_c = add.min(self.cbs - self.tc);
        self.tc += to_c;
        let to_e = (add - to_c).min(self.ebs - self.te);
        self.te += to_e;
    }
}

/// RFC 2698 settings.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrTcmConfig {
    /// Committed information rate, per second.
    pub cir: u64,
    /// Committed burst size.
    pub cbs: u64,
    /// Peak information rate, per second.
    pub pir: u64,
    /// Peak burst size.
    pub pbs: u64,
}

impl TrTcmConfig {
    /// CIR per second and CBS; PIR per second and PBS.
    pub const fn new(cir: u64, cbs: u64, pir: u64, pbs: u64) -> Self {
        Self { cir, cbs, pir, pbs }
    }
}

/// The two-rate three-colour marker of RFC 2698.
///
/// The peak bucket `Tp` (size PBS, filled at PIR) and the committed bucket `Tc` (size CBS,
/// filled at CIR), independent, both starting full.
#[derive(Clone, Copy, Debug)]
pub struct TrTcm {
    peak: TokenBucket,
    committed: TokenBucket,
}

impl TrTcm {
    /// A meter with both buckets full at `now`.
    ///
    /// # Errors
    /// [`MeterConfigError::ZeroBurst`] if CBS or PBS is zero,
    /// [`MeterConfigError::PeakBelowCommitted`] if PIR < CIR.
    pub fn new(config: TrTcmConfig, now: Instant) -> Result<Self, MeterConfigError> {
        if config.cbs == 0 || config.pbs == 0 {
            return Err(MeterConfigError::ZeroBurst);
        }
        if config.pir < config.cir {
            return Err(MeterConfigError::PeakBelowCommitted);
        }
        Ok(Self {
            peak: TokenBucket::new(BucketConfig::new(config.pir, config.pbs), now),
            committed: TokenBucket::new(BucketConfig::new(config.cir, config.cbs), now),
        })
    }

    /// Colour-blind marking of a packet of `size` at `now`.
    #[inline]
    pub fn meter(&mut self, now: Instant, size: u64) -> Color {
        self.meter_aware(now, size, Color::Green)
    }

    /// Colour-aware marking of a packet that arrives pre-coloured `pre`.
    #[inline]
    pub fn meter_aware(&mut self, now: Instant, size: u64, pre: Color) -> Color {
        self.peak.refill(now);
        self.committed.refill(now);
        if pre == Color::Red || !self.peak.has(size) {
            Color::Red
        } else if pre == Color::Yellow || !self.committed.has(size) {
            self.peak.take(size);
            Color::Yellow
        } else {
            self.peak.take(size);
            self.committed.take(size);
            Color::Green
        }
    }

    /// Tokens in (`Tp`, `Tc`) at `now`.
    pub fn tokens(&mut self, now: Instant) -> (u64, u64) {
        (self.peak.tokens(now), self.committed.tokens(now))
    }
}
