//! Reading checkpoints back: a checkpoint or run folder resolved to a complete checkpoint, its weights
//! (checksum-verified) for sampling, export and `model.init_from`, and its whole training state for a
//! resumed run.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use safetensors::SafeTensors;

use super::history::complete;
use super::{TrainState, CONFIG_FILE, DONE, EMA_FILE, MODEL_FILE, MODEL_JSON, OPTIM_FILE, STATE_FILE, STATE_VERSION};
use crate::export::{read_export, resolved};
use crate::model::io::{load_weights, load_weights_part, map_file, StateDict};
use crate::model::{Layout, ModelConfig, Params};
use crate::optim::{AdamW, AdamWConfig};
use crate::train::config::Precision;

/// A checkpoint folder, or a run folder (its newest complete checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(DONE).is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join(STATE_FILE).is_file() {
        bail!(
            "{}: incomplete checkpoint (no {DONE} marker: a save cut short); `--resume auto` takes the newest \
             complete one, or give an earlier step",
            path.display()
        );
    }
    match complete(path).pop() {
        Some((_, dir)) => Ok(dir),
        None if path.exists() => match read_export(path) {
            Some(export) => {
                let way = match &export.weights_file {
                    Some(file) => format!("it came from the weights file {file}, which holds none either"),
                    None => format!("resuming takes the checkpoint it came from ({})", export.source),
                };
                bail!(
                    "{}: an `infinity export` folder, which holds no training state: {way}; `infinity sample`, \
                     `infinity export` and model.init_from take the export as it is",
                    path.display()
                )
            }
            None => bail!(
                "{}: neither a checkpoint nor a run folder with a complete checkpoint{}",
                path.display(),
                near_miss(path)
            ),
        },
        None => bail!("{}: no such checkpoint or run folder", path.display()),
    }
}

/// What to give instead of `path` where it is close to a checkpoint: a file in one (or in an export), a
/// run's `checkpoints` folder, or a folder of run folders ("" otherwise).
fn near_miss(path: &Path) -> String {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if path.is_file() {
        return match super::from_file::folder_holding(path) {
            Some((holder, folder)) => format!(" (a file: give the {holder} folder holding it, {})", folder.display()),
            None => " (a file: give a checkpoint, run or export folder)".into(),
        };
    }
    // (its tokenizer.safetensors is no model's weights)
    if path.join("manifest.json").is_file() {
        return " (a dataset folder: give the run, checkpoint or export folder of a model trained on it)".into();
    }
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries.sort();
    // (a folder of weights files without their index: upstream's release, an export's weights copied)
    let weights_ext = |p: &&PathBuf| {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        p.is_file() && matches!(ext.as_str(), "safetensors" | "pth" | "pt" | "bin" | "ckpt")
    };
    if let Some(file) = entries.iter().find(weights_ext) {
        return format!(
            " (a folder of weights files without an index (*.index.json): give the file, such as {})",
            file.display()
        );
    }
    let subdirs: Vec<PathBuf> = entries.into_iter().filter(|p| p.is_dir()).collect();
    // a run's checkpoints/step-N folders, newest last
    let steps: Vec<&PathBuf> = subdirs
        .iter()
        .filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")) && d.join(DONE).is_file())
        .collect();
    if let Some(newest) = steps.last() {
        return format!(
            " (a run's checkpoints folder: give the run folder, {}, or a step folder such as {})",
            parent.display(),
            newest.display()
        );
    }
    match subdirs.iter().find(|d| !complete(d).is_empty()) {
        Some(run) => format!(" (a folder of run folders: give one of them, such as {})", run.display()),
        None => String::new(),
    }
}

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

