//! A bare weights file as a model for `infinity sample` and `infinity export`: safetensors, upstream's
//! PyTorch `.pth` (its released weights, or its training checkpoint with the moving average), or a
//! folder of files with an index. Such a file records no model, so its shape comes from the training
//! config it goes with (`--config`, read as `infinity train` reads it) and that config's dataset (or
//! `--data`): the bits per token, the condition and the schedules, as a run builds its model.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use infinity_data::Manifest;

use super::weights::{export_holding, moving_average_of, weights_file, CheckpointModel};
use super::{DONE, STATE_FILE};
use crate::export::{read_export, shard_map, EXPORT_FORMAT, SHARD_INDEX};
use crate::model::io::load_state_dict;
use crate::model::weight_shards::{index_in, is_index};
use crate::model::{torch_file, Conditioning, Layout, ModelConfig};
use crate::train::check_schedules_fit;
use crate::train::config::{path_as_read, ModelPart};

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
    check_source(path)?;
    let config = spec.config;
    check_config_file(config)?;
    let part = ModelPart::load(config, spec.overrides).with_context(|| format!("--config {}", config.display()))?;
    let shaped_by = shaped_by(spec);
    let (key, data_dir) = match (spec.data, &part.data.dir) {
        (Some(dir), _) => ("--data", dir.to_path_buf()),
        (None, Some(dir)) => ("data.dir", dir.clone()),
        (None, None) => bail!("{shaped_by}: no data.dir: pass --data with the model's dataset"),
    };
    let m = Manifest::load(&data_dir).with_context(|| {
        let or = if spec.data.is_none() { "; pass --data" } else { "" };
        format!(
            "the dataset of {} (its bits per token, condition and schedules shape the model{or})",
            path_as_read(key, &data_dir)
        )
    })?;
    let with_data = || format!("{shaped_by} with the dataset {}", data_dir.display());
    let model = part.model.model_for(&m).with_context(with_data)?;
    check_schedules_fit(&model, &m).with_context(with_data)?;
    let (file, which) = match ema {
        false => weights_file(path, false)?,
        true => moving_average_of(path)?.ok_or_else(|| {
            anyhow!(
                "--ema: {} holds one set of weights, no moving average (upstream's training checkpoint keeps one as \
                 trainer.gpt_ema_fsdp when trained with --use_fsdp_model_ema 1): leave --ema out to take its weights",
                path.display()
            )
        })?,
    };
    let lay = Layout::new(&model);
    let params = load_state_dict(&file, which, &model, &lay).with_context(|| {
        format!("{} against the model of {shaped_by} ({})", file.display(), described(&part, &model))
    })?;
    // (the decay that made an upstream average is not known: the config's is this framework's setting)
    let (dir, precision) = (path.to_path_buf(), part.run.precision);
    Ok(CheckpointModel { dir, model, data_dir, params, step: None, precision, ema_decay: None, tokenizer: None })
}

/// Refuse a `path` that records its model or lies in a folder that does, one that is not there, and a
/// folder without an index of weight files.
fn check_source(path: &Path) -> Result<()> {
    if let Some((holder, folder)) = model_holder(path) {
        // (a checkpoint's average is its --ema)
        let ema = if path.file_name().is_some_and(|n| n == super::EMA_FILE) { " with --ema" } else { "" };
        bail!(
            "{}: {holder}, which records its model: give {}{ema} without --config (and --set)",
            path.display(),
            folder.display()
        );
    }
    if let Some(why) = broken_export(path, true) {
        bail!("{why}");
    }
    if !path.exists() {
        bail!("{}: no such weights file or folder", path.display());
    }
    if path.is_dir() && index_in(path)?.is_none() {
        bail!(
            "{}: a folder without an index of weight files (*.index.json): give the weights file, or the folder of \
             files with their index",
            path.display()
        );
    }
    Ok(())
}

