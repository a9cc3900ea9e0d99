//! Where each run of a sweep stands and its execution here: the run states read from a run folder
//! (finished, diverged, training under another job's lock, to do), why a run is skipped, writing each
//! run's resolved `config.toml` (refusing changed settings for a run that has trained), the
//! `infinity train`/`launch` command line of a run, and running the runs still to do here, one after
//! another or several at once, each on its own GPUs (`--parallel`).

use std::path::Path;
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context, Result};
use infinity_data::manifest::write_atomic;

use super::{env_overrides, PlannedRun};
use crate::train::config::DeviceChoice;
use crate::train::rundir::{config_changes, summary_says};

/// Whether a run folder holds a finished run.
pub fn finished(dir: &Path) -> bool {
    summary_says(dir, "finished")
}

/// Whether a run folder holds a run that diverged (`optim.max_nonfinite` stopped it; its `summary.json`
/// says so). Training it again with the same config diverges again: it is a result, not a failure.
pub fn diverged(dir: &Path) -> bool {
    summary_says(dir, "diverged")
}

/// Whether a run folder holds a run a signal stopped (checkpointed; `--resume auto` continues it).
pub(super) fn preempted(dir: &Path) -> bool {
    summary_says(dir, "preempted")
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
fn config_texts(runs: &[PlannedRun]) -> Result<Vec<(&PlannedRun, String, bool)>> {
    let mut texts = Vec::new();
    let mut changed = Vec::new();
    for r in runs {
        let text = toml::to_string(&r.config)?;
        let (result, other) = changes(r, &text)?;
        match result.is_empty() {
            true => texts.push((r, text, !other.is_empty())),
            false => changed.push(format!("{}: {}", r.name, result.join(", "))),
        }
    }
    if !changed.is_empty() {
        let data = match changed.iter().any(|c| c.contains(DATASET_CHANGED)) {
            true => "; for a dataset changed in place, put it back as it was, or make the new one in another folder",
            false => "",
        };
        bail!(
            "{} trained with other settings or data than the sweep file gives them now:\n  {}\nfor a changed \
             sweep set another `out` (or remove those run folders to train them afresh){data}",
            infinity_launcher::plural(changed.len(), "run"),
            changed.join("\n  ")
        );
    }
    Ok(texts)
}

/// The settings a run that has trained (see [`config_texts`]) trained with other than the sweep file's
/// `text` for it now gives, if any (paths written relative by an earlier build count as absolute), but
/// those that leave its result as it was (`run.log_every`, `val.every`, `checkpoint.*`, …).
pub(super) fn settings_changed(r: &PlannedRun, text: &str) -> Result<Option<Vec<String>>> {
    let (result, _) = changes(r, text)?;
    Ok((!result.is_empty()).then_some(result))
}

/// The settings a run that has trained trained with other than `text` gives: those that change its
/// result, and those that leave it as it was (what it logs, checkpoints and samples: a stopped run
/// resumes with them, said).
fn changes(r: &PlannedRun, text: &str) -> Result<(Vec<String>, Vec<String>)> {
    let path = r.dir.join("config.toml");
    let old = match std::fs::read_to_string(&path) {
        Ok(old) if has_trained(&r.dir) => old,
        _ => return Ok((Vec::new(), Vec::new())),
    };
    let old = with_absolute_paths(&old).with_context(|| format!("reading {}", path.display()))?;
    let diff = config_changes(&old, text).with_context(|| format!("reading {}", path.display()))?;
    let leaves =
        |c: &String| c.split_once(':').is_some_and(|(key, _)| crate::scaling::settings::leaves_the_result(key));
    let (mut result, other): (Vec<String>, Vec<String>) = diff.into_iter().partition(|c| !leaves(c));
    // (a dataset given by another folder is a changed setting already)
    if !result.iter().any(|c| c.starts_with("data.dir:") || c.starts_with("data.mix")) {
        result.extend(dataset_changed(r));
    }
    Ok((result, other))
}

/// What [`dataset_changed`] says of a run whose dataset changed.
const DATASET_CHANGED: &str = "changed since the run trained on it";

/// How the dataset behind `data.dir` (a mix's datasets) differs from the one a run that has trained
/// recorded in its `derived.json`, if it does: the same folder made again holds other rows, so the
/// run's result is of other data, and a stopped run cannot resume there (its saved data position is
/// refused).
fn dataset_changed(r: &PlannedRun) -> Option<String> {
    let text = std::fs::read_to_string(r.dir.join("derived.json")).ok()?;
    let derived: serde_json::Value = serde_json::from_str(&text).ok()?;
    let saved = derived["dataset"]["fingerprint"].as_str()?;
    if r.dataset.fingerprint_matches(saved) {
        return None;
    }
    Some(format!(
        "dataset {} {DATASET_CHANGED} ({}; derived.json's fingerprint {saved}, now {})",
        r.config.data.folders(),
        r.dataset.fingerprint_changes(saved).join("; "),
        r.dataset.fingerprint()
    ))
}

/// What [`write_configs`] refuses, checked without writing (`--dry-run`).
pub fn check_configs(runs: &[PlannedRun]) -> Result<()> {
    config_texts(runs).map(|_| ())
}

/// Write each run's resolved config to `RUN/config.toml`, refusing before anything is written when a run
/// that has trained would get other settings ([`config_texts`]). A run that is not started (finished,
/// diverged, or training in another job) keeps the config it trained with where the sweep file changed
/// what it logs or checkpoints.
pub fn write_configs(runs: &[PlannedRun]) -> Result<()> {
    for (r, text, logging_changed) in config_texts(runs)? {
        if logging_changed && skipped(r).is_some() {
            // (its own config, with the paths an earlier build wrote relative made absolute, as for the rest)
            let path = r.dir.join("config.toml");
            let old = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let absolute = with_absolute_paths(&old).with_context(|| format!("reading {}", path.display()))?;
            if absolute.parse::<toml::Table>().ok() != old.parse::<toml::Table>().ok() {
                write_atomic(&path, absolute.as_bytes())?;
            }
            continue;
        }
        std::fs::create_dir_all(&r.dir).with_context(|| format!("creating {}", r.dir.display()))?;
        write_atomic(&r.dir.join("config.toml"), text.as_bytes())?;
        let point: serde_json::Map<String, serde_json::Value> =
            r.point.iter().map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default())).collect();
        let point = serde_json::to_string_pretty(&point)?;
        write_atomic(&r.dir.join(crate::train::log::SWEEP_POINT_FILE), point.as_bytes())?;
    }
    Ok(())
}