/// Parameters `range` of the checkpoint's moving average of the weights, if it keeps one (checksum,
/// names and shapes checked).
pub fn load_ema(dir: &Path, cfg: &ModelConfig, lay: &Layout, range: Range<usize>) -> Result<Option<Vec<f32>>> {
    match read_state(dir)?.ema_crc32c {
        None => Ok(None),
        Some(crc) => {
            let file = dir.join(EMA_FILE);
            verify_crc(&file, &crc)?;
            Ok(Some(load_weights_part(&file, cfg, lay, range)?))
        }
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
    if !ema {
        // (damaged: the run's checkpoint before it named, as a resume names it)
        verify_crc(&weights, &state.model_crc32c).map_err(|e| match previous_complete(&dir) {
            Some((_, p)) => anyhow!("{e:#} (the run's checkpoint before it: {}; give its folder)", p.display()),
            None => e,
        })?;
    }
    let model = read_model_json(&dir, &state)?;
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

/// The step of checkpoint `dir` (its `state.json`), if it reads.
pub fn saved_step(dir: &Path) -> Option<u64> {
    parse_state(dir).ok().map(|s| s.step)
}

/// A complete checkpoint's `state.json`, checked against its `DONE` marker, folder name and version.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let state = parse_state(dir)?;
    check_version(dir, &state)?;
    Ok(state)
}

/// `state.json` as it is (any version).
fn parse_state(dir: &Path) -> Result<TrainState> {
    ensure!(
        dir.join(DONE).is_file(),
        "{}: incomplete checkpoint (no {DONE} marker: a save cut short); `--resume auto` takes the newest complete \
         one, or give an earlier step",
        dir.display()
    );
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let done_path = dir.join(DONE);
    let done = std::fs::read_to_string(&done_path).with_context(|| format!("reading {}", done_path.display()))?;
    match super::done_crc(&done) {
        Some(want) => {
            let found = format!("{:08x}", crc32c::crc32c(text.as_bytes()));
            ensure!(
                found == want,
                "{}: crc32c {found}, {DONE} records {want}: the file changed after the checkpoint was written",
                state_path.display()
            );
        }
        // (a build's before 2026-12-05 wrote it empty)
        None if done.trim().is_empty() => {}
        None => bail!(
            "{}: expected `{STATE_FILE} crc32c` and 8 hex digits (or nothing, from a build before 2026-12-05), \
             found {:?}: the marker changed after the checkpoint was written",
            done_path.display(),
            done.chars().take(80).collect::<String>()
        ),
    }
    let de = &mut serde_json::Deserializer::from_str(&text);
    let state: TrainState = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow!("{}: at `{}`: {}", state_path.display(), e.path(), e.inner()))?;
    // (a folder renamed by hand would resume at another step than its name says)
    if let Some(named) = super::step_of(dir).filter(|&n| n != state.step) {
        bail!("{}: step {}, the folder's name says {named}", state_path.display(), state.step);
    }
    if let Some(why) = state.seen.as_ref().and_then(crate::train::seen::Seen::implausible) {
        bail!("{}: {why}", state_path.display());
    }
    Ok(state)
}

fn check_version(dir: &Path, state: &TrainState) -> Result<()> {
    ensure!(
        state.version == STATE_VERSION,
        "{}: state version {}, this build reads {STATE_VERSION}",
        dir.join(STATE_FILE).display(),
        state.version
    );
    Ok(())
}

/// The newest complete checkpoint before `dir` in its run folder, as a way on for `--resume` into
/// `run` (which moves `dir` aside to `run`'s abandoned/ when it is its own).
fn way_on(dir: &Path, run: &Path) -> Option<String> {
    let (own_run, previous) = previous_complete(dir)?;
    let moved = match resolved(own_run) == resolved(run) {
        true => format!("; this one is then moved to {}/", run.join("abandoned").display()),
        false => String::new(),
    };
    Some(format!("resume from the previous checkpoint with --resume {}{moved}", previous.display()))
}

/// The run folder of checkpoint `dir` and its newest complete checkpoint before `dir`, where it has one.
fn previous_complete(dir: &Path) -> Option<(&Path, PathBuf)> {
    let step = super::step_of(dir)?;
    let checkpoints = dir.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"))?;
    let own_run = checkpoints.parent()?;
    let (_, previous) = complete(own_run).into_iter().rfind(|(s, _)| *s < step)?;
    Some((own_run, previous))
}

/// A checkpoint's `model.json`, parsed and checked, against the checksum its `state` records (where it
/// records one): errors name the file.
fn read_model_json(dir: &Path, state: &TrainState) -> Result<ModelConfig> {
    let (model, text) = parse_model_json(dir)?;
    model_json_intact(dir, &text, state)?;
    Ok(model)
}

/// A checkpoint's `model.json` parsed and checked, and its text.
fn parse_model_json(dir: &Path) -> Result<(ModelConfig, String)> {
    let p = dir.join(MODEL_JSON);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let model: ModelConfig = serde_path_to_error::deserialize(&mut *de)
        .map_err(|e| anyhow!("{}: at `{}`: {}", p.display(), e.path(), e.inner()))?;
    de.end().map_err(|e| anyhow!("{}: after the model's object: {e}", p.display()))?;
    model.validate().map_err(|e| anyhow!("{}: {e}", p.display()))?;
    Ok((model, text))
}

