//! Checkpoint writes (then `summary.json`, then pruning), in the step loop or on a thread of their own
//! (`checkpoint.background`), and the `summary.json` of a stop while one is being written.
//!
//! In the background, rank 0 hands a copy of the weights and the optimiser state to a writer thread
//! and trains on; the other ranks never wait on its disk. Writing a large model to a slow file
//! system inside the step loop would hold every other rank in its next collective for as long, past
//! `dist.timeout_s` on a slow enough disk. One write is in flight at a time: the next checkpoint
//! waits for the previous one, an error surfaces there (or at the end), and the run's last checkpoint
//! is complete before the process exits, also when training stops with an error.
//!
//! A failed write (a full disk, a file server's hiccup) stops training only after
//! `checkpoint.failed_writes_tolerated` failures in a row: before that it is warned of and counted
//! (`summary.json`'s `checkpoint_failed_writes`), its partial folder removed, and training goes on from
//! the last complete checkpoint's safety. Once that many have failed in a row, checkpoints are written
//! in the step loop until one succeeds, so the next failure stops the run at its own step, its snapshot
//! tried. The session's last checkpoint (the run's end, a stop) must be written: its failure is the
//! session's error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use super::checkpoint::{self, TrainState};
use super::summary::{write_run_file, SUMMARY_FILE};
use crate::model::{Layout, ModelConfig, Params};
use crate::optim::AdamW;

/// What one checkpoint holds (owned: the step loop goes on changing its own copies).
pub struct Snapshot {
    pub params: Params<f32>,
    pub opt: AdamW,
    pub ema: Option<Params<f32>>,
    pub state: TrainState,
    /// `summary.json` at this checkpoint (rank 0's), written once it is complete, before pruning.
    pub summary_json: Option<String>,
}

/// When `checkpoint.every_minutes` asks for a checkpoint: that long after the session's start or its
/// last checkpoint, on rank 0's clock (the ranks learn it in one collective), and not while the last
/// checkpoint is still being written (a write slower than the clock would make every step save).
pub struct CheckpointClock {
    every: Option<Duration>,
    last: Instant,
}

impl CheckpointClock {
    /// A clock of `minutes` (0: never due), started now.
    pub fn new(minutes: f64) -> CheckpointClock {
        // (a number of minutes past what a Duration holds is never due)
        let every = (minutes > 0.0).then(|| Duration::try_from_secs_f64(minutes * 60.0).ok()).flatten();
        CheckpointClock { every, last: Instant::now() }
    }

    pub fn due(&self) -> bool {
        self.every.is_some_and(|e| self.last.elapsed() >= e)
    }

    /// A checkpoint was saved (for whatever reason): the next is due that long from now.
    pub fn saved(&mut self) {
        self.last = Instant::now();
    }
}

/// The `summary.json` last put down: the step it describes and its text, and whether a signal stopped
/// the run (every summary put down from then on says `"preempted": true`).
pub struct SummaryOnDisk {
    pub step: u64,
    pub text: String,
    pub stopped: bool,
}

impl SummaryOnDisk {
    /// Put `text` down as `summary.json` of `step` (marked preempted once the run was stopped).
    fn put(&mut self, run: &Path, step: u64, text: String) -> Result<()> {
        let text = match self.stopped {
            true => preempted(&text)?,
            false => text,
        };
        write_run_file(run, SUMMARY_FILE, &text)?;
        (self.step, self.text) = (step, text);
        Ok(())
    }
}

/// A summary's text with `"preempted": true`.
fn preempted(text: &str) -> Result<String> {
    let mut record: serde_json::Value = serde_json::from_str(text)?;
    record["preempted"] = true.into();
    Ok(serde_json::to_string_pretty(&record)?)
}

