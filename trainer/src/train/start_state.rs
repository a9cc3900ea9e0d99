//! The state a run starts from: a checkpoint to resume (checked against the config, the model and the
//! dataset, the loader's position continued on it), or fresh weights from the run's seed, overlaid by
//! `model.init_from`'s ([`super::init_from`]).

use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Context, Result};
use infinity_data::loader::{LoaderState, MixState};
use infinity_data::{DataError, Dataset};

use super::checkpoint::TrainState;
use super::config::TrainConfig;
use super::dist::Dist;
use super::init_from::{init_from, InitSource};
use super::setup::unrecoverable;
use super::{checkpoint, keyed_seed, rundir, TrainOptions, STREAM_INIT};
use crate::model::init::init_params;
use crate::model::{Layout, ModelConfig, Params};
use crate::optim::AdamW;

/// A fresh start's random weights: `[model.init]`'s initialisation, scaled for μP where the run uses it.
pub fn fresh_weights(cfg: &TrainConfig, mc: &ModelConfig, lay: &Layout) -> Params<f32> {
    let mut p = init_params(mc, lay, &cfg.model.init, keyed_seed(cfg.run.seed, STREAM_INIT));
    if let Some(base) = cfg.model.mup() {
        crate::model::mup::rescale_init(&mut p, lay, mc, &base);
    }
    p
}

/// The checkpoint this session resumes from (none: a fresh start), once rank 0 holds the run's lock:
/// under `--resume auto` run.dir's newest ([`agreed_newest`]); an explicit step this run rewound to
/// before, with the same config, continues its history ([`repeated_rewind`]); else the one given.
pub(crate) fn resume_point(
    opts: &TrainOptions,
    run: &Path,
    config_toml: &str,
    ds: &Dataset,
    dist: &mut Dist,
) -> Result<Option<PathBuf>> {
    match (opts.resume_auto, opts.resume.as_deref()) {
        (true, given) => agreed_newest(run, given, dist),
        (false, Some(given)) => {
            Ok(Some(repeated_rewind(run, given, config_toml, ds, dist)?.unwrap_or_else(|| given.to_path_buf())))
        }
        (false, None) => Ok(None),
    }
}

/// `--resume auto` (or a restarted group): run.dir's newest complete checkpoint as rank 0 finds it now
/// that it holds the run's lock (a lost attempt may have written its stop's checkpoint while it waited),
/// else `given`, the same on every rank ([`seen_by_every_rank`]).
pub(crate) fn agreed_newest(run: &Path, given: Option<&Path>, dist: &mut Dist) -> Result<Option<PathBuf>> {
    let newest = dist.is_leader().then(|| auto_choice(run)).flatten();
    dist.tag("the newest checkpoint, after the run folder's lock");
    // (checkpoints are of steps from 1: 0 says there is none)
    let step = dist.broadcast_step(newest.as_deref().and_then(checkpoint::step_of).unwrap_or(0))?;
    if step == 0 {
        return Ok(given.map(Path::to_path_buf));
    }
    seen_by_every_rank(run, step, dist).map(Some)
}

/// `--resume auto`'s checkpoint (rank 0): the newest complete one, or the step of a rewind cut short since
/// it was written, which resuming there finishes ([`checkpoint::interrupted_rewind`]).
fn auto_choice(run: &Path) -> Option<PathBuf> {
    let newest = super::latest_checkpoint(run)?;
    let Some((step, folder)) = checkpoint::interrupted_rewind(run) else { return Some(newest) };
    tracing::warn!(
        "{} holds {}: a rewind to step {step} was cut short before it had set the later history aside; \
         --resume auto finishes it, resuming at step {step} (not at the newest checkpoint, {}, of the history it \
         sets aside)",
        folder.display(),
        checkpoint::UNFINISHED,
        newest.display()
    );
    Some(checkpoint::step_dir(run, step))
}

