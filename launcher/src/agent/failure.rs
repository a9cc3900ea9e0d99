//! `failure-nodeN.json`: a failed attempt as a record for schedulers and dashboards, written into the
//! attempt's log folder (`LOG_DIR/RUN_ID/attempt_K/failure-nodeN.json`), beside the ranks' logs, one
//! file per node (a `--log-dir` shared by the nodes keeps every node's). The console says the same in
//! words. Also how a root cause is worded when a rank timed out waiting for a silent one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use serde::Serialize;

use crate::comm::{flight, CommError, EXIT_COMM_TIMEOUT};

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

    /// For a rank whose collective timed out (exit code 86) waiting for another rank, as its last lines
    /// say: that rank and its node (`nproc` ranks a node). The silent rank (hung, stopped, or its node
    /// frozen) is the root cause, not this one, which only noticed.
    pub fn silent_peer(&self, nproc: usize) -> Option<(usize, usize)> {
        if self.exit_code != Some(EXIT_COMM_TIMEOUT) {
            return None;
        }
        let peer = self.last_lines.iter().rev().find_map(|l| CommError::timed_out_peer(l))?;
        (peer != self.rank).then(|| (peer, peer / nproc.max(1)))
    }

    /// For a rank that failed because another closed its connection, as its last lines say: that rank
    /// and its node (`nproc` ranks a node). Its node's own report names why, unless the node reports
    /// nothing: its agent killed with its ranks, or the node lost ([`blame_closed_peer`]).
    pub fn closed_peer(&self, nproc: usize) -> Option<(usize, usize)> {
        let peer = self.last_lines.iter().rev().find_map(|l| CommError::closed_peer(l))?;
        (peer != self.rank).then(|| (peer, peer / nproc.max(1)))
    }
}

/// The root cause `report` (of a rank whose peer closed its connection) blaming that peer, `peer` on
/// `node`, whose node posted no failure of its own: a node that lost its agent with its ranks (killed,
/// rebooted, its pod evicted) says nothing, and the ranks that noticed are not the ones to drain.
pub(super) fn blame_closed_peer(peer: usize, node: usize, report: &str) -> String {
    format!(
        "rank {peer} (node {node}) closed its connections and node {node} reported no failure (its agent killed \
         with its ranks, or the node lost?): {report}"
    )
}

/// How a report that blames a silent rank reads, after that rank and its node: `rank 1 (node 1) stopped
/// answering (rank 0 timed out waiting for it): rank 0 (node 0, …) exited with exit code 86 …`.
const STOPPED_ANSWERING: &str = "stopped answering (rank";

/// The root cause `report` (of rank `waiter`'s timeout) blaming the silent rank at the end of `chain` on
/// `node`, in a group of `world` ranks: `chain` is the rank `waiter` waited for, then each rank that one
/// waited for in turn where the agent followed them (ranks of its node that timed out too). With more
/// than two ranks, the last may itself be waiting: the ranks after a hung one in the ring each time out
/// on their own predecessor within moments, and whichever report is posted first names a rank that may
/// be alive, so the report says so.
pub(super) fn blame_silent_peer(chain: &[usize], node: usize, waiter: usize, world: usize, report: &str) -> String {
    let (peer, via) = chain.split_last().expect("the rank waited for");
    let maybe = if world > 2 { ", or one it waits for," } else { "" };
    let waits: String = via.iter().map(|r| format!(" rank {r}, which waited for")).collect();
    format!("rank {peer} (node {node}){maybe} {STOPPED_ANSWERING} {waiter} timed out waiting for{waits} it): {report}")
}

/// A root cause that blames a silent rank (`node` its node), set right by the flight records in `dir`
/// (the attempt's log folder, `nproc` ranks a node): in a group of more than two the rank a timeout
/// names may be waiting itself, while the records name the ranks that never entered the collective the
/// others wait in. When the folder holds every rank's record and those ranks are all on one node, the
/// report says so and that node is the root cause's (`root_cause_node`, which a drain reads);
/// otherwise the report stands.
pub(super) fn by_flight_records(
    dir: &Path,
    report: String,
    node: Option<usize>,
    nproc: usize,
) -> (String, Option<usize>) {
    if !report.contains(STOPPED_ANSWERING) {
        return (report, node);
    }
    // (only from every rank's record: a node that sees some would move the root cause where another,
    // seeing others, would not)
    let dumps = flight::read_dumps(dir).0;
    if dumps.is_empty() || dumps.iter().any(|d| d.world != dumps.len()) {
        return (report, node);
    }
    let absent = flight::never_entered(&dumps);
    let nodes: std::collections::BTreeSet<usize> = absent.iter().map(|r| r / nproc.max(1)).collect();
    let (Some(&n), 1) = (nodes.first(), nodes.len()) else { return (report, node) };
    let ranks: Vec<String> = absent.iter().map(usize::to_string).collect();
    let ranks = format!("{} {}", if absent.len() == 1 { "rank" } else { "ranks" }, ranks.join(", "));
    let said = format!("{report}\n  (the flight records: {ranks} (node {n}) {NEVER_ENTERED})");
    (said, Some(n))
}

