//! An export folder read back for `infinity sample`: the model its config.json describes, the weights
//! it holds (trained or their moving average, f32 or bf16, any block chunking) and, from config.json's
//! `data` section, the dataset's schedules, conditions and tokenizer, so an export samples without the
//! dataset it was trained on.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use infinity_data::format::{BIT_ORDER, FORMAT_NAME, FORMAT_VERSION};
use infinity_data::manifest::{Conditions, TokenizerInfo};
use infinity_data::{Manifest, ScaleSchedule};
use serde::Deserialize;
use serde_json::Value;

use super::{read_export, EXPORT_FORMAT};
use crate::model::io::load_weights;
use crate::model::{Layout, ModelConfig};
use crate::train::checkpoint::CheckpointModel;
use crate::train::config::Precision;

/// An export's model, and the dataset description it carries.
pub struct LoadedExport {
    /// `dir` is the export folder; `data_dir` the training dataset's folder as recorded at export (it
    /// may since have moved: the samples need only [`LoadedExport::dataset`]).
    pub model: CheckpointModel,
    /// The weights are the moving average (`infinity export --ema`).
    pub ema: bool,
    /// What it came from, in words: the checkpoint and step, or the weights file.
    pub source: String,
    /// config.json's `source`, as written.
    pub source_record: Value,
    /// config.json's `dtype` (`float32`, `bfloat16`).
    pub dtype: String,
    /// The dataset's manifest as config.json's `data` section records it (no shards), and the folder
    /// that holds its tokenizer file: the export folder when the file was copied beside the weights.
    /// `None` when the dataset was not at hand at export. Then the rows of each schedule it recorded
    /// (none: an export of an earlier build).
    pub dataset: Option<(Manifest, PathBuf, Vec<u64>)>,
}

/// The `data` section `export` writes.
#[derive(Deserialize)]
struct DataSection {
    dir: PathBuf,
    tokenizer: TokenizerInfo,
    tokenizer_file_beside: Option<String>,
    schedules: Vec<ScaleSchedule>,
    /// The rows of each schedule the model trained on (exports of earlier builds record none).
    #[serde(default)]
    schedule_rows: Vec<u64>,
    conditions: Conditions,
}