/// A config's text with its paths (`run.dir`, `data.dir`, `data.mix[i].dir`, `val.dir`, `model.init_from`) made absolute
/// against the working folder, as [`plan`](super::plan) writes them.
pub(super) fn with_absolute_paths(text: &str) -> Result<String> {
    let mut t: toml::Table = text.parse()?;
    for (section, key) in [("run", "dir"), ("data", "dir"), ("val", "dir"), ("model", "init_from")] {
        if let Some(toml::Value::String(p)) = t.get_mut(section).and_then(|s| s.get_mut(key)) {
            *p = std::path::absolute(&*p)?.display().to_string();
        }
    }
    // (and each `[[data.mix]]` dataset's, each `[[val.sets]]` one's)
    for (section, key) in [("data", "mix"), ("val", "sets")] {
        if let Some(toml::Value::Array(list)) = t.get_mut(section).and_then(|s| s.get_mut(key)) {
            for p in list.iter_mut().filter_map(|m| m.get_mut("dir")) {
                if let toml::Value::String(p) = p {
                    *p = std::path::absolute(&*p)?.display().to_string();
                }
            }
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
                // (one node: a sweep run in a multi-node allocation's shell is not the allocation's)
                "launch".into(),
                "--nnodes".into(),
                "1".into(),
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
    /// The runs a signal stopped (to the sweep, forwarded to its runs, or to a run alone).
    pub stopped: Vec<String>,
    /// A signal stopped the sweep before it started every run (also between two runs).
    pub signalled: bool,
}

/// How runs share this machine when several train at once (`infinity sweep --parallel N`): each of
/// `parallel` slots has its own GPUs (`CUDA_VISIBLE_DEVICES`, `nproc_per_node` of them) where the runs
/// use GPUs, and an equal share of the CPU's threads (`RAYON_NUM_THREADS`, unless set).
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

    /// `parallel` slots of `nproc` ranks each and the `cores` threads shared equally (unless
    /// `RAYON_NUM_THREADS` is set); where `runs` use GPUs (`run.device` cuda, or auto on a machine that
    /// shows some), or `devices` names them, `nproc` of `devices` to a slot (default: the GPUs CUDA
    /// shows this process, `CUDA_VISIBLE_DEVICES`'s or the driver's), too few of them refused. No more
    /// slots than runs left to train (`-j 3` for two asks two runs' GPUs).
    pub fn new(
        parallel: usize,
        nproc: usize,
        devices: Option<Vec<String>>,
        cores: usize,
        runs: &[PlannedRun],
    ) -> Result<Slots> {
        if let Some(d) = devices.as_ref().filter(|d| d.iter().any(|id| id.trim().is_empty())) {
            bail!("--devices {:?} names an empty GPU id: give ids separated by commas (0,1,2)", d.join(","));
        }
        let (asked, left) = (parallel, runs.iter().filter(|r| skipped(r).is_none()).count());
        let parallel = parallel.min(left).max(1);
        let capped = (asked > parallel).then(|| {
            format!("(--parallel {asked} is {parallel} here: {} left to train)", crate::cli::plural(left, "run"))
        });
        let threads_set = std::env::var_os("RAYON_NUM_THREADS").is_some();
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let shown = infinity_launcher::agent::visible_gpu_ids(visible.as_deref());
        let gpus = runs.iter().any(|r| match r.config.run.device {
            DeviceChoice::Cuda => true,
            DeviceChoice::Auto => !shown.is_empty(),
            DeviceChoice::Cpu => false,
        });
        let list = match devices {
            Some(d) => Some((d, "--devices")),
            None if gpus => Some((shown, if visible.is_some() { "CUDA_VISIBLE_DEVICES" } else { "the NVIDIA driver" })),
            None => None,
        };
        Slots::share(parallel, nproc, list, (cores, threads_set)).map_err(|e| match capped {
            Some(c) => e.context(c),
            None => e,
        })
    }

    /// [`Slots::new`] of the GPU ids `list` (and where they came from), `RAYON_NUM_THREADS` set or not.
    fn share(
        parallel: usize,
        nproc: usize,
        list: Option<(Vec<String>, &str)>,
        (cores, threads_set): (usize, bool),
    ) -> Result<Slots> {
        let need = parallel * nproc;
        let threads = (!threads_set && parallel > 1).then(|| (cores / need).max(1));
        let devices = match list {
            // one run at a time in the environment as it is, unless GPUs are named
            _ if parallel == 1 && list.as_ref().is_none_or(|(_, from)| *from != "--devices") => return Ok(Slots::one()),
            None => vec![None; parallel],
            Some((list, from)) => {
                if list.len() < need || list.iter().any(String::is_empty) {
                    bail!(
                        "--parallel {parallel} with nproc_per_node = {nproc} needs {}, {nproc} to a run; {from} shows {} \
                         ({}): lower --parallel, or name the GPUs with --devices",
                        crate::cli::plural(need, "GPU"),
                        list.len(),
                        list.join(",")
                    );
                }
                list.chunks(nproc).take(parallel).map(|c| Some(c.join(","))).collect()
            }
        };
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
    /// Its `summary.json` as an earlier session left it (none: absent): the child's own is told from it.
    summary_before: Option<String>,
}

/// Run every run still to do here, up to `slots.parallel` at once (in the sweep's order, each in a
/// free slot), each without this environment's `INF__…` variables (its config.toml already holds
/// them, under the sweep's own settings). A signal to the sweep (a scheduler's SIGTERM) is forwarded
/// to the runs in progress, which checkpoint, and the sweep starts no more: a run is never left
/// training without the sweep that started it (a run that cannot be started is a failed run).
pub fn run_local(runs: &[PlannedRun], nproc: usize, exe: &Path, slots: &Slots) -> Result<LocalOutcome> {
    let mut done = LocalOutcome::default();
    let env = env_overrides();
    let signalled = crate::train::stop::preemption_flag(false)?;
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
                    match start(r, &at, slot, (nproc, exe, slots), &env) {
                        Ok(child) => running.push(child),
                        Err(e) => {
                            console!("{at}: FAILED to start: {e:#}");
                            super::failed::record(&r.dir, "failed to start");
                            done.failed.push(r.name.clone());
                            free.push(slot);
                        }
                    }
                }
            }
        }
        if stop && next < runs.len() {
            done.signalled = true;
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
            let status = match running[k].child.try_wait() {
                Ok(None) => {
                    k += 1;
                    continue;
                }
                Ok(Some(status)) => Ok(status),
                // (not seen to fail; its run is given up rather than left unwatched)
                Err(e) => {
                    let _ = running[k].child.kill();
                    let _ = running[k].child.wait();
                    Err(e)
                }
            };
            let r = running.remove(k);
            free.push(r.slot);
            // (a signal the child saw before this loop forwarded it counts as the sweep's)
            let signal = forwarded || signalled.load(std::sync::atomic::Ordering::Relaxed);
            if ended(r, status, signal, &mut done) && !halted {
                halted = true;
                if next < runs.len() {
                    let n = running.len();
                    // (the sweep's own signal, forwarded to every run, or one sent to a run alone)
                    let whose =
                        if signal { "the sweep was stopped by a signal" } else { "a run was stopped by a signal" };
                    console!("{whose}: no more runs start ({n} still running)");
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(done)
}

/// Say how run `r` ended and count it; whether a signal stopped it. The child's exit status decides,
/// and only a `summary.json` this session wrote is read: a resume that fails (exit 2: the dataset
/// changed, say) leaves the earlier session's summary, `"preempted": true` and all, in place.
fn ended(r: Running, status: std::io::Result<ExitStatus>, signal: bool, done: &mut LocalOutcome) -> bool {
    let secs = r.started.elapsed().as_secs_f64();
    let (at, log) = (&r.at, r.log.display());
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            console!("{at}: FAILED: its process could not be watched ({e}); see {log}");
            super::failed::record(&r.dir, "its process could not be watched");
            done.failed.push(r.name);
            return false;
        }
    };
    let text = std::fs::read_to_string(r.dir.join("summary.json")).ok();
    let summary = text
        .filter(|t| Some(t) != r.summary_before.as_ref())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let says = |key: &str| summary.as_ref().is_some_and(|v| v[key] == true);
    if status.success() && says("finished") {
        console!("{at}: done in {secs:.1} s");
    } else if says("diverged") {
        console!("{at}: diverged after {secs:.1} s (see {log}): a final result");
        done.diverged.push(r.name);
    } else if status.success() && says("preempted") {
        console!("{at}: stopped by a signal after {secs:.1} s: checkpointed; run the sweep again to continue it");
        done.stopped.push(r.name);
        return true;
    } else if signal {
        console!(
            "{at}: stopped by the signal after {secs:.1} s ({status}), before a checkpoint of this session; see {log}"
        );
        done.stopped.push(r.name);
        return true;
    } else {
        console!("{at}: FAILED ({status}); see {log}");
        super::failed::record(&r.dir, &status.to_string());
        done.failed.push(r.name);
    }
    false
}