/// How [`by_flight_records`] says which ranks the others wait for.
const NEVER_ENTERED: &str = "never entered the collective the others wait in: look there first";

#[derive(Debug, Serialize)]
struct Record<'a> {
    attempt: u32,
    node: usize,
    /// This node's machine (`gethostname`; absent where it cannot be read): the one to look at or
    /// drain when the record says the failure was here.
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    /// The group's root cause in words (the first failure posted by any node).
    root_cause: &'a str,
    /// The node of the root cause, where it is known (a rank's, or node 0 for a store that stopped
    /// answering; not a lost agent's).
    root_cause_node: Option<usize>,
    /// Whether the root cause is one of this node's ranks (else another node's record details it, or
    /// none does: a lost agent writes none); a rank that stopped answering counts for its node.
    root_cause_here: bool,
    /// This node's failed rank, if one failed.
    rank: Option<&'a RankFailure>,
    /// What the agent does next: `restart`, `stop: no restarts left`, `stop: permanent`, `stop: a node
    /// was signalled`, `stop: store host lost` or, in the folder of a restart that never met, `stop: the
    /// restart's rendezvous failed`.
    next: &'a str,
    /// What the ranks' flight records (`flight-rankR.json` beside this file) say together: the
    /// collective the ranks waited in and the ranks that never entered it (`comm::flight::diagnose`).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    collectives: &'a [String],
    unix_time: u64,
}

/// Write the record of a failed attempt into `dir` (the attempt's log folder); a failure to write it is
/// logged, never fatal: the console report stands.
pub(super) fn write(
    dir: &Path,
    (attempt, node): (u32, usize),
    (root_cause, root_cause_node): (&str, Option<usize>),
    rank: Option<&RankFailure>,
    next: &str,
    collectives: &[String],
) {
    let unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let root_cause_here = is_here(root_cause, root_cause_node, node, rank.is_some());
    let host = crate::env::hostname();
    let rec = Record {
        attempt,
        node,
        host,
        root_cause,
        root_cause_node,
        root_cause_here,
        rank,
        next,
        collectives,
        unix_time,
    };
    let text = serde_json::to_string_pretty(&rec).expect("a record of strings and numbers");
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| write_new(dir, node, &(text + "\n"))) {
        console_err!("[launch] warning: writing failure-node{node}.json into {}: {e}", dir.display());
    }
}

/// How long the agent waits for its live ranks' flight records once it asked for them.
const FLIGHT_WAIT: std::time::Duration = flight::REQUEST_POLL.saturating_mul(3);

/// Whether a failure `report` is a collective's timeout, after which the ranks' flight records are
/// worth asking for (a rank hung outside the collectives writes one only when asked). Its first line
/// says how the rank exited; the rank's own last lines, which may say anything, follow it.
pub(super) fn timed_out(report: &str) -> bool {
    report.lines().next().is_some_and(|l| l.contains(&format!("exit code {EXIT_COMM_TIMEOUT} ")))
}

/// Ask the ranks that write their flight records into `dir` (the attempt's log folder) to write them
/// now ([`flight::REQUEST`]), and wait up to [`FLIGHT_WAIT`] for those of `live` (global ranks and
/// their processes, on node `node`) to appear. A rank frozen, or not yet in its group, writes none: the
/// wait then runs out, and what the kernel says of its processes is written beside the records
/// ([`flight::Unanswered`], of attempt `attempt` of run `run_id`).
pub(super) async fn ask_for_flight_records(
    dir: &Path,
    node: usize,
    live: &[(usize, i32)],
    (run_id, attempt): (&str, u32),
) {
    if let Err(e) = std::fs::write(dir.join(flight::REQUEST), b"") {
        console_err!("[launch] warning: asking the ranks for their flight records in {}: {e}", dir.display());
        return;
    }
    let deadline = tokio::time::Instant::now() + FLIGHT_WAIT;
    let written = |r: usize| dir.join(flight::record_name(r)).exists();
    while !live.iter().all(|&(r, _)| written(r)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(flight::REQUEST_POLL / 4).await;
    }
    // (each look takes 0.2 s: the ranks' side by side, off the agent's event loop)
    let looks: Vec<_> = live
        .iter()
        .filter(|(r, _)| !written(*r))
        .map(|&(r, pid)| {
            let run_id = run_id.to_string();
            tokio::task::spawn_blocking(move || flight::Unanswered::look(r, pid, (&run_id, attempt)))
        })
        .collect();
    let mut silent = Vec::new();
    for look in looks {
        silent.extend(look.await.ok());
    }
    if !silent.is_empty() {
        flight::write_unanswered(dir, node, &silent);
    }
}

