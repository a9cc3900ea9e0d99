//! The state a run starts from: a checkpoint to resume (checked against the config, the model and the
//! dataset, the loader's position continued on it), or fresh weights from the run's seed, overlaid by
//! `model.init_from`'s ([`super::init_from`]); and what a start records of the run folder's history (a
//! rewind, a branch, a diverged start set aside).

use std::path::Path;

use anyhow::{Context, Result};
use infinity_data::loader::{LoaderState, MixState};
use infinity_data::{DataError, Dataset};

use super::checkpoint::TrainState;
use super::config::TrainConfig;
use super::divergence::{fresh_repeats_divergence, repeated_divergence};
use super::init_from::{init_from, InitSource};
use super::resume_point::fresh_start_note;
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

/// What a resume of `run` from `resume` (rank 0, once nothing can refuse the run) records of its
/// history in `state` (`forked_at`, `forked_from`): a rewind to an earlier step of its own, or a branch
/// from another run folder's checkpoint, so that a requeue of the same command line (`named`: the
/// checkpoint it named) continues it; the folder's checkpoints after the step are set aside.
pub(crate) fn record_resume(
    run: &Path,
    state: &mut TrainState,
    resume: Option<&Path>,
    named: Option<&Path>,
) -> Result<()> {
    // (a rewind to this run's own step N that a session killed before its first checkpoint began: it
    // set the later history aside, which this session does not find again; its history is this one,
    // so that a requeue naming N continues it)
    let own_step =
        |p: &Path| checkpoint::run_folder_of(p).and_then(|f| f.canonicalize().ok()) == run.canonicalize().ok();
    let set_aside_before = run.join("abandoned").join(format!("after-step-{:08}", state.step)).is_dir();
    let started_here = rundir::summary_started_at(run) == Some(state.step);
    let as_named = named
        .zip(resume)
        .is_some_and(|(n, r)| n.canonicalize().ok().is_some_and(|n| r.canonicalize().ok() == Some(n)) && own_step(r));
    if set_aside_before && started_here && as_named {
        (state.forked_at, state.forked_from) = (Some(state.step), None);
    }
    // a branch: a new run from another run folder's checkpoint, which its checkpoints name, so that a
    // requeue of the same command line continues the branch too
    let branched_from = resume.filter(|r| !own_step(r)).and_then(|r| std::path::absolute(r).ok());
    if branched_from.is_some() {
        (state.forked_at, state.forked_from) = (Some(state.step), branched_from.clone());
    }
    // a new history from an earlier checkpoint (or a branch begun again): the later ones would be
    // taken for its newest
    if let Some((dir, what)) = checkpoint::set_aside_later(run, state.step)? {
        (state.forked_at, state.forked_from) = (Some(state.step), branched_from);
        tracing::warn!(
            "resuming at step {} where this run folder has {what}: they are of the history this run \
             replaces; moved to {}",
            state.step,
            dir.display()
        );
    }
    Ok(())
}

/// A fresh start of `run` (rank 0) after a divergence before the first checkpoint (with other settings:
/// the same are refused before) sets the diverged session's logs, grids and summary.json aside.
pub(crate) fn set_aside_a_diverged_start(run: &Path) -> Result<()> {
    if !(rundir::summary_says(run, "diverged") && checkpoint::complete(run).is_empty()) {
        return Ok(());
    }
    // (as a rewind's are, with its summary.json, which would otherwise say "diverged", and refuse a plain
    // restart of this session, until this session's first checkpoint)
    if let Some((dir, what)) = checkpoint::set_aside_later(run, 0)? {
        let (from, to) = (run.join("summary.json"), dir.join("summary.json"));
        std::fs::rename(&from, &to).with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        tracing::warn!("starting afresh where this run folder has {what}: moved to {}", dir.display());
    }
    Ok(())
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
        true => super::zero1::shard_range(numel, rank, world),
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
