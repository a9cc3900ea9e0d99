//! The flight recorder: every communicator keeps its last collectives (sequence number, op, size, what
//! for, when it started, whether it finished) and writes them as `flight-rankR.json` when one fails,
//! into the folder `INFINITY_FLIGHT_DIR` names (`infinity launch` sets it to the attempt's log folder).
//! Read together ([`diagnose`]), the ranks' records say what a timeout alone cannot: which rank never
//! entered the collective the others waited in, and whether the ranks called different collectives
//! (code that took another path on one rank), as PyTorch's flight recorder does for NCCL.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

mod diagnose;
mod files;
mod process;
pub use diagnose::{diagnose, diagnose_beside, never_entered, read_dumps};
pub use process::{
    look_at_group, read_unanswered, unanswered_lines, unanswered_name, write_unanswered, ProcState, Process, Seen,
    Unanswered,
};

/// The environment variable naming the folder the records are written into (none: not written).
pub const FLIGHT_DIR: &str = "INFINITY_FLIGHT_DIR";

/// How many collectives a record keeps (the last ones): a step makes a few dozen.
const CAPACITY: usize = 1024;

/// The file in the records' folder that asks every rank to write its record now: `infinity launch`
/// makes it after a collective timed out (exit code 86), before stopping the other ranks, so that a
/// rank busy outside the collectives (which no timeout of its own reaches) tells where it got to too.
pub const REQUEST: &str = "flight-records-wanted";

/// How often a rank looks for [`REQUEST`] (a file system call a second on the records' folder).
pub const REQUEST_POLL: Duration = Duration::from_secs(1);

/// Where a collective got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Called (on the ring) or enqueued on the stream (NCCL: the GPU may not have reached it) and not
    /// finished.
    Started,
    Completed,
    Failed,
}

/// One collective of one rank.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// The rank's count of collectives, from 0: the same collective has the same number on every rank.
    pub seq: u64,
    pub op: String,
    /// The count the collective was called with: the buffer's values (all-reduce, broadcast), per rank
    /// (all-gather's send, reduce-scatter's receive).
    pub values: usize,
    pub state: State,
    /// Seconds since the communicator was made, when the call started, and how long it took (or had
    /// taken when the record was written). NCCL's start is the enqueue, and its end when the watchdog
    /// saw the collective done (within 20 ms).
    pub started_s: f64,
    pub seconds: f64,
    /// What the collective was for, as its caller said (`gradients`, `checkpoint barrier`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The training step under way, as the caller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
}

impl Entry {
    /// `gradients: all_reduce of 1024 values, step 12`.
    pub fn what(&self) -> String {
        let tag = self.tag.as_ref().map_or(String::new(), |t| format!("{t}: "));
        let step = self.step.map_or(String::new(), |s| format!(", step {s}"));
        let plural = if self.values == 1 { "" } else { "s" };
        format!("{tag}{} of {} value{plural}{step}", self.op, self.values)
    }
}

/// A rank's record, as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dump {
    pub rank: usize,
    pub world: usize,
    /// `ring` or `nccl` (NCCL's unfinished collectives are the enqueued ones).
    #[serde(default)]
    pub backend: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The launcher's run id and attempt (`infinity launch`; absent under other launchers): records of
    /// other runs or attempts in one folder are not read together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Why it was written (the failed collective's error, or the launcher's request).
    pub reason: String,
    pub unix_time: u64,
    /// Oldest first.
    pub entries: Vec<Entry>,
}

struct Inner {
    next_seq: u64,
    /// What the next collective is for ([`FlightRecorder::tag_next`]), and the step under way.
    next_tag: Option<&'static str>,
    step: Option<u64>,
    entries: VecDeque<(Entry, Instant)>,
    dumped: bool,
}

/// A rank's recorder, shared by its communicator and (NCCL) the watchdog thread: clones are one.
#[derive(Clone)]
pub struct FlightRecorder(Arc<Shared>);

struct Shared {
    rank: usize,
    world: usize,
    backend: &'static str,
    dir: Mutex<Option<PathBuf>>,
    born: Instant,
    inner: Mutex<Inner>,
}

