//! Where each run of a sweep stands and its execution here: the run states read from a run folder
//! (finished, diverged, training under another job's lock, to do), why a run is skipped, writing each
//! run's resolved `config.toml` (refusing changed settings for a run that has trained), the
//! `infinity train`/`launch` command line of a run, and running the runs still to do one after another.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use infinity_data::manifest::write_atomic;

use super::{env_overrides, PlannedRun};
use crate::train::rundir::config_changes;

fn summary(dir: &Path) -> Option<serde_json::Value> {
    std::fs::read_to_string(dir.join("summary.json")).ok().and_then(|t| serde_json::from_str(&t).ok())
}

/// Whether a run folder holds a finished run.
pub fn finished(dir: &Path) -> bool {
    summary(dir).is_some_and(|v| v["finished"] == true)
}

/// Whether a run folder holds a run that diverged (`optim.max_nonfinite` stopped it; its `summary.json`
/// says so). Training it again with the same config diverges again: it is a result, not a failure.
pub fn diverged(dir: &Path) -> bool {
    summary(dir).is_some_and(|v| v["diverged"] == true)
}

/// Whether a run folder holds a run a signal stopped (checkpointed; `--resume auto` continues it).
fn preempted(dir: &Path) -> bool {
    summary(dir).is_some_and(|v| v["preempted"] == true)
}

/// Where a run of the sweep stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Finished,
    /// A final result: skipped (`infinity scaling` lists it as diverged).
    Diverged,
    /// A training job holds its folder's lock: left to that job.
    Training,
    /// Not started, or stopped before its end: (re)started, resuming from its newest checkpoint.
    ToDo,
}

pub fn state(dir: &Path) -> RunState {
    if finished(dir) {
        RunState::Finished
    } else if diverged(dir) {
        RunState::Diverged
    } else if crate::train::run_lock::in_use(dir) {
        RunState::Training
    } else {
        RunState::ToDo
    }
}

/// Why a run is not started (`None` for a run to start).
pub fn skipped(r: &PlannedRun) -> Option<String> {
    match state(&r.dir) {
        RunState::Finished => Some(format!("run {} has finished: skipped", r.name)),
        RunState::Diverged => Some(format!(
            "run {} diverged (its summary.json says so): a final result, skipped (`infinity scaling` lists it); \
             remove its folder to train it again",
            r.name
        )),
        RunState::Training => Some(format!("run {} is training now (its lock is held): left to that job", r.name)),
        RunState::ToDo => None,
    }
}

/// Whether a run folder shows that a run trained there (or trains there now): a checkpoint, the files
/// only training writes (`metrics.jsonl`, `summary.json`), or a held lock.
fn has_trained(dir: &Path) -> bool {
    crate::train::latest_checkpoint(dir).is_some()
        || crate::train::rundir::RUN_FILES.iter().any(|f| dir.join(f).is_file())
        || crate::train::run_lock::in_use(dir)
}

/// Each run's resolved config as `RUN/config.toml` will hold it. A run that has trained (a checkpoint,
/// `metrics.jsonl` or `summary.json`, or a job training it now) keeps the config it trained with, which
/// its logs and `infinity scaling` describe: a sweep file that now gives it other settings is refused,
/// naming the runs and settings.
fn config_texts(runs: &[PlannedRun]) -> Result<Vec<(&PlannedRun, String)>> {
    let mut texts = Vec::new();
    let mut changed = Vec::new();
    for r in runs {
        let text = toml::to_string(&r.config)?;
        let path = r.dir.join("config.toml");
        let trained = has_trained(&r.dir);
        match std::fs::read_to_string(&path) {
            Ok(old) if trained => {
                let old = with_absolute_paths(&old).with_context(|| format!("reading {}", path.display()))?;
                let diff = config_changes(&old, &text).with_context(|| format!("reading {}", path.display()))?;
                match diff.is_empty() {
                    // the same settings (paths written relative by an earlier build become absolute)
                    true => texts.push((r, text)),
                    false => changed.push(format!("{}: {}", r.name, diff.join(", "))),
                }
            }
            _ => texts.push((r, text)),
        }
    }
    if !changed.is_empty() {
        bail!(
            "{} runs trained with other settings than the sweep file gives them now:\n  {}\nfor a changed sweep set \
             another `out` (or remove those run folders to train them afresh)",
            changed.len(),
            changed.join("\n  ")
        );
    }
    Ok(texts)
}

/// What [`write_configs`] refuses, checked without writing (`--dry-run`).
pub fn check_configs(runs: &[PlannedRun]) -> Result<()> {
    config_texts(runs).map(|_| ())
}