/// How long a rank waits for its view of the shared run folder to show what rank 0 wrote there (NFS
/// caches a folder's listing for a while): 30 s, or `INFINITY_SHARED_FOLDER_LAG_S` seconds (a mount
/// whose attribute cache holds longer), at most nine tenths of the group's collective timeout
/// (`dist.timeout_s`): rank 0 waits for the look in a collective, whose timeout would be a failure to
/// retry rather than this check's verdict.
fn shared_folder_lag(dist: &Dist) -> Duration {
    lag_of(std::env::var("INFINITY_SHARED_FOLDER_LAG_S").ok().as_deref(), dist.timeout)
}

/// [`shared_folder_lag`] of the variable's value `set` and the collective timeout `timeout`.
fn lag_of(set: Option<&str>, timeout: Duration) -> Duration {
    let set = set.and_then(|s| s.trim().parse::<f64>().ok()).and_then(|s| Duration::try_from_secs_f64(s).ok());
    // (alone, no collective waits: no bound)
    set.unwrap_or(Duration::from_secs(30)).min(timeout.checked_mul(9).map_or(timeout, |t| t / 10))
}

/// Every rank sees the run folder rank 0 holds, or every rank stops as the session starts (exit 2: a
/// restart would find the same). A run.dir on each node's own disk would train on unnoticed until the
/// first restart, which finds rank 0's checkpoint on no other node (its path may differ from node to
/// node: a shared file system mounted elsewhere, so the folders themselves are compared). Rank 0
/// writes a mark in it (`.ranks-see-N`), every rank looks for it (up to [`shared_folder_lag`]), and
/// rank 0 removes it once all have looked.
pub(crate) fn shared_by_every_rank(run: &Path, dist: &mut Dist) -> Result<()> {
    if dist.world == 1 {
        return Ok(());
    }
    let mark = |n: u64| run.join(format!(".ranks-see-{n:012x}"));
    // (40 bits, which a step's broadcast carries exactly: a mark of another session is never taken for it)
    let nonce = match dist.is_leader() {
        true => {
            let n = rand::random::<u64>() & ((1 << 40) - 1);
            std::fs::write(mark(n), b"").with_context(|| format!("writing {}", mark(n).display()))?;
            n
        }
        false => 0,
    };
    dist.tag("the run folder, seen by every rank");
    let path = mark(dist.broadcast_step(nonce)?);
    let (t0, lag) = (std::time::Instant::now(), shared_folder_lag(dist));
    while !path.exists() && t0.elapsed() < lag {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let missing = !path.exists();
    dist.tag("the run folder, seen by every rank");
    let any_missing = dist.any(missing)?;
    if dist.is_leader() {
        let _ = std::fs::remove_file(&path);
    }
    if !any_missing {
        return Ok(());
    }
    let who = match missing {
        true => format!(
            "rank {} does not see in run.dir {} the file rank 0 wrote there ({}) after {:.0} s",
            dist.rank,
            run.display(),
            path.file_name().unwrap_or_default().to_string_lossy(),
            lag.as_secs_f64()
        ),
        false => format!("another rank does not see the file rank 0 wrote in run.dir {}", run.display()),
    };
    Err(super::unrecoverable(anyhow::anyhow!(
        "{who}: run.dir must be one folder every rank sees (a shared file system; its path may differ from node \
         to node), or a restart finds rank 0's checkpoints on no other node (INFINITY_SHARED_FOLDER_LAG_S: a longer \
         wait, for a file system that shows new files later)"
    )))
}

/// `run`'s checkpoint of `step`, rank 0's choice, once every rank sees it complete: each waits up to
/// [`shared_folder_lag`] for it; where one never does, every rank stops (exit 2: a restart would find
/// the same), saying run.dir is not one shared folder.
fn seen_by_every_rank(run: &Path, step: u64, dist: &mut Dist) -> Result<PathBuf> {
    let lag = shared_folder_lag(dist);
    seen_within(run, step, dist, lag)
}

/// [`seen_by_every_rank`], each rank waiting up to `lag`.
fn seen_within(run: &Path, step: u64, dist: &mut Dist, lag: Duration) -> Result<PathBuf> {
    let dir = checkpoint::step_dir(run, step);
    let shown = || checkpoint::complete(run).iter().any(|(s, _)| *s == step);
    let t0 = std::time::Instant::now();
    while !shown() && t0.elapsed() < lag {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let missing = !shown();
    dist.tag("the newest checkpoint, after the run folder's lock");
    if dist.any(missing)? {
        let who = match missing {
            true => format!(
                "rank {} does not see rank 0's newest checkpoint {} after {:.0} s",
                dist.rank,
                dir.display(),
                lag.as_secs_f64()
            ),
            false => format!("another rank does not see rank 0's newest checkpoint {}", dir.display()),
        };
        // (folders that differ, past a shared folder's cache lag: a restart would find the same; exit 2)
        return Err(super::unrecoverable(anyhow::anyhow!(
            "{who}: run.dir must be one folder every rank sees (a shared file system), with the same checkpoints"
        )));
    }
    Ok(dir)
}

/// A rewind repeated: `--resume RUN/checkpoints/step-N` (this run folder's) where the folder's newest
/// checkpoint, of a step M > N, belongs to a history that already resumed at step N with this same
/// config (its state's `forked_at`, its config.toml): a requeued job whose command line names the step
/// it once rewound to. Resuming at N again would set that history aside only to compute the same steps
/// again (runs are deterministic), so the run continues from step M, saying so; another config (or a
/// checkpoint of another step) rewinds as asked. Rank 0 decides, every rank takes its step.
pub(crate) fn repeated_rewind(
    run: &Path,
    given: &Path,
    config_toml: &str,
    ds: &Dataset,
    dist: &mut Dist,
) -> Result<Option<PathBuf>> {
    let found = dist.is_leader().then(|| rewound_before(run, given, config_toml, Some(&ds.manifest))).flatten();
    dist.tag("a repeated rewind's newest checkpoint");
    let step = dist.broadcast_step(found.map_or(0, |(_, m)| m))?;
    if step == 0 {
        return Ok(None);
    }
    if let Some(found) = found {
        tracing::warn!("{}", rewound_before_note(run, given, found));
    }
    seen_by_every_rank(run, step, dist).map(Some)
}

/// `(N, M)` where resuming at `given`, step N of the run folder `run`, repeats a rewind
/// ([`repeated_rewind`]): the folder's newest checkpoint, step M > N, intact, is of a history that
/// resumed at N and has trained with the config `config_toml` since (its `forked_at`, which a session
/// with other settings or data drops, and its config.toml), on the dataset `dataset` where given (a
/// dataset mended since the history read it is a reason to rewind).
pub(crate) fn rewound_before(
    run: &Path,
    given: &Path,
    config_toml: &str,
    dataset: Option<&infinity_data::Manifest>,
) -> Option<(u64, u64)> {
    let n = checkpoint::step_of(given)?;
    let ours = checkpoint::run_folder_of(given).is_some_and(|f| f.canonicalize().ok() == run.canonicalize().ok());
    let newest = super::latest_checkpoint(run)?;
    let m = checkpoint::step_of(&newest).filter(|&m| m > n)?;
    let state = checkpoint::read_state(&newest).ok()?;
    // (this folder's step N, or another folder's checkpoint this run branched from: by the path where
    // it is pruned since)
    let same_place = |f: &Path| match (f.canonicalize(), given.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => std::path::absolute(given).is_ok_and(|g| g == f),
    };
    let branched = state.forked_from.as_deref().is_some_and(same_place);
    if !(ours || branched) {
        return None;
    }
    let config = std::fs::read_to_string(newest.join(checkpoint::CONFIG_FILE)).ok()?;
    let same_data = dataset.is_none_or(|d| d.fingerprint_matches(&state.loader.dataset));
    let repeated = state.forked_at == Some(n) && config == config_toml && same_data;
    // (a damaged newest checkpoint, whose error names step N as the way on, is not gone back to)
    (repeated && checkpoint::tensors_intact(&newest, &state)).then_some((n, m))
}

/// What run folder `run` says where it continues a rewind's or a branch's history ([`rewound_before`]'s
/// `(N, M)`).
pub(crate) fn rewound_before_note(run: &Path, given: &Path, (n, m): (u64, u64)) -> String {
    format!(
        "--resume {}: this run resumed at step {n} with this same config and data before and trained on to step \
         {m} since (a requeued command line?): continuing from step {m} rather than computing the same steps \
         again; to rewind to step {n} anyway, change a setting, or move the checkpoints after it out of {} \
         (into {})",
        given.display(),
        run.join("checkpoints").display(),
        run.join("abandoned").display()
    )
}

/// For a fresh start in a run folder that holds a run but no complete checkpoint (`--resume auto`, or a
/// group restarted before its first checkpoint), a line saying so: its logs are then rewritten from
/// step 0, which should not happen unsaid.
pub(crate) fn fresh_start_note(run: &Path) -> Option<String> {
    let logs = rundir::RUN_FILES.iter().any(|f| run.join(f).is_file());
    let (incomplete, _) = checkpoint::later_than(run, 0);
    let fresh = checkpoint::complete(run).is_empty() && (logs || !incomplete.is_empty());
    fresh.then(|| format!("no complete checkpoint in {}: starting fresh", run.display()))
}

/// Check that the saved loader `position` continues under `cfg` on the dataset `ds`; with
/// `accept_data_change` (`--accept-data-change`) a dataset changed since the checkpoint (a mended shard)
/// is taken, the position moved to it, and the warning that says so returned.
pub(crate) fn continue_position(
    position: &mut LoaderState,
    ds: &Dataset,
    cfg: &TrainConfig,
    accept_data_change: bool,
) -> Result<Option<String>> {
    let manifest = &ds.manifest;
    // (another tokenizer's dataset first: what `--accept-data-change` would be suggested for below)
    position.same_tokenizer(ds)?;
    let (mut warning, mut rows_changed) = (None, false);
    if accept_data_change && !manifest.fingerprint_matches(&position.dataset) {
        let changes = manifest.fingerprint_changes(&position.dataset).join("; ");
        let same_rows = position.same_buckets(ds);
        // (a position of a build before 2026-12-02 does not tell: its rows taken as changed, so that
        // `--rows-of-step` does not name rows the run may not have read)
        rows_changed = same_rows != Some(true);
        let order = match same_rows {
            Some(true) => "every bucket holds the same rows as before (a shard mended in place): it draws the \
                           batches it would have drawn, the mended rows as they are now"
                .to_string(),
            Some(false) => "the rows in its buckets changed (rows added, removed, of another schedule, or its shards \
                            listed in another order): the rest of this epoch follows the new dataset's order, \
                            which may draw some of its rows \
                            twice and others not at all"
                .to_string(),
            // a position saved by an earlier build does not record its buckets
            None => "where every bucket holds the same rows as before (a shard mended in place), in the order \
                     it would have drawn, the mended rows as they are now; otherwise the rest of this epoch \
                     follows the new dataset's order, which may draw some of its rows twice and others not at all"
                .to_string(),
        };
        *position = position.moved_to(ds)?;
        if rows_changed {
            position.rows_changed_at = Some(position.batches_done);
        }
        warning = Some(format!(
            "--accept-data-change: {} changed since the checkpoint ({changes}); the run goes on from its position \
             ({} batches drawn): {order}",
            cfg.data.folders(),
            position.batches_done
        ));
    }
    let (weights, phases) = (cfg.data.mix_weights(), cfg.data.mix_phases(cfg.run.steps));
    let mix = infinity_data::loader::mix_state(ds, cfg.data.global_batch, weights.as_deref(), &phases)?;
    // a mended mix whose datasets' sizes changed: their batches per epoch change with them (said; a
    // weight changed, or a dataset added or taken away, is refused below, as without the flag)
    let moved = match (&position.mix, &mix) {
        (Some(saved), Some(now)) if rows_changed && same_datasets(saved, now, position.batches_done) => {
            // (the first phase's and those of the phases begun)
            let done = position.batches_done;
            (saved.begun_batches(done) != now.begun_batches(done))
                .then(|| format!("{} → {}", saved.batches_text(done), now.batches_text(done)))
        }
        _ => None,
    };
    if let (Some(w), Some(change)) = (warning.as_mut(), moved) {
        w.push_str(&format!(
            "; the mix's batches per epoch of each dataset change with it, from here on: {change} (the other \
             datasets go on in their own order where they were)"
        ));
        // (what it drew with before stays: the batches before keep their datasets, and each its place)
        position.mix = mix.clone().map(|m| m.keeping_drawn(position.mix.as_ref()));
    }
    position.continues_with(manifest, cfg.run.seed, cfg.data.global_batch, mix.as_ref()).map_err(|e| {
        // a phase set by a share of run.steps moves with it: said where that is what changed (the same
        // phases, weights and all, at other starts)
        let moved = match (&position.mix, &mix) {
            (Some(saved), Some(now)) => {
                saved.phases.len() == now.phases.len()
                    && saved.phases.iter().zip(&now.phases).all(|(a, b)| a.weights == b.weights)
                    && saved.phases.iter().zip(&now.phases).any(|(a, b)| a.from != b.from)
            }
            _ => false,
        };
        let moving: Vec<String> = cfg
            .data
            .phases
            .iter()
            .enumerate()
            .filter(|(_, p)| p.from_step.is_none())
            .map(|(k, p)| p.start_key(k, cfg.run.steps))
            .collect();
        match e {
            DataError::Config(m) if moved && !moving.is_empty() => DataError::Config(format!(
                "{m}; {} moves with run.steps: a phase begun at the checkpoint cannot move, so resume with the \
                 run.steps it was begun under, or give the phase its start there as from_step",
                moving.join(", ")
            )),
            e => e,
        }
    })?;
    Ok(warning)
}

/// Whether two mixes draw the same datasets by the same weights up to global batch `done` (their
/// batches per epoch aside).
fn same_datasets(a: &MixState, b: &MixState, done: u64) -> bool {
    a.batches_per_epoch.len() == b.batches_per_epoch.len() && a.same_weights(b, done)
}

/// A checkpoint to resume from, as loaded and checked: its weights, optimiser and state (the loader's
/// position continued on the dataset as it is now), the settings that differ from the checkpoint's,
/// and what `--accept-data-change` continues from when the dataset changed.
pub(crate) struct Resumed {
    pub params: Params<f32>,
    pub opt: AdamW,
    pub state: TrainState,
    pub changes: Vec<String>,
    pub data_change: Option<String>,
}

/// The settings that shape the model's tensors, as `rundir::resume_changes` names them.
const SHAPE_KEYS: [&str; 11] = [
    "model.preset:",
    "model.depth:",
    "model.embed_dim:",
    "model.num_heads:",
    "model.mlp_ratio:",
    "model.conditioning:",
    "model.apply_spatial_patchify:",
    // (`rundir::dataset_changes`: the dataset's layout under the same config)
    "model.d (from the dataset",
    "model.num_classes (from the dataset",
    "model.text_channels (from the dataset",
    "model.text_maxlen (from the dataset",
];

/// Load checkpoint `dir` to resume `cfg` (whose resolved text is `config_toml`) on `ds` as `rank` of
/// `world` ranks (AdamW's moments: that rank's ZeRO-1 shard alone, [`moments_of`]), refusing what the
/// run cannot continue: another run's checkpoint into a run.dir holding a run of its own, a damaged
/// checkpoint, another model, a position this config or dataset cannot continue, and a resume that
/// would repeat a divergence. `train` and `--check` both come here, so the check
/// stops where the run would.
pub(crate) fn resume_from(
    dir: &Path,
    cfg: &TrainConfig,
    (mc, lay): (&ModelConfig, &Layout),
    config_toml: &str,
    (ds, (rank, world), accept_data_change): (&Dataset, (usize, usize), bool),
) -> Result<Resumed> {
    // (before the tensors are read: the step alone decides)
    if let Some(why) = checkpoint::saved_step(dir).and_then(|step| rundir::foreign_history(&cfg.run.dir, dir, step)) {
        return Err(unrecoverable(anyhow::anyhow!(why)));
    }
    let changes = rundir::resume_changes(dir, config_toml, mc)?;
    // a checkpoint of another shape lists its tensors: the settings that shape the model say why
    let shaping: Vec<&str> =
        changes.iter().filter(|c| SHAPE_KEYS.iter().any(|k| c.starts_with(k))).map(String::as_str).collect();
    let moments = moments_of(cfg, lay.numel, rank, world);
    let (params, opt, state, data_change) = checkpoint::load(dir, &cfg.run.dir, mc, lay, (&cfg.optim.adamw, moments))
        .map_err(|e| match shaping.is_empty() {
            true => e,
            false => e.context(format!("model settings changed since the checkpoint: {}", shaping.join("; "))),
        })
        .and_then(|(p, o, mut s)| {
            // (data.phases start at steps, which the loader counts as global batches: one a step)
            if !cfg.data.phases.is_empty() && s.loader.batches_done != s.step {
                anyhow::bail!(
                    "the checkpoint of step {} has drawn {} global batches, where data.phases takes one a step",
                    s.step,
                    s.loader.batches_done
                );
            }
            let moved = continue_position(&mut s.loader, ds, cfg, accept_data_change)?;
            Ok((p, o, s, moved))
        })
        .with_context(|| format!("resuming from {}", dir.display()))
        .map_err(unrecoverable)?;
    if data_change.is_none() {
        if let Some(why) = repeated_divergence(cfg, config_toml, Some(&changes), state.step, world) {
            return Err(super::stop::Diverged(why).into());
        }
    }
    Ok(Resumed { params, opt, state, changes, data_change })
}

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
        true => rundir::repeats_divergence(&cfg.run.dir, step, world),
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
    rundir::same_settings_since(&cfg.run.dir, step, world, unchanged)
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

/// What a resume on `world` ranks of a checkpoint written on `saved` ranks says, where they differ
/// (`resumed`: "resumed", or "would resume" for `--check`): the data order is global, so the run goes
/// on with the same samples, but its sums run in another order.
pub(crate) fn other_world_note(saved: Option<usize>, world: usize, resumed: &str) -> Option<String> {
    let saved = saved.filter(|&s| s != world)?;
    Some(format!(
        "written on {}, {resumed} on {world}: the same samples in the same order, summed in another order, so \
         not bit for bit the {saved}-rank run",
        crate::cli::plural(saved, "rank")
    ))
}

/// The parameters whose AdamW moments `rank` of `world` keeps: its ZeRO-1 shard (`dist.zero1`), else
/// all of them.
pub(crate) fn moments_of(cfg: &TrainConfig, numel: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    match cfg.dist.zero1 && world > 1 {
        true => super::dist::shard_range(numel, rank, world),
        false => 0..numel,
    }
}

/// What a run starts from: its weights and optimiser, the state a checkpoint saved (none on a fresh start)
/// and, on a fresh start from `model.init_from`, where the weights came from (for its checkpoints to keep).
pub(crate) struct Start {
    pub params: Params<f32>,
    pub opt: AdamW,
    pub saved: Option<TrainState>,
    pub init_from: Option<InitSource>,
}

/// The weights, optimiser and saved state the run starts from: the checkpoint `resume` names, or fresh
/// weights from the run's seed (rescaled under µP, overlaid by `model.init_from`, where they came from
/// returned for the run's checkpoints to keep) and a new optimiser.
pub(crate) fn starting_state(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    (mc, lay): (&ModelConfig, &Layout),
    config_toml: &str,
    (ds, rank, world): (&Dataset, usize, usize),
) -> Result<Start> {
    let leader = rank == 0;
    Ok(match opts.resume.as_deref() {
        Some(dir) => {
            // (the loader checks the position again; here before the run says it resumed)
            let r = resume_from(dir, cfg, (mc, lay), config_toml, (ds, (rank, world), opts.accept_data_change))?;
            let data_changed = r.data_change.is_some();
            if let Some(warning) = r.data_change.filter(|_| leader) {
                tracing::warn!("{warning}");
            }
            let ranks =
                other_world_note(r.state.world_size, world, "resumed").map(|n| format!(" ({n})")).unwrap_or_default();
            console!("resumed from {} at step {}{ranks}", dir.display(), r.state.step);
            if leader && !r.changes.is_empty() {
                let changes = r.changes.join("\n  ");
                tracing::warn!("resuming with settings that differ from the checkpoint's:\n  {changes}");
            }
            // (the history since a rewind goes on with other settings or data: no longer that rewind's)
            let mut state = r.state;
            if !r.changes.is_empty() || data_changed {
                (state.forked_at, state.forked_from) = (None, None);
            }
            Start { params: r.params, opt: r.opt, saved: Some(state), init_from: None }
        }
        None => {
            if let Some(why) = fresh_repeats_divergence(cfg, config_toml, &ds.manifest, world) {
                return Err(super::stop::Diverged(why).into());
            }
            if let Some(note) = fresh_start_note(&cfg.run.dir).filter(|_| leader) {
                console!("{note}");
            }
            let mut p = fresh_weights(cfg, mc, lay);
            let first = &ds.parts()[0];
            let started = init_from(cfg, (mc, lay), &mut p, (&first.dir, &first.manifest)).map_err(unrecoverable)?;
            if let Some(s) = &started {
                s.say(leader);
            }
            let init_from = started.map(|s| s.record);
            Start { params: p, opt: AdamW::new(cfg.optim.adamw.clone(), lay), saved: None, init_from }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rank that never sees rank 0's newest checkpoint in its run.dir stops every rank (exit 2),
    /// saying run.dir is not one shared folder; one that does goes on.
    #[test]
    fn a_checkpoint_a_rank_does_not_see_stops_the_run() {
        let run = tempfile::tempdir().unwrap();
        let e = seen_within(run.path(), 5, &mut Dist::solo(), Duration::ZERO).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("rank 0 does not see rank 0's newest checkpoint"), "{text}");
        assert!(text.contains("run.dir must be one folder every rank sees"), "{text}");
        assert!(e.downcast_ref::<super::super::setup::Unrecoverable>().is_some(), "not restarted (exit 2): {text}");
        let dir = checkpoint::step_dir(run.path(), 5);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(checkpoint::DONE), "").unwrap();
        assert_eq!(seen_within(run.path(), 5, &mut Dist::solo(), Duration::ZERO).unwrap(), dir);
    }

    /// The wait: 30 s, or the variable's seconds, below the collective timeout the other ranks wait in.
    #[test]
    fn the_shared_folder_wait_stays_below_the_collective_timeout() {
        let five_min = Duration::from_secs(300);
        assert_eq!(lag_of(None, five_min), Duration::from_secs(30));
        assert_eq!(lag_of(Some(" 90 "), five_min), Duration::from_secs(90));
        assert_eq!(lag_of(Some("1000"), five_min), Duration::from_secs(270));
        assert_eq!(lag_of(Some("1e30"), five_min), Duration::from_secs(30), "no duration: the default");
        assert_eq!(lag_of(Some("-1"), five_min), Duration::from_secs(30));
        assert_eq!(lag_of(Some("90"), Duration::MAX), Duration::from_secs(90), "alone: no bound");
    }
}