fn unpoisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FlightRecorder {
    /// A recorder of `backend`'s collectives that writes into `dir` (none: keeps the record in memory
    /// only) when a collective fails. [`FlightRecorder::answer_requests`] makes it write when asked too.
    pub fn new(rank: usize, world: usize, backend: &'static str, dir: Option<PathBuf>) -> FlightRecorder {
        let entries = VecDeque::with_capacity(CAPACITY);
        let inner = Mutex::new(Inner { next_seq: 0, next_tag: None, step: None, entries, dumped: false });
        let shared = Shared { rank, world, backend, dir: Mutex::new(dir), born: Instant::now(), inner };
        FlightRecorder(Arc::new(shared))
    }

    /// A recorder that writes into the folder [`FLIGHT_DIR`] names, if set.
    pub fn from_env(rank: usize, world: usize, backend: &'static str) -> FlightRecorder {
        let dir = std::env::var_os(FLIGHT_DIR).filter(|d| !d.is_empty()).map(PathBuf::from);
        FlightRecorder::new(rank, world, backend, dir)
    }

    /// Write the record when [`REQUEST`] appears in its folder, looked for on a thread of its own every
    /// [`REQUEST_POLL`] (the ring; NCCL's watchdog looks itself, after marking what finished). The
    /// thread ends with the recorder.
    pub fn answer_requests(&self) {
        let weak = Arc::downgrade(&self.0);
        let _ = std::thread::Builder::new().name(format!("flight-{}", self.0.rank)).spawn(move || loop {
            std::thread::sleep(REQUEST_POLL);
            let Some(shared) = weak.upgrade() else { return };
            let flight = FlightRecorder(shared);
            if flight.requested() {
                flight.dump(ASKED);
                return;
            }
        });
    }

    /// Whether the launcher asks for the record ([`REQUEST`]) and it was not written yet.
    pub fn requested(&self) -> bool {
        !self.lock().dumped && self.dir().is_some_and(|d| d.join(REQUEST).exists())
    }

    /// Write the record into `dir` from now on.
    pub fn set_dir(&self, dir: PathBuf) {
        *unpoisoned(&self.0.dir) = Some(dir);
    }

    fn dir(&self) -> Option<PathBuf> {
        unpoisoned(&self.0.dir).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        unpoisoned(&self.0.inner)
    }

    /// A collective `op` of `values` values starts: its sequence number.
    pub fn begin(&self, op: &str, values: usize) -> u64 {
        let now = Instant::now();
        let mut g = self.lock();
        let seq = g.next_seq;
        g.next_seq += 1;
        if g.entries.len() == CAPACITY {
            g.entries.pop_front();
        }
        let started_s = now.duration_since(self.0.born).as_secs_f64();
        let (tag, step) = (g.next_tag.take().map(str::to_string), g.step);
        let (op, state) = (op.to_string(), State::Started);
        let entry = Entry { seq, op, values, state, started_s, seconds: 0.0, tag, step };
        g.entries.push_back((entry, now));
        seq
    }

    /// The next collective is for `tag` (`gradients`, `checkpoint barrier`): the record says so.
    pub fn tag_next(&self, tag: &'static str) {
        self.lock().next_tag = Some(tag);
    }

    /// The tag given to the next collective, taken back (a host collective that runs as several, one
    /// per chunk, gives it to each).
    pub fn take_tag(&self) -> Option<&'static str> {
        self.lock().next_tag.take()
    }

    /// The collectives from now on are of training step `step`.
    pub fn at_step(&self, step: u64) {
        self.lock().step = Some(step);
    }

    /// Collective `seq` finished (`ok`) or failed.
    pub fn end(&self, seq: u64, ok: bool) {
        let mut g = self.lock();
        if let Some((e, at)) = g.entries.iter_mut().rev().find(|(e, _)| e.seq == seq) {
            e.state = if ok { State::Completed } else { State::Failed };
            e.seconds = at.elapsed().as_secs_f64();
        }
    }

    /// Record `call`, a collective `op` of `values` values, and write the record if it fails.
    pub fn record<T, E: std::fmt::Display>(
        &self,
        op: &str,
        values: usize,
        call: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let seq = self.begin(op, values);
        let r = call();
        self.end(seq, r.is_ok());
        if let Err(e) = &r {
            self.dump_saying(&e.to_string());
        }
        r
    }

    /// The record as it stands.
    pub fn snapshot(&self, reason: &str) -> Dump {
        let g = self.lock();
        let entries = g
            .entries
            .iter()
            .map(|(e, at)| match e.state {
                State::Started => Entry { seconds: at.elapsed().as_secs_f64(), ..e.clone() },
                _ => e.clone(),
            })
            .collect();
        let unix_time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Dump {
            rank: self.0.rank,
            world: self.0.world,
            backend: self.0.backend.to_string(),
            host: crate::env::hostname(),
            // (ours, else torchrun's)
            run_id: var(crate::env::vars::RUN_ID).or_else(|| var(crate::env::torchrun::RUN_ID)),
            attempt: var(crate::env::vars::RESTART_COUNT)
                .or_else(|| var(crate::env::torchrun::RESTART_COUNT))
                .and_then(|a| a.parse().ok()),
            reason: reason.to_string(),
            unix_time,
            entries,
        }
    }

    /// [`FlightRecorder::dump`], saying where on the console.
    pub fn dump_saying(&self, reason: &str) {
        if let Some(path) = self.dump(reason) {
            console_err!("rank {}: its last collectives are in {}", self.0.rank, path.display());
        }
    }

    /// Write the record as `flight-rankR.json` into the recorder's folder (once: the first failure is
    /// the one that tells; the later ones follow from it). Returns where, or nothing (no folder, or
    /// written already); a failure to write is logged, never fatal.
    pub fn dump(&self, reason: &str) -> Option<PathBuf> {
        let dir = self.dir()?;
        if std::mem::replace(&mut self.lock().dumped, true) {
            return None;
        }
        let name = record_name(self.0.rank);
        match files::write_json(&dir, &name, &self.snapshot(reason)) {
            Ok(path) => Some(path),
            Err(e) => {
                tracing::warn!("rank {}: writing its flight record {}: {e}", self.0.rank, dir.join(name).display());
                None
            }
        }
    }
}

