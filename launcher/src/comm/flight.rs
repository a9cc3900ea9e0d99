//! The flight recorder: every communicator keeps its last collectives (sequence number, op, size, when
//! it started, whether it finished) and writes them as `flight-rankR.json` when one fails, into the
//! folder `INFINITY_FLIGHT_DIR` names (`infinity launch` sets it to the attempt's log folder). Read
//! together ([`diagnose`]), the ranks' records say what a timeout alone cannot: which rank never
//! entered the collective the others waited in, and whether the ranks called different collectives
//! (code that took another path on one rank), as PyTorch's flight recorder does for NCCL.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The environment variable naming the folder the records are written into (none: not written).
pub const FLIGHT_DIR: &str = "INFINITY_FLIGHT_DIR";

/// How many collectives a record keeps (the last ones): a step makes a few dozen.
const CAPACITY: usize = 1024;

/// The file in the records' folder that asks every rank to write its record now: `infinity launch`
/// makes it when a rank failed, before stopping the others, so that a rank hung outside the
/// collectives (which no timeout of its own reaches) tells where it got to too.
pub const REQUEST: &str = "flight-records-wanted";

/// How often a rank looks for [`REQUEST`].
pub const REQUEST_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Where a collective got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Called (on the ring) or enqueued (NCCL) and not finished.
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
    /// Values this rank sends or reduces (its buffer's length).
    pub values: usize,
    pub state: State,
    /// Seconds since the communicator was made, when the call started, and how long it took (or had
    /// taken when the record was written).
    pub started_s: f64,
    pub seconds: f64,
}

impl Entry {
    /// `all_reduce of 1024 values`.
    pub fn what(&self) -> String {
        format!("{} of {} value{}", self.op, self.values, if self.values == 1 { "" } else { "s" })
    }
}

/// A rank's record, as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dump {
    pub rank: usize,
    pub world: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Why it was written (the failed collective's error).
    pub reason: String,
    pub unix_time: u64,
    /// Oldest first.
    pub entries: Vec<Entry>,
}

struct Inner {
    next_seq: u64,
    entries: VecDeque<(Entry, Instant)>,
    dumped: bool,
}

/// A rank's recorder, shared by its communicator and (NCCL) the watchdog thread: clones are one.
#[derive(Clone)]
pub struct FlightRecorder(Arc<Shared>);

struct Shared {
    rank: usize,
    world: usize,
    dir: Mutex<Option<PathBuf>>,
    born: Instant,
    inner: Mutex<Inner>,
}

impl FlightRecorder {
    /// A recorder that writes into `dir` (none: keeps the record in memory only), when a collective
    /// fails and when [`REQUEST`] appears there.
    pub fn new(rank: usize, world: usize, dir: Option<PathBuf>) -> FlightRecorder {
        let inner = Mutex::new(Inner { next_seq: 0, entries: VecDeque::with_capacity(CAPACITY), dumped: false });
        let shared = Shared { rank, world, dir: Mutex::new(dir), born: Instant::now(), inner };
        let flight = FlightRecorder(Arc::new(shared));
        // (a thread that ends with the recorder: it holds it weakly)
        let weak = Arc::downgrade(&flight.0);
        let _ = std::thread::Builder::new().name(format!("flight-{rank}")).spawn(move || loop {
            std::thread::sleep(REQUEST_POLL);
            let Some(shared) = weak.upgrade() else { return };
            let flight = FlightRecorder(shared);
            if flight.dir().is_some_and(|d| d.join(REQUEST).exists()) {
                flight.dump("asked for by the launcher: a rank of the group failed");
                return;
            }
        });
        flight
    }

    /// Write the record into `dir` from now on.
    pub fn set_dir(&self, dir: PathBuf) {
        *self.0.dir.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir);
    }

    fn dir(&self) -> Option<PathBuf> {
        self.0.dir.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A recorder that writes into the folder [`FLIGHT_DIR`] names, if set.
    pub fn from_env(rank: usize, world: usize) -> FlightRecorder {
        let dir = std::env::var_os(FLIGHT_DIR).filter(|d| !d.is_empty()).map(PathBuf::from);
        FlightRecorder::new(rank, world, dir)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        let entry = Entry { seq, op: op.to_string(), values, state: State::Started, started_s, seconds: 0.0 };
        g.entries.push_back((entry, now));
        seq
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
            if let Some(path) = self.dump(&e.to_string()) {
                console_err!("rank {}: its last collectives are in {}", self.0.rank, path.display());
            }
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
        let host = crate::env::hostname();
        Dump { rank: self.0.rank, world: self.0.world, host, reason: reason.to_string(), unix_time, entries }
    }

    /// Write the record as `flight-rankR.json` into the recorder's folder (once: the first failure is
    /// the one that tells; the later ones follow from it). Returns where, or nothing (no folder, or
    /// written already); a failure to write is logged, never fatal.
    pub fn dump(&self, reason: &str) -> Option<PathBuf> {
        let dir = self.dir()?;
        {
            let mut g = self.lock();
            if std::mem::replace(&mut g.dumped, true) {
                return None;
            }
        }
        let path = dir.join(format!("flight-rank{}.json", self.0.rank));
        let text = serde_json::to_string_pretty(&self.snapshot(reason)).expect("a record of strings and numbers");
        let tmp = dir.join(format!(".flight-rank{}.json.tmp", self.0.rank));
        match std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&tmp, text + "\n"))
            .and_then(|()| std::fs::rename(&tmp, &path))
        {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!("rank {}: writing its flight record {}: {e}", self.0.rank, path.display());
                None
            }
        }
    }
}

