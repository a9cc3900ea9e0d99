//! What the run folder records about the run besides its logs: `summary.json`, where the run stands
//! (rewritten when a session resumes, at each complete checkpoint and when the session ends), and
//! `derived.json`, the sizes its config implies.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use infinity_data::loader::LoaderState;
use infinity_data::Dataset;
use serde_json::json;

use super::checkpoint::{self, TrainState};
use super::config::TrainConfig;
use super::token_mix::TokenMix;
use super::{rundir, TrainSummary};
use crate::model::{Layout, ModelConfig};

/// `summary.json`: where the run stands.
pub(super) const SUMMARY_FILE: &str = "summary.json";

/// Write `name` into the run folder, atomically.
pub(super) fn write_run_file(run: &Path, name: &str, text: &str) -> Result<()> {
    let p = run.join(name);
    infinity_data::manifest::write_atomic(&p, text.as_bytes())
        .with_context(|| format!("writing {} (run folder not writable or disk full?)", p.display()))
}

/// The loss and bit accuracy at `step` of a run resumed from the checkpoint `resume`, and its last
/// validation up to it, from `run`'s logs, or where they have none (a checkpoint of another run folder,
/// this one new) from the logs of the folder that holds the checkpoint.
fn figures_at(run: &Path, resume: Option<&Path>, step: u64) -> ((f64, f64), Option<(u64, f64)>) {
    let source = resume.and_then(checkpoint::run_folder_of);
    let metrics = rundir::finished_metrics(run, step).or_else(|| rundir::finished_metrics(source?, step));
    let val = rundir::last_val(run, step).or_else(|| rundir::last_val(source?, step));
    (metrics.unwrap_or((f64::NAN, f64::NAN)), val)
}

/// The session's [`TrainSummary`], which every rank keeps (`train` returns it) and rank 0 writes to
/// `summary.json`.
pub(super) struct SummaryFile<'a> {
    summary: TrainSummary,
    run: &'a Path,
    cfg: &'a TrainConfig,
    world: usize,
    /// Rank 0: the one rank that writes `summary.json` (the others only keep the summary).
    leader: bool,
    /// When the session's first step started (`seconds_this_session`).
    started: Instant,
}

