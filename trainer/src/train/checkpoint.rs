//! Checkpoints: `RUN/checkpoints/step-00000100/` holding `model.safetensors` (upstream names),
//! `optim.safetensors` (AdamW moments), `ema.safetensors` (the weights' moving average, upstream
//! names, when `optim.ema_decay` keeps one), `state.json` (step, loader position, counters, checksums),
//! `config.toml` and `model.json` (the resolved model shape, so sampling and export need no dataset). Written into a temporary folder, each file fsynced, the folder renamed into place, and
//! a `DONE` marker written last: a folder without `DONE` is incomplete and ignored, so a crash or a
//! full disk mid-save never loses the previous checkpoint. A failed save removes what it wrote; pruning
//! renames a folder out of sight (`.tmp-step-N`) before deleting it, and removes such leftovers of an
//! interrupted save or prune.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use infinity_data::loader::LoaderState;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::model::io::{load_weights, weights_bytes, SaveDtype};
use crate::model::{Layout, ModelConfig, Params};
use crate::optim::{AdamW, AdamWConfig};
use crate::train::config::Precision;

pub const DONE: &str = "DONE";
pub const EMA_FILE: &str = "ema.safetensors";
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
    /// The losses and gradient norms the spike guard judges against (`optim.skip_loss_z`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_window: Option<super::spike::SpikeWindow>,
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", path.display()))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

pub fn step_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// The tensors of one checkpoint: the weights, the whole optimiser state, the weights' moving average.
pub struct Tensors<'a> {
    pub params: &'a Params<f32>,
    pub opt: &'a AdamW,
    pub ema: Option<&'a Params<f32>>,
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
        for dir in [&tmp, &final_dir].into_iter().filter(|d| d.exists() && !d.join(DONE).is_file()) {
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
    let model = weights_bytes(cfg, lay, params, SaveDtype::F32, 1, None)?;
    let m: Vec<u8> = opt.m.iter().flat_map(|x| x.to_le_bytes()).collect();
    let v: Vec<u8> = opt.v.iter().flat_map(|x| x.to_le_bytes()).collect();
    // One metadata key: safetensors writes its metadata map in hash order, so several keys would make
    // the bytes of identical checkpoints differ between processes.
    let meta: HashMap<String, String> =
        [("adamw".to_string(), serde_json::json!({ "step": opt.step, "config": opt.cfg }).to_string())].into();
    let optim = safetensors::serialize(
        [
            ("adamw.m", TensorView::new(Dtype::F32, vec![opt.m.len()], &m)?),
            ("adamw.v", TensorView::new(Dtype::F32, vec![opt.v.len()], &v)?),
        ],
        Some(meta),
    )?;
    state.version = STATE_VERSION;
    state.model_crc32c = format!("{:08x}", crc32c::crc32c(&model));
    state.optim_crc32c = format!("{:08x}", crc32c::crc32c(&optim));
    write_synced(&tmp.join("model.safetensors"), &model)?;
    write_synced(&tmp.join("optim.safetensors"), &optim)?;
    state.ema_crc32c = None;
    if let Some(ema) = ema {
        let bytes = weights_bytes(cfg, lay, ema, SaveDtype::F32, 1, None)?;
        state.ema_crc32c = Some(format!("{:08x}", crc32c::crc32c(&bytes)));
        write_synced(&tmp.join(EMA_FILE), &bytes)?;
    }
    write_synced(&tmp.join("state.json"), serde_json::to_string_pretty(&state)?.as_bytes())?;
    write_synced(&tmp.join("config.toml"), config_toml.as_bytes())?;
    write_synced(&tmp.join(MODEL_JSON), serde_json::to_string_pretty(cfg)?.as_bytes())?;
    sync_dir(tmp);
    if final_dir.exists() {
        // unmarked first: a kill mid-delete must not leave a folder marked complete with files missing
        let _ = std::fs::remove_file(final_dir.join(DONE));
        std::fs::remove_dir_all(final_dir).with_context(|| format!("replacing {}", final_dir.display()))?;
    }
    std::fs::rename(tmp, final_dir).with_context(|| format!("renaming {} into place", tmp.display()))?;
    sync_dir(final_dir.parent().unwrap_or(final_dir));
    write_synced(&final_dir.join(DONE), b"")?;
    sync_dir(final_dir);
    Ok(())
}