/// What the flight records in `dir` (the attempt's log folder: the ranks' `flight-rankR.json`, written
/// when a collective of theirs failed) say together, a line per finding, then what the agents saw of
/// the ranks that wrote none when asked (one that wrote its record later, stopping, is left out, but
/// for a process found stopped or in the kernel: it wrote only once let go on, and its state is the
/// finding); none without either. `local`: this node's failed rank, whose exit with a code of its own
/// (not a collective's timeout) explains that it wrote no record.
pub(super) fn collectives(dir: &Path, local: Option<&RankFailure>) -> Vec<String> {
    let (dumps, mut notes) = flight::read_dumps(dir);
    let (unanswered, more) = flight::read_unanswered(dir);
    notes.extend(more);
    let own_exit = |f: &&RankFailure| f.exit_code.is_some_and(|c| c != EXIT_COMM_TIMEOUT);
    let exited: Vec<usize> = local.filter(own_exit).map(|f| f.rank).into_iter().collect();
    let mut lines = flight::diagnose_beside(&dumps, &exited);
    lines.extend(flight::unanswered_lines(&unanswered, &dumps));
    lines.extend(notes.into_iter().map(|n| format!("set aside: {n}")));
    lines
}

/// Whether the root cause is one of `node`'s ranks: its own failed rank (`failed_here`, a report not
/// posted by another node), or a rank another node's rank timed out waiting for.
fn is_here(root_cause: &str, root_cause_node: Option<usize>, node: usize, failed_here: bool) -> bool {
    let first = root_cause.strip_prefix("another node: ").unwrap_or(root_cause);
    let flight = format!("(node {node}) {NEVER_ENTERED}");
    let silent = (first.starts_with("rank ")
        && [format!("(node {node}) {STOPPED_ANSWERING}"), format!("(node {node}), or one it waits for,")]
            .iter()
            .any(|s| first.contains(s.as_str())))
        || first.contains(&flight);
    root_cause_node == Some(node) && ((failed_here && !root_cause.starts_with("another node")) || silent)
}

