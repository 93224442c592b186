//! The nf scenario runner: `nf-bench list`, `nf-bench SCENARIO [--quick] [--json]`, and
//! `nf-bench summary [FILE]` (a run's JSON lines as one Markdown table of every target).
//!
//! Each scenario builds deterministic synthetic traffic, warms up, then measures ours and the
//! peer alternately in the same process and prints one JSON object per line (the contract is
//! `BENCH.md` in the shared design folder). Without `--json` a readable summary goes to stderr
//! as well.

mod harness;
mod hugealloc;
mod lb_setup;
mod nat_setup;
mod pipeline_setup;
mod replay;
mod scenarios;
mod summary;
mod tunnel_frames;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("summary") {
        return summarise(args.get(1));
    }
    let opts = match harness::Opts::parse(&args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("nf-bench: {msg}\n\n{}", harness::USAGE);
            return ExitCode::from(2);
        }
    };
    match opts.scenario.as_str() {
        "list" => {
            for s in scenarios::ALL {
                harness::emit(&format!("{:<20} {}", s.name, s.about));
            }
            ExitCode::SUCCESS
        }
        "all" => {
            for s in scenarios::ALL {
                (s.run)(&opts);
            }
            ExitCode::SUCCESS
        }
        name => match scenarios::ALL.iter().find(|s| s.name == name) {
            Some(s) => {
                (s.run)(&opts);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("nf-bench: unknown scenario {name:?}; try `nf-bench list`");
                ExitCode::from(2)
            }
        },
    }
}

/// `nf-bench summary [FILE]`: FILE's JSON lines (standard input without one) as a table.
fn summarise(file: Option<&String>) -> ExitCode {
    use std::io::Read;
    let input = match file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}")),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map(|_| s)
                .map_err(|e| format!("stdin: {e}"))
        }
    };
    match input.and_then(|i| summary::table(&i)) {
        Ok(t) => {
            harness::emit(t.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nf-bench summary: {e}");
            ExitCode::from(2)
        }
    }
}