/// Read the export in `dir` for sampling; `want_ema` (`--ema`) asks for the moving average, which the
/// export must hold (an export holds one set of weights).
pub fn load_export(dir: &Path, want_ema: bool) -> Result<LoadedExport> {
    let export = read_export(dir).with_context(|| format!("{}: not an `infinity export` folder", dir.display()))?;
    let cfg_path = dir.join("config.json");
    let bytes = std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    let config: Value = serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", cfg_path.display()))?;
    let field = |key: &str| -> Result<Value> {
        config.pointer(key).cloned().ok_or_else(|| anyhow!("{}: no `{}`", cfg_path.display(), &key[1..]))
    };
    check_index(dir, &export.weights)?;
    export.verify()?;
    let model: ModelConfig = match config.get("model") {
        Some(m) => serde_json::from_value(m.clone()).map_err(|e| anyhow!("{}: `model`: {e}", cfg_path.display()))?,
        None => bail!(
            "{}: no `model` section (written by exports since 2026-12-02; this {EXPORT_FORMAT} is older): sample \
             the checkpoint it came from ({}), or export that checkpoint again",
            cfg_path.display(),
            export.source
        ),
    };
    model.validate().map_err(|e| anyhow!("{}: `model`: {e}", cfg_path.display()))?;
    // upstream builds the model of `constructor_kwargs`, this reader the one of `model`: one edited
    // without the other describes two models
    if let Some(Value::Object(written)) = config.get("constructor_kwargs") {
        let ours = super::constructor_kwargs(&model);
        let differ: Vec<String> = ours
            .as_object()
            .expect("an object")
            .iter()
            .filter(|(k, v)| written.get(*k).is_some_and(|w| w != *v))
            .map(|(k, v)| format!("constructor_kwargs.{k} is {} where `model` gives {v}", written[k]))
            .collect();
        if !differ.is_empty() {
            bail!(
                "{}: {}: upstream would build another model than the one its weights are; export again (or mend the \
                 edit)",
                cfg_path.display(),
                differ.join(", ")
            );
        }
    }
    let ema = match field("/source/weights")?.as_str() {
        Some("ema") => true,
        Some("trained" | "init") => false,
        other => {
            bail!("{}: `source.weights` is {other:?}, expected \"trained\", \"ema\" or \"init\"", cfg_path.display())
        }
    };
    if want_ema && !ema {
        bail!("{}: holds the trained weights, not their moving average: {}", dir.display(), export.ema_advice());
    }
    let precision = match field("/source/precision")?.as_str() {
        Some("f32") => Precision::F32,
        Some("bf16") => Precision::Bf16,
        other => bail!("{}: `source.precision` is {other:?}, expected \"f32\" or \"bf16\"", cfg_path.display()),
    };
    // (null: exported from a bare weights file)
    let step = match field("/source/step")? {
        Value::Null => None,
        v => Some(v.as_u64().with_context(|| format!("{}: `source.step` is not a step", cfg_path.display()))?),
    };
    let ema_decay = config.pointer("/source/ema_decay").and_then(Value::as_f64);

    let dataset = data_section(&config, &cfg_path, model.d_vae() as u32)?;
    let lay = Layout::new(&model);
    let params = load_weights(&export.weights, &model, &lay)?;
    let dtype = config["dtype"].as_str().unwrap_or("float32").to_string();
    if let Some(w) = other_dtypes(&export.weights, &dtype) {
        tracing::warn!("{}: {w}", cfg_path.display());
    }
    let data_dir = dataset.as_ref().map(|d| d.data_dir.clone()).unwrap_or_else(|| dir.to_path_buf());
    let tokenizer = dataset.as_ref().map(|d| infinity_data::tokenizer::identity(&d.tokenizer_dir, &d.manifest));
    Ok(LoadedExport {
        model: CheckpointModel {
            dir: dir.to_path_buf(),
            model,
            data_dir,
            params,
            step,
            precision,
            ema_decay,
            tokenizer,
        },
        ema,
        source: export.source,
        source_record: field("/source")?,
        dtype,
        dataset: dataset.map(|d| (d.manifest, d.tokenizer_dir, d.schedule_rows)),
    })
}

/// An export's `data` section read back: the dataset's manifest (no shards), the folder holding its
/// tokenizer file (the export folder when the file was copied beside the weights), the dataset's folder
/// as recorded at export, and the rows of each schedule.
struct ExportedData {
    manifest: Manifest,
    tokenizer_dir: PathBuf,
    data_dir: PathBuf,
    schedule_rows: Vec<u64>,
}

/// The `data` section of the export whose config.json (at `cfg_path`) is `config`, for a model of `d`
/// bits per token; `None` when the dataset was not at hand at export.
fn data_section(config: &Value, cfg_path: &Path, d: u32) -> Result<Option<ExportedData>> {
    let Some(section) = config.get("data").filter(|d| !d.is_null()) else { return Ok(None) };
    let data: DataSection =
        serde_json::from_value(section.clone()).map_err(|e| anyhow!("{}: `data`: {e}", cfg_path.display()))?;
    // the tokenizer beside the weights, else in the dataset's folder as it was at export
    let dir = cfg_path.parent().unwrap_or(Path::new("."));
    let tokenizer_dir = if data.tokenizer_file_beside.is_some() { dir.to_path_buf() } else { data.dir.clone() };
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        d,
        bit_order: BIT_ORDER.into(),
        tokenizer: data.tokenizer,
        conditions: data.conditions,
        latent: None,
        schedules: data.schedules,
        shards: Vec::new(),
        total_rows: 0,
        created_by: format!("the data section of {}", cfg_path.display()),
    };
    // (sampling indexes its schedules and sizes scales from them: a hand-edited section that names none,
    // or an odd side, would panic there)
    manifest.check(cfg_path).map_err(|e| anyhow!("{e} (in its `data` section)"))?;
    Ok(Some(ExportedData { manifest, tokenizer_dir, data_dir: data.dir, schedule_rows: data.schedule_rows }))
}

