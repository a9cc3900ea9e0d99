//! A checkpoint's weights alone, for sampling, export and `model.init_from`: the file a source names
//! (a checkpoint or run folder, an export, a weights file or an index, the moving average where asked),
//! checksum-verified, and the model of a checkpoint with what its run's config says of it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::load::{previous_complete, read_model_json, verify_crc};
use super::{read_state, resolve, TrainState, CONFIG_FILE, DONE, EMA_FILE, MODEL_FILE, STATE_FILE};
use crate::export::read_export;
use crate::model::io::{load_weights, map_file, StateDict};
use crate::model::{Layout, ModelConfig, Params};
use crate::train::config::Precision;

/// The weights file of `path` and which of its state dicts to read: a safetensors or PyTorch file as
/// it is (or an index of several, `*.index.json`), an `infinity export` folder's weights, a folder's
/// one index, or the checksum-verified `model.safetensors` of a checkpoint or run folder (see
/// [`resolve`]). With `ema` (`model.init_from_ema`) the moving average instead: a checkpoint's
/// `ema.safetensors`, an export made with `--ema`, or upstream's training checkpoint's
/// `trainer.gpt_ema_fsdp`; an error for a source that keeps none.
pub fn weights_file(path: &Path, ema: bool) -> Result<(PathBuf, StateDict)> {
    let one_set = |what: &str| {
        anyhow!(
            "{}: {what} holds one set of weights, no moving average: model.init_from_ema takes a checkpoint or run \
             folder whose run kept one (optim.ema_decay > 0), an export made with --ema, or upstream's training \
             checkpoint (ar-ckpt*.pth with trainer.gpt_ema_fsdp)",
            path.display()
        )
    };
    let trained_export = |export: &crate::export::ExportFolder| {
        let or = if export.weights_file.is_none() { ", or give the checkpoint itself" } else { "" };
        anyhow!(
            "{}: an export of the trained weights, not their moving average: {}{or}",
            path.display(),
            export.ema_advice()
        )
    };
    if path.is_file() {
        // a checkpoint's own file, named directly: checked as the folder's would be
        if let Some(crc) = checkpoint_file_crc(path)? {
            verify_crc(path, &crc)?;
        }
        let export = export_holding(path);
        if let Some(e) = &export {
            e.verify()?; // an export's weights, named directly: checked as its folder's would be
        }
        return match (ema, export) {
            (false, _) => Ok((path.to_path_buf(), StateDict::Weights)),
            _ if crate::model::weight_shards::is_index(path) => Err(one_set("an index of weight files")),
            // the average as a file of its own: taken as it is
            (_, Some(e)) if e.ema => Ok((path.to_path_buf(), StateDict::Weights)),
            (_, Some(e)) => Err(trained_export(&e)),
            _ if is_checkpoints_average(path) => Ok((path.to_path_buf(), StateDict::Weights)),
            // upstream's training checkpoint keeps it inside; the reader refuses a file that does not
            (_, None) => Ok((path.to_path_buf(), StateDict::MovingAverage)),
        };
    }
    if let Some(export) = read_export(path) {
        ensure!(export.ema || !ema, trained_export(&export));
        export.verify()?;
        return Ok((export.weights, StateDict::Weights));
    }
    // (an export whose config.json does not read, or names no weights file there: refused, as `sample`
    // and `export` refuse it, rather than its weights taken unchecked as a folder of files)
    let config_json = path.join("config.json");
    if path.is_dir() && config_json.is_file() {
        let parsed: Option<serde_json::Value> =
            std::fs::read(&config_json).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if parsed.is_none_or(|c| c["format"] == crate::export::EXPORT_FORMAT) {
            bail!(
                "{}: no `infinity export` config.json that reads and names its weights file (damaged, edited, or the \
                 weights moved?), by which an export's weights are checked: export again, or give the weights file",
                config_json.display()
            );
        }
    }
    if let Some(index) = crate::model::weight_shards::index_in(path)? {
        ensure!(!ema, one_set("a folder of weight files with an index"));
        return Ok((index, StateDict::Weights));
    }
    if ema {
        return Ok((ema_file(path)?, StateDict::Weights));
    }
    let dir = resolve(path)?;
    let file = dir.join(MODEL_FILE);
    verify_crc(&file, &read_state(&dir)?.model_crc32c)?;
    Ok((file, StateDict::Weights))
}

/// The folder of `file` where it is an export's weights file.
pub(crate) fn export_holding(file: &Path) -> Option<crate::export::ExportFolder> {
    let dir = file.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })?;
    let same = |a: &Path| matches!((a.canonicalize(), file.canonicalize()), (Ok(a), Ok(b)) if a == b);
    read_export(dir).filter(|e| same(&e.weights))
}

