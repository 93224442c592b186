//! How many nodes two tenants share when each holds `k` of `N` nodes chosen uniformly.
//!
//! The count is hypergeometric: `P(o) = C(k, o) · C(N − k, k − o) / C(N, k)`. The binomials
//! overflow long before `N = 10,000`, so the distribution is built from ratios of neighbouring
//! terms, starting at 1 at the mode and walking outwards (every term is then at most 1 before
//! normalising, and terms too small for an `f64` become 0). Only `+ − × ÷` on `f64` are used, so
//! the results are the same on every IEEE-754 platform. These figures are for reporting; no
//! placement decision reads them.

use alloc::vec;
use alloc::vec::Vec;

/// Why an overlap figure could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverlapError {
    /// More nodes per tenant than nodes.
    PerTenantExceedsNodes,
}

impl core::fmt::Display for OverlapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::PerTenantExceedsNodes => write!(f, "more nodes per tenant than nodes"),
        }
    }
}

impl core::error::Error for OverlapError {}

/// `P(o)` for `o = 0..=per_tenant`: the chance two tenants share exactly `o` of `nodes` nodes.
///
/// # Errors
/// [`OverlapError::PerTenantExceedsNodes`] when `per_tenant > nodes`.
pub fn overlap_distribution(nodes: u32, per_tenant: u32) -> Result<Vec<f64>, OverlapError> {
    let (n, k) = (u64::from(nodes), u64::from(per_tenant));
    if k > n {
        return Err(OverlapError::PerTenantExceedsNodes);
    }
    let mut p = vec![0.0f64; per_tenant as usize + 1];
    // Overlaps below 2k − N are impossible (the two shards cannot both fit otherwise).
    let lo = (2 * k).saturating_sub(n);
    let mode = ((k + 1) * (k + 1) / (n + 2)).clamp(lo, k);
    let f = |x: u64| x as f64;
    let mut w = 1.0f64;
    if let Some(slot) = p.get_mut(mode as usize) {
        *slot = 1.0;
    }
    // Upwards: P(o + 1) / P(o) = (k − o)² / ((o + 1)(N − 2k + o + 1)).
    for o in mode..k {
        w *= f((k - o) * (k - o)) / (f(o + 1) * f(n + o + 1 - 2 * k));
        if let Some(slot) = p.get_mut(o as usize + 1) {
            *slot = w;
        }
    }
    // Downwards: P(o − 1) / P(o) = o (N − 2k + o) / (k − o + 1)².
    w = 1.0;
    for o in (lo + 1..=mode).rev() {
        w *= (f(o) * f(n + o - 2 * k)) / f((k - o + 1) * (k - o + 1));
        if let Some(slot) = p.get_mut(o as usize - 1) {
            *slot = w;
        }
    }
    // Sum smallest first, then normalise.
    let mut sorted = p.clone();
    sorted.sort_by(f64::total_cmp);
    let total: f64 = sorted.iter().sum();
    for x in &mut p {
        *x /= total;
    }
    Ok(p)
}

/// The chance two tenants share exactly `shared` nodes (0 when `shared > per_tenant`).
///
/// # Errors
/// [`OverlapError::PerTenantExceedsNodes`] when `per_tenant > nodes`.
pub fn overlap_probability(nodes: u32, per_tenant: u32, shared: u32) -> Result<f64, OverlapError> {
    let p = overlap_distribution(nodes, per_tenant)?;
    Ok(p.get(shared as usize).copied().unwrap_or(0.0))
}

/// The chance two tenants share at least `shared` nodes (summed from the rare end).
///
/// # Errors
/// [`OverlapError::PerTenantExceedsNodes`] when `per_tenant > nodes`.
pub fn overlap_at_least(nodes: u32, per_tenant: u32, shared: u32) -> Result<f64, OverlapError> {
    let p = overlap_distribution(nodes, per_tenant)?;
    Ok(p.iter().skip(shared as usize).rev().sum())
}

/// Expected number of the `C(tenants, 2)` tenant pairs that share at least `shared` nodes.
///
/// # Errors
/// [`OverlapError::PerTenantExceedsNodes`] when `per_tenant > nodes`.
pub fn expected_pairs_sharing_at_least(
    nodes: u32,
    per_tenant: u32,
    tenants: u64,
    shared: u32,
) -> Result<f64, OverlapError> {
    let t = tenants as f64;
    let pairs = t * (t - 1.0).max(0.0) / 2.0;
    Ok(pairs * overlap_at_least(nodes, per_tenant, shared)?)
}

