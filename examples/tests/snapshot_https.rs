//! Configuration snapshots over HTTPS with `nf_examples::curl::CurlSource`, against Python's
//! `http.server` behind TLS with a certificate this test makes (`openssl`): a snapshot is
//! applied; an untrusted certificate, a server that never answers and a server that is gone
//! are each a `source_down` that keeps the last good snapshot.
#![expect(clippy::unwrap_used, reason = "test code")]

mod common;

use nf_core::snapshot::{self, Codec, PullResult, Puller, Reject};
use nf_core::{Duration, Instant};
use nf_examples::curl::CurlSource;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Text;

impl Codec for Text {
    type Config = String;
    fn decode(&self, payload: &[u8]) -> Result<String, String> {
        String::from_utf8(payload.to_vec()).map_err(|e| e.to_string())
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const HTTPS_SERVER: &str = "
import http.server, ssl, sys, os
os.chdir(sys.argv[1])
srv = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
";

#[test]
fn snapshots_come_over_https_and_failures_keep_the_last_good_one() {
    if !(common::require("curl", &["--version"])
        && common::require("openssl", &["version"])
        && common::require(common::system_python(), &["--version"]))
    {
        return;
    }
    let dir = common::temp_dir("snapshot-https");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(
        dir.join("snapshot.nfs"),
        snapshot::encode(1, b"hello over TLS"),
    )
    .unwrap();

    let mut child = Command::new(common::system_python())
        .args(["-c", HTTPS_SERVER])
        .arg(&dir)
        .arg(&cert)
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let server = Server(child);
    let url = format!("https://127.0.0.1:{}/snapshot.nfs", port.trim());
    let every = Duration::from_secs(1);
    let at = |s: u64| Instant::ZERO + Duration::from_secs(s);

    // Trusted: applied.
    let source = CurlSource::new(&url).ca_file(cert.to_str().unwrap());
    let mut puller = Puller::new(source, Text, every);
    assert_eq!(puller.handle_timeout(at(0)), PullResult::Applied(1));
    assert_eq!(puller.current().unwrap().config(), "hello over TLS");

    // Not trusted (the system's store does not know our certificate): refused.
    let mut untrusted = Puller::new(CurlSource::new(&url), Text, every);
    assert!(
        matches!(untrusted.handle_timeout(at(0)), PullResult::Rejected(Reject::SourceDown(ref why)) if why.contains("certificate") || why.contains("SSL")),
        "{:?}",
        untrusted.last()
    );

    // A server that accepts and never answers: the time limit ends the pull.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "https://127.0.0.1:{}/snapshot.nfs",
        silent.local_addr().unwrap().port()
    );
    let mut hung = Puller::new(
        CurlSource::new(&silent_url).with_timeout(core::time::Duration::from_millis(500)),
        Text,
        every,
    );
    let started = std::time::Instant::now();
    assert!(matches!(
        hung.handle_timeout(at(0)),
        PullResult::Rejected(Reject::SourceDown(_))
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // The server goes away: the last good snapshot stays.
    drop(server);
    assert!(matches!(
        puller.handle_timeout(at(1)),
        PullResult::Rejected(Reject::SourceDown(_))
    ));
    assert_eq!(puller.current().unwrap().version(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
