//! `infinity export`: inference weights under upstream state_dict names (f32 or bf16, the model's
//! `block_chunks.C.module.J` keys or another chunking of its blocks) and a `config.json` with upstream's
//! constructor arguments (`block_chunks` as the keys have it), the bit width and, when the training
//! dataset is at hand, its schedules and tokenizer.

mod folder;
mod load;
mod upstream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use infinity_data::manifest::{replace_atomic, write_atomic};
use infinity_data::Manifest;
use safetensors::View;
use serde_json::{json, Value};

use crate::model::io::{weight_tensors, SaveDtype};
use crate::model::streamed::{self, Lazy};
use crate::model::{Conditioning, Layout, ModelConfig};
use crate::train::checkpoint::{self, CheckpointModel, MODEL_FILE};

use self::folder::{
    enclosing_checkpoint, lock_folder, refuse_a_run_or_dataset, refuse_another_export, refuse_the_source,
};
pub use load::{export_dataset, load_export, LoadedExport};
use upstream::run_infinity;

/// Upstream `Infinity(...)` keyword arguments of `mc` (the settings this implementation fixes are
/// written out too, so a loader can check them).
pub fn constructor_kwargs(mc: &ModelConfig) -> Value {
    let mut kwargs = json!({
        "embed_dim": mc.embed_dim,
        "depth": mc.depth,
        "num_heads": mc.num_heads,
        "mlp_ratio": mc.mlp_ratio,
        "norm_eps": mc.norm_eps,
        "text_channels": mc.text_channels,
        "text_maxlen": mc.text_maxlen,
        "cond_drop_rate": mc.cond_drop_rate,
        "drop_path_rate": mc.drop_path_rate,
        "block_chunks": mc.block_chunks,
        "cos_attn": true,
        "shared_aln": true,
        "rope2d_each_sa_layer": 1,
        "rope2d_normalized_by_hw": 2,
        "add_lvl_embeding_only_first_block": 1,
        "use_bit_label": 1,
        "apply_spatial_patchify": mc.apply_spatial_patchify as u8,
    });
    if !mc.has_cross_attention() {
        // a class-conditioned model has no text path: its preset's text sizes would only mislead
        for key in ["text_channels", "text_maxlen"] {
            kwargs.as_object_mut().expect("an object").remove(key);
        }
    }
    kwargs
}

/// What `infinity export` writes: the element type, the block layout of the keys, the dataset whose
/// schedules and tokenizer go beside the weights, and whether the weights are the moving average.
pub struct ExportOptions {
    pub dtype: SaveDtype,
    /// Block chunks in the keys and in `constructor_kwargs` (1: `blocks.N` keys).
    pub block_chunks: usize,
    /// The training dataset, where the checkpoint's `data.dir` does not lead to it from here.
    pub data: Option<PathBuf>,
    pub ema: bool,
    /// Re-exporting an export (another dtype or block chunking): what it came from and carries.
    pub from_export: Option<FromExport>,
    /// `--init`: the weights are the ones a run of this training config starts from.
    pub init: Option<FreshInit>,
}

/// The weights a run of a training config starts from (`infinity export --init`): its seed's
/// initialisation, overlaid by its `model.init_from`'s weights where it names a source.
pub struct FreshInit {
    pub config: PathBuf,
    pub seed: u64,
    pub init_from: Option<crate::train::init_from::InitSource>,
}

/// An export exported again: its folder and dtype, its config.json's `source` (kept, the folder and
/// dtype appended to `source.exports`), and the dataset description of its `data` section with the
/// folder holding its tokenizer (none where it has none).
pub struct FromExport {
    pub dir: PathBuf,
    pub dtype: String,
    pub source: Value,
    pub dataset: Option<(Manifest, PathBuf, Vec<u64>)>,
}

/// The files written, and what a user should know about them (a dataset not found, one chunk).
pub struct Exported {
    pub weights: PathBuf,
    pub config: PathBuf,
    pub warnings: Vec<String>,
}

/// Write `out` (safetensors) and `config.json` beside it (and the dataset's tokenizer, when found).
/// Why the dataset `m` (its tokenizer in `tokenizer_dir`) is not the one `ck` (as `mc`) trained on, if
/// so: its bits, tokenizer layout or conditions differ, or its tokenizer is another.
fn dataset_or_tokenizer_mismatch(
    ck: &CheckpointModel,
    mc: &ModelConfig,
    (tokenizer_dir, m): (&Path, &Manifest),
) -> Option<String> {
    crate::infer::dataset_mismatch(mc, m)
        .or_else(|| crate::infer::tokenizer_mismatch(ck.tokenizer.as_deref(), &ck.data_dir, tokenizer_dir, m))
}

