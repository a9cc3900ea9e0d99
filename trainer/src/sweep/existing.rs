//! What the sweep's `out` (and the folder beside the sweep file) already holds, told in the plan: run
//! folders that train a planned run's config under another name (left by a sweep with other axes, which
//! `infinity scaling` would count twice), and a sweep whose runs lie beside the sweep file while `out`,
//! resolved from the current directory, points elsewhere.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::run::with_absolute_paths;
use super::{PlannedRun, SweepFile};
use crate::scaling::settings::leaves_the_result;
use crate::train::config::TrainConfig;

/// What makes two runs the same training: the config with `run.dir` left out, as text.
pub fn config_key(config: &TrainConfig) -> Result<String> {
    let mut c = config.clone();
    c.run.dir = PathBuf::new();
    // (the rate as its peak: a run planned with optim.lr_per_256 trains as one with that optim.lr)
    (c.optim.lr, c.optim.lr_per_256) = (Some(config.peak_lr()), None);
    Ok(toml::to_string(&c)?)
}

/// What makes two runs the same experiment: [`config_key`] but for the settings that leave a run's result
/// as it was (what it logs, validates how often, checkpoints and samples, where it runs: a run trained
/// with `val.every = 20` is the run a plan with 10 gives), one `key = value` line each.
fn result_key(config: &TrainConfig) -> Result<String> {
    let settings = crate::train::rundir::leaves(&config_key(config)?)?;
    let kept = settings.into_iter().filter(|(k, _)| k != "run.dir" && !leaves_the_result(k));
    Ok(kept.map(|(k, v)| format!("{k} = {v}\n")).collect())
}

/// The folders in `dir` that hold a run (a `config.toml`), in name order.
fn run_folders(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> =
        entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.join("config.toml").is_file()).collect();
    found.sort();
    found
}

/// The settings of an existing run folder, comparable with [`result_key`]'s (`None` when its
/// `config.toml` does not read as a config of this build).
fn folder_key(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.toml")).ok()?;
    let config: TrainConfig = toml::from_str(&with_absolute_paths(&text).ok()?).ok()?;
    result_key(&config).ok()
}

