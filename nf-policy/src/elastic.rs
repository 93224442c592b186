//! The elastic credit limiter of Achelous (SIGCOMM'23, §5), per tenant, over bytes, packets
//! and the processing cost the caller measures.
//!
//! Each dimension gives the tenant a *base* rate. Usage below base earns *credit* (the unused
//! base), up to a cap; usage above base spends credit at `(usage − base) × C`, `0 < C ≤ 1`,
//! and only while the host has headroom (a signal the caller passes with every call, e.g.
//! "the core is below 80% busy"). Without credit or without headroom the tenant is held at its
//! base. The processing-cost dimension (nanoseconds or cycles of the caller's own measuring,
//! per batch) is charged after the fact with [`ElasticLimiter::charge_cost`]: a tenant whose
//! packets are cheap in bytes but dear in processing (floods of small packets) is held by that
//! dimension even though its bandwidth is under base.
//!
//! # Arithmetic
//!
//! Base allowance accrues with the exact integer rule of the [meters](crate::meter) into a
//! small bucket of [`ElasticDimension::base_burst`] units; what would overflow that bucket is
//! unused base and becomes credit. Credit is kept in units of `1/C.den`, so spending
//! `n × C.num / C.den` is exact. Everything is integer and saturating; no floats.
//!
//! # Call order
//!
//! Per packet (or per batch with the batch's totals) [`ElasticLimiter::admit`]; after
//! processing a batch, [`ElasticLimiter::charge_cost`] with what it cost. Time is passed in
//! and never read.

use crate::meter::Accrual;
use nf_core::Instant;

/// The spend rate `C = num / den`, `0 < C ≤ 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpendRate {
    num: u32,
    den: u32,
}

impl SpendRate {
    /// `C = 1`: a unit above base costs one unit of credit.
    pub const ONE: Self = Self { num: 1, den: 1 };

    /// `C = num / den`; `None` unless `0 < num ≤ den`.
    pub const fn new(num: u32, den: u32) -> Option<Self> {
        if num == 0 || num > den {
            None
        } else {
            Some(Self { num, den })
        }
    }
}

/// One dimension's settings.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElasticDimension {
    /// Base rate, units per second.
    pub base_per_second: u64,
    /// Largest burst within base (the base bucket's size), in units.
    pub base_burst: u64,
    /// Most credit a tenant can hold, in units.
    pub credit_cap: u64,
    /// Credit spent per unit above base.
    pub spend: SpendRate,
}

impl ElasticDimension {
    /// A base rate per second and a credit cap; the base bucket holds 10 ms of base (at least
    /// one unit) and `C = 1`.
    pub const fn new(base_per_second: u64, credit_cap: u64) -> Self {
        let ten_ms = base_per_second / 100;
        Self {
            base_per_second,
            base_burst: if ten_ms == 0 { 1 } else { ten_ms },
            credit_cap,
            spend: SpendRate::ONE,
        }
    }

    /// Sets the base bucket's size.
    #[must_use]
    pub const fn with_base_burst(mut self, units: u64) -> Self {
        self.base_burst = units;
        self
    }

    /// Sets the spend rate `C`.
    #[must_use]
    pub const fn with_spend(mut self, spend: SpendRate) -> Self {
        self.spend = spend;
        self
    }
}

/// A tenant's settings: any dimension left `None` is not limited.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElasticConfig {
    /// Bytes.
    pub bytes: Option<ElasticDimension>,
    /// Packets.
    pub packets: Option<ElasticDimension>,
    /// Processing cost in the caller's unit (ns or cycles), charged after the fact.
    pub cost: Option<ElasticDimension>,
}

impl ElasticConfig {
    /// No dimension limited.
    pub const fn new() -> Self {
        Self {
            bytes: None,
            packets: None,
            cost: None,
        }
    }