/// A run's `checkpoints/step-N` folders, complete or not, oldest first.
fn step_folders(run: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(run.join("checkpoints"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| Some((e.file_name().to_string_lossy().strip_prefix("step-")?.parse().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Complete checkpoints of a run, oldest first.
pub fn complete(run: &Path) -> Vec<(u64, PathBuf)> {
    step_folders(run).into_iter().filter(|(_, dir)| dir.join(DONE).is_file()).collect()
}

/// Files of a run folder by step.
pub type StepFiles = Vec<(u64, PathBuf)>;

/// What of a run folder's history comes after `step`: its checkpoints (complete or not) and sample
/// grids (`samples/step-N.png`), each with its step.
pub fn later_than(run: &Path, step: u64) -> (StepFiles, StepFiles) {
    let checkpoints = step_folders(run).into_iter().filter(|(s, _)| *s > step).collect();
    let mut grids: Vec<(u64, PathBuf)> = std::fs::read_dir(run.join("samples"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some((name.strip_prefix("step-")?.strip_suffix(".png")?.parse().ok()?, e.path()))
                })
                .filter(|(s, _)| *s > step)
                .collect()
        })
        .unwrap_or_default();
    grids.sort();
    (checkpoints, grids)
}

/// "checkpoints after step N (steps [..]) and K sample grids": what [`later_than`] found, in words.
pub fn describe_later(step: u64, checkpoints: &[u64], grids: usize) -> String {
    let ckpts = (!checkpoints.is_empty()).then(|| format!("checkpoints after step {step} (steps {checkpoints:?})"));
    let grids = match grids {
        0 => None,
        1 => Some("1 sample grid".to_string()),
        n => Some(format!("{n} sample grids")),
    };
    match (ckpts, grids) {
        (Some(c), Some(g)) => format!("{c} and {g}"),
        (Some(c), None) => c,
        (None, Some(g)) => format!("{g} after step {step}"),
        (None, None) => format!("nothing after step {step}"),
    }
}

/// Resuming at `step` starts a new history from there: the run's checkpoints after it (complete or
/// not) belong to the abandoned one, and `--resume auto`, `sample`, `export`, the launcher's restarts
/// and pruning all go by the highest step. They are moved, not deleted, into
/// `RUN/abandoned/after-step-N/` (`after-step-N.1/`, … when that is taken), with the sample grids
/// drawn after `step` (in `samples/` there). Returns that folder and what moved, in words (nothing:
/// `None`).
pub fn set_aside_later(run: &Path, step: u64) -> Result<Option<(PathBuf, String)>> {
    let (later, grids) = later_than(run, step);
    if later.is_empty() && grids.is_empty() {
        return Ok(None);
    }
    let base = run.join("abandoned").join(format!("after-step-{step:08}"));
    let dest = (0..).map(|k| if k == 0 { base.clone() } else { base.with_extension(k.to_string()) });
    let dest = dest.take(1000).find(|d| !d.exists()).context("run/abandoned: no free folder name")?;
    let moves =
        later.iter().map(|(_, dir)| (dir, dest.clone())).chain(grids.iter().map(|(_, f)| (f, dest.join("samples"))));
    for (from, to_dir) in moves {
        std::fs::create_dir_all(&to_dir).with_context(|| format!("creating {}", to_dir.display()))?;
        let to = to_dir.join(from.file_name().expect("a step folder or grid has a name"));
        std::fs::rename(from, &to).with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    sync_dir(&run.join("checkpoints"));
    let steps: Vec<u64> = later.iter().map(|(s, _)| *s).collect();
    Ok(Some((dest, describe_later(step, &steps, grids.len()))))
}

/// Delete complete checkpoints beyond the newest `keep_last`, except multiples of `keep_every`, and the
/// `.tmp-step-N` folders an interrupted save or prune left (the saver prunes after its save, with no
/// other write in flight).
pub fn prune(run: &Path, keep_last: usize, keep_every: u64) -> Result<()> {
    prune_with(run, keep_last, keep_every, &|dir| std::fs::remove_dir_all(dir))
}

/// [`prune`], deleting folders with `delete` (a test's stands for a process killed midway).
fn prune_with(
    run: &Path,
    keep_last: usize,
    keep_every: u64,
    delete: &dyn Fn(&Path) -> std::io::Result<()>,
) -> Result<()> {
    let root = run.join("checkpoints");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX)).map(|e| e.path()).collect()
        })
        .unwrap_or_default();
    for dir in leftovers {
        delete(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let all = complete(run);
    let n = all.len();
    for (i, (step, dir)) in all.into_iter().enumerate() {
        let recent = i + keep_last >= n;
        let milestone = keep_every > 0 && step % keep_every == 0;
        if !recent && !milestone {
            // out of sight first (a rename is atomic): deleted in place, a kill midway left a folder
            // marked DONE with files missing, which `--resume auto`, sample and export then took
            let doomed = root.join(format!("{TMP_PREFIX}{step:08}"));
            std::fs::rename(&dir, &doomed).with_context(|| format!("pruning {}", dir.display()))?;
            sync_dir(&root);
            delete(&doomed).with_context(|| format!("pruning {} (renamed {})", dir.display(), doomed.display()))?;
        }
    }
    Ok(())
}

/// A checkpoint folder, or a run folder (its newest complete checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(DONE).is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join("state.json").is_file() {
        bail!("{}: incomplete checkpoint (no {DONE} marker)", path.display());
    }
    match complete(path).pop() {
        Some((_, dir)) => Ok(dir),
        None if path.exists() => match exported_from(path) {
            Some((_, source)) => bail!(
                "{}: an `infinity export` folder, which holds no training state: sampling and resuming take the \
                 checkpoint it came from ({source}); model.init_from takes the export as it is",
                path.display()
            ),
            None => bail!("{}: neither a checkpoint nor a run folder with a complete checkpoint", path.display()),
        },
        None => bail!("{}: no such checkpoint or run folder", path.display()),
    }
}