/// Refuse a `--config` that is a folder or a JSON file (an export's config.json) with what to give.
fn check_config_file(config: &Path) -> Result<()> {
    if config.is_dir() {
        bail!("--config {}: a folder; give the training config file (a run's config.toml)", config.display());
    }
    if config.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        bail!(
            "--config {}: a JSON file; give the TOML training config the weights go with (an export folder records \
             its model: give the folder without --config)",
            config.display()
        );
    }
    Ok(())
}

/// `--config` as the messages name it: the file, with its `--set` overrides and the `INF__…` variables
/// that set what shapes the model (said on the console as `infinity train` says them).
fn shaped_by(spec: &ModelSpec) -> String {
    let shapes = |key: &str| key.starts_with("model.") || key == "data.dir" || key == "run.precision";
    let taken = crate::train::config::vars_taken(spec.config, spec.overrides).unwrap_or_default();
    let from_env: Vec<String> =
        taken.iter().filter(|(key, _)| shapes(key)).map(|(key, v)| format!("{key} = {v}")).collect();
    for o in spec.overrides {
        let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k.trim());
        if !shapes(key) {
            tracing::warn!("--set {o}: only model.*, data.dir and run.precision are read from --config; ignored");
        }
    }
    let mut out = format!("--config {}", spec.config.display());
    if !spec.overrides.is_empty() {
        out.push_str(&format!(" --set {}", spec.overrides.join(" --set ")));
    }
    if !from_env.is_empty() {
        console!("from the environment: {}", from_env.join(", "));
        out.push_str(&format!(" (and from the environment: {})", from_env.join(", ")));
    }
    out
}

/// The model `part` built, as a mismatch names it: the preset and its shape, and what the dataset gave.
fn described(part: &ModelPart, model: &ModelConfig) -> String {
    let condition = match &model.conditioning {
        Conditioning::Class { num_classes } => format!("{num_classes} classes"),
        Conditioning::Text => format!("text {} wide, {} tokens", model.text_channels, model.text_maxlen),
    };
    format!(
        "the model built: depth {}, width {}, {} heads, mlp_ratio {} (model.preset {} with the config's settings); \
         from the dataset: d {}, {condition}",
        model.depth,
        model.embed_dim,
        model.num_heads,
        model.mlp_ratio,
        part.model.preset,
        model.d_vae()
    )
}

/// Where `path` records its model, or lies in a folder that does (a checkpoint, run or export folder, or
/// a file inside a checkpoint or export folder): what it is, in words, and the folder to give instead.
fn model_holder(path: &Path) -> Option<(&'static str, PathBuf)> {
    if read_export(path).is_some() {
        Some(("an `infinity export` folder", path.to_path_buf()))
    } else if path.join(DONE).is_file() || path.join(STATE_FILE).is_file() {
        Some(("a checkpoint folder", path.to_path_buf()))
    } else if path.is_dir() && !super::complete(path).is_empty() {
        Some(("a run folder", path.to_path_buf()))
    } else if path.is_file() {
        folder_holding(path).map(|(what, folder)| match what {
            "export" => ("the weights of an `infinity export` folder", folder),
            _ => ("a file of a checkpoint folder", folder),
        })
    } else {
        None
    }
}

/// The checkpoint folder `file` lies in, or the export folder whose weights, index or config.json it
/// is (links followed): `("export" | "checkpoint", folder)`. (Other files beside an export's are files
/// of their own.)
pub(super) fn folder_holding(file: &Path) -> Option<(&'static str, PathBuf)> {
    let file = file.canonicalize().ok()?;
    let parent = file.parent()?;
    let exports = || export_holding(&file).is_some() || export_of_own_file(&file).is_some();
    let checkpoint = parent.join(DONE).is_file() || parent.join(STATE_FILE).is_file();
    match (exports(), checkpoint) {
        (true, _) => Some(("export", parent.to_path_buf())),
        (false, true) => Some(("checkpoint", parent.to_path_buf())),
        (false, false) => None,
    }
}

