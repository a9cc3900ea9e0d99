//! Checkpoints: `RUN/checkpoints/step-00000100/` holding
//! - `model.safetensors`: the weights (upstream names);
//! - `optim.safetensors`: the AdamW moments;
//! - `ema.safetensors`: the weights' moving average (upstream names), when `optim.ema_decay` keeps one;
//! - `state.json`: step, loader position, counters, checksums;
//! - `config.toml` and `model.json`: the run's config and the resolved model shape, so sampling and
//!   export need no dataset.
//!
//! Written into a temporary folder, each file fsynced, the folder renamed into place, and a `DONE`
//! marker written last: a folder without `DONE` is incomplete and ignored, so a crash or a full disk
//! mid-save never loses the previous checkpoint. A failed save removes what it wrote; pruning renames a
//! folder out of sight (`.tmp-step-N`) before deleting it, and removes such leftovers of an interrupted
//! save or prune.
//!
//! This module writes checkpoints; `history` finds, sets aside and prunes a run's checkpoints, and
//! `load` reads them back.

mod from_file;
mod history;
mod load;
mod weights;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use infinity_data::loader::LoaderState;
use infinity_data::manifest::sync_dir;
use serde::{Deserialize, Serialize};

use crate::model::io::{weight_tensors, SaveDtype};
use crate::model::streamed::{self, Lazy, Values};
use crate::model::{Layout, ModelConfig, Params};
use crate::optim::AdamW;

pub(crate) use from_file::export_of_own_file;
pub use from_file::{load_model_file, needs_config, ModelSpec};
pub use history::{
    complete, describe_later, interrupted_rewind, later_than, prune, set_aside_folder, set_aside_later, StepFiles,
    UNFINISHED,
};
pub use load::{load, load_ema, read_state, resolve, saved_step, tensors_intact};
pub use weights::{data_dir_of, ema_file, load_model, moving_average_of, weights_file, CheckpointModel};
pub(crate) use weights::{export_holding, is_checkpoints_average, recorded_crc};

/// The marker a complete checkpoint folder holds, written last.
pub const DONE: &str = "DONE";
/// The weights, under upstream names.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimiser state (AdamW's moments and step).
pub const OPTIM_FILE: &str = "optim.safetensors";
/// The weights' moving average, under upstream names.
pub const EMA_FILE: &str = "ema.safetensors";
/// [`TrainState`].
pub const STATE_FILE: &str = "state.json";
/// The run's config, as it was when the checkpoint was written.
pub const CONFIG_FILE: &str = "config.toml";
/// The resolved [`ModelConfig`].
const MODEL_JSON: &str = "model.json";
const STATE_VERSION: u32 = 1;
/// The name of a checkpoint folder being written or deleted (`.tmp-step-00000100`).
const TMP_PREFIX: &str = ".tmp-step-";

/// Everything besides tensors that a resumed run needs to continue bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    pub version: u32,
    /// Optimiser steps completed.
    pub step: u64,
    pub loader: LoaderState,
    /// Steps skipped for a non-finite loss or gradient norm, in total and in a row.
    pub skipped_steps: u64,
    pub nonfinite_run: u64,
    pub model_crc32c: String,
    pub optim_crc32c: String,
    /// Of `ema.safetensors`, when the checkpoint holds a moving average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_crc32c: Option<String>,
    /// Of `model.json`, which sample, eval and export build the model from (its `norm_eps`, …, shape no
    /// tensor): absent in the checkpoints of earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_json_crc32c: Option<String>,
    /// The losses and gradient norms the spike guard judges against (`optim.skip_loss_z`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_window: Option<super::spike::SpikeWindow>,
    /// Samples, tokens and training FLOPs so far, over all ranks (`metrics.jsonl`'s `*_seen`): absent in
    /// the checkpoints of earlier builds, and where they could not be recounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<super::seen::Seen>,
    /// Each validation set's dataset fingerprint (`val.dir`, `val.sets "NAME"`), so that a resume on a
    /// set rebuilt since is said: absent without validation and in the checkpoints of earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_sets: Option<std::collections::BTreeMap<String, String>>,
    /// The step this history began at by resuming there and setting the run's later checkpoints aside
    /// (a rewind), carried by every checkpoint of the history since while each session resumed with
    /// the same settings and data (one that changed either drops it): a repeated `--resume` of that step
    /// with the same config continues the history instead of rewinding again
    /// (`resume_point::repeated_rewind`). Absent where the history never rewound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_at: Option<u64>,
    /// Where the history began in another run folder (a branch: `--resume OTHER/checkpoints/step-N`
    /// into a new run.dir), that checkpoint's absolute path, with `forked_at` N: a requeue of the same
    /// command line continues the branch likewise. Absent for a history begun in its own folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<PathBuf>,
    /// The ranks of the session that wrote the checkpoint, so that a resume on another number is said
    /// (the same samples in the same order, summed in another order: not bit for bit). Absent in the
    /// checkpoints of earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// Where a fine-tuning run's first weights came from (`model.init_from`), carried by every
    /// checkpoint of the run. Absent for a run from a random initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<crate::train::init_from::InitSource>,
}

