//! Configuration snapshots on a virtual clock: static stability (a source that is down, slow
//! or serving bad files changes nothing), one version per batch, bounded work under a burst
//! of changes, the file source on disk, and the HTTP source against our own loopback
//! server and Python's `http.server`.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use nf_core::snapshot::{self, Codec, FileSource, MemorySource, PullResult, Puller, Reject};
use nf_core::{Duration, Instant};
use proptest::prelude::*;

/// A config of `u32`s; valid when they are sorted (the caller's semantic check).
struct Sorted;

impl Codec for Sorted {
    type Config = Vec<u32>;
    fn decode(&self, payload: &[u8]) -> Result<Vec<u32>, String> {
        let (entries, rest) = payload.as_chunks::<4>();
        if !rest.is_empty() {
            return Err(format!("{} bytes: not whole entries", payload.len()));
        }
        Ok(entries.iter().map(|e| u32::from_be_bytes(*e)).collect())
    }
    fn validate(&self, v: &Vec<u32>) -> Result<(), String> {
        if v.is_sorted() {
            Ok(())
        } else {
            Err("entries out of order".into())
        }
    }
}

fn file(version: u64, entries: &[u32]) -> Vec<u8> {
    let payload: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
    snapshot::encode(version, &payload)
}

const EVERY: Duration = Duration::from_secs(10);

fn at(secs: u64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

#[test]
fn a_source_down_for_an_hour_changes_nothing() {
    let mut p = Puller::new(MemorySource::new(file(1, &[1, 2])), Sorted, EVERY);
    assert_eq!(p.handle_timeout(at(0)), PullResult::Applied(1));
    let mut cell = p.subscribe().unwrap();
    p.source_mut().take_down();
    let mut t = 0;
    while t <= 3600 {
        t += 1;
        let r = p.handle_timeout(at(t));
        assert!(matches!(
            r,
            PullResult::NotDue | PullResult::Rejected(Reject::SourceDown(_))
        ));
        // The worker goes on with the last good config.
        assert!(!cell.refresh());
        assert_eq!(cell.current().config(), &vec![1, 2]);
    }
    // One fetch per interval, every one counted as the source being down.
    assert_eq!(p.counters().pulls, 1 + 360);
    assert_eq!(p.counters().rejected[0], 360);
    assert_eq!(p.age(at(3601)), Some(Duration::from_secs(3601)));
    // Back up with a new version: applied at the next pull.
    p.source_mut().set(file(2, &[3]));
    assert_eq!(p.handle_timeout(at(3610)), PullResult::Applied(2));
    assert!(cell.refresh());
    assert_eq!((cell.version(), cell.current().config()), (2, &vec![3]));
}

#[test]
fn bad_snapshots_are_rejected_with_their_reason_and_the_last_good_one_kept() {
    let good = file(5, &[1, 2, 3]);
    let mut p = Puller::new(MemorySource::new(good.clone()), Sorted, EVERY);
    assert_eq!(p.handle_timeout(at(0)), PullResult::Applied(5));
    let mut corrupt = file(6, &[1, 2, 3]);
    *corrupt.last_mut().unwrap() ^= 1;
    let mut bad_magic = file(6, &[1]);
    bad_magic[0] = b'X';
    let torn = file(6, &[1, 2, 3])[..snapshot::HEADER_LEN + 5].to_vec();
    let mut conflict = file(5, &[1, 2, 4]);
    conflict.truncate(conflict.len());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (corrupt, "corrupt"),
        (bad_magic, "corrupt"),
        (torn, "torn"),
        (b"NFSNAP".to_vec(), "torn"),
        (file(4, &[1]), "older"),
        (conflict, "version_conflict"),
        (file(6, &[3, 2]), "invalid"),
        (snapshot::encode(6, &[1, 2, 3]), "invalid"),
    ];
    let mut t = 0;
    for (f, reason) in cases {
        t += 10;
        p.source_mut().set(f);
        match p.handle_timeout(at(t)) {
            PullResult::Rejected(r) => assert_eq!(r.name(), reason, "{r}"),
            other => panic!("{reason}: {other:?}"),
        }
        assert_eq!(p.current().unwrap().version(), 5);
        assert_eq!(p.current().unwrap().config(), &vec![1, 2, 3]);
    }
    // The same file again is no change at all.
    p.source_mut().set(good);
    assert_eq!(p.handle_timeout(at(t + 10)), PullResult::Unchanged(5));
    let mut seen = Vec::new();
    p.counters().visit(&mut |name, v| seen.push((name, v)));
    assert_eq!(
        seen,
        [
            ("pulls", 10),
            ("applied", 1),
            ("unchanged", 1),
            ("rejected_source_down", 0),
            ("rejected_torn", 2),
            ("rejected_corrupt", 2),
            ("rejected_older", 1),
            ("rejected_version_conflict", 1),
            ("rejected_invalid", 2),
        ]
    );
}