/// The export folder whose index or `config.json` `path` is (`None` for any other path): a reader of
/// the model takes the folder in its place, with the export's checks (its weights' crc32c) and what it
/// records of its source.
pub(crate) fn export_of_own_file(path: &Path) -> Option<PathBuf> {
    let own = path.file_name().is_some_and(|n| n == SHARD_INDEX || n == "config.json");
    let parent = path.canonicalize().ok()?.parent()?.to_path_buf();
    (own && path.is_file() && read_export(&parent).is_some()).then_some(parent)
}

/// Whether `file` starts as a weights file does (safetensors, PyTorch's zip or pre-1.6 format) or is an
/// index of several.
fn looks_like_weights(file: &Path) -> bool {
    let mut head = [0u8; 14];
    let read = std::fs::File::open(file).and_then(|mut f| f.read(&mut head));
    let head = &head[..read.unwrap_or(0)];
    // (safetensors: the header's length, little-endian, then its JSON)
    let safetensors = head.len() > 8 && head[8] == b'{';
    is_index(file) || safetensors || torch_file::is_zip(head) || torch_file::is_legacy(head)
}

/// Where `path` is an export folder whose weights file is gone (its config.json says it is an export,
/// so it is no folder of bare weights), or, without `--config` (`with_config` false), a folder whose
/// config.json is unreadable or another tool's: the error saying so.
fn broken_export(path: &Path, with_config: bool) -> Option<String> {
    let file = path.join("config.json");
    let bytes = std::fs::read(&file).ok()?;
    let config: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        // (with --config the weights are read as a bare folder of files, whatever config.json holds)
        Err(_) if with_config => return None,
        Err(e) => {
            return Some(format!(
                "{}: not readable JSON ({e}): an `infinity export`'s config.json damaged? export again into {}, or \
                 give --config with the training config to read its weights as a bare file",
                file.display(),
                path.display()
            ))
        }
    };
    if config["format"] != EXPORT_FORMAT {
        // (another tool's config.json, a Hugging Face model's: the weights beside it may still be ours)
        return index_in(path).ok().flatten().filter(|_| !with_config).map(|_| {
            format!(
                "{}: a folder of weight files whose config.json is not an `infinity export`'s (its format is {}, \
                 expected {EXPORT_FORMAT:?}), so it records no model: give --config with the training config the \
                 weights go with",
                path.display(),
                config.get("format").map_or("not given".to_string(), |f| f.to_string())
            )
        });
    }
    // a weights file the shard index maps that is missing (where it maps any), else the one config.json names
    let files: Vec<String> = shard_map(path).ok().flatten().unwrap_or_default().into_iter().map(|(_, f)| f).collect();
    let mapped = files.iter().find(|f| !path.join(f).is_file()).or(files.first());
    read_export(path).is_none().then(|| match mapped {
        Some(f) => format!(
            "{}: an `infinity export` folder whose weights file {f}, which {} maps its tensors to, is missing: export \
             again into it",
            path.display(),
            SHARD_INDEX
        ),
        None => format!(
            "{}: an `infinity export` folder whose weights file ({}) is missing: export again into it",
            path.display(),
            config["weights"].as_str().unwrap_or("model.safetensors")
        ),
    })
}

/// Where `path` is a weights file (or a folder of files with an index) given without `--config`: the
/// error saying what to add. `None` for anything else (a checkpoint, run or export folder, a file inside
/// one, or a file of another kind, which [`super::resolve`] names).
pub fn needs_config(path: &Path) -> Result<Option<anyhow::Error>> {
    if let Some(why) = broken_export(path, false) {
        return Ok(Some(anyhow!(why)));
    }
    let bare = match path.is_file() {
        true => folder_holding(path).is_none() && looks_like_weights(path),
        false => model_holder(path).is_none() && index_in(path)?.is_some(),
    };
    let what = if path.is_file() { "a weights file, which records" } else { "a folder of weight files, which record" };
    Ok(bare.then(|| {
        anyhow!(
            "{}: {what} no model: give --config with the training config it goes with (its model.* and data.dir; \
             for upstream's released infinity_2b_reg.pth, configs/upstream/2b-1024.toml with --data naming your \
             dataset)",
            path.display()
        )
    }))
}