/// Start run `r` in slot `slot`, its output appended to its `train.log`.
fn start(
    r: &PlannedRun,
    at: &str,
    slot: usize,
    (nproc, exe, slots): (usize, &Path, &Slots),
    env: &[(String, String)],
) -> Result<Running> {
    // (read before the child can write its own)
    let summary_before = std::fs::read_to_string(r.dir.join("summary.json")).ok();
    super::failed::clear(&r.dir);
    let log = r.dir.join("train.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
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
    // a run outlives no sweep: where the sweep dies unwarned (SIGKILL, an OOM kill), the kernel sends its
    // run SIGTERM, and it checkpoints and exits, instead of training on where no one waits for it (a
    // sweep run again would find it training and leave it be). (Spawned from the thread that waits.)
    // (a sweep that died before the prctl: its run stops at once, as it would have after)
    #[cfg(target_os = "linux")]
    let sweep = std::process::id() as libc::pid_t;
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2), getppid(2) and raise(3) in the child between fork and exec: async-signal-safe,
    // no allocation.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != sweep {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
    let child = cmd
        .args(command(r, nproc))
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let on = devices.map_or(String::new(), |d| format!(" on GPU {d}"));
    // (the run takes its newest checkpoint, `--resume auto`)
    let from = crate::train::latest_checkpoint(&r.dir).and_then(|c| crate::train::checkpoint::saved_step(&c));
    let resuming = from.map_or(String::new(), |step| format!(", resuming from its checkpoint of step {step}"));
    console!("{at}: running{on}{resuming} (log {})", log.display());
    let (name, dir, started) = (r.name.clone(), r.dir.clone(), std::time::Instant::now());
    Ok(Running { at: at.to_string(), name, dir, log, slot, child, started, summary_before })
}

