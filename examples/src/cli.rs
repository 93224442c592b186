//! What every example program's command line shares: `--help`, exit codes, seconds.

use std::process::ExitCode;

/// Runs a program: parses its arguments (`Ok(None)`: print `usage` and succeed), then runs
/// it. A bad command line prints the error and `usage` and exits with 2; a failed run prints
/// `program: error` and exits with 1.
pub fn main_with<A>(
    program: &str,
    usage: &str,
    parse: impl FnOnce(Vec<String>) -> Result<Option<A>, String>,
    run: impl FnOnce(A) -> Result<(), String>,
) -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok(None) => {
            crate::say!("{usage}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: {e}\n\n{usage}");
            ExitCode::from(2)
        }
        Ok(Some(args)) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{program}: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// 16 random bytes from the operating system (a per-run key for keyed hashing: port
/// choice and table placement must not be predictable from outside); falls back to the
/// clock and the process id if `/dev/urandom` cannot be read.
pub fn random_secret() -> [u8; 16] {
    use std::io::Read as _;
    let mut key = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
    if read.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        key = (t ^ u128::from(std::process::id()) << 64).to_le_bytes();
    }
    key
}

/// A non-negative, finite number of seconds given to `flag`.
///
/// # Errors
/// A message naming the flag and the value.
pub fn seconds(flag: &str, value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|d| d.is_finite() && *d >= 0.0)
        .ok_or_else(|| format!("{flag} {value}: not a number of seconds"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn seconds() {
        assert_eq!(super::seconds("--duration", "1.5"), Ok(1.5));
        for bad in ["-1", "inf", "NaN", "x", ""] {
            assert!(super::seconds("--duration", bad).is_err(), "{bad}");
        }
    }
}