/// The dataset an export in `dir` describes (its manifest, no shards) and the folder holding its
/// tokenizer file, where its config.json records one and reads.
pub fn export_dataset(dir: &Path) -> Option<(Manifest, PathBuf)> {
    let cfg_path = dir.join("config.json");
    let config: Value = serde_json::from_slice(&std::fs::read(&cfg_path).ok()?).ok()?;
    let d = config.get("d_vae").and_then(Value::as_u64)? as u32;
    let data = data_section(&config, &cfg_path, d).ok()??;
    Some((data.manifest, data.tokenizer_dir))
}

/// The shard index an export writes maps every tensor to its one weights file: one naming another file
/// (missing, or a second one) is not the export's, and upstream's `torch_shard` loader, which reads it,
/// would fail or load other weights than the ones sampled here.
fn check_index(dir: &Path, weights: &Path) -> Result<()> {
    let Some(map) = super::shard_map(dir)? else { return Ok(()) };
    let file = weights.file_name().and_then(|f| f.to_str()).unwrap_or_default();
    if let Some((tensor, other)) = map.iter().find(|(_, f)| f != file) {
        let missing = if dir.join(other).is_file() { "" } else { ", which is missing" };
        bail!(
            "{}: maps `{tensor}` to {other}{missing}, where an export maps every tensor to its weights file {file}: \
             edited? upstream's torch_shard loader reads this index; export again",
            dir.join(super::SHARD_INDEX).display()
        );
    }
    Ok(())
}

/// Where the weights file's tensors are not all of config.json's `dtype` (the file rewritten by another
/// tool): what differs, in words. They are read as stored; a loader that trusts `dtype` would not.
fn other_dtypes(weights: &Path, dtype: &str) -> Option<String> {
    let want = match dtype {
        "float32" => safetensors::Dtype::F32,
        "bfloat16" => safetensors::Dtype::BF16,
        _ => return Some(format!("`dtype` is {dtype:?}, expected \"float32\" or \"bfloat16\"")),
    };
    let bytes = crate::model::io::map_file(weights).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let mut other: Vec<(String, safetensors::Dtype)> =
        meta.tensors().into_iter().map(|(n, t)| (n, t.dtype)).filter(|(_, d)| *d != want).collect();
    other.sort();
    let (first, d) = other.first()?;
    Some(format!(
        "`dtype` is {dtype:?}, but {} of {} are not (`{first}` is {d:?}); they are read as stored, but a loader \
         that trusts `dtype` would misread them: export again",
        other.len(),
        infinity_launcher::plural(meta.tensors().len(), "tensor")
    ))
}

#[cfg(test)]
mod tests {
    /// A weights file whose tensors are not all of config.json's `dtype` is named, with how many.
    #[test]
    fn tensors_of_another_dtype_than_config_json_says_are_named() {
        use safetensors::{tensor::TensorView, Dtype};
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("w.safetensors");
        let (f32s, f16s) = (vec![0u8; 8], vec![0u8; 4]);
        let views = [
            ("a", TensorView::new(Dtype::F32, vec![2], &f32s).unwrap()),
            ("b", TensorView::new(Dtype::F16, vec![2], &f16s).unwrap()),
        ];
        std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
        let w = super::other_dtypes(&file, "float32").unwrap();
        assert!(w.contains("1 of 2 tensors are not (`b` is F16)"), "{w}");
        assert!(super::other_dtypes(&file, "bfloat16").unwrap().contains("2 of 2 tensors"));
        assert!(super::other_dtypes(&file, "int8").unwrap().contains("expected \"float32\" or \"bfloat16\""));
    }
}