impl TrainState {
    /// The state of a run at step 0, its data stream at `loader`: no steps done or skipped, no
    /// checksums (and version 0: [`save`] stamps the version and checksums it writes).
    pub fn fresh(loader: LoaderState) -> TrainState {
        TrainState {
            version: 0,
            step: 0,
            loader,
            skipped_steps: 0,
            nonfinite_run: 0,
            model_crc32c: String::new(),
            optim_crc32c: String::new(),
            ema_crc32c: None,
            model_json_crc32c: None,
            spike_window: None,
            seen: Some(super::seen::Seen::default()),
            val_sets: None,
            forked_at: None,
            forked_from: None,
            world_size: None,
            init_from: None,
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", path.display()))
}

/// The run folder a checkpoint folder lies in (`RUN/checkpoints/step-N`), if it has one: a copy kept
/// elsewhere lies in another kind of folder, which has no run's logs.
pub fn run_folder_of(ckpt: &Path) -> Option<&Path> {
    ckpt.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"))?.parent()
}

pub fn step_dir(run: &Path, step: u64) -> PathBuf {
    step_folder(&run.join("checkpoints"), step)
}

/// The folder of the checkpoint of `step` in `folder` (a run's `checkpoints/`, or an abandoned history's).
pub fn step_folder(folder: &Path, step: u64) -> PathBuf {
    folder.join(format!("step-{step:08}"))
}

/// The step a checkpoint folder's name says (`step-00000100` → 100).
pub fn step_of(dir: &Path) -> Option<u64> {
    dir.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()
}

/// The tensors of one checkpoint: the weights, the whole optimiser state, the weights' moving average.
pub struct Tensors<'a> {
    pub params: &'a Params<f32>,
    pub opt: &'a AdamW,
    pub ema: Option<&'a Params<f32>>,
}

/// What a complete checkpoint's `DONE` marker holds: `state.json crc32c 0123abcd` (a build's before
/// 2026-12-05 wrote it empty).
fn done_record(state_json: &[u8]) -> String {
    format!("{STATE_FILE} crc32c {:08x}\n", crc32c::crc32c(state_json))
}

/// The `state.json` checksum a `DONE` marker records, if it records one and nothing else.
fn done_crc(done: &str) -> Option<&str> {
    match done.split_whitespace().collect::<Vec<_>>()[..] {
        [STATE_FILE, "crc32c", crc] if infinity_data::manifest::is_crc32c_text(crc) => Some(crc),
        _ => None,
    }
}

/// Write a complete checkpoint for `state.step`; returns its folder.
pub fn save(
    run: &Path,
    cfg: &ModelConfig,
    lay: &Layout,
    t: Tensors,
    state: TrainState,
    config_toml: &str,
) -> Result<PathBuf> {
    let root = run.join("checkpoints");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let final_dir = step_dir(run, state.step);
    let tmp = root.join(format!("{TMP_PREFIX}{:08}", state.step));
    let written = write_folder(&tmp, &final_dir, cfg, lay, t, state, config_toml);
    if written.is_err() {
        // a partial checkpoint holds the space a full disk lacks (the next log write would fail too);
        // a step folder without DONE is incomplete, also when this save failed after renaming it
        for dir in [&tmp, &final_dir].into_iter().filter(|d| d.is_dir() && !d.join(DONE).is_file()) {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!("could not remove the partial checkpoint {}: {e}", dir.display());
            }
        }
    }
    written.map(|_| final_dir)
}