#[test]
fn a_change_is_applied_within_one_interval_and_a_burst_costs_one_apply_per_interval() {
    let mut p = Puller::new(MemorySource::new(file(1, &[1])), Sorted, EVERY);
    p.handle_timeout(at(0));
    let mut cell = p.subscribe().unwrap();
    let mut refreshes = 0;
    // 1,000 versions written in 100 s (one every 100 ms); the worker runs a batch every
    // millisecond and refreshes once per batch.
    let mut ms = 0u64;
    for v in 2..=1001u64 {
        p.source_mut().set(file(v, &[v as u32]));
        for _ in 0..100 {
            ms += 1;
            let now = Instant::ZERO + Duration::from_millis(ms);
            if now >= p.poll_timeout() {
                p.handle_timeout(now);
            }
            if cell.refresh() {
                refreshes += 1;
            }
            // Everything a batch reads comes from one version.
            let s = cell.current();
            assert_eq!(s.config()[0] as u64, s.version());
        }
    }
    // One fetch per 10 s: 10 pulls in 100 s, each applying the newest version then.
    assert_eq!(p.counters().pulls, 11);
    assert_eq!(p.counters().applied, 11);
    assert_eq!(refreshes, 10);
    assert!(cell.version() >= 1001 - 100);
    // The last version is in use within one interval of being written.
    let now = Instant::ZERO + Duration::from_millis(ms) + EVERY;
    p.handle_timeout(now);
    assert_eq!(p.current().unwrap().version(), 1001);
}

#[test]
fn workers_on_threads_see_one_version_per_batch() {
    let mut p = Puller::new(MemorySource::new(file(1, &[1, 1, 1, 1])), Sorted, EVERY);
    p.handle_timeout(at(0));
    let cells: Vec<_> = (0..2).map(|_| p.subscribe().unwrap()).collect();
    let workers: Vec<_> = cells
        .into_iter()
        .map(|mut cell| {
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..20_000 {
                    cell.refresh();
                    let s = cell.current().clone();
                    // A whole "batch" reads only this version's entries.
                    assert!(s.config().iter().all(|&e| u64::from(e) == s.version()));
                    assert!(s.version() >= last);
                    last = s.version();
                }
                last
            })
        })
        .collect();
    for v in 2..200u64 {
        p.source_mut().set(file(v, &[v as u32; 4]));
        p.handle_timeout(at(v * 10));
    }
    for w in workers {
        assert!(w.join().unwrap() >= 1);
    }
}

#[test]
fn the_file_source_reads_a_file_or_a_directory_and_survives_it_missing() {
    let dir = std::env::temp_dir().join(format!("nf-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = Puller::new(FileSource::new(&dir), Sorted, EVERY);
    assert!(matches!(
        p.handle_timeout(at(0)),
        PullResult::Rejected(Reject::SourceDown(_))
    ));
    assert!(
        p.subscribe().is_none(),
        "no config yet: nothing to forward with"
    );
    // The control plane writes a temporary file and renames it into place.
    let tmp = dir.join("snapshot.tmp");
    std::fs::write(&tmp, file(3, &[7, 8])).unwrap();
    std::fs::rename(&tmp, dir.join("snapshot.nfs")).unwrap();
    assert_eq!(p.handle_timeout(at(10)), PullResult::Applied(3));
    // A half-written file (no rename) is torn.
    let f = file(4, &[9, 10]);
    std::fs::write(dir.join("snapshot.nfs"), &f[..f.len() - 3]).unwrap();
    assert!(matches!(
        p.handle_timeout(at(20)),
        PullResult::Rejected(Reject::Torn)
    ));
    assert_eq!(p.current().unwrap().config(), &vec![7, 8]);
    // The file path itself works too.
    let mut q = Puller::new(FileSource::new(dir.join("snapshot.nfs")), Sorted, EVERY);
    assert!(matches!(
        q.handle_timeout(at(0)),
        PullResult::Rejected(Reject::Torn)
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    /// Any change to a snapshot file after its magic is rejected as torn or corrupt, never
    /// used (the checksum covers the version and the length too).
    #[test]
    fn a_changed_byte_is_never_accepted(
        entries in proptest::collection::vec(any::<u32>(), 0..16),
        at_byte in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut f = file(9, &entries);
        let i = 8 + at_byte.index(f.len() - 8);
        f[i] ^= flip;
        let r = snapshot::open(&f);
        prop_assert!(matches!(r, Err(Reject::Torn) | Err(Reject::Corrupt)), "{:?}", r.map(|x| x.0));
    }
}

/// A one-shot HTTP server on loopback answering each connection with `response`.
fn serve(responses: Vec<Vec<u8>>) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        for r in responses {
            let (mut s, _) = l.accept().unwrap();
            // The whole request, then the answer.
            let mut req = Vec::new();
            let mut chunk = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
                }
            }
            let _ = s.write_all(&r);
        }
    });
    (port, h)
}