/// The records in `dir` (`flight-rank*.json`), by rank, and the files that could not be read.
pub fn read_dumps(dir: &Path) -> (Vec<Dump>, Vec<String>) {
    let (mut dumps, mut unreadable) = (Vec::new(), Vec::new());
    let Ok(rd) = std::fs::read_dir(dir) else { return (dumps, unreadable) };
    for p in rd.flatten().map(|e| e.path()) {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !(name.starts_with("flight-rank") && name.ends_with(".json")) {
            continue;
        }
        match std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Dump>(&t).map_err(|e| format!("not a flight record: {e}")))
        {
            Ok(d) => dumps.push(d),
            Err(e) => unreadable.push(format!("{}: {e}", p.display())),
        }
    }
    dumps.sort_by_key(|d| d.rank);
    (dumps, unreadable)
}

/// What the ranks' records say together, a line per finding: the first collective that not every
/// recorded rank completed, the ranks waiting in it (and for how long), the ranks that never entered
/// it (the ones to look at), the ranks without a record, and collectives that ranks called
/// differently (another op or size under one number).
pub fn diagnose(dumps: &[Dump]) -> Vec<String> {
    let Some(world) = dumps.iter().map(|d| d.world).max() else { return Vec::new() };
    let mut lines = Vec::new();
    // the same number, another collective: the ranks' code took different paths
    let mut seen: std::collections::BTreeMap<u64, Vec<(usize, &Entry)>> = Default::default();
    for d in dumps {
        for e in &d.entries {
            seen.entry(e.seq).or_default().push((d.rank, e));
        }
    }
    if let Some((seq, calls)) =
        seen.iter().find(|(_, c)| c.iter().any(|(_, e)| (&e.op, e.values) != (&c[0].1.op, c[0].1.values)))
    {
        let each: Vec<String> = calls.iter().map(|(r, e)| format!("rank {r} {}", e.what())).collect();
        lines.push(format!(
            "the ranks called different collectives as #{seq}: {} (their code took different paths: a collective \
             on some ranks only, or buffers of other sizes)",
            each.join(", ")
        ));
    }
    // the first collective some recorded rank did not complete
    let completed = |d: &Dump, seq: u64| d.entries.iter().any(|e| e.seq == seq && e.state == State::Completed);
    let last_done = |d: &Dump| d.entries.iter().filter(|e| e.state == State::Completed).map(|e| e.seq).max();
    let first_open =
        dumps.iter().filter_map(|d| d.entries.iter().find(|e| e.state != State::Completed)).min_by_key(|e| e.seq);
    if let Some(open) = first_open {
        let seq = open.seq;
        let (mut waiting, mut absent) = (Vec::new(), Vec::new());
        for d in dumps {
            match d.entries.iter().find(|e| e.seq == seq) {
                Some(e) if e.state != State::Completed => {
                    waiting.push(format!("rank {} ({}, {:.0} s)", d.rank, state_word(e.state), e.seconds))
                }
                Some(_) => {}
                None if !completed(d, seq) => absent.push(match last_done(d) {
                    Some(s) => format!("rank {} (its last: #{s})", d.rank),
                    None => format!("rank {} (none yet)", d.rank),
                }),
                None => {}
            }
        }
        let mut line = format!("collective #{seq} ({}): ", open.what());
        line += &format!("waited in by {}", waiting.join(", "));
        if !absent.is_empty() {
            line += &format!("; never entered by {}: look there first", absent.join(", "));
        }
        lines.push(line);
    }
    let missing: Vec<String> =
        (0..world).filter(|r| !dumps.iter().any(|d| d.rank == *r)).map(|r| r.to_string()).collect();
    if !missing.is_empty() {
        lines.push(format!(
            "no flight record from rank{} {}: no collective of {} failed, so {} not waiting in one (hung or busy \
             outside the collectives, killed first, or on a node whose log folder is another)",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            if missing.len() == 1 { "its" } else { "theirs" },
            if missing.len() == 1 { "it was" } else { "they were" },
        ));
    }
    lines
}