/// `P(o)` as an exact fraction `(C(k, o) · C(N − k, k − o), C(N, k))`, unreduced; `None` if
/// `per_tenant > nodes` or a binomial does not fit in a `u128`.
pub fn overlap_ratio(nodes: u32, per_tenant: u32, shared: u32) -> Option<(u128, u128)> {
    let (n, k, o) = (
        u128::from(nodes),
        u128::from(per_tenant),
        u128::from(shared),
    );
    if k > n {
        return None;
    }
    if o > k {
        return Some((0, binomial(n, k)?));
    }
    let num = binomial(k, o)?.checked_mul(binomial(n - k, k - o)?)?;
    Some((num, binomial(n, k)?))
}

/// `C(n, r)`, exact, or `None` on overflow.
fn binomial(n: u128, r: u128) -> Option<u128> {
    if r > n {
        return Some(0);
    }
    let r = r.min(n - r);
    let mut c: u128 = 1;
    for i in 0..r {
        // c · (n − i) / (i + 1) is C(n, i + 1): exact at every step.
        c = c.checked_mul(n - i)? / (i + 1);
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE)
    }

    #[test]
    fn aws_examples() {
        let p = overlap_distribution(8, 3).unwrap();
        for (o, want) in [10.0, 30.0, 15.0, 1.0].iter().enumerate() {
            assert!(close(p[o], want / 56.0, 1e-14), "{o}: {}", p[o]);
        }
        let p = overlap_distribution(100, 5).unwrap();
        let want = [
            57_940_519.0,
            15_917_725.0,
            1_384_150.0,
            44_650.0,
            475.0,
            1.0,
        ];
        for (o, w) in want.iter().enumerate() {
            assert!(close(p[o], w / 75_287_520.0, 1e-13), "{o}: {}", p[o]);
        }
        assert_eq!(overlap_ratio(8, 3, 1), Some((30, 56)));
        assert_eq!(overlap_ratio(100, 5, 5), Some((1, 75_287_520)));
    }

    #[test]
    fn matches_exact_ratios_for_small_fleets() {
        for n in 0..40u32 {
            for k in 0..=n {
                let p = overlap_distribution(n, k).unwrap();
                assert_eq!(p.len(), k as usize + 1);
                for o in 0..=k {
                    let (num, den) = overlap_ratio(n, k, o).unwrap();
                    let exact = num as f64 / den as f64;
                    assert!(close(p[o as usize], exact, 1e-12), "N={n} k={k} o={o}");
                }
            }
        }
    }

    #[test]
    fn large_fleets_stay_finite_and_normalised() {
        for (n, k) in [
            (10_000, 8),
            (10_000, 100),
            (10_000, 5_000),
            (10_000, 10_000),
            (4_000_000_000, 1000),
        ] {
            let p = overlap_distribution(n, k).unwrap();
            assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0), "N={n} k={k}");
            let s: f64 = p.iter().sum();
            assert!(close(s, 1.0, 1e-9), "N={n} k={k} sum {s}");
        }
        // k = N: both tenants hold every node.
        assert_eq!(overlap_probability(10_000, 10_000, 10_000).unwrap(), 1.0);
        // Expected sharing of 8 nodes out of 10,000 is k²/N = 0.0064.
        let p = overlap_distribution(10_000, 8).unwrap();
        let mean: f64 = p.iter().enumerate().map(|(o, x)| o as f64 * x).sum();
        assert!(close(mean, 64.0 / 10_000.0, 1e-12));
        // P(all 8 shared) = 1 / C(10000, 8).
        let (_, den) = overlap_ratio(10_000, 8, 8).unwrap();
        assert!(close(p[8], 1.0 / den as f64, 1e-10));
    }

    #[test]
    fn tails_and_pairs() {
        let t = overlap_at_least(100, 5, 1).unwrap();
        assert!(close(t, 1.0 - 57_940_519.0 / 75_287_520.0, 1e-12));
        assert!(close(
            overlap_at_least(100, 5, 5).unwrap(),
            1.0 / 75_287_520.0,
            1e-12
        ));
        assert_eq!(overlap_at_least(100, 5, 6).unwrap(), 0.0);
        assert_eq!(overlap_at_least(100, 5, 0).unwrap(), 1.0);
        let e = expected_pairs_sharing_at_least(100, 5, 1000, 5).unwrap();
        assert!(close(e, 499_500.0 / 75_287_520.0, 1e-12));
        assert_eq!(expected_pairs_sharing_at_least(100, 5, 1, 0).unwrap(), 0.0);
        assert_eq!(
            overlap_distribution(3, 4),
            Err(OverlapError::PerTenantExceedsNodes)
        );
        assert_eq!(overlap_probability(8, 3, 9).unwrap(), 0.0);
        assert_eq!(overlap_ratio(3, 4, 0), None);
        assert_eq!(overlap_ratio(10_000, 5_000, 2_500), None);
    }
}