impl<'a> SummaryFile<'a> {
    pub(super) fn new(run: &'a Path, cfg: &'a TrainConfig, world: usize, leader: bool) -> SummaryFile<'a> {
        // (a fresh start has no loss yet: null in summary.json)
        let summary = TrainSummary { last_loss: f64::NAN, last_bit_acc: f64::NAN, ..TrainSummary::default() };
        SummaryFile { summary, run, cfg, world, leader, started: Instant::now() }
    }

    /// A run already at its last step (a finished run resubmitted, by `--resume auto` in a sweep or a
    /// SLURM array, from the checkpoint `resume`): nothing to train, and the summary it finished with,
    /// which `summary.json` keeps (rewritten only when it records another step).
    pub(super) fn nothing_to_train(self, state: &TrainState, resume: Option<PathBuf>) -> Result<TrainSummary> {
        let ((last_loss, last_bit_acc), _) = figures_at(self.run, resume.as_deref(), state.step);
        let summary = TrainSummary {
            steps: state.step,
            started_at: state.step,
            same_settings_since: state.step,
            last_loss,
            last_bit_acc,
            skipped_steps: state.skipped_steps,
            last_checkpoint: resume,
            ..TrainSummary::default()
        };
        if self.leader && rundir::summary_step(self.run) != Some(state.step) {
            self.write(&summary)?;
        } else if self.leader {
            // (a session killed between writing the summary and renaming it over `summary.json` left its
            // temporary file, which no later write of this run replaces)
            let _ = std::fs::remove_file(infinity_data::manifest::temporary_path(&self.run.join("summary.json")));
        }
        Ok(summary)
    }

    /// A session resumed from the checkpoint `resume`, at `state`: `summary.json` says where the run
    /// stands at every moment, so no longer where an earlier session stopped (preempted, say), but at
    /// the checkpoint this session starts from. (A fresh start writes none before its first checkpoint:
    /// `infinity scaling` and sweeps take a run without one for one not yet summarised.)
    pub(super) fn resumed(
        &mut self,
        state: &TrainState,
        resume: Option<PathBuf>,
        same_settings_since: u64,
    ) -> Result<()> {
        (self.summary.started_at, self.summary.same_settings_since) = (state.step, same_settings_since);
        if !self.leader {
            return Ok(());
        }
        let ((loss, bit_acc), val) = figures_at(self.run, resume.as_deref(), state.step);
        let s = &mut self.summary;
        (s.steps, s.skipped_steps, s.last_checkpoint) = (state.step, state.skipped_steps, resume);
        (s.last_loss, s.last_bit_acc) = (loss, bit_acc);
        (s.last_val_step, s.last_val_loss) = val.unzip();
        self.write(&self.summary)
    }

    /// Rank 0: the text of `summary.json` for where the run stands now, at `state` (before the first step:
    /// the checkpoint resumed from, or a fresh start).
    pub(super) fn text_at(&self, state: &TrainState) -> Result<Option<String>> {
        if !self.leader {
            return Ok(None);
        }
        let now = TrainSummary { steps: state.step, skipped_steps: state.skipped_steps, ..self.summary.clone() };
        self.text(&now).map(Some)
    }

    /// The session's first step starts now (its `seconds_this_session` count from here).
    pub(super) fn start_clock(&mut self) {
        self.started = Instant::now();
    }

    /// Seconds since the session's first step started.
    pub(super) fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// A step's loss and bit accuracy (over the ranks).
    pub(super) fn stepped(&mut self, loss: f64, bit_acc: f64) {
        (self.summary.last_loss, self.summary.last_bit_acc) = (loss, bit_acc);
    }

    /// A held-out validation's loss, at `step`.
    pub(super) fn validated(&mut self, step: u64, loss: f64) {
        (self.summary.last_val_loss, self.summary.last_val_step) = (Some(loss), Some(step));
    }

    /// A checkpoint of `state` about to be saved into `dir`: rank 0 gets the text of its `summary.json`,
    /// which the checkpoint's writer puts down once the checkpoint is complete and before it prunes older
    /// ones, so the file never names a checkpoint that is not there (nor one still being written).
    /// `tensorboard_failed_writes`: rank 0's logger's count so far.
    pub(super) fn for_checkpoint(
        &mut self,
        state: &TrainState,
        dir: PathBuf,
        tensorboard_failed_writes: u64,
    ) -> Result<Option<String>> {
        if !self.leader {
            match self.cfg.checkpoint.background {
                // rank 0 writes it in the background: not known here to be complete (see `finish`)
                true => self.summary.unconfirmed_checkpoint = Some(state.step),
                // in the step loop, with a barrier after it: rank 0 has written it
                false => self.summary.last_checkpoint = Some(dir),
            }
            return Ok(None);
        }
        self.summary.last_checkpoint = Some(dir);
        let at_checkpoint = TrainSummary {
            steps: state.step,
            skipped_steps: state.skipped_steps,
            seconds: self.seconds(),
            tensorboard_failed_writes,
            ..self.summary.clone()
        };
        self.text(&at_checkpoint).map(Some)
    }

    /// `failed` checkpoint writes failed this session so far, training going on
    /// (`checkpoint.failed_writes_tolerated`): the last checkpoint named is the newest complete one.
    pub(super) fn checkpoint_writes_failed(&mut self, failed: u64) {
        if failed > self.summary.checkpoint_failed_writes {
            self.summary.checkpoint_failed_writes = failed;
            self.summary.last_checkpoint = super::latest_checkpoint(self.run);
        }
    }

    /// Stopped by a signal (its checkpoint is written next).
    pub(super) fn preempted(&mut self) {
        self.summary.preempted = true;
    }

    pub(super) fn is_preempted(&self) -> bool {
        self.summary.preempted
    }

    /// Stopped by `optim.max_nonfinite` non-finite steps at `state`, with `newest` the last complete
    /// checkpoint: `infinity scaling` and sweeps see the run as diverged, not as one that never ran.
    pub(super) fn diverged(
        &mut self,
        state: &TrainState,
        newest: Option<PathBuf>,
        tensorboard_failed_writes: u64,
    ) -> Result<()> {
        if !self.leader {
            return Ok(());
        }
        let seconds = self.seconds();
        let s = &mut self.summary;
        (s.steps, s.last_checkpoint, s.diverged) = (state.step, newest, true);
        (s.skipped_steps, s.seconds) = (state.skipped_steps, seconds);
        s.tensorboard_failed_writes = tensorboard_failed_writes;
        self.write(&self.summary)
    }

    /// The session's end at `state` (rank 0's last checkpoint on disk): the summary `train` returns, and
    /// rank 0's last `summary.json`. Another rank names its last checkpoint, or with background writes
    /// (which it does not wait for: `unconfirmed_checkpoint`) the newest complete in `run.dir` as it
    /// stops.
    pub(super) fn finish(mut self, state: &TrainState, tensorboard_failed_writes: u64) -> Result<TrainSummary> {
        let seconds = self.seconds();
        let s = &mut self.summary;
        (s.steps, s.skipped_steps, s.seconds) = (state.step, state.skipped_steps, seconds);
        if self.leader {
            s.tensorboard_failed_writes = tensorboard_failed_writes;
            if s.checkpoint_failed_writes > 0 {
                // (a failed write named: the newest on disk, the session's last write done)
                s.last_checkpoint = super::latest_checkpoint(self.run);
            }
            self.write(&self.summary)?;
        } else if s.unconfirmed_checkpoint.is_some() {
            // (as this host sees run.dir: on nodes without a shared file system, none)
            let newest = checkpoint::complete(self.run).pop();
            s.unconfirmed_checkpoint = s.unconfirmed_checkpoint.filter(|&u| newest.as_ref().is_none_or(|n| n.0 < u));
            s.last_checkpoint = newest.map(|n| n.1);
        }
        Ok(self.summary)
    }

    fn write(&self, summary: &TrainSummary) -> Result<()> {
        write_run_file(self.run, SUMMARY_FILE, &self.text(summary)?)
    }

    /// `summary.json`'s text for `summary`.
    fn text(&self, summary: &TrainSummary) -> Result<String> {
        Ok(serde_json::to_string_pretty(&summary_record(summary, self.cfg, self.world))?)
    }
}

