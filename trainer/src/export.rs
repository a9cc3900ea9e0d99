//! `infinity export`: inference weights under upstream state_dict names (f32 or bf16, `blocks.N` or
//! `block_chunks.C.module.J` keys) and a `config.json` with upstream's constructor arguments, the bit
//! width and, when the training dataset is at hand, its schedules and tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use infinity_data::manifest::write_atomic;
use infinity_data::Manifest;
use serde_json::{json, Value};

use crate::model::io::{weights_bytes, SaveDtype};
use crate::model::{Conditioning, Layout, ModelConfig};
use crate::train::checkpoint::CheckpointModel;

/// Upstream `Infinity(...)` keyword arguments of `mc` (the settings this implementation fixes are
/// written out too, so a loader can check them).
pub fn constructor_kwargs(mc: &ModelConfig) -> Value {
    json!({
        "embed_dim": mc.embed_dim,
        "depth": mc.depth,
        "num_heads": mc.num_heads,
        "mlp_ratio": mc.mlp_ratio,
        "norm_eps": mc.norm_eps,
        "text_channels": mc.text_channels,
        "text_maxlen": mc.text_maxlen,
        "cond_drop_rate": mc.cond_drop_rate,
        "block_chunks": mc.block_chunks,
        "cos_attn": true,
        "shared_aln": true,
        "rope2d_each_sa_layer": 1,
        "rope2d_normalized_by_hw": 2,
        "add_lvl_embeding_only_first_block": 1,
        "use_bit_label": 1,
    })
}

/// Write `out` (safetensors) and `config.json` beside it; returns both paths.
pub fn export(ck: &CheckpointModel, out: &Path, dtype: SaveDtype, chunked: bool) -> Result<(PathBuf, PathBuf)> {
    let mc = &ck.model;
    let lay = Layout::new(mc);
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes = weights_bytes(mc, &lay, &ck.params, dtype, chunked, Some(meta))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    write_atomic(out, &bytes).with_context(|| format!("writing {}", out.display()))?;

    let conditioning = match &mc.conditioning {
        Conditioning::Text => json!({ "kind": "text" }),
        Conditioning::Class { num_classes } => json!({ "kind": "class", "num_classes": num_classes }),
    };
    // The dataset, when still where training found it, tells a decoder which schedules and tokenizer fit;
    // its tokenizer file is copied beside the weights, so the export decodes without the dataset.
    let manifest = Manifest::load(&ck.train.data.dir).ok();
    let mut tokenizer_copy = None;
    if let Some(file) = manifest.as_ref().and_then(|m| m.tokenizer.file.clone()) {
        let (from, to) = (ck.train.data.dir.join(&file), out.with_file_name(&file));
        if from.is_file() {
            std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            tokenizer_copy = Some(file);
        }
    }
    let data = manifest.map(|m| {
        json!({
            "dir": ck.train.data.dir,
            "tokenizer": m.tokenizer,
            "tokenizer_file_beside": tokenizer_copy,
            "schedules": m.schedules,
            "conditions": m.conditions,
        })
    });
    let config = json!({
        "format": "infinity-export",
        "version": 1,
        "architecture": if mc.has_cross_attention() { "Infinity" } else { "Infinity (class-conditioned, VAR-style)" },
        "constructor_kwargs": constructor_kwargs(mc),
        "d": mc.d,
        "conditioning": conditioning,
        "dtype": match dtype { SaveDtype::F32 => "float32", SaveDtype::Bf16 => "bfloat16" },
        // upstream keeps `blocks.N` for a model of one chunk, and so does chunked_name
        "key_layout": if chunked && mc.block_chunks > 1 { "block_chunks.C.module.J" } else { "blocks.N" },
        "parameters": lay.numel,
        "source": { "checkpoint": ck.dir, "step": ck.step },
        "data": data,
    });
    let cfg_path = out.with_file_name("config.json");
    write_atomic(&cfg_path, serde_json::to_string_pretty(&config)?.as_bytes())
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    Ok((out.to_path_buf(), cfg_path))
}