/// Write each run's resolved config to `RUN/config.toml`, refusing before anything is written when a run
/// that has trained would get other settings ([`config_texts`]).
pub fn write_configs(runs: &[PlannedRun]) -> Result<()> {
    for (r, text) in config_texts(runs)? {
        std::fs::create_dir_all(&r.dir).with_context(|| format!("creating {}", r.dir.display()))?;
        write_atomic(&r.dir.join("config.toml"), text.as_bytes())?;
    }
    Ok(())
}

/// A config's text with its paths (`run.dir`, `data.dir`, `val.dir`, `model.init_from`) made absolute
/// against the working folder, as [`plan`](super::plan) writes them.
pub(super) fn with_absolute_paths(text: &str) -> Result<String> {
    let mut t: toml::Table = text.parse()?;
    for (section, key) in [("run", "dir"), ("data", "dir"), ("val", "dir"), ("model", "init_from")] {
        if let Some(toml::Value::String(p)) = t.get_mut(section).and_then(|s| s.get_mut(key)) {
            *p = std::path::absolute(&*p)?.display().to_string();
        }
    }
    Ok(toml::to_string(&t)?)
}

/// The arguments after `infinity` that run one run (resuming if it was interrupted).
pub fn command(r: &PlannedRun, nproc: usize) -> Vec<String> {
    let cfg = r.dir.join("config.toml").display().to_string();
    let train = ["train".to_string(), cfg, "--resume".into(), "auto".into()];
    if nproc > 1 {
        let log_dir = r.dir.join("logs").display().to_string();
        [
            vec![
                "launch".into(),
                "--nproc-per-node".into(),
                nproc.to_string(),
                "--log-dir".into(),
                log_dir,
                "--".into(),
            ],
            train.to_vec(),
        ]
        .concat()
    } else {
        train.to_vec()
    }
}

/// What [`run_local`] left behind: the runs that failed, diverged (now or before), or that other jobs
/// are training.
#[derive(Debug, Default)]
pub struct LocalOutcome {
    pub failed: Vec<String>,
    pub diverged: Vec<String>,
    pub training_elsewhere: Vec<String>,
    /// The run a signal stopped (to the sweep, forwarded to its run, or to the run alone): the sweep
    /// stopped there, the run checkpointed.
    pub stopped: Option<String>,
}

/// Run every run still to do here, one after another, each without this environment's `INF__…`
/// variables (its config.toml already holds them, under the sweep's own settings). A signal to the
/// sweep (a scheduler's SIGTERM) is forwarded to the run in progress, which checkpoints, and the sweep
/// stops after it: a run is never left training without the sweep that started it.
pub fn run_local(runs: &[PlannedRun], nproc: usize, exe: &Path) -> Result<LocalOutcome> {
    let mut done = LocalOutcome::default();
    let env = env_overrides();
    let signalled = crate::train::stop::preemption_flag()?;
    for (i, r) in runs.iter().enumerate() {
        let at = format!("[{}/{}] {}", i + 1, runs.len(), r.name);
        match state(&r.dir) {
            RunState::Finished => {
                console!("{at}: finished, skipped");
                continue;
            }
            RunState::Diverged => {
                console!("{at}: diverged (summary.json), skipped: a final result; remove its folder to train it again");
                done.diverged.push(r.name.clone());
                continue;
            }
            RunState::Training => {
                console!("{at}: training now (its lock is held): left to that job");
                done.training_elsewhere.push(r.name.clone());
                continue;
            }
            RunState::ToDo => {}
        }
        let log = r.dir.join("train.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        console!("{at}: running (log {})", log.display());
        let t0 = std::time::Instant::now();
        let mut cmd = Command::new(exe);
        for (var, _) in &env {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .args(command(r, nproc))
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut forwarded = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if !forwarded && signalled.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: signalling the child this process spawned and has not reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                forwarded = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        if forwarded || (!finished(&r.dir) && preempted(&r.dir)) {
            console!(
                "    stopped by a signal after {:.1} s: checkpointed; run the sweep again to continue it",
                t0.elapsed().as_secs_f64()
            );
            done.stopped = Some(r.name.clone());
            break;
        }
        if status.success() && finished(&r.dir) {
            console!("    done in {:.1} s", t0.elapsed().as_secs_f64());
        } else if diverged(&r.dir) {
            console!("    diverged after {:.1} s (see {}): a final result", t0.elapsed().as_secs_f64(), log.display());
            done.diverged.push(r.name.clone());
        } else {
            console!("    FAILED ({status}); see {}", log.display());
            done.failed.push(r.name.clone());
        }
    }
    Ok(done)
}
