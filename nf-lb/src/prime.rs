//! Table sizes: a deterministic primality test and the size for a number of backends.

use crate::backend::BuildError;

/// Largest table size accepted (2^23 entries; the largest prime below it is 8,388,593).
pub const MAX_TABLE_SIZE: u32 = 1 << 23;

/// Maglev's production table size, a prime.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Whether `n` is a prime, by trial division with odd divisors up to `√n` (exact, and at most
/// about 32,768 divisions for any `u32`).
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    // d·d compared in u64: it can pass u32::MAX on the last step.
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The smallest prime table size at least `100 · backends` (and at least 2), Maglev's rule for
/// keeping every backend's share of entries within 1%.
///
/// # Errors
///
/// [`BuildError::SizeTooLarge`] when that prime would exceed [`MAX_TABLE_SIZE`].
pub fn table_size_for(backends: usize) -> Result<u32, BuildError> {
    let want = backends.saturating_mul(100).max(2);
    let too_large = BuildError::SizeTooLarge {
        size: u32::try_from(want).unwrap_or(u32::MAX),
    };
    let start = u32::try_from(want).map_err(|_| too_large)?;
    // Prime gaps below 2^23 are under 200, so this loop is short; it is bounded by the cap.
    let mut n = start;
    while n <= MAX_TABLE_SIZE {
        if is_prime(n) {
            return Ok(n);
        }
        n += 1;
    }
    Err(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        let small: alloc::vec::Vec<u32> = (0..40).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]);
        assert!(is_prime(65_537));
        assert!(is_prime(8_388_593));
        assert!(!is_prime(65_535));
        assert!(!is_prime(4_294_967_295));
        assert!(is_prime(4_294_967_291));
        // 65,521² < 2^32: the largest square of a prime that fits.
        assert!(!is_prime(65_521 * 65_521));
    }

    #[test]
    fn sizes() {
        assert_eq!(table_size_for(0), Ok(2));
        assert_eq!(table_size_for(1), Ok(101));
        assert_eq!(table_size_for(10), Ok(1_009));
        assert_eq!(table_size_for(1000), Ok(100_003));
        assert!(matches!(
            table_size_for(100_000),
            Err(BuildError::SizeTooLarge { .. })
        ));
        assert!(matches!(
            table_size_for(usize::MAX),
            Err(BuildError::SizeTooLarge { .. })
        ));
    }
}