/// Export `ck` to the weights file `out` (its folder made where missing), the folder locked meanwhile:
/// a second export into it at once would interleave its files with this one's (config.json describing
/// one dtype, the weights another), so it is refused instead, naming the folder.
pub fn export(ck: &CheckpointModel, out: &Path, opts: &ExportOptions) -> Result<Exported> {
    let folder = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let made = infinity_data::file_lock::missing_folders(folder);
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    // (held to the end; where another export holds it, the folder is that one's, left alone)
    let _lock = lock_folder(folder)?;
    let exported = export_locked(ck, out, opts);
    if exported.is_err() {
        // (a refused export leaves no empty folder behind)
        infinity_data::file_lock::remove_made_folders(&made, "");
    }
    exported
}

/// [`export`] with its folder made and locked.
fn export_locked(ck: &CheckpointModel, out: &Path, opts: &ExportOptions) -> Result<Exported> {
    let mc = ModelConfig { block_chunks: opts.block_chunks, ..ck.model.clone() };
    let mut warnings = Vec::new();
    let folder = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file = out.file_name().and_then(|f| f.to_str()).context("the weights need a file name")?;
    // a checkpoint's own files (or the run's abandoned history) must not be overwritten by its export,
    // and pruning deletes a checkpoint folder with whatever was exported into it
    if let Some(ckpt) = enclosing_checkpoint(folder) {
        if ckpt == resolved(folder) {
            bail!("{}: a checkpoint folder; export beside it, not into it", folder.display());
        }
        bail!(
            "{}: inside the checkpoint folder {}, which pruning old checkpoints (checkpoint.keep_last) deletes with \
             all it holds; export outside it",
            folder.display(),
            ckpt.display()
        );
    }
    refuse_a_run_or_dataset(folder)?;
    if let Some(from) = opts.from_export.as_ref().filter(|f| resolved(&f.dir) == resolved(folder)) {
        bail!("-o {}: the export being read ({}); export into another folder", out.display(), from.dir.display());
    }
    if ck.step.is_none() && opts.from_export.is_none() {
        refuse_the_source(&ck.dir, out, folder)?;
    }
    let described = refuse_another_export(folder, file)?;
    // (the same name again replaces that export, as documented: said, where it held other weights)
    let replaced = read_export(folder).filter(|old| resolved(&old.weights) == resolved(out));
    let replaced = replaced.map(|old| (old.source, std::fs::read(folder.join("config.json")).ok()));
    // (a file no export of this folder describes: another tool's weights, a checkpoint's copied out; an
    // export cut short before its config.json is described by its shard index)
    ensure!(
        replaced.is_some() || described || !out.exists(),
        "-o {}: exists, and neither this folder's config.json nor its {SHARD_INDEX} describes it as an export's \
         weights: export under another name, or remove it first",
        out.display()
    );

    // The dataset tells a decoder which schedules and tokenizer fit; its tokenizer file is copied beside
    // the weights, so the export decodes without the dataset. Found before anything is written, so a
    // refused --data leaves the folder as it was. An export exported again carries its own description.
    let data_dir = opts.data.clone().unwrap_or_else(|| ck.data_dir.clone());
    let carried = opts.from_export.as_ref().and_then(|f| f.dataset.as_ref()).filter(|_| opts.data.is_none());
    let tokenizer_dir = carried.map_or_else(|| data_dir.clone(), |(_, dir, _)| dir.clone());
    let manifest = match carried.map_or_else(|| Manifest::load(&data_dir), |(m, _, _)| Ok(m.clone())) {
        Ok(m) => match (dataset_or_tokenizer_mismatch(ck, &mc, (&tokenizer_dir, &m)), &opts.data) {
            (None, _) => Some(m),
            (Some(why), Some(_)) => bail!("--data {}: {why}: not the model's dataset", data_dir.display()),
            // the run's data.dir now holds another dataset: its schedules and tokenizer are not this model's
            (Some(why), None) => {
                warnings.push(format!(
                    "{} (the run's data.dir): {why}: not the dataset the model trained on (replaced since?), so \
                     config.json has no data section and no tokenizer is copied; pass --data with the model's dataset",
                    data_dir.display()
                ));
                None
            }
        },
        Err(e) if opts.data.is_some() => return Err(e).with_context(|| format!("--data {}", data_dir.display())),
        Err(_) if opts.from_export.is_some() => {
            warnings.push(
                "the export being read has no data section (its dataset was not at hand): neither has this one, \
                 and no tokenizer is copied; pass --data DIR"
                    .into(),
            );
            None
        }
        Err(e) => {
            warnings.push(format!(
                "the training dataset is not at hand ({e:#}): config.json has no schedules and no tokenizer is \
                 copied; pass --data DIR"
            ));
            None
        }
    };
    // (the tokenizer's copy beside the weights keeps its own name)
    if manifest.as_ref().and_then(|m| m.tokenizer.file.as_deref()) == Some(file) {
        bail!(
            "-o {}: the export writes its copy of the tokenizer under that name beside the weights; name them \
             otherwise (the default: model.safetensors)",
            out.display()
        );
    }

    let lay = Layout::new(&mc);
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let tensors = weight_tensors(&mc, &lay, &ck.params, opts.dtype, opts.block_chunks)?;
    let index_json = shard_index(&tensors, file);
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    // written a tensor at a time beside `out`, then renamed over it (a reader never sees half a file)
    // (the index first: weights cut short after it are described, so the same command writes them again)
    let index = folder.join(SHARD_INDEX);
    write_atomic(&index, serde_json::to_string_pretty(&index_json)?.as_bytes())
        .with_context(|| format!("writing {}", index.display()))?;
    // (the crc32c of the bytes written and synced, kept as they stream: what config.json records)
    let mut crc = 0;
    replace_atomic(out, |tmp| streamed::write_file(tmp, tensors, Some(meta)).map(|c| crc = c))?;

    let conditioning = match &mc.conditioning {
        Conditioning::Text => json!({ "kind": "text" }),
        Conditioning::Class { num_classes } => json!({ "kind": "class", "num_classes": num_classes }),
    };
    let mut tokenizer_copy = None;
    if let Some(file) = manifest.as_ref().and_then(|m| m.tokenizer.file.clone()) {
        let (from, to) = (tokenizer_dir.join(&file), out.with_file_name(&file));
        if from.is_file() {
            // (a link to the dataset's own file there already: a copy onto itself would empty it)
            if !(to.exists() && same_file(&from, &to)) {
                std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
            tokenizer_copy = Some(file);
        }
    }
    let (upstream_loader, loader_warnings) = run_infinity(&mc, folder, manifest.as_ref(), tokenizer_copy.as_deref());
    warnings.extend(loader_warnings);
    let data = manifest.map(|m| {
        let mut data = json!({
            "dir": resolved(&data_dir),
            "tokenizer": m.tokenizer,
            "tokenizer_file_beside": tokenizer_copy,
            "schedules": m.schedules,
            // (what sampling defaults to: a schedule the model trained on)
            "schedule_rows": carried.map_or_else(|| crate::infer::rows_by_schedule(&m), |(_, _, rows)| rows.clone()),
            "conditions": m.conditions,
        });
        if mc.apply_spatial_patchify {
            data["transformer_schedules"] = transformer_schedules(&mc, &m.schedules);
        }
        data
    });
    // (a class-conditioned model is not upstream's Infinity: its inference code does not apply)
    if mc.block_chunks == 1 && mc.has_cross_attention() {
        warnings.push(format!(
            "block_chunks = 1 (`blocks.N` keys): upstream's autoregressive_infer_cfg iterates the block chunks and \
             needs more than one; --block-chunks K (K of {:?}) exports that layout",
            divisors(mc.depth).into_iter().filter(|&k| k > 1).collect::<Vec<_>>()
        ));
    }
    if mc.has_cross_attention() && mc.text_channels < 128 {
        warnings.push(format!(
            "text_channels = {}: upstream's text_proj_for_sos takes text_channels // 128 attention heads (none \
             here) and cannot be built; this model's pool has one head",
            mc.text_channels
        ));
    }
    let source = match &opts.from_export {
        // what the export came from, as it says, and the exports between, each with its dtype
        Some(from) => {
            let mut source = from.source.clone();
            let mut exports = source["exports"].as_array().cloned().unwrap_or_default();
            exports.push(json!({ "dir": resolved(&from.dir), "dtype": from.dtype }));
            source["exports"] = json!(exports);
            if from.dtype == "bfloat16" && opts.dtype == SaveDtype::F32 {
                warnings.push(format!(
                    "{} holds bfloat16 weights: the float32 export holds their values widened, not the trained ones",
                    from.dir.display()
                ));
            }
            source
        }
        None if opts.init.is_some() => {
            let init = opts.init.as_ref().expect("matched");
            let mut source = json!({
                "weights": "init", "config": resolved(&init.config), "seed": init.seed, "precision": ck.precision, "step": 0
            });
            if let Some(from) = &init.init_from {
                source["init_from"] = json!(from);
            }
            source
        }
        None => {
            let mut source = json!({
                "weights": if opts.ema { "ema" } else { "trained" },
                // the run's arithmetic (`run.precision`): what the weights were trained and sampled in
                "precision": ck.precision,
            });
            match ck.step {
                Some(step) => (source["checkpoint"], source["step"]) = (json!(resolved(&ck.dir)), json!(step)),
                // a bare weights file (`--config`): its step is not known
                None => (source["weights_file"], source["step"]) = (json!(resolved(&ck.dir)), Value::Null),
            }
            if opts.ema {
                source["ema_decay"] = json!(ck.ema_decay);
            }
            // a fine-tune's lineage: the weights its run started from (the checkpoint keeps it)
            if let Some(from) = ck.step.and_then(|_| crate::train::checkpoint::read_state(&ck.dir).ok()?.init_from) {
                source["init_from"] = json!(from);
            }
            source
        }
    };
    let config = json!({
        "format": EXPORT_FORMAT,
        "version": 1,
        // the file this config.json describes (one export per folder: see refuse_another_export), and its
        // checksum, which every reader of the export verifies
        "weights": file,
        "weights_crc32c": format!("{crc:08x}"),
        "architecture": if mc.has_cross_attention() { "Infinity" } else { "Infinity (class-conditioned, VAR-style)" },
        "constructor_kwargs": constructor_kwargs(&mc),
        // what upstream's tools/run_infinity.py adds for inference (its non-fused norm path drops the
        // RoPE offset of every scale after the first under the KV cache)
        "inference_kwargs": { "fused_norm": true, "pad_to_multiplier": 128, "inference_mode": true, "customized_flash_attn": false },
        "upstream_loader": upstream_loader,
        "d": mc.d,
        // the tokenizer's channels (upstream's `vae_type`): d, or d/4 with spatial patchify
        "d_vae": mc.d_vae(),
        "conditioning": conditioning,
        "dtype": match opts.dtype { SaveDtype::F32 => "float32", SaveDtype::Bf16 => "bfloat16" },
        // upstream keeps `blocks.N` for a model of one chunk, and so does chunked_name
        "key_layout": if mc.block_chunks > 1 { "block_chunks.C.module.J" } else { "blocks.N" },
        "parameters": lay.numel,
        // this framework's own description of the model (its model.json), for `infinity sample`
        "model": mc,
        "source": source,
        "data": data,
    });
    if let Some((old_source, old_config)) = replaced {
        let old: Value = old_config.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        // (another chunking of the blocks' keys is the same model)
        let unchunked = |m: &Value| {
            let mut m = m.clone();
            m.as_object_mut().map(|o| o.remove("block_chunks"));
            m
        };
        let other_model = old.get("model").is_some_and(|m| unchunked(m) != unchunked(&config["model"]));
        if old["source"] != config["source"] || other_model {
            let model = if other_model { ", another model" } else { "" };
            warnings.push(format!("{} replaces the export of {old_source}{model} that it held", out.display()));
        }
    }
    let cfg_path = out.with_file_name("config.json");
    write_atomic(&cfg_path, serde_json::to_string_pretty(&config)?.as_bytes())
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    Ok(Exported { weights: out.to_path_buf(), config: cfg_path, warnings })
}

/// The index transformers' `load_sharded_checkpoint` reads (upstream's `--checkpoint_type torch_shard`).
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// `"format"` of an export's config.json.
pub const EXPORT_FORMAT: &str = "infinity-export";

/// What an `infinity export` folder holds, as its config.json and shard index say.
pub struct ExportFolder {
    /// The weights file (the one the shard index maps, when it exists).
    pub weights: PathBuf,
    /// What it came from, in words: the checkpoint and step, or the weights file.
    pub source: String,
    /// The weights file it came from (`infinity export FILE --config`), where it came from one.
    pub weights_file: Option<String>,
    /// Whether the weights are the moving average (`infinity export --ema`).
    pub ema: bool,
    /// The weights file's crc32c as config.json records it (exports of earlier builds record none).
    pub crc32c: Option<String>,
    /// The checkpoint it came from, where it came from one.
    pub checkpoint: Option<PathBuf>,
}

impl ExportFolder {
    /// An error unless the weights file has the crc32c config.json records (none recorded: no check). A
    /// file changed since the export (a damaged copy, a byte flipped on disk) would otherwise load, and
    /// be sampled, evaluated or exported again as though it were the model.
    pub fn verify(&self) -> Result<()> {
        let Some(want) = &self.crc32c else {
            // (an export of an earlier build, or a config.json edited: said, since nothing checks the file)
            tracing::warn!(
                "{}: its config.json records no weights_crc32c, so the weights are not checked against damage",
                self.weights.display()
            );
            return Ok(());
        };
        let (_, crc) = infinity_data::writer::file_crc32c(&self.weights)
            .with_context(|| format!("reading {}", self.weights.display()))?;
        let found = format!("{crc:08x}");
        ensure!(
            &found == want,
            "{}: crc32c {found}, its config.json records {want}: the file changed since it was exported (a damaged \
             copy, or an export into its name cut short?): copy it again, or export again",
            self.weights.display()
        );
        Ok(())
    }

    /// How to get the moving average where this export holds the trained weights.
    pub fn ema_advice(&self) -> String {
        let pytorch = |f: &str| [".pth", ".pt", ".bin", ".ckpt"].iter().any(|e| f.ends_with(e));
        match &self.weights_file {
            Some(file) if pytorch(file) => format!(
                "export {file} again with --config and --ema, where it is upstream's training checkpoint (which \
                 keeps one as trainer.gpt_ema_fsdp)"
            ),
            Some(file) => format!("it came from {file}, which holds one set of weights: there is no average to take"),
            // (a checkpoint at hand that holds none: its run kept no average, optim.ema_decay = 0)
            None if self.checkpoint.as_ref().is_some_and(|c| c.is_dir() && !c.join(checkpoint::EMA_FILE).is_file()) => {
                format!(
                    "it came from {}, whose run kept no moving average (optim.ema_decay = 0): there is none to take",
                    self.source
                )
            }
            None => format!("export the checkpoint ({}) with --ema", self.source),
        }
    }
}

/// The export in `dir`; `None` for any other folder (or one whose weights are gone).
pub fn read_export(dir: &Path) -> Option<ExportFolder> {
    let read = |f: &str| -> Option<Value> { serde_json::from_slice(&std::fs::read(dir.join(f)).ok()?).ok() };
    let config = read("config.json").filter(|c| c["format"] == EXPORT_FORMAT)?;
    let weights_file = config["source"]["weights_file"].as_str().map(str::to_string);
    let init = config["source"]["config"].as_str().filter(|_| config["source"]["weights"] == "init");
    let (checkpoint, step) = (config["source"]["checkpoint"].as_str(), config["source"]["step"].as_u64());
    let source = match (init, checkpoint, step, &weights_file) {
        (Some(config), ..) => format!("the initial weights of {config}"),
        (_, Some(ck), Some(step), _) => format!("{ck}, step {step}"),
        (.., Some(file)) => format!("the weights file {file}"),
        _ => "not recorded in its config.json".to_string(),
    };
    // the file config.json names (a plain name in the folder), else its shard index's (an export of an
    // earlier build named none), else the default name
    let named = config["weights"].as_str().filter(|f| !f.is_empty() && Path::new(f).file_name() == Some(f.as_ref()));
    let mapped = || shard_map(dir).ok().flatten().and_then(|m| m.into_iter().next()).map(|(_, f)| f);
    let weights = dir.join(named.map(str::to_string).or_else(mapped).unwrap_or_else(|| MODEL_FILE.to_string()));
    let ema = config["source"]["weights"] == "ema";
    let crc32c = config["weights_crc32c"].as_str().map(str::to_string);
    let checkpoint = checkpoint.map(PathBuf::from);
    weights.is_file().then_some(ExportFolder { weights, source, weights_file, ema, crc32c, checkpoint })
}

/// The `(tensor, file)` pairs of the [`SHARD_INDEX`] in `dir`, in the index's key order (a value that is
/// no string as its JSON text); `None` where the folder has no index.
pub(crate) fn shard_map(dir: &Path) -> Result<Option<Vec<(String, String)>>> {
    let index = dir.join(SHARD_INDEX);
    if !index.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&index).with_context(|| format!("reading {}", index.display()))?;
    let v: Value = serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", index.display()))?;
    let map = v["weight_map"].as_object().with_context(|| format!("{}: no `weight_map`", index.display()))?;
    let file = |f: &Value| f.as_str().map_or_else(|| f.to_string(), str::to_string);
    Ok(Some(map.iter().map(|(t, f)| (t.clone(), file(f))).collect()))
}