/// The weights file of `path`: a safetensors file as it is, or the checksum-verified
/// `model.safetensors` of a checkpoint or run folder (see [`resolve`]).
pub fn weights_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some((weights, _)) = exported_from(path) {
        return Ok(weights);
    }
    let dir = resolve(path)?;
    let file = dir.join("model.safetensors");
    verify_crc(&file, &read_state(&dir)?.model_crc32c)?;
    Ok(file)
}

/// An `infinity export` folder's weights file (the one its shard index maps, when it exists) and the
/// checkpoint its config.json says it came from; `None` for any other folder.
fn exported_from(dir: &Path) -> Option<(PathBuf, String)> {
    let read =
        |f: &str| -> Option<serde_json::Value> { serde_json::from_slice(&std::fs::read(dir.join(f)).ok()?).ok() };
    let config = read("config.json").filter(|c| c["format"] == "infinity-export")?;
    let source = match (config["source"]["checkpoint"].as_str(), config["source"]["step"].as_u64()) {
        (Some(ck), Some(step)) => format!("{ck}, step {step}"),
        _ => "not recorded in its config.json".to_string(),
    };
    let index = read(crate::export::SHARD_INDEX);
    let mapped = index.as_ref().and_then(|i| i["weight_map"].as_object()?.values().next()?.as_str().map(PathBuf::from));
    let weights = dir.join(mapped.unwrap_or_else(|| PathBuf::from("model.safetensors")));
    weights.is_file().then_some((weights, source))
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

/// The checkpoint's moving average of the weights, if it keeps one (checksum, names and shapes checked).
pub fn load_ema(dir: &Path, cfg: &ModelConfig, lay: &Layout) -> Result<Option<Params<f32>>> {
    match read_state(dir)?.ema_crc32c {
        None => Ok(None),
        Some(crc) => {
            let file = dir.join(EMA_FILE);
            verify_crc(&file, &crc)?;
            Ok(Some(load_weights(&file, cfg, lay)?))
        }
    }
}

/// The model of a checkpoint, for sampling and export: its shape, weights and step, and the dataset it
/// trained on.
pub struct CheckpointModel {
    pub dir: PathBuf,
    pub model: ModelConfig,
    /// `data.dir` of the run's config (as written there: relative to where the run was started).
    pub data_dir: PathBuf,
    pub params: Params<f32>,
    pub step: u64,
    /// `run.precision` of the run's config (f32 where it has none).
    pub precision: Precision,
}

/// Load the model of `path` (see [`resolve`]), verifying its checksum, names and shapes; with `ema`,
/// the weights are the checkpoint's moving average (an error if it keeps none).
pub fn load_model(path: &Path, ema: bool) -> Result<CheckpointModel> {
    let dir = resolve(path)?;
    let state = read_state(&dir)?;
    let weights = match ema {
        true => ema_file(&dir)?,
        false => dir.join("model.safetensors"),
    };
    if !ema {
        verify_crc(&weights, &state.model_crc32c)?;
    }
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display())).map(|t| (p, t))
    };
    let (p, text) = read(MODEL_JSON)?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let model: ModelConfig = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{}: at `{}`: {}", p.display(), e.path(), e.inner()))?;
    model.validate().map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    // only the dataset is read from the run's config: settings a later build adds or drops must not
    // make older checkpoints unusable for sampling and export
    let (p, text) = read("config.toml")?;
    let config: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    let data_dir = match config.get("data").and_then(|d| d.get("dir")) {
        Some(toml::Value::String(dir)) => PathBuf::from(dir),
        _ => bail!("{}: no `data.dir` string", p.display()),
    };
    let precision = match config.get("run").and_then(|r| r.get("precision")).and_then(|v| v.as_str()) {
        Some("bf16") => Precision::Bf16,
        _ => Precision::F32,
    };
    let lay = Layout::new(&model);
    let params = load_weights(&weights, &model, &lay)?;
    Ok(CheckpointModel { dir, model, data_dir, params, step: state.step, precision })
}

