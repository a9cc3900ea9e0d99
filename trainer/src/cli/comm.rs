//! `infinity comm`: the communicators' benchmark, and reading the ranks' flight records (what each
//! rank's last collectives were when its group failed: launcher/src/comm/flight.rs).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use infinity_launcher::comm::flight::{self, Dump, State};

#[derive(Subcommand, Debug)]
pub enum CommCommand {
    /// Ring all-reduce bus bandwidth beside raw loopback TCP, and rendezvous time.
    Bench(infinity_launcher::bench::CommBenchArgs),
    /// What the ranks' flight records (`flight-rankR.json`) say together: the collective a failed
    /// group stalled in, the ranks waiting in it, the ranks that never entered it; and what the
    /// launcher saw of the processes of ranks that wrote none (`flight-unanswered-nodeN.json`).
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
    for line in flight_lines(&a.dirs)? {
        console!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `comm flight` prints for the folders `dirs`: notes on what was set aside, a line per rank's
/// record, the diagnosis, and what the launcher saw of the ranks that wrote none.
fn flight_lines(dirs: &[PathBuf]) -> Result<Vec<String>> {
    let (mut dumps, mut unanswered): (Vec<Dump>, Vec<flight::Unanswered>) = (Vec::new(), Vec::new());
    let (mut lines, mut seen) = (Vec::new(), Vec::new());
    // each (run id, attempt) the records come from, with a folder holding one (older records name none)
    let mut runs: Vec<((String, u32), &Path)> = Vec::new();
    for dir in dirs {
        let real = dir.canonicalize().with_context(|| format!("reading {}", dir.display()))?;
        if !real.is_dir() {
            bail!("{}: not a folder", dir.display());
        }
        if seen.contains(&real) {
            continue; // (one folder given twice)
        }
        seen.push(real);
        let (found, mut notes) = flight::read_dumps(dir);
        let (silent, more) = flight::read_unanswered(dir);
        notes.extend(more);
        unanswered.extend(silent);
        lines.extend(notes.into_iter().map(|n| format!("warning: set aside: {n}")));
        for d in found {
            if let (Some(run), Some(attempt)) = (&d.run_id, d.attempt) {
                if !runs.iter().any(|(r, _)| r.0 == *run && r.1 == attempt) {
                    runs.push(((run.clone(), attempt), dir));
                }
            }
            match dumps.iter().any(|k| k.rank == d.rank) {
                true => lines
                    .push(format!("warning: rank {}'s record is in two folders: the first one read is kept", d.rank)),
                false => dumps.push(d),
            }
        }
    }
    // (records of two attempts, or two runs, describe no one hang: their sequence numbers do not meet)
    if runs.len() > 1 {
        let each: Vec<String> =
            runs.iter().map(|((run, k), dir)| format!("run {run} attempt {k} ({})", dir.display())).collect();
        bail!(
            "the records are of {} runs or attempts: {}; give the folders of one attempt (LOG_DIR/RUN_ID/attempt_K \
             on each node)",
            runs.len(),
            each.join(", ")
        );
    }
    if dumps.is_empty() && unanswered.is_empty() {
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        // (records that were there but did not read: why, rather than that there were none)
        let set_aside: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("warning: set aside: ")).collect();
        if !set_aside.is_empty() {
            bail!("no readable flight records in {}: {}", dirs.join(", "), set_aside.join("; "));
        }
        bail!(
            "no flight records (flight-rankR.json) in {}: a rank writes one when a collective of its fails, or when \
             `infinity launch` asks for it after a timeout",
            dirs.join(", ")
        );
    }
    dumps.sort_by_key(|d| d.rank);
    lines.extend(dumps.iter().map(rank_line));
    lines.extend(flight::diagnose(&dumps));
    // (the first folder's word on a rank, as for its record; a rank with a record only where it was found
    // frozen: the launcher's report says the same)
    unanswered.sort_by_key(|u| u.rank);
    lines.extend(flight::unanswered_lines(&unanswered, &dumps));
    Ok(lines)
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

#[cfg(test)]
mod tests {
    use flight::{ProcState, Unanswered};

    use super::*;

    /// One node's folder with rank 0's record, the other's with its agent's word on rank 1, which
    /// wrote none (then one written once it was let go on): read together.
    #[test]
    fn records_and_the_ranks_that_wrote_none_are_read_together() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("node0"), tmp.path().join("node1"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let record = r#"{"rank": 0, "world": 2, "reason": "timed out", "unix_time": 0, "entries": [
            {"seq": 5, "op": "all_reduce", "values": 16, "state": "failed", "started_s": 3.0, "seconds": 2.0}]}"#;
        std::fs::write(a.join(flight::record_name(0)), record).unwrap();
        let unanswered = |rank, state| Unanswered {
            rank,
            pid: 77,
            host: "b".into(),
            state,
            culprit: None,
            kernel_wait: None,
            run_id: None,
            attempt: None,
            unix_time: 0,
        };
        // (rank 0 wrote its record after its agent looked: the record speaks for it)
        flight::write_unanswered(&b, 1, &[unanswered(0, ProcState::Sleeping), unanswered(1, ProcState::Stopped)]);
        let lines = flight_lines(&[a.clone(), b.clone(), a.clone()]).unwrap();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("rank 0: no collective completed; #5 (all_reduce of 16 values) failed"));
        assert!(lines[1].starts_with("collective #5 (all_reduce of 16 values): waited in by rank 0 (failed, 2 s)"));
        assert!(lines[2].starts_with("no flight record from rank 1: "), "{lines:#?}");
        assert!(lines[3].starts_with("rank 1 (pid 77 on b) wrote no flight record when asked: its process is stopped"));
        let e = flight_lines(&[tmp.path().to_path_buf()]).unwrap_err().to_string();
        assert!(e.starts_with("no flight records (flight-rankR.json) in "), "{e}");
        // a record that does not read: why, not that there is none
        let damaged = tmp.path().join("damaged");
        std::fs::create_dir(&damaged).unwrap();
        std::fs::write(damaged.join(flight::record_name(0)), "{").unwrap();
        let e = flight_lines(std::slice::from_ref(&damaged)).unwrap_err().to_string();
        assert!(e.starts_with("no readable flight records in ") && e.contains(&flight::record_name(0)), "{e}");

        // records of two attempts are not one hang's
        let attempt =
            |k: u32| record.replacen("\"rank\": 0,", &format!("\"rank\": 0, \"run_id\": \"r\", \"attempt\": {k},"), 1);
        std::fs::write(a.join(flight::record_name(0)), attempt(1)).unwrap();
        std::fs::write(b.join(flight::record_name(1)), attempt(2).replacen("\"rank\": 0", "\"rank\": 1", 1)).unwrap();
        let e = flight_lines(&[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(e.starts_with("the records are of 2 runs or attempts: run r attempt 1 ("), "{e}");
        std::fs::write(b.join(flight::record_name(1)), attempt(1).replacen("\"rank\": 0", "\"rank\": 1", 1)).unwrap();
        // rank 1 found stopped (SIGSTOP) wrote its record once let go on: the record is read, and the
        // agent's finding that it was stopped stays (as the launcher's report says it)
        let lines = flight_lines(&[a, b]).unwrap();
        let stopped = lines.iter().find(|l| l.starts_with("rank 1 (pid 77 on b) wrote no flight record when asked"));
        assert!(stopped.is_some_and(|l| l.contains("its process is stopped") && l.contains("its record came later")));
    }
}
