//! Where each run of a sweep stands and its execution here: the run states read from a run folder
//! (finished, diverged, training under another job's lock, to do), why a run is skipped, writing each
//! run's resolved `config.toml` (refusing changed settings for a run that has trained), the
//! `infinity train`/`launch` command line of a run, and running the runs still to do here, one after
//! another or several at once, each on its own GPUs (`--parallel`).

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
    /// The runs a signal stopped (to the sweep, forwarded to its runs, or to a run alone): the sweep
    /// stopped there, the runs checkpointed.
    pub stopped: Vec<String>,
}

/// How runs share this machine when several train at once (`infinity sweep --parallel N`): each of
/// `parallel` slots has its own GPUs (`CUDA_VISIBLE_DEVICES`, `nproc_per_node` of them) and an equal
/// share of the CPU's threads (`RAYON_NUM_THREADS`, unless set).
#[derive(Clone, Debug, PartialEq)]
pub struct Slots {
    pub parallel: usize,
    /// Each slot's `CUDA_VISIBLE_DEVICES` (none: the environment's, untouched).
    devices: Vec<Option<String>>,
    /// Each run's `RAYON_NUM_THREADS` (none: untouched).
    threads: Option<usize>,
}

impl Slots {
    /// One run at a time in this environment, as it is.
    pub fn one() -> Slots {
        Slots { parallel: 1, devices: vec![None], threads: None }
    }

    /// `parallel` slots of `nproc` ranks each, sharing out `devices` (default: `CUDA_VISIBLE_DEVICES`,
    /// else `0, 1, …`) `nproc` to a slot, and the `cores` threads equally (unless `RAYON_NUM_THREADS`
    /// is set).
    pub fn new(parallel: usize, nproc: usize, devices: Option<Vec<String>>, cores: usize) -> Result<Slots> {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let threads_set = std::env::var_os("RAYON_NUM_THREADS").is_some();
        Slots::share(parallel, nproc, (devices, visible), (cores, threads_set))
    }

    /// [`Slots::new`] of `CUDA_VISIBLE_DEVICES` = `visible`, `RAYON_NUM_THREADS` set or not.
    fn share(
        parallel: usize,
        nproc: usize,
        (devices, visible): (Option<Vec<String>>, Option<String>),
        (cores, threads_set): (usize, bool),
    ) -> Result<Slots> {
        if parallel == 1 && devices.is_none() {
            return Ok(Slots::one());
        }
        let visible = visible.filter(|v| !v.trim().is_empty());
        let (list, from): (Vec<String>, &str) = match (devices, visible) {
            (Some(d), _) => (d, "--devices"),
            (None, Some(v)) => (v.split(',').map(|d| d.trim().to_string()).collect(), "CUDA_VISIBLE_DEVICES"),
            (None, None) => ((0..parallel * nproc).map(|d| d.to_string()).collect(), "the default"),
        };
        let need = parallel * nproc;
        if list.len() < need || list.iter().any(String::is_empty) {
            bail!(
                "--parallel {parallel} with nproc_per_node = {nproc} needs {need} GPUs, {nproc} to a run; {from} lists \
                 {} ({}): lower --parallel, or name more with --devices",
                list.len(),
                list.join(",")
            );
        }
        let devices = list.chunks(nproc).take(parallel).map(|c| Some(c.join(","))).collect();
        let threads = (!threads_set).then(|| (cores / need).max(1));
        Ok(Slots { parallel, devices, threads })
    }
}

/// A run training in a slot.
struct Running {
    at: String,
    name: String,
    dir: std::path::PathBuf,
    log: std::path::PathBuf,
    slot: usize,
    child: std::process::Child,
    started: std::time::Instant,
}

