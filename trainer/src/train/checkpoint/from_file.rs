//! A bare weights file as a model for `infinity sample` and `infinity export`: safetensors, upstream's
//! PyTorch `.pth` (its released weights, or its training checkpoint with the moving average), or an
//! index of several files. Such a file records no model, so its shape comes from the training config it
//! goes with (`--config`, read as `infinity train` reads it) and that config's dataset (or `--data`):
//! the bits per token, the condition and the schedules, as a run builds its model.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use infinity_data::Manifest;

use super::load::{moving_average_of, weights_file, CheckpointModel};
use super::{DONE, STATE_FILE};
use crate::export::read_export;
use crate::model::io::load_state_dict;
use crate::model::weight_shards::index_in;
use crate::model::Layout;
use crate::train::config::TrainConfig;

/// The training config a weights file goes with: the file, its `--set` overrides, and the dataset
/// folder that replaces its `data.dir` (`--data`).
pub struct ModelSpec<'a> {
    pub config: &'a Path,
    pub overrides: &'a [String],
    pub data: Option<&'a Path>,
}

/// The model of weights `path` shaped by `spec`, every tensor checked against it (names, shapes, none
/// missing); with `ema`, the moving average upstream's training checkpoint keeps beside the weights.
/// `data_dir` is the dataset the model was built for; the step is unknown.
pub fn load_model_file(path: &Path, spec: &ModelSpec, ema: bool) -> Result<CheckpointModel> {
    if let Some(holder) = model_holder(path) {
        bail!("{}: {holder}, which records its model: leave --config (and --set) out", path.display());
    }
    let config = spec.config;
    let cfg = TrainConfig::load(config, spec.overrides).with_context(|| format!("--config {}", config.display()))?;
    let data_dir = spec.data.map_or_else(|| cfg.data.dir.clone(), Path::to_path_buf);
    let m = Manifest::load(&data_dir).with_context(|| {
        format!(
            "the dataset {} (its bits per token, condition and schedules shape the model; pass --data)",
            data_dir.display()
        )
    })?;
    let model = cfg
        .model_for(&m)
        .with_context(|| format!("--config {} with the dataset {}", config.display(), data_dir.display()))?;
    let (file, which) = match ema {
        false => weights_file(path, false)?,
        true => moving_average_of(path)?.ok_or_else(|| {
            anyhow!(
                "--ema: {} holds one set of weights, no moving average: leave --ema out to take them (upstream's \
                 training checkpoint, ar-ckpt*.pth, keeps one as trainer.gpt_ema_fsdp)",
                path.display()
            )
        })?,
    };
    let lay = Layout::new(&model);
    let params = load_state_dict(&file, which, &model, &lay).with_context(|| {
        format!(
            "{} against the model of --config {} (model.preset {}: depth {}, width {}, {} heads; d {} from the \
             dataset)",
            file.display(),
            config.display(),
            cfg.model.preset,
            model.depth,
            model.embed_dim,
            model.num_heads,
            model.d
        )
    })?;
    let ema_decay = (ema && cfg.optim.ema_decay > 0.0).then_some(cfg.optim.ema_decay);
    let dir = path.to_path_buf();
    Ok(CheckpointModel { dir, model, data_dir, params, step: None, precision: cfg.run.precision, ema_decay })
}

/// What `path` is where it records its model (a checkpoint, a run folder, an export folder), in words.
fn model_holder(path: &Path) -> Option<&'static str> {
    if read_export(path).is_some() {
        Some("an `infinity export` folder")
    } else if path.join(DONE).is_file() || path.join(STATE_FILE).is_file() {
        Some("a checkpoint folder")
    } else if path.is_dir() && !super::complete(path).is_empty() {
        Some("a run folder")
    } else {
        None
    }
}

/// Where `path` is a weights file (or a folder of files with an index) given without `--config`: the
/// error saying what to add. `None` for anything else (a checkpoint, run or export folder, or a file
/// inside one, which [`super::resolve`] names).
pub fn needs_config(path: &Path) -> Option<anyhow::Error> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let inside_a_model = read_export(parent).is_some() || parent.join(DONE).is_file();
    let indexed_folder = || model_holder(path).is_none() && matches!(index_in(path), Ok(Some(_)));
    let bare = if path.is_file() { !inside_a_model } else { indexed_folder() };
    bare.then(|| {
        anyhow!(
            "{}: a weights file, which records no model: give --config with the training config it goes with (its \
             model.* and data.dir; for upstream's released infinity_2b_reg.pth, configs/upstream/2b-1024.toml with \
             --data naming your dataset)",
            path.display()
        )
    })
}
