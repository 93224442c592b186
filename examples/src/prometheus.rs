//! A pipeline's counters in the Prometheus text exposition format (version 0.0.4), and a
//! minimal HTTP/1.0 endpoint that serves them.
//!
//! [`render`] walks [`StageControl::visit_counters`] of one or more pipelines and writes two
//! metric families:
//!
//! ```text
//! nf_stage_counter{position="0",stage="parse",counter="packets"} 64
//! nf_stage_drops_total{position="0",stage="parse",reason="eth_truncated"} 1
//! ```
//!
//! Every `drop_<reason>` counter (a [`DropReason`]) goes to `nf_stage_drops_total` with the
//! reason as a label; every other counter, common or stage-specific, to `nf_stage_counter`.
//! `position` numbers the stages in pipeline order, so two stages of the same name stay
//! apart: a new stage starts at each `batches` counter (every stage reports its common
//! counters first, `batches` leading) and at each pipeline given.
//!
//! [`MetricsServer`] answers `GET /metrics` with the last text published to it from a thread
//! of its own: the packet loop only renders and swaps a string now and then. [`Exposition`]
//! renders counters that do not come from a [`StageControl`] (a router's ports, a sync
//! link, a BGP session: [`crate::router::serve`] publishes those of its function too).

use nf_core::{DropReason, StageControl};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const COUNTER: &str = "nf_stage_counter";
const DROPS: &str = "nf_stage_drops_total";

/// The exposition of every counter of `pipelines`, in order (positions continue from one
/// pipeline to the next).
pub fn render(pipelines: &[&dyn StageControl]) -> String {
    let mut e = Exposition::default();
    for pipeline in pipelines {
        e.pipeline(|out| {
            pipeline.visit_counters(&mut |stage, counter, value| out(stage, counter, value))
        });
    }
    e.finish()
}

/// An exposition built from counter visitors of any shape (a [`StageControl`], a
/// [`crate::router::Function`], a router's ports): each [`Exposition::pipeline`] call
/// starts a new position, and so does, within one, every `batches` counter and every change
/// of stage name.
#[derive(Debug, Default)]
pub struct Exposition {
    counters: String,
    drops: String,
    next: usize,
}

impl Exposition {
    /// Adds the counters `visit` reports, `(stage, counter, value)` each.
    pub fn pipeline(&mut self, visit: impl FnOnce(&mut dyn FnMut(&str, &str, u64))) {
        let (mut position, mut last) = (None::<usize>, String::new());
        visit(&mut |stage, counter, value| {
            if position.is_none() || counter == "batches" || stage != last {
                position = Some(self.next);
                self.next += 1;
                stage.clone_into(&mut last);
            }
            let (out, family, label, name) =
                match DropReason::ALL.iter().find(|r| r.counter_name() == counter) {
                    Some(r) => (&mut self.drops, DROPS, "reason", r.name()),
                    None => (&mut self.counters, COUNTER, "counter", counter),
                };
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "{family}{{position=\"{}\",stage=\"{}\",{label}=\"{}\"}} {value}",
                position.unwrap_or_default(),
                escape(stage),
                escape(name),
            );
        });
    }

    /// The text: both families, each with its `# HELP` and `# TYPE`.
    pub fn finish(self) -> String {
        let mut text = String::new();
        let families = [
            (
                COUNTER,
                "untyped",
                "Counters of each pipeline stage by position, stage and counter name.",
                self.counters,
            ),
            (
                DROPS,
                "counter",
                "Packets each pipeline stage dropped, by position, stage and reason.",
                self.drops,
            ),
        ];
        for (name, kind, help, samples) in families {
            let _ = writeln!(text, "# HELP {name} {help}");
            let _ = writeln!(text, "# TYPE {name} {kind}");
            text.push_str(&samples);
        }
        text
    }
}

/// A label value with `\`, `"` and line feeds escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Longest request head read before answering.
const MAX_REQUEST: usize = 4096;
/// How long one client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the last [`MetricsServer::publish`]ed exposition over HTTP/1.0, one response per
/// connection, from a thread of its own.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    text: Arc<Mutex<String>>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: any) and starts the serving thread.
    ///
    /// # Errors
    /// Binding the socket or spawning the thread failed.
    pub fn start(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let text = Arc::new(Mutex::new(String::new()));
        let shared = Arc::clone(&text);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    // A client that misbehaves only loses its own answer.
                    let _ = answer(stream, &shared);
                }
            })?;
        Ok(Self { addr, text })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces what it serves.
    pub fn publish(&self, text: String) {
        *self.text.lock().unwrap_or_else(PoisonError::into_inner) = text;
    }
}

/// A program's `--metrics ADDR`: the server started and announced (`PROGRAM: metrics at
/// http://ADDR/metrics`), or `None` without the flag.
///
/// # Errors
/// The address cannot be bound, as a message naming the flag.
pub fn start_for(program: &str, addr: Option<SocketAddr>) -> Result<Option<MetricsServer>, String> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let server = MetricsServer::start(addr).map_err(|e| format!("--metrics {addr}: {e}"))?;
    crate::say!(
        "{program}: metrics at http://{}/metrics",
        server.local_addr()
    );
    Ok(Some(server))
}