/// A warning for each folder in `out` that the plan does not name but that trains a planned run's
/// config: the runs are named after every axis, so adding one (`"run.seed" = [0, 1]`) renames them all,
/// and the old folders would stay beside the new ones that train the same again. And one for the
/// other run folders the plan does not name (another sweep's, or values since taken off an axis),
/// which `infinity scaling OUT` reads with this sweep's runs.
pub fn folders_in_out(out: &Path, runs: &[PlannedRun]) -> Result<(Vec<String>, Option<String>)> {
    let mut planned = std::collections::HashMap::new();
    for r in runs {
        // (planned runs that differ only in what leaves the result: the first stands for them)
        planned.entry(result_key(&r.config)?).or_insert(r);
    }
    let mut warnings = Vec::new();
    let mut unplanned = Vec::new();
    for dir in run_folders(out) {
        if runs.iter().any(|r| r.dir == dir) {
            continue;
        }
        let Some(r) = folder_key(&dir).and_then(|k| planned.get(&k).copied()) else {
            unplanned.push(dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
            continue;
        };
        let old = dir.file_name().unwrap_or_default().to_string_lossy();
        let advice = match r.dir.join("config.toml").is_file() {
            true => format!("remove one of them or move {old} out of {}", out.display()),
            false => format!(
                "rename {old} to {} (the sweep then continues it instead of training it again), or move it out of {}",
                r.name,
                out.display()
            ),
        };
        warnings.push(format!(
            "the folder {old} in out trains the same config as the planned run {} (but for what it logs, \
             checkpoints, samples or validates how often; the runs are named after every axis: were axes added?): \
             `infinity scaling` counts both; {advice}",
            r.name
        ));
    }
    let others = (!unplanned.is_empty()).then(|| {
        let shown = match unplanned.len() {
            n if n > 4 => format!("{}, … ({n} in all)", unplanned[..3].join(", ")),
            _ => unplanned.join(", "),
        };
        format!(
            "{} also holds {} this sweep does not plan ({shown}: another sweep's, or values taken off an axis): \
             `--status` lists this sweep's runs alone, while `infinity scaling {}` reads every run folder in it \
             (and fits runs together wherever their data and settings allow); give a new sweep an out of its own, or \
             move the folders it should not fit out of it",
            out.display(),
            crate::cli::plural(unplanned.len(), "run folder"),
            out.display()
        )
    });
    Ok((warnings, others))
}

/// A warning when `out` (relative, resolved from the current directory) does not exist but the folder
/// of that name beside the sweep file holds runs: the sweep would start afresh, away from them.
pub fn out_beside_the_file(path: &Path, sweep: &SweepFile, out: &Path) -> Option<String> {
    if sweep.out.is_absolute() || out.exists() {
        return None;
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (home, beside) =
        (lexical(&std::path::absolute(dir).ok()?), lexical(&std::path::absolute(dir.join(&sweep.out)).ok()?));
    let held = run_folders(&beside).len();
    (beside != lexical(out) && held > 0).then(|| {
        format!(
            "out = {:?} is resolved from the current directory: {} does not exist yet, so every run would start \
             afresh there, but {} holds {}: to continue those, run the sweep from {} (or make out absolute)",
            sweep.out.display().to_string(),
            out.display(),
            beside.display(),
            crate::cli::plural(held, "run folder"),
            home.display()
        )
    })
}

/// An absolute path with its `..` taken away lexically (`/a/b/../c` → `/a/c`), for comparing and naming.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// A run planned with `optim.lr_per_256` is the run an earlier plan wrote with the `optim.lr` it
    /// gives (the upstream presets gave their rates that way before).
    #[test]
    fn a_rate_per_256_samples_is_the_run_of_its_peak_rate() {
        let key = |batch: usize, rate: &str| {
            let text = format!(
                "[run]\ndir = \"r\"\nseed = 0\nsteps = 5\n[model]\npreset = \"tiny\"\nconditioning = \"class\"\n\
                 [data]\ndir = \"d\"\nglobal_batch = {batch}\nmicro_batch = 8\n[optim]\n{rate}\n"
            );
            super::config_key(&toml::from_str(&text).unwrap()).unwrap()
        };
        assert_eq!(key(128, "lr_per_256 = 6e-3"), key(128, "lr = 0.003"));
        assert_ne!(key(128, "lr_per_256 = 6e-3"), key(128, "lr = 0.006"));
        // at a batch that is no power of two too (6e-3 · 96 / 256 is 0.0022500000000000003 unrounded)
        assert_eq!(key(96, "lr_per_256 = 6e-3"), key(96, "lr = 0.00225"));
    }

    /// A run folder trained with settings that leave the result as it was (how often it validated,
    /// checkpointed, logged) is the planned run's, under another name; another seed is another run.
    #[test]
    fn a_run_validated_more_often_is_the_same_experiment_and_another_seed_is_not() {
        let key = |run: &str, val_every: u64, checkpoint: &str| {
            let text = format!(
                "[run]\ndir = \"r\"\n{run}\n[model]\npreset = \"tiny\"\nconditioning = \"class\"\n\
                 [data]\ndir = \"d\"\nglobal_batch = 16\nmicro_batch = 8\n[optim]\nlr = 1e-3\n\
                 [val]\ndir = \"v\"\nevery = {val_every}\n[checkpoint]\n{checkpoint}\n"
            );
            super::result_key(&toml::from_str(&text).unwrap()).unwrap()
        };
        let planned = key("seed = 0\nsteps = 5", 10, "");
        assert_eq!(planned, key("seed = 0\nsteps = 5\nlog_every = 7", 20, "every = 3"));
        assert_ne!(planned, key("seed = 1\nsteps = 5", 10, ""));
        assert_ne!(planned, key("seed = 0\nsteps = 6", 10, ""));
    }
}