fn state_word(s: State) -> &'static str {
    match s {
        State::Started => "unfinished",
        State::Completed => "completed",
        State::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(rank: usize, world: usize, entries: &[(u64, &str, usize, State)]) -> Dump {
        let entries = entries
            .iter()
            .map(|&(seq, op, values, state)| Entry {
                seq,
                op: op.into(),
                values,
                state,
                started_s: seq as f64,
                seconds: if state == State::Completed { 0.01 } else { 30.0 },
            })
            .collect();
        Dump { rank, world, host: None, reason: "test".into(), unix_time: 0, entries }
    }

    #[test]
    fn the_recorder_keeps_the_last_collectives_and_writes_once() {
        let tmp = tempfile::tempdir().unwrap();
        let f = FlightRecorder::new(3, 4, Some(tmp.path().to_path_buf()));
        for i in 0..CAPACITY + 5 {
            f.record("all_reduce", i, || Ok::<(), String>(())).unwrap();
        }
        let e = f.record("broadcast", 2, || Err::<(), _>("timed out waiting for rank 2")).unwrap_err();
        assert_eq!(e, "timed out waiting for rank 2");
        let (dumps, bad) = read_dumps(tmp.path());
        assert!(bad.is_empty(), "{bad:?}");
        let [d] = dumps.as_slice() else { panic!("{dumps:?}") };
        assert_eq!(
            (d.rank, d.world, d.reason.as_str(), d.entries.len()),
            (3, 4, "timed out waiting for rank 2", CAPACITY)
        );
        let last = d.entries.last().unwrap();
        assert_eq!((last.seq, last.op.as_str(), last.state), (CAPACITY as u64 + 5, "broadcast", State::Failed));
        assert_eq!(d.entries[0].seq, 6);
        // the first failure's record stands
        assert!(f.dump("a later error").is_none());
        // no folder: kept in memory only
        assert!(FlightRecorder::new(0, 1, None).dump("x").is_none());
    }

    #[test]
    fn a_request_in_the_folder_makes_a_rank_write_its_record() {
        let tmp = tempfile::tempdir().unwrap();
        let f = FlightRecorder::new(1, 2, Some(tmp.path().to_path_buf()));
        f.record("all_reduce", 8, || Ok::<(), String>(())).unwrap();
        let _open = f.begin("all_reduce", 8);
        std::fs::write(tmp.path().join(REQUEST), "").unwrap();
        let t0 = Instant::now();
        while read_dumps(tmp.path()).0.is_empty() && t0.elapsed() < REQUEST_POLL * 20 {
            std::thread::sleep(REQUEST_POLL / 4);
        }
        let (dumps, _) = read_dumps(tmp.path());
        let [d] = dumps.as_slice() else { panic!("no record within {:?}", REQUEST_POLL * 20) };
        assert!(d.reason.starts_with("asked for by the launcher"), "{}", d.reason);
        let states: Vec<State> = d.entries.iter().map(|e| e.state).collect();
        assert_eq!(states, [State::Completed, State::Started]);
    }

    #[test]
    fn the_rank_that_never_entered_the_collective_is_named() {
        use State::*;
        let dumps = [
            dump(0, 3, &[(10, "all_reduce", 8, Completed), (11, "all_reduce", 1000, Failed)]),
            dump(1, 3, &[(10, "all_reduce", 8, Completed), (11, "all_reduce", 1000, Started)]),
            dump(2, 3, &[(9, "broadcast", 2, Completed), (10, "all_reduce", 8, Completed)]),
        ];
        let lines = diagnose(&dumps);
        assert_eq!(
            lines,
            ["collective #11 (all_reduce of 1000 values): waited in by rank 0 (failed, 30 s), rank 1 (unfinished, \
              30 s); never entered by rank 2 (its last: #10): look there first"]
        );
        let lines = diagnose(&dumps[..2]);
        assert!(lines[1].starts_with("no flight record from rank 2: no collective of its failed"), "{lines:?}");
    }

    #[test]
    fn ranks_calling_different_collectives_are_named() {
        use State::*;
        let dumps = [
            dump(0, 2, &[(4, "all_reduce", 8, Completed), (5, "all_reduce", 1000, Failed)]),
            dump(1, 2, &[(4, "all_reduce", 8, Completed), (5, "broadcast", 2, Failed)]),
        ];
        let lines = diagnose(&dumps);
        assert!(
            lines[0].starts_with(
                "the ranks called different collectives as #5: rank 0 all_reduce of 1000 values, rank 1 broadcast of \
                 2 values"
            ),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
    }
}