#[cfg(test)]
mod tests {
    use super::Slots;

    fn slots(parallel: usize, nproc: usize, list: Option<(&str, &str)>) -> anyhow::Result<Slots> {
        let list = list.map(|(l, from)| (l.split(',').map(str::to_string).collect(), from));
        Slots::share(parallel, nproc, list, (16, false))
    }

    #[test]
    fn parallel_runs_get_their_own_gpus_and_a_share_of_the_threads() {
        assert_eq!(slots(1, 2, Some(("3", "CUDA_VISIBLE_DEVICES"))).unwrap(), Slots::one(), "one run: as it is");
        let s = slots(1, 1, Some(("7", "--devices"))).unwrap();
        assert_eq!((s.devices, s.threads), (vec![Some("7".to_string())], None), "one run on the GPU named");
        let s = slots(4, 1, Some(("0,1,2,3", "the NVIDIA driver"))).unwrap();
        let want = ["0", "1", "2", "3"].map(|d| Some(d.to_string()));
        assert_eq!((s.devices, s.threads), (want.to_vec(), Some(4)));
        // nproc_per_node GPUs to a run
        let s = slots(2, 2, Some(("4,5,6,7,8", "CUDA_VISIBLE_DEVICES"))).unwrap();
        assert_eq!((s.devices, s.threads), (vec![Some("4,5".to_string()), Some("6,7".to_string())], Some(4)));
        // runs on the CPU: threads shared, GPUs untouched
        let s = slots(2, 1, None).unwrap();
        assert_eq!((s.devices, s.threads), (vec![None, None], Some(8)));
        let e = slots(3, 2, Some(("0,1,2,3", "--devices"))).unwrap_err().to_string();
        assert!(
            e.starts_with("--parallel 3 with nproc_per_node = 2 needs 6 GPUs, 2 to a run; --devices shows 4"),
            "{e}"
        );
        let threads_set = Slots::share(2, 1, None, (16, true)).unwrap().threads;
        assert_eq!(threads_set, None, "RAYON_NUM_THREADS set: left as it is");
    }
}