/// `model.json`'s `text` has the checksum `state` records, where it records one (its `norm_eps`, …, shape
/// no tensor, so only the checksum finds them changed).
fn model_json_intact(dir: &Path, text: &str, state: &TrainState) -> Result<()> {
    let Some(want) = &state.model_json_crc32c else { return Ok(()) };
    let found = format!("{:08x}", crc32c::crc32c(text.as_bytes()));
    let p = dir.join(MODEL_JSON);
    ensure!(&found == want, "{}: crc32c {found}, {STATE_FILE} expects {want} (corrupt checkpoint)", p.display());
    Ok(())
}

/// A checkpoint's `model.json` parses, describes the tensors of the model trained (`cfg`), and is the
/// file the checkpoint wrote.
fn check_model_json(dir: &Path, state: &TrainState, cfg: &ModelConfig, lay: &Layout) -> Result<()> {
    let (model, text) = parse_model_json(dir).map_err(|e| anyhow!("{e:#} (damaged checkpoint)"))?;
    let tensors = |l: &Layout| l.specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect::<Vec<_>>();
    // (another model's is said by the keys that differ, before the checksum that would find it too)
    if tensors(&Layout::new(&model)) == tensors(lay) {
        return model_json_intact(dir, &text, state);
    }
    let (found, want) = (serde_json::to_value(&model)?, serde_json::to_value(cfg)?);
    let differ: Vec<String> = want
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| found.get(k.as_str()) != Some(*v))
        .map(|(k, v)| {
            format!("{k} {} (the model trained: {v})", found.get(k.as_str()).unwrap_or(&serde_json::Value::Null))
        })
        .collect();
    bail!(
        "{}: describes another model than its {MODEL_FILE} holds: {} (damaged checkpoint)",
        dir.join(MODEL_JSON).display(),
        differ.join(", ")
    )
}

/// Whether a complete checkpoint's tensor files (and `model.json`) match what its `state` records:
/// what a resume would find damaged, checked before one is chosen unasked.
pub fn tensors_intact(dir: &Path, state: &TrainState) -> bool {
    let ema = state.ema_crc32c.as_ref().map(|c| (EMA_FILE, c));
    let files = [(MODEL_FILE, &state.model_crc32c), (OPTIM_FILE, &state.optim_crc32c)].into_iter().chain(ema);
    read_model_json(dir, state).is_ok()
        && files.into_iter().all(|(file, want)| verify_crc(&dir.join(file), want).is_ok())
}

fn verify_crc(p: &Path, want: &str) -> Result<()> {
    let bytes = map_file(p)?;
    let found = format!("{:08x}", crc32c::crc32c(&bytes));
    ensure!(found == want, "{}: crc32c {found}, {STATE_FILE} expects {want} (corrupt checkpoint)", p.display());
    Ok(())
}