/// [`SHARD_INDEX`] of `tensors` written as `file`: one shard holding every tensor.
fn shard_index(tensors: &[(String, Lazy)], file: &str) -> Value {
    let total: usize = tensors.iter().map(|(_, t)| t.data_len()).sum();
    let map: serde_json::Map<String, Value> = tensors.iter().map(|(n, _)| (n.clone(), json!(file))).collect();
    json!({ "metadata": { "total_size": total }, "weight_map": map })
}

/// The block-chunk counts a model of `depth` blocks can be exported with.
pub fn divisors(depth: usize) -> Vec<usize> {
    (1..=depth).filter(|k| depth.is_multiple_of(*k)).collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// `p` from the file-system root with links and `..` resolved (the empty path as `.`), as given when it
/// cannot be resolved: for a config read elsewhere, or to tell whether two paths are one folder.
/// (`std::path::absolute` resolves neither.)
pub(crate) fn resolved(p: &Path) -> PathBuf {
    let p = if p.as_os_str().is_empty() { Path::new(".") } else { p };
    // (a path gone meanwhile, a checkpoint pruned: absolute all the same)
    p.canonicalize().or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_path_buf())
}

/// With spatial patchify, the schedules upstream's inference takes (the manifest's are the tokenizer's):
/// the transformer's, halved, written as the manifest's are, `[1, h, w]` per scale
/// (`autoregressive_infer_cfg` asserts the leading 1 and reshapes by the other two).
fn transformer_schedules(mc: &ModelConfig, schedules: &[infinity_data::ScaleSchedule]) -> serde_json::Value {
    let halved: Vec<_> = schedules
        .iter()
        .map(|s| {
            let scales: Vec<[usize; 3]> = mc.token_scales(&s.hw()).into_iter().map(|(h, w)| [1, h, w]).collect();
            json!({ "name": s.name, "scales": scales })
        })
        .collect();
    json!(halved)
}