pub struct Saver {
    run: PathBuf,
    model: ModelConfig,
    lay: Layout,
    config_toml: String,
    keep: (usize, u64),
    in_flight: Option<(u64, JoinHandle<Result<PathBuf>>)>,
    /// Failed writes training may go on after, in a row; and those so far: in a row, and this session.
    tolerated: u64,
    failed_in_a_row: u64,
    failed_writes: u64,
    /// The step and text of the `summary.json` last put down (a resume's at the session's start, then
    /// each complete checkpoint's). The lock orders the writer's summary after a stop's rewrite of an older one.
    summary_on_disk: Arc<Mutex<SummaryOnDisk>>,
    /// The step of the checkpoint last asked for.
    asked: u64,
}

impl Saver {
    /// A writer into `run` of checkpoints of `model`, keeping `keep` (`checkpoint.keep_last`,
    /// `keep_every`); `summary` is the run's summary as the session starts.
    /// `tolerated`: `checkpoint.failed_writes_tolerated`.
    pub fn new(
        run: &Path,
        (model, lay, config_toml): (&ModelConfig, &Layout, &str),
        (keep, tolerated): ((usize, u64), u64),
        summary: SummaryOnDisk,
    ) -> Saver {
        let (run, model, lay, config_toml) = (run.to_path_buf(), model.clone(), lay.clone(), config_toml.to_string());
        let summary_on_disk = Arc::new(Mutex::new(summary));
        let (failed_in_a_row, failed_writes) = (0, 0);
        Saver {
            run,
            model,
            lay,
            config_toml,
            keep,
            in_flight: None,
            tolerated,
            failed_in_a_row,
            failed_writes,
            summary_on_disk,
            asked: 0,
        }
    }

    /// Write `snap` as the checkpoint of its step, then prune: on a writer thread when `background`
    /// (and fewer writes than tolerated failed in a row), here otherwise. Waits for the previous write
    /// first. A failure is returned once more have failed in a row than are tolerated, or at once where
    /// `last` (the session's last checkpoint).
    pub fn save(&mut self, snap: Snapshot, background: bool, last: bool) -> Result<()> {
        let previous = self.join().map(|r| self.tolerate(r));
        let step = snap.state.step;
        self.asked = step;
        // (the thread owns its inputs; the layout and config are small next to the snapshot)
        let job = (self.run.clone(), self.model.clone(), self.lay.clone(), self.config_toml.clone(), self.keep);
        let on_disk = self.summary_on_disk.clone();
        let write = move || -> Result<PathBuf> {
            let (run, model, lay, config_toml, (keep_last, keep_every)) = job;
            save_drill();
            save_fault_drill(step)?;
            let tensors = checkpoint::Tensors { params: &snap.params, opt: &snap.opt, ema: snap.ema.as_ref() };
            let dir = checkpoint::save(&run, &model, &lay, tensors, snap.state, &config_toml)?;
            // (before pruning: the summary must not name a checkpoint pruning has just removed)
            let after = || format!("after the checkpoint {} was written", dir.display());
            if let Some(text) = snap.summary_json {
                on_disk.lock().unwrap_or_else(|e| e.into_inner()).put(&run, step, text).with_context(after)?;
            }
            // (a checkpoint that cannot be removed, by permissions or a file system's hold on it, stays:
            // warned of, not a write that failed)
            if let Err(e) = checkpoint::prune(&run, keep_last, keep_every) {
                tracing::warn!("{:#}", e.context(after()));
            }
            Ok(dir)
        };
        if let Some(Err(e)) = previous {
            // (more failed than tolerated, found only now: this snapshot is tried before the run stops)
            if let Err(also) = write() {
                self.failed_writes += 1;
                tracing::error!("{:#}", also.context(format!("writing the checkpoint of step {step}")));
            }
            return Err(self.stopping(e));
        }
        // (at the limit: here, so that a failure stops the run at its own step)
        if !background || (self.failed_in_a_row > 0 && self.failed_in_a_row >= self.tolerated) {
            let written = write().map(|_| ()).with_context(|| format!("writing the checkpoint of step {step}"));
            return match last {
                true => written.map_err(|e| self.last_failed(e)),
                false => self.tolerate(written).map_err(|e| self.stopping(e)),
            };
        }
        let handle = std::thread::Builder::new().name("checkpoint writer".into()).spawn(write)?;
        self.in_flight = Some((step, handle));
        Ok(())
    }

