//! `failure-nodeN.json`: a failed attempt as a record for schedulers and dashboards, written into the
//! attempt's log folder (`LOG_DIR/RUN_ID/attempt_K/failure-nodeN.json`), beside the ranks' logs, one
//! file per node (a `--log-dir` shared by the nodes keeps every node's). The console says the same in
//! words.

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
    /// The node of the root cause, where it is known (a rank's, or node 0 for a store that stopped
    /// answering; not a lost agent's).
    root_cause_node: Option<usize>,
    /// Whether the root cause is one of this node's ranks (else another node's record details it, or
    /// none does: a lost agent writes none).
    root_cause_here: bool,
    /// This node's failed rank, if one failed.
    rank: Option<&'a RankFailure>,
    /// What the agent does next: `restart`, `stop: no restarts left` or `stop: permanent`.
    next: &'a str,
    unix_time: u64,
}

/// Write the record of a failed attempt into `dir` (the attempt's log folder); a failure to write it is
/// logged, never fatal: the console report stands.
pub(super) fn write(
    dir: &Path,
    attempt: u32,
    node: usize,
    root_cause: &str,
    root_cause_node: Option<usize>,
    rank: Option<&RankFailure>,
    next: &str,
) {
    let unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let root_cause_here = root_cause_node == Some(node) && rank.is_some() && !root_cause.starts_with("another node");
    let rec = Record { attempt, node, root_cause, root_cause_node, root_cause_here, rank, next, unix_time };
    let path = dir.join(format!("failure-node{node}.json"));
    let text = serde_json::to_string_pretty(&rec).expect("a record of strings and numbers");
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text + "\n")) {
        tracing::warn!("writing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_writes_its_own_record_into_a_shared_log_dir() {
        let dir = tempfile::tempdir().unwrap();
        let status = {
            use std::os::unix::process::ExitStatusExt;
            ExitStatus::from_raw(3 << 8)
        };
        let rank = RankFailure::new(1, 42, &status, 2.5, vec!["boom".into()]);
        write(dir.path(), 0, 0, "rank 1 (node 0, pid 42) exited with exit code 3", Some(0), Some(&rank), "restart");
        write(dir.path(), 0, 1, "another node: rank 1 (node 0, …)", Some(0), None, "restart");
        let read = |n: usize| -> serde_json::Value {
            let text = std::fs::read_to_string(dir.path().join(format!("failure-node{n}.json"))).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let (node0, node1) = (read(0), read(1));
        assert_eq!((node0["node"].as_u64(), node0["root_cause_here"].as_bool()), (Some(0), Some(true)));
        assert_eq!(node0["rank"]["exit_code"].as_i64(), Some(3));
        assert_eq!((node1["node"].as_u64(), node1["root_cause_here"].as_bool()), (Some(1), Some(false)));
        assert_eq!(node1["root_cause_node"].as_u64(), Some(0));
        assert!(!dir.path().join("failure.json").exists());

        // no rank failed here: node 1 lost node 0's store (named); a lost agent's node is unknown. Neither
        // record says the root cause is here (both did: `root_cause_here: true` with `rank: null`)
        write(
            dir.path(),
            1,
            1,
            "the store at h:1 (node 0's agent) stopped answering for 10 s",
            Some(0),
            None,
            "restart",
        );
        write(
            dir.path(),
            1,
            0,
            "the ranks checkpointed and stopped … an agent or its node was lost",
            None,
            None,
            "restart",
        );
        let (node0, node1) = (read(0), read(1));
        assert_eq!((node1["root_cause_node"].as_u64(), node1["root_cause_here"].as_bool()), (Some(0), Some(false)));
        assert!(node0["root_cause_node"].is_null() && node0["rank"].is_null(), "{node0}");
        assert_eq!(node0["root_cause_here"].as_bool(), Some(false));
    }
}