    /// Limits bytes.
    #[must_use]
    pub const fn with_bytes(mut self, d: ElasticDimension) -> Self {
        self.bytes = Some(d);
        self
    }

    /// Limits packets.
    #[must_use]
    pub const fn with_packets(mut self, d: ElasticDimension) -> Self {
        self.packets = Some(d);
        self
    }

    /// Limits processing cost.
    #[must_use]
    pub const fn with_cost(mut self, d: ElasticDimension) -> Self {
        self.cost = Some(d);
        self
    }
}

/// What [`ElasticLimiter::admit`] decided.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Within base in every dimension.
    Base,
    /// Above base in some dimension, paid from credit.
    Burst,
    /// Held: bytes above base and no credit (or no headroom).
    HeldBytes,
    /// Held: packets above base and no credit (or no headroom).
    HeldPackets,
    /// Held: processing cost already above base and not covered by credit.
    HeldCost,
}

impl Admission {
    /// Whether the packet may pass.
    pub const fn is_admitted(self) -> bool {
        matches!(self, Self::Base | Self::Burst)
    }
}

/// Counts of a limiter's decisions, by stable snake_case name through [`visit`](Self::visit).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElasticCounters {
    /// Admitted within base.
    pub admitted_base: u64,
    /// Admitted above base on credit.
    pub admitted_burst: u64,
    /// Held by the bytes dimension.
    pub bw_allowance_exceeded: u64,
    /// Held by the packets dimension.
    pub pps_allowance_exceeded: u64,
    /// Held by the processing-cost dimension.
    pub cpu_allowance_exceeded: u64,
}

impl ElasticCounters {
    /// Calls `f(name, value)` for every counter.
    pub fn visit(&self, mut f: impl FnMut(&'static str, u64)) {
        f("admitted_base", self.admitted_base);
        f("admitted_burst", self.admitted_burst);
        f("bw_allowance_exceeded", self.bw_allowance_exceeded);
        f("pps_allowance_exceeded", self.pps_allowance_exceeded);
        f("cpu_allowance_exceeded", self.cpu_allowance_exceeded);
    }
}

/// One tenant's elastic credit limiter (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct ElasticLimiter {
    bytes: Option<Dim>,
    packets: Option<Dim>,
    cost: Option<Dim>,
    counters: ElasticCounters,
}

impl ElasticLimiter {
    /// A limiter at `now` with full base buckets and no credit.
    pub fn new(config: ElasticConfig, now: Instant) -> Self {
        Self {
            bytes: config.bytes.map(|d| Dim::new(d, now)),
            packets: config.packets.map(|d| Dim::new(d, now)),
            cost: config.cost.map(|d| Dim::new(d, now)),
            counters: ElasticCounters::default(),
        }
    }

    /// Decides on `packets` packets of `bytes` bytes in total at `now`; `headroom` says whether
    /// the host may grant bursts. An admitted amount is charged; a held one is not.
    pub fn admit(&mut self, now: Instant, bytes: u64, packets: u64, headroom: bool) -> Admission {
        for d in [&mut self.bytes, &mut self.packets, &mut self.cost]
            .into_iter()
            .flatten()
        {
            d.refill(now);
        }
        if self.cost.as_ref().is_some_and(|d| d.debt > 0) {
            self.counters.cpu_allowance_exceeded += 1;
            return Admission::HeldCost;
        }
        let b = self
            .bytes
            .as_ref()
            .map_or(Some(false), |d| d.plan(bytes, headroom));
        let p = self
            .packets
            .as_ref()
            .map_or(Some(false), |d| d.plan(packets, headroom));
        let (Some(b_burst), Some(p_burst)) = (b, p) else {
            if b.is_none() {
                self.counters.bw_allowance_exceeded += 1;
                return Admission::HeldBytes;
            }
            self.counters.pps_allowance_exceeded += 1;
            return Admission::HeldPackets;
        };
        if let Some(d) = &mut self.bytes {
            d.charge(bytes, headroom);
        }
        if let Some(d) = &mut self.packets {
            d.charge(packets, headroom);
        }
        if b_burst || p_burst {
            self.counters.admitted_burst += 1;
            Admission::Burst
        } else {
            self.counters.admitted_base += 1;
            Admission::Base
        }
    }