    /// A signal stopped the run: before the stop's checkpoint is written (after an earlier one still
    /// being written, maybe), `summary.json` says now that the run was stopped (`"preempted": true`),
    /// still at the last complete checkpoint, so a kill before the writes complete (the launcher's grace
    /// ending) leaves that said. A write completing later puts its summary down marked so too.
    pub fn stopped_by_signal(&mut self) -> Result<()> {
        let mut on_disk = self.summary_on_disk.lock().unwrap_or_else(|e| e.into_inner());
        on_disk.stopped = true;
        let (step, text) = (on_disk.step, on_disk.text.clone());
        on_disk.put(&self.run, step, text)
    }

    /// Whether a checkpoint is being written now (in the background).
    pub fn writing(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|(_, h)| !h.is_finished())
    }

    /// Wait for the write in flight (if any); its error, naming the step, if it failed.
    pub fn wait(&mut self) -> Result<()> {
        self.join().unwrap_or(Ok(()))
    }

    /// Wait for the session's last checkpoint (in flight, if any); its failure is [`Saver::last_failed`]'s.
    pub fn finish(&mut self) -> Result<()> {
        self.wait().map_err(|e| self.last_failed(e))
    }

    /// Writes that failed this session.
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes
    }

    /// Wait for the write in flight as a run that stops for another reason does (a divergence): its
    /// failure is logged and counted, the other reason stands.
    pub fn settle(&mut self) {
        if let Some(Err(e)) = self.join() {
            self.failed_writes += 1;
            tracing::error!("{e:#}");
        }
    }

    /// Wait for the write in flight: how it went, `None` when there was none.
    fn join(&mut self) -> Option<Result<()>> {
        let (step, h) = self.in_flight.take()?;
        Some(match h.join() {
            Ok(r) => {
                r.map(|_| ()).with_context(|| format!("writing the checkpoint of step {step} (in the background)"))
            }
            Err(_) => Err(anyhow!("the checkpoint writer thread panicked writing step {step}")),
        })
    }

    /// The error that stops the run once more writes failed in a row than are tolerated (`e`, the last
    /// of them), after every write it tried: it names the last complete checkpoint, and `summary.json`
    /// (at that checkpoint) counts the failures, where the disk takes it.
    fn stopping(&mut self, e: anyhow::Error) -> anyhow::Error {
        let (n, t) = (self.failed_in_a_row, self.tolerated);
        self.count_in_summary();
        let kept = self.kept();
        let writes = if n == 1 { "write" } else { "writes" };
        e.context(format!(
            "{n} checkpoint {writes} failed in a row, more than checkpoint.failed_writes_tolerated = {t} (the last \
             complete checkpoint: {kept})"
        ))
    }

    /// The error that stops the run where the session's last checkpoint (the run's end, a stop signal's)
    /// failed: counted in `summary.json` (at the last complete checkpoint, or the session's start), and
    /// naming the checkpoint a resume goes back to.
    fn last_failed(&mut self, e: anyhow::Error) -> anyhow::Error {
        self.failed_writes += 1;
        self.count_in_summary();
        let kept = self.kept();
        // (a failure after the checkpoint was complete: its summary or the pruning)
        if super::latest_checkpoint(&self.run).and_then(|c| super::checkpoint::step_of(&c)) == Some(self.asked) {
            return e.context(format!("the session's last checkpoint, {kept}, is complete; what follows it failed"));
        }
        e.context(format!(
            "the session's last checkpoint was not written: the steps after the last complete checkpoint ({kept}) \
             are not kept; mend the disk (free space) and `--resume auto` trains them again"
        ))
    }

    /// The newest complete checkpoint, in words.
    fn kept(&self) -> String {
        super::latest_checkpoint(&self.run).map_or("none yet".into(), |c| c.display().to_string())
    }

    /// `summary.json` as last put down, with this session's failed writes (where the disk takes it).
    fn count_in_summary(&mut self) {
        let mut on_disk = self.summary_on_disk.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut record) = serde_json::from_str::<serde_json::Value>(&on_disk.text) {
            record["checkpoint_failed_writes"] = self.failed_writes.into();
            let step = on_disk.step;
            let put = serde_json::to_string_pretty(&record)
                .map_err(anyhow::Error::from)
                .and_then(|text| on_disk.put(&self.run, step, text));
            if let Err(w) = put {
                tracing::warn!("{SUMMARY_FILE} not updated with the failed checkpoint writes: {w:#}");
            }
        }
    }

    /// A write's outcome: a failure within `tolerated` in a row is warned of and counted, not returned.
    fn tolerate(&mut self, written: Result<()>) -> Result<()> {
        let Err(e) = written else {
            self.failed_in_a_row = 0;
            return Ok(());
        };
        self.failed_in_a_row += 1;
        self.failed_writes += 1;
        let (n, t) = (self.failed_in_a_row, self.tolerated);
        if n > t {
            return Err(e); // ([`Saver::stopping`] says why, once the writes tried are done)
        }
        let kept = self.kept();
        tracing::warn!(
            "{e:#}; training goes on ({n} failed in a row of the {t} checkpoint.failed_writes_tolerated; the last \
             complete checkpoint: {kept})"
        );
        Ok(())
    }
}