/// Run every run still to do here, up to `slots.parallel` at once (in the sweep's order, each in a
/// free slot), each without this environment's `INF__…` variables (its config.toml already holds
/// them, under the sweep's own settings). A signal to the sweep (a scheduler's SIGTERM) is forwarded
/// to the runs in progress, which checkpoint, and the sweep starts no more: a run is never left
/// training without the sweep that started it.
pub fn run_local(runs: &[PlannedRun], nproc: usize, exe: &Path, slots: &Slots) -> Result<LocalOutcome> {
    let mut done = LocalOutcome::default();
    let env = env_overrides();
    let signalled = crate::train::stop::preemption_flag()?;
    let mut free: Vec<usize> = (0..slots.parallel).rev().collect();
    let (mut running, mut next, mut forwarded, mut halted) = (Vec::<Running>::new(), 0, false, false);
    loop {
        let stop = signalled.load(std::sync::atomic::Ordering::Relaxed);
        while !(stop || halted) && next < runs.len() && !free.is_empty() {
            let (i, r) = (next, &runs[next]);
            next += 1;
            let at = format!("[{}/{}] {}", i + 1, runs.len(), r.name);
            match state(&r.dir) {
                RunState::Finished => console!("{at}: finished, skipped"),
                RunState::Diverged => {
                    console!(
                        "{at}: diverged (summary.json), skipped: a final result; remove its folder to train it again"
                    );
                    done.diverged.push(r.name.clone());
                }
                RunState::Training => {
                    console!("{at}: training now (its lock is held): left to that job");
                    done.training_elsewhere.push(r.name.clone());
                }
                RunState::ToDo => {
                    let slot = free.pop().expect("a free slot");
                    running.push(start(r, at, slot, (nproc, exe, slots), &env)?);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        if stop && !forwarded {
            for r in &running {
                // SAFETY: signalling a child this process spawned and has not reaped.
                unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
            }
            forwarded = true;
        }
        let mut k = 0;
        while k < running.len() {
            let Some(status) = running[k].child.try_wait()? else {
                k += 1;
                continue;
            };
            let r = running.remove(k);
            free.push(r.slot);
            let secs = r.started.elapsed().as_secs_f64();
            let (at, log) = (&r.at, r.log.display());
            if status.success() && finished(&r.dir) {
                console!("{at}: done in {secs:.1} s");
            } else if forwarded || preempted(&r.dir) {
                console!(
                    "{at}: stopped by a signal after {secs:.1} s: checkpointed; run the sweep again to continue it"
                );
                done.stopped.push(r.name);
                halted = true;
            } else if diverged(&r.dir) {
                console!("{at}: diverged after {secs:.1} s (see {log}): a final result");
                done.diverged.push(r.name);
            } else {
                console!("{at}: FAILED ({status}); see {log}");
                done.failed.push(r.name);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(done)
}

/// Start run `r` in slot `slot`, its output appended to its `train.log`.
fn start(
    r: &PlannedRun,
    at: String,
    slot: usize,
    (nproc, exe, slots): (usize, &Path, &Slots),
    env: &[(String, String)],
) -> Result<Running> {
    let log = r.dir.join("train.log");
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let mut cmd = Command::new(exe);
    for (var, _) in env {
        cmd.env_remove(var);
    }
    let devices = slots.devices[slot].as_ref();
    if let Some(d) = devices {
        cmd.env("CUDA_VISIBLE_DEVICES", d);
    }
    if let Some(t) = slots.threads {
        cmd.env("RAYON_NUM_THREADS", t.to_string());
    }
    let on = devices.map_or(String::new(), |d| format!(" on GPU {d}"));
    console!("{at}: running{on} (log {})", log.display());
    let child = cmd
        .args(command(r, nproc))
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let (name, dir, started) = (r.name.clone(), r.dir.clone(), std::time::Instant::now());
    Ok(Running { at, name, dir, log, slot, child, started })
}

#[cfg(test)]
mod tests {
    use super::Slots;

    fn slots(parallel: usize, nproc: usize, devices: Option<&str>, visible: Option<&str>) -> anyhow::Result<Slots> {
        let devices = devices.map(|d| d.split(',').map(str::to_string).collect());
        Slots::share(parallel, nproc, (devices, visible.map(str::to_string)), (16, false))
    }

    #[test]
    fn parallel_runs_get_their_own_gpus_and_a_share_of_the_threads() {
        assert_eq!(slots(1, 2, None, Some("3")).unwrap(), Slots::one(), "one run: the environment as it is");
        let s = slots(4, 1, None, None).unwrap();
        let want = ["0", "1", "2", "3"].map(|d| Some(d.to_string()));
        assert_eq!((s.devices, s.threads), (want.to_vec(), Some(4)));
        // nproc_per_node GPUs to a run, from CUDA_VISIBLE_DEVICES or --devices (which wins)
        let s = slots(2, 2, None, Some("4, 5,6,7,8")).unwrap();
        assert_eq!(s.devices, [Some("4,5".to_string()), Some("6,7".to_string())]);
        assert_eq!(s.threads, Some(4));
        let s = slots(1, 1, Some("7"), Some("0,1")).unwrap();
        assert_eq!(s.devices, [Some("7".to_string())]);
        let e = slots(3, 2, Some("0,1,2,3"), None).unwrap_err().to_string();
        assert!(
            e.starts_with("--parallel 3 with nproc_per_node = 2 needs 6 GPUs, 2 to a run; --devices lists 4"),
            "{e}"
        );
        let e = slots(2, 1, None, Some("0")).unwrap_err().to_string();
        assert!(e.contains("CUDA_VISIBLE_DEVICES lists 1 (0)"), "{e}");
        let threads_set = Slots::share(2, 1, (None, None), (16, true)).unwrap().threads;
        assert_eq!(threads_set, None, "RAYON_NUM_THREADS set: left as it is");
    }
}