#[cfg(test)]
pub(crate) mod tests {
    use infinity_data::manifest::{Conditions, TextDtype, TextInfo, TokenizerInfo};
    use infinity_data::{Catalog, Manifest};

    use crate::infer::dataset_mismatch;
    use crate::model::{Conditioning, ModelConfig};

    #[test]
    fn class_models_export_no_text_sizes() {
        let mut mc = ModelConfig::preset("tiny").unwrap();
        let text = super::constructor_kwargs(&mc);
        assert_eq!((text["text_channels"].as_u64(), text["text_maxlen"].as_u64()), (Some(128), Some(16)));
        mc.conditioning = Conditioning::Class { num_classes: 24 };
        let class = super::constructor_kwargs(&mc);
        assert!(class.get("text_channels").is_none() && class.get("text_maxlen").is_none(), "{class}");
        assert_eq!(class["drop_path_rate"], 0.0);
    }

    /// A text dataset of `d` bits by `tokenizer`, at upstream's `budget` for each of `templates`.
    pub(super) fn dataset(d: u32, tokenizer: &str, budget: &str, templates: &[&str]) -> Manifest {
        let schedules = templates.iter().map(|t| Catalog::upstream().schedule(t, budget).unwrap()).collect();
        let text = TextInfo {
            width: 2048,
            dtype: TextDtype::Bf16,
            max_tokens: 512,
            encoder: "flan-t5-xl".into(),
            short_caption: false,
        };
        Manifest {
            format: "infinity-bits".into(),
            format_version: 1,
            d,
            bit_order: String::new(),
            tokenizer: TokenizerInfo { name: tokenizer.into(), file: None, params: serde_json::Value::Null },
            conditions: Conditions { class: None, text: Some(text), caption: false },
            latent: None,
            schedules,
            shards: Vec::new(),
            total_rows: 0,
            created_by: String::new(),
        }
    }