/// Why a record written on the launcher's request was written.
pub const ASKED: &str = "asked for by the launcher: a collective of the group timed out";

/// `flight-rankR.json`.
pub fn record_name(rank: usize) -> String {
    format!("flight-rank{rank}.json")
}

/// Remove the records, the agents' notes on unanswered ranks and the request in `dir` (a new attempt's
/// log folder, which an earlier session of the same run id may have used): they would speak for this
/// attempt.
pub fn clear(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for p in rd.flatten().map(|e| e.path()) {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let ours = ["flight-rank", "flight-unanswered-node"].iter().any(|p| name.starts_with(p));
        if name == REQUEST || (ours && name.ends_with(".json")) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorder_keeps_the_last_collectives_and_writes_once() {
        let tmp = tempfile::tempdir().unwrap();
        let f = FlightRecorder::new(3, 4, "ring", Some(tmp.path().to_path_buf()));
        for i in 0..CAPACITY + 5 {
            f.record("all_reduce", i, || Ok::<(), String>(())).unwrap();
        }
        let e = f.record("broadcast", 2, || Err::<(), _>("timed out waiting for rank 2")).unwrap_err();
        assert_eq!(e, "timed out waiting for rank 2");
        let (dumps, notes) = read_dumps(tmp.path());
        assert!(notes.is_empty(), "{notes:?}");
        let [d] = dumps.as_slice() else { panic!("{dumps:?}") };
        let reason = "timed out waiting for rank 2";
        assert_eq!((d.rank, d.world, d.backend.as_str(), d.reason.as_str()), (3, 4, "ring", reason));
        assert_eq!(d.entries.len(), CAPACITY);
        let last = d.entries.last().unwrap();
        assert_eq!((last.seq, last.op.as_str(), last.state), (CAPACITY as u64 + 5, "broadcast", State::Failed));
        assert_eq!(d.entries[0].seq, 6);
        // the first failure's record stands
        assert!(f.dump("a later error").is_none());
        // no folder: kept in memory only
        assert!(FlightRecorder::new(0, 1, "ring", None).dump("x").is_none());
        // a new attempt in the same folder starts without them
        std::fs::write(tmp.path().join(REQUEST), "").unwrap();
        std::fs::write(tmp.path().join("other.json"), "{}").unwrap();
        clear(tmp.path());
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["other.json"]);
    }

    #[test]
    fn a_request_in_the_folder_makes_a_rank_write_its_record() {
        let tmp = tempfile::tempdir().unwrap();
        let f = FlightRecorder::new(1, 2, "ring", None);
        f.answer_requests();
        f.record("all_reduce", 8, || Ok::<(), String>(())).unwrap();
        f.at_step(7);
        f.tag_next("gradients");
        let _open = f.begin("all_reduce", 8);
        // (the folder may be given after the communicator was made)
        f.set_dir(tmp.path().to_path_buf());
        assert!(!f.requested());
        std::fs::write(tmp.path().join(REQUEST), "").unwrap();
        assert!(f.requested());
        let t0 = Instant::now();
        while read_dumps(tmp.path()).0.is_empty() && t0.elapsed() < REQUEST_POLL * 5 {
            std::thread::sleep(REQUEST_POLL / 10);
        }
        let (dumps, _) = read_dumps(tmp.path());
        let [d] = dumps.as_slice() else { panic!("no record within {:?}", REQUEST_POLL * 5) };
        assert_eq!(d.reason, ASKED);
        let states: Vec<State> = d.entries.iter().map(|e| e.state).collect();
        assert_eq!(states, [State::Completed, State::Started]);
        let what = (d.entries[0].what(), d.entries[1].what());
        assert_eq!(what, ("all_reduce of 8 values".into(), "gradients: all_reduce of 8 values, step 7".into()));
        assert!(!f.requested(), "written once");
    }
}
