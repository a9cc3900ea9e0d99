//! `infinity export`: inference weights under upstream state_dict names (f32 or bf16, the model's
//! `block_chunks.C.module.J` keys or another chunking of its blocks) and a `config.json` with upstream's
//! constructor arguments (`block_chunks` as the keys have it), the bit width and, when the training
//! dataset is at hand, its schedules and tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use infinity_data::manifest::write_atomic;
use infinity_data::Manifest;
use serde_json::{json, Value};

use crate::model::io::{weights_bytes, SaveDtype};
use crate::model::{Conditioning, Layout, ModelConfig};
use crate::train::checkpoint::{CheckpointModel, DONE};

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
}

/// The files written, and what a user should know about them (a dataset not found, one chunk).
pub struct Exported {
    pub weights: PathBuf,
    pub config: PathBuf,
    pub warnings: Vec<String>,
}

/// Write `out` (safetensors) and `config.json` beside it (and the dataset's tokenizer, when found).
pub fn export(ck: &CheckpointModel, out: &Path, opts: &ExportOptions) -> Result<Exported> {
    let mc = ModelConfig { block_chunks: opts.block_chunks, ..ck.model.clone() };
    let mut warnings = Vec::new();
    let folder = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // a checkpoint's own files (or the run's abandoned history) must not be overwritten by its export
    if folder.join(DONE).is_file() || folder.join("state.json").is_file() {
        bail!("{}: a checkpoint folder; export beside it, not into it", folder.display());
    }
    let lay = Layout::new(&mc);
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes = weights_bytes(&mc, &lay, &ck.params, opts.dtype, opts.block_chunks, Some(meta))?;
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    write_atomic(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    let file = out.file_name().and_then(|f| f.to_str()).context("the weights need a file name")?;
    let index = folder.join(SHARD_INDEX);
    write_atomic(&index, serde_json::to_string_pretty(&shard_index(&bytes, file)?)?.as_bytes())
        .with_context(|| format!("writing {}", index.display()))?;

    let conditioning = match &mc.conditioning {
        Conditioning::Text => json!({ "kind": "text" }),
        Conditioning::Class { num_classes } => json!({ "kind": "class", "num_classes": num_classes }),
    };
    // The dataset tells a decoder which schedules and tokenizer fit; its tokenizer file is copied beside
    // the weights, so the export decodes without the dataset.
    let data_dir = opts.data.clone().unwrap_or_else(|| ck.data_dir.clone());
    let manifest = match Manifest::load(&data_dir) {
        Ok(m) => Some(m),
        Err(e) if opts.data.is_some() => return Err(e).with_context(|| format!("--data {}", data_dir.display())),
        Err(e) => {
            warnings.push(format!(
                "the training dataset is not at hand ({e:#}): config.json has no schedules and no tokenizer is \
                 copied; pass --data DIR"
            ));
            None
        }
    };
    let mut tokenizer_copy = None;
    if let Some(file) = manifest.as_ref().and_then(|m| m.tokenizer.file.clone()) {
        let (from, to) = (data_dir.join(&file), out.with_file_name(&file));
        if from.is_file() {
            // exporting into the dataset's own folder: the tokenizer is already beside the weights
            if !(to.exists() && same_file(&from, &to)) {
                std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
            tokenizer_copy = Some(file);
        }
    }
    let pixel_budget = manifest.as_ref().and_then(|m| m.schedules.first()).map(|s| s.pixel_budget.clone());
    let data = manifest.map(|m| {
        let mut data = json!({
            "dir": absolute(&data_dir),
            "tokenizer": m.tokenizer,
            "tokenizer_file_beside": tokenizer_copy,
            "schedules": m.schedules,
            "conditions": m.conditions,
        });
        if mc.apply_spatial_patchify {
            // the schedules above are the tokenizer's; upstream's inference takes the transformer's
            let halved: Vec<_> =
                m.schedules.iter().map(|s| json!({ "name": s.name, "scales": mc.token_scales(&s.hw()) })).collect();
            data["transformer_schedules"] = json!(halved);
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
    let (upstream_loader, warning) = run_infinity(&mc, folder, pixel_budget.as_deref());
    warnings.extend(warning);
    if mc.has_cross_attention() && mc.text_channels < 128 {
        warnings.push(format!(
            "text_channels = {}: upstream's text_proj_for_sos takes text_channels // 128 attention heads (none \
             here) and cannot be built; this model's pool has one head",
            mc.text_channels
        ));
    }
    let config = json!({
        "format": "infinity-export",
        "version": 1,
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
        "source": { "checkpoint": absolute(&ck.dir), "step": ck.step, "weights": if opts.ema { "ema" } else { "trained" } },
        "data": data,
    });
    let cfg_path = out.with_file_name("config.json");
    write_atomic(&cfg_path, serde_json::to_string_pretty(&config)?.as_bytes())
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    Ok(Exported { weights: out.to_path_buf(), config: cfg_path, warnings })
}

/// The index transformers' `load_sharded_checkpoint` reads (upstream's `--checkpoint_type torch_shard`).
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// [`SHARD_INDEX`] of the weights `bytes` written as `file`: one shard holding every tensor.
fn shard_index(bytes: &[u8], file: &str) -> Result<Value> {
    let st = safetensors::SafeTensors::deserialize(bytes).context("reading back the weights just encoded")?;
    let total: usize = st.tensors().iter().map(|(_, t)| t.data().len()).sum();
    let map: serde_json::Map<String, Value> = st.names().into_iter().map(|n| (n.to_string(), json!(file))).collect();
    Ok(json!({ "metadata": { "total_size": total }, "weight_map": map }))
}

/// How upstream's `tools/run_infinity.py` loads the export in `folder`: its `--model_type` (a preset of
/// its table, which fixes the block chunks: 8 for 2b and 8b, 4 for layerNN) and the flags whose
/// defaults are not this model's (`--add_lvl_embeding_only_first_block` defaults to 0 there). A
/// warning where its loader, which loads without `strict`, would miss the blocks' keys.
fn run_infinity(mc: &ModelConfig, folder: &Path, pixel_budget: Option<&str>) -> (Value, Option<String>) {
    let preset = crate::model::config::PRESETS.iter().filter(|p| !matches!(**p, "tiny" | "small")).find(|p| {
        let c = ModelConfig::preset(p).expect("listed presets exist");
        (c.depth, c.embed_dim, c.num_heads, c.apply_spatial_patchify)
            == (mc.depth, mc.embed_dim, mc.num_heads, mc.apply_spatial_patchify)
    });
    let Some(preset) = preset.filter(|_| mc.has_cross_attention()) else {
        let note = "not one of run_infinity.py's --model_type shapes: build Infinity(vae, **constructor_kwargs, \
                    **inference_kwargs) and load_state_dict the weights";
        return (json!({ "model_type": null, "note": note }), None);
    };
    let chunks = ModelConfig::preset(preset).expect("listed presets exist").block_chunks;
    let model_type = format!("infinity_{preset}");
    let pn = pixel_budget.filter(|b| ["0.06M", "0.25M", "1M"].contains(b)).unwrap_or("0.06M");
    let args = format!(
        "--model_type {model_type} --checkpoint_type torch_shard --model_path {} --text_channels {} \
         --add_lvl_embeding_only_first_block 1 --rope2d_each_sa_layer 1 --rope2d_normalized_by_hw 2 \
         --use_bit_label 1 --apply_spatial_patchify {} --vae_type {} --pn {pn}",
        absolute(folder).display(),
        mc.text_channels,
        mc.apply_spatial_patchify as u8,
        mc.d_vae()
    );
    let warning = (mc.block_chunks != chunks).then(|| {
        format!(
            "block_chunks = {}: run_infinity.py builds {model_type} with {chunks} chunks and loads without strict, \
             so every block weight would be missing there; export with --block-chunks {chunks}",
            mc.block_chunks
        )
    });
    (json!({ "model_type": model_type, "block_chunks": chunks, "args": args }), warning)
}

/// The block-chunk counts a model of `depth` blocks can be exported with.
pub fn divisors(depth: usize) -> Vec<usize> {
    (1..=depth).filter(|k| depth.is_multiple_of(*k)).collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// `p` from the file-system root (as given when it cannot be resolved), for a config read elsewhere.
fn absolute(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
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

    /// Upstream's loader for the preset shapes its table knows: its block chunks (a warning otherwise),
    /// spatial patchify's flags for the 8B; none for other shapes.
    #[test]
    fn run_infinity_names_the_upstream_model_type_and_its_chunks() {
        let at = std::path::Path::new("/exports/x");
        let layer12 = ModelConfig::preset("layer12").unwrap();
        let (v, warning) = super::run_infinity(&layer12, at, Some("0.25M"));
        assert_eq!(
            (v["model_type"].as_str(), v["block_chunks"].as_u64(), warning),
            (Some("infinity_layer12"), Some(4), None)
        );
        let args = v["args"].as_str().unwrap();
        assert!(args.contains("--add_lvl_embeding_only_first_block 1") && args.contains("--pn 0.25M"), "{args}");
        let two = ModelConfig { block_chunks: 2, ..layer12.clone() };
        assert!(super::run_infinity(&two, at, None).1.unwrap().contains("--block-chunks 4"));
        let (v, _) = super::run_infinity(&ModelConfig { d: 56, ..ModelConfig::preset("8b").unwrap() }, at, None);
        let args = v["args"].as_str().unwrap();
        assert!(args.contains("infinity_8b") && args.contains("--apply_spatial_patchify 1 --vae_type 14"), "{args}");
        let tiny = ModelConfig::preset("tiny").unwrap();
        assert!(super::run_infinity(&tiny, at, None).0["model_type"].is_null());
        let class = ModelConfig { conditioning: Conditioning::Class { num_classes: 10 }, ..layer12 };
        assert!(super::run_infinity(&class, at, None).0["model_type"].is_null());
    }
}