/// The crc32c a complete checkpoint's `state.json` records for `file` where it is that checkpoint's
/// weights or their moving average (`None` for any other file).
fn checkpoint_file_crc(file: &Path) -> Result<Option<String>> {
    let holds = |name: &str| file.file_name().is_some_and(|n| n == name);
    // (a save cut short: its files are refused as its folder is, not taken unchecked)
    if let Some(dir) = file.parent().filter(|d| d.join(STATE_FILE).is_file() && !d.join(DONE).is_file()) {
        if holds(MODEL_FILE) || holds(EMA_FILE) {
            read_state(dir)?;
        }
    }
    let dir = file.parent().filter(|d| d.join(DONE).is_file() && d.join(STATE_FILE).is_file());
    match dir {
        Some(dir) if holds(MODEL_FILE) || holds(EMA_FILE) => Ok(recorded_crc(&read_state(dir)?, file)),
        _ => Ok(None),
    }
}

/// The crc32c `state` (a checkpoint's) records for `file` where it is that checkpoint's weights or their
/// moving average, by its name.
pub(crate) fn recorded_crc(state: &TrainState, file: &Path) -> Option<String> {
    match file.file_name()?.to_str()? {
        MODEL_FILE => Some(state.model_crc32c.clone()),
        EMA_FILE => state.ema_crc32c.clone(),
        _ => None,
    }
}

/// Whether `file` is a checkpoint's moving average of the weights (`ema.safetensors`).
pub(crate) fn is_checkpoints_average(file: &Path) -> bool {
    let dir = file.parent().unwrap_or(Path::new("."));
    file.file_name().is_some_and(|n| n == EMA_FILE) && dir.join(DONE).is_file()
}

/// Where `path` (as `model.init_from` takes it) keeps a moving average of its weights beside them: a
/// checkpoint or run folder whose run kept one, or upstream's training checkpoint with
/// `trainer.gpt_ema_fsdp`; `None` for sources of one set of weights (a weights file, an export, an
/// index).
pub fn moving_average_of(path: &Path) -> Result<Option<(PathBuf, StateDict)>> {
    if path.is_file() {
        let bytes = map_file(path)?;
        let torch =
            crate::model::torch_file::is_zip(&bytes) && crate::model::torch_file::holds_moving_average(&bytes, path)?;
        return Ok(torch.then(|| (path.to_path_buf(), StateDict::MovingAverage)));
    }
    if read_export(path).is_some() || crate::model::weight_shards::index_in(path)?.is_some() {
        return Ok(None);
    }
    let dir = resolve(path)?;
    Ok(match read_state(&dir)?.ema_crc32c {
        Some(_) => Some((ema_file(&dir)?, StateDict::Weights)),
        None => None,
    })
}

/// The moving average of a checkpoint or run folder (see [`resolve`]), checksum-verified; an error
/// says so when it keeps none.
pub fn ema_file(path: &Path) -> Result<PathBuf> {
    let dir = resolve(path)?;
    match read_state(&dir)?.ema_crc32c {
        Some(crc) => {
            let file = dir.join(EMA_FILE);
            verify_crc(&file, &crc)?;
            Ok(file)
        }
        None => bail!("{}: no moving average of the weights (the run had optim.ema_decay = 0)", dir.display()),
    }
}

/// The model of a checkpoint (or an export, or a bare weights file with its config), for sampling and
/// export: its shape, weights and step, and the dataset it trained on.
pub struct CheckpointModel {
    /// Where the weights came from: the checkpoint (or export) folder, or the weights file (or folder
    /// of files with an index).
    pub dir: PathBuf,
    pub model: ModelConfig,
    /// `data.dir` of the run's config (as written there: relative to where the run was started); for a
    /// weights file, `--data` or its config's `data.dir`.
    pub data_dir: PathBuf,
    pub params: Params<f32>,
    /// The step the weights were saved at (none for a bare weights file).
    pub step: Option<u64>,
    /// `run.precision` of the run's config (f32 where it has none).
    pub precision: Precision,
    /// `optim.ema_decay` of the run's config (none where it has none).
    pub ema_decay: Option<f64>,
    /// [`infinity_data::tokenizer::identity`] of the tokenizer the model's bits are of: the training
    /// data's, as the checkpoint's data position saved it, or the one an export describes. None where
    /// unknown (a bare weights file, a fresh model, a checkpoint of a build before 2026-12-05).
    pub tokenizer: Option<String>,
}