    /// The transformer's schedules of a patchified model read as the manifest's: `[1, h, w]`, halved.
    #[test]
    fn transformer_schedules_are_written_as_upstream_takes_them() {
        let mc = ModelConfig { apply_spatial_patchify: true, ..ModelConfig::preset("layer12").unwrap() };
        let mut m = dataset(32, "bsq-vae-d32", "0.06M", &["1.000"]);
        m.schedules[0].scales = vec![[1, 2, 2], [1, 4, 4], [1, 8, 12]];
        let written = super::transformer_schedules(&mc, &m.schedules);
        let scales: Vec<[usize; 3]> = serde_json::from_value(written[0]["scales"].clone()).unwrap();
        let tokenizer = m.schedules[0].hw();
        assert_eq!(scales.len(), tokenizer.len());
        for (t, (h, w)) in scales.iter().zip(&tokenizer) {
            assert_eq!(*t, [1, h / 2, w / 2], "{written}");
        }
    }

    /// An export folder is known by its config.json's format; its weights are the file its config.json
    /// names (else the one its shard index maps), and it must still be there.
    #[test]
    fn an_export_folder_names_its_weights_and_source() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(super::read_export(dir).is_none());
        let config = serde_json::json!({ "format": super::EXPORT_FORMAT, "source": { "checkpoint": "/c", "step": 3 } });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let index = serde_json::json!({ "weight_map": { "head.weight": "w.safetensors" } });
        std::fs::write(dir.join(super::SHARD_INDEX), index.to_string()).unwrap();
        assert!(super::read_export(dir).is_none(), "its weights are missing");
        std::fs::write(dir.join("w.safetensors"), b"x").unwrap();
        let export = super::read_export(dir).unwrap();
        assert_eq!((export.weights, export.source.as_str()), (dir.join("w.safetensors"), "/c, step 3"));
        // the file config.json names, where the index was not copied with it (nor a path out of the folder)
        std::fs::remove_file(dir.join(super::SHARD_INDEX)).unwrap();
        assert!(super::read_export(dir).is_none(), "no weights named: model.safetensors, which is not there");
        let named = |weights: &str| {
            let config = serde_json::json!({ "format": super::EXPORT_FORMAT, "weights": weights, "source": {} });
            std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
            super::read_export(dir).map(|e| e.weights)
        };
        assert_eq!(named("w.safetensors"), Some(dir.join("w.safetensors")));
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/w.safetensors"), b"x").unwrap();
        assert_eq!(named("sub/w.safetensors"), None, "a path, not a name in the folder: model.safetensors");
        std::fs::write(dir.join("config.json"), r#"{ "format": "other" }"#).unwrap();
        assert!(super::read_export(dir).is_none());
    }