impl Drop for Saver {
    /// A run that stops with an error still completes the checkpoint in flight (a restart resumes
    /// from it); a failure of that write is only logged, the error that stopped the run stands.
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::error!("{e:#}");
        }
    }
}

/// Failing-disk drill: `INFINITY_FAULT_SAVE=STEP,STEP,…` fails the checkpoint writes of those steps.
fn save_fault_drill(step: u64) -> Result<()> {
    let Ok(spec) = std::env::var("INFINITY_FAULT_SAVE") else { return Ok(()) };
    match spec.split(',').any(|s| s.trim().parse() == Ok(step)) {
        true => Err(anyhow!("failed by the INFINITY_FAULT_SAVE drill")),
        false => Ok(()),
    }
}

/// Slow-disk drill: `INFINITY_FAULT_SLOW_SAVE=SECONDS` delays every checkpoint write so long.
fn save_drill() {
    if let Some(secs) = std::env::var("INFINITY_FAULT_SLOW_SAVE").ok().and_then(|s| s.parse::<f64>().ok()) {
        std::thread::sleep(std::time::Duration::from_secs_f64(secs.max(0.0)));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_checkpoint_clock_is_due_after_its_minutes_and_again_after_a_save() {
        use super::CheckpointClock;
        assert!(!CheckpointClock::new(0.0).due(), "0: by steps alone");
        let mut c = CheckpointClock::new(0.5 / 60.0); // half a second
        assert!(!c.due());
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(c.due());
        c.saved();
        assert!(!c.due());
        assert!(!CheckpointClock::new(1e300).due(), "past what a Duration holds: never");
    }

    use super::*;

    /// Once the run is stopped, every summary put down says so: the stop's rewrite of the one on disk,
    /// and that of an earlier checkpoint whose write completes after it.
    #[test]
    fn a_summary_put_down_after_the_stop_says_preempted() {
        let tmp = tempfile::tempdir().unwrap();
        let read = || -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join(SUMMARY_FILE)).unwrap()).unwrap()
        };
        let text = |step: u64| serde_json::json!({ "step": step, "preempted": false }).to_string();
        let mut on_disk = SummaryOnDisk { step: 3, text: text(3), stopped: false };
        on_disk.put(tmp.path(), 4, text(4)).unwrap();
        assert_eq!((read()["step"].as_u64(), &read()["preempted"]), (Some(4), &false.into()));
        on_disk.stopped = true;
        on_disk.put(tmp.path(), 6, text(6)).unwrap();
        assert_eq!((read()["step"].as_u64(), &read()["preempted"]), (Some(6), &true.into()));
        assert_eq!(on_disk.step, 6);
    }
}