impl CheckpointModel {
    /// Where the weights came from, as messages name it: the checkpoint and its step, or the file.
    pub fn described(&self) -> String {
        match self.step {
            Some(step) => format!("{} (step {step})", self.dir.display()),
            None => self.dir.display().to_string(),
        }
    }
}

/// Load the model of `path` (see [`resolve`]), verifying its checksum, names and shapes; with `ema`,
/// the weights are the checkpoint's moving average (an error if it keeps none). A run folder's newest
/// checkpoint that a run training on prunes while it is read (`checkpoint.keep_last`) gives way to the
/// newest again (a few times), rather than to an error about files it no longer has.
pub fn load_model(path: &Path, ema: bool) -> Result<CheckpointModel> {
    let mut tries = 0;
    loop {
        let dir = resolve(path)?;
        match load_model_of(dir.clone(), ema) {
            // (moved away whole, DONE with it: pruned, not damaged)
            Err(_) if dir != path && !dir.join(DONE).is_file() && tries < 5 => tries += 1,
            loaded => return loaded,
        }
    }
}

/// [`load_model`] of the checkpoint folder `dir`.
fn load_model_of(dir: PathBuf, ema: bool) -> Result<CheckpointModel> {
    let state = read_state(&dir)?;
    let weights = match ema {
        true => ema_file(&dir)?,
        false => dir.join(MODEL_FILE),
    };
    // (damaged: the run's checkpoint before it named, as a resume names it)
    let damaged = |e: anyhow::Error| match previous_complete(&dir) {
        Some((_, p)) => anyhow!("{e:#} (the run's checkpoint before it: {}; give its folder)", p.display()),
        None => e,
    };
    if !ema {
        verify_crc(&weights, &state.model_crc32c).map_err(damaged)?;
    }
    let model = read_model_json(&dir, &state).map_err(damaged)?;
    let (config, data_dir) = run_config(&dir)?;
    let p = dir.join(CONFIG_FILE);
    let precision = run_precision(&config).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    let ema_decay = config.get("optim").and_then(|o| o.get("ema_decay")).and_then(|v| v.as_float());
    let lay = Layout::new(&model);
    let params = load_weights(&weights, &model, &lay)?;
    let tokenizer = state.loader.tokenizer.clone();
    Ok(CheckpointModel { dir, model, data_dir, params, step: Some(state.step), precision, ema_decay, tokenizer })
}

/// The run's config that checkpoint `dir` keeps, as a table, and its `data.dir` (as written there). Only
/// the dataset, the arithmetic and the moving average's decay are read from it: settings a later build
/// adds or drops must not make older checkpoints unusable for sampling and export.
fn run_config(dir: &Path) -> Result<(toml::Table, PathBuf)> {
    let p = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let config: toml::Table = text.parse().map_err(|e| anyhow!("{}: {e}", p.display()))?;
    let data_dir = match config.get("data").and_then(|d| d.get("dir")) {
        Some(toml::Value::String(dir)) => PathBuf::from(dir),
        _ => bail!("{}: no `data.dir` string", p.display()),
    };
    Ok((config, data_dir))
}

/// The training dataset's folder of checkpoint `dir`, as its run's config names it.
pub fn data_dir_of(dir: &Path) -> Result<PathBuf> {
    run_config(dir).map(|(_, data_dir)| data_dir)
}

/// `run.precision` of a run's config: f32 where it has none, an error for a value this build lacks.
fn run_precision(config: &toml::Table) -> Result<Precision> {
    match config.get("run").and_then(|r| r.get("precision")) {
        None => Ok(Precision::F32),
        Some(toml::Value::String(s)) if s == "f32" => Ok(Precision::F32),
        Some(toml::Value::String(s)) if s == "bf16" => Ok(Precision::Bf16),
        Some(other) => bail!("run.precision = {other}: neither \"f32\" nor \"bf16\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_precision_is_f32_bf16_or_absent() {
        let precision = |text: &str| run_precision(&text.parse::<toml::Table>().unwrap());
        assert_eq!(precision("").unwrap(), Precision::F32);
        assert_eq!(precision("[run]\nsteps = 3").unwrap(), Precision::F32);
        assert_eq!(precision("[run]\nprecision = \"f32\"").unwrap(), Precision::F32);
        assert_eq!(precision("[run]\nprecision = \"bf16\"").unwrap(), Precision::Bf16);
        for bad in ["\"fp16\"", "\"BF16\"", "16"] {
            let e = precision(&format!("[run]\nprecision = {bad}")).unwrap_err().to_string();
            assert!(e.contains(&format!("run.precision = {bad}")), "{e}");
        }
    }
}