/// [`save`]'s files into `tmp`, then `tmp` renamed to `final_dir` and marked complete.
fn write_folder(
    tmp: &Path,
    final_dir: &Path,
    cfg: &ModelConfig,
    lay: &Layout,
    t: Tensors,
    mut state: TrainState,
    config_toml: &str,
) -> Result<()> {
    let Tensors { params, opt, ema } = t;
    let _ = std::fs::remove_dir_all(tmp);
    std::fs::create_dir_all(tmp).with_context(|| format!("creating {}", tmp.display()))?;

    ensure!(opt.range == (0..lay.numel), "checkpoint: the optimiser state must be whole (gather ZeRO-1 shards first)");
    ensure!(
        opt.m.len() == lay.numel && opt.v.len() == lay.numel,
        "checkpoint: the optimiser state holds {} and {} moments for {} parameters (released on this rank?)",
        opt.m.len(),
        opt.v.len(),
        lay.numel
    );
    // the tensors go to the files as they are, a tensor at a time (model/streamed.rs)
    let crc = |c: u32| format!("{c:08x}");
    let weights = |p| weight_tensors(cfg, lay, p, SaveDtype::F32, 1);
    state.model_crc32c = crc(streamed::write_file(&tmp.join(MODEL_FILE), weights(params)?, None)?);
    // One metadata key: safetensors writes its metadata map in hash order, so several keys would make
    // the bytes of identical checkpoints differ between processes.
    let meta: HashMap<String, String> =
        [("adamw".to_string(), serde_json::json!({ "step": opt.step, "config": opt.cfg }).to_string())].into();
    let moments = vec![
        ("adamw.m".to_string(), Lazy { values: Values::F32(&opt.m), shape: vec![opt.m.len()] }),
        ("adamw.v".to_string(), Lazy { values: Values::F32(&opt.v), shape: vec![opt.v.len()] }),
    ];
    state.optim_crc32c = crc(streamed::write_file(&tmp.join(OPTIM_FILE), moments, Some(meta))?);
    state.version = STATE_VERSION;
    state.ema_crc32c = match ema {
        Some(ema) => Some(crc(streamed::write_file(&tmp.join(EMA_FILE), weights(ema)?, None)?)),
        None => None,
    };
    let model_json = serde_json::to_string_pretty(cfg)?;
    state.model_json_crc32c = Some(crc(crc32c::crc32c(model_json.as_bytes())));
    let state_json = serde_json::to_string_pretty(&state)?;
    write_synced(&tmp.join(STATE_FILE), state_json.as_bytes())?;
    write_synced(&tmp.join(CONFIG_FILE), config_toml.as_bytes())?;
    write_synced(&tmp.join(MODEL_JSON), model_json.as_bytes())?;
    sync_dir(tmp);
    // (a file under a step folder's name is no checkpoint of this run's: not deleted, named)
    if final_dir.metadata().is_ok_and(|m| !m.is_dir()) {
        bail!(
            "{} is a file, not a checkpoint folder: move it away (a run writes its step-N folders there)",
            final_dir.display()
        );
    }
    if final_dir.exists() {
        // unmarked first: a kill mid-delete must not leave a folder marked complete with files missing
        let _ = std::fs::remove_file(final_dir.join(DONE));
        std::fs::remove_dir_all(final_dir).with_context(|| format!("replacing {}", final_dir.display()))?;
    }
    std::fs::rename(tmp, final_dir).with_context(|| format!("renaming {} into place", tmp.display()))?;
    sync_dir(final_dir.parent().unwrap_or(final_dir));
    // (the marker holds state.json's checksum, as state.json holds the tensors': the position and step
    // a resume continues from are checked too)
    write_synced(&final_dir.join(DONE), done_record(state_json.as_bytes()).as_bytes())?;
    sync_dir(final_dir);
    Ok(())
}