    /// A dataset of another `d`, tokenizer layout or condition is not the model's.
    #[test]
    fn another_models_dataset_is_named() {
        let layer12 = ModelConfig::preset("layer12").unwrap();
        assert_eq!(dataset_mismatch(&layer12, &dataset(32, "bsq-vae-d32", "0.06M", &["1.000"])), None);
        let why = dataset_mismatch(&layer12, &dataset(16, "bsq-vae-d16", "0.06M", &["1.000"]));
        assert_eq!(why.as_deref(), Some("d = 16, the model's tokenizer has d = 32"));
        let mut narrow = dataset(32, "bsq-vae-d32", "0.06M", &["1.000"]);
        narrow.conditions.text.as_mut().unwrap().width = 32;
        let why = dataset_mismatch(&layer12, &narrow).unwrap();
        assert!(why.contains("text features of width 32, the model's are 2048"), "{why}");
        let class = ModelConfig { conditioning: Conditioning::Class { num_classes: 10 }, ..layer12 };
        let why = dataset_mismatch(&class, &narrow).unwrap();
        assert!(why.contains("no class condition"), "{why}");
        // a 16th scale has no lvl_embed row: on the GPU it read the parameters after the table
        let mut long = dataset(32, "bsq-vae-d32", "0.06M", &["1.000"]);
        long.schedules[0].scales = (1..=16).map(|s| [1, s, s]).collect();
        let why = dataset_mismatch(&layer12, &long).unwrap();
        assert!(why.contains("has 16 scales; the model embeds at most 15"), "{why}");
        long.schedules[0].scales.pop();
        assert_eq!(dataset_mismatch(&layer12, &long), None);
    }
}
