//! `failure.json`: a failed attempt as a record for schedulers and dashboards, written into the
//! attempt's log folder (`LOG_DIR/RUN_ID/attempt_K/failure.json`), beside the ranks' logs. The console
//! says the same in words.

use std::path::Path;
use std::process::ExitStatus;

use serde::Serialize;

/// How one of this node's ranks failed.
#[derive(Clone, Debug, Serialize)]
pub(super) struct RankFailure {
    pub rank: usize,
    pub pid: i32,
    /// The exit code, or the signal that ended it (one of the two).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub seconds: f64,
    pub last_lines: Vec<String>,
}

impl RankFailure {
    pub fn new(rank: usize, pid: i32, status: &ExitStatus, seconds: f64, last_lines: Vec<String>) -> RankFailure {
        use std::os::unix::process::ExitStatusExt;
        RankFailure { rank, pid, exit_code: status.code(), signal: status.signal(), seconds, last_lines }
    }
}

#[derive(Debug, Serialize)]
struct Record<'a> {
    attempt: u32,
    node: usize,
    /// The group's root cause in words (the first failure posted by any node).
    root_cause: &'a str,
    /// Whether the root cause is one of this node's ranks (else another node's record details it).
    root_cause_here: bool,
    /// This node's failed rank, if one failed.
    rank: Option<&'a RankFailure>,
    /// What the agent does next: `restart`, `stop: no restarts left` or `stop: permanent`.
    next: &'a str,
    unix_time: u64,
}

/// Write the record of a failed attempt into `dir` (the attempt's log folder); a failure to write it is
/// logged, never fatal: the console report stands.
pub(super) fn write(dir: &Path, attempt: u32, node: usize, root_cause: &str, rank: Option<&RankFailure>, next: &str) {
    let unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let root_cause_here = !root_cause.starts_with("another node");
    let rec = Record { attempt, node, root_cause, root_cause_here, rank, next, unix_time };
    let path = dir.join("failure.json");
    let text = serde_json::to_string_pretty(&rec).expect("a record of strings and numbers");
    if let Err(e) = std::fs::write(&path, text + "\n") {
        tracing::warn!("writing {}: {e}", path.display());
    }
}