/// Load a checkpoint folder to resume `run` from, verifying checksums, names and shapes against `cfg`,
/// and that its `model.json` (which sample and export read) describes that model. A damaged checkpoint's
/// error names the newest complete one before it as a way on (not taken unasked: the steps after it
/// would be trained again). The optimiser state holds the moments of the parameters in `moments`
/// alone (a ZeRO-1 rank's shard: the rest of the file is never copied).
pub fn load(
    dir: &Path,
    run: &Path,
    cfg: &ModelConfig,
    lay: &Layout,
    (adamw, moments): (&AdamWConfig, Range<usize>),
) -> Result<(Params<f32>, AdamW, TrainState)> {
    let damaged = |e: anyhow::Error| match way_on(dir, run) {
        Some(way) => anyhow!("{e:#}; {way}"),
        None => e,
    };
    ensure!(
        moments.start <= moments.end && moments.end <= lay.numel,
        "moments {moments:?} of {} parameters",
        lay.numel
    );
    let state = parse_state(dir).map_err(damaged)?;
    check_version(dir, &state)?;
    // (the moving average's too, where the checkpoint has one: found damaged here, the error names the
    // way on, as for the others)
    let ema = state.ema_crc32c.as_ref().map(|c| (EMA_FILE, c));
    for (file, want) in [(MODEL_FILE, &state.model_crc32c), (OPTIM_FILE, &state.optim_crc32c)].into_iter().chain(ema) {
        verify_crc(&dir.join(file), want).map_err(damaged)?;
    }
    // (the weights first: a config of another model is named by its tensors, not as damage)
    let params = load_weights(&dir.join(MODEL_FILE), cfg, lay)?;
    check_model_json(dir, &state, cfg, lay).map_err(damaged)?;
    let optim_path = dir.join(OPTIM_FILE);
    let bytes = map_file(&optim_path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: {e}", optim_path.display()))?;
    let mut opt = AdamW::new_part(adamw.clone(), lay, moments.clone());
    for (name, dst) in [("adamw.m", &mut opt.m), ("adamw.v", &mut opt.v)] {
        let t = st.tensor(name).map_err(|_| anyhow!("{}: `{name}` missing", optim_path.display()))?;
        if t.shape() != [lay.numel] {
            bail!(
                "{}: `{name}` has {:?} values, the model has {} parameters",
                optim_path.display(),
                t.shape(),
                lay.numel
            );
        }
        // (read by dtype: f32 as written here; a bf16 or f16 copy widened, not taken for half as many values)
        let size = t.dtype().bitsize() / 8;
        // (the shape is the model's, so the part lies inside: safetensors checked the data's length)
        let part = &t.data()[moments.start * size..moments.end * size];
        *dst = crate::model::io::tensor_f32(name, t.dtype(), part)
            .map_err(|e| anyhow!("{}: {e}", optim_path.display()))?;
        // (a run writes no checkpoint while its steps are not finite: such moments are damage, which the
        // first update would spread into every weight)
        let second = name == "adamw.v";
        if let Some(i) = dst.iter().position(|x| !x.is_finite() || (second && *x < 0.0)) {
            let at = moments.start + i;
            let param = lay.specs.iter().find(|s| (s.offset..s.offset + s.numel()).contains(&at));
            let expected = if second { "finite and not negative" } else { "finite" };
            return Err(damaged(anyhow!(
                "{}: `{name}` holds {} at value {at} (of `{}`): expected {expected} moments (corrupt checkpoint)",
                optim_path.display(),
                dst[i],
                param.map_or("?", |s| s.name.as_str())
            )));
        }
    }
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{}: metadata: {e}", optim_path.display()))?;
    let meta: serde_json::Value = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("adamw"))
        .and_then(|s| serde_json::from_str(s).ok())
        .with_context(|| format!("{}: metadata `adamw` missing", optim_path.display()))?;
    opt.step =
        meta["step"].as_u64().with_context(|| format!("{}: metadata `adamw.step` missing", optim_path.display()))?;
    Ok((params, opt, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ZeRO-1 rank reads its shard of the moments alone: the values and groups `AdamW::shard` would
    /// cut from the whole state, and the step.
    #[test]
    fn a_shard_of_the_moments_loads_alone() {
        use crate::train::checkpoint::{save, Tensors};
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ModelConfig::preset("tiny").unwrap();
        let lay = Layout::new(&cfg);
        let params = crate::model::init::init_params(&cfg, &lay, &Default::default(), 7);
        let mut opt = AdamW::new(AdamWConfig::default(), &lay);
        (opt.step, opt.m, opt.v) =
            (3, params.data.iter().map(|x| x * 0.5).collect(), params.data.iter().map(|x| x * x).collect());
        let state_loader = || infinity_data::loader::LoaderState {
            seed: 0,
            global_batch: 4,
            batches_done: 3,
            dataset: "d".into(),
            buckets: None,
            mix: None,
            earlier_sizes: Vec::new(),
            tokenizer: None,
            rows_changed_at: None,
        };
        let state = TrainState { step: 3, ..TrainState::fresh(state_loader()) };
        let tensors = Tensors { params: &params, opt: &opt, ema: None };
        let dir = save(tmp.path(), &cfg, &lay, tensors, state, "").unwrap();
        let shard = crate::train::zero1::shard_range(lay.numel, 1, 3);
        let (p, part, _) = load(&dir, tmp.path(), &cfg, &lay, (&AdamWConfig::default(), shard.clone())).unwrap();
        assert_eq!(p.data, params.data);
        let cut = opt.shard(shard.clone());
        assert_eq!((part.range.clone(), part.step, &part.m, &part.v), (shard, 3, &cut.m, &cut.v));
        assert_eq!(part.groups().runs().collect::<Vec<_>>(), cut.groups().runs().collect::<Vec<_>>());
        let e = load(&dir, tmp.path(), &cfg, &lay, (&AdamWConfig::default(), 0..lay.numel + 1)).unwrap_err();
        assert!(e.to_string().contains("moments"), "{e}");

        // state.json is checked as the tensors are: its checksum is in DONE, its step in the folder's name
        let whole = (&AdamWConfig::default(), 0..lay.numel);
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).unwrap();
        std::fs::write(dir.join(STATE_FILE), text.replace("\"step\": 3", "\"step\": 4")).unwrap();
        let e = format!("{:#}", load(&dir, tmp.path(), &cfg, &lay, whole.clone()).unwrap_err());
        assert!(
            e.contains("state.json: crc32c") && e.contains("the file changed after the checkpoint was written"),
            "{e}"
        );
        std::fs::write(dir.join(STATE_FILE), &text).unwrap();
        let renamed = dir.with_file_name("step-00000005");
        std::fs::rename(&dir, &renamed).unwrap();
        let e = format!("{:#}", load(&renamed, tmp.path(), &cfg, &lay, whole.clone()).unwrap_err());
        assert!(e.contains("state.json: step 3, the folder's name says 5"), "{e}");
        // a marker of an earlier build, empty, checks no checksum; one that is neither is refused
        std::fs::rename(&renamed, &dir).unwrap();
        std::fs::write(dir.join(DONE), "garbage").unwrap();
        let e = format!("{:#}", load(&dir, tmp.path(), &cfg, &lay, whole.clone()).unwrap_err());
        assert!(e.contains("DONE: expected `state.json crc32c` and 8 hex digits") && e.contains("\"garbage\""), "{e}");
        std::fs::write(dir.join(DONE), "").unwrap();
        load(&dir, tmp.path(), &cfg, &lay, whole.clone()).unwrap();

        // the moving average's file is checked with the others, the way on named
        let state = TrainState { step: 6, ..TrainState::fresh(state_loader()) };
        let with_ema =
            save(tmp.path(), &cfg, &lay, Tensors { params: &params, opt: &opt, ema: Some(&params) }, state, "");
        let with_ema = with_ema.unwrap();
        let ema = with_ema.join(crate::train::checkpoint::EMA_FILE);
        let mut bytes = std::fs::read(&ema).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&ema, bytes).unwrap();
        let e = format!("{:#}", load(&with_ema, tmp.path(), &cfg, &lay, whole).unwrap_err());
        assert!(e.contains("ema.safetensors: crc32c") && e.contains("step-00000003"), "{e}");

        // a file under the name of the step folder a save writes is named, and left as it is
        let file = crate::train::checkpoint::step_dir(tmp.path(), 4);
        std::fs::write(&file, "notes").unwrap();
        let state = TrainState { step: 4, ..TrainState::fresh(state_loader()) };
        let tensors = Tensors { params: &params, opt: &opt, ema: None };
        let e = format!("{:#}", save(tmp.path(), &cfg, &lay, tensors, state, "").unwrap_err());
        assert!(e.contains("step-00000004 is a file, not a checkpoint folder: move it away"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "notes");
        assert!(!tmp.path().join("checkpoints/.tmp-step-00000004").exists(), "the partial folder stays");
    }

    /// A file, a run's checkpoints folder and a folder of runs are each answered with what to give instead.
    #[test]
    fn near_misses_say_what_to_give() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("runs/demo");
        let step = run.join("checkpoints/step-00000010");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join(DONE), "").unwrap();
        let err = |p: &Path| resolve(p).unwrap_err().to_string();
        let neither =
            |p: &Path| format!("{}: neither a checkpoint nor a run folder with a complete checkpoint", p.display());
        let e = err(&run.join("checkpoints"));
        let want = format!(
            "{} (a run's checkpoints folder: give the run folder, {}, or a step folder such as {})",
            neither(&run.join("checkpoints")),
            run.display(),
            step.display()
        );
        assert_eq!(e, want);
        let runs = tmp.path().join("runs");
        assert_eq!(
            err(&runs),
            format!("{} (a folder of run folders: give one of them, such as {})", neither(&runs), run.display())
        );
        let file = tmp.path().join("model.safetensors");
        std::fs::write(&file, "").unwrap();
        assert_eq!(err(&file), format!("{} (a file: give a checkpoint, run or export folder)", neither(&file)));
        let file = step.join(MODEL_FILE);
        std::fs::write(&file, "").unwrap();
        let e = err(&file);
        assert!(e.ends_with(&format!("(a file: give the checkpoint folder holding it, {})", step.display())), "{e}");
        let export = run.join("export");
        std::fs::create_dir_all(&export).unwrap();
        let config = serde_json::json!({ "format": crate::export::EXPORT_FORMAT });
        std::fs::write(export.join("config.json"), config.to_string()).unwrap();
        std::fs::write(export.join(MODEL_FILE), "").unwrap();
        let e = err(&export.join(MODEL_FILE));
        assert!(e.ends_with(&format!("(a file: give the export folder holding it, {})", export.display())), "{e}");
        // a dataset folder's tokenizer is not offered as the model's weights
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("manifest.json"), "{}").unwrap();
        std::fs::write(data.join("tokenizer.safetensors"), "").unwrap();
        let want = "(a dataset folder: give the run, checkpoint or export folder of a model trained on it)";
        assert_eq!(err(&data), format!("{} {want}", neither(&data)));
    }

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
