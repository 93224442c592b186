//! [`CurlSource`]: configuration snapshots over HTTPS (or anything else `curl` speaks) for
//! [`nf_core::snapshot::Puller`], without a TLS stack in nf: each pull runs the system's
//! `curl` with a time limit and a size limit.
//!
//! nf-core's own [`nf_core::snapshot::HttpSource`] speaks plain HTTP/1.1 only; an object
//! store or a web server behind TLS is reached through this source instead (`nf-node
//! --config https://...`). The certificate is checked the way curl checks it (the system's
//! trust store, or `--cacert` given with [`CurlSource::ca_file`]).

use nf_core::snapshot::Source;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A snapshot fetched with `curl` (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct CurlSource {
    url: String,
    timeout: Duration,
    max_len: u64,
    ca_file: Option<String>,
}

impl CurlSource {
    /// Fetches `url` with a 5 s time limit and a 64 MiB size limit.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            timeout: Duration::from_secs(5),
            max_len: 64 << 20,
            ca_file: None,
        }
    }

    /// The whole fetch's time limit (connect, TLS, transfer).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest snapshot accepted, in bytes.
    #[must_use]
    pub fn with_max_len(mut self, max_len: u64) -> Self {
        self.max_len = max_len;
        self
    }

    /// Trusts the certificates in `path` (PEM) instead of the system's store.
    #[must_use]
    pub fn ca_file(mut self, path: &str) -> Self {
        self.ca_file = Some(path.to_string());
        self
    }
}

impl Source for CurlSource {
    fn fetch(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        let mut cmd = Command::new("curl");
        cmd.args([
            "--silent",
            "--show-error",
            "--fail",
            "--proto",
            "=https,http",
        ])
        .arg("--max-time")
        .arg(format!("{:.3}", self.timeout.as_secs_f64()))
        .arg("--max-filesize")
        .arg(self.max_len.to_string());
        if let Some(ca) = &self.ca_file {
            cmd.arg("--cacert").arg(ca);
        }
        let mut child = cmd
            .arg("--")
            .arg(&self.url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("curl: {e}"))?;
        buf.clear();
        // Bounded even if the server ignores the size limit curl announces.
        let read = child
            .stdout
            .take()
            .map(|out| out.take(self.max_len + 1).read_to_end(buf));
        let out = child.wait_with_output().map_err(|e| format!("curl: {e}"))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            return Err(format!("{}: {}", self.url, why.trim()));
        }
        match read {
            Some(Ok(_)) if buf.len() as u64 <= self.max_len => Ok(()),
            Some(Ok(_)) => Err(format!("{}: longer than {} bytes", self.url, self.max_len)),
            Some(Err(e)) => Err(format!("{}: {e}", self.url)),
            None => Err(format!("{}: no output", self.url)),
        }
    }
}