    /// Charges `cost` units of processing (measured by the caller for this tenant's last batch)
    /// at `now`: from the base allowance, then from credit if `headroom`, and what remains is a
    /// debt that holds the tenant's packets until base accrual has paid it.
    pub fn charge_cost(&mut self, now: Instant, cost: u64, headroom: bool) {
        if let Some(d) = &mut self.cost {
            d.refill(now);
            if d.plan(cost, headroom).is_some() {
                d.charge(cost, headroom);
            } else {
                let over = cost.saturating_sub(d.tokens);
                d.tokens = 0;
                d.debt = d.debt.saturating_add(over);
            }
        }
    }

    /// Credit left in (bytes, packets, cost), in units (rounded down).
    pub fn credit(&self) -> (u64, u64, u64) {
        let c = |d: &Option<Dim>| d.as_ref().map_or(0, Dim::credit_units);
        (c(&self.bytes), c(&self.packets), c(&self.cost))
    }

    /// The decisions so far.
    pub fn counters(&self) -> &ElasticCounters {
        &self.counters
    }
}

/// One dimension's state.
#[derive(Clone, Copy, Debug)]
struct Dim {
    accrual: Accrual,
    cfg: ElasticDimension,
    /// Base allowance on hand (at most `base_burst`).
    tokens: u64,
    /// Credit in units of `1 / spend.den`.
    credit: u128,
    /// Processing already spent beyond base and credit; paid first from new allowance.
    debt: u64,
}

impl Dim {
    fn new(cfg: ElasticDimension, now: Instant) -> Self {
        Self {
            accrual: Accrual::new(cfg.base_per_second, now),
            cfg,
            tokens: cfg.base_burst,
            credit: 0,
            debt: 0,
        }
    }

    fn credit_cap(&self) -> u128 {
        u128::from(self.cfg.credit_cap) * u128::from(self.cfg.spend.den)
    }

    fn credit_units(&self) -> u64 {
        u64::try_from(self.credit / u128::from(self.cfg.spend.den.max(1))).unwrap_or(u64::MAX)
    }

    /// Adds the base earned since the last call: pays debt, fills the base bucket, and turns
    /// what overflows it into credit.
    fn refill(&mut self, now: Instant) {
        let mut add = self.accrual.tick(now);
        let paid = add.min(self.debt);
        self.debt -= paid;
        add -= paid;
        let room = self.cfg.base_burst.saturating_sub(self.tokens);
        let fill = add.min(room);
        self.tokens += fill;
        let unused = u128::from(add - fill) * u128::from(self.cfg.spend.den);
        self.credit = self.credit.saturating_add(unused).min(self.credit_cap());
    }

    /// `Some(false)` if `n` fits the base allowance, `Some(true)` if the rest is paid from
    /// credit (with headroom), `None` if it cannot be admitted.
    fn plan(&self, n: u64, headroom: bool) -> Option<bool> {
        if n <= self.tokens {
            return Some(false);
        }
        let cost = u128::from(n - self.tokens) * u128::from(self.cfg.spend.num);
        (headroom && cost <= self.credit).then_some(true)
    }

    /// Charges `n` as planned (the plan must have succeeded).
    fn charge(&mut self, n: u64, headroom: bool) {
        match self.plan(n, headroom) {
            Some(false) => self.tokens -= n,
            Some(true) => {
                let over = n - self.tokens;
                self.tokens = 0;
                let cost = u128::from(over) * u128::from(self.cfg.spend.num);
                self.credit = self.credit.saturating_sub(cost);
            }
            None => {}
        }
    }
}