fn http(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\n{headers}\r\n").into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn the_http_source_takes_a_200_and_refuses_everything_else() {
    let good = file(7, &[1, 2]);
    let len = |b: &[u8]| format!("Content-Length: {}\r\n", b.len());
    let responses = vec![
        http("200 OK", &len(&good), &good),
        http("404 Not Found", "Content-Length: 0\r\n", b""),
        // Cut short: announced 10 more bytes than sent.
        http(
            "200 OK",
            &format!("Content-Length: {}\r\n", good.len() + 10),
            &good,
        ),
        http(
            "200 OK",
            "Transfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        http("200 OK", &len(&good), &good),
        b"garbage".to_vec(),
    ];
    let (port, server) = serve(responses);
    let url = format!("http://127.0.0.1:{port}/fleet/snapshot.nfs");
    let src = snapshot::HttpSource::new(&url).unwrap();
    let mut p = Puller::new(src, Sorted, EVERY);
    assert_eq!(p.handle_timeout(at(0)), PullResult::Applied(7));
    let want = [
        "source_down", // 404
        "source_down", // body shorter than announced
        "source_down", // chunked
    ];
    for (i, reason) in want.iter().enumerate() {
        match p.handle_timeout(at(10 * (i as u64 + 1))) {
            PullResult::Rejected(r) => assert_eq!(r.name(), *reason, "{r}"),
            other => panic!("{reason}: {other:?}"),
        }
    }
    assert_eq!(p.handle_timeout(at(40)), PullResult::Unchanged(7));
    assert!(matches!(
        p.handle_timeout(at(50)),
        PullResult::Rejected(Reject::SourceDown(_))
    ));
    server.join().unwrap();
    // Nobody listening any more.
    assert!(matches!(
        p.handle_timeout(at(60)),
        PullResult::Rejected(Reject::SourceDown(_))
    ));
    assert_eq!(p.current().unwrap().config(), &vec![1, 2]);
    for bad in ["https://a/b", "ftp://x", "http://:80/", "http://h:99999/"] {
        assert!(snapshot::HttpSource::new(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_http_source_times_out_on_a_server_that_never_answers() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let src = snapshot::HttpSource::new(&format!("http://127.0.0.1:{port}/s"))
        .unwrap()
        .with_timeout(core::time::Duration::from_millis(200));
    let mut p = Puller::new(src, Sorted, EVERY);
    let t = std::time::Instant::now();
    assert!(matches!(
        p.handle_timeout(at(0)),
        PullResult::Rejected(Reject::SourceDown(_))
    ));
    assert!(t.elapsed() < core::time::Duration::from_secs(5));
    drop(l);
}

/// Python's `http.server`, a web server we did not write, serves the snapshot directory.
#[test]
fn the_http_source_pulls_from_python_http_server() {
    let py = "python3";
    if std::process::Command::new(py)
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 is required under CI"
        );
        eprintln!("SKIP the_http_source_pulls_from_python_http_server: no python3");
        return;
    }
    let dir = std::env::temp_dir().join(format!("nf-snapshot-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("snapshot.nfs"), file(11, &[4, 5, 6])).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = std::process::Command::new(py)
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let src = snapshot::HttpSource::new(&format!("http://127.0.0.1:{port}/snapshot.nfs")).unwrap();
    let mut p = Puller::new(src, Sorted, Duration::from_millis(100));
    // Wait for the server to listen: pulls fail (source down) until it does.
    let mut applied = false;
    for i in 0..100u64 {
        if p.handle_timeout(Instant::ZERO + Duration::from_millis(100 * i))
            == PullResult::Applied(11)
        {
            applied = true;
            break;
        }
        std::thread::sleep(core::time::Duration::from_millis(50));
    }
    let missing = snapshot::HttpSource::new(&format!("http://127.0.0.1:{port}/nope.nfs")).unwrap();
    let mut q = Puller::new(missing, Sorted, EVERY);
    let r = q.handle_timeout(at(0));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(applied, "python http.server never served the snapshot");
    assert_eq!(p.current().unwrap().config(), &vec![4, 5, 6]);
    assert!(
        matches!(r, PullResult::Rejected(Reject::SourceDown(_))),
        "{r:?}"
    );
}