/// Writes `text` as `failure-nodeN.json` in `dir`, or, when an earlier session of the same run id (a
/// requeued job, the default run id `run` of a group outside SLURM) left one for this attempt, as
/// `failure-nodeN.2.json`, `.3`, …: the first free name, so no record is ever overwritten and the
/// highest number is the newest.
fn write_new(dir: &Path, node: usize, text: &str) -> std::io::Result<PathBuf> {
    for n in 1.. {
        let name = match n {
            1 => format!("failure-node{node}.json"),
            n => format!("failure-node{node}.{n}.json"),
        };
        let path = dir.join(name);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => return f.write_all(text.as_bytes()).map(|()| path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("some name is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rank found stopped when asked, whose record came once the agent let it go on, is still named
    /// as stopped; a rank merely slow to write is left out once its record is there.
    #[test]
    fn a_rank_found_stopped_stays_named_though_its_record_came_later() {
        let dir = tempfile::tempdir().unwrap();
        for r in [1, 2] {
            let record = format!(r#"{{"rank": {r}, "world": 3, "reason": "asked", "unix_time": 0, "entries": []}}"#);
            std::fs::write(dir.path().join(flight::record_name(r)), record).unwrap();
        }
        let seen = |rank: usize, state: flight::ProcState| flight::Unanswered {
            rank,
            pid: 40 + rank as i32,
            host: "h".into(),
            state,
            culprit: None,
            kernel_wait: None,
            run_id: None,
            attempt: None,
            unix_time: 0,
        };
        flight::write_unanswered(
            dir.path(),
            0,
            &[seen(1, flight::ProcState::Stopped), seen(2, flight::ProcState::Running)],
        );
        let lines = collectives(dir.path(), None);
        let stopped: Vec<&String> = lines.iter().filter(|l| l.contains("wrote no flight record when asked")).collect();
        assert_eq!(stopped.len(), 1, "{lines:?}");
        assert!(stopped[0].starts_with("rank 1 (pid 41 on h)") && stopped[0].contains("`kill -CONT 41`"), "{lines:?}");
        assert!(stopped[0].contains("its record came later"), "{lines:?}");
    }

    #[test]
    fn each_node_writes_its_own_record_into_a_shared_log_dir() {
        let dir = tempfile::tempdir().unwrap();
        let status = {
            use std::os::unix::process::ExitStatusExt;
            ExitStatus::from_raw(3 << 8)
        };
        let rank = RankFailure::new(1, 42, &status, 2.5, vec!["boom".into()]);
        let cause = "rank 1 (node 0, pid 42) exited with exit code 3";
        write(dir.path(), (0, 0), (cause, Some(0)), Some(&rank), "restart", &[]);
        write(dir.path(), (0, 1), ("another node: rank 1 (node 0, …)", Some(0)), None, "restart", &[]);
        let read_in = |dir: &Path, n: usize| -> serde_json::Value {
            let text = std::fs::read_to_string(dir.join(format!("failure-node{n}.json"))).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let (node0, node1) = (read_in(dir.path(), 0), read_in(dir.path(), 1));
        assert_eq!((node0["node"].as_u64(), node0["root_cause_here"].as_bool()), (Some(0), Some(true)));
        assert_eq!(node0["rank"]["exit_code"].as_i64(), Some(3));
        assert_eq!((node1["node"].as_u64(), node1["root_cause_here"].as_bool()), (Some(1), Some(false)));
        assert_eq!(node1["root_cause_node"].as_u64(), Some(0));
        assert!(!dir.path().join("failure.json").exists());

        // no rank failed here: node 1 lost node 0's store (named); a lost agent's node is unknown. Neither
        // record says the root cause is here (both did: `root_cause_here: true` with `rank: null`)
        let attempt_1 = dir.path().join("attempt_1");
        let cause = "the store at h:1 (node 0's agent) stopped answering for 10 s";
        write(&attempt_1, (1, 1), (cause, Some(0)), None, "restart", &[]);
        let cause = "the ranks checkpointed and stopped … an agent or its node was lost";
        write(&attempt_1, (1, 0), (cause, None), None, "restart", &[]);
        let (node0, node1) = (read_in(&attempt_1, 0), read_in(&attempt_1, 1));
        assert_eq!((node1["root_cause_node"].as_u64(), node1["root_cause_here"].as_bool()), (Some(0), Some(false)));
        assert!(node0["root_cause_node"].is_null() && node0["rank"].is_null(), "{node0}");
        assert_eq!(node0["root_cause_here"].as_bool(), Some(false));
    }

    /// Of 4 ranks on 2 nodes, rank 1 timed out waiting for rank 0, which waits itself: the flight records
    /// name rank 3 (node 1) as the one that never entered the collective, and the records say node 1.
    #[test]
    fn the_flight_records_name_the_node_of_a_silent_rank_that_a_timeout_did_not() {
        // the records of 4 ranks: those in `absent` completed #10 and never entered #11
        let records = |absent: &[usize]| {
            let dir = tempfile::tempdir().unwrap();
            let entry = |seq: u64, state: &str| {
                let fields = r#""op": "all_reduce", "values": 8, "started_s": 0, "seconds": 9"#;
                format!(r#"{{"seq": {seq}, "state": "{state}", {fields}}}"#)
            };
            for r in 0..4 {
                let entries = match absent.contains(&r) {
                    true => entry(10, "completed"),
                    false => format!("{}, {}", entry(10, "completed"), entry(11, "failed")),
                };
                let head = format!(r#""rank": {r}, "world": 4, "reason": "failed", "unix_time": 0"#);
                let record = format!(r#"{{{head}, "entries": [{entries}]}}"#);
                std::fs::write(dir.path().join(flight::record_name(r)), record).unwrap();
            }
            dir
        };
        let dir = records(&[3]);
        let timed_out = blame_silent_peer(&[0], 0, 1, 4, "rank 1 (node 0, pid 7) exited with exit code 86");
        let (report, node) = by_flight_records(dir.path(), timed_out.clone(), Some(0), 2);
        assert_eq!(node, Some(1));
        let said = "\n  (the flight records: rank 3 (node 1) never entered the collective the others wait in: look \
                    there first)";
        assert_eq!(report, format!("{timed_out}{said}"));
        for n in [0, 1] {
            write(dir.path(), (0, n), (&report, node), None, "restart", &[]);
            let text = std::fs::read_to_string(dir.path().join(format!("failure-node{n}.json"))).unwrap();
            let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!((rec["root_cause_node"].as_u64(), rec["root_cause_here"].as_bool()), (Some(1), Some(n == 1)));
        }
        // a report of another kind, or records naming ranks on both nodes, stand as they are
        let other = "rank 1 (node 0, pid 7) exited with exit code 3".to_string();
        assert_eq!(by_flight_records(dir.path(), other.clone(), Some(0), 2), (other, Some(0)));
        let both = records(&[1, 3]);
        assert_eq!(by_flight_records(both.path(), timed_out.clone(), Some(0), 2), (timed_out, Some(0)));
    }

    /// A second session of the same run id failing the same attempt writes beside the first record.
    #[test]
    fn a_record_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), (0, 1), ("the first session's", Some(1)), None, "restart", &[]);
        write(dir.path(), (0, 1), ("the second session's", Some(1)), None, "restart", &[]);
        write(dir.path(), (0, 1), ("the third session's", Some(1)), None, "restart", &[]);
        let cause = |name: &str| -> String {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["root_cause"].as_str().unwrap().to_string()
        };
        assert_eq!(cause("failure-node1.json"), "the first session's");
        assert_eq!(cause("failure-node1.2.json"), "the second session's");
        assert_eq!(cause("failure-node1.3.json"), "the third session's");
    }

    /// Rank 0 timed out waiting for rank 3 (node 1 of 2-rank nodes): rank 3 is blamed, its node holds
    /// the root cause (on node 1, reported by node 0), node 0 does not.
    #[test]
    fn a_rank_that_timed_out_blames_the_rank_it_waited_for() {
        use std::os::unix::process::ExitStatusExt;
        let line = |peer| format!("error: {}; aborting", CommError::Timeout { op: "broadcast", peer, secs: 30.0 });
        let timed_out = |lines| RankFailure::new(0, 7, &ExitStatus::from_raw(86 << 8), 31.0, lines);
        assert_eq!(timed_out(vec![line(3), "bye".into()]).silent_peer(2), Some((3, 1)));
        assert_eq!(timed_out(vec!["no such line".into()]).silent_peer(2), None);
        let crashed = RankFailure::new(0, 7, &ExitStatus::from_raw(1 << 8), 1.0, vec![line(3)]);
        assert_eq!(crashed.silent_peer(2), None, "only a timed-out collective (exit code 86) blames a peer");

        let report = blame_silent_peer(&[3], 1, 0, 2, "rank 0 (node 0, pid 7) exited with exit code 86");
        assert!(report.starts_with("rank 3 (node 1) stopped answering (rank 0 timed out waiting for it): rank 0"));
        // with more ranks the one named may only be waiting itself
        let four = blame_silent_peer(&[3], 1, 0, 4, "rank 0 …");
        assert!(
            four.starts_with("rank 3 (node 1), or one it waits for, stopped answering (rank 0 timed out"),
            "{four}"
        );
        assert!(is_here(&four, Some(1), 1, false) && !is_here(&four, Some(1), 0, true));
        // followed along the node's own ranks: each wait named
        let followed = blame_silent_peer(&[0, 5, 3], 1, 1, 8, "rank 1 …");
        let want = "rank 3 (node 1), or one it waits for, stopped answering (rank 1 timed out waiting for rank 0, \
                    which waited for rank 5, which waited for it): rank 1 …";
        assert_eq!(followed, want);
        assert!(!is_here(&report, Some(1), 0, true));
        assert!(is_here(&format!("another node: {report}"), Some(1), 1, false));
        assert!(!is_here(&format!("another node: {report}"), Some(1), 0, false));
    }

    /// The flight records are asked for after a collective's timeout, not after a rank whose own last
    /// lines quote one.
    #[test]
    fn a_timeout_is_read_from_how_the_rank_exited_not_from_its_lines() {
        let timeout = format!("rank 0 (node 0, pid 7) exited with exit code {EXIT_COMM_TIMEOUT} after 31.0 s");
        assert!(timed_out(&format!("{timeout}; its last lines:\n    error: …")));
        assert!(timed_out(&blame_silent_peer(&[3], 1, 0, 2, &timeout)));
        let quoting =
            format!("rank 0 (node 0, pid 7) exited with exit code 1 after 2.0 s; its last lines:\n    {timeout}");
        assert!(!timed_out(&quoting));
    }
}