/// `summary.json`'s record of `summary`.
fn summary_record(summary: &TrainSummary, cfg: &TrainConfig, world: usize) -> serde_json::Value {
    // (absolute, as config.toml's paths: the summary is read from other folders)
    let last_checkpoint =
        summary.last_checkpoint.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    json!({
        "step": summary.steps, "loss": summary.last_loss, "bit_acc": summary.last_bit_acc,
        "skipped_steps": summary.skipped_steps, "seconds_this_session": summary.seconds,
        "last_checkpoint": last_checkpoint, "finished": summary.steps >= cfg.run.steps && !summary.diverged,
        "preempted": summary.preempted, "diverged": summary.diverged, "world_size": world,
        // (the step this session started from, and since which the run trained with its settings: a
        // divergence repeats from there on, not from before)
        "started_at": summary.started_at,
        "same_settings_since": summary.same_settings_since,
        "val_loss": summary.last_val_loss, "val_step": summary.last_val_step,
        "tensorboard_failed_writes": summary.tensorboard_failed_writes,
        "checkpoint_failed_writes": summary.checkpoint_failed_writes,
        // (what trained it: a resume of a diverged run with another build is not refused)
        "build": super::rank_identity::this_rank().build.to_string(),
    })
}

/// `derived.json`: the sizes the config implies for the model `mc` of layout `lay`, trained by
/// `world` ranks in `accum` micro-steps of `micro_batch` samples, on `ds`, drawn from `position` (its
/// earlier global batch sizes, where a resume changed it)
/// batch sizes where a resume changed it.
pub(super) fn derived_record(
    cfg: &TrainConfig,
    ds: &Dataset,
    (mc, lay): (&ModelConfig, &Layout),
    (mix, position): (&TokenMix, &LoaderState),
    (accum, micro_batch, world): (usize, usize, usize),
) -> Result<serde_json::Value> {
    let data_dir = std::path::absolute(&cfg.data.dir).unwrap_or_else(|_| cfg.data.dir.clone());
    let mut record = json!({
        "parameters": lay.numel,
        "parameters_non_embedding": lay.non_embedding_numel(),
        "model": mc,
        "grad_accumulation": accum,
        "micro_batch": micro_batch,
        "world_size": world,
        // over the batches the run draws (each schedule by its batches per epoch)
        "tokens_per_step_mean": mix.mean_tokens * cfg.data.global_batch as f64,
        "train_flops_per_token": mix.flops_per_token,
        "train_flops_per_step_mean": mix.mean_flops * cfg.data.global_batch as f64,
        "dataset": { "dir": data_dir, "rows": ds.num_rows(), "fingerprint": ds.manifest.fingerprint() },
    });
    if ds.parts().len() > 1 {
        record["mix"] = mix_record(cfg, ds, mix);
    }
    if !position.earlier_sizes.is_empty() {
        // (the per-step figures above are the present size's; a run's tokens and compute sum these)
        let size = |global_batch: usize, from_step: u64, mix: &TokenMix| {
            json!({
                "global_batch": global_batch,
                "from_step": from_step,
                "tokens_per_step_mean": mix.mean_tokens * global_batch as f64,
                "train_flops_per_step_mean": mix.mean_flops * global_batch as f64,
            })
        };
        // (each over its own steps: a mix's phases by their steps there)
        let mut sizes = Vec::new();
        for (from, until, g) in position.size_spans(cfg.run.steps) {
            sizes.push(size(g, from, &TokenMix::at_size(mc, ds, cfg, g, (from, until))?));
        }
        record["global_batch_sizes"] = serde_json::Value::Array(sizes);
    }
    if !cfg.data.phases.is_empty() {
        let phases = cfg.data.phases.iter().zip(&mix.phase_quotas).map(|(p, (from, quotas))| {
            let mut phase = json!({ "from_step": from, "weights": p.weights, "batches_per_epoch": quotas });
            if let Some(f) = p.from_fraction {
                phase["from_fraction"] = json!(f);
            }
            phase
        });
        record["mix_phases"] = serde_json::Value::Array(phases.collect());
    }
    Ok(record)
}

/// Each dataset of a mix: its folder, rows, weight and global batches per epoch.
fn mix_record(cfg: &TrainConfig, ds: &Dataset, mix: &TokenMix) -> serde_json::Value {
    let weights = cfg.data.mix_weights();
    let parts: Vec<serde_json::Value> = ds
        .parts()
        .iter()
        .enumerate()
        .map(|(p, part)| {
            json!({
                "dir": std::path::absolute(&part.dir).unwrap_or_else(|_| part.dir.clone()),
                "rows": part.rows.end - part.rows.start,
                "weight": weights.as_ref().map(|w| w[p]),
                "batches_per_epoch": mix.quotas[p],
            })
        })
        .collect();
    serde_json::Value::Array(parts)
}
