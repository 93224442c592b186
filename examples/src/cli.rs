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

/// 16 bytes written as exactly 32 hex digits (no sign, no prefix).
pub fn hex_key(hex: &str) -> Option<[u8; 16]> {
    let mut key = [0u8; 16];
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    for (k, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *k = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(key)
}

/// A secret key read from a file holding its 32 hex digits on a line (whitespace around
/// ignored), and a second key on a second line if there is one (the one a key rotation
/// still accepts): a file, so that keys stay out of the process list.
///
/// # Errors
/// A message naming the flag and the file: unreadable, not one or two lines of 32 hex
/// digits.
pub fn key_file(
    flag: &str,
    path: &std::path::Path,
) -> Result<([u8; 16], Option<[u8; 16]>), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let bad = || {
        format!(
            "{flag} {}: not one or two lines of 32 hex digits",
            path.display()
        )
    };
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(hex_key);
    match (keys.next(), keys.next(), keys.next()) {
        (Some(Some(k)), None, None) => Ok((k, None)),
        (Some(Some(k)), Some(Some(also)), None) => Ok((k, Some(also))),
        _ => Err(bad()),
    }
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

/// For a program's tests of its command line: `parse` (the program's, on the words of a
/// line) accepts `good`, refuses `good` with each line of `bad` appended (so each bad value
/// is refused for itself, not for something missing), and refuses `good` without each flag
/// of `required` (the flag and its value).
///
/// # Errors
/// The first line that went the wrong way.
pub fn check_parsing<T>(
    parse: impl Fn(Vec<String>) -> Result<T, String>,
    good: &str,
    bad: &[&str],
    required: &[&str],
) -> Result<(), String> {
    let words = |line: &str| {
        line.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    parse(words(good)).map_err(|e| format!("{good:?} refused: {e}"))?;
    for b in bad {
        let line = format!("{good} {b}");
        if parse(words(&line)).is_ok() {
            return Err(format!("{line:?} accepted"));
        }
    }
    for flag in required {
        let mut w = words(good);
        let Some(at) = w.iter().position(|x| x == flag) else {
            return Err(format!("{flag} is not in {good:?}"));
        };
        w.drain(at..(at + 2).min(w.len()));
        if parse(w.clone()).is_ok() {
            return Err(format!("{:?} accepted without {flag}", w.join(" ")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_parsing;

    #[test]
    fn seconds() {
        assert_eq!(super::seconds("--duration", "1.5"), Ok(1.5));
        for bad in ["-1", "inf", "NaN", "x", ""] {
            assert!(super::seconds("--duration", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        let k = super::hex_key("000102030405060708090a0b0c0d0e0F");
        assert_eq!(k, Some(core::array::from_fn(|i| i as u8)));
        // Hex digits only (`from_str_radix` alone would take a sign).
        for bad in [
            "+00102030405060708090a0b0c0d0e0f",
            "0001",
            "",
            "000102030405060708090a0b0c0d0eZZ",
        ] {
            assert_eq!(super::hex_key(bad), None, "{bad}");
        }
        let dir = std::env::temp_dir().join(format!("nf-cli-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good, two, bad) = (dir.join("good"), dir.join("two"), dir.join("bad"));
        std::fs::write(&good, " 000102030405060708090a0b0c0d0e0f\n").unwrap();
        let second = "000102030405060708090a0b0c0d0e0f\n\nffffffffffffffffffffffffffffffff\n";
        std::fs::write(&two, second).unwrap();
        assert_eq!(super::key_file("--k", &good), Ok((k.unwrap(), None)));
        assert_eq!(
            super::key_file("--k", &two),
            Ok((k.unwrap(), Some([0xff; 16])))
        );
        for text in ["0001\n", "", "000102030405060708090a0b0c0d0e0f\nx\n"] {
            std::fs::write(&bad, text).unwrap();
            let e = super::key_file("--k", &bad).unwrap_err();
            assert!(e.contains("not one or two lines"), "{text:?}: {e}");
        }
        assert!(super::key_file("--k", &dir.join("none")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_parsing_finds_what_goes_the_wrong_way() {
        // A parser that wants --a with a number and refuses --bad.
        let parse = |w: Vec<String>| -> Result<u32, String> {
            let mut it = w.into_iter();
            let mut a = None;
            while let Some(f) = it.next() {
                match (f.as_str(), it.next()) {
                    ("--a", Some(v)) => a = Some(v.parse::<u32>().map_err(|e| e.to_string())?),
                    ("--b", Some(_)) => {}
                    _ => return Err(format!("bad {f}")),
                }
            }
            a.ok_or_else(|| "--a is required".to_string())
        };
        assert_eq!(
            check_parsing(parse, "--a 1 --b x", &["--a x", "--bad 1"], &["--a"]),
            Ok(())
        );
        assert!(
            check_parsing(parse, "--b x", &[], &[]).is_err(),
            "good refused"
        );
        assert!(
            check_parsing(parse, "--a 1", &["--b y"], &[]).is_err(),
            "bad accepted"
        );
        assert!(
            check_parsing(parse, "--a 1 --b x", &[], &["--b"]).is_err(),
            "not required"
        );
        assert!(
            check_parsing(parse, "--a 1", &[], &["--c"]).is_err(),
            "not in the line"
        );
    }
}