fn read_state(dir: &Path) -> Result<TrainState> {
    let state = parse_state(dir)?;
    check_version(dir, &state)?;
    Ok(state)
}

/// `state.json` as it is (any version).
fn parse_state(dir: &Path) -> Result<TrainState> {
    ensure!(dir.join(DONE).is_file(), "{}: incomplete checkpoint (no {DONE} marker)", dir.display());
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{}: at `{}`: {}", state_path.display(), e.path(), e.inner()))
}

fn check_version(dir: &Path, state: &TrainState) -> Result<()> {
    ensure!(
        state.version == STATE_VERSION,
        "{}: state version {}, this build reads {STATE_VERSION}",
        dir.join("state.json").display(),
        state.version
    );
    Ok(())
}

/// The newest complete checkpoint before `dir` in its run folder, as a way on for `--resume` into
/// `run` (which moves `dir` aside to `run`'s abandoned/ when it is its own).
fn way_on(dir: &Path, run: &Path) -> Option<String> {
    let step: u64 = dir.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()?;
    let checkpoints = dir.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"))?;
    let own_run = checkpoints.parent()?;
    let (_, previous) = complete(own_run).into_iter().rfind(|(s, _)| *s < step)?;
    let absolute = |p: &Path| std::fs::canonicalize(if p.as_os_str().is_empty() { Path::new(".") } else { p }).ok();
    let moved = match absolute(own_run).is_some() && absolute(own_run) == absolute(run) {
        true => format!("; this one is then moved to {}/", run.join("abandoned").display()),
        false => String::new(),
    };
    Some(format!("resume from the previous checkpoint with --resume {}{moved}", previous.display()))
}