/// Reads one request head (bounded in size and time) and answers it.
fn answer(mut stream: TcpStream, text: &Mutex<String>) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while head.len() < MAX_REQUEST
        && !head.windows(4).any(|w| w == b"\r\n\r\n")
        && !head.windows(2).any(|w| w == b"\n\n")
    {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics" | b"/")) => (
            "200 OK",
            text.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        ),
        (Some(b"GET"), _) => ("404 Not Found", "not found: try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "GET only\n".to_string()),
    };
    let ty = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: {ty}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nf_core::StageCounters;
    use nf_core::{Batch, Instant, Packet, ParseStage, Stage, StageExt};

    #[test]
    fn renders_both_families_with_positions_and_reasons() {
        let mut pipeline = ParseStage::default().then(ParseStage::default());
        let mut batch = Batch::new();
        batch
            .push(Packet::new(vec![0u8; 10], 0, 10).unwrap())
            .unwrap();
        pipeline.process(Instant::ZERO, &mut batch);
        let golden = "\
# HELP nf_stage_counter Counters of each pipeline stage by position, stage and counter name.
# TYPE nf_stage_counter untyped
nf_stage_counter{position=\"0\",stage=\"parse\",counter=\"batches\"} 1
nf_stage_counter{position=\"0\",stage=\"parse\",counter=\"packets\"} 1
nf_stage_counter{position=\"0\",stage=\"parse\",counter=\"to_control\"} 0
nf_stage_counter{position=\"0\",stage=\"parse\",counter=\"tx\"} 0
nf_stage_counter{position=\"0\",stage=\"parse\",counter=\"drops\"} 1
nf_stage_counter{position=\"1\",stage=\"parse\",counter=\"batches\"} 1
nf_stage_counter{position=\"1\",stage=\"parse\",counter=\"packets\"} 0
nf_stage_counter{position=\"1\",stage=\"parse\",counter=\"to_control\"} 0
nf_stage_counter{position=\"1\",stage=\"parse\",counter=\"tx\"} 0
nf_stage_counter{position=\"1\",stage=\"parse\",counter=\"drops\"} 0
# HELP nf_stage_drops_total Packets each pipeline stage dropped, by position, stage and reason.
# TYPE nf_stage_drops_total counter
nf_stage_drops_total{position=\"0\",stage=\"parse\",reason=\"eth_truncated\"} 1
";
        assert_eq!(render(&[&pipeline]), golden);
    }

    /// A stage with an awkward name and one counter of its own, no `batches` first.
    struct Odd(StageCounters);

    impl StageControl for Odd {
        fn name(&self) -> &'static str {
            "a\"b\\c\nd"
        }

        fn counters(&self) -> &StageCounters {
            &self.0
        }

        fn visit_counters(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
            f(self.name(), "own", 7);
        }
    }

    #[test]
    fn escapes_label_values_and_numbers_pipelines_on() {
        let odd = Odd(StageCounters::default());
        let text = render(&[&odd, &odd]);
        let samples: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "nf_stage_counter{position=\"0\",stage=\"a\\\"b\\\\c\\nd\",counter=\"own\"} 7",
                "nf_stage_counter{position=\"1\",stage=\"a\\\"b\\\\c\\nd\",counter=\"own\"} 7",
            ]
        );
    }

    #[test]
    fn visitors_get_a_position_per_stage_name_and_batches() {
        let mut e = Exposition::default();
        e.pipeline(|out| {
            out("port:cg", "rx", 3);
            out("port:cg", "tx", 2);
            out("port:bg", "rx", 1);
        });
        e.pipeline(|out| {
            out("lb", "batches", 1);
            out("lb", "drop_lb_backend_down", 4);
            out("sync", "created", 5);
            out("bgp", "up", 1);
        });
        let text = e.finish();
        let samples: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "nf_stage_counter{position=\"0\",stage=\"port:cg\",counter=\"rx\"} 3",
                "nf_stage_counter{position=\"0\",stage=\"port:cg\",counter=\"tx\"} 2",
                "nf_stage_counter{position=\"1\",stage=\"port:bg\",counter=\"rx\"} 1",
                "nf_stage_counter{position=\"2\",stage=\"lb\",counter=\"batches\"} 1",
                "nf_stage_counter{position=\"3\",stage=\"sync\",counter=\"created\"} 5",
                "nf_stage_counter{position=\"4\",stage=\"bgp\",counter=\"up\"} 1",
                "nf_stage_drops_total{position=\"2\",stage=\"lb\",reason=\"lb_backend_down\"} 4",
            ]
        );
    }

    #[test]
    fn serves_the_published_text_over_http_1_0() {
        let server = MetricsServer::start("127.0.0.1:0").unwrap();
        server.publish("x 1\n".to_string());
        let get = |request: &str| {
            let mut s = TcpStream::connect(server.local_addr()).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.ends_with("\r\nContent-Length: 4\r\nConnection: close\r\n\r\nx 1\n"));
        assert!(get("GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404 "));
        assert!(get("POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405 "));
        // A request head that never ends is read up to the bound, then answered.
        let head = "GET /metrics HTTP/1.0\r\nX: ";
        let long = format!("{head}{}", "a".repeat(MAX_REQUEST - head.len()));
        assert!(get(&long).starts_with("HTTP/1.0 200 OK\r\n"));
    }
}
