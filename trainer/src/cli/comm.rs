//! `infinity comm`: the communicators' benchmark, and reading the ranks' flight records (what each
//! rank's last collectives were when its group failed: launcher/src/comm/flight.rs).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use infinity_launcher::comm::flight::{self, Dump, State};

#[derive(Subcommand, Debug)]
pub enum CommCommand {
    /// Ring all-reduce bus bandwidth beside raw loopback TCP, and rendezvous time.
    Bench(infinity_launcher::bench::CommBenchArgs),
    /// What the ranks' flight records (`flight-rankR.json`) say together: the collective a failed
    /// group stalled in, the ranks waiting in it, the ranks that never entered it.
    Flight(FlightArgs),
}

#[derive(Args, Debug)]
pub struct FlightArgs {
    /// Folders holding `flight-rankR.json` files: an attempt's log folder (`LOG_DIR/RUN_ID/attempt_K`),
    /// one per node where each node logged apart, or the `INFINITY_FLIGHT_DIR` of a torchrun or srun job.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

pub fn run(cmd: CommCommand) -> Result<ExitCode> {
    match cmd {
        CommCommand::Bench(a) => infinity_launcher::bench::run(&a).map(|_| ExitCode::SUCCESS),
        CommCommand::Flight(a) => flight_report(&a),
    }
}

fn flight_report(a: &FlightArgs) -> Result<ExitCode> {
    let mut dumps: Vec<Dump> = Vec::new();
    let mut seen = Vec::new();
    for dir in &a.dirs {
        let real = dir.canonicalize().with_context(|| format!("reading {}", dir.display()))?;
        if !real.is_dir() {
            bail!("{}: not a folder", dir.display());
        }
        if seen.contains(&real) {
            continue; // (one folder given twice)
        }
        seen.push(real);
        let (found, notes) = flight::read_dumps(dir);
        for n in notes {
            console!("warning: set aside: {n}");
        }
        for d in found {
            match dumps.iter().any(|k| k.rank == d.rank) {
                true => console!("warning: rank {}'s record is in two folders: the first one read is kept", d.rank),
                false => dumps.push(d),
            }
        }
    }
    if dumps.is_empty() {
        let dirs: Vec<String> = a.dirs.iter().map(|d| d.display().to_string()).collect();
        bail!(
            "no flight records (flight-rankR.json) in {}: a rank writes one when a collective of its fails, or when \
             `infinity launch` asks for it after a timeout",
            dirs.join(", ")
        );
    }
    dumps.sort_by_key(|d| d.rank);
    for d in &dumps {
        console!("{}", rank_line(d));
    }
    for line in flight::diagnose(&dumps) {
        console!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `rank 0 (host a): last completed #13 (all_reduce of 1 value); #14 (all_reduce of 1 value) failed after
/// 3 s; written because: …`.
fn rank_line(d: &Dump) -> String {
    let host = d.host.as_ref().map_or(String::new(), |h| format!(" (host {h})"));
    let done = d.entries.iter().rev().find(|e| e.state == State::Completed);
    let mut line = format!("rank {}{host}: ", d.rank);
    line += &match done {
        Some(e) => format!("last completed #{} ({})", e.seq, e.what()),
        None => "no collective completed".to_string(),
    };
    // the first one not completed (the one it was in), and how many more it had queued (NCCL)
    let mut open = d.entries.iter().filter(|e| e.state != State::Completed);
    if let Some(e) = open.next() {
        let how = match (e.state, d.backend.as_str()) {
            (State::Failed, _) => "failed after",
            (_, "nccl") => "enqueued, unfinished after",
            _ => "unfinished after",
        };
        line += &format!("; #{} ({}) {how} {:.0} s", e.seq, e.what(), e.seconds);
    }
    let more = open.count();
    if more > 0 {
        line += &format!("; {more} more after it not completed");
    }
    line + &format!("; written because: {}", d.reason)
}