/// A checkpoint's `model.json` parses, and describes the tensors of the model trained (`cfg`).
fn check_model_json(dir: &Path, cfg: &ModelConfig, lay: &Layout) -> Result<()> {
    let p = dir.join(MODEL_JSON);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let model: ModelConfig = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{}: at `{}`: {} (damaged checkpoint)", p.display(), e.path(), e.inner()))?;
    model.validate().map_err(|e| anyhow::anyhow!("{}: {e} (damaged checkpoint)", p.display()))?;
    let tensors = |l: &Layout| l.specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect::<Vec<_>>();
    if tensors(&Layout::new(&model)) == tensors(lay) {
        return Ok(());
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
        "{}: describes another model than its model.safetensors holds: {} (damaged checkpoint)",
        p.display(),
        differ.join(", ")
    )
}

fn verify_crc(p: &Path, want: &str) -> Result<()> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    let found = format!("{:08x}", crc32c::crc32c(&bytes));
    ensure!(found == want, "{}: crc32c {found}, state.json expects {want} (corrupt checkpoint)", p.display());
    Ok(())
}

/// Load a checkpoint folder to resume `run` from, verifying checksums, names and shapes against `cfg`,
/// and that its `model.json` (which sample and export read) describes that model. A damaged checkpoint's
/// error names the newest complete one before it as a way on (not taken unasked: the steps after it
/// would be trained again).
pub fn load(
    dir: &Path,
    run: &Path,
    cfg: &ModelConfig,
    lay: &Layout,
    adamw: &AdamWConfig,
) -> Result<(Params<f32>, AdamW, TrainState)> {
    let damaged = |e: anyhow::Error| match way_on(dir, run) {
        Some(way) => anyhow::anyhow!("{e:#}; {way}"),
        None => e,
    };
    let state = parse_state(dir).map_err(damaged)?;
    check_version(dir, &state)?;
    for (file, want) in [("model.safetensors", &state.model_crc32c), ("optim.safetensors", &state.optim_crc32c)] {
        verify_crc(&dir.join(file), want).map_err(damaged)?;
    }
    // (the weights first: a config of another model is named by its tensors, not as damage)
    let params = load_weights(&dir.join("model.safetensors"), cfg, lay)?;
    check_model_json(dir, cfg, lay).map_err(damaged)?;
    let optim_path = dir.join("optim.safetensors");
    let bytes = std::fs::read(&optim_path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", optim_path.display()))?;
    let mut opt = AdamW::new(adamw.clone(), lay);
    for (name, dst) in [("adamw.m", &mut opt.m), ("adamw.v", &mut opt.v)] {
        let t = st.tensor(name).map_err(|_| anyhow::anyhow!("{}: `{name}` missing", optim_path.display()))?;
        if t.shape() != [lay.numel] {
            bail!(
                "{}: `{name}` has {:?} values, the model has {} parameters",
                optim_path.display(),
                t.shape(),
                lay.numel
            );
        }
        *dst = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    }
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
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

    /// Complete checkpoint folders of `steps` (their files stand in for a real checkpoint's).
    fn fake_run(steps: &[u64]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for &step in steps {
            let dir = step_dir(tmp.path(), step);
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["model.safetensors", "optim.safetensors", "state.json", DONE] {
                std::fs::write(dir.join(f), b"x").unwrap();
            }
        }
        tmp
    }

    #[test]
    fn pruning_killed_midway_leaves_no_folder_marked_complete_with_files_missing() {
        let run = fake_run(&[1, 2, 3]);
        // a kill after the first file: what the deletion leaves is what a SIGKILL there left
        let killed = |dir: &Path| -> std::io::Result<()> {
            std::fs::remove_file(dir.join("model.safetensors"))?;
            Err(std::io::Error::other("killed"))
        };
        assert!(prune_with(run.path(), 1, 0, &killed).is_err());
        for (step, dir) in complete(run.path()) {
            assert!(dir.join("model.safetensors").is_file(), "step {step}: marked complete, its weights gone");
        }
        assert_eq!(complete(run.path()).iter().map(|c| c.0).collect::<Vec<_>>(), [2, 3]);
        // the next prune removes the half-deleted folder with the others
        prune(run.path(), 1, 0).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(run.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["step-00000003"]);
    }
}
