//! Refusing a start that repeats a divergence: a run is a pure function of its config, world size, data
//! and build, so a session that starts where a diverged one did, with the settings that diverged (but
//! for what is only logged, checkpointed, sampled or validated), diverges at the same step. `summary.json`
//! records where a session started and since when its settings have been the same
//! (`same_settings_since`), so a divergence after several plain restarts is refused from each of their
//! checkpoints.

use std::path::Path;

use super::config::TrainConfig;
use super::rundir;

/// Whether a start at `step` on `world` ranks repeats the divergence `run.dir`'s `summary.json` records at
/// a later step, with the settings it diverged with (RUN/config.toml, which that session wrote as it
/// began; without one, `changes` since the checkpoint) but for what is only logged, checkpointed, sampled
/// or validated (and on a resume, the initialisation's settings, which the checkpoint's weights replace):
/// its message, or `None`. A divergence that came with a setting changed on its resume repeats with
/// that setting, not with the checkpoint's; a fresh start (`changes` none: [`fresh_repeats_divergence`])
/// is judged by RUN/config.toml alone.
pub(crate) fn repeated_divergence(
    cfg: &TrainConfig,
    config_toml: &str,
    changes: Option<&[String]>,
    step: u64,
    world: usize,
) -> Option<String> {
    let diverged_with = std::fs::read_to_string(cfg.run.dir.join("config.toml")).ok();
    let since = diverged_with.and_then(|t| rundir::config_changes(&t, config_toml).ok());
    let changed = since.as_deref().or(changes)?;
    match leave_the_steps(changed, changes.is_some()) {
        true => recorded_divergence_repeats(&cfg.run.dir, step, world),
        false => None,
    }
}

/// Whether config changes (`key: old → new` lines) leave a run's steps as they were: only what is logged,
/// checkpointed, sampled or validated, and on a resume (`resuming`) the initialisation, which the
/// checkpoint's weights replace.
fn leave_the_steps(changes: &[String], resuming: bool) -> bool {
    changes.iter().all(|c| {
        let key = c.split(':').next().unwrap_or(c);
        let section = key.split('.').next().unwrap_or(key);
        matches!(section, "checkpoint" | "sample" | "val")
            || matches!(key, "run.log_every" | "run.peak_tflops" | "run.stall_timeout_s" | "run.gpu_memory_check")
            || matches!(key, "data.workers")
            || (resuming && key.starts_with("model.init"))
    })
}

/// The step from which a session resuming at `step` on `world` ranks with `config_toml` trains the run as
/// the sessions before it did (summary.json's `same_settings_since`): the last session's value where it
/// ran with these settings (RUN/config.toml, which it wrote as it began, differing only in what leaves
/// the steps), on as many ranks, with this build, did not diverge and had reached `step` with them; else
/// `step`. A plain restart (a preemption, the launcher's) keeps it, so a divergence after several is
/// refused from every checkpoint those settings wrote.
pub(crate) fn same_settings_since(cfg: &TrainConfig, config_toml: &str, step: u64, world: usize) -> u64 {
    let before = std::fs::read_to_string(cfg.run.dir.join("config.toml")).ok();
    let changes = before.and_then(|t| rundir::config_changes(&t, config_toml).ok());
    let unchanged = changes.is_some_and(|c| leave_the_steps(&c, true));
    recorded_same_settings_since(&cfg.run.dir, step, world, unchanged)
}

/// Whether a fresh start on `world` ranks, of `cfg` on the dataset `data`, repeats a divergence before
/// the first checkpoint that `run.dir`'s `summary.json` records ([`repeated_divergence`]): judged only
/// where the dataset is the one `RUN/derived.json` records (one rebuilt in place trains other steps).
pub(crate) fn fresh_repeats_divergence(
    cfg: &TrainConfig,
    config_toml: &str,
    data: &infinity_data::Manifest,
    world: usize,
) -> Option<String> {
    let derived = std::fs::read_to_string(cfg.run.dir.join("derived.json")).ok()?;
    let derived: serde_json::Value = serde_json::from_str(&derived).ok()?;
    data.fingerprint_matches(derived["dataset"]["fingerprint"].as_str()?).then_some(())?;
    repeated_divergence(cfg, config_toml, None, 0, world)
}

/// Whether the summary `s` was written by this build (one of an earlier build records none: taken as this).
fn same_build(s: &serde_json::Value) -> bool {
    let this_build = super::rank_identity::this_rank().build.to_string();
    s["build"].as_str().is_none_or(|b| b == this_build)
}

/// `summary.json`'s `same_settings_since` for a session resuming `run` at `step` on `world` ranks, its
/// settings `unchanged` from the last session's: that session's value (its `started_at` in summaries
/// of earlier builds) where it ran on as many ranks with this build, did not diverge, and had these
/// settings at `step` already; else `step`.
fn recorded_same_settings_since(run: &Path, step: u64, world: usize, unchanged: bool) -> u64 {
    let Some(s) = rundir::read_summary(run) else { return step };
    let since = s["same_settings_since"].as_u64().or(s["started_at"].as_u64());
    let alike = unchanged && s["diverged"] != true && s["world_size"].as_u64() == Some(world as u64) && same_build(&s);
    since.filter(|&since| alike && since <= step).unwrap_or(step)
}

/// Whether resuming `run` from the checkpoint of `step` on `world` ranks, with the settings the diverged
/// session had but what is only logged, checkpointed, sampled or validated (the caller knows) and the
/// same dataset, repeats a divergence its `summary.json` records at a later step: a run is a pure
/// function of its config, world size, data and build, so from any step trained with those settings
/// (`same_settings_since` on: the diverged session's start, or an earlier plain restart's) it would
/// diverge at the same step. A checkpoint from before is not judged: the steps between (another
/// session's, perhaps with other settings) may have been what led there. The message saying so, or `None`.
fn recorded_divergence_repeats(run: &Path, step: u64, world: usize) -> Option<String> {
    let s = rundir::read_summary(run).filter(|s| s["diverged"] == true)?;
    let at = s["step"].as_u64().filter(|&at| at > step)?;
    // (a summary of an earlier build records no start: taken as a fresh start's)
    if step < s["same_settings_since"].as_u64().or(s["started_at"].as_u64()).unwrap_or(0) {
        return None;
    }
    let same_build = same_build(&s);
    let (again, then) = match step {
        0 => ("starting it again (it wrote no checkpoint before)".to_string(), "start again"),
        _ => (format!("resuming from step {step}"), "resume"),
    };
    (s["world_size"].as_u64() == Some(world as u64) && same_build).then(|| {
        format!(
            "{}: this run diverged at step {at} (its summary.json), and {again} with the same \
             settings and {} repeats it step for step; change what diverged (optim.lr, optim.clip, \
             optim.warmup_steps, the spike guard optim.skip_loss_z / skip_grad_z) and {then}, or train into a new \
             run.dir",
            run.display(),
            crate::cli::plural(world, "rank")
        )
    })
}
